/**
 * N-dimensional tensor operations for the parts of exported graphs that are not a U-Net's 5-D
 * convolution blocks: transformers' MatMul/Softmax/LayerNorm, padding, transposes, reductions,
 * broadcasting arithmetic, and the integer shape glue around them. Float tensors are Float32Array
 * (computed in float64 per element, rounded once); integer tensors (int64 shapes, indices, masks)
 * are plain numbers. Every result's size is checked against the run's memory budget before it is
 * allocated (see Budget).
 */
import { getHeapStatistics } from "node:v8";
import { allocArray } from "../volume.js";

export type NdData = Float32Array | number[];
export interface Nd {
  data: NdData;
  shape: number[];
  int: boolean;
}

export const size = (s: readonly number[]) => s.reduce((a, b) => a * b, 1);

/** What a model run may allocate: every result is checked before it is made. */
export interface Budget {
  /** Checks that `bytes` more may be allocated; throws a RangeError naming `what` otherwise. */
  check(bytes: number, what: string): void;
  /**
   * A float buffer of n values for a result, not cleared (every function here writes all of its
   * output, and so must a caller of alloc: ConstantOfShape fills even zeros): a model run's pool,
   * whose buffers come back for the next run. Without it, engine memory of its own — a
   * transformer's Transpose and Gather results, fresh each run, had cost 2–5 ms each in first
   * touches of their pages, more than the copy.
   */
  take?(n: number): Float32Array;
}
export const NO_BUDGET: Budget = { check: () => {} };

/** Largest integer tensor (shape glue): integer results are plain arrays of numbers. */
const MAX_INTS = 1 << 24;

/**
 * Most multiply-adds one general Einsum (its index loop: about 40 M a second) or one MatMul of
 * this file (a JavaScript loop: integers, or what the engine's GEMM does not take) may do. They
 * run on the main thread without a pause: a 219-byte model's Einsum folded at load ran for hours,
 * cancel and timers unheard. What exporters give (attention) goes to the engine's GEMM.
 */
const MAX_EINSUM_STEPS = 2 ** 27,
  MAX_MATMUL_STEPS = 2 ** 30;

/** `overwritten`: the caller writes every element, so reused engine memory need not be cleared first. */
export function alloc(shape: number[], int: boolean, budget: Budget, what: string, overwritten = false): Nd {
  const n = size(shape);
  if (!shape.every((d) => Number.isSafeInteger(d) && d >= 0) || !Number.isSafeInteger(n))
    throw new RangeError(`${what}: shape [${shape}] is not a valid size`);
  if (int) {
    if (n > MAX_INTS) throw new RangeError(`${what}: an integer tensor of ${n} values is beyond the engine's ${MAX_INTS} for shape glue`);
    budget.check(n * 8, what);
    heapRoom(n, what);
    return { data: new Array<number>(n).fill(0), shape, int };
  }
  budget.check(n * 4, what);
  if (budget.take) return { data: budget.take(n), shape, int };
  return { data: allocArray("float32", n, what, { overwritten }) as Float32Array, shape, int };
}

/**
 * Integer tensors are arrays of numbers on V8's heap (8 bytes a value), whose limit is far below the
 * engine's memory: eight 2^24-value ConstantOfShape nodes of a 680-byte model aborted the process
 * (heap out of memory, which nothing can catch). A large one is refused while the heap would pass
 * half its limit.
 */
export function heapRoom(values: number, what: string): void {
  if (values < 1 << 16) return;
  const h = getHeapStatistics();
  if (h.used_heap_size + values * 8 > h.heap_size_limit / 2)
    throw new RangeError(
      `${what}: an integer tensor of ${values} values would take JavaScript's heap past half its ${Math.round(h.heap_size_limit / 2 ** 20)} MiB (${Math.round(h.used_heap_size / 2 ** 20)} MiB in use)`,
    );
}

/** Whether `from` broadcasts to `to` one way (ONNX's unidirectional broadcasting: trailing axes equal or 1). */
export function broadcastsTo(from: readonly number[], to: readonly number[]): boolean {
  const k = from.length,
    r = to.length;
  return k <= r && from.every((d, i) => d === 1 || d === to[r - k + i]);
}

export function stridesOf(shape: readonly number[]): number[] {
  const st = new Array<number>(shape.length);
  let s = 1;
  for (let i = shape.length - 1; i >= 0; i--) {
    st[i] = s;
    s *= shape[i]!;
  }
  return st;
}

export function normAxis(axis: number, rank: number, what: string): number {
  if (!Number.isInteger(axis) || axis < -rank || axis >= Math.max(rank, 1))
    throw new RangeError(`${what} ${axis} is out of range for rank ${rank}`);
  return axis < 0 ? axis + rank : axis;
}

/** numpy's broadcast of several shapes. */
export function broadcastShapes(shapes: number[][], what: string): number[] {
  const r = Math.max(...shapes.map((s) => s.length));
  const out = new Array<number>(r).fill(1);
  for (const s of shapes) {
    for (let i = 0; i < s.length; i++) {
      const d = s[s.length - 1 - i]!,
        k = r - 1 - i;
      if (d === out[k] || d === 1) continue;
      if (out[k] === 1) out[k] = d;
      else throw new RangeError(`${what}: shapes ${shapes.map((x) => `[${x}]`).join(", ")} do not broadcast`);
    }
  }
  return out;
}

/** Strides of `shape` as read over a broadcast result of rank `r` (0 along broadcast axes). */
function bstrides(shape: number[], out: number[]): number[] {
  const st = stridesOf(shape);
  const r = out.length,
    o = r - shape.length;
  return out.map((d, k) => (k < o || shape[k - o] === 1 ? 0 : st[k - o]!));
}

/** Element-wise map over broadcast inputs. */
export function mapN(ins: Nd[], int: boolean, f: (...v: number[]) => number, budget: Budget, what: string, toShape?: number[]): Nd {
  const shape = broadcastShapes([...ins.map((x) => x.shape), ...(toShape ? [toShape] : [])], what);
  const out = alloc(shape, int, budget, what);
  const n = out.data.length,
    r = shape.length,
    y = out.data;
  const intCast = int ? (v: number) => (Number.isFinite(v) ? Math.trunc(v) + 0 : v) : (v: number) => v;
  if (ins.every((x) => x.data.length === n)) {
    if (ins.length === 1) {
      const a = ins[0]!.data;
      if (!int) for (let i = 0; i < n; i++) y[i] = f(a[i]!);
      else for (let i = 0; i < n; i++) y[i] = intCast(f(a[i]!));
    } else if (ins.length === 2) {
      const a = ins[0]!.data,
        b = ins[1]!.data;
      for (let i = 0; i < n; i++) y[i] = intCast(f(a[i]!, b[i]!));
    } else {
      const ds = ins.map((x) => x.data);
      for (let i = 0; i < n; i++) y[i] = intCast(f(...ds.map((d) => d[i]!)));
    }
    return out;
  }
  if (
    ins.length === 2 &&
    (ins[0]!.data.length === n || ins[1]!.data.length === n) &&
    (ins[0]!.data.length === 1 || ins[1]!.data.length === 1)
  ) {
    // one operand a single value (x / √d, x · 0.5, x + 1): no index walk
    const a = ins[0]!.data,
      b = ins[1]!.data;
    if (a.length === 1) {
      const c = a[0]!;
      for (let i = 0; i < n; i++) y[i] = intCast(f(c, b[i]!));
    } else {
      const c = b[0]!;
      for (let i = 0; i < n; i++) y[i] = intCast(f(a[i]!, c));
    }
    return out;
  }
  const st = ins.map((x) => bstrides(x.shape, shape));
  const off = ins.map(() => 0),
    idx = new Array<number>(r).fill(0);
  const ds = ins.map((x) => x.data);
  const vals = new Array<number>(ins.length);
  for (let i = 0; i < n; i++) {
    for (let k = 0; k < ins.length; k++) vals[k] = ds[k]![off[k]!]!;
    y[i] = intCast(f(...vals));
    for (let d = r - 1; d >= 0; d--) {
      idx[d]!++;
      for (let k = 0; k < ins.length; k++) off[k]! += st[k]![d]!;
      if (idx[d]! < shape[d]!) break;
      for (let k = 0; k < ins.length; k++) off[k]! -= st[k]![d]! * shape[d]!;
      idx[d] = 0;
    }
  }
  return out;
}

/** Copies x into a new tensor laid out by `perm` (numpy's transpose). */
export function transpose(x: Nd, perm: number[] | undefined, budget: Budget, what: string): Nd {
  const r = x.shape.length;
  const p = perm ?? x.shape.map((_, i) => r - 1 - i);
  if (p.length !== r || new Set(p.map((a) => normAxis(a, r, `${what}: perm axis`))).size !== r)
    throw new RangeError(`${what}: perm [${p}] is not a permutation of ${r} axes`);
  const pn = p.map((a) => (a < 0 ? a + r : a));
  const shape = pn.map((a) => x.shape[a]!);
  const out = alloc(shape, x.int, budget, what, true);
  const st = stridesOf(x.shape);
  // the output's axes with the input stride of each, extents of 1 dropped and neighbours that stay
  // neighbours merged ([1,128,3,12,64] by [2,0,3,1,4], a transformer's q/k/v split: 4 axes, 64 in a run)
  const dims: number[] = [],
    strides: number[] = [];
  for (const a of pn) {
    const d = x.shape[a]!;
    if (d === 1) continue;
    const k = dims.length - 1;
    if (k >= 0 && strides[k] === st[a]! * d) {
      dims[k]! *= d;
      strides[k] = st[a]!;
    } else {
      dims.push(d);
      strides.push(st[a]!);
    }
  }
  if (out.data.length === 0) return out;
  if (dims.length === 0) {
    dims.push(1);
    strides.push(1);
  }
  permute(x.data, out.data, dims, strides);
  return out;
}

/**
 * y (dense, of extents `dims`) = src read at the given strides: the innermost axis a run (copied
 * whole where its stride is 1 and it holds 64 floats or more), the outer ones an odometer.
 */
function permute(src: NdData, y: NdData, dims: number[], strides: number[]): void {
  const r = dims.length,
    inner = dims[r - 1]!,
    is = strides[r - 1]!,
    n = y.length,
    idx = new Array<number>(r).fill(0);
  const runs = is === 1 && inner >= 64 && src instanceof Float32Array && y instanceof Float32Array;
  if (r >= 2 && strides[r - 2] === 1 && is !== 1 && dims[r - 2]! * inner >= 1024) {
    // the last two axes swapped (attention's kᵀ: [B, H, n, hd] → [B, H, hd, n]): each outer index's
    // matrix in 32 × 32 tiles, both sides a few cache lines at a time (the odometer read a new line
    // for every value)
    const rows = dims[r - 2]!,
      outer = n / (rows * inner);
    const oStrides = strides.slice(0, r - 2),
      oDims = dims.slice(0, r - 2);
    for (let o = 0; o < outer; o++) {
      let base = 0;
      for (let d = oDims.length - 1, q = o; d >= 0; d--) {
        base += (q % oDims[d]!) * oStrides[d]!;
        q = Math.floor(q / oDims[d]!);
      }
      const yo = o * rows * inner;
      for (let i0 = 0; i0 < rows; i0 += 32)
        for (let j0 = 0; j0 < inner; j0 += 32) {
          const i1 = Math.min(rows, i0 + 32),
            j1 = Math.min(inner, j0 + 32);
          for (let i = i0; i < i1; i++) for (let j = j0, at = base + i + j0 * is; j < j1; j++, at += is) y[yo + i * inner + j] = src[at]!;
        }
    }
    return;
  }
  let off = 0;
  for (let i = 0; i < n; i += inner) {
    if (runs) (y as Float32Array).set((src as Float32Array).subarray(off, off + inner), i);
    else for (let j = 0, o = off; j < inner; j++, o += is) y[i + j] = src[o]!;
    for (let d = r - 2; d >= 0; d--) {
      idx[d]!++;
      off += strides[d]!;
      if (idx[d]! < dims[d]!) break;
      off -= strides[d]! * dims[d]!;
      idx[d] = 0;
    }
  }
}

export type ReduceKind = "mean" | "sum" | "max" | "min" | "prod" | "l1" | "l2" | "sumsquare" | "logsum" | "logsumexp";

/**
 * Reduces over `axes` (all when empty), keeping them as 1 when keepdims. Sums in double;
 * logsumexp subtracts each output's maximum first (as onnxruntime does), so large logits do not
 * overflow.
 */
export function reduce(x: Nd, axes: number[], keepdims: boolean, kind: ReduceKind, budget: Budget, what: string): Nd {
  const r = x.shape.length;
  const ax = new Set((axes.length ? axes : x.shape.map((_, i) => i)).map((a) => normAxis(a, r, `${what}: axis`)));
  const kept = x.shape.map((d, i) => (ax.has(i) ? 1 : d));
  const out = alloc(keepdims ? kept : x.shape.filter((_, i) => !ax.has(i)), x.int, budget, what);
  const n = x.data.length;
  const top = kind === "logsumexp" ? reduceInto(x, ax, kept, "max", out.data.length) : undefined;
  const term: (v: number, o: number) => number =
    kind === "l1"
      ? Math.abs
      : kind === "l2" || kind === "sumsquare"
        ? (v) => v * v
        : kind === "logsumexp"
          ? (v, o) => (top![o] === -Infinity || top![o] === Infinity ? Math.exp(v) : Math.exp(v - top![o]!))
          : (v) => v;
  const base = kind === "max" || kind === "min" || kind === "prod" ? kind : "sum";
  const acc = reduceInto(x, ax, kept, base, out.data.length, base === "sum" ? term : undefined);
  const count = n / Math.max(1, out.data.length);
  for (let i = 0; i < acc.length; i++) {
    const s = acc[i]!;
    const v =
      kind === "mean"
        ? s / count
        : kind === "l2"
          ? Math.sqrt(s)
          : kind === "logsum"
            ? Math.log(s)
            : kind === "logsumexp"
              ? top![i] === -Infinity || top![i] === Infinity
                ? Math.log(s)
                : Math.log(s) + top![i]!
              : s;
    out.data[i] = x.int ? Math.trunc(v) : v;
  }
  return out;
}

/** The per-output accumulation of reduce: each input value (through `term`) into its output's slot. */
function reduceInto(
  x: Nd,
  ax: Set<number>,
  kept: number[],
  kind: "sum" | "max" | "min" | "prod",
  m: number,
  term?: (v: number, o: number) => number,
): Float64Array {
  const r = x.shape.length;
  const acc = new Float64Array(m).fill(kind === "max" ? -Infinity : kind === "min" ? Infinity : kind === "prod" ? 1 : 0);
  const n = x.data.length,
    src = x.data;
  // the reduced axes the last ones (a global pooling, a LayerNorm's statistics): each output
  // takes one contiguous run of the input
  let inner = 1,
    k = r;
  while (k > 0 && ax.has(k - 1)) inner *= x.shape[--k]!;
  if ([...ax].every((a) => a >= k)) {
    for (let o = 0; o < m; o++) {
      let s = acc[o]!;
      const lo = o * inner,
        hi = lo + inner;
      if (kind === "max") for (let i = lo; i < hi; i++) s = src[i]! > s || Number.isNaN(src[i]!) ? src[i]! : s;
      else if (kind === "min") for (let i = lo; i < hi; i++) s = src[i]! < s || Number.isNaN(src[i]!) ? src[i]! : s;
      else if (kind === "prod") for (let i = lo; i < hi; i++) s *= src[i]!;
      else if (term) for (let i = lo; i < hi; i++) s += term(src[i]!, o);
      else for (let i = lo; i < hi; i++) s += src[i]!;
      acc[o] = s;
    }
    return acc;
  }
  const ost = bstrides(kept, x.shape); // output offset of each input index
  const idx = new Array<number>(r).fill(0);
  let o = 0;
  for (let i = 0; i < n; i++) {
    const v = src[i]!;
    if (kind === "max") acc[o] = v > acc[o]! || Number.isNaN(v) ? v : acc[o]!;
    else if (kind === "min") acc[o] = v < acc[o]! || Number.isNaN(v) ? v : acc[o]!;
    else if (kind === "prod") acc[o]! *= v;
    else acc[o]! += term ? term(v, o) : v;
    for (let d = r - 1; d >= 0; d--) {
      idx[d]!++;
      o += ost[d]!;
      if (idx[d]! < x.shape[d]!) break;
      o -= ost[d]! * x.shape[d]!;
      idx[d] = 0;
    }
  }
  return acc;
}

/** Softmax (or log-softmax) along one axis. */
export function softmaxAxis(x: Nd, axis: number, log: boolean, budget: Budget, what: string): Nd {
  const r = x.shape.length,
    a = normAxis(axis, r, `${what}: axis`);
  const out = alloc([...x.shape], false, budget, what);
  const L = x.shape[a]!,
    inner = size(x.shape.slice(a + 1)),
    outer = size(x.shape.slice(0, a));
  const src = x.data,
    y = out.data;
  for (let o = 0; o < outer; o++)
    for (let i = 0; i < inner; i++) {
      const base = o * L * inner + i;
      let m = -Infinity;
      for (let k = 0; k < L; k++) m = Math.max(m, src[base + k * inner]!);
      let s = 0;
      for (let k = 0; k < L; k++) s += Math.exp(src[base + k * inner]! - m);
      for (let k = 0; k < L; k++) {
        const v = src[base + k * inner]! - m;
        y[base + k * inner] = log ? v - Math.log(s) : Math.exp(v) / s;
      }
    }
  return out;
}

/** Normalises each group of `inner` consecutive values (LayerNorm over trailing axes), then y·scale + bias broadcast over them. */
export function normalizeTrailing(x: Nd, inner: number, eps: number, scale: Nd | null, bias: Nd | null, budget: Budget, what: string): Nd {
  const out = alloc([...x.shape], false, budget, what);
  const n = x.data.length,
    src = x.data,
    y = out.data;
  for (let b = 0; b < n; b += inner) {
    let m = 0;
    for (let k = 0; k < inner; k++) m += src[b + k]!;
    m /= inner;
    let v = 0;
    for (let k = 0; k < inner; k++) v += (src[b + k]! - m) ** 2;
    const inv = 1 / Math.sqrt(v / inner + eps);
    for (let k = 0; k < inner; k++) {
      const g = scale ? scale.data[scale.data.length === 1 ? 0 : k]! : 1,
        bb = bias ? bias.data[bias.data.length === 1 ? 0 : k]! : 0;
      y[b + k] = (src[b + k]! - m) * inv * g + bb;
    }
  }
  return out;
}

/** numpy's matmul: 1-D operands promoted and their axis dropped; batch axes broadcast. */
export function matmul(a: Nd, b: Nd, budget: Budget, what: string): Nd {
  const A = a.shape.length === 1 ? [1, a.shape[0]!] : a.shape,
    B = b.shape.length === 1 ? [b.shape[0]!, 1] : b.shape;
  const M = A[A.length - 2]!,
    K = A[A.length - 1]!,
    K2 = B[B.length - 2]!,
    N = B[B.length - 1]!;
  if (K !== K2) throw new RangeError(`${what}: [${a.shape}] × [${b.shape}]: inner dimensions ${K} and ${K2} differ`);
  const batch = broadcastShapes([A.slice(0, -2), B.slice(0, -2)], what);
  const steps = size(batch) * M * K * N;
  if (steps > MAX_MATMUL_STEPS)
    throw new RangeError(
      `${what}: [${a.shape}] × [${b.shape}] is ${steps} multiply-adds, over the ${MAX_MATMUL_STEPS} a MatMul off the engine's GEMM may take`,
    );
  let shape = [...batch, M, N];
  const out = alloc(shape, a.int && b.int, budget, what);
  const nb = size(batch);
  const sa = bstrides(A.slice(0, -2), batch),
    sb = bstrides(B.slice(0, -2), batch);
  const ad = a.data,
    bd = b.data,
    y = out.data;
  const row = new Float64Array(N);
  const idx = new Array<number>(batch.length).fill(0);
  let oa = 0,
    ob = 0;
  for (let t = 0; t < nb; t++) {
    const baseA = oa * M * K,
      baseB = ob * K * N,
      baseY = t * M * N;
    for (let i = 0; i < M; i++) {
      row.fill(0);
      for (let k = 0; k < K; k++) {
        const v = ad[baseA + i * K + k]!;
        if (v === 0) continue;
        const bo = baseB + k * N;
        for (let j = 0; j < N; j++) row[j]! += v * bd[bo + j]!;
      }
      for (let j = 0; j < N; j++) y[baseY + i * N + j] = row[j]!;
    }
    for (let d = batch.length - 1; d >= 0; d--) {
      idx[d]!++;
      oa += sa[d]!;
      ob += sb[d]!;
      if (idx[d]! < batch[d]!) break;
      oa -= sa[d]! * batch[d]!;
      ob -= sb[d]! * batch[d]!;
      idx[d] = 0;
    }
  }
  if (a.shape.length === 1) shape = [...batch, N];
  if (b.shape.length === 1) shape = a.shape.length === 1 ? [...batch] : [...batch, M];
  return { ...out, shape };
}

/** Two-operand einsum with an explicit output ("bhqd,bhkd->bhqk"): a loop over every index. */
/**
 * A two-operand einsum that is a batched matrix product (attention's Q·Kᵀ "bhxd,bhyd->bhxy" and
 * A·V "bhxy,bhyd->bhxd"), as the operands of matmul (B transposed where the equation reads it so),
 * on operands of equal batch extents; else undefined.
 */
export function einsumAsMatmul(eq: string, a: Nd, b: Nd, budget: Budget, what: string): [Nd, Nd] | undefined {
  const m = /^([a-zA-Z]+),([a-zA-Z]+)->([a-zA-Z]*)$/.exec(eq.replace(/\s/g, ""));
  if (!m) return undefined;
  const [la, lb, lo] = [m[1]!, m[2]!, m[3]!];
  const r = la.length;
  if (r < 2 || lb.length !== r || lo.length !== r || a.shape.length !== r || b.shape.length !== r || new Set(la + lb).size !== r + 1)
    return undefined;
  const batch = la.slice(0, r - 2);
  if (lb.slice(0, r - 2) !== batch || lo.slice(0, r - 2) !== batch || !a.shape.slice(0, r - 2).every((d, i) => d === b.shape[i]))
    return undefined;
  const [i, k, j] = [la[r - 2]!, la[r - 1]!, lo[r - 1]!];
  if (lo[r - 2] !== i || j === i || j === k) return undefined;
  if (lb.slice(r - 2) === `${k}${j}`) return [a, b];
  if (lb.slice(r - 2) === `${j}${k}`) return [a, transpose(b, [...Array(r - 2).keys(), r - 1, r - 2], budget, what)];
  return undefined;
}

export function einsum(eq: string, a: Nd, b: Nd, budget: Budget, what: string): Nd {
  const m = /^([a-zA-Z]+),([a-zA-Z]+)->([a-zA-Z]*)$/.exec(eq.replace(/\s/g, ""));
  if (!m) throw new RangeError(`${what}: equation ${eq} is not a two-operand einsum with an explicit output`);
  const [la, lb, lo] = [m[1]!, m[2]!, m[3]!];
  if (la.length !== a.shape.length || lb.length !== b.shape.length)
    throw new RangeError(`${what}: ${eq} does not match ranks ${a.shape.length} and ${b.shape.length}`);
  const mm = einsumAsMatmul(eq, a, b, budget, what);
  if (mm) return matmul(mm[0], mm[1], budget, what);
  const dim = new Map<string, number>();
  const bind = (ls: string, shape: number[]) =>
    [...ls].forEach((c, i) => {
      const d = shape[i]!,
        had = dim.get(c);
      if (had !== undefined && had !== d && had !== 1 && d !== 1) throw new RangeError(`${what}: index ${c} is ${had} and ${d}`);
      dim.set(c, Math.max(had ?? 1, d));
    });
  bind(la, a.shape);
  bind(lb, b.shape);
  for (const c of lo) if (!dim.has(c)) throw new RangeError(`${what}: output index ${c} is in neither operand`);
  const letters = [...dim.keys()];
  const outShape = [...lo].map((c) => dim.get(c)!);
  const out = alloc(outShape, a.int && b.int, budget, what);
  const strideIn = (ls: string, shape: number[]) => {
    const st = stridesOf(shape);
    return letters.map((c) => [...ls].reduce((s, l, i) => (l === c && shape[i] !== 1 ? s + st[i]! : s), 0));
  };
  const sa = strideIn(la, a.shape),
    sb = strideIn(lb, b.shape);
  const ost = stridesOf(outShape),
    so = letters.map((c) => (lo.includes(c) ? ost[lo.indexOf(c)]! : 0));
  const ext = letters.map((c) => dim.get(c)!);
  const total = size(ext);
  if (total > MAX_EINSUM_STEPS)
    throw new RangeError(
      `${what}: ${eq} over [${a.shape}] and [${b.shape}] is ${total} steps of its index loop, over the ${MAX_EINSUM_STEPS} bhsd runs (batched matrix products, as attention's, are not limited)`,
    );
  budget.check(0, what);
  const acc = new Float64Array(out.data.length);
  const idx = new Array<number>(letters.length).fill(0);
  let oa = 0,
    ob = 0,
    oo = 0;
  const ad = a.data,
    bd = b.data;
  for (let i = 0; i < total; i++) {
    acc[oo]! += ad[oa]! * bd[ob]!;
    for (let d = letters.length - 1; d >= 0; d--) {
      idx[d]!++;
      oa += sa[d]!;
      ob += sb[d]!;
      oo += so[d]!;
      if (idx[d]! < ext[d]!) break;
      oa -= sa[d]! * ext[d]!;
      ob -= sb[d]! * ext[d]!;
      oo -= so[d]! * ext[d]!;
      idx[d] = 0;
    }
  }
  for (let i = 0; i < acc.length; i++) out.data[i] = acc[i]!;
  return out;
}

/** ONNX Pad: pads [x1_begin, x2_begin, …, x1_end, …] (negative crops), mode constant/edge/reflect/wrap. */
export function pad(x: Nd, pads: number[], mode: string, value: number, budget: Budget, what: string): Nd {
  const r = x.shape.length;
  if (pads.length !== 2 * r) throw new RangeError(`${what}: ${pads.length} pads for rank ${r} (need ${2 * r})`);
  const shape = x.shape.map((d, i) => d + pads[i]! + pads[i + r]!);
  if (shape.some((d) => d < 0)) throw new RangeError(`${what}: pads [${pads}] crop more than [${x.shape}] holds`);
  for (let i = 0; i < r; i++) {
    if (mode === "reflect" && (pads[i]! >= x.shape[i]! || pads[i + r]! >= x.shape[i]!) && (pads[i]! > 0 || pads[i + r]! > 0)) {
      throw new RangeError(`${what}: reflect padding ${Math.max(pads[i]!, pads[i + r]!)} on an axis of ${x.shape[i]}`);
    }
    if ((mode === "edge" || mode === "wrap") && x.shape[i] === 0 && shape[i]! > 0)
      throw new RangeError(`${what}: ${mode} padding of an empty axis`);
  }
  const out = alloc(shape, x.int, budget, what);
  if (mode === "constant" && pads.every((p) => p >= 0)) {
    padConstant(x, pads, value, out);
    return out;
  }
  const st = stridesOf(x.shape),
    n = out.data.length,
    y = out.data,
    src = x.data;
  const idx = new Array<number>(r).fill(0);
  const map = (o: number, i: number): number => {
    const d = x.shape[i]!;
    let v = o - pads[i]!;
    if (v >= 0 && v < d) return v;
    if (mode === "constant") return -1;
    if (mode === "edge") return v < 0 ? 0 : d - 1;
    if (mode === "wrap") return ((v % d) + d) % d;
    // reflect (no edge repeat)
    const period = 2 * (d - 1);
    if (period === 0) return 0;
    v = ((v % period) + period) % period;
    return v < d ? v : period - v;
  };
  for (let i = 0; i < n; i++) {
    let off = 0,
      inside = true;
    for (let d = 0; d < r; d++) {
      const v = map(idx[d]!, d);
      if (v < 0) {
        inside = false;
        break;
      }
      off += v * st[d]!;
    }
    y[i] = inside ? src[off]! : value;
    for (let d = r - 1; d >= 0; d--) {
      idx[d]!++;
      if (idx[d]! < shape[d]!) break;
      idx[d] = 0;
    }
  }
  return out;
}

/**
 * Copies `runs` runs of `run` values: run i from src at srcOffset(i) to dst at dstOffset(i) (whole
 * typed-array copies where both are float arrays: a padded or cropped activation of a transformer,
 * 2 MB, had taken 30–75 ms value by value).
 */
function copyRuns(
  dst: NdData,
  src: NdData,
  runs: number,
  run: number,
  srcOffset: (i: number) => number,
  dstOffset: (i: number) => number,
): void {
  const typed = dst instanceof Float32Array && src instanceof Float32Array;
  for (let i = 0; i < runs; i++) {
    const a = srcOffset(i),
      b = dstOffset(i);
    if (typed && run >= 16) dst.set(src.subarray(a, a + run), b);
    else for (let j = 0; j < run; j++) dst[b + j] = src[a + j]!;
  }
}

/** The offset, by `strides`, of index i of a row-major `shape`, each coordinate mapped by `at`. */
function offsetOf(i: number, shape: readonly number[], strides: readonly number[], at: (d: number, v: number) => number): number {
  let off = 0;
  for (let d = shape.length - 1; d >= 0; d--) {
    const n = shape[d]!;
    off += at(d, i % n) * strides[d]!;
    i = Math.floor(i / n);
  }
  return off;
}

/**
 * Constant padding (no cropping): out filled with `value`, then x's rows copied into place, the
 * destination stepped by an odometer over the outer axes (MedNeXt's F.pad of one voxel at the start
 * of each axis, 64 K runs of 63 values, took 35 ms with an offset computed and a view made per run).
 */
function padConstant(x: Nd, pads: readonly number[], value: number, out: Nd): void {
  const r = x.shape.length;
  out.data.fill(value);
  if (x.data.length === 0) return;
  // the trailing axes without padding and the one before them make one run per outer index
  let k = r;
  while (k > 0 && pads[k - 1] === 0 && pads[k - 1 + r] === 0) k--;
  const outer = Math.max(0, k - 1);
  const run = size(x.shape.slice(outer));
  const outerShape = x.shape.slice(0, outer);
  const os = stridesOf(out.shape);
  let dst = k > 0 ? pads[k - 1]! * os[k - 1]! : 0;
  for (let d = 0; d < outer; d++) dst += pads[d]! * os[d]!;
  const runs = size(outerShape);
  const idx = new Array<number>(outer).fill(0);
  const src = x.data,
    y = out.data;
  const typed = y instanceof Float32Array && src instanceof Float32Array;
  for (let i = 0, s = 0; i < runs; i++, s += run) {
    if (typed && run >= 16) y.set(src.subarray(s, s + run), dst);
    else for (let j = 0; j < run; j++) y[dst + j] = src[s + j]!;
    for (let d = outer - 1; d >= 0; d--) {
      idx[d]!++;
      dst += os[d]!;
      if (idx[d]! < outerShape[d]!) break;
      dst -= idx[d]! * os[d]!;
      idx[d] = 0;
    }
  }
}

/** ONNX Slice with starts/ends/axes/steps (steps may be negative, never 0). */
/** ONNX Slice's geometry: the first index and step on every axis, and the output shape. */
export function slicePlan(
  inShape: readonly number[],
  starts: readonly number[],
  ends: readonly number[],
  axes: readonly number[] | undefined,
  steps: readonly number[] | undefined,
  what: string,
): { lo: number[]; step: number[]; shape: number[] } {
  const r = inShape.length;
  const ax = (axes ?? starts.map((_, i) => i)).map((a) => normAxis(a, r, `${what}: axis`));
  const st = steps ?? starts.map(() => 1);
  if (ends.length !== starts.length || ax.length !== starts.length || st.length !== starts.length)
    throw new RangeError(`${what}: starts, ends, axes and steps differ in length`);
  if (new Set(ax).size !== ax.length) throw new RangeError(`${what}: an axis is sliced twice`);
  const lo = inShape.map(() => 0),
    step = inShape.map(() => 1),
    shape = [...inShape];
  ax.forEach((a, k) => {
    const d = inShape[a]!,
      s = st[k]!;
    if (!Number.isInteger(s) || s === 0) throw new RangeError(`${what}: step ${s} on axis ${a} (steps must be non-zero integers)`);
    const clampF = (v: number, min: number, max: number) => Math.max(min, Math.min(max, v < 0 ? v + d : v));
    // (ONNX: a start is clamped to [0, d − 1] for negative steps, as onnxruntime does: −6 on an
    // axis of 3 begins at 0, not before it; an end to [−1, d − 1])
    const b = s > 0 ? clampF(starts[k]!, 0, d) : clampF(starts[k]!, 0, d - 1);
    const e = s > 0 ? clampF(ends[k]!, 0, d) : clampF(ends[k]!, -1, d - 1);
    lo[a] = b;
    step[a] = s;
    shape[a] = d === 0 ? 0 : Math.max(0, s > 0 ? Math.ceil((e - b) / s) : Math.ceil((b - e) / -s));
  });
  return { lo, step, shape };
}

export function slice(
  x: Nd,
  starts: number[],
  ends: number[],
  axes: number[] | undefined,
  steps: number[] | undefined,
  budget: Budget,
  what: string,
): Nd {
  const { lo, step, shape } = slicePlan(x.shape, starts, ends, axes, steps, what);
  const r = x.shape.length;
  const out = alloc(shape, x.int, budget, what);
  if (out.data.length === 0) return out;
  // the trailing axes taken whole and the one before them at step 1 make one contiguous run
  let k = r;
  while (k > 0 && lo[k - 1] === 0 && step[k - 1] === 1 && shape[k - 1] === x.shape[k - 1]) k--;
  // (and SwinUNETR's patch merging's x[:, 0::2, 0::2, 0::2, :]: runs of the channels)
  const a = k > 0 && step[k - 1] === 1 ? k - 1 : k; // the run's first axis
  if (a < r) {
    const outerShape = shape.slice(0, a);
    const run = size(shape.slice(a));
    const xs = stridesOf(x.shape);
    const first = a < k ? lo[a]! * xs[a]! : 0;
    copyRuns(
      out.data,
      x.data,
      size(outerShape),
      run,
      (i) => offsetOf(i, outerShape, xs, (d, v) => lo[d]! + v * step[d]!) + first,
      (i) => i * run,
    );
    return out;
  }
  if (r === 0) {
    out.data[0] = x.data[0]!;
    return out;
  }
  // the last axis strided or reversed (timm's rotary embedding's x[..., 1::2] and x[..., ::2]): a
  // row's start found once, then one tight loop along it
  const xs = stridesOf(x.shape),
    outerShape = shape.slice(0, r - 1),
    len = shape[r - 1]!,
    st = step[r - 1]!,
    l0 = lo[r - 1]!;
  const src = x.data,
    dst = out.data;
  const rows = size(outerShape);
  for (let i = 0; i < rows; i++) {
    const base = offsetOf(i, outerShape, xs, (d, v) => lo[d]! + v * step[d]!) + l0;
    for (let j = 0, o = i * len; j < len; j++) dst[o + j] = src[base + j * st]!;
  }
  return out;
}

/** ONNX Gather along `axis` with any-rank indices (negative indices count from the end). */
export function gather(x: Nd, idx: Nd, axis: number, budget: Budget, what: string): Nd {
  const r = x.shape.length,
    a = normAxis(axis, r, `${what}: axis`);
  const d = x.shape[a]!;
  const outer = size(x.shape.slice(0, a)),
    inner = size(x.shape.slice(a + 1));
  const shape = [...x.shape.slice(0, a), ...idx.shape, ...x.shape.slice(a + 1)];
  const m = idx.data.length;
  for (let k = 0; k < m; k++) {
    const v = idx.data[k]!;
    if (!Number.isInteger(v) || v < -d || v >= d) throw new RangeError(`${what}: index ${v} is out of range for axis ${a} of ${d}`);
  }
  const out = alloc(shape, x.int, budget, what, true);
  // each (outer, index) pair one run of `inner` values: copied whole (q, k, v taken from a
  // transformer's stacked projections: 98 304 values a run), element by element where short
  const f32 = x.data instanceof Float32Array && out.data instanceof Float32Array;
  if (f32 && inner === 1) {
    // along the last axis (a permutation of each row's values: a rotary embedding's pair swap), one
    // tight loop per row over the indices made non-negative once
    const ix = Int32Array.from(idx.data as ArrayLike<number>, (v) => (v < 0 ? v + d : v));
    const src = x.data as Float32Array,
      dst = out.data as Float32Array;
    for (let o = 0, so = 0, dO = 0; o < outer; o++, so += d, dO += m) for (let k = 0; k < m; k++) dst[dO + k] = src[so + ix[k]!]!;
    return out;
  }
  for (let o = 0; o < outer; o++)
    for (let k = 0; k < m; k++) {
      const v = idx.data[k]!,
        j = v < 0 ? v + d : v;
      const src = (o * d + j) * inner,
        dst = (o * m + k) * inner;
      if (f32 && inner >= 64) (out.data as Float32Array).set((x.data as Float32Array).subarray(src, src + inner), dst);
      else for (let i = 0; i < inner; i++) out.data[dst + i] = x.data[src + i]!;
    }
  return out;
}

const SCATTER_REDUCTIONS: Record<string, (a: number, b: number) => number> = {
  none: (_a, b) => b,
  add: (a, b) => a + b,
  mul: (a, b) => a * b,
  max: (a, b) => (Number.isNaN(a) || Number.isNaN(b) ? NaN : Math.max(a, b)),
  min: (a, b) => (Number.isNaN(a) || Number.isNaN(b) ? NaN : Math.min(a, b)),
};

/**
 * ScatterND: a copy of data with each update written at its index tuple (the last axis of indices:
 * k ≤ rank values, negative ones counted from the end) — a slice of data's trailing axes per tuple
 * — or combined with what is there by `reduction` (add, mul, max, min), in the updates' order
 * (PyTorch's slice assignments, e.g. SwinUNETR's attention mask, export as these).
 */
export function scatterND(x: Nd, idx: Nd, upd: Nd, reduction: string, budget: Budget, what: string): Nd {
  const r = x.shape.length,
    q = idx.shape.length;
  const k = idx.shape[q - 1] ?? 0;
  if (q < 1 || k < 1 || k > r)
    throw new RangeError(
      `${what}: the indices' last axis must hold 1 to ${r} (the data's rank) values, got indices of shape [${idx.shape}]`,
    );
  const want = [...idx.shape.slice(0, q - 1), ...x.shape.slice(k)];
  if (upd.shape.length !== want.length || upd.shape.some((d, i) => d !== want[i]))
    throw new RangeError(`${what}: updates must have shape [${want}] for data [${x.shape}] and indices [${idx.shape}], got [${upd.shape}]`);
  const combine = SCATTER_REDUCTIONS[reduction];
  if (!combine)
    throw new RangeError(`${what}: reduction ${JSON.stringify(reduction)} is not one of ${Object.keys(SCATTER_REDUCTIONS).join(", ")}`);
  const out = alloc([...x.shape], x.int, budget, what, true);
  for (let i = 0; i < x.data.length; i++) out.data[i] = x.data[i]!;
  const inner = size(x.shape.slice(k)),
    tuples = size(idx.shape.slice(0, q - 1));
  const strides = x.shape.slice(0, k).map((_, i) => size(x.shape.slice(i + 1)));
  for (let t = 0; t < tuples; t++) {
    let off = 0;
    for (let j = 0; j < k; j++) {
      const v = idx.data[t * k + j]!,
        d = x.shape[j]!;
      if (!Number.isInteger(v) || v < -d || v >= d) throw new RangeError(`${what}: index ${v} is out of range for axis ${j} of ${d}`);
      off += (v < 0 ? v + d : v) * strides[j]!;
    }
    for (let i = 0; i < inner; i++) out.data[off + i] = combine(out.data[off + i]!, upd.data[t * inner + i]!);
  }
  return out;
}

/** Concatenation along any axis. */
export function concat(xs: Nd[], axis: number, budget: Budget, what: string): Nd {
  const r = xs[0]!.shape.length,
    a = normAxis(axis, r, `${what}: axis`);
  for (const x of xs) {
    if (x.shape.length !== r || x.shape.some((d, i) => i !== a && d !== xs[0]!.shape[i]))
      throw new RangeError(`${what}: shapes ${xs.map((y) => `[${y.shape}]`).join(", ")} do not concatenate on axis ${a}`);
  }
  const shape = [...xs[0]!.shape];
  shape[a] = xs.reduce((s, x) => s + x.shape[a]!, 0);
  const out = alloc(
    shape,
    xs.every((x) => x.int),
    budget,
    what,
  );
  const outer = size(shape.slice(0, a)),
    inner = size(shape.slice(a + 1));
  let off = 0;
  for (const x of xs) {
    const run = x.shape[a]! * inner;
    for (let o = 0; o < outer; o++) for (let i = 0; i < run; i++) out.data[o * shape[a]! * inner + off + i] = x.data[o * run + i]!;
    off += run;
  }
  return out;
}

export { erf } from "../backends/erf.js";
