/**
 * loadModel and the graph executor. The plan is made once at load: topological order, fused
 * activations, and for every value the number of nodes that read it. At run time each
 * intermediate goes back to a buffer pool after its last reader, and outputs are taken from that
 * pool, so a forward's peak is close to its largest live set; the run reports that peak.
 * A channel Concat whose inputs' channel counts are known at load (a U-Net's skip connections)
 * is planned in place: each input's producer writes straight into its slice of the Concat's
 * buffer, and the Concat itself copies nothing.
 */
import { basename } from "node:path";
import { activeBackend } from "../backends/index.js";
import type { Backend } from "../backends/types.js";
import * as ops from "../ops/tensor.js";
import type { Tensor } from "../types.js";
import { allocArray } from "../volume.js";
import { readModelConfig, type ModelConfig } from "./config.js";
import { finalOutputs, fuseActivations, fuseConvNorm, parseModel, producersOf, type Attr, type Graph, type GraphNode, type OnnxTensor } from "./graph.js";

/** A value in the graph: a float tensor, or a small integer tensor of shape glue. */
export type Value = { f: Tensor } | { ints: number[]; shape: number[] };

const prod = (xs: readonly number[]) => xs.reduce((a, b) => a * b, 1);

/** Float32 buffers by length, handed out again after their last reader. */
class Pool {
  private free = new Map<number, Float32Array[]>();
  liveBytes = 0;
  peakBytes = 0;
  take(n: number): Float32Array {
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
}

/** Where a value is written when its Concat is done in place: channels c0 … c0 + c of cTotal. */
interface ConcatSlot { concat: string; c0: number; c: number; cTotal: number }

/** Ops that write their whole result into a buffer from `alloc` (so it may be a slice of another). */
const WRITES_ALLOC = new Set(["Conv", "ConvTranspose", "InstanceNormalization", "BatchNormalization", "Relu", "LeakyRelu", "Sigmoid", "PRelu"]);
/** Ops whose output has their first input's channels. */
const KEEPS_CHANNELS = new Set(["InstanceNormalization", "BatchNormalization", "Relu", "LeakyRelu", "Sigmoid", "PRelu"]);

export class Model {
  readonly name: string;
  readonly config: ModelConfig;
  readonly inputs: { name: string; shape: (number | string)[] }[];
  readonly outputs: string[];
  readonly opset: number;
  readonly producer: string;
  /** Statistics of the last run. */
  lastRun: RunStats | undefined;
  private readonly nodes: GraphNode[];
  private readonly consts = new Map<string, Value>();
  private readonly readers = new Map<string, number>();
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

  constructor(graph: Graph, name: string, config: ModelConfig) {
    this.name = name;
    this.config = config;
    this.inputs = graph.inputs;
    this.outputs = graph.outputs;
    this.opset = graph.opset;
    this.producer = graph.producer;
    this.nodes = fuseConvNorm(fuseActivations(graph), graph.outputs);
    for (const [k, t] of graph.initializers) this.consts.set(k, constValue(t));
    for (const v of this.consts.values()) if ("f" in v) this.constArrays.add(v.f.data);
    for (const n of this.nodes) for (const i of n.inputs) if (i) this.readers.set(i, (this.readers.get(i) ?? 0) + 1);
    this.planConcats(graph);
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
  async runAll(feeds: Record<string, Tensor>, options?: { signal?: AbortSignal }): Promise<Record<string, Tensor>> { // signal: checked between nodes
    const be = activeBackend();
    if (!be.residentRun) return this.runGraph(feeds, be, options?.signal);
    return be.residentRun(() => this.runGraph(feeds, be, options?.signal), { constants: this.constArrays, outputs: (r) => Object.values(r).map((t) => t.data) });
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
    const pool = new Pool();
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
    const opMs: Record<string, number> = {};
    const nodeMs: RunStats["nodeMs"] = [];
    for (const n of this.nodes) {
      signal?.throwIfAborted();
      const args = n.inputs.map((i) => (i ? env.get(i) : undefined));
      let results: Value[];
      const tn = performance.now();
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
        results = done ? [done] : await runNode(n, args, slot ? slotAlloc(slot) : alloc);
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
      const outNames = finalOutputs(n);
      results.forEach((v, k) => outNames[k] && bind(outNames[k]!, v));
      for (const i of n.inputs) {
        if (!i) continue;
        const l = (left.get(i) ?? 0) - 1;
        left.set(i, l);
        if (l <= 0) release(i);
      }
      for (const o of outNames) if (!left.has(o) && !keep.has(o)) release(o); // read by nobody
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
    this.lastRun = { peakBytes: pool.peakBytes, ms: performance.now() - t0, opMs, nodeMs, concatsInPlace };
    return out;
  }
}

/** Ops whose float tensors pass only through backend calls (or are views: Reshape and the like). */
const BACKEND_ONLY = new Set([
  "Conv", "ConvTranspose", "InstanceNormalization", "BatchNormalization", "Relu", "LeakyRelu", "Sigmoid", "PRelu", "Add", "Mul",
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
export async function runNode(n: GraphNode, a: (Value | undefined)[], alloc: (shape: number[]) => Tensor): Promise<Value[]> {
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
      if (a[0] && a[1] && "f" in a[0] && "f" in a[1]) return [{ f: await (n.opType === "Add" ? ops.add : ops.mul)(a[0].f, a[1].f, { alloc }) }];
      const x = I(a[0], "A"), y = I(a[1], "B");
      const len = Math.max(x.length, y.length);
      const r = Array.from({ length: len }, (_, i) => (n.opType === "Add" ? x[x.length === 1 ? 0 : i]! + y[y.length === 1 ? 0 : i]! : x[x.length === 1 ? 0 : i]! * y[y.length === 1 ? 0 : i]!));
      return [{ ints: r, shape: x.length >= y.length ? shapeOf(a[0]!) : shapeOf(a[1]!) }];
    }
    case "Concat": {
      const axis = (at.axis as number) ?? 0;
      if (a.every((v) => v && "f" in v)) return [{ f: await ops.concat(a.map((v) => (v as { f: Tensor }).f), axis, { alloc }) }];
      const all = a.flatMap((v, k) => I(v, `input ${k}`));
      return [{ ints: all, shape: [all.length] }];
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
      const data = I(a[0], "data"), idx = I(a[1], "indices");
      const r = idx.map((i) => data[i < 0 ? i + data.length : i]!);
      return [{ ints: r, shape: shapeOf(a[1]!).length ? [r.length] : [] }];
    }
    case "Unsqueeze":
    case "Squeeze": {
      const axes = a[1] ? I(a[1], "axes") : ((at.axes as number[]) ?? []);
      const v = a[0]!;
      const s = shapeOf(v);
      let ns: number[];
      if (n.opType === "Unsqueeze") {
        ns = [...s];
        const rank = s.length + axes.length;
        for (const ax of axes.map((x) => (x < 0 ? x + rank : x)).sort((p, q) => p - q)) ns.splice(ax, 0, 1);
      } else {
        const drop = new Set((axes.length ? axes : s.map((d, i) => (d === 1 ? i : -1)).filter((i) => i >= 0)).map((x) => (x < 0 ? x + s.length : x)));
        ns = s.filter((_, i) => !drop.has(i));
      }
      return ["f" in v ? reshapeView(v.f, ns) : { ints: v.ints, shape: ns }];
    }
    case "Cast": {
      const v = a[0]!;
      const to = at.to as number;
      if (to === 1) return ["f" in v ? v : { f: { data: Float32Array.from(v.ints), shape: v.shape.length ? v.shape : [1] } }];
      return ["f" in v ? { ints: Array.from(v.f.data, Math.trunc), shape: v.f.shape } : v];
    }
    case "Slice": {
      const data = I(a[0], "data"), starts = I(a[1], "starts"), ends = I(a[2], "ends");
      if (shapeOf(a[0]!).length > 1) throw new Error("Slice runs on 1-D shape tensors only");
      const step = a[4] ? I(a[4], "steps")[0]! : 1;
      const clamp = (x: number) => Math.max(0, Math.min(data.length, x < 0 ? x + data.length : x));
      const r: number[] = [];
      for (let i = clamp(starts[0]!); step > 0 ? i < clamp(ends[0]!) : i > clamp(ends[0]!); i += step) r.push(data[i]!);
      return [{ ints: r, shape: [r.length] }];
    }
    case "Reshape": {
      const x = F(a[0], "data");
      const want = I(a[1], "shape").map((d, i) => (d === 0 && !at.allowzero ? x.shape[i]! : d));
      const known = prod(want.filter((d) => d !== -1));
      return [reshapeView(x, want.map((d) => (d === -1 ? x.data.length / known : d)))];
    }
    case "Flatten": {
      const x = F(a[0], "input");
      const ax = (at.axis as number) ?? 1;
      return [reshapeView(x, [prod(x.shape.slice(0, ax)), prod(x.shape.slice(ax))])];
    }
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
 * model's metadata_props, else defaults. A model the engine cannot run fails here.
 */
export async function loadModel(onnxPathOrBytes: string | Uint8Array, config?: Partial<ModelConfig>): Promise<Model> {
  if (typeof onnxPathOrBytes !== "string" && !(onnxPathOrBytes instanceof Uint8Array)) {
    throw new TypeError(`Expected a file path or the model's bytes (Uint8Array) for onnxPathOrBytes but received ${typeof onnxPathOrBytes}`);
  }
  const graph = await parseModel(onnxPathOrBytes);
  const name = typeof onnxPathOrBytes === "string" ? basename(onnxPathOrBytes).replace(/\.onnx$/i, "") : (graph.metadata.name ?? "model");
  const cfg = await readModelConfig(typeof onnxPathOrBytes === "string" ? onnxPathOrBytes : null, graph.metadata, config);
  return new Model(graph, name, cfg);
}
