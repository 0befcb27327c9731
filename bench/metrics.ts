/**
 * evaluate() on a 40×512×512 pair holding all five classes, beside the spec's scipy reference
 * (surfaces by binary_erosion, distance_transform_edt with sampling, cropped to the two masks' box
 * as MONAI does) on the same arrays in the same run.
 */
import { join } from "node:path";
import { backendInfo, evaluate, setBackend, volumeFromArray, writeNpy } from "../dist/index.js";
import { paintEllipsoid } from "../dist/phantom/ellipsoid.js";
import { fmt, measure, pythonWith, rng, runPython } from "./lib.js";

/** Ellipsoid bleeds of classes 1..5 in gt; pred moves and resizes each a little, and misses one. */
export function metricPair(nx: number, ny: number, nz: number, seed: number): { gt: Uint8Array; pred: Uint8Array } {
  const gt = new Uint8Array(nx * ny * nz),
    pred = new Uint8Array(nx * ny * nz);
  const r = rng(seed);
  const paint = (m: Uint8Array, c: number, cx: number, cy: number, cz: number, ax: number, ay: number, az: number) =>
    paintEllipsoid(m, [nx, ny, nz], [cx, cy, cz], [ax, ay, az], c);
  for (let b = 0; b < 15; b++) {
    const c = 1 + (b % 5);
    const cx = 60 + r() * (nx - 120),
      cy = 60 + r() * (ny - 120),
      cz = 3 + r() * (nz - 6);
    const ax = 8 + r() * 40,
      ay = 8 + r() * 40,
      az = 1 + r() * 4;
    paint(gt, c, cx, cy, cz, ax, ay, az);
    if (b !== 7)
      paint(pred, c, cx + (r() - 0.5) * 8, cy + (r() - 0.5) * 8, cz + (r() - 0.5), ax * (0.8 + r() * 0.4), ay * (0.8 + r() * 0.4), az);
  }
  return { gt, pred };
}

const SCIPY = `
import json, sys, time, numpy as np
from scipy import ndimage
g = np.load(sys.argv[1]); p = np.load(sys.argv[2]); sp = json.loads(sys.argv[3])
st = ndimage.generate_binary_structure(3, 1)
def run():
    out = {}
    for c in range(1, 6):
        G, P = g == c, p == c
        r = {"dice": 2 * (G & P).sum() / max(1, G.sum() + P.sum())}
        if G.any() and P.any():
            idx = np.argwhere(G | P); lo = idx.min(0); hi = idx.max(0) + 1
            sl = tuple(slice(a, b) for a, b in zip(lo, hi))
            Gc, Pc = G[sl], P[sl]
            sG = Gc & ~ndimage.binary_erosion(Gc, st, border_value=0)
            sP = Pc & ~ndimage.binary_erosion(Pc, st, border_value=0)
            dPG = ndimage.distance_transform_edt(~sG, sampling=sp)[sP]
            dGP = ndimage.distance_transform_edt(~sP, sampling=sp)[sG]
            r["hd95"] = float(max(np.percentile(dPG, 95), np.percentile(dGP, 95)))
            r["nsd"] = float(((dPG <= 1).sum() + (dGP <= 1).sum()) / (len(dPG) + len(dGP)))
        out[str(c)] = r
    return out
res = run(); ts = []
for _ in range(3):
    t0 = time.perf_counter(); run(); ts.append((time.perf_counter() - t0) * 1000)
print(json.dumps({"ms": float(np.median(ts)), "res": {k: {kk: float(vv) for kk, vv in v.items()} for k, v in res.items()}}))`;

export async function benchMetrics(dir: string): Promise<string[]> {
  const [nx, ny, nz] = [512, 512, 40];
  const spacing = [5, 0.49, 0.49];
  const { gt, pred } = metricPair(nx, ny, nz, 5);
  const py = pythonWith("numpy", "scipy");
  let ref: { ms: number; res: Record<string, Record<string, number>> } | undefined;
  if (py) {
    await writeNpy(join(dir, "mg.npy"), gt, [nz, ny, nx]);
    await writeNpy(join(dir, "mp.npy"), pred, [nz, ny, nx]);
    ref = runPython(py, SCIPY, [join(dir, "mg.npy"), join(dir, "mp.npy"), JSON.stringify(spacing)]);
  }
  const g = volumeFromArray(gt, [nz, ny, nx], spacing),
    p = volumeFromArray(pred, [nz, ny, nx], spacing);
  const lines = [
    `evaluate(), ${nx}×${ny}×${nz} pair with 5 classes (median of 9 native, 3 ts), beside the spec's scipy reference cropped to the masks' box`,
    "| backend | ms | peak MB | scipy ms | × scipy | max |Δ hd95| vs scipy |",
    "| --- | --- | --- | --- | --- | --- |",
  ];
  for (const b of ["native", "ts"] as const) {
    if (!backendInfo().available[b]) continue;
    setBackend(b);
    let last: Awaited<ReturnType<typeof evaluate>> | undefined;
    const t = await measure(async () => (last = await evaluate(g, p)), b === "ts" ? 3 : 9);
    let worst = 0;
    if (ref)
      for (const [c, r] of Object.entries(ref.res))
        if (r.hd95 !== undefined) worst = Math.max(worst, Math.abs(r.hd95 - last!.perClass[c]!.hd95));
    lines.push(
      `| ${b} | ${fmt(t.ms)} | ${fmt(t.peakMb, 0)} | ${ref ? fmt(ref.ms) : "no scipy"} | ${ref ? fmt(ref.ms / t.ms, 1) : "—"} | ${ref ? worst.toExponential(1) : "—"} |`,
    );
  }
  return lines;
}
