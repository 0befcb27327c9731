/**
 * loadMonai: a network trained with MONAI run directly from its PyTorch weights — no Python, no
 * ONNX export. A MONAI bundle folder (`configs/inference.json` or `.yaml`, `models/model.pt`;
 * bundle.ts reads its network_def and pipeline) or a checkpoint file with the network_def given.
 *
 * The checkpoint is read as nnU-Net's are (PyTorch's zip format, a pickle parsed without running
 * anything): a state_dict as `torch.save(model.state_dict())` writes it, or a dict holding one
 * (`{"state_dict": …}`, `{"model": …}` as MONAI's CheckpointSaver and most training scripts write
 * them), with DataParallel's `module.` prefix or torch.compile's `_orig_mod.` dropped. The network
 * is rebuilt from the network_def (networks.ts), matched name by name and shape by shape, and run
 * on the engine as an in-memory ONNX graph: a Model, which segment() takes as any other.
 */
import { existsSync, statSync } from "node:fs";
import { basename, isAbsolute, join, normalize, sep } from "node:path";
import { invalidParameterError, optionsObject } from "../../is.js";
import { checkPrecision, type Precision } from "../../backends/precision.js";
import { normalizeConfig, type ModelConfig } from "../config.js";
import type { Model } from "../model.js";
import { CheckpointError, openCheckpoint, TensorRef, typeName, type Checkpoint } from "../nnunet/checkpoint.js";
import { modelFromStateDict } from "../state-dict.js";
import { insideBundle, readBundle, type MonaiBundle } from "./bundle.js";
import { keepLargestCleanup } from "./pipeline.js";
import { buildMonaiNetwork, type MonaiNetwork } from "./networks.js";

export { MONAI_NETWORKS, type MonaiNetworkClass } from "./networks.js";
export type { MonaiBundle } from "./bundle.js";

export interface LoadMonaiOptions {
  /**
   * The network: a network_def as a bundle's config holds it (`{ "_target_": "UNet",
   * "spatial_dims": 3, … }`). Required for a checkpoint file; for a bundle, replaces its own.
   */
  network?: Record<string, unknown>;
  /** segment()'s config over what the bundle's pipeline gives (or bhsd's defaults, for a checkpoint file). */
  config?: Partial<ModelConfig>;
  /**
   * Where the state_dict is in a checkpoint that is a dict of more than tensors. Default: the
   * first of "state_dict", "model", "network", "net", "model_state_dict" that holds one.
   */
  key?: string;
  /** A bundle's weights other than `models/model.pt` (a path relative to the bundle). */
  weights?: string;
  /** The arithmetic of the convolutions, as loadModel's `precision`. */
  precision?: Precision;
  /** Largest checkpoint file accepted (bytes). Default 4 GiB. */
  maxCheckpointBytes?: number;
}

/** What loadMonai learned besides the engine's model (`monaiInfo(model)`). */
export interface MonaiInfo {
  networkClass: MonaiNetwork["networkClass"];
  /** The network_def's arguments. */
  args: Record<string, unknown>;
  /** The checkpoint read. */
  weights: string;
  /** The bundle, where one was loaded. */
  bundle?: MonaiBundle;
}

const INFO = new WeakMap<object, MonaiInfo>();

/** What loadMonai read for a model it loaded (undefined for any other). */
export function monaiInfo(model: object): MonaiInfo | undefined {
  return INFO.get(model);
}

const STATE_DICT_KEYS = ["state_dict", "model", "network", "net", "model_state_dict"];

/** The state_dict in a checkpoint's root object, its keys without DataParallel's or torch.compile's prefix. */
export function stateDictOf(root: unknown, key: string | undefined, where: string): { dict: Map<unknown, unknown>; name: string } {
  const isDict = (v: unknown): v is Map<unknown, unknown> => v instanceof Map;
  const tensors = (m: Map<unknown, unknown>) => m.size > 0 && [...m.values()].every((v) => v instanceof TensorRef);
  if (!isDict(root)) throw new CheckpointError(`${where}: the checkpoint holds ${typeName(root)}, not a state_dict (a dict of tensors)`);
  let dict: Map<unknown, unknown> | undefined, name: string;
  if (key !== undefined) {
    const v = root.get(key);
    if (!isDict(v) || !tensors(v))
      throw new CheckpointError(
        `${where}: the checkpoint's "${key}" (options.key) is ${v === undefined ? "absent" : typeName(v)}, not a state_dict`,
      );
    dict = v;
    name = `["${key}"]`;
  } else if (tensors(root)) {
    dict = root;
    name = "state_dict";
  } else {
    const k = STATE_DICT_KEYS.find((k) => isDict(root.get(k)) && tensors(root.get(k) as Map<unknown, unknown>));
    if (k === undefined) {
      const keys = [...root.keys()].slice(0, 12).map((k) => JSON.stringify(typeof k === "string" ? k : typeName(k)));
      throw new CheckpointError(
        `${where}: the checkpoint is a dict (keys ${keys.join(", ")}) with no state_dict under ${STATE_DICT_KEYS.join(", ")}; name its key with options.key`,
      );
    }
    dict = root.get(k) as Map<unknown, unknown>;
    name = `["${k}"]`;
  }
  for (const prefix of ["module.", "_orig_mod."]) {
    if ([...dict.keys()].every((k) => typeof k === "string" && k.startsWith(prefix)))
      dict = new Map([...dict.entries()].map(([k, v]) => [(k as string).slice(prefix.length), v]));
  }
  return { dict, name };
}

/** Class names as a MONAI user's model would give them: BHSD's where there are six outputs. */
function defaultClasses(n: number): Record<string, string> {
  const bhsd = normalizeConfig({}, "default").classes;
  if (n === Object.keys(bhsd).length) return bhsd;
  const out: Record<string, string> = { "0": "background" };
  for (let i = 1; i < n; i++) out[String(i)] = `class ${i}`;
  return out;
}

/**
 * Loads a MONAI bundle folder or a checkpoint file (with `options.network`) for inference. Errors
 * name the file and what is wrong: a network_def this engine does not build (the argument and why),
 * a checkpoint that is not PyTorch's zip format or holds no state_dict, weights that do not match
 * the network (missing, unexpected, wrong shape, not float32).
 */
export async function loadMonai(path: string, options?: LoadMonaiOptions): Promise<Model> {
  if (typeof path !== "string" || !path) throw invalidParameterError("path", "a MONAI bundle folder or a checkpoint file (a path)", path);
  const opts = optionsObject("options", options) as LoadMonaiOptions;
  checkPrecision(opts.precision, "options.precision");
  if (opts.network !== undefined && (opts.network === null || typeof opts.network !== "object" || Array.isArray(opts.network)))
    throw invalidParameterError("options.network", 'a network_def object { "_target_": "UNet", … }', opts.network);
  if (opts.key !== undefined && typeof opts.key !== "string") throw invalidParameterError("options.key", "a string", opts.key);
  if (
    opts.weights !== undefined &&
    (typeof opts.weights !== "string" || !opts.weights || isAbsolute(opts.weights) || normalize(opts.weights).split(sep).includes(".."))
  )
    throw invalidParameterError("options.weights", "a path inside the bundle, relative to it", opts.weights);
  if (opts.config !== undefined && (opts.config === null || typeof opts.config !== "object" || Array.isArray(opts.config)))
    throw invalidParameterError("options.config", "a partial model config", opts.config);
  if (opts.config) normalizeConfig({ ...opts.config }, "argument"); // (its own values, checked before any file is read)
  const maxBytes = opts.maxCheckpointBytes;
  if (maxBytes !== undefined && !(typeof maxBytes === "number" && maxBytes > 0 && Number.isFinite(maxBytes)))
    throw invalidParameterError("options.maxCheckpointBytes", "a positive number of bytes", maxBytes);
  if (!existsSync(path)) throw new Error(`MONAI model ${path}: no such file or folder`);
  let bundle: MonaiBundle | undefined;
  let weightsPath = path;
  let def = opts.network;
  let where = "options.network";
  let base: Partial<ModelConfig> = {};
  if (statSync(path).isDirectory()) {
    bundle = await readBundle(path);
    weightsPath = join(path, opts.weights ?? bundle.weights);
    await insideBundle(path, opts.weights ?? bundle.weights);
    if (!def) {
      def = bundle.networkDef;
      where = join(path, bundle.configFile);
    }
    base = { ...bundle.config, ...(bundle.classes ? { classes: bundle.classes } : {}) };
  } else if (opts.weights !== undefined) throw new Error("options.weights names a bundle's weights: path is a file, not a bundle folder");
  else if (!def)
    throw invalidParameterError("options.network", `the network_def of ${path} (a checkpoint holds weights, not the network)`, def);
  let net = buildMonaiNetwork(def, where);
  const limits = maxBytes !== undefined ? { maxBytes } : {};
  let ck: Checkpoint | undefined;
  try {
    ck = await openCheckpoint(weightsPath, limits);
    const { dict, name } = stateDictOf(ck.root, opts.key, weightsPath);
    const c = net.inputChannels;
    const fromBundle = bundle?.keepLargest ? { postprocessing: keepLargestCleanup(bundle.keepLargest, net.outputChannels) } : {};
    // a checkpoint's network was trained on MONAI's arrays: (x, y, z), as LoadImage reads a NIfTI
    // (a 2-D one on its (x, y) slices)
    // (UNETR runs its img_size only: that is its patch)
    const fixedPatch = net.networkClass === "UNETR" ? { patchSize: net.inputSize } : {};
    const monaiAxes = bundle
      ? fixedPatch
      : net.dims === 3
        ? { transposeForward: [2, 1, 0], patchSize: [128, 128, 32], ...fixedPatch }
        : { transposeForward: [0, 2, 1], ...fixedPatch };
    const config = normalizeConfig(
      { classes: defaultClasses(net.outputChannels), spatialDims: net.dims, ...monaiAxes, ...base, ...fromBundle, ...(opts.config ?? {}) },
      opts.config ? "argument" : bundle ? "monai" : "default",
      net.dims === 2 ? ["N", c, "H", "W"] : ["N", c, "D", "H", "W"],
    );
    const div = net.divisor;
    if (config.patchSize.some((p, i) => p % div[i]!))
      throw new Error(
        `MONAI model ${path}: patchSize [${config.patchSize.join(", ")}] must be a multiple of [${div.join(", ")}] (the ${net.networkClass}'s total strides)`,
      );
    // a transformer's graph is built for the sliding window's size
    if (net.inputSize) {
      const size = net.dims === 2 ? config.patchSize.slice(1) : [...config.patchSize];
      // (UNETR's first build is already at its img_size: rebuilt only to say the window differs)
      if (net.networkClass !== "UNETR" || size.join() !== net.inputSize.join()) net = buildMonaiNetwork(def, where, size);
    }
    const model = await modelFromStateDict(ck, dict, net, {
      cls: net.networkClass,
      where: weightsPath,
      describedBy: where === "options.network" ? "options.network" : `${where}'s network_def`,
      owner: "the network_def's",
      dictName: name,
      inputShape: net.inputSize ? [1, c, ...net.inputSize] : net.dims === 2 ? ["N", c, "H", "W"] : ["N", c, "D", "H", "W"],
      producer: "bhsd-monai",
      opset: 21,
      name: bundle ? basename(path) : basename(path).replace(/\.(pt|pth|ckpt)$/i, ""),
      config: { ...config, ...(opts.precision ? { precision: opts.precision } : {}) },
    });
    ck = undefined;
    INFO.set(model, {
      networkClass: net.networkClass,
      args: net.args,
      weights: weightsPath,
      ...(bundle ? { bundle } : {}),
    });
    return model;
  } finally {
    ck?.close();
  }
}
