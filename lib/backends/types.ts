/**
 * The one interface every backend implements (ts, native, cuda). Public functions validate their
 * arguments first and then call a backend, so implementations may trust shapes and types; they
 * allocate nothing the caller did not size, and never block the event loop for long.
 */
import type { BackendName, VoxelArray } from "../types.js";

export interface VoxelStats {
  /** Smallest and largest finite value (Infinity / -Infinity when there is none). */
  min: number;
  max: number;
  /** Sum of the finite values. */
  sum: number;
  /** Voxels not equal to 0 (NaN counts as non-zero). */
  nonzero: number;
  /** NaN and ±Infinity voxels. */
  nonfinite: number;
}

export interface BackendDetails {
  /** Threads the backend's loops use. */
  threads: number;
  /** Instruction set its kernels use here ("avx2+fma", "sse2", "js", a GPU's name …). */
  simd: string;
  /** Version of the binary, when there is one. */
  version?: string;
  /** Where the binary was loaded from. */
  binary?: string;
  compiler?: string;
}

export interface Backend {
  readonly name: BackendName;
  details(): BackendDetails;
  voxelStats(data: VoxelArray): Promise<VoxelStats>;
  /** dst[i] = float32(src[i] · slope + inter), computed in float64. */
  rescaleToFloat32(src: VoxelArray, slope: number, inter: number, dst: Float32Array): Promise<void>;
}
