/**
 * nnU-Net's post-processing (`postprocessing.pkl` / `.json`, as nnUNetv2_find_best_configuration
 * writes it beside the cross-validation results) read safely and applied as nnU-Net applies it.
 * References: test/fixtures/nnunet-2d/postprocessing/ (make_postprocessing.py there): the files as
 * nnU-Net writes them, and nnU-Net's steps (remove_all_but_largest_component_from_segmentation,
 * full connectivity, ties kept) applied by numpy/scipy to the 2d fixture's smoke labels.
 */
import test from "ava";
import { cpSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { cleanup, loadNnunet, readNifti, readNpy, segment, setBackend } from "../lib/index.js";
import { readNnunetPostprocessing } from "../lib/model/nnunet/postprocessing.js";
import { backendsUnderTest, ROOT } from "./helpers.js";
import { checkedFolder } from "./paths.js";

const DIR = join(ROOT, "test", "fixtures", "nnunet-2d");
const fx = checkedFolder(DIR);
const FOLDER_REL = "Dataset501_PhantomICH/nnUNetTrainer__nnUNetPlans__2d";
const SMOKE_CT = join(ROOT, "test", "fixtures", "nnunet-folder", "cases", "PhantomICH_001_0000.nii.gz");
const CLASSES = [0, 1, 2, 3, 4, 5];
const made: string[] = [];
test.after.always(() => {
  for (const d of made) rmSync(d, { recursive: true, force: true });
});
const tmp = () => {
  const d = mkdtempSync(join(tmpdir(), "bhsd-nnunet-pp-"));
  made.push(d);
  return d;
};

test("nnU-Net's postprocessing.pkl and .json read as the same steps; no steps is none", async (t) => {
  const labels = await readNnunetPostprocessing(fx.file("postprocessing/labels.pkl"), CLASSES);
  t.deepEqual(labels, { largestOf: [[1, 2, 3, 4, 5], [2]], connectivity: 26 });
  t.deepEqual(await readNnunetPostprocessing(fx.file("postprocessing/labels.json"), CLASSES), labels);
  // regions (tuples, and a list mixing a region and a label) are the union of their labels
  const regions = await readNnunetPostprocessing(fx.file("postprocessing/regions.pkl"), CLASSES);
  t.deepEqual(regions, {
    largestOf: [
      [1, 5],
      [1, 5, 3],
    ],
    connectivity: 26,
  });
  t.deepEqual(await readNnunetPostprocessing(fx.file("postprocessing/regions.json"), CLASSES), regions);
  t.is(await readNnunetPostprocessing(fx.file("postprocessing/none.pkl"), CLASSES), null);
});

test("a post-processing pickle naming any other global is refused and nothing in it runs", async (t) => {
  await t.throwsAsync(readNnunetPostprocessing(fx.file("postprocessing/hostile.pkl"), CLASSES), {
    message: /names the Python global "posix\.system".*refused \(nothing in it was run\)/,
  });
  const d = tmp();
  const bad = (name: string, body: string | Uint8Array) => {
    writeFileSync(join(d, name), body);
    return join(d, name);
  };
  const pkl = readFileSync(fx.file("postprocessing/labels.pkl"));
  await t.throwsAsync(readNnunetPostprocessing(bad("cut.pkl", pkl.subarray(0, 200)), CLASSES), { message: /not a readable pickle/ });
  await t.throwsAsync(
    readNnunetPostprocessing(bad("other.json", JSON.stringify({ postprocessing_fns: ["exec"], postprocessing_kwargs: [{}] })), CLASSES),
    { message: /step 1 is exec, not remove_all_but_largest_component_from_segmentation/ },
  );
  await t.throwsAsync(
    readNnunetPostprocessing(
      bad(
        "label.json",
        JSON.stringify({
          postprocessing_fns: ["remove_all_but_largest_component_from_segmentation"],
          postprocessing_kwargs: [{ labels_or_regions: 9 }],
        }),
      ),
      CLASSES,
    ),
    { message: /step 1 names 9, not a label of the model \(1, 2, 3, 4, 5\)/ },
  );
  await t.throwsAsync(readNnunetPostprocessing(bad("big.pkl", new Uint8Array(2 << 20)), CLASSES), { message: /more than the 1048576/ });
  await t.throwsAsync(readNnunetPostprocessing(d, CLASSES), { message: /not a regular file/ });
});

for (const { name } of backendsUnderTest()) {
  test.serial(`${name}: cleanup's largestOf gives nnU-Net's post-processed labels`, async (t) => {
    setBackend(name);
    const smoke = await readNpy(fx.file("smoke_folds01_labels.npy"));
    const [D, H, W] = smoke.shape as [number, number, number];
    const vol = {
      data: smoke.data as Uint8Array,
      dims: [W, H, D] as [number, number, number],
      spacing: [1, 1, 1] as [number, number, number],
      affine: [1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1],
    };
    for (const c of ["labels", "regions"]) {
      const steps = (await readNnunetPostprocessing(fx.file(`postprocessing/${c}.pkl`), CLASSES))!;
      const want = (await readNpy(fx.file(`postprocessing/smoke_folds01_${c}.npy`))).data as Uint8Array;
      const before = Uint8Array.from(vol.data);
      const out = await cleanup(vol, steps);
      let differ = 0;
      for (let i = 0; i < want.length; i++) if (out.data[i] !== want[i]) differ++;
      t.is(differ, 0, `${c}: ${differ} voxels differ from nnU-Net's`);
      t.deepEqual(vol.data, before, "the input labels are not written");
      t.not(out.data, vol.data);
    }
  });
}

test("cleanup's largestOf is checked, naming the option", async (t) => {
  const vol = {
    data: new Uint8Array(8),
    dims: [2, 2, 2] as [number, number, number],
    spacing: [1, 1, 1] as [number, number, number],
    affine: [1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1],
  };
  for (const bad of [[[0]], [[]], [[1, 1]], [2], "x", Array.from({ length: 65 }, () => [1])])
    await t.throwsAsync(cleanup(vol, { largestOf: bad as never }), { message: /options\.largestOf/ });
});

test.serial(
  "loadNnunet reads the folds' crossval_results postprocessing.pkl, segment applies it; false or a path override it",
  async (t) => {
    setBackend(backendsUnderTest().some((b) => b.name === "native") ? "native" : "ts");
    const d = tmp();
    const folder = join(d, "nnUNetTrainer__nnUNetPlans__2d");
    cpSync(join(DIR, FOLDER_REL), folder, { recursive: true });
    mkdirSync(join(folder, "crossval_results_folds_0_1"));
    cpSync(fx.file("postprocessing/labels.pkl"), join(folder, "crossval_results_folds_0_1", "postprocessing.pkl"));
    const ct = await readNifti(SMOKE_CT);
    const model = await loadNnunet(folder);
    t.deepEqual(model.config.postprocessing, { largestOf: [[1, 2, 3, 4, 5], [2]], connectivity: 26 });
    const withPp = await segment(ct, model);
    t.deepEqual(withPp.report.postprocessing, model.config.postprocessing);
    const raw = await segment(ct, model, { cleanup: false });
    t.is(raw.report.postprocessing, null);
    const again = await cleanup(raw.labels, model.config.postprocessing!);
    t.deepEqual(withPp.labels.data, again.data);
    let removed = 0;
    for (let i = 0; i < raw.labels.data.length; i++) if (raw.labels.data[i] !== withPp.labels.data[i]) removed++;
    t.true(removed > 1000, `${removed} voxels removed`);
    model.dispose();
    // only fold 0: no crossval_results_folds_0 here, so none; false, or another file, as asked
    const one = await loadNnunet(folder, { folds: [0] });
    t.is(one.config.postprocessing, undefined);
    one.dispose();
    const off = await loadNnunet(folder, { postprocessing: false });
    t.is(off.config.postprocessing, undefined);
    off.dispose();
    const other = await loadNnunet(folder, { folds: [0], postprocessing: fx.file("postprocessing/regions.json") });
    t.deepEqual(other.config.postprocessing, {
      largestOf: [
        [1, 5],
        [1, 5, 3],
      ],
      connectivity: 26,
    });
    other.dispose();
    // a hostile file is refused before any checkpoint is read
    await t.throwsAsync(loadNnunet(folder, { postprocessing: fx.file("postprocessing/hostile.pkl") }), { message: /posix\.system/ });
    await t.throwsAsync(loadNnunet(folder, { postprocessing: 3 as never }), { message: /options\.postprocessing/ });
  },
);

test("a small post-processing pickle naming one list many times over (memo) is refused at once, not walked N² times", async (t) => {
  // ([remove_all_but_largest_component_from_segmentation], [{"labels_or_regions": [L] * N}]), L = [1] * N:
  // 4N bytes; walking it whole would take N² = 4·10^8 steps
  const N = 20000;
  const parts: number[] = [0x80, 2, 0x5d, 0x28];
  const ascii = (s: string) => [...s].map((c) => c.charCodeAt(0));
  parts.push(0x63, ...ascii("nnunetv2.postprocessing.remove_connected_components\nremove_all_but_largest_component_from_segmentation\n"));
  parts.push(0x65, 0x5d, 0x28, 0x7d); // APPENDS, the kwargs list, MARK, {}
  const key = ascii("labels_or_regions");
  parts.push(0x58, key.length, 0, 0, 0, ...key);
  parts.push(0x5d, 0x28); // L = [1] * N, memoised as 0
  for (let i = 0; i < N; i++) parts.push(0x4b, 1);
  parts.push(0x65, 0x71, 0, 0x30, 0x5d, 0x28); // APPENDS, BINPUT 0, POP; the outer list
  for (let i = 0; i < N; i++) parts.push(0x68, 0);
  parts.push(0x65, 0x73, 0x65, 0x86, 0x2e); // APPENDS, SETITEM, APPENDS, TUPLE2, STOP
  const d = tmp();
  writeFileSync(join(d, "memo.pkl"), Uint8Array.from(parts));
  const t0 = performance.now();
  await t.throwsAsync(readNnunetPostprocessing(join(d, "memo.pkl"), CLASSES), { message: /more than 4096 labels and regions/ });
  t.true(performance.now() - t0 < 2000, `${performance.now() - t0} ms`);
  // numpy floats are not labels
  const f = [
    0x80,
    2,
    0x5d,
    0x28,
    0x63,
    ...ascii("nnunetv2.postprocessing.remove_connected_components\nremove_all_but_largest_component_from_segmentation\n"),
    0x65,
  ];
  f.push(0x5d, 0x28, 0x7d, 0x58, key.length, 0, 0, 0, ...key);
  f.push(
    0x63,
    ...ascii("numpy.core.multiarray\nscalar\n"),
    0x63,
    ...ascii("numpy\ndtype\n"),
    0x58,
    2,
    0,
    0,
    0,
    ...ascii("f8"),
    0x89,
    0x88,
    0x87,
    0x52,
  ); // dtype('f8', False, True)
  f.push(0x43, 8, 0, 0, 0, 0, 0, 0, 0, 0x40, 0x86, 0x52); // SHORT_BINBYTES 2.0, TUPLE2, REDUCE
  f.push(0x73, 0x65, 0x86, 0x2e);
  writeFileSync(join(d, "float.pkl"), Uint8Array.from(f));
  await t.throwsAsync(readNnunetPostprocessing(join(d, "float.pkl"), CLASSES), { message: /not an integer label/ });
});
