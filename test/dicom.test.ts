/**
 * readDicomSeries / listDicomSeries against outside references: dcm2niix's NIfTI conversion of every
 * fixture series (voxels compared in world space through both affines, affines within 1e-4 mm), the
 * fixture manifest (geometry and a sha256 of the source HU volume, written by pydicom), and pydicom's
 * own reading of its test files (where pydicom is installed).
 */
import test from "ava";
import { readFileSync, readdirSync } from "node:fs";
import { join } from "node:path";
import { listDicomSeries, readDicomSeries } from "../lib/io/dicom.js";
import { readNifti } from "../lib/io/nifti.js";
import { compareWorld, DICOM_FIXTURES, dicomOrderSha256, pydicomPython, runPython } from "./dicom-helpers.js";

interface ManifestSeries {
  series_number: number;
  series_description: string;
  series_instance_uid: string;
  n_files: number;
  dims_xyz: [number, number, number];
  spacing_xyz_mm: [number, number, number];
  affine_ras: number[][];
  hu_min: number;
  hu_max: number;
  hu_sha256_int16le_slice_row_col: string;
  instance_numbers_in_slice_order: number[];
}
interface ManifestCase {
  case: string;
  folder: string;
  transfer_syntax: { uid: string };
  series: ManifestSeries[];
  dcm2niix: { outputs: string[] };
}

const manifest = JSON.parse(readFileSync(join(DICOM_FIXTURES, "manifest.json"), "utf8")) as { cases: ManifestCase[] };

for (const c of manifest.cases) {
  for (const s of c.series) {
    test(`case ${c.case} (${c.folder}) series ${s.series_number}: equals dcm2niix's NIfTI in world space`, async (t) => {
      const vol = await readDicomSeries(
        join(DICOM_FIXTURES, c.folder),
        c.series.length > 1 ? { seriesUid: s.series_instance_uid } : undefined,
      );
      const refPath = c.dcm2niix.outputs.find((o) => o.endsWith(".nii.gz") && o.includes(`/${s.series_number}_`));
      t.truthy(refPath, "dcm2niix output for the series");
      const ref = await readNifti(join(DICOM_FIXTURES, refPath!));
      const slope = ref.meta!.scaled ? 1 : ref.meta!.sclSlope || 1;
      const inter = ref.meta!.scaled ? 0 : ref.meta!.sclInter;
      t.deepEqual(vol.dims, s.dims_xyz);
      const cmp = compareWorld(vol, ref, slope, inter);
      t.true(cmp.sameCount, "same number of voxels");
      t.true(cmp.nonInteger < 1e-4, `index map is a permutation (off by ${cmp.nonInteger})`);
      t.is(cmp.outside, 0, "every reference voxel lands inside the volume");
      t.true(cmp.worldMm <= 1e-4, `affines agree within 1e-4 mm (worst ${cmp.worldMm} mm)`);
      t.is(cmp.maxDiff, 0, "HU equal voxel for voxel");
      // The manifest's source volume (written by pydicom): geometry and a hash of the HU.
      for (let r = 0; r < 3; r++) for (let k = 0; k < 4; k++) t.true(Math.abs(vol.affine[r * 4 + k]! - rasFlipped(s, r, k)) < 1e-4);
      t.is(dicomOrderSha256(vol), s.hu_sha256_int16le_slice_row_col);
      t.is(vol.data.constructor, Int16Array, "int16 when the rescale is exact");
      for (let a = 0; a < 3; a++) t.true(Math.abs(vol.spacing[a]! - s.spacing_xyz_mm[a]!) < 1e-6);
      t.is(vol.dicom.seriesInstanceUid, s.series_instance_uid);
      t.is(vol.dicom.instances.length, s.n_files);
    });
  }
}

/** The manifest's RAS affine is for (column, row, slice); ours runs j against the rows (dcm2niix's order). */
function rasFlipped(s: ManifestSeries, r: number, k: number): number {
  const a = s.affine_ras;
  if (k === 1) return -a[r]![1]!;
  if (k === 3) return a[r]![3]! + (s.dims_xyz[1] - 1) * a[r]![1]!;
  return a[r]![k]!;
}

test("listDicomSeries describes both series of a mixed folder; reading it without seriesUid names them", async (t) => {
  const c = manifest.cases.find((x) => x.case === "I")!;
  const list = await listDicomSeries(join(DICOM_FIXTURES, c.folder));
  t.is(list.length, 2);
  for (const s of c.series) {
    const got = list.find((x) => x.seriesInstanceUid === s.series_instance_uid)!;
    t.truthy(got);
    t.is(got.seriesNumber, s.series_number);
    t.is(got.seriesDescription, s.series_description);
    t.is(got.modality, "CT");
    t.is(got.files, s.n_files);
    t.deepEqual(got.dims, s.dims_xyz);
    t.deepEqual(got.spacing, s.spacing_xyz_mm);
    t.is(got.problem, null);
    t.is(got.transferSyntaxUid, c.transfer_syntax.uid);
  }
  const e = await t.throwsAsync(readDicomSeries(join(DICOM_FIXTURES, c.folder)));
  t.regex(e!.message, /holds 2 series; choose one with options\.seriesUid/);
  for (const s of c.series) t.true(e!.message.includes(s.series_instance_uid));
  t.false(/Fixture\^|FIXT-/.test(e!.message), "no patient name or ID in the message");
  const e2 = await t.throwsAsync(readDicomSeries(join(DICOM_FIXTURES, c.folder), { seriesUid: "1.2.3" }));
  t.regex(e2!.message, /no series with SeriesInstanceUID 1\.2\.3/);
});

test("slice order comes from the positions: a shuffled list of paths, and of bytes, reads as the folder does", async (t) => {
  const c = manifest.cases.find((x) => x.case === "B")!;
  const dir = join(DICOM_FIXTURES, c.folder);
  const names = readdirSync(dir).reverse();
  const byPath = await readDicomSeries(names.map((n) => join(dir, n)));
  const byBytes = await readDicomSeries(names.map((n) => ({ name: n, bytes: readFileSync(join(dir, n)) })));
  const s = c.series[0]!;
  t.is(dicomOrderSha256(byPath), s.hu_sha256_int16le_slice_row_col);
  t.is(dicomOrderSha256(byBytes), s.hu_sha256_int16le_slice_row_col);
  t.deepEqual(byBytes.affine, byPath.affine);
});

test("option and argument validation names the argument", async (t) => {
  await t.throwsAsync(readDicomSeries(""), { message: /pathOrFiles/ });
  await t.throwsAsync(readDicomSeries([]), { message: /pathOrFiles/ });
  await t.throwsAsync(readDicomSeries([42 as unknown as string]), { message: /pathOrFiles\[0\]/ });
  await t.throwsAsync(readDicomSeries(DICOM_FIXTURES, { seriesUid: 7 as unknown as string }), { message: /options\.seriesUid/ });
  await t.throwsAsync(readDicomSeries(DICOM_FIXTURES, { maxBytes: -1 }), { message: /options\.maxBytes/ });
  await t.throwsAsync(readDicomSeries(join(DICOM_FIXTURES, "no-such-folder")), { message: /cannot be read \(ENOENT\)/ });
  await t.throwsAsync(readDicomSeries(join(DICOM_FIXTURES, "cases", "A_axial"), { maxBytes: 1000 }), {
    message: /options\.maxBytes = 1000/,
  });
});

// ---------------------------------------------------------------------------------------------
// pydicom's own test files, read as pydicom reads them (where Debian's python3-pydicom is installed).

const PYDICOM_FILES = [
  "CT_small.dcm",
  "MR_small.dcm",
  "MR_small_implicit.dcm",
  "MR_small_bigendian.dcm",
  "MR_small_expb.dcm",
  "MR_small_RLE.dcm",
  "MR_small_padded.dcm",
  "MR_small_jp2klossless.dcm",
  "693_J2KI.dcm",
];

const PY_READ = `
import json, sys, os, pydicom, numpy as np
d = os.path.join(os.path.dirname(pydicom.__file__), "data", "test_files")
out = {}
for f in sys.argv[1:]:
    ds = pydicom.dcmread(os.path.join(d, f))
    a = ds.pixel_array.astype(np.float64) * float(ds.get("RescaleSlope", 1)) + float(ds.get("RescaleIntercept", 0))
    out[f] = {"path": os.path.join(d, f), "rows": int(ds.Rows), "cols": int(ds.Columns),
              "hu": a[::-1, :].ravel().tolist(),
              "ipp": [float(x) for x in ds.ImagePositionPatient], "iop": [float(x) for x in ds.ImageOrientationPatient],
              "ps": [float(x) for x in ds.PixelSpacing], "ts": str(ds.file_meta.TransferSyntaxUID)}
print(json.dumps(out))
`;

const hasPydicom = pydicomPython() !== null;
(hasPydicom ? test : test.skip)(
  "pydicom's test files (CT_small, MR_small in implicit VR, big endian, RLE, padded, JPEG 2000; a 512×512 JPEG 2000 CT) read as pydicom reads them",
  async (t) => {
    const ref = runPython<
      Record<string, { path: string; rows: number; cols: number; hu: number[]; ipp: number[]; iop: number[]; ps: number[]; ts: string }>
    >(PY_READ, PYDICOM_FILES);
    for (const f of PYDICOM_FILES) {
      const r = ref[f]!;
      const v = await readDicomSeries(r.path);
      t.deepEqual(v.dims, [r.cols, r.rows, 1], f);
      t.is(v.dicom.transferSyntaxUid, r.ts, f);
      let maxDiff = 0;
      for (let i = 0; i < r.hu.length; i++) maxDiff = Math.max(maxDiff, Math.abs(Number(v.data[i]) - r.hu[i]!));
      t.is(maxDiff, 0, `${f}: HU equal to pydicom's pixel_array × slope + intercept`);
      // Geometry from pydicom's attributes: i along IOP[0:3]·PixelSpacing[1], j against the rows, LPS → RAS.
      const [dr, dc] = r.ps;
      const origin = [0, 1, 2].map((a) => r.ipp[a]! + (r.rows - 1) * dr! * r.iop[3 + a]!);
      const sign = [-1, -1, 1];
      for (let a = 0; a < 3; a++) {
        t.true(Math.abs(v.affine[a * 4]! - sign[a]! * r.iop[a]! * dc!) < 1e-6, `${f} affine[${a}][0]`);
        t.true(Math.abs(v.affine[a * 4 + 1]! + sign[a]! * r.iop[3 + a]! * dr!) < 1e-6, `${f} affine[${a}][1]`);
        t.true(Math.abs(v.affine[a * 4 + 3]! - sign[a]! * origin[a]!) < 1e-4, `${f} affine[${a}][3]`);
      }
    }
  },
);

(hasPydicom ? test : test.skip)(
  "JPEG-LS lossless (CharLS): pydicom's MR_small_jpeg_ls_lossless equals pydicom's reading of the uncompressed MR_small",
  async (t) => {
    const ref = runPython<Record<string, { path: string; hu: number[] }>>(PY_READ, ["MR_small.dcm"])["MR_small.dcm"]!;
    const v = await readDicomSeries(ref.path.replace(/MR_small\.dcm$/, "MR_small_jpeg_ls_lossless.dcm"));
    t.is(v.dicom.transferSyntaxUid, "1.2.840.10008.1.2.4.80");
    let maxDiff = 0;
    for (let i = 0; i < ref.hu.length; i++) maxDiff = Math.max(maxDiff, Math.abs(Number(v.data[i]) - ref.hu[i]!));
    t.is(maxDiff, 0);
  },
);

(hasPydicom ? test : test.skip)("pydicom's truncated and unsupported test files are refused with the reason", async (t) => {
  const d = runPython<{ dir: string }>(
    `import json, os, pydicom; print(json.dumps({"dir": os.path.join(os.path.dirname(pydicom.__file__), "data", "test_files")}))`,
  ).dir;
  await t.throwsAsync(readDicomSeries(join(d, "MR_truncated.dcm")), { message: /MR_truncated\.dcm: is truncated/ });
  await t.throwsAsync(readDicomSeries(join(d, "JPEG-lossy.dcm")), { message: /1\.2\.840\.10008\.1\.2\.4\.51 \(JPEG Extended \(lossy\)\)/ });
  await t.throwsAsync(readDicomSeries(join(d, "ExplVR_BigEnd.dcm")), { message: /SamplesPerPixel 3/ });
  // Deflated Explicit VR Little Endian: inflated and parsed (its series UID is read), then refused for its lack of geometry.
  await t.throwsAsync(readDicomSeries(join(d, "image_dfl.dcm")), {
    message: /series 1\.3\.6\.1\.4\.1\.5962\.1\.3\.0\.0\.977067310\.6001\.0 file .*image_dfl\.dcm has no valid ImageOrientationPatient/,
  });
});
