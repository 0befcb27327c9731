/**
 * Rescale and bit depths against pydicom: a series written here by dcmjs with a fractional slope and
 * intercept (float32 volume) and signed 12-bit stored values in 16-bit words, and words with unused high bits set — read as
 * pydicom reads them (pixel_array × slope + intercept; dcm2niix agrees on the 12-bit words).
 */
import test from "ava";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import dcmjs from "dcmjs";
import { readDicomSeries } from "../lib/io/dicom.js";
import { pydicomPython, runPython } from "./dicom-helpers.js";

const dir = mkdtempSync(join(tmpdir(), "bhsd-dcmrescale-"));
test.after.always(() => rmSync(dir, { recursive: true, force: true }));

function writeSeries(
  sub: string,
  opts: { bitsStored: number; pixelRep: number; slope: string; intercept: string; values: (k: number, i: number) => number },
) {
  const out = join(dir, sub);
  rmSync(out, { recursive: true, force: true });
  mkdirSync(out, { recursive: true });
  const { DicomDict, DicomMetaDictionary } = dcmjs.data;
  const R = 6,
    C = 5,
    Z = 3;
  for (let k = 0; k < Z; k++) {
    const px = new Uint16Array(R * C);
    for (let i = 0; i < px.length; i++) px[i] = opts.values(k, i) & 0xffff;
    const sop = `1.2.826.0.1.3680043.8.498.7${sub.length}.${k + 1}`;
    const ds = {
      SOPClassUID: "1.2.840.10008.5.1.4.1.1.2",
      SOPInstanceUID: sop,
      Modality: "CT",
      StudyInstanceUID: "1.2.826.0.1.3680043.8.498.71",
      SeriesInstanceUID: `1.2.826.0.1.3680043.8.498.72.${sub.length}`,
      FrameOfReferenceUID: "1.2.826.0.1.3680043.8.498.73",
      SeriesNumber: 1,
      InstanceNumber: k + 1,
      ImagePositionPatient: ["0", "0", String(3 * k)],
      ImageOrientationPatient: ["1", "0", "0", "0", "1", "0"],
      PixelSpacing: ["1", "1"],
      Rows: R,
      Columns: C,
      SamplesPerPixel: 1,
      PhotometricInterpretation: "MONOCHROME2",
      BitsAllocated: 16,
      BitsStored: opts.bitsStored,
      HighBit: opts.bitsStored - 1,
      PixelRepresentation: opts.pixelRep,
      RescaleIntercept: opts.intercept,
      RescaleSlope: opts.slope,
      PixelData: [px.buffer],
      _vrMap: { PixelData: "OW" },
    };
    const meta = {
      FileMetaInformationVersion: new Uint8Array([0, 1]).buffer,
      MediaStorageSOPClassUID: ds.SOPClassUID,
      MediaStorageSOPInstanceUID: sop,
      TransferSyntaxUID: "1.2.840.10008.1.2.1",
      ImplementationClassUID: "1.2.826.0.1.3680043.8.498.1",
    };
    const dict = new DicomDict(DicomMetaDictionary.denaturalizeDataset(meta));
    dict.dict = DicomMetaDictionary.denaturalizeDataset(ds);
    writeFileSync(join(out, `s${k}.dcm`), new Uint8Array(dict.write()));
  }
  return out;
}

const PY = `
import json, sys, os, glob, pydicom, numpy as np
ds = [pydicom.dcmread(f) for f in sorted(glob.glob(os.path.join(sys.argv[1], "*.dcm")))]
ds.sort(key=lambda d: float(d.ImagePositionPatient[2]))
out = [(d.pixel_array.astype(np.float64) * float(d.RescaleSlope) + float(d.RescaleIntercept))[::-1, :].ravel().tolist() for d in ds]
print(json.dumps(sum(out, [])))
`;

(pydicomPython() ? test : test.skip)(
  "fractional slope/intercept → float32; 12-bit words, signed and with high bits set, as pydicom reads them",
  async (t) => {
    const a = writeSeries("frac", {
      bitsStored: 12,
      pixelRep: 0,
      slope: "0.37",
      intercept: "-1024.25",
      values: (k, i) => (i * 131 + k * 977) % 4096,
    });
    const va = await readDicomSeries(a);
    t.is(va.data.constructor, Float32Array);
    const ra = runPython<number[]>(PY, [a]);
    let worst = 0;
    for (let i = 0; i < ra.length; i++) worst = Math.max(worst, Math.abs(Number(va.data[i]) - ra[i]!) / Math.max(1, Math.abs(ra[i]!)));
    t.true(worst < 1e-6, `relative difference ${worst}`);
    // Signed, BitsStored 12 in 16-bit words: the whole word is the value (dcm2niix and pydicom 2.3 do
    // not sign-extend from HighBit; checked with both when this test was written).
    const b = writeSeries("signed12", {
      bitsStored: 12,
      pixelRep: 1,
      slope: "1",
      intercept: "0",
      values: (k, i) => (((i * 397 + k * 1231) % 4096) - 2048) & 0x0fff,
    });
    const vb = await readDicomSeries(b);
    t.is(vb.data.constructor, Int16Array);
    t.deepEqual(Array.from(vb.data as Int16Array), runPython<number[]>(PY, [b]));
    // Unsigned 12-bit with intercept −1024 but unused high bits set in some words: those leave int16
    // once rescaled (0xF123 − 1024 = 60707), so the volume is float32 and still equals pydicom.
    const c = writeSeries("garbage", {
      bitsStored: 12,
      pixelRep: 0,
      slope: "1",
      intercept: "-1024",
      values: (k, i) => (i % 7 === 3 ? 0xf000 : 0) | ((i * 53 + k) % 4096),
    });
    const vc = await readDicomSeries(c);
    t.is(vc.data.constructor, Float32Array);
    t.deepEqual(Array.from(vc.data as Float32Array), runPython<number[]>(PY, [c]));
    t.true(Math.max(...(vc.data as Float32Array)) > 32767);
  },
);
