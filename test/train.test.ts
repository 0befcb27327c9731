import test from "ava";
import ort from "onnxruntime-node";
import { loadModel, makePhantom, milLoss, setBackend, slicePresence, backendInfo } from "../lib/index.js";
import { train } from "../lib/train/trainer.js";
import { relDiff } from "./ort.js";

// What the bundled model must keep reaching on unseen phantoms, segmented as the demo does (the
// model's own post-processing: EDH/SDH collections voted to one class, small ones removed). The
// demo's headline counts every class in the truth or the prediction (diceHeadline: a class the
// model invents scores 0, and so does a case with no bleed where it predicts one): 0.816 on these
// seeds on native, 2026-12-02 (0.54 before the post-processing); the aim is 0.8. The
// floors leave a margin for the backends' last-bit differences.
const DEMO_HEADLINE_DICE_FLOOR = 0.78;
// the older mean over the classes in the truth only (0.816 too: nothing invented on these seeds)
const DEMO_DICE_FLOOR = 0.78;

test.serial("training lowers the loss, and onnxruntime runs the trained file as the engine does", async (t) => {
  setBackend(backendInfo().available.native ? "native" : "ts");
  const opt = { dims: [64, 64, 16] as [number, number, number], spacing: [3.6, 3.6, 5] as [number, number, number] };
  const cases = [1, 2, 3].map((s) => {
    const p = makePhantom(s, opt);
    return { ct: p.ct, labels: p.labels };
  });
  const r = await train({ train: cases, steps: 12, batch: 1, patch: [8, 32, 32], seed: 4 });
  const first = r.history.slice(0, 3).reduce((a, h) => a + h.loss, 0) / 3;
  const last = r.history.slice(-3).reduce((a, h) => a + h.loss, 0) / 3;
  t.true(last < first, `loss ${first.toFixed(3)} → ${last.toFixed(3)}`);
  t.deepEqual(r.config.mirrorAxes, [2], "patches are flipped left-right only, and the config says so");
  // the exported file: the engine and onnxruntime agree on it
  const model = await loadModel(r.onnx, r.config);
  const x = { data: new Float32Array(8 * 32 * 32).map((_, i) => Math.sin(i) * 0.5), shape: [1, 1, 8, 32, 32] };
  const ours = await model.run(x);
  const session = await ort.InferenceSession.create(r.onnx);
  const theirs = (await session.run({ [session.inputNames[0]!]: new ort.Tensor("float32", x.data, x.shape) }))[session.outputNames[0]!]!;
  t.true(relDiff(ours.data, theirs.data as Float32Array) < 1e-4, `${relDiff(ours.data, theirs.data as Float32Array)}`);
});

test.serial("the head starts at the data's background prior; without backgroundPrior it does not", async (t) => {
  setBackend(backendInfo().available.native ? "native" : "ts");
  const opt = { dims: [64, 64, 16] as [number, number, number], spacing: [3.6, 3.6, 5] as [number, number, number] };
  const cases = [1, 2, 3].map((s) => makePhantom(s, opt)).map((p) => ({ ct: p.ct, labels: p.labels }));
  let bg = 0,
    n = 0;
  for (const c of cases)
    for (const v of c.labels.data) {
      n++;
      v === 0 && bg++;
    }
  // the background fraction, held to [0.5, 0.99] (train()'s documented clamp: bleeds are rare)
  const pi = Math.min(0.99, Math.max(0.5, bg / n)),
    want = Math.log((5 * pi) / (1 - pi));
  const head = async (backgroundPrior: boolean) => {
    const r = await train({ train: cases, steps: 1, batch: 1, patch: [8, 32, 32], seed: 4, lr: 1e-12, backgroundPrior });
    const { parseModel } = await import("../lib/model/graph.js");
    const g = await parseModel(r.onnx);
    const last = g.nodes[g.nodes.length - 1]!;
    return g.initializers.get(last.inputs[2]!)!.f32![0]!;
  };
  t.true(Math.abs((await head(true)) - want) < 1e-4, `bias ${await head(true)} vs ln(5π/(1−π)) = ${want}`);
  t.true(Math.abs(await head(false)) < 1e-4, "without it the head's biases start at 0");
  await t.throwsAsync(train({ train: cases, steps: 1, schedule: "cosine" as "poly" }), {
    message: /"poly" or "constant" for options\.schedule.*cosine/,
  });
  // a patch the U-Net cannot halve and concatenate back is refused by name before any work
  await t.throwsAsync(train({ train: cases, steps: 1, patch: [16, 60, 64] }), {
    message: /multiple of the network's total stride along it \(4, 8, 8\).*options\.patch.*16, 60, 64/,
  });
  await t.throwsAsync(train({ train: cases, steps: 1, patch: [16, 64] as unknown as [number, number, number] }), {
    message: /options\.patch/,
  });
  // labels past the network's classes, or a label volume of another size, are refused before training
  const bad = {
    ct: cases[0]!.ct,
    labels: { ...cases[0]!.labels, data: Uint8Array.from(cases[0]!.labels.data, (v, i) => (i === 5 ? 9 : v)) },
  };
  await t.throwsAsync(train({ train: [bad], steps: 1 }), { message: /label 9 at voxel 5 is not one of the network's classes 0–5/ });
  const short = { ct: cases[0]!.ct, labels: { ...cases[0]!.labels, data: cases[0]!.labels.data.subarray(1) } };
  await t.throwsAsync(train({ train: [short], steps: 1 }), { message: /labels have \d+ voxels but the CT has/ });
});

test.serial("bhsd demo runs the whole path on a fresh phantom and reports", async (t) => {
  const { spawnSync } = await import("node:child_process");
  const { existsSync, mkdtempSync } = await import("node:fs");
  const { join } = await import("node:path");
  const { tmpdir } = await import("node:os");
  const { ROOT } = await import("./helpers.js");
  if (!existsSync(join(ROOT, "models", "demo.onnx"))) return t.fail("the bundled models/demo.onnx is missing");
  const out = mkdtempSync(join(tmpdir(), "bhsd-demo-"));
  const t0 = performance.now();
  const r = spawnSync(process.execPath, [join(ROOT, "dist", "cli", "main.js"), "demo", "--seed", "424242", "--json", "--out", out], {
    encoding: "utf8",
    timeout: 120_000,
  });
  const s = (performance.now() - t0) / 1000;
  t.is(r.status, 0, r.stderr);
  const o = JSON.parse(r.stdout);
  t.is(o.seed, 424242);
  t.deepEqual(Object.keys(o.metrics.perClass), ["1", "2", "3", "4", "5"]);
  t.true(Array.isArray(o.report.components));
  // 5–10 s on 2 idle cores; generous for a loaded machine (two suites at once), still catching a
  // ten-fold slowdown (the spawn's 120 s timeout catches a hang)
  t.true(s < 100, `took ${s.toFixed(1)} s`);
  for (const f of ["ct.nii.gz", "truth.nii.gz", "prediction.nii.gz"]) t.true(existsSync(join(out, f)), f);
  const text = spawnSync(process.execPath, [join(ROOT, "dist", "cli", "main.js"), "demo", "--seed", "5"], {
    encoding: "utf8",
    timeout: 120_000,
  });
  t.is(text.status, 0, text.stderr);
  t.regex(text.stdout, /mean Dice over the classes present/);
});

test.serial("the bundled model on phantoms it was not trained on: mean Dice over the classes present", async (t) => {
  const { join } = await import("node:path");
  const { ROOT } = await import("./helpers.js");
  const { segment } = await import("../lib/model/segment.js");
  const { evaluate } = await import("../lib/metrics/evaluate.js");
  const { DEMO_SEGMENT } = await import("../lib/cli/demo.js");
  setBackend(backendInfo().available.native ? "native" : "ts");
  const model = await loadModel(join(ROOT, "models", "demo.onnx"));
  // seeds far from the training ones (train:demo uses seed·7919 + i, seed 3), the truth from the phantom itself
  const means: number[] = [];
  const headlines: number[] = [];
  const { diceHeadline } = await import("../lib/metrics/headline.js");
  for (const seed of [7000001, 7000002, 7000003, 7000004, 7000005, 7000006, 7000007, 7000008]) {
    const p = makePhantom(seed, { dims: [128, 128, 24], spacing: [1.8, 1.8, 5] });
    const { labels } = await segment(p.ct, model, DEMO_SEGMENT);
    const m = await evaluate(p.labels, labels);
    const d = m.classes.filter((c) => m.perClass[String(c)]!.tp + m.perClass[String(c)]!.fn > 0).map((c) => m.perClass[String(c)]!.dice);
    if (d.length) means.push(d.reduce((a, b) => a + b, 0) / d.length);
    const h = diceHeadline(m);
    if (h.classes.length) headlines.push(h.meanDice);
  }
  const headline = headlines.reduce((a, b) => a + b, 0) / headlines.length;
  t.log(`headline mean Dice (classes in the truth or the prediction), ${headlines.length} cases: ${headline.toFixed(3)}`);
  t.true(headline >= DEMO_HEADLINE_DICE_FLOOR, `headline mean Dice ${headline.toFixed(3)} < ${DEMO_HEADLINE_DICE_FLOOR}`);
  const mean = means.reduce((a, b) => a + b, 0) / means.length;
  t.log(`mean Dice over the classes present, ${means.length} cases with bleeds: ${mean.toFixed(3)}`);
  t.true(means.length >= 4);
  t.true(mean >= DEMO_DICE_FLOOR, `mean Dice ${mean.toFixed(3)} < ${DEMO_DICE_FLOOR}`);
});

test.serial("semi-supervised training: slice-labelled cases add the MIL and consistency terms, and the teacher follows", async (t) => {
  setBackend(backendInfo().available.native ? "native" : "ts");
  const opt = { dims: [32, 32, 8] as [number, number, number], spacing: [7.2, 7.2, 5] as [number, number, number] };
  const labelled = [1, 2].map((s) => {
    const p = makePhantom(s, opt);
    return { ct: p.ct, labels: p.labels };
  });
  const sliceCases = [5, 6, 7].map((s) => {
    const p = makePhantom(s, opt);
    return { ct: p.ct, slices: slicePresence(p.labels).present };
  });
  const progress: { mil?: number; consistency?: number }[] = [];
  const r = await train({
    train: labelled,
    steps: 4,
    batch: 1,
    patch: [4, 32, 32],
    seed: 3,
    semi: { cases: sliceCases, patch: [4, 32, 32], rampSteps: 2 },
    onProgress: (p) => progress.push(p),
  });
  t.is(r.history.length, 4);
  for (const p of progress) {
    t.true(Number.isFinite(p.mil) && p.mil! > 0, `mil ${p.mil}`);
    t.true(Number.isFinite(p.consistency) && p.consistency! >= 0, `consistency ${p.consistency}`);
  }
  // the slice-labelled cases change what is learnt
  const sup = await train({ train: labelled, steps: 4, batch: 1, patch: [4, 32, 32], seed: 3 });
  // (same seed, same patches: every weight would be equal without them)
  const { parseModel } = await import("../lib/model/graph.js");
  const [gs, gr] = [await parseModel(sup.onnx), await parseModel(r.onnx)];
  let changed = 0,
    total = 0;
  for (const [k, v] of gs.initializers) {
    if (!v.f32) continue;
    total++;
    if (relDiff(gr.initializers.get(k)!.f32!, v.f32) > 1e-6) changed++;
  }
  t.true(changed > total / 2, `${changed} of ${total} parameters changed by the slice-labelled terms`);
});

test("the multiple-instance loss leaves out unknown slice labels", (t) => {
  const logits = { data: Float32Array.from({ length: 2 * 2 * 4 }, (_, i) => Math.sin(i)), shape: [1, 2, 2, 2, 2] };
  const none = milLoss(logits, [[[null], [null]]]);
  t.is(none.loss, 0);
  t.true(none.dlogits.data.every((v) => v === 0));
  const one = milLoss(logits, [[[true], [null]]]);
  const full = milLoss(logits, [[[true], [false]]]);
  t.true(one.loss > 0 && one.loss !== full.loss);
});
