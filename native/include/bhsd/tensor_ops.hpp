// bhsd — the other operations a 3D U-Net needs, on float32 NCDHW tensors: normalisation,
// activations, broadcasting add/mul, concatenation, pooling, resizing, softmax and argmax.
// Memory-bound loops, split over the thread pool; reductions accumulate in double.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <vector>

#include "conv.hpp"
#include "dtype.hpp"
#include "host_device.hpp"
#include "voxel_ops.hpp"
#include "thread_pool.hpp"
#include "vector_math.hpp"

namespace bhsd {

#ifdef BHSD_X86
// Whether the explicit AVX2 paths of these ops run (AVX2 and FMA here, BHSD_NO_AVX2 unset).
inline bool ops_avx2() {
  static const bool on = cpu_features().avx2 && cpu_features().fma && !std::getenv("BHSD_NO_AVX2");
  return on;
}
// And the AVX-512 ones (AVX-512F as well, BHSD_NO_AVX512 unset).
inline bool ops_avx512() {
  static const bool on = ops_avx2() && cpu_features().avx512f && !std::getenv("BHSD_NO_AVX512");
  return on;
}
#endif

namespace norm_detail {
// Mean and Σ (x − mean)² over n floats in one pass from memory: each block of 1024 (in L1) gets
// its own mean, then its Σ (x − block mean)² in eight float lanes; blocks are merged in double
// (Chan et al.'s pairwise update), so the variance stays accurate for millions of voxels and for
// a mean far from zero.
// The mean of p[b, e) (a block in L1), summed in eight float lanes, rounded to float.
BHSD_MULTIVERSION inline float block_mean(const float* p, std::int64_t b, std::int64_t e) {
  float a[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  std::int64_t i = b;
  for (; i + 8 <= e; i += 8)
    for (int j = 0; j < 8; ++j) a[j] += p[i + j];
  for (; i < e; ++i) a[0] += p[i];
  double s = 0;
  for (int j = 0; j < 8; ++j) s += a[j];
  return float(s / double(e - b));
}

// Running mean and Σ (x − mean)², block by block: a block of nb values centred on bm gave
// d1 = Σ (x − bm) and d2 = Σ (x − bm)²; Chan et al.'s pairwise update merges it in double.
struct MeanM2 {
  double mean = 0, m2 = 0;
  std::int64_t count = 0;
  void add(float bm, double d1, double d2, std::int64_t nb) {
    // the block about its exact mean (bm rounded to float leaves a small d1)
    const double bmean = double(bm) + d1 / double(nb), bm2 = std::max(0.0, d2 - d1 * d1 / double(nb));
    const double tot = double(count + nb), delta = bmean - mean;
    mean += delta * double(nb) / tot;
    m2 += bm2 + delta * delta * double(count) * double(nb) / tot;
    count += nb;
  }
};

#ifdef BHSD_X86
__attribute__((target("avx2,fma"))) inline double hsum_avx2(__m256 v) {
  alignas(32) float t[8];
  _mm256_store_ps(t, v);
  double s = 0;
  for (float x : t) s += x;
  return s;
}

// block_stats with explicit AVX2 (the compiler's version kept its eight lanes in memory: 45 µs
// for 65 536 voxels, an instance norm's whole cost; this one is several times faster). The same
// blocks, block means and merging, with 16 lanes per sum instead of 8.
__attribute__((target("avx2,fma"))) inline void block_stats_avx2(const float* p, std::int64_t n, double* mean_out,
                                                                 double* m2_out) {
  MeanM2 acc;
  for (std::int64_t b = 0; b < n; b += 1024) {
    const std::int64_t e = std::min(n, b + 1024), nb = e - b;
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
    std::int64_t i = b;
    for (; i + 16 <= e; i += 16)
      s0 = _mm256_add_ps(s0, _mm256_loadu_ps(p + i)), s1 = _mm256_add_ps(s1, _mm256_loadu_ps(p + i + 8));
    double sum = hsum_avx2(_mm256_add_ps(s0, s1));
    for (; i < e; ++i) sum += p[i];
    const float bmf = float(sum / double(nb));
    const __m256 vm = _mm256_set1_ps(bmf);
    __m256 a1 = _mm256_setzero_ps(), b1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps(), b2 = _mm256_setzero_ps();
    for (i = b; i + 16 <= e; i += 16) {
      const __m256 d0 = _mm256_sub_ps(_mm256_loadu_ps(p + i), vm), d1 = _mm256_sub_ps(_mm256_loadu_ps(p + i + 8), vm);
      a1 = _mm256_add_ps(a1, d0), b1 = _mm256_add_ps(b1, d1);
      a2 = _mm256_fmadd_ps(d0, d0, a2), b2 = _mm256_fmadd_ps(d1, d1, b2);
    }
    double d1 = hsum_avx2(_mm256_add_ps(a1, b1)), d2 = hsum_avx2(_mm256_add_ps(a2, b2));
    for (; i < e; ++i) {
      const float d = p[i] - bmf;
      d1 += d, d2 += double(d) * d;
    }
    acc.add(bmf, d1, d2, nb);
  }
  *mean_out = acc.mean, *m2_out = acc.m2;
}
#endif

BHSD_MULTIVERSION inline void block_stats(const float* p, std::int64_t n, double* mean_out, double* m2_out) {
#ifdef BHSD_X86
  if (ops_avx2()) return block_stats_avx2(p, n, mean_out, m2_out);
#endif
  MeanM2 acc;
  for (std::int64_t b = 0; b < n; b += 1024) {
    const std::int64_t e = std::min(n, b + 1024), nb = e - b;
    float a1[8] = {0, 0, 0, 0, 0, 0, 0, 0}, a2[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    const float bmf = block_mean(p, b, e);
    std::int64_t i;
    for (i = b; i + 8 <= e; i += 8)
      for (int j = 0; j < 8; ++j) {
        const float d = p[i + j] - bmf;
        a1[j] += d;
        a2[j] += d * d;
      }
    for (; i < e; ++i) {
      const float d = p[i] - bmf;
      a1[0] += d;
      a2[0] += d * d;
    }
    double d1 = 0, d2 = 0;
    for (int j = 0; j < 8; ++j) d1 += a1[j], d2 += a2[j];
    acc.add(bmf, d1, d2, nb);
  }
  *mean_out = acc.mean, *m2_out = acc.m2;
}

// q = act((p − m)·a + b): centred first, so that a mean far from zero costs no precision (the form
// p·a + (b − m·a) loses it to cancellation when |m| ≫ σ).
BHSD_MULTIVERSION inline void affine_act(const float* __restrict p, float* __restrict q, std::int64_t n, float m,
                                         float a, float b, Act act, float alpha) {
  if (act == Act::none)
    for (std::int64_t i = 0; i < n; ++i) q[i] = (p[i] - m) * a + b;
  else {
    // max/min rather than a select: the compiler vectorises it, and a branch on the sign of
    // real activations is a coin toss (measured 4× slower than this on random data)
    const float neg = act == Act::relu ? 0.0f : alpha;
    for (std::int64_t i = 0; i < n; ++i) {
      const float v = (p[i] - m) * a + b;
      q[i] = std::max(v, 0.0f) + neg * std::min(v, 0.0f);
    }
  }
}

#ifdef BHSD_X86
// affine_act in explicit AVX2, element by element (each read before its own write), so that it
// may run in place (q = p): a convolution's output normalised where it lies.
__attribute__((target("avx2,fma"))) inline void affine_act_avx2(const float* p, float* q, std::int64_t n, float m,
                                                                float a, float b, Act act, float alpha) {
  const __m256 vm = _mm256_set1_ps(m), va = _mm256_set1_ps(a), vb = _mm256_set1_ps(b), zero = _mm256_setzero_ps();
  const __m256 neg = _mm256_set1_ps(act == Act::relu ? 0.0f : alpha);
  std::int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    __m256 v = _mm256_add_ps(_mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(p + i), vm), va), vb);
    if (act != Act::none) v = _mm256_add_ps(_mm256_max_ps(v, zero), _mm256_mul_ps(neg, _mm256_min_ps(v, zero)));
    _mm256_storeu_ps(q + i, v);
  }
  for (; i < n; ++i) {
    const float v = (p[i] - m) * a + b;
    q[i] = act == Act::none ? v : std::max(v, 0.0f) + (act == Act::relu ? 0.0f : alpha) * std::min(v, 0.0f);
  }
}
#endif

// q = act((p − m)·a + b + r): a residual block's norm, sum and activation in one pass (the same
// arithmetic as affine_act then binary's add: the affine rounded to float, then the sum, then the
// activation as binary applies it — v > 0 ? v : v·alpha), element by element so that q may be p.
#ifdef BHSD_X86
__attribute__((target("avx2,fma"))) inline void affine_add_act_avx2(const float* p, const float* r, float* q,
                                                                    std::int64_t n, float m, float a, float b, Act act,
                                                                    float alpha) {
  const __m256 vm = _mm256_set1_ps(m), va = _mm256_set1_ps(a), vb = _mm256_set1_ps(b), zero = _mm256_setzero_ps(),
               vs = _mm256_set1_ps(alpha);
  std::int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    __m256 v = _mm256_add_ps(_mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(p + i), vm), va), vb);
    v = _mm256_add_ps(v, _mm256_loadu_ps(r + i));
    if (act != Act::none) {
      const __m256 pos = _mm256_cmp_ps(v, zero, _CMP_GT_OQ);  // false for NaN
      v = act == Act::relu ? _mm256_and_ps(v, pos) : _mm256_blendv_ps(_mm256_mul_ps(v, vs), v, pos);
    }
    _mm256_storeu_ps(q + i, v);
  }
  for (; i < n; ++i) {  // (here, not in affine_add_act: compiled for FMA, as affine_act_avx2's tail is)
    float v = (p[i] - m) * a + b;
    v = v + r[i];
    q[i] = act == Act::none ? v : v > 0 ? v : act == Act::relu ? 0.0f : v * alpha;
  }
}
#endif
inline void affine_add_act(const float* p, const float* r, float* q, std::int64_t n, float m, float a, float b, Act act,
                           float alpha) {
#ifdef BHSD_X86
  if (ops_avx2()) return affine_add_act_avx2(p, r, q, n, m, a, b, act, alpha);
#endif
  for (std::int64_t i = 0; i < n; ++i) {
    float v = (p[i] - m) * a + b;  // as affine_act_inplace's own loop
    v = v + r[i];
    q[i] = act == Act::none ? v : v > 0 ? v : act == Act::relu ? 0.0f : v * alpha;
  }
}

// The same without the compiler's aliasing assumptions, for q = p.
inline void affine_act_inplace(float* q, std::int64_t n, float m, float a, float b, Act act, float alpha) {
#ifdef BHSD_X86
  if (ops_avx2()) return affine_act_avx2(q, q, n, m, a, b, act, alpha);
#endif
  for (std::int64_t i = 0; i < n; ++i) {
    const float v = (q[i] - m) * a + b;
    q[i] = act == Act::none ? v : std::max(v, 0.0f) + (act == Act::relu ? 0.0f : alpha) * std::min(v, 0.0f);
  }
}
}  // namespace norm_detail

// y = (x − mean) / sqrt(var + eps) · scale[c] + bias[c], per (n, c) over the `spatial` voxels
// (biased variance), then the activation: one pass for the statistics (block_stats), one to apply.
// y may be x (normalised in place). residual (N·C·spatial floats apart from y: the addon refuses an
// overlap): added after the affine, before the activation — a residual block's InstanceNorm → Add →
// LeakyReLU in the norm's own pass (affine_add_act), not a second pass over both tensors.
inline void instance_norm(const float* x, float* y, std::int64_t N, std::int64_t C, std::int64_t spatial,
                          const float* scale, const float* bias, double eps, Act act, float alpha, ThreadPool& pool,
                          const float* residual = nullptr) {
  pool.parallel_for(
      std::size_t(N * C),
      [&](std::size_t lo, std::size_t hi) {
        for (std::size_t nc = lo; nc < hi; ++nc) {
          const float* p = x + std::int64_t(nc) * spatial;
          float* q = y + std::int64_t(nc) * spatial;
          double mean, m2;
          norm_detail::block_stats(p, spatial, &mean, &m2);
          const double var = m2 / double(spatial);
          const double inv = 1.0 / std::sqrt(var + eps);
          const std::int64_t c = std::int64_t(nc) % C;
          const double sc = scale ? scale[c] : 1.0f;
          if (residual)
            norm_detail::affine_add_act(p, residual + std::int64_t(nc) * spatial, q, spatial, float(mean),
                                        float(inv * sc), bias ? bias[c] : 0.0f, act, alpha);
          else if (p == q)
            norm_detail::affine_act_inplace(q, spatial, float(mean), float(inv * sc), bias ? bias[c] : 0.0f, act,
                                            alpha);
          else
            norm_detail::affine_act(p, q, spatial, float(mean), float(inv * sc), bias ? bias[c] : 0.0f, act, alpha);
        }
      },
      1, 8);
}

// Group normalisation (GroupNorm; MONAI SegResNet's norm): the statistics of each (n, group of C/G
// consecutive channels) over those channels' voxels, biased variance; the affine per channel and
// the activation in the same pass. G = C is instance_norm. y may be x.
inline void group_norm(const float* x, float* y, std::int64_t N, std::int64_t C, std::int64_t spatial, std::int64_t G,
                       const float* scale, const float* bias, double eps, Act act, float alpha, ThreadPool& pool) {
  const std::int64_t cpg = C / G, span = cpg * spatial;
  std::vector<float> mean(std::size_t(N * G)), inv(std::size_t(N * G));
  pool.parallel_for(
      std::size_t(N * G),
      [&](std::size_t lo, std::size_t hi) {
        for (std::size_t ng = lo; ng < hi; ++ng) {
          double m, m2;
          norm_detail::block_stats(x + std::int64_t(ng) * span, span, &m, &m2);
          mean[ng] = float(m);
          inv[ng] = float(1.0 / std::sqrt(m2 / double(span) + eps));
        }
      },
      1, 8);
  if (spatial == 1) {
    // a layer norm seen as [rows, features, 1]: one pass per row (a call per value was most of its time)
    pool.parallel_for(
        std::size_t(N * G),
        [&](std::size_t lo, std::size_t hi) {
          for (std::size_t ng = lo; ng < hi; ++ng) {
            const std::int64_t c0 = std::int64_t(ng) % G * cpg;
            const float* p = x + std::int64_t(ng) * span;
            float* q = y + std::int64_t(ng) * span;
            const float m = mean[ng], iv = inv[ng];
            for (std::int64_t j = 0; j < span; ++j) {
              float v = (p[j] - m) * (iv * (scale ? scale[c0 + j] : 1.0f)) + (bias ? bias[c0 + j] : 0.0f);
              if (act == Act::relu) v = v > 0 ? v : 0.0f;
              if (act == Act::leaky) v = v > 0 ? v : v * alpha;
              q[j] = v;
            }
          }
        },
        1, 8);
    return;
  }
  pool.parallel_for(
      std::size_t(N * C),
      [&](std::size_t lo, std::size_t hi) {
        for (std::size_t nc = lo; nc < hi; ++nc) {
          const std::int64_t c = std::int64_t(nc) % C, ng = std::int64_t(nc) / C * G + c / cpg;
          const float* p = x + std::int64_t(nc) * spatial;
          float* q = y + std::int64_t(nc) * spatial;
          const double a = double(inv[std::size_t(ng)]) * (scale ? scale[c] : 1.0f);
          if (p == q)
            norm_detail::affine_act_inplace(q, spatial, mean[std::size_t(ng)], float(a), bias ? bias[c] : 0.0f, act,
                                            alpha);
          else
            norm_detail::affine_act(p, q, spatial, mean[std::size_t(ng)], float(a), bias ? bias[c] : 0.0f, act, alpha);
        }
      },
      1, 8);
}

namespace norm_detail {
// The leaky ReLU's derivative applied to dy from the sign of its output `gate` (none: dy itself).
inline float gated(const float* d, const float* gate, std::int64_t i, float alpha) {
  return gate && !(gate[i] > 0) ? d[i] * alpha : d[i];
}

#ifdef BHSD_X86
// The gated loops in AVX2: the compiler keeps the gate's comparison a branch (scalar code, and a
// mispredicted branch on every other voxel of real activations: 4× slower than this).
__attribute__((target("avx2,fma"))) inline __m256 gated8(const float* d, const float* gate, __m256 alpha) {
  const __m256 y = _mm256_loadu_ps(gate);
  return _mm256_mul_ps(_mm256_loadu_ps(d), _mm256_blendv_ps(alpha, _mm256_set1_ps(1.0f),
                                                            _mm256_cmp_ps(y, _mm256_setzero_ps(), _CMP_GT_OQ)));
}
// lanes a0 += xc², a1 += g, a2 += g·xc, a3 += xc over [b, e) (whole groups of 8), xc = x − bm
__attribute__((target("avx2,fma"))) inline std::int64_t grad_lanes_avx2(const float* p, const float* d,
                                                                        const float* gate, float alpha, std::int64_t b,
                                                                        std::int64_t e, float bm, float* a0, float* a1,
                                                                        float* a2, float* a3) {
  __m256 s0 = _mm256_loadu_ps(a0), s1 = _mm256_loadu_ps(a1), s2 = _mm256_loadu_ps(a2), s3 = _mm256_loadu_ps(a3);
  const __m256 vm = _mm256_set1_ps(bm), al = _mm256_set1_ps(alpha);
  std::int64_t i = b;
  for (; i + 8 <= e; i += 8) {
    const __m256 xc = _mm256_sub_ps(_mm256_loadu_ps(p + i), vm), g = gated8(d + i, gate + i, al);
    s3 = _mm256_add_ps(s3, xc);
    s0 = _mm256_fmadd_ps(xc, xc, s0);
    s1 = _mm256_add_ps(s1, g);
    s2 = _mm256_fmadd_ps(g, xc, s2);
  }
  _mm256_storeu_ps(a0, s0), _mm256_storeu_ps(a1, s1), _mm256_storeu_ps(a2, s2), _mm256_storeu_ps(a3, s3);
  return i;
}
// q = k·(g − a − (x − m)·b) over whole groups of 8; returns where it stopped
__attribute__((target("avx2,fma"))) inline std::int64_t grad_apply_avx2(const float* p, const float* d,
                                                                        const float* gate, float alpha, std::int64_t n,
                                                                        float m, float k, float a, float b, float* q) {
  const __m256 vm = _mm256_set1_ps(m), vk = _mm256_set1_ps(k), va = _mm256_set1_ps(a), vb = _mm256_set1_ps(b),
               al = _mm256_set1_ps(alpha);
  std::int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 xc = _mm256_sub_ps(_mm256_loadu_ps(p + i), vm), g = gated8(d + i, gate + i, al);
    _mm256_storeu_ps(q + i, _mm256_mul_ps(vk, _mm256_fnmadd_ps(xc, vb, _mm256_sub_ps(g, va))));
  }
  return i;
}
#endif

// In one pass from memory: the mean and Σ (x − mean)² (as block_stats), Σ g and Σ g·(x − mean)
// (g the gated dy). Each block of 1024 is centred on its own mean bm; Σ g·(x − mean) is then
// Σ_blocks [Σ g·(x − bm) + (bm − mean)·Σ g], added in double.
BHSD_MULTIVERSION inline void grad_sums(const float* p, const float* d, const float* gate, float alpha, std::int64_t n,
                                        double* mean_out, double* m2_out, double* sg_out, double* sgx_out) {
  MeanM2 acc;
  double sg = 0, sgx = 0, sbg = 0;  // sbg: Σ_blocks bm·Σg
  for (std::int64_t b = 0; b < n; b += 1024) {
    const std::int64_t e = std::min(n, b + 1024), nb = e - b;
    float a0[8] = {0, 0, 0, 0, 0, 0, 0, 0}, a1[8] = {0, 0, 0, 0, 0, 0, 0, 0}, a2[8] = {0, 0, 0, 0, 0, 0, 0, 0},
          a3[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    const float bmf = block_mean(p, b, e);
    std::int64_t i = b;
#ifdef BHSD_X86
    if (gate && ops_avx2()) i = grad_lanes_avx2(p, d, gate, alpha, b, e, bmf, a0, a1, a2, a3);
#endif
    if (!gate)
      for (; i + 8 <= e; i += 8)
        for (int j = 0; j < 8; ++j) {
          const float xc = p[i + j] - bmf, g = d[i + j];
          a3[j] += xc;
          a0[j] += xc * xc;
          a1[j] += g;
          a2[j] += g * xc;
        }
    for (; i < e; ++i) {  // the rest (and every voxel with a gate on processors without AVX2)
      const float xc = p[i] - bmf, g = gated(d, gate, i, alpha);
      a3[0] += xc;
      a0[0] += xc * xc;
      a1[0] += g;
      a2[0] += g * xc;
    }
    double d1 = 0, d2 = 0, g1 = 0, gx = 0;
    for (int j = 0; j < 8; ++j) d1 += a3[j], d2 += a0[j], g1 += a1[j], gx += a2[j];
    acc.add(bmf, d1, d2, nb);
    sg += g1;
    sgx += gx;  // Σ g·(x − bmf)
    sbg += double(bmf) * g1;
  }
  *mean_out = acc.mean, *m2_out = acc.m2, *sg_out = sg;
  *sgx_out = sgx + sbg - acc.mean * sg;  // Σ g·(x − mean)
}

// q = k·(g − a − (x − m)·b)
BHSD_MULTIVERSION inline void grad_apply(const float* __restrict p, const float* __restrict d,
                                         const float* __restrict gate, float alpha, std::int64_t n, float m, float k,
                                         float a, float b, float* __restrict q) {
  if (gate) {
    std::int64_t i = 0;
#ifdef BHSD_X86
    if (ops_avx2()) i = grad_apply_avx2(p, d, gate, alpha, n, m, k, a, b, q);
#endif
    for (; i < n; ++i) q[i] = k * (gated(d, gate, i, alpha) - a - (p[i] - m) * b);
  } else
    for (std::int64_t i = 0; i < n; ++i) q[i] = k * (d[i] - a - (p[i] - m) * b);
}
}  // namespace norm_detail

// Gradients of y = act(instance_norm(x)·gamma + beta) for training: dy is the gradient of the
// output; with `gate` (the activation's output, whose sign is its input's) the leaky ReLU's
// derivative is applied first (slope alpha where gate ≤ 0). Per (n, c): the mean, Σ(x − mean)², Σg
// and Σg·(x − mean) in one pass (grad_sums), then dx in a second. dgamma and dbeta [C] are
// overwritten.
inline void instance_norm_backward(const float* x, const float* gate, const float* dy, std::int64_t N, std::int64_t C,
                                   std::int64_t spatial, const float* gamma, double eps, float alpha, float* dx,
                                   float* dgamma, float* dbeta, ThreadPool& pool) {
  std::vector<double> sg(std::size_t(N * C)), sgx(std::size_t(N * C));
  pool.parallel_for(
      std::size_t(N * C),
      [&](std::size_t lo, std::size_t hi) {
        for (std::size_t nc = lo; nc < hi; ++nc) {
          const std::int64_t o = std::int64_t(nc) * spatial;
          const float *p = x + o, *d = dy + o, *a = gate ? gate + o : nullptr;
          double mean, v, g1, gx;
          norm_detail::grad_sums(p, d, a, alpha, spatial, &mean, &v, &g1, &gx);
          const double inv = 1.0 / std::sqrt(v / double(spatial) + eps);
          sg[nc] = g1;
          sgx[nc] = gx * inv;  // Σ g · x̂
          const double k = double(gamma ? gamma[std::int64_t(nc) % C] : 1.0f) * inv;
          norm_detail::grad_apply(p, d, a, alpha, spatial, float(mean), float(k), float(g1 / double(spatial)),
                                  float(gx * inv * inv / double(spatial)), dx + o);
        }
      },
      1, 8);
  for (std::int64_t c = 0; c < C; ++c) {
    double g1 = 0, gx = 0;
    for (std::int64_t n = 0; n < N; ++n) g1 += sg[std::size_t(n * C + c)], gx += sgx[std::size_t(n * C + c)];
    dbeta[c] = float(g1);
    dgamma[c] = float(gx);
  }
}

// Inference batch normalisation: y = (x − mean[c]) / sqrt(var[c] + eps) · scale[c] + bias[c].
inline void batch_norm(const float* x, float* y, std::int64_t N, std::int64_t C, std::int64_t spatial,
                       const float* scale, const float* bias, const float* mean, const float* var, double eps,
                       ThreadPool& pool) {
  pool.parallel_for(
      std::size_t(N * C),
      [&](std::size_t lo, std::size_t hi) {
        for (std::size_t nc = lo; nc < hi; ++nc) {
          const std::int64_t c = std::int64_t(nc) % C;
          const double inv = 1.0 / std::sqrt(double(var[c]) + eps);
          const float a = float(scale[c] * inv), b = float(bias[c] - mean[c] * scale[c] * inv);
          const float* p = x + std::int64_t(nc) * spatial;
          float* q = y + std::int64_t(nc) * spatial;
          for (std::int64_t i = 0; i < spatial; ++i) q[i] = p[i] * a + b;
        }
      },
      1, 8);
}

// A LayerNorm over the channels of x [N, C, spatial] (LayerNormNd, LayerNorm2d): at each position
// the C values less their mean, over √(mean square + eps), in double and rounded to float, then
// × gamma[c] + beta[c] (either may be null: 1 and 0). A task is a run of positions of one item
// (each channel's part of it contiguous).
// y [outer, cols, rows] = x [outer, rows, cols] with its last two axes swapped (a Transpose of perm
// [0, …, r − 1, r − 2]: U-Mamba's tokens, a transformer's patch embedding): 32 × 32 tiles, each a
// few cache lines on both sides, split over the threads by tile rows.
inline void transpose_last2(const float* x, float* y, std::int64_t outer, std::int64_t rows, std::int64_t cols,
                            ThreadPool& pool) {
  constexpr std::int64_t T = 32;
  const std::int64_t bands = (cols + T - 1) / T;  // (a task: one band of T output rows, all its tiles)
  pool.parallel_for(
      std::size_t(outer * bands),
      [&](std::size_t lo, std::size_t hi) {
        for (std::size_t t = lo; t < hi; ++t) {
          const std::int64_t o = std::int64_t(t) / bands, j0 = std::int64_t(t) % bands * T;
          const std::int64_t j1 = std::min(cols, j0 + T);
          const float* xo = x + o * rows * cols;
          float* yo = y + o * rows * cols;
          for (std::int64_t i0 = 0; i0 < rows; i0 += T) {
            const std::int64_t i1 = std::min(rows, i0 + T);
            for (std::int64_t j = j0; j < j1; ++j)
              for (std::int64_t i = i0; i < i1; ++i) yo[j * rows + i] = xo[i * cols + j];
          }
        }
      },
      1, 4);
}

inline void channel_norm(const float* x, float* y, std::int64_t N, std::int64_t C, std::int64_t spatial,
                         const float* gamma, const float* beta, double eps, ThreadPool& pool) {
  constexpr std::int64_t P = 256;  // positions a task
  const std::int64_t chunks = (spatial + P - 1) / P;
  pool.parallel_for(
      std::size_t(N * chunks),
      [&](std::size_t lo, std::size_t hi) {
        double mean[P], sd[P];
        for (std::size_t t = lo; t < hi; ++t) {
          const std::int64_t n = std::int64_t(t) / chunks, p0 = std::int64_t(t) % chunks * P;
          const std::int64_t len = std::min(P, spatial - p0);
          const float* xb = x + n * C * spatial + p0;
          float* yb = y + n * C * spatial + p0;
          std::fill(mean, mean + len, 0.0);
          std::fill(sd, sd + len, 0.0);
          for (std::int64_t c = 0; c < C; ++c)
            for (std::int64_t p = 0; p < len; ++p) mean[p] += xb[c * spatial + p];
          for (std::int64_t p = 0; p < len; ++p) mean[p] /= double(C);
          for (std::int64_t c = 0; c < C; ++c)
            for (std::int64_t p = 0; p < len; ++p) {
              const double d = xb[c * spatial + p] - mean[p];
              sd[p] += d * d;
            }
          for (std::int64_t p = 0; p < len; ++p) sd[p] = std::sqrt(sd[p] / double(C) + eps);
          for (std::int64_t c = 0; c < C; ++c) {
            const double g = gamma ? gamma[c] : 1.0, b = beta ? beta[c] : 0.0;
            for (std::int64_t p = 0; p < len; ++p)
              yb[c * spatial + p] = float(double(float((xb[c * spatial + p] - mean[p]) / sd[p])) * g + b);
          }
        }
      },
      1, 8);
}

enum class Unary { relu = 0, leaky = 1, sigmoid = 2, prelu = 3, gelu = 4, gelu_tanh = 5 };

#ifdef BHSD_X86
namespace gelu_detail {
__attribute__((target("avx2,fma"))) inline void row_avx2(const float* p, float* q, std::int64_t n, float alpha);
__attribute__((target("avx512f"))) inline void row_avx512(const float* p, float* q, std::int64_t n, float alpha);
}  // namespace gelu_detail
namespace sigmoid_detail {
__attribute__((target("avx2,fma"))) inline void row_avx2(const float* p, float* q, std::int64_t n);
__attribute__((target("avx512f"))) inline void row_avx512(const float* p, float* q, std::int64_t n);
}  // namespace sigmoid_detail
#endif

// Elementwise activations; prelu's slope is per channel (slope[c], or slope[0] when it has one).
// gelu: 0.5·x·(1 + erf(x / alpha)) (alpha √2 as exported, or the graph's own divisor); gelu_tanh:
// 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))), ONNX Gelu's approximate="tanh".
inline void unary(const float* x, float* y, std::int64_t N, std::int64_t C, std::int64_t spatial, Unary op, float alpha,
                  const float* slope, std::int64_t slope_len, ThreadPool& pool) {
  // a chunk is a run of whole channels of at least 4096 values (a transformer's activations are
  // few channels of many values or many channels of few)
  const std::int64_t per = std::max<std::int64_t>(1, 4096 / std::max<std::int64_t>(spatial, 1));
  pool.parallel_for(
      std::size_t(N * C),
      [&](std::size_t lo, std::size_t hi) {
        for (std::size_t nc = lo; nc < hi; ++nc) {
          const float* p = x + std::int64_t(nc) * spatial;
          float* q = y + std::int64_t(nc) * spatial;
          switch (op) {
            case Unary::relu:
              for (std::int64_t i = 0; i < spatial; ++i) q[i] = p[i] > 0 ? p[i] : 0.0f;
              break;
            case Unary::leaky:
              for (std::int64_t i = 0; i < spatial; ++i) q[i] = p[i] > 0 ? p[i] : p[i] * alpha;
              break;
            case Unary::sigmoid:
#ifdef BHSD_X86
              if (ops_avx512()) {
                sigmoid_detail::row_avx512(p, q, spatial);
                break;
              }
              if (ops_avx2()) {
                sigmoid_detail::row_avx2(p, q, spatial);
                break;
              }
#endif
              for (std::int64_t i = 0; i < spatial; ++i) q[i] = float(1.0 / (1.0 + std::exp(-double(p[i]))));
              break;
            case Unary::prelu: {
              const float s = slope[slope_len == 1 ? 0 : std::int64_t(nc) % C];
              for (std::int64_t i = 0; i < spatial; ++i) q[i] = p[i] > 0 ? p[i] : p[i] * s;
              break;
            }
            case Unary::gelu:  // divided, not multiplied by 1/alpha: the exported Div's rounding
#ifdef BHSD_X86
              if (ops_avx512()) {
                gelu_detail::row_avx512(p, q, spatial, alpha);
                break;
              }
              if (ops_avx2()) {
                gelu_detail::row_avx2(p, q, spatial, alpha);
                break;
              }
#endif
              for (std::int64_t i = 0; i < spatial; ++i) q[i] = 0.5f * p[i] * (1.0f + std::erf(p[i] / alpha));
              break;
            case Unary::gelu_tanh: {
              const float k = 0.7978845608028654f;  // √(2/π)
              for (std::int64_t i = 0; i < spatial; ++i) {
                const float v = p[i];
                q[i] = 0.5f * v * (1.0f + std::tanh(k * (v + 0.044715f * v * v * v)));
              }
              break;
            }
          }
        }
      },
      std::size_t(per), 8);
}

namespace binary_detail {
#ifdef BHSD_X86
// One contiguous row of a + b (or a · b) and the activation, in explicit AVX2 element by element
// (each read before its own write, so that y may be a or b), branch-free: the scalar loops'
// branch on the sign of each sum mispredicted half the time on real activations (a residual
// block's Add → LeakyReLU of 32 × 16×256×256 took 90–130 ms on random signs, 15 ms on constant ones).
// SA / SB: that operand is one value along the row (a per-channel scale or bias: stride 0), in the
// same operand order as the scalar loop.
template <bool SA = false, bool SB = false>
__attribute__((target("avx2,fma"))) inline void row_avx2(const float* pa, const float* pb, float* q, std::int64_t n,
                                                         bool mul, Act act, float alpha) {
  const __m256 zero = _mm256_setzero_ps(), va = _mm256_set1_ps(alpha);
  const __m256 ca = _mm256_set1_ps(SA ? *pa : 0.0f), cb = _mm256_set1_ps(SB ? *pb : 0.0f);
  std::int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 x = SA ? ca : _mm256_loadu_ps(pa + i), z = SB ? cb : _mm256_loadu_ps(pb + i);
    __m256 v = mul ? _mm256_mul_ps(x, z) : _mm256_add_ps(x, z);
    if (act != Act::none) {
      const __m256 pos = _mm256_cmp_ps(v, zero, _CMP_GT_OQ);  // false for NaN
      v = act == Act::relu ? _mm256_and_ps(v, pos) : _mm256_blendv_ps(_mm256_mul_ps(v, va), v, pos);
    }
    _mm256_storeu_ps(q + i, v);
  }
  for (; i < n; ++i) {
    const float x = pa[SA ? 0 : i], z = pb[SB ? 0 : i];
    const float v = mul ? x * z : x + z;
    q[i] = act == Act::none ? v : v > 0 ? v : act == Act::relu ? 0.0f : v * alpha;
  }
}
#endif
}  // namespace binary_detail

// Broadcasting binary op on tensors of rank ≤ 6 given as output shape and element strides of a
// and b (0 along broadcast axes), all padded to 6 axes.
// act/alpha: an activation applied as each sum or product is stored (a residual block's Add → LeakyReLU).
// Axes are merged first wherever both operands run on contiguously (size-1 axes dropped), so two
// tensors of one shape are a single run of n values; the loop is split by elements, not rows, and
// each chunk finds its first index once and then steps through its rows: a residual block's Add of
// 64 × 2×8×8 had been 1024 rows of 8, each found by five divisions (most of a 15 µs call).
inline void binary(const float* a, const float* b, float* y, const std::int64_t* shape, const std::int64_t* sa,
                   const std::int64_t* sb, bool mul, ThreadPool& pool, Act act = Act::none, float alpha = 0.0f) {
  std::int64_t dim[6], ta[6], tb[6];
  int r = 0;
  for (int i = 0; i < 6; ++i) {
    if (shape[i] == 1) continue;
    if (r > 0 && ta[r - 1] == sa[i] * shape[i] && tb[r - 1] == sb[i] * shape[i]) {
      dim[r - 1] *= shape[i];
      ta[r - 1] = sa[i];
      tb[r - 1] = sb[i];
    } else {
      dim[r] = shape[i], ta[r] = sa[i], tb[r] = sb[i];
      ++r;
    }
  }
  if (r == 0) dim[0] = 1, ta[0] = tb[0] = 0, r = 1;
  std::int64_t n = 1;
  for (int i = 0; i < r; ++i) n *= dim[i];
  const std::int64_t inner = dim[r - 1], ia = ta[r - 1], ib = tb[r - 1];
  const auto run = [&](const float* pa, const float* pb, float* q, std::int64_t len) {
#ifdef BHSD_X86
    if (ops_avx2() && ia == 1 && ib == 1) return binary_detail::row_avx2(pa, pb, q, len, mul, act, alpha);
    if (ops_avx2() && ia == 1 && ib == 0) return binary_detail::row_avx2<false, true>(pa, pb, q, len, mul, act, alpha);
    if (ops_avx2() && ia == 0 && ib == 1) return binary_detail::row_avx2<true, false>(pa, pb, q, len, mul, act, alpha);
#endif
    if (mul)
      for (std::int64_t i = 0; i < len; ++i) q[i] = pa[i * ia] * pb[i * ib];
    else
      for (std::int64_t i = 0; i < len; ++i) q[i] = pa[i * ia] + pb[i * ib];
    // as the unary ops do it (relu: 0 for NaN; leaky: NaN stays NaN)
    if (act == Act::relu)
      for (std::int64_t i = 0; i < len; ++i) q[i] = q[i] > 0 ? q[i] : 0.0f;
    else if (act == Act::leaky)
      for (std::int64_t i = 0; i < len; ++i) q[i] = q[i] > 0 ? q[i] : q[i] * alpha;
  };
  pool.parallel_for(
      std::size_t(n),
      [&](std::size_t lo, std::size_t hi) {
        std::int64_t idx[6], oa = 0, ob = 0, rem = std::int64_t(lo);
        for (int i = r - 1; i >= 0; --i) {
          idx[i] = rem % dim[i];
          rem /= dim[i];
          oa += idx[i] * ta[i];
          ob += idx[i] * tb[i];
        }
        for (std::int64_t pos = std::int64_t(lo); pos < std::int64_t(hi);) {
          const std::int64_t len = std::min(inner - idx[r - 1], std::int64_t(hi) - pos);
          run(a + oa, b + ob, y + pos, len);
          pos += len;
          idx[r - 1] += len, oa += len * ia, ob += len * ib;
          if (idx[r - 1] < inner) continue;  // (the chunk ended inside the row)
          idx[r - 1] = 0, oa -= inner * ia, ob -= inner * ib;
          for (int i = r - 2; i >= 0; --i) {
            oa += ta[i], ob += tb[i];
            if (++idx[i] < dim[i]) break;
            idx[i] = 0, oa -= dim[i] * ta[i], ob -= dim[i] * tb[i];
          }
        }
      },
      16384);
}

namespace pool_detail {
#ifdef BHSD_X86
// Average pooling's inner loop where the window is two columns wide with stride 2 along W (a 2×2,
// 1×2×2 or 2×2×2 pool): four outputs a step, each the same double sum as pool3d's scalar loop —
// 0, then the taps' rows in order, the even column before the odd — divided by the same denom:
// equal bit for bit. Returns the first column not done. The rows: `taps` offsets into px.
__attribute__((target("avx2,fma"))) inline std::int64_t avg_row_w2_avx2(const float* px, const std::int64_t* rows,
                                                                        std::int64_t taps, std::int64_t c0,
                                                                        std::int64_t w0, std::int64_t w1, double denom,
                                                                        float* yr) {
  const __m256i split = _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7);
  const __m256d dv = _mm256_set1_pd(denom);
  std::int64_t ow = w0;
  for (; ow + 4 <= w1; ow += 4) {
    __m256d acc = _mm256_setzero_pd();
    for (std::int64_t t = 0; t < taps; ++t) {
      const __m256 v = _mm256_permutevar8x32_ps(_mm256_loadu_ps(px + rows[t] + c0 + 2 * ow), split);
      acc = _mm256_add_pd(acc, _mm256_cvtps_pd(_mm256_castps256_ps128(v)));    // even columns
      acc = _mm256_add_pd(acc, _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1)));  // odd columns
    }
    _mm_storeu_ps(yr + ow, _mm256_cvtpd_ps(_mm256_div_pd(acc, dv)));
  }
  return ow;
}
#endif
}  // namespace pool_detail

// Pooling over the three last axes. pads: leading d h w; out extent given. avg: divide by the
// window's size (count_include_pad) or by the samples inside the input. The window's loop is
// shared with the CUDA kernel (host_device.hpp).
inline void pool3d(const float* x, float* y, std::int64_t NC, std::int64_t D, std::int64_t H, std::int64_t W,
                   std::int64_t Do, std::int64_t Ho, std::int64_t Wo, const std::int64_t* k, const std::int64_t* s,
                   const std::int64_t* d, const std::int64_t* p, bool max, bool count_include_pad, ThreadPool& pool) {
  const hd::PoolGeom g{{D, H, W}, {k[0], k[1], k[2]}, {s[0], s[1], s[2]}, {d[0], d[1], d[2]}, {p[0], p[1], p[2]}};
  // Windows wholly inside the input (all but a padded border) skip pool_voxel's bounds checks: the
  // same sum in the same order (double, taps in D, H, W order), divided by the window's size as
  // pool_voxel divides an unclipped window (both counts are then k0·k1·k2); a residual encoder's
  // stride-(1, 2, 2) average pool of 32 × 16×256×256 took 45 ms through pool_voxel.
  const auto inside = [](std::int64_t o, std::int64_t ax_s, std::int64_t ax_p, std::int64_t ax_k, std::int64_t ax_d,
                         std::int64_t n) {
    const std::int64_t a = o * ax_s - ax_p;
    return a >= 0 && a + (ax_k - 1) * ax_d < n;
  };
  std::int64_t w0 = 0, w1 = 0;  // output columns [w0, w1) whose windows lie inside along W
  while (w0 < Wo && !inside(w0, s[2], p[2], k[2], d[2], W)) ++w0;
  for (w1 = w0; w1 < Wo && inside(w1, s[2], p[2], k[2], d[2], W);) ++w1;
  const std::int64_t taps = k[0] * k[1];
  const double denom = double(k[0] * k[1] * k[2]);
  [[maybe_unused]] const bool w2 = !max && k[2] == 2 && s[2] == 2 && d[2] == 1;  // avg_row_w2_avx2's case
  pool.parallel_for(std::size_t(NC * Do), [&](std::size_t lo, std::size_t hi) {
    std::vector<std::int64_t> rows(static_cast<std::size_t>(taps));  // the window's rows, as offsets in px
    for (std::size_t q = lo; q < hi; ++q) {
      const std::int64_t nc = std::int64_t(q) / Do, od = std::int64_t(q) % Do;
      const float* px = x + nc * D * H * W;
      float* py = y + (nc * Do + od) * Ho * Wo;
      const bool din = inside(od, s[0], p[0], k[0], d[0], D);
      for (std::int64_t oh = 0; oh < Ho; ++oh) {
        float* yr = py + oh * Wo;
        std::int64_t f0 = 0, f1 = 0;  // the columns done here
        if (din && inside(oh, s[1], p[1], k[1], d[1], H) && w0 < w1) {
          for (std::int64_t a = 0; a < k[0]; ++a)
            for (std::int64_t b = 0; b < k[1]; ++b)
              rows[std::size_t(a * k[1] + b)] = ((od * s[0] - p[0] + a * d[0]) * H + (oh * s[1] - p[1] + b * d[1])) * W;
          std::int64_t ow = w0;
#ifdef BHSD_X86
          // (the window's columns c0 + 2·ow + {0, 1} lie inside the input for ow in [w0, w1))
          if (w2 && ops_avx2()) ow = pool_detail::avg_row_w2_avx2(px, rows.data(), taps, -p[2], w0, w1, denom, yr);
#endif
          for (; ow < w1; ++ow) {
            const std::int64_t c0 = ow * s[2] - p[2];
            double acc = max ? -double(INFINITY) : 0.0;
            for (std::int64_t t = 0; t < taps; ++t) {
              const float* r = px + rows[std::size_t(t)] + c0;
              for (std::int64_t c = 0; c < k[2]; ++c) {
                const double v = r[c * d[2]];
                if (max)
                  acc = v > acc || v != v ? v : acc;
                else
                  acc += v;
              }
            }
            yr[ow] = max ? float(acc) : float(acc / denom);
          }
          f0 = w0, f1 = w1;
        }
        for (std::int64_t ow = 0; ow < Wo; ++ow)
          if (ow < f0 || ow >= f1) yr[ow] = hd::pool_voxel(px, g, od, oh, ow, max, count_include_pad);
      }
    }
  });
}

enum class CoordMode { half_pixel = 0, pytorch_half_pixel = 1, align_corners = 2, asymmetric = 3 };
enum class NearestMode { round_prefer_floor = 0, round_prefer_ceil = 1, floor = 2, ceil = 3 };

// Source coordinate of output index i along an axis (ONNX Resize's coordinate transformation).
inline double resize_coord(std::int64_t i, std::int64_t in, std::int64_t out, double scale, CoordMode m) {
  switch (m) {
    case CoordMode::half_pixel:
      return (double(i) + 0.5) / scale - 0.5;
    case CoordMode::pytorch_half_pixel:
      return out > 1 ? (double(i) + 0.5) / scale - 0.5 : 0.0;
    case CoordMode::align_corners:
      return out > 1 ? double(i) * double(in - 1) / double(out - 1) : 0.0;
    case CoordMode::asymmetric:
      return double(i) / scale;
  }
  return 0;
}

// resize3d's linear output row where it doubles the row (half-pixel centres, scale 2: every U-Net's
// upsampling): outputs 2i and 2i + 1 (1 ≤ i < n − 1) weigh r[i − 1], r[i] by 1/4, 3/4 and r[i], r[i + 1]
// by 3/4, 1/4 — the general loop's sums, term for term and in its order (0 + first + second), without
// its per-voxel index and weight loads, vectorised with AVX2 where the processor has it: the same bits
// (AVX2 alone, not FMA: GCC contracts a product and a sum into one rounding where FMA is enabled,
// and then 134 of 720,444 values of a test differed by an ulp). The row's first two and last two
// outputs stay with the general loop (the caller's).
BHSD_MULTIVERSION_NO_FMA inline void resize_row_x2(const double* __restrict r, float* __restrict orow, std::int64_t n) {
  for (std::int64_t i = 1; i + 1 < n; ++i) {
    orow[2 * i] = float((0.0 + 0.25 * r[i - 1]) + 0.75 * r[i]);
    orow[2 * i + 1] = float((0.0 + 0.75 * r[i]) + 0.25 * r[i + 1]);
  }
}

// Resize the three last axes: linear (trilinear) or nearest. scales[ax] = out/in unless given.
inline void resize3d(const float* x, float* y, std::int64_t NC, const std::int64_t* in, const std::int64_t* out,
                     const double* scales, bool linear, CoordMode cm, NearestMode nm, ThreadPool& pool) {
  // Per axis: the two source indices and the weight of the second (linear), or the one index (nearest).
  std::vector<std::int64_t> i0[3], i1[3];
  std::vector<double> wt[3];
  for (int ax = 0; ax < 3; ++ax) {
    i0[ax].resize(out[ax]), i1[ax].resize(out[ax]), wt[ax].resize(out[ax]);
    for (std::int64_t i = 0; i < out[ax]; ++i) {
      double c = resize_coord(i, in[ax], out[ax], scales[ax], cm);
      if (linear) {
        c = std::min(std::max(c, 0.0), double(in[ax] - 1));
        const std::int64_t f = std::int64_t(std::floor(c));
        i0[ax][i] = f;
        i1[ax][i] = std::min(f + 1, in[ax] - 1);
        wt[ax][i] = c - double(f);
      } else {
        double r;
        switch (nm) {
          case NearestMode::round_prefer_floor:
            r = (c - std::floor(c) == 0.5) ? std::floor(c) : std::round(c);
            break;
          case NearestMode::round_prefer_ceil:
            r = (c - std::floor(c) == 0.5) ? std::ceil(c) : std::round(c);
            break;
          case NearestMode::floor:
            r = std::floor(c);
            break;
          default:
            r = std::ceil(c);
            break;
        }
        i0[ax][i] = std::min(std::max<std::int64_t>(std::int64_t(r), 0), in[ax] - 1);
      }
    }
  }
  const std::int64_t Din = in[0], Hin = in[1], Win = in[2], Do = out[0], Ho = out[1], Wo = out[2];
  // whether the rows double (resize_row_x2): the tables checked, however they came about
  bool x2 = linear && Win >= 3 && Wo == 2 * Win;
  for (std::int64_t i = 1; x2 && i + 1 < Win; ++i)
    x2 = i0[2][std::size_t(2 * i)] == i - 1 && i1[2][std::size_t(2 * i)] == i && wt[2][std::size_t(2 * i)] == 0.75 &&
         i0[2][std::size_t(2 * i + 1)] == i && i1[2][std::size_t(2 * i + 1)] == i + 1 &&
         wt[2][std::size_t(2 * i + 1)] == 0.25;
  pool.parallel_for(std::size_t(NC * Do), [&](std::size_t lo, std::size_t hi) {
    // linear: separable — per output row, the (up to) four input rows its plane and row weights
    // select, combined into one row r (in double), then two samples of r per output voxel: about
    // 4·Win/Wo + 2 products a voxel instead of 8 with their index arithmetic (an upsampling by 2 of
    // 8 channels at 16×64×64: 1.9 → 0.4 ms). The terms whose weight is 0 are skipped as before (an
    // infinite sample next to a weight of 0 stays out of the sum).
    std::vector<double> r(linear ? std::size_t(Win) : 0);
    for (std::size_t q = lo; q < hi; ++q) {
      const std::int64_t nc = std::int64_t(q) / Do, od = std::int64_t(q) % Do;
      const float* px = x + nc * Din * Hin * Win;
      float* py = y + (nc * Do + od) * Ho * Wo;
      if (!linear) {
        for (std::int64_t oh = 0; oh < Ho; ++oh)
          for (std::int64_t ow = 0; ow < Wo; ++ow)
            py[oh * Wo + ow] = px[(i0[0][od] * Hin + i0[1][oh]) * Win + i0[2][ow]];
        continue;
      }
      const std::int64_t zs[2] = {i0[0][od], i1[0][od]};
      const double wz = wt[0][od];
      for (std::int64_t oh = 0; oh < Ho; ++oh) {
        const std::int64_t ys[2] = {i0[1][oh], i1[1][oh]};
        const double wy = wt[1][oh];
        std::fill(r.begin(), r.end(), 0.0);
        for (int a = 0; a < 2; ++a)
          for (int b = 0; b < 2; ++b) {
            const double w = (a ? wz : 1 - wz) * (b ? wy : 1 - wy);
            if (w == 0) continue;
            const float* row = px + (zs[a] * Hin + ys[b]) * Win;
            for (std::int64_t i = 0; i < Win; ++i) r[std::size_t(i)] += w * double(row[i]);
          }
        float* orow = py + oh * Wo;
        if (x2) resize_row_x2(r.data(), orow, Win);
        for (std::int64_t ow = 0; ow < Wo; ++ow) {
          if (x2 && ow == 2) ow = Wo - 2;  // (the doubled row's middle written above)
          const double wx = wt[2][ow];
          double v = 0;
          if (wx != 1) v += (1 - wx) * r[std::size_t(i0[2][ow])];
          if (wx != 0) v += wx * r[std::size_t(i1[2][ow])];
          orow[ow] = float(v);
        }
      }
    }
  });
}

// One window's share of a sliding-window sum (segment()): for each class k, acc[k] += logits[k] ·
// gauss · scale over the window of extent `patch` at `at` of the [C, D, H, W] grid `grid`, and
// weight += gauss there (acc: C·D·H·W, weight: D·H·W, logits: C·patch voxels, gauss: patch
// voxels; the caller checks that the window lies inside the grid). In double, rounded once to
// float at each store, as the TypeScript loop computes it (the ts backend's, bit for bit); planes
// of the window's rows spread over the threads (the loop took ~40 ms of a 16×256×256 window's
// ~0.9 s on one thread).
BHSD_MULTIVERSION BHSD_NO_FP_CONTRACT inline void accumulate_row(float* arow, const float* l, const float* g,
                                                                 std::int64_t n, double scale) {
#ifdef __clang__
#pragma clang fp contract(off)
#endif
  for (std::int64_t c = 0; c < n; ++c) arow[c] = float(double(arow[c]) + double(l[c]) * double(g[c]) * scale);
}
BHSD_MULTIVERSION BHSD_NO_FP_CONTRACT inline void add_row(float* wrow, const float* g, std::int64_t n) {
  for (std::int64_t c = 0; c < n; ++c) wrow[c] = float(double(wrow[c]) + double(g[c]));
}
inline void accumulate_window(float* acc, float* weight, const float* logits, const float* gauss, std::int64_t C,
                              const std::int64_t* grid, const std::int64_t* patch, const std::int64_t* at, double scale,
                              ThreadPool& pool) {
  const std::int64_t PH = grid[1], PW = grid[2], vol = grid[0] * PH * PW;
  const std::int64_t ph = patch[1], pw = patch[2], pv = patch[0] * ph * pw;
  pool.parallel_for(
      std::size_t(patch[0] * ph),
      [&](std::size_t lo, std::size_t hi) {
        for (std::size_t q = lo; q < hi; ++q) {
          const std::int64_t a = std::int64_t(q) / ph, b = std::int64_t(q) % ph;
          const std::int64_t dst = ((at[0] + a) * PH + (at[1] + b)) * PW + at[2], src = (a * ph + b) * pw;
          add_row(weight + dst, gauss + src, pw);
          for (std::int64_t k = 0; k < C; ++k)
            accumulate_row(acc + k * vol + dst, logits + k * pv + src, gauss + src, pw, scale);
        }
      },
      16, 8);
}

namespace softmax_detail {
// Channel c of a voxel: its value, or its value divided by the voxel's divisor (d: null or the
// divisor), rounded to float as a float array holding the quotient would.
inline float value(const float* p, std::int64_t c, std::int64_t spatial, const float* d) {
  return d ? float(double(p[c * spatial]) / double(*d)) : p[c * spatial];
}

// One voxel's softmax over its C channels, `spatial` apart: each exponential taken once in double
// (kept in y, then scaled), summed in double.
inline void voxel(const float* p, float* o, std::int64_t C, std::int64_t spatial, const float* d = nullptr) {
  float m = -std::numeric_limits<float>::infinity();
  for (std::int64_t c = 0; c < C; ++c) m = std::max(m, value(p, c, spatial, d));
  double sum = 0;
  for (std::int64_t c = 0; c < C; ++c) {
    const double e = std::exp(double(value(p, c, spatial, d)) - m);
    o[c * spatial] = float(e);
    sum += e;
  }
  const float inv = float(1.0 / sum);
  for (std::int64_t c = 0; c < C; ++c) o[c * spatial] *= inv;
}

#ifdef BHSD_X86
// e^x in double for four lanes with x in [−700, 0]: x = n·ln 2 + r (|r| ≤ ln 2 / 2, ln 2 in two
// parts), e^r by its Taylor series to r¹³ (the remainder under 6e−18 of e^r), times 2ⁿ built in the
// exponent bits. Within 1–2 ulp of std::exp: the float each softmax value is rounded to is the same
// but where the double lies within those ulps of a float's rounding boundary (about once in 10⁸).
// 1 / k! for k ≤ 13, the series' coefficients (exp4 and sigmoid's exp8 take the same)
inline constexpr double inv_fact[14] = {
    1.0,        1.0,         1.0 / 2,      1.0 / 6,       1.0 / 24,       1.0 / 120,       1.0 / 720,
    1.0 / 5040, 1.0 / 40320, 1.0 / 362880, 1.0 / 3628800, 1.0 / 39916800, 1.0 / 479001600, 1.0 / 6227020800.0};
__attribute__((target("avx2,fma"))) inline __m256d exp4(__m256d x) {
  const __m256d n = _mm256_round_pd(_mm256_mul_pd(x, _mm256_set1_pd(1.4426950408889634)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256d r = _mm256_fnmadd_pd(n, _mm256_set1_pd(6.93147180369123816490e-01), x);
  r = _mm256_fnmadd_pd(n, _mm256_set1_pd(1.90821492927058770002e-10), r);
  __m256d e = _mm256_set1_pd(inv_fact[13]);
  for (int k = 12; k >= 0; --k) e = _mm256_fmadd_pd(e, r, _mm256_set1_pd(inv_fact[k]));
  const __m256i bits =
      _mm256_slli_epi64(_mm256_add_epi64(_mm256_cvtepi32_epi64(_mm256_cvtpd_epi32(n)), _mm256_set1_epi64x(1023)), 52);
  return _mm256_mul_pd(e, _mm256_castsi256_pd(bits));
}

// exp4 of one value (the core test compares it with std::exp).
__attribute__((target("avx2,fma"))) inline double exp1(double x) { return _mm256_cvtsd_f64(exp4(_mm256_set1_pd(x))); }

// Four voxels' values of one channel as value() gives them (dv: their divisors, where d is set).
__attribute__((target("avx2,fma"))) inline __m128 values4(const float* p, const float* d, __m256d dv) {
  const __m128 v = _mm_loadu_ps(p);
  return d ? _mm256_cvtpd_ps(_mm256_div_pd(_mm256_cvtps_pd(v), dv)) : v;
}

// Four voxels i..i+3 (contiguous in each channel plane) as voxel() computes them, in the same order
// of operations, their exponentials by exp4; false (nothing written) where an exponent falls
// outside exp4's range — a NaN or an infinity among the inputs, or a channel more than 700 below
// the largest — which voxel() then handles.
__attribute__((target("avx2,fma"))) inline bool voxels4(const float* p, float* o, std::int64_t C, std::int64_t spatial,
                                                        const float* d = nullptr) {
  const __m256d dv = d ? _mm256_cvtps_pd(_mm_loadu_ps(d)) : _mm256_setzero_pd();
  __m128 m = _mm_set1_ps(-std::numeric_limits<float>::infinity());
  for (std::int64_t c = 0; c < C; ++c) m = _mm_max_ps(m, values4(p + c * spatial, d, dv));
  const __m256d md = _mm256_cvtps_pd(m), lo = _mm256_set1_pd(-700.0), zero = _mm256_setzero_pd();
  for (std::int64_t c = 0; c < C; ++c) {
    const __m256d x = _mm256_sub_pd(_mm256_cvtps_pd(values4(p + c * spatial, d, dv)), md);
    const __m256d ok = _mm256_and_pd(_mm256_cmp_pd(x, lo, _CMP_GE_OQ), _mm256_cmp_pd(x, zero, _CMP_LE_OQ));
    if (_mm256_movemask_pd(ok) != 15) return false;
  }
  __m256d sum = _mm256_setzero_pd();
  for (std::int64_t c = 0; c < C; ++c) {
    const __m256d e = exp4(_mm256_sub_pd(_mm256_cvtps_pd(values4(p + c * spatial, d, dv)), md));
    _mm_storeu_ps(o + c * spatial, _mm256_cvtpd_ps(e));
    sum = _mm256_add_pd(sum, e);
  }
  const __m128 inv = _mm256_cvtpd_ps(_mm256_div_pd(_mm256_set1_pd(1.0), sum));
  for (std::int64_t c = 0; c < C; ++c) _mm_storeu_ps(o + c * spatial, _mm_mul_ps(_mm_loadu_ps(o + c * spatial), inv));
  return true;
}

// One contiguous row of C values (softmax over the last axis: attention's keys) as voxel() computes
// it with spatial 1, in the same order of operations — the maximum, each exponential stored as a
// float and added into one double sum in order, then the row scaled by the float reciprocal — the
// exponentials by exp4, four at a time; false (nothing written) where an exponent falls outside
// exp4's range (a NaN or an infinity in the row, or a value more than 700 below its maximum), which
// voxel() then handles. UNETR's 12 attention softmaxes (12×128 rows of 128) took 0.7 ms each in
// std::exp.
__attribute__((target("avx2,fma"))) inline bool row4(const float* p, float* o, std::int64_t C) {
  const std::int64_t C4 = C / 4 * 4;
  // the largest value; _mm_max_ps(v, m) keeps m where v is NaN, as std::max(m, v) does
  __m128 mv = _mm_set1_ps(-std::numeric_limits<float>::infinity());
  for (std::int64_t c = 0; c < C4; c += 4) mv = _mm_max_ps(_mm_loadu_ps(p + c), mv);
  alignas(16) float lanes[4];
  _mm_store_ps(lanes, mv);
  float m = -std::numeric_limits<float>::infinity();
  for (float v : lanes) m = std::max(m, v);
  for (std::int64_t c = C4; c < C; ++c) m = std::max(m, p[c]);
  const double md = m;
  const __m256d mdv = _mm256_set1_pd(md), lo = _mm256_set1_pd(-700.0), zero = _mm256_setzero_pd();
  for (std::int64_t c = 0; c < C4; c += 4) {
    const __m256d x = _mm256_sub_pd(_mm256_cvtps_pd(_mm_loadu_ps(p + c)), mdv);
    const __m256d ok = _mm256_and_pd(_mm256_cmp_pd(x, lo, _CMP_GE_OQ), _mm256_cmp_pd(x, zero, _CMP_LE_OQ));
    if (_mm256_movemask_pd(ok) != 15) return false;
  }
  for (std::int64_t c = C4; c < C; ++c) {
    const double x = double(p[c]) - md;
    if (!(x >= -700.0 && x <= 0.0)) return false;
  }
  double sum = 0;
  alignas(32) double e4[4];
  for (std::int64_t c = 0; c < C4; c += 4) {
    const __m256d e = exp4(_mm256_sub_pd(_mm256_cvtps_pd(_mm_loadu_ps(p + c)), mdv));
    _mm_storeu_ps(o + c, _mm256_cvtpd_ps(e));
    _mm256_store_pd(e4, e);
    sum += e4[0], sum += e4[1], sum += e4[2], sum += e4[3];  // in order, as voxel() adds them
  }
  for (std::int64_t c = C4; c < C; ++c) {
    const double e = exp1(double(p[c]) - md);
    o[c] = float(e);
    sum += e;
  }
  const float inv = float(1.0 / sum);
  const __m128 iv = _mm_set1_ps(inv);
  for (std::int64_t c = 0; c < C4; c += 4) _mm_storeu_ps(o + c, _mm_mul_ps(_mm_loadu_ps(o + c), iv));
  for (std::int64_t c = C4; c < C; ++c) o[c] *= inv;
  return true;
}
#endif
}  // namespace softmax_detail

#ifdef BHSD_X86
namespace gelu_detail {
using vector_math::Vec;

// erf of W floats in float arithmetic, within 2 ulp of erf rounded to float (the core test sweeps
// it against std::erf in double; onnxruntime's and PyTorch's vector erf are float approximations
// too). |x| < 1: x + x·(x²·P(x²) + c₀ − 1), P of degree 4, fitted with c₀ to erf(x)/x (relative
// error 4e−8). 1 ≤ |x| < 3.92: ±(1 − e^(−x²)·R(1/|x|)), R of degree 10 fitted to erfc(x)·e^(x²)
// (2e−9); e^(−x²) by Cephes' expf with x² split exactly (|x|'s top 12 bits squared, plus the
// rest), so that its rounding does not enter. Beyond: ±1 (erfc(3.92) is under half a float ulp of
// 1). NaN stays NaN. (Fitted by least squares in double on Chebyshev nodes: 2026-12-07.)
template <int W>
__attribute__((always_inline)) inline void verf(typename Vec<W>::f& x) {
  using vf = typename Vec<W>::f;
  using vi = typename Vec<W>::i;
  static constexpr float A[5] = {-3.761231899e-01f, 1.128013059e-01f, -2.670995332e-02f, 4.916025326e-03f,
                                 -5.625397898e-04f};
  static constexpr float B[11] = {2.956361095e-05f,  5.636487603e-01f, 3.620405449e-03f,  -2.881851196e-01f,
                                  -5.975396559e-02f, 8.792827725e-01f, -1.494951844e+00f, 1.395896316e+00f,
                                  -7.931639552e-01f, 2.583788037e-01f, -3.721809015e-02f};
  const vf zero = vf{}, one = zero + 1.0f;
  const vi bits = (vi)x;
  const vi sign = bits & std::int32_t(0x80000000u);
  const vf ax = (vf)(bits & 0x7fffffff);
  // |x| < 1
  const vf u = x * x;
  vf q = zero + A[4];
  for (int k = 3; k >= 0; --k) q = q * u + A[k];
  const vf small = x + x * (u * q + 1.283791065e-01f);
  // 1 ≤ |x| < 3.92, on |x| clamped into that range (NaN to 1)
  const vf a = ax < 3.92f ? (ax > 1.0f ? ax : one) : zero + 3.92f;
  const vf t = one / a;
  vf p = zero + B[10];
  for (int k = 9; k >= 0; --k) p = p * t + B[k];
  const vf ah = (vf)((vi)a & std::int32_t(0xfffff000u));
  const vf al = a - ah;
  const vf hi = ah * ah, lo = (ah + ah) * al + al * al;                           // (hi exact: 12 bits squared)
  const vf n = ((zero - hi) * 1.44269504088896341f + 12582912.0f) - 12582912.0f;  // round to nearest
  vf r = (zero - hi) - n * 0.693359375f;                                          // (exact)
  r = r - n * -2.12194440e-4f;
  vf e = r - lo;
  vector_math::exp_reduced<W>(e, n);
  const vf mid = (vf)((vi)(one - e * p) | sign), edge = (vf)((vi)one | sign);
  const vf v = ax < 1.0f ? small : (ax < 3.92f ? mid : edge);
  x = x != x ? x : v;
}

// GELU of a row, W values at a time: 0.5·v·(1 + erf(v / alpha)) in float as the scalar loop computes
// it (v / alpha rounded to float), erf by verf; the tail through a vector's worth of scratch, so
// every value takes the same arithmetic. (UNETR's twelve GELUs of 128×3072 values took 1.3–1.8 ms
// each in std::erf; MedNeXt-S's 40 M values 130 ms in a double-precision erf four at a time.)
template <int W>
__attribute__((always_inline)) inline void vector(const float* src, float* dst, float alpha) {
  using vf = typename Vec<W>::f;
  using vfu = typename Vec<W>::fu;
  const vf v = *reinterpret_cast<const vfu*>(src);
  vf z = v / alpha;
  verf<W>(z);
  *reinterpret_cast<vfu*>(dst) = (0.5f * v) * (1.0f + z);
}
template <int W>
__attribute__((always_inline)) inline void row(const float* p, float* q, std::int64_t n, float alpha) {
  std::int64_t i = 0;
  for (; i + W <= n; i += W) vector<W>(p + i, q + i, alpha);
  if (i < n) {
    alignas(64) float t[W] = {};
    std::memcpy(t, p + i, std::size_t(n - i) * sizeof(float));
    vector<W>(t, t, alpha);
    std::memcpy(q + i, t, std::size_t(n - i) * sizeof(float));
  }
}
// erf of n floats (n a multiple of W), for the core test's sweep of verf.
template <int W>
__attribute__((always_inline)) inline void erf_rows(const float* p, float* q, std::int64_t n) {
  using vf = typename Vec<W>::f;
  using vfu = typename Vec<W>::fu;
  for (std::int64_t i = 0; i + W <= n; i += W) {
    vf v = *reinterpret_cast<const vfu*>(p + i);
    verf<W>(v);
    *reinterpret_cast<vfu*>(q + i) = v;
  }
}
__attribute__((target("avx2,fma"))) inline void erf_avx2(const float* p, float* q, std::int64_t n) {
  erf_rows<8>(p, q, n);
}
__attribute__((target("avx512f"))) inline void erf_avx512(const float* p, float* q, std::int64_t n) {
  erf_rows<16>(p, q, n);
}
__attribute__((target("avx2,fma"))) inline void row_avx2(const float* p, float* q, std::int64_t n, float alpha) {
  row<8>(p, q, n, alpha);
}
__attribute__((target("avx512f"))) inline void row_avx512(const float* p, float* q, std::int64_t n, float alpha) {
  row<16>(p, q, n, alpha);
}
}  // namespace gelu_detail

namespace sigmoid_detail {
// 1 / (1 + e^−x) in double, four values at a time, rounded to float as the scalar loop does: with
// t = e^−|x| (exp4's range, clamped at −700, where the float result is 0 or 1 already), 1 / (1 + t)
// for x ≥ 0 and t / (1 + t) below; NaN stays NaN. (SwiGLU's SiLU in a transformer's MLP: Primus-S
// at 1024 tokens took 34 ms a forward in std::exp.)
__attribute__((target("avx2,fma"))) inline void row_avx2(const float* p, float* q, std::int64_t n) {
  const __m256d one = _mm256_set1_pd(1.0), lo = _mm256_set1_pd(-700.0), signbit = _mm256_set1_pd(-0.0);
  std::int64_t i = 0;
  for (; i + 4 <= n; i += 4) {
    const __m256d x = _mm256_cvtps_pd(_mm_loadu_ps(p + i));
    const __m256d t = softmax_detail::exp4(_mm256_max_pd(_mm256_or_pd(x, signbit), lo));  // e^−|x| (max(NaN, lo) is lo)
    const __m256d d = _mm256_add_pd(one, t);
    // one division: the numerator chosen first (two divisions, both kept and one blended away, had
    // held the loop to the divider's rate: 1.6 ns a value on an Ice Lake Xeon)
    __m256d s = _mm256_div_pd(_mm256_blendv_pd(t, one, _mm256_cmp_pd(x, _mm256_setzero_pd(), _CMP_GE_OQ)), d);
    s = _mm256_blendv_pd(s, x, _mm256_cmp_pd(x, x, _CMP_UNORD_Q));
    _mm_storeu_ps(q + i, _mm256_cvtpd_ps(s));
  }
  for (; i < n; ++i) q[i] = float(1.0 / (1.0 + std::exp(-double(p[i]))));
}

// exp4's steps, in the same order, on eight lanes: the same double in every lane.
__attribute__((target("avx512f"))) inline __m512d exp8(__m512d x) {
  const __mmask8 all = 0xFF;  // (the maskz forms: GCC 12 warns of the plain ones' undefined fill)
  const __m512d n = _mm512_maskz_roundscale_pd(all, _mm512_mul_pd(x, _mm512_set1_pd(1.4426950408889634)),
                                               _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512d r = _mm512_fnmadd_pd(n, _mm512_set1_pd(6.93147180369123816490e-01), x);
  r = _mm512_fnmadd_pd(n, _mm512_set1_pd(1.90821492927058770002e-10), r);
  __m512d e = _mm512_set1_pd(softmax_detail::inv_fact[13]);
  for (int k = 12; k >= 0; --k) e = _mm512_fmadd_pd(e, r, _mm512_set1_pd(softmax_detail::inv_fact[k]));
  const __m512i bits = _mm512_maskz_slli_epi64(
      all,
      _mm512_add_epi64(_mm512_maskz_cvtepi32_epi64(all, _mm512_maskz_cvtpd_epi32(all, n)), _mm512_set1_epi64(1023)),
      52);
  return _mm512_mul_pd(e, _mm512_castsi512_pd(bits));
}

// row_avx2's sigmoid on eight values at a time, each lane's operations as there (the same floats):
// half the instructions a value, where the polynomial's chain of dependent FMAs had filled the
// scheduler (2.1 → 1.0 ns a value on an Ice Lake Xeon)
__attribute__((target("avx512f"))) inline void row_avx512(const float* p, float* q, std::int64_t n) {
  const __mmask8 all = 0xFF;
  const __m512d one = _mm512_set1_pd(1.0), lo = _mm512_set1_pd(-700.0), zero = _mm512_setzero_pd();
  const __m512i signbit = _mm512_set1_epi64(std::int64_t(0x8000000000000000ULL));
  std::int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m512d x = _mm512_maskz_cvtps_pd(all, _mm256_loadu_ps(p + i));
    const __m512d neg = _mm512_castsi512_pd(_mm512_or_si512(_mm512_castpd_si512(x), signbit));  // −|x|
    const __m512d t = exp8(_mm512_maskz_max_pd(all, neg, lo));  // e^−|x| (max(NaN, lo) is lo)
    const __m512d d = _mm512_add_pd(one, t);
    __m512d s = _mm512_div_pd(_mm512_mask_blend_pd(_mm512_cmp_pd_mask(x, zero, _CMP_GE_OQ), t, one), d);
    s = _mm512_mask_blend_pd(_mm512_cmp_pd_mask(x, x, _CMP_UNORD_Q), s, x);
    _mm256_storeu_ps(q + i, _mm512_maskz_cvtpd_ps(all, s));
  }
  if (i < n) row_avx2(p + i, q + i, n - i);
}
}  // namespace sigmoid_detail
#endif

// Softmax over axis 1 of [N, C, spatial]; argmax over axis 1 (the first of equal maxima).
// div (optional, [N, spatial]): the softmax of x / div, each quotient rounded to float first.
inline void softmax_channels(const float* x, float* y, std::int64_t N, std::int64_t C, std::int64_t spatial,
                             ThreadPool& pool, const float* div = nullptr) {
  // a task holds at least 4096 values, so that attention's rows (C keys, spatial 1) spread over the
  // threads too. Where AVX2 runs, four voxels at a time with a vector exponential: segment()'s
  // softmax of a 512×512×40 CT's 6 classes (63 M values) had taken 0.4 s in std::exp.
#ifdef BHSD_X86
  const bool vec = ops_avx2();
#endif
  const std::size_t grain = std::size_t(std::max<std::int64_t>(1, 4096 / std::max<std::int64_t>(C, 1)));
  pool.parallel_for(
      std::size_t(N * spatial),
      [&](std::size_t lo, std::size_t hi) {
        for (std::size_t q = lo; q < hi;) {
          const std::int64_t n = std::int64_t(q) / spatial, i = std::int64_t(q) % spatial;
          const float* p = x + n * C * spatial + i;
          float* o = y + n * C * spatial + i;
          const float* d = div ? div + n * spatial + i : nullptr;
#ifdef BHSD_X86
          if (vec && i + 4 <= spatial && q + 4 <= hi && softmax_detail::voxels4(p, o, C, spatial, d)) {
            q += 4;
            continue;
          }
          if (vec && spatial == 1 && !d && softmax_detail::row4(p, o, C)) {
            ++q;
            continue;
          }
#endif
          softmax_detail::voxel(p, o, C, spatial, d);
          ++q;
        }
      },
      grain);
}

inline void argmax_channels(const float* x, std::int32_t* y, std::int64_t N, std::int64_t C, std::int64_t spatial,
                            ThreadPool& pool) {
  pool.parallel_for(
      std::size_t(N * spatial),
      [&](std::size_t lo, std::size_t hi) {
        for (std::size_t q = lo; q < hi; ++q) {
          const std::int64_t n = std::int64_t(q) / spatial, i = std::int64_t(q) % spatial;
          const float* p = x + n * C * spatial + i;
          std::int32_t best = 0;
          float bv = p[0];
          for (std::int64_t c = 1; c < C; ++c)
            if (p[c * spatial] > bv) bv = p[c * spatial], best = std::int32_t(c);
          y[n * spatial + i] = best;
        }
      },
      4096);
}

// Concatenation along an axis: each input is [outer, len_k, inner]; the output [outer, Σ len_k, inner].
inline void concat(const std::vector<const float*>& xs, const std::vector<std::int64_t>& lens, float* y,
                   std::int64_t outer, std::int64_t inner, ThreadPool& pool) {
  std::int64_t total = 0;
  for (auto l : lens) total += l;
  pool.parallel_for(std::size_t(outer * xs.size()), [&](std::size_t lo, std::size_t hi) {
    for (std::size_t q = lo; q < hi; ++q) {
      const std::int64_t o = std::int64_t(q) / std::int64_t(xs.size());
      const std::size_t k = q % xs.size();
      std::int64_t off = 0;
      for (std::size_t j = 0; j < k; ++j) off += lens[j];
      std::memcpy(y + (o * total + off) * inner, xs[k] + o * lens[k] * inner,
                  std::size_t(lens[k] * inner) * sizeof(float));
    }
  });
}

}  // namespace bhsd
