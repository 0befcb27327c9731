/**
 * What the queue's REST front keeps in its shared folder, and for how long. Each front sweeps
 * every `intervalMs`; sweeps of several fronts over one folder and queue only repeat each other's
 * removals (every step tolerates a file or job already gone).
 *
 * - A finished job the front submitted (`batch: "rest"`) is removed with its labels
 *   (`results/<id>.nii.gz`) `ttlMs` after it finished, or after its CT was last posted again,
 *   whichever is later (a POST of a completed job's CT touches its labels). Jobs a batch
 *   submitted are the batch's: never removed here.
 * - A CT in `inputs/` is needed only while a job that names it has not finished: it is removed
 *   once none does and it is older than `graceMs` (a POST writes or touches it before it enqueues,
 *   so the grace covers a POST in between). Patient images are not kept past their use.
 * - Leftovers of a process killed mid-write (`*.tmp` in either folder) and labels whose job is
 *   gone go after `ttlMs`.
 *
 * A sweep looks at most `maxPerSweep` jobs and as many files of each folder; the next goes on.
 */
import { opendir, stat, unlink } from "node:fs/promises";
import { join } from "node:path";
import type { Queue } from "bullmq";
import type { SegmentJobData } from "./common.js";

export interface RetentionOptions {
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

const INPUT = /^[0-9a-f]{64}\.nii(\.gz)?$/;
const RESULT = /^(seg-[0-9a-f]{40})\.nii\.gz$/;
const UNFINISHED = ["waiting", "active", "delayed", "prioritized", "paused", "waiting-children"] as const;
const PAGE = 500;

const mtimeOf = async (p: string) => (await stat(p).catch(() => null))?.mtimeMs ?? null;
const gone = (p: string) =>
  unlink(p).then(
    () => true,
    () => false,
  );

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
 * The inputs that jobs not yet finished name; null when there are more than `max` such jobs (then
 * no input is removed this time). Each state is listed twice, in opposite orders: a job moving
 * between states while they are listed (waiting → active → delayed → waiting) is missed only if it
 * moves at both moments.
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
        if (typeof input === "string") used.add(input);
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

  // finished REST jobs, oldest first (the finished sets are ordered by finish time)
  let looked = 0;
  for (const type of ["completed", "failed"] as const) {
    let start = 0;
    scan: while (looked < max) {
      const page = await queue.getJobs([type], start, start + PAGE - 1, true);
      if (page.length === 0) break;
      for (const job of page) {
        if (++looked > max) break scan;
        if (!job?.id) continue;
        if ((job.finishedOn ?? 0) > cutoff) break scan;
        const d = job.data as Partial<SegmentJobData>;
        const labels = join(o.results, `${job.id}.nii.gz`);
        // (posted again since: kept from then)
        const touched = type === "completed" ? await mtimeOf(labels) : null;
        if (d.batch !== "rest" || !RESULT.test(`${job.id}.nii.gz`) || (touched !== null && touched > cutoff)) {
          start++;
          continue;
        }
        if ((await queue.remove(job.id)) === 1) n.jobs++;
        else start++; // (locked, or another front's sweep took it)
        if (await gone(labels)) n.results++;
      }
      if (page.length < PAGE) break;
    }
  }

  // labels whose job is gone, and temporaries, after the lifetime
  for (const name of await names(o.results, max)) {
    const p = join(o.results, name);
    const m = RESULT.exec(name);
    if (!m && !name.endsWith(".tmp")) continue;
    const t = await mtimeOf(p);
    if (t === null || t > cutoff) continue;
    if (m && (await queue.getJob(m[1]!))) continue;
    if (await gone(p)) n[m ? "results" : "temporaries"]++;
  }

  // CTs no unfinished job names, once past the grace
  const old: string[] = [];
  for (const name of await names(o.inputs, max)) {
    if (!INPUT.test(name) && !name.endsWith(".tmp")) continue;
    const t = await mtimeOf(join(o.inputs, name));
    if (t !== null && t <= now - (INPUT.test(name) ? o.graceMs : o.ttlMs)) old.push(name);
  }
  const used = old.length > 0 ? await inputsInUse(queue, 20 * max) : null;
  if (used) {
    for (const name of old) {
      const p = join(o.inputs, name);
      if (used.has(p)) continue;
      // (looked at again just before: a POST that touched it since is using it)
      const t = await mtimeOf(p);
      if (t === null || t > Date.now() - (INPUT.test(name) ? o.graceMs : o.ttlMs)) continue;
      if (await gone(p)) n[INPUT.test(name) ? "inputs" : "temporaries"]++;
    }
  }
  return n;
}
