// bhsd — the other U-Net operations on the GPU: normalisation, activations, broadcasting add/mul,
// pooling, resizing, softmax, argmax and concatenation. Memory-bound: one thread per output
// element (grid-stride), reductions per (n, c) in one block, accumulating in double as the CPU does.
#include <cuda_runtime.h>

#include <cmath>

#include "bhsd/host_device.hpp"
#include "common.cuh"
#include "gpu.hpp"

namespace bhsd_cuda {

namespace {

constexpr int T = 256;

#define GRID_LOOP(i, n)                                                               \
  for (std::int64_t i = std::int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < (n); \
       i += std::int64_t(gridDim.x) * blockDim.x)

unsigned grid_for(std::int64_t n) {
  const std::int64_t b = (n + T - 1) / T;
  return unsigned(b < 1 ? 1 : (b > 65535 * 8 ? 65535 * 8 : b));
}

__device__ __forceinline__ double block_sum(double v, double* sh) {
  for (int o = 16; o > 0; o /= 2) v += __shfl_down_sync(0xffffffffu, v, o);
  const int lane = threadIdx.x % 32, wid = threadIdx.x / 32;
  __syncthreads();
  if (lane == 0) sh[wid] = v;
  __syncthreads();
  double t = 0;
  if (threadIdx.x == 0)
    for (int i = 0; i < int(blockDim.x / 32); ++i) t += sh[i];
  __syncthreads();
  if (threadIdx.x == 0) sh[0] = t;
  __syncthreads();
  const double r = sh[0];
  __syncthreads();
  return r;
}

// Instance norm in two launches so that a few large channels still fill the GPU: partial sums
// of (x − x₀) and (x − x₀)² per chunk of a channel (x₀ its first voxel, for accuracy; double
// accumulation), then each chunk finishes its channel's statistics and normalises itself.
constexpr std::int64_t IN_CHUNK = 1 << 15;

__global__ void instance_norm_partial(const float* x, std::int64_t S, std::int64_t chunks, double* part) {
  __shared__ double sh[32];
  const std::int64_t nc = blockIdx.y, ch = blockIdx.x;
  const float* p = x + nc * S;
  const double ref = p[0];
  const std::int64_t lo = ch * IN_CHUNK, hi = lo + IN_CHUNK < S ? lo + IN_CHUNK : S;
  double s1 = 0, s2 = 0;
  for (std::int64_t i = lo + threadIdx.x; i < hi; i += blockDim.x) {
    const double d = double(p[i]) - ref;
    s1 += d;
    s2 += d * d;
  }
  s1 = block_sum(s1, sh);
  s2 = block_sum(s2, sh);
  if (threadIdx.x == 0) {
    part[(nc * chunks + ch) * 3] = s1;
    part[(nc * chunks + ch) * 3 + 1] = s2;
    part[(nc * chunks + ch) * 3 + 2] = ref;  // kept here: in place, the apply pass overwrites x₀
  }
}

__global__ void instance_norm_apply(const float* x, float* y, std::int64_t C, std::int64_t S, std::int64_t chunks,
                                    const double* part, const float* scale, const float* bias, double eps, int act,
                                    float alpha) {
  const std::int64_t nc = blockIdx.y, ch = blockIdx.x;
  const float* p = x + nc * S;
  float* q = y + nc * S;
  double s1 = 0, s2 = 0;
  for (std::int64_t k = 0; k < chunks; ++k) s1 += part[(nc * chunks + k) * 3], s2 += part[(nc * chunks + k) * 3 + 1];
  const double dm = s1 / double(S);
  double var = s2 / double(S) - dm * dm;
  if (var < 0) var = 0;
  const double mean = part[nc * chunks * 3 + 2] + dm;
  const double inv = 1.0 / sqrt(var + eps);
  const std::int64_t c = nc % C;
  const double sc = scale ? double(scale[c]) : 1.0;
  const float a = float(inv * sc), b = float((bias ? double(bias[c]) : 0.0) - mean * inv * sc);
  const float neg = act == 1 ? 0.f : alpha;
  const std::int64_t lo = ch * IN_CHUNK, hi = lo + IN_CHUNK < S ? lo + IN_CHUNK : S;
  for (std::int64_t i = lo + threadIdx.x; i < hi; i += blockDim.x) {
    const float v = p[i] * a + b;
    q[i] = act == 0 ? v : (v > 0 ? v : v * neg);
  }
}

__global__ void batch_norm_kernel(const float* x, float* y, std::int64_t C, std::int64_t S, std::int64_t n,
                                  const float* scale, const float* bias, const float* mean, const float* var,
                                  double eps) {
  GRID_LOOP(i, n) {
    const std::int64_t c = (i / S) % C;
    const double inv = 1.0 / sqrt(double(var[c]) + eps);
    const float a = float(scale[c] * inv), b = float(bias[c] - mean[c] * scale[c] * inv);
    y[i] = x[i] * a + b;
  }
}

__global__ void unary_kernel(const float* x, float* y, std::int64_t C, std::int64_t S, std::int64_t n, int op,
                             float alpha, const float* slope, std::int64_t slope_len) {
  GRID_LOOP(i, n) {
    const float v = x[i];
    float r;
    switch (op) {
      case 0:
        r = v > 0 ? v : 0.f;
        break;
      case 1:
        r = v > 0 ? v : v * alpha;
        break;
      case 2:
        r = float(1.0 / (1.0 + exp(-double(v))));
        break;
      case 3: {
        const float s = slope[slope_len == 1 ? 0 : (i / S) % C];
        r = v > 0 ? v : v * s;
        break;
      }
      case 4:  // GELU, erf form; alpha is the divisor (√2 as exported)
        r = 0.5f * v * (1.f + erff(v / alpha));
        break;
      default:  // 5: GELU, tanh approximation
        r = 0.5f * v * (1.f + tanhf(0.7978845608028654f * (v + 0.044715f * v * v * v)));
    }
    y[i] = r;
  }
}

struct Shape6 {
  std::int64_t s[6], a[6], b[6];
};

__global__ void binary_kernel(const float* a, const float* b, float* y, Shape6 sh, std::int64_t n, bool mul, int act,
                              float alpha) {
  GRID_LOOP(i, n) {
    std::int64_t rem = i, oa = 0, ob = 0;
    for (int k = 5; k >= 0; --k) {
      const std::int64_t idx = rem % sh.s[k];
      rem /= sh.s[k];
      oa += idx * sh.a[k];
      ob += idx * sh.b[k];
    }
    const float v = mul ? a[oa] * b[ob] : a[oa] + b[ob];
    y[i] = act == 0 || v > 0 ? v : act == 1 ? 0.f : v * alpha;  // as unary_kernel: relu 0 for NaN
  }
}

// One thread per output voxel; the window's loop is the CPU's (bhsd/host_device.hpp).
struct Pool3 {
  std::int64_t out[3];
  bhsd::hd::PoolGeom g;
};

__global__ void pool_kernel(const float* x, float* y, std::int64_t n, Pool3 g, bool max, bool cip) {
  GRID_LOOP(i, n) {
    const std::int64_t ow = i % g.out[2], oh = (i / g.out[2]) % g.out[1], od = (i / (g.out[2] * g.out[1])) % g.out[0];
    const std::int64_t nc = i / (g.out[0] * g.out[1] * g.out[2]);
    y[i] = bhsd::hd::pool_voxel(x + nc * g.g.in[0] * g.g.in[1] * g.g.in[2], g.g, od, oh, ow, max, cip);
  }
}

struct Resize3 {
  std::int64_t in[3], out[3];
  double scale[3];
};

__device__ double resize_coord(std::int64_t i, std::int64_t in, std::int64_t out, double scale, int m) {
  switch (m) {
    case 0:
      return (double(i) + 0.5) / scale - 0.5;
    case 1:
      return out > 1 ? (double(i) + 0.5) / scale - 0.5 : 0.0;
    case 2:
      return out > 1 ? double(i) * double(in - 1) / double(out - 1) : 0.0;
    default:
      return double(i) / scale;
  }
}

// Per axis: the two source indices and the second's weight (linear), or the one index (nearest).
__device__ void resize_axis(std::int64_t i, const Resize3& g, int ax, bool linear, int cm, int nm, std::int64_t& i0,
                            std::int64_t& i1, double& w) {
  double c = resize_coord(i, g.in[ax], g.out[ax], g.scale[ax], cm);
  if (linear) {
    c = fmin(fmax(c, 0.0), double(g.in[ax] - 1));
    const std::int64_t f = std::int64_t(floor(c));
    i0 = f;
    i1 = f + 1 < g.in[ax] - 1 ? f + 1 : g.in[ax] - 1;
    w = c - double(f);
  } else {
    double r;
    switch (nm) {
      case 0:
        r = (c - floor(c) == 0.5) ? floor(c) : round(c);
        break;
      case 1:
        r = (c - floor(c) == 0.5) ? ceil(c) : round(c);
        break;
      case 2:
        r = floor(c);
        break;
      default:
        r = ceil(c);
        break;
    }
    std::int64_t k = std::int64_t(r);
    if (k < 0) k = 0;
    if (k > g.in[ax] - 1) k = g.in[ax] - 1;
    i0 = i1 = k;
    w = 0;
  }
}

__global__ void resize_kernel(const float* x, float* y, std::int64_t n, Resize3 g, bool linear, int cm, int nm) {
  GRID_LOOP(i, n) {
    const std::int64_t ow = i % g.out[2], oh = (i / g.out[2]) % g.out[1], od = (i / (g.out[2] * g.out[1])) % g.out[0];
    const std::int64_t nc = i / (g.out[0] * g.out[1] * g.out[2]);
    const float* px = x + nc * g.in[0] * g.in[1] * g.in[2];
    std::int64_t z0, z1, y0, y1, x0, x1;
    double wz, wy, wx;
    resize_axis(od, g, 0, linear, cm, nm, z0, z1, wz);
    resize_axis(oh, g, 1, linear, cm, nm, y0, y1, wy);
    resize_axis(ow, g, 2, linear, cm, nm, x0, x1, wx);
    if (!linear) {
      y[i] = px[(z0 * g.in[1] + y0) * g.in[2] + x0];
      continue;
    }
    const std::int64_t zs[2] = {z0, z1}, ys[2] = {y0, y1}, xs[2] = {x0, x1};
    double v = 0;
    for (int a = 0; a < 2; ++a)
      for (int b = 0; b < 2; ++b)
        for (int c = 0; c < 2; ++c) {
          const double w = (a ? wz : 1 - wz) * (b ? wy : 1 - wy) * (c ? wx : 1 - wx);
          if (w != 0) v += w * px[(zs[a] * g.in[1] + ys[b]) * g.in[2] + xs[c]];
        }
    y[i] = float(v);
  }
}

__global__ void softmax_kernel(const float* x, float* y, std::int64_t C, std::int64_t S, std::int64_t n) {
  GRID_LOOP(q, n) {
    const std::int64_t b = q / S, i = q % S;
    const float* p = x + b * C * S + i;
    float* o = y + b * C * S + i;
    float m = -INFINITY;
    for (std::int64_t c = 0; c < C; ++c) m = fmaxf(m, p[c * S]);
    double sum = 0;
    for (std::int64_t c = 0; c < C; ++c) sum += exp(double(p[c * S]) - m);
    for (std::int64_t c = 0; c < C; ++c) o[c * S] = float(exp(double(p[c * S]) - m) / sum);
  }
}

__global__ void argmax_kernel(const float* x, std::int32_t* y, std::int64_t C, std::int64_t S, std::int64_t n) {
  GRID_LOOP(q, n) {
    const std::int64_t b = q / S, i = q % S;
    const float* p = x + b * C * S + i;
    std::int32_t best = 0;
    float bv = p[0];
    for (std::int64_t c = 1; c < C; ++c)
      if (p[c * S] > bv) bv = p[c * S], best = std::int32_t(c);
    y[q] = best;
  }
}

__global__ void concat_kernel(const float* x, float* y, std::int64_t n, std::int64_t len, std::int64_t total,
                              std::int64_t offset, std::int64_t inner) {
  GRID_LOOP(i, n) {
    const std::int64_t per = len * inner, o = i / per, r = i % per;
    y[(o * total + offset) * inner + r] = x[i];
  }
}

}  // namespace

void instance_norm(const float* x, float* y, std::int64_t N, std::int64_t C, std::int64_t S, const float* scale,
                   const float* bias, double eps, int act, float alpha) {
  const std::int64_t chunks = (S + IN_CHUNK - 1) / IN_CHUNK;
  if (N * C > 65535 || chunks > 0x7fffffff)
    throw std::runtime_error("cuda: instanceNorm: more than 65535 channels × batch items");
  Scratch<double> part(static_cast<std::size_t>(N * C * chunks * 3));
  const dim3 grid(unsigned(chunks), unsigned(N * C));
  instance_norm_partial<<<grid, 256, 0, stream()>>>(x, S, chunks, part.p);
  BHSD_LAUNCHED("instanceNorm statistics");
  instance_norm_apply<<<grid, 256, 0, stream()>>>(x, y, C, S, chunks, part.p, scale, bias, eps, act, alpha);
  BHSD_LAUNCHED("instanceNorm apply");
}

void batch_norm(const float* x, float* y, std::int64_t N, std::int64_t C, std::int64_t S, const float* scale,
                const float* bias, const float* mean, const float* var, double eps) {
  const std::int64_t n = N * C * S;
  batch_norm_kernel<<<grid_for(n), T, 0, stream()>>>(x, y, C, S, n, scale, bias, mean, var, eps);
  BHSD_LAUNCHED("batchNorm kernel");
}

void unary(const float* x, float* y, std::int64_t N, std::int64_t C, std::int64_t S, int op, float alpha,
           const float* slope, std::int64_t slope_len) {
  const std::int64_t n = N * C * S;
  unary_kernel<<<grid_for(n), T, 0, stream()>>>(x, y, C, S, n, op, alpha, slope, slope_len);
  BHSD_LAUNCHED("unary kernel");
}

void binary(const float* a, const float* b, float* y, const std::int64_t shape[6], const std::int64_t sa[6],
            const std::int64_t sb[6], bool mul, int act, float alpha) {
  Shape6 sh;
  std::int64_t n = 1;
  for (int k = 0; k < 6; ++k) sh.s[k] = shape[k], sh.a[k] = sa[k], sh.b[k] = sb[k], n *= shape[k];
  if (n == 0) return;
  binary_kernel<<<grid_for(n), T, 0, stream()>>>(a, b, y, sh, n, mul, act, alpha);
  BHSD_LAUNCHED("binary kernel");
}

void pool3d(const float* x, float* y, std::int64_t NC, const std::int64_t in[3], const std::int64_t out[3],
            const std::int64_t k[3], const std::int64_t s[3], const std::int64_t d[3], const std::int64_t p[3],
            bool max, bool cip) {
  Pool3 g;
  for (int a = 0; a < 3; ++a)
    g.g.in[a] = in[a], g.out[a] = out[a], g.g.k[a] = k[a], g.g.s[a] = s[a], g.g.d[a] = d[a], g.g.p[a] = p[a];
  const std::int64_t n = NC * out[0] * out[1] * out[2];
  pool_kernel<<<grid_for(n), T, 0, stream()>>>(x, y, n, g, max, cip);
  BHSD_LAUNCHED("pool3d kernel");
}

void resize3d(const float* x, float* y, std::int64_t NC, const std::int64_t in[3], const std::int64_t out[3],
              const double scales[3], bool linear, int cm, int nm) {
  Resize3 g;
  for (int a = 0; a < 3; ++a) g.in[a] = in[a], g.out[a] = out[a], g.scale[a] = scales[a];
  const std::int64_t n = NC * out[0] * out[1] * out[2];
  resize_kernel<<<grid_for(n), T, 0, stream()>>>(x, y, n, g, linear, cm, nm);
  BHSD_LAUNCHED("resize3d kernel");
}

void softmax(const float* x, float* y, std::int64_t N, std::int64_t C, std::int64_t S) {
  softmax_kernel<<<grid_for(N * S), T, 0, stream()>>>(x, y, C, S, N * S);
  BHSD_LAUNCHED("softmax kernel");
}

void argmax(const float* x, std::int32_t* y, std::int64_t N, std::int64_t C, std::int64_t S) {
  argmax_kernel<<<grid_for(N * S), T, 0, stream()>>>(x, y, C, S, N * S);
  BHSD_LAUNCHED("argmax kernel");
}

void concat_part(const float* x, float* y, std::int64_t outer, std::int64_t len, std::int64_t total,
                 std::int64_t offset, std::int64_t inner) {
  const std::int64_t n = outer * len * inner;
  if (n == 0) return;
  concat_kernel<<<grid_for(n), T, 0, stream()>>>(x, y, n, len, total, offset, inner);
  BHSD_LAUNCHED("concat kernel");
}

}  // namespace bhsd_cuda
