/**
 * Connected components, per-bleed statistics and cleanup (shared/spec/api.md; ABC/2 as defined in
 * shared/spec/metrics.md). Validation here, the voxel work on the active backend.
 */
import { activeBackend, releaseEngineArray } from "../backends/index.js";
import { STATS } from "../backends/types.js";
import { assertNumber, dtypeOf, INTEGER_DTYPES, invalidParameterError, optionsObject, voxelArray } from "../is.js";
import type { Volume, VoxelArray } from "../types.js";
import { allocArray, assertVolume } from "../volume.js";

export type Connectivity = 6 | 18 | 26;

export interface ComponentsOptions {
  /** 6 (faces), 18 (faces and edges) or 26 (faces, edges and corners). Default 26. */
  connectivity?: Connectivity;
  /** Voxels join only voxels of the same value (default true); false: every non-zero voxel is foreground. */
  perClass?: boolean;
}

export interface Component {
  /** Its value in `labels` (1..count for connectedComponents' labels). */
  label: number;
  /** The class (value of `classes`) at its first voxel; 0 when no classes were given. */
  class: number;
  voxels: number;
  volumeMl: number;
  /** Inclusive voxel index ranges. */
  bbox: { min: [number, number, number]; max: [number, number, number] };
  centroid: { voxel: [number, number, number]; world: [number, number, number] };
  /** Axial slices (z) holding at least one voxel of it, and its z range. */
  slices: number;
  zRange: [number, number];
  /** ABC/2: A, B in-plane diameters (mm) on the slice of largest area, C = slices × sz (mm). */
  abc: { a: number; b: number; c: number; slice: number };
  abc2Ml: number;
}

function checkConnectivity(v: unknown): Connectivity {
  if (v === undefined) return 26;
  if (v !== 6 && v !== 18 && v !== 26) throw invalidParameterError("options.connectivity", "6, 18 or 26", v);
  return v;
}

function checkBool(name: string, v: unknown, dflt: boolean): boolean {
  if (v === undefined) return dflt;
  if (typeof v !== "boolean") throw invalidParameterError(name, "a boolean", v);
  return v;
}

function assertIntegerVolume(name: string, v: unknown): asserts v is Volume {
  assertVolume(name, v);
  const dt = dtypeOf(v.data)!;
  if (!INTEGER_DTYPES.includes(dt)) {
    throw invalidParameterError(
      `${name}.data`,
      "integer voxels (Uint8Array, Int8Array, Int16Array, Uint16Array, Int32Array or Uint32Array)",
      v.data,
    );
  }
}

/**
 * Checks that a volume holds labels: integers from 0 to `maxLabel` (default 255). A CT in
 * Hounsfield units (negative values, thousands of distinct values) is refused with a message
 * that says what came. Float voxels that hold integers are converted to the smallest integer
 * type that holds them; an integer volume is returned as it is.
 */
export async function asLabelVolume(volume: Volume, options?: { maxLabel?: number; name?: string }): Promise<Volume> {
  assertVolume("volume", volume);
  const opts = optionsObject("options", options);
  const maxLabel = opts.maxLabel ?? 255;
  if (!Number.isInteger(maxLabel) || (maxLabel as number) < 0 || (maxLabel as number) > 2 ** 31 - 1) {
    throw invalidParameterError("options.maxLabel", "an integer from 0 to 2147483647", maxLabel);
  }
  if (opts.name !== undefined && typeof opts.name !== "string") throw invalidParameterError("options.name", "a string", opts.name);
  const name = (opts.name as string | undefined) ?? "volume";
  const s = await activeBackend().voxelStats(volume.data);
  if (s.nonfinite > 0)
    throw new RangeError(`${name} holds ${s.nonfinite} NaN or infinite voxel(s); labels are integers from 0 to ${maxLabel}`);
  if (volume.data.length > 0 && (s.min < 0 || s.max > (maxLabel as number))) {
    throw new RangeError(
      `${name} holds values from ${s.min} to ${s.max}; labels are integers from 0 to ${maxLabel}` +
        (s.min < 0
          ? " (is it a CT in Hounsfield units rather than labels?)"
          : " (raise the limit if the labels are meant to go that high)"),
    );
  }
  const dt = dtypeOf(volume.data)!;
  if (INTEGER_DTYPES.includes(dt)) return volume;
  const d = volume.data;
  for (let i = 0; i < d.length; i++) {
    if (!Number.isInteger(d[i]))
      throw new RangeError(
        `${name} holds ${d[i]} at voxel ${i}; labels are integers from 0 to ${maxLabel} (is it a CT rather than labels?)`,
      );
  }
  const type = s.max <= 255 ? "uint8" : s.max <= 65535 ? "uint16" : "int32";
  const out = allocArray(type, d.length, "labels");
  for (let i = 0; i < d.length; i++) out[i] = d[i]!;
  return { ...volume, data: out, dims: [...volume.dims], spacing: [...volume.spacing], affine: [...volume.affine] };
}

/**
 * Labels the connected components of a volume's non-zero voxels. Labels are 1..count in raster
 * order (x fastest) of each component's first voxel, equal to scipy.ndimage.label's.
 */
export async function connectedComponents(
  volume: Volume,
  options?: ComponentsOptions,
): Promise<{ labels: Volume<Int32Array>; count: number }> {
  assertIntegerVolume("volume", volume);
  const opts = optionsObject("options", options);
  const connectivity = checkConnectivity(opts.connectivity);
  const perClass = checkBool("options.perClass", opts.perClass, true);
  const be = activeBackend();
  let out: Int32Array, count: number;
  if (be.connectedComponentsFresh && volume.data.length > 0) {
    // labels the engine allocates and fills whole: no clearing of a reused 42 MB block first
    ({ labels: out, count } = await be.connectedComponentsFresh(volume.data, volume.dims, connectivity, perClass));
  } else {
    out = allocArray("int32", volume.data.length, "labels") as Int32Array;
    count = await be.connectedComponents(volume.data, volume.dims, connectivity, perClass, out);
  }
  return { labels: { data: out, dims: [...volume.dims], spacing: [...volume.spacing], affine: [...volume.affine] }, count };
}

/** The largest label in a label volume (its component count when labels are 1..count). */
async function labelRange(labels: Volume<Int32Array>): Promise<{ min: number; max: number }> {
  const s = await activeBackend().voxelStats(labels.data);
  if (s.min < 0) throw new RangeError(`labels holds a negative label (${s.min})`);
  return { min: s.min, max: s.max === -Infinity ? 0 : Math.max(0, s.max) };
}

/** Packed per-component numbers (see Backend.componentStats) for labels 1..count. */
async function packedStats(labels: Volume<Int32Array>, count: number, classes: VoxelArray | null): Promise<Float64Array> {
  const out = allocArray("float64", count * STATS, "component statistics") as Float64Array;
  if (count > 0) await activeBackend().componentStats(labels.data, labels.dims, count, classes, out);
  return out;
}

/**
 * Labels up to this value, or up to a sixteenth of the voxel count, are measured as they are (the
 * backend's per-label arrays then cost at most 88 bytes × DENSE_LABELS, or 5.5 bytes a voxel:
 * under 1.4× the Int32 labels); above it the labels present are first renumbered 1..n in order.
 */
const DENSE_LABELS = 1 << 16;

/** Default of componentStats' options.maxComponents. */
export const MAX_COMPONENTS = 100_000;

/**
 * The distinct non-zero labels in increasing order and, when they are not already 1..n, the
 * labels renumbered 1..n in that order (O(voxels): a sort of the non-zero values, then one
 * binary search per non-zero voxel); refuses more than `limit` of them before renumbering.
 */
function denseLabels(data: Int32Array, limit: number): { values: Int32Array; dense: Int32Array | null } {
  let nnz = 0;
  for (let i = 0; i < data.length; i++) if (data[i] !== 0) nnz++;
  const vals = new Int32Array(nnz);
  for (let i = 0, k = 0; i < data.length; i++) if (data[i] !== 0) vals[k++] = data[i]!;
  vals.sort();
  let n = 0;
  for (let i = 0; i < vals.length; i++) if (i === 0 || vals[i] !== vals[i - 1]) vals[n++] = vals[i]!;
  if (n > limit) throw new RangeError(`labels holds ${n} components, more than options.maxComponents (${limit})`);
  const values = vals.slice(0, n);
  if (n === 0 || values[n - 1] === n) return { values, dense: null }; // already 1..n
  const dense = new Int32Array(data.length);
  for (let i = 0; i < data.length; i++) {
    const v = data[i]!;
    if (v === 0) continue;
    let lo = 0,
      hi = n - 1;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (values[mid]! < v) lo = mid + 1;
      else hi = mid;
    }
    dense[i] = lo + 1;
  }
  return { values, dense };
}

/**
 * Per component: class, voxels, mL, bounding box, centroid (voxel and world), slices, ABC/2.
 * Its cost follows the voxels, not the label values: sparse labels (any value up to 2³¹ − 1) are
 * renumbered before they are measured, and each component's `label` is its value in `labels`.
 * More than `options.maxComponents` (default 100000) distinct labels are refused before any is
 * measured.
 */
export async function componentStats(
  labels: Volume<Int32Array>,
  options?: { classes?: Volume | VoxelArray; spacing?: [number, number, number]; maxComponents?: number },
): Promise<Component[]> {
  assertVolume("labels", labels);
  if (!(labels.data instanceof Int32Array))
    throw invalidParameterError("labels.data", "an Int32Array (the labels of connectedComponents)", labels.data);
  const opts = optionsObject("options", options);
  let classes: VoxelArray | null = null;
  if (opts.classes !== undefined) {
    const c = opts.classes as Volume | VoxelArray;
    classes = voxelArray(c) ? c : (assertVolume("options.classes", c), c.data);
    // (class values are labels: a float array — label files are often stored so — must hold whole
    // numbers; 1.5 was reported as class NaN)
    if (classes instanceof Float32Array || classes instanceof Float64Array) {
      const bad = classes.findIndex((v) => !Number.isInteger(v));
      if (bad >= 0) throw invalidParameterError("options.classes", `integer label values (voxel ${bad} holds ${classes[bad]})`, classes);
    }
    if (classes.length !== labels.data.length) {
      throw new RangeError(`options.classes has ${classes.length} voxels but labels has ${labels.data.length}`);
    }
  }
  const spacing = (opts.spacing ?? labels.spacing) as [number, number, number];
  if (!Array.isArray(spacing) || spacing.length !== 3) throw invalidParameterError("options.spacing", "[sx, sy, sz] in mm", spacing);
  spacing.forEach((s, i) => assertNumber(`options.spacing[${i}]`, s, Number.MIN_VALUE));
  const maxComponents = opts.maxComponents ?? MAX_COMPONENTS;
  if (!Number.isInteger(maxComponents) || (maxComponents as number) < 0)
    throw invalidParameterError("options.maxComponents", "a non-negative integer", maxComponents);
  const range = await labelRange(labels);
  // label values as given, or renumbered 1..n when they are sparse (values[k-1] is label k's value)
  let work = labels,
    values: Int32Array | null = null,
    count = range.max;
  // measured as they are while the per-label arrays stay small beside the labels themselves
  // (connectedComponents' 1..count always do: a noisy prediction's 580 000 specks of a 512×512×40
  // CT renumbered for nothing cost a sort of its 8 M non-zero voxels, 0.6 s)
  const denseLimit = Math.max(DENSE_LABELS, Math.floor(labels.data.length / 16));
  if (range.max > denseLimit || range.max > (maxComponents as number)) {
    const d = denseLabels(labels.data, maxComponents as number);
    values = d.values;
    count = values.length;
    if (d.dense) work = { ...labels, data: d.dense };
  }
  const st = await packedStats(work, count, classes);
  if (!values) {
    let present = 0;
    for (let c = 0; c < count; c++) if (st[c * STATS]) present++;
    if (present > (maxComponents as number))
      throw new RangeError(`labels holds ${present} components, more than options.maxComponents (${maxComponents})`);
  }

  // Voxels per slice of each component, for the slice of largest area and the slice count.
  const zmin = new Int32Array(count);
  const offsets = new Float64Array(count + 1);
  for (let c = 0; c < count; c++) {
    const o = c * STATS;
    zmin[c] = st[o] ? st[o + 3]! : 0;
    offsets[c + 1] = offsets[c]! + (st[o] ? st[o + 6]! - st[o + 3]! + 1 : 0);
  }
  const areas = allocArray("uint32", offsets[count]!, "slice areas") as Uint32Array;
  if (count > 0) await activeBackend().componentSliceAreas(work.data, work.dims, count, zmin, offsets, areas);

  const [sx, sy, sz] = spacing;
  const voxelMl = (sx * sy * sz) / 1000;
  const A = labels.affine;
  const out: Component[] = [];
  const pixel = singlePixel(sx, sy);
  for (let c = 0; c < count; c++) {
    const o = c * STATS;
    const n = st[o]!;
    if (n === 0) continue; // a label value not present
    const min: [number, number, number] = [st[o + 1]!, st[o + 2]!, st[o + 3]!];
    const max: [number, number, number] = [st[o + 4]!, st[o + 5]!, st[o + 6]!];
    const cv: [number, number, number] = [st[o + 7]! / n, st[o + 8]! / n, st[o + 9]! / n];
    const cw: [number, number, number] = [
      A[0]! * cv[0] + A[1]! * cv[1] + A[2]! * cv[2] + A[3]!,
      A[4]! * cv[0] + A[5]! * cv[1] + A[6]! * cv[2] + A[7]!,
      A[8]! * cv[0] + A[9]! * cv[1] + A[10]! * cv[2] + A[11]!,
    ];
    let slices = 0,
      best = min[2],
      bestArea = -1;
    for (let z = min[2]; z <= max[2]; z++) {
      const a = areas[offsets[c]! + z - min[2]]!;
      if (a > 0) slices++;
      if (a > bestArea) {
        bestArea = a;
        best = z;
      }
    }
    // one voxel (a noisy prediction's specks: most of its components): its pixel's diagonal and
    // the pixel's width across it, as the hull of its four corners gives them, without the hull
    const { a, b } = n === 1 ? pixel : sliceDiameters(work, c + 1, best, min, max, sx, sy);
    const cmm = slices * sz;
    out.push({
      label: values ? values[c]! : c + 1,
      class: st[o + 10]!,
      voxels: n,
      volumeMl: n * voxelMl,
      bbox: { min, max },
      centroid: { voxel: cv, world: cw },
      slices,
      zRange: [min[2], max[2]],
      abc: { a, b, c: cmm, slice: best },
      abc2Ml: (a * b * cmm) / 2000,
    });
  }
  return out;
}

/** sliceDiameters of one pixel: A its diagonal, B the rectangle's extent across it (2·sx·sy / A). */
function singlePixel(sx: number, sy: number): { a: number; b: number } {
  const a = Math.hypot(sx, sy);
  return { a, b: (2 * sx * sy) / a };
}

/**
 * A: the largest distance (mm) across the component's pixels on slice z, taken over the pixels'
 * corners (so one voxel has the diagonal as A); B: its extent perpendicular to A.
 */
function sliceDiameters(
  labels: Volume<Int32Array>,
  label: number,
  z: number,
  min: number[],
  max: number[],
  sx: number,
  sy: number,
): { a: number; b: number } {
  const [nx, ny] = labels.dims;
  const pts: [number, number][] = [];
  for (let y = min[1]!; y <= max[1]!; y++) {
    const row = (z * ny + y) * nx;
    let lo = -1,
      hi = -1;
    for (let x = min[0]!; x <= max[0]!; x++) {
      if (labels.data[row + x] === label) {
        if (lo < 0) lo = x;
        hi = x;
      }
    }
    if (lo < 0) continue;
    // the row's outermost pixels' corners bound the convex hull of all its pixels
    for (const x of [lo - 0.5, hi + 0.5]) for (const yy of [y - 0.5, y + 0.5]) pts.push([x * sx, yy * sy]);
  }
  const hull = convexHull(pts);
  let a = 0,
    ux = 1,
    uy = 0;
  for (let i = 0; i < hull.length; i++) {
    for (let j = i + 1; j < hull.length; j++) {
      const dx = hull[j]![0] - hull[i]![0],
        dy = hull[j]![1] - hull[i]![1];
      const d = Math.hypot(dx, dy);
      if (d > a) {
        a = d;
        ux = dx / d;
        uy = dy / d;
      }
    }
  }
  let lo = Infinity,
    hi = -Infinity;
  for (const [x, y] of hull) {
    const p = -uy * x + ux * y;
    lo = Math.min(lo, p);
    hi = Math.max(hi, p);
  }
  return { a, b: hull.length ? hi - lo : 0 };
}

/** Andrew's monotone chain. */
function convexHull(points: [number, number][]): [number, number][] {
  const p = [...points].sort((u, v) => u[0] - v[0] || u[1] - v[1]);
  if (p.length < 3) return p;
  const cross = (o: [number, number], a: [number, number], b: [number, number]) =>
    (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0]);
  const lower: [number, number][] = [],
    upper: [number, number][] = [];
  for (const q of p) {
    while (lower.length >= 2 && cross(lower[lower.length - 2]!, lower[lower.length - 1]!, q) <= 0) lower.pop();
    lower.push(q);
  }
  for (let i = p.length - 1; i >= 0; i--) {
    const q = p[i]!;
    while (upper.length >= 2 && cross(upper[upper.length - 2]!, upper[upper.length - 1]!, q) <= 0) upper.pop();
    upper.push(q);
  }
  return lower.slice(0, -1).concat(upper.slice(0, -1));
}

export interface CleanupOptions extends ComponentsOptions {
  /**
   * Remove components smaller than this volume (mL): one number for every class, or per class
   * value (`{ "1": 0.8, "5": 0.8 }`: classes not named have no minimum; needs perClass).
   */
  minVolumeMl?: number | Record<string, number>;
  /** Remove components with fewer voxels than this. */
  minVoxels?: number;
  /** Keep only the largest n components of each class (ties: the one seen first in raster order). */
  keepLargest?: number;
  /**
   * Groups of classes one connected bleed may not mix, applied first: each connected component of
   * a group's voxels (any of its classes) takes the class most of its voxels have (ties: the group's
   * first). `[[1, 5]]`: an extra-axial collection is epidural or subdural, not a patchwork of both.
   */
  mergeClasses?: number[][];
  /**
   * nnU-Net's post-processing steps (`remove_all_but_largest_component_from_segmentation`, what its
   * `postprocessing.pkl` holds), applied first and in order: for each group of classes, the
   * connected components of the group's voxels (any of its classes together) are found and all but
   * the largest — every one of the largest size, as nnU-Net keeps ties — become background. `[[1, 2,
   * 3, 4, 5]]`: the largest bleed of any class alone; `[[2]]`: the largest IPH alone.
   */
  largestOf?: number[][];
}

/** Largest class value mergeClasses may name, and the most classes in one group. */
const MAX_MERGE_CLASS = 65535;
const MAX_GROUP = 8;

interface CheckedCleanup {
  connectivity: Connectivity;
  perClass: boolean;
  minVoxels?: number;
  minVolumeMl?: number;
  minVolumeMlByClass?: Map<number, number>;
  keepLargest?: number;
  mergeClasses?: number[][];
  largestOf?: number[][];
}

const classKey = (k: string) => /^(0|[1-9]\d{0,9})$/.test(k) && Number(k) <= 2 ** 31 - 1;

/** Checks cleanup's options (also a model config's `postprocessing`); `name` prefixes the messages. */
export function checkCleanupOptions(options: unknown, name = "options"): CheckedCleanup {
  const opts = optionsObject(name, options) as CleanupOptions;
  const known = new Set(["connectivity", "perClass", "minVolumeMl", "minVoxels", "keepLargest", "mergeClasses", "largestOf"]);
  for (const k of Object.keys(opts))
    if (!known.has(k)) throw invalidParameterError(`${name}.${k}`, `one of ${[...known].join(", ")} (no other option)`, k);
  const out: CheckedCleanup = {
    connectivity: checkConnectivity(opts.connectivity),
    perClass: checkBool(`${name}.perClass`, opts.perClass, true),
  };
  if (opts.minVoxels !== undefined) {
    assertNumber(`${name}.minVoxels`, opts.minVoxels, 0);
    out.minVoxels = opts.minVoxels;
  }
  const mv = opts.minVolumeMl as unknown;
  if (typeof mv === "number") {
    assertNumber(`${name}.minVolumeMl`, mv, 0);
    out.minVolumeMl = mv;
  } else if (mv !== undefined) {
    const o = optionsObject(`${name}.minVolumeMl`, mv);
    if (!out.perClass)
      throw invalidParameterError(`${name}.minVolumeMl`, "one number when perClass is false (per class needs perClass)", mv);
    out.minVolumeMlByClass = new Map();
    for (const [k, v] of Object.entries(o)) {
      if (!classKey(k)) throw invalidParameterError(`${name}.minVolumeMl key`, "a class value (an integer from 0)", k);
      assertNumber(`${name}.minVolumeMl["${k}"]`, v, 0);
      out.minVolumeMlByClass.set(Number(k), v);
    }
  }
  if (opts.keepLargest !== undefined && (!Number.isInteger(opts.keepLargest) || opts.keepLargest < 0)) {
    throw invalidParameterError(`${name}.keepLargest`, "a non-negative integer", opts.keepLargest);
  }
  out.keepLargest = opts.keepLargest;
  if (opts.mergeClasses !== undefined) {
    const groups = opts.mergeClasses as unknown;
    // at most 8 classes a group: the votes take (components + 1) × 8 counts at most (32 bytes a component)
    const what = `an array of groups, each of 2 to ${MAX_GROUP} distinct classes from 1 to ${MAX_MERGE_CLASS}, no class in two groups`;
    if (!Array.isArray(groups) || groups.length > 255) throw invalidParameterError(`${name}.mergeClasses`, what, groups);
    const seen = new Set<number>();
    out.mergeClasses = groups.map((g: unknown, i) => {
      const ok =
        Array.isArray(g) &&
        g.length >= 2 &&
        g.length <= MAX_GROUP &&
        g.every((c) => Number.isInteger(c) && c >= 1 && c <= MAX_MERGE_CLASS && !seen.has(c as number) && (seen.add(c as number), true));
      if (!ok) throw invalidParameterError(`${name}.mergeClasses[${i}]`, what, g);
      return [...(g as number[])];
    });
  }
  if (opts.largestOf !== undefined) {
    const steps = opts.largestOf as unknown;
    const what = `an array of at most 64 groups, each of 1 to 255 distinct classes from 1 to ${MAX_MERGE_CLASS}`;
    if (!Array.isArray(steps) || steps.length > 64) throw invalidParameterError(`${name}.largestOf`, what, steps);
    out.largestOf = steps.map((g: unknown, i) => {
      const ok =
        Array.isArray(g) &&
        g.length >= 1 &&
        g.length <= 255 &&
        new Set(g).size === g.length &&
        g.every((c) => Number.isInteger(c) && c >= 1 && c <= MAX_MERGE_CLASS);
      if (!ok) throw invalidParameterError(`${name}.largestOf[${i}]`, what, g);
      return [...(g as number[])];
    });
  }
  return out;
}

/**
 * largestOf (nnU-Net's remove_all_but_largest_component_from_segmentation, step by step): the
 * components of each group's voxels; those smaller than the group's largest become background.
 */
async function keepLargestOfGroups(vol: Volume, groups: number[][], connectivity: Connectivity): Promise<VoxelArray> {
  const n = vol.data.length;
  let data: VoxelArray = vol.data;
  const mask = allocArray("uint8", n, "class group") as Uint8Array;
  for (const g of groups) {
    const inGroup = new Set(g);
    let any = false;
    for (let i = 0; i < n; i++) any = (mask[i] = inGroup.has(data[i]!) ? 1 : 0) === 1 || any;
    if (!any) continue;
    const { labels, count } = await connectedComponents({ ...vol, data: mask }, { connectivity, perClass: true });
    const lab = labels.data;
    if (count <= 1) {
      releaseEngineArray(lab);
      continue;
    }
    const size = new Float64Array(count + 1);
    for (let i = 0; i < n; i++) size[lab[i]!]!++;
    let max = 0;
    for (let c = 1; c <= count; c++) max = Math.max(max, size[c]!);
    if (data === vol.data) {
      // (the caller's labels are never written: a copy at the first step that removes anything)
      const copy = allocArray(dtypeOf(vol.data)!, n, "labels, largest components") as VoxelArray;
      copy.set(vol.data as never);
      data = copy;
    }
    for (let i = 0; i < n; i++) if (lab[i] && size[lab[i]!]! < max) data[i] = 0;
    releaseEngineArray(lab);
  }
  releaseEngineArray(mask);
  return data;
}

/**
 * mergeClasses: a connected component of each group's voxels becomes the group's class most of its
 * voxels have. Classes outside every group are left as they are.
 */
async function mergeClassGroups(vol: Volume, groups: number[][], connectivity: Connectivity): Promise<VoxelArray> {
  let top = 0;
  for (const g of groups) for (const c of g) top = Math.max(top, c);
  const groupOf = new Uint8Array(top + 1);
  const slot = new Uint16Array(top + 1);
  groups.forEach((g, i) => g.forEach((c, k) => ((groupOf[c] = i + 1), (slot[c] = k))));
  const src = vol.data;
  const n = src.length;
  const member = allocArray("uint8", n, "class groups") as Uint8Array;
  for (let i = 0; i < n; i++) {
    const v = src[i]!;
    member[i] = v > 0 && v <= top ? groupOf[v]! : 0;
  }
  const { labels, count } = await connectedComponents({ ...vol, data: member }, { connectivity, perClass: true });
  const width = Math.max(...groups.map((g) => g.length));
  const votes = allocArray("uint32", (count + 1) * width, "class votes") as Uint32Array;
  const lab = labels.data;
  const groupOfComponent = new Uint8Array(count + 1);
  for (let i = 0; i < n; i++)
    if (lab[i]) {
      votes[lab[i]! * width + slot[src[i]!]!]!++;
      groupOfComponent[lab[i]!] = member[i]!;
    }
  const winner = new Float64Array(count + 1);
  for (let c = 1; c <= count; c++) {
    const g = groups[groupOfComponent[c]! - 1]!;
    let best = 0;
    for (let k = 1; k < g.length; k++) if (votes[c * width + k]! > votes[c * width + best]!) best = k;
    winner[c] = g[best]!;
  }
  const out = allocArray(dtypeOf(src)!, n, "merged labels");
  for (let i = 0; i < n; i++) out[i] = lab[i] ? winner[lab[i]!]! : src[i]!;
  return out;
}

/**
 * Merges class groups (mergeClasses), then removes components (per class by default) below a size,
 * or keeps only the largest n of each class; returns a new label volume of the same type and geometry.
 */
export async function cleanup(labelVolume: Volume, options?: CleanupOptions): Promise<Volume> {
  assertIntegerVolume("labelVolume", labelVolume);
  const opts = checkCleanupOptions(options);
  const { connectivity, perClass } = opts;
  const given = labelVolume.data;
  if (opts.largestOf?.length) labelVolume = { ...labelVolume, data: await keepLargestOfGroups(labelVolume, opts.largestOf, connectivity) };
  if (opts.mergeClasses?.length)
    labelVolume = { ...labelVolume, data: await mergeClassGroups(labelVolume, opts.mergeClasses, connectivity) };
  const geometry = {
    dims: [...labelVolume.dims] as Volume["dims"],
    spacing: [...labelVolume.spacing] as Volume["spacing"],
    affine: [...labelVolume.affine],
  };
  if (opts.minVoxels === undefined && opts.minVolumeMl === undefined && !opts.minVolumeMlByClass && opts.keepLargest === undefined) {
    // nothing to filter by size (nnU-Net's post-processing alone): the steps' result, as a new volume
    let data = labelVolume.data;
    if (data === given) {
      data = allocArray(dtypeOf(given)!, given.length, "cleaned labels") as VoxelArray;
      data.set(given as never);
    }
    return { ...labelVolume, data, ...geometry };
  }
  const { labels, count } = await connectedComponents(labelVolume, { connectivity, perClass });
  const st = await packedStats(labels, count, labelVolume.data);
  const [sx, sy, sz] = labelVolume.spacing;
  const voxelMl = (sx * sy * sz) / 1000;
  const keep = new Uint8Array(count + 1);
  const byClass = new Map<number, number[]>();
  for (let c = 1; c <= count; c++) {
    const n = st[(c - 1) * STATS]!;
    const cls = perClass ? st[(c - 1) * STATS + 10]! : 0;
    const minMl = opts.minVolumeMlByClass ? opts.minVolumeMlByClass.get(cls) : opts.minVolumeMl;
    let ok = true;
    if (opts.minVoxels !== undefined && n < opts.minVoxels) ok = false;
    if (minMl !== undefined && n * voxelMl < minMl) ok = false;
    keep[c] = ok ? 1 : 0;
    if (ok && opts.keepLargest !== undefined) (byClass.get(cls) ?? byClass.set(cls, []).get(cls)!).push(c);
  }
  if (opts.keepLargest !== undefined) {
    for (const comps of byClass.values()) {
      comps.sort((a, b) => st[(b - 1) * STATS]! - st[(a - 1) * STATS]! || a - b);
      for (const c of comps.slice(opts.keepLargest)) keep[c] = 0;
    }
  }
  const data = allocArray(dtypeOf(labelVolume.data)!, labelVolume.data.length, "cleaned labels");
  await activeBackend().selectComponents(labelVolume.data, labels.data, keep, data);
  return { ...labelVolume, data, dims: [...labelVolume.dims], spacing: [...labelVolume.spacing], affine: [...labelVolume.affine] };
}
