/**
 * `bhsd phantom --dicom`: the CT of each case also as a DICOM CT series, checked by tools outside
 * the project — dcm2niix converts it back to the phantom's voxels and affine (within 1e-4 mm);
 * pydicom reads every file as a CT Image (explicit VR little endian, int16, slope 1, "PHANTOM"
 * placeholders) whose pixels, placed by pydicom-side geometry (IPP/IOP/PixelSpacing), are the
 * phantom's voxels; dicom3tools' dciodvfy finds no error in the CT Image IOD — and readDicomSeries
 * reads it back equal; `bhsd segment <that folder> --out-seg` writes a SEG over it.
 * The phantom's reference is the NIfTI the same run wrote (images/<case>.nii.gz; the NIfTI reader
 * is checked against nibabel elsewhere). Skips say which tool is missing.
 */
import test from "ava";
import { spawnSync } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { readDicomSeries } from "../lib/io/dicom.js";
import { writeDicomSeries } from "../lib/io/dicom-write.js";
import { readNifti } from "../lib/io/nifti.js";
import type { Volume } from "../lib/types.js";
import { compareWorld, pydicomPython, runPython } from "./dicom-helpers.js";
import { bhsdSync } from "./helpers.js";
import { ROOT } from "./paths.js";

const tmp = mkdtempSync(join(tmpdir(), "bhsd-dcmphantom-"));
test.after.always(() => rmSync(tmp, { recursive: true, force: true }));
const cli = (args: string[]) => bhsdSync(args, 170_000);
const has = (cmd: string, args: string[]) => spawnSync(cmd, args, { encoding: "utf8" }).error === undefined;
const DCM2NIIX = has("dcm2niix", ["-v"]);
const DCIODVFY = has("dciodvfy", ["-help"]);

// One phantom case with blood (seed 3's first case), at a size the demo model segments.
const OUT = join(tmp, "ph");
let written: Promise<{ name: string; dicom: string; ct: Volume }> | undefined;
function phantom() {
  written ??= (async () => {
    const r = cli([
      "phantom",
      "--out",
      OUT,
      "--cases",
      "1",
      "--seed",
      "3",
      "--dims",
      "96,112,16",
      "--spacing",
      "1.8,1.8,5",
      "--dicom",
      "--json",
    ]);
    if (r.status !== 0) throw new Error(`bhsd phantom failed: ${r.stderr}`);
    const c = (JSON.parse(r.stdout) as { cases: { name: string; dicom: string; classes: number[] }[] }).cases[0]!;
    return { name: c.name, dicom: join(OUT, c.dicom), ct: await readNifti(join(OUT, "images", `${c.name}.nii.gz`)) };
  })();
  return written;
}

test.serial("bhsd phantom --dicom writes one CT file per slice under dicom/<case>/", async (t) => {
  t.timeout(180_000);
  const p = await phantom();
  t.is(p.dicom, join(OUT, "dicom", p.name));
  t.deepEqual(
    readdirSync(p.dicom).sort(),
    Array.from({ length: 16 }, (_, k) => `IM-${String(k + 1).padStart(4, "0")}.dcm`),
  );
  t.true(existsSync(join(OUT, "images", `${p.name}.nii.gz`)), "the NIfTI layout is still written");
});

(DCM2NIIX ? test.serial : test.skip)(
  `dcm2niix converts the series back to the phantom's voxels and affine${DCM2NIIX ? "" : " (skipped: dcm2niix is not installed; apt-get install dcm2niix)"}`,
  async (t) => {
    t.timeout(180_000);
    const p = await phantom();
    const out = join(tmp, "dcm2niix");
    mkdirSync(out);
    const r = spawnSync("dcm2niix", ["-z", "y", "-f", "ct", "-o", out, p.dicom], { encoding: "utf8" });
    t.is(r.status, 0, r.stdout + r.stderr);
    const ref = await readNifti(join(out, "ct.nii.gz"));
    // dcm2niix's voxels (its scaling applied) against the phantom, voxel by voxel in world space.
    const cmp = compareWorld(p.ct, ref, ref.meta!.scaled ? 1 : ref.meta!.sclSlope || 1, ref.meta!.scaled ? 0 : ref.meta!.sclInter);
    t.true(cmp.sameCount);
    t.true(cmp.nonInteger < 1e-4, `index map a permutation/flip (${cmp.nonInteger})`);
    t.is(cmp.outside, 0);
    t.true(cmp.worldMm <= 1e-4, `affines agree within 1e-4 mm (worst ${cmp.worldMm} mm)`);
    t.is(cmp.maxDiff, 0, "voxels equal");
  },
);

const PY_CT = `
import json, sys, os, glob, pydicom, numpy as np
folder, raw, meta = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
nx, ny, nz = meta["dims"]
vol = np.fromfile(raw, dtype="<i2").reshape(nz, ny, nx)
A = np.array(meta["affine"], dtype=float).reshape(4, 4)
Ainv = np.linalg.inv(A)
out = {"files": 0, "maxDiff": 0, "maxOffGrid": 0, "outside": 0, "covered": 0, "problems": []}
seen = np.zeros(vol.shape, bool)
for f in sorted(glob.glob(os.path.join(folder, "*"))):
    d = pydicom.dcmread(f)
    out["files"] += 1
    checks = {
        "sop class": d.SOPClassUID == "1.2.840.10008.5.1.4.1.1.2" and d.file_meta.MediaStorageSOPClassUID == d.SOPClassUID,
        "instance uid": d.SOPInstanceUID == d.file_meta.MediaStorageSOPInstanceUID,
        "transfer syntax": d.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1",
        "modality": d.Modality == "CT",
        "image type": list(d.ImageType)[:2] == ["DERIVED", "SECONDARY"],
        "pixels": d.BitsAllocated == 16 and d.BitsStored == 16 and d.HighBit == 15 and d.PixelRepresentation == 1 and d.SamplesPerPixel == 1 and d.PhotometricInterpretation == "MONOCHROME2",
        "rescale": float(d.RescaleSlope) == 1.0,
        "patient": str(d.PatientName) in ("PHANTOM", "PHANTOM^") and d.PatientID == "PHANTOM" and not d.get("PatientBirthDate") and not d.get("PatientSex"),
        "uids under 2.25": all(str(u).startswith("2.25.") and len(str(u)) <= 64 for u in (d.SOPInstanceUID, d.SeriesInstanceUID, d.StudyInstanceUID, d.FrameOfReferenceUID)),
    }
    out["problems"] += [f"{os.path.basename(f)}: {k}" for k, ok in checks.items() if not ok]
    px = d.pixel_array
    if px.dtype != np.int16 or px.shape != (d.Rows, d.Columns):
        out["problems"].append(f"{os.path.basename(f)}: pixel_array {px.dtype} {px.shape}")
        continue
    hu = px.astype(float) * float(d.RescaleSlope) + float(d.RescaleIntercept)
    ipp = np.array([float(x) for x in d.ImagePositionPatient]); iop = np.array([float(x) for x in d.ImageOrientationPatient])
    dr, dc = [float(x) for x in d.PixelSpacing]
    r, c = np.mgrid[0:d.Rows, 0:d.Columns]
    lps = ipp[None, None, :] + c[..., None] * dc * iop[None, None, :3] + r[..., None] * dr * iop[None, None, 3:]
    ras = lps * np.array([-1, -1, 1])
    ijk = np.einsum("ab,rcb->rca", Ainv[:3, :3], ras) + Ainv[:3, 3]
    idx = np.rint(ijk).astype(int)
    out["maxOffGrid"] = max(out["maxOffGrid"], float(np.abs(ijk - idx).max()))
    ok = (idx >= 0).all(-1) & (idx < np.array([nx, ny, nz])).all(-1)
    out["outside"] += int((~ok).sum())
    i, j, k = idx[ok].T
    seen[k, j, i] = True
    out["maxDiff"] = max(out["maxDiff"], float(np.abs(vol[k, j, i] - hu[ok]).max()))
out["covered"] = int(seen.sum())
print(json.dumps(out))
`;

(pydicomPython() ? test.serial : test.skip)(
  `pydicom reads every file as a CT Image whose pixels, placed by its own geometry, are the phantom's${pydicomPython() ? "" : " (skipped: pydicom is not installed; apt-get install python3-pydicom)"}`,
  async (t) => {
    t.timeout(180_000);
    const p = await phantom();
    const raw = join(tmp, "phantom.i16");
    writeFileSync(raw, new Uint8Array(p.ct.data.buffer, p.ct.data.byteOffset, p.ct.data.byteLength));
    t.is(p.ct.data.constructor, Int16Array);
    const r = runPython<{ files: number; maxDiff: number; maxOffGrid: number; outside: number; covered: number; problems: string[] }>(
      PY_CT,
      [p.dicom, raw, JSON.stringify({ dims: p.ct.dims, affine: p.ct.affine })],
    );
    t.is(r.files, 16);
    t.deepEqual(r.problems, []);
    t.true(r.maxOffGrid < 1e-4, `every pixel on a phantom voxel centre (off by ${r.maxOffGrid})`);
    t.is(r.outside, 0);
    t.is(r.covered, p.ct.data.length, "every phantom voxel is in some file");
    t.is(r.maxDiff, 0, "HU equal");
  },
);

(DCIODVFY ? test.serial : test.skip)(
  `dciodvfy finds no error in the CT Image IOD${DCIODVFY ? "" : " (skipped: dicom3tools is not installed; apt-get install dicom3tools)"}`,
  async (t) => {
    t.timeout(180_000);
    const p = await phantom();
    for (const f of readdirSync(p.dicom).sort()) {
      const r = spawnSync("dciodvfy", [join(p.dicom, f)], { encoding: "utf8" });
      const text = r.stdout + r.stderr;
      t.regex(text, /CTImage/, `${f}: verified as a CT Image`);
      t.deepEqual(
        text.split("\n").filter((l) => /^Error/.test(l)),
        [],
        `${f}: no errors`,
      );
    }
  },
);

test.serial("readDicomSeries reads the written series back equal to the phantom", async (t) => {
  t.timeout(180_000);
  const p = await phantom();
  const v = await readDicomSeries(p.dicom);
  const cmp = compareWorld(v, p.ct);
  t.true(cmp.sameCount);
  t.true(cmp.nonInteger < 1e-4);
  t.is(cmp.outside, 0);
  t.true(cmp.worldMm <= 1e-4, `affines agree within 1e-4 mm (worst ${cmp.worldMm} mm)`);
  t.is(cmp.maxDiff, 0);
  t.is(v.dicom.modality, "CT");
  t.deepEqual(v.dicom.imageOrientationPatient, [1, 0, 0, 0, 1, 0], "axial, radiological: rows to the patient's left, columns posterior");
  t.is(v.dicom.studyAttributes?.PatientID, "PHANTOM");
});

test.serial("bhsd segment <the phantom's DICOM folder> --out-seg writes a SEG over its series", async (t) => {
  t.timeout(300_000);
  const p = await phantom();
  const seg = join(tmp, "seg.dcm"),
    lab = join(tmp, "labels.nii.gz");
  const r = cli(["segment", p.dicom, "--model", join(ROOT, "models", "demo.onnx"), "--out", lab, "--out-seg", seg, "--quiet"]);
  t.is(r.status, 0, r.stderr);
  t.true(existsSync(seg), `the demo model finds blood in the phantom and a SEG is written (${r.stderr})`);
  const series = await readDicomSeries(p.dicom);
  if (pydicomPython()) {
    const info = runPython<{ sop: string; refSeries: string; refs: string[]; frame: string }>(
      `import json, sys, pydicom
s = pydicom.dcmread(sys.argv[1])
print(json.dumps({"sop": s.SOPClassUID, "refSeries": s.ReferencedSeriesSequence[0].SeriesInstanceUID, "frame": s.FrameOfReferenceUID,
  "refs": sorted(i.ReferencedSOPInstanceUID for i in s.ReferencedSeriesSequence[0].ReferencedInstanceSequence)}))`,
      [seg],
    );
    t.is(info.sop, "1.2.840.10008.5.1.4.1.1.66.4");
    t.is(info.refSeries, series.dicom.seriesInstanceUid);
    t.is(info.frame, series.dicom.frameOfReferenceUid);
    t.deepEqual(info.refs, series.dicom.instances.map((i) => i.sopInstanceUid).sort());
  } else t.log("pydicom is not installed: the SEG's references were not read back");
});

test("writeDicomSeries refuses what a CT series cannot hold, naming the argument, before writing", async (t) => {
  const base = {
    dims: [4, 3, 2] as [number, number, number],
    spacing: [1, 1, 1] as [number, number, number],
    affine: [1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1],
  };
  const frac = { ...base, data: new Float32Array(24).fill(1.5) };
  await t.throwsAsync(writeDicomSeries(join(tmp, "w1"), frac), {
    message: /Expected an integer \(HU.* for volume\.data at voxel \(0, 0, 0\) but received number 1\.5/,
  });
  const sheared = { ...base, data: new Int16Array(24), affine: [1, 0, 0.5, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1] };
  await t.throwsAsync(writeDicomSeries(join(tmp, "w2"), sheared), {
    message: /Expected a k axis perpendicular to i and j .* for volume\.affine but received/,
  });
  const wide = { ...base, data: Int32Array.from({ length: 24 }, (_, i) => (i === 0 ? -40000 : 40000)) };
  await t.throwsAsync(writeDicomSeries(join(tmp, "w3"), wide), {
    message: /Expected values spanning at most 65535 \(16-bit words\) for volume\.data but received string "-40000 … 40000"/,
  });
  t.false(existsSync(join(tmp, "w1")) || existsSync(join(tmp, "w2")) || existsSync(join(tmp, "w3")), "nothing written");
  mkdirSync(join(tmp, "w4"));
  writeFileSync(join(tmp, "w4", "keep.txt"), "mine");
  await t.throwsAsync(writeDicomSeries(join(tmp, "w4"), { ...base, data: new Int16Array(24) }), { message: /already holds files/ });
  t.deepEqual(readdirSync(join(tmp, "w4")), ["keep.txt"]);
});

test("values beyond int16 get the intercept that makes them fit, and read back exactly", async (t) => {
  // 0 … 39997 (an unsigned CT's range) does not fit int16: the writer picks a non-zero intercept.
  const data = Int32Array.from({ length: 4 * 3 * 2 }, (_, i) => i * 1739);
  const v = {
    data,
    dims: [4, 3, 2] as [number, number, number],
    spacing: [0.7, 0.8, 3] as [number, number, number],
    affine: [-0.7, 0, 0, 10, 0, 0.8, 0, -5, 0, 0, 3, 2, 0, 0, 0, 1],
  };
  const r = await writeDicomSeries(join(tmp, "wide"), v);
  t.true(r.rescaleIntercept !== 0);
  t.false(r.columnsFlipped, "a negative-determinant affine keeps columns along i");
  const back = await readDicomSeries(join(tmp, "wide"));
  const cmp = compareWorld(back, v);
  t.is(cmp.maxDiff, 0);
  t.true(cmp.worldMm <= 1e-4);
  t.is(cmp.outside, 0);
});
