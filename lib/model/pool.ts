import { allocArray } from "../volume.js";

/**
 * The buffer a view handed out by a Pool lies in (as its first elements), wherever the view goes
 * next (a buffer kept for the next run comes back to that run's pool as the view).
 */
const bases = new WeakMap<Float32Array, Float32Array>();

/** A free buffer serves requests down to this fraction of its length. */
const FIT = 1 / 4;

/**
 * Float32 buffers, handed out again after their last reader: a free one of the same length, else
 * (`fit`) the shortest free one up to 4× as long, as a view of its first elements, else a new one
 * (a run's outputs: `own`).
 * By length alone, a model's run had kept buffers of every length it met: ResEnc-M's 16×256×256
 * window 852 MB of them, 631 MB now, for a live set of 512 MB — memory kept between runs, and in
 * the first run page faults of fresh memory. `liveBytes` counts the buffers held (a view: all of
 * its buffer), so a model's memoryLimit bounds what its run holds.
 */
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
  /** `fit: false`: a buffer of exactly n (a run's outputs, which the caller keeps). */
  take(n: number, fit = true): Float32Array {
    this.check(n * 4, "an intermediate");
    let a = this.pop(n);
    let held = n;
    if (!a && fit) {
      let best = Infinity;
      for (const [m, list] of this.free)
        if (m > n && m < best && n >= m * FIT && list.length > 0 && this.liveBytes + m * 4 <= this.limit) best = m;
      if (best !== Infinity) {
        const base = this.pop(best)!;
        a = base.subarray(0, n);
        bases.set(a, base);
        held = best;
      }
    }
    // not cleared: every op writes all of its output, as the reused buffers above already rely on
    // (clearing a SegResNet output's 1.5 MB on every run was most of its 0.34 ms allocation)
    a ??= allocArray("float32", n, "model intermediate", { overwritten: true }) as Float32Array;
    this.liveBytes += held * 4;
    this.peakBytes = Math.max(this.peakBytes, this.liveBytes);
    return a;
  }
  private pop(n: number): Float32Array | undefined {
    const list = this.free.get(n);
    const a = list?.pop();
    if (list && list.length === 0) this.free.delete(n);
    return a;
  }
  /** Into the free lists as its whole buffer; returns that buffer. */
  private put(a: Float32Array): Float32Array {
    const b = bases.get(a) ?? a;
    const list = this.free.get(b.length);
    if (!list) this.free.set(b.length, [b]);
    else if (!list.includes(b)) list.push(b);
    return b;
  }
  /**
   * A buffer from an earlier run (not counted as live). Not zeroed: every op writes all of its
   * output, as buffers handed on within a run already rely on (zeroing them cost 0.7 ms of a 20 ms
   * plainunet forward).
   */
  stock(a: Float32Array) {
    this.put(a);
  }
  give(a: Float32Array) {
    this.liveBytes -= this.put(a).length * 4;
  }
  /**
   * `a` with a buffer of its own length: a view of a longer buffer is copied into a new one, and the
   * longer buffer goes back to the free lists (a run's output that came as a view through Identity,
   * Reshape or an in-place Concat: the caller's result would have kept all of it alive).
   */
  own(a: Float32Array): Float32Array {
    const base = bases.get(a);
    if (!base) return a;
    const copy = allocArray("float32", a.length, "model output", { overwritten: true }) as Float32Array;
    copy.set(a);
    this.give(a);
    return copy;
  }
  /** Empties the pool and returns the buffers it held. */
  drain(): Float32Array[] {
    const all = [...this.free.values()].flat();
    this.free.clear();
    return all;
  }
}
