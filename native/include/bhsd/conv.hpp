// bhsd — 3D convolution (NCDHW, weights [Cout, Cin/groups, kD, kH, kW]) and transposed convolution.
//
// A blocked direct convolution: each task takes a group of output row segments of 16 voxels (or,
// for rows shorter than 16, runs of 16 voxels in memory order), packs for them a panel of the
// input samples each weight touches (K = ci·kd·kh·kw rows × 16, in L1/L2-sized blocks of input
// channels shared evenly: no im2col of the volume), and runs an R×16 register-tiled AVX2/FMA
// micro-kernel (R ≤ 6 output channels; CoBlocks) over blocks of pre-packed weights. Layers with
// few output channels skip the panels and read a zero-padded copy of the input at precomputed
// offsets (conv3d_forward_indirect); 1×1×1 layers are a plain GEMM (conv3d_forward_pointwise).
// Bias and the activation are applied when the last block of input channels is stored. A
// baseline kernel serves processors without AVX2 (chosen at run time).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>
#include <new>
#include <vector>

#include "cpu_features.hpp"
#include "dtype.hpp"
#include "thread_pool.hpp"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define BHSD_X86 1
#endif

namespace bhsd {

enum class Act { none = 0, relu = 1, leaky = 2 };

struct ConvGeom {
  std::int64_t C, D, H, W;           // input channels (of one group) and extent
  std::int64_t Co;                   // output channels (of one group)
  std::int64_t kd, kh, kw;
  std::int64_t sd, sh, sw;           // strides
  std::int64_t dd, dh, dw;           // dilations
  std::int64_t pd, ph, pw;           // leading padding (trailing padding only changes Do/Ho/Wo)
  std::int64_t Do, Ho, Wo;           // output extent
  std::int64_t K() const { return C * kd * kh * kw; }
};

#ifndef BHSD_CONV_KROWS
#define BHSD_CONV_KROWS 512
#endif

constexpr int MR = 6;   // output channels per micro-tile
constexpr int NR = 16;  // output voxels per micro-tile (two AVX registers)

// Output channels in blocks for the micro-kernel: blocks of MR, and a remainder of 1–3 channels
// not left to a block of its own (a 6-row tile doing 1–3 rows of work) but shared with the last
// full block as two nearly equal ones (7 → 4 + 3, 8 → 4 + 4, 9 → 5 + 4). A tile of r rows costs
// about max(r, 4) of a full tile's 6 cycles per weight (FMA latency needs 8 accumulators), so a
// 32-channel layer runs 4 × 6 + 2 × 4 = 32 rows' time instead of 6 × 6 = 36. The number of blocks
// is ⌈Co / MR⌉ either way; block b's packed weights start at b·K·MR.
struct CoBlocks {
  std::int64_t full = 0, t0 = 0, t1 = 0;  // full blocks of MR, then up to two tail blocks
  explicit CoBlocks(std::int64_t Co) {
    full = Co / MR;
    const std::int64_t r = Co % MR;
    if (r == 0) return;
    if (r >= 4 || full == 0) {
      t0 = r;
      return;
    }
    --full;
    t0 = (MR + r + 1) / 2, t1 = (MR + r) / 2;
  }
  std::int64_t count() const { return full + (t0 > 0) + (t1 > 0); }
  std::int64_t rows(std::int64_t b) const { return b < full ? MR : b == full ? t0 : t1; }
  std::int64_t row0(std::int64_t b) const { return b <= full ? b * MR : full * MR + t0; }
};

// Floats of packed weights for Co outputs × K.
inline std::int64_t packed_conv_size(std::int64_t Co, std::int64_t K) { return CoBlocks(Co).count() * K * MR; }

// Weights [Co, K] → CoBlocks' blocks, k-major, MR slots per k: out[(b·K + k)·MR + r] =
// w[(row0(b) + r)·K + k] for r < rows(b); the other slots are zero. out: packed_conv_size floats.
inline void pack_conv_weights_into(const float* w, std::int64_t Co, std::int64_t K, float* out) {
  const CoBlocks cbk(Co);
  const std::int64_t blocks = cbk.count();
  std::fill(out, out + blocks * K * MR, 0.0f);
  for (std::int64_t b = 0; b < blocks; ++b)
    for (std::int64_t r = 0; r < cbk.rows(b); ++r) {
      const float* src = w + (cbk.row0(b) + r) * K;
      for (std::int64_t k = 0; k < K; ++k) out[(b * K + k) * MR + r] = src[k];
    }
}

inline std::vector<float> pack_conv_weights(const float* w, std::int64_t Co, std::int64_t K) {
  std::vector<float> out(static_cast<std::size_t>(packed_conv_size(Co, K)));
  pack_conv_weights_into(w, Co, K, out.data());
  return out;
}

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
// input itself, zero-padded, at base + delta[k] (an indirect GEMM: nothing packed).
struct PackedB {
  const float* b;
  const float* at(std::int64_t k) const { return b + k * NR; }
};
struct IndirectB {
  const float* base;
  const std::int32_t* delta;
  const float* at(std::int64_t k) const { return base + delta[k]; }
};

// The AVX2 micro-kernel: an R×16 tile (R ≤ 6 output channels) in 2R registers, rows `ldo` apart
// (the output itself, or a staging tile with ldo = 16). first: start from the bias, else from what
// the tile holds; last: apply the activation before storing. Only the R rows are read or written.
template <int R, class B>
__attribute__((target("avx2,fma"))) inline void kernel_avx2_tile(const float* a, B bsrc, std::int64_t K,
                                                                 float* o, std::int64_t ldo, const float* bias,
                                                                 bool first, bool last, Act act, float alpha) {
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
    case 6: return kernel_avx2_tile<6>(a, bsrc, K, o, ldo, bias, first, last, act, alpha);
    case 5: return kernel_avx2_tile<5>(a, bsrc, K, o, ldo, bias, first, last, act, alpha);
    case 4: return kernel_avx2_tile<4>(a, bsrc, K, o, ldo, bias, first, last, act, alpha);
    case 3: return kernel_avx2_tile<3>(a, bsrc, K, o, ldo, bias, first, last, act, alpha);
    case 2: return kernel_avx2_tile<2>(a, bsrc, K, o, ldo, bias, first, last, act, alpha);
    default: return kernel_avx2_tile<1>(a, bsrc, K, o, ldo, bias, first, last, act, alpha);
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
                                                                std::int64_t n, bool first, bool last, Act act, float alpha) {
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
__attribute__((target("avx512f"))) inline void kernel_avx512_pair(const float* a0, const float* a1, B bsrc, std::int64_t K,
                                                                  float* o, std::int64_t ldo, const float* bias, __mmask16 m,
                                                                  bool first, bool last, Act act, float alpha) {
  static_assert(R0 >= 1 && R0 <= MR && R1 >= 0 && R1 <= MR, "rows per block");
  constexpr int R = R0 + R1;
  __m512 c[R];
#pragma GCC unroll 12
  for (int r = 0; r < R; ++r) c[r] = first ? _mm512_set1_ps(bias ? bias[r] : 0.0f) : _mm512_maskz_loadu_ps(m, o + r * ldo);
  for (std::int64_t k = 0; k < K; ++k) {
    const __m512 b = _mm512_loadu_ps(bsrc.at(k));
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
    for (int r = 0; r < R; ++r) c[r] = _mm512_mask_mul_ps(c[r], _mm512_cmp_ps_mask(c[r], zero, _CMP_NGT_UQ), c[r], slope);
  }
#pragma GCC unroll 12
  for (int r = 0; r < R; ++r) _mm512_mask_storeu_ps(o + r * ldo, m, c[r]);
}

template <int R0, class B>
__attribute__((target("avx512f"))) inline void kernel_avx512_second(std::int64_t rows1, const float* a0, const float* a1, B bsrc,
                                                                    std::int64_t K, float* o, std::int64_t ldo, const float* bias,
                                                                    __mmask16 m, bool first, bool last, Act act, float alpha) {
  switch (rows1) {
    case 6: return kernel_avx512_pair<R0, 6>(a0, a1, bsrc, K, o, ldo, bias, m, first, last, act, alpha);
    case 5: return kernel_avx512_pair<R0, 5>(a0, a1, bsrc, K, o, ldo, bias, m, first, last, act, alpha);
    case 4: return kernel_avx512_pair<R0, 4>(a0, a1, bsrc, K, o, ldo, bias, m, first, last, act, alpha);
    case 3: return kernel_avx512_pair<R0, 3>(a0, a1, bsrc, K, o, ldo, bias, m, first, last, act, alpha);
    case 2: return kernel_avx512_pair<R0, 2>(a0, a1, bsrc, K, o, ldo, bias, m, first, last, act, alpha);
    case 1: return kernel_avx512_pair<R0, 1>(a0, a1, bsrc, K, o, ldo, bias, m, first, last, act, alpha);
    default: return kernel_avx512_pair<R0, 0>(a0, a1, bsrc, K, o, ldo, bias, m, first, last, act, alpha);
  }
}

// Blocks of `rows0` and `rows1` (0: none) output channels, the second's weights `astride` floats
// after the first's, its rows right after the first's in the output; n ≤ 16 voxels.
template <class B>
__attribute__((target("avx512f"))) inline void kernel_avx512_any(const float* a, std::int64_t astride, std::int64_t rows0,
                                                                 std::int64_t rows1, B bsrc, std::int64_t K, float* o,
                                                                 std::int64_t ldo, const float* bias, std::int64_t n,
                                                                 bool first, bool last, Act act, float alpha) {
  const __mmask16 m = n >= NR ? __mmask16(0xFFFF) : __mmask16((1u << n) - 1);
  const float* a1 = a + astride;
  if (rows0 == MR) return kernel_avx512_second<MR>(rows1, a, a1, bsrc, K, o, ldo, bias, m, first, last, act, alpha);
  // a short first block (a layer of fewer than 6 channels) never has a second
  switch (rows0) {
    case 5: return kernel_avx512_pair<5, 0>(a, a1, bsrc, K, o, ldo, bias, m, first, last, act, alpha);
    case 4: return kernel_avx512_pair<4, 0>(a, a1, bsrc, K, o, ldo, bias, m, first, last, act, alpha);
    case 3: return kernel_avx512_pair<3, 0>(a, a1, bsrc, K, o, ldo, bias, m, first, last, act, alpha);
    case 2: return kernel_avx512_pair<2, 0>(a, a1, bsrc, K, o, ldo, bias, m, first, last, act, alpha);
    default: return kernel_avx512_pair<1, 0>(a, a1, bsrc, K, o, ldo, bias, m, first, last, act, alpha);
  }
}

// Whether the AVX-512 kernel runs here (BHSD_NO_AVX512=1 keeps AVX2, for comparison and tests).
inline bool use_avx512() {
  static const bool on = [] {
    const CpuFeatures f = cpu_features();
    return f.avx512f && f.avx2 && f.fma && !std::getenv("BHSD_NO_AVX512") && !std::getenv("BHSD_NO_AVX2");
  }();
  return on;
}

// Output-channel blocks cob0 … cob1 of one tile (n ≤ 16 voxels at o, rows ldo apart): two blocks
// per AVX-512 call where it runs, one per AVX2 call elsewhere. wp: the layer's packed weights at
// this block of K (block b at wp + b·Kfull·MR); kbn: the K rows of this call.
template <class B>
inline void kernel_blocks(const float* wp, std::int64_t Kfull, const CoBlocks& cbk, std::int64_t cob0, std::int64_t cob1, B bsrc,
                          std::int64_t kbn, float* o, std::int64_t ldo, const float* bias, std::int64_t n, bool first, bool last,
                          Act act, float alpha) {
  if (use_avx512()) {
    for (std::int64_t cob = cob0; cob < cob1; cob += 2) {
      const std::int64_t r0 = cbk.rows(cob), r1 = cob + 1 < cob1 && r0 == MR ? cbk.rows(cob + 1) : 0, co0 = cbk.row0(cob);
      kernel_avx512_any(wp + cob * Kfull * MR, Kfull * MR, r0, r1, bsrc, kbn, o + co0 * ldo, ldo, bias ? bias + co0 : nullptr, n,
                        first, last, act, alpha);
      if (r1 == 0) cob -= 1;  // the block ran alone
    }
    return;
  }
  for (std::int64_t cob = cob0; cob < cob1; ++cob) {
    const std::int64_t co0 = cbk.row0(cob);
    kernel_avx2_any(wp + cob * Kfull * MR, bsrc, kbn, o + co0 * ldo, ldo, bias ? bias + co0 : nullptr, cbk.rows(cob), n, first,
                    last, act, alpha);
  }
}
#endif

using Kernel = void (*)(const float*, const float*, std::int64_t, float*);

inline Kernel pick_kernel() {
#ifdef BHSD_X86
  const CpuFeatures f = cpu_features();
  if (f.avx2 && f.fma && !std::getenv("BHSD_NO_AVX2")) return kernel_avx2;
#endif
  return kernel_generic;
}

// The panel of one output row segment (od, oh, ow0…ow0 + n) for input channels c0…c1:
// p[k][j] = the input sample weight k meets at voxel j (0 in the padding and past n).
inline void pack_panel_generic(const ConvGeom& g, const float* in, std::int64_t c0, std::int64_t c1, std::int64_t od,
                               std::int64_t oh, std::int64_t ow0, std::int64_t n, float* p, std::int64_t = 0) {
  const std::int64_t plane_in = g.H * g.W, vol_in = g.D * plane_in;
  for (std::int64_t ci = c0; ci < c1; ++ci)
    for (std::int64_t a = 0; a < g.kd; ++a) {
      const std::int64_t id = od * g.sd - g.pd + a * g.dd;
      for (std::int64_t b = 0; b < g.kh; ++b) {
        const std::int64_t ih = oh * g.sh - g.ph + b * g.dh;
        const bool inside = id >= 0 && id < g.D && ih >= 0 && ih < g.H;
        const float* row = in + ci * vol_in + id * plane_in + ih * g.W;
        for (std::int64_t c = 0; c < g.kw; ++c, p += NR) {
          const std::int64_t iw0 = ow0 * g.sw - g.pw + c * g.dw;
          for (std::int64_t j = 0; j < NR; ++j) {
            const std::int64_t iw = iw0 + j * g.sw;
            p[j] = (inside && j < n && iw >= 0 && iw < g.W) ? row[iw] : 0.0f;
          }
        }
      }
    }
}

#ifdef BHSD_X86
// p + n floats, the address formed as an integer: it may lie outside the array when only masked
// lanes or a prefetch use it.
inline const float* float_at(const float* p, std::int64_t n) {
  return reinterpret_cast<const float*>(reinterpret_cast<std::uintptr_t>(p) + std::uintptr_t(n * std::int64_t(sizeof(float))));
}

// The two cache lines from p + n on (a prefetch never faults).
inline void prefetch_row(const float* p, std::int64_t n) {
  const char* q = reinterpret_cast<const char*>(float_at(p, n));
  _mm_prefetch(q, _MM_HINT_T0);
  _mm_prefetch(q + 64, _MM_HINT_T0);
}

// The same with AVX2: rows outside the volume are two zero stores, a segment whose every tap lies
// inside its row two unaligned loads per weight (two gathers with a stride along W), an edge
// segment masked loads or gathers (no branch per sample: the scalar edge loop was a fifth of a
// 64→64 layer's time). `ahead` > 0: each row read is prefetched that many samples further on (the
// rows the next task reads; channels' planes lie too far apart for the hardware prefetcher: 64→64
// 7 % faster).
__attribute__((target("avx2,fma"))) inline void pack_panel_avx2(const ConvGeom& g, const float* in, std::int64_t c0,
                                                                std::int64_t c1, std::int64_t od, std::int64_t oh,
                                                                std::int64_t ow0, std::int64_t n, float* p,
                                                                std::int64_t ahead = 0) {
  if (g.kw > 32 || g.sw > 64) return pack_panel_generic(g, in, c0, c1, od, oh, ow0, n, p);
  const std::int64_t plane_in = g.H * g.W, vol_in = g.D * plane_in, sw = g.sw;
  const std::int64_t lo = ow0 * sw - g.pw, span = (g.kw - 1) * g.dw;
  const bool interior = n == NR && lo >= 0 && lo + span + (NR - 1) * sw < g.W;
  const __m256 zero = _mm256_setzero_ps();
  const __m256i iota0 = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), iota1 = _mm256_setr_epi32(8, 9, 10, 11, 12, 13, 14, 15);
  const __m256i step0 = _mm256_mullo_epi32(iota0, _mm256_set1_epi32(int(sw))), step1 = _mm256_mullo_epi32(iota1, _mm256_set1_epi32(int(sw)));
  // lane j of tap c is read when 0 ≤ iw0 + j·sw < W and j < n, iw0 = lo + c·dw
  __m256i m0[32], m1[32];
  if (!interior)
    for (std::int64_t c = 0; c < g.kw; ++c) {
      const std::int64_t iw0 = lo + c * g.dw;
      const std::int64_t jlo = std::clamp<std::int64_t>(iw0 >= 0 ? 0 : (-iw0 + sw - 1) / sw, 0, NR);
      const std::int64_t jhi = std::clamp<std::int64_t>(std::min(n, g.W - iw0 <= 0 ? 0 : (g.W - iw0 + sw - 1) / sw), 0, NR);
      const __m256i l = _mm256_set1_epi32(int(jlo) - 1), h = _mm256_set1_epi32(int(jhi));
      m0[c] = _mm256_and_si256(_mm256_cmpgt_epi32(iota0, l), _mm256_cmpgt_epi32(h, iota0));
      m1[c] = _mm256_and_si256(_mm256_cmpgt_epi32(iota1, l), _mm256_cmpgt_epi32(h, iota1));
    }
  for (std::int64_t ci = c0; ci < c1; ++ci)
    for (std::int64_t a = 0; a < g.kd; ++a) {
      const std::int64_t id = od * g.sd - g.pd + a * g.dd;
      for (std::int64_t b = 0; b < g.kh; ++b) {
        const std::int64_t ih = oh * g.sh - g.ph + b * g.dh;
        if (id < 0 || id >= g.D || ih < 0 || ih >= g.H) {
          for (std::int64_t c = 0; c < g.kw; ++c, p += NR) _mm256_store_ps(p, zero), _mm256_store_ps(p + 8, zero);
          continue;
        }
        const float* row = in + ci * vol_in + id * plane_in + ih * g.W;
        if (ahead > 0) prefetch_row(row, ahead + std::max<std::int64_t>(0, lo));
        for (std::int64_t c = 0; c < g.kw; ++c, p += NR) {
          const float* s = float_at(row, lo + c * g.dw);  // lanes outside the row are masked off
          __m256 v0, v1;
          if (sw == 1) {
            v0 = interior ? _mm256_loadu_ps(s) : _mm256_maskload_ps(s, m0[c]);
            v1 = interior ? _mm256_loadu_ps(s + 8) : _mm256_maskload_ps(s + 8, m1[c]);
          } else if (interior) {
            v0 = _mm256_i32gather_ps(s, step0, 4), v1 = _mm256_i32gather_ps(s, step1, 4);
          } else {
            v0 = _mm256_mask_i32gather_ps(zero, s, step0, _mm256_castsi256_ps(m0[c]), 4);
            v1 = _mm256_mask_i32gather_ps(zero, s, step1, _mm256_castsi256_ps(m1[c]), 4);
          }
          _mm256_store_ps(p, v0), _mm256_store_ps(p + 8, v1);
        }
      }
    }
}

// The panel of a flat segment: output voxels v0 … v0 + n of the volume in memory order, across
// row (and plane) ends — for rows shorter than a tile (Wo < 16), whose row segments would leave
// most of each tile empty (an 8-wide row: half). Each piece of the segment within one output row
// fills its lanes by masked loads (gathers with a stride along W); lanes of other pieces, and
// samples in the padding, are zero. Needs Wo ≥ 4 (at most 5 pieces) and kw ≤ 8.
__attribute__((target("avx2,fma"))) inline void pack_panel_flat_avx2(const ConvGeom& g, const float* in, std::int64_t c0,
                                                                     std::int64_t c1, std::int64_t v0, std::int64_t n,
                                                                     float* p) {
  constexpr int MAXP = 5, MAXKW = 8;
  const std::int64_t plane_in = g.H * g.W, vol_in = g.D * plane_in, sw = g.sw;
  struct Piece { std::int64_t od, oh, base; };  // lane l of tap c reads iw = base + l·sw + c·dw
  Piece pc[MAXP];
  __m256i m0[MAXP][MAXKW], m1[MAXP][MAXKW];
  const __m256i iota0 = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), iota1 = _mm256_setr_epi32(8, 9, 10, 11, 12, 13, 14, 15);
  const __m256i step0 = _mm256_mullo_epi32(iota0, _mm256_set1_epi32(int(sw))), step1 = _mm256_mullo_epi32(iota1, _mm256_set1_epi32(int(sw)));
  int np = 0;
  for (std::int64_t j = 0; j < n && np < MAXP;) {
    const std::int64_t v = v0 + j, od = v / (g.Ho * g.Wo), oh = (v / g.Wo) % g.Ho, ow = v % g.Wo;
    const std::int64_t len = std::min(n - j, g.Wo - ow);
    pc[np] = {od, oh, (ow - j) * sw - g.pw};
    for (std::int64_t c = 0; c < g.kw; ++c) {
      // lanes [j, j + len) whose sample base + l·sw + c·dw lies in [0, W)
      const std::int64_t b = pc[np].base + c * g.dw;
      const std::int64_t lo = std::max(j, b >= 0 ? 0 : (-b + sw - 1) / sw);
      const std::int64_t hi = std::min(j + len, g.W - b <= 0 ? 0 : (g.W - b + sw - 1) / sw);
      const __m256i l = _mm256_set1_epi32(int(lo) - 1), h = _mm256_set1_epi32(int(std::max(hi, lo)));
      m0[np][c] = _mm256_and_si256(_mm256_cmpgt_epi32(iota0, l), _mm256_cmpgt_epi32(h, iota0));
      m1[np][c] = _mm256_and_si256(_mm256_cmpgt_epi32(iota1, l), _mm256_cmpgt_epi32(h, iota1));
    }
    ++np;
    j += len;
  }
  const __m256 zero = _mm256_setzero_ps();
  for (std::int64_t ci = c0; ci < c1; ++ci)
    for (std::int64_t a = 0; a < g.kd; ++a)
      for (std::int64_t b = 0; b < g.kh; ++b) {
        const float* rows[MAXP];
        for (int q = 0; q < np; ++q) {
          const std::int64_t id = pc[q].od * g.sd - g.pd + a * g.dd, ih = pc[q].oh * g.sh - g.ph + b * g.dh;
          rows[q] = id >= 0 && id < g.D && ih >= 0 && ih < g.H ? in + ci * vol_in + id * plane_in + ih * g.W : nullptr;
        }
        for (std::int64_t c = 0; c < g.kw; ++c, p += NR) {
          __m256 v0v = zero, v1v = zero;
          for (int q = 0; q < np; ++q) {
            if (!rows[q]) continue;
            const float* s = float_at(rows[q], pc[q].base + c * g.dw);  // masked-off lanes are never read
            if (sw == 1) {
              v0v = _mm256_or_ps(v0v, _mm256_maskload_ps(s, m0[q][c]));
              v1v = _mm256_or_ps(v1v, _mm256_maskload_ps(s + 8, m1[q][c]));
            } else {
              v0v = _mm256_or_ps(v0v, _mm256_mask_i32gather_ps(zero, s, step0, _mm256_castsi256_ps(m0[q][c]), 4));
              v1v = _mm256_or_ps(v1v, _mm256_mask_i32gather_ps(zero, s, step1, _mm256_castsi256_ps(m1[q][c]), 4));
            }
          }
          _mm256_store_ps(p, v0v), _mm256_store_ps(p + 8, v1v);
        }
      }
}
#endif

#ifdef BHSD_X86
// Row windows instead of one 16-sample copy per tap: for each (channel, a, b) of the block, the
// RW ≥ 16 + (kw − 1)·dw samples (RW ≤ 64, a multiple of 8) a stride-1 row segment's taps read (0
// outside the volume), so that tap c of output j is window[j + c·dw] — a kw-times smaller panel,
// packed with kw times fewer stores, read through offsets (IndirectB). Outputs past a partial
// segment's end read real samples or zeros and are discarded.
__attribute__((target("avx2,fma"))) inline void pack_rows_avx2(const ConvGeom& g, const float* in, std::int64_t c0,
                                                               std::int64_t c1, std::int64_t od, std::int64_t oh,
                                                               std::int64_t ow0, std::int64_t RW, float* p,
                                                               std::int64_t ahead) {
  const std::int64_t plane_in = g.H * g.W, vol_in = g.D * plane_in, lo = ow0 - g.pw;
  const std::int64_t nv = RW / 8;
  const bool interior = lo >= 0 && lo + RW <= g.W;
  const __m256 zero = _mm256_setzero_ps();
  __m256i m[8];  // RW ≤ 64
  if (!interior)
    for (std::int64_t q = 0; q < nv; ++q) {
      const __m256i idx = _mm256_add_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), _mm256_set1_epi32(int(lo + 8 * q)));
      m[q] = _mm256_and_si256(_mm256_cmpgt_epi32(idx, _mm256_set1_epi32(-1)), _mm256_cmpgt_epi32(_mm256_set1_epi32(int(g.W)), idx));
    }
  for (std::int64_t ci = c0; ci < c1; ++ci)
    for (std::int64_t a = 0; a < g.kd; ++a) {
      const std::int64_t id = od * g.sd - g.pd + a * g.dd;
      for (std::int64_t b = 0; b < g.kh; ++b, p += RW) {
        const std::int64_t ih = oh * g.sh - g.ph + b * g.dh;
        if (id < 0 || id >= g.D || ih < 0 || ih >= g.H) {
          for (std::int64_t q = 0; q < nv; ++q) _mm256_store_ps(p + 8 * q, zero);
          continue;
        }
        const float* row = in + ci * vol_in + id * plane_in + ih * g.W;
        if (ahead > 0) prefetch_row(row, ahead + std::max<std::int64_t>(0, lo));
        const float* s = float_at(row, lo);
        if (interior)
          for (std::int64_t q = 0; q < nv; ++q) _mm256_store_ps(p + 8 * q, _mm256_loadu_ps(s + 8 * q));
        else
          for (std::int64_t q = 0; q < nv; ++q) _mm256_store_ps(p + 8 * q, _mm256_maskload_ps(s + 8 * q, m[q]));
      }
    }
}
#endif

using PackFn = void (*)(const ConvGeom&, const float*, std::int64_t, std::int64_t, std::int64_t, std::int64_t,
                        std::int64_t, std::int64_t, float*, std::int64_t);

inline PackFn pick_pack(Kernel kernel) {
#ifdef BHSD_X86
  if (kernel == kernel_avx2) return pack_panel_avx2;
#endif
  (void)kernel;
  return pack_panel_generic;
}

inline float activate(float v, Act act, float alpha) {
  if (act == Act::relu) return v > 0 ? v : 0;
  if (act == Act::leaky) return v > 0 ? v : v * alpha;
  return v;
}

// Rows of K per block of input channels (BHSD_CONV_KROWS overrides, for experiments).
inline std::int64_t krows() {
  static const std::int64_t k = [] {
    const char* e = std::getenv("BHSD_CONV_KROWS");
    return e && std::atoll(e) > 0 ? std::int64_t(std::atoll(e)) : std::int64_t(BHSD_CONV_KROWS);
  }();
  return k;
}

// The indirect convolution's padded slab: one buffer kept for the whole process, lent to one call
// at a time (calls come from several threads — the addon's libuv workers — which would otherwise
// each keep up to 16 MB); a call that finds it lent, or needs more than keep_max floats, gets a
// buffer of its own for that call. get() is null when memory ran out.
class SlabLease {
 public:
  SlabLease(std::size_t need, std::size_t keep_max) {
    Cache& c = cache();
    if (need <= keep_max) {
      std::lock_guard<std::mutex> lk(c.m);
      if (!c.lent) {
        if (c.n < need) {
          c.buf.reset(new (std::nothrow) float[need]);
          c.n = c.buf ? need : 0;
        }
        if (c.buf) c.lent = true, shared_ = true, p_ = c.buf.get();
      }
    }
    if (!p_) own_.reset(new (std::nothrow) float[need]), p_ = own_.get();
  }
  SlabLease(const SlabLease&) = delete;
  SlabLease& operator=(const SlabLease&) = delete;
  ~SlabLease() {
    if (!shared_) return;
    std::lock_guard<std::mutex> lk(cache().m);
    cache().lent = false;
  }
  float* get() const { return p_; }

 private:
  struct Cache {
    std::mutex m;
    std::unique_ptr<float[]> buf;
    std::size_t n = 0;
    bool lent = false;
  };
  static Cache& cache() {
    static Cache c;
    return c;
  }
  float* p_ = nullptr;
  bool shared_ = false;
  std::unique_ptr<float[]> own_;
};

// Input channels per block of the reduction: as many blocks as about krows() rows of K need, the
// channels shared evenly between them (64 channels of a 1×3×3 kernel: 32 + 32, not 56 + 8, whose
// short second block paid a whole pass over the outputs for an eighth of the work).
inline std::int64_t channel_block(std::int64_t C, std::int64_t ksp) {
  const std::int64_t blocks = std::max<std::int64_t>(1, (C * ksp + krows() - 1) / krows());
  return std::max<std::int64_t>(1, (C + blocks - 1) / blocks);
}

// A 64-byte aligned scratch buffer per thread.
struct Scratch {
  std::vector<float> buf;
  float* get(std::size_t n) {
    if (buf.size() < n + 16) buf.resize(n + 16);
    auto p = reinterpret_cast<std::uintptr_t>(buf.data());
    return reinterpret_cast<float*>((p + 63) & ~std::uintptr_t(63));
  }
};

}  // namespace conv_detail

#ifdef BHSD_X86
// Stride 1 along W, few output channels (a U-Net's first stages, where a packed panel serves only
// a few channel blocks and packing cost as much as the FMAs): the input is copied zero-padded, a
// slab of planes at a time (≤ 16 MB, so that a 256 × 256 volume costs no second copy of itself),
// and the micro-kernel reads each weight's 16 samples straight from it at a precomputed offset —
// an indirect GEMM. With many output channels the packed panel is reused enough to win, and
// reads spread over many channels' planes stress the TLB: those keep the packed path. Strides
// along D and H only pick planes and rows; a stride s along W is undone by storing each padded row
// as s phases (columns ≡ 0, 1, … mod s, one after another), in which consecutive outputs read
// consecutive samples again. Returns false (nothing done) where this path does not apply.
inline bool conv3d_forward_indirect(const ConvGeom& g, const float* in, const float* wp, const float* bias,
                                    float* out, Act act, float alpha, ThreadPool& pool,
                                    std::int64_t slab_bytes = std::int64_t(16) << 20) {
  using namespace conv_detail;
  const CoBlocks cbk(g.Co);
  const std::int64_t coblocks = cbk.count();
  if (coblocks > 8) return false;
  const std::int64_t segs_per_row = (g.Wo + NR - 1) / NR;
  const std::int64_t Hp = (g.Ho - 1) * g.sh + (g.kh - 1) * g.dh + 1;
  // a padded row: sw phases of Wph samples; output ow, tap c reads phase (c·dw) mod sw at ow + (c·dw) / sw
  const std::int64_t sw = g.sw, Wph = segs_per_row * NR + ((g.kw - 1) * g.dw) / sw, Wp = sw * Wph;
  const std::int64_t planeP = Hp * Wp;
  // output planes per slab: as many as fit the budget with their kernel's extra input planes
  const std::int64_t budget = slab_bytes / 4, halo = (g.kd - 1) * g.dd;
  const std::int64_t fit = budget / std::max<std::int64_t>(1, g.C * planeP);
  const std::int64_t odn = std::clamp<std::int64_t>((fit - halo - 1) / g.sd + 1, 1, g.Do);
  const std::int64_t slabP = (odn - 1) * g.sd + halo + 1, volS = slabP * planeP;
  if (g.C * volS + NR >= (std::int64_t(1) << 31)) return false;
  // the slab buffer is kept for the next call (up to 16 MB: a fresh allocation per layer costs its
  // page faults every time); a larger one (a single huge plane) is freed after
  const std::size_t need = std::size_t(g.C * volS + NR);
  const SlabLease lease(need, (std::size_t(16) << 20) / sizeof(float) + NR);
  float* P = lease.get();
  if (!P) return false;
  std::memset(P + g.C * volS, 0, NR * sizeof(float));
  const std::int64_t plane_in = g.H * g.W, vol_in = g.D * plane_in;
  const std::int64_t w0 = std::max<std::int64_t>(0, g.pw), w1 = std::min(Wp, g.pw + g.W);  // padded columns with data
  const std::int64_t K = g.K(), ksp = g.kd * g.kh * g.kw;
  std::vector<std::int32_t> delta(static_cast<std::size_t>(K));
  for (std::int64_t ci = 0, k = 0; ci < g.C; ++ci)
    for (std::int64_t a = 0; a < g.kd; ++a)
      for (std::int64_t b = 0; b < g.kh; ++b)
        for (std::int64_t c = 0; c < g.kw; ++c, ++k)
          delta[std::size_t(k)] = std::int32_t(ci * volS + a * g.dd * planeP + b * g.dh * Wp + ((c * g.dw) % sw) * Wph + (c * g.dw) / sw);
  const std::int64_t plane_out = g.Ho * g.Wo, vol_out = g.Do * plane_out;
  const std::int64_t rows_per_task = std::max<std::int64_t>(1, 8 / segs_per_row);
  const std::int64_t cb = channel_block(g.C, ksp);
  const std::int64_t kblocks = (g.C + cb - 1) / cb;
  for (std::int64_t od0 = 0; od0 < g.Do; od0 += odn) {
    const std::int64_t od1 = std::min(g.Do, od0 + odn);
    const std::int64_t planes = (od1 - 1 - od0) * g.sd + halo + 1, zd0 = od0 * g.sd;
    // the slab's padded planes, a (channel, plane) per task; every element written
    pool.parallel_for(std::size_t(g.C * planes), [&](std::size_t t0, std::size_t t1) {
      for (std::size_t t = t0; t < t1; ++t) {
        const std::int64_t ci = std::int64_t(t) / planes, q = std::int64_t(t) % planes, id = zd0 + q - g.pd;
        float* dst = P + ci * volS + q * planeP;
        for (std::int64_t zh = 0; zh < Hp; ++zh, dst += Wp) {
          const std::int64_t ih = zh - g.ph;
          if (id < 0 || id >= g.D || ih < 0 || ih >= g.H || w1 <= w0) {
            std::memset(dst, 0, std::size_t(Wp) * sizeof(float));
            continue;
          }
          const float* src = in + ci * vol_in + id * plane_in + ih * g.W - g.pw;  // src[xp]: padded column xp
          if (sw == 1) {
            std::memset(dst, 0, std::size_t(w0) * sizeof(float));
            std::memcpy(dst + w0, src + w0, std::size_t(w1 - w0) * sizeof(float));
            std::memset(dst + w1, 0, std::size_t(Wp - w1) * sizeof(float));
          } else {
            std::memset(dst, 0, std::size_t(Wp) * sizeof(float));
            for (std::int64_t s = 0; s < sw; ++s) {  // phase s: padded columns s, s + sw, …
              float* d = dst + s * Wph;
              for (std::int64_t j = (w0 - s + sw - 1) / sw, xp = s + j * sw; xp < w1; ++j, xp += sw) d[j] = src[xp];
            }
          }
        }
      }
    }, 1, 2);
    const std::int64_t rows = (od1 - od0) * g.Ho;
    const std::int64_t tasks = (rows + rows_per_task - 1) / rows_per_task;
    pool.parallel_for(std::size_t(tasks), [&](std::size_t t0, std::size_t t1) {
      for (std::size_t t = t0; t < t1; ++t) {
        const std::int64_t r0 = std::int64_t(t) * rows_per_task, r1 = std::min(rows, r0 + rows_per_task);
        for (std::int64_t kb = 0; kb < kblocks; ++kb) {
          const std::int64_t c0 = kb * cb, c1 = std::min(g.C, c0 + cb);
          const std::int64_t kbn = (c1 - c0) * ksp;
          const std::int32_t* dk = delta.data() + c0 * ksp;
          const bool first = kb == 0, last = kb == kblocks - 1;
          const std::int64_t step = use_avx512() ? 2 : 1;
          for (std::int64_t cob = 0; cob < coblocks; cob += step) {
            const std::int64_t cobn = std::min(coblocks, cob + step);
            for (std::int64_t r = r0; r < r1; ++r) {
              const std::int64_t odl = r / g.Ho, oh = r % g.Ho;
              const float* base_row = P + odl * g.sd * planeP + oh * g.sh * Wp;
              float* orow = out + (od0 + odl) * plane_out + oh * g.Wo;
              for (std::int64_t ow0 = 0; ow0 < g.Wo; ow0 += NR) {
                const IndirectB src{base_row + ow0, dk};
                const std::int64_t n = std::min<std::int64_t>(NR, g.Wo - ow0);
                kernel_blocks(wp + c0 * ksp * MR, K, cbk, cob, cobn, src, kbn, orow + ow0, vol_out, bias, n, first, last, act, alpha);
              }
            }
          }
        }
      }
    }, 1, 8);
  }
  return true;
}

namespace conv_detail {
// The input of a 1 × 1 × 1 GEMM read in place: channel k's voxel v at in[k·V + v], 16 at a time;
// the volume's last partial tile from a zero-padded copy (K × 16), so nothing past in is read.
struct InPlaceInput {
  const float* in;
  std::int64_t V;
  std::vector<std::int32_t> delta, delta16;
  std::vector<float> stage;
  InPlaceInput(const float* in_, std::int64_t K, std::int64_t V_) : in(in_), V(V_) {
    delta.resize(std::size_t(K)), delta16.resize(std::size_t(K));
    for (std::int64_t k = 0; k < K; ++k) delta[std::size_t(k)] = std::int32_t(k * V), delta16[std::size_t(k)] = std::int32_t(k * NR);
    const std::int64_t vlast = V / NR * NR;
    if (vlast < V) {
      stage.assign(std::size_t(K * NR), 0.0f);
      for (std::int64_t k = 0; k < K; ++k) std::memcpy(stage.data() + k * NR, in + k * V + vlast, std::size_t(V - vlast) * sizeof(float));
    }
  }
  IndirectB at(std::int64_t v, std::int64_t k0) const {
    return v + NR <= V ? IndirectB{in + v, delta.data() + k0} : IndirectB{stage.data(), delta16.data() + k0};
  }
};

// The GEMM for voxels v0 … v1 (at most 256) of a 1 × 1 × 1 convolution (wp: pack_conv_weights of
// [Co, K]): o[co·ldo + (v − v0)] = act(bias[co] + Σ_k w[co, k] · in[k·V + v]). Each block of
// weights (K·6 floats) is read once for the whole run. With more than one block of outputs the
// run's inputs are first copied into a contiguous panel ([k][run], zero-padded to whole tiles):
// read in place, every weight's 16 samples lie in another channel's plane, a page apart or more,
// and the TLB misses cost more than the copy (an upsampling 128→64×4 taps: 62 → 27 ms); a single
// block (a segmentation head) reads each sample once, so there the copy would only add traffic.
__attribute__((target("avx2,fma"))) inline void pointwise_run_avx2(const InPlaceInput& src, const float* wp,
                                                                  std::int64_t K, const CoBlocks& cbk, const float* bias,
                                                                  std::int64_t v0, std::int64_t v1, float* o,
                                                                  std::int64_t ldo, Act act, float alpha) {
  const std::int64_t cb = channel_block(K, 1), kblocks = (K + cb - 1) / cb;
  const bool stage = cbk.count() > 1;
  const std::int64_t n = v1 - v0, Lp = (n + NR - 1) / NR * NR;
  thread_local Scratch panel_mem;
  thread_local std::vector<std::int32_t> dpanel;
  float* panel = stage ? panel_mem.get(std::size_t(cb * Lp)) : nullptr;
  if (stage) {
    dpanel.resize(std::size_t(cb));
    for (std::int64_t k = 0; k < cb; ++k) dpanel[std::size_t(k)] = std::int32_t(k * Lp);
  }
  for (std::int64_t kb = 0; kb < kblocks; ++kb) {
    const std::int64_t k0 = kb * cb, kbn = std::min(K, k0 + cb) - k0;
    const bool first = kb == 0, last = kb == kblocks - 1;
    if (stage)
      for (std::int64_t k = 0; k < kbn; ++k) {
        std::memcpy(panel + k * Lp, src.in + (k0 + k) * src.V + v0, std::size_t(n) * sizeof(float));
        std::memset(panel + k * Lp + n, 0, std::size_t(Lp - n) * sizeof(float));
      }
    const std::int64_t step = use_avx512() ? 2 : 1;
    for (std::int64_t cob = 0; cob < cbk.count(); cob += step) {
      const std::int64_t cobn = std::min(cbk.count(), cob + step);
      for (std::int64_t v = v0; v < v1; v += NR)
        kernel_blocks(wp + k0 * MR, K, cbk, cob, cobn, stage ? IndirectB{panel + (v - v0), dpanel.data()} : src.at(v, k0), kbn,
                      o + (v - v0), ldo, bias, std::min<std::int64_t>(NR, v1 - v), first, last, act, alpha);
    }
  }
}
}  // namespace conv_detail

// A 1 × 1 × 1 convolution, stride 1, no padding (a segmentation head; each phase of a transposed
// convolution whose kernel equals its stride): a plain GEMM out[Co, V] = W[Co, C] · in[C, V], the
// micro-kernel reading each channel's 16 voxels from the input in place (no copy at all); the last
// partial tile through a zero-padded staging copy. Up to 48 output channels (a head; measured 2×
// faster than packing there); wider layers reuse packed panels enough that packing wins (64→128
// and 320→1280 measured 1.2–1.5× slower this way). Returns false where this path does not apply.
inline bool conv3d_forward_pointwise(const ConvGeom& g, const float* in, const float* wp, const float* bias,
                                     float* out, Act act, float alpha, ThreadPool& pool) {
  using namespace conv_detail;
  if (g.kd != 1 || g.kh != 1 || g.kw != 1 || g.sd != 1 || g.sh != 1 || g.sw != 1 || g.pd != 0 || g.ph != 0 || g.pw != 0 ||
      g.Do != g.D || g.Ho != g.H || g.Wo != g.W)
    return false;
  const std::int64_t V = g.D * g.H * g.W, K = g.C;
  if (K * V >= (std::int64_t(1) << 31)) return false;
  const CoBlocks cbk(g.Co);
  const std::int64_t coblocks = cbk.count();
  if (coblocks > 8) return false;
  const InPlaceInput src(in, K, V);
  const std::int64_t tiles = (V + NR - 1) / NR, per_task = 16;
  // a task's 16 tiles share each channel block's weights (read once per task, not once per tile)
  pool.parallel_for(std::size_t((tiles + per_task - 1) / per_task), [&](std::size_t t0, std::size_t t1) {
    for (std::size_t t = t0; t < t1; ++t) {
      const std::int64_t v0 = std::int64_t(t) * per_task * NR, v1 = std::min(V, v0 + per_task * NR);
      pointwise_run_avx2(src, wp, K, cbk, bias, v0, v1, out + v0, V, act, alpha);
    }
  }, 1, 8);
  return true;
}
#endif

// One batch item and one group: in [C, D, H, W] → out [Co, Do, Ho, Wo]; wp from pack_conv_weights.
inline void conv3d_forward(const ConvGeom& g, const float* in, const float* wp, const float* bias,
                           float* out, Act act, float alpha, ThreadPool& pool) {
  using namespace conv_detail;
  static const Kernel kernel = pick_kernel();
  static const PackFn pack = pick_pack(kernel);
#ifdef BHSD_X86
  static const bool direct = kernel == kernel_avx2 && !std::getenv("BHSD_CONV_STAGED");
#else
  const bool direct = false;
#endif
#ifdef BHSD_X86
  static const bool indirect = direct && !std::getenv("BHSD_CONV_PACKED");
  if (indirect && conv3d_forward_pointwise(g, in, wp, bias, out, act, alpha, pool)) return;
  if (indirect && conv3d_forward_indirect(g, in, wp, bias, out, act, alpha, pool)) return;
#endif
  const std::int64_t K = g.K(), ksp = g.kd * g.kh * g.kw;
  const std::int64_t plane_out = g.Ho * g.Wo, vol_out = g.Do * plane_out;
  const std::int64_t segs_per_row = (g.Wo + NR - 1) / NR;
  // Up to 8 segments (128 voxels) per task: whole short rows are grouped.
  const std::int64_t rows_per_task = std::max<std::int64_t>(1, 8 / segs_per_row);
  const std::int64_t ahead = rows_per_task * g.sh * g.W;  // the next task's rows (a thread's tasks are consecutive)
  const std::int64_t rows = g.Do * g.Ho;
  // Rows shorter than a tile: segments of 16 voxels in memory order instead (full tiles).
#ifdef BHSD_X86
  const bool flat = direct && g.Wo < NR && g.Wo >= 4 && g.kw <= 8;
#else
  const bool flat = false;
#endif
  const std::int64_t flat_segs = (vol_out + NR - 1) / NR;
  const std::int64_t seg_tasks = flat ? (flat_segs + 7) / 8 : (rows + rows_per_task - 1) / rows_per_task;
  // Input channels per block: about 512 rows of K (a 32 KB panel per segment, 12 KB of weights).
  const std::int64_t cb = channel_block(g.C, ksp);
  const std::int64_t kblocks = (g.C + cb - 1) / cb;
  const CoBlocks cbk(g.Co);
  const std::int64_t coblocks = cbk.count();
  // Stride 1 along W: one window of samples per input row instead of a copy per tap (a panel kw
  // times smaller; 64→64 and 128→128 2–6 % faster, single thread), where the window is no wider.
  const std::int64_t RW = (NR + (g.kw - 1) * g.dw + 7) / 8 * 8;
#ifdef BHSD_X86
  const bool rowwin = direct && !flat && g.sw == 1 && RW <= 64 && RW <= g.kw * NR;
#else
  const bool rowwin = false;
#endif
  std::vector<std::int32_t> rdelta;
  if (rowwin) {
    rdelta.resize(std::size_t(cb * ksp));
    for (std::int64_t k = 0; k < cb * ksp; ++k) rdelta[std::size_t(k)] = std::int32_t((k / g.kw) * RW + (k % g.kw) * g.dw);
  }
  // A volume with fewer tasks of segments than threads (the deep stages: 2×4×4 is one) also splits
  // its output channels, at least 4 blocks each, so that every thread has work; each split packs
  // its own panels (320→320 at 2×4×4: 100 → 145 GFLOP/s; with as many tasks as threads the
  // duplicated packing cost more than it gained).
  const std::int64_t threads = std::int64_t(pool.size());
  const std::int64_t co_splits = seg_tasks >= threads ? 1 : std::clamp<std::int64_t>((2 * threads + seg_tasks - 1) / seg_tasks, 1, std::max<std::int64_t>(1, coblocks / 4));
  const std::int64_t tasks = seg_tasks * co_splits;

  pool.parallel_for(std::size_t(tasks), [&](std::size_t t0, std::size_t t1) {
    thread_local Scratch panel_mem, tile_mem;
    const std::int64_t max_segs = flat ? 8 : rows_per_task * segs_per_row;
    float* panel = panel_mem.get(std::size_t(max_segs * cb * ksp * NR));
    float* tile = tile_mem.get(MR * NR);
    struct Seg { std::int64_t od, oh, ow0, n; };
    std::vector<Seg> segs;
    for (std::size_t task = t0; task < t1; ++task) {
      const std::int64_t t = std::int64_t(task) / co_splits, split = std::int64_t(task) % co_splits;
      const std::int64_t cob0 = split * coblocks / co_splits, cob1 = (split + 1) * coblocks / co_splits;
      segs.clear();
      if (flat)  // od, oh unused; ow0 is the flat start
        for (std::int64_t q = t * 8; q < std::min(flat_segs, (t + 1) * 8); ++q)
          segs.push_back({0, 0, q * NR, std::min<std::int64_t>(NR, vol_out - q * NR)});
      else
        for (std::int64_t r = t * rows_per_task; r < std::min(rows, (t + 1) * rows_per_task); ++r)
          for (std::int64_t s = 0; s < segs_per_row; ++s)
            segs.push_back({r / g.Ho, r % g.Ho, s * NR, std::min<std::int64_t>(NR, g.Wo - s * NR)});
      for (std::int64_t kb = 0; kb < kblocks; ++kb) {
        const std::int64_t c0 = kb * cb, c1 = std::min(g.C, c0 + cb);
        const std::int64_t kbn = (c1 - c0) * ksp;
        // Pack: panel[s][k][j] = input sample of weight k for voxel j of segment s (0 in padding).
        for (std::size_t s = 0; s < segs.size(); ++s) {
          const Seg& sg = segs[s];
#ifdef BHSD_X86
          if (flat) {
            pack_panel_flat_avx2(g, in, c0, c1, sg.ow0, sg.n, panel + s * std::size_t(kbn * NR));
            continue;
          }
          if (rowwin) {
            pack_rows_avx2(g, in, c0, c1, sg.od, sg.oh, sg.ow0, RW, panel + s * std::size_t(kbn * NR), ahead);
            continue;
          }
#endif
          pack(g, in, c0, c1, sg.od, sg.oh, sg.ow0, sg.n, panel + s * std::size_t(kbn * NR), ahead);
        }
        const bool first = kb == 0, last = kb == kblocks - 1;
        // Each block's weights stay in L1 while the segments' panels stream from L2 (the other
        // order, and 256- or 1024-row panels, measured no faster here: BHSD_CONV_KROWS to try).
#ifdef BHSD_X86
        const std::int64_t step = direct && use_avx512() ? 2 : 1;
#else
        const std::int64_t step = 1;
#endif
        for (std::int64_t cob = cob0; cob < cob1; cob += step) {
          const float* a = wp + (cob * K + c0 * ksp) * MR;
          const std::int64_t rows_valid = cbk.rows(cob), co0 = cbk.row0(cob);
          const float* bb = bias ? bias + co0 : nullptr;
          for (std::size_t s = 0; s < segs.size(); ++s) {
            const Seg& sg = segs[s];
            float* o = out + co0 * vol_out + (flat ? sg.ow0 : sg.od * plane_out + sg.oh * g.Wo + sg.ow0);
#ifdef BHSD_X86
            const std::int64_t cobn = std::min(cob1, cob + step);
            float* o0 = o - co0 * vol_out;
            if (rowwin) {
              kernel_blocks(wp + c0 * ksp * MR, K, cbk, cob, cobn, IndirectB{panel + s * std::size_t(kbn * NR), rdelta.data()}, kbn,
                            o0, vol_out, bias, sg.n, first, last, act, alpha);
              continue;
            }
            if (direct) {
              kernel_blocks(wp + c0 * ksp * MR, K, cbk, cob, cobn, PackedB{panel + s * std::size_t(kbn * NR)}, kbn, o0, vol_out, bias,
                            sg.n, first, last, act, alpha);
              continue;
            }
#endif
            const std::size_t nbytes = std::size_t(sg.n) * sizeof(float);
            std::memset(tile, 0, MR * NR * sizeof(float));
            for (std::int64_t r = 0; r < rows_valid; ++r) {
              if (first) std::fill(tile + r * NR, tile + r * NR + sg.n, bb ? bb[r] : 0.0f);
              else std::memcpy(tile + r * NR, o + r * vol_out, nbytes);
            }
            kernel(a, panel + s * std::size_t(kbn * NR), kbn, tile);
            if (last && act != Act::none)
              for (std::int64_t i = 0; i < MR * NR; ++i) tile[i] = activate(tile[i], act, alpha);
            for (std::int64_t r = 0; r < rows_valid; ++r) std::memcpy(o + r * vol_out, tile + r * NR, nbytes);
          }
        }
      }
    }
  }, 1, 8);
}

#ifdef BHSD_X86
// A transposed convolution whose kernel equals its stride (no padding or dilation: a U-Net's
// upsampling), fused: each task takes a run of L input voxels, computes the 1×1×1 GEMM to Co·taps
// rows (o·taps + tap) for them into a buffer that stays in L2, and spreads each row into its
// strided places in the output — no volume-sized temporary written and read back (a 64→32
// (1, 2, 2) upsampling to 16×256×256 spent 170 ms that way, most of it memory traffic). wp:
// pack_conv_weights of the [Co·taps, C] matrix; bt: each row's bias. False where it does not apply.
__attribute__((target("avx2,fma"))) inline void spread_pair_avx2(const float* s0, const float* s1, std::int64_t m, float* d) {
  std::int64_t i = 0;
  for (; i + 8 <= m; i += 8) {  // d[2i] = s0[i], d[2i + 1] = s1[i]
    const __m256 x0 = _mm256_loadu_ps(s0 + i), x1 = _mm256_loadu_ps(s1 + i);
    const __m256 lo = _mm256_unpacklo_ps(x0, x1), hi = _mm256_unpackhi_ps(x0, x1);
    _mm256_storeu_ps(d + 2 * i, _mm256_permute2f128_ps(lo, hi, 0x20));
    _mm256_storeu_ps(d + 2 * i + 8, _mm256_permute2f128_ps(lo, hi, 0x31));
  }
  for (; i < m; ++i) d[2 * i] = s0[i], d[2 * i + 1] = s1[i];
}

__attribute__((target("avx2,fma"))) inline bool conv_transpose_upsample_avx2(
    std::int64_t C, std::int64_t D, std::int64_t H, std::int64_t W, std::int64_t Co, std::int64_t sd, std::int64_t sh,
    std::int64_t sw, const float* in, const float* wp, const float* bt, float* out, ThreadPool& pool) {
  using namespace conv_detail;
  const std::int64_t ksp = sd * sh * sw, Cp = Co * ksp, V = D * H * W, K = C;
  if (K * V + NR >= (std::int64_t(1) << 31)) return false;
  const std::int64_t Ho = H * sh, Wo = W * sw, vol_out = D * sd * Ho * Wo;
  const CoBlocks cbk(Cp);
  // voxels per task: a multiple of 16, the task's Cp rows within about 256 KB
  const std::int64_t L = std::clamp<std::int64_t>((std::int64_t(64) << 10) / Cp / NR * NR, NR, 256);
  const InPlaceInput src(in, K, V);
  const std::int64_t tasks = (V + L - 1) / L;
  pool.parallel_for(std::size_t(tasks), [&](std::size_t t0, std::size_t t1) {
    thread_local Scratch buf_mem;
    float* buf = buf_mem.get(std::size_t(Cp * L));
    for (std::size_t t = t0; t < t1; ++t) {
      const std::int64_t v0 = std::int64_t(t) * L, v1 = std::min(V, v0 + L);
      pointwise_run_avx2(src, wp, K, cbk, bt, v0, v1, buf, L, Act::none, 0.0f);
      // spread: row o·taps + (a·sh + b)·sw + c of voxel (id, ih, iw) → out[o, id·sd + a, ih·sh + b, iw·sw + c]
      for (std::int64_t v = v0; v < v1;) {
        const std::int64_t id = v / (H * W), ih = (v / W) % H, iw0 = v % W, m = std::min(v1 - v, W - iw0);
        for (std::int64_t o = 0; o < Co; ++o)
          for (std::int64_t a = 0; a < sd; ++a)
            for (std::int64_t b = 0; b < sh; ++b) {
              float* drow = out + o * vol_out + ((id * sd + a) * Ho + ih * sh + b) * Wo + iw0 * sw;
              const float* s = buf + (o * ksp + (a * sh + b) * sw) * L + (v - v0);  // tap c's row at s + c·L
              if (sw == 2) {
                spread_pair_avx2(s, s + L, m, drow);
              } else if (sw == 1) {
                std::memcpy(drow, s, std::size_t(m) * sizeof(float));
              } else {
                for (std::int64_t c = 0; c < sw; ++c)
                  for (std::int64_t i = 0; i < m; ++i) drow[i * sw + c] = s[c * L + i];
              }
            }
        v += m;
      }
    }
  }, 1, 8);
  return true;
}
#endif

// Output extent of a convolution along one axis (negative when the input is too small).
inline std::int64_t conv_out(std::int64_t in, std::int64_t k, std::int64_t s, std::int64_t d,
                             std::int64_t p0, std::int64_t p1) {
  const std::int64_t span = d * (k - 1) + 1;
  const std::int64_t padded = in + p0 + p1;
  return padded < span ? 0 : (padded - span) / s + 1;
}

// Transposed convolution, one batch item and one group: in [C, D, H, W], weight [C, Co, kd, kh, kw]
// → out [Co, Do, Ho, Wo] (already sized with output padding). For each kernel offset, a 1×1×1
// convolution of the input by that offset's Co×C weights, scattered into the output.
inline void conv_transpose3d_forward(std::int64_t C, std::int64_t D, std::int64_t H, std::int64_t W,
                                     std::int64_t Co, std::int64_t kd, std::int64_t kh, std::int64_t kw,
                                     std::int64_t sd, std::int64_t sh, std::int64_t sw, std::int64_t dd,
                                     std::int64_t dh, std::int64_t dw, std::int64_t pd, std::int64_t ph,
                                     std::int64_t pw, std::int64_t Do, std::int64_t Ho, std::int64_t Wo,
                                     const float* in, const float* w, const float* bias, float* out,
                                     ThreadPool& pool) {
  const std::int64_t vol_out = Do * Ho * Wo, vol_in = D * H * W, ksp = kd * kh * kw;
  // Stride 1 (the gradient of a stride-1 convolution, a decoder's 3×3×3): a direct convolution
  // with the weights transposed and flipped and leading padding d·(k − 1) − p.
  const std::int64_t qd = dd * (kd - 1) - pd, qh = dh * (kh - 1) - ph, qw = dw * (kw - 1) - pw;
  if (sd == 1 && sh == 1 && sw == 1 && qd >= 0 && qh >= 0 && qw >= 0) {
    std::vector<float> wf(static_cast<std::size_t>(Co * C * ksp));
    for (std::int64_t o = 0; o < Co; ++o)
      for (std::int64_t i = 0; i < C; ++i)
        for (std::int64_t k = 0; k < ksp; ++k) wf[(o * C + i) * ksp + (ksp - 1 - k)] = w[(i * Co + o) * ksp + k];
    const std::vector<float> wp = pack_conv_weights(wf.data(), Co, C * ksp);
    const ConvGeom g{C, D, H, W, Co, kd, kh, kw, 1, 1, 1, dd, dh, dw, qd, qh, qw, Do, Ho, Wo};
    conv3d_forward(g, in, wp.data(), bias, out, Act::none, 0, pool);
    return;
  }
  // Kernel equal to the stride, no padding (a U-Net's upsampling): the taps do not overlap, so each
  // output voxel is one tap of one input voxel — one 1×1×1 convolution to Co·taps channels (row
  // o·taps + tap) reads the input once, then each (channel, tap) plane is spread into its places.
  if (kd == sd && kh == sh && kw == sw && pd == 0 && ph == 0 && pw == 0 && dd == 1 && dh == 1 && dw == 1 &&
      Do == D * sd && Ho == H * sh && Wo == W * sw) {
    const std::int64_t Cp = Co * ksp;
    std::vector<float> wt(static_cast<std::size_t>(Cp * C)), bt(static_cast<std::size_t>(Cp));
    for (std::int64_t o = 0; o < Co; ++o)
      for (std::int64_t k = 0; k < ksp; ++k) {
        bt[std::size_t(o * ksp + k)] = bias ? bias[o] : 0.0f;
        for (std::int64_t i = 0; i < C; ++i) wt[std::size_t((o * ksp + k) * C + i)] = w[(i * Co + o) * ksp + k];
      }
    const std::vector<float> wp = pack_conv_weights(wt.data(), Cp, C);
#ifdef BHSD_X86
    static const bool fused = conv_detail::pick_kernel() == conv_detail::kernel_avx2;
    if (fused && conv_transpose_upsample_avx2(C, D, H, W, Co, sd, sh, sw, in, wp.data(), bt.data(), out, pool)) return;
#endif
    std::vector<float> tmp(static_cast<std::size_t>(Cp * vol_in));
    const ConvGeom g{C, D, H, W, Cp, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, D, H, W};
    conv3d_forward(g, in, wp.data(), bt.data(), tmp.data(), Act::none, 0, pool);
    pool.parallel_for(std::size_t(Co * D), [&](std::size_t lo, std::size_t hi) {
      for (std::size_t q = lo; q < hi; ++q) {
        const std::int64_t o = std::int64_t(q) / D, id = std::int64_t(q) % D;
        for (std::int64_t a = 0; a < kd; ++a)
          for (std::int64_t b = 0; b < kh; ++b)
            for (std::int64_t ih = 0; ih < H; ++ih) {
              float* drow = out + o * vol_out + ((id * sd + a) * Ho + ih * sh + b) * Wo;
              for (std::int64_t c = 0; c < kw; ++c) {
                const float* src = tmp.data() + (o * ksp + (a * kh + b) * kw + c) * vol_in + (id * H + ih) * W;
                for (std::int64_t iw = 0; iw < W; ++iw) drow[iw * sw + c] = src[iw];
              }
            }
      }
    });
    return;
  }
  // Strided, undilated (a decoder's upsampling, the gradient of a strided convolution): split the
  // output by phase — (od, oh, ow) modulo the strides. The taps that reach one phase form a small
  // dense kernel over the input (those a with (r + p − a) divisible by s, input index
  // j + (r + p − a)/s for the phase's j-th voxel), so each phase is one direct convolution, written
  // densely and then spread into its strided places. Every output voxel belongs to one phase.
  if (dd == 1 && dh == 1 && dw == 1) {
    struct Taps { std::vector<std::int64_t> a; std::int64_t e0; };  // taps by input offset e0, e0 + 1, …
    auto taps_of = [](std::int64_t r, std::int64_t p, std::int64_t k, std::int64_t s) {
      Taps t{{}, 0};
      for (std::int64_t a = k - 1; a >= 0; --a)  // e = (r + p − a)/s rises as a falls
        if (((r + p - a) % s + s) % s == 0) {
          if (t.a.empty()) t.e0 = (r + p - a) / s;
          t.a.push_back(a);
        }
      return t;
    };
    const std::int64_t Dj0 = (Do + sd - 1) / sd, Hj0 = (Ho + sh - 1) / sh, Wj0 = (Wo + sw - 1) / sw;
    std::vector<float> tmp(static_cast<std::size_t>(Co * Dj0 * Hj0 * Wj0)), wsub;
    for (std::int64_t rd = 0; rd < std::min(sd, Do); ++rd)
      for (std::int64_t rh = 0; rh < std::min(sh, Ho); ++rh)
        for (std::int64_t rw = 0; rw < std::min(sw, Wo); ++rw) {
          const Taps td = taps_of(rd, pd, kd, sd), th = taps_of(rh, ph, kh, sh), tw = taps_of(rw, pw, kw, sw);
          const std::int64_t Dj = (Do - rd + sd - 1) / sd, Hj = (Ho - rh + sh - 1) / sh, Wj = (Wo - rw + sw - 1) / sw;
          const std::int64_t nd = std::int64_t(td.a.size()), nh = std::int64_t(th.a.size()), nw = std::int64_t(tw.a.size());
          const std::int64_t plane_j = Hj * Wj, vol_j = Dj * plane_j;
          if (nd == 0 || nh == 0 || nw == 0) {  // no tap reaches this phase: the bias alone
            for (std::int64_t o = 0; o < Co; ++o) std::fill(tmp.data() + o * vol_j, tmp.data() + (o + 1) * vol_j, bias ? bias[o] : 0.0f);
          } else {
            const std::int64_t kn = nd * nh * nw;
            wsub.assign(static_cast<std::size_t>(Co * C * kn), 0.0f);
            for (std::int64_t o = 0; o < Co; ++o)
              for (std::int64_t i = 0; i < C; ++i)
                for (std::int64_t x = 0; x < nd; ++x)
                  for (std::int64_t y = 0; y < nh; ++y)
                    for (std::int64_t z = 0; z < nw; ++z)
                      wsub[std::size_t(((o * C + i) * nd + x) * nh * nw + y * nw + z)] =
                          w[(i * Co + o) * ksp + (td.a[std::size_t(x)] * kh + th.a[std::size_t(y)]) * kw + tw.a[std::size_t(z)]];
            const std::vector<float> wp = pack_conv_weights(wsub.data(), Co, C * kn);
            const ConvGeom g{C, D, H, W, Co, nd, nh, nw, 1, 1, 1, 1, 1, 1, -td.e0, -th.e0, -tw.e0, Dj, Hj, Wj};
            conv3d_forward(g, in, wp.data(), bias, tmp.data(), Act::none, 0, pool);
          }
          pool.parallel_for(std::size_t(Co * Dj), [&](std::size_t lo, std::size_t hi) {
            for (std::size_t q = lo; q < hi; ++q) {
              const std::int64_t o = std::int64_t(q) / Dj, j = std::int64_t(q) % Dj;
              const float* src = tmp.data() + o * vol_j + j * plane_j;
              float* dst = out + o * vol_out + (rd + j * sd) * Ho * Wo;
              for (std::int64_t y = 0; y < Hj; ++y) {
                float* drow = dst + (rh + y * sh) * Wo + rw;
                const float* srow = src + y * Wj;
                for (std::int64_t z = 0; z < Wj; ++z) drow[z * sw] = srow[z];
              }
            }
          });
        }
    return;
  }
  for (std::int64_t co = 0; co < Co; ++co) std::fill(out + co * vol_out, out + (co + 1) * vol_out, bias ? bias[co] : 0.0f);
  ConvGeom g{C, D, H, W, Co, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, D, H, W};
  std::vector<float> wk(static_cast<std::size_t>(Co * C)), tmp(static_cast<std::size_t>(Co * vol_in));
  for (std::int64_t a = 0; a < kd; ++a)
    for (std::int64_t b = 0; b < kh; ++b)
      for (std::int64_t c = 0; c < kw; ++c) {
        const std::int64_t k = (a * kh + b) * kw + c;
        for (std::int64_t o = 0; o < Co; ++o)
          for (std::int64_t i = 0; i < C; ++i) wk[o * C + i] = w[(i * Co + o) * ksp + k];
        const std::vector<float> wp = pack_conv_weights(wk.data(), Co, C);
        conv3d_forward(g, in, wp.data(), nullptr, tmp.data(), Act::none, 0, pool);
        pool.parallel_for(std::size_t(Co * D), [&](std::size_t lo, std::size_t hi) {
          for (std::size_t q = lo; q < hi; ++q) {
            const std::int64_t o = std::int64_t(q) / D, id = std::int64_t(q) % D;
            const std::int64_t od = id * sd - pd + a * dd;
            if (od < 0 || od >= Do) continue;
            for (std::int64_t ih = 0; ih < H; ++ih) {
              const std::int64_t oh = ih * sh - ph + b * dh;
              if (oh < 0 || oh >= Ho) continue;
              const float* src = tmp.data() + o * vol_in + (id * H + ih) * W;
              float* dst = out + o * vol_out + (od * Ho + oh) * Wo;
              for (std::int64_t iw = 0; iw < W; ++iw) {
                const std::int64_t ow = iw * sw - pw + c * dw;
                if (ow >= 0 && ow < Wo) dst[ow] += src[iw];
              }
            }
          }
        });
      }
}

// The weight gradient of a convolution, as a correlation of two tensors of one batch item:
//   out[ca, cb, a, b, c] += Σ_o A[ca, o] · B[cb, o·s − p + (a, b, c)·d]
// over the voxels o of A's grid (Ad × Ah × Aw), B's grid being Bd × Bh × Bw. For conv3d, A = dy and
// B = x (out = dw [Co, C, k…]); for a transposed convolution, A = x and B = dy (out = dw [C, Co, k…]).
//
// One dot product per weight (memory-bound): the form the blocked version is tested against, and
// the path for processors without AVX2.
inline void correlate_weight_grad_reference(const float* A, std::int64_t Ca, std::int64_t Ad, std::int64_t Ah, std::int64_t Aw,
                                            const float* B, std::int64_t Cb, std::int64_t Bd, std::int64_t Bh, std::int64_t Bw,
                                            std::int64_t kd, std::int64_t kh, std::int64_t kw, const std::int64_t* s,
                                            const std::int64_t* p, const std::int64_t* d, float* out, ThreadPool& pool) {
  const std::int64_t va = Ad * Ah * Aw, vb = Bd * Bh * Bw, ksp = kd * kh * kw;
  pool.parallel_for(std::size_t(Ca * Cb), [&](std::size_t lo, std::size_t hi) {
    for (std::size_t q = lo; q < hi; ++q) {
      const std::int64_t ca = std::int64_t(q) / Cb, cb = std::int64_t(q) % Cb;
      const float* pa = A + ca * va;
      const float* pb = B + cb * vb;
      float* o = out + (ca * Cb + cb) * ksp;
      for (std::int64_t a = 0; a < kd; ++a)
        for (std::int64_t b = 0; b < kh; ++b)
          for (std::int64_t c = 0; c < kw; ++c) {
            double acc = 0;
            // the range of ow whose B column is inside: 0 ≤ ow·s − p + c·d < Bw
            const std::int64_t off = c * d[2] - p[2];
            std::int64_t w0 = off >= 0 ? 0 : (-off + s[2] - 1) / s[2];
            std::int64_t w1 = Bw - 1 - off < 0 ? 0 : std::min(Aw, (Bw - 1 - off) / s[2] + 1);
            for (std::int64_t z = 0; z < Ad; ++z) {
              const std::int64_t zb = z * s[0] - p[0] + a * d[0];
              if (zb < 0 || zb >= Bd) continue;
              for (std::int64_t y = 0; y < Ah; ++y) {
                const std::int64_t yb = y * s[1] - p[1] + b * d[1];
                if (yb < 0 || yb >= Bh) continue;
                const float* ra = pa + (z * Ah + y) * Aw;
                const float* rb = pb + (zb * Bh + yb) * Bw + off;
                float part[8] = {0, 0, 0, 0, 0, 0, 0, 0};
                std::int64_t w = w0;
                if (s[2] == 1)
                  for (; w + 8 <= w1; w += 8)
                    for (int j = 0; j < 8; ++j) part[j] += ra[w + j] * rb[w + j];
                for (; w < w1; ++w) part[0] += ra[w] * rb[w * s[2]];
                for (int j = 0; j < 8; ++j) acc += part[j];
              }
            }
            o[(a * kh + b) * kw + c] += float(acc);
          }
    }
  });
}

// The same correlation as a GEMM, out^T[K = cb·taps, Ca] = Σ_o colB[K, o] · A^T[o, Ca], blocked like
// conv3d_forward: the voxels of A are cut into chunks of rows (one chunk list per thread); for a
// chunk, A^T is packed once ([Ca / 16][voxel][16]) and the samples of B each weight touches are
// packed in blocks of 6 weights ([block][voxel][6]); the 6×16 AVX2 micro-kernel then contracts over
// the chunk's voxels. Each thread sums its chunks' tiles in double; the threads' sums are added last.
inline void correlate_weight_grad(const float* A, std::int64_t Ca, std::int64_t Ad, std::int64_t Ah, std::int64_t Aw,
                                  const float* B, std::int64_t Cb, std::int64_t Bd, std::int64_t Bh, std::int64_t Bw,
                                  std::int64_t kd, std::int64_t kh, std::int64_t kw, const std::int64_t* s,
                                  const std::int64_t* p, const std::int64_t* d, float* out, ThreadPool& pool) {
#ifdef BHSD_X86
  using namespace conv_detail;
  static const bool fast = pick_kernel() == kernel_avx2;
#else
  const bool fast = false;
#endif
  if (!fast) return correlate_weight_grad_reference(A, Ca, Ad, Ah, Aw, B, Cb, Bd, Bh, Bw, kd, kh, kw, s, p, d, out, pool);
#ifdef BHSD_X86
  const std::int64_t ksp = kd * kh * kw, K = Cb * ksp, Kb = (K + MR - 1) / MR, Ca16 = (Ca + NR - 1) / NR * NR;
  const std::int64_t va = Ad * Ah * Aw, vb = Bd * Bh * Bw, planeB = Bh * Bw;
  const std::int64_t segs_per_row = (Aw + NR - 1) / NR, rows = Ad * Ah;
  // about 256 voxels per chunk: the packed A^T (256 × Ca16) and a 6-weight panel stay in L1/L2
  const std::int64_t rows_per_chunk = std::max<std::int64_t>(1, 16 / segs_per_row);
  const std::int64_t chunks = (rows + rows_per_chunk - 1) / rows_per_chunk;
  const unsigned parts = std::max<unsigned>(1, std::min<unsigned>(pool.size(), unsigned(chunks)));
  std::vector<std::vector<double>> sums(parts);
  pool.parallel_for(parts, [&](std::size_t p0, std::size_t p1) {
    thread_local Scratch at_mem, panel_mem, tile_mem;
    for (std::size_t part = p0; part < p1; ++part) {
      std::vector<double>& sum = sums[part];
      sum.assign(std::size_t(Kb * MR * Ca16), 0.0);
      const std::int64_t c0 = std::int64_t(part) * chunks / parts, c1 = std::int64_t(part + 1) * chunks / parts;
      const std::int64_t maxL = rows_per_chunk * segs_per_row * NR;
      float* at = at_mem.get(std::size_t(maxL * Ca16));
      float* panel = panel_mem.get(std::size_t(maxL * MR));
      float* tile = tile_mem.get(MR * NR);
      for (std::int64_t ch = c0; ch < c1; ++ch) {
        const std::int64_t r0 = ch * rows_per_chunk, r1 = std::min(rows, r0 + rows_per_chunk);
        // voxels of the chunk in segments of NR (a row's tail padded with zeros of A)
        const std::int64_t L = (r1 - r0) * segs_per_row * NR;
        // at[block][j][q] = A[block·16 + q] at voxel j (zeros past Ca and past the row's end)
        for (std::int64_t r = r0; r < r1; ++r) {
          const std::int64_t z = r / Ah, y = r % Ah;
          for (std::int64_t j = 0; j < segs_per_row * NR; ++j) {
            const std::int64_t jj = (r - r0) * segs_per_row * NR + j;
            const float* src = A + (z * Ah + y) * Aw + j;
            for (std::int64_t c = 0; c < Ca16; ++c)
              at[((c / NR) * L + jj) * NR + c % NR] = (j < Aw && c < Ca) ? src[c * va] : 0.0f;
          }
        }
        for (std::int64_t kb = 0; kb < Kb; ++kb) {
          // panel[j][r] = B sample of weight k = kb·6 + r at voxel j (0 outside B, past K, or past Aw)
          for (std::int64_t r = 0; r < MR; ++r) {
            const std::int64_t k = kb * MR + r;
            if (k >= K) {
              for (std::int64_t j = 0; j < L; ++j) panel[j * MR + r] = 0.0f;
              continue;
            }
            const std::int64_t cb = k / ksp, tap = k % ksp;
            const std::int64_t a = tap / (kh * kw), b = (tap / kw) % kh, c = tap % kw;
            const float* pb = B + cb * vb;
            for (std::int64_t rr = r0; rr < r1; ++rr) {
              const std::int64_t z = rr / Ah, y = rr % Ah;
              const std::int64_t zb = z * s[0] - p[0] + a * d[0], yb = y * s[1] - p[1] + b * d[1];
              float* dst = panel + (rr - r0) * segs_per_row * NR * MR + r;
              const std::int64_t n = segs_per_row * NR;
              if (zb < 0 || zb >= Bd || yb < 0 || yb >= Bh) {
                for (std::int64_t j = 0; j < n; ++j) dst[j * MR] = 0.0f;
                continue;
              }
              const float* row = pb + zb * planeB + yb * Bw;
              // the voxels j whose sample xb = j·s + off lies inside B's row (and j inside A's)
              const std::int64_t off = c * d[2] - p[2];
              const std::int64_t jlo = off >= 0 ? 0 : std::min(n, (-off + s[2] - 1) / s[2]);
              const std::int64_t jhi = std::max(jlo, std::min(Aw, Bw - 1 - off < 0 ? 0 : (Bw - 1 - off) / s[2] + 1));
              for (std::int64_t j = 0; j < jlo; ++j) dst[j * MR] = 0.0f;
              if (s[2] == 1)
                for (std::int64_t j = jlo; j < jhi; ++j) dst[j * MR] = row[j + off];
              else
                for (std::int64_t j = jlo; j < jhi; ++j) dst[j * MR] = row[j * s[2] + off];
              for (std::int64_t j = jhi; j < n; ++j) dst[j * MR] = 0.0f;
            }
          }
          for (std::int64_t cab = 0; cab < Ca16; cab += NR) {
            // tile[r][q] = Σ_j panel[j][r] · at[cab / 16][j][q]
            std::memset(tile, 0, MR * NR * sizeof(float));
            kernel_avx2(panel, at + (cab / NR) * L * NR, L, tile);
            double* sd = sum.data() + (kb * MR) * Ca16 + cab;
            for (std::int64_t r = 0; r < MR; ++r)
              for (std::int64_t q = 0; q < NR; ++q) sd[r * Ca16 + q] += tile[r * NR + q];
          }
        }
      }
    }
  }, 1, 1);
  // out[ca, k] += Σ_parts sum[k][ca]
  pool.parallel_for(std::size_t(Ca), [&](std::size_t lo, std::size_t hi) {
    for (std::size_t ca = lo; ca < hi; ++ca)
      for (std::int64_t k = 0; k < K; ++k) {
        double v = 0;
        for (const auto& sum : sums) v += sum[std::size_t(k * Ca16) + ca];
        out[std::int64_t(ca) * K + k] += float(v);
      }
  });
#endif
}

}  // namespace bhsd
