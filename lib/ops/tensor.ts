/**
 * Tensor operations on `Tensor { data: Float32Array, shape }` (NCDHW), as PyTorch and ONNX define
 * them. Each function checks its arguments and sizes its result before anything is allocated or
 * sent to a backend.
 */
import { activeBackend, releaseEngineArray } from "../backends/index.js";
import { COORD_MODES, NEAREST_MODES, type Triple, ACT, UNARY } from "../backends/tensor-types.js";
import { invalidParameterError, optionsObject } from "../is.js";
import type { Tensor } from "../types.js";
import { allocArray } from "../volume.js";

const prod = (xs: readonly number[]) => xs.reduce((a, b) => a * b, 1);

/** Checks a Tensor: Float32Array data whose length is the product of a shape of positive integers. */
export function assertTensor(name: string, t: unknown, rank?: number): asserts t is Tensor {
  const v = t as Partial<Tensor> | null;
  if (typeof v !== "object" || v === null || !(v.data instanceof Float32Array))
    throw invalidParameterError(name, "a Tensor { data: Float32Array, shape }", t);
  if (!Array.isArray(v.shape) || !v.shape.every((d) => Number.isSafeInteger(d) && d >= 1))
    throw invalidParameterError(`${name}.shape`, "an array of positive integers", v.shape);
  if (rank !== undefined && v.shape.length !== rank)
    throw invalidParameterError(`${name}.shape`, `${rank} axes${rank === 5 ? " [N, C, D, H, W]" : ""}`, v.shape);
  if (prod(v.shape) !== v.data.length)
    throw new RangeError(`${name}.data has ${v.data.length} elements but ${name}.shape [${v.shape.join(", ")}] needs ${prod(v.shape)}`);
}

function newTensor(shape: number[], what: string): Tensor {
  return { data: allocArray("float32", prod(shape), what) as Float32Array, shape };
}

/**
 * A zero-filled tensor in the engine's own memory (where the native addon is loaded): native calls
 * use such arrays in place, while a caller's own arrays are copied in (and outputs back) at each call
 * so that nothing the caller does to them mid-call can crash the process. Results of the ops are
 * allocated this way already; reuse one as `options.out`, or fill one with an input used many times.
 */
export function allocTensor(shape: number[]): Tensor {
  if (!Array.isArray(shape) || !shape.every((d) => Number.isSafeInteger(d) && d >= 1))
    throw invalidParameterError("shape", "an array of positive integers", shape);
  return newTensor([...shape], "allocTensor");
}

/** A number or [d, h, w] of integers ≥ min. */
function triple(name: string, v: unknown, dflt: number, min: number): Triple {
  if (v === undefined) return [dflt, dflt, dflt];
  const arr = typeof v === "number" ? [v, v, v] : v;
  if (!Array.isArray(arr) || arr.length !== 3 || !arr.every((x) => Number.isInteger(x) && x >= min)) {
    throw invalidParameterError(name, `an integer >= ${min} or [d, h, w] of them`, v);
  }
  return arr as Triple;
}

/** Padding: a number, [d, h, w] (both sides) or ONNX's [d0, h0, w0, d1, h1, w1]. Returns leading and trailing. */
function padding(name: string, v: unknown): { lead: Triple; trail: Triple } {
  if (v === undefined) return { lead: [0, 0, 0], trail: [0, 0, 0] };
  const arr = typeof v === "number" ? [v, v, v] : v;
  if (Array.isArray(arr) && arr.every((x) => Number.isInteger(x) && x >= 0)) {
    if (arr.length === 3) return { lead: arr as Triple, trail: arr as Triple };
    if (arr.length === 6) return { lead: arr.slice(0, 3) as Triple, trail: arr.slice(3) as Triple };
  }
  throw invalidParameterError(name, "a non-negative integer, [d, h, w] or [d0, h0, w0, d1, h1, w1]", v);
}

function activation(opts: Record<string, unknown>, where = "options"): { act: number; alpha: number } {
  const a = opts.activation;
  if (a === undefined || a === "none") return { act: ACT.none, alpha: 0 };
  if (a === "relu") return { act: ACT.relu, alpha: 0 };
  if (a === "leakyRelu") {
    const alpha = opts.alpha ?? 0.01;
    if (typeof alpha !== "number" || !Number.isFinite(alpha)) throw invalidParameterError(`${where}.alpha`, "a finite number", alpha);
    return { act: ACT.leaky, alpha };
  }
  throw invalidParameterError(`${where}.activation`, '"relu", "leakyRelu" or "none"', a);
}

export interface Conv3dOptions extends OutputOptions {
  stride?: number | Triple;
  padding?: number | Triple | [number, number, number, number, number, number];
  dilation?: number | Triple;
  groups?: number;
  /** Fused into the convolution's epilogue. */
  activation?: "none" | "relu" | "leakyRelu";
  /** LeakyReLU's negative slope (default 0.01). */
  alpha?: number;
  /**
   * conv3d only: a tensor of the output's shape added to the convolution, before the activation
   * (a residual block's Conv → Add(skip): natively in the same call, in place).
   */
  residual?: Tensor;
}

/**
 * Where a result goes: `out` (the caller's tensor of the result's shape), `alloc` (a caller's
 * allocator, e.g. a model's buffer pool, given the shape), or a new tensor.
 */
export interface OutputOptions {
  out?: Tensor;
  alloc?: (shape: number[]) => Tensor;
}

/**
 * Whether `out` shares memory with an input other than as that very view: the ops that run in
 * place take out = an input (the same array, offset and length) and otherwise need the two apart —
 * a partial overlap would read values already written, on every backend.
 */
function checkOverlap(out: Tensor, inputs: Record<string, Tensor | null | undefined>, inPlace: boolean): void {
  const o = out.data;
  for (const [name, t] of Object.entries(inputs)) {
    if (!t) continue;
    const d = t.data;
    if (!ArrayBuffer.isView(d) || d.buffer !== o.buffer) continue; // (an argument not yet checked is the caller's check's to name)
    const same = d.byteOffset === o.byteOffset && d.byteLength === o.byteLength;
    if (same && inPlace) continue;
    if (d.byteOffset < o.byteOffset + o.byteLength && o.byteOffset < d.byteOffset + d.byteLength)
      throw new RangeError(
        inPlace
          ? `options.out overlaps ${name} in part: it may be ${name} itself (in place) or apart from it`
          : `options.out overlaps ${name}: this op cannot run in place`,
      );
  }
}

function outputTensor(
  shape: number[],
  given: unknown,
  what: string,
  alloc?: unknown,
  inputs: Record<string, Tensor | null | undefined> = {},
  inPlace = true,
): Tensor {
  if (typeof alloc === "function") {
    const t = (alloc as (s: number[]) => Tensor)(shape);
    if (!(t?.data instanceof Float32Array) || t.data.length !== prod(shape))
      throw new RangeError(`options.alloc returned ${t?.data?.length} elements for [${shape.join(", ")}]`);
    return t;
  }
  if (given === undefined) return newTensor(shape, what);
  assertTensor("options.out", given);
  if (given.shape.length !== shape.length || given.shape.some((d, i) => d !== shape[i])) {
    throw new RangeError(`options.out has shape [${given.shape.join(", ")}] but the result has [${shape.join(", ")}]`);
  }
  checkOverlap(given, inputs, inPlace);
  return given;
}

/** A convolution's output: apart from every operand (its kernels read them while they write it). */
const convOutput = (c: ReturnType<typeof convCommon>, shape: number[], what: string): Tensor =>
  outputTensor(shape, c.opts.out, what, c.opts.alloc, { input: c.input, weight: c.weight, bias: c.bias }, false);

function convCommon(input: unknown, weight: unknown, bias: unknown, options: unknown) {
  assertTensor("input", input, 5);
  assertTensor("weight", weight, 5);
  if (bias !== undefined && bias !== null) assertTensor("bias", bias, 1);
  const opts = optionsObject("options", options);
  const stride = triple("options.stride", opts.stride, 1, 1);
  const dilation = triple("options.dilation", opts.dilation, 1, 1);
  const pad = padding("options.padding", opts.padding);
  const groups = opts.groups ?? 1;
  if (!Number.isInteger(groups) || (groups as number) < 1) throw invalidParameterError("options.groups", "a positive integer", groups);
  return {
    input: input as Tensor,
    weight: weight as Tensor,
    bias: (bias ?? null) as Tensor | null,
    opts,
    stride,
    dilation,
    pad,
    groups: groups as number,
  };
}

/**
 * conv3d's checks and output: everything but the backend call. `check` sees the output channels
 * once the arguments are valid, before the output is taken.
 */
function convPlan(
  input: Tensor,
  weight: Tensor,
  bias: Tensor | null | undefined,
  options: Conv3dOptions | undefined,
  check?: (Co: number, outShape: number[]) => void,
) {
  const c = convCommon(input, weight, bias, options);
  const [N, C, D, H, W] = c.input.shape as [number, number, number, number, number];
  const [Co, Cg, kd, kh, kw] = c.weight.shape as [number, number, number, number, number];
  if (C % c.groups || Co % c.groups)
    throw new RangeError(`input channels ${C} and output channels ${Co} must both be divisible by groups ${c.groups}`);
  if (Cg !== C / c.groups)
    throw new RangeError(`weight.shape[1] is ${Cg} but input has ${C} channels in ${c.groups} group(s) (${C / c.groups} each)`);
  if (c.bias && c.bias.shape[0] !== Co) throw new RangeError(`bias has ${c.bias.shape[0]} values but weight has ${Co} output channels`);
  const { act, alpha } = activation(c.opts);
  const k = [kd, kh, kw],
    ext = [D, H, W];
  const outS = ext.map((e, i) => {
    const span = c.dilation[i]! * (k[i]! - 1) + 1,
      padded = e + c.pad.lead[i]! + c.pad.trail[i]!;
    if (padded < span)
      throw new RangeError(`input extent ${e} on axis ${"DHW"[i]} (padded ${padded}) is smaller than the kernel's span ${span}`);
    return Math.floor((padded - span) / c.stride[i]!) + 1;
  }) as Triple;
  check?.(Co, [N, Co, ...outS]);
  const out = convOutput(c, [N, Co, ...outS], "conv3d output");
  const args: [
    Float32Array,
    [number, number, number, number, number],
    Float32Array,
    [number, number, number, number],
    Float32Array | null,
    Triple,
    Triple,
    Triple,
    number,
    Triple,
  ] = [
    c.input.data,
    [N, C, D, H, W],
    c.weight.data,
    [Co, kd, kh, kw],
    c.bias?.data ?? null,
    c.stride,
    c.dilation,
    c.pad.lead,
    c.groups,
    outS,
  ];
  return { args, act, alpha, out, Co };
}

/** 3-D convolution: input [N, C, D, H, W], weight [Cout, C/groups, kD, kH, kW], bias [Cout]. */
export async function conv3d(input: Tensor, weight: Tensor, bias?: Tensor | null, options?: Conv3dOptions): Promise<Tensor> {
  const residual = (options as Record<string, unknown> | undefined)?.residual as Tensor | undefined;
  if (residual !== undefined) assertTensor("options.residual", residual);
  // the residual's shape is checked before the output is allocated, its memory once it is there
  const p = convPlan(input, weight, bias, options, (_, outShape) => {
    if (residual && (residual.shape.length !== outShape.length || residual.shape.some((d, i) => d !== outShape[i])))
      throw new RangeError(`options.residual has shape [${residual.shape.join(", ")}] but the output is [${outShape.join(", ")}]`);
  });
  const be = activeBackend();
  if (!residual) {
    await be.conv3d(...p.args, p.act, p.alpha, p.out.data);
    return p.out;
  }
  if (sharesMemory(residual.data, p.out.data))
    throw invalidParameterError(
      "options.residual",
      "a tensor apart from the output (it is read after the output is written)",
      "the output's memory",
    );
  if (be.conv3dResidual && be.convResidual) {
    await be.conv3dResidual(...p.args, p.act, p.alpha, p.out.data, residual.data);
    return p.out;
  }
  // the convolution, then the sum and the activation as add() applies them
  const resBytes = residual.data.byteLength;
  await be.conv3d(...p.args, ACT.none, 0, p.out.data);
  await addResidualInPlace(p.out.data, residual.data, resBytes, p.act, p.alpha, "options.residual");
  return p.out;
}

/** Whether two arrays' bytes overlap (views of one buffer). */
function sharesMemory(a: Float32Array, b: Float32Array): boolean {
  return a.buffer === b.buffer && a.byteOffset < b.byteOffset + b.byteLength && b.byteOffset < a.byteOffset + a.byteLength;
}

/** The instance normalisation a convolution's output goes through (scale and bias per output channel). */
export interface FusedNorm {
  scale: Tensor;
  bias: Tensor;
  eps?: number;
  /**
   * A group norm instead (GroupNorm: MONAI SegResNet's Conv → GroupNorm → ReLU): the statistics of
   * each group of `groups` consecutive output channels together, as groupNorm takes them (scale
   * and bias per channel or per group); the default, the output's channels, is the instance norm.
   * Not with `residual`.
   */
  groups?: number;
  activation?: "none" | "relu" | "leakyRelu";
  alpha?: number;
  /**
   * A tensor of the output's shape added after the norm, before its activation: a residual
   * block's Conv → InstanceNorm → Add(skip) → LeakyReLU in one call (the sum in the norm's own
   * pass on backends that have it).
   */
  residual?: Tensor;
}

/**
 * conv3d, then instanceNorm of its output (a U-Net block's Conv → InstanceNorm → LeakyReLU): on
 * a backend that has it, in one call with the output normalised in place (no second buffer);
 * elsewhere the two operations one after the other. `options.activation` must be unset (the
 * activation after the norm is `norm.activation`).
 */
export async function conv3dInstanceNorm(
  input: Tensor,
  weight: Tensor,
  bias: Tensor | null,
  norm: FusedNorm,
  options?: Conv3dOptions,
): Promise<Tensor> {
  if (options?.activation !== undefined && options.activation !== "none")
    throw invalidParameterError("options.activation", "none (the activation goes after the norm)", options.activation);
  if (options?.residual !== undefined)
    throw invalidParameterError("options.residual", "absent (a residual after the norm is norm.residual)", options.residual);
  const normOpts = optionsObject("norm", norm);
  const { act, alpha } = activation(normOpts, "norm");
  const eps = epsOf(normOpts, "norm");
  const residual = normOpts.residual;
  if (residual !== undefined) assertTensor("norm.residual", residual);
  const G = normOpts.groups;
  if (G !== undefined && (!Number.isInteger(G) || (G as number) < 1))
    throw invalidParameterError("norm.groups", "a positive integer dividing the output channels", G);
  // the norm's scale and bias and the residual's shape are checked before the output is allocated
  // (whether the residual shares the output's memory only once the output is there)
  let perCo: [Float32Array, Float32Array] | undefined;
  const p = convPlan(input, weight, bias, options, (Co, outShape) => {
    if (G !== undefined && Co % (G as number))
      throw invalidParameterError("norm.groups", `a positive integer dividing the ${Co} output channels`, G);
    perCo =
      G === undefined
        ? [perChannel("norm.scale", normOpts.scale, Co), perChannel("norm.bias", normOpts.bias, Co)]
        : [
            perChannelOrGroup("norm.scale", normOpts.scale, Co, G as number),
            perChannelOrGroup("norm.bias", normOpts.bias, Co, G as number),
          ];
    if (G !== undefined && G !== Co && residual)
      throw invalidParameterError("norm.residual", "absent with norm.groups (a residual follows an instance norm only)", "a tensor");
    if (residual && (residual.shape.length !== outShape.length || residual.shape.some((d, i) => d !== outShape[i])))
      throw new RangeError(`norm.residual has shape [${residual.shape.join(", ")}] but the output is [${outShape.join(", ")}]`);
  });
  if (residual && sharesMemory(residual.data, p.out.data))
    throw invalidParameterError(
      "norm.residual",
      "a tensor apart from the output (it is read after the output is written)",
      "the output's memory",
    );
  const [scale, nb] = perCo!;
  const resBytes = residual?.data.byteLength;
  const be = activeBackend();
  const Co = p.out.shape[1]!;
  const groups = G === undefined || G === Co ? undefined : (G as number);
  if (be.conv3dNorm && (!residual || be.convNormResidual) && (groups === undefined || be.convNormGroups)) {
    if (groups === undefined) await be.conv3dNorm(...p.args, p.out.data, scale, nb, eps, act, alpha, residual?.data ?? null);
    else await be.conv3dNorm(...p.args, p.out.data, scale, nb, eps, act, alpha, null, groups);
  } else if (groups !== undefined) {
    // the convolution, then the group norm as groupNorm runs it, in place
    await be.conv3d(...p.args, ACT.none, 0, p.out.data);
    await groupNorm(
      p.out,
      { data: scale, shape: [Co] },
      { data: nb, shape: [Co] },
      {
        groups,
        eps,
        ...(act === ACT.none ? {} : { activation: act === ACT.relu ? "relu" : "leakyRelu", alpha }),
        out: p.out,
      },
    );
  } else {
    const conv = newTensor(p.out.shape, "conv3d output");
    await be.conv3d(...p.args, ACT.none, 0, conv.data);
    const [N, C] = p.out.shape as [number, number];
    const spatial = conv.data.length / (N * C);
    if (!residual) await be.instanceNorm(conv.data, N, C, spatial, scale, nb, eps, act, alpha, p.out.data);
    else {
      // the norm, then the sum and the activation as add() applies them — from the residual as the
      // call found it (a caller that transferred it away meanwhile gets an error, not NaNs)
      await be.instanceNorm(conv.data, N, C, spatial, scale, nb, eps, ACT.none, 0, p.out.data);
      await addResidualInPlace(p.out.data, residual.data, resBytes!, act, alpha, "norm.residual");
    }
    be.forget?.([conv.data]); // a GPU backend frees its device copy now, not at the end of the run
  }
  return p.out;
}

export interface ConvTranspose3dOptions extends OutputOptions {
  stride?: number | Triple;
  padding?: number | Triple | [number, number, number, number, number, number];
  outputPadding?: number | Triple;
  dilation?: number | Triple;
  groups?: number;
}

/** Transposed 3-D convolution: weight [C, Cout/groups, kD, kH, kW] (PyTorch and ONNX order). */
export async function convTranspose3d(
  input: Tensor,
  weight: Tensor,
  bias?: Tensor | null,
  options?: ConvTranspose3dOptions,
): Promise<Tensor> {
  const c = convCommon(input, weight, bias, options);
  const outPad = triple("options.outputPadding", c.opts.outputPadding, 0, 0);
  const [N, C, D, H, W] = c.input.shape as [number, number, number, number, number];
  const [Ci, Cog, kd, kh, kw] = c.weight.shape as [number, number, number, number, number];
  if (Ci !== C) throw new RangeError(`weight.shape[0] is ${Ci} but input has ${C} channels`);
  if (C % c.groups) throw new RangeError(`input channels ${C} must be divisible by groups ${c.groups}`);
  const Co = Cog * c.groups;
  if (c.bias && c.bias.shape[0] !== Co) throw new RangeError(`bias has ${c.bias.shape[0]} values but the output has ${Co} channels`);
  const k = [kd, kh, kw],
    ext = [D, H, W];
  const outS = ext.map((e, i) => {
    if (outPad[i]! >= Math.max(c.stride[i]!, c.dilation[i]!))
      throw invalidParameterError("options.outputPadding", "values smaller than the stride or the dilation", c.opts.outputPadding);
    const o = (e - 1) * c.stride[i]! - c.pad.lead[i]! - c.pad.trail[i]! + c.dilation[i]! * (k[i]! - 1) + outPad[i]! + 1;
    if (o < 1) throw new RangeError(`the output extent on axis ${"DHW"[i]} would be ${o}`);
    return o;
  }) as Triple;
  const out = convOutput(c, [N, Co, ...outS], "convTranspose3d output");
  await activeBackend().convTranspose3d(
    c.input.data,
    [N, C, D, H, W],
    c.weight.data,
    [Cog, kd, kh, kw],
    c.bias?.data ?? null,
    c.stride,
    c.dilation,
    c.pad.lead,
    c.groups,
    outS,
    out.data,
  );
  return out;
}

function nc(x: Tensor): { N: number; C: number; spatial: number } {
  // (a rank-0 tensor, an ONNX scalar, is one value)
  return { N: x.shape.length ? x.shape[0]! : 1, C: x.shape.length > 1 ? x.shape[1]! : 1, spatial: prod(x.shape.slice(2)) };
}

function perChannel(name: string, t: unknown, C: number): Float32Array {
  assertTensor(name, t);
  if ((t as Tensor).data.length !== C)
    throw new RangeError(`${name} has ${(t as Tensor).data.length} values but the input has ${C} channels`);
  return (t as Tensor).data;
}

/** A group norm's scale or bias as C values: given per channel (C) or per group (G, ONNX opset 18's), expanded. */
function perChannelOrGroup(name: string, t: unknown, C: number, G: number): Float32Array {
  assertTensor(name, t);
  const d = (t as Tensor).data;
  if (d.length === C) return d;
  if (d.length !== G) throw new RangeError(`${name} has ${d.length} values; expected ${C} (per channel) or ${G} (per group)`);
  const cpg = C / G;
  return Float32Array.from({ length: C }, (_, c) => d[Math.floor(c / cpg)]!);
}

/** out += residual, then the activation, as add() applies them — from the residual as the call found it (a caller that transferred it away meanwhile gets an error, not NaNs). */
async function addResidualInPlace(
  out: Float32Array,
  residual: Float32Array,
  bytesAtStart: number,
  act: number,
  alpha: number,
  what: string,
) {
  if (residual.byteLength !== bytesAtStart) throw new Error(`${what} was detached or resized during the call; the result is lost`);
  const shape6 = [1, 1, 1, 1, 1, out.length],
    one = [0, 0, 0, 0, 0, 1];
  await activeBackend().binary(out, residual, shape6, one, one, false, out, act, alpha);
}

function epsOf(opts: Record<string, unknown>, where = "options"): number {
  const eps = opts.eps ?? 1e-5;
  if (typeof eps !== "number" || !(eps > 0)) throw invalidParameterError(`${where}.eps`, "a positive number", eps);
  return eps;
}

/** Instance normalisation over the spatial axes of each (n, c), biased variance; affine when scale/bias are given. */
export async function instanceNorm(
  x: Tensor,
  scale?: Tensor | null,
  bias?: Tensor | null,
  options?: OutputOptions & { eps?: number; activation?: "none" | "relu" | "leakyRelu"; alpha?: number },
): Promise<Tensor> {
  assertTensor("x", x);
  if (x.shape.length < 3) throw invalidParameterError("x.shape", "[N, C, ...spatial]", x.shape);
  const { N, C, spatial } = nc(x);
  const opts = optionsObject("options", options);
  const s = scale ? perChannel("scale", scale, C) : null,
    b = bias ? perChannel("bias", bias, C) : null;
  const { act, alpha } = activation(opts);
  const out = outputTensor([...x.shape], opts.out, "instanceNorm output", opts.alloc, { x, scale, bias });
  await activeBackend().instanceNorm(x.data, N, C, spatial, s, b, epsOf(opts), act, alpha, out.data);
  return out;
}

/**
 * Group normalisation (torch.nn.GroupNorm; ONNX GroupNormalization): statistics over each group of
 * C/groups consecutive channels and the spatial axes, biased variance; scale and bias per channel
 * (C values) or per group (`groups` values, ONNX opset 18); then the activation, in one pass where
 * the backend has it.
 */
export async function groupNorm(
  x: Tensor,
  scale: Tensor | null,
  bias: Tensor | null,
  options: OutputOptions & { groups: number; eps?: number; activation?: "none" | "relu" | "leakyRelu"; alpha?: number },
): Promise<Tensor> {
  assertTensor("x", x);
  if (x.shape.length < 3) throw invalidParameterError("x.shape", "[N, C, ...spatial]", x.shape);
  const { N, C, spatial } = nc(x);
  const opts = optionsObject("options", options);
  const G = opts.groups;
  if (!Number.isInteger(G) || (G as number) < 1 || C % (G as number))
    throw invalidParameterError("options.groups", `a positive integer dividing the ${C} channels`, G);
  const perGroup = (name: string, t: Tensor | null): Float32Array | null => (t ? perChannelOrGroup(name, t, C, G as number) : null);
  const s = perGroup("scale", scale),
    b = perGroup("bias", bias);
  const { act, alpha } = activation(opts);
  const eps = epsOf(opts);
  const out = outputTensor([...x.shape], opts.out, "groupNorm output", opts.alloc, { x, scale, bias });
  const be = activeBackend();
  if (be.groupNorm) {
    await be.groupNorm(x.data, N, C, spatial, G as number, s, b, eps, act, alpha, out.data);
    return out;
  }
  // composed: the groups' statistics by instanceNorm over [N·G, C/G·spatial], then scale, bias and
  // the activation per channel
  await be.instanceNorm(x.data, N * (G as number), 1, (C / (G as number)) * spatial, null, null, eps, 0, 0, out.data);
  const shape6 = [1, 1, N, C, 1, spatial],
    chan = [0, 0, 0, 1, 0, 0],
    all = [0, 0, C * spatial, spatial, 0, 1];
  if (s) await be.binary(out.data, s, shape6, all, chan, true, out.data);
  if (b) await be.binary(out.data, b, shape6, all, chan, false, out.data);
  if (act !== ACT.none) await be.unary(out.data, N, C, spatial, act === ACT.relu ? UNARY.relu : UNARY.leaky, alpha, null, out.data);
  return out;
}

/** Batch normalisation with running statistics (inference). */
export async function batchNorm(
  x: Tensor,
  scale: Tensor,
  bias: Tensor,
  mean: Tensor,
  variance: Tensor,
  options?: OutputOptions & { eps?: number },
): Promise<Tensor> {
  assertTensor("x", x);
  const { N, C, spatial } = nc(x);
  const opts = optionsObject("options", options);
  // (the per-channel arguments checked before the output is taken or compared with them)
  const sc = perChannel("scale", scale, C),
    bi = perChannel("bias", bias, C),
    mu = perChannel("mean", mean, C),
    va = perChannel("variance", variance, C);
  const out = outputTensor([...x.shape], opts.out, "batchNorm output", opts.alloc, { x, scale, bias, mean, variance });
  await activeBackend().batchNorm(x.data, N, C, spatial, sc, bi, mu, va, epsOf(opts), out.data);
  return out;
}

async function unary(
  x: Tensor,
  op: number,
  alpha: number,
  slope: Float32Array | null,
  what: string,
  options?: OutputOptions,
): Promise<Tensor> {
  assertTensor("x", x);
  const { N, C, spatial } = nc(x);
  const o = optionsObject("options", options);
  const out = outputTensor([...x.shape], o.out, `${what} output`, o.alloc, { x, slope: slope && { data: slope, shape: [slope.length] } });
  await activeBackend().unary(x.data, N, C, spatial, op, alpha, slope, out.data);
  return out;
}

export const relu = (x: Tensor, options?: OutputOptions) => unary(x, UNARY.relu, 0, null, "relu", options);
export const sigmoid = (x: Tensor, options?: OutputOptions) => unary(x, UNARY.sigmoid, 0, null, "sigmoid", options);
export async function leakyRelu(x: Tensor, options?: OutputOptions & { alpha?: number }): Promise<Tensor> {
  const alpha = optionsObject("options", options).alpha ?? 0.01;
  if (typeof alpha !== "number" || !Number.isFinite(alpha)) throw invalidParameterError("options.alpha", "a finite number", alpha);
  return unary(x, UNARY.leaky, alpha, null, "leakyRelu", options);
}
/**
 * GELU, x·Φ(x): 0.5·x·(1 + erf(x / divisor)) with divisor √2 (or an exported graph's own constant,
 * as the GELU fusion passes it), or ONNX's approximate "tanh" form. Any rank; elementwise.
 */
export async function gelu(x: Tensor, options?: OutputOptions & { approximate?: "none" | "tanh"; divisor?: number }): Promise<Tensor> {
  assertTensor("x", x);
  const o = optionsObject("options", options);
  const approx = o.approximate ?? "none";
  if (approx !== "none" && approx !== "tanh") throw invalidParameterError("options.approximate", '"none" or "tanh"', approx);
  const divisor = o.divisor ?? Math.SQRT2;
  if (typeof divisor !== "number" || !Number.isFinite(divisor) || divisor === 0)
    throw invalidParameterError("options.divisor", "a finite non-zero number", divisor);
  if (approx === "tanh" && o.divisor !== undefined)
    throw invalidParameterError("options.divisor", 'nothing with approximate "tanh"', divisor);
  // elementwise: the last axis is a run, the others count runs (the backend splits the work by runs)
  const last = x.shape.at(-1) ?? 1;
  const out = outputTensor([...x.shape], o.out, "gelu output", o.alloc, { x });
  await activeBackend().unary(
    x.data,
    1,
    x.data.length / last,
    last,
    approx === "tanh" ? UNARY.geluTanh : UNARY.gelu,
    divisor,
    null,
    out.data,
  );
  return out;
}

/** PReLU with one slope per channel (or one for all). */
export async function prelu(x: Tensor, slope: Tensor, options?: OutputOptions): Promise<Tensor> {
  assertTensor("x", x);
  assertTensor("slope", slope);
  const C = nc(x).C;
  if (slope.data.length !== 1 && slope.data.length !== C)
    throw new RangeError(`slope has ${slope.data.length} values; expected 1 or ${C} (one per channel)`);
  return unary(x, UNARY.prelu, 0, slope.data, "prelu", options);
}

/** numpy broadcasting of two shapes, padded to 6 axes, with element strides (0 where broadcast). */
function broadcast(a: Tensor, b: Tensor): { shape: number[]; sa: number[]; sb: number[]; out: number[] } {
  const rank = Math.max(a.shape.length, b.shape.length);
  if (rank > 6) throw new RangeError(`add/mul take at most 6 axes, got ${rank}`);
  const pa = [...Array(rank - a.shape.length).fill(1), ...a.shape],
    pb = [...Array(rank - b.shape.length).fill(1), ...b.shape];
  const out = pa.map((d, i) => {
    const e = pb[i]!;
    if (d !== e && d !== 1 && e !== 1)
      throw new RangeError(`shapes [${a.shape.join(", ")}] and [${b.shape.join(", ")}] do not broadcast (axis ${i}: ${d} vs ${e})`);
    return Math.max(d, e);
  });
  const strides = (p: number[]) => {
    const s = new Array<number>(rank);
    let acc = 1;
    for (let i = rank - 1; i >= 0; i--) {
      s[i] = p[i] === 1 && out[i] !== 1 ? 0 : acc;
      acc *= p[i]!;
    }
    return s;
  };
  const pad6 = <T>(xs: T[], fill: T) => [...Array(6 - rank).fill(fill), ...xs];
  return { shape: pad6(out, 1), sa: pad6(strides(pa), 0), sb: pad6(strides(pb), 0), out };
}

/** Options of add and mul: the output, and an activation applied as each value is stored. */
export type BinaryOptions = OutputOptions & { activation?: "none" | "relu" | "leakyRelu"; alpha?: number };

async function binary(a: Tensor, b: Tensor, mul: boolean, options?: BinaryOptions): Promise<Tensor> {
  assertTensor("a", a);
  assertTensor("b", b);
  const bc = broadcast(a, b);
  const o = optionsObject("options", options);
  const { act, alpha } = activation(o);
  const out = outputTensor(bc.out, o.out, mul ? "mul output" : "add output", o.alloc, { a, b });
  await activeBackend().binary(a.data, b.data, bc.shape, bc.sa, bc.sb, mul, out.data, act, alpha);
  return out;
}
/** a + b with numpy broadcasting; `activation` ("relu" | "leakyRelu", `alpha`) in the same pass (a residual block's sum). */
export const add = (a: Tensor, b: Tensor, options?: BinaryOptions) => binary(a, b, false, options);
export const mul = (a: Tensor, b: Tensor, options?: BinaryOptions) => binary(a, b, true, options);

/** Concatenation along an axis (default 1, the channels). */
export async function concat(tensors: Tensor[], axis = 1, options?: OutputOptions): Promise<Tensor> {
  if (!Array.isArray(tensors) || tensors.length === 0) throw invalidParameterError("tensors", "a non-empty array of Tensors", tensors);
  tensors.forEach((t, i) => assertTensor(`tensors[${i}]`, t));
  const rank = tensors[0]!.shape.length;
  const ax = axis < 0 ? axis + rank : axis;
  if (!Number.isInteger(ax) || ax < 0 || ax >= rank) throw invalidParameterError("axis", `an axis of a rank-${rank} tensor`, axis);
  for (const [i, t] of tensors.entries()) {
    if (t.shape.length !== rank || t.shape.some((d, j) => j !== ax && d !== tensors[0]!.shape[j])) {
      throw new RangeError(
        `tensors[${i}] has shape [${t.shape.join(", ")}], which differs from [${tensors[0]!.shape.join(", ")}] off axis ${ax}`,
      );
    }
  }
  const lens = tensors.map((t) => t.shape[ax]!);
  const shape = [...tensors[0]!.shape];
  shape[ax] = lens.reduce((a, b) => a + b, 0);
  const o = optionsObject("options", options);
  const out = outputTensor(shape, o.out, "concat output", o.alloc, Object.fromEntries(tensors.map((t, i) => [`tensors[${i}]`, t])), false);
  await activeBackend().concat(
    tensors.map((t) => t.data),
    lens,
    prod(shape.slice(0, ax)),
    prod(shape.slice(ax + 1)),
    out.data,
  );
  return out;
}

export interface Pool3dOptions extends OutputOptions {
  kernel: number | Triple;
  /** Default: the kernel. */
  stride?: number | Triple;
  padding?: number | Triple | [number, number, number, number, number, number];
  dilation?: number | Triple;
  ceilMode?: boolean;
  /** Average pooling: divide by the whole window, padding included (default false). */
  countIncludePad?: boolean;
}

async function pool(x: Tensor, options: Pool3dOptions, max: boolean): Promise<Tensor> {
  assertTensor("x", x, 5);
  const opts = optionsObject("options", options);
  const k = triple("options.kernel", opts.kernel, NaN, 1);
  if (k.some(Number.isNaN)) throw invalidParameterError("options.kernel", "an integer >= 1 or [d, h, w] of them", opts.kernel);
  const s = opts.stride === undefined ? k : triple("options.stride", opts.stride, 1, 1);
  const d = triple("options.dilation", opts.dilation, 1, 1);
  const p = padding("options.padding", opts.padding);
  const ceil = opts.ceilMode === true;
  const [N, C, D, H, W] = x.shape as [number, number, number, number, number];
  const outS = [D, H, W].map((e, i) => {
    const span = d[i]! * (k[i]! - 1) + 1,
      padded = e + p.lead[i]! + p.trail[i]!;
    // (pads under the kernel, as onnxruntime takes them; PyTorch's own limit is half the kernel)
    if (p.lead[i]! >= k[i]! || p.trail[i]! >= k[i]!)
      throw invalidParameterError("options.padding", "pads smaller than the kernel", opts.padding);
    if (padded < span) throw new RangeError(`input extent ${e} on axis ${"DHW"[i]} is smaller than the window ${span}`);
    let o = (ceil ? Math.ceil : Math.floor)((padded - span) / s[i]!) + 1;
    if (ceil && (o - 1) * s[i]! >= e + p.lead[i]!) o--; // the last window must start inside the input
    // and every window takes an input voxel (a dilated one can step over a short input: its max
    // would be −Infinity, its average 0/0)
    for (let j = 0; j < o; j++) {
      const start = j * s[i]! - p.lead[i]!;
      const first = start < 0 ? start + Math.ceil(-start / d[i]!) * d[i]! : start;
      if (first >= e || first > start + (k[i]! - 1) * d[i]!)
        throw new RangeError(
          `window ${j} on axis ${"DHW"[i]} holds no input voxel (extent ${e}, pads ${p.lead[i]}/${p.trail[i]}, dilation ${d[i]})`,
        );
    }
    return o;
  }) as Triple;
  const out = outputTensor([N, C, ...outS], opts.out, "pool output", opts.alloc, { x }, false);
  const cip = opts.countIncludePad === true;
  await activeBackend().pool3d(x.data, N * C, [D, H, W], outS, k, s, d, p.lead, max, cip, out.data);
  if (!max && cip && p.lead.some((v, i) => v !== p.trail[i])) {
    // The kernels count a window's padding up to the input plus its leading pad on each side: with
    // a larger trailing pad (ONNX's [0, 2]) the divisor was short. The count is a product over the
    // axes, so each average is rescaled by (kernel's count / right count) — through the backend,
    // whose memory (a GPU's) holds the result — counting up to the input plus the trailing pad.
    const ratio = [0, 1, 2].map((ax) =>
      Float64Array.from({ length: outS[ax]! }, (_, o) => {
        const start = o * s[ax]! - p.lead[ax]!,
          end = start + (k[ax]! - 1) * d[ax]! + 1;
        const count = (limit: number) => Math.max(0, Math.ceil((Math.min(end, limit) - start) / d[ax]!));
        return count([D, H, W][ax]! + p.lead[ax]!) / count([D, H, W][ax]! + p.trail[ax]!);
      }),
    );
    const [Do, Ho, Wo] = outS;
    const r = allocArray("float32", Do * Ho * Wo, "pool divisor ratio", { overwritten: true }) as Float32Array;
    try {
      for (let z = 0, i = 0; z < Do; z++)
        for (let y = 0; y < Ho; y++) for (let x0 = 0; x0 < Wo; x0++) r[i++] = ratio[0]![z]! * ratio[1]![y]! * ratio[2]![x0]!;
      const bc = broadcast(out, { data: r, shape: [Do, Ho, Wo] });
      await activeBackend().binary(out.data, r, bc.shape, bc.sa, bc.sb, true, out.data);
    } finally {
      releaseEngineArray(r);
    }
  }
  return out;
}
export const maxPool3d = (x: Tensor, options: Pool3dOptions) => pool(x, options, true);
export const avgPool3d = (x: Tensor, options: Pool3dOptions) => pool(x, options, false);

export interface ResizeOptions extends OutputOptions {
  /** Output [D, H, W]; or `scales`. */
  sizes?: Triple;
  scales?: Triple;
  mode?: "nearest" | "linear";
  coordinateTransformationMode?: (typeof COORD_MODES)[number];
  nearestMode?: (typeof NEAREST_MODES)[number];
}

/** ONNX Resize over the three spatial axes (nearest or trilinear, with its coordinate modes). */
export async function resize(x: Tensor, options: ResizeOptions): Promise<Tensor> {
  assertTensor("x", x, 5);
  const opts = optionsObject("options", options);
  const [N, C, D, H, W] = x.shape as [number, number, number, number, number];
  const mode = opts.mode ?? "linear";
  if (mode !== "nearest" && mode !== "linear") throw invalidParameterError("options.mode", '"nearest" or "linear"', mode);
  const cm = COORD_MODES.indexOf((opts.coordinateTransformationMode ?? "half_pixel") as never);
  if (cm < 0)
    throw invalidParameterError("options.coordinateTransformationMode", COORD_MODES.join(", "), opts.coordinateTransformationMode);
  const nm = NEAREST_MODES.indexOf((opts.nearestMode ?? "round_prefer_floor") as never);
  if (nm < 0) throw invalidParameterError("options.nearestMode", NEAREST_MODES.join(", "), opts.nearestMode);
  const ext = [D, H, W];
  let outS: Triple, scales: number[];
  if (opts.sizes !== undefined) {
    outS = triple("options.sizes", opts.sizes, 1, 1);
    scales = outS.map((o, i) => o / ext[i]!);
  } else if (Array.isArray(opts.scales) && opts.scales.length === 3 && opts.scales.every((v) => typeof v === "number" && v > 0)) {
    scales = opts.scales as number[];
    // (ONNX scales are float32, and the product is taken in float32 as onnxruntime does: 10 × 0.7f is
    // 6.9999999 in double but 7 in float; a JavaScript scale is taken as ONNX would store it)
    outS = ext.map((e, i) => Math.floor(Math.fround(e * Math.fround(scales[i]!)))) as Triple;
    if (outS.some((o) => o < 1)) throw new RangeError(`scales [${scales.join(", ")}] make an empty output`);
  } else throw invalidParameterError("options", "sizes [D, H, W] or scales [d, h, w]", options);
  const out = outputTensor([N, C, ...outS], opts.out, "resize output", opts.alloc, { x }, false);
  await activeBackend().resize3d(x.data, N * C, [D, H, W], outS, Float64Array.from(scales), mode === "linear", cm, nm, out.data);
  return out;
}

function axisSplit(x: Tensor, axis: number) {
  const ax = axis < 0 ? axis + x.shape.length : axis;
  if (!Number.isInteger(ax) || ax < 0 || ax >= x.shape.length)
    throw invalidParameterError("options.axis", `an axis of a rank-${x.shape.length} tensor`, axis);
  return { ax, outer: prod(x.shape.slice(0, ax)), C: x.shape[ax]!, inner: prod(x.shape.slice(ax + 1)) };
}

/** Softmax over an axis (default 1, the classes). */
export async function softmax(x: Tensor, options?: OutputOptions & { axis?: number }): Promise<Tensor> {
  assertTensor("x", x);
  const o = optionsObject("options", options);
  const { outer, C, inner } = axisSplit(x, (o.axis as number | undefined) ?? 1);
  const out = outputTensor([...x.shape], o.out, "softmax output", o.alloc, { x });
  await activeBackend().softmax(x.data, outer, C, inner, out.data);
  return out;
}

/** Index of the largest value along an axis (default 1; the first on ties); the axis is removed unless keepdims. */
export async function argmax(x: Tensor, options?: { axis?: number; keepdims?: boolean }): Promise<{ data: Int32Array; shape: number[] }> {
  assertTensor("x", x);
  const opts = optionsObject("options", options);
  const { ax, outer, C, inner } = axisSplit(x, (opts.axis as number | undefined) ?? 1);
  const shape = [...x.shape];
  if (opts.keepdims) shape[ax] = 1;
  else shape.splice(ax, 1);
  const out = allocArray("int32", outer * inner, "argmax output") as Int32Array;
  await activeBackend().argmax(x.data, outer, C, inner, out);
  return { data: out, shape };
}
