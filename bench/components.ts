/**
 * Connected components: 26- and 6-connectivity on a 40×512×512 blob mask (like BHSD's CT masks)
 * and on 256³ random noise, in MVx/s, beside scipy.ndimage.label on the same arrays in the same run.
 */
import { join } from "node:path";
import { connectedComponents, setBackend, backendInfo, volumeFromArray, writeNpy } from "../dist/index.js";
import { paintEllipsoid } from "../dist/phantom/ellipsoid.js";
import { fmt, measure, pythonWith, rng, runPython } from "./lib.js";

export function blobMask(nx: number, ny: number, nz: number, blobs: number, seed: number): Uint8Array {
  const m = new Uint8Array(nx * ny * nz);
  const r = rng(seed);
  for (let b = 0; b < blobs; b++) {
    const cx = r() * nx, cy = r() * ny, cz = r() * nz;
    const ax = 3 + r() * 40, ay = 3 + r() * 40, az = 0.5 + r() * 4;
    paintEllipsoid(m, [nx, ny, nz], [cx, cy, cz], [ax, ay, az], 1);
  }
  return m;
}

export function noiseMask(n: number, density: number, seed: number): Uint8Array {
  const r = rng(seed);
  return new Uint8Array(n).map(() => (r() < density ? 1 : 0));
}

const SCIPY = `
import json, sys, time, numpy as np
from scipy import ndimage
out = {}
for path, conn in zip(sys.argv[1::2], sys.argv[2::2]):
    a = np.load(path)
    s = ndimage.generate_binary_structure(3, {"6": 1, "18": 2, "26": 3}[conn])
    ndimage.label(a, s)
    ts = []
    for _ in range(5):
        t0 = time.perf_counter(); lab, n = ndimage.label(a, s); ts.append((time.perf_counter() - t0) * 1000)
    out[path + ":" + conn] = {"ms": float(np.median(ts)), "count": int(n)}
print(json.dumps(out))`;

export async function benchComponents(dir: string): Promise<string[]> {
  const cases = [
    { name: "blobs 40×512×512", shape: [40, 512, 512], data: blobMask(512, 512, 40, 60, 11) },
    { name: "noise 256³ (35 %)", shape: [256, 256, 256], data: noiseMask(256 ** 3, 0.35, 12) },
  ];
  const lines: string[] = [];
  const py = pythonWith("numpy", "scipy");
  const scipy: Record<string, { ms: number; count: number }> = {};
  if (py) {
    const args: string[] = [];
    for (const c of cases) {
      const p = join(dir, `${c.name.split(" ")[0]}.npy`);
      await writeNpy(p, c.data, c.shape);
      for (const conn of ["26", "6"]) args.push(p, conn);
    }
    Object.assign(scipy, runPython(py, SCIPY, args));
  }
  lines.push("connected components (median of 5; MVx/s = million voxels per second; peak = extra resident memory)");
  lines.push("| input | conn | backend | ms | MVx/s | peak MB | scipy ms | × scipy |");
  lines.push("| --- | --- | --- | --- | --- | --- | --- | --- |");
  for (const c of cases) {
    const vol = volumeFromArray(c.data, c.shape);
    for (const conn of [26, 6] as const) {
      const ref = scipy[`${join(dir, `${c.name.split(" ")[0]}.npy`)}:${conn}`];
      for (const b of ["native", "ts"] as const) {
        if (!backendInfo().available[b]) continue;
        setBackend(b);
        let count = 0;
        const t = await measure(async () => (count = (await connectedComponents(vol, { connectivity: conn })).count), 5);
        if (ref && ref.count !== count) throw new Error(`${c.name} ${conn}: ${count} components, scipy ${ref.count}`);
        const mvx = c.data.length / 1e6 / (t.ms / 1000);
        lines.push(`| ${c.name} | ${conn} | ${b} | ${fmt(t.ms)} | ${fmt(mvx, 0)} | ${fmt(t.peakMb, 0)} | ${ref ? fmt(ref.ms) : "no scipy"} | ${ref ? fmt(ref.ms / t.ms, 1) : "—"} |`);
      }
    }
  }
  if (!py) lines.push("(python3 with numpy and scipy not found: no scipy reference in this run)");
  return lines;
}
