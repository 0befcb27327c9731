/** Resampling a Volume to another voxel size: trilinear for images, nearest for label volumes. */
import { invalidParameterError } from "../is.js";
import * as ops from "../ops/tensor.js";
import type { Volume } from "../types.js";
import { ARRAY_CTOR, assertVolume, BYTES_PER_ELEMENT } from "../volume.js";
import { dtypeOf } from "../is.js";
import { activeBackend, releaseEngineArray } from "../backends/index.js";
import { zoomAxis } from "../ops/spline.js";

/** numpy's np.round: halves go to the even neighbour (nnU-Net's window starts and MONAI's Spacing sizes are rounded so). */
export function roundHalfEven(v: number): number {
  const f = Math.floor(v),
    d = v - f;
  if (d > 0.5) return f + 1;
  if (d < 0.5) return f;
  return f % 2 === 0 ? f : f + 1;
}

/** Default bound of a resampled grid: 2^30 voxels (4 GB as float32), far beyond any head CT. */
export const DEFAULT_MAX_VOXELS = 2 ** 30;

/**
 * Resamples to `spacing` [sx, sy, sz] mm (new dims = round(dims · spacing / new spacing)), keeping
 * the volume's physical extent and corner: the affine's columns are rescaled. `mode` "nearest"
 * keeps label values; "linear" is for intensities (the result is then float32).
 */
export async function resampleVolume(
  volume: Volume,
  spacing: [number, number, number],
  options?: { mode?: "nearest" | "linear"; maxVoxels?: number },
): Promise<Volume> {
  assertVolume("volume", volume);
  if (!Array.isArray(spacing) || spacing.length !== 3 || !spacing.every((s) => typeof s === "number" && s > 0 && Number.isFinite(s)))
    throw invalidParameterError("spacing", "[sx, sy, sz] of positive numbers", spacing);
  const mode = options?.mode ?? "linear";
  const maxVoxels = options?.maxVoxels ?? DEFAULT_MAX_VOXELS;
  if (!(typeof maxVoxels === "number" && maxVoxels > 0)) throw invalidParameterError("options.maxVoxels", "a positive number", maxVoxels);
  const dims = volume.dims.map((d, i) => Math.max(1, Math.round((d * volume.spacing[i]!) / spacing[i]!))) as [number, number, number];
  // checked before anything is allocated: an 8×8×2 volume that claims 300 mm voxels would resample
  // to billions of voxels at 0.5 mm
  if (dims[0] * dims[1] * dims[2] > maxVoxels) {
    throw new RangeError(
      `resampling [${volume.dims}] at [${volume.spacing}] mm to [${spacing}] mm gives [${dims}] (${dims[0] * dims[1] * dims[2]} voxels), over options.maxVoxels ${maxVoxels}`,
    );
  }
  const shape = [1, 1, volume.dims[2], volume.dims[1], volume.dims[0]];
  const resize = async (src: Float32Array) =>
    (
      await ops.resize(
        { data: src, shape },
        { sizes: [dims[2], dims[1], dims[0]], mode, coordinateTransformationMode: "half_pixel", nearestMode: "round_prefer_floor" },
      )
    ).data;
  const dtype = mode === "nearest" ? dtypeOf(volume.data)! : "float32";
  let data: Volume["data"];
  // (a float64 label file — nibabel's default — whose values all survive float32 takes one pass)
  const wide = BYTES_PER_ELEMENT[dtype] >= 4 && dtype !== "float32" && !volume.data.every((v) => Object.is(Math.fround(v as number), v));
  if (!wide) {
    const r = await resize(Float32Array.from(volume.data));
    data = dtype === "float32" ? r : new ARRAY_CTOR[dtype](r.length);
    if (data !== r) for (let i = 0; i < data.length; i++) data[i] = r[i]!;
  } else {
    // int32, uint32, float64 labels do not all survive float32 (16 777 217 became 16 777 216,
    // 2^31−1 became −2^31): nearest only picks voxels, so their 16-bit words are resized one at a
    // time, each exact in float32, and put back together
    const words = BYTES_PER_ELEMENT[dtype] / 2;
    const n = volume.data.length;
    const src = new Uint16Array(volume.data.buffer, volume.data.byteOffset, n * words);
    data = new ARRAY_CTOR[dtype](dims[0] * dims[1] * dims[2]);
    const out = new Uint16Array(data.buffer, data.byteOffset, data.length * words);
    for (let w = 0; w < words; w++) {
      const part = new Float32Array(n);
      for (let i = 0; i < n; i++) part[i] = src[i * words + w]!;
      const r = await resize(part);
      for (let i = 0; i < r.length; i++) out[i * words + w] = r[i]!;
      releaseEngineArray(r);
    }
  }
  // voxel i of the new grid has its centre at (i + 0.5) · s' − 0.5 · s in old voxel units × s
  const A = volume.affine;
  const affine = [...A];
  for (let c = 0; c < 3; c++) {
    const f = spacing[c]! / volume.spacing[c]!;
    for (let r2 = 0; r2 < 3; r2++) affine[4 * r2 + c] = A[4 * r2 + c]! * f;
  }
  for (let r2 = 0; r2 < 3; r2++) {
    let shift = 0;
    for (let c = 0; c < 3; c++) shift += A[4 * r2 + c]! * (0.5 * (spacing[c]! / volume.spacing[c]!) - 0.5);
    affine[4 * r2 + 3] = A[4 * r2 + 3]! + shift;
  }
  return { data, dims, spacing: [...spacing], affine };
}

/**
 * One of nnU-Net's resampling steps (its plans' `resampling_fn_data_kwargs` or
 * `resampling_fn_probabilities_kwargs`): the spline order in-plane (or along every axis), the order
 * along the low-resolution axis where that axis is resampled separately, and whether it is
 * (null: where either grid's spacing is anisotropic past the threshold).
 */
export interface NnunetResamplingStep {
  order: number;
  orderZ: number;
  forceSeparateZ: boolean | null;
  /** Largest over smallest spacing past which an axis is resampled separately (nnU-Net's ANISO_THRESHOLD, 3). */
  anisotropyThreshold: number;
}

/**
 * How segment() takes the image to the model's spacing and the class logits back:
 * - "linear": trilinear both ways (half-pixel centres, the edge repeated: ONNX Resize's and
 *   torch's F.interpolate(align_corners=False)); the default of models not from nnU-Net.
 * - "nnunet": nnU-Net v2's resample_data_or_seg_to_shape (scipy B-splines of each step's order;
 *   an anisotropic grid resampled slice by slice in-plane, then along its low-resolution axis with
 *   `orderZ`), the default where the config comes from nnU-Net's plans: the image with
 *   { order 3, orderZ 0 }, the logits with { order 1, orderZ 0 }.
 */
export type Resampling =
  | { type: "linear" }
  /**
   * MONAI's Spacingd and its inverse (Invertd): the model grid's size from the extent between the
   * first and last voxel centres, each grid_sample'd in float64 with border padding — `image` the
   * CT's mode, `back` the export's (Invertd's nearest_interp: "nearest").
   */
  | { type: "monai"; image: "bilinear" | "nearest"; back: "bilinear" | "nearest" }
  | {
      type: "nnunet";
      data: NnunetResamplingStep;
      probabilities: NnunetResamplingStep;
      /** A cascade's previous-stage labels to the model's grid (nnU-Net's resampling_fn_seg, is_seg). */
      seg?: NnunetResamplingStep;
    };

/** nnU-Net's own resampling (its default plans', ANISO_THRESHOLD 3). */
export const NNUNET_RESAMPLING: Resampling = {
  type: "nnunet",
  data: { order: 3, orderZ: 0, forceSeparateZ: null, anisotropyThreshold: 3 },
  probabilities: { order: 1, orderZ: 0, forceSeparateZ: null, anisotropyThreshold: 3 },
};

/**
 * nnU-Net's determine_do_sep_z_and_axis: the axis resampled on its own (the one whose spacing is
 * the largest, where just one is), or null.
 */
export function separateAxis(
  force: boolean | null,
  current: readonly number[],
  next: readonly number[],
  threshold: number,
): 0 | 1 | 2 | null {
  const anisotropic = (s: readonly number[]) => Math.max(...s) / Math.min(...s) > threshold;
  const lowres = (s: readonly number[]) => {
    const mx = Math.max(...s);
    return [0, 1, 2].filter((i) => mx / s[i]! === 1);
  };
  let axes: number[] | null;
  if (force !== null) axes = force ? lowres(current) : null;
  else if (anisotropic(current)) axes = lowres(current);
  else if (anisotropic(next)) axes = lowres(next);
  else axes = null;
  return axes?.length === 1 ? (axes[0] as 0 | 1 | 2) : null;
}

/**
 * One channel resampled as nnU-Net v2's resample_data_or_seg (is_seg false) does it: along every
 * axis with a B-spline of `step.order` and the result clipped to the input's range
 * (skimage.transform.resize's clip=True), or, where an axis is resampled separately, each slice
 * across it so (clipped to that slice's range) and then that axis with `step.orderZ` (unclipped,
 * scipy.ndimage.map_coordinates). Lines in float64, results float32 (its output dtype). `shape`
 * and the spacings in the same (grid) axis order. Returns `data` itself where the shapes agree.
 * Intermediate arrays go back to the engine; `between` is awaited between the axes.
 */
export async function resampleNnunet(
  data: Float32Array,
  shape: readonly [number, number, number],
  newShape: readonly [number, number, number],
  currentSpacing: readonly number[],
  newSpacing: readonly number[],
  step: NnunetResamplingStep,
  between: () => Promise<void> = async () => {},
  maxVoxels = DEFAULT_MAX_VOXELS,
  /** The splines' float64 lines on every backend (not the backend's float32 resize for order 1). */
  exact = false,
): Promise<Float32Array> {
  if (shape.every((d, i) => d === newShape[i])) return data;
  const { axis, inPlane, acrossFirst, peak } = nnunetPath(shape, newShape, currentSpacing, newSpacing, step);
  if (peak > maxVoxels)
    throw new RangeError(
      `resampling [${shape.join(", ")}] to [${newShape.join(", ")}] passes through a grid of ${peak} voxels (the slices resampled in-plane before across them, with a clip between), over ${maxVoxels}`,
    );
  let cur = data;
  const curShape = [...shape] as [number, number, number];
  // `src`: what the clip takes each slice's range from (kept until then)
  let src = data;
  let srcShape = shape;
  const zoom = async (ax: 0 | 1 | 2, order: number) => {
    if (curShape[ax] === newShape[ax]) return;
    const next = zoomAxis(cur, curShape, ax, newShape[ax]!, order);
    if (cur !== data && cur !== src) releaseEngineArray(cur);
    cur = next;
    curShape[ax] = newShape[ax]!;
    await between();
  };
  if (acrossFirst) {
    await zoom(axis!, step.orderZ);
    src = cur;
    srcShape = [...curShape];
  }
  if (step.order === 1 && !exact && activeBackend().name !== "ts" && inPlane.some((a) => curShape[a] !== newShape[a])) {
    // linear: the backend's resize (the same half-pixel interpolation with the edge repeated, in
    // float32: a class of logits in 35 ms where the spline code takes 300; on the TypeScript
    // backend, whose resize is a generic loop ten times slower, the spline code)
    const sizes = [...newShape] as [number, number, number];
    if (axis !== null) sizes[axis] = curShape[axis];
    const next = (
      await ops.resize({ data: cur, shape: [1, 1, ...curShape] }, { sizes, mode: "linear", coordinateTransformationMode: "half_pixel" })
    ).data as Float32Array;
    if (cur !== data && cur !== src) releaseEngineArray(cur);
    cur = next;
    for (const a of inPlane) curShape[a] = newShape[a]!;
    await between();
  }
  for (const ax of inPlane) await zoom(ax, step.order);
  // orders 0 and 1 never leave the input's range: the clip is for the B-splines of order ≥ 2
  if (step.order > 1 && cur !== src) {
    if (axis === null) clipTo(cur, 0, cur.length, minMax(src, 0, src.length));
    else clipSlices(src, srcShape, cur, curShape, axis);
  }
  if (src !== data && src !== cur) releaseEngineArray(src);
  if (axis !== null && !acrossFirst) await zoom(axis, step.orderZ);
  return cur;
}

/**
 * A label map resampled as nnU-Net v2's resample_data_or_seg with is_seg (batchgenerators'
 * resize_segmentation): each label present, in ascending order, as a 0/1 mask resampled with the
 * step's spline (order ≥ 1) and set where the result is ≥ 0.5, a later label over an earlier;
 * across a separately resampled axis the nearest slice (orderZ 0: a label's mask then picks the
 * same slice as the labels would). Labels < 1 are background. Returns a new array.
 */
export async function resampleLabelsNnunet(
  labels: Uint8Array,
  shape: readonly [number, number, number],
  newShape: readonly [number, number, number],
  currentSpacing: readonly number[],
  newSpacing: readonly number[],
  step: NnunetResamplingStep,
  between: () => Promise<void> = async () => {},
  maxVoxels = DEFAULT_MAX_VOXELS,
): Promise<Uint8Array> {
  const n = newShape[0] * newShape[1] * newShape[2];
  if (shape.every((d, i) => d === newShape[i])) return Uint8Array.from(labels);
  if (step.order !== 1)
    throw new RangeError(`a label map is resampled with a linear spline here (resize_segmentation's order 1), not order ${step.order}`);
  if (step.orderZ !== 0)
    throw new RangeError(`a label map is resampled across a separate axis with order_z 0 (nearest) here, not ${step.orderZ}`);
  const axis = separateAxis(step.forceSeparateZ, currentSpacing, newSpacing, step.anisotropyThreshold);
  // in-plane (or every axis) first, as nnU-Net: the grid between is the in-plane result
  const mid = [...newShape] as [number, number, number];
  if (axis !== null) mid[axis] = shape[axis];
  const peak = Math.max(shape[0] * shape[1] * shape[2], mid[0] * mid[1] * mid[2], n);
  if (peak > maxVoxels)
    throw new RangeError(
      `resampling labels [${shape.join(", ")}] to [${newShape.join(", ")}] passes through a grid of ${peak} voxels, over ${maxVoxels}`,
    );
  const present = new Set<number>();
  for (let i = 0; i < labels.length; i++) if (labels[i]! > 0) present.add(labels[i]!);
  const out = new Uint8Array(n);
  // in-plane (or every axis) straight into the result, else into one 0/1 mask reused by the labels,
  // whose nearest slices (scipy's order 0) then set the result: no float grid per label
  const across = axis !== null && mid[axis] !== newShape[axis];
  const mask = across ? new Uint8Array(mid[0] * mid[1] * mid[2]) : out;
  for (const c of [...present].sort((a, b) => a - b)) {
    if (across) mask.fill(0);
    linearMaskZoom(labels, c, shape, mid, mask, across ? 1 : c);
    await between();
    if (across) nearestSlices(mask, mid, axis!, newShape, out, c);
    await between();
  }
  return out;
}

/**
 * The 0/1 mask `labels === c` resized from `shape` to `newShape` by linear interpolation over every
 * axis at once, as scipy.ndimage.zoom (grid_mode, mode nearest, order 1) computes it — the
 * arithmetic of NI_ZoomShift: per output voxel the 2^3 corners in C order, each one's weights
 * multiplied left to right, summed in that order; weights 1 − x and 1 − (1 − x). (Separable
 * passes round otherwise: a value that is 0.49999999999999994 there can come out 0.5, and the
 * threshold at 0.5 then gives another label.) An axis that keeps its size has weights 1 and 0,
 * which change nothing: it is copied.
 */
function linearMaskZoom(
  labels: Uint8Array,
  c: number,
  shape: readonly [number, number, number],
  newShape: readonly [number, number, number],
  dst: Uint8Array,
  value: number,
): void {
  const taps = [0, 1, 2].map((ax) => {
    const n = shape[ax]!,
      m = newShape[ax]!;
    const i0 = new Int32Array(m),
      i1 = new Int32Array(m);
    const w0 = new Float64Array(m),
      w1 = new Float64Array(m);
    const zoom = n / m;
    for (let j = 0; j < m; j++) {
      if (n === m) {
        i0[j] = i1[j] = j;
        w0[j] = 1;
        w1[j] = 0;
        continue;
      }
      let cc = j;
      cc += 0.5;
      cc *= zoom;
      cc -= 0.5;
      const start = Math.floor(cc);
      const x = cc - start;
      w0[j] = 1.0 - x;
      w1[j] = 1.0 - w0[j]!;
      i0[j] = Math.min(n - 1, Math.max(0, start));
      i1[j] = Math.min(n - 1, Math.max(0, start + 1));
    }
    return { i0, i1, w0, w1 };
  });
  const [tz, ty, tx] = taps as [(typeof taps)[0], (typeof taps)[0], (typeof taps)[0]];
  const [, H, W] = shape;
  const [D2, H2, W2] = newShape;
  let o = 0;
  for (let z = 0; z < D2; z++) {
    const z0 = tz.i0[z]! * H,
      z1 = tz.i1[z]! * H,
      wz0 = tz.w0[z]!,
      wz1 = tz.w1[z]!;
    for (let y = 0; y < H2; y++) {
      const r00 = (z0 + ty.i0[y]!) * W,
        r01 = (z0 + ty.i1[y]!) * W,
        r10 = (z1 + ty.i0[y]!) * W,
        r11 = (z1 + ty.i1[y]!) * W;
      const wy0 = ty.w0[y]!,
        wy1 = ty.w1[y]!;
      for (let x = 0; x < W2; x++) {
        const x0 = tx.i0[x]!,
          x1 = tx.i1[x]!,
          wx0 = tx.w0[x]!,
          wx1 = tx.w1[x]!;
        // (the corners in C order, z slowest; each product left to right, as NI_ZoomShift)
        let t = 0;
        if (labels[r00 + x0] === c) t += wz0 * wy0 * wx0;
        if (labels[r00 + x1] === c) t += wz0 * wy0 * wx1;
        if (labels[r01 + x0] === c) t += wz0 * wy1 * wx0;
        if (labels[r01 + x1] === c) t += wz0 * wy1 * wx1;
        if (labels[r10 + x0] === c) t += wz1 * wy0 * wx0;
        if (labels[r10 + x1] === c) t += wz1 * wy0 * wx1;
        if (labels[r11 + x0] === c) t += wz1 * wy1 * wx0;
        if (labels[r11 + x1] === c) t += wz1 * wy1 * wx1;
        if (t >= 0.5) dst[o] = value;
        o++;
      }
    }
  }
}

/** Each slice of `out` across `axis` from its nearest slice of `mask` (scipy's zoom of order 0), where the mask is 1, set to `value`. */
function nearestSlices(
  mask: Uint8Array,
  shape: readonly [number, number, number],
  axis: 0 | 1 | 2,
  newShape: readonly [number, number, number],
  out: Uint8Array,
  value: number,
): void {
  const n = shape[axis]!,
    m = newShape[axis]!;
  const zoom = n / m;
  const src = new Int32Array(m);
  for (let j = 0; j < m; j++) {
    let cc = j;
    cc += 0.5;
    cc *= zoom;
    cc -= 0.5;
    src[j] = Math.min(n - 1, Math.max(0, Math.floor(cc + 0.5)));
  }
  const [D, H, W] = newShape;
  const [, h, w] = shape;
  let o = 0;
  for (let z = 0; z < D; z++)
    for (let y = 0; y < H; y++)
      for (let x = 0; x < W; x++, o++) {
        const zz = axis === 0 ? src[z]! : z,
          yy = axis === 1 ? src[y]! : y,
          xx = axis === 2 ? src[x]! : x;
        if (mask[(zz * h + yy) * w + xx]) out[o] = value;
      }
}

/**
 * The order resampleNnunet takes the axes in, and the largest grid it passes through (voxels).
 * Axes that shrink go first, so that no intermediate is larger than the input or the result (a
 * 1000 × 1000 × 1 image claiming 1000 mm slices, resampled to 1 mm, would otherwise pass through
 * 10^9 voxels on its way to 10^3). A separate axis that shrinks goes first too where that changes
 * nothing: with nearest across it (it picks whole slices, each then clipped to its own range as
 * before) or no clip at all (orders ≤ 1 in-plane: the steps commute). Else nnU-Net's order stands
 * (in-plane, clip, across), and its intermediate can be larger than either end: `peak` says so.
 */
export function nnunetPath(
  shape: readonly [number, number, number],
  newShape: readonly [number, number, number],
  currentSpacing: readonly number[],
  newSpacing: readonly number[],
  step: NnunetResamplingStep,
): { axis: 0 | 1 | 2 | null; inPlane: (0 | 1 | 2)[]; acrossFirst: boolean; peak: number } {
  const axis = separateAxis(step.forceSeparateZ, currentSpacing, newSpacing, step.anisotropyThreshold);
  const inPlane = ([0, 1, 2] as const).filter((a) => a !== axis).sort((a, b) => +(newShape[b]! < shape[b]!) - +(newShape[a]! < shape[a]!));
  const acrossFirst = axis !== null && newShape[axis] < shape[axis] && (step.orderZ === 0 || step.order <= 1);
  const vox = (s: readonly number[]) => s[0]! * s[1]! * s[2]!;
  const s1 = [...shape];
  if (acrossFirst) s1[axis] = newShape[axis]!;
  const s2 = [...newShape];
  if (axis !== null && !acrossFirst) s2[axis] = shape[axis]!;
  return { axis, inPlane, acrossFirst, peak: Math.max(vox(shape), vox(s1), vox(s2), vox(newShape)) };
}

function minMax(a: Float32Array, lo: number, hi: number): [number, number] {
  let mn = Infinity,
    mx = -Infinity;
  for (let i = lo; i < hi; i++) {
    const v = a[i]!;
    if (v < mn) mn = v;
    if (v > mx) mx = v;
  }
  return [mn, mx];
}

function clipTo(a: Float32Array, lo: number, hi: number, [mn, mx]: [number, number]): void {
  for (let i = lo; i < hi; i++) {
    const v = a[i]!;
    if (v < mn) a[i] = mn;
    else if (v > mx) a[i] = mx;
  }
}

/** Each slice across `axis` of `out` clipped to the range of the same slice of `src`. */
function clipSlices(
  src: Float32Array,
  shape: readonly [number, number, number],
  out: Float32Array,
  outShape: readonly [number, number, number],
  axis: 0 | 1 | 2,
): void {
  const ranges: [number, number][] = [];
  for (let s = 0; s < shape[axis]!; s++) ranges.push([Infinity, -Infinity]);
  const sliceOf = (sh: readonly number[], i: number) =>
    axis === 0 ? Math.floor(i / (sh[1]! * sh[2]!)) : axis === 1 ? Math.floor(i / sh[2]!) % sh[1]! : i % sh[2]!;
  if (axis === 0) {
    const plane = shape[1] * shape[2],
      outPlane = outShape[1] * outShape[2];
    for (let s = 0; s < shape[0]; s++) clipTo(out, s * outPlane, (s + 1) * outPlane, minMax(src, s * plane, (s + 1) * plane));
    return;
  }
  for (let i = 0; i < src.length; i++) {
    const r = ranges[sliceOf(shape, i)]!,
      v = src[i]!;
    if (v < r[0]) r[0] = v;
    if (v > r[1]) r[1] = v;
  }
  for (let i = 0; i < out.length; i++) {
    const [mn, mx] = ranges[sliceOf(outShape, i)]!,
      v = out[i]!;
    if (v < mn) out[i] = mn;
    else if (v > mx) out[i] = mx;
  }
}
