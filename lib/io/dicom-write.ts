/**
 * writeDicomSeries: a volume (a phantom) as a DICOM CT series folder — one CT Image Storage file
 * per slice, explicit VR little endian, signed 16-bit words with RescaleSlope 1 and a
 * RescaleIntercept that makes the values fit (0 whenever they already fit in int16), the geometry
 * from the volume's RAS+ affine turned into LPS ImagePositionPatient / ImageOrientationPatient /
 * PixelSpacing / SliceThickness. Encoded by dcmjs (as writeDicomSeg is).
 *
 * The voxel order is chosen so that readDicomSeries and dcm2niix put every voxel back at the same
 * world position: slices follow the volume's k axis along the slice normal, DICOM rows run against
 * j, and DICOM columns along i for a volume whose affine has a negative determinant (dcm2niix's
 * own output) or against i for a positive one (a phantom, RAS-like: then the images show the
 * patient's right on the left, the radiological convention, and ImageOrientationPatient is
 * 1\0\0\0\1\0 for an axial volume).
 *
 * The data are synthetic: patient attributes are "PHANTOM" placeholders (no birth date or sex), the
 * study and series dates are the time of writing, and every UID is fresh under 2.25 (a random UUID as an integer, PS3.5 B.2).
 */
import { mkdir, readdir, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { invalidParameterError, optionsObject } from "../is.js";
import type { Volume } from "../types.js";
import { assertVolume } from "../volume.js";
import { VERSION } from "../version.js";
import { DicomError } from "./dicom.js";
import { ds, IMPLEMENTATION_UID, isLoText, isoDateTime, newUid } from "./dicom-seg.js";

export const CT_IMAGE_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.2";
const EXPLICIT_LE = "1.2.840.10008.1.2.1";

export interface WriteDicomSeriesOptions {
  /** SeriesDescription (default "bhsd phantom"). */
  seriesDescription?: string;
  /** StudyDescription (default none). */
  studyDescription?: string;
  /** SeriesNumber (default 1). */
  seriesNumber?: number;
}

export interface DicomSeriesWritten {
  dir: string;
  /** The files in slice order (k). */
  files: string[];
  studyInstanceUid: string;
  seriesInstanceUid: string;
  frameOfReferenceUid: string;
  rescaleIntercept: number;
  /** Whether DICOM columns run against the volume's i axis (see the module comment). */
  columnsFlipped: boolean;
}

type Vec3 = [number, number, number];
const dot = (a: Vec3, b: Vec3) => a[0] * b[0] + a[1] * b[1] + a[2] * b[2];
const cross = (a: Vec3, b: Vec3): Vec3 => [a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]];
const norm = (a: Vec3) => Math.hypot(a[0], a[1], a[2]);

/** Geometry of the series from the RAS+ affine, or a message that says why it cannot be written. */
function geometry(affine: readonly number[], dims: readonly number[]) {
  const col = (c: number): Vec3 => [-affine[c]!, -affine[4 + c]!, affine[8 + c]!]; // RAS → LPS: diag(−1, −1, 1)
  const ai = col(0),
    aj = col(1),
    ak = col(2);
  const o: Vec3 = col(3);
  const si = norm(ai),
    sj = norm(aj),
    sk = norm(ak);
  if (!(si > 0 && sj > 0 && sk > 0) || ![...ai, ...aj, ...ak, ...o].every(Number.isFinite)) {
    throw invalidParameterError("volume.affine", "an affine with three finite, non-zero axes", affine);
  }
  const tol = 1e-6;
  if (Math.abs(dot(ai, aj)) > tol * si * sj)
    throw invalidParameterError("volume.affine", "perpendicular i and j axes (DICOM image rows and columns are)", affine);
  const det = dot(cross(ai, aj), ak);
  const flipI = det > 0;
  const rowDir = ai.map((v) => (flipI ? -v : v) / si) as Vec3; // along a row: the column index grows
  const colDir = aj.map((v) => -v / sj) as Vec3; // down a column: the row index grows, j falls
  const normal = cross(rowDir, colDir);
  if (Math.abs(dot(ak, normal) - sk) > tol * sk) {
    throw invalidParameterError(
      "volume.affine",
      "a k axis perpendicular to i and j (a sheared grid would be written as gantry tilt)",
      affine,
    );
  }
  const [nx, ny] = dims as [number, number, number];
  /** LPS position of DICOM pixel (row 0, column 0) of slice k: voxel (flipI ? nx − 1 : 0, ny − 1, k). */
  const position = (k: number): Vec3 => {
    const i = flipI ? nx - 1 : 0,
      j = ny - 1;
    return [0, 1, 2].map((a) => o[a]! + ai[a]! * i + aj[a]! * j + ak[a]! * k) as Vec3;
  };
  return { flipI, rowDir, colDir, position, pixelSpacing: [sj, si] as [number, number], sliceSpacing: sk };
}

/**
 * Writes `volume` (integer values: HU) as a DICOM CT series into the folder `dir` (created; it must
 * not hold files already): IM-0001.dcm … in slice order. Returns the files and the UIDs.
 */
export async function writeDicomSeries(dir: string, volume: Volume, options?: WriteDicomSeriesOptions): Promise<DicomSeriesWritten> {
  if (typeof dir !== "string" || dir.length === 0) throw invalidParameterError("dir", "a folder path", dir);
  assertVolume("volume", volume);
  const o = optionsObject("options", options) as WriteDicomSeriesOptions;
  for (const k of ["seriesDescription", "studyDescription"] as const) {
    if (o[k] !== undefined && !isLoText(o[k], true)) {
      throw invalidParameterError(`options.${k}`, "a text of at most 64 characters without backslashes or control characters", o[k]);
    }
  }
  if (o.seriesNumber !== undefined && !(Number.isInteger(o.seriesNumber) && o.seriesNumber >= 0 && o.seriesNumber <= 2 ** 31 - 1)) {
    throw invalidParameterError("options.seriesNumber", "an integer from 0 to 2147483647", o.seriesNumber);
  }
  const [nx, ny, nz] = volume.dims;
  if (nx > 65535 || ny > 65535)
    throw invalidParameterError("volume.dims", "at most 65535 columns and rows (DICOM's Rows and Columns are 16-bit)", volume.dims);
  if (!Array.isArray(volume.affine) || volume.affine.length < 12)
    throw invalidParameterError("volume.affine", "a 4x4 row-major affine", volume.affine);
  const g = geometry(volume.affine, volume.dims);
  // Values: integers whose range fits 16 bits; the intercept is 0 when they fit in int16.
  const d = volume.data;
  let lo = Infinity,
    hi = -Infinity;
  for (let i = 0; i < d.length; i++) {
    const v = Number(d[i]);
    if (!Number.isInteger(v)) {
      const x = i % nx,
        y = Math.floor(i / nx) % ny,
        z = Math.floor(i / (nx * ny));
      throw invalidParameterError(`volume.data at voxel (${x}, ${y}, ${z})`, "an integer (HU: 16-bit CT images hold integers)", v);
    }
    if (v < lo) lo = v;
    if (v > hi) hi = v;
  }
  if (hi - lo > 65535) throw invalidParameterError("volume.data", "values spanning at most 65535 (16-bit words)", `${lo} … ${hi}`);
  const intercept = lo >= -32768 && hi <= 32767 ? 0 : lo + 32768;
  await mkdir(dir, { recursive: true });
  if ((await readdir(dir)).length > 0) throw new DicomError(dir, "already holds files; writeDicomSeries writes into a new or empty folder");

  const now = isoDateTime(new Date());
  const studyInstanceUid = newUid(),
    seriesInstanceUid = newUid(),
    frameOfReferenceUid = newUid();
  const iop = [...g.rowDir, ...g.colDir].map((v) => ds(v + 0));
  const { DicomDict, DicomMetaDictionary } = (await import("dcmjs")).default.data; // loaded here only (about half a second)
  const files: string[] = [];
  const plane = nx * ny;
  for (let k = 0; k < nz; k++) {
    const px = new Int16Array(plane);
    for (let r = 0; r < ny; r++) {
      const src = k * plane + (ny - 1 - r) * nx,
        dst = r * nx;
      for (let c = 0; c < nx; c++) px[dst + c] = Number(d[src + (g.flipI ? nx - 1 - c : c)]) - intercept;
    }
    const sopInstanceUid = newUid();
    const dataset: Record<string, unknown> = {
      SpecificCharacterSet: "ISO_IR 192",
      ImageType: ["DERIVED", "SECONDARY", "AXIAL"],
      SOPClassUID: CT_IMAGE_SOP_CLASS,
      SOPInstanceUID: sopInstanceUid,
      StudyDate: now.date,
      StudyTime: now.time,
      SeriesDate: now.date,
      SeriesTime: now.time,
      ContentDate: now.date,
      ContentTime: now.time,
      AccessionNumber: "",
      Modality: "CT",
      Manufacturer: "bhsd",
      ReferringPhysicianName: "",
      ...(o.studyDescription ? { StudyDescription: o.studyDescription } : {}),
      SeriesDescription: o.seriesDescription ?? "bhsd phantom",
      ManufacturerModelName: "bhsd phantom",
      PatientName: "PHANTOM^", // (the trailing ^: PS3.5's person name form, not the retired one)
      PatientID: "PHANTOM",
      PatientBirthDate: "",
      PatientSex: "",
      BodyPartExamined: "HEAD",
      SliceThickness: ds(g.sliceSpacing),
      KVP: "",
      SoftwareVersions: VERSION,
      PatientPosition: "HFS",
      StudyInstanceUID: studyInstanceUid,
      SeriesInstanceUID: seriesInstanceUid,
      StudyID: "1",
      SeriesNumber: o.seriesNumber ?? 1,
      AcquisitionNumber: 1,
      InstanceNumber: k + 1,
      ImagePositionPatient: g.position(k).map((v) => ds(v + 0)),
      ImageOrientationPatient: iop,
      FrameOfReferenceUID: frameOfReferenceUid,
      PositionReferenceIndicator: "",
      SamplesPerPixel: 1,
      PhotometricInterpretation: "MONOCHROME2",
      Rows: ny,
      Columns: nx,
      PixelSpacing: g.pixelSpacing.map(ds),
      BitsAllocated: 16,
      BitsStored: 16,
      HighBit: 15,
      PixelRepresentation: 1,
      WindowCenter: "40",
      WindowWidth: "80",
      RescaleIntercept: String(intercept),
      RescaleSlope: "1",
      RescaleType: "HU",
      PixelData: [px.buffer],
      _vrMap: { PixelData: "OW" },
    };
    const meta = {
      FileMetaInformationVersion: new Uint8Array([0, 1]).buffer,
      MediaStorageSOPClassUID: CT_IMAGE_SOP_CLASS,
      MediaStorageSOPInstanceUID: sopInstanceUid,
      TransferSyntaxUID: EXPLICIT_LE,
      ImplementationClassUID: IMPLEMENTATION_UID,
      ImplementationVersionName: `BHSD_${VERSION}`.slice(0, 16),
    };
    let bytes: Uint8Array;
    try {
      const dict = new DicomDict(DicomMetaDictionary.denaturalizeDataset(meta));
      dict.dict = DicomMetaDictionary.denaturalizeDataset(dataset);
      bytes = new Uint8Array(dict.write());
    } catch (e) {
      throw new DicomError(dir, `slice ${k + 1} could not be encoded (${(e as Error).message})`);
    }
    const file = join(dir, `IM-${String(k + 1).padStart(4, "0")}.dcm`);
    await writeFile(file, bytes, { flag: "wx" });
    files.push(file);
  }
  return { dir, files, studyInstanceUid, seriesInstanceUid, frameOfReferenceUid, rescaleIntercept: intercept, columnsFlipped: g.flipI };
}
