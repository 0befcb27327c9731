/** DICOM test helpers: world-space comparison against a reference volume, and finding pydicom. */
import { spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import { join } from "node:path";
import { ROOT } from "./paths.js";
import type { Volume } from "../lib/types.js";

export const DICOM_FIXTURES = join(ROOT, "test", "fixtures", "dicom");

/** Inverse of a 4x4 row-major affine (3x3 part inverted, translation carried). */
export function invertAffine(a: readonly number[]): number[] {
  const m = [a[0]!, a[1]!, a[2]!, a[4]!, a[5]!, a[6]!, a[8]!, a[9]!, a[10]!];
  const det = m[0]! * (m[4]! * m[8]! - m[5]! * m[7]!) - m[1]! * (m[3]! * m[8]! - m[5]! * m[6]!) + m[2]! * (m[3]! * m[7]! - m[4]! * m[6]!);
  const inv = [
    (m[4]! * m[8]! - m[5]! * m[7]!) / det,
    (m[2]! * m[7]! - m[1]! * m[8]!) / det,
    (m[1]! * m[5]! - m[2]! * m[4]!) / det,
    (m[5]! * m[6]! - m[3]! * m[8]!) / det,
    (m[0]! * m[8]! - m[2]! * m[6]!) / det,
    (m[2]! * m[3]! - m[0]! * m[5]!) / det,
    (m[3]! * m[7]! - m[4]! * m[6]!) / det,
    (m[1]! * m[6]! - m[0]! * m[7]!) / det,
    (m[0]! * m[4]! - m[1]! * m[3]!) / det,
  ];
  const t = [a[3]!, a[7]!, a[11]!];
  const out: number[] = [];
  for (let r = 0; r < 3; r++) {
    out.push(inv[r * 3]!, inv[r * 3 + 1]!, inv[r * 3 + 2]!, -(inv[r * 3]! * t[0]! + inv[r * 3 + 1]! * t[1]! + inv[r * 3 + 2]! * t[2]!));
  }
  out.push(0, 0, 0, 1);
  return out;
}

const mul = (a: readonly number[], b: readonly number[]) => {
  const o = new Array<number>(16).fill(0);
  for (let r = 0; r < 4; r++) for (let c = 0; c < 4; c++) for (let k = 0; k < 4; k++) o[r * 4 + c]! += a[r * 4 + k]! * b[k * 4 + c]!;
  return o;
};

/**
 * Compares `got` with `ref` in world space: the index map inv(got.affine)·ref.affine must be an
 * integer permutation/flip of the grid (within 1e-4 voxel), both affines must put every voxel at
 * the same place (worst corner distance returned in mm), and every voxel value must be equal
 * (ref values scaled by refSlope/refInter). Returns the worst differences.
 */
export function compareWorld(got: Volume, ref: Volume, refSlope = 1, refInter = 0) {
  const [nx, ny, nz] = ref.dims;
  const m = mul(invertAffine(got.affine), ref.affine); // ref index → got index
  let nonInteger = 0;
  for (let r = 0; r < 3; r++)
    for (let c = 0; c < 4; c++) nonInteger = Math.max(nonInteger, Math.abs(m[r * 4 + c]! - Math.round(m[r * 4 + c]!)));
  const mi = m.map(Math.round);
  // World distance between where each affine puts corresponding voxels (corners suffice: affine maps).
  let worldMm = 0;
  for (const i of [0, nx - 1])
    for (const j of [0, ny - 1])
      for (const k of [0, nz - 1]) {
        const g = [
          mi[0]! * i + mi[1]! * j + mi[2]! * k + mi[3]!,
          mi[4]! * i + mi[5]! * j + mi[6]! * k + mi[7]!,
          mi[8]! * i + mi[9]! * j + mi[10]! * k + mi[11]!,
        ];
        for (let r = 0; r < 3; r++) {
          const wr = ref.affine[r * 4]! * i + ref.affine[r * 4 + 1]! * j + ref.affine[r * 4 + 2]! * k + ref.affine[r * 4 + 3]!;
          const wg = got.affine[r * 4]! * g[0]! + got.affine[r * 4 + 1]! * g[1]! + got.affine[r * 4 + 2]! * g[2]! + got.affine[r * 4 + 3]!;
          worldMm = Math.max(worldMm, Math.abs(wr - wg));
        }
      }
  const [gx, gy, gz] = got.dims;
  let maxDiff = 0,
    outside = 0;
  for (let k = 0; k < nz; k++)
    for (let j = 0; j < ny; j++)
      for (let i = 0; i < nx; i++) {
        const a = mi[0]! * i + mi[1]! * j + mi[2]! * k + mi[3]!;
        const b = mi[4]! * i + mi[5]! * j + mi[6]! * k + mi[7]!;
        const c = mi[8]! * i + mi[9]! * j + mi[10]! * k + mi[11]!;
        if (a < 0 || b < 0 || c < 0 || a >= gx || b >= gy || c >= gz) {
          outside++;
          continue;
        }
        const rv = Number(ref.data[i + nx * (j + ny * k)]) * refSlope + refInter;
        const gv = Number(got.data[a + gx * (b + gy * c)]);
        maxDiff = Math.max(maxDiff, Math.abs(rv - gv));
      }
  return { nonInteger, worldMm, maxDiff, outside, sameCount: gx * gy * gz === nx * ny * nz };
}

/** sha256 of a volume's values as int16 little-endian in DICOM order (slice, row, column), rows un-flipped. */
export function dicomOrderSha256(v: Volume): string {
  const [nx, ny, nz] = v.dims;
  const out = new Int16Array(nx * ny * nz);
  for (let k = 0; k < nz; k++)
    for (let r = 0; r < ny; r++)
      for (let c = 0; c < nx; c++) {
        out[c + nx * (r + ny * k)] = Number(v.data[c + nx * (ny - 1 - r + ny * k)]);
      }
  return createHash("sha256").update(new Uint8Array(out.buffer)).digest("hex");
}

let pythonCache: string | null | undefined;
/** A python interpreter that imports pydicom and numpy, or null. */
export function pydicomPython(): string | null {
  if (pythonCache !== undefined) return pythonCache;
  pythonCache = null;
  for (const py of [process.env.BHSD_PYTHON, "/usr/bin/python3", "python3"].filter(Boolean) as string[]) {
    const r = spawnSync(py, ["-c", "import pydicom, numpy; print(pydicom.__file__)"], { encoding: "utf8" });
    if (r.status === 0) {
      pythonCache = py;
      break;
    }
  }
  return pythonCache;
}

/** Runs a python script (with pydicom) and parses its stdout as JSON. */
export function runPython<T>(script: string, args: string[] = []): T {
  const py = pydicomPython();
  if (!py) throw new Error("pydicom is not installed");
  const r = spawnSync(py, ["-c", script, ...args], { encoding: "utf8", maxBuffer: 256 * 2 ** 20 });
  if (r.status !== 0) throw new Error(`python failed: ${r.stderr}`);
  return JSON.parse(r.stdout) as T;
}
