/**
 * writeDicomSeg, checked by independent readers: pydicom reads the SEG back (frames, segments,
 * references to the source instances, frame of reference, patient/study) and the voxels it holds,
 * placed by pydicom's own reading of the source series (slices ordered by position along the normal),
 * equal the labels written; dcmtk's dciodvfy (dicom3tools) finds no error in the IOD.
 */
import test from "ava";
import { spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { readDicomSeries } from "../lib/io/dicom.js";
import { rgbToDicomLab, writeDicomSeg } from "../lib/io/dicom-seg.js";
import type { Volume } from "../lib/types.js";
import { DICOM_FIXTURES, pydicomPython, runPython } from "./dicom-helpers.js";

const tmp = mkdtempSync(join(tmpdir(), "bhsd-seg-"));
test.after.always(() => rmSync(tmp, { recursive: true, force: true }));

/** Labels with every BHSD class, blobs on a few slices each (class 3 on one slice only), nothing on others. */
function makeLabels(v: Volume): Volume<Uint8Array> {
  const [nx, ny, nz] = v.dims;
  const lab = new Uint8Array(nx * ny * nz);
  const blob = (value: number, cx: number, cy: number, k0: number, k1: number, r: number) => {
    for (let k = k0; k <= k1; k++)
      for (let j = 0; j < ny; j++)
        for (let i = 0; i < nx; i++) {
          if ((i - cx) ** 2 + (j - cy) ** 2 <= r * r) lab[i + nx * (j + ny * k)] = value;
        }
  };
  blob(1, 20, 30, 2, 4, 4);
  blob(2, 60, 70, 5, 9, 6);
  blob(3, 44, 50, 7, 7, 3);
  blob(4, 30, 75, 10, 12, 2);
  blob(5, 70, 20, 13, 15, 5);
  return { data: lab, dims: [nx, ny, nz], spacing: v.spacing, affine: v.affine };
}

const PY_SEG = `
import json, sys, os, glob, pydicom, numpy as np
seg = pydicom.dcmread(sys.argv[1])
src = [pydicom.dcmread(f) for f in sorted(glob.glob(os.path.join(sys.argv[2], "*")))]
iop = np.array([float(x) for x in src[0].ImageOrientationPatient])
normal = np.cross(iop[:3], iop[3:])
src.sort(key=lambda d: float(np.dot(normal, [float(x) for x in d.ImagePositionPatient])))
k_of = {d.SOPInstanceUID: k for k, d in enumerate(src)}
ipp_of = {d.SOPInstanceUID: [float(x) for x in d.ImagePositionPatient] for d in src}
px = seg.pixel_array
if px.ndim == 2: px = px[None]
seg_label = {int(s.SegmentNumber): s.SegmentLabel for s in seg.SegmentSequence}
voxels = []
frames = []
for f, item in enumerate(seg.PerFrameFunctionalGroupsSequence):
    ref = item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
    num = int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
    pos = [float(x) for x in item.PlanePositionSequence[0].ImagePositionPatient]
    frames.append({"segment": num, "k": k_of[ref], "posOk": bool(np.allclose(pos, ipp_of[ref], atol=1e-4)),
                   "dimIndex": [int(x) for x in item.FrameContentSequence[0].DimensionIndexValues]})
    rr, cc = np.nonzero(px[f])
    for r, c in zip(rr.tolist(), cc.tolist()):
        voxels.append([num, c, r, k_of[ref]])
rs = seg.ReferencedSeriesSequence[0]
print(json.dumps({
  "sopClass": seg.SOPClassUID, "modality": seg.Modality, "segType": seg.SegmentationType,
  "bits": [int(seg.BitsAllocated), int(seg.BitsStored)], "rows": int(seg.Rows), "cols": int(seg.Columns),
  "nFrames": int(seg.NumberOfFrames), "frames": frames, "voxels": voxels,
  "segments": [{"number": int(s.SegmentNumber), "label": s.SegmentLabel, "type": s.SegmentedPropertyTypeCodeSequence[0].CodeValue,
                "category": s.SegmentedPropertyCategoryCodeSequence[0].CodeValue, "algo": s.SegmentAlgorithmType,
                "lab": [int(x) for x in s.RecommendedDisplayCIELabValue]} for s in seg.SegmentSequence],
  "frameOfRef": [seg.FrameOfReferenceUID, src[0].FrameOfReferenceUID],
  "study": [seg.StudyInstanceUID, src[0].StudyInstanceUID],
  "patient": [str(seg.PatientID), str(src[0].PatientID), str(seg.PatientName), str(src[0].PatientName)],
  "refSeries": [rs.SeriesInstanceUID, src[0].SeriesInstanceUID],
  "refInstances": sorted(i.ReferencedSOPInstanceUID for i in rs.ReferencedInstanceSequence),
  "srcInstances": sorted(d.SOPInstanceUID for d in src),
  "newSeries": seg.SeriesInstanceUID not in (src[0].SeriesInstanceUID,),
  "ts": str(seg.file_meta.TransferSyntaxUID), "mediaSop": seg.file_meta.MediaStorageSOPInstanceUID == seg.SOPInstanceUID,
}))
`;

const hasPydicom = pydicomPython() !== null;
for (const caseFolder of ["A_axial", "H_oblique"]) {
  (hasPydicom ? test : test.skip)(
    `SEG over case ${caseFolder} read back by pydicom: segments, frames, references and voxels`,
    async (t) => {
      const dir = join(DICOM_FIXTURES, "cases", caseFolder);
      const ct = await readDicomSeries(dir);
      const labels = makeLabels(ct);
      const out = join(tmp, `${caseFolder}.dcm`);
      const res = await writeDicomSeg(out, labels, ct);
      const r = runPython<{
        sopClass: string;
        modality: string;
        segType: string;
        bits: number[];
        rows: number;
        cols: number;
        nFrames: number;
        frames: { segment: number; k: number; posOk: boolean; dimIndex: number[] }[];
        voxels: [number, number, number, number][];
        segments: { number: number; label: string; type: string; category: string; algo: string; lab: number[] }[];
        frameOfRef: string[];
        study: string[];
        patient: string[];
        refSeries: string[];
        refInstances: string[];
        srcInstances: string[];
        newSeries: boolean;
        ts: string;
        mediaSop: boolean;
      }>(PY_SEG, [out, dir]);
      t.is(r.sopClass, "1.2.840.10008.5.1.4.1.1.66.4");
      t.is(r.modality, "SEG");
      t.is(r.segType, "BINARY");
      t.deepEqual(r.bits, [1, 1]);
      t.deepEqual([r.cols, r.rows], [88, 100]);
      t.is(r.ts, "1.2.840.10008.1.2.1");
      t.true(r.mediaSop);
      t.true(r.newSeries);
      t.is(r.frameOfRef[0], r.frameOfRef[1]);
      t.is(r.study[0], r.study[1]);
      t.is(r.patient[0], r.patient[1]);
      t.is(r.patient[2], r.patient[3]);
      t.is(r.refSeries[0], r.refSeries[1]);
      t.deepEqual(r.refInstances, r.srcInstances);
      t.deepEqual(
        r.segments.map((s) => s.label),
        ["EDH", "IPH", "IVH", "SAH", "SDH"],
      );
      t.deepEqual(
        r.segments.map((s) => s.number),
        [1, 2, 3, 4, 5],
      );
      for (const s of r.segments) {
        t.is(s.type, "50960005");
        t.is(s.category, "49755003");
        t.is(s.algo, "AUTOMATIC");
      }
      // Colour: the overlay's EDH orange, as written; the conversion itself is checked on textbook values below.
      t.deepEqual(r.segments[0]!.lab, rgbToDicomLab([0xe6, 0x9f, 0x00]));
      // Frames: only slices that hold the class (3 + 5 + 1 + 3 + 3), each at its source image's position.
      t.is(r.nFrames, 15);
      t.is(res.frames, 15);
      t.true(r.frames.every((f) => f.posOk));
      t.true(r.frames.every((f) => f.dimIndex[0] === f.segment && f.dimIndex[1] === f.k + 1));
      // Voxels, in DICOM (column, row, slice by position) terms → the labels' grid (j = rows − 1 − row).
      const [nx, ny] = labels.dims;
      const got = new Uint8Array(labels.data.length);
      for (const [seg, c, row, k] of r.voxels) got[c + nx * (ny - 1 - row + ny * k)] = seg;
      let diff = 0;
      for (let i = 0; i < got.length; i++) if (got[i] !== labels.data[i]) diff++;
      t.is(diff, 0, "the SEG's voxels equal the labels");
      t.true(r.voxels.length > 500);
    },
  );
}

const hasDciodvfy = spawnSync("dciodvfy", ["-h"], { encoding: "utf8" }).error === undefined;
(hasDciodvfy ? test : test.skip)("dciodvfy (dicom3tools) finds no error in the SEG", async (t) => {
  const ct = await readDicomSeries(join(DICOM_FIXTURES, "cases", "H_oblique"));
  const out = join(tmp, "vfy.dcm");
  await writeDicomSeg(out, makeLabels(ct), ct);
  const r = spawnSync("dciodvfy", [out], { encoding: "utf8" });
  const text = `${r.stdout}\n${r.stderr}`;
  t.regex(text, /Segmentation/);
  const errors = text.split("\n").filter((l) => /^Error/.test(l));
  t.deepEqual(errors, [], text);
  t.log(text.trim());
});

test("writeDicomSeg validates its arguments", async (t) => {
  const ct = await readDicomSeries(join(DICOM_FIXTURES, "cases", "A_axial"));
  const labels = makeLabels(ct);
  const out = join(tmp, "bad.dcm");
  await t.throwsAsync(writeDicomSeg("", labels, ct), { message: /path/ });
  await t.throwsAsync(writeDicomSeg(out, { ...labels, dims: [88, 100, 19], data: labels.data.subarray(0, 88 * 100 * 19) }, ct), {
    message: /grid 88×100×20 .* for labels but received .*88×100×19/,
  });
  const seven = labels.data.slice();
  seven[5] = 7;
  await t.throwsAsync(writeDicomSeg(out, { ...labels, data: seven }, ct), { message: /for labels but received .*value 7/ });
  await t.throwsAsync(writeDicomSeg(out, { ...labels, data: new Uint8Array(labels.data.length) }, ct), { message: /no segment/ });
  await t.throwsAsync(writeDicomSeg(out, { ...labels, affine: labels.affine.map((v, i) => (i === 3 ? v + 1 : v)) }, ct), {
    message: /affine.* for labels but received .*affine off by up to 1\.00/,
  });
  await t.throwsAsync(writeDicomSeg(out, labels, { nope: 1 } as never), { message: /sourceSeries/ });
  await t.throwsAsync(writeDicomSeg(out, labels, ct, { classes: { 0: "bg" } }), { message: /options\.classes\[0\]/ });
  // DICOM text: a backslash splits a value in two, a NUL ends it
  await t.throwsAsync(writeDicomSeg(out, labels, ct, { classes: { 1: "EDH\\IPH" } }), { message: /no backslash .*options\.classes\[1\]/ });
  await t.throwsAsync(writeDicomSeg(out, labels, ct, { seriesDescription: "x\u0000y" }), { message: /options\.seriesDescription/ });
  await t.throwsAsync(writeDicomSeg(out, labels, ct, { algorithmName: "a".repeat(65) }), { message: /options\.algorithmName/ });
  // A series meta the caller handed in (or edited) is checked before the SEG is built from it: a
  // NaN position was written as "NaN", a UID with a backslash as two values.
  const edited = (change: (m: typeof ct.dicom) => void) => {
    const m = structuredClone(ct.dicom);
    change(m);
    return m;
  };
  await t.throwsAsync(
    writeDicomSeg(
      out,
      labels,
      edited((m) => (m.instances[3]!.position[2] = NaN)),
    ),
    { message: /three finite numbers .* for sourceSeries\.instances\[3\]\.position but received .*NaN/ },
  );
  await t.throwsAsync(
    writeDicomSeg(
      out,
      labels,
      edited((m) => (m.seriesInstanceUid = "1.2\\3")),
    ),
    { message: /sourceSeries\.seriesInstanceUid/ },
  );
  // (dcmjs writes a character past latin-1 as one byte: another UID)
  await t.throwsAsync(
    writeDicomSeg(
      out,
      labels,
      edited((m) => (m.instances[0]!.sopInstanceUid = "1.2.\u20ac")),
    ),
    { message: /latin-1 .*sourceSeries\.instances\[0\]\.sopInstanceUid/ },
  );
  await t.throwsAsync(
    writeDicomSeg(
      out,
      labels,
      edited((m) => (m.pixelSpacing = [0.5, -1])),
    ),
    { message: /sourceSeries\.pixelSpacing/ },
  );
  await t.throwsAsync(writeDicomSeg(out, labels, { ...ct, dicom: edited((m) => (m.imageOrientationPatient[0] = Infinity)) }), {
    message: /sourceSeries\.dicom\.imageOrientationPatient/,
  });
  t.false(existsSync(out));
  // what the reader keeps (a missing UID is "", an anonymiser's may be long) is written as it was
  const kept = await writeDicomSeg(
    out,
    labels,
    edited((m) => {
      m.studyInstanceUid = "";
      m.frameOfReferenceUid = "";
      m.seriesInstanceUid = "1.2." + "3".repeat(80);
    }),
  );
  t.is(kept.segments.length, 5);
  rmSync(out);
  // The source given as its folder works as the volume does.
  const res = await writeDicomSeg(out, labels, join(DICOM_FIXTURES, "cases", "A_axial"));
  t.is(res.segments.length, 5);
});

test("sRGB → DICOM CIELab on textbook values (D65): white (100, 0, 0), red (53.24, 80.09, 67.20), black", (t) => {
  const scale = (L: number, a: number, b: number) => [(L * 65535) / 100, ((a + 128) * 65535) / 255, ((b + 128) * 65535) / 255];
  const near = (got: number[], want: number[]) => got.every((v, i) => Math.abs(v - want[i]!) <= (0.02 * 65535) / 100 + 1);
  t.true(near(rgbToDicomLab([255, 255, 255]), scale(100, 0, 0)), String(rgbToDicomLab([255, 255, 255])));
  t.true(near(rgbToDicomLab([255, 0, 0]), scale(53.24, 80.09, 67.2)), String(rgbToDicomLab([255, 0, 0])));
  t.deepEqual(rgbToDicomLab([0, 0, 0]), scale(0, 0, 0).map(Math.round) as [number, number, number]);
});

test("patient data stay out of the volume's enumerable meta", async (t) => {
  const ct = await readDicomSeries(join(DICOM_FIXTURES, "cases", "A_axial"));
  t.false(JSON.stringify(ct.dicom).includes("Fixture"));
  t.false(JSON.stringify(ct.dicom).includes("FIXT-A"));
  t.is(ct.dicom.studyAttributes?.PatientID, "FIXT-A");
});

test("the SEG's display colours are the overlay's (IPH sky blue, SDH vermillion …), labels past 5 too", async (t) => {
  const { classRgb } = await import("../lib/io/dicom-seg.js");
  const { classColor } = await import("../lib/render/overlay.js");
  for (let v = 1; v <= 9; v++) t.deepEqual(classRgb(v), [...classColor(v)], `label ${v}`);
});
