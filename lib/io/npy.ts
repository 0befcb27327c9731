/** numpy's .npy format (versions 1–3), for fixtures and interchange with Python. */
import { writeFile } from "node:fs/promises";
import { fileURLToPath } from "node:url";
import { dtypeOf, invalidParameterError } from "../is.js";
import { readSmallFile, replaceFile } from "./small-file.js";
import type { DTypeName, VoxelArray } from "../types.js";
import { ARRAY_CTOR, allocArray, BYTES_PER_ELEMENT, MAX_ELEMENTS } from "../volume.js";

export interface NpyArray {
  data: VoxelArray;
  /** As stored, C-order. */
  shape: number[];
  dtype: DTypeName;
}

const DESCR: Record<string, DTypeName> = {
  u1: "uint8",
  b1: "uint8",
  i1: "int8",
  i2: "int16",
  u2: "uint16",
  i4: "int32",
  u4: "uint32",
  f4: "float32",
  f8: "float64",
};

/** Largest .npy file read (Node's Buffers hold up to 4 GiB; every fixture is kilobytes to megabytes). */
const MAX_NPY_BYTES = 2 ** 32 - 2;

function fail(label: string, msg: string): never {
  throw new Error(`${label}: ${msg}`);
}

const MAX_HEADER = 10_000;

/**
 * The header's dict as numpy writes it — exactly the keys descr, fortran_order and shape, each once,
 * with a string, a bool or a tuple — as key → value text; null for anything else (numpy refuses a
 * header with other keys; the first 'shape' found anywhere in the text is not the array's).
 */
function headerFields(text: string): Map<string, string> | null {
  const body = text.trim();
  if (!body.startsWith("{") || !body.endsWith("}")) return null;
  const pair = /\s*'([a-z_]+)'\s*:\s*('[^'\\]*'|True|False|\([^()]*\))\s*(?:,|(?=\}$))/y;
  const fields = new Map<string, string>();
  let pos = 1;
  while (/\S/.test(body.slice(pos, -1))) {
    pair.lastIndex = pos;
    const m = pair.exec(body);
    if (!m || fields.has(m[1]!)) return null;
    fields.set(m[1]!, m[2]!);
    pos = pair.lastIndex;
  }
  return fields.size === 3 && ["descr", "fortran_order", "shape"].every((k) => fields.has(k)) ? fields : null;
}

/** Parses .npy bytes; the result views `bytes` when aligned and little-endian, else copies. */
export function parseNpy(bytes: Uint8Array, label = "<bytes>"): NpyArray {
  if (bytes.length < 10 || bytes[0] !== 0x93 || String.fromCharCode(...bytes.subarray(1, 6)) !== "NUMPY") {
    fail(label, "not a .npy file (no \\x93NUMPY magic)");
  }
  const major = bytes[6]!;
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  let headerLen: number, start: number;
  if (major === 1) {
    headerLen = dv.getUint16(8, true);
    start = 10;
  } else if (major === 2 || major === 3) {
    if (bytes.length < 12) fail(label, "truncated .npy header");
    headerLen = dv.getUint32(8, true);
    start = 12;
  } else fail(label, `unsupported .npy version ${major}`);
  // (numpy's own reader refuses headers past 10 000 bytes: its files' are a few hundred)
  if (headerLen > MAX_HEADER) fail(label, `a .npy header of ${headerLen} bytes (numpy's limit is ${MAX_HEADER})`);
  if (start + headerLen > bytes.length) fail(label, "truncated .npy header");
  const text = new TextDecoder(major === 3 ? "utf-8" : "latin1").decode(bytes.subarray(start, start + headerLen));
  const fields = headerFields(text);
  if (!fields) fail(label, `malformed .npy header ${JSON.stringify(text.trim().slice(0, 200))}`);
  const descr = /^'([^'\\]*)'$/.exec(fields.get("descr") ?? "")?.[1];
  const fortran = /^(True|False)$/.exec(fields.get("fortran_order") ?? "")?.[1];
  const shapeText = /^\(([^)]*)\)$/.exec(fields.get("shape") ?? "")?.[1];
  if (descr === undefined || fortran === undefined || shapeText === undefined)
    fail(label, `malformed .npy header ${JSON.stringify(text.trim().slice(0, 200))}`);
  if (fortran === "True") fail(label, "Fortran-order arrays are not supported; save with np.ascontiguousarray");
  const shape = shapeText
    .split(",")
    .map((s) => s.trim())
    .filter((s) => s.length > 0)
    .map(Number);
  if (!shape.every((d) => Number.isSafeInteger(d) && d >= 0)) fail(label, `bad shape (${shapeText})`);
  const order = descr[0]!;
  const dtype = DESCR[descr.slice(1)];
  if (!dtype || !"<>|=".includes(order)) fail(label, `unsupported dtype '${descr}'`);
  const n = shape.reduce((a, b) => a * b, 1);
  if (n > MAX_ELEMENTS) fail(label, `${n} elements exceed the ${MAX_ELEMENTS}-element limit`);
  const width = BYTES_PER_ELEMENT[dtype];
  const offset = start + headerLen;
  if (offset + n * width > bytes.length)
    fail(label, `truncated data: shape (${shape.join(", ")}) needs ${n * width} bytes, there are ${bytes.length - offset}`);
  const bigEndian = order === ">" && width > 1;
  let data: VoxelArray;
  if (!bigEndian && (bytes.byteOffset + offset) % width === 0) {
    data = new ARRAY_CTOR[dtype](bytes.buffer, bytes.byteOffset + offset, n);
  } else {
    data = allocArray(dtype, n, label);
    const raw = new Uint8Array(data.buffer);
    raw.set(bytes.subarray(offset, offset + n * width));
    if (bigEndian) for (let i = 0; i < raw.length; i += width) raw.subarray(i, i + width).reverse();
  }
  return { data, shape, dtype };
}

/** Reads a .npy file (or its bytes). */
export async function readNpy(pathOrBytes: string | URL | Uint8Array): Promise<NpyArray> {
  if (pathOrBytes instanceof Uint8Array) return parseNpy(pathOrBytes);
  if (typeof pathOrBytes !== "string" && !(pathOrBytes instanceof URL))
    throw invalidParameterError("pathOrBytes", "a file path, URL or Uint8Array", pathOrBytes);
  const label = typeof pathOrBytes === "string" ? pathOrBytes : fileURLToPath(pathOrBytes);
  let bytes: Buffer;
  try {
    // a regular file (a FIFO named here would block the read), of at most what one Buffer holds
    bytes = await readSmallFile(label, { maxBytes: MAX_NPY_BYTES, what: "a .npy file read whole" });
  } catch (e) {
    fail(label, (e as Error).message);
  }
  return parseNpy(bytes, label);
}

const DESCR_OF: Record<DTypeName, string> = {
  uint8: "|u1",
  int8: "|i1",
  int16: "<i2",
  uint16: "<u2",
  int32: "<i4",
  uint32: "<u4",
  float32: "<f4",
  float64: "<f8",
};

/** Serialises an array as .npy version 1.0 bytes. */
export function formatNpy(data: VoxelArray, shape: readonly number[]): Uint8Array {
  const dtype = dtypeOf(data);
  if (!dtype) throw invalidParameterError("data", "a typed array", data);
  if (!Array.isArray(shape) || !shape.every((d) => Number.isSafeInteger(d) && d >= 0))
    throw invalidParameterError("shape", "an array of non-negative integers", shape);
  const n = shape.reduce((a, b) => a * b, 1);
  if (n !== data.length) throw new RangeError(`shape (${shape.join(", ")}) has ${n} elements, data ${data.length}`);
  const shapeText = shape.length === 1 ? `(${shape[0]},)` : `(${shape.join(", ")})`;
  let header = `{'descr': '${DESCR_OF[dtype]}', 'fortran_order': False, 'shape': ${shapeText}, }`;
  const pad = 64 - ((10 + header.length + 1) % 64);
  header += " ".repeat(pad % 64) + "\n";
  const out = new Uint8Array(10 + header.length + data.byteLength);
  out.set([0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59, 1, 0], 0);
  new DataView(out.buffer).setUint16(8, header.length, true);
  for (let i = 0; i < header.length; i++) out[10 + i] = header.charCodeAt(i);
  out.set(new Uint8Array(data.buffer, data.byteOffset, data.byteLength), 10 + header.length);
  return out;
}

/** Writes a .npy file. */
export async function writeNpy(path: string, data: VoxelArray, shape: readonly number[]): Promise<void> {
  // beside the target, created afresh, then renamed: a link at `path` is replaced, never written through
  const bytes = formatNpy(data, shape);
  await replaceFile(path, (tmp) => writeFile(tmp, bytes, { flag: "wx" }));
}
