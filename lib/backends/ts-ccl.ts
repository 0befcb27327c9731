/**
 * Connected components in TypeScript: the same run-based algorithm as native/include/bhsd/ccl.hpp
 * (runs per row, union-find with the smaller index as root, raster-order numbering), on one thread,
 * yielding to the event loop between blocks of rows.
 */
import type { VoxelArray } from "../types.js";
import { CHUNK } from "./yield.js";
import { setImmediate as yieldToLoop } from "node:timers/promises";

/** [dy, dz, ext] of the already-seen neighbour rows for each connectivity. */
const NEIGHBOUR_ROWS: Record<6 | 18 | 26, readonly (readonly [number, number, number])[]> = {
  6: [
    [-1, 0, 0],
    [0, -1, 0],
  ],
  18: [
    [-1, 0, 1],
    [-1, -1, 0],
    [0, -1, 1],
    [1, -1, 0],
  ],
  26: [
    [-1, 0, 1],
    [-1, -1, 1],
    [0, -1, 1],
    [1, -1, 1],
  ],
};

function find(parent: Int32Array, i: number): number {
  while (parent[i] !== i) {
    const g = parent[parent[i]!]!;
    parent[i] = g;
    i = g;
  }
  return i;
}

export async function tsConnectedComponents(
  data: VoxelArray,
  dims: readonly [number, number, number],
  connectivity: 6 | 18 | 26,
  perClass: boolean,
  out: Int32Array,
): Promise<number> {
  const [nx, ny, nz] = dims;
  const rows = ny * nz;
  const nb = NEIGHBOUR_ROWS[connectivity];
  let cap = 1 << 12;
  let x0 = new Int32Array(cap),
    x1 = new Int32Array(cap),
    val = new Float64Array(cap),
    parent = new Int32Array(cap);
  const rowStart = new Int32Array(rows + 1);
  let n = 0;
  const grow = () => {
    cap *= 2;
    const g = <A extends Int32Array | Float64Array>(a: A): A => {
      const b = new (a.constructor as new (n: number) => A)(cap);
      b.set(a);
      return b;
    };
    x0 = g(x0);
    x1 = g(x1);
    val = g(val);
    parent = g(parent);
  };
  const rowsPerYield = Math.max(1, Math.floor(CHUNK / nx));
  for (let r = 0; r < rows; r++) {
    if (r > 0 && r % rowsPerYield === 0) await yieldToLoop();
    const y = r % ny,
      z = (r - y) / ny;
    const base = r * nx;
    const first = n;
    rowStart[r] = first;
    let x = 0;
    while (x < nx) {
      while (x < nx && data[base + x] === 0) x++;
      if (x >= nx) break;
      const v = data[base + x]!;
      const start = x;
      if (perClass) while (x < nx && data[base + x] === v) x++;
      else while (x < nx && data[base + x] !== 0) x++;
      if (n === cap) grow();
      x0[n] = start;
      x1[n] = x - 1;
      val[n] = v;
      parent[n] = n;
      n++;
    }
    if (first === n) continue;
    for (const [dy, dz, ext] of nb) {
      const yy = y + dy,
        zz = z + dz;
      if (yy < 0 || yy >= ny || zz < 0) continue;
      const rr = zz * ny + yy;
      const b1 = rowStart[rr + 1]!;
      let j = rowStart[rr]!;
      for (let i = first; i < n; i++) {
        while (j < b1 && x1[j]! + ext < x0[i]!) j++;
        let ri = find(parent, i); // i's root, kept current across its unions
        for (let k = j; k < b1 && x0[k]! <= x1[i]! + ext; k++) {
          if (perClass && val[k] !== val[i]) continue;
          const rk = find(parent, k);
          if (rk === ri) continue;
          if (rk < ri) {
            parent[ri] = rk;
            ri = rk;
          } else parent[rk] = ri;
        }
      }
    }
    rowStart[r + 1] = n; // provisional end, so that the next row can read [start, end)
  }
  rowStart[rows] = n;
  const label = new Int32Array(n);
  let count = 0;
  for (let i = 0; i < n; i++) {
    const root = find(parent, i);
    label[i] = root === i ? ++count : label[root]!;
  }
  for (let r = 0; r < rows; r++) {
    const base = r * nx;
    for (let i = rowStart[r]!; i < rowStart[r + 1]!; i++) out.fill(label[i]!, base + x0[i]!, base + x1[i]! + 1);
  }
  return count;
}

export async function tsComponentStats(
  labels: Int32Array,
  dims: readonly [number, number, number],
  count: number,
  classes: VoxelArray | null,
  out: Float64Array,
): Promise<void> {
  const [nx, ny, nz] = dims;
  out.fill(0);
  let i = 0;
  for (let z = 0; z < nz; z++) {
    for (let y = 0; y < ny; y++) {
      for (let x = 0; x < nx; x++, i++) {
        const c = labels[i]!;
        if (c === 0) continue;
        if (c < 0 || c > count) throw new RangeError(`label ${c} at voxel ${i} is outside 1..${count}`);
        const o = (c - 1) * 11;
        if (out[o] === 0) {
          {
            out[o + 1] = x;
            out[o + 2] = y;
            out[o + 3] = z;
          }
          {
            out[o + 4] = x;
            out[o + 5] = y;
            out[o + 6] = z;
          }
          out[o + 10] = classes ? classes[i]! : 0;
        } else {
          if (x < out[o + 1]!) out[o + 1] = x;
          if (y < out[o + 2]!) out[o + 2] = y;
          if (x > out[o + 4]!) out[o + 4] = x;
          if (y > out[o + 5]!) out[o + 5] = y;
          out[o + 6] = z;
        }
        out[o]!++;
        out[o + 7]! += x;
        out[o + 8]! += y;
        out[o + 9]! += z;
      }
    }
    if (z % 8 === 7) await yieldToLoop();
  }
}

export async function tsComponentSliceAreas(
  labels: Int32Array,
  dims: readonly [number, number, number],
  count: number,
  zmin: Int32Array,
  offsets: Float64Array,
  out: Uint32Array,
): Promise<void> {
  const plane = dims[0] * dims[1];
  for (let z = 0; z < dims[2]; z++) {
    const base = z * plane;
    for (let i = 0; i < plane; i++) {
      const c = labels[base + i]!;
      if (c === 0) continue;
      if (c < 0 || c > count) throw new RangeError(`label ${c} is outside 1..${count}`);
      out[offsets[c - 1]! + z - zmin[c - 1]!]!++;
    }
    if (z % 8 === 7) await yieldToLoop();
  }
}

export async function tsSelectComponents<T extends VoxelArray>(src: T, labels: Int32Array, keep: Uint8Array, out: T): Promise<void> {
  const count = keep.length - 1;
  for (let lo = 0; lo < src.length; lo += CHUNK) {
    const hi = Math.min(src.length, lo + CHUNK);
    for (let i = lo; i < hi; i++) {
      const c = labels[i]!;
      out[i] = c > 0 && c <= count && keep[c] ? src[i]! : 0;
    }
    if (hi < src.length) await yieldToLoop();
  }
}
