/**
 * A MONAI bundle's inference pipeline as segment()'s config: what its `preprocessing`, `inferer`
 * and `postprocessing` do to a CT, item by item, as bhsd runs it.
 *
 * MONAI's arrays are (channel, x, y, z) as LoadImage reads a NIfTI: the network's axes are the
 * volume's x, y, z (transposeForward [2, 1, 0]), and roi sizes and pixdims are in that order.
 * Read: LoadImage, EnsureChannelFirst and the type conversions (nothing to do); Orientation
 * (orientation); Spacing (targetSpacing, MONAI's resampling); ScaleIntensityRange (a window, before
 * or after Spacing as listed) and NormalizeIntensity (a z-score); SlidingWindowInferer (patch,
 * overlap, importance map); Activations(softmax), Invert (the probabilities back, bilinear or
 * nearest), AsDiscrete(argmax), KeepLargestConnectedComponent (the model's post-processing), and
 * SaveImage (the caller writes the labels). Anything else is an error naming the item: bhsd does
 * not guess what a transform it does not run would have changed.
 */
import type { ModelConfig, Normalization } from "../config.js";
import type { CleanupOptions } from "../../ops/components.js";
import type { BundleConfig } from "./bundle.js";
import { monaiError } from "./layers.js";
import { brief } from "../../is.js";

type Item = Record<string, unknown>;

/** KeepLargestConnectedComponent's arguments: its labels (null: every foreground class), one at a time or together. */
export interface KeepLargest {
  labels: number[] | null;
  independent: boolean;
  connectivity: 6 | 18 | 26;
}

/** KeepLargestConnectedComponent as bhsd's cleanup, for a network of `classes` outputs. */
export function keepLargestCleanup(k: KeepLargest, classes: number): CleanupOptions {
  const labels = k.labels ?? Array.from({ length: classes - 1 }, (_, i) => i + 1);
  return { connectivity: k.connectivity, largestOf: k.independent ? labels.map((v) => [v]) : [labels] };
}

/** A transform's class: its `_target_` without the module path; the dictionary version's `d` kept apart. */
function classOf(item: unknown): { name: string; dict: boolean } | null {
  if (item === null || typeof item !== "object" || Array.isArray(item)) return null;
  const t = (item as Item)._target_;
  if (typeof t !== "string") return null;
  const cls = t.split(".").pop()!;
  const known = new Set([
    "LoadImage",
    "EnsureChannelFirst",
    "AddChannel",
    "EnsureType",
    "ToTensor",
    "ToNumpy",
    "CastToType",
    "Identity",
    "ToDevice",
    "Orientation",
    "Spacing",
    "ScaleIntensityRange",
    "NormalizeIntensity",
    "ScaleIntensity",
    "CropForeground",
    "Activations",
    "Invert",
    "AsDiscrete",
    "KeepLargestConnectedComponent",
    "SaveImage",
    "CopyItems",
    "DeleteItems",
    "SqueezeDim",
  ]);
  if (cls.endsWith("d") && known.has(cls.slice(0, -1))) return { name: cls.slice(0, -1), dict: true };
  if (cls.endsWith("D") && known.has(cls.slice(0, -1))) return { name: cls.slice(0, -1), dict: true };
  return { name: cls, dict: false };
}

function transformsOf(v: unknown, where: string, what: string): Item[] {
  if (v === undefined) return [];
  if (Array.isArray(v)) return v as Item[];
  if (v !== null && typeof v === "object") {
    const c = classOf(v);
    if (c && c.name === "Compose") {
      const t = (v as Item).transforms;
      if (!Array.isArray(t)) throw monaiError(where, `${what}'s Compose has no list of transforms`);
      return t as Item[];
    }
    if (c) return [v as Item];
  }
  throw monaiError(where, `${what} must be a Compose or a list of transforms, got ${brief(v)?.slice(0, 120)}`);
}

const isNum = (v: unknown): v is number => typeof v === "number" && Number.isFinite(v);

/** Keyword arguments that must keep their defaults for bhsd's reading of the item to hold. */
function defaults(item: Item, expect: Record<string, unknown>, where: string, what: string) {
  for (const [k, want] of Object.entries(expect)) {
    const v = item[k];
    if (v !== undefined && JSON.stringify(v) !== JSON.stringify(want) && !(Array.isArray(want) && want.includes(v)))
      throw monaiError(where, `${what}'s ${k} ${brief(v)} is not one bhsd runs (${brief(Array.isArray(want) ? want : [want])})`);
  }
}

const expr = (v: unknown) => typeof v === "string" && /^\$/.test(v);

/** The pipeline of a bundle's config (references resolved) as a partial model config and a description of each step. */
export async function pipelineConfig(
  cfg: BundleConfig,
): Promise<{ config: Partial<ModelConfig>; pipeline: string[]; keepLargest?: KeepLargest }> {
  const where = `${cfg.folder}/${cfg.configFile}`;
  const config: Partial<ModelConfig> = { transposeForward: [2, 1, 0] };
  const pipeline: string[] = [];
  let resampled = false,
    normalized = false,
    oriented = false;
  let spacingMode: "bilinear" | "nearest" | undefined;
  const label = (i: number, what: string, item: Item) =>
    `${what} ${i} (${typeof item._target_ === "string" && item._target_.length <= 80 ? item._target_ : brief(item._target_)})`;

  const pre = transformsOf(await cfg.get("preprocessing"), where, "preprocessing");
  for (const [i, item] of pre.entries()) {
    const c = classOf(item);
    const what = label(i, "preprocessing", item);
    if (!c) throw monaiError(where, `preprocessing ${i} is not a transform (${brief(item)?.slice(0, 120)})`);
    for (const [k, v] of Object.entries(item))
      if (expr(v) && k !== "keys" && !["LoadImage", "SaveImage"].includes(c.name))
        throw monaiError(where, `${what}'s ${k} is an expression (${brief(v)}), which bhsd does not evaluate`);
    switch (c.name) {
      case "LoadImage":
      case "EnsureChannelFirst":
      case "AddChannel":
      case "EnsureType":
      case "ToTensor":
      case "ToNumpy":
      case "CastToType":
      case "Identity":
      case "ToDevice":
        pipeline.push(`${c.name}: nothing to do`);
        break;
      case "Orientation": {
        if (resampled) throw monaiError(where, `${what} comes after Spacing, which bhsd runs only before it`);
        const codes = item.as_closest_canonical === true ? "RAS" : item.axcodes;
        if (typeof codes !== "string") throw monaiError(where, `${what} needs axcodes ("RAS")`);
        defaults(
          item,
          {
            labels: [
              ["L", "R"],
              ["P", "A"],
              ["I", "S"],
            ],
            lazy: false,
          },
          where,
          what,
        );
        config.orientation = codes;
        oriented = true;
        pipeline.push(`Orientation: the CT's axes to ${codes}`);
        break;
      }
      case "Spacing": {
        const pd = item.pixdim;
        const px = isNum(pd) ? [pd, pd, pd] : pd;
        if (!Array.isArray(px) || px.length !== 3 || !px.every((v) => isNum(v) && v > 0))
          throw monaiError(where, `${what}'s pixdim must be three positive spacings (x, y, z), got ${brief(pd)}`);
        const mode = item.mode ?? "bilinear";
        if (mode !== "bilinear" && mode !== "nearest")
          throw monaiError(where, `${what}'s mode ${brief(mode)}: bhsd runs "bilinear" and "nearest"`);
        defaults(
          item,
          {
            padding_mode: "border",
            align_corners: false,
            diagonal: false,
            scale_extent: false,
            min_pixdim: null,
            max_pixdim: null,
            dtype: ["float64", "$np.float64", "$numpy.float64", null],
            recompute_affine: false,
            lazy: false,
          },
          where,
          what,
        );
        config.targetSpacing = [px[2] as number, px[1] as number, px[0] as number];
        spacingMode = mode;
        resampled = true;
        pipeline.push(`Spacing: to ${px.join(" × ")} mm (x, y, z), ${mode}`);
        break;
      }
      case "ScaleIntensityRange": {
        const { a_min: a0, a_max: a1, b_min: b0, b_max: b1 } = item;
        const bMin = b0 ?? null,
          bMax = b1 ?? null;
        if (!isNum(a0) || !isNum(a1) || a0 === a1) throw monaiError(where, `${what} needs a_min and a_max, two different numbers`);
        if (bMin === null || bMax === null)
          throw monaiError(where, `${what} without b_min and b_max (no output scaling) is not one bhsd runs`);
        if (!isNum(bMin) || !isNum(bMax) || bMin === bMax)
          throw monaiError(where, `${what}'s b_min and b_max must be two different numbers`);
        if (normalized) throw monaiError(where, `${what} is a second intensity scaling; bhsd runs one`);
        defaults(item, { dtype: [null, "$np.float32", "$numpy.float32", "float32"] }, where, what);
        const scale = (a1 - a0) / (bMax - bMin);
        const center = a0 - bMin * scale;
        const clip = item.clip === true;
        // (MONAI clips the scaled values to [b_min, b_max]: the same as clipping the HU to [a_min, a_max] first)
        const n: Normalization = clip
          ? { type: "window", lower: Math.min(a0, a1), upper: Math.max(a0, a1), center, scale }
          : { type: "window", lower: -3.4e38, upper: 3.4e38, center, scale };
        config.normalization = n;
        config.normalizeAfterResampling = resampled;
        normalized = true;
        pipeline.push(
          `ScaleIntensityRange: [${a0}, ${a1}] HU to [${bMin}, ${bMax}]${clip ? ", clipped" : ""}${resampled ? ", after Spacing" : ""}`,
        );
        break;
      }
      case "NormalizeIntensity": {
        if (normalized) throw monaiError(where, `${what} is a second intensity scaling; bhsd runs one`);
        defaults(
          item,
          { subtrahend: null, divisor: null, channel_wise: [false, true], dtype: [null, "$np.float32", "$numpy.float32", "float32"] },
          where,
          what,
        );
        const nonzero = item.nonzero ?? false;
        if (typeof nonzero !== "boolean") throw monaiError(where, `${what}'s nonzero must be true or false`);
        config.normalization = { type: "monaiZscore", nonzero };
        config.normalizeAfterResampling = resampled;
        normalized = true;
        pipeline.push(`NormalizeIntensity: z-score${nonzero ? " of the non-zero voxels" : ""}${resampled ? ", after Spacing" : ""}`);
        break;
      }
      case "ScaleIntensity": {
        if (normalized) throw monaiError(where, `${what} is a second intensity scaling; bhsd runs one`);
        defaults(
          item,
          { factor: null, channel_wise: [false, true], dtype: [null, "$np.float32", "$numpy.float32", "float32"] },
          where,
          what,
        );
        const lo = item.minv ?? 0,
          hi = item.maxv ?? 1;
        if (!isNum(lo) || !isNum(hi)) throw monaiError(where, `${what}'s minv and maxv must be numbers (bhsd runs both given)`);
        config.normalization = { type: "minmax", min: lo, max: hi };
        config.normalizeAfterResampling = resampled;
        normalized = true;
        pipeline.push(`ScaleIntensity: the image's range to [${lo}, ${hi}]${resampled ? ", after Spacing" : ""}`);
        break;
      }
      case "CropForeground": {
        // (on the model grid once normalised: where it comes last but for type conversions)
        const rest = pre.slice(i + 1).map((t) => classOf(t)?.name);
        if (rest.some((n) => !["EnsureType", "ToTensor", "CastToType", "Identity", "ToDevice"].includes(n ?? "")))
          throw monaiError(where, `${what} before other transforms is not one bhsd runs (it crops the model grid once the rest is done)`);
        defaults(
          item,
          {
            select_fn: null,
            channel_indices: null,
            margin: 0,
            k_divisible: 1,
            return_coords: false,
            lazy: false,
          },
          where,
          what,
        );
        config.cropForeground = true;
        pipeline.push("CropForeground: the windows on the box of the voxels above 0");
        break;
      }
      default:
        throw monaiError(
          where,
          `${what} is a transform bhsd does not run; its preprocessing reads ${["LoadImage", "EnsureChannelFirst", "Orientation", "Spacing", "ScaleIntensityRange", "NormalizeIntensity", "ScaleIntensity", "CropForeground", "type conversions"].join(", ")}`,
        );
    }
  }
  if (!normalized) config.normalization = { type: "none" };

  const inf = await cfg.get("inferer");
  const ic = classOf(inf);
  if (!ic) throw monaiError(where, "no inferer (a SlidingWindowInferer)");
  if (ic.name !== "SlidingWindowInferer")
    throw monaiError(where, `the inferer ${String((inf as Item)._target_)}: bhsd runs SlidingWindowInferer`);
  const it = inf as Item;
  const roi = it.roi_size;
  if (!Array.isArray(roi) || roi.length !== 3 || !roi.every((v) => Number.isInteger(v) && v > 0))
    throw monaiError(where, `the inferer's roi_size must be three positive sizes (x, y, z), got ${brief(roi)}`);
  const ov = it.overlap ?? 0.25;
  const overlap = isNum(ov) ? [ov, ov, ov] : ov;
  if (!Array.isArray(overlap) || overlap.length !== 3 || !overlap.every((v) => isNum(v) && v >= 0 && v < 1))
    throw monaiError(where, `the inferer's overlap must be in [0, 1), got ${brief(ov)}`);
  const mode = it.mode ?? "constant";
  if (mode !== "constant" && mode !== "gaussian")
    throw monaiError(where, `the inferer's mode ${brief(mode)}: bhsd runs "constant" and "gaussian"`);
  const ss = it.sigma_scale ?? 0.125;
  const sigma = isNum(ss) ? [ss, ss, ss] : ss;
  if (!Array.isArray(sigma) || sigma.length !== 3 || !sigma.every((v) => isNum(v) && v > 0))
    throw monaiError(where, `the inferer's sigma_scale must be positive, got ${brief(ss)}`);
  defaults(
    it,
    { padding_mode: "constant", cval: 0, with_coord: false, roi_weight_map: null, process_fn: null, buffer_steps: null },
    where,
    "the inferer",
  );
  // (where and how it runs changes nothing bhsd computes)
  const inferKeys = [
    "_target_",
    "roi_size",
    "sw_batch_size",
    "overlap",
    "mode",
    "sigma_scale",
    "padding_mode",
    "cval",
    "sw_device",
    "device",
    "progress",
    "cache_roi_weight_map",
    "cpu_thresh",
    "buffer_steps",
    "buffer_dim",
    "with_coord",
    "roi_weight_map",
    "process_fn",
  ];
  for (const key of Object.keys(it))
    if (!inferKeys.includes(key))
      throw monaiError(where, `the inferer's argument "${key}" is not one bhsd knows (it knows ${inferKeys.slice(1).join(", ")})`);
  config.patchSize = roi as [number, number, number];
  config.slidingWindow = {
    type: "monai",
    overlap: overlap as [number, number, number],
    mode,
    sigmaScale: sigma as [number, number, number],
  };
  pipeline.push(`SlidingWindowInferer: ${roi.join(" × ")} (x, y, z), overlap ${brief(ov)}, ${mode}`);

  const post = transformsOf(await cfg.get("postprocessing"), where, "postprocessing");
  let softmax = false,
    argmax = false,
    inverted = false;
  let back: "bilinear" | "nearest" = "nearest";
  let keepLargest: KeepLargest | undefined;
  for (const [i, item] of post.entries()) {
    const c = classOf(item);
    const what = label(i, "postprocessing", item);
    if (!c) throw monaiError(where, `postprocessing ${i} is not a transform (${brief(item)?.slice(0, 120)})`);
    for (const [k, v] of Object.entries(item))
      if (
        expr(v) &&
        !["keys", "output_dir", "output_postfix", "meta_keys", "orig_meta_keys", "device"].includes(k) &&
        c.name !== "SaveImage"
      )
        throw monaiError(where, `${what}'s ${k} is an expression (${brief(v)}), which bhsd does not evaluate`);
    switch (c.name) {
      case "Activations": {
        for (const key of ["softmax", "sigmoid"])
          if (item[key] !== undefined && typeof item[key] !== "boolean")
            throw monaiError(where, `${what}'s ${key} must be true or false, got ${brief(item[key])}`);
        if (item.sigmoid === true || (item.other !== undefined && item.other !== null))
          throw monaiError(where, `${what}: bhsd runs a softmax over the classes (sigmoid or other activations are not)`);
        if (item.softmax === true) {
          if (argmax) throw monaiError(where, `${what} comes after AsDiscrete`);
          // (a softmax after Invert: the logits went back; the argmax is the same)
          if (!inverted) softmax = true;
          pipeline.push(`Activations: softmax${inverted ? " (after Invert: the argmax is the logits')" : ""}`);
        } else pipeline.push("Activations: none");
        break;
      }
      case "Invert": {
        if (argmax)
          throw monaiError(where, `${what} inverts labels (after AsDiscrete); bhsd inverts the network's output before its argmax`);
        const ni = item.nearest_interp ?? true;
        if (typeof ni !== "boolean") throw monaiError(where, `${what}'s nearest_interp must be true or false`);
        back = ni ? "nearest" : (spacingMode ?? "bilinear");
        inverted = true;
        pipeline.push(`Invert: the ${softmax ? "probabilities" : "logits"} back to the CT's grid${resampled ? `, ${back}` : ""}`);
        break;
      }
      case "AsDiscrete":
        if (item.argmax !== true) throw monaiError(where, `${what}: bhsd runs AsDiscrete(argmax=True)`);
        defaults(item, { to_onehot: null, threshold: null, rounding: null }, where, what);
        argmax = true;
        pipeline.push("AsDiscrete: argmax");
        break;
      case "KeepLargestConnectedComponent": {
        if (!argmax) throw monaiError(where, `${what} before AsDiscrete(argmax) is not one bhsd runs`);
        defaults(item, { is_onehot: [null, false], num_components: 1 }, where, what);
        const applied = item.applied_labels;
        const conn = item.connectivity ?? null;
        if (conn !== null && conn !== 1 && conn !== 2 && conn !== 3) throw monaiError(where, `${what}'s connectivity must be 1, 2 or 3`);
        const labels = applied === undefined || applied === null ? null : Array.isArray(applied) ? applied : [applied];
        if (labels && !labels.every((v) => Number.isInteger(v) && v >= 1 && v <= 255))
          throw monaiError(where, `${what}'s applied_labels must be label values 1…255`);
        const independent = item.independent ?? true;
        if (typeof independent !== "boolean") throw monaiError(where, `${what}'s independent must be true or false`);
        keepLargest = { labels: labels as number[] | null, independent, connectivity: conn === 1 ? 6 : conn === 2 ? 18 : 26 };
        pipeline.push(`KeepLargestConnectedComponent: ${labels ? labels.join(", ") : "every class"}${independent ? " each" : " together"}`);
        break;
      }
      case "SaveImage":
        pipeline.push("SaveImage: the caller writes the labels");
        break;
      case "EnsureType":
      case "ToTensor":
      case "ToNumpy":
      case "CastToType":
      case "CopyItems":
      case "DeleteItems":
      case "SqueezeDim":
      case "Identity":
      case "ToDevice":
        pipeline.push(`${c.name}: nothing to do`);
        break;
      default:
        throw monaiError(
          where,
          `${what} is a transform bhsd does not run; its postprocessing reads Activations, Invert, AsDiscrete, KeepLargestConnectedComponent, SaveImage`,
        );
    }
  }
  if (post.length && !argmax) throw monaiError(where, "the postprocessing has no AsDiscrete(argmax=True): bhsd segments into labels");
  // (without Invert, MONAI would leave the labels on the model's grid; bhsd always brings them back, nearest)
  if (!inverted && (resampled || oriented)) pipeline.push("(no Invert: the labels go back to the CT's grid all the same, nearest)");
  config.resampling = { type: "monai", image: spacingMode ?? "bilinear", back };
  config.exportValues = softmax ? "probabilities" : "logits";
  return { config, pipeline, ...(keepLargest ? { keepLargest } : {}) };
}
