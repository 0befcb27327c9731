// bhsd — a single-precision GEMM for MatMul / Einsum (a transformer's Linear layers and attention):
// C[M×N] = A[M×K] · B[K×N], all row-major and contiguous, for `batches` items (A and C per item,
// B per item or shared). Node-free; conv.hpp's convolutions keep their own kernels.
//
// Goto/BLIS blocking: the work is cut into macro-tiles of MC rows × NC columns, one task each;
// a task walks K in blocks of KC and packs its B block into NR-column panels (b[k·NR + j],
// zero-padded to whole panels), then runs the micro-kernel over every (NR, MR) pair with the B
// panel in L1 and the A rows (read in place, MR streams: packing them cost as much as the
// products at a transformer's 128 rows) in L2. Micro-kernels, chosen at run
// time: AVX-512 8 × 32 (16 zmm accumulators, two loads and eight broadcasts per eight pairs of
// FMAs), AVX2/FMA 6 × 16 (12 ymm), and a portable one (the compiler's vectors; NEON on arm64).
// Partial tiles store through masks (AVX-512) or a staging tile: nothing outside C is written.
// The sum over K runs in K order in float, as onnxruntime's MLAS does (no double accumulation).
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "conv_common.hpp"
#include "conv_kernels.hpp"
#include "thread_pool.hpp"

namespace bhsd {

namespace gemm_detail {

constexpr std::int64_t KC = 192;  // a B panel of KC × 32 floats is 24 KB: it stays in L1
constexpr std::int64_t MC = 96;   // the A rows of a tile, MC × KC floats, are 72 KB: L2
constexpr std::int64_t NC = 256;

// B[k0 … k0+kc) × [j0 … j0+nc) into panels of NR columns: b[p·kc·NR + k·NR + j] = B[k0 + k][j0 + p·NR + j].
// Row by row: each row's nc columns are one contiguous read (panel by panel, every row gave up 128
// bytes at a time, a row's length apart — a new page each, which the prefetchers do not follow:
// a transformer's 768×3072 weights, cold, streamed at 0.8 GB/s and the MatMul ran at 54 GFLOP/s).
template <int NR>
inline void pack_b(const float* B, std::int64_t ldb, std::int64_t k0, std::int64_t kc, std::int64_t j0, std::int64_t nc,
                   float* bp) {
  for (std::int64_t k = 0; k < kc; ++k) {
    const float* src = B + (k0 + k) * ldb + j0;
    if (k + 4 < kc)  // four rows ahead: each row's first lines, after which the streamer follows
      for (std::int64_t j = 0; j < nc; j += 16) __builtin_prefetch(src + 4 * ldb + j);
    for (std::int64_t p = 0; p < nc; p += NR) {
      const std::int64_t cols = std::min<std::int64_t>(NR, nc - p);
      float* dst = bp + p * kc + k * NR;
      std::memcpy(dst, src + p, std::size_t(cols) * sizeof(float));
      if (cols < NR) std::memset(dst + cols, 0, std::size_t(NR - cols) * sizeof(float));
    }
  }
}

// The rows of A a micro-kernel reads (rows < MR: the last row again; its sums are not stored).
template <int MR>
inline void row_pointers(const float* a, std::int64_t lda, std::int64_t rows, const float* (&ar)[MR]) {
  for (int r = 0; r < MR; ++r) ar[r] = a + std::min<std::int64_t>(r, rows - 1) * lda;
}

// The portable micro-kernel: c (rows × cols of C, ldc apart) = (first ? 0 : c) + Σ_k A[r][k]·b[k][j].
template <int MR, int NR>
inline void kernel_generic(std::int64_t kc, const float* a, std::int64_t lda, const float* bp, float* c,
                           std::int64_t ldc, std::int64_t rows, std::int64_t cols, bool first, const float* bias) {
  const float* ar[MR];
  row_pointers<MR>(a, lda, rows, ar);
  float acc[MR][NR] = {};
  for (std::int64_t k = 0; k < kc; ++k)
    for (int r = 0; r < MR; ++r)
      for (int j = 0; j < NR; ++j) acc[r][j] += ar[r][k] * bp[k * NR + j];
  for (std::int64_t r = 0; r < rows; ++r)
    for (std::int64_t j = 0; j < cols; ++j) {
      const float v = first ? acc[r][j] : c[r * ldc + j] + acc[r][j];
      c[r * ldc + j] = bias ? v + bias[j] : v;
    }
}

#ifdef BHSD_X86
__attribute__((target("avx512f"))) inline void kernel_avx512(std::int64_t kc, const float* a, std::int64_t lda,
                                                             const float* bp, float* c, std::int64_t ldc,
                                                             std::int64_t rows, std::int64_t cols, bool first,
                                                             const float* bias) {
  constexpr int MR = 8;
  const float* ar[MR];
  row_pointers<MR>(a, lda, rows, ar);
  __m512 c0[MR], c1[MR];
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r) c0[r] = c1[r] = _mm512_setzero_ps();
  for (std::int64_t k = 0; k < kc; ++k) {
    const __m512 b0 = _mm512_loadu_ps(bp), b1 = _mm512_loadu_ps(bp + 16);
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
      const __m512 av = _mm512_set1_ps(ar[r][k]);
      c0[r] = _mm512_fmadd_ps(av, b0, c0[r]);
      c1[r] = _mm512_fmadd_ps(av, b1, c1[r]);
    }
    bp += 32;
  }
  const __mmask16 m0 = cols >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << cols) - 1);
  const __mmask16 m1 = cols >= 32 ? __mmask16(0xFFFF) : cols > 16 ? __mmask16((1u << (cols - 16)) - 1) : __mmask16(0);
  const __m512 bias0 = bias ? _mm512_maskz_loadu_ps(m0, bias) : _mm512_setzero_ps(),
               bias1 = bias ? _mm512_maskz_loadu_ps(m1, bias + 16) : _mm512_setzero_ps();
  // a constant index for every accumulator (a loop to `rows` would keep them in memory, not registers)
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r) {
    if (r >= rows) break;
    float* q = c + r * ldc;
    if (!first) {
      c0[r] = _mm512_add_ps(_mm512_maskz_loadu_ps(m0, q), c0[r]);
      c1[r] = _mm512_add_ps(_mm512_maskz_loadu_ps(m1, q + 16), c1[r]);
    }
    if (bias) {  // (after the whole sum, as the Add it replaces)
      c0[r] = _mm512_add_ps(c0[r], bias0);
      c1[r] = _mm512_add_ps(c1[r], bias1);
    }
    _mm512_mask_storeu_ps(q, m0, c0[r]);
    _mm512_mask_storeu_ps(q + 16, m1, c1[r]);
  }
}

__attribute__((target("avx2,fma"))) inline void kernel_avx2(std::int64_t kc, const float* a, std::int64_t lda,
                                                            const float* bp, float* c, std::int64_t ldc,
                                                            std::int64_t rows, std::int64_t cols, bool first,
                                                            const float* bias) {
  constexpr int MR = 6;
  const float* ar[MR];
  row_pointers<MR>(a, lda, rows, ar);
  __m256 c0[MR], c1[MR];
#pragma GCC unroll 6
  for (int r = 0; r < MR; ++r) c0[r] = c1[r] = _mm256_setzero_ps();
  for (std::int64_t k = 0; k < kc; ++k) {
    const __m256 b0 = _mm256_loadu_ps(bp), b1 = _mm256_loadu_ps(bp + 8);
#pragma GCC unroll 6
    for (int r = 0; r < MR; ++r) {
      const __m256 av = _mm256_broadcast_ss(ar[r] + k);
      c0[r] = _mm256_fmadd_ps(av, b0, c0[r]);
      c1[r] = _mm256_fmadd_ps(av, b1, c1[r]);
    }
    bp += 16;
  }
  if (rows == MR && cols == 16) {
    // a whole tile: straight to C in vectors (the staging tile's scalar loop below had cost a
    // fifth of a 128×768×3072 product: 96 sums for every KC step of 192)
    const __m256 b0 = bias ? _mm256_loadu_ps(bias) : _mm256_setzero_ps(),
                 b1 = bias ? _mm256_loadu_ps(bias + 8) : _mm256_setzero_ps();
#pragma GCC unroll 6
    for (int r = 0; r < MR; ++r) {
      float* q = c + r * ldc;
      if (!first) {
        c0[r] = _mm256_add_ps(_mm256_loadu_ps(q), c0[r]);
        c1[r] = _mm256_add_ps(_mm256_loadu_ps(q + 8), c1[r]);
      }
      if (bias) {
        c0[r] = _mm256_add_ps(c0[r], b0);
        c1[r] = _mm256_add_ps(c1[r], b1);
      }
      _mm256_storeu_ps(q, c0[r]);
      _mm256_storeu_ps(q + 8, c1[r]);
    }
    return;
  }
  alignas(32) float tile[MR][16];
  // a constant index for every accumulator here too: one loop indexing them by a variable had kept
  // all twelve in memory, stored on every step of k (the kernel ran at 40 % of the AVX2 peak)
#pragma GCC unroll 6
  for (int r = 0; r < MR; ++r) {
    _mm256_store_ps(tile[r], c0[r]);
    _mm256_store_ps(tile[r] + 8, c1[r]);
  }
  for (std::int64_t r = 0; r < rows; ++r)
    for (std::int64_t j = 0; j < cols; ++j) {
      const float v = first ? tile[r][j] : c[r * ldc + j] + tile[r][j];
      c[r * ldc + j] = bias ? v + bias[j] : v;
    }
}
#endif

// (the last argument: the bias of the tile's columns, added after the last k block, or null)
using Kernel = void (*)(std::int64_t, const float*, std::int64_t, const float*, float*, std::int64_t, std::int64_t,
                        std::int64_t, bool, const float*);

// K in blocks of at most KC, as even as whole blocks allow (396 as 3 × 132, not 192 + 192 + 12: a
// last sliver of a block costs a whole read and write of C for a few products).
inline std::int64_t k_block(std::int64_t K) {
  const std::int64_t blocks = (K + KC - 1) / KC;
  return (K + blocks - 1) / blocks;
}

// One macro-tile: C[i0 … i0+mc) × [j0 … j0+nc) of one batch item, over the whole K. A is read in
// place (each micro-kernel broadcasts from its MR rows); B is packed, a K block × nc at a time —
// here, or (packed non-null) already, for the whole call: the panels of B's k block at k0 start at
// packed + k0 · Np, column j's panel at + j · kc (Np: N rounded up to whole panels).
template <int MR, int NR>
inline void macro_tile(Kernel kernel, const float* A, const float* B, float* C, std::int64_t K, std::int64_t N,
                       std::int64_t i0, std::int64_t mc, std::int64_t j0, std::int64_t nc, const float* packed,
                       const float* bias) {
  thread_local conv_detail::Scratch bpm;
  const std::int64_t ncp = (nc + NR - 1) / NR * NR, Np = (N + NR - 1) / NR * NR, kb = k_block(K);
  float* own = packed ? nullptr : bpm.get(std::size_t(ncp * kb));
  for (std::int64_t k0 = 0; k0 < K; k0 += kb) {
    const std::int64_t kc = std::min(kb, K - k0);
    const float* bp = packed ? packed + k0 * Np + j0 * kc : own;
    if (!packed) pack_b<NR>(B, N, k0, kc, j0, nc, own);
    for (std::int64_t jp = 0; jp < nc; jp += NR)
      for (std::int64_t ip = 0; ip < mc; ip += MR)
        kernel(kc, A + (i0 + ip) * K + k0, K, bp + jp * kc, C + (i0 + ip) * N + j0 + jp, N,
               std::min<std::int64_t>(MR, mc - ip), std::min<std::int64_t>(NR, nc - jp), k0 == 0,
               bias && k0 + kc >= K ? bias + j0 + jp : nullptr);
  }
}

template <int MR, int NR>
inline void run(Kernel kernel, const float* A, const float* B, float* C, std::int64_t batches, std::int64_t M,
                std::int64_t K, std::int64_t N, bool b_batched, ThreadPool& pool, const float* bias) {
  // Up to 256 rows (a transformer's tokens) in one macro-tile, so that each block of B — the
  // weights, streamed from memory — is packed once, not once per 96 rows (and a last tile of 32
  // rows no longer gets a whole packing for a third of the use); then columns in blocks of at most
  // NC, narrower where that gives each thread about four tiles (768 columns: 8 of 96, not 3 of 256).
  const std::int64_t mc = M <= 256 ? (M + MR - 1) / MR * MR : MC;
  const std::int64_t threads = std::int64_t(pool.size());
  const std::int64_t want =
      std::max<std::int64_t>(1, 4 * threads / std::max<std::int64_t>(1, batches * ((M + mc - 1) / mc)));
  const std::int64_t nc = std::clamp<std::int64_t>((N + want - 1) / want, 1, NC);
  const std::int64_t ncb = std::clamp<std::int64_t>((nc + NR - 1) / NR * NR, NR, NC);
  const std::int64_t mt = (M + mc - 1) / mc, nt = (N + ncb - 1) / ncb, per = mt * nt;
  // a B shared by more than one row of tiles (a Linear layer over 1024 tokens: 11 rows of 96) is
  // packed once, in parallel, not once per row of tiles (Primus-S's 396 × 1188 projection: 11
  // packings of 1.9 MB, a third of its time)
  const float* packed = nullptr;
  thread_local conv_detail::Scratch whole;
  if (!b_batched && batches * mt > 1) {
    const std::int64_t Np = (N + NR - 1) / NR * NR, kb = k_block(K), nkb = (K + kb - 1) / kb;
    float* dst = whole.get(std::size_t(K * Np));
    pool.parallel_for(
        std::size_t(nkb * nt),
        [&](std::size_t lo, std::size_t hi) {
          for (std::size_t t = lo; t < hi; ++t) {
            const std::int64_t k0 = std::int64_t(t) / nt * kb, j0 = std::int64_t(t) % nt * ncb;
            const std::int64_t kc = std::min(kb, K - k0);
            pack_b<NR>(B, N, k0, kc, j0, std::min(ncb, N - j0), dst + k0 * Np + j0 * kc);
          }
        },
        1, 4);
    packed = dst;
  }
  pool.parallel_for(
      std::size_t(batches * per),
      [&](std::size_t lo, std::size_t hi) {
        for (std::size_t t = lo; t < hi; ++t) {
          const std::int64_t b = std::int64_t(t) / per, r = std::int64_t(t) % per;
          const std::int64_t i0 = r / nt * mc, j0 = r % nt * ncb;
          macro_tile<MR, NR>(kernel, A + b * M * K, B + (b_batched ? b * K * N : 0), C + b * M * N, K, N, i0,
                             std::min(mc, M - i0), j0, std::min(ncb, N - j0), packed, bias);
        }
      },
      1, 4);
}

}  // namespace gemm_detail

// Which micro-kernel gemm() runs here: "avx512" (8 × 32), "avx2" (6 × 16) or "generic" (8 × 8);
// BHSD_NO_AVX512 / BHSD_NO_AVX2 step down as for the convolutions.
inline const char* gemm_kernel_name() {
#ifdef BHSD_X86
  if (conv_detail::use_avx512()) return "avx512";
  const CpuFeatures f = cpu_features();
  if (f.avx2 && f.fma && !std::getenv("BHSD_NO_AVX2")) return "avx2";
#endif
  return "generic";
}

// C[b] = A[b] · B[b or 0] (+ bias, one value per column, added to each finished sum as the Add
// a Linear layer exports as: no pass of its own) for b < batches; A [M×K], B [K×N], C [M×N], each
// contiguous. K = 0 gives zeros (or the bias).
inline void gemm(const float* A, const float* B, float* C, std::int64_t batches, std::int64_t M, std::int64_t K,
                 std::int64_t N, bool b_batched, ThreadPool& pool, const float* bias = nullptr) {
  using namespace gemm_detail;
  if (batches <= 0 || M <= 0 || N <= 0) return;
  if (K <= 0) {
    for (std::int64_t i = 0; i < batches * M; ++i)
      for (std::int64_t j = 0; j < N; ++j) C[i * N + j] = bias ? bias[j] : 0.0f;
    return;
  }
  static const std::string which = gemm_kernel_name();
#ifdef BHSD_X86
  if (which == "avx512") return run<8, 32>(kernel_avx512, A, B, C, batches, M, K, N, b_batched, pool, bias);
  if (which == "avx2") return run<6, 16>(kernel_avx2, A, B, C, batches, M, K, N, b_batched, pool, bias);
#endif
  run<8, 8>(kernel_generic<8, 8>, A, B, C, batches, M, K, N, b_batched, pool, bias);
}

}  // namespace bhsd
