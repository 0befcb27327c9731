// bhsd — fused multi-head self-attention, as a transformer's attention block computes it from its
// qkv projection (MONAI's SABlock and SwinUNETR's WindowAttention, and their ONNX exports):
//
//   qkv [batch, n, 3, heads, hd] (the Linear layer's output, contiguous)
//   [q and k rotated by a rotary position embedding, where `rope` is given: channel t of token j's
//    head becomes x[t] · cos[j][t] + x[t ^ 1] · sin[j][t] (pairs of channels, the sign in sin), the
//    table shared by every head — timm's EVA as nnU-Net's Primus uses it]
//   s = q·kᵀ (q first multiplied by `scale` where scale_q, else the products afterwards)
//   s += extra[e] for each additive term in order (relative position bias, a shifted window's mask)
//   out [batch, n, heads, hd] = softmax(s over the keys) · v
//
// One task is one (batch item, head) pair's block of query rows: its keys are packed transposed
// (kᵀ [hd, n], rows padded to whole vectors with zeros) and its values row by row ([n, hd], padded),
// then for R rows at a time the scores (R × n, in L1), their softmax and the weighted sum of the
// values (a few last columns past whole vectors as dot products along the keys, from those columns
// of the values transposed: their sums then go lane by lane, then across the lanes). Nothing of
// size n × n leaves the cache: the unfused graph wrote each score array, its sums with the bias and
// mask, and its softmax to memory (SwinUNETR at 96³: 0.5 GB a block).
//
// The kernel is written once with the compiler's vector types and compiled three times: for
// AVX-512 (16 lanes), AVX2 + FMA (two 8-lane halves of each vector) and the default target (NEON on
// arm64, SSE2 elsewhere). The exponential is Cephes' expf (a degree-6 polynomial after a two-part
// ln 2 reduction, within 2 ulp); exponents below −87.3 give 0, a NaN stays NaN (a row with a NaN, or
// all −∞, comes out NaN, as torch.softmax gives it). Sums are in float, in key order per lane.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "cpu_features.hpp"
#include "thread_pool.hpp"
#include "vector_math.hpp"

#if defined(__x86_64__) || defined(__i386__)
#define BHSD_X86 1  // (as conv_common.hpp defines it)
#endif

namespace bhsd {

// An additive term of the scores: item (b, h)'s n × n block at data + offsets[b·heads + h]; its row
// i at row_stride · i (0: one row for every query, e.g. a key mask). An offset of −1: the block is
// all zeros, skipped (adding +0 changes no softmax: SwinUNETR's mask is zero in most windows).
struct AttentionExtra {
  const float* data;
  const std::int64_t* offsets;
  std::int64_t row_stride;
};

struct AttentionShape {
  std::int64_t batch, n, heads, hd;
  float scale;
  bool scale_q;
  // [n, 2 · hd]: token j's cos (hd values) then sin (hd, with the rotation's sign); null: none
  const float* rope = nullptr;
  // the packed keys and values (bytes) up to which a task takes all the keys as one tile (past it,
  // tiles of 256 keys: see item_rows); −1: the default, 768 KiB (measured on an Ice Lake Xeon, 1.25 MiB of L2 a core:
  // 1024 tokens of width 66, 598 KiB, ran 6–8 % faster whole, 2048 faster in tiles)
  std::int64_t tile_bytes = -1;
};

namespace attention_detail {

// The compiler's vector types: W lanes (AVX-512 16, AVX2 8, the default target 4).
using vector_math::Vec;

// (No function takes or returns a vector by value: that would change the call ABI between targets.)
#define BHSD_VLOAD(p) (*reinterpret_cast<const typename Vec<W>::fu*>(p))
#define BHSD_VSTORE(p, v) (*reinterpret_cast<typename Vec<W>::fu*>(p) = (v))

// A float buffer whose data starts on a 64-byte line: every whole-vector load of the packed keys,
// values and scores then reads one cache line, not two (std::vector's 16-byte alignment had split
// each AVX-512 load in two).
struct Aligned {
  std::vector<float> raw;
  float* get(std::size_t n) {
    raw.resize(n + 16);
    const auto p = reinterpret_cast<std::uintptr_t>(raw.data());
    return reinterpret_cast<float*>((p + 63) & ~std::uintptr_t(63));
  }
  float* zeros(std::size_t n) {
    float* d = get(n);
    std::fill(d, d + n, 0.0f);
    return d;
  }
};

// Scratch of one task, reused across its items.
struct Scratch {
  Aligned kt, v, vt, s, q, o, d;
};

// Rows [r0, r1) of item (b, h), in groups of RS = M·R rows that pass over the keys together, TK keys
// a tile (flash attention's loop): each tile's packed keys and values are read once per group, not
// once per R rows (from n ≈ 2048 a head's packed keys and values no longer fit in L2 beside each
// other, and reading them again for every R rows had held the kernel to a quarter of the FMA
// peak). Per tile: the group's scores, R rows and two column vectors at a time (2R accumulators),
// into s (RS × TK, in L1); then per row the online softmax — the running maximum m, the tile's
// exponentials of the scores less m, the running sum l, and the factor e^(m_old − m) by which what
// the row has summed so far is rescaled; then the tile's weighted sum of the values into the
// group's accumulators (two output vectors at a time), and the last columns past whole vectors as
// dot products along the keys. out = the accumulators / l.
template <int W, int R>
__attribute__((always_inline)) inline void item_rows(const float* qkv, float* out, const AttentionShape& sh,
                                                     const AttentionExtra* extras, int n_extras, std::int64_t b,
                                                     std::int64_t h, std::int64_t r0, std::int64_t r1, Scratch& sc) {
  using vf = typename Vec<W>::f;
  using vi = typename Vec<W>::i;
  constexpr float inf = std::numeric_limits<float>::infinity();
  const std::int64_t n = sh.n, hd = sh.hd, H = sh.heads;
  const std::int64_t np = (n + W - 1) / W * W, hp = (hd + W - 1) / W * W;
  // Where the packed keys and values fit in L2 together, one tile of every key and one group of R
  // rows (the computation before tiles: the same floats); else tiles of kTile keys (whole blocks of
  // 2W) for groups of kGroups · R rows.
  constexpr int kGroups = 4;
  constexpr std::int64_t kTile = 256;
  static_assert(kTile % (2 * W) == 0, "a tile is whole blocks of 2W keys");
  const bool whole = n * (hd + hp) * std::int64_t(sizeof(float)) <= (sh.tile_bytes < 0 ? 768 << 10 : sh.tile_bytes);
  const std::int64_t TK = whole ? np : kTile;
  const int RS = whole ? R : kGroups * R;
  const std::int64_t row = 3 * H * hd;  // one token's q, k and v
  const float* base = qkv + b * n * row + h * hd;
  // Where hd leaves a few columns past whole vectors (rem ≤ W/2: Primus-S's 66 = 4 · 16 + 2), the
  // weighted sum takes those columns as dot products along the keys, from the values' last columns
  // transposed (vt, rows padded to an even count): a vector block for them had cost more than half
  // of a whole one for a few useful lanes.
  const std::int64_t rem = hd % W, tail = rem != 0 && 2 * rem <= W ? rem : 0, tp = (tail + 1) / 2 * 2;
  const std::int64_t hv = tail ? hd - tail : hp;  // the columns the vector blocks cover
  float* kt = sc.kt.zeros(std::size_t(hd * np));
  float* vp = sc.v.zeros(std::size_t(n * hp));
  float* vt = tail ? sc.vt.zeros(std::size_t(tp * np)) : nullptr;
  float* const s = sc.s.get(std::size_t(RS * TK));
  float* const q = sc.q.get(std::size_t(RS * hd));
  float* const o = sc.o.get(std::size_t(RS * hv));      // row r's vector columns at r · hv
  float* const d = sc.d.get(std::size_t(RS * tp * W));  // row r's last column c's lanes at (r · tp + c) · W
  float m_run[kGroups * R], l_run[kGroups * R], alpha[kGroups * R];
  bool nan_row[kGroups * R];
  // kᵀ in blocks of 2W keys (the last W wide where np is an odd number of vectors), each block's hd
  // rows together: the score loop then reads one contiguous run per block, where rows np apart (a
  // page each at n = 1024) had left every load to the L2's latency, no prefetcher following
  for (std::int64_t j = 0; j < n; ++j) {
    const float* k = base + j * row + H * hd;
    const std::int64_t blk = j / (2 * W), bw = blk * 2 * W + 2 * W <= np ? 2 * W : W;
    float* dst = kt + blk * 2 * W * hd + (j - blk * 2 * W);
    if (sh.rope) {
      const float *c = sh.rope + j * 2 * hd, *si = c + hd;
      for (std::int64_t t = 0; t < hd; ++t) dst[t * bw] = k[t] * c[t] + k[t ^ 1] * si[t];
    } else
      for (std::int64_t t = 0; t < hd; ++t) dst[t * bw] = k[t];
    std::memcpy(vp + j * hp, k + H * hd, std::size_t(hd) * sizeof(float));
    for (std::int64_t c = 0; c < tail; ++c) vt[c * np + j] = k[H * hd + hv + c];
  }
  const std::int64_t eb = b * H + h;
  for (std::int64_t i0 = r0; i0 < r1; i0 += RS) {
    const int rows = int(std::min<std::int64_t>(RS, r1 - i0));
    const int groups = (rows + R - 1) / R, rr = groups * R;  // (the last group's rows past `rows` repeat its last)
    for (int r = 0; r < rr; ++r) {
      const std::int64_t i = i0 + std::min(r, rows - 1);
      const float* src = base + i * row;
      if (sh.rope) {
        const float *c = sh.rope + i * 2 * hd, *si = c + hd;
        for (std::int64_t t = 0; t < hd; ++t) {
          const float x = src[t] * c[t] + src[t ^ 1] * si[t];
          q[r * hd + t] = sh.scale_q ? x * sh.scale : x;
        }
      } else
        for (std::int64_t t = 0; t < hd; ++t) q[r * hd + t] = sh.scale_q ? src[t] * sh.scale : src[t];
      m_run[r] = -inf, l_run[r] = 0, alpha[r] = 1, nan_row[r] = false;
    }
    std::fill(o, o + rr * hv, 0.0f);
    std::fill(d, d + rr * tp * W, 0.0f);
    for (std::int64_t j0 = 0; j0 < np; j0 += TK) {
      // the tile: tk columns of whole vectors, the first nv of them keys (j0 < np, so j0 < n)
      const std::int64_t tk = std::min<std::int64_t>(TK, np - j0), nv = std::min<std::int64_t>(TK, n - j0);
      std::int64_t j = j0;
      for (; j + 2 * W <= j0 + tk; j += 2 * W) {
        const float* kb = kt + j * hd;  // (block j / 2W, 2W columns a row)
        for (int g = 0; g < groups; ++g) {
          const float* qg = q + g * R * hd;
          vf a0[R], a1[R];
          for (int r = 0; r < R; ++r) a0[r] = a1[r] = vf{};
          for (std::int64_t t = 0; t < hd; ++t) {
            const vf k0 = BHSD_VLOAD(kb + t * 2 * W), k1 = BHSD_VLOAD(kb + t * 2 * W + W);
            for (int r = 0; r < R; ++r) {
              const float qv = qg[r * hd + t];
              a0[r] += qv * k0;
              a1[r] += qv * k1;
            }
          }
          float* sg = s + g * R * TK + (j - j0);
          for (int r = 0; r < R; ++r) BHSD_VSTORE(sg + r * TK, a0[r]), BHSD_VSTORE(sg + r * TK + W, a1[r]);
        }
      }
      if (j < j0 + tk) {
        const float* kb = kt + j * hd;  // (the last block, W columns a row)
        for (int g = 0; g < groups; ++g) {
          const float* qg = q + g * R * hd;
          vf a0[R];
          for (int r = 0; r < R; ++r) a0[r] = vf{};
          for (std::int64_t t = 0; t < hd; ++t) {
            const vf k0 = BHSD_VLOAD(kb + t * W);
            for (int r = 0; r < R; ++r) a0[r] += qg[r * hd + t] * k0;
          }
          float* sg = s + g * R * TK + (j - j0);
          for (int r = 0; r < R; ++r) BHSD_VSTORE(sg + r * TK, a0[r]);
        }
      }
      // scale, the additive terms, and the online softmax, row by row
      for (int r = 0; r < rows; ++r) {
        float* sr = s + r * TK;
        const std::int64_t i = i0 + r;
        if (!sh.scale_q)
          for (std::int64_t c = 0; c < nv; ++c) sr[c] *= sh.scale;
        for (int e = 0; e < n_extras; ++e) {
          if (extras[e].offsets[eb] < 0) continue;  // a block of zeros
          const float* add = extras[e].data + extras[e].offsets[eb] + i * extras[e].row_stride + j0;
          for (std::int64_t c = 0; c < nv; ++c) sr[c] += add[c];
        }
        for (std::int64_t c = nv; c < tk; ++c) sr[c] = -inf;
        vf mv = vf{} - inf;
        vi seen_nan = vi{};
        for (std::int64_t c = 0; c < tk; c += W) {
          const vf x = BHSD_VLOAD(sr + c);
          seen_nan |= x != x;
          mv = x > mv ? x : mv;
        }
        float m = m_run[r];
        for (int l = 0; l < W; ++l) m = std::max(m, mv[l]), nan_row[r] = nan_row[r] || seen_nan[l] != 0;
        if (m == -inf) {  // every key so far masked out: nothing to add
          std::fill(sr, sr + tk, 0.0f);
          alpha[r] = 1;
          continue;
        }
        alpha[r] = m_run[r] == -inf ? 0.0f : std::exp(m_run[r] - m);
        m_run[r] = m;
        vf sv = vf{};
        for (std::int64_t c = 0; c < tk; c += W) {
          vf e = BHSD_VLOAD(sr + c) - m;
          vector_math::exp_nonpositive<W>(e);
          BHSD_VSTORE(sr + c, e);
          sv += e;
        }
        float sum = 0;
        for (int l = 0; l < W; ++l) sum += sv[l];
        l_run[r] = l_run[r] * alpha[r] + sum;
      }
      for (int r = rows; r < rr; ++r) std::fill(s + r * TK, s + r * TK + tk, 0.0f);
      // the tile's values weighted into the accumulators, rescaled first
      for (std::int64_t c0 = 0; c0 < hv; c0 += 2 * W) {
        const bool two = c0 + W < hv;
        for (int g = 0; g < groups; ++g) {
          const float* sg = s + g * R * TK;
          float* og = o + g * R * hv + c0;
          vf o0[R], o1[R];
          for (int r = 0; r < R; ++r) {
            o0[r] = BHSD_VLOAD(og + r * hv) * alpha[g * R + r];
            o1[r] = two ? BHSD_VLOAD(og + r * hv + W) * alpha[g * R + r] : vf{};
          }
          if (two) {
            for (std::int64_t k = 0; k < nv; ++k) {
              const vf v0 = BHSD_VLOAD(vp + (j0 + k) * hp + c0), v1 = BHSD_VLOAD(vp + (j0 + k) * hp + c0 + W);
              for (int r = 0; r < R; ++r) {
                const float p = sg[r * TK + k];
                o0[r] += p * v0;
                o1[r] += p * v1;
              }
            }
          } else {
            for (std::int64_t k = 0; k < nv; ++k) {
              const vf v0 = BHSD_VLOAD(vp + (j0 + k) * hp + c0);
              for (int r = 0; r < R; ++r) o0[r] += sg[r * TK + k] * v0;
            }
          }
          for (int r = 0; r < R; ++r) {
            BHSD_VSTORE(og + r * hv, o0[r]);
            if (two) BHSD_VSTORE(og + r * hv + W, o1[r]);
          }
        }
      }
      // the last columns, two at a time: each row's weights (zero past n) dotted with a column of vt
      for (std::int64_t c = 0; c < tail; c += 2) {
        const float *x0 = vt + c * np + j0, *x1 = x0 + np;
        for (int g = 0; g < groups; ++g) {
          const float* sg = s + g * R * TK;
          float* dg = d + (g * R * tp + c) * W;
          vf d0[R], d1[R];
          for (int r = 0; r < R; ++r) {
            d0[r] = BHSD_VLOAD(dg + r * tp * W) * alpha[g * R + r];
            d1[r] = BHSD_VLOAD(dg + r * tp * W + W) * alpha[g * R + r];
          }
          for (std::int64_t k = 0; k < tk; k += W) {
            const vf v0 = BHSD_VLOAD(x0 + k), v1 = BHSD_VLOAD(x1 + k);
            for (int r = 0; r < R; ++r) {
              const vf p = BHSD_VLOAD(sg + r * TK + k);
              d0[r] += p * v0;
              d1[r] += p * v1;
            }
          }
          for (int r = 0; r < R; ++r) BHSD_VSTORE(dg + r * tp * W, d0[r]), BHSD_VSTORE(dg + r * tp * W + W, d1[r]);
        }
      }
    }
    // out = o / l (a row with a NaN, or all −∞ — nothing summed — NaN)
    for (int r = 0; r < rows; ++r) {
      const float inv = nan_row[r] || !(l_run[r] > 0) ? std::numeric_limits<float>::quiet_NaN() : 1.0f / l_run[r];
      float* dst = out + ((b * n + i0 + r) * H + h) * hd;
      alignas(64) float tmp[W];
      for (std::int64_t c0 = 0; c0 < hv; c0 += W) {
        BHSD_VSTORE(tmp, BHSD_VLOAD(o + r * hv + c0) * inv);
        std::memcpy(dst + c0, tmp, std::size_t(std::min<std::int64_t>(W, hd - c0)) * sizeof(float));
      }
      for (std::int64_t c = 0; c < tail; ++c) {
        const float* lanes = d + (r * tp + c) * W;
        float t0 = 0;
        for (int l = 0; l < W; ++l) t0 += lanes[l];
        dst[hv + c] = t0 * inv;
      }
    }
  }
}
#undef BHSD_VLOAD
#undef BHSD_VSTORE

// A task: item t / chunks, its rows in the (t % chunks)-th block of `per`.
template <int W, int R>
__attribute__((always_inline)) inline void tasks(const float* qkv, float* out, const AttentionShape& sh,
                                                 const AttentionExtra* extras, int n_extras, std::int64_t per,
                                                 std::int64_t chunks, std::size_t lo, std::size_t hi) {
  Scratch sc;
  for (std::size_t t = lo; t < hi; ++t) {
    const std::int64_t item = std::int64_t(t) / chunks, c = std::int64_t(t) % chunks;
    const std::int64_t r0 = c * per, r1 = std::min(sh.n, r0 + per);
    if (r0 < r1) item_rows<W, R>(qkv, out, sh, extras, n_extras, item / sh.heads, item % sh.heads, r0, r1, sc);
  }
}

#ifdef BHSD_X86
// 24 and 12 accumulators of the 32 and 16 registers (AVX-512: 12 rows, not 8 — at 4096 tokens of
// width 66 in tiles, 92–95 → 97–101 GFLOP/s on one Ice Lake core; 1024 whole, no change)
__attribute__((target("avx512f"))) inline void tasks_avx512(const float* qkv, float* out, const AttentionShape& sh,
                                                            const AttentionExtra* extras, int n_extras,
                                                            std::int64_t per, std::int64_t chunks, std::size_t lo,
                                                            std::size_t hi) {
  tasks<16, 12>(qkv, out, sh, extras, n_extras, per, chunks, lo, hi);
}
__attribute__((target("avx2,fma"))) inline void tasks_avx2(const float* qkv, float* out, const AttentionShape& sh,
                                                           const AttentionExtra* extras, int n_extras, std::int64_t per,
                                                           std::int64_t chunks, std::size_t lo, std::size_t hi) {
  tasks<8, 6>(qkv, out, sh, extras, n_extras, per, chunks, lo, hi);
}
#endif
inline void tasks_generic(const float* qkv, float* out, const AttentionShape& sh, const AttentionExtra* extras,
                          int n_extras, std::int64_t per, std::int64_t chunks, std::size_t lo, std::size_t hi) {
  tasks<4, 6>(qkv, out, sh, extras, n_extras, per, chunks, lo, hi);
}

}  // namespace attention_detail
#undef BHSD_VLOAD
#undef BHSD_VSTORE

// Which kernel attention() runs here: "avx512", "avx2" or "generic" (cpu_features.hpp).
inline const char* attention_kernel_name() { return vector_kernel_name(); }

// out [batch, n, heads, hd] from qkv [batch, n, 3, heads, hd] (see the top of this file). extras:
// n_extras additive terms, each offset table holding batch · heads entries. The caller has checked
// every offset against its array.
inline void attention(const float* qkv, float* out, const AttentionShape& sh, const AttentionExtra* extras,
                      int n_extras, ThreadPool& pool) {
  using namespace attention_detail;
  if (sh.batch <= 0 || sh.n <= 0 || sh.heads <= 0 || sh.hd <= 0) return;
  const std::int64_t items = sh.batch * sh.heads;
  const std::int64_t threads = std::int64_t(pool.size());
  // rows split where there are too few items for about four tasks a thread (UNETR: 12 heads)
  const std::int64_t split = std::clamp<std::int64_t>((4 * threads + items - 1) / items, 1, (sh.n + 7) / 8);
  const std::int64_t per = (sh.n + split - 1) / split;
  const std::int64_t chunks = (sh.n + per - 1) / per;
  static const std::string which = attention_kernel_name();
  pool.parallel_for(
      std::size_t(items * chunks),
      [&](std::size_t lo, std::size_t hi) {
#ifdef BHSD_X86
        if (which == "avx512") return tasks_avx512(qkv, out, sh, extras, n_extras, per, chunks, lo, hi);
        if (which == "avx2") return tasks_avx2(qkv, out, sh, extras, n_extras, per, chunks, lo, hi);
#endif
        tasks_generic(qkv, out, sh, extras, n_extras, per, chunks, lo, hi);
      },
      1, 4);
}

}  // namespace bhsd
