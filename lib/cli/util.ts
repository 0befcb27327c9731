/** Shared bits of the commands: number parsing with clear errors, tables, progress on stderr. */
import { randomBytes } from "node:crypto";
import { constants, readdirSync, renameSync, rmSync } from "node:fs";
import { access, chmod, lstat, mkdir, readdir, realpath, rename, rm, stat } from "node:fs/promises";
import { basename, dirname, join, relative, resolve, sep } from "node:path";
import { InvalidArgumentError } from "commander";
import { importConvPlanFile, type ConvPlanImport } from "../backends/conv-plan.js";

export function intArg(name: string, min: number, max = Number.MAX_SAFE_INTEGER) {
  return (v: string): number => {
    const n = Number(v);
    if (!Number.isInteger(n) || n < min || n > max)
      throw new InvalidArgumentError(
        `${name} must be an integer from ${min}${max < Number.MAX_SAFE_INTEGER ? ` to ${max}` : " up"}, got "${v}"`,
      );
    return n;
  };
}

export function numberArg(name: string, min: number) {
  return (v: string): number => {
    const n = Number(v);
    if (!Number.isFinite(n) || n < min) throw new InvalidArgumentError(`${name} must be a number >= ${min}, got "${v}"`);
    return n;
  };
}

export function listArg(name: string) {
  return (v: string): number[] => {
    const parts = v.split(",").map((s) => Number(s.trim()));
    if (!parts.length || !parts.every((n) => Number.isInteger(n) && n >= 1 && n <= 255))
      throw new InvalidArgumentError(`${name} must be a comma-separated list of class numbers, got "${v}"`);
    return parts;
  };
}

/** A plain text table with right-aligned columns after the first. */
export function table(head: string[], rows: (string | number)[][]): string {
  const cells = [head, ...rows.map((r) => r.map(String))];
  const widths = head.map((_, j) => Math.max(...cells.map((r) => (r[j] ?? "").length)));
  return cells.map((r) => r.map((c, j) => (j === 0 ? c.padEnd(widths[j]!) : c.padStart(widths[j]!))).join("  ")).join("\n");
}

export function fmt(x: number, digits = 3): string {
  if (Number.isNaN(x)) return "nan";
  if (!Number.isFinite(x)) return x > 0 ? "inf" : "-inf";
  return Number.isInteger(x) ? String(x) : x.toFixed(digits);
}

// eslint-disable-next-line no-control-regex -- the control characters are what is replaced
const UNPRINTABLE = /[\0-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]/g;

/**
 * Text for a terminal: control characters other than tab and line feed (an escape sequence in a
 * case's file name, a DICOM description or an error message sets the window's title, clears the
 * screen, a carriage return forges a line over the last), C1 controls and the bidirectional
 * overrides become `\uXXXX`
 * — which is also what JSON would have written, so JSON output stays valid and means the same.
 */
export function terminalText(s: string): string {
  return s.replace(UNPRINTABLE, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, "0")}`);
}

/** stderr's own write, for the progress line's carriage return (set by guardTerminalOutput). */
let rawStderrWrite: ((s: string) => boolean) | undefined;

/** Every string the command line writes to stdout and stderr passes terminalText (bytes, e.g. a PNG, pass as they are). */
export function guardTerminalOutput(): void {
  for (const stream of [process.stdout, process.stderr]) {
    const write = stream.write.bind(stream) as (chunk: unknown, ...rest: unknown[]) => boolean;
    if (stream === process.stderr) rawStderrWrite = write;
    stream.write = ((chunk: unknown, ...rest: unknown[]) =>
      write(typeof chunk === "string" ? terminalText(chunk) : chunk, ...rest)) as typeof stream.write;
  }
}

/** A progress line on stderr when it is a terminal and not --quiet; nothing otherwise. */
export function progress(enabled: boolean): (done: number, total: number, what: string) => void {
  if (!enabled || !process.stderr.isTTY) return () => {};
  return (done, total, what) => {
    const width = 30,
      full = Math.round((done / total) * width);
    const write = rawStderrWrite ?? ((t: string) => process.stderr.write(t));
    write(`\r[${"#".repeat(full)}${".".repeat(width - full)}] ${done}/${total} ${terminalText(what.slice(0, 30)).padEnd(30)}`);
    if (done === total) write("\n");
  };
}

// ---------------------------------------------------------------------------------------------
// Inputs and outputs of the commands: limits that fit a head CT, and outputs that never replace
// an input, never collide, are checked before any work and appear all at once or not at all.

/**
 * The largest voxel data (bytes) a command reads from one NIfTI file: 1 GiB by default, set with
 * the global --max-input-mb. A head CT (512 × 512 × up to 600 thin slices of int16) is 315 MB,
 * a float64 one 630 MB; readNifti's own default (4 GiB) is a library's.
 */
export const DEFAULT_MAX_INPUT_MB = 1024;
let maxInputBytes = DEFAULT_MAX_INPUT_MB * 2 ** 20;

export function setMaxInputMb(mb: number): void {
  maxInputBytes = mb * 2 ** 20;
}

/** readNifti's options for a command's inputs. */
export function readLimits(): { maxBytes: number; limitName: string } {
  return { maxBytes: maxInputBytes, limitName: `--max-input-mb ${maxInputBytes / 2 ** 20}` };
}

export interface OutputRequest {
  /** The option that names it, for messages (e.g. "--out"). */
  flag: string;
  path: string;
  /** A folder the command fills (phantom --out, demo --out), created when missing. */
  folder?: boolean;
}

interface Planned {
  flag: string;
  final: string;
  temp: string;
  folder: boolean;
}

const live = new Set<string>();
let hooksInstalled = false;

/**
 * Removes a temporary on the way out, returning whether anything of it was there. The work's
 * asynchronous writes may still be creating files in it on libuv's threads while it is removed
 * (ENOTEMPTY: seen on a loaded machine, where the error escaped the signal handler and the process
 * exited with a code instead of the signal; and in CI, where a folder temporary stayed: Node 20's
 * rmSync retries its last rmdir against the listing it took first, so a file created after that
 * listing defeats every retry, for seconds). So it is first renamed: a write not yet begun then
 * names a path that no longer exists and fails. Each removal lists afresh, without retries
 * (removeLive looks again). A writer's own temporary beside it (writeNifti writes
 * `<temp>.<hex>.tmp`, writeNpy and writeDicomSeg alike, then rename) goes too. Never
 * throws: the signal must still end the process.
 */
function removeTemporary(p: string): boolean {
  let found = false;
  const rm = (q: string) => {
    try {
      rmSync(q, { recursive: true, force: true });
    } catch {
      found = true; // something landed in it meanwhile: removeLive looks again
    }
  };
  let target = p;
  try {
    const dead = `${p}.${process.pid}.removing`;
    renameSync(p, dead);
    target = dead;
    found = true;
  } catch {
    // gone already, or not renamable: remove it where it is
  }
  rm(target);
  try {
    const prefix = `${basename(p)}.`;
    for (const f of readdirSync(dirname(p)))
      if (f.startsWith(prefix) && (f.endsWith(".tmp") || f.endsWith(".removing"))) {
        found = true;
        rm(join(dirname(p), f));
      }
  } catch {
    // best effort
  }
  return found;
}

/**
 * Removes every live temporary, listing afresh each time, until three looks 40 ms apart find none
 * of them, within two seconds: writes that were already on libuv's threads when the removal began
 * (a gzip stream's next file, writeNifti's rename into the temporary) land in that time.
 */
function removeLive(): void {
  const nap = new Int32Array(new SharedArrayBuffer(4));
  const end = performance.now() + 2000;
  for (let quiet = 0; quiet < 3 && performance.now() < end;) {
    let found = false;
    for (const p of live) if (removeTemporary(p)) found = true;
    quiet = found ? 0 : quiet + 1;
    if (quiet < 3) Atomics.wait(nap, 0, 0, 40);
  }
}

/** Removes every temporary left when the process ends early (an error, Ctrl-C, SIGTERM). */
function installHooks() {
  if (hooksInstalled) return;
  hooksInstalled = true;
  process.on("exit", () => {
    if (live.size) removeLive();
  });
  for (const sig of ["SIGINT", "SIGTERM", "SIGHUP"] as const) {
    process.once(sig, () => {
      try {
        removeLive();
      } finally {
        live.clear();
        process.kill(process.pid, sig);
      }
    });
  }
}

async function statOrNull(p: string) {
  try {
    return await stat(p);
  } catch {
    return null;
  }
}

/** The nearest folder at or above `p` that exists. */
async function nearestExisting(p: string): Promise<string> {
  let d = p;
  for (;;) {
    if (await statOrNull(d)) return d;
    const up = dirname(d);
    if (up === d) return d;
    d = up;
  }
}

/** A file's identity: its device and inode when it exists, else its real folder and name. */
async function identity(p: string): Promise<{ key: string; ino?: string }> {
  const s = await statOrNull(p);
  const real = await realpath(p).catch(async () => join(await realpath(dirname(p)).catch(() => dirname(p)), basename(p)));
  return s ? { key: real, ino: `${s.dev}:${s.ino}` } : { key: real };
}

/**
 * Where a path will be once written: the real path of its nearest existing folder, then the rest
 * (a link on the way resolved as the kernel will when the file is made).
 */
async function realLocation(p: string): Promise<string> {
  const abs = resolve(p);
  const base = await nearestExisting(dirname(abs));
  const real = await realpath(base).catch(() => base);
  return join(real, relative(base, abs));
}

/** The input folders (real paths) among `inputs`. */
async function inputFolders(inputs: string[]): Promise<{ p: string; real: string }[]> {
  const out: { p: string; real: string }[] = [];
  for (const p of inputs) if ((await statOrNull(p))?.isDirectory()) out.push({ p, real: await realpath(p) });
  return out;
}

/**
 * Refuses an output that would replace something inside an input folder (a DICOM series, an
 * nnU-Net or MONAI folder): whatever is there may be what the command reads (a slice, a
 * checkpoint). A new file there is allowed (`segment . --out seg.nii.gz` in a series folder).
 */
async function refuseInsideFolders(flag: string, path: string, folders: { p: string; real: string }[]): Promise<void> {
  if (!folders.length || !(await statOrNull(path))) return;
  const where = await realLocation(path);
  for (const f of folders)
    if (where === f.real || where.startsWith(f.real.endsWith(sep) ? f.real : f.real + sep))
      throw new Error(`${flag} ${path} is inside ${f.p}, an input folder of this command, and is there already; refusing to replace it`);
}

/** The files a path names as an input: the file itself, or the files of a folder (and of the given sub-folders). */
export async function inputFiles(path: string, subfolders: string[] = []): Promise<string[]> {
  const s = await statOrNull(path);
  if (!s) return [path];
  if (!s.isDirectory()) return [path];
  const out: string[] = [];
  for (const dir of [path, ...subfolders.map((f) => join(path, f))]) {
    const entries = await readdir(dir, { withFileTypes: true }).catch(() => []);
    for (const e of entries) if (!e.isDirectory()) out.push(join(dir, e.name));
  }
  return out;
}

/**
 * --conv-plan FILE, before the work: the convolution plan in FILE imported where FILE exists (a note
 * on stderr where another machine or version made it); an error, before any work and with FILE left
 * as it is, where FILE is not such a plan — it may be something else named by mistake, and the
 * command writes the plan back to FILE when it is done.
 */
export function importConvPlanFileOrRefuse(flag: string, path: string): void {
  let r: ConvPlanImport | undefined;
  try {
    r = importConvPlanFile(path);
  } catch (e) {
    throw new Error(`${flag} ${path}: not a plan from an earlier run (${(e as Error).message}); refusing to overwrite it`, { cause: e });
  }
  if (r?.skipped) process.stderr.write(`${flag} ${path}: not used (${r.skipped}); it will be replaced\n`);
}

/**
 * The outputs of a command, planned before any work. An input that is a FIFO, a device or a
 * socket is refused (reading it could block forever). Each output is refused when it is one of the
 * inputs (the same file after symlinks and hard links: real path or device and inode), when two
 * outputs are the same file, when its folder is missing or not writable, or when it is a folder
 * (a file output) or a file (a folder output). The command writes each output to `temp(flag)`, a
 * hidden file beside it, and `commit()` renames them all into place at the end; anything that
 * fails before leaves no output behind and names only the outputs' own paths.
 */
export class OutputPlan {
  private readonly planned: Planned[];
  private committed = false;

  private constructor(planned: Planned[]) {
    this.planned = planned;
  }

  static async create(inputs: string[], outputs: OutputRequest[]): Promise<OutputPlan> {
    const wanted = outputs.filter((o) => o.path !== undefined && o.path !== "");
    // an input that is a FIFO, a device or a socket could block a read forever (a model, a config)
    for (const p of inputs) {
      const s = await statOrNull(p);
      if (s && !s.isFile() && !s.isDirectory()) {
        const kind = s.isFIFO()
          ? "a FIFO (named pipe)"
          : s.isCharacterDevice()
            ? "a character device"
            : s.isBlockDevice()
              ? "a block device"
              : s.isSocket()
                ? "a socket"
                : "not a regular file";
        throw new Error(`${p}: is ${kind}, not a file`);
      }
    }
    const inIds = await Promise.all(inputs.map(async (p) => ({ p, id: await identity(p) })));
    const inDirs = await inputFolders(inputs);
    const seen: { flag: string; path: string; id: { key: string; ino?: string } }[] = [];
    const planned: Planned[] = [];
    for (const o of wanted) {
      const final = resolve(o.path);
      const s = await statOrNull(final);
      if (s && o.folder && !s.isDirectory()) throw new Error(`${o.flag} ${o.path}: is a file, expected a folder`);
      if (s && !o.folder && s.isDirectory()) throw new Error(`${o.flag} ${o.path}: is a folder, expected a file name`);
      const parent = dirname(final);
      const base = o.folder ? await nearestExisting(parent) : parent;
      const ps = await statOrNull(base);
      if (!ps) throw new Error(`${o.flag} ${o.path}: the folder ${dirname(o.path)} does not exist`);
      if (!ps.isDirectory()) throw new Error(`${o.flag} ${o.path}: ${base} is not a folder`);
      try {
        await access(base, constants.W_OK | constants.X_OK);
      } catch {
        throw new Error(`${o.flag} ${o.path}: the folder ${base} is not writable`);
      }
      await refuseInsideFolders(o.flag, o.path, inDirs);
      const id = await identity(final);
      for (const i of inIds) {
        if (i.id.key === id.key || (id.ino && i.id.ino === id.ino)) {
          throw new Error(`${o.flag} ${o.path} is an input of this command (${i.p}); refusing to overwrite it`);
        }
      }
      for (const prev of seen) {
        if (prev.id.key === id.key || (id.ino && prev.id.ino === id.ino))
          throw new Error(`${o.flag} ${o.path} and ${prev.flag} ${prev.path} name the same file`);
      }
      seen.push({ flag: o.flag, path: o.path, id });
      // the temporary: beside the output (same folder, same file system), keeping its ending (.nii.gz …)
      const tag = `.bhsd-${randomBytes(6).toString("hex")}-`;
      const temp = o.folder ? join(s ? final : base, `${tag}${basename(final)}.tmp`) : join(parent, `${tag}${basename(final)}`);
      planned.push({ flag: o.flag, final, temp, folder: !!o.folder });
    }
    if (planned.length) installHooks();
    for (const p of planned) live.add(p.temp);
    const plan = new OutputPlan(planned);
    for (const p of planned) if (p.folder) await mkdir(p.temp);
    return plan;
  }

  /** Whether the command was asked for this output. */
  has(flag: string): boolean {
    return this.planned.some((p) => p.flag === flag);
  }

  /** Where to write the output named by `flag` (a temporary; a folder for folder outputs). */
  temp(flag: string): string {
    const p = this.planned.find((q) => q.flag === flag);
    if (!p) throw new Error(`internal: no output ${flag} was planned`);
    return p.temp;
  }

  /**
   * Runs `write(temp)` for the output `flag`; an error from it names the output, never the
   * temporary.
   */
  async write(flag: string, write: (temp: string) => Promise<unknown>): Promise<void> {
    const p = this.planned.find((q) => q.flag === flag);
    if (!p) throw new Error(`internal: no output ${flag} was planned`);
    try {
      await write(p.temp);
    } catch (e) {
      throw this.clean(e);
    }
  }

  /**
   * Refuses the plan's outputs that are one of `inputs`, for inputs known only once some work is
   * done (a queue's ground truths and label files); call it before writing anything.
   */
  async refuseInputs(inputs: string[]): Promise<void> {
    const inIds = await Promise.all(inputs.map(async (p) => ({ p, id: await identity(p) })));
    const inDirs = await inputFolders(inputs);
    for (const o of this.planned) {
      await refuseInsideFolders(o.flag, o.final, inDirs);
      if (o.folder) continue;
      const id = await identity(o.final);
      const hit = inIds.find((i) => i.id.key === id.key || (id.ino && i.id.ino === id.ino));
      if (hit) throw new Error(`${o.flag} ${o.final} is an input of this command (${hit.p}); refusing to overwrite it`);
    }
  }

  /** Checks that `files` (paths inside a folder output, relative to it) are not inputs. */
  static async checkFolderFiles(flag: string, folder: string, files: string[], inputs: string[]): Promise<void> {
    const inIds = await Promise.all(inputs.map(identity));
    for (const f of files) {
      const id = await identity(join(folder, f));
      const hit = inIds.findIndex((i) => i.key === id.key || (id.ino && i.ino === id.ino));
      if (hit >= 0) throw new Error(`${flag} ${folder}: ${f} there is an input of this command (${inputs[hit]}); refusing to overwrite it`);
    }
  }

  private clean(e: unknown): Error {
    const err = e instanceof Error ? e : new Error(String(e));
    for (const p of this.planned) {
      // writeNifti's own temporary is the given path plus ".<hex>.tmp"
      const re = new RegExp(escapeRegExp(p.temp) + "(\\.[0-9a-f]+\\.tmp)?", "g");
      err.message = err.message.replace(re, p.final);
      if (err.stack) err.stack = err.stack.replace(re, p.final);
    }
    return err;
  }

  /** Moves every output into place. */
  async commit(): Promise<void> {
    if (this.committed) return;
    this.committed = true;
    try {
      for (const p of this.planned) {
        if (!p.folder) {
          if (!(await statOrNull(p.temp))) continue; // not written (the command had nothing to write)
          // a file replaced keeps its permission bits (as replaceFile: a result made group-readable stays so)
          const old = await lstat(p.final).catch(() => null);
          if (old?.isFile()) await chmod(p.temp, old.mode & 0o777).catch(() => {}); // (a courtesy: vfat may refuse it)
          await rename(p.temp, p.final);
        } else if (!(await statOrNull(p.final))) {
          await mkdir(dirname(p.final), { recursive: true });
          await rename(p.temp, p.final);
        } else {
          await mergeInto(p.temp, p.final);
          await rm(p.temp, { recursive: true, force: true });
        }
        live.delete(p.temp);
      }
    } catch (e) {
      await this.discard();
      throw this.clean(e);
    }
  }

  /** Removes every temporary (after a failure). */
  async discard(): Promise<void> {
    for (const p of this.planned) {
      await rm(p.temp, { recursive: true, force: true }).catch(() => {});
      live.delete(p.temp);
    }
  }

  /**
   * Plans the outputs, runs `work` and commits; on any failure the temporaries are removed and
   * no output appears.
   */
  static async run<T>(inputs: string[], outputs: OutputRequest[], work: (plan: OutputPlan) => Promise<T>): Promise<T> {
    const plan = await OutputPlan.create(inputs, outputs);
    try {
      const r = await work(plan);
      await plan.commit();
      return r;
    } catch (e) {
      await plan.discard();
      throw plan.clean(e);
    }
  }
}

/** Moves a folder's tree into an existing folder, replacing files of the same name. */
async function mergeInto(from: string, to: string): Promise<void> {
  for (const e of await readdir(from, { withFileTypes: true })) {
    const src = join(from, e.name),
      dst = join(to, e.name);
    if (e.isDirectory()) {
      const s = await statOrNull(dst);
      if (!s) await rename(src, dst);
      else if (s.isDirectory()) await mergeInto(src, dst);
      else throw new Error(`${dst} is a file where a folder is to be written`);
    } else await rename(src, dst);
  }
}

const escapeRegExp = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
