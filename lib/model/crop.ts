/**
 * nnU-Net's crop to the non-zero region (crop_to_nonzero): its preprocessing runs on the bounding
 * box of the image's non-zero voxels (the box of the hole-filled mask it takes is the same box),
 * and its export puts the labels back into a background-filled image of the original size.
 */
import { releaseEngineArray } from "../backends/index.js";
import { dtypeOf } from "../is.js";
import { connectedComponents } from "../ops/components.js";
import type { Volume } from "../types.js";
import { allocArray } from "../volume.js";

/** A box of a volume, in voxels along (x, y, z): its first voxel and its size. */
export interface Box {
  offset: [number, number, number];
  dims: [number, number, number];
}

/**
 * The bounding box of the voxels that are not 0 (NaN counts as not 0, as numpy's `!= 0`); null
 * where that is the whole volume or where every voxel is 0 (nothing to crop to: the whole volume runs).
 */
export function nonzeroBox(v: Volume): Box | null {
  const [nx, ny, nz] = v.dims;
  const d = v.data;
  let x0 = nx,
    x1 = -1,
    y0 = ny,
    y1 = -1,
    z0 = nz,
    z1 = -1;
  for (let z = 0; z < nz; z++)
    for (let y = 0; y < ny; y++) {
      const row = (z * ny + y) * nx;
      let first = -1;
      for (let x = 0; x < nx; x++)
        if (d[row + x] !== 0) {
          first = x;
          break;
        }
      if (first < 0) continue;
      let last = first;
      for (let x = nx - 1; x > first; x--)
        if (d[row + x] !== 0) {
          last = x;
          break;
        }
      if (first < x0) x0 = first;
      if (last > x1) x1 = last;
      if (y < y0) y0 = y;
      if (y > y1) y1 = y;
      if (z < z0) z0 = z;
      if (z > z1) z1 = z;
    }
  if (x1 < 0) return null;
  const box: Box = { offset: [x0, y0, z0], dims: [x1 - x0 + 1, y1 - y0 + 1, z1 - z0 + 1] };
  return box.dims.every((n, i) => n === v.dims[i]) ? null : box;
}

/** The box of a volume as a volume of its own (a copy; its affine places it where it was). */
export function cropVolume(v: Volume, box: Box): Volume {
  const [nx, ny] = v.dims;
  const [bx, by, bz] = box.dims;
  const [ox, oy, oz] = box.offset;
  const data = allocArray(dtypeOf(v.data)!, bx * by * bz, "cropped CT", { overwritten: true });
  for (let z = 0; z < bz; z++)
    for (let y = 0; y < by; y++) {
      const from = ((z + oz) * ny + (y + oy)) * nx + ox;
      data.set(v.data.subarray(from, from + bx) as never, (z * by + y) * bx);
    }
  const A = v.affine;
  const affine = [...A];
  for (let r = 0; r < 3; r++) affine[4 * r + 3] = A[4 * r + 3]! + A[4 * r]! * ox + A[4 * r + 1]! * oy + A[4 * r + 2]! * oz;
  return { data, dims: [bx, by, bz], spacing: [...v.spacing], affine };
}

/**
 * Calls `row(from, to, n)` for the runs of `n` voxels of the box's grid (from its index `from`)
 * that lie at index `to` of the whole volume's, for box indices in [lo, hi).
 */
export function forEachBoxRun(
  box: Box,
  dims: readonly [number, number, number],
  lo: number,
  hi: number,
  row: (from: number, to: number, n: number) => void,
): void {
  const [bx, by] = box.dims;
  const [nx, ny] = dims;
  const [ox, oy, oz] = box.offset;
  for (let i = lo; i < hi;) {
    const x = i % bx,
      r = (i - x) / bx,
      y = r % by,
      z = (r - y) / by;
    const n = Math.min(bx - x, hi - i);
    row(i, ((z + oz) * ny + (y + oy)) * nx + (x + ox), n);
    i += n;
  }
}

/** Labels on the box's grid put back into a volume-sized array of background (0), as nnU-Net's insert_crop_into_image. */
export function uncropLabels(labels: Uint8Array, box: Box, dims: readonly [number, number, number]): Uint8Array {
  const out = allocArray("uint8", dims[0] * dims[1] * dims[2], "labels") as Uint8Array;
  forEachBoxRun(box, dims, 0, labels.length, (from, to, n) => out.set(labels.subarray(from, from + n), to));
  return out;
}

/** Calls `run(to, n)` for the runs of the whole volume's voxels (index `to`, `n` long) outside the box. */
export function forEachOutsideRun(box: Box, dims: readonly [number, number, number], run: (to: number, n: number) => void): void {
  const [nx, ny, nz] = dims;
  const [bx, by, bz] = box.dims;
  const [ox, oy, oz] = box.offset;
  for (let z = 0; z < nz; z++)
    for (let y = 0; y < ny; y++) {
      const row = (z * ny + y) * nx;
      if (z < oz || z >= oz + bz || y < oy || y >= oy + by) run(row, nx);
      else {
        if (ox > 0) run(row, ox);
        if (ox + bx < nx) run(row + ox + bx, nx - ox - bx);
      }
    }
}

/**
 * nnU-Net's create_nonzero_mask for one channel: 1 where the volume is not 0, and in the holes of
 * that region (scipy's binary_fill_holes: the zero voxels not 6-connected to the volume's border
 * through zero voxels), else 0.
 */
export async function filledNonzeroMask(v: Volume): Promise<Uint8Array> {
  const n = v.data.length;
  const zero = allocArray("uint8", n, "zero mask", { overwritten: true }) as Uint8Array;
  for (let i = 0; i < n; i++) zero[i] = v.data[i] === 0 ? 1 : 0;
  const { labels, count } = await connectedComponents(
    { data: zero, dims: v.dims, spacing: v.spacing, affine: v.affine },
    { connectivity: 6 },
  );
  // the zero components that touch a face of the volume are outside
  const [nx, ny, nz] = v.dims;
  const outside = new Uint8Array(count + 1);
  for (let z = 0; z < nz; z++)
    for (let y = 0; y < ny; y++) {
      const row = (z * ny + y) * nx;
      if (z === 0 || z === nz - 1 || y === 0 || y === ny - 1) for (let x = 0; x < nx; x++) outside[labels.data[row + x]!] = 1;
      else {
        outside[labels.data[row]!] = 1;
        outside[labels.data[row + nx - 1]!] = 1;
      }
    }
  outside[0] = 0;
  const mask = zero; // (reused: each voxel read before it is written)
  for (let i = 0; i < n; i++) mask[i] = zero[i] && outside[labels.data[i]!] ? 0 : 1;
  releaseEngineArray(labels.data);
  return mask;
}
