// bhsd — the direct convolution on AMX tiles (amx_tiles.hpp), for bf16 calls on processors that
// have them (Intel Sapphire Rapids and later). The only rounding beside fp32's is of the weights and
// the samples to bf16 (8 significant bits), as in the bf16 Winograd path, without Winograd's
// transforms to amplify it.
//
// The layout follows the direct path's (conv_forward.hpp): a task takes up to 8 output segments of
// 16 voxels (row segments, or flat ones across rows shorter than 16), packs each one's panel of
// input samples per block of input channels with the same packers (row windows at stride 1 and 2,
// flat segments, per-tap gathers), turns it into bf16 pairs, and runs 2 × 2 tiles (two blocks of
// 16 output channels × two segments) over the block's 32-row chunks. The sums stay in a per-task
// fp32 buffer across blocks; bias and the activation are applied when the last block's are stored
// (masked: partial segments and the padding of the last 16 channels are never written).
// The weights (bf16 tiles, zero-padded to 16 output channels and to whole chunks per block) come
// from the Winograd weight cache (WeightCache::get_as), found by content like Winograd's. Where the
// call is fp32, or AMX is not at hand, this path does not apply and the AVX-512 direct path runs.
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
#endif

// The process's buffer for a layer's weight tiles where the cache will not hold them.
using AmxWeightLease = conv_detail::LentBuffer<struct AmxWeightTag>;

}  // namespace amx_detail

// conv3d_forward's AMX path; true when it wrote the output, false when it does not apply.
inline bool conv3d_forward_amx(const ConvGeom& g, const float* in, const float* wp, const float* bias, float* out,
                               Act act, float alpha, ThreadPool& pool) {
#ifdef BHSD_AMX
  using namespace conv_detail;
  using namespace amx_detail;
  if (!applies(g)) return false;
  const Layout l = layout(g);
  const std::size_t wbytes = l.bytes();
  std::shared_ptr<const wino_detail::WeightEntry> cached = wino_detail::WeightCache::instance().get_as(
      g, wp, pool, 0, true, wino_detail::kDirectTiles, wbytes,
      [&](void* U) { pack_weights(g, wp, l, static_cast<std::uint16_t*>(U), pool); });
  std::unique_ptr<AmxWeightLease> lease;
  const std::uint16_t* U = nullptr;
  if (cached) {
    U = static_cast<const std::uint16_t*>(cached->U());
  } else {
    lease.reset(new AmxWeightLease((wbytes + 3) / 4, (std::size_t(32) << 20) / sizeof(float)));
    if (!lease->get()) return false;
    pack_weights(g, wp, l, reinterpret_cast<std::uint16_t*>(lease->get()), pool);
    U = reinterpret_cast<const std::uint16_t*>(lease->get());
  }
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
        float* panel = panel_mem.get(std::size_t(l.cb * ksp * NR));
        auto* pairs = reinterpret_cast<std::uint16_t*>(pairs_mem.get(std::size_t(kSegs) * chunk_words / 2));
        float* sums = sums_mem.get(std::size_t(kSegs * l.cob * 256));
        struct Seg {
          std::int64_t od, oh, ow0, n;
        };
        Seg segs[kSegs];
        const Tiles tiles;
        for (std::size_t task = t0; task < t1; ++task) {
          const std::int64_t t = std::int64_t(task) / co_splits, split = std::int64_t(task) % co_splits;
          const std::int64_t o0 = split * l.cob / co_splits, o1 = (split + 1) * l.cob / co_splits;
          std::int64_t ns = 0;
          if (flat)
            for (std::int64_t q = t * kSegs; q < std::min(flat_segs, (t + 1) * kSegs); ++q)
              segs[ns++] = {0, 0, q * NR, std::min<std::int64_t>(NR, vol_out - q * NR)};
          else if (groups_per_row > 1)
            for (std::int64_t r = t / groups_per_row, s = t % groups_per_row * kSegs;
                 s < std::min(segs_per_row, (t % groups_per_row + 1) * kSegs); ++s)
              segs[ns++] = {r / g.Ho, r % g.Ho, s * NR, std::min<std::int64_t>(NR, g.Wo - s * NR)};
          else
            for (std::int64_t r = t * rows_per_task; r < std::min(rows, (t + 1) * rows_per_task); ++r)
              for (std::int64_t s = 0; s < segs_per_row; ++s)
                segs[ns++] = {r / g.Ho, r % g.Ho, s * NR, std::min<std::int64_t>(NR, g.Wo - s * NR)};
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
            const bool first = kb == 0;
            for (std::int64_t o = o0; o < o1; o += 2) {
              const std::uint16_t* a0 = U + std::size_t(o * l.kblocks + kb) * chunk_words;
              const std::uint16_t* a1 = a0 + std::size_t(l.kblocks) * chunk_words;
              const bool two_a = o + 1 < o1;
              for (std::int64_t s = 0; s < ns; s += 2) {
                const std::uint16_t* b0 = pairs + std::size_t(s) * chunk_words;
                const std::uint16_t* b1 = b0 + chunk_words;
                float *s00 = sum_at(s, o), *s10 = sum_at(s, o + 1), *s01 = sum_at(s + 1, o),
                      *s11 = sum_at(s + 1, o + 1);
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
