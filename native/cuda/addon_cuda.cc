// bhsd — the CUDA addon's Node-API surface (scaffold): probe() and the list of GPU operations.
#define NAPI_VERSION 8
#include <napi.h>

#include "probe.hpp"

namespace {

Napi::Value Probe(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  bhsd_cuda::Probe p;
  try {
    p = bhsd_cuda::probe();
  } catch (const std::exception& e) {
    p.ok = false;
    p.error = e.what();
  }
  Napi::Object o = Napi::Object::New(env);
  o.Set("ok", p.ok);
  o.Set("deviceCount", static_cast<double>(p.devices.size()));
  Napi::Array devs = Napi::Array::New(env, p.devices.size());
  for (size_t i = 0; i < p.devices.size(); ++i) {
    Napi::Object d = Napi::Object::New(env);
    d.Set("name", p.devices[i].name);
    d.Set("computeCapability", p.devices[i].compute_capability);
    d.Set("memoryBytes", p.devices[i].memory_bytes);
    devs.Set(static_cast<uint32_t>(i), d);
  }
  o.Set("devices", devs);
  if (!p.ok) o.Set("error", p.error);
  o.Set("driverVersion", p.driver_version);
  o.Set("runtimeVersion", p.runtime_version);
  return o;
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("probe", Napi::Function::New(env, Probe, "probe"));
  exports.Set("ops", Napi::Array::New(env, 0));
  return exports;
}

}  // namespace

NODE_API_MODULE(bhsd_cuda, Init)
