/**
 * Pixel data of one DICOM image frame: native (little or big endian) or encapsulated (RLE Lossless,
 * JPEG Lossless process 14 through @cornerstonejs/jpeg-lossless-decoder-js). Every size is checked
 * against Rows × Columns × BitsAllocated before anything is allocated or decoded.
 */
import type dicomParser from "dicom-parser";
import type { Decoder as JpegLosslessDecoderType } from "@cornerstonejs/jpeg-lossless-decoder-js";
import { createRequire } from "node:module";

/**
 * dicom-parser and the decoders are loaded on first use (loadDicomParser, prepareCodecs), so that
 * importing bhsd for anything else does not pay for them.
 */
let parser: typeof dicomParser | undefined;
let JpegLosslessDecoder: (new () => JpegLosslessDecoderType) | undefined;

export async function loadDicomParser(): Promise<typeof dicomParser> {
  parser ??= (await import("dicom-parser")).default;
  return parser;
}

export const TS = {
  implicitLE: "1.2.840.10008.1.2",
  explicitLE: "1.2.840.10008.1.2.1",
  deflatedLE: "1.2.840.10008.1.2.1.99",
  explicitBE: "1.2.840.10008.1.2.2",
  rle: "1.2.840.10008.1.2.5",
  jpegLossless: "1.2.840.10008.1.2.4.57",
  jpegLosslessSV1: "1.2.840.10008.1.2.4.70",
  jpegLsLossless: "1.2.840.10008.1.2.4.80",
  jpegLsNear: "1.2.840.10008.1.2.4.81",
  j2kLossless: "1.2.840.10008.1.2.4.90",
  j2k: "1.2.840.10008.1.2.4.91",
} as const;

/** Transfer syntaxes whose pixel data this reader decodes. */
export const SUPPORTED_TRANSFER_SYNTAXES: Record<string, string> = {
  [TS.implicitLE]: "Implicit VR Little Endian",
  [TS.explicitLE]: "Explicit VR Little Endian",
  [TS.deflatedLE]: "Deflated Explicit VR Little Endian",
  [TS.explicitBE]: "Explicit VR Big Endian",
  [TS.rle]: "RLE Lossless",
  [TS.jpegLossless]: "JPEG Lossless (process 14)",
  [TS.jpegLosslessSV1]: "JPEG Lossless (process 14, selection value 1)",
  [TS.jpegLsLossless]: "JPEG-LS Lossless",
  [TS.jpegLsNear]: "JPEG-LS Near-Lossless",
  [TS.j2kLossless]: "JPEG 2000 Lossless",
  [TS.j2k]: "JPEG 2000",
};

const KNOWN_UNSUPPORTED: Record<string, string> = {
  "1.2.840.10008.1.2.4.50": "JPEG Baseline (lossy)",
  "1.2.840.10008.1.2.4.51": "JPEG Extended (lossy)",
  "1.2.840.10008.1.2.4.201": "HTJ2K Lossless",
  "1.2.840.10008.1.2.4.203": "HTJ2K",
};

export function transferSyntaxName(uid: string): string {
  return SUPPORTED_TRANSFER_SYNTAXES[uid] ?? KNOWN_UNSUPPORTED[uid] ?? "unknown";
}

export interface PixelFormat {
  rows: number;
  columns: number;
  bitsAllocated: number;
  bitsStored: number;
  highBit: number;
  pixelRepresentation: number;
  transferSyntax: string;
  littleEndian: boolean;
}

export type Stored = Uint8Array | Int8Array | Uint16Array | Int16Array | Uint32Array | Int32Array;

/** Whether the image's Pixel Data is encapsulated (compressed: RLE, JPEG …), so decoding it costs CPU. */
export function isEncapsulated(dataSet: dicomParser.DataSet): boolean {
  return dataSet.elements.x7fe00010?.encapsulatedPixelData === true;
}

/** The compressed stream of an encapsulated frame (its fragments joined): what decodeCompressed takes. */
export function encapsulatedFrame(dataSet: dicomParser.DataSet, fail: (msg: string) => never): Uint8Array {
  const el = dataSet.elements.x7fe00010;
  if (!el) fail("has no Pixel Data (7FE0,0010)");
  const frags = el.fragments ?? [];
  if (frags.length === 0) fail("has encapsulated Pixel Data without fragments");
  try {
    return parser!.readEncapsulatedPixelDataFromFragments(dataSet, el, 0, frags.length) as Uint8Array;
  } catch (e) {
    fail(`has damaged encapsulated Pixel Data (${errText(e)})`);
  }
}

/**
 * Decodes one compressed frame to its stored words as little-endian bytes (Rows × Columns ×
 * BitsAllocated/8 of them). Needs prepareCodecs for the transfer syntax first. This is the part
 * that runs on a worker thread (dicom-decode-worker.ts) when a series is decoded by a pool.
 */
export function decodeCompressed(bytes: Uint8Array, fmt: PixelFormat, fail: (msg: string) => never): Uint8Array {
  if (fmt.transferSyntax === TS.rle) return decodeRle(bytes, fmt, fail);
  if (fmt.transferSyntax === TS.jpegLossless || fmt.transferSyntax === TS.jpegLosslessSV1) return decodeJpegLossless(bytes, fmt, fail);
  if (fmt.transferSyntax === TS.jpegLsLossless || fmt.transferSyntax === TS.jpegLsNear) return decodeJpegLs(bytes, fmt, fail);
  if (fmt.transferSyntax === TS.j2kLossless || fmt.transferSyntax === TS.j2k) return decodeJ2k(bytes, fmt, fail);
  fail(`uses transfer syntax ${fmt.transferSyntax} (${transferSyntaxName(fmt.transferSyntax)}), which this reader does not decode`);
}

/**
 * The stored values of the frame, one per pixel, as a typed array of BitsAllocated bits with the
 * sign of PixelRepresentation (the whole word, as dcm2niix and pydicom read it).
 */
export function decodeFrame(dataSet: dicomParser.DataSet, fmt: PixelFormat, fail: (msg: string) => never): Stored {
  const el = dataSet.elements.x7fe00010;
  if (!el) fail("has no Pixel Data (7FE0,0010)");
  const n = fmt.rows * fmt.columns;
  const bytesPer = fmt.bitsAllocated / 8;
  const need = n * bytesPer;
  let raw: Uint8Array;
  if (el.encapsulatedPixelData) {
    raw = decodeCompressed(encapsulatedFrame(dataSet, fail), fmt, fail);
  } else {
    if (el.length === 0xffffffff) fail("has Pixel Data of undefined length in a native transfer syntax");
    if (el.length < need) {
      fail(`has ${el.length} bytes of Pixel Data where Rows ${fmt.rows} × Columns ${fmt.columns} × ${bytesPer} bytes need ${need}`);
    }
    if (el.dataOffset + need > dataSet.byteArray.length) fail(`is truncated: Pixel Data runs past the end of the file`);
    raw = dataSet.byteArray.subarray(el.dataOffset, el.dataOffset + need);
    if (!fmt.littleEndian && bytesPer > 1) raw = swapped(raw, bytesPer);
  }
  return storedValues(raw, fmt);
}

function swapped(src: Uint8Array, width: number): Uint8Array {
  const out = new Uint8Array(src.length);
  for (let i = 0; i < src.length; i += width) for (let b = 0; b < width; b++) out[i + b] = src[i + width - 1 - b]!;
  return out;
}

/** A typed view (copied when unaligned) over little-endian stored bytes, with the sign of PixelRepresentation. */
export function storedValues(raw: Uint8Array, fmt: PixelFormat): Stored {
  const bytesPer = fmt.bitsAllocated / 8;
  const n = fmt.rows * fmt.columns;
  let buf = raw;
  if (raw.byteOffset % bytesPer !== 0) buf = raw.slice();
  const signed = fmt.pixelRepresentation === 1;
  let out: Stored;
  if (bytesPer === 1) out = signed ? new Int8Array(buf.buffer, buf.byteOffset, n) : new Uint8Array(buf.buffer, buf.byteOffset, n);
  else if (bytesPer === 2) out = signed ? new Int16Array(buf.buffer, buf.byteOffset, n) : new Uint16Array(buf.buffer, buf.byteOffset, n);
  else out = signed ? new Int32Array(buf.buffer, buf.byteOffset, n) : new Uint32Array(buf.buffer, buf.byteOffset, n);
  // BitsStored < BitsAllocated: the whole word is taken as stored, as dcm2niix and pydicom 2.3 do
  // (no sign extension from HighBit, no masking): scanners write sign-extended words, and a volume
  // here must equal dcm2niix's conversion.
  return out;
}

/**
 * RLE Lossless (DICOM PS3.5 Annex G): a 64-byte header of up to 15 segment offsets, each segment a
 * PackBits stream of one byte plane, most significant plane first. No maintained npm package
 * decodes DICOM RLE outside a browser bundle; this is the Annex's algorithm, bounded by the output
 * size (a run can never write past the plane).
 */
function decodeRle(src: Uint8Array, fmt: PixelFormat, fail: (msg: string) => never): Uint8Array {
  const bytesPer = fmt.bitsAllocated / 8;
  const n = fmt.rows * fmt.columns;
  if (src.length < 64) fail(`has an RLE frame of ${src.length} bytes, shorter than its 64-byte header`);
  const dv = new DataView(src.buffer, src.byteOffset, src.length);
  const nseg = dv.getUint32(0, true);
  if (nseg !== bytesPer) fail(`has an RLE frame with ${nseg} segments where BitsAllocated ${fmt.bitsAllocated} needs ${bytesPer}`);
  const out = new Uint8Array(n * bytesPer);
  for (let s = 0; s < nseg; s++) {
    const start = dv.getUint32(4 + 4 * s, true);
    const end = s + 1 < nseg ? dv.getUint32(8 + 4 * s, true) : src.length;
    if (start < 64 || start > src.length || end < start || end > src.length)
      fail(`has an RLE segment ${s + 1} with offsets outside the frame`);
    // Segment s holds byte plane s, most significant first; little-endian output puts it at byte bytesPer−1−s.
    const plane = bytesPer - 1 - s;
    let p = start;
    let o = 0;
    while (o < n && p < end) {
      const h = src[p++]!;
      if (h < 128) {
        const len = h + 1;
        if (p + len > end || o + len > n) fail(`has an RLE segment ${s + 1} whose literal run passes its end`);
        for (let k = 0; k < len; k++) out[o++ * bytesPer + plane] = src[p++]!;
      } else if (h > 128) {
        const len = 257 - h;
        if (p >= end || o + len > n) fail(`has an RLE segment ${s + 1} whose repeat run passes its end`);
        const v = src[p++]!;
        for (let k = 0; k < len; k++) out[o++ * bytesPer + plane] = v;
      }
    }
    if (o !== n) fail(`has an RLE segment ${s + 1} that decodes to ${o} of ${n} pixels`);
  }
  return out;
}

function decodeJpegLossless(src: Uint8Array, fmt: PixelFormat, fail: (msg: string) => never): Uint8Array {
  const bytesPer = fmt.bitsAllocated / 8;
  if (bytesPer > 2) fail(`has JPEG Lossless pixel data with BitsAllocated ${fmt.bitsAllocated} (8 or 16 expected)`);
  checkJpegFrame(src, fmt, fail);
  let decoded: Uint8Array | Uint16Array;
  try {
    if (!JpegLosslessDecoder) fail("needs the JPEG Lossless decoder, which was not loaded (internal: prepareCodecs)");
    const d = new JpegLosslessDecoder();
    decoded = d.decode(src.buffer as ArrayBuffer, src.byteOffset, src.length, bytesPer) as Uint8Array | Uint16Array;
    // (the frame the decoder itself took, whatever the walk above found)
    if (d.xDim !== fmt.columns || d.yDim !== fmt.rows)
      fail(`has a JPEG frame of ${d.xDim}×${d.yDim} where Columns × Rows are ${fmt.columns}×${fmt.rows}`);
  } catch (e) {
    if (e instanceof Error && e.name === "DicomError") throw e;
    fail(`has JPEG Lossless pixel data that does not decode (${errText(e)})`);
  }
  const bytes = new Uint8Array(decoded.buffer, decoded.byteOffset, decoded.byteLength);
  const need = fmt.rows * fmt.columns * bytesPer;
  if (bytes.length < need) fail(`has JPEG Lossless pixel data that decodes to ${bytes.length} bytes where ${need} are needed`);
  return bytes.subarray(0, need);
}

export function errText(e: unknown): string {
  if (e instanceof Error) return e.message;
  return String(e);
}

/**
 * The JPEG stream's frame header must describe this image (SOI first, a lossless SOF3 of Rows ×
 * Columns, one component) and the stream must end with EOI: a decoder given a truncated or
 * mislabelled stream returns pixels anyway.
 */
function checkJpegFrame(b: Uint8Array, fmt: PixelFormat, fail: (msg: string) => never, sof = 0xc3): void {
  if (b.length < 4 || b[0] !== 0xff || b[1] !== 0xd8) fail("has JPEG pixel data that does not start with an SOI marker");
  let end = b.length;
  while (end > 2 && b[end - 1] === 0x00) end--; // fragments are padded to even length
  if (b[end - 2] !== 0xff || b[end - 1] !== 0xd9) fail("has JPEG pixel data without its EOI marker (truncated stream)");
  let p = 2;
  while (p + 4 <= b.length) {
    if (b[p] !== 0xff) fail(`has JPEG pixel data with a damaged marker segment at byte ${p}`);
    const marker = b[p + 1]!;
    if (marker === 0xff) {
      p++;
      continue;
    }
    const len = (b[p + 2]! << 8) | b[p + 3]!;
    if (len < 2 || p + 2 + len > b.length) fail(`has JPEG pixel data whose marker segment at byte ${p} runs past the stream`);
    if ((marker >= 0xc0 && marker <= 0xcf && marker !== 0xc4 && marker !== 0xc8 && marker !== 0xcc) || marker === 0xf7) {
      if (marker !== sof)
        fail(
          `has JPEG pixel data with frame marker 0xFF${marker.toString(16).toUpperCase()} (0xFF${sof.toString(16).toUpperCase()} expected)`,
        );
      const precision = b[p + 4]!,
        rows = (b[p + 5]! << 8) | b[p + 6]!,
        cols = (b[p + 7]! << 8) | b[p + 8]!,
        comps = b[p + 9]!;
      if (rows !== fmt.rows || cols !== fmt.columns)
        fail(`has a JPEG frame of ${cols}×${rows} where Columns × Rows are ${fmt.columns}×${fmt.rows}`);
      if (comps !== 1) fail(`has a JPEG frame with ${comps} components (1 expected)`);
      if (precision < fmt.bitsStored || precision > fmt.bitsAllocated) {
        fail(`has a JPEG frame of ${precision}-bit precision where BitsStored is ${fmt.bitsStored} and BitsAllocated ${fmt.bitsAllocated}`);
      }
      return;
    }
    if (marker === 0xda) break;
    // Before the frame header only the segments a decoder reads by their length: tables (DHT, DQT,
    // DAC), restart interval, APPn, comments. Another marker the lossless decoder steps over as two
    // bytes where this walk took a length: FF01 before a 200×200 frame hid it behind a second, right
    // one, and the image read as the wrong pixels.
    if (!(
      marker === 0xc4 ||
      marker === 0xcc ||
      marker === 0xdb ||
      marker === 0xdd ||
      marker === 0xfe ||
      (marker >= 0xe0 && marker <= 0xef) ||
      (marker === 0xf8 && sof === 0xf7) // JPEG-LS (T.87) adds LSE, preset parameters, before its frame
    ))
      fail(`has JPEG pixel data with marker 0xFF${marker.toString(16).toUpperCase().padStart(2, "0")} before its frame header`);
    p += 2 + len;
  }
  fail("has JPEG pixel data without a frame header (SOF)");
}

// JPEG-LS (CharLS) and JPEG 2000 (OpenJPEG), as WebAssembly: loaded once, on first use.
interface WasmDecoder {
  getEncodedBuffer(n: number): Uint8Array;
  getDecodedBuffer(): Uint8Array;
  decode(): void;
  readHeader?(): void;
  getFrameInfo(): { width: number; height: number; bitsPerSample: number; componentCount: number; isSigned?: boolean };
  delete?(): void;
}
type CodecModule = { JpegLSDecoder?: new () => WasmDecoder; J2KDecoder?: new () => WasmDecoder };
const codecs: { charls?: CodecModule; openjpeg?: CodecModule } = {};
let loading: Promise<void> | undefined;

/** Loads the WebAssembly codecs a set of transfer syntaxes needs (call before decodeFrame). */
export async function prepareCodecs(transferSyntaxes: Iterable<string>): Promise<void> {
  const set = new Set(transferSyntaxes);
  const needLs = set.has(TS.jpegLsLossless) || set.has(TS.jpegLsNear);
  const needJ2k = set.has(TS.j2kLossless) || set.has(TS.j2k);
  if ((set.has(TS.jpegLossless) || set.has(TS.jpegLosslessSV1)) && !JpegLosslessDecoder) {
    JpegLosslessDecoder = (await import("@cornerstonejs/jpeg-lossless-decoder-js")).Decoder;
  }
  if ((!needLs || codecs.charls) && (!needJ2k || codecs.openjpeg)) return;
  await loading;
  const require = createRequire(import.meta.url);
  loading = (async () => {
    // The codecs' own messages ([INFO] lines from OpenJPEG) would go to stdout: silenced.
    const quiet = { print: () => {}, printErr: () => {} };
    type Factory = (o: typeof quiet) => Promise<CodecModule>;
    if (needLs && !codecs.charls) codecs.charls = await (require("@cornerstonejs/codec-charls/decodewasmjs") as Factory)(quiet);
    if (needJ2k && !codecs.openjpeg) codecs.openjpeg = await (require("@cornerstonejs/codec-openjpeg/decodewasmjs") as Factory)(quiet);
  })();
  await loading;
}

function runWasm(
  dec: WasmDecoder,
  src: Uint8Array,
  fmt: PixelFormat,
  what: string,
  fail: (msg: string) => never,
  headerFirst: boolean,
): Uint8Array {
  const bytesPer = fmt.bitsAllocated / 8;
  if (bytesPer > 2) fail(`has ${what} pixel data with BitsAllocated ${fmt.bitsAllocated} (8 or 16 expected)`);
  try {
    dec.getEncodedBuffer(src.length).set(src);
    if (headerFirst && dec.readHeader) {
      dec.readHeader();
      checkInfo(dec.getFrameInfo(), fmt, what, fail);
    }
    dec.decode();
  } catch (e) {
    if (e instanceof Error && e.name === "DicomError") throw e;
    fail(`has ${what} pixel data that does not decode (${typeof e === "number" ? `codec error ${e}` : errText(e)})`);
  }
  checkInfo(dec.getFrameInfo(), fmt, what, fail);
  const out = dec.getDecodedBuffer();
  const need = fmt.rows * fmt.columns * bytesPer;
  if (out.length < need) fail(`has ${what} pixel data that decodes to ${out.length} bytes where ${need} are needed`);
  return out.slice(0, need); // out of the codec's memory
}

function checkInfo(
  info: { width: number; height: number; bitsPerSample: number; componentCount: number },
  fmt: PixelFormat,
  what: string,
  fail: (msg: string) => never,
) {
  if (info.width !== fmt.columns || info.height !== fmt.rows)
    fail(`has a ${what} frame of ${info.width}×${info.height} where Columns × Rows are ${fmt.columns}×${fmt.rows}`);
  if (info.componentCount !== 1) fail(`has a ${what} frame with ${info.componentCount} components (1 expected)`);
  if (info.bitsPerSample > fmt.bitsAllocated)
    fail(`has a ${what} frame of ${info.bitsPerSample} bits per sample where BitsAllocated is ${fmt.bitsAllocated}`);
}

function decodeJpegLs(src: Uint8Array, fmt: PixelFormat, fail: (msg: string) => never): Uint8Array {
  if (!codecs.charls?.JpegLSDecoder) fail("needs the JPEG-LS codec, which was not loaded (internal: prepareCodecs)");
  checkJpegFrame(src, fmt, fail, 0xf7);
  const dec = new codecs.charls.JpegLSDecoder();
  try {
    return runWasm(dec, src, fmt, "JPEG-LS", fail, false);
  } finally {
    dec.delete?.();
  }
}

function decodeJ2k(src: Uint8Array, fmt: PixelFormat, fail: (msg: string) => never): Uint8Array {
  if (!codecs.openjpeg?.J2KDecoder) fail("needs the JPEG 2000 codec, which was not loaded (internal: prepareCodecs)");
  checkJ2kSize(src, fmt, fail);
  const dec = new codecs.openjpeg.J2KDecoder();
  try {
    return runWasm(dec, src, fmt, "JPEG 2000", fail, false);
  } finally {
    dec.delete?.();
  }
}

/** The codestream's SIZ segment (after SOC, or inside a JP2 file's jp2c box) must describe this image. */
function checkJ2kSize(b: Uint8Array, fmt: PixelFormat, fail: (msg: string) => never): void {
  let p = -1;
  const limit = Math.min(b.length - 4, 4096);
  for (let i = 0; i <= limit; i++) {
    if (b[i] === 0xff && b[i + 1] === 0x4f && b[i + 2] === 0xff && b[i + 3] === 0x51) {
      p = i + 2;
      break;
    }
  }
  if (p < 0 || p + 40 > b.length) fail("has JPEG 2000 pixel data without a codestream header (SOC, SIZ)");
  const dv = new DataView(b.buffer, b.byteOffset, b.length);
  const w = dv.getUint32(p + 6) - dv.getUint32(p + 14),
    h = dv.getUint32(p + 10) - dv.getUint32(p + 18);
  const comps = dv.getUint16(p + 38);
  if (w !== fmt.columns || h !== fmt.rows) fail(`has a JPEG 2000 frame of ${w}×${h} where Columns × Rows are ${fmt.columns}×${fmt.rows}`);
  if (comps !== 1) fail(`has a JPEG 2000 frame with ${comps} components (1 expected)`);
}
