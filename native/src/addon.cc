// bhsd — the CPU addon's Node-API surface: thin wrappers that check shapes of arguments, keep
// inputs alive and run the core's work on libuv's threads, returning promises.
#include <memory>

#include "bhsd/ccl.hpp"
#include "bhsd/conv.hpp"
#include "bhsd/cpu_features.hpp"
#include "bhsd/file_read.hpp"
#include "bhsd/gunzip.hpp"
#include "bhsd/metrics.hpp"
#include "bhsd/peak.hpp"
#include "bhsd/voxel_ops.hpp"
#include "napi_util.hpp"

#ifndef BHSD_VERSION
#define BHSD_VERSION "0.0.0"
#endif

using namespace bhsd_napi;

namespace {

// fmaPeak() → Promise<GFLOP/s over the pool's threads>
Napi::Value FmaPeak(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto pool = pool_of(env);
  auto out = std::make_shared<double>(0);
  return PromiseWorker::Start(
      env, [pool, out] { *out = bhsd::fma_peak_gflops(*pool); },
      [out](Napi::Env e) -> Napi::Value { return Napi::Number::New(e, *out); }, {});
}

Napi::Value Info(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object o = Napi::Object::New(env);
  o.Set("version", BHSD_VERSION);
  o.Set("threads", pool_of(env)->size());
  // AMX tiles serve bf16 calls' convolutions where the processor has them (amx_tiles.hpp)
  o.Set("simd", bhsd::simd_level() + (bhsd::amx_available() ? " + amx-bf16 (bf16 convolutions)" : ""));
  o.Set("napiVersion", NAPI_VERSION);
  o.Set("bf16", bhsd::wino_detail::bf16_available());
  // conv3d takes a residual after the norm's arguments (an older binary would ignore it)
  o.Set("convNormResidual", true);
  // and the norm's groups after the residual (a GroupNorm fused into its Conv)
  o.Set("convNormGroups", true);
  // and a residual without a norm (null in the norm's places), added before the activation
  o.Set("convResidual", true);
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
        *out = bhsd::visit_dtype(src.type, src.data, [&](auto* p) { return bhsd::voxel_stats(p, src.length, *pool); });
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
  View dst = out_view_of(info[3], "dst");
  if (dst.type != bhsd::DType::f32 || dst.length != src.length)
    throw Napi::RangeError::New(env, "native: dst must be a Float32Array as long as src");
  auto pool = pool_of(env);
  return PromiseWorker::Start(env,
                              [src, dst, slope, inter, pool] {
                                bhsd::visit_dtype(src.type, src.data, [&](auto* p) {
                                  bhsd::rescale_to_f32(p, src.length, slope, inter, static_cast<float*>(dst.data),
                                                       *pool);
                                });
                              },
                              nullptr, {info[0], info[3]});
}

// The voxel type a string names (bhsd::dtype_name's names).
bhsd::DType dtype_named(const Napi::Value& v) {
  Napi::Env env = v.Env();
  if (!v.IsString()) throw Napi::TypeError::New(env, "native: dtype must be a string");
  const std::string name = v.As<Napi::String>().Utf8Value();
  for (bhsd::DType c : {bhsd::DType::u8, bhsd::DType::i8, bhsd::DType::i16, bhsd::DType::u16, bhsd::DType::i32,
                        bhsd::DType::u32, bhsd::DType::f32, bhsd::DType::f64})
    if (name == bhsd::dtype_name(c)) return c;
  throw Napi::TypeError::New(env, "native: dtype must name a voxel type");
}

// gunzip(source: fd | Uint8Array, skip, dtype name | null, slope, inter, out) → Promise<bytes delivered>:
// the gzip stream of an open file (from its byte 0; the caller keeps it open until the promise
// settles) or of bytes in memory, inflated past its first `skip` bytes into out — with dtype null
// the bytes themselves (out: any typed array, filled byte for byte), with a dtype that type's voxels
// converted as readScaled converts them (out: a Float32Array, one voxel each). Resolves with the
// bytes delivered (the stream's, before conversion): fewer than out holds when the stream ends first.
Napi::Value Gunzip(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const bool from_fd = info[0].IsNumber();
  const int fd = from_fd ? int(int_of(info[0], "fd", 0, 1 << 30)) : -1;
  const View src = from_fd ? View{bhsd::DType::u8, nullptr, 0} : view_of(info[0], "source");
  require(from_fd || src.type == bhsd::DType::u8, env, "source must be a file descriptor or a Uint8Array");
  const std::int64_t skip = int_of(info[1], "skip", 0, std::int64_t(1) << 52);
  bhsd::GunzipSink sink;
  const View out = out_view_of(info[5], "out");
  if (info[2].IsNull()) {
    sink.bytes = out.length * dtype_bytes(out.type);
  } else {
    sink.scaled = true;
    sink.type = dtype_named(info[2]);
    sink.slope = number_of(info[3], "slope"), sink.inter = number_of(info[4], "inter");
    require(out.type == bhsd::DType::f32, env, "out must be a Float32Array for scaled voxels");
    sink.bytes = out.length * bhsd::dtype_size(sink.type);
  }
  sink.dst = static_cast<unsigned char*>(out.data);
  auto n = std::make_shared<std::uint64_t>(0);
  return PromiseWorker::Start(
      env,
      [=] {
        if (sink.bytes == 0) return;
        *n = from_fd ? bhsd::gunzip_into(bhsd::fd_reader(fd), std::uint64_t(skip), sink)
                     : bhsd::gunzip_into(bhsd::memory_reader(static_cast<const unsigned char*>(src.data), src.length),
                                         std::uint64_t(skip), sink);
      },
      [n](Napi::Env e) -> Napi::Value { return Napi::Number::New(e, double(*n)); }, {info[0], info[5]});
}

// readScaled(fd, offset, dtype name, n, slope, inter, out: Float32Array of n) → Promise<void>: n voxels
// of the named type (host byte order) at `offset` of the open file fd, scaled into out (NIfTI's
// scl_slope / scl_inter, in float64). The caller keeps fd open until the promise settles; a file
// shorter than offset + its voxels rejects with "truncated data".
Napi::Value ReadScaled(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  require(bhsd::read_scaled_supported(), env, "readScaled is not supported on this platform");
  const int fd = int(int_of(info[0], "fd", 0, 1 << 30));
  const std::int64_t offset = int_of(info[1], "offset", 0, std::int64_t(1) << 52);
  const bhsd::DType t = dtype_named(info[2]);
  const std::int64_t n = int_of(info[3], "n", 0, std::int64_t(1) << 40);
  const double slope = number_of(info[4], "slope"), inter = number_of(info[5], "inter");
  View out = out_view_of(info[6], "out");
  require(out.type == bhsd::DType::f32 && std::int64_t(out.length) == n, env, "out must be a Float32Array of n");
  auto pool = pool_of(env);
  return PromiseWorker::Start(
      env, [=] { bhsd::read_scaled(fd, offset, t, n, slope, inter, static_cast<float*>(out.data), *pool); }, nullptr,
      {info[6]});
}

// connectedComponents(data, nx, ny, nz, connectivity, perClass, out: Int32Array | null) → Promise<count>, or
// with out null Promise<{ count, labels: ArrayBuffer }>: the labels in engine memory made for them
// (every voxel is written, so a reused block is not cleared first — 42 MB of memset for a
// 40×512×512 case — and JS sees the buffer only once the labelling has finished).
// The voxels of a caller's ordinary ArrayBuffer are not copied for the work: the labelling's first
// pass (the rows' run masks, all the rest needs of the voxels unless voxels of different values
// touch) reads them here, before the call returns, on the pool's threads (or this thread alone
// while another call holds the pool) — about half the time of a copy on this thread (a 40×512×512
// mask: 1.1–1.5 ms against 3 ms). Only when the joins must compare values is the copy taken.
Napi::Value ConnectedComponents(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const Borrowed in = borrow_view_of(info[0], "data");
  Dims d = dims_of(info, 1);
  const int conn = int(int_of(info[4], "connectivity", 6, 26));
  require(conn == 6 || conn == 18 || conn == 26, env, "connectivity must be 6, 18 or 26");
  const bool per_class = info[5].ToBoolean();
  require(bhsd::dtype_is_integer(in.view.type), env, "data must hold integers");
  require(std::int64_t(in.view.length) == d.n(), env, "data length does not match nx*ny*nz");
  const bool fresh = info[6].IsNull();
  View out{bhsd::DType::i32, nullptr, 0};
  std::shared_ptr<bhsd::Block> block;
  const std::size_t bytes = in.view.length * sizeof(std::int32_t);
  if (fresh) {
    try {
      block = bhsd::Block::allocate(bytes, /*zero=*/false);
    } catch (const std::bad_alloc&) {
      throw Napi::RangeError::New(env, "native: cannot allocate the labels");
    }
    out.data = block->data(), out.length = in.view.length;
  } else {
    out = out_view_of(info[6], "out");
    require(out.type == bhsd::DType::i32 && out.length == in.view.length, env,
            "out must be an Int32Array as long as data");
  }
  auto pool = pool_of(env);
  auto count = std::make_shared<std::int64_t>(0);
  auto rows = std::make_shared<bhsd::CclRows>();
  View src = in.view;
  const bool rows_done = !in.stable;
  if (rows_done) {
    bhsd::PoolNoWaitScope no_wait;  // never behind another call's loops: serially here instead
    *rows = bhsd::visit_dtype(src.type, src.data,
                              [&](auto* p) { return bhsd::ccl_rows(p, d.nx, d.ny, d.nz, per_class, *pool); });
    src = rows->per_class ? view_of(info[0], "data") : View{src.type, nullptr, 0};
  }
  auto* labels = static_cast<std::int32_t*>(out.data);
  auto work = [=] {
    *count = bhsd::visit_dtype(src.type, src.data, [&](auto* p) {
      if (!rows_done) *rows = bhsd::ccl_rows(p, d.nx, d.ny, d.nz, per_class, *pool);
      return bhsd::ccl_label(*rows, p, conn, labels, *pool);
    });
  };
  if (fresh)
    return PromiseWorker::Start(env, work,
                                [count, block, bytes](Napi::Env e) -> Napi::Value {
                                  Napi::Object o = Napi::Object::New(e);
                                  o.Set("count", Napi::Number::New(e, double(*count)));
                                  o.Set("labels", block_buffer(e, block, bytes));
                                  return o;
                                },
                                {info[0]});
  return PromiseWorker::Start(env, work,
                              [count](Napi::Env e) -> Napi::Value { return Napi::Number::New(e, double(*count)); },
                              {info[0], info[6]});
}

// componentStats(labels, nx, ny, nz, count, classes | null, out: Float64Array(count*11)) → Promise<void>
Napi::Value ComponentStats(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  View lab = view_of(info[0], "labels");
  Dims d = dims_of(info, 1);
  const std::int64_t count = int_of(info[4], "count", 0, (std::int64_t(1) << 31) - 1);
  const bool has_classes = !info[5].IsNull() && !info[5].IsUndefined();
  View cls = has_classes ? view_of(info[5], "classes") : View{bhsd::DType::u8, nullptr, 0};
  View out = out_view_of(info[6], "out");
  require(lab.type == bhsd::DType::i32 && std::int64_t(lab.length) == d.n(), env,
          "labels must be an Int32Array of nx*ny*nz");
  require(!has_classes || cls.length == lab.length, env, "classes must be as long as labels");
  require(out.type == bhsd::DType::f64 && std::int64_t(out.length) == count * bhsd::STATS, env,
          "out must be a Float64Array of count*11");
  auto pool = pool_of(env);
  return PromiseWorker::Start(env,
                              [=] {
                                auto* l = static_cast<const std::int32_t*>(lab.data);
                                auto* o = static_cast<double*>(out.data);
                                if (!has_classes) {
                                  bhsd::component_stats<std::uint8_t>(l, d.nx, d.ny, d.nz, count, nullptr, o, *pool);
                                  return;
                                }
                                bhsd::visit_dtype(cls.type, cls.data, [&](auto* c) {
                                  bhsd::component_stats(l, d.nx, d.ny, d.nz, count, c, o, *pool);
                                });
                              },
                              nullptr, {info[0], info[5], info[6]});
}

// componentSliceAreas(labels, nx, ny, nz, count, zmin: Int32Array, offsets: Float64Array(count+1), out: Uint32Array) →
// Promise<void>
Napi::Value ComponentSliceAreas(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  View lab = view_of(info[0], "labels");
  Dims d = dims_of(info, 1);
  const std::int64_t count = int_of(info[4], "count", 0, (std::int64_t(1) << 31) - 1);
  View zmin = view_of(info[5], "zmin"), offs = view_of(info[6], "offsets"), out = out_view_of(info[7], "out");
  require(lab.type == bhsd::DType::i32 && std::int64_t(lab.length) == d.n(), env,
          "labels must be an Int32Array of nx*ny*nz");
  require(zmin.type == bhsd::DType::i32 && std::int64_t(zmin.length) == count, env,
          "zmin must be an Int32Array of count");
  require(offs.type == bhsd::DType::f64 && std::int64_t(offs.length) == count + 1, env,
          "offsets must be a Float64Array of count+1");
  require(out.type == bhsd::DType::u32, env, "out must be a Uint32Array");
  auto offsets = std::make_shared<std::vector<std::int64_t>>(std::size_t(count + 1));
  const double* od = static_cast<const double*>(offs.data);
  for (std::int64_t i = 0; i <= count; ++i) {
    (*offsets)[i] = std::int64_t(od[i]);
    require(od[i] >= 0 && (i == 0 || od[i] >= od[i - 1]), env, "offsets must be non-decreasing");
  }
  require(std::int64_t(out.length) >= (*offsets)[count], env, "out is shorter than offsets[count]");
  auto pool = pool_of(env);
  return PromiseWorker::Start(env,
                              [=] {
                                bhsd::component_slice_areas(static_cast<const std::int32_t*>(lab.data), d.nx, d.ny,
                                                            d.nz, count, static_cast<const std::int32_t*>(zmin.data),
                                                            offsets->data(), static_cast<std::uint32_t*>(out.data),
                                                            *pool);
                              },
                              nullptr, {info[0], info[5], info[7]});
}

// selectComponents(src, labels: Int32Array, keep: Uint8Array(count+1), out: same type as src) → Promise<void>
Napi::Value SelectComponents(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  View src = view_of(info[0], "src"), lab = view_of(info[1], "labels"), keep = view_of(info[2], "keep"),
       out = out_view_of(info[3], "out");
  require(lab.type == bhsd::DType::i32 && lab.length == src.length, env, "labels must be an Int32Array as long as src");
  require(keep.type == bhsd::DType::u8 && keep.length >= 1, env, "keep must be a non-empty Uint8Array");
  require(out.type == src.type && out.length == src.length, env, "out must match src");
  auto pool = pool_of(env);
  return PromiseWorker::Start(env,
                              [=] {
                                bhsd::visit_dtype(src.type, src.data, [&](auto* p) {
                                  using T = std::remove_const_t<std::remove_pointer_t<decltype(p)>>;
                                  bhsd::select_components(
                                      p, static_cast<const std::int32_t*>(lab.data), std::int64_t(src.length),
                                      static_cast<const std::uint8_t*>(keep.data), std::int64_t(keep.length) - 1,
                                      static_cast<T*>(out.data), *pool);
                                });
                              },
                              nullptr, {info[0], info[1], info[2], info[3]});
}

// narrowLabels(src, nx, ny, nz, maxLabel, out: Uint8Array, what: string) → Promise<void>
Napi::Value NarrowLabels(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  View src = view_of(info[0], "src");
  Dims d = dims_of(info, 1);
  const int max_label = int(int_of(info[4], "maxLabel", 0, 255));
  View out = out_view_of(info[5], "out");
  const std::string what = info[6].IsString() ? info[6].As<Napi::String>().Utf8Value() : "labels";
  require(std::int64_t(src.length) == d.n(), env, "src length does not match nx*ny*nz");
  require(out.type == bhsd::DType::u8 && out.length == src.length, env, "out must be a Uint8Array as long as src");
  auto pool = pool_of(env);
  return PromiseWorker::Start(env,
                              [=] {
                                bhsd::visit_dtype(src.type, src.data, [&](auto* p) {
                                  bhsd::narrow_labels(p, d.nx, d.ny, d.nz, max_label,
                                                      static_cast<std::uint8_t*>(out.data), what.c_str(), *pool);
                                });
                              },
                              nullptr, {info[0], info[5]});
}

// Cancellation (see bhsd::CancelFlag): cancelToken() → an opaque token; cancel(token) stops the
// computations running under it at their next chunk (they reject with "bhsd: cancelled");
// cancelNext(token | null) makes the next asynchronous call on this thread run under it.
using FlagPtr = std::shared_ptr<bhsd::CancelFlag>;
static const napi_type_tag kCancelTag = {0x6268736463616e63ULL, 0x656c746f6b656e31ULL};

Napi::Value CancelToken(const Napi::CallbackInfo& info) {
  auto ext = Napi::External<FlagPtr>::New(info.Env(), new FlagPtr(std::make_shared<bhsd::CancelFlag>()),
                                          [](Napi::Env, FlagPtr* p) { delete p; });
  ext.TypeTag(&kCancelTag);
  return ext;
}

static FlagPtr& token_of(const Napi::Value& v) {
  if (!v.IsExternal() || !v.As<Napi::External<FlagPtr>>().CheckTypeTag(&kCancelTag))
    throw Napi::TypeError::New(v.Env(), "native: token must come from cancelToken()");
  return *v.As<Napi::External<FlagPtr>>().Data();
}

Napi::Value Cancel(const Napi::CallbackInfo& info) {
  token_of(info[0])->set.store(1, std::memory_order_relaxed);
  return info.Env().Undefined();
}

Napi::Value CancelNext(const Napi::CallbackInfo& info) {
  if (info[0].IsNull() || info[0].IsUndefined())
    pending_cancel().reset();
  else
    pending_cancel() = token_of(info[0]);
  return info.Env().Undefined();
}

// setPrecision(0 fp32 | 1 bf16): the arithmetic of this thread's next asynchronous calls (each
// takes it when made); bf16 is used only where the processor has it (info().bf16).
Napi::Value SetPrecision(const Napi::CallbackInfo& info) {
  js_precision() = int_of(info[0], "precision", 0, 1) == 1 ? bhsd::Precision::bf16 : bhsd::Precision::fp32;
  return info.Env().Undefined();
}

// alloc(bytes[, zero = true]) → ArrayBuffer over engine memory (see engine_buffer); zero false: a
// reused block is not cleared (for a caller that overwrites all of it before anyone reads it);
// memoryStats() → live/cached bytes
Napi::Value Alloc(const Napi::CallbackInfo& info) {
  const std::int64_t bytes = int_of(info[0], "bytes", 0, std::int64_t(1) << 40);
  const bool zero = info.Length() < 2 || info[1].IsUndefined() || info[1].ToBoolean();
  return block_buffer(info.Env(), bhsd::Block::allocate(std::size_t(bytes), zero), std::size_t(bytes));
}

// detach(arrayBuffer): an external (engine) buffer's memory goes back now, not at collection; where
// it held weights packed by packConvWeights (their hash stored with the block), their transformed
// forms leave the Winograd weight cache too (WeightCache::forget)
Napi::Value Detach(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsArrayBuffer()) throw Napi::TypeError::New(env, "native: detach takes an ArrayBuffer");
  Napi::ArrayBuffer ab = info[0].As<Napi::ArrayBuffer>();
  std::array<std::uint64_t, 4> hash{};
  bool hashed = false;
  if (ab.ByteLength() > 0)
    if (auto b = bhsd::Block::find(ab.Data(), ab.ByteLength()))
      if (const auto* h = b->content_hash(ab.Data(), ab.ByteLength())) hash = *h, hashed = true;
  napi_status st = napi_detach_arraybuffer(env, info[0]);
  if (st != napi_ok) throw Napi::Error::New(env, "native: this ArrayBuffer cannot be detached");
  if (hashed) bhsd::wino_detail::WeightCache::instance().forget(hash);
  return env.Undefined();
}

// forgetWeights(w: Float32Array) → bytes: the weight cache forgets the forms it holds of weights a
// caller passed as they are (a transposed convolution's: keyed by their content, not by a packed
// block's stored hash), read now on this thread — their model is being disposed
Napi::Value ForgetWeights(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const ArrayInfo a = array_info(info[0], "w");
  if (a.type != bhsd::DType::f32) throw Napi::TypeError::New(env, "native: forgetWeights takes a Float32Array");
  if (a.length == 0 || a.data == nullptr) return Napi::Number::New(env, 0);
  const auto hash = bhsd::wino_detail::weights_identity(static_cast<const float*>(a.data), a.length, nullptr);
  return Napi::Number::New(env, double(bhsd::wino_detail::WeightCache::instance().forget(hash)));
}

Napi::Value MemoryStats(const Napi::CallbackInfo& info) {
  Napi::Object o = Napi::Object::New(info.Env());
  o.Set("liveBytes", double(bhsd::Block::live_bytes()));
  o.Set("cachedBytes", double(bhsd::Block::cached_bytes()));
  o.Set("weightCacheBytes", double(bhsd::wino_detail::WeightCache::instance().bytes()));
  return o;
}

Napi::Float64Array float64_of(Napi::Env env, const double* p, std::size_t n) {
  Napi::Float64Array a = Napi::Float64Array::New(env, n);
  std::copy(p, p + n, a.Data());
  return a;
}

// labelPairStats(gt: Uint8Array, pred: Uint8Array, nx, ny, nz, maxLabel) → Promise<{ counts, boxes }>
Napi::Value LabelPairStats(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  View gt = view_of(info[0], "gt"), pred = view_of(info[1], "pred");
  Dims d = dims_of(info, 2);
  const int L = int(int_of(info[5], "maxLabel", 0, 255));
  require(gt.type == bhsd::DType::u8 && pred.type == bhsd::DType::u8, env, "gt and pred must be Uint8Arrays");
  require(std::int64_t(gt.length) == d.n() && pred.length == gt.length, env, "gt and pred must have nx*ny*nz voxels");
  auto pool = pool_of(env);
  auto res = std::make_shared<bhsd::PairStats>();
  return PromiseWorker::Start(
      env,
      [=] {
        *res = bhsd::label_pair_stats(static_cast<const std::uint8_t*>(gt.data),
                                      static_cast<const std::uint8_t*>(pred.data), d.nx, d.ny, d.nz, L, *pool);
      },
      [res](Napi::Env e) -> Napi::Value {
        Napi::Object o = Napi::Object::New(e);
        o.Set("counts", float64_of(e, res->counts.data(), res->counts.size()));
        std::vector<double> boxes(res->boxes.begin(), res->boxes.end());
        o.Set("boxes", float64_of(e, boxes.data(), boxes.size()));
        return o;
      },
      {info[0], info[1]});
}

// surfaceMetrics(gt, pred, nx, ny, nz, sx, sy, sz, classes: Int32Array, boxes: Float64Array(6 per class), tau)
//   → Promise<Float64Array(10 per class)>: nPred nGt sumPG sumGP maxPG maxGP p95PG p95GP withinPG withinGP
Napi::Value SurfaceMetrics(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const SurfaceArgs a = surface_args(info);
  const View gt = a.gt, pred = a.pred;
  const Dims d = a.d;
  const double sx = a.sx, sy = a.sy, sz = a.sz, tau = a.tau;
  const auto classes = a.classes;
  const auto boxes = a.boxes;
  auto pool = pool_of(env);
  auto res = std::make_shared<std::vector<double>>();
  return PromiseWorker::Start(
      env,
      [=] {
        for (std::size_t k = 0; k < classes->size(); ++k) {
          bhsd::SurfaceMetrics m = bhsd::surface_metrics(static_cast<const std::uint8_t*>(gt.data),
                                                         static_cast<const std::uint8_t*>(pred.data), d.nx, d.ny, d.nz,
                                                         sx, sy, sz, (*classes)[k], boxes->data() + 6 * k, tau, *pool);
          res->insert(res->end(), {m.n_pred, m.n_gt, m.sum_pg, m.sum_gp, m.max_pg, m.max_gp, m.p95_pg, m.p95_gp,
                                   m.within_pg, m.within_gp});
        }
      },
      [res](Napi::Env e) -> Napi::Value { return float64_of(e, res->data(), res->size()); }, {info[0], info[1]});
}

}  // namespace

namespace bhsd_napi {
void RegisterTensorOps(Napi::Env env, Napi::Object exports);
}

namespace {

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
  exports.Set("alloc", Napi::Function::New<guarded<Alloc>>(env, "alloc"));
  exports.Set("cancelToken", Napi::Function::New<guarded<CancelToken>>(env, "cancelToken"));
  exports.Set("cancel", Napi::Function::New<guarded<Cancel>>(env, "cancel"));
  exports.Set("cancelNext", Napi::Function::New<guarded<CancelNext>>(env, "cancelNext"));
  exports.Set("setPrecision", Napi::Function::New<guarded<SetPrecision>>(env, "setPrecision"));
  exports.Set("detach", Napi::Function::New<guarded<Detach>>(env, "detach"));
  exports.Set("forgetWeights", Napi::Function::New<guarded<ForgetWeights>>(env, "forgetWeights"));
  exports.Set("memoryStats", Napi::Function::New<guarded<MemoryStats>>(env, "memoryStats"));
  exports.Set("fmaPeak", Napi::Function::New<guarded<FmaPeak>>(env, "fmaPeak"));
  exports.Set("voxelStats", Napi::Function::New<guarded<VoxelStats>>(env, "voxelStats"));
  exports.Set("rescaleToF32", Napi::Function::New<guarded<RescaleToF32>>(env, "rescaleToF32"));
  exports.Set("readScaled", Napi::Function::New<guarded<ReadScaled>>(env, "readScaled"));
  exports.Set("gunzip", Napi::Function::New<guarded<Gunzip>>(env, "gunzip"));
  exports.Set("connectedComponents", Napi::Function::New<guarded<ConnectedComponents>>(env, "connectedComponents"));
  exports.Set("componentStats", Napi::Function::New<guarded<ComponentStats>>(env, "componentStats"));
  exports.Set("componentSliceAreas", Napi::Function::New<guarded<ComponentSliceAreas>>(env, "componentSliceAreas"));
  exports.Set("selectComponents", Napi::Function::New<guarded<SelectComponents>>(env, "selectComponents"));
  exports.Set("narrowLabels", Napi::Function::New<guarded<NarrowLabels>>(env, "narrowLabels"));
  exports.Set("labelPairStats", Napi::Function::New<guarded<LabelPairStats>>(env, "labelPairStats"));
  exports.Set("surfaceMetrics", Napi::Function::New<guarded<SurfaceMetrics>>(env, "surfaceMetrics"));
  RegisterTensorOps(env, exports);
  return exports;
}

}  // namespace

NODE_API_MODULE(bhsd, Init)
