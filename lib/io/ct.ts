/**
 * readCt: a CT from whatever a user has — a NIfTI file (.nii/.nii.gz), a folder of DICOM files, a
 * zip of one, or one DICOM file — told apart by what the path is and by the bytes, not the name.
 */
import { open, stat } from "node:fs/promises";
import { crc32 } from "node:zlib";
import { fileURLToPath } from "node:url";
import type yauzl from "yauzl";
import { invalidParameterError, optionsObject, assertNumber } from "../is.js";
import type { Disposal, Volume } from "../types.js";
import { DicomError, readDicomSeries, sniffDicom, type DicomFileBytes, type DicomVolume } from "./dicom.js";
import { readNifti } from "./nifti.js";
import { buildHeader } from "./nifti-header.js";

export interface ReadCtOptions {
  /** DICOM: the series to read when the folder or zip holds several. */
  seriesUid?: string;
  /** Refuse voxel data (and, for a zip, its unpacked files) larger than this (default 4 GiB). */
  maxBytes?: number;
  /** Name used in messages when reading bytes. */
  name?: string;
  /** DICOM: stops the unpacking and the read between files and slices (rejects with its reason). */
  signal?: AbortSignal;
}

const DEFAULT_MAX_BYTES = 4 * 2 ** 30;
const MAX_ZIP_ENTRIES = 100_000;

const isZip = (b: Uint8Array) => b.length >= 4 && b[0] === 0x50 && b[1] === 0x4b && b[2] === 0x03 && b[3] === 0x04;

/**
 * Reads a CT: a NIfTI file or its bytes, a DICOM series folder, a zip of a DICOM series (path or
 * bytes), or a single DICOM file. A volume read from DICOM carries `dicom` (see readDicomSeries).
 */
export async function readCt(pathOrBytes: string | URL | Uint8Array, options?: ReadCtOptions): Promise<(Volume | DicomVolume) & Disposal> {
  const opts = optionsObject("options", options);
  const maxBytes = (opts.maxBytes as number | undefined) ?? DEFAULT_MAX_BYTES;
  assertNumber("options.maxBytes", maxBytes, 1);
  const seriesUid = opts.seriesUid as string | undefined;
  if (seriesUid !== undefined && (typeof seriesUid !== "string" || seriesUid.length === 0))
    throw invalidParameterError("options.seriesUid", "a SeriesInstanceUID string", seriesUid);
  if (opts.name !== undefined && typeof opts.name !== "string") throw invalidParameterError("options.name", "a string", opts.name);
  if (opts.signal !== undefined && !(opts.signal instanceof AbortSignal))
    throw invalidParameterError("options.signal", "an AbortSignal", opts.signal);
  const signal = opts.signal as AbortSignal | undefined;
  const dicomOpts = { maxBytes, ...(seriesUid ? { seriesUid } : {}), ...(signal ? { signal } : {}) };
  if (pathOrBytes instanceof Uint8Array) {
    const label = (opts.name as string | undefined) ?? "<bytes>";
    if (isZip(pathOrBytes)) return readDicomSeries(await unzip(pathOrBytes, label, maxBytes, signal), dicomOpts);
    if (sniffDicom(pathOrBytes) === "part10") return readDicomSeries([{ name: label, bytes: pathOrBytes }], dicomOpts);
    return readNifti(pathOrBytes, { maxBytes, name: label });
  }
  if (!(pathOrBytes instanceof URL) && (typeof pathOrBytes !== "string" || pathOrBytes.length === 0)) {
    throw invalidParameterError(
      "pathOrBytes",
      "a NIfTI file, a DICOM folder, a zip of a DICOM series (path or URL), or a Uint8Array of such a file",
      pathOrBytes,
    );
  }
  const path = pathOrBytes instanceof URL ? fileURLToPath(pathOrBytes) : pathOrBytes;
  let st;
  try {
    st = await stat(path);
  } catch {
    // Let the NIfTI reader give its usual message for a missing file.
    return readNifti(path, { maxBytes });
  }
  if (st.isDirectory()) return readDicomSeries(path, dicomOpts);
  if (st.isFile()) {
    const head = Buffer.alloc(132);
    const fh = await open(path, "r");
    let n: number;
    try {
      n = (await fh.read(head, 0, 132, 0)).bytesRead;
    } finally {
      await fh.close();
    }
    const h = head.subarray(0, n);
    if (isZip(h)) return readDicomSeries(await unzip(path, path, maxBytes, signal), dicomOpts);
    if (sniffDicom(h) === "part10") return readDicomSeries([path], dicomOpts);
  }
  return readNifti(path, { maxBytes });
}

/**
 * The files of a zip, in memory: entry count, declared sizes and their sum are checked before
 * anything is inflated, yauzl checks that each entry inflates to its declared size, and each
 * entry's CRC-32 is checked here (yauzl does not: a flipped byte read as a changed voxel). The zip
 * is closed on every failure (its file descriptor had stayed open).
 */
async function unzip(src: string | Uint8Array, label: string, maxBytes: number, signal?: AbortSignal): Promise<DicomFileBytes[]> {
  const yz = (await import("yauzl")).default;
  signal?.throwIfAborted();
  return new Promise((resolvePromise, reject) => {
    let opened: yauzl.ZipFile | undefined;
    const fail = (msg: string) => {
      opened?.close();
      reject(new DicomError(label, msg));
    };
    const onZip = (err: Error | null, zip?: yauzl.ZipFile) => {
      if (err || !zip) return fail(`is not a readable zip (${err?.message ?? "no entries"})`);
      opened = zip;
      if (zip.entryCount > MAX_ZIP_ENTRIES) {
        zip.close();
        return fail(`holds ${zip.entryCount} entries (at most ${MAX_ZIP_ENTRIES})`);
      }
      const out: DicomFileBytes[] = [];
      let total = 0;
      zip.on("error", (e: Error) => fail(`is a damaged zip (${e.message})`));
      zip.on("entry", (entry: yauzl.Entry) => {
        if (signal?.aborted) {
          zip.close();
          return reject(signal.reason);
        }
        const name = entry.fileName;
        const base = name.split("/").pop() ?? "";
        if (name.endsWith("/") || base.startsWith(".") || name.startsWith("__MACOSX/") || base.toUpperCase() === "DICOMDIR")
          return zip.readEntry();
        total += entry.uncompressedSize;
        if (total > maxBytes) {
          zip.close();
          return fail(`unpacks to more than options.maxBytes = ${maxBytes} bytes (declared sizes)`);
        }
        zip.openReadStream(entry, (e, stream) => {
          if (e || !stream) return fail(`has an entry that cannot be read (${e?.message})`);
          const chunks: Buffer[] = [];
          stream.on("data", (c: Buffer) => chunks.push(c));
          stream.on("error", (se: Error) => fail(`has a damaged entry (${se.message})`));
          stream.on("end", () => {
            const bytes = Buffer.concat(chunks);
            if (crc32(bytes) !== entry.crc32)
              return fail(`has entry ${JSON.stringify(name.slice(0, 200))} whose bytes fail its CRC-32 check (a damaged zip)`);
            if (bytes.length >= 132 || /\.dcm$/i.test(base)) {
              if (sniffDicom(bytes)) out.push({ name: `${label}:${name}`, bytes });
            }
            zip.readEntry();
          });
        });
      });
      zip.on("end", () => {
        if (out.length === 0) return fail("holds no DICOM file");
        zip.close();
        resolvePromise(out);
      });
      zip.readEntry();
    };
    if (typeof src === "string") yz.open(src, { lazyEntries: true, validateEntrySizes: true }, onZip);
    else yz.fromBuffer(Buffer.from(src.buffer, src.byteOffset, src.length), { lazyEntries: true, validateEntrySizes: true }, onZip);
  });
}

/** A CT volume read from DICOM (int16 or float32 HU) as uncompressed NIfTI-1 bytes, for a viewer. */
export function ctNiftiBytes(v: Volume): Uint8Array {
  const dtype = v.data instanceof Int16Array ? "int16" : v.data instanceof Float32Array ? "float32" : undefined;
  if (!dtype) throw invalidParameterError("v.data", "an Int16Array or Float32Array (a CT read by readCt)", v.data);
  const header = buildHeader({
    version: 1,
    dims: v.dims,
    dtype,
    spacing: v.spacing,
    affine: v.affine,
    sclSlope: 0,
    sclInter: 0,
    qformCode: 1,
    sformCode: 1,
    description: "bhsd: from DICOM",
  });
  const out = new Uint8Array(header.length + v.data.byteLength);
  out.set(header, 0);
  out.set(new Uint8Array(v.data.buffer, v.data.byteOffset, v.data.byteLength), header.length);
  return out;
}
