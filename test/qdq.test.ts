/**
 * Quantized models in onnxruntime's QDQ format, run in float (lib/model/quant.ts): against
 * onnxruntime in this process on the same bytes (its int8 kernels). test/fixtures/qdq/make.py made
 * the fixture model as quantize_static writes one.
 */
import test from "ava";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import ort from "onnxruntime-node";
import { loadModel, readNpy, setBackend } from "../lib/index.js";
import { encodeModel } from "../lib/model/onnx-proto.js";
import { backendsUnderTest, ROOT } from "./helpers.js";
import { randomTensor, scaleDiff } from "./ort.js";

const DIR = join(ROOT, "test", "fixtures", "qdq");
const backends = backendsUnderTest();

async function ortRun(bytes: Uint8Array, x: { data: Float32Array; shape: number[] }): Promise<Float32Array> {
  const s = await ort.InferenceSession.create(bytes, { intraOpNumThreads: 1 });
  const r = await s.run({ x: new ort.Tensor("float32", x.data, x.shape) });
  await s.release();
  return r[s.outputNames[0]!]!.data as Float32Array;
}

for (const { name } of backends)
  test.serial(`${name}: a QDQ model (int8 weights per channel, uint8 and int8 activations) gives onnxruntime's outputs`, async (t) => {
    setBackend(name);
    const bytes = new Uint8Array(readFileSync(join(DIR, "qdq.onnx")));
    const model = await loadModel(bytes, { patchSize: [8, 16, 16] });
    for (const f of ["input.npy", "input2.npy"]) {
      const x = await readNpy(join(DIR, f));
      const input = { data: x.data as Float32Array, shape: x.shape };
      const want = await ortRun(bytes, input);
      const y = await model.run(input);
      t.deepEqual(y.shape, [1, 4, 4, 8, 8]);
      // the same integers: float32 rounding of the last conv's sums only
      t.true(scaleDiff(y.data, want) <= 1e-5, `${f}: ${scaleDiff(y.data, want)}`);
    }
    model.dispose();
  });

/** x → Q/DQ (uint8) → Conv 1×1×1 with int8 weights per output channel (DequantizeLinear axis 0) → y. */
function wideModel(
  cin: number,
  cout: number,
  extra?: (n: { opType: string; inputs: string[]; outputs: string[]; attrs?: Record<string, number> }[]) => void,
) {
  let s = 12345;
  const rnd = () => ((s = (s * 1103515245 + 12345) >>> 0) / 2 ** 32) * 2 - 1;
  const wq = Int8Array.from({ length: cout * cin }, () => Math.round(rnd() * 127));
  const ws = Float32Array.from({ length: cout }, () => 0.001 + Math.abs(rnd()) * 0.01);
  const nodes: { opType: string; inputs: string[]; outputs: string[]; attrs?: Record<string, number> }[] = [
    { opType: "QuantizeLinear", inputs: ["x", "xs", "xz"], outputs: ["xq"] },
    { opType: "DequantizeLinear", inputs: ["xq", "xs", "xz"], outputs: ["xd"] },
    { opType: "DequantizeLinear", inputs: ["wq", "ws", "wz"], outputs: ["w"], attrs: { axis: 0 } },
    { opType: "Conv", inputs: ["xd", "w"], outputs: ["y"], attrs: { kernel_shape: [1, 1, 1] } as never },
  ];
  extra?.(nodes);
  return encodeModel({
    opset: 13,
    nodes,
    inputs: [{ name: "x", shape: [1, cin, 2, 2, 2] }],
    outputs: [{ name: "y" }],
    initializers: [
      { name: "xs", dims: [], data: Float32Array.of(2 / 255) },
      { name: "xz", dims: [], data: Uint8Array.of(128) },
      { name: "wq", dims: [cout, cin, 1, 1, 1], data: wq },
      { name: "ws", dims: [cout], data: ws },
      { name: "wz", dims: [cout], data: new Int8Array(cout) },
      ...(nodes.some((n) => n.inputs.includes("xz2")) ? [{ name: "xz2", dims: [], data: Uint8Array.of(127) }] : []),
    ],
  });
}

test.serial("a quantized model's int8 weights are not held to the shape glue's bound of integers (1.1 M values)", async (t) => {
  setBackend(backends[backends.length - 1]!.name);
  const bytes = wideModel(1100, 1000);
  const x = randomTensor([1, 1100, 2, 2, 2], 7);
  const model = await loadModel(bytes, { patchSize: [2, 2, 2] });
  const y = await model.run(x);
  t.true(scaleDiff(y.data, await ortRun(bytes, x as { data: Float32Array; shape: number[] })) <= 1e-5);
  model.dispose();
});

test.serial("integers read by anything but DequantizeLinear stay shape glue, bounded (here 1.1 M int8 also read by a Cast)", async (t) => {
  const bytes = wideModel(1100, 1000, (n) => n.push({ opType: "Cast", inputs: ["wq"], outputs: ["c"], attrs: { to: 1 } }));
  await t.throwsAsync(loadModel(bytes, { patchSize: [2, 2, 2] }), {
    message: /integer tensor wq has 1100000 values; bhsd keeps integer tensors for shape glue/,
  });
});

test("QDQ patterns bhsd cannot run in float are refused at load, naming the node", async (t) => {
  // the integers of a QuantizeLinear read by another op
  await t.throwsAsync(
    loadModel(
      wideModel(4, 2, (n) => n.push({ opType: "Cast", inputs: ["xq"], outputs: ["c"], attrs: { to: 1 } })),
      { patchSize: [2, 2, 2] },
    ),
    { message: /QuantizeLinear\): its integers \(xq\) go to Cast_4 \(Cast\); bhsd runs quantized \(QDQ\) models in float/ },
  );
  // a DequantizeLinear with another zero point than its QuantizeLinear's
  await t.throwsAsync(
    loadModel(
      wideModel(4, 2, (n) => {
        n[1]!.inputs[2] = "xz2";
      }),
      { patchSize: [2, 2, 2] },
    ),
    { message: /DequantizeLinear_1 reads its integers with another scale, zero point or axis/ },
  );
});

for (const { name } of backends)
  test.serial(
    `${name}: PyTorch's fake-quantize export (Constant scales, per-channel weight scales computed in the graph) gives onnxruntime's outputs`,
    async (t) => {
      setBackend(name);
      const bytes = new Uint8Array(readFileSync(join(DIR, "fakequant.onnx")));
      const model = await loadModel(bytes, { patchSize: [8, 16, 16] });
      const x = await readNpy(join(DIR, "input2.npy"));
      const input = { data: x.data as Float32Array, shape: x.shape };
      const want = await ortRun(bytes, input);
      const y = await model.run(input);
      // the output is quantized (steps of 0.01): a sum a float32 rounding away from a half step may
      // land one step over; no more than that, and at few values
      let worst = 0,
        off = 0;
      for (let i = 0; i < want.length; i++) {
        const d = Math.abs(y.data[i]! - want[i]!);
        worst = Math.max(worst, d);
        if (d > 1e-6) off++;
      }
      t.true(worst <= 0.01 + 1e-6, `${worst}`);
      t.true(off <= want.length / 1000, `${off} of ${want.length} values a step off`);
      model.dispose();
    },
  );

test.serial(
  "a QuantizeLinear read by several DequantizeLinear nodes, zero points left out, NaN and a zero scale: as onnxruntime",
  async (t) => {
    setBackend(backends[backends.length - 1]!.name);
    const nodes = [
      { opType: "QuantizeLinear", inputs: ["x", "s"], outputs: ["q"] },
      { opType: "DequantizeLinear", inputs: ["q", "s"], outputs: ["d1"] },
      { opType: "DequantizeLinear", inputs: ["q", "s", "z"], outputs: ["d2"] },
      { opType: "QuantizeLinear", inputs: ["x", "s0", "zi"], outputs: ["q0"] },
      { opType: "DequantizeLinear", inputs: ["q0", "s0", "zi"], outputs: ["d0"] },
      { opType: "Add", inputs: ["d1", "d2"], outputs: ["a"] },
      { opType: "Add", inputs: ["a", "d0"], outputs: ["y"] },
    ];
    const bytes = encodeModel({
      opset: 13,
      nodes,
      inputs: [{ name: "x", shape: [1, 1, 2, 2, 3] }],
      outputs: [{ name: "y" }],
      initializers: [
        { name: "s", dims: [], data: Float32Array.of(0.1) },
        { name: "z", dims: [], data: Uint8Array.of(0) },
        { name: "s0", dims: [], data: Float32Array.of(0) },
        { name: "zi", dims: [], data: Int8Array.of(3) },
      ],
    });
    const x = {
      data: Float32Array.of(0.25, 0.35, -0.05, 30, NaN, Infinity, -Infinity, 1.04, 0.15, 12.75, 25.45, 0),
      shape: [1, 1, 2, 2, 3],
    };
    const model = await loadModel(bytes, { patchSize: [2, 2, 3] });
    const y = await model.run(x);
    const want = await ortRun(bytes, x);
    t.deepEqual([...y.data], [...want]);
    model.dispose();
  },
);

for (const { name } of backends)
  test.serial(
    `${name}: a quantize_dynamic model (DynamicQuantizeLinear, ConvInteger, MatMulInteger) gives onnxruntime's outputs`,
    async (t) => {
      setBackend(name);
      const bytes = new Uint8Array(readFileSync(join(DIR, "dynamic.onnx")));
      const model = await loadModel(bytes, { patchSize: [8, 16, 16] });
      for (const f of ["input.npy", "input2.npy"]) {
        const x = await readNpy(join(DIR, f));
        const input = { data: x.data as Float32Array, shape: x.shape };
        const y = await model.run(input);
        t.deepEqual(y.shape, [1, 3, 8, 16, 16]);
        t.true(scaleDiff(y.data, await ortRun(bytes, input)) <= 1e-6, f);
      }
      model.dispose();
    },
  );

test("quantize_dynamic's integer ops with weights that are not integer constants are refused at load, naming the node", async (t) => {
  const bytes = encodeModel({
    opset: 13,
    nodes: [
      { opType: "DynamicQuantizeLinear", inputs: ["x"], outputs: ["xq", "xs", "xz"] },
      { opType: "MatMulInteger", inputs: ["xq", "xq", "xz", "xz"], outputs: ["y"] },
    ],
    inputs: [{ name: "x", shape: [2, 2] }],
    outputs: [{ name: "y" }],
  });
  await t.throwsAsync(loadModel(bytes), { message: /MatMulInteger_1 \(MatMulInteger\): its weights xq are not an int8 or uint8 constant/ });
});

test.serial(
  "DynamicQuantizeLinear's edge cases (±∞, NaN, a range that rounds to nothing) and a graph input named as bhsd's own names: as onnxruntime",
  async (t) => {
    setBackend(backends[backends.length - 1]!.name);
    const bytes = encodeModel({
      opset: 13,
      nodes: [
        { opType: "DynamicQuantizeLinear", inputs: ["x"], outputs: ["q", "s", "z"] },
        { opType: "Cast", inputs: ["q"], outputs: ["y"], attrs: { to: 1 } },
      ],
      inputs: [{ name: "x", shape: [1, 4] }],
      outputs: [{ name: "y" }],
    });
    for (const values of [
      [-Infinity, 1, -1, 0],
      [Infinity, 1, -1, 0],
      [NaN, 1, -2, 3],
      [1e-45, 0, 0, 0],
      [-3, -2, -1, -0.5],
      [0, 0, 0, 0],
    ]) {
      const x = { data: Float32Array.from(values), shape: [1, 4] };
      const model = await loadModel(bytes);
      t.deepEqual([...(await model.run(x)).data], [...(await ortRun(bytes, x))], `[${values}]`);
      model.dispose();
    }
    // an unused graph input under the name bhsd would give the float weights: not taken for them
    const dyn = readFileSync(join(DIR, "dynamic.onnx"));
    const { ModelProto } = await import("../lib/model/onnx-proto.js");
    const m = ModelProto.decode(dyn) as unknown as { graph: { input: { name: string; type: unknown }[] } };
    m.graph.input.push({ ...m.graph.input[0]!, name: "w1q:bhsd_float" });
    const shadowed = ModelProto.encode(m as never).finish();
    const x = await readNpy(join(DIR, "input.npy"));
    const input = { data: x.data as Float32Array, shape: x.shape };
    const model = await loadModel(shadowed, { patchSize: [8, 16, 16] });
    const out = await model.runAll({
      x: input,
      "w1q:bhsd_float": { data: new Float32Array(input.data.length).fill(7), shape: input.shape },
    });
    t.true(scaleDiff(out.y!.data, await ortRun(new Uint8Array(readFileSync(join(DIR, "dynamic.onnx"))), input)) <= 1e-6);
    model.dispose();
  },
);

test("a quantize_dynamic model's weights become float within the model's memoryLimit", async (t) => {
  const nodes = [
    { opType: "DynamicQuantizeLinear", inputs: ["x"], outputs: ["xq", "xs", "xz"] },
    { opType: "MatMulInteger", inputs: ["xq", "w", "xz"], outputs: ["y"] },
  ];
  const bytes = encodeModel({
    opset: 13,
    nodes,
    inputs: [{ name: "x", shape: [1, 2000] }],
    outputs: [{ name: "y", elemType: 6 }],
    initializers: [{ name: "w", dims: [2000, 2000], data: new Int8Array(4e6).fill(3) }],
  });
  await t.throwsAsync(loadModel(bytes, { memoryLimit: 1 << 20 }), { message: /folding constants needs more than the model's memoryLimit/ });
  const model = await loadModel(bytes);
  const x = { data: Float32Array.from({ length: 2000 }, (_, i) => Math.sin(i)), shape: [1, 2000] };
  t.deepEqual([...(await model.run(x)).data], [...(await ortRun(bytes, x))]);
  model.dispose();
});
