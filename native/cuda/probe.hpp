// bhsd — what the CUDA addon learns about the driver and devices (plain C++, no Node).
#pragma once

#include <string>
#include <vector>

namespace bhsd_cuda {

struct DeviceInfo {
  std::string name;
  std::string compute_capability;
  double memory_bytes;
};

struct Probe {
  bool ok = true;
  std::string error;
  int driver_version = 0;
  int runtime_version = 0;
  std::vector<DeviceInfo> devices;
};

Probe probe();

}  // namespace bhsd_cuda
