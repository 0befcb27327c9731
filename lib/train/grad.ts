/**
 * Backward passes of the ops a 3-D U-Net trains with (TypeScript reference; float64 accumulation),
 * and nnU-Net v2's loss (cross-entropy + soft Dice, shared/spec/training.md) with its gradient.
 * Checked against PyTorch autograd in shared/fixtures/grad; the references the fast paths
 * (fastgrad.ts, the backends' kernels) are tested against, and not part of the public API.
 */
import type { Tensor } from "../types.js";

type T3 = [number, number, number];

const zerosLike = (t: Tensor): Tensor => ({ data: new Float32Array(t.data.length), shape: [...t.shape] });

export interface ConvGeometry {
  stride: T3;
  /** Leading padding per axis (the convolution's output extent is the caller's dy). */
  padding: T3;
  dilation: T3;
  groups?: number;
}

/** Gradients of y = conv3d(x, w) + b: dx, dw, db from dy. */
export function conv3dBackward(x: Tensor, w: Tensor, dy: Tensor, g: ConvGeometry): { dx: Tensor; dw: Tensor; db: Tensor } {
  const [N, C, D, H, W] = x.shape as [number, number, number, number, number];
  const [Co, Cg, kd, kh, kw] = w.shape as [number, number, number, number, number];
  const [, , Do, Ho, Wo] = dy.shape as [number, number, number, number, number];
  const groups = g.groups ?? 1,
    Cog = Co / groups;
  const dx = zerosLike(x),
    dw = new Float64Array(w.data.length),
    db = new Float64Array(Co);
  const dxa = new Float64Array(x.data.length);
  for (let n = 0; n < N; n++)
    for (let co = 0; co < Co; co++) {
      const gi = Math.floor(co / Cog);
      const yb = (n * Co + co) * Do * Ho * Wo;
      for (let i = 0; i < Do * Ho * Wo; i++) db[co]! += dy.data[yb + i]!;
      for (let ci = 0; ci < Cg; ci++) {
        const xb = (n * C + gi * Cg + ci) * D * H * W;
        for (let a = 0; a < kd; a++)
          for (let b = 0; b < kh; b++)
            for (let c = 0; c < kw; c++) {
              const wi = (((co * Cg + ci) * kd + a) * kh + b) * kw + c;
              const wv = w.data[wi]!;
              let acc = 0;
              for (let od = 0; od < Do; od++) {
                const id = od * g.stride[0] - g.padding[0] + a * g.dilation[0];
                if (id < 0 || id >= D) continue;
                for (let oh = 0; oh < Ho; oh++) {
                  const ih = oh * g.stride[1] - g.padding[1] + b * g.dilation[1];
                  if (ih < 0 || ih >= H) continue;
                  for (let ow = 0; ow < Wo; ow++) {
                    const iw = ow * g.stride[2] - g.padding[2] + c * g.dilation[2];
                    if (iw < 0 || iw >= W) continue;
                    const gy = dy.data[yb + (od * Ho + oh) * Wo + ow]!;
                    const xi = xb + (id * H + ih) * W + iw;
                    acc += gy * x.data[xi]!;
                    dxa[xi]! += gy * wv;
                  }
                }
              }
              dw[wi]! += acc;
            }
      }
    }
  dx.data.set(dxa);
  return { dx, dw: { data: Float32Array.from(dw), shape: [...w.shape] }, db: { data: Float32Array.from(db), shape: [Co] } };
}

/** Gradients of y = convTranspose3d(x, w) + b (w [C, Co/groups, kd, kh, kw]). */
export function convTranspose3dBackward(x: Tensor, w: Tensor, dy: Tensor, g: ConvGeometry): { dx: Tensor; dw: Tensor; db: Tensor } {
  const [N, C, D, H, W] = x.shape as [number, number, number, number, number];
  const [, Cog, kd, kh, kw] = w.shape as [number, number, number, number, number];
  const [, Co, Do, Ho, Wo] = dy.shape as [number, number, number, number, number];
  const groups = g.groups ?? 1,
    Cg = C / groups;
  const dxa = new Float64Array(x.data.length),
    dw = new Float64Array(w.data.length),
    db = new Float64Array(Co);
  for (let n = 0; n < N; n++)
    for (let co = 0; co < Co; co++) for (let i = 0, yb = (n * Co + co) * Do * Ho * Wo; i < Do * Ho * Wo; i++) db[co]! += dy.data[yb + i]!;
  for (let n = 0; n < N; n++)
    for (let ci = 0; ci < C; ci++) {
      const gi = Math.floor(ci / Cg);
      const xb = (n * C + ci) * D * H * W;
      for (let co = 0; co < Cog; co++) {
        const yb = (n * Co + gi * Cog + co) * Do * Ho * Wo;
        for (let a = 0; a < kd; a++)
          for (let b = 0; b < kh; b++)
            for (let c = 0; c < kw; c++) {
              const wi = (((ci * Cog + co) * kd + a) * kh + b) * kw + c;
              const wv = w.data[wi]!;
              let acc = 0;
              for (let id = 0; id < D; id++) {
                const od = id * g.stride[0] - g.padding[0] + a * g.dilation[0];
                if (od < 0 || od >= Do) continue;
                for (let ih = 0; ih < H; ih++) {
                  const oh = ih * g.stride[1] - g.padding[1] + b * g.dilation[1];
                  if (oh < 0 || oh >= Ho) continue;
                  for (let iw = 0; iw < W; iw++) {
                    const ow = iw * g.stride[2] - g.padding[2] + c * g.dilation[2];
                    if (ow < 0 || ow >= Wo) continue;
                    const gy = dy.data[yb + (od * Ho + oh) * Wo + ow]!;
                    const xi = xb + (id * H + ih) * W + iw;
                    acc += gy * x.data[xi]!;
                    dxa[xi]! += gy * wv;
                  }
                }
              }
              dw[wi]! += acc;
            }
      }
    }
  return {
    dx: { data: Float32Array.from(dxa), shape: [...x.shape] },
    dw: { data: Float32Array.from(dw), shape: [...w.shape] },
    db: { data: Float32Array.from(db), shape: [Co] },
  };
}

/** Gradients of affine instance normalisation (biased variance); sums in float64, three passes per channel. */
export function instanceNormBackward(x: Tensor, gamma: Tensor, dy: Tensor, eps = 1e-5): { dx: Tensor; dgamma: Tensor; dbeta: Tensor } {
  const [N, C] = x.shape as [number, number];
  const M = x.data.length / (N * C);
  const dx = zerosLike(x),
    dg = new Float64Array(C),
    dbt = new Float64Array(C);
  const xd = x.data,
    gd = dy.data,
    out = dx.data;
  for (let n = 0; n < N; n++)
    for (let c = 0; c < C; c++) {
      const o = (n * C + c) * M,
        e = o + M;
      let s = 0;
      for (let i = o; i < e; i++) s += xd[i]!;
      const mean = s / M;
      let v = 0,
        sdy = 0,
        sdyx = 0;
      for (let i = o; i < e; i++) {
        const xc = xd[i]! - mean,
          d = gd[i]!;
        v += xc * xc;
        sdy += d;
        sdyx += d * xc;
      }
      const inv = 1 / Math.sqrt(v / M + eps);
      sdyx *= inv; // Σ dy · x̂
      dbt[c]! += sdy;
      dg[c]! += sdyx;
      const k = gamma.data[c]! * inv,
        a = sdy / M,
        b = (sdyx * inv) / M;
      for (let i = o; i < e; i++) out[i] = k * (gd[i]! - a - (xd[i]! - mean) * b);
    }
  return { dx, dgamma: { data: Float32Array.from(dg), shape: [C] }, dbeta: { data: Float32Array.from(dbt), shape: [C] } };
}

/** dx of LeakyReLU (slope α where x ≤ 0, as PyTorch); `out` may be dy itself. */
export function leakyReluBackward(x: Tensor, dy: Tensor, alpha = 0.01, out?: Float32Array): Tensor {
  const dx = out ?? new Float32Array(x.data.length);
  const xd = x.data,
    gd = dy.data;
  for (let i = 0; i < xd.length; i++) dx[i] = xd[i]! > 0 ? gd[i]! : gd[i]! * alpha;
  return { data: dx, shape: [...x.shape] };
}

export interface LossResult {
  ce: number;
  diceLoss: number;
  loss: number;
  dlogits: Tensor;
}

/**
 * nnU-Net v2's DC_and_CE_loss (weights 1, 1): mean cross-entropy of softmax(z) against t, plus
 * −mean over samples and foreground classes of (2·tp + 1e-5) / max(Σp + Σy + 1e-5, 1e-8).
 * batchDice: tp, Σp and Σy pooled over the batch (nnU-Net's batch_dice), mean over classes.
 */
export function dcAndCeLoss(logits: Tensor, target: ArrayLike<number>, smooth = 1e-5, batchDice = false): LossResult {
  const [N, C] = logits.shape as [number, number];
  const S = logits.data.length / (N * C);
  const p = softmax(logits);
  // the cross-entropy, and its gradient (p − onehot) / (N·S) added after the Dice term's
  let ce = 0;
  for (let n = 0; n < N; n++)
    for (let i = 0; i < S; i++) ce -= Math.log(Math.max(p[(n * C + target[n * S + i]!) * S + i]!, Number.MIN_VALUE));
  ce /= N * S;
  // soft Dice per foreground class over each group of samples — each sample alone, or (nnU-Net's
  // batch Dice) the whole batch pooled — and its gradient with respect to p
  const groups = batchDice ? [Array.from({ length: N }, (_, n) => n)] : Array.from({ length: N }, (_, n) => [n]);
  const gp = new Float64Array(p.length);
  let dcSum = 0;
  const K = groups.length * (C - 1);
  for (const g of groups)
    for (let c = 1; c < C; c++) {
      let tp = 0,
        P = 0,
        Y = 0;
      for (const n of g) {
        const o = (n * C + c) * S;
        for (let i = 0; i < S; i++) {
          const y = target[n * S + i] === c ? 1 : 0;
          tp += p[o + i]! * y;
          P += p[o + i]!;
          Y += y;
        }
      }
      const den = Math.max(P + Y + smooth, 1e-8);
      const num = 2 * tp + smooth;
      dcSum += num / den;
      for (const n of g) {
        const o = (n * C + c) * S;
        for (let i = 0; i < S; i++) gp[o + i] = -((2 * (target[n * S + i] === c ? 1 : 0) * den - num) / (den * den)) / K;
      }
    }
  const dz = throughSoftmax(p, gp, logits.shape);
  for (let n = 0; n < N; n++)
    for (let i = 0; i < S; i++) {
      const t = target[n * S + i]!;
      for (let c = 0; c < C; c++) {
        const k = (n * C + c) * S + i;
        dz.data[k] = dz.data[k]! + (p[k]! - (c === t ? 1 : 0)) / (N * S);
      }
    }
  return { ce, diceLoss: -dcSum / K, loss: ce - dcSum / K, dlogits: dz };
}

/** softmax over axis 1 of [N, C, …], in float64. */
export function softmax(z: Tensor): Float64Array {
  const [N, C] = z.shape as [number, number];
  const S = z.data.length / (N * C);
  const p = new Float64Array(z.data.length);
  const zd = z.data;
  for (let n = 0; n < N; n++) {
    const base = n * C * S;
    for (let i = 0; i < S; i++) {
      let m = -Infinity;
      for (let c = 0, k = base + i; c < C; c++, k += S) m = Math.max(m, zd[k]!);
      let s = 0;
      for (let c = 0, k = base + i; c < C; c++, k += S) s += p[k] = Math.exp(zd[k]! - m);
      const r = 1 / s;
      for (let c = 0, k = base + i; c < C; c++, k += S) p[k]! *= r;
    }
  }
  return p;
}

/** Back through the softmax: dz = p ⊙ (g − Σ_c p·g), per voxel. */
export function throughSoftmax(p: Float64Array, g: Float64Array, shape: number[]): Tensor {
  const [N, C] = shape as [number, number];
  const S = p.length / (N * C);
  const dz = new Float32Array(p.length);
  for (let n = 0; n < N; n++)
    for (let i = 0; i < S; i++) {
      let dot = 0;
      for (let c = 0; c < C; c++) dot += p[(n * C + c) * S + i]! * g[(n * C + c) * S + i]!;
      for (let c = 0; c < C; c++) {
        const k = (n * C + c) * S + i;
        dz[k] = p[k]! * (g[k]! - dot);
      }
    }
  return { data: dz, shape: [...shape] };
}
