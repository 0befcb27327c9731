/**
 * Label results on disk: `<id>.nii.gz` files in one folder, written whole then renamed into place,
 * each valid for `ttlMs` after it was written (its mtime), so a result survives a restart of the
 * service on the same folder. Bounded in bytes and in count: when a new result would pass either
 * cap, the oldest results go first (before they expire). Ids are 128-bit random hex; nothing else
 * in the folder is read or served.
 */
import { randomBytes } from "node:crypto";
import { createReadStream, mkdirSync, readdirSync, rmSync, statSync, type ReadStream } from "node:fs";
import { rename, rm, stat, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { HttpError } from "./errors.js";

const NAME = /^([0-9a-f]{32})\.nii\.gz$/;
export const RESULT_ID = /^[0-9a-f]{32}$/;

export interface ResultStoreOptions {
  dir: string;
  ttlMs: number;
  maxBytes: number;
  maxCount: number;
}

interface Entry {
  bytes: number;
  written: number;
}

export class ResultStore {
  private entries = new Map<string, Entry>(); // in order of writing, oldest first
  private bytes = 0;
  constructor(readonly opts: ResultStoreOptions) {
    mkdirSync(opts.dir, { recursive: true, mode: 0o700 });
    const now = Date.now();
    const found: [string, Entry][] = [];
    for (const f of readdirSync(opts.dir)) {
      const path = join(opts.dir, f);
      if (f.startsWith(".tmp-")) {
        rmSync(path, { force: true }); // a write cut short by a stop
        continue;
      }
      const m = NAME.exec(f);
      if (!m) continue;
      let st;
      try {
        st = statSync(path);
      } catch {
        continue;
      }
      if (!st.isFile()) continue;
      if (st.mtimeMs + opts.ttlMs < now) rmSync(path, { force: true });
      else found.push([m[1]!, { bytes: st.size, written: st.mtimeMs }]);
    }
    found.sort((a, b) => a[1].written - b[1].written);
    for (const [id, e] of found) {
      this.entries.set(id, e);
      this.bytes += e.bytes;
    }
    this.evict(0);
  }

  private path(id: string): string {
    return join(this.opts.dir, `${id}.nii.gz`);
  }

  /** Removes expired results, then the oldest until `incoming` more bytes and one more result fit. */
  private evict(incoming: number): void {
    const now = Date.now();
    for (const [id, e] of this.entries) {
      const expired = e.written + this.opts.ttlMs < now;
      const over = this.bytes + incoming > this.opts.maxBytes || this.entries.size + (incoming > 0 ? 1 : 0) > this.opts.maxCount;
      if (!expired && !over) break;
      this.drop(id);
    }
  }

  private drop(id: string): void {
    const e = this.entries.get(id);
    if (!e) return;
    this.entries.delete(id);
    this.bytes -= e.bytes;
    rmSync(this.path(id), { force: true });
  }

  /** Stores the bytes; returns the new result's id. */
  async put(data: Buffer): Promise<string> {
    if (data.length > this.opts.maxBytes) {
      throw new HttpError(
        507,
        "result_too_large",
        `the result is ${data.length} bytes; the server keeps at most ${this.opts.maxBytes} bytes of results`,
      );
    }
    const id = randomBytes(16).toString("hex");
    const tmp = join(this.opts.dir, `.tmp-${id}`);
    try {
      await writeFile(tmp, data, { mode: 0o600 });
      this.evict(data.length);
      await rename(tmp, this.path(id));
    } catch (e) {
      await rm(tmp, { force: true });
      throw e;
    }
    this.entries.set(id, { bytes: data.length, written: Date.now() });
    this.bytes += data.length;
    return id;
  }

  /** A stream of the result's bytes, or undefined when unknown or expired. */
  async open(id: string): Promise<ReadStream | undefined> {
    if (!RESULT_ID.test(id)) return undefined;
    const e = this.entries.get(id);
    if (!e) return undefined;
    if (e.written + this.opts.ttlMs < Date.now()) {
      this.drop(id);
      return undefined;
    }
    try {
      await stat(this.path(id));
    } catch {
      this.drop(id);
      return undefined;
    }
    return createReadStream(this.path(id));
  }

  sweep(): void {
    this.evict(0);
  }

  get usage(): { count: number; bytes: number } {
    return { count: this.entries.size, bytes: this.bytes };
  }
}
