/**
 * STU-Net (uni-medical/STU-Net) trained by its nnU-Net trainers, v1 (nnUNet-1.7.1's STUNetTrainer…)
 * and v2 (nnUNet-2.2's): folders whose network is STUNet, read from the weights and the plans'
 * poolings, against STU-Net's own classes and v1's predictor, run by
 * test/fixtures/nnunet-stunet/make.py.
 */
import test from "ava";
import { cpSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { loadNnunet, readNpy, segment, setBackend, volumeFromArray } from "../lib/index.js";
import { checkedFolder } from "./paths.js";
import { backendsUnderTest, bhsdSync, ROOT } from "./helpers.js";
import { labelsMatch, logitsWithin, scaleDiff } from "./ort.js";

const DIR = join(ROOT, "test", "fixtures", "nnunet-stunet");
const V1 = join(DIR, "nnUNet", "3d_fullres", "Task501_PhantomICH", "STUNetTrainer_tiny__nnUNetPlansv2.1");
const V2 = join(DIR, "Dataset501_PhantomICH", "STUNetTrainer_tiny__nnUNetPlans__3d_fullres");
const backends = backendsUnderTest();
const { bytes: fixture, listed } = checkedFolder(DIR);
const npy = (name: string) => readNpy(fixture(`${name}.npy`));

test("the fixture folders' files are the ones make.py wrote", (t) => {
  t.true(listed.length >= 12);
  for (const f of listed) t.truthy(fixture(f), f);
});

test("loadNnunet reads STU-Net's v1 and v2 folders: widths and depths from the weights, the plans' first five poolings", async (t) => {
  const m1 = await loadNnunet(V1);
  const m2 = await loadNnunet(V2);
  try {
    const a = m1.architecture,
      b = m2.architecture;
    if (a.networkClass !== "STUNet" || b.networkClass !== "STUNet") return t.fail(`${a.networkClass}, ${b.networkClass}`);
    t.is(m1.version, 1);
    t.is(m2.version, 2);
    t.deepEqual(a.features, [4, 8, 12, 16, 16, 16]);
    t.deepEqual(a.depth, [1, 2, 1, 1, 1, 1]);
    // v1: the plans' six poolings, the first five taken
    t.deepEqual(a.strides, [
      [1, 2, 2],
      [1, 2, 2],
      [2, 2, 2],
      [2, 2, 2],
      [1, 2, 2],
    ]);
    t.deepEqual(b.depth, [2, 1, 1, 1, 1, 2]);
    // v2: arch_kwargs.strides after its leading [1, 1, 1], padded with ones to five
    t.deepEqual(b.strides, [
      [1, 2, 2],
      [1, 2, 2],
      [1, 2, 2],
      [2, 2, 2],
      [1, 1, 1],
    ]);
    t.is(m1.config.aggregate, "probabilities");
    t.is(m2.config.aggregate, "logits");
  } finally {
    m1.dispose();
    m2.dispose();
  }
});

for (const { name: backend } of backends) {
  for (const [tag, folder] of [
    ["v1", V1],
    ["v2", V2],
  ] as const)
    test.serial(`${backend}: a STU-Net fold's logits equal STU-Net's own class in PyTorch (${tag})`, async (t) => {
      setBackend(backend);
      const m = await loadNnunet(folder, { folds: [0] });
      try {
        const [x, want] = await Promise.all(["forward_input", `forward_${tag}_logits`].map(npy));
        // (native may run its 3×3×3 convolutions as Winograd F(2×4×4), whose rounding is 5e-6–1.3e-5
        // of scale a layer: the 1e-4 the suite holds Winograd to)
        await logitsWithin(t, m, x!, want!, 1e-4);
      } finally {
        m.dispose();
      }
    });

  test.serial(`${backend}: segment with STU-Net's v1 folder gives nnU-Net v1's labels (mirrored)`, async (t) => {
    setBackend(backend);
    const [ct, want, margin] = await Promise.all(["e2e_ct", "e2e_labels", "e2e_margin"].map(npy));
    const vol = volumeFromArray(ct!.data as Float32Array, ct!.shape, [5, 0.45, 0.45]);
    const m = await loadNnunet(V1);
    try {
      const { labels, report } = await segment(vol, m, { mirror: true, cleanup: false });
      t.deepEqual(report.modelGrid.dims, [19, 33, 33]);
      labelsMatch(t, labels.data, want!.data, margin!.data);
    } finally {
      m.dispose();
    }
  });
}

test("STU-Net folders: refusals name the file and what is wrong", async (t) => {
  const dir = mkdtempSync(join(tmpdir(), "bhsd-stunet-"));
  try {
    cpSync(V1, dir, { recursive: true });
    const pkl = join(dir, "fold_0", "model_final_checkpoint.model.pkl");
    const fresh = readFileSync(pkl);
    const old = "STUNetTrainer_tiny";
    const i = fresh.indexOf(Buffer.from(`${old}\x94`, "latin1"));
    t.true(i > 0);
    const renamed = Buffer.concat([fresh.subarray(0, i), Buffer.from("MyTrainer"), fresh.subarray(i + old.length)]);
    // (the pickle's SHORT_BINUNICODE length byte before the name)
    renamed[i - 1] = "MyTrainer".length;
    writeFileSync(pkl, renamed);
    await t.throwsAsync(loadNnunet(dir), { message: /trainer MyTrainer .*trainer: "STUNetTrainer"/ });
    const m = await loadNnunet(dir, { trainer: "STUNetTrainer" });
    t.is(m.architecture.networkClass, "STUNet");
    m.dispose();
    // a patch the strides do not divide: [16, 64, 64] → [16, 48, 64] (the first five poolings' product is [4, 32, 32])
    const patch = Buffer.from([16, 0, 0, 0, 0, 0, 0, 0, 64, 0, 0, 0, 0, 0, 0, 0, 64, 0, 0, 0, 0, 0, 0, 0]);
    const at = fresh.indexOf(patch);
    t.true(at > 0, "the patch's int64 bytes");
    const bad = Buffer.from(fresh);
    bad[at + 8] = 48;
    writeFileSync(pkl, bad);
    await t.throwsAsync(loadNnunet(dir), { message: /patch \[16, 48, 64\] is not a multiple of STU-Net's strides' product \[4, 32, 32\]/ });
    // a MedNeXt or Generic_UNet checkpoint under STU-Net's trainer
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
    await t.throwsAsync(loadNnunet(dir), { message: /builds STU-Net, but the state_dict is not STUNet's/ });
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test.serial("bhsd info describes STU-Net's folders", (t) => {
  const info = bhsdSync(["info", V2, "--json"], 60_000);
  t.is(info.status, 0, info.stderr);
  const i = JSON.parse(info.stdout);
  t.is(i.nnunetVersion, 2);
  t.is(i.network.class, "STUNet");
  t.deepEqual(i.network.depth, [2, 1, 1, 1, 1, 2]);
  const text = bhsdSync(["info", V1], 60_000);
  t.is(text.status, 0, text.stderr);
  t.regex(
    text.stdout,
    /STU-Net \(3-D\): 6 stages of 4-8-12-16-16-16 features, 1-2-1-1-1-1 residual blocks, poolings 1×2×2, 1×2×2, 2×2×2, 2×2×2, 1×2×2/,
  );
});

test.serial(
  "STU-Net v1 with four poolings (the .pkl's plans padded to five by the trainer) and v2 with nnUNet-2.2's plans format",
  async (t) => {
    setBackend(backends[0]!.name);
    const logitsOf = async (folder: string, input: string, want: string) => {
      const m = await loadNnunet(folder, { folds: [0] });
      try {
        const [x, w] = await Promise.all([input, want].map(npy));
        const y = await m.run({ data: x!.data as Float32Array, shape: x!.shape });
        t.deepEqual(y.shape, w!.shape);
        const d = scaleDiff(y.data, w!.data as Float32Array);
        t.true(d < 1e-4, `${d} of scale`);
        return m.architecture;
      } finally {
        m.dispose();
      }
    };
    const a = await logitsOf(
      join(DIR, "nnUNet", "3d_fullres", "Task501_PhantomICH", "STUNetTrainer_tiny4__nnUNetPlansv2.1"),
      "forward4_input",
      "forward4_logits",
    );
    if (a.networkClass !== "STUNet") return t.fail(a.networkClass);
    t.deepEqual(a.strides[4], [1, 1, 1]);
    // nnUNet-2.2 wrote plans without `architecture`: pool_op_kernel_sizes (with its leading [1, 1, 1]) and the UNet_* keys
    const dir = mkdtempSync(join(tmpdir(), "bhsd-stunet22-"));
    try {
      cpSync(V2, dir, { recursive: true });
      const plans = JSON.parse(readFileSync(join(dir, "plans.json"), "utf8"));
      const conf = plans.configurations["3d_fullres"];
      const ak = conf.architecture.arch_kwargs;
      delete conf.architecture;
      Object.assign(conf, {
        UNet_class_name: "PlainConvUNet",
        UNet_base_num_features: 32,
        unet_max_num_features: 320,
        n_conv_per_stage_encoder: ak.n_conv_per_stage,
        n_conv_per_stage_decoder: ak.n_conv_per_stage_decoder,
        conv_kernel_sizes: ak.kernel_sizes,
        pool_op_kernel_sizes: ak.strides,
      });
      writeFileSync(join(dir, "plans.json"), JSON.stringify(plans));
      const b = await logitsOf(dir, "forward_input", "forward_v2_logits");
      if (b.networkClass !== "STUNet") return t.fail(b.networkClass);
      t.deepEqual(b.strides, [
        [1, 2, 2],
        [1, 2, 2],
        [1, 2, 2],
        [2, 2, 2],
        [1, 1, 1],
      ]);
      // a pooling of the wrong rank, named with its index in the plans' own list
      conf.pool_op_kernel_sizes[2] = [2, 2];
      writeFileSync(join(dir, "plans.json"), JSON.stringify(plans));
      await t.throwsAsync(loadNnunet(dir), { message: /the plans' pool_op_kernel_sizes\[2\] must be three integers/ });
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  },
);
