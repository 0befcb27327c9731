/**
 * nnU-Net v2's region-based models: dataset.json labels as regions, one sigmoid output per region,
 * the label by regions_class_order — against nnU-Net's own LabelManager and resampling
 * (test/fixtures/nnunet-regions/make.py).
 */
import test from "ava";
import { createHash } from "node:crypto";
import { cpSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { loadNnunet, readNpy, segment, setBackend, volumeFromArray } from "../lib/index.js";
import { backendsUnderTest, ROOT } from "./helpers.js";
import { compareLabels as compare } from "./ort.js";

const DIR = join(ROOT, "test", "fixtures", "nnunet-regions");
const FOLDER = join(DIR, "Dataset502_PhantomRegions", "nnUNetTrainer__nnUNetPlans__3d_fullres");
const backends = backendsUnderTest();
const SUMS = new Map(
  readFileSync(join(DIR, "SHA256SUMS"), "utf8")
    .trim()
    .split("\n")
    .map((l) => l.split(/\s+/).reverse() as [string, string]),
);
function fixture(file: string): Buffer {
  const bytes = readFileSync(join(DIR, file));
  if (createHash("sha256").update(bytes).digest("hex") !== SUMS.get(file)) throw new Error(`${file} differs from its SHA256SUMS`);
  return bytes;
}
const npy = (name: string) => readNpy(new Uint8Array(fixture(`${name}.npy`)));

test("a region-based folder: 3 sigmoid heads, the regions' values and names in the config", async (t) => {
  for (const f of ["plans.json", "dataset.json", "fold_0/checkpoint_final.pth"])
    t.truthy(fixture(`Dataset502_PhantomRegions/nnUNetTrainer__nnUNetPlans__3d_fullres/${f}`));
  const m = await loadNnunet(FOLDER);
  try {
    t.is(m.architecture.numClasses, 3);
    t.deepEqual(m.config.regions, [1, 2, 5]);
    t.deepEqual(m.config.classes, { "0": "background", "1": "hemorrhage", "2": "IPH", "5": "SDH" });
  } finally {
    m.dispose();
  }
});

for (const { name: backend } of backends)
  test.serial(`${backend}: segment with a region-based model gives nnU-Net's labels; an ensemble of it with itself too`, async (t) => {
    setBackend(backend);
    const [ct, want, margin] = await Promise.all(["ct", "labels", "margin"].map(npy));
    const vol = volumeFromArray(ct!.data as Float32Array, ct!.shape, [5, 0.45, 0.45]);
    const m = await loadNnunet(FOLDER);
    try {
      const { labels, report } = await segment(vol, m, { cleanup: false });
      const { compared, differ } = compare(labels.data, want!.data as Uint8Array, margin!.data as Float32Array);
      t.true(compared > 0.99 * labels.data.length, `${compared} compared`);
      t.is(differ, 0);
      t.deepEqual(Object.keys(report.perClass), ["1", "2", "5"]);
      t.true(report.perClass["5"]!.voxels > 1000 && report.perClass["2"]!.voxels > 1000);
      // nnUNetv2_ensemble: the members' sigmoid probabilities averaged, then thresholded in order
      const ens = await segment(vol, [m, m], { cleanup: false });
      t.is(compare(ens.labels.data, want!.data as Uint8Array, margin!.data as Float32Array).differ, 0);
    } finally {
      m.dispose();
    }
  });

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
    await t.throwsAsync(segment(vol, [m, other]), { instanceOf: TypeError, message: /model\[1\]\.config\.(classes|regions)/ });
    other.dispose();
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
    writeFileSync(join(dir, "dataset.json"), JSON.stringify({ ...ds, labels: { background: 0, bad: [1, "x"] } }));
    await t.throwsAsync(loadNnunet(dir), { message: /label "bad" has value \[1,"x"\], not a label value/ });
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
  const { normalizeConfig } = await import("../lib/model/config.js");
  t.throws(() => normalizeConfig({ regions: [0, 1] }, "argument"), { message: /regions must list 1 to 255 label values/ });
  t.throws(() => normalizeConfig({ regions: [1], aggregate: "probabilities" }, "argument"), { message: /aggregate must be "logits"/ });
});
