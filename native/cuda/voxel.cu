// bhsd — voxel work on the GPU: 3D connected components and the exact Euclidean distance
// transform behind the surface metrics.
//
// Components: union-find over voxel indices in the manner of Playne & Hawick (2018): every
// foreground voxel starts as its own root; each is united with its already-scanned neighbours
// (3, 9 or 13 of them for 6-, 18- and 26-connectivity) by atomicMin on roots, so that the smaller
// index always wins and every component's root is its first voxel in raster order. The roots are
// then ranked by a block scan (ballot and popcount), which numbers the components exactly as
// scipy.ndimage.label and the CPU backends do.
//
// Distances: the separable transform of native/include/bhsd/metrics.hpp, one thread per line:
// two sweeps along x, then the lower envelope of parabolas (Felzenszwalb & Huttenlocher) along y
// and along z, in double, with the same arithmetic (this file is compiled without FMA
// contraction) so that the distances equal the CPU's.
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <vector>

#include "bhsd/host_device.hpp"
#include "common.cuh"
#include "gpu.hpp"

namespace bhsd_cuda {

namespace {

constexpr unsigned NONE = 0xffffffffu;
constexpr int SCAN = 1024;  // elements (and threads) per scan block

template <class T>
__device__ __forceinline__ bool is_fg(T v) {
  return v != T(0);
}

struct Neighbours {
  int n;
  int dx[13], dy[13], dz[13];
};

Neighbours backward_neighbours(int connectivity) {
  Neighbours nb{};
  for (int dz = -1; dz <= 0; ++dz)
    for (int dy = -1; dy <= 1; ++dy)
      for (int dx = -1; dx <= 1; ++dx) {
        const bool before = dz < 0 || (dz == 0 && dy < 0) || (dz == 0 && dy == 0 && dx < 0);
        if (!before) continue;
        const int m = (dx != 0) + (dy != 0) + (dz != 0);
        if ((connectivity == 6 && m > 1) || (connectivity == 18 && m > 2)) continue;
        nb.dx[nb.n] = dx, nb.dy[nb.n] = dy, nb.dz[nb.n] = dz;
        ++nb.n;
      }
  return nb;
}

template <class T>
__global__ void ccl_init(const T* data, unsigned* L, std::int64_t n) {
  for (std::int64_t i = std::int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += std::int64_t(gridDim.x) * blockDim.x)
    L[i] = is_fg(data[i]) ? unsigned(i) : NONE;
}

__device__ __forceinline__ unsigned find_root(const unsigned* L, unsigned x) {
  unsigned p = L[x];
  while (p != x) {
    x = p;
    p = L[x];
  }
  return x;
}

__device__ void unite(unsigned* L, unsigned a, unsigned b) {
  for (;;) {
    a = find_root(L, a);
    b = find_root(L, b);
    if (a == b) return;
    if (a < b) {
      const unsigned old = atomicMin(&L[b], a);
      if (old == b) return;
      b = old;
    } else {
      const unsigned old = atomicMin(&L[a], b);
      if (old == a) return;
      a = old;
    }
  }
}

template <class T>
__global__ void ccl_merge(const T* data, unsigned* L, int nx, int ny, int nz, Neighbours nb, bool per_class) {
  const std::int64_t n = std::int64_t(nx) * ny * nz;
  for (std::int64_t i = std::int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += std::int64_t(gridDim.x) * blockDim.x) {
    const T v = data[i];
    if (!is_fg(v)) continue;
    const int x = int(i % nx), y = int((i / nx) % ny), z = int(i / (std::int64_t(nx) * ny));
    for (int k = 0; k < nb.n; ++k) {
      const int xx = x + nb.dx[k], yy = y + nb.dy[k], zz = z + nb.dz[k];
      if (xx < 0 || xx >= nx || yy < 0 || yy >= ny || zz < 0) continue;
      const std::int64_t j = (std::int64_t(zz) * ny + yy) * nx + xx;
      const T u = data[j];
      if (!is_fg(u) || (per_class && !(u == v))) continue;
      unite(L, unsigned(i), unsigned(j));
    }
  }
}

__global__ void ccl_flatten(unsigned* L, std::int64_t n) {
  for (std::int64_t i = std::int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += std::int64_t(gridDim.x) * blockDim.x) {
    const unsigned l = L[i];
    if (l != NONE) L[i] = find_root(L, unsigned(i));
  }
}

// Exclusive rank of this thread's flag within its block of SCAN, and the block's total.
__device__ unsigned block_rank(bool flag, unsigned* total) {
  __shared__ unsigned warp_sum[SCAN / 32];
  const unsigned lane = threadIdx.x & 31u, wid = threadIdx.x >> 5;
  const unsigned ballot = __ballot_sync(0xffffffffu, flag);
  const unsigned pre = __popc(ballot & ((1u << lane) - 1u));
  if (lane == 0) warp_sum[wid] = __popc(ballot);
  __syncthreads();
  if (wid == 0) {
    const unsigned v = warp_sum[lane];
    unsigned inc = v;
    for (int o = 1; o < 32; o *= 2) {
      const unsigned t = __shfl_up_sync(0xffffffffu, inc, o);
      if (int(lane) >= o) inc += t;
    }
    warp_sum[lane] = inc - v;
    if (lane == 31) *total = inc;
  }
  __syncthreads();
  return warp_sum[wid] + pre;
}

// Flags of the roots (first pass: counts per block; second: ranks).
__global__ void root_counts(const unsigned* L, std::int64_t n, unsigned* counts) {
  __shared__ unsigned total;
  const std::int64_t i = std::int64_t(blockIdx.x) * SCAN + threadIdx.x;
  const bool f = i < n && L[i] == unsigned(i);
  block_rank(f, &total);
  if (threadIdx.x == 0) counts[blockIdx.x] = total;
}

__global__ void root_ranks(const unsigned* L, std::int64_t n, const unsigned* offsets, unsigned* rank) {
  __shared__ unsigned total;
  const std::int64_t i = std::int64_t(blockIdx.x) * SCAN + threadIdx.x;
  const bool f = i < n && L[i] == unsigned(i);
  const unsigned r = block_rank(f, &total);
  if (f) rank[i] = offsets[blockIdx.x] + r;
}

__global__ void ccl_paint(const unsigned* L, const unsigned* rank, std::int32_t* out, std::int64_t n) {
  for (std::int64_t i = std::int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += std::int64_t(gridDim.x) * blockDim.x) {
    const unsigned l = L[i];
    out[i] = l == NONE ? 0 : std::int32_t(rank[l] + 1);
  }
}

double last_ms = 0;

// Times the device work between two points on the stream.
struct EventTimer {
  cudaEvent_t a = nullptr, b = nullptr;
  EventTimer() {
    cudaEventCreate(&a);
    cudaEventCreate(&b);
    cudaEventRecord(a, stream());
  }
  void stop() {
    cudaEventRecord(b, stream());
    cudaEventSynchronize(b);
    float ms = 0;
    cudaEventElapsedTime(&ms, a, b);
    last_ms = ms;
  }
  ~EventTimer() {
    cudaEventDestroy(a);
    cudaEventDestroy(b);
  }
};

unsigned grid_of(std::int64_t n) {
  const std::int64_t b = (n + 255) / 256;
  return unsigned(b < 1 ? 1 : (b > 65535 * 16 ? 65535 * 16 : b));
}

// Exclusive offsets of per-block counts, on the host (a few thousand numbers).
std::vector<unsigned> scan_counts(const unsigned* dev_counts, std::int64_t blocks, std::uint64_t& total) {
  std::vector<unsigned> c(static_cast<std::size_t>(blocks));
  copy_to_host(c.data(), dev_counts, c.size() * sizeof(unsigned));
  total = 0;
  for (auto& v : c) {
    const unsigned t = v;
    v = unsigned(total);
    total += t;
  }
  return c;
}

template <class T>
std::int64_t ccl_typed(const T* host, std::int64_t nx, std::int64_t ny, std::int64_t nz, int connectivity,
                       bool per_class, std::int32_t* out) {
  const std::int64_t n = nx * ny * nz;
  cudaStream_t s = stream();
  Scratch<T> data(static_cast<std::size_t>(n));
  copy_to_device(data.p, host, std::size_t(n) * sizeof(T));
  EventTimer timer;
  Scratch<unsigned> L(static_cast<std::size_t>(n));
  ccl_init<T><<<grid_of(n), 256, 0, s>>>(data.p, L.p, n);
  BHSD_LAUNCHED("components init");
  ccl_merge<T>
      <<<grid_of(n), 256, 0, s>>>(data.p, L.p, int(nx), int(ny), int(nz), backward_neighbours(connectivity), per_class);
  BHSD_LAUNCHED("components merge");
  ccl_flatten<<<grid_of(n), 256, 0, s>>>(L.p, n);
  BHSD_LAUNCHED("components flatten");
  const std::int64_t blocks = (n + SCAN - 1) / SCAN;
  Scratch<unsigned> counts(static_cast<std::size_t>(blocks));
  root_counts<<<unsigned(blocks), SCAN, 0, s>>>(L.p, n, counts.p);
  BHSD_LAUNCHED("components count");
  std::uint64_t total = 0;
  const std::vector<unsigned> off = scan_counts(counts.p, blocks, total);
  copy_to_device(counts.p, off.data(), off.size() * sizeof(unsigned));
  Scratch<unsigned> rank(static_cast<std::size_t>(n));
  root_ranks<<<unsigned(blocks), SCAN, 0, s>>>(L.p, n, counts.p, rank.p);
  BHSD_LAUNCHED("components rank");
  Scratch<std::int32_t> labels(static_cast<std::size_t>(n));
  ccl_paint<<<grid_of(n), 256, 0, s>>>(L.p, rank.p, labels.p, n);
  BHSD_LAUNCHED("components paint");
  timer.stop();
  copy_to_host(out, labels.p, std::size_t(n) * sizeof(std::int32_t));
  return std::int64_t(total);
}

// ---- distances --------------------------------------------------------------------------------

__global__ void box_surfaces(const std::uint8_t* gt, const std::uint8_t* pred, std::uint8_t* sg, std::uint8_t* sp,
                             int c, std::int64_t nx, std::int64_t ny, std::int64_t x0, std::int64_t y0, std::int64_t z0,
                             std::int64_t w, std::int64_t h, std::int64_t d) {
  const std::int64_t n = w * h * d;
  for (std::int64_t i = std::int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += std::int64_t(gridDim.x) * blockDim.x) {
    const std::int64_t x = i % w, y = (i / w) % h, z = i / (w * h);
    const std::int64_t src = ((z + z0) * ny + (y + y0)) * nx + (x + x0);
    const bool edge = x == 0 || x == w - 1 || y == 0 || y == h - 1 || z == 0 || z == d - 1;
    for (int v = 0; v < 2; ++v) {
      const std::uint8_t* m = v ? pred : gt;
      std::uint8_t r = 0;
      if (m[src] == c) {
        const bool inner = !edge && m[src - 1] == c && m[src + 1] == c && m[src - nx] == c && m[src + nx] == c &&
                           m[src - nx * ny] == c && m[src + nx * ny] == c;
        r = !inner;
      }
      (v ? sp : sg)[i] = r;
    }
  }
}

// The sweeps are the CPU's (bhsd/host_device.hpp): one thread per row, then per line.
__global__ void edt_x(const std::uint8_t* feat, double* out, std::int64_t w, std::int64_t rows, double sx) {
  const std::int64_t r = std::int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (r >= rows) return;
  bhsd::hd::edt_row(feat + r * w, out + r * w, w, sx);
}

// Lower envelope along lines: line l = (g, m) starts at g·gstride + m, samples `stride` apart.
// Scratch per line, interleaved so that neighbouring threads touch neighbouring words:
// f[i·lines + l], v[i·lines + l], z[i·lines + l] (n + 1 entries for z).
__global__ void edt_envelope(double* out, std::int64_t n, std::int64_t stride, std::int64_t groups, std::int64_t glen,
                             std::int64_t gstride, double s, double* fs, std::int64_t* vs, double* zs) {
  const std::int64_t lines = groups * glen;
  const std::int64_t l = std::int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (l >= lines) return;
  double* base = out + (l / glen) * gstride + (l % glen);
  bool any = false;
  for (std::int64_t i = 0; i < n; ++i) {
    const double v = base[i * stride];
    fs[i * lines + l] = v;
    any |= v != INFINITY;
  }
  if (!any) return;  // no feature on this line yet: stays +inf
  bhsd::hd::edt_envelope(fs + l, lines, base, stride, n, s, vs + l, zs + l, lines);
}

__global__ void flag_counts(const std::uint8_t* flags, std::int64_t n, unsigned* counts) {
  __shared__ unsigned total;
  const std::int64_t i = std::int64_t(blockIdx.x) * SCAN + threadIdx.x;
  block_rank(i < n && flags[i], &total);
  if (threadIdx.x == 0) counts[blockIdx.x] = total;
}

__global__ void flag_gather(const std::uint8_t* flags, const double* vals, std::int64_t n, const unsigned* offsets,
                            double* out) {
  __shared__ unsigned total;
  const std::int64_t i = std::int64_t(blockIdx.x) * SCAN + threadIdx.x;
  const bool f = i < n && flags[i];
  const unsigned r = block_rank(f, &total);
  if (f) out[offsets[blockIdx.x] + r] = vals[i];
}

// The values of `vals` where `flags` is set, in index order.
std::vector<double> gather(const std::uint8_t* flags, const double* vals, std::int64_t n) {
  const std::int64_t blocks = (n + SCAN - 1) / SCAN;
  Scratch<unsigned> counts(static_cast<std::size_t>(blocks));
  flag_counts<<<unsigned(blocks), SCAN, 0, stream()>>>(flags, n, counts.p);
  BHSD_LAUNCHED("surface count");
  std::uint64_t total = 0;
  const std::vector<unsigned> off = scan_counts(counts.p, blocks, total);
  copy_to_device(counts.p, off.data(), off.size() * sizeof(unsigned));
  std::vector<double> out(static_cast<std::size_t>(total));
  if (!total) return out;
  Scratch<double> dev(static_cast<std::size_t>(total));
  flag_gather<<<unsigned(blocks), SCAN, 0, stream()>>>(flags, vals, n, counts.p, dev.p);
  BHSD_LAUNCHED("surface gather");
  copy_to_host(out.data(), dev.p, out.size() * sizeof(double));
  return out;
}

void edt_squared(const std::uint8_t* feat, std::int64_t w, std::int64_t h, std::int64_t d, double sx, double sy,
                 double sz, double* out) {
  cudaStream_t s = stream();
  edt_x<<<blocks_for(h * d, 128), 128, 0, s>>>(feat, out, w, h * d, sx);
  BHSD_LAUNCHED("edt x");
  auto pass = [&](std::int64_t n, std::int64_t stride, std::int64_t groups, std::int64_t glen, std::int64_t gstride,
                  double sp) {
    const std::int64_t lines = groups * glen;
    Scratch<double> fs(static_cast<std::size_t>(n * lines)), zs(static_cast<std::size_t>((n + 1) * lines));
    Scratch<std::int64_t> vs(static_cast<std::size_t>(n * lines));
    edt_envelope<<<blocks_for(lines, 128), 128, 0, s>>>(out, n, stride, groups, glen, gstride, sp, fs.p, vs.p, zs.p);
    BHSD_LAUNCHED("edt envelope");  // the scratch goes back to the cache; the stream orders its reuse
  };
  if (h > 1) pass(h, w, d, w, w * h, sy);
  if (d > 1) pass(d, w * h, 1, w * h, 0, sz);
}

}  // namespace

double last_device_ms() { return last_ms; }

std::int64_t connected_components(const void* data, int dtype, std::int64_t nx, std::int64_t ny, std::int64_t nz,
                                  int connectivity, bool per_class, std::int32_t* out) {
  const std::int64_t n = nx * ny * nz;
  if (n >= std::int64_t(NONE))
    throw std::runtime_error("cuda: connectedComponents: the volume must hold fewer than 2^32 − 1 voxels");
  if (nx >= (std::int64_t(1) << 31) || ny >= (std::int64_t(1) << 31) || nz >= (std::int64_t(1) << 31))
    throw std::runtime_error("cuda: connectedComponents: an axis is too long");
  if (n == 0) return 0;
  switch (dtype) {
    case 0:
      return ccl_typed(static_cast<const std::uint8_t*>(data), nx, ny, nz, connectivity, per_class, out);
    case 1:
      return ccl_typed(static_cast<const std::int8_t*>(data), nx, ny, nz, connectivity, per_class, out);
    case 2:
      return ccl_typed(static_cast<const std::int16_t*>(data), nx, ny, nz, connectivity, per_class, out);
    case 3:
      return ccl_typed(static_cast<const std::uint16_t*>(data), nx, ny, nz, connectivity, per_class, out);
    case 4:
      return ccl_typed(static_cast<const std::int32_t*>(data), nx, ny, nz, connectivity, per_class, out);
    case 5:
      return ccl_typed(static_cast<const std::uint32_t*>(data), nx, ny, nz, connectivity, per_class, out);
    case 6:
      return ccl_typed(static_cast<const float*>(data), nx, ny, nz, connectivity, per_class, out);
    case 7:
      return ccl_typed(static_cast<const double*>(data), nx, ny, nz, connectivity, per_class, out);
  }
  throw std::runtime_error("cuda: connectedComponents: unknown element type");
}

std::vector<SurfaceDistances> surface_distances(const std::uint8_t* gt, const std::uint8_t* pred, std::int64_t nx,
                                                std::int64_t ny, std::int64_t nz, double sx, double sy, double sz,
                                                const std::vector<int>& classes,
                                                const std::vector<std::int64_t>& boxes) {
  const std::int64_t nv = nx * ny * nz;
  Scratch<std::uint8_t> g(static_cast<std::size_t>(nv)), p(static_cast<std::size_t>(nv));
  copy_to_device(g.p, gt, std::size_t(nv));
  copy_to_device(p.p, pred, std::size_t(nv));
  std::vector<SurfaceDistances> result(classes.size());
  EventTimer timer;
  for (std::size_t k = 0; k < classes.size(); ++k) {
    const std::int64_t* b = &boxes[k * 6];
    const std::int64_t w = b[3] - b[0] + 1, h = b[4] - b[1] + 1, d = b[5] - b[2] + 1, n = w * h * d;
    Scratch<std::uint8_t> sg(static_cast<std::size_t>(n)), sp(static_cast<std::size_t>(n));
    box_surfaces<<<grid_of(n), 256, 0, stream()>>>(g.p, p.p, sg.p, sp.p, classes[k], nx, ny, b[0], b[1], b[2], w, h, d);
    BHSD_LAUNCHED("surfaces");
    Scratch<double> dist(static_cast<std::size_t>(n));
    edt_squared(sg.p, w, h, d, sx, sy, sz, dist.p);
    result[k].pg = gather(sp.p, dist.p, n);
    edt_squared(sp.p, w, h, d, sx, sy, sz, dist.p);
    result[k].gp = gather(sg.p, dist.p, n);
  }
  timer.stop();
  return result;
}

}  // namespace bhsd_cuda
