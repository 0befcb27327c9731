/** Runs a job of worker.ts in a worker thread of its own; aborting the signal terminates it. */
import { Worker } from "node:worker_threads";
import { activeBackend } from "../backends/index.js";
import { HttpError } from "./errors.js";
import type { WorkerJob, WorkerReply } from "./worker.js";

const fromSource = import.meta.url.endsWith(".ts");

function spawn(): Worker {
  const workerData = { bhsdServiceWorker: true, backend: activeBackend().name };
  const resourceLimits = { maxOldGenerationSizeMb: 1024 };
  const url = new URL(`./worker.${fromSource ? "ts" : "js"}`, import.meta.url);
  if (!fromSource) return new Worker(url, { workerData, resourceLimits });
  // Running from the TypeScript sources (tests, under tsx): a worker does not inherit tsx's loader.
  const src = `import("tsx/esm/api").then((m) => m.register()).then(() => import(${JSON.stringify(url.href)}))`;
  return new Worker(src, { eval: true, workerData, resourceLimits });
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
  return new Promise<string>((resolve, reject) => {
    const w = spawn();
    let settled: { ok: true; json: string } | { ok: false; error: unknown } | undefined;
    const onAbort = () => {
      settled ??= { ok: false, error: signal.reason };
      void w.terminate();
    };
    signal.addEventListener("abort", onAbort, { once: true });
    w.once("message", (r: WorkerReply) => {
      settled ??= r.ok ? r : { ok: false, error: new HttpError(r.status, r.code, r.status >= 500 ? "the server could not complete the request" : r.message) };
      if (!r.ok && r.status >= 500) process.emitWarning(`bhsd service worker: ${r.message}`);
      void w.terminate();
    });
    w.once("error", (e: Error & { code?: string }) => {
      settled ??= { ok: false, error: e.code === "ERR_WORKER_OUT_OF_MEMORY" ? new HttpError(413, "too_large", "the job needed more memory than the server allows one job") : e };
    });
    // Settled only once the thread is gone: its work has stopped.
    w.once("exit", () => {
      signal.removeEventListener("abort", onAbort);
      const s = settled ?? { ok: false, error: new Error("the worker exited without an answer") };
      if (s.ok) resolve(s.json);
      else reject(s.error);
    });
    w.postMessage(job, transferList(job));
  });
}
