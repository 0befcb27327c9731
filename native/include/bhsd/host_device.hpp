// bhsd — loops written once for the CPU and the GPU: the body of 3-D max/average pooling (one output
// voxel) and the two sweeps of the exact Euclidean distance transform (the row pass and the lower
// envelope of parabolas along a line). The CUDA kernels (native/cuda/ops.cu, voxel.cu) call them from
// one thread per voxel or line; they are the CPU core's loops (tensor_ops.hpp pool3d, metrics.hpp
// edt_squared) operation for operation — bit-identical results on random cases — written once so that
// the CPU can call them too. In double, no library calls (the CUDA distance file is built with
// -fmad=false so that nvcc does not contract them into fused multiply-adds).
//
// BHSD_HD marks them __host__ __device__ under nvcc and is empty for the C++ compilers.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define BHSD_HD __host__ __device__
#else
#define BHSD_HD
#endif

namespace bhsd {
namespace hd {

// The geometry of a 3-D pooling over the last three axes (d, h, w): input extent, kernel, stride,
// dilation and leading padding.
struct PoolGeom {
  std::int64_t in[3], k[3], s[3], d[3], p[3];
};

// One output voxel (od, oh, ow) of the pooling of one channel's volume px. max: the largest sample
// (NaN propagates, as PyTorch's max_pool3d); else the mean, over the samples inside the input or,
// with count_include_pad, over the window clipped to the padded input (as ONNX and PyTorch count it).
BHSD_HD inline float pool_voxel(const float* px, const PoolGeom& g, std::int64_t od, std::int64_t oh, std::int64_t ow,
                                bool max, bool count_include_pad) {
  double acc = max ? -double(INFINITY) : 0.0;
  std::int64_t inside = 0;
  for (std::int64_t a = 0; a < g.k[0]; ++a) {
    const std::int64_t id = od * g.s[0] - g.p[0] + a * g.d[0];
    if (id < 0 || id >= g.in[0]) continue;
    for (std::int64_t b = 0; b < g.k[1]; ++b) {
      const std::int64_t ih = oh * g.s[1] - g.p[1] + b * g.d[1];
      if (ih < 0 || ih >= g.in[1]) continue;
      for (std::int64_t c = 0; c < g.k[2]; ++c) {
        const std::int64_t iw = ow * g.s[2] - g.p[2] + c * g.d[2];
        if (iw < 0 || iw >= g.in[2]) continue;
        const double v = px[(id * g.in[1] + ih) * g.in[2] + iw];
        if (max)
          acc = v > acc || v != v ? v : acc;
        else
          acc += v;
        ++inside;
      }
    }
  }
  if (max) return float(acc);
  std::int64_t denom = inside;
  if (count_include_pad) {
    denom = 1;
    const std::int64_t o[3] = {od, oh, ow};
    for (int ax = 0; ax < 3; ++ax) {
      const std::int64_t start = o[ax] * g.s[ax] - g.p[ax];
      std::int64_t end = start + (g.k[ax] - 1) * g.d[ax] + 1;
      if (end > g.in[ax] + g.p[ax]) end = g.in[ax] + g.p[ax];
      std::int64_t cnt = 0;
      for (std::int64_t t = start; t < end; t += g.d[ax]) ++cnt;
      denom *= cnt;
    }
  }
  return denom > 0 ? float(acc / double(denom)) : 0.0f;
}

// The distance transform's first pass over one row of w voxels: o[x] = (sx · |x − nearest feature
// in the row|)², +inf when the row has none; two sweeps.
BHSD_HD inline void edt_row(const std::uint8_t* f, double* o, std::int64_t w, double sx) {
  std::int64_t last = -1;
  for (std::int64_t x = 0; x < w; ++x) {
    if (f[x]) last = x;
    o[x] = last < 0 ? double(INFINITY) : double(x - last);
  }
  last = -1;
  for (std::int64_t x = w - 1; x >= 0; --x) {
    if (f[x]) last = x;
    double v = o[x];
    if (last >= 0 && double(last - x) < v) v = double(last - x);
    o[x] = v == double(INFINITY) ? double(INFINITY) : (v * sx) * (v * sx);
  }
}

// Felzenszwalb–Huttenlocher lower envelope of parabolas along one line of n samples spaced s:
// d[q] = min_p (f[p] + ((q − p)·s)²), +inf everywhere when every f is +inf. The line's samples
// are f[i·fs] and d[i·ds]; its scratch v (n entries) and z (n + 1) are vz_stride apart (1 on the
// CPU; the number of lines on the GPU, where neighbouring threads then touch neighbouring words).
BHSD_HD inline void edt_envelope(const double* f, std::int64_t fs, double* d, std::int64_t ds, std::int64_t n, double s,
                                 std::int64_t* v, double* z, std::int64_t vz_stride) {
  const double inf = double(INFINITY);
  const double s2 = s * s;
  std::int64_t k = -1;
  for (std::int64_t q = 0; q < n; ++q) {
    const double fq = f[q * fs];
    if (fq == inf) continue;
    if (k < 0) {
      k = 0, v[0] = q, z[0] = -inf, z[vz_stride] = inf;
      continue;
    }
    double x;
    for (;;) {  // where q's parabola drops below that of v[k] (sample units); z[0] = −inf ends it
      const std::int64_t p = v[k * vz_stride];
      x = ((fq + s2 * double(q) * double(q)) - (f[p * fs] + s2 * double(p) * double(p))) / (2.0 * s2 * double(q - p));
      if (x <= z[k * vz_stride])
        --k;
      else
        break;
    }
    ++k;
    v[k * vz_stride] = q, z[k * vz_stride] = x, z[(k + 1) * vz_stride] = inf;
  }
  if (k < 0) {
    for (std::int64_t q = 0; q < n; ++q) d[q * ds] = inf;
    return;
  }
  std::int64_t j = 0;
  for (std::int64_t q = 0; q < n; ++q) {
    while (z[(j + 1) * vz_stride] < double(q)) ++j;
    const std::int64_t vj = v[j * vz_stride];
    const double t = double(q - vj) * s;
    d[q * ds] = t * t + f[vj * fs];
  }
}

}  // namespace hd
}  // namespace bhsd
