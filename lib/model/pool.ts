import { allocArray } from "../volume.js";

/** Float32 buffers by length, handed out again after their last reader. */
export class Pool {
  private free = new Map<number, Float32Array[]>();
  liveBytes = 0;
  peakBytes = 0;
  constructor(private readonly limit = Infinity) {}
  /** Throws, before anything is allocated, when `bytes` more would pass the model's memoryLimit. */
  check(bytes: number, what: string) {
    if (this.liveBytes + bytes > this.limit) {
      const mb = (b: number) => `${(b / 2 ** 20).toFixed(0)} MB`;
      throw new RangeError(
        `${what} needs ${mb(bytes)} more with ${mb(this.liveBytes)} live: over the model's memoryLimit of ${mb(this.limit)}`,
      );
    }
  }
  take(n: number): Float32Array {
    this.check(n * 4, "an intermediate");
    const list = this.free.get(n);
    const a = list?.pop() ?? (allocArray("float32", n, "model intermediate") as Float32Array);
    this.liveBytes += n * 4;
    this.peakBytes = Math.max(this.peakBytes, this.liveBytes);
    return a;
  }
  /**
   * A buffer from an earlier run (not counted as live). Not zeroed: every op writes all of its
   * output, as buffers handed on within a run already rely on (zeroing them cost 0.7 ms of a 20 ms
   * plainunet forward).
   */
  stock(a: Float32Array) {
    const list = this.free.get(a.length) ?? [];
    list.push(a);
    this.free.set(a.length, list);
  }
  give(a: Float32Array) {
    this.liveBytes -= a.length * 4;
    const list = this.free.get(a.length) ?? [];
    list.push(a);
    this.free.set(a.length, list);
  }
  /** Empties the pool and returns the arrays it held. */
  drain(): Float32Array[] {
    const all = [...this.free.values()].flat();
    this.free.clear();
    return all;
  }
}
