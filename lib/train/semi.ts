/**
 * The semi-supervised terms of shared/spec/training.md, for volumes with slice-level labels only:
 * a multiple-instance loss (per slice and foreground class, the largest probability against the
 * slice label, binary cross-entropy) and a mean-teacher consistency term (mean squared difference
 * of the student's and the teacher's softmax), with their gradients with respect to the logits,
 * and the teacher's exponential moving average.
 */
import type { Tensor } from "../types.js";
import { softmax, throughSoftmax } from "./grad.js";

/**
 * Multiple-instance loss. `present[n][z][c − 1]`: class c is on axial slice z of sample n (the
 * RSNA-style labels; null where it is not known for this patch, e.g. a positive slice label for a
 * patch that covers only part of the slice). q = max over the slice of p[c]; loss = mean BCE(q,
 * present) over samples, slices and foreground classes with a known label. The gradient flows to
 * each slice's arg-max voxel.
 */
export function milLoss(logits: Tensor, present: (boolean | null)[][][], eps = 1e-7): { loss: number; dlogits: Tensor } {
  const [N, C, D, H, W] = logits.shape as [number, number, number, number, number];
  const plane = H * W,
    S = D * plane;
  const p = softmax(logits);
  const g = new Float64Array(p.length);
  let M = 0;
  const label = (n: number, z: number, c: number) => {
    const v = present[n]?.[z]?.[c - 1];
    return v === undefined ? false : v; // null: unknown, left out
  };
  for (let n = 0; n < N; n++) for (let z = 0; z < D; z++) for (let c = 1; c < C; c++) if (label(n, z, c) !== null) M++;
  let loss = 0;
  if (M === 0) return { loss: 0, dlogits: { data: new Float32Array(logits.data.length), shape: logits.shape } };
  for (let n = 0; n < N; n++)
    for (let z = 0; z < D; z++)
      for (let c = 1; c < C; c++) {
        const known = label(n, z, c);
        if (known === null) continue;
        const base = (n * C + c) * S + z * plane;
        let q = -1,
          at = base;
        for (let i = 0; i < plane; i++)
          if (p[base + i]! > q) {
            q = p[base + i]!;
            at = base + i;
          }
        const s = known ? 1 : 0;
        const qc = Math.min(1 - eps, Math.max(eps, q));
        loss -= s * Math.log(qc) + (1 - s) * Math.log(1 - qc);
        if (q > eps && q < 1 - eps) g[at]! += (-s / qc + (1 - s) / (1 - qc)) / M;
      }
  return { loss: loss / M, dlogits: throughSoftmax(p, g, logits.shape) };
}

/** Mean-teacher consistency: mean over all elements of (softmax(student) − softmax(teacher))²; gradient for the student. */
export function consistencyLoss(student: Tensor, teacher: Tensor): { loss: number; dlogits: Tensor } {
  const ps = softmax(student),
    pt = softmax(teacher);
  const g = new Float64Array(ps.length);
  let loss = 0;
  for (let i = 0; i < ps.length; i++) {
    const d = ps[i]! - pt[i]!;
    loss += d * d;
    g[i] = (2 * d) / ps.length;
  }
  return { loss: loss / ps.length, dlogits: throughSoftmax(ps, g, student.shape) };
}

/** The teacher's weights follow the student's: θ_t ← α·θ_t + (1 − α)·θ_s. */
export function emaUpdate(teacher: Float32Array, student: Float32Array, alpha = 0.99): void {
  for (let i = 0; i < teacher.length; i++) teacher[i] = alpha * teacher[i]! + (1 - alpha) * student[i]!;
}

/** The ramp-up of a consistency weight (sigmoid-shaped, as in the mean-teacher paper): w·exp(−5(1 − t)²). */
export function rampWeight(step: number, rampSteps: number, weight: number): number {
  const t = Math.min(1, step / Math.max(1, rampSteps));
  return weight * Math.exp(-5 * (1 - t) ** 2);
}
