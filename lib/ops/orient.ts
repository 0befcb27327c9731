/**
 * Reorientation: a volume's voxel axes reordered and flipped so that they run along named world
 * directions, as nibabel's as_closest_canonical and MONAI's Orientationd do ("RAS": the first
 * axis toward the patient's right, the second anterior, the third superior). Only permutations and
 * flips: the voxels are moved, never interpolated, and the affine is changed so that every voxel
 * keeps its place in the world.
 */
import { invalidParameterError } from "../is.js";
import type { Volume, VoxelArray } from "../types.js";
import { allocArray, assertVolume } from "../volume.js";
import { dtypeOf } from "../is.js";

/** How a reorientation moves axes: new axis k is old axis perm[k], reversed where flip[k]. */
export interface Orientation {
  perm: [number, number, number];
  flip: [boolean, boolean, boolean];
}

const LETTERS: Record<string, [number, number]> = { R: [0, 1], L: [0, -1], A: [1, 1], P: [1, -1], S: [2, 1], I: [2, -1] };

/** Checks axis codes: three letters naming each of R/L, A/P, S/I once ("RAS", "LPS", "PIR" …). */
export function checkAxcodes(codes: unknown, name: string): string {
  if (typeof codes !== "string" || codes.length !== 3) throw invalidParameterError(name, 'three axis letters such as "RAS"', codes);
  const up = codes.toUpperCase();
  const worlds = [...up].map((c) => LETTERS[c]?.[0]);
  if (worlds.some((w) => w === undefined) || new Set(worlds).size !== 3)
    throw invalidParameterError(name, "three axis letters naming each of R/L, A/P and S/I once", codes);
  return up;
}

/**
 * The axis moves that bring a volume with this affine to `codes`: each voxel axis goes to the world
 * axis its direction is closest to (nibabel's io_orientation, for the affines scanners write), in
 * the direction the codes name.
 */
export function orientationOf(affine: readonly number[], codes: string): Orientation {
  const up = checkAxcodes(codes, "codes");
  // world axis and sign of each voxel axis: the largest component of its (unit) direction
  const axisWorld: { w: number; sign: number }[] = [0, 1, 2].map((a) => {
    const col = [affine[a]!, affine[4 + a]!, affine[8 + a]!];
    const norm = Math.hypot(...col);
    if (!(norm > 0) || !Number.isFinite(norm))
      throw new RangeError(`the affine's voxel axis ${a} has no direction (column ${JSON.stringify(col)})`);
    let w = 0;
    for (let k = 1; k < 3; k++) if (Math.abs(col[k]!) > Math.abs(col[w]!)) w = k;
    return { w, sign: Math.sign(col[w]!) };
  });
  if (new Set(axisWorld.map((x) => x.w)).size !== 3)
    throw new RangeError(
      "the affine's voxel axes do not each run closest to a different world axis (an oblique volume bhsd will not reorient)",
    );
  const perm = [0, 0, 0] as [number, number, number];
  const flip = [false, false, false] as [boolean, boolean, boolean];
  [...up].forEach((c, k) => {
    const [w, dir] = LETTERS[c]!;
    const a = axisWorld.findIndex((x) => x.w === w);
    perm[k] = a;
    flip[k] = axisWorld[a]!.sign !== dir;
  });
  return { perm, flip };
}

const identity = (o: Orientation) => o.perm.every((p, k) => p === k) && o.flip.every((f) => !f);

/**
 * Moves `data` (x fastest, `dims` [nx, ny, nz]) as `o` says, into a new array of the same type;
 * `inverse` undoes that move (data on the reoriented grid back to the original's `dims`).
 */
export function moveAxes<T extends VoxelArray>(data: T, dims: readonly [number, number, number], o: Orientation, inverse = false): T {
  // oriented grid's dims; index (i0, i1, i2) there is, along old axis perm[k], i_k or its mirror
  const nd = o.perm.map((p) => dims[p]!) as [number, number, number];
  const oldStride = [1, dims[0], dims[0] * dims[1]];
  const step = o.perm.map((p, k) => (o.flip[k] ? -oldStride[p]! : oldStride[p]!));
  const base = o.perm.reduce((b, p, k) => b + (o.flip[k] ? (dims[p]! - 1) * oldStride[p]! : 0), 0);
  const out = allocArray(dtypeOf(data)!, data.length, "reoriented volume", { overwritten: true }) as T;
  let n = 0;
  for (let i2 = 0; i2 < nd[2]; i2++)
    for (let i1 = 0; i1 < nd[1]; i1++) {
      let src = base + i2 * step[2]! + i1 * step[1]!;
      const s0 = step[0]!;
      if (!inverse) for (let i0 = 0; i0 < nd[0]; i0++, src += s0) out[n++] = data[src]!;
      else for (let i0 = 0; i0 < nd[0]; i0++, src += s0) out[src] = data[n++]!;
    }
  return out;
}

/** The volume reoriented to `codes` (a new volume; the input's own where nothing moves), and how. */
export function reorient<T extends VoxelArray>(volume: Volume<T>, codes: string): { volume: Volume<T>; orientation: Orientation } {
  assertVolume("volume", volume);
  const o = orientationOf(volume.affine, checkAxcodes(codes, "codes"));
  if (identity(o)) return { volume, orientation: o };
  const A = volume.affine;
  const affine = [...A];
  for (let k = 0; k < 3; k++) {
    const a = o.perm[k]!;
    for (let r = 0; r < 3; r++) affine[r * 4 + k] = o.flip[k] ? -A[r * 4 + a]! : A[r * 4 + a]!;
  }
  // a flipped axis starts at the old one's far end
  for (let r = 0; r < 3; r++)
    affine[r * 4 + 3] = A[r * 4 + 3]! + o.perm.reduce((s, a, k) => s + (o.flip[k] ? A[r * 4 + a]! * (volume.dims[a]! - 1) : 0), 0);
  return {
    volume: {
      data: moveAxes(volume.data, volume.dims, o),
      dims: o.perm.map((a) => volume.dims[a]!) as [number, number, number],
      spacing: o.perm.map((a) => volume.spacing[a]!) as [number, number, number],
      affine,
    },
    orientation: o,
  };
}
