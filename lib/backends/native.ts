/** The native C++ backend: the CPU addon built by node-gyp (or a prebuild), loaded by node-gyp-build. */
import { createRequire } from "node:module";
import type { DTypeName, VoxelArray } from "../types.js";
import { PACKAGE_ROOT } from "../paths.js";
import { cancelScope } from "./cancel.js";
import { checkCpuPrecisionEnv, cpuPrecision } from "./precision.js";
import type { Backend, BackendDetails, VoxelStats } from "./types.js";
import type { TensorBackend } from "./tensor-types.js";

/** The functions the addon exports (native/src/addon.cc); the tensor functions take the same arguments as the TensorBackend methods. */
export interface NativeAddon extends Omit<TensorBackend, "conv3d" | "conv3dNorm" | "preciseConvolutions"> {
  /** Adds delta (1 or −1) to the count of calls that want F(2×…) Winograd tiles; the count after. */
  preciseConvolutions(delta: number): number;
  /** The convolution plan's entries, 16 integers each (bhsd::plan_export). */
  convPlanExport?(): number[];
  /** Entries as convPlanExport gives them; the count taken, −1 where they are no plan (bhsd::plan_import). */
  convPlanImport?(values: number[]): number;
  /** Forgets the convolution plan. */
  convPlanClear?(): void;
  /**
   * TensorBackend's conv3d; optionally the weights as packConvWeights packed them, and a norm
   * applied in place after it (scale, bias, eps, act, alpha: conv3dNorm), then a residual and the
   * norm's groups; with nulls in the norm's places, a residual added before act (conv3dResidual).
   */
  conv3d(
    ...a: [
      ...Parameters<TensorBackend["conv3d"]>,
      packed?: Float32Array | null,
      scale?: Float32Array | null,
      normBias?: Float32Array | null,
      eps?: number | null,
      normAct?: number | null,
      normAlpha?: number | null,
      residual?: Float32Array | null,
      normGroups?: number,
    ]
  ): Promise<void>;
  /** w [Co, K] packed for conv3d's micro-kernel, per group. */
  packConvWeights(w: Float32Array, Co: number, K: number, groups: number): Float32Array;
  /** A zero-filled ArrayBuffer over engine memory (native/include/bhsd/memory.hpp). */
  alloc(bytes: number, zero?: boolean): ArrayBuffer;
  /** Detaches an ArrayBuffer: engine memory goes back at once (unless a running call holds it). */
  detach(buffer: ArrayBuffer): void;
  memoryStats(): { liveBytes: number; cachedBytes: number; weightCacheBytes?: number };
  /** The weight cache forgets its forms of these weights (absent from binaries before 2026-12-04). */
  forgetWeights?(w: Float32Array): number;
  /** Cancellation (native/src/addon.cc): a token, setting it, and the next async call's token. */
  cancelToken(): unknown;
  cancel(token: unknown): void;
  cancelNext(token: unknown): void;
  /** The arithmetic of this thread's next calls: 0 fp32, 1 bf16 (used where info().bf16). */
  setPrecision?(p: number): void;
  info(): {
    version: string;
    threads: number;
    simd: string;
    napiVersion: number;
    compiler?: string;
    bf16?: boolean;
    /** conv3d takes a residual after the norm's arguments (binaries from 2026-12-04 on). */
    convNormResidual?: boolean;
    /** conv3d takes the norm's groups after the residual (binaries from 2026-12-05 on). */
    convNormGroups?: boolean;
    /** conv3d takes a residual with nulls in the norm's places (binaries from 2026-12-05 on). */
    convResidual?: boolean;
  };
  voxelStats(data: VoxelArray): Promise<VoxelStats>;
  rescaleToF32(src: VoxelArray, slope: number, inter: number, dst: Float32Array): Promise<void>;
  connectedComponents(
    data: VoxelArray,
    nx: number,
    ny: number,
    nz: number,
    connectivity: number,
    perClass: boolean,
    out: Int32Array | null,
  ): Promise<number | { count: number; labels: ArrayBuffer }>;
  readScaled(fd: number, offset: number, dtype: string, n: number, slope: number, inter: number, out: Float32Array): Promise<void>;
  gunzip(
    source: number | Uint8Array,
    skip: number,
    dtype: string | null,
    slope: number,
    inter: number,
    out: Uint8Array | Float32Array,
  ): Promise<number>;
  componentStats(
    labels: Int32Array,
    nx: number,
    ny: number,
    nz: number,
    count: number,
    classes: VoxelArray | null,
    out: Float64Array,
  ): Promise<void>;
  componentSliceAreas(
    labels: Int32Array,
    nx: number,
    ny: number,
    nz: number,
    count: number,
    zmin: Int32Array,
    offsets: Float64Array,
    out: Uint32Array,
  ): Promise<void>;
  selectComponents(src: VoxelArray, labels: Int32Array, keep: Uint8Array, out: VoxelArray): Promise<void>;
  narrowLabels(src: VoxelArray, nx: number, ny: number, nz: number, maxLabel: number, out: Uint8Array, what: string): Promise<void>;
  labelPairStats(
    gt: Uint8Array,
    pred: Uint8Array,
    nx: number,
    ny: number,
    nz: number,
    maxLabel: number,
  ): Promise<{ counts: Float64Array; boxes: Float64Array }>;
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

const require = createRequire(import.meta.url);

/**
 * What to run where no binary loads. Installed as a dependency, no prebuild matched and the install
 * script did not compile one: it found no C++ toolchain, or it did not run at all (`--ignore-scripts`,
 * npm's `strict-allow-scripts` or a denial in `allowScripts`, pnpm and bun, which run a dependency's
 * build scripts only where the project allows them). `npm rebuild bhsd` runs it again.
 */
export function howToBuild(root: string): string {
  const installed = root.split(/[\\/]/).includes("node_modules");
  return installed
    ? "no prebuild for this platform, and none compiled at install: its install script found no C++ toolchain or did not run (ignored or not allowed scripts); " +
        "with a C++ compiler, make and python3, `npm rebuild bhsd` compiles the addon (`npm rebuild -g bhsd` for a global install; where scripts need approval, `npm install-scripts approve bhsd` first, or pnpm's `onlyBuiltDependencies`)"
    : "no prebuild in prebuilds/ and no local build in build/Release; run `npm run build:native` with a C++ compiler to make one";
}

/** Loads the addon; throws an Error saying why it could not be loaded. */
export function loadNativeAddon(): { addon: NativeAddon; path: string } {
  if (process.env.BHSD_DISABLE_NATIVE === "1") throw new Error("disabled by BHSD_DISABLE_NATIVE=1");
  const gypBuild = require("node-gyp-build") as { (dir: string): unknown; resolve(dir: string): string };
  let path: string;
  // BHSD_NATIVE_BINARY: load this addon file (an absolute path) instead; `npm run test:asan` loads its sanitizer build
  const override = process.env.BHSD_NATIVE_BINARY;
  if (override) {
    try {
      return { addon: require(override) as NativeAddon, path: override };
    } catch (e) {
      throw new Error(`BHSD_NATIVE_BINARY=${override} did not load: ${(e as Error).message.split("\n")[0]}`, { cause: e });
    }
  }
  try {
    path = gypBuild.resolve(PACKAGE_ROOT);
  } catch {
    throw new Error(`no binary for ${process.platform}-${process.arch} (${howToBuild(PACKAGE_ROOT)})`);
  }
  try {
    return { addon: require(path) as NativeAddon, path };
  } catch (e) {
    throw new Error(`${path} did not load: ${(e as Error).message.split("\n")[0]}`, { cause: e });
  }
}

/** Addon functions that are not computations (no cancel token is handed to them). */
const NOT_CANCELLABLE = new Set([
  "alloc",
  "detach",
  "memoryStats",
  "forgetWeights",
  "info",
  "packConvWeights",
  "cancelToken",
  "cancel",
  "cancelNext",
  "setPrecision",
  "preciseConvolutions",
  "convPlanExport",
  "convPlanImport",
  "convPlanClear",
]);

export class NativeBackend implements Backend {
  readonly name = "native" as const;
  private readonly addon: NativeAddon;
  constructor(
    addon: NativeAddon,
    private readonly path: string,
  ) {
    checkCpuPrecisionEnv(); // a bad BHSD_CPU_PRECISION is the reason the backend did not load, not every call's error
    // every computation made inside withCancel's scope runs under its token (see cancel.ts), and
    // in the precision asked for where it is made (see precision.ts; the addon keeps the last one
    // set for this thread, so it is sent only when it changes)
    const cancellable = typeof addon.cancelNext === "function";
    let sent = 0;
    this.addon = !cancellable
      ? addon
      : new Proxy(addon, {
          get(target, key, receiver) {
            const f = Reflect.get(target, key, receiver) as unknown;
            if (typeof f !== "function" || typeof key !== "string" || NOT_CANCELLABLE.has(key)) return f;
            return (...args: unknown[]) => {
              const p = cpuPrecision() === "bf16" ? 1 : 0;
              if (p !== sent && target.setPrecision) {
                target.setPrecision(p);
                sent = p;
              }
              const token = cancelScope.getStore();
              if (token === undefined) return (f as (...a: unknown[]) => unknown).apply(target, args);
              target.cancelNext(token);
              try {
                return (f as (...a: unknown[]) => unknown).apply(target, args);
              } finally {
                target.cancelNext(null); // taken by the call's worker; cleared if the call threw before making one
              }
            };
          },
        });
  }

  cancelToken(): { token: unknown; cancel(): void } | undefined {
    if (typeof this.addon.cancelToken !== "function") return undefined;
    const token = this.addon.cancelToken();
    return { token, cancel: () => this.addon.cancel(token) };
  }

  /** The convolution plan as numbers (16 an entry), or undefined where this addon predates it. */
  convPlanExport(): number[] | undefined {
    return this.addon.convPlanExport?.();
  }

  /** Entries as convPlanExport gives them (checked by the caller); the count taken, −1 where refused. */
  convPlanImport(values: number[]): number {
    return this.addon.convPlanImport?.(values) ?? 0;
  }

  convPlanClear(): void {
    this.addon.convPlanClear?.();
  }

  allocBuffer(bytes: number, zero = true): ArrayBuffer {
    return this.addon.alloc(bytes, zero);
  }

  memoryStats(): { liveBytes: number; cachedBytes: number; weightCacheBytes: number } {
    return { weightCacheBytes: 0, ...this.addon.memoryStats() }; // (a binary before the weight cache's figure: 0)
  }

  details(): BackendDetails {
    const i = this.addon.info();
    return {
      threads: i.threads,
      simd: i.simd,
      version: i.version,
      binary: this.path,
      ...(i.compiler ? { compiler: i.compiler } : {}),
      precision: cpuPrecision(),
      precisions: i.bf16 ? ["fp32", "bf16"] : ["fp32"],
    };
  }

  voxelStats(data: VoxelArray): Promise<VoxelStats> {
    return this.addon.voxelStats(data);
  }

  rescaleToFloat32(src: VoxelArray, slope: number, inter: number, dst: Float32Array): Promise<void> {
    return this.addon.rescaleToF32(src, slope, inter, dst);
  }

  connectedComponents(
    data: VoxelArray,
    dims: readonly [number, number, number],
    connectivity: 6 | 18 | 26,
    perClass: boolean,
    out: Int32Array,
  ): Promise<number> {
    return this.addon.connectedComponents(data, dims[0], dims[1], dims[2], connectivity, perClass, out) as Promise<number>;
  }

  gunzip(
    source: number | Uint8Array,
    skip: number,
    dtype: DTypeName | null,
    slope: number,
    inter: number,
    out: Uint8Array | Float32Array,
  ): Promise<number> {
    return this.addon.gunzip(source, skip, dtype, slope, inter, out);
  }

  readScaled(fd: number, offset: number, dtype: DTypeName, n: number, slope: number, inter: number, out: Float32Array): Promise<void> {
    return this.addon.readScaled(fd, offset, dtype, n, slope, inter, out);
  }

  async connectedComponentsFresh(
    data: VoxelArray,
    dims: readonly [number, number, number],
    connectivity: 6 | 18 | 26,
    perClass: boolean,
  ): Promise<{ count: number; labels: Int32Array }> {
    const r = (await this.addon.connectedComponents(data, dims[0], dims[1], dims[2], connectivity, perClass, null)) as {
      count: number;
      labels: ArrayBuffer;
    };
    return { count: r.count, labels: new Int32Array(r.labels) };
  }

  componentStats(
    labels: Int32Array,
    dims: readonly [number, number, number],
    count: number,
    classes: VoxelArray | null,
    out: Float64Array,
  ): Promise<void> {
    return this.addon.componentStats(labels, dims[0], dims[1], dims[2], count, classes, out);
  }

  componentSliceAreas(
    labels: Int32Array,
    dims: readonly [number, number, number],
    count: number,
    zmin: Int32Array,
    offsets: Float64Array,
    out: Uint32Array,
  ): Promise<void> {
    return this.addon.componentSliceAreas(labels, dims[0], dims[1], dims[2], count, zmin, offsets, out);
  }

  selectComponents<T extends VoxelArray>(src: T, labels: Int32Array, keep: Uint8Array, out: T): Promise<void> {
    return this.addon.selectComponents(src, labels, keep, out);
  }

  narrowLabels(src: VoxelArray, dims: readonly [number, number, number], maxLabel: number, out: Uint8Array, what: string): Promise<void> {
    return this.addon.narrowLabels(src, dims[0], dims[1], dims[2], maxLabel, out, what);
  }

  labelPairStats(gt: Uint8Array, pred: Uint8Array, dims: readonly [number, number, number], maxLabel: number) {
    return this.addon.labelPairStats(gt, pred, dims[0], dims[1], dims[2], maxLabel);
  }

  surfaceMetrics(
    gt: Uint8Array,
    pred: Uint8Array,
    dims: readonly [number, number, number],
    spacing: readonly [number, number, number],
    classes: Int32Array,
    boxes: Float64Array,
    tau: number,
  ) {
    return this.addon.surfaceMetrics(gt, pred, dims[0], dims[1], dims[2], spacing[0], spacing[1], spacing[2], classes, boxes, tau);
  }

  /** Weights that do not change while they live (a model's): conv3d packs them once. */
  private readonly fixed = new WeakSet<Float32Array>();
  private readonly packed = new WeakMap<Float32Array, Float32Array>();
  /** Constant weights a transposed convolution ran with: the addon caches its form of them by their content. */
  private readonly transposed = new WeakSet<Float32Array>();

  constants(arrays: ReadonlySet<Float32Array>): void {
    for (const a of arrays) this.fixed.add(a);
  }

  /** Drops the packed copies of these weights at once (their engine memory is detached). */
  release(arrays: Float32Array[]): void {
    for (const a of arrays) {
      const p = this.packed.get(a);
      this.packed.delete(a);
      this.fixed.delete(a);
      if (p) this.detach(p.buffer as ArrayBuffer); // (their cached Winograd forms go with the block)
      if (this.transposed.delete(a)) this.addon.forgetWeights?.(a);
    }
  }

  /** Detaches an engine-memory buffer so that its memory returns now, not at garbage collection. */
  detach(buffer: ArrayBuffer): void {
    if (buffer.byteLength > 0 && !(buffer instanceof SharedArrayBuffer)) this.addon.detach(buffer);
  }

  /** The packed form of constant weights (made on first use), else null: conv3d packs per call. */
  private packedFor(w: Float32Array, Co: number, groups: number): Float32Array | null {
    if (!this.fixed.has(w)) return null;
    let p = this.packed.get(w);
    if (!p) {
      p = this.addon.packConvWeights(w, Co, w.length / Co, groups);
      this.packed.set(w, p);
    }
    return p;
  }

  // The tensor operations: the addon takes the same arguments.
  conv3d: TensorBackend["conv3d"] = (...a) => {
    const p = this.packedFor(a[2], a[3][0], a[8]);
    return p ? this.addon.conv3d(...a, p) : this.addon.conv3d(...a);
  };
  conv3dNorm: NonNullable<TensorBackend["conv3dNorm"]> = (
    x,
    inShape,
    w,
    wShape,
    bias,
    strides,
    dil,
    pads,
    groups,
    outS,
    out,
    scale,
    nb,
    eps,
    act,
    alpha,
    residual,
    normGroups,
  ) =>
    this.addon.conv3d(
      x,
      inShape,
      w,
      wShape,
      bias,
      strides,
      dil,
      pads,
      groups,
      outS,
      0,
      0,
      out,
      this.packedFor(w, wShape[0], groups),
      scale,
      nb,
      eps,
      act,
      alpha,
      ...(residual ? [residual] : normGroups !== undefined ? [null] : []),
      ...(normGroups !== undefined ? [normGroups] : []),
    );
  /** Whether this binary's conv3d takes a residual (an older prebuild would ignore the argument). */
  get convNormResidual(): boolean {
    return (this.residualArg ??= this.addon.info().convNormResidual === true);
  }
  private residualArg?: boolean;
  /** Whether this binary's conv3d takes the norm's groups (after the residual). */
  get convNormGroups(): boolean {
    return (this.groupsArg ??= this.addon.info().convNormGroups === true);
  }
  private groupsArg?: boolean;
  conv3dResidual: NonNullable<TensorBackend["conv3dResidual"]> = (...a) => {
    const conv = a.slice(0, 13) as Parameters<TensorBackend["conv3d"]>;
    return this.addon.conv3d(...conv, this.packedFor(conv[2], conv[3][0], conv[8]) ?? null, null, null, null, null, null, a[13]);
  };
  /** Whether this binary's conv3d takes a residual without a norm. */
  get convResidual(): boolean {
    return (this.plainResidual ??= this.addon.info().convResidual === true);
  }
  private plainResidual?: boolean;
  convTranspose3d: TensorBackend["convTranspose3d"] = (...a) => {
    if (this.fixed.has(a[2])) this.transposed.add(a[2]);
    return this.addon.convTranspose3d(...a);
  };
  instanceNorm: TensorBackend["instanceNorm"] = (...a) => this.addon.instanceNorm(...a);
  groupNorm: NonNullable<TensorBackend["groupNorm"]> = (...a) => this.addon.groupNorm!(...a);
  /** The addon's GEMM, where the binary has one (a prebuild older than it does not: MatMul then runs as a convolution). */
  get gemmBias(): boolean {
    return typeof this.addon.gemm === "function" && this.addon.gemmBias === true;
  }
  get gemm(): TensorBackend["gemm"] {
    return typeof this.addon.gemm === "function" ? this.gemmCall : undefined;
  }
  private readonly gemmCall: NonNullable<TensorBackend["gemm"]> = (...a) => this.addon.gemm!(...a);
  batchNorm: TensorBackend["batchNorm"] = (...a) => this.addon.batchNorm(...a);
  unary: TensorBackend["unary"] = (...a) => this.addon.unary(...a);
  get channelNorm(): TensorBackend["channelNorm"] {
    return typeof this.addon.channelNorm === "function" ? this.channelNormCall : undefined;
  }
  private readonly channelNormCall: NonNullable<TensorBackend["channelNorm"]> = (...a) => this.addon.channelNorm!(...a);
  get transposeLast2(): TensorBackend["transposeLast2"] {
    return typeof this.addon.transposeLast2 === "function" ? this.transposeLast2Call : undefined;
  }
  private readonly transposeLast2Call: NonNullable<TensorBackend["transposeLast2"]> = (...a) => this.addon.transposeLast2!(...a);
  // (an addon built before Mamba's kernels has neither: the executor runs them in JavaScript)
  get mambaConv(): TensorBackend["mambaConv"] {
    return typeof this.addon.mambaConv === "function" ? this.mambaConvCall : undefined;
  }
  private readonly mambaConvCall: NonNullable<TensorBackend["mambaConv"]> = (...a) => this.addon.mambaConv!(...a);
  get selectiveScan(): TensorBackend["selectiveScan"] {
    return typeof this.addon.selectiveScan === "function" ? this.selectiveScanCall : undefined;
  }
  private readonly selectiveScanCall: NonNullable<TensorBackend["selectiveScan"]> = (...a) => this.addon.selectiveScan!(...a);
  binary: TensorBackend["binary"] = (...a) => this.addon.binary(...a);
  pool3d: TensorBackend["pool3d"] = (...a) => this.addon.pool3d(...a);
  resize3d: TensorBackend["resize3d"] = (...a) => this.addon.resize3d(...a);
  softmax: TensorBackend["softmax"] = (...a) => this.addon.softmax(...a);
  accumulateWindow: NonNullable<TensorBackend["accumulateWindow"]> = (...a) => this.addon.accumulateWindow!(...a);
  /** (an addon built before it has none: segment() then divides in TypeScript) */
  get attentionRope(): boolean {
    return typeof this.addon.attention === "function" && this.addon.attentionRope === true;
  }
  get attention(): TensorBackend["attention"] {
    return typeof this.addon.attention === "function" ? this.attentionCall : undefined;
  }
  private readonly attentionCall: NonNullable<TensorBackend["attention"]> = (...a) => this.addon.attention!(...a);
  get softmaxDivided(): TensorBackend["softmaxDivided"] {
    return this.addon.softmaxDivided ? (...a) => this.addon.softmaxDivided!(...a) : undefined;
  }
  preciseConvolutions: NonNullable<TensorBackend["preciseConvolutions"]> = (on) => void this.addon.preciseConvolutions(on ? 1 : -1);
  argmax: TensorBackend["argmax"] = (...a) => this.addon.argmax(...a);
  concat: TensorBackend["concat"] = (...a) => this.addon.concat(...a);
  convWeightGrad: TensorBackend["convWeightGrad"] = (...a) => this.addon.convWeightGrad(...a);
  instanceNormBackward: NonNullable<TensorBackend["instanceNormBackward"]> = (...a) => this.addon.instanceNormBackward!(...a);
}
