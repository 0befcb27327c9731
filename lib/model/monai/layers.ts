/**
 * MONAI's building blocks as ONNX nodes for the engine: its norm and activation factories
 * (`monai.networks.layers.factories`, read from a network_def's `norm` / `act` arguments as MONAI's
 * split_args reads them), Convolution / ADN, and a graph builder that names every parameter as
 * PyTorch's state_dict does (the module path, then `weight`, `bias`, `running_mean` …).
 */
import type { AttrValue } from "../onnx-proto.js";
import type { GraphNodeSpec, Param } from "../nnunet/network.js";
import type { StateDictNetwork } from "../state-dict.js";
import { brief } from "../../is.js";

/** A norm layer in eval mode. */
export interface NormSpec {
  kind: "instance" | "batch" | "group";
  affine: boolean;
  /** Eval mode applies running statistics (batch norm; instance norm with track_running_stats). */
  runningStats: boolean;
  eps: number;
  groups: number;
}

export type ActSpec =
  | { op: "relu" | "selu" | "sigmoid" | "tanh" | "relu6" | "mish" | "gelu" }
  | { op: "leakyrelu"; slope: number }
  | { op: "prelu"; n: number }
  | { op: "elu"; alpha: number }
  | { op: "swish"; alpha: number };

export const monaiError = (where: string, msg: string) => new Error(`${where}: ${msg}`);

/** MONAI's split_args: "name" or (name, {kwargs}) — a JSON list of two here. */
function splitArgs(v: unknown, where: string, what: string): [string, Record<string, unknown>] {
  if (typeof v === "string") return [v, {}];
  if (Array.isArray(v) && v.length === 2 && typeof v[0] === "string" && v[1] !== null && typeof v[1] === "object" && !Array.isArray(v[1]))
    return [v[0], v[1] as Record<string, unknown>];
  throw monaiError(where, `${what} must be a name or [name, {arguments}], got ${brief(v)}`);
}

function checkKwargs(kw: Record<string, unknown>, allowed: string[], where: string, what: string) {
  for (const k of Object.keys(kw))
    if (!allowed.includes(k))
      throw monaiError(where, `${what} has argument "${k}", which bhsd does not know for it (it knows ${allowed.join(", ") || "none"})`);
}

const num = (v: unknown, dflt: number, where: string, what: string, ok: (x: number) => boolean = Number.isFinite): number => {
  if (v === undefined) return dflt;
  if (typeof v !== "number" || !ok(v)) throw monaiError(where, `${what} must be a number in range, got ${brief(v)}`);
  return v;
};
const bool = (v: unknown, dflt: boolean, where: string, what: string): boolean => {
  if (v === undefined) return dflt;
  if (typeof v !== "boolean") throw monaiError(where, `${what} must be true or false, got ${brief(v)}`);
  return v;
};

/**
 * A norm argument as MONAI's get_norm_layer builds it (null or "": none): INSTANCE (affine off, no
 * running statistics by default, as torch's InstanceNormNd), BATCH / SYNCBATCH (affine, running
 * statistics), GROUP (num_groups, affine). Names are case-insensitive, as MONAI's factories.
 */
export function parseNorm(v: unknown, channelsHint: number | null, where: string, what: string): NormSpec | null {
  if (v === null || v === "") return null;
  const [rawName, kw] = splitArgs(v, where, what);
  const name = rawName.toLowerCase();
  const eps = num(kw.eps, 1e-5, where, `${what}'s eps`, (x) => x > 0 && x < 1);
  if (name === "instance" || name === "instance_nvfuser") {
    checkKwargs(kw, ["affine", "eps", "momentum", "track_running_stats", "num_features"], where, what);
    return {
      kind: "instance",
      affine: bool(kw.affine, false, where, `${what}'s affine`),
      runningStats: bool(kw.track_running_stats, false, where, `${what}'s track_running_stats`),
      eps,
      groups: 0,
    };
  }
  if (name === "batch" || name === "syncbatch") {
    checkKwargs(kw, ["affine", "eps", "momentum", "track_running_stats", "num_features"], where, what);
    if (!bool(kw.track_running_stats, true, where, `${what}'s track_running_stats`))
      throw monaiError(
        where,
        `${what}: batch norm without running statistics normalises by each batch's own in eval mode, which bhsd does not run`,
      );
    return { kind: "batch", affine: bool(kw.affine, true, where, `${what}'s affine`), runningStats: true, eps, groups: 0 };
  }
  if (name === "group") {
    checkKwargs(kw, ["num_groups", "affine", "eps", "num_channels"], where, what);
    if (kw.num_groups === undefined) throw monaiError(where, `${what}: a group norm needs num_groups`);
    const groups = num(kw.num_groups, 0, where, `${what}'s num_groups`, (x) => Number.isInteger(x) && x >= 1 && x <= 4096);
    if (channelsHint !== null && channelsHint % groups)
      throw monaiError(where, `${what}: ${channelsHint} channels do not split into ${groups} groups`);
    return { kind: "group", affine: bool(kw.affine, true, where, `${what}'s affine`), runningStats: false, eps, groups };
  }
  throw monaiError(where, `${what} "${rawName}" is not a norm bhsd builds (instance, batch, group)`);
}

/** An activation argument as MONAI's get_act_layer builds it (null or "": none). */
export function parseAct(v: unknown, where: string, what: string): ActSpec | null {
  if (v === null || v === "") return null;
  const [rawName, kw] = splitArgs(v, where, what);
  const name = rawName.toLowerCase();
  const simple = { relu: "relu", selu: "selu", sigmoid: "sigmoid", tanh: "tanh", relu6: "relu6", mish: "mish" } as const;
  if (Object.hasOwn(simple, name)) {
    checkKwargs(kw, ["inplace"], where, what);
    return { op: simple[name as keyof typeof simple] };
  }
  switch (name) {
    case "gelu":
      checkKwargs(kw, ["approximate"], where, what);
      if (kw.approximate !== undefined && kw.approximate !== "none")
        throw monaiError(where, `${what}: GELU's approximate ${brief(kw.approximate)} (bhsd builds "none")`);
      return { op: "gelu" };
    case "leakyrelu":
      checkKwargs(kw, ["negative_slope", "inplace"], where, what);
      return { op: "leakyrelu", slope: num(kw.negative_slope, 0.01, where, `${what}'s negative_slope`) };
    case "prelu":
      checkKwargs(kw, ["num_parameters", "init"], where, what);
      return { op: "prelu", n: num(kw.num_parameters, 1, where, `${what}'s num_parameters`, (x) => Number.isInteger(x) && x >= 1) };
    case "elu":
      checkKwargs(kw, ["alpha", "inplace"], where, what);
      return { op: "elu", alpha: num(kw.alpha, 1, where, `${what}'s alpha`) };
    case "swish":
    case "memswish":
      checkKwargs(kw, name === "swish" ? ["alpha"] : ["inplace"], where, what);
      return { op: "swish", alpha: num(kw.alpha, 1, where, `${what}'s alpha`) };
  }
  throw monaiError(
    where,
    `${what} "${rawName}" is not an activation bhsd builds (relu, leakyrelu, prelu, elu, selu, gelu, sigmoid, tanh, relu6, swish, mish)`,
  );
}

/** A positive integer, or one per spatial axis. */
export function perAxis(v: unknown, dims: number, where: string, what: string, min = 1): number[] {
  if (typeof v === "number" && Number.isInteger(v) && v >= min && v <= 1 << 16) return Array<number>(dims).fill(v);
  if (Array.isArray(v) && v.length === dims && v.every((x) => Number.isInteger(x) && x >= min && x <= 1 << 16)) return v as number[];
  throw monaiError(where, `${what} must be an integer ≥ ${min} or ${dims} of them, got ${brief(v)}`);
}

/** MONAI's same_padding: (k − 1) / 2 × dilation, which must be whole. */
export function samePadding(k: number[], dilation: number[], where: string, what: string): number[] {
  return k.map((x, i) => {
    const p = ((x - 1) / 2) * dilation[i]!;
    if (!Number.isInteger(p)) throw monaiError(where, `${what}: kernel ${brief(k)} has no "same" padding (MONAI needs odd kernels)`);
    return p;
  });
}

export interface ConvOptions {
  cin: number;
  cout: number;
  kernel: number[];
  stride: number[];
  /** Padding per spatial axis (both sides). */
  pad: number[];
  dilation?: number[];
  bias: boolean;
  transposed?: boolean;
  outputPadding?: number[];
  /** Channel groups (MedNeXt's depthwise convolutions: as many as channels). */
  groups?: number;
  /** Another module path the state_dict names the same parameters under (DNA's `all_modules.0`). */
  alias?: string;
}

/** Nodes, parameters and constants of a network under construction. */
export class GraphBuilder {
  readonly params: Param[] = [];
  readonly constants: { name: string; dims: number[]; data: Float32Array | BigInt64Array }[] = [];
  readonly unused: string[] = [];
  readonly nodes: GraphNodeSpec[] = [];
  private v = 0;
  private readonly paramByName = new Map<string, Param>();
  constructor(
    readonly dims: 1 | 2 | 3,
    readonly where: string,
  ) {}

  private fresh(hint: string) {
    return `${hint}:${this.v++}`;
  }
  /** A parameter; a module applied twice (SegResNet's ResBlock.act) names its parameters once. */
  param(names: string[], shape: number[], transposed = false): string {
    // (by name in a map: a search of the list was quadratic — MedNeXt's 4096 blocks, ~41k
    // parameters, held the event loop a minute at load)
    const had = this.paramByName.get(names[0]!);
    if (had) {
      if (had.shape.join() !== shape.join() || !!had.transposed !== transposed)
        throw new Error(`internal: parameter ${names[0]} with two shapes`);
      return had.names[0]!;
    }
    const p = { names, shape, ...(transposed ? { transposed } : {}) };
    this.params.push(p);
    this.paramByName.set(names[0]!, p);
    return names[0]!;
  }
  constant(hint: string, dims: number[], data: Float32Array | BigInt64Array): string {
    const name = this.fresh(`${hint}.const`);
    this.constants.push({ name, dims, data });
    return name;
  }
  /** A 1-D int64 constant (a shape, axes, starts …). */
  ints(hint: string, values: readonly number[]): string {
    return this.constant(
      hint,
      [values.length],
      BigInt64Array.from(values, (v) => BigInt(v)),
    );
  }
  reshape(x: string, shape: readonly number[], name: string): string {
    return this.node("Reshape", [x, this.ints(`${name}.shape`, shape)], name);
  }
  transpose(x: string, perm: number[], name: string): string {
    return this.node("Transpose", [x], name, { perm });
  }
  /**
   * torch.nn.Linear at `path` over the last axis of `x`: MatMul with the transposed weight (the
   * engine's GEMM), then the bias.
   */
  linear(path: string, x: string, cin: number, cout: number, bias: boolean): string {
    // (the weight, [cout, cin] in the state_dict, is held transposed: read so at load, not every run)
    const y = this.node("MatMul", [x, this.param([`${path}.weight`], [cout, cin], true)], path);
    return bias ? this.add(y, this.param([`${path}.bias`], [cout]), `${path}.bias`) : y;
  }
  /** torch.nn.LayerNorm over the last axis (`path` null: F.layer_norm without weights). */
  layerNorm(path: string | null, x: string, c: number, name = path ?? "layer_norm", eps = 1e-5): string {
    const scale = path ? this.param([`${path}.weight`], [c]) : this.constant(`${name}.ones`, [c], new Float32Array(c).fill(1));
    const bias = path ? this.param([`${path}.bias`], [c]) : this.constant(`${name}.zeros`, [c], new Float32Array(c));
    return this.node("LayerNormalization", [x, scale, bias], name, { axis: -1, epsilon: eps });
  }
  node(opType: string, inputs: string[], name: string, attrs: Record<string, AttrValue> = {}): string {
    const y = this.fresh(name);
    this.nodes.push({ opType, inputs, outputs: [y], name, attrs });
    return y;
  }
  /** torch.nn.ConvNd / ConvTransposeNd at module path `path` (`path.weight`, `path.bias`). */
  conv(path: string, x: string, o: ConvOptions): string {
    const k = o.kernel;
    const ones = Array<number>(this.dims).fill(1);
    const g = o.groups ?? 1;
    if (o.cin % g || o.cout % g) throw new Error(`internal: ${path}: ${o.cin} → ${o.cout} channels in ${g} groups`);
    const names = (p: string) => (o.alias ? [`${path}.${p}`, `${o.alias}.${p}`] : [`${path}.${p}`]);
    const w = this.param(names("weight"), o.transposed ? [o.cin, o.cout / g, ...k] : [o.cout, o.cin / g, ...k]);
    const inputs = [x, w];
    if (o.bias) inputs.push(this.param(names("bias"), [o.cout]));
    const attrs: Record<string, AttrValue> = {
      kernel_shape: k,
      strides: o.stride,
      pads: [...o.pad, ...o.pad],
      dilations: o.dilation ?? ones,
      group: g,
    };
    if (o.transposed && o.outputPadding?.some((p) => p !== 0)) attrs.output_padding = o.outputPadding;
    return this.node(o.transposed ? "ConvTranspose" : "Conv", inputs, path, attrs);
  }
  /** A norm module at `path` over `c` channels (`alias`: another path naming its parameters). */
  norm(spec: NormSpec, path: string, x: string, c: number, alias?: string): string {
    let scale: string, bias: string;
    if (spec.affine) {
      scale = this.param(alias ? [`${path}.weight`, `${alias}.weight`] : [`${path}.weight`], [c]);
      bias = this.param(alias ? [`${path}.bias`, `${alias}.bias`] : [`${path}.bias`], [c]);
    } else {
      scale = this.constant(`${path}.ones`, [c], new Float32Array(c).fill(1));
      bias = this.constant(`${path}.zeros`, [c], new Float32Array(c));
    }
    if (spec.runningStats) {
      const mean = this.param([`${path}.running_mean`], [c]),
        variance = this.param([`${path}.running_var`], [c]);
      this.unused.push(`${path}.num_batches_tracked`);
      return this.node("BatchNormalization", [x, scale, bias, mean, variance], path, { epsilon: spec.eps });
    }
    if (spec.kind === "group") {
      if (c % spec.groups) throw monaiError(this.where, `${path}: ${c} channels do not split into ${spec.groups} groups`);
      return this.node("GroupNormalization", [x, scale, bias], path, { epsilon: spec.eps, num_groups: spec.groups });
    }
    return this.node("InstanceNormalization", [x, scale, bias], path, { epsilon: spec.eps });
  }
  /** An activation module at `path` (PReLU's slopes are `path.weight`). */
  act(spec: ActSpec, path: string, x: string, c: number): string {
    switch (spec.op) {
      case "relu":
        return this.node("Relu", [x], path);
      case "leakyrelu":
        return this.node("LeakyRelu", [x], path, { alpha: spec.slope });
      case "prelu":
        if (spec.n !== 1 && spec.n !== c) throw monaiError(this.where, `${path}: PReLU with ${spec.n} parameters over ${c} channels`);
        return this.node("PRelu", [x, this.param([`${path}.weight`], [spec.n])], path);
      case "elu":
        return this.node("Elu", [x], path, { alpha: spec.alpha });
      case "selu":
        return this.node("Selu", [x], path);
      case "gelu":
        return this.node("Gelu", [x], path);
      case "sigmoid":
        return this.node("Sigmoid", [x], path);
      case "tanh":
        return this.node("Tanh", [x], path);
      case "relu6":
        return this.node(
          "Clip",
          [x, this.constant(`${path}.min`, [], new Float32Array([0])), this.constant(`${path}.max`, [], new Float32Array([6]))],
          path,
        );
      case "swish": {
        const ax = spec.alpha === 1 ? x : this.node("Mul", [x, this.constant(`${path}.alpha`, [], new Float32Array([spec.alpha]))], path);
        return this.node("Mul", [x, this.node("Sigmoid", [ax], path)], path);
      }
      case "mish":
        return this.node("Mul", [x, this.node("Tanh", [this.node("Softplus", [x], path)], path)], path);
    }
  }
  add(a: string, b: string, name: string): string {
    return this.node("Add", [a, b], name);
  }
  concat(xs: string[], name: string): string {
    return this.node("Concat", xs, name, { axis: 1 });
  }
  maxPool(x: string, k: number[], name: string): string {
    return this.node("MaxPool", [x], name, { kernel_shape: k, strides: k, pads: [...k, ...k].fill(0) });
  }
  /**
   * The graph built, its value `out` renamed "logits" (the network's output; the node writing it
   * and any that read it), from the input "input".
   */
  network(out: string): StateDictNetwork {
    const last = [...this.nodes].reverse().find((nd) => nd.outputs[0] === out);
    if (!last) throw new Error(`internal: the network's output ${out} has no node`);
    last.outputs[0] = "logits";
    for (const nd of this.nodes) nd.inputs = nd.inputs.map((i) => (i === out ? "logits" : i));
    return { params: this.params, constants: this.constants, unused: this.unused, nodes: this.nodes, input: "input", output: "logits" };
  }
  /** torch's interpolate(scale_factor=s, mode="(bi|tri)linear", align_corners=False). */
  upsampleLinear(x: string, scale: number[], name: string): string {
    return this.node("Resize", [x, "", this.constant(`${name}.scales`, [scale.length + 2], new Float32Array([1, 1, ...scale]))], name, {
      mode: "linear",
      coordinate_transformation_mode: "pytorch_half_pixel",
    });
  }
}

/** dynunet_block's get_padding: (k − s + 1) / 2 per axis, truncated (an error where negative). */
export function getPadding(kernel: number[], stride: number[], where: string, what: string): number[] {
  return kernel.map((q, i) => {
    const p = (q - stride[i]! + 1) / 2;
    if (p < 0) throw monaiError(where, `${what}: kernel ${brief(kernel)} is smaller than its stride ${brief(stride)} allows`);
    return Math.trunc(p);
  });
}

/**
 * dynunet_block's UnetResBlock (`residual`) or UnetBasicBlock at `path`: conv → norm → act → conv
 * → norm (+ the input, through a 1×1 conv and norm where channels or stride change) → act; the
 * convolutions without bias, as get_conv_layer makes them.
 */
export function unetBlock(
  b: GraphBuilder,
  norm: NormSpec,
  act: ActSpec,
  path: string,
  x: string,
  ci: number,
  co: number,
  kernel: number[],
  stride: number[],
  residual: boolean,
): string {
  const ones = Array<number>(b.dims).fill(1);
  const conv = (p: string, v: string, i: number, kk: number[], s: number[]) =>
    b.conv(`${p}.conv`, v, { cin: i, cout: co, kernel: kk, stride: s, pad: getPadding(kk, s, b.where, p), bias: false });
  let y = b.act(act, `${path}.lrelu`, b.norm(norm, `${path}.norm1`, conv(`${path}.conv1`, x, ci, kernel, stride), co), co);
  y = b.norm(norm, `${path}.norm2`, conv(`${path}.conv2`, y, co, kernel, ones), co);
  if (residual) {
    let r = x;
    if (ci !== co || stride.some((q) => q !== 1)) r = b.norm(norm, `${path}.norm3`, conv(`${path}.conv3`, x, ci, ones, stride), co);
    y = b.add(y, r, `${path}.add`);
  }
  return b.act(act, `${path}.lrelu`, y, co);
}

/** get_conv_layer's transposed convolution at `path` (kernel = stride, as UNETR's and SwinUNETR's up-sampling; no bias). */
export function transposedConv(b: GraphBuilder, path: string, x: string, ci: number, co: number, k: number[], bias = false): string {
  const pad = getPadding(k, k, b.where, path);
  return b.conv(`${path}.conv`, x, {
    cin: ci,
    cout: co,
    kernel: k,
    stride: k,
    pad,
    bias,
    transposed: true,
    outputPadding: pad.map((p) => 2 * p),
  });
}
