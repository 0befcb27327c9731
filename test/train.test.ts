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
  await t.throwsAsync(train({ train: [short], steps: 1 }), { message: /options\.train\[0\]\.labels\.data has \d+ voxels but/ });
});

test.serial(
  "every case and option is checked before the first step: validation cases, grids, options; a diverged run is an error",
  async (t) => {
    setBackend(backendInfo().available.native ? "native" : "ts");
    const opt = { dims: [32, 32, 8] as [number, number, number], spacing: [7.2, 7.2, 5] as [number, number, number] };
    const cases = [1, 2].map((s) => makePhantom(s, opt)).map((p) => ({ ct: p.ct, labels: p.labels }));
    const base = { train: cases, steps: 2, batch: 1, patch: [4, 32, 32] as [number, number, number], seed: 2 };
    let steps = 0;
    const counted = { ...base, onProgress: () => steps++ };
    // a bad validation case: before, found at the first evaluation, after the training steps, and the run was lost
    const bad = {
      name: "b",
      ct: cases[1]!.ct,
      labels: { ...cases[1]!.labels, data: cases[1]!.labels.data.map((v, i) => (i === 7 ? 9 : v)) },
    };
    await t.throwsAsync(train({ ...counted, validation: [bad] }), { message: /options\.validation\[0\] \(case b\): label 9 at voxel 7/ });
    // labels on another grid of the same voxel count: before, trained on scrambled labels
    const turned = { ct: cases[0]!.ct, labels: { ...cases[0]!.labels, dims: [8, 32, 32] as [number, number, number] } };
    await t.throwsAsync(train({ ...counted, train: [turned] }), {
      message: /options\.train\[0\]: labels are 8×32×32 voxels but the CT is 32×32×8/,
    });
    await t.throwsAsync(train({ ...counted, validation: [turned] }), { message: /options\.validation\[0\]: labels are 8×32×32/ });
    // one flipped left-right: the same dims, the affine says it
    const flipped = {
      ct: cases[0]!.ct,
      labels: { ...cases[0]!.labels, affine: cases[0]!.labels.affine.map((v, i) => (i === 0 ? -v : v)) },
    };
    await t.throwsAsync(train({ ...counted, train: [flipped] }), {
      message: /options\.train\[0\]: the labels' voxel axes run along -x \+y \+z but the CT's along \+x \+y \+z/,
    });
    // options named (before: NaN losses, Adam for "SGD", an error about input.shape for batch 1.5)
    await t.throwsAsync(train({ ...counted, lr: NaN }), { message: /options\.lr/ });
    await t.throwsAsync(train({ ...counted, optimizer: "SGD" as "sgd" }), { message: /options\.optimizer/ });
    await t.throwsAsync(train({ ...counted, batch: 1.5 }), { message: /options\.batch/ });
    await t.throwsAsync(train({ ...counted, train: [] }), { message: /options\.train/ });
    await t.throwsAsync(train({ ...counted, semi: { cases: [{ ct: cases[0]!.ct, slices: [] }] } }), {
      message: /options\.semi\.cases\[0\]\.slices/,
    });
    await t.throwsAsync(
      train({ ...counted, semi: { cases: [{ ct: cases[0]!.ct, slices: slicePresence(cases[0]!.labels).present }], patch: [4, 30, 32] } }),
      { message: /for options\.semi\.patch but received array \[4, 30, 32\]/ },
    );
    const { demoSpec: spec12 } = await import("../lib/train/unet.js");
    await t.throwsAsync(train({ ...counted, patch: undefined, spec: spec12(new Array(13).fill(2)) }), {
      message: /options\.patch.*strides 2048/,
    });
    t.is(steps, 0, "no step was taken");
    // a learning rate that diverges: an error naming the step, not a model of NaN weights
    await t.throwsAsync(train({ ...base, steps: 6, lr: 1e30 }), {
      message: /training diverged at step \d: the loss is NaN \(learning rate 1e\+30\)/,
    });
    // a deeper network without a patch: the default is rounded up to its strides (before: options.patch refused)
    const { demoSpec } = await import("../lib/train/unet.js");
    const deep = await train({ ...base, patch: undefined, steps: 1, spec: demoSpec([4, 4, 4, 4, 4, 4]) });
    t.deepEqual(deep.config.patchSize, [16, 64, 64]);
    const deeper = await train({ ...base, patch: undefined, steps: 1, spec: demoSpec([2, 2, 2, 2, 2, 2, 2]) });
    t.deepEqual(deeper.config.patchSize, [32, 64, 64]);
    // slice-labelled cases of 12×12 in-plane: the default whole-slice patch is rounded up to the strides (before: a shape error)
    const small = makePhantom(9, { dims: [12, 12, 8], spacing: [7.2, 7.2, 5] });
    const r = await train({ ...base, steps: 1, semi: { cases: [{ ct: small.ct, slices: slicePresence(small.labels).present }] } });
    t.true(Number.isFinite(r.history[0]!.mil), `mil ${r.history[0]!.mil}`);
  },
);

test("backprop's loss refuses targets outside the classes (before: a wrong finite loss, or NaN)", async (t) => {
  const { dcAndCeLossFast } = await import("../lib/train/fastgrad.js");
  const logits = { data: Float32Array.from({ length: 2 * 3 * 4 }, (_, i) => Math.sin(i)), shape: [2, 3, 4] };
  t.true(Number.isFinite(dcAndCeLossFast(logits, [0, 1, 2, 0, 1, 2, 0, 1]).loss));
  for (const bad of [3, -1, 1.5, NaN])
    t.throws(
      () => dcAndCeLossFast(logits, [0, 1, 2, bad, 1, 2, 0, 1]),
      { message: /target holds .* at 3; the logits have classes 0–2/ },
      String(bad),
    );
  t.throws(() => dcAndCeLossFast(logits, [0, 1]), { message: /target has 2 values but the logits \[2, 3, 4\] have 8 voxels/ });
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

test.serial('bhsd train on a ground truth that is all bleed fits a small heap; its sidecar writes a NaN Dice as "nan"', async (t) => {
  const { spawnSync } = await import("node:child_process");
  const { mkdirSync, mkdtempSync, readFileSync } = await import("node:fs");
  const { join } = await import("node:path");
  const { tmpdir } = await import("node:os");
  const { writeNifti } = await import("../lib/index.js");
  const root = mkdtempSync(join(tmpdir(), "bhsd-train-cli-"));
  for (const d of ["images", "ground truths"]) mkdirSync(join(root, d));
  // 160³ voxels, every one labelled: before, each voxel's index went into a JavaScript array
  // (about 9 bytes of heap a voxel: 37 MB here, and a V8 abort past the heap's limit)
  const n = 160,
    dims = [n, n, n] as [number, number, number],
    spacing = [1, 1, 1] as [number, number, number],
    affine = [1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1];
  await writeNifti(join(root, "images", "a.nii.gz"), { data: new Int16Array(n ** 3).fill(60), dims, spacing, affine });
  await writeNifti(join(root, "ground truths", "a.nii.gz"), { data: new Uint8Array(n ** 3).fill(2), dims, spacing, affine });
  const cli = join(import.meta.dirname, "..", "dist", "cli", "main.js");
  const out = join(root, "m.onnx");
  const r = spawnSync(
    process.execPath,
    [
      "--max-old-space-size=32",
      cli,
      "train",
      "--data",
      root,
      "--validation",
      "0",
      "--steps",
      "1",
      "--batch",
      "1",
      "--patch",
      "4,8,8",
      "--out",
      out,
      "--quiet",
    ],
    { encoding: "utf8", timeout: 120_000 },
  );
  t.is(r.status, 0, r.stderr.slice(-2000));
  // a validation case without bleed: its Dice is NaN, written as metrics.md writes it (before: null)
  await writeNifti(join(root, "images", "b.nii.gz"), { data: new Int16Array(8 * 16 * 16).fill(30), dims: [16, 16, 8], spacing, affine });
  await writeNifti(join(root, "ground truths", "b.nii.gz"), { data: new Uint8Array(8 * 16 * 16), dims: [16, 16, 8], spacing, affine });
  const v = spawnSync(
    process.execPath,
    [cli, "train", "--data", root, "--validation", "1", "--steps", "1", "--batch", "1", "--patch", "4,8,8", "--out", out, "--quiet"],
    { encoding: "utf8", timeout: 120_000 },
  );
  t.is(v.status, 0, v.stderr.slice(-2000));
  t.is(JSON.parse(readFileSync(join(root, "m.json"), "utf8")).finalValidationDice, "nan");
  // --features is checked as a flag
  const f = spawnSync(process.execPath, [cli, "train", "--data", root, "--features", "8,x", "--out", out], { encoding: "utf8" });
  t.regex(f.stderr, /--features must be two or more stage widths.*"8,x"/);
});
