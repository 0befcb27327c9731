/**
 * readNifti / writeNifti: NIfTI-1 and NIfTI-2, `.nii` and `.nii.gz`, one 3-D volume.
 * Every check on the header happens before the voxels are allocated; the voxels are read straight
 * into the array that is returned (no intermediate copy), gzip is streamed through Node's zlib.
 */
import { constants, createWriteStream, type Stats } from "node:fs";
import { endianness } from "node:os";
import { open, type FileHandle } from "node:fs/promises";
import { Readable } from "node:stream";
import { pipeline } from "node:stream/promises";
import { fileURLToPath } from "node:url";
import { createGunzip, createGzip } from "node:zlib";
import { activeBackend } from "../backends/index.js";
import { assertNumber, dtypeOf, inArray, invalidParameterError, optionsObject } from "../is.js";
import { replaceFile } from "./small-file.js";
import type { Disposal, DTypeName, NiftiMeta, Volume, VoxelArray } from "../types.js";
import { ARRAY_CTOR, allocArray, assertVolume, BYTES_PER_ELEMENT, disposable, MAX_ELEMENTS } from "../volume.js";
import {
  geometry,
  headerSizeFrom,
  NIFTI2_HEADER,
  NiftiError,
  parseHeader,
  voxelLayout,
  buildHeader,
  type NiftiHeader,
  type VoxelLayout,
} from "./nifti-header.js";

export { NiftiError } from "./nifti-header.js";

/**
 * The compressed reads and inflated chunks of a .nii.gz: each is a round trip through libuv's
 * threads, and at 64 KiB those round trips, not the inflating, were most of a read (a 512×512×40
 * CT: 250–320 ms against 130 ms with 1 MiB, the same bytes inflated; nibabel 155 ms). Also the most
 * that is inflated before the header has been checked.
 */
const GZIP_CHUNK = 1 << 20;

/** gzip's best ratio is about 1032:1; no stream of n bytes can inflate to more than this. */
const MAX_GZIP_RATIO = 1032;

export interface ReadNiftiOptions {
  /** Refuse files whose voxel data is larger than this many bytes (default 4 GiB). */
  maxBytes?: number;
  /** How the limit is named in its error (default "options.maxBytes"; bhsd's commands say "--max-input-mb"). */
  limitName?: string;
  /** Name used in error messages when reading bytes (default "<bytes>"). */
  name?: string;
}

const DEFAULT_MAX_BYTES = 4 * 2 ** 30;

type Source = string | URL | Uint8Array;

function labelOf(src: Source, name?: string): string {
  if (typeof src === "string") return src;
  if (src instanceof URL) return fileURLToPath(src);
  return name ?? "<bytes>";
}

function isGzip(b: Uint8Array): boolean {
  return b.length >= 2 && b[0] === 0x1f && b[1] === 0x8b;
}

/**
 * Reads a NIfTI-1 or NIfTI-2 file (`.nii` or `.nii.gz`, detected from the bytes) or its bytes. The
 * volume is disposable: `using ct = await readNifti(path)` gives its memory back as the block ends.
 */
export async function readNifti(pathOrBytes: Source, options?: ReadNiftiOptions): Promise<Volume & Disposal> {
  const opts = optionsObject("options", options);
  const maxBytes = opts.maxBytes ?? DEFAULT_MAX_BYTES;
  assertNumber("options.maxBytes", maxBytes, 1);
  if (opts.limitName !== undefined && typeof opts.limitName !== "string")
    throw invalidParameterError("options.limitName", "a string", opts.limitName);
  const limit: Limit = { bytes: maxBytes, name: (opts.limitName as string | undefined) ?? "options.maxBytes" };
  if (opts.name !== undefined && typeof opts.name !== "string") throw invalidParameterError("options.name", "a string", opts.name);
  checkSource(pathOrBytes);
  const label = labelOf(pathOrBytes, opts.name as string | undefined);
  const r: { header: NiftiHeader; layout: VoxelLayout; data: VoxelArray; prescaled?: boolean } =
    pathOrBytes instanceof Uint8Array ? await fromBytes(pathOrBytes, label, limit) : await fromFile(pathOrBytes, label, limit);
  return disposable(await toVolume(r.header, r.layout, r.data, r.prescaled ?? false));
}

/** Reads only the header: dims, datatype, spacing, affine, without touching the voxels. */
export async function readNiftiHeader(
  pathOrBytes: Source,
  options?: { name?: string },
): Promise<{
  dims: [number, number, number];
  datatype: DTypeName;
  spacing: [number, number, number];
  affine: number[];
  meta: NiftiMeta;
  voxelBytes: number;
}> {
  const opts = optionsObject("options", options);
  if (opts.name !== undefined && typeof opts.name !== "string") throw invalidParameterError("options.name", "a string", opts.name);
  checkSource(pathOrBytes);
  const label = labelOf(pathOrBytes, opts.name as string | undefined);
  let head: Uint8Array;
  if (pathOrBytes instanceof Uint8Array) {
    head = isGzip(pathOrBytes) ? await gunzipPrefix(Readable.from([pathOrBytes]), NIFTI2_HEADER, label) : pathOrBytes;
  } else {
    const path = typeof pathOrBytes === "string" ? pathOrBytes : fileURLToPath(pathOrBytes);
    const fh = await openOrThrow(path);
    try {
      const buf = Buffer.alloc(NIFTI2_HEADER);
      const { bytesRead } = await fh.read(buf, 0, NIFTI2_HEADER, 0);
      head = buf.subarray(0, bytesRead);
      if (isGzip(head)) head = await gunzipPrefix(fh.createReadStream({ start: 0, autoClose: false }), NIFTI2_HEADER, label);
    } finally {
      await fh.close();
    }
  }
  const header = parseHeader(head, label);
  const layout = voxelLayout(header, label);
  const g = geometry(header);
  return {
    dims: layout.dims,
    datatype: layout.dtype,
    spacing: g.spacing,
    affine: g.affine,
    meta: metaOf(header, layout, g.source),
    voxelBytes: layout.nbytes,
  };
}

function checkSource(pathOrBytes: unknown): asserts pathOrBytes is Source {
  if (typeof pathOrBytes === "string" ? pathOrBytes.length === 0 : !(pathOrBytes instanceof URL) && !(pathOrBytes instanceof Uint8Array)) {
    throw invalidParameterError("pathOrBytes", "a file path, a file URL or a Uint8Array/Buffer of the file's bytes", pathOrBytes);
  }
}

/** What a non-regular file is, for the message. */
function kindOf(s: Stats): string {
  if (s.isDirectory()) return "a folder";
  if (s.isFIFO()) return "a FIFO (named pipe)";
  if (s.isCharacterDevice()) return "a character device";
  if (s.isBlockDevice()) return "a block device";
  if (s.isSocket()) return "a socket";
  return "not a regular file";
}

/**
 * Opens a regular file for reading. Opening never blocks (O_NONBLOCK: a FIFO would otherwise wait
 * for a writer forever) and anything but a regular file (FIFO, device, folder, socket) is refused
 * from fstat before a byte is read.
 */
async function openOrThrow(path: string) {
  let fh: FileHandle;
  try {
    fh = await open(path, constants.O_RDONLY | constants.O_NONBLOCK);
  } catch (e) {
    const err = e as NodeJS.ErrnoException;
    throw new NiftiError(path, err.code === "ENOENT" ? "no such file" : err.code === "EISDIR" ? "is a folder, not a file" : err.message);
  }
  let st: Stats;
  try {
    st = await fh.stat();
  } catch (e) {
    await fh.close().catch(() => {});
    throw new NiftiError(path, (e as Error).message);
  }
  if (!st.isFile()) {
    await fh.close().catch(() => {});
    throw new NiftiError(path, `is ${kindOf(st)}, not a file`);
  }
  return fh;
}

interface Limit {
  bytes: number;
  name: string;
}

function checkSize(layout: VoxelLayout, label: string, limit: Limit) {
  if (layout.nvox > MAX_ELEMENTS) throw new NiftiError(label, `${layout.nvox} voxels exceed the ${MAX_ELEMENTS}-voxel limit of one array`);
  if (layout.nbytes > limit.bytes)
    throw new NiftiError(label, `voxel data of ${layout.nbytes} bytes exceeds the limit of ${limit.bytes} bytes (${limit.name})`);
}

async function fromFile(src: string | URL, label: string, limit: Limit) {
  const path = typeof src === "string" ? src : fileURLToPath(src);
  const fh = await openOrThrow(path);
  try {
    const size = (await fh.stat()).size;
    const head = Buffer.alloc(Math.min(size, NIFTI2_HEADER));
    await readFully(fh, head, 0, head.length, 0);
    if (isGzip(head)) {
      const be = activeBackend();
      if (be.gunzip) return await fromGzipNative(be.gunzip.bind(be), fh.fd, size, label, limit);
      return await fromGzip(fh.createReadStream({ start: 0, autoClose: false, highWaterMark: GZIP_CHUNK }), size, label, limit);
    }
    const header = parseHeader(head, label);
    const layout = voxelLayout(header, label);
    checkSize(layout, label, limit);
    if (layout.offset > size) throw new NiftiError(label, `vox_offset ${layout.offset} is past the end of the ${size}-byte file`);
    if (layout.offset + layout.nbytes > size) {
      throw new NiftiError(
        label,
        `truncated data: the header needs ${layout.nbytes} bytes of voxels from offset ${layout.offset}, the file has ${size - layout.offset}`,
      );
    }
    // scaled voxels on a backend that reads and converts in one pass (native: pread on its threads,
    // no copy of the raw voxels); the file stays open until it is done
    const be = activeBackend();
    const s = scalingOf(header);
    if (be.readScaled && convertedOnRead(header, layout)) {
      const out = allocArray("float32", layout.nvox, label, { overwritten: true }) as Float32Array;
      try {
        await be.readScaled(fh.fd, layout.offset, layout.dtype, layout.nvox, s.slope, s.inter, out);
      } catch (e) {
        throw new NiftiError(label, (e as Error).message.replace(/^native: /, ""));
      }
      return { header, layout, data: out as VoxelArray, prescaled: true };
    }
    const data = allocArray(layout.dtype, layout.nvox, label, { overwritten: true });
    await readFully(fh, new Uint8Array(data.buffer, data.byteOffset, layout.nbytes), 0, layout.nbytes, layout.offset);
    return { header, layout, data, prescaled: false };
  } finally {
    await fh.close().catch(() => {});
  }
}

async function readFully(fh: Awaited<ReturnType<typeof open>>, buf: Uint8Array, off: number, len: number, pos: number) {
  // fs reads are capped at 2 GiB per call; loop until done.
  while (len > 0) {
    const { bytesRead } = await fh.read(buf, off, Math.min(len, 1 << 30), pos);
    if (bytesRead === 0) throw new Error("unexpected end of file");
    off += bytesRead;
    pos += bytesRead;
    len -= bytesRead;
  }
}

async function fromBytes(bytes: Uint8Array, label: string, limit: Limit) {
  if (isGzip(bytes)) {
    const be = activeBackend();
    if (be.gunzip) return fromGzipNative(be.gunzip.bind(be), bytes, bytes.length, label, limit);
    return fromGzip(Readable.from([bytes]), bytes.length, label, limit);
  }
  const header = parseHeader(bytes.subarray(0, NIFTI2_HEADER), label);
  const layout = voxelLayout(header, label);
  checkSize(layout, label, limit);
  if (layout.offset > bytes.length) throw new NiftiError(label, `vox_offset ${layout.offset} is past the end of the ${bytes.length} bytes`);
  if (layout.offset + layout.nbytes > bytes.length) {
    throw new NiftiError(
      label,
      `truncated data: the header needs ${layout.nbytes} bytes of voxels from offset ${layout.offset}, there are ${bytes.length - layout.offset}`,
    );
  }
  const start = bytes.byteOffset + layout.offset;
  const width = BYTES_PER_ELEMENT[layout.dtype];
  let data: VoxelArray;
  if (start % width === 0 && header.littleEndian) {
    data = new ARRAY_CTOR[layout.dtype](bytes.buffer, start, layout.nvox); // a view: no copy
  } else {
    data = allocArray(layout.dtype, layout.nvox, label, { overwritten: true });
    new Uint8Array(data.buffer).set(bytes.subarray(layout.offset, layout.offset + layout.nbytes));
  }
  return { header, layout, data };
}

type Gunzip = NonNullable<ReturnType<typeof activeBackend>["gunzip"]>;

/** The header checks fromGzip makes once it has the header's bytes; the voxel layout. */
function checkedGzipHeader(head: Uint8Array, compressedSize: number, label: string, limit: Limit) {
  const header = parseHeader(head, label);
  const layout = voxelLayout(header, label);
  checkSize(layout, label, limit);
  const bound = compressedSize * MAX_GZIP_RATIO + 65536;
  if (layout.offset + layout.nbytes > bound) {
    throw new NiftiError(
      label,
      `truncated data: the header needs ${layout.offset + layout.nbytes} bytes but ${compressedSize} gzip bytes cannot inflate to more than about ${bound}`,
    );
  }
  return { header, layout };
}

/**
 * A .nii.gz inflated by the backend (native: zlib on a worker thread, 1 MiB pieces straight into
 * the result, scaled voxels converted as they come): the header first (the stream's first bytes,
 * checked and the size limit applied before anything is allocated), then the voxels. The source:
 * an open file (read from byte 0) or the file's bytes.
 */
async function fromGzipNative(gunzip: Gunzip, source: number | Uint8Array, compressedSize: number, label: string, limit: Limit) {
  const inflate = async (
    skip: number,
    dtype: DTypeName | null,
    slope: number,
    inter: number,
    out: Uint8Array | Float32Array,
    from: number | Uint8Array = source,
  ) => {
    try {
      return await gunzip(from, skip, dtype, slope, inter, out);
    } catch (e) {
      throw new NiftiError(label, (e as Error).message.replace(/^native: /, ""));
    }
  };
  const first = new Uint8Array(NIFTI2_HEADER);
  // the header from the stream's first bytes: of bytes in memory only a prefix is handed over (the
  // native call copies what it is given), the whole when the prefix does not reach the header (a
  // gzip header may carry a long name or comment)
  const prefix = typeof source === "number" || source.length <= 1 << 16 ? source : source.subarray(0, 1 << 16);
  let n = await inflate(0, null, 1, 0, first, prefix);
  if (n < NIFTI2_HEADER && prefix !== source) n = await inflate(0, null, 1, 0, first);
  if (n === 0) throw new NiftiError(label, "empty file (the gzip stream holds no bytes)");
  const head = first.subarray(0, n);
  if (n < 4 || n < headerSizeFrom(head, label)) {
    parseHeader(head, label); // throws the precise fault
    throw new NiftiError(label, "truncated header");
  }
  const { header, layout } = checkedGzipHeader(head, compressedSize, label, limit);
  const s = scalingOf(header);
  let data: VoxelArray, got: number, prescaled: boolean;
  if (convertedOnRead(header, layout)) {
    data = allocArray("float32", layout.nvox, label, { overwritten: true });
    got = await inflate(layout.offset, layout.dtype, s.slope, s.inter, data as Float32Array);
    prescaled = true;
  } else {
    data = allocArray(layout.dtype, layout.nvox, label, { overwritten: true });
    got = await inflate(layout.offset, null, 1, 0, new Uint8Array(data.buffer, data.byteOffset, layout.nbytes));
    prescaled = false;
  }
  if (got < layout.nbytes) {
    throw new NiftiError(label, `truncated data: the header needs ${layout.nbytes} bytes of voxels, the gzip stream holds ${got}`);
  }
  return { header, layout, data, prescaled };
}

/** Streams a gzip source, checking the header before allocating, and inflates into the result. */
async function fromGzip(source: Readable, compressedSize: number, label: string, limit: Limit) {
  // output chunks of GZIP_CHUNK: the header is checked (and the size limit applied) after at most
  // that much has been inflated, never after the rest
  const gunzip = createGunzip({ chunkSize: GZIP_CHUNK });
  source.on("error", (e) => gunzip.destroy(e));
  source.pipe(gunzip);
  const pending: Buffer[] = [];
  let pendingBytes = 0;
  let header: NiftiHeader | undefined, layout: VoxelLayout | undefined, data: VoxelArray | undefined;
  let target: Uint8Array | undefined;
  let skip = 0,
    filled = 0;
  const take = (chunk: Uint8Array) => {
    if (skip > 0) {
      const n = Math.min(skip, chunk.length);
      skip -= n;
      chunk = chunk.subarray(n);
    }
    const n = Math.min(chunk.length, target!.length - filled);
    target!.set(chunk.subarray(0, n), filled);
    filled += n;
  };
  try {
    for await (const chunk of gunzip as AsyncIterable<Buffer>) {
      if (!header) {
        pending.push(chunk);
        pendingBytes += chunk.length;
        if (pendingBytes < 4) continue;
        const head = Buffer.concat(pending, pendingBytes);
        const need = headerSizeFrom(head, label);
        if (pendingBytes < need) continue;
        ({ header, layout } = checkedGzipHeader(head, compressedSize, label, limit));
        data = allocArray(layout.dtype, layout.nvox, label, { overwritten: true });
        target = new Uint8Array(data.buffer, data.byteOffset, layout.nbytes);
        skip = layout.offset;
        take(head);
      } else take(chunk);
      if (target && filled === target.length) break;
    }
  } catch (e) {
    if (e instanceof NiftiError) throw e;
    const err = e as NodeJS.ErrnoException;
    if (typeof err.code === "string" && err.code.startsWith("Z_")) {
      throw new NiftiError(label, `broken gzip stream: ${err.message}`);
    }
    throw new NiftiError(label, err.message);
  } finally {
    gunzip.destroy();
    source.destroy();
  }
  if (!header) {
    if (pendingBytes === 0) throw new NiftiError(label, "empty file (the gzip stream holds no bytes)");
    parseHeader(Buffer.concat(pending, pendingBytes), label); // throws the precise fault
    throw new NiftiError(label, "truncated header");
  }
  if (filled < target!.length) {
    throw new NiftiError(label, `truncated data: the header needs ${layout!.nbytes} bytes of voxels, the gzip stream holds ${filled}`);
  }
  return { header, layout: layout!, data: data! };
}

/** Inflates just the first `n` bytes of a gzip stream. */
async function gunzipPrefix(source: Readable, n: number, label: string): Promise<Uint8Array> {
  const gunzip = createGunzip({ chunkSize: 1 << 16 });
  source.on("error", (e) => gunzip.destroy(e));
  source.pipe(gunzip);
  const parts: Buffer[] = [];
  let total = 0;
  try {
    for await (const chunk of gunzip as AsyncIterable<Buffer>) {
      parts.push(chunk);
      total += chunk.length;
      if (total >= n) break;
    }
  } catch (e) {
    throw new NiftiError(label, `broken gzip stream: ${(e as Error).message}`);
  } finally {
    gunzip.destroy();
    source.destroy();
  }
  return Buffer.concat(parts, total).subarray(0, Math.min(total, n));
}

function swapBytes(data: VoxelArray) {
  const width = data.BYTES_PER_ELEMENT;
  if (width === 1) return;
  const b = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  for (let i = 0; i < b.length; i += width) {
    for (let j = 0, k = width - 1; j < k; j++, k--) {
      const t = b[i + j]!;
      b[i + j] = b[i + k]!;
      b[i + k] = t;
    }
  }
}

/** Whether a native read converts the voxels to float32 as they come: scaled ones in the host's byte order. */
function convertedOnRead(h: NiftiHeader, layout: VoxelLayout): boolean {
  return scalingOf(h).scaled && h.littleEndian && endianness() === "LE" && layout.nvox > 0;
}

function scalingOf(h: NiftiHeader): { slope: number; inter: number; scaled: boolean } {
  const slope = h.sclSlope;
  const inter = Number.isFinite(h.sclInter) ? h.sclInter : 0;
  // NIfTI: scl_slope 0 means no scaling; a non-finite slope is treated the same way.
  if (!Number.isFinite(slope) || slope === 0 || (slope === 1 && inter === 0)) return { slope: 1, inter: 0, scaled: false };
  return { slope, inter, scaled: true };
}

function metaOf(h: NiftiHeader, layout: VoxelLayout, source: NiftiMeta["affineSource"]): NiftiMeta {
  const s = scalingOf(h);
  return {
    version: h.version,
    datatype: layout.dtype,
    sclSlope: s.slope,
    sclInter: s.inter,
    scaled: s.scaled,
    qformCode: h.qformCode,
    sformCode: h.sformCode,
    affineSource: source,
  };
}

async function toVolume(header: NiftiHeader, layout: VoxelLayout, raw: VoxelArray, prescaled = false): Promise<Volume> {
  const g = geometry(header);
  const meta = metaOf(header, layout, g.source);
  if (prescaled) return { data: raw, dims: layout.dims, spacing: g.spacing, affine: g.affine, meta };
  if (!header.littleEndian) swapBytes(raw);
  let data: VoxelArray = raw;
  if (meta.scaled) {
    const out = allocArray("float32", layout.nvox, "scaled voxels", { overwritten: true }) as Float32Array;
    await activeBackend().rescaleToFloat32(raw, meta.sclSlope, meta.sclInter, out);
    data = out;
  }
  return { data, dims: layout.dims, spacing: g.spacing, affine: g.affine, meta };
}

export interface WriteNiftiOptions {
  /** Datatype to store; default: the file's original datatype for a volume read with scaling, else the array's. */
  datatype?: DTypeName;
  /** Scaling to store (stored = (value − sclInter) / sclSlope, rounded, for integer datatypes). */
  sclSlope?: number;
  sclInter?: number;
  /** 1 or 2; default 1, or 2 when a dimension exceeds NIfTI-1's 32767. */
  version?: 1 | 2;
  /** gzip level 0..9 for `.gz` paths (default 6). */
  gzipLevel?: number;
  /** The header's descrip field (at most 79 characters). Default empty. */
  description?: string;
}

const DTYPES: readonly DTypeName[] = ["uint8", "int8", "int16", "uint16", "int32", "uint32", "float32", "float64"];
const RANGE: Partial<Record<DTypeName, [number, number]>> = {
  uint8: [0, 255],
  int8: [-128, 127],
  int16: [-32768, 32767],
  uint16: [0, 65535],
  int32: [-(2 ** 31), 2 ** 31 - 1],
  uint32: [0, 2 ** 32 - 1],
};

const FLT_MIN_NORMAL = 2 ** -126;

/**
 * Whether a number survives a float32 header field (NIfTI-1's scl_slope, scl_inter): finite
 * after rounding, and zero or a normal float32 (a subnormal keeps only a few bits: 1e-45 is
 * stored as 1.4e-45).
 */
function fitsFloat32(x: number): boolean {
  const f = Math.fround(x);
  return Number.isFinite(f) && (x === 0 || Math.abs(f) >= FLT_MIN_NORMAL);
}

/**
 * Converts voxels to the stored datatype; refuses values the datatype cannot hold: out of an
 * integer type's range or NaN for an integer type, and for a float type a finite value whose
 * stored form overflows to infinity or underflows to zero or a subnormal (it would not read back).
 */
function encode(data: VoxelArray, dtype: DTypeName, slope: number, inter: number): VoxelArray {
  const scaled = !(slope === 1 && inter === 0);
  if (!scaled && dtypeOf(data) === dtype) return data;
  const out = allocArray(dtype, data.length, "converted voxels");
  const range = RANGE[dtype];
  const f32 = dtype === "float32";
  const how = scaled ? ` with slope ${slope} and intercept ${inter}` : "";
  for (let i = 0; i < data.length; i++) {
    const x = data[i]!;
    let v = (x - inter) / slope;
    if (range) {
      if (Number.isNaN(v)) throw new RangeError(`voxel ${i} holds ${x}, which ${dtype}${how} cannot store (an integer type has no NaN)`);
      v = Math.round(v);
      if (v < range[0] || v > range[1]) throw new RangeError(`voxel ${i} holds ${x}, which ${dtype}${how} cannot store`);
    } else if (Number.isFinite(x)) {
      const stored = f32 ? Math.fround(v) : v;
      if (!Number.isFinite(stored)) throw new RangeError(`voxel ${i} holds ${x}, which overflows ${dtype}${how} (stored as ${stored})`);
      if (v !== 0 && Math.abs(stored) < (f32 ? FLT_MIN_NORMAL : 2 ** -1022)) {
        throw new RangeError(`voxel ${i} holds ${x}, which underflows ${dtype}${how} (stored as ${stored})`);
      }
    }
    out[i] = v;
  }
  return out;
}

/** Writes a volume as NIfTI (gzipped when the path ends in `.gz`), keeping its affine. */
export async function writeNifti(path: string, volume: Volume, options?: WriteNiftiOptions): Promise<void> {
  if (typeof path !== "string" || path.length === 0) throw invalidParameterError("path", "a file path", path);
  assertVolume("volume", volume);
  const opts = optionsObject("options", options) as WriteNiftiOptions;
  if (opts.datatype !== undefined && !inArray(opts.datatype, DTYPES))
    throw invalidParameterError("options.datatype", `one of ${DTYPES.join(", ")}`, opts.datatype);
  if (opts.sclSlope !== undefined) assertNumber("options.sclSlope", opts.sclSlope);
  if (opts.sclSlope === 0) throw invalidParameterError("options.sclSlope", "a non-zero number", 0);
  if (opts.sclInter !== undefined) assertNumber("options.sclInter", opts.sclInter);
  if (opts.version !== undefined && opts.version !== 1 && opts.version !== 2)
    throw invalidParameterError("options.version", "1 or 2", opts.version);
  if (opts.gzipLevel !== undefined && (!Number.isInteger(opts.gzipLevel) || opts.gzipLevel < 0 || opts.gzipLevel > 9)) {
    throw invalidParameterError("options.gzipLevel", "an integer from 0 to 9", opts.gzipLevel);
  }
  if (opts.description !== undefined && typeof opts.description !== "string")
    throw invalidParameterError("options.description", "a string", opts.description);

  const arrayType = dtypeOf(volume.data)!;
  const meta = volume.meta;
  const restore = meta?.scaled && arrayType === "float32" && opts.datatype === undefined && opts.sclSlope === undefined;
  // (the meta a reader left is the caller's to edit: what is restored from it is checked as theirs)
  if (restore) {
    if (!inArray(meta!.datatype, DTYPES))
      throw invalidParameterError("volume.meta.datatype", `one of ${DTYPES.join(", ")}`, meta!.datatype);
    if (!Number.isFinite(meta!.sclSlope) || meta!.sclSlope === 0)
      throw invalidParameterError("volume.meta.sclSlope", "a finite non-zero number", meta!.sclSlope);
    if (opts.sclInter === undefined && !Number.isFinite(meta!.sclInter))
      throw invalidParameterError("volume.meta.sclInter", "a finite number", meta!.sclInter);
  }
  for (const k of ["qformCode", "sformCode"] as const) {
    const c = meta?.[k];
    // (≤ 0 is written as 1, as a file read with qform_code 0 or a negative one)
    if (c !== undefined && !(Number.isInteger(c) && c <= 32767))
      throw invalidParameterError(`volume.meta.${k}`, "an integer up to 32767 (NIfTI's xform codes are 0–5)", c);
  }
  const dtype = opts.datatype ?? (restore ? meta!.datatype : arrayType);
  const slope = opts.sclSlope ?? (restore ? meta!.sclSlope : 1);
  const inter = opts.sclInter ?? (restore ? meta!.sclInter : 0);
  // NIfTI-1 keeps spacing and affine as float32: a value that does not survive it (1e-50 mm became
  // 0 and an all-zero affine, read back as spacing 1) takes version 2 unless version 1 was asked for
  // (the affine's columns by their lengths and its entries by being finite: a rotation term of
  // 1e-40 is stored as a subnormal or 0, which means the same)
  const A = volume.affine;
  const columnNorms = [0, 1, 2].map((c) => Math.hypot(A[c]!, A[4 + c]!, A[8 + c]!));
  const geometryFits =
    [...volume.spacing, ...columnNorms, A[3]!, A[7]!, A[11]!].every(fitsFloat32) &&
    A.slice(0, 12).every((x) => Number.isFinite(Math.fround(x)));
  const version = opts.version ?? (volume.dims.some((d) => d > 32767) || !geometryFits ? 2 : 1);
  if (version === 1 && volume.dims.some((d) => d > 32767))
    throw new RangeError(`dims [${volume.dims.join(", ")}] exceed NIfTI-1's 32767; write version 2`);
  if (version === 1 && !geometryFits)
    throw new RangeError(
      `the spacing [${volume.spacing.join(", ")}] or affine cannot be stored in NIfTI-1's float32 fields (a value would read back changed); write version 2`,
    );

  // NIfTI-1 stores the scaling as float32: refuse what would not survive it, and encode with the
  // float32 values readers will apply, so that the voxels read back as written
  if (!Number.isFinite(slope) || slope === 0) throw invalidParameterError("options.sclSlope", "a finite non-zero number", slope);
  if (!Number.isFinite(inter)) throw invalidParameterError("options.sclInter", "a finite number", inter);
  const scaled = !(slope === 1 && inter === 0);
  if (scaled && version === 1) {
    if (!fitsFloat32(slope)) {
      throw new RangeError(
        `options.sclSlope ${slope} cannot be stored in NIfTI-1's float32 scl_slope (it would read back as ${Math.fround(slope)}); use a slope from ${FLT_MIN_NORMAL} to 3.4e38 in magnitude, or version 2`,
      );
    }
    if (!fitsFloat32(inter)) {
      throw new RangeError(
        `options.sclInter ${inter} cannot be stored in NIfTI-1's float32 scl_inter (it would read back as ${Math.fround(inter)}); use 0 or a magnitude from ${FLT_MIN_NORMAL} to 3.4e38, or version 2`,
      );
    }
  }
  const slopeStored = scaled && version === 1 ? Math.fround(slope) : slope;
  const interStored = scaled && version === 1 ? Math.fround(inter) : inter;
  const stored = encode(volume.data, dtype, slopeStored, interStored);
  const header = buildHeader({
    version,
    dims: volume.dims,
    dtype,
    spacing: volume.spacing,
    affine: volume.affine,
    sclSlope: scaled ? slopeStored : 0,
    sclInter: scaled ? interStored : 0,
    qformCode: meta?.qformCode && meta.qformCode > 0 ? meta.qformCode : 1,
    sformCode: meta?.sformCode && meta.sformCode > 0 ? meta.sformCode : 1,
    ...(opts.description !== undefined ? { description: opts.description } : {}),
  });
  // The voxels may be the caller's own buffer (no conversion needed): released or transferred while
  // this write awaits, it is gone — inside the gzip stream's internals that was an uncaught crash,
  // in the plain write a short file renamed into place. Each chunk is checked and copied out (the
  // copy is what zlib or the file system reads on their threads), and the size again before the rename.
  const size = stored.byteLength;
  const CHUNK = 1 << 22;
  const chunk = (off: number): Buffer => {
    if (stored.byteLength !== size)
      throw new Error(`writeNifti: volume.data was released or transferred while ${path} was being written; nothing was written`);
    return Buffer.from(new Uint8Array(stored.buffer, stored.byteOffset + off, Math.min(CHUNK, size - off)));
  };
  function* chunks(): Generator<Uint8Array> {
    yield header;
    for (let off = 0; off < size; off += CHUNK) yield chunk(off);
  }
  // Write beside the target, then rename: a failure never leaves a half-written file at `path`.
  await replaceFile(path, async (tmp) => {
    if (path.endsWith(".gz")) {
      await pipeline(
        Readable.from(chunks()),
        createGzip({ level: opts.gzipLevel ?? 6, chunkSize: 1 << 20 }),
        createWriteStream(tmp, { flags: "wx" }),
      );
    } else {
      const fh = await open(tmp, "wx");
      try {
        for (const c of chunks()) await fh.write(c);
      } finally {
        await fh.close();
      }
    }
    if (stored.byteLength !== size)
      throw new Error(`writeNifti: volume.data was released or transferred while ${path} was being written; nothing was written`);
  });
}
