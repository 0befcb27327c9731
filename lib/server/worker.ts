/**
 * The worker-thread side of the service's CPU-bound jobs whose JavaScript parts (per-component
 * statistics, metrics, JSON) would otherwise hold the event loop: it receives the volumes, does
 * the job, and posts back the answer's JSON text or an error; then it waits for the next job. A
 * job that runs too long is ended by terminating its worker (offload.ts), which stops its work at
 * once.
 */
import { parentPort, workerData } from "node:worker_threads";
import { setBackend } from "../backends/index.js";
import { toJson } from "../json.js";
import { evaluate } from "../metrics/evaluate.js";
import { componentStats, connectedComponents } from "../ops/components.js";
import type { Volume } from "../types.js";
import { clientFault } from "./errors.js";

export type WorkerJob =
  | { kind: "components"; volume: Volume; connectivity: 6 | 18 | 26; maxComponents: number }
  | { kind: "evaluate"; gt: Volume; pred: Volume; nsdToleranceMm?: number };

/** What the worker posts back: the JSON text, or an error with the status it deserves. */
export type WorkerReply = { ok: true; json: string } | { ok: false; status: number; code: string; message: string };

class JobError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
  ) {
    super(message);
  }
}

/** Labels must be integers 0..max: the first voxel that is not, as a client fault. */
function checkLabels(name: string, v: Volume, max: number): void {
  const d = v.data;
  const [nx, ny] = v.dims;
  for (let i = 0; i < d.length; i++) {
    const x = Number(d[i]);
    if (!(Number.isInteger(x) && x >= 0 && x <= max)) {
      const X = i % nx,
        Y = Math.floor(i / nx) % ny,
        Z = Math.floor(i / (nx * ny));
      throw new JobError(422, "bad_labels", `${name} holds the value ${x} at voxel (${X}, ${Y}, ${Z}); labels must be integers 0..${max}`);
    }
  }
}

async function run(job: WorkerJob): Promise<string> {
  if (job.kind === "components") {
    const { labels, count } = await connectedComponents(job.volume, { connectivity: job.connectivity });
    if (count > job.maxComponents) {
      throw new JobError(
        422,
        "too_many_components",
        `labels holds ${count} connected components (connectivity ${job.connectivity}); this server reports at most ${job.maxComponents} (maxComponents) — is it a label volume?`,
      );
    }
    // (maxComponents also for a componentStats that checks it itself; count ≤ it here)
    const statsOptions = { classes: job.volume, maxComponents: job.maxComponents } as Parameters<typeof componentStats>[1];
    return toJson({ count, components: await componentStats(labels, statsOptions) }, 0);
  }
  checkLabels("gt", job.gt, 5);
  checkLabels("pred", job.pred, 5);
  return toJson(await evaluate(job.gt, job.pred, job.nsdToleranceMm !== undefined ? { nsdToleranceMm: job.nsdToleranceMm } : {}), 0);
}

if (parentPort && (workerData as { bhsdServiceWorker?: boolean } | undefined)?.bhsdServiceWorker) {
  const port = parentPort;
  const { backend } = workerData as { backend: string };
  if (backend === "ts" || backend === "native") setBackend(backend);
  port.on("message", (job: WorkerJob) => {
    run(job).then(
      (json) => port.postMessage({ ok: true, json } satisfies WorkerReply),
      (e: Error) => {
        const reply: WorkerReply =
          e instanceof JobError
            ? { ok: false, status: e.status, code: e.code, message: e.message }
            : clientFault(e)
              ? { ok: false, status: 400, code: "bad_request", message: e.message }
              : { ok: false, status: 500, code: "internal", message: e.message };
        port.postMessage(reply);
      },
    );
  });
}
