/**
 * evaluate(gt, pred): per-class overlap and surface-distance metrics with exactly the definitions
 * of shared/spec/metrics.md (MONAI's surface-voxel convention, numpy's percentile). Voxel work on
 * the active backend; the formulas here.
 */
import { activeBackend } from "../backends/index.js";
import { assertNumber, invalidParameterError, optionsObject } from "../is.js";
import type { Volume } from "../types.js";
import { allocArray, assertVolume } from "../volume.js";

/** BHSD's classes. */
export const BHSD_CLASSES: Readonly<Record<number, string>> = { 1: "EDH", 2: "IPH", 3: "IVH", 4: "SAH", 5: "SDH" };
export const DEFAULT_CLASSES: readonly number[] = [1, 2, 3, 4, 5];

/** The per-class metrics, keyed as in shared/spec/metrics.md. */
export interface ClassMetrics {
  tp: number;
  fp: number;
  fn: number;
  dice: number;
  iou: number;
  precision: number;
  recall: number;
  volume_gt_ml: number;
  volume_pred_ml: number;
  hd: number;
  hd95: number;
  assd: number;
  nsd: number;
}

export const METRIC_KEYS: readonly (keyof ClassMetrics)[] = [
  "tp",
  "fp",
  "fn",
  "dice",
  "iou",
  "precision",
  "recall",
  "volume_gt_ml",
  "volume_pred_ml",
  "hd",
  "hd95",
  "assd",
  "nsd",
];

export interface CaseMetrics {
  /** perClass[c] for each evaluated class c. */
  perClass: Record<string, ClassMetrics>;
  classes: number[];
  /** Voxel size used (mm), from gt. */
  spacing: [number, number, number];
  nsdToleranceMm: number;
  /** MBH-Seg case-level Dice: mean Dice of the classes present in gt; with none, 1 if pred has none too, else 0. */
  caseDice: number;
  /** Problems that do not stop scoring (affines that differ beyond 1e-3 …). */
  warnings: string[];
}

export interface EvaluateOptions {
  classes?: number[];
  /** NSD tolerance τ in mm (default 1). */
  nsdToleranceMm?: number;
  /** Names for messages (default "gt", "pred"). */
  names?: [string, string];
}

const AFFINE_TOLERANCE = 1e-3;

export function checkClasses(v: unknown): number[] {
  if (v === undefined) return [...DEFAULT_CLASSES];
  if (!Array.isArray(v) || v.length === 0 || !v.every((c) => Number.isInteger(c) && c >= 1 && c <= 255) || new Set(v).size !== v.length) {
    throw invalidParameterError("options.classes", "a non-empty array of distinct integers 1..255", v);
  }
  return [...v] as number[];
}

/**
 * Label values as Uint8Array, refusing (with value and voxel) anything outside 0..maxLabel. Uint8
 * data is used as it is; labelPairStats refuses values above maxLabel, and `explain` then finds
 * the voxel for the message.
 */
async function asLabels(v: Volume, maxLabel: number, what: string): Promise<Uint8Array> {
  if (v.data instanceof Uint8Array) return v.data;
  const out = allocArray("uint8", v.data.length, `${what} labels`) as Uint8Array;
  await activeBackend().narrowLabels(v.data, v.dims, maxLabel, out, what);
  return out;
}

async function explain(v: Volume, maxLabel: number, what: string): Promise<void> {
  await activeBackend().narrowLabels(v.data, v.dims, maxLabel, allocArray("uint8", v.data.length, `${what} labels`) as Uint8Array, what);
}

/** Differences between two volumes' geometry that deserve a warning. */
export function geometryWarnings(a: Volume, b: Volume, names: [string, string]): string[] {
  const w: string[] = [];
  const da = Math.max(...a.affine.map((x, i) => Math.abs(x - b.affine[i]!)));
  if (da > AFFINE_TOLERANCE)
    w.push(
      `${names[0]} and ${names[1]} affines differ by up to ${+da.toPrecision(4)} (beyond ${AFFINE_TOLERANCE}); the masks may not be aligned`,
    );
  const ds = Math.max(...a.spacing.map((x, i) => Math.abs(x - b.spacing[i]!)));
  if (ds > AFFINE_TOLERANCE)
    w.push(`${names[0]} spacing [${a.spacing.join(", ")}] and ${names[1]} spacing [${b.spacing.join(", ")}] differ; ${names[0]}'s is used`);
  return w;
}

export async function evaluate(gt: Volume, pred: Volume, options?: EvaluateOptions): Promise<CaseMetrics> {
  const opts = optionsObject("options", options);
  const names = (opts.names as [string, string] | undefined) ?? ["gt", "pred"];
  if (!Array.isArray(names) || names.length !== 2 || !names.every((x) => typeof x === "string" && x.length > 0 && x.length <= 4096))
    throw invalidParameterError("options.names", "two names (strings of 1–4096 characters) for gt and pred", opts.names);
  assertVolume(names[0], gt);
  assertVolume(names[1], pred);
  const classes = checkClasses(opts.classes);
  const tau = (opts.nsdToleranceMm as number | undefined) ?? 1;
  assertNumber("options.nsdToleranceMm", tau, 0);
  if (gt.dims.some((d, i) => d !== pred.dims[i])) {
    throw new RangeError(`${names[0]} dims [${gt.dims.join(", ")}] and ${names[1]} dims [${pred.dims.join(", ")}] differ`);
  }
  const warnings = geometryWarnings(gt, pred, names);
  const maxLabel = Math.max(5, ...classes);
  const g = await asLabels(gt, maxLabel, names[0]);
  const p = await asLabels(pred, maxLabel, names[1]);
  const b = activeBackend();
  let stats: { counts: Float64Array; boxes: Float64Array };
  try {
    stats = await b.labelPairStats(g, p, gt.dims, maxLabel);
  } catch (e) {
    await explain(gt, maxLabel, names[0]);
    await explain(pred, maxLabel, names[1]);
    throw e;
  }
  const { counts, boxes } = stats;
  const K = maxLabel + 1;
  const [sx, sy, sz] = gt.spacing;
  const voxelMl = (sx * sy * sz) / 1000;

  const overlap = classes.map((c) => {
    const tp = counts[c * K + c]!;
    let gsum = 0,
      psum = 0;
    for (let j = 0; j < K; j++) {
      gsum += counts[c * K + j]!;
      psum += counts[j * K + c]!;
    }
    return { c, tp, fp: psum - tp, fn: gsum - tp, G: gsum, P: psum };
  });
  // Surface distances for the classes present in both masks, each over the box of the two.
  const both = overlap.filter((o) => o.G > 0 && o.P > 0);
  const cls = Int32Array.from(both.map((o) => o.c));
  const bx = new Float64Array(both.length * 6);
  both.forEach((o, k) => {
    const gb = boxes.subarray(o.c * 6, o.c * 6 + 6),
      pb = boxes.subarray((K + o.c) * 6, (K + o.c) * 6 + 6);
    for (let i = 0; i < 3; i++) {
      bx[k * 6 + i] = Math.min(gb[i]!, pb[i]!);
      bx[k * 6 + 3 + i] = Math.max(gb[3 + i]!, pb[3 + i]!);
    }
  });
  const surf = both.length ? await b.surfaceMetrics(g, p, gt.dims, gt.spacing, cls, bx, tau) : new Float64Array(0);

  const perClass: Record<string, ClassMetrics> = {};
  for (const o of overlap) {
    const { tp, fp, fn, G, P } = o;
    const m: ClassMetrics = {
      tp,
      fp,
      fn,
      dice: G + P === 0 ? NaN : (2 * tp) / (2 * tp + fp + fn),
      iou: G + P === 0 ? NaN : tp / (tp + fp + fn),
      precision: P === 0 ? NaN : tp / (tp + fp),
      recall: G === 0 ? NaN : tp / (tp + fn),
      volume_gt_ml: G * voxelMl,
      volume_pred_ml: P * voxelMl,
      hd: NaN,
      hd95: NaN,
      assd: NaN,
      nsd: NaN,
    };
    if (G > 0 !== P > 0) {
      m.hd = m.hd95 = m.assd = Infinity;
      m.nsd = 0;
    } else if (G > 0) {
      const k = both.findIndex((x) => x.c === o.c);
      const [nP, nG, sumPG, sumGP, maxPG, maxGP, p95PG, p95GP, inPG, inGP] = Array.from(surf.subarray(k * 10, k * 10 + 10)) as number[];
      m.hd = Math.max(maxPG!, maxGP!);
      m.hd95 = Math.max(p95PG!, p95GP!);
      m.assd = (sumPG! + sumGP!) / (nP! + nG!);
      m.nsd = (inPG! + inGP!) / (nP! + nG!);
    }
    perClass[String(o.c)] = m;
  }
  const present = overlap.filter((o) => o.G > 0);
  const caseDice = present.length
    ? present.reduce((s, o) => s + perClass[String(o.c)]!.dice, 0) / present.length
    : overlap.every((o) => o.P === 0)
      ? 1
      : 0;
  return { perClass, classes, spacing: [...gt.spacing], nsdToleranceMm: tau, caseDice, warnings };
}
