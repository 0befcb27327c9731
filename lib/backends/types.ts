/**
 * The one interface every backend implements (ts, native, cuda). Public functions validate their
 * arguments first and then call a backend, so implementations may trust shapes and types; they
 * allocate nothing the caller did not size, and never block the event loop for long.
 */
import type { BackendName, DTypeName, VoxelArray } from "../types.js";
import type { TensorBackend } from "./tensor-types.js";

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
  /**
   * The precision of convolutions outside a model that sets its own (setCpuPrecision /
   * setCudaPrecision), and those this backend can run here: bf16 on the native backend needs
   * AVX512_BF16 (elsewhere "bf16" runs in fp32).
   */
  precision?: string;
  precisions?: string[];
}

/** Numbers per component in componentStats' packed output (see native/include/bhsd/ccl.hpp). */
export const STATS = 11;

export interface Backend extends TensorBackend {
  readonly name: BackendName;
  details(): BackendDetails;
  voxelStats(data: VoxelArray): Promise<VoxelStats>;
  /** dst[i] = float32(src[i] · slope + inter), computed in float64. */
  rescaleToFloat32(src: VoxelArray, slope: number, inter: number, dst: Float32Array): Promise<void>;

  /**
   * Labels connected foreground into `out` (zero-filled, same length) and returns the count; labels
   * are 1..count in raster order of each component's first voxel (scipy.ndimage.label's numbering).
   */
  connectedComponents(
    data: VoxelArray,
    dims: readonly [number, number, number],
    connectivity: 6 | 18 | 26,
    perClass: boolean,
    out: Int32Array,
  ): Promise<number>;
  /**
   * n voxels of `dtype` (host byte order) at byte `offset` of the open file `fd`, each converted to
   * float32 as rescaleToFloat32 does, into out; rejects when the file ends early. Optional.
   */
  readScaled?(fd: number, offset: number, dtype: DTypeName, n: number, slope: number, inter: number, out: Float32Array): Promise<void>;
  /**
   * The gzip stream of an open file (from byte 0; kept open by the caller until this settles) or
   * of bytes, inflated past its first `skip` bytes into out: with dtype null the bytes themselves
   * (filling out's bytes), with a dtype that type's voxels (host byte order) converted to float32
   * as readScaled converts them (out: one voxel each). Resolves with the stream's bytes delivered,
   * fewer than wanted when the stream ends first; rejects with "broken gzip stream: …". Optional.
   */
  gunzip?(
    source: number | Uint8Array,
    skip: number,
    dtype: DTypeName | null,
    slope: number,
    inter: number,
    out: Uint8Array | Float32Array,
  ): Promise<number>;
  /**
   * The same into labels the backend allocates (engine memory not cleared first, since every
   * voxel is written; the caller sees them only once labelling has finished). Optional.
   */
  connectedComponentsFresh?(
    data: VoxelArray,
    dims: readonly [number, number, number],
    connectivity: 6 | 18 | 26,
    perClass: boolean,
  ): Promise<{ count: number; labels: Int32Array }>;
  /**
   * Per component c in 1..count, at out[(c−1)·STATS + k]: 0 voxels, 1–3 min x y z, 4–6 max x y z,
   * 7–9 sums of x y z, 10 the value of `classes` at its first voxel (0 without classes).
   */
  componentStats(
    labels: Int32Array,
    dims: readonly [number, number, number],
    count: number,
    classes: VoxelArray | null,
    out: Float64Array,
  ): Promise<void>;
  /** Voxels per slice: out[offsets[c−1] + z − zmin[c−1]] += 1 for each voxel of c at z. */
  componentSliceAreas(
    labels: Int32Array,
    dims: readonly [number, number, number],
    count: number,
    zmin: Int32Array,
    offsets: Float64Array,
    out: Uint32Array,
  ): Promise<void>;
  /** out[i] = keep[labels[i]] ? src[i] : 0 (keep has count+1 entries). */
  selectComponents<T extends VoxelArray>(src: T, labels: Int32Array, keep: Uint8Array, out: T): Promise<void>;

  /** Copies labels to uint8; rejects, naming `what`, the value and the voxel, any value not an integer in 0..maxLabel. */
  narrowLabels(src: VoxelArray, dims: readonly [number, number, number], maxLabel: number, out: Uint8Array, what: string): Promise<void>;
  /**
   * counts[g·(L+1) + p]: voxels with gt g and pred p; boxes[((v·(L+1)) + l)·6 …]: min x y z, max x y z
   * of label l in gt (v = 0) and pred (v = 1), min > max when absent.
   */
  labelPairStats(
    gt: Uint8Array,
    pred: Uint8Array,
    dims: readonly [number, number, number],
    maxLabel: number,
  ): Promise<{ counts: Float64Array; boxes: Float64Array }>;
  /**
   * For each class (both masks non-empty, box covering both): 10 numbers — |∂P|, |∂G|, Σd(P→G),
   * Σd(G→P), max d(P→G), max d(G→P), p95 d(P→G), p95 d(G→P), #d(P→G) ≤ τ, #d(G→P) ≤ τ.
   */
  surfaceMetrics(
    gt: Uint8Array,
    pred: Uint8Array,
    dims: readonly [number, number, number],
    spacing: readonly [number, number, number],
    classes: Int32Array,
    boxes: Float64Array,
    tau: number,
  ): Promise<Float64Array>;

  /**
   * GPU backends: runs `fn` with tensors kept on the device between operations; `constants` stay
   * there while they live; `outputs` are brought back to the host before it resolves.
   */
  residentRun?<T>(fn: () => Promise<T>, opts: { constants?: ReadonlySet<Float32Array>; outputs: (r: T) => Float32Array[] }): Promise<T>;
  /**
   * CPU backends: these arrays (a model's weights) do not change while they live, so forms derived
   * from them (packed convolution weights) may be kept with them instead of rebuilt per call.
   */
  constants?(arrays: ReadonlySet<Float32Array>): void;
  /**
   * A token that native calls made in its scope (cancel.ts's withCancel) run under; `cancel()`
   * stops them at their next chunk. Backends without it are cancelled between calls only.
   */
  cancelToken?(): { token: unknown; cancel(): void } | undefined;
  /** Inside a resident run: makes these arrays' host copies current before JS reads them. */
  hostRead?(arrays: Float32Array[]): Promise<void>;
  /** Inside a resident run: these arrays will not be read again; their device copies may go. */
  forget?(arrays: Float32Array[]): void;
  /** These arrays (a disposed model's weights) are gone: free what was derived from them now. */
  release?(arrays: Float32Array[]): void;
  /** Inside a resident run: JS wrote these arrays on the host. */
  hostWrote?(arrays: Float32Array[]): void;
}
