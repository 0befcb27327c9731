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
    if (scores.opType === "Einsum") {
      const m = String(scores.attrs.equation ?? "")
        .replace(/\s+/g, "")
        .match(SCORES_EQ);
      if (!m || !distinct(m)) return undefined;
    } else {
      const kt = producer.get(kIn);
      if (!kt || kt.opType !== "Transpose" || !sameInts(kt.attrs.perm as number[] | undefined, [0, 1, 3, 2]) || !once(kIn))
        return undefined;
      inner.push(kt);
      kIn = kt.inputs[0]!;
    }
    // q multiplied by a scalar first (SwinUNETR)
    let scaleQ: number | undefined;
    const qm = producer.get(qIn);
    if (qm && qm.opType === "Mul") {
      const x = qm.inputs.find((i) => !inits.has(i));
      scaleQ = x === undefined ? undefined : scalar(other(qm, x), 4);
      if (x === undefined || scaleQ === undefined || !once(qIn)) return undefined;
      inner.push(qm);
      qIn = x;
    }
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
    const table = rope && rope.swapLength === hd ? ropeTable(rope.cos, rope.sin, n, hd) : undefined;
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
      return { input: c.other, cos: c.t, sin: s.t, swapLength: idx.length, nodes: [cm, g, smul, add] };
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
