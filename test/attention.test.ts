/**
 * The fused self-attention (lib/model/attention.ts, native/include/bhsd/attention.hpp) against
 * onnxruntime running the same ONNX graphs: the node patterns transformer blocks export as —
 * SwinUNETR's (q scaled first, a relative position bias, a window mask added through a Reshape
 * to [b, nW, H, n, n] and back, windows whose mask is all zeros), UNETR's SABlock (Einsums, the
 * products scaled) and a key mask broadcast over the queries with −∞ — at sizes off whole vectors.
 * The native backend runs each as one node, the ts backend as the nodes it replaced; a graph that
 * reads the scores elsewhere is left unfused. And the native call refuses what it cannot run safely.
 */
import test from "ava";
import ort from "onnxruntime-node";
import { loadModel, setBackend } from "../lib/index.js";
import { getBackend } from "../lib/backends/index.js";
import { encodeModel, ONNX_DTYPE } from "../lib/model/onnx-proto.js";
import { backendsUnderTest } from "./helpers.js";
import { randomTensor, scaleDiff } from "./ort.js";

interface Case {
  B: number;
  n: number;
  H: number;
  hd: number;
  scaleQ?: boolean;
  einsum?: boolean;
  /** SwinUNETR's bias [H, n, n] and a mask over nW windows through a 5-D Reshape. */
  windows?: number;
  /** A key mask [B, 1, 1, n]: −∞ at every third key. */
  keyMask?: boolean;
  /** The scores are a second graph output (the pattern must not fuse). */
  scoresOut?: boolean;
  /** Einsum equations other than the pattern's (labels differing only in case). */
  equations?: [string, string];
  /** The graph's opset (before 13 a Softmax without an axis is one over all but axis 0). */
  opset?: number;
  /** Leave out the Softmax's axis attribute. */
  noAxis?: boolean;
  /** The pattern does not apply: the nodes run as they are on every backend. */
  notFused?: boolean;
  /**
   * A rotary embedding on the split [B, n, 3, H, hd] as bhsd's Primus builder writes it (cos and
   * signed sin [n, 3, 1, hd], pairs swapped by a Gather): "ok"; or v rotated too, a Gather that is
   * not the pair swap, the split read elsewhere (a graph output) — none of which fuses.
   */
  rope?: "ok" | "vRotated" | "notSwap" | "readTwice";
  /**
   * As torch.onnx (and the dynamo exporter) write scaled_dot_product_attention: q and kᵀ each
   * multiplied by √scale, a [1] constant; "kOnly": kᵀ alone by the whole scale.
   */
  sdpa?: "both" | "kOnly";
}

const i64 = (name: string, dims: number[], v: number[]) => ({
  name,
  dims,
  data: BigInt64Array.from(v.map(BigInt)),
  dataType: ONNX_DTYPE.INT64,
});

function graph(c: Case): Uint8Array {
  const { B, n, H, hd } = c;
  const scale = hd ** -0.5;
  type N = { opType: string; inputs: string[]; outputs: string[]; attrs?: Record<string, number | number[] | string> };
  const nodes: N[] = [
    { opType: "Reshape", inputs: ["qkv", "s5"], outputs: ["r5"] },
    ...(c.rope
      ? [
          { opType: "Gather", inputs: ["r5", "swap"], outputs: ["sw"], attrs: { axis: -1 } },
          { opType: "Mul", inputs: ["r5", "cos"], outputs: ["rc"] },
          { opType: "Mul", inputs: ["sin", "sw"], outputs: ["rs"] }, // (the table first: either operand order)
          { opType: "Add", inputs: ["rs", "rc"], outputs: ["rr"] },
        ]
      : []),
    { opType: "Transpose", inputs: [c.rope ? "rr" : "r5"], outputs: ["t5"], attrs: { perm: [2, 0, 3, 1, 4] } },
    { opType: "Gather", inputs: ["t5", "i0"], outputs: ["q0"], attrs: { axis: 0 } },
    { opType: "Gather", inputs: ["t5", "i1"], outputs: ["k"], attrs: { axis: 0 } },
    { opType: "Gather", inputs: ["t5", "i2"], outputs: ["v"], attrs: { axis: 0 } },
  ];
  const inits: Parameters<typeof encodeModel>[0]["initializers"] = [
    i64("s5", [5], [B, n, 3, H, hd]),
    i64("i0", [], [0]),
    i64("i1", [], [1]),
    i64("i2", [], [2]),
    i64("sout", [3], [B, n, H * hd]),
    { name: "scale", dims: [], data: Float32Array.of(scale) },
    { name: "rootscale", dims: [1], data: Float32Array.of(Math.sqrt(scale)) },
  ];
  if (c.rope) {
    const cos = new Float32Array(n * 3 * hd),
      sin = new Float32Array(n * 3 * hd);
    for (let j = 0; j < n; j++)
      for (let part = 0; part < 3; part++)
        for (let t = 0; t < hd; t++) {
          const ang = (j + 1) * 0.37 * Math.pow(100, -Math.floor(t / 2) / hd);
          const rotated = part < 2 || c.rope === "vRotated";
          cos[(j * 3 + part) * hd + t] = rotated ? Math.cos(ang) : 1;
          sin[(j * 3 + part) * hd + t] = rotated ? (t % 2 ? Math.sin(ang) : -Math.sin(ang)) : 0;
        }
    inits.push(
      { name: "cos", dims: [n, 3, 1, hd], data: cos },
      { name: "sin", dims: [n, 3, 1, hd], data: sin },
      i64(
        "swap",
        [hd],
        Array.from({ length: hd }, (_, t) => (c.rope === "notSwap" ? hd - 1 - t : t ^ 1)),
      ),
    );
  }
  let q = "q0";
  if (c.scaleQ) nodes.push({ opType: "Mul", inputs: ["q0", "scale"], outputs: ((q = "q"), ["q"]) });
  if (c.sdpa === "both") nodes.push({ opType: "Mul", inputs: ["q0", "rootscale"], outputs: ((q = "q"), ["q"]) });
  if (c.sdpa)
    nodes.push(
      { opType: "Transpose", inputs: ["k"], outputs: ["kt0"], attrs: { perm: [0, 1, 3, 2] } },
      { opType: "Mul", inputs: ["kt0", c.sdpa === "both" ? "rootscale" : "scale"], outputs: ["kt"] },
      { opType: "MatMul", inputs: [q, "kt"], outputs: ["s0"] },
    );
  else if (c.einsum)
    nodes.push({ opType: "Einsum", inputs: [q, "k"], outputs: ["s0"], attrs: { equation: c.equations?.[0] ?? "blxd,blyd->blxy" } });
  else
    nodes.push(
      { opType: "Transpose", inputs: ["k"], outputs: ["kt"], attrs: { perm: [0, 1, 3, 2] } },
      { opType: "MatMul", inputs: [q, "kt"], outputs: ["s0"] },
    );
  let s = "s0";
  const step = (opType: string, other: string, out: string) => {
    nodes.push({ opType, inputs: opType === "Add" && out.endsWith("b") ? [other, s] : [s, other], outputs: [out] });
    s = out;
  };
  if (!c.scaleQ && !c.sdpa) step("Mul", "scale", "s1");
  if (c.windows) {
    const nW = c.windows;
    const bias = randomTensor([H, n, n], 11);
    inits.push({ name: "bias", dims: [H, n, n], data: bias.data });
    step("Add", "bias", "s2b"); // (the constant first: either operand order)
    // the mask: window w masks key j of query i where (i + w) % 3 ≠ (j + w) % 3, except windows 0 and 2 (all zero)
    const mask = new Float32Array(nW * n * n);
    for (let w = 0; w < nW; w++)
      if (w % 2 === 1)
        for (let i = 0; i < n; i++) for (let j = 0; j < n; j++) mask[(w * n + i) * n + j] = (i + w) % 3 !== (j + w) % 3 ? -100 : 0;
    inits.push({ name: "mask", dims: [nW, 1, n, n], data: mask }, i64("s5w", [5], [B / nW, nW, H, n, n]), i64("s4", [4], [-1, H, n, n]));
    step("Reshape", "s5w", "w3");
    step("Add", "mask", "w4a");
    step("Reshape", "s4", "w5");
  }
  if (c.keyMask) {
    const km = new Float32Array(B * n);
    for (let i = 0; i < km.length; i++) km[i] = i % 3 === 1 ? -Infinity : 0;
    inits.push({ name: "keymask", dims: [B, 1, 1, n], data: km });
    step("Add", "keymask", "s6");
  }
  nodes.push({ opType: "Softmax", inputs: [s], outputs: ["p"], attrs: c.noAxis ? {} : { axis: -1 } });
  if (c.einsum)
    nodes.push({ opType: "Einsum", inputs: ["p", "v"], outputs: ["o"], attrs: { equation: c.equations?.[1] ?? "bhxy,bhyd->bhxd" } });
  else nodes.push({ opType: "MatMul", inputs: ["p", "v"], outputs: ["o"] });
  nodes.push(
    { opType: "Transpose", inputs: ["o"], outputs: ["ot"], attrs: { perm: [0, 2, 1, 3] } },
    { opType: "Reshape", inputs: ["ot", "sout"], outputs: ["y"] },
  );
  return encodeModel({
    opset: c.opset ?? 17,
    nodes,
    inputs: [{ name: "qkv", shape: [B, n, 3 * H * hd] }],
    outputs: [
      { name: "y", shape: [B, n, H * hd] },
      ...(c.scoresOut ? [{ name: "s0" }] : []),
      ...(c.rope === "readTwice" ? [{ name: "r5" }] : []),
    ],
    initializers: inits,
  });
}

const CASES: [string, Case][] = [
  [
    "SwinUNETR's window attention (q scaled, bias, a mask through a 5-D Reshape; n 49, hd 12)",
    { B: 6, n: 49, H: 3, hd: 12, scaleQ: true, windows: 3 },
  ],
  ["UNETR's SABlock (Einsums, the products scaled; n 37, hd 20)", { B: 1, n: 37, H: 4, hd: 20, einsum: true }],
  ["a key mask broadcast over the queries, −∞ at a third of the keys (n 20, hd 33)", { B: 2, n: 20, H: 2, hd: 33, keyMask: true }],
  ["one token and one channel a head", { B: 3, n: 1, H: 2, hd: 1, scaleQ: true }],
  ["torch's scaled_dot_product_attention export: q and kᵀ each by √scale (n 30, hd 16)", { B: 2, n: 30, H: 2, hd: 16, sdpa: "both" }],
  ["kᵀ alone scaled (n 17, hd 10)", { B: 1, n: 17, H: 3, hd: 10, sdpa: "kOnly" }],
  ["a rotary embedding on q and k of the split (Primus's; n 26, hd 12)", { B: 2, n: 26, H: 3, hd: 12, scaleQ: true, rope: "ok" }],
];

const UNFUSED: [string, Case][] = [
  ["the scores also a graph output", { B: 2, n: 24, H: 2, hd: 16, windows: 2, scoresOut: true }],
  // (labels are case-sensitive: "D" is another axis, summed on its own)
  [
    "an Einsum whose labels differ from the pattern's only in case",
    { B: 1, n: 9, H: 2, hd: 4, einsum: true, equations: ["bhid,bhjD->bhij", "bhxy,bhyd->bhxd"], notFused: true },
  ],
  [
    "an opset-12 Softmax without an axis (one softmax over H·n·n values)",
    { B: 2, n: 6, H: 2, hd: 4, opset: 12, noAxis: true, notFused: true },
  ],
  ["a rotary embedding that rotates v too", { B: 1, n: 10, H: 2, hd: 6, scaleQ: true, rope: "vRotated", notFused: true }],
  ["a rotary-looking Gather that reverses a head instead of swapping pairs", { B: 1, n: 10, H: 2, hd: 6, rope: "notSwap", notFused: true }],
  ["the split read by another node too (a graph output)", { B: 1, n: 10, H: 2, hd: 6, rope: "readTwice", notFused: true }],
];
for (const [title, c] of [...CASES, ...UNFUSED.map(([t, u]): [string, Case] => [`${t}: not fused`, u])]) {
  test.serial(`${title}: equals onnxruntime on every backend`, async (t) => {
    const bytes = graph(c);
    const x = randomTensor([c.B, c.n, 3 * c.H * c.hd], 7);
    for (let i = 0; i < x.data.length; i++) x.data[i]! *= 3; // scores of a few units: a peaked softmax
    const session = await ort.InferenceSession.create(bytes, { intraOpNumThreads: 1 });
    const want = await session.run({ qkv: new ort.Tensor("float32", x.data, x.shape) });
    await session.release();
    const model = await loadModel(bytes);
    try {
      for (const { name } of backendsUnderTest()) {
        setBackend(name);
        const out = await model.runAll({ qkv: x });
        for (const k of Object.keys(want)) {
          const d = scaleDiff(out[k]!.data, want[k]!.data as Float32Array);
          t.true(d <= 2e-6, `${name}, ${k}: ${d} of onnxruntime's scale`);
        }
        // native: one node; other backends (and a graph the pattern does not fit): the nodes themselves
        const ops = Object.keys(model.lastRun!.opMs);
        const fused = !c.scoresOut && !c.notFused && name === "native";
        t.is(ops.includes("bhsd.SelfAttention"), fused, `${name}: ${ops.join(", ")}`);
        t.is(ops.includes("Softmax"), !fused, `${name}: ${ops.join(", ")}`);
      }
    } finally {
      model.dispose();
    }
  });
}

test.serial("the native attention refuses offsets outside their arrays, overlapping buffers and wrong lengths", async (t) => {
  let be;
  try {
    be = getBackend("native");
  } catch {
    return t.log("the native backend is not loaded here: nothing to check");
  }
  if (!be.attention) return t.fail("the native backend has no attention kernel");
  const B = 2,
    n = 5,
    H = 2,
    hd = 3;
  const qkv = randomTensor([B * n * 3 * H * hd], 3).data;
  const out = new Float32Array(B * n * H * hd);
  const extra = new Float32Array(H * n * n);
  const ok = Float64Array.of(0, n * n, 0, n * n);
  const call = (e: [Float32Array, Float64Array, number][], o = out, q = qkv, shape: [number, number, number, number] = [B, n, H, hd]) =>
    (async () => be.attention!(q, shape, 0.5, false, e, o))();
  await call([[extra, ok, n]]);
  t.true(out.every(Number.isFinite));
  for (const [what, e, re] of [
    ["an offset past the end", [[extra, Float64Array.of(0, n * n, 0, n * n + 1), n]], /outside its array/],
    ["a negative offset other than −1", [[extra, Float64Array.of(0, -2, 0, 0), n]], /outside its array/],
    ["a fractional offset", [[extra, Float64Array.of(0, 0.5, 0, 0), n]], /outside its array/],
    ["a NaN offset", [[extra, Float64Array.of(0, NaN, 0, 0), n]], /outside its array/],
    ["too few offsets", [[extra, Float64Array.of(0, 0, 0), n]], /batch\*heads/],
    ["a row stride other than 0 or n", [[extra, ok, 3]], /rowStride/],
    ["five terms", Array(5).fill([extra, ok, n]), /at most 4/],
  ] as [string, [Float32Array, Float64Array, number][], RegExp][])
    await t.throwsAsync(call(e), { message: re }, what);
  await t.throwsAsync(call([], out, qkv.subarray(1)), { message: /qkv must be a Float32Array/ }, "a short qkv");
  const shared = new Float32Array(qkv.length + out.length);
  await t.throwsAsync(call([], shared.subarray(qkv.length - 1, qkv.length - 1 + out.length), shared.subarray(0, qkv.length)), {
    message: /overlaps/,
  });
  await t.throwsAsync(call([], out, qkv, [B, n, H, 0]), { message: /attention shape/ }, "a zero size");
  await t.throwsAsync(call([], out, qkv, [2 ** 40, 2 ** 40, 1, 1]), { message: /too large/ }, "sizes whose product overflows");
  // a rotary table: [n, 2·hd] of an even head width, not inside out
  if (!be.attentionRope) return t.fail("the native backend takes no rotary table");
  const hd2 = 4,
    q2 = randomTensor([B * n * 3 * H * hd2], 5).data,
    out2 = new Float32Array(B * n * H * hd2);
  const rope = (table: Float32Array, shape: [number, number, number, number] = [B, n, H, hd2], o = out2, q = q2) =>
    (async () => be.attention!(q, shape, 0.5, true, [], o, table))();
  await rope(new Float32Array(n * 2 * hd2).fill(0.5));
  t.true(out2.every(Number.isFinite));
  await t.throwsAsync(rope(new Float32Array(n * 2 * hd2 - 1)), { message: /rope must be a Float32Array of 40/ }, "a short table");
  await t.throwsAsync(
    rope(new Float32Array(n * 2 * hd), [B, n, H, hd], out, qkv),
    { message: /even head width, got 3/ },
    "an odd head width",
  );
  const both = new Float32Array(out2.length + 8);
  await t.throwsAsync(rope(both.subarray(0, n * 2 * hd2), [B, n, H, hd2], both.subarray(0, out2.length)), { message: /rope overlaps out/ });
});

/**
 * torch.onnx's export of an attention projecting q, k and v apart (timm's EvaAttention, nnU-Net's
 * Primus), which joinQkvProjections rewrites into the one-projection form: the nodes in the
 * exporter's order, with look-alikes that must be left as they are.
 */
interface SplitCase {
  B: number;
  n: number;
  H: number;
  hd: number;
  Cin: number;
  /** Tokens kept out of the rotation (registers): Slice [0, P) and a Concat; "none": no Concat at all. */
  prefix: number | "none";
  rope: "both" | "none" | "qOnly" | "kDiffers" | "rotateHalf";
  kBias?: boolean;
  /** The q projection also a graph output. */
  projRead?: boolean;
  /** k projected from a second input. */
  kFromOther?: boolean;
  /** q and kᵀ each scaled by √scale (torch 2's scaled_dot_product_attention, as timm runs it there). */
  sdpa?: boolean;
  /** The odd and even Slices without axes: ONNX's default, axis 0 (a batch of two interleaved). */
  noAxes?: boolean;
  /**
   * X holds 2n tokens while the Reshapes say [B, n, H, −1]: ONNX makes each head twice as wide (no
   * rotation; the output [B, n, 2C]).
   */
  doubleTokens?: boolean;
  fused: boolean;
}

function splitGraph(c: SplitCase): Uint8Array {
  const { B, n, H, hd, Cin } = c;
  const C = H * hd,
    P = c.prefix === "none" ? 0 : c.prefix,
    m = n - P;
  type N = { opType: string; inputs: string[]; outputs: string[]; attrs?: Record<string, number | number[] | string> };
  const nodes: N[] = [];
  const inits: Parameters<typeof encodeModel>[0]["initializers"] = [
    i64("spec", [4], [B, n, H, -1]),
    i64("outspec", [3], [B, n, c.doubleTokens ? 2 * C : C]),
    i64("zero", [1], [0]),
    i64("P", [1], [P]),
    i64("big", [1], [2 ** 53 - 1]),
    i64("ax2", [1], [2]),
    i64("ax3", [1], [3]),
    i64("one", [1], [1]),
    i64("two", [1], [2]),
    i64("half", [1], [Math.floor(hd / 2)]),
    i64("minus1", [1], [-1]),
    i64("rotspec", [4], [B, H, m, hd]),
    { name: "scale", dims: [], data: Float32Array.of(hd ** -0.5) },
    { name: "rootscale", dims: [1], data: Float32Array.of(hd ** -0.25) },
  ];
  for (const [k, part] of ["q", "k", "v"].entries()) {
    inits.push({ name: `W${part}`, dims: [Cin, C], data: randomTensor([Cin, C], 20 + k).data });
    const bias = part !== "k" || c.kBias;
    if (bias) inits.push({ name: `b${part}`, dims: [C], data: randomTensor([C], 30 + k).data });
    const x = part === "k" && c.kFromOther ? "x2" : "x";
    nodes.push({ opType: "MatMul", inputs: [x, `W${part}`], outputs: [`${part}mm`] });
    if (bias) nodes.push({ opType: "Add", inputs: [`b${part}`, `${part}mm`], outputs: [`${part}p`] });
    nodes.push(
      { opType: "Reshape", inputs: [bias ? `${part}p` : `${part}mm`, "spec"], outputs: [`${part}r`] },
      { opType: "Transpose", inputs: [`${part}r`], outputs: [`${part}h`], attrs: { perm: [0, 2, 1, 3] } },
    );
  }
  const rotated = (part: "q" | "k"): string => {
    const h = `${part}h`;
    if (c.rope === "none" || (c.rope === "qOnly" && part === "k")) return h;
    const tables = (seed: number) => {
      const cos = randomTensor([m, hd], seed).data,
        sin = randomTensor([m, hd], seed + 1).data;
      return { cos, sin };
    };
    const tb = tables(part === "k" && c.rope === "kDiffers" ? 50 : 40);
    inits.push({ name: `${part}cos`, dims: [m, hd], data: tb.cos }, { name: `${part}sin`, dims: [m, hd], data: tb.sin });
    let x = h;
    if (P > 0) {
      nodes.push({ opType: "Slice", inputs: [h, "P", "big", "ax2", "one"], outputs: [`${part}x`] });
      x = `${part}x`;
    }
    nodes.push({ opType: "Mul", inputs: [x, `${part}cos`], outputs: [`${part}c`] });
    if (c.rope === "rotateHalf") {
      // timm's rope_rotate_half: [−x2, x1] by halves
      nodes.push(
        { opType: "Slice", inputs: [x, "zero", "half", "ax3"], outputs: [`${part}a`] },
        { opType: "Slice", inputs: [x, "half", "big", "ax3"], outputs: [`${part}b`] },
        { opType: "Neg", inputs: [`${part}b`], outputs: [`${part}nb`] },
        { opType: "Concat", inputs: [`${part}nb`, `${part}a`], outputs: [`${part}rot`], attrs: { axis: -1 } },
      );
    } else
      nodes.push(
        { opType: "Slice", inputs: [x, "one", "big", c.noAxes ? "" : "ax3", "two"], outputs: [`${part}o`] },
        { opType: "Neg", inputs: [`${part}o`], outputs: [`${part}no`] },
        { opType: "Slice", inputs: [x, "zero", "big", c.noAxes ? "" : "ax3", "two"], outputs: [`${part}e`] },
        { opType: "Unsqueeze", inputs: [`${part}no`, "minus1"], outputs: [`${part}u0`] },
        { opType: "Unsqueeze", inputs: [`${part}e`, "minus1"], outputs: [`${part}u1`] },
        { opType: "Concat", inputs: [`${part}u0`, `${part}u1`], outputs: [`${part}st`], attrs: { axis: -1 } },
        { opType: "Reshape", inputs: [`${part}st`, "rotspec"], outputs: [`${part}rot`] },
      );
    nodes.push(
      { opType: "Mul", inputs: [`${part}rot`, `${part}sin`], outputs: [`${part}s`] },
      { opType: "Add", inputs: [`${part}c`, `${part}s`], outputs: [`${part}add`] },
    );
    if (c.prefix === "none") return `${part}add`;
    nodes.push(
      { opType: "Slice", inputs: [h, "zero", "P", "ax2", "one"], outputs: [`${part}pre`] },
      { opType: "Concat", inputs: [`${part}pre`, `${part}add`], outputs: [`${part}cat`], attrs: { axis: 2 } },
    );
    return `${part}cat`;
  };
  const q = rotated("q"),
    k = rotated("k");
  nodes.push(
    { opType: "Mul", inputs: [q, c.sdpa ? "rootscale" : "scale"], outputs: ["qscaled"] },
    ...(c.sdpa
      ? [
          { opType: "Transpose", inputs: [k], outputs: ["kt0"], attrs: { perm: [0, 1, 3, 2] } },
          { opType: "Mul", inputs: ["kt0", "rootscale"], outputs: ["kt"] },
        ]
      : [{ opType: "Transpose", inputs: [k], outputs: ["kt"], attrs: { perm: [0, 1, 3, 2] } }]),
    { opType: "MatMul", inputs: ["qscaled", "kt"], outputs: ["scores"] },
    { opType: "Softmax", inputs: ["scores"], outputs: ["p"], attrs: { axis: -1 } },
    { opType: "MatMul", inputs: ["p", "vh"], outputs: ["o"] },
    { opType: "Transpose", inputs: ["o"], outputs: ["ot"], attrs: { perm: [0, 2, 1, 3] } },
    { opType: "Reshape", inputs: ["ot", "outspec"], outputs: ["y"] },
  );
  return encodeModel({
    opset: 17,
    nodes,
    inputs: [{ name: "x", shape: [B, c.doubleTokens ? 2 * n : n, Cin] }, ...(c.kFromOther ? [{ name: "x2", shape: [B, n, Cin] }] : [])],
    outputs: [{ name: "y", shape: [B, n, c.doubleTokens ? 2 * C : C] }, ...(c.projRead ? [{ name: "qmm" }] : [])],
    initializers: inits,
  });
}

const SPLIT: [string, SplitCase][] = [
  [
    "two registers kept out of the rotation (Primus's; n 21, hd 10)",
    { B: 1, n: 21, H: 3, hd: 10, Cin: 17, prefix: 2, rope: "both", fused: true },
  ],
  [
    "no registers: an empty Slice and a Concat (n 19, hd 8, two items)",
    { B: 2, n: 19, H: 2, hd: 8, Cin: 9, prefix: 0, rope: "both", kBias: true, fused: true },
  ],
  ["no Concat at all", { B: 1, n: 12, H: 2, hd: 6, Cin: 8, prefix: "none", rope: "both", fused: true }],
  [
    "q and kᵀ each by √scale, as torch 2 exports timm's scaled_dot_product_attention (n 14, hd 8)",
    { B: 1, n: 14, H: 2, hd: 8, Cin: 12, prefix: 1, rope: "both", sdpa: true, fused: true },
  ],
  [
    "no rotary embedding, every projection with a bias",
    { B: 1, n: 15, H: 4, hd: 5, Cin: 20, prefix: 0, rope: "none", kBias: true, fused: true },
  ],
  ["q rotated, k not: not fused", { B: 1, n: 11, H: 2, hd: 6, Cin: 8, prefix: 1, rope: "qOnly", fused: false }],
  ["q and k rotated by different tables: not fused", { B: 1, n: 11, H: 2, hd: 6, Cin: 8, prefix: 1, rope: "kDiffers", fused: false }],
  [
    "timm's rotate-half layout (not the interleaved one): not fused",
    { B: 1, n: 11, H: 2, hd: 6, Cin: 8, prefix: 1, rope: "rotateHalf", fused: false },
  ],
  [
    "the q projection read elsewhere (a graph output): not fused",
    { B: 1, n: 11, H: 2, hd: 6, Cin: 8, prefix: 1, rope: "both", projRead: true, fused: false },
  ],
  [
    "X of twice the tokens the Reshapes' [B, n, H, −1] say (heads twice as wide): not fused",
    { B: 1, n: 6, H: 2, hd: 4, Cin: 8, prefix: 0, rope: "none", doubleTokens: true, fused: false },
  ],
  [
    "more registers kept out of the rotation than tokens rotated (the join's tables would outgrow the file's): not fused",
    { B: 1, n: 12, H: 2, hd: 4, Cin: 6, prefix: 9, rope: "both", fused: false },
  ],
  [
    "odd and even Slices without axes (ONNX's default: the batch axis): not fused",
    { B: 2, n: 9, H: 2, hd: 4, Cin: 6, prefix: 0, rope: "both", noAxes: true, fused: false },
  ],
  [
    "k projected from another input: not fused",
    { B: 1, n: 11, H: 2, hd: 6, Cin: 8, prefix: 0, rope: "both", kFromOther: true, fused: false },
  ],
];
for (const [title, c] of SPLIT) {
  test.serial(`q, k and v projected apart — ${title}: equals onnxruntime on every backend`, async (t) => {
    const bytes = splitGraph(c);
    const feeds: Record<string, { data: Float32Array; shape: number[] }> = {
      x: randomTensor([c.B, c.doubleTokens ? 2 * c.n : c.n, c.Cin], 8),
    };
    if (c.kFromOther) feeds.x2 = randomTensor([c.B, c.n, c.Cin], 9);
    for (const f of Object.values(feeds)) for (let i = 0; i < f.data.length; i++) f.data[i]! *= 2;
    const session = await ort.InferenceSession.create(bytes, { intraOpNumThreads: 1 });
    const want = await session.run(
      Object.fromEntries(Object.entries(feeds).map(([k, v]) => [k, new ort.Tensor("float32", v.data, v.shape)])),
    );
    await session.release();
    const model = await loadModel(bytes);
    try {
      for (const { name } of backendsUnderTest()) {
        setBackend(name);
        const out = await model.runAll(feeds);
        for (const k of Object.keys(want)) {
          const d = scaleDiff(out[k]!.data, want[k]!.data as Float32Array);
          t.true(d <= 2e-6, `${name}, ${k}: ${d} of onnxruntime's scale`);
        }
        const ops = Object.keys(model.lastRun!.opMs);
        const fused = c.fused && name === "native";
        t.is(ops.includes("bhsd.SelfAttention"), fused, `${name}: ${ops.join(", ")}`);
        t.is(ops.includes("Softmax"), !fused, `${name}: ${ops.join(", ")}`);
      }
    } finally {
      model.dispose();
    }
  });
}

test.serial(
  "blocks that share q, k and v weights share one joined copy: load-time memory follows the file, not the number of blocks",
  async (t) => {
    const blocks = 24,
      n = 8,
      H = 2,
      hd = 16,
      C = H * hd;
    type N = { opType: string; inputs: string[]; outputs: string[]; attrs?: Record<string, number | number[] | string> };
    const nodes: N[] = [];
    let x = "x";
    for (let b = 0; b < blocks; b++) {
      const v = (s: string) => `b${b}_${s}`;
      for (const part of ["q", "k", "v"]) {
        nodes.push({ opType: "MatMul", inputs: [x, `W${part}`], outputs: [v(`${part}mm`)] });
        nodes.push({ opType: "Reshape", inputs: [v(`${part}mm`), "spec"], outputs: [v(`${part}r`)] });
        nodes.push({ opType: "Transpose", inputs: [v(`${part}r`)], outputs: [v(`${part}h`)], attrs: { perm: [0, 2, 1, 3] } });
      }
      nodes.push(
        { opType: "Mul", inputs: [v("qh"), "scale"], outputs: [v("qs")] },
        { opType: "Transpose", inputs: [v("kh")], outputs: [v("kt")], attrs: { perm: [0, 1, 3, 2] } },
        { opType: "MatMul", inputs: [v("qs"), v("kt")], outputs: [v("s")] },
        { opType: "Softmax", inputs: [v("s")], outputs: [v("p")], attrs: { axis: -1 } },
        { opType: "MatMul", inputs: [v("p"), v("vh")], outputs: [v("o")] },
        { opType: "Transpose", inputs: [v("o")], outputs: [v("ot")], attrs: { perm: [0, 2, 1, 3] } },
        { opType: "Reshape", inputs: [v("ot"), "outspec"], outputs: [v("y")] },
      );
      x = v("y");
    }
    const bytes = encodeModel({
      opset: 17,
      nodes,
      inputs: [{ name: "x", shape: [1, n, C] }],
      outputs: [{ name: x, shape: [1, n, C] }],
      initializers: [
        i64("spec", [4], [1, n, H, hd]),
        i64("outspec", [3], [1, n, C]),
        { name: "scale", dims: [], data: Float32Array.of(hd ** -0.5) },
        // (small weights: 24 attentions in a row of peaked softmaxes would amplify each rounding)
        ...["q", "k", "v"].map((part, k) => ({
          name: `W${part}`,
          dims: [C, C],
          data: randomTensor([C, C], 60 + k).data.map((w) => w * 0.25),
        })),
      ],
    });
    const input = randomTensor([1, n, C], 12);
    const session = await ort.InferenceSession.create(bytes, { intraOpNumThreads: 1 });
    const want = (await session.run({ x: new ort.Tensor("float32", input.data, input.shape) }))[x]!.data as Float32Array;
    await session.release();
    const model = await loadModel(bytes);
    try {
      // the three weights (3 · C² floats) once, joined: not once a block
      t.true(model.weightBytes <= 2 * 3 * C * C * 4, `${model.weightBytes} bytes of weights for ${blocks} blocks`);
      for (const { name } of backendsUnderTest()) {
        setBackend(name);
        const y = await model.run(input);
        const d = scaleDiff(y.data, want);
        t.true(d <= 1e-5, `${name}: ${d} of onnxruntime's scale`);
        t.is(Object.keys(model.lastRun!.opMs).includes("bhsd.SelfAttention"), name === "native");
      }
    } finally {
      model.dispose();
    }
  },
);
