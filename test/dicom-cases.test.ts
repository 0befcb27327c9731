/**
 * The extra DICOM cases of test/fixtures/dicom-extra (made by its make_cases.py from shared case A):
 * descending InstanceNumbers, big endian, implicit VR, a localizer in the series, JPEG-LS — each equal to
 * dcm2niix's NIfTI in world space — and gantry tilt, a missing slice and mixed image sizes, which
 * dcm2niix resamples or splits and bhsd refuses with a message that says which.
 */
import test from "ava";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { listDicomSeries, readDicomSeries } from "../lib/io/dicom.js";
import { readNifti } from "../lib/io/nifti.js";
import { compareWorld } from "./dicom-helpers.js";
import { ROOT } from "./paths.js";

const DIR = join(ROOT, "test", "fixtures", "dicom-extra");
const manifest = JSON.parse(readFileSync(join(DIR, "manifest.json"), "utf8")) as {
  cases: { case: string; folder: string; dcm2niix: { outputs: string[] } }[];
};
const caseOf = (name: string) => manifest.cases.find((c) => c.case === name)!;

for (const name of ["J_descending", "K_big_endian", "L_implicit", "O_localizer", "Q_jpeg_ls", "R_normal_to_feet"]) {
  test(`${name}: equals dcm2niix's NIfTI in world space`, async (t) => {
    const c = caseOf(name);
    const vol = await readDicomSeries(join(DIR, c.folder));
    // dcm2niix's main output (a second, suffixed file holds the localizer in O).
    // Q: this dcm2niix cannot decode JPEG-LS; its reference is DCMTK's dcmdjpls decoding converted by dcm2niix.
    const outputs = (c as { reference_via_dcmdjpls?: { outputs: string[] } }).reference_via_dcmdjpls?.outputs ?? c.dcm2niix.outputs;
    const ref = await readNifti(join(DIR, outputs.filter((o) => o.endsWith(".nii.gz")).sort((a, b) => a.length - b.length)[0]!));
    const cmp = compareWorld(vol, ref, ref.meta!.scaled ? 1 : ref.meta!.sclSlope || 1, ref.meta!.scaled ? 0 : ref.meta!.sclInter);
    t.deepEqual(vol.dims, [88, 100, 8]);
    t.true(cmp.sameCount);
    t.true(cmp.nonInteger < 1e-4);
    t.is(cmp.outside, 0);
    t.true(cmp.worldMm <= 1e-4, `affine within 1e-4 mm (${cmp.worldMm})`);
    t.is(cmp.maxDiff, 0);
    if (name === "O_localizer") t.deepEqual(vol.dicom.warnings, ["1 localizer image(s) left out"]);
  });
}

const refusals: [string, RegExp][] = [
  ["M_gantry_tilt", /has gantry tilt: the slice positions step 15\.00° off the slice normal \(GantryDetectorTilt 15°\)/],
  ["N_missing_slice", /has missing slices: gaps between slice positions range from 5\.000 to 10\.000 mm/],
  ["P_mixed_sizes", /mixes image sizes: 4 × \(88×100, .*\); 4 × \(88×50, /],
];
for (const [name, re] of refusals) {
  test(`${name}: refused with a message that says why; listDicomSeries reports the same problem`, async (t) => {
    const c = caseOf(name);
    const e = await t.throwsAsync(readDicomSeries(join(DIR, c.folder)));
    t.regex(e!.message, re);
    const list = await listDicomSeries(join(DIR, c.folder));
    t.is(list.length, 1);
    t.regex(list[0]!.problem ?? "", re);
  });
}
