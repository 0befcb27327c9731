/**
 * Convolution gradients on the active backend (native: multithreaded kernels): dx as the
 * transposed operation, dw as a correlation of dy with x, db as sums. The same results as
 * grad.ts's reference loops, at the speed training needs.
 */
import { activeBackend } from "../backends/index.js";
import type { Tensor } from "../types.js";
import type { ConvGeometry } from "./grad.js";

function biasGrad(dy: Tensor): Tensor {
  const [N, C] = dy.shape as [number, number];
  const S = dy.data.length / (N * C);
  const db = new Float64Array(C);
  for (let n = 0; n < N; n++) for (let c = 0; c < C; c++) for (let i = (n * C + c) * S, e = i + S; i < e; i++) db[c]! += dy.data[i]!;
  return { data: Float32Array.from(db), shape: [C] };
}

export async function conv3dBackwardFast(x: Tensor, w: Tensor, dy: Tensor, g: ConvGeometry): Promise<{ dx: Tensor; dw: Tensor; db: Tensor }> {
  const b = activeBackend();
  const [N, C, D, H, W] = x.shape as [number, number, number, number, number];
  const [Co, Cg, kd, kh, kw] = w.shape as [number, number, number, number, number];
  const [, , Do, Ho, Wo] = dy.shape as [number, number, number, number, number];
  const groups = g.groups ?? 1, Cog = Co / groups;
  const dx = new Float32Array(x.data.length);
  await b.convTranspose3d(dy.data, [N, Co, Do, Ho, Wo], w.data, [Cg, kd, kh, kw], null, g.stride, g.dilation, g.padding, groups, [D, H, W], dx);
  const dw = new Float32Array(w.data.length);
  const vi = D * H * W, vo = Do * Ho * Wo, wg = Cog * Cg * kd * kh * kw;
  for (let n = 0; n < N; n++)
    for (let gi = 0; gi < groups; gi++) {
      await b.convWeightGrad(
        dy.data.subarray((n * Co + gi * Cog) * vo, (n * Co + (gi + 1) * Cog) * vo), [Cog, Do, Ho, Wo],
        x.data.subarray((n * C + gi * Cg) * vi, (n * C + (gi + 1) * Cg) * vi), [Cg, D, H, W],
        [kd, kh, kw], g.stride, g.padding, g.dilation, dw.subarray(gi * wg, (gi + 1) * wg),
      );
    }
  return { dx: { data: dx, shape: [...x.shape] }, dw: { data: dw, shape: [...w.shape] }, db: biasGrad(dy) };
}

export async function convTranspose3dBackwardFast(x: Tensor, w: Tensor, dy: Tensor, g: ConvGeometry): Promise<{ dx: Tensor; dw: Tensor; db: Tensor }> {
  const b = activeBackend();
  const [N, C, D, H, W] = x.shape as [number, number, number, number, number];
  const [, Cog, kd, kh, kw] = w.shape as [number, number, number, number, number];
  const [, Co, Do, Ho, Wo] = dy.shape as [number, number, number, number, number];
  const groups = g.groups ?? 1, Cg = C / groups;
  const dx = new Float32Array(x.data.length);
  await b.conv3d(dy.data, [N, Co, Do, Ho, Wo], w.data, [C, kd, kh, kw], null, g.stride, g.dilation, g.padding, groups, [D, H, W], 0, 0, dx);
  const dw = new Float32Array(w.data.length);
  const vi = D * H * W, vo = Do * Ho * Wo, wg = Cg * Cog * kd * kh * kw;
  for (let n = 0; n < N; n++)
    for (let gi = 0; gi < groups; gi++) {
      await b.convWeightGrad(
        x.data.subarray((n * C + gi * Cg) * vi, (n * C + (gi + 1) * Cg) * vi), [Cg, D, H, W],
        dy.data.subarray((n * Co + gi * Cog) * vo, (n * Co + (gi + 1) * Cog) * vo), [Cog, Do, Ho, Wo],
        [kd, kh, kw], g.stride, g.padding, g.dilation, dw.subarray(gi * wg, (gi + 1) * wg),
      );
    }
  return { dx: { data: dx, shape: [...x.shape] }, dw: { data: dw, shape: [...w.shape] }, db: biasGrad(dy) };
}
