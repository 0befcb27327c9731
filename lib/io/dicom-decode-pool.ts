/**
 * Decodes the compressed frames of a DICOM series on a small pool of worker threads
 * (dicom-decode-worker.ts), as lib/server/offload.ts starts its workers: the compiled .js beside
 * this file, or, under tsx (tests), the .ts through tsx's loader, which a worker does not inherit.
 * Each job moves one frame's compressed stream to a worker and its decoded words back (no copies
 * beyond the one that takes the stream out of its file). Jobs are fed as workers free up, two in
 * flight per worker, so that a large series never has all its streams copied at once. The first
 * error stops the feeding; the caller closes the pool (terminating every worker) at the end or on
 * error, so no thread outlives the read.
 */
import { availableParallelism } from "node:os";
import { Worker } from "node:worker_threads";
import type { PixelFormat } from "./dicom-pixels.js";
import type { DecodeJob, DecodeReply, DecodeWorkerData } from "./dicom-decode-worker.js";

const fromSource = import.meta.url.endsWith(".ts");
const IN_FLIGHT_PER_WORKER = 2;
/** The most workers a pool starts by default (more rarely pays: the calling thread must place the slices). */
export const DEFAULT_MAX_WORKERS = 4;
/**
 * Below this many compressed pixels (four 512 × 512 slices) the default is the calling thread:
 * starting a worker and loading its codecs (measured 80–240 ms of CPU each on the project's
 * machine) costs more than decoding them.
 */
export const MIN_PIXELS_FOR_WORKERS = 4 * 512 * 512;

/**
 * How many workers decode `compressed` slices of `pixelsPerSlice`: `option` when given (0 = the
 * calling thread), else min(available parallelism, 4) when they hold at least
 * MIN_PIXELS_FOR_WORKERS pixels, else 0; never more than the slices.
 */
export function poolSize(option: number | undefined, compressed: number, pixelsPerSlice: number): number {
  if (compressed === 0) return 0;
  if (option !== undefined) return Math.min(option, compressed);
  if (compressed * pixelsPerSlice < MIN_PIXELS_FOR_WORKERS) return 0;
  return Math.min(availableParallelism(), DEFAULT_MAX_WORKERS, compressed);
}

export interface DecodeTask {
  label: string;
  fmt: PixelFormat;
  /** The frame's compressed stream, taken when the task is sent (it may throw the file's DicomError). */
  bytes: () => Uint8Array;
}

interface Slot {
  worker: Worker;
  inFlight: Map<number, number>; // job id → task index
}

export class DecodePool {
  private readonly slots: Slot[];
  private handler: ((slot: Slot, ev: { reply?: DecodeReply; error?: Error; exit?: number }) => void) | null = null;
  private nextId = 0;

  /** `makeError(label, message)` builds the caller's error for a frame that does not decode. */
  constructor(
    size: number,
    transferSyntaxes: readonly string[],
    private readonly makeError: (label: string, message: string) => Error,
  ) {
    const workerData: DecodeWorkerData = { bhsdDicomDecoder: true, transferSyntaxes: [...new Set(transferSyntaxes)] };
    const url = new URL(`./dicom-decode-worker.${fromSource ? "ts" : "js"}`, import.meta.url);
    const src = `import("tsx/esm/api").then((m) => m.register()).then(() => import(${JSON.stringify(url.href)}))`;
    this.slots = [];
    for (let i = 0; i < size; i++) {
      const worker = fromSource ? new Worker(src, { eval: true, workerData }) : new Worker(url, { workerData });
      const slot: Slot = { worker, inFlight: new Map() };
      worker.on("message", (reply: DecodeReply) => this.handler?.(slot, { reply }));
      worker.on("error", (error: Error) => this.handler?.(slot, { error }));
      worker.on("exit", (exit: number) => this.handler?.(slot, { exit }));
      this.slots.push(slot);
    }
  }

  get size(): number {
    return this.slots.length;
  }

  /**
   * Decodes every task; `onDone(i, raw)` runs on the calling thread for each as it arrives (in any
   * order) and may return false to stop early (the promise then resolves false). Rejects with the
   * first error; frames still in the workers are then dropped.
   */
  run(tasks: readonly DecodeTask[], onDone: (index: number, raw: Uint8Array) => unknown): Promise<boolean> {
    if (this.handler) return Promise.reject(new Error("DecodePool.run: a run is already in progress"));
    return new Promise<boolean>((resolve, reject) => {
      let next = 0;
      let finished = false;
      const finish = (error: unknown, value = true) => {
        if (finished) return;
        finished = true;
        this.handler = null;
        for (const s of this.slots) s.inFlight.clear();
        if (error) reject(error);
        else resolve(value);
      };
      const busy = () => this.slots.reduce((n, s) => n + s.inFlight.size, 0);
      const feed = (slot: Slot) => {
        while (!finished && next < tasks.length && slot.inFlight.size < IN_FLIGHT_PER_WORKER) {
          const i = next++;
          let bytes: Uint8Array;
          try {
            bytes = tasks[i]!.bytes();
          } catch (e) {
            return finish(e);
          }
          // Moved to the worker: a copy of its own unless it already owns a whole buffer of its own.
          if (bytes.byteOffset !== 0 || bytes.byteLength !== bytes.buffer.byteLength || !(bytes.buffer instanceof ArrayBuffer))
            bytes = bytes.slice();
          const id = this.nextId++;
          slot.inFlight.set(id, i);
          const job: DecodeJob = { id, bytes, fmt: tasks[i]!.fmt };
          slot.worker.postMessage(job, [bytes.buffer as ArrayBuffer]);
        }
        if (!finished && next >= tasks.length && busy() === 0) finish(null, true);
      };
      this.handler = (slot, ev) => {
        if (ev.reply) {
          const i = slot.inFlight.get(ev.reply.id);
          if (i === undefined) return; // from before a stop
          slot.inFlight.delete(ev.reply.id);
          if (!ev.reply.ok) return finish(this.makeError(tasks[i]!.label, ev.reply.message));
          let more: unknown;
          try {
            more = onDone(i, ev.reply.raw);
          } catch (e) {
            return finish(e);
          }
          if (more === false) return finish(null, false);
          return feed(slot);
        }
        // A worker that fails or ends mid-run (out of memory, a crash): the frame it held is named.
        const held = [...slot.inFlight.values()][0];
        const label = held !== undefined ? tasks[held]!.label : (tasks[0]?.label ?? "");
        const why = ev.error ? ev.error.message : `exit code ${ev.exit}`;
        finish(this.makeError(label, `could not be decoded: the decoding worker stopped (${why})`));
      };
      for (const s of this.slots) feed(s);
      if (tasks.length === 0) finish(null, true);
    });
  }

  /** Terminates every worker; resolves once all have exited. */
  async close(): Promise<void> {
    this.handler = null;
    await Promise.all(this.slots.map((s) => s.worker.terminate()));
  }
}
