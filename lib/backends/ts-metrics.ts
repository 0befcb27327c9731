/**
 * Metrics in TypeScript: the same steps as native/include/bhsd/metrics.hpp — label checks,
 * confusion counts and boxes, surfaces, the exact separable anisotropic EDT
 * (Felzenszwalb–Huttenlocher) and the surface-distance reductions.
 */
import { setImmediate as yieldToLoop } from "node:timers/promises";
import type { VoxelArray } from "../types.js";

export async function tsNarrowLabels(
  src: VoxelArray,
  dims: readonly [number, number, number],
  maxLabel: number,
  out: Uint8Array,
  what: string,
): Promise<void> {
  const [nx, ny] = dims;
  for (let i = 0; i < src.length; i++) {
    const v = src[i]!;
    if (!(v >= 0 && v <= maxLabel && Number.isInteger(v))) {
      const x = i % nx,
        y = Math.floor(i / nx) % ny,
        z = Math.floor(i / (nx * ny));
      throw new Error(`${what} holds the value ${v} at voxel (${x}, ${y}, ${z}); labels must be integers 0..${maxLabel}`);
    }
    out[i] = v;
    if ((i & 0x3fffff) === 0x3fffff) await yieldToLoop();
  }
}

export async function tsLabelPairStats(gt: Uint8Array, pred: Uint8Array, dims: readonly [number, number, number], L: number) {
  const [nx, ny, nz] = dims;
  const K = L + 1;
  const counts = new Float64Array(K * K);
  const boxes = new Float64Array(2 * K * 6);
  for (let v = 0; v < 2; v++) for (let l = 0; l < K; l++) boxes.set([nx, ny, nz, -1, -1, -1], (v * K + l) * 6);
  let i = 0;
  for (let z = 0; z < nz; z++) {
    for (let y = 0; y < ny; y++) {
      for (let x = 0; x < nx; x++, i++) {
        const a = gt[i]!,
          b = pred[i]!;
        if (a > L || b > L) throw new Error("a label exceeds maxLabel");
        counts[a * K + b]!++;
        if ((a | b) === 0) continue;
        for (let v = 0; v < 2; v++) {
          const l = v ? b : a;
          if (!l) continue;
          const o = (v * K + l) * 6;
          if (x < boxes[o]!) boxes[o] = x;
          if (y < boxes[o + 1]!) boxes[o + 1] = y;
          if (z < boxes[o + 2]!) boxes[o + 2] = z;
          if (x > boxes[o + 3]!) boxes[o + 3] = x;
          if (y > boxes[o + 4]!) boxes[o + 4] = y;
          if (z > boxes[o + 5]!) boxes[o + 5] = z;
        }
      }
    }
    if (z % 8 === 7) await yieldToLoop();
  }
  return { counts, boxes };
}

/** FH lower envelope along one line: d[q] = min_p f[p] + ((q − p)·s)². */
function envelope(f: Float64Array, d: Float64Array, n: number, s: number, v: Int32Array, z: Float64Array): void {
  const s2 = s * s;
  let k = -1;
  for (let q = 0; q < n; q++) {
    const fq = f[q]!;
    if (fq === Infinity) continue;
    if (k < 0) {
      k = 0;
      v[0] = q;
      z[0] = -Infinity;
      z[1] = Infinity;
      continue;
    }
    // where q's parabola drops below that of v[k] (no closure here: this is the hot loop)
    const fqq = fq + s2 * q * q;
    let p = v[k]!;
    let x = (fqq - (f[p]! + s2 * p * p)) / (2 * s2 * (q - p));
    while (x <= z[k]!) {
      p = v[--k]!;
      x = (fqq - (f[p]! + s2 * p * p)) / (2 * s2 * (q - p));
    }
    k++;
    v[k] = q;
    z[k] = x;
    z[k + 1] = Infinity;
  }
  if (k < 0) {
    d.fill(Infinity, 0, n);
    return;
  }
  let j = 0;
  for (let q = 0; q < n; q++) {
    while (z[j + 1]! < q) j++;
    const t = (q - v[j]!) * s;
    d[q] = t * t + f[v[j]!]!;
  }
}

/** Squared distance (mm²) to the nearest feature voxel, +Infinity when none. */
export function tsEdtSquared(
  feat: Uint8Array,
  w: number,
  h: number,
  d: number,
  sx: number,
  sy: number,
  sz: number,
  out: Float64Array,
): void {
  for (let r = 0; r < h * d; r++) {
    const o = r * w;
    let last = -1;
    for (let x = 0; x < w; x++) {
      if (feat[o + x]) last = x;
      out[o + x] = last < 0 ? Infinity : x - last;
    }
    last = -1;
    for (let x = w - 1; x >= 0; x--) {
      if (feat[o + x]) last = x;
      let t = out[o + x]!;
      if (last >= 0 && last - x < t) t = last - x;
      out[o + x] = t === Infinity ? Infinity : t * sx * (t * sx);
    }
  }
  const n = Math.max(h, d);
  const f = new Float64Array(n),
    g = new Float64Array(n),
    zb = new Float64Array(n + 1),
    v = new Int32Array(n);
  const pass = (len: number, stride: number, lines: number, baseOf: (l: number) => number, s: number) => {
    for (let l = 0; l < lines; l++) {
      const b = baseOf(l);
      let any = false;
      for (let i = 0; i < len; i++) {
        const val = out[b + i * stride]!;
        f[i] = val;
        if (val !== Infinity) any = true;
      }
      if (!any) continue;
      envelope(f, g, len, s, v, zb);
      for (let i = 0; i < len; i++) out[b + i * stride] = g[i]!;
    }
  };
  if (h > 1) pass(h, w, w * d, (l) => Math.floor(l / w) * w * h + (l % w), sy);
  if (d > 1) pass(d, w * h, w * h, (l) => l, sz);
}

/** numpy's default percentile: linear interpolation at rank q·(n−1). */
function percentile(sorted: Float64Array, q: number): number {
  const rank = q * (sorted.length - 1);
  const lo = Math.floor(rank),
    hi = Math.ceil(rank);
  return sorted[lo]! + (sorted[hi]! - sorted[lo]!) * (rank - lo);
}

export async function tsSurfaceMetrics(
  gt: Uint8Array,
  pred: Uint8Array,
  dims: readonly [number, number, number],
  spacing: readonly [number, number, number],
  classes: Int32Array,
  boxes: Float64Array,
  tau: number,
): Promise<Float64Array> {
  const [nx, ny] = dims;
  const [sx, sy, sz] = spacing;
  const res = new Float64Array(classes.length * 10);
  for (let k = 0; k < classes.length; k++) {
    const c = classes[k]!;
    const [x0, y0, z0, x1, y1, z1] = Array.from(boxes.subarray(6 * k, 6 * k + 6));
    const w = x1! - x0! + 1,
      h = y1! - y0! + 1,
      d = z1! - z0! + 1,
      n = w * h * d;
    const mg = new Uint8Array(n),
      mp = new Uint8Array(n);
    for (let z = 0; z < d; z++)
      for (let y = 0; y < h; y++) {
        const src = ((z + z0!) * ny + (y + y0!)) * nx + x0!,
          dst = (z * h + y) * w;
        for (let x = 0; x < w; x++) {
          mg[dst + x] = gt[src + x] === c ? 1 : 0;
          mp[dst + x] = pred[src + x] === c ? 1 : 0;
        }
      }
    const surface = (m: Uint8Array) => {
      const s = new Uint8Array(n);
      const wh = w * h;
      for (let z = 0, i = 0; z < d; z++)
        for (let y = 0; y < h; y++)
          for (let x = 0; x < w; x++, i++) {
            if (!m[i]) continue;
            const inner =
              x > 0 &&
              x < w - 1 &&
              y > 0 &&
              y < h - 1 &&
              z > 0 &&
              z < d - 1 &&
              m[i - 1] &&
              m[i + 1] &&
              m[i - w] &&
              m[i + w] &&
              m[i - wh] &&
              m[i + wh];
            s[i] = inner ? 0 : 1;
          }
      return s;
    };
    const sg = surface(mg),
      sp = surface(mp);
    const dist = new Float64Array(n);
    const distances = (to: Uint8Array, from: Uint8Array) => {
      tsEdtSquared(to, w, h, d, sx, sy, sz, dist);
      let count = 0;
      for (let i = 0; i < n; i++) if (from[i]) count++;
      const v = new Float64Array(count);
      let sum = 0,
        max = 0,
        within = 0;
      for (let i = 0, j = 0; i < n; i++) {
        if (!from[i]) continue;
        const x = Math.sqrt(dist[i]!);
        v[j++] = x;
        sum += x;
        if (x > max) max = x;
        if (x <= tau) within++;
      }
      v.sort();
      return { count, sum, max, p95: count ? percentile(v, 0.95) : 0, within };
    };
    const pg = distances(sg, sp);
    await yieldToLoop();
    const gp = distances(sp, sg);
    res.set([pg.count, gp.count, pg.sum, gp.sum, pg.max, gp.max, pg.p95, gp.p95, pg.within, gp.within], k * 10);
    await yieldToLoop();
  }
  return res;
}
