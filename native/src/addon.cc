// bhsd — the CPU addon's Node-API surface: thin wrappers that check shapes of arguments, keep
// inputs alive and run the core's work on libuv's threads, returning promises.
#include <memory>

#include "bhsd/cpu_features.hpp"
#include "bhsd/voxel_ops.hpp"
#include "napi_util.hpp"

#ifndef BHSD_VERSION
#define BHSD_VERSION "0.0.0"
#endif

using namespace bhsd_napi;

namespace {

Napi::Value Info(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object o = Napi::Object::New(env);
  o.Set("version", BHSD_VERSION);
  o.Set("threads", pool_of(env)->size());
  o.Set("simd", bhsd::simd_level());
  o.Set("napiVersion", NAPI_VERSION);
#if defined(__clang__)
  o.Set("compiler", "clang " __clang_version__);
#elif defined(__GNUC__)
  o.Set("compiler", "gcc " __VERSION__);
#endif
  return o;
}

// voxelStats(array) → Promise<{ min, max, sum, nonzero, nonfinite }>
Napi::Value VoxelStats(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  View src = view_of(info[0], "data");
  auto pool = pool_of(env);
  auto out = std::make_shared<bhsd::VoxelStats>();
  return PromiseWorker::Start(
      env,
      [src, pool, out] {
        *out = bhsd::visit_dtype(src.type, src.data, [&](auto* p) {
          return bhsd::voxel_stats(p, src.length, *pool);
        });
      },
      [out](Napi::Env e) -> Napi::Value {
        Napi::Object o = Napi::Object::New(e);
        o.Set("min", out->min);
        o.Set("max", out->max);
        o.Set("sum", out->sum);
        o.Set("nonzero", double(out->nonzero));
        o.Set("nonfinite", double(out->nonfinite));
        return o;
      },
      {info[0]});
}

// rescaleToF32(src, slope, inter, dst: Float32Array) → Promise<void>
Napi::Value RescaleToF32(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  View src = view_of(info[0], "src");
  double slope = number_of(info[1], "slope"), inter = number_of(info[2], "inter");
  View dst = view_of(info[3], "dst");
  if (dst.type != bhsd::DType::f32 || dst.length != src.length)
    throw Napi::RangeError::New(env, "native: dst must be a Float32Array as long as src");
  auto pool = pool_of(env);
  return PromiseWorker::Start(
      env,
      [src, dst, slope, inter, pool] {
        bhsd::visit_dtype(src.type, src.data, [&](auto* p) {
          bhsd::rescale_to_f32(p, src.length, slope, inter, static_cast<float*>(dst.data), *pool);
        });
      },
      nullptr, {info[0], info[3]});
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  auto* data = new AddonData{std::make_shared<bhsd::ThreadPool>(bhsd::default_thread_count())};
  env.SetInstanceData(data);
  // Join the pool's threads when the environment goes away (worker thread exit, process exit).
  auto* hook_ref = new std::shared_ptr<bhsd::ThreadPool>(data->pool);
  napi_add_env_cleanup_hook(
      env,
      [](void* arg) {
        auto* p = static_cast<std::shared_ptr<bhsd::ThreadPool>*>(arg);
        (*p)->shutdown();
        delete p;
      },
      hook_ref);

  exports.Set("info", Napi::Function::New<guarded<Info>>(env, "info"));
  exports.Set("voxelStats", Napi::Function::New<guarded<VoxelStats>>(env, "voxelStats"));
  exports.Set("rescaleToF32", Napi::Function::New<guarded<RescaleToF32>>(env, "rescaleToF32"));
  return exports;
}

}  // namespace

NODE_API_MODULE(bhsd, Init)
