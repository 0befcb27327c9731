/**
 * A BullMQ worker: takes segmentation and evaluation jobs from the queue and runs them on this
 * machine's best backend (cuda, native, ts: a GPU machine and CPU machines can serve one queue).
 *
 * - Progress per window goes to the job (job.progress: { step, done, total }).
 * - Labels are written where the job says (a shared folder), by writeNifti (temporary file and
 *   rename: a killed worker leaves no half file); Redis gets a few kB of metadata.
 * - A worker killed mid-job (SIGKILL, a lost machine) stops renewing the job's lock; after
 *   `lockMs` another worker's stalled-job check (every `stalledIntervalMs`) puts the job back and
 *   it runs again elsewhere (BullMQ's stalled-job detection).
 * - close() (SIGTERM in `bhsd worker`) takes no new job and waits for the jobs in hand.
 */
import { mkdir, realpath, stat } from "node:fs/promises";
import { basename, dirname, isAbsolute, join, sep } from "node:path";
import { UnrecoverableError, Worker, type Job } from "bullmq";
import { backendInfo } from "../backends/index.js";
import { readCt } from "../io/ct.js";
import { readNifti, writeNifti } from "../io/nifti.js";
import { evaluate } from "../metrics/evaluate.js";
import { loadModelAt, type LoadedModel } from "../model/named.js";
import { segment } from "../model/segment.js";
import { releaseDropped } from "../volume.js";
import {
  connect,
  DEFAULT_QUEUE,
  defaultModelDir,
  encodeNumbers,
  modelHash,
  modelPath,
  hashInput,
  workerName,
  type EvaluateJobData,
  type JobData,
  type JobResult,
  type SegmentJobData,
} from "./common.js";

export interface QueueWorkerOptions {
  redis: string;
  queue?: string;
  modelDir?: string;
  /** Jobs at once in this process (default 1: one segmentation already uses every core). */
  concurrency?: number;
  /** A job's lock lives this long without renewal (renewed every half): after it a killed worker's job is retried (default 60 s). */
  lockMs?: number;
  /** How often this worker looks for stalled jobs (default 30 s). */
  stalledIntervalMs?: number;
  /** Times a job may stall before it fails (default 2). */
  maxStalled?: number;
  /** readNifti's byte limit for inputs. */
  maxInputBytes?: number;
  /** One line per event (taken, done, failed); default stderr. */
  log?: (line: string) => void;
}

export interface QueueWorker {
  worker: Worker<JobData, JobResult>;
  name: string;
  /** Takes no new job, waits for those in hand, disconnects. */
  close(): Promise<void>;
}

/**
 * Refuses a job whose output would overwrite one of its inputs (the same file, by device and
 * inode) or land inside an input folder (a DICOM series, whose next hash it would change). The
 * job comes from Redis, written by whoever submitted it: a damaged or hostile record must not
 * replace the CT with its labels.
 */
async function refuseOverwrite(out: string, inputs: (string | undefined)[]): Promise<void> {
  const o = await stat(out).catch(() => null);
  // the output's folder as it will be: its nearest existing ancestor's real path, then the rest
  // (the worker makes the missing folders, which may be inside an input folder)
  // (not normalised first: "l/../series" must go through the link l, as mkdir will)
  let base = dirname(isAbsolute(out) ? out : process.cwd() + sep + out);
  const rest: string[] = [];
  let real: string | null;
  for (;;) {
    real = await realpath(base).catch(() => null);
    if (real !== null || dirname(base) === base) break;
    rest.unshift(basename(base));
    base = dirname(base);
  }
  const outDir = real === null ? null : join(real, ...rest);
  for (const p of inputs) {
    if (!p) continue;
    const s = await stat(p).catch(() => null);
    if (!s) continue;
    if (o && o.dev === s.dev && o.ino === s.ino)
      throw new UnrecoverableError(`the job's output ${out} is its input ${p}; refusing to overwrite it`);
    if (s.isDirectory() && outDir) {
      const folder = await realpath(p);
      if (outDir === folder || outDir.startsWith(folder + sep))
        throw new UnrecoverableError(`the job's output ${out} is inside its input folder ${p}; refusing to write there`);
    }
  }
}

export async function startWorker(o: QueueWorkerOptions): Promise<QueueWorker> {
  const queue = o.queue ?? DEFAULT_QUEUE;
  const modelDir = defaultModelDir(o.modelDir);
  const name = workerName();
  const log = o.log ?? ((l: string) => process.stderr.write(l + "\n"));
  const models = new Map<string, Promise<{ model: LoadedModel; hash: string }>>();
  const read = o.maxInputBytes ? { maxBytes: o.maxInputBytes } : {};

  function getModel(n: string) {
    let m = models.get(n);
    if (!m) {
      m = (async () => {
        const p = modelPath(modelDir, n);
        // (the fingerprint first: a model loaded for a job that cannot name it would be left loaded)
        const hash = await modelHash(p);
        return { model: await loadModelAt(p), hash };
      })();
      models.set(n, m);
      m.catch(() => models.delete(n));
    }
    return m;
  }

  async function runSegment(job: Job<JobData, JobResult>, d: SegmentJobData, t0: number): Promise<JobResult> {
    await refuseOverwrite(d.out, [d.input, d.gt]);
    const hash = await hashInput(d.input);
    if (hash !== d.inputHash)
      throw new UnrecoverableError(
        `${d.input} changed since it was submitted (sha256 ${hash.slice(0, 12)}…, submitted ${d.inputHash.slice(0, 12)}…); submit it again`,
      );
    let m;
    try {
      m = await getModel(d.model);
    } catch (e) {
      // a worker without the model cannot do the job; another worker may: fail this attempt (retried)
      throw new Error(`worker ${name}: ${(e as Error).message}`, { cause: e });
    }
    if (d.modelHash && d.modelHash !== m.hash)
      throw new UnrecoverableError(
        `worker ${name}: model "${d.model}" in ${modelDir} is not the one submitted (sha256 ${m.hash.slice(0, 12)}…, submitted ${d.modelHash.slice(0, 12)}…)`,
      );
    const ct = await readCt(d.input, read);
    let last = 0;
    const { labels, report } = await segment(ct, m.model, {
      mirror: !!d.mirror,
      onProgress: (p) => {
        if (p.step !== "window") return;
        const now = Date.now();
        if (p.done !== p.total && now - last < 200) return;
        last = now;
        job.updateProgress({ step: p.step, done: p.done, total: p.total }).catch(() => {});
      },
    });
    releaseDropped(ct); // (a long-running worker's CTs back now, not at V8's next collection)
    await mkdir(dirname(d.out), { recursive: true });
    await writeNifti(d.out, labels);
    const result: JobResult = {
      case: d.case,
      kind: "segment",
      labels: d.out,
      perClass: report.perClass,
      bleeds: report.components.length,
      backend: report.backend,
      windows: report.windows,
      worker: name,
      ms: 0,
    };
    if (d.gt) {
      const gt = await readNifti(d.gt, read);
      result.metrics = encodeNumbers(await evaluate(gt, labels, { names: [`gt ${d.case}`, `pred ${d.case}`] }));
      releaseDropped(gt);
    }
    releaseDropped(labels);
    result.ms = Date.now() - t0;
    return result;
  }

  async function runEvaluate(d: EvaluateJobData, t0: number): Promise<JobResult> {
    const [gt, pred] = await Promise.all([readNifti(d.gt, read), readNifti(d.pred, read)]);
    const metrics = encodeNumbers(await evaluate(gt, pred, { names: [`gt ${d.case}`, `pred ${d.case}`] }));
    releaseDropped(gt, pred);
    return { case: d.case, kind: "evaluate", metrics, worker: name, ms: Date.now() - t0 };
  }

  const connection = connect(o.redis);
  const worker = new Worker<JobData, JobResult>(
    queue,
    async (job) => {
      const t0 = Date.now();
      log(`taken ${job.id} ${job.data.case} attempt ${job.attemptsMade + 1}`);
      const d = job.data;
      if (d.kind === "segment") return runSegment(job, d, t0);
      if (d.kind === "evaluate") return runEvaluate(d, t0);
      throw new UnrecoverableError(`unknown job kind ${JSON.stringify((d as { kind?: unknown }).kind)}`);
    },
    {
      connection,
      name,
      concurrency: o.concurrency ?? 1,
      lockDuration: o.lockMs ?? 60_000,
      stalledInterval: o.stalledIntervalMs ?? 30_000,
      maxStalledCount: o.maxStalled ?? 2,
      autorun: false,
    },
  );
  worker.on("completed", (job, r) => log(`done ${job.id} ${job.data.case} ${r.ms} ms on ${r.backend ?? backendInfo().active}`));
  worker.on("failed", (job, err) => log(`failed ${job?.id} ${job?.data.case}: ${err.message.split("\n")[0]}`));
  worker.on("error", (err) => log(`error: ${err.message}`));
  worker.run().catch((e: Error) => log(`worker stopped: ${e.message}`));
  await worker.waitUntilReady();
  log(`worker ${name} on queue ${queue} (${backendInfo().active} backend, models in ${modelDir}, concurrency ${o.concurrency ?? 1})`);
  return {
    worker,
    name,
    async close() {
      await worker.close();
      await connection.quit().catch(() => {});
    },
  };
}
