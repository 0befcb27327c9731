// bhsd — the CUDA addon's device side (scaffold): a probe of the driver and devices, and one
// trivial kernel so that the build proves nvcc, the architectures and static cudart work together.
#include <cuda_runtime.h>

#include <string>
#include <vector>

#include "probe.hpp"

namespace bhsd_cuda {

__global__ void fill_kernel(float* out, float value, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) out[i] = value;
}

Probe probe() {
  Probe p;
  int count = 0;
  cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) {
    p.ok = false;
    p.error = std::string(cudaGetErrorName(err)) + ": " + cudaGetErrorString(err);
    return p;
  }
  cudaDriverGetVersion(&p.driver_version);
  cudaRuntimeGetVersion(&p.runtime_version);
  for (int d = 0; d < count; ++d) {
    cudaDeviceProp prop{};
    if (cudaGetDeviceProperties(&prop, d) != cudaSuccess) continue;
    p.devices.push_back({prop.name, std::to_string(prop.major) + "." + std::to_string(prop.minor),
                         static_cast<double>(prop.totalGlobalMem)});
  }
  // Run the trivial kernel once on device 0: proves the code for this architecture loads.
  if (count > 0) {
    float* buf = nullptr;
    err = cudaMalloc(&buf, 256 * sizeof(float));
    if (err == cudaSuccess) {
      fill_kernel<<<1, 256>>>(buf, 1.0f, 256);
      err = cudaDeviceSynchronize();
      cudaFree(buf);
    }
    if (err != cudaSuccess) {
      p.ok = false;
      p.error = std::string("kernel launch failed: ") + cudaGetErrorString(err);
    }
  }
  return p;
}

}  // namespace bhsd_cuda
