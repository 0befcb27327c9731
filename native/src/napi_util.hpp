// bhsd — helpers of the Node-API layer: typed-array views, promise workers, per-env state.
// Only this layer knows Node; the core in native/include/bhsd knows nothing of it.
#pragma once

#include <cmath>

#define NAPI_VERSION 8
#include <napi.h>

#include <exception>
#include <functional>
#include <initializer_list>
#include <memory>
#include <new>
#include <string>
#include <vector>

#include <cstring>

#include "bhsd/dtype.hpp"
#include "bhsd/thread_pool.hpp"
#include "bhsd/memory.hpp"
#include "bhsd/thread_pool.hpp"

namespace bhsd_napi {

// State owned per Node environment (main thread and each worker thread have their own).
struct AddonData {
  std::shared_ptr<bhsd::ThreadPool> pool;
};

inline std::shared_ptr<bhsd::ThreadPool> pool_of(Napi::Env env) { return env.GetInstanceData<AddonData>()->pool; }

// A typed array's element type, data and length, as a native call may use them on another thread.
struct View {
  bhsd::DType type;
  void* data;
  std::size_t length;
};

inline std::size_t dtype_bytes(bhsd::DType t) {
  switch (t) {
    case bhsd::DType::u8:
    case bhsd::DType::i8:
      return 1;
    case bhsd::DType::i16:
    case bhsd::DType::u16:
      return 2;
    case bhsd::DType::f64:
      return 8;
    default:
      return 4;
  }
}

// What one native call holds on to while its work runs, so that nothing the caller does to its
// arrays meanwhile (detaching, transferring, resizing, letting them be collected) can free or move
// memory under the work:
//  - engine memory (bhsd::Block, from alloc()): a reference to the block; no copy;
//  - SharedArrayBuffer memory: a reference to the array (it can be neither detached nor shrunk);
//  - any other ArrayBuffer: a copy in engine memory, taken now; arrays the call writes are copied
//    back on the JS thread when the work is done, if the caller's array is still whole; if it is
//    not, the call fails with an error saying so (the result had nowhere to go).
struct Pins {
  struct Copy {
    std::shared_ptr<bhsd::Block> block;
    const std::uint8_t* src;  // the caller's memory when the call began (for aliasing only)
    std::size_t bytes;
    bool writable;
    std::string name;
    Napi::ObjectReference array;  // the caller's typed array, to copy back into
  };
  std::vector<std::shared_ptr<bhsd::Block>> blocks;
  std::vector<Napi::ObjectReference> refs;
  std::vector<Copy> copies;

  bool empty() const { return blocks.empty() && refs.empty() && copies.empty(); }

  // Copies written arrays back; returns an error message, or "" when all went home.
  std::string copy_back(Napi::Env env) {
    for (auto& c : copies) {
      if (!c.writable) continue;
      napi_typedarray_type t;
      size_t len = 0, off = 0;
      void* data = nullptr;
      napi_value ab;
      if (napi_get_typedarray_info(env, c.array.Value(), &t, &len, &data, &ab, &off) != napi_ok)
        return "native: " + c.name + " is no longer a typed array";
      bool detached = false;
      napi_is_detached_arraybuffer(env, ab, &detached);
      const std::size_t have = len * dtype_bytes(type_of(t));
      if (detached || data == nullptr || have < c.bytes)
        return "native: " + c.name + " was detached or shrunk while the engine was writing it; the result is lost";
      std::memcpy(data, c.block->data(), c.bytes);
    }
    return "";
  }

  static bhsd::DType type_of(napi_typedarray_type t) {
    switch (t) {
      case napi_uint8_array:
        return bhsd::DType::u8;
      case napi_int8_array:
        return bhsd::DType::i8;
      case napi_int16_array:
        return bhsd::DType::i16;
      case napi_uint16_array:
        return bhsd::DType::u16;
      case napi_int32_array:
        return bhsd::DType::i32;
      case napi_uint32_array:
        return bhsd::DType::u32;
      case napi_float64_array:
        return bhsd::DType::f64;
      default:
        return bhsd::DType::f32;
    }
  }
};

// The cancel flag the next asynchronous call on this JS thread runs under (cancelNext sets it;
// the PromiseWorker that call makes takes it). A shared_ptr: the flag outlives whichever of the
// JS token object and the work lets go last.
inline std::shared_ptr<bhsd::CancelFlag>& pending_cancel() {
  static thread_local std::shared_ptr<bhsd::CancelFlag> f;
  return f;
}

// The arithmetic this JS thread's asynchronous calls run in (setPrecision sets it; each
// PromiseWorker takes it when made and runs its work under it: bhsd::call_precision).
inline bhsd::Precision& js_precision() {
  static thread_local bhsd::Precision p = bhsd::Precision::fp32;
  return p;
}

// The pins of the exported call now running on the JS thread (set by `guarded`).
inline Pins*& current_pins() {
  static thread_local Pins* p = nullptr;
  return p;
}

// A typed array's element type, memory and whether that memory is a SharedArrayBuffer's.
struct ArrayInfo {
  bhsd::DType type;
  void* data;
  std::size_t length;
  bool shared;
  std::size_t bytes() const { return length * dtype_bytes(type); }
};

inline ArrayInfo array_info(const Napi::Value& v, const char* name) {
  Napi::Env env = v.Env();
  if (!v.IsTypedArray()) throw Napi::TypeError::New(env, std::string("native: ") + name + " must be a typed array");
  napi_typedarray_type tt;
  size_t len = 0, off = 0;
  void* data = nullptr;
  napi_value ab;
  NAPI_THROW_IF_FAILED(env, napi_get_typedarray_info(env, v, &tt, &len, &data, &ab, &off), ArrayInfo{});
  switch (tt) {
    case napi_uint8_array:
    case napi_int8_array:
    case napi_int16_array:
    case napi_uint16_array:
    case napi_int32_array:
    case napi_uint32_array:
    case napi_float32_array:
    case napi_float64_array:
      break;
    default:
      throw Napi::TypeError::New(env, std::string("native: ") + name + " has an element type the engine does not take");
  }
  bool is_ab = false;
  napi_is_arraybuffer(env, ab, &is_ab);
  return ArrayInfo{Pins::type_of(tt), data, len, !is_ab};
}

inline View view_of(const Napi::Value& v, const char* name, bool writable = false) {
  Napi::Env env = v.Env();
  const ArrayInfo a = array_info(v, name);
  const bhsd::DType t = a.type;
  void* const data = a.data;
  const std::size_t len = a.length, bytes = a.bytes();
  Pins* pins = current_pins();
  if (!pins) throw Napi::Error::New(env, std::string("native: internal: ") + name + " viewed outside a call");
  if (bytes == 0 || data == nullptr) return View{t, nullptr, 0};
  if (a.shared) {  // a SharedArrayBuffer: never detached nor shrunk; hold the array
    pins->refs.push_back(Napi::Persistent(v.As<Napi::Object>()));
    return View{t, data, len};
  }
  if (auto b = bhsd::Block::find(data, bytes)) {  // engine memory: hold the block
    pins->blocks.push_back(std::move(b));
    return View{t, data, len};
  }
  // the caller's memory: work on a copy (one copy per region, shared by arrays that alias it)
  const auto* src = static_cast<const std::uint8_t*>(data);
  for (auto& c : pins->copies) {
    if (src >= c.src && src + bytes <= c.src + c.bytes) {
      if (writable && !c.writable) {
        c.writable = true;
        c.name = name;
        c.array = Napi::Persistent(v.As<Napi::Object>());
        if (src != c.src || bytes != c.bytes)
          throw Napi::RangeError::New(env, std::string("native: ") + name + " overlaps another argument only in part");
      }
      return View{t, static_cast<std::uint8_t*>(c.block->data()) + (src - c.src), len};
    }
    if (src < c.src + c.bytes && c.src < src + bytes)
      throw Napi::RangeError::New(env, std::string("native: ") + name + " overlaps another argument only in part");
  }
  auto block = bhsd::Block::allocate(bytes, false);  // every byte copied next
  std::memcpy(block->data(), src, bytes);
  void* mine = block->data();
  pins->copies.push_back(
      Pins::Copy{std::move(block), src, bytes, writable, name, Napi::Persistent(v.As<Napi::Object>())});
  return View{t, mine, len};
}

// An array the call writes.
inline View out_view_of(const Napi::Value& v, const char* name) { return view_of(v, name, true); }

// A typed array's memory to read while the call is still synchronous on the JavaScript thread
// (no JavaScript runs meanwhile, so nothing can detach, shrink or collect it), neither copied nor
// pinned. `stable`: the memory stays valid after the call returns too (engine memory, a
// SharedArrayBuffer; then pinned as view_of pins it), so work on another thread may go on reading
// it; otherwise a later pass that needs the voxels takes view_of's copy.
struct Borrowed {
  View view;
  bool stable;
};
inline Borrowed borrow_view_of(const Napi::Value& v, const char* name) {
  const ArrayInfo a = array_info(v, name);
  if (a.bytes() == 0 || a.data == nullptr || a.shared || bhsd::Block::find(a.data, a.bytes()))
    return Borrowed{view_of(v, name), true};
  return Borrowed{View{a.type, a.data, a.length}, false};
}

inline double number_of(const Napi::Value& v, const char* name) {
  if (!v.IsNumber()) throw Napi::TypeError::New(v.Env(), std::string("native: ") + name + " must be a number");
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
    // the arrays this call viewed (kept alive, or copied) now belong to the work
    if (Pins* p = current_pins()) std::swap(pins_, *p);
    cancel_ = std::move(pending_cancel());
    precision_ = js_precision();
  }

  Napi::Promise Promise() const { return deferred_.Promise(); }

  // The work under the call's cancel flag and precision; the error message, or empty.
  std::string Run() noexcept {
    try {
      bhsd::CancelScope scope(cancel_.get());
      bhsd::PrecisionScope precision(precision_);
      bhsd::check_cancel();  // cancelled while queued: do not start
      execute_();
      return {};
    } catch (const std::bad_alloc&) {
      return "native: out of memory";
    } catch (const std::exception& e) {
      return e.what();
    } catch (...) {
      return "native: unknown error";
    }
  }
  void Execute() override {
    const std::string e = Run();
    if (!e.empty()) SetError(e);
  }
  void OnOK() override {
    Napi::Env env = Env();
    try {
      const std::string lost = pins_.copy_back(env);
      if (!lost.empty()) {
        deferred_.Reject(Napi::Error::New(env, lost).Value());
        return;
      }
      deferred_.Resolve(resolve_ ? resolve_(env) : env.Undefined());
    } catch (const Napi::Error& e) {
      deferred_.Reject(e.Value());
    } catch (const std::exception& e) {
      deferred_.Reject(Napi::Error::New(env, e.what()).Value());
    }
  }
  void OnError(const Napi::Error& e) override { deferred_.Reject(e.Value()); }

  // Queues the worker and returns its promise (the worker deletes itself when done) — or, where
  // `work` (the caller's estimate: bytes the call moves, plus a convolution's multiply-adds / 32)
  // is at most kInlineWork (about 1 ms on 2 threads here), runs it now on this (the JavaScript)
  // thread and returns the settled promise. A trip through libuv's worker threads and back costs
  // 35 µs and more in these VMs (two thread wake-ups; more on a loaded machine), as much as a small
  // layer's work: MONAI SegResNet's forward at 16×64×64 is 75 calls of 0.1–1 ms. Its loops take
  // the native pool only if it is free (ThreadPool's no-wait scope: else they run on this thread
  // alone), so the event loop never waits behind another call's long loop; an inline call blocks
  // it for about a millisecond at most (a chain of them, one small network's forward: the service
  // runs models in worker threads). BHSD_NO_INLINE=1 queues every call (for comparison).
  //
  // Every kInlineStreak-th call in a row that could run inline is queued all the same: a chain of
  // inline calls never returns to the event loop, and Node-API runs the finalizers of collected
  // ArrayBuffers only from it (a setImmediate), so a loop `for (;;) await model.run(x)` of a small
  // network kept every dropped output's engine block (SegResNet at 16×64×64: 2 MB a run, 771 MB
  // after 400 runs) and took a fresh, page-faulting mapping for each (4.5 ms of its 13–15 ms).
  static constexpr double kInlineWork = double(16 << 20);
  static constexpr int kInlineStreak = 32;
  static int& inline_streak() {
    thread_local int n = 0;  // per JavaScript thread (the main one, each worker_thread)
    return n;
  }
  static Napi::Value Start(Napi::Env env, Exec execute, Resolve resolve, std::vector<Napi::Value> keep,
                           double work = HUGE_VAL) {
    auto* w = new PromiseWorker(env, std::move(execute), std::move(resolve), std::move(keep));
    Napi::Promise p = w->Promise();
    static const bool never = [] {
      const char* e = std::getenv("BHSD_NO_INLINE");
      return e && *e && std::string(e) != "0";
    }();
    if (work <= kInlineWork && !never && ++inline_streak() < kInlineStreak) {
      std::unique_ptr<PromiseWorker> own(w);  // never queued: deleted here
      std::string e;
      {
        bhsd::PoolNoWaitScope no_wait;
        e = w->Run();
      }
      if (e.empty())
        w->OnOK();
      else
        w->deferred_.Reject(Napi::Error::New(env, e).Value());
      return p;
    }
    inline_streak() = 0;
    w->Queue();
    return p;
  }

 private:
  Napi::Promise::Deferred deferred_;
  Exec execute_;
  Resolve resolve_;
  std::vector<Napi::ObjectReference> keep_;
  Pins pins_;
  std::shared_ptr<bhsd::CancelFlag> cancel_;
  bhsd::Precision precision_ = bhsd::Precision::fp32;
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
  return Dims{int_of(info[at], "nx", 1, big), int_of(info[at + 1], "ny", 1, big), int_of(info[at + 2], "nz", 1, big)};
}

inline void require(bool ok, Napi::Env env, const char* what) {
  if (!ok) throw Napi::RangeError::New(env, std::string("native: ") + what);
}

// A JS array of `n` integers within [lo, hi].
inline std::vector<std::int64_t> ints_of(const Napi::Value& v, std::size_t n, const char* name, std::int64_t lo,
                                         std::int64_t hi) {
  if (!v.IsArray() || v.As<Napi::Array>().Length() != n)
    throw Napi::TypeError::New(
        v.Env(), std::string("native: ") + name + " must be an array of " + std::to_string(n) + " integers");
  Napi::Array a = v.As<Napi::Array>();
  std::vector<std::int64_t> out(n);
  for (std::size_t i = 0; i < n; ++i) out[i] = int_of(a.Get(uint32_t(i)), name, lo, hi);
  return out;
}

// A product of sizes (each ≥ 0) as a count of elements, or a RangeError past 2^48 (no array is that
// long): checked factor by factor, so that no product of a call's dimensions wraps around before it
// is compared with an array's length (dimensions up to 2^40 each: five of them overflow 64 bits, and
// a wrapped product equal to a small array's length would let the kernel run past its end).
inline std::size_t elems(Napi::Env env, std::initializer_list<std::int64_t> factors) {
  constexpr std::uint64_t kMax = std::uint64_t(1) << 48;
  std::uint64_t p = 1;
  for (const std::int64_t f : factors) {
    if (f < 0 || (f > 0 && p > kMax / std::uint64_t(f)))
      throw Napi::RangeError::New(env, "native: the sizes' product is too large");
    p *= std::uint64_t(f);
  }
  return std::size_t(p);
}

// A Float32Array of exactly `n` elements (or null/undefined when optional); `writable` when the
// call writes it.
inline const float* floats_of(const Napi::Value& v, std::size_t n, const char* name, bool optional = false,
                              bool writable = false) {
  if (optional && (v.IsNull() || v.IsUndefined())) return nullptr;
  View x = view_of(v, name, writable);
  if (x.type != bhsd::DType::f32 || x.length != n)
    throw Napi::RangeError::New(v.Env(),
                                std::string("native: ") + name + " must be a Float32Array of " + std::to_string(n));
  return static_cast<const float*>(x.data);
}

// An external ArrayBuffer of `bytes` over a block the caller made (and has filled), freed or cached
// when JavaScript lets go of it and no native call uses it any more. No napi_adjust_external_memory:
// V8 already counts every ArrayBuffer's length as external memory, its own or external (a plain
// 42 MB Float32Array makes it collect as often), and reporting the block again doubled each result's
// weight, so that one 42 MB read after a quiet spell still set off a full collection (readNifti
// of a 512×512×40 CT: 11 ms, against 3–4 ms counted once).
inline Napi::ArrayBuffer block_buffer(Napi::Env env, std::shared_ptr<bhsd::Block> block, std::size_t bytes) {
  auto* holder = new std::shared_ptr<bhsd::Block>(std::move(block));
  napi_value ab;
  napi_status st = napi_create_external_arraybuffer(
      env, (*holder)->data(), bytes,
      [](napi_env, void*, void* hint) { delete static_cast<std::shared_ptr<bhsd::Block>*>(hint); }, holder, &ab);
  if (st != napi_ok) {
    delete holder;
    NAPI_THROW(Napi::Error::New(env, "native: cannot make an external ArrayBuffer here"), Napi::ArrayBuffer());
  }
  return Napi::ArrayBuffer(env, ab);
}

inline Napi::ArrayBuffer engine_buffer(Napi::Env env, std::size_t bytes) {
  return block_buffer(env, bhsd::Block::allocate(bytes), bytes);
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
  SurfaceArgs a{view_of(info[0], "gt"),
                view_of(info[1], "pred"),
                dims_of(info, 2),
                number_of(info[5], "sx"),
                number_of(info[6], "sy"),
                number_of(info[7], "sz"),
                number_of(info[10], "tau"),
                nullptr,
                nullptr};
  View cls = view_of(info[8], "classes"), bx = view_of(info[9], "boxes");
  require(a.gt.type == bhsd::DType::u8 && a.pred.type == bhsd::DType::u8, env, "gt and pred must be Uint8Arrays");
  require(std::int64_t(a.gt.length) == a.d.n() && a.pred.length == a.gt.length, env,
          "gt and pred must have nx*ny*nz voxels");
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
                q[1] <= q[4] && q[2] <= q[5],
            env, "a box lies outside the volume");
  }
  return a;
}

// Wraps an exported function so that no C++ exception other than a JS one leaves it.
// The arrays it views are pinned for the call (see Pins): handed to its PromiseWorker, or, for a
// call that finishes on the JS thread, copied back before it returns.
template <Napi::Value (*F)(const Napi::CallbackInfo&)>
Napi::Value guarded(const Napi::CallbackInfo& info) {
  Pins pins;
  struct Scope {
    Pins* saved;
    explicit Scope(Pins* p) : saved(current_pins()) { current_pins() = p; }
    ~Scope() { current_pins() = saved; }
  } scope(&pins);
  try {
    Napi::Value r = F(info);
    const std::string lost = pins.copy_back(info.Env());
    if (!lost.empty()) throw Napi::Error::New(info.Env(), lost);
    return r;
  } catch (const Napi::Error&) {
    throw;
  } catch (const std::bad_alloc&) {
    throw Napi::Error::New(info.Env(), "native: out of memory");
  } catch (const std::exception& e) {
    throw Napi::Error::New(info.Env(), e.what());
  }
}

}  // namespace bhsd_napi
