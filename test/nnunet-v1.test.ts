/**
 * nnU-Net v1 trainer folders (plans.pkl, fold_K/model_final_checkpoint.model + .pkl): Generic_UNet's
 * logits and the whole v1 pipeline's labels (crop, resample then normalise, per-forward softmax,
 * folds' mean, the probabilities resampled back, postprocessing.json) against nnU-Net v1.7.1's own
 * code, run by test/fixtures/nnunet-v1/make.py.
 */
import test from "ava";
import { cpSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { loadNnunet, readNifti, readNpy, segment, setBackend, volumeFromArray, writeNifti } from "../lib/index.js";
import { readV1Pickle } from "../lib/model/nnunet/v1.js";
import { checkedFolder } from "./paths.js";
import { backendsUnderTest, bhsdSync, ROOT } from "./helpers.js";
import { compareLabels as compare } from "./ort.js";

const DIR = join(ROOT, "test", "fixtures", "nnunet-v1");
const TRAINER = "Task501_PhantomICH/nnUNetTrainerV2__nnUNetPlansv2.1";
const FOLDER = join(DIR, "nnUNet", "3d_fullres", TRAINER);
const FOLDER_2D = join(DIR, "nnUNet", "2d", TRAINER);
const backends = backendsUnderTest();
const { bytes: fixture } = checkedFolder(DIR);
const npy = (name: string) => readNpy(fixture(`${name}.npy`));

test("the fixture folders' files are the ones make.py wrote", (t) => {
  const ck = (k: number) => [`fold_${k}/model_final_checkpoint.model`, `fold_${k}/model_final_checkpoint.model.pkl`];
  for (const f of ["plans.pkl", "postprocessing.json", ...ck(0), ...ck(1)]) t.truthy(fixture(`nnUNet/3d_fullres/${TRAINER}/${f}`), f);
  for (const f of ["plans.pkl", ...ck(0)]) t.truthy(fixture(`nnUNet/2d/${TRAINER}/${f}`), f);
});

test("plans.pkl: numpy arrays and scalars read as numbers, dicts as Maps", async (t) => {
  const plans = (await readV1Pickle(join(FOLDER, "plans.pkl"))).value as Map<string, unknown>;
  t.true(plans instanceof Map);
  t.deepEqual(plans.get("transpose_forward"), [0, 1, 2]);
  const stage1 = (plans.get("plans_per_stage") as Map<number, Map<string, unknown>>).get(1)!;
  t.deepEqual(stage1.get("patch_size"), [8, 32, 32]);
  t.deepEqual(stage1.get("current_spacing"), [5, 0.9, 0.9]);
  const ip = (
    (plans.get("dataset_properties") as Map<string, unknown>).get("intensityproperties") as Map<number, Map<string, unknown>>
  ).get(0)!;
  t.is(ip.get("sd"), 31.25);
});

test("v1 pickles: Fortran-ordered arrays in C order; hostile ones refused or read in bounded time", async (t) => {
  const dir = mkdtempSync(join(tmpdir(), "bhsd-v1-pkl-"));
  const read = async (name: string, bytes: Uint8Array) => {
    writeFileSync(join(dir, name), bytes);
    return (await readV1Pickle(join(dir, name))).value;
  };
  try {
    // pickle.dumps({"a": np.arange(6, dtype=np.int64).reshape(2, 3).T.copy(order="F")}, protocol=2), numpy 1.24
    const fortran = Buffer.from(
      "gAJ9cQBYAQAAAGFxAWNudW1weS5jb3JlLm11bHRpYXJyYXkKX3JlY29uc3RydWN0CnECY251bXB5Cm5kYXJyYXkKcQNLAIVxBGNfY29kZWNzCmVuY29kZQpxBVgBAAAAYnEGWAYAAABsYXRpbjFxB4ZxCFJxCYdxClJxCyhLAUsDSwKGcQxjbnVtcHkKZHR5cGUKcQ1YAgAAAGk4cQ6JiIdxD1JxEChLA1gBAAAAPHERTk5OSv////9K/////0sAdHESYohoBVgwAAAAAAAAAAAAAAABAAAAAAAAAAIAAAAAAAAAAwAAAAAAAAAEAAAAAAAAAAUAAAAAAAAAcRNoB4ZxFFJxFXRxFmJzLg==",
      "base64",
    );
    t.deepEqual(((await read("f.pkl", fortran)) as Map<string, unknown>).get("a"), [
      [0, 3],
      [1, 4],
      [2, 5],
    ]);
    // pickle.dumps({"a": np.empty((2**31, 0))}, protocol=4): no bytes, 2^31 empty rows
    const wide = Buffer.from(
      "gASVlgAAAAAAAAB9lIwBYZSMFW51bXB5LmNvcmUubXVsdGlhcnJheZSMDF9yZWNvbnN0cnVjdJSTlIwFbnVtcHmUjAduZGFycmF5lJOUSwCFlEMBYpSHlFKUKEsBigUAAACAAEsAhpRoBYwFZHR5cGWUk5SMAmY4lImIh5RSlChLA4wBPJROTk5K/////0r/////SwB0lGKJQwCUdJRicy4=",
      "base64",
    );
    await t.throwsAsync(read("w.pkl", wide), { message: /numpy arrays of more than 4000000 values/ });
    // lists of lists, each naming the one below twice (memo gets): 2^60 paths, 61 lists
    const ops = [0x80, 0x02, 0x5d, 0x71, 0];
    for (let k = 1; k <= 60; k++) ops.push(0x30, 0x5d, 0x71, k, 0x28, 0x68, k - 1, 0x68, k - 1, 0x65);
    ops.push(0x2e);
    const t0 = Date.now();
    const dag = (await read("d.pkl", Uint8Array.from(ops))) as unknown[];
    t.is(dag.length, 2);
    t.true(Date.now() - t0 < 10_000);
    // a BUILD that would set a list's length to 2^31 (23 bytes), or give it a `then` (an async
    // result taken for a promise that never settles): a list takes no state (pickleparser copied
    // any state onto any object), refused
    const long = Buffer.from("\x80\x02]}(X\x06\x00\x00\x00lengthJ\xff\xff\xff\x7fub.", "latin1");
    await t.throwsAsync(read("l.pkl", long), { message: /BUILD on a list\/tuple, which takes no state here \(opcode at offset 22\)/ });
    const thenable = Buffer.from("\x80\x02]}\x8c\x04thencbuiltins\nset\nsb.", "latin1");
    await t.throwsAsync(read("t.pkl", thenable), { message: /BUILD on a list\/tuple/ });
    // a 3·10^6-long list given to set() again and again: each set() is charged to the budget
    let amp = "\x80\x02]q\x00";
    for (let k = 0; k < 3; k++) amp += "(" + "K\x01".repeat(1_000_000) + "e";
    for (let k = 0; k < 10; k++) amp += "cbuiltins\nset\n(h\x00tR0";
    await t.throwsAsync(read("a.pkl", Buffer.from(amp + ".", "latin1")), { message: /lists, dicts and arrays of more than/ });
    // a 512 KB integer (a BigInt from it is quadratic): refused by the scan before parsing
    const big = Buffer.alloc(3 + 4 + 512 * 1024 + 1, 0x7f);
    big.set([0x80, 0x02, 0x8b]);
    big.writeUInt32LE(512 * 1024, 3);
    big[big.length - 1] = 0x2e;
    const t1 = Date.now();
    await t.throwsAsync(read("b.pkl", big), { message: /an integer of 524288 bytes at offset 2/ });
    t.true(Date.now() - t1 < 10_000);
    // a list that holds itself
    const cyc = (await read("c.pkl", Uint8Array.from([0x80, 0x02, 0x5d, 0x71, 0, 0x68, 0, 0x61, 0x2e]))) as unknown[];
    t.is(cyc[0], cyc);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("loadNnunet reads a v1 folder: Generic_UNet, stage 1 (3d_fullres), v1's pipeline in the config", async (t) => {
  const m = await loadNnunet(FOLDER);
  try {
    t.deepEqual(m.folds, [0, 1]);
    t.is(m.configuration, "3d_fullres");
    t.is(m.trainerName, "nnUNetTrainerV2");
    t.is(m.architecture.networkClass, "Generic_UNet");
    t.deepEqual(m.architecture.features, [4, 8, 16, 32]);
    t.is(m.ensemble, "softmax");
    const c = m.config;
    t.deepEqual(c.patchSize, [8, 32, 32]);
    t.deepEqual(c.targetSpacing, [5, 0.9, 0.9]);
    t.deepEqual(c.normalization, { type: "ct", lower: -12, upper: 96, mean: 41.5, std: 31.25 });
    t.true(c.normalizeAfterResampling);
    t.is(c.aggregate, "probabilities");
    t.true(c.cropToNonzero);
    t.deepEqual(c.postprocessing, { largestOf: [[1, 2, 3, 4, 5], [2]], connectivity: 6 });
    t.is(Object.keys(c.classes).length, 6);
  } finally {
    m.dispose();
  }
});

for (const { name: backend } of backends) {
  for (const [dims, folder, prefix] of [
    ["3-D", FOLDER, "forward"],
    ["2-D", FOLDER_2D, "forward_2d"],
  ] as const)
    test.serial(`${backend}: a v1 fold's logits equal Generic_UNet's in PyTorch (${dims})`, async (t) => {
      setBackend(backend);
      const m = await loadNnunet(folder, { folds: [0] });
      try {
        const [x, want] = await Promise.all([`${prefix}_input`, `${prefix}_logits`].map(npy));
        const y = await m.run({ data: x!.data as Float32Array, shape: x!.shape });
        t.deepEqual(y.shape, want!.shape);
        let worst = 0;
        const w = want!.data as Float32Array;
        for (let i = 0; i < w.length; i++) worst = Math.max(worst, Math.abs(y.data[i]! - w[i]!));
        t.true(worst < 2e-4, `largest difference ${worst}`);
      } finally {
        m.dispose();
      }
    });

  for (const [tag, folder, folds, mirror] of [
    ["folds01", FOLDER, [0, 1], false],
    ["fold0_mirrored", FOLDER, [0], true],
    ["2d_mirrored", FOLDER_2D, [0], true],
  ] as const)
    test.serial(`${backend}: segment with a v1 folder gives nnU-Net v1's labels (${tag})`, async (t) => {
      setBackend(backend);
      const [ct, want, margin] = await Promise.all([`e2e_ct`, `e2e_${tag}_labels`, `e2e_${tag}_margin`].map(npy));
      const vol = volumeFromArray(ct!.data as Float32Array, ct!.shape, [5, 0.45, 0.45]);
      const m = await loadNnunet(folder, { folds: [...folds] });
      try {
        const { labels, report } = await segment(vol, m, { mirror, cleanup: false });
        t.deepEqual(report.modelGrid.dims, [11, 33, 33]);
        const { compared, differ } = compare(labels.data, want!.data as Uint8Array, margin!.data as Float32Array);
        t.true(compared > 0.99 * labels.data.length, `${compared} of ${labels.data.length} voxels compared`);
        t.is(differ, 0);
        if (tag === "folds01") {
          // the folder's postprocessing.json, which segment applies by default: v1's remove_all_but_the_largest_connected_component
          const pp = await npy(`e2e_${tag}_postprocessed`);
          const { labels: cleaned } = await segment(vol, m);
          const p = pp!.data as Uint8Array;
          let differs = 0,
            changed = 0;
          for (let i = 0; i < p.length; i++) {
            if (margin!.data[i]! <= 1e-4) continue;
            if (cleaned.data[i] !== p[i]) differs++;
            if (p[i] !== want!.data[i]) changed++;
          }
          t.true(changed > 10, `the post-processing changes ${changed} voxels`);
          t.is(differs, 0);
        }
      } finally {
        m.dispose();
      }
    });
}

test.serial("the v1 pipeline's three differences each change labels (the fixture tells them apart)", async (t) => {
  setBackend(backends[0]!.name);
  const [ct, want, margin] = await Promise.all(["e2e_ct", "e2e_folds01_labels", "e2e_folds01_margin"].map(npy));
  const vol = volumeFromArray(ct!.data as Float32Array, ct!.shape, [5, 0.45, 0.45]);
  const m = await loadNnunet(FOLDER);
  const base = m.config;
  try {
    for (const change of [{ normalizeAfterResampling: false }, { aggregate: "logits" as const }]) {
      (m as { config: typeof base }).config = { ...base, ...change };
      const { labels } = await segment(vol, m, { cleanup: false });
      t.true(compare(labels.data, want!.data as Uint8Array, margin!.data as Float32Array).differ > 0, JSON.stringify(change));
    }
    // the folds' logits averaged (v2's ensemble) instead of their probabilities
    (m as { config: typeof base }).config = base;
    (m as { ensemble: string }).ensemble = "logits";
    const { labels } = await segment(vol, m, { cleanup: false });
    t.true(compare(labels.data, want!.data as Uint8Array, margin!.data as Float32Array).differ > 0, "ensemble logits");
  } finally {
    (m as { config: typeof base }).config = base;
    m.dispose();
  }
});

test("v1 folders: refusals name the file and what is wrong", async (t) => {
  const dir = mkdtempSync(join(tmpdir(), "bhsd-v1-"));
  try {
    cpSync(FOLDER, dir, { recursive: true });
    // an unknown trainer: refused by name, loadable as nnUNetTrainerV2 when the caller says so
    const pkl = join(dir, "fold_0", "model_final_checkpoint.model.pkl");
    const bytes = readFileSync(pkl);
    const i = bytes.indexOf(Buffer.from("nnUNetTrainerV2\x94", "latin1"));
    t.true(i > 0);
    const renamed = Buffer.concat([bytes.subarray(0, i), Buffer.from("nnUNetTrainerV2_Mish"), bytes.subarray(i + 15)]);
    // (the pickle's SHORT_BINUNICODE length byte before the name)
    renamed[i - 1] = 20;
    writeFileSync(pkl, renamed);
    await t.throwsAsync(loadNnunet(dir, { folds: [0] }), {
      message: /trainer nnUNetTrainerV2_Mish is not nnUNetTrainerV2.*trainer: "nnUNetTrainerV2"/,
    });
    const m = await loadNnunet(dir, { folds: [0], trainer: "nnUNetTrainerV2" });
    t.is(m.trainerName, "nnUNetTrainerV2_Mish");
    m.dispose();
    // a pickle naming a global outside what v1's plans hold
    writeFileSync(pkl, Buffer.from("\x80\x04\x95\x15\x00\x00\x00\x00\x00\x00\x00\x8c\x02os\x94\x8c\x06system\x94\x93\x94.", "latin1"));
    await t.throwsAsync(loadNnunet(dir, { folds: [0] }), { message: /global "os\.system".*refused \(nothing in it was run\)/ });
    // the advanced post-processing
    cpSync(join(FOLDER, "fold_0"), join(dir, "fold_0"), { recursive: true });
    writeFileSync(join(dir, "postprocessing.json"), JSON.stringify({ for_which_classes: [2], min_valid_object_sizes: "{2: 10.5}" }));
    await t.throwsAsync(loadNnunet(dir, { folds: [0] }), { message: /min_valid_object_sizes .* is not built/ });
    writeFileSync(join(dir, "postprocessing.json"), JSON.stringify({ for_which_classes: [7], min_valid_object_sizes: "None" }));
    await t.throwsAsync(loadNnunet(dir, { folds: [0] }), { message: /for_which_classes\[0\] is 7, not a label of the model/ });
    // the stage is the .model.pkl's init[5]: stage 0 (this task's 3d_lowres) is another network
    // than the checkpoint's, whose plans stage is 1
    const fresh = readFileSync(join(FOLDER, "fold_0", "model_final_checkpoint.model.pkl"));
    const at = fresh.indexOf(Buffer.from([0x88, 0x4b, 0x01, 0x88, 0x89, 0x88]));
    t.true(at > 0);
    const stage0 = Buffer.from(fresh);
    stage0[at + 2] = 0;
    writeFileSync(pkl, stage0);
    await t.throwsAsync(loadNnunet(dir, { folds: [0], postprocessing: false }), {
      message: /state_dict\["tu\.0\.weight"\] has shape \[32, 16, 2, 2, 2\]; the plans' Generic_UNet needs \[16, 8, 2, 2, 2\]/,
    });
    writeFileSync(pkl, fresh);
    await t.throwsAsync(loadNnunet(dir, { folds: [0, 0], postprocessing: false }), { instanceOf: TypeError, message: /distinct folds/ });
    // a missing fold
    await t.throwsAsync(loadNnunet(dir, { folds: [3], postprocessing: false }), {
      message: /fold_3\/model_final_checkpoint\.model does not exist/,
    });
    await t.throwsAsync(loadNnunet(FOLDER, { trainer: "nnUNetTrainer" as "nnUNetTrainerV2" }), {
      instanceOf: TypeError,
      message: /options\.trainer/,
    });
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test.serial("bhsd info and bhsd segment --nnunet take a v1 folder: the labels of v1's predictor and post-processing", async (t) => {
  const dir = mkdtempSync(join(tmpdir(), "bhsd-v1-cli-"));
  try {
    const info = bhsdSync(["info", FOLDER, "--json"], 60_000);
    t.is(info.status, 0, info.stderr);
    const i = JSON.parse(info.stdout);
    t.is(i.nnunetVersion, 1);
    t.is(i.network.class, "Generic_UNet");
    t.is(i.config.aggregate, "probabilities");
    const text = bhsdSync(["info", FOLDER], 60_000);
    t.regex(text.stdout, /nnU-Net v1 3d_fullres, nnUNetTrainerV2, folds 0, 1\n {2}Generic_UNet \(3-D\), 4 stages of 4-8-16-32 features/);
    const [ct, want, margin] = await Promise.all(["e2e_ct", "e2e_folds01_postprocessed", "e2e_folds01_margin"].map(npy));
    // (numpy's (z, y, x) as NIfTI's (x, y, z): volumeFromArray's affine, written and read back)
    const vol = volumeFromArray(ct!.data as Float32Array, ct!.shape, [5, 0.45, 0.45]);
    await writeNifti(join(dir, "ct.nii.gz"), vol);
    const r = bhsdSync(["segment", join(dir, "ct.nii.gz"), "--nnunet", FOLDER, "--out", join(dir, "labels.nii.gz"), "--quiet"], 180_000);
    t.is(r.status, 0, r.stderr);
    const got = Uint8Array.from((await readNifti(join(dir, "labels.nii.gz"))).data);
    t.is(compare(got, want!.data as Uint8Array, margin!.data as Float32Array).differ, 0);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("fuzz: 60 mutated .model.pkl files (the plans v1 loads) load or are refused with an Error naming the file, each within seconds", async (t) => {
  const original = readFileSync(join(FOLDER, "fold_0", "model_final_checkpoint.model.pkl"));
  const dir = mkdtempSync(join(tmpdir(), "bhsd-v1-fuzz-"));
  try {
    cpSync(FOLDER, dir, { recursive: true });
    const pkl = join(dir, "fold_0", "model_final_checkpoint.model.pkl");
    let seed = 20261206,
      loaded = 0,
      refused = 0;
    const rnd = () => (seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31;
    for (let it = 0; it < 60; it++) {
      const c = Buffer.from(original);
      for (let k = 0, n = 1 + Math.floor(rnd() * 4); k < n; k++) c[Math.floor(rnd() * c.length)] = Math.floor(rnd() * 256);
      writeFileSync(pkl, c);
      const t0 = performance.now();
      try {
        (await loadNnunet(dir, { folds: [0], postprocessing: false })).dispose();
        loaded++;
      } catch (e) {
        // a programming error (a property of undefined …) would be a TypeError without the file's name
        if (e instanceof TypeError || !(e instanceof Error) || !/model_final_checkpoint|fold_0/.test(e.message))
          t.fail(`mutation ${it}: ${(e as Error).constructor?.name}: ${(e as Error).message}`);
        refused++;
      }
      t.true(performance.now() - t0 < 10_000, `mutation ${it} took ${performance.now() - t0} ms`);
    }
    t.log(`${loaded} loaded, ${refused} refused`);
    t.true(refused > 10, "most random changes to the pickle break it");
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

const CASCADE_V1 = join(DIR, "nnUNet", "3d_cascade_fullres", "Task501_PhantomICH", "nnUNetTrainerV2CascadeFullRes__nnUNetPlansv2.1");
const LOWRES_V1 = join(DIR, "nnUNet", "3d_lowres", "Task501_PhantomICH", "nnUNetTrainerV2__nnUNetPlansv2.1");

for (const { name: backend } of backends)
  test.serial(`${backend}: a v1 cascade (nnUNetTrainerV2CascadeFullRes) gives v1's labels of both stages`, async (t) => {
    setBackend(backend);
    const [ct, low, lowMargin, want, margin] = await Promise.all(
      ["e2e_ct", "cascade_lowres_labels", "cascade_lowres_margin", "cascade_labels", "cascade_margin"].map(npy),
    );
    const vol = volumeFromArray(ct!.data as Float32Array, ct!.shape, [5, 0.45, 0.45]);
    const m = await loadNnunet(CASCADE_V1);
    try {
      t.is(m.configuration, "3d_cascade_fullres");
      t.is(m.architecture.inputChannels, 6);
      t.is(m.previousStage?.configuration, "3d_lowres");
      // the first stage as nnUNet_predict leaves it: its folder's post-processing applied
      const first = await segment(vol, m.previousStage!);
      t.is(compare(first.labels.data, low!.data as Uint8Array, lowMargin!.data as Float32Array).differ, 0);
      const { labels } = await segment(vol, m, { cleanup: false });
      const { compared, differ } = compare(labels.data, want!.data as Uint8Array, margin!.data as Float32Array);
      t.true(compared > 0.99 * labels.data.length, `${compared} compared`);
      t.is(differ, 0);
    } finally {
      m.dispose();
    }
  });

test("a v1 cascade without its 3d_lowres sibling names what it needs; previousStage as a folder works", async (t) => {
  const dir = mkdtempSync(join(tmpdir(), "bhsd-v1-cascade-"));
  try {
    const alone = join(dir, "nnUNetTrainerV2CascadeFullRes__nnUNetPlansv2.1");
    cpSync(CASCADE_V1, alone, { recursive: true });
    await t.throwsAsync(loadNnunet(alone), {
      message: /its first stage \(3d_lowres\) was not found at .*3d_lowres.*nnUNetTrainerV2__nnUNetPlansv2\.1/,
    });
    const m = await loadNnunet(alone, { previousStage: LOWRES_V1 });
    t.is(m.previousStage?.trainerName, "nnUNetTrainerV2");
    m.dispose();
    await t.throwsAsync(loadNnunet(alone, { previousStage: FOLDER }), { message: /not the cascade's first stage "3d_lowres"/ });
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
