/**
 * The command line on DICOM: `bhsd info` on a folder of two series lists both (UIDs from the fixture
 * manifest); `bhsd segment <dicom folder> --out labels.nii.gz --out-seg seg.dcm` writes a SEG whose
 * voxels, read by pydicom and placed by pydicom's own reading of the source series, equal the NIfTI
 * labels of the same run; --out-seg on a NIfTI CT is refused before any work.
 * Runs the TypeScript entry point through tsx (the compiled dist/ is built by npm test for cli.test.ts).
 */
import test from "ava";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { readNifti, writeNifti } from "../lib/io/nifti.js";
import { DICOM_FIXTURES, pydicomPython, runPython } from "./dicom-helpers.js";
import { bhsdSync } from "./helpers.js";
import { ROOT } from "./paths.js";

const tmp = mkdtempSync(join(tmpdir(), "bhsd-dcmcli-"));
test.after.always(() => rmSync(tmp, { recursive: true, force: true }));
const cli = (args: string[]) => bhsdSync(args, 110_000);

test("bhsd info on a folder of two series lists them; on one series describes the volume", (t) => {
  t.timeout(240_000);
  const man = JSON.parse(readFileSync(join(DICOM_FIXTURES, "manifest.json"), "utf8")) as {
    cases: { case: string; series: { series_instance_uid: string }[] }[];
  };
  const r = cli(["info", join(DICOM_FIXTURES, "cases", "I_two_series")]);
  t.is(r.status, 0, r.stderr);
  for (const s of man.cases.find((c) => c.case === "I")!.series) t.true(r.stdout.includes(s.series_instance_uid));
  t.regex(r.stdout, /2 DICOM series/);
  const one = cli(["info", "--json", join(DICOM_FIXTURES, "cases", "E_jpeg_lossless")]);
  t.is(one.status, 0, one.stderr);
  const j = JSON.parse(one.stdout) as { dims: number[]; spacing: number[]; dicom: { transferSyntaxUid: string } };
  t.deepEqual(j.dims, [88, 100, 20]);
  t.deepEqual(j.spacing, [2, 2, 5]);
  t.is(j.dicom.transferSyntaxUid, "1.2.840.10008.1.2.4.70");
  t.false(one.stdout.includes("FIXT-"), "no patient ID printed");
});

test("--out-seg with a NIfTI CT is refused before the model runs", (t) => {
  t.timeout(240_000);
  const r = cli([
    "segment",
    join(DICOM_FIXTURES, "reference", "A_axial", "2_Head_5mm.nii.gz"),
    "--model",
    join(ROOT, "models", "demo.onnx"),
    "--out-seg",
    join(tmp, "x.dcm"),
    "--quiet",
  ]);
  t.not(r.status, 0);
  t.regex(r.stderr, /--out-seg needs a DICOM CT/);
  t.false(existsSync(join(tmp, "x.dcm")));
});

const PY = `
import json, sys, os, glob, pydicom, numpy as np
seg = pydicom.dcmread(sys.argv[1])
src = [pydicom.dcmread(f) for f in sorted(glob.glob(os.path.join(sys.argv[2], "*")))]
iop = np.array([float(x) for x in src[0].ImageOrientationPatient]); n = np.cross(iop[:3], iop[3:])
src.sort(key=lambda d: float(np.dot(n, [float(x) for x in d.ImagePositionPatient])))
k_of = {d.SOPInstanceUID: k for k, d in enumerate(src)}
px = seg.pixel_array
if px.ndim == 2: px = px[None]
label_of = {int(s.SegmentNumber): s.SegmentLabel for s in seg.SegmentSequence}
out = []
for f, item in enumerate(seg.PerFrameFunctionalGroupsSequence):
    k = k_of[item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID]
    name = label_of[int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber)]
    rr, cc = np.nonzero(px[f])
    out += [[name, c, r, k] for r, c in zip(rr.tolist(), cc.tolist())]
print(json.dumps(out))
`;

(pydicomPython() ? test : test.skip)(
  "bhsd segment <dicom folder> --out-seg: the SEG holds the same voxels as the NIfTI labels",
  async (t) => {
    t.timeout(240_000);
    const dir = join(DICOM_FIXTURES, "cases", "H_oblique");
    const lab = join(tmp, "labels.nii.gz"),
      seg = join(tmp, "seg.dcm");
    const r = cli(["segment", dir, "--model", join(ROOT, "models", "demo.onnx"), "--out", lab, "--out-seg", seg, "--quiet"]);
    t.is(r.status, 0, r.stderr);
    const labels = await readNifti(lab);
    const names: Record<string, number> = { EDH: 1, IPH: 2, IVH: 3, SAH: 4, SDH: 5 };
    const voxels = runPython<[string, number, number, number][]>(PY, [seg, dir]);
    const [nx, ny] = labels.dims;
    const got = new Uint8Array(labels.data.length);
    for (const [name, c, row, k] of voxels) got[c + nx * (ny - 1 - row + ny * k)] = names[name]!;
    let diff = 0,
      nonzero = 0;
    for (let i = 0; i < got.length; i++) {
      if (got[i] !== Number(labels.data[i])) diff++;
      if (got[i]) nonzero++;
    }
    t.true(nonzero > 0, "the demo model finds blood in the fixture's head");
    t.is(diff, 0);
  },
);

test("bhsd evaluate --html --ct <dicom folder>: the CT read from DICOM under labels on dcm2niix's grid", async (t) => {
  t.timeout(240_000);
  const ref = await readNifti(join(DICOM_FIXTURES, "reference", "A_axial", "2_Head_5mm.nii.gz"));
  const lab = new Uint8Array(ref.data.length);
  for (let i = 0; i < lab.length; i += 97) lab[i] = 2;
  const gt = join(tmp, "gt.nii.gz");
  await writeNifti(gt, { data: lab, dims: ref.dims, spacing: ref.spacing, affine: ref.affine });
  const html = join(tmp, "eval.html");
  const r = cli(["evaluate", "--gt", gt, "--pred", gt, "--ct", join(DICOM_FIXTURES, "cases", "A_axial"), "--html", html]);
  t.is(r.status, 0, r.stderr);
  t.true(readFileSync(html, "utf8").includes("<html"));
});

(pydicomPython() ? test : test.skip)("--out-seg over a series whose UID a SEG cannot hold is refused before the model loads", (t) => {
  t.timeout(240_000);
  // the fixture's series, its SeriesInstanceUID given a control character by pydicom (the reader
  // keeps it; a SEG cannot write it): before, the model ran and the write failed at the end
  const dir = join(tmp, "bad-uid");
  runPython<string>(
    `
import glob, json, os, shutil, sys, warnings, pydicom
warnings.simplefilter("ignore")
shutil.copytree(sys.argv[1], sys.argv[2])
for f in glob.glob(os.path.join(sys.argv[2], "*")):
    d = pydicom.dcmread(f); d.SeriesInstanceUID = "1.2.3\\x01.4"; d.save_as(f)
print(json.dumps("ok"))
`,
    [join(DICOM_FIXTURES, "cases", "A_axial"), dir],
  );
  // (a model that is not one: loading it would fail with another message)
  const model = join(tmp, "not-a-model.onnx");
  writeFileSync(model, "not an ONNX model");
  const lab = join(tmp, "bad-uid.nii.gz"),
    seg = join(tmp, "bad-uid.dcm");
  const r = cli(["segment", dir, "--model", model, "--out", lab, "--out-seg", seg, "--quiet"]);
  t.not(r.status, 0);
  t.regex(r.stderr, /a DICOM SEG cannot reference the series of .*seriesInstanceUid but received string "1\.2\.3\\u0001\.4"/);
  t.false(existsSync(lab));
  t.false(existsSync(seg));
});
