/**
 * segment(): the path nnU-Net's predictor takes, from a head CT in Hounsfield units to labels in
 * the CT's own grid, as separate steps: normalise, reorder axes, resample to the model's spacing,
 * sliding-window inference with Gaussian weighting (and optional mirroring), resample the class
 * logits back one class at a time with a running argmax (nnU-Net v2's export), cleanup, report.
 */
import { activeBackend, releaseEngineArray } from "../backends/index.js";
import { Yielder } from "../backends/yield.js";
import { invalidParameterError, optionsObject } from "../is.js";
import {
  checkCleanupOptions,
  cleanup,
  componentStats,
  connectedComponents,
  type CleanupOptions,
  type Component,
} from "../ops/components.js";
import * as ops from "../ops/tensor.js";
import type { Tensor, Volume } from "../types.js";
import { allocArray, assertVolume } from "../volume.js";
import {
  channelNormalizations,
  checkInputChannels,
  MAX_PATCH_SIDE,
  MAX_PATCH_VOXELS,
  patchInBounds,
  type ModelConfig,
  type Normalization,
} from "./config.js";
import { Model } from "./model.js";
import { cropVolume, filledNonzeroMask, forEachBoxRun, forEachOutsideRun, nonzeroBox, uncropLabels, type Box } from "./crop.js";
import { DEFAULT_MAX_VOXELS, nnunetPath, resampleLabelsNnunet, resampleNnunet, roundHalfEven } from "./resample.js";
import { monaiImportanceMap, monaiSpacingSize, monaiWindowStarts, resampleMonai } from "./monai/grid.js";
import { moveAxes, reorient } from "../ops/orient.js";

/**
 * What segment() uses of a model: a Model from loadModel, or a model-like one (loadNnunet's). A
 * cascade's second stage names its first (`previousStage`): segment runs that first, on the same
 * CT, and gives the network its labels as one input channel per foreground class.
 */
export type SegmentModel = Pick<Model, "run" | "config" | "name" | "lastRun"> & { readonly previousStage?: SegmentModel };

export interface SegmentProgress {
  step: "preprocess" | "window" | "postprocess";
  done: number;
  total: number;
}

export interface SegmentOptions {
  /** Sliding-window patch [z, y, x]; default the model config's. */
  patchSize?: [number, number, number];
  /** Step as a fraction of the patch (default the config's, nnU-Net 0.5). */
  stepSize?: number;
  /**
   * Test-time mirroring: true for the axes the model's config allows (`mirrorAxes`, by default all
   * three), or the axes (0 z, 1 y, 2 x) to flip. Default false.
   */
  mirror?: boolean | number[];
  /**
   * Post-processing (cleanup's options), e.g. { minVolumeMl: 0.05 }; false: none. Default: the
   * model config's `postprocessing` (none when it has none).
   */
  cleanup?: CleanupOptions | false;
  onProgress?: (p: SegmentProgress) => void;
  /**
   * Cancels the run: checked before the work, between windows and (through Model.run) between
   * the model's nodes; the promise then rejects with the signal's reason. Default: none.
   */
  signal?: AbortSignal;
  /**
   * Largest grid (voxels) segment may allocate: the CT's, the grid resampled to the model's
   * spacing, and that grid padded to a patch are each checked against it, from the dims and
   * spacings alone, before anything is allocated (RangeError naming the grid). Default 2³⁰ (a
   * 4 GiB float grid: 70× a 512 × 512 × 60 CT; a spacing of 10⁻⁶ mm is refused, not attempted).
   */
  maxVoxels?: number;
}

export interface SegmentReport {
  model: string;
  backend: string;
  classes: Record<string, string>;
  /** Per class label value: voxels and mL in the CT's grid (after cleanup). */
  perClass: Record<string, { name: string; voxels: number; volumeMl: number }>;
  components: Component[];
  dims: [number, number, number];
  spacing: [number, number, number];
  /** The grid the model ran on ([z, y, x] voxels and mm, after reordering). */
  modelGrid: { dims: [number, number, number]; spacing: [number, number, number] };
  windows: number;
  forwards: number;
  /** Milliseconds per step. */
  timings: Record<string, number>;
  /** Largest live set of one forward (bytes) and the largest buffers segment itself held (bytes). */
  peakForwardBytes: number;
  peakSegmentBytes: number;
  /** The post-processing applied: the caller's `cleanup`, else the model's own; null when none. */
  postprocessing: CleanupOptions | null;
  /**
   * The box of the CT the model ran on where its config crops to the non-zero voxels (nnU-Net's
   * crop_to_nonzero) and that box is not the whole CT: first voxel and size, (x, y, z); else null.
   * An ensemble's: the box where any member ran on it (each member says whether it did).
   */
  cropped: Box | null;
  /** An ensemble's members (segment given several models): each one's grid, windows and forwards. */
  ensemble?: {
    model: string;
    cropped: Box | null;
    modelGrid: { dims: [number, number, number]; spacing: [number, number, number] };
    windows: number;
    forwards: number;
  }[];
}

const prod = (xs: readonly number[]) => xs.reduce((a, b) => a * b, 1);

/**
 * Intensity normalisation of the CT, into a new float32 array. `mask` (1 inside): where given, a
 * z-score takes its statistics from the voxels inside and changes only those.
 */
export function normalize(src: ArrayLike<number>, n: Normalization, mask?: Uint8Array): Float32Array {
  const out = allocArray("float32", src.length, "normalised image") as Float32Array;
  const len = src.length;
  switch (n.type) {
    case "window":
      for (let i = 0; i < len; i++) out[i] = (Math.min(Math.max(src[i]!, n.lower), n.upper) - n.center) / n.scale;
      break;
    case "ct":
      for (let i = 0; i < len; i++) out[i] = (Math.min(Math.max(src[i]!, n.lower), n.upper) - n.mean) / n.std;
      break;
    case "none":
      for (let i = 0; i < len; i++) out[i] = src[i]!;
      break;
    case "monaiZscore": {
      // NormalizeIntensity: mean and deviation (no Bessel's correction) of the voxels taken, 1 where it is 0
      const take = (v: number) => !n.nonzero || v !== 0;
      let sum = 0,
        count = 0;
      for (let i = 0; i < len; i++)
        if (take(src[i]!)) {
          sum += src[i]!;
          count++;
        }
      for (let i = 0; i < len; i++) out[i] = src[i]!;
      if (!count) break;
      const mean = Math.fround(sum / count);
      let ss = 0;
      for (let i = 0; i < len; i++) if (take(src[i]!)) ss += (src[i]! - mean) ** 2;
      const sd = Math.fround(Math.sqrt(ss / count)) || 1;
      for (let i = 0; i < len; i++) if (take(src[i]!)) out[i] = (src[i]! - mean) / sd;
      break;
    }
    case "minmax": {
      // ScaleIntensity (rescale_array): (x − min) / (max − min) · (maxv − minv) + minv; a constant image times minv
      let lo = Infinity,
        hi = -Infinity;
      for (let i = 0; i < len; i++) {
        const v = src[i]!;
        if (v < lo) lo = v;
        if (v > hi) hi = v;
      }
      if (lo === hi) for (let i = 0; i < len; i++) out[i] = src[i]! * n.min;
      else for (let i = 0; i < len; i++) out[i] = Math.fround((src[i]! - lo) / (hi - lo)) * (n.max - n.min) + n.min;
      break;
    }
    case "zscore":
    case "clipPercentile": {
      for (let i = 0; i < len; i++) out[i] = src[i]!;
      if (n.type === "clipPercentile") {
        const sorted = Float32Array.from(out).sort();
        const q = (p: number) => sorted[Math.min(len - 1, Math.max(0, Math.round((p / 100) * (len - 1))))]!;
        const lo = q(n.lowerPercentile),
          hi = q(n.upperPercentile);
        for (let i = 0; i < len; i++) out[i] = Math.min(Math.max(out[i]!, lo), hi);
      }
      if (mask) {
        let sum = 0,
          ss = 0,
          count = 0;
        for (let i = 0; i < len; i++)
          if (mask[i]) {
            sum += out[i]!;
            count++;
          }
        const mean = count ? sum / count : 0;
        for (let i = 0; i < len; i++) if (mask[i]) ss += (out[i]! - mean) ** 2;
        const sd = Math.max(Math.sqrt(count ? ss / count : 0), 1e-8);
        for (let i = 0; i < len; i++) if (mask[i]) out[i] = (out[i]! - mean) / sd;
        break;
      }
      let sum = 0,
        ss = 0;
      for (let i = 0; i < len; i++) sum += out[i]!;
      const mean = sum / len;
      for (let i = 0; i < len; i++) ss += (out[i]! - mean) ** 2;
      const sd = Math.max(Math.sqrt(ss / len), 1e-8);
      for (let i = 0; i < len; i++) out[i] = (out[i]! - mean) / sd;
      break;
    }
  }
  return out;
}

/** Permutes the axes of a (z, y, x) C-order array: out axis k is in axis perm[k]. */
export function transpose3<T extends Float32Array | Uint8Array>(
  data: T,
  shape: [number, number, number],
  perm: readonly number[],
): { data: T; shape: [number, number, number] } {
  if (perm[0] === 0 && perm[1] === 1 && perm[2] === 2) return { data, shape };
  const ns = perm.map((p) => shape[p]!) as [number, number, number];
  const st = [shape[1] * shape[2], shape[2], 1];
  const s0 = st[perm[0]!]!,
    s1 = st[perm[1]!]!,
    s2 = st[perm[2]!]!;
  const out = allocArray(data instanceof Uint8Array ? "uint8" : "float32", data.length, "transposed image") as T;
  let o = 0;
  for (let a = 0; a < ns[0]; a++)
    for (let b = 0; b < ns[1]; b++) for (let c = 0; c < ns[2]; c++) out[o++] = data[a * s0 + b * s1 + c * s2]!;
  return { data: out, shape: ns };
}

/** nnU-Net's sliding-window starts along one axis. */
export function windowStarts(length: number, patch: number, step: number): number[] {
  if (length <= patch) return [0];
  const n = Math.ceil((length - patch) / (patch * step)) + 1;
  const actual = (length - patch) / (n - 1);
  return Array.from({ length: n }, (_, i) => roundHalfEven(actual * i));
}

/** Gaussian importance map (σ = patch/8, peak 1, zeros replaced by the smallest value), as nnU-Net. */
export function gaussianMap(patch: [number, number, number]): Float32Array {
  const axes = patch.map((p) => {
    const c = Math.floor(p / 2),
      s = p / 8;
    return Float64Array.from({ length: p }, (_, i) => Math.exp(-((i - c) ** 2) / (2 * s * s)));
  });
  const out = new Float32Array(prod(patch));
  let i = 0,
    min = Infinity;
  for (let a = 0; a < patch[0]; a++)
    for (let b = 0; b < patch[1]; b++)
      for (let c = 0; c < patch[2]; c++) {
        const v = axes[0]![a]! * axes[1]![b]! * axes[2]![c]!;
        out[i++] = v;
        if (v > 0 && v < min) min = v;
      }
  for (let k = 0; k < out.length; k++) if (out[k] === 0) out[k] = min;
  return out;
}

/**
 * `t` mirrored along the spatial axes in `axes` (0 z, 1 y, 2 x) into `out` (same length, not
 * `t.data`); with `add`, added to what `out` holds. Into buffers the sliding window reuses: a
 * fresh 25 MB array per forward cost ~100 ms of first-touch page faults here.
 */
function flipInto(t: Tensor, axes: number[], out: Float32Array, add: boolean): void {
  const [N, C, D, H, W] = t.shape as [number, number, number, number, number];
  if (out.length !== t.data.length) throw new Error(`the model returned [${t.shape.join(", ")}], not the shape of its first run`);
  const fd = axes.includes(0),
    fh = axes.includes(1),
    fw = axes.includes(2);
  const src = t.data;
  let o = 0;
  for (let nc = 0; nc < N * C; nc++)
    for (let z = 0; z < D; z++)
      for (let y = 0; y < H; y++) {
        const s = ((nc * D + (fd ? D - 1 - z : z)) * H + (fh ? H - 1 - y : y)) * W;
        if (add) {
          if (fw) for (let x = W - 1; x >= 0; x--) out[o++]! += src[s + x]!;
          else for (let x = 0; x < W; x++) out[o++]! += src[s + x]!;
        } else if (fw) for (let x = W - 1; x >= 0; x--) out[o++] = src[s + x]!;
        else {
          out.set(src.subarray(s, s + W), o);
          o += W;
        }
      }
}

/**
 * The window of `patch` voxels whose first voxel is at `at` (z, y, x; may lie outside the image)
 * from the image x of `shape` into `out`, zeros outside the image; row by row as block copies.
 */
function extractWindow(
  x: Float32Array,
  shape: readonly number[],
  out: Float32Array,
  patch: readonly number[],
  at: readonly number[],
): void {
  const D = shape[0]!,
    H = shape[1]!,
    W = shape[2]!;
  const pd = patch[0]!,
    ph = patch[1]!,
    pw = patch[2]!;
  const z0 = at[0]!,
    y0 = at[1]!,
    x0 = at[2]!;
  const xa = Math.max(0, -x0),
    xb = Math.min(pw, W - x0);
  if (z0 < 0 || y0 < 0 || xa > 0 || z0 + pd > D || y0 + ph > H || xb < pw) out.fill(0);
  if (xb <= xa) return;
  for (let a = 0; a < pd; a++) {
    const zz = z0 + a;
    if (zz < 0 || zz >= D) continue;
    for (let b = 0; b < ph; b++) {
      const yy = y0 + b;
      if (yy < 0 || yy >= H) continue;
      const src = (zz * H + yy) * W + x0;
      out.set(x.subarray(src + xa, src + xb), (a * ph + b) * pw + xa);
    }
  }
}

/**
 * One window's share of the sliding-window sum: for each class k, acc[k] += logits[k] · gauss ·
 * scale over the window at `at` of the [C, …padded] grid, and weight += gauss there. A function
 * of its own, on typed arrays only, so that V8 compiles its loops once for these types (inline in
 * the async loop they cost ~100 ms a 16×256×256 window here).
 */
function accumulateWindow(
  acc: Float32Array,
  weight: Float32Array,
  logits: Float32Array,
  gauss: Float32Array,
  C: number,
  padded: readonly number[],
  patch: readonly number[],
  at: readonly number[],
  scale: number,
): void {
  const PD = padded[0]!,
    PH = padded[1]!,
    PW = padded[2]!;
  const pd = patch[0]!,
    ph = patch[1]!,
    pw = patch[2]!;
  const vol = PD * PH * PW,
    pv = pd * ph * pw;
  for (let a = 0; a < pd; a++)
    for (let b = 0; b < ph; b++) {
      const dst = ((at[0]! + a) * PH + (at[1]! + b)) * PW + at[2]!,
        srcp = (a * ph + b) * pw;
      for (let c = 0; c < pw; c++) weight[dst + c]! += gauss[srcp + c]!;
      for (let k = 0; k < C; k++) {
        const ao = k * vol + dst,
          lo = k * pv + srcp;
        for (let c = 0; c < pw; c++) acc[ao + c]! += logits[lo + c]! * gauss[srcp + c]! * scale;
      }
    }
}

/** One segment() call's bookkeeping, shared by its steps: timings, bytes held, progress, cancelling. */
class SegmentRun {
  readonly timings: Record<string, number> = {};
  readonly yielder = new Yielder(); // the TypeScript loops let the event loop in every ~15 ms
  private t = performance.now();
  held = 0;
  peakHeld = 0;
  /** An ensemble's progress: the windows of the members before this one, and all members' windows. */
  windowBase = 0;
  windowTotal: number | undefined;
  /** A cascade's first-stage labels were handed to withPreviousStage (which releases them). */
  previousTaken = false;
  constructor(
    readonly progress: (p: SegmentProgress) => void,
    readonly signal: AbortSignal | undefined,
  ) {}
  /** Books the time since the last lap to step `name`. */
  lap(name: string) {
    const now = performance.now();
    this.timings[name] = (this.timings[name] ?? 0) + (now - this.t);
    this.t = now;
  }
  hold(bytes: number) {
    this.held += bytes;
    this.peakHeld = Math.max(this.peakHeld, this.held);
  }
}

/** The run's grids, derived from the CT, the model's config and the settings. */
interface SegmentPlan {
  cfg: ModelConfig;
  patch: [number, number, number];
  step: number;
  mirrorAxes: number[];
  maxVoxels: number;
  /** The CT's (z, y, x) shape, the axis order the model runs in, and the grids derived from them. */
  zyx: [number, number, number];
  perm: readonly number[];
  /** Spacing in the model's axis order: the CT's, and the one the model runs at. */
  gridSpacing: [number, number, number];
  target: [number, number, number];
  /** The CT on the model's spacing, and that grid padded to at least one patch. */
  modelShape: [number, number, number];
  padded: [number, number, number];
}

/** The options, checked (TypeError naming the option), with the model config's defaults filled in. */
interface Settings {
  patch: [number, number, number];
  step: number;
  mirrorAxes: number[];
  maxVoxels: number;
  signal: AbortSignal | undefined;
  onProgress: (p: SegmentProgress) => void;
  cleanup: CleanupOptions | false | undefined;
  /**
   * The report's bleeds: 26-connected, or as the caller's `cleanup` says (a model's own
   * post-processing, such as nnU-Net v1's 6-connected one, does not change how bleeds are counted).
   */
  reportConnectivity: 6 | 18 | 26;
}

function checkOptions(ct: Volume, model: SegmentModel, options: SegmentOptions | undefined): Settings {
  assertVolume("ct", ct);
  if (typeof (model as Model)?.run !== "function") throw invalidParameterError("model", "a Model from loadModel or loadNnunet", model);
  const opts = optionsObject("options", options) as SegmentOptions;
  const cfg: ModelConfig = model.config;
  if (cfg.orientation !== undefined && model.previousStage)
    throw invalidParameterError("model.config.orientation", "no reorientation in a cascade's second stage", cfg.orientation);
  const twoD = cfg.spatialDims === 2;
  // a 2-D model's patch is one slice: [y, x] or [1, y, x]
  let patch = (opts.patchSize ?? cfg.patchSize) as number[];
  if (twoD && Array.isArray(patch) && patch.length === 2) patch = [1, ...patch];
  // (the config's patch is checked when it is made, but a model's config may be replaced after load)
  const patchWhat = opts.patchSize ? "options.patchSize" : "model.config.patchSize";
  if (
    !Array.isArray(patch) ||
    patch.length !== 3 ||
    !patch.every((p) => typeof p === "number" && p >= 1) ||
    !patchInBounds(patch.map(Math.round)) ||
    (twoD && patch[0] !== 1)
  )
    throw invalidParameterError(
      patchWhat,
      `${twoD ? "[y, x] (or [1, y, x])" : "[z, y, x]"} of sizes from 1 to ${MAX_PATCH_SIDE}, at most ${MAX_PATCH_VOXELS} voxels in all${twoD ? " for this 2-D model" : ""}`,
      opts.patchSize ?? cfg.patchSize,
    );
  patch = patch.map(Math.round);
  // a graph built for one input size (a static ONNX export, a MONAI transformer) runs that window only
  const declared = (model as Partial<Model>).inputs?.[0]?.shape.slice(2);
  const windowSize = twoD ? patch.slice(1) : patch;
  if (declared?.length === windowSize.length && declared.every((d) => typeof d === "number") && declared.join() !== windowSize.join())
    throw invalidParameterError(
      opts.patchSize ? "options.patchSize" : "model.config.patchSize",
      `the model's fixed input size [${declared.join(", ")}] (its graph runs that size only)`,
      opts.patchSize ?? cfg.patchSize,
    );
  // the channels preprocessing makes (one per normalisation, a cascade's previous stage's after them)
  // against the model's declared input channels
  // (a model's config may be replaced after load: checked again, before any allocation)
  checkInputChannels(cfg);
  const declaredC = (model as Partial<Model>).inputs?.[0]?.shape[1];
  const nNorm = channelNormalizations(cfg).length;
  const span = 2 * (cfg.contextSlices ?? 0) + 1;
  // (a cascade's second stage also takes the first stage's labels as channels: its run checks those)
  if (typeof declaredC === "number" && cfg.previousStage === undefined && !model.previousStage && declaredC !== nNorm * span)
    throw invalidParameterError(
      span > 1 ? "model.config.contextSlices" : "model.config.normalization",
      span > 1
        ? `normalisations × (2 · contextSlices + 1) slices to make the ${declaredC} input channels the model takes (${nNorm} × ${span} = ${nNorm * span})`
        : declaredC > 1
          ? `a list of ${declaredC} normalisations, one per input channel the model takes (each channel the one CT normalised its way: a model of other images beside the CT, e.g. PET, cannot run on a CT alone)`
          : "one normalisation (the model takes one input channel)",
      span > 1 ? cfg.contextSlices : cfg.normalization,
    );
  const step = opts.stepSize ?? cfg.stepSize;
  if (!(step > 0 && step <= 1)) throw invalidParameterError("options.stepSize", "a number in (0, 1]", step);
  const mirrorAxes = opts.mirror === true ? cfg.mirrorAxes : Array.isArray(opts.mirror) ? opts.mirror : [];
  if (!mirrorAxes.every((a) => a === 0 || a === 1 || a === 2) || (twoD && mirrorAxes.includes(0)))
    throw invalidParameterError(
      "options.mirror",
      `true, false or axes among ${twoD ? "1, 2 (a 2-D model's y and x)" : "0, 1, 2"}`,
      opts.mirror,
    );
  const signal = opts.signal;
  if (signal !== undefined && !(signal instanceof AbortSignal)) throw invalidParameterError("options.signal", "an AbortSignal", signal);
  // the model's own post-processing unless the caller gives one (false: none); checked before any work
  const cleanupOptions = opts.cleanup === undefined ? cfg.postprocessing : opts.cleanup;
  if (cleanupOptions !== false && cleanupOptions !== undefined)
    checkCleanupOptions(cleanupOptions, opts.cleanup === undefined ? "model.config.postprocessing" : "options.cleanup");
  const maxVoxels = opts.maxVoxels ?? 2 ** 30;
  if (!(typeof maxVoxels === "number" && maxVoxels >= 1)) throw invalidParameterError("options.maxVoxels", "a number >= 1", opts.maxVoxels);
  return {
    patch: patch as [number, number, number],
    step,
    mirrorAxes,
    maxVoxels,
    signal,
    onProgress: typeof opts.onProgress === "function" ? opts.onProgress : () => {},
    cleanup: cleanupOptions,
    reportConnectivity: (opts.cleanup && opts.cleanup.connectivity) || 26,
  };
}

/** The lengths of an affine's voxel axes (its columns), [x, y, z]; the volume's spacing where one has none. */
function affineSpacing(a: readonly number[], fallback: readonly [number, number, number]): [number, number, number] {
  const s = [0, 1, 2].map((c) => Math.hypot(a[c]!, a[4 + c]!, a[8 + c]!));
  return s.every((v) => v > 0 && Number.isFinite(v)) ? (s as [number, number, number]) : [...fallback];
}

/** The grids the run will allocate, from the dims and spacings alone (RangeError past maxVoxels before any allocation). */
function plan(ct: Volume, cfg: ModelConfig, { patch, step, mirrorAxes, maxVoxels }: Settings): SegmentPlan {
  const [nx, ny, nz] = ct.dims;
  const zyx: [number, number, number] = [nz, ny, nx];
  // (MONAI's Spacing takes the spacing from the affine's columns, affine_to_spacing: not pixdim)
  const sp = cfg.resampling.type === "monai" ? affineSpacing(ct.affine, ct.spacing) : ct.spacing;
  const spacingZyx: [number, number, number] = [sp[2], sp[1], sp[0]];
  // Every grid this run allocates, from dims and spacings alone, checked before any allocation.
  const perm = cfg.transposeForward;
  const gridSpacing = perm.map((p) => spacingZyx[p]!) as [number, number, number];
  // (a 2-D model's [y, x] spacing is its grid's axes 1 and 2: the slices keep theirs, as nnU-Net's 2d)
  const ts = cfg.targetSpacing;
  const target = !ts
    ? gridSpacing
    : ts.length === 2
      ? ([gridSpacing[0], ts[0], ts[1]] as [number, number, number])
      : (perm.map((p) => ts[p]!) as [number, number, number]);
  // nnU-Net's compute_new_shape: round(old spacing / new spacing · old shape), halves to even as
  // Python's round (Math.round would make 12.5 voxels 13 where nnU-Net makes them 12)
  const modelShape = perm.map((p, i) =>
    cfg.resampling.type === "monai"
      ? monaiSpacingSize(zyx[p]!, gridSpacing[i]!, target[i]!)
      : Math.max(1, roundHalfEven((gridSpacing[i]! / target[i]!) * zyx[p]!)),
  ) as [number, number, number];
  const padded = modelShape.map((d, i) => Math.max(d, patch[i]!)) as [number, number, number];
  for (const [what, shape] of [
    ["the CT", zyx],
    ["the CT resampled to the model's spacing", modelShape],
    ["the resampled CT padded to a patch", padded],
  ] as const) {
    if (prod(shape) > maxVoxels) {
      throw new RangeError(`${what} would be ${shape.join(" × ")} = ${prod(shape)} voxels, more than options.maxVoxels (${maxVoxels})`);
    }
  }
  // nnU-Net's resampling can pass through a grid larger than either end (its slices resampled
  // in-plane before across them, with a clip between): that too, both ways
  const rs = cfg.resampling;
  if (rs.type === "nnunet") {
    const grid = perm.map((q) => zyx[q]!) as [number, number, number];
    for (const [what, peak] of [
      ["resampling the CT to the model's spacing", nnunetPath(grid, modelShape, gridSpacing, target, rs.data).peak],
      ["resampling the logits back", nnunetPath(modelShape, grid, ...exportSpacings(cfg, target, gridSpacing), rs.probabilities).peak],
    ] as const)
      if (peak > maxVoxels)
        throw new RangeError(`${what} would pass through a grid of ${peak} voxels, more than options.maxVoxels (${maxVoxels})`);
  }
  return { cfg, patch, step, mirrorAxes, maxVoxels, zyx, perm, gridSpacing, target, modelShape, padded };
}

/**
 * The spacings the export's resampling decides its separate axis by, the one it checks first
 * first: nnU-Net v2 the model's grid's (resample_data_or_seg_to_shape's current spacing); v1's
 * export (save_segmentation_nifti_from_softmax, which the probability aggregate stands for) the
 * CT's. They differ only where both are anisotropic along different axes.
 */
function exportSpacings(cfg: ModelConfig, model: [number, number, number], ct: [number, number, number]): [number[], number[]] {
  return cfg.aggregate === "probabilities" ? [ct, model] : [model, ct];
}

/**
 * MONAI's SpatialResample leaves a volume as it is only where the grid keeps its size and the
 * affines agree (allclose, atol 1e-3 mm) or the voxel map is the identity (within 1e-3): a pixdim a
 * hair from the CT's spacing is still resampled, as MONAI does.
 */
function monaiResamples(p: SegmentPlan): boolean {
  const close = (a: number, b: number, atol: number) => Math.abs(a - b) <= atol + 1e-5 * Math.abs(b);
  const affinesAgree = p.target.every((t, i) => close(t, p.gridSpacing[i]!, 1e-3));
  const identityMap = p.target.every((t, i) => close(t / p.gridSpacing[i]!, 1, 1e-3));
  return !(affinesAgree || identityMap);
}

/** The largest grid a resampling step may pass through: the caller's bound, and the resampler's own past it. */
const cap = (p: SegmentPlan) => Math.min(p.maxVoxels, DEFAULT_MAX_VOXELS);

/**
 * Preprocessing (nnU-Net's DefaultPreprocessor): normalise on the CT's grid, reorder the axes,
 * resample to the model's spacing. Returns the image on the model grid and the reordered CT grid.
 */
async function preprocess(
  ct: Volume,
  p: SegmentPlan,
  run: SegmentRun,
  previous?: { labels: Uint8Array; zyx: [number, number, number] },
): Promise<{ x: Tensor; gridShape: [number, number, number]; resampled: boolean }> {
  // one normalisation per input channel: the CT normalised each way, stacked (several CT windows)
  const norms = channelNormalizations(p.cfg);
  // nnU-Net v1 (normalizeAfterResampling): NaN to 0, resample, then normalise on the model's grid
  const late = p.cfg.normalizeAfterResampling;
  let gridShape: [number, number, number] = [0, 0, 0];
  let resampled = false;
  // (a z-score's non-zero region, once for every channel that asks for it)
  let mask: Uint8Array | undefined;
  /** The CT (normalised, unless late) reordered and on the model's grid. */
  const toModelGrid = async (norm: Normalization | null): Promise<Float32Array> => {
    if (norm?.type === "zscore" && norm.nonzeroMask) mask ??= await filledNonzeroMask(ct);
    let img = norm ? normalize(ct.data, norm, norm.type === "zscore" && norm.nonzeroMask ? mask : undefined) : noNaN(ct.data);
    run.hold(img.byteLength);
    if (norm) run.lap("normalize");
    const tr = transpose3(img, p.zyx, p.perm);
    if (tr.data !== img) {
      run.hold(tr.data.byteLength);
      run.held -= img.byteLength;
      releaseEngineArray(img); // (each copy here is this call's own: back to the engine for the next)
    }
    img = tr.data;
    gridShape = tr.shape;
    run.lap("reorder");
    resampled = p.modelShape.some((d, i) => d !== gridShape[i]) || (p.cfg.resampling.type === "monai" && monaiResamples(p));
    if (!resampled) {
      run.lap("resample");
      return img;
    }
    const rs = p.cfg.resampling;
    let data: Float32Array;
    if (rs.type === "nnunet")
      data = await resampleNnunet(img, gridShape, p.modelShape, p.gridSpacing, p.target, rs.data, () => run.yielder.maybe(), cap(p));
    else if (rs.type === "monai") {
      const ratio = p.target.map((t, i) => t / p.gridSpacing[i]!) as [number, number, number];
      data = resampleMonai(img, gridShape, p.modelShape, ratio, rs.image);
    } else
      data = (
        await ops.resize(
          { data: img, shape: [1, 1, ...gridShape] },
          { sizes: p.modelShape, mode: "linear", coordinateTransformationMode: "half_pixel" },
        )
      ).data as Float32Array;
    run.hold(data.byteLength);
    run.held -= img.byteLength;
    releaseEngineArray(img);
    run.lap("resample");
    return data;
  };
  let channels: Float32Array[];
  if (late) {
    const raw = await toModelGrid(null);
    channels = norms.map((n) => normalize(raw, n));
    for (const c of channels) run.hold(c.byteLength);
    run.held -= raw.byteLength;
    releaseEngineArray(raw);
    run.lap("normalize");
  } else {
    channels = [];
    for (const n of norms) channels.push(await toModelGrid(n));
    if (mask) releaseEngineArray(mask);
  }
  let x: Tensor;
  if (channels.length === 1) x = { data: channels[0]!, shape: [1, 1, ...p.modelShape] };
  else {
    const m = channels[0]!.length;
    const data = allocArray("float32", channels.length * m, "the channels' image") as Float32Array;
    run.hold(data.byteLength);
    channels.forEach((c, i) => {
      data.set(c, i * m);
      run.held -= c.byteLength;
      releaseEngineArray(c);
    });
    x = { data, shape: [1, channels.length, ...p.modelShape] };
  }
  if (previous) x = await withPreviousStage(x, previous.labels, previous.zyx, p, run);
  return { x, gridShape, resampled };
}

/**
 * A cascade's input (nnU-Net's DefaultPreprocessor with the previous stage's segmentation, then
 * convert_labelmap_to_one_hot): the previous stage's labels on the CT's grid (`labels`, cropped as
 * the CT was), reordered, resampled to the model's grid as nnU-Net resamples a segmentation
 * (resampling_fn_seg), and appended to the image as one 0/1 channel per foreground class.
 */
async function withPreviousStage(
  x: Tensor,
  labels: Uint8Array,
  zyx: [number, number, number],
  p: SegmentPlan,
  run: SegmentRun,
): Promise<Tensor> {
  // (the labels' grid: the CT's crop, as the image's — or, nnU-Net v1's, the whole CT)
  run.previousTaken = true;
  const tr = transpose3(labels, zyx, p.perm);
  const gridShape = tr.shape;
  const rs = p.cfg.resampling;
  const step = (rs.type === "nnunet" ? rs.seg : undefined) ?? { order: 1, orderZ: 0, forceSeparateZ: null, anisotropyThreshold: 3 };
  let onGrid: Uint8Array;
  try {
    // (the caller's bound on the grids, and its signal between the labels)
    const between = () => {
      run.signal?.throwIfAborted();
      return run.yielder.maybe();
    };
    onGrid = await resampleLabelsNnunet(tr.data, gridShape, p.modelShape, p.gridSpacing, p.target, step, between, cap(p));
  } finally {
    if (tr.data !== labels) releaseEngineArray(tr.data);
    releaseEngineArray(labels);
  }
  const foreground = Object.keys(p.cfg.classes)
    .map(Number)
    .filter((k) => k > 0)
    .sort((a, b) => a - b);
  const m = onGrid.length;
  const c0 = x.shape[1]!;
  const out = allocArray("float32", (c0 + foreground.length) * m, "cascade input") as Float32Array;
  out.set(x.data);
  foreground.forEach((k, j) => {
    const base = (c0 + j) * m;
    for (let i = 0; i < m; i++) if (onGrid[i] === k) out[base + i] = 1;
  });
  run.hold(out.byteLength);
  run.held -= x.data.byteLength;
  releaseEngineArray(x.data);
  run.lap("previous stage");
  return { data: out, shape: [1, c0 + foreground.length, ...p.modelShape] };
}

/** The CT as float32 with NaN as 0 (nnU-Net v1's resample_and_normalize, before it resamples). */
function noNaN(src: ArrayLike<number>): Float32Array {
  const out = allocArray("float32", src.length, "image", { overwritten: true }) as Float32Array;
  for (let i = 0; i < src.length; i++) {
    const v = src[i]!;
    out[i] = v === v ? v : 0;
  }
  return out;
}

/**
 * The windows' starts along each axis of the padded model grid. A 2-D model: every slice once
 * (nnU-Net's 2-D predictor; overlapping one-slice windows would only repeat it), each given to the
 * network as [1, 1, y, x] and its logits read as one slice.
 */
function windowStartsOf(p: SegmentPlan): number[][] {
  const w = p.cfg.slidingWindow;
  const starts = p.padded.map((L, i) => (w ? monaiWindowStarts(L, p.patch[i]!, w.overlap[i]!) : windowStarts(L, p.patch[i]!, p.step)));
  if (p.cfg.spatialDims === 2) starts[0] = Array.from({ length: p.padded[0] }, (_, z) => z);
  return starts;
}

/**
 * Sliding-window prediction (nnU-Net's predict_sliding_window_return_logits): windows over the
 * model grid padded to at least one patch, each forward (and its mirrored forwards) weighted by the
 * Gaussian map, then the padding cropped, the weights divided out and a softmax over the classes.
 * Returns the class probabilities (or, without `softmax`, the averaged logits) on the model grid,
 * class-major.
 */
async function predictSlidingWindow(
  x: Tensor,
  model: SegmentModel,
  p: SegmentPlan,
  run: SegmentRun,
  softmax = true,
): Promise<{ probs: Float32Array; classes: number; windows: number; forwards: number; peakForward: number }> {
  const { patch, padded, modelShape } = p;
  // (averaged probabilities need no softmax after)
  const probabilities = p.cfg.aggregate === "probabilities";
  // (a region-based model's logits stay logits: the export thresholds each region's sigmoid)
  if (probabilities || p.cfg.regions) softmax = false;
  const signal = run.signal;
  const lead = padded.map((q, i) => Math.floor((q - modelShape[i]!) / 2));
  const starts = windowStartsOf(p);
  const twoD = p.cfg.spatialDims === 2;
  const netShape = (s: readonly number[]) => (twoD ? [s[0]!, s[1]!, ...s.slice(3)] : [...s]);
  const total = starts[0]!.length * starts[1]!.length * starts[2]!.length;
  const sw = p.cfg.slidingWindow;
  const gauss = sw ? monaiImportanceMap(patch, sw.mode, sw.sigmaScale) : gaussianMap(patch);
  let C = 0;
  let acc: Float32Array | undefined;
  const weight = allocArray("float32", prod(padded), "window weights") as Float32Array;
  run.hold(weight.byteLength);
  const [, PH, PW] = padded,
    [pd, ph, pw] = patch;
  // (a cascade's input has its previous stage's channels after the image's; a 2.5-D model's window
  // takes each channel's slice with its k neighbours either side, gathered here, window by window)
  const sourceChannels = x.shape[1]!;
  const k = twoD ? (p.cfg.contextSlices ?? 0) : 0,
    span = 2 * k + 1;
  const replicate = p.cfg.contextEdge !== "zero",
    channelMajor = p.cfg.contextLayout === "channel-major";
  const channels = sourceChannels * span;
  const pvol = prod(patch),
    mvolIn = prod(modelShape);
  const patchT: Tensor = { data: new Float32Array(channels * pvol), shape: [1, channels, ...patch] };
  let done = 0,
    forwards = 0,
    peakForward = 0;
  let flippedIn: Float32Array | undefined, summed: Float32Array | undefined;
  const flips = [[]] as number[][];
  for (const a of p.mirrorAxes) for (const f of [...flips]) flips.push([...f, a]);
  for (const z0 of starts[0]!)
    for (const y0 of starts[1]!)
      for (const x0 of starts[2]!) {
        signal?.throwIfAborted();
        for (let c = 0; c < sourceChannels; c++)
          for (let s = 0; s < span; s++) {
            const slot = k === 0 ? c : channelMajor ? c * span + s : s * sourceChannels + c;
            // (past the first or last slice: the edge slice again, or extractWindow's zeros)
            let z = z0 - lead[0]! + s - k;
            if (k && replicate) z = Math.min(Math.max(z, 0), modelShape[0]! - 1);
            extractWindow(
              x.data.subarray(c * mvolIn, (c + 1) * mvolIn),
              modelShape,
              patchT.data.subarray(slot * pvol, (slot + 1) * pvol),
              patch,
              [z, y0 - lead[1]!, x0 - lead[2]!],
            );
          }
        // one forward: its output, which the caller owns, is used as it is; mirrored ones are
        // summed, unmirrored, into a buffer kept for the whole call
        let logits: Tensor | undefined;
        for (const [i, f] of flips.entries()) {
          let input = patchT;
          if (f.length) {
            if (!flippedIn) run.hold((flippedIn = allocArray("float32", patchT.data.length, "mirrored patch") as Float32Array).byteLength);
            flipInto(patchT, f, flippedIn, false);
            input = { data: flippedIn, shape: patchT.shape };
          }
          const out = await model.run({ data: input.data, shape: netShape(input.shape) }, signal ? { signal } : undefined);
          // (a 2-D model's [1, C, y, x] seen as one slice of the grid)
          let y =
            twoD && out.shape.length === 4 ? { data: out.data, shape: [out.shape[0]!, out.shape[1]!, 1, ...out.shape.slice(2)] } : out;
          if (probabilities && y.shape.length === 5) {
            // nnU-Net v1: each forward's softmax is what the mirrors and windows average (a model
            // that hands back its input gets a copy: the patch is read again for the next mirror)
            if (y.data === input.data) y = { data: Float32Array.from(y.data), shape: y.shape };
            const c = y.shape[1]!;
            await activeBackend().softmax(y.data, 1, c, y.data.length / c, y.data);
          }
          forwards++;
          peakForward = Math.max(peakForward, model.lastRun?.peakBytes ?? 0);
          if (flips.length === 1 && y.data !== patchT.data) logits = y;
          else {
            if (!summed) run.hold((summed = allocArray("float32", y.data.length, "mirrored logits") as Float32Array).byteLength);
            flipInto(y, f, summed, i > 0);
            logits = { data: summed, shape: y.shape };
            if (model instanceof Model && y.data !== patchT.data && y.data !== flippedIn) model.recycle(y.data);
          }
        }
        if (logits!.shape.length !== 5 || logits!.shape[2] !== pd || logits!.shape[3] !== ph || logits!.shape[4] !== pw) {
          throw new Error(
            `the model returned shape [${netShape(logits!.shape).join(", ")}] for a patch of [${netShape([1, 1, ...patch]).join(", ")}]`,
          );
        }
        if (!acc) {
          C = logits!.shape[1]!;
          // labels are bytes and name the config's classes: a model of 300 channels wrapped label
          // 299 to 43, one of 5 channels under a 2-class config gave labels the report never counted
          const named = Math.max(
            0,
            ...Object.keys(p.cfg.classes)
              .filter((key) => /^\d{1,3}$/.test(key))
              .map(Number),
          );
          if (p.cfg.regions ? C !== p.cfg.regions.length : C > 256 || C - 1 > named)
            throw new Error(
              p.cfg.regions
                ? `the model gives ${C} channels for ${p.cfg.regions.length} regions`
                : `the model gives ${C} channels (labels 0–${C - 1}) but its config names classes up to ${named}${C > 256 ? " (and labels are 0–255)" : ""}`,
            );
          acc = allocArray("float32", C * prod(padded), "aggregated logits") as Float32Array;
          run.hold(acc.byteLength);
        }
        const be = activeBackend();
        if (be.accumulateWindow)
          await be.accumulateWindow(acc, weight, logits!.data, gauss, C, padded, patch, [z0, y0, x0], 1 / flips.length);
        else accumulateWindow(acc, weight, logits!.data, gauss, C, padded, patch, [z0, y0, x0], 1 / flips.length);
        if (model instanceof Model && logits!.data !== summed && logits!.data !== patchT.data) model.recycle(logits!.data);
        run.progress({ step: "window", done: run.windowBase + ++done, total: run.windowTotal ?? total });
        await run.yielder.maybe();
      }
  run.lap("inference");

  // crop the padding, average, softmax over classes (where nothing is cropped, the backend may
  // divide by the weights within its softmax: one pass over the sums instead of a TypeScript one);
  // without `softmax`, the averaged logits (for an export that resamples them, as nnU-Net v2's)
  const mvol = prod(modelShape);
  let probs = acc!;
  const cropped = padded.some((q, i) => q !== modelShape[i]);
  const backend = activeBackend();
  if (!cropped && backend.softmaxDivided && softmax) {
    await backend.softmaxDivided(probs, weight, 1, C, mvol, probs);
    run.held -= weight.byteLength;
    releaseEngineArray(weight);
    run.lap("softmax");
    return { probs, classes: C, windows: total, forwards, peakForward };
  }
  if (cropped) {
    probs = allocArray("float32", C * mvol, "logits") as Float32Array;
    run.hold(probs.byteLength);
  }
  const vol = prod(padded);
  for (let k = 0; k < C; k++)
    for (let z = 0; z < modelShape[0]; z++) {
      await run.yielder.maybe();
      for (let y = 0; y < modelShape[1]; y++) {
        const src = ((z + lead[0]!) * PH + (y + lead[1]!)) * PW + lead[2]!,
          dst = (z * modelShape[1] + y) * modelShape[2];
        for (let xx = 0; xx < modelShape[2]; xx++) probs[k * mvol + dst + xx] = acc![k * vol + src + xx]! / weight[src + xx]!;
      }
    }
  if (probs !== acc) {
    run.held -= acc!.byteLength;
    releaseEngineArray(acc!);
  }
  run.held -= weight.byteLength;
  releaseEngineArray(weight);
  if (softmax) await activeBackend().softmax(probs, 1, C, mvol, probs);
  run.lap("softmax");
  return { probs, classes: C, windows: total, forwards, peakForward };
}

/**
 * predictSlidingWindow, or — MONAI's CropForegroundd (config cropForeground) — on the bounding box
 * of the model grid's voxels above 0 (generate_spatial_bounding_box: any channel, margin 0), its
 * values put back into the grid with 0 outside, as Invertd pads them.
 */
async function predictForeground(
  x: Tensor,
  model: SegmentModel,
  p: SegmentPlan,
  run: SegmentRun,
  softmax: boolean,
): Promise<Awaited<ReturnType<typeof predictSlidingWindow>>> {
  if (!p.cfg.cropForeground) return predictSlidingWindow(x, model, p, run, softmax);
  const [D, H, W] = p.modelShape;
  const vol = D * H * W,
    ch = x.shape[1]!;
  const lo = [D, H, W],
    hi = [-1, -1, -1];
  for (let c = 0; c < ch; c++)
    for (let z = 0, i = c * vol; z < D; z++)
      for (let y = 0; y < H; y++)
        for (let xx = 0; xx < W; xx++, i++)
          if (x.data[i]! > 0) {
            if (z < lo[0]!) lo[0] = z;
            if (z > hi[0]!) hi[0] = z;
            if (y < lo[1]!) lo[1] = y;
            if (y > hi[1]!) hi[1] = y;
            if (xx < lo[2]!) lo[2] = xx;
            if (xx > hi[2]!) hi[2] = xx;
          }
  // (no foreground: the whole grid, where MONAI's empty box would leave nothing to run)
  if (hi[0]! < 0 || (lo.every((v) => v === 0) && hi[0] === D - 1 && hi[1] === H - 1 && hi[2] === W - 1))
    return predictSlidingWindow(x, model, p, run, softmax);
  const box = lo.map((v, i) => hi[i]! - v + 1) as [number, number, number];
  const bvol = box[0] * box[1] * box[2];
  const crop = allocArray("float32", ch * bvol, "foreground", { overwritten: true }) as Float32Array;
  for (let c = 0, o = 0; c < ch; c++)
    for (let z = 0; z < box[0]; z++)
      for (let y = 0; y < box[1]; y++) {
        const s0 = c * vol + ((z + lo[0]!) * H + y + lo[1]!) * W + lo[2]!;
        crop.set(x.data.subarray(s0, s0 + box[2]), o);
        o += box[2];
      }
  const sub: SegmentPlan = { ...p, modelShape: box, padded: box.map((d, i) => Math.max(d, p.patch[i]!)) as [number, number, number] };
  let r: Awaited<ReturnType<typeof predictSlidingWindow>>;
  try {
    r = await predictSlidingWindow({ data: crop, shape: [1, ch, ...box] }, model, sub, run, softmax);
  } finally {
    releaseEngineArray(crop);
  }
  const C = r.classes;
  const full = allocArray("float32", C * vol, "probabilities") as Float32Array;
  for (let k = 0, o = 0; k < C; k++)
    for (let z = 0; z < box[0]; z++)
      for (let y = 0; y < box[1]; y++) {
        const d0 = k * vol + ((z + lo[0]!) * H + y + lo[1]!) * W + lo[2]!;
        full.set(r.probs.subarray(o, o + box[2]), d0);
        o += box[2];
      }
  releaseEngineArray(r.probs);
  return { ...r, probs: full };
}

/**
 * Whether the export resamples or reorders (the model grid is not the CT's): then it takes logits
 * (or, aggregating probabilities, the probabilities, which it resamples as nnU-Net v1).
 */
const exportMoves = (p: SegmentPlan, pre: { resampled: boolean }) => pre.resampled || p.perm.some((q, i) => q !== i);

/** Whether the export resamples logits (else probabilities: the softmax comes first). */
const exportsLogits = (cfg: ModelConfig) => (cfg.exportValues ?? cfg.aggregate) === "logits";

/**
 * Export (nnU-Net's convert_predicted_logits_to_segmentation_with_correct_shape): the class logits
 * (probabilities where nothing moves: the same argmax) back to the CT's grid and axis order, one
 * class at a time with a running argmax, so that only one class is ever resampled at once.
 */
async function exportToCtGrid(
  probs: Float32Array,
  C: number,
  ct: Volume,
  p: SegmentPlan,
  pre: { gridShape: [number, number, number]; resampled: boolean },
  run: SegmentRun,
): Promise<Uint8Array> {
  const { modelShape, perm } = p;
  const { resampled } = pre;
  const mvol = prod(modelShape);
  const n = ct.data.length;
  // the labels (the caller's) and the scratch below in engine memory where the addon is loaded:
  // fresh JavaScript arrays of a 512×512×40 CT's 10 M voxels (labels 10 MB, scratch 42 MB) had cost
  // 0.1–0.2 s of page faults in these VMs
  const labels = allocArray("uint8", n, "labels") as Uint8Array;
  const regions = p.cfg.regions;
  if (regions) {
    // nnU-Net's convert_probabilities_to_segmentation for regions: each region's logits on the CT's
    // grid, its sigmoid above 0.5 (float32, as torch's) sets its value, a later region over an earlier
    if (C !== regions.length) throw new Error(`the model gives ${C} channels for ${regions.length} regions`);
    await forEachClassOnCtGrid(probs, C, p, pre, run, (k, back, lo, hi) => {
      const value = regions[k]!;
      for (let i = lo; i < hi; i++) if (sigmoid32(back[i]!) > 0.5) labels[i] = value;
    });
  } else if (!resampled && perm.every((q, i) => q === i)) {
    const lab = allocArray("int32", mvol, "argmax", { overwritten: true }) as Int32Array;
    await activeBackend().argmax(probs, 1, C, mvol, lab);
    labels.set(lab); // (class indices < C ≤ 255)
    releaseEngineArray(lab);
  } else {
    // (the values are logits here: any real number)
    const best = (allocArray("float32", n, "running maximum", { overwritten: true }) as Float32Array).fill(-Infinity);
    run.hold(best.byteLength);
    await forEachClassOnCtGrid(probs, C, p, pre, run, (k, back, lo, hi) => {
      for (let i = lo; i < hi; i++) {
        const v = back[i]!;
        if (v > best[i]!) {
          best[i] = v;
          labels[i] = k;
        }
      }
    });
    run.held -= best.byteLength; // (before the release, which leaves it 0 bytes long)
    releaseEngineArray(best);
  }
  run.lap("resample back");
  return labels;
}

/** The logistic function rounded to float32 (torch.sigmoid's result type). */
function sigmoid32(v: number): number {
  return Math.fround(1 / (1 + Math.exp(-v)));
}

/**
 * An ensemble member's share: its class probabilities on the CT's grid and axis order (its logits
 * resampled there and softmaxed, where its grid is not the CT's), times `w`, added into `acc`
 * (class-major, C × the CT's voxels), as nnU-Net's ensembling averages each configuration's
 * probabilities exported to the image's own grid.
 */
async function addToCtGrid(
  values: Float32Array,
  logits: boolean,
  C: number,
  ct: Volume,
  box: Box | null,
  p: SegmentPlan,
  pre: { gridShape: [number, number, number]; resampled: boolean },
  run: SegmentRun,
  acc: Float32Array,
  w: number,
): Promise<void> {
  const n = ct.data.length;
  // the member's grid: the CT's, or its non-zero box (outside which its background is certain,
  // as nnU-Net's revert_cropping_on_probabilities)
  const m = box ? prod(box.dims) : n;
  const add = (dst: Float32Array, src: Float32Array, lo: number, hi: number) => {
    if (!box) for (let i = lo; i < hi; i++) dst[i]! += src[i]! * w;
    else
      forEachBoxRun(box, ct.dims, lo, hi, (from, to, len) => {
        for (let j = 0; j < len; j++) dst[to + j]! += src[from + j]! * w;
      });
  };
  if (!logits) {
    // probabilities already on the CT's grid (nothing resampled or reordered)
    await forEachClassOnCtGrid(values, C, p, pre, run, (k, back, lo, hi) => add(acc.subarray(k * n, (k + 1) * n), back, lo, hi));
  } else {
    // logits resampled to the CT's grid, then the softmax there (nnU-Net v2 with
    // --save_probabilities, whose probabilities nnUNetv2_ensemble averages)
    const probs = allocArray("float32", C * m, "member probabilities", { overwritten: true }) as Float32Array;
    run.hold(probs.byteLength);
    await forEachClassOnCtGrid(values, C, p, pre, run, (k, back, lo, hi) => probs.set(back.subarray(lo, hi), k * m + lo));
    // (a region-based model's probabilities are each region's sigmoid)
    if (p.cfg.regions) for (let i = 0; i < probs.length; i++) probs[i] = sigmoid32(probs[i]!);
    else await activeBackend().softmax(probs, 1, C, m, probs);
    for (let k = 0; k < C; k++) {
      add(acc.subarray(k * n, (k + 1) * n), probs.subarray(k * m, (k + 1) * m), 0, m);
      await run.yielder.maybe();
    }
    run.held -= probs.byteLength;
    releaseEngineArray(probs);
  }
  // (outside the box: background certain — a region-based model's regions have probability 0 there)
  if (box && !p.cfg.regions)
    forEachOutsideRun(box, ct.dims, (to, len) => {
      for (let j = 0; j < len; j++) acc[to + j]! += w;
    });
  run.lap("resample back");
}

/**
 * Each class of the model-grid probabilities on the CT's grid and axis order in turn (resampled,
 * reordered), handed to `use` a million voxels at a time (the event loop let in between); each
 * class's copies go back to the engine before the next (each a fresh 42 MB block for a
 * 512×512×40 CT were it left to a collection).
 */
async function forEachClassOnCtGrid(
  probs: Float32Array,
  C: number,
  p: SegmentPlan,
  pre: { gridShape: [number, number, number]; resampled: boolean },
  run: SegmentRun,
  use: (k: number, back: Float32Array, lo: number, hi: number) => void,
): Promise<void> {
  const { modelShape, perm } = p;
  const { gridShape, resampled } = pre;
  const mvol = prod(modelShape);
  const inv = [0, 1, 2].map((k) => perm.indexOf(k)); // grid axis holding zyx axis k
  for (let k = 0; k < C; k++) {
    let ch: Tensor = { data: probs.subarray(k * mvol, (k + 1) * mvol), shape: [1, 1, ...modelShape] };
    if (resampled) {
      const rs = p.cfg.resampling;
      if (rs.type === "nnunet") {
        // (nnU-Net's export: from the model's spacing back to the CT's, resampling_fn_probabilities)
        const data = await resampleNnunet(
          ch.data,
          modelShape,
          gridShape,
          ...exportSpacings(p.cfg, p.target, p.gridSpacing),
          rs.probabilities,
          () => run.yielder.maybe(),
          cap(p),
        );
        ch = { data, shape: [1, 1, ...gridShape] };
      } else if (rs.type === "monai") {
        // (Invertd: the CT's voxel i is the model grid's i · spacing / pixdim)
        const ratio = p.gridSpacing.map((g, i) => g / p.target[i]!) as [number, number, number];
        ch = { data: resampleMonai(ch.data, modelShape, gridShape, ratio, rs.back), shape: [1, 1, ...gridShape] };
      } else ch = await ops.resize(ch, { sizes: gridShape, mode: "linear", coordinateTransformationMode: "half_pixel" });
    }
    const back = transpose3(ch.data, gridShape, inv);
    const n = back.data.length;
    for (let lo = 0; lo < n; lo += 1 << 20) {
      use(k, back.data, lo, Math.min(n, lo + (1 << 20)));
      await run.yielder.maybe();
    }
    if (back.data !== ch.data) releaseEngineArray(back.data);
    if (resampled) releaseEngineArray(ch.data);
  }
}

/** Optional cleanup, then the bleeds (components) and the volume of each class on the CT's grid. */
async function postprocess(
  labels: Volume<Uint8Array>,
  cfg: ModelConfig,
  cleanupOptions: CleanupOptions | false | undefined,
  run: SegmentRun,
  connectivity: 6 | 18 | 26,
): Promise<{ out: Volume<Uint8Array>; components: Component[]; perClass: SegmentReport["perClass"] }> {
  let out = labels;
  if (cleanupOptions) {
    out = (await cleanup(out, cleanupOptions)) as Volume<Uint8Array>;
    run.lap("cleanup");
  }
  run.progress({ step: "postprocess", done: 2, total: 3 });
  const { labels: cc, count } = await connectedComponents(out, { connectivity });
  // a prediction's components are bounded by its voxels: no cap here (the labels must not be lost
  // to a noisy model's 10^5 specks; the service bounds what it returns)
  const components = await componentStats(cc, { classes: out, maxComponents: count });
  const voxelMl = prod(out.spacing) / 1000;
  const counts = new Float64Array(256);
  for (let i = 0; i < out.data.length; i++) counts[out.data[i]!]!++;
  const perClass: SegmentReport["perClass"] = {};
  for (const [k, name] of Object.entries(cfg.classes)) {
    if (k === "0") continue;
    perClass[k] = { name, voxels: counts[Number(k)]!, volumeMl: counts[Number(k)]! * voxelMl };
  }
  run.lap("report");
  return { out, components, perClass };
}

/**
 * Segments a head CT: preprocess, sliding-window prediction, export to the CT's grid, then
 * cleanup and the report (each step a function above, after nnU-Net's predictor). Given several
 * models (an ensemble, as nnU-Net's of 2d and 3d_fullres), each runs with its own config and the
 * mean of their class probabilities on the CT's grid is taken (nnUNetv2_ensemble); only the
 * caller's `cleanup` applies to an ensemble (the members' own post-processing does not).
 */
export async function segment(
  ct: Volume,
  model: SegmentModel | readonly SegmentModel[],
  options?: SegmentOptions,
): Promise<{ labels: Volume<Uint8Array>; report: SegmentReport }> {
  if (Array.isArray(model)) return segmentEnsemble(ct, model, options);
  const one = model as SegmentModel;
  const opts = checkOptions(ct, one, options);
  opts.signal?.throwIfAborted();
  const run = new SegmentRun(opts.onProgress, opts.signal);
  run.progress({ step: "preprocess", done: 0, total: 3 });
  // (nnU-Net's crop to the non-zero region: the run's CT is that box, the labels go back into the whole)
  const box = one.config.cropToNonzero ? nonzeroBox(ct) : null;
  const boxed = box ? cropVolume(ct, box) : ct;
  // (MONAI's Orientationd: the model's part runs on the CT's voxels reordered and flipped; the
  // labels go back to the CT's own axes before the cleanup and the report)
  let oriented: ReturnType<typeof reorient<Volume["data"]>> | null;
  try {
    oriented = one.config.orientation ? reorient(boxed, one.config.orientation) : null;
  } catch (e) {
    if (boxed !== ct) releaseEngineArray(boxed.data);
    throw e;
  }
  const work = oriented ? oriented.volume : boxed;
  const releaseWork = () => {
    if (work !== boxed) releaseEngineArray(work.data);
    if (boxed !== ct) releaseEngineArray(boxed.data);
  };
  // (planned, and so bounded, before a cascade's first stage runs)
  let p: SegmentPlan;
  let previous: Awaited<ReturnType<typeof previousStageLabels>>;
  let pre: Awaited<ReturnType<typeof preprocess>>;
  try {
    p = plan(work, one.config, opts);
    previous = await previousStageLabels(ct, one, box, opts);
  } catch (e) {
    releaseWork();
    throw e;
  }
  try {
    pre = await preprocess(work, p, run, previous);
  } catch (e) {
    releaseWork();
    // (withPreviousStage releases the labels once it has them)
    if (previous && !run.previousTaken) releaseEngineArray(previous.labels);
    throw e;
  }
  // where the export resamples, the logits are resampled and their argmax taken, as nnU-Net v2's
  // convert_predicted_logits_to_segmentation_with_correct_shape (the softmax changes no argmax)
  // (MONAI's Activationsd before Invertd: the probabilities are what goes back)
  const softmax = !exportMoves(p, pre) || !exportsLogits(p.cfg);
  let predicted: Awaited<ReturnType<typeof predictSlidingWindow>>;
  try {
    predicted = await predictForeground(pre.x, one, p, run, softmax);
  } catch (e) {
    releaseEngineArray(pre.x.data);
    releaseWork();
    throw e;
  }
  const { probs, classes, windows, forwards, peakForward } = predicted;
  // the model-grid image and, once exported, the probabilities are this call's own: back to the
  // engine now, for the labels and components that follow to reuse (not fresh memory's page faults)
  releaseEngineArray(pre.x.data);
  let labels: Uint8Array;
  try {
    run.signal?.throwIfAborted();
    run.progress({ step: "postprocess", done: 1, total: 3 });
    labels = await exportToCtGrid(probs, classes, work, p, pre, run);
  } catch (e) {
    releaseWork();
    throw e;
  } finally {
    releaseEngineArray(probs);
  }
  if (oriented && work !== boxed) {
    const onWork = labels;
    labels = moveAxes(onWork, boxed.dims, oriented.orientation, true);
    releaseEngineArray(onWork);
    releaseEngineArray(work.data);
  }
  if (box) {
    releaseEngineArray(boxed.data);
    const inBox = labels;
    labels = uncropLabels(inBox, box, ct.dims);
    releaseEngineArray(inBox);
  }
  return finish(ct, labels, one.name, p, box, opts.cleanup, run, { windows, forwards, peakForward }, opts.reportConnectivity);
}

/**
 * A cascade's first stage run on the CT as nnU-Net's predictor exports it (its own config, the
 * caller's mirroring, no post-processing), its labels cropped to `box` where the second stage
 * crops; undefined for a model without a previous stage.
 */
async function previousStageLabels(
  ct: Volume,
  model: SegmentModel,
  box: Box | null,
  opts: Settings,
): Promise<{ labels: Uint8Array; zyx: [number, number, number] } | undefined> {
  const prev = model.previousStage;
  if (!prev) return undefined;
  if (prev.previousStage) throw invalidParameterError("model.previousStage", "a first stage that is no cascade itself", prev.name);
  const mirror = opts.mirrorAxes.length > 0;
  // nnU-Net v2 feeds the first stage's exported labels; v1's predictor its post-processed ones, uncropped
  const how = model.config.previousStage ?? { cropped: true, postprocessed: false };
  const { labels } = await segment(ct, prev, {
    mirror,
    ...(how.postprocessed ? {} : { cleanup: false }),
    ...(opts.signal ? { signal: opts.signal } : {}),
    ...(Number.isFinite(opts.maxVoxels) ? { maxVoxels: opts.maxVoxels } : {}),
  });
  if (!box || !how.cropped) return { labels: labels.data, zyx: [ct.dims[2], ct.dims[1], ct.dims[0]] };
  const cropped = cropVolume(labels, box);
  releaseEngineArray(labels.data);
  return { labels: cropped.data as Uint8Array, zyx: [cropped.dims[2], cropped.dims[1], cropped.dims[0]] };
}

/** Cleanup and the report, for one model or an ensemble. */
async function finish(
  ct: Volume,
  labels: Uint8Array,
  name: string,
  p: SegmentPlan,
  cropped: Box | null,
  cleanupOptions: CleanupOptions | false | undefined,
  run: SegmentRun,
  counts: { windows: number; forwards: number; peakForward: number },
  connectivity: 6 | 18 | 26,
  members?: SegmentReport["ensemble"],
): Promise<{ labels: Volume<Uint8Array>; report: SegmentReport }> {
  run.signal?.throwIfAborted();
  const { out, components, perClass } = await postprocess(
    { data: labels, dims: [...ct.dims], spacing: [...ct.spacing], affine: [...ct.affine] },
    p.cfg,
    cleanupOptions,
    run,
    connectivity,
  );
  run.progress({ step: "postprocess", done: 3, total: 3 });
  return {
    labels: out,
    report: {
      model: name,
      backend: activeBackend().name,
      classes: p.cfg.classes,
      perClass,
      components,
      dims: [...ct.dims],
      spacing: [...ct.spacing],
      modelGrid: { dims: p.modelShape, spacing: p.target },
      cropped,
      windows: counts.windows,
      forwards: counts.forwards,
      timings: run.timings,
      peakForwardBytes: counts.peakForward,
      peakSegmentBytes: run.peakHeld,
      postprocessing: cleanupOptions || null,
      ...(members ? { ensemble: members } : {}),
    },
  };
}

/** Most models one ensemble may hold (nnU-Net's are two or three configurations). */
const MAX_ENSEMBLE = 8;

/** segment() of several models: the mean of their probabilities on the CT's grid. */
async function segmentEnsemble(
  ct: Volume,
  models: readonly SegmentModel[],
  options?: SegmentOptions,
): Promise<{ labels: Volume<Uint8Array>; report: SegmentReport }> {
  if (models.length < 1 || models.length > MAX_ENSEMBLE)
    throw invalidParameterError("model", `a model, or an array of 1 to ${MAX_ENSEMBLE} models (an ensemble)`, models);
  // every member checked, and its grids planned, before any work
  const settings = models.map((m, i) => {
    try {
      return checkOptions(ct, m, options);
    } catch (e) {
      if (e instanceof TypeError && models.length > 1) throw new TypeError(`ensemble member ${i} (${m?.name}): ${e.message}`, { cause: e });
      throw e;
    }
  });
  const classes = JSON.stringify(models[0]!.config.classes);
  const regions = models[0]!.config.regions;
  models.forEach((m, i) => {
    if (JSON.stringify(m.config.classes) !== classes)
      throw invalidParameterError(`model[${i}].config.classes`, `the classes of model[0] (${classes})`, m.config.classes);
    if (JSON.stringify(m.config.regions) !== JSON.stringify(regions))
      throw invalidParameterError(`model[${i}].config.regions`, `the regions of model[0] (${JSON.stringify(regions)})`, m.config.regions);
  });
  // (a member that reorients the CT would need its probabilities put back before the mean: not built)
  const turned = models.findIndex((m) => m.config.orientation !== undefined);
  // (an array of one such model is that model)
  if (models.length === 1 && turned === 0) return segment(ct, models[0]!, options);
  if (turned >= 0)
    throw invalidParameterError(
      `model[${turned}].config.orientation`,
      "no reorientation in an ensemble (segment with one such model)",
      models[turned]!.config.orientation,
    );
  const opts = settings[0]!;
  // an ensemble's post-processing is its own (nnU-Net determines one for the ensemble): the caller's
  const cleanupOptions = models.length === 1 ? opts.cleanup : (options as SegmentOptions | undefined)?.cleanup;
  opts.signal?.throwIfAborted();
  const run = new SegmentRun(opts.onProgress, opts.signal);
  run.progress({ step: "preprocess", done: 0, total: 3 });
  // (the non-zero box is the CT's: one crop for the members whose configs crop)
  const box = models.some((m) => m.config.cropToNonzero) ? nonzeroBox(ct) : null;
  const cropped = box ? cropVolume(ct, box) : null;
  const works = models.map((m) => (m.config.cropToNonzero && cropped ? cropped : ct));
  const plans = models.map((m, i) => plan(works[i]!, m.config, settings[i]!));
  run.windowTotal = plans.reduce((a, p) => a + windowStartsOf(p).reduce((b, s) => b * s.length, 1), 0);
  const n = ct.data.length;
  let acc: Float32Array | undefined;
  let C = 0;
  const counts = { windows: 0, forwards: 0, peakForward: 0 };
  const members: NonNullable<SegmentReport["ensemble"]> = [];
  for (const [i, m] of models.entries()) {
    const p = plans[i]!;
    const work = works[i]!;
    const previous = await previousStageLabels(ct, m, work === ct ? null : box, settings[i]!);
    const pre = await preprocess(work, p, run, previous);
    if (work === cropped && !works.slice(i + 1).includes(cropped)) releaseEngineArray(cropped.data);
    const moves = exportMoves(p, pre);
    const r = await predictSlidingWindow(pre.x, m, p, run, !moves || !exportsLogits(p.cfg));
    releaseEngineArray(pre.x.data);
    if (!acc) {
      C = r.classes;
      acc = allocArray("float32", C * n, "ensemble probabilities") as Float32Array;
      run.hold(acc.byteLength);
    } else if (r.classes !== C) {
      releaseEngineArray(r.probs);
      throw new RangeError(`ensemble member ${i} (${m.name}) gives ${r.classes} classes, member 0 ${C}`);
    }
    if (regions && r.classes !== regions.length) {
      releaseEngineArray(r.probs);
      throw new RangeError(`ensemble member ${i} (${m.name}) gives ${r.classes} channels for ${regions.length} regions`);
    }
    await addToCtGrid(
      r.probs,
      // (a region-based model's are logits, moved or not: each gets its sigmoid)
      (moves && exportsLogits(m.config)) || !!m.config.regions,
      C,
      ct,
      work === ct ? null : box,
      p,
      pre,
      run,
      acc,
      1 / models.length,
    );
    releaseEngineArray(r.probs);
    run.windowBase += r.windows;
    counts.windows += r.windows;
    counts.forwards += r.forwards;
    counts.peakForward = Math.max(counts.peakForward, r.peakForward);
    members.push({
      model: m.name,
      cropped: work === ct ? null : box,
      modelGrid: { dims: p.modelShape, spacing: p.target },
      windows: r.windows,
      forwards: r.forwards,
    });
    run.signal?.throwIfAborted();
  }
  run.progress({ step: "postprocess", done: 1, total: 3 });
  const labels = allocArray("uint8", n, "labels") as Uint8Array;
  if (regions) {
    // the mean of the members' region probabilities, each above 0.5 setting its value in order
    for (let k = 0; k < C; k++) for (let i = 0; i < n; i++) if (acc![k * n + i]! > 0.5) labels[i] = regions[k]!;
  } else {
    const lab = allocArray("int32", n, "argmax", { overwritten: true }) as Int32Array;
    await activeBackend().argmax(acc!, 1, C, n, lab);
    labels.set(lab); // (class indices < C ≤ 255)
    releaseEngineArray(lab);
  }
  run.held -= acc!.byteLength;
  releaseEngineArray(acc!);
  run.lap("argmax");
  // (the box, where any member ran on it: it is the CT's one non-zero box)
  return finish(
    ct,
    labels,
    models.map((m) => m.name).join(" + "),
    plans[0]!,
    cropped ? box : null,
    cleanupOptions,
    run,
    counts,
    opts.reportConnectivity,
    members,
  );
}
