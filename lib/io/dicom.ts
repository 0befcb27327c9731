/**
 * DICOM CT series → Volume, with the geometry of the reference converter dcm2niix:
 * files grouped by SeriesInstanceUID, slices sorted along the slice normal (ImageOrientationPatient
 * row × column) by ImagePositionPatient, the slice spacing taken from the positions, LPS → RAS, and
 * dcm2niix's voxel order (i = column, j = Rows − 1 − row, k = slices ascending along the normal),
 * so that a volume read here equals dcm2niix's NIfTI voxel for voxel and affine for affine.
 * Oblique orientations stay in the affine (no resampling). Gantry tilt, missing slices, mixed
 * image sizes or orientations, duplicate positions and localizers are detected: localizers (ImageType
 * LOCALIZER) are left out with a warning, the rest is refused with a message that says which.
 *
 * Parsing is dicom-parser's (explicit and implicit VR, little and big endian, deflate); pixel data
 * see dicom-pixels.ts. Patient-identifying attributes are never put in a message or a warning.
 */
import { readdir, realpath, stat, open } from "node:fs/promises";
import { join, resolve } from "node:path";
import { inflateRawSync } from "node:zlib";
import type dicomParser from "dicom-parser";
import { invalidParameterError, optionsObject, assertNumber } from "../is.js";
import type { Disposal, Volume } from "../types.js";
import { allocArray, disposable, releaseDropped } from "../volume.js";
import { DecodePool, poolSize, type DecodeTask } from "./dicom-decode-pool.js";
import {
  decodeFrame,
  encapsulatedFrame,
  errText,
  isEncapsulated,
  loadDicomParser,
  prepareCodecs,
  storedValues,
  SUPPORTED_TRANSFER_SYNTAXES,
  transferSyntaxName,
  TS,
  type PixelFormat,
  type Stored,
} from "./dicom-pixels.js";

export class DicomError extends Error {
  constructor(label: string, message: string) {
    super(label ? `${label}: ${message}` : message);
    this.name = "DicomError";
  }
}

/** One file of a series, in the volume's slice order (k). */
export interface DicomInstanceRef {
  sopClassUid: string;
  sopInstanceUid: string;
  /** ImagePositionPatient (LPS mm). */
  position: [number, number, number];
}

/** What a volume read from DICOM keeps of its series: enough to write a SEG over it. */
export interface DicomSeriesMeta {
  studyInstanceUid: string;
  seriesInstanceUid: string;
  frameOfReferenceUid: string;
  seriesNumber: number | null;
  seriesDescription: string;
  modality: string;
  transferSyntaxUid: string;
  rows: number;
  columns: number;
  /** [row spacing, column spacing] mm, as DICOM's PixelSpacing. */
  pixelSpacing: [number, number];
  imageOrientationPatient: [number, number, number, number, number, number];
  sliceThickness: number | null;
  /** The files in the volume's k order. */
  instances: DicomInstanceRef[];
  /** The volume's j axis runs against the DICOM rows (dcm2niix's order): j = rows − 1 − row. */
  rowsFlipped: true;
  /** Per-slice RescaleSlope / RescaleIntercept applied. */
  rescale: { slope: number; intercept: number }[];
  /** Things left out or noticed (localizers dropped …); never patient data. */
  warnings: string[];
  /**
   * Patient and study attributes of the source (PatientName, PatientID, StudyDate …), copied into a
   * SEG so that it belongs to the same patient and study. Not enumerable: JSON.stringify, console.log
   * and util.inspect do not show it.
   */
  readonly studyAttributes?: Readonly<Record<string, string>>;
}

/** The source attributes a derived object (SEG) repeats: Patient and General Study modules. */
const STUDY_TAGS: Record<string, string> = {
  SpecificCharacterSet: "x00080005",
  PatientName: "x00100010",
  PatientID: "x00100020",
  PatientBirthDate: "x00100030",
  PatientSex: "x00100040",
  StudyDate: "x00080020",
  StudyTime: "x00080030",
  ReferringPhysicianName: "x00080090",
  StudyID: "x00200010",
  AccessionNumber: "x00080050",
  StudyDescription: "x00081030",
};

function studyAttributesOf(ds: dicomParser.DataSet): Record<string, string> {
  const charset = str(ds, "x00080005");
  const utf8 = /ISO_IR 192/.test(charset);
  const out: Record<string, string> = {};
  for (const [name, tag] of Object.entries(STUDY_TAGS)) {
    const el = ds.elements[tag];
    if (!el || el.length === 0 || el.length > 1024 || el.dataOffset + el.length > ds.byteArray.length) continue;
    const bytes = ds.byteArray.subarray(el.dataOffset, el.dataOffset + el.length);
    const text = utf8 ? new TextDecoder("utf-8").decode(bytes) : Buffer.from(bytes).toString("latin1");
    out[name] = text.replace(/[\0 ]+$/, "").replace(/^ +/, "");
  }
  return out;
}

export type DicomVolume = Volume & { dicom: DicomSeriesMeta };

export interface DicomSeriesSummary {
  seriesInstanceUid: string;
  studyInstanceUid: string;
  seriesNumber: number | null;
  seriesDescription: string;
  modality: string;
  sopClassUid: string;
  transferSyntaxUid: string;
  transferSyntax: string;
  /** Image files in the series (localizers included). */
  files: number;
  slices: number;
  /** [columns, rows, slices]. */
  dims: [number, number, number];
  /** [column spacing, row spacing, slice spacing] mm; slice spacing from the positions (null when it cannot be derived). */
  spacing: [number, number, number | null];
  imageOrientationPatient: number[] | null;
  /** Why readDicomSeries would refuse the series, or null. */
  problem: string | null;
}

/** A file given by its bytes (a zip entry, an upload). */
export interface DicomFileBytes {
  name: string;
  bytes: Uint8Array;
}

export type DicomSource = string | readonly (string | DicomFileBytes)[];

export interface ReadDicomOptions {
  /** The series to read when the files hold several. */
  seriesUid?: string;
  /** Refuse a series whose voxels would take more than this many bytes (default 4 GiB). */
  maxBytes?: number;
  /** Refuse a single file larger than this (default 2 GiB). */
  maxFileBytes?: number;
  /** Stop reading a folder after this many files (default 100 000). */
  maxFiles?: number;
  /** Called after each slice is decoded (readDicomSeries), with slices done and in all. */
  onProgress?: (done: number, total: number) => void;
  /**
   * Worker threads that decode compressed slices (RLE, JPEG …): 0 decodes on the calling thread.
   * Default: min(available parallelism, 4) when the compressed slices hold at least 4 × 512 × 512
   * pixels (fewer decode faster here than a worker starts), else 0.
   * Never more than the compressed slices; uncompressed slices are always read on the calling thread.
   */
  workers?: number;
  /** Stops the read (it rejects with the signal's reason) between files and between slices. */
  signal?: AbortSignal;
}

const DEFAULT_MAX_BYTES = 4 * 2 ** 30;
const DEFAULT_MAX_FILE = 2 * 2 ** 30 - 1;
const DEFAULT_MAX_FILES = 100_000;
const MAX_DIM = 65535;
const MAX_DEPTH = 8;
const MAX_WORKERS = 64;

/** Parsed header of one image file (everything the geometry and pixel decoding need). */
interface Header {
  label: string;
  dataSet: dicomParser.DataSet;
  sopClassUid: string;
  sopInstanceUid: string;
  studyUid: string;
  seriesUid: string;
  frameOfReferenceUid: string;
  seriesNumber: number | null;
  seriesDescription: string;
  modality: string;
  transferSyntax: string;
  rows: number;
  columns: number;
  frames: number;
  samplesPerPixel: number;
  photometric: string;
  bitsAllocated: number;
  bitsStored: number;
  highBit: number;
  pixelRepresentation: number;
  slope: number;
  intercept: number;
  pixelSpacing: [number, number] | null;
  iop: number[] | null;
  ipp: number[] | null;
  sliceThickness: number | null;
  instanceNumber: number | null;
  imageType: string[];
  hasPixels: boolean;
}

// ---------------------------------------------------------------------------------------------
// Gathering files

interface Candidate {
  label: string;
  read: () => Promise<Uint8Array>;
  /** Its first 132 bytes (or fewer), to sniff before reading it whole. */
  head: () => Promise<Uint8Array>;
  size: number;
}

async function gather(src: DicomSource, maxFiles: number, maxFileBytes: number): Promise<Candidate[]> {
  if (typeof src === "string") {
    if (src.length === 0) throw invalidParameterError("pathOrFiles", "a folder, a file or a list of files", src);
    let st;
    try {
      st = await stat(src);
    } catch (e) {
      throw new DicomError(src, `cannot be read (${(e as NodeJS.ErrnoException).code ?? errText(e)})`);
    }
    if (st.isDirectory()) {
      const out: Candidate[] = [];
      const deeper: string[] = [];
      await walk(resolve(src), 0, out, maxFiles, maxFileBytes, new Set(), deeper);
      if (out.length === 0)
        throw new DicomError(
          src,
          deeper.length
            ? `holds no file within ${MAX_DEPTH} folders of it (folders deeper down, such as ${deeper[0]}, are not walked: give the series' own folder)`
            : "is a folder without files",
        );
      return out;
    }
    if (!st.isFile()) throw new DicomError(src, "is neither a regular file nor a folder");
    return [fileCandidate(src, st.size)];
  }
  if (!Array.isArray(src) || src.length === 0) {
    throw invalidParameterError("pathOrFiles", "a folder, a file, or a non-empty array of file paths or { name, bytes }", src);
  }
  if (src.length > maxFiles) throw new DicomError("", `${src.length} files given; options.maxFiles is ${maxFiles}`);
  const out: Candidate[] = [];
  for (let i = 0; i < src.length; i++) {
    const f = src[i];
    if (typeof f === "string" && f.length > 0) {
      let st;
      try {
        st = await stat(f);
      } catch (e) {
        throw new DicomError(f, `cannot be read (${(e as NodeJS.ErrnoException).code ?? errText(e)})`);
      }
      if (!st.isFile()) throw new DicomError(f, "is not a regular file");
      out.push(fileCandidate(f, st.size));
    } else if (f && typeof f === "object" && (f as DicomFileBytes).bytes instanceof Uint8Array) {
      const b = (f as DicomFileBytes).bytes;
      const name = typeof (f as DicomFileBytes).name === "string" ? (f as DicomFileBytes).name : `<file ${i}>`;
      out.push({ label: name, size: b.length, read: async () => b, head: async () => b.subarray(0, 132) });
    } else {
      throw invalidParameterError(`pathOrFiles[${i}]`, "a file path or { name, bytes: Uint8Array }", f);
    }
  }
  return out;
}

function fileCandidate(path: string, size: number): Candidate {
  const bytes = async (n: number) => {
    const fh = await open(path, "r");
    try {
      const buf = Buffer.allocUnsafe(n);
      const { bytesRead } = await fh.read(buf, 0, n, 0);
      return buf.subarray(0, bytesRead);
    } finally {
      await fh.close();
    }
  };
  return { label: path, size, read: () => bytes(size), head: () => bytes(Math.min(size, 132)) };
}

async function walk(
  dir: string,
  depth: number,
  out: Candidate[],
  maxFiles: number,
  maxFileBytes: number,
  seen: Set<string>,
  deeper: string[],
): Promise<void> {
  // (folders deeper down are not walked — a viewer bundled on a patient CD nests its own files
  // deep — and named where the walk then finds nothing)
  if (depth > MAX_DEPTH) {
    deeper.push(dir);
    return;
  }
  // Each folder and file once, however many links lead to it.
  const real = await realpath(dir);
  if (seen.has(real)) return;
  seen.add(real);
  const entries = await readdir(dir, { withFileTypes: true });
  entries.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  for (const e of entries) {
    if (e.name.startsWith(".")) continue;
    const p = join(dir, e.name);
    // Symbolic links are followed (depth-limited, so a loop ends); anything but files and folders is skipped.
    const kind = e.isSymbolicLink()
      ? await stat(p).then(
          (st) => (st.isDirectory() ? "dir" : st.isFile() ? "file" : "other"),
          () => "other",
        )
      : e.isDirectory()
        ? "dir"
        : e.isFile()
          ? "file"
          : "other";
    if (kind === "dir") await walk(p, depth + 1, out, maxFiles, maxFileBytes, seen, deeper);
    else if (kind === "file") {
      const rp = e.isSymbolicLink() ? await realpath(p) : join(real, e.name);
      if (seen.has(rp)) continue;
      seen.add(rp);
      if (out.length >= maxFiles) throw new DicomError(dir, `holds more than options.maxFiles = ${maxFiles} files`);
      const st = await stat(p);
      if (st.size < 132 && !/\.dcm$/i.test(e.name)) continue; // too small to be a DICOM image
      if (st.size > maxFileBytes) throw new DicomError(p, `is ${st.size} bytes, more than options.maxFileBytes = ${maxFileBytes}`);
      out.push(fileCandidate(p, st.size));
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Parsing

/** Whether the bytes look like DICOM: the Part 10 "DICM" marker, or a raw data set starting with group 0008. */
function sniff(b: Uint8Array): "part10" | "explicit" | "implicit" | null {
  if (b.length >= 132 && b[128] === 0x44 && b[129] === 0x49 && b[130] === 0x43 && b[131] === 0x4d) return "part10";
  if (b.length >= 8 && b[0] === 0x08 && b[1] === 0x00) {
    const c1 = b[4]!,
      c2 = b[5]!;
    if (c1 >= 0x41 && c1 <= 0x5a && c2 >= 0x41 && c2 <= 0x5a) return "explicit";
    return "implicit";
  }
  return null;
}

/**
 * Parses one file. A deflated data set inflates within `inflate.left`: one budget for every file of
 * a read (options.maxBytes), since each inflated file is held until the read ends (forty 250 kB
 * files each inflating to 256 MiB would otherwise hold 10 GiB).
 */
function parse(dp: typeof dicomParser, bytes: Uint8Array, label: string, inflate: { left: number; of: number }): dicomParser.DataSet {
  const kind = sniff(bytes);
  if (!kind) throw new DicomError(label, "is not a DICOM file (no DICM marker at byte 128 and no data set at byte 0)");
  const options: dicomParser.ParseDicomOptions = {
    inflater: (arr: Uint8Array, position: number) => {
      let inflated: Buffer;
      try {
        inflated = inflateRawSync(arr.subarray(position), { maxOutputLength: Math.max(1, Math.min(inflate.left, 2 ** 31 - 1)) });
      } catch (e) {
        throw new DicomError(
          label,
          inflate.left < inflate.of
            ? `has a deflated data set that does not inflate within the ${inflate.left} bytes left of options.maxBytes = ${inflate.of} after the deflated files before it (${errText(e)})`
            : `has a deflated data set that does not inflate within ${inflate.of} bytes (${errText(e)})`,
        );
      }
      inflate.left -= inflated.length;
      const full = new Uint8Array(position + inflated.length);
      full.set(arr.subarray(0, position), 0);
      full.set(inflated, position);
      return full;
    },
  } as dicomParser.ParseDicomOptions;
  if (kind === "explicit") (options as { TransferSyntaxUID?: string }).TransferSyntaxUID = TS.explicitLE;
  if (kind === "implicit") (options as { TransferSyntaxUID?: string }).TransferSyntaxUID = TS.implicitLE;
  try {
    return dp.parseDicom(bytes, options);
  } catch (e) {
    if (e instanceof DicomError) throw e;
    // dicom-parser throws strings, Errors, or { exception, dataSet } objects.
    const msg = typeof e === "object" && e !== null && "exception" in e ? String((e as { exception: unknown }).exception) : errText(e);
    const why = msg.replace(/^dicomParser[.:]\w+:? ?/, "");
    if (/buffer overrun|past end|beyond|greater than or equal to 'byteArray' length|end of (the )?buffer/i.test(why)) {
      throw new DicomError(label, `is truncated, or an element's length runs past the end of the file (${why})`);
    }
    throw new DicomError(label, `is not a readable DICOM file (${why})`);
  }
}

function str(ds: dicomParser.DataSet, tag: string): string {
  try {
    return (ds.string(tag) ?? "").trim();
  } catch {
    return "";
  }
}
function int(ds: dicomParser.DataSet, tag: string): number | null {
  const el = ds.elements[tag];
  if (!el || el.length < 2) return null;
  try {
    const v = el.length >= 2 ? ds.uint16(tag) : undefined;
    return v === undefined ? null : v;
  } catch {
    return null;
  }
}
function numbers(ds: dicomParser.DataSet, tag: string): number[] | null {
  const s = str(ds, tag);
  if (!s) return null;
  const parts = s.split("\\").map((x) => Number(x.trim()));
  return parts.every((x) => Number.isFinite(x)) ? parts : null;
}
function num(ds: dicomParser.DataSet, tag: string): number | null {
  const v = numbers(ds, tag);
  return v && v.length >= 1 ? v[0]! : null;
}
/**
 * A value that must be one number where present: null where the element is absent or empty, NaN
 * where its text is not one finite number ("-1024,0", "NaN", "1\\5"), which the checks then refuse
 * naming the text — not the default an absent element takes (an intercept of "-1024,0" read as 0
 * put every voxel 1024 HU too high).
 */
function single(ds: dicomParser.DataSet, tag: string): number | null {
  const s = str(ds, tag).trim();
  if (!s) return null;
  const v = Number(s);
  return Number.isFinite(v) ? v : NaN;
}

function header(ds: dicomParser.DataSet, label: string): Header {
  const transferSyntax = str(ds, "x00020010").replace(/\0/g, "") || TS.implicitLE;
  const vrTag = (t: string) => ds.elements[t];
  const rows = int(ds, "x00280010");
  const columns = int(ds, "x00280011");
  const ba = int(ds, "x00280100");
  const bs = int(ds, "x00280101");
  const hb = int(ds, "x00280102");
  const pr = int(ds, "x00280103");
  const spp = int(ds, "x00280002");
  const framesStr = single(ds, "x00280008");
  const seriesNumber = num(ds, "x00200011");
  return {
    label,
    dataSet: ds,
    sopClassUid: str(ds, "x00080016") || str(ds, "x00020002"),
    sopInstanceUid: str(ds, "x00080018") || str(ds, "x00020003"),
    studyUid: str(ds, "x0020000d"),
    seriesUid: str(ds, "x0020000e"),
    frameOfReferenceUid: str(ds, "x00200052"),
    seriesNumber: seriesNumber === null ? null : seriesNumber,
    seriesDescription: str(ds, "x0008103e"),
    modality: str(ds, "x00080060"),
    transferSyntax,
    rows: rows ?? 0,
    columns: columns ?? 0,
    frames: framesStr ?? 1,
    samplesPerPixel: spp ?? 1,
    photometric: str(ds, "x00280004"),
    bitsAllocated: ba ?? 0,
    bitsStored: bs ?? ba ?? 0,
    highBit: hb ?? (bs ?? ba ?? 0) - 1,
    pixelRepresentation: pr ?? 0,
    slope: single(ds, "x00281053") ?? 1,
    intercept: single(ds, "x00281052") ?? 0,
    pixelSpacing: (numbers(ds, "x00280030") as [number, number] | null) ?? null,
    iop: numbers(ds, "x00200037"),
    ipp: numbers(ds, "x00200032"),
    sliceThickness: num(ds, "x00180050"),
    instanceNumber: num(ds, "x00200013"),
    imageType: str(ds, "x00080008")
      .toUpperCase()
      .split("\\")
      .map((s) => s.trim()),
    hasPixels: vrTag("x7fe00010") !== undefined,
  };
}

/** Checks one image's pixel description before anything is allocated for it. */
function checkImage(h: Header): string | null {
  if (!h.hasPixels) return "has no Pixel Data (7FE0,0010)";
  if (!SUPPORTED_TRANSFER_SYNTAXES[h.transferSyntax]) {
    return `uses transfer syntax ${h.transferSyntax} (${transferSyntaxName(h.transferSyntax)}), which this reader does not decode`;
  }
  if (!(h.rows >= 1 && h.rows <= MAX_DIM)) return `has Rows ${h.rows} (1…${MAX_DIM} expected)`;
  if (!(h.columns >= 1 && h.columns <= MAX_DIM)) return `has Columns ${h.columns} (1…${MAX_DIM} expected)`;
  if (h.samplesPerPixel !== 1) return `has SamplesPerPixel ${h.samplesPerPixel} (1 expected: a grey-scale CT image)`;
  if (h.photometric && h.photometric !== "MONOCHROME2" && h.photometric !== "MONOCHROME1") {
    return `has PhotometricInterpretation ${h.photometric} (MONOCHROME1 or MONOCHROME2 expected)`;
  }
  if (![8, 16, 32].includes(h.bitsAllocated)) return `has BitsAllocated ${h.bitsAllocated} (8, 16 or 32 expected)`;
  if (!(h.bitsStored >= 1 && h.bitsStored <= h.bitsAllocated))
    return `has BitsStored ${h.bitsStored} with BitsAllocated ${h.bitsAllocated} (1…BitsAllocated expected)`;
  if (h.highBit !== h.bitsStored - 1) return `has HighBit ${h.highBit} with BitsStored ${h.bitsStored} (BitsStored − 1 expected)`;
  if (h.pixelRepresentation !== 0 && h.pixelRepresentation !== 1)
    return `has PixelRepresentation ${h.pixelRepresentation} (0 or 1 expected)`;
  const text = (tag: string) => JSON.stringify(str(h.dataSet, tag).trim().slice(0, 64));
  if (h.frames !== 1)
    return `has NumberOfFrames ${Number.isNaN(h.frames) ? text("x00280008") : h.frames} (single-frame images expected; enhanced multi-frame CT is not read)`;
  if (!(Number.isFinite(h.slope) && h.slope !== 0))
    return `has RescaleSlope ${Number.isNaN(h.slope) ? text("x00281053") : h.slope} (a non-zero number expected)`;
  if (!Number.isFinite(h.intercept)) return `has RescaleIntercept ${text("x00281052")} (a number expected)`;
  // every stored value rescaled must be a float32 (a slope of 1e300 made a volume of ±Infinity)
  if (Math.abs(h.slope) * 2 ** h.bitsStored + Math.abs(h.intercept) > 1e30)
    return `has RescaleSlope ${h.slope} and RescaleIntercept ${h.intercept}, which take its ${h.bitsStored}-bit values past what a float32 holds`;
  // Native pixel data must hold Rows × Columns values: checked here, before the volume is allocated.
  const el = h.dataSet.elements.x7fe00010!;
  if (!el.encapsulatedPixelData) {
    const need = h.rows * h.columns * (h.bitsAllocated / 8);
    if (el.length === 0xffffffff || el.length < need) {
      return `has ${el.length} bytes of Pixel Data where Rows ${h.rows} × Columns ${h.columns} × ${h.bitsAllocated / 8} bytes need ${need}`;
    }
    if (el.dataOffset + need > h.dataSet.byteArray.length) return "is truncated: Pixel Data runs past the end of the file";
  } else if (!el.fragments || el.fragments.length === 0) {
    return "has encapsulated Pixel Data without fragments";
  }
  return null;
}

function checkGeometry(h: Header): string | null {
  if (!h.iop || h.iop.length !== 6) return "has no valid ImageOrientationPatient (6 numbers expected)";
  if (!h.ipp || h.ipp.length !== 3) return "has no valid ImagePositionPatient (3 numbers expected)";
  // (a patient lies within metres of the scanner's origin: ±1e308 made a slice spacing of Infinity)
  if (h.ipp.some((v) => Math.abs(v) > 1e6)) return `has ImagePositionPatient ${h.ipp.join("\\")} (within ±10⁶ mm expected)`;
  if (!h.pixelSpacing || h.pixelSpacing.length !== 2 || !(h.pixelSpacing[0]! > 0 && h.pixelSpacing[1]! > 0)) {
    return "has no valid PixelSpacing (2 positive numbers expected)";
  }
  if (!(h.pixelSpacing[0]! <= 1e4 && h.pixelSpacing[1]! <= 1e4))
    return `has PixelSpacing ${h.pixelSpacing.join("\\")} (at most 10⁴ mm expected)`;
  const r = h.iop.slice(0, 3),
    c = h.iop.slice(3, 6);
  const nr = Math.hypot(...r),
    nc = Math.hypot(...c);
  if (Math.abs(nr - 1) > 1e-3 || Math.abs(nc - 1) > 1e-3 || Math.abs(dot(r, c)) > 1e-3) {
    return "has ImageOrientationPatient whose row and column directions are not orthonormal";
  }
  return null;
}

const dot = (a: readonly number[], b: readonly number[]) => a[0]! * b[0]! + a[1]! * b[1]! + a[2]! * b[2]!;
const cross = (a: readonly number[], b: readonly number[]): [number, number, number] => [
  a[1]! * b[2]! - a[2]! * b[1]!,
  a[2]! * b[0]! - a[0]! * b[2]!,
  a[0]! * b[1]! - a[1]! * b[0]!,
];

/** Parses every file; with `keep`, files of other series are dropped at once (their UIDs noted). */
async function readHeaders(
  src: DicomSource,
  opts: Required<Pick<ReadDicomOptions, "maxBytes" | "maxFileBytes" | "maxFiles">> & Pick<ReadDicomOptions, "signal">,
  keep?: string,
) {
  opts.signal?.throwIfAborted();
  const others = new Set<string>();
  const cands = await gather(src, opts.maxFiles, opts.maxFileBytes);
  const dp = await loadDicomParser();
  const headers: Header[] = [];
  const skipped: string[] = [];
  const explicitList = typeof src !== "string" || cands.length === 1;
  const inflate = { left: opts.maxBytes, of: opts.maxBytes };
  // The files kept for the read are held until it ends: their bytes together at most twice
  // options.maxBytes, or 256 MiB (five slices with a 600 MB private element each took 3 GB for a
  // 10 MB read)
  const holdable = Math.max(2 * opts.maxBytes, 256 * 2 ** 20);
  let held = 0;
  let n = 0;
  for (const c of cands) {
    // (the event loop turns every 64 files: a zip of 100 000 tiny files is seconds of parsing, and a
    // service reading it answers its other requests meanwhile)
    if (++n % 64 === 0) {
      await new Promise((r) => setImmediate(r));
      opts.signal?.throwIfAborted();
    }
    if (c.size > opts.maxFileBytes)
      throw new DicomError(c.label, `is ${c.size} bytes, more than options.maxFileBytes = ${opts.maxFileBytes}`);
    // (sniffed from its first bytes before it is read whole: a 1.5 GB file beside the series was
    // read into memory only to be skipped)
    if (!sniff(await c.head())) {
      if (explicitList) throw new DicomError(c.label, "is not a DICOM file (no DICM marker at byte 128 and no data set at byte 0)");
      skipped.push(c.label); // a folder may hold DICOMDIR-less extras (README, .json …), as dcm2niix skips them
      continue;
    }
    if (held + c.size > holdable) {
      const series = new Set(headers.map((x) => x.seriesUid)).size;
      throw new DicomError(
        c.label,
        `takes the files read past ${holdable} bytes (twice options.maxBytes = ${opts.maxBytes}, at least 256 MiB); a series' files are about its voxels' size${series > 1 ? ` (${series} series so far: choose one with options.seriesUid, or --series)` : ""}`,
      );
    }
    const bytes = await c.read();
    const ds = parse(dp, bytes, c.label, inflate);
    const h = header(ds, c.label);
    if (!h.hasPixels && !h.rows && (h.sopClassUid === "1.2.840.10008.1.3.10" || !h.seriesUid)) {
      if (explicitList) throw new DicomError(c.label, "holds no image (no Pixel Data, Rows or Columns)");
      skipped.push(c.label); // DICOMDIR and other non-image objects
      continue;
    }
    if (keep !== undefined && h.seriesUid !== keep) others.add(h.seriesUid || "(no SeriesInstanceUID)");
    else {
      headers.push(h);
      held += c.size;
    }
  }
  return { headers, skipped, count: cands.length, others };
}

function resolvedOptions(options: unknown) {
  const o = optionsObject("options", options);
  const maxBytes = (o.maxBytes as number | undefined) ?? DEFAULT_MAX_BYTES;
  assertNumber("options.maxBytes", maxBytes, 1);
  const maxFileBytes = (o.maxFileBytes as number | undefined) ?? DEFAULT_MAX_FILE;
  assertNumber("options.maxFileBytes", maxFileBytes, 1);
  const maxFiles = (o.maxFiles as number | undefined) ?? DEFAULT_MAX_FILES;
  assertNumber("options.maxFiles", maxFiles, 1);
  if (o.seriesUid !== undefined && (typeof o.seriesUid !== "string" || o.seriesUid.length === 0)) {
    throw invalidParameterError("options.seriesUid", "a SeriesInstanceUID string", o.seriesUid);
  }
  if (o.onProgress !== undefined && typeof o.onProgress !== "function")
    throw invalidParameterError("options.onProgress", "a function (done, total)", o.onProgress);
  if (o.signal !== undefined && !(o.signal instanceof AbortSignal))
    throw invalidParameterError("options.signal", "an AbortSignal", o.signal);
  if (o.workers !== undefined && !(Number.isInteger(o.workers) && (o.workers as number) >= 0 && (o.workers as number) <= MAX_WORKERS)) {
    throw invalidParameterError("options.workers", `an integer from 0 (the calling thread) to ${MAX_WORKERS}`, o.workers);
  }
  return {
    maxBytes,
    maxFileBytes,
    maxFiles,
    seriesUid: o.seriesUid as string | undefined,
    onProgress: o.onProgress as ReadDicomOptions["onProgress"],
    workers: o.workers as number | undefined,
    signal: o.signal as AbortSignal | undefined,
  };
}

// ---------------------------------------------------------------------------------------------
// Geometry

interface Plan {
  slices: Header[];
  dropped: string[];
  step: [number, number, number];
  spacingZ: number;
  problem: string | null;
}

/** Decides which files form the volume and in what order, or why not. */
function plan(all: Header[]): Plan {
  const dropped: string[] = [];
  let imgs = all.filter((h) => {
    if (h.imageType.includes("LOCALIZER")) {
      dropped.push(h.label);
      return false;
    }
    return true;
  });
  const fail = (problem: string): Plan => ({ slices: imgs, dropped, step: [0, 0, 1], spacingZ: 0, problem });
  if (imgs.length === 0) return fail("holds only localizer images (ImageType LOCALIZER)");
  for (const h of imgs) {
    const p = checkImage(h) ?? checkGeometry(h);
    if (p) return fail(`file ${h.label} ${p}`);
  }
  // Mixed sizes / orientations / spacings: name the groups.
  const keyOf = (h: Header) =>
    `${h.columns}×${h.rows}, orientation ${h.iop!.map((v) => +v.toFixed(4)).join("\\")}, pixel spacing ${h.pixelSpacing!.join("\\")}`;
  const groups = new Map<string, Header[]>();
  for (const h of imgs) {
    const k = keyOf(h);
    const g = groups.get(k);
    if (g) g.push(h);
    else groups.set(k, [h]);
  }
  if (groups.size > 1) {
    // dcm2niix leaves out a localizer that its ImageType does not name when it is a lone image of
    // another orientation; do the same for groups of at most 3 images beside a main group, each of
    // another orientation (images of the main orientation but another size are part of the scan:
    // refused as mixed sizes, not dropped — three end slices were cut from a volume so)
    const sorted = [...groups.entries()].sort((a, b) => b[1].length - a[1].length);
    const main = sorted[0]!;
    const rest = sorted.slice(1);
    const others = rest.reduce((s, [, v]) => s + v.length, 0);
    const sameSize = rest.every(([, v]) => v[0]!.rows === main[1][0]!.rows && v[0]!.columns === main[1][0]!.columns);
    const mainIop = main[1][0]!.iop!;
    const otherOrientation = rest.every(([, v]) => v[0]!.iop!.some((x, i) => Math.abs(x - mainIop[i]!) > 1e-3));
    if (others <= 3 && main[1].length >= 5 && !sameSize && otherOrientation) {
      for (const [, v] of rest) for (const h of v) dropped.push(h.label);
      imgs = main[1];
    } else {
      const what = sameSize ? "orientations or pixel spacings" : "image sizes";
      return fail(`mixes ${what}: ${sorted.map(([k, v]) => `${v.length} × (${k})`).join("; ")}`);
    }
  }
  // (after the localizers are left out: a scout may have a frame of reference of its own)
  // One series UID over images of two studies or frames of reference (an anonymiser's or a
  // merger's fault) is not one volume: its slices would be stacked as if they were.
  for (const [field, label] of [
    ["studyUid", "StudyInstanceUIDs"],
    ["frameOfReferenceUid", "FrameOfReferenceUIDs"],
  ] as const) {
    const seen = new Set(imgs.map((h) => h[field]).filter((u) => u !== ""));
    if (seen.size > 1)
      return fail(
        `holds images of ${seen.size} ${label} (${[...seen]
          .slice(0, 3)
          .map((u) => u.slice(0, 64))
          .join(", ")}) under one SeriesInstanceUID; they are not one volume`,
      );
  }
  const h0 = imgs[0]!;
  const iop = h0.iop!;
  const normal = cross(iop.slice(0, 3), iop.slice(3, 6));
  const withD = imgs.map((h) => ({ h, d: dot(h.ipp!, normal) }));
  withD.sort((a, b) => a.d - b.d);
  const slices = withD.map((x) => x.h);
  for (let k = 1; k < withD.length; k++) {
    if (Math.abs(withD[k]!.d - withD[k - 1]!.d) < 1e-4) {
      return {
        ...fail(
          `has two images at the same position along the slice normal (${withD[k]!.d.toFixed(3)} mm: files ${withD[k - 1]!.h.label} and ${withD[k]!.h.label}); several acquisitions, echoes or phases in one series are not read`,
        ),
        slices,
      };
    }
  }
  let step: [number, number, number];
  let spacingZ: number;
  if (slices.length === 1) {
    spacingZ = h0.sliceThickness && h0.sliceThickness > 0 ? h0.sliceThickness : 1;
    step = [normal[0] * spacingZ, normal[1] * spacingZ, normal[2] * spacingZ];
  } else {
    const first = slices[0]!.ipp!,
      last = slices[slices.length - 1]!.ipp!;
    const n = slices.length - 1;
    step = [(last[0]! - first[0]!) / n, (last[1]! - first[1]!) / n, (last[2]! - first[2]!) / n];
    spacingZ = Math.hypot(...step);
    if (!(Number.isFinite(spacingZ) && spacingZ > 0 && spacingZ <= 1e4))
      return { ...fail(`has slice positions ${spacingZ} mm apart on average (a finite spacing up to 10⁴ mm expected)`), slices };
    // Gantry tilt: the slices step off the normal (the in-plane directions are sheared).
    const along = dot(step, normal);
    const tiltDeg = (Math.acos(Math.min(1, Math.abs(along) / spacingZ)) * 180) / Math.PI;
    if (tiltDeg > 0.01) {
      const tagTilt = num(h0.dataSet, "x00181120");
      return {
        ...fail(
          `has gantry tilt: the slice positions step ${tiltDeg.toFixed(2)}° off the slice normal${tagTilt !== null ? ` (GantryDetectorTilt ${tagTilt}°)` : ""}; the slices are sheared, which a Volume's grid cannot hold without resampling (dcm2niix corrects it by resampling)`,
        ),
        slices,
      };
    }
    // Missing slices or uneven spacing: every gap must match the mean step (the one named is the
    // first that differs from the usual gap, the median: a missing slice's, not its neighbours')
    const mean = (withD[withD.length - 1]!.d - withD[0]!.d) / n;
    const gaps = withD.slice(1).map((x, i) => x.d - withD[i]!.d);
    const usual = [...gaps].sort((a, b) => a - b)[Math.floor(gaps.length / 2)]!;
    const off = (g: number, ref: number) => Math.abs(g - ref) > Math.max(0.01, 0.01 * ref);
    if (gaps.some((g) => off(g, mean))) {
      let i = gaps.findIndex((g) => off(g, usual));
      if (i < 0) i = gaps.findIndex((g) => off(g, mean));
      const minGap = Math.min(...gaps),
        maxGap = Math.max(...gaps);
      const missing = maxGap > 1.5 * minGap;
      return {
        ...fail(
          `has ${missing ? "missing slices" : "uneven slice spacing"}: gaps between slice positions range from ${minGap.toFixed(3)} to ${maxGap.toFixed(3)} mm (first uneven gap of ${gaps[i]!.toFixed(3)} mm after slice ${i + 1} of ${withD.length} in position order)`,
        ),
        slices,
      };
    }
    // Every slice on the line from the first to the last, not shifted sideways in mid-series
    // (every other slice 10 mm aside read as a plain volume; dcm2niix warns of it)
    // (in the slice plane: the gaps along the normal are the check above's; within half a pixel,
    // for scanners' rounding of positions)
    const tol = 0.5 * Math.min(...h0.pixelSpacing!);
    for (let k = 1; k < n; k++) {
      const p = slices[k]!.ipp!;
      const d = [0, 1, 2].map((a) => p[a]! - first[a]! - k * step[a]!);
      const along = dot(d, normal);
      const off = d.map((v, a) => v - along * normal[a]!);
      if (Math.hypot(...off) > tol)
        return {
          ...fail(
            `has slice ${k + 1} of ${slices.length} (file ${slices[k]!.label}) ${Math.hypot(...off).toFixed(3)} mm off the line through the first and last slices' positions; shifted slices are not one volume's grid`,
          ),
          slices,
        };
    }
  }
  return { slices, dropped, step, spacingZ, problem: null };
}

/** RAS+ affine of dcm2niix's voxel order: i = column, j = Rows − 1 − row, k = slice. */
function affineOf(h0: Header, step: readonly number[]): number[] {
  const iop = h0.iop!,
    [dr, dc] = h0.pixelSpacing!;
  const rowDir = iop.slice(0, 3),
    colDir = iop.slice(3, 6); // along a row (column index grows); down a column (row index grows)
  const ipp = h0.ipp!;
  const R = h0.rows;
  // LPS columns: i → rowDir·dc; j → −colDir·dr (row flip); k → step; origin = IPP + (R−1)·dr·colDir.
  const ci = rowDir.map((v) => v * dc!);
  const cj = colDir.map((v) => -v * dr!);
  const o = ipp.map((v, a) => v + (R - 1) * dr! * colDir[a]!);
  const lps = [
    [ci[0]!, cj[0]!, step[0]!, o[0]!],
    [ci[1]!, cj[1]!, step[1]!, o[1]!],
    [ci[2]!, cj[2]!, step[2]!, o[2]!],
  ];
  // RAS = diag(−1, −1, 1) · LPS
  const sign = [-1, -1, 1];
  const out: number[] = [];
  for (let r = 0; r < 3; r++) for (let c = 0; c < 4; c++) out.push(sign[r]! * lps[r]![c]! + 0);
  out.push(0, 0, 0, 1);
  return out;
}

// ---------------------------------------------------------------------------------------------
// Public

/** The series in a folder (or list of files): UIDs, description, modality, size, spacing, orientation. */
export async function listDicomSeries(
  pathOrFiles: DicomSource,
  options?: Omit<ReadDicomOptions, "seriesUid">,
): Promise<DicomSeriesSummary[]> {
  const opts = resolvedOptions(options);
  const { headers } = await readHeaders(pathOrFiles, opts);
  if (headers.length === 0) throw new DicomError(typeof pathOrFiles === "string" ? pathOrFiles : "", "holds no DICOM image");
  const bySeries = group(headers);
  const out: DicomSeriesSummary[] = [];
  for (const [uid, hs] of bySeries) {
    const p = plan(hs);
    const h0 = p.slices[0] ?? hs[0]!;
    out.push({
      seriesInstanceUid: uid,
      studyInstanceUid: h0.studyUid,
      seriesNumber: h0.seriesNumber,
      seriesDescription: h0.seriesDescription,
      modality: h0.modality,
      sopClassUid: h0.sopClassUid,
      transferSyntaxUid: h0.transferSyntax,
      transferSyntax: transferSyntaxName(h0.transferSyntax),
      files: hs.length,
      slices: p.slices.length,
      dims: [h0.columns, h0.rows, p.slices.length],
      spacing: [h0.pixelSpacing?.[1] ?? NaN, h0.pixelSpacing?.[0] ?? NaN, p.problem ? null : p.spacingZ],
      imageOrientationPatient: h0.iop,
      problem: p.problem,
    });
  }
  out.sort((a, b) => (a.seriesNumber ?? Infinity) - (b.seriesNumber ?? Infinity) || (a.seriesInstanceUid < b.seriesInstanceUid ? -1 : 1));
  return out;
}

function group(headers: Header[]): Map<string, Header[]> {
  const m = new Map<string, Header[]>();
  for (const h of headers) {
    const k = h.seriesUid || "(no SeriesInstanceUID)";
    const g = m.get(k);
    if (g)
      g.push(h); // (not a copy a file: 30 000 files of one series took 6 s that way)
    else m.set(k, [h]);
  }
  return m;
}

/**
 * Reads one DICOM series into a Volume: HU (RescaleSlope/Intercept applied; int16 when that is
 * exact, else float32), RAS+ affine, dcm2niix's voxel order. `volume.dicom` keeps the UIDs and the
 * instance order (writeDicomSeg uses them).
 */
export async function readDicomSeries(pathOrFiles: DicomSource, options?: ReadDicomOptions): Promise<DicomVolume & Disposal> {
  const opts = resolvedOptions(options);
  const where = typeof pathOrFiles === "string" ? pathOrFiles : "";
  const { headers, skipped, others } = await readHeaders(pathOrFiles, opts, opts.seriesUid);
  if (opts.seriesUid !== undefined && headers.length === 0 && others.size > 0) {
    throw new DicomError(where, `holds no series with SeriesInstanceUID ${opts.seriesUid} (it holds ${[...others].join(", ")})`);
  }
  if (headers.length === 0) throw new DicomError(where, "holds no DICOM image");
  const bySeries = group(headers);
  let hs: Header[];
  if (opts.seriesUid !== undefined) {
    const found = bySeries.get(opts.seriesUid);
    if (!found) {
      throw new DicomError(where, `holds no series with SeriesInstanceUID ${opts.seriesUid} (it holds ${[...bySeries.keys()].join(", ")})`);
    }
    hs = found;
  } else if (bySeries.size > 1) {
    const desc = [...bySeries.entries()].map(
      ([uid, v]) => `${uid} (#${v[0]!.seriesNumber ?? "?"} "${v[0]!.seriesDescription}", ${v.length} files)`,
    );
    throw new DicomError(where, `holds ${bySeries.size} series; choose one with options.seriesUid (CLI --series): ${desc.join("; ")}`);
  } else {
    hs = [...bySeries.values()][0]!;
  }
  const p = plan(hs);
  if (p.problem) throw new DicomError(where, `series ${hs[0]!.seriesUid || "(no SeriesInstanceUID)"} ${p.problem}`);
  const slices = p.slices;
  const h0 = slices[0]!;
  const nx = h0.columns,
    ny = h0.rows,
    nz = slices.length;
  const n = nx * ny * nz;
  // Output type: int16 when every slice's slope and intercept are integers and the words stored
  // (BitsStored bits, as scanners write them) rescale inside int16; a word outside BitsStored that
  // leaves int16 (unused high bits set) is found while converting, and the volume is redone as float32.
  const storedMin = h0.pixelRepresentation === 1 ? -(2 ** (h0.bitsStored - 1)) : 0;
  const storedMax = h0.pixelRepresentation === 1 ? 2 ** (h0.bitsStored - 1) - 1 : 2 ** h0.bitsStored - 1;
  let asInt16 = true;
  for (const h of slices) {
    if (h.bitsStored !== h0.bitsStored || h.pixelRepresentation !== h0.pixelRepresentation || h.bitsAllocated !== h0.bitsAllocated) {
      throw new DicomError(
        where,
        `series ${h0.seriesUid} mixes pixel formats (BitsAllocated/BitsStored/PixelRepresentation differ in file ${h.label})`,
      );
    }
    if (!(Number.isInteger(h.slope) && Number.isInteger(h.intercept))) asInt16 = false;
    const a = h.slope * storedMin + h.intercept,
      b = h.slope * storedMax + h.intercept;
    if (Math.min(a, b) < -32768 || Math.max(a, b) > 32767) asInt16 = false;
  }
  const checkBytes = (bytes: number) => {
    if (bytes > opts.maxBytes)
      throw new DicomError(
        where,
        `series ${h0.seriesUid}: ${nx}×${ny}×${nz} voxels need ${bytes} bytes, more than options.maxBytes = ${opts.maxBytes}`,
      );
  };
  checkBytes(n * (asInt16 ? 2 : 4));
  const studyAttributes = studyAttributesOf(h0.dataSet);
  const plane = nx * ny;
  const fmtOf = (h: Header): PixelFormat => ({
    rows: ny,
    columns: nx,
    bitsAllocated: h.bitsAllocated,
    bitsStored: h.bitsStored,
    highBit: h.highBit,
    pixelRepresentation: h.pixelRepresentation,
    transferSyntax: h.transferSyntax,
    littleEndian: h.transferSyntax !== TS.explicitBE,
  });
  const failIn =
    (h: Header) =>
    (msg: string): never => {
      throw new DicomError(h.label, msg);
    };
  // Compressed slices go to a pool of worker threads (started here, after every bound above was
  // checked); uncompressed ones are read here, where copying them to a worker would cost more
  // than it saves.
  const compressed: number[] = [],
    native: number[] = [];
  slices.forEach((h, k) => (isEncapsulated(h.dataSet) ? compressed : native).push(k));
  const nWorkers = poolSize(opts.workers, compressed.length, plane);
  let pool: DecodePool | null = null;
  if (nWorkers === 0) await prepareCodecs(slices.map((h) => h.transferSyntax));
  /** Rescales slice k's stored words into `data`; false when an int16 volume meets a value outside int16. */
  const place = (data: Int16Array | Float32Array, k: number, stored: Stored): boolean => {
    const h = slices[k]!;
    const base = k * plane;
    const s = h.slope,
      c = h.intercept;
    let lo = 0,
      hi = 0;
    for (let r = 0; r < ny; r++) {
      const src = r * nx,
        dst = base + (ny - 1 - r) * nx;
      for (let i = 0; i < nx; i++) {
        const v = stored[src + i]! * s + c;
        data[dst + i] = v;
        if (v < lo) lo = v;
        else if (v > hi) hi = v;
      }
    }
    return !(data instanceof Int16Array && (lo < -32768 || hi > 32767));
  };
  /** Decodes every slice into `data`; false when an int16 volume meets a value outside int16. */
  const fill = async (data: Int16Array | Float32Array, progress: boolean): Promise<boolean> => {
    let done = 0;
    const tick = () => {
      done++;
      if (progress) opts.onProgress?.(done, nz);
      opts.signal?.throwIfAborted();
    };
    let pooled: Promise<boolean> = Promise.resolve(true);
    if (nWorkers > 0) {
      pool ??= new DecodePool(
        nWorkers,
        compressed.map((k) => slices[k]!.transferSyntax),
        (label, msg) => new DicomError(label, msg),
      );
      const tasks: DecodeTask[] = compressed.map((k) => {
        const h = slices[k]!;
        return { label: h.label, fmt: fmtOf(h), bytes: () => encapsulatedFrame(h.dataSet, failIn(h)) };
      });
      pooled = pool.run(tasks, (i, raw) => {
        const k = compressed[i]!;
        if (!place(data, k, storedValues(raw, tasks[i]!.fmt))) return false;
        tick();
      });
      // Seen by the await below; this keeps an early rejection from counting as unhandled meanwhile.
      pooled.catch(() => {});
    }
    const here = nWorkers > 0 ? native : slices.map((_, k) => k);
    for (let n = 0; n < here.length; n++) {
      const k = here[n]!;
      const h = slices[k]!;
      if (!place(data, k, decodeFrame(h.dataSet, fmtOf(h), failIn(h)))) {
        await pooled.catch(() => false); // (the float32 retry runs the pool again: this run must be over)
        return false;
      }
      tick();
      // Give the event loop a turn (a server keeps answering, the workers' results come in): after
      // each compressed slice decoded here, every 16 slices otherwise.
      if (isEncapsulated(h.dataSet) || n % 16 === 15) await new Promise((r) => setImmediate(r));
    }
    return await pooled;
  };
  let data: Int16Array | Float32Array = allocArray(asInt16 ? "int16" : "float32", n, "DICOM volume") as Int16Array | Float32Array;
  try {
    if (!(await fill(data, true))) {
      checkBytes(n * 4);
      releaseDropped({ data }); // the int16 attempt's memory, now rather than at the next collection
      data = allocArray("float32", n, "DICOM volume") as Float32Array;
      await fill(data, false);
    }
  } finally {
    await (pool as DecodePool | null)?.close();
  }
  for (const h of slices) (h as { dataSet: unknown }).dataSet = null; // let the files' bytes go
  const warnings: string[] = [];
  if (p.dropped.length) warnings.push(`${p.dropped.length} localizer image(s) left out`);
  if (skipped.length) warnings.push(`${skipped.length} file(s) that are not DICOM images skipped`);
  const affine = affineOf(h0, p.step);
  const dicom: DicomSeriesMeta = {
    studyInstanceUid: h0.studyUid,
    seriesInstanceUid: h0.seriesUid,
    frameOfReferenceUid: h0.frameOfReferenceUid,
    seriesNumber: h0.seriesNumber,
    seriesDescription: h0.seriesDescription,
    modality: h0.modality,
    transferSyntaxUid: h0.transferSyntax,
    rows: ny,
    columns: nx,
    pixelSpacing: [h0.pixelSpacing![0]!, h0.pixelSpacing![1]!],
    imageOrientationPatient: h0.iop!.slice(0, 6) as DicomSeriesMeta["imageOrientationPatient"],
    sliceThickness: h0.sliceThickness,
    instances: slices.map((h) => ({
      sopClassUid: h.sopClassUid,
      sopInstanceUid: h.sopInstanceUid,
      position: h.ipp!.slice(0, 3) as [number, number, number],
    })),
    rowsFlipped: true,
    rescale: slices.map((h) => ({ slope: h.slope, intercept: h.intercept })),
    warnings,
  };
  Object.defineProperty(dicom, "studyAttributes", { value: Object.freeze(studyAttributes), enumerable: false });
  return disposable({
    data,
    dims: [nx, ny, nz],
    spacing: [h0.pixelSpacing![1]!, h0.pixelSpacing![0]!, p.spacingZ],
    affine,
    dicom,
  });
}

/** Whether a path is a folder (a DICOM series candidate) — used by readCt. */
export async function isFolder(path: string): Promise<boolean> {
  try {
    return (await stat(path)).isDirectory();
  } catch {
    return false;
  }
}

export { sniff as sniffDicom };
