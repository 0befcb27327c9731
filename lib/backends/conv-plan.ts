/**
 * The native backend's convolution plan, kept between processes (like FFTW's wisdom or a saved
 * cuDNN find): the first call of each 3×3×3 / 1×3×3 layer shape times the direct path and the
 * Winograd tilings and keeps the fastest for the process (native/include/bhsd/conv_winograd.hpp,
 * winograd_hook). That timing is most of a model's first run — ResEnc-M's first 16×256×256 window
 * took 8.9–10.8 s with it and 5.0–5.4 s with an imported plan on the Xeon of 2026-12-04 (2.4 s
 * every later window). exportConvPlan() gives the plan as JSON-able data; importConvPlan() takes it
 * back in a later process on the same machine, whose layers of those shapes then run their choice
 * from the first call — and give the same output bit for bit as the process that made the plan
 * (the candidates round differently: a fresh plan made by timing can choose another one).
 *
 * A plan says only which correct path runs: a stale or hand-edited one can make a layer slower,
 * never wrong. It is refused whole when malformed, and skipped (nothing taken, a reason given)
 * when another processor, instruction set, thread count or bhsd version made it.
 */
import { randomBytes } from "node:crypto";
import { closeSync, constants, fstatSync, openSync, readSync, renameSync, rmSync, writeFileSync } from "node:fs";
import { cpus } from "node:os";
import { basename, dirname, join } from "node:path";
import { invalidParameterError, plainObject } from "../is.js";
import { VERSION } from "../version.js";
import { nativeBackend, onNativeLoad } from "./index.js";

/** What exportConvPlan gives and importConvPlan takes (JSON as it is). */
export interface ConvPlan {
  format: "bhsd-conv-plan";
  version: 1;
  /** The bhsd version that made it (the plan's choices mean what that version's paths do). */
  bhsd: string;
  /** The processor's model name (os.cpus()). */
  cpu: string;
  /** The native kernels in use (backendInfo().details.native.simd). */
  simd: string;
  /** The native backend's threads (a plan is timed on them). */
  threads: number;
  /** One per planned layer shape: the shape's 15 key values, then the choice. */
  entries: number[][];
}

/** What importConvPlan did: the entries taken, and where it took none although there were some, why. */
export interface ConvPlanImport {
  imported: number;
  skipped?: string;
}

const FORMAT = "bhsd-conv-plan";
const ENTRY_VALUES = 16;
/** The most entries a plan may hold (a model has a few dozen layer shapes). */
export const CONV_PLAN_MAX_ENTRIES = 1 << 16;
/** The largest value of an entry (the addon's bound on a size; a layer's extents are far below it). */
const MAX_VALUE = 2 ** 40;

function machine(): { cpu: string; simd: string; threads: number } | undefined {
  const native = nativeBackend();
  if (!native) return undefined;
  const d = native.details();
  return { cpu: cpus()[0]?.model?.trim() || "unknown", simd: d.simd, threads: d.threads };
}

/**
 * The convolution plan this process has made so far (and imported), to keep — e.g. as a JSON file —
 * for importConvPlan in a later process on the same machine. Loads the native addon where it has
 * not loaded yet; empty entries (and `simd: "none"`) where it cannot, or nothing was planned yet.
 */
export function exportConvPlan(): ConvPlan {
  const m = machine();
  const values = m ? (nativeBackend()!.convPlanExport() ?? []) : [];
  const entries: number[][] = [];
  for (let i = 0; i + ENTRY_VALUES <= values.length; i += ENTRY_VALUES) entries.push(values.slice(i, i + ENTRY_VALUES));
  return {
    format: FORMAT,
    version: 1,
    bhsd: VERSION,
    cpu: m?.cpu ?? "unknown",
    simd: m?.simd ?? "none",
    threads: m?.threads ?? 0,
    entries,
  };
}

/**
 * Takes a plan exportConvPlan made (here or in an earlier process): layer shapes it holds then run
 * its choice from their first call instead of timing the candidates. Shapes this process has
 * planned already keep their own choice. Throws a TypeError naming what is wrong where `plan` is
 * not such a plan (nothing taken); takes nothing and says why in `skipped` where another
 * processor, instruction set, thread count or bhsd version made it, or the native backend is not
 * loaded (only its convolutions are planned).
 */
export function importConvPlan(plan: unknown): ConvPlanImport {
  if (!plainObject(plan)) throw invalidParameterError("plan", "an object from exportConvPlan()", plan);
  if (plan.format !== FORMAT) throw invalidParameterError("plan.format", `"${FORMAT}"`, plan.format);
  if (plan.version !== 1) throw invalidParameterError("plan.version", "1", plan.version);
  for (const k of ["bhsd", "cpu", "simd"] as const)
    if (typeof plan[k] !== "string" || (plan[k] as string).length > 1000)
      throw invalidParameterError(`plan.${k}`, "a string of at most 1000 characters", plan[k]);
  if (!Number.isSafeInteger(plan.threads) || (plan.threads as number) < 0)
    throw invalidParameterError("plan.threads", "a non-negative integer", plan.threads);
  const entries = plan.entries;
  if (!Array.isArray(entries) || entries.length > CONV_PLAN_MAX_ENTRIES)
    throw invalidParameterError("plan.entries", `an array of at most ${CONV_PLAN_MAX_ENTRIES} entries`, entries);
  // index loops, not forEach/every: those skip an array's holes ([e, , e])
  const values: number[] = [];
  for (let i = 0; i < entries.length; i++) {
    const e: unknown = entries[i];
    let ok = Array.isArray(e) && e.length === ENTRY_VALUES;
    for (let k = 0; ok && k < ENTRY_VALUES; k++) {
      const v: unknown = (e as unknown[])[k];
      ok = Number.isSafeInteger(v) && (v as number) >= 0 && (v as number) <= MAX_VALUE;
    }
    if (!ok) throw invalidParameterError(`plan.entries[${i}]`, `an array of ${ENTRY_VALUES} integers in [0, 2^40]`, e);
    for (let k = 0; k < ENTRY_VALUES; k++) values.push((e as number[])[k]!);
  }
  const m = machine();
  if (!m) return { imported: 0, skipped: "the native backend is not loaded (only its convolutions are planned)" };
  const made = `${plan.cpu as string}, ${plan.simd as string}, ${plan.threads as number} threads, bhsd ${plan.bhsd as string}`;
  const here = `${m.cpu}, ${m.simd}, ${m.threads} threads, bhsd ${VERSION}`;
  if (made !== here) return { imported: 0, skipped: `made for ${made}; this is ${here}` };
  const taken = nativeBackend()!.convPlanImport(values);
  if (taken < 0) throw invalidParameterError("plan.entries", "entries whose choices are plan values", entries);
  return { imported: taken };
}

/** Forgets this process's convolution plan (loading the addon where it has not loaded): each layer shape's next first call times the candidates again. */
export function clearConvPlan(): void {
  nativeBackend()?.convPlanClear();
}

/** The most bytes a plan file may have (a model's plan is under a kilobyte a layer shape). */
export const CONV_PLAN_FILE_MAX_BYTES = 16 << 20;

/**
 * A plan file's text, or undefined where there is no file; throws where it is not a regular file
 * or is larger than a plan can be (read through one descriptor: no race between the check and the
 * read).
 */
export function readConvPlanFile(path: string): string | undefined {
  let fd: number;
  try {
    fd = openSync(path, constants.O_RDONLY | constants.O_NONBLOCK); // a FIFO named here must not block the open
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === "ENOENT") return undefined;
    throw e;
  }
  try {
    const s = fstatSync(fd);
    if (!s.isFile()) throw new Error("is not a file");
    if (s.size > CONV_PLAN_FILE_MAX_BYTES) throw new Error(`${s.size} bytes, more than a plan's ${CONV_PLAN_FILE_MAX_BYTES}`);
    const buf = Buffer.alloc(s.size);
    let off = 0;
    while (off < buf.length) {
      const n = readSync(fd, buf, off, buf.length - off, off);
      if (n === 0) break;
      off += n;
    }
    return buf.subarray(0, off).toString("utf8");
  } finally {
    closeSync(fd);
  }
}

/**
 * The plan in the file at `path` imported (importConvPlan), or undefined where there is no file;
 * throws where the file is not a plan (readConvPlanFile's refusals, JSON's, importConvPlan's).
 */
export function importConvPlanFile(path: string): ConvPlanImport | undefined {
  const text = readConvPlanFile(path);
  return text === undefined ? undefined : importConvPlan(JSON.parse(text));
}

/** The plan as a file holds it: JSON, one entry a line. */
export function convPlanText(plan: ConvPlan = exportConvPlan()): string {
  const { entries, ...rest } = plan;
  const head = JSON.stringify(rest).slice(0, -1);
  return `${head},"entries":[${entries.map((e) => `\n  ${JSON.stringify(e)}`).join(",")}\n]}\n`;
}

/**
 * The plan to write to `path`: this process's, with the entries of a plan another process wrote
 * there meanwhile taken in first (this process's own choices kept), so that runs sharing a file
 * add to it rather than the last one's plan replacing the others'. Undefined where nothing should
 * be written: the native backend is not loaded (its plan would be empty), or the file there now is
 * not a plan (it may be something else; it is left as it is).
 */
export function convPlanToKeep(path: string): ConvPlan | undefined {
  if (!machine()) return undefined;
  try {
    importConvPlanFile(path);
  } catch {
    return undefined;
  }
  return exportConvPlan();
}

/**
 * Writes `plan` to `path` atomically: a temporary of an unguessable name beside it, created
 * exclusively (never through a link planted there), renamed over `path` (a link at `path` itself is
 * replaced, not followed).
 */
export function writeConvPlanFile(path: string, plan: ConvPlan): void {
  const temp = join(dirname(path), `.bhsd-${randomBytes(6).toString("hex")}-${basename(path)}`);
  try {
    writeFileSync(temp, convPlanText(plan), { flag: "wx" });
    renameSync(temp, path);
  } catch (e) {
    try {
      rmSync(temp, { force: true });
    } catch {
      // (a temporary that cannot be removed is left; the error below says why the plan was not kept)
    }
    throw e;
  }
}

/**
 * BHSD_CONV_PLAN=FILE: when the native addon loads, the plan in FILE is imported where FILE exists;
 * within CONV_PLAN_SAVE_MS of planning shapes FILE did not hold, and at the process's exit, the
 * plan is written back (convPlanToKeep: merged with what other processes wrote there meanwhile;
 * atomically). A FILE that is there but is no plan (or not a file, or too big), at the start or at
 * exit, is reported on stderr and left as it is: it may be something else named by mistake. A plan
 * another machine or version made is reported, and replaced where this process plans shapes.
 */
function planFileOfEnvironment(): void {
  const path = process.env.BHSD_CONV_PLAN;
  if (!path) return;
  const say = (what: string) => process.stderr.write(`bhsd: BHSD_CONV_PLAN=${path}: ${what}\n`);
  let r: ConvPlanImport | undefined;
  try {
    r = importConvPlanFile(path);
    if (r?.skipped) say(`not used (${r.skipped}); it will be replaced`);
  } catch (e) {
    say(`not a plan (${(e as Error).message}); left as it is, and this process's plan is not kept`);
    return;
  }
  let written = JSON.stringify(r === undefined ? [] : exportConvPlan().entries);
  let given = false; // (up: the file became something else; said once, never written again)
  const keep = () => {
    if (given || JSON.stringify(exportConvPlan().entries) === written) return;
    const plan = convPlanToKeep(path);
    if (!plan) {
      given = true;
      return say("is no longer a plan; left as it is, and this process's plan is not kept");
    }
    try {
      writeConvPlanFile(path, plan);
      written = JSON.stringify(plan.entries);
    } catch (e) {
      say(`the plan was not written (${(e as Error).message})`);
    }
  };
  process.on("exit", keep);
  // a service or worker runs until a signal ends it (no exit event): its new plans are kept within
  // CONV_PLAN_SAVE_MS of being made, by a timer that never keeps the process alive
  setInterval(keep, CONV_PLAN_SAVE_MS).unref();
}

/** How often a process with BHSD_CONV_PLAN looks for new plan entries to write (besides at exit). */
export const CONV_PLAN_SAVE_MS = 5000;
onNativeLoad(planFileOfEnvironment);
