/**
 * A model's configuration: what segment() needs besides the graph. Read from (first found):
 * the argument to loadModel, a JSON sidecar `<model>.json`, nnU-Net v2's plans.json + dataset.json
 * beside the model, the ONNX metadata_props key "bhsd", else defaults. Schema: README, "Model config".
 */
import { existsSync } from "node:fs";
import { dirname, join } from "node:path";
import { BHSD_CLASSES } from "../metrics/evaluate.js";
import { checkCleanupOptions, type CleanupOptions } from "../ops/components.js";
import { NNUNET_RESAMPLING, type NnunetResamplingStep, type Resampling } from "./resample.js";
import { brief } from "../is.js";
import { parseJsonObject, readSmallFile } from "../io/small-file.js";

export type Normalization =
  /** Clip to [lower, upper] HU, then (x − center) / scale. The BHSD paper's: [-40, 120], 40, 80. */
  | { type: "window"; lower: number; upper: number; center: number; scale: number }
  /** nnU-Net's CTNormalization: clip to the dataset's 0.5/99.5 percentiles, then (x − mean) / std. */
  | { type: "ct"; lower: number; upper: number; mean: number; std: number }
  /**
   * Per-image z-score; `nonzeroMask` (nnU-Net's use_mask_for_norm): the mean and deviation of the
   * voxels inside the image's non-zero region (holes filled) only, and only those normalised
   * (outside it the image is 0 and stays so), as nnU-Net's ZScoreNormalization does.
   */
  | { type: "zscore"; nonzeroMask?: boolean }
  /**
   * MONAI's NormalizeIntensity: a per-image z-score (the deviation without Bessel's correction, 1
   * where it is 0); `nonzero`: over the voxels that are not 0 only, and only those changed.
   */
  | { type: "monaiZscore"; nonzero: boolean }
  /** MONAI's ScaleIntensity: the image's own minimum and maximum to [min, max]. */
  | { type: "minmax"; min: number; max: number }
  /** Clip to the image's own percentiles, then per-image z-score. */
  | { type: "clipPercentile"; lowerPercentile: number; upperPercentile: number }
  | { type: "none" };

export interface ModelConfig {
  /** Label value → name (0 is background). */
  classes: Record<string, string>;
  /**
   * 3: the network takes [N, C, D, H, W] windows; 2: it takes [N, C, H, W], one slice (axis 0 of
   * its grid) at a time, as nnU-Net's `2d` configuration and slice-wise U-Nets do. Default: 2 where
   * the patch has two sizes or the model's input has four axes, else 3.
   */
  spatialDims: 2 | 3;
  /**
   * Sliding-window patch [z, y, x] in voxels of the model's grid; for a 2-D model [1, y, x] (given
   * as [y, x] or [1, y, x]).
   */
  patchSize: [number, number, number];
  /**
   * Spacing [z, y, x] (mm) the model was trained at; null: the image's own. A 2-D model may give
   * [y, x] (its grid's axes 1 and 2, as nnU-Net's 2d plans): its slices keep their spacing.
   */
  targetSpacing: [number, number, number] | [number, number] | null;
  /**
   * How the CT becomes the network's input: one normalisation, or one per input channel — the CT
   * normalised each way and stacked as channels, in order (several CT windows, e.g. brain, subdural
   * and bone, as 2-D ICH networks take them). Each channel is resampled as the image is.
   */
  normalization: Normalization | Normalization[];
  /** nnU-Net's transpose_forward: the axis order of the network's input, as a permutation of (z, y, x). */
  transposeForward: [number, number, number];
  /** Sliding-window step as a fraction of the patch (nnU-Net: 0.5). */
  stepSize: number;
  /**
   * How the image goes to the model's spacing and the class logits come back (see Resampling):
   * "linear" by default, nnU-Net's B-splines (`{ type: "nnunet", … }`, or "nnunet" for its
   * defaults) where the config comes from nnU-Net's plans.
   */
  resampling: Resampling;
  /**
   * Run on the bounding box of the CT's non-zero voxels and give the rest background, as nnU-Net's
   * preprocessing crops (crop_to_nonzero; it changes the grid resampled, and a z-score's statistics).
   * Default false; true where the config comes from nnU-Net's plans.
   */
  cropToNonzero: boolean;
  /**
   * Normalise on the model's grid, after resampling, as nnU-Net v1's GenericPreprocessor (v2 and the
   * default normalise the CT first). A clip before or after cubic splines gives other values along
   * every edge the clip cuts (bone, air). Not with a z-score's `nonzeroMask`.
   */
  normalizeAfterResampling: boolean;
  /**
   * What the sliding windows and mirrors average, and what the export resamples: "logits" (nnU-Net
   * v2, the default: the softmax follows the average) or "probabilities" (nnU-Net v1: each forward's
   * softmax is averaged, and those probabilities go back to the CT's grid).
   */
  aggregate: "logits" | "probabilities";
  /**
   * A region-based model's (nnU-Net's regions_class_order): its outputs are one sigmoid channel per
   * region, and a voxel's label is, of these values in this order, the last whose region's
   * probability is above 0.5 (0 where none is). Absent: one softmax channel per class.
   */
  regions?: number[];
  /**
   * A cascade's second stage: how its first stage's labels are taken. nnU-Net v2 (the default,
   * `{ cropped: true, postprocessed: false }`): cropped with the CT, resampled by `resampling.seg`,
   * the first stage not post-processed. nnU-Net v1 (`{ cropped: false, postprocessed: true }`): the
   * whole CT's labels after the first stage's own post-processing, resized to the cropped model grid
   * (v1's predictor does not crop them).
   */
  previousStage?: { cropped: boolean; postprocessed: boolean };
  /**
   * Axes of the network's input grid (0 z, 1 y, 2 x, after transposeForward) along which the model
   * was trained mirrored, so that test-time mirroring may flip them (nnU-Net's
   * inference_allowed_mirroring_axes). `segment(…, { mirror: true })` flips these. Default all three.
   */
  mirrorAxes: number[];
  /**
   * The model's own post-processing (cleanup's options), as nnU-Net keeps the post-processing it
   * chose on validation with the model: segment() applies it unless given `cleanup` (false: none).
   */
  postprocessing?: CleanupOptions;
  /**
   * What the export resamples back to the CT's grid, where the model's grid is not the CT's:
   * "logits" (nnU-Net v2) or "probabilities" (the softmax first: nnU-Net v1, and MONAI's
   * Activationsd before Invertd). Default: as `aggregate`.
   */
  exportValues?: "logits" | "probabilities";
  /**
   * MONAI's Orientationd: the CT's voxel axes reordered and flipped to run along these world
   * directions (nibabel's axis codes: "RAS", the first axis toward the right) before anything
   * else, the labels put back on the CT's own grid after. Absent: the CT's axes as stored.
   */
  orientation?: string;
  /**
   * The sliding windows: nnU-Net's (absent: steps of `stepSize`, spread evenly, a Gaussian of
   * σ = patch/8 with peak 1), or MONAI's sliding_window_inference — its window starts, `overlap`
   * per axis of the model's grid, a constant or Gaussian (σ = patch · sigmaScale) importance map.
   */
  slidingWindow?: { type: "monai"; overlap: [number, number, number]; mode: "constant" | "gaussian"; sigmaScale: [number, number, number] };
  /**
   * MONAI's CropForegroundd at the end of a bundle's preprocessing: the windows run on the bounding
   * box of the model grid's voxels above 0 (after normalisation), and outside it the values that go
   * back to the CT's grid are 0, as Invertd pads them. Default false.
   */
  cropForeground?: boolean;
  /**
   * A 2-D model's neighbouring slices as input channels (2.5-D): k slices either side, so the
   * network takes (2k + 1) · C channels for C normalisations. Default 0 (the slice alone).
   */
  contextSlices?: number;
  /**
   * Where the neighbours run past the first or last slice: "replicate" (the edge slice again: numpy's
   * clipped indices; the default) or "zero" (zeros after normalisation).
   */
  contextEdge?: "replicate" | "zero";
  /**
   * How the (2k + 1) · C channels are ordered: "slice-major" (slice z − k's C normalisations, then
   * z − k + 1's …; the default) or "channel-major" (normalisation 0's 2k + 1 slices, then 1's …).
   */
  contextLayout?: "slice-major" | "channel-major";
  /** Where the config came from. */
  source: "argument" | "sidecar" | "nnunet" | "monai" | "metadata" | "default";
}

export const BHSD_WINDOW: Normalization = { type: "window", lower: -40, upper: 120, center: 40, scale: 80 };

export function defaultConfig(): ModelConfig {
  return {
    classes: { "0": "background", ...Object.fromEntries(Object.entries(BHSD_CLASSES).map(([k, v]) => [k, v])) },
    spatialDims: 3,
    patchSize: [32, 128, 128],
    targetSpacing: null,
    normalization: BHSD_WINDOW,
    transposeForward: [0, 1, 2],
    stepSize: 0.5,
    resampling: { type: "linear" },
    cropToNonzero: false,
    normalizeAfterResampling: false,
    aggregate: "logits",
    mirrorAxes: [0, 1, 2],
    source: "default",
  };
}

function triple(v: unknown, what: string): [number, number, number] {
  if (!Array.isArray(v) || v.length !== 3 || !v.every((x) => typeof x === "number" && x > 0 && Number.isFinite(x)))
    throw new Error(`model config: ${what} must be three positive numbers [z, y, x], got ${brief(v)}`);
  return v as [number, number, number];
}

/** Largest side of a patch, and largest patch (voxels): 16× nnU-Net's largest (a 3d_fullres patch is ≤ 2²¹ voxels). */
export const MAX_PATCH_SIDE = 4096;
export const MAX_PATCH_VOXELS = 2 ** 27;

/** Whether whole patch sides are each 1…MAX_PATCH_SIDE and MAX_PATCH_VOXELS at most in all. */
export const patchInBounds = (sides: readonly number[]): boolean =>
  sides.every((x) => x >= 1 && x <= MAX_PATCH_SIDE) && sides.reduce((a, b) => a * b, 1) <= MAX_PATCH_VOXELS;

/**
 * A patch's sides rounded to whole voxels (a config may write 128.0), each from 1 to MAX_PATCH_SIDE
 * and MAX_PATCH_VOXELS in all, else an error naming `what` — checked before anything the size of a
 * window is allocated (segment's Gaussian map, its windows).
 */
export function patchSides(v: readonly number[], what: string, shown: unknown = v): number[] {
  const r = v.map((x) => Math.round(x));
  if (!patchInBounds(r))
    throw new Error(
      `model config: ${what} must be whole sizes from 1 to ${MAX_PATCH_SIDE}, at most ${MAX_PATCH_VOXELS} voxels in all, got ${brief(shown)}`,
    );
  return r;
}

/** Default patch of a 2-D model whose input sizes are not fixed: a whole BHSD slice. */
export const DEFAULT_PATCH_2D: [number, number] = [512, 512];

/**
 * Checks and completes a partial config. `modelInput`, the model's first input's declared shape
 * where known, tells a 2-D model (four axes) from a 3-D one, and gives a 2-D model's default patch
 * where its sizes are fixed.
 */
export function normalizeConfig(
  c: Partial<ModelConfig> | Record<string, unknown>,
  source: ModelConfig["source"],
  modelInput?: readonly (number | string)[],
): ModelConfig {
  const given = c as Partial<Omit<ModelConfig, "patchSize" | "targetSpacing" | "spatialDims" | "resampling">> & {
    patchSize?: number[];
    targetSpacing?: number[] | null;
    spatialDims?: number;
    resampling?: unknown;
  };
  const d = defaultConfig();
  const out: ModelConfig = { ...d, ...given, source } as ModelConfig;
  out.resampling = resamplingOf(given.resampling ?? d.resampling);
  if (typeof out.cropToNonzero !== "boolean")
    throw new Error(`model config: cropToNonzero must be true or false, got ${brief(out.cropToNonzero)}`);
  if (typeof out.normalizeAfterResampling !== "boolean")
    throw new Error(`model config: normalizeAfterResampling must be true or false, got ${brief(out.normalizeAfterResampling)}`);
  if (
    out.regions !== undefined &&
    (!Array.isArray(out.regions) ||
      !out.regions.length ||
      out.regions.length > 255 ||
      !out.regions.every((v) => Number.isInteger(v) && v >= 1 && v <= 255))
  )
    throw new Error(`model config: regions must list 1 to 255 label values in 1…255, got ${brief(out.regions)}`);
  const ps = out.previousStage as unknown;
  if (
    ps !== undefined &&
    !(
      typeof ps === "object" &&
      ps !== null &&
      typeof (ps as { cropped?: unknown }).cropped === "boolean" &&
      typeof (ps as { postprocessed?: unknown }).postprocessed === "boolean"
    )
  )
    throw new Error(`model config: previousStage must be { cropped: true | false, postprocessed: true | false }, got ${brief(ps)}`);
  if (out.regions !== undefined && out.aggregate !== "logits")
    throw new Error('model config: a region-based model (regions) averages logits: aggregate must be "logits"');
  if (out.aggregate !== "logits" && out.aggregate !== "probabilities")
    throw new Error(`model config: aggregate must be "logits" or "probabilities", got ${brief(out.aggregate)}`);
  const rank = modelInput?.length;
  const sd = given.spatialDims ?? (given.patchSize?.length === 2 || rank === 4 ? 2 : 3);
  if (sd !== 2 && sd !== 3) throw new Error(`model config: spatialDims must be 2 or 3, got ${brief(given.spatialDims)}`);
  if (rank !== undefined && (rank === 4 || rank === 5) && rank !== sd + 2)
    throw new Error(
      `model config: a ${sd}-D config (${given.spatialDims !== undefined ? "spatialDims" : "patchSize"} ${brief(given.spatialDims ?? given.patchSize)}) for a model whose input has ${rank} axes (${rank === 4 ? "[N, C, H, W]: a 2-D model" : "[N, C, D, H, W]: a 3-D model"})`,
    );
  out.spatialDims = sd as 2 | 3;
  if (sd === 3) {
    out.patchSize = patchSides(triple(out.patchSize, "patchSize"), "patchSize") as [number, number, number];
    if (out.targetSpacing !== null) out.targetSpacing = triple(out.targetSpacing, "targetSpacing");
  } else {
    // a 2-D model: [y, x] (or [1, y, x]) patches, by default its fixed input sizes or a whole slice
    const fixed =
      rank === 4 && modelInput!.slice(2).every((v) => typeof v === "number" && v > 0) ? (modelInput!.slice(2) as number[]) : null;
    const p = given.patchSize ?? fixed ?? DEFAULT_PATCH_2D;
    const yx = Array.isArray(p) && p.length === 3 && p[0] === 1 ? p.slice(1) : p;
    if (!Array.isArray(yx) || yx.length !== 2 || !yx.every((v) => typeof v === "number" && v > 0))
      throw new Error(`model config: patchSize of a 2-D model must be [y, x] (or [1, y, x]) positive numbers, got ${brief(p)}`);
    out.patchSize = [1, ...patchSides(yx as number[], "patchSize", p)] as [number, number, number];
    const t = out.targetSpacing as number[] | null;
    if (
      t !== null &&
      !(Array.isArray(t) && (t.length === 2 || t.length === 3) && t.every((v) => typeof v === "number" && v > 0 && Number.isFinite(v)))
    )
      throw new Error(
        `model config: targetSpacing of a 2-D model must be [y, x] (its slices keep their spacing) or [z, y, x] positive numbers, got ${brief(t)}`,
      );
    if (given.mirrorAxes === undefined) out.mirrorAxes = [1, 2];
    else if (Array.isArray(given.mirrorAxes) && given.mirrorAxes.includes(0))
      throw new Error(`model config: mirrorAxes of a 2-D model are among 1 and 2 (a slice's y and x), got ${brief(given.mirrorAxes)}`);
  }
  const perm = out.transposeForward;
  if (!Array.isArray(perm) || [...perm].sort().join() !== "0,1,2")
    throw new Error(`model config: transposeForward must be a permutation of [0, 1, 2], got ${brief(perm)}`);
  if (!(out.stepSize > 0 && out.stepSize <= 1)) throw new Error(`model config: stepSize must be in (0, 1], got ${out.stepSize}`);
  const ax = out.mirrorAxes;
  if (!Array.isArray(ax) || ax.length > 3 || !ax.every((a) => a === 0 || a === 1 || a === 2) || new Set(ax).size !== ax.length)
    throw new Error(`model config: mirrorAxes must list distinct axes among 0, 1, 2, got ${brief(ax)}`);
  checkInputChannels(out);
  if (out.exportValues !== undefined && out.exportValues !== "logits" && out.exportValues !== "probabilities")
    throw new Error(`model config: exportValues must be "logits" or "probabilities", got ${brief(out.exportValues)}`);
  if (out.regions !== undefined && out.exportValues === "probabilities")
    throw new Error('model config: a region-based model exports each region\'s logits: exportValues must be "logits"');
  if (out.cropForeground !== undefined && typeof out.cropForeground !== "boolean")
    throw new Error(`model config: cropForeground must be true or false, got ${brief(out.cropForeground)}`);
  if (out.orientation !== undefined) {
    const o = out.orientation as unknown;
    if (
      typeof o !== "string" ||
      !/^[RLAPSIrlapsi]{3}$/.test(o) ||
      new Set([...o.toUpperCase()].map((c) => "RLAPSI".indexOf(c) >> 1)).size !== 3
    )
      throw new Error(`model config: orientation must be three axis letters naming each of R/L, A/P and S/I once ("RAS"), got ${brief(o)}`);
    out.orientation = o.toUpperCase();
  }
  if (out.slidingWindow !== undefined) {
    const w = out.slidingWindow as unknown as Record<string, unknown> | null;
    const three = (v: unknown, ok: (x: number) => boolean) =>
      Array.isArray(v) && v.length === 3 && v.every((x) => typeof x === "number" && ok(x));
    if (
      w === null ||
      typeof w !== "object" ||
      w.type !== "monai" ||
      !three(w.overlap, (x) => x >= 0 && x < 1) ||
      (w.mode !== "constant" && w.mode !== "gaussian") ||
      !three(w.sigmaScale, (x) => x > 0 && Number.isFinite(x))
    )
      throw new Error(
        `model config: slidingWindow must be { type: "monai", overlap: three numbers in [0, 1), mode: "constant" | "gaussian", sigmaScale: three positive numbers }, got ${brief(w)}`,
      );
  }
  if (typeof out.classes !== "object" || out.classes === null) throw new Error("model config: classes must map label values to names");
  if (out.postprocessing !== undefined) {
    try {
      checkCleanupOptions(out.postprocessing, "postprocessing");
    } catch (e) {
      throw new Error(`model config: ${(e as Error).message}`, { cause: e });
    }
  }
  return out;
}

/** A cascade's label resampling: nnU-Net's default, linear masks (order 1) and nearest across a separate axis. */
function segStep(s: NnunetResamplingStep): NnunetResamplingStep {
  if (s.order !== 1 || s.orderZ !== 0)
    throw new Error(`model config: resampling.seg resamples labels with order 1 and orderZ 0 (nnU-Net's default), got ${brief(s)}`);
  return s;
}

function resamplingOf(r: unknown): Resampling {
  if (r === "linear") return { type: "linear" };
  if (r === "nnunet") return structuredClone(NNUNET_RESAMPLING);
  const o = r as Record<string, unknown> | null;
  if (o?.type === "linear" && Object.keys(o).length === 1) return { type: "linear" };
  if (o?.type === "monai") {
    const mode = (v: unknown) => v === "bilinear" || v === "nearest";
    if (Object.keys(o).length === 3 && mode(o.image) && mode(o.back))
      return { type: "monai", image: o.image as "bilinear" | "nearest", back: o.back as "bilinear" | "nearest" };
    throw new Error(`model config: resampling { type: "monai" } needs image and back, each "bilinear" or "nearest", got ${brief(r)}`);
  }
  if (o?.type === "nnunet") {
    const step = (v: unknown, what: string): NnunetResamplingStep => {
      const t = v as Partial<NnunetResamplingStep> | null;
      const order = (x: unknown) => Number.isInteger(x) && (x as number) >= 0 && (x as number) <= 5;
      if (
        typeof t === "object" &&
        t !== null &&
        order(t.order) &&
        order(t.orderZ) &&
        (t.forceSeparateZ === null || typeof t.forceSeparateZ === "boolean") &&
        typeof t.anisotropyThreshold === "number" &&
        t.anisotropyThreshold > 0 &&
        Number.isFinite(t.anisotropyThreshold)
      )
        return { order: t.order!, orderZ: t.orderZ!, forceSeparateZ: t.forceSeparateZ, anisotropyThreshold: t.anisotropyThreshold };
      throw new Error(
        `model config: resampling.${what} must be { order: 0–5, orderZ: 0–5, forceSeparateZ: true | false | null, anisotropyThreshold: a positive number }, got ${brief(v)}`,
      );
    };
    return {
      type: "nnunet",
      data: step(o.data, "data"),
      probabilities: step(o.probabilities, "probabilities"),
      ...(o.seg !== undefined ? { seg: segStep(step(o.seg, "seg")) } : {}),
    };
  }
  throw new Error(
    `model config: resampling must be "linear", "nnunet", { type: "nnunet", data: {…}, probabilities: {…} } or { type: "monai", image, back }, got ${brief(r)}`,
  );
}

/**
 * A plans configuration's resampling step (resampling_fn_data or resampling_fn_probabilities and
 * its kwargs) as bhsd runs it; absent kwargs take the function's own defaults.
 */
function nnunetStep(conf: Record<string, unknown>, key: "data" | "probabilities" | "seg", configuration: string): NnunetResamplingStep {
  const fn = conf[`resampling_fn_${key}`] ?? "resample_data_or_seg_to_shape";
  const kw = (conf[`resampling_fn_${key}_kwargs`] ?? {}) as Record<string, unknown>;
  const threshold = kw.separate_z_anisotropy_threshold ?? 3;
  const force = kw.force_separate_z;
  if (fn === "resample_data_or_seg_to_shape" || fn === "resample_data_or_seg_to_spacing")
    return {
      order: (kw.order ?? 3) as number,
      orderZ: (kw.order_z ?? 0) as number,
      forceSeparateZ: (force === undefined ? false : force) as boolean | null,
      anisotropyThreshold: threshold as number,
    };
  // the no-resampling planners': the data as it is (the model runs on the CT's own grid; fromNnunet
  // then drops the target spacing); the step is never taken
  if (fn === "no_resampling_hack") return { order: 1, orderZ: 0, forceSeparateZ: null, anisotropyThreshold: threshold as number };
  if (fn === "resample_torch_fornnunet") {
    // torch's interpolate: linear in-plane (or along every axis), 'nearest-exact' along a separate axis
    // (scipy's order 0 but for rounding at exact halves)
    if ((kw.mode ?? "linear") !== "linear" || (kw.aniso_axis_mode ?? "nearest-exact") !== "nearest-exact")
      throw new Error(
        `plans.json: configuration "${configuration}" resamples (${key}) with resample_torch_fornnunet in mode ${brief(kw.mode ?? "linear")} / aniso_axis_mode ${brief(kw.aniso_axis_mode ?? "nearest-exact")}; bhsd has "linear" / "nearest-exact"`,
      );
    return {
      order: 1,
      orderZ: 0,
      forceSeparateZ: (force === undefined ? null : force) as boolean | null,
      anisotropyThreshold: threshold as number,
    };
  }
  throw new Error(
    `plans.json: configuration "${configuration}" resamples (${key}) with ${brief(fn)}; bhsd has nnU-Net's resample_data_or_seg_to_shape, resample_torch_fornnunet and no_resampling_hack`,
  );
}

/** nnU-Net v2's plans.json and dataset.json (3d_fullres unless another configuration is named). */
export function fromNnunet(
  plans: Record<string, unknown>,
  dataset: Record<string, unknown> | null,
  configuration = "3d_fullres",
): Partial<ModelConfig> {
  const confs = plans.configurations as Record<string, Record<string, unknown>> | undefined;
  const conf = confs?.[configuration];
  if (!conf) throw new Error(`plans.json has no configuration "${configuration}" (it has ${Object.keys(confs ?? {}).join(", ")})`);
  const out: Partial<ModelConfig> = {};
  if (conf.patch_size) out.patchSize = conf.patch_size as [number, number, number];
  if (Array.isArray(plans.transpose_forward)) out.transposeForward = plans.transpose_forward as [number, number, number];
  // a 2d configuration's spacing is in-plane (the transposed grid's axes 1 and 2), kept as given
  if (Array.isArray(conf.spacing) && conf.spacing.length === 2) out.targetSpacing = conf.spacing as [number, number];
  if (Array.isArray(conf.spacing) && conf.spacing.length === 3) {
    // plans keep the spacing in the network's (transposed) axis order; targetSpacing is (z, y, x)
    const perm = out.transposeForward ?? [0, 1, 2];
    const zyx = [0, 0, 0] as [number, number, number];
    perm.forEach((p, k) => (zyx[p] = (conf.spacing as number[])[k]!));
    out.targetSpacing = zyx;
  }
  // nnU-Net's no-resampling planners (nnUNetPlannerResEnc*_noResampling): the image is not
  // resampled whatever the plans' spacing says
  if (conf.resampling_fn_data === "no_resampling_hack") out.targetSpacing = null;
  // nnU-Net's DefaultPreprocessor crops every image to its non-zero region
  out.cropToNonzero = true;
  out.resampling = {
    type: "nnunet",
    data: nnunetStep(conf, "data", configuration),
    probabilities: nnunetStep(conf, "probabilities", configuration),
  };
  // a cascade's second stage: the first stage's labels go to its grid by resampling_fn_seg
  if (typeof conf.previous_stage === "string") {
    const fn = conf.resampling_fn_seg ?? "resample_data_or_seg_to_shape";
    if (fn !== "resample_data_or_seg_to_shape" && fn !== "resample_data_or_seg_to_spacing")
      throw new Error(
        `plans.json: configuration "${configuration}" resamples the previous stage's labels with ${brief(fn)}; bhsd has nnU-Net's resample_data_or_seg_to_shape for them`,
      );
    const seg = nnunetStep(conf, "seg", configuration);
    // (resize_segmentation: each label's mask linear, as nnU-Net's default; across a separate axis, nearest)
    if (seg.order !== 1 || seg.orderZ !== 0)
      throw new Error(
        `plans.json: configuration "${configuration}" resamples the previous stage's labels with order ${seg.order} / order_z ${seg.orderZ}; bhsd has nnU-Net's default, order 1 with order_z 0`,
      );
    out.resampling.seg = seg;
  }
  const scheme = (conf.normalization_schemes as string[] | undefined)?.[0];
  const props = (plans.foreground_intensity_properties_per_channel as Record<string, Record<string, number>> | undefined)?.["0"];
  if (scheme === "CTNormalization") {
    if (!props) throw new Error("plans.json uses CTNormalization but has no foreground_intensity_properties_per_channel");
    out.normalization = { type: "ct", lower: props.percentile_00_5!, upper: props.percentile_99_5!, mean: props.mean!, std: props.std! };
  } else if (scheme === "ZScoreNormalization") {
    // use_mask_for_norm: nnU-Net's planner sets it where the crop to the non-zero region shrinks the
    // images by a quarter or more (skull-stripped MR, not CT, whose air is -1000 HU)
    const mask = (conf.use_mask_for_norm as unknown[] | undefined)?.[0];
    if (mask !== undefined && mask !== null && typeof mask !== "boolean")
      throw new Error(`plans.json: use_mask_for_norm must list true or false per channel, got ${brief(conf.use_mask_for_norm)}`);
    out.normalization = mask ? { type: "zscore", nonzeroMask: true } : { type: "zscore" };
  } else if (scheme === "NoNormalization") out.normalization = { type: "none" };
  else if (scheme)
    throw new Error(`plans.json normalization ${scheme} is not supported (CTNormalization, ZScoreNormalization, NoNormalization)`);
  const labels = dataset?.labels as Record<string, number> | undefined;
  if (labels)
    out.classes = Object.fromEntries(
      Object.entries(labels)
        .filter(([, v]) => typeof v === "number")
        .map(([k, v]) => [String(v), k]),
    );
  return out;
}

/** Largest config or plans JSON read beside a model (nnU-Net's plans: a few kB). */
const MAX_CONFIG_JSON_BYTES = 32 * 2 ** 20;

async function readJson(path: string): Promise<Record<string, unknown>> {
  try {
    return parseJsonObject((await readSmallFile(path, { maxBytes: MAX_CONFIG_JSON_BYTES, what: "a model's config" })).toString("utf8"));
  } catch (e) {
    throw new Error(`${path}: ${(e as Error).message}`, { cause: e });
  }
}

export async function readModelConfig(
  modelPath: string | null,
  metadata: Record<string, string>,
  given?: Partial<ModelConfig>,
  modelInput?: readonly (number | string)[],
): Promise<ModelConfig> {
  if (given) return normalizeConfig(given, "argument", modelInput);
  if (modelPath) {
    const sidecar = modelPath.replace(/\.onnx$/i, "") + ".json";
    if (existsSync(sidecar)) return normalizeConfig((await readJson(sidecar)) as Partial<ModelConfig>, "sidecar", modelInput);
    const plans = join(dirname(modelPath), "plans.json");
    if (existsSync(plans)) {
      const ds = join(dirname(modelPath), "dataset.json");
      // a 2-D export (four input axes) beside nnU-Net's plans is its 2d configuration
      const p = await readJson(plans);
      const conf = modelInput?.length === 4 && (p.configurations as Record<string, unknown> | undefined)?.["2d"] ? "2d" : "3d_fullres";
      return normalizeConfig(fromNnunet(p, existsSync(ds) ? await readJson(ds) : null, conf), "nnunet", modelInput);
    }
  }
  if (metadata.bhsd) {
    try {
      return normalizeConfig(JSON.parse(metadata.bhsd) as Partial<ModelConfig>, "metadata", modelInput);
    } catch (e) {
      throw new Error(`the model's metadata "bhsd" is not a valid config: ${(e as Error).message}`, { cause: e });
    }
  }
  return normalizeConfig({}, "default", modelInput);
}

/** Most channels a list of normalisations makes. */
const MAX_NORMALIZED_CHANNELS = 16;

/** Each normalisation of a config, one per input channel. */
export function channelNormalizations(cfg: Pick<ModelConfig, "normalization">): Normalization[] {
  return Array.isArray(cfg.normalization) ? cfg.normalization : [cfg.normalization];
}

function checkNormalization(n: Normalization, out: Pick<ModelConfig, "normalizeAfterResampling">): void {
  const ok =
    (n?.type === "window" && [n.lower, n.upper, n.center, n.scale].every(Number.isFinite) && n.scale !== 0 && n.lower < n.upper) ||
    (n?.type === "ct" && [n.lower, n.upper, n.mean, n.std].every(Number.isFinite) && n.std > 0 && n.lower < n.upper) ||
    (n?.type === "zscore" && (n.nonzeroMask === undefined || typeof n.nonzeroMask === "boolean")) ||
    (n?.type === "monaiZscore" && typeof n.nonzero === "boolean") ||
    (n?.type === "minmax" && Number.isFinite(n.min) && Number.isFinite(n.max)) ||
    n?.type === "none" ||
    (n?.type === "clipPercentile" &&
      Number.isFinite(n.lowerPercentile) &&
      Number.isFinite(n.upperPercentile) &&
      n.lowerPercentile >= 0 &&
      n.upperPercentile <= 100 &&
      n.lowerPercentile < n.upperPercentile);
  if (!ok)
    throw new Error(
      `model config: normalization ${brief(n)} is not one of window, ct, zscore, monaiZscore, minmax, clipPercentile, none (with their numbers: finite, a window's and a ct's lower below upper, percentiles 0 ≤ lower < upper ≤ 100)`,
    );
  if (out.normalizeAfterResampling && n.type === "zscore" && n.nonzeroMask)
    throw new Error(
      "model config: a z-score's nonzeroMask is the CT's own region, taken before resampling: not with normalizeAfterResampling",
    );
}

/**
 * The config's input channels: its normalisations (one, or a list of 1 to 16, each checked) and a
 * 2-D model's context slices (at most 32 channels in all). normalizeConfig runs it at load, and
 * segment() again on the config it is given (a model's config may be replaced after load).
 */
export function checkInputChannels(
  out: Pick<
    ModelConfig,
    "normalization" | "normalizeAfterResampling" | "spatialDims" | "previousStage" | "contextSlices" | "contextEdge" | "contextLayout"
  >,
): void {
  const norms = channelNormalizations(out);
  if (norms.length < 1 || norms.length > MAX_NORMALIZED_CHANNELS)
    throw new Error(
      `model config: normalization as a list gives one per input channel: 1 to ${MAX_NORMALIZED_CHANNELS} of them, got ${norms.length}`,
    );
  for (const n of norms) checkNormalization(n, out);
  if (out.contextSlices !== undefined) {
    const k = out.contextSlices;
    if (!(Number.isInteger(k) && k >= 0 && k <= 8))
      throw new Error(`model config: contextSlices must be a whole number of slices either side from 0 to 8, got ${brief(k)}`);
    if (k > 0 && out.spatialDims !== 2)
      throw new Error("model config: contextSlices (neighbouring slices as channels) is for a 2-D model (spatialDims 2)");
    // (each channel is a copy of the model grid: bounded, as the network's input is)
    const made = norms.length * (2 * k + 1);
    if (made > MAX_NORMALIZED_CHANNELS * 2)
      throw new Error(
        `model config: contextSlices ${k} with ${norms.length} normalisations makes ${made} input channels; at most ${MAX_NORMALIZED_CHANNELS * 2}`,
      );
    if (k > 0 && out.previousStage !== undefined)
      throw new Error("model config: contextSlices with a cascade's previousStage: a 2.5-D cascade is not built");
  }
  if (out.contextEdge !== undefined && out.contextEdge !== "replicate" && out.contextEdge !== "zero")
    throw new Error(`model config: contextEdge must be "replicate" or "zero", got ${brief(out.contextEdge)}`);
  if (out.contextLayout !== undefined && out.contextLayout !== "slice-major" && out.contextLayout !== "channel-major")
    throw new Error(`model config: contextLayout must be "slice-major" or "channel-major", got ${brief(out.contextLayout)}`);
}
