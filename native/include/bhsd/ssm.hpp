// Mamba's causal convolution and selective scan (mamba_ssm's Mamba as U-Mamba runs it), on
// token-major arrays [B, L, ·] — each token's channels side by side, so that W channels are one
// vector and a channel block's state stays in registers along the tokens:
//
//   mamba_conv: out[b, l, c] = SiLU(bias[c] + Σ_k w[c, k] · xz[b, l − (K − 1) + k, c])
//     (xz [B, L, 2·Di], its first Di channels; zero before the first token)
//   selective_scan: per (b, c) a state h[N] from zero; per token Δ = softplus(delta) (torch's: the
//     value itself past 20), h[n] = e^(Δ·A[c, n]) · h[n] + Δ · u · Bₗ[n], y = Σ_n h[n] · Cₗ[n];
//     out = (y + u · D[c]) · SiLU(z) — A = −e^(A_log), Bₗ and Cₗ the last 2N values of the token's
//     x_dbl [B, L, R + 2N], z the last Di of its xz [B, L, 2·Di].
//
// Exponentials by Cephes' expf (vector_math.hpp: e^x for x ≤ 0, the only kind here — Δ·A ≤ 0, and
// SiLU's and softplus's e^−|x|), log1p by Cephes' logf on [0, 1]; float arithmetic throughout, as
// mamba_ssm's reference (selective_scan_ref) and kernel compute it. Work is split by batch and
// channel block; a block's tokens run in order (the scan is sequential along them).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

#include "cpu_features.hpp"
#include "thread_pool.hpp"
#include "vector_math.hpp"

#if defined(__x86_64__) || defined(__i386__)
#define BHSD_X86 1  // (as conv_common.hpp defines it)
#endif

namespace bhsd {

namespace ssm_detail {

using vector_math::Vec;

// t = log(1 + t) for t in [0, 1] (and NaN): Cephes' logf, its argument 1 + t split as t itself
// (below √2 − 1: no rounding of 1 + t) or (t − 1) / 2 with exponent 1.
template <int W>
__attribute__((always_inline)) inline void vlog1p01(typename Vec<W>::f& t) {
  using vf = typename Vec<W>::f;
  using vi = typename Vec<W>::i;
  const vi big = t >= 0.41421356237f;
  const vf zero = vf{};
  const vf x = big ? (t - 1.0f) * 0.5f : t;
  const vf e = big ? zero + 1.0f : zero;
  const vf z = x * x;
  vf y = zero + 7.0376836292e-2f;
  y = y * x - 1.1514610310e-1f;
  y = y * x + 1.1676998740e-1f;
  y = y * x - 1.2420140846e-1f;
  y = y * x + 1.4249322787e-1f;
  y = y * x - 1.6668057665e-1f;
  y = y * x + 2.0000714765e-1f;
  y = y * x - 2.4999993993e-1f;
  y = y * x + 3.3333331174e-1f;
  y = y * x * z;
  y = y + e * -2.12194440e-4f;
  y = y - z * 0.5f;
  t = (x + y) + e * 0.693359375f;
}

// v = SiLU(v) = v / (1 + e^−v), through e^−|v| (no overflow).
template <int W>
__attribute__((always_inline)) inline void vsilu(typename Vec<W>::f& v) {
  using vf = typename Vec<W>::f;
  using vi = typename Vec<W>::i;
  const vi neg = v < 0.0f;
  vf t = neg ? v : -v;
  vector_math::exp_nonpositive<W>(t);
  const vf s = 1.0f / (1.0f + t);
  v = v * (neg ? t * s : s);
}

// v = softplus(v): v past 20 (torch's threshold), else max(v, 0) + log1p(e^−|v|).
template <int W>
__attribute__((always_inline)) inline void vsoftplus(typename Vec<W>::f& v) {
  using vf = typename Vec<W>::f;
  using vi = typename Vec<W>::i;
  const vi pos = v > 0.0f;
  vf t = pos ? -v : v;
  vector_math::exp_nonpositive<W>(t);
  vlog1p01<W>(t);
  const vf r = (pos ? v : vf{}) + t;
  v = v > 20.0f ? v : r;
}

// W channels of a row into a vector, lanes past `n` zero (a block's tail).
template <int W>
__attribute__((always_inline)) inline void load(typename Vec<W>::f& v, const float* p, int n) {
  if (n == W) {
    v = *reinterpret_cast<const typename Vec<W>::fu*>(p);
    return;
  }
  float buf[W] = {};
  for (int i = 0; i < n; ++i) buf[i] = p[i];
  v = *reinterpret_cast<const typename Vec<W>::fu*>(buf);
}
template <int W>
__attribute__((always_inline)) inline void store(float* p, const typename Vec<W>::f& v, int n) {
  if (n == W) {
    *reinterpret_cast<typename Vec<W>::fu*>(p) = v;
    return;
  }
  float buf[W];
  *reinterpret_cast<typename Vec<W>::fu*>(buf) = v;
  for (int i = 0; i < n; ++i) p[i] = buf[i];
}

struct ScanShape {
  std::int64_t B, L, Di, N, R;
};

// Tasks [lo, hi) of batch × channel block: the scan of each block along its tokens.
template <int W>
__attribute__((always_inline)) inline void scan_tasks(const float* u, const float* delta, const float* at,
                                                      const float* xdbl, const float* dd, const float* xz, float* out,
                                                      const ScanShape& s, std::size_t lo, std::size_t hi) {
  using vf = typename Vec<W>::f;
  using vfu = typename Vec<W>::fu;
  const std::int64_t blocks = (s.Di + W - 1) / W, N = s.N, Di = s.Di, row = s.R + 2 * N;
  // (the state and A of a block, N vectors each: registers where N is small, L1 otherwise)
  // (on 64-byte lines: at std::vector's 16-byte alignment every AVX-512 load and store of the state
  // had spanned two)
  std::vector<float> buf(std::size_t(2 * N * W + 16));
  float* const line =
      reinterpret_cast<float*>((reinterpret_cast<std::uintptr_t>(buf.data()) + 63) & ~std::uintptr_t(63));
  vfu* h = reinterpret_cast<vfu*>(line);
  vfu* a = reinterpret_cast<vfu*>(line + N * W);
  for (std::size_t task = lo; task < hi; ++task) {
    const std::int64_t b = std::int64_t(task) / blocks, c0 = std::int64_t(task) % blocks * W;
    const int n = int(std::min<std::int64_t>(W, Di - c0));
    for (std::int64_t k = 0; k < N; ++k) {
      vf ak;
      load<W>(ak, at + k * Di + c0, n);
      h[k] = vf{};
      a[k] = ak;
    }
    vf dv;
    load<W>(dv, dd + c0, n);
    for (std::int64_t l = 0; l < s.L; ++l) {
      const std::int64_t t = b * s.L + l;
      vf dt, uv, z;
      load<W>(dt, delta + t * Di + c0, n);
      load<W>(uv, u + t * Di + c0, n);
      load<W>(z, xz + t * 2 * Di + Di + c0, n);
      vsoftplus<W>(dt);
      const vf du = dt * uv;
      const float* bl = xdbl + t * row + s.R;
      const float* cl = bl + N;
      vf acc = vf{};
      for (std::int64_t k = 0; k < N; ++k) {
        vf e = dt * a[k];
        vector_math::exp_nonpositive<W>(e);
        const vf hk = e * h[k] + du * bl[k];
        h[k] = hk;
        acc = acc + hk * cl[k];
      }
      vsilu<W>(z);
      store<W>(out + t * Di + c0, (acc + uv * dv) * z, n);
    }
  }
}

// Tasks [lo, hi) of batch × token chunk (`per` tokens) of the causal convolution; wt is [K, Di].
template <int W>
__attribute__((always_inline)) inline void conv_tasks(const float* xz, const float* wt, const float* bias, float* out,
                                                      std::int64_t L, std::int64_t Di, std::int64_t K, std::int64_t per,
                                                      std::int64_t chunks, std::size_t lo, std::size_t hi) {
  using vf = typename Vec<W>::f;
  for (std::size_t task = lo; task < hi; ++task) {
    const std::int64_t b = std::int64_t(task) / chunks, l0 = std::int64_t(task) % chunks * per;
    const std::int64_t l1 = std::min(L, l0 + per);
    for (std::int64_t l = l0; l < l1; ++l)
      for (std::int64_t c0 = 0; c0 < Di; c0 += W) {
        const int n = int(std::min<std::int64_t>(W, Di - c0));
        vf s = vf{};
        if (bias) load<W>(s, bias + c0, n);
        for (std::int64_t k = 0; k < K; ++k) {
          const std::int64_t src = l - (K - 1) + k;
          if (src < 0) continue;
          vf w, x;
          load<W>(w, wt + k * Di + c0, n);
          load<W>(x, xz + (b * L + src) * 2 * Di + c0, n);
          s = s + w * x;
        }
        vsilu<W>(s);
        store<W>(out + (b * L + l) * Di + c0, s, n);
      }
  }
}

#ifdef BHSD_X86
__attribute__((target("avx512f"))) inline void scan_avx512(const float* u, const float* delta, const float* at,
                                                           const float* xdbl, const float* dd, const float* xz,
                                                           float* out, const ScanShape& s, std::size_t lo,
                                                           std::size_t hi) {
  scan_tasks<16>(u, delta, at, xdbl, dd, xz, out, s, lo, hi);
}
__attribute__((target("avx2,fma"))) inline void scan_avx2(const float* u, const float* delta, const float* at,
                                                          const float* xdbl, const float* dd, const float* xz,
                                                          float* out, const ScanShape& s, std::size_t lo,
                                                          std::size_t hi) {
  scan_tasks<8>(u, delta, at, xdbl, dd, xz, out, s, lo, hi);
}
__attribute__((target("avx512f"))) inline void conv_avx512(const float* xz, const float* wt, const float* bias,
                                                           float* out, std::int64_t L, std::int64_t Di, std::int64_t K,
                                                           std::int64_t per, std::int64_t chunks, std::size_t lo,
                                                           std::size_t hi) {
  conv_tasks<16>(xz, wt, bias, out, L, Di, K, per, chunks, lo, hi);
}
__attribute__((target("avx2,fma"))) inline void conv_avx2(const float* xz, const float* wt, const float* bias,
                                                          float* out, std::int64_t L, std::int64_t Di, std::int64_t K,
                                                          std::int64_t per, std::int64_t chunks, std::size_t lo,
                                                          std::size_t hi) {
  conv_tasks<8>(xz, wt, bias, out, L, Di, K, per, chunks, lo, hi);
}
#endif

// "avx512", "avx2" or "generic" (cpu_features.hpp).
inline const char* kernel_name() { return vector_kernel_name(); }

}  // namespace ssm_detail

// See the top of this file. The caller has checked every array's length against the shape.
inline void selective_scan(const float* u, const float* delta, const float* a_log, const float* xdbl, const float* d,
                           const float* xz, float* out, std::int64_t B, std::int64_t L, std::int64_t Di, std::int64_t N,
                           std::int64_t R, ThreadPool& pool) {
  using namespace ssm_detail;
  if (B <= 0 || L <= 0 || Di <= 0 || N <= 0) return;
  // A = −e^(A_log) in float, as torch holds it, transposed to [N, Di] (a state's channels side by side)
  std::vector<float> at(std::size_t(N * Di));
  for (std::int64_t c = 0; c < Di; ++c)
    for (std::int64_t k = 0; k < N; ++k) at[std::size_t(k * Di + c)] = -float(std::exp(double(a_log[c * N + k])));
  const ScanShape s{B, L, Di, N, R};
  static const std::string best = kernel_name();
  // (a block's tokens run in order on one thread: 8-channel blocks where 16-channel ones would leave
  // threads without two tasks each — U-Mamba's first stage has 64 channels)
  const std::string which =
      best == "avx512" && B * ((Di + 15) / 16) < 2 * std::int64_t(pool.size()) ? std::string("avx2") : best;
  const int W = which == "avx512" ? 16 : which == "avx2" ? 8 : 4;
  const std::int64_t blocks = (Di + W - 1) / W;
  const float* ap = at.data();
  pool.parallel_for(
      std::size_t(B * blocks),
      [&](std::size_t lo, std::size_t hi) {
#ifdef BHSD_X86
        if (which == "avx512") return scan_avx512(u, delta, ap, xdbl, d, xz, out, s, lo, hi);
        if (which == "avx2") return scan_avx2(u, delta, ap, xdbl, d, xz, out, s, lo, hi);
#endif
        scan_tasks<4>(u, delta, ap, xdbl, d, xz, out, s, lo, hi);
      },
      1, 1);
}

// See the top of this file: w is conv1d's [Di, 1, K] weight, bias [Di] or null.
inline void mamba_conv(const float* xz, const float* w, const float* bias, float* out, std::int64_t B, std::int64_t L,
                       std::int64_t Di, std::int64_t K, ThreadPool& pool) {
  using namespace ssm_detail;
  if (B <= 0 || L <= 0 || Di <= 0 || K <= 0) return;
  std::vector<float> wt(std::size_t(K * Di));
  for (std::int64_t c = 0; c < Di; ++c)
    for (std::int64_t k = 0; k < K; ++k) wt[std::size_t(k * Di + c)] = w[c * K + k];
  const std::int64_t per = std::max<std::int64_t>(1, 16384 / Di);
  const std::int64_t chunks = (L + per - 1) / per;
  static const std::string which = kernel_name();
  const float* wp = wt.data();
  pool.parallel_for(
      std::size_t(B * chunks),
      [&](std::size_t lo, std::size_t hi) {
#ifdef BHSD_X86
        if (which == "avx512") return conv_avx512(xz, wp, bias, out, L, Di, K, per, chunks, lo, hi);
        if (which == "avx2") return conv_avx2(xz, wp, bias, out, L, Di, K, per, chunks, lo, hi);
#endif
        conv_tasks<4>(xz, wp, bias, out, L, Di, K, per, chunks, lo, hi);
      },
      1, 4);
}

}  // namespace bhsd
