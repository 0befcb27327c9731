/** Resampling a Volume to another voxel size: trilinear for images, nearest for label volumes. */
import { invalidParameterError } from "../is.js";
import * as ops from "../ops/tensor.js";
import type { Volume } from "../types.js";
import { ARRAY_CTOR, assertVolume } from "../volume.js";
import { dtypeOf } from "../is.js";

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
  const t = { data: Float32Array.from(volume.data), shape: [1, 1, volume.dims[2], volume.dims[1], volume.dims[0]] };
  const r = await ops.resize(t, {
    sizes: [dims[2], dims[1], dims[0]],
    mode,
    coordinateTransformationMode: "half_pixel",
    nearestMode: "round_prefer_floor",
  });
  const dtype = mode === "nearest" ? dtypeOf(volume.data)! : "float32";
  const data = dtype === "float32" ? r.data : new ARRAY_CTOR[dtype](r.data.length);
  if (data !== r.data) for (let i = 0; i < data.length; i++) data[i] = r.data[i]!;
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
