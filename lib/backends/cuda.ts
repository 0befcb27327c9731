/**
 * The CUDA backend. Its addon (bhsd_cuda.node, built by cmake-js from CMakeLists.txt) is a second
 * binary, loaded only when asked for, with cudart linked statically so that the CPU path never
 * needs CUDA libraries.
 *
 * Tensors move to the GPU as they are used. A plain call uploads its inputs, runs, downloads its
 * output and frees the device copies. Inside `residentRun` (what `Model.run` uses) the device copy
 * of every array is kept between operations, so a forward pass makes no host round trip: only
 * its inputs go up and its outputs come down, and the model's weights stay on the GPU for as long
 * as the model lives. Float operations are the project's own kernels (implicit-GEMM convolution on
 * tensor cores); components and surface distances run on the GPU too; the few cheap, memory-bound
 * voxel passes that only read host arrays (statistics, rescaling, label checks, component
 * statistics) are handed to the CPU backend, where a round trip over PCIe would cost more than
 * the work.
 */
import { AsyncLocalStorage } from "node:async_hooks";
import { existsSync } from "node:fs";
import { createRequire } from "node:module";
import { join } from "node:path";
import { inArray, invalidParameterError } from "../is.js";
import type { VoxelArray } from "../types.js";
import { PACKAGE_ROOT } from "../paths.js";
import { scopedPrecision } from "./precision.js";
import type { TensorBackend, Triple } from "./tensor-types.js";
import type { Backend, BackendDetails, VoxelStats } from "./types.js";

/** What the CUDA addon reports about the machine (native/cuda/addon_cuda.cc). */
export interface CudaProbe {
  ok: boolean;
  deviceCount: number;
  devices: { name: string; computeCapability: string; memoryBytes: number }[];
  error?: string;
  driverVersion?: number;
  runtimeVersion?: number;
}

type Id = number;
type Arr = Float32Array | Int32Array;
type Shape5 = [number, number, number, number, number];

export interface CudaAddon {
  probe(): CudaProbe;
  ops: string[];
  alloc(bytes: number): Id;
  free(id: Id): void;
  memory(): { live: number; peak: number; cached: number };
  resetPeak(): void;
  /** Device milliseconds of the last connectedComponents or surfaceMetrics call (between its copies). */
  lastDeviceMs(): number;
  releaseCache(): void;
  upload(id: Id, data: ArrayBufferView): Promise<void>;
  download(id: Id, data: ArrayBufferView): Promise<void>;
  sync(): Promise<void>;
  conv3d(
    x: Id,
    inShape: Shape5,
    w: Id,
    wShape: number[],
    b: Id,
    strides: Triple,
    dil: Triple,
    pads: Triple,
    groups: number,
    outS: Triple,
    act: number,
    alpha: number,
    out: Id,
    precision: number,
  ): void;
  convTranspose3d(
    x: Id,
    inShape: Shape5,
    w: Id,
    wShape: number[],
    b: Id,
    strides: Triple,
    dil: Triple,
    pads: Triple,
    groups: number,
    outS: Triple,
    out: Id,
    precision: number,
  ): void;
  convWeightGrad(
    A: Id,
    aShape: number[],
    B: Id,
    bShape: number[],
    kernel: Triple,
    strides: Triple,
    pads: Triple,
    dil: Triple,
    out: Id,
  ): void;
  instanceNorm(x: Id, N: number, C: number, S: number, scale: Id, bias: Id, eps: number, act: number, alpha: number, out: Id): void;
  batchNorm(x: Id, N: number, C: number, S: number, scale: Id, bias: Id, mean: Id, variance: Id, eps: number, out: Id): void;
  unary(x: Id, N: number, C: number, S: number, op: number, alpha: number, slope: Id, slopeLen: number, out: Id): void;
  binary(a: Id, b: Id, shape: number[], sa: number[], sb: number[], mul: boolean, out: Id, act: number, alpha: number): void;
  pool3d(
    x: Id,
    NC: number,
    inS: Triple,
    outS: Triple,
    k: Triple,
    s: Triple,
    d: Triple,
    p: Triple,
    max: boolean,
    cip: boolean,
    out: Id,
  ): void;
  resize3d(x: Id, NC: number, inS: Triple, outS: Triple, scales: Float64Array, linear: boolean, cm: number, nm: number, out: Id): void;
  softmax(x: Id, N: number, C: number, S: number, out: Id): void;
  argmax(x: Id, N: number, C: number, S: number, out: Id): void;
  concatPart(x: Id, outer: number, len: number, total: number, offset: number, inner: number, out: Id): void;
  connectedComponents(
    data: VoxelArray,
    nx: number,
    ny: number,
    nz: number,
    connectivity: number,
    perClass: boolean,
    out: Int32Array,
  ): Promise<number>;
  surfaceMetrics(
    gt: Uint8Array,
    pred: Uint8Array,
    nx: number,
    ny: number,
    nz: number,
    sx: number,
    sy: number,
    sz: number,
    classes: Int32Array,
    boxes: Float64Array,
    tau: number,
  ): Promise<Float64Array>;
}

export const CUDA_PRECISIONS = ["fp32", "tf32", "fp16", "bf16"] as const;
export type CudaPrecision = (typeof CUDA_PRECISIONS)[number];

const require = createRequire(import.meta.url);

export function cudaAddonPaths(): string[] {
  return [
    join(PACKAGE_ROOT, "build-cuda", "Release", "bhsd_cuda.node"),
    join(PACKAGE_ROOT, "prebuilds", `${process.platform}-${process.arch}`, "bhsd_cuda.node"),
  ];
}

/**
 * Device copies of host arrays for one run (or one plain call). `hostStale`: the device holds
 * newer values than the host array.
 */
class Residency {
  private readonly dev = new Map<Arr, { id: Id; hostStale: boolean }>();
  constructor(
    private readonly be: CudaBackend,
    private readonly constants: ReadonlySet<Float32Array>,
  ) {}

  /** The device copy of `a`, uploaded when there is none yet (0 for null). */
  async input(a: Arr | null): Promise<Id> {
    if (!a) return 0;
    const pinned = this.be.pinnedId(a);
    if (pinned) return pinned;
    const m = this.dev.get(a);
    if (m) return m.id;
    const id = this.be.addon.alloc(a.byteLength);
    if (a instanceof Float32Array && this.constants.has(a)) {
      try {
        await this.be.addon.upload(id, a);
      } catch (e) {
        this.be.addon.free(id);
        throw e;
      }
      this.be.pin(a, id);
      return id;
    }
    this.dev.set(a, { id, hostStale: false });
    await this.be.addon.upload(id, a);
    return id;
  }

  async inputs(as: (Arr | null)[]): Promise<Id[]> {
    const unique = [...new Set(as)];
    const ids = new Map<Arr | null, Id>();
    await Promise.all(unique.map(async (a) => ids.set(a, await this.input(a))));
    return as.map((a) => ids.get(a)!);
  }

  /** A device buffer for `a`'s new values (the host copy is stale until `toHost`). */
  output(a: Arr): Id {
    let m = this.dev.get(a);
    if (!m) {
      m = { id: this.be.addon.alloc(a.byteLength), hostStale: true };
      this.dev.set(a, m);
    }
    m.hostStale = true;
    return m.id;
  }

  async toHost(a: Arr): Promise<void> {
    const m = this.dev.get(a);
    if (m?.hostStale) {
      await this.be.addon.download(m.id, a);
      m.hostStale = false;
    }
  }

  /** JS wrote `a` on the host: its device copy is out of date. */
  hostWrote(a: Arr): void {
    const m = this.dev.get(a);
    if (m) {
      this.be.addon.free(m.id);
      this.dev.delete(a);
    }
  }

  /** Brings `keep` back to the host and frees every device copy of the run. */
  async close(keep: Iterable<Arr>): Promise<void> {
    try {
      for (const a of keep) await this.toHost(a);
    } finally {
      for (const m of this.dev.values()) this.be.addon.free(m.id);
      this.dev.clear();
    }
  }
}

const NO_CONSTANTS: ReadonlySet<Float32Array> = new Set();

export class CudaBackend implements Backend {
  readonly name = "cuda" as const;
  /** Convolution arithmetic: TF32 by default (PyTorch's default for convolutions). */
  precision: CudaPrecision;
  private readonly store = new AsyncLocalStorage<Residency>();
  private readonly pinned = new WeakMap<Arr, Id>();
  private readonly registry: FinalizationRegistry<Id>;

  constructor(
    readonly addon: CudaAddon,
    private readonly cpu: Backend,
    private readonly path: string,
    private readonly probe: CudaProbe,
  ) {
    const env = process.env.BHSD_CUDA_PRECISION;
    if (env !== undefined && env !== "" && !inArray(env, CUDA_PRECISIONS))
      throw invalidParameterError("BHSD_CUDA_PRECISION", `one of ${CUDA_PRECISIONS.join(", ")}`, env);
    this.precision = (env as CudaPrecision | undefined) || "tf32";
    this.registry = new FinalizationRegistry((id) => addon.free(id));
  }

  pinnedId(a: Arr): Id | undefined {
    return this.pinned.get(a);
  }
  pin(a: Float32Array, id: Id): void {
    this.pinned.set(a, id);
    this.registry.register(a, id, a);
  }

  /** Frees the device copies of these weights now (a disposed model's), not at garbage collection. */
  release(arrays: Float32Array[]): void {
    for (const a of arrays) {
      const id = this.pinned.get(a);
      if (id === undefined) continue;
      this.pinned.delete(a);
      this.registry.unregister(a);
      this.addon.free(id);
    }
    this.cpu.release?.(arrays);
  }

  details(): BackendDetails {
    const d = this.probe.devices[0];
    return {
      threads: 1,
      simd: d ? `${d.name} (sm ${d.computeCapability}), ${this.precision} convolutions` : "cuda",
      binary: this.path,
      ...(this.probe.runtimeVersion ? { version: `CUDA runtime ${this.probe.runtimeVersion}, driver ${this.probe.driverVersion}` } : {}),
    };
  }

  /** Device memory: bytes held by live buffers, the most held at once, and the allocator's cache. */
  memory() {
    return this.addon.memory();
  }

  /**
   * Runs `fn` with device copies kept between operations. Arrays in `constants` (a model's
   * weights) stay on the device until they are garbage-collected; the arrays `outputs` names are
   * brought back to the host before this resolves; every other device copy is freed.
   */
  async residentRun<T>(
    fn: () => Promise<T>,
    opts: { constants?: ReadonlySet<Float32Array>; outputs: (r: T) => Float32Array[] },
  ): Promise<T> {
    const outer = this.store.getStore();
    if (outer) return fn(); // already resident: the outer run owns the copies
    const r = new Residency(this, opts.constants ?? NO_CONSTANTS);
    let ok = false;
    try {
      const result = await this.store.run(r, fn);
      await r.close(opts.outputs(result));
      ok = true;
      return result;
    } finally {
      if (!ok) await r.close([]).catch(() => undefined);
    }
  }

  /** Makes the host copies of `arrays` current (inside a resident run). */
  async hostRead(arrays: Float32Array[]): Promise<void> {
    const r = this.store.getStore();
    if (r) for (const a of arrays) await r.toHost(a);
  }

  /** Tells a resident run that JS wrote these arrays. */
  hostWrote(arrays: Float32Array[]): void {
    const r = this.store.getStore();
    if (r) for (const a of arrays) r.hostWrote(a);
  }

  /** Tells a resident run that these arrays are dead: their device copies are freed. */
  forget(arrays: Float32Array[]): void {
    const r = this.store.getStore();
    if (r) for (const a of arrays) r.hostWrote(a);
  }

  /** The run's residency, or a fresh one for a plain call (closed by `done`). */
  private scope(): { r: Residency; plain: boolean } {
    const r = this.store.getStore();
    return r ? { r, plain: false } : { r: new Residency(this, NO_CONSTANTS), plain: true };
  }
  private async done(s: { r: Residency; plain: boolean }, outs: Arr[]): Promise<void> {
    if (s.plain) await s.r.close(outs);
  }
  private async op(inputs: (Arr | null)[], outs: Arr[], launch: (ids: Id[], outIds: Id[]) => void, alwaysDownload = false): Promise<void> {
    const s = this.scope();
    try {
      const ids = await s.r.inputs(inputs);
      const outIds = outs.map((o) => s.r.output(o));
      launch(ids, outIds);
      if (alwaysDownload && !s.plain) for (const o of outs) await s.r.toHost(o);
      await this.done(s, outs);
    } catch (e) {
      if (s.plain) await s.r.close([]).catch(() => undefined);
      throw e;
    }
  }
  /** The running model's precision (loadModel's), else the backend's. */
  private get prec(): number {
    return CUDA_PRECISIONS.indexOf(scopedPrecision() ?? this.precision);
  }

  // ---- tensor operations --------------------------------------------------------------------------

  conv3d: TensorBackend["conv3d"] = (x, inShape, w, wShape, bias, strides, dil, pads, groups, outS, act, alpha, out) =>
    this.op([x, w, bias], [out], ([xi, wi, bi], [oi]) =>
      this.addon.conv3d(xi!, inShape, wi!, wShape, bi!, strides, dil, pads, groups, outS, act, alpha, oi!, this.prec),
    );

  convTranspose3d: TensorBackend["convTranspose3d"] = (x, inShape, w, wShape, bias, strides, dil, pads, groups, outS, out) =>
    this.op([x, w, bias], [out], ([xi, wi, bi], [oi]) =>
      this.addon.convTranspose3d(xi!, inShape, wi!, wShape, bi!, strides, dil, pads, groups, outS, oi!, this.prec),
    );

  // The weight gradient accumulates into out: its current values go up first.
  convWeightGrad: TensorBackend["convWeightGrad"] = (A, aShape, B, bShape, kernel, strides, pads, dil, out) =>
    this.op([A, B, out], [out], ([ai, bi], [oi]) => this.addon.convWeightGrad(ai!, aShape, bi!, bShape, kernel, strides, pads, dil, oi!));

  instanceNorm: TensorBackend["instanceNorm"] = (x, N, C, S, scale, bias, eps, act, alpha, out) =>
    this.op([x, scale, bias], [out], ([xi, si, bi], [oi]) => this.addon.instanceNorm(xi!, N, C, S, si!, bi!, eps, act, alpha, oi!));

  batchNorm: TensorBackend["batchNorm"] = (x, N, C, S, scale, bias, mean, variance, eps, out) =>
    this.op([x, scale, bias, mean, variance], [out], ([xi, si, bi, mi, vi], [oi]) =>
      this.addon.batchNorm(xi!, N, C, S, si!, bi!, mi!, vi!, eps, oi!),
    );

  unary: TensorBackend["unary"] = (x, N, C, S, op, alpha, slope, out) =>
    this.op([x, slope], [out], ([xi, si], [oi]) => this.addon.unary(xi!, N, C, S, op, alpha, si!, slope?.length ?? 0, oi!));

  binary: TensorBackend["binary"] = (a, b, shape, sa, sb, mul, out, act = 0, alpha = 0) =>
    this.op([a, b], [out], ([ai, bi], [oi]) => this.addon.binary(ai!, bi!, shape, sa, sb, mul, oi!, act, alpha));

  pool3d: TensorBackend["pool3d"] = (x, NC, inS, outS, k, s, d, p, max, cip, out) =>
    this.op([x], [out], ([xi], [oi]) => this.addon.pool3d(xi!, NC, inS, outS, k, s, d, p, max, cip, oi!));

  resize3d: TensorBackend["resize3d"] = (x, NC, inS, outS, scales, linear, cm, nm, out) =>
    this.op([x], [out], ([xi], [oi]) => this.addon.resize3d(xi!, NC, inS, outS, scales, linear, cm, nm, oi!));

  softmax: TensorBackend["softmax"] = (x, N, C, S, out) => this.op([x], [out], ([xi], [oi]) => this.addon.softmax(xi!, N, C, S, oi!));

  // Labels are read by JS at once: always brought back.
  argmax: TensorBackend["argmax"] = (x, N, C, S, out) => this.op([x], [out], ([xi], [oi]) => this.addon.argmax(xi!, N, C, S, oi!), true);

  concat: TensorBackend["concat"] = (xs, lens, outer, inner, out) => {
    const total = lens.reduce((a, b) => a + b, 0);
    return this.op(xs, [out], (ids, [oi]) => {
      let off = 0;
      ids.forEach((id, k) => {
        this.addon.concatPart(id, outer, lens[k]!, total, off, inner, oi!);
        off += lens[k]!;
      });
    });
  };

  // ---- voxel work ---------------------------------------------------------------------------------

  connectedComponents(
    data: VoxelArray,
    dims: readonly [number, number, number],
    connectivity: 6 | 18 | 26,
    perClass: boolean,
    out: Int32Array,
  ): Promise<number> {
    return this.addon.connectedComponents(data, dims[0], dims[1], dims[2], connectivity, perClass, out);
  }

  surfaceMetrics(
    gt: Uint8Array,
    pred: Uint8Array,
    dims: readonly [number, number, number],
    spacing: readonly [number, number, number],
    classes: Int32Array,
    boxes: Float64Array,
    tau: number,
  ): Promise<Float64Array> {
    return this.addon.surfaceMetrics(gt, pred, dims[0], dims[1], dims[2], spacing[0], spacing[1], spacing[2], classes, boxes, tau);
  }

  // Memory-bound passes over host arrays: the CPU backend does them (see the file's comment).
  voxelStats(data: VoxelArray): Promise<VoxelStats> {
    return this.cpu.voxelStats(data);
  }
  rescaleToFloat32(src: VoxelArray, slope: number, inter: number, dst: Float32Array): Promise<void> {
    return this.cpu.rescaleToFloat32(src, slope, inter, dst);
  }
  componentStats: Backend["componentStats"] = (...a) => this.cpu.componentStats(...a);
  componentSliceAreas: Backend["componentSliceAreas"] = (...a) => this.cpu.componentSliceAreas(...a);
  selectComponents<T extends VoxelArray>(src: T, labels: Int32Array, keep: Uint8Array, out: T): Promise<void> {
    return this.cpu.selectComponents(src, labels, keep, out);
  }
  narrowLabels: Backend["narrowLabels"] = (...a) => this.cpu.narrowLabels(...a);
  labelPairStats: Backend["labelPairStats"] = (...a) => this.cpu.labelPairStats(...a);
  // file reads (a .nii's scaled voxels, a .nii.gz's inflating) are the CPU backend's where it has them
  get readScaled(): Backend["readScaled"] {
    return this.cpu.readScaled?.bind(this.cpu);
  }
  get gunzip(): Backend["gunzip"] {
    return this.cpu.gunzip?.bind(this.cpu);
  }
  get transposeLast2(): Backend["transposeLast2"] {
    return this.cpu.transposeLast2?.bind(this.cpu);
  }
  // Mamba's ops run on the host (the executor syncs their operands there, as for any op it runs in
  // JavaScript): the CPU backend's kernels where it has them, not the executor's float64 loops
  get mambaConv(): Backend["mambaConv"] {
    return this.cpu.mambaConv?.bind(this.cpu);
  }
  get selectiveScan(): Backend["selectiveScan"] {
    return this.cpu.selectiveScan?.bind(this.cpu);
  }
}

/** Loads the CUDA addon and returns a backend, or throws an Error saying why there is none. */
export function loadCudaBackend(cpu: () => Backend): { backend: CudaBackend; probe: CudaProbe; path: string } {
  if (process.env.BHSD_DISABLE_CUDA === "1") throw new Error("disabled by BHSD_DISABLE_CUDA=1");
  const path = cudaAddonPaths().find((p) => existsSync(p));
  if (!path) throw new Error("no CUDA binary (bhsd_cuda.node); `npm run build:cuda` makes one where nvcc is installed");
  let addon: CudaAddon;
  try {
    addon = require(path) as CudaAddon;
  } catch (e) {
    throw new Error(`${path} did not load: ${(e as Error).message.split("\n")[0]}`, { cause: e });
  }
  const probe = addon.probe();
  if (!probe.ok) throw new Error(`no usable GPU: ${probe.error ?? "unknown CUDA error"}`);
  if (probe.deviceCount < 1) throw new Error("no CUDA device found");
  return { backend: new CudaBackend(addon, cpu(), path, probe), probe, path };
}
