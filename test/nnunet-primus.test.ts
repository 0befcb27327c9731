/**
 * nnU-Net's Primus (a transformer trainers build in place of the plans' U-Net) run from its results
 * folder. References: test/fixtures/nnunet-primus (make.py, README.md) — PyTorch's logits from
 * dynamic-network-architectures' own Primus (timm's EVA blocks and rotary embedding) on the saved
 * checkpoints, and nnU-Net's prediction on one window of the smoke CT; and the same networks'
 * torch.onnx exports (make_onnx.py) against PyTorch and onnxruntime.
 */
import test from "ava";
import { copyFileSync, cpSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import ort from "onnxruntime-node";
import { loadModel, loadNnunet, readNifti, readNpy, segment, setBackend } from "../lib/index.js";
import { backendsUnderTest, bhsdSync, pickleSpan, primusWindowCt, ROOT } from "./helpers.js";
import { scaleDiff } from "./ort.js";

const FIXTURE = join(ROOT, "test", "fixtures", "nnunet-primus");
const CASES = join(ROOT, "test", "fixtures", "nnunet-folder", "cases");
const folder = (trainer: string) => join(FIXTURE, "Dataset501_PhantomICH", `${trainer}__nnUNetPlans__3d_fullres`);
const TINY = folder("nnUNet_Primus_Tiny_Trainer"),
  REGISTERS = folder("nnUNet_Primus_Registers_Trainer");
const VARIANTS = [
  { tag: "tiny", dir: TINY, heads: 4, width: 48, registers: 0 },
  { tag: "registers", dir: REGISTERS, heads: 3, width: 36, registers: 2 },
];
const backends = backendsUnderTest();
const made: string[] = [];
test.after.always(() => {
  for (const d of made) rmSync(d, { recursive: true, force: true });
});

for (const { name } of backends)
  for (const v of VARIANTS)
    test.serial(`${name}: Primus (${v.tag}) from its nnU-Net folder gives PyTorch's logits`, async (t) => {
      setBackend(name);
      const model = await loadNnunet(v.dir, { heads: v.heads });
      const a = model.architecture;
      if (a.networkClass !== "Primus") return t.fail(`built ${a.networkClass}`);
      t.is(a.embedDim, v.width);
      t.is(a.depth, 2);
      t.is(a.heads, v.heads);
      t.is(a.registers, v.registers);
      t.deepEqual(a.inputSize, [16, 32, 32]);
      const x = await readNpy(join(FIXTURE, `${v.tag}_input.npy`));
      const want = await readNpy(join(FIXTURE, `${v.tag}_logits.npy`));
      const y = await model.run({ data: x.data as Float32Array, shape: x.shape });
      t.deepEqual(y.shape, want.shape);
      const e = scaleDiff(y.data, want.data as Float32Array);
      t.log(`${v.tag}: max |bhsd − PyTorch| / max |PyTorch| = ${e.toExponential(2)}`);
      t.true(e <= 1e-5, `${e}`);
      // the EVA blocks' attention runs as one fused pass where the backend has it (rotary embedding included)
      const ops = model.lastRun!.opMs;
      // (native: the rotary embedding inside it too, no Gather of the pairs left)
      if (name === "native") t.true(!!ops["bhsd.SelfAttention"] && !ops["Gather"], Object.keys(ops).join(", "));
      else t.truthy(ops["Softmax"], Object.keys(ops).join(", "));
      model.dispose();
    });

test.serial("segment() with a Primus folder gives nnU-Net's labels on one window of the smoke CT", async (t) => {
  setBackend(backends.some((b) => b.name === "native") ? "native" : backends[0]!.name);
  const ct = await primusWindowCt();
  for (const v of VARIANTS) {
    const model = await loadNnunet(v.dir, { heads: v.heads });
    const { labels, report } = await segment(ct, model, { mirror: false });
    t.is(report.windows, 1);
    const ref = (await readNpy(join(FIXTURE, `${v.tag}_window_labels.npy`))).data as Uint8Array;
    const margin = (await readNpy(join(FIXTURE, `${v.tag}_window_margin.npy`))).data as Float32Array;
    let differ = 0,
      clear = 0;
    for (let k = 0; k < ref.length; k++)
      if (labels.data[k] !== ref[k]) {
        differ++;
        if (margin[k]! >= 1e-3) clear++;
      }
    t.log(`${v.tag}: ${differ} of ${ref.length} labels differ from PyTorch's (${clear} not near-ties)`);
    t.true(new Set(ref).size >= 3, "the reference is not one class everywhere");
    t.is(clear, 0);
    model.dispose();
  }
});

// the torch.onnx export (q, k and v projected apart, timm's rotary embedding as Slices, registers
// kept out of it): joined into one projection at load, so that native runs each attention as one node
for (const v of VARIANTS)
  test.serial(
    `Primus (${v.tag})'s torch.onnx export equals PyTorch and onnxruntime on every backend; native fuses its attention`,
    async (t) => {
      const path = join(FIXTURE, `${v.tag}_op17.onnx`);
      const x = await readNpy(join(FIXTURE, `${v.tag}_input.npy`));
      const want = await readNpy(join(FIXTURE, `${v.tag}_logits.npy`));
      const session = await ort.InferenceSession.create(path, { intraOpNumThreads: 1 });
      const ref = (await session.run({ input: new ort.Tensor("float32", x.data as Float32Array, x.shape) })).logits!.data as Float32Array;
      await session.release();
      t.true(scaleDiff(ref, want.data as Float32Array) <= 2e-6, "onnxruntime vs PyTorch (fixture check)");
      const model = await loadModel(path);
      try {
        for (const { name } of backends) {
          setBackend(name);
          const y = await model.run({ data: x.data as Float32Array, shape: x.shape });
          t.deepEqual(y.shape, want.shape);
          const [ePt, eOrt] = [scaleDiff(y.data, want.data as Float32Array), scaleDiff(y.data, ref)];
          t.log(`${name}, ${v.tag}: of PyTorch's scale ${ePt.toExponential(2)}, of onnxruntime's ${eOrt.toExponential(2)}`);
          t.true(ePt <= 1e-5 && eOrt <= 1e-5, `${name}: ${ePt}, ${eOrt}`);
          const ops = model.lastRun!.opMs;
          // native: two fused attentions (rotation inside), no Softmax, Neg or rotation Concat left; others: the nodes
          if (name === "native")
            t.true(!!ops["bhsd.SelfAttention"] && !ops["Softmax"] && !ops["Neg"] && !ops["Gather"], Object.keys(ops).join(", "));
          else t.true(!!ops["Softmax"] && !ops["bhsd.SelfAttention"], Object.keys(ops).join(", "));
        }
      } finally {
        model.dispose();
      }
    },
  );

test.serial("Primus's heads: nnU-Net's own trainers' are known, another trainer's must be given", async (t) => {
  setBackend(backends[0]!.name);
  await t.throwsAsync(loadNnunet(TINY), {
    message:
      /trainer nnUNet_Primus_Tiny_Trainer builds a Primus whose number of attention heads the checkpoint does not hold; give it \(options\.heads/,
  });
  for (const heads of [0, 2.5, -1, 5000, "4"])
    await t.throwsAsync(loadNnunet(TINY, { heads: heads as number }), {
      message: /a whole number of attention heads from 1 to 4096 for options\.heads/,
    });
  // 48 channels in 5 heads, or 8 heads of 6 (a multiple of 6, but 6 / 1.5 = 4 … fine) vs 16 heads of 3
  await t.throwsAsync(loadNnunet(TINY, { heads: 5 }), { message: /width 48 does not split into 5 heads/ });
  await t.throwsAsync(loadNnunet(TINY, { heads: 16 }), { message: /head width 3 \(48 \/ 16 heads\) is not a multiple of 6/ });
  // the same checkpoint under the name of nnU-Net's Primus-S trainer (a subclass keeping its prefix):
  // S is 396 wide and 12 blocks deep, this one 48 and 2
  const dir = mkdtempSync(join(tmpdir(), "bhsd-primus-"));
  made.push(dir);
  const renamed = join(dir, "nnUNet_Primus_S_Trainer_BS__nnUNetPlans__3d_fullres");
  cpSync(TINY, renamed, { recursive: true });
  const ckFile = join(renamed, "fold_0", "checkpoint_final.pth");
  const b = readFileSync(ckFile);
  const { start, size, fixCrc } = pickleSpan(b);
  const pkl = b.subarray(start, start + size);
  const at = pkl.indexOf("nnUNet_Primus_Tiny_Trainer");
  if (at < 0) return t.fail("fixture changed: no trainer name in data.pkl");
  pkl.write("nnUNet_Primus_S_Trainer_BS", at, "latin1"); // (same length)
  fixCrc();
  writeFileSync(ckFile, b);
  await t.throwsAsync(loadNnunet(renamed), {
    message: /nnUNet_Primus_S_Trainer_BS's Primus has width 396 and 12 blocks, the checkpoint 48 and 2; give its number of heads/,
  });
  const m = await loadNnunet(renamed, { heads: 4 });
  t.is(m.trainerName, "nnUNet_Primus_S_Trainer_BS");
  m.dispose();
});

test.serial("a Primus model runs the plans' patch only, one window at a time", async (t) => {
  setBackend(backends[0]!.name);
  const model = await loadNnunet(REGISTERS, { heads: 3 });
  t.deepEqual(model.config.patchSize, [16, 32, 32]);
  for (const shape of [
    [1, 1, 16, 32, 64],
    [2, 1, 16, 32, 32],
    [1, 1, 8, 32, 32],
  ])
    await t.throwsAsync(model.run({ data: new Float32Array(shape.reduce((p, q) => p * q, 1)), shape }), {
      instanceOf: RangeError,
      message: /Expected shape \[1, 1, 16, 32, 32\] \(Primus runs the plans' patch, one at a time\)/,
    });
  model.dispose();
});

test.serial("a Primus folder whose plans' patch the patch embedding does not divide is refused", async (t) => {
  setBackend(backends[0]!.name);
  const dir = mkdtempSync(join(tmpdir(), "bhsd-primus-"));
  made.push(dir);
  const bad = join(dir, "nnUNet_Primus_Tiny_Trainer__nnUNetPlans__3d_fullres");
  cpSync(TINY, bad, { recursive: true });
  const plans = JSON.parse(readFileSync(join(TINY, "plans.json"), "utf8"));
  plans.configurations["3d_fullres"].patch_size = [16, 36, 32];
  writeFileSync(join(bad, "plans.json"), JSON.stringify(plans));
  await t.throwsAsync(loadNnunet(bad, { heads: 4 }), {
    message: /the plans' patch \[16, 36, 32\] is not a multiple of Primus's patch embedding \[8, 8, 8\]/,
  });
  // a patch the embedding divides, but not the one the position embeddings were trained for
  plans.configurations["3d_fullres"].patch_size = [16, 32, 64];
  writeFileSync(join(bad, "plans.json"), JSON.stringify(plans));
  await t.throwsAsync(loadNnunet(bad, { heads: 4 }), {
    message: /eva\.pos_embed holds 32 tokens; the plans' patch \[16, 32, 64\] gives 64 \(\+ 0 registers\)/,
  });
  // and a dataset.json with another number of classes than the decoder's
  copyFileSync(join(TINY, "plans.json"), join(bad, "plans.json"));
  const ds = JSON.parse(readFileSync(join(TINY, "dataset.json"), "utf8"));
  ds.labels = { background: 0, IPH: 1 };
  writeFileSync(join(bad, "dataset.json"), JSON.stringify(ds));
  await t.throwsAsync(loadNnunet(bad, { heads: 4 }), { message: /Primus's decoder ends in 6 channels; dataset\.json has 2 classes/ });
});

test.serial("bhsd segment --nnunet with a Primus folder takes --heads; bhsd info describes it", async (t) => {
  const dir = mkdtempSync(join(tmpdir(), "bhsd-primus-cli-"));
  made.push(dir);
  const out = join(dir, "seg.nii.gz");
  const ct = join(CASES, "PhantomICH_001_0000.nii.gz");
  const bad = bhsdSync(["segment", ct, "--nnunet", TINY, "--out", out], 120_000);
  t.not(bad.status, 0);
  t.regex(bad.stderr, /give it \(options\.heads, bhsd segment --heads\)/);
  const badHeads = bhsdSync(["segment", ct, "--nnunet", TINY, "--heads", "x", "--out", out], 120_000);
  t.not(badHeads.status, 0);
  t.regex(badHeads.stderr, /--heads/);
  // (the report goes to a file: an untrained network's scattered labels make thousands of "bleeds")
  const report = join(dir, "report.json");
  const ok = bhsdSync(["segment", ct, "--nnunet", TINY, "--heads", "4", "--out", out, "--report", report, "--quiet"], 120_000);
  t.is(ok.status, 0, `${ok.signal} ${String(ok.error)} ${ok.stderr}`);
  const r = JSON.parse(readFileSync(report, "utf8")) as { windows: number };
  t.true(r.windows > 1, JSON.stringify(r));
  const seg = await readNifti(out);
  t.deepEqual(seg.dims, [128, 128, 24]);
  const info = bhsdSync(["info", TINY, "--heads", "4", "--json"], 120_000);
  t.is(info.status, 0, info.stderr);
  const net = (JSON.parse(info.stdout) as { network: Record<string, unknown> }).network;
  t.deepEqual(net, { class: "Primus", dims: 3, width: 48, blocks: 2, heads: 4, registers: 0, patch: [16, 32, 32] });
});
