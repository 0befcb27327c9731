/**
 * nnU-Net's `2d` configuration — the one its planner makes for thick-slice CT such as BHSD's 5 mm
 * slices — and 2-D models in segment(). References (test/fixtures/nnunet-2d/, made by make.py
 * there with PyTorch 1.13 and dynamic-network-architectures' own PlainConvUNet): the folds' logits,
 * and nnU-Net's 2-D sliding-window predictor (every slice, windows over y and x, the Gaussian,
 * mirroring over the checkpoint's axes, fold averaging) on the smoke CT, a crop smaller than the
 * patch and a CT wider than it.
 */
import test from "ava";
import { copyFileSync, cpSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { loadModel, loadNnunet, readNifti, readNpy, segment, setBackend, type Volume } from "../lib/index.js";
import { backendsUnderTest, bhsdSync, ROOT } from "./helpers.js";
import { checkedFolder } from "./paths.js";
import { scaleDiff } from "./ort.js";

const DIR = join(ROOT, "test", "fixtures", "nnunet-2d");
const fx = checkedFolder(DIR);
const FOLDER_REL = "Dataset501_PhantomICH/nnUNetTrainer__nnUNetPlans__2d";
const FOLDER = join(DIR, FOLDER_REL);
const SMOKE_CT = join(ROOT, "test", "fixtures", "nnunet-folder", "cases", "PhantomICH_001_0000.nii.gz");
const backends = backendsUnderTest();
const cpu = () => setBackend(backends.some((b) => b.name === "native") ? "native" : backends[0]!.name);
const made: string[] = [];
test.after.always(() => {
  for (const d of made) rmSync(d, { recursive: true, force: true });
});

test("the fixture's files are intact", (t) => {
  for (const f of fx.listed) t.notThrows(() => fx.file(f), f);
  t.true(fx.listed.includes(`${FOLDER_REL}/fold_1/checkpoint_final.pth`));
});

/** Voxels where bhsd's labels differ from the reference's, and how many of those are not near-ties. */
async function compareLabels(labels: Uint8Array, name: string) {
  const ref = (await readNpy(fx.file(`${name}_labels.npy`))).data as Uint8Array;
  const ties = (await readNpy(fx.file(`${name}_ties.npy`))).data as Uint8Array;
  let differ = 0,
    clear = 0;
  for (let i = 0; i < ref.length; i++)
    if (labels[i] !== ref[i]) {
      differ++;
      if (!ties[i]) clear++;
    }
  return { n: ref.length, len: labels.length, differ, clear, classes: new Set(ref).size };
}

/** The CT's columns x0…x1 (x fastest, as NIfTI), or it with columns appended (`extra`). */
function columns(ct: Volume, x0: number, x1: number, extra = 0, y0 = 0, y1 = ct.dims[1], z0 = 0, z1 = ct.dims[2]): Volume {
  const [nx, ny] = ct.dims;
  const w = x1 - x0 + extra;
  const data = new Int16Array(w * (y1 - y0) * (z1 - z0));
  let i = 0;
  for (let z = z0; z < z1; z++)
    for (let y = y0; y < y1; y++) {
      for (let x = x0; x < x1; x++) data[i++] = ct.data[(z * ny + y) * nx + x]!;
      for (let x = 0; x < extra; x++) data[i++] = ct.data[(z * ny + y) * nx + x]!;
    }
  return { data, dims: [w, y1 - y0, z1 - z0], spacing: ct.spacing, affine: ct.affine };
}

for (const { name } of backends) {
  test.serial(`${name}: fold 0 of the 2d folder gives PyTorch's logits on a slice`, async (t) => {
    setBackend(name);
    const model = await loadNnunet(FOLDER, { folds: [0] });
    t.is(model.architecture.dims, 2);
    const x = await readNpy(fx.file("fold_0_input.npy"));
    const want = await readNpy(fx.file("fold_0_logits.npy"));
    const y = await model.run({ data: x.data as Float32Array, shape: x.shape });
    t.deepEqual(y.shape, want.shape);
    const e = scaleDiff(y.data, want.data);
    t.true(e <= 1e-5, `max |bhsd − PyTorch| is ${e} of max |PyTorch|`);
    // a 3-D input, or a slice that is not a multiple of the strides (32), is refused naming it
    await t.throwsAsync(model.run({ data: new Float32Array(128 * 128), shape: [1, 1, 1, 128, 128] }), { message: /\[N, C, H, W\]/ });
    await t.throwsAsync(model.run({ data: new Float32Array(100 * 128), shape: [1, 1, 100, 128] }), { message: /multiples of \[32, 32\]/ });
    model.dispose();
  });
}

test.serial("the 2d folder's config: a slice patch, in-plane spacing, the checkpoint's mirror axes as the grid's y and x", async (t) => {
  cpu();
  const model = await loadNnunet(FOLDER);
  t.is(model.configuration, "2d");
  t.deepEqual(model.folds, [0, 1]);
  const c = model.config;
  t.is(c.spatialDims, 2);
  t.deepEqual(c.patchSize, [1, 128, 128]);
  t.deepEqual(c.targetSpacing, [0.48828125, 0.48828125]);
  t.deepEqual(c.mirrorAxes, [1, 2], "inference_allowed_mirroring_axes (0, 1) of the 2-D network");
  model.dispose();
});

test.serial("segment() with the 2d folder matches nnU-Net's 2-D predictor run by PyTorch (both folds)", async (t) => {
  cpu();
  const ct = await readNifti(SMOKE_CT);
  const model = await loadNnunet(FOLDER);
  const { labels, report } = await segment(ct, model);
  // 24 slices of 128 × 128 = the patch: one window per slice; the slices keep their 5 mm
  t.deepEqual(report.modelGrid.dims, [24, 128, 128]);
  t.deepEqual(report.modelGrid.spacing, [5, 0.48828125, 0.48828125]);
  t.is(report.windows, 24);
  t.is(report.forwards, 24);
  const c = await compareLabels(labels.data, "smoke_folds01");
  t.log(`labels differing from PyTorch's: ${c.differ} of ${c.n} (${c.clear} not near-ties); ${c.classes} classes`);
  t.is(c.len, c.n);
  t.true(c.classes >= 4);
  t.is(c.clear, 0);
  t.true(c.differ <= c.n * 1e-3);
  model.dispose();
});

test.serial("segment() of a 2-D model: a crop smaller than the patch, mirrored over y and x, matches PyTorch's", async (t) => {
  cpu();
  const full = await readNifti(SMOKE_CT);
  const ct = columns(full, 36, 100, 0, 40, 104, 4, 20);
  const model = await loadNnunet(FOLDER);
  const { labels, report } = await segment(ct, model, { mirror: true });
  t.is(report.windows, 16);
  t.is(report.forwards, 16 * 4, "16 slices, 4 flips of y and x (each forward runs both folds)");
  const c = await compareLabels(labels.data, "crop_folds01_mirrored");
  t.log(`labels differing: ${c.differ} of ${c.n} (${c.clear} not near-ties)`);
  t.is(c.len, c.n);
  t.true(c.classes >= 3);
  t.is(c.clear, 0);
  // a 2-D model's z cannot be flipped (one slice): refused naming the option
  await t.throwsAsync(segment(ct, model, { mirror: [0, 1] }), { message: /1, 2.*for options\.mirror/ });
  model.dispose();
});

test.serial(
  "the same 2-D network exported to ONNX beside plans.json runs as the 2d configuration, windows across a wide CT too",
  async (t) => {
    cpu();
    // fold_0.onnx (dynamic H, W) in a folder with the results folder's plans.json and dataset.json:
    // its four input axes pick the plans' 2d configuration
    const dir = mkdtempSync(join(tmpdir(), "bhsd-2d-onnx-"));
    made.push(dir);
    copyFileSync(fx.file("fold_0.onnx"), join(dir, "fold_0.onnx"));
    for (const f of ["plans.json", "dataset.json"]) cpSync(fx.file(`${FOLDER_REL}/${f}`), join(dir, f));
    const model = await loadModel(join(dir, "fold_0.onnx"));
    t.is(model.config.source, "nnunet");
    t.is(model.config.spatialDims, 2);
    t.deepEqual(model.config.patchSize, [1, 128, 128]);
    const full = await readNifti(SMOKE_CT);
    const smoke = await segment(full, model);
    const c = await compareLabels(smoke.labels.data, "smoke_fold0");
    t.log(`smoke, fold 0: ${c.differ} of ${c.n} differ (${c.clear} not near-ties)`);
    t.is(c.clear, 0);
    // 200 columns: windows at x 0, 36, 72 (nnU-Net's steps for 200 over 128 at 0.5) on each slice
    const wide = await segment(columns(full, 0, 128, 72), model);
    t.is(wide.report.windows, 24 * 3);
    const w = await compareLabels(wide.labels.data, "wide_fold0");
    t.log(`wide, fold 0: ${w.differ} of ${w.n} differ (${w.clear} not near-ties)`);
    t.is(w.len, w.n);
    t.is(w.clear, 0);
    // a patch for another rank is refused naming the option
    await t.throwsAsync(segment(full, model, { patchSize: [16, 64, 64] }), { message: /\[y, x\].*for options\.patchSize/ });
    const narrow = await segment(full, model, { patchSize: [64, 64] });
    t.is(narrow.report.windows, 24 * 9);
    model.dispose();
  },
);

test("a config that disagrees with the model's rank is refused at load, naming both", async (t) => {
  const onnx = fx.file("fold_0.onnx");
  await t.throwsAsync(loadModel(onnx, { patchSize: [16, 64, 64] }), {
    message: /patchSize of a 2-D model must be \[y, x\] \(or \[1, y, x\]\).*got \[16,64,64\]/,
  });
  await t.throwsAsync(loadModel(onnx, { spatialDims: 3 }), {
    message: /a 3-D config \(spatialDims 3\) for a model whose input has 4 axes/,
  });
  await t.throwsAsync(loadModel(onnx, { mirrorAxes: [0, 1, 2] }), { message: /mirrorAxes of a 2-D model are among 1 and 2/ });
  await t.throwsAsync(loadModel(onnx, { patchSize: [1, 2, 3, 4] as never }), { message: /patchSize of a 2-D model must be \[y, x\]/ });
  // without a config: a 2-D model's patch is its fixed input sizes, else a whole 512 × 512 slice
  const m = await loadModel(onnx);
  t.deepEqual(m.config.patchSize, [1, 512, 512]);
  t.deepEqual(m.config.mirrorAxes, [1, 2]);
  m.dispose();
});

test.serial(
  "an ensemble of the 2d and 3d_fullres folders (segment given both) matches nnU-Net's ensemble of their probabilities",
  async (t) => {
    cpu();
    const ct = await readNifti(SMOKE_CT);
    const m2 = await loadNnunet(FOLDER);
    const m3 = await loadNnunet(
      join(ROOT, "test", "fixtures", "nnunet-folder", "Dataset501_PhantomICH", "nnUNetTrainer__nnUNetPlans__3d_fullres"),
    );
    const progress: number[] = [];
    const { labels, report } = await segment(ct, [m2, m3], {
      onProgress: (p) => p.step === "window" && progress.push(p.done / p.total),
    });
    t.is(report.windows, 24 + 18, "24 slices of the 2d model, 2 × 3 × 3 windows of the 3d one");
    t.deepEqual(
      report.ensemble!.map((e) => e.windows),
      [24, 18],
    );
    t.is(report.model, `${m2.name} + ${m3.name}`);
    t.true(progress.every((v, i) => i === 0 || v > progress[i - 1]!) && progress.at(-1) === 1, "one progress over both members");
    const c = await compareLabels(labels.data, "ensemble_2d_3d_fullres");
    t.log(`ensemble: ${c.differ} of ${c.n} differ from nnU-Net's (${c.clear} not near-ties)`);
    t.is(c.len, c.n);
    t.is(c.clear, 0);
    // members with other classes are refused before any work
    const other = {
      ...m3,
      name: "other",
      run: m3.run.bind(m3),
      lastRun: undefined,
      config: { ...m3.config, classes: { "0": "bg", "1": "blood" } },
    };
    await t.throwsAsync(segment(ct, [m2, other]), { message: /model\[1\]\.config\.classes/ });
    await t.throwsAsync(segment(ct, []), { message: /an array of 1 to 8 models/ });
    m2.dispose();
    m3.dispose();
  },
);

test.serial(
  "bhsd segment CT --nnunet 2D --nnunet 3D writes the ensemble's labels; --pp-pkl applies nnU-Net's post-processing file",
  async (t) => {
    const dir = mkdtempSync(join(tmpdir(), "bhsd-2d-cli-"));
    made.push(dir);
    const folder3d = join(ROOT, "test", "fixtures", "nnunet-folder", "Dataset501_PhantomICH", "nnUNetTrainer__nnUNetPlans__3d_fullres");
    const cli = (...args: string[]) => bhsdSync(["segment", SMOKE_CT, ...args], 180_000);
    const ok = cli(
      "--nnunet",
      FOLDER,
      "--nnunet",
      folder3d,
      "--out",
      join(dir, "labels.nii.gz"),
      "--report",
      join(dir, "report.json"),
      "--quiet",
    );
    t.is(ok.status, 0, ok.stderr);
    const labels = await readNifti(join(dir, "labels.nii.gz"));
    const c = await compareLabels(Uint8Array.from(labels.data), "ensemble_2d_3d_fullres");
    t.is(c.clear, 0, `${c.differ} labels differ from nnU-Net's ensemble`);
    t.is(JSON.parse(readFileSync(join(dir, "report.json"), "utf8")).ensemble.length, 2);
    // (the report goes to a file: a random network's thousands of specks outgrow spawnSync's stdout buffer)
    const pp = cli(
      "--nnunet",
      FOLDER,
      "--pp-pkl",
      fx.file("postprocessing/labels.pkl"),
      "--out",
      join(dir, "pp.nii.gz"),
      "--report",
      join(dir, "pp.json"),
      "--quiet",
    );
    t.is(pp.status, 0, pp.stderr);
    // nnU-Net's steps on nnU-Net's labels (make_postprocessing.py); bhsd's labels before them differ
    // from nnU-Net's at a near-tie voxel or two, which may move a component's edge by as much
    const ppLabels = Uint8Array.from((await readNifti(join(dir, "pp.nii.gz"))).data);
    const ppWant = (await readNpy(fx.file("postprocessing/smoke_folds01_labels.npy"))).data as Uint8Array;
    let ppDiffer = 0;
    for (let i = 0; i < ppWant.length; i++) if (ppLabels[i] !== ppWant[i]) ppDiffer++;
    t.true(ppDiffer <= 16, `${ppDiffer} labels differ from nnU-Net's post-processed ones`);
    t.deepEqual(JSON.parse(readFileSync(join(dir, "pp.json"), "utf8")).postprocessing, {
      largestOf: [[1, 2, 3, 4, 5], [2]],
      connectivity: 26,
    });
    const hostile = cli("--nnunet", FOLDER, "--pp-pkl", fx.file("postprocessing/hostile.pkl"), "--quiet");
    t.not(hostile.status, 0);
    t.regex(hostile.stderr, /posix\.system/);
    const both = cli("--nnunet", FOLDER, "--pp-pkl", fx.file("postprocessing/labels.pkl"), "--no-postprocessing", "--quiet");
    t.not(both.status, 0);
    t.regex(both.stderr, /--pp-pkl is a post-processing: not with --cleanup-min-ml or --no-postprocessing/);
  },
);
