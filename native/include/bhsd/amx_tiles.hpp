// bhsd — AMX tiles (Intel Sapphire Rapids and later: AMX-TILE + AMX-BF16): whether this process may
// use them, the tile configuration, and the 2 × 2-tile bf16 product both AMX paths run (the direct
// convolution, conv_amx.hpp, and Winograd's per-point GEMM, conv_winograd.hpp).
//
// One tdpbf16ps multiplies a 16 × 32 tile of bf16 (A: 16 rows of 32 values of K) by a 32 × 16 tile
// (B: 16 rows of 16 pairs — K's values 2i and 2i + 1 of column j side by side, the "VNNI" layout) and
// adds the products into a 16 × 16 tile of fp32 sums: 8192 multiply-adds in 16 cycles, 16 times what
// the AVX-512 FMA units do in fp32 (a probe on this project's Xeon: 2.77 TFLOP/s on one core from L1).
// The products are exact (bf16 × bf16 fits fp32) and the sums fp32, as vdpbf16ps's.
//
// Linux hands the tile registers' 8 KB of state out per process on request (arch_prctl
// ARCH_REQ_XCOMP_PERM, kernel 5.16 on): asked once; where it is refused, or BHSD_NO_AMX=1 (or
// BHSD_NO_BF16=1), the AVX-512 paths run instead.
#pragma once

#include <cstdint>
#include <cstdlib>

#include "conv_kernels.hpp"

#if defined(BHSD_X86) && defined(__linux__) && (defined(__GNUC__) || defined(__clang__))
#include <cpuid.h>
#include <sys/syscall.h>
#include <unistd.h>
#define BHSD_AMX 1
#endif

namespace bhsd {

// Whether this process computes bf16 calls on AMX tiles: the processor has AMX-TILE and AMX-BF16
// (and AVX512_BF16 beside the AVX-512 kernels, for converting to bf16), the OS saves the tile state
// (XCR0 bits 17 and 18) and lets this process use it, and neither BHSD_NO_AMX nor BHSD_NO_BF16 is set.
inline bool amx_available() {
#ifdef BHSD_AMX
  static const bool on = [] {
    const CpuFeatures f = cpu_features();
    if (std::getenv("BHSD_NO_AMX") || std::getenv("BHSD_NO_BF16") || !conv_detail::use_avx512() || !f.avx512bw ||
        !f.avx512bf16)
      return false;
    unsigned a = 0, b = 0, c = 0, d = 0;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return false;
    if (!((d >> 22) & 1u) || !((d >> 24) & 1u)) return false;  // AMX-BF16, AMX-TILE
    unsigned lo = 0, hi = 0;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0u));
    if ((lo & (3u << 17)) != (3u << 17)) return false;  // XTILECFG, XTILEDATA
    constexpr long kReqXcompPerm = 0x1023, kXtiledata = 18;
    return syscall(SYS_arch_prctl, kReqXcompPerm, kXtiledata) == 0;
  }();
  return on;
#else
  return false;
#endif
}

namespace amx_detail {

constexpr std::int64_t kTileWords = 512;  // bf16 values per A or B tile (16 rows of 64 bytes)

#ifdef BHSD_AMX
// The tile configuration: tiles 0–3 the sums (16 rows of 16 floats), 4–5 weights, 6–7 samples (16
// rows of 64 bytes each). Loaded for a scope, released after (a thread holding tile state makes
// each context switch save 8 KB more).
struct alignas(64) TileConfig {
  std::uint8_t palette = 1, start_row = 0, reserved[14] = {};
  std::uint16_t colsb[16] = {};
  std::uint8_t rows[16] = {};
};
struct Tiles {
  __attribute__((target("amx-tile"))) Tiles() {
    TileConfig c;
    for (int t = 0; t < 8; ++t) c.colsb[t] = 64, c.rows[t] = 16;
    // GCC 12 does not count ldtilecfg's 64-byte read as a use of c: at -O2 it dropped the stores
    // above and loaded a configuration of no tiles (#GP). An asm that may read memory keeps them.
    __asm__ volatile("" : : "r"(&c) : "memory");
    _tile_loadconfig(&c);
  }
  __attribute__((target("amx-tile"))) ~Tiles() { _tile_release(); }
  Tiles(const Tiles&) = delete;
  Tiles& operator=(const Tiles&) = delete;
};

// Sums (a0|a1) × (b0|b1) over `chunks` chunks into the 16 × 16 fp32 tiles s00, s01, s10, s11
// (1 KB each, rows 64 bytes apart; started from zero when `first`). A1 / B1: whether a1 / b1 exist.
template <bool A1, bool B1>
__attribute__((target("amx-tile,amx-bf16"))) inline void run_tiles(const std::uint16_t* a0, const std::uint16_t* a1,
                                                                   const std::uint16_t* b0, const std::uint16_t* b1,
                                                                   std::int64_t chunks, float* s00, float* s01,
                                                                   float* s10, float* s11, bool first) {
  if (first) {
    _tile_zero(0);
    if (B1) _tile_zero(1);
    if (A1) _tile_zero(2);
    if (A1 && B1) _tile_zero(3);
  } else {
    _tile_loadd(0, s00, 64);
    if (B1) _tile_loadd(1, s01, 64);
    if (A1) _tile_loadd(2, s10, 64);
    if (A1 && B1) _tile_loadd(3, s11, 64);
  }
  for (std::int64_t ch = 0; ch < chunks; ++ch) {
    const std::int64_t off = ch * kTileWords;
    _tile_loadd(4, a0 + off, 64);
    _tile_loadd(6, b0 + off, 64);
    _tile_dpbf16ps(0, 4, 6);
    if (B1) {
      _tile_loadd(7, b1 + off, 64);
      _tile_dpbf16ps(1, 4, 7);
    }
    if (A1) {
      _tile_loadd(5, a1 + off, 64);
      _tile_dpbf16ps(2, 5, 6);
      if (B1) _tile_dpbf16ps(3, 5, 7);
    }
  }
  _tile_stored(0, s00, 64);
  if (B1) _tile_stored(1, s01, 64);
  if (A1) _tile_stored(2, s10, 64);
  if (A1 && B1) _tile_stored(3, s11, 64);
}

#endif

}  // namespace amx_detail

}  // namespace bhsd
