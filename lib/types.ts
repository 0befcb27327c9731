/** The data types of the public surface (see the contract in shared/spec/api.md). */

/** Voxel storage. Int8Array is accepted too, for NIfTI int8 files. */
export type VoxelArray = Uint8Array | Int8Array | Int16Array | Uint16Array | Int32Array | Uint32Array | Float32Array | Float64Array;

/** Element type names, as numpy and NIfTI tools spell them. */
export type DTypeName = "uint8" | "int8" | "int16" | "uint16" | "int32" | "uint32" | "float32" | "float64";

/** What a NIfTI reader learned beyond the voxels; writeNifti uses it to write the file back as it was. */
export interface NiftiMeta {
  /** NIfTI version of the file read (1 or 2). */
  version: 1 | 2;
  /** Datatype stored in the file (before any scaling). */
  datatype: DTypeName;
  /** scl_slope and scl_inter as stored; `scaled` says whether they were applied. */
  sclSlope: number;
  sclInter: number;
  scaled: boolean;
  qformCode: number;
  sformCode: number;
  /** Where the affine came from. */
  affineSource: "sform" | "qform" | "pixdim";
}

export interface Volume<T extends VoxelArray = VoxelArray> {
  /** x varies fastest, then y, then z (NIfTI order; numpy C-order (z, y, x)). */
  data: T;
  dims: [nx: number, ny: number, nz: number];
  /** Voxel size in mm. */
  spacing: [sx: number, sy: number, sz: number];
  /** 4x4 row-major voxel-to-world matrix (RAS+ mm). */
  affine: number[];
  /** Present on volumes read from a NIfTI file. */
  meta?: NiftiMeta;
}

/**
 * What `using` needs of a value (TypeScript's `Disposable`): a `[Symbol.dispose]()` method, spelled
 * so that these declarations still compile for a user whose TypeScript has neither
 * `lib: ["esnext.disposable"]` (or ES2025+) nor @types/node — there it is `unknown` (and `using`,
 * which needs that library, is not available either).
 */
export type Disposal = SymbolConstructor extends { readonly dispose: infer K extends symbol } ? { [P in K]: () => void } : unknown;

/** A dense float tensor, C-order (NCDHW for 3-D images). */
export interface Tensor {
  data: Float32Array;
  shape: number[];
}

export type BackendName = "cuda" | "native" | "ts";
