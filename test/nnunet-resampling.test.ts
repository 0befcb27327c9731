/**
 * nnU-Net's resampling (its plans' resample_data_or_seg_to_shape): B-splines of the plans' orders,
 * anisotropic grids slice by slice, against nnU-Net's own function run by
 * test/fixtures/nnunet-resampling/make.py.
 */
import test from "ava";
import { join } from "node:path";
import { encodeModel, loadModel, readNpy, segment, setBackend, volumeFromArray } from "../lib/index.js";
import { fromNnunet, normalizeConfig } from "../lib/model/config.js";
import { cropVolume, nonzeroBox } from "../lib/model/crop.js";
import { resampleNnunet, separateAxis } from "../lib/model/resample.js";
import { checkedFolder } from "./paths.js";
import { backendsUnderTest, ROOT } from "./helpers.js";
import { compareLabels as compare, pointwiseOnnx } from "./ort.js";

const DIR = join(ROOT, "test", "fixtures", "nnunet-resampling");
const backends = backendsUnderTest();
const { bytes: fixture } = checkedFolder(DIR);
const npy = (name: string) => readNpy(fixture(`${name}.npy`));

interface Case {
  name: string;
  shape: [number, number, number];
  newShape: [number, number, number];
  currentSpacing: number[];
  newSpacing: number[];
  channels: number;
  order: number;
  orderZ: number;
  forceSeparateZ: boolean | null;
}
const cases = JSON.parse(new TextDecoder().decode(fixture("cases.json"))) as Case[];

for (const { name: backend } of backends)
  test.serial(`${backend}: resampleNnunet equals nnU-Net's resample_data_or_seg_to_shape in ${cases.length} cases`, async (t) => {
    setBackend(backend);
    for (const c of cases) {
      const x = (await npy(`${c.name}_in`)).data as Float32Array;
      const want = (await npy(`${c.name}_out`)).data as Float32Array;
      const n = c.shape.reduce((a, b) => a * b),
        m = c.newShape.reduce((a, b) => a * b);
      let worst = 0;
      for (let k = 0; k < c.channels; k++) {
        const step = { order: c.order, orderZ: c.orderZ, forceSeparateZ: c.forceSeparateZ, anisotropyThreshold: 3 };
        const out = await resampleNnunet(x.slice(k * n, (k + 1) * n), c.shape, c.newShape, c.currentSpacing, c.newSpacing, step);
        t.is(out.length, m, c.name);
        for (let i = 0; i < m; i++) worst = Math.max(worst, Math.abs(out[i]! - want[k * m + i]!) / Math.max(1, Math.abs(want[k * m + i]!)));
      }
      // float32 results of float64 lines: a few units in the last place
      t.true(worst <= 2e-6, `${c.name}: ${worst}`);
    }
  });

test("the axis resampled on its own is chosen as nnU-Net's determine_do_sep_z_and_axis chooses it", (t) => {
  t.is(separateAxis(null, [5, 0.45, 0.45], [5, 0.5, 0.5], 3), 0);
  t.is(separateAxis(null, [1, 1, 1], [4, 1, 1], 3), 0, "the new spacing's low-resolution axis");
  t.is(separateAxis(null, [0.5, 0.5, 5], [0.6, 0.6, 3], 3), 2);
  t.is(separateAxis(null, [5, 5, 1], [4, 4, 1], 3), null, "two equally coarse axes: none");
  t.is(separateAxis(null, [2, 1, 1], [2.5, 1.2, 1.2], 3), null, "under the threshold");
  t.is(separateAxis(true, [2, 1, 1], [2.5, 1.2, 1.2], 3), 0);
  t.is(separateAxis(true, [1, 1, 1], [1.3, 1.3, 1.3], 3), null, "forced, but no axis is coarser");
  t.is(separateAxis(false, [5, 0.45, 0.45], [4, 0.5, 0.5], 3), null);
});

/** The fixture's pointwise model's bytes (1×1×1 Conv 1 → 4, LeakyReLU 0.1, 1×1×1 Conv 4 → 6). */
async function pointwiseBytes(): Promise<Uint8Array> {
  const [w1, b1, w2, b2] = await Promise.all(["e2e_w1", "e2e_b1", "e2e_w2", "e2e_b2"].map(npy));
  return pointwiseOnnx(w1!, b1!, w2!, b2!);
}

/** The fixture's pointwise model, resampling and cropping as asked. */
async function pointwise(resampling: "nnunet" | "linear", cropToNonzero = false) {
  const bytes = await pointwiseBytes();
  return loadModel(bytes, { patchSize: [4, 16, 16], targetSpacing: [5, 0.5, 0.5], resampling, cropToNonzero });
}

/** The fixture's second member (one 1×1×1 Conv 1 → 6) at 5 × 0.8 × 0.8 mm. */
async function pointwiseB() {
  const [w3, b3] = await Promise.all(["e2e_w3", "e2e_b3"].map(npy));
  const bytes = pointwiseOnnx(w3!, b3!);
  return loadModel(bytes, { patchSize: [4, 8, 8], targetSpacing: [5, 0.8, 0.8], resampling: "nnunet", cropToNonzero: true });
}

for (const { name: backend } of backends)
  for (const [tag, spacing] of [
    ["z5", [5, 0.45, 0.45]],
    ["z4", [4, 0.45, 0.45]],
  ] as const)
    test.serial(
      `${backend}: segment with resampling "nnunet" gives nnU-Net's labels (${spacing.join(" × ")} mm to 5 × 0.5 × 0.5)`,
      async (t) => {
        setBackend(backend);
        const [ct, want, margin] = await Promise.all([`e2e_${tag}_ct`, `e2e_${tag}_labels`, `e2e_${tag}_margin`].map(npy));
        const vol = volumeFromArray(ct!.data as Float32Array, ct!.shape, spacing);
        const differing = async (resampling: "nnunet" | "linear") => {
          const model = await pointwise(resampling);
          const { labels, report } = await segment(vol, model);
          t.deepEqual(report.modelGrid.dims, [8, 36, 32]);
          const { compared, differ } = compare(labels.data, want!.data as Uint8Array, margin!.data as Float32Array);
          t.true(compared > 0.99 * labels.data.length, `${compared} of ${labels.data.length} voxels compared`);
          model.dispose();
          return differ;
        };
        t.is(await differing("nnunet"), 0);
        // the fixture tells the two apart: trilinear resampling gives other labels
        t.true((await differing("linear")) > 20);
      },
    );

test("plans' resampling functions and kwargs become the config's resampling", (t) => {
  const plans = (conf: Record<string, unknown>) => ({
    configurations: { "3d_fullres": { patch_size: [8, 16, 16], spacing: [5, 0.5, 0.5], ...conf } },
  });
  const cfg = (conf: Record<string, unknown>) => normalizeConfig(fromNnunet(plans(conf), null), "nnunet");
  // as nnU-Net's default planner writes them
  const std = cfg({
    resampling_fn_data: "resample_data_or_seg_to_shape",
    resampling_fn_data_kwargs: { is_seg: false, order: 3, order_z: 0, force_separate_z: null },
    resampling_fn_probabilities: "resample_data_or_seg_to_shape",
    resampling_fn_probabilities_kwargs: { is_seg: false, order: 1, order_z: 0, force_separate_z: null },
  });
  t.deepEqual(std.resampling, {
    type: "nnunet",
    data: { order: 3, orderZ: 0, forceSeparateZ: null, anisotropyThreshold: 3 },
    probabilities: { order: 1, orderZ: 0, forceSeparateZ: null, anisotropyThreshold: 3 },
  });
  // kwargs left out take the function's defaults (force_separate_z=False there)
  const bare = cfg({ resampling_fn_data: "resample_data_or_seg_to_shape", resampling_fn_data_kwargs: { order: 2 } });
  if (bare.resampling.type !== "nnunet") throw new Error("not nnunet");
  t.deepEqual(bare.resampling.data, { order: 2, orderZ: 0, forceSeparateZ: false, anisotropyThreshold: 3 });
  // the torch planners' resampling: linear in-plane, nearest along a separate axis
  const torch = cfg({
    resampling_fn_data: "resample_torch_fornnunet",
    resampling_fn_data_kwargs: { is_seg: false, force_separate_z: null },
  });
  if (torch.resampling.type !== "nnunet") throw new Error("not nnunet");
  t.deepEqual(torch.resampling.data, { order: 1, orderZ: 0, forceSeparateZ: null, anisotropyThreshold: 3 });
  t.throws(() => cfg({ resampling_fn_data: "my_resampling" }), { message: /resamples \(data\) with "my_resampling"; bhsd has/ });
  t.throws(() => cfg({ resampling_fn_probabilities_kwargs: { order: 7 } }), { message: /resampling\.probabilities must be \{ order: 0–5/ });
  t.throws(() => cfg({ resampling_fn_data: "resample_torch_fornnunet", resampling_fn_data_kwargs: { mode: "bicubic" } }), {
    message: /mode "bicubic"/,
  });
  // a config of its own: "linear" unless it says otherwise
  t.deepEqual(normalizeConfig({}, "argument").resampling, { type: "linear" });
  t.is(normalizeConfig({ resampling: "nnunet" }, "argument").resampling.type, "nnunet");
  t.throws(() => normalizeConfig({ resampling: "cubic" } as never, "argument"), { message: /resampling must be "linear", "nnunet"/ });
});

for (const { name: backend } of backends)
  test.serial(
    `${backend}: cropToNonzero runs on the non-zero box and gives background outside it, as nnU-Net's crop_to_nonzero`,
    async (t) => {
      setBackend(backend);
      const [ct, want, margin, wantEns, marginEns] = await Promise.all(
        ["e2e_crop_ct", "e2e_crop_labels", "e2e_crop_margin", "e2e_crop_ensemble_labels", "e2e_crop_ensemble_margin"].map(npy),
      );
      const vol = volumeFromArray(ct!.data as Float32Array, ct!.shape, [5, 0.45, 0.45]);
      const a = await pointwise("nnunet", true);
      const one = await segment(vol, a);
      // the box nnU-Net crops to: z 1–7, y 3–36, x 2–35
      t.deepEqual(one.report.cropped, { offset: [2, 3, 1], dims: [34, 34, 7] });
      t.deepEqual(one.report.modelGrid.dims, [7, 31, 31]);
      const r1 = compare(one.labels.data, want!.data as Uint8Array, margin!.data as Float32Array);
      t.true(r1.compared > 0.99 * one.labels.data.length, `${r1.compared} compared`);
      t.is(r1.differ, 0);
      // without the crop the zero frame is a class of its own and the grid another: other labels
      const whole = await pointwise("nnunet", false);
      const uncropped = await segment(vol, whole);
      t.is(uncropped.report.cropped, null);
      t.true(compare(uncropped.labels.data, want!.data as Uint8Array, margin!.data as Float32Array).differ > 100);
      // an ensemble: each member's probabilities with background 1 outside the box, averaged
      const b = await pointwiseB();
      const ens = await segment(vol, [a, b]);
      t.deepEqual(
        ens.report.ensemble!.map((e) => [e.cropped?.dims, e.modelGrid.dims]),
        [
          [
            [34, 34, 7],
            [7, 31, 31],
          ],
          [
            [34, 34, 7],
            [7, 19, 19],
          ],
        ],
      );
      const r2 = compare(ens.labels.data, wantEns!.data as Uint8Array, marginEns!.data as Float32Array);
      t.true(r2.compared > 0.99 * ens.labels.data.length, `${r2.compared} compared`);
      t.is(r2.differ, 0);
      // a member that does not crop beside one that does: the cropping member's box is its own
      const [wantMixed, marginMixed] = await Promise.all(["e2e_crop_mixed_labels", "e2e_crop_mixed_margin"].map(npy));
      for (const members of [
        [a, whole],
        [whole, a],
      ]) {
        const mixed = await segment(vol, members);
        t.deepEqual(
          mixed.report.ensemble!.map((e) => e.cropped),
          members.map((m) => (m === a ? { offset: [2, 3, 1], dims: [34, 34, 7] } : null)),
        );
        t.deepEqual(mixed.report.cropped, { offset: [2, 3, 1], dims: [34, 34, 7] }, "the box, where any member ran on it");
        const r3 = compare(mixed.labels.data, wantMixed!.data as Uint8Array, marginMixed!.data as Float32Array);
        t.true(r3.compared > 0.99 * mixed.labels.data.length, `${r3.compared} compared`);
        t.is(r3.differ, 0);
      }
      for (const m of [a, whole, b]) m.dispose();
    },
  );

test("nonzeroBox is the bounding box of the voxels that are not 0, or null for the whole volume or none", (t) => {
  const v = volumeFromArray(new Float32Array(4 * 5 * 6), [4, 5, 6]);
  t.is(nonzeroBox(v), null, "all zero: nothing to crop to");
  v.data[(1 * 5 + 2) * 6 + 3] = -1; // z 1, y 2, x 3
  v.data[(2 * 5 + 4) * 6 + 1] = NaN; // z 2, y 4, x 1 (NaN != 0, as numpy)
  t.deepEqual(nonzeroBox(v), { offset: [1, 2, 1], dims: [3, 3, 2] });
  v.data.fill(7);
  t.is(nonzeroBox(v), null, "no zero border: the whole volume");
  const box = { offset: [1, 2, 1] as [number, number, number], dims: [3, 3, 2] as [number, number, number] };
  const c = cropVolume({ ...v, affine: [2, 0, 0, 10, 0, 3, 0, 20, 0, 0, 4, 30, 0, 0, 0, 1] }, box);
  t.deepEqual(c.dims, [3, 3, 2]);
  t.deepEqual(c.affine.slice(0, 12), [2, 0, 0, 12, 0, 3, 0, 26, 0, 0, 4, 34], "the box's first voxel where it was");
});

test("no intermediate grid is larger than the input or the result (shrinking axes first)", async (t) => {
  // two coarse axes (not separated): 1 × 1 × 2000 → 2000 × 2000 × 1 would pass through 8·10^9
  // voxels were the growing axes taken first
  const line = Float32Array.from({ length: 2000 }, (_, i) => Math.sin(i / 50));
  const step = { order: 3, orderZ: 0, forceSeparateZ: null, anisotropyThreshold: 3 };
  const a = await resampleNnunet(line, [1, 1, 2000], [2000, 2000, 1], [2, 2, 0.001], [0.001, 0.001, 2], step);
  t.is(a.length, 2000 * 2000);
  t.true(
    a.every((v) => v === a[0]),
    "one sample, repeated",
  );
  // a separate axis shrunk with nearest goes first: 2000 × 1 × 1 → 1 × 2000 × 2000
  const b = await resampleNnunet(line, [2000, 1, 1], [1, 2000, 2000], [2, 0.001, 0.001], [4000, 5e-7, 5e-7], step);
  t.is(b.length, 2000 * 2000);
  t.true(
    b.every((v) => v === line[1000]),
    "the middle slice (nearest), repeated in-plane",
  );
});

for (const { name: backend } of backends)
  test.serial(`${backend}: a z-score with nnU-Net's use_mask_for_norm normalises the hole-filled non-zero region only`, async (t) => {
    setBackend(backend);
    const [mr, want, margin] = await Promise.all(["e2e_mask_mr", "e2e_mask_labels", "e2e_mask_margin"].map(npy));
    const vol = volumeFromArray(mr!.data as Float32Array, mr!.shape, [5, 0.45, 0.45]);
    const bytes = await pointwiseBytes();
    const run = async (nonzeroMask: boolean) => {
      const model = await loadModel(bytes, {
        patchSize: [4, 16, 16],
        targetSpacing: [5, 0.5, 0.5],
        resampling: "nnunet",
        cropToNonzero: true,
        normalization: { type: "zscore", nonzeroMask },
      });
      const { labels } = await segment(vol, model);
      model.dispose();
      return compare(labels.data, want!.data as Uint8Array, margin!.data as Float32Array);
    };
    const masked = await run(true);
    t.true(masked.compared > 0.99 * vol.data.length, `${masked.compared} compared`);
    t.is(masked.differ, 0);
    t.true((await run(false)).differ > 100, "the whole box's statistics give other labels");
  });

test("plans with use_mask_for_norm, and the no-resampling planners' plans, map to their config", (t) => {
  const conf = (c: Record<string, unknown>) =>
    normalizeConfig(
      fromNnunet({ configurations: { "3d_fullres": { patch_size: [8, 16, 16], spacing: [5, 0.5, 0.5], ...c } } }, null),
      "nnunet",
    );
  t.deepEqual(conf({ normalization_schemes: ["ZScoreNormalization"], use_mask_for_norm: [true] }).normalization, {
    type: "zscore",
    nonzeroMask: true,
  });
  t.deepEqual(conf({ normalization_schemes: ["ZScoreNormalization"], use_mask_for_norm: [false] }).normalization, { type: "zscore" });
  t.throws(() => conf({ normalization_schemes: ["ZScoreNormalization"], use_mask_for_norm: ["yes"] }), {
    message: /use_mask_for_norm must list true or false/,
  });
  // nnU-Net's no_resampling_hack returns the image as it is: the model runs on the CT's own grid
  const none = conf({
    resampling_fn_data: "no_resampling_hack",
    resampling_fn_probabilities: "no_resampling_hack",
    resampling_fn_data_kwargs: {},
    resampling_fn_probabilities_kwargs: {},
  });
  t.is(none.targetSpacing, null);
  t.true(none.cropToNonzero);
});

test("a resampling whose slices would pass through a grid larger than the bound is refused before it allocates", async (t) => {
  // cubic in-plane with a clip, then linear across: nnU-Net's order stands, 400 × 400 in-plane at 400 slices
  const step = { order: 3, orderZ: 1, forceSeparateZ: true, anisotropyThreshold: 3 };
  const line = new Float32Array(400).fill(1);
  await t.throwsAsync(resampleNnunet(line, [400, 1, 1], [1, 400, 400], [2, 1, 1], [800, 0.0025, 0.0025], step, undefined, 1e6), {
    instanceOf: RangeError,
    message: /passes through a grid of 64000000 voxels/,
  });
  // in segment, from the dims and spacings alone, against options.maxVoxels
  const model = await loadModel(
    encodeModel({
      opset: 17,
      nodes: [{ opType: "Identity", inputs: ["x"], outputs: ["y"] }],
      inputs: [{ name: "x", shape: [1, 1, "D", "H", "W"] }],
      outputs: [{ name: "y" }],
      initializers: [],
    }),
    {
      patchSize: [1, 1, 1],
      targetSpacing: [800, 0.0025, 0.0025],
      resampling: { type: "nnunet", data: step, probabilities: { order: 1, orderZ: 0, forceSeparateZ: null, anisotropyThreshold: 3 } },
    },
  );
  const ct = volumeFromArray(new Float32Array(400).fill(1), [400, 1, 1], [2, 1, 1]);
  await t.throwsAsync(segment(ct, model, { maxVoxels: 1e6 }), {
    instanceOf: RangeError,
    message: /resampling the CT to the model's spacing would pass through a grid of 64000000 voxels/,
  });
  model.dispose();
});
