/** The fuzzers' deterministic randomness and case counts (test/fuzz-*.test.ts). */

/** BHSD_FUZZ_CASES (a positive integer) or the suite's default. */
export function CASES(suiteDefault: number): number {
  const env = process.env.BHSD_FUZZ_CASES;
  if (env === undefined || env === "") return suiteDefault;
  const n = Number(env);
  if (!Number.isInteger(n) || n < 1) throw new Error(`BHSD_FUZZ_CASES must be a positive integer, got ${JSON.stringify(env)}`);
  return n;
}

/** BHSD_FUZZ_SEED (an integer) or 1. */
export const SEED = (() => {
  const env = process.env.BHSD_FUZZ_SEED;
  if (env === undefined || env === "") return 1;
  const n = Number(env);
  if (!Number.isInteger(n)) throw new Error(`BHSD_FUZZ_SEED must be an integer, got ${JSON.stringify(env)}`);
  return n;
})();

export interface Rng {
  /** [0, 1) */
  next(): number;
  /** an integer in [0, n) */
  int(n: number): number;
  bool(): boolean;
  pick<T>(xs: readonly T[]): T;
}

/** mulberry32: small, fast, and the same sequence everywhere. */
export function rngFrom(seed: number): Rng {
  let a = seed >>> 0;
  const next = () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  const int = (n: number) => Math.floor(next() * n);
  return { next, int, bool: () => next() < 0.5, pick: (xs) => xs[int(xs.length)]! };
}

/** Case i of a run with this seed, independent of every other case (so one case can be rerun alone). */
export function caseRng(seed: number, i: number): Rng {
  return rngFrom(Math.imul(seed ^ 0x9e3779b9, 0x85ebca6b) ^ Math.imul(i + 1, 0xc2b2ae35));
}
