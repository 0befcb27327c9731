import test from "ava";
import {
  add,
  allocTensor,
  argmax,
  avgPool3d,
  batchNorm,
  concat,
  conv3d,
  convTranspose3d,
  instanceNorm,
  leakyRelu,
  maxPool3d,
  mul,
  prelu,
  gelu,
  relu,
  resize,
  setBackend,
  sigmoid,
  softmax,
} from "../lib/index.js";
import type { Tensor } from "../lib/types.js";
import { backendsUnderTest } from "./helpers.js";
import { getBackend } from "../lib/backends/index.js";
import { ortRun, randomTensor, relDiff } from "./ort.js";

const TOL = 1e-4;
const backends = backendsUnderTest();
/** Tests comparing the native backend with others: skipped, saying why, where it is not under test. */
const nativeTest = backends.some((b) => b.name === "native") ? test : test.skip;
if (!backends.some((b) => b.name === "native"))
  console.log("# native comparisons skipped: the native backend is not built here or not in BHSD_TEST_BACKENDS");

/** Runs `ours` on every backend and compares each with ORT's output of the same one-node graph. */
async function check(
  t: import("ava").ExecutionContext,
  label: string,
  ref: { data: ArrayLike<number>; shape: number[] },
  ours: () => Promise<{ data: ArrayLike<number>; shape: number[] }>,
) {
  for (const { name } of backends) {
    setBackend(name);
    const got = await ours();
    t.deepEqual(got.shape, ref.shape, `${name} ${label}: shape`);
    const d = relDiff(got.data, ref.data);
    t.true(d <= TOL, `${name} ${label}: max relative difference ${d}`);
  }
}

const convCases: { x: number[]; w: number[]; strides?: number[]; pads?: number[]; dilations?: number[]; group?: number; bias?: boolean }[] =
  [
    { x: [1, 3, 5, 7, 19], w: [7, 3, 3, 3, 3], pads: [1, 1, 1, 1, 1, 1], bias: true },
    { x: [2, 4, 6, 9, 33], w: [13, 4, 3, 3, 3], strides: [2, 2, 2], pads: [1, 1, 1, 1, 1, 1], bias: true },
    { x: [1, 2, 6, 8, 17], w: [6, 2, 3, 3, 3], dilations: [2, 2, 2], pads: [2, 2, 2, 2, 2, 2] },
    { x: [1, 1, 4, 10, 40], w: [32, 1, 3, 3, 3], pads: [1, 1, 1, 1, 1, 1], bias: true }, // the 1-channel first layer
    { x: [1, 4, 3, 12, 12], w: [8, 4, 1, 3, 3], pads: [0, 1, 1, 0, 1, 1], bias: true }, // nnU-Net's anisotropic 1×3×3
    { x: [1, 5, 6, 9, 11], w: [10, 5, 3, 3, 3], strides: [1, 2, 2], pads: [1, 1, 1, 1, 1, 1] },
    { x: [1, 6, 4, 7, 9], w: [4, 3, 3, 3, 3], group: 2, pads: [1, 0, 1, 1, 2, 0], bias: true }, // groups, asymmetric pads
    // more than 48 outputs (packed panels): row windows with edges, dilated windows, short rows as flat runs, gathered strided rows
    { x: [1, 3, 4, 5, 37], w: [50, 3, 3, 3, 3], pads: [1, 1, 1, 1, 1, 1], bias: true },
    { x: [1, 2, 4, 5, 29], w: [49, 2, 3, 1, 3], dilations: [1, 1, 3], pads: [1, 0, 3, 1, 0, 2] },
    { x: [1, 2, 5, 6, 7], w: [52, 2, 3, 3, 3], strides: [1, 2, 2], pads: [1, 1, 1, 1, 1, 1], bias: true },
    { x: [1, 2, 3, 4, 40], w: [55, 2, 3, 3, 3], strides: [1, 1, 2], pads: [1, 1, 1, 1, 1, 1] },
    { x: [1, 40, 3, 3, 3], w: [5, 40, 3, 3, 3] }, // long K, no padding
    { x: [1, 8, 5, 6, 7], w: [6, 8, 1, 1, 1], bias: true }, // 1×1×1 head
    { x: [1, 3, 4, 6, 8], w: [5, 3, 2, 2, 2], strides: [2, 2, 2] },
    { x: [1, 2, 7, 5, 3], w: [3, 2, 2, 3, 1], strides: [3, 1, 2], dilations: [1, 2, 1], pads: [0, 2, 0, 1, 1, 0] },
  ];

for (const [i, c] of convCases.entries()) {
  test.serial(
    `conv3d case ${i}: x ${c.x}, w ${c.w}, strides ${c.strides ?? 1}, pads ${c.pads ?? 0}, dilations ${c.dilations ?? 1}, groups ${c.group ?? 1} equal onnxruntime`,
    async (t) => {
      const x = randomTensor(c.x, 10 + i),
        w = randomTensor(c.w, 20 + i),
        b = randomTensor([c.w[0]!], 30 + i);
      const attrs: Record<string, number[] | number> = { kernel_shape: c.w.slice(2) };
      if (c.strides) attrs.strides = c.strides;
      if (c.pads) attrs.pads = c.pads;
      if (c.dilations) attrs.dilations = c.dilations;
      if (c.group) attrs.group = c.group;
      const [ref] = await ortRun(
        "Conv",
        [
          { name: "x", tensor: x },
          { name: "w", init: { dims: w.shape, data: w.data } },
          ...(c.bias ? [{ name: "b", init: { dims: b.shape, data: b.data } }] : []),
        ],
        attrs,
      );
      await check(t, "conv3d", ref!, () =>
        conv3d(x, w, c.bias ? b : null, {
          ...(c.strides ? { stride: c.strides as [number, number, number] } : {}),
          ...(c.pads ? { padding: c.pads as [number, number, number, number, number, number] } : {}),
          ...(c.dilations ? { dilation: c.dilations as [number, number, number] } : {}),
          groups: c.group ?? 1,
        }),
      );
    },
  );
}

test.serial("conv3d with a fused LeakyReLU equals Conv then LeakyRelu", async (t) => {
  const x = randomTensor([1, 4, 5, 6, 20], 1),
    w = randomTensor([9, 4, 3, 3, 3], 2),
    b = randomTensor([9], 3);
  const [c] = await ortRun(
    "Conv",
    [
      { name: "x", tensor: x },
      { name: "w", init: { dims: w.shape, data: w.data } },
      { name: "b", init: { dims: [9], data: b.data } },
    ],
    { pads: [1, 1, 1, 1, 1, 1] },
  );
  const [ref] = await ortRun("LeakyRelu", [{ name: "x", tensor: { data: c!.data as Float32Array, shape: c!.shape } }], { alpha: 0.01 });
  await check(t, "conv3d+leaky", ref!, () => conv3d(x, w, b, { padding: 1, activation: "leakyRelu", alpha: 0.01 }));
});

const convTCases: {
  x: number[];
  w: number[];
  strides: number[];
  pads?: number[];
  outPad?: number[];
  group?: number;
  dilations?: number[];
}[] = [
  { x: [1, 8, 3, 4, 5], w: [8, 4, 2, 2, 2], strides: [2, 2, 2] },
  { x: [2, 6, 2, 5, 4], w: [6, 3, 1, 2, 2], strides: [1, 2, 2] },
  { x: [1, 4, 3, 3, 4], w: [4, 5, 3, 3, 3], strides: [2, 2, 2], pads: [1, 1, 1, 1, 1, 1], outPad: [1, 1, 1] },
  { x: [1, 4, 3, 4, 3], w: [4, 3, 3, 3, 3], strides: [2, 1, 2], pads: [1, 0, 1, 1, 0, 1], group: 2 },
  { x: [1, 3, 3, 3, 3], w: [3, 2, 2, 3, 2], strides: [1, 2, 1], dilations: [2, 1, 2] },
  // kernel = stride: one 1×1×1 convolution for all taps (full 16-voxel tiles and a ragged end);
  // with an output padding the taps no longer tile the output, and the phase path takes it
  { x: [1, 16, 4, 8, 21], w: [16, 8, 1, 2, 2], strides: [1, 2, 2] },
  { x: [1, 6, 2, 3, 5], w: [6, 4, 2, 2, 2], strides: [2, 2, 2], outPad: [1, 1, 1] },
];
for (const [i, c] of convTCases.entries()) {
  test.serial(`convTranspose3d case ${i}: x ${c.x}, w ${c.w}, strides ${c.strides} equal onnxruntime`, async (t) => {
    const x = randomTensor(c.x, 40 + i),
      w = randomTensor(c.w, 50 + i),
      b = randomTensor([c.w[1]! * (c.group ?? 1)], 60 + i);
    const attrs: Record<string, number[] | number> = { kernel_shape: c.w.slice(2), strides: c.strides };
    if (c.pads) attrs.pads = c.pads;
    if (c.outPad) attrs.output_padding = c.outPad;
    if (c.group) attrs.group = c.group;
    if (c.dilations) attrs.dilations = c.dilations;
    const [ref] = await ortRun(
      "ConvTranspose",
      [
        { name: "x", tensor: x },
        { name: "w", init: { dims: w.shape, data: w.data } },
        { name: "b", init: { dims: b.shape, data: b.data } },
      ],
      attrs,
    );
    await check(t, "convTranspose3d", ref!, () =>
      convTranspose3d(x, w, b, {
        stride: c.strides as [number, number, number],
        ...(c.pads ? { padding: c.pads as [number, number, number, number, number, number] } : {}),
        ...(c.outPad ? { outputPadding: c.outPad as [number, number, number] } : {}),
        ...(c.dilations ? { dilation: c.dilations as [number, number, number] } : {}),
        groups: c.group ?? 1,
      }),
    );
  });
}

test.serial("normalisation, activations and elementwise ops equal onnxruntime", async (t) => {
  const x = randomTensor([2, 5, 3, 6, 7], 70);
  for (const v of x.data.keys()) x.data[v] = x.data[v]! * 3 + 0.5;
  const sc = randomTensor([5], 71),
    bi = randomTensor([5], 72),
    mean = randomTensor([5], 73);
  const variance = { data: randomTensor([5], 74).data.map((v) => v * v + 0.1), shape: [5] };
  const X = [{ name: "x", tensor: x }];
  const init = (name: string, t: Tensor, dims = t.shape) => ({ name, init: { dims, data: t.data } });
  let [ref] = await ortRun("InstanceNormalization", [...X, init("s", sc), init("b", bi)], { epsilon: 1e-5 });
  await check(t, "instanceNorm", ref!, () => instanceNorm(x, sc, bi, { eps: 1e-5 }));
  [ref] = await ortRun(
    "BatchNormalization",
    [...X, init("s", sc), init("b", bi), init("m", mean), init("v", variance)],
    { epsilon: 1e-3 },
    15,
  );
  await check(t, "batchNorm", ref!, () => batchNorm(x, sc, bi, mean, variance, { eps: 1e-3 }));
  [ref] = await ortRun("Relu", X);
  await check(t, "relu", ref!, () => relu(x));
  [ref] = await ortRun("LeakyRelu", X, { alpha: 0.2 });
  await check(t, "leakyRelu", ref!, () => leakyRelu(x, { alpha: 0.2 }));
  [ref] = await ortRun("Sigmoid", X);
  await check(t, "sigmoid", ref!, () => sigmoid(x));
  [ref] = await ortRun("PRelu", [...X, init("slope", sc, [5, 1, 1, 1])]);
  await check(t, "prelu", ref!, () => prelu(x, sc));
  [ref] = await ortRun("Gelu", X, {}, 20);
  await check(t, "gelu", ref!, () => gelu(x));
  [ref] = await ortRun("Gelu", X, { approximate: "tanh" }, 20);
  await check(t, "gelu tanh", ref!, () => gelu(x, { approximate: "tanh" }));
  const y = randomTensor([2, 5, 3, 6, 7], 75),
    perC = randomTensor([1, 5, 1, 1, 1], 76),
    row = randomTensor([7], 77);
  for (const [op, fn] of [
    ["Add", add],
    ["Mul", mul],
  ] as const) {
    [ref] = await ortRun(op, [...X, { name: "y", tensor: y }]);
    await check(t, op, ref!, () => fn(x, y));
    [ref] = await ortRun(op, [...X, init("c", perC)]);
    await check(t, `${op} per channel`, ref!, () => fn(x, perC));
    [ref] = await ortRun(op, [init("r", row), ...X]);
    await check(t, `${op} trailing broadcast`, ref!, () => fn(row, x));
  }
  // add with the activation stored in the same pass, against onnxruntime's Add then the activation
  const sum = await ortRun("Add", [...X, init("c", perC)]);
  const sumT = { name: "s", tensor: { data: sum[0]!.data as Float32Array, shape: sum[0]!.shape } };
  [ref] = await ortRun("LeakyRelu", [sumT], { alpha: 0.01 });
  await check(t, "add + leakyRelu", ref!, () => add(x, perC, { activation: "leakyRelu", alpha: 0.01 }));
  [ref] = await ortRun("Relu", [sumT]);
  await check(t, "add + relu", ref!, () => add(x, perC, { activation: "relu" }));
  // rows long enough for the native vector path (37: 4 vectors of 8 and a tail), signs at random,
  // ±0 among them
  const u = randomTensor([1, 3, 4, 5, 37], 79),
    w = randomTensor([1, 3, 4, 5, 37], 80);
  u.data[40] = 0;
  w.data[40] = -0;
  u.data[77] = -0;
  w.data[77] = -0;
  const U = [
    { name: "u", tensor: u },
    { name: "w", tensor: w },
  ];
  for (const [op, fn] of [
    ["Add", add],
    ["Mul", mul],
  ] as const) {
    const [r] = await ortRun(op, U);
    const rT = { name: "s", tensor: { data: r!.data as Float32Array, shape: r!.shape } };
    [ref] = await ortRun("LeakyRelu", [rT], { alpha: 0.01 });
    await check(t, `${op} + leakyRelu, rows of 37`, ref!, () => fn(u, w, { activation: "leakyRelu", alpha: 0.01 }));
    [ref] = await ortRun("Relu", [rT]);
    await check(t, `${op} + relu, rows of 37`, ref!, () => fn(u, w, { activation: "relu" }));
  }
  // a NaN in the vector part and in the tail: relu gives 0, leakyRelu keeps NaN (as relu and leakyRelu do)
  const n = { data: Float32Array.from(u.data), shape: u.shape };
  n.data[5] = NaN;
  n.data[36] = NaN;
  for (const { name } of backends) {
    setBackend(name);
    const r = await add(n, w, { activation: "relu" }),
      l = await add(n, w, { activation: "leakyRelu", alpha: 0.01 });
    t.deepEqual([r.data[5], r.data[36]], [0, 0], `${name} add + relu of NaN`);
    t.true(Number.isNaN(l.data[5]!) && Number.isNaN(l.data[36]!), `${name} add + leakyRelu of NaN`);
  }
  const z = randomTensor([2, 3, 3, 6, 7], 78);
  [ref] = await ortRun("Concat", [...X, { name: "z", tensor: z }], { axis: 1 });
  await check(t, "concat", ref!, () => concat([x, z], 1));
  [ref] = await ortRun("Softmax", X, { axis: 1 }, 13);
  await check(t, "softmax", ref!, () => softmax(x));
  const [am] = await ortRun("ArgMax", X, { axis: 1, keepdims: 0 }, 13, 1, 7 /* int64 */);
  for (const { name } of backends) {
    setBackend(name);
    const got = await argmax(x);
    t.deepEqual(got.shape, am!.shape);
    t.deepEqual(Array.from(got.data), Array.from(am!.data as BigInt64Array, Number), `${name} argmax`);
  }
});

const poolCases: { kernel: number[]; strides?: number[]; pads?: number[]; ceil?: number; cip?: number; dil?: number[] }[] = [
  { kernel: [2, 2, 2], strides: [2, 2, 2] },
  { kernel: [3, 3, 3], strides: [2, 2, 2], pads: [1, 1, 1, 1, 1, 1] },
  { kernel: [1, 2, 2], strides: [1, 2, 2] },
  { kernel: [3, 3, 3], strides: [2, 2, 2], pads: [1, 1, 1, 1, 1, 1], ceil: 1 },
  { kernel: [3, 3, 3], strides: [1, 1, 1], pads: [1, 1, 1, 1, 1, 1], cip: 1 },
  { kernel: [2, 3, 2], strides: [1, 2, 1], dil: [2, 1, 1] },
];
for (const [i, c] of poolCases.entries()) {
  test.serial(
    `max and average pooling case ${i} (kernel ${c.kernel}, strides ${c.strides}, pads ${c.pads ?? 0}${c.ceil ? ", ceil" : ""}${c.cip ? ", count_include_pad" : ""}) equal onnxruntime`,
    async (t) => {
      const x = randomTensor([2, 3, 7, 9, 10], 80 + i);
      const attrs: Record<string, number | number[]> = { kernel_shape: c.kernel };
      if (c.strides) attrs.strides = c.strides;
      if (c.pads) attrs.pads = c.pads;
      if (c.ceil) attrs.ceil_mode = 1;
      if (c.dil) attrs.dilations = c.dil;
      const opts = {
        kernel: c.kernel as [number, number, number],
        ...(c.strides ? { stride: c.strides as [number, number, number] } : {}),
        ...(c.pads ? { padding: c.pads as [number, number, number, number, number, number] } : {}),
        ...(c.dil ? { dilation: c.dil as [number, number, number] } : {}),
        ceilMode: !!c.ceil,
      };
      const [mx] = await ortRun("MaxPool", [{ name: "x", tensor: x }], attrs, 17);
      await check(t, "maxPool3d", mx!, () => maxPool3d(x, opts));
      if (!c.dil) {
        const [av] = await ortRun("AveragePool", [{ name: "x", tensor: x }], { ...attrs, count_include_pad: c.cip ?? 0 }, 17);
        await check(t, "avgPool3d", av!, () => avgPool3d(x, { ...opts, countIncludePad: !!c.cip }));
      }
    },
  );
}

const resizeCases: { mode: "nearest" | "linear"; ctm: string; nearest?: string; sizes?: number[]; scales?: number[] }[] = [
  { mode: "linear", ctm: "half_pixel", sizes: [6, 14, 11] },
  { mode: "linear", ctm: "pytorch_half_pixel", sizes: [1, 7, 20] },
  { mode: "linear", ctm: "align_corners", sizes: [9, 5, 12] },
  { mode: "linear", ctm: "asymmetric", scales: [2, 2, 2] },
  // doubling with half-pixel centres (every U-Net's upsampling): the native backend's doubled-row path
  { mode: "linear", ctm: "half_pixel", scales: [2, 2, 2] },
  { mode: "linear", ctm: "pytorch_half_pixel", sizes: [8, 12, 14] },
  { mode: "nearest", ctm: "asymmetric", nearest: "floor", scales: [2, 2, 2] },
  { mode: "nearest", ctm: "half_pixel", nearest: "round_prefer_floor", sizes: [5, 13, 9] },
  { mode: "nearest", ctm: "align_corners", nearest: "round_prefer_ceil", sizes: [7, 4, 15] },
  { mode: "nearest", ctm: "half_pixel", nearest: "ceil", sizes: [3, 10, 6] },
];
for (const [i, c] of resizeCases.entries()) {
  test.serial(`resize case ${i}: ${c.mode}, ${c.ctm}${c.nearest ? `, ${c.nearest}` : ""} equals onnxruntime`, async (t) => {
    const x = randomTensor([1, 2, 4, 6, 7], 90 + i);
    const inputs = [
      { name: "x", tensor: x },
      { name: "roi", empty: true },
      c.scales ? { name: "scales", init: { dims: [5], data: Float32Array.from([1, 1, ...c.scales]) } } : { name: "scales", empty: true },
      ...(c.sizes ? [{ name: "sizes", init: { dims: [5], data: BigInt64Array.from([1n, 2n, ...c.sizes.map(BigInt)]) } }] : []),
    ];
    const attrs: Record<string, string> = { mode: c.mode, coordinate_transformation_mode: c.ctm };
    if (c.nearest) attrs.nearest_mode = c.nearest;
    const [ref] = await ortRun("Resize", inputs, attrs, 18);
    await check(t, "resize", ref!, () =>
      resize(x, {
        mode: c.mode,
        coordinateTransformationMode: c.ctm as "half_pixel",
        ...(c.nearest ? { nearestMode: c.nearest as "floor" } : {}),
        ...(c.sizes ? { sizes: c.sizes as [number, number, number] } : { scales: c.scales as [number, number, number] }),
      }),
    );
  });
}

test.serial(
  "an output that overlaps an input in part is refused on every backend (in place — the very array — is allowed where the op runs in place)",
  async (t) => {
    for (const { name: be } of backends) {
      setBackend(be);
      for (const engine of [false, true]) {
        // one block (engine memory where the native addon runs: never copied, so only the check stands between
        // a shifted out and values read after they were written) and two views of it one element apart
        const big = engine ? allocTensor([1 << 15]) : { data: new Float32Array(4097), shape: [4097] };
        big.data.forEach((_, i, d) => (d[i] = (i % 13) - 6));
        const x = { data: big.data.subarray(0, 4096), shape: [1, 1, 4096] },
          shifted = { data: big.data.subarray(1, 4097), shape: [1, 1, 4096] };
        const at = `${be}${engine ? ", engine memory" : ""}`;
        await t.throwsAsync(sigmoid(x, { out: shifted }), { message: /options\.out overlaps x in part/ }, at);
        await t.throwsAsync(add(x, randomTensor([1, 1, 4096], 5), { out: shifted }), { message: /options\.out overlaps a in part/ }, at);
        await t.throwsAsync(softmax(x, { out: shifted }), { message: /options\.out overlaps x in part/ }, at);
        await t.throwsAsync(
          maxPool3d({ ...x, shape: [1, 1, 1, 1, 4096] }, { kernel: 1, out: { ...shifted, shape: [1, 1, 1, 1, 4096] } }),
          {
            message: /options\.out overlaps x: this op cannot run in place/,
          },
          at,
        );
        // in place: the same view
        const want = Array.from(x.data, (v) => 1 / (1 + Math.exp(-v)));
        await sigmoid(x, { out: x });
        t.true(
          x.data.every((v, i) => Math.abs(v - want[i]!) < 1e-6),
          at,
        );
      }
    }
    // an argument not yet checked is named by its own check, not met first by the overlap check
    const c2 = { data: new Float32Array(2), shape: [2] },
      x2 = { data: new Float32Array(8), shape: [1, 2, 4] };
    await t.throwsAsync(batchNorm(x2, { shape: [2] } as never, c2, c2, c2, { out: { data: new Float32Array(8), shape: [1, 2, 4] } }), {
      message: /for scale but received Object/,
    });
    // the addon's own checks, for callers past the TypeScript layer (engine memory: views of one block)
    const nat = backends.some((b) => b.name === "native") ? getBackend("native") : undefined;
    if (nat) {
      const big = allocTensor([1 << 15]).data,
        x = big.subarray(0, 4096),
        y = big.subarray(1, 4097);
      const call = (f: () => unknown) => (async () => f())();
      const flat = [0, 0, 0, 0, 0, 1],
        shape = [1, 1, 1, 1, 1, 4096];
      await t.throwsAsync(
        call(() => nat.unary(x, 1, 1, 4096, 2, 0, null, y)),
        { message: /out overlaps x other than as x itself/ },
      );
      await t.throwsAsync(
        call(() => nat.binary(x, x, shape, flat, flat, false, y)),
        { message: /out overlaps a other than as a itself/ },
      );
      // b one value (strides 0) inside out: read after out has been written over it
      await t.throwsAsync(
        call(() => nat.binary(new Float32Array(4096), big.subarray(100, 101), shape, flat, [0, 0, 0, 0, 0, 0], false, x)),
        {
          message: /out overlaps b other than as b itself/,
        },
      );
      await t.throwsAsync(
        call(() => nat.softmax(x, 1, 4, 1024, y)),
        { message: /out overlaps x other than as x itself/ },
      );
    }
  },
);

test("bad arguments are refused before any work, naming the argument", async (t) => {
  const x = randomTensor([1, 2, 4, 4, 4], 1),
    w = randomTensor([3, 2, 3, 3, 3], 2);
  await t.throwsAsync(conv3d({ data: new Float32Array(5), shape: [1, 2, 4, 4, 4] }, w), {
    message: /input.data has 5 elements but input.shape \[1, 2, 4, 4, 4\] needs 128/,
  });
  await t.throwsAsync(conv3d(x, randomTensor([3, 5, 3, 3, 3], 3)), { message: /weight.shape\[1\] is 5 but input has 2 channels/ });
  await t.throwsAsync(conv3d(x, w, null, { stride: 0 }), {
    message: /Expected an integer >= 1 or \[d, h, w\] of them for options.stride but received number 0/,
  });
  await t.throwsAsync(conv3d(x, w, null, { padding: [1, 1] as never }), { message: /for options.padding/ });
  await t.throwsAsync(conv3d(x, randomTensor([3, 2, 5, 5, 5], 4)), { message: /smaller than the kernel's span 5/ });
  await t.throwsAsync(conv3d(x, w, randomTensor([4], 5)), { message: /bias has 4 values but weight has 3 output channels/ });
  await t.throwsAsync(gelu(x, { approximate: "erf" as never }), { message: /"none" or "tanh" for options.approximate/ });
  await t.throwsAsync(gelu(x, { divisor: 0 }), { message: /non-zero number for options.divisor/ });
  await t.throwsAsync(conv3d({ data: new Float32Array(8), shape: [2, 2, 2] }, w), {
    message: /Expected 5 axes \[N, C, D, H, W\] for input.shape/,
  });
  await t.throwsAsync(add(x, randomTensor([3, 1, 1], 6)), { message: /do not broadcast/ });
  await t.throwsAsync(resize(x, {} as never), { message: /sizes \[D, H, W\] or scales/ });
  // a result that could never be allocated is refused, not attempted
  const big = { data: new Float32Array(1), shape: [1, 1, 1, 1, 1] };
  await t.throwsAsync(resize(big, { sizes: [4096, 4096, 4096] }), { message: /exceed the 4294967295-element limit/ });
});

nativeTest("the baseline kernels (no AVX2, as on an older x86-64) give the same convolution", async (t) => {
  const { spawnSync } = await import("node:child_process");
  const { ROOT } = await import("./helpers.js");
  const script = `
    import { conv3d, setBackend } from "./lib/index.ts";
    import { randomTensor } from "./test/ort.ts";
    const x = randomTensor([1, 5, 6, 9, 37], 3), w = randomTensor([13, 5, 3, 3, 3], 4), b = randomTensor([13], 5);
    setBackend("native");
    const y = await conv3d(x, w, b, { padding: 1, activation: "leakyRelu" });
    setBackend("ts");
    const r = await conv3d(x, w, b, { padding: 1, activation: "leakyRelu" });
    let d = 0; for (let i = 0; i < r.data.length; i++) d = Math.max(d, Math.abs(r.data[i] - y.data[i]));
    console.log(d);`;
  const run = spawnSync(process.execPath, ["--import", "tsx", "--input-type=module", "-e", script], {
    cwd: ROOT,
    env: { ...process.env, BHSD_NO_AVX2: "1" },
    encoding: "utf8",
  });
  t.is(run.status, 0, run.stderr);
  t.true(Number(run.stdout.trim()) < 1e-4, run.stdout);
});

(backends.some((b) => b.name === "native") ? test.serial : test.skip)(
  "native: weights marked constant are packed once and give onnxruntime's result; a wrong packed length is refused",
  async (t) => {
    const { backendInfo } = await import("../lib/index.js");
    // two groups of 14 outputs (blocks 6 + 4 + 4 each), padding and a stride
    const x = randomTensor([1, 6, 5, 7, 19], 90),
      w = randomTensor([28, 3, 3, 3, 3], 91),
      b = randomTensor([28], 92);
    const [ref] = await ortRun(
      "Conv",
      [
        { name: "x", tensor: x },
        { name: "w", init: { dims: w.shape, data: w.data } },
        { name: "b", init: { dims: b.shape, data: b.data } },
      ],
      {
        kernel_shape: [3, 3, 3],
        group: 2,
        pads: [1, 1, 1, 1, 1, 1],
        strides: [1, 1, 2],
      },
    );
    const be = getBackend("native") as unknown as { constants(a: ReadonlySet<Float32Array>): void };
    be.constants(new Set([w.data]));
    setBackend("native");
    for (let run = 0; run < 2; run++) {
      const got = await conv3d(x, w, b, { padding: 1, stride: [1, 1, 2], groups: 2 });
      t.true(relDiff(got.data, ref!.data) <= TOL, `run ${run}`);
    }
    const addon = (await import("node:module")).createRequire(import.meta.url)(backendInfo().details.native!.binary!) as Record<
      string,
      (...a: unknown[]) => unknown
    >;
    const packed = addon.packConvWeights!(w.data, 28, 81, 2) as Float32Array;
    t.is(packed.length, 2 * 3 * 81 * 6);
    const out = new Float32Array(28 * 5 * 7 * 10);
    t.throws(
      () =>
        addon.conv3d!(
          x.data,
          [1, 6, 5, 7, 19],
          w.data,
          [28, 3, 3, 3],
          b.data,
          [1, 1, 2],
          [1, 1, 1],
          [1, 1, 1],
          2,
          [5, 7, 10],
          0,
          0,
          out,
          packed.subarray(1),
        ),
      {
        message: /packed weights must be a Float32Array of 2916/,
      },
    );
    t.throws(() => addon.packConvWeights!(w.data, 28, 80, 2), { message: /w must be a Float32Array of 2240/ });
  },
);

test.serial(
  "conv3dInstanceNorm equals onnxruntime's Conv → InstanceNormalization → LeakyRelu (in place natively, two steps elsewhere)",
  async (t) => {
    const { conv3dInstanceNorm } = await import("../lib/index.js");
    const ort = await import("onnxruntime-node");
    const { encodeModel } = await import("../lib/model/onnx-proto.js");
    const x = randomTensor([1, 6, 5, 7, 19], 110),
      w = randomTensor([10, 3, 3, 3, 3], 111),
      b = randomTensor([10], 112);
    const sc = randomTensor([10], 113),
      nb = randomTensor([10], 114);
    const bytes = encodeModel({
      opset: 17,
      nodes: [
        {
          opType: "Conv",
          inputs: ["x", "w", "b"],
          outputs: ["c"],
          attrs: { kernel_shape: [3, 3, 3], group: 2, pads: [1, 1, 1, 1, 1, 1], strides: [1, 1, 2] },
        },
        { opType: "InstanceNormalization", inputs: ["c", "s", "nb"], outputs: ["n"], attrs: { epsilon: 1e-5 } },
        { opType: "LeakyRelu", inputs: ["n"], outputs: ["y"], attrs: { alpha: 0.01 } },
      ],
      inputs: [{ name: "x", shape: x.shape }],
      outputs: [{ name: "y" }],
      initializers: [
        { name: "w", dims: w.shape, data: w.data },
        { name: "b", dims: [10], data: b.data },
        { name: "s", dims: [10], data: sc.data },
        { name: "nb", dims: [10], data: nb.data },
      ],
    });
    const session = await ort.InferenceSession.create(bytes, { intraOpNumThreads: 1 });
    const want = (await session.run({ x: new ort.Tensor("float32", x.data, x.shape) })).y!;
    await session.release();
    for (const { name } of backends) {
      setBackend(name);
      const y = await conv3dInstanceNorm(
        x,
        w,
        b,
        { scale: sc, bias: nb, eps: 1e-5, activation: "leakyRelu", alpha: 0.01 },
        { padding: 1, stride: [1, 1, 2], groups: 2 },
      );
      t.deepEqual(y.shape, [...want.dims]);
      const d = relDiff(y.data, want.data as Float32Array);
      t.true(d <= TOL, `${name}: max relative difference ${d}`);
      await t.throwsAsync(conv3dInstanceNorm(x, w, b, { scale: sc, bias: nb }, { padding: 1, groups: 2, activation: "relu" }), {
        message: /options.activation/,
      });
      await t.throwsAsync(conv3dInstanceNorm(x, w, b, { scale: randomTensor([9], 1), bias: nb }, { padding: 1, groups: 2 }), {
        message: /norm.scale/,
      });
      // checked before the output is taken: the pool's allocator is never called
      let allocated = 0;
      const alloc = (shape: number[]) => (allocated++, { data: new Float32Array(shape.reduce((a, c) => a * c, 1)), shape });
      await t.throwsAsync(conv3dInstanceNorm(x, w, b, { scale: sc, bias: randomTensor([3], 1) }, { padding: 1, groups: 2, alloc }), {
        message: /norm.bias/,
      });
      t.is(allocated, 0);
      await t.throwsAsync(conv3dInstanceNorm(x, w, b, { scale: sc, bias: nb, eps: 0 }, { padding: 1, groups: 2 }), {
        message: /Expected a positive number for norm.eps but received number 0/,
      });
      await t.throwsAsync(conv3dInstanceNorm(x, w, b, { scale: sc, bias: nb, activation: "gelu" as never }, { padding: 1, groups: 2 }), {
        message: /norm.activation/,
      });
      // a residual after the norm is norm.residual; conv3d's options.residual is refused here
      await t.throwsAsync(
        conv3dInstanceNorm(x, w, b, { scale: sc, bias: nb }, { padding: 1, groups: 2, residual: randomTensor([1, 10, 5, 7, 10], 1) }),
        {
          message: /options.residual/,
        },
      );
    }
  },
);

test.serial(
  "conv3dInstanceNorm with a residual equals onnxruntime's Conv → InstanceNormalization → Add → LeakyRelu (natively in the norm's pass, bit for bit the two steps)",
  async (t) => {
    const { conv3dInstanceNorm, add } = await import("../lib/index.js");
    const ort = await import("onnxruntime-node");
    const { encodeModel } = await import("../lib/model/onnx-proto.js");
    const x = randomTensor([2, 4, 5, 6, 19], 120),
      w = randomTensor([6, 4, 3, 3, 3], 121),
      b = randomTensor([6], 122),
      r = randomTensor([2, 6, 5, 6, 19], 123);
    const sc = randomTensor([6], 124),
      nb = randomTensor([6], 125);
    const bytes = encodeModel({
      opset: 17,
      nodes: [
        { opType: "Conv", inputs: ["x", "w", "b"], outputs: ["c"], attrs: { kernel_shape: [3, 3, 3], pads: [1, 1, 1, 1, 1, 1] } },
        { opType: "InstanceNormalization", inputs: ["c", "s", "nb"], outputs: ["n"], attrs: { epsilon: 1e-5 } },
        { opType: "Add", inputs: ["n", "r"], outputs: ["a"], attrs: {} },
        { opType: "LeakyRelu", inputs: ["a"], outputs: ["y"], attrs: { alpha: 0.01 } },
      ],
      inputs: [
        { name: "x", shape: x.shape },
        { name: "r", shape: r.shape },
      ],
      outputs: [{ name: "y" }],
      initializers: [
        { name: "w", dims: w.shape, data: w.data },
        { name: "b", dims: [6], data: b.data },
        { name: "s", dims: [6], data: sc.data },
        { name: "nb", dims: [6], data: nb.data },
      ],
    });
    const session = await ort.InferenceSession.create(bytes, { intraOpNumThreads: 1 });
    const want = (await session.run({ x: new ort.Tensor("float32", x.data, x.shape), r: new ort.Tensor("float32", r.data, r.shape) })).y!;
    await session.release();
    const norm = { scale: sc, bias: nb, eps: 1e-5, activation: "leakyRelu" as const, alpha: 0.01 };
    for (const { name } of backends) {
      setBackend(name);
      const y = await conv3dInstanceNorm(x, w, b, { ...norm, residual: r }, { padding: 1 });
      t.deepEqual(y.shape, [...want.dims]);
      const d = relDiff(y.data, want.data as Float32Array);
      t.true(d <= TOL, `${name}: max relative difference ${d}`);
      // the same arithmetic as the norm, then add() with the activation
      const { activation: _a, alpha: _al, ...plain } = norm;
      const two = await add(await conv3dInstanceNorm(x, w, b, plain, { padding: 1 }), r, { activation: "leakyRelu", alpha: 0.01 });
      t.deepEqual(y.data, two.data, `${name}: the fused sum differs from the two steps`);
      if (name === "native") {
        const { activeBackend } = await import("../lib/backends/index.js");
        t.true(activeBackend().convNormResidual, "the addon takes the residual in the norm's pass");
      }
      // checked before the output is taken
      let allocated = 0;
      const alloc = (shape: number[]) => (allocated++, { data: new Float32Array(shape.reduce((a, c) => a * c, 1)), shape });
      await t.throwsAsync(conv3dInstanceNorm(x, w, b, { ...norm, residual: randomTensor([2, 6, 5, 6, 18], 1) }, { padding: 1, alloc }), {
        message: /norm.residual has shape \[2, 6, 5, 6, 18\] but the output is \[2, 6, 5, 6, 19\]/,
      });
      await t.throwsAsync(conv3dInstanceNorm(x, w, b, { ...norm, residual: { data: r.data } as never }, { padding: 1, alloc }), {
        message: /norm.residual/,
      });
      t.is(allocated, 0);
      // the output may not be the residual: it is read after the output is written
      const out = randomTensor([2, 6, 5, 6, 19], 126);
      await t.throwsAsync(conv3dInstanceNorm(x, w, b, { ...norm, residual: out }, { padding: 1, out }), {
        message: /norm.residual/,
      });
    }
  },
);

test.serial(
  "conv3d with options.residual equals onnxruntime's Conv → Add → LeakyRelu (natively in the convolution's call, bit for bit conv3d then add)",
  async (t) => {
    const { conv3d, add } = await import("../lib/index.js");
    const ort = await import("onnxruntime-node");
    const { encodeModel } = await import("../lib/model/onnx-proto.js");
    const x = randomTensor([2, 4, 5, 6, 19], 140),
      w = randomTensor([6, 4, 3, 3, 3], 141),
      b = randomTensor([6], 142),
      r = randomTensor([2, 6, 5, 3, 10], 143);
    const bytes = encodeModel({
      opset: 17,
      nodes: [
        {
          opType: "Conv",
          inputs: ["x", "w", "b"],
          outputs: ["c"],
          attrs: { kernel_shape: [3, 3, 3], pads: [1, 1, 1, 1, 1, 1], strides: [1, 2, 2] },
        },
        { opType: "Add", inputs: ["c", "r"], outputs: ["a"], attrs: {} },
        { opType: "LeakyRelu", inputs: ["a"], outputs: ["y"], attrs: { alpha: 0.01 } },
      ],
      inputs: [
        { name: "x", shape: x.shape },
        { name: "r", shape: r.shape },
      ],
      outputs: [{ name: "y" }],
      initializers: [
        { name: "w", dims: w.shape, data: w.data },
        { name: "b", dims: [6], data: b.data },
      ],
    });
    const session = await ort.InferenceSession.create(bytes, { intraOpNumThreads: 1 });
    const want = (await session.run({ x: new ort.Tensor("float32", x.data, x.shape), r: new ort.Tensor("float32", r.data, r.shape) })).y!;
    await session.release();
    const opts = { padding: 1, stride: [1, 2, 2] as [number, number, number], activation: "leakyRelu" as const, alpha: 0.01 };
    for (const { name } of backends) {
      setBackend(name);
      const y = await conv3d(x, w, b, { ...opts, residual: r });
      t.deepEqual(y.shape, [...want.dims]);
      const d = relDiff(y.data, want.data as Float32Array);
      t.true(d <= TOL, `${name}: max relative difference ${d}`);
      const two = await add(await conv3d(x, w, b, { padding: 1, stride: [1, 2, 2] }), r, { activation: "leakyRelu", alpha: 0.01 });
      t.deepEqual(y.data, two.data, `${name}: the fused sum differs from the two steps`);
      if (name === "native") {
        const { activeBackend } = await import("../lib/backends/index.js");
        t.true(activeBackend().convResidual, "the addon adds the residual in the convolution's call");
      }
      // checked before the output is taken
      let allocated = 0;
      const alloc = (shape: number[]) => (allocated++, { data: new Float32Array(shape.reduce((a, c) => a * c, 1)), shape });
      await t.throwsAsync(conv3d(x, w, b, { ...opts, residual: randomTensor([2, 6, 5, 3, 9], 1), alloc }), {
        message: /options.residual has shape \[2, 6, 5, 3, 9\] but the output is \[2, 6, 5, 3, 10\]/,
      });
      await t.throwsAsync(conv3d(x, w, b, { ...opts, residual: { data: r.data } as never, alloc }), { message: /options.residual/ });
      t.is(allocated, 0);
      // the output may not be the residual: it is read after the output is written
      const out = randomTensor([2, 6, 5, 3, 10], 144);
      await t.throwsAsync(conv3d(x, w, b, { ...opts, residual: out, out }), { message: /options.residual/ });
    }
  },
);

test.serial(
  "conv3dInstanceNorm with norm.groups equals onnxruntime's Conv → GroupNorm (the exporter's Reshape → InstanceNormalization → Reshape → Mul → Add) → Relu",
  async (t) => {
    const { conv3dInstanceNorm, groupNorm, conv3d } = await import("../lib/index.js");
    const ort = await import("onnxruntime-node");
    const { encodeModel } = await import("../lib/model/onnx-proto.js");
    const x = randomTensor([2, 4, 5, 6, 7], 130),
      w = randomTensor([6, 4, 3, 3, 3], 131),
      b = randomTensor([6], 132);
    const sc = randomTensor([6], 133),
      nb = randomTensor([6], 134);
    // PyTorch's GroupNorm(3, 6) as torch.onnx.export (opset 17) writes it
    const bytes = encodeModel({
      opset: 17,
      nodes: [
        { opType: "Conv", inputs: ["x", "w", "b"], outputs: ["c"], attrs: { kernel_shape: [3, 3, 3], pads: [1, 1, 1, 1, 1, 1] } },
        { opType: "Reshape", inputs: ["c", "g"], outputs: ["r"], attrs: {} },
        { opType: "InstanceNormalization", inputs: ["r", "one", "zero"], outputs: ["i"], attrs: { epsilon: 1e-5 } },
        { opType: "Shape", inputs: ["c"], outputs: ["sh"], attrs: {} },
        { opType: "Reshape", inputs: ["i", "sh"], outputs: ["back"], attrs: {} },
        { opType: "Mul", inputs: ["back", "s"], outputs: ["m"], attrs: {} },
        { opType: "Add", inputs: ["m", "nb"], outputs: ["a"], attrs: {} },
        { opType: "Relu", inputs: ["a"], outputs: ["y"], attrs: {} },
      ],
      inputs: [{ name: "x", shape: x.shape }],
      outputs: [{ name: "y" }],
      initializers: [
        { name: "w", dims: w.shape, data: w.data },
        { name: "b", dims: [6], data: b.data },
        { name: "g", dims: [3], data: BigInt64Array.of(0n, 3n, -1n) },
        { name: "one", dims: [3], data: Float32Array.of(1, 1, 1) },
        { name: "zero", dims: [3], data: Float32Array.of(0, 0, 0) },
        { name: "s", dims: [6, 1, 1, 1], data: sc.data },
        { name: "nb", dims: [6, 1, 1, 1], data: nb.data },
      ],
    });
    const session = await ort.InferenceSession.create(bytes, { intraOpNumThreads: 1 });
    const want = (await session.run({ x: new ort.Tensor("float32", x.data, x.shape) })).y!;
    await session.release();
    const norm = { scale: sc, bias: nb, eps: 1e-5, groups: 3, activation: "relu" as const };
    for (const { name } of backends) {
      setBackend(name);
      const y = await conv3dInstanceNorm(x, w, b, norm, { padding: 1 });
      t.deepEqual(y.shape, [...want.dims]);
      const d = relDiff(y.data, want.data as Float32Array);
      t.true(d <= TOL, `${name}: max relative difference ${d}`);
      // the same arithmetic as conv3d, then groupNorm
      const two = await groupNorm(await conv3d(x, w, b, { padding: 1 }), sc, nb, { groups: 3, eps: 1e-5, activation: "relu" });
      t.deepEqual(y.data, two.data, `${name}: the fused norm differs from the two steps`);
      if (name === "native") {
        const { activeBackend } = await import("../lib/backends/index.js");
        t.true(activeBackend().convNormGroups, "the addon takes the norm's groups");
      }
      // checked before the output is taken
      let allocated = 0;
      const alloc = (shape: number[]) => (allocated++, { data: new Float32Array(shape.reduce((a, c) => a * c, 1)), shape });
      await t.throwsAsync(conv3dInstanceNorm(x, w, b, { ...norm, groups: 4 }, { padding: 1, alloc }), {
        message: /Expected a positive integer dividing the 6 output channels for norm.groups but received number 4/,
      });
      await t.throwsAsync(conv3dInstanceNorm(x, w, b, { ...norm, groups: 0 }, { padding: 1, alloc }), { message: /norm.groups/ });
      await t.throwsAsync(conv3dInstanceNorm(x, w, b, { ...norm, groups: 1.5 }, { padding: 1, alloc }), { message: /norm.groups/ });
      await t.throwsAsync(conv3dInstanceNorm(x, w, b, { ...norm, residual: randomTensor([2, 6, 5, 6, 7], 1) }, { padding: 1, alloc }), {
        message: /norm.residual/,
      });
      t.is(allocated, 0);
    }
  },
);

// PyTorch 1.13: max_pool3d(tensor([5, nan, 1, 2]).view(1,1,1,1,4), (1,1,2)) → [nan, 2]: a NaN in a
// window wins, as in torch (the kernels kept the larger number and dropped the NaN)
for (const { name, backend } of backendsUnderTest()) {
  test(`${name}: maxPool3d propagates NaN as PyTorch's max_pool3d`, async (t) => {
    setBackend(backend().name);
    const y = await maxPool3d({ data: Float32Array.of(5, NaN, 1, 2), shape: [1, 1, 1, 1, 4] }, { kernel: [1, 1, 2], stride: [1, 1, 2] });
    t.true(Number.isNaN(y.data[0]));
    t.is(y.data[1], 2);
  });
}
