/**
 * Issue 20, failure semantics over a real redis-server: a worker SIGKILLed mid-job (its job is
 * found stalled and finishes once on another worker), and Redis killed and restarted while jobs
 * wait (AOF: nothing lost).
 */
import test from "ava";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { writePhantoms } from "../lib/phantom/write.js";
import { bhsdRun, NO_REDIS, RedisServer, startWorker, type Proc } from "./queue-helpers.js";

const t = NO_REDIS ? test.skip : test.serial;
const title = (s: string) => (NO_REDIS ? `${s} (skipped: ${NO_REDIS})` : s);

const tmp = () => mkdtempSync(join(tmpdir(), "bhsd-queue-"));

async function status(url: string) {
  const r = await bhsdRun(["batch", "status", "--redis", url, "--json"]);
  if (r.code !== 0) throw new Error(r.stderr);
  return JSON.parse(r.stdout) as {
    counts: Record<string, number>;
    workers: number;
    cases: { case: string; jobId: string; state: string; result: { worker: string; labels: string } | null }[];
  };
}

t(title("a worker SIGKILLed mid-job: the job is found stalled, runs on another worker and finishes once"), async (t) => {
  const dir = tmp();
  const redis = await RedisServer.start();
  const procs: Proc[] = [];
  try {
    const data = join(dir, "data"),
      out = join(dir, "out");
    await writePhantoms({ out: data, cases: 1, seed: 23, dims: [160, 160, 32] });
    const a = startWorker(redis.url, [], "worker A");
    procs.push(a);
    await a.waitLine(/^worker \S+ on queue/);
    const sub = await bhsdRun(["batch", "submit", "--redis", redis.url, "--data", data, "--model", "demo", "--out", out]);
    t.is(sub.code, 0, sub.stderr);
    const [, id] = (await a.waitLine(/^taken (\S+) /))!;
    a.kill("SIGKILL");
    t.is((await a.exited).signal, "SIGKILL");
    t.is(a.count(/^done /), 0, "A was killed before it finished");
    const before = await status(redis.url);
    t.is(before.cases[0]!.state, "active", "the killed worker's job still looks active until its lock expires");

    const b = startWorker(redis.url, [], "worker B"),
      c = startWorker(redis.url, [], "worker C");
    procs.push(b, c);
    const re = new RegExp(`^done ${id} `);
    await Promise.race([b.waitLine(re, 180_000), c.waitLine(re, 180_000)]);
    const after = await status(redis.url);
    t.deepEqual(after.counts, { completed: 1 });
    t.true([b.pid, c.pid].some((p) => after.cases[0]!.result!.worker.endsWith(`:${p}`)));
    t.true(existsSync(after.cases[0]!.result!.labels));
    // finished once: one completion over all workers, taken by exactly one of the survivors
    for (const w of [b, c]) w.kill("SIGTERM");
    await Promise.all([b.exited, c.exited]);
    t.is(
      procs.reduce((n, w) => n + w.count(re), 0),
      1,
    );
    t.is(b.count(/^taken /) + c.count(/^taken /), 1);
  } finally {
    for (const p of procs) p.kill("SIGKILL");
    await redis.stop();
    rmSync(dir, { recursive: true, force: true });
  }
});

t(title("Redis killed and restarted while jobs wait: nothing is lost (AOF); a connected worker reconnects"), async (t) => {
  const dir = tmp();
  const redis = await RedisServer.start();
  let w: Proc | null = null;
  try {
    const data = join(dir, "data"),
      out = join(dir, "out");
    const { cases } = await writePhantoms({ out: data, cases: 2, seed: 24, dims: [96, 96, 24] });
    const sub = await bhsdRun(["batch", "submit", "--redis", redis.url, "--data", data, "--model", "demo", "--out", out]);
    t.is(sub.code, 0, sub.stderr);
    t.deepEqual((await status(redis.url)).counts, { waiting: cases.length });
    await redis.kill("SIGKILL");
    await redis.start();
    const s = await status(redis.url);
    t.deepEqual(s.counts, { waiting: cases.length });
    t.deepEqual(s.cases.map((c) => c.case).sort(), cases.map((c) => c.name).sort());
    w = startWorker(redis.url);
    for (const c of s.cases) await w.waitLine(new RegExp(`^done ${c.jobId} `), 180_000);
    const done = await status(redis.url);
    t.deepEqual(done.counts, { completed: cases.length });
    for (const c of done.cases) t.true(existsSync(join(out, `${c.case}.nii.gz`)));

    // a worker connected while Redis restarts reconnects and takes the jobs submitted after
    await redis.kill("SIGKILL");
    await redis.start();
    const data2 = join(dir, "data2");
    const more = await writePhantoms({ out: data2, cases: 1, seed: 26, dims: [96, 96, 24] });
    const sub2 = await bhsdRun([
      "batch",
      "submit",
      "--redis",
      redis.url,
      "--data",
      data2,
      "--model",
      "demo",
      "--out",
      out,
      "--wait",
      "--json",
    ]);
    t.is(sub2.code, 0, sub2.stderr);
    t.deepEqual(JSON.parse(sub2.stdout).counts, { completed: 1 });
    t.true(existsSync(join(out, `${more.cases[0]!.name}.nii.gz`)));
    w.kill("SIGTERM");
    t.is((await w.exited).code, 0);
  } finally {
    w?.kill("SIGKILL");
    await redis.stop();
    rmSync(dir, { recursive: true, force: true });
  }
});

t(
  title(
    "a job record that would overwrite its input, write into its input folder, or hash a FIFO fails at once, naming why, the input untouched",
  ),
  async (t) => {
    const { Queue } = await import("bullmq");
    const { startWorker: startInProcess } = await import("../lib/queue/worker.js");
    const { hashInput } = await import("../lib/queue/common.js");
    const { execFileSync } = await import("node:child_process");
    const { mkdirSync, readFileSync, copyFileSync } = await import("node:fs");
    const dir = tmp();
    const redis = await RedisServer.start();
    const logs: string[] = [];
    const w = await startInProcess({ redis: redis.url, queue: "hostile", log: (l) => logs.push(l) });
    const q = new Queue("hostile", { connection: { host: "127.0.0.1", port: redis.port } });
    try {
      const data = join(dir, "data");
      const { cases } = await writePhantoms({ out: data, cases: 1, seed: 25, dims: [48, 48, 8] });
      const ct = join(data, "images", `${cases[0]!.name}.nii.gz`);
      const before = readFileSync(ct);
      const series = join(dir, "series");
      mkdirSync(series);
      copyFileSync(ct, join(series, "not-dicom.bin"));
      const fifo = join(dir, "fifo");
      execFileSync("mkfifo", [fifo]);
      const job = async (input: string, out: string, inputHash: string) => {
        const j = await q.add("x", { kind: "segment", case: "c", input, inputHash, model: "demo", modelHash: null, out, batch: "b" });
        const t0 = Date.now();
        for (;;) {
          const s = await j.getState();
          if (s === "completed" || s === "failed") break;
          if (Date.now() - t0 > 60_000) throw new Error(`job for ${input} still ${s} after 60 s`);
          await new Promise((r) => setTimeout(r, 100));
        }
        return (await q.getJob(j.id!))!;
      };
      const same = await job(ct, ct, await hashInput(ct));
      t.is(await same.getState(), "failed");
      t.regex(same.failedReason, /the job's output .* is its input .*; refusing to overwrite it/);
      t.true(readFileSync(ct).equals(before), "the CT was overwritten");
      const inside = await job(series, join(series, "labels.nii.gz"), await hashInput(series));
      t.is(await inside.getState(), "failed");
      t.regex(inside.failedReason, /is inside its input folder .*series; refusing to write there/);
      t.false(existsSync(join(series, "labels.nii.gz")));
      // (a folder the worker would make inside the input folder counts too)
      const deeper = await job(series, join(series, "new", "labels.nii.gz"), await hashInput(series));
      t.regex(deeper.failedReason, /is inside its input folder .*series; refusing to write there/);
      t.false(existsSync(join(series, "new")));
      // and a path through a link, whose ".." the kernel takes from the link's target, not the text
      const { symlinkSync } = await import("node:fs");
      mkdirSync(join(series, "x"));
      mkdirSync(join(dir, "elsewhere"));
      symlinkSync(join(series, "x"), join(dir, "elsewhere", "l"));
      const linked = await job(series, `${join(dir, "elsewhere", "l")}/../sub/labels.nii.gz`, await hashInput(series));
      t.regex(linked.failedReason, /is inside its input folder .*series; refusing to write there/);
      t.false(existsSync(join(series, "sub")));
      const piped = await job(fifo, join(dir, "out.nii.gz"), "0".repeat(64));
      t.regex(piped.failedReason ?? "", /fifo: not a regular file/);
    } finally {
      await q.close();
      await w.close();
      await redis.stop();
      rmSync(dir, { recursive: true, force: true });
    }
  },
);
