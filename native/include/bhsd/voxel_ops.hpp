// bhsd — elementwise voxel work: summary statistics and intensity rescaling.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <mutex>
#include <type_traits>

#include "cpu_features.hpp"
#include "dtype.hpp"
#include "thread_pool.hpp"

namespace bhsd {

struct VoxelStats {
  double min = std::numeric_limits<double>::infinity();
  double max = -std::numeric_limits<double>::infinity();
  double sum = 0;               // over finite values
  std::uint64_t nonzero = 0;    // voxels != 0 (NaN counts as non-zero, as numpy's count_nonzero)
  std::uint64_t nonfinite = 0;  // NaN and ±Inf, left out of min, max and sum
};

namespace detail {
// Integers: no NaN, exact sums, loops the compiler vectorises.
template <class T>
BHSD_MULTIVERSION VoxelStats int_stats_range(const T* p, std::size_t lo, std::size_t hi) {
  T mn = std::numeric_limits<T>::max(), mx = std::numeric_limits<T>::lowest();
  std::int64_t sum = 0;
  std::uint64_t nz = 0;
  for (std::size_t i = lo; i < hi; ++i) {
    const T v = p[i];
    mn = v < mn ? v : mn;
    mx = v > mx ? v : mx;
    sum += v;
    nz += v != 0;
  }
  VoxelStats s;
  if (hi > lo) s.min = double(mn), s.max = double(mx);
  s.sum = double(sum), s.nonzero = nz;
  return s;
}

template <class T>
VoxelStats stats_range(const T* p, std::size_t lo, std::size_t hi) {
  if constexpr (std::is_integral<T>::value) return int_stats_range(p, lo, hi);
  VoxelStats s;
  double mn = s.min, mx = s.max, sum = 0;
  std::uint64_t nz = 0, nf = 0;
  for (std::size_t i = lo; i < hi; ++i) {
    const double v = static_cast<double>(p[i]);
    nz += (p[i] != T(0)) | (v != v);
    if constexpr (std::numeric_limits<T>::is_iec559) {
      if (!std::isfinite(v)) {
        ++nf;
        continue;
      }
    }
    mn = v < mn ? v : mn;
    mx = v > mx ? v : mx;
    sum += v;
  }
  s.min = mn, s.max = mx, s.sum = sum, s.nonzero = nz, s.nonfinite = nf;
  return s;
}
}  // namespace detail

template <class T>
VoxelStats voxel_stats(const T* p, std::size_t n, ThreadPool& pool) {
  VoxelStats total;
  std::mutex m;
  pool.parallel_for(
      n,
      [&](std::size_t lo, std::size_t hi) {
        VoxelStats s = detail::stats_range(p, lo, hi);
        std::lock_guard<std::mutex> lk(m);
        total.min = s.min < total.min ? s.min : total.min;
        total.max = s.max > total.max ? s.max : total.max;
        total.sum += s.sum;
        total.nonzero += s.nonzero;
        total.nonfinite += s.nonfinite;
      },
      1 << 16);
  return total;
}

namespace detail {
// dst[i] = float(src[i] * slope + inter), computed in double as NIfTI readers that scale in float64
// do (nibabel: numpy's multiply, then add, each rounded, then the cast to float32). Never fused into
// one FMA: GCC contracts C++ by default, and the single rounding differs from nibabel's two where
// the product and the intercept nearly cancel (10243 × 0.1 − 1024.3 is 1.02e-13 fused, 0 in numpy).
#if defined(__GNUC__) && !defined(__clang__)
#define BHSD_NO_FP_CONTRACT __attribute__((optimize("fp-contract=off")))
#else
#define BHSD_NO_FP_CONTRACT
#endif
template <class T>
BHSD_MULTIVERSION BHSD_NO_FP_CONTRACT void rescale_range(const T* src, float* dst, std::size_t lo, std::size_t hi,
                                                         double slope, double inter) {
#ifdef __clang__
#pragma clang fp contract(off)
#endif
  for (std::size_t i = lo; i < hi; ++i) dst[i] = static_cast<float>(static_cast<double>(src[i]) * slope + inter);
}
}  // namespace detail

template <class T>
void rescale_to_f32(const T* src, std::size_t n, double slope, double inter, float* dst, ThreadPool& pool) {
  pool.parallel_for(
      n, [&](std::size_t lo, std::size_t hi) { detail::rescale_range(src, dst, lo, hi, slope, inter); }, 1 << 16);
}

}  // namespace bhsd
