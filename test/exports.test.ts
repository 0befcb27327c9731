/**
 * What torch.onnx writes for transformer networks (a SwinUNETR export holds all of these), each
 * against onnxruntime on the same graph: ScatterND (PyTorch's slice assignments — SwinUNETR's
 * attention mask), LayerNorm decomposed into eight steps (fused back into one LayerNormalization,
 * with γ and β, γ alone or neither), shape glue made constant at load for a fixed input shape (and
 * a run at another shape refused), and Slice / Pad over whole trailing axes (copied in runs).
 */
import test from "ava";
import ort from "onnxruntime-node";
import { loadModel, setBackend } from "../lib/index.js";
import { getBackend } from "../lib/backends/index.js";
import { encodeModel, ONNX_DTYPE } from "../lib/model/onnx-proto.js";
import { backendsUnderTest } from "./helpers.js";
import { ortRun, randomTensor, scaleDiff } from "./ort.js";

const i64 = (name: string, dims: number[], v: number[]) => ({
  name,
  dims,
  data: BigInt64Array.from(v.map(BigInt)),
  dataType: ONNX_DTYPE.INT64,
});
type Node = Parameters<typeof encodeModel>[0]["nodes"][number];

async function ortOf(bytes: Uint8Array, feeds: Record<string, { data: Float32Array; shape: number[] }>) {
  const s = await ort.InferenceSession.create(bytes, { intraOpNumThreads: 1 });
  const r = await s.run(Object.fromEntries(Object.entries(feeds).map(([k, v]) => [k, new ort.Tensor("float32", v.data, v.shape)])));
  await s.release();
  return r;
}

test("ScatterND equals onnxruntime: whole slices and single values, negative indices, each reduction; bad indices are refused", async (t) => {
  const data = randomTensor([4, 5, 6], 1);
  const cases: { idx: number[]; idxShape: number[]; updShape: number[]; reduction?: string }[] = [
    { idx: [0, -1], idxShape: [2, 1], updShape: [2, 5, 6] }, // two whole [5, 6] slices, one counted from the end
    { idx: [1, 2, 3, 4, 0, 0], idxShape: [3, 2], updShape: [3, 6] }, // rows
    { idx: [0, 0, 0, 3, 4, 5], idxShape: [2, 3], updShape: [2] }, // single values
    { idx: [2, 2, 1], idxShape: [3, 1], updShape: [3, 5, 6], reduction: "add" }, // repeated indices accumulate
    { idx: [2, 2, 1], idxShape: [3, 1], updShape: [3, 5, 6], reduction: "mul" },
    { idx: [0, 3], idxShape: [2, 1], updShape: [2, 5, 6], reduction: "max" },
    { idx: [0, 3], idxShape: [2, 1], updShape: [2, 5, 6], reduction: "min" },
  ];
  for (const [k, c] of cases.entries()) {
    const upd = randomTensor(c.updShape, 10 + k);
    const attrs = c.reduction ? { reduction: c.reduction } : {};
    const graph = (idx: number[]) =>
      encodeModel({
        opset: 18,
        nodes: [{ opType: "ScatterND", inputs: ["x", "i", "u"], outputs: ["y"], attrs }],
        inputs: [
          { name: "x", shape: data.shape },
          { name: "u", shape: upd.shape },
        ],
        outputs: [{ name: "y" }],
        initializers: [i64("i", c.idxShape, idx)],
      });
    const [want] = await ortRun(
      "ScatterND",
      [
        { name: "x", tensor: data },
        { name: "i", init: { dims: c.idxShape, data: BigInt64Array.from(c.idx.map(BigInt)) } },
        { name: "u", tensor: upd },
      ],
      attrs,
      18,
    );
    const model = await loadModel(graph(c.idx));
    for (const { name } of backendsUnderTest()) {
      setBackend(name);
      const y = await model.runAll({ x: data, u: upd });
      t.deepEqual(y.y!.shape, want!.shape);
      t.true(scaleDiff(y.y!.data, want!.data as Float32Array) === 0, `case ${k} (${c.reduction ?? "none"}) on ${name}`);
    }
    model.dispose();
  }
  const bad = encodeModel({
    opset: 18,
    nodes: [{ opType: "ScatterND", inputs: ["x", "i", "u"], outputs: ["y"] }],
    inputs: [
      { name: "x", shape: [4, 5, 6] },
      { name: "u", shape: [1, 5, 6] },
    ],
    outputs: [{ name: "y" }],
    initializers: [i64("i", [1, 1], [4])],
  });
  await t.throwsAsync(loadModel(bad), { message: /index 4 is out of range for axis 0 of 4/ });
  const badShape = encodeModel({
    opset: 18,
    nodes: [{ opType: "ScatterND", inputs: ["x", "i", "u"], outputs: ["y"] }],
    inputs: [
      { name: "x", shape: [4, 5, 6] },
      { name: "u", shape: [2, 6] },
    ],
    outputs: [{ name: "y" }],
    initializers: [i64("i", [1, 1], [0])],
  });
  await t.throwsAsync(loadModel(badShape), { message: /updates must have shape \[1,5,6\]/ });
});

/** torch.onnx's F.layer_norm before opset 17. */
function layerNormGraph(affine: "both" | "gamma" | "none", c: number): Uint8Array {
  const nodes: Node[] = [
    { opType: "ReduceMean", inputs: ["x"], outputs: ["m"], attrs: { axes: [-1] } },
    { opType: "Sub", inputs: ["x", "m"], outputs: ["d"] },
    { opType: "Pow", inputs: ["d", "two"], outputs: ["p"] },
    { opType: "ReduceMean", inputs: ["p"], outputs: ["v"], attrs: { axes: [-1] } },
    { opType: "Add", inputs: ["v", "eps"], outputs: ["ve"] },
    { opType: "Sqrt", inputs: ["ve"], outputs: ["s"] },
    { opType: "Div", inputs: ["d", "s"], outputs: [affine === "none" ? "y" : "n"] },
  ];
  if (affine !== "none") nodes.push({ opType: "Mul", inputs: ["n", "g"], outputs: [affine === "both" ? "ng" : "y"] });
  if (affine === "both") nodes.push({ opType: "Add", inputs: ["ng", "b"], outputs: ["y"] });
  return encodeModel({
    opset: 13,
    nodes,
    inputs: [{ name: "x", shape: [2, 7, c] }],
    outputs: [{ name: "y" }],
    initializers: [
      { name: "two", dims: [], data: Float32Array.of(2) },
      { name: "eps", dims: [], data: Float32Array.of(1e-5) },
      { name: "g", dims: [c], data: randomTensor([c], 4).data },
      { name: "b", dims: [c], data: randomTensor([c], 5).data },
    ],
  });
}

test("LayerNorm written as eight steps runs as one LayerNormalization and equals onnxruntime (γ and β, γ alone, neither)", async (t) => {
  for (const affine of ["both", "gamma", "none"] as const) {
    const bytes = layerNormGraph(affine, 48);
    const x = randomTensor([2, 7, 48], 9);
    for (let i = 0; i < x.data.length; i++) x.data[i] = x.data[i]! * 5 + 3; // a mean far from 0
    const want = await ortOf(bytes, { x });
    const model = await loadModel(bytes);
    for (const { name } of backendsUnderTest()) {
      setBackend(name);
      const y = await model.run(x);
      const d = scaleDiff(y.data, want.y!.data as Float32Array);
      t.true(d <= 1e-6, `${affine} on ${name}: ${d}`);
      t.deepEqual(Object.keys(model.lastRun!.opMs), ["LayerNormalization"], `${affine} on ${name}`);
    }
    model.dispose();
  }
});

test("a difference read by a third node, or a mean over another axis, is left as it is (and still equals onnxruntime)", async (t) => {
  // the same steps, but the centred values are also a graph output
  const bytes = layerNormGraph("both", 16);
  const x = randomTensor([2, 7, 16], 2);
  const two = encodeModel({
    opset: 13,
    nodes: [
      { opType: "ReduceMean", inputs: ["x"], outputs: ["m"], attrs: { axes: [0] } },
      { opType: "Sub", inputs: ["x", "m"], outputs: ["d"] },
      { opType: "Pow", inputs: ["d", "two"], outputs: ["p"] },
      { opType: "ReduceMean", inputs: ["p"], outputs: ["v"], attrs: { axes: [0] } },
      { opType: "Add", inputs: ["v", "eps"], outputs: ["ve"] },
      { opType: "Sqrt", inputs: ["ve"], outputs: ["s"] },
      { opType: "Div", inputs: ["d", "s"], outputs: ["y"] },
    ],
    inputs: [{ name: "x", shape: [2, 7, 16] }],
    outputs: [{ name: "y" }],
    initializers: [
      { name: "two", dims: [], data: Float32Array.of(2) },
      { name: "eps", dims: [], data: Float32Array.of(1e-5) },
    ],
  });
  const withD = encodeModel({
    opset: 13,
    nodes: [
      { opType: "ReduceMean", inputs: ["x"], outputs: ["m"], attrs: { axes: [-1] } },
      { opType: "Sub", inputs: ["x", "m"], outputs: ["d"] },
      { opType: "Pow", inputs: ["d", "two"], outputs: ["p"] },
      { opType: "ReduceMean", inputs: ["p"], outputs: ["v"], attrs: { axes: [-1] } },
      { opType: "Add", inputs: ["v", "eps"], outputs: ["ve"] },
      { opType: "Sqrt", inputs: ["ve"], outputs: ["s"] },
      { opType: "Div", inputs: ["d", "s"], outputs: ["y"] },
    ],
    inputs: [{ name: "x", shape: [2, 7, 16] }],
    outputs: [{ name: "y" }, { name: "d" }],
    initializers: [
      { name: "two", dims: [], data: Float32Array.of(2) },
      { name: "eps", dims: [], data: Float32Array.of(1e-5) },
    ],
  });
  for (const g of [two, withD]) {
    const want = await ortOf(g, { x });
    const model = await loadModel(g);
    const out = await model.runAll({ x });
    t.false(Object.keys(model.lastRun!.opMs).some((o) => o === "LayerNormalization" || o === "bhsd.ChannelNorm"));
    for (const k of Object.keys(want)) t.true(scaleDiff(out[k]!.data, want[k]!.data as Float32Array) <= 1e-6, k);
    model.dispose();
  }
  t.truthy(bytes);
});

/**
 * A LayerNorm over the channels of [N, C, …]: dynamic-network-architectures' LayerNormNd (Primus's
 * decoder), SAM's and ConvNeXt's LayerNorm2d, as torch.onnx writes them — the eight steps over
 * axis 1, γ and β as [C, 1, …] — or as channels-last: Transpose → LayerNormalization → Transpose.
 */
function channelNormGraph(
  form: "steps" | "transposed",
  gammaDims: number[] | null,
  betaDims: number[] | null,
  shape: number[],
): Uint8Array {
  const r = shape.length;
  const nodes: Node[] =
    form === "steps"
      ? [
          { opType: "ReduceMean", inputs: ["x"], outputs: ["m"], attrs: { axes: [1] } },
          { opType: "Sub", inputs: ["x", "m"], outputs: ["d"] },
          { opType: "Pow", inputs: ["d", "two"], outputs: ["p"] },
          { opType: "ReduceMean", inputs: ["p"], outputs: ["v"], attrs: { axes: [1] } },
          { opType: "Add", inputs: ["v", "eps"], outputs: ["ve"] },
          { opType: "Sqrt", inputs: ["ve"], outputs: ["s"] },
          { opType: "Div", inputs: ["d", "s"], outputs: [gammaDims ? "n" : "y"] },
          ...(gammaDims ? [{ opType: "Mul", inputs: ["g", "n"], outputs: [betaDims ? "ng" : "y"] }] : []),
          ...(betaDims ? [{ opType: "Add", inputs: ["ng", "b"], outputs: ["y"] }] : []),
        ]
      : [
          {
            opType: "Transpose",
            inputs: ["x"],
            outputs: ["xt"],
            attrs: { perm: [0, ...Array.from({ length: r - 2 }, (_, i) => i + 2), 1] },
          },
          { opType: "LayerNormalization", inputs: ["xt", "g", "b"], outputs: ["nt"], attrs: { axis: -1, epsilon: 1e-6 } },
          {
            opType: "Transpose",
            inputs: ["nt"],
            outputs: ["y"],
            attrs: { perm: [0, r - 1, ...Array.from({ length: r - 2 }, (_, i) => i + 1)] },
          },
        ];
  const size = (d: number[]) => d.reduce((p, q) => p * q, 1);
  return encodeModel({
    opset: 17,
    nodes,
    inputs: [{ name: "x", shape }],
    outputs: [{ name: "y" }],
    initializers: [
      { name: "two", dims: [], data: Float32Array.of(2) },
      { name: "eps", dims: [], data: Float32Array.of(1e-6) },
      ...(gammaDims ? [{ name: "g", dims: gammaDims, data: randomTensor([size(gammaDims)], 4).data }] : []),
      ...(betaDims ? [{ name: "b", dims: betaDims, data: randomTensor([size(betaDims)], 5).data }] : []),
    ],
  });
}

test("a LayerNorm over the channels (eight steps over axis 1, or channels-last between Transposes) runs as one pass and equals onnxruntime", async (t) => {
  const cases: [string, "steps" | "transposed", number[] | null, number[] | null, number[]][] = [
    ["LayerNormNd, 5-D, γ β [C, 1, 1, 1]", "steps", [12, 1, 1, 1], [12, 1, 1, 1], [2, 12, 3, 4, 5]],
    ["LayerNorm2d, γ β [1, C, 1, 1]", "steps", [1, 12, 1, 1], [1, 12, 1, 1], [1, 12, 7, 9]],
    ["no affine map", "steps", null, null, [1, 5, 4, 4, 4]],
    ["γ varying along the last axis (broadcast as the Mul did)", "steps", [6], [1, 1, 1, 6], [2, 12, 3, 6]],
    ["channels-last between Transposes", "transposed", [12], [12], [1, 12, 4, 5, 6]],
    // (one of γ, β a single value: every channel's, not a broadcast along the last axis)
    ["channels-last, γ per channel and β one value", "transposed", [2], [1], [1, 2, 1, 3]],
    ["channels-last, γ one value and β per channel", "transposed", [1], [5], [2, 5, 3, 2]],
  ];
  for (const [what, form, g, b, shape] of cases) {
    const bytes = channelNormGraph(form, g, b, shape);
    const x = randomTensor(shape, 11);
    for (let i = 0; i < x.data.length; i++) x.data[i] = x.data[i]! * 4 + 2; // a mean far from 0
    const want = await ortOf(bytes, { x });
    const model = await loadModel(bytes);
    for (const { name } of backendsUnderTest()) {
      setBackend(name);
      const y = await model.run(x);
      t.deepEqual(y.shape, shape);
      const d = scaleDiff(y.data, want.y!.data as Float32Array);
      t.true(d <= 2e-6, `${what} on ${name}: ${d}`);
      t.deepEqual(Object.keys(model.lastRun!.opMs), ["bhsd.ChannelNorm"], `${what} on ${name}`);
    }
    model.dispose();
  }
  // two rank-3 norms in a row ([0, 2, 1] closes the first and opens the second: fused once), and a
  // LayerNormalization whose scale is one value
  const chain = encodeModel({
    opset: 17,
    nodes: [
      { opType: "Transpose", inputs: ["x"], outputs: ["a"], attrs: { perm: [0, 2, 1] } },
      { opType: "LayerNormalization", inputs: ["a", "g1"], outputs: ["b"], attrs: { axis: -1 } },
      { opType: "Transpose", inputs: ["b"], outputs: ["c"], attrs: { perm: [0, 2, 1] } },
      { opType: "LayerNormalization", inputs: ["c", "g2"], outputs: ["d"], attrs: { axis: -1 } },
      { opType: "Transpose", inputs: ["d"], outputs: ["y"], attrs: { perm: [0, 2, 1] } },
    ],
    inputs: [{ name: "x", shape: [2, 6, 9] }],
    outputs: [{ name: "y" }],
    initializers: [
      { name: "g1", dims: [1], data: Float32Array.of(1.5) },
      { name: "g2", dims: [9], data: randomTensor([9], 8).data },
    ],
  });
  const xc = randomTensor([2, 6, 9], 12);
  const wantChain = await ortOf(chain, { x: xc });
  const mc = await loadModel(chain);
  for (const { name } of backendsUnderTest()) {
    setBackend(name);
    const y = await mc.run(xc);
    t.true(scaleDiff(y.data, wantChain.y!.data as Float32Array) <= 2e-6, `chain on ${name}`);
  }
  mc.dispose();
  // the native pass refuses what it cannot run safely
  let nat;
  try {
    nat = getBackend("native");
  } catch {
    nat = undefined;
  }
  if (nat?.channelNorm) {
    // (the addon's checks throw at the call: wrapped, each is a rejected promise)
    const f = nat.channelNorm.bind(nat);
    const cn = (...args: Parameters<typeof f>) => (async () => f(...args))();
    const xs = new Float32Array(2 * 3 * 4),
      ys = new Float32Array(xs.length);
    await cn(xs, 2, 3, 4, null, null, 1e-5, ys);
    t.true(ys.every((v) => v === 0));
    await t.throwsAsync(cn(xs, 2, 3, 4, new Float32Array(2), null, 1e-5, ys), { message: /gamma must be a Float32Array of 3/ });
    await t.throwsAsync(cn(xs, 2, 3, 4, null, null, NaN, ys), { message: /eps must be a non-negative number, got nan/ });
    await t.throwsAsync(cn(xs, 2, 3, 4, null, null, 1e-5, xs), { message: /x overlaps out/ });
    // γ or β inside out: read by every thread while others write out
    await t.throwsAsync(cn(xs, 2, 3, 4, ys.subarray(5, 8), null, 1e-5, ys), { message: /overlaps/ });
    await t.throwsAsync(cn(xs, 2, 3, 4, null, ys.subarray(21, 24), 1e-5, ys), { message: /overlaps/ });
    await t.throwsAsync(cn(xs, 2, 3, 5, null, null, 1e-5, ys), { message: /x must be a Float32Array of 30/ });
  }
  // a file may not name the internal op
  const bad = encodeModel({
    opset: 17,
    nodes: [{ opType: "bhsd.ChannelNorm", inputs: ["x"], outputs: ["y"] }],
    inputs: [{ name: "x", shape: [1, 2, 3] }],
    outputs: [{ name: "y" }],
  });
  await t.throwsAsync(loadModel(bad), { message: /op bhsd\.ChannelNorm is not supported/ });
});

test("shape glue is constant at load for a fixed input shape: Shape → Gather → Concat → Reshape folded, a run at another shape refused", async (t) => {
  // y = Reshape(x, [Shape(x)[0], Shape(x)[1], -1]) · 2: the target from the input's shape
  const bytes = encodeModel({
    opset: 17,
    nodes: [
      { opType: "Shape", inputs: ["x"], outputs: ["s"] },
      { opType: "Gather", inputs: ["s", "i01"], outputs: ["nc"], attrs: { axis: 0 } },
      { opType: "Concat", inputs: ["nc", "m1"], outputs: ["spec"], attrs: { axis: 0 } },
      { opType: "Reshape", inputs: ["x", "spec"], outputs: ["r"] },
      { opType: "Mul", inputs: ["r", "k"], outputs: ["y"] },
    ],
    inputs: [{ name: "x", shape: ["batch", 3, "d", 4] }],
    outputs: [{ name: "y" }],
    initializers: [i64("i01", [2], [0, 1]), i64("m1", [1], [-1]), { name: "k", dims: [], data: Float32Array.of(2) }],
  });
  const x = randomTensor([2, 3, 5, 4], 3);
  const want = await ortOf(bytes, { x });
  // symbolic dimensions: nothing folded, any shape runs
  const free = await loadModel(bytes);
  const y0 = await free.run(x);
  t.deepEqual(y0.shape, [2, 3, 20]);
  t.true(Object.keys(free.lastRun!.opMs).includes("Shape"));
  t.deepEqual((await free.run(randomTensor([1, 3, 2, 4], 4))).shape, [1, 3, 8]);
  // inputShapes fixes them: the glue is constant, the model runs at that shape only
  const fixed = await loadModel(bytes, { inputShapes: { x: [2, 3, 5, 4] } });
  t.deepEqual(fixed.inputs[0]!.shape, [2, 3, 5, 4]);
  const y1 = await fixed.run(x);
  t.deepEqual(Object.keys(fixed.lastRun!.opMs).sort(), ["Mul", "Reshape"]);
  t.true(scaleDiff(y1.data, want.y!.data as Float32Array) === 0);
  await t.throwsAsync(fixed.run(randomTensor([1, 3, 2, 4], 4)), {
    message: /input x has shape \[1, 3, 2, 4\] but the model expects \[2, 3, 5, 4\]/,
  });
});

test("Slice and Pad over whole trailing axes equal onnxruntime: crops, strided and reversed axes, constant padding", async (t) => {
  const x = randomTensor([2, 7, 9, 5, 24], 6);
  const slices: [string, number[], number[], number[], number[]][] = [
    ["a crop of axis 1 (the rest whole)", [0], [5], [1], [1]],
    ["SwinUNETR's x[:, 0::2, 1::2, 0::2, :]", [0, 1, 0], [7, 9, 5], [1, 2, 3], [2, 2, 2]],
    ["a reversed axis", [-1], [-100], [2], [-1]],
    ["everything", [0], [2], [0], [1]],
    ["the last axis strided", [1], [24], [4], [3]],
    ["an empty result", [3], [3], [1], [1]],
  ];
  const model = async (nodes: Node[], inits: Parameters<typeof encodeModel>[0]["initializers"]) =>
    encodeModel({ opset: 17, nodes, inputs: [{ name: "x", shape: x.shape }], outputs: [{ name: "y" }], initializers: inits });
  for (const [what, starts, ends, axes, steps] of slices) {
    const bytes = await model(
      [{ opType: "Slice", inputs: ["x", "st", "en", "ax", "sp"], outputs: ["y"] }],
      [
        i64("st", [starts.length], starts),
        i64("en", [ends.length], ends),
        i64("ax", [axes.length], axes),
        i64("sp", [steps.length], steps),
      ],
    );
    const want = await ortOf(bytes, { x });
    const m = await loadModel(bytes);
    const y = await m.run(x);
    t.deepEqual(y.shape, [...want.y!.dims], what);
    t.deepEqual(Array.from(y.data), Array.from(want.y!.data as Float32Array), what);
  }
  for (const [what, pads, value] of [
    ["SwinUNETR's padding at the end of the three spatial axes", [0, 0, 0, 0, 0, 0, 3, 2, 1, 0], 0],
    ["the leading axes and a value", [1, 0, 2, 0, 0, 0, 1, 0, 0, 0], 7.5],
    ["nothing", [0, 0, 0, 0, 0, 0, 0, 0, 0, 0], 0],
  ] as [string, number[], number][]) {
    const p = pads;
    const bytes = await model(
      [{ opType: "Pad", inputs: ["x", "p", "v"], outputs: ["y"] }],
      [i64("p", [10], p), { name: "v", dims: [], data: Float32Array.of(value) }],
    );
    const want = await ortOf(bytes, { x });
    const m = await loadModel(bytes);
    const y = await m.run(x);
    t.deepEqual(y.shape, [...want.y!.dims], what);
    t.deepEqual(Array.from(y.data), Array.from(want.y!.data as Float32Array), what);
  }
});

test("a Linear layer's MatMul → Add runs as one MatMul with the bias added as the GEMM stores it, and equals onnxruntime", async (t) => {
  const graph = (alsoProduct: boolean) =>
    encodeModel({
      opset: 17,
      nodes: [
        { opType: "MatMul", inputs: ["x", "w"], outputs: ["p"] },
        { opType: "Add", inputs: ["b", "p"], outputs: ["y"] },
      ],
      inputs: [{ name: "x", shape: [1, 300, 40] }],
      outputs: [{ name: "y" }, ...(alsoProduct ? [{ name: "p" }] : [])],
      initializers: [
        { name: "w", dims: [40, 36], data: randomTensor([40 * 36], 21).data },
        { name: "b", dims: [36], data: randomTensor([36], 22).data },
      ],
    });
  const x = randomTensor([1, 300, 40], 23);
  for (const alsoProduct of [false, true]) {
    const bytes = graph(alsoProduct);
    const want = await ortOf(bytes, { x });
    const model = await loadModel(bytes);
    for (const { name } of backendsUnderTest()) {
      setBackend(name);
      const out = await model.runAll({ x });
      for (const k of Object.keys(want)) t.true(scaleDiff(out[k]!.data, want[k]!.data as Float32Array) <= 1e-6, `${k} on ${name}`);
      // (the product a graph output too: left as two nodes)
      t.deepEqual(Object.keys(model.lastRun!.opMs).sort(), alsoProduct ? ["Add", "MatMul"] : ["MatMul"], `${alsoProduct} on ${name}`);
    }
    model.dispose();
  }
});

test("Transpose of the last two axes (attention's kᵀ, tiled) and of the middle ones equals onnxruntime", async (t) => {
  for (const [shape, perm] of [
    [
      [2, 3, 70, 40],
      [0, 1, 3, 2],
    ],
    [
      [1, 6, 33, 66],
      [0, 1, 3, 2],
    ],
    [
      [1, 40, 6, 66],
      [0, 2, 1, 3],
    ],
    [
      [3, 50, 7],
      [0, 2, 1],
    ],
  ] as [number[], number[]][]) {
    const bytes = encodeModel({
      opset: 17,
      nodes: [{ opType: "Transpose", inputs: ["x"], outputs: ["y"], attrs: { perm } }],
      inputs: [{ name: "x", shape }],
      outputs: [{ name: "y" }],
    });
    const x = randomTensor(shape, 3);
    const want = await ortOf(bytes, { x });
    const model = await loadModel(bytes);
    const y = await model.run(x);
    t.deepEqual(y.shape, [...want.y!.dims], `${shape} by ${perm}`);
    t.deepEqual(Array.from(y.data), Array.from(want.y!.data as Float32Array), `${shape} by ${perm}`);
    model.dispose();
  }
});

/** STU-Net's up-sampling as torch.onnx writes it: Resize (nearest, asymmetric, floor) → 1×1 Conv. */
function upsampleConv(opts: { nearestMode?: string; secondReader?: boolean; scales?: number[] }): Uint8Array {
  const r = randomTensor([3, 4, 1, 1, 1], 71);
  const nodes: Node[] = [
    {
      opType: "Resize",
      inputs: ["x", "", "scales"],
      outputs: ["up"],
      attrs: { mode: "nearest", coordinate_transformation_mode: "asymmetric", nearest_mode: opts.nearestMode ?? "floor" },
    },
    { opType: "Conv", inputs: ["up", "w", "b"], outputs: ["y"], attrs: { kernel_shape: [1, 1, 1] } },
  ];
  if (opts.secondReader) nodes.push({ opType: "Relu", inputs: ["up"], outputs: ["z"] });
  return encodeModel({
    opset: 17,
    nodes,
    inputs: [{ name: "x", shape: [1, 4, 3, 4, 5] }],
    outputs: [{ name: "y" }, ...(opts.secondReader ? [{ name: "z" }] : [])],
    initializers: [
      { name: "scales", dims: [5], data: Float32Array.from(opts.scales ?? [1, 1, 1, 2, 3]) },
      { name: "w", dims: [3, 4, 1, 1, 1], data: r.data },
      { name: "b", dims: [3], data: Float32Array.of(0.1, -0.2, 0.3) },
    ],
  });
}

for (const { name } of backendsUnderTest())
  test.serial(`${name}: a 1×1 convolution after a nearest-neighbour up-sampling runs before it, equal to onnxruntime`, async (t) => {
    setBackend(name);
    const x = randomTensor([1, 4, 3, 4, 5], 72);
    for (const [tag, opts, sunk] of [
      ["floor, scales 1×2×3", {}, true],
      ["floor, scales 2×2×2", { scales: [1, 1, 2, 2, 2] }, true],
      ["round_prefer_floor (not the same copy at scale 3)", { nearestMode: "round_prefer_floor" }, false],
      ["the up-sampled value read twice", { secondReader: true }, false],
      ["a fractional scale", { scales: [1, 1, 1, 1.5, 2] }, false],
    ] as const) {
      const bytes = upsampleConv(opts);
      const model = await loadModel(bytes);
      try {
        const y = await model.run(x);
        const want = (await ortOf(bytes, { x }))["y"]!;
        t.deepEqual(y.shape, [...want.dims], tag);
        t.true(scaleDiff(y.data, want.data as Float32Array) < 1e-6, tag);
        // where it sinks, the Conv reads the input itself (it runs first)
        const order = model.lastRun!.nodeMs.map((n) => n.op);
        t.is(order[0] === "Conv", sunk, `${tag}: ${order.join(", ")}`);
      } finally {
        model.dispose();
      }
    }
  });
