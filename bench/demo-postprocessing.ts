/**
 * How the demo model's post-processing was chosen (README, "Training the demo model"): segment
 * unseen phantoms once without post-processing, then score the demo's honest headline
 * (diceHeadline: mean Dice over every class in the truth or the prediction) under candidate rules.
 * The seeds are validation ranges: never trained on (train:demo uses seed·7919 + i) and not the
 * test's (7000001–8), which were scored once, after the choice.
 *
 *   node --import tsx bench/demo-postprocessing.ts [model.onnx] [firstSeed] [count]
 *   (2026-12-02: 3000001 36, then 5000001 24)
 */
import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { setBackend } from "../lib/backends/index.js";
import { evaluate } from "../lib/metrics/evaluate.js";
import { diceHeadline } from "../lib/metrics/headline.js";
import { loadModel } from "../lib/model/model.js";
import { segment } from "../lib/model/segment.js";
import { cleanup, type CleanupOptions } from "../lib/ops/components.js";
import { makePhantom } from "../lib/phantom/phantom.js";
import type { Volume } from "../lib/types.js";

const modelPath = process.argv[2] ?? "models/demo.onnx";
const first = Number(process.argv[3] ?? 3000001);
const count = Number(process.argv[4] ?? 36);
setBackend("native");
const model = await loadModel(modelPath);
const NAMES = ["", "EDH", "IPH", "IVH", "SAH", "SDH"];

const ea = (ml: number) => ({ "1": ml, "5": ml });
const rules: Record<string, CleanupOptions | false> = {
  none: false,
  "components >= 10 voxels (the demo until now)": { minVoxels: 10 },
  "components >= 0.3 mL": { minVolumeMl: 0.3 },
  "components >= 0.5 mL": { minVolumeMl: 0.5 },
  "components >= 0.8 mL": { minVolumeMl: 0.8 },
  "EDH/SDH voted, >= 10 voxels": { mergeClasses: [[1, 5]], minVoxels: 10 },
  "EDH/SDH voted, >= 10 voxels, EDH/SDH >= 0.3 mL": { mergeClasses: [[1, 5]], minVoxels: 10, minVolumeMl: ea(0.3) },
  "EDH/SDH voted, >= 10 voxels, EDH/SDH >= 0.5 mL": { mergeClasses: [[1, 5]], minVoxels: 10, minVolumeMl: ea(0.5) },
  "EDH/SDH voted, >= 10 voxels, EDH/SDH >= 0.8 mL (bundled)": { mergeClasses: [[1, 5]], minVoxels: 10, minVolumeMl: ea(0.8) },
  "EDH/SDH voted, >= 10 voxels, EDH/SDH >= 1.2 mL": { mergeClasses: [[1, 5]], minVoxels: 10, minVolumeMl: ea(1.2) },
  "all five voted, >= 10 voxels, >= 0.5 mL": { mergeClasses: [[1, 2, 3, 4, 5]], minVoxels: 10, minVolumeMl: 0.5 },
};

const scores: Record<string, number[]> = {};
const perClass: Record<string, number[][]> = {};
const cacheDir = join(tmpdir(), "bhsd-demo-postprocessing");
mkdirSync(cacheDir, { recursive: true });
for (let s = first; s < first + count; s++) {
  const p = makePhantom(s, { dims: [128, 128, 24], spacing: [1.8, 1.8, 5] });
  const cache = join(cacheDir, `${modelPath.replace(/\W/g, "_")}-${s}.bin`);
  let raw: Volume;
  if (existsSync(cache)) raw = { ...p.labels, data: new Uint8Array(readFileSync(cache)) };
  else {
    raw = (await segment(p.ct, model, { mirror: true, stepSize: 1 / 3, cleanup: false })).labels;
    writeFileSync(cache, raw.data as Uint8Array);
  }
  for (const [name, rule] of Object.entries(rules)) {
    const labels = rule ? await cleanup(raw, rule) : raw;
    const m = await evaluate(p.labels, labels);
    const h = diceHeadline(m);
    if (!h.classes.length) continue; // no bleed in the truth, none predicted: nothing to average
    (scores[name] ??= []).push(h.meanDice);
    perClass[name] ??= [[], [], [], [], [], []];
    for (const c of h.classes) perClass[name][c]!.push(h.falsePositiveClasses.includes(c) ? 0 : m.perClass[String(c)]!.dice);
  }
}
const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;
console.log(`${modelPath}, seeds ${first}–${first + count - 1}: headline mean Dice (cases counted), per class mean/cases`);
for (const [name, xs] of Object.entries(scores)) {
  const pc = perClass[name]!.slice(1).map((a, i) => `${NAMES[i + 1]} ${mean(a).toFixed(2)}/${a.length}`);
  console.log(`${name.padEnd(58)} ${mean(xs).toFixed(3)} (${xs.length})  ${pc.join("  ")}`);
}
