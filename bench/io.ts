/**
 * readNifti of a BHSD-sized CT (512×512×40 int16 with scl_inter → float32 HU), beside nibabel when
 * present: back to back (each read's 42 MB result dropped at once, so V8 collects about once a read:
 * its own cost, which numpy's reference counting does not pay) and, where `--expose-gc` gave gc(), each
 * read after a collection outside the timing (a program that reads one CT and works on it for seconds).
 */
import { join } from "node:path";
import { readNifti, setBackend, writeNifti, backendInfo } from "../dist/index.js";
import type { Volume } from "../dist/types.js";
import { fmt, measure, median, pythonWith, rng, runPython } from "./lib.js";

const NIBABEL = `
import json, sys, time, numpy as np, nibabel as nib
out = {}
for p in sys.argv[1:]:
    ts = []
    for _ in range(4):
        t0 = time.perf_counter(); a = np.asarray(nib.load(p).get_fdata(dtype=np.float32)); ts.append((time.perf_counter() - t0) * 1000)
    out[p] = float(np.median(ts[1:]))
print(json.dumps(out))`;

export async function benchIo(dir: string): Promise<string[]> {
  const [nx, ny, nz] = [512, 512, 40];
  const r = rng(3);
  const raw = new Int16Array(nx * ny * nz).map(() => Math.floor(r() * 2000) - 1000);
  const ct: Volume = {
    data: raw,
    dims: [nx, ny, nz],
    spacing: [0.49, 0.49, 5],
    affine: [0.49, 0, 0, 0, 0, 0.49, 0, 0, 0, 0, 5, 0, 0, 0, 0, 1],
  };
  const files = [join(dir, "ct.nii"), join(dir, "ct.nii.gz")];
  for (const f of files) await writeNifti(f, ct, { sclSlope: 1, sclInter: -1024, datatype: "int16", gzipLevel: 1 });
  const py = pythonWith("numpy", "nibabel");
  const nib = py ? runPython<Record<string, number>>(py, NIBABEL, files) : {};
  const lines = [
    `readNifti, ${nx}×${ny}×${nz} int16 with scl_inter → float32 (median of 5)`,
    "| file | backend | ms back to back (reads 2–6 of a process) | ms back to back, reads 11–25 (a dataset's loop) | the same, each read `using` (released as its block ends) | ms after a gc | peak MB | nibabel ms |",
    "| --- | --- | --- | --- | --- | --- | --- | --- |",
  ];
  const gc = (globalThis as { gc?: () => void }).gc;
  for (const f of files) {
    for (const b of ["native", "ts"] as const) {
      if (!backendInfo().available[b]) continue;
      setBackend(b);
      const t = await measure(() => readNifti(f), 5);
      // further reads, each result dropped at once as a loop over a data set drops it: by then the
      // blocks freed after V8's collections are there to be used again
      for (let i = 0; i < 4; i++) await readNifti(f);
      const steady: number[] = [];
      for (let i = 0; i < 15; i++) {
        const t0 = performance.now();
        await readNifti(f);
        steady.push(performance.now() - t0);
      }
      const released: number[] = [];
      for (let i = 0; i < 15; i++) {
        const t0 = performance.now();
        {
          using ct = await readNifti(f); // released as the block ends
          if (ct.data.length === 0) throw new Error("empty read");
        }
        released.push(performance.now() - t0);
      }
      const afterGc: number[] = [];
      for (let i = 0; gc && i < 5; i++) {
        gc();
        await new Promise((r) => setTimeout(r, 20)); // freed ArrayBuffers are released after the GC
        const t0 = performance.now();
        await readNifti(f);
        afterGc.push(performance.now() - t0);
      }
      lines.push(
        `| ${f.endsWith(".gz") ? ".nii.gz" : ".nii"} | ${b} | ${fmt(t.ms)} | ${fmt(median(steady))} | ${fmt(median(released))} | ${gc ? fmt(median(afterGc)) : "no gc()"} | ${fmt(t.peakMb, 0)} | ${nib[f] !== undefined ? fmt(nib[f]!) : "no nibabel"} |`,
      );
    }
  }
  return lines;
}
