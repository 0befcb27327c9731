/**
 * Throughput of the Redis queue (issue 20): a batch of phantoms segmented with the bundled model
 * by one process without a queue (the in-process baseline), then by 1 and 2 `bhsd worker`
 * processes over a private redis-server (loopback, its own folder). Prints cases per minute and
 * the overhead per job: the time a worker waits between finishing one job and starting the next
 * (the queue round trip) against the compute of a job.
 *
 *   npm run build:ts && node --import tsx bench/queue.ts [--cases 6] [--dims 128,128,32]
 *
 * Needs redis-server on the PATH. On a shared or small machine two workers compete for the same
 * cores: the 2-worker figure shows the queue's scaling only where each worker has its own cores.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { cpus, tmpdir } from "node:os";
import { join } from "node:path";
import { readNifti, writeNifti } from "../dist/io/nifti.js";
import { loadModel } from "../dist/model/model.js";
import { segment } from "../dist/model/segment.js";
import { writePhantoms } from "../dist/phantom/write.js";
import { openQueue, submitBatch, waitBatch } from "../dist/queue/batch.js";
import { Proc, RedisServer } from "../test/queue-helpers.js";

const arg = (name: string, dflt: string) => {
  const i = process.argv.indexOf(name);
  return i > 0 ? process.argv[i + 1]! : dflt;
};
const CASES = Number(arg("--cases", "6"));
const DIMS = arg("--dims", "128,128,32").split(",").map(Number) as [number, number, number];
const CLI = join(import.meta.dirname, "..", "dist", "cli", "main.js");
const MODEL = join(import.meta.dirname, "..", "models", "demo.onnx");

/** The same work in one process without a queue: load the model, read, segment, write the labels. */
async function inProcess(images: string[], out: string): Promise<number> {
  const t0 = performance.now();
  const model = await loadModel(MODEL);
  for (const [i, f] of images.entries())
    await writeNifti(join(out, `${i}.nii.gz`), (await segment(await readNifti(f), model, { mirror: false })).labels);
  return performance.now() - t0;
}

async function withWorkers(
  data: string,
  n: number,
): Promise<{ wallMs: number; submitMs: number; computeMs: number; gapMs: number; pickupMs: number }> {
  const redis = await RedisServer.start();
  const workers: Proc[] = [];
  try {
    for (let k = 0; k < n; k++)
      workers.push(
        new Proc(
          spawn(process.execPath, [CLI, "worker", "--redis", redis.url], { stdio: ["ignore", "pipe", "pipe"] }) as ChildProcess,
          `worker ${k}`,
        ),
      );
    await Promise.all(workers.map((w) => w.waitLine(/^worker \S+ on queue/)));
    const t0 = performance.now();
    const r = await submitBatch({ redis: redis.url, data, model: "demo", out: join(data, `out-${n}`) });
    const submitMs = performance.now() - t0;
    await waitBatch({ redis: redis.url, batch: r.batch.id, intervalMs: 200 });
    const wallMs = performance.now() - t0;
    const q = openQueue({ redis: redis.url });
    const jobs = await q.queue.getJobs(["completed"]);
    await q.close();
    const computeMs = jobs.reduce((s, j) => s + (j.finishedOn! - j.processedOn!), 0) / jobs.length;
    const pickupMs = jobs.reduce((s, j) => s + (j.processedOn! - j.timestamp), 0) / jobs.length;
    // per worker: idle time between one job's end and the next one's start (queue round trip)
    const byWorker = new Map<string, { s: number; e: number }[]>();
    for (const j of jobs)
      byWorker.set(j.processedBy ?? "?", [...(byWorker.get(j.processedBy ?? "?") ?? []), { s: j.processedOn!, e: j.finishedOn! }]);
    const gaps: number[] = [];
    for (const list of byWorker.values()) {
      list.sort((a, b) => a.s - b.s);
      for (let i = 1; i < list.length; i++) gaps.push(list[i]!.s - list[i - 1]!.e);
    }
    return { wallMs, submitMs, computeMs, gapMs: gaps.length ? gaps.reduce((a, b) => a + b, 0) / gaps.length : NaN, pickupMs };
  } finally {
    for (const w of workers) w.kill("SIGTERM");
    await Promise.all(workers.map((w) => w.exited));
    await redis.stop();
  }
}

const dir = mkdtempSync(join(tmpdir(), "bhsd-bench-queue-"));
try {
  const data = join(dir, "data");
  const { cases } = await writePhantoms({ out: data, cases: CASES, seed: 41, dims: DIMS });
  const images = cases.map((c) => join(data, "images", `${c.name}.nii.gz`));
  console.log(`${CASES} phantoms ${DIMS.join("x")}, model demo, ${cpus().length} cores`);
  const base = await inProcess(images, dir);
  console.log(
    `in-process (one process, no queue): ${((CASES / base) * 60_000).toFixed(1)} cases/min (${(base / CASES).toFixed(0)} ms/case)`,
  );
  for (const n of [1, 2]) {
    const r = await withWorkers(data, n);
    console.log(
      `${n} worker(s) on Redis: ${((CASES / r.wallMs) * 60_000).toFixed(1)} cases/min, wall ${(r.wallMs / 1000).toFixed(1)} s; ` +
        `submit ${r.submitMs.toFixed(0)} ms (hash + enqueue ${CASES}); a job's own time ${r.computeMs.toFixed(0)} ms (hash check, read, segment, write; model load in a worker's first), ` +
        `worker idle between two jobs ${r.gapMs.toFixed(1)} ms (the queue round trip: BullMQ hands the next job in the call that completes one), ` +
        `wall - jobs/${n} = ${((r.wallMs - (r.computeMs * CASES) / n) / CASES).toFixed(0)} ms/job`,
    );
  }
} finally {
  rmSync(dir, { recursive: true, force: true });
}
