// bhsd — 3D connected-component labelling (6, 18, 26 connectivity), component statistics.
//
// Bit-run two-pass labelling (the run-based family of He, Chao and Suzuki's run-based two-scan and
// Lee et al.'s bit-run two-scan, BRTS), written for this engine's thread pool and memory:
//   1. masks: each row (fixed y, z) becomes three bit masks, 64 voxels a word — non-zero voxels,
//      where a run starts and where one ends (a run: non-zero voxels, of one value when labelling
//      per class) — and the start / end counts before each word. A row's popcount is its number of
//      runs, so runs are numbered in raster order with no gaps and the parent array is allocated
//      once at its exact size (parallel over rows);
//   2. unions: each row against the neighbour rows already seen: the pairs of touching runs are
//      found 64 voxels at a time from the masks (see join_rows_impl), each run index a rank query,
//      and joined by Rem's union-find (the smaller index always the root). Rows are split into
//      slabs done in parallel; a slab joins only its own rows, so its parent entries are its own,
//      and it flattens its trees at its end;
//   3. seams: the first rows of each slab joined with the rows of earlier slabs (serial, few rows);
//   4. numbering: roots counted per chunk of runs, a prefix sum, and each root numbered 1 + the
//      roots before it: 1..count in raster order of each component's first voxel, the numbering of
//      scipy.ndimage.label (parallel, but for the sum over the chunks);
//   5. paint: each row's runs again from its masks, their labels into the output, every voxel written
//      (background 0), so the output need not be cleared first
//      (parallel over rows; rows of many short runs voxel by voxel without a branch; each row built
//      in L1 and streamed to memory).
// Passes 1, 4 and 5 have AVX-512 versions chosen at run time (ccl_avx512; BHSD_NO_AVX512=1 takes
// the others), compared with flood fill by the core test like the rest. Pass 1 is a function of its
// own (ccl_rows) so that a caller may run it where the voxels are at hand: the Node layer runs it
// before the call returns and keeps no copy of a binary mask.
// Scratch (about 0.4 bytes a voxel for the masks, 4 bytes a run) comes from the engine's huge-page
// allocator (memory.hpp), which keeps freed blocks for reuse: in the VMs this runs in, first touch
// of fresh pages is slow, and the std::vector scratch of the previous version (run lists gathered
// after the slabs) spent more than half its time in page faults.
// Why not a library: the candidates (cc3d, YACCLAB's kernels) are single-threaded or number
// components otherwise; scipy's raster numbering is this API's contract.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <type_traits>
#include <vector>

#if defined(__SSE2__) || defined(_M_X64)
#include <emmintrin.h>
#include <immintrin.h>
#define BHSD_CCL_SSE2 1
#endif

#include "dtype.hpp"
#include "memory.hpp"
#include "thread_pool.hpp"

namespace bhsd {

namespace ccl_detail {

// The neighbour rows of row (y, z) seen before it, and how far (0 or 1 voxel) in x a run may be
// from another and still touch it there.
struct NeighbourRow {
  int dy, dz, ext;
};

inline int neighbour_rows(int connectivity, NeighbourRow* out) {
  switch (connectivity) {
    case 6:
      out[0] = {-1, 0, 0}, out[1] = {0, -1, 0};
      return 2;
    case 18:
      out[0] = {-1, 0, 1}, out[1] = {-1, -1, 0}, out[2] = {0, -1, 1}, out[3] = {1, -1, 0};
      return 4;
    default:  // 26
      out[0] = {-1, 0, 1}, out[1] = {-1, -1, 1}, out[2] = {0, -1, 1}, out[3] = {1, -1, 1};
      return 4;
  }
}

inline std::uint32_t find_root(std::uint32_t* parent, std::uint32_t i) {
  while (parent[i] != i) {
    parent[i] = parent[parent[i]];  // path halving
    i = parent[i];
  }
  return i;
}

inline void unite(std::uint32_t* parent, std::uint32_t a, std::uint32_t b) {
  a = find_root(parent, a);
  b = find_root(parent, b);
  if (a == b) return;
  if (a < b)
    parent[b] = a;
  else
    parent[a] = b;
}

// Population count. The addon is built for baseline x86-64, where __builtin_popcountll is a libgcc
// call that looks bytes up in a table (it cost 12 % of a labelling): there the joins run in a copy
// compiled for the POPCNT instruction when the processor has it (every x86-64 since 2008-2011), and
// in the inline, branch-free SWAR count below otherwise. HW: the caller is compiled for POPCNT.
#if (defined(__x86_64__) || defined(__i386__)) && !defined(__POPCNT__) && (defined(__GNUC__) || defined(__clang__))
#define BHSD_CCL_POPCNT_DISPATCH 1
#define BHSD_CCL_INLINE inline __attribute__((always_inline))
#else
#define BHSD_CCL_INLINE inline
#endif
template <bool HW = false>
BHSD_CCL_INLINE int popcount64(std::uint64_t v) {
#if defined(__POPCNT__) || defined(__aarch64__) || defined(__ARM_NEON)
  return __builtin_popcountll(v);
#else
  if constexpr (HW) {
#if defined(__GNUC__) || defined(__clang__)
    return __builtin_popcountll(v);
#endif
  }
  v = v - ((v >> 1) & 0x5555555555555555ULL);
  v = (v & 0x3333333333333333ULL) + ((v >> 2) & 0x3333333333333333ULL);
  v = (v + (v >> 4)) & 0x0F0F0F0F0F0F0F0FULL;
  return int((v * 0x0101010101010101ULL) >> 56);
#endif
}

BHSD_CCL_INLINE int ctz64(std::uint64_t v) {  // v != 0
#if defined(__GNUC__) || defined(__clang__)
  return __builtin_ctzll(v);
#else
  int c = 0;
  while (!(v & 1)) v >>= 1, ++c;
  return c;
#endif
}

// Index of the first non-zero element of p[x..n), or n.
template <class T>
inline std::int64_t skip_zeros(const T* p, std::int64_t x, std::int64_t n) {
  if constexpr (sizeof(T) <= 4 && std::is_integral<T>::value) {
    constexpr std::int64_t per_word = 8 / sizeof(T);
    while (x < n && (reinterpret_cast<std::uintptr_t>(p + x) & 7)) {
      if (p[x] != 0) return x;
      ++x;
    }
    while (x + per_word <= n) {
      std::uint64_t w;
      std::memcpy(&w, p + x, 8);
      if (w != 0) break;
      x += per_word;
    }
  }
  while (x < n && p[x] == 0) ++x;
  return x;
}

// One row's runs as bit masks, bit b of word w for voxel x = 64w + b: start (x begins a run) and
// end (x is a run's last voxel). A voxel continues the run of x-1 when both are non-zero (and, per
// class, equal); a run starts at a non-zero voxel that does not continue one, and ends where the
// next voxel does not continue it; nzw: the non-zero voxels. `words` = (nx + 63) / 64; scratch needs
// words + 1 entries.
// Also widens [vmin, vmax] to the non-zero values seen (per class only).
template <class T>
inline void row_masks(const T* p, std::int64_t nx, bool per_class, std::int64_t words, std::uint64_t* nzw,
                      std::uint64_t* start, std::uint64_t* end, std::uint64_t* scratch, T& vmin, T& vmax) {
  std::uint64_t* cont = scratch;  // continues the run of x-1 (cont[words] = 0)
  std::int64_t x = 0;
#ifdef BHSD_CCL_SSE2
  if constexpr (sizeof(T) == 1) {
    // 16 voxels a step: compares and movemasks (SSE2, which every x86-64 has); per class also the
    // smallest and largest non-zero value, in the unsigned byte order, mapped back below
    const __m128i zero = _mm_setzero_si128();
    const __m128i flip = _mm_set1_epi8(std::is_signed<T>::value ? char(0x80) : 0);
    __m128i mn = _mm_set1_epi8(char(0xFF)), mx = zero;
    bool any = false;
    for (; x + 64 <= nx; x += 64) {
      std::uint64_t nz = 0, eq = 0;
      for (int k = 0; k < 4; ++k) {
        const T* q = p + x + 16 * k;
        const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(q));
        const __m128i isz = _mm_cmpeq_epi8(v, zero);
        nz |= std::uint64_t(~_mm_movemask_epi8(isz) & 0xFFFF) << (16 * k);
        if (per_class) {
          const __m128i prev =
              (x + 16 * k == 0) ? _mm_slli_si128(v, 1) : _mm_loadu_si128(reinterpret_cast<const __m128i*>(q - 1));
          eq |= std::uint64_t(_mm_movemask_epi8(_mm_cmpeq_epi8(v, prev)) & 0xFFFF) << (16 * k);
          const __m128i u = _mm_xor_si128(v, flip);  // signed bytes ordered as unsigned ones
          mn = _mm_min_epu8(mn, _mm_or_si128(u, isz));
          mx = _mm_max_epu8(mx, _mm_andnot_si128(isz, u));
        }
      }
      nzw[x >> 6] = nz;
      cont[x >> 6] = per_class ? (nz & eq) : 0;
      any = any || nz;
    }
    if (per_class && any) {
      alignas(16) std::uint8_t lo[16], hi[16];
      _mm_store_si128(reinterpret_cast<__m128i*>(lo), mn);
      _mm_store_si128(reinterpret_cast<__m128i*>(hi), mx);
      const std::uint8_t f = std::is_signed<T>::value ? 0x80 : 0;
      // lanes that saw no non-zero voxel keep 0xFF / 0: harmless for min / max except when every
      // lane did, which `any` excludes; a lane's 0xFF can be a real value only for 0xFF itself
      std::uint8_t l = 0xFF, h = 0;
      for (int k = 0; k < 16; ++k) l = std::min(l, lo[k]), h = std::max(h, hi[k]);
      T tl, th;
      const std::uint8_t lf = std::uint8_t(l ^ f), hf = std::uint8_t(h ^ f);
      std::memcpy(&tl, &lf, 1), std::memcpy(&th, &hf, 1);
      // h = 0 after xor cannot be a non-zero value: all lanes were zero there (excluded by any)
      vmin = std::min(vmin, tl), vmax = std::max(vmax, th);
    }
  }
#endif
  for (; x < nx; x += 64) {  // the rest (every x for types other than bytes), a voxel at a time
    const std::int64_t n = std::min<std::int64_t>(64, nx - x);
    std::uint64_t nz = 0, eq = 0;
    for (std::int64_t b = 0; b < n; ++b) {
      const T v = p[x + b];
      nz |= std::uint64_t(v != 0) << b;
      if (per_class) {
        eq |= std::uint64_t(x + b > 0 && v == p[x + b - 1]) << b;
        if (v != 0) vmin = std::min(vmin, v), vmax = std::max(vmax, v);
      }
    }
    nzw[x >> 6] = nz;
    cont[x >> 6] = per_class ? (nz & eq) : 0;
  }
  if (!per_class) {  // continues: this and the previous voxel are non-zero
    std::uint64_t carry = 0;
    for (std::int64_t w = 0; w < words; ++w) {
      cont[w] = nzw[w] & ((nzw[w] << 1) | carry);
      carry = nzw[w] >> 63;
    }
  }
  cont[words] = 0;
  for (std::int64_t w = 0; w < words; ++w) {
    start[w] = nzw[w] & ~cont[w];
    end[w] = nzw[w] & ~((cont[w] >> 1) | (cont[w + 1] << 63));
  }
}

// Output rows go to memory with streaming (non-temporal) stores: the labels of a CT are 42 MB or
// more, far beyond the caches, and ordinary stores first read each line they write (40×512×512 on
// two threads: 13 GB/s with ordinary stores, 33–39 GB/s streamed, in these VMs). A row is built
// in a small buffer that stays in L1 and then streamed out; the fence at the end of each task
// orders the streamed stores before the pool's completion signal.
#ifdef BHSD_CCL_SSE2
inline void stream_copy(std::int32_t* dst, const std::int32_t* src, std::int64_t n) {
  std::int64_t i = 0;
  for (; i < n && (reinterpret_cast<std::uintptr_t>(dst + i) & 15); ++i) dst[i] = src[i];
  for (; i + 4 <= n; i += 4)
    _mm_stream_si128(reinterpret_cast<__m128i*>(dst + i), _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i)));
  for (; i < n; ++i) dst[i] = src[i];
}
inline void stream_zero(std::int32_t* dst, std::int64_t n) {
  std::int64_t i = 0;
  for (; i < n && (reinterpret_cast<std::uintptr_t>(dst + i) & 15); ++i) dst[i] = 0;
  for (; i + 4 <= n; i += 4) _mm_stream_si128(reinterpret_cast<__m128i*>(dst + i), _mm_setzero_si128());
  for (; i < n; ++i) dst[i] = 0;
}
inline void stream_fence() { _mm_sfence(); }
#else
inline void stream_copy(std::int32_t* dst, const std::int32_t* src, std::int64_t n) {
  std::memcpy(dst, src, std::size_t(n) * sizeof(std::int32_t));
}
inline void stream_zero(std::int32_t* dst, std::int64_t n) {
  std::memset(dst, 0, std::size_t(n) * sizeof(std::int32_t));
}
inline void stream_fence() {}
#endif
// Rows up to this long are built in a buffer and streamed; longer ones are written in place.
constexpr std::int64_t kStreamRow = 16384;

// A row of many short runs, 16 voxels a step where the processor has AVX-512 (F): each voxel's
// label is lab[c + p] (c: the run starts before the step, p: those in the step up to the voxel, a
// byte-table prefix count), one two-vector permutation of lab[c .. c+31], zero where the voxel is
// background. lab: lab[0] = 0, lab[k] = the label of the row's run k-1, with 32 entries of room
// after the last. Writes o[0, nx).
#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#define BHSD_CCL_AVX512 1
struct Prefix8 {  // byte l of t[b]: the set bits of b at or below bit l
  std::uint64_t t[256];
  constexpr Prefix8() : t{} {
    for (int b = 0; b < 256; ++b)
      for (int l = 0, n = 0; l < 8; ++l) {
        n += (b >> l) & 1;
        t[b] |= std::uint64_t(n) << (8 * l);
      }
  }
};
inline constexpr Prefix8 kPrefix8{};

__attribute__((target("avx512f,popcnt"))) inline void paint_short_runs_avx512(std::int32_t* o, const std::int32_t* lab,
                                                                              const std::uint64_t* st,
                                                                              const std::uint64_t* nzw,
                                                                              std::int64_t nx) {
  std::uint32_t c = 0;
  for (std::int64_t x = 0; x < nx; x += 16) {
    const int sh = int(x & 63);
    const unsigned s = unsigned(st[x >> 6] >> sh) & 0xFFFFu, nz = unsigned(nzw[x >> 6] >> sh) & 0xFFFFu;
    const unsigned below = unsigned(__builtin_popcount(s & 0xFFu));
    const __m128i pre = _mm_set_epi64x(std::int64_t(kPrefix8.t[s >> 8] + 0x0101010101010101ULL * below),
                                       std::int64_t(kPrefix8.t[s & 0xFFu]));
    const __m512i v =
        _mm512_maskz_permutex2var_epi32(__mmask16(nz), _mm512_loadu_si512(lab + c),
                                        _mm512_maskz_cvtepu8_epi32(0xFFFF, pre), _mm512_loadu_si512(lab + c + 16));
    c += unsigned(__builtin_popcount(s));
    if (x + 16 <= nx)
      _mm512_storeu_si512(o + x, v);
    else
      _mm512_mask_storeu_epi32(o + x, __mmask16((1u << (nx - x)) - 1), v);
  }
}
// Pass 1 for rows of byte voxels [r0, r1), 64 voxels a step with AVX-512 (F, BW): the non-zero
// mask is one test, "continues the run of x-1" one compare with the row shifted by a voxel (a
// masked load: lanes outside the row are off, so nothing is read there), the smallest and largest
// non-zero value masked minima and maxima, reduced once for all the rows. The same masks, counts
// and run numbers as row_masks and the prefix loop (the core test compares the two paths).
// Rows: stride words each (words + 1: the last zero); row_runs[r] = the row's run count.
template <class T>
__attribute__((target("avx512f,avx512bw,popcnt"))) inline void masks_bytes_avx512(
    const T* data, std::int64_t nx, bool per_class, std::int64_t words, std::int64_t stride, std::int64_t r0,
    std::int64_t r1, std::uint64_t* S, std::uint64_t* E, std::uint64_t* N, std::uint32_t* LS, std::uint32_t* LE,
    std::uint32_t* row_runs, T& vmin, T& vmax) {
  static_assert(sizeof(T) == 1, "bytes only");
  const __m512i flip = _mm512_set1_epi8(std::is_signed<T>::value ? char(0x80) : 0);
  __m512i mn = _mm512_set1_epi8(char(0xFF)), mx = _mm512_setzero_si512();
  std::uint64_t any = 0;
  for (std::int64_t r = r0; r < r1; ++r) {
    const auto* p = reinterpret_cast<const std::uint8_t*>(data + r * nx);
    std::uint64_t *st = S + r * stride, *en = E + r * stride, *nzw = N + r * stride;
    std::uint32_t *ls = LS + r * stride, *le = LE + r * stride;
    std::uint32_t cs = 0, ce = 0;
    std::uint64_t prev_nz = 0, prev_cont = 0, carry = 0;
    // word w's start / end bits need the next word's first "continues" bit: each word is finished
    // one step late
    auto finish = [&](std::int64_t w, std::uint64_t nz, std::uint64_t cont, std::uint64_t next_cont) {
      const std::uint64_t sv = nz & ~cont, ev = nz & ~((cont >> 1) | (next_cont << 63));
      st[w] = sv, en[w] = ev, nzw[w] = nz, ls[w] = cs, le[w] = ce;
      cs += std::uint32_t(__builtin_popcountll(sv)), ce += std::uint32_t(__builtin_popcountll(ev));
    };
    for (std::int64_t w = 0; w < words; ++w) {
      const std::int64_t x = 64 * w, n = std::min<std::int64_t>(64, nx - x);
      const __mmask64 in = n == 64 ? ~__mmask64(0) : (__mmask64(1) << n) - 1;
      const __m512i v = _mm512_maskz_loadu_epi8(in, p + x);
      const std::uint64_t nz = _mm512_test_epi8_mask(v, v);
      std::uint64_t cont;
      if (per_class) {
        // voxel x-1 of each lane; lane 0 of the row's first word has none (masked off, read as 0,
        // which a non-zero voxel never equals)
        const __m512i prev = x == 0
                                 ? _mm512_maskz_loadu_epi8(
                                       __mmask64(in & ~std::uint64_t(1)),
                                       reinterpret_cast<const std::uint8_t*>(reinterpret_cast<std::uintptr_t>(p) - 1))
                                 : _mm512_maskz_loadu_epi8(in, p + x - 1);
        cont = nz & _mm512_cmpeq_epi8_mask(v, prev);
        const __m512i u = _mm512_xor_si512(v, flip);  // signed bytes ordered as unsigned ones
        mn = _mm512_mask_min_epu8(mn, nz, mn, u);
        mx = _mm512_mask_max_epu8(mx, nz, mx, u);
        any |= nz;
      } else {
        cont = nz & ((nz << 1) | carry);
        carry = nz >> 63;
      }
      if (w > 0) finish(w - 1, prev_nz, prev_cont, cont);
      prev_nz = nz, prev_cont = cont;
    }
    if (words > 0) finish(words - 1, prev_nz, prev_cont, 0);
    st[words] = en[words] = nzw[words] = 0, ls[words] = cs, le[words] = ce;
    row_runs[r] = cs;
  }
  if (per_class && any) {
    // lanes that saw no non-zero voxel keep 0xFF / 0 (see row_masks); `any` excludes all lanes so
    const std::uint8_t f = std::is_signed<T>::value ? 0x80 : 0;
    alignas(64) std::uint8_t lo[64], hi[64];
    _mm512_store_si512(lo, mn), _mm512_store_si512(hi, mx);
    std::uint8_t l = 0xFF, h = 0;
    for (int k = 0; k < 64; ++k) l = std::min(l, lo[k]), h = std::max(h, hi[k]);
    const std::uint8_t lf = std::uint8_t(l ^ f), hf = std::uint8_t(h ^ f);
    T tl, th;
    std::memcpy(&tl, &lf, 1), std::memcpy(&th, &hf, 1);
    vmin = std::min(vmin, tl), vmax = std::max(vmax, th);
  }
}
// Numbering, 16 parent entries a step (AVX-512 F): the roots among P[i0, i1) (P[i] = i) counted
// and, with Write, each given kLabel | (label + 1 + the roots before it from i0), its rank in the
// step by one expand of 1, 2, 3, … into the roots' lanes. Returns label + the roots counted.
template <bool Write>
__attribute__((target("avx512f,popcnt"))) inline std::uint32_t number_roots_avx512(std::uint32_t* P, std::uint32_t i0,
                                                                                   std::uint32_t i1,
                                                                                   std::uint32_t label) {
  const __m512i lanes = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  const __m512i ranks = _mm512_add_epi32(lanes, _mm512_set1_epi32(1));
  const __m512i flag = _mm512_set1_epi32(std::int32_t(0x80000000u));
  for (std::uint32_t i = i0; i < i1; i += 16) {
    const __mmask16 in = i1 - i >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (i1 - i)) - 1);
    const __m512i p = _mm512_maskz_loadu_epi32(in, P + i);
    const __mmask16 root =
        _mm512_mask_cmpeq_epi32_mask(in, p, _mm512_add_epi32(_mm512_set1_epi32(std::int32_t(i)), lanes));
    if constexpr (Write) {
      const __m512i lab =
          _mm512_add_epi32(_mm512_set1_epi32(std::int32_t(label)), _mm512_maskz_expand_epi32(root, ranks));
      _mm512_mask_storeu_epi32(P + i, root, _mm512_or_si512(lab, flag));
    }
    label += std::uint32_t(__builtin_popcount(unsigned(root)));
  }
  return label;
}

// lab[k] = the label of run first + k for runs [first, last) (AVX-512 F), 16 runs a step: an
// entry that is not yet a label (top bit clear) is its root's index, gathered until every lane
// holds a label (one gather inside a slab, a few more across a seam).
__attribute__((target("avx512f"))) inline void run_labels_avx512(const std::uint32_t* P, std::uint32_t first,
                                                                 std::uint32_t last, std::int32_t* lab) {
  const __m512i zero = _mm512_setzero_si512(), low = _mm512_set1_epi32(0x7FFFFFFF);
  for (std::uint32_t i = first; i < last; i += 16) {
    const __mmask16 in = last - i >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (last - i)) - 1);
    __m512i v = _mm512_maskz_loadu_epi32(in, P + i);
    for (__mmask16 up = _mm512_mask_cmpge_epi32_mask(in, v, zero); up; up = _mm512_mask_cmpge_epi32_mask(up, v, zero))
      v = _mm512_mask_i32gather_epi32(v, up, v, P, 4);
    _mm512_mask_storeu_epi32(lab + (i - first), in, _mm512_and_si512(v, low));
  }
}

inline bool ccl_avx512() {
  static const bool yes = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                          __builtin_cpu_supports("popcnt") && !std::getenv("BHSD_NO_AVX512") &&
                          !std::getenv("BHSD_NO_AVX2");
  return yes;
}
#endif

// Bits below bit b, and up to and including it (b in 0..63).
BHSD_CCL_INLINE std::uint64_t bits_below(int b) { return (std::uint64_t(1) << b) - 1; }
BHSD_CCL_INLINE std::uint64_t bits_upto(int b) { return (std::uint64_t(2) << b) - 1; }

// Rem's union with splicing (Patwary, Blair, Manne 2010), keeping every parent at most its index:
// the root of a set is its smallest run index. Returns when x and y are in one set.
BHSD_CCL_INLINE void unite_rem(std::uint32_t* P, std::uint32_t x, std::uint32_t y) {
  std::uint32_t px = P[x], py = P[y];
  while (px != py) {
    if (px > py) {
      if (x == px) {
        P[x] = py;
        return;
      }
      P[x] = py;
      x = px;
      px = P[x];
    } else {
      if (y == py) {
        P[y] = px;
        return;
      }
      P[y] = px;
      y = py;
      py = P[y];
    }
  }
}

// Scratch memory of the engine (huge pages, reused across calls), released at scope end.
template <class E>
struct Scratch {
  std::shared_ptr<Block> block;
  E* data = nullptr;
  explicit Scratch(std::size_t n) {
    if (n == 0) return;
    block = Block::allocate(n * sizeof(E), /*zero=*/false);  // every entry used is written first
    data = static_cast<E*>(block->data());
  }
  Scratch() = default;
  E& operator[](std::size_t i) { return data[i]; }
  const E& operator[](std::size_t i) const { return data[i]; }
};

// Every row's masks (pass 1): start, end and non-zero words (stride a row, the last word zero) and
// the number of start / end bits before each word; row_start[r]: the index of row r's first run.
struct Rows {
  const std::uint64_t *S, *E, *N;
  const std::uint32_t *LS, *LE, *row_start;
  std::int64_t nx, words, stride;
};

// Joins the runs of row ra with those of an earlier row rb, a pair of touching runs at a time,
// found bit-parallel 64 voxels at once: runs i of ra and k of rb overlap iff their intersection
// starts at some x where both rows are non-zero and one of them starts a run (x = the larger of the
// two starts), and they touch diagonally (ext = 1) without overlapping iff one ends at x and the
// other starts at x + 1. Each pair is found exactly once; i and k are rank queries (popcounts of the
// start / end masks below x, plus the word's prefix count). No loop over runs, no run list.
template <bool HW, class T>
BHSD_CCL_INLINE void join_rows_impl(const Rows& R, const T* data, bool per_class, std::uint32_t* P, std::int64_t ra,
                                    std::int64_t rb, int ext) {
  const std::uint32_t abase = R.row_start[ra], bbase = R.row_start[rb];
  if (R.row_start[rb + 1] == bbase || R.row_start[ra + 1] == abase) return;
  const std::int64_t oa = ra * R.stride, ob = rb * R.stride;
  const std::uint64_t *sa = R.S + oa, *ea = R.E + oa, *na = R.N + oa;
  const std::uint64_t *sb = R.S + ob, *eb = R.E + ob, *nb = R.N + ob;
  const std::uint32_t *lsa = R.LS + oa, *lea = R.LE + oa, *lsb = R.LS + ob, *leb = R.LE + ob;
  const T* pa = per_class ? data + ra * R.nx : nullptr;  // the voxels only when compared
  const T* pb = per_class ? data + rb * R.nx : nullptr;
  for (std::int64_t w = 0; w < R.words; ++w) {
    const std::int64_t x64 = 64 * w;
    for (std::uint64_t m = na[w] & nb[w] & (sa[w] | sb[w]); m; m &= m - 1) {
      const int b = ctz64(m);
      if (per_class && pa[x64 + b] != pb[x64 + b]) continue;
      const std::uint64_t up = bits_upto(b);
      unite_rem(P, abase + lsa[w] + std::uint32_t(popcount64<HW>(sa[w] & up)) - 1,
                bbase + lsb[w] + std::uint32_t(popcount64<HW>(sb[w] & up)) - 1);
    }
    if (!ext) continue;
    // a ends at x, b starts at x + 1
    for (std::uint64_t m = ea[w] & ((sb[w] >> 1) | (sb[w + 1] << 63)); m; m &= m - 1) {
      const int b = ctz64(m);
      if (per_class && pa[x64 + b] != pb[x64 + b + 1]) continue;
      unite_rem(P, abase + lea[w] + std::uint32_t(popcount64<HW>(ea[w] & bits_below(b))),
                bbase + lsb[w] + std::uint32_t(popcount64<HW>(sb[w] & bits_upto(b))));
    }
    // b ends at x, a starts at x + 1
    for (std::uint64_t m = eb[w] & ((sa[w] >> 1) | (sa[w + 1] << 63)); m; m &= m - 1) {
      const int b = ctz64(m);
      if (per_class && pa[x64 + b + 1] != pb[x64 + b]) continue;
      unite_rem(P, abase + lsa[w] + std::uint32_t(popcount64<HW>(sa[w] & bits_upto(b))),
                bbase + leb[w] + std::uint32_t(popcount64<HW>(eb[w] & bits_below(b))));
    }
  }
}

// Joins row r with each of its earlier neighbour rows from row `from` on (the others: at a seam).
template <bool HW, class T>
BHSD_CCL_INLINE void join_row_impl(const Rows& R, const T* data, bool per_class, std::uint32_t* P, std::int64_t ny,
                                   const NeighbourRow* nb, int nnb, std::int64_t r, std::int64_t from,
                                   std::int64_t below) {
  const std::int64_t y = r % ny, z = r / ny;
  for (int k = 0; k < nnb; ++k) {
    const std::int64_t yy = y + nb[k].dy, zz = z + nb[k].dz;
    if (yy < 0 || yy >= ny || zz < 0) continue;
    const std::int64_t rr = zz * ny + yy;
    if (rr < from || rr >= below) continue;
    join_rows_impl<HW>(R, data, per_class, P, r, rr, nb[k].ext);
  }
}

// Rows [r0, r1): each joined with its neighbour rows in [from, below).
template <class T>
void join_rows_sw(const Rows& R, const T* data, bool per_class, std::uint32_t* P, std::int64_t ny,
                  const NeighbourRow* nb, int nnb, std::int64_t r0, std::int64_t r1, std::int64_t from,
                  std::int64_t below) {
  for (std::int64_t r = r0; r < r1; ++r) join_row_impl<false>(R, data, per_class, P, ny, nb, nnb, r, from, below);
}
#ifdef BHSD_CCL_POPCNT_DISPATCH
template <class T>
__attribute__((target("popcnt"))) void join_rows_hw(const Rows& R, const T* data, bool per_class, std::uint32_t* P,
                                                    std::int64_t ny, const NeighbourRow* nb, int nnb, std::int64_t r0,
                                                    std::int64_t r1, std::int64_t from, std::int64_t below) {
  for (std::int64_t r = r0; r < r1; ++r) join_row_impl<true>(R, data, per_class, P, ny, nb, nnb, r, from, below);
}
// BHSD_NO_AVX2=1 (the core test's baseline run) takes the baseline path here too.
inline bool have_popcnt() {
  static const bool yes = __builtin_cpu_supports("popcnt") && !std::getenv("BHSD_NO_AVX2");
  return yes;
}
#endif
template <class T>
void join_rows(const Rows& R, const T* data, bool per_class, std::uint32_t* P, std::int64_t ny, const NeighbourRow* nb,
               int nnb, std::int64_t r0, std::int64_t r1, std::int64_t from, std::int64_t below) {
#ifdef BHSD_CCL_POPCNT_DISPATCH
  if (have_popcnt()) return join_rows_hw(R, data, per_class, P, ny, nb, nnb, r0, r1, from, below);
#endif
  join_rows_sw(R, data, per_class, P, ny, nb, nnb, r0, r1, from, below);
}

}  // namespace ccl_detail

// Pass 1 of a labelling, all that the later passes need of the voxels: every row's start, end and
// non-zero masks with their per-word prefix counts (the joins answer "which runs of that row touch
// [lo, hi]" with two rank queries) and the index of its first run. Read from the voxels once; the
// voxels themselves are read again only when per_class remains set (voxels of different non-zero
// values, whose touching runs the joins compare). The Node layer runs this pass on the caller's
// memory while the call is still synchronous, and so need not copy a binary mask for the rest.
struct CclRows {
  ccl_detail::Scratch<std::uint64_t> S, E, N;
  ccl_detail::Scratch<std::uint32_t> LS, LE, row_start;
  std::int64_t nx = 0, ny = 0, nz = 0, words = 0, stride = 0;
  std::uint64_t total = 0;  // runs
  bool per_class = false;   // the joins compare the voxels' values
};

template <class T>
CclRows ccl_rows(const T* data, std::int64_t nx, std::int64_t ny, std::int64_t nz, bool per_class, ThreadPool& pool) {
  using namespace ccl_detail;
  CclRows out;
  const std::int64_t rows = ny * nz;
  if (rows == 0 || nx == 0) return out;
  if (nx > std::numeric_limits<std::int32_t>::max() - 2) throw Error("rows longer than 2^31-3 voxels");
  const std::int64_t words = (nx + 63) / 64, stride = words + 1;  // mask words a row (+ one zero)
  // 1 + the largest run count: labels are int32 and a root is marked by the top bit of its entry
  constexpr std::uint64_t kMaxRuns = (std::uint64_t(1) << 31) - 1;
  out.nx = nx, out.ny = ny, out.nz = nz, out.words = words, out.stride = stride;
  Scratch<std::uint64_t> S(std::size_t(rows * stride)), E(std::size_t(rows * stride)), N(std::size_t(rows * stride));
  Scratch<std::uint32_t> LS(std::size_t(rows * stride)), LE(std::size_t(rows * stride));
  Scratch<std::uint32_t> row_start(std::size_t(rows) + 1);
  const std::size_t nchunk1 = std::size_t(std::min<std::int64_t>(rows, std::int64_t(pool.size()) * 8));
  std::vector<T> cmin(nchunk1, std::numeric_limits<T>::max()), cmax(nchunk1, std::numeric_limits<T>::lowest());
#ifdef BHSD_CCL_AVX512
  const bool vector_masks = ccl_avx512();
#endif
  pool.parallel_for(
      nchunk1,
      [&](std::size_t lo, std::size_t hi) {
        std::vector<std::uint64_t> m(std::size_t(words + 1));
        for (std::size_t c = lo; c < hi; ++c) {
          T vmin = std::numeric_limits<T>::max(), vmax = std::numeric_limits<T>::lowest();
          const std::int64_t c0 = rows * std::int64_t(c) / std::int64_t(nchunk1),
                             c1 = rows * std::int64_t(c + 1) / std::int64_t(nchunk1);
#ifdef BHSD_CCL_AVX512
          if constexpr (sizeof(T) == 1) {
            if (vector_masks) {
              masks_bytes_avx512(data, nx, per_class, words, stride, c0, c1, S.data, E.data, N.data, LS.data, LE.data,
                                 row_start.data + 1, vmin, vmax);
              cmin[c] = vmin, cmax[c] = vmax;
              continue;
            }
          }
#endif
          for (std::int64_t r = c0; r < c1; ++r) {
            std::uint64_t *st = S.data + r * stride, *en = E.data + r * stride, *nz_ = N.data + r * stride;
            std::uint32_t *ls = LS.data + r * stride, *le = LE.data + r * stride;
            row_masks(data + r * nx, nx, per_class, words, nz_, st, en, m.data(), vmin, vmax);
            st[words] = en[words] = nz_[words] = 0;
            std::uint32_t cs = 0, ce = 0;
            for (std::int64_t w = 0; w <= words; ++w) {
              ls[w] = cs, le[w] = ce;
              cs += std::uint32_t(popcount64(st[w])), ce += std::uint32_t(popcount64(en[w]));
            }
            row_start[std::size_t(r) + 1] = cs;
          }
          cmin[c] = vmin, cmax[c] = vmax;
        }
      },
      1, 1);
  row_start[0] = 0;
  std::uint64_t total = 0;
  for (std::int64_t r = 1; r <= rows; ++r) {
    total += row_start[std::size_t(r)];
    if (total > kMaxRuns) throw Error("too many runs for one labelling (more than 2^31-1)");
    row_start[std::size_t(r)] = std::uint32_t(total);
  }
  // One non-zero value throughout: labelling per class is labelling the foreground (no value checks).
  if (per_class) {
    T lo = std::numeric_limits<T>::max(), hi = std::numeric_limits<T>::lowest();
    for (std::size_t c = 0; c < nchunk1; ++c) lo = std::min(lo, cmin[c]), hi = std::max(hi, cmax[c]);
    if (lo >= hi) per_class = false;  // lo > hi: no non-zero voxel
  }
  out.S = std::move(S), out.E = std::move(E), out.N = std::move(N);
  out.LS = std::move(LS), out.LE = std::move(LE), out.row_start = std::move(row_start);
  out.total = total, out.per_class = per_class;
  return out;
}

// The rest of a labelling: unions, numbering and paint into `out` (nx·ny·nz, every voxel written,
// 0 for the background; `out` need not be cleared). `data`: the voxels ccl_rows read, needed
// (and read) only when rows.per_class. Returns the number of components.
template <class T>
std::int64_t ccl_label(const CclRows& rows_in, const T* data, int connectivity, std::int32_t* out, ThreadPool& pool) {
  using namespace ccl_detail;
  if (connectivity != 6 && connectivity != 18 && connectivity != 26) throw Error("connectivity must be 6, 18 or 26");
  const std::int64_t nx = rows_in.nx, ny = rows_in.ny, words = rows_in.words, stride = rows_in.stride;
  const std::int64_t rows = ny * rows_in.nz;
  if (rows == 0 || nx == 0) return 0;
  const bool per_class = rows_in.per_class;
  if (per_class && !data) throw Error("internal: labelling per class without the voxels");
  NeighbourRow nb[4];
  const int nnb = neighbour_rows(connectivity, nb);
  constexpr std::uint32_t kLabel = 0x80000000u;
  const std::uint64_t total = rows_in.total;
  const Scratch<std::uint64_t>&S = rows_in.S, &E = rows_in.E, &N = rows_in.N;
  const Scratch<std::uint32_t>&LS = rows_in.LS, &LE = rows_in.LE, &row_start = rows_in.row_start;
  if (total == 0) {  // no foreground: all background
    pool.parallel_for(
        std::size_t(rows),
        [&](std::size_t lo, std::size_t hi) {
          stream_zero(out + std::int64_t(lo) * nx, std::int64_t(hi - lo) * nx);
          stream_fence();
        },
        64);
    return 0;
  }
  Scratch<std::uint32_t> parent(total);
  std::uint32_t* P = parent.data;
  const Rows R{S.data, E.data, N.data, LS.data, LE.data, row_start.data, nx, words, stride};
  const std::int64_t kAll = std::numeric_limits<std::int64_t>::max();

  // 2. Unions inside each slab of rows (each row with its neighbour rows in the same slab).
  const std::int64_t nslabs = std::max<std::int64_t>(1, std::min<std::int64_t>(rows, std::int64_t(pool.size()) * 4));
  std::vector<std::int64_t> slab_row(std::size_t(nslabs) + 1);
  for (std::int64_t s = 0; s <= nslabs; ++s) slab_row[std::size_t(s)] = rows * s / nslabs;
  pool.parallel_for(
      std::size_t(nslabs),
      [&](std::size_t lo, std::size_t hi) {
        for (std::size_t s = lo; s < hi; ++s) {
          const std::int64_t r0 = slab_row[s], r1 = slab_row[s + 1];
          for (std::uint32_t i = row_start[std::size_t(r0)], e = row_start[std::size_t(r1)]; i < e; ++i) P[i] = i;
          join_rows(R, data, per_class, P, ny, nb, nnb, r0, r1, r0, kAll);
          // flatten the slab's trees while they are in cache: in index order each parent (smaller, in
          // the slab) already points at its root, so one step each, no branch
          for (std::uint32_t i = row_start[std::size_t(r0)], e = row_start[std::size_t(r1)]; i < e; ++i) P[i] = P[P[i]];
        }
      },
      1, 1);

  // 3. Seams: the first rows of each slab against rows of earlier slabs.
  for (std::int64_t s = 1; s < nslabs; ++s) {
    const std::int64_t r0 = slab_row[std::size_t(s)];
    join_rows(R, data, per_class, P, ny, nb, nnb, r0, std::min(slab_row[std::size_t(s) + 1], r0 + ny + 1), 0, r0);
  }

  // 4. Numbering: (a) roots (P[i] = i) counted per chunk of runs, (b) a prefix sum over the chunks,
  // (c) each root gets 1 + the roots before it, marked by the top bit (no index is that high:
  // total < 2^31). The smallest index of a set is its root and runs are in raster order, so labels
  // are 1..count in raster order of each component's first voxel, as scipy numbers them.
  const std::size_t nchunks = std::size_t(std::min<std::uint64_t>(total, std::uint64_t(pool.size()) * 8));
  std::vector<std::uint64_t> roots(nchunks + 1, 0);
  auto chunk_lo = [&](std::size_t c) { return std::uint32_t(total * c / nchunks); };
#ifdef BHSD_CCL_AVX512
  const bool vector_numbers = ccl_avx512();
#endif
  pool.parallel_for(
      nchunks,
      [&](std::size_t lo, std::size_t hi) {
        for (std::size_t c = lo; c < hi; ++c) {
#ifdef BHSD_CCL_AVX512
          if (vector_numbers) {
            roots[c + 1] = number_roots_avx512<false>(P, chunk_lo(c), chunk_lo(c + 1), 0);
            continue;
          }
#endif
          std::uint32_t n = 0;
          for (std::uint32_t i = chunk_lo(c), e = chunk_lo(c + 1); i < e; ++i) n += std::uint32_t(P[i] == i);
          roots[c + 1] = n;
        }
      },
      1, 1);
  for (std::size_t c = 0; c < nchunks; ++c) roots[c + 1] += roots[c];
  const std::int64_t count = std::int64_t(roots[nchunks]);  // ≤ total < 2^31
  pool.parallel_for(
      nchunks,
      [&](std::size_t lo, std::size_t hi) {
        for (std::size_t c = lo; c < hi; ++c) {
          // without a branch: where most runs are components of their own (noise), whether an entry
          // is a root is a coin toss for the branch predictor (11 of 90 ms on 256³ noise at 35 %)
          std::uint32_t label = std::uint32_t(roots[c]);
#ifdef BHSD_CCL_AVX512
          if (vector_numbers) {
            number_roots_avx512<true>(P, chunk_lo(c), chunk_lo(c + 1), label);
            continue;
          }
#endif
          for (std::uint32_t i = chunk_lo(c), e = chunk_lo(c + 1); i < e; ++i) {
            const std::uint32_t p = P[i];
            const bool root = p == i;
            label += std::uint32_t(root);
            P[i] = root ? (kLabel | label) : p;
          }
        }
      },
      1, 1);
  // A run's label: up its tree to the root's entry. Inside a slab every run points at its slab's
  // root (flattened above); a seam may have hung that root under another, so a few steps at most.
  auto label_of = [P](std::uint32_t i) {
    std::uint32_t p = P[i];
    while (!(p & kLabel)) p = P[p];
    return std::int32_t(p & ~kLabel);
  };

  // 5. Paint. Rows of long runs: each run's label over its x-range (the k-th start bit and the k-th
  // end bit bound run k). Rows of many short runs (a run every 8 voxels or more often): every voxel,
  // without a branch, as label[number of starts up to x] where x is non-zero, else 0.
#ifdef BHSD_CCL_AVX512
  const bool vector_paint = ccl_avx512();
#endif
  pool.parallel_for(
      std::size_t(rows),
      [&](std::size_t lo, std::size_t hi) {
        std::vector<std::int32_t> buf;  // a row's run starts, or its labels: as long as its runs
        // Row r's runs [first, last) into o[0, nx).
        auto paint_row = [&](std::int32_t* o, std::size_t r, std::uint32_t first, std::uint32_t last) {
          // + 32: room for the AVX-512 loads past the row's last label
          if (buf.size() < std::size_t(last - first) + 33) buf.resize(std::size_t(last - first) + 33);
          const std::int64_t off = std::int64_t(r) * stride;
          const std::uint64_t *st = S.data + off, *en = E.data + off;
          if (std::int64_t(last - first) * 8 >= nx) {
            std::int32_t* lab = buf.data();  // lab[0] = 0 (background), lab[k] = run k-1's label
            lab[0] = 0;
            const std::uint64_t* nzw = N.data + off;
#ifdef BHSD_CCL_AVX512
            if (vector_paint) {
              run_labels_avx512(P, first, last, lab + 1);
              paint_short_runs_avx512(o, lab, st, nzw, nx);
              return;
            }
#endif
            for (std::uint32_t i = first; i < last; ++i) lab[i - first + 1] = label_of(i);
            std::uint32_t c = 0;
            for (std::int64_t w = 0; w < words; ++w) {
              const std::uint64_t sv = st[w], nv = nzw[w];
              const int n = int(std::min<std::int64_t>(64, nx - 64 * w));
              std::int32_t* ow = o + 64 * w;
              for (int b = 0; b < n; ++b) {
                c += std::uint32_t((sv >> b) & 1);
                ow[b] = lab[c & (0u - std::uint32_t((nv >> b) & 1))];
              }
            }
            return;
          }
          std::memset(o, 0, std::size_t(nx) * sizeof(std::int32_t));  // the background between runs
          std::int32_t* a = buf.data();
          for (std::int64_t w = 0; w < words; ++w)
            for (std::uint64_t v = st[w]; v; v &= v - 1) *a++ = std::int32_t(64 * w + ctz64(v));
          std::uint32_t i = first;
          for (std::int64_t w = 0; w < words; ++w)
            for (std::uint64_t v = en[w]; v; v &= v - 1, ++i) {
              const std::int32_t label = label_of(i);
              for (std::int32_t x = buf[i - first], xe = std::int32_t(64 * w + ctz64(v)); x <= xe; ++x) o[x] = label;
            }
        };
        // the row being built, streamed out when done (rows up to kStreamRow; longer ones in place)
        std::vector<std::int32_t> image(std::size_t(nx <= kStreamRow ? nx : 0));
        for (std::size_t r = lo; r < hi; ++r) {
          const std::uint32_t first = row_start[r], last = row_start[r + 1];
          std::int32_t* const dst = out + std::int64_t(r) * nx;
          if (first == last) {
            stream_zero(dst, nx);
            continue;
          }
          if (image.empty()) {
            paint_row(dst, r, first, last);
            continue;
          }
          paint_row(image.data(), r, first, last);
          stream_copy(dst, image.data(), nx);
        }
        stream_fence();
      },
      64);
  return count;
}

// Labels the foreground of `data` (nx·ny·nz, x fastest) into `out`, writing every voxel (0 for
// the background; `out` need not be cleared).
// per_class: voxels join only voxels of the same value; else every non-zero voxel is foreground.
// Returns the number of components.
template <class T>
std::int64_t connected_components(const T* data, std::int64_t nx, std::int64_t ny, std::int64_t nz, int connectivity,
                                  bool per_class, std::int32_t* out, ThreadPool& pool) {
  if (connectivity != 6 && connectivity != 18 && connectivity != 26) throw Error("connectivity must be 6, 18 or 26");
  return ccl_label(ccl_rows(data, nx, ny, nz, per_class, pool), data, connectivity, out, pool);
}

// Per component c (1..count), packed at out[(c-1)*STATS + k]:
//   0 voxels, 1..3 min x y z, 4..6 max x y z, 7..9 sum of x y z, 10 class (the value of
//   `classes` at the component's first voxel in raster order; 0 without `classes`).
constexpr int STATS = 11;

template <class C>
void component_stats(const std::int32_t* labels, std::int64_t nx, std::int64_t ny, std::int64_t nz, std::int64_t count,
                     const C* classes, double* out, ThreadPool& pool) {
  std::int64_t nslabs = std::max<std::int64_t>(1, std::min<std::int64_t>(nz, pool.size()));
  // Per-slab accumulators cost count·88 bytes each: with very many components use one.
  if (double(count) * STATS * 8 * double(nslabs) > 256.0 * (1 << 20)) nslabs = 1;
  // One accumulator per slab: a slab sees each component's voxels in raster order, and slabs are
  // in z order, so the first slab that saw a component holds its first voxel.
  std::vector<std::vector<double>> acc(nslabs);
  pool.parallel_for(
      std::size_t(nslabs),
      [&](std::size_t lo, std::size_t hi) {
        for (std::size_t s = lo; s < hi; ++s) {
          std::vector<double>& a = acc[s];
          a.assign(std::size_t(count) * STATS, 0.0);
          const std::int64_t z0 = nz * std::int64_t(s) / nslabs, z1 = nz * std::int64_t(s + 1) / nslabs;
          for (std::int64_t z = z0; z < z1; ++z)
            for (std::int64_t y = 0; y < ny; ++y) {
              const std::int64_t row = (z * ny + y) * nx;
              const std::int32_t* l = labels + row;
              for (std::int64_t x = ccl_detail::skip_zeros(l, 0, nx); x < nx;
                   x = ccl_detail::skip_zeros(l, x + 1, nx)) {
                const std::int32_t c = l[x];
                if (c < 1 || c > count) throw Error("a label is outside 1..count");
                double* s_ = a.data() + std::size_t(c - 1) * STATS;
                if (s_[0] == 0) {
                  s_[1] = double(x), s_[2] = double(y), s_[3] = double(z);
                  s_[4] = double(x), s_[5] = double(y), s_[6] = double(z);
                  s_[10] = classes ? double(classes[row + x]) : 0.0;
                } else {
                  s_[1] = std::min(s_[1], double(x)), s_[2] = std::min(s_[2], double(y));
                  s_[4] = std::max(s_[4], double(x)), s_[5] = std::max(s_[5], double(y));
                  s_[6] = double(z);
                }
                s_[0] += 1, s_[7] += double(x), s_[8] += double(y), s_[9] += double(z);
              }
            }
        }
      },
      1, 1);
  // Merge in slab order.
  std::fill(out, out + count * STATS, 0.0);
  for (std::int64_t s = 0; s < nslabs; ++s) {
    const double* a = acc[s].data();
    for (std::int64_t c = 0; c < count; ++c) {
      const double* p = a + c * STATS;
      double* o = out + c * STATS;
      if (p[0] == 0) continue;
      if (o[0] == 0) {
        std::copy(p, p + STATS, o);
        continue;
      }
      for (int k = 1; k <= 3; ++k) o[k] = std::min(o[k], p[k]);
      for (int k = 4; k <= 6; ++k) o[k] = std::max(o[k], p[k]);
      o[0] += p[0], o[7] += p[7], o[8] += p[8], o[9] += p[9];
    }
    std::vector<double>().swap(acc[s]);
  }
}

// Voxels per slice of each component: out[offsets[c-1] + z - zmin[c-1]] for z in its z-range.
inline void component_slice_areas(const std::int32_t* labels, std::int64_t nx, std::int64_t ny, std::int64_t nz,
                                  std::int64_t count, const std::int32_t* zmin, const std::int64_t* offsets,
                                  std::uint32_t* out, ThreadPool& pool) {
  const std::int64_t plane = nx * ny;
  pool.parallel_for(std::size_t(nz), [&](std::size_t lo, std::size_t hi) {
    for (std::size_t z = lo; z < hi; ++z) {  // each z owns distinct entries: no races
      const std::int32_t* l = labels + std::int64_t(z) * plane;
      for (std::int64_t i = ccl_detail::skip_zeros(l, 0, plane); i < plane;
           i = ccl_detail::skip_zeros(l, i + 1, plane)) {
        const std::int32_t c = l[i];
        if (c < 1 || c > count) throw Error("a label is outside 1..count");
        const std::int64_t k = offsets[c - 1] + std::int64_t(z) - zmin[c - 1];
        if (k < offsets[c - 1] || k >= offsets[c]) throw Error("a component lies outside its z-range");
        ++out[k];
      }
    }
  });
}

// out[i] = keep[labels[i]] ? src[i] : 0, where keep has count+1 entries (keep[0] is ignored).
template <class T>
void select_components(const T* src, const std::int32_t* labels, std::int64_t n, const std::uint8_t* keep,
                       std::int64_t count, T* out, ThreadPool& pool) {
  pool.parallel_for(
      std::size_t(n),
      [&](std::size_t lo, std::size_t hi) {
        for (std::size_t i = lo; i < hi; ++i) {
          const std::int32_t c = labels[i];
          out[i] = (c > 0 && c <= count && keep[c]) ? src[i] : T(0);
        }
      },
      1 << 16);
}

}  // namespace bhsd
