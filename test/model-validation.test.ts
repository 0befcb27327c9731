// Bad models are refused at load with the node named, never a hang, an abort or a wrong answer
// later; the ops real exports add agree with onnxruntime (same process) on every backend.
import test from "ava";
import ort from "onnxruntime-node";
import { spawnSync } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { loadModel, setBackend } from "../lib/index.js";
import { parseModel } from "../lib/model/graph.js";
import { normalizeConfig } from "../lib/model/config.js";
import { brief } from "../lib/is.js";
import { encodeModel, type AttrValue } from "../lib/model/onnx-proto.js";
import { backendsUnderTest } from "./helpers.js";
import { ortRun, randomTensor, relDiff, type OrtInput } from "./ort.js";

type Nodes = Parameters<typeof encodeModel>[0]["nodes"];

const f32 = (xs: number[]) => Float32Array.from(xs);
const i64 = (xs: number[]) => BigInt64Array.from(xs.map(BigInt));

function model(
  nodes: Nodes,
  opts: {
    inShape?: number[];
    inits?: { name: string; dims: number[]; data: Float32Array | BigInt64Array }[];
    outputs?: string[];
    opset?: number;
  } = {},
) {
  return encodeModel({
    opset: opts.opset ?? 17,
    nodes,
    inputs: [{ name: "x", shape: opts.inShape ?? [1, 2, 3, 4, 5] }],
    outputs: (opts.outputs ?? ["y"]).map((name) => ({ name })),
    initializers: opts.inits ?? [],
  });
}

test("refused at load, each naming the node: NaN eps, ∞ alpha, no outputs, pads past the kernel, absurd strides, Slice step 0, two -1s, an output nobody makes", async (t) => {
  const w = randomTensor([2, 2, 3, 3, 3], 1);
  const winit = [{ name: "w", dims: w.shape, data: w.data }];
  const cases: [string, Uint8Array, RegExp][] = [
    [
      "NaN epsilon",
      model([{ opType: "InstanceNormalization", name: "norm1", inputs: ["x", "s", "b"], outputs: ["y"], attrs: { epsilon: NaN } }], {
        inits: [
          { name: "s", dims: [2], data: f32([1, 1]) },
          { name: "b", dims: [2], data: f32([0, 0]) },
        ],
      }),
      /node norm1 \(InstanceNormalization\): attribute epsilon = null is not finite/,
    ],
    [
      "infinite alpha",
      model([{ opType: "LeakyRelu", name: "act", inputs: ["x"], outputs: ["y"], attrs: { alpha: Infinity } }]),
      /node act \(LeakyRelu\): attribute alpha = null is not finite/,
    ],
    [
      "no outputs",
      encodeModel({
        opset: 17,
        nodes: [{ opType: "Relu", inputs: ["x"], outputs: ["y"] }],
        inputs: [{ name: "x", shape: [1] }],
        outputs: [],
      }),
      /declares no outputs/,
    ],
    [
      "output made by nothing",
      model([{ opType: "Relu", name: "r", inputs: ["x"], outputs: ["h"] }], { outputs: ["zz"] }),
      /graph output zz is produced by no node/,
    ],
    [
      "Conv pads 600",
      model([{ opType: "Conv", name: "bigpad", inputs: ["x", "w"], outputs: ["y"], attrs: { pads: [600, 600, 600, 600, 600, 600] } }], {
        inits: winit,
      }),
      /node bigpad \(Conv\): pads .* reach past the kernel's span 3/,
    ],
    [
      "ConvTranspose strides 400",
      model([{ opType: "ConvTranspose", name: "up", inputs: ["x", "w"], outputs: ["y"], attrs: { strides: [400, 400, 400] } }], {
        inits: winit,
      }),
      /node up \(ConvTranspose\): attribute strides = \[400,400,400\] must be 3 integers in 1\.\.64/,
    ],
    [
      "Slice steps 0",
      model(
        [
          { opType: "Shape", name: "sh", inputs: ["x"], outputs: ["s"] },
          { opType: "Slice", name: "loop", inputs: ["s", "st", "en", "ax", "zero"], outputs: ["y"] },
        ],
        {
          inits: [
            { name: "st", dims: [1], data: i64([0]) },
            { name: "en", dims: [1], data: i64([5]) },
            { name: "ax", dims: [1], data: i64([0]) },
            { name: "zero", dims: [1], data: i64([0]) },
          ],
        },
      ),
      /node loop \(Slice\): steps \[0\] contain 0/,
    ],
    [
      "Reshape with two -1",
      model([{ opType: "Reshape", name: "rs", inputs: ["x", "shape"], outputs: ["y"] }], {
        inits: [{ name: "shape", dims: [2], data: i64([-1, -1]) }],
      }),
      /node rs \(Reshape\): shape \[-1,-1\] may hold one -1/,
    ],
    [
      "kernel_shape against the weight",
      model([{ opType: "Conv", name: "ks", inputs: ["x", "w"], outputs: ["y"], attrs: { kernel_shape: [100, 2, 2] } }], { inits: winit }),
      /node ks \(Conv\): kernel_shape \[100,2,2\] disagrees with the weight's \[3,3,3\]/,
    ],
    [
      "Cast to float8",
      model([{ opType: "Cast", name: "f8", inputs: ["x"], outputs: ["y"], attrs: { to: 17 } }]),
      /node f8 \(Cast\): attribute to = 17 is not a type/,
    ],
    [
      "Einsum with three operands",
      model([{ opType: "Einsum", name: "e3", inputs: ["x", "x", "x"], outputs: ["y"], attrs: { equation: "ab,bc,cd->ad" } }]),
      /node e3 \(Einsum\): attribute equation/,
    ],
  ];
  for (const [what, bytes, msg] of cases) {
    const t0 = performance.now();
    await t.throwsAsync(loadModel(bytes), { message: msg }, what);
    t.true(performance.now() - t0 < 5000, `${what} refused in bounded time`);
  }
});

// A Reshape [-1, 3] of 64 values; a Slice whose steps come from the input's shape (0: looped on
// forever before); both built for an input of shape [N, …] with N static or symbolic.
const reshapeBy3 = (n: number | string) =>
  model([{ opType: "Reshape", name: "rs", inputs: ["x", "shape"], outputs: ["y"] }], {
    inShape: [n, 64],
    inits: [{ name: "shape", dims: [2], data: i64([-1, 3]) }],
  });
const sliceStep0 = (n: number | string) =>
  model(
    [
      { opType: "Shape", name: "sh", inputs: ["x"], outputs: ["s"] },
      { opType: "Gather", name: "g", inputs: ["s", "i0"], outputs: ["z"], attrs: { axis: 0 } },
      { opType: "Sub", name: "zero", inputs: ["z", "z"], outputs: ["st0"] },
      { opType: "Unsqueeze", name: "u", inputs: ["st0", "ax"], outputs: ["steps"] },
      { opType: "Slice", name: "loop", inputs: ["s", "st", "en", "ax", "steps"], outputs: ["y"] },
    ],
    {
      inShape: [n, 8],
      inits: [
        { name: "i0", dims: [], data: i64([0]) },
        { name: "st", dims: [1], data: i64([0]) },
        { name: "en", dims: [1], data: i64([5]) },
        { name: "ax", dims: [1], data: i64([0]) },
      ],
    },
  );

/** Runs a whole model in onnxruntime (same process); its first output. */
async function ortSession(bytes: Uint8Array, feeds: Record<string, { data: Float32Array; shape: number[] }>) {
  const s = await ort.InferenceSession.create(bytes, { logSeverityLevel: 4 });
  const out = await s.run(Object.fromEntries(Object.entries(feeds).map(([k, v]) => [k, new ort.Tensor("float32", v.data, v.shape)])));
  const y = out[s.outputNames[0]!]!;
  return { data: y.data as Float32Array, shape: [...y.dims] };
}
/** The first input's declared shape. */
const declaredShape = async (bytes: Uint8Array) => (await parseModel(bytes)).inputs[0]!.shape as number[];

test("run-time faults are errors naming the node, never a fractional shape or a hang (a symbolic input dimension: nothing to infer at load)", async (t) => {
  const m1 = await loadModel(reshapeBy3("N"));
  t.is(m1.valueShapes, undefined);
  await t.throwsAsync(m1.run({ data: new Float32Array(64), shape: [1, 64] }), {
    message: /node rs \(Reshape\): .*64 is not a multiple of 3/,
  });
  const m2 = await loadModel(sliceStep0("N"));
  await t.throwsAsync(m2.run({ data: new Float32Array(8), shape: [1, 8] }), { message: /node loop \(Slice\): .*step 0/ });
});

test("with static input shapes, a node that cannot run on them is refused at load, naming it (as onnxruntime refuses the same model)", async (t) => {
  const w = randomTensor([4, 3, 3, 3, 3], 2);
  const conv = (name: string, inShape: number[], attrs: Record<string, AttrValue> = {}) =>
    model([{ opType: "Conv", name, inputs: ["x", "w"], outputs: ["y"], attrs }], {
      inShape,
      inits: [{ name: "w", dims: w.shape, data: w.data }],
    });
  const y6 = { name: "y6", dims: [1, 6, 4, 4, 4], data: randomTensor([1, 6, 4, 4, 4], 3).data };
  const cases: [string, Uint8Array, RegExp][] = [
    ["Reshape [-1, 3] of 64 values", reshapeBy3(1), /node rs \(Reshape\): .*64 is not a multiple of 3.*declared input shapes x \[1,64\]/],
    ["Slice steps 0 from the shape glue", sliceStep0(1), /node loop \(Slice\): .*step 0/],
    [
      "Conv weights for 3 channels on 2",
      conv("c1", [1, 2, 8, 8, 8]),
      /node c1 \(Conv\): the weights \[4,3,3,3,3\] take 3 input channels but the input \[1,2,8,8,8\] has 2/,
    ],
    [
      "Conv kernel past the input",
      conv("c2", [1, 3, 2, 8, 8]),
      /node c2 \(Conv\): input extent 2 on axis D \(padded 2\) is smaller than the kernel's span 3/,
    ],
    [
      "Add of shapes that do not broadcast",
      model(
        [
          { opType: "Conv", name: "c", inputs: ["x", "w"], outputs: ["h"] },
          { opType: "Add", name: "plus", inputs: ["h", "y6"], outputs: ["y"] },
        ],
        { inShape: [1, 3, 6, 6, 6], inits: [{ name: "w", dims: w.shape, data: w.data }, y6] },
      ),
      /node plus \(Add\): .*broadcast/,
    ],
    [
      "Concat of mismatched extents",
      model(
        [
          { opType: "Conv", name: "c", inputs: ["x", "w"], outputs: ["h"] },
          { opType: "Concat", name: "cat", inputs: ["h", "y6"], outputs: ["y"], attrs: { axis: 1 } },
        ],
        { inShape: [1, 3, 8, 8, 8], inits: [{ name: "w", dims: w.shape, data: w.data }, y6] },
      ),
      /node cat \(Concat\): shapes \[1,4,6,6,6\], \[1,6,4,4,4\] do not concatenate on axis 1/,
    ],
    [
      "MatMul inner dimensions",
      model([{ opType: "MatMul", name: "mm", inputs: ["x", "m"], outputs: ["y"] }], {
        inShape: [2, 5],
        inits: [{ name: "m", dims: [4, 3], data: randomTensor([4, 3], 4).data }],
      }),
      /node mm \(MatMul\): .*inner dimensions 5 and 4 differ/,
    ],
    [
      "Reshape target from Shape glue that does not divide",
      model(
        [
          { opType: "Shape", name: "sh", inputs: ["x"], outputs: ["s"] },
          { opType: "Slice", name: "first2", inputs: ["s", "st", "en"], outputs: ["nc"] },
          { opType: "Concat", name: "target", inputs: ["nc", "m1"], outputs: ["spec"], attrs: { axis: 0 } },
          { opType: "Reshape", name: "groups", inputs: ["x", "spec2"], outputs: ["y"] },
          { opType: "Mul", name: "halve", inputs: ["spec", "half"], outputs: ["spec2"] },
        ],
        {
          inShape: [1, 3, 5, 5, 5],
          inits: [
            { name: "st", dims: [1], data: i64([0]) },
            { name: "en", dims: [1], data: i64([2]) },
            { name: "m1", dims: [1], data: i64([-1]) },
            { name: "half", dims: [3], data: i64([1, 2, 1]) },
          ],
        },
      ),
      /node groups \(Reshape\): Reshape of \[1,3,5,5,5\] \(375 values\) to \[1,6,-1\]: 375 is not a multiple of 6/,
    ],
  ];
  for (const [what, bytes, msg] of cases) {
    await t.throwsAsync(loadModel(bytes), { message: msg }, what);
    // the outside reference: onnxruntime refuses the same model too, at session creation or at its first run
    const refused = await (async () => {
      try {
        await ortSession(bytes, { x: randomTensor(await declaredShape(bytes), 1) });
        return false;
      } catch {
        return true;
      }
    })();
    t.true(refused, `${what}: onnxruntime refuses it too`);
  }
});

test("inferred shapes at load equal the shapes of a run and onnxruntime's outputs (a graph with shape glue, a transformer-style MatMul and Softmax)", async (t) => {
  const w = randomTensor([4, 2, 3, 3, 3], 5),
    m = randomTensor([4, 5], 6);
  const bytes = model(
    [
      { opType: "Conv", name: "c", inputs: ["x", "w"], outputs: ["h"], attrs: { pads: [1, 1, 1, 1, 1, 1], strides: [1, 2, 2] } },
      { opType: "Shape", name: "sh", inputs: ["h"], outputs: ["s"] },
      { opType: "Slice", name: "nc", inputs: ["s", "st", "en"], outputs: ["s2"] },
      { opType: "Concat", name: "target", inputs: ["s2", "m1"], outputs: ["spec"], attrs: { axis: 0 } },
      { opType: "Reshape", name: "flat", inputs: ["h", "spec"], outputs: ["f"] },
      { opType: "Slice", name: "cut", inputs: ["f", "z", "six", "two"], outputs: ["g"] },
      { opType: "Transpose", name: "tr", inputs: ["g"], outputs: ["gt"], attrs: { perm: [0, 2, 1] } },
      { opType: "MatMul", name: "mm", inputs: ["gt", "m"], outputs: ["p"] },
      { opType: "Softmax", name: "sm", inputs: ["p"], outputs: ["q"], attrs: { axis: -1 } },
      { opType: "ReduceMean", name: "rm", inputs: ["q"], outputs: ["y"], attrs: { axes: [1], keepdims: 0 } },
    ],
    {
      inShape: [1, 2, 5, 12, 6],
      inits: [
        { name: "w", dims: w.shape, data: w.data },
        { name: "m", dims: m.shape, data: m.data },
        { name: "st", dims: [1], data: i64([0]) },
        { name: "en", dims: [1], data: i64([2]) },
        { name: "m1", dims: [1], data: i64([-1]) },
        { name: "z", dims: [1], data: i64([0]) },
        { name: "six", dims: [1], data: i64([6]) },
        { name: "two", dims: [1], data: i64([2]) },
      ],
    },
  );
  const x = randomTensor([1, 2, 5, 12, 6], 7);
  for (const { name: b } of backendsUnderTest()) {
    const mdl = await loadModel(bytes, { backend: b });
    t.truthy(mdl.valueShapes);
    const y = await mdl.run(x);
    const ran = mdl.lastRun!.shapes;
    // (the shape glue — s, s2, spec — was computed at load for the declared input shape and is
    // constant now: the run computes the other seven)
    t.deepEqual([...ran.keys()].sort(), ["f", "g", "gt", "h", "p", "q", "y"], `${b}: values that ran`);
    for (const glue of ["s", "s2", "spec"]) t.truthy(mdl.valueShapes!.get(glue), `${b}: ${glue} inferred`);
    for (const [name, s] of ran) t.deepEqual(mdl.valueShapes!.get(name), s, `${b}: value ${name}`);
    const ref = await ortSession(bytes, { x });
    t.deepEqual(mdl.valueShapes!.get("y"), ref.shape);
    t.deepEqual(y.shape, ref.shape);
    t.true(relDiff(y.data, ref.data) < 1e-5, b);
  }
});

test("model configs that would normalise every voxel to one value, or hold absurd patches, are refused naming the key", (t) => {
  const refused: [Record<string, unknown>, RegExp][] = [
    [
      { normalization: { type: "window", lower: 120, upper: -40, center: 40, scale: 80 } },
      /normalization \{"type":"window","lower":120,"upper":-40/,
    ],
    [{ normalization: { type: "ct", lower: 300, upper: -100, mean: 40, std: 50 } }, /normalization \{"type":"ct","lower":300/],
    [{ normalization: { type: "clipPercentile", lowerPercentile: "10", upperPercentile: "9" } }, /lowerPercentile":"10"/],
    [{ patchSize: [0.4, 128, 128] }, /patchSize must be whole sizes from 1 to 4096, at most 134217728 voxels in all, got \[0\.4,128,128\]/],
    [{ patchSize: [4096, 4096, 4096] }, /at most 134217728 voxels in all/],
    [{ patchSize: [Infinity, 128, 128] }, /patchSize must be three positive numbers/],
    [{ targetSpacing: [Infinity, 1, 1] }, /targetSpacing must be three positive numbers/],
    [{ spatialDims: 2, patchSize: [5000, 512] }, /patchSize must be whole sizes from 1 to 4096/],
  ];
  for (const [cfg, message] of refused) t.throws(() => normalizeConfig(cfg, "argument"), { message }, JSON.stringify(cfg));
  // the same kinds of values, in range, are kept
  const ok = normalizeConfig(
    { normalization: { type: "clipPercentile", lowerPercentile: 0.5, upperPercentile: 99.5 }, patchSize: [32.0, 128, 127.6] },
    "argument",
  );
  t.deepEqual(ok.patchSize, [32, 128, 128]);
});

test("a model's sidecar config or plans.json that is a FIFO, or over 32 MiB, is refused at once, naming it", async (t) => {
  const dir = mkdtempSync(join(tmpdir(), "bhsd-sidecar-"));
  try {
    const bytes = encodeModel({
      opset: 17,
      nodes: [{ opType: "Relu", inputs: ["x"], outputs: ["y"] }],
      inputs: [{ name: "x", shape: [1, 1, 4, 4, 4] }],
      outputs: [{ name: "y" }],
    });
    writeFileSync(join(dir, "m.onnx"), bytes);
    t.is(spawnSync("mkfifo", [join(dir, "m.json")]).status, 0, "mkfifo");
    // (a FIFO reports size 0: readFile would wait for a writer, then read without end)
    await t.throwsAsync(loadModel(join(dir, "m.onnx")), { message: /m\.json: not a regular file/ });
    rmSync(join(dir, "m.json"));
    writeFileSync(join(dir, "plans.json"), " ".repeat(33 * 2 ** 20) + "{}");
    await t.throwsAsync(loadModel(join(dir, "m.onnx")), {
      message: /plans\.json: 34603010 bytes, more than the 33554432 a model's config may have/,
    });
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("config.inputShapes that is not shapes is refused showing what came, a cycle or a deep nest included", async (t) => {
  const bytes = encodeModel({
    opset: 17,
    nodes: [{ opType: "Relu", inputs: ["x"], outputs: ["y"] }],
    inputs: [{ name: "x", shape: ["N", 1, 4, 4, 4] }],
    outputs: [{ name: "y" }],
  });
  const cyclic: unknown[] = [1];
  cyclic.push(cyclic);
  await t.throwsAsync(loadModel(bytes, { inputShapes: { x: cyclic as number[] } }), {
    message: /Expected config\.inputShapes\.x to be 5 positive integers \(the model declares \[N,1,4,4,4\]\) but received \[1,<cycle>\]/,
  });
  await t.throwsAsync(loadModel(bytes, { inputShapes: [2] as never }), { message: /config\.inputShapes but received \[2\]/ });
});

test("brief: values from files shown in messages bounded — deep nesting, cycles, long arrays and strings", (t) => {
  let deep: unknown[] = [1];
  for (let i = 0; i < 100_000; i++) deep = [deep];
  t.is(brief(deep), "[[[[[…]]]]]");
  const cyclic: unknown[] = [0];
  cyclic.push(cyclic);
  t.is(brief(cyclic), "[0,<cycle>]");
  t.is(brief(Array.from({ length: 100 }, (_, i) => i)), "[0,1,2,3,4,5,6,7,…]");
  t.is(brief({ a: [1, 2], b: "x".repeat(100) }), `{"a":[1,2],"b":"${"x".repeat(60)}…"}`);
  t.is(brief(new Map([["k", 1n]])), '{"k":1}');
  for (const v of [null, 3, "s", [1, [2, "t"]], { a: { b: null } }]) t.is(brief(v), JSON.stringify(v));
  t.true(brief(Array.from({ length: 8 }, () => "y".repeat(60))).length <= 200);
});

test("a memoryLimit refuses a run before allocating past it", async (t) => {
  const m = await loadModel(
    model([{ opType: "Resize", name: "up", inputs: ["x", "", "", "sizes"], outputs: ["y"], attrs: { mode: "nearest" } }], {
      inShape: [1, 1, 2, 2, 2],
      inits: [{ name: "sizes", dims: [5], data: i64([1, 1, 1600, 1600, 1600]) }],
    }),
    { memoryLimit: 64 * 2 ** 20 },
  );
  const t0 = performance.now();
  await t.throwsAsync(m.run({ data: new Float32Array(8), shape: [1, 1, 2, 2, 2] }), {
    message: /node up \(Resize\): .*over the model's memoryLimit of 64 MB/,
  });
  t.true(performance.now() - t0 < 5000);
  await t.throwsAsync(loadModel(model([{ opType: "Relu", inputs: ["x"], outputs: ["y"] }]), { memoryLimit: -1 }), {
    message: /config\.memoryLimit/,
  });
});

test("a graph of 40 000 nodes in reverse order loads in linear time", async (t) => {
  const N = 40_000;
  const nodes: Nodes = [];
  for (let i = N - 1; i >= 0; i--)
    nodes.push({ opType: "Identity", name: `id${i}`, inputs: [i === 0 ? "x" : `v${i - 1}`], outputs: [i === N - 1 ? "y" : `v${i}`] });
  const t0 = performance.now();
  const m = await loadModel(model(nodes, { inShape: [1, 4] }));
  const ms = performance.now() - t0;
  t.true(ms < 20_000, `${ms.toFixed(0)} ms`); // was 155 s; linear takes well under a second here
  const y = await m.run({ data: f32([1, 2, 3, 4]), shape: [1, 4] });
  t.deepEqual(Array.from(y.data), [1, 2, 3, 4]);
});

// One-node graphs of the ops real exports add, against onnxruntime on the same inputs.
const X = randomTensor([2, 3, 4, 5], 7);
const cases: { op: string; inputs: OrtInput[]; attrs?: Record<string, AttrValue>; opset?: number; outElem?: number }[] = [
  {
    op: "Gather",
    inputs: [
      { name: "x", tensor: X },
      { name: "i", init: { dims: [2, 2], data: i64([3, -1, 0, 2]) } },
    ],
    attrs: { axis: 2 },
  },
  {
    op: "Gather",
    inputs: [
      { name: "x", tensor: X },
      { name: "i", init: { dims: [], data: i64([1]) } },
    ],
    attrs: { axis: 1 },
  },
  { op: "Transpose", inputs: [{ name: "x", tensor: X }], attrs: { perm: [2, 0, 3, 1] } },
  // the last two axes swapped, large enough for the backend's tiled kernel (U-Mamba's tokens), edges off the 32 × 32 tiles
  { op: "Transpose", inputs: [{ name: "x", tensor: randomTensor([2, 300, 257], 11) }], attrs: { perm: [0, 2, 1] } },
  { op: "Transpose", inputs: [{ name: "x", tensor: randomTensor([1, 3, 150, 161], 12) }], attrs: { perm: [0, 1, 3, 2] } },
  {
    op: "Pad",
    inputs: [
      { name: "x", tensor: X },
      { name: "p", init: { dims: [8], data: i64([0, 1, 2, 0, 1, 0, 1, 3]) } },
      { name: "v", init: { dims: [], data: f32([0.5]) } },
    ],
    attrs: { mode: "constant" },
  },
  {
    op: "Pad",
    inputs: [
      { name: "x", tensor: X },
      { name: "p", init: { dims: [8], data: i64([0, 0, 2, 3, 0, 0, 1, 2]) } },
    ],
    attrs: { mode: "edge" },
  },
  {
    op: "Pad",
    inputs: [
      { name: "x", tensor: X },
      { name: "p", init: { dims: [8], data: i64([0, 2, 3, 1, 0, 0, 2, 4]) } },
    ],
    attrs: { mode: "reflect" },
  },
  {
    op: "Pad",
    inputs: [
      { name: "x", tensor: X },
      { name: "p", init: { dims: [8], data: i64([0, -1, 1, 0, 0, 0, -2, 1]) } },
    ],
    attrs: { mode: "constant" },
  },
  {
    op: "MatMul",
    inputs: [
      { name: "x", tensor: X },
      { name: "b", init: { dims: [5, 6], data: randomTensor([5, 6], 3).data } },
    ],
  },
  {
    op: "MatMul",
    inputs: [
      { name: "x", tensor: X },
      { name: "b", init: { dims: [3, 5, 2], data: randomTensor([3, 5, 2], 4).data } },
    ],
  },
  {
    op: "Einsum",
    inputs: [
      { name: "x", tensor: X },
      { name: "b", init: { dims: [2, 3, 6, 5], data: randomTensor([2, 3, 6, 5], 5).data } },
    ],
    attrs: { equation: "bhqd,bhkd->bhqk" },
  },
  {
    op: "LayerNormalization",
    inputs: [
      { name: "x", tensor: X },
      { name: "s", init: { dims: [5], data: randomTensor([5], 8).data } },
      { name: "b", init: { dims: [5], data: randomTensor([5], 9).data } },
    ],
    attrs: { axis: -1, epsilon: 1e-5 },
  },
  {
    op: "LayerNormalization",
    inputs: [
      { name: "x", tensor: X },
      { name: "s", init: { dims: [4, 5], data: randomTensor([4, 5], 8).data } },
    ],
    attrs: { axis: 2, epsilon: 1e-3 },
  },
  {
    op: "GroupNormalization",
    inputs: [
      { name: "x", tensor: randomTensor([2, 6, 3, 4], 2) },
      { name: "s", init: { dims: [3], data: randomTensor([3], 8).data } },
      { name: "b", init: { dims: [3], data: randomTensor([3], 9).data } },
    ],
    attrs: { num_groups: 3, epsilon: 1e-5 },
    opset: 18,
  },
  { op: "ReduceMean", inputs: [{ name: "x", tensor: X }], attrs: { axes: [1, 3], keepdims: 1 }, opset: 17 },
  {
    op: "ReduceMean",
    inputs: [
      { name: "x", tensor: X },
      { name: "a", init: { dims: [1], data: i64([-1]) } },
    ],
    attrs: { keepdims: 0 },
    opset: 18,
  },
  {
    op: "ReduceSum",
    inputs: [
      { name: "x", tensor: X },
      { name: "a", init: { dims: [2], data: i64([0, 2]) } },
    ],
    attrs: { keepdims: 1 },
  },
  { op: "Softmax", inputs: [{ name: "x", tensor: X }], attrs: { axis: 2 } },
  { op: "Softmax", inputs: [{ name: "x", tensor: X }] },
  {
    op: "Div",
    inputs: [
      { name: "x", tensor: X },
      { name: "d", init: { dims: [5], data: f32([1, 2, -3, 0.5, 7]) } },
    ],
  },
  {
    op: "Sub",
    inputs: [
      { name: "x", tensor: X },
      { name: "d", init: { dims: [3, 1, 1], data: f32([1, 2, -3]) } },
    ],
  },
  {
    op: "Pow",
    inputs: [
      { name: "x", tensor: X },
      { name: "d", init: { dims: [], data: f32([2]) } },
    ],
  },
  { op: "Sqrt", inputs: [{ name: "x", tensor: { data: X.data.map(Math.abs), shape: X.shape } }] },
  { op: "Erf", inputs: [{ name: "x", tensor: { data: X.data.map((v) => v * 3), shape: X.shape } }] },
  { op: "Exp", inputs: [{ name: "x", tensor: X }] },
  { op: "Tanh", inputs: [{ name: "x", tensor: X }] },
  { op: "Gelu", inputs: [{ name: "x", tensor: X }], opset: 20 },
  {
    op: "Gelu",
    inputs: [{ name: "x", tensor: { data: X.data.map((v) => v * 3), shape: X.shape } }],
    attrs: { approximate: "tanh" },
    opset: 20,
  },
  // sizes that take the engine's paths: MatMul and Einsum on the convolution GEMM (K, N, rows ≥ 16),
  // LayerNormalization on the group norm, Softmax over attention-like rows
  {
    op: "MatMul",
    inputs: [
      { name: "x", tensor: randomTensor([2, 20, 24], 11) },
      { name: "b", init: { dims: [24, 18], data: randomTensor([24, 18], 12).data } },
    ],
  },
  {
    op: "MatMul",
    inputs: [
      { name: "x", tensor: randomTensor([2, 3, 20, 24], 13) },
      { name: "b", tensor: randomTensor([2, 3, 24, 17], 14) },
    ],
  },
  {
    op: "Einsum",
    inputs: [
      { name: "q", tensor: randomTensor([1, 2, 20, 16], 15) },
      { name: "k", tensor: randomTensor([1, 2, 18, 16], 16) },
    ],
    attrs: { equation: "bhxd,bhyd->bhxy" },
  },
  {
    op: "LayerNormalization",
    inputs: [
      { name: "x", tensor: randomTensor([3, 20, 24], 17) },
      { name: "s", init: { dims: [24], data: randomTensor([24], 18).data } },
      { name: "b", init: { dims: [24], data: randomTensor([24], 19).data } },
    ],
    attrs: { axis: -1, epsilon: 1e-5 },
  },
  {
    op: "LayerNormalization",
    inputs: [
      { name: "x", tensor: randomTensor([3, 4, 5, 6], 20) },
      { name: "s", init: { dims: [5, 6], data: randomTensor([5, 6], 21).data } },
    ],
    attrs: { axis: 2, epsilon: 1e-3 },
  },
  { op: "Softmax", inputs: [{ name: "x", tensor: randomTensor([2, 3, 20, 40], 22) }], attrs: { axis: -1 } },
  { op: "Softmax", inputs: [{ name: "x", tensor: randomTensor([2, 7, 3, 40], 23) }], attrs: { axis: 1 } },
  {
    op: "Expand",
    inputs: [
      { name: "x", tensor: randomTensor([3, 1], 2) },
      { name: "s", init: { dims: [3], data: i64([2, 3, 4]) } },
    ],
  },
  {
    op: "Tile",
    inputs: [
      { name: "x", tensor: randomTensor([2, 3], 2) },
      { name: "r", init: { dims: [2], data: i64([2, 3]) } },
    ],
  },
  {
    op: "Slice",
    inputs: [
      { name: "x", tensor: X },
      { name: "s", init: { dims: [2], data: i64([3, 1]) } },
      { name: "e", init: { dims: [2], data: i64([0, 9]) } },
      { name: "a", init: { dims: [2], data: i64([2, 1]) } },
      { name: "st", init: { dims: [2], data: i64([-2, 1]) } },
    ],
  },
  {
    op: "Clip",
    inputs: [
      { name: "x", tensor: X },
      { name: "lo", init: { dims: [], data: f32([-0.25]) } },
      { name: "hi", init: { dims: [], data: f32([0.5]) } },
    ],
  },
  {
    op: "Concat",
    inputs: [
      { name: "x", tensor: X },
      { name: "b", init: { dims: [2, 3, 4, 2], data: randomTensor([2, 3, 4, 2], 6).data } },
    ],
    attrs: { axis: -1 },
  },
];

for (const { name, backend } of backendsUnderTest()) {
  test.serial(`${name}: the ops of real exports agree with onnxruntime`, async (t) => {
    setBackend(backend().name);
    for (const c of cases) {
      const opset = c.opset ?? 17;
      const [want] = await ortRun(c.op, c.inputs, c.attrs ?? {}, opset);
      const feeds = c.inputs.filter((i) => i.tensor);
      const bytes = encodeModel({
        opset,
        nodes: [{ opType: c.op, name: "n", inputs: c.inputs.map((i) => i.name), outputs: ["y"], attrs: c.attrs ?? {} }],
        inputs: feeds.map((i) => ({ name: i.name, shape: i.tensor!.shape })),
        outputs: [{ name: "y" }],
        initializers: c.inputs.filter((i) => i.init).map((i) => ({ name: i.name, dims: i.init!.dims, data: i.init!.data })),
      });
      const m = await loadModel(bytes);
      const out = await m.runAll(Object.fromEntries(feeds.map((i) => [i.name, i.tensor!])));
      const y = out.y!;
      const label = `${c.op} ${JSON.stringify(c.attrs ?? {})}`;
      t.deepEqual(y.shape, want!.shape, label);
      t.true(relDiff(y.data, want!.data as Float32Array) < 1e-5, `${label}: ${relDiff(y.data, want!.data as Float32Array)}`);
    }
  });

  test.serial(`${name}: Where over a Greater mask, Equal and Range as exporters chain them, as onnxruntime`, async (t) => {
    setBackend(backend().name);
    const bytes = encodeModel({
      opset: 17,
      nodes: [
        { opType: "Greater", inputs: ["x", "zero"], outputs: ["m"] },
        { opType: "Where", inputs: ["m", "x", "neg"], outputs: ["w"] },
        { opType: "Shape", inputs: ["x"], outputs: ["s"] },
        { opType: "Gather", inputs: ["s", "three"], outputs: ["n"], attrs: { axis: 0 } },
        { opType: "Range", inputs: ["zeroi", "n", "onei"], outputs: ["r"] },
        { opType: "Cast", inputs: ["r"], outputs: ["rf"], attrs: { to: 1 } },
        { opType: "Equal", inputs: ["r", "twoi"], outputs: ["e"] },
        { opType: "Cast", inputs: ["e"], outputs: ["ef"], attrs: { to: 1 } },
        { opType: "Add", inputs: ["w", "rf"], outputs: ["y0"] },
        { opType: "Mul", inputs: ["y0", "ef"], outputs: ["y1"] },
        { opType: "Add", inputs: ["y1", "w"], outputs: ["y"] },
      ],
      inputs: [{ name: "x", shape: [2, 3, 4, 5] }],
      outputs: [{ name: "y" }],
      initializers: [
        { name: "zero", dims: [], data: f32([0]) },
        { name: "neg", dims: [], data: f32([-7]) },
        { name: "three", dims: [], data: i64([3]) },
        { name: "zeroi", dims: [], data: i64([0]) },
        { name: "onei", dims: [], data: i64([1]) },
        { name: "twoi", dims: [], data: i64([2]) },
      ],
    });
    const s = await ort.InferenceSession.create(bytes, { logSeverityLevel: 4 });
    const want = (await s.run({ x: new ort.Tensor("float32", X.data, X.shape) })).y!.data as Float32Array;
    await s.release();
    const y = await (await loadModel(bytes)).run(X);
    t.true(relDiff(y.data, want) < 1e-6);
  });

  test.serial(`${name}: Cast to integer types truncates and wraps as onnxruntime does`, async (t) => {
    setBackend(backend().name);
    const x = { data: f32([-2.7, -0.5, 0.5, 2.9, 300.2, -129.9, 70000.5, 3]), shape: [8] };
    for (const to of [2, 3, 5, 6, 7, 9]) {
      // Cast to the integer type, then back to float so both sides give float32
      const bytes = encodeModel({
        opset: 17,
        nodes: [
          { opType: "Cast", inputs: ["x"], outputs: ["h"], attrs: { to } },
          { opType: "Cast", inputs: ["h"], outputs: ["y"], attrs: { to: 1 } },
        ],
        inputs: [{ name: "x", shape: [8] }],
        outputs: [{ name: "y" }],
      });
      const s = await ort.InferenceSession.create(bytes, { logSeverityLevel: 4 });
      const want = (await s.run({ x: new ort.Tensor("float32", x.data, [8]) })).y!.data as Float32Array;
      await s.release();
      const m = await loadModel(bytes);
      const y = await m.run(x);
      t.deepEqual(Array.from(y.data), Array.from(want), `to = ${to}`);
    }
  });
}

test.serial("loadModel binds a model to a backend; dispose releases its weights at once and refuses later runs", async (t) => {
  const { engineMemory, getBackend } = await import("../lib/backends/index.js");
  const w = randomTensor([32, 16, 3, 3, 3], 3); // 55 KB … a bigger one below for engine memory
  const big = randomTensor([64, 64, 3, 3, 3], 4); // 442 KB: engine memory
  const bytes = encodeModel({
    opset: 17,
    nodes: [
      { opType: "Conv", inputs: ["x", "w"], outputs: ["h"], attrs: { pads: [1, 1, 1, 1, 1, 1] } },
      { opType: "Conv", inputs: ["h2", "big"], outputs: ["y"], attrs: { pads: [1, 1, 1, 1, 1, 1] } },
      { opType: "Concat", inputs: ["h", "h"], outputs: ["h2"], attrs: { axis: 1 } },
    ],
    inputs: [{ name: "x", shape: [1, 16, 4, 8, 8] }],
    outputs: [{ name: "y" }],
    initializers: [
      { name: "w", dims: w.shape, data: w.data },
      { name: "big", dims: big.shape, data: big.data },
    ],
  });
  const x = randomTensor([1, 16, 4, 8, 8], 5);
  setBackend("native");
  const onTs = await loadModel(bytes, { backend: "ts" });
  const onNative = await loadModel(bytes);
  t.is(onTs.backend, "ts");
  // the global backend is native; the bound model still runs the TypeScript kernels (slower, and
  // equal to native within float32 rounding), and the global choice is untouched afterwards
  const calls: string[] = [];
  const ts = getBackend("ts");
  const orig = ts.conv3d;
  ts.conv3d = (...a) => (calls.push("ts"), orig(...a));
  try {
    const [a, b] = [await onTs.run(x), await onNative.run(x)];
    t.true(calls.length >= 2, "the bound model's convolutions ran on ts");
    t.true(relDiff(a.data, b.data) < 1e-5);
  } finally {
    ts.conv3d = orig;
  }
  t.is((await import("../lib/backends/index.js")).activeBackend().name, "native");
  const before = engineMemory().liveBytes;
  onNative.dispose();
  // detached external buffers are finalised from the event loop (Node's own callback), not by GC
  for (let i = 0; i < 5; i++) await new Promise((r) => setImmediate(r));
  const freed = before - engineMemory().liveBytes;
  // at least the 442 KB weight, its packed copy and the spare intermediates (engine blocks are 4 KB-rounded)
  t.true(freed >= 2 * big.data.byteLength, `freed ${freed} bytes`);
  await t.throwsAsync(onNative.run(x), { message: /was disposed/ });
  onNative.dispose(); // twice is harmless
  await t.throwsAsync(loadModel(bytes, { backend: "nope" as never }), { message: /nope/ });
});

(backendsUnderTest().some((b) => b.name === "native") ? test.serial : test.serial.skip)(
  "a tight loop of small native runs frees the outputs it drops (the event loop gets a turn)",
  async (t) => {
    // every call of this model is small enough to run inline on the JavaScript thread; Node-API
    // finalises a collected ArrayBuffer only from the event loop, which a chain of inline calls never
    // returned to: each dropped 1.5 MB output's engine block stayed, 2 MB a run without end
    const { engineMemory } = await import("../lib/backends/index.js");
    const w = randomTensor([6, 8, 1, 1, 1], 6);
    const bytes = encodeModel({
      opset: 17,
      nodes: [{ opType: "Conv", inputs: ["x", "w"], outputs: ["y"], attrs: {} }],
      inputs: [{ name: "x", shape: [1, 8, 16, 64, 64] }],
      outputs: [{ name: "y" }],
      initializers: [{ name: "w", dims: w.shape, data: w.data }],
    });
    const m = await loadModel(bytes, { backend: "native" });
    const x = randomTensor([1, 8, 16, 64, 64], 7);
    await m.run(x);
    const before = engineMemory().liveBytes;
    const runs = 400;
    for (let i = 0; i < runs; i++) await m.run(x);
    const grown = engineMemory().liveBytes - before;
    m.dispose();
    // 800 MB if nothing were freed; what V8 has not yet collected stays well below half of it
    t.true(grown < (runs * 2 ** 21) / 2, `engine memory grew by ${(grown / 2 ** 20).toFixed(0)} MB over ${runs} runs`);
  },
);

test("resampleVolume refuses a grid past maxVoxels before allocating (8×8×2 voxels claiming 300 mm)", async (t) => {
  const { resampleVolume, volumeFromArray } = await import("../lib/index.js");
  const v = volumeFromArray(new Int16Array(8 * 8 * 2), [2, 8, 8], [300, 300, 300]);
  const t0 = performance.now();
  await t.throwsAsync(resampleVolume(v, [0.49, 0.49, 5]), { message: /gives \[4898,4898,120\].*over options\.maxVoxels 1073741824/ });
  await t.throwsAsync(resampleVolume(v, [1, 1, 1], { maxVoxels: 1000 }), { message: /over options\.maxVoxels 1000/ });
  t.true(performance.now() - t0 < 5000);
  const ok = await resampleVolume(v, [150, 150, 150], { mode: "nearest" });
  t.deepEqual(ok.dims, [16, 16, 4]);
});

test.serial(
  "shape glue is computed once per input shape: the next run of the same shapes reuses it, another shape recomputes it, both equal onnxruntime",
  async (t) => {
    // y = Reshape(x, [N, C·D, H·W]) with the target built from Shape → Gather → Mul → Unsqueeze → Concat
    const nodes: Nodes = [
      { opType: "Shape", inputs: ["x"], outputs: ["s"] },
      { opType: "Gather", inputs: ["s", "i0"], outputs: ["n"], attrs: { axis: 0 } },
      { opType: "Gather", inputs: ["s", "i1"], outputs: ["c"], attrs: { axis: 0 } },
      { opType: "Gather", inputs: ["s", "i2"], outputs: ["d"], attrs: { axis: 0 } },
      { opType: "Gather", inputs: ["s", "i3"], outputs: ["h"], attrs: { axis: 0 } },
      { opType: "Gather", inputs: ["s", "i4"], outputs: ["w"], attrs: { axis: 0 } },
      { opType: "Mul", inputs: ["c", "d"], outputs: ["cd"] },
      { opType: "Mul", inputs: ["h", "w"], outputs: ["hw"] },
      { opType: "Unsqueeze", inputs: ["n", "ax"], outputs: ["n1"] },
      { opType: "Unsqueeze", inputs: ["cd", "ax"], outputs: ["cd1"] },
      { opType: "Unsqueeze", inputs: ["hw", "ax"], outputs: ["hw1"] },
      { opType: "Concat", inputs: ["n1", "cd1", "hw1"], outputs: ["target"], attrs: { axis: 0 } },
      { opType: "Reshape", inputs: ["x", "target"], outputs: ["r"] },
      { opType: "Softmax", inputs: ["r"], outputs: ["y"], attrs: { axis: -1 } },
    ];
    const inits = [0, 1, 2, 3, 4].map((k) => ({ name: `i${k}`, dims: [], data: i64([k]) }));
    const bytes = encodeModel({
      opset: 17,
      nodes,
      inputs: [{ name: "x", shape: [1, 2, "d", "h", "w"] }],
      outputs: [{ name: "y" }],
      initializers: [...inits, { name: "ax", dims: [1], data: i64([0]) }],
    });
    setBackend("native");
    const m = await loadModel(bytes);
    const session = await ort.InferenceSession.create(bytes);
    for (const [k, shape] of [
      [1, [1, 2, 3, 4, 5]],
      [2, [1, 2, 3, 4, 5]],
      [3, [1, 2, 2, 6, 4]],
      [4, [1, 2, 3, 4, 5]],
    ] as const) {
      const x = randomTensor([...shape], 10 + k);
      const y = await m.run(x);
      const want = (await session.run({ x: new ort.Tensor("float32", x.data, x.shape) })).y!;
      t.deepEqual(y.shape, [...want.dims], `run ${k}`);
      t.true(relDiff(y.data, want.data as Float32Array) < 1e-6, `run ${k}`);
      // first sight of a shape computes the 12 glue nodes; a shape seen before reuses them all
      t.is(m.lastRun!.shapeNodesCached, k === 2 || k === 4 ? 12 : 0, `run ${k}`);
    }
    await session.release();
  },
);

// PyTorch's GroupNorm as exported before opset 18 (MONAI SegResNet): Reshape [0, G, -1] →
// InstanceNormalization(1, 0) → Reshape(Shape(X)) → Mul γ → Add β → Relu, fused into one node.
// (`backTo`: the second Reshape's target a constant instead of Shape(X), as an export with fixed
// shapes holds it, or as a graph that reshapes elsewhere)
function groupNormPattern(opts: { scaleOne?: number; inShape?: (number | string)[]; backTo?: number[] } = {}) {
  const C = 8,
    G = 4;
  const gamma = randomTensor([C, 1, 1, 1], 21),
    beta = randomTensor([C, 1, 1, 1], 22);
  return encodeModel({
    opset: 17,
    nodes: [
      { opType: "Reshape", name: "r1", inputs: ["x", "target"], outputs: ["g"] },
      { opType: "InstanceNormalization", name: "gn", inputs: ["g", "one", "zero"], outputs: ["n"], attrs: { epsilon: 1e-5 } },
      ...(opts.backTo ? [] : [{ opType: "Shape", name: "sh", inputs: ["x"], outputs: ["s"] }]),
      { opType: "Reshape", name: "r2", inputs: ["n", "s"], outputs: ["u"] },
      { opType: "Mul", name: "m", inputs: ["u", "gamma"], outputs: ["v"] },
      { opType: "Add", name: "a", inputs: ["v", "beta"], outputs: ["w"] },
      { opType: "Relu", name: "act", inputs: ["w"], outputs: ["y"] },
    ],
    inputs: [{ name: "x", shape: opts.inShape ?? [2, C, "D", "H", "W"] }],
    outputs: [{ name: "y" }],
    initializers: [
      { name: "target", dims: [3], data: i64([0, G, -1]) },
      { name: "one", dims: [G], data: f32([opts.scaleOne ?? 1, 1, 1, 1]) },
      { name: "zero", dims: [G], data: f32([0, 0, 0, 0]) },
      { name: "gamma", dims: gamma.shape, data: gamma.data },
      { name: "beta", dims: beta.shape, data: beta.data },
      ...(opts.backTo ? [{ name: "s", dims: [opts.backTo.length], data: i64(opts.backTo) }] : []),
    ],
  });
}

test("GroupNorm as exported (Reshape → InstanceNorm → Reshape → Mul → Add → Relu) runs as one fused node and equals onnxruntime on every backend; a variant that is not the pattern is left alone", async (t) => {
  const x = randomTensor([2, 8, 3, 5, 7], 23);
  x.data.forEach((v, i) => (x.data[i] = v * 3 + (i % 5)));
  for (const [what, bytes, fused] of [
    ["the exported GroupNorm", groupNormPattern(), true],
    ["the norm's scale is not 1 (no fusion)", groupNormPattern({ scaleOne: 2 }), false],
    // fixed shapes: the Shape is folded at load into a constant, X's shape — still the pattern
    ["with fixed input shapes", groupNormPattern({ inShape: [2, 8, 3, 5, 7] }), true],
    ["back to X's shape written as a constant", groupNormPattern({ inShape: [2, 8, 3, 5, 7], backTo: [2, 8, 3, 5, 7] }), true],
    ["back to another shape of the same size (no fusion)", groupNormPattern({ inShape: [2, 8, 3, 5, 7], backTo: [2, 8, 5, 3, 7] }), false],
  ] as const) {
    const ref = await ortSession(bytes, { x });
    for (const { name: b } of backendsUnderTest()) {
      const m = await loadModel(bytes, { backend: b });
      const y = await m.run(x);
      t.true(relDiff(y.data, ref.data) < 1e-5, `${what} on ${b}: ${relDiff(y.data, ref.data)}`);
      t.is("GroupNormalization+relu" in m.lastRun!.opMs, fused, `${what} on ${b}: ops ${Object.keys(m.lastRun!.opMs)}`);
    }
  }
  // a backend without a groupNorm of its own (the CUDA one): composed from instanceNorm, mul, add and relu
  const { getBackend, withBackend } = await import("../lib/backends/index.js");
  const base = getBackend("ts");
  const bare = Object.assign(Object.create(Object.getPrototypeOf(base) as object) as object, base, { groupNorm: undefined }) as typeof base;
  const m = await loadModel(groupNormPattern());
  const y = await withBackend(bare, () => m.run(x));
  t.true(relDiff(y.data, (await ortSession(groupNormPattern(), { x })).data) < 1e-5, "composed on a backend without groupNorm");
});

test("GroupNormalization (opset 18: scale and bias per group) equals onnxruntime on every backend", async (t) => {
  const x = randomTensor([1, 6, 4, 5, 3], 31),
    s = randomTensor([3], 32),
    b = randomTensor([3], 33);
  const bytes = encodeModel({
    opset: 18,
    nodes: [{ opType: "GroupNormalization", name: "gn", inputs: ["x", "s", "b"], outputs: ["y"], attrs: { num_groups: 3, epsilon: 1e-5 } }],
    inputs: [{ name: "x", shape: x.shape }],
    outputs: [{ name: "y" }],
    initializers: [
      { name: "s", dims: [3], data: s.data },
      { name: "b", dims: [3], data: b.data },
    ],
  });
  const ref = await ortSession(bytes, { x });
  for (const { name: be } of backendsUnderTest()) {
    const y = await (await loadModel(bytes, { backend: be })).run(x);
    t.true(relDiff(y.data, ref.data) < 1e-5, `${be}: ${relDiff(y.data, ref.data)}`);
  }
});

test("attention's products on the engine GEMM: batched MatMul, Einsum Q·Kᵀ and A·V, and a 2-D MatMul whose B is an activation (its buffer reused between runs) equal onnxruntime on every backend", async (t) => {
  const q = randomTensor([1, 3, 20, 16], 41),
    k = randomTensor([1, 3, 24, 16], 42),
    v = randomTensor([1, 3, 24, 18], 43);
  const bytes = encodeModel({
    opset: 17,
    nodes: [
      { opType: "Einsum", name: "qk", inputs: ["q", "k"], outputs: ["s"], attrs: { equation: "bhxd,bhyd->bhxy" } },
      { opType: "Softmax", name: "sm", inputs: ["s"], outputs: ["p"], attrs: { axis: -1 } },
      { opType: "Einsum", name: "pv", inputs: ["p", "v"], outputs: ["o"], attrs: { equation: "bhxy,bhyd->bhxd" } },
      { opType: "MatMul", name: "again", inputs: ["p", "v"], outputs: ["o2"] },
      { opType: "Add", name: "sum", inputs: ["o", "o2"], outputs: ["y"] },
    ],
    inputs: [
      { name: "q", shape: q.shape },
      { name: "k", shape: k.shape },
      { name: "v", shape: v.shape },
    ],
    outputs: [{ name: "y" }],
  });
  // y = x · relu(z): B is an activation in a pooled buffer that the next run reuses, not a weight
  const x1 = randomTensor([20, 32], 44),
    x2 = randomTensor([20, 32], 45),
    z1 = randomTensor([32, 24], 46),
    z2 = randomTensor([32, 24], 47);
  const act = encodeModel({
    opset: 17,
    nodes: [
      { opType: "Relu", name: "r", inputs: ["z"], outputs: ["h"] },
      { opType: "MatMul", name: "mm", inputs: ["x", "h"], outputs: ["y"] },
    ],
    inputs: [
      { name: "x", shape: [20, 32] },
      { name: "z", shape: [32, 24] },
    ],
    outputs: [{ name: "y" }],
  });
  const ref = await ortSession(bytes, { q, k, v });
  const refs = [await ortSession(act, { x: x1, z: z1 }), await ortSession(act, { x: x2, z: z2 })];
  for (const { name: b } of backendsUnderTest()) {
    const m = await loadModel(bytes, { backend: b });
    const y = (await m.runAll({ q, k, v })).y!;
    t.true(relDiff(y.data, ref.data) < 1e-5, `${b}: attention ${relDiff(y.data, ref.data)}`);
    const m2 = await loadModel(act, { backend: b });
    for (const [i, [x, z]] of [
      [x1, z1],
      [x2, z2],
      [x1, z1],
    ].entries()) {
      const y2 = (await m2.runAll({ x: x!, z: z! })).y!;
      t.true(relDiff(y2.data, refs[i % 2]!.data) < 1e-5, `${b}: activation B, run ${i + 1}`);
    }
  }
});

test("a residual Add → LeakyRelu runs as one fused node and equals onnxruntime on every backend; an Add with a second reader is left alone", async (t) => {
  const x = randomTensor([1, 4, 3, 5, 6], 61),
    r = randomTensor([1, 4, 3, 5, 6], 62);
  const graph = (extraReader: boolean) =>
    encodeModel({
      opset: 17,
      nodes: [
        { opType: "Add", name: "sum", inputs: ["x", "r"], outputs: ["s"] },
        { opType: "LeakyRelu", name: "act", inputs: ["s"], outputs: ["y"], attrs: { alpha: 0.2 } },
        ...(extraReader ? [{ opType: "Mul", name: "twice", inputs: ["s", "r"], outputs: ["z"] }] : []),
      ],
      inputs: [
        { name: "x", shape: x.shape },
        { name: "r", shape: r.shape },
      ],
      outputs: [{ name: "y" }, ...(extraReader ? [{ name: "z" }] : [])],
      initializers: [],
    });
  for (const extra of [false, true]) {
    const bytes = graph(extra);
    const ref = await ortSession(bytes, { x, r });
    for (const { name: b } of backendsUnderTest()) {
      const m = await loadModel(bytes, { backend: b });
      const y = (await m.runAll({ x, r })).y!;
      t.true(relDiff(y.data, ref.data) < 1e-6, `${b}, extra reader ${extra}: ${relDiff(y.data, ref.data)}`);
      t.is("Add+leakyRelu" in m.lastRun!.opMs, !extra, `${b}: ops ${Object.keys(m.lastRun!.opMs)}`);
    }
  }
});

test("GELU as exported (Div √2 → Erf → Add 1 → Mul x → Mul 0.5) runs as one fused node and equals onnxruntime on every backend; a variant with another constant is left alone", async (t) => {
  const x = randomTensor([1, 16, 96], 51);
  x.data.forEach((v, i) => (x.data[i] = v * 4));
  const gelu = (half: number) =>
    encodeModel({
      opset: 17,
      nodes: [
        { opType: "Div", name: "d", inputs: ["x", "sqrt2"], outputs: ["a"] },
        { opType: "Erf", name: "e", inputs: ["a"], outputs: ["b"] },
        { opType: "Add", name: "p", inputs: ["b", "one"], outputs: ["c"] },
        { opType: "Mul", name: "m", inputs: ["x", "c"], outputs: ["d2"] },
        { opType: "Mul", name: "h", inputs: ["d2", "half"], outputs: ["y"] },
      ],
      inputs: [{ name: "x", shape: x.shape }],
      outputs: [{ name: "y" }],
      initializers: [
        { name: "sqrt2", dims: [], data: f32([Math.SQRT2]) },
        { name: "one", dims: [], data: f32([1]) },
        { name: "half", dims: [], data: f32([half]) },
      ],
    });
  for (const [half, fused] of [
    [0.5, true],
    [0.25, false],
  ] as const) {
    const bytes = gelu(half);
    const ref = await ortSession(bytes, { x });
    for (const { name: b } of backendsUnderTest()) {
      const m = await loadModel(bytes, { backend: b });
      const y = await m.run(x);
      t.true(relDiff(y.data, ref.data) < 1e-5, `${b}, ×${half}: ${relDiff(y.data, ref.data)}`);
      t.is("Gelu" in m.lastRun!.opMs, fused, `${b}, ×${half}: ops ${Object.keys(m.lastRun!.opMs)}`);
    }
  }
});

/**
 * Optional outputs exporters declare (PyTorch's dynamo exporter writes LayerNormalization's mean
 * and inverse deviation, MaxPool's indices): unread, the node runs and equals onnxruntime; read,
 * the model is refused at load naming the node and the output (bhsd does not make them).
 */
test.serial("optional outputs bhsd does not make: unread they are ignored, read the model is refused at load", async (t) => {
  setBackend("native");
  const X = randomTensor([1, 4, 6, 8, 4], 3);
  const scale = { name: "s", dims: [4], data: randomTensor([4], 1).data };
  const nodes = {
    LayerNormalization: {
      opType: "LayerNormalization",
      inputs: ["x", "s"],
      outputs: ["y", "mean", "rstd"],
      attrs: { axis: -1, epsilon: 1e-5 },
    },
    MaxPool: { opType: "MaxPool", inputs: ["x"], outputs: ["y", "idx"], attrs: { kernel_shape: [2, 2, 2], strides: [2, 2, 2] } },
    Dropout: { opType: "Dropout", inputs: ["x"], outputs: ["y", "mask"] },
  } as const;
  for (const [op, node] of Object.entries(nodes)) {
    const unread = encodeModel({
      opset: 18,
      nodes: [node],
      inputs: [{ name: "x", shape: X.shape }],
      outputs: [{ name: "y" }],
      initializers: [scale],
    });
    const session = await ort.InferenceSession.create(unread, { logSeverityLevel: 3 });
    const want = (await session.run({ x: new ort.Tensor("float32", X.data, X.shape) })).y!.data as Float32Array;
    await session.release();
    const y = await (await loadModel(unread)).run(X);
    t.true(relDiff(y.data, want) <= 1e-5, `${op}, second output unread`);
    const second = node.outputs[1];
    const read = encodeModel({
      opset: 18,
      nodes: [node, { opType: "Relu", inputs: [second], outputs: ["z"] }],
      inputs: [{ name: "x", shape: X.shape }],
      outputs: [{ name: "y" }, { name: "z" }],
      initializers: [scale],
    });
    await t.throwsAsync(loadModel(read), {
      message: new RegExp(`node ${op}_0 \\(${op}\\): its output 2 \\(${second}\\) is read, and bhsd makes only the first output of ${op}`),
    });
  }
});

test("a value made by two nodes, or an initializer defined twice, is refused at load, naming it (onnxruntime refuses the first too)", async (t) => {
  const bytes = encodeModel({
    opset: 17,
    nodes: [
      { opType: "Relu", inputs: ["x"], outputs: ["y"], name: "first" },
      { opType: "Sigmoid", inputs: ["x"], outputs: ["y"], name: "second" },
    ],
    inputs: [{ name: "x", shape: [2, 3] }],
    outputs: [{ name: "y" }],
  });
  await t.throwsAsync(ort.InferenceSession.create(bytes, { logSeverityLevel: 4 }));
  await t.throwsAsync(loadModel(bytes), { message: /value y is made by node second and by node first/ });
  const input = encodeModel({
    opset: 17,
    nodes: [{ opType: "Relu", inputs: ["x"], outputs: ["x"], name: "again" }],
    inputs: [{ name: "x", shape: [2, 3] }],
    outputs: [{ name: "x" }],
  });
  await t.throwsAsync(loadModel(input), { message: /value x is made by node again and by the graph's inputs/ });
  const twice = encodeModel({
    opset: 17,
    nodes: [{ opType: "Add", inputs: ["x", "w"], outputs: ["y"] }],
    inputs: [{ name: "x", shape: [2] }],
    outputs: [{ name: "y" }],
    initializers: [
      { name: "w", dims: [2], data: Float32Array.of(1, 2) },
      { name: "w", dims: [2], data: Float32Array.of(3, 4) },
    ],
  });
  await t.throwsAsync(loadModel(twice), { message: /initializer w is defined twice/ });
});

test("resampleVolume's nearest mode keeps int32, uint32 and float64 labels exact (they went through float32)", async (t) => {
  const { resampleVolume } = await import("../lib/index.js");
  const dims: [number, number, number] = [7, 5, 3];
  const n = 7 * 5 * 3;
  const geo = { dims, spacing: [1, 1, 2] as [number, number, number], affine: [1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 2, 0, 0, 0, 0, 1] };
  // the voxel each output takes, from an index volume (small numbers: exact in float32)
  const idx = await resampleVolume({ ...geo, data: Float32Array.from({ length: n }, (_, i) => i) }, [0.7, 1.3, 1.1], { mode: "nearest" });
  const cases = [
    Int32Array.from({ length: n }, (_, i) => (i % 2 ? 2 ** 31 - 1 - i : 16_777_217 + i)),
    Uint32Array.from({ length: n }, (_, i) => 2 ** 32 - 1 - i),
    Float64Array.from({ length: n }, (_, i) => Math.PI * 1e200 * (i + 1)),
  ];
  for (const data of cases) {
    const same = await resampleVolume({ ...geo, data }, [1, 1, 2], { mode: "nearest" });
    t.deepEqual([...same.data], [...data], data.constructor.name);
    const r = await resampleVolume({ ...geo, data }, [0.7, 1.3, 1.1], { mode: "nearest" });
    t.is(r.data.constructor, data.constructor);
    t.deepEqual(
      [...r.data],
      [...idx.data].map((k) => data[k]!),
      data.constructor.name,
    );
  }
});
