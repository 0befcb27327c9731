/** onnxruntime-node as the outside reference: one-node ONNX graphs, built with protobufjs, run on ORT's CPU provider. */
import type { ExecutionContext } from "ava";
import ort from "onnxruntime-node";
import { encodeModel, type AttrValue } from "../lib/model/onnx-proto.js";
import type { Tensor } from "../lib/types.js";

export interface OrtInput {
  name: string;
  tensor?: Tensor; // fed at run time
  init?: { dims: number[]; data: Float32Array | BigInt64Array | Int32Array }; // a constant of the graph
  empty?: boolean; // an omitted optional input (name "")
}

export async function ortRun(
  opType: string,
  inputs: OrtInput[],
  attrs: Record<string, AttrValue> = {},
  opset = 17,
  outputs = 1,
  outElemType = 1,
): Promise<{ data: Float32Array | BigInt64Array | Int32Array; shape: number[] }[]> {
  const outNames = Array.from({ length: outputs }, (_, i) => `y${i}`);
  const bytes = encodeModel({
    opset,
    nodes: [{ opType, inputs: inputs.map((i) => (i.empty ? "" : i.name)), outputs: outNames, attrs }],
    inputs: inputs.filter((i) => i.tensor).map((i) => ({ name: i.name, shape: i.tensor!.shape })),
    outputs: outNames.map((name) => ({ name, elemType: outElemType })),
    initializers: inputs.filter((i) => i.init).map((i) => ({ name: i.name, dims: i.init!.dims, data: i.init!.data })),
  });
  const session = await ort.InferenceSession.create(bytes, { intraOpNumThreads: 1, graphOptimizationLevel: "disabled" });
  const feeds: Record<string, ort.Tensor> = {};
  for (const i of inputs) if (i.tensor) feeds[i.name] = new ort.Tensor("float32", i.tensor.data, i.tensor.shape);
  const r = await session.run(feeds);
  await session.release();
  return outNames.map((n) => ({ data: r[n]!.data as Float32Array, shape: [...r[n]!.dims] }));
}

/** Seeded uniform random tensor in [-1, 1). */
export function randomTensor(shape: number[], seed: number): Tensor {
  let s = seed >>> 0 || 1;
  const n = shape.reduce((a, b) => a * b, 1);
  const data = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    s ^= s << 13;
    s >>>= 0;
    s ^= s >>> 17;
    s ^= s << 5;
    s >>>= 0;
    data[i] = (s / 2 ** 32) * 2 - 1;
  }
  return { data, shape };
}

/** Largest difference relative to the reference's scale (max |ref|, at least 1). */
export function relDiff(got: ArrayLike<number>, want: ArrayLike<number>): number {
  if (got.length !== want.length) return Infinity;
  let scale = 1,
    d = 0;
  for (let i = 0; i < want.length; i++) scale = Math.max(scale, Math.abs(want[i]!));
  for (let i = 0; i < want.length; i++) {
    const e = Math.abs(got[i]! - want[i]!);
    if (!(e <= d)) d = Number.isNaN(e) ? Infinity : e;
  }
  return d / scale;
}

/** Largest difference relative to the reference's own scale (max |ref|), for tensors of any magnitude. */
export function scaleDiff(got: ArrayLike<number>, want: ArrayLike<number>): number {
  if (got.length !== want.length) return Infinity;
  let scale = 0,
    d = 0;
  for (let i = 0; i < want.length; i++) scale = Math.max(scale, Math.abs(want[i]!));
  for (let i = 0; i < want.length; i++) {
    const e = Math.abs(got[i]! - want[i]!);
    if (!(e <= d)) d = Number.isNaN(e) ? Infinity : e;
  }
  return scale > 0 ? d / scale : d;
}

/** Share of voxels where the class of the largest value agrees between two [1, C, …] channel-major outputs. */
export function argmaxAgreement(a: ArrayLike<number>, b: ArrayLike<number>, C: number): number {
  const S = a.length / C;
  let same = 0;
  for (let i = 0; i < S; i++) {
    let ka = 0,
      kb = 0;
    for (let c = 1; c < C; c++) {
      if (a[c * S + i]! > a[ka * S + i]!) ka = c;
      if (b[c * S + i]! > b[kb * S + i]!) kb = c;
    }
    if (ka === kb) same++;
  }
  return same / S;
}

/**
 * A model of 1×1×1 convolutions from weights given as arrays (a fixture's npy files): `w2`/`b2`
 * absent, one Conv; else Conv → LeakyReLU 0.1 → Conv. Its output at a voxel depends on that voxel
 * alone, so a reference needs no sliding window.
 */
export function pointwiseOnnx(
  w1: { data: ArrayLike<number>; shape: number[] },
  b1: { data: ArrayLike<number>; shape: number[] },
  w2?: { data: ArrayLike<number>; shape: number[] },
  b2?: { data: ArrayLike<number>; shape: number[] },
): Uint8Array {
  const init = (name: string, a: { data: ArrayLike<number>; shape: number[] }) => ({
    name,
    dims: a.shape,
    data: Float32Array.from(a.data),
  });
  const two = w2 && b2;
  return encodeModel({
    opset: 17,
    nodes: two
      ? [
          { opType: "Conv", inputs: ["x", "w1", "b1"], outputs: ["h"], attrs: { kernel_shape: [1, 1, 1] } },
          { opType: "LeakyRelu", inputs: ["h"], outputs: ["a"], attrs: { alpha: 0.1 } },
          { opType: "Conv", inputs: ["a", "w2", "b2"], outputs: ["y"], attrs: { kernel_shape: [1, 1, 1] } },
        ]
      : [{ opType: "Conv", inputs: ["x", "w1", "b1"], outputs: ["y"], attrs: { kernel_shape: [1, 1, 1] } }],
    inputs: [{ name: "x", shape: [1, 1, "D", "H", "W"] }],
    outputs: [{ name: "y" }],
    initializers: [init("w1", w1), init("b1", b1), ...(two ? [init("w2", w2), init("b2", b2)] : [])],
  });
}

/** Voxels compared (where the reference's two best classes are more than 1e-4 apart) and those that differ. */
export function compareLabels(got: Uint8Array, want: ArrayLike<number>, margin: ArrayLike<number>): { compared: number; differ: number } {
  let compared = 0,
    differ = 0;
  for (let i = 0; i < got.length; i++) {
    if (margin[i]! <= 1e-4) continue;
    compared++;
    if (got[i] !== want[i]) differ++;
  }
  return { compared, differ };
}

/** A loaded model's logits for `x` against a reference (PyTorch's), within `tol` of its scale; logs the difference. */
export async function logitsWithin(
  t: ExecutionContext,
  model: { run: (x: Tensor) => Promise<Tensor> },
  x: { data: ArrayLike<number>; shape: number[] },
  want: { data: ArrayLike<number>; shape: number[] },
  tol: number,
): Promise<void> {
  const y = await model.run({ data: x.data as Float32Array, shape: x.shape });
  t.deepEqual(y.shape, want.shape);
  const d = scaleDiff(y.data, want.data);
  t.log(`${d.toExponential(2)} of scale`);
  t.true(d < tol, `largest difference ${d} of scale`);
}

/** Labels equal a reference's wherever its two best classes are more than 1e-4 apart (and that is nearly everywhere). */
export function labelsMatch(t: ExecutionContext, got: Uint8Array, want: ArrayLike<number>, margin: ArrayLike<number>): void {
  const { compared, differ } = compareLabels(got, want, margin);
  t.true(compared > 0.99 * got.length, `${compared} of ${got.length} voxels compared`);
  t.is(differ, 0);
}
