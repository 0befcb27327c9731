// bhsd — packing for the convolution micro-kernels: weights into CoBlocks' k-major blocks, and the
// panels of input samples each weight touches (portable, and AVX2: row segments, flat segments across
// short rows, row windows). Part of conv.hpp.
#pragma once

#include "conv_kernels.hpp"

namespace bhsd {

// Floats of packed weights for Co outputs × K.
inline std::int64_t packed_conv_size(std::int64_t Co, std::int64_t K) { return CoBlocks(Co).count() * K * MR; }

// Weights [Co, K] → CoBlocks' blocks, k-major, MR slots per k: out[(b·K + k)·MR + r] =
// w[(row0(b) + r)·K + k] for r < rows(b); the other slots are zero. out: packed_conv_size floats.
// Blocks b0 … b1 − 1 of them only (each its own K · MR floats of out: callers split the blocks
// between threads).
inline void pack_conv_weights_into(const float* w, std::int64_t Co, std::int64_t K, float* out, std::int64_t b0,
                                   std::int64_t b1) {
  const CoBlocks cbk(Co);
  std::fill(out + b0 * K * MR, out + b1 * K * MR, 0.0f);
  for (std::int64_t b = b0; b < b1; ++b)
    for (std::int64_t r = 0; r < cbk.rows(b); ++r) {
      const float* src = w + (cbk.row0(b) + r) * K;
      for (std::int64_t k = 0; k < K; ++k) out[(b * K + k) * MR + r] = src[k];
    }
}
inline void pack_conv_weights_into(const float* w, std::int64_t Co, std::int64_t K, float* out) {
  pack_conv_weights_into(w, Co, K, out, 0, CoBlocks(Co).count());
}

// The same into an engine block (huge pages, reused when freed), for a call that packs weights it
// was not given packed: a std::vector of a 256→256 layer's 7 MB had come from glibc's per-thread
// arenas, which hand such sizes back to the system when freed — fresh 4 KB pages every call on each
// of libuv's threads until its thresholds adapt (a bare conv3d's 2nd–5th calls 31–37 ms, then 8).
inline EngineArray<float> pack_conv_weights_block(const float* w, std::int64_t Co, std::int64_t K) {
  EngineArray<float> b(std::size_t(packed_conv_size(Co, K)), false);  // (all written)
  pack_conv_weights_into(w, Co, K, b.data());
  return b;
}

inline std::vector<float> pack_conv_weights(const float* w, std::int64_t Co, std::int64_t K) {
  std::vector<float> out(static_cast<std::size_t>(packed_conv_size(Co, K)));
  pack_conv_weights_into(w, Co, K, out.data());
  return out;
}

namespace conv_detail {

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
  return reinterpret_cast<const float*>(reinterpret_cast<std::uintptr_t>(p) +
                                        std::uintptr_t(n * std::int64_t(sizeof(float))));
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
  const __m256i iota0 = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
                iota1 = _mm256_setr_epi32(8, 9, 10, 11, 12, 13, 14, 15);
  const __m256i step0 = _mm256_mullo_epi32(iota0, _mm256_set1_epi32(int(sw))),
                step1 = _mm256_mullo_epi32(iota1, _mm256_set1_epi32(int(sw)));
  // lane j of tap c is read when 0 ≤ iw0 + j·sw < W and j < n, iw0 = lo + c·dw
  __m256i m0[32], m1[32];
  if (!interior)
    for (std::int64_t c = 0; c < g.kw; ++c) {
      const std::int64_t iw0 = lo + c * g.dw;
      const std::int64_t jlo = std::clamp<std::int64_t>(iw0 >= 0 ? 0 : (-iw0 + sw - 1) / sw, 0, NR);
      const std::int64_t jhi =
          std::clamp<std::int64_t>(std::min(n, g.W - iw0 <= 0 ? 0 : (g.W - iw0 + sw - 1) / sw), 0, NR);
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
// samples in the padding, are zero. Needs kw ≤ 8; up to 16 pieces (rows of one voxel).
__attribute__((target("avx2,fma"))) inline void pack_panel_flat_avx2(const ConvGeom& g, const float* in,
                                                                     std::int64_t c0, std::int64_t c1, std::int64_t v0,
                                                                     std::int64_t n, float* p) {
  constexpr int MAXP = 16, MAXKW = 8;
  const std::int64_t plane_in = g.H * g.W, vol_in = g.D * plane_in, sw = g.sw;
  struct Piece {
    std::int64_t od, oh, base;
  };  // lane l of tap c reads iw = base + l·sw + c·dw
  Piece pc[MAXP];
  __m256i m0[MAXP][MAXKW], m1[MAXP][MAXKW];
  const __m256i iota0 = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
                iota1 = _mm256_setr_epi32(8, 9, 10, 11, 12, 13, 14, 15);
  const __m256i step0 = _mm256_mullo_epi32(iota0, _mm256_set1_epi32(int(sw))),
                step1 = _mm256_mullo_epi32(iota1, _mm256_set1_epi32(int(sw)));
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
// Masks for nv vectors of 8 columns from column lo of a row of W: lanes inside [0, W) set.
__attribute__((target("avx2,fma"))) inline void window_masks(std::int64_t lo, std::int64_t W, std::int64_t nv,
                                                             __m256i* m) {
  for (std::int64_t q = 0; q < nv; ++q) {
    const __m256i idx = _mm256_add_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), _mm256_set1_epi32(int(lo + 8 * q)));
    m[q] = _mm256_and_si256(_mm256_cmpgt_epi32(idx, _mm256_set1_epi32(-1)),
                            _mm256_cmpgt_epi32(_mm256_set1_epi32(int(W)), idx));
  }
}

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
  __m256i m[8];  // ≤ 64 columns
  if (!interior) window_masks(lo, g.W, nv, m);
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

// Row windows for stride 2 along W (the U-Nets' down-sampling convolutions): tap c of output j
// reads input column lo + 2j + c, so each (channel, a, b) row's samples are split into its even
// and odd columns — E[i] = row[lo + 2i], O[i] = row[lo + 2i + 1], RW2 samples each (a multiple
// of 8) — and tap c of output j is E[j + c/2] for even c, O[j + (c−1)/2] for odd c: contiguous
// again, read through offsets (IndirectB) like the stride-1 windows. Instead of two 8-lane
// gathers per tap and 16 outputs, two loads and a deinterleave per 16 columns.
__attribute__((target("avx2,fma"))) inline void pack_rows_s2_avx2(const ConvGeom& g, const float* in, std::int64_t c0,
                                                                  std::int64_t c1, std::int64_t od, std::int64_t oh,
                                                                  std::int64_t ow0, std::int64_t RW2, float* p,
                                                                  std::int64_t ahead) {
  const std::int64_t plane_in = g.H * g.W, vol_in = g.D * plane_in, lo = 2 * ow0 - g.pw;
  const std::int64_t nv = 2 * RW2 / 8;  // vectors of 8 columns read, ≤ 8
  const bool interior = lo >= 0 && lo + 2 * RW2 <= g.W;
  const __m256 zero = _mm256_setzero_ps();
  __m256i m[8];  // ≤ 64 columns
  if (!interior) window_masks(lo, g.W, nv, m);
  for (std::int64_t ci = c0; ci < c1; ++ci)
    for (std::int64_t a = 0; a < g.kd; ++a) {
      const std::int64_t id = od * g.sd - g.pd + a * g.dd;
      for (std::int64_t b = 0; b < g.kh; ++b, p += 2 * RW2) {
        const std::int64_t ih = oh * g.sh - g.ph + b * g.dh;
        if (id < 0 || id >= g.D || ih < 0 || ih >= g.H) {
          for (std::int64_t q = 0; q < nv; ++q) _mm256_store_ps(p + 8 * q, zero);
          continue;
        }
        const float* row = in + ci * vol_in + id * plane_in + ih * g.W;
        if (ahead > 0) prefetch_row(row, ahead + std::max<std::int64_t>(0, lo));
        const float* s = float_at(row, lo);
        for (std::int64_t q = 0; q < nv; q += 2) {
          const __m256 v0 = interior ? _mm256_loadu_ps(s + 8 * q) : _mm256_maskload_ps(s + 8 * q, m[q]);
          const __m256 v1 = interior ? _mm256_loadu_ps(s + 8 * q + 8) : _mm256_maskload_ps(s + 8 * q + 8, m[q + 1]);
          // per 128-bit lane: [v0 0 2, v1 0 2 | v0 4 6, v1 4 6], then the 64-bit pairs in order
          const __m256 e = _mm256_shuffle_ps(v0, v1, _MM_SHUFFLE(2, 0, 2, 0));
          const __m256 o = _mm256_shuffle_ps(v0, v1, _MM_SHUFFLE(3, 1, 3, 1));
          _mm256_store_ps(p + 4 * q,
                          _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(e), _MM_SHUFFLE(3, 1, 2, 0))));
          _mm256_store_ps(p + RW2 + 4 * q,
                          _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(o), _MM_SHUFFLE(3, 1, 2, 0))));
        }
      }
    }
}
#endif

// Which packer a layer's panels take on the AVX2/AVX-512 paths (the direct path, conv3d_forward, and
// the AMX one, conv_amx.hpp — one rule for both): flat segments for rows shorter than a tile (the
// deepest stages' rows of 1–3 voxels fill whole tiles: 320→320 at 4×2×2 2.6 → 0.7 ms); at stride 1
// along W one window of RW samples per input row instead of a copy per tap (a panel kw times smaller;
// 64→64 and 128→128 2–6 % faster), where the window is no wider; at stride 2 the same split into
// even and odd columns, RW2 each (pack_rows_s2_avx2: 64→128 3×3×3 at 16×64×64 out 146–158 → 125–133
// ms), both at most 64 columns together — the packers hold masks for 8 vectors of 8, and a kernel 35
// wide had overrun them — so kernels up to 33 wide; otherwise a gather per tap. rdelta: where row k
// of a block of cb channels starts in a window panel (IndirectB).
struct PanelPlan {
  bool flat = false, rowwin = false, rowwin2 = false;
  std::int64_t RW = 0, RW2 = 0, rows_per_channel = 0, ksp = 0;
  std::vector<std::int32_t> rdelta;
  PanelPlan(const ConvGeom& g, std::int64_t cb, bool on, bool s2 = true) {
    ksp = g.kd * g.kh * g.kw, rows_per_channel = g.kd * g.kh;
    // RW2 in whole cache lines: both halves of a window start 64-byte aligned, so of a 3-wide
    // kernel's taps only the third's 16 samples straddle two lines, not the second's too (128→256 at
    // 16×64×64 44–45 → 41–42 ms, 256→320 at 8×32×32 13.7 → 12.5–13.4 on the Xeon; 32→64 and 64→128,
    // whose packing grows by a third, unchanged)
    RW = (NR + (g.kw - 1) * g.dw + 7) / 8 * 8, RW2 = (NR + (g.kw - 1) / 2 + 15) / 16 * 16;
    flat = on && g.Wo < NR && g.kw <= 8;
    rowwin = on && !flat && g.sw == 1 && RW <= 64 && RW <= g.kw * NR;
    rowwin2 = on && s2 && !flat && g.sw == 2 && g.dw == 1 && g.kw >= 2 && 2 * RW2 <= 64;
    if (!rowwin && !rowwin2) return;
    rdelta.resize(std::size_t(cb * ksp));
    for (std::int64_t k = 0; k < cb * ksp; ++k) {
      const std::int64_t c = k % g.kw;
      rdelta[std::size_t(k)] = rowwin ? std::int32_t((k / g.kw) * RW + c * g.dw)
                                      : std::int32_t((k / g.kw) * 2 * RW2 + (c % 2) * RW2 + c / 2);
    }
  }
  // Floats of one segment's panel for `channels` input channels: a window per input row, or a copy
  // of 16 samples per tap (flat segments, gathers). A stride-2 window may be wider than its row's
  // kw copies (64 floats against 48 for a 3-wide kernel): every panel is sized and strided by this.
  std::int64_t seg_floats(std::int64_t channels) const {
    const std::int64_t rows = channels * rows_per_channel;
    return rowwin ? rows * RW : rowwin2 ? rows * 2 * RW2 : channels * ksp * NR;
  }
};

using PackFn = void (*)(const ConvGeom&, const float*, std::int64_t, std::int64_t, std::int64_t, std::int64_t,
                        std::int64_t, std::int64_t, float*, std::int64_t);

inline PackFn pick_pack(Kernel kernel) {
#ifdef BHSD_X86
  if (kernel == kernel_avx2) return pack_panel_avx2;
#endif
  (void)kernel;
  return pack_panel_generic;
}

}  // namespace conv_detail

}  // namespace bhsd
