/**
 * A PyTorch state_dict turned into an engine model: its tensors matched to a rebuilt network's
 * parameters name by name and shape by shape (nnU-Net's and MONAI's networks), then read into
 * engine memory and run as an in-memory ONNX graph, so that the executor's fusions and every
 * backend apply.
 */
import { releaseEngineArray } from "../backends/index.js";
import type { HeldWeights } from "./graph.js";
import { loadModelWithWeights, type Model } from "./model.js";
import { CheckpointError, TensorRef, typeName, type Checkpoint } from "./nnunet/checkpoint.js";
import type { GraphNodeSpec, Param } from "./nnunet/network.js";
import { encodeModel } from "./onnx-proto.js";

/** The parts of a rebuilt network the weights are matched to and the graph is made of. */
export interface StateDictNetwork {
  params: Param[];
  /** Values the checkpoint does not hold: float ones, and int64 shapes and indices. */
  constants: { name: string; dims: number[]; data: Float32Array | BigInt64Array }[];
  /** state_dict keys that may be present but are not read. */
  unused: string[];
  nodes: GraphNodeSpec[];
  input: string;
  output: string;
}

export interface StateDictOptions {
  /** The network's class, in messages. */
  cls: string;
  where: string;
  /** What describes the network, in messages: "plans.json", "network_def". */
  describedBy: string;
  /** Whose network it is in a shape error: "the plans'", "the network_def's". */
  owner: string;
  /** The dict's name in messages: "network_weights", "state_dict". */
  dictName: string;
}

/** Checks the state_dict against the network's parameters; returns, per parameter, the tensor to read. */
export function matchWeights(
  weights: Map<unknown, unknown>,
  net: Pick<StateDictNetwork, "params" | "unused">,
  o: StateDictOptions,
): TensorRef[] {
  const { where, dictName, cls } = o;
  const known = new Map<string, number>();
  net.params.forEach((p, i) => p.names.forEach((n) => known.set(n, i)));
  for (const n of net.unused) known.set(n, -1);
  const unexpected: string[] = [];
  for (const k of weights.keys()) if (typeof k !== "string" || !known.has(k)) unexpected.push(String(k));
  const missing: string[] = [];
  const refs: TensorRef[] = [];
  for (const p of net.params) {
    const present = p.names.filter((n) => weights.has(n));
    if (!present.length) {
      missing.push(`${p.names[0]} [${p.shape.join(", ")}]`);
      continue;
    }
    let first: TensorRef | undefined;
    for (const n of present) {
      const t = weights.get(n);
      if (!(t instanceof TensorRef)) throw new CheckpointError(`${where}: ${dictName}["${n}"] is ${typeName(t)}, not a tensor`);
      if (t.shape.length !== p.shape.length || t.shape.some((d, i) => d !== p.shape[i]))
        throw new CheckpointError(
          `${where}: ${dictName}["${n}"] has shape [${t.shape.join(", ")}]; ${o.owner} ${cls} needs [${p.shape.join(", ")}]`,
        );
      if (!first) first = t;
      else if (t.storage !== first.storage || t.offset !== first.offset || t.stride.join() !== first.stride.join())
        throw new CheckpointError(`${where}: ${dictName}["${n}"] and ["${present[0]}"] name one parameter but hold different tensors`);
    }
    refs.push(first!);
  }
  if (missing.length || unexpected.length) {
    const list = (xs: string[]) => xs.slice(0, 6).join(", ") + (xs.length > 6 ? `, … (${xs.length} in all)` : "");
    const parts = [];
    if (missing.length) parts.push(`missing ${list(missing)}`);
    if (unexpected.length) parts.push(`unexpected ${list(unexpected)}`);
    throw new CheckpointError(`${where}: ${dictName} do not match the ${cls} that ${o.describedBy} describes: ${parts.join("; ")}`);
  }
  return refs;
}

/** A row-major [r, c] matrix transposed in place (through a copy); its new dims [c, r]. */
function transpose2d(data: Float32Array, shape: number[]): number[] {
  const [r, c] = shape as [number, number];
  const src = data.slice();
  for (let i = 0; i < r; i++) for (let j = 0; j < c; j++) data[j * r + i] = src[i * c + j]!;
  return [c, r];
}

/**
 * The model: the checkpoint's tensors, matched to the network, become its weights as read (engine
 * memory, no copy); the network's constants go into the encoded graph. Closes the checkpoint.
 */
export async function modelFromStateDict(
  ck: Checkpoint,
  weights: Map<unknown, unknown>,
  net: StateDictNetwork,
  o: StateDictOptions & {
    inputShape: (number | string)[];
    producer: string;
    opset: number;
    /** The model's name (its ONNX metadata's). */
    name?: string;
    config: Parameters<typeof loadModelWithWeights>[2];
  },
): Promise<Model> {
  const tensors: HeldWeights = [];
  try {
    const refs = matchWeights(weights, net, o);
    for (const [k, p] of net.params.entries()) {
      const data = await ck.readFloat32(refs[k]!, p.names[0]!);
      tensors.push({ name: p.names[0]!, dims: p.transposed ? transpose2d(data, p.shape) : p.shape, data });
    }
    ck.close();
    const small = encodeModel({
      opset: o.opset,
      producer: o.producer,
      nodes: net.nodes,
      inputs: [{ name: net.input, shape: o.inputShape }],
      outputs: [{ name: net.output }],
      initializers: net.constants,
      ...(o.name !== undefined ? { metadata: { name: o.name } } : {}),
    });
    return await loadModelWithWeights(small, tensors, o.config);
  } catch (e) {
    // no model holds them: back to the engine now (what a failed parse gave back already reads as empty)
    for (const w of tensors) releaseEngineArray(w.data);
    throw e;
  } finally {
    ck.close();
  }
}
