/**
 * ONNX models: decoding with protobufjs, checks at load (opset, every op and attribute the engine
 * runs; anything else is refused with the node's name), and a plan made once: topological order,
 * each value's last use, and fusions (Conv or InstanceNormalization followed by its only consumer
 * Relu/LeakyRelu).
 */
import { constants } from "node:fs";
import { open, type FileHandle } from "node:fs/promises";
import { dirname } from "node:path";
import { allocArray } from "../volume.js";
import { releaseEngineArray } from "../backends/index.js";
import { adoptedFloats, adoptedTensor, isExternal, loadExternalData, releaseUnadopted, type ExternalSource } from "./external-data.js";
import { resolveCastLike } from "./cast-like.js";
import { inlineFunctions } from "./functions.js";
import { decode16 } from "./half.js";
import { liftSpatialAttrs, SPATIAL_OPS, spatialOf } from "./spatial.js";
import { MAMBA_CONV_OP, SELECTIVE_SCAN_OP } from "./mamba.js";
import { fuseQuantizePairs, lowerIntegerOps } from "./quant.js";
import { MAX_INT_ELEMENTS, MAX_TENSOR_ELEMENTS, ModelProto, ONNX_DTYPE } from "./onnx-proto.js";
import type { FusedAttention } from "./attention.js";

/** The newest ONNX opset read (onnx 1.20's docs/Changelog.md checked for every supported op). */
export const MAX_OPSET = 25;
/**
 * The oldest: 11 and 12 differ from 13 for the supported ops in Softmax / LogSoftmax (the input
 * taken as 2-D at the axis), Dropout's ratio attribute, and attributes that became inputs
 * (Squeeze, Unsqueeze, Split, ReduceSum axes), all read either way.
 */
export const MIN_OPSET = 11;

/** Float weights a loader already holds, handed to parseModel with the graph's bytes (adopted, not copied). */
export type HeldWeights = { name: string; dims: number[]; data: Float32Array }[];

export interface OnnxTensor {
  dims: number[];
  dataType: number;
  /** float tensors as Float32Array; integer ones as plain numbers (shape glue). */
  f32?: Float32Array;
  ints?: number[];
  /** An integer tensor's ONNX type as stored (dataType says INT64 for all: they are numbers here). */
  intType?: number;
}

export type Attr = number | number[] | string | OnnxTensor;

export interface GraphNode {
  name: string;
  opType: string;
  inputs: string[];
  outputs: string[];
  attrs: Record<string, Attr>;
  /** Set by fusion: an activation applied in this node's epilogue. */
  fusedAct?: { act: "relu" | "leakyRelu"; alpha: number; output: string };
  /**
   * Set by fuseConvNorm on a Conv: the InstanceNormalization or GroupNormalization (and its
   * activation) that read only this Conv's output, applied to it in place. inputs[3] and [4] are
   * the norm's scale and bias.
   */
  fusedNorm?: {
    name: string;
    eps: number;
    /** A GroupNormalization's num_groups (absent: the instance norm). */
    groups?: number;
    /** A GroupNormalization fused from an exporter's pattern: the rank of the input it holds for (its bhsd_rank). */
    rank?: number;
    act?: "relu" | "leakyRelu";
    alpha: number;
    output: string;
    /**
     * Set by fuseConvNormResidual: the Add that alone read the norm's output, fused (act, alpha and
     * output are then the Add's); inputs[5] is its other operand.
     */
    residual?: boolean;
  };
  /**
   * Set by fuseConvResidual on a Conv without a norm or an activation: the Add that alone read its
   * output, fused (act, alpha and output are the Add's); inputs[3] is the Add's other operand.
   */
  fusedAdd?: { act?: "relu" | "leakyRelu"; alpha: number; output: string };
  /** Set on the node fuseAttention makes (op ATTENTION_OP): the self-attention it runs. */
  attention?: FusedAttention;
}

/** The names a node's results are bound to, after fusion. */
export function finalOutputs(n: GraphNode): string[] {
  return n.fusedNorm ? [n.fusedNorm.output] : n.fusedAdd ? [n.fusedAdd.output] : n.fusedAct ? [n.fusedAct.output] : n.outputs;
}

export interface Graph {
  opset: number;
  producer: string;
  nodes: GraphNode[];
  initializers: Map<string, OnnxTensor>;
  inputs: { name: string; shape: (number | string)[] }[];
  outputs: string[];
  metadata: Record<string, string>;
}

/**
 * Ops with optional outputs the engine does not make, and how many it does: MaxPool's indices,
 * LayerNormalization's mean and inverse deviation, Dropout's mask, BatchNormalization's running
 * statistics (training only).
 */
const OUTPUTS_MADE: Record<string, number> = { MaxPool: 1, LayerNormalization: 1, Dropout: 1, BatchNormalization: 1 };

/** Ops the engine runs, and for each the attributes it understands. */
export const SUPPORTED: Record<string, readonly string[]> = {
  Conv: ["kernel_shape", "strides", "pads", "dilations", "group", "auto_pad"],
  ConvTranspose: ["kernel_shape", "strides", "pads", "dilations", "group", "output_padding", "auto_pad"],
  InstanceNormalization: ["epsilon"],
  BatchNormalization: ["epsilon", "momentum", "training_mode"],
  Relu: [],
  LeakyRelu: ["alpha"],
  PRelu: [],
  Sigmoid: [],
  Add: [],
  Mul: [],
  Concat: ["axis"],
  MaxPool: ["kernel_shape", "strides", "pads", "dilations", "ceil_mode", "auto_pad", "storage_order"],
  AveragePool: ["kernel_shape", "strides", "pads", "ceil_mode", "count_include_pad", "auto_pad"],
  Resize: [
    "mode",
    "coordinate_transformation_mode",
    "nearest_mode",
    "cubic_coeff_a",
    "exclude_outside",
    "extrapolation_value",
    "antialias",
    "keep_aspect_ratio_policy",
  ],
  Softmax: ["axis"],
  ArgMax: ["axis", "keepdims", "select_last_index"],
  // glue that exporters put around the real ops
  Identity: [],
  Dropout: ["seed", "ratio"], // (ratio: an attribute before opset 12; inference ignores it)
  Constant: ["value", "value_float", "value_floats", "value_int", "value_ints"],
  Shape: ["start", "end"],
  Gather: ["axis"],
  Unsqueeze: ["axes"],
  Squeeze: ["axes"],
  Cast: ["to", "saturate"],
  // made a Cast at load where its target's type is known (cast-like.ts); else float targets only
  CastLike: ["saturate"],
  Slice: [],
  Reshape: ["allowzero"],
  Flatten: ["axis"],
  // what real exports (nnU-Net's ResEnc, MONAI's networks, transformers) add
  Pad: ["mode", "pads", "value"],
  Transpose: ["perm"],
  ConstantOfShape: ["value"],
  Expand: [],
  Tile: [],
  Range: [],
  Where: [],
  ScatterND: ["reduction"],
  Split: ["axis", "split", "num_outputs"],
  // Mamba's causal convolution and selective scan (mamba.ts): what bhsd builds for U-Mamba
  [MAMBA_CONV_OP]: [],
  [SELECTIVE_SCAN_OP]: [],
  MatMul: [],
  Gemm: ["alpha", "beta", "transA", "transB"],
  Einsum: ["equation"],
  LayerNormalization: ["axis", "epsilon", "stash_type"],
  GroupNormalization: ["epsilon", "num_groups", "stash_type"],
  ReduceMean: ["axes", "keepdims", "noop_with_empty_axes"],
  ReduceSum: ["axes", "keepdims", "noop_with_empty_axes"],
  ReduceMax: ["axes", "keepdims", "noop_with_empty_axes"],
  ReduceMin: ["axes", "keepdims", "noop_with_empty_axes"],
  ReduceProd: ["axes", "keepdims", "noop_with_empty_axes"],
  ReduceL1: ["axes", "keepdims", "noop_with_empty_axes"],
  ReduceL2: ["axes", "keepdims", "noop_with_empty_axes"],
  ReduceSumSquare: ["axes", "keepdims", "noop_with_empty_axes"],
  ReduceLogSum: ["axes", "keepdims", "noop_with_empty_axes"],
  ReduceLogSumExp: ["axes", "keepdims", "noop_with_empty_axes"],
  // a classifier's head (torchvision's ResNets), squeeze-and-excitation blocks
  GlobalAveragePool: [],
  GlobalMaxPool: [],
  Sub: [],
  Div: [],
  Pow: [],
  Mod: ["fmod"],
  Max: [],
  Min: [],
  Sum: [],
  Mean: [],
  Equal: [],
  Less: [],
  Greater: [],
  LessOrEqual: [],
  GreaterOrEqual: [],
  And: [],
  Or: [],
  Not: [],
  Xor: [],
  IsNaN: [],
  IsInf: ["detect_negative", "detect_positive"],
  Sin: [],
  Cos: [],
  Tan: [],
  Asin: [],
  Acos: [],
  Atan: [],
  Sinh: [],
  Cosh: [],
  HardSwish: [],
  Mish: [],
  Softsign: [],
  Celu: ["alpha"],
  ThresholdedRelu: ["alpha"],
  Sqrt: [],
  Exp: [],
  Log: [],
  Tanh: [],
  Erf: [],
  Neg: [],
  Abs: [],
  Reciprocal: [],
  Floor: [],
  Ceil: [],
  Round: [],
  Sign: [],
  Softplus: [],
  Elu: ["alpha"],
  Selu: ["alpha", "gamma"],
  HardSigmoid: ["alpha", "beta"],
  Gelu: ["approximate"],
  Clip: ["min", "max"],
  Size: [],
  LogSoftmax: ["axis"],
  // quantized (QDQ) models, run in float (quant.ts)
  QuantizeLinear: ["axis", "saturate"],
  DequantizeLinear: ["axis"],
  // onnxruntime's quantize_dynamic: run in float too (quant.ts)
  DynamicQuantizeLinear: [],
  ConvInteger: ["auto_pad", "dilations", "group", "kernel_shape", "pads", "strides"],
  MatMulInteger: [],
};

/**
 * An ONNX tensor's values. `quantized`: the tensor is a DequantizeLinear's integers (a quantized
 * model's weights, millions of int8 values): not held to the shape glue's bound of integers.
 */
function tensorOf(t: Record<string, unknown>, where: string, quantized = false): OnnxTensor {
  const dims = ((t.dims as unknown[]) ?? []).map(Number);
  const dataType = Number(t.dataType ?? 0);
  // (external data is read into rawData by loadExternalData before any tensor is made)
  if (isExternal(t) && t.rawData === undefined) throw new Error(`${where}: tensor ${t.name}: its external data was not read`);
  const n = dims.reduce((a, b) => a * b, 1);
  const raw = t.rawData as Uint8Array | undefined;
  const hasRaw = raw !== undefined && raw.length > 0;
  if (!dims.every((d) => Number.isSafeInteger(d) && d >= 0) || !Number.isSafeInteger(n) || n > MAX_TENSOR_ELEMENTS) {
    throw new Error(`${where}: tensor ${t.name} has dims [${dims}], not a valid size (at most ${MAX_TENSOR_ELEMENTS} elements)`);
  }
  // raw bytes as an aligned array of their own: a decoded field may view a Node Buffer's shared
  // pool or the whole file at any offset, so `.buffer` is never read directly
  const own = (bytesPer: number): ArrayBuffer => {
    if (raw!.length !== n * bytesPer)
      throw new Error(`${where}: tensor ${t.name} has ${raw!.length} bytes of data for ${n} values of ${bytesPer} bytes`);
    const b = new ArrayBuffer(raw!.length);
    new Uint8Array(b).set(raw!);
    return b;
  };
  if (dataType === ONNX_DTYPE.FLOAT) {
    let f32: Float32Array;
    if (hasRaw) {
      if (raw.length !== n * 4) throw new Error(`${where}: tensor ${t.name} has ${raw.length} bytes of data for ${n} floats`);
      const read = adoptedFloats(raw); // external data read straight into the weights' own array
      if (read) f32 = read;
      else {
        // (not cleared first where the engine reuses a block: the copy writes every byte)
        f32 = allocArray("float32", n, `tensor ${t.name}`, { overwritten: true }) as Float32Array;
        new Uint8Array(f32.buffer, f32.byteOffset, f32.byteLength).set(raw);
      }
    } else f32 = Float32Array.from((t.floatData as number[]) ?? []);
    if (f32.length !== n) throw new Error(`${where}: tensor ${t.name} has ${f32.length} values for shape [${dims}]`);
    return { dims, dataType, f32 };
  }
  if (dataType === ONNX_DTYPE.FLOAT16 || dataType === ONNX_DTYPE.BFLOAT16) {
    // float16 / bfloat16 weights as float32 (half.ts): raw 2-byte values or int32_data's low halves
    const ints = t.int32Data as number[] | undefined;
    if (hasRaw ? raw.length !== n * 2 : (ints?.length ?? 0) !== n)
      throw new Error(
        `${where}: tensor ${t.name} has ${hasRaw ? `${raw.length} bytes` : `${ints?.length ?? 0} values`} of data for ${n} 16-bit floats`,
      );
    const f32 = allocArray("float32", n, `tensor ${t.name}`, { overwritten: true }) as Float32Array;
    decode16(hasRaw ? raw : undefined, ints, n, dataType === ONNX_DTYPE.BFLOAT16, f32);
    return { dims, dataType: ONNX_DTYPE.FLOAT, f32 };
  }
  if (dataType === ONNX_DTYPE.DOUBLE) {
    const f64 = hasRaw ? new Float64Array(own(8)) : Float64Array.from((t.doubleData as number[]) ?? []);
    if (f64.length !== n) throw new Error(`${where}: tensor ${t.name} has ${f64.length} values for shape [${dims}]`);
    return { dims, dataType: ONNX_DTYPE.FLOAT, f32: Float32Array.from(f64) };
  }
  if (
    dataType === ONNX_DTYPE.INT64 ||
    dataType === ONNX_DTYPE.INT32 ||
    dataType === ONNX_DTYPE.BOOL ||
    dataType === ONNX_DTYPE.UINT8 ||
    dataType === ONNX_DTYPE.INT8
  ) {
    let ints: number[];
    const wide = quantized && (dataType === ONNX_DTYPE.INT8 || dataType === ONNX_DTYPE.UINT8 || dataType === ONNX_DTYPE.INT32);
    if (n > MAX_INT_ELEMENTS && !wide)
      throw new Error(
        `${where}: integer tensor ${t.name} has ${n} values; bhsd keeps integer tensors for shape glue (at most ${MAX_INT_ELEMENTS})`,
      );
    if (wide && hasRaw) {
      // a quantized model's weights: a typed array of the stored type (its bytes, not 8 per value
      // on the JavaScript heap), read only by the DequantizeLinear folded at load
      const width = dataType === ONNX_DTYPE.INT32 ? 4 : 1;
      const bytes = own(width);
      const typed =
        dataType === ONNX_DTYPE.INT32 ? new Int32Array(bytes) : dataType === ONNX_DTYPE.INT8 ? new Int8Array(bytes) : new Uint8Array(bytes);
      if (typed.length !== n) throw new Error(`${where}: tensor ${t.name} has ${typed.length} values for shape [${dims}]`);
      return { dims, dataType: ONNX_DTYPE.INT64, ints: typed as unknown as number[], intType: dataType };
    }
    if (hasRaw) {
      const width = dataType === ONNX_DTYPE.INT64 ? 8 : dataType === ONNX_DTYPE.INT32 ? 4 : 1;
      const dv = new DataView(own(width));
      ints = Array.from({ length: n }, (_, i) =>
        width === 8
          ? Number(dv.getBigInt64(i * 8, true))
          : width === 4
            ? dv.getInt32(i * 4, true)
            : dataType === ONNX_DTYPE.INT8
              ? dv.getInt8(i)
              : dv.getUint8(i),
      );
    } else ints = (((dataType === ONNX_DTYPE.INT64 ? t.int64Data : t.int32Data) as unknown[]) ?? []).map(Number);
    if (ints.length !== n) throw new Error(`${where}: tensor ${t.name} has ${ints.length} values for shape [${dims}]`);
    return { dims, dataType: ONNX_DTYPE.INT64, ints, intType: dataType };
  }
  throw new Error(
    `${where}: tensor ${t.name} has ONNX data type ${dataType}, which bhsd does not take (float, double, int64, int32, int8, uint8, bool)`,
  );
}

function attrOf(a: Record<string, unknown>, where: string): Attr {
  switch (Number(a.type)) {
    // proto3 leaves a field at its default (0) out of the encoding: absent means 0
    case 1:
      return Number(a.f ?? 0);
    case 2:
      return Number(a.i ?? 0);
    case 3:
      return new TextDecoder().decode(a.s as Uint8Array);
    case 4:
      return tensorOf(a.t as Record<string, unknown>, where);
    case 6:
      return ((a.floats as unknown[]) ?? []).map(Number);
    case 7:
      return ((a.ints as unknown[]) ?? []).map(Number);
    default:
      throw new Error(`${where}: attribute ${a.name} has a type (${a.type}) bhsd does not read`);
  }
}

/**
 * Decodes ONNX bytes (or a file) into a Graph and checks that the engine can run all of it.
 * External tensor data is read from the model file's folder, or from `externalData` (location →
 * bytes) where given.
 */
export async function parseModel(
  pathOrBytes: string | Uint8Array,
  externalData?: Record<string, Uint8Array>,
  weights?: HeldWeights,
): Promise<Graph> {
  if (typeof pathOrBytes !== "string")
    return parseBytes(pathOrBytes, "<model bytes>", externalData ? { files: externalData } : {}, weights);
  if (weights) throw new TypeError("parseModel: weights are handed over with the model's bytes, not with a path");
  const file = await readModelFile(pathOrBytes);
  try {
    return await parseBytes(file, pathOrBytes, externalData ? { files: externalData } : { dir: dirname(pathOrBytes) });
  } finally {
    releaseEngineArray(file); // every tensor was copied out of it (its views, detached, read as empty)
  }
}

/** protobuf's limit on one message: a model file past it keeps its weights in external data. */
const MAX_MODEL_FILE = 2 ** 31 - 1;

/**
 * A model file's bytes in engine memory (huge pages: a 370 MB file is read in about a tenth of
 * the time a fresh Buffer's pages take to touch), from a regular file of at most 2 GiB.
 */
async function readModelFile(path: string): Promise<Uint8Array> {
  let fh: FileHandle;
  try {
    fh = await open(path, constants.O_RDONLY | constants.O_NONBLOCK);
  } catch (e) {
    throw new Error(`${path}: ${(e as NodeJS.ErrnoException).code === "ENOENT" ? "no such file" : (e as Error).message}`, { cause: e });
  }
  try {
    const st = await fh.stat();
    if (!st.isFile()) throw new Error(`${path}: not a regular file`);
    if (st.size > MAX_MODEL_FILE)
      throw new Error(
        `${path}: ${st.size} bytes, past protobuf's 2 GiB limit on one model (a model that large keeps its weights in external data)`,
      );
    const bytes = allocArray("uint8", st.size, `model file ${path}`, { overwritten: true }) as Uint8Array;
    try {
      let done = 0;
      while (done < st.size) {
        const { bytesRead } = await fh.read(bytes, done, st.size - done, done);
        if (bytesRead === 0) throw new Error(`${path}: the file ended early (it changed while being read)`);
        done += bytesRead;
      }
    } catch (e) {
      releaseEngineArray(bytes);
      throw e;
    }
    return bytes;
  } finally {
    await fh.close();
  }
}

async function parseBytes(bytes: Uint8Array, label: string, source: ExternalSource, weights?: HeldWeights): Promise<Graph> {
  const tensors = new Set<Record<string, unknown>>();
  try {
    return await parseInto(bytes, label, source, tensors, weights);
  } catch (e) {
    releaseUnadopted(tensors); // external data read for a model that is refused goes back to the engine now
    throw e;
  }
}

/**
 * parseBytes, recording in `tensors` the decoded tensors whose external data it reads; `weights`
 * are float initializers added to the model's, kept as they are (no copy: the graph owns them).
 */
async function parseInto(
  bytes: Uint8Array,
  label: string,
  source: ExternalSource,
  tensors: Set<Record<string, unknown>>,
  weights?: HeldWeights,
): Promise<Graph> {
  let m: Record<string, unknown>;
  try {
    m = ModelProto.toObject(ModelProto.decode(bytes), { longs: Number, defaults: false, arrays: true }) as Record<string, unknown>;
  } catch (e) {
    throw new Error(`${label}: not an ONNX model (${(e as Error).message})`, { cause: e });
  }
  const g = m.graph as Record<string, unknown> | undefined;
  if (!g || !Array.isArray(g.node)) throw new Error(`${label}: not an ONNX model (no graph)`);
  const opsets = (m.opsetImport as { domain?: string; version?: number }[]) ?? [];
  const opset = Number(opsets.find((o) => !o.domain || o.domain === "ai.onnx")?.version ?? 0);
  // 22–25 changed none of the supported ops' meaning (bfloat16/float8/int4 types, float8 casts,
  // documentation; pools' "windows starting in the right padding are ignored" is what they do
  // already); the ops those opsets added (Attention, RMSNormalization, …) are refused by name
  if (opset < MIN_OPSET || opset > MAX_OPSET)
    throw new Error(
      `${label}: opset ${opset} is not supported (bhsd runs opsets ${MIN_OPSET} to ${MAX_OPSET}; re-export with opset_version=18, torch.onnx.export's default)`,
    );
  if (weights?.length)
    g.initializer = [...((g.initializer as unknown[]) ?? []), ...weights.map((w) => adoptedTensor(w.name, w.dims, w.data))];
  inlineFunctions(m, opset, label);
  const castLike = resolveCastLike(g);
  if (castLike.halfFloats && castLike.unresolved.length)
    throw new Error(
      `${label}: the engine cannot run this model:\n  ${castLike.unresolved.map((n) => `${label}: node ${n} (CastLike): its target's type is not declared, and in a model with float16 or bfloat16 values it could be one (whose rounding a cast to float32 would skip); declare it in value_info`).join("\n  ")}`,
    );
  // ops the engine does not run are refused before any external data is read
  const unknown = (g.node as Record<string, unknown>[]).flatMap((n, k) => {
    const where = `${label}: node ${String(n.name || `#${k}`)} (${String(n.opType)})`;
    if (n.domain && n.domain !== "ai.onnx") return [`${where}: domain "${n.domain}" is not supported`];
    return SUPPORTED[String(n.opType)] ? [] : [`${where}: op ${String(n.opType)} is not supported`];
  });
  if (unknown.length) throw new Error(`${label}: the engine cannot run this model:\n  ${unknown.join("\n  ")}`);
  // (a Set: a tensor attribute of a function called twice is one tensor, read once)
  for (const t of (g.initializer as Record<string, unknown>[]) ?? []) tensors.add(t);
  for (const n of g.node as Record<string, unknown>[])
    for (const a of (n.attribute as Record<string, unknown>[]) ?? []) if (a.t) tensors.add(a.t as Record<string, unknown>);
  // a quantized model's integer weights are no shape glue
  // (those whose every reader is a DequantizeLinear's integers: nothing else sees them)
  const readBy = new Map<string, boolean>();
  for (const n of g.node as Record<string, unknown>[])
    ((n.input as string[] | undefined) ?? []).forEach((i, k) => {
      const dq = (n.opType === "DequantizeLinear" && k === 0) || ((n.opType === "ConvInteger" || n.opType === "MatMulInteger") && k === 1);
      readBy.set(String(i), (readBy.get(String(i)) ?? true) && dq);
    });
  for (const o of (g.output as Record<string, unknown>[] | undefined) ?? []) readBy.set(String(o.name), false);
  const dequantized = new Set([...readBy].filter(([, onlyDq]) => onlyDq).map(([name]) => name));
  await loadExternalData([...tensors], source, label, dequantized);
  const initializers = new Map<string, OnnxTensor>();
  for (const t of (g.initializer as Record<string, unknown>[]) ?? []) {
    // (ONNX's single assignment: a second initializer of a name would silently replace the first)
    if (initializers.has(String(t.name))) throw new Error(`${label}: initializer ${String(t.name)} is defined twice`);
    initializers.set(String(t.name), tensorOf(t, label, dequantized.has(String(t.name))));
    if (isExternal(t)) t.rawData = undefined; // read for this copy alone: the weights are not held twice
  }
  const problems: string[] = [];
  const constantDims = new Map<string, readonly number[]>();
  const nodes: GraphNode[] = (g.node as Record<string, unknown>[]).map((n, k) => {
    const name = String(n.name || `#${k}`);
    const opType = String(n.opType);
    const where = `${label}: node ${name} (${opType})`;
    const attrs: Record<string, Attr> = {};
    for (const a of (n.attribute as Record<string, unknown>[]) ?? []) {
      try {
        attrs[String(a.name)] = attrOf(a, where);
      } catch (e) {
        problems.push((e as Error).message);
      }
    }
    // (every node's domain and op were checked above, before any external data was read)
    const allowed = SUPPORTED[opType]!;
    for (const a of Object.keys(attrs)) if (!allowed.includes(a)) problems.push(`${where}: attribute ${a} is not supported`);
    // a 1-D or 2-D node runs on the 3-D kernels: its attributes lifted to three axes (spatial.ts)
    // (a ConvInteger's attributes are a Conv's: it becomes one, quant.ts)
    const asOp = opType === "ConvInteger" ? "Conv" : opType;
    // (the weight's rank says a convolution's axes where kernel_shape is absent: an initializer's, or
    // a Constant node's made earlier — it was taken for 3-D and its 2-D weight refused)
    const wName = String((n.input as string[] | undefined)?.[1] ?? "");
    const lifted = liftSpatialAttrs(asOp, attrs, initializers.get(wName)?.dims ?? constantDims.get(wName), where);
    if (opType === "Constant" && attrs.value && typeof attrs.value === "object" && "dims" in attrs.value)
      for (const o of (n.output as string[] | undefined) ?? []) constantDims.set(String(o), (attrs.value as OnnxTensor).dims);
    problems.push(...lifted, ...checkAttrs(asOp, attrs, where, lifted.length === 0));
    return { name, opType, inputs: ((n.input as string[]) ?? []).map(String), outputs: ((n.output as string[]) ?? []).map(String), attrs };
  });
  // each value made once (ONNX's single assignment; a second maker would silently win in topoSort)
  const maker = new Map<string, string>();
  for (const v of (g.input as Record<string, unknown>[]) ?? []) maker.set(String(v.name), "the graph's inputs");
  for (const n of nodes)
    for (const o of n.outputs) {
      if (o === "") continue;
      const before = maker.get(o);
      if (before !== undefined) problems.push(`${label}: value ${o} is made by node ${n.name} and by ${before}`);
      else maker.set(o, `node ${n.name}`);
    }
  // optional outputs the engine does not make (inference needs none of them): refused where read
  const read = new Set([...nodes.flatMap((n) => n.inputs), ...((g.output as Record<string, unknown>[]) ?? []).map((v) => String(v.name))]);
  for (const n of nodes) {
    const made = OUTPUTS_MADE[n.opType];
    if (made === undefined) continue;
    n.outputs.forEach((o, k) => {
      if (k >= made && o !== "" && read.has(o))
        problems.push(
          `${label}: node ${n.name} (${n.opType}): its output ${k + 1} (${o}) is read, and bhsd makes only the first ${made === 1 ? "" : made + " "}output of ${n.opType}`,
        );
    });
  }
  if (problems.length) throw new Error(`${label}: the engine cannot run this model:\n  ${problems.join("\n  ")}`);
  if (!Array.isArray(g.output) || g.output.length === 0) throw new Error(`${label}: the graph declares no outputs`);
  const inputs = ((g.input as Record<string, unknown>[]) ?? [])
    .filter((v) => !initializers.has(String(v.name)))
    .map((v) => {
      const dims = (
        ((v.type as Record<string, Record<string, Record<string, unknown>>>)?.tensorType?.shape?.dim as Record<string, unknown>[]) ?? []
      ).map((d) => (d.dimValue !== undefined ? Number(d.dimValue) : String(d.dimParam ?? "?")));
      return { name: String(v.name), shape: dims };
    });
  lowerIntegerOps(
    nodes,
    initializers,
    [...inputs.map((i) => i.name), ...((g.output as Record<string, unknown>[]) ?? []).map((v) => String(v.name))],
    label,
  );
  fuseQuantizePairs(
    nodes,
    initializers,
    ((g.output as Record<string, unknown>[]) ?? []).map((v) => String(v.name)),
    label,
  );
  roundHalfBoundaries(g, nodes, initializers, label);
  const produced = new Set([...initializers.keys(), ...inputs.map((i) => i.name), ...nodes.flatMap((n) => n.outputs)]);
  for (const v of g.output as Record<string, unknown>[]) {
    if (!produced.has(String(v.name))) throw new Error(`${label}: graph output ${String(v.name)} is produced by no node`);
  }
  const metadata: Record<string, string> = {};
  for (const p of (m.metadataProps as { key: string; value: string }[]) ?? []) metadata[p.key] = p.value;
  return {
    opset,
    producer: `${m.producerName ?? ""} ${m.producerVersion ?? ""}`.trim(),
    nodes: topoSort(nodes, new Set([...initializers.keys(), ...inputs.map((i) => i.name)]), label),
    initializers,
    inputs,
    outputs: ((g.output as Record<string, unknown>[]) ?? []).map((v) => String(v.name)),
    metadata,
  };
}

/**
 * A graph input or output declared float16 or bfloat16 (a `model.half()` export): the values given
 * are rounded to that type as they enter (what a caller of onnxruntime converts them to), and the
 * output is rounded to it as it leaves, by Cast nodes added at the boundary; the engine computes in
 * float32 between (half.ts).
 */
function roundHalfBoundaries(
  g: Record<string, unknown>,
  nodes: GraphNode[],
  initializers: ReadonlyMap<string, OnnxTensor>,
  label: string,
): void {
  const elemOf = (v: Record<string, unknown>) =>
    Number((v.type as Record<string, Record<string, unknown>> | undefined)?.tensorType?.elemType ?? 0);
  const names = (k: string) => ((g[k] as Record<string, unknown>[] | undefined) ?? []).map((v) => String(v.name));
  const taken = new Set([
    ...nodes.flatMap((n) => [...n.inputs, ...n.outputs]),
    ...initializers.keys(),
    ...names("input"),
    ...names("output"),
  ]);
  const fresh = (base: string) => {
    let name = `${base}:bhsd_16`;
    for (let k = 1; taken.has(name); k++) name = `${base}:bhsd_16_${k}`;
    taken.add(name);
    return name;
  };
  const cast = (from: string, to: string, type: number): GraphNode => ({
    name: `bhsd_round16(${to})`,
    opType: "Cast",
    inputs: [from],
    outputs: [to],
    attrs: { to: type },
  });
  const head: GraphNode[] = [];
  for (const v of (g.input as Record<string, unknown>[]) ?? []) {
    const name = String(v.name),
      type = elemOf(v);
    if (!CAST_16.has(type) || initializers.has(name)) continue;
    // (a graph output under the input's own name could not be the rounded value)
    if (names("output").includes(name))
      throw new Error(
        `${label}: the graph returns its float16 input ${name} as an output; bhsd rounds an input to float16 as it enters and cannot return it unrounded under its own name`,
      );
    const inner = fresh(name);
    for (const n of nodes) n.inputs = n.inputs.map((i) => (i === name ? inner : i));
    head.push(cast(name, inner, type));
  }
  for (const v of (g.output as Record<string, unknown>[]) ?? []) {
    const name = String(v.name),
      type = elemOf(v);
    const maker = nodes.find((n) => n.outputs.includes(name));
    if (!CAST_16.has(type) || !maker) continue;
    const inner = fresh(name);
    for (const n of nodes) {
      n.outputs = n.outputs.map((o) => (o === name ? inner : o));
      n.inputs = n.inputs.map((i) => (i === name ? inner : i));
    }
    nodes.push(cast(inner, name, type));
  }
  nodes.unshift(...head);
}

/** ONNX data types Cast may produce, and what the engine keeps them as. */
export const CAST_FLOAT = new Set([ONNX_DTYPE.FLOAT, ONNX_DTYPE.DOUBLE]);
/** 16-bit float types Cast may produce: values rounded to the type, kept as float32 (half.ts). */
export const CAST_16 = new Set<number>([ONNX_DTYPE.FLOAT16, ONNX_DTYPE.BFLOAT16]);
export const CAST_INT = new Set<number>([
  ONNX_DTYPE.UINT8,
  ONNX_DTYPE.INT8,
  ONNX_DTYPE.UINT16,
  ONNX_DTYPE.INT16,
  ONNX_DTYPE.INT32,
  ONNX_DTYPE.INT64,
  ONNX_DTYPE.BOOL,
  ONNX_DTYPE.UINT32,
  ONNX_DTYPE.UINT64,
]);

/** Largest kernel extent or pad a model may ask for (far beyond any CT network). */
const MAX_GEOMETRY = 4096;
/** Largest stride or dilation (U-Nets use 1 to 4; a stride of 400 only blows up a transposed convolution). */
const MAX_STRIDE = 64;

/** Attribute values the engine does not implement, or that no sane model has: refused at load. */
function checkAttrs(op: string, a: Record<string, Attr>, where: string, spatial = true): string[] {
  const p: string[] = [];
  const autoPad = a.auto_pad as string | undefined;
  if (autoPad !== undefined && autoPad !== "NOTSET" && autoPad !== "VALID")
    p.push(`${where}: attribute auto_pad = ${autoPad} is not supported (only NOTSET and VALID; export with explicit pads)`);
  // every number an attribute holds must be finite: NaN or ∞ eps, alpha or pads are refused here
  for (const [k, v] of Object.entries(a)) {
    const nums = typeof v === "number" ? [v] : Array.isArray(v) ? v : [];
    if (nums.some((x) => !Number.isFinite(x))) p.push(`${where}: attribute ${k} = ${JSON.stringify(v)} is not finite`);
  }
  const ints = (k: string, lo: number, hi: number, len?: number) => {
    const v = a[k];
    if (v === undefined) return;
    const xs = Array.isArray(v) ? v : [v as number];
    if (typeof v === "string" || xs.some((x) => !Number.isInteger(x) || x < lo || x > hi) || (len !== undefined && xs.length !== len)) {
      p.push(`${where}: attribute ${k} = ${JSON.stringify(v)} must be ${len !== undefined ? `${len} ` : ""}integers in ${lo}..${hi}`);
    }
  };
  if (SPATIAL_OPS.includes(op) && spatial) {
    // (1-D and 2-D nodes' attributes are lifted to three axes by now)
    ints("kernel_shape", 1, MAX_GEOMETRY, 3);
    ints("strides", 1, MAX_STRIDE, 3);
    ints("dilations", 1, MAX_STRIDE, 3);
    ints("pads", 0, MAX_GEOMETRY, 6);
    ints("output_padding", 0, MAX_GEOMETRY, 3);
    ints("group", 1, 1 << 20);
  }
  for (const k of ["epsilon"]) {
    const v = a[k];
    if (v !== undefined && !(typeof v === "number" && v >= 0 && v < 1))
      p.push(`${where}: attribute ${k} = ${v} must be a number in [0, 1)`);
  }
  if (a.alpha !== undefined && typeof a.alpha !== "number") p.push(`${where}: attribute alpha must be a number`);
  if (op === "Resize") {
    const mode = (a.mode as string | undefined) ?? "nearest";
    if (mode !== "nearest" && mode !== "linear") p.push(`${where}: attribute mode = ${mode} is not supported (nearest, linear)`);
    const ctm = (a.coordinate_transformation_mode as string | undefined) ?? "half_pixel";
    if (!["half_pixel", "pytorch_half_pixel", "align_corners", "asymmetric"].includes(ctm))
      p.push(`${where}: attribute coordinate_transformation_mode = ${ctm} is not supported`);
    if (a.antialias) p.push(`${where}: attribute antialias = 1 is not supported`);
    if (a.exclude_outside) p.push(`${where}: attribute exclude_outside = 1 is not supported`);
    // (it was accepted and ignored: sizes were stretched to whatever aspect the model asked to keep)
    if (a.keep_aspect_ratio_policy !== undefined && a.keep_aspect_ratio_policy !== "stretch")
      p.push(
        `${where}: attribute keep_aspect_ratio_policy = ${String(a.keep_aspect_ratio_policy).slice(0, 32)} is not supported (stretch)`,
      );
  }
  if (op === "Pad") {
    const mode = (a.mode as string | undefined) ?? "constant";
    if (!["constant", "edge", "reflect", "wrap"].includes(mode))
      p.push(`${where}: attribute mode = ${mode} is not supported (constant, edge, reflect, wrap)`);
  }
  if (op === "Cast" && !CAST_FLOAT.has(a.to as 1) && !CAST_16.has(a.to as number) && !CAST_INT.has(a.to as number)) {
    p.push(`${where}: attribute to = ${a.to} is not a type bhsd computes in (float, double, float16, bfloat16 and the integer types)`);
  }
  if (op === "Gelu" && a.approximate !== undefined && a.approximate !== "none" && a.approximate !== "tanh")
    p.push(`${where}: attribute approximate = ${a.approximate} must be none or tanh`);
  if (op === "Einsum" && !/^[a-zA-Z]+,[a-zA-Z]+->[a-zA-Z]*$/.test(String(a.equation ?? "").replace(/\s/g, ""))) {
    p.push(
      `${where}: attribute equation = ${JSON.stringify(a.equation)} is not a two-operand einsum with explicit output (bhsd runs "ab,bc->ac" forms)`,
    );
  }
  if (op === "GroupNormalization") ints("num_groups", 1, 1 << 20);
  if (op === "ArgMax" && a.select_last_index) p.push(`${where}: attribute select_last_index = 1 is not supported`);
  if (op === "BatchNormalization" && a.training_mode) p.push(`${where}: attribute training_mode = 1 is not supported (inference only)`);
  if (op === "MaxPool" && a.storage_order) p.push(`${where}: attribute storage_order = 1 is not supported`);
  return p;
}

/**
 * Checks that need the weights and constant inputs, made once constants are folded: a pad no
 * smaller than the kernel's span (only padding in the output), a Slice step of 0 (an endless
 * loop), a Reshape with two -1s, a Range with a zero step. Throws naming the node.
 */
export function checkConstantInputs(nodes: readonly GraphNode[], consts: ReadonlyMap<string, OnnxTensor>, label: string): void {
  const problems: string[] = [];
  const ints = (name: string | undefined) =>
    name ? (consts.get(name)?.ints ?? (consts.get(name)?.f32 ? Array.from(consts.get(name)!.f32!) : undefined)) : undefined;
  for (const n of nodes) {
    const where = `${label}: node ${n.name} (${n.opType})`;
    if (SPATIAL_OPS.includes(n.opType)) {
      const w = n.opType.endsWith("Pool") ? undefined : consts.get(n.inputs[1] ?? "")?.dims;
      // (a 1-D or 2-D node's attributes are lifted to three axes: its kernel has leading 1s)
      const sp = spatialOf(n.attrs),
        rank = sp + 2;
      const wk = w && w.length === rank ? [...Array<number>(3 - sp).fill(1), ...w.slice(2)] : undefined;
      const k = (n.attrs.kernel_shape as number[] | undefined) ?? wk;
      const d = (n.attrs.dilations as number[] | undefined) ?? [1, 1, 1];
      const pads = n.attrs.pads as number[] | undefined;
      if (w && w.length !== rank)
        problems.push(
          `${where}: weight has shape [${w}]; this ${sp}-D node takes ${["[Co, C, kL]", "[Co, C, kH, kW]", "[Co, C, kD, kH, kW]"][sp - 1]}`,
        );
      const ka = n.attrs.kernel_shape as number[] | undefined;
      if (wk && ka && ka.some((v, i) => v !== wk[i]))
        problems.push(`${where}: kernel_shape [${ka.slice(3 - sp)}] disagrees with the weight's [${w!.slice(2)}]`);
      if (k && pads && n.opType !== "ConvTranspose") {
        for (let i = 0; i < 3; i++) {
          const span = d[i]! * (k[i]! - 1) + 1;
          if (pads[i]! >= span || pads[i + 3]! >= span)
            problems.push(
              `${where}: pads [${[...pads.slice(3 - sp, 3), ...pads.slice(6 - sp)]}] reach past the kernel's span ${span} on spatial axis ${i - 3 + sp} (output made of padding only)`,
            );
        }
      }
    }
    if (n.opType === "Slice") {
      const steps = ints(n.inputs[4]);
      if (steps?.some((v) => v === 0)) problems.push(`${where}: steps [${steps}] contain 0`);
    }
    if (n.opType === "Reshape") {
      const shape = ints(n.inputs[1]);
      if (shape && (shape.filter((v) => v === -1).length > 1 || shape.some((v) => v < -1)))
        problems.push(`${where}: shape [${shape}] may hold one -1 and no other negative`);
    }
    if (n.opType === "Range") {
      const delta = ints(n.inputs[2]);
      if (delta && delta[0] === 0) problems.push(`${where}: delta is 0`);
    }
  }
  if (problems.length) throw new Error(`${label}: the engine cannot run this model:\n  ${problems.join("\n  ")}`);
}

/** Kahn's algorithm, linear in nodes and edges (a quadratic sort took 155 s on 40k reversed nodes). */
function topoSort(nodes: GraphNode[], known: Set<string>, label: string): GraphNode[] {
  const producer = new Map<string, number>();
  nodes.forEach((n, k) => n.outputs.forEach((o) => o && producer.set(o, k)));
  const waiting = new Array<number>(nodes.length).fill(0);
  const readers = new Map<number, number[]>();
  nodes.forEach((n, k) => {
    for (const i of n.inputs) {
      if (!i || known.has(i)) continue;
      const p = producer.get(i);
      if (p === undefined) throw new Error(`${label}: node ${n.name} needs ${i}, which nothing produces (a missing input)`);
      waiting[k]!++;
      const list = readers.get(p) ?? [];
      list.push(k);
      readers.set(p, list);
    }
  });
  // ready nodes leave in file order (a min-heap of indices): exporters write graphs in an order
  // whose buffer lifetimes are sensible, and a sort should not reshuffle it
  const heap: number[] = [];
  const push = (k: number) => {
    let i = heap.push(k) - 1;
    while (i > 0) {
      const p = (i - 1) >> 1;
      if (heap[p]! <= k) break;
      heap[i] = heap[p]!;
      i = p;
    }
    heap[i] = k;
  };
  const pop = (): number => {
    const top = heap[0]!,
      last = heap.pop()!;
    if (heap.length) {
      let i = 0;
      for (;;) {
        let c = 2 * i + 1;
        if (c >= heap.length) break;
        if (c + 1 < heap.length && heap[c + 1]! < heap[c]!) c++;
        if (heap[c]! >= last) break;
        heap[i] = heap[c]!;
        i = c;
      }
      heap[i] = last;
    }
    return top;
  };
  nodes.forEach((_, k) => waiting[k] === 0 && push(k));
  const out: GraphNode[] = [];
  while (heap.length) {
    const k = pop();
    out.push(nodes[k]!);
    for (const r of readers.get(k) ?? []) if (--waiting[r]! === 0) push(r);
  }
  if (out.length !== nodes.length) {
    const stuck = nodes.find((_, k) => waiting[k]! > 0)!;
    throw new Error(`${label}: node ${stuck.name} is part of a cycle`);
  }
  return out;
}

/** How many nodes read each value, a graph output counting as one more reader. */
export function consumersOf(nodes: GraphNode[], graphOutputs: string[]): Map<string, number> {
  const consumers = new Map<string, number>();
  for (const n of nodes) for (const i of n.inputs) if (i) consumers.set(i, (consumers.get(i) ?? 0) + 1);
  for (const o of graphOutputs) consumers.set(o, (consumers.get(o) ?? 0) + 1);
  return consumers;
}

/** The node that computes each value, by the names results are bound to (after fusion). */
export function producersOf(nodes: GraphNode[]): Map<string, GraphNode> {
  const producer = new Map<string, GraphNode>();
  for (const n of nodes) for (const o of finalOutputs(n)) producer.set(o, n);
  return producer;
}

/** Fuses Relu/LeakyRelu into the Conv, InstanceNormalization or GroupNormalization before it when that is their only consumer. */
export function fuseActivations(graph: Graph): GraphNode[] {
  const consumers = consumersOf(graph.nodes, graph.outputs);
  const producer = producersOf(graph.nodes);
  const drop = new Set<GraphNode>();
  // the graph's own nodes are left as they are: the fused ones are copies
  const fused = new Map<GraphNode, GraphNode>();
  for (const n of graph.nodes) {
    if (n.opType !== "Relu" && n.opType !== "LeakyRelu") continue;
    const p = producer.get(n.inputs[0]!);
    if (
      !p ||
      (p.opType !== "Conv" && p.opType !== "InstanceNormalization" && p.opType !== "GroupNormalization" && p.opType !== "Add") ||
      p.fusedAct ||
      fused.has(p) ||
      consumers.get(n.inputs[0]!) !== 1
    )
      continue;
    fused.set(p, {
      ...p,
      fusedAct: {
        act: n.opType === "Relu" ? "relu" : "leakyRelu",
        alpha: n.opType === "LeakyRelu" ? ((n.attrs.alpha as number | undefined) ?? 0.01) : 0,
        output: n.outputs[0]!,
      },
    });
    drop.add(n);
  }
  return graph.nodes.filter((n) => !drop.has(n)).map((n) => fused.get(n) ?? n);
}

/** `only(name, op)`: the one node that reads value `name` (not a graph output), when it is an `op`. */
export function soleReader(
  nodes: GraphNode[],
  consumers: Map<string, number>,
): (name: string | undefined, op: string) => GraphNode | undefined {
  const readers = new Map<string, GraphNode[]>();
  for (const n of nodes) for (const i of n.inputs) if (i) (readers.get(i) ?? readers.set(i, []).get(i)!).push(n);
  return (name, op) => {
    const r = name ? readers.get(name) : undefined;
    return r && r.length === 1 && consumers.get(name!) === 1 && r[0]!.opType === op ? r[0] : undefined;
  };
}

/**
 * PyTorch's GroupNorm as exporters before opset 18 write it (MONAI SegResNet's norm): Reshape to
 * [0, G, -1] → InstanceNormalization (scale 1, bias 0) → Reshape back to Shape(X) → Mul by γ
 * [C, 1, …] → Add β [C, 1, …], each read only by the next, becomes one GroupNormalization node
 * (num_groups G, per-channel scale and bias) that the engine runs in two passes instead of five
 * (an activation after it is then fused by fuseActivations). Where the input shapes are fixed, the
 * Shape is folded into a constant at load: that constant qualifies when it is X's shape as shape
 * inference found it (`shapes`).
 */
export function fuseGroupNorm(
  nodes: GraphNode[],
  graphOutputs: string[],
  inits: ReadonlyMap<string, OnnxTensor>,
  shapes?: ReadonlyMap<string, number[]>,
): GraphNode[] {
  const consumers = consumersOf(nodes, graphOutputs);
  const producer = producersOf(nodes);
  const only = soleReader(nodes, consumers);
  const ints = (name: string | undefined) => (name ? inits.get(name)?.ints : undefined);
  const floats = (name: string | undefined) => (name ? inits.get(name)?.f32 : undefined);
  /** A per-channel constant [C, 1, …, 1]: its values and its rank. */
  const channelConst = (name: string | undefined) => {
    const t = name ? inits.get(name) : undefined;
    return t?.f32 && t.dims.length >= 1 && t.dims.slice(1).every((d) => d === 1) ? { C: t.dims[0]!, rank: t.dims.length } : undefined;
  };
  const drop = new Set<GraphNode>(),
    replace = new Map<GraphNode, GraphNode>();
  for (const norm of nodes) {
    if (norm.opType !== "InstanceNormalization" || norm.fusedAct) continue;
    const r1 = producer.get(norm.inputs[0]!);
    const target = ints(r1?.inputs[1]);
    if (
      !r1 ||
      r1.opType !== "Reshape" ||
      r1.attrs.allowzero ||
      !target ||
      target.length !== 3 ||
      target[0] !== 0 ||
      !(target[1]! > 0) ||
      target[2] !== -1 ||
      only(r1.outputs[0], "InstanceNormalization") !== norm
    )
      continue;
    const G = target[1]!,
      one = floats(norm.inputs[1]),
      zero = floats(norm.inputs[2]);
    if (!one || !zero || one.length !== G || zero.length !== G || one.some((v) => v !== 1) || zero.some((v) => v !== 0)) continue;
    const r2 = only(norm.outputs[0], "Reshape");
    const shape = r2 && producer.get(r2.inputs[1]!);
    // (back to X's shape: Shape(X), or that shape made a constant)
    const xShape = shapes?.get(r1.inputs[0]!);
    const spec = r2 ? ints(r2.inputs[1]) : undefined;
    const folded =
      !!r2 && !shape && !!xShape && !!spec && spec.length === xShape.length && spec.every((d, i) => d === xShape[i]) && !r2.attrs.allowzero;
    if (
      !r2 ||
      (!folded &&
        (!shape ||
          shape.opType !== "Shape" ||
          shape.inputs[0] !== r1.inputs[0] ||
          shape.attrs.start !== undefined ||
          shape.attrs.end !== undefined))
    )
      continue;
    const mul = only(r2.outputs[0], "Mul");
    const gamma = mul && mul.inputs.find((i) => i !== r2.outputs[0]);
    const add = mul && only(mul.outputs[0], "Add");
    const beta = add && add.inputs.find((i) => i !== mul!.outputs[0]);
    const g = channelConst(gamma),
      b = channelConst(beta);
    if (!mul || !add || !g || !b || g.C !== b.C || g.rank !== b.rank || g.C % G || mul.inputs.length !== 2 || add.inputs.length !== 2)
      continue;
    replace.set(norm, {
      opType: "GroupNormalization",
      name: norm.name,
      inputs: [r1.inputs[0]!, gamma!, beta!],
      outputs: [add.outputs[0]!],
      // the exported pattern broadcasts γ [C, 1, …] over an input of one more axis (N)
      attrs: { num_groups: G, epsilon: (norm.attrs.epsilon as number | undefined) ?? 1e-5, bhsd_rank: g.rank + 1 },
    });
    for (const d of [r1, r2, mul, add]) drop.add(d);
    if (shape && consumers.get(shape.outputs[0]!) === 1) drop.add(shape);
  }
  return nodes.filter((n) => !drop.has(n)).map((n) => replace.get(n) ?? n);
}

/**
 * GELU as exporters write it (PyTorch's nn.GELU: MONAI's UNETR and SwinUNETR MLPs): Div(x, √2) →
 * Erf → Add 1 → Mul x → Mul 0.5, each read only by the next, becomes one Gelu node (one pass over
 * the values instead of five, and four fewer intermediates). The divisor is kept as exported.
 */
export function fuseGelu(nodes: GraphNode[], graphOutputs: string[], inits: ReadonlyMap<string, OnnxTensor>): GraphNode[] {
  const consumers = consumersOf(nodes, graphOutputs);
  const producer = producersOf(nodes);
  const only = soleReader(nodes, consumers);
  /** The value of a one-element float constant. */
  const scalar = (name: string | undefined) => {
    const t = name ? inits.get(name) : undefined;
    return t?.f32 && t.f32.length === 1 ? t.f32[0]! : undefined;
  };
  const other = (n: GraphNode, name: string) =>
    n.inputs.length === 2 && n.inputs.includes(name) ? (n.inputs.find((i) => i !== name) ?? name) : undefined;
  const drop = new Set<GraphNode>(),
    replace = new Map<GraphNode, GraphNode>();
  for (const erf of nodes) {
    if (erf.opType !== "Erf") continue;
    const div = producer.get(erf.inputs[0]!);
    const c = scalar(div?.inputs[1]);
    if (!div || div.opType !== "Div" || c === undefined || Math.abs(c - Math.SQRT2) > 1e-6 || only(div.outputs[0], "Erf") !== erf) continue;
    const x = div.inputs[0]!;
    const add = only(erf.outputs[0], "Add");
    if (!add || scalar(other(add, erf.outputs[0]!)) !== 1) continue;
    const m1 = only(add.outputs[0], "Mul");
    if (!m1 || other(m1, add.outputs[0]!) !== x) continue;
    const m2 = only(m1.outputs[0], "Mul");
    if (!m2 || scalar(other(m2, m1.outputs[0]!)) !== 0.5) continue;
    replace.set(div, { opType: "Gelu", name: erf.name, inputs: [x], outputs: [m2.outputs[0]!], attrs: { bhsd_div: c } });
    for (const d of [erf, add, m1, m2]) drop.add(d);
  }
  return nodes.filter((n) => !drop.has(n)).map((n) => replace.get(n) ?? n);
}

/** A two-input node's input other than `name` (undefined when it has not two, or reads `name` twice). */
export const otherInput = (n: GraphNode, name: string): string | undefined =>
  n.inputs.length === 2 && n.inputs.includes(name) ? n.inputs.find((i) => i !== name) : undefined;

/**
 * LayerNorm over the last axis as exporters before opset 17 write it (torch.onnx's F.layer_norm,
 * every norm of a SwinUNETR or UNETR export): ReduceMean(x) → Sub → Pow 2 → ReduceMean → Add ε →
 * Sqrt → Div [→ Mul γ [→ Add β]], each step read only by the next (the difference by the Pow and
 * the Div), becomes one LayerNormalization (axis −1, epsilon ε), which the engine runs in one pass
 * with double sums instead of eight element-wise steps in float.
 */
/**
 * The op of a LayerNorm over the channels (axis 1) of [N, C, …] that fuseLayerNorm and
 * fuseChannelNorm make (not an ONNX op: a file naming it is refused at parse). Inputs x, then γ and
 * β where present: per channel where the attribute channel_affine is 1 (fuseChannelNorm's, from a
 * LayerNormalization's vectors), else each broadcast as ONNX broadcasts a Mul's and an Add's constant.
 */
export const CHANNEL_NORM_OP = "bhsd.ChannelNorm";

/**
 * A LayerNorm over the channels written as Transpose to channels-last → LayerNormalization over
 * the last axis (γ, β vectors) → Transpose back (bhsd's Primus decoder, and exports of
 * channels-last norms), each value read by the next node alone: one CHANNEL_NORM_OP, the two
 * copies of the activation gone.
 */
export function fuseChannelNorm(nodes: GraphNode[], graphOutputs: string[], inits: ReadonlyMap<string, OnnxTensor>): GraphNode[] {
  const consumers = consumersOf(nodes, graphOutputs);
  const only = soleReader(nodes, consumers);
  const producer = producersOf(nodes);
  const replace = new Map<GraphNode, GraphNode>(),
    drop = new Set<GraphNode>();
  for (const ln of nodes) {
    if (
      ln.opType !== "LayerNormalization" ||
      ((ln.attrs.axis as number | undefined) ?? -1) !== -1 ||
      ln.outputs.filter(Boolean).length !== 1
    )
      continue;
    const t1 = producer.get(ln.inputs[0]!);
    const perm = t1?.opType === "Transpose" ? (t1.attrs.perm as number[] | undefined) : undefined;
    const r = perm?.length ?? 0;
    if (!t1 || !perm || r < 3 || consumers.get(ln.inputs[0]!) !== 1) continue;
    // [0, 2, …, r−1, 1] there, [0, r−1, 1, …, r−2] back
    if (!perm.every((p, i) => p === (i === 0 ? 0 : i === r - 1 ? 1 : i + 1))) continue;
    const t2 = only(ln.outputs[0], "Transpose");
    const back = t2?.attrs.perm as number[] | undefined;
    if (!t2 || !back || back.length !== r || !back.every((p, i) => p === (i === 0 ? 0 : i === 1 ? r - 1 : i - 1))) continue;
    const vec = (name: string | undefined) => !name || (inits.get(name)?.f32 !== undefined && inits.get(name)!.dims.length === 1);
    if (!vec(ln.inputs[1]) || !vec(ln.inputs[2])) continue;
    // (an epsilon the native pass refuses stays with the nodes, which run it as the graph says)
    const eps = (ln.attrs.epsilon as number | undefined) ?? 1e-5;
    if (!(eps >= 0 && Number.isFinite(eps))) continue;
    // (rank 3: [0, 2, 1] both ways, so one Transpose may close a norm and open the next: taken once)
    if ([t1, ln, t2].some((n) => drop.has(n) || replace.has(n) || n.fusedAct)) continue;
    drop.add(t1).add(ln);
    replace.set(t2, {
      name: ln.name,
      opType: CHANNEL_NORM_OP,
      inputs: [t1.inputs[0]!, ...ln.inputs.slice(1)],
      outputs: [t2.outputs[0]!],
      attrs: { epsilon: eps, channel_affine: 1 },
    });
  }
  if (replace.size === 0) return nodes;
  return nodes.flatMap((n) => (replace.has(n) ? [replace.get(n)!] : drop.has(n) ? [] : [n]));
}

/**
 * A Linear layer's MatMul(x, W) → Add(·, b), W a 2-D float initializer [K, N] and b one of N
 * values (rank 1), the product read by the Add alone: one MatMul with b as a third input, which the
 * executor adds to the product as the GEMM stores it (no pass of its own).
 */
export function fuseMatMulBias(nodes: GraphNode[], graphOutputs: string[], inits: ReadonlyMap<string, OnnxTensor>): GraphNode[] {
  const consumers = consumersOf(nodes, graphOutputs);
  const only = soleReader(nodes, consumers);
  const replace = new Map<GraphNode, GraphNode>(),
    drop = new Set<GraphNode>();
  for (const mm of nodes) {
    if (mm.opType !== "MatMul" || mm.inputs.length !== 2 || mm.fusedAct || drop.has(mm)) continue;
    const w = inits.get(mm.inputs[1]!);
    if (!w?.f32 || w.dims.length !== 2 || consumers.get(mm.outputs[0]!) !== 1) continue;
    const add = only(mm.outputs[0], "Add");
    if (!add || add.inputs.length !== 2 || add.fusedAct || add.fusedAdd || replace.has(add)) continue;
    const b = inits.get(otherInput(add, mm.outputs[0]!) ?? "");
    if (!b?.f32 || b.dims.length !== 1 || b.dims[0] !== w.dims[1]) continue;
    drop.add(mm);
    replace.set(add, { ...mm, inputs: [mm.inputs[0]!, mm.inputs[1]!, otherInput(add, mm.outputs[0]!)!], outputs: [add.outputs[0]!] });
  }
  if (replace.size === 0) return nodes;
  return nodes.flatMap((n) => (replace.has(n) ? [replace.get(n)!] : drop.has(n) ? [] : [n]));
}

export function fuseLayerNorm(nodes: GraphNode[], graphOutputs: string[], inits: ReadonlyMap<string, OnnxTensor>): GraphNode[] {
  const consumers = consumersOf(nodes, graphOutputs);
  const only = soleReader(nodes, consumers);
  /** A one-value constant of rank 0 or 1 (a higher rank would broadcast x to more axes). */
  const scalar = (name: string | undefined) => {
    const t = name ? inits.get(name) : undefined;
    if (!t || t.dims.length > 1) return undefined;
    return t.f32 && t.f32.length === 1 ? t.f32[0]! : t.ints && t.ints.length === 1 ? t.ints[0]! : undefined;
  };
  const vector = (name: string | undefined) => {
    const t = name ? inits.get(name) : undefined;
    return t?.f32 && t.dims.length === 1 ? name : undefined;
  };
  const other = otherInput;
  /**
   * The axis of a ReduceMean over one axis, keeping it (axes as an attribute, or opset 18's input):
   * −1 (a LayerNorm) or 1 (the channels: LayerNormNd, SAM's and ConvNeXt's LayerNorm2d); else undefined.
   */
  const meanAxis = (n: GraphNode | undefined) => {
    if (!n || n.opType !== "ReduceMean" || n.attrs.keepdims === 0) return undefined;
    const axes = n.inputs[1] ? inits.get(n.inputs[1])?.ints : (n.attrs.axes as number[] | undefined);
    return axes && axes.length === 1 && (axes[0] === -1 || axes[0] === 1) ? axes[0] : undefined;
  };
  /** A channel LayerNorm's γ or β: a float constant with at most one dimension other than 1 ([C, 1, 1, 1]). */
  const channelVector = (name: string | undefined) => {
    const t = name ? inits.get(name) : undefined;
    return t?.f32 && t.dims.filter((d) => d !== 1).length <= 1 ? name : undefined;
  };
  const replace = new Map<GraphNode, GraphNode>(),
    drop = new Set<GraphNode>();
  for (const mean of nodes) {
    const axis = meanAxis(mean);
    if (axis === undefined || drop.has(mean) || consumers.get(mean.outputs[0]!) !== 1) continue;
    const x = mean.inputs[0]!;
    const sub = only(mean.outputs[0], "Sub");
    if (!sub || sub.inputs[0] !== x || sub.inputs[1] !== mean.outputs[0]) continue;
    const d = sub.outputs[0]!;
    const readers = nodes.filter((n) => n.inputs.includes(d));
    if (consumers.get(d) !== 2 || readers.length !== 2) continue;
    const pow = readers.find((n) => n.opType === "Pow" && n.inputs[0] === d && scalar(n.inputs[1]) === 2);
    const div = readers.find((n) => n.opType === "Div" && n.inputs[0] === d);
    if (!pow || !div) continue;
    const mean2 = only(pow.outputs[0], "ReduceMean");
    if (meanAxis(mean2) !== axis || consumers.get(mean2!.outputs[0]!) !== 1) continue;
    const addEps = only(mean2!.outputs[0], "Add");
    const eps = addEps && scalar(other(addEps, mean2!.outputs[0]!));
    if (!addEps || eps === undefined || !(eps >= 0)) continue;
    const sqrt = only(addEps.outputs[0], "Sqrt");
    if (!sqrt || div.inputs[1] !== sqrt.outputs[0] || consumers.get(sqrt.outputs[0]!) !== 1) continue;
    // γ and β where a Mul and an Add of vectors follow (F.layer_norm without weights has neither);
    // over the channels, constants that vary along one axis (run checks it is the channels')
    const mul = only(div.outputs[0], "Mul");
    const affine = (name: string | undefined) => (axis === -1 ? vector(name) : channelVector(name));
    const gamma = mul && affine(other(mul, div.outputs[0]!));
    const add = gamma ? only(mul!.outputs[0], "Add") : undefined;
    const beta = add && affine(other(add, mul!.outputs[0]!));
    const last = beta ? add! : gamma ? mul! : div;
    const steps = [mean, sub, pow, mean2!, addEps, sqrt, div, ...(gamma ? [mul!] : []), ...(beta ? [add!] : [])];
    if (steps.some((n) => drop.has(n) || n.fusedAct)) continue;
    for (const n of steps) drop.add(n);
    replace.set(last, {
      name: mean.name,
      opType: axis === -1 ? "LayerNormalization" : CHANNEL_NORM_OP,
      inputs: beta ? [x, gamma!, beta] : gamma ? [x, gamma] : [x],
      outputs: [last.outputs[0]!],
      attrs: axis === -1 ? { axis: -1, epsilon: eps } : { epsilon: eps },
    });
  }
  if (replace.size === 0) return nodes;
  return nodes.flatMap((n) => (replace.has(n) ? [replace.get(n)!] : drop.has(n) ? [] : [n]));
}

/**
 * Fuses each InstanceNormalization or GroupNormalization (with its fused activation, if any) into
 * the Conv whose output it alone reads, for backends that normalise the convolution's output in
 * place in the same call (nodes from fuseActivations; the graph's own nodes are left as they are).
 */
export function fuseConvNorm(nodes: GraphNode[], graphOutputs: string[], constants?: ReadonlySet<string>): GraphNode[] {
  const consumers = consumersOf(nodes, graphOutputs);
  const producer = producersOf(nodes);
  const drop = new Set<GraphNode>();
  const fused = new Map<GraphNode, GraphNode>();
  for (const n of nodes) {
    const group = n.opType === "GroupNormalization";
    if ((n.opType !== "InstanceNormalization" && !group) || !n.inputs[1] || !n.inputs[2]) continue;
    if (group && typeof n.attrs.num_groups !== "number") continue;
    // the fused call reads the norm's scale and bias when the Conv runs: they must exist by then
    // (MONAI's exports make them with Constant nodes after the Conv; folding turns those into weights)
    if (constants && (!constants.has(n.inputs[1]) || !constants.has(n.inputs[2]))) continue;
    const p = producer.get(n.inputs[0]!);
    if (!p || p.opType !== "Conv" || p.fusedAct || fused.has(p) || consumers.get(n.inputs[0]!) !== 1) continue;
    fused.set(p, {
      ...p,
      inputs: [p.inputs[0]!, p.inputs[1]!, p.inputs[2] ?? "", n.inputs[1], n.inputs[2]],
      fusedNorm: {
        name: n.name,
        eps: (n.attrs.epsilon as number | undefined) ?? 1e-5,
        ...(group ? { groups: n.attrs.num_groups as number } : {}),
        ...(group && typeof n.attrs.bhsd_rank === "number" ? { rank: n.attrs.bhsd_rank } : {}),
        ...(n.fusedAct ? { act: n.fusedAct.act } : {}),
        alpha: n.fusedAct?.alpha ?? 0,
        output: finalOutputs(n)[0]!,
      },
    });
    drop.add(n);
  }
  return nodes.filter((n) => !drop.has(n)).map((n) => fused.get(n) ?? n);
}

/**
 * Fuses a residual block's Add (with its fused activation, if any) into the Conv →
 * InstanceNormalization before it (from fuseConvNorm, the norm without an activation of its own)
 * where the Add alone reads the norm's output and its other operand exists before the Conv runs
 * (a graph input, a weight, or an earlier node's result): the sum then happens in the norm's own
 * pass instead of a pass of its own over both tensors (nnU-Net's ResEnc blocks: conv2 → norm2 →
 * Add(skip) → LeakyReLU). inputs[5] of the fused node is the other operand.
 */
export function fuseConvNormResidual(nodes: GraphNode[], graphOutputs: string[]): GraphNode[] {
  return fuseResidualAdds(
    nodes,
    graphOutputs,
    (p) => !!p.fusedNorm && !p.fusedNorm.act && !p.fusedNorm.residual && p.fusedNorm.groups === undefined,
    (p, other, act) => ({
      ...p,
      inputs: [p.inputs[0]!, p.inputs[1]!, p.inputs[2] ?? "", p.inputs[3]!, p.inputs[4]!, other],
      fusedNorm: { ...p.fusedNorm!, ...act, residual: true },
    }),
  );
}

/**
 * The Adds of two inputs that alone read a Conv's result, where `accepts` the Conv and the other
 * operand exists before the Conv runs (a graph input, a weight, or an earlier node's result),
 * fused into it by `fuse` (given the other operand, and the Add's activation and output).
 */
function fuseResidualAdds(
  nodes: GraphNode[],
  graphOutputs: string[],
  accepts: (conv: GraphNode) => boolean,
  fuse: (conv: GraphNode, other: string, add: { act?: "relu" | "leakyRelu"; alpha: number; output: string }) => GraphNode,
): GraphNode[] {
  const consumers = consumersOf(nodes, graphOutputs);
  const producer = producersOf(nodes);
  const index = new Map(nodes.map((n, i) => [n, i]));
  const drop = new Set<GraphNode>();
  const fused = new Map<GraphNode, GraphNode>();
  for (const n of nodes) {
    if (n.opType !== "Add" || n.inputs.length !== 2) continue;
    for (const k of [0, 1]) {
      const mine = n.inputs[k]!,
        other = n.inputs[1 - k]!;
      const p = producer.get(mine);
      if (!p || p.opType !== "Conv" || !accepts(p) || fused.has(p) || !other || other === mine) continue;
      if (consumers.get(mine) !== 1) continue;
      const q = producer.get(other);
      if (q && !(index.get(q)! < index.get(p)!)) continue; // made after the Conv: not there when it runs
      fused.set(
        p,
        fuse(p, other, { ...(n.fusedAct ? { act: n.fusedAct.act } : {}), alpha: n.fusedAct?.alpha ?? 0, output: finalOutputs(n)[0]! }),
      );
      drop.add(n);
      break;
    }
  }
  return nodes.filter((n) => !drop.has(n)).map((n) => fused.get(n) ?? n);
}

/**
 * Fuses a residual block's Add (with its fused activation, if any) into the Conv before it, where
 * the Conv has no norm or activation of its own, the Add alone reads its output and the Add's other
 * operand exists before the Conv runs: the sum then happens in the convolution's own call, in
 * place (MONAI SegResNet's ResBlock: conv2 → Add(identity)). inputs[3] of the fused node is the
 * other operand.
 */
export function fuseConvResidual(nodes: GraphNode[], graphOutputs: string[]): GraphNode[] {
  return fuseResidualAdds(
    nodes,
    graphOutputs,
    (p) => !p.fusedNorm && !p.fusedAct && !p.fusedAdd,
    (p, other, add) => ({ ...p, inputs: [p.inputs[0]!, p.inputs[1]!, p.inputs[2] ?? "", other], fusedAdd: add }),
  );
}

/**
 * F.interpolate(x, scale_factor=s, mode="nearest") followed by a 1×1 convolution (STU-Net's
 * up-sampling as torch.onnx exports it: Resize with whole-number scales, asymmetric coordinates,
 * floor) runs as the convolution, then the copy: each output voxel is the same dot product of the
 * same input voxel's channels, so the values are the same at ∏s fewer multiply-adds. Only where the
 * Resize is read by that Conv alone, the Conv's weights are initializers and its kernel, strides,
 * pads and groups are all 1, 1, 0, 1. `shapes` (shape inference's) gains the new value's shape.
 */
export function sinkNearestUpsample(
  nodes: GraphNode[],
  graphOutputs: string[],
  inits: ReadonlyMap<string, OnnxTensor>,
  shapes?: Map<string, number[]>,
): GraphNode[] {
  const consumers = consumersOf(nodes, graphOutputs);
  const only = soleReader(nodes, consumers);
  const replace = new Map<GraphNode, GraphNode>();
  const names = new Set<string>([...inits.keys(), ...graphOutputs]);
  for (const n of nodes) for (const v of [...n.inputs, ...n.outputs]) names.add(v);
  for (const r of nodes) {
    if (r.opType !== "Resize" || (r.attrs.mode ?? "nearest") !== "nearest") continue;
    if (r.attrs.coordinate_transformation_mode !== "asymmetric" || r.attrs.nearest_mode !== "floor") continue;
    if (r.inputs[3] || !r.inputs[2]) continue;
    const sc = inits.get(r.inputs[2])?.f32;
    if (!sc || sc.length < 3 || sc[0] !== 1 || sc[1] !== 1 || !Array.from(sc.subarray(2)).every((v) => Number.isInteger(v) && v >= 1))
      continue;
    const conv = only(r.outputs[0], "Conv");
    if (!conv || conv.inputs[0] !== r.outputs[0] || replace.has(conv) || conv.fusedAct || conv.fusedNorm || conv.fusedAdd) continue;
    const w = inits.get(conv.inputs[1] ?? "");
    if (!w || w.dims.length !== sc.length || w.dims.slice(2).some((d) => d !== 1)) continue;
    if (conv.inputs.slice(1).some((i) => i && !inits.has(i))) continue;
    const a = conv.attrs;
    const all = (v: Attr | undefined, x: number) => v === undefined || (Array.isArray(v) && v.every((e) => e === x));
    if (!all(a.kernel_shape, 1) || !all(a.strides, 1) || !all(a.pads, 0) || (a.group ?? 1) !== 1) continue;
    if (a.auto_pad !== undefined && a.auto_pad !== "NOTSET") continue;
    const mid = `${conv.outputs[0]}:before_nearest_upsample`;
    if (names.has(mid)) continue;
    replace.set(r, { ...conv, inputs: [r.inputs[0]!, ...conv.inputs.slice(1)], outputs: [mid] });
    replace.set(conv, { ...r, inputs: [mid, ...r.inputs.slice(1)], outputs: [conv.outputs[0]!] });
    const xs = shapes?.get(r.inputs[0]!);
    if (shapes && xs) shapes.set(mid, [xs[0]!, w.dims[0]!, ...xs.slice(2)]);
    // (the up-sampled input the Conv read is no value of the graph now)
    shapes?.delete(r.outputs[0]!);
  }
  return replace.size ? nodes.map((n) => replace.get(n) ?? n) : nodes;
}
