/**
 * Slice-level labels (shared/spec/metrics.md): per axial slice z and class c, present when the
 * slice holds a voxel of c; `any` when any class is. The RSNA-style CSV form is
 * `slice,EDH,IPH,IVH,SAH,SDH,any` with 0/1 values.
 */
import { invalidParameterError } from "../is.js";
import type { Volume } from "../types.js";
import { assertVolume } from "../volume.js";
import { BHSD_CLASSES, DEFAULT_CLASSES } from "./evaluate.js";

export interface SliceLabels {
  classes: number[];
  /** present[z][k]: class classes[k] on slice z. */
  present: boolean[][];
  any: boolean[];
}

/** Derives slice-level labels from a label volume (z is the axial axis). */
export function slicePresence(volume: Volume, classes: readonly number[] = DEFAULT_CLASSES): SliceLabels {
  assertVolume("volume", volume);
  const [nx, ny, nz] = volume.dims;
  const plane = nx * ny;
  const index = new Map(classes.map((c, k) => [c, k]));
  const present: boolean[][] = [];
  const any: boolean[] = [];
  for (let z = 0; z < nz; z++) {
    const row = classes.map(() => false);
    let found = 0;
    for (let i = z * plane, end = i + plane; i < end && found < classes.length; i++) {
      const v = volume.data[i]!;
      if (v === 0) continue;
      const k = index.get(v);
      if (k !== undefined && !row[k]) {
        row[k] = true;
        found++;
      }
    }
    present.push(row);
    any.push(found > 0);
  }
  return { classes: [...classes], present, any };
}

const nameOf = (c: number) => BHSD_CLASSES[c] ?? `class${c}`;

export function slicesToCsv(s: SliceLabels): string {
  const rows = [["slice", ...s.classes.map(nameOf), "any"].join(",")];
  s.present.forEach((p, z) => rows.push([String(z), ...p.map((b) => (b ? "1" : "0")), s.any[z] ? "1" : "0"].join(",")));
  return rows.join("\n") + "\n";
}

/** Parses the RSNA-style CSV; `any` is read when present and must agree with the classes. */
export function parseSliceCsv(text: string, label = "slice CSV"): SliceLabels {
  const lines = text
    .split(/\r?\n/)
    .map((l) => l.trim())
    .filter((l) => l.length > 0);
  if (lines.length === 0) throw new Error(`${label}: empty`);
  const header = lines[0]!.split(",").map((h) => h.trim());
  if (header[0]?.toLowerCase() !== "slice") throw new Error(`${label}: the first column must be "slice", got "${header[0]}"`);
  const anyCol = header.findIndex((h) => h.toLowerCase() === "any");
  const classCols = header.map((h, i) => [h, i] as const).filter(([, i]) => i > 0 && i !== anyCol);
  const byName = new Map(Object.entries(BHSD_CLASSES).map(([c, n]) => [n.toLowerCase(), Number(c)]));
  const classes = classCols.map(([h]) => {
    const c = byName.get(h.toLowerCase()) ?? (/^class(\d{1,3})$/i.exec(h) ? Number(/^class(\d+)$/i.exec(h)![1]) : NaN);
    // (class 0 is the background: no slice label speaks of it)
    if (!Number.isInteger(c) || c < 1 || c > 255)
      throw new Error(`${label}: unknown class column "${h.slice(0, 64)}" (expected EDH, IPH, IVH, SAH, SDH or class1 … class255)`);
    return c;
  });
  // one column a class: "EDH,class1" named class 1 twice and training took the first
  classes.forEach((c, k) => {
    if (classes.indexOf(c) !== k)
      throw new Error(`${label}: class ${c} has two columns ("${classCols[classes.indexOf(c)]![0]}" and "${classCols[k]![0]}")`);
  });
  const rows = new Map<number, boolean[]>();
  const anyVals = new Map<number, boolean>();
  for (let li = 1; li < lines.length; li++) {
    const cells = lines[li]!.split(",").map((c) => c.trim());
    if (cells.length !== header.length) throw new Error(`${label}: line ${li + 1} has ${cells.length} fields, the header ${header.length}`);
    // (digits only: Number("") is 0 and Number("0x1") is 1)
    const z = /^\d{1,9}$/.test(cells[0]!) ? Number(cells[0]) : NaN;
    if (!Number.isInteger(z)) throw new Error(`${label}: line ${li + 1}: slice "${cells[0]!.slice(0, 64)}" is not a slice index`);
    if (rows.has(z)) throw new Error(`${label}: slice ${z} appears twice`);
    const bit = (s: string, col: string) => {
      if (s === "1" || s.toLowerCase() === "true") return true;
      if (s === "0" || s.toLowerCase() === "false") return false;
      throw new Error(`${label}: line ${li + 1}, column ${col}: "${s}" is not 0 or 1`);
    };
    rows.set(
      z,
      classCols.map(([h, i]) => bit(cells[i]!, h)),
    );
    if (anyCol >= 0) anyVals.set(z, bit(cells[anyCol]!, "any"));
  }
  let nz = 0; // (not Math.max(...keys): a spread of 120 000 rows overflows the stack)
  for (const z of rows.keys()) nz = Math.max(nz, z + 1);
  const present: boolean[][] = [];
  const any: boolean[] = [];
  for (let z = 0; z < nz; z++) {
    const p = rows.get(z);
    if (!p) throw new Error(`${label}: slice ${z} is missing (slices must be 0..${nz - 1})`);
    present.push(p);
    const a = p.some(Boolean);
    if (anyVals.has(z) && anyVals.get(z) !== a)
      throw new Error(`${label}: slice ${z}: any = ${anyVals.get(z) ? 1 : 0} disagrees with its classes`);
    any.push(a);
  }
  return { classes, present, any };
}

export interface SliceScore {
  tp: number;
  fp: number;
  fn: number;
  tn: number;
  /** tp / (tp + fn), NaN without positives. */
  sensitivity: number;
  /** tn / (tn + fp), NaN without negatives. */
  specificity: number;
}

/** Sensitivity and specificity per class and for `any`, of `pred` against `truth`. */
export function evaluateSlices(
  truth: SliceLabels,
  pred: SliceLabels,
): { perClass: Record<string, SliceScore>; any: SliceScore; slices: number } {
  if (truth.present.length !== pred.present.length) {
    throw new RangeError(`truth has ${truth.present.length} slices but pred has ${pred.present.length}`);
  }
  const score = (t: boolean[], p: boolean[]): SliceScore => {
    let tp = 0,
      fp = 0,
      fn = 0,
      tn = 0;
    t.forEach((x, i) => (x ? (p[i] ? tp++ : fn++) : p[i] ? fp++ : tn++));
    return { tp, fp, fn, tn, sensitivity: tp + fn ? tp / (tp + fn) : NaN, specificity: tn + fp ? tn / (tn + fp) : NaN };
  };
  const perClass: Record<string, SliceScore> = {};
  for (const [k, c] of truth.classes.entries()) {
    const j = pred.classes.indexOf(c);
    if (j < 0) throw invalidParameterError("pred.classes", `to include class ${c}`, pred.classes);
    perClass[String(c)] = score(
      truth.present.map((r) => r[k]!),
      pred.present.map((r) => r[j]!),
    );
  }
  return { perClass, any: score(truth.any, pred.any), slices: truth.any.length };
}
