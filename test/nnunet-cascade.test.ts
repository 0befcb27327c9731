/**
 * nnU-Net v2's cascade: a 3d_cascade_fullres folder loads with its 3d_lowres sibling, segment runs
 * the first stage and gives its labels to the second as one-hot input channels — against nnU-Net's
 * own preprocessing and resampling functions (test/fixtures/nnunet-cascade/make.py).
 */
import test from "ava";
import { cpSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { loadNnunet, readNifti, readNpy, segment, setBackend, volumeFromArray, writeNifti } from "../lib/index.js";
import { cropVolume, nonzeroBox } from "../lib/model/crop.js";
import { resampleLabelsNnunet } from "../lib/model/resample.js";
import { checkedFolder } from "./paths.js";
import { backendsUnderTest, bhsdSync, ROOT } from "./helpers.js";
import { compareLabels as compare } from "./ort.js";

const DIR = join(ROOT, "test", "fixtures", "nnunet-cascade");
const DATASET = join(DIR, "Dataset501_PhantomICH");
const LOWRES = join(DATASET, "nnUNetTrainer__nnUNetPlans__3d_lowres");
const CASCADE = join(DATASET, "nnUNetTrainer__nnUNetPlans__3d_cascade_fullres");
const backends = backendsUnderTest();
const { bytes: fixture } = checkedFolder(DIR);
const npy = (name: string) => readNpy(fixture(`${name}.npy`));
const SPACING = [5, 0.45, 0.45];

test("the fixture folders' files are the ones make.py wrote", (t) => {
  for (const c of ["3d_lowres", "3d_cascade_fullres"])
    for (const f of ["plans.json", "dataset.json", "fold_0/checkpoint_final.pth"])
      t.truthy(fixture(`Dataset501_PhantomICH/nnUNetTrainer__nnUNetPlans__${c}/${f}`));
});

test("a 3d_cascade_fullres folder loads its 3d_lowres sibling; its network takes 1 + 5 channels", async (t) => {
  const m = await loadNnunet(CASCADE);
  try {
    t.is(m.configuration, "3d_cascade_fullres");
    t.is(m.architecture.inputChannels, 6);
    t.is(m.previousStage?.configuration, "3d_lowres");
    t.is(m.previousStage?.architecture.inputChannels, 1);
    const rs = m.config.resampling;
    t.deepEqual(rs.type === "nnunet" ? rs.seg : undefined, { order: 1, orderZ: 0, forceSeparateZ: null, anisotropyThreshold: 3 });
  } finally {
    m.dispose();
  }
});

test("the previous stage's labels reach the cascade's grid as nnU-Net's resample_data_or_seg (is_seg) puts them", async (t) => {
  const [ct, low, want] = await Promise.all(["ct", "lowres_labels", "cascade_seg_on_grid"].map(npy));
  const vol = volumeFromArray(ct!.data as Float32Array, ct!.shape, SPACING);
  const box = nonzeroBox(vol);
  const labels = volumeFromArray(low!.data as Uint8Array, low!.shape, SPACING);
  const cropped = cropVolume(labels, box!);
  const shape = [cropped.dims[2], cropped.dims[1], cropped.dims[0]] as [number, number, number];
  const step = { order: 1, orderZ: 0, forceSeparateZ: null, anisotropyThreshold: 3 };
  const out = await resampleLabelsNnunet(cropped.data as Uint8Array, shape, [10, 85, 79], SPACING, [5, 0.48828125, 0.48828125], step);
  const w = want!.data as Int8Array;
  t.is(out.length, w.length);
  let differ = 0,
    foreground = 0;
  for (let i = 0; i < w.length; i++) {
    const v = Math.max(0, w[i]!);
    if (v > 0) foreground++;
    if (out[i] !== v) differ++;
  }
  t.true(foreground > 1000);
  t.is(differ, 0);
});

for (const { name: backend } of backends)
  test.serial(`${backend}: segment with the cascade gives nnU-Net's labels of both stages`, async (t) => {
    setBackend(backend);
    const [ct, low, lowMargin, want, margin] = await Promise.all(
      ["ct", "lowres_labels", "lowres_margin", "cascade_labels", "cascade_margin"].map(npy),
    );
    const vol = volumeFromArray(ct!.data as Float32Array, ct!.shape, SPACING);
    const m = await loadNnunet(CASCADE);
    try {
      const first = await segment(vol, m.previousStage!, { cleanup: false });
      t.is(compare(first.labels.data, low!.data as Uint8Array, lowMargin!.data as Float32Array).differ, 0);
      const { labels, report } = await segment(vol, m, { cleanup: false });
      t.deepEqual(report.modelGrid.dims, [10, 85, 79]);
      const { compared, differ } = compare(labels.data, want!.data as Uint8Array, margin!.data as Float32Array);
      t.true(compared > 0.99 * labels.data.length, `${compared} compared`);
      t.is(differ, 0);
      // the first stage's labels matter: the cascade's labels are not the first stage's
      let same = 0;
      for (let i = 0; i < labels.data.length; i++) if (labels.data[i] === first.labels.data[i]) same++;
      t.true(same < 0.9 * labels.data.length, `${same} voxels as the first stage's`);
    } finally {
      m.dispose();
    }
  });

test("the first stage: given as a folder or a loaded model (the caller's, not disposed); missing, an error naming it", async (t) => {
  const low = await loadNnunet(LOWRES);
  const viaModel = await loadNnunet(CASCADE, { previousStage: low });
  t.is(viaModel.previousStage, low);
  viaModel.dispose();
  // the caller's model still runs
  const [ct] = await Promise.all(["ct"].map(npy));
  const vol = volumeFromArray(ct!.data as Float32Array, ct!.shape, SPACING);
  await t.notThrowsAsync(segment(vol, low, { cleanup: false }));
  low.dispose();
  const dir = mkdtempSync(join(tmpdir(), "bhsd-cascade-"));
  try {
    const alone = join(dir, "nnUNetTrainer__nnUNetPlans__3d_cascade_fullres");
    cpSync(CASCADE, alone, { recursive: true });
    await t.throwsAsync(loadNnunet(alone), {
      message: /is a cascade's second stage; its first \(3d_lowres\) was not found at .*__3d_lowres: give it as options\.previousStage/,
    });
    const viaPath = await loadNnunet(alone, { previousStage: LOWRES });
    t.is(viaPath.previousStage?.configuration, "3d_lowres");
    viaPath.dispose();
    await t.throwsAsync(loadNnunet(alone, { previousStage: 3 as unknown as string }), {
      instanceOf: TypeError,
      message: /options\.previousStage/,
    });
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test.serial("bhsd segment --nnunet <cascade> [--previous-stage <folder>] writes the cascade's labels", async (t) => {
  const dir = mkdtempSync(join(tmpdir(), "bhsd-cascade-cli-"));
  try {
    const [ct, want, margin] = await Promise.all(["ct", "cascade_labels", "cascade_margin"].map(npy));
    await writeNifti(join(dir, "ct.nii.gz"), volumeFromArray(ct!.data as Float32Array, ct!.shape, SPACING));
    const alone = join(dir, "nnUNetTrainer__nnUNetPlans__3d_cascade_fullres");
    cpSync(CASCADE, alone, { recursive: true });
    for (const [folder, extra] of [
      [CASCADE, []],
      [alone, ["--previous-stage", LOWRES]],
    ] as const) {
      const out = join(dir, "labels.nii.gz");
      const r = bhsdSync(["segment", join(dir, "ct.nii.gz"), "--nnunet", folder, ...extra, "--out", out, "--quiet"], 180_000);
      t.is(r.status, 0, r.stderr);
      const got = Uint8Array.from((await readNifti(out)).data);
      t.is(compare(got, want!.data as Uint8Array, margin!.data as Float32Array).differ, 0);
      rmSync(out);
    }
    const bad = bhsdSync(["segment", join(dir, "ct.nii.gz"), "--nnunet", alone, "--quiet"], 60_000);
    t.is(bad.status, 1);
    t.regex(bad.stderr, /its first \(3d_lowres\) was not found .*--previous-stage/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("cascade plans that loop or point outside are refused: previous_stage must be another configuration, its stage no cascade", async (t) => {
  const dir = mkdtempSync(join(tmpdir(), "bhsd-cascade-loop-"));
  try {
    cpSync(DATASET, dir, { recursive: true });
    const cascade = join(dir, "nnUNetTrainer__nnUNetPlans__3d_cascade_fullres");
    const lowres = join(dir, "nnUNetTrainer__nnUNetPlans__3d_lowres");
    const edit = (folder: string, f: (c: Record<string, Record<string, unknown>>) => void) => {
      const plans = JSON.parse(readFileSync(join(folder, "plans.json"), "utf8")) as {
        configurations: Record<string, Record<string, unknown>>;
      };
      f(plans.configurations);
      writeFileSync(join(folder, "plans.json"), JSON.stringify(plans));
    };
    const original = readFileSync(join(cascade, "plans.json"));
    for (const bad of ["3d_cascade_fullres", "../../x", "nope"]) {
      edit(cascade, (c) => (c["3d_cascade_fullres"]!.previous_stage = bad));
      await t.throwsAsync(loadNnunet(cascade), { message: /previous_stage .* is not another configuration of the plans/ }, bad);
      writeFileSync(join(cascade, "plans.json"), original);
    }
    // a first stage whose plans make it a cascade too (A → B → A would never end)
    edit(lowres, (c) => (c["3d_lowres"]!.previous_stage = "3d_cascade_fullres"));
    await t.throwsAsync(loadNnunet(cascade), { message: /a cascade's first stage \(3d_lowres\) that names a previous stage itself/ });
    writeFileSync(join(lowres, "plans.json"), original);
    // the first stage given: of the configuration the plans name; the option only for a cascade
    await t.throwsAsync(loadNnunet(cascade, { previousStage: cascade }), {
      message: /holds configuration "3d_cascade_fullres", not the cascade's first stage "3d_lowres"|names a previous stage itself/,
    });
    await t.throwsAsync(loadNnunet(lowres, { previousStage: lowres }), {
      message: /options\.previousStage is for a cascade's second stage/,
    });
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
