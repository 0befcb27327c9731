// bhsd — helpers of the Node-API layer: typed-array views, promise workers, per-env state.
// Only this layer knows Node; the core in native/include/bhsd knows nothing of it.
#pragma once

#define NAPI_VERSION 8
#include <napi.h>

#include <exception>
#include <functional>
#include <memory>
#include <new>
#include <string>
#include <vector>

#include "bhsd/dtype.hpp"
#include "bhsd/thread_pool.hpp"

namespace bhsd_napi {

// State owned per Node environment (main thread and each worker thread have their own).
struct AddonData {
  std::shared_ptr<bhsd::ThreadPool> pool;
};

inline std::shared_ptr<bhsd::ThreadPool> pool_of(Napi::Env env) {
  return env.GetInstanceData<AddonData>()->pool;
}

// A typed array's element type, data and length; the array must stay alive while used.
struct View {
  bhsd::DType type;
  void* data;
  std::size_t length;
};

inline View view_of(const Napi::Value& v, const char* name) {
  if (!v.IsTypedArray())
    throw Napi::TypeError::New(v.Env(), std::string("native: ") + name + " must be a typed array");
  Napi::TypedArray ta = v.As<Napi::TypedArray>();
  bhsd::DType t;
  switch (ta.TypedArrayType()) {
    case napi_uint8_array: t = bhsd::DType::u8; break;
    case napi_int8_array: t = bhsd::DType::i8; break;
    case napi_int16_array: t = bhsd::DType::i16; break;
    case napi_uint16_array: t = bhsd::DType::u16; break;
    case napi_int32_array: t = bhsd::DType::i32; break;
    case napi_uint32_array: t = bhsd::DType::u32; break;
    case napi_float32_array: t = bhsd::DType::f32; break;
    case napi_float64_array: t = bhsd::DType::f64; break;
    default:
      throw Napi::TypeError::New(v.Env(), std::string("native: ") + name +
                                              " has an element type the engine does not take");
  }
  auto* base = static_cast<std::uint8_t*>(ta.ArrayBuffer().Data());
  return View{t, base + ta.ByteOffset(), ta.ElementLength()};
}

inline double number_of(const Napi::Value& v, const char* name) {
  if (!v.IsNumber())
    throw Napi::TypeError::New(v.Env(), std::string("native: ") + name + " must be a number");
  return v.As<Napi::Number>().DoubleValue();
}

// Runs `execute` on a libuv worker thread and settles a promise with `resolve`'s value.
// JS values handed in are kept alive (persistent references) until the work has finished.
// Any C++ exception becomes a rejected promise; nothing escapes to terminate the process.
class PromiseWorker : public Napi::AsyncWorker {
 public:
  using Exec = std::function<void()>;
  using Resolve = std::function<Napi::Value(Napi::Env)>;

  PromiseWorker(Napi::Env env, Exec execute, Resolve resolve, std::vector<Napi::Value> keep)
      : Napi::AsyncWorker(env, "bhsd"),
        deferred_(Napi::Promise::Deferred::New(env)),
        execute_(std::move(execute)),
        resolve_(std::move(resolve)) {
    for (auto& v : keep)
      if (v.IsObject()) keep_.push_back(Napi::Persistent(v.As<Napi::Object>()));
  }

  Napi::Promise Promise() const { return deferred_.Promise(); }

  void Execute() override {
    try {
      execute_();
    } catch (const std::bad_alloc&) {
      SetError("native: out of memory");
    } catch (const std::exception& e) {
      SetError(e.what());
    } catch (...) {
      SetError("native: unknown error");
    }
  }
  void OnOK() override {
    Napi::Env env = Env();
    try {
      deferred_.Resolve(resolve_ ? resolve_(env) : env.Undefined());
    } catch (const Napi::Error& e) {
      deferred_.Reject(e.Value());
    } catch (const std::exception& e) {
      deferred_.Reject(Napi::Error::New(env, e.what()).Value());
    }
  }
  void OnError(const Napi::Error& e) override { deferred_.Reject(e.Value()); }

  // Queues the worker and returns its promise (the worker deletes itself when done).
  static Napi::Value Start(Napi::Env env, Exec execute, Resolve resolve,
                           std::vector<Napi::Value> keep) {
    auto* w = new PromiseWorker(env, std::move(execute), std::move(resolve), std::move(keep));
    Napi::Promise p = w->Promise();
    w->Queue();
    return p;
  }

 private:
  Napi::Promise::Deferred deferred_;
  Exec execute_;
  Resolve resolve_;
  std::vector<Napi::ObjectReference> keep_;
};

inline std::int64_t int_of(const Napi::Value& v, const char* name, std::int64_t lo, std::int64_t hi) {
  const double d = number_of(v, name);
  if (!(d >= double(lo) && d <= double(hi)) || d != double(std::int64_t(d)))
    throw Napi::RangeError::New(v.Env(), std::string("native: ") + name + " is out of range");
  return std::int64_t(d);
}

struct Dims {
  std::int64_t nx, ny, nz;
  std::int64_t n() const { return nx * ny * nz; }
};

inline Dims dims_of(const Napi::CallbackInfo& info, std::size_t at) {
  const std::int64_t big = std::int64_t(1) << 32;
  return Dims{int_of(info[at], "nx", 1, big), int_of(info[at + 1], "ny", 1, big),
              int_of(info[at + 2], "nz", 1, big)};
}

inline void require(bool ok, Napi::Env env, const char* what) {
  if (!ok) throw Napi::RangeError::New(env, std::string("native: ") + what);
}


// A JS array of `n` integers within [lo, hi].
inline std::vector<std::int64_t> ints_of(const Napi::Value& v, std::size_t n, const char* name, std::int64_t lo,
                                         std::int64_t hi) {
  if (!v.IsArray() || v.As<Napi::Array>().Length() != n)
    throw Napi::TypeError::New(v.Env(), std::string("native: ") + name + " must be an array of " + std::to_string(n) + " integers");
  Napi::Array a = v.As<Napi::Array>();
  std::vector<std::int64_t> out(n);
  for (std::size_t i = 0; i < n; ++i) out[i] = int_of(a.Get(uint32_t(i)), name, lo, hi);
  return out;
}

// A Float32Array of exactly `n` elements (or null/undefined when optional).
inline const float* floats_of(const Napi::Value& v, std::size_t n, const char* name, bool optional = false) {
  if (optional && (v.IsNull() || v.IsUndefined())) return nullptr;
  View x = view_of(v, name);
  if (x.type != bhsd::DType::f32 || x.length != n)
    throw Napi::RangeError::New(v.Env(), std::string("native: ") + name + " must be a Float32Array of " + std::to_string(n));
  return static_cast<const float*>(x.data);
}

// surfaceMetrics' arguments, shared by the CPU and CUDA addons: (gt, pred, nx, ny, nz, sx, sy, sz,
// classes: Int32Array, boxes: Float64Array(6 per class), tau), checked: uint8 volumes of nx·ny·nz,
// positive spacing, every box inside the volume.
struct SurfaceArgs {
  View gt, pred;
  Dims d;
  double sx, sy, sz, tau;
  std::shared_ptr<std::vector<int>> classes;
  std::shared_ptr<std::vector<std::int64_t>> boxes;
};

inline SurfaceArgs surface_args(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  SurfaceArgs a{view_of(info[0], "gt"), view_of(info[1], "pred"), dims_of(info, 2), number_of(info[5], "sx"),
                number_of(info[6], "sy"), number_of(info[7], "sz"), number_of(info[10], "tau"), nullptr, nullptr};
  View cls = view_of(info[8], "classes"), bx = view_of(info[9], "boxes");
  require(a.gt.type == bhsd::DType::u8 && a.pred.type == bhsd::DType::u8, env, "gt and pred must be Uint8Arrays");
  require(std::int64_t(a.gt.length) == a.d.n() && a.pred.length == a.gt.length, env, "gt and pred must have nx*ny*nz voxels");
  require(a.sx > 0 && a.sy > 0 && a.sz > 0, env, "spacing must be positive");
  require(cls.type == bhsd::DType::i32 && bx.type == bhsd::DType::f64 && bx.length == cls.length * 6, env,
          "classes and boxes disagree");
  const auto* c = static_cast<const std::int32_t*>(cls.data);
  const auto* b = static_cast<const double*>(bx.data);
  a.classes = std::make_shared<std::vector<int>>(c, c + cls.length);
  a.boxes = std::make_shared<std::vector<std::int64_t>>(bx.length);
  for (std::size_t i = 0; i < bx.length; ++i) (*a.boxes)[i] = std::int64_t(b[i]);
  for (std::size_t k = 0; k < cls.length; ++k) {
    const std::int64_t* q = a.boxes->data() + 6 * k;
    require(q[0] >= 0 && q[1] >= 0 && q[2] >= 0 && q[3] < a.d.nx && q[4] < a.d.ny && q[5] < a.d.nz && q[0] <= q[3] &&
                q[1] <= q[4] && q[2] <= q[5], env, "a box lies outside the volume");
  }
  return a;
}

// Wraps an exported function so that no C++ exception other than a JS one leaves it.
template <Napi::Value (*F)(const Napi::CallbackInfo&)>
Napi::Value guarded(const Napi::CallbackInfo& info) {
  try {
    return F(info);
  } catch (const Napi::Error&) {
    throw;
  } catch (const std::bad_alloc&) {
    throw Napi::Error::New(info.Env(), "native: out of memory");
  } catch (const std::exception& e) {
    throw Napi::Error::New(info.Env(), e.what());
  }
}

}  // namespace bhsd_napi
