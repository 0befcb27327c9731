/**
 * Pixel data of one DICOM image frame: native (little or big endian) or encapsulated (RLE Lossless,
 * JPEG Lossless process 14 through @cornerstonejs/jpeg-lossless-decoder-js). Every size is checked
 * against Rows × Columns × BitsAllocated before anything is allocated or decoded.
 */
import dicomParser from "dicom-parser";
import { Decoder as JpegLosslessDecoder } from "@cornerstonejs/jpeg-lossless-decoder-js";

export const TS = {
  implicitLE: "1.2.840.10008.1.2",
  explicitLE: "1.2.840.10008.1.2.1",
  deflatedLE: "1.2.840.10008.1.2.1.99",
  explicitBE: "1.2.840.10008.1.2.2",
  rle: "1.2.840.10008.1.2.5",
  jpegLossless: "1.2.840.10008.1.2.4.57",
  jpegLosslessSV1: "1.2.840.10008.1.2.4.70",
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
};

const KNOWN_UNSUPPORTED: Record<string, string> = {
  "1.2.840.10008.1.2.4.50": "JPEG Baseline (lossy)",
  "1.2.840.10008.1.2.4.51": "JPEG Extended (lossy)",
  "1.2.840.10008.1.2.4.80": "JPEG-LS Lossless",
  "1.2.840.10008.1.2.4.81": "JPEG-LS Near-Lossless",
  "1.2.840.10008.1.2.4.90": "JPEG 2000 Lossless",
  "1.2.840.10008.1.2.4.91": "JPEG 2000",
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

type Stored = Uint8Array | Int8Array | Uint16Array | Int16Array | Uint32Array | Int32Array;

/**
 * The stored values of the frame, one per pixel, as a typed array of BitsAllocated bits with the
 * sign of PixelRepresentation; signed values with BitsStored < BitsAllocated are sign-extended from
 * HighBit as pydicom does.
 */
export function decodeFrame(dataSet: dicomParser.DataSet, fmt: PixelFormat, fail: (msg: string) => never): Stored {
  const el = dataSet.elements.x7fe00010;
  if (!el) fail("has no Pixel Data (7FE0,0010)");
  const n = fmt.rows * fmt.columns;
  const bytesPer = fmt.bitsAllocated / 8;
  const need = n * bytesPer;
  let raw: Uint8Array;
  if (el.encapsulatedPixelData) {
    const frags = el.fragments ?? [];
    if (frags.length === 0) fail("has encapsulated Pixel Data without fragments");
    let bytes: Uint8Array;
    try {
      bytes = dicomParser.readEncapsulatedPixelDataFromFragments(dataSet, el, 0, frags.length) as Uint8Array;
    } catch (e) {
      fail(`has damaged encapsulated Pixel Data (${errText(e)})`);
    }
    if (fmt.transferSyntax === TS.rle) raw = decodeRle(bytes, fmt, fail);
    else if (fmt.transferSyntax === TS.jpegLossless || fmt.transferSyntax === TS.jpegLosslessSV1) raw = decodeJpegLossless(bytes, fmt, fail);
    else fail(`uses transfer syntax ${fmt.transferSyntax} (${transferSyntaxName(fmt.transferSyntax)}), which this reader does not decode`);
  } else {
    if (el.length === 0xffffffff) fail("has Pixel Data of undefined length in a native transfer syntax");
    if (el.length < need) {
      fail(`has ${el.length} bytes of Pixel Data where Rows ${fmt.rows} × Columns ${fmt.columns} × ${bytesPer} bytes need ${need}`);
    }
    if (el.dataOffset + need > dataSet.byteArray.length) fail(`is truncated: Pixel Data runs past the end of the file`);
    raw = dataSet.byteArray.subarray(el.dataOffset, el.dataOffset + need);
    if (!fmt.littleEndian && bytesPer > 1) raw = swapped(raw, bytesPer);
  }
  return typed(raw, fmt);
}

function swapped(src: Uint8Array, width: number): Uint8Array {
  const out = new Uint8Array(src.length);
  for (let i = 0; i < src.length; i += width) for (let b = 0; b < width; b++) out[i + b] = src[i + width - 1 - b]!;
  return out;
}

/** A typed view (copied when unaligned) over little-endian stored bytes, sign-extended as needed. */
function typed(raw: Uint8Array, fmt: PixelFormat): Stored {
  const bytesPer = fmt.bitsAllocated / 8;
  const n = fmt.rows * fmt.columns;
  let buf = raw;
  if (raw.byteOffset % bytesPer !== 0) buf = raw.slice();
  const signed = fmt.pixelRepresentation === 1;
  let out: Stored;
  if (bytesPer === 1) out = signed ? new Int8Array(buf.buffer, buf.byteOffset, n) : new Uint8Array(buf.buffer, buf.byteOffset, n);
  else if (bytesPer === 2) out = signed ? new Int16Array(buf.buffer, buf.byteOffset, n) : new Uint16Array(buf.buffer, buf.byteOffset, n);
  else out = signed ? new Int32Array(buf.buffer, buf.byteOffset, n) : new Uint32Array(buf.buffer, buf.byteOffset, n);
  if (signed && fmt.bitsStored < fmt.bitsAllocated) {
    // Sign-extend from the stored bits (HighBit = BitsStored − 1 is checked by the caller).
    if (buf === raw) out = out.slice() as Stored;
    const shift = 32 - fmt.bitsStored;
    for (let i = 0; i < n; i++) out[i] = ((out[i]! << shift) >> shift);
  }
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
    if (start < 64 || start > src.length || end < start || end > src.length) fail(`has an RLE segment ${s + 1} with offsets outside the frame`);
    // Segment s holds byte plane s, most significant first; little-endian output puts it at byte bytesPer−1−s.
    const plane = bytesPer - 1 - s;
    let p = start;
    let o = 0;
    while (o < n && p < end) {
      const h = src[p++]!;
      if (h < 128) {
        const len = h + 1;
        if (p + len > end || o + len > n) fail(`has an RLE segment ${s + 1} whose literal run passes its end`);
        for (let k = 0; k < len; k++) out[(o++) * bytesPer + plane] = src[p++]!;
      } else if (h > 128) {
        const len = 257 - h;
        if (p >= end || o + len > n) fail(`has an RLE segment ${s + 1} whose repeat run passes its end`);
        const v = src[p++]!;
        for (let k = 0; k < len; k++) out[(o++) * bytesPer + plane] = v;
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
    const d = new JpegLosslessDecoder();
    decoded = d.decode(src.buffer as ArrayBuffer, src.byteOffset, src.length, bytesPer) as Uint8Array | Uint16Array;
  } catch (e) {
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
function checkJpegFrame(b: Uint8Array, fmt: PixelFormat, fail: (msg: string) => never): void {
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
    if (marker >= 0xc0 && marker <= 0xcf && marker !== 0xc4 && marker !== 0xc8 && marker !== 0xcc) {
      if (marker !== 0xc3) fail(`has JPEG pixel data with frame marker 0xFF${marker.toString(16).toUpperCase()} (lossless SOF3 expected)`);
      const precision = b[p + 4]!, rows = (b[p + 5]! << 8) | b[p + 6]!, cols = (b[p + 7]! << 8) | b[p + 8]!, comps = b[p + 9]!;
      if (rows !== fmt.rows || cols !== fmt.columns) fail(`has a JPEG frame of ${cols}×${rows} where Columns × Rows are ${fmt.columns}×${fmt.rows}`);
      if (comps !== 1) fail(`has a JPEG frame with ${comps} components (1 expected)`);
      if (precision < fmt.bitsStored || precision > fmt.bitsAllocated) {
        fail(`has a JPEG frame of ${precision}-bit precision where BitsStored is ${fmt.bitsStored} and BitsAllocated ${fmt.bitsAllocated}`);
      }
      return;
    }
    if (marker === 0xda) break;
    p += 2 + len;
  }
  fail("has JPEG pixel data without a frame header (SOF)");
}
