// bhsd — the convolution micro-kernel for 64-bit Arm (AWS Graviton, Ampere, Apple silicon under
// Linux): the same contract as kernel_generic, c[r·NR + j] += Σ_k a[k·MR + r] · b[k·NR + j], on the
// MR × NR = 6 × 16 tile, with NEON (Advanced SIMD, present on every AArch64 processor, so no run-time
// check). 24 float32x4 accumulators (6 rows × 4 vectors of the 16 voxels), 4 for the panel's 16
// samples of weight k and 2 for its 6 weights: 30 of the 32 vector registers, one fused
// multiply-add by lane per accumulator and weight. The blocked dispatcher (conv3d_forward) packs the
// panels and stages partial tiles as it does for the baseline kernel; pick_kernel chooses this one.
// Part of conv.hpp.
#pragma once

#if defined(__aarch64__) && defined(__ARM_NEON)
#include <arm_neon.h>

#include <cstdint>

#include "conv_common.hpp"

#define BHSD_NEON 1

namespace bhsd {
namespace conv_detail {

static_assert(MR == 6 && NR == 16, "kernel_neon is written for 6 × 16 tiles");

inline void kernel_neon(const float* a, const float* b, std::int64_t K, float* c) {
  float32x4_t acc[MR][4];
#pragma GCC unroll 6
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
    for (int q = 0; q < 4; ++q) acc[r][q] = vld1q_f32(c + r * NR + 4 * q);
  for (std::int64_t k = 0; k < K; ++k) {
    const float* bk = b + k * NR;
    const float* ak = a + k * MR;
    const float32x4_t b0 = vld1q_f32(bk), b1 = vld1q_f32(bk + 4), b2 = vld1q_f32(bk + 8), b3 = vld1q_f32(bk + 12);
    const float32x4_t a03 = vld1q_f32(ak);     // weights of rows 0–3
    const float32x2_t a45 = vld1_f32(ak + 4);  // rows 4–5 (exactly the 6 floats of weight k)
#define BHSD_NEON_ROW(r, lanefma, av, lane)     \
  acc[r][0] = lanefma(acc[r][0], b0, av, lane); \
  acc[r][1] = lanefma(acc[r][1], b1, av, lane); \
  acc[r][2] = lanefma(acc[r][2], b2, av, lane); \
  acc[r][3] = lanefma(acc[r][3], b3, av, lane);
    BHSD_NEON_ROW(0, vfmaq_laneq_f32, a03, 0)
    BHSD_NEON_ROW(1, vfmaq_laneq_f32, a03, 1)
    BHSD_NEON_ROW(2, vfmaq_laneq_f32, a03, 2)
    BHSD_NEON_ROW(3, vfmaq_laneq_f32, a03, 3)
    BHSD_NEON_ROW(4, vfmaq_lane_f32, a45, 0)
    BHSD_NEON_ROW(5, vfmaq_lane_f32, a45, 1)
#undef BHSD_NEON_ROW
  }
#pragma GCC unroll 6
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
    for (int q = 0; q < 4; ++q) vst1q_f32(c + r * NR + 4 * q, acc[r][q]);
}

}  // namespace conv_detail
}  // namespace bhsd
#endif
