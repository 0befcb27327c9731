// bhsd — this machine's FMA peak, measured: every pool thread runs independent chains of AVX2
// fused multiply-adds (enough of them to cover the FMA latency), so that the benchmarks can state
// the fraction of peak their kernels reach. The chains' loop is unrolled by pragma, not left to the
// optimiser: at -O2 GCC kept the 12 accumulators in memory and the probe read 105 GFLOP/s on a
// machine whose FMA units give 425.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdlib>

#include "cpu_features.hpp"
#include "thread_pool.hpp"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

namespace bhsd {

namespace peak_detail {
#if defined(__x86_64__) || defined(__i386__)
__attribute__((target("avx2,fma"))) inline float fma_chains(std::int64_t iters) {
  __m256 a[12];
  for (int i = 0; i < 12; ++i) a[i] = _mm256_set1_ps(float(i) * 1e-3f);
  const __m256 m = _mm256_set1_ps(0.999999f), c = _mm256_set1_ps(1e-7f);
  for (std::int64_t it = 0; it < iters; ++it)
#pragma GCC unroll 12
    for (int i = 0; i < 12; ++i) a[i] = _mm256_fmadd_ps(a[i], m, c);
  __m256 s = a[0];
  for (int i = 1; i < 12; ++i) s = _mm256_add_ps(s, a[i]);
  float out[8];
  _mm256_storeu_ps(out, s);
  return out[0];
}

__attribute__((target("avx512f"))) inline float fma_chains512(std::int64_t iters) {
  __m512 a[12];
  for (int i = 0; i < 12; ++i) a[i] = _mm512_set1_ps(float(i) * 1e-3f);
  const __m512 m = _mm512_set1_ps(0.999999f), c = _mm512_set1_ps(1e-7f);
  for (std::int64_t it = 0; it < iters; ++it)
#pragma GCC unroll 12
    for (int i = 0; i < 12; ++i) a[i] = _mm512_fmadd_ps(a[i], m, c);
  __m512 s = a[0];
  for (int i = 1; i < 12; ++i) s = _mm512_add_ps(s, a[i]);
  float out[16];  // (not _mm512_reduce_add_ps: GCC 12's header warns about its own undefined lanes)
  _mm512_storeu_ps(out, s);
  return out[0];
}
#endif
}  // namespace peak_detail

// Returns GFLOP/s (an FMA on 8 floats counts 16, on 16 floats 32) over all pool threads, of the
// widest FMA the convolutions use here (AVX-512 where they run it); 0 without AVX2+FMA.
inline double fma_peak_gflops(ThreadPool& pool, std::int64_t iters = 20'000'000) {
#if defined(__x86_64__) || defined(__i386__)
  const CpuFeatures f = cpu_features();
  if (!(f.avx2 && f.fma)) return 0;
  const bool wide = f.avx512f && !std::getenv("BHSD_NO_AVX512") && !std::getenv("BHSD_NO_AVX2");
  const unsigned threads = pool.size();
  std::atomic<float> sink{0};
  const auto t0 = std::chrono::steady_clock::now();
  pool.parallel_for(
      threads,
      [&](std::size_t lo, std::size_t hi) {
        for (std::size_t t = lo; t < hi; ++t)
          sink = sink + (wide ? peak_detail::fma_chains512(iters) : peak_detail::fma_chains(iters));
      },
      1, 1);
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return double(threads) * double(iters) * 12 * (wide ? 32 : 16) / s / 1e9;
#else
  (void)pool;
  (void)iters;
  return 0;
#endif
}

}  // namespace bhsd
