/**
 * NIfTI-1 and NIfTI-2 headers: parsing with every check done before any voxel is allocated,
 * the qform/sform geometry, and building a header for writing.
 * Layouts: nifti1.h (348 bytes) and nifti2.h (540 bytes).
 */
import type { DTypeName } from "../types.js";
import { BYTES_PER_ELEMENT } from "../volume.js";

/** Most bytes of header extensions before the voxels (64 MiB; CIFTI's XML, the largest in use, is megabytes). */
const MAX_EXTENSION_BYTES = 64 * 2 ** 20;

export const NIFTI1_HEADER = 348;
export const NIFTI2_HEADER = 540;

/** NIfTI datatype codes the engine reads and writes. */
export const NIFTI_DATATYPE: Record<DTypeName, number> = {
  uint8: 2,
  int16: 4,
  int32: 8,
  float32: 16,
  float64: 64,
  int8: 256,
  uint16: 512,
  uint32: 768,
};
const DTYPE_OF_CODE = new Map<number, DTypeName>(Object.entries(NIFTI_DATATYPE).map(([k, v]) => [v, k as DTypeName]));
const UNSUPPORTED_CODES: Record<number, string> = {
  1: "binary (1 bit)",
  32: "complex64",
  128: "rgb24",
  1024: "int64",
  1280: "uint64",
  1536: "float128",
  1792: "complex128",
  2048: "complex256",
  2304: "rgba32",
};

export interface NiftiHeader {
  version: 1 | 2;
  littleEndian: boolean;
  headerSize: number;
  /** dim[0..7] as stored (NIfTI-2's int64 read exactly while within 2^53). */
  dim: number[];
  datatypeCode: number;
  bitpix: number;
  pixdim: number[];
  voxOffset: number;
  sclSlope: number;
  sclInter: number;
  qformCode: number;
  sformCode: number;
  quatern: [number, number, number];
  qoffset: [number, number, number];
  srow: [number[], number[], number[]];
  xyztUnits: number;
}

/** What the header says the voxel data is, after every check. */
export interface VoxelLayout {
  dims: [number, number, number];
  dtype: DTypeName;
  nvox: number;
  nbytes: number;
  offset: number;
}

export class NiftiError extends Error {
  constructor(label: string, message: string) {
    super(`${label}: ${message}`);
    this.name = "NiftiError";
  }
}

function ascii(bytes: Uint8Array, start: number, n: number): string {
  let s = "";
  for (let i = start; i < start + n && i < bytes.length; i++) {
    const c = bytes[i]!;
    s += c >= 32 && c < 127 ? String.fromCharCode(c) : `\\x${c.toString(16).padStart(2, "0")}`;
  }
  return s;
}

/** How many header bytes are needed, from the first 4 (sizeof_hdr); throws if it is not NIfTI. */
export function headerSizeFrom(first: Uint8Array, label: string): number {
  if (first.length === 0) throw new NiftiError(label, "empty file");
  if (first.length < 4) throw new NiftiError(label, `truncated header: ${first.length} bytes, a NIfTI header is at least ${NIFTI1_HEADER}`);
  const dv = new DataView(first.buffer, first.byteOffset, 4);
  for (const le of [true, false]) {
    const s = dv.getInt32(0, le);
    if (s === NIFTI1_HEADER) return NIFTI1_HEADER;
    if (s === NIFTI2_HEADER) return NIFTI2_HEADER;
  }
  throw new NiftiError(
    label,
    `not a NIfTI file: sizeof_hdr is ${dv.getInt32(0, true)} (NIfTI-1 has 348, NIfTI-2 540; first bytes "${ascii(first, 0, 4)}")`,
  );
}

/** Parses and checks the fixed header (the first 348 or 540 bytes). */
export function parseHeader(bytes: Uint8Array, label: string): NiftiHeader {
  const size = headerSizeFrom(bytes, label);
  if (bytes.length < size) {
    throw new NiftiError(label, `truncated header: ${bytes.length} bytes, a NIfTI-${size === NIFTI1_HEADER ? 1 : 2} header has ${size}`);
  }
  const dv = new DataView(bytes.buffer, bytes.byteOffset, size);
  const le = dv.getInt32(0, true) === size;
  if (size === NIFTI1_HEADER) {
    const magic = ascii(bytes, 344, 4);
    if (magic === "ni1\\x00")
      throw new NiftiError(label, "a two-file NIfTI-1 (.hdr/.img, magic ni1) is not supported; save it as one .nii file");
    if (magic !== "n+1\\x00") throw new NiftiError(label, `bad magic "${magic}" (a one-file NIfTI-1 has "n+1\\0")`);
    const i16 = (o: number) => dv.getInt16(o, le);
    const f32 = (o: number) => dv.getFloat32(o, le);
    return {
      version: 1,
      littleEndian: le,
      headerSize: size,
      dim: Array.from({ length: 8 }, (_, i) => i16(40 + 2 * i)),
      datatypeCode: i16(70),
      bitpix: i16(72),
      pixdim: Array.from({ length: 8 }, (_, i) => f32(76 + 4 * i)),
      voxOffset: f32(108),
      sclSlope: f32(112),
      sclInter: f32(116),
      xyztUnits: bytes[123]!,
      qformCode: i16(252),
      sformCode: i16(254),
      quatern: [f32(256), f32(260), f32(264)],
      qoffset: [f32(268), f32(272), f32(276)],
      srow: [0, 1, 2].map((r) => [0, 1, 2, 3].map((c) => f32(280 + 16 * r + 4 * c))) as [number[], number[], number[]],
    };
  }
  const magic = ascii(bytes, 4, 8);
  if (magic.startsWith("ni2"))
    throw new NiftiError(label, "a two-file NIfTI-2 (.hdr/.img, magic ni2) is not supported; save it as one .nii file");
  if (!magic.startsWith("n+2\\x00")) throw new NiftiError(label, `bad magic "${magic}" (a one-file NIfTI-2 has "n+2\\0\\r\\n\\x1a\\n")`);
  const i64 = (o: number) => {
    const v = dv.getBigInt64(o, le);
    return v > BigInt(Number.MAX_SAFE_INTEGER) || v < -BigInt(Number.MAX_SAFE_INTEGER) ? (v > 0n ? Infinity : -Infinity) : Number(v);
  };
  const f64 = (o: number) => dv.getFloat64(o, le);
  return {
    version: 2,
    littleEndian: le,
    headerSize: size,
    datatypeCode: dv.getInt16(12, le),
    bitpix: dv.getInt16(14, le),
    dim: Array.from({ length: 8 }, (_, i) => i64(16 + 8 * i)),
    pixdim: Array.from({ length: 8 }, (_, i) => f64(104 + 8 * i)),
    voxOffset: i64(168),
    sclSlope: f64(176),
    sclInter: f64(184),
    qformCode: dv.getInt32(344, le),
    sformCode: dv.getInt32(348, le),
    quatern: [f64(352), f64(360), f64(368)],
    qoffset: [f64(376), f64(384), f64(392)],
    srow: [0, 1, 2].map((r) => [0, 1, 2, 3].map((c) => f64(400 + 32 * r + 8 * c))) as [number[], number[], number[]],
    xyztUnits: dv.getInt32(500, le),
  };
}

/** Checks dims, datatype and offset; says how many bytes of voxels follow and where. */
export function voxelLayout(h: NiftiHeader, label: string): VoxelLayout {
  const ndim = h.dim[0]!;
  if (!Number.isInteger(ndim) || ndim < 1 || ndim > 7) throw new NiftiError(label, `dim[0] is ${ndim}; it must be 1 to 7`);
  for (let i = 1; i <= ndim; i++) {
    const d = h.dim[i]!;
    if (!Number.isFinite(d)) throw new NiftiError(label, `dim[${i}] is too large`);
    if (d < 0) throw new NiftiError(label, `dim[${i}] is negative (${d})`);
    if (d === 0) throw new NiftiError(label, `dim[${i}] is 0 while dim[0] says ${ndim} dimensions`);
  }
  const d = (i: number) => (i <= ndim ? h.dim[i]! : 1);
  const dims: [number, number, number] = [d(1), d(2), d(3)];
  const volumes = d(4) * d(5) * d(6) * d(7);
  if (volumes > 1) {
    throw new NiftiError(
      label,
      `holds ${volumes} volumes (dim[4..7] = ${[4, 5, 6, 7].map(d).join(", ")}); bhsd reads files with one 3-D volume`,
    );
  }
  const code = h.datatypeCode;
  const dtype = DTYPE_OF_CODE.get(code);
  if (!dtype) {
    const what = UNSUPPORTED_CODES[code];
    throw new NiftiError(
      label,
      what
        ? `datatype ${code} (${what}) is not supported; bhsd reads uint8, int8, int16, uint16, int32, uint32, float32 and float64`
        : `unknown datatype code ${code}`,
    );
  }
  // bitpix must agree with the datatype: a file where they differ is damaged or crafted, and
  // readers that trust one or the other would read different voxels
  const bits = BYTES_PER_ELEMENT[dtype] * 8;
  if (h.bitpix !== bits) throw new NiftiError(label, `bitpix is ${h.bitpix} but datatype ${code} (${dtype}) has ${bits} bits per voxel`);
  const nvox = dims[0] * dims[1] * dims[2];
  const nbytes = nvox * BYTES_PER_ELEMENT[dtype];
  let offset = h.voxOffset;
  if (!Number.isFinite(offset) || offset < 0 || !Number.isInteger(offset)) {
    throw new NiftiError(label, `vox_offset ${offset} is not a valid byte offset`);
  }
  // One-file NIfTI puts the voxels after the header and the 4-byte extension flag at the least.
  if (offset < h.headerSize) offset = h.headerSize + 4;
  // and at most a bounded run of extensions later (real ones: bytes to a few MB of XML): a gzip
  // stream claiming voxels gigabytes in would cost minutes of inflating what is then thrown away
  if (offset > h.headerSize + 4 + MAX_EXTENSION_BYTES)
    throw new NiftiError(label, `vox_offset ${offset} puts the voxels over ${MAX_EXTENSION_BYTES} bytes of extensions past the header`);
  // (before any voxel is read: a voxel whose volume is 0 or infinite in mm³ makes every mL 0 or Infinity)
  // A spacing the header does not give along an axis of more than one voxel (pixdim NaN, 0 or
  // infinite) is refused, not taken as 1 mm; a single slice's pixdim 0 stays nifti1_io's 1.
  for (let i = 1; i <= 3; i++) {
    const v = h.pixdim[i]!;
    if (dims[i - 1]! > 1 && !(Number.isFinite(v) && v !== 0))
      throw new NiftiError(label, `pixdim[${i}] is ${v} along an axis of ${dims[i - 1]} voxels; a voxel spacing is needed`);
  }
  const g = geometry(h);
  // nifti1_io builds a qform from a negative pixdim as if it were 1 (nibabel refuses it): the
  // spacing and the affine would disagree
  if (g.source === "qform" && [1, 2, 3].some((i) => h.pixdim[i]! < 0))
    throw new NiftiError(label, `pixdim [${h.pixdim.slice(1, 4).join(", ")}] has a negative spacing, which the qform cannot hold`);
  const sp = g.spacing;
  const voxel = sp[0] * sp[1] * sp[2];
  if (!(voxel >= 2 ** -1022 && voxel < Infinity))
    throw new NiftiError(label, `pixdim [${sp.join(", ")}] mm make a voxel of ${voxel} mm³; bhsd needs a finite non-zero voxel volume`);
  return { dims, dtype, nvox, nbytes, offset };
}

type Mat4 = number[];

/** The sform as a row-major 4x4 matrix. */
function sformMatrix(h: NiftiHeader): Mat4 {
  return [...h.srow[0], ...h.srow[1], ...h.srow[2], 0, 0, 0, 1];
}

/** The qform (nifti_quatern_to_mat44) as a row-major 4x4 matrix. */
export function qformMatrix(quatern: readonly number[], qoffset: readonly number[], pixdim: readonly number[]): Mat4 {
  let [b, c, d] = quatern as [number, number, number];
  let a = 1 - (b * b + c * c + d * d);
  if (a < 1e-7) {
    a = 1 / Math.sqrt(b * b + c * c + d * d);
    b *= a;
    c *= a;
    d *= a;
    a = 0;
  } else a = Math.sqrt(a);
  const xd = pixdim[1]! > 0 ? pixdim[1]! : 1;
  const yd = pixdim[2]! > 0 ? pixdim[2]! : 1;
  let zd = pixdim[3]! > 0 ? pixdim[3]! : 1;
  if (pixdim[0]! < 0) zd = -zd;
  return [
    (a * a + b * b - c * c - d * d) * xd,
    2 * (b * c - a * d) * yd,
    2 * (b * d + a * c) * zd,
    qoffset[0]!,
    2 * (b * c + a * d) * xd,
    (a * a + c * c - b * b - d * d) * yd,
    2 * (c * d - a * b) * zd,
    qoffset[1]!,
    2 * (b * d - a * c) * xd,
    2 * (c * d + a * b) * yd,
    (a * a + d * d - c * c - b * b) * zd,
    qoffset[2]!,
    0,
    0,
    0,
    1,
  ];
}

/** Quaternion, offsets and qfac of an affine (nifti_mat44_to_quatern), for writing a qform. */
export function affineToQuatern(m: Mat4): { quatern: [number, number, number]; qoffset: [number, number, number]; qfac: number } {
  const col = (j: number) => [m[j]!, m[4 + j]!, m[8 + j]!];
  const cols = [col(0), col(1), col(2)].map((v) => {
    const n = Math.hypot(...v);
    return n > 0 ? v.map((x) => x / n) : v.map((_, i) => (i === 0 ? 1 : 0));
  });
  const r = (i: number, j: number) => cols[j - 1]![i - 1]!;
  const det =
    r(1, 1) * (r(2, 2) * r(3, 3) - r(2, 3) * r(3, 2)) -
    r(1, 2) * (r(2, 1) * r(3, 3) - r(2, 3) * r(3, 1)) +
    r(1, 3) * (r(2, 1) * r(3, 2) - r(2, 2) * r(3, 1));
  let qfac = 1;
  if (det < 0) {
    qfac = -1;
    cols[2] = cols[2]!.map((x) => -x);
  }
  let a = r(1, 1) + r(2, 2) + r(3, 3) + 1,
    b: number,
    c: number,
    d: number;
  if (a > 0.5) {
    a = 0.5 * Math.sqrt(a);
    b = (0.25 * (r(3, 2) - r(2, 3))) / a;
    c = (0.25 * (r(1, 3) - r(3, 1))) / a;
    d = (0.25 * (r(2, 1) - r(1, 2))) / a;
  } else {
    const xd = 1 + r(1, 1) - (r(2, 2) + r(3, 3));
    const yd = 1 + r(2, 2) - (r(1, 1) + r(3, 3));
    const zd = 1 + r(3, 3) - (r(1, 1) + r(2, 2));
    if (xd > 1) {
      b = 0.5 * Math.sqrt(xd);
      c = (0.25 * (r(1, 2) + r(2, 1))) / b;
      d = (0.25 * (r(1, 3) + r(3, 1))) / b;
      a = (0.25 * (r(3, 2) - r(2, 3))) / b;
    } else if (yd > 1) {
      c = 0.5 * Math.sqrt(yd);
      b = (0.25 * (r(1, 2) + r(2, 1))) / c;
      d = (0.25 * (r(2, 3) + r(3, 2))) / c;
      a = (0.25 * (r(1, 3) - r(3, 1))) / c;
    } else {
      d = 0.5 * Math.sqrt(zd);
      b = (0.25 * (r(1, 3) + r(3, 1))) / d;
      c = (0.25 * (r(2, 3) + r(3, 2))) / d;
      a = (0.25 * (r(2, 1) - r(1, 2))) / d;
    }
    if (a < 0) {
      b = -b;
      c = -c;
      d = -d;
    }
  }
  return { quatern: [b, c, d], qoffset: [m[3]!, m[7]!, m[11]!], qfac };
}

/** Millimetres per spatial unit of xyzt_units (0 unknown is taken as mm). */
export function mmPerUnit(xyztUnits: number): number {
  switch (xyztUnits & 7) {
    case 1:
      return 1000; // metre
    case 3:
      return 0.001; // micron
    default:
      return 1;
  }
}

/** Whether a 4×4 affine's linear part is (numerically) singular, relative to its columns' lengths. */
function singular(m: Mat4): boolean {
  const c = (j: number) => [m[j]!, m[4 + j]!, m[8 + j]!];
  const [a, b, d] = [c(0), c(1), c(2)];
  const det = a[0]! * (b[1]! * d[2]! - b[2]! * d[1]!) - b[0]! * (a[1]! * d[2]! - a[2]! * d[1]!) + d[0]! * (a[1]! * b[2]! - a[2]! * b[1]!);
  const scale = Math.hypot(...a) * Math.hypot(...b) * Math.hypot(...d);
  return !(scale > 0 && Math.abs(det) > 1e-6 * scale);
}

/** The voxel-to-world affine in mm (sform, else qform, else pixdim) and the spacing in mm. */
export function geometry(h: NiftiHeader): { affine: Mat4; spacing: [number, number, number]; source: "sform" | "qform" | "pixdim" } {
  const unit = mmPerUnit(h.xyztUnits);
  const finite = (m: Mat4) => m.every(Number.isFinite);
  let affine: Mat4 | undefined,
    source: "sform" | "qform" | "pixdim" = "pixdim";
  // (a singular sform — all zeros, two equal columns — maps the grid to a plane or a point: the
  // qform, else pixdim, is taken instead, as ITK does)
  if (h.sformCode > 0 && finite(sformMatrix(h)) && !singular(sformMatrix(h))) {
    affine = sformMatrix(h);
    source = "sform";
  } else if (h.qformCode > 0) {
    const q = qformMatrix(h.quatern, h.qoffset, h.pixdim);
    if (finite(q) && !singular(q)) {
      affine = q;
      source = "qform";
    }
  }
  const sp = [1, 2, 3].map((i) => {
    const v = Math.abs(h.pixdim[i]!);
    return Number.isFinite(v) && v > 0 ? v * unit : unit;
  }) as [number, number, number];
  if (!affine) affine = [sp[0] / unit, 0, 0, 0, 0, sp[1] / unit, 0, 0, 0, 0, sp[2] / unit, 0, 0, 0, 0, 1];
  if (unit !== 1) affine = affine.map((v, i) => (i < 12 ? v * unit : v));
  return { affine, spacing: sp, source };
}

export interface HeaderFields {
  version: 1 | 2;
  dims: [number, number, number];
  dtype: DTypeName;
  spacing: [number, number, number];
  affine: Mat4;
  sclSlope: number;
  sclInter: number;
  qformCode: number;
  sformCode: number;
  description?: string;
}

/** Builds a little-endian one-file header plus the 4-byte extension flag (voxels follow it). */
export function buildHeader(f: HeaderFields): Uint8Array {
  const size = f.version === 1 ? NIFTI1_HEADER : NIFTI2_HEADER;
  const out = new Uint8Array(size + 4);
  const dv = new DataView(out.buffer);
  const { quatern, qoffset, qfac } = affineToQuatern(f.affine);
  const dim = [3, f.dims[0], f.dims[1], f.dims[2], 1, 1, 1, 1];
  const pixdim = [qfac, f.spacing[0], f.spacing[1], f.spacing[2], 0, 0, 0, 0];
  const code = NIFTI_DATATYPE[f.dtype];
  const bitpix = BYTES_PER_ELEMENT[f.dtype] * 8;
  // descrip holds 80 bytes: the UTF-8 cut at 79 on a character's start (79 characters of "€" are 237 bytes)
  let desc = new TextEncoder().encode(f.description ?? "");
  if (desc.length > 79) {
    let end = 79;
    while (end > 0 && (desc[end]! & 0xc0) === 0x80) end--;
    desc = desc.subarray(0, end);
  }
  const xyztUnits = 2 | 8; // mm, seconds
  if (f.version === 1) {
    dv.setInt32(0, NIFTI1_HEADER, true);
    out[39] = 0; // dim_info
    dim.forEach((v, i) => dv.setInt16(40 + 2 * i, v, true));
    dv.setInt16(70, code, true);
    dv.setInt16(72, bitpix, true);
    pixdim.forEach((v, i) => dv.setFloat32(76 + 4 * i, v, true));
    dv.setFloat32(108, NIFTI1_HEADER + 4, true);
    dv.setFloat32(112, f.sclSlope, true);
    dv.setFloat32(116, f.sclInter, true);
    out[123] = xyztUnits;
    out.set(desc, 148);
    dv.setInt16(252, f.qformCode, true);
    dv.setInt16(254, f.sformCode, true);
    quatern.forEach((v, i) => dv.setFloat32(256 + 4 * i, v, true));
    qoffset.forEach((v, i) => dv.setFloat32(268 + 4 * i, v, true));
    for (let r = 0; r < 3; r++) for (let c = 0; c < 4; c++) dv.setFloat32(280 + 16 * r + 4 * c, f.affine[4 * r + c]!, true);
    out.set([0x6e, 0x2b, 0x31, 0], 344); // "n+1\0"
  } else {
    dv.setInt32(0, NIFTI2_HEADER, true);
    out.set([0x6e, 0x2b, 0x32, 0, 0x0d, 0x0a, 0x1a, 0x0a], 4); // "n+2\0\r\n\032\n"
    dv.setInt16(12, code, true);
    dv.setInt16(14, bitpix, true);
    dim.forEach((v, i) => dv.setBigInt64(16 + 8 * i, BigInt(v), true));
    pixdim.forEach((v, i) => dv.setFloat64(104 + 8 * i, v, true));
    dv.setBigInt64(168, BigInt(NIFTI2_HEADER + 4), true);
    dv.setFloat64(176, f.sclSlope, true);
    dv.setFloat64(184, f.sclInter, true);
    out.set(desc, 240);
    dv.setInt32(344, f.qformCode, true);
    dv.setInt32(348, f.sformCode, true);
    quatern.forEach((v, i) => dv.setFloat64(352 + 8 * i, v, true));
    qoffset.forEach((v, i) => dv.setFloat64(376 + 8 * i, v, true));
    for (let r = 0; r < 3; r++) for (let c = 0; c < 4; c++) dv.setFloat64(400 + 32 * r + 8 * c, f.affine[4 * r + c]!, true);
    dv.setInt32(500, xyztUnits, true);
  }
  return out;
}
