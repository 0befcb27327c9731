/**
 * MONAI's grids, as its inference pipeline builds them: Spacing's output size and resampling
 * (SpatialResample: torch's grid_sample in float64, border padding, align_corners=False, for the
 * diagonal voxel map a reoriented volume gets), and sliding_window_inference's window starts
 * (dense_patch_slices with _get_scan_interval) and importance map (compute_importance_map).
 */
import { releaseEngineArray } from "../../backends/index.js";
import { allocArray } from "../../volume.js";
import { roundHalfEven } from "../resample.js";

/**
 * Spacing's output size along an axis of `n` voxels of `spacing` mm resampled to `pixdim` mm
 * (compute_shape_offset: the extent between the first and last voxel centres, plus one, rounded
 * half to even as numpy).
 */
export function monaiSpacingSize(n: number, spacing: number, pixdim: number): number {
  return Math.max(1, roundHalfEven((spacing / pixdim) * (n - 1) + 1));
}

/** One axis of grid_sample: per output index, the two source indices and weights (float64), or the nearest one. */
function axisTaps(nOut: number, nIn: number, ratio: number, nearest: boolean) {
  const i0 = new Int32Array(nOut),
    w0 = new Float64Array(nOut),
    w1 = new Float64Array(nOut),
    has1 = new Uint8Array(nOut);
  for (let j = 0; j < nOut; j++) {
    // the source coordinate of output voxel j, clipped to the volume (padding_mode "border")
    const x = Math.min(nIn - 1, Math.max(0, j * ratio));
    if (nearest) {
      // grid_sample's nearest: nearbyint, halves to even
      i0[j] = roundHalfEven(x);
      w0[j] = 1;
      continue;
    }
    const f = Math.floor(x);
    i0[j] = f;
    w0[j] = f + 1 - x;
    w1[j] = x - f;
    has1[j] = f + 1 < nIn ? 1 : 0;
  }
  return { i0, w0, w1, has1 };
}

/**
 * Resamples one channel ([a0, a1, a2], C order) as MONAI's SpatialResample does for a voxel map
 * j → j · ratio (per axis): trilinear ("bilinear": grid_sample's weights, in float64) or nearest,
 * the result rounded to float32. Trilinear runs as three linear passes in float64, one axis at a
 * time, the most shrinking first (the same products and sums as grid_sample's eight corners,
 * grouped per axis: they differ from its order by float64 rounding, some 1e-16 of the value, far
 * below float32's step).
 */
export function resampleMonai(
  src: ArrayLike<number>,
  inShape: readonly [number, number, number],
  outShape: readonly [number, number, number],
  ratio: readonly [number, number, number],
  mode: "bilinear" | "nearest",
): Float32Array {
  const nearest = mode === "nearest";
  const [D, H, W] = inShape;
  const [oD, oH, oW] = outShape;
  const tz = axisTaps(oD, D, ratio[0], nearest),
    ty = axisTaps(oH, H, ratio[1], nearest),
    tx = axisTaps(oW, W, ratio[2], nearest);
  const out = allocArray("float32", oD * oH * oW, "resampled image", { overwritten: true }) as Float32Array;
  if (nearest) {
    let o = 0;
    for (let a = 0; a < oD; a++)
      for (let b = 0; b < oH; b++) {
        const r = tz.i0[a]! * H * W + ty.i0[b]! * W;
        for (let c = 0; c < oW; c++) out[o++] = src[r + tx.i0[c]!]!;
      }
    return out;
  }
  // three linear passes, one axis each, the most shrinking axis first (the temporaries stay at
  // most the size of the larger of the input and the output)
  const taps = [tz, ty, tx];
  const order = [0, 1, 2].sort((a, b) => outShape[a]! / inShape[a]! - outShape[b]! / inShape[b]!);
  let cur: ArrayLike<number> = src;
  const shape = [D, H, W];
  let temp: Float64Array | undefined;
  for (const [step, k] of order.entries()) {
    const last = step === 2;
    const n = shape[k]!,
      m = outShape[k]!;
    const outer = shape.slice(0, k).reduce((a, b) => a * b, 1),
      inner = shape.slice(k + 1).reduce((a, b) => a * b, 1);
    const dst: Float32Array | Float64Array = last
      ? out
      : (allocArray("float64", outer * m * inner, "resampling pass", { overwritten: true }) as Float64Array);
    const { i0, w0, w1, has1 } = taps[k]!;
    for (let o = 0; o < outer; o++)
      for (let j = 0; j < m; j++) {
        const s0 = (o * n + i0[j]!) * inner,
          d0 = (o * m + j) * inner,
          a = w0[j]!,
          b = w1[j]!;
        if (has1[j]) for (let q = 0; q < inner; q++) dst[d0 + q] = cur[s0 + q]! * a + cur[s0 + inner + q]! * b;
        else for (let q = 0; q < inner; q++) dst[d0 + q] = cur[s0 + q]! * a;
      }
    if (temp) releaseEngineArray(temp);
    temp = last ? undefined : (dst as Float64Array);
    cur = dst;
    shape[k] = m;
  }
  return out;
}

/**
 * sliding_window_inference's window starts along one axis of `size` voxels (already padded to at
 * least the window): a step of ⌊roi · (1 − overlap)⌋ (the whole window where it fills the axis),
 * the last window moved back to end at the edge.
 */
export function monaiWindowStarts(size: number, roi: number, overlap: number): number[] {
  const interval = roi === size ? roi : Math.max(1, Math.trunc(roi * (1 - overlap)));
  const num = Math.ceil(size / interval);
  let count = 1;
  for (let d = 0; d < num; d++)
    if (d * interval + roi >= size) {
      count = d + 1;
      break;
    }
  return Array.from({ length: count }, (_, i) => i * interval - Math.max(i * interval + roi - size, 0));
}

/**
 * compute_importance_map: ones ("constant"), or the product of per-axis Gaussians
 * exp(−x² / 2σ²), x from −(n − 1)/2, σ = n · sigmaScale (float32, as torch computes it; no peak
 * normalisation), raised to at least max(its minimum, 0.001).
 */
export function monaiImportanceMap(
  patch: readonly [number, number, number],
  mode: "constant" | "gaussian",
  sigmaScale: readonly [number, number, number],
): Float32Array {
  const n = patch[0] * patch[1] * patch[2];
  if (mode === "constant") return new Float32Array(n).fill(1);
  const f = Math.fround;
  const axes = patch.map((p, i) => {
    const sigma = p * sigmaScale[i]!;
    const denom = f(-2 * sigma ** 2);
    return Float32Array.from({ length: p }, (_, k) => {
      const x = f(-(p - 1) / 2 + k);
      return f(Math.exp(f(f(x * x) / denom)));
    });
  });
  const out = new Float32Array(n);
  let i = 0,
    min = Infinity;
  for (let a = 0; a < patch[0]; a++)
    for (let b = 0; b < patch[1]; b++) {
      const ab = f(axes[0]![a]! * axes[1]![b]!);
      for (let c = 0; c < patch[2]; c++) {
        const v = f(ab * axes[2]![c]!);
        out[i++] = v;
        if (v < min) min = v;
      }
    }
  const floor = f(Math.max(min, 1e-3));
  for (let k = 0; k < n; k++) if (out[k]! < floor) out[k] = floor;
  return out;
}
