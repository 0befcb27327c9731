/**
 * Reverse-mode differentiation of a whole ONNX U-Net (Conv, ConvTranspose, InstanceNormalization,
 * LeakyRelu/Relu, Concat): the forward keeps every intermediate, the loss gives d logits, and the
 * nodes are walked backwards. Returns the loss, the gradient with respect to the input, and the
 * gradients of the parameters (by initializer name) — the basis of training in the engine.
 */
import { activeBackend } from "../backends/index.js";
import { fuseActivations, parseModel, type Graph, type GraphNode } from "../model/graph.js";
import { runNode } from "../model/ops.js";
import { allocArray } from "../volume.js";
import type { Tensor } from "../types.js";
import { instanceNormBackward, leakyReluBackward } from "./grad.js";
import { conv3dBackwardFast, convTranspose3dBackwardFast, dcAndCeLossFast } from "./fastgrad.js";

const T3 = (a: unknown, d: number): [number, number, number] => (Array.isArray(a) ? (a as [number, number, number]) : [d, d, d]);

const DIFFERENTIABLE = new Set(["Conv", "ConvTranspose", "InstanceNormalization", "LeakyRelu", "Relu", "Concat"]);

export interface BackpropResult {
  ce: number;
  diceLoss: number;
  loss: number;
  dx: Tensor;
  paramGrads: Map<string, Tensor>;
}

/** Adds a gradient into the map; the first one is kept as it is (every producer hands over a fresh array). */
function addInto(grads: Map<string, Float32Array>, name: string, g: Float32Array) {
  const cur = grads.get(name);
  if (!cur) grads.set(name, g);
  else for (let i = 0; i < cur.length; i++) cur[i]! += g[i]!;
}

const allocT = (shape: number[]): Tensor => ({
  data: allocArray(
    "float32",
    shape.reduce((p, q) => p * q, 1),
    "intermediate",
  ) as Float32Array,
  shape,
});

/**
 * Float32 buffers kept from one training step for the next. A step allocates ~100 MB of
 * activations and gradients; freshly allocated, each one costs page faults and V8's major
 * collections of dead ArrayBuffers (measured ≈ 100 ms a step, a fifth of it). With a pool, a step
 * takes the buffers the last one gave back. Buffers come back zeroed, as fresh ones do.
 */
export class BufferPool {
  private readonly free = new Map<number, Float32Array[]>();
  take(n: number, what = "intermediate"): Float32Array {
    const b = this.free.get(n)?.pop();
    if (b) return b.fill(0);
    return allocArray("float32", n, what) as Float32Array;
  }
  give(b: Float32Array): void {
    if (b.byteOffset !== 0 || b.length !== b.buffer.byteLength / 4) return; // views are not pooled
    const l = this.free.get(b.length);
    if (l) {
      if (!l.includes(b)) l.push(b);
    } else this.free.set(b.length, [b]);
  }
}

/**
 * The nodes as the forward runs them: a ReLU/LeakyReLU (slope ≥ 0) fused into the Conv or instance
 * norm before it, whose backward then gates the gradient by the sign of the fused output.
 */
const plans = new WeakMap<Graph, GraphNode[]>();
function plan(graph: Graph): GraphNode[] {
  let p = plans.get(graph);
  if (!p) {
    for (const n of graph.nodes)
      if (!DIFFERENTIABLE.has(n.opType)) throw new Error(`node ${n.name}: backprop does not support ${n.opType} yet`);
    p = fuseActivations(graph);
    // with a negative slope the output's sign is not the input's: then the graph runs as it is
    if (p.some((n) => n.fusedAct && n.fusedAct.alpha < 0)) p = graph.nodes;
    plans.set(graph, p);
  }
  return p;
}

const outName = (n: GraphNode) => n.fusedAct?.output ?? n.outputs[0]!;

/** Runs every node, keeping each intermediate in `env` (which holds the initializers and the input). */
async function forwardInto(graph: Graph, env: Map<string, Tensor>, alloc: (shape: number[]) => Tensor = allocT): Promise<void> {
  const get = (n: string) => {
    const t = env.get(n);
    if (!t) throw new Error(`value ${n} is missing`);
    return t;
  };
  for (const n of plan(graph)) {
    const [y] = await runNode(
      n,
      n.inputs.map((i) => (i ? { f: get(i) } : undefined)),
      alloc,
    );
    env.set(outName(n), (y as { f: Tensor }).f);
  }
}

/**
 * Runs a training computation with the backend's precise convolutions held (native: F(2×…)
 * Winograd tiles; see TensorBackend.preciseConvolutions), released however it ends.
 */
async function precisely<T>(f: () => Promise<T>): Promise<T> {
  const be = activeBackend();
  be.preciseConvolutions?.(true);
  try {
    return await f();
  } finally {
    be.preciseConvolutions?.(false);
  }
}

/** The logits of a graph whose initializers may have been changed in place (a mean teacher's). */
export function forward(graph: Graph, x: Tensor): Promise<Tensor> {
  return precisely(() => forwardLogits(graph, x));
}

async function forwardLogits(graph: Graph, x: Tensor): Promise<Tensor> {
  const env = new Map<string, Tensor>();
  for (const [k, t] of graph.initializers) if (t.f32) env.set(k, { data: t.f32, shape: t.dims });
  env.set(graph.inputs[0]!.name, x);
  await forwardInto(graph, env);
  return env.get(graph.outputs[0]!)!;
}

/** A loss on the logits, with its gradient (semi-supervised terms: lib/train/semi.ts). */
export type LossFn = (logits: Tensor) => { loss: number; dlogits: Tensor; ce?: number; diceLoss?: number };

/**
 * Forward and backward through the graph. `target`: voxel labels for nnU-Net's CE + soft Dice, or
 * any loss function of the logits. With `pool`, intermediates come from it and go back to it when
 * the step ends (a training loop passes the same pool every step); the result's arrays are never
 * pooled, so they stay the caller's.
 */
export function backprop(
  model: Graph | Uint8Array | string,
  x: Tensor,
  target: ArrayLike<number> | LossFn,
  opts: { batchDice?: boolean; pool?: BufferPool } = {},
): Promise<BackpropResult> {
  return precisely(() => backpropOnce(model, x, target, opts));
}

async function backpropOnce(
  model: Graph | Uint8Array | string,
  x: Tensor,
  target: ArrayLike<number> | LossFn,
  opts: { batchDice?: boolean; pool?: BufferPool },
): Promise<BackpropResult> {
  const graph = model instanceof Uint8Array || typeof model === "string" ? await parseModel(model) : model;
  const env = new Map<string, Tensor>();
  for (const [k, t] of graph.initializers) if (t.f32) env.set(k, { data: t.f32, shape: t.dims });
  env.set(graph.inputs[0]!.name, x);
  const get = (n: string) => {
    const t = env.get(n);
    if (!t) throw new Error(`value ${n} is missing`);
    return t;
  };
  const geo = (n: GraphNode) => ({
    stride: T3(n.attrs.strides, 1),
    padding: (Array.isArray(n.attrs.pads) ? (n.attrs.pads as number[]).slice(0, 3) : [0, 0, 0]) as [number, number, number],
    dilation: T3(n.attrs.dilations, 1),
    groups: (n.attrs.group as number) ?? 1,
  });
  const pool = opts.pool;
  const taken: Float32Array[] = []; // what this step took from the pool (given back at the end)
  const take = (n: number): Float32Array => {
    if (!pool) return allocArray("float32", n, "intermediate") as Float32Array;
    const b = pool.take(n);
    taken.push(b);
    return b;
  };
  const takeT = (shape: number[]): Tensor => ({ data: take(shape.reduce((p, q) => p * q, 1)), shape });
  // the forward is the executor's own node runner, without fusion or pooling: every intermediate is kept
  await forwardInto(graph, env, takeT);
  const logits = get(graph.outputs[0]!);
  const loss =
    typeof target === "function"
      ? target(logits)
      : dcAndCeLossFast(logits, target, 1e-5, opts.batchDice ?? false, take(logits.data.length));
  // the fused loss hands over a fresh array; a loss function's may be its own: copied
  const grads = new Map<string, Float32Array>([
    [graph.outputs[0]!, typeof target === "function" ? Float32Array.from(loss.dlogits.data) : (loss.dlogits.data as Float32Array)],
  ]);
  const paramGrads = new Map<string, Tensor>();
  const asT = (name: string, g: Float32Array): Tensor => ({ data: g, shape: get(name).shape });
  const nodes = plan(graph);
  const be = activeBackend();
  for (let k = nodes.length - 1; k >= 0; k--) {
    const n = nodes[k]!;
    const out = outName(n);
    const gy = grads.get(out);
    if (!gy) continue;
    const [i0, i1, i2] = n.inputs;
    const param = (name: string | undefined, g: Tensor) =>
      name && graph.initializers.has(name) && addInto(grads, name, g.data as Float32Array);
    if (n.opType === "InstanceNormalization" && be.instanceNormBackward) {
      // native: the activation's gate and the norm's backward in one pass
      const x = get(i0!),
        gamma = get(i1!),
        [N, C] = x.shape as [number, number];
      const dx = takeT(x.shape).data as Float32Array,
        dg = new Float32Array(C),
        db = new Float32Array(C);
      await be.instanceNormBackward(
        x.data as Float32Array,
        n.fusedAct ? (get(out).data as Float32Array) : null,
        gy,
        N,
        C,
        x.data.length / (N * C),
        gamma.data as Float32Array,
        (n.attrs.epsilon as number) ?? 1e-5,
        n.fusedAct?.alpha ?? 1,
        dx,
        dg,
        db,
      );
      addInto(grads, i0!, dx);
      param(i1, { data: dg, shape: [C] });
      param(i2, { data: db, shape: [C] });
      grads.delete(out);
      continue;
    }
    // a fused activation first: its derivative from the sign of the fused output, in place
    if (n.fusedAct) leakyReluBackward(get(out), { data: gy, shape: get(out).shape }, n.fusedAct.alpha, gy);
    const dy = asT(out, gy);
    switch (n.opType) {
      case "Conv":
      case "ConvTranspose": {
        const r = await (n.opType === "Conv" ? conv3dBackwardFast : convTranspose3dBackwardFast)(get(i0!), get(i1!), dy, geo(n), take);
        addInto(grads, i0!, r.dx.data as Float32Array);
        param(i1, r.dw);
        param(i2, r.db);
        break;
      }
      case "InstanceNormalization": {
        const r = instanceNormBackward(get(i0!), get(i1!), dy, (n.attrs.epsilon as number) ?? 1e-5);
        addInto(grads, i0!, r.dx.data as Float32Array);
        param(i1, r.dgamma);
        param(i2, r.dbeta);
        break;
      }
      case "LeakyRelu":
      case "Relu":
        // in place: dy is this node's own gradient, dropped below
        addInto(
          grads,
          i0!,
          leakyReluBackward(get(i0!), dy, n.opType === "Relu" ? 0 : ((n.attrs.alpha as number) ?? 0.01), dy.data as Float32Array)
            .data as Float32Array,
        );
        break;
      case "Concat": {
        const axis = (n.attrs.axis as number) ?? 1;
        if (axis !== 1) throw new Error(`node ${n.name}: backprop of Concat supports axis 1`);
        const [N, , ...sp] = dy.shape as number[];
        const S = sp.reduce((p, q) => p * q, 1),
          Ct = dy.shape[1]!;
        let off = 0;
        for (const name of n.inputs) {
          const C = get(name).shape[1]!;
          const part = take(N! * C * S);
          for (let b = 0; b < N!; b++) part.set(gy.subarray((b * Ct + off) * S, (b * Ct + off + C) * S), b * C * S);
          addInto(grads, name, part);
          off += C;
        }
        break;
      }
    }
    grads.delete(out);
  }
  for (const name of graph.initializers.keys()) {
    const g = grads.get(name);
    if (g) paramGrads.set(name, asT(name, g));
  }
  const dx = grads.get(graph.inputs[0]!.name);
  if (pool) {
    // everything this step took goes back, but what the result hands to the caller
    const kept = new Set<Float32Array>([...paramGrads.values()].map((t) => t.data as Float32Array));
    if (dx) kept.add(dx);
    for (const b of taken) if (!kept.has(b)) pool.give(b);
  }
  return {
    ce: loss.ce ?? NaN,
    diceLoss: loss.diceLoss ?? NaN,
    loss: loss.loss,
    dx: dx ? asT(graph.inputs[0]!.name, dx) : { data: new Float32Array(x.data.length), shape: x.shape },
    paramGrads,
  };
}
