/**
 * Convolution gradients on the active backend (native: multithreaded kernels): dx as the
 * transposed operation, dw as a correlation of dy with x, db as sums. The same results as
 * grad.ts's reference loops, at the speed training needs.
 */
import { activeBackend } from "../backends/index.js";
import type { Tensor } from "../types.js";
import type { ConvGeometry, LossResult } from "./grad.js";

function biasGrad(dy: Tensor): Tensor {
  const [N, C] = dy.shape as [number, number];
  const S = dy.data.length / (N * C);
  const db = new Float64Array(C),
    d = dy.data;
  for (let n = 0; n < N; n++)
    for (let c = 0; c < C; c++) {
      // four partial sums in locals: the loop is then add-bound, not store-bound
      let s0 = 0,
        s1 = 0,
        s2 = 0,
        s3 = 0,
        i = (n * C + c) * S;
      const e = i + S,
        e4 = e - 3;
      for (; i < e4; i += 4) {
        s0 += d[i]!;
        s1 += d[i + 1]!;
        s2 += d[i + 2]!;
        s3 += d[i + 3]!;
      }
      for (; i < e; i++) s0 += d[i]!;
      db[c]! += s0 + s1 + s2 + s3;
    }
  return { data: Float32Array.from(db), shape: [C] };
}

/** `alloc` gives dx's buffer (zeroed; default a fresh array): backprop's pool. */
export async function conv3dBackwardFast(
  x: Tensor,
  w: Tensor,
  dy: Tensor,
  g: ConvGeometry,
  alloc: (n: number) => Float32Array = (n) => new Float32Array(n),
): Promise<{ dx: Tensor; dw: Tensor; db: Tensor }> {
  const b = activeBackend();
  const [N, C, D, H, W] = x.shape as [number, number, number, number, number];
  const [Co, Cg, kd, kh, kw] = w.shape as [number, number, number, number, number];
  const [, , Do, Ho, Wo] = dy.shape as [number, number, number, number, number];
  const groups = g.groups ?? 1,
    Cog = Co / groups;
  const dx = alloc(x.data.length);
  await b.convTranspose3d(
    dy.data,
    [N, Co, Do, Ho, Wo],
    w.data,
    [Cg, kd, kh, kw],
    null,
    g.stride,
    g.dilation,
    g.padding,
    groups,
    [D, H, W],
    dx,
  );
  const dw = new Float32Array(w.data.length);
  const vi = D * H * W,
    vo = Do * Ho * Wo,
    wg = Cog * Cg * kd * kh * kw;
  for (let n = 0; n < N; n++)
    for (let gi = 0; gi < groups; gi++) {
      await b.convWeightGrad(
        dy.data.subarray((n * Co + gi * Cog) * vo, (n * Co + (gi + 1) * Cog) * vo),
        [Cog, Do, Ho, Wo],
        x.data.subarray((n * C + gi * Cg) * vi, (n * C + (gi + 1) * Cg) * vi),
        [Cg, D, H, W],
        [kd, kh, kw],
        g.stride,
        g.padding,
        g.dilation,
        dw.subarray(gi * wg, (gi + 1) * wg),
      );
    }
  return { dx: { data: dx, shape: [...x.shape] }, dw: { data: dw, shape: [...w.shape] }, db: biasGrad(dy) };
}

export async function convTranspose3dBackwardFast(
  x: Tensor,
  w: Tensor,
  dy: Tensor,
  g: ConvGeometry,
  alloc: (n: number) => Float32Array = (n) => new Float32Array(n),
): Promise<{ dx: Tensor; dw: Tensor; db: Tensor }> {
  const b = activeBackend();
  const [N, C, D, H, W] = x.shape as [number, number, number, number, number];
  const [, Cog, kd, kh, kw] = w.shape as [number, number, number, number, number];
  const [, Co, Do, Ho, Wo] = dy.shape as [number, number, number, number, number];
  const groups = g.groups ?? 1,
    Cg = C / groups;
  const dx = alloc(x.data.length);
  await b.conv3d(dy.data, [N, Co, Do, Ho, Wo], w.data, [C, kd, kh, kw], null, g.stride, g.dilation, g.padding, groups, [D, H, W], 0, 0, dx);
  const dw = new Float32Array(w.data.length);
  const vi = D * H * W,
    vo = Do * Ho * Wo,
    wg = Cg * Cog * kd * kh * kw;
  for (let n = 0; n < N; n++)
    for (let gi = 0; gi < groups; gi++) {
      await b.convWeightGrad(
        x.data.subarray((n * C + gi * Cg) * vi, (n * C + (gi + 1) * Cg) * vi),
        [Cg, D, H, W],
        dy.data.subarray((n * Co + gi * Cog) * vo, (n * Co + (gi + 1) * Cog) * vo),
        [Cog, Do, Ho, Wo],
        [kd, kh, kw],
        g.stride,
        g.padding,
        g.dilation,
        dw.subarray(gi * wg, (gi + 1) * wg),
      );
    }
  return { dx: { data: dx, shape: [...x.shape] }, dw: { data: dw, shape: [...w.shape] }, db: biasGrad(dy) };
}

/**
 * nnU-Net's loss (cross-entropy + soft Dice, grad.ts's `dcAndCeLoss`, which PyTorch's fixture
 * checks) in two passes over the logits instead of six: the first takes the softmax (one exp per
 * value, kept in the gradient's buffer), the cross-entropy and the Dice sums; the second writes
 * the gradient. Dice's gradient with respect to p is one constant per (group, class) where the
 * target is that class and another where it is not, so the pass through the softmax needs no
 * per-voxel array of it. Sums are in double; the result equals the reference to float rounding.
 */
export function dcAndCeLossFast(
  logits: Tensor,
  target: ArrayLike<number>,
  smooth = 1e-5,
  batchDice = false,
  out?: Float32Array,
): LossResult {
  const [N, C] = logits.shape as [number, number];
  const S = logits.data.length / (N * C);
  // the sums are indexed by the target: a value past the classes wrote into another sample's sums
  if (target.length !== N * S)
    throw new RangeError(`target has ${target.length} values but the logits [${logits.shape.join(", ")}] have ${N * S} voxels`);
  for (let i = 0; i < target.length; i++) {
    const t = target[i]!;
    if (!(Number.isInteger(t) && t >= 0 && t < C)) throw new RangeError(`target holds ${t} at ${i}; the logits have classes 0–${C - 1}`);
  }
  const z = logits.data;
  const p = out && out.length === z.length ? out : new Float32Array(z.length); // every element written
  const G = batchDice ? 1 : N;
  const tp = new Float64Array(G * C),
    P = new Float64Array(G * C),
    Y = new Float64Array(G * C);
  let ce = 0;
  for (let n = 0; n < N; n++) {
    const base = n * C * S,
      gc = (batchDice ? 0 : n) * C;
    for (let i = 0; i < S; i++) {
      let m = -Infinity;
      for (let c = 0, k = base + i; c < C; c++, k += S) if (z[k]! > m) m = z[k]!;
      let s = 0;
      for (let c = 0, k = base + i; c < C; c++, k += S) s += p[k] = Math.exp(z[k]! - m);
      const r = 1 / s;
      const t = target[n * S + i]!;
      for (let c = 0, k = base + i; c < C; c++, k += S) P[gc + c]! += p[k] = p[k]! * r;
      // log p_t from the logits (no underflow to log 0)
      ce -= z[base + t * S + i]! - m - Math.log(s);
      tp[gc + t]! += p[base + t * S + i]!;
      Y[gc + t]!++;
    }
  }
  ce /= N * S;
  // per (group, class ≥ 1): d(−mean Dice)/dp where the target is the class (alpha) and where not (beta)
  const K = G * (C - 1);
  const alpha = new Float64Array(G * C),
    beta = new Float64Array(G * C);
  let dcSum = 0;
  for (let g = 0; g < G; g++)
    for (let c = 1; c < C; c++) {
      const j = g * C + c;
      const den = Math.max(P[j]! + Y[j]! + smooth, 1e-8),
        num = 2 * tp[j]! + smooth;
      dcSum += num / den;
      alpha[j] = -(2 * den - num) / (den * den) / K;
      beta[j] = num / (den * den) / K;
    }
  const inv = 1 / (N * S);
  for (let n = 0; n < N; n++) {
    const base = n * C * S,
      gc = (batchDice ? 0 : n) * C;
    for (let i = 0; i < S; i++) {
      const t = target[n * S + i]!;
      // dot = Σ_c p_c·g_c, g_c = beta (c ≠ t), alpha (c = t), 0 for the background
      let dot = 0;
      for (let c = 1, k = base + S + i; c < C; c++, k += S) dot += p[k]! * (c === t ? alpha[gc + c]! : beta[gc + c]!);
      for (let c = 0, k = base + i; c < C; c++, k += S) {
        const pk = p[k]!;
        const g = c === 0 ? 0 : c === t ? alpha[gc + c]! : beta[gc + c]!;
        p[k] = pk * (g - dot) + (pk - (c === t ? 1 : 0)) * inv;
      }
    }
  }
  return { ce, diceLoss: -dcSum / K, loss: ce - dcSum / K, dlogits: { data: p, shape: [...logits.shape] } };
}
