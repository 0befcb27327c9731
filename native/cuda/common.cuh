// bhsd — what the CUDA sources share: error checks that throw, the compute stream, launch sizes.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <stdexcept>
#include <string>

namespace bhsd_cuda {

[[noreturn]] inline void fail(cudaError_t e, const char* what) {
  cudaGetLastError();  // clear a non-sticky error so that the next call starts clean
  throw std::runtime_error(std::string("cuda: ") + what + ": " + cudaGetErrorName(e) + " (" + cudaGetErrorString(e) +
                           ")");
}

#define BHSD_CUDA(call)                               \
  do {                                                \
    cudaError_t bhsd_e_ = (call);                     \
    if (bhsd_e_ != cudaSuccess) fail(bhsd_e_, #call); \
  } while (0)

// After a launch: a bad configuration is reported here; faults inside the kernel at the next sync.
#define BHSD_LAUNCHED(name)                          \
  do {                                               \
    cudaError_t bhsd_e_ = cudaGetLastError();        \
    if (bhsd_e_ != cudaSuccess) fail(bhsd_e_, name); \
  } while (0)

// The one stream all work is ordered on (created on first use, non-blocking).
cudaStream_t stream();

inline unsigned blocks_for(std::int64_t n, int threads) {
  std::int64_t b = (n + threads - 1) / threads;
  if (b > 0x7fffffff) b = 0x7fffffff;
  return unsigned(b < 1 ? 1 : b);
}

// Scratch memory from the caching allocator, freed (to the cache) when it goes out of scope.
void* device_alloc(std::size_t bytes);
void device_free(void* p);
template <class T>
struct Scratch {
  T* p = nullptr;
  std::size_t n = 0;
  explicit Scratch(std::size_t count) : n(count) { p = static_cast<T*>(device_alloc(count * sizeof(T) + 1)); }
  ~Scratch() { device_free(p); }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
};

}  // namespace bhsd_cuda
