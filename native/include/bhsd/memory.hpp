// bhsd — the engine's own memory: page-aligned blocks that ask for transparent huge pages, reference
// counted, found again by address, and kept in a small cache for reuse.
//
// Why: (1) a native call that runs on a worker thread must keep its arrays alive whatever the caller
// does to them (detach, transfer, resize); memory the engine owns is held by a reference for as long
// as a call uses it, so it cannot be freed under the call. (2) First touch of fresh 4 KB pages is
// slow in the VMs this runs in (about 0.25 GB/s); the same memory advised MADV_HUGEPAGE touches at
// 8–12 GB/s, and a reused block costs no page faults at all.
//
// Node-free: the Node-API layer (native/src/napi_util.hpp) wraps blocks in external ArrayBuffers.
#pragma once

#include <array>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <new>
#include <vector>

#if defined(__unix__) || defined(__APPLE__)
#include <sys/mman.h>
#define BHSD_HAVE_MMAP 1
#endif

namespace bhsd {

class Block;

namespace detail {

constexpr std::size_t kPage = 4096;
constexpr std::size_t kHuge = std::size_t(2) << 20;

// From 1 MB up, whole huge pages: one fault (a 2 MB clear, ~0.2 ms) instead of 256–512 faults of
// 4 KB pages (~16 µs each here): a model's 1.5 MB output, fresh every run, cost 3.9 ms in faults.
// At most half of a block in [1, 2) MB is slack; from 4 MB up at most a third.
inline std::size_t round_size(std::size_t bytes) {
  const std::size_t unit = bytes >= kHuge / 2 ? kHuge : kPage;
  return (bytes + unit - 1) / unit * unit;
}

// Raw mappings: mmap'd (2 MB aligned for huge pages) where available, aligned malloc elsewhere.
inline void* map_bytes(std::size_t size) {
#ifdef BHSD_HAVE_MMAP
  if (size >= kHuge) {
    // over-map by 2 MB and trim, so that the block starts on a huge-page boundary
    void* p = mmap(nullptr, size + kHuge, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) throw std::bad_alloc();
    auto a = reinterpret_cast<std::uintptr_t>(p);
    const std::uintptr_t start = (a + kHuge - 1) / kHuge * kHuge;
    if (start > a) munmap(p, start - a);
    const std::uintptr_t end = start + size, map_end = a + size + kHuge;
    if (map_end > end) munmap(reinterpret_cast<void*>(end), map_end - end);
#ifdef MADV_HUGEPAGE
    madvise(reinterpret_cast<void*>(start), size, MADV_HUGEPAGE);
#endif
    return reinterpret_cast<void*>(start);
  }
  void* p = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) throw std::bad_alloc();
  return p;
#else
  void* p = std::aligned_alloc(kPage, size);
  if (!p) throw std::bad_alloc();
  std::memset(p, 0, size);
  return p;
#endif
}

inline void unmap_bytes(void* p, std::size_t size) {
#ifdef BHSD_HAVE_MMAP
  munmap(p, size);
#else
  (void)size;
  std::free(p);
#endif
}

// Process-wide state of one addon: live blocks by start address, and freed mappings kept for reuse.
struct Registry {
  std::mutex mu;
  std::map<std::uintptr_t, std::weak_ptr<Block>> live;
  std::multimap<std::size_t, void*> cache;  // mapped size → mapping, zeroed on reuse (as far as asked)
  std::size_t cached_bytes = 0;
  std::size_t cache_limit = std::size_t(512) << 20;
  std::size_t live_bytes = 0;
};

inline Registry& registry() {
  static Registry* r = new Registry();  // never destroyed: blocks may outlive static destructors
  return *r;
}

// Told the hash of a block that carried one (set_content_hash) as the block is freed, when its
// last holder — a call pinning it, the ArrayBuffer over it — lets go: the Winograd weight cache
// (conv_winograd.hpp) registers its forget() here, so the transformed forms of weights nobody can
// pass any more leave with them, whether their model was disposed (even while a call of it ran) or
// collected. memory.hpp knows nothing of that cache.
using HashedFreeHook = void (*)(const std::array<std::uint64_t, 4>&);
inline std::atomic<HashedFreeHook>& on_hashed_free() {
  static std::atomic<HashedFreeHook> hook{nullptr};
  return hook;
}

}  // namespace detail

// A block of zero-filled memory of at least `bytes` (zero to round_size(bytes); a reused larger
// mapping's tail past that, capacity(), holds what it held and is never handed out), freed (or
// cached) when its last holder lets go.
class Block {
 public:
  Block(const Block&) = delete;
  Block& operator=(const Block&) = delete;

  // zero: a reused mapping is cleared (a fresh one is zero already); a caller that overwrites the
  // whole block at once (a copy of a caller's array) passes false. larger: a freed mapping of up to
  // 1.5× the size may serve (false for blocks kept long under a budget of their own: the Winograd
  // weight cache counts what it asks for, and a tail would hold memory past it)
  static std::shared_ptr<Block> allocate(std::size_t bytes, bool zero = true, bool larger = true) {
    const std::size_t want = detail::round_size(bytes ? bytes : 1);
    std::size_t size = want;  // mapped (larger where a freed mapping of up to 1.5× is reused)
    auto& r = detail::registry();
    void* p = nullptr;
    {
      std::lock_guard<std::mutex> lock(r.mu);
      auto it = r.cache.find(size);
      if (it != r.cache.end()) {
        p = it->second;
        r.cache.erase(it);
        r.cached_bytes -= size;
      } else if (larger && (it = r.cache.lower_bound(size)) != r.cache.end() && it->first - size <= size / 2) {
        // none of this size: the smallest larger one, whole, where at most 1.5× (its tail unused).
        // Memory touched once is used again rather than fresh pages faulted in — ~0.5 GB/s in these
        // VMs, against ~10 GB/s to clear a reused one — where sizes change from call to call (a
        // CT after one of another size; a model's first run, whose plan frees the losing
        // candidates' transformed weights). Not split: a small request taking the front of a big
        // mapping had left a later request for the big one to fault in afresh every time, once the
        // cache could not hold both (a piece never grows back).
        size = it->first;
        p = it->second;
        r.cache.erase(it);
        r.cached_bytes -= size;
      }
    }
    if (p) {
      if (zero) std::memset(p, 0, want);  // reused: zero it as a fresh mapping is (its unused tail stays as it was)
    } else
      p = detail::map_bytes(size);
    std::shared_ptr<Block> b(new Block(p, size, bytes));
    std::lock_guard<std::mutex> lock(r.mu);
    r.live[reinterpret_cast<std::uintptr_t>(p)] = b;
    r.live_bytes += size;
    return b;
  }

  // The live block holding [p, p + bytes), or null when that memory is not (wholly) a block's.
  static std::shared_ptr<Block> find(const void* p, std::size_t bytes) {
    auto& r = detail::registry();
    const auto a = reinterpret_cast<std::uintptr_t>(p);
    std::lock_guard<std::mutex> lock(r.mu);
    auto it = r.live.upper_bound(a);
    if (it == r.live.begin()) return nullptr;
    --it;
    std::shared_ptr<Block> b = it->second.lock();
    if (!b) return nullptr;
    const auto s = reinterpret_cast<std::uintptr_t>(b->data_);
    if (a < s || a + bytes > s + b->bytes_) return nullptr;
    return b;
  }

  // Bytes held by live blocks and kept in the cache (for tests and diagnostics).
  static std::size_t live_bytes() {
    std::lock_guard<std::mutex> lock(detail::registry().mu);
    return detail::registry().live_bytes;
  }
  static std::size_t cached_bytes() {
    std::lock_guard<std::mutex> lock(detail::registry().mu);
    return detail::registry().cached_bytes;
  }
  static void set_cache_limit(std::size_t bytes) {
    auto& r = detail::registry();
    std::vector<std::pair<void*, std::size_t>> drop;
    {
      std::lock_guard<std::mutex> lock(r.mu);
      r.cache_limit = bytes;
      while (r.cached_bytes > r.cache_limit && !r.cache.empty()) {
        auto it = std::prev(r.cache.end());
        drop.emplace_back(it->second, it->first);
        r.cached_bytes -= it->first;
        r.cache.erase(it);
      }
    }
    for (auto& d : drop) detail::unmap_bytes(d.first, d.second);
  }

  void* data() const { return data_; }
  std::size_t size() const { return bytes_; }     // as asked for
  std::size_t capacity() const { return size_; }  // mapped

  // A hash of the block's first `bytes` that its maker stored once it had filled the block, for
  // contents that never change afterwards (a model's packed weights: the Winograd weight cache
  // then need not hash 360 MB a window to find them). Set before the block is shared; a block
  // handed out again (after this one is freed) starts without one.
  void set_content_hash(const std::array<std::uint64_t, 4>& h, std::size_t bytes) {
    content_hash_ = h;
    hashed_bytes_ = bytes;
  }
  // The stored hash where it covers exactly [data(), data() + bytes), else null.
  const std::array<std::uint64_t, 4>* content_hash(const void* p, std::size_t bytes) const {
    return hashed_bytes_ && p == data_ && bytes == hashed_bytes_ ? &content_hash_ : nullptr;
  }

  ~Block() {
    if (hashed_bytes_)
      if (const detail::HashedFreeHook f = detail::on_hashed_free().load()) try {
          f(content_hash_);
        } catch (...) {  // (a mutex that failed to lock): the entries stay, as before, and age out
        }
    auto& r = detail::registry();
    bool keep = false;
    {
      std::lock_guard<std::mutex> lock(r.mu);
      auto it = r.live.find(reinterpret_cast<std::uintptr_t>(data_));
      if (it != r.live.end() && it->second.expired()) r.live.erase(it);
      r.live_bytes -= size_;
      if (r.cached_bytes + size_ <= r.cache_limit) {
        r.cache.emplace(size_, data_);
        r.cached_bytes += size_;
        keep = true;
      }
    }
    if (!keep) detail::unmap_bytes(data_, size_);
  }

 private:
  Block(void* p, std::size_t size, std::size_t bytes) : data_(p), size_(size), bytes_(bytes) {}
  void* data_;
  std::size_t size_;   // mapped
  std::size_t bytes_;  // asked for
  std::array<std::uint64_t, 4> content_hash_{};
  std::size_t hashed_bytes_ = 0;  // 0: none stored
};

// n elements of T in one engine block (huge pages, reused when freed): a call's big scratch. A
// std::vector of that size comes from glibc, which maps it afresh and gives it back when freed —
// fresh 4 KB pages on every call (a surface-distance pass over a 512×512×40 box allocated 120 MB
// that way per class). zero: cleared (else every element is written before it is read).
template <class T>
class EngineArray {
 public:
  EngineArray() = default;
  EngineArray(std::size_t n, bool zero) : block_(Block::allocate(n * sizeof(T), zero)), n_(n) {}
  EngineArray(const EngineArray&) = delete;  // (a copy would share the block)
  EngineArray& operator=(const EngineArray&) = delete;
  EngineArray(EngineArray&&) = default;
  EngineArray& operator=(EngineArray&&) = default;
  T* data() { return static_cast<T*>(block_->data()); }
  const T* data() const { return static_cast<const T*>(block_->data()); }
  T& operator[](std::size_t i) { return data()[i]; }
  const T& operator[](std::size_t i) const { return data()[i]; }
  std::size_t size() const { return n_; }
  void reset() { block_.reset(), n_ = 0; }  // back to the engine now

 private:
  std::shared_ptr<Block> block_;
  std::size_t n_ = 0;
};

}  // namespace bhsd
