/**
 * Tensor operations in TypeScript: the reference the native and CUDA backends are held to, and
 * the fallback where no binary loads. Inner loops run over contiguous memory or precomputed
 * offsets, allocate nothing per voxel, and yield to the event loop between blocks of work.
 */
import { erf } from "./erf.js";
import { Yielder } from "./yield.js";
import type { TensorBackend, Triple } from "./tensor-types.js";

const act1 = (v: number, act: number, alpha: number) => (act === 1 ? (v > 0 ? v : 0) : act === 2 ? (v > 0 ? v : v * alpha) : v);

const CB = 4; // output channels per register block in conv3d
const PB = 2; // output voxels (along W) per register block: 8 accumulators stay in registers

/**
 * One output row of one block of CB channels: a plain (not async) function, so that V8 optimises
 * the loop with its accumulators in registers.
 */
function convRow(
  xp: Float32Array,
  off: Int32Array,
  wq: Float32Array,
  wo: number,
  b0: Float64Array,
  bo: number,
  out: Float32Array,
  rowIn: number,
  rowOut: number,
  Wo: number,
  sw: number,
  K: number,
  nb: number,
  vout: number,
  act: number,
  alpha: number,
): void {
  const s1 = sw;
  let ow = 0;
  // 2 voxels × 4 channels in registers (measured fastest in V8: larger blocks spill)
  for (; ow + PB <= Wo; ow += PB) {
    const base = rowIn + ow * sw;
    let a00 = b0[bo]!,
      a01 = a00,
      a10 = b0[bo + 1]!,
      a11 = a10,
      a20 = b0[bo + 2]!,
      a21 = a20,
      a30 = b0[bo + 3]!,
      a31 = a30;
    for (let k = 0, q = wo; k < K; k++, q += CB) {
      const i = base + off[k]!;
      const x0 = xp[i]!,
        x1 = xp[i + s1]!;
      let wv = wq[q]!;
      a00 += wv * x0;
      a01 += wv * x1;
      wv = wq[q + 1]!;
      a10 += wv * x0;
      a11 += wv * x1;
      wv = wq[q + 2]!;
      a20 += wv * x0;
      a21 += wv * x1;
      wv = wq[q + 3]!;
      a30 += wv * x0;
      a31 += wv * x1;
    }
    const o = rowOut + ow;
    out[o] = act1(a00, act, alpha);
    out[o + 1] = act1(a01, act, alpha);
    if (nb > 1) {
      out[o + vout] = act1(a10, act, alpha);
      out[o + vout + 1] = act1(a11, act, alpha);
    }
    if (nb > 2) {
      out[o + 2 * vout] = act1(a20, act, alpha);
      out[o + 2 * vout + 1] = act1(a21, act, alpha);
    }
    if (nb > 3) {
      out[o + 3 * vout] = act1(a30, act, alpha);
      out[o + 3 * vout + 1] = act1(a31, act, alpha);
    }
  }
  for (; ow < Wo; ow++) {
    const base = rowIn + ow * sw;
    let a0 = b0[bo]!,
      a1 = b0[bo + 1]!,
      a2 = b0[bo + 2]!,
      a3 = b0[bo + 3]!;
    for (let k = 0, q = wo; k < K; k++, q += CB) {
      const v = xp[base + off[k]!]!;
      a0 += wq[q]! * v;
      a1 += wq[q + 1]! * v;
      a2 += wq[q + 2]! * v;
      a3 += wq[q + 3]! * v;
    }
    const o = rowOut + ow;
    out[o] = act1(a0, act, alpha);
    if (nb > 1) out[o + vout] = act1(a1, act, alpha);
    if (nb > 2) out[o + 2 * vout] = act1(a2, act, alpha);
    if (nb > 3) out[o + 3 * vout] = act1(a3, act, alpha);
  }
}

export const tsTensor: TensorBackend = {
  async conv3d(x, inShape, w, wShape, bias, strides, dilations, pads, groups, outSpatial, act, alpha, out) {
    const [N, C, D, H, W] = inShape;
    const [Co, kd, kh, kw] = wShape;
    const [Do, Ho, Wo] = outSpatial;
    const [sd, sh, sw] = strides,
      [dd, dh, dw] = dilations,
      [pd, ph, pw] = pads;
    const Cg = C / groups,
      Cog = Co / groups,
      ksp = kd * kh * kw,
      K = Cg * ksp;
    // zero-padded copy of one group's input, big enough for every window
    const Dp = Math.max(D + pd, (Do - 1) * sd + (kd - 1) * dd + 1);
    const Hp = Math.max(H + ph, (Ho - 1) * sh + (kh - 1) * dh + 1);
    const Wp = Math.max(W + pw, (Wo - 1) * sw + (kw - 1) * dw + 1);
    const xp = new Float32Array(Cg * Dp * Hp * Wp);
    const off = new Int32Array(K);
    for (let ci = 0, k = 0; ci < Cg; ci++)
      for (let a = 0; a < kd; a++)
        for (let b = 0; b < kh; b++) for (let c = 0; c < kw; c++, k++) off[k] = ((ci * Dp + a * dd) * Hp + b * dh) * Wp + c * dw;
    const y = new Yielder();
    const vout = Do * Ho * Wo;
    for (let n = 0; n < N; n++) {
      for (let g = 0; g < groups; g++) {
        xp.fill(0);
        for (let ci = 0; ci < Cg; ci++)
          for (let z = 0; z < D; z++)
            for (let r = 0; r < H; r++) {
              const src = ((n * C + g * Cg + ci) * D + z) * H * W + r * W;
              xp.set(x.subarray(src, src + W), ((ci * Dp + z + pd) * Hp + r + ph) * Wp + pw);
            }
        // weights of every block of CB channels, packed once: [block][k][CB]
        const blocks = Math.ceil(Cog / CB);
        const wq = new Float32Array(blocks * K * CB);
        const b0 = new Float64Array(blocks * CB);
        for (let j = 0; j < Cog; j++) {
          const blk = Math.floor(j / CB),
            lane = j % CB;
          for (let k = 0; k < K; k++) wq[(blk * K + k) * CB + lane] = w[(g * Cog + j) * K + k]!;
          b0[blk * CB + lane] = bias ? bias[g * Cog + j]! : 0;
        }
        const o0 = (n * Co + g * Cog) * vout;
        // row by row, every channel block: the input rows a row needs stay in cache across blocks
        for (let od = 0; od < Do; od++) {
          for (let oh = 0; oh < Ho; oh++) {
            for (let blk = 0; blk < blocks; blk++) {
              const nb = Math.min(CB, Cog - blk * CB);
              convRow(
                xp,
                off,
                wq,
                blk * K * CB,
                b0,
                blk * CB,
                out,
                (od * sd * Hp + oh * sh) * Wp,
                o0 + blk * CB * vout + (od * Ho + oh) * Wo,
                Wo,
                sw,
                K,
                nb,
                vout,
                act,
                alpha,
              );
            }
            await y.maybe();
          }
        }
      }
    }
  },

  async convTranspose3d(x, inShape, w, wShape, bias, strides, dilations, pads, groups, outSpatial, out) {
    const [N, C, D, H, W] = inShape;
    const [Cog, kd, kh, kw] = wShape;
    const [Do, Ho, Wo] = outSpatial;
    const Cg = C / groups,
      Co = Cog * groups,
      ksp = kd * kh * kw;
    const vout = Do * Ho * Wo;
    for (let n = 0; n < N; n++)
      for (let co = 0; co < Co; co++) out.fill(bias ? bias[co]! : 0, (n * Co + co) * vout, (n * Co + co + 1) * vout);
    const y = new Yielder();
    for (let n = 0; n < N; n++)
      for (let g = 0; g < groups; g++)
        for (let ci = 0; ci < Cg; ci++) {
          const xin = (n * C + g * Cg + ci) * D * H * W;
          for (let co = 0; co < Cog; co++) {
            const wb = ((g * Cg + ci) * Cog + co) * ksp;
            const ob = (n * Co + g * Cog + co) * vout;
            for (let a = 0; a < kd; a++)
              for (let b = 0; b < kh; b++)
                for (let c = 0; c < kw; c++) {
                  const wv = w[wb + (a * kh + b) * kw + c]!;
                  for (let id = 0; id < D; id++) {
                    const od = id * strides[0] - pads[0] + a * dilations[0];
                    if (od < 0 || od >= Do) continue;
                    for (let ih = 0; ih < H; ih++) {
                      const oh = ih * strides[1] - pads[1] + b * dilations[1];
                      if (oh < 0 || oh >= Ho) continue;
                      const src = xin + (id * H + ih) * W,
                        dst = ob + (od * Ho + oh) * Wo;
                      for (let iw = 0; iw < W; iw++) {
                        const ow = iw * strides[2] - pads[2] + c * dilations[2];
                        if (ow >= 0 && ow < Wo) out[dst + ow] += wv * x[src + iw]!;
                      }
                    }
                  }
                }
          }
          await y.maybe();
        }
  },

  async groupNorm(x, N, C, spatial, groups, scale, bias, eps, act, alpha, out) {
    const y = new Yielder();
    const cpg = C / groups,
      span = cpg * spatial;
    for (let ng = 0; ng < N * groups; ng++) {
      const o0 = ng * span;
      let sum = 0;
      for (let i = 0; i < span; i++) sum += x[o0 + i]!;
      const mean = sum / span;
      let ss = 0;
      for (let i = 0; i < span; i++) {
        const d = x[o0 + i]! - mean;
        ss += d * d;
      }
      const inv = 1 / Math.sqrt(ss / span + eps);
      for (let k = 0; k < cpg; k++) {
        const c = (ng % groups) * cpg + k,
          o = o0 + k * spatial;
        const sc = scale ? scale[c]! : 1;
        const a = Math.fround(inv * sc),
          b = Math.fround((bias ? bias[c]! : 0) - mean * inv * sc);
        for (let i = 0; i < spatial; i++) out[o + i] = act1(Math.fround(x[o + i]! * a) + b, act, alpha);
      }
      await y.maybe();
    }
  },

  async instanceNorm(x, N, C, spatial, scale, bias, eps, act, alpha, out) {
    const y = new Yielder();
    for (let nc = 0; nc < N * C; nc++) {
      const o = nc * spatial;
      let sum = 0;
      for (let i = 0; i < spatial; i++) sum += x[o + i]!;
      const mean = sum / spatial;
      let ss = 0;
      for (let i = 0; i < spatial; i++) {
        const d = x[o + i]! - mean;
        ss += d * d;
      }
      const inv = 1 / Math.sqrt(ss / spatial + eps);
      const c = nc % C;
      const sc = scale ? scale[c]! : 1;
      const a = Math.fround(inv * sc),
        b = Math.fround((bias ? bias[c]! : 0) - mean * inv * sc);
      for (let i = 0; i < spatial; i++) out[o + i] = act1(Math.fround(x[o + i]! * a) + b, act, alpha);
      await y.maybe();
    }
  },

  async batchNorm(x, N, C, spatial, scale, bias, mean, variance, eps, out) {
    for (let nc = 0; nc < N * C; nc++) {
      const c = nc % C;
      const inv = 1 / Math.sqrt(variance[c]! + eps);
      const a = scale[c]! * inv,
        b = bias[c]! - mean[c]! * scale[c]! * inv;
      for (let i = nc * spatial, e = i + spatial; i < e; i++) out[i] = x[i]! * a + b;
    }
  },

  async unary(x, N, C, spatial, op, alpha, slope, out) {
    const n = N * C * spatial;
    if (op === 0) for (let i = 0; i < n; i++) out[i] = x[i]! > 0 ? x[i]! : 0;
    else if (op === 1) for (let i = 0; i < n; i++) out[i] = x[i]! > 0 ? x[i]! : x[i]! * alpha;
    else if (op === 2) for (let i = 0; i < n; i++) out[i] = 1 / (1 + Math.exp(-x[i]!));
    else if (op === 4) for (let i = 0; i < n; i++) out[i] = 0.5 * x[i]! * (1 + erf(Math.fround(x[i]! / alpha)));
    else if (op === 5) {
      const k = Math.sqrt(2 / Math.PI);
      for (let i = 0; i < n; i++) out[i] = 0.5 * x[i]! * (1 + Math.tanh(k * (x[i]! + 0.044715 * x[i]! * x[i]! * x[i]!)));
    } else {
      for (let nc = 0; nc < N * C; nc++) {
        const s = slope!.length === 1 ? slope![0]! : slope![nc % C]!;
        for (let i = nc * spatial, e = i + spatial; i < e; i++) out[i] = x[i]! > 0 ? x[i]! : x[i]! * s;
      }
    }
  },

  async binary(a, b, shape, sa, sb, mul, out, act = 0, alpha = 0) {
    const inner = shape[5]!;
    const outer = shape.slice(0, 5).reduce((p, q) => p * q, 1);
    for (let o = 0; o < outer; o++) {
      let rem = o,
        oa = 0,
        ob = 0;
      for (let i = 4; i >= 0; i--) {
        const idx = rem % shape[i]!;
        rem = (rem - idx) / shape[i]!;
        oa += idx * sa[i]!;
        ob += idx * sb[i]!;
      }
      const ia = sa[5]!,
        ib = sb[5]!,
        q = o * inner;
      if (mul) for (let i = 0; i < inner; i++) out[q + i] = a[oa + i * ia]! * b[ob + i * ib]!;
      else for (let i = 0; i < inner; i++) out[q + i] = a[oa + i * ia]! + b[ob + i * ib]!;
      // as the unary ops: relu gives 0 for NaN, leaky keeps it
      if (act === 1) for (let i = q; i < q + inner; i++) out[i] = out[i]! > 0 ? out[i]! : 0;
      else if (act === 2) for (let i = q; i < q + inner; i++) out[i] = out[i]! > 0 ? out[i]! : out[i]! * alpha;
    }
  },

  async pool3d(x, NC, inS, outS, k, s, d, p, max, cip, out) {
    const [D, H, W] = inS,
      [Do, Ho, Wo] = outS;
    const y = new Yielder();
    for (let nc = 0; nc < NC; nc++) {
      const xb = nc * D * H * W;
      for (let od = 0; od < Do; od++) {
        for (let oh = 0; oh < Ho; oh++)
          for (let ow = 0; ow < Wo; ow++) {
            let acc = max ? -Infinity : 0,
              inside = 0;
            for (let a = 0; a < k[0]; a++) {
              const id = od * s[0] - p[0] + a * d[0];
              if (id < 0 || id >= D) continue;
              for (let b = 0; b < k[1]; b++) {
                const ih = oh * s[1] - p[1] + b * d[1];
                if (ih < 0 || ih >= H) continue;
                for (let c = 0; c < k[2]; c++) {
                  const iw = ow * s[2] - p[2] + c * d[2];
                  if (iw < 0 || iw >= W) continue;
                  const v = x[xb + (id * H + ih) * W + iw]!;
                  if (max)
                    acc = v > acc || v !== v ? v : acc; // NaN propagates, as PyTorch's max_pool3d
                  else acc += v;
                  inside++;
                }
              }
            }
            let r = acc;
            if (!max) {
              let denom = inside;
              if (cip) {
                denom = 1;
                const ext = [D, H, W],
                  o = [od, oh, ow];
                for (let ax = 0; ax < 3; ax++) {
                  const start = o[ax]! * s[ax]! - p[ax]!;
                  const end = Math.min(start + (k[ax]! - 1) * d[ax]! + 1, ext[ax]! + p[ax]!);
                  let cnt = 0;
                  for (let t = start; t < end; t += d[ax]!) cnt++;
                  denom *= cnt;
                }
              }
              r = denom > 0 ? acc / denom : 0;
            }
            out[((nc * Do + od) * Ho + oh) * Wo + ow] = r;
          }
        await y.maybe();
      }
    }
  },

  async resize3d(x, NC, inS, outS, scales, linear, cm, nm, out) {
    const coord = (i: number, inn: number, o: number, sc: number) => {
      switch (cm) {
        case 0:
          return (i + 0.5) / sc - 0.5;
        case 1:
          return o > 1 ? (i + 0.5) / sc - 0.5 : 0;
        case 2:
          return o > 1 ? (i * (inn - 1)) / (o - 1) : 0;
        default:
          return i / sc;
      }
    };
    const axes = [0, 1, 2].map((ax) => {
      const n = outS[ax]!,
        inn = inS[ax]!;
      const i0 = new Int32Array(n),
        i1 = new Int32Array(n),
        wt = new Float64Array(n);
      for (let i = 0; i < n; i++) {
        let c = coord(i, inn, n, scales[ax]!);
        if (linear) {
          c = Math.min(Math.max(c, 0), inn - 1);
          const f = Math.floor(c);
          i0[i] = f;
          i1[i] = Math.min(f + 1, inn - 1);
          wt[i] = c - f;
        } else {
          const frac = c - Math.floor(c);
          const r =
            nm === 0
              ? frac === 0.5
                ? Math.floor(c)
                : Math.round(c)
              : nm === 1
                ? frac === 0.5
                  ? Math.ceil(c)
                  : Math.round(c)
                : nm === 2
                  ? Math.floor(c)
                  : Math.ceil(c);
          i0[i] = Math.min(Math.max(r, 0), inn - 1);
        }
      }
      return { i0, i1, wt };
    });
    const [D, H, W] = inS,
      [Do, Ho, Wo] = outS;
    const [az, ay, ax] = axes as [(typeof axes)[0], (typeof axes)[0], (typeof axes)[0]];
    const y = new Yielder();
    for (let nc = 0; nc < NC; nc++) {
      const xb = nc * D * H * W;
      for (let od = 0; od < Do; od++) {
        for (let oh = 0; oh < Ho; oh++) {
          const ob = ((nc * Do + od) * Ho + oh) * Wo;
          for (let ow = 0; ow < Wo; ow++) {
            if (!linear) {
              out[ob + ow] = x[xb + (az.i0[od]! * H + ay.i0[oh]!) * W + ax.i0[ow]!]!;
              continue;
            }
            const wz = az.wt[od]!,
              wy = ay.wt[oh]!,
              wx = ax.wt[ow]!;
            const z0 = az.i0[od]!,
              z1 = az.i1[od]!,
              y0 = ay.i0[oh]!,
              y1 = ay.i1[oh]!,
              x0 = ax.i0[ow]!,
              x1 = ax.i1[ow]!;
            const at = (z: number, yy: number, xx: number) => x[xb + (z * H + yy) * W + xx]!;
            let v = 0;
            // the same terms, in the same order, as the native loop (weights 0 skipped)
            const ws = [
                [1 - wz, z0],
                [wz, z1],
              ] as const,
              hs = [
                [1 - wy, y0],
                [wy, y1],
              ] as const,
              xs = [
                [1 - wx, x0],
                [wx, x1],
              ] as const;
            for (const [wa, zz] of ws)
              for (const [wb, yy] of hs)
                for (const [wc, xx] of xs) {
                  const ww = wa * wb * wc;
                  if (ww !== 0) v += ww * at(zz, yy, xx);
                }
            out[ob + ow] = v;
          }
        }
        await y.maybe();
      }
    }
  },

  async softmax(x, N, C, spatial, out) {
    for (let n = 0; n < N; n++) {
      const b = n * C * spatial;
      for (let i = 0; i < spatial; i++) {
        let m = -Infinity;
        for (let c = 0; c < C; c++) m = Math.max(m, x[b + c * spatial + i]!);
        let sum = 0;
        for (let c = 0; c < C; c++) sum += Math.exp(x[b + c * spatial + i]! - m);
        for (let c = 0; c < C; c++) out[b + c * spatial + i] = Math.exp(x[b + c * spatial + i]! - m) / sum;
      }
    }
  },

  async argmax(x, N, C, spatial, out) {
    for (let n = 0; n < N; n++) {
      const b = n * C * spatial;
      for (let i = 0; i < spatial; i++) {
        let best = 0,
          bv = x[b + i]!;
        for (let c = 1; c < C; c++) {
          const v = x[b + c * spatial + i]!;
          if (v > bv) {
            bv = v;
            best = c;
          }
        }
        out[n * spatial + i] = best;
      }
    }
  },

  async convWeightGrad(A, as, B, bs, k, s, p, d, out) {
    const [Ca, Ad, Ah, Aw] = as,
      [Cb, Bd, Bh, Bw] = bs;
    const va = Ad * Ah * Aw,
      vb = Bd * Bh * Bw,
      ksp = k[0] * k[1] * k[2];
    const y = new Yielder();
    for (let ca = 0; ca < Ca; ca++) {
      for (let cb = 0; cb < Cb; cb++) {
        for (let a = 0; a < k[0]; a++)
          for (let b = 0; b < k[1]; b++)
            for (let c = 0; c < k[2]; c++) {
              let acc = 0;
              for (let z = 0; z < Ad; z++) {
                const zb = z * s[0] - p[0] + a * d[0];
                if (zb < 0 || zb >= Bd) continue;
                for (let yy = 0; yy < Ah; yy++) {
                  const yb = yy * s[1] - p[1] + b * d[1];
                  if (yb < 0 || yb >= Bh) continue;
                  const ra = ca * va + (z * Ah + yy) * Aw,
                    rb = cb * vb + (zb * Bh + yb) * Bw;
                  for (let w = 0; w < Aw; w++) {
                    const wb = w * s[2] - p[2] + c * d[2];
                    if (wb >= 0 && wb < Bw) acc += A[ra + w]! * B[rb + wb]!;
                  }
                }
              }
              out[(ca * Cb + cb) * ksp + (a * k[1] + b) * k[2] + c]! += acc;
            }
      }
      await y.maybe();
    }
  },

  async concat(xs, lens, outer, inner, out) {
    const total = lens.reduce((a, b) => a + b, 0);
    for (let o = 0; o < outer; o++) {
      let off = 0;
      for (let k = 0; k < xs.length; k++) {
        const n = lens[k]! * inner;
        out.set(xs[k]!.subarray(o * n, (o + 1) * n), (o * total + off) * inner);
        off += lens[k]!;
      }
    }
  },
};

export type { Triple };
