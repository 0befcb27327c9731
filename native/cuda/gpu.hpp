// bhsd — the CUDA backend's host interface (plain C++, no Node, no CUDA headers needed to include
// it). Every function enqueues work on the one compute stream of the current device and returns;
// errors (a bad launch, an allocation that does not fit) are thrown as std::runtime_error carrying
// CUDA's own message. Work that fails later on the device surfaces at the next synchronize().
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace bhsd_cuda {

// ---- memory: a caching allocator (freed blocks are kept by size and handed out again) ----------
void* device_alloc(std::size_t bytes);
void device_free(void* p);
// Bytes held by live allocations, the most held at once, and held in the cache.
struct MemoryStats {
  std::size_t live = 0, peak = 0, cached = 0;
};
MemoryStats memory_stats();
void release_cache();
void reset_peak();

void copy_to_device(void* dst, const void* src, std::size_t bytes);  // waits for the copy
void copy_to_host(void* dst, const void* src, std::size_t bytes);    // waits for the stream
void synchronize();                                                  // waits for the stream

// ---- tensor operations (float32, NCDHW, device pointers) ---------------------------------------
enum class Precision { fp32 = 0, tf32 = 1, fp16 = 2, bf16 = 3 };

struct ConvShape {
  std::int64_t N, C, D, H, W;   // input
  std::int64_t Co, Do, Ho, Wo;  // output
  std::int64_t kd, kh, kw;
  std::int64_t sd, sh, sw, dd, dh, dw, pd, ph, pw;  // stride, dilation, leading pads
  std::int64_t groups;
};
// y = act(conv(x, w) + b). transposed: w is [C, Co/groups, k…] and the op is ConvTranspose.
void conv3d(const float* x, const float* w, const float* b, float* y, const ConvShape& s, bool transposed, int act,
            float alpha, Precision p);
// out[ca, cb, k…] += Σ_o A[ca, o] · B[cb, o·s − p + k·d] for one batch item.
void conv_weight_grad(const float* A, const std::int64_t a[4], const float* B, const std::int64_t b[4],
                      const std::int64_t k[3], const std::int64_t s[3], const std::int64_t p[3],
                      const std::int64_t d[3], float* out);
void instance_norm(const float* x, float* y, std::int64_t N, std::int64_t C, std::int64_t spatial, const float* scale,
                   const float* bias, double eps, int act, float alpha);
void batch_norm(const float* x, float* y, std::int64_t N, std::int64_t C, std::int64_t spatial, const float* scale,
                const float* bias, const float* mean, const float* var, double eps);
void unary(const float* x, float* y, std::int64_t N, std::int64_t C, std::int64_t spatial, int op, float alpha,
           const float* slope, std::int64_t slope_len);
void binary(const float* a, const float* b, float* y, const std::int64_t shape[6], const std::int64_t sa[6],
            const std::int64_t sb[6], bool mul, int act, float alpha);
void pool3d(const float* x, float* y, std::int64_t NC, const std::int64_t in[3], const std::int64_t out[3],
            const std::int64_t k[3], const std::int64_t s[3], const std::int64_t d[3], const std::int64_t p[3],
            bool max, bool count_include_pad);
void resize3d(const float* x, float* y, std::int64_t NC, const std::int64_t in[3], const std::int64_t out[3],
              const double scales[3], bool linear, int coord_mode, int nearest_mode);
void softmax(const float* x, float* y, std::int64_t N, std::int64_t C, std::int64_t spatial);
void argmax(const float* x, std::int32_t* y, std::int64_t N, std::int64_t C, std::int64_t spatial);
// y[o, off_k + j, i] = x_k[o, j, i]: one launch per input.
void concat_part(const float* x, float* y, std::int64_t outer, std::int64_t len, std::int64_t total,
                 std::int64_t offset, std::int64_t inner);

// ---- voxel work (host pointers in and out; device scratch inside) ------------------------------
// dtype codes as bhsd::DType: 0 u8, 1 i8, 2 i16, 3 u16, 4 i32, 5 u32, 6 f32, 7 f64.
// Labels in scipy's raster numbering into out (host, nx·ny·nz); returns the count.
// Milliseconds the last connected_components or surface_distances call spent on the device,
// between its upload and its download (CUDA events).
double last_device_ms();
std::int64_t connected_components(const void* data, int dtype, std::int64_t nx, std::int64_t ny, std::int64_t nz,
                                  int connectivity, bool per_class, std::int32_t* out);
// For each class c (with its box: min x y z, max x y z, inclusive, covering both masks), the
// squared distances (mm²) from each surface voxel of pred == c to the nearest surface voxel of
// gt == c (pg) and back (gp), in raster order of the box; the exact separable envelope transform,
// as native/include/bhsd/metrics.hpp computes it on the CPU. gt, pred: host uint8 volumes.
struct SurfaceDistances {
  std::vector<double> pg, gp;
};
std::vector<SurfaceDistances> surface_distances(const std::uint8_t* gt, const std::uint8_t* pred, std::int64_t nx,
                                                std::int64_t ny, std::int64_t nz, double sx, double sy, double sz,
                                                const std::vector<int>& classes,
                                                const std::vector<std::int64_t>& boxes);

}  // namespace bhsd_cuda
