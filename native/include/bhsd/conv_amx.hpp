// bhsd — the direct convolution on AMX tiles (amx_tiles.hpp), for bf16 calls on processors that
// have them (Intel Sapphire Rapids and later). The only rounding beside fp32's is of the weights and
// the samples to bf16 (8 significant bits), as in the bf16 Winograd path, without Winograd's
// transforms to amplify it.
//
// Two paths. The implicit one (below, "The implicit path") takes the layers U-Nets are made of —
// unit dilation, stride 1 or 2 along W, 16 input channels or more, rows of 8 voxels or more: the
// input turned into bf16 pairs once, each tap's tile read in place; 1.4–2.6× the panel path's speed
// on the nnU-Net window's layers (bench: 64→64 at 16×128×128 74 → 35 ms on a 2-core Xeon). The
// panel path takes the rest.
//
// The panel path's layout follows the direct path's (conv_forward.hpp): a task takes up to 8
// output segments of 16 voxels (row segments, or flat ones across rows shorter than 16), packs each
// one's panel of input samples per block of input channels with the same packers (row windows at
// stride 1 and 2, flat segments, per-tap gathers), turns it into bf16 pairs, and runs 2 × 2 tiles
// (two blocks of 16 output channels × two segments) over the block's 32-row chunks. The sums stay
// in a per-task fp32 buffer across blocks; bias and the activation are applied when the last
// block's are stored (masked: partial segments and the padding of the last 16 channels are never
// written). Either path's weights (bf16 tiles, zero-padded to 16 output channels and to whole
// chunks) come from the Winograd weight cache (WeightCache::get_as), found by content like
// Winograd's. Where the call is fp32, or AMX is not at hand, neither applies and the AVX-512 direct
// path runs.
// Part of conv.hpp.
#pragma once

#include "conv_winograd.hpp"

namespace bhsd {

namespace amx_detail {

constexpr std::int64_t kChunk = 32;  // rows of K per tile (bf16 pairs: 16 rows of 64 bytes)
constexpr std::int64_t kSegs = 8;    // output segments per task (as the direct path's)

// How a layer's reduction is cut: input channels per block (about 512 rows of K), blocks, and
// 32-row chunks per block (every block padded to as many as a full one has).
struct Layout {
  std::int64_t cob, cb, kblocks, chunks;
  std::size_t bytes() const { return std::size_t(cob * kblocks * chunks * kTileWords) * sizeof(std::uint16_t); }
};
inline Layout layout(const ConvGeom& g) {
  const std::int64_t ksp = g.kd * g.kh * g.kw;
  const std::int64_t blocks = std::max<std::int64_t>(1, (g.C * ksp + 511) / 512);
  Layout l;
  l.cob = (g.Co + 15) / 16;
  l.cb = (g.C + blocks - 1) / blocks;
  l.kblocks = (g.C + l.cb - 1) / l.cb;
  l.chunks = (l.cb * ksp + kChunk - 1) / kChunk;
  return l;
}

// Where this path applies: an AMX call (bf16 precision, tiles here), 16 to 2048 output channels (a
// task keeps every channel's sums for its segments: 1 MB at 2048), a chunk of K or more, offsets
// within 32 bits.
inline bool applies(const ConvGeom& g) {
  if (!wino_detail::use_bf16() || !amx_available()) return false;
  if (g.Co < 16 || g.Co > 2048 || g.K() < kChunk) return false;
  const std::int64_t vol_in = g.C * g.D * g.H * g.W, vol_out = g.Co * g.Do * g.Ho * g.Wo;
  return vol_in < (std::int64_t(1) << 31) && vol_out < (std::int64_t(1) << 31);
}

#ifdef BHSD_AMX
// The weights as tiles: tile (o, kb, ch) holds w[16·o + r][c0·ksp + 32·ch + k] at row r, column k
// (c0 = kb·cb), bf16, zero past Co and past the block's rows; from the direct path's packed weights
// (w[co][k] at wp[(blk·K + k)·MR + r], blk and r CoBlocks' block and row of co).
inline void pack_weights(const ConvGeom& g, const float* wp, const Layout& l, std::uint16_t* U, ThreadPool& pool) {
  const std::int64_t K = g.K(), ksp = g.kd * g.kh * g.kw;
  const CoBlocks cbk(g.Co);
  std::vector<std::int64_t> at(std::size_t(g.Co));  // co → wp offset of (co, k = 0); k steps by MR
  for (std::int64_t b = 0; b < cbk.count(); ++b)
    for (std::int64_t r = 0; r < cbk.rows(b); ++r) at[std::size_t(cbk.row0(b) + r)] = b * K * MR + r;
  pool.parallel_for(
      std::size_t(l.cob * l.kblocks),
      [&](std::size_t t0, std::size_t t1) {
        for (std::size_t t = t0; t < t1; ++t) {
          const std::int64_t o = std::int64_t(t) / l.kblocks, kb = std::int64_t(t) % l.kblocks;
          const std::int64_t k0 = kb * l.cb * ksp, rows = (std::min(g.C, (kb + 1) * l.cb) - kb * l.cb) * ksp;
          std::uint16_t* dst = U + std::size_t(t) * std::size_t(l.chunks * kTileWords);
          for (std::int64_t ch = 0; ch < l.chunks; ++ch)
            for (std::int64_t r = 0; r < 16; ++r) {
              const std::int64_t co = 16 * o + r;
              for (std::int64_t k = 0; k < kChunk; ++k) {
                const std::int64_t kl = ch * kChunk + k;
                dst[(ch * 16 + r) * kChunk + k] = co < g.Co && kl < rows
                                                      ? wino_detail::bf16_of(wp[at[std::size_t(co)] + (k0 + kl) * MR])
                                                      : std::uint16_t(0);
              }
            }
        }
      },
      1, 4);
}

// Rows 0 … rows − 1 of a panel (row k's 16 samples at src.at(k)) as bf16 pairs, chunks·32 rows (0
// past rows): dst[(k/2)·32 + 2j + k%2] = row k's sample j — a tile's 16 rows of 16 pairs per chunk.
template <class Src>
__attribute__((target("avx512f,avx512bw,avx512bf16"))) inline void to_pairs(const Src& src, std::int64_t rows,
                                                                            std::int64_t chunks, std::uint16_t* dst) {
  alignas(64) static const std::uint16_t idx_[32] = {0, 16, 1, 17, 2,  18, 3,  19, 4,  20, 5,  21, 6,  22, 7,  23,
                                                     8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31};
  const __m512i idx = _mm512_load_si512(idx_);
  const __m512 zero = _mm512_setzero_ps();
  const std::int64_t pairs = chunks * kChunk / 2;
  for (std::int64_t q = 0; q < pairs; ++q) {
    const std::int64_t k = 2 * q;
    const __m512 x0 = k < rows ? _mm512_loadu_ps(src.at(k)) : zero;
    const __m512 x1 = k + 1 < rows ? _mm512_loadu_ps(src.at(k + 1)) : zero;
    const __m512i p = _mm512_permutexvar_epi16(idx, __m512i(_mm512_cvtne2ps_pbh(x1, x0)));  // x0 low, x1 high
    _mm512_store_si512(dst + q * 32, p);
  }
}

// A 16 × 16 tile of sums (rows: channels co0 …, columns: the segment's n voxels at o + co·ldo)
// stored with the bias and the activation; rows past Co and columns past n untouched.
__attribute__((target("avx512f"))) inline void store_tile(const float* s, std::int64_t co0, std::int64_t Co,
                                                          const float* bias, float* o, std::int64_t ldo, std::int64_t n,
                                                          Act act, float alpha) {
  const __mmask16 m = __mmask16((1u << n) - 1u);
  const __m512 zero = _mm512_setzero_ps(), a = _mm512_set1_ps(alpha);
  for (std::int64_t r = 0; r < 16 && co0 + r < Co; ++r) {
    __m512 v = _mm512_load_ps(s + r * 16);
    if (bias) v = _mm512_add_ps(v, _mm512_set1_ps(bias[co0 + r]));
    if (act == Act::relu) v = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(v, zero, _CMP_GT_OQ), v);  // v > 0 ? v : 0
    if (act == Act::leaky)
      v = _mm512_mask_mul_ps(v, _mm512_cmp_ps_mask(v, zero, _CMP_LT_OQ), v, a);  // v > 0 (or NaN) ? v : v·alpha
    _mm512_mask_storeu_ps(o + (co0 + r) * ldo, m, v);
  }
}

// One block of the reduction (kb) of a panel-form task: every pair of output channel blocks in
// [o0, o1) by every pair of its ns segments' pair tiles (at pairs, a block's chunks apart), summed
// into sums (segment s, channel block o: 256 floats at sums + (s·cob + o)·256), from zero where
// first. The upsampling transposed convolution's GEMM runs the same (conv_transposed.hpp).
inline void block_products(const std::uint16_t* U, const Layout& l, std::int64_t kb, std::int64_t o0, std::int64_t o1,
                           const std::uint16_t* pairs, std::int64_t ns, float* sums, bool first) {
  const std::size_t chunk_words = std::size_t(l.chunks * kTileWords);
  auto sum_at = [&](std::int64_t s, std::int64_t o) { return sums + (s * l.cob + o) * 256; };
  for (std::int64_t o = o0; o < o1; o += 2) {
    const std::uint16_t* a0 = U + std::size_t(o * l.kblocks + kb) * chunk_words;
    const std::uint16_t* a1 = a0 + std::size_t(l.kblocks) * chunk_words;
    const bool two_a = o + 1 < o1;
    for (std::int64_t s = 0; s < ns; s += 2) {
      const std::uint16_t* b0 = pairs + std::size_t(s) * chunk_words;
      const std::uint16_t* b1 = b0 + chunk_words;
      float *s00 = sum_at(s, o), *s10 = sum_at(s, o + 1), *s01 = sum_at(s + 1, o), *s11 = sum_at(s + 1, o + 1);
      if (s + 1 < ns) {
        if (two_a)
          run_tiles<true, true>(a0, a1, b0, b1, l.chunks, s00, s01, s10, s11, first);
        else
          run_tiles<false, true>(a0, a1, b0, b1, l.chunks, s00, s01, s10, s11, first);
      } else if (two_a) {
        run_tiles<true, false>(a0, a1, b0, b1, l.chunks, s00, s01, s10, s11, first);
      } else {
        run_tiles<false, false>(a0, a1, b0, b1, l.chunks, s00, s01, s10, s11, first);
      }
    }
  }
}
#endif

// An output segment: up to 16 voxels of row (od, oh) from ow0 (or, flat, of the volume from ow0).
struct Seg {
  std::int64_t od, oh, ow0, n;
};

// Row task t's segments (at most kSegs): a row's segments in groups of kSegs where a row has more,
// else whole rows, rows_per_task of them; rows counted from plane od0. Returns how many.
inline std::int64_t row_segments(const ConvGeom& g, std::int64_t t, std::int64_t od0, std::int64_t rows,
                                 std::int64_t rows_per_task, Seg* segs) {
  const std::int64_t segs_per_row = (g.Wo + 15) / 16, groups_per_row = (segs_per_row + kSegs - 1) / kSegs;
  std::int64_t ns = 0;
  if (groups_per_row > 1)
    for (std::int64_t r = t / groups_per_row, s = t % groups_per_row * kSegs;
         s < std::min(segs_per_row, (t % groups_per_row + 1) * kSegs); ++s)
      segs[ns++] = {od0 + r / g.Ho, r % g.Ho, s * 16, std::min<std::int64_t>(16, g.Wo - s * 16)};
  else
    for (std::int64_t r = t * rows_per_task; r < std::min(rows, (t + 1) * rows_per_task); ++r)
      for (std::int64_t s = 0; s < segs_per_row; ++s)
        segs[ns++] = {od0 + r / g.Ho, r % g.Ho, s * 16, std::min<std::int64_t>(16, g.Wo - s * 16)};
  return ns;
}

// The process's buffer for a layer's weight tiles where the cache will not hold them.
using AmxWeightLease = conv_detail::LentBuffer<struct AmxWeightTag>;

// A layer's weight tiles (`layout`, `bytes` long, written by make(U)): from the weight cache (held
// by `cached`), or made into `lease` where the cache will not hold them; null where memory ran out.
template <class Make>
inline const std::uint16_t* weight_tiles(const ConvGeom& g, const float* wp, ThreadPool& pool, int layout,
                                         std::size_t bytes, std::shared_ptr<const wino_detail::WeightEntry>& cached,
                                         std::unique_ptr<AmxWeightLease>& lease, const Make& make) {
  cached = wino_detail::WeightCache::instance().get_as(g, wp, pool, 0, true, layout, bytes,
                                                       [&](void* U) { make(static_cast<std::uint16_t*>(U)); });
  if (cached) return static_cast<const std::uint16_t*>(cached->U());
  lease.reset(new AmxWeightLease((bytes + 3) / 4, (std::size_t(32) << 20) / sizeof(float)));
  if (!lease->get()) return nullptr;
  auto* U = reinterpret_cast<std::uint16_t*>(lease->get());
  make(U);
  return U;
}

// ---------------------------------------------------------------------------------------------------
// The implicit path: no panels. The input is turned into bf16 pairs once per layer, laid out so that
// every tap's B tile is 16 rows of 64 bytes read in place — row i the channel pair (2i, 2i + 1) of a
// 32-channel chunk, column j the pair of output voxel j's sample for that tap. Per input row (d, h):
// [channel pairs][sw phases][Wq][2], phase p holding the padded row's samples p, p + sw, p + 2·sw, …
// (so that a stride-2 tap's 16 samples lie side by side too). A tap (kz, ky, kx) of an output segment
// (od, oh, ow0 … ow0 + 15) is then the row (od·sd + kz − pd, oh·sh + ky − ph), phase kx mod sw, from
// ow0 + ⌊kx / sw⌋; a tap whose row lies outside the volume is skipped (for one segment of a pair
// and not the other, that one reads a plane of zeros). The weights are tiles per (16
// output channels, tap, chunk). Each 2 × 2 block of tiles (two segments × two blocks of 16 output
// channels) sums every tap and chunk in the tile registers and is stored once: straight into the
// output, started from the bias, where there is no activation and both segments are whole (a conv
// before a norm), else through a buffer that adds the bias and applies the activation. Against the
// panel path this drops the per-task packing and conversion (a 64→64 3×3×3 layer reused each packed
// B tile for only 4 products) for one conversion pass over the input. The input planes go through
// a ring of about 32 MB (each converted once; one plane's kernel depth at least), whole layers in
// one pass where they fit. Tried and dropped (no faster on the Xeon): the taps in groups summed
// over every pair of channel blocks in turn (B rows from L1, sums held between groups), software
// prefetch of the next step's rows, the four loads of a step before its four products, and (slower)
// converting straight from the input rather than through a copy of each row.

// Whether the implicit path takes this layer (beside applies()): unit dilations, stride 1 or 2
// along W, 16 input channels or more (fewer would leave most of each 32-channel chunk zeros), rows
// of 8 voxels or more (a 16-voxel segment half used at worst), and not turned off
// (BHSD_AMX_PACKED=1: the panel path, for comparison).
inline bool implicit_applies(const ConvGeom& g) {
  static const bool off = std::getenv("BHSD_AMX_PACKED") != nullptr;
  return !off && g.dd == 1 && g.dh == 1 && g.dw == 1 && (g.sw == 1 || g.sw == 2) && g.C >= 16 && g.Wo >= 8;
}

struct Implicit {
  std::int64_t nch, pairs, segs, Wq, row, plane, ntaps;
  explicit Implicit(const ConvGeom& g)
      : nch((g.C + kChunk - 1) / kChunk),
        pairs(nch * 16),
        segs((g.Wo + 15) / 16),
        Wq((segs * 16 + (g.kw - 1) / g.sw + 15) / 16 * 16),
        row(g.sw * Wq * 2),
        plane(pairs * row),
        ntaps(g.kd * g.kh * g.kw) {}
  std::size_t weight_bytes(const ConvGeom& g) const {
    return std::size_t((g.Co + 15) / 16 * ntaps * nch * kTileWords) * sizeof(std::uint16_t);
  }
};

#ifdef BHSD_AMX
// Tile (o, tap, cc) at U + ((o·ntaps + tap)·nch + cc)·512: row r, column e = w[16·o + r][32·cc + e][tap]
// in bf16, zero past Co and C; from the direct path's packed weights (as pack_weights reads them).
inline void pack_weights_implicit(const ConvGeom& g, const float* wp, const Implicit& im, std::uint16_t* U,
                                  ThreadPool& pool) {
  const std::int64_t K = g.K();
  const CoBlocks cbk(g.Co);
  std::vector<std::int64_t> at(std::size_t(g.Co));
  for (std::int64_t b = 0; b < cbk.count(); ++b)
    for (std::int64_t r = 0; r < cbk.rows(b); ++r) at[std::size_t(cbk.row0(b) + r)] = b * K * MR + r;
  const std::int64_t cob = (g.Co + 15) / 16;
  pool.parallel_for(
      std::size_t(cob * im.ntaps),
      [&](std::size_t t0, std::size_t t1) {
        for (std::size_t t = t0; t < t1; ++t) {
          const std::int64_t o = std::int64_t(t) / im.ntaps, tap = std::int64_t(t) % im.ntaps;
          std::uint16_t* dst = U + std::size_t(t) * std::size_t(im.nch * kTileWords);
          for (std::int64_t cc = 0; cc < im.nch; ++cc)
            for (std::int64_t r = 0; r < 16; ++r) {
              const std::int64_t co = 16 * o + r;
              for (std::int64_t e = 0; e < kChunk; ++e) {
                const std::int64_t c = cc * kChunk + e;
                dst[(cc * 16 + r) * kChunk + e] =
                    co < g.Co && c < g.C ? wino_detail::bf16_of(wp[at[std::size_t(co)] + (c * im.ntaps + tap) * MR])
                                         : std::uint16_t(0);
              }
            }
        }
      },
      1, 4);
}

// Input row (d, h) into its converted layout at dst (im.plane values); rowbuf: 2 · (sw·Wq + 32)
// floats of scratch.
__attribute__((target("avx512f,avx512bw,avx512bf16"))) inline void convert_row(const ConvGeom& g, const float* in,
                                                                               std::int64_t d, std::int64_t h,
                                                                               const Implicit& im, float* rowbuf,
                                                                               std::uint16_t* dst) {
  alignas(64) static const std::uint16_t pair_idx[32] = {0, 16, 1, 17, 2,  18, 3,  19, 4,  20, 5,  21, 6,  22, 7,  23,
                                                         8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31};
  alignas(64) static const std::int32_t even_idx[16] = {0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30};
  const __m512i pidx = _mm512_load_si512(pair_idx);
  const __m512i eidx = _mm512_load_si512(even_idx), oidx = _mm512_add_epi32(eidx, _mm512_set1_epi32(1));
  const std::int64_t span = g.sw * im.Wq, len = span + 32;
  float* r0 = rowbuf;
  float* r1 = rowbuf + len;
  // the padded row's samples xp = 0 … span − 1 are x = xp − pw of the input row
  const std::int64_t x0 = std::max<std::int64_t>(0, g.pw), xs = std::max<std::int64_t>(0, -g.pw);
  const std::int64_t n = std::max<std::int64_t>(0, std::min(g.W - xs, span - x0));
  const std::int64_t plane_in = g.H * g.W, vol_in = g.D * plane_in;
  const float* src = in + d * plane_in + h * g.W + xs;
  for (std::int64_t k = 0; k < im.pairs; ++k) {
    const std::int64_t c0 = 2 * k, c1 = 2 * k + 1;
    std::uint16_t* out = dst + k * im.row;
    if (c0 >= g.C) {
      std::memset(out, 0, std::size_t(im.row) * sizeof(std::uint16_t));
      continue;
    }
    std::memset(r0, 0, std::size_t(len) * sizeof(float));
    std::memset(r1, 0, std::size_t(len) * sizeof(float));
    if (n > 0) {
      std::memcpy(r0 + x0, src + c0 * vol_in, std::size_t(n) * sizeof(float));
      if (c1 < g.C) std::memcpy(r1 + x0, src + c1 * vol_in, std::size_t(n) * sizeof(float));
    }
    for (std::int64_t p = 0; p < g.sw; ++p)
      for (std::int64_t q = 0; q < im.Wq; q += 16) {
        __m512 a, b;
        if (g.sw == 1) {
          a = _mm512_loadu_ps(r0 + q), b = _mm512_loadu_ps(r1 + q);
        } else {
          const __m512i ix = p ? oidx : eidx;
          a = _mm512_permutex2var_ps(_mm512_loadu_ps(r0 + 2 * q), ix, _mm512_loadu_ps(r0 + 2 * q + 16));
          b = _mm512_permutex2var_ps(_mm512_loadu_ps(r1 + 2 * q), ix, _mm512_loadu_ps(r1 + 2 * q + 16));
        }
        const __m512i v = _mm512_permutexvar_epi16(pidx, __m512i(_mm512_cvtne2ps_pbh(b, a)));  // a low, b high
        _mm512_storeu_si512(out + (p * im.Wq + q) * 2, v);
      }
  }
}

// One 2 × 2 block of tiles over every tap and chunk: the
// output channel blocks' weights at a0 and a1 (tap 0, chunk 0; tap t chunk cc (t·nch + cc)·512 on),
// the two segments' B rows per tap at b0[tap] and b1[tap] (b0[tap] null: the tap is skipped; a chunk
// `cstride` values on, rows ldb bytes apart). Sums start from the tiles at init (rows 64 bytes
// apart; from zero where init[0] is null) and are stored to c (rows ldc bytes apart): 0 (a0, b0),
// 1 (a0, b1), 2 (a1, b0), 3 (a1, b1).
struct TileBlock {
  const std::uint16_t *a0, *a1;
  const std::uint16_t *const *b0, *const *b1;
  std::int64_t ntaps, nch, cstride, ldb;
  const float* init[4];
  float* c[4];
  std::int64_t ldc;
};
template <bool A1, bool B1>
__attribute__((target("amx-tile,amx-bf16"))) inline void implicit_tiles(const TileBlock& x) {
  if (x.init[0]) {
    _tile_loadd(0, x.init[0], 64);
    if (B1) _tile_loadd(1, x.init[1], 64);
    if (A1) _tile_loadd(2, x.init[2], 64);
    if (A1 && B1) _tile_loadd(3, x.init[3], 64);
  } else {
    _tile_zero(0);
    if (B1) _tile_zero(1);
    if (A1) _tile_zero(2);
    if (A1 && B1) _tile_zero(3);
  }
  for (std::int64_t tap = 0; tap < x.ntaps; ++tap) {
    const std::uint16_t* p0 = x.b0[tap];
    if (!p0) continue;
    const std::uint16_t* p1 = B1 ? x.b1[tap] : nullptr;
    const std::size_t aoff = std::size_t(tap * x.nch) * kTileWords;
    for (std::int64_t cc = 0; cc < x.nch; ++cc) {
      const std::size_t ao = aoff + std::size_t(cc) * kTileWords;
      _tile_loadd(4, x.a0 + ao, 64);
      _tile_loadd(6, p0 + cc * x.cstride, x.ldb);
      _tile_dpbf16ps(0, 4, 6);
      if (B1) {
        _tile_loadd(7, p1 + cc * x.cstride, x.ldb);
        _tile_dpbf16ps(1, 4, 7);
      }
      if (A1) {
        _tile_loadd(5, x.a1 + ao, 64);
        _tile_dpbf16ps(2, 5, 6);
        if (B1) _tile_dpbf16ps(3, 5, 7);
      }
    }
  }
  _tile_stored(0, x.c[0], x.ldc);
  if (B1) _tile_stored(1, x.c[1], x.ldc);
  if (A1) _tile_stored(2, x.c[2], x.ldc);
  if (A1 && B1) _tile_stored(3, x.c[3], x.ldc);
}
#endif

// The ring of converted input planes (an engine block: huge pages, kept between calls), and the
// bytes of input planes it holds (the tests make it small to run many passes).
using ImplicitRing = conv_detail::LentBuffer<struct ImplicitRingTag>;
inline std::size_t& ring_bytes() {
  static std::size_t b = std::size_t(32) << 20;
  return b;
}

// conv3d_forward_amx's implicit path; false (nothing written) where it does not apply or memory
// ran out.
inline bool conv3d_forward_amx_implicit(const ConvGeom& g, const float* in, const float* wp, const float* bias,
                                        float* out, Act act, float alpha, ThreadPool& pool) {
#ifdef BHSD_AMX
  if (!applies(g) || !implicit_applies(g)) return false;
  const Implicit im(g);
  std::shared_ptr<const wino_detail::WeightEntry> cached;
  std::unique_ptr<AmxWeightLease> wlease;
  const std::uint16_t* U = weight_tiles(g, wp, pool, wino_detail::kImplicitTiles, im.weight_bytes(g), cached, wlease,
                                        [&](std::uint16_t* dst) { pack_weights_implicit(g, wp, im, dst, pool); });
  if (!U) return false;
  // the ring: output planes per pass as many as ring_bytes() of input planes allow (one at least)
  const std::size_t plane_bytes = std::size_t(g.H * im.plane) * sizeof(std::uint16_t);
  const std::int64_t budget_planes = std::max<std::int64_t>(1, std::int64_t(ring_bytes() / plane_bytes));
  std::int64_t nd = std::max<std::int64_t>(1, (budget_planes - g.kd) / g.sd + 1);
  nd = std::min(nd, g.Do);
  const std::int64_t ring = (nd - 1) * g.sd + g.kd;  // input planes an output pass reads
  const std::size_t ring_words = std::size_t(ring) * std::size_t(g.H * im.plane) + std::size_t(im.plane);  // + zeros
  // taken at the budget's size whenever it fits that (one buffer for every layer, its pages faulted
  // in once: a ring grown layer by layer had faulted its pages in again for each larger layer, and
  // made the plan's first timing of this path 5× its cost)
  const std::size_t cap_floats = (ring_bytes() + (std::size_t(4) << 20)) / sizeof(float);
  const std::size_t need_floats = (ring_words * sizeof(std::uint16_t) + 3) / 4;
  ImplicitRing lease(need_floats <= cap_floats ? cap_floats : need_floats, cap_floats);
  if (!lease.get()) return false;
  auto* X = reinterpret_cast<std::uint16_t*>(lease.get());
  std::uint16_t* zeros = X + std::size_t(ring) * std::size_t(g.H * im.plane);
  std::memset(zeros, 0, std::size_t(im.plane) * sizeof(std::uint16_t));
  auto plane_at = [&](std::int64_t d) { return X + std::size_t(d % ring) * std::size_t(g.H * im.plane); };

  const std::int64_t plane_out = g.Ho * g.Wo, vol_out = g.Do * plane_out;
  const std::int64_t segs_per_row = im.segs;
  // the bias as tiles (row r of block o: 16 copies of bias[16·o + r]), where sums start from it
  std::vector<float> bias_mem(bias ? std::size_t(((g.Co + 15) / 16) * 256) : 0);
  for (std::size_t i = 0; i < bias_mem.size(); ++i) bias_mem[i] = std::int64_t(i / 16) < g.Co ? bias[i / 16] : 0.0f;
  const float* bias_tiles = bias_mem.data();
  const std::int64_t rows_per_task = std::max<std::int64_t>(1, kSegs / segs_per_row);
  const std::int64_t groups_per_row = (segs_per_row + kSegs - 1) / kSegs;
  const std::int64_t cob = (g.Co + 15) / 16;
  const std::int64_t threads = std::int64_t(pool.size());
  const std::size_t rb_len = std::size_t(2 * (g.sw * im.Wq + 32));
  std::int64_t converted = 0;  // input planes [0, converted) done (those a pass still needs are in the ring)
  for (std::int64_t od0 = 0; od0 < g.Do; od0 += nd) {
    const std::int64_t od1 = std::min(g.Do, od0 + nd);
    // input planes this pass reads: [lo, hi) within the volume
    const std::int64_t lo = std::max<std::int64_t>(0, od0 * g.sd - g.pd);
    const std::int64_t hi = std::min(g.D, (od1 - 1) * g.sd - g.pd + g.kd);
    const std::int64_t c0 = std::max(lo, converted);
    if (hi > c0) {
      pool.parallel_for(
          std::size_t((hi - c0) * g.H),
          [&](std::size_t t0, std::size_t t1) {
            thread_local conv_detail::Scratch rb_mem;
            float* rb = rb_mem.get(rb_len);
            for (std::size_t t = t0; t < t1; ++t) {
              const std::int64_t d = c0 + std::int64_t(t) / g.H, h = std::int64_t(t) % g.H;
              convert_row(g, in, d, h, im, rb, plane_at(d) + std::size_t(h * im.plane));
            }
          },
          4, 4);
      converted = hi;
    }
    const std::int64_t rows = (od1 - od0) * g.Ho;
    const std::int64_t seg_tasks =
        groups_per_row > 1 ? rows * groups_per_row : (rows + rows_per_task - 1) / rows_per_task;
    const std::int64_t co_splits = seg_tasks >= threads
                                       ? 1
                                       : std::clamp<std::int64_t>((2 * threads + seg_tasks - 1) / seg_tasks, 1,
                                                                  std::max<std::int64_t>(1, cob / 2));
    pool.parallel_for(
        std::size_t(seg_tasks * co_splits),
        [&](std::size_t t0, std::size_t t1) {
          thread_local conv_detail::Scratch sums_mem, ptr_mem;
          float* sums = sums_mem.get(4 * 256);
          // B row pointers per segment and tap (floats' scratch holds pointers: 2 words each)
          auto** bt = reinterpret_cast<const std::uint16_t**>(ptr_mem.get(std::size_t(kSegs * im.ntaps) * 2));
          Seg segs[kSegs];
          const Tiles tiles;
          for (std::size_t task = t0; task < t1; ++task) {
            const std::int64_t t = std::int64_t(task) / co_splits, split = std::int64_t(task) % co_splits;
            const std::int64_t o0 = split * cob / co_splits, o1 = (split + 1) * cob / co_splits;
            const std::int64_t ns = row_segments(g, t, od0, rows, rows_per_task, segs);
            // each segment's tap rows (null where the row lies outside the volume)
            for (std::int64_t s = 0; s < ns; ++s) {
              const Seg& sg = segs[s];
              for (std::int64_t kz = 0, tap = 0; kz < g.kd; ++kz)
                for (std::int64_t ky = 0; ky < g.kh; ++ky)
                  for (std::int64_t kx = 0; kx < g.kw; ++kx, ++tap) {
                    const std::int64_t d = sg.od * g.sd + kz - g.pd, h = sg.oh * g.sh + ky - g.ph;
                    const std::int64_t col = ((kx % g.sw) * im.Wq + sg.ow0 + kx / g.sw) * 2;
                    const bool inside = d >= 0 && d < g.D && h >= 0 && h < g.H;
                    bt[s * im.ntaps + tap] = inside ? plane_at(d) + std::size_t(h * im.plane + col) : nullptr;
                  }
            }
            for (std::int64_t s = 0; s < ns; s += 2) {
              const bool two_b = s + 1 < ns;
              const std::uint16_t** p0 = bt + s * im.ntaps;
              const std::uint16_t** p1 = two_b ? p0 + im.ntaps : p0;
              // a tap outside for one segment of the pair and inside for the other reads zeros there
              if (two_b)
                for (std::int64_t tap = 0; tap < im.ntaps; ++tap)
                  if (!p0[tap] != !p1[tap]) (p0[tap] ? p1[tap] : p0[tap]) = zeros;
              // both segments whole: without an activation, the sums go straight to the output
              // (tile rows are output channels, vol_out apart), started from the bias
              const bool whole = act == Act::none && segs[s].n == 16 && (!two_b || segs[s + 1].n == 16);
              for (std::int64_t o = o0; o < o1; o += 2) {
                const bool two_a = o + 1 < o1;
                const bool direct = whole && 16 * (o + (two_a ? 2 : 1)) <= g.Co;
                TileBlock x;
                x.a0 = U + std::size_t(o * im.ntaps * im.nch) * kTileWords;
                x.a1 = x.a0 + std::size_t(im.ntaps * im.nch) * kTileWords;
                x.b0 = p0, x.b1 = p1;
                x.ntaps = im.ntaps;
                x.nch = im.nch, x.cstride = 16 * im.row, x.ldb = im.row * 2;
                if (direct && bias) {
                  x.init[0] = x.init[1] = bias_tiles + 256 * o;
                  x.init[2] = x.init[3] = bias_tiles + 256 * (o + 1);
                } else {
                  for (int k = 0; k < 4; ++k) x.init[k] = nullptr;
                }
                x.ldc = 64;
                for (int k = 0; k < 4; ++k) x.c[k] = sums + 256 * k;
                if (direct) {
                  const Seg &sa = segs[s], &sb = segs[two_b ? s + 1 : s];
                  x.c[0] = out + 16 * o * vol_out + sa.od * plane_out + sa.oh * g.Wo + sa.ow0;
                  x.c[1] = out + 16 * o * vol_out + sb.od * plane_out + sb.oh * g.Wo + sb.ow0;
                  x.c[2] = x.c[0] + 16 * vol_out, x.c[3] = x.c[1] + 16 * vol_out;
                  x.ldc = vol_out * std::int64_t(sizeof(float));
                }
                if (two_b) {
                  if (two_a)
                    implicit_tiles<true, true>(x);
                  else
                    implicit_tiles<false, true>(x);
                } else if (two_a) {
                  implicit_tiles<true, false>(x);
                } else {
                  implicit_tiles<false, false>(x);
                }
                if (direct) continue;
                for (std::int64_t j = 0; j < (two_b ? 2 : 1); ++j) {
                  const Seg& sg = segs[s + j];
                  float* ob = out + sg.od * plane_out + sg.oh * g.Wo + sg.ow0;
                  store_tile(x.c[j], 16 * o, g.Co, bias, ob, vol_out, sg.n, act, alpha);
                  if (two_a) store_tile(x.c[2 + j], 16 * (o + 1), g.Co, bias, ob, vol_out, sg.n, act, alpha);
                }
              }
            }
          }
        },
        1, 8);
  }
  return true;
#else
  (void)g, (void)in, (void)wp, (void)bias, (void)out, (void)act, (void)alpha, (void)pool;
  return false;
#endif
}

}  // namespace amx_detail

// conv3d_forward's AMX path; true when it wrote the output, false when it does not apply.
inline bool conv3d_forward_amx(const ConvGeom& g, const float* in, const float* wp, const float* bias, float* out,
                               Act act, float alpha, ThreadPool& pool) {
#ifdef BHSD_AMX
  using namespace conv_detail;
  using namespace amx_detail;
  if (!applies(g)) return false;
  if (conv3d_forward_amx_implicit(g, in, wp, bias, out, act, alpha, pool)) return true;
  const Layout l = layout(g);
  std::shared_ptr<const wino_detail::WeightEntry> cached;
  std::unique_ptr<AmxWeightLease> lease;
  const std::uint16_t* U = weight_tiles(g, wp, pool, wino_detail::kDirectTiles, l.bytes(), cached, lease,
                                        [&](std::uint16_t* dst) { pack_weights(g, wp, l, dst, pool); });
  if (!U) return false;
  const std::int64_t ksp = g.kd * g.kh * g.kw;
  const std::int64_t plane_out = g.Ho * g.Wo, vol_out = g.Do * plane_out;
  // a task: up to kSegs segments — whole rows where they are that short, else a row's segments in
  // groups of kSegs (a 512-wide row is 32 segments)
  const std::int64_t segs_per_row = (g.Wo + NR - 1) / NR;
  const std::int64_t rows_per_task = std::max<std::int64_t>(1, kSegs / segs_per_row);
  const std::int64_t groups_per_row = (segs_per_row + kSegs - 1) / kSegs;
  const std::int64_t ahead = rows_per_task * g.sh * g.W;
  const std::int64_t rows = g.Do * g.Ho;
  // the direct path's packers, by its rule (PanelPlan)
  const PanelPlan pp(g, l.cb, true);
  const bool flat = pp.flat, rowwin = pp.rowwin, rowwin2 = pp.rowwin2;
  const std::int64_t RW = pp.RW, RW2 = pp.RW2;
  const std::vector<std::int32_t>& rdelta = pp.rdelta;
  const std::int64_t flat_segs = (vol_out + NR - 1) / NR;
  const std::int64_t seg_tasks = flat                 ? (flat_segs + kSegs - 1) / kSegs
                                 : groups_per_row > 1 ? rows * groups_per_row
                                                      : (rows + rows_per_task - 1) / rows_per_task;
  // output channels split where there are fewer tasks of segments than threads (the deep stages)
  const std::int64_t threads = std::int64_t(pool.size());
  const std::int64_t co_splits = seg_tasks >= threads
                                     ? 1
                                     : std::clamp<std::int64_t>((2 * threads + seg_tasks - 1) / seg_tasks, 1,
                                                                std::max<std::int64_t>(1, l.cob / 2));
  const std::int64_t tasks = seg_tasks * co_splits;
  const std::size_t chunk_words = std::size_t(l.chunks * kTileWords);

  pool.parallel_for(
      std::size_t(tasks),
      [&](std::size_t t0, std::size_t t1) {
        thread_local Scratch panel_mem, pairs_mem, sums_mem;
        float* panel = panel_mem.get(std::size_t(pp.seg_floats(l.cb)));
        auto* pairs = reinterpret_cast<std::uint16_t*>(pairs_mem.get(std::size_t(kSegs) * chunk_words / 2));
        float* sums = sums_mem.get(std::size_t(kSegs * l.cob * 256));
        Seg segs[kSegs];
        const Tiles tiles;
        for (std::size_t task = t0; task < t1; ++task) {
          const std::int64_t t = std::int64_t(task) / co_splits, split = std::int64_t(task) % co_splits;
          const std::int64_t o0 = split * l.cob / co_splits, o1 = (split + 1) * l.cob / co_splits;
          std::int64_t ns = 0;
          if (flat)
            for (std::int64_t q = t * kSegs; q < std::min(flat_segs, (t + 1) * kSegs); ++q)
              segs[ns++] = {0, 0, q * NR, std::min<std::int64_t>(NR, vol_out - q * NR)};
          else
            ns = row_segments(g, t, 0, rows, rows_per_task, segs);
          auto sum_at = [&](std::int64_t s, std::int64_t o) { return sums + (s * l.cob + o) * 256; };
          for (std::int64_t kb = 0; kb < l.kblocks; ++kb) {
            const std::int64_t c0 = kb * l.cb, c1 = std::min(g.C, c0 + l.cb), kbn = (c1 - c0) * ksp;
            for (std::int64_t s = 0; s < ns; ++s) {
              const Seg& sg = segs[s];
              std::uint16_t* dst = pairs + std::size_t(s) * chunk_words;
              if (flat) {
                pack_panel_flat_avx2(g, in, c0, c1, sg.ow0, sg.n, panel);
                to_pairs(PackedB{panel}, kbn, l.chunks, dst);
              } else if (rowwin || rowwin2) {
                if (rowwin)
                  pack_rows_avx2(g, in, c0, c1, sg.od, sg.oh, sg.ow0, RW, panel, ahead);
                else
                  pack_rows_s2_avx2(g, in, c0, c1, sg.od, sg.oh, sg.ow0, RW2, panel, ahead);
                to_pairs(IndirectB{panel, rdelta.data()}, kbn, l.chunks, dst);
              } else {
                pack_panel_avx2(g, in, c0, c1, sg.od, sg.oh, sg.ow0, sg.n, panel, ahead);
                to_pairs(PackedB{panel}, kbn, l.chunks, dst);
              }
            }
            block_products(U, l, kb, o0, o1, pairs, ns, sums, kb == 0);
          }
          for (std::int64_t s = 0; s < ns; ++s) {
            const Seg& sg = segs[s];
            float* o = out + (flat ? sg.ow0 : sg.od * plane_out + sg.oh * g.Wo + sg.ow0);
            for (std::int64_t ob = o0; ob < o1; ++ob)
              store_tile(sum_at(s, ob), 16 * ob, g.Co, bias, o, vol_out, sg.n, act, alpha);
          }
        }
      },
      1, 8);
  return true;
#else
  (void)g, (void)in, (void)wp, (void)bias, (void)out, (void)act, (void)alpha, (void)pool;
  return false;
#endif
}

// conv3d_forward's question after Winograd's (declared in conv_forward.hpp).
inline bool amx_hook(const ConvGeom& g, const float* in, const float* wp, const float* bias, float* out, Act act,
                     float alpha, ThreadPool& pool) {
  return conv3d_forward_amx(g, in, wp, bias, out, act, alpha, pool);
}

}  // namespace bhsd
