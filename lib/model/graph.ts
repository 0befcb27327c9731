/**
 * ONNX models: decoding with protobufjs, checks at load (opset, every op and attribute the engine
 * runs; anything else is refused with the node's name), and a plan made once: topological order,
 * each value's last use, and fusions (Conv or InstanceNormalization followed by its only consumer
 * Relu/LeakyRelu).
 */
import { readFile } from "node:fs/promises";
import { ModelProto, ONNX_DTYPE } from "./onnx-proto.js";

export interface OnnxTensor {
  dims: number[];
  dataType: number;
  /** float tensors as Float32Array; integer ones as plain numbers (shape glue). */
  f32?: Float32Array;
  ints?: number[];
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
   * Set by fuseConvNorm on a Conv: the InstanceNormalization (and its activation) that read only
   * this Conv's output, applied to it in place. inputs[3] and [4] are the norm's scale and bias.
   */
  fusedNorm?: { name: string; eps: number; act?: "relu" | "leakyRelu"; alpha: number; output: string };
}

/** The names a node's results are bound to, after fusion. */
export function finalOutputs(n: GraphNode): string[] {
  return n.fusedNorm ? [n.fusedNorm.output] : n.fusedAct ? [n.fusedAct.output] : n.outputs;
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
  Resize: ["mode", "coordinate_transformation_mode", "nearest_mode", "cubic_coeff_a", "exclude_outside", "extrapolation_value", "antialias", "keep_aspect_ratio_policy"],
  Softmax: ["axis"],
  ArgMax: ["axis", "keepdims", "select_last_index"],
  // glue that exporters put around the real ops
  Identity: [],
  Dropout: ["seed"],
  Constant: ["value", "value_float", "value_floats", "value_int", "value_ints"],
  Shape: ["start", "end"],
  Gather: ["axis"],
  Unsqueeze: ["axes"],
  Squeeze: ["axes"],
  Cast: ["to", "saturate"],
  Slice: [],
  Reshape: ["allowzero"],
  Flatten: ["axis"],
};

function tensorOf(t: Record<string, unknown>, where: string): OnnxTensor {
  const dims = ((t.dims as unknown[]) ?? []).map(Number);
  const dataType = Number(t.dataType ?? 0);
  if (Array.isArray(t.externalData) && t.externalData.length) throw new Error(`${where}: tensor ${t.name} keeps its data in an external file, which bhsd does not read; save the model with all tensors inside (onnx.save(model, path, save_as_external_data=False))`);
  const n = dims.reduce((a, b) => a * b, 1);
  const raw = t.rawData as Uint8Array | undefined;
  const hasRaw = raw !== undefined && raw.length > 0;
  if (dataType === ONNX_DTYPE.FLOAT) {
    let f32: Float32Array;
    if (hasRaw) {
      if (raw.length !== n * 4) throw new Error(`${where}: tensor ${t.name} has ${raw.length} bytes of data for ${n} floats`);
      f32 = new Float32Array(n);
      new Uint8Array(f32.buffer).set(raw);
    } else f32 = Float32Array.from((t.floatData as number[]) ?? []);
    if (f32.length !== n) throw new Error(`${where}: tensor ${t.name} has ${f32.length} values for shape [${dims}]`);
    return { dims, dataType, f32 };
  }
  if (dataType === ONNX_DTYPE.DOUBLE) {
    const f64 = hasRaw ? new Float64Array(raw.slice().buffer) : Float64Array.from((t.doubleData as number[]) ?? []);
    return { dims, dataType: ONNX_DTYPE.FLOAT, f32: Float32Array.from(f64) };
  }
  if (dataType === ONNX_DTYPE.INT64 || dataType === ONNX_DTYPE.INT32 || dataType === ONNX_DTYPE.BOOL || dataType === ONNX_DTYPE.UINT8 || dataType === ONNX_DTYPE.INT8) {
    let ints: number[];
    if (hasRaw) {
      const b = raw.slice();
      const dv = new DataView(b.buffer);
      const width = dataType === ONNX_DTYPE.INT64 ? 8 : dataType === ONNX_DTYPE.INT32 ? 4 : 1;
      ints = Array.from({ length: n }, (_, i) =>
        width === 8 ? Number(dv.getBigInt64(i * 8, true)) : width === 4 ? dv.getInt32(i * 4, true) : dataType === ONNX_DTYPE.INT8 ? dv.getInt8(i) : dv.getUint8(i),
      );
    } else ints = (((dataType === ONNX_DTYPE.INT64 ? t.int64Data : t.int32Data) as unknown[]) ?? []).map(Number);
    return { dims, dataType: ONNX_DTYPE.INT64, ints };
  }
  throw new Error(`${where}: tensor ${t.name} has ONNX data type ${dataType}, which bhsd does not take (float, double, int64, int32, int8, uint8, bool)`);
}

function attrOf(a: Record<string, unknown>, where: string): Attr {
  switch (Number(a.type)) {
    case 1: return Number(a.f);
    case 2: return Number(a.i);
    case 3: return new TextDecoder().decode(a.s as Uint8Array);
    case 4: return tensorOf(a.t as Record<string, unknown>, where);
    case 6: return ((a.floats as unknown[]) ?? []).map(Number);
    case 7: return ((a.ints as unknown[]) ?? []).map(Number);
    default: throw new Error(`${where}: attribute ${a.name} has a type (${a.type}) bhsd does not read`);
  }
}

/** Decodes ONNX bytes (or a file) into a Graph and checks that the engine can run all of it. */
export async function parseModel(pathOrBytes: string | Uint8Array): Promise<Graph> {
  const label = typeof pathOrBytes === "string" ? pathOrBytes : "<model bytes>";
  let bytes: Uint8Array;
  if (typeof pathOrBytes === "string") {
    try {
      bytes = await readFile(pathOrBytes);
    } catch (e) {
      throw new Error(`${label}: ${(e as NodeJS.ErrnoException).code === "ENOENT" ? "no such file" : (e as Error).message}`);
    }
  } else bytes = pathOrBytes;
  let m: Record<string, unknown>;
  try {
    m = ModelProto.toObject(ModelProto.decode(bytes), { longs: Number, defaults: false, arrays: true }) as Record<string, unknown>;
  } catch (e) {
    throw new Error(`${label}: not an ONNX model (${(e as Error).message})`);
  }
  const g = m.graph as Record<string, unknown> | undefined;
  if (!g || !Array.isArray(g.node)) throw new Error(`${label}: not an ONNX model (no graph)`);
  const opsets = (m.opsetImport as { domain?: string; version?: number }[]) ?? [];
  const opset = Number(opsets.find((o) => !o.domain || o.domain === "ai.onnx")?.version ?? 0);
  if (opset < 13 || opset > 21) throw new Error(`${label}: opset ${opset} is not supported (bhsd runs opsets 13 to 21; re-export with opset_version=17)`);
  const initializers = new Map<string, OnnxTensor>();
  for (const t of (g.initializer as Record<string, unknown>[]) ?? []) initializers.set(String(t.name), tensorOf(t, label));
  const problems: string[] = [];
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
    if (n.domain && n.domain !== "ai.onnx") problems.push(`${where}: domain "${n.domain}" is not supported`);
    const allowed = SUPPORTED[opType];
    if (!allowed) problems.push(`${where}: op ${opType} is not supported`);
    else for (const a of Object.keys(attrs)) if (!allowed.includes(a)) problems.push(`${where}: attribute ${a} is not supported`);
    problems.push(...checkAttrs(opType, attrs, where));
    return { name, opType, inputs: ((n.input as string[]) ?? []).map(String), outputs: ((n.output as string[]) ?? []).map(String), attrs };
  });
  if (problems.length) throw new Error(`${label}: the engine cannot run this model:\n  ${problems.join("\n  ")}`);
  const inputs = ((g.input as Record<string, unknown>[]) ?? [])
    .filter((v) => !initializers.has(String(v.name)))
    .map((v) => {
      const dims = (((v.type as Record<string, Record<string, Record<string, unknown>>>)?.tensorType?.shape?.dim as Record<string, unknown>[]) ?? []).map((d) =>
        d.dimValue !== undefined ? Number(d.dimValue) : String(d.dimParam ?? "?"),
      );
      return { name: String(v.name), shape: dims };
    });
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

/** Attribute values the engine does not implement, refused at load. */
function checkAttrs(op: string, a: Record<string, Attr>, where: string): string[] {
  const p: string[] = [];
  const autoPad = a.auto_pad as string | undefined;
  if (autoPad !== undefined && autoPad !== "NOTSET" && autoPad !== "VALID") p.push(`${where}: attribute auto_pad = ${autoPad} is not supported (only NOTSET and VALID; export with explicit pads)`);
  const ks = a.kernel_shape as number[] | undefined;
  if (ks && ks.length !== 3 && ["Conv", "ConvTranspose", "MaxPool", "AveragePool"].includes(op)) p.push(`${where}: attribute kernel_shape has ${ks.length} axes; bhsd runs 3-D models`);
  if (op === "Resize") {
    const mode = (a.mode as string | undefined) ?? "nearest";
    if (mode !== "nearest" && mode !== "linear") p.push(`${where}: attribute mode = ${mode} is not supported (nearest, linear)`);
    const ctm = (a.coordinate_transformation_mode as string | undefined) ?? "half_pixel";
    if (!["half_pixel", "pytorch_half_pixel", "align_corners", "asymmetric"].includes(ctm)) p.push(`${where}: attribute coordinate_transformation_mode = ${ctm} is not supported`);
    if (a.antialias) p.push(`${where}: attribute antialias = 1 is not supported`);
    if (a.exclude_outside) p.push(`${where}: attribute exclude_outside = 1 is not supported`);
  }
  if (op === "ArgMax" && a.select_last_index) p.push(`${where}: attribute select_last_index = 1 is not supported`);
  if (op === "BatchNormalization" && a.training_mode) p.push(`${where}: attribute training_mode = 1 is not supported (inference only)`);
  if (op === "MaxPool" && a.storage_order) p.push(`${where}: attribute storage_order = 1 is not supported`);
  return p;
}

function topoSort(nodes: GraphNode[], known: Set<string>, label: string): GraphNode[] {
  const out: GraphNode[] = [];
  const have = new Set(known);
  have.add("");
  let pending = [...nodes];
  while (pending.length) {
    const next: GraphNode[] = [];
    for (const n of pending) {
      if (n.inputs.every((i) => have.has(i))) {
        out.push(n);
        n.outputs.forEach((o) => have.add(o));
      } else next.push(n);
    }
    if (next.length === pending.length) {
      const missing = next[0]!.inputs.filter((i) => !have.has(i));
      throw new Error(`${label}: node ${next[0]!.name} needs ${missing.join(", ")}, which nothing produces (a cycle or a missing input)`);
    }
    pending = next;
  }
  return out;
}

/** Fuses Relu/LeakyRelu into the Conv or InstanceNormalization before it when that is their only consumer. */
/** How many nodes read each value, a graph output counting as one more reader. */
function consumersOf(nodes: GraphNode[], graphOutputs: string[]): Map<string, number> {
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

export function fuseActivations(graph: Graph): GraphNode[] {
  const consumers = consumersOf(graph.nodes, graph.outputs);
  const producer = producersOf(graph.nodes);
  const drop = new Set<GraphNode>();
  // the graph's own nodes are left as they are: the fused ones are copies
  const fused = new Map<GraphNode, GraphNode>();
  for (const n of graph.nodes) {
    if (n.opType !== "Relu" && n.opType !== "LeakyRelu") continue;
    const p = producer.get(n.inputs[0]!);
    if (!p || (p.opType !== "Conv" && p.opType !== "InstanceNormalization") || p.fusedAct || fused.has(p) || consumers.get(n.inputs[0]!) !== 1) continue;
    fused.set(p, { ...p, fusedAct: { act: n.opType === "Relu" ? "relu" : "leakyRelu", alpha: n.opType === "LeakyRelu" ? ((n.attrs.alpha as number | undefined) ?? 0.01) : 0, output: n.outputs[0]! } });
    drop.add(n);
  }
  return graph.nodes.filter((n) => !drop.has(n)).map((n) => fused.get(n) ?? n);
}

/**
 * Fuses each InstanceNormalization (with its fused activation, if any) into the Conv whose output
 * it alone reads, for backends that normalise the convolution's output in place in the same call
 * (nodes from fuseActivations; the graph's own nodes are left as they are).
 */
export function fuseConvNorm(nodes: GraphNode[], graphOutputs: string[]): GraphNode[] {
  const consumers = consumersOf(nodes, graphOutputs);
  const producer = producersOf(nodes);
  const drop = new Set<GraphNode>();
  const fused = new Map<GraphNode, GraphNode>();
  for (const n of nodes) {
    if (n.opType !== "InstanceNormalization" || !n.inputs[1] || !n.inputs[2]) continue;
    const p = producer.get(n.inputs[0]!);
    if (!p || p.opType !== "Conv" || p.fusedAct || fused.has(p) || consumers.get(n.inputs[0]!) !== 1) continue;
    fused.set(p, {
      ...p,
      inputs: [p.inputs[0]!, p.inputs[1]!, p.inputs[2] ?? "", n.inputs[1], n.inputs[2]],
      fusedNorm: {
        name: n.name,
        eps: (n.attrs.epsilon as number | undefined) ?? 1e-5,
        ...(n.fusedAct ? { act: n.fusedAct.act } : {}),
        alpha: n.fusedAct?.alpha ?? 0,
        output: finalOutputs(n)[0]!,
      },
    });
    drop.add(n);
  }
  return nodes.filter((n) => !drop.has(n)).map((n) => fused.get(n) ?? n);
}
