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
//
// Part of conv.hpp: the forward convolution — the indirect and pointwise AVX2 paths and the blocked
// dispatcher conv3d_forward.
#pragma once

#include "conv_pack.hpp"

namespace bhsd {

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
inline bool conv3d_forward_indirect(const ConvGeom& g, const float* in, const float* wp, const float* bias, float* out,
                                    Act act, float alpha, ThreadPool& pool,
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
          delta[std::size_t(k)] =
              std::int32_t(ci * volS + a * g.dd * planeP + b * g.dh * Wp + ((c * g.dw) % sw) * Wph + (c * g.dw) / sw);
  const std::int64_t plane_out = g.Ho * g.Wo, vol_out = g.Do * plane_out;
  const std::int64_t rows_per_task = std::max<std::int64_t>(1, 8 / segs_per_row);
  const std::int64_t cb = channel_block(g.C, ksp);
  const std::int64_t kblocks = (g.C + cb - 1) / cb;
  for (std::int64_t od0 = 0; od0 < g.Do; od0 += odn) {
    const std::int64_t od1 = std::min(g.Do, od0 + odn);
    const std::int64_t planes = (od1 - 1 - od0) * g.sd + halo + 1, zd0 = od0 * g.sd;
    // the slab's padded planes, a (channel, plane) per task; every element written
    pool.parallel_for(
        std::size_t(g.C * planes),
        [&](std::size_t t0, std::size_t t1) {
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
        },
        1, 2);
    const std::int64_t rows = (od1 - od0) * g.Ho;
    const std::int64_t tasks = (rows + rows_per_task - 1) / rows_per_task;
    // one block of input channels: each tile stored once, streamed past the caches where the output
    // is too large for them (stream_out_bytes: a U-Net's first layer, 1→32 at 16×256×256, 8.9 → 6.8 ms)
    const bool stream = kblocks == 1 && stream_output(std::size_t(g.Co * vol_out) * sizeof(float));
    pool.parallel_for(
        std::size_t(tasks),
        [&](std::size_t t0, std::size_t t1) {
          const StreamTiles streamed(stream);
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
                  std::int64_t ow0 = 0;
                  for (; ow0 + NR < g.Wo; ow0 += 2 * NR)  // two tiles per call (kernel_blocks2)
                    kernel_blocks2(wp + c0 * ksp * MR, K, cbk, cob, cobn, IndirectB{base_row + ow0, dk},
                                   IndirectB{base_row + ow0 + NR, dk}, kbn, orow + ow0, orow + ow0 + NR, vol_out, bias,
                                   NR, std::min<std::int64_t>(NR, g.Wo - ow0 - NR), first, last, act, alpha);
                  for (; ow0 < g.Wo; ow0 += NR) {
                    const IndirectB src{base_row + ow0, dk};
                    const std::int64_t n = std::min<std::int64_t>(NR, g.Wo - ow0);
                    kernel_blocks(wp + c0 * ksp * MR, K, cbk, cob, cobn, src, kbn, orow + ow0, vol_out, bias, n, first,
                                  last, act, alpha);
                  }
                }
              }
            }
          }
        },
        1, 8);
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
    for (std::int64_t k = 0; k < K; ++k)
      delta[std::size_t(k)] = std::int32_t(k * V), delta16[std::size_t(k)] = std::int32_t(k * NR);
    const std::int64_t vlast = V / NR * NR;
    if (vlast < V) {
      stage.assign(std::size_t(K * NR), 0.0f);
      for (std::int64_t k = 0; k < K; ++k)
        std::memcpy(stage.data() + k * NR, in + k * V + vlast, std::size_t(V - vlast) * sizeof(float));
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
// in_place: never copied (pointwise_wide_avx512: huge-page inputs, where those TLB misses do not arise).
__attribute__((target("avx2,fma"))) inline void pointwise_run_avx2(const InPlaceInput& src, const float* wp,
                                                                   std::int64_t K, const CoBlocks& cbk,
                                                                   const float* bias, std::int64_t v0, std::int64_t v1,
                                                                   float* o, std::int64_t ldo, Act act, float alpha,
                                                                   bool in_place = false) {
  const std::int64_t cb = channel_block(K, 1), kblocks = (K + cb - 1) / cb;
  const bool stage = !in_place && cbk.count() > 1;
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
      auto b_at = [&](std::int64_t v) { return stage ? IndirectB{panel + (v - v0), dpanel.data()} : src.at(v, k0); };
      std::int64_t v = v0;
      for (; v + NR < v1; v += 2 * NR)  // two tiles per call (kernel_blocks2)
        kernel_blocks2(wp + k0 * MR, K, cbk, cob, cobn, b_at(v), b_at(v + NR), kbn, o + (v - v0), o + (v + NR - v0),
                       ldo, bias, NR, std::min<std::int64_t>(NR, v1 - v - NR), first, last, act, alpha);
      for (; v < v1; v += NR)
        kernel_blocks(wp + k0 * MR, K, cbk, cob, cobn, b_at(v), kbn, o + (v - v0), ldo, bias,
                      std::min<std::int64_t>(NR, v1 - v), first, last, act, alpha);
    }
  }
}
}  // namespace conv_detail

// A 1 × 1 × 1 kernel at stride 1 without padding: a GEMM over the voxels.
inline bool is_pointwise(const ConvGeom& g) {
  return g.kd == 1 && g.kh == 1 && g.kw == 1 && g.sd == 1 && g.sh == 1 && g.sw == 1 && g.pd == 0 && g.ph == 0 &&
         g.pw == 0 && g.Do == g.D && g.Ho == g.H && g.Wo == g.W;
}

// A 1 × 1 × 1 convolution, stride 1, no padding, with more than 48 output channels (ResEnc's 1×1×1 projections; a
// transposed convolution's phases) on the AVX-512 kernels, with at most 512 input channels (a pair
// of weight blocks, 12 rows of K, stays in L1): every pair of output-channel blocks over runs of up
// to 16 tiles, the whole K in one pass, each tile's samples read in place (the engine's input
// buffers are huge pages: no TLB misses to pay, as there were on 4 KB pages). Against the packed
// path's row panels, C++ core, Zen 5, 2 threads: 128→256 at 8×32×32 2.26 → 1.82 ms, 256→320 at
// 4×16×16 0.62 → 0.50, 64→128 at 16×64×64 7.0 → 5.2, 32→64 at 16×128×128 11.9 → 7.9 (bit for bit
// the same sums; public conv3d, alternating processes: 2.63 → 2.36, 0.676 → 0.581, 7.31 → 6.62, 12.3 →
// 10.5). The AVX2 kernel, a block at a time, measured 20–30 % slower this way: false there.
inline bool pointwise_wide_avx512(const ConvGeom& g, const float* in, const float* wp, const float* bias, float* out,
                                  Act act, float alpha, ThreadPool& pool) {
  using namespace conv_detail;
  if (!is_pointwise(g)) return false;
  const std::int64_t V = g.D * g.H * g.W, K = g.C;
  const CoBlocks cbk(g.Co);
  const std::int64_t coblocks = cbk.count();
  if (!use_avx512() || K > 512 || coblocks <= 8 || K * V >= (std::int64_t(1) << 31)) return false;
  const InPlaceInput src(in, K, V);
  const std::int64_t tiles = (V + NR - 1) / NR;
  // runs of 16 tiles, fewer where that leaves a thread without two (a deep stage of 256 voxels)
  const std::int64_t per = std::clamp<std::int64_t>(tiles / (2 * std::int64_t(pool.size())), 2, 16);
  pool.parallel_for(
      std::size_t((tiles + per - 1) / per),
      [&](std::size_t t0, std::size_t t1) {
        for (std::size_t t = t0; t < t1; ++t) {
          const std::int64_t v0 = std::int64_t(t) * per * NR, v1 = std::min(V, v0 + per * NR);
          pointwise_run_avx2(src, wp, K, cbk, bias, v0, v1, out + v0, V, act, alpha, true);
        }
      },
      1, 8);
  return true;
}

// A 1 × 1 × 1 convolution, stride 1, no padding (a segmentation head; each phase of a transposed
// convolution whose kernel equals its stride): a plain GEMM out[Co, V] = W[Co, C] · in[C, V], the
// micro-kernel reading each channel's 16 voxels from the input in place (no copy at all); the last
// partial tile through a zero-padded staging copy. Up to 48 output channels (a head; measured 2×
// faster than packing there); wider layers reuse packed panels enough that packing wins on AVX2
// (64→128 and 320→1280 measured 1.2–1.5× slower this way; AVX-512 takes them in pointwise_wide_avx512).
// Returns false where this path does not apply.
inline bool conv3d_forward_pointwise(const ConvGeom& g, const float* in, const float* wp, const float* bias, float* out,
                                     Act act, float alpha, ThreadPool& pool) {
  using namespace conv_detail;
  if (!is_pointwise(g)) return false;
  const std::int64_t V = g.D * g.H * g.W, K = g.C;
  if (K * V >= (std::int64_t(1) << 31)) return false;
  const CoBlocks cbk(g.Co);
  const std::int64_t coblocks = cbk.count();
  if (coblocks > 8) return false;  // (pointwise_wide_avx512 on AVX-512)
  const InPlaceInput src(in, K, V);
  const std::int64_t tiles = (V + NR - 1) / NR, per_task = 16;
  // a task's 16 tiles share each channel block's weights (read once per task, not once per tile)
  pool.parallel_for(
      std::size_t((tiles + per_task - 1) / per_task),
      [&](std::size_t t0, std::size_t t1) {
        for (std::size_t t = t0; t < t1; ++t) {
          const std::int64_t v0 = std::int64_t(t) * per_task * NR, v1 = std::min(V, v0 + per_task * NR);
          pointwise_run_avx2(src, wp, K, cbk, bias, v0, v1, out + v0, V, act, alpha);
        }
      },
      1, 8);
  return true;
}
#endif

// conv_winograd.hpp (included at the end of this header): Winograd F(2×2×2, 3×3×3) where it
// applies and the plan (or BHSD_WINOGRAD) chooses it; true when it wrote the output.
inline bool winograd_hook(const ConvGeom& g, const float* in, const float* wp, const float* bias, float* out, Act act,
                          float alpha, ThreadPool& pool);

// conv_amx.hpp: the direct convolution on AMX tiles for a bf16 call where the processor has them;
// true when it wrote the output.
inline bool amx_hook(const ConvGeom& g, const float* in, const float* wp, const float* bias, float* out, Act act,
                     float alpha, ThreadPool& pool);

// One batch item and one group: in [C, D, H, W] → out [Co, Do, Ho, Wo]; wp from pack_conv_weights.
// winograd = false: the direct paths only (the plan times them against Winograd).
inline void conv3d_forward(const ConvGeom& g, const float* in, const float* wp, const float* bias, float* out, Act act,
                           float alpha, ThreadPool& pool, bool winograd = true) {
  using namespace conv_detail;
  if (winograd && winograd_hook(g, in, wp, bias, out, act, alpha, pool)) return;
  if (amx_hook(g, in, wp, bias, out, act, alpha, pool)) return;
  static const Kernel kernel = pick_kernel();
  static const PackFn pack = pick_pack(kernel);
#ifdef BHSD_X86
  static const bool direct = kernel == kernel_avx2 && !std::getenv("BHSD_CONV_STAGED");
#else
  [[maybe_unused]] const bool direct = false;  // only the x86 paths read it
#endif
#ifdef BHSD_X86
  static const bool indirect = direct && !std::getenv("BHSD_CONV_PACKED");
  if (indirect && conv3d_forward_pointwise(g, in, wp, bias, out, act, alpha, pool)) return;
  if (indirect && pointwise_wide_avx512(g, in, wp, bias, out, act, alpha, pool)) return;
  if (indirect && conv3d_forward_indirect(g, in, wp, bias, out, act, alpha, pool)) return;
#endif
  const std::int64_t K = g.K(), ksp = g.kd * g.kh * g.kw;
  const std::int64_t plane_out = g.Ho * g.Wo, vol_out = g.Do * plane_out;
  const std::int64_t segs_per_row = (g.Wo + NR - 1) / NR;
  // Up to 8 segments (128 voxels) per task: whole short rows are grouped.
  const std::int64_t rows_per_task = std::max<std::int64_t>(1, 8 / segs_per_row);
  const std::int64_t ahead = rows_per_task * g.sh * g.W;  // the next task's rows (a thread's tasks are consecutive)
  const std::int64_t rows = g.Do * g.Ho;
  // Input channels per block: about 512 rows of K (a 32 KB panel per segment, 12 KB of weights).
  const std::int64_t cb = channel_block(g.C, ksp);
  const std::int64_t kblocks = (g.C + cb - 1) / cb;
  const CoBlocks cbk(g.Co);
  const std::int64_t coblocks = cbk.count();
  // flat segments, row windows (stride 1 or 2 along W) or gathers: PanelPlan (conv_pack.hpp)
#ifdef BHSD_X86
  static const bool s2 = !std::getenv("BHSD_CONV_NO_S2");
  const PanelPlan pp(g, cb, direct, s2);
#else
  const PanelPlan pp(g, cb, false);
#endif
  const bool flat = pp.flat;
  const std::int64_t flat_segs = (vol_out + NR - 1) / NR;
  const std::int64_t threads = std::int64_t(pool.size());
  // A flat task has 8 segments, or, where that leaves a thread without one, as many as share them
  // out (an even number, for the two-segment kernel): a deep stage of 128 voxels (8 segments) had
  // been one task split by output channels, each thread packing the whole panel again (64→64 at
  // 2×8×8: 117 → 97 µs; 32→64 at stride 2 to 2×8×8: 96 → 69 µs)
  const std::int64_t fsegs = flat && (flat_segs + 7) / 8 < threads
                                 ? std::max<std::int64_t>(2, ((flat_segs + threads - 1) / threads + 1) / 2 * 2)
                                 : 8;
  const std::int64_t seg_tasks = flat ? (flat_segs + fsegs - 1) / fsegs : (rows + rows_per_task - 1) / rows_per_task;
  // A volume with fewer tasks of segments than threads (the deep stages: 2×4×4 is one) also splits
  // its output channels, at least 4 blocks each, so that every thread has work; each split packs
  // its own panels (320→320 at 2×4×4: 100 → 145 GFLOP/s; with as many tasks as threads the
  // duplicated packing cost more than it gained).
  const std::int64_t co_splits = seg_tasks >= threads
                                     ? 1
                                     : std::clamp<std::int64_t>((2 * threads + seg_tasks - 1) / seg_tasks, 1,
                                                                std::max<std::int64_t>(1, coblocks / 4));
  const std::int64_t tasks = seg_tasks * co_splits;

  pool.parallel_for(
      std::size_t(tasks),
      [&](std::size_t t0, std::size_t t1) {
        thread_local Scratch panel_mem, tile_mem;
        const std::int64_t max_segs = flat ? fsegs : rows_per_task * segs_per_row;
        float* panel = panel_mem.get(std::size_t(max_segs * pp.seg_floats(cb)));
        float* tile = tile_mem.get(MR * NR);
        struct Seg {
          std::int64_t od, oh, ow0, n;
        };
        std::vector<Seg> segs;
        for (std::size_t task = t0; task < t1; ++task) {
          const std::int64_t t = std::int64_t(task) / co_splits, split = std::int64_t(task) % co_splits;
          const std::int64_t cob0 = split * coblocks / co_splits, cob1 = (split + 1) * coblocks / co_splits;
          segs.clear();
          if (flat)  // od, oh unused; ow0 is the flat start
            for (std::int64_t q = t * fsegs; q < std::min(flat_segs, (t + 1) * fsegs); ++q)
              segs.push_back({0, 0, q * NR, std::min<std::int64_t>(NR, vol_out - q * NR)});
          else
            for (std::int64_t r = t * rows_per_task; r < std::min(rows, (t + 1) * rows_per_task); ++r)
              for (std::int64_t s = 0; s < segs_per_row; ++s)
                segs.push_back({r / g.Ho, r % g.Ho, s * NR, std::min<std::int64_t>(NR, g.Wo - s * NR)});
          for (std::int64_t kb = 0; kb < kblocks; ++kb) {
            const std::int64_t c0 = kb * cb, c1 = std::min(g.C, c0 + cb);
            const std::int64_t kbn = (c1 - c0) * ksp;
            const std::size_t sf = std::size_t(pp.seg_floats(c1 - c0));  // a segment's panel
            // Pack: panel[s][k][j] = input sample of weight k for voxel j of segment s (0 in padding).
            for (std::size_t s = 0; s < segs.size(); ++s) {
              const Seg& sg = segs[s];
#ifdef BHSD_X86
              if (flat) {
                pack_panel_flat_avx2(g, in, c0, c1, sg.ow0, sg.n, panel + s * sf);
                continue;
              }
              if (pp.rowwin) {
                pack_rows_avx2(g, in, c0, c1, sg.od, sg.oh, sg.ow0, pp.RW, panel + s * sf, ahead);
                continue;
              }
              if (pp.rowwin2) {
                pack_rows_s2_avx2(g, in, c0, c1, sg.od, sg.oh, sg.ow0, pp.RW2, panel + s * sf, ahead);
                continue;
              }
#endif
              pack(g, in, c0, c1, sg.od, sg.oh, sg.ow0, sg.n, panel + s * sf, ahead);
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
                if (direct && s + 1 < segs.size()) {  // two segments per call (kernel_blocks2)
                  const Seg& sg1 = segs[s + 1];
                  float* o1 = out + (flat ? sg1.ow0 : sg1.od * plane_out + sg1.oh * g.Wo + sg1.ow0);
                  const float* p0 = panel + s * sf;
                  const float* p1 = p0 + sf;
                  if (pp.rowwin || pp.rowwin2)
                    kernel_blocks2(wp + c0 * ksp * MR, K, cbk, cob, cobn, IndirectB{p0, pp.rdelta.data()},
                                   IndirectB{p1, pp.rdelta.data()}, kbn, o0, o1, vol_out, bias, sg.n, sg1.n, first,
                                   last, act, alpha);
                  else
                    kernel_blocks2(wp + c0 * ksp * MR, K, cbk, cob, cobn, PackedB{p0}, PackedB{p1}, kbn, o0, o1,
                                   vol_out, bias, sg.n, sg1.n, first, last, act, alpha);
                  ++s;
                  continue;
                }
                if (pp.rowwin || pp.rowwin2) {
                  kernel_blocks(wp + c0 * ksp * MR, K, cbk, cob, cobn, IndirectB{panel + s * sf, pp.rdelta.data()}, kbn,
                                o0, vol_out, bias, sg.n, first, last, act, alpha);
                  continue;
                }
                if (direct) {
                  kernel_blocks(wp + c0 * ksp * MR, K, cbk, cob, cobn, PackedB{panel + s * sf}, kbn, o0, vol_out, bias,
                                sg.n, first, last, act, alpha);
                  continue;
                }
#endif
                const std::size_t nbytes = std::size_t(sg.n) * sizeof(float);
                std::memset(tile, 0, MR * NR * sizeof(float));
                for (std::int64_t r = 0; r < rows_valid; ++r) {
                  if (first)
                    std::fill(tile + r * NR, tile + r * NR + sg.n, bb ? bb[r] : 0.0f);
                  else
                    std::memcpy(tile + r * NR, o + r * vol_out, nbytes);
                }
                kernel(a, panel + s * sf, kbn, tile);
                if (last && act != Act::none)
                  for (std::int64_t i = 0; i < MR * NR; ++i) tile[i] = activate(tile[i], act, alpha);
                for (std::int64_t r = 0; r < rows_valid; ++r) std::memcpy(o + r * vol_out, tile + r * NR, nbytes);
              }
            }
          }
        }
      },
      1, 8);
}

}  // namespace bhsd

#include "conv_winograd.hpp"
#include "conv_amx.hpp"
