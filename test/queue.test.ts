/**
 * Issue 20: a dataset segmented by several `bhsd worker` processes over a real redis-server.
 * The labels must equal what `bhsd segment` makes alone, the dataset table what `bhsd evaluate`
 * gives on the same folders, each case must run once, and a resubmission must redo nothing.
 */
import test from "ava";
import { cpSync, mkdirSync, mkdtempSync, readdirSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Queue } from "bullmq";
import { readNifti } from "../lib/io/nifti.js";
import { readNpy } from "../lib/io/npy.js";
import { decodeNumbers } from "../lib/queue/common.js";
import { writePhantoms } from "../lib/phantom/write.js";
import { ROOT } from "./helpers.js";
import { bhsdRun, NO_REDIS, RedisServer, startWorker, type Proc } from "./queue-helpers.js";

// Labels from different processes are compared byte for byte: each would otherwise plan its
// convolutions by timing them, and a loaded machine could make two processes pick paths that
// round differently (a voxel near a tie then flips). Every child inherits this.
process.env.BHSD_WINOGRAD = "1";

const t = NO_REDIS ? test.skip : test.serial;
const title = (s: string) => (NO_REDIS ? `${s} (skipped: ${NO_REDIS})` : s);
const MODEL = join(ROOT, "models", "demo.onnx");

function tmp(): string {
  return mkdtempSync(join(tmpdir(), "bhsd-queue-"));
}

async function stopAll(ws: Proc[]): Promise<(number | null)[]> {
  for (const w of ws) w.kill("SIGTERM");
  return Promise.all(ws.map(async (w) => (await w.exited).code));
}

t(
  title(
    "two workers segment a batch once each; labels equal bhsd segment's, the table equals bhsd evaluate's, a resubmission redoes nothing",
  ),
  async (t) => {
    const dir = tmp();
    const redis = await RedisServer.start();
    const workers: Proc[] = [];
    try {
      const data = join(dir, "data"),
        out = join(dir, "out");
      await writePhantoms({ out: data, cases: 3, seed: 20, dims: [128, 128, 32] });
      const images = readdirSync(join(data, "images")).sort();
      workers.push(startWorker(redis.url, [], "worker A"), startWorker(redis.url, [], "worker B"));
      await Promise.all(workers.map((w) => w.waitLine(/^worker \S+ on queue bhsd/)));

      const sub = await bhsdRun([
        "batch",
        "submit",
        "--redis",
        redis.url,
        "--data",
        data,
        "--model",
        "demo",
        "--out",
        out,
        "--wait",
        "--json",
      ]);
      t.is(sub.code, 0, sub.stderr);
      const s = JSON.parse(sub.stdout);
      t.is(s.batch.total, images.length);
      t.is(s.counts.completed, images.length);
      t.is(s.added, images.length);

      // progress per window: nnU-Net's sliding window over the model's grid (phantom 0.9 x 0.9 x 5 mm
      // resampled to the demo model's 1.8 x 1.8 x 5 mm: 64 x 64 x 32 voxels; patch 64 x 64 x 16, step
      // 0.5 → ceil((32 - 16) / 8) + 1 = 3 windows along z, 1 in-plane)
      for (const c of s.cases) t.deepEqual(c.progress, { step: "window", done: 3, total: 3 });

      // each job ran exactly once over both workers
      for (const c of s.cases) {
        const done = workers.reduce((n, w) => n + w.count(new RegExp(`^done ${c.jobId} `)), 0);
        t.is(done, 1, `${c.case} done ${done} times`);
        t.true([workers[0]!.pid, workers[1]!.pid].some((p) => c.result.worker.endsWith(`:${p}`)));
      }

      // the labels of the first case equal a plain `bhsd segment`, voxel for voxel
      const first = images[0]!.replace(/\.nii\.gz$/, "");
      const local = join(dir, "local.nii.gz");
      const seg = await bhsdRun(["segment", join(data, "images", images[0]!), "--model", MODEL, "--out", local, "--quiet"]);
      t.is(seg.code, 0, seg.stderr);
      const [a, b] = [await readNifti(local), await readNifti(join(out, `${first}.nii.gz`))];
      t.deepEqual(b.dims, a.dims);
      t.true(
        Buffer.from(a.data.buffer, a.data.byteOffset, a.data.byteLength).equals(
          Buffer.from(b.data.buffer, b.data.byteOffset, b.data.byteLength),
        ),
        "worker labels differ from bhsd segment's",
      );

      // results: mL per class equal the label files' voxel counts times the voxel volume
      const res = await bhsdRun(["batch", "results", "--redis", redis.url, "--csv"]);
      t.is(res.code, 0, res.stderr);
      const [head, ...rows] = res.stdout
        .trim()
        .split("\n")
        .map((l) => l.split(","));
      t.is(rows.length, images.length);
      for (const r of rows) {
        const row = Object.fromEntries(head!.map((h, i) => [h, r[i]!]));
        t.is(row.state, "completed");
        const lab = await readNifti(row.labels!);
        const voxelMl = (lab.spacing[0] * lab.spacing[1] * lab.spacing[2]) / 1000;
        for (const [k, name] of [
          [1, "EDH"],
          [2, "IPH"],
          [3, "IVH"],
          [4, "SAH"],
          [5, "SDH"],
        ] as const) {
          let n = 0;
          for (let i = 0; i < lab.data.length; i++) if (lab.data[i] === k) n++;
          t.true(
            Math.abs(Number(row[`${name}_ml`]) - n * voxelMl) <= 1e-9 * Math.max(1, n * voxelMl),
            `${row.case} ${name}: ${row[`${name}_ml`]} vs ${n * voxelMl}`,
          );
        }
      }

      // the dataset table over the workers' labels equals bhsd evaluate on the two folders
      const be = await bhsdRun(["batch", "evaluate", "--redis", redis.url, "--json"]);
      const ev = await bhsdRun(["evaluate", "--gt", data, "--pred", out, "--json"]);
      t.is(be.code, 0, be.stderr);
      t.is(ev.code, 0, ev.stderr);
      const [bj, ej] = [JSON.parse(be.stdout), JSON.parse(ev.stdout)];
      t.deepEqual(bj.summary, ej.summary);
      t.deepEqual(
        bj.cases.map((c: { case: string; metrics: unknown }) => [c.case, c.metrics]),
        ej.cases.map((c: { case: string; metrics: unknown }) => [c.case, c.metrics]),
      );
      // an evaluation job (labels against truth) on the queue gives bhsd evaluate's metrics, inf and nan included
      const q = new Queue("bhsd", { connection: { host: "127.0.0.1", port: redis.port } });
      await q.add(
        "evaluate",
        { kind: "evaluate", case: first, gt: join(data, "ground truths", images[0]!), pred: join(out, images[0]!) },
        { jobId: "eval-1" },
      );
      await Promise.race(workers.map((w) => w.waitLine(/^done eval-1 /)));
      const ejob = await q.getJob("eval-1");
      await q.close();
      t.deepEqual(decodeNumbers(ejob!.returnvalue.metrics), decodeNumbers(ej.cases[0].metrics));
      const text = await bhsdRun(["batch", "evaluate", "--redis", redis.url]);
      t.regex(text.stdout, /Dice %/);

      // resubmitting redoes nothing: no job taken, no label rewritten
      const mtimes = images.map((f) => statSync(join(out, f)).mtimeMs);
      const taken = workers.map((w) => w.count(/^taken /));
      const again = await bhsdRun(["batch", "submit", "--redis", redis.url, "--data", data, "--model", "demo", "--out", out, "--wait"]);
      t.is(again.code, 0, again.stderr);
      t.regex(again.stdout, new RegExp(`${images.length} cases, 0 queued, ${images.length} already done`));
      t.deepEqual(
        workers.map((w) => w.count(/^taken /)),
        taken,
      );
      t.deepEqual(
        images.map((f) => statSync(join(out, f)).mtimeMs),
        mtimes,
      );

      t.deepEqual(await stopAll(workers), [0, 0]);
    } finally {
      for (const w of workers) w.kill("SIGKILL");
      await redis.stop();
      rmSync(dir, { recursive: true, force: true });
    }
  },
);

t(title("a case that cannot be read fails after its attempts, with backoff, and its error shows in batch status"), async (t) => {
  const dir = tmp();
  const redis = await RedisServer.start();
  const w = startWorker(redis.url);
  try {
    const data = join(dir, "data");
    await writePhantoms({ out: data, cases: 1, seed: 21, dims: [96, 96, 24] });
    writeFileSync(join(data, "images", "broken.nii.gz"), "this is not a NIfTI file\n");
    let error = "";
    await readNifti(join(data, "images", "broken.nii.gz")).catch((e: Error) => (error = e.message));
    t.truthy(error);
    await w.waitLine(/^worker \S+ on queue/);
    const sub = await bhsdRun([
      "batch",
      "submit",
      "--redis",
      redis.url,
      "--data",
      data,
      "--model",
      "demo",
      "--out",
      join(dir, "out"),
      "--attempts",
      "3",
      "--backoff-ms",
      "300",
      "--wait",
    ]);
    t.is(sub.code, 1, "a failed case makes --wait exit 1");
    t.regex(sub.stdout, /broken: failed after 3 attempt\(s\)/);
    const st = await bhsdRun(["batch", "status", "--redis", redis.url, "--json"]);
    const s = JSON.parse(st.stdout);
    t.deepEqual(s.counts, { completed: 1, failed: 1 });
    const broken = s.cases.find((c: { case: string }) => c.case === "broken");
    t.is(broken.state, "failed");
    t.is(broken.attempts, 3);
    t.true(broken.error.includes(error.split("\n")[0]!), `${broken.error} lacks ${error}`);
    t.is(w.count(new RegExp(`^taken ${broken.jobId} broken attempt`)), 3);
    // a new submission gives the failed case another round of its attempts, and not the completed one
    const again = await bhsdRun([
      "batch",
      "submit",
      "--redis",
      redis.url,
      "--data",
      data,
      "--model",
      "demo",
      "--out",
      join(dir, "out"),
      "--wait",
    ]);
    t.regex(again.stdout, /0 queued, 1 already done, 0 already queued or running, 1 retried/);
    t.is(w.count(new RegExp(`^taken ${broken.jobId} broken attempt`)), 6);
    t.is(w.count(/^taken /), 7);
    w.kill("SIGTERM");
    t.is((await w.exited).code, 0);
  } finally {
    w.kill("SIGKILL");
    await redis.stop();
    rmSync(dir, { recursive: true, force: true });
  }
});

t(title("SIGTERM: the worker finishes the job in hand, takes no other and exits 0"), async (t) => {
  const dir = tmp();
  const redis = await RedisServer.start();
  const w = startWorker(redis.url);
  try {
    const data = join(dir, "data");
    await writePhantoms({ out: data, cases: 2, seed: 22, dims: [128, 128, 32] });
    await w.waitLine(/^worker \S+ on queue/);
    const sub = await bhsdRun(["batch", "submit", "--redis", redis.url, "--data", data, "--model", "demo", "--out", join(dir, "out")]);
    t.is(sub.code, 0, sub.stderr);
    const [, id] = (await w.waitLine(/^taken (\S+) /))!;
    w.kill("SIGTERM");
    t.is((await w.exited).code, 0);
    const lines = w.lines.join("\n");
    t.regex(lines, new RegExp(`SIGTERM: finishing the jobs in hand\\n(.*\\n)*done ${id} `));
    t.is(w.count(/^taken /), 1);
    const s = JSON.parse((await bhsdRun(["batch", "status", "--redis", redis.url, "--json"])).stdout);
    t.deepEqual(s.counts, { completed: 1, waiting: 1 });
    t.is(s.workers, 0);
  } finally {
    w.kill("SIGKILL");
    await redis.stop();
    rmSync(dir, { recursive: true, force: true });
  }
});

t(title("a worker runs a MONAI bundle from its --model-dir by name; the batch's labels are MONAI's own pipeline's"), async (t) => {
  const dir = tmp();
  const redis = await RedisServer.start();
  const workers: Proc[] = [];
  try {
    const fixtures = join(ROOT, "test", "fixtures", "monai", "bundles");
    const modelDir = join(dir, "models"),
      data = join(dir, "data"),
      out = join(dir, "out");
    mkdirSync(join(data, "images"), { recursive: true });
    cpSync(join(fixtures, "unet_bundle"), join(modelDir, "ich"), { recursive: true });
    cpSync(join(fixtures, "ct.nii.gz"), join(data, "images", "case_001.nii.gz"));
    workers.push(startWorker(redis.url, ["--model-dir", modelDir], "worker M"));
    await workers[0]!.waitLine(/^worker \S+ on queue bhsd/);
    const sub = await bhsdRun([
      "batch",
      "submit",
      "--redis",
      redis.url,
      "--data",
      data,
      "--model",
      "ich",
      "--model-dir",
      modelDir,
      "--out",
      out,
      "--wait",
      "--json",
    ]);
    t.is(sub.code, 0, sub.stderr);
    const s = JSON.parse(sub.stdout) as { counts: { completed: number }; cases: { jobId: string }[] };
    t.is(s.counts.completed, 1);
    const labels = await readNifti(join(out, "case_001.nii.gz"));
    const want = (await readNpy(join(fixtures, "unet_bundle_labels.npy"))).data;
    const margin = (await readNpy(join(fixtures, "unet_bundle_margin.npy"))).data;
    let differ = 0;
    for (let i = 0; i < want.length; i++) if (margin[i]! > 1e-4 && labels.data[i] !== want[i]) differ++;
    t.is(differ, 0);
  } finally {
    await stopAll(workers);
    await redis.stop();
    rmSync(dir, { recursive: true, force: true });
  }
});
