/**
 * Runs a job of worker.ts in a worker thread. Aborting the signal terminates that thread, which
 * stops the work at once; the promise settles only after the thread has exited. A worker that
 * finished its job is kept a few seconds for the next one (at most MAX_IDLE of them, unref'd), so a
 * burst of requests does not start a thread each.
 */
import { Worker } from "node:worker_threads";
import { activeBackend } from "../backends/index.js";
import { HttpError } from "./errors.js";
import type { WorkerJob, WorkerReply } from "./worker.js";

const fromSource = import.meta.url.endsWith(".ts");
const MAX_IDLE = 2;
const IDLE_MS = 5000;

interface Idle {
  worker: Worker;
  backend: string;
  timer: NodeJS.Timeout;
}
const idle: Idle[] = [];

function spawn(backend: string): Worker {
  const workerData = { bhsdServiceWorker: true, backend };
  const resourceLimits = { maxOldGenerationSizeMb: 1024 };
  const url = new URL(`./worker.${fromSource ? "ts" : "js"}`, import.meta.url);
  // Running from the TypeScript sources (tests, under tsx): a worker does not inherit tsx's loader.
  const src = `import("tsx/esm/api").then((m) => m.register()).then(() => import(${JSON.stringify(url.href)}))`;
  const w = fromSource ? new Worker(src, { eval: true, workerData, resourceLimits }) : new Worker(url, { workerData, resourceLimits });
  // An idle worker that fails or ends leaves the pool quietly (a job's own listeners report it).
  w.on("error", () => {});
  w.on("exit", () => {
    const i = idle.findIndex((e) => e.worker === w);
    if (i >= 0) clearTimeout(idle.splice(i, 1)[0]!.timer);
  });
  return w;
}

function take(backend: string): Worker {
  for (let i = idle.length - 1; i >= 0; i--) {
    const w = idle[i]!;
    idle.splice(i, 1);
    clearTimeout(w.timer);
    if (w.backend === backend) {
      w.worker.ref();
      return w.worker;
    }
    void w.worker.terminate();
  }
  return spawn(backend);
}

function giveBack(worker: Worker, backend: string): void {
  if (idle.length >= MAX_IDLE) return void worker.terminate();
  worker.unref();
  const entry: Idle = { worker, backend, timer: setTimeout(() => drop(entry), IDLE_MS) };
  entry.timer.unref();
  idle.push(entry);
}

function drop(entry: Idle): void {
  const i = idle.indexOf(entry);
  if (i >= 0) idle.splice(i, 1);
  void entry.worker.terminate();
}

/** Ends the idle workers (the server calls this when it closes). */
export async function closeIdleWorkers(): Promise<void> {
  await Promise.all(idle.splice(0).map((e) => (clearTimeout(e.timer), e.worker.terminate())));
}

/** The typed arrays of the job's volumes: moved to the worker when they own their whole buffer, else copied. */
function transferList(job: WorkerJob): ArrayBuffer[] {
  const vols = job.kind === "components" ? [job.volume] : [job.gt, job.pred];
  const out: ArrayBuffer[] = [];
  for (const v of vols) {
    const b = v.data.buffer;
    if (b instanceof ArrayBuffer && v.data.byteOffset === 0 && v.data.byteLength === b.byteLength && !out.includes(b)) out.push(b);
  }
  return out;
}

/** The job's JSON text; rejects with an HttpError, or with the signal's reason once the worker has exited. */
export function runInWorker(job: WorkerJob, signal: AbortSignal): Promise<string> {
  signal.throwIfAborted();
  const backend = activeBackend().name;
  return new Promise<string>((resolve, reject) => {
    const w = take(backend);
    let failed: { error: unknown } | undefined;
    const cleanup = () => {
      signal.removeEventListener("abort", onAbort);
      w.off("message", onMessage);
      w.off("error", onError);
      w.off("exit", onExit);
    };
    const onAbort = () => {
      failed ??= { error: signal.reason };
      void w.terminate(); // settles in onExit, once the thread is gone
    };
    const onMessage = (r: WorkerReply) => {
      cleanup();
      giveBack(w, backend);
      if (r.ok) return resolve(r.json);
      if (r.status >= 500) process.emitWarning(`bhsd service worker: ${r.message}`);
      reject(new HttpError(r.status, r.code, r.status >= 500 ? "the server could not complete the request" : r.message));
    };
    const onError = (e: Error & { code?: string }) => {
      failed ??= {
        error:
          e.code === "ERR_WORKER_OUT_OF_MEMORY"
            ? new HttpError(413, "too_large", "the job needed more memory than the server allows one job")
            : e,
      };
    };
    const onExit = () => {
      cleanup();
      reject(failed?.error ?? new Error("the worker exited without an answer"));
    };
    signal.addEventListener("abort", onAbort, { once: true });
    w.on("message", onMessage);
    w.on("error", onError);
    w.on("exit", onExit);
    w.postMessage(job, transferList(job));
  });
}
