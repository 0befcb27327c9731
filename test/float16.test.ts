/**
 * float16 and bfloat16 models: a `model.half()` export (float16 weights, input and output) and
 * onnxconverter-common's conversion (float16 weights, float32 input and output with Casts), made
 * from three fixture networks by test/fixtures/float16/make.py. bhsd decodes the weights to float32,
 * rounds where the model casts to (or declares) a 16-bit type, and computes in float32 — as
 * onnxruntime's CPU provider does. References: onnxruntime on the same files in this process, and
 * PyTorch's float32 outputs of the original networks (within float16's precision).
 */
import test from "ava";
import { createHash } from "node:crypto";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import ort from "onnxruntime-node";
import { loadModel, readNpy, setBackend } from "../lib/index.js";
import { encodeModel, ModelProto } from "../lib/model/onnx-proto.js";
import { backendsUnderTest, ROOT } from "./helpers.js";
import { scaleDiff } from "./ort.js";

const DIR = join(ROOT, "test", "fixtures", "float16");
const SUMS = Object.fromEntries(
  readFileSync(join(DIR, "SHA256SUMS"), "utf8")
    .trim()
    .split("\n")
    .map((l) => l.split(/\s+/).reverse() as [string, string]),
);
function fixture(rel: string): string {
  const path = join(ROOT, "test", "fixtures", rel);
  const key = rel.startsWith("float16/") ? rel.slice("float16/".length) : undefined;
  if (key !== undefined && createHash("sha256").update(readFileSync(path)).digest("hex") !== SUMS[key])
    throw new Error(`${path} differs from its SHA256SUMS`);
  return path;
}

/** IEEE half bits → number, written here from the format's definition (the reference's decoder). */
const halfBits = (h: number) => {
  const s = h & 0x8000 ? -1 : 1,
    e = (h >> 10) & 31,
    m = h & 1023;
  return e === 0 ? s * m * 2 ** -24 : e === 31 ? (m ? NaN : s * Infinity) : s * (1 + m / 1024) * 2 ** (e - 15);
};

const CASES = [
  { name: "plainconvunet2d_half", expected: "networks-2d/plainconvunet2d_expected.npy", half: true },
  { name: "segresnet2d_fp16", expected: "networks-2d/segresnet2d_expected.npy", half: false },
  { name: "monaiunet_fp16", expected: "networks/monaiunet_expected.npy", half: false },
];

for (const { name: backend } of backendsUnderTest()) {
  for (const c of CASES) {
    test.serial(
      `${backend}: ${c.name} equals onnxruntime on the same float16 file, and PyTorch's float32 network within float16's precision`,
      async (t) => {
        setBackend(backend);
        const file = fixture(`float16/${c.name}.onnx`);
        const x = await readNpy(fixture(`float16/${c.name}_input.npy`));
        const bits = await readNpy(fixture(`float16/${c.name}_input16.npy`));
        const session = await ort.InferenceSession.create(file, { intraOpNumThreads: 1 });
        const feed = c.half
          ? new ort.Tensor("float16", bits.data as Uint16Array, bits.shape)
          : new ort.Tensor("float32", x.data as Float32Array, x.shape);
        const o = (await session.run({ input: feed })).output!;
        await session.release();
        const ref = c.half ? Float32Array.from(o.data as Uint16Array, halfBits) : (o.data as Float32Array);
        const model = await loadModel(file);
        // (the caller's float32 values; a float16 input is rounded to float16 as it enters)
        const y = await model.run({ data: x.data as Float32Array, shape: x.shape });
        t.deepEqual(y.shape, [...o.dims]);
        const dOrt = scaleDiff(y.data, ref);
        // a float16 output is rounded to float16 (half an ulp: 4.9e-4 of a value), as onnxruntime's
        t.true(dOrt <= (c.half ? 1e-3 : 1e-5), `max |bhsd − onnxruntime| is ${dOrt} of its max`);
        const d32 = scaleDiff(y.data, (await readNpy(fixture(c.expected))).data);
        t.true(d32 <= 1e-2, `max |bhsd − PyTorch float32| is ${d32} of its max`);
        if (c.half) {
          // every output value is a float16
          t.true(
            y.data.every((v) => Math.abs(v) < 2 ** -14 || Number.isInteger(v / 2 ** (Math.floor(Math.log2(Math.abs(v))) - 10))),
            "outputs are float16 numbers",
          );
        }
        model.dispose();
      },
    );
  }
}

test.serial("Cast to float16 and bfloat16 rounds as onnxruntime does: ties to even, subnormals, overflow, NaN", async (t) => {
  setBackend("ts");
  const vals = [
    0,
    -0,
    1,
    1 + 2 ** -11,
    1 + 3 * 2 ** -11,
    1 + 2 ** -11 + 2 ** -20,
    65504,
    65519.99,
    65520,
    1e6,
    -1e6,
    2 ** -24,
    2 ** -25,
    3 * 2 ** -26,
    2 ** -14 - 2 ** -25,
    0.1,
    -3.14159,
    1.00390625,
    1.01171875,
    255.5,
    3.4e38,
    1e-40,
    NaN,
    Infinity,
    -Infinity,
  ];
  const x = Float32Array.from(vals);
  for (const to of [10, 16]) {
    const bytes = encodeModel({
      opset: 17,
      nodes: [
        { opType: "Cast", inputs: ["x"], outputs: ["h"], attrs: { to } },
        { opType: "Cast", inputs: ["h"], outputs: ["y"], attrs: { to: 1 } },
      ],
      inputs: [{ name: "x", shape: [vals.length] }],
      outputs: [{ name: "y" }],
    });
    const session = await ort.InferenceSession.create(bytes);
    const want = (await session.run({ x: new ort.Tensor("float32", x, [vals.length]) })).y!.data as Float32Array;
    await session.release();
    const y = await (await loadModel(bytes)).run({ data: x, shape: [vals.length] });
    t.deepEqual(Array.from(y.data), Array.from(want), `to = ${to}`);
  }
});

test("float16 and bfloat16 weights are decoded from raw data and from int32_data", async (t) => {
  // w = [1, -2.5, 2^-24, 65504] as float16 bits; [1, -2.5, 2^-100, 1.765625 · 2^127] as bfloat16
  for (const [dataType, bits, want] of [
    [10, [0x3c00, 0xc100, 0x0001, 0x7bff], [1, -2.5, 2 ** -24, 65504]],
    [16, [0x3f80, 0xc020, 0x0d80, 0x7f62], [1, -2.5, 2 ** -100, 1.765625 * 2 ** 127]],
  ] as const) {
    // raw_data: the four 16-bit values' bytes (encodeModel writes a typed array's bytes as they are)
    const raw = encodeModel({
      opset: 17,
      nodes: [{ opType: "Add", inputs: ["x", "w"], outputs: ["y"] }],
      inputs: [{ name: "x", shape: [4] }],
      outputs: [{ name: "y" }],
      initializers: [{ name: "w", dims: [4], data: new Int32Array(new Uint16Array(bits).buffer), dataType }],
    });
    // int32_data: one value's bits in each int32, as ONNX stores 16-bit floats without raw_data
    const m = ModelProto.decode(raw) as unknown as { graph: { initializer: { rawData?: Uint8Array; int32Data?: number[] }[] } };
    m.graph.initializer[0]!.rawData = new Uint8Array(0);
    m.graph.initializer[0]!.int32Data = [...bits];
    const ints = ModelProto.encode(m as never).finish();
    for (const [how, bytes] of [
      ["raw_data", raw],
      ["int32_data", ints],
    ] as const) {
      const y = await (await loadModel(bytes)).run({ data: new Float32Array(4), shape: [4] });
      t.deepEqual(Array.from(y.data), Array.from(Float32Array.from(want)), `${dataType} from ${how}`);
    }
  }
});

test.serial("a float16 model's tensors in external data (model.onnx + model.onnx.data) load as the inline file's", async (t) => {
  setBackend("ts");
  const x = await readNpy(fixture("float16/segresnet2d_fp16_input.npy"));
  const inline = await (await loadModel(fixture("float16/segresnet2d_fp16.onnx"))).run({ data: x.data as Float32Array, shape: x.shape });
  fixture("float16/external/model.onnx.data");
  const file = fixture("float16/external/model.onnx");
  const ext = await (await loadModel(file)).run({ data: x.data as Float32Array, shape: x.shape });
  t.deepEqual(Array.from(ext.data), Array.from(inline.data));
  const session = await ort.InferenceSession.create(file, { intraOpNumThreads: 1 });
  const o = (await session.run({ input: new ort.Tensor("float32", x.data as Float32Array, x.shape) })).output!;
  await session.release();
  t.true(scaleDiff(ext.data, o.data as Float32Array) <= 1e-5);
});

test.serial(
  "a float16 input is rounded as it enters: 3 · x on float16 equals onnxruntime exactly, where rounding after only would not",
  async (t) => {
    setBackend("ts");
    // y = x · 3 with x, 3 and y float16 (onnxruntime is fed x converted to float16 bits here)
    const bytes = encodeModel({
      opset: 17,
      nodes: [{ opType: "Mul", inputs: ["x", "k"], outputs: ["y"] }],
      inputs: [{ name: "x", shape: [4096], elemType: 10 }],
      outputs: [{ name: "y", elemType: 10 }],
      // (encodeModel writes a typed array's bytes as raw_data: these two are float16 3.0)
      initializers: [{ name: "k", dims: [], data: new Uint8Array([0x00, 0x42]) as never, dataType: 10 }],
    });
    /** float → float16 bits, ties to even, for normal magnitudes (2^-14 … 65504): the test's own */
    const toHalfBits = (v: number) => {
      const a = Math.abs(v);
      let e = Math.floor(Math.log2(a));
      if (2 ** e > a) e--;
      if (2 ** (e + 1) <= a) e++;
      const r = a / 2 ** (e - 10);
      let m = Math.floor(r);
      const d = r - m;
      if (d > 0.5 || (d === 0.5 && m % 2 === 1)) m++;
      if (m === 2048) {
        m = 1024;
        e++;
      }
      return (v < 0 ? 0x8000 : 0) | ((e + 15) << 10) | (m - 1024);
    };
    // values at and near float16 ties: x's own rounding changes 3 · x's
    const x = Float32Array.from({ length: 4096 }, (_, i) => (1 + (i + 0.5) * 2 ** -10) * (i % 2 ? 1 : -0.37));
    const bits = Uint16Array.from(x, toHalfBits);
    const session = await ort.InferenceSession.create(bytes);
    const want = Float32Array.from((await session.run({ x: new ort.Tensor("float16", bits, [4096]) })).y!.data as Uint16Array, halfBits);
    await session.release();
    const y = await (await loadModel(bytes)).run({ data: x, shape: [4096] });
    t.deepEqual(Array.from(y.data), Array.from(want));
    // the case discriminates: rounding only the product (no rounding as x enters) differs somewhere
    const onceOnly = Array.from(x, (v) => halfBits(toHalfBits(Math.fround(v * 3))));
    t.true(
      onceOnly.some((v, i) => v !== want[i]),
      "3 · x rounded once equals onnxruntime everywhere: the input rounding is not tested",
    );
  },
);

test("float16 models: a CastLike to a target of unknown type, a float16 input returned as an output, and names the boundary Casts could take", async (t) => {
  setBackend("ts");
  // the reviewer's case: CastLike(x, Sigmoid(Cast(x, float16))) — resolved through Sigmoid, rounded as onnxruntime
  const chain = encodeModel({
    opset: 17,
    nodes: [
      { opType: "Cast", inputs: ["x"], outputs: ["a"], attrs: { to: 10 } },
      { opType: "Sigmoid", inputs: ["a"], outputs: ["s"] },
      { opType: "CastLike", inputs: ["x", "s"], outputs: ["h"] },
      { opType: "Cast", inputs: ["h"], outputs: ["y"], attrs: { to: 1 } },
    ],
    inputs: [{ name: "x", shape: [3] }],
    outputs: [{ name: "y" }],
  });
  const x = Float32Array.of(1.0001, 70000, 0.1);
  const session = await ort.InferenceSession.create(chain);
  const want = (await session.run({ x: new ort.Tensor("float32", x, [3]) })).y!.data as Float32Array;
  await session.release();
  t.deepEqual(Array.from((await (await loadModel(chain)).run({ data: x, shape: [3] })).data), Array.from(want));
  // a target whose type nothing tells (an op bhsd does not type: a Where's other branch here is a graph input of no declared type)
  const unknown = encodeModel({
    opset: 17,
    nodes: [
      { opType: "Cast", inputs: ["x"], outputs: ["a"], attrs: { to: 10 } },
      { opType: "CastLike", inputs: ["x", "z"], outputs: ["h"], name: "cl" },
      { opType: "Add", inputs: ["h", "a"], outputs: ["y"] },
    ],
    inputs: [
      { name: "x", shape: [3] },
      { name: "z", shape: [3], elemType: 0 },
    ],
    outputs: [{ name: "y" }],
  });
  await t.throwsAsync(loadModel(unknown), { message: /node cl \(CastLike\): its target's type is not declared/ });
  const passthrough = encodeModel({
    opset: 17,
    nodes: [{ opType: "Relu", inputs: ["x"], outputs: ["y"] }],
    inputs: [{ name: "x", shape: [2], elemType: 10 }],
    outputs: [
      { name: "y", elemType: 10 },
      { name: "x", elemType: 10 },
    ],
  });
  await t.throwsAsync(loadModel(passthrough), { message: /returns its float16 input x as an output/ });
  // an unread input named as the boundary Cast's value would be: kept apart
  const collide = encodeModel({
    opset: 17,
    nodes: [
      { opType: "Relu", inputs: ["x"], outputs: ["y"] },
      { opType: "Identity", inputs: ["x:bhsd_16"], outputs: ["z"] },
    ],
    inputs: [
      { name: "x", shape: [2], elemType: 10 },
      { name: "x:bhsd_16", shape: [2] },
    ],
    outputs: [{ name: "y", elemType: 10 }, { name: "z" }],
  });
  const m = await loadModel(collide);
  const out = await m.runAll({
    x: { data: Float32Array.of(1.0001, 2), shape: [2] },
    "x:bhsd_16": { data: Float32Array.of(7, 8), shape: [2] },
  });
  t.deepEqual(Array.from(out.z!.data), [7, 8]);
  t.deepEqual(Array.from(out.y!.data), [1, 2]);
});
