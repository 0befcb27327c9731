// bhsd — the CUDA addon's Node-API surface. Tensors live in device buffers named by integer ids
// (alloc/free/upload/download); the tensor operations take ids, check every extent against the
// buffers' sizes, and enqueue their kernels on the one stream without waiting (the next download
// or sync waits). Copies and the voxel work (components, surface distances) run on libuv worker
// threads and settle promises. Every C++ or CUDA error becomes a JS exception or a rejection.
#define NAPI_VERSION 8
#include <napi.h>

#include <cmath>
#include <memory>
#include <mutex>
#include <unordered_map>

#include "bhsd/metrics.hpp"
#include "gpu.hpp"
#include "napi_util.hpp"
#include "probe.hpp"

namespace {

using bhsd_napi::guarded;
using bhsd_napi::int_of;
using bhsd_napi::ints_of;
using bhsd_napi::number_of;
using bhsd_napi::PromiseWorker;
using bhsd_napi::require;
using bhsd_napi::View;
using bhsd_napi::view_of;

constexpr std::int64_t BIG = std::int64_t(1) << 40;

struct Buf {
  void* p;
  std::size_t bytes;
};
std::mutex table_mu;
std::unordered_map<std::uint32_t, Buf> table;
std::uint32_t next_id = 1;

Buf buf_of(const Napi::Value& v, const char* name) {
  const auto id = std::uint32_t(int_of(v, name, 1, 0xffffffffLL));
  std::lock_guard<std::mutex> lk(table_mu);
  auto it = table.find(id);
  if (it == table.end()) throw Napi::Error::New(v.Env(), std::string("cuda: ") + name + " is not a live device buffer");
  return it->second;
}

// A product of sizes as an element count, checked factor by factor (see bhsd_napi::elems).
std::int64_t n_of(Napi::Env env, std::initializer_list<std::int64_t> factors) {
  return std::int64_t(bhsd_napi::elems(env, factors));
}

// A float buffer of at least n elements (or nullptr for an optional id of 0).
const float* fbuf(const Napi::Value& v, std::int64_t n, const char* name, bool optional = false) {
  if (optional && v.IsNumber() && v.As<Napi::Number>().DoubleValue() == 0) return nullptr;
  Buf b = buf_of(v, name);
  if (b.bytes < std::size_t(n) * sizeof(float))
    throw Napi::RangeError::New(v.Env(), std::string("cuda: ") + name + " holds " + std::to_string(b.bytes / 4) +
                                             " floats; the shapes need " + std::to_string(n));
  return static_cast<const float*>(b.p);
}
float* fout(const Napi::Value& v, std::int64_t n, const char* name) { return const_cast<float*>(fbuf(v, n, name)); }

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

// ---- buffers -------------------------------------------------------------------------------------

Napi::Value Alloc(const Napi::CallbackInfo& info) {
  const auto bytes = std::size_t(int_of(info[0], "bytes", 0, BIG));
  void* p = bhsd_cuda::device_alloc(bytes ? bytes : 1);
  std::lock_guard<std::mutex> lk(table_mu);
  while (table.count(next_id) || next_id == 0) ++next_id;
  const std::uint32_t id = next_id++;
  table[id] = Buf{p, bytes};
  return Napi::Number::New(info.Env(), id);
}

Napi::Value Free(const Napi::CallbackInfo& info) {
  const auto id = std::uint32_t(int_of(info[0], "id", 1, 0xffffffffLL));
  void* p = nullptr;
  {
    std::lock_guard<std::mutex> lk(table_mu);
    auto it = table.find(id);
    if (it == table.end()) return info.Env().Undefined();
    p = it->second.p;
    table.erase(it);
  }
  bhsd_cuda::device_free(p);  // back to the cache; work queued on the stream still runs first
  return info.Env().Undefined();
}

Napi::Value Memory(const Napi::CallbackInfo& info) {
  const auto m = bhsd_cuda::memory_stats();
  Napi::Object o = Napi::Object::New(info.Env());
  o.Set("live", double(m.live));
  o.Set("peak", double(m.peak));
  o.Set("cached", double(m.cached));
  return o;
}

Napi::Value LastDeviceMs(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), bhsd_cuda::last_device_ms());
}

Napi::Value ResetPeak(const Napi::CallbackInfo& info) {
  bhsd_cuda::reset_peak();
  return info.Env().Undefined();
}

Napi::Value ReleaseCache(const Napi::CallbackInfo& info) {
  bhsd_cuda::release_cache();
  return info.Env().Undefined();
}

// upload(id, typedArray) / download(id, typedArray) → Promise<void>
Napi::Value Upload(const Napi::CallbackInfo& info) {
  Buf b = buf_of(info[0], "id");
  View v = view_of(info[1], "data");
  const std::size_t bytes = v.length * bhsd::dtype_size(v.type);
  require(bytes <= b.bytes, info.Env(), "upload: the array is larger than the device buffer");
  return PromiseWorker::Start(info.Env(), [=] { bhsd_cuda::copy_to_device(b.p, v.data, bytes); }, nullptr, {info[1]});
}

Napi::Value Download(const Napi::CallbackInfo& info) {
  Buf b = buf_of(info[0], "id");
  View v = bhsd_napi::out_view_of(info[1], "data");
  const std::size_t bytes = v.length * bhsd::dtype_size(v.type);
  require(bytes <= b.bytes, info.Env(), "download: the array is larger than the device buffer");
  return PromiseWorker::Start(info.Env(), [=] { bhsd_cuda::copy_to_host(v.data, b.p, bytes); }, nullptr, {info[1]});
}

Napi::Value Sync(const Napi::CallbackInfo& info) {
  return PromiseWorker::Start(info.Env(), [] { bhsd_cuda::synchronize(); }, nullptr, {});
}

// ---- tensor operations (ids in, enqueued, nothing returned) -------------------------------------

bhsd_cuda::Precision precision_of(const Napi::Value& v) {
  return static_cast<bhsd_cuda::Precision>(int_of(v, "precision", 0, 3));
}

// conv3d(x, [N,C,D,H,W], w, [Co,kd,kh,kw], bias|0, strides, dilations, pads, groups, [Do,Ho,Wo], act, alpha, out,
// precision) convTranspose3d(x, [N,C,D,H,W], w, [Cog,kd,kh,kw], bias|0, strides, dilations, pads, groups, [Do,Ho,Wo],
// out, precision)
Napi::Value ConvCommon(const Napi::CallbackInfo& info, bool transposed) {
  Napi::Env env = info.Env();
  const auto in = ints_of(info[1], 5, "input shape", 1, BIG), ws = ints_of(info[3], 4, "weight shape", 1, BIG);
  const auto st = ints_of(info[5], 3, "strides", 1, BIG), di = ints_of(info[6], 3, "dilations", 1, BIG);
  const auto pa = ints_of(info[7], 3, "pads", 0, BIG), os = ints_of(info[9], 3, "output shape", 1, BIG);
  const std::int64_t groups = int_of(info[8], "groups", 1, BIG);
  const std::int64_t N = in[0], C = in[1];
  const std::int64_t Co = transposed ? n_of(env, {ws[0], groups}) : ws[0];
  require(C % groups == 0 && Co % groups == 0, env, "channels are not divisible by groups");
  const std::int64_t kvol = n_of(env, {ws[1], ws[2], ws[3]});
  const float* x = fbuf(info[0], n_of(info.Env(), {N, C, in[2], in[3], in[4]}), "x");
  const float* w = fbuf(info[2], transposed ? n_of(env, {C, ws[0], kvol}) : n_of(env, {Co, C / groups, kvol}), "w");
  const float* b = fbuf(info[4], Co, "bias", true);
  const int at = transposed ? 10 : 12;
  float* y = fout(info[at], n_of(info.Env(), {N, Co, os[0], os[1], os[2]}), "out");
  const int act = transposed ? 0 : int(int_of(info[10], "act", 0, 2));
  const float alpha = transposed ? 0.f : float(number_of(info[11], "alpha"));
  bhsd_cuda::ConvShape s{N,     C,     in[2], in[3], in[4], Co,    os[0], os[1], os[2], ws[1], ws[2],
                         ws[3], st[0], st[1], st[2], di[0], di[1], di[2], pa[0], pa[1], pa[2], groups};
  bhsd_cuda::conv3d(x, w, b, y, s, transposed, act, alpha, precision_of(info[at + 1]));
  return env.Undefined();
}
Napi::Value Conv3d(const Napi::CallbackInfo& info) { return ConvCommon(info, false); }
Napi::Value ConvTranspose3d(const Napi::CallbackInfo& info) { return ConvCommon(info, true); }

// convWeightGrad(A, [Ca,Da,Ha,Wa], B, [Cb,Db,Hb,Wb], kernel, strides, pads, dilations, out)
Napi::Value ConvWeightGrad(const Napi::CallbackInfo& info) {
  const auto a = ints_of(info[1], 4, "A shape", 1, BIG), b = ints_of(info[3], 4, "B shape", 1, BIG);
  const auto k = ints_of(info[4], 3, "kernel", 1, BIG), s = ints_of(info[5], 3, "strides", 1, BIG);
  const auto p = ints_of(info[6], 3, "pads", 0, BIG), d = ints_of(info[7], 3, "dilations", 1, BIG);
  const float* A = fbuf(info[0], n_of(info.Env(), {a[0], a[1], a[2], a[3]}), "A");
  const float* B = fbuf(info[2], n_of(info.Env(), {b[0], b[1], b[2], b[3]}), "B");
  float* out = fout(info[8], n_of(info.Env(), {a[0], b[0], k[0], k[1], k[2]}), "out");
  bhsd_cuda::conv_weight_grad(A, a.data(), B, b.data(), k.data(), s.data(), p.data(), d.data(), out);
  return info.Env().Undefined();
}

// instanceNorm(x, N, C, S, scale|0, bias|0, eps, act, alpha, out)
Napi::Value InstanceNorm(const Napi::CallbackInfo& info) {
  const std::int64_t N = int_of(info[1], "N", 1, BIG), C = int_of(info[2], "C", 1, BIG),
                     S = int_of(info[3], "spatial", 1, BIG);
  bhsd_cuda::instance_norm(fbuf(info[0], n_of(info.Env(), {N, C, S}), "x"),
                           fout(info[9], n_of(info.Env(), {N, C, S}), "out"), N, C, S, fbuf(info[4], C, "scale", true),
                           fbuf(info[5], C, "bias", true), number_of(info[6], "eps"), int(int_of(info[7], "act", 0, 2)),
                           float(number_of(info[8], "alpha")));
  return info.Env().Undefined();
}

// batchNorm(x, N, C, S, scale, bias, mean, var, eps, out)
Napi::Value BatchNorm(const Napi::CallbackInfo& info) {
  const std::int64_t N = int_of(info[1], "N", 1, BIG), C = int_of(info[2], "C", 1, BIG),
                     S = int_of(info[3], "spatial", 1, BIG);
  bhsd_cuda::batch_norm(fbuf(info[0], n_of(info.Env(), {N, C, S}), "x"),
                        fout(info[9], n_of(info.Env(), {N, C, S}), "out"), N, C, S, fbuf(info[4], C, "scale"),
                        fbuf(info[5], C, "bias"), fbuf(info[6], C, "mean"), fbuf(info[7], C, "var"),
                        number_of(info[8], "eps"));
  return info.Env().Undefined();
}

// unary(x, N, C, S, op, alpha, slope|0, slopeLen, out)
Napi::Value Unary(const Napi::CallbackInfo& info) {
  const std::int64_t N = int_of(info[1], "N", 1, BIG), C = int_of(info[2], "C", 1, BIG),
                     S = int_of(info[3], "spatial", 1, BIG);
  const int op = int(int_of(info[4], "op", 0, 5));
  const std::int64_t sl = int_of(info[7], "slope length", 0, BIG);
  const float* slope = fbuf(info[6], sl, "slope", true);
  require(op != 3 || (slope && (sl == 1 || sl == C)), info.Env(), "prelu needs 1 or C slopes");
  bhsd_cuda::unary(fbuf(info[0], n_of(info.Env(), {N, C, S}), "x"), fout(info[8], n_of(info.Env(), {N, C, S}), "out"),
                   N, C, S, op, float(number_of(info[5], "alpha")), slope, sl);
  return info.Env().Undefined();
}

// binary(a, b, shape[6], stridesA[6], stridesB[6], mul, out)
Napi::Value Binary(const Napi::CallbackInfo& info) {
  const auto shape = ints_of(info[2], 6, "shape", 1, BIG), sa = ints_of(info[3], 6, "strides of a", 0, BIG),
             sb = ints_of(info[4], 6, "strides of b", 0, BIG);
  std::int64_t n = 1, la = 1, lb = 1;
  for (int k = 0; k < 6; ++k) n *= shape[k], la += (shape[k] - 1) * sa[k], lb += (shape[k] - 1) * sb[k];
  bhsd_cuda::binary(fbuf(info[0], la, "a"), fbuf(info[1], lb, "b"), fout(info[6], n, "out"), shape.data(), sa.data(),
                    sb.data(), info[5].ToBoolean().Value(),
                    info.Length() > 7 && !info[7].IsUndefined() ? int(int_of(info[7], "act", 0, 2)) : 0,
                    info.Length() > 8 && !info[8].IsUndefined() ? float(number_of(info[8], "alpha")) : 0.f);
  return info.Env().Undefined();
}

// pool3d(x, NC, in[3], out[3], kernel[3], strides[3], dilations[3], pads[3], max, countIncludePad, out)
Napi::Value Pool3d(const Napi::CallbackInfo& info) {
  const std::int64_t NC = int_of(info[1], "NC", 1, BIG);
  const auto in = ints_of(info[2], 3, "input shape", 1, BIG), os = ints_of(info[3], 3, "output shape", 1, BIG);
  const auto k = ints_of(info[4], 3, "kernel", 1, BIG), s = ints_of(info[5], 3, "strides", 1, BIG),
             d = ints_of(info[6], 3, "dilations", 1, BIG), p = ints_of(info[7], 3, "pads", 0, BIG);
  bhsd_cuda::pool3d(fbuf(info[0], n_of(info.Env(), {NC, in[0], in[1], in[2]}), "x"),
                    fout(info[10], n_of(info.Env(), {NC, os[0], os[1], os[2]}), "out"), NC, in.data(), os.data(),
                    k.data(), s.data(), d.data(), p.data(), info[8].ToBoolean().Value(), info[9].ToBoolean().Value());
  return info.Env().Undefined();
}

// resize3d(x, NC, in[3], out[3], scales: Float64Array(3), linear, coordMode, nearestMode, out)
Napi::Value Resize3d(const Napi::CallbackInfo& info) {
  const std::int64_t NC = int_of(info[1], "NC", 1, BIG);
  const auto in = ints_of(info[2], 3, "input shape", 1, BIG), os = ints_of(info[3], 3, "output shape", 1, BIG);
  View sc = view_of(info[4], "scales");
  require(sc.type == bhsd::DType::f64 && sc.length == 3, info.Env(), "scales must be a Float64Array of 3");
  const double* scales = static_cast<const double*>(sc.data);
  bhsd_cuda::resize3d(fbuf(info[0], n_of(info.Env(), {NC, in[0], in[1], in[2]}), "x"),
                      fout(info[8], n_of(info.Env(), {NC, os[0], os[1], os[2]}), "out"), NC, in.data(), os.data(),
                      scales, info[5].ToBoolean().Value(), int(int_of(info[6], "coordMode", 0, 3)),
                      int(int_of(info[7], "nearestMode", 0, 3)));
  return info.Env().Undefined();
}

// softmax(x, N, C, S, out) / argmax(x, N, C, S, out: int32 buffer)
Napi::Value Softmax(const Napi::CallbackInfo& info) {
  const std::int64_t N = int_of(info[1], "N", 1, BIG), C = int_of(info[2], "C", 1, BIG),
                     S = int_of(info[3], "spatial", 1, BIG);
  bhsd_cuda::softmax(fbuf(info[0], n_of(info.Env(), {N, C, S}), "x"), fout(info[4], n_of(info.Env(), {N, C, S}), "out"),
                     N, C, S);
  return info.Env().Undefined();
}
Napi::Value Argmax(const Napi::CallbackInfo& info) {
  const std::int64_t N = int_of(info[1], "N", 1, BIG), C = int_of(info[2], "C", 1, BIG),
                     S = int_of(info[3], "spatial", 1, BIG);
  bhsd_cuda::argmax(fbuf(info[0], n_of(info.Env(), {N, C, S}), "x"),
                    reinterpret_cast<std::int32_t*>(fout(info[4], n_of(info.Env(), {N, S}), "out")), N, C, S);
  return info.Env().Undefined();
}

// concatPart(x, outer, len, total, offset, inner, out)
Napi::Value ConcatPart(const Napi::CallbackInfo& info) {
  const std::int64_t outer = int_of(info[1], "outer", 1, BIG), len = int_of(info[2], "len", 0, BIG),
                     total = int_of(info[3], "total", 0, BIG), off = int_of(info[4], "offset", 0, BIG),
                     inner = int_of(info[5], "inner", 1, BIG);
  require(off + len <= total, info.Env(), "concat: the part lies outside the output");
  bhsd_cuda::concat_part(fbuf(info[0], n_of(info.Env(), {outer, len, inner}), "x"),
                         fout(info[6], n_of(info.Env(), {outer, total, inner}), "out"), outer, len, total, off, inner);
  return info.Env().Undefined();
}

// ---- voxel work (host arrays) --------------------------------------------------------------------

// connectedComponents(data, nx, ny, nz, connectivity, perClass, out: Int32Array) → Promise<number>
Napi::Value ConnectedComponents(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  View v = view_of(info[0], "data");
  const auto d = bhsd_napi::dims_of(info, 1);
  const int conn = int(int_of(info[4], "connectivity", 6, 26));
  require(conn == 6 || conn == 18 || conn == 26, env, "connectivity must be 6, 18 or 26");
  const bool per_class = info[5].ToBoolean().Value();
  View o = bhsd_napi::out_view_of(info[6], "out");
  require(std::int64_t(v.length) == d.n() && o.type == bhsd::DType::i32 && o.length == v.length, env,
          "data and out must have nx*ny*nz voxels and out must be an Int32Array");
  auto count = std::make_shared<std::int64_t>(0);
  return PromiseWorker::Start(
      env,
      [=] {
        *count = bhsd_cuda::connected_components(v.data, int(v.type), d.nx, d.ny, d.nz, conn, per_class,
                                                 static_cast<std::int32_t*>(o.data));
      },
      [count](Napi::Env e) -> Napi::Value { return Napi::Number::New(e, double(*count)); }, {info[0], info[6]});
}

// surfaceMetrics(gt, pred, nx, ny, nz, sx, sy, sz, classes: Int32Array, boxes: Float64Array, tau) →
// Promise<Float64Array> The distances on the GPU; the reductions (sum, max, 95th percentile, within τ) on the host, in
// the CPU's order, so that every number equals the CPU backends'.
Napi::Value SurfaceMetrics(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const bhsd_napi::SurfaceArgs a = bhsd_napi::surface_args(info);
  const View gt = a.gt, pred = a.pred;
  const auto d = a.d;
  const double sx = a.sx, sy = a.sy, sz = a.sz, tau = a.tau;
  const auto classes = a.classes;
  const auto boxes = a.boxes;
  auto res = std::make_shared<std::vector<double>>();
  return PromiseWorker::Start(
      env,
      [=] {
        const auto dist = bhsd_cuda::surface_distances(static_cast<const std::uint8_t*>(gt.data),
                                                       static_cast<const std::uint8_t*>(pred.data), d.nx, d.ny, d.nz,
                                                       sx, sy, sz, *classes, *boxes);
        for (const auto& cd : dist) {
          double out[2][5];  // count, sum, max, p95, within
          for (int dir = 0; dir < 2; ++dir) {
            std::vector<double> v(dir ? cd.gp : cd.pg);
            double sum = 0, mx = 0, within = 0;
            for (double& x : v) {
              x = std::sqrt(x);
              sum += x;
              mx = std::max(mx, x);
              within += x <= tau;
            }
            out[dir][0] = double(v.size()), out[dir][1] = sum, out[dir][2] = mx, out[dir][4] = within;
            out[dir][3] = v.empty() ? 0 : bhsd::edt_detail::percentile(v, 0.95);
          }
          res->insert(res->end(), {out[0][0], out[1][0], out[0][1], out[1][1], out[0][2], out[1][2], out[0][3],
                                   out[1][3], out[0][4], out[1][4]});
        }
      },
      [res](Napi::Env e) -> Napi::Value {
        Napi::Float64Array a = Napi::Float64Array::New(e, res->size());
        std::copy(res->begin(), res->end(), a.Data());
        return a;
      },
      {info[0], info[1]});
}

template <Napi::Value (*F)(const Napi::CallbackInfo&)>
void add(Napi::Env env, Napi::Object exports, const char* name) {
  exports.Set(name, Napi::Function::New<guarded<F>>(env, name));
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("probe", Napi::Function::New(env, Probe, "probe"));
  add<Alloc>(env, exports, "alloc");
  add<Free>(env, exports, "free");
  add<Memory>(env, exports, "memory");
  add<ResetPeak>(env, exports, "resetPeak");
  add<LastDeviceMs>(env, exports, "lastDeviceMs");
  add<ReleaseCache>(env, exports, "releaseCache");
  add<Upload>(env, exports, "upload");
  add<Download>(env, exports, "download");
  add<Sync>(env, exports, "sync");
  add<Conv3d>(env, exports, "conv3d");
  add<ConvTranspose3d>(env, exports, "convTranspose3d");
  add<ConvWeightGrad>(env, exports, "convWeightGrad");
  add<InstanceNorm>(env, exports, "instanceNorm");
  add<BatchNorm>(env, exports, "batchNorm");
  add<Unary>(env, exports, "unary");
  add<Binary>(env, exports, "binary");
  add<Pool3d>(env, exports, "pool3d");
  add<Resize3d>(env, exports, "resize3d");
  add<Softmax>(env, exports, "softmax");
  add<Argmax>(env, exports, "argmax");
  add<ConcatPart>(env, exports, "concatPart");
  add<ConnectedComponents>(env, exports, "connectedComponents");
  add<SurfaceMetrics>(env, exports, "surfaceMetrics");
  const char* ops[] = {"conv3d",
                       "convTranspose3d",
                       "convWeightGrad",
                       "instanceNorm",
                       "batchNorm",
                       "unary",
                       "binary",
                       "pool3d",
                       "resize3d",
                       "softmax",
                       "argmax",
                       "concat",
                       "connectedComponents",
                       "surfaceMetrics"};
  Napi::Array a = Napi::Array::New(env, sizeof(ops) / sizeof(ops[0]));
  for (std::uint32_t i = 0; i < a.Length(); ++i) a.Set(i, ops[i]);
  exports.Set("ops", a);
  return exports;
}

}  // namespace

NODE_API_MODULE(bhsd_cuda, Init)
