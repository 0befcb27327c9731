// bhsd — the convolution micro-kernels: c[r·NR + j] += Σ_k a[k·MR + r] · b[k·NR + j] on an MR × NR tile,
// portable, AVX2/FMA and AVX-512 (x86 only, chosen at run time), NEON (AArch64, in conv_neon.hpp), and
// pick_kernel, the dispatcher the blocked convolution calls. Part of conv.hpp.
#pragma once

#include "conv_common.hpp"
#include "conv_neon.hpp"

namespace bhsd {

namespace conv_detail {

// c[r·NR + j] += Σ_k a[k·MR + r] · b[k·NR + j]
inline void kernel_generic(const float* a, const float* b, std::int64_t K, float* c) {
  float acc[MR * NR];
  std::memcpy(acc, c, sizeof acc);
  for (std::int64_t k = 0; k < K; ++k) {
    const float* bk = b + k * NR;
    const float* ak = a + k * MR;
    for (int r = 0; r < MR; ++r)
      for (int j = 0; j < NR; ++j) acc[r * NR + j] += ak[r] * bk[j];
  }
  std::memcpy(c, acc, sizeof acc);
}

#ifdef BHSD_X86
// Where the micro-kernel finds the 16 input samples of weight k: a packed panel (k·16 on), or the
// input itself, zero-padded, at base + delta[k] (an indirect GEMM: nothing packed). At each step k
// the kernels also call pf(k): nothing, but for PackedAhead.
struct PackedB {
  const float* b;
  const float* at(std::int64_t k) const { return b + k * NR; }
  void pf(std::int64_t) const {}
};
struct IndirectB {
  const float* base;
  const std::int32_t* delta;
  const float* at(std::int64_t k) const { return base + delta[k]; }
  void pf(std::int64_t) const {}
};
// Lines [r0, r1) of rows `ld` floats apart from o, asked for ahead of writing them: a read prefetch
// (prefetchw, where the processor has it, measured 1–4 % slower than this on Zen 5's Winograd layers).
inline void prefetch_rows_for_write(const float* o, std::int64_t r0, std::int64_t r1, std::int64_t ld) {
  for (std::int64_t r = r0; r < r1; ++r) _mm_prefetch(reinterpret_cast<const char*>(o + r * ld), _MM_HINT_T0);
}
// PackedB that also asks for the same row `ahead` floats on, a line a step, while the products run:
// a Winograd point's products ask for the next point's V (point_gemm2), whose lines are then in the
// caches when that point starts.
struct PackedAhead {
  const float* b;
  std::int64_t ahead;
  const float* at(std::int64_t k) const { return b + k * NR; }
  void pf(std::int64_t k) const { _mm_prefetch(reinterpret_cast<const char*>(b + k * NR + ahead), _MM_HINT_T0); }
};

// The AVX2 micro-kernel: an R×16 tile (R ≤ 6 output channels) in 2R registers, rows `ldo` apart
// (the output itself, or a staging tile with ldo = 16). first: start from the bias, else from what
// the tile holds; last: apply the activation before storing. Only the R rows are read or written.
template <int R, class B>
__attribute__((target("avx2,fma"))) inline void kernel_avx2_tile(const float* a, B bsrc, std::int64_t K, float* o,
                                                                 std::int64_t ldo, const float* bias, bool first,
                                                                 bool last, Act act, float alpha) {
  static_assert(R >= 1 && R <= MR, "rows per tile");
  __m256 c0[R], c1[R];
#pragma GCC unroll 6
  for (int r = 0; r < R; ++r) {
    if (first) {
      c0[r] = c1[r] = _mm256_set1_ps(bias ? bias[r] : 0.0f);
    } else {
      c0[r] = _mm256_loadu_ps(o + r * ldo), c1[r] = _mm256_loadu_ps(o + r * ldo + 8);
    }
  }
  for (std::int64_t k = 0; k < K; ++k) {
    const float* b = bsrc.at(k);
    const __m256 b0 = _mm256_loadu_ps(b), b1 = _mm256_loadu_ps(b + 8);
    bsrc.pf(k);
#pragma GCC unroll 6
    for (int r = 0; r < R; ++r) {
      const __m256 w = _mm256_broadcast_ss(a + r);
      c0[r] = _mm256_fmadd_ps(w, b0, c0[r]), c1[r] = _mm256_fmadd_ps(w, b1, c1[r]);
    }
    a += MR;
  }
  if (last && act != Act::none) {
    const __m256 zero = _mm256_setzero_ps(), slope = _mm256_set1_ps(act == Act::relu ? 0.0f : alpha);
#pragma GCC unroll 6
    for (int r = 0; r < R; ++r) {
      c0[r] = _mm256_blendv_ps(_mm256_mul_ps(c0[r], slope), c0[r], _mm256_cmp_ps(c0[r], zero, _CMP_GT_OQ));
      c1[r] = _mm256_blendv_ps(_mm256_mul_ps(c1[r], slope), c1[r], _mm256_cmp_ps(c1[r], zero, _CMP_GT_OQ));
    }
  }
  if (last && ldo > NR && stream_tiles() && !((reinterpret_cast<std::uintptr_t>(o) | std::uintptr_t(ldo * 4)) & 63)) {
#pragma GCC unroll 6
    for (int r = 0; r < R; ++r) _mm256_stream_ps(o + r * ldo, c0[r]), _mm256_stream_ps(o + r * ldo + 8, c1[r]);
    return;
  }
#pragma GCC unroll 6
  for (int r = 0; r < R; ++r) _mm256_storeu_ps(o + r * ldo, c0[r]), _mm256_storeu_ps(o + r * ldo + 8, c1[r]);
}

// The tile kernel for a run-time row count.
template <class B>
__attribute__((target("avx2,fma"))) inline void kernel_avx2_rows(std::int64_t rows, const float* a, B bsrc,
                                                                 std::int64_t K, float* o, std::int64_t ldo,
                                                                 const float* bias, bool first, bool last, Act act,
                                                                 float alpha) {
  switch (rows) {
    case 6:
      return kernel_avx2_tile<6>(a, bsrc, K, o, ldo, bias, first, last, act, alpha);
    case 5:
      return kernel_avx2_tile<5>(a, bsrc, K, o, ldo, bias, first, last, act, alpha);
    case 4:
      return kernel_avx2_tile<4>(a, bsrc, K, o, ldo, bias, first, last, act, alpha);
    case 3:
      return kernel_avx2_tile<3>(a, bsrc, K, o, ldo, bias, first, last, act, alpha);
    case 2:
      return kernel_avx2_tile<2>(a, bsrc, K, o, ldo, bias, first, last, act, alpha);
    default:
      return kernel_avx2_tile<1>(a, bsrc, K, o, ldo, bias, first, last, act, alpha);
  }
}

// c[r·NR + j] += Σ_k a[k·MR + r] · b[k·NR + j], on a staging tile.
__attribute__((target("avx2,fma"))) inline void kernel_avx2(const float* a, const float* b, std::int64_t K, float* c) {
  kernel_avx2_tile<MR>(a, PackedB{b}, K, c, NR, nullptr, false, false, Act::none, 0.0f);
}

// One output tile of `rows` ≤ MR channels × `n` ≤ NR voxels at o (rows ldo apart): in place when
// n = NR, else through a zero-filled staging tile so that nothing past the tile is read or written.
template <class B>
__attribute__((target("avx2,fma"))) inline void kernel_avx2_any(const float* a, B bsrc, std::int64_t K, float* o,
                                                                std::int64_t ldo, const float* bias, std::int64_t rows,
                                                                std::int64_t n, bool first, bool last, Act act,
                                                                float alpha) {
  if (n == NR) return kernel_avx2_rows(rows, a, bsrc, K, o, ldo, bias, first, last, act, alpha);
  alignas(64) float tile[MR * NR] = {};
  if (!first)
    for (std::int64_t q = 0; q < rows; ++q) std::memcpy(tile + q * NR, o + q * ldo, std::size_t(n) * sizeof(float));
  kernel_avx2_rows(rows, a, bsrc, K, tile, NR, bias, first, last, act, alpha);
  for (std::int64_t q = 0; q < rows; ++q) std::memcpy(o + q * ldo, tile + q * NR, std::size_t(n) * sizeof(float));
}

// The AVX-512 micro-kernel: two blocks of weights (R0 ≤ 6 and R1 ≤ 6 output channels, R1 = 0 for
// one) against the same 16 input samples per weight, one zmm register per output row: up to 12
// accumulators hide the FMA latency, and each FMA does 16 voxels — twice the AVX2 kernel's work per
// instruction on processors with full-width AVX-512 (Zen 5, Intel server cores). The same packed
// weights and panels as AVX2 (block b + 1's weights K·MR floats after block b's); partial tiles
// (n < 16) by masked loads and stores, nothing past them read or written.
template <int R0, int R1, class B>
__attribute__((target("avx512f"))) inline void kernel_avx512_pair(const float* a0, const float* a1, B bsrc,
                                                                  std::int64_t K, float* o, std::int64_t ldo,
                                                                  const float* bias, __mmask16 m, bool first, bool last,
                                                                  Act act, float alpha) {
  static_assert(R0 >= 1 && R0 <= MR && R1 >= 0 && R1 <= MR, "rows per block");
  constexpr int R = R0 + R1;
  __m512 c[R];
#pragma GCC unroll 12
  for (int r = 0; r < R; ++r)
    c[r] = first ? _mm512_set1_ps(bias ? bias[r] : 0.0f) : _mm512_maskz_loadu_ps(m, o + r * ldo);
  for (std::int64_t k = 0; k < K; ++k) {
    const __m512 b = _mm512_loadu_ps(bsrc.at(k));
    bsrc.pf(k);
#pragma GCC unroll 6
    for (int r = 0; r < R0; ++r) c[r] = _mm512_fmadd_ps(_mm512_set1_ps(a0[r]), b, c[r]);
#pragma GCC unroll 6
    for (int r = 0; r < R1; ++r) c[R0 + r] = _mm512_fmadd_ps(_mm512_set1_ps(a1[r]), b, c[R0 + r]);
    a0 += MR;
    if (R1) a1 += MR;
  }
  if (last && act != Act::none) {
    const __m512 zero = _mm512_setzero_ps(), slope = _mm512_set1_ps(act == Act::relu ? 0.0f : alpha);
#pragma GCC unroll 12
    for (int r = 0; r < R; ++r)
      c[r] = _mm512_mask_mul_ps(c[r], _mm512_cmp_ps_mask(c[r], zero, _CMP_NGT_UQ), c[r], slope);
  }
#pragma GCC unroll 12
  for (int r = 0; r < R; ++r) _mm512_mask_storeu_ps(o + r * ldo, m, c[r]);
}

template <int R0, class B>
__attribute__((target("avx512f"))) inline void kernel_avx512_second(std::int64_t rows1, const float* a0,
                                                                    const float* a1, B bsrc, std::int64_t K, float* o,
                                                                    std::int64_t ldo, const float* bias, __mmask16 m,
                                                                    bool first, bool last, Act act, float alpha) {
  switch (rows1) {
    case 6:
      return kernel_avx512_pair<R0, 6>(a0, a1, bsrc, K, o, ldo, bias, m, first, last, act, alpha);
    case 5:
      return kernel_avx512_pair<R0, 5>(a0, a1, bsrc, K, o, ldo, bias, m, first, last, act, alpha);
    case 4:
      return kernel_avx512_pair<R0, 4>(a0, a1, bsrc, K, o, ldo, bias, m, first, last, act, alpha);
    case 3:
      return kernel_avx512_pair<R0, 3>(a0, a1, bsrc, K, o, ldo, bias, m, first, last, act, alpha);
    case 2:
      return kernel_avx512_pair<R0, 2>(a0, a1, bsrc, K, o, ldo, bias, m, first, last, act, alpha);
    case 1:
      return kernel_avx512_pair<R0, 1>(a0, a1, bsrc, K, o, ldo, bias, m, first, last, act, alpha);
    default:
      return kernel_avx512_pair<R0, 0>(a0, a1, bsrc, K, o, ldo, bias, m, first, last, act, alpha);
  }
}

// Blocks of `rows0` and `rows1` (0: none) output channels, the second's weights `astride` floats
// after the first's, its rows right after the first's in the output; n ≤ 16 voxels.
template <class B>
__attribute__((target("avx512f"))) inline void kernel_avx512_any(const float* a, std::int64_t astride,
                                                                 std::int64_t rows0, std::int64_t rows1, B bsrc,
                                                                 std::int64_t K, float* o, std::int64_t ldo,
                                                                 const float* bias, std::int64_t n, bool first,
                                                                 bool last, Act act, float alpha) {
  const __mmask16 m = n >= NR ? __mmask16(0xFFFF) : __mmask16((1u << n) - 1);
  const float* a1 = a + astride;
  if (rows0 == MR) return kernel_avx512_second<MR>(rows1, a, a1, bsrc, K, o, ldo, bias, m, first, last, act, alpha);
  // a layer's two tail blocks (CoBlocks: 4 + 3, 4 + 4, 5 + 4) as one pair: 7–9 accumulators, where
  // either alone leaves the FMA units waiting on latency
  if (rows0 == 4 && rows1 == 4)
    return kernel_avx512_pair<4, 4>(a, a1, bsrc, K, o, ldo, bias, m, first, last, act, alpha);
  if (rows0 == 4 && rows1 == 3)
    return kernel_avx512_pair<4, 3>(a, a1, bsrc, K, o, ldo, bias, m, first, last, act, alpha);
  if (rows0 == 5 && rows1 == 4)
    return kernel_avx512_pair<5, 4>(a, a1, bsrc, K, o, ldo, bias, m, first, last, act, alpha);
  // otherwise a short block runs alone (kernel_blocks pairs nothing else with it)
  switch (rows0) {
    case 5:
      return kernel_avx512_pair<5, 0>(a, a1, bsrc, K, o, ldo, bias, m, first, last, act, alpha);
    case 4:
      return kernel_avx512_pair<4, 0>(a, a1, bsrc, K, o, ldo, bias, m, first, last, act, alpha);
    case 3:
      return kernel_avx512_pair<3, 0>(a, a1, bsrc, K, o, ldo, bias, m, first, last, act, alpha);
    case 2:
      return kernel_avx512_pair<2, 0>(a, a1, bsrc, K, o, ldo, bias, m, first, last, act, alpha);
    default:
      return kernel_avx512_pair<1, 0>(a, a1, bsrc, K, o, ldo, bias, m, first, last, act, alpha);
  }
}

// The same for two tiles of 16 voxels at once (two segments: samples b0src.at(k) and b1src.at(k),
// outputs o0 and o1): each weight broadcast feeds two FMAs, so a weight row of 12 output channels
// costs 12 broadcasts, 2 sample loads and 24 FMAs instead of 13 loads per 12 FMAs — on Zen 5 one
// core's hot loop went from 178 to 200–214 GFLOP/s of its 219 peak. 24 accumulators, 26 of the 32
// zmm registers with the samples.
template <int R0, int R1, class B>
__attribute__((target("avx512f"))) inline void kernel_avx512_pair2(const float* a0, const float* a1, B b0src, B b1src,
                                                                   std::int64_t K, float* o0, float* o1,
                                                                   std::int64_t ldo, const float* bias, __mmask16 m0,
                                                                   __mmask16 m1, bool first, bool last, Act act,
                                                                   float alpha) {
  static_assert(R0 >= 1 && R0 <= MR && R1 >= 0 && R1 <= MR, "rows per block");
  constexpr int R = R0 + R1;
  __m512 c[R], d[R];
#pragma GCC unroll 12
  for (int r = 0; r < R; ++r) {
    if (first)
      c[r] = d[r] = _mm512_set1_ps(bias ? bias[r] : 0.0f);
    else
      c[r] = _mm512_maskz_loadu_ps(m0, o0 + r * ldo), d[r] = _mm512_maskz_loadu_ps(m1, o1 + r * ldo);
  }
  for (std::int64_t k = 0; k < K; ++k) {
    const __m512 b = _mm512_loadu_ps(b0src.at(k)), e = _mm512_loadu_ps(b1src.at(k));
    b0src.pf(k), b1src.pf(k);
#pragma GCC unroll 6
    for (int r = 0; r < R0; ++r) {
      const __m512 w = _mm512_set1_ps(a0[r]);
      c[r] = _mm512_fmadd_ps(w, b, c[r]), d[r] = _mm512_fmadd_ps(w, e, d[r]);
    }
#pragma GCC unroll 6
    for (int r = 0; r < R1; ++r) {
      const __m512 w = _mm512_set1_ps(a1[r]);
      c[R0 + r] = _mm512_fmadd_ps(w, b, c[R0 + r]), d[R0 + r] = _mm512_fmadd_ps(w, e, d[R0 + r]);
    }
    a0 += MR;
    if (R1) a1 += MR;
  }
  // the rows' addresses only now: computed before the loop, GCC kept them in vector registers and
  // spilled a sample register to the stack inside it (229 instead of 290 GFLOP/s on a layer)
  __asm__ volatile("" : "+r"(o0), "+r"(o1), "+r"(ldo));
  if (last && act != Act::none) {
    const __m512 zero = _mm512_setzero_ps(), slope = _mm512_set1_ps(act == Act::relu ? 0.0f : alpha);
#pragma GCC unroll 12
    for (int r = 0; r < R; ++r) {
      c[r] = _mm512_mask_mul_ps(c[r], _mm512_cmp_ps_mask(c[r], zero, _CMP_NGT_UQ), c[r], slope);
      d[r] = _mm512_mask_mul_ps(d[r], _mm512_cmp_ps_mask(d[r], zero, _CMP_NGT_UQ), d[r], slope);
    }
  }
  // the output itself (not a staging tile), whole tiles on cache lines, in a StreamTiles scope
  if (last && ldo > NR && m0 == 0xFFFF && m1 == 0xFFFF && stream_tiles() &&
      !((reinterpret_cast<std::uintptr_t>(o0) | reinterpret_cast<std::uintptr_t>(o1) | std::uintptr_t(ldo * 4)) & 63)) {
#pragma GCC unroll 12
    for (int r = 0; r < R; ++r) {
      _mm512_stream_ps(o0 + r * ldo, c[r]);
      _mm512_stream_ps(o1 + r * ldo, d[r]);
    }
    return;
  }
#pragma GCC unroll 12
  for (int r = 0; r < R; ++r) {
    _mm512_mask_storeu_ps(o0 + r * ldo, m0, c[r]);
    _mm512_mask_storeu_ps(o1 + r * ldo, m1, d[r]);
  }
}

// kernel_avx512_any for two tiles (n0, n1 ≤ 16 voxels at o0 and o1): full blocks, the tail pairs and
// a lone block of 4 or 5 rows take both tiles per call; a block of 1–3 rows (a layer of under 4
// channels) runs as two single tiles.
template <class B>
__attribute__((target("avx512f"))) inline void kernel_avx512_any2(const float* a, std::int64_t astride,
                                                                  std::int64_t rows0, std::int64_t rows1, B b0src,
                                                                  B b1src, std::int64_t K, float* o0, float* o1,
                                                                  std::int64_t ldo, const float* bias, std::int64_t n0,
                                                                  std::int64_t n1, bool first, bool last, Act act,
                                                                  float alpha) {
  const __mmask16 m0 = n0 >= NR ? __mmask16(0xFFFF) : __mmask16((1u << n0) - 1),
                  m1 = n1 >= NR ? __mmask16(0xFFFF) : __mmask16((1u << n1) - 1);
  const float* a1 = a + astride;
#define BHSD_PAIR2(R0, R1) \
  return kernel_avx512_pair2<R0, R1>(a, a1, b0src, b1src, K, o0, o1, ldo, bias, m0, m1, first, last, act, alpha)
  if (rows0 != MR) {  // the tail blocks (see kernel_avx512_any), or a layer of under 6 channels
    if (rows0 == 4 && rows1 == 4) BHSD_PAIR2(4, 4);
    if (rows0 == 4 && rows1 == 3) BHSD_PAIR2(4, 3);
    if (rows0 == 5 && rows1 == 4) BHSD_PAIR2(5, 4);
    if (rows0 == 5 && rows1 == 0) BHSD_PAIR2(5, 0);
    if (rows0 == 4 && rows1 == 0) BHSD_PAIR2(4, 0);
    kernel_avx512_any(a, astride, rows0, rows1, b0src, K, o0, ldo, bias, n0, first, last, act, alpha);
    kernel_avx512_any(a, astride, rows0, rows1, b1src, K, o1, ldo, bias, n1, first, last, act, alpha);
    return;
  }
  switch (rows1) {
    case 6:
      BHSD_PAIR2(MR, 6);
    case 5:
      BHSD_PAIR2(MR, 5);
    case 4:
      BHSD_PAIR2(MR, 4);
    case 3:
      BHSD_PAIR2(MR, 3);
    case 2:
      BHSD_PAIR2(MR, 2);
    case 1:
      BHSD_PAIR2(MR, 1);
    default:
      BHSD_PAIR2(MR, 0);
  }
#undef BHSD_PAIR2
}

// Whether the AVX-512 kernel runs here (BHSD_NO_AVX512=1 keeps AVX2, for comparison and tests).
inline bool use_avx512() {
  static const bool on = [] {
    const CpuFeatures f = cpu_features();
    return f.avx512f && f.avx2 && f.fma && !std::getenv("BHSD_NO_AVX512") && !std::getenv("BHSD_NO_AVX2");
  }();
  return on;
}

// The rows of block cob + 1 that the AVX-512 kernel takes with block cob in one call (0: cob runs
// alone): a full block takes its successor, and the first tail block (at cbk.full) the second.
inline std::int64_t paired_rows(const CoBlocks& cbk, std::int64_t cob, std::int64_t cob1) {
  return cob + 1 < cob1 && (cbk.rows(cob) == MR || cob == cbk.full) ? cbk.rows(cob + 1) : 0;
}

// Output-channel blocks cob0 … cob1 of one tile (n ≤ 16 voxels at o, rows ldo apart): two blocks
// per AVX-512 call where it runs, one per AVX2 call elsewhere. wp: the layer's packed weights at
// this block of K (block b at wp + b·Kfull·MR); kbn: the K rows of this call.
template <class B>
inline void kernel_blocks(const float* wp, std::int64_t Kfull, const CoBlocks& cbk, std::int64_t cob0,
                          std::int64_t cob1, B bsrc, std::int64_t kbn, float* o, std::int64_t ldo, const float* bias,
                          std::int64_t n, bool first, bool last, Act act, float alpha) {
  if (use_avx512()) {
    for (std::int64_t cob = cob0; cob < cob1; cob += 2) {
      const std::int64_t r0 = cbk.rows(cob), r1 = paired_rows(cbk, cob, cob1), co0 = cbk.row0(cob);
      kernel_avx512_any(wp + cob * Kfull * MR, Kfull * MR, r0, r1, bsrc, kbn, o + co0 * ldo, ldo,
                        bias ? bias + co0 : nullptr, n, first, last, act, alpha);
      if (r1 == 0) cob -= 1;  // the block ran alone
    }
    return;
  }
  for (std::int64_t cob = cob0; cob < cob1; ++cob) {
    const std::int64_t co0 = cbk.row0(cob);
    kernel_avx2_any(wp + cob * Kfull * MR, bsrc, kbn, o + co0 * ldo, ldo, bias ? bias + co0 : nullptr, cbk.rows(cob), n,
                    first, last, act, alpha);
  }
}

// kernel_blocks for two tiles at once (o0 with n0 voxels, o1 with n1; samples from b0src and
// b1src): the AVX-512 kernel takes both tiles per call; elsewhere the tiles run one after the other.
template <class B>
inline void kernel_blocks2(const float* wp, std::int64_t Kfull, const CoBlocks& cbk, std::int64_t cob0,
                           std::int64_t cob1, B b0src, B b1src, std::int64_t kbn, float* o0, float* o1,
                           std::int64_t ldo, const float* bias, std::int64_t n0, std::int64_t n1, bool first, bool last,
                           Act act, float alpha) {
  if (!use_avx512()) {
    kernel_blocks(wp, Kfull, cbk, cob0, cob1, b0src, kbn, o0, ldo, bias, n0, first, last, act, alpha);
    kernel_blocks(wp, Kfull, cbk, cob0, cob1, b1src, kbn, o1, ldo, bias, n1, first, last, act, alpha);
    return;
  }
  for (std::int64_t cob = cob0; cob < cob1; cob += 2) {
    const std::int64_t r0 = cbk.rows(cob), r1 = paired_rows(cbk, cob, cob1), co0 = cbk.row0(cob);
    kernel_avx512_any2(wp + cob * Kfull * MR, Kfull * MR, r0, r1, b0src, b1src, kbn, o0 + co0 * ldo, o1 + co0 * ldo,
                       ldo, bias ? bias + co0 : nullptr, n0, n1, first, last, act, alpha);
    if (r1 == 0) cob -= 1;  // the block ran alone
  }
}
#endif

using Kernel = void (*)(const float*, const float*, std::int64_t, float*);

inline Kernel pick_kernel() {
#ifdef BHSD_X86
  const CpuFeatures f = cpu_features();
  if (f.avx2 && f.fma && !std::getenv("BHSD_NO_AVX2")) return kernel_avx2;
#elif defined(BHSD_NEON)
  return kernel_neon;
#endif
  return kernel_generic;
}

}  // namespace conv_detail

}  // namespace bhsd
