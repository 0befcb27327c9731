/**
 * evaluateDataset: a folder of ground truths (BHSD's `label_192/ground truths/`, or the
 * `label_192` folder itself) against a folder of predictions, matched by file name. Missing and
 * extra cases are listed, never silently skipped.
 */
import { readdir, stat } from "node:fs/promises";
import { basename, join } from "node:path";
import { invalidParameterError, optionsObject } from "../is.js";
import { readNifti, type ReadNiftiOptions } from "../io/nifti.js";
import { evaluate, type CaseMetrics, type EvaluateOptions, DEFAULT_CLASSES } from "./evaluate.js";
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

const NIFTI = /\.nii(\.gz)?$/i;
export const caseName = (file: string) => basename(file).replace(NIFTI, "");

async function isDir(p: string): Promise<boolean> {
  try {
    return (await stat(p)).isDirectory();
  } catch {
    return false;
  }
}

/** NIfTI files of a folder, by case name. */
async function listCases(dir: string, what: string): Promise<Map<string, string>> {
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
  if (opts.onProgress !== undefined && typeof opts.onProgress !== "function") throw invalidParameterError("options.onProgress", "a function", opts.onProgress);
  // BHSD's layout: label_192/images beside label_192/ground truths
  const gtDir = (await isDir(join(opts.gtDir, "ground truths"))) ? join(opts.gtDir, "ground truths") : opts.gtDir;
  const gts = await listCases(gtDir, "gtDir");
  const preds = await listCases(opts.predDir, "predDir");
  if (gts.size === 0) throw new Error(`gtDir ${gtDir} holds no .nii or .nii.gz files`);
  const missing = [...gts.keys()].filter((c) => !preds.has(c));
  const extra = [...preds.keys()].filter((c) => !gts.has(c));
  const evalOpts: EvaluateOptions = {};
  if (opts.classes !== undefined) evalOpts.classes = opts.classes;
  if (opts.nsdToleranceMm !== undefined) evalOpts.nsdToleranceMm = opts.nsdToleranceMm;
  const cases: DatasetCase[] = [];
  const failed: { case: string; error: string }[] = [];
  const todo = [...gts.entries()].filter(([c]) => preds.has(c) || opts.missingAsEmpty);
  let done = 0;
  for (const [name, gtPath] of todo) {
    const predPath = preds.get(name) ?? null;
    try {
      const gt = await readNifti(gtPath, read);
      const pred = predPath ? await readNifti(predPath, read) : { ...gt, data: new Uint8Array(gt.data.length) };
      const metrics = await evaluate(gt, pred, { ...evalOpts, names: [`gt ${name}`, `pred ${name}`] });
      cases.push({ case: name, gt: gtPath, pred: predPath, metrics });
    } catch (e) {
      failed.push({ case: name, error: (e as Error).message });
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
    summary: summarize(cases.map((c) => c.metrics), opts.classes ?? DEFAULT_CLASSES),
  };
}
