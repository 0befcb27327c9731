// bhsd — Node-API surface of the tensor operations (conv3d and the other U-Net ops). Shapes are
// checked in TypeScript first; here they are checked again against the arrays' lengths, so that
// no call can read or write outside them.
#include <cmath>
#include <memory>
#include <system_error>
#include <thread>
#include <vector>

#include "bhsd/attention.hpp"
#include "bhsd/conv.hpp"
#include "bhsd/gemm.hpp"
#include "bhsd/ssm.hpp"
#include "bhsd/tensor_ops.hpp"
#include "napi_util.hpp"

namespace bhsd_napi {
namespace {

// A convolution's work as PromiseWorker::Start estimates it: its multiply-adds (per output value ×
// output values) / 32 plus the bytes it moves — about the bytes an element-wise pass would move in
// the same time (~0.1 ms for 2 MB on 2 threads here).
inline double conv_work(double macs_per_value, double values, double floats, double per = 32.0) {
  return macs_per_value * values / per + floats * double(sizeof(float));
}
// conv3d's: Winograd's rate where the plan chose it (/32), the direct path's (/16) elsewhere; and a
// layer Winograd serves whose plan is not made yet is never run inline: its first call times the
// candidates (several runs of the layer, the transforms of its weights).
inline double conv3d_work(Napi::Env env, const bhsd::ConvGeom& g, double values, double floats) {
  if (!bhsd::winograd_applies(g)) return conv_work(double(g.K()), values, floats, 16.0);
  const bhsd::PrecisionScope precision(js_precision());  // the plan's key holds the call's precision
  const int planned = bhsd::winograd_planned(g, *pool_of(env));
  if (planned < 0) return HUGE_VAL;
  return conv_work(double(g.K()), values, floats, planned == 0 ? 16.0 : 32.0);
}

constexpr std::int64_t BIG = std::int64_t(1) << 40;

float* out_of(const Napi::Value& v, std::size_t n, const char* name) {
  return const_cast<float*>(floats_of(v, n, name, false, true));
}

bhsd::Act act_of(const Napi::Value& v) {
  const auto a = int_of(v, "act", 0, 2);
  return static_cast<bhsd::Act>(a);
}

// conv3d(x, [N, C, D, H, W], w, [Co, kd, kh, kw], bias|null, [sd, sh, sw], [dd, dh, dw], [pd, ph, pw],
//        groups, [Do, Ho, Wo], act, alpha, out[, packed|null[, scale|null, normBias|null, eps,
//        normAct, normAlpha[, residual|null[, normGroups]]]]) → Promise<void>
// packed: the weights as packConvWeights packed them. With the norm's arguments (act must then be
// none), the output is instance-normalised (and activated) in place after the convolution, in the
// same call: one trip through the worker threads instead of two, and no second buffer. With nulls
// in the norm's five places and a residual, the residual is added in place before `act`.
// The arguments both convolutions share: x, [N, C, D, H, W], w, [c, kd, kh, kw], bias, strides,
// dilations, pads, groups, [Do, Ho, Wo] (info[0..9]).
struct ConvArgs {
  std::vector<std::int64_t> in, ws, st, di, pa, os;
  std::int64_t groups;
  explicit ConvArgs(const Napi::CallbackInfo& info)
      : in(ints_of(info[1], 5, "input shape", 1, BIG)),
        ws(ints_of(info[3], 4, "weight shape", 1, BIG)),
        st(ints_of(info[5], 3, "strides", 1, BIG)),
        di(ints_of(info[6], 3, "dilations", 1, BIG)),
        pa(ints_of(info[7], 3, "pads", 0, BIG)),
        os(ints_of(info[9], 3, "output shape", 1, BIG)),
        groups(int_of(info[8], "groups", 1, BIG)) {}
};

Napi::Value Conv3d(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const ConvArgs c(info);
  const auto &in = c.in, &ws = c.ws, &st = c.st, &di = c.di, &pa = c.pa, &os = c.os;
  const std::int64_t groups = c.groups;
  const bhsd::Act act = act_of(info[10]);
  const float alpha = float(number_of(info[11], "alpha"));
  // the norm's arguments, where eps is given (null there: a residual alone, see below)
  const bool norm = info.Length() > 16 && !info[16].IsNull() && !info[16].IsUndefined();
  const std::int64_t N = in[0], C = in[1], Co = ws[0];
  require(C % groups == 0 && Co % groups == 0, env, "channels are not divisible by groups");
  const std::int64_t Cg = C / groups, Cog = Co / groups;
  const float* x = floats_of(info[0], elems(env, {N, C, in[2], in[3], in[4]}), "x");
  const float* w = floats_of(info[2], elems(env, {Co, Cg, ws[1], ws[2], ws[3]}), "w");
  const float* b = floats_of(info[4], std::size_t(Co), "bias", true);
  float* y = out_of(info[12], elems(env, {N, Co, os[0], os[1], os[2]}), "out");
  bhsd::ConvGeom g{Cg,    in[2], in[3], in[4], Cog,   ws[1], ws[2], ws[3], st[0], st[1],
                   st[2], di[0], di[1], di[2], pa[0], pa[1], pa[2], os[0], os[1], os[2]};
  // optional: the weights already packed by packConvWeights (a model's, packed once)
  const std::int64_t per_group = bhsd::packed_conv_size(Cog, g.K());
  const float* packed =
      info.Length() > 13 ? floats_of(info[13], elems(env, {groups, per_group}), "packed weights", true) : nullptr;
  const float* nscale = norm ? floats_of(info[14], std::size_t(Co), "norm scale", true) : nullptr;
  const float* nbias = norm ? floats_of(info[15], std::size_t(Co), "norm bias", true) : nullptr;
  const double eps = norm ? number_of(info[16], "eps") : 0.0;
  const bhsd::Act nact = norm ? act_of(info[17]) : bhsd::Act::none;
  const float nalpha = norm ? float(number_of(info[18], "norm alpha")) : 0.0f;
  require(!norm || act == bhsd::Act::none, env, "an activation before the norm is not fused");
  // optional after the norm's: a residual [N, Co, Do, Ho, Wo] added before the norm's activation —
  // or, with null in the norm's places, after the convolution, before `act` (MONAI SegResNet's
  // Conv → Add(skip): the sum in the same call, in place, while the output is in cache)
  const std::size_t nout = elems(env, {N, Co, os[0], os[1], os[2]});
  const bool has_res = info.Length() > 19 && !info[19].IsNull() && !info[19].IsUndefined();
  const float* res = has_res ? floats_of(info[19], nout, "residual") : nullptr;
  require(!res || res + nout <= y || y + nout <= res, env, "residual overlaps out");
  // optional after the residual: the norm's groups of consecutive channels (a GroupNorm: MONAI
  // SegResNet's Conv → GroupNorm → ReLU); Co, the default, is the instance norm
  const std::int64_t ngroups =
      norm && info.Length() > 20 && !info[20].IsUndefined() ? int_of(info[20], "norm groups", 1, Co) : Co;
  require(Co % ngroups == 0, env, "the norm's groups do not divide the output channels");
  require(ngroups == Co || !res, env, "a residual is added only after an instance norm (norm groups = channels)");
  auto pool = pool_of(env);
  return PromiseWorker::Start(
      env,
      [=] {
        const std::int64_t vin = g.D * g.H * g.W, vout = g.Do * g.Ho * g.Wo, K = g.K();
        const bhsd::Act conv_act = res && !norm ? bhsd::Act::none : act;  // (then after the sum)
        for (std::int64_t gi = 0; gi < groups; ++gi) {
          bhsd::EngineArray<float> own;
          if (!packed) own = bhsd::pack_conv_weights_block(w + gi * Cog * K, Cog, K);
          const float* wp = packed ? packed + gi * per_group : own.data();
          for (std::int64_t n = 0; n < N; ++n)
            bhsd::conv3d_forward(g, x + (n * C + gi * Cg) * vin, wp, b ? b + gi * Cog : nullptr,
                                 y + (n * Co + gi * Cog) * vout, conv_act, alpha, *pool);
        }
        if (norm && ngroups != Co)
          bhsd::group_norm(y, y, N, Co, vout, ngroups, nscale, nbias, eps, nact, nalpha, *pool);
        else if (norm)
          bhsd::instance_norm(y, y, N, Co, vout, nscale, nbias, eps, nact, nalpha, *pool, res);
        else if (res) {
          const std::int64_t shape[6] = {1, 1, 1, 1, 1, std::int64_t(nout)}, unit[6] = {0, 0, 0, 0, 0, 1};
          bhsd::binary(y, res, y, shape, unit, unit, false, *pool, act, alpha);
        }
      },
      nullptr,
      {info[0], info[2], info[4], info[12], info.Length() > 13 ? info[13] : env.Null(), norm ? info[14] : env.Null(),
       norm ? info[15] : env.Null(), has_res ? info[19] : env.Null()},
      conv3d_work(env, g, double(N * Co) * double(os[0] * os[1] * os[2]),
                  double(N * C) * double(in[2] * in[3] * in[4]) + double(Co * g.K()) * (packed ? 1 : 2)));
}

// packConvWeights(w, Co, K, groups) → Float32Array: w [Co, K] (K = C/groups · kd·kh·kw) packed per
// group for conv3d's micro-kernel, for weights that do not change (a model's).
Napi::Value PackConvWeights(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const std::int64_t Co = int_of(info[1], "Co", 1, BIG), K = int_of(info[2], "K", 1, BIG),
                     groups = int_of(info[3], "groups", 1, BIG);
  require(Co % groups == 0, env, "output channels are not divisible by groups");
  const float* w = floats_of(info[0], elems(env, {Co, K}), "w");
  const std::int64_t Cog = Co / groups, per_group = bhsd::packed_conv_size(Cog, K);
  const std::size_t n = elems(env, {groups, per_group});
  // every float is written below (zeros in the blocks' unused slots): a reused block is not cleared first
  // (kept while the model lives: its size exactly, not a larger freed block's)
  Napi::ArrayBuffer ab = block_buffer(env, bhsd::Block::allocate(n * sizeof(float), false, false), n * sizeof(float));
  auto* dst = static_cast<float*>(ab.Data());
  if (groups == 1) {
    // A model's weights are packed at its first run, on this thread while the pool runs nothing of
    // it; most of the time is the first touch of fresh pages (ResEnc-M's 407 MB: 0.5–0.85 s of its
    // first window on one thread of a VM that faults at ~0.5 GB/s). Big ones are split by blocks
    // over threads of their own (the pool may be running another caller's work), as many as the
    // pool has: where a thread cannot start, this one packs its share.
    const std::int64_t blocks = bhsd::CoBlocks(Co).count();
    const std::int64_t parts =
        n * sizeof(float) >= (std::size_t(4) << 20) ? std::min<std::int64_t>(blocks, pool_of(env)->size()) : 1;
    const auto part = [=](std::int64_t i) {
      bhsd::pack_conv_weights_into(w, Co, K, dst, blocks * i / parts, blocks * (i + 1) / parts);
    };
    std::vector<std::thread> helpers;
    helpers.reserve(std::size_t(parts - 1));  // (before any starts: a throw below leaves none unjoined)
    std::int64_t started = 1;                 // part 0 is this thread's
    try {
      for (; started < parts; ++started) helpers.emplace_back(part, started);
    } catch (const std::system_error&) {  // (no thread to be had: the rest here)
    }
    part(0);
    for (std::int64_t i = started; i < parts; ++i) part(i);
    for (auto& t : helpers) t.join();
  } else
    for (std::int64_t gi = 0; gi < groups; ++gi)
      bhsd::pack_conv_weights_into(w + gi * Cog * K, Cog, K, dst + gi * per_group);
  // weights packed once are never written again (NativeBackend keeps them to itself): their hash,
  // stored with the block now, is what the Winograd weight cache finds them by on every call
  if (groups == 1)
    if (auto b = bhsd::Block::find(dst, n * sizeof(float)))
      b->set_content_hash(bhsd::wino_detail::weights_hash(dst, n),
                          n * sizeof(float));  // (this thread alone: the pool may be busy with a running call)
  return Napi::Float32Array::New(env, n, ab, 0);
}

// convTranspose3d(x, [N, C, D, H, W], w, [Cog, kd, kh, kw], bias|null, strides, dilations, pads,
//                 groups, [Do, Ho, Wo], out) → Promise<void>; w is [C, Cog, kd, kh, kw]
Napi::Value ConvTranspose3d(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const ConvArgs c(info);
  const auto &in = c.in, &ws = c.ws, &st = c.st, &di = c.di, &pa = c.pa, &os = c.os;
  const std::int64_t groups = c.groups;
  const std::int64_t N = in[0], C = in[1], Cog = ws[0], Co = Cog * groups;
  require(C % groups == 0, env, "channels are not divisible by groups");
  const std::int64_t Cg = C / groups;
  const float* x = floats_of(info[0], elems(env, {N, C, in[2], in[3], in[4]}), "x");
  const float* w = floats_of(info[2], elems(env, {C, Cog, ws[1], ws[2], ws[3]}), "w");
  const float* b = floats_of(info[4], std::size_t(Co), "bias", true);
  float* y = out_of(info[10], elems(env, {N, Co, os[0], os[1], os[2]}), "out");
  auto pool = pool_of(env);
  return PromiseWorker::Start(
      env,
      [=] {
        const std::int64_t vin = in[2] * in[3] * in[4], vout = os[0] * os[1] * os[2], ksp = ws[1] * ws[2] * ws[3];
        // (depthwise, undilated: every channel in one pass)
        if (Cg == 1 && Cog == 1 && groups > 1 && di[0] == 1 && di[1] == 1 && di[2] == 1) {
          for (std::int64_t n = 0; n < N; ++n)
            bhsd::conv_transpose3d_depthwise(C, in[2], in[3], in[4], ws[1], ws[2], ws[3], st[0], st[1], st[2], pa[0],
                                             pa[1], pa[2], os[0], os[1], os[2], x + n * C * vin, w, b,
                                             y + n * Co * vout, *pool);
          return;
        }
        for (std::int64_t gi = 0; gi < groups; ++gi)
          for (std::int64_t n = 0; n < N; ++n)
            bhsd::conv_transpose3d_forward(Cg, in[2], in[3], in[4], Cog, ws[1], ws[2], ws[3], st[0], st[1], st[2],
                                           di[0], di[1], di[2], pa[0], pa[1], pa[2], os[0], os[1], os[2],
                                           x + (n * C + gi * Cg) * vin, w + gi * Cg * Cog * ksp,
                                           b ? b + gi * Cog : nullptr, y + (n * Co + gi * Cog) * vout, *pool);
      },
      nullptr, {info[0], info[2], info[4], info[10]},
      conv_work(double(N * C) * double(Cog) * double(ws[1] * ws[2] * ws[3]), double(in[2] * in[3] * in[4]),
                N * (C * in[2] * in[3] * in[4] + Co * os[0] * os[1] * os[2])));
}

// instanceNorm(x, N, C, spatial, scale|null, bias|null, eps, act, alpha, out)
Napi::Value InstanceNorm(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const std::int64_t N = int_of(info[1], "N", 1, BIG), C = int_of(info[2], "C", 1, BIG),
                     S = int_of(info[3], "spatial", 1, BIG);
  const float* x = floats_of(info[0], elems(env, {N, C, S}), "x");
  const float* sc = floats_of(info[4], std::size_t(C), "scale", true);
  const float* bi = floats_of(info[5], std::size_t(C), "bias", true);
  const double eps = number_of(info[6], "eps");
  const bhsd::Act act = act_of(info[7]);
  const float alpha = float(number_of(info[8], "alpha"));
  float* y = out_of(info[9], elems(env, {N, C, S}), "out");
  auto pool = pool_of(env);
  return PromiseWorker::Start(
      env, [=] { bhsd::instance_norm(x, y, N, C, S, sc, bi, eps, act, alpha, *pool); }, nullptr,
      {info[0], info[4], info[5], info[9]}, 3.0 * double(N * C * S) * sizeof(float));
}

// groupNorm(x, N, C, spatial, groups, scale|null, bias|null, eps, act, alpha, out): scale/bias per channel
Napi::Value GroupNorm(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const std::int64_t N = int_of(info[1], "N", 1, BIG), C = int_of(info[2], "C", 1, BIG),
                     S = int_of(info[3], "spatial", 1, BIG);
  const std::int64_t G = int_of(info[4], "groups", 1, C);
  if (C % G) throw Napi::RangeError::New(env, "native: groups must divide the channels");
  const float* x = floats_of(info[0], elems(env, {N, C, S}), "x");
  const float* sc = floats_of(info[5], std::size_t(C), "scale", true);
  const float* bi = floats_of(info[6], std::size_t(C), "bias", true);
  const double eps = number_of(info[7], "eps");
  const bhsd::Act act = act_of(info[8]);
  const float alpha = float(number_of(info[9], "alpha"));
  float* y = out_of(info[10], elems(env, {N, C, S}), "out");
  auto pool = pool_of(env);
  return PromiseWorker::Start(
      env, [=] { bhsd::group_norm(x, y, N, C, S, G, sc, bi, eps, act, alpha, *pool); }, nullptr,
      {info[0], info[5], info[6], info[10]}, 3.0 * double(N * C * S) * sizeof(float));
}

// instanceNormBackward(x, gate|null, dy, N, C, spatial, gamma|null, eps, alpha, dx, dgamma, dbeta)
Napi::Value InstanceNormBackward(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const std::int64_t N = int_of(info[3], "N", 1, BIG), C = int_of(info[4], "C", 1, BIG),
                     S = int_of(info[5], "spatial", 1, BIG);
  const std::size_t n = elems(env, {N, C, S});
  const float* x = floats_of(info[0], n, "x");
  const float* gate = floats_of(info[1], n, "gate", true);
  const float* dy = floats_of(info[2], n, "dy");
  const float* gamma = floats_of(info[6], std::size_t(C), "gamma", true);
  const double eps = number_of(info[7], "eps");
  const float alpha = float(number_of(info[8], "alpha"));
  float* dx = out_of(info[9], n, "dx");
  float* dg = out_of(info[10], std::size_t(C), "dgamma");
  float* db = out_of(info[11], std::size_t(C), "dbeta");
  auto pool = pool_of(env);
  return PromiseWorker::Start(
      env, [=] { bhsd::instance_norm_backward(x, gate, dy, N, C, S, gamma, eps, alpha, dx, dg, db, *pool); }, nullptr,
      {info[0], info[1], info[2], info[6], info[9], info[10], info[11]});
}

// batchNorm(x, N, C, spatial, scale, bias, mean, var, eps, out)
Napi::Value BatchNorm(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const std::int64_t N = int_of(info[1], "N", 1, BIG), C = int_of(info[2], "C", 1, BIG),
                     S = int_of(info[3], "spatial", 1, BIG);
  const float* x = floats_of(info[0], elems(env, {N, C, S}), "x");
  const float *sc = floats_of(info[4], std::size_t(C), "scale"), *bi = floats_of(info[5], std::size_t(C), "bias"),
              *mu = floats_of(info[6], std::size_t(C), "mean"), *va = floats_of(info[7], std::size_t(C), "var");
  const double eps = number_of(info[8], "eps");
  float* y = out_of(info[9], elems(env, {N, C, S}), "out");
  auto pool = pool_of(env);
  return PromiseWorker::Start(
      env, [=] { bhsd::batch_norm(x, y, N, C, S, sc, bi, mu, va, eps, *pool); }, nullptr,
      {info[0], info[4], info[5], info[6], info[7], info[9]}, 2.0 * double(N * C * S) * sizeof(float));
}

static bool disjoint(const float* a, std::size_t na, const float* b, std::size_t nb) {
  return a + na <= b || b + nb <= a;
}

// unary(x, N, C, spatial, op, alpha, slope|null, out): out is x (in place) or apart from it — a
// partial overlap of engine memory (a subarray of one block) would read values already written
// (arrays of the caller's own memory are copied, and such an overlap refused, by view_of)
Napi::Value Unary(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const std::int64_t N = int_of(info[1], "N", 1, BIG), C = int_of(info[2], "C", 1, BIG),
                     S = int_of(info[3], "spatial", 1, BIG);
  const float* x = floats_of(info[0], elems(env, {N, C, S}), "x");
  const auto op = static_cast<bhsd::Unary>(int_of(info[4], "op", 0, 5));
  const float alpha = float(number_of(info[5], "alpha"));
  std::int64_t slope_len = 0;
  const float* slope = nullptr;
  if (op == bhsd::Unary::prelu) {
    View sv = view_of(info[6], "slope");
    require(sv.type == bhsd::DType::f32 && (sv.length == 1 || std::int64_t(sv.length) == C), env,
            "slope must have 1 or C values");
    slope = static_cast<const float*>(sv.data), slope_len = std::int64_t(sv.length);
  }
  float* y = out_of(info[7], elems(env, {N, C, S}), "out");
  const std::size_t n = elems(env, {N, C, S});
  require(x == y || disjoint(x, n, y, n), env, "out overlaps x other than as x itself (in place)");
  require(!slope || disjoint(slope, std::size_t(slope_len), y, n), env, "out overlaps slope");
  auto pool = pool_of(env);
  return PromiseWorker::Start(
      env, [=] { bhsd::unary(x, y, N, C, S, op, alpha, slope, slope_len, *pool); }, nullptr,
      {info[0], info[6], info[7]}, 2.0 * double(N * C * S) * sizeof(float));
}

// channelNorm(x, N, C, spatial, gamma | null, beta | null, eps, out): tensor_ops' channel_norm
Napi::Value ChannelNorm(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const std::int64_t N = int_of(info[1], "N", 1, BIG), C = int_of(info[2], "C", 1, BIG),
                     S = int_of(info[3], "spatial", 1, BIG);
  const std::size_t n = elems(env, {N, C, S});
  const float* x = floats_of(info[0], n, "x");
  const float* g = floats_of(info[4], std::size_t(C), "gamma", true);
  const float* b = floats_of(info[5], std::size_t(C), "beta", true);
  const double eps = number_of(info[6], "eps");
  require(eps >= 0, env, ("eps must be a non-negative number, got " + std::to_string(eps)).c_str());
  float* y = out_of(info[7], n, "out");
  // (x is read across the channels after out's positions are written: no overlap at all; γ and β
  // are read by every thread while others write out)
  require(x + n <= y || y + n <= x, env, "x overlaps out");
  require(!g || g + C <= y || y + n <= g, env, "gamma overlaps out");
  require(!b || b + C <= y || y + n <= b, env, "beta overlaps out");
  auto pool = pool_of(env);
  return PromiseWorker::Start(
      env, [=] { bhsd::channel_norm(x, y, N, C, S, g, b, eps, *pool); }, nullptr, {info[0], info[4], info[5], info[7]},
      3.0 * double(n) * sizeof(float));
}

// Overlap of two float ranges (out must overlap nothing a kernel reads: they read across tokens).
// mambaConv(xz, B, L, Di, K, weight, bias | null, out): ssm.hpp's mamba_conv
Napi::Value MambaConv(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const std::int64_t B = int_of(info[1], "B", 1, BIG), L = int_of(info[2], "L", 1, BIG),
                     Di = int_of(info[3], "Di", 1, 1 << 16), K = int_of(info[4], "K", 1, 16);
  const std::size_t nx = elems(env, {B, L, 2, Di}), n = elems(env, {B, L, Di});
  const float* xz = floats_of(info[0], nx, "xz");
  const float* w = floats_of(info[5], std::size_t(Di * K), "weight");
  const float* b = floats_of(info[6], std::size_t(Di), "bias", true);
  float* y = out_of(info[7], n, "out");
  require(
      disjoint(xz, nx, y, n) && disjoint(w, std::size_t(Di * K), y, n) && (!b || disjoint(b, std::size_t(Di), y, n)),
      env, "out overlaps an input");
  auto pool = pool_of(env);
  return PromiseWorker::Start(
      env, [=] { bhsd::mamba_conv(xz, w, b, y, B, L, Di, K, *pool); }, nullptr, {info[0], info[5], info[6], info[7]},
      double(nx + n) * sizeof(float));
}

// selectiveScan(u, delta, aLog, xDbl, d, xz, B, L, Di, N, R, out): ssm.hpp's selective_scan
Napi::Value SelectiveScan(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const std::int64_t B = int_of(info[6], "B", 1, BIG), L = int_of(info[7], "L", 1, BIG),
                     Di = int_of(info[8], "Di", 1, 1 << 16), N = int_of(info[9], "N", 1, 256),
                     R = int_of(info[10], "R", 0, 1 << 16);
  const std::size_t n = elems(env, {B, L, Di}), nx = elems(env, {B, L, R + 2 * N}), nz = elems(env, {B, L, 2, Di});
  const float* u = floats_of(info[0], n, "u");
  const float* delta = floats_of(info[1], n, "delta");
  const float* a = floats_of(info[2], std::size_t(Di * N), "A_log");
  const float* x = floats_of(info[3], nx, "x_dbl");
  const float* d = floats_of(info[4], std::size_t(Di), "D");
  const float* z = floats_of(info[5], nz, "xz");
  float* y = out_of(info[11], n, "out");
  require(disjoint(u, n, y, n) && disjoint(delta, n, y, n) && disjoint(a, std::size_t(Di * N), y, n) &&
              disjoint(x, nx, y, n) && disjoint(d, std::size_t(Di), y, n) && disjoint(z, nz, y, n),
          env, "out overlaps an input");
  auto pool = pool_of(env);
  return PromiseWorker::Start(
      env, [=] { bhsd::selective_scan(u, delta, a, x, d, z, y, B, L, Di, N, R, *pool); }, nullptr,
      {info[0], info[1], info[2], info[3], info[4], info[5], info[11]},
      // (the state's updates — an exponential and two multiply-adds each, B·L·Di·N of them — and
      // Di·N exponentials in double before them: not only the bytes, or a scan with a large state
      // ran inline on the JavaScript thread for 100 ms)
      double(3 * n + nx + nz) * sizeof(float) + 32.0 * double(n) * double(N) + 64.0 * double(Di * N));
}

// transposeLast2(x, outer, rows, cols, out): tensor_ops' transpose_last2
Napi::Value TransposeLast2(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const std::int64_t outer = int_of(info[1], "outer", 1, BIG), rows = int_of(info[2], "rows", 1, BIG),
                     cols = int_of(info[3], "cols", 1, BIG);
  const std::size_t n = elems(env, {outer, rows, cols});
  const float* x = floats_of(info[0], n, "x");
  float* y = out_of(info[4], n, "out");
  require(disjoint(x, n, y, n), env, "x overlaps out");
  auto pool = pool_of(env);
  return PromiseWorker::Start(
      env, [=] { bhsd::transpose_last2(x, y, outer, rows, cols, *pool); }, nullptr, {info[0], info[4]},
      2.0 * double(n) * sizeof(float));
}

// binary(a, b, shape[6], stridesA[6], stridesB[6], mul, out)
Napi::Value Binary(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto sh = ints_of(info[2], 6, "shape", 1, BIG), sa = ints_of(info[3], 6, "strides of a", 0, BIG),
       sb = ints_of(info[4], 6, "strides of b", 0, BIG);
  const bool mul = info[5].ToBoolean();
  // optional: the activation stored with each value (0 none, 1 relu, 2 leaky) and its slope
  const auto act = info.Length() > 7 && !info[7].IsUndefined() ? static_cast<bhsd::Act>(int_of(info[7], "act", 0, 2))
                                                               : bhsd::Act::none;
  const float alpha = info.Length() > 8 && !info[8].IsUndefined() ? float(number_of(info[8], "alpha")) : 0.0f;
  std::int64_t n = 1, la = 1, lb = 1;
  for (int i = 0; i < 6; ++i) n *= sh[i], la += (sh[i] - 1) * sa[i], lb += (sh[i] - 1) * sb[i];
  View va = view_of(info[0], "a"), vb = view_of(info[1], "b");
  require(va.type == bhsd::DType::f32 && vb.type == bhsd::DType::f32, env, "a and b must be Float32Arrays");
  require(std::int64_t(va.length) >= la && std::int64_t(vb.length) >= lb, env, "strides reach past a or b");
  float* y = out_of(info[6], std::size_t(n), "out");
  const float *a = static_cast<const float*>(va.data), *b = static_cast<const float*>(vb.data);
  // out is an operand read in its own layout (in place) or apart from it: a partial overlap, or an
  // operand broadcast or transposed under out, would read values already written
  const auto same_layout = [&](const std::vector<std::int64_t>& st) {
    std::int64_t step = 1;
    for (int i = 5; i >= 0; --i) {
      if (sh[i] != 1 && st[i] != step) return false;
      step *= sh[i];
    }
    return true;
  };
  require((a == y && same_layout(sa)) || disjoint(a, std::size_t(la), y, std::size_t(n)), env,
          "out overlaps a other than as a itself (in place)");
  require((b == y && same_layout(sb)) || disjoint(b, std::size_t(lb), y, std::size_t(n)), env,
          "out overlaps b other than as b itself (in place)");
  auto pool = pool_of(env);
  return PromiseWorker::Start(
      env, [=] { bhsd::binary(a, b, y, sh.data(), sa.data(), sb.data(), mul, *pool, act, alpha); }, nullptr,
      {info[0], info[1], info[6]}, 3.0 * double(n) * sizeof(float));
}

// pool3d(x, NC, [D, H, W], [Do, Ho, Wo], k[3], s[3], d[3], p[3], max, countIncludePad, out)
Napi::Value Pool3d(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const std::int64_t NC = int_of(info[1], "NC", 1, BIG);
  auto in = ints_of(info[2], 3, "input extent", 1, BIG), os = ints_of(info[3], 3, "output extent", 1, BIG);
  auto k = ints_of(info[4], 3, "kernel", 1, BIG), s = ints_of(info[5], 3, "strides", 1, BIG),
       d = ints_of(info[6], 3, "dilations", 1, BIG), p = ints_of(info[7], 3, "pads", 0, BIG);
  const bool mx = info[8].ToBoolean(), cip = info[9].ToBoolean();
  const float* x = floats_of(info[0], elems(env, {NC, in[0], in[1], in[2]}), "x");
  float* y = out_of(info[10], elems(env, {NC, os[0], os[1], os[2]}), "out");
  auto pool = pool_of(env);
  return PromiseWorker::Start(
      env,
      [=] {
        bhsd::pool3d(x, y, NC, in[0], in[1], in[2], os[0], os[1], os[2], k.data(), s.data(), d.data(), p.data(), mx,
                     cip, *pool);
      },
      nullptr, {info[0], info[10]},
      double(NC) *
          (double(in[0] * in[1] * in[2]) + double(os[0] * os[1] * os[2]) * double(k[0]) * double(k[1]) * double(k[2])) *
          sizeof(float));
}

// resize3d(x, NC, in[3], out[3], scales: Float64Array(3), linear, coordMode, nearestMode, y)
Napi::Value Resize3d(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const std::int64_t NC = int_of(info[1], "NC", 1, BIG);
  auto in = ints_of(info[2], 3, "input extent", 1, BIG), os = ints_of(info[3], 3, "output extent", 1, BIG);
  View sv = view_of(info[4], "scales");
  require(sv.type == bhsd::DType::f64 && sv.length == 3, env, "scales must be a Float64Array of 3");
  const double* sp = static_cast<const double*>(sv.data);
  std::vector<double> scales(sp, sp + 3);
  const bool linear = info[5].ToBoolean();
  const auto cm = static_cast<bhsd::CoordMode>(int_of(info[6], "coordMode", 0, 3));
  const auto nm = static_cast<bhsd::NearestMode>(int_of(info[7], "nearestMode", 0, 3));
  const float* x = floats_of(info[0], elems(env, {NC, in[0], in[1], in[2]}), "x");
  float* y = out_of(info[8], elems(env, {NC, os[0], os[1], os[2]}), "out");
  auto pool = pool_of(env);
  return PromiseWorker::Start(
      env, [=] { bhsd::resize3d(x, y, NC, in.data(), os.data(), scales.data(), linear, cm, nm, *pool); }, nullptr,
      {info[0], info[8]},
      double(NC) * (double(in[0] * in[1] * in[2]) + double(os[0] * os[1] * os[2]) * (linear ? 2 : 1)) * sizeof(float));
}

// preciseConvolutions(delta: 1 | -1) → the count after it: while above 0, Winograd convolutions use
// F(2×…) tiles (bhsd::wino_detail::precise_tiles; training holds it for a forward and backward).
Napi::Value PreciseConvolutions(const Napi::CallbackInfo& info) {
  const std::int64_t d = int_of(info[0], "delta", -1, 1);
  auto& n = bhsd::wino_detail::precise_tiles();
  int v = n.load();
  while (!n.compare_exchange_weak(v, std::max(0, v + int(d)))) {
  }
  return Napi::Number::New(info.Env(), std::max(0, v + int(d)));
}

// convPlanExport() → number[]: the convolution plan's entries, kPlanEntryValues numbers each
// (bhsd::plan_export). convPlanImport(numbers) → the entries taken, or −1 where the numbers are no
// plan (bhsd::plan_import); at most kPlanMaxEntries entries. convPlanClear(): forgets the plan.
constexpr std::size_t kPlanMaxEntries = std::size_t(1) << 16;
Napi::Value ConvPlanExport(const Napi::CallbackInfo& info) {
  const std::vector<std::int64_t> v = bhsd::plan_export();
  Napi::Array a = Napi::Array::New(info.Env(), v.size());
  for (std::size_t i = 0; i < v.size(); ++i) a.Set(uint32_t(i), Napi::Number::New(info.Env(), double(v[i])));
  return a;
}
Napi::Value ConvPlanImport(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsArray()) throw Napi::TypeError::New(env, "native: plan must be an array of integers");
  Napi::Array a = info[0].As<Napi::Array>();
  const std::size_t n = a.Length();
  require(n <= kPlanMaxEntries * bhsd::kPlanEntryValues, env, "plan has too many entries");
  std::vector<std::int64_t> v(n);
  for (std::size_t i = 0; i < n; ++i) v[i] = int_of(a.Get(uint32_t(i)), "plan value", -BIG, BIG);
  return Napi::Number::New(env, double(bhsd::plan_import(v.data(), v.size())));
}
Napi::Value ConvPlanClear(const Napi::CallbackInfo& info) {
  bhsd::plan_clear();
  return info.Env().Undefined();
}

// accumulateWindow(acc, weight, logits, gauss, C, grid[3], patch[3], at[3], scale) → Promise<void>:
// segment()'s sliding-window sum of one window (bhsd::accumulate_window). The window must lie inside
// the grid, and every array have exactly its size (the sizes' products checked before they are used).
Napi::Value AccumulateWindow(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const std::int64_t C = int_of(info[4], "C", 1, 1 << 16);
  const auto grid = ints_of(info[5], 3, "grid", 1, BIG), patch = ints_of(info[6], 3, "patch", 1, BIG),
             at = ints_of(info[7], 3, "at", 0, BIG);
  for (int i = 0; i < 3; ++i)
    require(at[std::size_t(i)] + patch[std::size_t(i)] <= grid[std::size_t(i)], env,
            "the window must lie inside the grid");
  const double limit = double(std::int64_t(1) << 42);  // well past any array's length; products stay exact
  const double vol = double(grid[0]) * double(grid[1]) * double(grid[2]),
               pv = double(patch[0]) * double(patch[1]) * double(patch[2]);
  require(vol * double(C) <= limit, env, "the grid is too large");
  const double scale = number_of(info[8], "scale");
  require(std::isfinite(scale), env, "scale must be finite");
  float* acc = out_of(info[0], std::size_t(vol) * std::size_t(C), "acc");
  float* weight = out_of(info[1], std::size_t(vol), "weight");
  const float* logits = floats_of(info[2], std::size_t(pv) * std::size_t(C), "logits");
  const float* gauss = floats_of(info[3], std::size_t(pv), "gauss");
  auto pool = pool_of(env);
  return PromiseWorker::Start(env,
                              [=] {
                                bhsd::accumulate_window(acc, weight, logits, gauss, C, grid.data(), patch.data(),
                                                        at.data(), scale, *pool);
                              },
                              nullptr, {info[0], info[1], info[2], info[3]});
}

// softmax(x, N, C, spatial, out) / argmax(x, N, C, spatial, out: Int32Array)
Napi::Value Softmax(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const std::int64_t N = int_of(info[1], "N", 1, BIG), C = int_of(info[2], "C", 1, BIG),
                     S = int_of(info[3], "spatial", 1, BIG);
  const float* x = floats_of(info[0], elems(env, {N, C, S}), "x");
  float* y = out_of(info[4], elems(env, {N, C, S}), "out");
  const std::size_t n = elems(env, {N, C, S});
  require(x == y || disjoint(x, n, y, n), env, "out overlaps x other than as x itself (in place)");
  auto pool = pool_of(env);
  return PromiseWorker::Start(
      env, [=] { bhsd::softmax_channels(x, y, N, C, S, *pool); }, nullptr, {info[0], info[4]},
      4.0 * double(N * C * S) * sizeof(float));  // an exp a value
}

// softmaxDivided(x, div, N, C, spatial, out): the softmax over C of x[n, c, i] / div[n, i] (each
// quotient rounded to float first, as a Float32Array holding it would): segment()'s window-weighted
// sums and their weights in one pass
Napi::Value SoftmaxDivided(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const std::int64_t N = int_of(info[2], "N", 1, BIG), C = int_of(info[3], "C", 1, BIG),
                     S = int_of(info[4], "spatial", 1, BIG);
  const float* x = floats_of(info[0], elems(env, {N, C, S}), "x");
  const float* d = floats_of(info[1], elems(env, {N, S}), "div");
  const std::size_t ny = elems(env, {N, C, S}), nd = elems(env, {N, S});
  float* y = out_of(info[5], ny, "out");
  // the divisors are read while out is written: a div inside out would be overwritten unread
  require(d + nd <= y || y + ny <= d, env, "div overlaps out");
  auto pool = pool_of(env);
  return PromiseWorker::Start(
      env, [=] { bhsd::softmax_channels(x, y, N, C, S, *pool, d); }, nullptr, {info[0], info[1], info[5]},
      4.0 * double(N * C * S) * sizeof(float));
}

// gemm(a, b, batches, M, K, N, bBatched, out): out[t] = a[t] · b[t or 0], row-major, contiguous
Napi::Value Gemm(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const std::int64_t T = int_of(info[2], "batches", 1, BIG), M = int_of(info[3], "M", 1, BIG),
                     K = int_of(info[4], "K", 1, BIG), N = int_of(info[5], "N", 1, BIG);
  const bool bb = info[6].ToBoolean();
  // every product below 2^40 before any is formed from the next factor
  require(
      M <= BIG / K && M <= BIG / N && K <= BIG / N && T <= BIG / (M * K) && T <= BIG / (M * N) && T <= BIG / (K * N),
      env, "gemm: batches × M × K × N is too large");
  const float* a = floats_of(info[0], elems(env, {T, M, K}), "a");
  const float* b = floats_of(info[1], elems(env, {bb ? T : 1, K, N}), "b");
  float* y = out_of(info[7], elems(env, {T, M, N}), "out");
  // optional: the bias, one value per column, added to each finished sum (MatMul → Add fused)
  const float* bias = info.Length() > 8 ? floats_of(info[8], std::size_t(N), "bias", true) : nullptr;
  const std::size_t ny = elems(env, {T, M, N});
  require(!bias || bias + N <= y || y + ny <= bias, env, "bias overlaps out");
  auto pool = pool_of(env);
  std::vector<Napi::Value> keep{info[0], info[1], info[7]};
  if (bias) keep.push_back(info[8]);
  return PromiseWorker::Start(
      env, [=] { bhsd::gemm(a, b, y, T, M, K, N, bb, *pool, bias); }, nullptr, std::move(keep),
      conv_work(double(K), double(T * M * N), double(T * M * K + (bb ? T : 1) * K * N + T * M * N), 24.0));
}

// attention(qkv, [batch, n, heads, hd], scale, scaleQ, [[data, offsets: Float64Array, rowStride]…], out[, rope]):
// attention.hpp's fused self-attention; out [batch, n, heads·hd]. Each additive term's offsets
// (batch·heads of them, −1 for a block of zeros) are copied and checked against its array here.
// rope (optional): a rotary embedding's table, Float32Array [n, 2·hd] (cos, then signed sin), hd even.
Napi::Value Attention(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const auto dims = ints_of(info[1], 4, "attention shape", 1, BIG);
  const std::int64_t B = dims[0], n = dims[1], H = dims[2], hd = dims[3];
  const float scale = float(number_of(info[2], "scale"));
  const bool scale_q = info[3].ToBoolean();
  const float* qkv = floats_of(info[0], elems(env, {B, n, 3, H, hd}), "qkv");
  const std::size_t no = elems(env, {B, n, H, hd});
  float* y = out_of(info[5], no, "out");
  require(qkv + elems(env, {B, n, 3, H, hd}) <= y || y + no <= qkv, env, "qkv overlaps out");
  require(info[4].IsArray(), env, "extras must be an array");
  Napi::Array xs = info[4].As<Napi::Array>();
  require(xs.Length() <= 4, env, "attention takes at most 4 additive terms");
  const std::size_t items = elems(env, {B, H});
  auto offsets = std::make_shared<std::vector<std::vector<std::int64_t>>>();
  auto extras = std::make_shared<std::vector<bhsd::AttentionExtra>>();
  std::vector<Napi::Value> keep{info[0], info[5]};
  for (std::uint32_t e = 0; e < xs.Length(); ++e) {
    Napi::Value item = xs.Get(e);
    require(item.IsArray() && item.As<Napi::Array>().Length() == 3, env,
            "each extra must be [data, offsets, rowStride]");
    Napi::Array a = item.As<Napi::Array>();
    View d = view_of(a.Get(0u), "extra data");
    View o = view_of(a.Get(1u), "extra offsets");
    require(d.type == bhsd::DType::f32, env, "extra data must be a Float32Array");
    require(o.type == bhsd::DType::f64 && o.length == items, env,
            "extra offsets must be a Float64Array of batch*heads");
    const std::int64_t rs = int_of(a.Get(2u), "extra rowStride", 0, BIG);
    require(rs == 0 || rs == n, env, "extra rowStride must be 0 or n");
    // the values an item's block reaches: n · n, or one row of n (checked products: no wrap)
    const std::int64_t span = std::int64_t(rs ? elems(env, {n, n}) : elems(env, {n}));
    // an extra read while out is written must not lie inside it
    const float* ed = static_cast<const float*>(d.data);
    require(ed + d.length <= y || y + no <= ed, env, "an extra overlaps out");
    std::vector<std::int64_t> off(items);
    const double* od = static_cast<const double*>(o.data);
    for (std::size_t i = 0; i < items; ++i) {
      const double v = od[i];
      require(v == -1 || (v >= 0 && v == std::floor(v) && v + double(span) <= double(d.length)), env,
              "an extra's offset is outside its array");
      off[i] = std::int64_t(v);
    }
    offsets->push_back(std::move(off));
    extras->push_back({static_cast<const float*>(d.data), nullptr, rs});
    keep.push_back(a.Get(0u));
  }
  for (std::size_t e = 0; e < extras->size(); ++e) (*extras)[e].offsets = (*offsets)[e].data();
  bhsd::AttentionShape sh{B, n, H, hd, scale, scale_q};
  if (info.Length() > 6 && !info[6].IsUndefined()) {
    require(hd % 2 == 0, env, ("a rotary embedding needs an even head width, got " + std::to_string(hd)).c_str());
    const float* rope = floats_of(info[6], elems(env, {n, 2, hd}), "rope");
    require(rope + elems(env, {n, 2, hd}) <= y || y + no <= rope, env, "rope overlaps out");
    sh.rope = rope;
    keep.push_back(info[6]);
  }
  auto pool = pool_of(env);
  return PromiseWorker::Start(
      env,
      [=] {
        (void)offsets;  // (held with the call: the terms point into it)
        bhsd::attention(qkv, y, sh, extras->data(), int(extras->size()), *pool);
      },
      nullptr, std::move(keep), conv_work(double(2 * hd + 24), double(B * H * n * n), double(4 * no)));
}

Napi::Value Argmax(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const std::int64_t N = int_of(info[1], "N", 1, BIG), C = int_of(info[2], "C", 1, BIG),
                     S = int_of(info[3], "spatial", 1, BIG);
  const float* x = floats_of(info[0], elems(env, {N, C, S}), "x");
  View o = out_view_of(info[4], "out");
  require(o.type == bhsd::DType::i32 && std::int64_t(o.length) == N * S, env, "out must be an Int32Array of N*spatial");
  auto* y = static_cast<std::int32_t*>(o.data);
  auto pool = pool_of(env);
  return PromiseWorker::Start(env, [=] { bhsd::argmax_channels(x, y, N, C, S, *pool); }, nullptr, {info[0], info[4]});
}

// concat([x...], [len...], outer, inner, out)
Napi::Value Concat(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  require(info[0].IsArray() && info[1].IsArray(), env, "concat needs arrays of inputs and lengths");
  Napi::Array xs = info[0].As<Napi::Array>();
  const std::size_t k = xs.Length();
  auto lens = ints_of(info[1], k, "lengths", 0, BIG);
  const std::int64_t outer = int_of(info[2], "outer", 1, BIG), inner = int_of(info[3], "inner", 1, BIG);
  std::vector<const float*> ptrs(k);
  std::vector<Napi::Value> keep;
  std::int64_t total = 0;
  for (std::size_t i = 0; i < k; ++i) {
    Napi::Value v = xs.Get(uint32_t(i));
    ptrs[i] = floats_of(v, elems(env, {outer, lens[i], inner}), "an input");
    keep.push_back(v);
    total += lens[i];
  }
  float* y = out_of(info[4], elems(env, {outer, total, inner}), "out");
  keep.push_back(info[4]);
  auto pool = pool_of(env);
  return PromiseWorker::Start(
      env, [=] { bhsd::concat(ptrs, lens, y, outer, inner, *pool); }, nullptr, keep,
      2.0 * double(outer) * double(total) * double(inner) * sizeof(float));
}

// convWeightGrad(A, [Ca, Ad, Ah, Aw], B, [Cb, Bd, Bh, Bw], [kd, kh, kw], strides, pads, dilations, out) → Promise<void>
// out[ca, cb, k…] += Σ_o A[ca, o] · B[cb, o·s − p + k·d]   (see bhsd::correlate_weight_grad)
Napi::Value ConvWeightGrad(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto as = ints_of(info[1], 4, "A shape", 1, BIG), bs = ints_of(info[3], 4, "B shape", 1, BIG);
  auto k = ints_of(info[4], 3, "kernel", 1, BIG), st = ints_of(info[5], 3, "strides", 1, BIG),
       pa = ints_of(info[6], 3, "pads", 0, BIG), di = ints_of(info[7], 3, "dilations", 1, BIG);
  const float* A = floats_of(info[0], elems(env, {as[0], as[1], as[2], as[3]}), "A");
  const float* B = floats_of(info[2], elems(env, {bs[0], bs[1], bs[2], bs[3]}), "B");
  float* out = out_of(info[8], elems(env, {as[0], bs[0], k[0], k[1], k[2]}), "out");
  auto pool = pool_of(env);
  return PromiseWorker::Start(env,
                              [=] {
                                bhsd::correlate_weight_grad(A, as[0], as[1], as[2], as[3], B, bs[0], bs[1], bs[2],
                                                            bs[3], k[0], k[1], k[2], st.data(), pa.data(), di.data(),
                                                            out, *pool);
                              },
                              nullptr, {info[0], info[2], info[8]});
}

}  // namespace

void RegisterTensorOps(Napi::Env env, Napi::Object exports) {
  exports.Set("convWeightGrad", Napi::Function::New<guarded<ConvWeightGrad>>(env, "convWeightGrad"));
  exports.Set("conv3d", Napi::Function::New<guarded<Conv3d>>(env, "conv3d"));
  exports.Set("packConvWeights", Napi::Function::New<guarded<PackConvWeights>>(env, "packConvWeights"));
  exports.Set("convTranspose3d", Napi::Function::New<guarded<ConvTranspose3d>>(env, "convTranspose3d"));
  exports.Set("instanceNorm", Napi::Function::New<guarded<InstanceNorm>>(env, "instanceNorm"));
  exports.Set("groupNorm", Napi::Function::New<guarded<GroupNorm>>(env, "groupNorm"));
  exports.Set("batchNorm", Napi::Function::New<guarded<BatchNorm>>(env, "batchNorm"));
  exports.Set("instanceNormBackward", Napi::Function::New<guarded<InstanceNormBackward>>(env, "instanceNormBackward"));
  exports.Set("unary", Napi::Function::New<guarded<Unary>>(env, "unary"));
  exports.Set("channelNorm", Napi::Function::New<guarded<ChannelNorm>>(env, "channelNorm"));
  exports.Set("transposeLast2", Napi::Function::New<guarded<TransposeLast2>>(env, "transposeLast2"));
  exports.Set("mambaConv", Napi::Function::New<guarded<MambaConv>>(env, "mambaConv"));
  exports.Set("selectiveScan", Napi::Function::New<guarded<SelectiveScan>>(env, "selectiveScan"));
  exports.Set("binary", Napi::Function::New<guarded<Binary>>(env, "binary"));
  exports.Set("pool3d", Napi::Function::New<guarded<Pool3d>>(env, "pool3d"));
  exports.Set("resize3d", Napi::Function::New<guarded<Resize3d>>(env, "resize3d"));
  exports.Set("softmax", Napi::Function::New<guarded<Softmax>>(env, "softmax"));
  exports.Set("softmaxDivided", Napi::Function::New<guarded<SoftmaxDivided>>(env, "softmaxDivided"));
  exports.Set("accumulateWindow", Napi::Function::New<guarded<AccumulateWindow>>(env, "accumulateWindow"));
  exports.Set("convPlanExport", Napi::Function::New<guarded<ConvPlanExport>>(env, "convPlanExport"));
  exports.Set("convPlanImport", Napi::Function::New<guarded<ConvPlanImport>>(env, "convPlanImport"));
  exports.Set("convPlanClear", Napi::Function::New<guarded<ConvPlanClear>>(env, "convPlanClear"));
  exports.Set("preciseConvolutions", Napi::Function::New<guarded<PreciseConvolutions>>(env, "preciseConvolutions"));
  exports.Set("gemm", Napi::Function::New<guarded<Gemm>>(env, "gemm"));
  exports.Set("attention", Napi::Function::New<guarded<Attention>>(env, "attention"));
  exports.Set("attentionRope", Napi::Boolean::New(env, true));  // (attention's 7th argument)
  exports.Set("gemmBias", Napi::Boolean::New(env, true));       // (gemm's 9th argument)
  exports.Set("argmax", Napi::Function::New<guarded<Argmax>>(env, "argmax"));
  exports.Set("concat", Napi::Function::New<guarded<Concat>>(env, "concat"));
}

}  // namespace bhsd_napi
