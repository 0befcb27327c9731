/**
 * Scale-out on Redis with BullMQ (issue 20): what the submitters, the workers and the REST
 * service share — the queue's name, the connection, the jobs' data and results, the ids that
 * make a submission idempotent, and the models' folder.
 *
 * Redis holds metadata only: a job names its input and output files (a folder every worker
 * reaches: NFS, a mounted volume), never voxels.
 */
import { createHash } from "node:crypto";
import { existsSync, statSync } from "node:fs";
import { readdir, realpath, stat } from "node:fs/promises";
import { hostname } from "node:os";
import { dirname, join, relative, resolve } from "node:path";
import { Redis, type RedisOptions } from "ioredis";
import { openRegularFile } from "../io/small-file.js";
import { externalDataFiles } from "../model/external-data.js";
import { findNamedModel, listNamedModels, MODEL_NAME } from "../model/named.js";
import { PACKAGE_ROOT } from "../paths.js";
import type { CaseMetrics } from "../metrics/evaluate.js";

export const DEFAULT_QUEUE = "bhsd";

/** A segmentation of one case: read `input`, segment with `model`, write the labels to `out`. */
export interface SegmentJobData {
  kind: "segment";
  case: string;
  /** Absolute path of the CT (a NIfTI file, a DICOM series folder or zip), as every worker sees it. */
  input: string;
  /** hashInput of the CT at submission; a worker that reads other bytes fails the job. */
  inputHash: string;
  /** Model name, resolved in the worker's --model-dir. */
  model: string;
  /** sha256 of the model (ONNX and sidecar JSON) at submission, when the submitter had it; a worker with another model refuses. */
  modelHash: string | null;
  /** Absolute path of the label file to write (uint8 NIfTI, the CT's geometry). */
  out: string;
  /** Ground truth: when given, the worker scores its labels against it too. */
  gt?: string;
  mirror?: boolean;
  /** The batch that first asked for this job. */
  batch: string;
}

/** An evaluation of one case: labels against the ground truth. */
export interface EvaluateJobData {
  kind: "evaluate";
  case: string;
  gt: string;
  pred: string;
  batch?: string;
}

export type JobData = SegmentJobData | EvaluateJobData;

/** What a worker returns (stored by BullMQ in Redis: a few kB, never voxels). */
export interface JobResult {
  case: string;
  kind: JobData["kind"];
  /** The label file written (segment). */
  labels?: string;
  /** Per class voxels and mL (segment). */
  perClass?: Record<string, { name: string; voxels: number; volumeMl: number }>;
  bleeds?: number;
  backend?: string;
  windows?: number;
  metrics?: CaseMetrics;
  /** Worker name (host:pid) and milliseconds spent on the case. */
  worker: string;
  ms: number;
}

/** A submitted batch, as stored under `<prefix>:<queue>:batch:<id>`. */
export interface BatchRecord {
  id: string;
  created: string;
  data: string;
  gtDir: string | null;
  model: string;
  modelHash: string | null;
  out: string;
  cases: { case: string; jobId: string }[];
}

/** Redis connection for BullMQ (workers need maxRetriesPerRequest null: they block on the queue). */
export function connect(url: string, extra: RedisOptions = {}): Redis {
  if (!/^rediss?:\/\//.test(url)) throw new Error(`--redis must be a redis:// or rediss:// URL, got ${JSON.stringify(url)}`);
  return new Redis(url, { maxRetriesPerRequest: null, enableReadyCheck: true, ...extra });
}

/** Keys of this project beside BullMQ's (BullMQ uses `bull:<queue>:…`). */
export const batchKey = (queue: string, id: string) => `bhsd:${queue}:batch:${id}`;
export const batchesKey = (queue: string) => `bhsd:${queue}:batches`;

/**
 * sha256 of a regular file's bytes. Opened non-blocking and checked on the handle: a job naming a
 * FIFO would otherwise wait for a writer forever (holding its lock), and /dev/zero never end.
 */
export async function sha256File(path: string): Promise<string> {
  const { fh } = await openRegularFile(path).catch((e: Error) => {
    throw new Error(`${path}: ${e.message}`, { cause: e });
  });
  try {
    const h = createHash("sha256");
    for await (const b of fh.createReadStream({ autoClose: false })) h.update(b as Buffer);
    return h.digest("hex");
  } finally {
    await fh.close();
  }
}

/** Most files and folder depth hashInput walks (a DICOM study: hundreds to a few thousand files). */
const MAX_INPUT_FILES = 100_000;
const MAX_INPUT_DEPTH = 32;

/**
 * sha256 of a case's input: a file's bytes, or for a DICOM folder every file below it (relative
 * path and bytes, in sorted order), so that a changed, added or removed slice is a new input.
 */
export async function hashInput(path: string): Promise<string> {
  if (!statSync(path).isDirectory()) return sha256File(path);
  const files: string[] = [];
  const walk = async (dir: string, depth: number) => {
    if (depth > MAX_INPUT_DEPTH) throw new Error(`${path}: folders nested over ${MAX_INPUT_DEPTH} deep`);
    for (const e of (await readdir(dir, { withFileTypes: true })).sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0))) {
      if (e.isDirectory()) await walk(join(dir, e.name), depth + 1);
      else if (e.isFile()) files.push(join(dir, e.name));
      if (files.length > MAX_INPUT_FILES) throw new Error(`${path}: more than ${MAX_INPUT_FILES} files`);
    }
  };
  await walk(path, 0);
  const h = createHash("sha256");
  for (const f of files) h.update(`${relative(path, f)}\0${await sha256File(f)}\n`);
  return h.digest("hex");
}

/** The job id of a segmentation: the same CT bytes with the same model are one job, whoever submits them. */
export function segmentJobId(inputHash: string, model: string, modelHash: string | null, mirror: boolean): string {
  const h = createHash("sha256")
    .update(`${inputHash}\n${model}\n${modelHash ?? ""}\n${mirror ? 1 : 0}`)
    .digest("hex");
  return `seg-${h.slice(0, 40)}`;
}

export function defaultModelDir(dir?: string): string {
  return resolve(dir ?? process.env.BHSD_MODEL_DIR ?? join(PACKAGE_ROOT, "models"));
}

/**
 * The model `name` of the folder (`<name>.onnx`, or a `<name>/` nnU-Net trainer folder or MONAI
 * bundle), checked: a plain name of a model there.
 */
export function modelPath(dir: string, name: string): string {
  if (!MODEL_NAME.test(name) || name.includes(".."))
    throw new Error(`model must be a plain name (letters, digits, . _ -), got ${JSON.stringify(name)}`);
  const m = findNamedModel(dir, name);
  if (!m) {
    const have = listNamedModels(dir).map((x) => x.name);
    throw new Error(`no model "${name}" in ${dir} (available: ${have.join(", ") || "none"})`);
  }
  return m.path;
}

/**
 * The model's fingerprint: for an .onnx file, sha256 over its bytes, its sidecar JSON (if any)
 * and the external data files it names (a network retrained and exported again by PyTorch's
 * dynamo exporter changes only its .onnx.data: the same .onnx must not make the same job id); for
 * a model folder, over every file in it.
 */
export async function modelHash(onnxPath: string): Promise<string> {
  if ((await stat(onnxPath)).isDirectory()) return folderHash(onnxPath);
  const side = onnxPath.replace(/\.onnx$/i, ".json");
  const parts = [await sha256File(onnxPath), existsSync(side) ? await sha256File(side) : ""];
  for (const key of await externalDataFiles(onnxPath)) {
    const p = join(dirname(onnxPath), ...key.split("/"));
    // (only a regular file is read: a FIFO would never end; loading the model refuses what is not one)
    const st = await stat(p).catch(() => undefined);
    parts.push(`${key}:${st?.isFile() ? await sha256File(p) : "not a file"}`);
  }
  return createHash("sha256").update(parts.join("\n")).digest("hex");
}

export function workerName(): string {
  return `${hostname()}:${process.pid}`;
}

/**
 * Metrics through Redis: BullMQ stores a job's result as JSON, where NaN and ±Infinity (an HD95
 * with an empty side) would become null. They travel as "nan", "inf", "-inf" (the project's JSON
 * convention, see toJson) and are turned back into numbers on reading.
 */
export function encodeNumbers<T>(v: T): T {
  return JSON.parse(
    JSON.stringify(v, (_k, x) => (typeof x === "number" && !Number.isFinite(x) ? (Number.isNaN(x) ? "nan" : x > 0 ? "inf" : "-inf") : x)),
  ) as T;
}

export function decodeNumbers<T>(v: T): T {
  return JSON.parse(JSON.stringify(v), (_k, x) => (x === "nan" ? NaN : x === "inf" ? Infinity : x === "-inf" ? -Infinity : x)) as T;
}

/** Most files, and folder levels, a model folder's fingerprint reads. */
const MAX_FILES = 10_000;
const MAX_DEPTH = 8;

/**
 * sha256 over every regular file of a model folder (its path and its bytes' sha256, in path order),
 * links followed as the loaders follow them (a fold linked from elsewhere and retrained changes
 * it; a folder reached twice is hashed once): a retrained fold or an edited config changes it.
 * Bounded: at most MAX_FILES entries of any kind, MAX_DEPTH levels.
 */
async function folderHash(dir: string): Promise<string> {
  const lines: string[] = [];
  const seen = new Set<string>();
  let entries = 0;
  const walk = async (d: string, depth: number): Promise<void> => {
    if (depth > MAX_DEPTH) throw new Error(`${dir}: model folder nested deeper than ${MAX_DEPTH} levels`);
    const real = await realpath(d);
    if (seen.has(real)) return void lines.push(`${relative(dir, d)} (a folder seen before)`);
    seen.add(real);
    for (const f of (await readdir(d)).sort()) {
      if (++entries > MAX_FILES) throw new Error(`${dir}: more than ${MAX_FILES} entries in a model folder`);
      const p = join(d, f);
      // (stat follows links; a link to nothing, or a file gone meanwhile, counts as such)
      const st = await stat(p).catch(() => null);
      const rel = relative(dir, p);
      if (!st) lines.push(`${rel} (unreadable)`);
      else if (st.isDirectory()) await walk(p, depth + 1);
      else if (st.isFile()) lines.push(`${rel} ${await sha256File(p)}`);
    }
  };
  await walk(dir, 0);
  return createHash("sha256").update(lines.join("\n")).digest("hex");
}
