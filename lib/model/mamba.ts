/**
 * Mamba's two ops beyond a U-Net's (Gu and Dao, 2023; mamba_ssm's Mamba as U-Mamba runs it), on
 * token-major values [B, L, ·] — the layout nn.Linear gives and the scan wants (each token's
 * channels side by side):
 *
 * - MAMBA_CONV_OP (xz [B, L, 2·Di], weight [Di, 1, K], bias [Di]) → [B, L, Di]: the causal
 *   depthwise convolution of xz's first Di channels along the tokens (nn.Conv1d with K − 1 zeros of
 *   padding, its first L outputs), then SiLU: Mamba's `act(conv1d(x)[..., :L])`.
 * - SELECTIVE_SCAN_OP (u [B, L, Di], delta [B, L, Di], A_log [Di, N], x_dbl [B, L, R + 2N],
 *   D [Di], xz [B, L, 2·Di]) → [B, L, Di]: mamba_ssm's selective scan with delta_softplus, its B and
 *   C read from x_dbl's last 2N channels (x_proj's output: dt's R, then B's N, then C's N) and z
 *   from xz's last Di: A = −exp(A_log); per channel d a state h[N] from zero, for each token
 *   Δ = softplus(delta), h = exp(Δ·A)·h + Δ·B·u, y = C·h; then (y + u·D)·SiLU(z).
 *
 * Both are checked here whatever calls them (a crafted graph may), and run by the backend where it
 * has them (native's kernels), else here.
 */
import { activeBackend } from "../backends/index.js";
import type { Tensor } from "../types.js";

export const MAMBA_CONV_OP = "bhsd.MambaConv";
export const SELECTIVE_SCAN_OP = "bhsd.SelectiveScan";

/**
 * Bounds a graph may ask for (mamba_ssm's kernels: d_state ≤ 256, d_conv ≤ 4; room beyond), and
 * on d_inner · d_state, the state the scan holds (U-Mamba's widest: 640 · 16).
 */
export const MAMBA_LIMITS = { state: 256, kernel: 16, channels: 1 << 16, stateValues: 1 << 22 } as const;

/** The shapes MAMBA_CONV_OP reads and makes: [B, L, Di] and K, or an error naming the operand. */
export function mambaConvShape(
  xz: readonly number[],
  w: readonly number[],
  bias: readonly number[] | undefined,
): { B: number; L: number; Di: number; K: number } {
  if (xz.length !== 3) throw new RangeError(`xz must be [batch, tokens, 2·channels], got [${xz.join(", ")}]`);
  if (w.length !== 3 || w[1] !== 1)
    throw new RangeError(`weight must be [channels, 1, kernel] (a depthwise Conv1d's), got [${w.join(", ")}]`);
  const [B, L, twice] = xz as [number, number, number];
  const [Di, , K] = w as [number, number, number];
  if (!(Di >= 1 && Di <= MAMBA_LIMITS.channels)) throw new RangeError(`weight has ${Di} channels; 1 to ${MAMBA_LIMITS.channels} run`);
  if (!(K >= 1 && K <= MAMBA_LIMITS.kernel)) throw new RangeError(`weight's kernel is ${K} wide; 1 to ${MAMBA_LIMITS.kernel} run`);
  if (twice !== 2 * Di) throw new RangeError(`xz has ${twice} channels a token; weight's ${Di} channels need ${2 * Di} (x, then z)`);
  if (bias && (bias.length !== 1 || bias[0] !== Di)) throw new RangeError(`bias must be [${Di}], got [${bias.join(", ")}]`);
  return { B, L, Di, K };
}

/** The shapes SELECTIVE_SCAN_OP reads: [B, L, Di], N and R, or an error naming the operand. */
export function selectiveScanShape(
  u: readonly number[],
  delta: readonly number[],
  aLog: readonly number[],
  xDbl: readonly number[],
  d: readonly number[],
  xz: readonly number[],
): { B: number; L: number; Di: number; N: number; R: number } {
  if (u.length !== 3) throw new RangeError(`u must be [batch, tokens, channels], got [${u.join(", ")}]`);
  const [B, L, Di] = u as [number, number, number];
  const is = (s: readonly number[], want: number[]) => s.length === want.length && s.every((v, i) => v === want[i]);
  if (!(Di >= 1 && Di <= MAMBA_LIMITS.channels)) throw new RangeError(`u has ${Di} channels; 1 to ${MAMBA_LIMITS.channels} run`);
  if (!is(delta, [B, L, Di])) throw new RangeError(`delta must be u's shape [${B}, ${L}, ${Di}], got [${delta.join(", ")}]`);
  if (aLog.length !== 2 || aLog[0] !== Di) throw new RangeError(`A_log must be [${Di}, state], got [${aLog.join(", ")}]`);
  const N = aLog[1]!;
  if (!(N >= 1 && N <= MAMBA_LIMITS.state)) throw new RangeError(`A_log has a state of ${N}; 1 to ${MAMBA_LIMITS.state} run`);
  if (Di * N > MAMBA_LIMITS.stateValues)
    throw new RangeError(`A_log [${Di}, ${N}] holds ${Di * N} states; up to ${MAMBA_LIMITS.stateValues} run`);
  if (xDbl.length !== 3 || xDbl[0] !== B || xDbl[1] !== L || !(xDbl[2]! >= 2 * N) || xDbl[2]! - 2 * N > MAMBA_LIMITS.channels)
    throw new RangeError(
      `x_dbl must be [${B}, ${L}, rank + ${2 * N}] (dt's rank, up to ${MAMBA_LIMITS.channels}, then B and C), got [${xDbl.join(", ")}]`,
    );
  if (!is(d, [Di])) throw new RangeError(`D must be [${Di}], got [${d.join(", ")}]`);
  if (!is(xz, [B, L, 2 * Di])) throw new RangeError(`xz must be [${B}, ${L}, ${2 * Di}] (x, then z), got [${xz.join(", ")}]`);
  return { B, L, Di, N, R: xDbl[2]! - 2 * N };
}

const silu = (v: number) => v / (1 + Math.exp(-v));
// (torch's softplus: x past its threshold of 20 as it is)
const softplus = (v: number) => (v > 20 ? v : Math.log1p(Math.exp(v)));

/** MAMBA_CONV_OP on its operands; the result from `alloc`. */
export async function runMambaConv(xz: Tensor, w: Tensor, bias: Tensor | undefined, alloc: (shape: number[]) => Tensor): Promise<Tensor> {
  const { B, L, Di, K } = mambaConvShape(xz.shape, w.shape, bias?.shape);
  const out = alloc([B, L, Di]);
  // (no token: nothing to compute, however long an empty axis claims to be)
  if (B * L === 0) return out;
  const be = activeBackend();
  if (be.mambaConv) {
    await be.mambaConv(xz.data, B, L, Di, K, w.data, bias?.data ?? null, out.data);
    return out;
  }
  const x = xz.data,
    wd = w.data,
    y = out.data;
  for (let b = 0; b < B; b++)
    for (let l = 0; l < L; l++) {
      const o = (b * L + l) * Di;
      for (let c = 0; c < Di; c++) {
        let s = bias ? bias.data[c]! : 0;
        for (let k = 0; k < K; k++) {
          const t = l - (K - 1) + k;
          if (t >= 0) s += wd[c * K + k]! * x[(b * L + t) * 2 * Di + c]!;
        }
        y[o + c] = silu(Math.fround(s));
      }
    }
  return out;
}

/** SELECTIVE_SCAN_OP on its operands; the result from `alloc`. */
export async function runSelectiveScan(
  u: Tensor,
  delta: Tensor,
  aLog: Tensor,
  xDbl: Tensor,
  d: Tensor,
  xz: Tensor,
  alloc: (shape: number[]) => Tensor,
): Promise<Tensor> {
  const { B, L, Di, N, R } = selectiveScanShape(u.shape, delta.shape, aLog.shape, xDbl.shape, d.shape, xz.shape);
  const out = alloc([B, L, Di]);
  if (B * L === 0) return out;
  const be = activeBackend();
  if (be.selectiveScan) {
    await be.selectiveScan(u.data, delta.data, aLog.data, xDbl.data, d.data, xz.data, B, L, Di, N, R, out.data);
    return out;
  }
  const W = R + 2 * N;
  // A = −exp(A_log), rounded to float as torch holds it
  const A = new Float64Array(Di * N);
  for (let i = 0; i < Di * N; i++) A[i] = -Math.fround(Math.exp(aLog.data[i]!));
  const h = new Float64Array(Di * N);
  const ud = u.data,
    dd = delta.data,
    xd = xDbl.data,
    zd = xz.data,
    y = out.data;
  for (let b = 0; b < B; b++) {
    h.fill(0);
    for (let l = 0; l < L; l++) {
      const t = b * L + l,
        bc = t * W + R;
      for (let c = 0; c < Di; c++) {
        const dt = softplus(dd[t * Di + c]!),
          uv = ud[t * Di + c]!;
        let acc = 0;
        for (let n = 0, hn = c * N; n < N; n++, hn++) {
          const v = Math.exp(dt * A[hn]!) * h[hn]! + dt * xd[bc + n]! * uv;
          h[hn] = v;
          acc += v * xd[bc + N + n]!;
        }
        y[t * Di + c] = (acc + uv * d.data[c]!) * silu(zd[t * 2 * Di + Di + c]!);
      }
    }
  }
  return out;
}
