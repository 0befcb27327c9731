/**
 * What the queue's REST front keeps in its shared folder, and for how long. Each front sweeps
 * every `intervalMs`; the sweeps of several fronts over one folder and queue take turns per item.
 *
 * - The jobs the fronts submitted are recorded in a sorted set (`bhsd:<queue>:rest-jobs`), scored
 *   by their last POST. A job found there, finished (completed or failed) more than `ttlMs` ago and
 *   last posted more than `ttlMs` ago, is removed with its labels (`results/<id>.nii.gz`). A job a
 *   batch took over (its `batch` is no longer "rest") leaves the set: the batch's jobs are never
 *   removed here.
 * - A CT in `inputs/` is needed only while a job that names it has not finished: it is removed
 *   once none does and it is older than `graceMs` (a POST writes or touches it first).
 * - Leftovers of a process killed mid-write (`*.tmp` in either folder) and labels whose job is gone
 *   go after `ttlMs`.
 *
 * A POST and a sweep never cross: the sweep takes hold of a job or a CT (a short-lived Redis key)
 * before it looks at it for the last time and removes it; a POST, once it has recorded, enqueued and
 * written its job and CT, waits while either is held and then does it all again (`waitForSweep`).
 * Whatever the POST did before the sweep's last look, the sweep sees; whatever after, the POST
 * redoes.
 *
 * A sweep looks at most `maxPerSweep` jobs and lists at most that many files of each folder.
 */
import { opendir, stat, unlink } from "node:fs/promises";
import { basename, join } from "node:path";
import type { Queue } from "bullmq";
import type { Redis } from "ioredis";
import type { SegmentJobData } from "./common.js";

export interface RetentionOptions {
  /** The queue's name and a connection to its Redis. */
  queue: string;
  redis: Redis;
  inputs: string;
  results: string;
  ttlMs: number;
  graceMs: number;
  maxPerSweep?: number;
}

export interface SweepCounts {
  jobs: number;
  results: number;
  inputs: number;
  temporaries: number;
}

/** The sorted set of the jobs REST fronts submitted, scored by their last POST (ms). */
export const restJobsKey = (queue: string) => `bhsd:${queue}:rest-jobs`;
const heldKey = (queue: string, what: string) => `bhsd:${queue}:sweeping:${what}`;
/** How long a sweep's hold on one item may last (a crashed sweep's hold lapses). */
const HOLD_MS = 10_000;

const INPUT = /^[0-9a-f]{64}\.nii(\.gz)?$/;
const ID = /^seg-[0-9a-f]{40}$/;
const RESULT = /^(seg-[0-9a-f]{40})\.nii\.gz$/;
const UNFINISHED = ["waiting", "active", "delayed", "prioritized", "paused", "waiting-children"] as const;
const PAGE = 500;

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const mtimeOf = async (p: string) => (await stat(p).catch(() => null))?.mtimeMs ?? null;
const gone = (p: string) =>
  unlink(p).then(
    () => true,
    () => false,
  );

/**
 * A POST's side: whether a sweep holds any of `names` (a job id, a CT's file name) now, waiting
 * while it does. The POST calls it after recording, enqueueing and writing; on true it does those
 * again (what it did may have been removed).
 */
export async function waitForSweep(redis: Redis, queue: string, names: string[], maxMs = 3 * HOLD_MS): Promise<boolean> {
  let held = false;
  const end = Date.now() + maxMs;
  while ((await redis.exists(...names.map((n) => heldKey(queue, n)))) > 0) {
    held = true;
    if (Date.now() > end) throw new Error("the shared folder's sweep held this job too long");
    await sleep(20);
  }
  return held;
}

/** The names in a folder, at most `max` (a folder the attacker filled is not listed whole). */
async function names(dir: string, max: number): Promise<string[]> {
  const out: string[] = [];
  const d = await opendir(dir).catch(() => null);
  if (!d) return out;
  try {
    for await (const e of d) {
      if (e.isFile()) out.push(e.name);
      if (out.length >= max) break;
    }
  } finally {
    await d.close().catch(() => {});
  }
  return out;
}

/**
 * The CT file names that jobs not yet finished name; null when there are more than `max` such jobs
 * (then no CT is removed this time). Each state is listed twice, in opposite orders: a job moving
 * between states while they are listed (waiting → active → delayed → waiting) is missed only if it
 * moves at both moments. (By name: fronts may spell the shared folder differently.)
 */
async function inputsInUse(queue: Queue, max: number): Promise<Set<string> | null> {
  const used = new Set<string>();
  let seen = 0;
  for (const type of [...UNFINISHED, ...[...UNFINISHED].reverse()]) {
    for (let start = 0; ; start += PAGE) {
      const page = await queue.getJobs([type], start, start + PAGE - 1, true);
      if ((seen += page.length) > max) return null;
      for (const job of page) {
        const input = (job?.data as Partial<SegmentJobData> | undefined)?.input;
        if (typeof input === "string") used.add(basename(input));
      }
      if (page.length < PAGE) break;
    }
  }
  return used;
}

export async function sweep(queue: Queue, o: RetentionOptions, now = Date.now()): Promise<SweepCounts> {
  const max = o.maxPerSweep ?? 10_000;
  const cutoff = now - o.ttlMs;
  const n: SweepCounts = { jobs: 0, results: 0, inputs: 0, temporaries: 0 };
  const key = restJobsKey(o.queue);
  /** Runs `f` holding `what`; skipped (false) when another sweep holds it. */
  const holding = async (what: string, f: () => Promise<void>): Promise<boolean> => {
    if ((await o.redis.set(heldKey(o.queue, what), "1", "PX", HOLD_MS, "NX")) !== "OK") return false;
    try {
      await f();
    } finally {
      await o.redis.del(heldKey(o.queue, what));
    }
    return true;
  };

  // the fronts' jobs last posted before the cutoff
  for (const id of await o.redis.zrangebyscore(key, "-inf", cutoff, "LIMIT", 0, max)) {
    if (!ID.test(id)) {
      await o.redis.zrem(key, id);
      continue;
    }
    await holding(id, async () => {
      // (the last look, after taking hold: a POST before it shows here, one after it waits and redoes)
      const [job, score] = await Promise.all([queue.getJob(id), o.redis.zscore(key, id)]);
      const labels = join(o.results, `${id}.nii.gz`);
      if (!job) {
        await o.redis.zrem(key, id);
        if (await gone(labels)) n.results++;
        return;
      }
      if ((job.data as Partial<SegmentJobData>).batch !== "rest") {
        await o.redis.zrem(key, id); // a batch's now
        return;
      }
      const state = await job.getState();
      const finished = state === "completed" || state === "failed";
      const since = Math.max(Number(score ?? 0), finished ? (job.finishedOn ?? now) : now);
      if (!finished || since > cutoff) {
        // looked at again a lifetime after its end or its last POST (GT: never moved earlier)
        await o.redis.zadd(key, "GT", since, id);
        return;
      }
      if ((await queue.remove(id)) !== 1) return; // (taken by a worker again: locked)
      n.jobs++;
      await o.redis.zrem(key, id);
      if (await gone(labels)) n.results++;
    });
  }

  // labels whose job is gone, and temporaries, after the lifetime
  for (const name of await names(o.results, max)) {
    const p = join(o.results, name);
    const m = RESULT.exec(name);
    if (!m && !name.endsWith(".tmp")) continue;
    const t = await mtimeOf(p);
    if (t === null || t > cutoff) continue;
    if (!m) {
      if (await gone(p)) n.temporaries++;
      continue;
    }
    await holding(m[1]!, async () => {
      if (!(await queue.getJob(m[1]!)) && (await gone(p))) n.results++;
    });
  }

  // CTs no unfinished job names, once past the grace
  const old: string[] = [];
  for (const name of await names(o.inputs, max)) {
    const input = INPUT.test(name);
    if (!input && !name.endsWith(".tmp")) continue;
    const t = await mtimeOf(join(o.inputs, name));
    if (t !== null && t <= now - (input ? o.graceMs : o.ttlMs)) old.push(name);
  }
  const used = old.some((x) => INPUT.test(x)) ? await inputsInUse(queue, 20 * max) : new Set<string>();
  for (const name of old) {
    const p = join(o.inputs, name);
    if (!INPUT.test(name)) {
      if (await gone(p)) n.temporaries++;
      continue;
    }
    if (!used || used.has(name)) continue;
    await holding(name, async () => {
      // (a POST that wrote or touched it since is using it)
      const t = await mtimeOf(p);
      if (t !== null && t <= Date.now() - o.graceMs && (await gone(p))) n.inputs++;
    });
  }
  return n;
}
