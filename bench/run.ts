/**
 * `npm run bench`: the performance figures of the README, each beside a competitor measured in the
 * same run on the same input. The foundation has only the I/O path to measure: reading a
 * BHSD-sized CT (512×512×40 int16 with scl_inter, gzipped and not) into float32 HU.
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { performance } from "node:perf_hooks";
import { readNifti, setBackend, writeNifti, backendInfo } from "../lib/index.js";
import type { Volume } from "../lib/types.js";

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)]!;
}

async function time(fn: () => Promise<unknown>, reps = 5): Promise<number> {
  await fn();
  const t: number[] = [];
  for (let i = 0; i < reps; i++) {
    const t0 = performance.now();
    await fn();
    t.push(performance.now() - t0);
  }
  return median(t);
}

const dir = mkdtempSync(join(tmpdir(), "bhsd-bench-"));
try {
  const [nx, ny, nz] = [512, 512, 40];
  const raw = new Int16Array(nx * ny * nz);
  let seed = 1;
  for (let i = 0; i < raw.length; i++) raw[i] = ((seed = (seed * 1103515245 + 12345) >>> 0) % 2000) - 1000;
  const ct: Volume = { data: raw, dims: [nx, ny, nz], spacing: [0.49, 0.49, 5], affine: [0.49, 0, 0, 0, 0, 0.49, 0, 0, 0, 0, 5, 0, 0, 0, 0, 1] };
  await writeNifti(join(dir, "ct.nii"), ct, { sclSlope: 1, sclInter: -1024, datatype: "int16" });
  await writeNifti(join(dir, "ct.nii.gz"), ct, { sclSlope: 1, sclInter: -1024, datatype: "int16", gzipLevel: 1 });
  const mvox = (nx * ny * nz) / 1e6;
  console.log(`readNifti, ${nx}×${ny}×${nz} int16 + scl_inter → float32 (median of 5)`);
  for (const b of ["native", "ts"] as const) {
    if (!backendInfo().available[b]) continue;
    setBackend(b);
    const plain = await time(() => readNifti(join(dir, "ct.nii")));
    const gz = await time(() => readNifti(join(dir, "ct.nii.gz")), 3);
    console.log(`  ${b.padEnd(6)} .nii ${plain.toFixed(1)} ms (${(mvox / plain * 1000).toFixed(0)} MVx/s)   .nii.gz ${gz.toFixed(1)} ms`);
  }
} finally {
  rmSync(dir, { recursive: true, force: true });
}
