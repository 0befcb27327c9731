/**
 * nnU-Net v2's region-based models: dataset.json labels as regions, one sigmoid output per region,
 * the label by regions_class_order — against nnU-Net's own LabelManager and resampling
 * (test/fixtures/nnunet-regions/make.py).
 */
import test from "ava";
import { cpSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { loadNnunet, readNpy, segment, setBackend, volumeFromArray } from "../lib/index.js";
import { checkedFolder } from "./paths.js";
import { backendsUnderTest, ROOT } from "./helpers.js";
import { compareLabels as compare } from "./ort.js";

const DIR = join(ROOT, "test", "fixtures", "nnunet-regions");
const FOLDER = join(DIR, "Dataset502_PhantomRegions", "nnUNetTrainer__nnUNetPlans__3d_fullres");
const backends = backendsUnderTest();
const { bytes: fixture } = checkedFolder(DIR);
const npy = (name: string) => readNpy(fixture(`${name}.npy`));

test("a region-based folder: 3 sigmoid heads, the regions' values and names in the config", async (t) => {
  for (const f of ["plans.json", "dataset.json", "fold_0/checkpoint_final.pth", "fold_1/checkpoint_final.pth"])
    t.truthy(fixture(`Dataset502_PhantomRegions/nnUNetTrainer__nnUNetPlans__3d_fullres/${f}`));
  const m = await loadNnunet(FOLDER, { folds: [0] });
  try {
    t.is(m.architecture.numClasses, 3);
    t.deepEqual(m.config.regions, [1, 2, 5]);
    t.deepEqual(m.config.classes, { "0": "background", "1": "hemorrhage", "2": "IPH", "5": "SDH" });
  } finally {
    m.dispose();
  }
});

for (const { name: backend } of backends)
  test.serial(
    `${backend}: a region-based model gives nnU-Net's labels: one fold, the folds' logits, three members' sigmoids`,
    async (t) => {
      setBackend(backend);
      const [ct, want, margin] = await Promise.all(["ct", "labels", "margin"].map(npy));
      const vol = volumeFromArray(ct!.data as Float32Array, ct!.shape, [5, 0.45, 0.45]);
      const m = await loadNnunet(FOLDER, { folds: [0] });
      const m1 = await loadNnunet(FOLDER, { folds: [1] });
      const both = await loadNnunet(FOLDER);
      try {
        const { labels, report } = await segment(vol, m, { cleanup: false });
        const { compared, differ } = compare(labels.data, want!.data as Uint8Array, margin!.data as Float32Array);
        t.true(compared > 0.99 * labels.data.length, `${compared} compared`);
        t.is(differ, 0);
        t.deepEqual(Object.keys(report.perClass), ["1", "2", "5"]);
        t.true(report.perClass["5"]!.voxels > 1000 && report.perClass["2"]!.voxels > 1000);
        // nnU-Net's predictor: the folds' logits averaged
        const [wantF, marginF, wantE, marginE] = await Promise.all(
          ["folds01_labels", "folds01_margin", "members011_labels", "members011_margin"].map(npy),
        );
        const folds = await segment(vol, both, { cleanup: false });
        t.is(compare(folds.labels.data, wantF!.data as Uint8Array, marginF!.data as Float32Array).differ, 0);
        // nnUNetv2_ensemble: the members' sigmoid probabilities averaged, then thresholded in order (with
        // three members, 418 voxels differ from the mean of their logits)
        const ens = await segment(vol, [m, m1, m1], { cleanup: false });
        t.is(compare(ens.labels.data, wantE!.data as Uint8Array, marginE!.data as Float32Array).differ, 0);
      } finally {
        m.dispose();
        m1.dispose();
        both.dispose();
      }
    },
  );

test("region configs are checked: values in 1…255, logits aggregated, one regions_class_order entry per region", async (t) => {
  const m = await loadNnunet(FOLDER);
  try {
    const [ct] = await Promise.all(["ct"].map(npy));
    const vol = volumeFromArray(ct!.data as Float32Array, ct!.shape, [5, 0.45, 0.45]);
    // an ensemble of a region model and a label model is refused before any work
    const other = await loadNnunet(
      join(ROOT, "test", "fixtures", "nnunet-folder", "Dataset501_PhantomICH", "nnUNetTrainer__nnUNetPlans__3d_fullres"),
      {
        folds: [0],
      },
    );
    await t.throwsAsync(segment(vol, [m, other]), { instanceOf: TypeError, message: /model\[1\]\.config\.classes/ });
    other.dispose();
    // the same classes, other regions: refused too
    const swapped = { ...m, name: "swapped", run: m.run.bind(m), lastRun: undefined, config: { ...m.config, regions: [2, 1, 5] } };
    await t.throwsAsync(segment(vol, [m, swapped]), { instanceOf: TypeError, message: /model\[1\]\.config\.regions/ });
    // a region model's heads are sigmoids: no softmax ensemble of its folds
    await t.throwsAsync(loadNnunet(FOLDER, { ensemble: "softmax" }), { instanceOf: TypeError, message: /options\.ensemble/ });
  } finally {
    m.dispose();
  }
  const dir = mkdtempSync(join(tmpdir(), "bhsd-regions-"));
  try {
    cpSync(FOLDER, dir, { recursive: true });
    const ds = JSON.parse(readFileSync(join(FOLDER, "dataset.json"), "utf8")) as Record<string, unknown>;
    writeFileSync(join(dir, "dataset.json"), JSON.stringify({ ...ds, regions_class_order: [1, 2] }));
    await t.throwsAsync(loadNnunet(dir), {
      message: /needs regions_class_order, 3 label values in 1…255 \(one per region: hemorrhage, IPH, SDH\), got \[1,2\]/,
    });
    writeFileSync(join(dir, "dataset.json"), JSON.stringify(ds));
    // nnU-Net's post-processing of a region model names dataset labels (foreground_labels), some of
    // which its output never holds (3, 4): read, as nnU-Net's np.isin takes them
    writeFileSync(
      join(dir, "postprocessing.json"),
      JSON.stringify({
        postprocessing_fns: ["remove_all_but_largest_component_from_segmentation"],
        postprocessing_kwargs: [{ labels_or_regions: [1, 2, 3, 4, 5] }],
      }),
    );
    const pp = await loadNnunet(dir, { folds: [0], postprocessing: join(dir, "postprocessing.json") });
    t.deepEqual(pp.config.postprocessing, { largestOf: [[1, 2, 3, 4, 5]], connectivity: 26 });
    pp.dispose();
    writeFileSync(join(dir, "dataset.json"), JSON.stringify({ ...ds, labels: { background: 0, bad: [1, "x"] } }));
    await t.throwsAsync(loadNnunet(dir), { message: /label "bad" has value \[1,"x"\], not a label value/ });
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
  const { normalizeConfig } = await import("../lib/model/config.js");
  t.throws(() => normalizeConfig({ regions: [0, 1] }, "argument"), { message: /regions must list 1 to 255 label values/ });
  t.throws(() => normalizeConfig({ regions: [1], aggregate: "probabilities" }, "argument"), { message: /aggregate must be "logits"/ });
});
