/**
 * MONAI's transformer segmentation networks rebuilt from a network_def, as MONAI 1.4 and 1.5
 * compute them in eval mode: SwinUNETR (shifted-window attention; v1 or v2, either patch merging,
 * 1.5's window_size, qkv_bias, mlp_ratio and patch_norm) and UNETR (a ViT encoder). Unlike the
 * convolutional networks their graphs hold the input's size — SwinUNETR's window sizes, padding and
 * attention masks follow it, UNETR's position embeddings are one per patch of `img_size` — so each
 * is built for one spatial input size: the sliding window's.
 *
 * Tensors inside the transformers are channels-last, as MONAI's ([1, d, h, w, c]); a Linear layer
 * is a MatMul with its weight transposed once at load (the engine's GEMM), LayerNorm ONNX's
 * LayerNormalization. SwinUNETR's padding, cyclic shift and window partition (and their inverse)
 * are one Gather of token rows each, by tables computed here; its patch merging another. The
 * checkpoint's relative_position_index buffers are read past: each is a function of the window, as
 * MONAI's constructor computes it (and a checkpoint saves it), computed here the same way —
 * including MONAI's use of the full window's table (`[:n, :n]`) where a stage is narrower.
 */
import { GraphBuilder, monaiError, parseNorm, perAxis, transposedConv, unetBlock, type ActSpec, type NormSpec } from "./layers.js";
import { divisorOf, finish, flag, intList, kwargs, posInt, spatialDims, type MonaiNetwork } from "./args.js";
import { stridesOf } from "../nd.js";
import { brief } from "../../is.js";

/** UnetResBlock's activation in UNETR's and SwinUNETR's blocks (dynunet_block's default). */
const LRELU: ActSpec = { op: "leakyrelu", slope: 0.01 };

const rate = (v: unknown, where: string, what: string) => {
  if (typeof v !== "number" || !(v >= 0 && v <= 1)) throw monaiError(where, `${what} must be between 0 and 1, got ${brief(v)}`);
};

/** A spatial size (`what`: img_size, or the sliding window's patchSize): `dims` integers up to 65536, each a multiple of `mult`. */
function inputSize(s: readonly number[], dims: number, mult: number, where: string, what: string): number[] {
  if (s.length !== dims || !s.every((v) => Number.isInteger(v) && v >= 1 && v <= 1 << 16))
    throw monaiError(where, `${what} must be ${dims} integers from 1 to 65536, got ${brief(s)}`);
  if (s.some((v) => v % mult)) throw monaiError(where, `${what} [${s.join(", ")}] must be divisible by ${mult} on every axis`);
  return [...s];
}

const prod = (xs: readonly number[]) => xs.reduce((p, q) => p * q, 1);

/** MONAI's UnetrUpBlock: a transposed conv (kernel = stride = 2), the skip concatenated, a residual or basic block. */
function unetrUp(b: GraphBuilder, norm: NormSpec, path: string, x: string, skip: string, ci: number, co: number, res: boolean): string {
  const k3 = Array<number>(b.dims).fill(3),
    ones = Array<number>(b.dims).fill(1),
    twos = Array<number>(b.dims).fill(2);
  const t = transposedConv(b, `${path}.transp_conv`, x, ci, co, twos);
  return unetBlock(b, norm, LRELU, `${path}.conv_block`, b.concat([t, skip], `${path}.cat`), 2 * co, co, k3, ones, res);
}

/** UnetOutBlock: a 1×1 conv with bias. */
function outBlock(b: GraphBuilder, x: string, ci: number, co: number): string {
  const ones = Array<number>(b.dims).fill(1);
  return b.conv("out.conv.conv", x, { cin: ci, cout: co, kernel: ones, stride: ones, pad: ones.map(() => 0), bias: true });
}

/** Channels-first [1, c, …] ↔ channels-last [1, …, c]. */
const toLast = (b: GraphBuilder, x: string, name: string) =>
  b.transpose(x, b.dims === 3 ? [0, 2, 3, 4, 1] : [0, 2, 3, 1], `${name}.channels_last`);
const toFirst = (b: GraphBuilder, x: string, name: string) =>
  b.transpose(x, b.dims === 3 ? [0, 4, 1, 2, 3] : [0, 3, 1, 2], `${name}.channels_first`);

/** Multi-head attention over [..., n, c] with q, k, v [batch, heads, n, hd]: softmax(q·kᵀ + extra) · v, back to [batch, n, c]. */
export function attend(
  b: GraphBuilder,
  q: string,
  k: string,
  v: string,
  shape: { batch: number; heads: number; n: number; hd: number },
  name: string,
  scaleAfter: number | null,
  extra: string[],
): string {
  let a = b.node("MatMul", [q, b.transpose(k, [0, 1, 3, 2], `${name}.kT`)], `${name}.scores`);
  if (scaleAfter !== null) a = b.node("Mul", [a, b.constant(`${name}.scale`, [], new Float32Array([scaleAfter]))], `${name}.scale`);
  for (const e of extra) a = b.add(a, e, `${name}.bias`);
  a = b.node("Softmax", [a], `${name}.softmax`, { axis: -1 });
  const o = b.node("MatMul", [a, v], `${name}.weighted`);
  return b.reshape(b.transpose(o, [0, 2, 1, 3], `${name}.heads_last`), [shape.batch, shape.n, shape.heads * shape.hd], `${name}.merge`);
}

/** q, k, v of a fused qkv projection [batch, n, 3c] split as MONAI's rearrange "b h (qkv l d) -> qkv b l h d". */
export function splitQkv(
  b: GraphBuilder,
  qkv: string,
  batch: number,
  n: number,
  heads: number,
  hd: number,
  name: string,
  /** Applied to the split [batch, n, 3, heads, hd] before q, k and v are taken (Primus's rotary embedding). */
  between?: (x: string) => string,
): [string, string, string] {
  const split = b.reshape(qkv, [batch, n, 3, heads, hd], `${name}.qkv_split`);
  const t = b.transpose(between ? between(split) : split, [2, 0, 3, 1, 4], `${name}.qkv_first`);
  // (a scalar index: the axis goes, each part one contiguous copy)
  const part = (i: number) =>
    b.node("Gather", [t, b.constant(`${name}.qkv${i}`, [], BigInt64Array.of(BigInt(i)))], `${name}.qkv${i}`, { axis: 0 });
  return [part(0), part(1), part(2)];
}

// ---------------------------------------------------------------------------------------------
// SwinUNETR

/** get_window_size: the window (and shift) shrink to a stage's size where it is no wider. */
function swinWindow(size: readonly number[], window: readonly number[], shift: readonly number[]): { window: number[]; shift: number[] } {
  return {
    window: size.map((s, i) => (s <= window[i]! ? s : window[i]!)),
    shift: size.map((s, i) => (s <= window[i]! ? 0 : shift[i]!)),
  };
}

/** The tokens of a channels-last grid `dims` in window order (window_partition): index into the grid for each window's each token. */
function windowOrder(dims: readonly number[], window: readonly number[]): Int32Array {
  const nd = dims.length;
  const counts = dims.map((d, i) => d / window[i]!);
  const nW = prod(counts),
    n = prod(window);
  const out = new Int32Array(nW * n);
  const strides = stridesOf(dims);
  for (let w = 0; w < nW; w++) {
    // window w's block coordinates, then each token's offset in it (C order)
    const wc: number[] = [];
    for (let i = nd - 1, r = w; i >= 0; i--) {
      wc[i] = r % counts[i]!;
      r = Math.floor(r / counts[i]!);
    }
    for (let t = 0; t < n; t++) {
      let at = 0;
      for (let i = nd - 1, r = t; i >= 0; i--) {
        const o = r % window[i]!;
        r = Math.floor(r / window[i]!);
        at += (wc[i]! * window[i]! + o) * strides[i]!;
      }
      out[w * n + t] = at;
    }
  }
  return out;
}

/**
 * compute_mask's region of each token, by window ([nW, n]): the padded grid cut by Python's slices
 * (−window), (−window, −shift), (−shift, None) on each axis, later regions overwriting earlier
 * ones as MONAI's loop does (a zero shift makes the last slice the whole axis).
 */
function swinMaskRegions(padded: readonly number[], window: readonly number[], shift: readonly number[]): Float32Array {
  const nd = padded.length;
  const ranges = padded.map((L, i) => {
    const w = window[i]!,
      s = shift[i]!;
    // Python: slice(-w) = [0, L−w); slice(-w, -s) = [L−w, L−s) (empty for s = 0: -0 is 0); slice(-s, None) = [L−s, L) ([0, L) for s = 0)
    return [
      [0, L - w],
      [L - w, s === 0 ? 0 : L - s],
      [s === 0 ? 0 : L - s, L],
    ];
  });
  const grid = new Float32Array(prod(padded));
  const strides = stridesOf(padded);
  let cnt = 0;
  const fill = (axis: number, box: number[][]) => {
    if (axis === nd) {
      const rec = (i: number, at: number) => {
        if (i === nd) {
          grid[at] = cnt;
          return;
        }
        for (let v = box[i]![0]!; v < box[i]![1]!; v++) rec(i + 1, at + v * strides[i]!);
      };
      rec(0, 0);
      cnt++;
      return;
    }
    for (const r of ranges[axis]!) fill(axis + 1, [...box, r]);
  };
  fill(0, []);
  const order = windowOrder(padded, window);
  return Float32Array.from(order, (at) => grid[at]!);
}

/** WindowAttention's relative_position_index for the full window, its first n × n (MONAI's `[:n, :n]`). */
function swinRelativeIndex(fullWindow: readonly number[], n: number): BigInt64Array {
  const nd = fullWindow.length;
  const N = prod(fullWindow);
  const coords = (t: number) => {
    const c: number[] = [];
    for (let i = nd - 1, r = t; i >= 0; i--) {
      c[i] = r % fullWindow[i]!;
      r = Math.floor(r / fullWindow[i]!);
    }
    return c;
  };
  const mult = stridesOf(fullWindow.map((w) => 2 * w - 1));
  const out = new BigInt64Array(n * n);
  if (n > N) throw new Error(`internal: a window of ${n} tokens over a ${N}-token table`);
  for (let i = 0; i < n; i++) {
    const ci = coords(i);
    for (let j = 0; j < n; j++) {
      const cj = coords(j);
      let idx = 0;
      for (let a = 0; a < nd; a++) idx += (ci[a]! - cj[a]! + fullWindow[a]! - 1) * mult[a]!;
      out[i * n + j] = BigInt(idx);
    }
  }
  return out;
}

/** What a SwinUNETR's stages share: MONAI 1.5's arguments (1.4's fixed values before), and which patch merging. */
interface SwinOptions {
  /** The configured window (7 before MONAI 1.5). */
  window: number[];
  qkvBias: boolean;
  mlpRatio: number;
  /** "merging" (PatchMerging), as MONAI ≤ 1.4 ("v1-1.4": two sub-grids repeated) or 1.5 computes it; or "mergingv2". */
  merging: "v1-1.4" | "v1" | "v2";
}

interface SwinStage {
  path: string;
  /** Channels and heads. */
  c: number;
  heads: number;
  depth: number;
  /** The stage's spatial size (before its patch merging). */
  size: number[];
}

/**
 * The rows of a stage's tokens [T, c] that window_partition gathers after padding the grid to whole
 * windows and rolling it by −shift (torch.roll: the window grid's position p holds the token at
 * (p + shift) mod padded), each window's tokens in turn; T (a zero row) where that is padding. And
 * back — window_reverse, the roll by +shift and the crop — each token's row among the windows'.
 */
function swinWindowRows(
  size: readonly number[],
  window: readonly number[],
  shift: readonly number[],
): { rows: BigInt64Array; back: BigInt64Array } {
  const padded = size.map((L, i) => Math.ceil(L / window[i]!) * window[i]!);
  const order = windowOrder(padded, window);
  const T = prod(size);
  const pStr = stridesOf(padded),
    sStr = stridesOf(size);
  const rows = new BigInt64Array(order.length),
    back = new BigInt64Array(T);
  for (let r = 0; r < order.length; r++) {
    let q = 0,
      inside = true;
    for (let i = 0; i < padded.length; i++) {
      const v = ((Math.floor(order[r]! / pStr[i]!) % padded[i]!) + shift[i]!) % padded[i]!;
      if (v >= size[i]!) inside = false;
      q += v * sStr[i]!;
    }
    rows[r] = BigInt(inside ? q : T);
    if (inside) back[q] = BigInt(r);
  }
  return { rows, back };
}

/** Patch merging's gather: for each token of the half-size grid, the rows of its sub-grids in `offsets`' order. */
function mergeRows(size: readonly number[], offsets: readonly (readonly number[])[]): BigInt64Array {
  const half = size.map((v) => v / 2);
  const hStr = stridesOf(half),
    sStr = stridesOf(size);
  const out = new BigInt64Array(prod(half) * offsets.length);
  for (let t = 0; t < prod(half); t++)
    offsets.forEach((o, k) => {
      let q = 0;
      for (let i = 0; i < size.length; i++) q += (2 * (Math.floor(t / hStr[i]!) % half[i]!) + o[i]!) * sStr[i]!;
      out[t * offsets.length + k] = BigInt(q);
    });
  return out;
}

/**
 * The 3-D patch merging's sub-grid offsets, in its concatenation order: PatchMergingV2's
 * itertools.product; PatchMerging's own list — before MONAI 1.5 with (0, 1, 0) and (0, 0, 1) twice
 * where (1, 1, 0) and (0, 1, 1) belong (fixed in 1.5, MONAI PR 8285).
 */
const MERGING_3D: Record<SwinOptions["merging"], number[][]> = {
  "v1-1.4": [
    [0, 0, 0],
    [1, 0, 0],
    [0, 1, 0],
    [0, 0, 1],
    [1, 0, 1],
    [0, 1, 0],
    [0, 0, 1],
    [1, 1, 1],
  ],
  v1: [
    [0, 0, 0],
    [1, 0, 0],
    [0, 1, 0],
    [0, 0, 1],
    [1, 1, 0],
    [1, 0, 1],
    [0, 1, 1],
    [1, 1, 1],
  ],
  v2: [0, 1].flatMap((i) => [0, 1].flatMap((j) => [0, 1].map((k) => [i, j, k]))),
};

/**
 * What bhsd will hold of a SwinUNETR at input size `s`: its first stage's window tables (integer
 * tensors, at most 2^20 entries) and the attention biases and masks folded at load (at most 4 GiB;
 * MONAI makes them each forward).
 */
function swinBounds(s: number[], heads: number[], depths: number[], window: number[], where: string, what: string) {
  let bytes = 0;
  for (let i = 0; i < 4; i++) {
    const size = s.map((v) => v >> (i + 1));
    const w = swinWindow(
      size,
      window,
      window.map((q) => Math.floor(q / 2)),
    );
    const padded = size.map((L, a) => Math.ceil(L / w.window[a]!) * w.window[a]!);
    const n = prod(w.window),
      nW = prod(padded) / n;
    if (i === 0 && prod(padded) > 1 << 20)
      throw monaiError(
        where,
        `${what} [${s.join(", ")}] gives a first stage of ${prod(padded)} tokens in windows; bhsd indexes at most 2^20 (a window of about 200³)`,
      );
    bytes += depths[i]! * heads[i]! * n * n * 4;
    if (depths[i]! > 1 && w.shift.some((q) => q > 0)) bytes += nW * n * n * 4;
  }
  if (bytes > 4 * 2 ** 30)
    throw monaiError(
      where,
      `${what} [${s.join(", ")}]: its attention biases and masks would hold ${(bytes / 2 ** 30).toFixed(1)} GiB (bhsd holds at most 4 GiB of them): a smaller window, fewer heads or blocks`,
    );
}

/** One BasicLayer (its blocks, then its patch merging) on a channels-last [1, …size, c]; returns [1, …size/2, 2c]. */
function swinStage(b: GraphBuilder, st: SwinStage, x: string, opt: SwinOptions): string {
  if (st.depth === 0) return patchMerging(b, st, x, opt);
  const full = opt.window;
  const { window, shift } = swinWindow(
    st.size,
    full,
    full.map((w) => Math.floor(w / 2)),
  );
  const padded = st.size.map((L, i) => Math.ceil(L / window[i]!) * window[i]!);
  const counts = padded.map((L, i) => L / window[i]!);
  const nW = prod(counts),
    n = prod(window),
    c = st.c,
    hd = c / st.heads;
  const shifted = shift.some((s) => s > 0);
  // the attention mask of the shifted blocks ([nW, 1, n, n]: 0 within a region, −100 across), from each token's region
  let mask: string | null = null;
  if (shifted && st.depth > 1) {
    const regions = swinMaskRegions(padded, window, shift);
    const ri = b.constant(`${st.path}.mask_regions`, [nW, 1, n, 1], regions);
    const rj = b.constant(`${st.path}.mask_regions`, [nW, 1, 1, n], regions);
    const differ = b.node("Sign", [b.node("Abs", [b.node("Sub", [rj, ri], `${st.path}.mask`)], `${st.path}.mask`)], `${st.path}.mask`);
    mask = b.node("Mul", [differ, b.constant(`${st.path}.mask`, [], new Float32Array([-100]))], `${st.path}.mask`);
  }
  const relIndex = b.constant(`${st.path}.relative_position_index`, [n * n], swinRelativeIndex(full, n));
  const tableRows = prod(full.map((w) => 2 * w - 1));
  const scale = Math.fround(hd ** -0.5);
  const padEnd = padded.map((p, i) => p - st.size[i]!);
  const T = prod(st.size);
  const zeroRow = b.constant(`${st.path}.zero_row`, [1, c], new Float32Array(c));
  const rowsOf = (sh: number[], name: string) => {
    const r = swinWindowRows(st.size, window, sh);
    return { rows: b.constant(`${name}.rows`, [r.rows.length], r.rows), back: b.constant(`${name}.back`, [T], r.back) };
  };
  const plainRows = rowsOf(
    shift.map(() => 0),
    `${st.path}.windows`,
  );
  const shiftedRows = shifted && st.depth > 1 ? rowsOf(shift, `${st.path}.shifted_windows`) : undefined;
  for (let j = 0; j < st.depth; j++) {
    const p = `${st.path}.blocks.${j}`;
    const shiftHere = j % 2 === 1 && shifted;
    const shortcut = x;
    // pad, roll by −shift and window_partition as one gather of token rows (padding: a zero row)
    const tokens = b.reshape(b.layerNorm(`${p}.norm1`, x, c), [T, c], `${p}.tokens`);
    const source = padEnd.some((q) => q > 0) ? b.node("Concat", [tokens, zeroRow], `${p}.pad`, { axis: 0 }) : tokens;
    const rows = shiftHere ? shiftedRows! : plainRows;
    const windows = b.node("Gather", [source, rows.rows], `${p}.windows`, { axis: 0 });
    // WindowAttention: q scaled before q·kᵀ, the relative position bias, the shifted blocks' mask
    const qkv = b.linear(`${p}.attn.qkv`, windows, c, 3 * c, opt.qkvBias);
    const [q, k, v] = splitQkv(b, qkv, nW, n, st.heads, hd, `${p}.attn`);
    const qs = b.node("Mul", [q, b.constant(`${p}.attn.scale`, [], new Float32Array([scale]))], `${p}.attn.q_scaled`);
    const table = b.param([`${p}.attn.relative_position_bias_table`], [tableRows, st.heads]);
    b.unused.push(`${p}.attn.relative_position_index`);
    const bias = b.transpose(
      b.reshape(b.node("Gather", [table, relIndex], `${p}.attn.rel_bias`, { axis: 0 }), [n, n, st.heads], `${p}.attn.rel_bias`),
      [2, 0, 1],
      `${p}.attn.rel_bias`,
    );
    const o = attend(b, qs, k, v, { batch: nW, heads: st.heads, n, hd }, `${p}.attn`, null, shiftHere && mask ? [bias, mask] : [bias]);
    const proj = b.linear(`${p}.attn.proj`, b.reshape(o, [nW * n, c], `${p}.attn.rows`), c, c, true);
    // window_reverse, roll back and crop: each token's row among the windows'
    const y = b.reshape(b.node("Gather", [proj, rows.back], `${p}.reverse`, { axis: 0 }), [1, ...st.size, c], `${p}.reverse`);
    x = b.add(shortcut, y, `${p}.residual1`);
    // (int(dim × mlp_ratio), as Python truncates it)
    const hidden = Math.trunc(c * opt.mlpRatio);
    let m = b.linear(`${p}.mlp.linear1`, b.layerNorm(`${p}.norm2`, x, c), c, hidden, true);
    m = b.linear(`${p}.mlp.linear2`, b.node("Gelu", [m], `${p}.mlp.gelu`), hidden, c, true);
    x = b.add(x, m, `${p}.residual2`);
  }
  return patchMerging(b, st, x, opt);
}

/** PatchMerging(V2): the 2^dims sub-grids side by side in MONAI's order, norm, reduction; [1, …size/2, 2c]. */
function patchMerging(b: GraphBuilder, st: SwinStage, x: string, opt: SwinOptions): string {
  const { c } = st;
  const T = prod(st.size);
  const offsets =
    b.dims === 2
      ? [
          [0, 0],
          [1, 0],
          [0, 1],
          [1, 1],
        ]
      : MERGING_3D[opt.merging];
  const d = `${st.path}.downsample`;
  const half = st.size.map((v) => v / 2);
  const picked = b.node(
    "Gather",
    [b.reshape(x, [T, c], `${d}.tokens`), b.constant(`${d}.rows`, [prod(half) * offsets.length], mergeRows(st.size, offsets))],
    `${d}.cat`,
    { axis: 0 },
  );
  const cat = b.reshape(picked, [1, ...half, offsets.length * c], `${d}.cat`);
  const width = offsets.length * c;
  return b.linear(`${d}.reduction`, b.layerNorm(`${d}.norm`, cat, width), width, 2 * c, false);
}

export function buildSwinUNETR(a: Record<string, unknown>, where: string, size?: readonly number[]): MonaiNetwork {
  const k = kwargs(
    a,
    {
      img_size: null,
      depths: [2, 2, 2, 2],
      num_heads: [3, 6, 12, 24],
      feature_size: 24,
      norm_name: "instance",
      drop_rate: 0,
      attn_drop_rate: 0,
      dropout_path_rate: 0,
      normalize: true,
      use_checkpoint: false,
      spatial_dims: 3,
      downsample: "merging",
      use_v2: false,
      // MONAI 1.5's
      patch_size: 2,
      window_size: 7,
      qkv_bias: true,
      mlp_ratio: 4.0,
      patch_norm: false,
    },
    ["in_channels", "out_channels"],
    "SwinUNETR",
    where,
  );
  // img_size: MONAI ≤ 1.4 (required there, removed in 1.5); 1.5 added the others and fixed PatchMerging's order
  const since15 = ["patch_size", "window_size", "qkv_bias", "mlp_ratio", "patch_norm"].filter((n) => Object.hasOwn(a, n));
  if (Object.hasOwn(a, "img_size") && a.img_size === null)
    throw monaiError(where, "SwinUNETR's img_size is null: give a size (MONAI ≤ 1.4) or leave the argument out (MONAI 1.5)");
  const before15 = k.img_size !== null;
  if (before15 && since15.length)
    throw monaiError(
      where,
      `SwinUNETR's img_size (MONAI 1.4 and before; removed in 1.5) and ${since15.join(", ")} (MONAI 1.5's) are not arguments of one MONAI version`,
    );
  const dims = spatialDims(k.spatial_dims, where, "SwinUNETR");
  const cin = posInt(k.in_channels, where, "SwinUNETR's in_channels"),
    cout = posInt(k.out_channels, where, "SwinUNETR's out_channels");
  // (img_size: only checked, as MONAI ≤ 1.4 checks it; the graph's size is the sliding window's)
  if (k.img_size !== null) inputSize(perAxis(k.img_size, dims, where, "SwinUNETR's img_size"), dims, 32, where, "SwinUNETR's img_size");
  for (const r of ["drop_rate", "attn_drop_rate", "dropout_path_rate"]) rate(k[r], where, `SwinUNETR's ${r}`);
  const f = posInt(k.feature_size, where, "SwinUNETR's feature_size", 4096);
  if (f % 12) throw monaiError(where, `SwinUNETR's feature_size must be divisible by 12, got ${f}`);
  const depths = intList(k.depths, where, "SwinUNETR's depths", 0),
    heads = intList(k.num_heads, where, "SwinUNETR's num_heads");
  if (depths.length !== 4 || heads.length !== 4)
    throw monaiError(
      where,
      `SwinUNETR's depths and num_heads must have 4 entries (its four stages), got ${depths.length} and ${heads.length}`,
    );
  if (depths.some((d) => d > 64)) throw monaiError(where, `SwinUNETR's depths must be at most 64 blocks a stage, got ${brief(depths)}`);
  heads.forEach((h, i) => {
    if ((f << i) % h) throw monaiError(where, `SwinUNETR's num_heads[${i}] = ${h} does not divide stage ${i + 1}'s ${f << i} channels`);
  });
  const norm = parseNorm(k.norm_name, null, where, "SwinUNETR's norm_name");
  if (!norm) throw monaiError(where, `SwinUNETR's norm_name must name a norm (instance, batch, group), got ${brief(k.norm_name)}`);
  const normalize = flag(k.normalize, where, "SwinUNETR's normalize");
  flag(k.use_checkpoint, where, "SwinUNETR's use_checkpoint");
  const v2 = flag(k.use_v2, where, "SwinUNETR's use_v2");
  if (k.downsample !== "merging" && k.downsample !== "mergingv2")
    throw monaiError(where, `SwinUNETR's downsample must be "merging" or "mergingv2", got ${brief(k.downsample)}`);
  if (k.patch_size !== 2)
    throw monaiError(
      where,
      `SwinUNETR's patch_size ${brief(k.patch_size)}: bhsd builds 2 (its decoder up-samples by 2 back to the input's size only from there)`,
    );
  const opts: SwinOptions = {
    window: perAxis(k.window_size, dims, where, "SwinUNETR's window_size"),
    qkvBias: flag(k.qkv_bias, where, "SwinUNETR's qkv_bias"),
    mlpRatio: (() => {
      const r = k.mlp_ratio;
      if (typeof r !== "number" || !(r > 0 && r <= 64))
        throw monaiError(where, `SwinUNETR's mlp_ratio must be a number in (0, 64], got ${brief(r)}`);
      if (heads.some((_, i) => Math.trunc((f << i) * r) < 1))
        throw monaiError(where, `SwinUNETR's mlp_ratio ${r} leaves an MLP without units`);
      return r;
    })(),
    merging: k.downsample === "mergingv2" ? "v2" : before15 ? "v1-1.4" : "v1",
  };
  // (a window's tokens attend to each other: its relative-position index has n² entries, an
  // integer tensor, which bhsd holds up to 2^20 values)
  if (opts.window.some((w) => w > 32) || prod(opts.window) > 1024)
    throw monaiError(where, `SwinUNETR's window_size must be at most 32 a side and 1024 voxels, got ${brief(k.window_size)}`);
  const patchNorm = flag(k.patch_norm, where, "SwinUNETR's patch_norm");
  // the graph's size: the sliding window's (img_size is only checked, as MONAI does); without one,
  // 64 a side (a first build, for the channels and the arguments' checks)
  const what = "SwinUNETR's input size (the sliding window, patchSize)";
  const s = inputSize(size ?? Array<number>(dims).fill(64), dims, 32, where, what);
  if (size) swinBounds(s, heads, depths, opts.window, where, what);
  if (size && norm.kind === "instance" && !norm.runningStats && s.every((v) => v === 32))
    throw monaiError(
      where,
      `SwinUNETR at [${s.join(", ")}] reaches a bottleneck of one voxel, which PyTorch's instance norm refuses to normalise: give a window of 64 on some axis`,
    );

  const b = new GraphBuilder(dims, where);
  const k3 = Array<number>(dims).fill(3),
    ones = Array<number>(dims).fill(1),
    twos = Array<number>(dims).fill(2);
  const block = (path: string, x: string, ci: number, co: number, nm: NormSpec = norm) =>
    unetBlock(b, nm, LRELU, path, x, ci, co, k3, ones, true);
  // swinViT: patch embedding (a 2-stride conv), four stages; each stage's output through proj_out
  let x0 = b.conv("swinViT.patch_embed.proj", "input", { cin, cout: f, kernel: twos, stride: twos, pad: ones.map(() => 0), bias: true });
  // (patch_norm: PatchEmbed's LayerNorm over the channels)
  if (patchNorm) x0 = toFirst(b, b.layerNorm("swinViT.patch_embed.norm", toLast(b, x0, "swinViT.patch_embed"), f), "swinViT.patch_embed");
  const projOut = (xFirst: string, xLast: string | null, c: number, name: string) =>
    normalize ? toFirst(b, b.layerNorm(null, xLast ?? toLast(b, xFirst, name), c, `${name}.proj_out`), name) : xFirst;
  const hidden = [projOut(x0, null, f, "swinViT.hidden0")];
  let x = x0;
  const instance = parseNorm("instance", null, where, "SwinUNETR's use_v2 blocks")!;
  for (let i = 0; i < 4; i++) {
    const c = f << i;
    if (v2) x = block(`swinViT.layers${i + 1}c.0.layer`, x, c, c, instance);
    const stage: SwinStage = { path: `swinViT.layers${i + 1}.0`, c, heads: heads[i]!, depth: depths[i]!, size: s.map((v) => v >> (i + 1)) };
    const y = swinStage(b, stage, toLast(b, x, stage.path), opts);
    x = toFirst(b, y, stage.path);
    hidden.push(projOut(x, y, 2 * c, `swinViT.hidden${i + 1}`));
  }
  const enc0 = block("encoder1.layer", "input", cin, f);
  const enc1 = block("encoder2.layer", hidden[0]!, f, f);
  const enc2 = block("encoder3.layer", hidden[1]!, 2 * f, 2 * f);
  const enc3 = block("encoder4.layer", hidden[2]!, 4 * f, 4 * f);
  const dec4 = block("encoder10.layer", hidden[4]!, 16 * f, 16 * f);
  const dec3 = unetrUp(b, norm, "decoder5", dec4, hidden[3]!, 16 * f, 8 * f, true);
  const dec2 = unetrUp(b, norm, "decoder4", dec3, enc3, 8 * f, 4 * f, true);
  const dec1 = unetrUp(b, norm, "decoder3", dec2, enc2, 4 * f, 2 * f, true);
  const dec0 = unetrUp(b, norm, "decoder2", dec1, enc1, 2 * f, f, true);
  const top = unetrUp(b, norm, "decoder1", dec0, enc0, f, f, true);
  const out = outBlock(b, top, f, cout);
  return { ...finish(b, "SwinUNETR", k, dims, cin, cout, out, divisorOf(dims, [Array<number>(dims).fill(32)])), inputSize: s };
}

// ---------------------------------------------------------------------------------------------
// UNETR

export function buildUNETR(a0: Record<string, unknown>, where: string): MonaiNetwork {
  // (MONAI ≤ 1.3 called proj_type `pos_embed`; bundles of that time still say so)
  const { pos_embed: posEmbed, ...a } = a0;
  if (posEmbed !== undefined) {
    if (a.proj_type !== undefined) throw monaiError(where, "UNETR has both pos_embed (MONAI ≤ 1.3's name) and proj_type: give one");
    a.proj_type = posEmbed;
  }
  const k = kwargs(
    a,
    {
      feature_size: 16,
      hidden_size: 768,
      mlp_dim: 3072,
      num_heads: 12,
      proj_type: "conv",
      norm_name: "instance",
      conv_block: true,
      res_block: true,
      dropout_rate: 0,
      spatial_dims: 3,
      qkv_bias: false,
      save_attn: false,
    },
    ["in_channels", "out_channels", "img_size"],
    "UNETR",
    where,
  );
  const dims = spatialDims(k.spatial_dims, where, "UNETR");
  const cin = posInt(k.in_channels, where, "UNETR's in_channels"),
    cout = posInt(k.out_channels, where, "UNETR's out_channels");
  // (16-voxel patches: MONAI's decoder gives back the input's size only from a multiple of 16)
  const img = inputSize(perAxis(k.img_size, dims, where, "UNETR's img_size"), dims, 16, where, "UNETR's img_size");
  if (prod(img) > 1 << 25) throw monaiError(where, `UNETR's img_size [${img.join(", ")}] is more than 2^25 voxels (320³)`);
  const f = posInt(k.feature_size, where, "UNETR's feature_size", 4096);
  const hs = posInt(k.hidden_size, where, "UNETR's hidden_size", 1 << 14);
  const heads = posInt(k.num_heads, where, "UNETR's num_heads", 1024);
  if (hs % heads) throw monaiError(where, `UNETR's hidden_size ${hs} must be divisible by num_heads ${heads}`);
  if (!Number.isInteger(k.mlp_dim) || (k.mlp_dim as number) < 0 || (k.mlp_dim as number) > 1 << 16)
    throw monaiError(where, `UNETR's mlp_dim must be a non-negative integer, got ${brief(k.mlp_dim)}`);
  const mlp = (k.mlp_dim as number) || hs;
  if (k.proj_type !== "conv" && k.proj_type !== "perceptron")
    throw monaiError(where, `UNETR's proj_type must be "conv" or "perceptron", got ${brief(k.proj_type)}`);
  const norm = parseNorm(k.norm_name, null, where, "UNETR's norm_name");
  if (!norm) throw monaiError(where, `UNETR's norm_name must name a norm (instance, batch, group), got ${brief(k.norm_name)}`);
  const convBlock = flag(k.conv_block, where, "UNETR's conv_block"),
    res = flag(k.res_block, where, "UNETR's res_block"),
    qkvBias = flag(k.qkv_bias, where, "UNETR's qkv_bias");
  flag(k.save_attn, where, "UNETR's save_attn");
  rate(k.dropout_rate, where, "UNETR's dropout_rate");

  const b = new GraphBuilder(dims, where);
  const k3 = Array<number>(dims).fill(3),
    ones = Array<number>(dims).fill(1),
    twos = Array<number>(dims).fill(2),
    p16 = Array<number>(dims).fill(16);
  const feat = img.map((v) => v / 16);
  const n = prod(feat),
    hd = hs / heads;
  // ViT: patch embedding (a 16-stride conv, or patches flattened into a Linear), position embeddings, 12 blocks
  const pe = "vit.patch_embedding";
  let t: string;
  if (k.proj_type === "conv") {
    const e = b.conv(`${pe}.patch_embeddings`, "input", { cin, cout: hs, kernel: p16, stride: p16, pad: ones.map(() => 0), bias: true });
    t = b.transpose(b.reshape(e, [1, hs, n], `${pe}.flatten`), [0, 2, 1], `${pe}.tokens`);
  } else {
    // "b c (h p1) (w p2) (d p3) -> b (h w d) (p1 p2 p3 c)"
    const split = b.reshape("input", [1, cin, ...feat.flatMap((q) => [q, 16])], `${pe}.patches`);
    const perm = dims === 3 ? [0, 2, 4, 6, 3, 5, 7, 1] : [0, 2, 4, 3, 5, 1];
    const flat = b.reshape(b.transpose(split, perm, `${pe}.patches`), [1, n, cin * 16 ** dims], `${pe}.patches`);
    t = b.linear(`${pe}.patch_embeddings.1`, flat, cin * 16 ** dims, hs, true);
  }
  t = b.add(t, b.param([`${pe}.position_embeddings`], [1, n, hs]), `${pe}.position`);
  const hidden: string[] = [];
  for (let i = 0; i < 12; i++) {
    const p = `vit.blocks.${i}`;
    const qkv = b.linear(`${p}.attn.qkv`, b.layerNorm(`${p}.norm1`, t, hs), hs, 3 * hs, qkvBias);
    const [q, kk, v] = splitQkv(b, qkv, 1, n, heads, hd, `${p}.attn`);
    // SABlock: (q·kᵀ) × scale, softmax, · v
    const o = attend(b, q, kk, v, { batch: 1, heads, n, hd }, `${p}.attn`, Math.fround(hd ** -0.5), []);
    t = b.add(t, b.linear(`${p}.attn.out_proj`, o, hs, hs, true), `${p}.residual1`);
    let m = b.linear(`${p}.mlp.linear1`, b.layerNorm(`${p}.norm2`, t, hs), hs, mlp, true);
    m = b.linear(`${p}.mlp.linear2`, b.node("Gelu", [m], `${p}.mlp.gelu`), mlp, hs, true);
    t = b.add(t, m, `${p}.residual2`);
    hidden.push(t);
    // (TransformerBlock's cross-attention, built but unused without with_cross_attention)
    b.unused.push(
      `${p}.norm_cross_attn.weight`,
      `${p}.norm_cross_attn.bias`,
      `${p}.cross_attn.out_proj.weight`,
      `${p}.cross_attn.out_proj.bias`,
    );
    for (const w of ["to_q", "to_k", "to_v"])
      b.unused.push(`${p}.cross_attn.${w}.weight`, ...(qkvBias ? [`${p}.cross_attn.${w}.bias`] : []));
  }
  const last = b.layerNorm("vit.norm", t, hs);
  // proj_feat: tokens [1, n, hidden] → [1, hidden, …feat]
  const proj = (x: string, name: string) =>
    b.transpose(b.reshape(x, [1, ...feat, hs], name), dims === 3 ? [0, 4, 1, 2, 3] : [0, 3, 1, 2], name);
  const prUp = (path: string, x: string, co: number, layers: number) => {
    let y = transposedConv(b, `${path}.transp_conv_init`, x, hs, co, twos);
    for (let j = 0; j < layers; j++) {
      if (convBlock) {
        y = transposedConv(b, `${path}.blocks.${j}.0`, y, co, co, twos);
        y = unetBlock(b, norm, LRELU, `${path}.blocks.${j}.1`, y, co, co, k3, ones, res);
      } else y = transposedConv(b, `${path}.blocks.${j}`, y, co, co, twos);
    }
    return y;
  };
  const enc1 = unetBlock(b, norm, LRELU, "encoder1.layer", "input", cin, f, k3, ones, res);
  const enc2 = prUp("encoder2", proj(hidden[3]!, "proj3"), 2 * f, 2);
  const enc3 = prUp("encoder3", proj(hidden[6]!, "proj6"), 4 * f, 1);
  const enc4 = prUp("encoder4", proj(hidden[9]!, "proj9"), 8 * f, 0);
  const dec3 = unetrUp(b, norm, "decoder5", proj(last, "proj_last"), enc4, hs, 8 * f, res);
  const dec2 = unetrUp(b, norm, "decoder4", dec3, enc3, 8 * f, 4 * f, res);
  const dec1 = unetrUp(b, norm, "decoder3", dec2, enc2, 4 * f, 2 * f, res);
  const top = unetrUp(b, norm, "decoder2", dec1, enc1, 2 * f, f, res);
  const out = outBlock(b, top, f, cout);
  return { ...finish(b, "UNETR", k, dims, cin, cout, out, divisorOf(dims, [p16])), inputSize: img };
}
