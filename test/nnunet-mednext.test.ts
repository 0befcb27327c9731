/**
 * MedNeXt trained by MIC-DKFZ's nnU-Net v1 fork (nnunet_mednext): trainer folders whose network is
 * MedNextV1's, read from the weights, against the fork's own code run by
 * test/fixtures/nnunet-mednext/make.py: one forward of each network, and the whole v1 pipeline's
 * labels for two folds, mirrored.
 */
import test from "ava";
import { cpSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { loadNnunet, readNpy, segment, setBackend, volumeFromArray } from "../lib/index.js";
import { checkedFolder } from "./paths.js";
import { backendsUnderTest, bhsdSync, ROOT } from "./helpers.js";
import { labelsMatch, logitsWithin } from "./ort.js";

const DIR = join(ROOT, "test", "fixtures", "nnunet-mednext");
const TASK = join(DIR, "nnUNet", "3d_fullres", "Task501_PhantomICH");
const B = join(TASK, "nnUNetTrainerV2_MedNeXt_B_kernel3_tiny__nnUNetPlansv2.1_trgSp_1x1x1");
const GRN = join(TASK, "nnUNetTrainerV2_MedNeXt_S_kernel5_grn__nnUNetPlansv2.1_trgSp_1x1x1");
const backends = backendsUnderTest();
const { bytes: fixture, listed } = checkedFolder(DIR);
const npy = (name: string) => readNpy(fixture(`${name}.npy`));

test("the fixture folders' files are the ones make.py wrote", (t) => {
  // (every file SHA256SUMS lists, checked byte for byte)
  t.true(listed.length >= 14);
  for (const f of listed) t.truthy(fixture(f), f);
});

test("loadNnunet reads a MedNeXt trainer's v1 folder: MedNextV1 from the weights, v1's pipeline", async (t) => {
  const m = await loadNnunet(B);
  try {
    t.deepEqual(m.folds, [0, 1]);
    t.is(m.version, 1);
    t.is(m.trainerName, "nnUNetTrainerV2_MedNeXt_B_kernel3_tiny");
    const a = m.architecture;
    if (a.networkClass !== "MedNeXt") return t.fail(a.networkClass);
    t.is(a.filters, 4);
    t.deepEqual(a.blocks, [1, 2, 1, 1, 1, 1, 1, 2, 1]);
    t.deepEqual(a.kernels, { encoder: 3, decoder: 3 });
    t.false(a.grn);
    t.true(a.resampleResidual);
    // exp_r [2, 3, 4, 4, 4, 4, 4, 3, 2]: down_i takes level i + 1's ratio, up_i level (8 - i)'s
    t.deepEqual(
      a.layout.down.map((s) => s.ratio),
      [3, 4, 4, 4],
    );
    t.deepEqual(
      a.layout.up.map((s) => s.ratio),
      [4, 4, 3, 2],
    );
    t.is(m.ensemble, "softmax");
    t.deepEqual(m.config.patchSize, [16, 32, 32]);
    t.is(m.config.aggregate, "probabilities");
    t.true(m.config.normalizeAfterResampling);
    const g = await loadNnunet(GRN);
    try {
      const ga = g.architecture;
      if (ga.networkClass !== "MedNeXt") return t.fail(ga.networkClass);
      t.true(ga.grn);
      t.false(ga.resampleResidual);
      t.deepEqual(ga.kernels, { encoder: 5, decoder: 5 });
      // MedNextV1 makes down_0 without global response norm
      t.deepEqual(
        ga.layout.down.map((s) => s.grn),
        [false, true, true, true],
      );
    } finally {
      g.dispose();
    }
  } finally {
    m.dispose();
  }
});

for (const { name: backend } of backends) {
  for (const [tag, folder] of [
    ["b", B],
    ["grn", GRN],
  ] as const)
    test.serial(`${backend}: a MedNeXt fold's logits equal the fork's MedNeXt in PyTorch (${tag})`, async (t) => {
      setBackend(backend);
      const m = await loadNnunet(folder, { folds: [0] });
      try {
        const [x, want] = await Promise.all(["forward_input", `forward_${tag}_logits`].map(npy));
        await logitsWithin(t, m, x!, want!, 1e-5);
      } finally {
        m.dispose();
      }
    });

  test.serial(`${backend}: segment with a MedNeXt v1 folder gives the fork's labels (2 folds, mirrored)`, async (t) => {
    setBackend(backend);
    const [ct, want, margin] = await Promise.all(["e2e_ct", "e2e_labels", "e2e_margin"].map(npy));
    const vol = volumeFromArray(ct!.data as Float32Array, ct!.shape, [5, 0.45, 0.45]);
    const m = await loadNnunet(B);
    try {
      const { labels, report } = await segment(vol, m, { mirror: true, cleanup: false });
      t.deepEqual(report.modelGrid.dims, [19, 33, 33]);
      labelsMatch(t, labels.data, want!.data, margin!.data);
    } finally {
      m.dispose();
    }
  });
}

test("MedNeXt v1 folders: refusals name the file and what is wrong", async (t) => {
  const dir = mkdtempSync(join(tmpdir(), "bhsd-mednext-"));
  try {
    cpSync(B, dir, { recursive: true });
    const pkl = join(dir, "fold_0", "model_final_checkpoint.model.pkl");
    const fresh = readFileSync(pkl);
    const setTrainer = (name: string) => {
      const old = "nnUNetTrainerV2_MedNeXt_B_kernel3_tiny";
      const i = fresh.indexOf(Buffer.from(`${old}\x94`, "latin1"));
      t.true(i > 0);
      const b = Buffer.concat([fresh.subarray(0, i), Buffer.from(name), fresh.subarray(i + old.length)]);
      // (the pickle's SHORT_BINUNICODE length byte before the name)
      b[i - 1] = name.length;
      writeFileSync(pkl, b);
    };
    // a MedNeXt network under a trainer name bhsd does not know: refused, loadable when the caller names the network
    setTrainer("MyMedNeXtTrainer");
    await t.throwsAsync(loadNnunet(dir, { folds: [0] }), { message: /trainer MyMedNeXtTrainer .*trainer: "nnUNetTrainerV2_MedNeXt"/ });
    const m = await loadNnunet(dir, { folds: [0], trainer: "nnUNetTrainerV2_MedNeXt" });
    t.is(m.architecture.networkClass, "MedNeXt");
    m.dispose();
    // ... and as Generic_UNet it is not
    await t.throwsAsync(loadNnunet(dir, { folds: [0], trainer: "nnUNetTrainerV2" }), {
      message: /state_dict do not match the Generic_UNet .* missing conv_blocks_context\.0\.blocks\.0\.conv\.weight/,
    });
    // a Generic_UNet checkpoint under a MedNeXt trainer's name
    writeFileSync(pkl, fresh);
    cpSync(
      join(
        ROOT,
        "test",
        "fixtures",
        "nnunet-v1",
        "nnUNet",
        "3d_fullres",
        "Task501_PhantomICH",
        "nnUNetTrainerV2__nnUNetPlansv2.1",
        "fold_0",
        "model_final_checkpoint.model",
      ),
      join(dir, "fold_0", "model_final_checkpoint.model"),
    );
    await t.throwsAsync(loadNnunet(dir, { folds: [0] }), {
      message: /fold_0\/model_final_checkpoint\.model: the trainer .*builds MedNeXt .* not MedNextV1's/,
    });
    cpSync(join(B, "fold_0"), join(dir, "fold_0"), { recursive: true });
    // a patch MedNeXt's four halvings cannot run: the plans' patch_size [16, 32, 32] → [16, 24, 32]
    const plansPkl = readFileSync(join(dir, "fold_0", "model_final_checkpoint.model.pkl"));
    const patch = Buffer.from([16, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0, 0, 0, 0, 0, 0]);
    const at = plansPkl.indexOf(patch);
    t.true(at > 0, "the patch's int64 bytes");
    const bad = Buffer.from(plansPkl);
    bad[at + 8] = 24;
    writeFileSync(pkl, bad);
    await t.throwsAsync(loadNnunet(dir, { folds: [0] }), { message: /patch \[16, 24, 32\] is not a multiple of 16 on every axis/ });
    writeFileSync(pkl, fresh);
    // options.trainer does not turn v1's cascade into another network
    const cascade = join(
      ROOT,
      "test",
      "fixtures",
      "nnunet-v1",
      "nnUNet",
      "3d_cascade_fullres",
      "Task501_PhantomICH",
      "nnUNetTrainerV2CascadeFullRes__nnUNetPlansv2.1",
    );
    await t.throwsAsync(loadNnunet(cascade, { trainer: "nnUNetTrainerV2_MedNeXt" }), { message: /options\.trainer .* is v1's cascade/ });
    await t.throwsAsync(loadNnunet(dir, { trainer: "nnUNetTrainerV3" as "nnUNetTrainerV2" }), {
      instanceOf: TypeError,
      message: /options\.trainer/,
    });
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test.serial("bhsd info describes a MedNeXt v1 folder", (t) => {
  const info = bhsdSync(["info", GRN, "--json"], 60_000);
  t.is(info.status, 0, info.stderr);
  const i = JSON.parse(info.stdout);
  t.is(i.nnunetVersion, 1);
  t.is(i.network.class, "MedNeXt");
  t.deepEqual(i.network.blocks, [1, 1, 1, 1, 2, 1, 1, 1, 1]);
  t.true(i.network.grn);
  const text = bhsdSync(["info", GRN], 60_000);
  t.is(text.status, 0, text.stderr);
  t.regex(
    text.stdout,
    /MedNeXt \(3-D, nnunet_mednext's MedNextV1\): 3 channels, blocks 1-1-1-1-2-1-1-1-1, kernels 5 \(encoder\) and 5, global response norm/,
  );
});
