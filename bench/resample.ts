/**
 * `npm run bench resample`: nnU-Net's resampling as segment() runs it for a BHSD-like CT — the
 * image 512 × 512 × 40 at 0.45 mm to 0.488 mm in-plane (cubic B-spline slice by slice, 5 mm slices
 * kept) and six classes of logits back (linear) — beside nnU-Net's own calls in the same run
 * (skimage.transform.resize per slice, as resample_data_or_seg does it), with the largest
 * difference between the two.
 */
import { join } from "node:path";
import { backendInfo, readNpy, setBackend, writeNpy } from "../dist/index.js";
import { NNUNET_RESAMPLING, resampleNnunet } from "../dist/model/resample.js";
import { fmt, measure, pythonWith, rng, runPython } from "./lib.js";

const CT: [number, number, number] = [40, 512, 512];
const MODEL: [number, number, number] = [40, 472, 472];
const CT_SPACING = [5, 0.45, 0.45],
  MODEL_SPACING = [5, 0.488, 0.488];
const CLASSES = 6;

export async function benchResample(dir: string): Promise<string[]> {
  if (NNUNET_RESAMPLING.type !== "nnunet") throw new Error("unreachable");
  const { data: dataStep, probabilities: probStep } = NNUNET_RESAMPLING;
  const r = rng(20261206);
  const n = CT[0] * CT[1] * CT[2],
    m = MODEL[0] * MODEL[1] * MODEL[2];
  // a normalised CT's range: blocks of tissue values with noise (the content does not change the work)
  const img = new Float32Array(n);
  for (let i = 0; i < n; i++) img[i] = (((i >> 14) & 3) - 1.5) * 0.8 + (r() - 0.5) * 0.3;
  const logits = new Float32Array(CLASSES * m);
  for (let i = 0; i < logits.length; i++) logits[i] = (r() - 0.5) * 8;
  await writeNpy(join(dir, "img.npy"), img, CT);
  await writeNpy(join(dir, "logits.npy"), logits, [CLASSES, ...MODEL]);

  const lines = [
    `nnU-Net's resampling, a 512 × 512 × 40 CT at ${CT_SPACING.slice(1).join(" × ")} mm in-plane to ${MODEL_SPACING[1]} mm (5 mm slices kept): bhsd's resampleNnunet (what segment runs for a config from nnU-Net's plans) and nnU-Net's resample_data_or_seg_to_shape's calls (skimage.transform.resize per slice, mode "edge", no anti-aliasing); medians of 5 (bhsd) and 3 (skimage); the splines are TypeScript on one thread (either backend), the linear step the backend's resize (native: 2 threads), skimage one thread`,
    "",
    "| step | bhsd native ms | bhsd ts ms | nnU-Net (skimage) ms | bhsd faster | largest difference |",
    "| --- | --- | --- | --- | --- | --- |",
  ];
  const image = async () => resampleNnunet(img, CT, MODEL, CT_SPACING, MODEL_SPACING, dataStep);
  const back = async () => {
    const out: Float32Array[] = [];
    for (let k = 0; k < CLASSES; k++)
      out.push(await resampleNnunet(logits.subarray(k * m, (k + 1) * m), MODEL, CT, MODEL_SPACING, CT_SPACING, probStep));
    return out;
  };
  const times: Record<string, Record<string, number>> = { image: {}, logits: {} };
  const outs: Record<string, Float32Array> = {};
  for (const b of ["native", "ts"] as const) {
    if (!backendInfo().available[b]) continue;
    setBackend(b);
    times.image![b] = (await measure(image)).ms;
    times.logits![b] = (await measure(back)).ms;
    if (b === "native") {
      outs.image = await image();
      outs.logits = (await back())[0]!;
    }
  }
  const py = pythonWith("numpy", "skimage");
  let ref: { image: number; logits: number } | undefined;
  if (py) {
    ref = runPython<{ image: number; logits: number }>(
      py,
      `
import json, sys, time
import numpy as np
from skimage.transform import resize
d = sys.argv[1]
img = np.load(d + "/img.npy").astype(float)
lg = np.load(d + "/logits.npy").astype(float)
def image():
    return np.stack([resize(s, (${MODEL[1]}, ${MODEL[2]}), 3, mode="edge", anti_aliasing=False) for s in img]).astype(np.float32)
def logits():
    return np.stack([np.stack([resize(s, (${CT[1]}, ${CT[2]}), 1, mode="edge", anti_aliasing=False) for s in c]) for c in lg]).astype(np.float32)
out = {}
for name, fn in [("image", image), ("logits", logits)]:
    ts = []
    for _ in range(3):
        t = time.perf_counter(); r = fn(); ts.append((time.perf_counter() - t) * 1e3)
    np.save(d + "/" + name + "_ref.npy", r[0] if name == "logits" else r)
    out[name] = sorted(ts)[1]
print(json.dumps(out))
`,
      [dir],
    );
  }
  for (const step of ["image", "logits"] as const) {
    let diff = NaN;
    if (ref && outs[step]) {
      const want = (await readNpy(join(dir, `${step}_ref.npy`))).data as Float32Array;
      diff = 0;
      for (let i = 0; i < want.length; i++) diff = Math.max(diff, Math.abs(want[i]! - outs[step]![i]!));
    }
    const t = times[step]!;
    const what =
      step === "image"
        ? "image, cubic (order 3), 512² → 472² × 40"
        : `logits back, linear (order 1), ${CLASSES} classes × 472² → 512² × 40`;
    lines.push(
      `| ${what} | ${fmt(t.native ?? NaN, 0)} | ${fmt(t.ts ?? NaN, 0)} | ${fmt(ref?.[step] ?? NaN, 0)} | ${fmt((ref?.[step] ?? NaN) / (t.native ?? NaN), 1)}× | ${Number.isFinite(diff) ? diff.toExponential(1) : "—"} |`,
    );
  }
  if (!py) lines.push("(python3 with numpy and scikit-image not found: no nnU-Net column in this run)");
  return lines;
}
