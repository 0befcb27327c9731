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
import * as ops from "../ops/tensor.js";
import type { Tensor } from "../types.js";
import { allocArray } from "../volume.js";
import { readModelConfig, type ModelConfig } from "./config.js";
import { CAST_FLOAT, checkConstantInputs, finalOutputs, fuseActivations, fuseConvNorm, fuseGroupNorm, parseModel, producersOf, type Attr, type Graph, type GraphNode, type OnnxTensor } from "./graph.js";
import { inferShapes, reshapeShape, squeezeShape } from "./infer.js";
import * as nd from "./nd.js";

/** A value in the graph: a float tensor, or a small integer tensor of shape glue. */
export type Value = { f: Tensor } | { ints: number[]; shape: number[] };

const prod = (xs: readonly number[]) => xs.reduce((a, b) => a * b, 1);

/** Float32 buffers by length, handed out again after their last reader. */
class Pool {
  private free = new Map<number, Float32Array[]>();
  liveBytes = 0;
  peakBytes = 0;
  constructor(private readonly limit = Infinity) {}
  /** Throws, before anything is allocated, when `bytes` more would pass the model's memoryLimit. */
  check(bytes: number, what: string) {
    if (this.liveBytes + bytes > this.limit) {
      const mb = (b: number) => `${(b / 2 ** 20).toFixed(0)} MB`;
      throw new RangeError(`${what} needs ${mb(bytes)} more with ${mb(this.liveBytes)} live: over the model's memoryLimit of ${mb(this.limit)}`);
    }
  }
  take(n: number): Float32Array {
    this.check(n * 4, "an intermediate");
    const list = this.free.get(n);
    const a = list?.pop() ?? (allocArray("float32", n, "model intermediate") as Float32Array);
    this.liveBytes += n * 4;
    this.peakBytes = Math.max(this.peakBytes, this.liveBytes);
    return a;
  }
  /**
   * A buffer from an earlier run (not counted as live). Not zeroed: every op writes all of its
   * output, as buffers handed on within a run already rely on (zeroing them cost 0.7 ms of a 20 ms
   * plainunet forward).
   */
  stock(a: Float32Array) {
    const list = this.free.get(a.length) ?? [];
    list.push(a);
    this.free.set(a.length, list);
  }
  give(a: Float32Array) {
    this.liveBytes -= a.length * 4;
    const list = this.free.get(a.length) ?? [];
    list.push(a);
    this.free.set(a.length, list);
  }
  /** Empties the pool and returns the arrays it held. */
  drain(): Float32Array[] {
    const all = [...this.free.values()].flat();
    this.free.clear();
    return all;
  }
}

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

/** Where a value is written when its Concat is done in place: channels c0 … c0 + c of cTotal. */
interface ConcatSlot { concat: string; c0: number; c: number; cTotal: number }

/** Ops that write their whole result into a buffer from `alloc` (so it may be a slice of another). */
const WRITES_ALLOC = new Set(["Conv", "ConvTranspose", "InstanceNormalization", "GroupNormalization", "BatchNormalization", "Relu", "LeakyRelu", "Sigmoid", "PRelu"]);
/** Ops whose output has their first input's channels. */
const KEEPS_CHANNELS = new Set(["InstanceNormalization", "GroupNormalization", "BatchNormalization", "Relu", "LeakyRelu", "Sigmoid", "PRelu"]);

export class Model {
  readonly name: string;
  readonly config: ModelConfig;
  readonly inputs: { name: string; shape: (number | string)[] }[];
  readonly outputs: string[];
  readonly opset: number;
  readonly producer: string;
  /** Statistics of the last run. */
  lastRun: RunStats | undefined;
  /**
   * Every value's shape for the inputs' declared shapes, inferred at load (see infer.ts), by
   * value name; undefined when an input declares a symbolic dimension. Values that depend on
   * data or follow an op without a shape rule are absent.
   */
  valueShapes: ReadonlyMap<string, number[]> | undefined;
  private readonly nodes: GraphNode[];
  private readonly consts = new Map<string, Value>();
  private readonly readers = new Map<string, number>();
  /**
   * Nodes whose inputs follow from the graph inputs' shapes and the weights alone (Shape →
   * Gather → Unsqueeze → Concat → Reshape targets and the like): their integer results are kept
   * per set of input shapes and not recomputed on the next run of the same shapes (a sliding
   * window runs one shape hundreds of times).
   */
  private readonly shapeOnly = new Set<GraphNode>();
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
  /** Values written into their Concat's buffer (CPU backends), by value name. */
  private readonly concatSlots = new Map<string, ConcatSlot>();

  /** Bytes a run may hold in intermediates (loadModel's memoryLimit). */
  readonly memoryLimit: number;

  /** The backend this model runs on (loadModel's `backend`), or undefined: the active one at each run. */
  readonly backend: BackendName | undefined;
  private disposed = false;

  constructor(graph: Graph, name: string, config: ModelConfig, memoryLimit = defaultMemoryLimit(), backend?: BackendName) {
    this.name = name;
    this.memoryLimit = memoryLimit;
    this.backend = backend;
    // `await using model = await loadModel(…)` (Node 20's Symbol.asyncDispose)
    const sym = (Symbol as unknown as { asyncDispose?: symbol; dispose?: symbol });
    if (sym.asyncDispose) Object.defineProperty(this, sym.asyncDispose, { value: async () => this.dispose() });
    if (sym.dispose) Object.defineProperty(this, sym.dispose, { value: () => this.dispose() });
    this.config = config;
    this.inputs = graph.inputs;
    this.outputs = graph.outputs;
    this.opset = graph.opset;
    this.producer = graph.producer;
    const grouped = { ...graph, nodes: fuseGroupNorm(graph.nodes, graph.outputs, graph.initializers) };
    this.nodes = fuseConvNorm(fuseActivations(grouped), graph.outputs, new Set(graph.initializers.keys()));
    for (const [k, t] of graph.initializers) this.consts.set(k, constValue(t));
    for (const v of this.consts.values()) if ("f" in v) (this.constArrays.add(v.f.data), constantArrays.add(v.f.data));
    for (const n of this.nodes) for (const i of n.inputs) if (i) this.readers.set(i, (this.readers.get(i) ?? 0) + 1);
    this.planConcats(graph);
    const fixed = new Set<string>(this.consts.keys());
    for (const n of this.nodes) {
      // a Shape reads only its input's shape; other nodes qualify when all they read is fixed
      if (n.opType === "Shape" || (n.inputs.length > 0 && n.inputs.every((i) => !i || fixed.has(i)))) {
        this.shapeOnly.add(n);
        for (const o of finalOutputs(n)) fixed.add(o);
      }
    }
  }

  /** Finds the channel Concats that can be done in place (see the module comment). */
  private planConcats(graph: Graph) {
    const producer = producersOf(this.nodes);
    const dims = (name: string | undefined) => (name ? graph.initializers.get(name)?.dims : undefined);
    const channels = (name: string, depth = 0): number | undefined => {
      const p = producer.get(name);
      if (!p || depth > 64) {
        const c = graph.inputs.find((i) => i.name === name)?.shape[1];
        return typeof c === "number" ? c : undefined;
      }
      const group = (p.attrs.group as number | undefined) ?? 1;
      if (p.opType === "Conv") return dims(p.inputs[1])?.[0];
      if (p.opType === "ConvTranspose") return dims(p.inputs[1])?.length === 5 ? dims(p.inputs[1])![1]! * group : undefined;
      if (KEEPS_CHANNELS.has(p.opType) && p.inputs[0]) return channels(p.inputs[0], depth + 1);
      return undefined;
    };
    const taken = new Set<string>();
    for (const n of this.nodes) {
      if (n.opType !== "Concat" || (n.attrs.axis !== 1 && n.attrs.axis !== -4)) continue;
      const ins = n.inputs;
      const ok = ins.length > 1 && new Set(ins).size === ins.length && ins.every((i) => i && !taken.has(i) && !this.outputs.includes(i) && WRITES_ALLOC.has(producer.get(i)?.opType ?? ""));
      const cs = ok ? ins.map((i) => channels(i!)) : [];
      if (!ok || cs.some((c) => typeof c !== "number" || !(c > 0))) continue;
      const cTotal = (cs as number[]).reduce((a, b) => a + b, 0);
      let c0 = 0;
      ins.forEach((i, k) => {
        this.concatSlots.set(i!, { concat: n.outputs[0]!, c0, c: cs[k]!, cTotal });
        taken.add(i!);
        c0 += cs[k]!;
      });
    }
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
  async runAll(feeds: Record<string, Tensor>, options?: { signal?: AbortSignal }): Promise<Record<string, Tensor>> { // signal: see runOn
    if (this.disposed) throw new Error(`model ${this.name} was disposed`);
    if (this.backend) {
      const bound = getBackend(this.backend);
      return withBackend(bound, () => this.runOn(bound, feeds, options));
    }
    return this.runOn(activeBackend(), feeds, options);
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

  private async runOn(be: Backend, feeds: Record<string, Tensor>, options?: { signal?: AbortSignal }): Promise<Record<string, Tensor>> {
    const signal = options?.signal;
    // the signal reaches into native calls (a layer in flight stops at its next chunk), and is checked between nodes
    if (!be.residentRun) return withCancel(be, signal, () => this.runGraph(feeds, be, signal));
    return be.residentRun(() => withCancel(be, signal, () => this.runGraph(feeds, be, signal)), { constants: this.constArrays, outputs: (r) => Object.values(r).map((t) => t.data) });
  }

  private async runGraph(feeds: Record<string, Tensor>, be: Backend, signal?: AbortSignal): Promise<Record<string, Tensor>> {
    const t0 = performance.now();
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
    const budget: nd.Budget = { check: (bytes, what) => pool.check(bytes, what) };
    if (!be.forget) for (const a of this.spare.splice(0)) pool.stock(a);
    const pooled = new Set<Float32Array>(); // buffers owned by the pool
    const refs = new Map<Float32Array, number>(); // live values per buffer (views share one)
    const baseOf = new Map<Float32Array, Float32Array>(); // a slice of a Concat's buffer → that buffer
    const concatBuf = new Map<string, Float32Array>(); // Concat output → its buffer, once taken
    const base = (a: Float32Array) => baseOf.get(a) ?? a;
    const left = new Map(this.readers);
    const keep = new Set(this.outputs);
    const alloc = (shape: number[]): Tensor => {
      const data = pool.take(prod(shape));
      pooled.add(data);
      return { data, shape };
    };
    // A value with a Concat slot is written into its slice of the Concat's buffer (batch 1, the
    // channels planned; anything else gets a buffer of its own and the Concat copies as usual).
    const inPlace = !be.residentRun;
    const slotAlloc = (slot: ConcatSlot) => (shape: number[]): Tensor => {
      const S = prod(shape.slice(2));
      let buf = concatBuf.get(slot.concat);
      if (shape.length !== 5 || shape[0] !== 1 || shape[1] !== slot.c || (buf && buf.length !== slot.cTotal * S)) return alloc(shape);
      if (!buf) {
        buf = pool.take(slot.cTotal * S);
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
        const slot = this.concatSlots.get(n.inputs[k]!);
        if (!v || !("f" in v) || !slot || baseOf.get(v.f.data) !== buf) return undefined;
        const S = prod(v.f.shape.slice(2));
        if (v.f.data.byteOffset !== buf.byteOffset + slot.c0 * S * 4 || v.f.data.length !== slot.c * S) return undefined;
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
      if (pooled.has(b) && ![...keep].some((k) => { const d = (env.get(k) as { f?: Tensor } | undefined)?.f?.data; return d && base(d) === b; })) {
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
    for (const n of this.nodes) {
      signal?.throwIfAborted();
      const args = n.inputs.map((i) => (i ? env.get(i) : undefined));
      let results: Value[];
      const tn = performance.now();
      const hit = this.shapeOnly.has(n) ? cached.get(n) : undefined;
      if (hit) {
        shapeNodesCached++;
        settle(n, hit);
        continue;
      }
      // Nodes that touch float data in JS, not through the backend, see current host copies.
      const viaBackend = BACKEND_ONLY.has(n.opType);
      try {
        if (be.hostRead) {
          const floats = args.flatMap((v) => (v && "f" in v ? [v.f.data] : []));
          await be.hostRead(viaBackend ? floats.filter((a) => a.length <= 64) : floats);
        }
        const slot = inPlace ? this.concatSlots.get(finalOutputs(n)[0]!) : undefined;
        const done = inPlace && n.opType === "Concat" ? concatDone(n, args) : undefined;
        if (done) concatsInPlace++;
        results = done ? [done] : await runNode(n, args, slot ? slotAlloc(slot) : alloc, budget, this.opset);
        if (be.hostWrote && !viaBackend) be.hostWrote(results.flatMap((v) => ("f" in v ? [v.f.data] : [])));
      } catch (e) {
        throw new Error(`node ${n.name} (${n.opType}): ${(e as Error).message}`);
      }
      const key = n.fusedNorm
        ? `${n.opType}+InstanceNormalization${n.fusedNorm.act ? `+${n.fusedNorm.act}` : ""}`
        : n.fusedAct ? `${n.opType}+${n.fusedAct.act}` : n.opType;
      const ms = performance.now() - tn;
      opMs[key] = (opMs[key] ?? 0) + ms;
      nodeMs.push({ name: n.name, op: key, ms });
      // integer results of shape-only nodes are kept for the next run of these shapes (float ones
      // may live in the buffer pool, which hands them out again)
      if (this.shapeOnly.has(n) && results.every((v) => "ints" in v)) cached.set(n, results);
      finalOutputs(n).forEach((o, k) => results[k] && shapes.set(o, shapeOf(results[k]!)));
      settle(n, results);
    }
    const out: Record<string, Tensor> = {};
    for (const o of this.outputs) {
      const v = env.get(o);
      if (!v) throw new Error(`output ${o} was not computed`);
      out[o] = "f" in v ? v.f : { data: Float32Array.from(v.ints), shape: v.shape };
    }
    if (be.forget) be.forget(pool.drain()); // a GPU backend frees their device copies now
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
  "Conv", "ConvTranspose", "InstanceNormalization", "GroupNormalization", "BatchNormalization", "Relu", "LeakyRelu", "Sigmoid", "PRelu", "Add", "Mul",
  "Concat", "MaxPool", "AveragePool", "Resize", "Softmax", "Identity", "Dropout", "Unsqueeze", "Squeeze", "Reshape", "Flatten",
]);

function constValue(t: OnnxTensor): Value {
  return t.f32 ? { f: { data: t.f32, shape: t.dims.length ? t.dims : [1] } } : { ints: t.ints!, shape: t.dims };
}

const F = (v: Value | undefined, what: string): Tensor => {
  if (!v || !("f" in v)) throw new Error(`${what} must be a float tensor`);
  return v.f;
};
const I = (v: Value | undefined, what: string): number[] => {
  if (!v) throw new Error(`${what} is missing`);
  if ("ints" in v) return v.ints;
  if (v.f.data.length <= 64) return Array.from(v.f.data);
  throw new Error(`${what} must be a small integer tensor`);
};
const triple = (a: Attr | undefined, d: number): [number, number, number] => (Array.isArray(a) ? (a as [number, number, number]) : [d, d, d]);
const pads6 = (a: Attr | undefined, autoPad: Attr | undefined): [number, number, number, number, number, number] =>
  autoPad === "VALID" || !Array.isArray(a) ? [0, 0, 0, 0, 0, 0] : (a as [number, number, number, number, number, number]);

function reshapeView(t: Tensor, shape: number[]): Value {
  if (prod(shape) !== t.data.length) throw new Error(`cannot reshape [${t.shape}] to [${shape}]`);
  return { f: { data: t.data, shape } };
}

/** Runs one node. Float results are taken from `alloc` (the executor passes its pool). */
export async function runNode(n: GraphNode, a: (Value | undefined)[], alloc: (shape: number[]) => Tensor, budget: nd.Budget = nd.NO_BUDGET, opset = 17): Promise<Value[]> {
  const at = n.attrs;
  const act = n.fusedAct ? { activation: n.fusedAct.act, alpha: n.fusedAct.alpha } : {};
  switch (n.opType) {
    case "Conv":
      if (n.fusedNorm) {
        const fn = n.fusedNorm;
        const norm = { scale: F(a[3], "scale"), bias: F(a[4], "B"), eps: fn.eps, ...(fn.act ? { activation: fn.act, alpha: fn.alpha } : {}) };
        return [{ f: await ops.conv3dInstanceNorm(F(a[0], "X"), F(a[1], "W"), a[2] ? F(a[2], "B") : null, norm, { stride: triple(at.strides, 1), dilation: triple(at.dilations, 1), padding: pads6(at.pads, at.auto_pad), groups: (at.group as number) ?? 1, alloc }) }];
      }
      return [{ f: await ops.conv3d(F(a[0], "X"), F(a[1], "W"), a[2] ? F(a[2], "B") : null, { stride: triple(at.strides, 1), dilation: triple(at.dilations, 1), padding: pads6(at.pads, at.auto_pad), groups: (at.group as number) ?? 1, alloc, ...act }) }];
    case "ConvTranspose":
      return [{ f: await ops.convTranspose3d(F(a[0], "X"), F(a[1], "W"), a[2] ? F(a[2], "B") : null, { stride: triple(at.strides, 1), dilation: triple(at.dilations, 1), padding: pads6(at.pads, at.auto_pad), outputPadding: triple(at.output_padding, 0), groups: (at.group as number) ?? 1, alloc }) }];
    case "InstanceNormalization":
      return [{ f: await ops.instanceNorm(F(a[0], "input"), F(a[1], "scale"), F(a[2], "B"), { eps: (at.epsilon as number) ?? 1e-5, alloc, ...act }) }];
    case "GroupNormalization": {
      const x = F(a[0], "X");
      // a fused exporter pattern (graph.ts fuseGroupNorm) holds for inputs of the rank it was exported at
      if (at.bhsd_rank !== undefined && x.shape.length !== at.bhsd_rank) throw new RangeError(`input [${x.shape}] is not of rank ${at.bhsd_rank as number}, which this GroupNorm's γ [C, 1, …] broadcasts over`);
      return [{ f: await ops.groupNorm(x, F(a[1], "scale"), F(a[2], "bias"), { groups: at.num_groups as number, eps: (at.epsilon as number | undefined) ?? 1e-5, alloc, ...act }) }];
    }
    case "BatchNormalization":
      return [{ f: await ops.batchNorm(F(a[0], "X"), F(a[1], "scale"), F(a[2], "B"), F(a[3], "mean"), F(a[4], "var"), { eps: (at.epsilon as number) ?? 1e-5, alloc }) }];
    case "Relu":
      return [{ f: await ops.relu(F(a[0], "X"), { alloc }) }];
    case "LeakyRelu":
      return [{ f: await ops.leakyRelu(F(a[0], "X"), { alpha: (at.alpha as number) ?? 0.01, alloc }) }];
    case "Sigmoid":
      return [{ f: await ops.sigmoid(F(a[0], "X"), { alloc }) }];
    case "PRelu": {
      const s = F(a[1], "slope");
      return [{ f: await ops.prelu(F(a[0], "X"), { data: s.data, shape: [s.data.length] }, { alloc }) }];
    }
    case "Add":
    case "Mul": {
      if (a[0] && a[1] && "f" in a[0] && "f" in a[1] && Math.max(a[0].f.shape.length, a[1].f.shape.length) <= 6) {
        return [{ f: await (n.opType === "Add" ? ops.add : ops.mul)(a[0].f, a[1].f, { alloc }) }];
      }
      return runNd(n, a, budget, opset);
    }
    case "Concat": {
      const axis = (at.axis as number) ?? 0;
      if (a.every((v) => v && "f" in v)) return [{ f: await ops.concat(a.map((v) => (v as { f: Tensor }).f), axis, { alloc }) }];
      return [fromNd(nd.concat(a.map((v, k) => toNd(v, `input ${k}`)), axis, budget, "Concat"))];
    }
    case "MaxPool":
    case "AveragePool": {
      const o = { kernel: triple(at.kernel_shape, 1), stride: triple(at.strides, 1), dilation: triple(at.dilations, 1), padding: pads6(at.pads, at.auto_pad), ceilMode: at.ceil_mode === 1, countIncludePad: at.count_include_pad === 1, alloc };
      return [{ f: await (n.opType === "MaxPool" ? ops.maxPool3d : ops.avgPool3d)(F(a[0], "X"), o) }];
    }
    case "Resize": {
      const x = F(a[0], "X");
      const mode = ((at.mode as string) ?? "nearest") as "nearest" | "linear";
      const common = {
        mode,
        coordinateTransformationMode: ((at.coordinate_transformation_mode as string) ?? "half_pixel") as "half_pixel",
        nearestMode: ((at.nearest_mode as string) ?? "round_prefer_floor") as "floor",
        alloc,
      };
      const sizes = a[3] ? I(a[3], "sizes") : [];
      if (sizes.length) {
        if (sizes[0] !== x.shape[0] || sizes[1] !== x.shape[1]) throw new Error("Resize may change only the spatial axes");
        return [{ f: await ops.resize(x, { ...common, sizes: sizes.slice(2) as [number, number, number] }) }];
      }
      const scales = a[2] ? (("f" in a[2]) ? Array.from(a[2].f.data) : a[2].ints) : [];
      if (scales.length !== 5 || scales[0] !== 1 || scales[1] !== 1) throw new Error("Resize needs 5 scales (1 for N and C) or 5 sizes");
      return [{ f: await ops.resize(x, { ...common, scales: scales.slice(2) as [number, number, number] }) }];
    }
    case "Softmax":
      return [{ f: await ops.softmax(F(a[0], "input"), { axis: (at.axis as number) ?? -1, alloc }) }];
    case "ArgMax": {
      const r = await ops.argmax(F(a[0], "data"), { axis: (at.axis as number) ?? 0, keepdims: (at.keepdims as number | undefined) !== 0 });
      const t = alloc(r.shape);
      t.data.set(r.data);
      return [{ f: t }];
    }
    case "Identity":
    case "Dropout":
      return [a[0]!];
    case "Constant": {
      const v = at.value as OnnxTensor | undefined;
      if (v) return [constValue(v)];
      if (at.value_float !== undefined) return [{ f: { data: Float32Array.of(at.value_float as number), shape: [1] } }];
      if (at.value_floats !== undefined) return [{ f: { data: Float32Array.from(at.value_floats as number[]), shape: [(at.value_floats as number[]).length] } }];
      if (at.value_int !== undefined) return [{ ints: [at.value_int as number], shape: [] }];
      if (at.value_ints !== undefined) return [{ ints: at.value_ints as number[], shape: [(at.value_ints as number[]).length] }];
      throw new Error("Constant without a value");
    }
    case "Shape": {
      const s = shapeOf(a[0]!);
      const r = s.slice((at.start as number) ?? 0, (at.end as number) ?? s.length);
      return [{ ints: r, shape: [r.length] }];
    }
    case "Gather": {
      const r = nd.gather(toNd(a[0], "data"), toNd(a[1], "indices"), (at.axis as number | undefined) ?? 0, budget, "Gather");
      return [fromNd(r)];
    }
    case "Unsqueeze":
    case "Squeeze": {
      const axes = a[1] ? I(a[1], "axes") : ((at.axes as number[]) ?? []);
      const v = a[0]!;
      const ns = squeezeShape(shapeOf(v), axes, n.opType === "Unsqueeze");
      return ["f" in v ? reshapeView(v.f, ns) : { ints: v.ints, shape: ns }];
    }
    case "Cast": {
      const v = a[0]!, to = at.to as number;
      if (CAST_FLOAT.has(to as 1)) return ["f" in v ? v : { f: { data: allocFloats(v.ints.length, budget, "Cast").map((_, i) => v.ints[i]!) as Float32Array, shape: v.shape } }];
      // integer types: truncation toward zero, then wrapped into the type's range as C casts do
      const wrap = intWrap(to);
      const src = "f" in v ? v.f.data : v.ints;
      if (src.length > (1 << 24)) throw new RangeError(`Cast to an integer type of ${src.length} values: integer tensors are shape glue here`);
      const ints = Array.from(src, (x) => {
        if (!Number.isFinite(x)) throw new RangeError(`Cast of ${x} to an integer type`);
        return to === 9 ? (x !== 0 ? 1 : 0) : wrap(Math.trunc(x) + 0); // bool: any non-zero; + 0: no -0 among integers
      });
      return [{ ints, shape: shapeOf(v) }];
    }
    case "Slice": {
      const x = toNd(a[0], "data");
      const starts = I(a[1], "starts"), ends = I(a[2], "ends");
      const axes = a[3] ? I(a[3], "axes") : undefined, steps = a[4] ? I(a[4], "steps") : undefined;
      return [fromNd(nd.slice(x, starts, ends, axes, steps, budget, "Slice"))];
    }
    case "Reshape": {
      const x = a[0]!;
      const shape = reshapeShape(shapeOf(x), I(a[1], "shape"), !!at.allowzero);
      return ["f" in x ? reshapeView(x.f, shape) : { ints: x.ints, shape }];
    }
    case "Flatten": {
      const x = F(a[0], "input");
      const ax = (at.axis as number) ?? 1;
      return [reshapeView(x, [prod(x.shape.slice(0, ax)), prod(x.shape.slice(ax))])];
    }
    case "MatMul": {
      const r = await matmulOnEngine(a[0], a[1], budget);
      if (r) return [r];
      return runNd(n, a, budget, opset);
    }
    case "Einsum": {
      // a batched matrix product (attention) goes to the engine's GEMM head by head
      if (a.length === 2 && a[0] && a[1] && "f" in a[0] && "f" in a[1]) {
        const mm = nd.einsumAsMatmul(String(at.equation), toNd(a[0], "A"), toNd(a[1], "B"), budget, "Einsum");
        const r = mm && (await matmulOnEngine(fromNd(mm[0]), fromNd(mm[1]), budget));
        if (r) return [r];
      }
      return runNd(n, a, budget, opset);
    }
    default:
      return runNd(n, a, budget, opset);
  }
}

/** Bᵀ of a 2-D weight, made once per weight array (a model's Linear layers). */
const transposedWeights = new WeakMap<Float32Array, Float32Array>();
/** Models' constant arrays (weights): only these may have their transposes kept (a pooled activation's buffer is reused). */
const constantArrays = new WeakSet<Float32Array>();

/**
 * A float MatMul [..., M, K] × [K, N] (a transformer's Linear layers, most of its time) on the
 * engine's convolution GEMM: a 1×1×1 convolution of Aᵀ ([K] channels × M voxels) with Bᵀ as its
 * [N, K] weights gives (AB)ᵀ, transposed back. The two transposes cost O(M(K + N)) against the
 * GEMM's O(MKN). A batched B [..., K, N] of A's batch extents (attention's per-head products) runs
 * one GEMM per batch item. Other shapes (broadcast batches, integers, small K or N) stay on nd.matmul.
 */
async function matmulOnEngine(av: Value | undefined, bv: Value | undefined, budget: nd.Budget): Promise<Value | undefined> {
  if (!av || !bv || !("f" in av) || !("f" in bv)) return undefined;
  const A = av.f, B = bv.f;
  const ra = A.shape.length, rb = B.shape.length;
  if (ra < 2 || rb < 2 || (rb > 2 && (rb !== ra || !B.shape.slice(0, -2).every((d, i) => d === A.shape[i])))) return undefined;
  const [K, N] = B.shape.slice(-2) as [number, number];
  const M = A.shape[ra - 2]!, batches = rb === 2 ? 1 : prod(A.shape.slice(0, -2));
  const rows = rb === 2 ? A.data.length / K : M; // a 2-D B takes every row of A at once
  if (A.shape[ra - 1] !== K || K < 16 || N < 16 || rows < 16) return undefined;
  budget.check(batches * rows * N * 4 * 2, "MatMul");
  const y = allocFloats(batches * rows * N, budget, "MatMul output");
  for (let t = 0; t < batches; t++) {
    const Bb = B.data.subarray(t * K * N, (t + 1) * K * N);
    const keep = rb === 2 && constantArrays.has(B.data);
    let Bt = keep ? transposedWeights.get(B.data) : undefined;
    if (!Bt) {
      Bt = nd.transpose({ data: Bb, shape: [K, N], int: false }, [1, 0], budget, "MatMul weight").data as Float32Array;
      if (keep) transposedWeights.set(B.data, Bt);
    }
    const At = nd.transpose({ data: A.data.subarray(t * rows * K, (t + 1) * rows * K), shape: [rows, K], int: false }, [1, 0], budget, "MatMul input").data as Float32Array;
    const yt = await ops.conv3d({ data: At, shape: [1, K, 1, 1, rows] }, { data: Bt, shape: [N, K, 1, 1, 1] }, null);
    y.set(nd.transpose({ data: yt.data, shape: [N, rows], int: false }, [1, 0], budget, "MatMul output").data as Float32Array, t * rows * N);
  }
  return { f: { data: y, shape: [...A.shape.slice(0, -1), N] } };
}

/** The executor's view of a value as an N-d array (float32 data, or integer numbers). */
function toNd(v: Value | undefined, what: string): nd.Nd {
  if (!v) throw new Error(`${what} is missing`);
  return "f" in v ? { data: v.f.data, shape: v.f.shape, int: false } : { data: v.ints, shape: v.shape, int: true };
}
function fromNd(x: nd.Nd): Value {
  return x.int ? { ints: x.data as number[], shape: x.shape } : { f: { data: x.data as Float32Array, shape: x.shape } };
}
function allocFloats(n: number, budget: nd.Budget, what: string): Float32Array {
  budget.check(n * 4, what);
  return allocArray("float32", n, what) as Float32Array;
}
/** C's conversion of an integer into each ONNX integer type. */
function intWrap(to: number): (x: number) => number {
  switch (to) {
    case 2: return (x) => x & 0xff;
    case 3: return (x) => (x << 24) >> 24;
    case 4: return (x) => x & 0xffff;
    case 5: return (x) => (x << 16) >> 16;
    case 6: return (x) => x | 0;
    case 12: return (x) => x >>> 0;
    case 9: return (x) => (x !== 0 ? 1 : 0);
    default: return (x) => x; // int64/uint64: exact below 2^53
  }
}

const UNARY: Record<string, (x: number, at: Record<string, Attr>) => number> = {
  Sqrt: (x) => Math.sqrt(x),
  Exp: (x) => Math.exp(x),
  Log: (x) => Math.log(x),
  Tanh: (x) => Math.tanh(x),
  Erf: (x) => nd.erf(x),
  Neg: (x) => -x,
  Abs: (x) => Math.abs(x),
  Reciprocal: (x) => 1 / x,
  Floor: (x) => Math.floor(x),
  Ceil: (x) => Math.ceil(x),
  Round: (x) => { const f = Math.floor(x), d = x - f; return d > 0.5 ? f + 1 : d < 0.5 ? f : f % 2 === 0 ? f : f + 1; },
  Sign: (x) => Math.sign(x),
  Softplus: (x) => (x > 20 ? x : Math.log1p(Math.exp(x))),
  Elu: (x, at) => (x >= 0 ? x : ((at.alpha as number | undefined) ?? 1) * Math.expm1(x)),
  Selu: (x, at) => ((at.gamma as number | undefined) ?? 1.0507009873554805) * (x > 0 ? x : ((at.alpha as number | undefined) ?? 1.6732632423543772) * Math.expm1(x)),
  HardSigmoid: (x, at) => Math.max(0, Math.min(1, ((at.alpha as number | undefined) ?? 0.2) * x + ((at.beta as number | undefined) ?? 0.5))),
  Gelu: (x, at) => (at.approximate === "tanh" ? 0.5 * x * (1 + Math.tanh(Math.sqrt(2 / Math.PI) * (x + 0.044715 * x * x * x))) : 0.5 * x * (1 + nd.erf(x / Math.SQRT2))),
  Not: (x) => (x ? 0 : 1),
  Relu: (x) => (x > 0 ? x : 0),
  Sigmoid: (x) => 1 / (1 + Math.exp(-x)),
  LeakyRelu: (x, at) => (x >= 0 ? x : ((at.alpha as number | undefined) ?? 0.01) * x),
};
const BOOL_OUT = new Set(["Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual", "And", "Or", "Not"]);
const BINARY: Record<string, (x: number, y: number, int: boolean) => number> = {
  Add: (x, y) => x + y,
  Sub: (x, y) => x - y,
  Mul: (x, y) => x * y,
  Div: (x, y, int) => (int ? (y === 0 ? 0 : Math.trunc(x / y)) : x / y),
  Pow: (x, y) => Math.pow(x, y),
  // fmod = 0 (the default, integers): the remainder takes the divisor's sign, as Python's %
  Mod: (x, y) => (y === 0 ? NaN : x - Math.floor(x / y) * y),
  Max: (x, y) => (Number.isNaN(x) || Number.isNaN(y) ? NaN : Math.max(x, y)),
  Min: (x, y) => (Number.isNaN(x) || Number.isNaN(y) ? NaN : Math.min(x, y)),
  Sum: (x, y) => x + y,
  Equal: (x, y) => (x === y ? 1 : 0),
  Less: (x, y) => (x < y ? 1 : 0),
  Greater: (x, y) => (x > y ? 1 : 0),
  LessOrEqual: (x, y) => (x <= y ? 1 : 0),
  GreaterOrEqual: (x, y) => (x >= y ? 1 : 0),
  And: (x, y) => (x && y ? 1 : 0),
  Or: (x, y) => (x || y ? 1 : 0),
};

/** The ops of real exports beyond a U-Net's blocks, on N-d arrays (see nd.ts). */
function runNd(n: GraphNode, a: (Value | undefined)[], budget: nd.Budget, opset: number): Value[] {
  const at = n.attrs, op = n.opType, what = op;
  const x = () => toNd(a[0], "input");
  if (op in UNARY) {
    const f = UNARY[op]!, v = x();
    return [fromNd(nd.mapN([v], op === "Not" ? true : v.int && ["Neg", "Abs", "Sign", "Relu"].includes(op), (t) => f(t, at), budget, what))];
  }
  if (op in BINARY) {
    const ins = a.filter((v): v is Value => v !== undefined).map((v, k) => toNd(v, `input ${k}`));
    if (ins.length === 0) throw new Error("needs at least one input");
    const f = op === "Mod" && at.fmod ? (p: number, q: number) => p % q : BINARY[op]!; // fmod = 1: C's fmod (the dividend's sign)
    const int = ins.every((v) => v.int);
    let r = ins[0]!;
    for (let k = 1; k < ins.length; k++) r = nd.mapN([r, ins[k]!], BOOL_OUT.has(op) || int, (p, q) => f(p, q, int), budget, what);
    if (ins.length === 1) r = nd.mapN([r], int, (p) => p, budget, what);
    return [fromNd(r)];
  }
  switch (op) {
    case "Mean": {
      const ins = a.filter((v): v is Value => v !== undefined).map((v, k) => toNd(v, `input ${k}`));
      let r = ins[0]!;
      for (let k = 1; k < ins.length; k++) r = nd.mapN([r, ins[k]!], false, (p, q) => p + q, budget, what);
      return [fromNd(nd.mapN([r], false, (p) => p / ins.length, budget, what))];
    }
    case "Where": {
      const c = toNd(a[0], "condition"), p = toNd(a[1], "X"), q = toNd(a[2], "Y");
      return [fromNd(nd.mapN([c, p, q], p.int && q.int, (k, u, v) => (k ? u : v), budget, what))];
    }
    case "Clip": {
      const v = x();
      const lo = a[1] ? toNd(a[1], "min").data[0]! : ((at.min as number | undefined) ?? -Infinity);
      const hi = a[2] ? toNd(a[2], "max").data[0]! : ((at.max as number | undefined) ?? Infinity);
      return [fromNd(nd.mapN([v], v.int, (t) => (Number.isNaN(t) ? t : Math.min(hi, Math.max(lo, t))), budget, what))];
    }
    case "Transpose":
      return [fromNd(nd.transpose(x(), at.perm as number[] | undefined, budget, what))];
    case "ReduceMean":
    case "ReduceSum":
    case "ReduceMax":
    case "ReduceMin":
    case "ReduceProd": {
      const kind = op.slice(6).toLowerCase() as nd.ReduceKind;
      // axes: an attribute before opset 18 (ReduceSum: 13), an input after
      const axesIn = a[1] ? I(a[1], "axes") : undefined;
      const axes = axesIn ?? ((at.axes as number[] | undefined) ?? []);
      const v = x();
      if (axes.length === 0 && at.noop_with_empty_axes) return [fromNd(v)];
      return [fromNd(nd.reduce(v, axes, (at.keepdims as number | undefined) !== 0, kind, budget, what))];
    }
    case "Softmax":
    case "LogSoftmax":
      return [fromNd(nd.softmaxAxis(x(), (at.axis as number | undefined) ?? (opset >= 13 ? -1 : 1), op === "LogSoftmax", budget, what))];
    case "LayerNormalization": {
      const v = x();
      const axis = nd.normAxis((at.axis as number | undefined) ?? -1, v.shape.length, "LayerNormalization axis");
      const inner = prod(v.shape.slice(axis));
      const sc = a[1] ? toNd(a[1], "Scale") : null, bi = a[2] ? toNd(a[2], "B") : null;
      for (const [t, nm] of [[sc, "Scale"], [bi, "B"]] as const) if (t && t.data.length !== inner && t.data.length !== 1) throw new RangeError(`${nm} has ${t.data.length} values for a normalised extent of ${inner}`);
      return [fromNd(nd.normalizeTrailing(v, inner, (at.epsilon as number | undefined) ?? 1e-5, sc, bi, budget, what))];
    }
    case "MatMul":
      return [fromNd(nd.matmul(toNd(a[0], "A"), toNd(a[1], "B"), budget, what))];
    case "Gemm": {
      let A = toNd(a[0], "A"), B = toNd(a[1], "B");
      if (A.shape.length !== 2 || B.shape.length !== 2) throw new RangeError("Gemm takes 2-D A and B");
      if (at.transA) A = nd.transpose(A, [1, 0], budget, what);
      if (at.transB) B = nd.transpose(B, [1, 0], budget, what);
      const alpha = (at.alpha as number | undefined) ?? 1, beta = (at.beta as number | undefined) ?? 1;
      let y = nd.matmul(A, B, budget, what);
      if (alpha !== 1) y = nd.mapN([y], false, (t) => alpha * t, budget, what);
      if (a[2]) y = nd.mapN([y, toNd(a[2], "C")], false, (p, q) => p + beta * q, budget, what);
      return [fromNd(y)];
    }
    case "Einsum":
      if (a.length !== 2) throw new RangeError(`Einsum with ${a.length} operands (bhsd runs two)`);
      return [fromNd(nd.einsum(String(at.equation), toNd(a[0], "A"), toNd(a[1], "B"), budget, what))];
    case "Pad": {
      const v = x();
      const mode = (at.mode as string | undefined) ?? "constant";
      let pads = a[1] ? I(a[1], "pads") : ((at.pads as number[] | undefined) ?? []);
      const value = a[2] ? (toNd(a[2], "constant_value").data[0] ?? 0) : ((at.value as number | undefined) ?? 0);
      if (a[3]) {
        // opset 18: pads for the listed axes only
        const axes = I(a[3], "axes").map((ax) => nd.normAxis(ax, v.shape.length, "Pad axis"));
        const full = new Array<number>(2 * v.shape.length).fill(0);
        axes.forEach((ax, k) => ((full[ax] = pads[k]!), (full[ax + v.shape.length] = pads[k + axes.length]!)));
        pads = full;
      }
      if (pads.some((p) => !Number.isInteger(p) || Math.abs(p) > 1 << 20)) throw new RangeError(`pads [${pads}] must be integers of sane size`);
      return [fromNd(nd.pad(v, pads, mode, value, budget, what))];
    }
    case "ConstantOfShape": {
      const shape = I(a[0], "input");
      if (shape.some((d) => !Number.isSafeInteger(d) || d < 0)) throw new RangeError(`shape [${shape}] must hold non-negative integers`);
      const t = at.value as OnnxTensor | undefined;
      const int = t !== undefined && !t.f32;
      const fill = t ? (t.f32 ? t.f32[0]! : t.ints![0]!) : 0;
      const r = nd.alloc(shape, int, budget, what);
      if (fill !== 0) r.data.fill(fill);
      return [fromNd(r)];
    }
    case "Expand": {
      const v = x();
      return [fromNd(nd.mapN([v], v.int, (p) => p, budget, what, I(a[1], "shape")))];
    }
    case "Tile": {
      const v = x(), reps = I(a[1], "repeats");
      if (reps.length !== v.shape.length || reps.some((r) => !Number.isInteger(r) || r < 0)) throw new RangeError(`repeats [${reps}] must be ${v.shape.length} non-negative integers`);
      const shape = v.shape.map((d, i) => d * reps[i]!);
      const out = nd.alloc(shape, v.int, budget, what);
      const st = nd.stridesOf(v.shape), idx = new Array<number>(shape.length).fill(0);
      for (let i = 0; i < out.data.length; i++) {
        let off = 0;
        for (let d = 0; d < shape.length; d++) off += (idx[d]! % v.shape[d]!) * st[d]!;
        out.data[i] = v.data[off]!;
        for (let d = shape.length - 1; d >= 0; d--) {
          idx[d]!++;
          if (idx[d]! < shape[d]!) break;
          idx[d] = 0;
        }
      }
      return [fromNd(out)];
    }
    case "Range": {
      const s0 = toNd(a[0], "start"), lim = toNd(a[1], "limit"), dl = toNd(a[2], "delta");
      const st = s0.data[0]!, li = lim.data[0]!, de = dl.data[0]!;
      if (!(de !== 0) || !Number.isFinite(st) || !Number.isFinite(li) || !Number.isFinite(de)) throw new RangeError(`Range(${st}, ${li}, ${de}) needs a non-zero delta and finite bounds`);
      const count = Math.max(Math.ceil((li - st) / de), 0);
      const r = nd.alloc([count], s0.int, budget, what);
      for (let i = 0; i < count; i++) r.data[i] = st + i * de;
      return [fromNd(r)];
    }
    case "Split": {
      const v = x();
      const axis = nd.normAxis((at.axis as number | undefined) ?? 0, v.shape.length, "Split axis");
      const d = v.shape[axis]!, outs = n.outputs.length;
      let parts = a[1] ? I(a[1], "split") : (at.split as number[] | undefined);
      if (!parts) {
        const k = (at.num_outputs as number | undefined) ?? outs;
        const each = Math.ceil(d / k);
        parts = Array.from({ length: k }, (_, i) => Math.max(0, Math.min(each, d - i * each)));
      }
      if (parts.length !== outs || parts.reduce((p, q) => p + q, 0) !== d || parts.some((p) => p < 0)) throw new RangeError(`split [${parts}] does not divide axis ${axis} of [${v.shape}] into ${outs} outputs`);
      let start = 0;
      return parts.map((p) => {
        const r = nd.slice(v, [start], [start + p], [axis], [1], budget, what);
        start += p;
        return fromNd(r);
      });
    }
    case "Size":
      return [{ ints: [prod(shapeOf(a[0]!))], shape: [] }];
    default:
      throw new Error(`op ${n.opType} is not supported`);
  }
}

function shapeOf(v: Value): number[] {
  return "f" in v ? v.f.shape : v.shape;
}

/**
 * Loads an ONNX model (path or bytes). The config comes from the argument, else a JSON sidecar
 * beside the file (`<model>.json`), else nnU-Net's plans.json/dataset.json beside it, else the
 * model's metadata_props, else defaults. A model the engine cannot run fails here. Besides the
 * model's configuration (see ModelConfig), `config` takes
 * plus `memoryLimit` (bytes a run may hold in intermediates; default half the RAM, at most 8 GiB)
 * and `backend` (run this model on that backend whatever the global choice, like an onnxruntime
 * session's execution provider) and `inputShapes` (input name → the shape it will be run at,
 * filling the model's symbolic dimensions for shape inference at load: see Model.valueShapes).
 */
export async function loadModel(onnxPathOrBytes: string | Uint8Array, config?: Partial<ModelConfig> & { memoryLimit?: number; backend?: BackendName; inputShapes?: Record<string, number[]> }): Promise<Model> {
  if (typeof onnxPathOrBytes !== "string" && !(onnxPathOrBytes instanceof Uint8Array)) {
    throw new TypeError(`Expected a file path or the model's bytes (Uint8Array) for onnxPathOrBytes but received ${typeof onnxPathOrBytes}`);
  }
  const { memoryLimit, backend, inputShapes, ...rest } = config ?? {};
  if (memoryLimit !== undefined && !(typeof memoryLimit === "number" && memoryLimit > 0)) {
    throw new RangeError(`Expected a positive number of bytes for config.memoryLimit but received ${JSON.stringify(memoryLimit)}`);
  }
  if (backend !== undefined) getBackend(backend); // names the argument and says why when it is not available
  const graph = await parseModel(onnxPathOrBytes);
  const name = typeof onnxPathOrBytes === "string" ? basename(onnxPathOrBytes).replace(/\.onnx$/i, "") : (graph.metadata.name ?? "model");
  const cfg = await readModelConfig(typeof onnxPathOrBytes === "string" ? onnxPathOrBytes : null, graph.metadata, Object.keys(rest).length ? rest : undefined); // memoryLimit/backend/inputShapes alone keep the sidecar's config
  const limit = memoryLimit ?? defaultMemoryLimit();
  await foldConstants(graph, limit);
  checkConstantInputs(graph.nodes, graph.initializers, typeof onnxPathOrBytes === "string" ? onnxPathOrBytes : "<model bytes>");
  const budget: nd.Budget = { check: (bytes, what) => { if (bytes > limit) throw new RangeError(`${what}: shape inference needs more than the model's memoryLimit`); } };
  const small = (shape: number[]): Tensor => ({ data: allocArray("float32", prod(shape), "inferred constant") as Float32Array, shape });
  const valueShapes = await inferShapes(graph.nodes, graph.initializers, shapesToInfer(graph.inputs, inputShapes), graph.opset, (n, args) => runNode(n, args, small, budget, graph.opset), constValue);
  const model = new Model(graph, name, cfg, limit, backend);
  model.valueShapes = valueShapes;
  return model;
}

/**
 * The input shapes shape inference works from: the declared ones, with `given` (loadModel's
 * `inputShapes`, like onnxruntime's free dimension overrides) filling symbolic dimensions.
 */
function shapesToInfer(declared: Graph["inputs"], given: Record<string, number[]> | undefined): Graph["inputs"] {
  if (given === undefined) return declared;
  if (typeof given !== "object" || given === null || Array.isArray(given)) throw new TypeError(`Expected an object of input name → shape for config.inputShapes but received ${JSON.stringify(given)}`);
  for (const k of Object.keys(given)) if (!declared.some((i) => i.name === k)) throw new RangeError(`config.inputShapes names ${JSON.stringify(k)}, which is not an input of the model (inputs: ${declared.map((i) => i.name).join(", ")})`);
  return declared.map((i) => {
    const s = given[i.name];
    if (s === undefined) return i;
    if (!Array.isArray(s) || s.length !== i.shape.length || !s.every((d) => Number.isSafeInteger(d) && d >= 1 && d <= 1 << 24)) {
      throw new RangeError(`Expected config.inputShapes.${i.name} to be ${i.shape.length} positive integers (the model declares [${i.shape}]) but received ${JSON.stringify(s)}`);
    }
    i.shape.forEach((d, k) => {
      if (typeof d === "number" && d !== s[k]) throw new RangeError(`config.inputShapes.${i.name} is [${s}] but the model declares [${i.shape}] (axis ${k} is ${d})`);
    });
    return { name: i.name, shape: [...s] };
  });
}

/** Half the machine's memory, at most 8 GiB: what one model run may hold unless told otherwise. */
export function defaultMemoryLimit(): number {
  return Math.min(os.totalmem() / 2, 8 * 2 ** 30);
}

/**
 * Runs, once at load, every node whose inputs are all constants (Constant nodes, shape glue on
 * weights, a norm's scale made by a Constant …) and makes its results initializers: the run does
 * less, and fusions see the weights they need. Results are bounded by `limit`.
 */
async function foldConstants(graph: Graph, limit: number): Promise<void> {
  const known = new Map<string, Value>();
  for (const [k, t] of graph.initializers) known.set(k, constValue(t));
  let held = 0;
  const budget: nd.Budget = {
    check: (bytes, what) => {
      if (held + bytes > limit) throw new RangeError(`${what}: folding constants needs more than the model's memoryLimit`);
    },
  };
  const alloc = (shape: number[]): Tensor => {
    budget.check(prod(shape) * 4, "a folded constant");
    return { data: allocArray("float32", prod(shape), "folded constant") as Float32Array, shape };
  };
  const keep: GraphNode[] = [];
  for (const n of graph.nodes) {
    const foldable = n.inputs.every((i) => !i || known.has(i)) && !graph.outputs.some((o) => n.outputs.includes(o)) && n.opType !== "Dropout";
    if (!foldable) {
      keep.push(n);
      continue;
    }
    let results: Value[];
    try {
      results = await runNode(n, n.inputs.map((i) => (i ? known.get(i) : undefined)), alloc, budget, graph.opset);
    } catch (e) {
      throw new Error(`node ${n.name} (${n.opType}): ${(e as Error).message}`);
    }
    results.forEach((v, k) => {
      const o = n.outputs[k];
      if (!o) return;
      known.set(o, v);
      held += "f" in v ? v.f.data.byteLength : 0;
      graph.initializers.set(o, "f" in v ? { dims: v.f.shape, dataType: 1, f32: v.f.data } : { dims: v.shape, dataType: 7, ints: v.ints });
    });
  }
  graph.nodes = keep;
}
