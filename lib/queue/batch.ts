/**
 * Batches on the shared queue: submit one job per case of a dataset, follow them, gather the
 * results and score them over every worker's labels.
 *
 * Idempotent: a case's job id is a hash of its CT bytes, the model (name and bytes) and the
 * mirroring, and BullMQ adds a job id once: a case already done (or under way) is not redone,
 * whoever submitted it and whatever the batch. A failed case is retried by a new submission; a
 * completed case whose label file is gone is redone.
 */
import { createHash } from "node:crypto";
import { existsSync, statSync } from "node:fs";
import { open, readdir } from "node:fs/promises";
import { join, resolve } from "node:path";
import { findNamedModel } from "../model/named.js";
import { Queue, type Job, type JobState } from "bullmq";
import { readNifti } from "../io/nifti.js";
import { caseName, layoutFolders, type DatasetCase, type DatasetResult } from "../metrics/dataset.js";
import { evaluate, BHSD_CLASSES, DEFAULT_CLASSES } from "../metrics/evaluate.js";
import { csvNumber, csvText } from "../metrics/csv.js";
import { summarize } from "../metrics/summary.js";
import { releaseDropped } from "../volume.js";
import {
  batchesKey,
  batchKey,
  connect,
  DEFAULT_QUEUE,
  decodeNumbers,
  defaultModelDir,
  modelHash as hashModel,
  hashInput,
  segmentJobId,
  type BatchRecord,
  type JobData,
  type JobResult,
  type SegmentJobData,
} from "./common.js";

const NIFTI = /\.nii(\.gz)?$/i;

export interface QueueConnectionOptions {
  redis: string;
  queue?: string;
}

export interface SubmitOptions extends QueueConnectionOptions {
  /** BHSD layout (images/ and "ground truths"/) or a folder of NIfTI files, DICOM series folders or zips of one. */
  data: string;
  model: string;
  /** Where the submitter finds the model to fingerprint it (default BHSD_MODEL_DIR or the package's models/); a model missing there is keyed by name alone. */
  modelDir?: string;
  /** Folder of the label files (default <data>/predictions); every worker must reach it at this path. */
  out?: string;
  mirror?: boolean;
  /** Tries per job before it fails (default 3), the first retry after backoffMs, then doubling (default 5 s). */
  attempts?: number;
  backoffMs?: number;
  onProgress?: (done: number, total: number, name: string) => void;
}

export interface SubmitResult {
  batch: BatchRecord;
  /** New jobs. */
  added: number;
  /** Cases already done (same CT and model) or already queued or running. */
  done: number;
  pending: number;
  /** Failed or vanished-label cases put back on the queue. */
  retried: number;
}

/** A folder whose first file (by name) is a DICOM part-10 file ("DICM" at byte 128). */
async function holdsDicom(dir: string): Promise<boolean> {
  const first = (await readdir(dir, { withFileTypes: true }))
    .filter((e) => e.isFile())
    .map((e) => e.name)
    .sort()[0];
  if (!first) return false;
  const fh = await open(join(dir, first), "r");
  try {
    const b = Buffer.alloc(132);
    const { bytesRead } = await fh.read(b, 0, 132, 0);
    return bytesRead === 132 && b.toString("latin1", 128, 132) === "DICM";
  } finally {
    await fh.close();
  }
}

/** The cases of a dataset folder: images and, in BHSD's layout, the ground-truth folder. */
export async function datasetCases(
  data: string,
  skip?: string,
): Promise<{ images: string; gtDir: string | null; files: { case: string; path: string }[] }> {
  const root = resolve(data);
  if (!existsSync(root) || !statSync(root).isDirectory()) throw new Error(`--data ${data} is not a folder`);
  const layout = layoutFolders(root);
  const images = existsSync(layout.images) ? layout.images : root;
  const gtDir = existsSync(layout.truths) ? layout.truths : null;
  // NIfTI files, zips of a DICOM series, and folders holding DICOM files (one series each)
  const files: { case: string; path: string }[] = [];
  for (const e of (await readdir(images, { withFileTypes: true })).sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0))) {
    const path = join(images, e.name);
    if (e.isFile() && NIFTI.test(e.name)) files.push({ case: caseName(e.name), path });
    else if (e.isFile() && /\.zip$/i.test(e.name)) files.push({ case: e.name.replace(/\.zip$/i, ""), path });
    else if (e.isDirectory() && path !== skip && (await holdsDicom(path))) files.push({ case: e.name, path });
  }
  if (!files.length) throw new Error(`--data ${data}: no .nii or .nii.gz files, DICOM folders or zips in ${images}`);
  const seen = new Set<string>();
  for (const f of files) {
    if (seen.has(f.case)) throw new Error(`--data ${data}: two files for case ${f.case}`);
    seen.add(f.case);
  }
  return { images, gtDir, files };
}

export function openQueue(o: QueueConnectionOptions) {
  const connection = connect(o.redis);
  const name = o.queue ?? DEFAULT_QUEUE;
  const queue = new Queue<JobData, JobResult>(name, { connection });
  return {
    queue,
    name,
    connection,
    async close() {
      await queue.close();
      await connection.quit().catch(() => {});
    },
  };
}

export async function submitBatch(o: SubmitOptions): Promise<SubmitResult> {
  const out = resolve(o.out ?? join(o.data, "predictions"));
  const { gtDir, files } = await datasetCases(o.data, out);
  if (!/^[A-Za-z0-9][A-Za-z0-9._-]*$/.test(o.model) || o.model.includes(".."))
    throw new Error(`--model must be a plain model name, got ${JSON.stringify(o.model)}`);
  // (<name>.onnx or a <name>/ model folder, where this machine has it)
  const found = findNamedModel(defaultModelDir(o.modelDir), o.model);
  const modelHash = found ? await hashModel(found.path) : null;
  const mirror = !!o.mirror;
  const id = createHash("sha256")
    .update(`${resolve(o.data)}\n${o.model}\n${modelHash ?? ""}\n${out}\n${mirror}`)
    .digest("hex")
    .slice(0, 12);
  const q = openQueue(o);
  try {
    const batch: BatchRecord = {
      id,
      created: new Date().toISOString(),
      data: resolve(o.data),
      gtDir,
      model: o.model,
      modelHash,
      out,
      cases: [],
    };
    let added = 0,
      done = 0,
      pending = 0,
      retried = 0,
      k = 0;
    for (const f of files) {
      const inputHash = await hashInput(f.path);
      const jobId = segmentJobId(inputHash, o.model, modelHash, mirror);
      const gtPath = gtDir ? [".nii.gz", ".nii"].map((e) => join(gtDir, f.case + e)).find((p) => existsSync(p)) : undefined;
      const data: SegmentJobData = {
        kind: "segment",
        case: f.case,
        input: f.path,
        inputHash,
        model: o.model,
        modelHash,
        out: join(out, `${f.case}.nii.gz`),
        ...(gtPath ? { gt: gtPath } : {}),
        ...(mirror ? { mirror } : {}),
        batch: id,
      };
      const existing = await q.queue.getJob(jobId);
      const state = existing ? await existing.getState() : "unknown";
      // a job a REST front submitted for the same CT and model becomes this batch's: the front's
      // sweep then keeps it, and a retry reads this batch's CT, not the front's copy of it
      if (existing && state !== "unknown" && (existing.data as Partial<SegmentJobData>).batch === "rest")
        await (existing as Job<JobData, JobResult>).updateData({ ...(existing.data as SegmentJobData), input: f.path, batch: id });
      if (!existing || state === "unknown") {
        await q.queue.add(f.case, data, {
          jobId,
          attempts: o.attempts ?? 3,
          backoff: { type: "exponential", delay: o.backoffMs ?? 5000 },
          removeOnComplete: false,
          removeOnFail: false,
        });
        added++;
      } else if (state === "failed") {
        await existing.retry("failed", { resetAttemptsMade: true, resetAttemptsStarted: true });
        retried++;
      } else if (state === "completed") {
        const labels = (existing.returnvalue as JobResult | null)?.labels;
        if (labels && existsSync(labels)) done++;
        else {
          await existing.retry("completed", { resetAttemptsMade: true, resetAttemptsStarted: true });
          retried++;
        }
      } else pending++;
      batch.cases.push({ case: f.case, jobId });
      o.onProgress?.(++k, files.length, f.case);
    }
    await q.connection.set(batchKey(q.name, id), JSON.stringify(batch));
    await q.connection.zadd(batchesKey(q.name), Date.now(), id);
    return { batch, added, done, pending, retried };
  } finally {
    await q.close();
  }
}

export interface CaseStatus {
  case: string;
  jobId: string;
  state: JobState | "unknown";
  progress: { step?: string; done?: number; total?: number } | null;
  attempts: number;
  error: string | null;
  worker: string | null;
  result: JobResult | null;
}

export interface BatchStatus {
  batch: Omit<BatchRecord, "cases"> & { total: number };
  /** Cases by state: completed, failed, active, waiting, delayed (waiting for a retry after backoff) … */
  counts: Record<string, number>;
  cases: CaseStatus[];
  /** The whole queue (all batches) and the workers connected now. */
  queue: Record<string, number>;
  workers: number;
}

async function loadBatch(q: ReturnType<typeof openQueue>, id?: string): Promise<BatchRecord> {
  const bid = id ?? (await q.connection.zrange(batchesKey(q.name), -1, -1))[0];
  if (!bid) throw new Error(`no batch submitted on queue ${q.name}`);
  const raw = await q.connection.get(batchKey(q.name, bid));
  if (!raw) throw new Error(`no batch ${bid} on queue ${q.name}`);
  return JSON.parse(raw) as BatchRecord;
}

async function caseStatus(queue: Queue<JobData, JobResult>, c: { case: string; jobId: string }): Promise<CaseStatus> {
  let job = (await queue.getJob(c.jobId)) as Job<JobData, JobResult> | undefined;
  if (!job) return { ...c, state: "unknown", progress: null, attempts: 0, error: "job not in Redis", worker: null, result: null };
  const state = await job.getState();
  // the job's fields were read before its state: a last attempt that ended in between left them
  // one attempt behind ("failed after 2 attempt(s)" of 3, seen on a loaded machine), so a finished
  // job is read again — its fields no longer change once it is completed or failed
  if (state === "completed" || state === "failed") job = ((await queue.getJob(c.jobId)) as Job<JobData, JobResult> | undefined) ?? job;
  const p = job.progress;
  return {
    ...c,
    state,
    progress: typeof p === "object" && p ? (p as CaseStatus["progress"]) : null,
    attempts: job.attemptsMade,
    error: state === "completed" ? null : job.failedReason || null,
    worker: job.processedBy ?? null,
    result: state === "completed" && job.returnvalue ? decodeNumbers(job.returnvalue) : null,
  };
}

/** The state of every case of a batch (the latest submitted when no id is given). */
export async function batchStatus(
  o: QueueConnectionOptions & { batch?: string },
  finished?: Map<string, CaseStatus>,
): Promise<BatchStatus> {
  const q = openQueue(o);
  try {
    const b = await loadBatch(q, o.batch);
    // `finished`: cases already seen completed or failed are not asked again (following a large batch)
    const one = async (c: { case: string; jobId: string }) => {
      // keyed by case and job: two cases with the same bytes share one job
      const key = `${c.case}\n${c.jobId}`;
      const known = finished?.get(key);
      if (known) return known;
      const st = await caseStatus(q.queue, c);
      if (finished && (st.state === "completed" || st.state === "failed")) finished.set(key, st);
      return st;
    };
    const cases: CaseStatus[] = [];
    for (let i = 0; i < b.cases.length; i += 64) cases.push(...(await Promise.all(b.cases.slice(i, i + 64).map(one))));
    const counts: Record<string, number> = {};
    for (const c of cases) counts[c.state] = (counts[c.state] ?? 0) + 1;
    const { cases: _omit, ...rest } = b;
    const queue = await q.queue.getJobCounts("waiting", "active", "delayed", "completed", "failed", "prioritized", "paused");
    const workers = (await q.queue.getWorkers()).length;
    return { batch: { ...rest, total: b.cases.length }, counts, cases, queue, workers };
  } finally {
    await q.close();
  }
}

const CLASS_IDS = DEFAULT_CLASSES;

/** One row per case: state, label file, worker, backend, time, bleeds, mL per class, error. */
export function resultsCsv(s: BatchStatus): string {
  const head = [
    "case",
    "state",
    "labels",
    "worker",
    "backend",
    "ms",
    "bleeds",
    ...CLASS_IDS.map((c) => `${BHSD_CLASSES[c]}_ml`),
    "attempts",
    "error",
  ];
  const rows = s.cases.map((c) => {
    const r = c.result;
    return [
      c.case,
      c.state,
      r?.labels ?? "",
      r?.worker ?? c.worker ?? "",
      r?.backend ?? "",
      r ? String(r.ms) : "",
      r?.bleeds !== undefined ? String(r.bleeds) : "",
      ...CLASS_IDS.map((k) => (r?.perClass ? csvNumber(r.perClass[String(k)]?.volumeMl ?? 0) : "")),
      String(c.attempts),
      c.error ?? "",
    ]
      .map(csvText)
      .join(",");
  });
  return [head.join(","), ...rows].join("\n") + "\n";
}

/**
 * The dataset table over all workers' labels: the batch's cases against their ground truths
 * (BHSD layout), as evaluateDataset gives it for one folder. The metrics the workers computed
 * are used; a completed case without them is scored here from its label file. Cases not
 * completed are listed as missing.
 */
export async function batchEvaluate(
  o: QueueConnectionOptions & { batch?: string; onProgress?: (done: number, total: number, name: string) => void },
): Promise<DatasetResult> {
  const s = await batchStatus(o);
  if (!s.batch.gtDir)
    throw new Error(`batch ${s.batch.id} has no ground truths (its --data ${s.batch.data} has no "ground truths" folder)`);
  const gtDir = s.batch.gtDir;
  const cases: DatasetCase[] = [];
  const missing: string[] = [];
  const failed: { case: string; error: string }[] = [];
  let k = 0;
  for (const c of s.cases) {
    const gt = [".nii.gz", ".nii"].map((e) => join(gtDir, c.case + e)).find((p) => existsSync(p));
    if (!gt) failed.push({ case: c.case, error: `no ground truth for ${c.case} in ${gtDir}` });
    else if (c.state !== "completed" || !c.result?.labels) missing.push(c.case);
    else {
      try {
        let metrics = c.result.metrics;
        if (!metrics) {
          const g = await readNifti(gt),
            p = await readNifti(c.result.labels);
          metrics = await evaluate(g, p, { names: [`gt ${c.case}`, `pred ${c.case}`] });
          releaseDropped(g, p);
        }
        cases.push({ case: c.case, gt, pred: c.result.labels, metrics });
      } catch (e) {
        failed.push({ case: c.case, error: (e as Error).message });
      }
    }
    o.onProgress?.(++k, s.cases.length, c.case);
  }
  return {
    gtDir,
    predDir: s.batch.out,
    cases,
    missing,
    extra: [],
    failed,
    summary: summarize(
      cases.map((c) => c.metrics),
      DEFAULT_CLASSES,
    ),
  };
}

/** Follows a batch until no case is waiting, active or delayed; calls back with the status each time. */
export async function waitBatch(
  o: QueueConnectionOptions & { batch?: string; intervalMs?: number; onStatus?: (s: BatchStatus) => void },
): Promise<BatchStatus> {
  const finished = new Map<string, CaseStatus>();
  for (;;) {
    const s = await batchStatus(o, finished);
    o.onStatus?.(s);
    if ((s.counts.completed ?? 0) + (s.counts.failed ?? 0) + (s.counts.unknown ?? 0) === s.batch.total) return s;
    await new Promise((r) => setTimeout(r, o.intervalMs ?? 1000));
  }
}
