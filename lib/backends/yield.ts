/** Keeps long TypeScript loops from holding the event loop: work in chunks, yield between them. */
import { performance } from "node:perf_hooks";
import { setImmediate as yieldToLoop } from "node:timers/promises";

/** Elements per chunk: a few milliseconds of simple work. */
export const CHUNK = 1 << 21;

/** Calls fn(lo, hi) over [0, n) in chunks of `chunk`, letting other callbacks run between. */
export async function forChunks(n: number, fn: (lo: number, hi: number) => void, chunk = CHUNK): Promise<void> {
  for (let lo = 0; lo < n; lo += chunk) {
    fn(lo, Math.min(n, lo + chunk));
    if (lo + chunk < n) await yieldToLoop();
  }
}

/** Yields to the event loop once the current slice of work has run for more than ~15 ms. */
export class Yielder {
  private t = performance.now();
  async maybe(): Promise<void> {
    if (performance.now() - this.t > 15) {
      await yieldToLoop();
      this.t = performance.now();
    }
  }
}
