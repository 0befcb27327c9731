/**
 * nnU-Net v1 trained-model folders (`nnUNet/3d_fullres/TaskXXX_Name/nnUNetTrainerV2__nnUNetPlansv2.1`),
 * the form most published nnU-Net models of 2019–2023 take: `plans.pkl`, and per fold
 * `model_final_checkpoint.model` (a PyTorch zip holding `state_dict`) beside
 * `model_final_checkpoint.model.pkl` (the trainer's `init` arguments, its class `name` and the
 * `plans` it ran with — the plans v1's predictor uses, as restore_model does).
 *
 * The network is nnUNetTrainerV2's Generic_UNet (network.ts builds it under v1's state_dict names);
 * the config is v1's pipeline, which differs from v2's in three places that change labels:
 * GenericPreprocessor resamples the CT before it normalises it (clip and z-score on the model's
 * grid); each window's forwards (and mirrors) are averaged as softmax probabilities, not logits; the
 * folds' probabilities are averaged and those probabilities are what the export resamples. The
 * pickles are read by parsePickle (./pickle.ts), which runs nothing: numpy arrays and scalars become numbers,
 * any global other than the few a v1 pickle holds refuses the file.
 */
import { existsSync, readdirSync } from "node:fs";
import { basename, join } from "node:path";
import { normalizeConfig, type ModelConfig, type Normalization } from "../config.js";
import { NNUNET_RESAMPLING } from "../resample.js";
import { MEDNEXT_V1_TRAINER } from "./mednext.js";
import { STUNET_TRAINER } from "./stunet.js";
import type { Architecture } from "./network.js";
import { CheckpointError, commonGlobal, NumpyDType, numpyScalar, typeName, unpickle } from "./checkpoint.js";
import { brief } from "../../is.js";
import { readSmallFile } from "../../io/small-file.js";

/** Largest v1 pickle read (plans.pkl lists every training case's sizes and spacings: a few MB for thousands). */
const MAX_PICKLE_BYTES = 64 * 2 ** 20;
/** Most numbers all numpy arrays of one pickle may hold together. */
const MAX_ARRAY_VALUES = 4_000_000;

/** v1's checkpoint file names: `checkpoint` "final" → model_final_checkpoint, "best" → model_best. */
export const V1_CHECKPOINT = { final: "model_final_checkpoint.model", best: "model_best.model" } as const;

/** Whether a trainer folder is nnU-Net v1's (plans.pkl, no plans.json). */
export function isNnunetV1Folder(folder: string): boolean {
  return !existsSync(join(folder, "plans.json")) && existsSync(join(folder, "plans.pkl"));
}

/** A numpy array as pickled (`_reconstruct(ndarray, (0,), b'b')`, then BUILD with its state). */
class NumpyArray {
  value: unknown;
  constructor(
    private readonly where: string,
    private readonly budget: { left: number },
  ) {}
  __setstate__(state: unknown) {
    // (version, shape, dtype, is_fortran, raw bytes — or a list, for dtype object)
    if (!Array.isArray(state) || state.length !== 5) throw new CheckpointError(`${this.where}: a numpy array with a malformed state`);
    const [, shape, dtype, fortran, raw] = state as [unknown, unknown, unknown, unknown, unknown];
    if (!Array.isArray(shape) || !shape.every((d) => Number.isSafeInteger(d) && (d as number) >= 0) || shape.length > 8)
      throw new CheckpointError(`${this.where}: a numpy array with shape ${brief(shape)}`);
    const dims = shape as number[];
    const n = dims.reduce((a, b) => a * b, 1);
    // (the nested lists built below, zero-length axes or not: [2^31, 0] is 2^31 empty lists)
    const cells = dims.reduce((a, b) => a * Math.max(b, 1), 1);
    if (cells > this.budget.left)
      throw new CheckpointError(
        `${this.where}: numpy arrays of more than ${MAX_ARRAY_VALUES} values in all, more than nnU-Net's plans hold`,
      );
    this.budget.left -= cells;
    let flat: unknown[];
    if (Array.isArray(raw)) {
      if (raw.length !== n) throw new CheckpointError(`${this.where}: a numpy object array of ${raw.length} items for shape [${dims}]`);
      flat = raw;
    } else if (raw instanceof Uint8Array && dtype instanceof NumpyDType) {
      if (Array.isArray(dtype.state) && dtype.state[1] === ">")
        throw new CheckpointError(`${this.where}: a big-endian numpy array (${dtype.str}), which nnU-Net's plans never hold`);
      const size = Number(/\d+$/.exec(dtype.str)?.[0] ?? NaN);
      if (!(size > 0) || raw.byteLength !== n * size)
        throw new CheckpointError(`${this.where}: a numpy array of dtype ${dtype.str} with ${raw.byteLength} bytes for shape [${dims}]`);
      flat = [];
      for (let i = 0; i < n; i++) {
        const v = numpyScalar(dtype, raw.subarray(i * size, (i + 1) * size));
        if (v === undefined)
          throw new CheckpointError(`${this.where}: a numpy array of dtype ${dtype.str}, which nnU-Net's plans never hold`);
        flat.push(v);
      }
    } else throw new CheckpointError(`${this.where}: a numpy array whose data is ${typeName(raw)}`);
    // nested lists in C order (a Fortran-ordered array's bytes run along its first axis fastest)
    const strides = dims.map((_, k) =>
      fortran === true ? dims.slice(0, k).reduce((a, b) => a * b, 1) : dims.slice(k + 1).reduce((a, b) => a * b, 1),
    );
    const build = (k: number, off: number): unknown =>
      k === dims.length ? flat[off] : Array.from({ length: dims[k]! }, (_, i) => build(k + 1, off + i * strides[k]!));
    this.value = build(0, 0);
  }
}

/**
 * A v1 pickle (plans.pkl, model_*.model.pkl): dicts as Maps, numpy arrays as nested arrays, numpy
 * scalars as numbers. (Boxed: a pickle can give a list a `then` property, which an async function's
 * result would be taken for a promise by.)
 */
export async function readV1Pickle(path: string): Promise<{ value: unknown }> {
  const where = `nnU-Net v1 ${basename(path)}`;
  let bytes: Uint8Array;
  try {
    bytes = await readSmallFile(path, { maxBytes: MAX_PICKLE_BYTES, what: "nnU-Net's plans" });
  } catch (e) {
    throw new Error(`${where}: cannot read ${path}: ${(e as Error).message}`, { cause: e });
  }
  // every list, dict and numpy array counts against one budget before it is walked or built: a
  // BUILD can set a list's length to 2^31 with no byte behind it
  const budget = { left: MAX_ARRAY_VALUES + bytes.length };
  const take = (n: number) => {
    if (n > budget.left) throw new CheckpointError(`${where}: lists, dicts and arrays of more than ${MAX_ARRAY_VALUES} items in all`);
    budget.left -= n;
  };
  const root = unpickle(bytes, where, "nnU-Net v1's plans", "not a readable pickle", (module, name) => {
    const fqn = `${module}.${name}`;
    const common = commonGlobal(fqn, where, take);
    if (common) return common;
    switch (fqn) {
      case "numpy.core.multiarray.scalar":
      case "numpy._core.multiarray.scalar":
        return (dtype: unknown, b: unknown) => {
          const v = numpyScalar(dtype, b);
          if (v === undefined) throw new CheckpointError(`${where}: a numpy scalar of a type nnU-Net's plans never hold`);
          return v;
        };
      case "numpy.core.multiarray._reconstruct":
      case "numpy._core.multiarray._reconstruct":
        return () => new NumpyArray(where, budget);
      case "numpy.ndarray":
        return "numpy.ndarray";
    }
    throw new CheckpointError(
      `${where}: the pickle names the Python global "${fqn}", which nnU-Net v1's plans never hold; the file is refused (nothing in it was run)`,
    );
  });
  // (each list and dict once: a pickle's memo can name one object many times, and lists of lists
  // that each name the one below twice are 2^depth visits)
  const seen = new Set<unknown>();
  const plain = (v: unknown, depth: number): unknown => {
    if (depth > 64) throw new CheckpointError(`${where}: nested more than 64 deep`);
    if (v instanceof NumpyArray) return plain(v.value, depth + 1);
    if (seen.has(v)) return v;
    if (v instanceof Map || Array.isArray(v)) {
      seen.add(v);
      take(v instanceof Map ? v.size : v.length);
    }
    if (v instanceof Map) {
      for (const [k, x] of v) v.set(k, plain(x, depth + 1));
      return v;
    }
    if (Array.isArray(v)) {
      for (let i = 0; i < v.length; i++) v[i] = plain(v[i], depth + 1);
      return v;
    }
    return v;
  };
  return { value: plain(root, 0) };
}

/**
 * Trainers whose network and inference are nnUNetTrainerV2's: v1.7.1's own schedule, loss and
 * augmentation variants, by exact name (each checked against v1's source), and the `_<N>epochs`
 * ones users make. Any other is refused by name (its network may differ in what the weights do not
 * show: a nonlinearity, group norm under `instnorm`); `trainer: "nnUNetTrainerV2"` loads it as
 * nnUNetTrainerV2 all the same. `_BN` and `_DA3` build batch norm, which the weights' running
 * statistics show.
 */
const V2_LIKE = new Set(
  (
    "nnUNetTrainerV2 nnUNetTrainerV2_Adam nnUNetTrainerV2_Adam_ReduceOnPlateau nnUNetTrainerV2_Adam_nnUNetTrainerlr " +
    "nnUNetTrainerV2_BN nnUNetTrainerV2_DA2 nnUNetTrainerV2_DA3 nnUNetTrainerV2_DA5 nnUNetTrainerV2_Loss_CE " +
    "nnUNetTrainerV2_Loss_CEGDL nnUNetTrainerV2_Loss_Dice nnUNetTrainerV2_Loss_DiceCE_noSmooth nnUNetTrainerV2_Loss_DiceTopK10 " +
    "nnUNetTrainerV2_Loss_Dice_LR1en3 nnUNetTrainerV2_Loss_Dice_squared nnUNetTrainerV2_Loss_DicewithBG " +
    "nnUNetTrainerV2_Loss_DicewithBG_LR1en3 nnUNetTrainerV2_Loss_MCC nnUNetTrainerV2_Loss_MCCnoBG nnUNetTrainerV2_Loss_TopK10 " +
    "nnUNetTrainerV2_SGD_ReduceOnPlateau nnUNetTrainerV2_SGD_fixedSchedule nnUNetTrainerV2_SGD_fixedSchedule2 " +
    "nnUNetTrainerV2_SGD_lr1en1 nnUNetTrainerV2_SGD_lr1en3 nnUNetTrainerV2_cycleAtEnd nnUNetTrainerV2_cycleAtEnd2 " +
    "nnUNetTrainerV2_fp32 nnUNetTrainerV2_momentum09 nnUNetTrainerV2_momentum095 nnUNetTrainerV2_momentum098 " +
    "nnUNetTrainerV2_momentum09in2D nnUNetTrainerV2_noDeepSupervision nnUNetTrainerV2_noMirroring " +
    "nnUNetTrainerV2_reduceMomentumDuringTraining nnUNetTrainerV2_warmup"
  ).split(" "),
);
/** The schedule variants users make by the thousand (nnUNetTrainerV2_250epochs …): the name says it. */
const EPOCHS_VARIANT = /^nnUNetTrainerV2_\d+epochs$/;

const mapGet = (m: unknown, k: unknown): unknown => (m instanceof Map ? (m.get(k) ?? m.get(String(k))) : undefined);

/** What a v1 fold's `.model.pkl` says: the trainer, its stage and its plans. */
export interface V1Info {
  trainer: string;
  stage: number | null;
  plans: Map<unknown, unknown>;
  /** A cascade's (nnUNetTrainerV2CascadeFullRes's init_args[8]): the trainer of its 3d_lowres stage. */
  previousTrainer: string | null;
}

/** v1's cascade trainer: Generic_UNet as nnUNetTrainerV2's, with the previous stage's classes as input channels. */
export const V1_CASCADE_TRAINER = "nnUNetTrainerV2CascadeFullRes";

export async function readV1ModelPkl(path: string): Promise<V1Info> {
  const where = `nnU-Net v1 ${basename(path)}`;
  const { value: info } = await readV1Pickle(path);
  if (!(info instanceof Map)) throw new Error(`${where}: the pickle is ${typeName(info)}, not v1's {init, name, plans}`);
  const name = info.get("name");
  if (typeof name !== "string") throw new Error(`${where}: no trainer "name"`);
  const plans = info.get("plans");
  if (!(plans instanceof Map)) throw new Error(`${where}: "plans" is ${typeName(plans)}, not the plans dict`);
  // nnUNetTrainer's __init__(plans_file, fold, output_folder, dataset_directory, batch_dice, stage, …)
  const init = info.get("init");
  const s = Array.isArray(init) ? init[5] : undefined;
  const stage = Number.isSafeInteger(s) && (s as number) >= 0 ? (s as number) : null;
  const pt = name === V1_CASCADE_TRAINER && Array.isArray(init) ? init[8] : undefined;
  const previousTrainer =
    typeof pt === "string" && /^[A-Za-z0-9_]{1,100}$/.test(pt) ? pt : name === V1_CASCADE_TRAINER ? "nnUNetTrainerV2" : null;
  return { trainer: name, stage, plans, previousTrainer };
}

/** Folds with the checkpoint and its .pkl (`fold_K`; v1 has no fold "all" folder of another name). */
export function v1FoldsIn(folder: string, file: string): (number | "all")[] {
  const out: (number | "all")[] = [];
  for (const d of readdirSync(folder)) {
    const m = /^fold_(\d+|all)$/.exec(d);
    if (m && existsSync(join(folder, d, file)) && existsSync(join(folder, d, `${file}.pkl`)))
      out.push(m[1] === "all" ? "all" : Number(m[1]));
  }
  return out.sort((a, b) => (a === "all" ? 1 : b === "all" ? -1 : a - b));
}

function intVector(v: unknown, n: number | null, what: string, where: string): number[] {
  if (!Array.isArray(v) || (n !== null && v.length !== n) || !v.every((x) => Number.isSafeInteger(x) && (x as number) > 0))
    throw new Error(`${where}: ${what} must be ${n ?? "a list of"} positive integers, got ${brief(v)}`);
  return v as number[];
}

function numVector(v: unknown, n: number, what: string, where: string): number[] {
  if (!Array.isArray(v) || v.length !== n || !v.every((x) => typeof x === "number" && x > 0 && Number.isFinite(x)))
    throw new Error(`${where}: ${what} must be ${n} positive numbers, got ${brief(v)}`);
  return v as number[];
}

/** The v1 model: Generic_UNet's architecture, the segment() config, the configuration's name. */
export interface V1Model {
  /** Generic_UNet's architecture from the plans (for MedNeXt: its dims, channels and classes only). */
  architecture: Architecture;
  /**
   * The network the trainer builds: Generic_UNet from the plans, MedNeXt (nnunet_mednext's trainers)
   * from the weights, or STU-Net (STUNetTrainer…) from the weights and the plans' poolings.
   */
  network: "Generic_UNet" | "MedNeXt" | "STUNet";
  config: ModelConfig;
  configuration: string;
  mirrorAxes: number[];
}

/**
 * Reads a v1 plans dict for one stage (nnUNetTrainerV2.initialize_network and GenericPreprocessor /
 * PreprocessorFor2D): the network, then the config segment() runs with. `classNames`: label value →
 * name where the folder has a dataset.json, else "label N".
 */
export function fromV1Plans(
  plans: Map<unknown, unknown>,
  stageGiven: number | null,
  trainer: string,
  classNames: Record<string, string> | null,
  where: string,
): V1Model {
  const perStage = plans.get("plans_per_stage");
  if (!(perStage instanceof Map) || perStage.size < 1) throw new Error(`${where}: plans have no plans_per_stage`);
  const stages = [...perStage.keys()].filter((k): k is number => Number.isSafeInteger(k)).sort((a, b) => a - b);
  const stage = stageGiven ?? stages[stages.length - 1]!;
  const sp = perStage.get(stage);
  if (!(sp instanceof Map)) throw new Error(`${where}: plans_per_stage has no stage ${stage} (it has ${stages.join(", ")})`);
  const patch = intVector(sp.get("patch_size"), null, `plans_per_stage[${stage}].patch_size`, where);
  if (patch.length !== 2 && patch.length !== 3) throw new Error(`${where}: patch_size ${brief(patch)} is neither 2-D nor 3-D`);
  const dims = patch.length as 2 | 3;
  // (MedNeXt's and STU-Net's trainers build their own networks, whose shapes the weights give)
  const mednext = MEDNEXT_V1_TRAINER.test(trainer),
    stunet = STUNET_TRAINER.test(trainer);
  const pools = sp.get("pool_op_kernel_sizes");
  // STU-Net's trainer pads the poolings it takes to five in the plans' own list, which its
  // checkpoint's .pkl then saves beside the n + 1 kernels it ignores (its kernels are 3s)
  const kernels =
    stunet && Array.isArray(pools) ? Array.from({ length: pools.length + 1 }, () => Array(dims).fill(3)) : sp.get("conv_kernel_sizes");
  if (!Array.isArray(pools) || !Array.isArray(kernels) || kernels.length !== pools.length + 1 || pools.length < 1 || pools.length > 11)
    throw new Error(`${where}: plans_per_stage[${stage}] needs pool_op_kernel_sizes (n) and conv_kernel_sizes (n + 1)`);
  const pool = pools.map((p, i) => intVector(p, dims, `pool_op_kernel_sizes[${i}]`, where));
  if (pool.some((p) => p.some((x) => x > 8)) || patch.some((x) => x > 4096))
    throw new Error(`${where}: pool_op_kernel_sizes past 8 or patch_size past 4096 (${brief([pool, patch])}), which no v1 plan holds`);
  const kern = kernels.map((k, i) => intVector(k, dims, `conv_kernel_sizes[${i}]`, where));
  // Generic_UNet pads a kernel of 3 by 1 and any other by 0: only 1 and 3 keep the size
  if (!mednext && !stunet && kern.some((k) => k.some((x) => x !== 1 && x !== 3)))
    throw new Error(`${where}: conv_kernel_sizes ${brief(kern)}: Generic_UNet keeps sizes with kernels of 1 and 3 only`);
  const base = plans.get("base_num_features");
  if (!Number.isSafeInteger(base) || (base as number) < 1) throw new Error(`${where}: base_num_features ${brief(base)}`);
  const cps = plans.get("conv_per_stage") ?? 2;
  if (!Number.isSafeInteger(cps) || (cps as number) < 1 || (cps as number) > 8) throw new Error(`${where}: conv_per_stage ${brief(cps)}`);
  const nc = plans.get("num_classes");
  if (!Number.isSafeInteger(nc) || (nc as number) < 1 || (nc as number) > 254)
    throw new Error(`${where}: num_classes ${brief(nc)} (the foreground classes, 1…254)`);
  const modalities = plans.get("modalities");
  const nIn = modalities instanceof Map ? modalities.size : (plans.get("num_modalities") as number);
  if (!Number.isSafeInteger(nIn) || nIn < 1 || nIn > 64) throw new Error(`${where}: modalities ${brief(nIn)}`);
  const cascade = trainer === V1_CASCADE_TRAINER;
  if (!cascade && !mednext && !stunet && !V2_LIKE.has(trainer) && !EPOCHS_VARIANT.test(trainer))
    throw new Error(
      `${where}: trainer ${trainer} is not nnUNetTrainerV2 or one of its schedule/loss variants, nor MedNeXt's (nnUNetTrainerV2_MedNeXt_…) or STU-Net's (STUNetTrainer…), whose networks bhsd rebuilds; if its network is nnUNetTrainerV2's, load it with { trainer: "nnUNetTrainerV2" }, if MedNextV1's with { trainer: "nnUNetTrainerV2_MedNeXt" }, if STUNet's with { trainer: "STUNetTrainer" }`,
    );
  // nnUNetTrainerV2.initialize_network: Generic_UNet(…, num_classes + 1, conv_per_stage, feat ×2, …,
  // InstanceNorm eps 1e-5 affine, LeakyReLU 0.01, convolutional pooling and upsampling), 320
  // features at most in 3-D and 480 in 2-D
  const maxF = dims === 3 ? 320 : 480;
  const n = pool.length + 1;
  const features = Array.from({ length: n }, (_, i) => Math.min(Math.round((base as number) * 2 ** i), maxF));
  const ones = Array<number>(dims).fill(1);
  const twoPart = Math.max(1, (cps as number) - 1) + 1;
  const architecture: Architecture = {
    networkClass: "Generic_UNet",
    dims,
    // (a cascade's network takes the previous stage's foreground classes as channels after the image's)
    inputChannels: nIn + (cascade ? (nc as number) : 0),
    numClasses: (nc as number) + 1,
    nStages: n,
    features,
    kernels: kern,
    strides: [ones, ...pool],
    perStage: Array.from({ length: n }, (_, i) => (i < n - 1 ? (cps as number) : twoPart)),
    perStageDecoder: Array<number>(n - 1).fill(twoPart),
    convBias: true,
    norm: { eps: 1e-5, affine: true, runningStats: /_BN$/.test(trainer) },
    nonlin: { op: "LeakyRelu", alpha: 0.01 },
    nonlinFirst: false,
    dropout: false,
    stemChannels: features[0]!,
  };

  // transpose_forward: the network's axes as a permutation of the CT's (z, y, x)
  const tf = plans.get("transpose_forward") ?? [0, 1, 2];
  if (!Array.isArray(tf) || tf.length !== 3 || [...tf].sort().join() !== "0,1,2")
    throw new Error(`${where}: transpose_forward ${brief(tf)} is not a permutation of 0, 1, 2`);
  const perm = tf as [number, number, number];
  // current_spacing: the stage's target spacing, in the network's (transposed) order
  const cur = numVector(sp.get("current_spacing"), 3, `plans_per_stage[${stage}].current_spacing`, where);
  const targetZyx = [0, 0, 0];
  perm.forEach((p, i) => (targetZyx[p] = cur[i]!));

  // GenericPreprocessor's normalisation of the (single) channel, on the resampled grid
  if (nIn !== 1) throw new Error(`${where}: ${nIn} input modalities; bhsd's segment() feeds one channel (a CT)`);
  const scheme = mapGet(plans.get("normalization_schemes"), 0);
  const useMask = mapGet(plans.get("use_mask_for_norm"), 0) === true;
  let normalization: Normalization;
  if (scheme === "CT") {
    const ip = mapGet(mapGet(plans.get("dataset_properties"), "intensityproperties"), 0);
    const num = (k: string) => {
      const v = mapGet(ip, k);
      if (typeof v !== "number" || !Number.isFinite(v)) throw new Error(`${where}: intensityproperties[0].${k} is ${brief(v)}`);
      return v;
    };
    normalization = { type: "ct", lower: num("percentile_00_5"), upper: num("percentile_99_5"), mean: num("mean"), std: num("sd") };
  } else if (scheme === "noNorm") normalization = { type: "none" };
  else if (scheme === "CT2") throw new Error(`${where}: normalization scheme CT2 (per-case statistics of the clipped CT) is not built`);
  else normalization = { type: "zscore" };
  // (v1 masks the normalisation by the resampled crop mask; nnU-Net never asks it for a CT)
  if (useMask) throw new Error(`${where}: use_mask_for_norm on the resampled grid (v1's, for non-CT images) is not built`);
  const pre = plans.get("preprocessor_name");
  if (pre !== undefined && pre !== (dims === 2 ? "PreprocessorFor2D" : "GenericPreprocessor"))
    throw new Error(
      `${where}: preprocessor ${brief(pre)} with a ${dims}-D patch; bhsd follows GenericPreprocessor (3-D) and PreprocessorFor2D (2-D)`,
    );
  // v1's predictor takes the export's resampling from the plans where they name one
  const resampling = structuredClone(NNUNET_RESAMPLING) as Extract<typeof NNUNET_RESAMPLING, { type: "nnunet" }>;
  const ep = plans.get("segmentation_export_params");
  if (ep !== undefined) {
    const force = mapGet(ep, "force_separate_z"),
      order = mapGet(ep, "interpolation_order"),
      orderZ = mapGet(ep, "interpolation_order_z");
    const ok = (v: unknown) => Number.isInteger(v) && (v as number) >= 0 && (v as number) <= 5;
    if (!(force == null || typeof force === "boolean") || !ok(order) || !ok(orderZ))
      throw new Error(`${where}: segmentation_export_params ${brief([force, order, orderZ])} are not a force_separate_z and two orders`);
    resampling.probabilities = {
      ...resampling.probabilities,
      order: order as number,
      orderZ: orderZ as number,
      forceSeparateZ: (force ?? null) as boolean | null,
    };
  }

  const classes: Record<string, string> = {};
  for (let k = 0; k <= (nc as number); k++) classes[String(k)] = classNames?.[String(k)] ?? (k === 0 ? "background" : `label ${k}`);
  const nStages = stages.length;
  const configuration = cascade ? "3d_cascade_fullres" : dims === 2 ? "2d" : nStages > 1 && stage === 0 ? "3d_lowres" : "3d_fullres";
  if (cascade && (dims !== 3 || stage === 0))
    throw new Error(`${where}: a v1 cascade of a ${dims}-D stage ${stage}: v1 cascades the 3-D full-resolution stage`);
  // v1's predictor resizes the whole CT's post-processed first-stage labels to the cropped grid
  // (resize_segmentation, order 1, all axes at once)
  if (cascade) resampling.seg = { order: 1, orderZ: 0, forceSeparateZ: false, anisotropyThreshold: 3 };
  // v1's mirror axes: every axis of the network (nnUNetTrainerV2.setup_DA_params), none for _noMirroring
  const mirrorAxes = /_noMirroring$/.test(trainer) ? [] : dims === 2 ? [1, 2] : [0, 1, 2];
  const config = normalizeConfig(
    {
      classes,
      spatialDims: dims,
      patchSize: dims === 2 ? patch : patch,
      // a 2-D stage keeps each slice's spacing along the network's first axis (PreprocessorFor2D)
      targetSpacing: dims === 2 ? [cur[1]!, cur[2]!] : targetZyx,
      normalization,
      transposeForward: perm,
      stepSize: 0.5,
      resampling,
      cropToNonzero: true,
      normalizeAfterResampling: true,
      aggregate: "probabilities",
      mirrorAxes,
      ...(cascade ? { previousStage: { cropped: false, postprocessed: true } } : {}),
    },
    "nnunet",
  );
  return { architecture, network: mednext ? "MedNeXt" : stunet ? "STUNet" : "Generic_UNet", config, configuration, mirrorAxes };
}
