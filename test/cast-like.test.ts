/**
 * CastLike (as PyTorch's dynamo exporter writes it): a Cast to its second input's type. Each small
 * graph runs in onnxruntime-node and in bhsd on every backend; bhsd must give onnxruntime's output
 * where the target's type is declared, made by an op, an initializer's or unknown but float, and
 * refuse, naming the node, a target that is an integer of unknown width.
 */
import test from "ava";
import ort from "onnxruntime-node";
import { loadModel, setBackend } from "../lib/index.js";
import { encodeModel, ONNX_DTYPE } from "../lib/model/onnx-proto.js";
import { backendsUnderTest } from "./helpers.js";
import { randomTensor } from "./ort.js";

const X = randomTensor([2, 3, 5], 31);
const SCALE = { name: "s", dims: [], data: new Float32Array([100.7]) };

/** x·100.7 cast like `like`, then back to float (so both engines hand back floats). */
function graph(
  likeNodes: { opType: string; inputs: string[]; outputs: string[]; attrs?: Record<string, number | number[]> }[],
  like: string,
  initializers: { name: string; dims: number[]; data: BigInt64Array; dataType: number }[] = [],
) {
  return encodeModel({
    opset: 17,
    nodes: [
      { opType: "Mul", inputs: ["x", "s"], outputs: ["big"] },
      ...likeNodes,
      { opType: "CastLike", inputs: ["big", like], outputs: ["c"], name: "the_cast" },
      { opType: "Cast", inputs: ["c"], outputs: ["y"], attrs: { to: ONNX_DTYPE.FLOAT } },
    ],
    inputs: [{ name: "x", shape: X.shape }],
    outputs: [{ name: "y", shape: X.shape }],
    initializers: [SCALE, { name: "i32", dims: [1], data: new Int32Array([1]), dataType: ONNX_DTYPE.INT32 }, ...initializers],
  });
}
const i64 = (name: string, v: bigint) => ({ name, dims: [1], data: new BigInt64Array([v]), dataType: ONNX_DTYPE.INT64 });

const CASES: [string, Uint8Array][] = [
  ["an int32 initializer", graph([], "i32")],
  ["Shape's int64", graph([{ opType: "Shape", inputs: ["x"], outputs: ["sh"] }], "sh")],
  ["a comparison's bool", graph([{ opType: "Greater", inputs: ["x", "s"], outputs: ["b"] }], "b")],
  ["the float input", graph([], "x")],
  ["a float through an op that keeps its type (Sigmoid's)", graph([{ opType: "Sigmoid", inputs: ["x"], outputs: ["sg"] }], "sg")],
  [
    "int64 through ops that keep their input's type",
    graph(
      [
        { opType: "Shape", inputs: ["x"], outputs: ["sh"] },
        { opType: "Concat", inputs: ["sh", "sh"], outputs: ["cc"], attrs: { axis: 0 } },
        { opType: "Slice", inputs: ["cc", "st", "en"], outputs: ["sl"] },
      ],
      "sl",
      [i64("st", 1n), i64("en", 4n)],
    ),
  ],
];

async function ortOut(bytes: Uint8Array): Promise<Float32Array> {
  const session = await ort.InferenceSession.create(bytes, { intraOpNumThreads: 1, logSeverityLevel: 3 });
  try {
    return (await session.run({ x: new ort.Tensor("float32", X.data, X.shape) })).y!.data as Float32Array;
  } finally {
    await session.release();
  }
}

for (const [what, bytes] of CASES) {
  for (const { name: backend } of backendsUnderTest())
    test.serial(`${backend}: CastLike to ${what} equals onnxruntime`, async (t) => {
      setBackend(backend);
      const want = await ortOut(bytes);
      const y = await (await loadModel(bytes)).run(X);
      t.deepEqual([...y.data], [...want]);
      if (what.includes("float"))
        t.true(
          want.some((v) => !Number.isInteger(v)),
          "a float target keeps fractions",
        );
      else t.true(want.every((v) => Number.isInteger(v)) && want.some((v) => v !== 0), "an integer target truncates");
    });
}

test.serial("CastLike to an integer tensor of unknown width is refused at run time, naming the node", async (t) => {
  setBackend("ts");
  // Shape's int64 through six Negs listed last to first: the type rules follow a chain four ops
  // along, so sg's type stays unknown at load, and its value is an integer
  const bytes = graph(
    [
      { opType: "Neg", inputs: ["n5"], outputs: ["sg"] },
      { opType: "Neg", inputs: ["n4"], outputs: ["n5"] },
      { opType: "Neg", inputs: ["n3"], outputs: ["n4"] },
      { opType: "Neg", inputs: ["n2"], outputs: ["n3"] },
      { opType: "Neg", inputs: ["n1"], outputs: ["n2"] },
      { opType: "Neg", inputs: ["sh"], outputs: ["n1"] },
      { opType: "Shape", inputs: ["x"], outputs: ["sh"] },
    ],
    "sg",
  );
  t.true(
    (await ortOut(bytes)).every((v) => Number.isInteger(v)),
    "onnxruntime casts to the int64 it knows",
  );
  const model = await loadModel(bytes);
  await t.throwsAsync(model.run(X), {
    message: /CastLike the_cast: its target sg is an integer tensor whose width the model does not declare/,
  });
});
