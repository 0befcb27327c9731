/**
 * loadModel and the graph executor. The plan is made once at load: topological order, fused
 * activations, and for every value the number of nodes that read it. At run time each
 * intermediate goes back to a buffer pool after its last reader, and outputs are taken from that
 * pool, so a forward's peak is close to its largest live set; the run reports that peak.
 * A channel Concat whose inputs' channel counts are known at load (a U-Net's skip connections)
 * is planned in place: each input's producer writes straight into its slice of the Concat's
 * buffer, and the Concat itself copies nothing.
 */
import os from "node:os";
import { basename } from "node:path";
import { activeBackend, getBackend, releaseDerived, releaseEngineArray, withBackend } from "../backends/index.js";
import type { BackendName } from "../types.js";
import type { Backend } from "../backends/types.js";
import { withCancel } from "../backends/cancel.js";
import { checkPrecision, withPrecision, type Precision } from "../backends/precision.js";
import * as ops from "../ops/tensor.js";
import type { Tensor } from "../types.js";
import { allocArray } from "../volume.js";
import * as is from "../is.js";
import { readModelConfig, type ModelConfig } from "./config.js";
import {
  checkConstantInputs,
  finalOutputs,
  fuseActivations,
  fuseConvNorm,
  fuseConvNormResidual,
  fuseConvResidual,
  fuseGelu,
  fuseGroupNorm,
  sinkNearestUpsample,
  fuseLayerNorm,
  fuseChannelNorm,
  fuseMatMulBias,
  parseModel,
  type Graph,
  type GraphNode,
  type HeldWeights,
} from "./graph.js";
import { planConcats, type ConcatSlot } from "./concat-plan.js";
import { inferShapes } from "./infer.js";
import * as nd from "./nd.js";
import { constValue, preluPerChannel, runNode, shapeOf, type Value } from "./ops.js";
import { fuseAttention, joinQkvProjections } from "./attention.js";
import { Pool } from "./pool.js";

const prod = (xs: readonly number[]) => xs.reduce((a, b) => a * b, 1);

export interface RunStats {
  /** Largest sum of live intermediate buffers during the run (bytes). */
  peakBytes: number;
  ms: number;
  /** Milliseconds per op type. */
  opMs: Record<string, number>;
  /** Milliseconds per node, in the order they ran (a fused activation under its node's name). */
  nodeMs: { name: string; op: string; ms: number }[];
  /** Concats whose inputs were written in place (no copy). */
  concatsInPlace: number;
  /** Shape-glue nodes whose results came from an earlier run of the same input shapes. */
  shapeNodesCached: number;
  /** The shape of every value the run computed, by name (fused intermediates are not computed). */
  shapes: Map<string, number[]>;
}

/** The nodes a run walks, with what is planned from them once. */
interface Plan {
  nodes: GraphNode[];
  /** Readers of each value. */
  readers: Map<string, number>;
  /** Values written into their Concat's buffer (CPU backends), by value name. */
  concatSlots: ReadonlyMap<string, ConcatSlot>;
  /**
   * Nodes whose inputs follow from the graph inputs' shapes and the weights alone (Shape →
   * Gather → Unsqueeze → Concat → Reshape targets and the like): their integer results are kept
   * per set of input shapes and not recomputed on the next run of the same shapes (a sliding
   * window runs one shape hundreds of times).
   */
  shapeOnly: Set<GraphNode>;
}

export class Model {
  readonly name: string;
  readonly config: ModelConfig;
  readonly inputs: { name: string; shape: (number | string)[] }[];
  readonly outputs: string[];
  readonly opset: number;
  readonly producer: string;
  /** Bytes of the weights as loaded (float32 initializers), wherever the file kept them (inside it or in external data). */
  readonly weightBytes: number;
  /** Statistics of the last run. */
  lastRun: RunStats | undefined;
  /**
   * Every value's shape for the inputs' declared shapes, inferred at load (see infer.ts), by
   * value name; undefined when an input declares a symbolic dimension. Values that depend on
   * data or follow an op without a shape rule are absent.
   */
  valueShapes: ReadonlyMap<string, number[]> | undefined;
  /** The run's plan where the backend has the fused attention kernel (native), and where it has not. */
  private readonly fused: Plan;
  private readonly unfused: Plan;
  /** Whether the fused plan's attention rotates q and k (a kernel must take a rotary table). */
  private readonly fusedRope: boolean;
  private readonly consts = new Map<string, Value>();
  private readonly shapeCache = new Map<string, Map<GraphNode, Value[]>>();
  /**
   * The last run's intermediate buffers (CPU backends), for the next run of the same shapes — a
   * sliding window runs the model hundreds of times — instead of fresh allocations, whose page
   * faults cost more than some layers. Dropped after a second without a run.
   */
  private spare: Float32Array[] = [];
  private spareTimer: ReturnType<typeof setTimeout> | undefined;
  /** The weights' arrays (a GPU backend keeps them on the device while the model lives). */
  private readonly constArrays = new Set<Float32Array>();

  /** Bytes a run may hold in intermediates (loadModel's memoryLimit). */
  readonly memoryLimit: number;

  /** The backend this model runs on (loadModel's `backend`), or undefined: the active one at each run. */
  readonly backend: BackendName | undefined;
  private disposed = false;

  /** The arithmetic of this model's convolutions (loadModel's `precision`), or undefined: the backends' defaults. */
  readonly precision: Precision | undefined;

  constructor(
    graph: Graph,
    name: string,
    config: ModelConfig,
    memoryLimit = defaultMemoryLimit(),
    backend?: BackendName,
    precision?: Precision,
    valueShapes?: ReadonlyMap<string, number[]>,
  ) {
    this.name = name;
    this.memoryLimit = memoryLimit;
    this.backend = backend;
    this.precision = precision;
    this.config = config;
    this.inputs = graph.inputs;
    this.outputs = graph.outputs;
    this.opset = graph.opset;
    this.producer = graph.producer;
    // (a 1×1 convolution after a nearest-neighbour up-sampling runs before it: a value of its own)
    const shapes = valueShapes ? new Map(valueShapes) : undefined;
    graph.nodes = sinkNearestUpsample(graph.nodes, graph.outputs, graph.initializers, shapes);
    this.valueShapes = shapes;
    // (an export's q, k and v projected apart: one projection, as fuseAttention reads it)
    joinQkvProjections(graph, shapes);
    let weights = 0;
    for (const t of graph.initializers.values()) weights += t.f32 ? t.f32.byteLength : (t.ints?.length ?? 0) * 8;
    this.weightBytes = weights;
    const grouped = fuseMatMulBias(
      fuseChannelNorm(
        fuseLayerNorm(
          fuseGelu(fuseGroupNorm(graph.nodes, graph.outputs, graph.initializers, shapes), graph.outputs, graph.initializers),
          graph.outputs,
          graph.initializers,
        ),
        graph.outputs,
        graph.initializers,
      ),
      graph.outputs,
      graph.initializers,
    );
    const attended = fuseAttention(grouped, graph.outputs, graph.initializers, graph.opset);
    for (const [k, t] of graph.initializers) this.consts.set(k, constValue(t));
    for (const v of this.consts.values()) {
      if (!("f" in v)) continue;
      this.constArrays.add(v.f.data);
    }
    const plan = (nodes: GraphNode[]): Plan => {
      const out: Plan = {
        nodes: fuseConvResidual(
          fuseConvNormResidual(
            fuseConvNorm(fuseActivations({ ...graph, nodes }), graph.outputs, new Set(graph.initializers.keys())),
            graph.outputs,
          ),
          graph.outputs,
        ),
        readers: new Map(),
        concatSlots: new Map(),
        shapeOnly: new Set(),
      };
      for (const n of out.nodes) for (const i of n.inputs) if (i) out.readers.set(i, (out.readers.get(i) ?? 0) + 1);
      out.concatSlots = planConcats(out.nodes, graph, this.outputs);
      const fixed = new Set<string>(this.consts.keys());
      for (const n of out.nodes) {
        // a Shape reads only its input's shape; other nodes qualify when all they read is fixed
        if (n.opType === "Shape" || (n.inputs.length > 0 && n.inputs.every((i) => !i || fixed.has(i)))) {
          out.shapeOnly.add(n);
          for (const o of finalOutputs(n)) fixed.add(o);
        }
      }
      return out;
    };
    // a backend without the fused attention kernel runs the nodes it replaced, planned as any graph
    this.fused = plan(attended);
    this.unfused = attended === grouped ? this.fused : plan(grouped);
    this.fusedRope = attended.some((n) => !!n.attention?.rope);
  }

  /** Runs the graph on its one input and returns its first output. */
  async run(input: Tensor, options?: { signal?: AbortSignal }): Promise<Tensor> {
    if (this.inputs.length !== 1) throw new Error(`${this.name} has ${this.inputs.length} inputs; use runAll`);
    const out = await this.runAll({ [this.inputs[0]!.name]: input }, options);
    return out[this.outputs[0]!]!;
  }

  /**
   * Runs the graph on named inputs; returns every graph output. On a GPU backend the whole run
   * stays on the device: only the inputs go up and the outputs come down.
   */
  async runAll(feeds: Record<string, Tensor>, options?: { signal?: AbortSignal }): Promise<Record<string, Tensor>> {
    // signal: see runOn
    if (this.disposed) throw new Error(`model ${this.name} was disposed`);
    if (this.backend) {
      const bound = getBackend(this.backend);
      return withPrecision(this.precision, () => withBackend(bound, () => this.runOn(bound, feeds, options)));
    }
    // the whole run on the backend active now (its plan is chosen for it), whatever setBackend does meanwhile
    const be = activeBackend();
    return withPrecision(this.precision, () => withBackend(be, () => this.runOn(be, feeds, options)));
  }

  /**
   * @internal For segment(): an output array of this model's last run that the caller has done
   * with, handed back for the next run's buffer pool (a sliding window would otherwise take a
   * fresh 25 MB output a window: first-touch page faults, 47 ms of them at a cold hour here).
   * Ignored for the model's own weights, an array already held, or a disposed model.
   */
  recycle(a: Float32Array): void {
    if (this.disposed || this.constArrays.has(a) || this.spare.includes(a)) return;
    this.spare.push(a);
  }

  /**
   * Releases the model's weights, their packed copies (native) or device copies (cuda) and its
   * spare buffers now, not when garbage collection gets to them; the model cannot run again.
   */
  dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    clearTimeout(this.spareTimer);
    const weights = [...this.constArrays];
    releaseDerived(weights);
    // engine memory (weights, spare buffers) goes back at once: detached, it is nobody's
    for (const a of [...weights, ...this.spare]) releaseEngineArray(a);
    this.spare = [];
    this.constArrays.clear();
    this.consts.clear();
  }

  /** `await using model = await loadModel(…)`: disposed when the block ends (Node ≥ 20.4's symbol). */
  async [Symbol.asyncDispose](): Promise<void> {
    this.dispose();
  }
  /** `using model = …` in a synchronous block. */
  [Symbol.dispose](): void {
    this.dispose();
  }

  private async runOn(be: Backend, feeds: Record<string, Tensor>, options?: { signal?: AbortSignal }): Promise<Record<string, Tensor>> {
    const signal = options?.signal;
    // the signal reaches into native calls (a layer in flight stops at its next chunk), and is checked between nodes
    if (!be.residentRun) return withCancel(be, signal, () => this.runGraph(feeds, be, signal));
    return be.residentRun(() => withCancel(be, signal, () => this.runGraph(feeds, be, signal)), {
      constants: this.constArrays,
      outputs: (r) => Object.values(r).map((t) => t.data),
    });
  }

  private async runGraph(feeds: Record<string, Tensor>, be: Backend, signal?: AbortSignal): Promise<Record<string, Tensor>> {
    const t0 = performance.now();
    const plan = be.attention && (!this.fusedRope || be.attentionRope) ? this.fused : this.unfused;
    const env = new Map<string, Value>(this.consts);
    for (const i of this.inputs) {
      const t = feeds[i.name];
      ops.assertTensor(`inputs.${i.name}`, t);
      if (t.shape.length !== i.shape.length || i.shape.some((d, k) => typeof d === "number" && d !== t.shape[k])) {
        throw new RangeError(`input ${i.name} has shape [${t.shape.join(", ")}] but the model expects [${i.shape.join(", ")}]`);
      }
      env.set(i.name, { f: t });
    }
    be.constants?.(this.constArrays);
    const pool = new Pool(this.memoryLimit);
    if (!be.forget) for (const a of this.spare.splice(0)) pool.stock(a);
    else if (this.spare.length) be.forget(this.spare.splice(0)); // (recycled outputs: their device copies go now)
    const pooled = new Set<Float32Array>(); // buffers owned by the pool
    const refs = new Map<Float32Array, number>(); // live values per buffer (views share one)
    const baseOf = new Map<Float32Array, Float32Array>(); // a slice of a Concat's buffer → that buffer
    const concatBuf = new Map<string, Float32Array>(); // Concat output → its buffer, once taken
    const base = (a: Float32Array) => baseOf.get(a) ?? a;
    const left = new Map(plan.readers);
    const keep = new Set(this.outputs);
    // (a GPU backend, which mirrors each array on its device and frees the mirrors of the buffers
    // the pool returns at the end, takes buffers of their own length: a view's mirror would stay)
    const fit = !be.forget;
    const alloc = (shape: number[]): Tensor => {
      const data = pool.take(prod(shape), fit);
      pooled.add(data);
      return { data, shape };
    };
    // the n-d functions' float results (Transpose, Gather, Softmax over an axis, …) come from the
    // pool too; what a node took but does not return (an Einsum's transposed operand, the first
    // sum of a three-input Sum) goes back once the node is done
    const taken: Float32Array[] = [];
    const budget: nd.Budget = {
      check: (bytes, what) => pool.check(bytes, what),
      take: (n) => {
        const data = pool.take(n, fit);
        pooled.add(data);
        taken.push(data);
        // written in JavaScript now: a GPU backend's copy of this buffer from an earlier use is stale
        // (an Einsum's transposed operand is never a node's result, which hostWrote sees below)
        be.hostWrote?.([data]);
        return data;
      },
    };
    const giveBackUnused = (results: Value[]) => {
      if (taken.length === 0) return;
      const used = new Set(results.flatMap((v) => ("f" in v ? [v.f.data.buffer] : [])));
      for (const t of taken.splice(0))
        if (!used.has(t.buffer)) {
          pooled.delete(t);
          pool.give(t);
        }
    };
    // a run's outputs get buffers of their own length: a view of a longer one would keep all of it
    // alive for as long as the caller keeps the result
    const allocOut = (shape: number[]): Tensor => {
      const data = pool.take(prod(shape), false);
      pooled.add(data);
      return { data, shape };
    };
    // A value with a Concat slot is written into its slice of the Concat's buffer (batch 1, the
    // channels planned; anything else gets a buffer of its own and the Concat copies as usual).
    const inPlace = !be.residentRun;
    const slotAlloc =
      (slot: ConcatSlot) =>
      (shape: number[]): Tensor => {
        const S = prod(shape.slice(2));
        let buf = concatBuf.get(slot.concat);
        // (axis 1 of any rank from 3 on; axis −4 only of rank 5, where it is the channel axis)
        const rankOk = slot.rank === undefined ? shape.length >= 3 : shape.length === slot.rank;
        if (!rankOk || shape[0] !== 1 || shape[1] !== slot.c || (buf && buf.length !== slot.cTotal * S)) return alloc(shape);
        if (!buf) {
          buf = pool.take(slot.cTotal * S, fit);
          pooled.add(buf);
          concatBuf.set(slot.concat, buf);
        }
        const data = buf.subarray(slot.c0 * S, (slot.c0 + slot.c) * S);
        baseOf.set(data, buf);
        return { data, shape };
      };
    // The Concat's result when every input already lies in its slice of the buffer.
    const concatDone = (n: GraphNode, args: (Value | undefined)[]): Value | undefined => {
      const buf = concatBuf.get(n.outputs[0]!);
      if (!buf) return undefined;
      let shape: number[] | undefined;
      for (const [k, v] of args.entries()) {
        const slot = plan.concatSlots.get(n.inputs[k]!);
        if (!v || !("f" in v) || !slot || baseOf.get(v.f.data) !== buf) return undefined;
        const S = prod(v.f.shape.slice(2));
        if (v.f.data.byteOffset !== buf.byteOffset + slot.c0 * S * 4 || v.f.data.length !== slot.c * S) return undefined;
        // every input of the same rank and spatial shape, its channels those planned (else the
        // Concat as it was: it checks and says what does not fit)
        if (v.f.shape[0] !== 1 || v.f.shape[1] !== slot.c || (slot.rank !== undefined && v.f.shape.length !== slot.rank)) return undefined;
        if (shape && (v.f.shape.length !== shape.length || v.f.shape.some((d, i) => i > 1 && d !== shape![i]))) return undefined;
        shape ??= [1, slot.cTotal, ...v.f.shape.slice(2)];
      }
      return shape && { f: { data: buf, shape } };
    };
    let concatsInPlace = 0;
    const bind = (name: string, v: Value) => {
      env.set(name, v);
      if ("f" in v) refs.set(base(v.f.data), (refs.get(base(v.f.data)) ?? 0) + 1);
    };
    const release = (name: string) => {
      const v = env.get(name);
      if (!v || this.consts.has(name) || keep.has(name)) return;
      env.delete(name);
      if (!("f" in v)) return;
      const b = base(v.f.data);
      const r = (refs.get(b) ?? 1) - 1;
      if (r > 0) return void refs.set(b, r);
      refs.delete(b);
      if (
        pooled.has(b) &&
        ![...keep].some((k) => {
          const d = (env.get(k) as { f?: Tensor } | undefined)?.f?.data;
          return d && base(d) === b;
        })
      ) {
        pooled.delete(b);
        pool.give(b);
        for (const [c, cb] of concatBuf) if (cb === b) concatBuf.delete(c);
      }
    };
    // binds a node's results and releases what it was the last reader of
    const settle = (n: GraphNode, results: Value[]) => {
      const outNames = finalOutputs(n);
      results.forEach((v, k) => outNames[k] && bind(outNames[k]!, v));
      for (const i of n.inputs) {
        if (!i) continue;
        const l = (left.get(i) ?? 0) - 1;
        left.set(i, l);
        if (l <= 0) release(i);
      }
      for (const o of outNames) if (!left.has(o) && !keep.has(o)) release(o); // read by nobody
    };
    const opMs: Record<string, number> = {};
    const nodeMs: RunStats["nodeMs"] = [];
    const shapeKey = JSON.stringify(this.inputs.map((i) => feeds[i.name]!.shape));
    let cached = this.shapeCache.get(shapeKey);
    if (!cached) {
      if (this.shapeCache.size >= 8) this.shapeCache.delete(this.shapeCache.keys().next().value!); // the oldest shapes go
      this.shapeCache.set(shapeKey, (cached = new Map()));
    }
    let shapeNodesCached = 0;
    const shapes = new Map<string, number[]>();
    for (const n of plan.nodes) {
      signal?.throwIfAborted();
      const args = n.inputs.map((i) => (i ? env.get(i) : undefined));
      let results: Value[];
      const tn = performance.now();
      const hit = plan.shapeOnly.has(n) ? cached.get(n) : undefined;
      if (hit) {
        shapeNodesCached++;
        settle(n, hit);
        continue;
      }
      // Nodes that touch float data in JS, not through the backend, see current host copies.
      // (a PRelu whose slope broadcasts otherwise than per channel runs in JavaScript)
      const viaBackend =
        BACKEND_ONLY.has(n.opType) &&
        !(n.opType === "PRelu" && args[0] && args[1] && "f" in args[0] && "f" in args[1] && !preluPerChannel(args[0].f.shape, args[1].f));
      try {
        if (be.hostRead) {
          const floats = args.flatMap((v) => (v && "f" in v ? [v.f.data] : []));
          await be.hostRead(viaBackend ? floats.filter((a) => a.length <= 64) : floats);
        }
        const slot = inPlace ? plan.concatSlots.get(finalOutputs(n)[0]!) : undefined;
        const done = inPlace && n.opType === "Concat" ? concatDone(n, args) : undefined;
        if (done) concatsInPlace++;
        const outs = finalOutputs(n).some((o) => keep.has(o));
        taken.length = 0;
        const nodeAlloc = slot ? slotAlloc(slot) : outs ? allocOut : alloc;
        // A node that is not backend-only may still write its result through the backend (Gelu's
        // kernel, a LayerNormalization's group norm): on a GPU that result lies on the device. Each
        // buffer it is handed drops a stale device copy from an earlier use, and after the node what
        // the backend wrote comes to the host before the host copy is declared the current one
        // (declared so at once, the device's result was dropped unread).
        const handOut =
          !viaBackend && be.hostWrote
            ? (shape: number[]): Tensor => {
                const t = nodeAlloc(shape);
                be.hostWrote!([t.data]);
                return t;
              }
            : nodeAlloc;
        results = done ? [done] : await runNode(n, args, handOut, budget, this.opset);
        giveBackUnused(results);
        if (be.hostWrote && !viaBackend) {
          const written = results.flatMap((v) => ("f" in v ? [v.f.data] : []));
          if (be.hostRead) await be.hostRead(written);
          be.hostWrote(written);
        }
      } catch (e) {
        throw new Error(`node ${n.name} (${n.opType}): ${(e as Error).message}`, { cause: e });
      }
      const key = n.fusedNorm
        ? `${n.opType}+${n.fusedNorm.groups !== undefined ? "GroupNormalization" : "InstanceNormalization"}${n.fusedNorm.residual ? "+Add" : ""}${n.fusedNorm.act ? `+${n.fusedNorm.act}` : ""}`
        : n.fusedAdd
          ? `${n.opType}+Add${n.fusedAdd.act ? `+${n.fusedAdd.act}` : ""}`
          : n.fusedAct
            ? `${n.opType}+${n.fusedAct.act}`
            : n.opType;
      const ms = performance.now() - tn;
      opMs[key] = (opMs[key] ?? 0) + ms;
      nodeMs.push({ name: n.name, op: key, ms });
      // integer results of shape-only nodes are kept for the next run of these shapes (float ones
      // may live in the buffer pool, which hands them out again)
      if (plan.shapeOnly.has(n) && results.every((v) => "ints" in v)) cached.set(n, results);
      finalOutputs(n).forEach((o, k) => results[k] && shapes.set(o, shapeOf(results[k]!)));
      settle(n, results);
    }
    const out: Record<string, Tensor> = {};
    const owned = new Map<Float32Array, Float32Array>(); // (two outputs may be one array)
    for (const o of this.outputs) {
      const v = env.get(o);
      if (!v) throw new Error(`output ${o} was not computed`);
      if (!("f" in v)) {
        out[o] = { data: Float32Array.from(v.ints), shape: v.shape };
        continue;
      }
      let data = owned.get(v.f.data);
      if (!data) owned.set(v.f.data, (data = pooled.has(v.f.data) ? pool.own(v.f.data) : v.f.data));
      out[o] = data === v.f.data ? v.f : { data, shape: v.f.shape };
    }
    if (be.forget)
      be.forget(pool.drain()); // a GPU backend frees their device copies now
    else {
      this.spare = pool.drain();
      clearTimeout(this.spareTimer);
      this.spareTimer = setTimeout(() => (this.spare = []), 1000);
      this.spareTimer.unref?.();
    }
    this.lastRun = { peakBytes: pool.peakBytes, ms: performance.now() - t0, opMs, nodeMs, concatsInPlace, shapeNodesCached, shapes };
    return out;
  }
}

/** Ops whose float tensors pass only through backend calls (or are views: Reshape and the like). */
const BACKEND_ONLY = new Set([
  "Conv",
  "ConvTranspose",
  "InstanceNormalization",
  "GroupNormalization",
  "BatchNormalization",
  "Relu",
  "LeakyRelu",
  "Sigmoid",
  "PRelu",
  "Add",
  "Mul",
  "Concat",
  "MaxPool",
  "AveragePool",
  "Resize",
  "Softmax",
  "Identity",
  "Dropout",
  "Unsqueeze",
  "Squeeze",
  "Reshape",
  "Flatten",
]);

/**
 * Loads an ONNX model (path or bytes). The config comes from the argument, else a JSON sidecar
 * beside the file (`<model>.json`), else nnU-Net's plans.json/dataset.json beside it, else the
 * model's metadata_props, else defaults. A model the engine cannot run fails here. Besides the
 * model's configuration (see ModelConfig), `config` takes
 * plus `memoryLimit` (bytes a run may hold in intermediates; default half the RAM, at most 8 GiB)
 * and `backend` (run this model on that backend whatever the global choice, like an onnxruntime
 * session's execution provider) and `inputShapes` (input name → the shape it will be run at,
 * filling the model's symbolic dimensions for shape inference at load: see Model.valueShapes)
 * and `precision` ("fp32", "tf32", "fp16" or "bf16": the arithmetic of this model's convolutions
 * whatever setCudaPrecision/setCpuPrecision say; the CPU backends run "bf16" in bf16 where the
 * processor has AVX512_BF16 and the others in fp32 — see backends/precision.ts).
 */
export async function loadModel(
  onnxPathOrBytes: string | Uint8Array,
  config?: Partial<ModelConfig> & {
    memoryLimit?: number;
    backend?: BackendName;
    inputShapes?: Record<string, number[]>;
    precision?: Precision;
    /**
     * A model handed over as bytes whose tensors live in external files: each file's bytes by
     * the location the model names (`{ "model.onnx.data": bytes }`). A model loaded from a path
     * reads them from beside it.
     */
    externalData?: Record<string, Uint8Array>;
  },
): Promise<Model> {
  return load(onnxPathOrBytes, config);
}

/**
 * loadModel for a graph whose float weights the caller holds in arrays of its own (loadNnunet's
 * checkpoint tensors): they become the model's weights as they are, with no copy and no encoding
 * into the model's bytes; the model owns them from then on (disposing it detaches their buffers:
 * hand over arrays of their own, never views of a buffer something else uses). A failed load
 * leaves them to the caller, but may already have given back (detached) some of them.
 */
export async function loadModelWithWeights(
  bytes: Uint8Array,
  weights: HeldWeights,
  config?: Parameters<typeof loadModel>[1],
): Promise<Model> {
  return load(bytes, config, weights);
}

async function load(onnxPathOrBytes: string | Uint8Array, config: Parameters<typeof loadModel>[1], weights?: HeldWeights): Promise<Model> {
  if (typeof onnxPathOrBytes !== "string" && !(onnxPathOrBytes instanceof Uint8Array)) {
    throw new TypeError(
      `Expected a file path or the model's bytes (Uint8Array) for onnxPathOrBytes but received ${typeof onnxPathOrBytes}`,
    );
  }
  const { memoryLimit, backend, inputShapes, precision, externalData, ...rest } = config ?? {};
  checkPrecision(precision, "config.precision");
  checkExternalData(externalData);
  if (memoryLimit !== undefined && !(typeof memoryLimit === "number" && memoryLimit > 0)) {
    throw new RangeError(`Expected a positive number of bytes for config.memoryLimit but received ${JSON.stringify(memoryLimit)}`);
  }
  if (backend !== undefined) getBackend(backend); // names the argument and says why when it is not available
  const graph = await parseModel(onnxPathOrBytes, externalData, weights);
  const name = typeof onnxPathOrBytes === "string" ? basename(onnxPathOrBytes).replace(/\.onnx$/i, "") : (graph.metadata.name ?? "model");
  const cfg = await readModelConfig(
    typeof onnxPathOrBytes === "string" ? onnxPathOrBytes : null,
    graph.metadata,
    Object.keys(rest).length ? rest : undefined,
    graph.inputs[0]?.shape, // (four axes: a 2-D model, run a slice at a time)
  ); // memoryLimit/backend/inputShapes/precision alone keep the sidecar's config
  const limit = memoryLimit ?? defaultMemoryLimit();
  await foldConstants(graph, limit);
  checkConstantInputs(graph.nodes, graph.initializers, typeof onnxPathOrBytes === "string" ? onnxPathOrBytes : "<model bytes>");
  const budget: nd.Budget = {
    check: (bytes, what) => {
      if (bytes > limit) throw new RangeError(`${what}: shape inference needs more than the model's memoryLimit`);
    },
  };
  const small = (shape: number[]): Tensor => ({ data: allocArray("float32", prod(shape), "inferred constant") as Float32Array, shape });
  const inferred = shapesToInfer(graph.inputs, inputShapes);
  const values = new Map<string, Value>();
  const valueShapes = await inferShapes(
    graph.nodes,
    graph.initializers,
    inferred,
    graph.opset,
    (n, args) => runNode(n, args, small, budget, graph.opset),
    constValue,
    values,
  );
  if (valueShapes && foldShapes(graph, values)) {
    // what the input shapes make constant is constant now: the model runs at those shapes only
    // (and what would not fit in memoryLimit as a constant stays a node)
    graph.inputs = inferred;
    await foldConstants(graph, limit, true);
  }
  return new Model(graph, name, cfg, limit, backend, precision, valueShapes);
}

function checkExternalData(files: unknown): void {
  if (files === undefined) return;
  if (!is.plainObject(files)) throw is.invalidParameterError("config.externalData", "an object of file name → bytes", files);
  for (const [k, v] of Object.entries(files))
    if (!(v instanceof Uint8Array))
      throw is.invalidParameterError(`config.externalData[${JSON.stringify(k)}]`, "the file's bytes (a Uint8Array)", v);
}

/**
 * The input shapes shape inference works from: the declared ones, with `given` (loadModel's
 * `inputShapes`, like onnxruntime's free dimension overrides) filling symbolic dimensions.
 */
function shapesToInfer(declared: Graph["inputs"], given: Record<string, number[]> | undefined): Graph["inputs"] {
  if (given === undefined) return declared;
  if (typeof given !== "object" || given === null || Array.isArray(given))
    throw new TypeError(`Expected an object of input name → shape for config.inputShapes but received ${is.brief(given)}`);
  for (const k of Object.keys(given))
    if (!declared.some((i) => i.name === k))
      throw new RangeError(
        `config.inputShapes names ${JSON.stringify(k)}, which is not an input of the model (inputs: ${declared.map((i) => i.name).join(", ")})`,
      );
  return declared.map((i) => {
    const s = given[i.name];
    if (s === undefined) return i;
    if (!Array.isArray(s) || s.length !== i.shape.length || !s.every((d) => Number.isSafeInteger(d) && d >= 1 && d <= 1 << 24)) {
      throw new RangeError(
        `Expected config.inputShapes.${i.name} to be ${i.shape.length} positive integers (the model declares [${i.shape}]) but received ${is.brief(s)}`,
      );
    }
    i.shape.forEach((d, k) => {
      if (typeof d === "number" && d !== s[k])
        throw new RangeError(`config.inputShapes.${i.name} is [${s}] but the model declares [${i.shape}] (axis ${k} is ${d})`);
    });
    return { name: i.name, shape: [...s] };
  });
}

/** Half the machine's memory, at most 8 GiB: what one model run may hold unless told otherwise. */
export function defaultMemoryLimit(): number {
  return Math.min(os.totalmem() / 2, 8 * 2 ** 30);
}

const FOLD_LIMIT = "folding constants needs more than the model's memoryLimit";

/**
 * Makes initializers of the values shape inference computed (exporters' shape glue — Shape →
 * Gather → Concat → a Reshape's target — and what follows from it, e.g. a window mask's indices)
 * and drops the nodes that made them, where the inputs' shapes are fixed: the Reshapes and
 * additions fusions look for then read constants (a torch.onnx export of SwinUNETR computes its
 * attention's shapes, relative position indices and masks from Shape nodes). Returns whether any
 * node went; foldConstants then folds what these made constant.
 */
function foldShapes(graph: Graph, values: ReadonlyMap<string, Value>): boolean {
  const outputs = new Set(graph.outputs);
  const before = graph.nodes.length;
  graph.nodes = graph.nodes.filter((n) => {
    const outs = n.outputs.filter(Boolean);
    if (outs.length === 0 || !outs.every((o) => values.has(o) && !outputs.has(o))) return true;
    for (const o of outs) {
      const v = values.get(o)!;
      graph.initializers.set(o, "f" in v ? { dims: v.f.shape, dataType: 1, f32: v.f.data } : { dims: v.shape, dataType: 7, ints: v.ints });
    }
    return false;
  });
  return graph.nodes.length < before;
}

/**
 * Runs, once at load, every node whose inputs are all constants (Constant nodes, shape glue on
 * weights, a norm's scale made by a Constant …) and makes its results initializers: the run does
 * less, and fusions see the weights they need. Results are bounded by `limit`; `lenient` (the
 * pass after foldShapes): a node whose results would pass it stays a node instead of failing the load.
 */
async function foldConstants(graph: Graph, limit: number, lenient = false): Promise<void> {
  const known = new Map<string, Value>();
  for (const [k, t] of graph.initializers) known.set(k, constValue(t));
  let held = 0;
  const budget: nd.Budget = {
    check: (bytes, what) => {
      if (held + bytes > limit) throw new RangeError(`${what}: ${FOLD_LIMIT}`);
    },
  };
  const alloc = (shape: number[]): Tensor => {
    budget.check(prod(shape) * 4, "a folded constant");
    return { data: allocArray("float32", prod(shape), "folded constant") as Float32Array, shape };
  };
  const keep: GraphNode[] = [];
  const folded = new Set<string>();
  for (const n of graph.nodes) {
    const foldable =
      n.inputs.every((i) => !i || known.has(i)) && !graph.outputs.some((o) => n.outputs.includes(o)) && n.opType !== "Dropout";
    if (!foldable) {
      keep.push(n);
      continue;
    }
    let results: Value[];
    try {
      results = await runNode(
        n,
        n.inputs.map((i) => (i ? known.get(i) : undefined)),
        alloc,
        budget,
        graph.opset,
      );
    } catch (e) {
      if (lenient && e instanceof RangeError && e.message.includes(FOLD_LIMIT)) {
        keep.push(n);
        continue;
      }
      throw new Error(`node ${n.name} (${n.opType}): ${(e as Error).message}`, { cause: e });
    }
    results.forEach((v, k) => {
      const o = n.outputs[k];
      if (!o) return;
      known.set(o, v);
      folded.add(o);
      held += "f" in v ? v.f.data.byteLength : v.ints.length * 8; // (integers: numbers on V8's heap)
      graph.initializers.set(o, "f" in v ? { dims: v.f.shape, dataType: 1, f32: v.f.data } : { dims: v.shape, dataType: 7, ints: v.ints });
    });
  }
  graph.nodes = keep;
  // integer constants nothing reads any more (a quantized model's weights, now float) are let go
  const read = new Set([...keep.flatMap((n) => n.inputs), ...graph.outputs]);
  for (const [k, t] of graph.initializers) if (t.ints && !read.has(k)) graph.initializers.delete(k);
  // and so are folded results only other folded nodes read (SwinUNETR's attention mask is four
  // steps over 161 MB at a 96³ window: only the last is kept), their memory back to the engine
  // unless a kept constant is a view of it
  const kept = new Set<ArrayBufferLike>();
  for (const [k, t] of graph.initializers) if (t.f32 && (read.has(k) || !folded.has(k))) kept.add(t.f32.buffer);
  for (const k of folded) {
    const t = graph.initializers.get(k);
    if (!t || read.has(k)) continue;
    graph.initializers.delete(k);
    if (t.f32 && !kept.has(t.f32.buffer)) {
      kept.add(t.f32.buffer); // (released once)
      releaseEngineArray(t.f32);
    }
  }
}
