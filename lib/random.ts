/**
 * The package's seeded random generator, shared by phantoms, training and the benches (its own
 * module so that training does not import the phantom generator for it).
 *
 * Hand-written rather than a dependency: mulberry32 is eight lines, and the committed demo model,
 * phantoms and test expectations depend on its exact sequence, which a library could change.
 */

/** mulberry32: a small, good, seeded generator of floats in [0, 1). */
export function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
