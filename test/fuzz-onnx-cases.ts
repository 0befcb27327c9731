/**
 * The ONNX fuzzer's cases (test/fuzz-onnx.test.ts runs them in test/fuzz-onnx-child.ts): small valid
 * models built with encodeModel, and the PyTorch-exported plainunet fixture, mutated. Case i of a
 * seed is the same everywhere.
 */
import { readFileSync } from "node:fs";
import { encodeModel, type AttrValue } from "../lib/model/onnx-proto.js";
import { sharedFixture } from "./paths.js";
import { caseRng, type Rng } from "./fuzz-rng.js";

type Spec = Parameters<typeof encodeModel>[0];
type Init = NonNullable<Spec["initializers"]>[number];

/** The input every case runs on: one channel, 4×8×8 (the plainunet's strides divide it); a 2-D model's 8×8. */
export const INPUT_SHAPE = [1, 1, 4, 8, 8];
export const INPUT_SHAPE_2D = [1, 1, 8, 8];

const f32 = (n: number, seed: number) => {
  const r = caseRng(seed, 0);
  return Float32Array.from({ length: n }, () => r.next() * 2 - 1);
};
const w = (name: string, dims: number[], seed: number): Init => ({
  name,
  dims,
  data: f32(
    dims.reduce((a, b) => a * b, 1),
    seed,
  ),
});
const i64 = (name: string, values: number[]): Init => ({ name, dims: [values.length], data: BigInt64Array.from(values.map(BigInt)) });
const io = { inputs: [{ name: "x", shape: [1, 1, "D", "H", "W"] as (number | string)[] }], outputs: [{ name: "y" }] };

/** Small valid models, each over a different part of the engine. */
export function baseModels(): { name: string; spec: Spec }[] {
  return [
    {
      name: "conv-norm-act",
      spec: {
        opset: 17,
        ...io,
        nodes: [
          {
            opType: "Conv",
            inputs: ["x", "w1", "b1"],
            outputs: ["c1"],
            attrs: { kernel_shape: [3, 3, 3], pads: [1, 1, 1, 1, 1, 1], strides: [1, 1, 1], dilations: [1, 1, 1], group: 1 },
          },
          { opType: "InstanceNormalization", inputs: ["c1", "g", "be"], outputs: ["n1"], attrs: { epsilon: 1e-5 } },
          { opType: "LeakyRelu", inputs: ["n1"], outputs: ["a1"], attrs: { alpha: 0.01 } },
          { opType: "Conv", inputs: ["a1", "w2"], outputs: ["y"], attrs: { kernel_shape: [1, 1, 1] } },
        ],
        initializers: [w("w1", [4, 1, 3, 3, 3], 1), w("b1", [4], 2), w("g", [4], 3), w("be", [4], 4), w("w2", [3, 4, 1, 1, 1], 5)],
      },
    },
    {
      // a quantized model in onnxruntime's QDQ format: int8 weights per channel and an int32 bias
      // behind DequantizeLinear, uint8 and int8 QuantizeLinear → DequantizeLinear pairs
      name: "qdq-conv",
      spec: {
        opset: 17,
        ...io,
        nodes: [
          { opType: "QuantizeLinear", inputs: ["x", "xs", "xz"], outputs: ["xq"] },
          { opType: "DequantizeLinear", inputs: ["xq", "xs", "xz"], outputs: ["xd"] },
          { opType: "DequantizeLinear", inputs: ["wq", "ws", "wz"], outputs: ["wd"], attrs: { axis: 0 } },
          { opType: "DequantizeLinear", inputs: ["bq", "bs"], outputs: ["bd"], attrs: { axis: 0 } },
          { opType: "Conv", inputs: ["xd", "wd", "bd"], outputs: ["c"], attrs: { kernel_shape: [3, 3, 3], pads: [1, 1, 1, 1, 1, 1] } },
          { opType: "QuantizeLinear", inputs: ["c", "cs", "cz"], outputs: ["cq"] },
          { opType: "DequantizeLinear", inputs: ["cq", "cs", "cz"], outputs: ["y"] },
        ],
        initializers: [
          { name: "xs", dims: [], data: Float32Array.of(1 / 127) },
          { name: "xz", dims: [], data: Uint8Array.of(128) },
          { name: "wq", dims: [3, 1, 3, 3, 3], data: Int8Array.from(f32(81, 11), (v) => Math.round(v * 127)) },
          { name: "ws", dims: [3], data: Float32Array.of(0.01, 0.02, 0.005) },
          { name: "wz", dims: [3], data: new Int8Array(3) },
          { name: "bq", dims: [3], data: Int32Array.of(100, -50, 7) },
          { name: "bs", dims: [3], data: Float32Array.of(0.01 / 127, 0.02 / 127, 0.005 / 127) },
          { name: "cs", dims: [], data: Float32Array.of(0.05) },
          { name: "cz", dims: [], data: Int8Array.of(0) },
        ],
      },
    },
    {
      // onnxruntime's quantize_dynamic form: the activation's range at run time, integer convolution
      name: "dynamic-quant-conv",
      spec: {
        opset: 17,
        ...io,
        nodes: [
          { opType: "DynamicQuantizeLinear", inputs: ["x"], outputs: ["xq", "xs", "xz"] },
          {
            opType: "ConvInteger",
            inputs: ["xq", "wq", "xz"],
            outputs: ["ci"],
            attrs: { kernel_shape: [3, 3, 3], pads: [1, 1, 1, 1, 1, 1] },
          },
          { opType: "Cast", inputs: ["ci"], outputs: ["cf"], attrs: { to: 1 } },
          { opType: "Mul", inputs: ["xs", "ws"], outputs: ["s"] },
          { opType: "Mul", inputs: ["cf", "s"], outputs: ["y"] },
        ],
        initializers: [
          { name: "wq", dims: [2, 1, 3, 3, 3], data: Int8Array.from(f32(54, 12), (v) => Math.round(v * 127)) },
          { name: "ws", dims: [], data: Float32Array.of(0.01) },
        ],
      },
    },
    {
      name: "down-up-concat",
      spec: {
        opset: 17,
        ...io,
        nodes: [
          { opType: "Conv", inputs: ["x", "wd"], outputs: ["d"], attrs: { kernel_shape: [2, 2, 2], strides: [2, 2, 2] } },
          { opType: "Relu", inputs: ["d"], outputs: ["r"] },
          { opType: "ConvTranspose", inputs: ["r", "wu", "bu"], outputs: ["u"], attrs: { kernel_shape: [2, 2, 2], strides: [2, 2, 2] } },
          { opType: "Concat", inputs: ["u", "x"], outputs: ["cat"], attrs: { axis: 1 } },
          { opType: "Conv", inputs: ["cat", "wh"], outputs: ["y"], attrs: { kernel_shape: [1, 1, 1] } },
        ],
        initializers: [w("wd", [4, 1, 2, 2, 2], 6), w("wu", [4, 2, 2, 2, 2], 7), w("bu", [2], 8), w("wh", [2, 3, 1, 1, 1], 9)],
      },
    },
    {
      name: "pool-resize",
      spec: {
        opset: 17,
        ...io,
        nodes: [
          { opType: "MaxPool", inputs: ["x"], outputs: ["p"], attrs: { kernel_shape: [2, 2, 2], strides: [2, 2, 2] } },
          { opType: "Resize", inputs: ["p", "", "scales"], outputs: ["up"], attrs: { mode: "nearest" } },
          { opType: "Add", inputs: ["up", "x"], outputs: ["y"] },
        ],
        initializers: [{ name: "scales", dims: [5], data: Float32Array.from([1, 1, 2, 2, 2]) }],
      },
    },
    {
      name: "slice-pad",
      spec: {
        opset: 17,
        ...io,
        nodes: [
          { opType: "Slice", inputs: ["x", "starts", "ends", "axes", "steps"], outputs: ["s"] },
          { opType: "Pad", inputs: ["s", "pads"], outputs: ["pd"], attrs: { mode: "constant" } },
          { opType: "Sigmoid", inputs: ["pd"], outputs: ["y"] },
        ],
        initializers: [
          i64("starts", [1, 0]),
          i64("ends", [3, 8]),
          i64("axes", [2, 3]),
          i64("steps", [1, 2]),
          i64("pads", [0, 0, 1, 0, 0, 0, 0, 1, 0, 0]),
        ],
      },
    },
    {
      name: "shape-slice-reshape",
      spec: {
        opset: 17,
        ...io,
        nodes: [
          { opType: "Shape", inputs: ["x"], outputs: ["sh"] },
          { opType: "Slice", inputs: ["sh", "s0", "s1", "ax", "st"], outputs: ["tail"] },
          { opType: "Concat", inputs: ["head", "tail"], outputs: ["newshape"], attrs: { axis: 0 } },
          { opType: "Reshape", inputs: ["x", "newshape"], outputs: ["rs"] },
          { opType: "Softmax", inputs: ["rs"], outputs: ["y"], attrs: { axis: -1 } },
        ],
        initializers: [i64("s0", [2]), i64("s1", [5]), i64("ax", [0]), i64("st", [1]), i64("head", [1, 1])],
      },
    },
    {
      // a 2-D model (run on [1, 1, 8, 8]): attributes lifted to three axes at load, tensors viewed
      // with a unit depth; strided conv, pooling, transposed conv, bilinear Resize, float16 Cast
      name: "conv2d-pool-up",
      spec: {
        opset: 17,
        inputs: [{ name: "x", shape: [1, 1, "H", "W"] }],
        outputs: [{ name: "y" }],
        nodes: [
          {
            opType: "Conv",
            inputs: ["x", "w2a", "b2a"],
            outputs: ["c"],
            attrs: { kernel_shape: [3, 3], pads: [1, 1, 1, 1], strides: [2, 2] },
          },
          { opType: "MaxPool", inputs: ["c"], outputs: ["p"], attrs: { kernel_shape: [2, 2], strides: [1, 1], pads: [0, 0, 1, 1] } },
          { opType: "ConvTranspose", inputs: ["p", "w2u"], outputs: ["u"], attrs: { kernel_shape: [2, 2], strides: [2, 2] } },
          { opType: "Cast", inputs: ["u"], outputs: ["h"], attrs: { to: 10 } },
          { opType: "Cast", inputs: ["h"], outputs: ["f"], attrs: { to: 1 } },
          { opType: "Resize", inputs: ["f", "", "scales2"], outputs: ["r"], attrs: { mode: "linear" } },
          { opType: "Conv", inputs: ["r", "w2h"], outputs: ["y"], attrs: { kernel_shape: [1, 1] } },
        ],
        initializers: [
          w("w2a", [4, 1, 3, 3], 10),
          w("b2a", [4], 11),
          w("w2u", [4, 2, 2, 2], 12),
          { name: "scales2", dims: [4], data: Float32Array.from([1, 1, 1, 1]) },
          w("w2h", [3, 2, 1, 1], 13),
        ],
      },
    },
  ];
}

const EDGE_INTS = [0, -1, -2, -5, 1, 2, 3, 7, 100, 600, 4096, 65535, 2 ** 31 - 1, -(2 ** 31), 2 ** 40];
const EDGE_FLOATS = [0, -1, 1e-30, 1e30, Infinity, -Infinity, NaN, 2.5, 1e6];

export interface FuzzCase {
  i: number;
  base: string;
  /** what was done, for the report */
  what: string[];
  /** the mutation class (the suite's default run keeps to the ones listed in SAFE_CLASSES) */
  kind: MutationKind;
  bytes: Uint8Array;
  backend: "native" | "ts";
}

export const MUTATION_KINDS = [
  "bytes",
  "truncate",
  "attr-value",
  "attr-drop",
  "float-attr",
  "initializer-shape",
  "initializer-value",
  "graph",
] as const;
export type MutationKind = (typeof MUTATION_KINDS)[number];

function mutateSpec(spec: Spec, kind: MutationKind, rng: Rng, what: string[]): Spec {
  const s = structuredClone(spec) as Spec;
  const node = rng.pick(s.nodes);
  switch (kind) {
    case "attr-value": {
      const ints = Object.entries(node.attrs ?? {}).filter(([, v]) =>
        typeof v === "number" ? Number.isInteger(v) : Array.isArray(v) && v.every(Number.isInteger),
      );
      if (!ints.length) {
        node.attrs = { ...node.attrs, axis: rng.pick(EDGE_INTS) };
        what.push(`${node.opType}.axis = ${node.attrs.axis}`);
        break;
      }
      const [name, v] = rng.pick(ints);
      const e = rng.pick(EDGE_INTS);
      if (Array.isArray(v)) {
        const arr = [...(v as number[])];
        if (rng.int(4) === 0) {
          const len = rng.pick([0, 1, 2, arr.length + 1, 12]);
          const out = Array.from({ length: len }, (_, k) => arr[k] ?? e);
          node.attrs![name] = out;
          what.push(`${node.opType}.${name} = [${out}]`);
        } else {
          const k = rng.int(arr.length);
          arr[k] = e;
          node.attrs![name] = arr;
          what.push(`${node.opType}.${name}[${k}] = ${e}`);
        }
      } else {
        node.attrs![name] = e;
        what.push(`${node.opType}.${name} = ${e}`);
      }
      break;
    }
    case "attr-drop": {
      const names = Object.keys(node.attrs ?? {});
      if (!names.length) {
        node.inputs = node.inputs.slice(0, Math.max(0, node.inputs.length - 1));
        what.push(`${node.opType} loses its last input`);
        break;
      }
      const name = rng.pick(names);
      node.attrs = Object.fromEntries(Object.entries(node.attrs!).filter(([k]) => k !== name));
      what.push(`${node.opType} loses ${name}`);
      break;
    }
    case "float-attr": {
      const e = rng.pick(EDGE_FLOATS);
      const name = rng.pick(["epsilon", "alpha", "beta", "scale", "value"]);
      node.attrs = { ...node.attrs, [name]: Number.isInteger(e) ? e + 0.5 : e } as Record<string, AttrValue>;
      what.push(`${node.opType}.${name} = ${node.attrs[name]}`);
      break;
    }
    case "initializer-shape": {
      const init = rng.pick(s.initializers ?? []);
      if (!init) break;
      const dims = [...init.dims];
      const k = rng.int(dims.length + 1);
      const choice = rng.int(3);
      if (choice === 0 && dims.length) dims[Math.min(k, dims.length - 1)] = rng.pick([0, 1, 2, 7, 1000, -1]);
      else if (choice === 1) dims.splice(k, 0, rng.pick([1, 2]));
      else dims.pop();
      init.dims = dims;
      what.push(`initializer ${init.name} dims [${dims}]`);
      break;
    }
    case "initializer-value": {
      const ints = (s.initializers ?? []).filter((x) => x.data instanceof BigInt64Array);
      const init = ints.length ? rng.pick(ints) : rng.pick(s.initializers ?? []);
      if (!init) break;
      const k = rng.int(init.data.length);
      if (init.data instanceof BigInt64Array) {
        const v = rng.pick([...EDGE_INTS, 2 ** 53, -(2 ** 53)]);
        const d = BigInt64Array.from(init.data);
        d[k] = BigInt(v);
        init.data = d;
        what.push(`${init.name}[${k}] = ${v}`);
      } else {
        const d = Float32Array.from(init.data as Float32Array);
        d[k] = rng.pick(EDGE_FLOATS);
        init.data = d;
        what.push(`${init.name}[${k}] = ${d[k]}`);
      }
      break;
    }
    case "graph": {
      const c = rng.int(5);
      const k = s.nodes.indexOf(node);
      if (c === 0) {
        s.nodes.splice(k, 1);
        what.push(`node ${k} (${node.opType}) removed`);
      } else if (c === 1) {
        node.inputs = [...node.inputs].reverse();
        what.push(`${node.opType} inputs reversed`);
      } else if (c === 2) {
        node.inputs = [node.outputs[0]!, ...node.inputs.slice(1)];
        what.push(`${node.opType} reads its own output`);
      } else if (c === 3) {
        node.inputs = [...node.inputs.slice(0, -1), "nowhere"];
        what.push(`${node.opType} reads an undefined value`);
      } else {
        s.nodes.push(structuredClone(node));
        what.push(`${node.opType} duplicated (two producers of ${node.outputs[0]})`);
      }
      break;
    }
    default:
      break;
  }
  return s;
}

let plainunet: Uint8Array | undefined;

/** Case i of this seed, its kind drawn from `kinds`. */
export function makeCase(seed: number, i: number, kinds: readonly MutationKind[]): FuzzCase {
  const rng = caseRng(seed, i);
  const kind = rng.pick(kinds);
  const backend = rng.int(4) === 0 ? "ts" : "native";
  const what: string[] = [];
  const bases = baseModels();
  // the PyTorch export takes byte-level mutations only (it is not rebuilt from a spec)
  const usePlain = (kind === "bytes" || kind === "truncate") && rng.int(4) === 0;
  let base: string;
  let bytes: Uint8Array;
  if (usePlain) {
    plainunet ??= new Uint8Array(readFileSync(sharedFixture("onnx-plainunet", "plainunet.onnx")));
    base = "plainunet.onnx";
    bytes = plainunet;
  } else {
    const b = rng.pick(bases);
    base = b.name;
    const steps = kind === "bytes" || kind === "truncate" ? 0 : 1 + rng.int(2);
    let spec = b.spec;
    const structural: MutationKind[] = [...kinds.filter((k) => k !== "bytes" && k !== "truncate"), kind];
    for (let s = 0; s < steps; s++) spec = mutateSpec(spec, s === 0 ? kind : rng.pick(structural), rng, what);
    bytes = encodeModel(spec);
  }
  if (kind === "bytes") {
    const b = Uint8Array.from(bytes);
    const n = 1 + rng.int(8);
    for (let k = 0; k < n; k++) {
      const at = rng.int(b.length);
      if (rng.bool()) b[at]! ^= 1 << rng.int(8);
      else b[at] = rng.pick([0, 0xff, 0x7f, 0x80, 0x08, 0x10, 0x12, 0x1a]);
    }
    what.push(`${n} bytes changed`);
    bytes = b;
  } else if (kind === "truncate") {
    const to = rng.int(bytes.length);
    what.push(`truncated to ${to} of ${bytes.length} bytes`);
    bytes = bytes.subarray(0, to);
  }
  return { i, base, what, kind, bytes, backend };
}
