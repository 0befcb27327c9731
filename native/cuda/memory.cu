// bhsd — device memory: a caching allocator in the spirit of PyTorch's (blocks freed by the
// program go back to a per-size cache instead of cudaFree, which would synchronise the device),
// the compute stream, and the copies between host and device.
#include <cuda_runtime.h>

#include <map>
#include <mutex>
#include <unordered_map>
#include <vector>

#include "common.cuh"
#include "gpu.hpp"

namespace bhsd_cuda {

namespace {

std::mutex mu;
std::multimap<std::size_t, void*> cache;       // free blocks by size
std::unordered_map<void*, std::size_t> sizes;  // live blocks
std::size_t live_bytes = 0, peak_bytes = 0, cached_bytes = 0;
cudaStream_t the_stream = nullptr;

// Sizes are rounded so that blocks are reusable across slightly different requests.
std::size_t round_size(std::size_t n) {
  if (n < 512) return 512;
  if (n < (std::size_t(1) << 20)) return (n + 511) & ~std::size_t(511);
  return (n + (std::size_t(1) << 20) - 1) & ~((std::size_t(1) << 20) - 1);  // 1 MiB steps
}

void free_cache_locked() {
  for (auto& kv : cache) cudaFree(kv.second);
  cache.clear();
  cached_bytes = 0;
}

}  // namespace

cudaStream_t stream() {
  std::lock_guard<std::mutex> lk(mu);
  if (!the_stream) BHSD_CUDA(cudaStreamCreateWithFlags(&the_stream, cudaStreamNonBlocking));
  return the_stream;
}

void* device_alloc(std::size_t bytes) {
  const std::size_t n = round_size(bytes);
  std::lock_guard<std::mutex> lk(mu);
  // a cached block of this size, or up to 1/8 larger, is taken as it is
  auto it = cache.lower_bound(n);
  if (it != cache.end() && it->first <= n + n / 8) {
    void* p = it->second;
    const std::size_t sz = it->first;
    cache.erase(it);
    cached_bytes -= sz;
    sizes[p] = sz;
    live_bytes += sz;
    if (live_bytes > peak_bytes) peak_bytes = live_bytes;
    return p;
  }
  void* p = nullptr;
  cudaError_t e = cudaMalloc(&p, n);
  if (e != cudaSuccess) {
    cudaGetLastError();
    // Give the cache back (after the stream's work that may still use it) and try once more.
    if (the_stream) cudaStreamSynchronize(the_stream);
    free_cache_locked();
    e = cudaMalloc(&p, n);
    if (e != cudaSuccess) {
      cudaGetLastError();
      std::size_t free_b = 0, total_b = 0;
      cudaMemGetInfo(&free_b, &total_b);
      throw std::runtime_error("cuda: cannot allocate " + std::to_string(n) + " bytes on the GPU (" +
                               std::to_string(free_b) + " of " + std::to_string(total_b) +
                               " free): " + cudaGetErrorString(e));
    }
  }
  sizes[p] = n;
  live_bytes += n;
  if (live_bytes > peak_bytes) peak_bytes = live_bytes;
  return p;
}

void device_free(void* p) {
  if (!p) return;
  std::lock_guard<std::mutex> lk(mu);
  auto it = sizes.find(p);
  if (it == sizes.end()) return;
  live_bytes -= it->second;
  cached_bytes += it->second;
  cache.emplace(it->second, p);
  sizes.erase(it);
}

MemoryStats memory_stats() {
  std::lock_guard<std::mutex> lk(mu);
  return MemoryStats{live_bytes, peak_bytes, cached_bytes};
}

void release_cache() {
  cudaStream_t s = stream();
  cudaStreamSynchronize(s);
  std::lock_guard<std::mutex> lk(mu);
  free_cache_locked();
}

void reset_peak() {
  std::lock_guard<std::mutex> lk(mu);
  peak_bytes = live_bytes;
}

void copy_to_device(void* dst, const void* src, std::size_t bytes) {
  if (!bytes) return;
  cudaStream_t s = stream();
  BHSD_CUDA(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, s));
  BHSD_CUDA(cudaStreamSynchronize(s));
}

void copy_to_host(void* dst, const void* src, std::size_t bytes) {
  cudaStream_t s = stream();
  if (bytes) BHSD_CUDA(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, s));
  BHSD_CUDA(cudaStreamSynchronize(s));
}

void synchronize() { BHSD_CUDA(cudaStreamSynchronize(stream())); }

}  // namespace bhsd_cuda
