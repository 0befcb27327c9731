/**
 * Self-attention fused at load: the nodes a transformer's attention block exports as (MONAI's
 * SABlock in UNETR, SwinUNETR's WindowAttention, and the graphs bhsd builds for them from a
 * state_dict) become one node the native backend runs in a single pass (native/include/bhsd/
 * attention.hpp), its scores never leaving the cache:
 *
 *   qkv → Reshape [B, n, 3, H, hd] → Transpose [2, 0, 3, 1, 4] → Gather 0 / 1 / 2 (q, k, v)
 *   [q → Mul by a scalar]                                         (SwinUNETR's q · scale)
 *   MatMul(q, Transpose(k, [0, 1, 3, 2]))  or  Einsum "blxd,blyd->blxy"(q, k)
 *   [Mul by a scalar]                                             (SABlock's scores · scale)
 *   Add of constants, with Reshapes between that keep the last two axes   (bias, window masks)
 *   Softmax over the last axis of [B, H, n, n]   [→ a Cast to float]
 *   MatMul(·, v)  or  Einsum "bhxy,bhyd->bhxd"
 *   Transpose [0, 2, 1, 3] → Reshape (to [B, n, H·hd] or any shape of that size)
 *
 * Before the first Reshape, the qkv projection may be rotated as bhsd's Primus builder writes a
 * rotary embedding (see ropeOf): the kernel then rotates q and k as it loads them.
 *
 * Every value between the first Reshape and the last is read by the next node alone and is not a
 * graph output; the shapes, scales and constants are initializers (after constant folding). A
 * backend without the fused kernel (ts, cuda) runs the nodes it replaced: the model plans both.
 */
import { consumersOf, otherInput, producersOf, soleReader, type GraphNode, type OnnxTensor } from "./graph.js";
import { reshapeShape } from "./infer.js";

/** The op type of a fused node (not an ONNX op: a file naming it is refused at parse). */
export const ATTENTION_OP = "bhsd.SelfAttention";

export interface FusedAttention {
  /** [batch, n, heads, hd]: qkv holds batch · n · 3 · heads · hd values. */
  shape: [number, number, number, number];
  scale: number;
  /** Whether q is multiplied by scale before the products (else the products after). */
  scaleQ: boolean;
  /**
   * The constants added to the scores, in order: an input of the node by name; item (b, h)'s n × n
   * block at offsets[b·H + h] (−1: all zeros, skipped), row i at i · rowStride (0 or n).
   */
  extras: { name: string; offsets: Float64Array; rowStride: number }[];
  /** The output's shape (the last Reshape's). */
  outShape: number[];
  /**
   * A rotary position embedding applied to q and k before the products, where the graph rotates the
   * qkv projection first (bhsd's Primus): [n, 2·hd], token j's cos then signed sin (see ropeOf).
   */
  rope?: Float32Array;
}

const sameInts = (a: readonly number[] | undefined, b: readonly number[]) => !!a && a.length === b.length && a.every((v, i) => v === b[i]);
const prod = (xs: readonly number[]) => xs.reduce((p, q) => p * q, 1);

/** Einsum equations of the scores and of the weighted sum, letters as the exporter chose them. */
const SCORES_EQ = /^([a-zA-Z])([a-zA-Z])([a-zA-Z])([a-zA-Z]),\1\2([a-zA-Z])\4->\1\2\3\5$/;
const WEIGHTED_EQ = /^([a-zA-Z])([a-zA-Z])([a-zA-Z])([a-zA-Z]),\1\2\4([a-zA-Z])->\1\2\3\5$/;
/** (Einsum's labels are case-sensitive: "i" and "I" are two axes.) */
const distinct = (m: RegExpMatchArray) => new Set(m.slice(1)).size === m.length - 1;

export function fuseAttention(
  nodes: GraphNode[],
  graphOutputs: string[],
  inits: ReadonlyMap<string, OnnxTensor>,
  opset: number,
): GraphNode[] {
  const consumers = consumersOf(nodes, graphOutputs);
  const producer = producersOf(nodes);
  const only = soleReader(nodes, consumers);
  const once = (v: string | undefined) => !!v && consumers.get(v) === 1;
  const ints = (name: string | undefined) => (name ? inits.get(name)?.ints : undefined);
  /** A float initializer of one value, of rank ≤ `rank` (so that it broadcasts without adding axes). */
  const scalar = (name: string | undefined, rank: number) => {
    const t = name ? inits.get(name) : undefined;
    return t?.f32 && t.f32.length === 1 && t.dims.length <= rank ? t.f32[0]! : undefined;
  };
  const other = otherInput;
  const replace = new Map<GraphNode, GraphNode>(),
    drop = new Set<GraphNode>();

  /** The fused node, and the final Reshape whose place it takes (every node it replaces runs before). */
  const match = (sm: GraphNode): { fused: GraphNode; at: GraphNode } | undefined => {
    // the weighted sum, and the output's Transpose → Reshape
    let smOut = sm.outputs[0];
    if (!once(smOut)) return undefined;
    // (torch.onnx writes attn.to(v.dtype) as a Cast to float, which changes nothing)
    const cast = only(smOut, "Cast");
    if (cast) {
      if (cast.attrs.to !== 1 || !once(cast.outputs[0])) return undefined;
      smOut = cast.outputs[0];
    }
    const pv = only(smOut, "MatMul") ?? only(smOut, "Einsum");
    if (!pv || pv.inputs.length !== 2 || pv.inputs[0] !== smOut) return undefined;
    if (pv.opType === "Einsum") {
      const m = String(pv.attrs.equation ?? "")
        .replace(/\s+/g, "")
        .match(WEIGHTED_EQ);
      if (!m || !distinct(m)) return undefined;
    }
    if (!once(pv.outputs[0])) return undefined;
    const tr = only(pv.outputs[0], "Transpose");
    if (!tr || !sameInts(tr.attrs.perm as number[] | undefined, [0, 2, 1, 3]) || !once(tr.outputs[0])) return undefined;
    const rs = only(tr.outputs[0], "Reshape");
    const outSpec = ints(rs?.inputs[1]);
    if (!rs || !outSpec || rs.inputs[0] !== tr.outputs[0]) return undefined;

    // back from the softmax to the scores: Adds of constants, Reshapes, a scalar Mul
    const chain: GraphNode[] = [];
    let cur: string | undefined = sm.inputs[0];
    let scores: GraphNode | undefined;
    for (let guard = 0; guard < 16 && !scores; guard++) {
      const p: GraphNode | undefined = cur ? producer.get(cur) : undefined;
      if (!p || !once(cur) || p.fusedAct || p.fusedNorm || p.fusedAdd) return undefined;
      if (p.opType === "MatMul" || p.opType === "Einsum") scores = p;
      else if (p.opType === "Add" || p.opType === "Mul" || p.opType === "Reshape") {
        chain.unshift(p);
        cur = p.opType === "Reshape" ? p.inputs[0] : p.inputs.find((i: string) => !!i && !inits.has(i));
      } else return undefined;
    }
    if (!scores || scores.inputs.length !== 2 || !once(scores.outputs[0])) return undefined;
    let qIn = scores.inputs[0]!,
      kIn = scores.inputs[1]!;
    const inner: GraphNode[] = [];
    /** A Mul of `name` by a scalar constant: the scalar and the other operand (else undefined; a Mul of another kind: null). */
    const scaled = (name: string) => {
      const m = producer.get(name);
      if (!m || m.opType !== "Mul") return undefined;
      const x = m.inputs.find((i) => !inits.has(i));
      const s = x === undefined ? undefined : scalar(other(m, x), 4);
      if (x === undefined || s === undefined || !once(name) || m.fusedAct) return null;
      inner.push(m);
      return { s, x };
    };
    // (torch's scaled_dot_product_attention exports scale kᵀ as well as q, each by √scale)
    let scaleK: number | undefined;
    if (scores.opType === "Einsum") {
      const m = String(scores.attrs.equation ?? "")
        .replace(/\s+/g, "")
        .match(SCORES_EQ);
      if (!m || !distinct(m)) return undefined;
    } else {
      const km = scaled(kIn);
      if (km === null) return undefined;
      if (km) {
        scaleK = km.s;
        kIn = km.x;
      }
      const kt = producer.get(kIn);
      if (!kt || kt.opType !== "Transpose" || !sameInts(kt.attrs.perm as number[] | undefined, [0, 1, 3, 2]) || !once(kIn))
        return undefined;
      inner.push(kt);
      kIn = kt.inputs[0]!;
    }
    // q multiplied by a scalar first (SwinUNETR)
    let scaleQ: number | undefined;
    const qm = scaled(qIn);
    if (qm === null) return undefined;
    if (qm) {
      scaleQ = qm.s;
      qIn = qm.x;
    }
    // (q · a times kᵀ · b is q · (a · b) times kᵀ)
    if (scaleK !== undefined) scaleQ = (scaleQ ?? 1) * scaleK;
    // q, k, v: Gathers 0, 1, 2 on axis 0 of one Transpose [2, 0, 3, 1, 4] of a Reshape [B, n, 3, H, hd]
    const gathers = [qIn, kIn, pv.inputs[1]!].map((name) => producer.get(name));
    const vIn = pv.inputs[1]!;
    if (
      !gathers.every((g, i) => g && g.opType === "Gather" && ((g.attrs.axis as number | undefined) ?? 0) === 0 && once([qIn, kIn, vIn][i]))
    )
      return undefined;
    const idx = gathers.map((g) => {
      const t = inits.get(g!.inputs[1]!);
      return t?.ints && t.dims.length === 0 ? t.ints[0] : undefined;
    });
    if (!sameInts(idx as number[], [0, 1, 2])) return undefined;
    const tIn = gathers[0]!.inputs[0]!;
    if (gathers.some((g) => g!.inputs[0] !== tIn) || consumers.get(tIn) !== 3) return undefined;
    const t5 = producer.get(tIn);
    if (!t5 || t5.opType !== "Transpose" || !sameInts(t5.attrs.perm as number[] | undefined, [2, 0, 3, 1, 4]) || !once(t5.inputs[0]))
      return undefined;
    // (a rotary embedding between the Reshape and the Transpose: see ropeOf)
    const rope = ropeOf(t5.inputs[0]!);
    const r5 = producer.get(rope ? rope.input : t5.inputs[0]!);
    const spec = ints(r5?.inputs[1]);
    if (
      !r5 ||
      r5.opType !== "Reshape" ||
      !spec ||
      spec.length !== 5 ||
      spec[2] !== 3 ||
      !spec.every((d) => Number.isSafeInteger(d) && d > 0)
    )
      return undefined;
    const [B, n, , H, hd] = spec as [number, number, number, number, number];
    if (!Number.isSafeInteger(B * n * 3 * H * hd) || B * H > 1 << 24) return undefined;
    const table = rope && rope.swapLength === hd ? tableFor(rope.cos, rope.sin, rope.names, n, hd) : undefined;
    if (rope && !table) return undefined;

    // forward along the chain: the scores' shape through each Reshape, each Add's constant mapped
    let shape = [B, H, n, n];
    let scaleAfter: number | undefined;
    const extras: FusedAttention["extras"] = [];
    for (const [k, c] of chain.entries()) {
      if (c.opType === "Mul") {
        const x = k === 0 ? scores.outputs[0]! : chain[k - 1]!.outputs[0]!;
        const s = scalar(other(c, x), shape.length);
        if (k !== 0 || s === undefined || scaleQ !== undefined) return undefined;
        scaleAfter = s;
      } else if (c.opType === "Reshape") {
        const sp = ints(c.inputs[1]);
        if (!sp) return undefined;
        let next: number[];
        try {
          next = reshapeShape(shape, sp, !!c.attrs.allowzero);
        } catch {
          return undefined;
        }
        if (next.length < 2 || next.at(-1) !== n || next.at(-2) !== n) return undefined;
        shape = next;
      } else {
        const x = k === 0 ? scores.outputs[0]! : chain[k - 1]!.outputs[0]!;
        const cn = other(c, x);
        const t = cn ? inits.get(cn) : undefined;
        if (!cn || !t?.f32) return undefined;
        const e = extraOf(t.dims, t.f32, shape, n, B * H);
        if (!e) return undefined;
        extras.push({ name: cn, ...e });
      }
    }
    if (!sameInts(shape, [B, H, n, n])) return undefined;
    // (before opset 13 a Softmax without an axis is one over all but the first axis)
    const axis = (sm.attrs.axis as number | undefined) ?? (opset < 13 ? 1 : -1);
    if (axis !== -1 && axis !== 3) return undefined;
    let outShape: number[];
    try {
      outShape = reshapeShape([B, n, H, hd], outSpec, !!rs.attrs.allowzero);
    } catch {
      return undefined;
    }
    if (prod(outShape) !== B * n * H * hd || extras.length > 4) return undefined;

    const qkv = r5.inputs[0]!;
    const all = [
      ...(rope?.nodes ?? []),
      r5,
      t5,
      ...gathers.map((g) => g!),
      ...inner,
      scores,
      ...chain,
      sm,
      ...(cast ? [cast] : []),
      pv,
      tr,
      rs,
    ];
    const consts = [...new Set(all.flatMap((m) => m.inputs).filter((i) => i && inits.has(i) && i !== qkv))];
    for (const m of all) drop.add(m);
    return {
      fused: {
        name: sm.name,
        opType: ATTENTION_OP,
        inputs: [qkv, ...consts],
        outputs: [rs.outputs[0]!],
        attrs: {},
        attention: {
          shape: [B, n, H, hd],
          scale: scaleQ ?? scaleAfter ?? 1,
          scaleQ: scaleQ !== undefined,
          extras,
          outShape,
          ...(table ? { rope: table } : {}),
        },
      },
      at: rs,
    };
  };

  /**
   * The rotary embedding bhsd's Primus builder applies to the split projection R ([B, n, 3, H, hd],
   * the Reshape's output) before the Transpose: Add(Mul(R, cos), Mul(Gather(R, pairs swapped,
   * axis −1), sin)), in either order of each Add and Mul, cos and sin [n, 3, 1, hd] (leading 1s
   * allowed); `name` the Add's output, read by the Transpose alone. Its tables are checked by
   * ropeTable once n and hd are known.
   */
  const ropeOf = (name: string) => {
    const add = producer.get(name);
    if (!add || add.opType !== "Add" || add.fusedAct || add.inputs.length !== 2 || !once(name)) return undefined;
    const muls = add.inputs.map((i) => producer.get(i));
    if (!muls.every((m, k) => m && m.opType === "Mul" && !m.fusedAct && m.inputs.length === 2 && once(add.inputs[k]))) return undefined;
    /** A Mul's float initializer (a table) and its other operand. */
    const table = (m: GraphNode) => {
      const k = m.inputs.findIndex((i) => !!inits.get(i)?.f32);
      const t = k < 0 ? undefined : inits.get(m.inputs[k]!)!;
      return t ? { t, other: m.inputs[1 - k]! } : undefined;
    };
    // which Mul takes R itself (cos) and which the swapped R (sin)
    for (const k of [0, 1]) {
      const cm = muls[k]!,
        smul = muls[1 - k]!;
      const c = table(cm),
        s = table(smul);
      if (!c || !s) return undefined;
      const g = producer.get(s.other);
      if (!g || g.opType !== "Gather" || g.inputs[0] !== c.other || !once(s.other)) continue;
      if ((g.attrs.axis as number | undefined) !== -1) continue;
      const idx = ints(g.inputs[1]);
      if (!idx || !idx.every((v, t) => (v < 0 ? v + idx.length : v) === (t ^ 1)) || idx.length % 2) continue;
      // R is read by the cos Mul and the Gather alone
      if (consumers.get(c.other) !== 2) return undefined;
      return {
        input: c.other,
        cos: c.t,
        sin: s.t,
        names: `${cm.inputs.find((i) => inits.get(i) === c.t)}\n${smul.inputs.find((i) => inits.get(i) === s.t)}`,
        swapLength: idx.length,
        nodes: [cm, g, smul, add],
      };
    }
    return undefined;
  };
  /**
   * The kernel's table [n, 2·hd] (cos, then signed sin, per token) from the graph's cos and sin
   * [n, 3, 1, hd] (q's, k's and v's rows): q's and k's equal, v's 1 and 0; else undefined.
   */
  const ropeTable = (cos: OnnxTensor, sin: OnnxTensor, n: number, hd: number) => {
    const trailing = (t: OnnxTensor) => {
      const d = t.dims;
      return d.length >= 4 && d.slice(0, -4).every((v) => v === 1) && sameInts(d.slice(-4), [n, 3, 1, hd]);
    };
    if (hd % 2 || !trailing(cos) || !trailing(sin)) return undefined;
    const c = cos.f32!,
      s = sin.f32!;
    const out = new Float32Array(n * 2 * hd);
    for (let j = 0; j < n; j++) {
      const row = j * 3 * hd;
      for (let t = 0; t < hd; t++) {
        const cv = c[row + t]!,
          sv = s[row + t]!;
        if (c[row + hd + t] !== cv || s[row + hd + t] !== sv || c[row + 2 * hd + t] !== 1 || s[row + 2 * hd + t] !== 0) return undefined;
        out[j * 2 * hd + t] = cv;
        out[j * 2 * hd + hd + t] = sv;
      }
    }
    return out;
  };

  /** Kernel tables by their graph tables' names: blocks that share those share one (Primus: all). */
  const tables = new Map<string, Float32Array | undefined>();
  const tableFor = (cos: OnnxTensor, sin: OnnxTensor, names: string, n: number, hd: number) => {
    const key = `${names}\n${n}\n${hd}`;
    if (!tables.has(key)) tables.set(key, ropeTable(cos, sin, n, hd));
    return tables.get(key);
  };
  for (const sm of nodes) {
    if (sm.opType !== "Softmax" || drop.has(sm)) continue;
    const m = match(sm);
    if (m) replace.set(m.at, m.fused);
  }
  if (replace.size === 0) return nodes;
  return nodes.flatMap((m) => (replace.has(m) ? [replace.get(m)!] : drop.has(m) ? [] : [m]));
}

/**
 * An Add's constant against the scores' current shape (a reshape of [B, H, n, n] keeping the last
 * two axes): each (b, h) item's offset into it, or undefined where it would broadcast the scores
 * to a larger shape or broadcast along the keys. A block of zeros gets offset −1.
 */
function extraOf(
  dims: readonly number[],
  data: Float32Array,
  shape: readonly number[],
  n: number,
  items: number,
): { offsets: Float64Array; rowStride: number } | undefined {
  const r = shape.length;
  if (dims.length > r || dims.length === 0 || dims.at(-1) !== n) return undefined;
  const full = [...Array<number>(r - dims.length).fill(1), ...dims];
  if (full.some((d, i) => d !== shape[i] && d !== 1)) return undefined;
  const rowStride = full[r - 2] === n ? n : 0;
  // strides of the constant's leading axes (0 where it broadcasts)
  const strides = new Array<number>(r - 2).fill(0);
  let s = n * (rowStride ? n : 1);
  for (let i = r - 3; i >= 0; i--) {
    strides[i] = full[i] === 1 ? 0 : s;
    s *= full[i]!;
  }
  if (s !== data.length) return undefined;
  const span = rowStride ? n * n : n;
  const offsets = new Float64Array(items);
  const zero = new Map<number, boolean>();
  for (let f = 0; f < items; f++) {
    let off = 0;
    for (let i = r - 3, rem = f; i >= 0; i--) {
      off += (rem % shape[i]!) * strides[i]!;
      rem = Math.floor(rem / shape[i]!);
    }
    let z = zero.get(off);
    if (z === undefined) {
      z = true;
      for (let j = off; j < off + span && z; j++) z = data[j] === 0;
      zero.set(off, z);
    }
    offsets[f] = z ? -1 : off;
  }
  return { offsets, rowStride };
}

/**
 * torch.onnx's export of an attention that projects q, k and v apart — timm's EvaAttention with
 * `qkv_fused=False`, as nnU-Net's Primus builds it — rewritten at load into the one-projection form
 * fuseAttention reads (and a backend without the fused kernel runs as nodes):
 *
 *   X → MatMul Wq [→ Add bq] → Reshape [B, n, H, hd] → Transpose [0, 2, 1, 3]      (and k, v alike)
 *   q, k: timm's interleaved rotary embedding on tokens P… (the first P, registers, kept):
 *     Concat axis 2 (Slice tokens [0, P), Add(Mul(x, cos), Mul(rot(x), sin)))
 *     x = the heads (P = 0) or Slice tokens [P, n); rot(x) = Reshape(Concat axis −1(
 *     Unsqueeze(Neg(Slice(x, 1::2))), Unsqueeze(Slice(x, 0::2)))) — [−x1, x0, −x3, x2, …]
 *
 * becomes
 *
 *   X → MatMul [Wq | Wk | Wv] [→ Add [bq | bk | bv], 0 for a missing bias] → Reshape [B, n, 3, H, hd]
 *   → [Add(Mul(·, cos'), Mul(Gather(·, pairs swapped, axis −1), sin'))] → Transpose [2, 0, 3, 1, 4]
 *   → Gather 0 / 1 / 2 (the values q, k and v were, so the nodes reading them stay as they are)
 *
 * with cos' and sin' [n, 3, 1, hd]: q's and k's rows timm's tables (sin' signed: −sin at even
 * places, as rot negates x's odd elements into them), the P kept tokens' and v's 1 and 0. Each
 * value equals the export's: the same products summed in the same order per column, x · c + (±x')
 * · s as timm computes it, and prefix rows x · 1 + x' · 0 (finite inputs). Applied only where all
 * of it holds: one input X, weights [Cin, C] alike, each value between read where the pattern says
 * and nowhere else, q and k rotated alike or neither. Mutates `graph` (nodes and initializers; the
 * weights it joined go where nothing else reads them).
 */
export function joinQkvProjections(
  graph: {
    nodes: GraphNode[];
    initializers: Map<string, OnnxTensor>;
    outputs: string[];
    opset: number;
  },
  /** Shape inference's value shapes at load (a Reshape's −1 is resolved against X's). */
  shapes?: ReadonlyMap<string, number[]>,
): void {
  const { nodes, initializers: inits, outputs } = graph;
  const consumers = consumersOf(nodes, outputs);
  const producer = producersOf(nodes);
  const reads = (v: string | undefined, n: number) => !!v && consumers.get(v) === n;
  const once = (v: string | undefined) => reads(v, 1);
  const ints = (name: string | undefined) => (name ? inits.get(name)?.ints : undefined);
  const intsOr = (name: string | undefined, dflt: number[]) => (name ? ints(name) : dflt);
  const plain = (p: GraphNode | undefined, op: string): p is GraphNode =>
    !!p && p.opType === op && !p.fusedAct && !p.fusedNorm && !p.fusedAdd && !p.attention;
  const made = new Set<string>([...inits.keys(), ...nodes.flatMap((n) => [...n.inputs, ...n.outputs]), ...outputs]);
  const unique = (base: string) => {
    let s = base;
    for (let k = 1; made.has(s); k++) s = `${base}_${k}`;
    made.add(s);
    return s;
  };
  /** A Slice of `data` on one axis (either sign of it for rank 4): its start, end and step. */
  const slice1 = (p: GraphNode | undefined, axis: number) => {
    if (!plain(p, "Slice") || p.inputs.length < 3) return undefined;
    // (axes left out are ONNX's default, [0] for one start: the batch axis, never the pattern's)
    const [st, en, ax, sp] = [ints(p.inputs[1]), ints(p.inputs[2]), intsOr(p.inputs[3], [0]), intsOr(p.inputs[4], [1])];
    if (!st || !en || !ax || !sp || st.length !== 1 || en.length !== 1 || ax.length !== 1 || sp.length !== 1) return undefined;
    if (ax[0] !== axis && ax[0] !== axis - 4) return undefined;
    return { data: p.inputs[0]!, start: st[0]!, end: en[0]!, step: sp[0]! };
  };
  /** A float initializer whose dims are `want` after leading 1s, at most rank 4. */
  const table = (name: string | undefined, want: number[]) => {
    const t = name ? inits.get(name) : undefined;
    if (!t?.f32 || t.dims.length > 4 || t.dims.length < want.length) return undefined;
    const lead = t.dims.slice(0, t.dims.length - want.length);
    return lead.every((d) => d === 1) && sameInts(t.dims.slice(lead.length), want) ? t.f32 : undefined;
  };
  const f32Of = (name: string | undefined) => (name ? inits.get(name)?.f32 : undefined);

  interface Head {
    x: string;
    w: OnnxTensor;
    wName: string;
    bias?: Float32Array;
    biasName?: string;
    spec: number[];
    allowzero: boolean;
    heads: string;
    nodes: GraphNode[];
  }
  /** …X → MatMul W [→ Add b] → Reshape → Transpose [0, 2, 1, 3] = `name`. */
  const headOf = (name: string): Head | undefined => {
    const tr = producer.get(name);
    if (!plain(tr, "Transpose") || !sameInts(tr.attrs.perm as number[] | undefined, [0, 2, 1, 3])) return undefined;
    const rs = producer.get(tr.inputs[0]!);
    if (!plain(rs, "Reshape") || !once(tr.inputs[0])) return undefined;
    const spec = ints(rs.inputs[1]);
    if (!spec || spec.length !== 4 || !once(rs.inputs[0])) return undefined;
    let p = producer.get(rs.inputs[0]!);
    const hn: GraphNode[] = [tr, rs];
    let bias: Float32Array | undefined, biasName: string | undefined;
    if (plain(p, "Add") && p.inputs.length === 2) {
      const k = p.inputs.findIndex((i) => !!f32Of(i));
      const mm = k < 0 ? undefined : producer.get(p.inputs[1 - k]!);
      if (!plain(mm, "MatMul") || !once(p.inputs[1 - k])) return undefined;
      biasName = p.inputs[k]!;
      bias = f32Of(biasName);
      hn.push(p);
      p = mm;
    }
    if (!plain(p, "MatMul") || p.inputs.length !== 2) return undefined;
    const wName = p.inputs[1]!;
    const w = inits.get(wName);
    if (!w?.f32 || w.dims.length !== 2 || inits.has(p.inputs[0]!)) return undefined;
    if (bias) {
      const bt = inits.get(biasName!)!;
      if (bt.dims.length > 4 || bt.dims.slice(0, -1).some((d) => d !== 1) || bt.dims.at(-1) !== w.dims[1]) return undefined;
    }
    hn.push(p);
    return { x: p.inputs[0]!, w, wName, bias, biasName, spec, allowzero: !!rs.attrs.allowzero, heads: name, nodes: hn };
  };

  interface Rope {
    /** The heads it rotates (a Transpose's output) and its nodes. */
    heads: string;
    prefix: number;
    cos: string;
    sin: string;
    nodes: GraphNode[];
    /** What must hold once n and hd are known: token counts of the slices and tables. */
    check: (B: number, n: number, H: number, hd: number) => { cos: Float32Array; sin: Float32Array } | undefined;
  }
  /** timm's apply_rot_embed_cat (interleaved), prefix tokens kept: `name` its result. */
  const ropeOf = (name: string): Rope | undefined => {
    let core = name;
    let prefix: { data: string; end: number; node: GraphNode } | undefined;
    const cat = producer.get(name);
    if (plain(cat, "Concat") && cat.inputs.length === 2 && (cat.attrs.axis === 2 || cat.attrs.axis === -2)) {
      const s = slice1(producer.get(cat.inputs[0]!), 2);
      if (!s || s.start !== 0 || s.step !== 1 || s.end < 0 || !once(cat.inputs[0])) return undefined;
      prefix = { data: s.data, end: s.end, node: producer.get(cat.inputs[0]!)! };
      core = cat.inputs[1]!;
      if (!once(core)) return undefined;
    }
    const add = producer.get(core);
    if (!plain(add, "Add") || add.inputs.length !== 2) return undefined;
    const muls = add.inputs.map((i) => producer.get(i));
    if (!muls.every((m, k) => plain(m, "Mul") && m.inputs.length === 2 && once(add.inputs[k]))) return undefined;
    for (const k of [0, 1]) {
      const cm = muls[k]!,
        sm = muls[1 - k]!;
      const ci = cm.inputs.findIndex((i) => !!f32Of(i)),
        si = sm.inputs.findIndex((i) => !!f32Of(i));
      if (ci < 0 || si < 0) continue;
      const x = cm.inputs[1 - ci]!,
        rotOut = sm.inputs[1 - si]!;
      // rot(x): Reshape(Concat(Unsqueeze(Neg(x[..., 1::2])), Unsqueeze(x[..., 0::2])), −1 axis)
      const rr = producer.get(rotOut);
      if (!plain(rr, "Reshape") || !once(rotOut) || !once(rr.inputs[0])) continue;
      const rc = producer.get(rr.inputs[0]!);
      if (!plain(rc, "Concat") || rc.inputs.length !== 2 || (rc.attrs.axis !== -1 && rc.attrs.axis !== 4)) continue;
      const us = rc.inputs.map((i) => producer.get(i));
      if (!us.every((u, j) => plain(u, "Unsqueeze") && once(rc.inputs[j]))) continue;
      const axesOk = us.every((u) => {
        const a = u!.inputs[1] ? ints(u!.inputs[1]) : (u!.attrs.axes as number[] | undefined);
        return !!a && a.length === 1 && (a[0] === -1 || a[0] === 4);
      });
      if (!axesOk) continue;
      const neg = producer.get(us[0]!.inputs[0]!);
      if (!plain(neg, "Neg") || !once(us[0]!.inputs[0])) continue;
      const odd = slice1(producer.get(neg.inputs[0]!), 3),
        even = slice1(producer.get(us[1]!.inputs[0]!), 3);
      if (!odd || !even || !once(neg.inputs[0]) || !once(us[1]!.inputs[0])) continue;
      if (odd.data !== x || even.data !== x || odd.start !== 1 || even.start !== 0 || odd.step !== 2 || even.step !== 2) continue;
      // x: the heads themselves (no prefix) or their tokens [P, n)
      let heads = x,
        P = 0;
      const xs = slice1(producer.get(x), 2);
      const rnodes: GraphNode[] = [
        add,
        cm,
        sm,
        rr,
        rc,
        us[0]!,
        us[1]!,
        neg,
        producer.get(neg.inputs[0]!)!,
        producer.get(us[1]!.inputs[0]!)!,
      ];
      if (prefix && prefix.end > 0) {
        if (!xs || xs.step !== 1 || xs.start !== prefix.end || xs.data !== prefix.data || !reads(x, 3)) continue;
        heads = xs.data;
        P = prefix.end;
        if (!reads(heads, 2)) continue;
        rnodes.push(producer.get(x)!);
      } else {
        if (prefix && prefix.data !== x) continue;
        if (!reads(x, prefix ? 4 : 3)) continue;
      }
      if (prefix) rnodes.push(prefix.node, cat!);
      const ends = { x: xs?.end, odd: odd.end, even: even.end, prefix: prefix?.end };
      const cosName = cm.inputs[ci]!,
        sinName = sm.inputs[si]!;
      const check = (B: number, n: number, H: number, hd: number) => {
        const m = n - P;
        // (P ≤ m: the joined tables, n rows, stay within twice the file's own, m rows)
        if (m <= 0 || P > m || hd % 2) return undefined;
        if (P > 0 && ends.x! < n) return undefined;
        if (prefix && P === 0 && ends.prefix !== 0) return undefined;
        if (ends.odd < hd || ends.even < hd) return undefined;
        // rot's Reshape gives [B, H, m, hd] back
        let back: number[];
        try {
          back = reshapeShape([B, H, m, hd / 2, 2], ints(rr.inputs[1]) ?? [], !!rr.attrs.allowzero);
        } catch {
          return undefined;
        }
        if (!sameInts(back, [B, H, m, hd])) return undefined;
        const cos = table(cosName, [m, hd]),
          sin = table(sinName, [m, hd]);
        return cos && sin ? { cos, sin } : undefined;
      };
      return { heads, prefix: P, cos: cosName, sin: sinName, nodes: rnodes, check };
    }
    return undefined;
  };

  const removed = new Set<GraphNode>();
  const inserts = new Map<GraphNode, GraphNode[]>();
  const joined = new Set<string>();
  /** Tables by the names of the graph's tables (blocks reading the same ones are not hashed again). */
  const tablesByName = new Map<string, { cos: Float32Array; sin: Float32Array; names: [string, string] }>();
  /** Joined weights and biases by the names of what they join. */
  const joinedOnce = new Map<string, string>();
  /** Tables made so far, by a hash of their values (blocks share theirs when the values are the same). */
  const tables = new Map<string, { cos: Float32Array; sin: Float32Array; names: [string, string] }[]>();
  const equal = (a: Float32Array, b: Float32Array) => a.length === b.length && a.every((v, i) => Object.is(v, b[i]));
  const hash = (a: Float32Array) => {
    const u = new Uint32Array(a.buffer, a.byteOffset, a.length);
    let h = 0x811c9dc5;
    for (let i = 0; i < u.length; i++) h = Math.imul(h ^ u[i]!, 0x01000193);
    return h >>> 0;
  };
  // (first readers and positions by map: a hostile graph of many Softmaxes costs linear time)
  const firstReader = new Map<string, GraphNode>();
  for (const m of nodes) if (m.inputs[0] && !firstReader.has(m.inputs[0])) firstReader.set(m.inputs[0], m);
  const position = new Map(nodes.map((m, i) => [m, i]));

  for (const sm of nodes) {
    if (sm.opType !== "Softmax" || removed.has(sm)) continue;
    // the products: MatMul(q [· scale], Transpose(k, [0, 1, 3, 2])) somewhere before the Softmax
    let cur: string | undefined = sm.inputs[0];
    let scores: GraphNode | undefined;
    for (let guard = 0; guard < 16 && cur && !scores; guard++) {
      const p: GraphNode | undefined = producer.get(cur);
      if (!p) break;
      if (p.opType === "MatMul") scores = p;
      else if (p.opType === "Add" || p.opType === "Mul" || p.opType === "Reshape")
        cur = p.opType === "Reshape" ? p.inputs[0] : p.inputs.find((i) => !!i && !inits.has(i));
      else break;
    }
    if (!plain(scores, "MatMul") || scores.inputs.length !== 2) continue;
    // the weighted sum: MatMul(softmax [→ Cast to float], v)
    let smOut = sm.outputs[0]!;
    const cast = once(smOut) ? firstReader.get(smOut) : undefined;
    if (cast?.opType === "Cast" && cast.attrs.to === 1) smOut = cast.outputs[0]!;
    const pv = once(smOut) ? firstReader.get(smOut) : undefined;
    if (!plain(pv, "MatMul") || pv.inputs.length !== 2) continue;
    let qSrc = scores.inputs[0]!;
    const qm = producer.get(qSrc);
    if (plain(qm, "Mul") && qm.inputs.length === 2 && qm.inputs.some((i) => f32Of(i)?.length === 1) && once(qSrc))
      qSrc = qm.inputs.find((i) => f32Of(i)?.length !== 1)!;
    // (and kᵀ scaled too, as torch exports scaled_dot_product_attention)
    let ktOut: string | undefined = scores.inputs[1]!;
    const km = producer.get(ktOut);
    if (plain(km, "Mul") && km.inputs.length === 2 && km.inputs.some((i) => f32Of(i)?.length === 1) && once(ktOut))
      ktOut = km.inputs.find((i) => f32Of(i)?.length !== 1);
    const kt = ktOut ? producer.get(ktOut) : undefined;
    if (!plain(kt, "Transpose") || !sameInts(kt.attrs.perm as number[] | undefined, [0, 1, 3, 2]) || !once(ktOut)) continue;
    const kSrc = kt.inputs[0]!,
      vSrc = pv.inputs[1]!;
    if (!qSrc || !once(qSrc) || !once(kSrc) || !once(vSrc) || new Set([qSrc, kSrc, vSrc]).size !== 3) continue;
    const ropeQ = producer.get(qSrc)?.opType === "Transpose" ? undefined : ropeOf(qSrc);
    const ropeK = producer.get(kSrc)?.opType === "Transpose" ? undefined : ropeOf(kSrc);
    if (!!ropeQ !== !!ropeK) continue;
    if (ropeQ && ropeQ.prefix !== ropeK!.prefix) continue;
    const [hq, hk, hv] = [ropeQ ? ropeQ.heads : qSrc, ropeK ? ropeK.heads : kSrc, vSrc].map(headOf);
    if (!hq || !hk || !hv) continue;
    if (hk.x !== hq.x || hv.x !== hq.x) continue;
    const [Cin, C] = hq.w.dims as [number, number];
    if (![hk, hv].every((h) => sameInts(h.w.dims, [Cin, C]))) continue;
    // [B, n, H, hd] from the Reshape: its −1 resolved from the width where X holds B · n tokens (as
    // shape inference found it; else ONNX would make the head another width); 0s refused
    const xShape = shapes?.get(hq.x);
    const tokens = xShape && xShape.at(-1) === Cin ? xShape.slice(0, -1).reduce((p, q) => p * q, 1) : undefined;
    const dims = [hq, hk, hv].map((h) => {
      const [B, n, H, last] = h.spec as [number, number, number, number];
      if (!(B > 0 && n > 0 && H > 0) || h.allowzero !== false) return undefined;
      if (last === -1 && tokens !== B * n) return undefined;
      const hd = last === -1 ? C / H : last;
      return Number.isSafeInteger(hd) && hd > 0 && H * hd === C ? [B, n, H, hd] : undefined;
    });
    if (!dims.every((d) => d && sameInts(d, dims[0]!))) continue;
    const [B, n, H, hd] = dims[0]! as [number, number, number, number];
    if (!Number.isSafeInteger(B * n * 3 * C) || B * n * 3 * C > 2 ** 31) continue;
    let rope: { cos: Float32Array; sin: Float32Array } | undefined;
    if (ropeQ) {
      const a = ropeQ.check(B, n, H, hd),
        b = ropeK!.check(B, n, H, hd);
      // (the same tables by name need no comparing)
      const named = ropeQ.cos === ropeK!.cos && ropeQ.sin === ropeK!.sin;
      if (!a || !b || (!named && (!equal(a.cos, b.cos) || !equal(a.sin, b.sin)))) continue;
      rope = a;
    }
    if ([hq, hk, hv].some((h) => h.nodes.some((m) => removed.has(m)))) continue;

    // the joined projection
    const base = unique(`${scores.name || "attention"}/bhsd.qkv`);
    const name = (s: string) => unique(`${base}/${s}`);
    // (blocks that read the same weights share one joined copy: memory follows the file, not the blocks)
    const parts = [hq, hk, hv];
    const wKey = parts.map((h) => h.wName).join("\n");
    let wName = joinedOnce.get(wKey);
    if (!wName) {
      const w = new Float32Array(Cin * 3 * C);
      for (let r = 0; r < Cin; r++) for (const [k, h] of parts.entries()) w.set(h.w.f32!.subarray(r * C, (r + 1) * C), r * 3 * C + k * C);
      wName = name("weight");
      inits.set(wName, { dims: [Cin, 3 * C], dataType: 1, f32: w });
      joinedOnce.set(wKey, wName);
    }
    const added: GraphNode[] = [];
    let out = name("proj");
    added.push({ name: out, opType: "MatMul", inputs: [hq.x, wName], outputs: [out], attrs: {} });
    if (parts.some((h) => h.bias)) {
      const bKey = `${C}\n${parts.map((h) => h.biasName ?? "").join("\n")}`;
      let bName = joinedOnce.get(bKey);
      if (!bName) {
        const b = new Float32Array(3 * C);
        for (const [k, h] of parts.entries()) if (h.bias) b.set(h.bias, k * C);
        bName = name("bias");
        inits.set(bName, { dims: [3 * C], dataType: 1, f32: b });
        joinedOnce.set(bKey, bName);
      }
      const o = name("proj_bias");
      added.push({ name: o, opType: "Add", inputs: [out, bName], outputs: [o], attrs: {} });
      out = o;
    }
    const specName = name("split_shape");
    inits.set(specName, { dims: [5], dataType: 7, ints: [B, n, 3, H, hd] });
    const split = name("split");
    added.push({ name: split, opType: "Reshape", inputs: [out, specName], outputs: [split], attrs: {} });
    out = split;
    if (rope) {
      const P = ropeQ!.prefix;
      const byName = `${ropeQ!.cos}\n${ropeQ!.sin}\n${P}\n${n}\n${hd}`;
      let t = tablesByName.get(byName);
      const key = t ? "" : `${P}:${n}:${hd}:${hash(rope.cos)}:${hash(rope.sin)}`;
      const same = t ? [] : (tables.get(key) ?? tables.set(key, []).get(key)!);
      // (a bucket's first few only: tables crafted to collide cost no more than distinct ones)
      t ??= same.slice(0, 4).find((e) => equal(e.cos, rope!.cos) && equal(e.sin, rope!.sin));
      if (!t) {
        const cos = new Float32Array(n * 3 * hd).fill(1),
          sin = new Float32Array(n * 3 * hd);
        for (let j = P; j < n; j++)
          for (let part = 0; part < 2; part++)
            for (let d = 0; d < hd; d++) {
              const src = (j - P) * hd + d;
              cos[(j * 3 + part) * hd + d] = rope.cos[src]!;
              sin[(j * 3 + part) * hd + d] = d % 2 ? rope.sin[src]! : -rope.sin[src]!;
            }
        const names: [string, string] = [name("rope_cos_table"), name("rope_sin_table")];
        inits.set(names[0], { dims: [n, 3, 1, hd], dataType: 1, f32: cos });
        inits.set(names[1], { dims: [n, 3, 1, hd], dataType: 1, f32: sin });
        t = { cos: rope.cos, sin: rope.sin, names };
        same.push(t);
      }
      tablesByName.set(byName, t);
      const swapName = name("rope_pairs");
      inits.set(swapName, { dims: [hd], dataType: 7, ints: Array.from({ length: hd }, (_, d) => d ^ 1) });
      const [rc, sw, rsn, ra] = [name("rope_cos"), name("rope_swap"), name("rope_sin"), name("rope")];
      added.push(
        { name: rc, opType: "Mul", inputs: [out, t.names[0]], outputs: [rc], attrs: {} },
        { name: sw, opType: "Gather", inputs: [out, swapName], outputs: [sw], attrs: { axis: -1 } },
        { name: rsn, opType: "Mul", inputs: [sw, t.names[1]], outputs: [rsn], attrs: {} },
        { name: ra, opType: "Add", inputs: [rc, rsn], outputs: [ra], attrs: {} },
      );
      out = ra;
    }
    const first = name("first");
    added.push({ name: first, opType: "Transpose", inputs: [out], outputs: [first], attrs: { perm: [2, 0, 3, 1, 4] } });
    for (const [k, target] of [qSrc, kSrc, vSrc].entries()) {
      const idx = name(`index${k}`);
      inits.set(idx, { dims: [], dataType: 7, ints: [k] });
      added.push({ name: `${base}/part${k}`, opType: "Gather", inputs: [first, idx], outputs: [target], attrs: { axis: 0 } });
    }
    const gone = [...parts.flatMap((h) => h.nodes), ...(ropeQ?.nodes ?? []), ...(ropeK?.nodes ?? [])];
    for (const m of gone) removed.add(m);
    const at = gone.reduce((a, m) => (position.get(m)! < position.get(a)! ? m : a));
    inserts.set(at, added);
    for (const h of parts) {
      joined.add(h.wName);
      if (h.biasName) joined.add(h.biasName);
    }
    for (const r of [ropeQ, ropeK]) if (r) joined.add(r.cos).add(r.sin);
  }
  if (removed.size === 0) return;
  graph.nodes = nodes.flatMap((m) => [...(inserts.get(m) ?? []), ...(removed.has(m) ? [] : [m])]);
  const read = new Set([...graph.nodes.flatMap((m) => m.inputs), ...outputs]);
  for (const k of joined) if (!read.has(k)) inits.delete(k);
}
