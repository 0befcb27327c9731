/**
 * loadNnunet: an nnU-Net v2 trained-model folder (`…/DatasetXXX/Trainer__Plans__Configuration`)
 * run directly — no Python, no ONNX export.
 *
 * Reads `dataset.json`, `plans.json` and `fold_K/checkpoint_final.pth` (or `_best`), rebuilds the
 * network the plans describe (network.ts), checks the checkpoint's `network_weights` against it
 * name by name and shape by shape, and runs it on the engine as an in-memory ONNX graph, so the
 * executor's fusions and every backend apply. The model has the interface segment() uses: a
 * config derived from the plans (patch, spacing, CTNormalization, transpose_forward, the
 * checkpoint's inference_allowed_mirroring_axes, the labels) and `run`, which gives one fold's
 * logits or the fold ensemble. As nnU-Net v2's predictor (predict_logits_from_preprocessed_data),
 * the ensemble is the mean of the folds' logits; the softmax follows in segment(), after the
 * windows and mirrors are averaged (all linear, so averaging per window is the same as nnU-Net's
 * per-fold sliding windows averaged afterwards). `ensemble: "softmax"` gives instead the mean of
 * the folds' softmax (as nnU-Net v1 did), returned as its logarithm so that a softmax recovers it.
 *
 * nnU-Net v1 folders (`plans.pkl`, `fold_K/model_final_checkpoint.model`) load the same way, with
 * v1's network and pipeline (v1.ts).
 */
import { existsSync, readdirSync } from "node:fs";
import { stat } from "node:fs/promises";
import { basename, dirname, join, resolve } from "node:path";
import { invalidParameterError, optionsObject, brief } from "../../is.js";
import { parseJsonObject, readSmallFile } from "../../io/small-file.js";
import type { Tensor } from "../../types.js";
import { fromNnunet, normalizeConfig, type ModelConfig } from "../config.js";
import { checkPrecision, type Precision } from "../../backends/precision.js";
import { activeBackend } from "../../backends/index.js";
import type { Model, RunStats } from "../model.js";
import { CheckpointError, openCheckpoint, typeName, type Checkpoint } from "./checkpoint.js";
import { modelFromStateDict } from "../state-dict.js";
import { architectureFromPlans, buildNetwork, type Architecture, type NetworkGraph } from "./network.js";
import { buildMedNeXtV1, mednextV1Architecture, type MedNeXtV1Architecture } from "./mednext.js";
import { buildSTUNet, isSTUNet, stunetArchitecture, stunetStrides, type STUNetArchitecture } from "./stunet.js";
import { buildPrimus, isPrimus, primusArchitecture, type PrimusArchitecture } from "./primus.js";
import { buildUMamba, isUMamba, umambaArchitecture, type UMambaArchitecture } from "./umamba.js";
import { readNnunetPostprocessing, readNnunetV1Postprocessing } from "./postprocessing.js";
import { fromV1Plans, isNnunetV1Folder, readV1ModelPkl, V1_CASCADE_TRAINER, V1_CHECKPOINT, v1FoldsIn } from "./v1.js";
import type { CleanupOptions } from "../../ops/components.js";

export { CheckpointError } from "./checkpoint.js";
export type { Architecture } from "./network.js";
export type { PrimusArchitecture } from "./primus.js";
export type { MedNeXtV1Architecture } from "./mednext.js";
export type { STUNetArchitecture } from "./stunet.js";
export type { UMambaArchitecture } from "./umamba.js";

export type Fold = number | "all";

export interface LoadNnunetOptions {
  /** Folds to load (`fold_K` folders); default every fold folder that has the checkpoint, as nnU-Net. */
  folds?: Fold[];
  /** `checkpoint_final.pth` (default) or `checkpoint_best.pth` (v1: `model_final_checkpoint.model` or `model_best.model`). */
  checkpoint?: "final" | "best";
  /** How folds are combined: "logits" (the mean of the logits: nnU-Net v2, the default) or "softmax" (the mean of the probabilities: nnU-Net v1, the default of a v1 folder). */
  ensemble?: "logits" | "softmax";
  /** Largest checkpoint file accepted (bytes). Default 4 GiB. */
  maxCheckpointBytes?: number;
  /** The arithmetic of the folds' convolutions, as loadModel's `precision`. */
  precision?: Precision;
  /**
   * nnU-Net's post-processing (`postprocessing.pkl` or `.json`, as `nnUNetv2_find_best_configuration`
   * writes it) as the model config's `postprocessing`, which segment() applies unless given
   * `cleanup`: a path, or false for none. Default: the folder's
   * `crossval_results_folds_<folds>/postprocessing.pkl` (or `.json`) for the folds loaded, where it exists.
   */
  postprocessing?: string | false;
  /**
   * nnU-Net v1 only: the trainer whose network to build, where the folder's trainer is one bhsd
   * does not know by name: "nnUNetTrainerV2" (Generic_UNet from the plans) or
   * "nnUNetTrainerV2_MedNeXt" (MedNeXt as MIC-DKFZ's fork builds it, from the weights) or
   * "STUNetTrainer" (STU-Net, from the weights and the plans' poolings).
   */
  trainer?: "nnUNetTrainerV2" | "nnUNetTrainerV2_MedNeXt" | "STUNetTrainer";
  /**
   * A Primus network's number of attention heads, which its checkpoint does not hold: needed for a
   * trainer other than nnU-Net's own nnUNet_Primus_{S,B,M,L}_Trainer (whose heads bhsd knows).
   */
  heads?: number;
  /**
   * A cascade's second stage (`3d_cascade_fullres`): its first stage, whose labels the network takes
   * as input channels — a loaded model, or its folder. Default: the sibling folder of the plans'
   * `previous_stage` (`…__3d_lowres` beside `…__3d_cascade_fullres`), loaded with every fold it has.
   */
  previousStage?: string | NnunetModel;
}

const prod = (xs: readonly number[]) => xs.reduce((a, b) => a * b, 1);

/** The network a folder's trainer builds: from the plans (Generic_UNet, PlainConvUNet, ResEnc), or its own. */
export type NnunetArchitecture = Architecture | PrimusArchitecture | MedNeXtV1Architecture | STUNetArchitecture | UMambaArchitecture;

/** The one input size a network runs, where it has one: Primus's patch; U-Mamba's where a Mamba takes channels as tokens. */
function fixedInput(a: NnunetArchitecture): number[] | null {
  if (a.networkClass === "Primus") return a.inputSize;
  if (a.networkClass === "UMamba" && a.mamba.some((m) => m?.channelTokens)) return a.patch;
  return null;
}

/** nnU-Net model folder loaded for inference: segment() takes it where it takes a Model. */
export class NnunetModel {
  readonly name: string;
  readonly config: ModelConfig;
  readonly folder: string;
  readonly folds: Fold[];
  readonly configuration: string;
  readonly trainerName: string;
  /** The nnU-Net major version whose folder this is (1: plans.pkl and v1's pipeline; 2: plans.json). */
  readonly version: 1 | 2;
  readonly architecture: NnunetArchitecture;
  readonly ensemble: "logits" | "softmax";
  /** The engine's model of each fold, in `folds` order. */
  readonly foldModels: Model[];
  /** A cascade's first stage: segment() runs it and gives its labels to this model as input channels. */
  readonly previousStage?: NnunetModel;
  private readonly ownsPreviousStage: boolean;
  /** Statistics of the last run (peak of any fold's forward, time of all folds). */
  lastRun: RunStats | undefined;
  private readonly divisor: [number, number, number];

  constructor(init: {
    name: string;
    config: ModelConfig;
    folder: string;
    folds: Fold[];
    configuration: string;
    trainerName: string;
    version?: 1 | 2;
    previousStage?: NnunetModel;
    ownsPreviousStage?: boolean;
    architecture: NnunetArchitecture;
    ensemble: "logits" | "softmax";
    foldModels: Model[];
    divisor: [number, number, number];
  }) {
    this.name = init.name;
    this.config = init.config;
    this.folder = init.folder;
    this.folds = init.folds;
    this.configuration = init.configuration;
    this.trainerName = init.trainerName;
    this.version = init.version ?? 2;
    if (init.previousStage) this.previousStage = init.previousStage;
    this.ownsPreviousStage = init.ownsPreviousStage ?? false;
    this.architecture = init.architecture;
    this.ensemble = init.ensemble;
    this.foldModels = init.foldModels;
    this.divisor = init.divisor;
  }

  /**
   * The input run() takes, as a loaded ONNX model declares it: its channels, and the plans' patch
   * where the network runs that size only (Primus; U-Mamba with channels as tokens) — so that
   * segment() checks a replaced config against them before it preprocesses anything.
   */
  get inputs(): { name: string; shape: (number | string)[] }[] {
    const a = this.architecture;
    const fixed = fixedInput(a);
    const spatial = a.dims === 2 ? ["H", "W"] : ["D", "H", "W"];
    return [{ name: "input", shape: fixed ? [1, a.inputChannels, ...fixed] : ["N", a.inputChannels, ...spatial] }];
  }

  private check(input: Tensor) {
    const s = input?.shape;
    const dims = this.architecture.dims;
    if (!input || !(input.data instanceof Float32Array) || !Array.isArray(s) || s.length !== dims + 2 || prod(s) !== input.data.length)
      throw invalidParameterError(
        "input",
        `a float32 tensor ${dims === 2 ? "[N, C, H, W] (a 2d configuration)" : "[N, C, D, H, W]"}`,
        input,
      );
    if (s[1] !== this.architecture.inputChannels)
      throw new RangeError(`Expected ${this.architecture.inputChannels} input channel(s) for input but received shape [${s.join(", ")}]`);
    const a = this.architecture;
    const fixed = fixedInput(a);
    if (fixed) {
      // (Primus: its position embeddings and rotary tables are one per token of the plans' patch;
      // U-Mamba: a Mamba with channels as tokens takes the patch's voxels as each token's values)
      if (s[0] !== 1 || fixed.some((d, k) => s[2 + k] !== d))
        throw new RangeError(
          `Expected shape [1, ${a.inputChannels}, ${fixed.join(", ")}] (${a.networkClass} runs the plans' patch, one at a time) for input but received shape [${s.join(", ")}]`,
        );
      return;
    }
    const div = this.divisor.slice(3 - dims);
    if (div.some((d, k) => s[2 + k]! % d !== 0))
      throw new RangeError(
        `Expected spatial sizes that are multiples of [${div.join(", ")}] (the network's total strides) for input but received shape [${s.join(", ")}]`,
      );
  }

  /** Each fold's logits, in `folds` order. */
  async runFolds(input: Tensor, options?: { signal?: AbortSignal }): Promise<Tensor[]> {
    this.check(input);
    const out: Tensor[] = [];
    let peak = 0,
      ms = 0,
      concats = 0,
      shapeCached = 0;
    const opMs: Record<string, number> = {};
    const nodeMs: RunStats["nodeMs"] = [];
    for (const m of this.foldModels) {
      const y = await (m.run as (x: Tensor, o?: { signal?: AbortSignal }) => Promise<Tensor>)(input, options);
      // the engine may hand its buffers to the next run: keep a copy when more folds follow
      out.push(this.foldModels.length > 1 ? { data: Float32Array.from(y.data), shape: [...y.shape] } : y);
      const r = m.lastRun;
      if (r) {
        peak = Math.max(peak, r.peakBytes);
        ms += r.ms;
        concats += r.concatsInPlace;
        shapeCached += r.shapeNodesCached;
        for (const [k, v] of Object.entries(r.opMs)) opMs[k] = (opMs[k] ?? 0) + v;
        nodeMs.push(...r.nodeMs);
      }
    }
    this.lastRun = {
      peakBytes: peak,
      ms,
      opMs,
      nodeMs,
      concatsInPlace: concats,
      shapeNodesCached: shapeCached,
      shapes: this.foldModels[0]?.lastRun?.shapes ?? new Map(),
    };
    return out;
  }

  /**
   * One fold's logits, or the folds' ensemble (see `ensemble`). Input [N, C, D, H, W]; output
   * [N, classes, D, H, W] ([N, C, H, W] → [N, classes, H, W] for a 2d configuration).
   */
  async run(input: Tensor, options?: { signal?: AbortSignal }): Promise<Tensor> {
    const ys = await this.runFolds(input, options);
    if (ys.length === 1) return ys[0]!;
    const shape = ys[0]!.shape;
    const out = new Float32Array(ys[0]!.data.length);
    const inv = 1 / ys.length;
    if (this.ensemble === "logits") {
      for (const y of ys) for (let i = 0; i < out.length; i++) out[i]! += y.data[i]! * inv;
      return { data: out, shape };
    }
    // mean of softmax over the class axis (the backend's, on each fold's copy), as log-probabilities
    const [N, C] = shape as [number, number];
    const S = out.length / (N * C);
    for (const y of ys) {
      await activeBackend().softmax(y.data, N, C, S, y.data);
      for (let i = 0; i < out.length; i++) out[i]! += y.data[i]! * inv;
    }
    for (let i = 0; i < out.length; i++) out[i] = Math.log(out[i]!);
    return { data: out, shape };
  }

  /** Bytes of the folds' weights as loaded (and a cascade's first stage's, where this model holds it). */
  get weightBytes(): number {
    const own = this.foldModels.reduce((a, m) => a + m.weightBytes, 0);
    return own + (this.ownsPreviousStage && this.previousStage ? this.previousStage.weightBytes : 0);
  }

  /** Releases the folds' models. */
  dispose() {
    for (const m of this.foldModels) (m as { dispose?: () => void }).dispose?.();
    // (a first stage the caller handed over stays the caller's)
    if (this.ownsPreviousStage) this.previousStage?.dispose();
  }
  /** `await using nn = await loadNnunet(…)`: disposed when the block ends. */
  async [Symbol.asyncDispose](): Promise<void> {
    this.dispose();
  }
  [Symbol.dispose](): void {
    this.dispose();
  }
}

/** Largest plans.json or dataset.json read (nnU-Net's are a few kB; a dataset.json listing its cases, a few MB). */
const MAX_JSON_BYTES = 32 * 2 ** 20;
/** Deepest nesting of arrays and objects accepted in them (nnU-Net's: 4). */
const MAX_JSON_DEPTH = 64;

async function readJson(path: string, what: string): Promise<Record<string, unknown>> {
  let text: string;
  try {
    text = (await readSmallFile(path, { maxBytes: MAX_JSON_BYTES, what: `a ${what}` })).toString("utf8");
  } catch (e) {
    throw new Error(`nnU-Net folder: cannot read ${what} (${path}): ${(e as Error).message}`, { cause: e });
  }
  try {
    return parseJsonObject(text, MAX_JSON_DEPTH);
  } catch (e) {
    throw new Error(`nnU-Net folder: ${what} (${path}) is not valid JSON: ${(e as Error).message}`, { cause: e });
  }
}

/** plans.json's configuration with `inherits_from` resolved (a child's keys replace its parent's, as PlansManager). */
function resolveConfiguration(plans: Record<string, unknown>, name: string, seen: string[] = []): Record<string, unknown> {
  const confs = plans.configurations as Record<string, Record<string, unknown>> | undefined;
  const conf = confs?.[name];
  if (!conf || typeof conf !== "object")
    throw new Error(`plans.json has no configuration "${name}" (it has ${Object.keys(confs ?? {}).join(", ") || "none"})`);
  if (typeof conf.inherits_from !== "string") return conf;
  if (seen.includes(name)) throw new Error(`plans.json: configuration "${name}" inherits from itself (${[...seen, name].join(" → ")})`);
  if (seen.length >= 16)
    throw new Error(`plans.json: configuration "${seen[0]}" inherits through over 16 others (${seen.slice(0, 4).join(" → ")} → …)`);
  const parent = resolveConfiguration(plans, conf.inherits_from, [...seen, name]);
  const { inherits_from: _, ...own } = conf;
  return { ...parent, ...own };
}

function foldsIn(folder: string, file: string): Fold[] {
  const out: Fold[] = [];
  for (const d of readdirSync(folder)) {
    const m = /^fold_(\d+|all)$/.exec(d);
    if (m && existsSync(join(folder, d, file))) out.push(m[1] === "all" ? "all" : Number(m[1]));
  }
  return out.sort((a, b) => (a === "all" ? 1 : b === "all" ? -1 : a - b));
}

/**
 * A cascade's stages, before any checkpoint is read: previous_stage names another configuration of
 * the plans (a plain name: it becomes part of a folder's name); a first stage is the configuration
 * its cascade names and no cascade itself (nnU-Net's have two stages: no loops); the option
 * `previousStage` only for a second stage.
 */
function checkStages(
  conf: Record<string, unknown>,
  configuration: string,
  plans: Record<string, unknown>,
  firstStageOf: string | null,
  opts: LoadNnunetOptions,
  trainerFolder: string,
): void {
  const prevName = conf.previous_stage;
  if (firstStageOf !== null) {
    // nnU-Net's cascades have two stages: a first stage that is itself one is refused (no loops)
    if (prevName !== undefined && prevName !== null)
      throw new Error(`nnU-Net folder ${trainerFolder}: a cascade's first stage (${firstStageOf}) that names a previous stage itself`);
    if (configuration !== firstStageOf)
      throw new Error(
        `nnU-Net folder ${trainerFolder} holds configuration "${configuration}", not the cascade's first stage "${firstStageOf}"`,
      );
  }
  if (prevName !== undefined && prevName !== null) {
    const confs = plans.configurations as Record<string, unknown>;
    if (typeof prevName !== "string" || !/^[A-Za-z0-9_]+$/.test(prevName) || !Object.hasOwn(confs, prevName) || prevName === configuration)
      throw new Error(
        `plans.json: configuration "${configuration}"'s previous_stage ${brief(prevName)} is not another configuration of the plans`,
      );
  } else if (opts.previousStage !== undefined)
    throw new Error(`options.previousStage is for a cascade's second stage; configuration "${configuration}" of ${trainerFolder} is none`);
}

/**
 * dataset.json's labels as nnU-Net's LabelManager reads them: label values 0…K, each a softmax
 * channel; or, where any label is a list of more than one value, regions — every entry but the
 * background and `ignore`, in order, one sigmoid channel each, whose values `regions_class_order`
 * gives (the label each region's voxels get).
 */
function labelsOf(
  labels: Record<string, unknown>,
  order: unknown,
): { classes: Record<string, string>; numClasses: number; regions: number[] | null; allLabels: number[] } {
  const entries = Object.entries(labels).filter(([name]) => name !== "ignore");
  const isLabel = (v: unknown) => Number.isInteger(v) && (v as number) >= 0 && (v as number) <= 255;
  for (const [name, v] of entries)
    if (!isLabel(v) && !(Array.isArray(v) && v.length > 0 && v.length <= 255 && v.every(isLabel)))
      throw new Error(`dataset.json: label "${name}" has value ${brief(v)}, not a label value 0…255 or a list of them (a region)`);
  if (!entries.some(([, v]) => Array.isArray(v) && v.length > 1)) {
    const classes: Record<string, string> = {};
    for (const [name, v] of entries) classes[String(Array.isArray(v) ? v[0] : v)] = name;
    const values = Object.keys(classes)
      .map(Number)
      .sort((a, b) => a - b);
    if (!values.every((v, i) => v === i))
      throw new Error(`dataset.json: label values must be 0…${values.length - 1} with none missing, got ${values.join(", ")}`);
    return { classes, numClasses: values.length, regions: null, allLabels: values };
  }
  const regionEntries = entries.filter(([, v]) => !(v === 0 || (Array.isArray(v) && v.every((x) => x === 0))));
  if (
    !Array.isArray(order) ||
    order.length !== regionEntries.length ||
    !order.every((v) => Number.isInteger(v) && (v as number) >= 1 && (v as number) <= 255)
  )
    throw new Error(
      `dataset.json: a region-based model needs regions_class_order, ${regionEntries.length} label values in 1…255 (one per region: ${regionEntries.map(([n]) => n).join(", ")}), got ${brief(order)}`,
    );
  const classes: Record<string, string> = { "0": "background" };
  regionEntries.forEach(([name], i) => (classes[String(order[i])] = name));
  const all = new Set<number>([0, ...(order as number[])]);
  for (const [, v] of entries) for (const x of Array.isArray(v) ? v : [v]) all.add(x as number);
  return { classes, numClasses: regionEntries.length, regions: order as number[], allLabels: [...all] };
}

/** One fold's model (see modelFromStateDict). Closes the checkpoint. */
async function foldModel(
  ck: Checkpoint,
  weights: Map<unknown, unknown>,
  graph: NetworkGraph,
  arch: NnunetArchitecture,
  precision: Precision | undefined,
  where: string,
  plansFile: string,
): Promise<Model> {
  const c = arch.inputChannels;
  const ownNetwork = ["Primus", "MedNeXt", "STUNet", "UMamba"].includes(arch.networkClass);
  const fixed = fixedInput(arch);
  return modelFromStateDict(ck, weights, graph, {
    cls: arch.networkClass,
    where,
    // (Primus, MedNeXt, STU-Net and U-Mamba are read from the checkpoint's own shapes)
    describedBy: ownNetwork ? "the checkpoint's shapes" : plansFile,
    owner: ownNetwork ? "the checkpoint's" : "the plans'",
    dictName: plansFile === "plans.json" ? "network_weights" : "state_dict",
    // (Primus, U-Mamba with channels as tokens: the plans' patch, one window at a time)
    inputShape: fixed ? [1, c, ...fixed] : arch.dims === 2 ? ["N", c, "H", "W"] : ["N", c, "D", "H", "W"],
    producer: "bhsd-nnunet",
    opset: 17,
    config: { patchSize: [1, 1, 1], ...(precision ? { precision } : {}) },
  });
}

/**
 * Loads an nnU-Net v2 results folder for inference (see the module comment). Errors name the file
 * and what is wrong: a missing file or fold, a plans configuration this engine does not build, a
 * checkpoint that is not a PyTorch zip or is over the size limit, weights that do not match the
 * network (missing, unexpected, wrong shape, not float32, not contiguous).
 */
export async function loadNnunet(trainerFolder: string, options?: LoadNnunetOptions): Promise<NnunetModel> {
  return loadStage(trainerFolder, options, null);
}

/** loadNnunet, or (`firstStageOf`) a cascade's first stage, which must be that configuration and no cascade itself. */
async function loadStage(trainerFolder: string, options: LoadNnunetOptions | undefined, firstStageOf: string | null): Promise<NnunetModel> {
  if (typeof trainerFolder !== "string" || !trainerFolder)
    throw invalidParameterError("trainerFolder", "the path of an nnU-Net trainer folder", trainerFolder);
  const opts = optionsObject("options", options) as LoadNnunetOptions;
  const ckName = opts.checkpoint ?? "final";
  if (ckName !== "final" && ckName !== "best") throw invalidParameterError("options.checkpoint", '"final" or "best"', opts.checkpoint);
  const ensemble = opts.ensemble ?? "logits";
  if (
    opts.previousStage !== undefined &&
    !(opts.previousStage instanceof NnunetModel) &&
    (typeof opts.previousStage !== "string" || !opts.previousStage)
  )
    throw invalidParameterError("options.previousStage", "the first stage's folder or loaded NnunetModel", opts.previousStage);
  if (opts.heads !== undefined && !(Number.isInteger(opts.heads) && opts.heads >= 1 && opts.heads <= 4096))
    throw invalidParameterError("options.heads", "a whole number of attention heads from 1 to 4096", opts.heads);
  if (opts.trainer !== undefined && !["nnUNetTrainerV2", "nnUNetTrainerV2_MedNeXt", "STUNetTrainer"].includes(opts.trainer))
    throw invalidParameterError(
      "options.trainer",
      '"nnUNetTrainerV2", "nnUNetTrainerV2_MedNeXt" or "STUNetTrainer" (the network an nnU-Net v1 folder\'s trainer builds)',
      opts.trainer,
    );
  if (ensemble !== "logits" && ensemble !== "softmax")
    throw invalidParameterError("options.ensemble", '"logits" or "softmax"', opts.ensemble);
  if (opts.maxCheckpointBytes !== undefined && !(typeof opts.maxCheckpointBytes === "number" && opts.maxCheckpointBytes > 0))
    throw invalidParameterError("options.maxCheckpointBytes", "a positive number of bytes", opts.maxCheckpointBytes);
  const precision = checkPrecision(opts.precision, "options.precision");
  if (
    opts.postprocessing !== undefined &&
    opts.postprocessing !== false &&
    (typeof opts.postprocessing !== "string" || !opts.postprocessing)
  )
    throw invalidParameterError(
      "options.postprocessing",
      "the path of nnU-Net's postprocessing.pkl or .json, or false",
      opts.postprocessing,
    );
  const folder = resolve(trainerFolder);
  const st = await stat(folder).catch(() => null);
  if (!st?.isDirectory()) throw new Error(`nnU-Net folder ${trainerFolder} does not exist or is not a folder`);
  if (
    opts.folds !== undefined &&
    (!Array.isArray(opts.folds) ||
      !opts.folds.length ||
      !opts.folds.every((f) => f === "all" || (Number.isInteger(f) && (f as number) >= 0)))
  )
    throw invalidParameterError("options.folds", 'a non-empty array of fold numbers or "all"', opts.folds);
  if (opts.folds !== undefined && new Set(opts.folds).size !== opts.folds.length)
    throw invalidParameterError("options.folds", "distinct folds", opts.folds);
  if (isNnunetV1Folder(folder)) return loadNnunetV1(folder, trainerFolder, opts, precision, firstStageOf);
  if (opts.trainer !== undefined) throw new Error(`options.trainer is for nnU-Net v1 folders; ${trainerFolder} has plans.json (v2)`);
  const file = `checkpoint_${ckName}.pth`;
  let folds: Fold[];
  if (opts.folds === undefined) {
    folds = foldsIn(folder, file);
    if (!folds.length) throw new Error(`nnU-Net folder ${trainerFolder} has no fold_K/${file}`);
  } else {
    folds = [...opts.folds];
    for (const f of folds)
      if (!existsSync(join(folder, `fold_${f}`, file)))
        throw new Error(`nnU-Net folder ${trainerFolder}: fold_${f}/${file} does not exist`);
  }
  const dataset = await readJson(join(folder, "dataset.json"), "dataset.json");
  const plans = await readJson(join(folder, "plans.json"), "plans.json");

  // dataset.json: input channels and output classes (label value = channel), or regions
  const channels = (dataset.channel_names ?? dataset.modality) as Record<string, unknown> | undefined;
  if (!channels || typeof channels !== "object") throw new Error("dataset.json has no channel_names");
  const labels = dataset.labels as Record<string, unknown> | undefined;
  if (!labels || typeof labels !== "object") throw new Error("dataset.json has no labels");
  const { classes, numClasses, regions, allLabels } = labelsOf(labels, dataset.regions_class_order);
  // (a region model's post-processing names dataset labels — nnU-Net's foreground_labels — which
  // its output may not hold: those steps keep nothing and change nothing, as np.isin there)
  const values = regions ? allLabels : Object.keys(classes).map(Number);
  values.sort((a, b) => a - b);
  if (regions && ensemble === "softmax")
    throw invalidParameterError("options.ensemble", '"logits" for a region-based model (its heads are sigmoids)', opts.ensemble);
  const inputChannels = Object.keys(channels).length;

  // nnU-Net's post-processing chosen on the cross-validation of these folds, where the folder has it
  // (read before any checkpoint: a bad file is refused at once)
  let ppFile: string | undefined;
  if (typeof opts.postprocessing === "string") ppFile = resolve(opts.postprocessing);
  else if (opts.postprocessing === undefined) {
    const cv = join(folder, `crossval_results_folds_${folds.join("_")}`);
    ppFile = ["postprocessing.pkl", "postprocessing.json"].map((f) => join(cv, f)).find((f) => existsSync(f));
  }
  const postprocessing: CleanupOptions | null = ppFile ? await readNnunetPostprocessing(ppFile, values) : null;

  const ckLimits = { maxBytes: opts.maxCheckpointBytes };
  const foldModels: Model[] = [];
  let configuration = "",
    trainerName = "",
    mirrorAxes: number[] = [];
  let arch: NnunetArchitecture | undefined, graph: NetworkGraph | undefined, conf: Record<string, unknown> | undefined;
  try {
    for (const [i, f] of folds.entries()) {
      const path = join(folder, `fold_${f}`, file);
      const where = `${basename(folder)}/fold_${f}/${file}`;
      let ck: Checkpoint | undefined;
      try {
        ck = await openCheckpoint(path, ckLimits);
        const root = ck.root;
        if (!(root instanceof Map))
          throw new CheckpointError(`${where}: the checkpoint is ${typeName(root)}, not nnU-Net's checkpoint dict`);
        const weights = root.get("network_weights");
        if (!(weights instanceof Map)) throw new CheckpointError(`${where}: "network_weights" is ${typeName(weights)}, not a state_dict`);
        if (i === 0) {
          // as nnU-Net: the configuration, trainer and mirror axes of the first fold
          const init = root.get("init_args");
          const c = init instanceof Map ? init.get("configuration") : undefined;
          configuration = typeof c === "string" ? c : (/__([^_]+(?:_[^_]+)*)$/.exec(basename(folder))?.[1] ?? "3d_fullres");
          const t = root.get("trainer_name");
          trainerName = typeof t === "string" ? t : "nnUNetTrainer";
          conf = resolveConfiguration(plans, configuration);
          // a cascade's second stage takes the first stage's segmentation as input channels, one per
          // foreground class (nnU-Net's determine_num_input_channels)
          checkStages(conf, configuration, plans, firstStageOf, opts, trainerFolder);
          const cascade = typeof conf.previous_stage === "string";
          if (cascade && regions)
            throw new Error(`nnU-Net folder ${basename(folder)}: a region-based cascade stage; bhsd's cascades take label maps`);
          /** A trainer's own network (STU-Net, Primus: 3-D; U-Mamba: 2-D or 3-D): one stage, on the plans' patch. */
          const ownNetworkPatch = (net: string, patch: unknown, twoD = false): number[] => {
            if (cascade)
              throw new Error(
                `nnU-Net folder ${basename(folder)}: a cascade stage trained as ${net}; bhsd builds ${net} for single-stage configurations`,
              );
            if (
              !Array.isArray(patch) ||
              !(patch.length === 3 || (twoD && patch.length === 2)) ||
              !patch.every((p) => Number.isInteger(p) && p >= 1 && p <= 4096)
            )
              throw new Error(
                `nnU-Net folder ${basename(folder)}: configuration "${configuration}"'s patch_size ${brief(patch)} is not ${twoD ? "two or three" : "three"} sizes from 1 to 4096 (${net} is ${twoD ? "2-D or 3-D" : "3-D"})`,
              );
            return patch as number[];
          };
          /** The plans' strides as a trainer's own network takes them: arch_kwargs.strides, or the older pool_op_kernel_sizes. */
          const ak = (conf.architecture as { arch_kwargs?: { strides?: unknown } } | undefined)?.arch_kwargs;
          const plansStrides = {
            pools: ak?.strides ?? conf.pool_op_kernel_sizes,
            what: ak?.strides !== undefined ? "architecture.arch_kwargs.strides" : "pool_op_kernel_sizes",
          };
          if (
            weights.has("eva.blocks.0.norm1.weight") &&
            !isPrimus(weights) &&
            [...weights.keys()].some((k) => typeof k === "string" && k.startsWith("down_projection.stem."))
          )
            throw new CheckpointError(
              `${where}: trainer ${trainerName} built a Primus whose patch embedding is not one bhsd builds (PrimusV2 and V3's residual blocks, down_projection.stem.blocks, it does)`,
            );
          if (isUMamba(weights)) {
            // U-Mamba's trainers build their own network (nets/UMamba{Bot,Enc}_{2d,3d}.py) from the
            // plans' patch and strides; widths, kernels and depths are the weights'
            const patch = ownNetworkPatch("U-Mamba", conf.patch_size, true);
            const ua = umambaArchitecture(weights, plansStrides.pools, plansStrides.what, inputChannels, numClasses, patch, where);
            arch = ua;
            graph = buildUMamba(ua, where);
          } else if (isSTUNet(weights)) {
            // STU-Net's trainers build their own network from the plans' poolings (nnUNet-2.2's
            // configuration_manager.pool_op_kernel_sizes[1:]); the plans' architecture is not used
            const patch = ownNetworkPatch("STU-Net", conf.patch_size);
            const { pools, what } = plansStrides;
            if (!Array.isArray(pools) || pools.length < 1)
              throw new Error(
                `nnU-Net folder ${basename(folder)}: configuration "${configuration}" has no poolings (architecture.arch_kwargs.strides or pool_op_kernel_sizes), which STU-Net's trainers build from`,
              );
            const sa = stunetArchitecture(weights, stunetStrides(pools.slice(1), where, what, 1), inputChannels, numClasses, patch, where);
            arch = sa;
            graph = buildSTUNet(sa, where);
          } else if (isPrimus(weights)) {
            // a trainer's own network (AbstractPrimus.build_network_architecture): the plans' architecture is not used
            const patch = ownNetworkPatch("Primus", conf.patch_size);
            const pa = primusArchitecture(weights, trainerName, patch, inputChannels, numClasses, opts.heads, where);
            const tokens = prod(pa.inputSize) / prod(pa.patchEmbed) + pa.registers;
            if (tokens > 1 << 16)
              throw new Error(`nnU-Net folder ${basename(folder)}: Primus on a patch of ${tokens} tokens; bhsd runs up to 65536`);
            arch = pa;
            graph = buildPrimus(pa, where);
          } else {
            const a = architectureFromPlans(
              conf,
              inputChannels + (cascade ? numClasses - 1 : 0),
              numClasses,
              `plans.json configuration "${configuration}"`,
            );
            // nnUNetTrainerBN builds batch norm (eps 1e-5, affine) where the plans say instance norm;
            // another trainer that does the same shows it by its norms' running statistics
            if (trainerName === "nnUNetTrainerBN") arch = { ...a, norm: { eps: 1e-5, affine: true, runningStats: true } };
            else if (!a.norm.runningStats && [...weights.keys()].some((k) => typeof k === "string" && k.endsWith(".running_mean")))
              arch = { ...a, norm: { ...a.norm, runningStats: true } };
            else arch = a;
            graph = buildNetwork(arch);
          }
          // the network's axes: a 2d configuration's (0, 1) are its slices' y and x, axes 1 and 2 of the grid
          const m = root.get("inference_allowed_mirroring_axes");
          if (m !== undefined && m !== null) {
            const dims = arch.dims;
            const axes = dims === 2 ? [0, 1] : [0, 1, 2];
            if (!Array.isArray(m) || !m.every((a) => axes.includes(a as number)))
              throw new CheckpointError(
                `${where}: inference_allowed_mirroring_axes is ${brief(m)}, not axes among ${axes.join(", ")} (a ${dims}-D network)`,
              );
            mirrorAxes = [...new Set(m as number[])].map((a) => a + 3 - dims);
          }
        }
        foldModels.push(await foldModel(ck, weights, graph!, arch!, precision, where, "plans.json"));
        ck = undefined;
      } finally {
        ck?.close();
      }
    }
  } catch (e) {
    for (const m of foldModels) (m as { dispose?: () => void }).dispose?.();
    throw e;
  }

  let config: ModelConfig;
  const name = `${basename(folder)} (${configuration}, fold${folds.length > 1 ? "s" : ""} ${folds.join(", ")})`;
  let previousStage: NnunetModel | undefined;
  let ownsPreviousStage = false;
  try {
    // the config segment() uses: plans' patch, spacing and normalisation, the checkpoint's mirror axes
    // (fromNnunet maps plans' spacing, kept in the network's transposed order, back to (z, y, x))
    const partial = fromNnunet({ ...plans, configurations: { [configuration]: conf! } }, { labels: {} }, configuration);
    config = normalizeConfig(
      // (the network's rank: a plans configuration whose patch disagrees with its conv_op is refused here)
      {
        ...partial,
        classes,
        mirrorAxes,
        stepSize: 0.5,
        spatialDims: arch!.dims,
        ...(postprocessing ? { postprocessing } : {}),
        ...(regions ? { regions } : {}),
      },
      "nnunet",
    );
  } catch (e) {
    for (const m of foldModels) (m as { dispose?: () => void }).dispose?.();
    throw e;
  }
  if (typeof conf!.previous_stage === "string") {
    try {
      if (inputChannels !== 1)
        throw new Error(`nnU-Net folder ${basename(folder)}: a cascade of ${inputChannels} input channels; segment() feeds one (a CT)`);
      if (opts.previousStage instanceof NnunetModel) {
        previousStage = opts.previousStage;
        if (previousStage.previousStage || previousStage.configuration !== conf!.previous_stage)
          throw new Error(
            `options.previousStage is ${previousStage.name}; configuration "${configuration}" needs its first stage "${conf!.previous_stage}", no cascade itself`,
          );
      } else {
        // nnU-Net's layout: Trainer__Plans__<configuration> side by side
        const parts = basename(folder).split("__");
        const sibling = parts.length === 3 ? join(dirname(folder), `${parts[0]}__${parts[1]}__${conf!.previous_stage}`) : undefined;
        const prevFolder = opts.previousStage ?? sibling;
        if (!prevFolder || !existsSync(prevFolder))
          throw new Error(
            `nnU-Net folder ${basename(folder)}: configuration "${configuration}" is a cascade's second stage; its first (${conf!.previous_stage}) was not found${sibling ? ` at ${sibling}` : ""}: give it as options.previousStage (bhsd segment --previous-stage)`,
          );
        // (its own post-processing is never applied: not read)
        previousStage = await loadStage(
          prevFolder,
          {
            ...(opts.checkpoint ? { checkpoint: opts.checkpoint } : {}),
            ...(opts.maxCheckpointBytes ? { maxCheckpointBytes: opts.maxCheckpointBytes } : {}),
            ...(opts.heads !== undefined ? { heads: opts.heads } : {}),
            ...(precision ? { precision } : {}),
            postprocessing: false,
          },
          conf!.previous_stage,
        );
        ownsPreviousStage = true;
      }
      if (previousStage.version !== 2)
        throw new Error(
          `nnU-Net folder ${basename(folder)}: its first stage ${previousStage.name} is an nnU-Net v1 model; a v2 cascade takes its v2 ${conf!.previous_stage}`,
        );
      if (JSON.stringify(previousStage.config.classes) !== JSON.stringify(config!.classes))
        throw new Error(
          `nnU-Net folder ${basename(folder)}: its first stage ${previousStage.name} has the classes ${brief(previousStage.config.classes)}, this stage ${brief(config.classes)}`,
        );
    } catch (e) {
      for (const m of foldModels) (m as { dispose?: () => void }).dispose?.();
      if (ownsPreviousStage) previousStage?.dispose();
      throw e;
    }
  }
  return new NnunetModel({
    previousStage,
    ownsPreviousStage,
    name,
    config,
    folder,
    folds,
    configuration,
    trainerName,
    architecture: arch!,
    ensemble,
    foldModels,
    divisor: graph!.divisor,
  });
}

/**
 * An nnU-Net v1 trainer folder (v1.ts): plans from the first fold's `.model.pkl` (v1's predictor
 * restores each trainer with them), Generic_UNet per fold from `state_dict`, v1's pipeline in the
 * config, the folds' softmax averaged (v1's ensemble) unless `ensemble` says otherwise, and the
 * folder's `postprocessing.json` (v1's consolidate_folds) as the model's post-processing.
 */
async function loadNnunetV1(
  folder: string,
  given: string,
  opts: LoadNnunetOptions,
  precision: Precision | undefined,
  firstStageOf: string | null,
): Promise<NnunetModel> {
  const file = V1_CHECKPOINT[opts.checkpoint ?? "final"];
  const first = opts.folds?.[0] ?? v1FoldsIn(folder, file)[0];
  const pkl = first === undefined ? undefined : join(folder, `fold_${first}`, `${file}.pkl`);
  // (which trainer, before any checkpoint: a cascade's first stage loads first)
  const info = pkl && existsSync(pkl) ? await readV1ModelPkl(pkl) : null;
  const cascade = info?.trainer === V1_CASCADE_TRAINER;
  if (firstStageOf !== null && cascade)
    throw new Error(`nnU-Net v1 folder ${given} holds ${V1_CASCADE_TRAINER}, not the cascade's first stage "${firstStageOf}"`);
  if (!cascade && opts.previousStage !== undefined)
    throw new Error(`options.previousStage is for a cascade's second stage; ${given}${info ? ` (${info.trainer})` : ""} is none`);
  let previousStage: NnunetModel | undefined;
  let owns = false;
  if (cascade) {
    if (opts.previousStage instanceof NnunetModel) previousStage = opts.previousStage;
    else {
      // v1's layout: nnUNet/3d_lowres/<task>/<previous trainer>__<plans> beside nnUNet/3d_cascade_fullres/<task>/…
      const plansId = basename(folder).split("__")[1];
      const sibling = plansId
        ? join(dirname(dirname(dirname(folder))), "3d_lowres", basename(dirname(folder)), `${info!.previousTrainer}__${plansId}`)
        : undefined;
      const prevFolder = opts.previousStage ?? sibling;
      if (!prevFolder || !existsSync(prevFolder))
        throw new Error(
          `nnU-Net v1 folder ${basename(folder)}: ${V1_CASCADE_TRAINER} is a cascade's second stage; its first stage (3d_lowres) was not found${sibling ? ` at ${sibling}` : ""}: give it as options.previousStage (bhsd segment --previous-stage)`,
        );
      // (as nnUNet_predict runs it for the cascade: the folds asked for, model_final_checkpoint,
      // and its output with its own post-processing)
      previousStage = await loadStage(
        prevFolder,
        {
          ...(opts.folds ? { folds: opts.folds } : {}),
          ...(opts.maxCheckpointBytes ? { maxCheckpointBytes: opts.maxCheckpointBytes } : {}),
          ...(precision ? { precision } : {}),
        },
        "3d_lowres",
      );
      owns = true;
    }
  }
  let model: NnunetModel;
  try {
    if (previousStage && (previousStage.version !== 1 || previousStage.previousStage || previousStage.configuration !== "3d_lowres"))
      throw new Error(`the first stage ${previousStage.name} is not a v1 3d_lowres stage, which a v1 cascade needs`);
    model = await loadNnunetV1Folds(folder, given, opts, precision, previousStage, owns);
  } catch (e) {
    if (owns) previousStage?.dispose();
    throw e;
  }
  if (
    (firstStageOf !== null && model.configuration !== firstStageOf) ||
    (previousStage && JSON.stringify(previousStage.config.classes) !== JSON.stringify(model.config.classes))
  ) {
    model.dispose();
    throw new Error(
      firstStageOf !== null
        ? `nnU-Net v1 folder ${given} holds ${model.configuration}, not the cascade's first stage "${firstStageOf}"`
        : `nnU-Net v1 folder ${given}: its first stage ${previousStage!.name} has other classes`,
    );
  }
  return model;
}

/** A v1 folder's folds (see loadNnunetV1); a cascade's with its first stage. */
async function loadNnunetV1Folds(
  folder: string,
  given: string,
  opts: LoadNnunetOptions,
  precision: Precision | undefined,
  previousStage: NnunetModel | undefined,
  ownsPreviousStage: boolean,
): Promise<NnunetModel> {
  const file = V1_CHECKPOINT[opts.checkpoint ?? "final"];
  let folds: Fold[];
  if (opts.folds === undefined) {
    folds = v1FoldsIn(folder, file);
    if (!folds.length) throw new Error(`nnU-Net v1 folder ${given} has no fold_K/${file} with its ${file}.pkl`);
  } else {
    folds = [...opts.folds];
    for (const f of folds)
      for (const x of [file, `${file}.pkl`])
        if (!existsSync(join(folder, `fold_${f}`, x))) throw new Error(`nnU-Net v1 folder ${given}: fold_${f}/${x} does not exist`);
  }
  const first = join(folder, `fold_${folds[0]}`, `${file}.pkl`);
  const info = await readV1ModelPkl(first);
  if (opts.trainer !== undefined && info.trainer === V1_CASCADE_TRAINER)
    throw new Error(
      `options.trainer is for a fold whose trainer bhsd does not know by name; ${basename(folder)} is v1's cascade (${V1_CASCADE_TRAINER}), whose network it builds`,
    );
  const trainer = opts.trainer ?? info.trainer;
  if (/Cascade/.test(info.trainer) && info.trainer !== V1_CASCADE_TRAINER)
    throw new Error(
      `nnU-Net v1 folder ${basename(folder)}: trainer ${info.trainer} is a cascade stage: its network takes the low-resolution stage's segmentation as extra input channels, which bhsd does not make; run the 3d_lowres or 3d_fullres folder instead`,
    );
  // label names where the folder keeps the task's dataset.json (v1's trainer folders need not)
  let names: Record<string, string> | null = null;
  if (existsSync(join(folder, "dataset.json"))) {
    const ds = await readJson(join(folder, "dataset.json"), "dataset.json");
    const labels = ds.labels;
    if (labels && typeof labels === "object" && !Array.isArray(labels))
      names = Object.fromEntries(Object.entries(labels as Record<string, unknown>).filter(([, v]) => typeof v === "string")) as Record<
        string,
        string
      >;
  }
  const where = `${basename(folder)}/fold_${folds[0]}/${file}.pkl`;
  const v1 = fromV1Plans(info.plans, info.stage, trainer, names, where);
  const values = Object.keys(v1.config.classes).map(Number);
  let ppFile: string | undefined;
  if (typeof opts.postprocessing === "string") ppFile = resolve(opts.postprocessing);
  else if (opts.postprocessing === undefined && existsSync(join(folder, "postprocessing.json")))
    ppFile = join(folder, "postprocessing.json");
  const postprocessing = ppFile ? await readNnunetV1Postprocessing(ppFile, values) : null;

  let arch: NnunetArchitecture = v1.architecture;
  let graph: NetworkGraph | undefined;
  const foldModels: Model[] = [];
  try {
    for (const f of folds) {
      const path = join(folder, `fold_${f}`, file);
      const whereF = `${basename(folder)}/fold_${f}/${file}`;
      let ck: Checkpoint | undefined;
      try {
        ck = await openCheckpoint(path, { maxBytes: opts.maxCheckpointBytes });
        const root = ck.root;
        if (!(root instanceof Map))
          throw new CheckpointError(`${whereF}: the checkpoint is ${typeName(root)}, not nnU-Net v1's checkpoint dict`);
        const weights = root.get("state_dict");
        if (!(weights instanceof Map)) throw new CheckpointError(`${whereF}: "state_dict" is ${typeName(weights)}, not a state_dict`);
        if (!graph) {
          const a = v1.architecture;
          if (v1.network === "MedNeXt") {
            // (the fork's MedNeXt wrapper is 3-D whatever the plans: its predictor runs no 2-D one)
            if (a.dims !== 3) throw new Error(`${whereF}: a ${a.dims}-D configuration trained as MedNeXt, which the fork runs in 3-D only`);
            const m = mednextV1Architecture(weights, a.dims, a.inputChannels, a.numClasses, v1.config.patchSize, whereF);
            graph = buildMedNeXtV1(m, whereF);
            arch = m;
          } else if (v1.network === "STUNet") {
            if (a.dims !== 3) throw new Error(`${whereF}: a ${a.dims}-D configuration trained as STU-Net, which is 3-D`);
            // (Generic_UNet's strides: [1, 1, 1], then the stage's pool_op_kernel_sizes)
            const s = stunetArchitecture(
              weights,
              stunetStrides(a.strides.slice(1), whereF),
              a.inputChannels,
              a.numClasses,
              v1.config.patchSize,
              whereF,
            );
            graph = buildSTUNet(s, whereF);
            arch = s;
          } else {
            // batch norm (nnUNetTrainerV2_BN, or a variant loaded as V2) shows in its running statistics
            arch =
              !a.norm.runningStats && [...weights.keys()].some((k) => typeof k === "string" && k.endsWith(".running_mean"))
                ? { ...a, norm: { ...a.norm, runningStats: true } }
                : a;
            graph = buildNetwork(arch);
          }
        }
        foldModels.push(await foldModel(ck, weights, graph, arch, precision, whereF, `${file}.pkl's plans`));
        ck = undefined;
      } finally {
        ck?.close();
      }
    }
  } catch (e) {
    for (const m of foldModels) (m as { dispose?: () => void }).dispose?.();
    throw e;
  }
  const config = postprocessing ? { ...v1.config, postprocessing } : v1.config;
  return new NnunetModel({
    name: `${basename(folder)} (nnU-Net v1 ${v1.configuration}, fold${folds.length > 1 ? "s" : ""} ${folds.join(", ")})`,
    config,
    folder,
    folds,
    configuration: v1.configuration,
    trainerName: info.trainer,
    version: 1,
    ...(previousStage ? { previousStage, ownsPreviousStage } : {}),
    architecture: arch,
    ensemble: opts.ensemble ?? "softmax",
    foldModels,
    divisor: graph!.divisor,
  });
}
