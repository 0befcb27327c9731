// bhsd — the convolution headers' common ground: activations, the geometry (ConvGeom, conv_out),
// the tile sizes (MR × NR) and output-channel blocks (CoBlocks), and the per-call helpers every
// path shares (activate, the K-row blocking, the padded-slab lease, aligned scratch). Part of conv.hpp.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <new>
#include <vector>

#include "cpu_features.hpp"
#include "dtype.hpp"
#include "memory.hpp"
#include "thread_pool.hpp"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define BHSD_X86 1
#endif

namespace bhsd {

enum class Act { none = 0, relu = 1, leaky = 2 };

struct ConvGeom {
  std::int64_t C, D, H, W;  // input channels (of one group) and extent
  std::int64_t Co;          // output channels (of one group)
  std::int64_t kd, kh, kw;
  std::int64_t sd, sh, sw;  // strides
  std::int64_t dd, dh, dw;  // dilations
  std::int64_t pd, ph, pw;  // leading padding (trailing padding only changes Do/Ho/Wo)
  std::int64_t Do, Ho, Wo;  // output extent
  std::int64_t K() const { return C * kd * kh * kw; }
};

#ifndef BHSD_CONV_KROWS
#define BHSD_CONV_KROWS 512
#endif

// Bytes from an environment variable of whole megabytes (0 … 2^20) where it is set to one, else
// `fallback` (the streaming thresholds' settings).
inline std::size_t env_megabytes(const char* name, std::size_t fallback) {
  if (const char* e = std::getenv(name)) {
    char* end = nullptr;
    const unsigned long long mb = std::strtoull(e, &end, 10);
    if (end != e && !*end && mb <= (1ull << 20)) return std::size_t(mb) << 20;
  }
  return fallback;
}

// From how many bytes a convolution's output is stored with streaming stores (past the caches, without
// reading each line in first) where its rows allow — Winograd's F(4×4)-row tiles' whole rows of 16
// tiles; the indirect direct path's (up to 48 output channels) whole tiles of 16 voxels in pairs
// (AVX-512) or alone (AVX2), where its input channels are one block (each tile written once): an
// output that large leaves the caches before the next pass (the norm's) reads it, and written through
// them each line was first read in from memory. Zen 5 (2026-12-05, C++ core, alternating runs, medians
// of 3–4): the layer then its InstanceNorm in place, F(4×4×4) 64→64 at 16×128×128 (64 MB) 42.8 → 39.8
// ms, 128→128 at 16×64×64 41.2 → 40.5, F(2×4×4) 32→32 at 16×256×256 71.6 → 66.5, the 1×2×2-strided
// 32→64 there 78.9 → 71.9; AVX2 64→64 64.3 → 61.7, 32→32 122.5 → 115.1; the direct path's 1→32 at
// 16×256×256 (a U-Net's first layer, 134 MB) 8.9 → 6.8 (AVX2 12.1 → 11.4); outputs of 4–8 MB (128→128
// at 16×32×32, 256→256 at 8×32×32) the same either way. BHSD_STREAM_OUT_MB sets it (0: always); the
// tests set it.
inline std::size_t& stream_out_bytes() {
  static std::size_t b = env_megabytes("BHSD_STREAM_OUT_MB", std::size_t(16) << 20);
  return b;
}

namespace conv_detail {
// The whole layer's output bytes while the plan times a slab of it (winograd_hook; 0 otherwise): a
// slab streams its output as the layer it stands for will (stream_output), so that each candidate
// is timed as it will run.
inline std::size_t& planned_out_bytes() {
  static thread_local std::size_t b = 0;
  return b;
}
class PlannedOut {
 public:
  explicit PlannedOut(std::size_t bytes) : saved_(planned_out_bytes()) { planned_out_bytes() = bytes; }
  ~PlannedOut() { planned_out_bytes() = saved_; }
  PlannedOut(const PlannedOut&) = delete;
  PlannedOut& operator=(const PlannedOut&) = delete;

 private:
  std::size_t saved_;
};
// Whether an output of `bytes` (this call's) is stored with streaming stores where its rows allow.
inline bool stream_output(std::size_t bytes) { return std::max(bytes, planned_out_bytes()) >= stream_out_bytes(); }
// Whether this thread's micro-kernels store finished tiles (last) with streaming stores where the
// tile is whole and its rows aligned: a direct-path driver's scope (StreamTiles) for a layer whose
// output passes stream_out_bytes and whose every tile is written once. The kernels take ldo > NR
// as "the output itself": a caller that stages tiles in a scratch of rows wider than NR must not
// run inside such a scope.
inline bool& stream_tiles() {
  static thread_local bool on = false;
  return on;
}
class StreamTiles {
 public:
  explicit StreamTiles(bool on) : saved_(stream_tiles()) { stream_tiles() = on; }
  ~StreamTiles() {
#ifdef BHSD_X86
    if (stream_tiles()) _mm_sfence();  // streamed stores are weakly ordered: done before the loop ends
#endif
    stream_tiles() = saved_;
  }
  StreamTiles(const StreamTiles&) = delete;
  StreamTiles& operator=(const StreamTiles&) = delete;

 private:
  bool saved_;
};
}  // namespace conv_detail

constexpr int MR = 6;   // output channels per micro-tile
constexpr int NR = 16;  // output voxels per micro-tile (two AVX registers)

// Output channels in blocks for the micro-kernel: blocks of MR, and a remainder of 1–3 channels
// not left to a block of its own (a 6-row tile doing 1–3 rows of work) but shared with the last
// full block as two nearly equal ones (7 → 4 + 3, 8 → 4 + 4, 9 → 5 + 4). A tile of r rows costs
// about max(r, 4) of a full tile's 6 cycles per weight (FMA latency needs 8 accumulators), so a
// 32-channel layer runs 4 × 6 + 2 × 4 = 32 rows' time instead of 6 × 6 = 36. The number of blocks
// is ⌈Co / MR⌉ either way; block b's packed weights start at b·K·MR.
struct CoBlocks {
  std::int64_t full = 0, t0 = 0, t1 = 0;  // full blocks of MR, then up to two tail blocks
  explicit CoBlocks(std::int64_t Co) {
    full = Co / MR;
    const std::int64_t r = Co % MR;
    if (r == 0) return;
    if (r >= 4 || full == 0) {
      t0 = r;
      return;
    }
    --full;
    t0 = (MR + r + 1) / 2, t1 = (MR + r) / 2;
  }
  std::int64_t count() const { return full + (t0 > 0) + (t1 > 0); }
  std::int64_t rows(std::int64_t b) const { return b < full ? MR : b == full ? t0 : t1; }
  std::int64_t row0(std::int64_t b) const { return b <= full ? b * MR : full * MR + t0; }
};

// Output extent of a convolution along one axis (negative when the input is too small).
inline std::int64_t conv_out(std::int64_t in, std::int64_t k, std::int64_t s, std::int64_t d, std::int64_t p0,
                             std::int64_t p1) {
  const std::int64_t span = d * (k - 1) + 1;
  const std::int64_t padded = in + p0 + p1;
  return padded < span ? 0 : (padded - span) / s + 1;
}

namespace conv_detail {

inline float activate(float v, Act act, float alpha) {
  if (act == Act::relu) return v > 0 ? v : 0;
  if (act == Act::leaky) return v > 0 ? v : v * alpha;
  return v;
}

// Rows of K per block of input channels (BHSD_CONV_KROWS overrides, for experiments).
inline std::int64_t krows() {
  static const std::int64_t k = [] {
    const char* e = std::getenv("BHSD_CONV_KROWS");
    return e && std::atoll(e) > 0 ? std::int64_t(std::atoll(e)) : std::int64_t(BHSD_CONV_KROWS);
  }();
  return k;
}

// A float buffer kept for the whole process, lent to one call at a time (calls come from several
// threads — the addon's libuv workers — which would otherwise each keep their own); a call that
// finds it lent, or needs more than keep_max floats, gets a buffer of its own for that call. get()
// is null when memory ran out. Each Tag is a buffer of its own (a Winograd call and an indirect
// call can run at once).
template <class Tag>
class LentBuffer {
 public:
  LentBuffer(std::size_t need, std::size_t keep_max) {
    Cache& c = cache();
    if (need <= keep_max) {
      std::lock_guard<std::mutex> lk(c.m);
      if (!c.lent) {
        if (c.n < need) {
          c.buf.reset();  // the old one goes first: peak memory is the new size, not both
          c.buf = allocate(need);
          c.n = c.buf ? need : 0;
        }
        if (c.buf) c.lent = true, shared_ = true, p_ = static_cast<float*>(c.buf->data());
      }
    }
    if (!p_) {
      own_ = allocate(need);
      p_ = own_ ? static_cast<float*>(own_->data()) : nullptr;
    }
  }
  LentBuffer(const LentBuffer&) = delete;
  LentBuffer& operator=(const LentBuffer&) = delete;
  ~LentBuffer() {
    if (!shared_) return;
    std::lock_guard<std::mutex> lk(cache().m);
    cache().lent = false;
  }
  float* get() const { return p_; }

 private:
  // Engine blocks (memory.hpp): huge pages, and a buffer of one's own comes from (and goes back to)
  // the engine's cache of freed mappings — new float[] faulted 4 KB pages in on every call (a
  // 34 MB Winograd weight buffer, about 135 ms here)
  static std::shared_ptr<Block> allocate(std::size_t n) {
    try {
      return Block::allocate(n * sizeof(float), false);
    } catch (const std::bad_alloc&) {
      return nullptr;
    }
  }
  struct Cache {
    std::mutex m;
    std::shared_ptr<Block> buf;
    std::size_t n = 0;
    bool lent = false;
  };
  static Cache& cache() {
    static Cache c;
    return c;
  }
  float* p_ = nullptr;
  bool shared_ = false;
  std::shared_ptr<Block> own_;
};

// The indirect convolution's padded slab (up to 16 MB kept).
using SlabLease = LentBuffer<struct SlabTag>;

// Input channels per block of the reduction: as many blocks as about krows() rows of K need, the
// channels shared evenly between them (64 channels of a 1×3×3 kernel: 32 + 32, not 56 + 8, whose
// short second block paid a whole pass over the outputs for an eighth of the work).
inline std::int64_t channel_block(std::int64_t C, std::int64_t ksp) {
  const std::int64_t blocks = std::max<std::int64_t>(1, (C * ksp + krows() - 1) / krows());
  return std::max<std::int64_t>(1, (C + blocks - 1) / blocks);
}

// A 64-byte aligned scratch buffer per thread.
// From 1 MB up an engine block (huge pages): these buffers are thread-local, and a call runs on
// whichever of libuv's threads takes it, so each of them faults its own in on first use — 4 KB pages
// of the 38 MB a 256→256 Winograd layer's V and M take had made a model's first four runs of that
// layer 70 ms each against 24 ms after (8×32×32).
struct Scratch {
  std::vector<float> buf;
  std::shared_ptr<Block> block;
  float* get(std::size_t n) {
    const std::size_t bytes = (n + 16) * sizeof(float);
    if (bytes >= (std::size_t(1) << 20)) {
      if (!block || block->size() < bytes) {
        block.reset();  // the old one back to the engine first
        block = Block::allocate(bytes, false);
      }
      return static_cast<float*>(block->data());  // page-aligned
    }
    if (buf.size() < n + 16) buf.resize(n + 16);
    auto p = reinterpret_cast<std::uintptr_t>(buf.data());
    return reinterpret_cast<float*>((p + 63) & ~std::uintptr_t(63));
  }
};
}  // namespace conv_detail

}  // namespace bhsd
