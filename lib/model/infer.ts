/**
 * Shape inference at load: for a model whose inputs declare every dimension (a static export, as
 * onnxruntime checks at session creation), every value's shape is worked out from the declared
 * input shapes before anything runs, and a node that could never run on them — a Reshape that does
 * not divide, a Conv whose weights do not match its input's channels, shapes that do not broadcast
 * or concatenate, a kernel larger than its padded input — is refused at load, naming the node.
 *
 * Float values are followed by shape only (each op's rule below, the same arithmetic as the op's
 * own checks in ops/tensor.ts and nd.ts); integer values (the exporters' shape glue: Shape →
 * Gather → Unsqueeze → Concat → Reshape targets) are computed for real by the executor's own
 * `runNode`, so a Reshape sees the very target it will get at run time. An op without a rule here,
 * or a value that depends on data (a mask from activations), makes what follows it unknown: the
 * inference then says nothing about it rather than guess, and the run checks it as before.
 */
import { BOOLEAN_BINARY_OPS, BOOLEAN_OPS, SAME_SHAPE_FLOAT_OPS } from "./cast-like.js";
import type { Attr, GraphNode, OnnxTensor } from "./graph.js";
import { MAMBA_CONV_OP, mambaConvShape, SELECTIVE_SCAN_OP, selectiveScanShape } from "./mamba.js";
import { broadcastShapes, broadcastsTo, normAxis, size, slicePlan } from "./nd.js";
import type { Value } from "./ops.js";
import { checkSpatialRank, dropShape, liftShape, SPATIAL_OPS, spatialOf } from "./spatial.js";

/** A value as inference knows it: its shape, whether it holds integers, and its numbers when known. */
interface Known {
  shape: number[];
  int: boolean;
  value?: Value;
}

/** Evaluates a node on known values (the executor's runNode). */
export type Evaluate = (n: GraphNode, args: (Value | undefined)[]) => Promise<Value[]>;

/** Integer glue larger than this is followed by shape only (it is never a shape or an index list). */
const MAX_EVALUATED = 1 << 16;

/** The shape a Reshape produces (ONNX Reshape: 0 copies an axis unless allowzero, one -1 is inferred). */
export function reshapeShape(s0: readonly number[], spec: readonly number[], allowzero: boolean): number[] {
  const len = size(s0);
  const want = spec.map((d, i) => {
    if (d === 0 && !allowzero) {
      if (i >= s0.length) throw new RangeError(`Reshape: 0 at position ${i} copies an axis the input [${s0}] does not have`);
      return s0[i]!;
    }
    return d;
  });
  const holes = want.filter((d) => d === -1).length;
  if (holes > 1 || want.some((d) => !Number.isInteger(d) || d < -1))
    throw new RangeError(`Reshape to [${spec}]: dimensions must be integers ≥ 0 with at most one -1`);
  const known = size(want.filter((d) => d !== -1));
  if (holes === 1) {
    if (known === 0 || len % known !== 0)
      throw new RangeError(`Reshape of [${s0}] (${len} values) to [${spec}]: ${len} is not a multiple of ${known}`);
  } else if (known !== len) throw new RangeError(`Reshape of [${s0}] (${len} values) to [${spec}] (${known} values)`);
  return want.map((d) => (d === -1 ? len / known : d));
}

/** Unsqueeze's and Squeeze's output shape. */
export function squeezeShape(s: readonly number[], axes: readonly number[], unsqueeze: boolean): number[] {
  if (unsqueeze) {
    const ns = [...s];
    const rank = s.length + axes.length;
    const norm = axes.map((x) => normAxis(x, rank, "Unsqueeze axis"));
    if (new Set(norm).size !== norm.length) throw new RangeError(`Unsqueeze axes [${axes}] repeat an axis`);
    for (const ax of norm.sort((p, q) => p - q)) ns.splice(ax, 0, 1);
    return ns;
  }
  const drop = new Set(
    (axes.length ? axes : s.map((d, i) => (d === 1 ? i : -1)).filter((i) => i >= 0)).map((x) => normAxis(x, s.length, "Squeeze axis")),
  );
  for (const i of drop) if (s[i] !== 1) throw new RangeError(`Squeeze of axis ${i} of [${s}], which is not 1`);
  return s.filter((_, i) => !drop.has(i));
}

const ints = (k: Known | undefined | null): number[] | undefined => {
  const v = k?.value;
  if (!v) return undefined;
  return "ints" in v ? v.ints : v.f.data.length <= 64 ? Array.from(v.f.data) : undefined;
};
const triple = (a: Attr | undefined, d: number): number[] => (Array.isArray(a) ? (a as number[]) : [d, d, d]);
const pads6 = (a: Attr | undefined, autoPad: Attr | undefined): number[] =>
  autoPad === "VALID" || !Array.isArray(a) ? [0, 0, 0, 0, 0, 0] : (a as number[]);
const same = (x: Known, int = x.int): Known => ({ shape: [...x.shape], int });
const float = (shape: number[]): Known => ({ shape, int: false });
const rank5 = (x: Known, what: string) => {
  if (x.shape.length !== 5) throw new RangeError(`${what} [${x.shape}] must be [N, C, D, H, W] (the engine's 3-D ops take rank 5)`);
};
/** Per-channel parameter `p` must hold C values (or `alt` when given). */
const perChannel = (p: Known | undefined | null, C: number, what: string, alt?: number) => {
  if (p && size(p.shape) !== C && size(p.shape) !== alt) throw new RangeError(`${what} has ${size(p.shape)} values for ${C} channels`);
};

type Rule = (x: (Known | undefined | null)[], at: Record<string, Attr>, n: GraphNode, opset: number) => (Known | undefined)[];

const SAME_SHAPE = ["Relu", "LeakyRelu", "Identity", "Dropout", "Neg", "Abs", ...SAME_SHAPE_FLOAT_OPS];
const BROADCAST = ["Add", "Sub", "Mul", "Div", "Pow", "Mod", "Max", "Min", "Sum", "Mean", ...BOOLEAN_BINARY_OPS, "Where"];

function convOut(x: Known, w: Known, at: Record<string, Attr>): number[] {
  const [N, C] = x.shape as [number, number];
  const [Co, Cg] = w.shape as [number, number];
  const g = (at.group as number | undefined) ?? 1;
  if (C % g || Co % g) throw new RangeError(`input channels ${C} and output channels ${Co} must both be divisible by group ${g}`);
  if (Cg !== C / g) throw new RangeError(`the weights [${w.shape}] take ${Cg * g} input channels but the input [${x.shape}] has ${C}`);
  const s = triple(at.strides, 1),
    d = triple(at.dilations, 1),
    p = pads6(at.pads, at.auto_pad);
  return [
    N,
    Co,
    ...x.shape.slice(2).map((e, i) => {
      const span = d[i]! * (w.shape[2 + i]! - 1) + 1,
        padded = e + p[i]! + p[i + 3]!;
      if (padded < span)
        throw new RangeError(`input extent ${e} on axis ${"DHW"[i]} (padded ${padded}) is smaller than the kernel's span ${span}`);
      return Math.floor((padded - span) / s[i]!) + 1;
    }),
  ];
}

/** A Conv node's output shape for these input and weight shapes (throws where they do not fit). */
export const convOutputShape = (x: number[], w: number[], at: Record<string, Attr>): number[] =>
  convOut({ shape: x, int: false }, { shape: w, int: false }, at);

const RULES: Record<string, Rule> = {
  [MAMBA_CONV_OP]: ([xz, w, b]) => {
    if (!xz || !w) return [undefined];
    const s = mambaConvShape(xz.shape, w.shape, b?.shape);
    return [float([s.B, s.L, s.Di])];
  },
  [SELECTIVE_SCAN_OP]: (a) => {
    if (a.length !== 6 || a.some((v) => !v)) return [undefined];
    const [u, delta, aLog, xDbl, d, xz] = a as Known[];
    const s = selectiveScanShape(u!.shape, delta!.shape, aLog!.shape, xDbl!.shape, d!.shape, xz!.shape);
    return [float([s.B, s.L, s.Di])];
  },
  Conv: ([x, w, b], at) => {
    if (!x || !w) return [undefined];
    rank5(x, "input");
    if (w.shape.length !== 5) throw new RangeError(`weights [${w.shape}] must be rank 5`);
    const shape = convOut(x, w, at);
    perChannel(b, shape[1]!, "bias");
    return [float(shape)];
  },
  ConvTranspose: ([x, w], at) => {
    if (!x || !w) return [undefined];
    rank5(x, "input");
    if (w.shape.length !== 5) throw new RangeError(`weights [${w.shape}] must be rank 5`);
    const g = (at.group as number | undefined) ?? 1;
    if (w.shape[0] !== x.shape[1])
      throw new RangeError(`the weights [${w.shape}] take ${w.shape[0]} input channels but the input [${x.shape}] has ${x.shape[1]}`);
    const s = triple(at.strides, 1),
      d = triple(at.dilations, 1),
      p = pads6(at.pads, at.auto_pad),
      op = triple(at.output_padding, 0);
    const out = x.shape.slice(2).map((e, i) => {
      const o = (e - 1) * s[i]! - p[i]! - p[i + 3]! + d[i]! * (w.shape[2 + i]! - 1) + op[i]! + 1;
      if (o < 1) throw new RangeError(`the output extent on axis ${"DHW"[i]} would be ${o}`);
      return o;
    });
    return [float([x.shape[0]!, w.shape[1]! * g, ...out])];
  },
  MaxPool: (x, at) => poolRule(x, at),
  AveragePool: (x, at) => poolRule(x, at),

  InstanceNormalization: ([x, scale, bias]) => {
    if (!x) return [undefined];
    const C = x.shape.length > 1 ? x.shape[1]! : 1;
    perChannel(scale, C, "scale");
    perChannel(bias, C, "B");
    return [same(x)];
  },
  BatchNormalization: ([x, ...params]) => {
    if (!x) return [undefined];
    const C = x.shape.length > 1 ? x.shape[1]! : 1;
    params.slice(0, 4).forEach((p, i) => perChannel(p, C, ["scale", "B", "mean", "var"][i]!));
    return [same(x)];
  },
  PRelu: ([x, slope]) => {
    if (!x) return [undefined];
    // (unidirectional broadcasting: the slope's trailing axes match X's or are 1)
    if (slope && !broadcastsTo(slope.shape, x.shape)) throw new RangeError(`slope [${slope.shape}] does not broadcast to X [${x.shape}]`);
    return [same(x)];
  },
  Not: ([x]) => [x ? same(x, true) : undefined],
  // (quant.ts: both give floats, a QuantizeLinear being fused with its DequantizeLinear)
  QuantizeLinear: ([x]) => [x ? float([...x.shape]) : undefined],
  DequantizeLinear: ([x]) => [x ? float([...x.shape]) : undefined],
  DynamicQuantizeLinear: ([x]) => (x ? [float([...x.shape]), float([]), float([])] : [undefined, undefined, undefined]),
  Cast: ([x], at) => [x ? { shape: [...x.shape], int: ![1, 10, 11, 16].includes(at.to as number) } : undefined],
  CastLike: ([x, like]) => [x && like ? { shape: [...x.shape], int: like.int } : undefined],
  Concat: (xs, at) => {
    if (xs.some((x) => !x)) return [undefined];
    const ks = xs as Known[];
    const r = ks[0]!.shape.length,
      a = normAxis((at.axis as number | undefined) ?? 0, r, "Concat axis");
    for (const k of ks)
      if (k.shape.length !== r || k.shape.some((d, i) => i !== a && d !== ks[0]!.shape[i]))
        throw new RangeError(`shapes ${ks.map((y) => `[${y.shape}]`).join(", ")} do not concatenate on axis ${a}`);
    const shape = [...ks[0]!.shape];
    shape[a] = ks.reduce((s, k) => s + k.shape[a]!, 0);
    return [{ shape, int: ks.every((k) => k.int) }];
  },
  Reshape: ([x, spec], at) => {
    const target = ints(spec);
    if (!x || !target) return [undefined];
    return [{ shape: reshapeShape(x.shape, target, !!at.allowzero), int: x.int }];
  },
  Flatten: ([x], at) => {
    if (!x) return [undefined];
    const ax = normAxis((at.axis as number | undefined) ?? 1, x.shape.length + 1, "Flatten axis");
    return [{ shape: [size(x.shape.slice(0, ax)), size(x.shape.slice(ax))], int: x.int }];
  },
  Unsqueeze: ([x, axes], at) => {
    const ax = axes ? ints(axes) : ((at.axes as number[] | undefined) ?? []);
    if (!x || !ax) return [undefined];
    return [{ shape: squeezeShape(x.shape, ax, true), int: x.int }];
  },
  Squeeze: ([x, axes], at) => {
    const ax = axes ? ints(axes) : ((at.axes as number[] | undefined) ?? []);
    if (!x || !ax) return [undefined];
    return [{ shape: squeezeShape(x.shape, ax, false), int: x.int }];
  },
  Transpose: ([x], at) => {
    if (!x) return [undefined];
    const r = x.shape.length,
      p = (at.perm as number[] | undefined) ?? x.shape.map((_, i) => r - 1 - i);
    if (p.length !== r || new Set(p.map((a) => normAxis(a, r, "perm axis"))).size !== r)
      throw new RangeError(`perm [${p}] is not a permutation of ${r} axes`);
    return [{ shape: p.map((a) => x.shape[a < 0 ? a + r : a]!), int: x.int }];
  },
  Resize: ([x, , scales, sizes]) => {
    if (!x) return [undefined];
    // over one, two or three spatial axes (spatial.ts: the fewer are the 3-D op with unit axes added)
    const r = x.shape.length;
    if (r < 3 || r > 5) throw new RangeError(`input [${x.shape}] must be [N, C, ...1 to 3 spatial axes] for Resize`);
    const sz = sizes ? ints(sizes) : undefined;
    if (sz?.length) {
      if (sz.length !== r || sz[0] !== x.shape[0] || sz[1] !== x.shape[1])
        throw new RangeError(`sizes [${sz}] must keep N and C of [${x.shape}]`);
      return [float([...sz])];
    }
    const sc = scales?.value ? ("f" in scales.value ? Array.from(scales.value.f.data) : scales.value.ints) : undefined;
    if (!sc) return [undefined];
    if (sc.length !== r || sc[0] !== 1 || sc[1] !== 1)
      throw new RangeError(`Resize needs ${r} scales (1 for N and C) or ${r} sizes for its input [${x.shape}]`);
    // (the product in float32, as onnxruntime takes it: 10 × 0.7f is 6.9999999 in double but 7 in float)
    const out = x.shape.slice(2).map((e, i) => Math.floor(Math.fround(e * sc[2 + i]!)));
    if (out.some((o) => o < 1)) throw new RangeError(`scales [${sc}] make an empty output`);
    return [float([x.shape[0]!, x.shape[1]!, ...out])];
  },
  ArgMax: ([x], at) => {
    if (!x) return [undefined];
    const a = normAxis((at.axis as number | undefined) ?? 0, x.shape.length, "ArgMax axis");
    return [float(at.keepdims === 0 ? x.shape.filter((_, i) => i !== a) : x.shape.map((d, i) => (i === a ? 1 : d)))];
  },
  Gather: ([x, idx], at) => {
    if (!x || !idx) return [undefined];
    const a = normAxis((at.axis as number | undefined) ?? 0, x.shape.length, "Gather axis");
    const known = ints(idx);
    if (known)
      for (const v of known)
        if (v < -x.shape[a]! || v >= x.shape[a]!) throw new RangeError(`index ${v} is out of range for axis ${a} of ${x.shape[a]}`);
    return [{ shape: [...x.shape.slice(0, a), ...idx.shape, ...x.shape.slice(a + 1)], int: x.int }];
  },
  ScatterND: ([x, idx, upd]) => {
    if (!x) return [undefined];
    if (idx && upd) {
      const r = x.shape.length,
        q = idx.shape.length,
        k = idx.shape[q - 1] ?? 0;
      if (q < 1 || k < 1 || k > r)
        throw new RangeError(`the indices' last axis must hold 1 to ${r} values, got indices of shape [${idx.shape}]`);
      const want = [...idx.shape.slice(0, q - 1), ...x.shape.slice(k)];
      if (upd.shape.length !== want.length || upd.shape.some((d, i) => d !== want[i]))
        throw new RangeError(`updates must have shape [${want}] for data [${x.shape}] and indices [${idx.shape}], got [${upd.shape}]`);
      ints(idx)?.forEach((v, i) => {
        const d = x.shape[i % k]!;
        if (v < -d || v >= d) throw new RangeError(`index ${v} is out of range for axis ${i % k} of ${d}`);
      });
    }
    return [{ shape: [...x.shape], int: x.int }];
  },
  Slice: ([x, starts, ends, axes, steps]) => {
    const b = ints(starts),
      e = ints(ends),
      ax = axes ? ints(axes) : undefined,
      st = steps ? ints(steps) : undefined;
    if (!x || !b || !e || (axes && !ax) || (steps && !st)) return [undefined];
    return [{ shape: slicePlan(x.shape, b, e, ax, st, "Slice").shape, int: x.int }];
  },
  Pad: ([x, pads, , axes], at) => {
    if (!x) return [undefined];
    let p = pads ? ints(pads) : ((at.pads as number[] | undefined) ?? []);
    if (!p) return [undefined];
    const r = x.shape.length;
    if (axes) {
      const ax = ints(axes);
      if (!ax) return [undefined];
      const full = new Array<number>(2 * r).fill(0);
      ax.map((a) => normAxis(a, r, "Pad axis")).forEach((a, k) => ((full[a] = p![k]!), (full[a + r] = p![k + ax.length]!)));
      p = full;
    }
    if (p.length !== 2 * r) throw new RangeError(`${p.length} pads for rank ${r} (need ${2 * r})`);
    const shape = x.shape.map((d, i) => d + p![i]! + p![i + r]!);
    if (shape.some((d) => d < 0)) throw new RangeError(`pads [${p}] crop more than [${x.shape}] holds`);
    return [{ shape, int: x.int }];
  },
  MatMul: ([a, b]) => {
    if (!a || !b) return [undefined];
    if (!a.shape.length || !b.shape.length) throw new RangeError("MatMul of a scalar");
    const A = a.shape.length === 1 ? [1, a.shape[0]!] : a.shape,
      B = b.shape.length === 1 ? [b.shape[0]!, 1] : b.shape;
    const M = A[A.length - 2]!,
      K = A[A.length - 1]!,
      K2 = B[B.length - 2]!,
      N = B[B.length - 1]!;
    if (K !== K2) throw new RangeError(`[${a.shape}] × [${b.shape}]: inner dimensions ${K} and ${K2} differ`);
    const batch = broadcastShapes([A.slice(0, -2), B.slice(0, -2)], "MatMul");
    const shape =
      a.shape.length === 1 && b.shape.length === 1
        ? batch
        : a.shape.length === 1
          ? [...batch, N]
          : b.shape.length === 1
            ? [...batch, M]
            : [...batch, M, N];
    return [{ shape, int: a.int && b.int }];
  },
  Gemm: ([a, b, c], at) => {
    if (!a || !b) return [undefined];
    if (a.shape.length !== 2 || b.shape.length !== 2) throw new RangeError("Gemm takes 2-D A and B");
    const [M, K] = at.transA ? [a.shape[1]!, a.shape[0]!] : [a.shape[0]!, a.shape[1]!];
    const [K2, N] = at.transB ? [b.shape[1]!, b.shape[0]!] : [b.shape[0]!, b.shape[1]!];
    if (K !== K2) throw new RangeError(`A [${a.shape}] and B [${b.shape}]: inner dimensions ${K} and ${K2} differ`);
    return [float(c ? broadcastShapes([[M, N], c.shape], "Gemm") : [M, N])];
  },
  Einsum: ([a, b], at) => {
    if (!a || !b) return [undefined];
    const m = /^([a-zA-Z]+),([a-zA-Z]+)->([a-zA-Z]*)$/.exec(String(at.equation).replace(/\s/g, ""));
    if (!m) throw new RangeError(`equation ${String(at.equation)} is not a two-operand einsum with an explicit output`);
    if (m[1]!.length !== a.shape.length || m[2]!.length !== b.shape.length)
      throw new RangeError(`${String(at.equation)} does not match ranks ${a.shape.length} and ${b.shape.length}`);
    const dim = new Map<string, number>();
    for (const [ls, s] of [
      [m[1]!, a.shape],
      [m[2]!, b.shape],
    ] as const)
      [...ls].forEach((c, i) => {
        const d = s[i]!,
          had = dim.get(c);
        if (had !== undefined && had !== d && had !== 1 && d !== 1) throw new RangeError(`index ${c} is ${had} and ${d}`);
        dim.set(c, Math.max(had ?? 1, d));
      });
    return [
      {
        shape: [...m[3]!].map((c) => {
          const d = dim.get(c);
          if (d === undefined) throw new RangeError(`output index ${c} is in neither operand`);
          return d;
        }),
        int: a.int && b.int,
      },
    ];
  },
  LayerNormalization: ([x, scale, bias], at) => {
    if (!x) return [undefined];
    const normalised = x.shape.slice(normAxis((at.axis as number | undefined) ?? -1, x.shape.length, "LayerNormalization axis"));
    // (one value, one per normalised element, or a shape that broadcasts to the normalised axes)
    for (const [t, nm] of [
      [scale, "Scale"],
      [bias, "B"],
    ] as const)
      if (t && !broadcastsTo(t.shape, normalised) && size(t.shape) !== size(normalised) && size(t.shape) !== 1)
        throw new RangeError(`${nm} [${t.shape}] does not broadcast to the normalised axes [${normalised}]`);
    return [same(x)];
  },
  GroupNormalization: ([x, scale, bias], at) => {
    if (!x) return [undefined];
    if (x.shape.length < 3) throw new RangeError(`input [${x.shape}] must be [N, C, ...spatial]`);
    const C = x.shape[1]!,
      G = at.num_groups as number;
    if (!G || C % G) throw new RangeError(`${C} channels do not split into ${G} groups`);
    perChannel(scale, C, "scale", G);
    perChannel(bias, C, "bias", G);
    return [same(x)];
  },
  ReduceMean: (x, at) => reduceRule(x, at),
  ReduceSum: (x, at) => reduceRule(x, at),
  ReduceMax: (x, at) => reduceRule(x, at),
  ReduceMin: (x, at) => reduceRule(x, at),
  ReduceProd: (x, at) => reduceRule(x, at),
  ReduceL1: (x, at) => reduceRule(x, at),
  ReduceL2: (x, at) => reduceRule(x, at),
  ReduceSumSquare: (x, at) => reduceRule(x, at),
  ReduceLogSum: (x, at) => reduceRule(x, at),
  ReduceLogSumExp: (x, at) => reduceRule(x, at),
  GlobalAveragePool: ([x]) => [x ? globalPoolShape(x) : undefined],
  GlobalMaxPool: ([x]) => [x ? globalPoolShape(x) : undefined],
  IsNaN: ([x]) => [x ? same(x, true) : undefined],
  IsInf: ([x]) => [x ? same(x, true) : undefined],
  Expand: ([x, shape]) => {
    const s = ints(shape);
    if (!x || !s) return [undefined];
    return [{ shape: broadcastShapes([x.shape, s], "Expand"), int: x.int }];
  },
  Tile: ([x, reps]) => {
    const r = ints(reps);
    if (!x || !r) return [undefined];
    if (r.length !== x.shape.length || r.some((v) => !Number.isInteger(v) || v < 0))
      throw new RangeError(`repeats [${r}] must be ${x.shape.length} non-negative integers`);
    return [{ shape: x.shape.map((d, i) => d * r[i]!), int: x.int }];
  },
  ConstantOfShape: ([shape], at) => {
    const s = ints(shape);
    if (!s) return [undefined];
    if (s.some((d) => !Number.isSafeInteger(d) || d < 0)) throw new RangeError(`shape [${s}] must hold non-negative integers`);
    const v = at.value as OnnxTensor | undefined;
    return [{ shape: [...s], int: v !== undefined && !v.f32 }];
  },
  Range: ([start, limit, delta]) => {
    const [s0, l, d] = [ints(start), ints(limit), ints(delta)];
    if (!start || !s0 || !l || !d) return [undefined];
    if (!(d[0] !== 0) || ![s0[0], l[0], d[0]].every((v) => Number.isFinite(v)))
      throw new RangeError(`Range(${s0[0]}, ${l[0]}, ${d[0]}) needs a non-zero delta and finite bounds`);
    return [{ shape: [Math.max(Math.ceil((l[0]! - s0[0]!) / d[0]!), 0)], int: start.int }];
  },
  Split: ([x, split], at, n) => {
    if (!x) return n.outputs.map(() => undefined);
    const a = normAxis((at.axis as number | undefined) ?? 0, x.shape.length, "Split axis");
    const d = x.shape[a]!,
      outs = n.outputs.length;
    let parts = split ? ints(split) : (at.split as number[] | undefined);
    if (split && !parts) return n.outputs.map(() => undefined);
    if (!parts) {
      const k = (at.num_outputs as number | undefined) ?? outs,
        each = Math.ceil(d / k);
      parts = Array.from({ length: k }, (_, i) => Math.max(0, Math.min(each, d - i * each)));
    }
    if (parts.length !== outs || parts.reduce((p, q) => p + q, 0) !== d || parts.some((p) => p < 0))
      throw new RangeError(`split [${parts}] does not divide axis ${a} of [${x.shape}] into ${outs} outputs`);
    return parts.map((p) => ({ shape: x.shape.map((e, i) => (i === a ? p : e)), int: x.int }));
  },
};
function poolRule([x]: (Known | undefined | null)[], at: Record<string, Attr>): (Known | undefined)[] {
  if (!x) return [undefined];
  rank5(x, "input");
  const k = triple(at.kernel_shape, 1),
    s = triple(at.strides, 1),
    d = triple(at.dilations, 1),
    p = pads6(at.pads, at.auto_pad),
    ceil = at.ceil_mode === 1;
  const out = x.shape.slice(2).map((e, i) => {
    const span = d[i]! * (k[i]! - 1) + 1,
      padded = e + p[i]! + p[i + 3]!;
    if (padded < span) throw new RangeError(`input extent ${e} on axis ${"DHW"[i]} is smaller than the window ${span}`);
    let o = (ceil ? Math.ceil : Math.floor)((padded - span) / s[i]!) + 1;
    if (ceil && (o - 1) * s[i]! >= e + p[i]!) o--;
    return o;
  });
  return [float([x.shape[0]!, x.shape[1]!, ...out])];
}

function globalPoolShape(x: Known): Known {
  if (x.shape.length < 3) throw new RangeError(`input [${x.shape}] must be [N, C, ...spatial axes]`);
  return { shape: x.shape.map((d, i) => (i < 2 ? d : 1)), int: x.int };
}

function reduceRule([x, axes]: (Known | undefined | null)[], at: Record<string, Attr>): (Known | undefined)[] {
  const ax = axes ? ints(axes) : ((at.axes as number[] | undefined) ?? []);
  if (!x || !ax) return [undefined];
  if (ax.length === 0 && at.noop_with_empty_axes) return [same(x)];
  const r = x.shape.length;
  const set = new Set((ax.length ? ax : x.shape.map((_, i) => i)).map((a) => normAxis(a, r, "axis")));
  return [{ shape: at.keepdims === 0 ? x.shape.filter((_, i) => !set.has(i)) : x.shape.map((d, i) => (set.has(i) ? 1 : d)), int: x.int }];
}

// a 1-D or 2-D spatial node (spatial.ts): its input and weights of its own rank, viewed with unit
// axes added as it runs, and its output without them
for (const op of SPATIAL_OPS) {
  const rule3 = RULES[op]!;
  RULES[op] = (xs, at, n, opset) => {
    const sp = spatialOf(at);
    if (sp === 3) return rule3(xs, at, n, opset);
    const [x, w] = xs;
    if (x) checkSpatialRank(x.shape, sp, "input");
    if (w && !op.endsWith("Pool")) checkSpatialRank(w.shape, sp, "weights");
    const lifted = xs.map((k, i) => (k && i < 2 && !(i === 1 && op.endsWith("Pool")) ? { ...k, shape: liftShape(k.shape, sp) } : k));
    return rule3(lifted, at, n, opset).map((k) => k && { ...k, shape: dropShape(k.shape, sp) });
  };
}
for (const op of SAME_SHAPE) RULES[op] ??= ([x]) => [x ? same(x) : undefined];
for (const op of BROADCAST) {
  RULES[op] = (xs) => {
    const present = xs.filter((x): x is Known | undefined => x !== null);
    if (present.some((x) => !x) || present.length === 0) return [undefined];
    const ks = present as Known[];
    const shape = broadcastShapes(
      ks.map((k) => k.shape),
      op,
    );
    const int = BOOLEAN_OPS.has(op) || (op === "Where" ? ks[1]!.int && ks[2]!.int : ks.every((k) => k.int));
    return [{ shape, int: op === "Mean" ? false : int }];
  };
}

/**
 * Infers every value's shape for the declared input shapes, or returns undefined when an input
 * declares a symbolic dimension. Throws `node NAME (OP): …` for a node that cannot run on them.
 * `values`, where given, receives the values computed along the way (shape glue, small results of
 * known inputs), by name — what these input shapes make constant.
 */
export async function inferShapes(
  nodes: readonly GraphNode[],
  initializers: ReadonlyMap<string, OnnxTensor>,
  inputs: readonly { name: string; shape: (number | string)[] }[],
  opset: number,
  evaluate: Evaluate,
  constValue: (t: OnnxTensor) => Value,
  values?: Map<string, Value>,
): Promise<Map<string, number[]> | undefined> {
  if (!inputs.every((i) => i.shape.every((d) => typeof d === "number" && Number.isSafeInteger(d) && d >= 0))) return undefined;
  const env = new Map<string, Known>();
  for (const [k, t] of initializers) {
    const v = constValue(t);
    env.set(k, { shape: "f" in v ? v.f.shape : v.shape, int: !("f" in v), value: v });
  }
  for (const i of inputs) env.set(i.name, { shape: i.shape as number[], int: false });
  for (const n of nodes) {
    const args = n.inputs.map((i) => (i ? env.get(i) : null));
    let outs: (Known | undefined)[];
    try {
      outs = await inferNode(n, args, opset, evaluate);
    } catch (e) {
      throw new Error(
        `node ${n.name} (${n.opType}): ${(e as Error).message} — for the model's declared input shapes ${inputs.map((i) => `${i.name} [${i.shape}]`).join(", ")}`,
        { cause: e },
      );
    }
    outs.forEach((k, i) => {
      const o = n.outputs[i];
      if (o && k) {
        if (!k.shape.every((d) => Number.isSafeInteger(d) && d >= 0) || !Number.isSafeInteger(size(k.shape)))
          throw new Error(`node ${n.name} (${n.opType}): output shape [${k.shape}] is not a valid size`);
        env.set(o, k);
        if (values && k.value) values.set(o, k.value);
      }
    });
  }
  const shapes = new Map<string, number[]>();
  for (const [k, v] of env) if (!initializers.has(k)) shapes.set(k, v.shape);
  return shapes;
}

async function inferNode(
  n: GraphNode,
  args: (Known | undefined | null)[],
  opset: number,
  evaluate: Evaluate,
): Promise<(Known | undefined)[]> {
  const present = args.filter((a): a is Known | undefined => a !== null);
  // Shape and Size read only their input's shape: their numbers are known whenever it is
  if ((n.opType === "Shape" || n.opType === "Size") && args[0]) {
    const s = args[0].shape;
    if (n.opType === "Size") return [{ shape: [], int: true, value: { ints: [size(s)], shape: [] } }];
    const r = s.length,
      clampI = (v: number) => Math.max(0, Math.min(r, v < 0 ? v + r : v));
    const d = s.slice(clampI((n.attrs.start as number | undefined) ?? 0), clampI((n.attrs.end as number | undefined) ?? r));
    return [{ shape: [d.length], int: true, value: { ints: d, shape: [d.length] } }];
  }
  if (n.opType === "Constant") {
    const vs = await evaluate(n, []);
    return vs.map((v) => ({ shape: "f" in v ? v.f.shape : v.shape, int: !("f" in v), value: v }));
  }
  const rule = RULES[n.opType];
  if (!rule) return n.outputs.map(() => undefined);
  const byRule = rule(args, n.attrs, n, opset);
  // every input's numbers known and small, and so is the result (shape glue): the executor
  // computes it for real; a big result (a ConstantOfShape of an activation's shape) stays a shape
  const small = (k: Known | undefined | null) => !!k && size(k.shape) <= MAX_EVALUATED;
  if (present.every((a) => a?.value && small(a)) && byRule.every(small)) {
    const vs = await evaluate(
      n,
      args.map((a) => a?.value),
    );
    return vs.map((v) => ({ shape: "f" in v ? v.f.shape : v.shape, int: !("f" in v), value: v }));
  }
  return byRule;
}
