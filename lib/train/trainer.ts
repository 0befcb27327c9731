/**
 * Supervised training in the engine: patches sampled from labelled volumes (a third centred on a
 * bleed, as nnU-Net oversamples foreground), left-right flips and intensity jitter, nnU-Net's
 * CE + soft-Dice loss, backpropagation through the ONNX graph (native kernels where they load),
 * Adam or SGD with Nesterov momentum, validation Dice through segment() and evaluate(); the result
 * is the same ONNX file with trained weights, plus its config sidecar.
 */
import { invalidParameterError } from "../is.js";
import { evaluate } from "../metrics/evaluate.js";
import { BHSD_WINDOW, type ModelConfig } from "../model/config.js";
import { parseModel, type Graph } from "../model/graph.js";
import { loadModel } from "../model/model.js";
import { replaceInitializers } from "../model/onnx-proto.js";
import { assertVolume } from "../volume.js";
import { normalize, segment } from "../model/segment.js";
import { prng } from "../random.js";
import type { Volume } from "../types.js";
import { backprop, BufferPool, forward } from "./backprop.js";
import { Adam, SgdNesterov } from "./optim.js";
import { consistencyLoss, emaUpdate, milLoss, rampWeight } from "./semi.js";
import { buildUNet, DEMO_UNET, type UNetSpec } from "./unet.js";

export interface LabelledCase {
  ct: Volume;
  labels: Volume;
  /** The case's name (its file), for messages. */
  name?: string;
}

/** A case with slice-level labels only: slices[z][c − 1] says whether class c is on slice z (null: not known). */
export interface SliceLabelledCase {
  ct: Volume;
  slices: (boolean | null)[][];
  /** The case's name (its file), for messages. */
  name?: string;
}

/** The semi-supervised terms (BHSD's setting: voxel labels for some cases, slice labels for others). */
export interface SemiOptions {
  cases: SliceLabelledCase[];
  /** Patch for these cases, [z, y, x]: whole slices in-plane by default, so that a slice's label speaks for the patch. */
  patch?: [number, number, number];
  /** Patches per step (default 1). */
  batch?: number;
  /** Weight of the multiple-instance loss (default 1). */
  mil?: number;
  /** Weight of the mean-teacher consistency term, ramped up over `rampSteps` (default 1, steps / 4). */
  consistency?: number;
  rampSteps?: number;
  /** The teacher's EMA decay (default 0.99). */
  ema?: number;
}

export interface TrainProgress {
  step: number;
  steps: number;
  loss: number;
  /** The semi-supervised terms of this step (when there are slice-labelled cases). */
  mil?: number;
  consistency?: number;
  /** Mean Dice over the classes present, on the validation cases (at each evaluation). */
  valDice?: number;
  elapsedS: number;
}

export interface TrainOptions {
  train: LabelledCase[];
  validation?: LabelledCase[];
  spec?: UNetSpec;
  /** Patch [z, y, x] (default [16, 64, 64]) and batch size (default 2). */
  patch?: [number, number, number];
  batch?: number;
  steps?: number;
  optimizer?: "adam" | "sgd";
  lr?: number;
  seed?: number;
  /**
   * Fraction of patches centred on a bleed voxel (nnU-Net: 1/3). As nnU-Net samples them, a class is
   * drawn first among those the case has, then a voxel of it, so that small classes are seen as often as large ones.
   */
  foreground?: number;
  /** Dice pooled over the batch (nnU-Net's batch_dice) instead of per sample (the default, training.md). */
  batchDice?: boolean;
  /** Learning-rate schedule: nnU-Net's poly, lr · (1 − step / steps)^0.9 (default), or constant. */
  schedule?: "poly" | "constant";
  /**
   * Start the head's background bias at the training data's prior, ln((C − 1) · π / (1 − π)) with π the
   * background fraction held to [0.5, 0.99] (Lin et al.'s prior initialisation; default true): the untrained network then
   * already calls most voxels background, and the first steps learn bleeds instead of the background.
   */
  backgroundPrior?: boolean;
  /** Slice-labelled cases and the semi-supervised terms' weights. */
  semi?: SemiOptions;
  /** Evaluate on the validation cases every this many steps (default steps / 4). */
  evalEvery?: number;
  onProgress?: (p: TrainProgress) => void;
}

export interface TrainResult {
  onnx: Uint8Array;
  config: Partial<ModelConfig>;
  history: TrainProgress[];
}

/** Mean Dice over the classes present in the ground truth, of a model on some cases. */
export async function validationDice(onnx: Uint8Array, config: Partial<ModelConfig>, cases: LabelledCase[]): Promise<number> {
  const model = await loadModel(onnx, config);
  const dices: number[] = [];
  try {
    for (const c of cases) {
      const { labels } = await segment(c.ct, model, { cleanup: { minVoxels: 10 } });
      const m = await evaluate(c.labels, labels);
      for (const k of m.classes) if (m.perClass[String(k)]!.tp + m.perClass[String(k)]!.fn > 0) dices.push(m.perClass[String(k)]!.dice);
    }
  } finally {
    model.dispose(); // (one model an evaluation: its engine memory back now)
  }
  return dices.length ? dices.reduce((a, b) => a + b, 0) / dices.length : NaN;
}

/** Each axis' total stride: a patch along it must divide by it (the U-Net halves and concatenates back). */
const strideOf = (spec: UNetSpec) => [0, 1, 2].map((a) => spec.strides.reduce((m, st) => m * st[a]!, 1));

/** The patch asked for, checked against the network, or `wanted` rounded up to its strides and held to 1024. */
function patchFor(name: string, given: unknown, wanted: number[], div: number[]): [number, number, number] {
  if (given === undefined) {
    if (div.some((v) => v > 1024))
      throw invalidParameterError(name, "a network whose total stride along each axis is at most 1024", `strides ${div.join(", ")}`);
    return wanted.map((v, a) => Math.min(Math.ceil(v / div[a]!) * div[a]!, Math.floor(1024 / div[a]!) * div[a]!)) as [
      number,
      number,
      number,
    ];
  }
  if (!Array.isArray(given) || given.length !== 3 || !given.every((v, a) => Number.isInteger(v) && v > 0 && v % div[a]! === 0 && v <= 1024))
    throw invalidParameterError(
      name,
      `three positive integers [z, y, x], each a multiple of the network's total stride along it (${div.join(", ")}), at most 1024`,
      given,
    );
  return given as [number, number, number];
}

/**
 * Every case checked before anything is built, allocated or trained (a bad validation case found
 * at the first evaluation threw the run away): a CT and labels on one grid, labels the network's
 * classes. Returns the count of background voxels and of all voxels.
 */
function checkCases(cases: unknown, name: string, classes: number): { bg: number; n: number } {
  if (!Array.isArray(cases)) throw invalidParameterError(name, "an array of { ct, labels } cases", cases);
  let bg = 0,
    n = 0;
  cases.forEach((c: LabelledCase, k) => {
    const what = `${name}[${k}]${typeof c?.name === "string" ? ` (case ${c.name})` : ""}`;
    if (typeof c !== "object" || c === null) throw invalidParameterError(what, "{ ct, labels }", c);
    assertVolume(`${what}.ct`, c.ct);
    assertVolume(`${what}.labels`, c.labels);
    if (c.labels.dims.some((d, a) => d !== c.ct.dims[a]))
      throw new RangeError(
        `${what}: labels are ${c.labels.dims.join("×")} voxels but the CT is ${c.ct.dims.join("×")}; they must be one grid`,
      );
    // A transposed or flipped truth of the same dims: its affine's axes say so. Only the orientation
    // is compared (each voxel axis's main world axis and sign): tools differ in origins, gantry-tilt
    // shears and qform rounding by millimetres (evaluate warns of those), and a truth written
    // without orientation (pixdim only) says nothing.
    if (c.labels.meta?.affineSource !== "pixdim" && c.ct.meta?.affineSource !== "pixdim") {
      const axis = (A: readonly number[], col: number) => {
        const v = [0, 1, 2].map((r) => A[4 * r + col]!);
        const k = v.reduce((m, x, i) => (Math.abs(x) > Math.abs(v[m]!) ? i : m), 0);
        return `${v[k]! < 0 ? "-" : "+"}${"xyz"[k]}`;
      };
      const ct = [0, 1, 2].map((col) => axis(c.ct.affine, col)).join(" "),
        lab = [0, 1, 2].map((col) => axis(c.labels.affine, col)).join(" ");
      if (ct !== lab)
        throw new RangeError(`${what}: the labels' voxel axes run along ${lab} but the CT's along ${ct}; they must be one grid`);
    }
    const d = c.labels.data;
    for (let i = 0; i < d.length; i++) {
      const l = d[i]!;
      // the loss indexes its sums by label: a value past the network's classes must not reach it
      if (!(l >= 0 && l < classes && Number.isInteger(l)))
        throw new RangeError(`${what}: label ${l} at voxel ${i} is not one of the network's classes 0–${classes - 1}`);
      if (!l) bg++;
    }
    n += d.length;
  });
  return { bg, n };
}

/** Per class present, in order of first appearance, the indices of its voxels (typed: a volume's worth of them is no JavaScript array). */
function voxelsByClass(lab: ArrayLike<number>): (Uint32Array | Float64Array)[] {
  const count = new Map<number, number>();
  for (let i = 0; i < lab.length; i++) {
    const l = lab[i]!;
    if (l) count.set(l, (count.get(l) ?? 0) + 1);
  }
  const lists = new Map([...count].map(([l, k]) => [l, { at: 0, idx: lab.length < 2 ** 32 ? new Uint32Array(k) : new Float64Array(k) }]));
  for (let i = 0; i < lab.length; i++) {
    const l = lab[i]!;
    if (l) {
      const e = lists.get(l)!;
      e.idx[e.at++] = i;
    }
  }
  return [...lists.values()].map((e) => e.idx);
}

export async function train(o: TrainOptions): Promise<TrainResult> {
  if (o.schedule !== undefined && o.schedule !== "poly" && o.schedule !== "constant")
    throw invalidParameterError("options.schedule", '"poly" or "constant"', o.schedule);
  const spec = o.spec ?? DEMO_UNET;
  // the U-Net halves a patch once per strided stage and concatenates the halves back: each axis
  // must divide by the product of the strides along it (the default, 16×64×64, is rounded up to it)
  const div = strideOf(spec);
  const patch = patchFor("options.patch", o.patch, [16, 64, 64], div);
  const count = (name: string, v: unknown, def: number, max: number) => {
    if (v !== undefined && !(Number.isInteger(v) && (v as number) >= 1 && (v as number) <= max))
      throw invalidParameterError(name, `an integer from 1 to ${max}`, v);
    return (v as number | undefined) ?? def;
  };
  const batch = count("options.batch", o.batch, 2, 1024),
    steps = count("options.steps", o.steps, 200, 1e9);
  count("options.evalEvery", o.evalEvery, 1, 1e9);
  if (o.optimizer !== undefined && o.optimizer !== "adam" && o.optimizer !== "sgd")
    throw invalidParameterError("options.optimizer", '"adam" or "sgd"', o.optimizer);
  if (o.lr !== undefined && !(typeof o.lr === "number" && o.lr > 0 && Number.isFinite(o.lr)))
    throw invalidParameterError("options.lr", "a positive finite number", o.lr);
  if (o.foreground !== undefined && !(typeof o.foreground === "number" && o.foreground >= 0 && o.foreground <= 1))
    throw invalidParameterError("options.foreground", "a number from 0 to 1", o.foreground);
  if (o.seed !== undefined && !Number.isSafeInteger(o.seed)) throw invalidParameterError("options.seed", "an integer", o.seed);
  // every case checked before anything is built or allocated; the same pass counts background
  const { bg, n: nLab } = checkCases(o.train, "options.train", spec.classes);
  if (o.train.length === 0) throw invalidParameterError("options.train", "at least one case", o.train);
  if (o.validation !== undefined) checkCases(o.validation, "options.validation", spec.classes);
  const rnd = prng(o.seed ?? 1);
  const initial = buildUNet(spec, o.seed ?? 1);
  const graph: Graph = await parseModel(initial);
  if (o.backgroundPrior ?? true) {
    const pi = Math.min(0.99, Math.max(0.5, nLab ? bg / nLab : 0.5));
    const head = graph.nodes[graph.nodes.length - 1]!;
    const bias = head.opType === "Conv" && head.inputs[2] ? graph.initializers.get(head.inputs[2])?.f32 : undefined;
    if (bias) bias[0] = Math.log(((bias.length - 1) * pi) / (1 - pi));
  }
  const params = [...graph.initializers.entries()].filter(([, t]) => t.f32).map(([k, t]) => [k, t.f32!] as const);
  const lr = o.lr ?? (o.optimizer === "sgd" ? 1e-2 : 2e-3);
  const opts = new Map(
    params.map(([k, p]) => [
      k,
      o.optimizer === "sgd" ? new SgdNesterov(p.length, { lr, momentum: 0.99, weightDecay: 3e-5 }) : new Adam(p.length, { lr }),
    ]),
  );
  const config: Partial<ModelConfig> = {
    patchSize: patch,
    normalization: BHSD_WINDOW,
    targetSpacing: o.train[0] ? [o.train[0].ct.spacing[2], o.train[0].ct.spacing[1], o.train[0].ct.spacing[0]] : null,
    // patches are flipped left-right only (a head is not symmetric front to back or top to bottom)
    mirrorAxes: [2],
  };
  // normalised images and labels, with each case's bleed voxels for oversampling
  const data = o.train.map((c) => ({
    img: normalize(c.ct.data, BHSD_WINDOW),
    lab: c.labels.data,
    dims: c.ct.dims,
    fg: voxelsByClass(c.labels.data),
  }));
  const [pd, ph, pw] = patch,
    pv = pd * ph * pw;
  const x = new Float32Array(batch * pv),
    t = new Int32Array(batch * pv);
  const history: TrainProgress[] = [];
  const t0 = performance.now();
  const every = o.evalEvery ?? Math.max(1, Math.floor(steps / 4));
  const snapshot = () => replaceInitializers(initial, new Map(params.map(([k, p]) => [k, p])));
  const pool = new BufferPool(); // each step's activations and gradients reuse the last step's buffers
  const semi = o.semi?.cases.length ? semiTrainer(o.semi, graph, params, rnd, steps, pool, div) : undefined;
  for (let step = 1; step <= steps; step++) {
    if ((o.schedule ?? "poly") === "poly") for (const opt of opts.values()) opt.lr = lr * (1 - (step - 1) / steps) ** 0.9;
    for (let b = 0; b < batch; b++) {
      const d = data[Math.floor(rnd() * data.length)]!;
      const [nx, ny, nz] = d.dims;
      let cz: number, cy: number, cx: number;
      if (d.fg.length && rnd() < (o.foreground ?? 1 / 3)) {
        const cls = d.fg[Math.floor(rnd() * d.fg.length)]!;
        const i = cls[Math.floor(rnd() * cls.length)]!;
        {
          cx = i % nx;
          cy = Math.floor(i / nx) % ny;
          cz = Math.floor(i / (nx * ny));
        }
      } else {
        cx = Math.floor(rnd() * nx);
        cy = Math.floor(rnd() * ny);
        cz = Math.floor(rnd() * nz);
      }
      const z0 = cz - (pd >> 1),
        y0 = cy - (ph >> 1),
        x0 = cx - (pw >> 1);
      const flip = rnd() < 0.5,
        scale = 0.9 + 0.2 * rnd(),
        shift = 0.1 * (rnd() - 0.5);
      for (let a = 0; a < pd; a++)
        for (let bb = 0; bb < ph; bb++)
          for (let c = 0; c < pw; c++) {
            const o2 = b * pv + (a * ph + bb) * pw + (flip ? pw - 1 - c : c);
            const z = z0 + a,
              y = y0 + bb,
              xx = x0 + c;
            if (z < 0 || y < 0 || xx < 0 || z >= nz || y >= ny || xx >= nx) {
              x[o2] = 0;
              t[o2] = 0;
            } else {
              const i = (z * ny + y) * nx + xx;
              x[o2] = d.img[i]! * scale + shift;
              t[o2] = d.lab[i]!;
            }
          }
    }
    const r = await backprop(graph, { data: x, shape: [batch, 1, pd, ph, pw] }, t, { batchDice: o.batchDice ?? false, pool });
    let semiTerms: { mil: number; consistency: number } | undefined;
    if (semi) {
      const u = await semi.step(step);
      semiTerms = u.terms;
      for (const [k, g] of u.grads) {
        const s0 = r.paramGrads.get(k);
        if (s0) for (let i = 0; i < g.data.length; i++) s0.data[i]! += g.data[i]!;
        else r.paramGrads.set(k, g);
      }
    }
    for (const [k, p] of params) {
      const g = r.paramGrads.get(k);
      if (g) opts.get(k)!.step(p, g.data);
    }
    semi?.follow();
    // a diverged run (too large a learning rate) would go on to write a model of NaN weights
    const bad = !Number.isFinite(r.loss)
      ? `the loss is ${r.loss}`
      : semiTerms && !Number.isFinite(semiTerms.mil)
        ? `the multiple-instance loss is ${semiTerms.mil}`
        : semiTerms && !Number.isFinite(semiTerms.consistency)
          ? `the consistency term is ${semiTerms.consistency}`
          : undefined;
    if (bad) throw new Error(`training diverged at step ${step}: ${bad} (learning rate ${lr}); try a smaller one`);
    const prog: TrainProgress = { step, steps, loss: r.loss, ...semiTerms, elapsedS: (performance.now() - t0) / 1000 };
    if (o.validation?.length && (step % every === 0 || step === steps))
      prog.valDice = await validationDice(snapshot(), config, o.validation);
    history.push(prog);
    o.onProgress?.(prog);
  }
  for (const [k, p] of params)
    if (!p.every(Number.isFinite))
      throw new Error(`training diverged in its last step: weights of ${k} are not finite (learning rate ${lr})`);
  return { onnx: snapshot(), config, history };
}

/**
 * Per step on slice-labelled cases: a mean teacher (the student's weights, averaged) predicts the
 * patch under other intensity noise; the student's loss is the multiple-instance loss against the
 * slice labels plus the ramped consistency with the teacher; its gradients join the supervised
 * ones, and the teacher follows the student after each optimiser step.
 */
function semiTrainer(
  o: SemiOptions,
  graph: Graph,
  params: (readonly [string, Float32Array])[],
  rnd: () => number,
  steps: number,
  pool: BufferPool,
  div: number[],
) {
  if (o.batch !== undefined && !(Number.isInteger(o.batch) && o.batch >= 1 && o.batch <= 1024))
    throw invalidParameterError("options.semi.batch", "an integer from 1 to 1024", o.batch);
  o.cases.forEach((c, k) => {
    const what = `options.semi.cases[${k}]${typeof c?.name === "string" ? ` (case ${c.name})` : ""}`;
    assertVolume(`${what}.ct`, c.ct);
    if (!Array.isArray(c.slices) || c.slices.length !== c.ct.dims[2])
      throw invalidParameterError(`${what}.slices`, `one row per slice (${c.ct.dims[2]})`, c.slices);
  });
  const teacher: Graph = {
    ...graph,
    initializers: new Map([...graph.initializers].map(([k, t]) => [k, t.f32 ? { ...t, f32: t.f32.slice() } : t])),
  };
  const tParams = new Map([...teacher.initializers].filter(([, t]) => t.f32).map(([k, t]) => [k, t.f32!]));
  const data = o.cases.map((c) => ({
    img: normalize(c.ct.data, BHSD_WINDOW),
    dims: c.ct.dims,
    slices: c.slices,
    pos: c.slices.flatMap((s, z) => (s.some(Boolean) ? [z] : [])),
  }));
  // whole slices in-plane by default (rounded up to the network's strides, at most 1024)
  const d0 = data[0]!.dims;
  const [pd, ph, pw] = patchFor("options.semi.patch", o.patch, [8, d0[1], d0[0]], div);
  const batch = o.batch ?? 1,
    pv = pd * ph * pw;
  const xs = new Float32Array(batch * pv),
    xt = new Float32Array(batch * pv);
  return {
    async step(step: number) {
      const present: (boolean | null)[][][] = [];
      for (let b = 0; b < batch; b++) {
        const d = data[Math.floor(rnd() * data.length)]!;
        const [nx, ny, nz] = d.dims;
        // half the patches around a slice with a bleed, the rest anywhere
        const cz = d.pos.length && rnd() < 0.5 ? d.pos[Math.floor(rnd() * d.pos.length)]! : Math.floor(rnd() * nz);
        const z0 = Math.min(Math.max(0, cz - (pd >> 1)), Math.max(0, nz - pd));
        const y0 = Math.floor(rnd() * Math.max(1, ny - ph + 1)),
          x0 = Math.floor(rnd() * Math.max(1, nx - pw + 1));
        const flip = rnd() < 0.5;
        const [ss, st] = [0.9 + 0.2 * rnd(), 0.9 + 0.2 * rnd()],
          [hs, ht] = [0.1 * (rnd() - 0.5), 0.1 * (rnd() - 0.5)];
        const pres: (boolean | null)[][] = [];
        const whole = ph >= ny && pw >= nx;
        for (let a = 0; a < pd; a++) {
          const z = z0 + a;
          // a positive slice label says nothing about a patch that covers part of the slice
          pres.push(z < nz ? d.slices[z]!.map((v) => (v && !whole ? null : v)) : [false, false, false, false, false]);
          for (let bb = 0; bb < ph; bb++)
            for (let c = 0; c < pw; c++) {
              const o2 = b * pv + (a * ph + bb) * pw + (flip ? pw - 1 - c : c);
              const y = y0 + bb,
                xx = x0 + c;
              const v = z < nz && y < ny && xx < nx ? d.img[(z * ny + y) * nx + xx]! : 0;
              xs[o2] = v * ss + hs;
              xt[o2] = v * st + ht;
            }
        }
        present.push(pres);
      }
      const shape = [batch, 1, pd, ph, pw];
      const tLogits = await forward(teacher, { data: xt, shape });
      const wm = o.mil ?? 1,
        wc = rampWeight(step, o.rampSteps ?? Math.max(1, Math.floor(steps / 4)), o.consistency ?? 1);
      let terms = { mil: 0, consistency: 0 };
      const r = await backprop(
        graph,
        { data: xs, shape },
        (logits) => {
          const m = milLoss(logits, present),
            c = consistencyLoss(logits, tLogits);
          terms = { mil: m.loss, consistency: c.loss };
          const dl = new Float32Array(logits.data.length);
          for (let i = 0; i < dl.length; i++) dl[i] = wm * m.dlogits.data[i]! + wc * c.dlogits.data[i]!;
          return { loss: wm * m.loss + wc * c.loss, dlogits: { data: dl, shape: logits.shape } };
        },
        { pool },
      );
      return { terms, grads: r.paramGrads };
    },
    follow() {
      for (const [k, p] of params) emaUpdate(tParams.get(k)!, p, o.ema ?? 0.99);
    },
  };
}
