/**
 * writeDicomSeg: a binary DICOM Segmentation (SOP class 1.2.840.10008.5.1.4.1.1.66.4) over a CT
 * series read by readDicomSeries — one segment per class present in the labels, BHSD's names and the
 * viewer's colours (as CIELab), one frame per (segment, slice that holds it), each frame referencing
 * its source image, the series' frame of reference and patient/study. Encoded by dcmjs.
 */
import { randomUUID } from "node:crypto";
import { writeFile } from "node:fs/promises";
import { replaceFile } from "./small-file.js";
import { invalidParameterError, optionsObject } from "../is.js";
import { BHSD_CLASSES } from "../metrics/evaluate.js";
import type { Volume } from "../types.js";
import { assertVolume } from "../volume.js";
import { VERSION } from "../version.js";
import { DicomError, readDicomSeries, type DicomSeriesMeta, type DicomSource } from "./dicom.js";

export const SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4";

/** Long names of BHSD's classes (SegmentDescription). */
const LONG_NAMES: Record<string, string> = {
  EDH: "Epidural hemorrhage",
  IPH: "Intraparenchymal hemorrhage",
  IVH: "Intraventricular hemorrhage",
  SAH: "Subarachnoid hemorrhage",
  SDH: "Subdural hemorrhage",
};

/**
 * Display colours: the Okabe–Ito palette of bhsd's overlays (lib/render/overlay.ts), so the SEG in
 * a viewer looks like bhsd's own pictures.
 */
const CLASS_RGB: Record<number, [number, number, number]> = {
  1: [0xe6, 0x9f, 0x00], // EDH orange
  2: [0x56, 0xb4, 0xe9], // IPH sky blue
  3: [0x00, 0x9e, 0x73], // IVH bluish green
  4: [0xf0, 0xe4, 0x42], // SAH yellow
  5: [0xd5, 0x5e, 0x00], // SDH vermillion
};
const EXTRA_RGB: [number, number, number][] = [
  [0xcc, 0x79, 0xa7],
  [0x00, 0x72, 0xb2],
];
/** The display colour of a label value (labels past 5 alternate the two colours left, as the overlay does). */
export function classRgb(value: number): [number, number, number] {
  return CLASS_RGB[value] ?? EXTRA_RGB[(value - 6) % EXTRA_RGB.length] ?? EXTRA_RGB[0]!;
}

export interface WriteDicomSegOptions {
  /** label value → name (default BHSD's: 1 EDH, 2 IPH, 3 IVH, 4 SAH, 5 SDH). */
  classes?: Record<number | string, string>;
  seriesDescription?: string;
  seriesNumber?: number;
  /** SegmentAlgorithmName (default "bhsd"). */
  algorithmName?: string;
  /** ContentLabel (default "BHSD"; upper case, ≤ 16 characters). */
  contentLabel?: string;
}

export interface DicomSegResult {
  path: string;
  sopInstanceUid: string;
  seriesInstanceUid: string;
  segments: { number: number; label: number; name: string; frames: number; voxels: number }[];
  frames: number;
  bytes: number;
}

/** A fresh UID under the UUID arc 2.25 (PS3.5 B.2). */
export function newUid(): string {
  return "2.25." + BigInt("0x" + randomUUID().replace(/-/g, "")).toString();
}

/** sRGB (0–255) → DICOM's scaled CIELab (PS3.3 C.10.7.1.1): L 0–100, a and b −128…127, to 0–65535. */
export function rgbToDicomLab(rgb: readonly number[]): [number, number, number] {
  const lin = rgb.map((v) => {
    const c = v / 255;
    return c <= 0.04045 ? c / 12.92 : ((c + 0.055) / 1.055) ** 2.4;
  });
  const X = (0.4124564 * lin[0]! + 0.3575761 * lin[1]! + 0.1804375 * lin[2]!) / 0.95047;
  const Y = 0.2126729 * lin[0]! + 0.7151522 * lin[1]! + 0.072175 * lin[2]!;
  const Z = (0.0193339 * lin[0]! + 0.119192 * lin[1]! + 0.9503041 * lin[2]!) / 1.08883;
  const f = (t: number) => (t > 216 / 24389 ? Math.cbrt(t) : ((24389 / 27) * t + 16) / 116);
  const L = 116 * f(Y) - 16,
    a = 500 * (f(X) - f(Y)),
    b = 200 * (f(Y) - f(Z));
  const clamp = (v: number) => Math.max(0, Math.min(65535, Math.round(v)));
  return [clamp((L * 65535) / 100), clamp(((a + 128) * 65535) / 255), clamp(((b + 128) * 65535) / 255)];
}

export function isoDateTime(d: Date): { date: string; time: string } {
  const p = (n: number, w = 2) => String(n).padStart(w, "0");
  return {
    date: `${d.getUTCFullYear()}${p(d.getUTCMonth() + 1)}${p(d.getUTCDate())}`,
    time: `${p(d.getUTCHours())}${p(d.getUTCMinutes())}${p(d.getUTCSeconds())}`,
  };
}

/**
 * Writes `labels` (a Volume on the grid of `sourceSeries`, as readDicomSeries returns it, e.g. the
 * labels of segment()) as a DICOM SEG file at `path`. `sourceSeries` is the volume read by
 * readDicomSeries, its `dicom` meta, or the folder/files to read it from.
 */
/**
 * A DICOM LO value (SegmentLabel, SeriesDescription …): 1–64 characters (0–64 with `allowEmpty`),
 * none a backslash (it separates values: "EDH\\IPH" would be two) or a control character (a NUL
 * ends it for readers).
 */
export function isLoText(v: unknown, allowEmpty = false): v is string {
  // eslint-disable-next-line no-control-regex -- the control characters are what is refused
  return typeof v === "string" && (allowEmpty || v.length > 0) && v.length <= 64 && !/[\\\0-\x1f\x7f]/.test(v);
}

const finiteNumbers = (v: unknown, n: number, positive = false): boolean =>
  Array.isArray(v) && v.length === n && v.every((x) => typeof x === "number" && Number.isFinite(x) && (!positive || x > 0));
/**
 * A UID as the SEG can carry it: no backslash (it would make two values) or control character. The
 * reader keeps series whose UIDs are missing (""), long or odd (anonymised exports have them): the
 * SEG repeats what the source had.
 */
// (and latin-1: dcmjs writes each character as one byte, a higher one cut to another UID)
const isUid = (v: unknown): boolean => typeof v === "string" && v.length <= 1024 && /^[\x20-\x5b\x5d-\x7e\xa0-\xff]*$/.test(v);
const UID = "a UID (latin-1 text without backslash or control characters)";

/**
 * Checks a series meta a caller handed in (or edited) before anything is derived from it: a NaN
 * position became "NaN" in the SEG, a UID with a backslash two values.
 */
function checkSeriesMeta(meta: DicomSeriesMeta, name: string): void {
  const bad = (field: string, expected: string, got: unknown): never => {
    throw invalidParameterError(`${name}.${field}`, expected, got);
  };
  for (const k of ["studyInstanceUid", "seriesInstanceUid", "frameOfReferenceUid"] as const) if (!isUid(meta[k])) bad(k, UID, meta[k]);
  for (const k of ["rows", "columns"] as const)
    if (!Number.isInteger(meta[k]) || meta[k] < 1 || meta[k] > 65535) bad(k, "an integer from 1 to 65535", meta[k]);
  if (!finiteNumbers(meta.pixelSpacing, 2, true)) bad("pixelSpacing", "two positive finite numbers (mm)", meta.pixelSpacing);
  if (!finiteNumbers(meta.imageOrientationPatient, 6)) bad("imageOrientationPatient", "six finite numbers", meta.imageOrientationPatient);
  if (meta.sliceThickness !== null && meta.sliceThickness !== undefined && !finiteNumbers([meta.sliceThickness], 1))
    bad("sliceThickness", "null or a finite number (mm)", meta.sliceThickness);
  if (!Array.isArray(meta.instances) || meta.instances.length === 0) bad("instances", "an array of the series' slices", meta.instances);
  meta.instances.forEach((inst, k) => {
    if (typeof inst !== "object" || inst === null) bad(`instances[${k}]`, "{ sopClassUid, sopInstanceUid, position }", inst);
    if (!isUid(inst.sopClassUid)) bad(`instances[${k}].sopClassUid`, UID, inst.sopClassUid);
    if (!isUid(inst.sopInstanceUid)) bad(`instances[${k}].sopInstanceUid`, UID, inst.sopInstanceUid);
    if (!finiteNumbers(inst.position, 3)) bad(`instances[${k}].position`, "three finite numbers (mm)", inst.position);
  });
  const study: unknown = meta.studyAttributes;
  if (study !== undefined && (typeof study !== "object" || study === null || Object.values(study).some((v) => typeof v !== "string")))
    bad("studyAttributes", "an object of strings", study);
}

/**
 * Whether writeDicomSeg could reference this series (its UIDs, geometry and instances): the CLI asks
 * before inference, so that a series a SEG cannot name fails at once rather than after the model ran.
 */
export function checkDicomSegSource(meta: DicomSeriesMeta, name: string): void {
  checkSeriesMeta(meta, name);
}

export async function writeDicomSeg(
  path: string,
  labels: Volume,
  sourceSeries: (Volume & { dicom?: DicomSeriesMeta }) | DicomSeriesMeta | DicomSource,
  options?: WriteDicomSegOptions,
): Promise<DicomSegResult> {
  if (typeof path !== "string" || path.length === 0) throw invalidParameterError("path", "a file path", path);
  assertVolume("labels", labels);
  const opts = optionsObject("options", options) as WriteDicomSegOptions;
  const classes = opts.classes ?? BHSD_CLASSES;
  if (typeof classes !== "object" || classes === null)
    throw invalidParameterError("options.classes", "an object of label value → name", classes);
  for (const [k, v] of Object.entries(classes)) {
    if (!/^\d+$/.test(k) || +k < 1 || +k > 255 || !isLoText(v)) {
      throw invalidParameterError(
        `options.classes[${k}]`,
        "a name (1–64 characters, no backslash or control character) under a label value 1–255",
        v,
      );
    }
  }
  if (opts.seriesNumber !== undefined && !(Number.isInteger(opts.seriesNumber) && opts.seriesNumber >= 0 && opts.seriesNumber < 2 ** 31)) {
    throw invalidParameterError("options.seriesNumber", "a non-negative integer", opts.seriesNumber);
  }
  for (const key of ["seriesDescription", "algorithmName", "contentLabel"] as const) {
    if (opts[key] !== undefined && !isLoText(opts[key])) {
      throw invalidParameterError(`options.${key}`, "a string of 1–64 characters without backslashes or control characters", opts[key]);
    }
  }
  let meta: DicomSeriesMeta;
  let sourceAffine: number[] | undefined;
  if (typeof sourceSeries === "string" || Array.isArray(sourceSeries)) {
    const v = await readDicomSeries(sourceSeries as DicomSource);
    meta = v.dicom;
    sourceAffine = v.affine;
  } else if (sourceSeries && typeof sourceSeries === "object" && "dicom" in sourceSeries && sourceSeries.dicom) {
    meta = sourceSeries.dicom;
    sourceAffine = (sourceSeries as Volume).affine;
  } else if (sourceSeries && typeof sourceSeries === "object" && "instances" in sourceSeries && "seriesInstanceUid" in sourceSeries) {
    meta = sourceSeries as DicomSeriesMeta;
  } else {
    throw invalidParameterError(
      "sourceSeries",
      "the Volume readDicomSeries returned (with .dicom), its .dicom, or the series' folder/files",
      sourceSeries,
    );
  }
  checkSeriesMeta(meta, "sourceSeries" + (meta === sourceSeries ? "" : ".dicom"));
  const nx = meta.columns,
    ny = meta.rows,
    nz = meta.instances.length;
  const [lx, ly, lz] = labels.dims;
  if (lx !== nx || ly !== ny || lz !== nz) {
    throw invalidParameterError(
      "labels",
      `a volume on the source series' grid ${nx}×${ny}×${nz} (columns × rows × slices)`,
      `dims ${lx}×${ly}×${lz}`,
    );
  }
  if (sourceAffine) {
    let worst = 0;
    for (let i = 0; i < 12; i++) worst = Math.max(worst, Math.abs(labels.affine[i]! - sourceAffine[i]!));
    if (worst > 1e-3)
      throw invalidParameterError(
        "labels",
        "the source series' affine (labels in readDicomSeries' voxel order)",
        `an affine off by up to ${worst.toPrecision(3)}`,
      );
  }
  // Which classes are present, and on which slices.
  const plane = nx * ny;
  const d = labels.data;
  const perClass = new Map<number, { voxels: number; slices: Set<number> }>();
  for (let k = 0; k < nz; k++) {
    const base = k * plane;
    for (let i = 0; i < plane; i++) {
      const v = Number(d[base + i]);
      if (v === 0) continue;
      let e = perClass.get(v);
      if (!e) {
        if (!Number.isInteger(v) || classes[v] === undefined) {
          throw invalidParameterError(
            "labels",
            `label values named by options.classes (${Object.keys(classes).join(", ")})`,
            `a voxel of value ${v}`,
          );
        }
        e = { voxels: 0, slices: new Set() };
        perClass.set(v, e);
      }
      e.voxels++;
      e.slices.add(k);
    }
  }
  if (perClass.size === 0)
    throw new DicomError(path, "labels hold no segment (every voxel is 0): a DICOM SEG needs at least one segment with one frame");
  const values = [...perClass.keys()].sort((a, b) => a - b);
  const nFrames = values.reduce((s, v) => s + perClass.get(v)!.slices.size, 0);
  // Pixel data: frames back to back, 1 bit per pixel, least significant bit first (PS3.5 8.1.1).
  const bits = nFrames * plane;
  const pixel = new Uint8Array(Math.ceil(Math.ceil(bits / 8) / 2) * 2);
  const perFrame: Record<string, unknown>[] = [];
  const segments: DicomSegResult["segments"] = [];
  let frame = 0;
  values.forEach((value, si) => {
    const segNumber = si + 1;
    const slices = [...perClass.get(value)!.slices].sort((a, b) => a - b);
    for (const k of slices) {
      const bit0 = frame * plane;
      for (let r = 0; r < ny; r++) {
        const src = k * plane + (ny - 1 - r) * nx; // volume row j = rows − 1 − r
        for (let c = 0; c < nx; c++) {
          if (Number(d[src + c]) === value) {
            const b = bit0 + r * nx + c;
            pixel[b >> 3]! |= 1 << (b & 7);
          }
        }
      }
      const inst = meta.instances[k]!;
      perFrame.push({
        DerivationImageSequence: [
          {
            SourceImageSequence: [
              {
                ReferencedSOPClassUID: inst.sopClassUid,
                ReferencedSOPInstanceUID: inst.sopInstanceUid,
                PurposeOfReferenceCodeSequence: [
                  { CodeValue: "121322", CodingSchemeDesignator: "DCM", CodeMeaning: "Source image for image processing operation" },
                ],
              },
            ],
            DerivationCodeSequence: [{ CodeValue: "113076", CodingSchemeDesignator: "DCM", CodeMeaning: "Segmentation" }],
          },
        ],
        FrameContentSequence: [{ DimensionIndexValues: [segNumber, k + 1] }],
        PlanePositionSequence: [{ ImagePositionPatient: inst.position.map(ds) }],
        SegmentIdentificationSequence: [{ ReferencedSegmentNumber: segNumber }],
      });
      frame++;
    }
    segments.push({ number: segNumber, label: value, name: classes[value]!, frames: slices.length, voxels: perClass.get(value)!.voxels });
  });
  const now = isoDateTime(new Date());
  const sopInstanceUid = newUid();
  const seriesInstanceUid = newUid();
  const dimOrg = newUid();
  const study = meta.studyAttributes ?? {};
  const spacingZ =
    nz > 1
      ? Math.hypot(...[0, 1, 2].map((a) => meta.instances[nz - 1]!.position[a]! - meta.instances[0]!.position[a]!)) / (nz - 1)
      : (meta.sliceThickness ?? 1);
  const segmentSequence = segments.map((s) => ({
    SegmentNumber: s.number,
    SegmentLabel: s.name.slice(0, 64),
    SegmentDescription: (LONG_NAMES[s.name] ?? s.name).slice(0, 64),
    SegmentAlgorithmType: "AUTOMATIC",
    SegmentAlgorithmName: opts.algorithmName ?? "bhsd",
    SegmentedPropertyCategoryCodeSequence: [
      { CodeValue: "49755003", CodingSchemeDesignator: "SCT", CodeMeaning: "Morphologically Abnormal Structure" },
    ],
    SegmentedPropertyTypeCodeSequence: [{ CodeValue: "50960005", CodingSchemeDesignator: "SCT", CodeMeaning: "Hemorrhage" }],
    RecommendedDisplayCIELabValue: rgbToDicomLab(classRgb(s.label)),
  }));
  const dataset: Record<string, unknown> = {
    SpecificCharacterSet: study.SpecificCharacterSet || "ISO_IR 192",
    SOPClassUID: SEG_SOP_CLASS,
    SOPInstanceUID: sopInstanceUid,
    ImageType: ["DERIVED", "PRIMARY"],
    ContentDate: now.date,
    ContentTime: now.time,
    SeriesDate: now.date,
    SeriesTime: now.time,
    InstanceCreationDate: now.date,
    InstanceCreationTime: now.time,
    Modality: "SEG",
    Manufacturer: "bhsd",
    ManufacturerModelName: "bhsd",
    DeviceSerialNumber: "0",
    SoftwareVersions: VERSION,
    PatientName: study.PatientName ?? "",
    PatientID: study.PatientID ?? "",
    PatientBirthDate: study.PatientBirthDate ?? "",
    PatientSex: study.PatientSex ?? "",
    StudyInstanceUID: meta.studyInstanceUid,
    StudyDate: study.StudyDate ?? "",
    StudyTime: study.StudyTime ?? "",
    ReferringPhysicianName: study.ReferringPhysicianName ?? "",
    StudyID: study.StudyID ?? "",
    AccessionNumber: study.AccessionNumber ?? "",
    ...(study.StudyDescription ? { StudyDescription: study.StudyDescription } : {}),
    SeriesInstanceUID: seriesInstanceUid,
    SeriesNumber: opts.seriesNumber ?? 300,
    SeriesDescription: opts.seriesDescription ?? "BHSD hemorrhage segmentation",
    InstanceNumber: 1,
    FrameOfReferenceUID: meta.frameOfReferenceUid,
    PositionReferenceIndicator: "",
    ReferencedSeriesSequence: [
      {
        SeriesInstanceUID: meta.seriesInstanceUid,
        ReferencedInstanceSequence: meta.instances.map((i) => ({
          ReferencedSOPClassUID: i.sopClassUid,
          ReferencedSOPInstanceUID: i.sopInstanceUid,
        })),
      },
    ],
    SamplesPerPixel: 1,
    PhotometricInterpretation: "MONOCHROME2",
    Rows: ny,
    Columns: nx,
    BitsAllocated: 1,
    BitsStored: 1,
    HighBit: 0,
    PixelRepresentation: 0,
    LossyImageCompression: "00",
    SegmentationType: "BINARY",
    ContentLabel: (opts.contentLabel ?? "BHSD")
      .toUpperCase()
      .replace(/[^A-Z0-9_ ]/g, "_")
      .slice(0, 16),
    ContentDescription: "Intracranial hemorrhage",
    ContentCreatorName: "bhsd^",
    SegmentSequence: segmentSequence,
    NumberOfFrames: nFrames,
    DimensionOrganizationSequence: [{ DimensionOrganizationUID: dimOrg }],
    DimensionIndexSequence: [
      {
        DimensionOrganizationUID: dimOrg,
        DimensionIndexPointer: 0x0062000b,
        FunctionalGroupPointer: 0x0062000a,
        DimensionDescriptionLabel: "ReferencedSegmentNumber",
      },
      {
        DimensionOrganizationUID: dimOrg,
        DimensionIndexPointer: 0x00200032,
        FunctionalGroupPointer: 0x00209113,
        DimensionDescriptionLabel: "ImagePositionPatient",
      },
    ],
    SharedFunctionalGroupsSequence: [
      {
        PlaneOrientationSequence: [{ ImageOrientationPatient: meta.imageOrientationPatient.map(ds) }],
        PixelMeasuresSequence: [
          {
            PixelSpacing: meta.pixelSpacing.map(ds),
            SliceThickness: ds(meta.sliceThickness && meta.sliceThickness > 0 ? meta.sliceThickness : spacingZ),
            SpacingBetweenSlices: ds(spacingZ),
          },
        ],
      },
    ],
    PerFrameFunctionalGroupsSequence: perFrame,
    PixelData: [pixel.buffer],
    _vrMap: { PixelData: "OB" },
  };
  // dcmjs is loaded only here: importing it costs about half a second, which no other command should pay.
  const { DicomDict, DicomMetaDictionary } = (await import("dcmjs")).default.data;
  const metaHeader = {
    FileMetaInformationVersion: new Uint8Array([0, 1]).buffer,
    MediaStorageSOPClassUID: SEG_SOP_CLASS,
    MediaStorageSOPInstanceUID: sopInstanceUid,
    TransferSyntaxUID: "1.2.840.10008.1.2.1",
    ImplementationClassUID: IMPLEMENTATION_UID,
    ImplementationVersionName: `BHSD_${VERSION}`.slice(0, 16),
  };
  let bytes: Uint8Array;
  try {
    const dict = new DicomDict(DicomMetaDictionary.denaturalizeDataset(metaHeader));
    dict.dict = DicomMetaDictionary.denaturalizeDataset(dataset);
    bytes = new Uint8Array(dict.write());
  } catch (e) {
    throw new DicomError(path, `the SEG could not be encoded (${(e as Error).message})`);
  }
  // (a temporary nobody can guess, created afresh: a link planted at a predictable one was written through)
  await replaceFile(path, (tmp) => writeFile(tmp, bytes, { flag: "wx" }));
  return { path, sopInstanceUid, seriesInstanceUid, segments, frames: nFrames, bytes: bytes.length };
}

/** bhsd's implementation class UID (a fixed 2.25 UUID UID). */
export const IMPLEMENTATION_UID = "2.25.236151893357410386466519426858432381029";

/** A decimal string (DS, ≤ 16 characters) for a number. */
export function ds(v: number): string {
  if (Number.isInteger(v)) return String(v);
  let s = String(+v.toPrecision(12));
  if (s.length > 16) s = String(+v.toPrecision(10));
  return s;
}
