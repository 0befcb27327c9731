/**
 * Reading the small files that come beside a model or a data set (a sidecar config, nnU-Net's
 * plans and dataset.json, a post-processing file, a MONAI bundle's config, a network JSON, a slice
 * label CSV), bounded: each is a regular file of at most a stated size, read through one handle.
 * A FIFO, a device or a file of gigabytes named there would otherwise block a read forever or
 * take the memory, and a file swapped between a stat and the read would escape the check.
 *
 * Errors carry plain reasons ("no such file", "not a regular file", "N bytes, more than the M a
 * dataset.json may have"); callers put the file and their context around them.
 */
import { constants } from "node:fs";
import type { Stats } from "node:fs";
import { randomBytes } from "node:crypto";
import { chmod, lstat, open, rename, rm, type FileHandle } from "node:fs/promises";

export interface SmallFileLimit {
  /** Most bytes the file may have. */
  maxBytes: number;
  /** What the file is, for the size message: "a dataset.json", "a model's config". */
  what: string;
}

/**
 * Writes `path` whole or not at all: `write` fills a fresh temporary beside it (`<path>.<hex>.tmp`,
 * a name nobody can guess, which `write` must create exclusively — "wx" — so a link planted there
 * is never written through), renamed over `path` only when `write` succeeded; on any failure the
 * temporary goes and `path` is as it was. A link at `path` itself is replaced, not followed. A
 * regular file replaced keeps its permission bits (as `sed -i` does: a file made group-readable for
 * a viewer stays so); its owner and hard links are not kept. (The CLI's signal cleanup knows the
 * temporary's name.)
 */
export async function replaceFile(path: string, write: (tmp: string) => Promise<void>): Promise<void> {
  const tmp = `${path}.${randomBytes(6).toString("hex")}.tmp`;
  try {
    await write(tmp);
    const old = await lstat(path).catch(() => null);
    if (old?.isFile()) await chmod(tmp, old.mode & 0o777).catch(() => {}); // (a courtesy: vfat may refuse it)
    await rename(tmp, path);
  } catch (e) {
    // (EEXIST: the temporary was somebody else's, not ours to remove)
    if ((e as NodeJS.ErrnoException).code !== "EEXIST") await rm(tmp, { force: true }).catch(() => {});
    throw e;
  }
}

/**
 * The regular file at `path`, opened for reading, with its stat taken on the handle (no swap between
 * a stat and the open). Opening never blocks (O_NONBLOCK: a FIFO would otherwise wait for a writer);
 * `flags` adds to it (O_NOFOLLOW). Throws "no such file", "not a regular file" or the system's reason.
 */
export async function openRegularFile(path: string, flags = 0): Promise<{ fh: FileHandle; st: Stats }> {
  let fh: FileHandle;
  try {
    fh = await open(path, constants.O_RDONLY | constants.O_NONBLOCK | flags);
  } catch (e) {
    throw new Error((e as NodeJS.ErrnoException).code === "ENOENT" ? "no such file" : (e as Error).message, { cause: e });
  }
  try {
    const st = await fh.stat();
    if (!st.isFile()) throw new Error("not a regular file");
    return { fh, st };
  } catch (e) {
    await fh.close().catch(() => {});
    throw e;
  }
}

/** The bytes of the regular file at `path`, refused past `limit.maxBytes` (checked on the open handle). */
export async function readSmallFile(path: string, limit: SmallFileLimit): Promise<Buffer> {
  const { fh, st } = await openRegularFile(path);
  try {
    if (st.size > limit.maxBytes) throw new Error(`${st.size} bytes, more than the ${limit.maxBytes} ${limit.what} may have`);
    // A regular file is read to its end, one byte past what the stat said (a file that grows while
    // read is refused, not cut short). A size of 0 may mean a file whose size the stat does not know
    // (/proc, some FUSE files): that one is read to its end within the limit.
    const known = st.size > 0;
    const cap = known ? st.size + 1 : limit.maxBytes + 1;
    let buf = Buffer.allocUnsafe(known ? cap : Math.min(cap, 1 << 16)); // (only the bytes read are returned)
    let done = 0;
    for (;;) {
      if (done === buf.length) {
        if (buf.length >= cap) break;
        const more = Buffer.allocUnsafe(Math.min(cap, buf.length * 2));
        buf.copy(more, 0, 0, done);
        buf = more;
      }
      // (at most 1 GiB a call: Node's read takes a 32-bit length)
      const { bytesRead } = await fh.read(buf, done, Math.min(buf.length - done, 1 << 30), done);
      if (bytesRead === 0) break;
      done += bytesRead;
    }
    if (known && done > st.size) throw new Error("it grew while being read");
    if (!known && done > limit.maxBytes) throw new Error(`more than the ${limit.maxBytes} bytes ${limit.what} may have`);
    return buf.subarray(0, done);
  } finally {
    await fh.close();
  }
}

/** Whether a parsed JSON value nests arrays and objects deeper than `max` (iteratively: no recursion to overflow). */
export function nestsDeeper(v: unknown, max: number): boolean {
  const stack: [unknown, number][] = [[v, 0]];
  while (stack.length) {
    const [x, d] = stack.pop()!;
    if (x === null || typeof x !== "object") continue;
    if (d >= max) return true;
    for (const y of Array.isArray(x) ? x : Object.values(x)) if (y !== null && typeof y === "object") stack.push([y, d + 1]);
  }
  return false;
}

/**
 * JSON.parse, whose error does not quote the text: V8's names its first characters (`Unexpected
 * token 'r', "root:x:0:0"... is not valid JSON`), and a file a model folder links to elsewhere
 * (`dataset.json -> /etc/shadow`) must not show up in an error a client may read.
 */
export function parseJson(text: string): unknown {
  try {
    return JSON.parse(text) as unknown;
  } catch (e) {
    if (!(e instanceof SyntaxError)) throw e;
    // (no cause: the original's message quotes the text)
    // eslint-disable-next-line preserve-caught-error
    throw new SyntaxError(e.message.replace(/, ".*"(\.\.\.)? is not valid JSON$/s, " (not valid JSON)"));
  }
}

/**
 * `text` parsed as a JSON object of arrays and objects nested at most `maxDepth` deep (the code
 * that walks a config recurses; nnU-Net's nest 4 deep, a MONAI bundle's about 8).
 */
export function parseJsonObject(text: string, maxDepth = 64): Record<string, unknown> {
  const v = parseJson(text);
  if (typeof v !== "object" || v === null || Array.isArray(v)) throw new Error("not a JSON object");
  if (nestsDeeper(v, maxDepth)) throw new Error(`arrays and objects nested over ${maxDepth} deep`);
  return v as Record<string, unknown>;
}
