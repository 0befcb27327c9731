// bhsd — transposed 3D convolution (weight [C, Co, kd, kh, kw]): the fused AVX2 upsampling where the
// kernel equals the stride, else 1×1×1 convolutions per kernel offset scattered into the output.
// Part of conv.hpp.
#pragma once

#include "conv_forward.hpp"

namespace bhsd {

#ifdef BHSD_X86
// A transposed convolution whose kernel equals its stride (no padding or dilation: a U-Net's
// upsampling), fused: each task takes a run of L input voxels, computes the 1×1×1 GEMM to Co·taps
// rows (o·taps + tap) for them into a buffer that stays in L2, and spreads each row into its
// strided places in the output — no volume-sized temporary written and read back (a 64→32
// (1, 2, 2) upsampling to 16×256×256 spent 170 ms that way, most of it memory traffic). wp:
// pack_conv_weights of the [Co·taps, C] matrix; bt: each row's bias. False where it does not apply.
__attribute__((target("avx2,fma"))) inline void spread_pair_avx2(const float* s0, const float* s1, std::int64_t m,
                                                                 float* d) {
  std::int64_t i = 0;
  for (; i + 8 <= m; i += 8) {  // d[2i] = s0[i], d[2i + 1] = s1[i]
    const __m256 x0 = _mm256_loadu_ps(s0 + i), x1 = _mm256_loadu_ps(s1 + i);
    const __m256 lo = _mm256_unpacklo_ps(x0, x1), hi = _mm256_unpackhi_ps(x0, x1);
    _mm256_storeu_ps(d + 2 * i, _mm256_permute2f128_ps(lo, hi, 0x20));
    _mm256_storeu_ps(d + 2 * i + 8, _mm256_permute2f128_ps(lo, hi, 0x31));
  }
  for (; i < m; ++i) d[2 * i] = s0[i], d[2 * i + 1] = s1[i];
}

// One task's spread: row o·taps + (a·sh + b)·sw + c of input voxel v0 + i, at buf[row·L + i], into
// out[o, id·sd + a, ih·sh + b, iw·sw + c] for the voxels v = (id·H + ih)·W + iw in [v0, v1).
__attribute__((target("avx2,fma"))) inline void upsample_spread(const float* buf, std::int64_t L, std::int64_t v0,
                                                                std::int64_t v1, std::int64_t D, std::int64_t H,
                                                                std::int64_t W, std::int64_t Co, std::int64_t sd,
                                                                std::int64_t sh, std::int64_t sw, float* out) {
  const std::int64_t ksp = sd * sh * sw, Ho = H * sh, Wo = W * sw, vol_out = D * sd * Ho * Wo;
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

// Voxels per task of the fused upsampling: a multiple of 16, the task's Cp rows within about 256 KB.
inline std::int64_t upsample_run(std::int64_t Cp) {
  return std::clamp<std::int64_t>((std::int64_t(64) << 10) / Cp / NR * NR, NR, 256);
}

__attribute__((target("avx2,fma"))) inline bool conv_transpose_upsample_avx2(
    std::int64_t C, std::int64_t D, std::int64_t H, std::int64_t W, std::int64_t Co, std::int64_t sd, std::int64_t sh,
    std::int64_t sw, const float* in, const float* wp, const float* bt, float* out, ThreadPool& pool) {
  using namespace conv_detail;
  const std::int64_t ksp = sd * sh * sw, Cp = Co * ksp, V = D * H * W, K = C;
  if (K * V + NR >= (std::int64_t(1) << 31)) return false;
  const CoBlocks cbk(Cp);
  const std::int64_t L = upsample_run(Cp);
  const InPlaceInput src(in, K, V);
  const std::int64_t tasks = (V + L - 1) / L;
  pool.parallel_for(
      std::size_t(tasks),
      [&](std::size_t t0, std::size_t t1) {
        thread_local Scratch buf_mem;
        float* buf = buf_mem.get(std::size_t(Cp * L));
        for (std::size_t t = t0; t < t1; ++t) {
          const std::int64_t v0 = std::int64_t(t) * L, v1 = std::min(V, v0 + L);
          pointwise_run_avx2(src, wp, K, cbk, bt, v0, v1, buf, L, Act::none, 0.0f);
          upsample_spread(buf, L, v0, v1, D, H, W, Co, sd, sh, sw, out);
        }
      },
      1, 8);
  return true;
}

#ifdef BHSD_AMX
// The same with its 1×1×1 GEMM on AMX tiles, for a bf16 call where the processor has them (the
// direct convolution's applies(): 16 to 2048 rows, 32 channels or more): per task, each 16-voxel
// segment's samples become bf16 pair tiles (conv_amx.hpp's to_pairs, per block of about 512
// channels), 2 × 2 tiles of 16 rows × 16 voxels sum them in fp32, and the sums go to the task's
// rows with the bias before the spread. The weights are the panel form's tiles of the [Cp, C]
// matrix, cached by content. The last segment of the volume reads a zero-padded copy of its samples.
inline bool conv_transpose_upsample_amx(std::int64_t C, std::int64_t D, std::int64_t H, std::int64_t W, std::int64_t Co,
                                        std::int64_t sd, std::int64_t sh, std::int64_t sw, const float* in,
                                        const float* wp, const float* bt, float* out, ThreadPool& pool) {
  using namespace conv_detail;
  using namespace amx_detail;
  const std::int64_t ksp = sd * sh * sw, Cp = Co * ksp, V = D * H * W;
  const ConvGeom g1{C, D, H, W, Cp, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, D, H, W};
  if (!applies(g1)) return false;
  const Layout l = layout(g1);
  std::shared_ptr<const wino_detail::WeightEntry> cached;
  std::unique_ptr<AmxWeightLease> lease;
  const std::uint16_t* U = weight_tiles(g1, wp, pool, wino_detail::kDirectTiles, l.bytes(), cached, lease,
                                        [&](std::uint16_t* dst) { pack_weights(g1, wp, l, dst, pool); });
  if (!U) return false;
  const std::int64_t L = upsample_run(Cp), segs = L / 16;
  const std::int64_t tasks = (V + L - 1) / L;
  const std::size_t chunk_words = std::size_t(l.chunks * kTileWords);
  struct Rows {  // row k's 16 samples at p + k·stride
    const float* p;
    std::int64_t stride;
    const float* at(std::int64_t k) const { return p + k * stride; }
  };
  pool.parallel_for(
      std::size_t(tasks),
      [&](std::size_t t0, std::size_t t1) {
        thread_local Scratch buf_mem, pairs_mem, sums_mem, tail_mem;
        float* buf = buf_mem.get(std::size_t(Cp * L));
        auto* pairs = reinterpret_cast<std::uint16_t*>(pairs_mem.get(std::size_t(segs) * chunk_words / 2));
        float* sums = sums_mem.get(std::size_t(segs * l.cob * 256));
        float* tail = tail_mem.get(std::size_t(l.cb * 16));
        const Tiles tiles;
        auto sum_at = [&](std::int64_t s, std::int64_t o) { return sums + (s * l.cob + o) * 256; };
        for (std::size_t t = t0; t < t1; ++t) {
          const std::int64_t v0 = std::int64_t(t) * L, v1 = std::min(V, v0 + L), ns = (v1 - v0 + 15) / 16;
          for (std::int64_t kb = 0; kb < l.kblocks; ++kb) {
            const std::int64_t c0 = kb * l.cb, c1 = std::min(C, c0 + l.cb), kbn = c1 - c0;
            for (std::int64_t s = 0; s < ns; ++s) {
              const std::int64_t v = v0 + 16 * s;
              std::uint16_t* dst = pairs + std::size_t(s) * chunk_words;
              if (v + 16 <= V) {
                to_pairs(Rows{in + c0 * V + v, V}, kbn, l.chunks, dst);
              } else {  // the volume's last samples: a zero-padded copy (16 past them is past the input)
                for (std::int64_t k = 0; k < kbn; ++k)
                  for (std::int64_t j = 0; j < 16; ++j) tail[k * 16 + j] = v + j < V ? in[(c0 + k) * V + v + j] : 0.0f;
                to_pairs(Rows{tail, 16}, kbn, l.chunks, dst);
              }
            }
            block_products(U, l, kb, 0, l.cob, pairs, ns, sums, kb == 0);
          }
          for (std::int64_t s = 0; s < ns; ++s)
            for (std::int64_t o = 0; o < l.cob; ++o)
              store_tile(sum_at(s, o), 16 * o, Cp, bt, buf + 16 * s, L, std::min<std::int64_t>(16, v1 - v0 - 16 * s),
                         Act::none, 0.0f);
          upsample_spread(buf, L, v0, v1, D, H, W, Co, sd, sh, sw, out);
        }
      },
      1, 8);
  return true;
}
#endif
#endif

// A depthwise transposed convolution (a group a channel, one input and one output channel each:
// MedNeXt's up-sampling), undilated, one batch item: in [C, D, H, W], weight [C, 1, kd, kh, kw] →
// out [C, Do, Ho, Wo]. Each output row starts at the bias and gathers the taps whose parity reaches
// it, from its own channel's input rows. (Run as C one-channel convolutions, each split into stride
// phases with a temporary, MedNeXt-S's 64-channel 3×3×3 stride-2 up-sampling to 32×128×128 took
// 134 ms.)
inline void conv_transpose3d_depthwise(std::int64_t C, std::int64_t D, std::int64_t H, std::int64_t W, std::int64_t kd,
                                       std::int64_t kh, std::int64_t kw, std::int64_t sd, std::int64_t sh,
                                       std::int64_t sw, std::int64_t pd, std::int64_t ph, std::int64_t pw,
                                       std::int64_t Do, std::int64_t Ho, std::int64_t Wo, const float* in,
                                       const float* w, const float* bias, float* out, ThreadPool& pool) {
  pool.parallel_for(std::size_t(C * Do), [&](std::size_t lo, std::size_t hi) {
    for (std::size_t q = lo; q < hi; ++q) {
      const std::int64_t c = std::int64_t(q) / Do, od = std::int64_t(q) % Do;
      const float* wc = w + c * kd * kh * kw;
      const float b0 = bias ? bias[c] : 0.0f;
      for (std::int64_t oh = 0; oh < Ho; ++oh) {
        float* dst = out + ((c * Do + od) * Ho + oh) * Wo;
        for (std::int64_t ow = 0; ow < Wo; ++ow) dst[ow] = b0;
        for (std::int64_t a = 0; a < kd; ++a) {
          const std::int64_t td = od + pd - a;  // = id · sd
          if (td < 0 || td % sd || td / sd >= D) continue;
          for (std::int64_t b = 0; b < kh; ++b) {
            const std::int64_t th = oh + ph - b;
            if (th < 0 || th % sh || th / sh >= H) continue;
            const float* src = in + ((c * D + td / sd) * H + th / sh) * W;
            for (std::int64_t e = 0; e < kw; ++e) {
              // ow = iw · sw + off for the iw whose ow lies in [0, Wo)
              const std::int64_t off = e - pw;
              if (Wo - 1 - off < 0) continue;
              const std::int64_t iw0 = off >= 0 ? 0 : (-off + sw - 1) / sw, iw1 = std::min(W, (Wo - 1 - off) / sw + 1);
              const float wv = wc[(a * kh + b) * kw + e];
              for (std::int64_t iw = iw0; iw < iw1; ++iw) dst[iw * sw + off] += wv * src[iw];
            }
          }
        }
      }
    }
  });
}

// Transposed convolution, one batch item and one group: in [C, D, H, W], weight [C, Co, kd, kh, kw]
// → out [Co, Do, Ho, Wo] (already sized with output padding). For each kernel offset, a 1×1×1
// convolution of the input by that offset's Co×C weights, scattered into the output.
inline void conv_transpose3d_forward(std::int64_t C, std::int64_t D, std::int64_t H, std::int64_t W, std::int64_t Co,
                                     std::int64_t kd, std::int64_t kh, std::int64_t kw, std::int64_t sd,
                                     std::int64_t sh, std::int64_t sw, std::int64_t dd, std::int64_t dh,
                                     std::int64_t dw, std::int64_t pd, std::int64_t ph, std::int64_t pw,
                                     std::int64_t Do, std::int64_t Ho, std::int64_t Wo, const float* in, const float* w,
                                     const float* bias, float* out, ThreadPool& pool) {
  const std::int64_t vol_out = Do * Ho * Wo, vol_in = D * H * W, ksp = kd * kh * kw;
  // Stride 1 (the gradient of a stride-1 convolution, a decoder's 3×3×3): a direct convolution
  // with the weights transposed and flipped and leading padding d·(k − 1) − p.
  const std::int64_t qd = dd * (kd - 1) - pd, qh = dh * (kh - 1) - ph, qw = dw * (kw - 1) - pw;
  if (sd == 1 && sh == 1 && sw == 1 && qd >= 0 && qh >= 0 && qw >= 0) {
    EngineArray<float> wf(std::size_t(Co * C * ksp), false);  // (all written; see pack_conv_weights_block)
    for (std::int64_t o = 0; o < Co; ++o)
      for (std::int64_t i = 0; i < C; ++i)
        for (std::int64_t k = 0; k < ksp; ++k) wf[(o * C + i) * ksp + (ksp - 1 - k)] = w[(i * Co + o) * ksp + k];
    const EngineArray<float> wp = pack_conv_weights_block(wf.data(), Co, C * ksp);
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
    std::vector<float> bt(static_cast<std::size_t>(Cp));
    for (std::int64_t o = 0; o < Co; ++o)
      for (std::int64_t k = 0; k < ksp; ++k) bt[std::size_t(o * ksp + k)] = bias ? bias[o] : 0.0f;
    // The [Cp, C] matrix (row o·taps + tap) packed, kept in the weight cache by content: made per
    // call, its transposition (reads a row's length apart) and packing were most of a model's
    // 320→256 2×2×2 upsampling at 4×16×16 (18.6 of 24 ms on Zen 5; 1.3 GFLOP).
    auto make = [&](float* dst) {
      std::vector<float> wt(static_cast<std::size_t>(Cp * C));
      for (std::int64_t i = 0; i < C; ++i)
        for (std::int64_t o = 0; o < Co; ++o)
          for (std::int64_t k = 0; k < ksp; ++k) wt[std::size_t((o * ksp + k) * C + i)] = w[(i * Co + o) * ksp + k];
      pack_conv_weights_into(wt.data(), Cp, C, dst);
    };
    const ConvGeom g{C, D, H, W, Cp, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, D, H, W};
    const std::size_t packed_floats = std::size_t(packed_conv_size(Cp, C));
    const auto cached = wino_detail::WeightCache::instance().get_raw(
        g, w, std::size_t(C * Co * ksp), pool, int(ksp), false, wino_detail::kUpsamplePacked,
        packed_floats * sizeof(float), [&](void* U) { make(static_cast<float*>(U)); });
    EngineArray<float> own;  // (engine memory, not a std::vector: EngineArray)
    if (!cached) {
      own = EngineArray<float>(packed_floats, false);  // (make writes it all)
      make(own.data());
    }
    const float* wp = cached ? static_cast<const float*>(cached->U()) : own.data();
#ifdef BHSD_AMX
    if (conv_transpose_upsample_amx(C, D, H, W, Co, sd, sh, sw, in, wp, bt.data(), out, pool)) return;
#endif
#ifdef BHSD_X86
    static const bool fused = conv_detail::pick_kernel() == conv_detail::kernel_avx2;
    if (fused && conv_transpose_upsample_avx2(C, D, H, W, Co, sd, sh, sw, in, wp, bt.data(), out, pool)) return;
#endif
    EngineArray<float> tmp(static_cast<std::size_t>(Cp * vol_in), true);
    conv3d_forward(g, in, wp, bt.data(), tmp.data(), Act::none, 0, pool);
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
  // A 1×1×1 kernel with strides and no padding (MedNeXt's residual beside its up-sampling): the
  // strided places take one 1×1×1 convolution of the input (its bias included), every other output
  // the bias alone — not eight phases, seven of them without a tap.
  if (ksp == 1 && pd == 0 && ph == 0 && pw == 0) {
    EngineArray<float> wt(std::size_t(Co * C), false);  // (all written)
    for (std::int64_t o = 0; o < Co; ++o)
      for (std::int64_t i = 0; i < C; ++i) wt[std::size_t(o * C + i)] = w[i * Co + o];
    const EngineArray<float> wp = pack_conv_weights_block(wt.data(), Co, C);
    EngineArray<float> tmp(std::size_t(Co * vol_in), false);  // (the convolution writes it all)
    const ConvGeom g{C, D, H, W, Co, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, D, H, W};
    conv3d_forward(g, in, wp.data(), bias, tmp.data(), Act::none, 0, pool);
    pool.parallel_for(std::size_t(Co * Do), [&](std::size_t lo, std::size_t hi) {
      for (std::size_t q = lo; q < hi; ++q) {
        const std::int64_t o = std::int64_t(q) / Do, od = std::int64_t(q) % Do;
        const float b0 = bias ? bias[o] : 0.0f;
        const bool dz = od % sd == 0 && od / sd < D;
        for (std::int64_t oh = 0; oh < Ho; ++oh) {
          float* row = out + (o * Do + od) * Ho * Wo + oh * Wo;
          for (std::int64_t ow = 0; ow < Wo; ++ow) row[ow] = b0;
          if (!dz || oh % sh || oh / sh >= H) continue;
          const float* src = tmp.data() + o * vol_in + ((od / sd) * H + oh / sh) * W;
          for (std::int64_t iw = 0; iw < W && iw * sw < Wo; ++iw) row[iw * sw] = src[iw];
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
    struct Taps {
      std::vector<std::int64_t> a;
      std::int64_t e0;
    };  // taps by input offset e0, e0 + 1, …
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
    EngineArray<float> tmp(static_cast<std::size_t>(Co * Dj0 * Hj0 * Wj0), true);
    std::vector<float> wsub;
    for (std::int64_t rd = 0; rd < std::min(sd, Do); ++rd)
      for (std::int64_t rh = 0; rh < std::min(sh, Ho); ++rh)
        for (std::int64_t rw = 0; rw < std::min(sw, Wo); ++rw) {
          const Taps td = taps_of(rd, pd, kd, sd), th = taps_of(rh, ph, kh, sh), tw = taps_of(rw, pw, kw, sw);
          const std::int64_t Dj = (Do - rd + sd - 1) / sd, Hj = (Ho - rh + sh - 1) / sh, Wj = (Wo - rw + sw - 1) / sw;
          const std::int64_t nd = std::int64_t(td.a.size()), nh = std::int64_t(th.a.size()),
                             nw = std::int64_t(tw.a.size());
          const std::int64_t plane_j = Hj * Wj, vol_j = Dj * plane_j;
          if (nd == 0 || nh == 0 || nw == 0) {  // no tap reaches this phase: the bias alone
            for (std::int64_t o = 0; o < Co; ++o)
              std::fill(tmp.data() + o * vol_j, tmp.data() + (o + 1) * vol_j, bias ? bias[o] : 0.0f);
          } else {
            const std::int64_t kn = nd * nh * nw;
            wsub.assign(static_cast<std::size_t>(Co * C * kn), 0.0f);
            for (std::int64_t o = 0; o < Co; ++o)
              for (std::int64_t i = 0; i < C; ++i)
                for (std::int64_t x = 0; x < nd; ++x)
                  for (std::int64_t y = 0; y < nh; ++y)
                    for (std::int64_t z = 0; z < nw; ++z)
                      wsub[std::size_t(((o * C + i) * nd + x) * nh * nw + y * nw + z)] =
                          w[(i * Co + o) * ksp + (td.a[std::size_t(x)] * kh + th.a[std::size_t(y)]) * kw +
                            tw.a[std::size_t(z)]];
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
  for (std::int64_t co = 0; co < Co; ++co)
    std::fill(out + co * vol_out, out + (co + 1) * vol_out, bias ? bias[co] : 0.0f);
  ConvGeom g{C, D, H, W, Co, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, D, H, W};
  std::vector<float> wk(static_cast<std::size_t>(Co * C));
  EngineArray<float> tmp(static_cast<std::size_t>(Co * vol_in), true);
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

}  // namespace bhsd
