/**
 * BHSD's dataset layout, read and written in this one place — `<root>/images/<case>.nii.gz`,
 * `<root>/ground truths/<case>.nii.gz` and, for slice-level labels (RSNA form, as `bhsd phantom`
 * writes them), `<root>/slice labels/<case>.csv` — and evaluateDataset: a folder of ground truths
 * (BHSD's `label_192/ground truths/`, or the `label_192` folder itself) against a folder of
 * predictions, matched by case name. Missing and extra cases are listed, never silently skipped.
 */
import { readdir, stat } from "node:fs/promises";
import { basename, join } from "node:path";
import { invalidParameterError, optionsObject } from "../is.js";
import { readNifti, type ReadNiftiOptions } from "../io/nifti.js";
import { readSmallFile } from "../io/small-file.js";
import type { Volume } from "../types.js";
import { releaseDropped } from "../volume.js";
import { parseSliceCsv, type SliceLabels } from "./slices.js";
import { checkClasses, evaluate, type CaseMetrics, type EvaluateOptions, DEFAULT_CLASSES } from "./evaluate.js";
import { summarize, type Summary } from "./summary.js";

export interface DatasetOptions extends EvaluateOptions {
  gtDir: string;
  predDir: string;
  /** Score a missing prediction as an empty one (default false: it is listed and left out). */
  missingAsEmpty?: boolean;
  /** readNifti's limits for every file (e.g. { maxBytes }); default readNifti's own. */
  read?: ReadNiftiOptions;
  /** Called after each case. */
  onProgress?: (done: number, total: number, caseName: string) => void;
}

export interface DatasetCase {
  case: string;
  gt: string;
  pred: string | null;
  metrics: CaseMetrics;
}

export interface DatasetResult {
  gtDir: string;
  predDir: string;
  cases: DatasetCase[];
  /** Ground truths without a prediction. */
  missing: string[];
  /** Predictions without a ground truth. */
  extra: string[];
  /** Cases that could not be scored, with the reason. */
  failed: { case: string; error: string }[];
  summary: Summary;
}

/** The layout's folder names under a dataset root. */
export const LAYOUT = { images: "images", truths: "ground truths", slices: "slice labels" } as const;

/** The layout's three folders under `root`. */
export function layoutFolders(root: string): { images: string; truths: string; slices: string } {
  return { images: join(root, LAYOUT.images), truths: join(root, LAYOUT.truths), slices: join(root, LAYOUT.slices) };
}

const NIFTI = /\.nii(\.gz)?$/i;
/** A case's name: its file name without .nii or .nii.gz. */
export const caseName = (file: string) => basename(file).replace(NIFTI, "");

async function isDir(p: string): Promise<boolean> {
  try {
    return (await stat(p)).isDirectory();
  } catch {
    return false;
  }
}

/** The folder of ground truths: `<dir>/ground truths` where `dir` is a dataset root, else `dir` itself. */
export async function truthsFolder(dir: string): Promise<string> {
  const t = layoutFolders(dir).truths;
  return (await isDir(t)) ? t : dir;
}

/** NIfTI files of a folder, by case name (sorted); `what` names the folder in errors. */
export async function listCases(dir: string, what: string): Promise<Map<string, string>> {
  if (!(await isDir(dir))) throw new Error(`${what} ${dir} is not a folder`);
  const out = new Map<string, string>();
  for (const f of (await readdir(dir)).sort()) {
    if (!NIFTI.test(f)) continue;
    const name = caseName(f);
    if (out.has(name)) throw new Error(`${what} ${dir} holds two files for case ${name}`);
    out.set(name, join(dir, f));
  }
  return out;
}

export async function evaluateDataset(options: DatasetOptions): Promise<DatasetResult> {
  const opts = optionsObject("options", options) as unknown as DatasetOptions;
  if (typeof opts.gtDir !== "string") throw invalidParameterError("options.gtDir", "a folder path", opts.gtDir);
  if (typeof opts.predDir !== "string") throw invalidParameterError("options.predDir", "a folder path", opts.predDir);
  const read = optionsObject("options.read", opts.read) as ReadNiftiOptions;
  if (opts.onProgress !== undefined && typeof opts.onProgress !== "function")
    throw invalidParameterError("options.onProgress", "a function", opts.onProgress);
  // BHSD's layout: label_192/images beside label_192/ground truths
  const gtDir = await truthsFolder(opts.gtDir);
  const gts = await listCases(gtDir, "gtDir");
  const preds = await listCases(opts.predDir, "predDir");
  if (gts.size === 0) throw new Error(`gtDir ${gtDir} holds no .nii or .nii.gz files`);
  const missing = [...gts.keys()].filter((c) => !preds.has(c));
  const extra = [...preds.keys()].filter((c) => !gts.has(c));
  const evalOpts: EvaluateOptions = {};
  // (checked once here: "1,1" failed every case, each after reading it)
  if (opts.classes !== undefined) evalOpts.classes = checkClasses(opts.classes);
  if (opts.nsdToleranceMm !== undefined) evalOpts.nsdToleranceMm = opts.nsdToleranceMm;
  const cases: DatasetCase[] = [];
  const failed: { case: string; error: string }[] = [];
  const todo = [...gts.entries()].filter(([c]) => preds.has(c) || opts.missingAsEmpty);
  let done = 0;
  for (const [name, gtPath] of todo) {
    const predPath = preds.get(name) ?? null;
    let gt: Volume | undefined, pred: Volume | undefined;
    try {
      gt = await readNifti(gtPath, read);
      pred = predPath ? await readNifti(predPath, read) : { ...gt, data: new Uint8Array(gt.data.length) };
      const metrics = await evaluate(gt, pred, { ...evalOpts, names: [`gt ${name}`, `pred ${name}`] });
      cases.push({ case: name, gt: gtPath, pred: predPath, metrics });
    } catch (e) {
      failed.push({ case: name, error: (e as Error).message });
    } finally {
      releaseDropped(gt, pred); // (each case's volumes back now, not at V8's next collection)
    }
    opts.onProgress?.(++done, todo.length, name);
  }
  return {
    gtDir,
    predDir: opts.predDir,
    cases,
    missing,
    extra,
    failed,
    summary: summarize(
      cases.map((c) => c.metrics),
      opts.classes ?? DEFAULT_CLASSES,
    ),
  };
}

/** A case with voxel labels: images/<case> and ground truths/<case>. */
export interface LayoutCase {
  name: string;
  ct: Volume;
  labels: Volume;
}

/** A case with slice labels only: images/<case> and slice labels/<case>.csv, one row per slice. */
export interface SliceLayoutCase {
  name: string;
  ct: Volume;
  slices: SliceLabels;
}

/** Every case of `images/` with its ground truth (each image must have one), in case-name order. */
export async function readLabelledCases(root: string, read?: ReadNiftiOptions): Promise<LayoutCase[]> {
  const f = layoutFolders(root);
  const images = await listCases(f.images, "images folder");
  if (!images.size) throw new Error(`${f.images} holds no .nii or .nii.gz files`);
  const truths = await listCases(f.truths, "ground truths folder");
  const out: LayoutCase[] = [];
  for (const [name, path] of images) {
    const gt = truths.get(name);
    if (!gt) throw new Error(`case ${name} has an image (${path}) but no ground truth in ${f.truths}`);
    out.push({ name, ct: await readNifti(path, read), labels: await readNifti(gt, read) });
  }
  return out;
}

/** Largest slice label CSV read (a row a slice: a 60-slice case's is about a kilobyte). */
const MAX_SLICE_CSV_BYTES = 16 << 20;

/** Every case of `images/` with its `slice labels/<case>.csv`, whose rows must match the image's slices. */
export async function readSliceLabelledCases(root: string, read?: ReadNiftiOptions): Promise<SliceLayoutCase[]> {
  const f = layoutFolders(root);
  const images = await listCases(f.images, "images folder");
  if (!images.size) throw new Error(`${f.images} holds no .nii or .nii.gz files`);
  const out: SliceLayoutCase[] = [];
  for (const [name, path] of images) {
    const csv = join(f.slices, `${name}.csv`);
    const ct = await readNifti(path, read);
    // (a case's CSV is a row a slice: kilobytes; a FIFO or a huge file there is refused, not read)
    const text = await readSmallFile(csv, { maxBytes: MAX_SLICE_CSV_BYTES, what: "a slice label CSV" }).catch((e: Error) => {
      throw new Error(`${csv}: ${e.message}`, { cause: e });
    });
    const slices = parseSliceCsv(text.toString("utf8"), csv);
    if (slices.present.length !== ct.dims[2])
      throw new Error(`${csv} has ${slices.present.length} slices but ${basename(path)} has ${ct.dims[2]}`);
    out.push({ name, ct, slices });
  }
  return out;
}
