/**
 * What the queue's REST front keeps in its shared folder: a CT only while a job that has not
 * finished names it; a finished job of its own, with its labels, for the lifetime counted from its
 * end or from the last POST of its CT; a batch's jobs always; old temporaries and labels whose job
 * is gone never. Against a real redis-server; the jobs are completed or failed by a BullMQ worker
 * in this process (the retention, not the segmentation, is under test).
 */
import test from "ava";
import { Worker, UnrecoverableError } from "bullmq";
import { existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, utimesSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { basename, join } from "node:path";
import { submitBatch } from "../lib/queue/batch.js";
import { connect, DEFAULT_QUEUE, type JobData, type JobResult } from "../lib/queue/common.js";
import { ctNifti } from "./server-helpers.js";
import { NO_REDIS, RedisServer } from "./queue-helpers.js";

const t = NO_REDIS ? test.skip : test.serial;
const title = (s: string) => (NO_REDIS ? `${s} (skipped: ${NO_REDIS})` : s);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function waitFor(what: string, cond: () => boolean | Promise<boolean>, ms = 20_000) {
  const end = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(50);
  }
}

t(
  title(
    "serve --redis sweeps its shared folder: CTs once no unfinished job names them, its finished jobs and labels after their lifetime (a POST again restarts it), never a batch's job",
  ),
  async (t) => {
    const { serveQueue } = await import("../lib/queue/rest.js");
    const redis = await RedisServer.start();
    const shared = mkdtempSync(join(tmpdir(), "bhsd-queue-keep-"));
    const inputs = join(shared, "inputs"),
      results = join(shared, "results");
    const ttl = 4000;
    const app = await serveQueue({
      redis: redis.url,
      sharedDir: shared,
      port: 0,
      resultTtlMs: ttl,
      inputGraceMs: 300,
      sweepIntervalMs: 200,
    });
    // (connections of ours: BullMQ leaves a connection it was given open)
    const conns = [connect(redis.url), connect(redis.url)];
    let worker: Worker<JobData, JobResult> | undefined;
    const finished = new Map<string, number>();
    try {
      const base = `http://127.0.0.1:${(app.server.address() as { port: number }).port}/v1/jobs`;
      const post = async (ct: Buffer) => {
        const r = await fetch(`${base}/segment?model=demo`, {
          method: "POST",
          headers: { "content-type": "application/octet-stream" },
          body: ct,
        });
        t.is(r.status, 202);
        return (await r.json()) as { id: string; state: string };
      };
      const [ctA, ctB, ctC, ctD] = [ctNifti([8, 8, 2]), ctNifti([8, 8, 3]), ctNifti([8, 8, 4]), ctNifti([8, 8, 5])];
      const a = await post(ctA),
        b = await post(ctB),
        d = await post(ctD);
      t.is(readdirSync(inputs).length, 3);
      // A batch's job (its own input and output paths): the front never removes it
      const { Queue } = await import("bullmq");
      const q = new Queue(DEFAULT_QUEUE, { connection: conns[0]! });
      const batchOut = join(shared, "batch-a.nii.gz");
      await q.add(
        "segment",
        {
          kind: "segment",
          case: "b",
          input: join(shared, "mine.nii"),
          inputHash: "0".repeat(64),
          model: "demo",
          out: batchOut,
          batch: "b1",
        },
        { jobId: `seg-${"1".repeat(40)}`, removeOnComplete: false, removeOnFail: false },
      );

      // leftovers: an old temporary in each folder, labels whose job never was (old, and recent)
      const old = new Date(Date.now() - 3600_000);
      for (const p of [join(inputs, "x.nii.123.tmp"), join(results, "y.nii.gz.ab.tmp"), join(results, `seg-${"2".repeat(40)}.nii.gz`)]) {
        writeFileSync(p, "x");
        utimesSync(p, old, old);
      }
      const recentOrphan = join(results, `seg-${"3".repeat(40)}.nii.gz`);
      writeFileSync(recentOrphan, "x");
      const later = new Date(Date.now() + 3600_000); // (young whatever this machine's pace)
      utimesSync(recentOrphan, later, later);

      // A completes (its labels written where the job says), B fails for good, the batch's completes
      worker = new Worker<JobData, JobResult>(
        DEFAULT_QUEUE,
        async (job) => {
          const d = job.data;
          if (d.kind !== "segment") throw new UnrecoverableError("not here");
          if (job.id === b.id) throw new UnrecoverableError("B is bad");
          writeFileSync(d.out, "labels");
          return { case: d.case, kind: "segment", labels: d.out, worker: "test", ms: 0 };
        },
        { connection: conns[1]!, concurrency: 1 },
      );
      worker.on("completed", (j) => finished.set(j.id!, Date.now()));
      worker.on("failed", (j) => j && finished.set(j.id!, Date.now()));
      await waitFor("four jobs to finish", () => finished.size === 4);
      await worker.close();
      worker = undefined;
      // D's CT submitted by a batch: the batch takes the job over (its CT, its id), and keeps it
      const data = join(shared, "data");
      mkdirSync(join(data, "images"), { recursive: true });
      writeFileSync(join(data, "images", "caseD.nii.gz"), ctD);
      const sub = await submitBatch({ redis: redis.url, data, model: "demo", out: join(shared, "preds") });
      t.deepEqual([sub.done, sub.batch.cases[0]!.jobId], [1, d.id]);
      t.like((await q.getJob(d.id))!.data, { batch: sub.batch.id, input: join(data, "images", "caseD.nii.gz") });

      // C waits (no worker now): its CT stays; A's and B's go once past the grace
      const c = await post(ctC);
      t.is(c.state, "waiting");
      await waitFor("the finished jobs' CTs to go", () => readdirSync(inputs).length === 1);
      await sleep(1000); // (five sweeps more)
      t.deepEqual(readdirSync(inputs), [basename((await q.getJob(c.id))!.data.input)]);
      // a POST while a sweep holds its job waits for the sweep, then submits again
      const held = `bhsd:${DEFAULT_QUEUE}:sweeping:${c.id}`;
      await conns[0]!.set(held, "1", "PX", 700);
      const t0 = performance.now();
      t.is((await post(ctC)).state, "waiting");
      t.true(performance.now() - t0 >= 500, `answered after ${(performance.now() - t0).toFixed(0)} ms, the hold not waited for`);
      t.false(existsSync(join(inputs, "x.nii.123.tmp")));
      t.false(existsSync(join(results, "y.nii.gz.ab.tmp")));
      t.false(existsSync(join(results, `seg-${"2".repeat(40)}.nii.gz`)));
      t.true(existsSync(recentOrphan), "labels younger than the lifetime are kept even without a job");

      // A's labels are served while its lifetime lasts; its CT posted again 1.5 s after it finished
      // keeps the job until 4 s after that POST, not after its end
      t.is((await fetch(`${base}/${a.id}/labels`)).status, 200);
      const tA = finished.get(a.id)!;
      await sleep(tA + 1500 - Date.now());
      t.is((await post(ctA)).state, "completed");
      const touched = Date.now();
      await sleep(tA + ttl + 800 - Date.now()); // past A's end + TTL, four sweeps later
      if (Date.now() < touched + ttl) {
        // (skipped only if this machine stalled past the new lifetime: nothing to tell then)
        t.is((await fetch(`${base}/${a.id}`)).status, 200, "A was removed a lifetime after its end, though posted again since");
        t.true(existsSync(join(results, `${a.id}.nii.gz`)));
      }
      await waitFor("A to go", async () => (await fetch(`${base}/${a.id}`)).status === 404);
      t.false(existsSync(join(results, `${a.id}.nii.gz`)));
      t.like(await (await fetch(`${base}/${a.id}/labels`)).json(), { error: "no_such_job" });
      // B (failed) went a lifetime after its end; the batch's job and its labels stay; C waits on
      await waitFor("B to go", async () => (await fetch(`${base}/${b.id}`)).status === 404);
      t.is(await (await q.getJob(`seg-${"1".repeat(40)}`))!.getState(), "completed");
      t.true(existsSync(batchOut));
      t.is(await (await q.getJob(d.id))!.getState(), "completed", "a job a batch took over was removed");
      t.true(existsSync(join(results, `${d.id}.nii.gz`)));
      t.is((await (await fetch(`${base}/${c.id}`)).json()).state, "waiting");
      t.is(readdirSync(inputs).length, 1);
      // A posted once more: a new job, waiting (its CT written again)
      t.deepEqual(await post(ctA), { ...a, state: "waiting" });
      t.is(readdirSync(inputs).length, 2);
      await q.close();
    } finally {
      await worker?.close();
      await app.close();
      for (const c of conns) c.disconnect();
      await redis.stop();
      rmSync(shared, { recursive: true, force: true });
    }
  },
);
