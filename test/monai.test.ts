/**
 * MONAI networks from their PyTorch weights (loadMonai): UNet (residual units or plain, batch norm,
 * 2-D), SegResNet, DynUNet (residual blocks, deep-supervision heads in the state_dict),
 * BasicUNet, SwinUNETR and UNETR, each against MONAI 1.4.0's own module's output on the same input
 * (test/fixtures/monai/make.py); checkpoints as saved by torch.save — a state_dict, a
 * `{"state_dict": …}` wrapper, DataParallel's `module.` keys.
 */
import test from "ava";
import { cpSync, mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { parse as parseYaml } from "yaml";
import { join } from "node:path";
import { createServer, loadMonai, monaiInfo, readNifti, readNpy, segment, setBackend } from "../lib/index.js";
import { modelHash, modelPath } from "../lib/queue/common.js";
import { buildMonaiNetwork } from "../lib/model/monai/networks.js";
import { checkedFolder } from "./paths.js";
import { backendsUnderTest, bhsdSync, ROOT } from "./helpers.js";
import { compareLabels as compare, scaleDiff } from "./ort.js";

const DIR = join(ROOT, "test", "fixtures", "monai");
const { file: fixture, bytes } = checkedFolder(DIR);
const manifest = JSON.parse(readFileSync(join(DIR, "manifest.json"), "utf8")) as {
  networks: Record<string, { network_def: Record<string, unknown>; input_shape: number[]; output_shape: number[]; saved_as: string }>;
};
const backends = backendsUnderTest();

for (const [name, m] of Object.entries(manifest.networks)) {
  test.serial(`${name} (${String(m.network_def._target_)}, saved as ${m.saved_as}) equals MONAI's module on every backend`, async (t) => {
    const x = await readNpy(bytes(`${name}_input.npy`));
    const want = await readNpy(bytes(`${name}_expected.npy`));
    const spatial = m.input_shape.slice(2);
    const model = await loadMonai(fixture(`${name}.pt`), { network: m.network_def, config: { patchSize: spatial as never } });
    t.is(monaiInfo(model)?.networkClass, String(m.network_def._target_).split(".").pop());
    t.is(model.config.spatialDims, spatial.length as 2 | 3);
    for (const { name: backend } of backends) {
      setBackend(backend);
      const y = await model.run({ data: x.data as Float32Array, shape: [...x.shape] });
      t.deepEqual(y.shape, m.output_shape, backend);
      const d = scaleDiff(y.data, want.data as Float32Array);
      t.true(d <= 1e-4, `${name} on ${backend}: max |difference| ${d} of max |PyTorch|`);
      t.log(`${backend}: ${d.toExponential(2)} of scale`);
      // the transformers' attention runs as one fused node where the backend has the kernel
      // (native), else as the nodes it replaced: both are held to MONAI's output above
      if (/SwinUNETR|UNETR/.test(String(m.network_def._target_))) {
        const fused = model.lastRun!.opMs["bhsd.SelfAttention"] !== undefined;
        t.is(fused, backend === "native", `${name} on ${backend}: attention fused ${fused}`);
        if (!fused) t.truthy(model.lastRun!.opMs.Softmax, `${name} on ${backend}: the attention ran as its nodes`);
      }
    }
  });
}

// MedNeXt's aliases (create_mednext's variants): the keys and shapes MONAI 1.5's own modules hold
// (mednext_variants.json, make.py), each one the builder expects or reads past (deep supervision)
test("MedNeXtS, B, M and L build the state_dict MONAI's aliases make, key for key and shape for shape", (t) => {
  const variants = JSON.parse(new TextDecoder().decode(bytes("mednext_variants.json"))) as Record<
    string,
    { network_def: Record<string, unknown>; state_dict: Record<string, number[]> }
  >;
  t.is(Object.keys(variants).length, 8);
  for (const [name, v] of Object.entries(variants)) {
    const net = buildMonaiNetwork(v.network_def, name);
    t.is(net.networkClass, "MedNeXt");
    const got = new Map<string, number[]>(net.params.map((p) => [p.names[0]!, p.shape]));
    const want = Object.entries(v.state_dict);
    t.is(got.size + net.unused.length, want.length, `${name}: ${got.size} parameters + ${net.unused.length} read past`);
    for (const [key, shape] of want) {
      if (net.unused.includes(key)) continue;
      t.deepEqual(got.get(key), shape, `${name}: ${key}`);
    }
  }
  // arguments create_mednext does not take are refused by name
  t.throws(() => buildMonaiNetwork({ _target_: "MedNeXtS", blocks_down: [1, 1] }, "def"), {
    message: /MedNeXtS has no argument "blocks_down"/,
  });
  t.throws(() => buildMonaiNetwork({ _target_: "MedNeXt", norm_type: "layer" }, "def"), { message: /norm_type "layer"/ });
  t.throws(() => buildMonaiNetwork({ _target_: "MedNeXt", blocks_up: [2, 2, 2] }, "def"), {
    message: /blocks_up must have as many entries/,
  });
  t.throws(() => buildMonaiNetwork({ _target_: "MedNeXt", kernel_size: 4 }, "def"), { message: /kernel_size must be odd/ });
  t.throws(() => buildMonaiNetwork({ _target_: "MedNeXt", blocks_down: [5000], blocks_up: [1] }, "def"), {
    message: /5003 blocks: at most 4096/,
  });
});

const BUNDLES = join(DIR, "bundles");

/** The swinunetr_bundle's folder: its configs, and the swinunetr network's weights as its models/model.pt (make_bundles.py's WEIGHTS_FROM). */
function swinBundle(): string {
  const dir = mkdtempSync(join(tmpdir(), "bhsd-monai-swin-"));
  cpSync(join(BUNDLES, "swinunetr_bundle", "configs"), join(dir, "configs"), { recursive: true });
  mkdirSync(join(dir, "models"));
  cpSync(fixture("swinunetr.pt"), join(dir, "models", "model.pt"));
  return dir;
}

for (const name of ["unet_bundle", "segresnet_bundle", "swinunetr_bundle"]) {
  test.serial(`the ${name} folder segments the CT as MONAI's own pipeline does (Orientation, Spacing, windows, Invert)`, async (t) => {
    const swin = name === "swinunetr_bundle";
    if (!swin) fixture(`bundles/${name}/models/model.pt`);
    const ct = await readNifti(fixture("bundles/ct.nii.gz"));
    const want = await readNpy(bytes(`bundles/${name}_labels.npy`));
    const margin = await readNpy(bytes(`bundles/${name}_margin.npy`));
    const dir = swin ? swinBundle() : join(BUNDLES, name);
    t.teardown(() => swin && rmSync(dir, { recursive: true, force: true }));
    const model = await loadMonai(dir);
    t.log(monaiInfo(model)?.bundle?.pipeline.join("\n"));
    for (const { name: backend } of backends) {
      setBackend(backend);
      const { labels, report } = await segment(ct, model);
      t.deepEqual(labels.dims, ct.dims);
      const { compared, differ } = compare(labels.data, want.data as Uint8Array, margin.data as Float32Array);
      t.log(backend, report.modelGrid, report.windows, compared, differ);
      t.is(differ, 0, `${backend}: ${differ} of ${compared} voxels differ from MONAI's where its top two are apart`);
    }
    // an array of one model is that model; with another model, reorientation is refused
    const one = await segment(ct, [model]);
    t.is(compare(one.labels.data, want.data as Uint8Array, margin.data as Float32Array).differ, 0);
    await t.throwsAsync(segment(ct, [model, model]), { message: /config\.orientation/ });
  });
}

/** A copy of a bundle (the UNet one by default) with its config replaced by `edit` of the original, as `file`. */
function bundleWith(
  edit: (cfg: Record<string, unknown>) => Record<string, unknown> | string,
  file = "inference.json",
  name = "unet_bundle",
): string {
  const dir = mkdtempSync(join(tmpdir(), "bhsd-monai-"));
  mkdirSync(join(dir, "configs"));
  mkdirSync(join(dir, "models"));
  cpSync(fixture(`bundles/${name}/models/model.pt`), join(dir, "models", "model.pt"));
  const src = join(BUNDLES, name, "configs", name === "unet_bundle" ? "inference.json" : "inference.yaml");
  const cfg = parseYaml(readFileSync(src, "utf8")) as Record<string, unknown>;
  const out = edit(cfg);
  writeFileSync(join(dir, "configs", file), typeof out === "string" ? out : JSON.stringify(out));
  return dir;
}

test("a bundle's config is data: references and macros resolve, expressions and hostile configs are refused in bounded time", async (t) => {
  const dirs: string[] = [];
  const refused = async (edit: Parameters<typeof bundleWith>[0], message: RegExp, file?: string) => {
    const d = bundleWith(edit, file);
    dirs.push(d);
    const t0 = Date.now();
    await t.throwsAsync(loadMonai(d), { message }, message.source);
    t.true(Date.now() - t0 < 5000, `${message.source}: ${Date.now() - t0} ms`);
  };
  try {
    // a macro from another file of the bundle, and the older `#` separator, resolve as MONAI's parser does
    const d = bundleWith((c) => ({ ...c, network_def: "%configs/common.json#nets#unet" }));
    dirs.push(d);
    const def = JSON.parse(readFileSync(join(BUNDLES, "unet_bundle", "configs", "inference.json"), "utf8")).network_def;
    writeFileSync(join(d, "configs", "common.json"), JSON.stringify({ nets: { unet: { ...def, out_channels: 6 } } }));
    const m = await loadMonai(d);
    t.is(monaiInfo(m)?.networkClass, "UNet");
    t.is(monaiInfo(m)?.args.out_channels, 6);
    await refused((c) => ({ ...c, network_def: "@loop", loop: "@network_def" }), /refers back to itself/);
    // references that expand a little config into billions of values
    await refused((c) => {
      const out: Record<string, unknown> = { ...c, a0: Array(10).fill(1) };
      for (let i = 1; i < 12; i++) out[`a${i}`] = Array(10).fill(`@a${i - 1}`);
      return { ...out, network_def: { ...(c.network_def as object), channels: "@a11" } };
    }, /expand to more than 100000 values/);
    await refused((c) => ({ ...c, network_def: "%../../../../etc/passwd::x" }), /only a JSON or YAML file inside the bundle/);
    // references whose ids walk deep lists, many times over
    await refused((c) => {
      let deep: unknown = 1;
      for (let i = 0; i < 30; i++) deep = [deep];
      const id = "@deep" + "::0".repeat(30);
      return { ...c, deep, a: Array(4096).fill(id), b: Array(4096).fill("@a"), network_def: "@b" };
    }, /expand to more than 100000 values/);
    await refused((c) => ({ ...c, network_def: "@" + "x".repeat(300) }), /longer than 256 characters or 32 keys/);
    const linked = bundleWith((c) => ({ ...c, network_def: "%configs/outside.json::x" }));
    dirs.push(linked);
    const outside = mkdtempSync(join(tmpdir(), "bhsd-monai-outside-"));
    dirs.push(outside);
    writeFileSync(join(outside, "secret.json"), JSON.stringify({ x: { _target_: "UNet" } }));
    symlinkSync(join(outside, "secret.json"), join(linked, "configs", "outside.json"));
    await t.throwsAsync(loadMonai(linked), { message: /leads out of the bundle/ });
    await refused(
      (c) => ({ ...c, network_def: { ...(c.network_def as object), out_channels: "$@num_classes + 1" } }),
      /out_channels is "\$@num_classes \+ 1", a reference or expression bhsd does not evaluate/,
    );
    await refused(
      (c) => ({ ...c, network_def: { ...(c.network_def as object), _target_: "DiNTS" } }),
      /bhsd builds MONAI's UNet, AttentionUnet, SegResNet, SegResNetVAE, SegResNetDS, DynUNet, BasicUNet, SwinUNETR, UNETR/,
    );
    await refused(
      (c) => ({ ...c, network_def: { _target_: "SegResNetVAE", in_channels: 1, out_channels: 6 } }),
      /SegResNetVAE needs the argument "input_image_size"/,
    );
    await refused((c) => ({ ...c, network_def: { ...(c.network_def as object), kernal_size: 3 } }), /UNet has no argument "kernal_size"/);
    await refused((c) => {
      const pre = c.preprocessing as { transforms: unknown[] };
      return {
        ...c,
        preprocessing: {
          ...pre,
          transforms: [...pre.transforms.slice(0, 4), { _target_: "ThresholdIntensityd", keys: "image", threshold: 0 }],
        },
      };
    }, /preprocessing 4 \(ThresholdIntensityd\) is a transform bhsd does not run/);
    await refused((c) => ({ ...c, inferer: { _target_: "SimpleInferer" } }), /the inferer SimpleInferer: bhsd runs SlidingWindowInferer/);
    // YAML: an alias bomb, and a file past the size bound
    const bomb = ["a: &a [x, x, x, x, x, x, x, x, x, x]"];
    for (let i = 1; i < 9; i++)
      bomb.push(
        `${"abcdefghi"[i]}: &${"abcdefghi"[i]} [${Array(10)
          .fill(`*${"abcdefghi"[i - 1]}`)
          .join(", ")}]`,
      );
    await refused(() => bomb.join("\n") + "\nnetwork_def: *i\n", /not valid YAML/, "inference.yaml");
    await refused(() => `{"pad": "${"x".repeat(5 << 20)}"}`, /more than the 4194304 a bundle's config may have/);
    // a reviewer's: a 3 MB string named by reference 4000 times (one string in memory, 12 GB
    // wherever the value was serialised: the process aborted, heap out of memory)
    await refused(
      (c) => ({
        ...c,
        big: "A".repeat(3 << 20),
        network_def: { ...(c.network_def as object), dropout: ["@big", { x: Array(4000).fill("@big") }] },
      }),
      /references expand to more than 16777216 characters of text/,
    );
    // MedNeXt of 4 × 1000 blocks (~41k parameters): its build was quadratic in them (58 s)
    await refused(
      (c) => ({
        ...c,
        network_def: { _target_: "MedNeXt", blocks_down: [1000, 1000, 1000, 1000], blocks_up: [24, 24, 24, 24], blocks_bottleneck: 0 },
      }),
      /must be a multiple of \[16, 16, 16\] \(the MedNeXt's total strides\)/,
    );
    // YAML: 40,000 keys (yaml's duplicate check was quadratic: 41 s), a key twice, 1 MB of "[" (46 s, 3.6 GB)
    await refused(
      () =>
        `inferer: {_target_: SlidingWindowInferer, roi_size: [32, 32, 32]}\nnetwork_def:\n  _target_: UNet\n${Array.from({ length: 40_000 }, (_, i) => `  k${i}: ${i}`).join("\n")}\n`,
      /UNet has no argument "k0"/,
      "inference.yaml",
    );
    await refused(() => "network_def: 1\nnetwork_def: 2\n", /map keys must be unique; "network_def" is repeated/, "inference.yaml");
    await refused(() => `network_def: ${"[".repeat(1 << 20)}`, /brackets or braces nest deeper than 64/, "inference.yaml");
    // (an apostrophe in a plain scalar is not a quote: a scan of characters had stopped counting there)
    await refused(() => `note: it's\nnetwork_def: ${"[".repeat(1 << 20)}`, /brackets or braces nest deeper than 64/, "inference.yaml");
    // thousands of errors (yaml had built each one's message from its whole line: 40,000 tags 7.7 s)
    await refused(() => `network_def: ${"!t ".repeat(40_000)}x\n`, /A node can have at most one tag at byte \d+/, "inference.yaml");
    await refused(() => `network_def: 1\n${"]".repeat(40_000)}\n`, /a closing bracket or brace with none open/, "inference.yaml");
    await refused(
      () => `network_def:\n  ${"- ".repeat(1 << 20)}1\n`,
      /a line opens more than 64 nested "-" or "\?" items/,
      "inference.yaml",
    );
  } finally {
    for (const d of dirs) rmSync(d, { recursive: true, force: true });
  }
});

test("loadMonai refuses bad arguments and weights that are not the network's, naming what is wrong", async (t) => {
  await t.throwsAsync(loadMonai(42 as never), { message: /path/ });
  await t.throwsAsync(loadMonai(fixture("unet_res.pt")), { message: /options\.network/ });
  await t.throwsAsync(loadMonai(fixture("unet_res.pt"), { network: [] as never }), { message: /options\.network/ });
  const m = manifest.networks;
  // another network's weights
  await t.throwsAsync(loadMonai(fixture("unet_plain.pt"), { network: m.unet_res!.network_def }), {
    message: /state_dict do not match the UNet that options\.network describes: missing model\.0\.conv\.unit0\.conv\.weight/,
  });
  // a wrapper dict: found under "state_dict", or where options.key says; refused where it is not
  await t.throwsAsync(loadMonai(fixture("segresnet.pt"), { network: m.segresnet!.network_def, key: "model" }), {
    message: /the checkpoint's "model" \(options\.key\) is absent, not a state_dict/,
  });
  const model = await loadMonai(fixture("segresnet.pt"), {
    network: m.segresnet!.network_def,
    key: "state_dict",
    config: { patchSize: [16, 16, 24] },
  });
  t.is(model.config.source, "argument");
  await t.throwsAsync(loadMonai(fixture("segresnet.pt"), { network: m.segresnet!.network_def, config: { patchSize: [16, 16, 20] } }), {
    message: /patchSize \[16, 16, 20\] must be a multiple of \[8, 8, 8\]/,
  });
  await t.throwsAsync(loadMonai(fixture("segresnet_input.npy"), { network: m.segresnet!.network_def }), {
    message: /not a readable PyTorch zip checkpoint/,
  });
  // checked before any file is read
  await t.throwsAsync(loadMonai(join(BUNDLES, "unet_bundle"), { weights: "../segresnet_bundle/models/model.pt" }), {
    message: /options\.weights/,
  });
  await t.throwsAsync(loadMonai(join(BUNDLES, "unet_bundle"), { maxCheckpointBytes: Number.NaN }), {
    message: /options\.maxCheckpointBytes/,
  });
  await t.throwsAsync(loadMonai(join(BUNDLES, "unet_bundle"), { config: { stepSize: 7 } }), { message: /stepSize/ });
  // a checkpoint's network sees MONAI's (x, y, z) axes
  t.deepEqual((await loadMonai(fixture("unet_res.pt"), { network: m.unet_res!.network_def })).config.transposeForward, [2, 1, 0]);
});

test("SwinUNETR and UNETR are built for the sliding window's size; what MONAI refuses, or bhsd cannot run, is an error naming it", async (t) => {
  const m = manifest.networks;
  const swin = m.swinunetr!.network_def;
  const withArgs = (extra: Record<string, unknown>) => loadMonai(fixture("swinunetr.pt"), { network: { ...swin, ...extra } });
  await t.throwsAsync(withArgs({ feature_size: 16 }), { message: /SwinUNETR's feature_size must be divisible by 12, got 16/ });
  await t.throwsAsync(withArgs({ depths: [2, 2, 2] }), { message: /depths and num_heads must have 4 entries/ });
  await t.throwsAsync(withArgs({ num_heads: [3, 5, 6, 6] }), { message: /num_heads\[1\] = 5 does not divide stage 2's 24 channels/ });
  await t.throwsAsync(withArgs({ downsample: "pool" }), { message: /downsample must be "merging" or "mergingv2", got "pool"/ });
  await t.throwsAsync(withArgs({ img_size: [64, 64, 48] }), { message: /img_size \[64, 64, 48\] must be divisible by 32 on every axis/ });
  await t.throwsAsync(withArgs({ drop_rate: 2 }), { message: /drop_rate must be between 0 and 1/ });
  // MONAI 1.5's arguments (swinunetr15) are not 1.4's, whose img_size 1.5 removed
  await t.throwsAsync(withArgs({ window_size: 5 }), {
    message: /img_size \(MONAI 1\.4 and before; removed in 1\.5\) and window_size \(MONAI 1\.5's\) are not arguments of one MONAI version/,
  });
  const swin15 = m.swinunetr15!.network_def;
  await t.throwsAsync(loadMonai(fixture("swinunetr15.pt"), { network: { ...swin15, patch_size: 4 } }), {
    message: /patch_size 4: bhsd builds 2/,
  });
  await t.throwsAsync(loadMonai(fixture("swinunetr15.pt"), { network: { ...swin15, mlp_ratio: 0 } }), {
    message: /mlp_ratio must be a number/,
  });
  await t.throwsAsync(loadMonai(fixture("swinunetr15.pt"), { network: swin15, config: { patchSize: [512, 512, 256] } }), {
    message: /patchSize\) \[512, 512, 256\] gives a first stage of \d+ tokens in windows; bhsd indexes at most 2\^20/,
  });
  await t.throwsAsync(loadMonai(fixture("swinunetr15.pt"), { network: { ...swin15, window_size: [20, 20, 20] } }), {
    message: /window_size must be at most 32 a side and 1024 voxels, got \[20,20,20\]/,
  });
  // img_size is only checked, as MONAI checks it: a window of another size runs
  t.deepEqual((await withArgs({ img_size: [512, 512, 256] })).inputs[0]!.shape, [1, 1, 128, 128, 32]);
  await t.throwsAsync(withArgs({ img_size: null }), { message: /img_size is null: give a size \(MONAI ≤ 1\.4\)/ });
  // what bhsd would hold is bounded before any of it is built: window tables, folded biases and masks
  await t.throwsAsync(
    loadMonai(fixture("swinunetr15.pt"), {
      network: { ...swin15, depths: [64, 64, 64, 64], num_heads: [12, 24, 48, 96], window_size: [10, 10, 10] },
      config: { patchSize: [64, 64, 64] },
    }),
    { message: /attention biases and masks would hold \d+\.\d GiB \(bhsd holds at most 4 GiB of them\)/ },
  );
  // the window: a multiple of 32 (the checkpoint's default [128, 128, 32] is one), not a one-voxel bottleneck
  const loaded = await withArgs({});
  t.deepEqual(loaded.inputs[0]!.shape, [1, 1, 128, 128, 32]);
  await t.throwsAsync(loadMonai(fixture("swinunetr.pt"), { network: swin, config: { patchSize: [64, 64, 48] } }), {
    message: /patchSize \[64, 64, 48\] must be a multiple of \[32, 32, 32\]/,
  });
  await t.throwsAsync(loadMonai(fixture("swinunetr.pt"), { network: swin, config: { patchSize: [32, 32, 32] } }), {
    message: /bottleneck of one voxel/,
  });
  // segment runs the window the graph was built for, and says so for another
  const ct = await readNifti(fixture("bundles/ct.nii.gz"));
  await t.throwsAsync(segment(ct, loaded, { patchSize: [64, 64, 32] }), {
    message: /the model's fixed input size \[128, 128, 32\] \(its graph runs that size only\) for options\.patchSize/,
  });
  // UNETR's position embeddings fit its img_size only: the default patch for a checkpoint, and an error for another
  const unetr = m.unetr!.network_def;
  t.deepEqual((await loadMonai(fixture("unetr.pt"), { network: unetr })).config.patchSize, [32, 32, 48]);
  await t.throwsAsync(loadMonai(fixture("unetr.pt"), { network: unetr, config: { patchSize: [32, 32, 32] } }), {
    message: /UNETR runs only its img_size \[32, 32, 48\].*not \[32, 32, 32\]/,
  });
  await t.throwsAsync(loadMonai(fixture("unetr.pt"), { network: { ...unetr, img_size: [32, 32, 40] } }), {
    message: /UNETR's img_size \[32, 32, 40\] must be divisible by 16/,
  });
  await t.throwsAsync(loadMonai(fixture("unetr.pt"), { network: { ...unetr, hidden_size: 50 } }), {
    message: /hidden_size 50 must be divisible by num_heads 4/,
  });
  await t.throwsAsync(loadMonai(fixture("unetr.pt"), { network: { ...unetr, proj_type: "linear" } }), {
    message: /proj_type must be "conv" or "perceptron"/,
  });
  // MONAI ≤ 1.3's name for proj_type
  const old = await loadMonai(fixture("unetr2d_perceptron.pt"), {
    network: {
      ...Object.fromEntries(Object.entries(m.unetr2d_perceptron!.network_def).filter(([k]) => k !== "proj_type")),
      pos_embed: "perceptron",
    },
  });
  const x = await readNpy(bytes("unetr2d_perceptron_input.npy"));
  const y = await old.run({ data: x.data as Float32Array, shape: [...x.shape] });
  t.true(scaleDiff(y.data, (await readNpy(bytes("unetr2d_perceptron_expected.npy"))).data as Float32Array) <= 1e-4);
  await t.throwsAsync(loadMonai(fixture("unetr.pt"), { network: { ...unetr, pos_embed: "conv", proj_type: "conv" } }), {
    message: /both pos_embed .* and proj_type/,
  });
  // weights of another size: named with the shape the network_def needs
  await t.throwsAsync(loadMonai(fixture("unetr.pt"), { network: { ...unetr, img_size: [32, 32, 32] } }), {
    message: /position_embeddings"\] has shape \[1, 12, 48\]; the network_def's UNETR needs \[1, 8, 48\]/,
  });
});

test("bhsd info and bhsd segment --monai read a bundle folder; the labels are MONAI's", async (t) => {
  const bundle = join(BUNDLES, "unet_bundle");
  const info = bhsdSync(["info", bundle, "--json"], 120_000);
  t.is(info.status, 0, info.stderr);
  const o = JSON.parse(info.stdout) as {
    network: { class: string };
    pipeline: string[];
    config: { orientation: string; patchSize: number[] };
  };
  t.is(o.network.class, "UNet");
  t.is(o.config.orientation, "RAS");
  t.deepEqual(o.config.patchSize, [32, 32, 8]);
  t.true(o.pipeline.some((p) => /^Spacing: to 1\.5 × 1\.5 × 4 mm/.test(p)));
  const dir = mkdtempSync(join(tmpdir(), "bhsd-monai-cli-"));
  try {
    const out = join(dir, "labels.nii.gz");
    const r = bhsdSync(["segment", fixture("bundles/ct.nii.gz"), "--monai", bundle, "--out", out, "--quiet"], 180_000);
    t.is(r.status, 0, r.stderr);
    const labels = await readNifti(out);
    const want = await readNpy(bytes("bundles/unet_bundle_labels.npy"));
    const margin = await readNpy(bytes("bundles/unet_bundle_margin.npy"));
    t.is(compare(labels.data as Uint8Array, want.data as Uint8Array, margin.data as Float32Array).differ, 0);
    // its weights may not be overwritten by an output
    const bad = bhsdSync(["segment", fixture("bundles/ct.nii.gz"), "--monai", bundle, "--out", join(bundle, "models", "model.pt")], 60_000);
    t.not(bad.status, 0);
    t.regex(bad.stderr, /--out/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("bhsd segment --monai CHECKPOINT --network FILE refuses a network file that is too large, not a file or not a JSON object, naming it", (t) => {
  const dir = mkdtempSync(join(tmpdir(), "bhsd-monai-network-"));
  try {
    const cases: [string, () => void, RegExp][] = [
      [
        "big.json",
        () => writeFileSync(join(dir, "big.json"), `{"pad": "${"x".repeat(5 << 20)}"}`),
        /big\.json: 5242891 bytes, more than the 4194304 a network definition may have/,
      ],
      ["folder.json", () => mkdirSync(join(dir, "folder.json")), /folder\.json: not a regular file/],
      [
        "list.json",
        () => writeFileSync(join(dir, "list.json"), "[1, 2]"),
        /list\.json: not a JSON network definition \(not a JSON object\)/,
      ],
      [
        "deep.json",
        () => writeFileSync(join(dir, "deep.json"), `{"a": ${"[".repeat(100)}${"]".repeat(100)}}`),
        /deep\.json: not a JSON network definition \(arrays and objects nested over 64 deep\)/,
      ],
      ["missing.json", () => {}, /missing\.json: no such file/],
    ];
    for (const [name, make, message] of cases) {
      make();
      const r = bhsdSync(
        ["segment", fixture("bundles/ct.nii.gz"), "--monai", fixture("unet_res.pt"), "--network", join(dir, name), "--quiet"],
        60_000,
      );
      t.is(r.status, 1, name);
      t.regex(r.stderr, new RegExp(`--network .*${message.source}`), name);
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test.serial(
  "variants of the bundles' pipelines: KeepLargestConnectedComponentd; a pixdim near the CT's; Invertd before the softmax; NormalizeIntensityd (all voxels with Invertd's default nearest, or the non-zero ones); ScaleIntensityd; CropForegroundd",
  async (t) => {
    type Cfg = { preprocessing: { transforms: Record<string, unknown>[] }; postprocessing: { transforms: Record<string, unknown>[] } };
    // the edits make_bundles.py makes (klcc, znorm)
    const variants: [string, string, (c: Cfg) => void][] = [
      [
        "unet_bundle_klcc",
        "unet_bundle",
        (c) => c.postprocessing.transforms.splice(3, 0, { _target_: "KeepLargestConnectedComponentd", keys: "pred" }),
      ],
      // a pixdim a hair from the CT's spacing: the grid keeps its size, and is resampled all the same
      ["unet_bundle_near", "unet_bundle", (c) => void ((c as unknown as { pixdim: number[] }).pixdim = [0.905, 0.905, 5.2])],
      // Invertd before the softmax: the logits go back
      [
        "unet_bundle_logits",
        "unet_bundle",
        (c) => {
          const t = c.postprocessing.transforms;
          [t[0], t[1]] = [t[1]!, t[0]!];
        },
      ],
      [
        "segresnet_bundle_znorm",
        "segresnet_bundle",
        (c) => {
          c.preprocessing.transforms[4] = { _target_: "NormalizeIntensityd", keys: "image" };
          delete c.postprocessing.transforms[1]!.nearest_interp;
        },
      ],
      // the image's own range to [0, 1]
      [
        "unet_bundle_minmax",
        "unet_bundle",
        (c) => void (c.preprocessing.transforms[4] = { _target_: "ScaleIntensityd", keys: "image", minv: 0.0, maxv: 1.0 }),
      ],
      // CropForegroundd after the window, on a CT of air outside its field of view
      [
        "unet_bundle_crop",
        "unet_bundle",
        (c) => void c.preprocessing.transforms.splice(5, 0, { _target_: "CropForegroundd", keys: "image", source_key: "image" }),
      ],
      // a z-score of the non-zero voxels, on a CT that is 0 outside its field of view
      [
        "segresnet_bundle_nonzero",
        "segresnet_bundle",
        (c) => void (c.preprocessing.transforms[4] = { _target_: "NormalizeIntensityd", keys: "image", nonzero: true, channel_wise: true }),
      ],
    ];
    const cts: Record<string, Awaited<ReturnType<typeof readNifti>>> = {
      "ct.nii.gz": await readNifti(fixture("bundles/ct.nii.gz")),
      "ct_fov.nii.gz": await readNifti(fixture("bundles/ct_fov.nii.gz")),
      "ct_air.nii.gz": await readNifti(fixture("bundles/ct_air.nii.gz")),
    };
    for (const [variant, base, edit] of variants) {
      const ct =
        cts[variant === "segresnet_bundle_nonzero" ? "ct_fov.nii.gz" : variant === "unet_bundle_crop" ? "ct_air.nii.gz" : "ct.nii.gz"]!;
      const dir = bundleWith(
        (c) => {
          edit(c as unknown as Cfg);
          return c;
        },
        "inference.json",
        base,
      );
      try {
        const model = await loadMonai(dir);
        const pipeline = monaiInfo(model)!.bundle!.pipeline;
        const want = await readNpy(bytes(`bundles/${variant}_labels.npy`));
        const margin = await readNpy(bytes(`bundles/${variant}_margin.npy`));
        for (const { name: backend } of backends) {
          setBackend(backend);
          const { labels } = await segment(ct, model);
          const { compared, differ } = compare(labels.data, want.data as Uint8Array, margin.data as Float32Array);
          // (outside a cropped box every probability is 0: no margin there, but MONAI's label is 0 and so must bhsd's be)
          t.true(compared > (variant === "unet_bundle_crop" ? 18_000 : 39_000), `${variant}: ${compared} compared`);
          t.is(differ, 0, `${variant} on ${backend}: ${differ} of ${compared} voxels differ (${pipeline.join("; ")})`);
          let outside = 0;
          for (let i = 0; i < want.data.length; i++) if (margin.data[i] === 0 && want.data[i] === 0 && labels.data[i] !== 0) outside++;
          t.is(outside, 0, `${variant} on ${backend}: ${outside} voxels outside MONAI's box are not background`);
        }
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    }
  },
);

test.serial("the REST service and the queue find a bundle in their model folder by name; the service's labels are MONAI's", async (t) => {
  const dir = mkdtempSync(join(tmpdir(), "bhsd-monai-serve-"));
  const modelDir = join(dir, "models");
  mkdirSync(modelDir);
  cpSync(join(BUNDLES, "unet_bundle"), join(modelDir, "ich"), { recursive: true });
  mkdirSync(join(modelDir, "notes")); // a folder that is no model
  const app = await createServer({ modelDir, logger: false, resultDir: join(dir, "results") });
  try {
    await app.listen({ host: "127.0.0.1", port: 0 });
    const url = `http://127.0.0.1:${(app.server.address() as { port: number }).port}`;
    t.deepEqual(((await (await fetch(`${url}/v1/info`)).json()) as { models: string[] }).models, ["ich"]);
    const r = await fetch(`${url}/v1/segment?model=ich`, {
      method: "POST",
      body: readFileSync(fixture("bundles/ct.nii.gz")),
      headers: { "content-type": "application/octet-stream" },
    });
    t.is(r.status, 200);
    const report = (await r.json()) as { labels: string; model: string };
    const labels = await readNifti(Buffer.from(await (await fetch(url + report.labels)).arrayBuffer()));
    const want = await readNpy(bytes("bundles/unet_bundle_labels.npy"));
    const margin = await readNpy(bytes("bundles/unet_bundle_margin.npy"));
    t.is(compare(labels.data as Uint8Array, want.data as Uint8Array, margin.data as Float32Array).differ, 0);
    // the workers' lookup and fingerprint: every file of the folder counts
    t.is(modelPath(modelDir, "ich"), join(modelDir, "ich"));
    t.throws(() => modelPath(modelDir, "notes"), { message: /no model "notes" .*available: ich/ });
    const h1 = await modelHash(join(modelDir, "ich"));
    writeFileSync(join(modelDir, "ich", "configs", "metadata.json"), "{}");
    t.not(await modelHash(join(modelDir, "ich")), h1);
  } finally {
    await app.close();
    rmSync(dir, { recursive: true, force: true });
  }
});
