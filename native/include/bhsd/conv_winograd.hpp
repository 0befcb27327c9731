// bhsd — Winograd F(2×2×2, 3×3×3) for the 3×3×3, stride-1, dilation-1 convolutions U-Nets are made
// of (issue 23), for 1×3×3 ones (nnU-Net's anisotropic stages) F(2×2, 3×3) per plane (the same code
// with one input plane, no transform along D and 16 points instead of 64); by default F(4×4) tiles
// across the planes instead — F(4×4, 3×3) for 1×3×3 (36 points) and F(2×4×4, 3×3×3) for 3×3×3
// layers up to 256×256 channels (144 points), transforms of their own below (AVX-512 ones, and
// AVX2 ones where AVX-512 does not run) —; for the strided 3×3×3 layers that open a U-Net's stages
// (stride 1×2×2 or 2×2×2) Winograd
// on the phases of each strided axis ("Stride 2" below: 100 or 125 points per 2×2×2 outputs); and
// the measured plan that chooses Winograd or the direct convolution per layer shape.
// Part of conv.hpp (conv_forward.hpp includes it last: conv3d_forward asks winograd_hook first).
//
// Each output tile of 2×2×2 voxels needs a 4×4×4 input tile d; with Bᵀ, G, Aᵀ of F(2,3) along
// each axis (Lavin & Gray 2016; Jia et al., PPoPP 2018, for N dimensions):
//   U = G w Gᵀ (per axis: 3³ weights → 4³ points), V = Bᵀ d B (4³ → 4³), M = Σ_ci U ⊙ V, Y = Aᵀ M A.
// The sum over input channels is 64 independent GEMMs, one per point p: M_p[co][tile] =
// Σ_ci U_p[co][ci] · V_p[ci][tile] — 64·Cin·Cout multiplications per 8 outputs instead of
// 8·27·Cin·Cout (3.4× fewer). They run on the direct path's micro-kernels (kernel_blocks:
// AVX-512 where the processor has it, else AVX2/FMA; 16 tiles per tile of the kernel, which
// packs U_p exactly as it packs a convolution's weights and reads V_p as a packed panel).
//
// Work is cut into groups of 16 consecutive tiles (raster order of the tile grid, a group may span
// rows, so that narrow deep layers still fill the 16 lanes), and tasks of a few groups whose
// transformed inputs V and products M (points·16·(Cin + Cout) floats a group) stay in L2 while every
// point's GEMM runs over them with that point's weights. The output transform adds the bias and
// applies the activation as it stores, and drops the voxels of tiles past an odd extent.
// Accuracy: F(2,3)'s transforms have coefficients 0, ±1, ±½ (for G) and ±1 (for Bᵀ and Aᵀ),
// so the rounding is close to the direct path's (measured against float64 in core_test: ~1e-6 of
// the output's scale).
//
// Which path runs: BHSD_WINOGRAD=0 never, =1 always where it applies, unset (default) by a plan:
// the first call of each (kernel, shape, channels, padding, threads) times the direct convolution and
// Winograd once each (Winograd twice if its first, cold run was slower) and keeps the faster for
// every later call of that key (a small map under a mutex), like cuDNN's find mode. Both paths
// write the whole output, so the planning call's result is valid whichever ran last.
//
// The transformed weights are made from the packed weights conv3d_forward is given (the Node layer
// keeps no second form) and kept in a small cache found by the weights' content (WeightCache), so
// a model's layer transforms its weights once (while the cache holds them: a model needing more
// transforms the rest per call, a cost the plan counts); the plan's second Winograd run finds them.
#pragma once

#include <array>
#include <atomic>
#include <chrono>
#include <list>
#include <tuple>
#include <utility>
#include <map>
#if defined(__unix__) || defined(__APPLE__)
#include <unistd.h>
#endif

#include "amx_tiles.hpp"
#include "conv_forward.hpp"
#include "memory.hpp"

namespace bhsd {

namespace wino_detail {

constexpr int TL = 16;  // tiles per group (the micro-kernel's NR lanes)

// Floats between successive points of a group's V (channels = C) or M (channels = Co): each point's
// [channel][lane] block and one spare line. Unpadded, the stride (C·64 bytes) is a multiple of 4 KB
// for 64, 128, 256 channels, so the 64 (or 36, 16) values a transform stores or loads per channel all
// fell in one set of the 12-way L1 and evicted each other: a 256→128 layer's input transform ran at
// a quarter of its cache-hot speed.
inline std::int64_t point_stride(std::int64_t channels) { return (channels + 1) * TL; }

// From how many bytes the V of the groups transformed before their products (a task's G groups, or
// the split path's all) is written with streaming stores (st_v): past the caches, which cannot hold
// that much until the products read it — written through them, every line of V was first read in
// from memory and later written back, beside the products' own reads of V and of the weights. Tasks
// of 8 groups (task_groups: layers whose transformed weights pass 12 MB), the split path and, on
// AVX-512 (at least 2 groups a task), F(4×4×4) tasks from about 96 input channels (128→64: 3.6 MB)
// get there; other layers' tasks take as few groups as keep V and M near 768 KB (64→64 F(4×4×4):
// 2 groups, 1.8 MB of V), which the caches hold. On Zen 5 (2026-12-05, C++ core, alternating
// runs, medians of 4–6): F(4×4×4) 128→128 at 16×64×64 (8 groups, 14 MB of V) 38.4 → 36.8 ms
// (39.7–41.4 → 34.9–36.6 in an hour of heavier memory traffic; AVX2 67.4 → 65.2), 256→128 there 73.0
// → 71.2, stride 2×2×2 128→256 at 16×64×64 44.4 → 42.4 and 256→320 at 8×32×32 (the split path) 12.8
// → 12.4, 320→320 at 4×16×16 (1×2×2) 4.55 → 4.24, 128→64 at 16×128×128 (2 groups) 81.0 → 75.9 and
// 128→128 at 16×64×64 with 2 groups 40.1–41.5 → 36.0–36.5 (both in the busier hour); streaming every
// V instead cost the small layers
// 4–15 % (64→64 at 16×128×128: F(2×4×4), 1.2 MB of V, 46.0 → 53.2; F(4×4×4), 1.8 MB, 41.5 → 43.7;
// 32→32 at 16×256×256 64.2 → 73.9). BHSD_WINOGRAD_STREAM_MB sets it (0: always); the tests set it.
inline std::size_t& stream_v_bytes() {
  static std::size_t b = env_megabytes("BHSD_WINOGRAD_STREAM_MB", std::size_t(5) << 19);  // 2.5 MB
  return b;
}

// The point products ask for the next point's V and M rows where the V and M of the groups they run
// over (a task's, or the layer's on the split path) pass these bytes (2 MB: conv3d_forward_winograd's
// point_products); the tests set it.
inline std::size_t& ahead_bytes() {
  static std::size_t b = std::size_t(2) << 20;
  return b;
}

// Which tiles a layer gets: on AVX-512 and AVX2 alike (each has its transforms below), F(4×4)
// across each plane — F(4×4, 3×3) for a 1×3×3 kernel, F(2×4×4, 3×3×3) for 3×3×3 (F(2, 3) along D,
// F(4, 3) along H and W: 144 points per 32 outputs, 4.5 a voxel instead of F(2×2×2)'s 8) — else
// F(2×2, 3×3) and F(2×2×2, 3×3×3). 3×3×3 layers wider than 256×256 channels keep F(2×2×2) where
// their output has under 4096 voxels: their 144 transformed matrices (59 MB at 320×320, 2.25×
// F(2×2×2)'s) would crowd the weight cache out for layers whose small extent (nnU-Net's deepest
// stages: 320→320 at 4×16×16 8.5 ms either way on the Xeon, at 4×8×8 3.3 against 6.1 ms) gains
// least from the larger tiles. From 4096 voxels on they take F(2×4×4) too, and the plan still
// times F(2×2×2) beside it: the Xeon (2026-12-04, Winograd forced, F(2×2×2) → F(2×4×4)) ran 512→256
// at 8×32×32 (ResEnc-M's and PlainConvUNet's decoder) 108–111 → 67 ms, 640→320 at 8×32×32 159 →
// 94 ms, 320→320 at 16×16×16 42 → 28–30 ms.
// BHSD_WINOGRAD_F4=0 keeps F(2×…) everywhere (for the bench); f4_override() is the tests' switch
// (−1 as the environment says, 0 off, 1 on where the channels allow).
constexpr std::int64_t kF4MaxChannels2 = 256 * 256, kF4WideMinVoxels = 4096;
inline int& f4_override() {
  static int v = -1;
  return v;
}
// The F(4×4) input transforms' aligned row reads (whole_masks): −1 as BHSD_WINOGRAD_UNALIGNED says
// (1: never), 0 never, 1 where they apply (the tests' switch).
inline int& aligned_rows_override() {
  static int v = -1;
  return v;
}
// Groups whose rows were read aligned, since the process started (for the tests: that the path ran).
inline std::atomic<std::int64_t>& aligned_row_groups() {
  static std::atomic<std::int64_t> n{0};
  return n;
}
// Whether this processor runs bf16 products (AVX512_BF16 beside the AVX-512 kernels; BHSD_NO_BF16=1
// says no, for comparison).
inline bool bf16_available() {
#ifdef BHSD_X86
  static const bool on = [] {
    const CpuFeatures f = cpu_features();
    return conv_detail::use_avx512() && f.avx512bw && f.avx512bf16 && !std::getenv("BHSD_NO_BF16");
  }();
  return on;
#else
  return false;
#endif
}
// Calls running while this is above 0 use F(2×…) tiles (training: preciseConvolutions in the Node
// layer). F(4×4) tiles round to a few 1e-6 of scale where F(2,3)'s give ~1e-6 or less; through a
// whole backward pass that flipped LeakyReLU gates whose input lay within that of zero, and the
// input gradient of the PyTorch U-Net fixture differed from PyTorch's by 2 % of its scale at a few
// voxels (F(2×…): 5e-7). A count, so that overlapping training calls nest.
inline std::atomic<int>& precise_tiles() {
  static std::atomic<int> n{0};
  return n;
}
// The plan's switch for one call on this thread: true runs F(2×…) tiles where F(4×4) ones are the
// default (small layers, where F(4×4)'s larger transforms cost more than its products save).
inline bool& small_tiles() {
  static thread_local bool on = false;
  return on;
}
struct SmallTilesScope {  // sets it for a scope (restored on the way out, a cancellation's throw too)
  bool saved = small_tiles();
  explicit SmallTilesScope(bool on) { small_tiles() = saved || on; }
  ~SmallTilesScope() { small_tiles() = saved; }
  SmallTilesScope(const SmallTilesScope&) = delete;
  SmallTilesScope& operator=(const SmallTilesScope&) = delete;
};
// The fewest groups of tiles a layer has for the plan to time other counts of groups a task (the
// tests lower it).
inline std::int64_t& groups_timed_from() {
  static std::int64_t n = 64;
  return n;
}
// The plan's other switch: groups of tiles per task for this thread's calls (0: task_groups' rule).
inline int& groups_override() {
  static thread_local int n = 0;
  return n;
}
struct GroupsScope {  // sets it for a scope where n > 0
  int saved = groups_override();
  explicit GroupsScope(int n) {
    if (n > 0) groups_override() = n;
  }
  ~GroupsScope() { groups_override() = saved; }
  GroupsScope(const GroupsScope&) = delete;
  GroupsScope& operator=(const GroupsScope&) = delete;
};
// The tiles of the call running on this thread, fixed when it starts (0: none fixed): every later
// question within the call (points, the weights' size, their transform, the cache) gets the same
// answer even if a training call elsewhere changes precise_tiles meanwhile — a lease sized for 64
// points must not receive 144.
inline int& frozen_tile() {
  static thread_local int m = 0;
  return m;
}
// The plan's switch for one call on this thread: true runs F(4×4×4, 3×3×3) tiles where F(2×4×4) ones
// are the default (deep_applies: the plan times them as kWinoDeep).
inline bool& deep_tiles() {
  static thread_local bool on = false;
  return on;
}
struct DeepTilesScope {  // sets it for a scope where on
  bool saved = deep_tiles();
  explicit DeepTilesScope(bool on) { deep_tiles() = saved || on; }
  ~DeepTilesScope() { deep_tiles() = saved; }
  DeepTilesScope(const DeepTilesScope&) = delete;
  DeepTilesScope& operator=(const DeepTilesScope&) = delete;
};
// The tiles a call gets: 2 (F(2×2×2) / F(2×2)), 4 (F(2×4×4) / F(4×4)) or 8 (F(4×4×4, 3×3×3): a 3×3×3
// layer with F(4, 3) along D too, where the plan picks it).
inline int tile_code(const ConvGeom& g);
// A 3×3×3 layer of stride 1×2×2 or 2×2×2 (nnU-Net's downsamplings: the first convolution of stages
// 1–5 of its 3d_fullres U-Nets): Winograd on the phases of the strided axes (see "Stride 2" below),
// tiles of 2×2×2 outputs, 100 points (4·5², F(2, 3) along D) or 125 (5³); where the plan picks F(4, 3)
// along an unstrided D, 4×2×2 outputs from 150 points.
// BHSD_WINOGRAD_S2=0 leaves them to the direct path (for the bench).
inline bool is_s2(const ConvGeom& g) {
  static const bool env_off = [] {
    const char* e = std::getenv("BHSD_WINOGRAD_S2");
    return e && e[0] == '0' && !e[1];
  }();
  return !env_off && g.kd == 3 && g.kh == 3 && g.kw == 3 && (g.sd == 1 || g.sd == 2) && g.sh == 2 && g.sw == 2 &&
         g.dd == 1 && g.dh == 1 && g.dw == 1;
}
// Output rows and columns per tile (a strided layer's tiles: 2).
inline int tile_m(const ConvGeom& g) { return is_s2(g) ? 2 : std::min(4, tile_code(g)); }
// Output planes per tile: 1 for a 1×3×3 kernel, else 2 or (F(4×4×4); a 1×2×2-strided layer with F(4, 3)
// along D) 4.
inline std::int64_t tile_dz(const ConvGeom& g) { return g.kd == 3 ? (tile_code(g) == 8 ? 4 : 2) : 1; }
inline int tile_code(const ConvGeom& g) {
  if (const int f = frozen_tile()) return f;
  if (g.kd == 3 && g.C * g.Co > kF4MaxChannels2 && g.Do * g.Ho * g.Wo < kF4WideMinVoxels) return 2;
  if (precise_tiles().load(std::memory_order_relaxed) > 0 || small_tiles()) return 2;
  if (call_precision() == Precision::bf16 && bf16_available())
    return 2;  // F(4×4)'s transforms amplify bf16's rounding to 9 % of scale
  // a strided layer: 2, or 8 where the plan asks for F(4, 3) along an unstrided D (kWinoDeep)
  if (is_s2(g)) return g.sd == 1 && deep_tiles() ? 8 : 2;
  static const bool env_off = [] {
    const char* e = std::getenv("BHSD_WINOGRAD_F4");
    return e && e[0] == '0' && !e[1];
  }();
  const int o = f4_override();
#ifdef BHSD_X86
  if (!(o >= 0 ? o == 1 : !env_off)) return 2;  // (AVX-512's transforms, or input_transform_avx2's)
  return g.kd == 3 && deep_tiles() ? 8 : 4;
#else
  (void)o, (void)env_off;
  return 2;  // Winograd runs on x86 only (winograd_applies)
#endif
}
struct TileFreeze {  // fixes tile_m for this thread for a scope (the outermost one decides)
  int saved = frozen_tile();
  explicit TileFreeze(const ConvGeom& g) { frozen_tile() = tile_code(g); }
  ~TileFreeze() { frozen_tile() = saved; }
  TileFreeze(const TileFreeze&) = delete;
  TileFreeze& operator=(const TileFreeze&) = delete;
};

// Whether the plan also times F(4×4×4, 3×3×3) tiles for a layer whose default is F(2×4×4): F(4, 3)
// along D as well, 216 points per 64 outputs (3.4 a voxel against 4.5; 8× fewer multiplications
// than the direct path against 6×) for 1.5× the transformed weights — so only up to 256×256
// channels (57 MB), and at least 8 output planes (two tiles deep). On the Xeon (2026-12-04, C++
// core, Winograd forced, alternating runs): 64→64 at 16×128×128 58.6 → 50.9 ms, 128→64 there 110 →
// 91, 128→128 at 16×64×64 43.8 → 42.1; rounding 1.6e-5–4.3e-5 of scale where F(2×4×4) gives
// 5e-6–1.3e-5. On Zen 5 (2026-12-05): 256→128 at 16×64×64 75–76 → 58–60 ms, 256→256 at 8×32×32
// (ResEnc-M's 11 stage-3 layers) 18.6–19.2 → 14.6; 512→256 there 37–38 → 36, left out (113 MB of
// weights). 256-channel layers had been left out for the plan's time (three more counts of groups a
// task for 256→128: 0.9 s more in the first window on the Xeon; about 0.35 s here, for 1.2 s less
// over a case's 36 windows). BHSD_WINOGRAD_F444=0 leaves them out (for the bench).
inline bool deep_applies(const ConvGeom& g) {
  static const bool env_off = [] {
    const char* e = std::getenv("BHSD_WINOGRAD_F444");
    return e && e[0] == '0' && !e[1];
  }();
  if (is_s2(g))  // 1×2×2-strided: 150 points per 4×2×2 outputs instead of 100 per 2×2×2 (see "Stride 2")
    return !env_off && g.sd == 1 && g.Do >= 8 && g.C * g.Co <= 256 * 256 && tile_code(g) == 2;
  return !env_off && g.kd == 3 && g.Do >= 8 && g.C * g.Co <= 256 * 256 && tile_code(g) == 4;
}
// deep_applies as an fp32 call of this thread would see it (a bf16 call's fp32 candidates).
inline bool deep_applies_fp32(const ConvGeom& g) {
  const PrecisionScope fp32(Precision::fp32);
  return deep_applies(g);
}

// Transform points (a strided 3×3×3 layer, is_s2: 4·5² = 100 for 1×2×2 — 6·5² = 150 with F(4, 3)
// along D —, 5³ = 125 for 2×2×2): for a 3×3×3 kernel 4³ = 64
// (F(2×2×2, 3×3×3)), 4·6² = 144 (F(2×4×4, 3×3×3): output tiles of 2×4×4 from input tiles of 4×6×6) or 6³ = 216
// (F(4×4×4, 3×3×3)); for 1×3×3 (per plane) 4² = 16 (F(2×2, 3×3): output tiles of 1×2×2 from 1×4×4) or 6² = 36 (F(4×4,
// 3×3): 1×4×4 from 1×6×6).
inline int points(const ConvGeom& g) {
  if (is_s2(g)) return g.sd == 2 ? 125 : tile_code(g) == 8 ? 150 : 100;
  const int c = tile_code(g);
  return g.kd == 3 ? (c == 8 ? 216 : c == 4 ? 144 : 64) : c >= 4 ? 36 : 16;
}

// float → bf16, rounded to nearest even as vcvtneps2bf16 rounds (a NaN stays a quiet NaN).
inline std::uint16_t bf16_of(float f) {
  std::uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7FFFFFFFu) > 0x7F800000u) return std::uint16_t((u >> 16) | 0x40u);
  u += 0x7FFFu + ((u >> 16) & 1u);
  return std::uint16_t(u >> 16);
}

// Whether this call uses bf16 products: its thread's precision asks for them, the processor has them,
// and no training call holds the precise tiles (preciseConvolutions: gradients are compared with
// PyTorch's in fp32).
inline bool use_bf16() {
  return call_precision() == Precision::bf16 && precise_tiles().load(std::memory_order_relaxed) == 0 &&
         bf16_available();
}
// Whether a bf16 call's per-point products run on AMX tiles (amx_tiles.hpp): where the processor has
// them and both channel counts fill a tile's 16 rows (a point's V rows then have room for the zero
// rows that complete its last chunk of 16 channel pairs).
// tiles_off(): the tests' switch (the same products with vdpbf16ps, to compare).
inline std::atomic<bool>& tiles_off() {
  static std::atomic<bool> off{false};
  return off;
}
inline bool use_tiles(const ConvGeom& g, bool bf) {
  return bf && !is_s2(g) && g.C >= 16 && g.Co >= 16 && amx_available() && !tiles_off().load(std::memory_order_relaxed);
}
// Chunks of 16 channel pairs (a tile's K) per point.
inline std::int64_t tile_chunks(const ConvGeom& g) { return ((g.C + 1) / 2 + 15) / 16; }
// 32-bit words (floats, or pairs of bf16) of a layer's transformed weights; `tiles`: as AMX tiles,
// 16 output channels × 16 pairs each, ⌈Co/16⌉ × P × tile_chunks of them.
inline std::size_t u_words(const ConvGeom& g, bool bf, bool tiles = false) {
  const int P = points(g);
  if (tiles) return std::size_t((g.Co + 15) / 16 * P * tile_chunks(g) * 256);
  if (!bf) return std::size_t(P * packed_conv_size(g.Co, g.C));
  return std::size_t(CoBlocks(g.Co).count() * P * ((g.C + 1) / 2) * MR);
}

// Where BHSD_WINOGRAD says: 0 off, 1 on, anything else (or unset) the measured plan.
enum class Mode { off, on, plan };
inline Mode mode() {
  static const Mode m = [] {
    const char* e = std::getenv("BHSD_WINOGRAD");
    if (e && e[0] == '0' && !e[1]) return Mode::off;
    if (e && e[0] == '1' && !e[1]) return Mode::on;
    return Mode::plan;
  }();
  return m;
}

// The process's buffer for transformed weights of layers too big for the weight cache (see
// conv_common.hpp's LentBuffer; its own buffer beside the indirect convolution's slab).
using WeightLease = conv_detail::LentBuffer<struct WinogradWeightTag>;
// All groups' V and M where the threads split a layer's points (conv3d_forward_winograd).
using SplitLease = conv_detail::LentBuffer<struct WinogradSplitTag>;

// U_p = G w Gᵀ per axis, from the direct path's packed weights (w[co][ci·27 + a·9 + b·3 + c] at
// wp[(blk·K + k)·MR + r]), into CoBlocks' blocks of packed [Co × C] matrices, block-major:
// U[((blk·64 + p)·C + ci)·MR + r] (the slots of a short block's missing rows 0). The micro-kernel
// reads point p as a convolution's packed weights of K = 64·C whose first C rows it uses
// (kernel_blocks(U + p·C·MR, 64·C, …, kbn = C)). Block-major keeps each task's writes within its
// block's 64·C·MR floats (point-major writes strode over 64 distant pages: 256→256 took 43 ms).
// In double: 27 products per point. 8 input channels at a time are staged ([ci][r][p], up to 27 KB).
// A 1×3×3 kernel: the same with one plane (9 weights, 16 points, U[((blk·16 + p)·C + ci)·MR + r]).
// F(4×4) tiles: G of F(4, 3) along W and H (36 points a plane), for 3×3×3 then F(2, 3)'s along D
// (144 points, p = 36·z + 6·y + x).
// bf16 (setCpuPrecision("bf16")): the same blocks with each point's C rows of MR floats as ⌈C/2⌉
// rows of MR 32-bit words, word (kp, r) holding U[2kp][r] (low half) and U[2kp + 1][r] (high half,
// 0 past an odd C) rounded to bf16 — the pairs vdpbf16ps multiplies with a pair of V's rows.
// tiles (bf16 on AMX, use_tiles): per block of 16 output channels, point and chunk of 32 input
// channels, an A tile of 16 rows (output channels) × 16 words (pairs of input channels, low half
// the even one): word ((o·P + p)·chunks + ch)·256 + r·16 + j holds channels 32ch + 2j, + 1 of output
// 16o + r; 0 past Co and past C.
inline void transform_weights(const ConvGeom& g, const float* wp, void* Uv, ThreadPool& pool, bool bf = false,
                              bool tiles = false) {
  const CoBlocks cbk(g.Co);
  const std::int64_t chunks = tiles ? tile_chunks(g) : 0;
  if (tiles)  // the padding's zeros (every block writes only its own channels' words)
    std::memset(Uv, 0, u_words(g, bf, true) * sizeof(std::uint32_t));
  const std::int64_t K = g.K(), C = g.C, run = C * MR;
  const int P = points(g), KS = int(g.kd) * 9, A = int(g.kd);  // points, weights and planes per (co, ci)
  constexpr std::int64_t CB = 8;
  constexpr int PMAX = 216;
  pool.parallel_for(
      std::size_t(cbk.count()),
      [&](std::size_t t0, std::size_t t1) {
        alignas(64) float stage[CB * MR * PMAX];
        for (std::size_t t = t0; t < t1; ++t) {
          const std::int64_t blk = std::int64_t(t), rows = cbk.rows(blk);
          for (std::int64_t c0 = 0; c0 < C; c0 += CB) {
            const std::int64_t cn = std::min(CB, C - c0);
            std::fill(stage, stage + cn * MR * P, 0.0f);
            for (std::int64_t cq = 0; cq < cn; ++cq)
              for (std::int64_t r = 0; r < rows; ++r) {
                double w[27];
                for (int k = 0; k < KS; ++k) w[k] = wp[(blk * K + (c0 + cq) * KS + k) * MR + r];
                float* sp = stage + (cq * MR + r) * P;
                // F(4, 3)'s G on three values, by the reciprocals (divisions had made this transform
                // 2× slower: a model's first window transforms all of its weights, ResEnc-M's 1.2 GB)
                auto g6 = [](double v0, double v1, double v2, double* o) {
                  constexpr double k6 = 1.0 / 6, k12 = 1.0 / 12, k24 = 1.0 / 24;
                  o[0] = v0 * 0.25, o[1] = -(v0 + v1 + v2) * k6, o[2] = -(v0 - v1 + v2) * k6;
                  o[3] = v0 * k24 + v1 * k12 + v2 * k6, o[4] = v0 * k24 - v1 * k12 + v2 * k6, o[5] = v2;
                };
                if (P == 100 || P == 125 || P == 150) {
                  // strides 1×2×2 / 2×2×2: bt5s2's G along W, then H (point 5·y + x), then F(2, 3)'s,
                  // bt5s2's or F(4, 3)'s along D (point 25·z + 5·y + x)
                  auto g5 = [](double v0, double v1, double v2, double* o) {
                    o[0] = v1, o[1] = v1, o[2] = v0, o[3] = v0 + v2, o[4] = v2;
                  };
                  double h[3][5], c5[5], pl[3][25];
                  for (int a = 0; a < 3; ++a) {
                    for (int b = 0; b < 3; ++b) g5(w[a * 9 + b * 3], w[a * 9 + b * 3 + 1], w[a * 9 + b * 3 + 2], h[b]);
                    for (int x = 0; x < 5; ++x) {
                      g5(h[0][x], h[1][x], h[2][x], c5);
                      for (int y = 0; y < 5; ++y) pl[a][y * 5 + x] = c5[y];
                    }
                  }
                  for (int i = 0; i < 25; ++i) {
                    const double v0 = pl[0][i], v1 = pl[1][i], v2 = pl[2][i];
                    if (P == 125) {
                      g5(v0, v1, v2, c5);
                      for (int z = 0; z < 5; ++z) sp[25 * z + i] = float(c5[z]);
                      continue;
                    }
                    if (P == 150) {
                      double c6[6];
                      g6(v0, v1, v2, c6);
                      for (int z = 0; z < 6; ++z) sp[25 * z + i] = float(c6[z]);
                      continue;
                    }
                    sp[i] = float(v0), sp[25 + i] = float(0.5 * (v0 + v1 + v2)),
                    sp[50 + i] = float(0.5 * (v0 - v1 + v2)), sp[75 + i] = float(v2);
                  }
                  continue;
                }
                if (P == 36 || P == 144 || P == 216) {
                  // F(4×4, 3×3) per plane: G along W, then H (y along H, x along W: point 6·y + x);
                  // for 3×3×3 then F(2, 3)'s G along D (point 36·z + 6·y + x)
                  double h[3][6], c6[6], pl[3][36];
                  for (int a = 0; a < A; ++a) {
                    for (int b = 0; b < 3; ++b) g6(w[a * 9 + b * 3], w[a * 9 + b * 3 + 1], w[a * 9 + b * 3 + 2], h[b]);
                    for (int x = 0; x < 6; ++x) {
                      g6(h[0][x], h[1][x], h[2][x], c6);
                      for (int y = 0; y < 6; ++y) pl[a][y * 6 + x] = c6[y];
                    }
                  }
                  for (int i = 0; i < 36; ++i) {
                    if (P == 216) {  // F(4, 3)'s G along D too (point 36·z + 6·y + x, z < 6)
                      g6(pl[0][i], pl[1][i], pl[2][i], c6);
                      for (int z = 0; z < 6; ++z) sp[36 * z + i] = float(c6[z]);
                      continue;
                    }
                    if (A == 1) {
                      sp[i] = float(pl[0][i]);
                      continue;
                    }
                    const double v0 = pl[0][i], v1 = pl[1][i], v2 = pl[2][i];
                    sp[i] = float(v0), sp[36 + i] = float(0.5 * (v0 + v1 + v2)),
                    sp[72 + i] = float(0.5 * (v0 - v1 + v2)), sp[108 + i] = float(v2);
                  }
                  continue;
                }
                // F(2×2×2) / F(2×2): G along W, then H, then D: (g0, g1, g2) → (g0, (g0+g1+g2)/2,
                // (g0−g1+g2)/2, g2)
                double a1[3][3][4], a2[3][4][4] = {}, u[4][4][4];  // a 1×3×3 kernel leaves planes 1, 2 of a2 at 0
                for (int a = 0; a < A; ++a)
                  for (int b = 0; b < 3; ++b) {
                    const double* v = w + a * 9 + b * 3;
                    a1[a][b][0] = v[0], a1[a][b][1] = 0.5 * (v[0] + v[1] + v[2]),
                    a1[a][b][2] = 0.5 * (v[0] - v[1] + v[2]), a1[a][b][3] = v[2];
                  }
                for (int a = 0; a < A; ++a)
                  for (int x = 0; x < 4; ++x) {
                    const double v0 = a1[a][0][x], v1 = a1[a][1][x], v2 = a1[a][2][x];
                    a2[a][0][x] = v0, a2[a][1][x] = 0.5 * (v0 + v1 + v2), a2[a][2][x] = 0.5 * (v0 - v1 + v2),
                    a2[a][3][x] = v2;
                  }
                for (int y = 0; y < 4; ++y)
                  for (int x = 0; x < 4; ++x) {
                    const double v0 = a2[0][y][x], v1 = a2[1][y][x], v2 = a2[2][y][x];
                    u[0][y][x] = v0, u[1][y][x] = 0.5 * (v0 + v1 + v2), u[2][y][x] = 0.5 * (v0 - v1 + v2),
                    u[3][y][x] = v2;
                  }
                for (int p = 0; p < P; ++p)
                  sp[p] = float(u[p >> 4][(p >> 2) & 3][p & 3]);  // P = 16: u[0], the plane itself
              }
            if (bf && tiles) {
              auto* U32 = static_cast<std::uint32_t*>(Uv);
              for (std::int64_t r = 0; r < rows; ++r) {
                const std::int64_t co = cbk.row0(blk) + r, o = co / 16;
                for (int p = 0; p < P; ++p)
                  for (std::int64_t cq = 0; cq < cn; cq += 2) {
                    const std::int64_t ci = c0 + cq;  // even: c0 is a multiple of CB
                    const std::uint32_t lo = bf16_of(stage[(cq * MR + r) * P + p]),
                                        hi = cq + 1 < cn ? bf16_of(stage[((cq + 1) * MR + r) * P + p]) : 0u;
                    U32[((o * P + p) * chunks + ci / 32) * 256 + (co % 16) * 16 + (ci % 32) / 2] = lo | hi << 16;
                  }
              }
              continue;
            }
            if (bf) {
              const std::int64_t KP = (C + 1) / 2;
              for (int p = 0; p < P; ++p) {
                std::uint32_t* dst = static_cast<std::uint32_t*>(Uv) + ((blk * P + p) * KP + c0 / 2) * MR;
                for (std::int64_t cq = 0; cq < cn; cq += 2)
                  for (std::int64_t r = 0; r < MR; ++r) {
                    const std::uint32_t lo = bf16_of(stage[(cq * MR + r) * P + p]),
                                        hi = cq + 1 < cn ? bf16_of(stage[((cq + 1) * MR + r) * P + p]) : 0u;
                    dst[(cq / 2) * MR + r] = lo | hi << 16;
                  }
              }
              continue;
            }
            for (int p = 0; p < P; ++p) {
              float* dst = static_cast<float*>(Uv) + (blk * P + p) * run + c0 * MR;
              for (std::int64_t q = 0; q < cn * MR; ++q) dst[q] = stage[q * P + p];
            }
          }
        }
      },
      1, 4);
}

// Transformed weights kept for the next call with the same weights (a model's layers run once per
// window: a 256→256 layer's transform cost a third of its time). Found by content, not address
// (the addon packs weights it was not given packed into a fresh buffer per call): the layer's
// shape and a 256-bit hash of all of the packed weights (4 independent 64-bit lanes, about 1 ms for
// a 512→256 layer's 14 MB) — weights changed in place (training) are a miss. No copy of the
// weights is kept (it had doubled the cache, and kept the 320- and 512-channel layers out of it:
// they were transformed on every call, which cost as much as the products). One engine block per
// entry (huge pages: 26 MB of fresh 4 KB pages cost ~100 ms of faults here), least recently used
// evicted past 512 MB (an nnU-Net 3d_fullres network's 3×3×3 layers need 215 MB); a layer needing
// over 256 MB is transformed per call into the lease instead.
struct WeightEntry {
  std::int64_t Co, C;
  int P;           // transform points (Winograd; 0 for the direct path's tiles)
  bool bf;         // bf16 pairs (transform_weights' bf) rather than floats
  int layout;      // WeightLayout
  std::size_t nw;  // floats of packed weights
  std::array<std::uint64_t, 4> hash;
  std::size_t size;              // bytes of block in use
  std::shared_ptr<Block> block;  // U (P · C · MR floats a block, or bf16 pairs; 64-byte aligned)
  std::size_t bytes() const { return size; }
  const void* U() const { return block->data(); }
};
// How an entry's weights are laid out: Winograd's blocks of MR (floats or bf16 pairs), Winograd's
// per-point AMX tiles (transform_weights' tiles), the AMX direct path's tiles and its implicit
// path's tiles (conv_amx.hpp), and a transposed convolution's upsampling as one packed [Co·taps, C]
// matrix (conv_transposed.hpp).
enum WeightLayout : int {
  kWinogradBlocks = 0,
  kWinogradTiles = 1,
  kDirectTiles = 2,
  kImplicitTiles = 3,
  kUpsamplePacked = 4
};

// The weights' identity for the cache: each 1 MB chunk hashed in eight 64-bit lanes, each word
// xor-multiplied and folded (each step a bijection of the lane for a given word, and of the word
// for a given lane, so a changed word changes its lane), the chunks' lanes folded in order into
// four, plus the length. Chunks are fixed in size, so the value does not depend on the threads.
// Not a cryptographic hash: it tells weights apart, it does not resist forgery (who can write the
// weights decides the output anyway). Every Winograd call hashes its weights (a caller may have
// changed them in place: a training step does): four dependent lanes did 6.4 GB/s on one thread,
// 60 ms of ResEnc-M's 1.8 s window; eight independent ones 10.5 GB/s (24 with AVX-512's vpmullq),
// on the pool's threads.
namespace hash_detail {
constexpr std::uint64_t kMul = 0x9E3779B97F4A7C15ull;
inline std::uint64_t mix(std::uint64_t h, std::uint64_t v) {
  h = (h ^ v) * kMul;
  return h ^ (h >> 29);
}
constexpr std::size_t kChunk = std::size_t(1) << 20;  // bytes
BHSD_MULTIVERSION_V4 inline void chunk_lanes(const unsigned char* b, std::size_t bytes, std::uint64_t* out) {
  std::uint64_t h[8];
  for (int k = 0; k < 8; ++k) h[k] = 0x243F6A8885A308D3ull + std::uint64_t(k) * 0x632BE59BD9B4E019ull;
  std::size_t i = 0;
  for (; i + 64 <= bytes; i += 64) {
    std::uint64_t v[8];
    std::memcpy(v, b + i, 64);
    for (int k = 0; k < 8; ++k) h[k] = mix(h[k], v[k]);
  }
  for (int k = 0; i < bytes; i += 4, k = (k + 1) & 7) {
    std::uint32_t v;
    std::memcpy(&v, b + i, 4);
    h[k] = mix(h[k], v);
  }
  std::memcpy(out, h, sizeof h);
}
}  // namespace hash_detail

inline std::array<std::uint64_t, 4> weights_hash(const float* w, std::size_t n, ThreadPool* pool = nullptr) {
  using namespace hash_detail;
  const auto* b = reinterpret_cast<const unsigned char*>(w);
  const std::size_t bytes = n * sizeof(float), chunks = (bytes + kChunk - 1) / kChunk;
  std::vector<std::uint64_t> lanes(chunks * 8);
  const auto run = [&](std::size_t lo, std::size_t hi) {
    for (std::size_t c = lo; c < hi; ++c)
      chunk_lanes(b + c * kChunk, std::min(kChunk, bytes - c * kChunk), lanes.data() + c * 8);
  };
  if (pool && chunks > 1)
    pool->parallel_for(chunks, run, 1, 2);
  else
    run(0, chunks);
  std::array<std::uint64_t, 4> h = {0x243F6A8885A308D3ull ^ n, 0x13198A2E03707344ull, 0xA4093822299F31D0ull,
                                    0x082EFA98EC4E6C89ull};
  for (std::size_t c = 0; c < chunks; ++c)
    for (int k = 0; k < 8; ++k) h[std::size_t(k & 3)] = mix(h[std::size_t(k & 3)], lanes[c * 8 + std::size_t(k)] ^ c);
  return h;
}

// The weights' identity as the cache keys them: the hash their block's maker stored (packed once
// and never written again: a loaded model's, packConvWeights), else weights_hash now.
// (pool null: hashed on this thread — the addon's forgetWeights, a few MB at a model's dispose)
inline std::array<std::uint64_t, 4> weights_identity(const float* w, std::size_t n, ThreadPool* pool) {
  if (const auto b = Block::find(w, n * sizeof(float)))
    if (const auto* h = b->content_hash(w, n * sizeof(float))) return *h;
  return weights_hash(w, n, pool);
}
inline std::array<std::uint64_t, 4> weights_identity(const float* w, std::size_t n, ThreadPool& pool) {
  return weights_identity(w, n, &pool);
}

class WeightCache {
 public:
  static constexpr std::size_t kEntryMax = std::size_t(256) << 20;
  // Capacity: BHSD_WINOGRAD_CACHE_MB where set, else an eighth of the machine's memory within
  // [256 MB, 2 GB]. ResEnc-M's layers need ~1.2 GB since F(2×4×4) tiles (144 points a weight
  // pair; ~1.5 GB since its 256-channel layers take F(4×4×4) ones, 216 points): at 1 GB (a sixteenth) its deepest
  // decoder and stage-4/5 layers, ~140 MB of transformed weights, were transformed again by every window into fresh
  // buffers (transform 2.5 % and page clearing 2.4 % of a steady window in perf; 2 GB ran the window 1.96 → 1.88 s,
  // medians of three alternating processes of three runs each).
  static std::size_t default_cap() {
    if (const char* e = std::getenv("BHSD_WINOGRAD_CACHE_MB")) {
      char* end = nullptr;
      const unsigned long long mb = std::strtoull(e, &end, 10);
      if (end != e && !*end && mb <= (1ull << 20)) return std::size_t(mb) << 20;
    }
    std::uint64_t phys = 0;
#if defined(_SC_PHYS_PAGES) && defined(_SC_PAGESIZE)
    const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
    if (pages > 0 && page > 0) phys = std::uint64_t(pages) * std::uint64_t(page);
#endif
    return std::size_t(std::clamp<std::uint64_t>(phys / 8, std::uint64_t(256) << 20, std::uint64_t(2) << 30));
  }
  std::size_t cap = default_cap();  // (the tests set it)
  std::size_t hits = 0, misses = 0;
  // An entry used within this long is not evicted to make room: a model whose layers need more
  // than cap would otherwise evict, in least-recently-used order, exactly the entry its next
  // layer needs, and miss on every layer of every window (ResEnc-M's F(2×2×2) layers need ~600 MB:
  // it re-transformed all of them, ~190 ms a window). The newcomer is transformed per call instead
  // (the caller's lease), and what fits stays cached; another model's entries age out and give way.
  static constexpr std::chrono::seconds kBusy{10};
  std::chrono::steady_clock::duration busy = kBusy;  // the tests' switch
  static WeightCache& instance() {
    static WeightCache c;
    return c;
  }
  WeightCache() {
    detail::on_hashed_free().store([](const std::array<std::uint64_t, 4>& h) { instance().forget(h); });
  }
  ~WeightCache() { detail::on_hashed_free().store(nullptr); }  // (at exit: blocks freed later tell nobody)
  WeightCache(const WeightCache&) = delete;
  WeightCache& operator=(const WeightCache&) = delete;
  // The transformed weights of wp, from the cache or made now; null when they would not fit it
  // (too big, the cache full of entries in use, or memory ran out): the caller transforms into a
  // buffer of its own.
  std::shared_ptr<const WeightEntry> get(const ConvGeom& g, const float* wp, ThreadPool& pool, bool bf = false,
                                         bool tiles = false) {
    return get_as(g, wp, pool, points(g), bf, tiles ? kWinogradTiles : kWinogradBlocks,
                  u_words(g, bf, tiles) * sizeof(float),
                  [&](void* U) { transform_weights(g, wp, U, pool, bf, tiles); });
  }
  // The same for weights laid out as `layout` says (with P points; another path's: kDirectTiles),
  // `bytes` long, which make(U) writes from wp.
  template <class Make>
  std::shared_ptr<const WeightEntry> get_as(const ConvGeom& g, const float* wp, ThreadPool& pool, int P, bool bf,
                                            int layout, std::size_t bytes, const Make& make) {
    return get_raw(g, wp, std::size_t(packed_conv_size(g.Co, g.K())), pool, P, bf, layout, bytes, make);
  }
  // The same for the nw floats at w in any form (a transposed convolution's weights as the caller
  // gave them: kUpsamplePacked), identified by g's C and Co, P, layout and their hash.
  template <class Make>
  std::shared_ptr<const WeightEntry> get_raw(const ConvGeom& g, const float* wp, std::size_t nw, ThreadPool& pool,
                                             int P, bool bf, int layout, std::size_t bytes, const Make& make) {
    if (bytes > kEntryMax || bytes > cap) return nullptr;
    const std::array<std::uint64_t, 4> hash = weights_identity(wp, nw, pool);
    const auto now = std::chrono::steady_clock::now();
    {
      std::lock_guard<std::mutex> lk(m_);
      const auto it = find(g, P, bf, layout, nw, hash);
      if (it != lru_.end()) {
        it->used = now;
        ++hits;
        lru_.splice(lru_.begin(), lru_, it);  // most recently used
        return lru_.begin()->e;
      }
      ++misses;
      // room: evict idle entries from the least recently used end; none in use
      while (bytes_ + bytes > cap && !lru_.empty() && now - lru_.back().used >= busy) {
        bytes_ -= lru_.back().e->bytes();
        lru_.pop_back();  // a call still using it holds its own reference
      }
      if (bytes_ + bytes > cap) return nullptr;
      bytes_ += bytes;  // reserved while the transform runs unlocked
    }
    auto e = std::make_shared<WeightEntry>();
    e->Co = g.Co, e->C = g.C, e->P = P, e->bf = bf, e->layout = layout, e->nw = nw, e->hash = hash, e->size = bytes;
    try {
      e->block = Block::allocate(bytes, false, false);  // (its size exactly: the cap counts it)
    } catch (const std::bad_alloc&) {
      std::lock_guard<std::mutex> lk(m_);
      bytes_ -= bytes;
      return nullptr;
    }
    try {
      make(const_cast<void*>(e->U()));
    } catch (...) {  // cancelled (or failed): the reservation goes back
      std::lock_guard<std::mutex> lk(m_);
      bytes_ -= bytes;
      throw;
    }
    std::lock_guard<std::mutex> lk(m_);
    lru_.push_front({e, now});
    return e;
  }
  // Forgets the transformed weights of wp for g as get() would find them (P points, bf, tiles):
  // the plan's candidates that lost, which no later call of the layer asks for — kept, a model's
  // losers (F(2×2×2) beside every F(2×4×4) layer: ~190 MB for ResEnc-M) had filled the cache that
  // its chosen ones need.
  void drop(const ConvGeom& g, const float* wp, ThreadPool& pool, bool bf = false, bool tiles = false) {
    const std::size_t nw = std::size_t(packed_conv_size(g.Co, g.K()));
    const int P = points(g), layout = tiles ? kWinogradTiles : kWinogradBlocks;
    const std::array<std::uint64_t, 4> hash = weights_identity(wp, nw, pool);
    std::lock_guard<std::mutex> lk(m_);
    const auto it = find(g, P, bf, layout, nw, hash);
    if (it == lru_.end()) return;
    bytes_ -= it->e->bytes();
    lru_.erase(it);  // a call still using it holds its own reference
  }
  // Forgets every form of the weights whose hash (weights_identity) is `hash`: their owner let them
  // go, so no later call asks for them — the addon's detach of a disposed model's packed weights
  // calls it at once, and the block that held them when it is freed (detail::on_hashed_free, after
  // a call still running on them has let go: an entry that call made meanwhile goes too). Kept, they
  // held their memory until another model's weights evicted them — the 340 MB of the nnU-Net-shaped
  // PlainConvUNet's transforms, ResEnc-M's 1.2 GB, for the life of the process after dispose() —
  // and, where the cache cannot hold two models (an eighth of the machine's memory: 1 GB on 8 GB),
  // a model loaded next had transformed its layers per call for their first 10 s (busy). Other
  // holders of identical weights find them missing and transform them again (their speed only); a
  // call still using an entry keeps its own reference. Returns the bytes forgotten.
  std::size_t forget(const std::array<std::uint64_t, 4>& hash) {
    std::lock_guard<std::mutex> lk(m_);
    std::size_t freed = 0;
    for (auto it = lru_.begin(); it != lru_.end();)
      if (it->e->hash == hash) {
        freed += it->e->bytes();
        it = lru_.erase(it);
      } else
        ++it;
    bytes_ -= freed;
    return freed;
  }
  std::size_t entries() {
    std::lock_guard<std::mutex> lk(m_);
    return lru_.size();
  }
  std::size_t bytes() {
    std::lock_guard<std::mutex> lk(m_);
    return bytes_;
  }
  void clear() {  // calls using an entry keep their own reference
    std::lock_guard<std::mutex> lk(m_);
    lru_.clear();
    bytes_ = 0;
  }

 private:
  struct Slot {
    std::shared_ptr<const WeightEntry> e;
    std::chrono::steady_clock::time_point used;
  };
  std::mutex m_;
  std::list<Slot> lru_;
  std::size_t bytes_ = 0;
  // the entry of these weights in this form (m_ held), or lru_.end()
  std::list<Slot>::iterator find(const ConvGeom& g, int P, bool bf, int layout, std::size_t nw,
                                 const std::array<std::uint64_t, 4>& hash) {
    for (auto it = lru_.begin(); it != lru_.end(); ++it)
      if (it->e->Co == g.Co && it->e->C == g.C && it->e->P == P && it->e->bf == bf && it->e->layout == layout &&
          it->e->nw == nw && it->e->hash == hash)
        return it;
    return lru_.end();
  }
};

// A group's lanes, cut where the tile grid's rows end: lanes j0 … j1 − 1 are tiles tw0 … of tile
// row (td, th), whose input tiles start at plane id0, row ih0 and column iw0 (+ m·stride per lane)
// and output tiles at od0, oh0, ow0 (+ m per lane).
struct Seg {
  int j0, j1;
  std::int64_t id0, ih0, iw0, od0, oh0, ow0;
};
struct Group {
  int n = 0, nseg = 0;
  Seg seg[TL];
};

// dz: output planes per tile (2, or 1 for a 1×3×3 kernel); m: output rows and columns per tile (2, or 4
// for F(4×4, 3×3)).
inline Group group_of(const ConvGeom& g, std::int64_t dz, std::int64_t m, std::int64_t TH, std::int64_t TW,
                      std::int64_t T, std::int64_t gi) {
  Group gr;
  const std::int64_t t0 = gi * TL, t1 = std::min(T, t0 + TL);
  gr.n = int(t1 - t0);
  for (std::int64_t t = t0; t < t1;) {
    const std::int64_t row = t / TW, tw = t % TW, td = row / TH, th = row % TH;
    const std::int64_t len = std::min(t1 - t, TW - tw);
    const std::int64_t j0 = t - t0;
    gr.seg[gr.nseg++] = {
        int(j0), int(j0 + len), dz * td * g.sd - g.pd, m * th * g.sh - g.ph, m * tw * g.sw - g.pw, dz * td,
        m * th,  m * tw};
    t += len;
  }
  return gr;
}

#ifdef BHSD_X86
// 16 lanes as two AVX registers.
struct L16 {
  __m256 a, b;
};
#define BHSD_WT __attribute__((target("avx2,fma"))) inline
BHSD_WT L16 ld(const float* p) { return {_mm256_load_ps(p), _mm256_load_ps(p + 8)}; }
BHSD_WT void st(float* p, L16 v) { _mm256_store_ps(p, v.a), _mm256_store_ps(p + 8, v.b); }
// A store into V: streaming (non-temporal — past the caches, without reading the line in first)
// where nt says V is too large for them to hold until the products read it (stream_v_bytes).
BHSD_WT void st_v(float* p, __m256 v, bool nt) {
  if (nt)
    _mm256_stream_ps(p, v);
  else
    _mm256_store_ps(p, v);
}
BHSD_WT void st_v(float* p, L16 v, bool nt) { st_v(p, v.a, nt), st_v(p + 8, v.b, nt); }
BHSD_WT L16 add(L16 x, L16 y) { return {_mm256_add_ps(x.a, y.a), _mm256_add_ps(x.b, y.b)}; }
BHSD_WT L16 sub(L16 x, L16 y) { return {_mm256_sub_ps(x.a, y.a), _mm256_sub_ps(x.b, y.b)}; }

// Evens and odds of x‖y (16 samples): ev[j] = 2j-th, od[j] = (2j + 1)-th, j < 8.
BHSD_WT void deinterleave(__m256 x, __m256 y, __m256& ev, __m256& od) {
  ev = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(_mm256_shuffle_ps(x, y, 0x88)), 0xD8));
  od = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(_mm256_shuffle_ps(x, y, 0xDD)), 0xD8));
}

// How to read samples a … a + 7 of a row of W (0 outside [0, W)): 0 a plain load at base = a;
// 1 where the window crosses an end, the 8 samples of the nearest window inside the row (at base)
// moved into place by a lane permutation (idx) and masked (keep); 2 all outside: zeros; 3 a row
// shorter than 8: sample by sample. (Masked loads, vmaskmovps, from before a row's start took 60 %
// of the transform on AMD: masked-off lanes there take a slow path.)
struct RowLoad {
  std::int64_t base;
  int kind;
  __m256i idx, keep;
};
// Samples base … base + N − 1 of a row of W one by one, 0 outside it (a row shorter than a load).
inline void row_samples(const float* row, std::int64_t base, std::int64_t W, float* v, int N) {
  for (int l = 0; l < N; ++l) v[l] = base + l >= 0 && base + l < W ? row[base + l] : 0.0f;
}
// The kind and base of a load of N samples a … a + N − 1 of a row of W (RowLoad, RowLoad16).
inline std::pair<int, std::int64_t> row_kind(std::int64_t a, std::int64_t W, std::int64_t N) {
  if (a >= 0 && a + N <= W) return {0, a};
  if (a >= W || a + N <= 0) return {2, a};
  if (W < N) return {3, a};
  return {1, std::clamp<std::int64_t>(a, 0, W - N)};
}
BHSD_WT RowLoad row_load(std::int64_t a, std::int64_t W) {
  RowLoad L{a, 0, _mm256_setzero_si256(), _mm256_setzero_si256()};
  std::tie(L.kind, L.base) = row_kind(a, W, 8);
  if (L.kind != 1) return L;
  const __m256i iota = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  L.idx =
      _mm256_add_epi32(iota, _mm256_set1_epi32(int(a - L.base)));  // lane l reads sample a + l of the window at base
  L.keep = _mm256_and_si256(_mm256_cmpgt_epi32(iota, _mm256_set1_epi32(int(-a - 1))),
                            _mm256_cmpgt_epi32(_mm256_set1_epi32(int(W - a)), iota));
  return L;
}
BHSD_WT __m256 load_row(const float* row, const RowLoad& L, std::int64_t W) {
  switch (L.kind) {
    case 0:
      return _mm256_loadu_ps(row + L.base);
    case 1:
      return _mm256_and_ps(_mm256_permutevar8x32_ps(_mm256_loadu_ps(row + L.base), L.idx), _mm256_castsi256_ps(L.keep));
    case 2:
      return _mm256_setzero_ps();
    default: {
      alignas(32) float v[8];
      row_samples(row, L.base, W, v, 8);
      return _mm256_load_ps(v);
    }
  }
}

// V for one group, every input channel: V[p·(C + 1)·16 + ci·16 + j] = (Bᵀ d_j B)[p] for lane j's input
// tile d_j (0 outside the volume; lanes past the group's n tiles are 0). Bᵀ along each axis:
// (d0, d1, d2, d3) → (d0 − d2, d1 + d2, d2 − d1, d1 − d3). W is transformed as the rows are read:
// a whole row of 16 tiles (2·16 + 2 samples) by 8 loads of 8 (samples 0, 8, 16, 24 and 2, 10, 18,
// 26 on) split into evens and odds in registers; a shorter segment through rb, sample by sample.
// ZI: input planes per tile, 4 (3×3×3) or 1 (1×3×3: no transform along D, 16 points).
template <int ZI>
BHSD_WT void input_transform(const ConvGeom& g, const float* in, const Group& gr, float* V, bool nt = false) {
  alignas(64) float t[ZI * 16 * TL];  // [z][y][x][lane]
  alignas(64) float rb[40];
  const std::int64_t plane = g.H * g.W, vol = g.D * plane, C = g.C;
  const bool whole = gr.nseg == 1 && gr.n == TL;
  static const int off[8] = {0, 8, 16, 24, 2, 10, 18, 26};
  RowLoad ld8[TL][8];
  for (int s = 0; s < gr.nseg; ++s)
    for (int q = 0; q < 8; ++q) ld8[s][q] = row_load(gr.seg[s].iw0 + off[q], g.W);
  for (std::int64_t ci = 0; ci < C; ++ci) {
    const float* x = in + ci * vol;
    for (int zy = 0; zy < ZI * 4; ++zy) {
      const int z = zy >> 2, y = zy & 3;
      float* tz = t + zy * 4 * TL;
      if (!whole) std::memset(tz, 0, 4 * TL * sizeof(float));
      for (int s = 0; s < gr.nseg; ++s) {
        const Seg& sg = gr.seg[s];
        const std::int64_t id = sg.id0 + z, ih = sg.ih0 + y;
        const int n = sg.j1 - sg.j0, len = 2 * n + 2;
        if (id < 0 || id >= g.D || ih < 0 || ih >= g.H) {
          if (whole) std::memset(tz, 0, 4 * TL * sizeof(float));
          continue;
        }
        const float* row = x + id * plane + ih * g.W;
        // the next tile row's new input rows (2 further on): channels' planes lie too far apart for
        // the hardware prefetcher to follow 16·C streams
        if (y >= 2 && ih + 2 < g.H) conv_detail::prefetch_row(row + 2 * g.W, std::max<std::int64_t>(0, sg.iw0));
        if (n == TL) {
          __m256 v[8];
          for (int q = 0; q < 8; ++q) v[q] = load_row(row, ld8[s][q], g.W);
          __m256 e0a, e1a, e0b, e1b, e2a, e3a, e2b, e3b;
          deinterleave(v[0], v[1], e0a, e1a), deinterleave(v[2], v[3], e0b, e1b);
          deinterleave(v[4], v[5], e2a, e3a), deinterleave(v[6], v[7], e2b, e3b);
          const L16 e0{e0a, e0b}, e1{e1a, e1b}, e2{e2a, e2b}, e3{e3a, e3b};
          st(tz, sub(e0, e2)), st(tz + TL, add(e1, e2)), st(tz + 2 * TL, sub(e2, e1)), st(tz + 3 * TL, sub(e1, e3));
        } else {
          for (int q = 0; q < (len + 7) / 8; ++q)
            _mm256_store_ps(rb + 8 * q, load_row(row, ld8[s][q], g.W));  // off[q] = 8q, len ≤ 32
          for (int j = 0; j < n; ++j) {
            const float* e = rb + 2 * j;
            const int l = sg.j0 + j;
            tz[l] = e[0] - e[2], tz[TL + l] = e[1] + e[2], tz[2 * TL + l] = e[2] - e[1], tz[3 * TL + l] = e[1] - e[3];
          }
        }
      }
    }
    // along H (in place), then along D into V
    for (int z = 0; z < ZI; ++z)
      for (int xq = 0; xq < 4; ++xq) {
        float* p0 = t + ((z * 4 + 0) * 4 + xq) * TL;
        const L16 s0 = ld(p0), s1 = ld(p0 + 4 * TL), s2 = ld(p0 + 8 * TL), s3 = ld(p0 + 12 * TL);
        st(p0, sub(s0, s2)), st(p0 + 4 * TL, add(s1, s2)), st(p0 + 8 * TL, sub(s2, s1)), st(p0 + 12 * TL, sub(s1, s3));
      }
    float* v = V + ci * TL;
    const std::int64_t ps = point_stride(C);
    if (ZI == 1) {
      for (int yx = 0; yx < 16; ++yx) st_v(v + yx * ps, ld(t + yx * TL), nt);
      continue;
    }
    for (int yx = 0; yx < 16; ++yx) {
      const float* p0 = t + yx * TL;
      const L16 s0 = ld(p0), s1 = ld(p0 + 16 * TL), s2 = ld(p0 + 32 * TL), s3 = ld(p0 + 48 * TL);
      st_v(v + (0 * 16 + yx) * ps, sub(s0, s2), nt), st_v(v + (1 * 16 + yx) * ps, add(s1, s2), nt);
      st_v(v + (2 * 16 + yx) * ps, sub(s2, s1), nt), st_v(v + (3 * 16 + yx) * ps, sub(s1, s3), nt);
    }
  }
}

BHSD_WT __m256 act8(__m256 q, __m256 slope) {
  return _mm256_blendv_ps(_mm256_mul_ps(q, slope), q, _mm256_cmp_ps(q, _mm256_setzero_ps(), _CMP_GT_OQ));
}
BHSD_WT L16 act16(L16 v, Act act, float alpha) {
  if (act == Act::none) return v;
  const __m256 slope = _mm256_set1_ps(act == Act::relu ? 0.0f : alpha);
  return {act8(v.a, slope), act8(v.b, slope)};
}

// Y = Aᵀ M A for one group, every output channel, + bias, activation, stored where the output
// exists. Aᵀ along each axis: (m0, m1, m2, m3) → (m0 + m1 + m2, m1 − m2 − m3).
// ZI = 1 (a 1×3×3 kernel): 16 points, no transform along D, tiles of one output plane.
template <int ZI>
BHSD_WT void output_transform(const ConvGeom& g, const Group& gr, const float* M, const float* bias, float* out,
                              Act act, float alpha) {
  constexpr int ZO = ZI == 4 ? 2 : 1;  // output planes per tile
  alignas(64) float r1[ZO * 16 * TL];  // [zo][y][x][lane]
  alignas(64) float r3[ZO * 4 * TL];   // [zo][yo][xo][lane]
  const std::int64_t plane = g.Ho * g.Wo, vol = g.Do * plane, Co = g.Co, ps = point_stride(Co);
  const Seg& s0 = gr.seg[0];
  const bool fast =
      gr.nseg == 1 && gr.n == TL && s0.od0 + ZO - 1 < g.Do && s0.oh0 + 1 < g.Ho && s0.ow0 + 2 * TL <= g.Wo;
  for (std::int64_t co = 0; co < Co; ++co) {
    const float* m = M + co * TL;
    if (ZI == 1)
      for (int yx = 0; yx < 16; ++yx) st(r1 + yx * TL, ld(m + yx * ps));
    else
      for (int yx = 0; yx < 16; ++yx) {
        const L16 m0 = ld(m + (0 * 16 + yx) * ps), m1 = ld(m + (1 * 16 + yx) * ps), m2 = ld(m + (2 * 16 + yx) * ps),
                  m3 = ld(m + (3 * 16 + yx) * ps);
        st(r1 + yx * TL, add(add(m0, m1), m2)), st(r1 + (16 + yx) * TL, sub(sub(m1, m2), m3));
      }
    const __m256 bv = _mm256_set1_ps(bias ? bias[co] : 0.0f);
    const L16 b16{bv, bv};
    for (int zo = 0; zo < ZO; ++zo) {
      L16 h[2][4];
      for (int xq = 0; xq < 4; ++xq) {
        const float* p = r1 + (zo * 16 + xq) * TL;
        const L16 a0 = ld(p), a1 = ld(p + 4 * TL), a2 = ld(p + 8 * TL), a3 = ld(p + 12 * TL);
        h[0][xq] = add(add(a0, a1), a2), h[1][xq] = sub(sub(a1, a2), a3);
      }
      for (int yo = 0; yo < 2; ++yo) {
        const L16* q = h[yo];
        st(r3 + ((zo * 2 + yo) * 2 + 0) * TL, act16(add(add(add(q[0], q[1]), q[2]), b16), act, alpha));
        st(r3 + ((zo * 2 + yo) * 2 + 1) * TL, act16(add(sub(sub(q[1], q[2]), q[3]), b16), act, alpha));
      }
    }
    float* oc = out + co * vol;
    if (fast) {
      // 16 tiles along one row: columns ow0 … ow0 + 31 of 4 output rows, xo = 0 and 1 interleaved
      for (int zy = 0; zy < ZO * 2; ++zy) {
        float* o = oc + (s0.od0 + (zy >> 1)) * plane + (s0.oh0 + (zy & 1)) * g.Wo + s0.ow0;
        for (int h8 = 0; h8 < 2; ++h8) {
          const __m256 x0 = _mm256_load_ps(r3 + (zy * 2) * TL + 8 * h8),
                       x1 = _mm256_load_ps(r3 + (zy * 2 + 1) * TL + 8 * h8);
          const __m256 lo = _mm256_unpacklo_ps(x0, x1), hi = _mm256_unpackhi_ps(x0, x1);
          _mm256_storeu_ps(o + 16 * h8, _mm256_permute2f128_ps(lo, hi, 0x20));
          _mm256_storeu_ps(o + 16 * h8 + 8, _mm256_permute2f128_ps(lo, hi, 0x31));
        }
      }
      continue;
    }
    for (int s = 0; s < gr.nseg; ++s) {
      const Seg& sg = gr.seg[s];
      for (int k = 0; k < ZO * 4; ++k) {
        const std::int64_t od = sg.od0 + (k >> 2), oh = sg.oh0 + ((k >> 1) & 1);
        if (od >= g.Do || oh >= g.Ho) continue;
        float* o = oc + od * plane + oh * g.Wo;
        for (int j = sg.j0; j < sg.j1; ++j) {
          const std::int64_t ow = sg.ow0 + 2 * (j - sg.j0) + (k & 1);
          if (ow < g.Wo) o[ow] = r3[k * TL + j];
        }
      }
    }
  }
}
#undef BHSD_WT

// F(4×4, 3×3) for 1×3×3 kernels (AVX-512 transforms; AVX2's below): output tiles of 1×4×4, input tiles
// of 1×6×6, 36 points — 36 multiplications per 16 outputs instead of F(2×2, 3×3)'s 16 per 4 (1.78×
// fewer), and fewer transformed values to write and read per output (2.25 instead of 4 per channel).
// Bᵀ, G, Aᵀ (Lavin & Gray 2016, points 0, ±1, ±2, ∞):
//   Bᵀ: (d0…d5) → (4d0 − 5d2 + d4, −4d1 − 4d2 + d3 + d4, 4d1 − 4d2 − d3 + d4, −2d1 − d2 + 2d3 + d4,
//                  2d1 − d2 − 2d3 + d4, 4d1 − 5d3 + d5)
//   G:  (g0, g1, g2) → (g0/4, −(g0 + g1 + g2)/6, −(g0 − g1 + g2)/6, g0/24 + g1/12 + g2/6,
//                       g0/24 − g1/12 + g2/6, g2)
//   Aᵀ: (m0…m5) → (m0 + m1 + m2 + m3 + m4, m1 − m2 + 2(m3 − m4), m1 + m2 + 4(m3 + m4),
//                  m1 − m2 + 8(m3 − m4) + m5)
// Larger coefficients than F(2,3)'s, so more rounding: measured against float64 in core_test (a few
// 1e-6 of the output's scale, within the brief's 1e-4). The 16 lanes of a group are one zmm: a row
// of 16 tiles reads 66 samples as 5 loads of 16 and picks every fourth sample by two-source lane
// permutations (the transposes AVX2 would need 3× the shuffles for); a group whose tiles span rows
// (or stop short) moves each segment's lanes into place by a masked permutation.
#define BHSD_W5 __attribute__((target("avx512f,avx2,fma"))) inline
BHSD_W5 void st_v(float* p, __m512 v, bool nt) {  // (st_v of 16 lanes in one register)
  if (nt)
    _mm512_stream_ps(p, v);
  else
    _mm512_store_ps(p, v);
}
// An output row's vector: streamed where nt (the row's start aligned: stream_out_bytes), else as is.
BHSD_W5 void st_out(float* p, __m512 v, bool nt) {
  if (nt)
    _mm512_stream_ps(p, v);
  else
    _mm512_storeu_ps(p, v);
}

// How to read samples a … a + 15 of a row of W (0 outside [0, W)), as RowLoad with 16 lanes: 0 a
// plain load; 1 the nearest window of 16 inside the row, permuted into place and masked; 2 zeros;
// 3 a row shorter than 16, sample by sample.
struct RowLoad16 {
  std::int64_t base;
  int kind;
  __mmask16 keep;
  __m512i idx;
};
BHSD_W5 RowLoad16 row_load16(std::int64_t a, std::int64_t W) {
  RowLoad16 L{a, 0, 0, _mm512_setzero_si512()};
  std::tie(L.kind, L.base) = row_kind(a, W, 16);
  if (L.kind != 1) return L;
  const __m512i iota = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  L.idx = _mm512_add_epi32(iota, _mm512_set1_epi32(int(a - L.base)));  // lane l: sample a + l of the window at base
  for (int l = 0; l < 16; ++l)
    if (a + l >= 0 && a + l < W) L.keep = __mmask16(L.keep | (1u << l));
  return L;
}
BHSD_W5 __m512 load_row16(const float* row, const RowLoad16& L, std::int64_t W) {
  switch (L.kind) {
    case 0:
      return _mm512_loadu_ps(row + L.base);
    case 1:
      return _mm512_maskz_permutexvar_ps(L.keep, L.idx, _mm512_loadu_ps(row + L.base));
    case 2:
      return _mm512_setzero_ps();
    default: {
      alignas(64) float v[16];
      row_samples(row, L.base, W, v, 16);
      return _mm512_load_ps(v);
    }
  }
}

// A group's segments for the AVX-512 transforms: NL loads of 16 samples from each segment's first
// input column, and how the segment's lanes move into the group's (lane l takes lane l − j0 of the
// segment's vectors, for lanes j0 … j1 − 1).
template <int NL>
struct SegLanes16 {
  RowLoad16 ld[TL][NL];
  __m512i shift[TL];
  __mmask16 lanes[TL];
};
template <int NL>
BHSD_W5 void seg_lanes16(const ConvGeom& g, const Group& gr, SegLanes16<NL>& L) {
  for (int s = 0; s < gr.nseg; ++s) {
    const Seg& sg = gr.seg[s];
    for (int q = 0; q < NL; ++q) L.ld[s][q] = row_load16(sg.iw0 + 16 * q, g.W);
    L.shift[s] = _mm512_sub_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                  _mm512_set1_epi32(sg.j0));
    L.lanes[s] = __mmask16(((1u << sg.j1) - 1u) & ~((1u << sg.j0) - 1u));
  }
}

// Bᵀ of F(4,3) on six vectors.
BHSD_W5 void bt6(const __m512* d, __m512* o) {
  const __m512 c4 = _mm512_set1_ps(4.0f), c5 = _mm512_set1_ps(5.0f), c2 = _mm512_set1_ps(2.0f);
  const __m512 d42 = _mm512_sub_ps(d[4], d[2]);
  o[0] = _mm512_fmadd_ps(c4, d[0], _mm512_fnmadd_ps(c5, d[2], d[4]));
  o[1] = _mm512_fnmadd_ps(c4, _mm512_add_ps(d[1], d[2]), _mm512_add_ps(d[3], d[4]));
  o[2] = _mm512_fmadd_ps(c4, _mm512_sub_ps(d[1], d[2]), _mm512_sub_ps(d[4], d[3]));
  o[3] = _mm512_fmadd_ps(c2, _mm512_sub_ps(d[3], d[1]), d42);
  o[4] = _mm512_fmadd_ps(c2, _mm512_sub_ps(d[1], d[3]), d42);
  o[5] = _mm512_fmadd_ps(c4, d[1], _mm512_fnmadd_ps(c5, d[3], d[5]));
}

// Aᵀ of F(4,3) on six vectors.
BHSD_W5 void at6(const __m512* m, __m512* o) {
  const __m512 s12 = _mm512_add_ps(m[1], m[2]), d12 = _mm512_sub_ps(m[1], m[2]);
  const __m512 s34 = _mm512_add_ps(m[3], m[4]), d34 = _mm512_sub_ps(m[3], m[4]);
  o[0] = _mm512_add_ps(_mm512_add_ps(m[0], s12), s34);
  o[1] = _mm512_fmadd_ps(_mm512_set1_ps(2.0f), d34, d12);
  o[2] = _mm512_fmadd_ps(_mm512_set1_ps(4.0f), s34, s12);
  o[3] = _mm512_add_ps(_mm512_fmadd_ps(_mm512_set1_ps(8.0f), d34, d12), m[5]);
}

// Stride 2 (is_s2). Along an axis of stride 2, output o of a 3-tap kernel (w0, w1, w2) reads
// samples 2o − p … 2o − p + 2: its even samples e[j] = x[2j − p + 1] with the one tap w1, its odd
// ones d[j] = x[2j − p] with the two taps (w0, w2) — a 1-tap and a 2-tap stride-1 convolution of the
// two phases. A tile of 2 outputs (o = 2t, 2t + 1) reads the 5 samples s0 … s4 from column 4t − p;
// F(2, 2) on the odd phase (s0, s2, s4) and the even phase as it is give 5 points for its 2 outputs
// instead of 6 products:
//   Bᵀ s = (s1, s3, s0 − s2, s2, s4 − s2),  G w = (w1, w1, w0, w0 + w2, w2),
//   Aᵀ m = (m0 + m2 + m3, m1 + m3 + m4)
// (y0 = w1·s1 + w0·(s0 − s2) + (w0 + w2)·s2 = w0·s0 + w1·s1 + w2·s2, and y1 = w0·s2 + w1·s3 + w2·s4
// likewise). Coefficients 0 and ±1 only: the rounding of a sum of products, as the direct path's.
// With F(2, 3) along D (stride 1): output tiles of 2×2×2 from input tiles of 4×5×5, 100 points per
// 8 outputs (12.5 a voxel instead of the direct path's 27) — or, where the plan picks it (kWinoDeep),
// F(4, 3) along D: 4×2×2 from 6×5×5, 150 points (9.4 a voxel, and the input's planes read 1.5 times
// instead of twice); with stride 2 along D too, from 5×5×5, 125 points (15.6 a voxel). A tile's 5 columns are 4 apart,
// as F(4, 3)'s 6: the F(4×4) row reads serve (their first five vectors), and a group of 16 tiles reads 65 samples of a
// row.
BHSD_W5 void bt5s2(const __m512* d, __m512* o) {
  o[0] = d[1], o[1] = d[3], o[2] = _mm512_sub_ps(d[0], d[2]), o[3] = d[2], o[4] = _mm512_sub_ps(d[4], d[2]);
}
BHSD_W5 void at5s2(const __m512* m, __m512* o) {
  o[0] = _mm512_add_ps(_mm512_add_ps(m[0], m[2]), m[3]);
  o[1] = _mm512_add_ps(_mm512_add_ps(m[1], m[3]), m[4]);
}

// f4_rows_w's lane tables: P[k] picks samples 4j + k of a row segment from two loads (lanes 0–7
// from z0‖z1, 8–15 from z2‖z3); N[0], N[1] move e_0, e_1 one lane on and take samples 64, 65 of z4;
// N[2] moves a vector one lane back and takes the last sample of another into lane 0
// (f4_bt_row_aligned).
__attribute__((target("avx512f,avx2,fma"), always_inline)) inline void f4_row_tables(__m512i* P, __m512i* N) {
  alignas(64) static const std::int32_t pick[4][16] = {{0, 4, 8, 12, 16, 20, 24, 28, 0, 4, 8, 12, 16, 20, 24, 28},
                                                       {1, 5, 9, 13, 17, 21, 25, 29, 1, 5, 9, 13, 17, 21, 25, 29},
                                                       {2, 6, 10, 14, 18, 22, 26, 30, 2, 6, 10, 14, 18, 22, 26, 30},
                                                       {3, 7, 11, 15, 19, 23, 27, 31, 3, 7, 11, 15, 19, 23, 27, 31}};
  alignas(64) static const std::int32_t next[3][16] = {{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16},
                                                       {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 17},
                                                       {31, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14}};
  for (int k = 0; k < 4; ++k) P[k] = _mm512_load_si512(pick[k]);
  for (int k = 0; k < 3; ++k) N[k] = _mm512_load_si512(next[k]);
}

// The 66 samples of a row segment from column iw0 (five loads of 16, clamped into the row) into L1.
__attribute__((target("avx512f,avx2,fma"), always_inline)) inline void prefetch_row16x5(const float* row,
                                                                                        std::int64_t iw0,
                                                                                        std::int64_t W) {
  for (int q = 0; q < 5; ++q)
    _mm_prefetch(
        reinterpret_cast<const char*>(conv_detail::float_at(row, std::clamp<std::int64_t>(iw0 + 16 * q, 0, W - 1))),
        _MM_HINT_T0);
}

// F(4,3)'s Bᵀ along W of one row segment read as five loads of 16 (zv): e_k[j] = sample 4j + k
// (k < 4) from lanes 0–7 of z0‖z1 and 8–15 of z2‖z3 (P[k]); e_4, e_5 are e_0, e_1 one lane on, their
// last lane samples 64, 65 of z4 (N); w = Bᵀ e.
// S2: the first five vectors e_0 … e_4 only, through bt5s2 (5 transformed vectors).
template <bool S2 = false>
__attribute__((target("avx512f,avx2,fma"), always_inline)) inline void f4_bt_row(const __m512* zv, const __m512i* P,
                                                                                 const __m512i* N, __m512* w) {
  __m512 e[6];
  for (int k = 0; k < 4; ++k)
    e[k] = _mm512_mask_blend_ps(0xFF00, _mm512_permutex2var_ps(zv[0], P[k], zv[1]),
                                _mm512_permutex2var_ps(zv[2], P[k], zv[3]));
  e[4] = _mm512_permutex2var_ps(e[0], N[0], zv[4]);
  if constexpr (S2) {
    bt5s2(e, w);
  } else {
    e[5] = _mm512_permutex2var_ps(e[1], N[1], zv[4]);
    bt6(e, w);
  }
}

// f4_bt_row for a segment whose first sample (column iw0) lies one before a 64-byte line: six
// aligned loads zv of 16 from iw0 − 15 (zv[0] holds sample iw0 in its last lane, zv[5] sample
// iw0 + 65 in its first), so that no load splits two cache lines (five loads from iw0 split ten).
// e_1 … e_4 (samples 4j + k, k = 1 … 4, from iw0) are zv[1] … zv[4]'s samples 4j + k − 1 — the
// tables P pick them as f4_bt_row picks e_0 … e_3 —, e_0 is e_4 one lane back with sample iw0 in
// lane 0 (N[2]), e_5 is e_1 one lane on with sample iw0 + 65 in lane 15 (N[0]). The same
// permutations and arithmetic as f4_bt_row, one load more. The Xeon (2026-12-04, 64→64 F(4×4×4)
// at 16×128×128) ran the input transform of a layer 33.7 → 30.3 ms on one thread with loads at
// aligned addresses.
template <bool S2 = false>
__attribute__((target("avx512f,avx2,fma"), always_inline)) inline void f4_bt_row_aligned(const __m512* zv,
                                                                                         const __m512i* P,
                                                                                         const __m512i* N, __m512* w) {
  __m512 e[6];
  for (int k = 1; k < 5; ++k)
    e[k] = _mm512_mask_blend_ps(0xFF00, _mm512_permutex2var_ps(zv[1], P[k - 1], zv[2]),
                                _mm512_permutex2var_ps(zv[3], P[k - 1], zv[4]));
  e[0] = _mm512_permutex2var_ps(e[4], N[2], zv[0]);
  if constexpr (S2) {
    bt5s2(e, w);
  } else {
    e[5] = _mm512_permutex2var_ps(e[1], N[0], zv[5]);
    bt6(e, w);
  }
}

// F(4,3)'s Bᵀ along W of a group's input rows: row ih0 + y of plane id0 + z of each segment (x: one
// channel's volume), the 6 transformed vectors of the group's 16 lanes into acc (0 where the row
// lies outside the volume and past the group's n tiles). A segment's row of up to 16 tiles reads 66
// samples as 5 loads of 16 (L.ld), transformed by f4_bt_row. Both F(4×4) input transforms call it
// per row for groups f4_rows_whole does not take (always inlined: their tables stay in registers).
// S2: stride 2's five vectors (bt5s2) instead of six. pf: where it is not 0, the same row segment
// pf floats on (the next channel's) is prefetched too, beside the next tile row's rows.
template <bool S2 = false>
__attribute__((target("avx512f,avx2,fma"), always_inline)) inline void f4_rows_w(
    const ConvGeom& g, const float* x, const Group& gr, const SegLanes16<5>& L, const __m512i* P, const __m512i* N,
    bool whole, int z, int y, __m512* acc, std::int64_t pf = 0) {
  constexpr int R = S2 ? 5 : 6;
  const std::int64_t plane = g.H * g.W;
  for (int k = 0; k < R; ++k) acc[k] = _mm512_setzero_ps();
  for (int s = 0; s < gr.nseg; ++s) {
    const Seg& sg = gr.seg[s];
    const std::int64_t id = sg.id0 + z, ih = sg.ih0 + y;
    if (id < 0 || id >= g.D || ih < 0 || ih >= g.H) continue;
    const float* row = x + id * plane + ih * g.W;
    if (pf) prefetch_row16x5(row + pf, sg.iw0, g.W);
    // the next tile row's new input rows (4 further on), as input_transform does
    if (y >= 2 && ih + 4 < g.H) prefetch_row16x5(row + 4 * g.W, sg.iw0, g.W);
    __m512 zv[5], w[6];
    for (int q = 0; q < 5; ++q) zv[q] = load_row16(row, L.ld[s][q], g.W);
    f4_bt_row<S2>(zv, P, N, w);
    if (whole)
      for (int k = 0; k < R; ++k) acc[k] = w[k];
    else
      for (int k = 0; k < R; ++k) acc[k] = _mm512_mask_permutexvar_ps(acc[k], L.lanes[s], L.shift[s], w[k]);
  }
}

// f4_rows_w for a group whose 16 tiles lie in one tile row (every group where a row holds a multiple
// of 16 tiles: the U-Nets' rows of 64, 128, 256 voxels; not 32 or fewer), every row of the
// channel at once: NZ planes × 6 rows into t[(z·6 + y)·6 + k][lane]. The five loads of a row are
// masked where they leave it (lanes outside [0, W) masked off read nothing and give 0: mk), so the
// rows run as straight-line code — no per-load kinds, no lane moves, no bounds per segment. On the
// Intel Xeon (2026-12-03) f4_rows_w's general path took ≈ 45 cycles a row where the same loads,
// permutations and arithmetic alone take ≈ 16: the F(2×4×4) input transform of one group, 64
// channels in L2, 2080 → 1360 cycles a channel; a PlainConvUNet window 1.52–1.60 → 1.48–1.49 s in
// alternating runs. PF: prefetch the next tile row's four new input rows, as f4_rows_w does — kept
// for the 1×3×3 transform (a 32→32 layer at 16×256×256 on one thread: 85.5–86.5 ms without it,
// 76.9–77.2 with it, 79.0 before this path), not for the F(2×4×4) one, which prefetches the next
// channel's rows (its layers the same either way; its own time 10 % more with both).
// A (aligned): the segment's first column lies one before a line (whole_masks), and the rows are
// read as f4_bt_row_aligned reads them: six loads from iw0 − 15, masked by mk[0 … 5].
// S2: stride 2's tiles (5 rows of 5 transformed vectors: t[(z·5 + y)·5 + k][lane]).
// pf: where not 0, each row's lines pf floats on (the same row of the next channel) are prefetched
// as the row is read. The 3×3×3 transforms' input comes from memory, channel after channel: asked
// for all at once before a channel (a group's 180 lines of a 64-channel 16×128×128 input), the
// prefetches waited for each other, and the F(4×4×4) input transform took 1.3–1.6 µs a channel of a
// group on one thread against 0.4 with its input in cache; spread over the rows like this, 0.68–0.70
// (Zen 5, 2026-12-05).
template <int NZ, bool PF, bool A = false, bool S2 = false>
__attribute__((target("avx512f,avx2,fma"), always_inline)) inline void f4_rows_whole(const ConvGeom& g, const float* x,
                                                                                     const Seg& sg, const __mmask16* mk,
                                                                                     const __m512i* P, const __m512i* N,
                                                                                     float* t, std::int64_t pf = 0) {
  constexpr int R = S2 ? 5 : 6;
  const std::int64_t plane = g.H * g.W;
  for (int z = 0; z < NZ; ++z) {
    const std::int64_t id = sg.id0 + z;
    for (int y = 0; y < R; ++y) {
      float* tr = t + (z * R + y) * R * TL;
      const std::int64_t ih = sg.ih0 + y;
      if (id < 0 || id >= g.D || ih < 0 || ih >= g.H) {
        for (int k = 0; k < R; ++k) _mm512_store_ps(tr + k * TL, _mm512_setzero_ps());
        continue;
      }
      const float* r = x + id * plane + ih * g.W;
      if (PF && y >= 2 && ih + 4 < g.H) prefetch_row16x5(r + 4 * g.W, sg.iw0, g.W);  // next tile row's rows
      constexpr int NL = A ? 6 : 5;
      const std::int64_t c0 = A ? sg.iw0 - 15 : sg.iw0;
      __m512 zv[NL], w[6];
      // every load masked (a load inside the row has all 16 lanes set): choosing a plain load where
      // the mask is full cost the Xeon 15 % of the transform
      if (pf) {  // (a prefetch never faults: lines past the row's ends are harmless)
        for (int q = 0; q < NL; ++q)
          _mm_prefetch(reinterpret_cast<const char*>(conv_detail::float_at(r + pf, c0 + 16 * q)), _MM_HINT_T0);
        if constexpr (!A)
          _mm_prefetch(reinterpret_cast<const char*>(conv_detail::float_at(r + pf, c0 + 16 * NL - 1)), _MM_HINT_T0);
      }
      for (int q = 0; q < NL; ++q) zv[q] = _mm512_maskz_loadu_ps(mk[q], conv_detail::float_at(r, c0 + 16 * q));
      if constexpr (A)
        f4_bt_row_aligned<S2>(zv, P, N, w);
      else
        f4_bt_row<S2>(zv, P, N, w);
      for (int k = 0; k < R; ++k) _mm512_store_ps(tr + k * TL, w[k]);
    }
  }
}

// The load masks of a one-segment group's rows for f4_rows_whole (mk: room for 6); false where its
// rows are shorter than a load (then f4_rows_w's general path runs). aligned: the rows are read as
// f4_bt_row_aligned reads them (six loads from iw0 − 15), where iw0 + 1 is a multiple of 16 samples
// (a padding of 1 and groups of 16 tiles from a row's start: nnU-Net's layers) and the input and its
// rows start on lines (then every load does); else five loads from iw0.
BHSD_W5 bool whole_masks(const ConvGeom& g, const float* in, const Group& gr, __mmask16* mk, bool& aligned) {
  aligned = false;
  if (gr.nseg != 1 || gr.n != TL || g.W < 16) return false;
  static const bool env_off = [] {  // BHSD_WINOGRAD_UNALIGNED=1 (for comparison)
    const char* e = std::getenv("BHSD_WINOGRAD_UNALIGNED");
    return e && e[0] == '1' && !e[1];
  }();
  const bool off = aligned_rows_override() < 0 ? env_off : aligned_rows_override() == 0;
  aligned = !off && (gr.seg[0].iw0 + 1) % 16 == 0 && g.W % 16 == 0 && (reinterpret_cast<std::uintptr_t>(in) & 63) == 0;
  if (aligned) aligned_row_groups().fetch_add(1, std::memory_order_relaxed);
  const std::int64_t c0 = aligned ? gr.seg[0].iw0 - 15 : gr.seg[0].iw0;
  for (int q = 0; q < (aligned ? 6 : 5); ++q) {
    unsigned m = 0;
    for (int l = 0; l < 16; ++l) {
      const std::int64_t c = c0 + 16 * q + l;
      if (c >= 0 && c < g.W) m |= 1u << l;
    }
    mk[q] = __mmask16(m);
  }
  return true;
}

// V for one group of F(4×4, 3×3) tiles, every input channel: V[p·(C + 1)·16 + ci·16 + j] for the 36
// points p = 6·y + x (y along H, x along W) of lane j's input tile (0 outside the volume and past
// the group's n tiles).
BHSD_W5 void input_transform_f4(const ConvGeom& g, const float* in, const Group& gr, float* V, bool nt = false) {
  alignas(64) float t[36 * TL];  // [y][x][lane], transformed along W
  const std::int64_t plane = g.H * g.W, vol = g.D * plane, C = g.C, ps = point_stride(C);
  const bool whole = gr.nseg == 1 && gr.n == TL;
  __m512i P[4], N[3];
  f4_row_tables(P, N);
  __mmask16 mk[6];
  bool al = false;
  const bool fast = whole_masks(g, in, gr, mk, al);
  SegLanes16<5> L;  // the general path's loads and lane moves
  if (!fast) seg_lanes16(g, gr, L);
  for (std::int64_t ci = 0; ci < C; ++ci) {
    const float* x = in + ci * vol;
    // the next channel's rows as these are read, beside the next tile row's (f4_rows_whole): a 64→32
    // layer at 16×256×256 60.7–61.2 → 54.5–56.4 ms, 32→32 there 30.7–33.7 → 29.5–31.8 (Zen 5)
    const std::int64_t pf = ci + 1 < C ? vol : 0;
    if (fast && al)
      f4_rows_whole<1, true, true>(g, x, gr.seg[0], mk, P, N, t, pf);
    else if (fast)
      f4_rows_whole<1, true>(g, x, gr.seg[0], mk, P, N, t, pf);
    else
      for (int y = 0; y < 6; ++y) {
        __m512 acc[6];
        f4_rows_w(g, x, gr, L, P, N, whole, 0, y, acc, pf);
        for (int k = 0; k < 6; ++k) _mm512_store_ps(t + (y * 6 + k) * TL, acc[k]);
      }
    // along H into V
    float* v = V + ci * TL;
    for (int k = 0; k < 6; ++k) {
      __m512 d[6], o[6];
      for (int y = 0; y < 6; ++y) d[y] = _mm512_load_ps(t + (y * 6 + k) * TL);
      bt6(d, o);
      for (int y = 0; y < 6; ++y) st_v(v + (y * 6 + k) * ps, o[y], nt);
    }
  }
}

// Aᵀ m A of one output plane of a group's F(4×4) tiles (36 vectors of 16 lanes, stride ps apart:
// point 6·y + x) + bias, activation, stored where the output exists in plane od0 + zo of channel oc:
// a whole row of 16 tiles as 4 rows of 64 columns (the 4 columns of each tile interleaved by lane
// permutations), other groups voxel by voxel.
BHSD_W5 void f4_plane_out(const ConvGeom& g, const Group& gr, const float* m, std::int64_t ps, int zo, float* oc,
                          __m512 bv, Act act, __m512 slope, bool nt = false) {
  alignas(64) float r[16 * TL];  // [yo][xo][lane], the partial groups' outputs
  const std::int64_t plane = g.Ho * g.Wo;
  const Seg& s0 = gr.seg[0];
  const bool fast = gr.nseg == 1 && gr.n == TL && s0.od0 + zo < g.Do && s0.oh0 + 3 < g.Ho && s0.ow0 + 4 * TL <= g.Wo;
  // interleaving: lo/hi pairs of columns (lane 2t + b = column b of tile t), then 4 columns of 4 tiles
  alignas(64) static const std::int32_t il[2][16] = {{0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23},
                                                     {8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31}};
  alignas(64) static const std::int32_t iq[2][16] = {{0, 1, 16, 17, 2, 3, 18, 19, 4, 5, 20, 21, 6, 7, 22, 23},
                                                     {8, 9, 24, 25, 10, 11, 26, 27, 12, 13, 28, 29, 14, 15, 30, 31}};
  const __m512 zero = _mm512_setzero_ps();
  __m512 h[4][6];  // along H: [yo][x]
  for (int k = 0; k < 6; ++k) {
    __m512 a[6], o[4];
    for (int y = 0; y < 6; ++y) a[y] = _mm512_load_ps(m + (y * 6 + k) * ps);
    at6(a, o);
    for (int yo = 0; yo < 4; ++yo) h[yo][k] = o[yo];
  }
  for (int yo = 0; yo < 4; ++yo) {
    __m512 q[4];
    at6(h[yo], q);
    for (int xo = 0; xo < 4; ++xo) {
      q[xo] = _mm512_add_ps(q[xo], bv);
      if (act != Act::none)
        q[xo] = _mm512_mask_mul_ps(q[xo], _mm512_cmp_ps_mask(q[xo], zero, _CMP_LE_OQ), q[xo], slope);
    }
    if (fast) {
      const __m512i IL0 = _mm512_load_si512(il[0]), IL1 = _mm512_load_si512(il[1]);
      const __m512i IQ0 = _mm512_load_si512(iq[0]), IQ1 = _mm512_load_si512(iq[1]);
      float* o = oc + (s0.od0 + zo) * plane + (s0.oh0 + yo) * g.Wo + s0.ow0;
      const __m512 a0 = _mm512_permutex2var_ps(q[0], IL0, q[1]), a1 = _mm512_permutex2var_ps(q[0], IL1, q[1]);
      const __m512 b0 = _mm512_permutex2var_ps(q[2], IL0, q[3]), b1 = _mm512_permutex2var_ps(q[2], IL1, q[3]);
      const bool ntr = nt && !(reinterpret_cast<std::uintptr_t>(o) & 63);
      st_out(o, _mm512_permutex2var_ps(a0, IQ0, b0), ntr);
      st_out(o + 16, _mm512_permutex2var_ps(a0, IQ1, b0), ntr);
      st_out(o + 32, _mm512_permutex2var_ps(a1, IQ0, b1), ntr);
      st_out(o + 48, _mm512_permutex2var_ps(a1, IQ1, b1), ntr);
    } else
      for (int xo = 0; xo < 4; ++xo) _mm512_store_ps(r + (yo * 4 + xo) * TL, q[xo]);
  }
  if (fast) return;
  for (int s = 0; s < gr.nseg; ++s) {
    const Seg& sg = gr.seg[s];
    if (sg.od0 + zo >= g.Do) continue;
    for (int yo = 0; yo < 4; ++yo) {
      const std::int64_t oh = sg.oh0 + yo;
      if (oh >= g.Ho) continue;
      float* o = oc + (sg.od0 + zo) * plane + oh * g.Wo;
      for (int j = sg.j0; j < sg.j1; ++j)
        for (int xo = 0; xo < 4; ++xo) {
          const std::int64_t ow = sg.ow0 + 4 * (j - sg.j0) + xo;
          if (ow < g.Wo) o[ow] = r[(yo * 4 + xo) * TL + j];
        }
    }
  }
}

// Y = Aᵀ M A for one group of F(4×4, 3×3) tiles, every output channel, + bias, activation.
BHSD_W5 void output_transform_f4(const ConvGeom& g, const Group& gr, const float* M, const float* bias, float* out,
                                 Act act, float alpha, bool nt = false) {
  const std::int64_t vol = g.Do * g.Ho * g.Wo, ps = point_stride(g.Co);
  const __m512 slope = _mm512_set1_ps(act == Act::relu ? 0.0f : alpha);
  for (std::int64_t co = 0; co < g.Co; ++co)
    f4_plane_out(g, gr, M + co * TL, ps, 0, out + co * vol, _mm512_set1_ps(bias ? bias[co] : 0.0f), act, slope, nt);
}

// A group's row reads for the 3×3×3 F(4×4)-row transforms (F(2×4×4), F(4×4×4) and the strided
// ones): the lane tables, and the whole-row masks where its 16 tiles are one row segment (whole_masks),
// else the general path's loads and lane moves. rows<NZ, S2>(x, t, pf): one channel's NZ planes of
// rows, each along W (6 vectors, or 5 for stride 2), into t[(z·R + y)·R + k][lane], prefetching the
// same rows pf floats on (the next channel's; 0: none).
struct GroupRows {
  const ConvGeom& g;
  const Group& gr;
  __m512i P[4], N[3];
  __mmask16 mk[6];
  bool al = false, fast, whole;
  SegLanes16<5> L;
  BHSD_W5 GroupRows(const ConvGeom& g_, const float* in, const Group& gr_) : g(g_), gr(gr_) {
    whole = gr.nseg == 1 && gr.n == TL;
    f4_row_tables(P, N);
    fast = whole_masks(g, in, gr, mk, al);
    if (!fast) seg_lanes16(g, gr, L);
  }
  template <int NZ, bool S2>
  __attribute__((target("avx512f,avx2,fma"), always_inline)) void rows(const float* x, float* t,
                                                                       std::int64_t pf) const {
    constexpr int R = S2 ? 5 : 6;
    // the tables and masks as locals: __m512i may alias the float stores into t, so read through
    // `this` they were loaded again after every store (a stride-2 layer's transform 5 % slower)
    const __m512i Pl[4] = {P[0], P[1], P[2], P[3]}, Nl[3] = {N[0], N[1], N[2]};
    const __mmask16 ml[6] = {mk[0], mk[1], mk[2], mk[3], mk[4], mk[5]};
    if (fast && al)
      f4_rows_whole<NZ, false, true, S2>(g, x, gr.seg[0], ml, Pl, Nl, t, pf);
    else if (fast)
      f4_rows_whole<NZ, false, false, S2>(g, x, gr.seg[0], ml, Pl, Nl, t, pf);
    else
      for (int zy = 0; zy < NZ * R; ++zy) {
        __m512 acc[6];
        f4_rows_w<S2>(g, x, gr, L, Pl, Nl, whole, zy / R, zy % R, acc, pf);
        for (int k = 0; k < R; ++k) _mm512_store_ps(t + (zy * R + k) * TL, acc[k]);
      }
  }
};

// F(2×4×4, 3×3×3) (NZ = 4) and F(4×4×4, 3×3×3) (NZ = 6): V for one group of tiles, every input
// channel — per input plane z of the tile the F(4×4) transform of the plane (along W, then H), then
// along D across the NZ planes F(2, 3)'s Bᵀ (144 points) or F(4, 3)'s (216):
// V[p·(C + 1)·16 + ci·16 + j] for the points p = 36·z + 6·y + x.
template <int NZ>
BHSD_W5 void input_transform_3d_f4(const ConvGeom& g, const float* in, const Group& gr, float* V, bool nt = false) {
  static_assert(NZ == 4 || NZ == 6, "F(2, 3) or F(4, 3) along D");
  alignas(64) float t[NZ * 36 * TL];  // [z][y][x][lane], transformed along W
  const std::int64_t plane = g.H * g.W, vol = g.D * plane, C = g.C, ps = point_stride(C);
  const GroupRows rr(g, in, gr);
  for (std::int64_t ci = 0; ci < C; ++ci) {
    const float* x = in + ci * vol;
    // the next channel's rows of these tiles, one channel ahead, row by row (their loads are most of
    // this transform's time at 64 channels: f4_rows_whole)
    rr.rows<NZ, false>(x, t, ci + 1 < C ? vol : 0);
    float* v = V + ci * TL;
    if constexpr (NZ == 4) {  // along H per plane, then along D into V, in registers
      for (int k = 0; k < 6; ++k) {
        __m512 h[4][6];
        for (int z = 0; z < 4; ++z) {
          __m512 d[6];
          for (int y = 0; y < 6; ++y) d[y] = _mm512_load_ps(t + ((z * 6 + y) * 6 + k) * TL);
          bt6(d, h[z]);
        }
        for (int y = 0; y < 6; ++y) {
          const std::int64_t i = (y * 6 + k) * ps;
          st_v(v + i, _mm512_sub_ps(h[0][y], h[2][y]), nt);
          st_v(v + 36 * ps + i, _mm512_add_ps(h[1][y], h[2][y]), nt);
          st_v(v + 72 * ps + i, _mm512_sub_ps(h[2][y], h[1][y]), nt);
          st_v(v + 108 * ps + i, _mm512_sub_ps(h[1][y], h[3][y]), nt);
        }
      }
    } else {  // six planes (36 vectors a column) do not fit the registers: along H in place, then D
      for (int z = 0; z < 6; ++z)
        for (int k = 0; k < 6; ++k) {
          __m512 d[6], o[6];
          for (int y = 0; y < 6; ++y) d[y] = _mm512_load_ps(t + ((z * 6 + y) * 6 + k) * TL);
          bt6(d, o);
          for (int y = 0; y < 6; ++y) _mm512_store_ps(t + ((z * 6 + y) * 6 + k) * TL, o[y]);
        }
      for (int i = 0; i < 36; ++i) {
        __m512 d[6], o[6];
        for (int z = 0; z < 6; ++z) d[z] = _mm512_load_ps(t + (z * 36 + i) * TL);
        bt6(d, o);
        for (int z = 0; z < 6; ++z) st_v(v + (36 * z + i) * ps, o[z], nt);
      }
    }
  }
}

// Y for one group of F(2×4×4, 3×3×3) (NZ = 4) or F(4×4×4, 3×3×3) (NZ = 6) tiles, every output
// channel: along D F(2, 3)'s Aᵀ (144 points → two planes of 36) or F(4, 3)'s (216 → four), then
// each plane as F(4×4, 3×3)'s, + bias, activation.
template <int NZ>
BHSD_W5 void output_transform_3d_f4(const ConvGeom& g, const Group& gr, const float* M, const float* bias, float* out,
                                    Act act, float alpha, bool nt = false) {
  static_assert(NZ == 4 || NZ == 6, "F(2, 3) or F(4, 3) along D");
  constexpr int ZO = NZ - 2;           // output planes a tile
  alignas(64) float r1[ZO * 36 * TL];  // [zo][y][x][lane]
  const std::int64_t vol = g.Do * g.Ho * g.Wo, ps = point_stride(g.Co);
  const __m512 slope = _mm512_set1_ps(act == Act::relu ? 0.0f : alpha);
  for (std::int64_t co = 0; co < g.Co; ++co) {
    const float* m = M + co * TL;
    for (int i = 0; i < 36; ++i) {
      __m512 a[NZ];
      for (int z = 0; z < NZ; ++z) a[z] = _mm512_load_ps(m + (36 * z + i) * ps);
      if constexpr (NZ == 4) {
        _mm512_store_ps(r1 + i * TL, _mm512_add_ps(_mm512_add_ps(a[0], a[1]), a[2]));
        _mm512_store_ps(r1 + (36 + i) * TL, _mm512_sub_ps(_mm512_sub_ps(a[1], a[2]), a[3]));
      } else {
        __m512 o[4];
        at6(a, o);
        for (int zo = 0; zo < 4; ++zo) _mm512_store_ps(r1 + (36 * zo + i) * TL, o[zo]);
      }
    }
    const __m512 bv = _mm512_set1_ps(bias ? bias[co] : 0.0f);
    for (int zo = 0; zo < ZO; ++zo) f4_plane_out(g, gr, r1 + zo * 36 * TL, TL, zo, out + co * vol, bv, act, slope, nt);
  }
}

// Strides 1×2×2 (NZ = 4) and 2×2×2 (NZ = 5; is_s2): V for one group of tiles, every input channel —
// per input plane z of the tile the stride-2 transform along W (bt5s2 on the F(4×4) row reads), then
// along H, then along D F(2, 3)'s Bᵀ across 4 planes or bt5s2 across 5:
// V[p·(C + 1)·16 + ci·16 + j] for the points p = 25·z + 5·y + x.
template <int NZ>
BHSD_W5 void input_transform_3d_s2(const ConvGeom& g, const float* in, const Group& gr, float* V, bool nt = false) {
  static_assert(NZ == 4 || NZ == 5 || NZ == 6, "F(2, 3), stride 2 or F(4, 3) along D");
  alignas(64) float t[NZ * 25 * TL];  // [z][y][x][lane], transformed along W
  const std::int64_t plane = g.H * g.W, vol = g.D * plane, C = g.C, ps = point_stride(C);
  const GroupRows rr(g, in, gr);
  for (std::int64_t ci = 0; ci < C; ++ci) {
    const float* x = in + ci * vol;
    rr.rows<NZ, true>(x, t, ci + 1 < C ? vol : 0);
    float* v = V + ci * TL;
    if constexpr (NZ == 6) {  // six planes (30 vectors a column) do not fit the registers: along H in place, then D
      for (int z = 0; z < 6; ++z)
        for (int k = 0; k < 5; ++k) {
          __m512 d[5], o[5];
          for (int y = 0; y < 5; ++y) d[y] = _mm512_load_ps(t + ((z * 5 + y) * 5 + k) * TL);
          bt5s2(d, o);
          for (int y = 0; y < 5; ++y) _mm512_store_ps(t + ((z * 5 + y) * 5 + k) * TL, o[y]);
        }
      for (int i = 0; i < 25; ++i) {
        __m512 d[6], o[6];
        for (int z = 0; z < 6; ++z) d[z] = _mm512_load_ps(t + (z * 25 + i) * TL);
        bt6(d, o);
        for (int z = 0; z < 6; ++z) st_v(v + (25 * z + i) * ps, o[z], nt);
      }
      continue;
    }
    for (int k = 0; k < 5; ++k) {  // along H per plane, then along D into V, in registers
      __m512 h[NZ][5];
      for (int z = 0; z < NZ; ++z) {
        __m512 d[5];
        for (int y = 0; y < 5; ++y) d[y] = _mm512_load_ps(t + ((z * 5 + y) * 5 + k) * TL);
        bt5s2(d, h[z]);
      }
      for (int y = 0; y < 5; ++y) {
        const std::int64_t i = (y * 5 + k) * ps;
        if constexpr (NZ == 4) {
          st_v(v + i, _mm512_sub_ps(h[0][y], h[2][y]), nt);
          st_v(v + 25 * ps + i, _mm512_add_ps(h[1][y], h[2][y]), nt);
          st_v(v + 50 * ps + i, _mm512_sub_ps(h[2][y], h[1][y]), nt);
          st_v(v + 75 * ps + i, _mm512_sub_ps(h[1][y], h[3][y]), nt);
        } else {
          const __m512 d[5] = {h[0][y], h[1][y], h[2][y], h[3][y], h[4][y]};
          __m512 o[5];
          bt5s2(d, o);
          for (int z = 0; z < 5; ++z) st_v(v + 25 * z * ps + i, o[z], nt);
        }
      }
    }
  }
}

// at5s2 along H then W of one output plane of a group's stride-2 tiles (25 vectors of 16 lanes,
// stride ps apart: point 5·y + x) + bias, activation, stored where the output exists in plane
// od0 + zo of channel oc: a whole row of 16 tiles as 2 rows of 32 columns (each tile's 2 columns
// interleaved by a lane permutation), other groups voxel by voxel.
BHSD_W5 void s2_plane_out(const ConvGeom& g, const Group& gr, const float* m, std::int64_t ps, int zo, float* oc,
                          __m512 bv, Act act, __m512 slope, bool nt = false) {
  alignas(64) float r[4 * TL];  // [yo][xo][lane], the partial groups' outputs
  const std::int64_t plane = g.Ho * g.Wo;
  const Seg& s0 = gr.seg[0];
  const bool fast = gr.nseg == 1 && gr.n == TL && s0.od0 + zo < g.Do && s0.oh0 + 1 < g.Ho && s0.ow0 + 2 * TL <= g.Wo;
  alignas(64) static const std::int32_t il[2][16] = {{0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23},
                                                     {8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31}};
  const __m512 zero = _mm512_setzero_ps();
  __m512 h[2][5];  // along H: [yo][x]
  for (int k = 0; k < 5; ++k) {
    __m512 a[5], o[2];
    for (int y = 0; y < 5; ++y) a[y] = _mm512_load_ps(m + (y * 5 + k) * ps);
    at5s2(a, o);
    h[0][k] = o[0], h[1][k] = o[1];
  }
  for (int yo = 0; yo < 2; ++yo) {
    __m512 q[2];
    at5s2(h[yo], q);
    for (int xo = 0; xo < 2; ++xo) {
      q[xo] = _mm512_add_ps(q[xo], bv);
      if (act != Act::none)
        q[xo] = _mm512_mask_mul_ps(q[xo], _mm512_cmp_ps_mask(q[xo], zero, _CMP_LE_OQ), q[xo], slope);
    }
    if (fast) {
      float* o = oc + (s0.od0 + zo) * plane + (s0.oh0 + yo) * g.Wo + s0.ow0;
      const bool ntr = nt && !(reinterpret_cast<std::uintptr_t>(o) & 63);
      st_out(o, _mm512_permutex2var_ps(q[0], _mm512_load_si512(il[0]), q[1]), ntr);
      st_out(o + 16, _mm512_permutex2var_ps(q[0], _mm512_load_si512(il[1]), q[1]), ntr);
    } else
      for (int xo = 0; xo < 2; ++xo) _mm512_store_ps(r + (yo * 2 + xo) * TL, q[xo]);
  }
  if (fast) return;
  for (int s = 0; s < gr.nseg; ++s) {
    const Seg& sg = gr.seg[s];
    if (sg.od0 + zo >= g.Do) continue;
    for (int yo = 0; yo < 2; ++yo) {
      const std::int64_t oh = sg.oh0 + yo;
      if (oh >= g.Ho) continue;
      float* o = oc + (sg.od0 + zo) * plane + oh * g.Wo;
      for (int j = sg.j0; j < sg.j1; ++j)
        for (int xo = 0; xo < 2; ++xo) {
          const std::int64_t ow = sg.ow0 + 2 * (j - sg.j0) + xo;
          if (ow < g.Wo) o[ow] = r[(yo * 2 + xo) * TL + j];
        }
    }
  }
}

// Y for one group of strided tiles, every output channel: along D F(2, 3)'s Aᵀ (NZ = 4: 100 points)
// or at5s2 (NZ = 5: 125 points) into two planes of 25, then each plane as s2_plane_out, + bias,
// activation.
template <int NZ>
BHSD_W5 void output_transform_3d_s2(const ConvGeom& g, const Group& gr, const float* M, const float* bias, float* out,
                                    Act act, float alpha, bool nt = false) {
  static_assert(NZ == 4 || NZ == 5 || NZ == 6, "F(2, 3), stride 2 or F(4, 3) along D");
  constexpr int ZO = NZ == 6 ? 4 : 2;  // output planes a tile
  alignas(64) float r1[ZO * 25 * TL];  // [zo][y][x][lane]
  const std::int64_t vol = g.Do * g.Ho * g.Wo, ps = point_stride(g.Co);
  const __m512 slope = _mm512_set1_ps(act == Act::relu ? 0.0f : alpha);
  for (std::int64_t co = 0; co < g.Co; ++co) {
    const float* m = M + co * TL;
    for (int i = 0; i < 25; ++i) {
      __m512 a[NZ];
      for (int z = 0; z < NZ; ++z) a[z] = _mm512_load_ps(m + (25 * z + i) * ps);
      if constexpr (NZ == 4) {
        _mm512_store_ps(r1 + i * TL, _mm512_add_ps(_mm512_add_ps(a[0], a[1]), a[2]));
        _mm512_store_ps(r1 + (25 + i) * TL, _mm512_sub_ps(_mm512_sub_ps(a[1], a[2]), a[3]));
      } else if constexpr (NZ == 5) {
        __m512 o[2];
        at5s2(a, o);
        _mm512_store_ps(r1 + i * TL, o[0]);
        _mm512_store_ps(r1 + (25 + i) * TL, o[1]);
      } else {
        __m512 o[4];
        at6(a, o);
        for (int zo = 0; zo < 4; ++zo) _mm512_store_ps(r1 + (25 * zo + i) * TL, o[zo]);
      }
    }
    const __m512 bv = _mm512_set1_ps(bias ? bias[co] : 0.0f);
    for (int zo = 0; zo < ZO; ++zo) s2_plane_out(g, gr, r1 + zo * 25 * TL, TL, zo, out + co * vol, bv, act, slope, nt);
  }
}

// F(2×2×2, 3×3×3)'s transforms where AVX-512 runs, as the F(4×4, 3×3) ones: a group's 16 lanes one
// zmm, a row of 16 tiles (34 samples) three loads whose evens and odds two-source permutations pick
// (the AVX2 transforms above take eight loads and eight deinterleaves of two registers for the same
// row, and twice the instructions for every add after; at 64 channels they were a third of the time).
// Pairs (a bf16 call on AMX tiles): V's rows written straight as v_to_bf16 would leave them — each
// pair of channels' 16 lanes as one row of 16 pairs (the even channel low), the odd channel's point
// vectors paired with the even one's kept from the channel before — instead of fp32 rows converted
// in a second pass (which read back V's megabytes from beyond L2 at 320 channels).
template <bool Pairs = false>
__attribute__((target("avx512f,avx512bw,avx512bf16,avx2,fma"))) inline void input_transform_3d512(
    const ConvGeom& g, const float* in, const Group& gr, float* V, bool nt = false) {
  alignas(64) float t[64 * TL];     // [z][y][x][lane], transformed along W
  alignas(64) float even[64 * TL];  // Pairs: the even channel's 64 points
  alignas(64) static const std::uint16_t order[32] = {0, 16, 1, 17, 2,  18, 3,  19, 4,  20, 5,  21, 6,  22, 7,  23,
                                                      8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31};
  const __m512i pairs = _mm512_load_si512(order);
  const std::int64_t plane = g.H * g.W, vol = g.D * plane, C = g.C, ps = point_stride(C);
  const bool whole = gr.nseg == 1 && gr.n == TL;
  alignas(64) static const std::int32_t pick[4][16] = {
      {0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30},
      {1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31},
      {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16},   // e2 = e0 one lane on, then sample 32
      {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 17}};  // e3 = e1 one lane on, then sample 33
  const __m512i EV = _mm512_load_si512(pick[0]), OD = _mm512_load_si512(pick[1]), N2 = _mm512_load_si512(pick[2]),
                N3 = _mm512_load_si512(pick[3]);
  SegLanes16<3> L;
  seg_lanes16(g, gr, L);
  for (std::int64_t ci = 0; ci < C; ++ci) {
    const float* x = in + ci * vol;
    for (int zy = 0; zy < 16; ++zy) {
      const int z = zy >> 2, y = zy & 3;
      __m512 acc[4];
      for (int k = 0; k < 4; ++k) acc[k] = _mm512_setzero_ps();
      for (int s = 0; s < gr.nseg; ++s) {
        const Seg& sg = gr.seg[s];
        const std::int64_t id = sg.id0 + z, ih = sg.ih0 + y;
        if (id < 0 || id >= g.D || ih < 0 || ih >= g.H) continue;
        const float* row = x + id * plane + ih * g.W;
        if (y >= 2 && ih + 2 < g.H) conv_detail::prefetch_row(row + 2 * g.W, std::max<std::int64_t>(0, sg.iw0));
        const __m512 z0 = load_row16(row, L.ld[s][0], g.W), z1 = load_row16(row, L.ld[s][1], g.W),
                     z2 = load_row16(row, L.ld[s][2], g.W);
        const __m512 e0 = _mm512_permutex2var_ps(z0, EV, z1), e1 = _mm512_permutex2var_ps(z0, OD, z1);
        const __m512 e2 = _mm512_permutex2var_ps(e0, N2, z2), e3 = _mm512_permutex2var_ps(e1, N3, z2);
        const __m512 w[4] = {_mm512_sub_ps(e0, e2), _mm512_add_ps(e1, e2), _mm512_sub_ps(e2, e1),
                             _mm512_sub_ps(e1, e3)};
        if (whole)
          for (int k = 0; k < 4; ++k) acc[k] = w[k];
        else
          for (int k = 0; k < 4; ++k) acc[k] = _mm512_mask_permutexvar_ps(acc[k], L.lanes[s], L.shift[s], w[k]);
      }
      for (int k = 0; k < 4; ++k) _mm512_store_ps(t + (zy * 4 + k) * TL, acc[k]);
    }
    // along H (in place), then along D into V
    for (int z = 0; z < 4; ++z)
      for (int xq = 0; xq < 4; ++xq) {
        float* p0 = t + ((z * 4 + 0) * 4 + xq) * TL;
        const __m512 s0 = _mm512_load_ps(p0), s1 = _mm512_load_ps(p0 + 4 * TL), s2 = _mm512_load_ps(p0 + 8 * TL),
                     s3 = _mm512_load_ps(p0 + 12 * TL);
        _mm512_store_ps(p0, _mm512_sub_ps(s0, s2)), _mm512_store_ps(p0 + 4 * TL, _mm512_add_ps(s1, s2));
        _mm512_store_ps(p0 + 8 * TL, _mm512_sub_ps(s2, s1)), _mm512_store_ps(p0 + 12 * TL, _mm512_sub_ps(s1, s3));
      }
    float* v = V + (Pairs ? ci / 2 : ci) * TL;
    for (int yx = 0; yx < 16; ++yx) {
      const float* p0 = t + yx * TL;
      const __m512 s0 = _mm512_load_ps(p0), s1 = _mm512_load_ps(p0 + 16 * TL), s2 = _mm512_load_ps(p0 + 32 * TL),
                   s3 = _mm512_load_ps(p0 + 48 * TL);
      const __m512 r[4] = {_mm512_sub_ps(s0, s2), _mm512_add_ps(s1, s2), _mm512_sub_ps(s2, s1), _mm512_sub_ps(s1, s3)};
      for (int d = 0; d < 4; ++d) {
        const int pt = d * 16 + yx;
        if (!Pairs) {
          st_v(v + pt * ps, r[d], nt);
        } else if (ci % 2 == 0 && ci + 1 < C) {
          _mm512_store_ps(even + pt * TL, r[d]);
        } else {  // the odd channel (or an odd C's last, paired with zeros)
          const __m512 lo = ci % 2 ? _mm512_load_ps(even + pt * TL) : r[d], hi = ci % 2 ? r[d] : _mm512_setzero_ps();
          _mm512_store_si512(v + pt * ps, _mm512_permutexvar_epi16(pairs, __m512i(_mm512_cvtne2ps_pbh(hi, lo))));
        }
      }
    }
  }
}

BHSD_W5 void output_transform_3d512(const ConvGeom& g, const Group& gr, const float* M, const float* bias, float* out,
                                    Act act, float alpha) {
  alignas(64) float r1[2 * 16 * TL];  // [zo][y][x][lane], after Aᵀ along D
  alignas(64) float r3[8 * TL];       // [zo][yo][xo][lane], the partial groups' outputs
  const std::int64_t plane = g.Ho * g.Wo, vol = g.Do * plane, Co = g.Co, ps = point_stride(Co);
  const Seg& s0 = gr.seg[0];
  const bool fast = gr.nseg == 1 && gr.n == TL && s0.od0 + 1 < g.Do && s0.oh0 + 1 < g.Ho && s0.ow0 + 2 * TL <= g.Wo;
  alignas(64) static const std::int32_t il[2][16] = {{0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23},
                                                     {8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31}};
  const __m512i IL0 = _mm512_load_si512(il[0]), IL1 = _mm512_load_si512(il[1]);
  const __m512 slope = _mm512_set1_ps(act == Act::relu ? 0.0f : alpha), zero = _mm512_setzero_ps();
  for (std::int64_t co = 0; co < Co; ++co) {
    const float* m = M + co * TL;
    for (int yx = 0; yx < 16; ++yx) {
      const __m512 m0 = _mm512_load_ps(m + (0 * 16 + yx) * ps), m1 = _mm512_load_ps(m + (1 * 16 + yx) * ps),
                   m2 = _mm512_load_ps(m + (2 * 16 + yx) * ps), m3 = _mm512_load_ps(m + (3 * 16 + yx) * ps);
      _mm512_store_ps(r1 + yx * TL, _mm512_add_ps(_mm512_add_ps(m0, m1), m2));
      _mm512_store_ps(r1 + (16 + yx) * TL, _mm512_sub_ps(_mm512_sub_ps(m1, m2), m3));
    }
    const __m512 bv = _mm512_set1_ps(bias ? bias[co] : 0.0f);
    float* oc = out + co * vol;
    for (int zo = 0; zo < 2; ++zo) {
      __m512 h[2][4];
      for (int xq = 0; xq < 4; ++xq) {
        const float* p = r1 + (zo * 16 + xq) * TL;
        const __m512 a0 = _mm512_load_ps(p), a1 = _mm512_load_ps(p + 4 * TL), a2 = _mm512_load_ps(p + 8 * TL),
                     a3 = _mm512_load_ps(p + 12 * TL);
        h[0][xq] = _mm512_add_ps(_mm512_add_ps(a0, a1), a2), h[1][xq] = _mm512_sub_ps(_mm512_sub_ps(a1, a2), a3);
      }
      for (int yo = 0; yo < 2; ++yo) {
        const __m512* q = h[yo];
        __m512 o0 = _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(q[0], q[1]), q[2]), bv);
        __m512 o1 = _mm512_add_ps(_mm512_sub_ps(_mm512_sub_ps(q[1], q[2]), q[3]), bv);
        if (act != Act::none) {
          o0 = _mm512_mask_mul_ps(o0, _mm512_cmp_ps_mask(o0, zero, _CMP_LE_OQ), o0, slope);
          o1 = _mm512_mask_mul_ps(o1, _mm512_cmp_ps_mask(o1, zero, _CMP_LE_OQ), o1, slope);
        }
        if (fast) {
          float* o = oc + (s0.od0 + zo) * plane + (s0.oh0 + yo) * g.Wo + s0.ow0;
          _mm512_storeu_ps(o, _mm512_permutex2var_ps(o0, IL0, o1));
          _mm512_storeu_ps(o + 16, _mm512_permutex2var_ps(o0, IL1, o1));
        } else {
          _mm512_store_ps(r3 + ((zo * 2 + yo) * 2 + 0) * TL, o0);
          _mm512_store_ps(r3 + ((zo * 2 + yo) * 2 + 1) * TL, o1);
        }
      }
    }
    if (fast) continue;
    for (int s = 0; s < gr.nseg; ++s) {
      const Seg& sg = gr.seg[s];
      for (int k = 0; k < 8; ++k) {
        const std::int64_t od = sg.od0 + (k >> 2), oh = sg.oh0 + ((k >> 1) & 1);
        if (od >= g.Do || oh >= g.Ho) continue;
        float* o = oc + od * plane + oh * g.Wo;
        for (int j = sg.j0; j < sg.j1; ++j) {
          const std::int64_t ow = sg.ow0 + 2 * (j - sg.j0) + (k & 1);
          if (ow < g.Wo) o[ow] = r3[k * TL + j];
        }
      }
    }
  }
}
#undef BHSD_W5
#endif

#ifdef BHSD_X86
// The F(4×4)-row transforms where AVX-512 does not run (AVX2 and FMA: Zen 3, older Intel): the same
// tiles as the AVX-512 ones above — F(4×4, 3×3) for 1×3×3 kernels (36 points), F(2×4×4, 3×3×3) (144),
// F(4×4×4, 3×3×3) (216) and the strided layers' phases (100, 125, 150) — with a group's 16 lanes
// as two halves of 8 in ymm registers. Until 2026-12-05 such machines ran F(2×2×2) / F(2×2) tiles
// only (64 points per 8 outputs, 16 per 4) and their strided layers the direct path: on the AVX2
// kernels, where the products are a larger share of a layer than with AVX-512 (half the FMA rate,
// the same transforms), the larger tiles' 1.78× fewer multiplications are most of a layer's time.
// A row of 8 tiles reads its samples as 4-sample quads r_i (samples 4i … 4i + 3 from the segment's
// first column; tile j's six are r_j and the first two of r_{j+1}): two quads a register, r_i with
// r_{i+4}, so that one 4×4 transpose within each 128-bit lane (unpacks, then shuffles) gives
// e_k[j] = sample 4j + k in tile order, e_0 … e_3 from r_0 … r_3 ‖ r_4 … r_7 and e_4, e_5 from
// r_1 … r_4 ‖ r_5 … r_8 — no lane-crossing permutation, which AVX2 has only as one-source vpermps.
#define BHSD_W2 __attribute__((target("avx2,fma"))) inline
BHSD_W2 void st_out(float* p, __m256 v, bool nt) {  // (st_out of 8 lanes)
  if (nt)
    _mm256_stream_ps(p, v);
  else
    _mm256_storeu_ps(p, v);
}

// How to read samples a … a + 3 of a row of W (0 outside [0, W)), RowLoad's kinds on 4 lanes.
struct QuadLoad {
  std::int64_t base;
  int kind;
  __m128i idx, keep;
};
BHSD_W2 QuadLoad quad_load(std::int64_t a, std::int64_t W) {
  QuadLoad L{a, 0, _mm_setzero_si128(), _mm_setzero_si128()};
  std::tie(L.kind, L.base) = row_kind(a, W, 4);
  if (L.kind != 1) return L;
  const __m128i iota = _mm_setr_epi32(0, 1, 2, 3);
  L.idx = _mm_add_epi32(iota, _mm_set1_epi32(int(a - L.base)));  // lane l: sample a + l of the quad at base
  L.keep = _mm_and_si128(_mm_cmpgt_epi32(iota, _mm_set1_epi32(int(-a - 1))),
                         _mm_cmpgt_epi32(_mm_set1_epi32(int(W - a)), iota));
  return L;
}
BHSD_W2 __m128 load_quad(const float* row, const QuadLoad& L, std::int64_t W) {
  switch (L.kind) {
    case 0:
      return _mm_loadu_ps(row + L.base);
    case 1:
      return _mm_and_ps(_mm_permutevar_ps(_mm_loadu_ps(row + L.base), L.idx), _mm_castsi128_ps(L.keep));
    case 2:
      return _mm_setzero_ps();
    default: {
      alignas(16) float v[4];
      row_samples(row, L.base, W, v, 4);
      return _mm_load_ps(v);
    }
  }
}

// F(4,3)'s Bᵀ, Aᵀ and stride 2's bt5s2, at5s2 on vectors of 8 (the same arithmetic as bt6 … at5s2).
BHSD_W2 void bt6x8(const __m256* d, __m256* o) {
  const __m256 c4 = _mm256_set1_ps(4.0f), c5 = _mm256_set1_ps(5.0f), c2 = _mm256_set1_ps(2.0f);
  const __m256 d42 = _mm256_sub_ps(d[4], d[2]);
  o[0] = _mm256_fmadd_ps(c4, d[0], _mm256_fnmadd_ps(c5, d[2], d[4]));
  o[1] = _mm256_fnmadd_ps(c4, _mm256_add_ps(d[1], d[2]), _mm256_add_ps(d[3], d[4]));
  o[2] = _mm256_fmadd_ps(c4, _mm256_sub_ps(d[1], d[2]), _mm256_sub_ps(d[4], d[3]));
  o[3] = _mm256_fmadd_ps(c2, _mm256_sub_ps(d[3], d[1]), d42);
  o[4] = _mm256_fmadd_ps(c2, _mm256_sub_ps(d[1], d[3]), d42);
  o[5] = _mm256_fmadd_ps(c4, d[1], _mm256_fnmadd_ps(c5, d[3], d[5]));
}
BHSD_W2 void at6x8(const __m256* m, __m256* o) {
  const __m256 s12 = _mm256_add_ps(m[1], m[2]), d12 = _mm256_sub_ps(m[1], m[2]);
  const __m256 s34 = _mm256_add_ps(m[3], m[4]), d34 = _mm256_sub_ps(m[3], m[4]);
  o[0] = _mm256_add_ps(_mm256_add_ps(m[0], s12), s34);
  o[1] = _mm256_fmadd_ps(_mm256_set1_ps(2.0f), d34, d12);
  o[2] = _mm256_fmadd_ps(_mm256_set1_ps(4.0f), s34, s12);
  o[3] = _mm256_add_ps(_mm256_fmadd_ps(_mm256_set1_ps(8.0f), d34, d12), m[5]);
}
BHSD_W2 void bt5s2x8(const __m256* d, __m256* o) {
  o[0] = d[1], o[1] = d[3], o[2] = _mm256_sub_ps(d[0], d[2]), o[3] = d[2], o[4] = _mm256_sub_ps(d[4], d[2]);
}
BHSD_W2 void at5s2x8(const __m256* m, __m256* o) {
  o[0] = _mm256_add_ps(_mm256_add_ps(m[0], m[2]), m[3]);
  o[1] = _mm256_add_ps(_mm256_add_ps(m[1], m[3]), m[4]);
}
// Along an axis of a tile: R inputs (6: F(4, 3); 5: stride 2) → its transform, Bᵀ or Aᵀ.
template <bool S2>
BHSD_W2 void btx8(const __m256* d, __m256* o) {
  if constexpr (S2)
    bt5s2x8(d, o);
  else
    bt6x8(d, o);
}
template <bool S2>
BHSD_W2 void atx8(const __m256* m, __m256* o) {
  if constexpr (S2)
    at5s2x8(m, o);
  else
    at6x8(m, o);
}

// Bᵀ along W of one row segment of up to 16 tiles from its quads Q[0 … 16] (Q[i]: samples 4i … 4i + 3
// from the segment's first column): w[2k + h] = transformed sample k of tiles 8h … 8h + 7 (k < 6, or
// 5 for stride 2: the first five e_k through bt5s2).
template <bool S2>
BHSD_W2 void bt_row_quads(const __m128* Q, __m256* w) {
  for (int h = 0; h < 2; ++h) {
    const __m128* q = Q + 8 * h;
    const __m256 y0 = _mm256_set_m128(q[4], q[0]), y1 = _mm256_set_m128(q[5], q[1]), y2 = _mm256_set_m128(q[6], q[2]),
                 y3 = _mm256_set_m128(q[7], q[3]), y4 = _mm256_set_m128(q[8], q[4]);
    const __m256 a = _mm256_unpacklo_ps(y0, y1), b = _mm256_unpackhi_ps(y0, y1), c = _mm256_unpacklo_ps(y2, y3),
                 d = _mm256_unpackhi_ps(y2, y3);
    const __m256 a1 = _mm256_unpacklo_ps(y1, y2), c1 = _mm256_unpacklo_ps(y3, y4);
    __m256 e[6], o[6];
    e[0] = _mm256_shuffle_ps(a, c, 0x44), e[1] = _mm256_shuffle_ps(a, c, 0xEE);
    e[2] = _mm256_shuffle_ps(b, d, 0x44), e[3] = _mm256_shuffle_ps(b, d, 0xEE);
    e[4] = _mm256_shuffle_ps(a1, c1, 0x44), e[5] = _mm256_shuffle_ps(a1, c1, 0xEE);
    btx8<S2>(e, o);
    for (int k = 0; k < (S2 ? 5 : 6); ++k) w[2 * k + h] = o[k];
  }
}

// The 16 quads' lines of a row segment from column iw0 (five lines, clamped into the row) into L1.
BHSD_W2 void prefetch_row_quads(const float* row, std::int64_t iw0, std::int64_t W) {
  for (int q = 0; q < 5; ++q)
    _mm_prefetch(
        reinterpret_cast<const char*>(conv_detail::float_at(row, std::clamp<std::int64_t>(iw0 + 16 * q, 0, W - 1))),
        _MM_HINT_T0);
}

// V for one group of tiles, every input channel, on AVX2: NZ input planes a tile — 1 (1×3×3,
// F(4×4, 3×3): 36 points), 4 (F(2, 3) along D: 144, or with S2 100), 6 (F(4, 3) along D: 216, or 150)
// or 5 (S2 with stride 2 along D: 125) —, each plane's rows along W (bt_row_quads), then along H, then
// along D: V[p·(C + 1)·16 + ci·16 + j] for the points p = R²·z + R·y + x (R = 6, or 5 for stride 2),
// as input_transform_f4 / _3d_f4 / _3d_s2 leave them. A group whose 16 tiles are one segment with
// quads 1 … 15 inside the row reads those straight and its first and last through QuadLoad's kinds;
// others read every quad so, a partial group's segments moved into their lanes one by one.
template <int NZ, bool S2>
BHSD_W2 void input_transform_avx2(const ConvGeom& g, const float* in, const Group& gr, float* V, bool nt = false) {
  constexpr int R = S2 ? 5 : 6, RR = R * R;
  alignas(64) float t[NZ * RR * TL];  // [z][y][x][lane]
  alignas(64) float tmp[6 * TL];      // a partial group's segment, before its lanes move into place
  const std::int64_t plane = g.H * g.W, vol = g.D * plane, C = g.C, ps = point_stride(C);
  const bool whole = gr.nseg == 1 && gr.n == TL;
  // quads 1 … 15 inside the row (every whole group of a row of 64 or more with padding 1: only the
  // first quad of a row's first group and the last of its last leave it), read straight
  const bool inner = whole && gr.seg[0].iw0 + 4 >= 0 && gr.seg[0].iw0 + 64 <= g.W;
  QuadLoad ql[TL][17];
  for (int s = 0; s < gr.nseg; ++s)
    for (int i = 0; i < 17; ++i) ql[s][i] = quad_load(gr.seg[s].iw0 + 4 * i, g.W);
  for (std::int64_t ci = 0; ci < C; ++ci) {
    const float* x = in + ci * vol;
    const std::int64_t pf = ci + 1 < C ? vol : 0;  // the next channel's same rows, as these are read
    for (int zy = 0; zy < NZ * R; ++zy) {
      const int z = zy / R, y = zy % R;
      float* tr = t + zy * R * TL;
      if (!whole) std::memset(tr, 0, R * TL * sizeof(float));
      for (int s = 0; s < gr.nseg; ++s) {
        const Seg& sg = gr.seg[s];
        const std::int64_t id = sg.id0 + z, ih = sg.ih0 + y;
        if (id < 0 || id >= g.D || ih < 0 || ih >= g.H) {
          if (whole) std::memset(tr, 0, R * TL * sizeof(float));
          continue;
        }
        const float* row = x + id * plane + ih * g.W;
        if (pf) prefetch_row_quads(row + pf, sg.iw0, g.W);
        if (NZ == 1 && y >= 2 && ih + 4 < g.H) prefetch_row_quads(row + 4 * g.W, sg.iw0, g.W);  // next tile row's
        __m128 Q[17];
        if (inner) {
          Q[0] = load_quad(row, ql[0][0], g.W), Q[16] = load_quad(row, ql[0][16], g.W);
          for (int i = 1; i < 16; ++i) Q[i] = _mm_loadu_ps(row + sg.iw0 + 4 * i);
        } else
          for (int i = 0; i < 17; ++i) Q[i] = load_quad(row, ql[s][i], g.W);
        __m256 w[12];
        bt_row_quads<S2>(Q, w);
        float* dst = whole ? tr : tmp;
        for (int k = 0; k < R; ++k)
          _mm256_store_ps(dst + k * TL, w[2 * k]), _mm256_store_ps(dst + k * TL + 8, w[2 * k + 1]);
        if (!whole)
          for (int k = 0; k < R; ++k)
            for (int j = sg.j0; j < sg.j1; ++j) tr[k * TL + j] = tmp[k * TL + j - sg.j0];
      }
    }
    // along H, in place — or, with one plane (1×3×3: nothing along D), straight into V
    float* v = V + ci * TL;
    for (int z = 0; z < NZ; ++z)
      for (int k = 0; k < R; ++k)
        for (int h = 0; h < 2; ++h) {
          __m256 d[6], o[6];
          float* p0 = t + (z * RR + k) * TL + 8 * h;
          for (int y = 0; y < R; ++y) d[y] = _mm256_load_ps(p0 + y * R * TL);
          btx8<S2>(d, o);
          for (int y = 0; y < R; ++y)
            if constexpr (NZ == 1)
              st_v(v + (y * R + k) * ps + 8 * h, o[y], nt);
            else
              _mm256_store_ps(p0 + y * R * TL, o[y]);
        }
    if constexpr (NZ > 1) {  // along D into V
      for (int i = 0; i < RR; ++i)
        for (int h = 0; h < 2; ++h) {
          __m256 d[6], o[6];
          for (int z = 0; z < NZ; ++z) d[z] = _mm256_load_ps(t + (z * RR + i) * TL + 8 * h);
          if constexpr (NZ == 4) {  // F(2, 3)'s Bᵀ
            o[0] = _mm256_sub_ps(d[0], d[2]), o[1] = _mm256_add_ps(d[1], d[2]);
            o[2] = _mm256_sub_ps(d[2], d[1]), o[3] = _mm256_sub_ps(d[1], d[3]);
          } else if constexpr (NZ == 5) {
            bt5s2x8(d, o);
          } else {
            bt6x8(d, o);
          }
          for (int z = 0; z < NZ; ++z) st_v(v + (RR * z + i) * ps + 8 * h, o[z], nt);
        }
    }
  }
}

// Y for one group of input_transform_avx2's tiles, every output channel: along D (F(2, 3)'s Aᵀ,
// F(4, 3)'s, stride 2's or none) into ZO output planes of R² points, then each plane along H and W
// (Aᵀ: MO = 4 outputs a tile along each, or 2 for stride 2), + bias, activation, stored where the
// output exists: a whole row of 16 tiles as MO rows of 16·MO columns (each tile's columns
// interleaved by unpacks and shuffles within 128-bit lanes), other groups voxel by voxel.
template <int NZ, bool S2>
BHSD_W2 void output_transform_avx2(const ConvGeom& g, const Group& gr, const float* M, const float* bias, float* out,
                                   Act act, float alpha, bool nt = false) {
  constexpr int R = S2 ? 5 : 6, RR = R * R, MO = S2 ? 2 : 4;
  constexpr int ZO = NZ == 1 ? 1 : NZ == 6 ? 4 : 2;  // output planes a tile
  alignas(64) float r1[ZO * RR * TL];                // [zo][y][x][lane], after Aᵀ along D (NZ > 1)
  alignas(64) float hb[MO * R * TL];                 // [yo][x][lane], after Aᵀ along H
  alignas(64) float r[MO * MO * TL];                 // [yo][xo][lane], a partial group's outputs
  const std::int64_t plane = g.Ho * g.Wo, vol = g.Do * plane, ps = point_stride(g.Co);
  const Seg& s0 = gr.seg[0];
  const bool rows = gr.nseg == 1 && gr.n == TL && s0.oh0 + MO - 1 < g.Ho && s0.ow0 + MO * TL <= g.Wo;
  const __m256 slope = _mm256_set1_ps(act == Act::relu ? 0.0f : alpha);
  for (std::int64_t co = 0; co < g.Co; ++co) {
    const float* m = M + co * TL;
    if constexpr (NZ > 1)  // along D (one plane: H and W read M itself)
      for (int i = 0; i < RR; ++i)
        for (int h = 0; h < 2; ++h) {
          __m256 a[6], o[4];
          for (int z = 0; z < NZ; ++z) a[z] = _mm256_load_ps(m + (RR * z + i) * ps + 8 * h);
          if constexpr (NZ == 4) {  // F(2, 3)'s Aᵀ
            o[0] = _mm256_add_ps(_mm256_add_ps(a[0], a[1]), a[2]),
            o[1] = _mm256_sub_ps(_mm256_sub_ps(a[1], a[2]), a[3]);
          } else if constexpr (NZ == 5) {
            at5s2x8(a, o);
          } else {
            at6x8(a, o);
          }
          for (int zo = 0; zo < ZO; ++zo) _mm256_store_ps(r1 + (RR * zo + i) * TL + 8 * h, o[zo]);
        }
    const __m256 bv = _mm256_set1_ps(bias ? bias[co] : 0.0f);
    float* oc = out + co * vol;
    for (int zo = 0; zo < ZO; ++zo) {
      const bool fast = rows && s0.od0 + zo < g.Do;
      const float* p = NZ == 1 ? m : r1 + zo * RR * TL;
      const std::int64_t pst = NZ == 1 ? ps : TL;  // (its points' stride)
      for (int k = 0; k < R; ++k)                  // along H
        for (int h = 0; h < 2; ++h) {
          __m256 a[6], o[4];
          for (int y = 0; y < R; ++y) a[y] = _mm256_load_ps(p + (y * R + k) * pst + 8 * h);
          atx8<S2>(a, o);
          for (int yo = 0; yo < MO; ++yo) _mm256_store_ps(hb + (yo * R + k) * TL + 8 * h, o[yo]);
        }
      for (int yo = 0; yo < MO; ++yo)  // along W
        for (int h = 0; h < 2; ++h) {
          __m256 a[6], q[4];
          for (int k = 0; k < R; ++k) a[k] = _mm256_load_ps(hb + (yo * R + k) * TL + 8 * h);
          atx8<S2>(a, q);
          for (int xo = 0; xo < MO; ++xo) {
            q[xo] = _mm256_add_ps(q[xo], bv);
            if (act != Act::none) q[xo] = act8(q[xo], slope);
          }
          if (!fast) {
            for (int xo = 0; xo < MO; ++xo) _mm256_store_ps(r + (yo * MO + xo) * TL + 8 * h, q[xo]);
            continue;
          }
          float* o = oc + (s0.od0 + zo) * plane + (s0.oh0 + yo) * g.Wo + s0.ow0 + 8 * MO * h;
          const bool ntr = nt && !(reinterpret_cast<std::uintptr_t>(o) & 63);  // whole lines
          if constexpr (MO == 2) {  // tiles 0–3 ‖ 4–7 as pairs of columns
            const __m256 lo = _mm256_unpacklo_ps(q[0], q[1]), hi = _mm256_unpackhi_ps(q[0], q[1]);
            st_out(o, _mm256_permute2f128_ps(lo, hi, 0x20), ntr);
            st_out(o + 8, _mm256_permute2f128_ps(lo, hi, 0x31), ntr);
          } else {  // a 4×4 transpose in each 128-bit lane: tiles (0, 4), (1, 5), (2, 6), (3, 7)
            const __m256 a0 = _mm256_unpacklo_ps(q[0], q[1]), b0 = _mm256_unpackhi_ps(q[0], q[1]),
                         c0 = _mm256_unpacklo_ps(q[2], q[3]), d0 = _mm256_unpackhi_ps(q[2], q[3]);
            const __m256 t04 = _mm256_shuffle_ps(a0, c0, 0x44), t15 = _mm256_shuffle_ps(a0, c0, 0xEE),
                         t26 = _mm256_shuffle_ps(b0, d0, 0x44), t37 = _mm256_shuffle_ps(b0, d0, 0xEE);
            st_out(o, _mm256_permute2f128_ps(t04, t15, 0x20), ntr);
            st_out(o + 8, _mm256_permute2f128_ps(t26, t37, 0x20), ntr);
            st_out(o + 16, _mm256_permute2f128_ps(t04, t15, 0x31), ntr);
            st_out(o + 24, _mm256_permute2f128_ps(t26, t37, 0x31), ntr);
          }
        }
      if (fast) continue;
      for (int s = 0; s < gr.nseg; ++s) {
        const Seg& sg = gr.seg[s];
        if (sg.od0 + zo >= g.Do) continue;
        for (int yo = 0; yo < MO; ++yo) {
          const std::int64_t oh = sg.oh0 + yo;
          if (oh >= g.Ho) continue;
          float* o = oc + (sg.od0 + zo) * plane + oh * g.Wo;
          for (int j = sg.j0; j < sg.j1; ++j)
            for (int xo = 0; xo < MO; ++xo) {
              const std::int64_t ow = sg.ow0 + MO * (j - sg.j0) + xo;
              if (ow < g.Wo) o[ow] = r[(yo * MO + xo) * TL + j];
            }
        }
      }
    }
  }
}
#undef BHSD_W2
#endif

}  // namespace wino_detail

#ifdef BHSD_X86
namespace wino_detail {
// One point's GEMM for output-channel blocks cob … cobn − 1 (at most two) of 16 tiles into o (rows
// of 16): kernel_blocks (on AVX-512 the two short tail blocks of a layer whose width is not a
// multiple of 6 run as one pair: 32 channels are 6+6, 6+6, 4+4).
inline void point_gemm(const float* Up, std::int64_t Kfull, const CoBlocks& cbk, std::int64_t cob, std::int64_t cobn,
                       const float* v, std::int64_t K, float* o) {
  using namespace conv_detail;
  kernel_blocks(Up, Kfull, cbk, cob, cobn, PackedB{v}, K, o, TL, nullptr, TL, true, false, Act::none, 0.0f);
}

// The same for two groups' tiles at once (v0 → o0, v1 → o1): each weight feeds both (kernel_blocks2).
// With vnext and mnext (0: not asked), the products also ask for the lines that the same call of the
// next point will read and write: its V rows vnext floats on (a line a step of the kernel's loop:
// PackedAhead) and its M rows mnext floats on (before the loop: prefetch_rows_for_write).
inline void point_gemm2(const float* Up, std::int64_t Kfull, const CoBlocks& cbk, std::int64_t cob, std::int64_t cobn,
                        const float* v0, const float* v1, std::int64_t K, float* o0, float* o1, std::int64_t vnext = 0,
                        std::int64_t mnext = 0) {
  using namespace conv_detail;
  if (mnext) {
    const std::int64_t r0 = cbk.row0(cob), r1 = cbk.row0(cobn - 1) + cbk.rows(cobn - 1);
    prefetch_rows_for_write(o0 + mnext, r0, r1, TL), prefetch_rows_for_write(o1 + mnext, r0, r1, TL);
  }
  if (vnext)
    return kernel_blocks2(Up, Kfull, cbk, cob, cobn, PackedAhead{v0, vnext}, PackedAhead{v1, vnext}, K, o0, o1, TL,
                          nullptr, TL, TL, true, false, Act::none, 0.0f);
  kernel_blocks2(Up, Kfull, cbk, cob, cobn, PackedB{v0}, PackedB{v1}, K, o0, o1, TL, nullptr, TL, TL, true, false,
                 Act::none, 0.0f);
}

// bf16 products (setCpuPrecision("bf16")): vdpbf16ps multiplies 16 pairs of bf16 and adds both
// products to each fp32 lane — two input channels per instruction where vfmadd231ps does one, the
// same register tile: 419 against 227 GFLOP/s on one Zen 5 core. A point's V rows (16 tiles of one
// input channel, fp32 from the input transform) become ⌈C/2⌉ rows of 16 words, word t holding
// channel 2kp's tile t (low half) and channel 2kp + 1's (high half), in place: row kp is written
// where rows 2kp, 2kp + 1 were read, never over a row still to be read.
#define BHSD_BF __attribute__((target("avx512f,avx512bw,avx512bf16,avx2,fma"))) inline
BHSD_BF void v_to_bf16(float* V, int P, std::int64_t vps, std::int64_t C) {
  alignas(64) static const std::uint16_t order[32] = {0, 16, 1, 17, 2,  18, 3,  19, 4,  20, 5,  21, 6,  22, 7,  23,
                                                      8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31};
  const __m512i idx = _mm512_load_si512(order);
  for (int p = 0; p < P; ++p) {
    float* v = V + p * vps;
    std::int64_t kp = 0;
    for (; 2 * kp + 1 < C; ++kp) {
      const __m512 lo = _mm512_loadu_ps(v + 32 * kp), hi = _mm512_loadu_ps(v + 32 * kp + 16);
      _mm512_storeu_si512(v + 16 * kp, _mm512_permutexvar_epi16(idx, __m512i(_mm512_cvtne2ps_pbh(hi, lo))));
    }
    if (2 * kp < C) {  // an odd channel count: its last channel paired with zeros
      const __m512 lo = _mm512_loadu_ps(v + 32 * kp);
      _mm512_storeu_si512(v + 16 * kp,
                          _mm512_permutexvar_epi16(idx, __m512i(_mm512_cvtne2ps_pbh(_mm512_setzero_ps(), lo))));
    }
  }
}

// M rows (R0 + R1 output channels of blocks a0, a1, 16 tiles each, rows of 16 at o) = Σ over the
// KP pairs of channels of a's pair × b's pair; a: MR words a pair row, b: 16 words a pair row.
template <int R0, int R1>
BHSD_BF void kernel_bf16(const std::uint32_t* a0, const std::uint32_t* a1, const float* b, std::int64_t KP, float* o) {
  constexpr int R = R0 + R1;
  __m512 c[R];
#pragma GCC unroll 12
  for (int r = 0; r < R; ++r) c[r] = _mm512_setzero_ps();
  for (std::int64_t kp = 0; kp < KP; ++kp) {
    const __m512bh v = __m512bh(_mm512_loadu_si512(b + 16 * kp));
#pragma GCC unroll 6
    for (int r = 0; r < R0; ++r) c[r] = _mm512_dpbf16_ps(c[r], __m512bh(_mm512_set1_epi32(int(a0[r]))), v);
#pragma GCC unroll 6
    for (int r = 0; r < R1; ++r) c[R0 + r] = _mm512_dpbf16_ps(c[R0 + r], __m512bh(_mm512_set1_epi32(int(a1[r]))), v);
    a0 += MR;
    if (R1) a1 += MR;
  }
#pragma GCC unroll 12
  for (int r = 0; r < R; ++r) _mm512_storeu_ps(o + r * TL, c[r]);
}
template <int R0>
BHSD_BF void kernel_bf16_second(std::int64_t r1, const std::uint32_t* a0, const std::uint32_t* a1, const float* b,
                                std::int64_t KP, float* o) {
  switch (r1) {
    case 6:
      return kernel_bf16<R0, 6>(a0, a1, b, KP, o);
    case 5:
      return kernel_bf16<R0, 5>(a0, a1, b, KP, o);
    case 4:
      return kernel_bf16<R0, 4>(a0, a1, b, KP, o);
    case 3:
      return kernel_bf16<R0, 3>(a0, a1, b, KP, o);
    case 2:
      return kernel_bf16<R0, 2>(a0, a1, b, KP, o);
    case 1:
      return kernel_bf16<R0, 1>(a0, a1, b, KP, o);
    default:
      return kernel_bf16<R0, 0>(a0, a1, b, KP, o);
  }
}
// Point p's products for output-channel blocks cob and, where cobn = cob + 2, cob + 1 (rows right
// after cob's in o): Ub the layer's bf16 pairs ([block][point][pair][MR]), v the point's V pair rows.
BHSD_BF void point_gemm_bf16(const std::uint32_t* Ub, int P, int p, std::int64_t KP, const CoBlocks& cbk,
                             std::int64_t cob, std::int64_t cobn, const float* v, float* o) {
  const std::uint32_t* a0 = Ub + (cob * P + p) * KP * MR;
  const std::uint32_t* a1 = a0 + std::int64_t(P) * KP * MR;
  const std::int64_t r1 = cobn == cob + 2 ? cbk.rows(cob + 1) : 0;
  o += cbk.row0(cob) * TL;
  switch (cbk.rows(cob)) {
    case 6:
      return kernel_bf16_second<6>(r1, a0, a1, v, KP, o);
    case 5:
      return kernel_bf16_second<5>(r1, a0, a1, v, KP, o);
    case 4:
      return kernel_bf16_second<4>(r1, a0, a1, v, KP, o);
    case 3:
      return kernel_bf16_second<3>(r1, a0, a1, v, KP, o);
    case 2:
      return kernel_bf16_second<2>(r1, a0, a1, v, KP, o);
    default:
      return kernel_bf16_second<1>(r1, a0, a1, v, KP, o);
  }
}

// kernel_bf16 for two groups' tiles at once (b0 → o0, b1 → o1): each broadcast pair of weights feeds
// two vdpbf16ps, as kernel_avx512_pair2 does for fp32.
template <int R0, int R1>
BHSD_BF void kernel_bf16_2(const std::uint32_t* a0, const std::uint32_t* a1, const float* b0, const float* b1,
                           std::int64_t KP, float* o0, float* o1) {
  constexpr int R = R0 + R1;
  __m512 c[R], d[R];
#pragma GCC unroll 12
  for (int r = 0; r < R; ++r) c[r] = d[r] = _mm512_setzero_ps();
  for (std::int64_t kp = 0; kp < KP; ++kp) {
    const __m512bh v = __m512bh(_mm512_loadu_si512(b0 + 16 * kp)), e = __m512bh(_mm512_loadu_si512(b1 + 16 * kp));
#pragma GCC unroll 6
    for (int r = 0; r < R0; ++r) {
      const __m512bh w = __m512bh(_mm512_set1_epi32(int(a0[r])));
      c[r] = _mm512_dpbf16_ps(c[r], w, v), d[r] = _mm512_dpbf16_ps(d[r], w, e);
    }
#pragma GCC unroll 6
    for (int r = 0; r < R1; ++r) {
      const __m512bh w = __m512bh(_mm512_set1_epi32(int(a1[r])));
      c[R0 + r] = _mm512_dpbf16_ps(c[R0 + r], w, v), d[R0 + r] = _mm512_dpbf16_ps(d[R0 + r], w, e);
    }
    a0 += MR;
    if (R1) a1 += MR;
  }
  __asm__ volatile("" : "+r"(o0), "+r"(o1));  // addresses after the loop (see kernel_avx512_pair2)
#pragma GCC unroll 12
  for (int r = 0; r < R; ++r) _mm512_storeu_ps(o0 + r * TL, c[r]), _mm512_storeu_ps(o1 + r * TL, d[r]);
}
// point_gemm_bf16 for two groups (v0 → o0, v1 → o1): full blocks and the tail pairs in one call,
// any other block shape as two.
BHSD_BF void point_gemm_bf16_2(const std::uint32_t* Ub, int P, int p, std::int64_t KP, const CoBlocks& cbk,
                               std::int64_t cob, std::int64_t cobn, const float* v0, const float* v1, float* o0,
                               float* o1) {
  const std::uint32_t* a0 = Ub + (cob * P + p) * KP * MR;
  const std::uint32_t* a1 = a0 + std::int64_t(P) * KP * MR;
  const std::int64_t r0 = cbk.rows(cob), r1 = cobn == cob + 2 ? cbk.rows(cob + 1) : 0;
  float* q0 = o0 + cbk.row0(cob) * TL;
  float* q1 = o1 + cbk.row0(cob) * TL;
#define BHSD_BF2(A, B) return kernel_bf16_2<A, B>(a0, a1, v0, v1, KP, q0, q1)
  if (r0 == MR) switch (r1) {
      case 6:
        BHSD_BF2(6, 6);
      case 5:
        BHSD_BF2(6, 5);
      case 4:
        BHSD_BF2(6, 4);
      case 3:
        BHSD_BF2(6, 3);
      case 2:
        BHSD_BF2(6, 2);
      case 1:
        BHSD_BF2(6, 1);
      default:
        BHSD_BF2(6, 0);
    }
  if (r0 == 4 && r1 == 4) BHSD_BF2(4, 4);
  if (r0 == 4 && r1 == 3) BHSD_BF2(4, 3);
  if (r0 == 5 && r1 == 4) BHSD_BF2(5, 4);
  if (r0 == 5 && r1 == 0) BHSD_BF2(5, 0);
  if (r0 == 4 && r1 == 0) BHSD_BF2(4, 0);
#undef BHSD_BF2
  point_gemm_bf16(Ub, P, p, KP, cbk, cob, cobn, v0, o0);
  point_gemm_bf16(Ub, P, p, KP, cbk, cob, cobn, v1, o1);
}
#undef BHSD_BF
}  // namespace wino_detail
#endif

// Whether Winograd serves this convolution here: a 3×3×3 (F(2×2×2, 3×3×3)) or 1×3×3 (F(2×2, 3×3)
// per plane) kernel, stride 1 — or a 3×3×3 kernel of stride 1×2×2 or 2×2×2 (is_s2), not in a
// training call —, dilation 1, at least 8 input and output channels (8→8 at 16×64×64,
// MONAI SegResNet's first stage: 1.13 → 0.80 ms), an x86 processor with AVX2 and FMA (the micro-kernels it runs on).
inline bool winograd_applies(const ConvGeom& g) {
#ifdef BHSD_X86
  const bool s2 = wino_detail::is_s2(g);
  if (!s2 && ((g.kd != 3 && g.kd != 1) || g.kh != 3 || g.kw != 3 || g.sd != 1 || g.sh != 1 || g.sw != 1 || g.dd != 1 ||
              g.dh != 1 || g.dw != 1))
    return false;
  if (g.C < 8 || g.Co < 8 || g.Do < 1 || g.Ho < 1 || g.Wo < 1) return false;
  // a training call (precise tiles held) keeps the direct path for a strided layer, whatever the mode:
  // its gradients are compared with PyTorch's, and the forward they follow stays what it was
  if (s2 && wino_detail::precise_tiles().load(std::memory_order_relaxed) > 0) return false;
  const CpuFeatures f = cpu_features();
  return f.avx2 && f.fma && !std::getenv("BHSD_NO_AVX2");
#else
  (void)g;
  return false;
#endif
}

namespace wino_detail {
// The AMX tile state for a scope where `on` (a task of a call whose products run on tiles).
struct TilesScope {
#ifdef BHSD_AMX
  std::unique_ptr<amx_detail::Tiles> t;
  explicit TilesScope(bool on) : t(on ? new amx_detail::Tiles : nullptr) {}
#else
  explicit TilesScope(bool) {}
#endif
};

#ifdef BHSD_AMX
// Point p's products on AMX tiles for groups 0 … gn − 1 (V, M as conv3d_forward_winograd keeps
// them): for each pair of 16-channel output blocks and pair of groups, 2 × 2 tiles over the
// point's chunks of 16 channel pairs — A from transform_weights' tiles, B a group's V pair rows
// as they are (16 rows of 16 tiles' pairs), the sums stored as M's rows (a last block past Co
// through a spare tile, so that no row of the next point is touched).
inline void point_tiles(const std::uint16_t* Ua, std::int64_t Co, int P, int p, std::int64_t chunks, std::int64_t gn,
                        const float* V, std::int64_t vsz, std::int64_t vps, float* M, std::int64_t msz,
                        std::int64_t mps) {
  using namespace amx_detail;
  const std::int64_t blocks = (Co + 15) / 16;
  alignas(64) float spare[4][256];
  for (std::int64_t o = 0; o < blocks; o += 2) {
    const bool two_a = o + 1 < blocks;
    const std::uint16_t* a0 = Ua + (o * P + p) * chunks * kTileWords;
    const std::uint16_t* a1 = a0 + std::int64_t(P) * chunks * kTileWords;
    const bool full0 = 16 * (o + 1) <= Co, full1 = 16 * (o + 2) <= Co;
    for (std::int64_t q = 0; q < gn; q += 2) {
      const bool two_b = q + 1 < gn;
      const auto* b0 = reinterpret_cast<const std::uint16_t*>(V + q * vsz + p * vps);
      const auto* b1 = reinterpret_cast<const std::uint16_t*>(V + (q + 1) * vsz + p * vps);
      float* m0 = M + q * msz + p * mps + o * 256;
      float* m1 = M + (q + 1) * msz + p * mps + o * 256;
      float* s00 = full0 ? m0 : spare[0];
      float* s01 = full0 ? m1 : spare[1];
      float* s10 = full1 ? m0 + 256 : spare[2];
      float* s11 = full1 ? m1 + 256 : spare[3];
      if (two_a && two_b)
        run_tiles<true, true>(a0, a1, b0, b1, chunks, s00, s01, s10, s11, true);
      else if (two_a)
        run_tiles<true, false>(a0, a1, b0, b1, chunks, s00, s01, s10, s11, true);
      else if (two_b)
        run_tiles<false, true>(a0, a1, b0, b1, chunks, s00, s01, s10, s11, true);
      else
        run_tiles<false, false>(a0, a1, b0, b1, chunks, s00, s01, s10, s11, true);
      // a partial last block: its rows below Co from the spare tile
      const std::int64_t last = two_a ? o + 1 : o, rows = Co - 16 * last;
      if (rows < 16) {
        const std::size_t bytes = std::size_t(rows) * 16 * sizeof(float);
        std::memcpy(last == o ? m0 : m0 + 256, last == o ? spare[0] : spare[2], bytes);
        if (two_b) std::memcpy(last == o ? m1 : m1 + 256, last == o ? spare[1] : spare[3], bytes);
      }
    }
  }
}
#endif
}  // namespace wino_detail

// The convolution by Winograd F(2×2×2, 3×3×3): in [C, D, H, W] → out [Co, Do, Ho, Wo], wp the
// direct path's packed weights (pack_conv_weights). Returns false (nothing written) where it does
// not apply or its buffers could not be had.
namespace wino_detail {
// Groups of tiles per task (before the cap of two tasks a thread): their V and M (P·16·(C + Co) floats
// each) within about 768 KB of L2 — unless the transformed weights U pass 12 MB (256→256 and
// wider): each task streams all of U from L3 or memory once, so it takes 8 groups (128 tiles) a
// pass and lets their V and M spill to L3 (measured on the nnU-Net window when the rule was set: 512→256 at
// 8×32×32 115 → 85 ms, 256→256 50 → 41 ms, while 128-channel layers lost 10 % the same way). At
// least two groups, past the 768 KB, where the AVX-512 GEMM takes two groups' tiles per call
// (kernel_blocks2): 64→64 F(2×4×4) at 16×128×128 58–63 → 45–49 ms, 32→32 at 16×256×256 85 →
// 68–79 ms; four lost again. Where U passes 12 MB and the layer has 64 groups or more the plan also
// times 2 groups a task, and 1 where 2 beat 8 (winograd_hook): which
// wins depends on the machine's caches (the Xeon of 2026-12-04, whose L3 holds ~8 MB at 40 ns and
// then goes to memory at 160 ns: 256→128 at 16×64×64 143 ms with 8 groups, 91 with 2; 256→256 at
// 8×32×32 31 with 4, 25 with 1; 512→256 60 with 4, 65 with 2, 86 with 1).
inline std::int64_t task_groups(const ConvGeom& g, int P, std::size_t u_floats) {
  const std::int64_t per_group = P * TL * (g.C + g.Co) * std::int64_t(sizeof(float));
  const std::int64_t ubytes = std::int64_t(u_floats * sizeof(float));
#ifdef BHSD_X86
  const std::int64_t gmin = conv_detail::use_avx512() ? 2 : 1;
#else
  const std::int64_t gmin = 1;  // (Winograd runs on x86 only)
#endif
  return ubytes > (std::int64_t(12) << 20) ? 8
                                           : std::clamp<std::int64_t>((std::int64_t(768) << 10) / per_group, gmin, 8);
}
}  // namespace wino_detail

inline bool conv3d_forward_winograd(const ConvGeom& g, const float* in, const float* wp, const float* bias, float* out,
                                    Act act, float alpha, ThreadPool& pool) {
#ifdef BHSD_X86
  using namespace wino_detail;
  using conv_detail::Scratch;
  if (!winograd_applies(g)) return false;
  const TileFreeze freeze(g);  // the tiles of this call, whatever precise_tiles does meanwhile
  const int P = points(g);
  const bool bf = use_bf16();           // this call's precision (its thread's), fixed for the whole call
  const bool tiles = use_tiles(g, bf);  // its products on AMX tiles
  const std::size_t need = u_words(g, bf, tiles);
  if (need > (std::size_t(1) << 30) / sizeof(float)) return false;  // over 1 GB of weights: leave it to the direct path
  const std::shared_ptr<const WeightEntry> cached = WeightCache::instance().get(g, wp, pool, bf, tiles);
  std::unique_ptr<WeightLease> lease;
  const void* Uany = cached ? cached->U() : nullptr;
  if (!Uany) {
    lease.reset(new WeightLease(need, (std::size_t(32) << 20) / sizeof(float)));
    if (!lease->get()) return false;
    transform_weights(g, wp, lease->get(), pool, bf, tiles);
    Uany = lease->get();
  }
  const float* U = static_cast<const float*>(Uany);
  const auto* Ub = static_cast<const std::uint32_t*>(Uany);
  const std::int64_t KP = (g.C + 1) / 2;
  const std::int64_t dz = tile_dz(g), m = tile_m(g), TD = (g.Do + dz - 1) / dz, TH = (g.Ho + m - 1) / m,
                     TW = (g.Wo + m - 1) / m, T = TD * TH * TW;
  const std::int64_t ngroups = (T + TL - 1) / TL;
  const std::int64_t threads = std::int64_t(pool.size());
  // groups per task: task_groups' rule (at least two tasks a thread where there are groups enough),
  // or the plan's count (on a slab of the layer: the layer's own)
  const std::int64_t G = groups_override() > 0
                             ? std::min<std::int64_t>({groups_override(), ngroups, 8})
                             : std::max<std::int64_t>(1, std::min(task_groups(g, P, need), ngroups / (2 * threads)));
  const std::int64_t tasks = (ngroups + G - 1) / G;
  const CoBlocks cbk(g.Co);
  const std::int64_t coblocks = cbk.count();
  const std::int64_t vps = point_stride(g.C), mps = point_stride(g.Co), vsz = P * vps, msz = P * mps;
  const bool avx2 = !conv_detail::use_avx512();  // the F(4×4)-row tiles' AVX2 transforms
  // V's stores stream past the caches (st_v) where the V of the groups transformed before their
  // products (a task's, or the split path's all) is too large for the caches to hold until the
  // products read it: written through them, each line is first read from memory and later evicted
  // back. Not for bf16's V, converted in place at once (v_to_bf16) or written as pairs for AMX.
  const auto stream_v = [&](std::int64_t groups) {
    return !bf && !tiles && std::size_t(groups * vsz) * sizeof(float) >= stream_v_bytes();
  };
  auto input_tf = [&](const Group& gr, float* V, bool nt) {
    if (avx2 && P != 64 && P != 16) {
      if (P == 100)
        input_transform_avx2<4, true>(g, in, gr, V, nt);
      else if (P == 125)
        input_transform_avx2<5, true>(g, in, gr, V, nt);
      else if (P == 150)
        input_transform_avx2<6, true>(g, in, gr, V, nt);
      else if (P == 216)
        input_transform_avx2<6, false>(g, in, gr, V, nt);
      else if (P == 144)
        input_transform_avx2<4, false>(g, in, gr, V, nt);
      else
        input_transform_avx2<1, false>(g, in, gr, V, nt);
    } else if (P == 100)
      input_transform_3d_s2<4>(g, in, gr, V, nt);
    else if (P == 125)
      input_transform_3d_s2<5>(g, in, gr, V, nt);
    else if (P == 150)
      input_transform_3d_s2<6>(g, in, gr, V, nt);
    else if (P == 216)
      input_transform_3d_f4<6>(g, in, gr, V, nt);
    else if (P == 144)
      input_transform_3d_f4<4>(g, in, gr, V, nt);
    else if (P == 36)
      input_transform_f4(g, in, gr, V, nt);
    else if (P == 64 && tiles)
      input_transform_3d512<true>(g, in, gr, V);  // bf16 pair rows already
    else if (P == 64 && conv_detail::use_avx512())
      input_transform_3d512(g, in, gr, V, nt);
    else if (P == 64)
      input_transform<4>(g, in, gr, V, nt);
    else
      input_transform<1>(g, in, gr, V, nt);
    // streamed stores are weakly ordered: complete before another thread may read them (the split
    // path's products run on any thread)
    if (nt) _mm_sfence();
    if (bf && !(P == 64 && tiles)) v_to_bf16(V, P, vps, g.C);
    if (tiles)  // each point's last chunk completed with zero pairs (a tile reads 16 pair rows)
      for (int p = 0; p < P; ++p)
        std::memset(V + p * vps + 16 * KP, 0, std::size_t(16 * tile_chunks(g) - KP) * 16 * sizeof(float));
  };
  // the output streamed past the caches where it is too large for them to hold until the next pass
  // reads it (stream_out_bytes, conv_common.hpp; the F(4×4)-row tiles' whole rows)
  const bool nt_out = conv_detail::stream_output(std::size_t(g.Co * g.Do * g.Ho * g.Wo) * sizeof(float));
  auto output_tf = [&](const Group& gr, const float* M) {
    if (avx2 && P != 64 && P != 16) {
      if (P == 100)
        output_transform_avx2<4, true>(g, gr, M, bias, out, act, alpha, nt_out);
      else if (P == 125)
        output_transform_avx2<5, true>(g, gr, M, bias, out, act, alpha, nt_out);
      else if (P == 150)
        output_transform_avx2<6, true>(g, gr, M, bias, out, act, alpha, nt_out);
      else if (P == 216)
        output_transform_avx2<6, false>(g, gr, M, bias, out, act, alpha, nt_out);
      else if (P == 144)
        output_transform_avx2<4, false>(g, gr, M, bias, out, act, alpha, nt_out);
      else
        output_transform_avx2<1, false>(g, gr, M, bias, out, act, alpha, nt_out);
    } else if (P == 100)
      output_transform_3d_s2<4>(g, gr, M, bias, out, act, alpha, nt_out);
    else if (P == 125)
      output_transform_3d_s2<5>(g, gr, M, bias, out, act, alpha, nt_out);
    else if (P == 150)
      output_transform_3d_s2<6>(g, gr, M, bias, out, act, alpha, nt_out);
    else if (P == 216)
      output_transform_3d_f4<6>(g, gr, M, bias, out, act, alpha, nt_out);
    else if (P == 144)
      output_transform_3d_f4<4>(g, gr, M, bias, out, act, alpha, nt_out);
    else if (P == 36)
      output_transform_f4(g, gr, M, bias, out, act, alpha, nt_out);
    else if (P == 64 && conv_detail::use_avx512())
      output_transform_3d512(g, gr, M, bias, out, act, alpha);
    else if (P == 64)
      output_transform<4>(g, gr, M, bias, out, act, alpha);
    else
      output_transform<1>(g, gr, M, bias, out, act, alpha);
    if (nt_out) _mm_sfence();  // (streamed stores are weakly ordered: complete before the call returns)
  };
  // point p's products for groups 0 … gn − 1 of V and M, every output channel
  const std::int64_t step = conv_detail::use_avx512() ? 2 : 1;
  const std::size_t ahead_min = ahead_bytes();  // (read once here, not on the pool's threads)
  auto point_products = [&](int p, std::int64_t gn, const float* V, float* M) {
#ifdef BHSD_AMX
    if (tiles)
      return point_tiles(static_cast<const std::uint16_t*>(Uany), g.Co, P, p, tile_chunks(g), gn, V, vsz, vps, M, msz,
                         mps);
#endif
    if (bf) {
      for (std::int64_t cob = 0; cob < coblocks; cob += 2) {
        const std::int64_t cobn = std::min(coblocks, cob + 2);
        std::int64_t q = 0;
        for (; q + 1 < gn; q += 2)
          point_gemm_bf16_2(Ub, P, p, KP, cbk, cob, cobn, V + q * vsz + p * vps, V + (q + 1) * vsz + p * vps,
                            M + q * msz + p * mps, M + (q + 1) * msz + p * mps);
        if (q < gn) point_gemm_bf16(Ub, P, p, KP, cbk, cob, cobn, V + q * vsz + p * vps, M + q * msz + p * mps);
      }
      return;
    }
    const float* Up = U + p * g.C * MR;
    // The next point's V and M asked for while a pair of groups' products run (point_gemm2): its V
    // rows during the first pass over the output channels (which reads this point's), its M rows at
    // every call. A point's V and M rows lie in as many places as there are groups, its weights in
    // as many as there are blocks of output channels (P·C·6 floats apart): more streams than the
    // hardware prefetchers follow, so their lines came from memory as each call first read them.
    // The products of F(4×4×4) 128→128 at 16×64×64 ran at 145–155 GFLOP/s a thread, 195–210 when a
    // point's products ran again with its lines in the caches; asked ahead, that layer ran 2–10 %
    // faster on Zen 5 by the half hour, 15 % in a busy one (AVX2: 3–5 %). Left out: the weights
    // (asked for in the kernel's loop, beside its 14 loads a step: 5 % slower) and a lone group's
    // rows (on AVX2, whose tasks may hold one group, 64→64 and 128→64 at 16×128×128 ran 0–6 %
    // slower asking). Only where the V and M of the groups run over (a task's; on the split path the
    // layer's) pass ahead_bytes(), 2 MB: a cut-off measured, not derived (32→32 at 16×256×256, 1.2 MB
    // a task, lost 9 % to the requests).
    const bool ahead = p + 1 < P && std::size_t(gn * (vsz + msz)) * sizeof(float) > ahead_min;
    for (std::int64_t cob = 0; cob < coblocks; cob += step) {
      const std::int64_t cobn = std::min(coblocks, cob + step);
      std::int64_t q = 0;
      for (; q + 1 < gn; q += 2)
        point_gemm2(Up, P * g.C, cbk, cob, cobn, V + q * vsz + p * vps, V + (q + 1) * vsz + p * vps, g.C,
                    M + q * msz + p * mps, M + (q + 1) * msz + p * mps, ahead && cob == 0 ? vps : 0, ahead ? mps : 0);
      if (q < gn) point_gemm(Up, P * g.C, cbk, cob, cobn, V + q * vsz + p * vps, g.C, M + q * msz + p * mps);
    }
  };
  // Fewer groups than four a thread (the deep stages' few voxels: 256 channels at 8×8×8 are one
  // group of F(2×4×4) tiles, four of F(2×2×2)): the threads share the points instead of the groups —
  // every group's input transformed (one task a group), then the points' products split between
  // the threads (each streams its share of U from memory once: that is what these layers cost, and
  // with groups as tasks one thread had streamed all of it, or each thread all of it for its own
  // groups), then the output transforms. 256→256 at 8×8×8: 6.5 → 5.0 ms; 512→256: 10.0 → 8.3 ms.
  // All groups' V and M at once, in engine memory kept for the next call (at most 64 MB).
  // Also where more groups' tasks would stream U more than splitting moves V and M: each of the
  // `tasks` streams all of U, the split path writes and reads every group's V and M once. The
  // stride-2×2×2 256→320 layer at 8×32×32 (8 groups, 41 MB of weights: 123 MB more of U against
  // 74 MB of V and M) ran 14.9–18.7 → 11.6–12.7 ms; 256→256 and 512→256 there (113 against 151 MB,
  // 226 against 227) ran the same either way (C++ core, alternating runs).
  const std::size_t split_floats = std::size_t(ngroups * (vsz + msz));
  constexpr std::size_t kSplitMax = (std::size_t(64) << 20) / sizeof(float);
  const double u_streams = double(need) * double(std::max<std::int64_t>(0, tasks - 1)),
               vm_moves = 2.0 * double(split_floats);
  if (threads > 1 && (ngroups < 4 * threads || u_streams > 1.2 * vm_moves) && split_floats <= kSplitMax) {
    SplitLease vm(split_floats, kSplitMax);
    if (vm.get()) {
      const bool nt_split = stream_v(ngroups);
      float* V = vm.get();
      float* M = V + ngroups * vsz;
      std::vector<Group> grs(static_cast<std::size_t>(ngroups));
      pool.parallel_for(
          std::size_t(ngroups),
          [&](std::size_t q0, std::size_t q1) {
            for (std::size_t q = q0; q < q1; ++q) {
              grs[q] = group_of(g, dz, m, TH, TW, T, std::int64_t(q));
              input_tf(grs[q], V + std::int64_t(q) * vsz, nt_split);
            }
          },
          1, 1);
      pool.parallel_for(
          std::size_t(P),
          [&](std::size_t p0, std::size_t p1) {
            const TilesScope ts(tiles);
            for (std::size_t p = p0; p < p1; ++p) point_products(int(p), ngroups, V, M);
          },
          1, 8);
      pool.parallel_for(
          std::size_t(ngroups),
          [&](std::size_t q0, std::size_t q1) {
            for (std::size_t q = q0; q < q1; ++q) output_tf(grs[q], M + std::int64_t(q) * msz);
          },
          1, 1);
      return true;
    }
  }
  const bool nt_task = stream_v(G);
  pool.parallel_for(
      std::size_t(tasks),
      [&](std::size_t t0, std::size_t t1) {
        // the pool slot's scratch (ThreadPool::slot_local), not this OS thread's: libuv's threads
        // take turns as the caller; a loop run serially keeps the thread's own
        thread_local Scratch vown, mown;
        Scratch* vs = ThreadPool::slot_local<Scratch, struct WinogradV>();
        Scratch* ms = ThreadPool::slot_local<Scratch, struct WinogradM>();
        float* V = (vs ? *vs : vown).get(std::size_t(G * vsz));
        float* M = (ms ? *ms : mown).get(std::size_t(G * msz));
        Group grs[8];
        const TilesScope ts(tiles);
        for (std::size_t task = t0; task < t1; ++task) {
          const std::int64_t g0 = std::int64_t(task) * G, gn = std::min(ngroups, g0 + G) - g0;
          for (std::int64_t q = 0; q < gn; ++q) {
            grs[q] = group_of(g, dz, m, TH, TW, T, g0 + q);
            input_tf(grs[q], V + q * vsz, nt_task);
          }
          for (int p = 0; p < P; ++p) point_products(p, gn, V, M);
          for (std::int64_t q = 0; q < gn; ++q) output_tf(grs[q], M + q * msz);
        }
      },
      1, 8);  // chunks handed out as threads come free: on a loaded machine halves would wait for the slower thread
  return true;
#else
  (void)g, (void)in, (void)wp, (void)bias, (void)out, (void)act, (void)alpha, (void)pool;
  return false;
#endif
}

namespace wino_detail {
// The plan: per (C, Co, kd, D, H, W, pd, ph, pw, Do, Ho, Wo, threads, tiles), whether Winograd was faster.
using PlanKey = std::array<std::int64_t, 15>;
// What the plan chose for a key: the direct path, Winograd as the call would run it, (a bf16 call)
// Winograd in fp32 — F(4×4) tiles in fp32 beat F(2×…) tiles in bf16 where the transforms, not the
// products, are most of the time (32-channel layers at 16×256×256: 49 against 61 ms) — or (an fp32
// call whose default is F(4×4)) F(2×…) tiles: on small layers their smaller transforms win
// (32→32 at 4×16×16: 0.18 against 0.29 ms; MONAI SegResNet's deeper stages).
// kWinoDeep: F(4×4×4) tiles where deep_applies; kWinoFp32Deep: the same in fp32 for a bf16 call (whose
// own tiles are F(2×…): F(4×4)'s transforms amplify bf16's rounding) — without it, once F(4×4×4) tiles
// reached the 256-channel layers, ResEnc-M ran slower in bf16 than in fp32 (67.1 against 65.4 s).
enum Choice : int { kDirect = 0, kWino = 1, kWinoFp32 = 2, kWinoSmall = 3, kWinoDeep = 4, kWinoFp32Deep = 5 };
struct Plan {
  std::mutex m;
  std::map<PlanKey, int> choice;
};
inline Plan& plan() {
  static Plan p;
  return p;
}
inline PlanKey key_of(const ConvGeom& g, const ThreadPool& pool) {
  // a strided layer's kd slot also holds its strides (kd + 8·(sd − 1) + 16·(sh − 1) + 32·(sw − 1)): a
  // 1×2×2 and a 2×2×2 layer of the same channels and extents were one key (Do = 1), and a stride-1
  // layer's key is as it was (plans exported before strided layers had keys still match)
  return {g.C,
          g.Co,
          g.kd + 8 * (g.sd - 1) + 16 * (g.sh - 1) + 32 * (g.sw - 1),
          g.D,
          g.H,
          g.W,
          g.pd,
          g.ph,
          g.pw,
          g.Do,
          g.Ho,
          g.Wo,
          std::int64_t(pool.size()),
          tile_m(g),
          std::int64_t(use_bf16())};
}
// Winograd as the choice says (kWinoFp32: in an fp32 scope, whatever the call's precision;
// kWinoSmall: with F(2×…) tiles), on `at` with the tiles the whole layer g gets (the plan times a
// slab of a layer: its own extent must not choose other tiles than the layer's).
// A plan's value: the Choice in its low 4 bits, above them the groups a task (0: task_groups' rule).
// A plan value's settings for a scope, as winograd_as runs it: the precision (kWinoFp32), the tiles
// (kWinoSmall, kWinoDeep; then frozen as the layer's extent gives them) and the groups a task.
struct CandidateScope {
  std::unique_ptr<PrecisionScope> fp32;
  SmallTilesScope small;
  DeepTilesScope deep;
  GroupsScope groups;
  TileFreeze freeze;
  CandidateScope(int choice, const ConvGeom& layer)
      : fp32((choice & 15) == kWinoFp32 || (choice & 15) == kWinoFp32Deep ? new PrecisionScope(Precision::fp32)
                                                                          : nullptr),
        small((choice & 15) == kWinoSmall),
        deep((choice & 15) == kWinoDeep || (choice & 15) == kWinoFp32Deep),
        groups(choice >> 4),
        freeze(layer) {}
};
// Groups of 16 tiles in the first Do output planes of g, with the tiles of the scope.
inline std::int64_t tile_groups(const ConvGeom& g, std::int64_t Do) {
  const std::int64_t dz = tile_dz(g), m = tile_m(g);
  return ((Do + dz - 1) / dz * ((g.Ho + m - 1) / m) * ((g.Wo + m - 1) / m) + TL - 1) / TL;
}
inline bool winograd_as(int choice, const ConvGeom& at, const float* in, const float* wp, const float* bias, float* out,
                        Act act, float alpha, ThreadPool& pool, const ConvGeom* layer = nullptr) {
  const CandidateScope scope(choice, layer ? *layer : at);
  return conv3d_forward_winograd(at, in, wp, bias, out, act, alpha, pool);
}
}  // namespace wino_detail

// What the plan holds for this layer (a Choice): 0 direct, 1 Winograd as the call runs it, 2 in fp32
// for a bf16 call, 3 with F(2×…) tiles, 4 with F(4×4×4) tiles, 5 with those in fp32 for a bf16 call;
// −1 not planned yet (for tests and the bench).
inline int winograd_planned(const ConvGeom& g, const ThreadPool& pool) {
  auto& pl = wino_detail::plan();
  std::lock_guard<std::mutex> lk(pl.m);
  const auto it = pl.choice.find(wino_detail::key_of(g, pool));
  return it == pl.choice.end() ? -1 : it->second & 15;
}
// The groups of tiles a task that the plan chose for this layer (0: task_groups' rule; −1 not planned).
inline int winograd_planned_groups(const ConvGeom& g, const ThreadPool& pool) {
  auto& pl = wino_detail::plan();
  std::lock_guard<std::mutex> lk(pl.m);
  const auto it = pl.choice.find(wino_detail::key_of(g, pool));
  return it == pl.choice.end() ? -1 : it->second >> 4;
}

// The plan as numbers, for a caller to keep and hand to a later process on the same machine and
// build (exportConvPlan / importConvPlan in the Node layer, like FFTW's wisdom): per entry its
// key's 15 values, then its value. A later process then runs each planned layer's first call as
// every later one instead of timing the candidates (ResEnc-M's first 16×256×256 window: ~5 s).
constexpr std::size_t kPlanEntryValues = std::tuple_size<wino_detail::PlanKey>::value + 1;
inline std::vector<std::int64_t> plan_export() {
  auto& pl = wino_detail::plan();
  std::lock_guard<std::mutex> lk(pl.m);
  std::vector<std::int64_t> v;
  v.reserve(pl.choice.size() * kPlanEntryValues);
  for (const auto& [key, value] : pl.choice) {
    v.insert(v.end(), key.begin(), key.end());
    v.push_back(value);
  }
  return v;
}
// Whether v is a value the plan itself stores: a Choice in the low 4 bits, above them the groups a
// task 0 (the rule), 1 or 2 (8 is stored as the rule) — for a Winograd choice only.
inline bool plan_value_valid(std::int64_t v) {
  const std::int64_t choice = v & 15, groups = v >> 4;
  return v >= 0 && choice <= wino_detail::kWinoFp32Deep && (groups == 0 || groups == 1 || groups == 2) &&
         (choice != wino_detail::kDirect || groups == 0);
}
// Entries as plan_export gives them (n values, a multiple of kPlanEntryValues); refused whole (−1,
// nothing taken) where n is not such a multiple or any value is not a plan value or any key value
// is negative. A key this process has planned already keeps its own choice (its earlier outputs
// came from it). Returns the entries taken. A key that matches no layer is never looked up; a
// value of the wrong kind for its layer (F(4×4×4) where they do not apply) runs the layer's default
// tiles (winograd_hook), so a hand-made entry changes at most which correct path runs.
inline std::int64_t plan_import(const std::int64_t* v, std::size_t n) {
  if (n % kPlanEntryValues) return -1;
  for (std::size_t i = 0; i < n; i += kPlanEntryValues) {
    for (std::size_t k = 0; k + 1 < kPlanEntryValues; ++k)
      if (v[i + k] < 0) return -1;
    if (!plan_value_valid(v[i + kPlanEntryValues - 1])) return -1;
  }
  auto& pl = wino_detail::plan();
  std::lock_guard<std::mutex> lk(pl.m);
  std::int64_t taken = 0;
  for (std::size_t i = 0; i < n; i += kPlanEntryValues) {
    wino_detail::PlanKey key;
    std::copy(v + i, v + i + key.size(), key.begin());
    taken += pl.choice.emplace(key, int(v[i + key.size()])).second ? 1 : 0;
  }
  return taken;
}
// Forgets every plan (the tests; a caller that wants this process timed afresh).
inline void plan_clear() {
  auto& pl = wino_detail::plan();
  std::lock_guard<std::mutex> lk(pl.m);
  pl.choice.clear();
}

// conv3d_forward's first question: true when Winograd (or the planning of this shape) wrote the
// output, false when the direct path is to run.
inline bool winograd_hook(const ConvGeom& g, const float* in, const float* wp, const float* bias, float* out, Act act,
                          float alpha, ThreadPool& pool) {
  using namespace wino_detail;
  if (!winograd_applies(g)) return false;
  const Mode md = mode();
  if (md == Mode::off) return false;
  if (md == Mode::on) return conv3d_forward_winograd(g, in, wp, bias, out, act, alpha, pool);
  // Training (precise tiles held): Winograd's F(2×…) tiles wherever they apply, not the plan's pick
  // between them and the direct path — the same arithmetic every run, whatever the timings. A mix
  // chosen by timing had made the PyTorch U-Net's input gradient differ by 2.8 % of its scale in
  // one run of four (a LeakyReLU gate flipped; F(2×…) alone and direct alone both stay within 1e-4).
  if (precise_tiles().load(std::memory_order_relaxed) > 0)
    return conv3d_forward_winograd(g, in, wp, bias, out, act, alpha, pool);
  int planned = -1;
  {
    auto& pl = plan();
    std::lock_guard<std::mutex> lk(pl.m);
    const auto it = pl.choice.find(key_of(g, pool));
    if (it != pl.choice.end()) planned = it->second;
  }
  if (planned >= 0 && (planned & 15) == kDirect) return false;
  // F(4×4×4) tiles only where the plan itself would time them (an imported plan's entry may say so
  // for any 3×3×3 layer): else the layer's default tiles, with the entry's groups a task
  if (planned > 0 && (planned & 15) == kWinoDeep && !deep_applies(g)) planned = kWino | (planned & ~15);
  if (planned > 0 && (planned & 15) == kWinoFp32Deep && !deep_applies_fp32(g)) planned = kWinoFp32 | (planned & ~15);
  if (planned > 0) return winograd_as(planned, g, in, wp, bias, out, act, alpha, pool);
  using clock = std::chrono::steady_clock;
  // slabs stream their outputs as the whole layer will (stream_output)
  const conv_detail::PlannedOut planned_out(std::size_t(g.Co * g.Do * g.Ho * g.Wo) * sizeof(float));
  // the candidates: Winograd as the call would run it; for a bf16 call Winograd in fp32 too, and
  // for an fp32 call with F(4×4) tiles the F(2×…) tiles; where F(4×4×4) tiles apply in fp32, those
  // (in fp32 for a bf16 call)
  std::vector<int> winos{kWino};
  const bool bf_call = use_bf16();
  if (bf_call)
    winos.push_back(kWinoFp32);
  else if (tile_m(g) == 4)
    winos.push_back(kWinoSmall);
  const bool deep = bf_call ? deep_applies_fp32(g) : deep_applies(g);
  if (deep) winos.push_back(bf_call ? kWinoFp32Deep : kWinoDeep);
  auto timed = [&](const ConvGeom& at, int c) -> double {
    const auto t0 = clock::now();
    if (c == kDirect)
      conv3d_forward(at, in, wp, bias, out, act, alpha, pool, false);
    else if (!winograd_as(c, at, in, wp, bias, out, act, alpha, pool, &g))
      return -1;
    return std::chrono::duration<double>(clock::now() - t0).count();
  };
  // Timed on a slab of the output: its first eighth of planes (whole tiles deep), where that is
  // at most half of them — both paths' cost follows the planes, and the layer's first call then
  // costs about a quarter of each path plus the chosen one, not each path in full (a third of an
  // nnU-Net window's first run went to this plan). Each path twice (the first call of each pays
  // page faults of its buffers), the weights transformed before the clock starts (a cached
  // transform is what every later call finds). The slab's output goes to the front of `out`,
  // which the chosen path then writes in full. Shallower volumes are timed whole, and the path
  // timed last leaves its output.
  // F(4×4×4) tiles get a slab of their own, whole tiles of 4 planes (on a 4-plane slab for all,
  // the nnU-Net PlainConvUNet's first window had taken 1.4 s longer)
  const std::int64_t dz = g.kd == 3 ? 2 : 1;
  auto slab_of = [&](std::int64_t z) {
    ConvGeom s = g;
    s.Do = std::max(z, ((g.Do + 7) / 8 + z - 1) / z * z);
    return s;
  };
  const ConvGeom slab = slab_of(dz), slab4 = slab_of(4);
  // Layers of under 8 GFLOP (direct) are timed whole: a slab of a deep layer is a group or two
  // of tiles whose cost is mostly streaming the transformed weights, the same for the slab as for
  // the layer, so the slab's times had made Winograd look 4× slower than it is (256→256 at
  // 8×8×8: 5.0 ms against the direct path's 6.5 ms, planned direct).
  const double direct_flops =
      2.0 * double(g.C) * double(g.Co) * double(g.kd * g.kh * g.kw) * double(g.Do) * double(g.Ho) * double(g.Wo);
  int best = kDirect;
  bool out_whole = false;                     // whether `out` holds the pick's whole output already
  std::array<double, kWinoFp32Deep + 1> est;  // each Winograd candidate's estimated time for the layer (by Choice)
  est.fill(-1);
  // Groups a task. Where a Winograd candidate's transformed weights pass 12 MB (task_groups: 8
  // groups then) and the layer has at least groups_timed_from() groups of its tiles, that candidate
  // with 2 groups a task (and 1 where 2 beat 8) is timed beside the plan's pick (see the loop below for
  // which run twice; the weights cached by now), on the layer's first planes that
  // give each thread 4 tasks of 8 groups (else the whole layer), and the fastest is kept where 5 % faster than the
  // pick. The candidate need not be the pick: with 8 groups a task 256→128 at 16×64×64 had lost to its F(2×2×2) tiles
  // (165 ms in ResEnc-M's window) and runs at ~100 with 1 or 2 on the Xeon. The plan's slab (one task
  // a thread) had shown that layer 1.13× faster with 1 group a task where the whole layer ran 1.4×.
  // Layers of fewer groups (the deep stages: 256→256 and 512→256 at 8×32×32 have 16) keep the
  // rule: on the Xeon they gained nothing inside a window (28.5 against 30 ms) and their timings
  // had added 1.7 s to ResEnc-M's first window.
  std::vector<int> cand;    // the counts to time, the pick first as planned (none: the rule stays)
  std::int64_t planes = 0;  // timed on: the first planes holding 4 tasks of 8 groups a thread
  bool whole = false;       // (or the whole layer where it has fewer than twice those)
  auto group_candidates = [&] {
    cand.assign(1, best);
    for (const int c : winos) {
      const CandidateScope scope(c, g);
      const bool bf = use_bf16();
      if (u_words(g, bf, use_tiles(g, bf)) * sizeof(float) <= (std::size_t(12) << 20)) continue;
      if (tile_groups(g, g.Do) < groups_timed_from()) continue;
      // a strided layer keeps the rule: its timings had added ~0.45 s to the PlainConvUNet's first
      // window (128→256 at 16×64×64, stride 2×2×2: 16 MB of weights, 64 groups) for nothing measurable
      if (is_s2(g)) continue;
      // another candidate only where it came within 1.4× of the pick: fewer groups a task gained
      // at most 1.4× (F(2×2×2) for 512→256 at 8×32×32, 1.7× the pick's time, had cost 0.7 s to time)
      if (c != best && !(est[c] >= 0 && est[c] <= 1.4 * est[best])) continue;
      if (c != best) cand.push_back(c | (8 << 4));
      cand.push_back(c | (2 << 4));
      cand.push_back(c | (1 << 4));
      const std::int64_t cz = tile_dz(g);  // this candidate's tiles (4 planes for F(4×4×4))
      std::int64_t d = cz;                 // the planes these tiles need (the most any candidate needs)
      while (2 * d <= g.Do && tile_groups(g, d) < 32 * std::int64_t(pool.size())) d += cz;
      if (2 * d <= g.Do)
        planes = std::max(planes, d);
      else
        whole = true;
    }
    if (cand.size() < 2) cand.clear();
  };
  if (2 * slab.Do <= g.Do && (!deep || 2 * slab4.Do <= g.Do) && direct_flops > 8e9) {
    const double scale = double(g.Do) / double(slab.Do);
    const double direct1 = timed(slab, kDirect);
    double best_t = direct1 * scale;
    bool first = true;
    for (const int c : winos) {
      // weights the cache will not keep are transformed by every call, once per call whatever its
      // size: that time (tw, measured here once) counts whole, the rest scaled from the slab to the
      // layer (an uncached 512→256 layer's 11 ms transform against a quarter of its products had
      // made the plan choose a direct path 2.5× slower)
      double tw = 0;
      {
        const CandidateScope scope(c, g);
        const bool bf = use_bf16(), tl = use_tiles(g, bf);
        if (!WeightCache::instance().get(g, wp, pool, bf, tl)) {
          WeightLease lease(u_words(g, bf, tl), (std::size_t(32) << 20) / sizeof(float));
          if (lease.get()) {
            transform_weights(g, wp, lease.get(), pool, bf, tl);  // the first pays the buffer's page faults
            const auto t0 = clock::now();
            transform_weights(g, wp, lease.get(), pool, bf, tl);
            tw = std::chrono::duration<double>(clock::now() - t0).count();
          }
        }
      }
      const ConvGeom& at = c == kWinoDeep || c == kWinoFp32Deep ? slab4 : slab;
      double wino = timed(at, c);
      if (wino < 0) continue;
      wino = std::min(wino, timed(at, c));
      // the direct path's second run only where its first was within 2× of Winograd's or took
      // under 0.1 s: a warm rerun does not halve a slab of a gigaflop or more, and it is the plan's
      // longest timing — but a short first run may be mostly a first call's costs (the AMX path's
      // first call faults in its 36 MB ring: a 2-plane slab of 64→64 at 16×128×128 took 23 ms,
      // then 3.5, and had been planned as Winograd at 1.7× the direct path's time)
      if (first)
        best_t = (direct1 < 2 * wino || direct1 < 0.1 ? std::min(direct1, timed(slab, kDirect)) : direct1) * scale,
        first = false;
      const double t = std::max(0.0, wino - tw) * (double(g.Do) / double(at.Do)) + tw;
      est[c] = t;
      if (t < best_t) best_t = t, best = c;
    }
    // the layer's output: where the groups a task are timed next, they write it (their last timed
    // run where it covered the layer and is the choice, else the choice run once more after them): a
    // run of the pick here, 100 ms for 256→128 at 16×64×64, was overwritten
    if (best != kDirect) group_candidates();
    if (cand.empty() && (best == kDirect || !winograd_as(best, g, in, wp, bias, out, act, alpha, pool))) {
      best = kDirect;
      conv3d_forward(g, in, wp, bias, out, act, alpha, pool, false);
    }
  } else {
    // every path timed writes the whole output; each twice, in turn (the first run of each pays
    // its buffers' page faults and, called from Node, a cold thread: once each, the direct path of
    // SegResNet's 64→64 at 2×8×8 had timed slower than Winograd, which then ran at 1.7× its time)
    std::vector<double> t(winos.size() + 1, -1);
    int last = kDirect;  // the path whose output `out` holds
    for (int round = 0; round < 2; ++round) {
      const double d = timed(g, kDirect);
      t[0] = round ? std::min(t[0], d) : d;
      last = kDirect;
      for (std::size_t i = 0; i < winos.size(); ++i) {
        if (round && t[i + 1] < 0) continue;  // it did not run
        const double w = timed(g, winos[i]);
        if (w >= 0) last = winos[i];
        t[i + 1] = round ? (w < 0 ? -1 : std::min(t[i + 1], w)) : w;
      }
    }
    double best_t = t[0];
    for (std::size_t i = 0; i < winos.size(); ++i) {
      est[winos[i]] = t[i + 1];
      if (t[i + 1] >= 0 && t[i + 1] < best_t) best_t = t[i + 1], best = winos[i];
    }
    // the output as every later call will give it (bit for bit: the candidates round differently)
    if (best != last && (best == kDirect || !winograd_as(best, g, in, wp, bias, out, act, alpha, pool))) {
      best = kDirect;
      conv3d_forward(g, in, wp, bias, out, act, alpha, pool, false);
    }
    if (best != kDirect) group_candidates();
    out_whole = true;
  }
  if (cand.size() > 1) {
    ConvGeom at = g;
    if (!whole) at.Do = deep ? (planes + 3) / 4 * 4 : planes;  // whole tiles for F(4×4×4) too
    if (at.Do * 2 > g.Do) at.Do = g.Do;
    std::vector<double> t(cand.size(), -1);
    int last = out_whole ? best : -1;  // the path whose output `out` holds (−1: none whole)
    double tmin = -1;                  // the fastest first run
    // The counts of 8 and 2 groups a task once each, in turn, then a second time (the others first,
    // the pick last) only where the first run came within 1.25× of the fastest (their runs of 256→128 at
    // 16×64×64, 1.2–1.75× the pick's time, had taken 0.3 s to time again). The pick always runs twice, and 8 groups of
    // tiles with more points than the pick's: a first run can pay its tasks' fresh scratch (8 groups of that layer's
    // F(4×4×4) tiles: 56 MB a thread; 1 or 2 groups of any tiles need less than 8 of any, and 8 of fewer points less
    // than the pick's 8), and the pick timed once on that had lost to a count 1.2× slower. Then 1 group a task (below).
    auto run = [&](std::size_t k, bool first_round) {
      // the pick's own count as the layer has it (on fewer planes the cap of two tasks a thread
      // could lower it): 8 where its weights pass 12 MB, else its rule on the layer
      int c = cand[k];
      if (k == 0 && at.Do < g.Do && (c >> 4) == 0) {
        const CandidateScope scope(c, g);
        const bool bf = use_bf16();
        const std::int64_t rule = task_groups(g, points(g), u_words(g, bf, use_tiles(g, bf)));
        c |= int(std::max<std::int64_t>(1, std::min(rule, tile_groups(g, g.Do) / (2 * std::int64_t(pool.size())))))
             << 4;
      }
      const double tk = timed(at, c);
      if (tk < 0) return;
      last = cand[k];
      t[k] = t[k] < 0 ? tk : std::min(t[k], tk);
      if (first_round && (tmin < 0 || tk < tmin)) tmin = tk;
    };
    for (std::size_t k = 0; k < cand.size(); ++k)
      if ((cand[k] >> 4) != 1) run(k, true);
    // the second round: the pick last, so that where it stays the choice on the whole layer its run
    // leaves the output (256→128 at 16×64×64: one run of ~60 ms fewer)
    const auto points_of = [&](int c) {
      const CandidateScope scope(c, g);
      return points(g);
    };
    for (std::size_t k = 1; k < cand.size(); ++k) {
      // another tiling's 8 groups a task again where within 1.25× of the fastest too, or where its
      // tiles have more points than the pick's (its first run then paid the larger scratch)
      const int n = cand[k] >> 4;
      const bool near = t[k] >= 0 && t[k] <= 1.25 * tmin;
      if ((n == 8 && (near || points_of(cand[k] & 15) > points_of(cand[0] & 15))) || (n == 2 && near)) run(k, false);
    }
    run(0, false);
    // 1 group a task once, and only where 2 ran faster than 8 (the pick's rule) for the same tiles:
    // fewer groups a task stream the transformed weights more often for less scratch, so where going
    // from 8 to 2 lost, 1 lost more (256→128 at 16×64×64 on Zen 5: 62, 78 and 116 ms for its F(4×4×4)
    // tiles' 8, 2 and 1, 81, 97 and 137 for its F(2×4×4) ones: 0.25 s of its plan). Last, after both
    // runs of the pick (its first can pay fresh scratch).
    for (std::size_t k = 1; k < cand.size(); ++k) {
      if ((cand[k] >> 4) != 1) continue;
      double t8 = -1, t2 = -1;  // the same tiles' 8 (or the pick's rule) and 2 groups a task
      for (std::size_t j = 0; j < cand.size(); ++j)
        if ((cand[j] & 15) == (cand[k] & 15)) {
          if (j == 0 || (cand[j] >> 4) == 8) t8 = t[j];
          if ((cand[j] >> 4) == 2) t2 = t[j];
        }
      if (t2 >= 0 && t8 >= 0 && t2 < t8) run(k, false);
    }
    int chosen = best;
    double best_t = t[0];
    for (std::size_t k = 1; k < cand.size(); ++k)
      if (t[k] >= 0 && (best_t < 0 || t[k] < 0.95 * best_t)) best_t = t[k], chosen = cand[k];
    // an 8 (the rule where weights pass 12 MB) is stored as the rule itself
    if ((chosen >> 4) == 8) chosen &= 15;
    // the output: whole where the layer was timed and its last run is the choice; else again
    if ((at.Do < g.Do || chosen != last) && !winograd_as(chosen, g, in, wp, bias, out, act, alpha, pool)) {
      const bool tried = chosen == best;
      chosen = best;
      if (tried || !winograd_as(best, g, in, wp, bias, out, act, alpha, pool))
        conv3d_forward(g, in, wp, bias, out, act, alpha, pool, false), chosen = kDirect;
    }
    best = chosen;
  }
  for (const int c : winos)  // the losers' transformed weights out of the cache (WeightCache::drop)
    if (c != (best & 15)) {
      const CandidateScope scope(c, g);
      const bool bf = use_bf16();
      WeightCache::instance().drop(g, wp, pool, bf, use_tiles(g, bf));
    }
  {
    auto& pl = plan();
    std::lock_guard<std::mutex> lk(pl.m);
    pl.choice[key_of(g, pool)] = best;
  }
  return true;  // the output is whole either way
}

}  // namespace bhsd
