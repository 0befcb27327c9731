/**
 * A 512 × 512 × 40 uncompressed CT series (written here by dcmjs, independent of the reader: known
 * random stored values, slope 1, intercept −1024, files named against the slice order) reads back
 * exactly, and in bounded time (the aim is well under a second; measured 0.2–0.65 s on the
 * two shared cores under load, the bound here is loose so a busy machine does not fail it).
 */
import test from "ava";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import dcmjs from "dcmjs";
import { readDicomSeries } from "../lib/io/dicom.js";

const dir = mkdtempSync(join(tmpdir(), "bhsd-dcmperf-"));
test.after.always(() => rmSync(dir, { recursive: true, force: true }));

test("512×512×40 uncompressed: exact values, dcm2niix's order, read in bounded time with progress", async (t) => {
  t.timeout(180_000);
  const N = 512,
    Z = 40;
  let seed = 99;
  const rand = () => (seed = (Math.imul(seed, 1664525) + 1013904223) >>> 0) >>> 20; // 0..4095
  const slices: Uint16Array[] = [];
  const { DicomDict, DicomMetaDictionary } = dcmjs.data;
  for (let k = 0; k < Z; k++) {
    const px = new Uint16Array(N * N);
    for (let i = 0; i < px.length; i++) px[i] = rand();
    slices.push(px);
    const sop = `1.2.826.0.1.3680043.8.498.${k + 1}`;
    const ds = {
      SOPClassUID: "1.2.840.10008.5.1.4.1.1.2",
      SOPInstanceUID: sop,
      Modality: "CT",
      StudyInstanceUID: "1.2.826.0.1.3680043.8.498.100",
      SeriesInstanceUID: "1.2.826.0.1.3680043.8.498.200",
      FrameOfReferenceUID: "1.2.826.0.1.3680043.8.498.300",
      SeriesNumber: 1,
      InstanceNumber: Z - k,
      ImagePositionPatient: ["-128", "-120", String(20 + 2.5 * k)],
      ImageOrientationPatient: ["1", "0", "0", "0", "1", "0"],
      PixelSpacing: ["0.5", "0.5"],
      SliceThickness: "2.5",
      Rows: N,
      Columns: N,
      SamplesPerPixel: 1,
      PhotometricInterpretation: "MONOCHROME2",
      BitsAllocated: 16,
      BitsStored: 12,
      HighBit: 11,
      PixelRepresentation: 0,
      RescaleIntercept: "-1024",
      RescaleSlope: "1",
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
    writeFileSync(join(dir, `f${String(Z - k).padStart(3, "0")}`), new Uint8Array(dict.write()));
  }
  const times: number[] = [];
  let calls = 0;
  let v;
  for (let rep = 0; rep < 3; rep++) {
    const t0 = performance.now();
    v = await readDicomSeries(dir, { onProgress: () => calls++ });
    times.push(performance.now() - t0);
  }
  t.log(`read times ${times.map((x) => x.toFixed(0)).join(", ")} ms`);
  t.is(calls, 3 * Z);
  t.deepEqual(v!.dims, [N, N, Z]);
  t.deepEqual(v!.spacing, [0.5, 0.5, 2.5]);
  t.is(v!.data.constructor, Int16Array);
  let bad = 0;
  for (let k = 0; k < Z; k++)
    for (let r = 0; r < N; r++)
      for (let c = 0; c < N; c++) {
        if (v!.data[c + N * (N - 1 - r + N * k)] !== slices[k]![c + N * r]! - 1024) bad++;
      }
  t.is(bad, 0, "HU = stored − 1024 at (column, rows − 1 − row, slice by position)");
  t.true(Math.min(...times) < 3000, `best of 3 under 3 s (${Math.min(...times).toFixed(0)} ms)`);
});
