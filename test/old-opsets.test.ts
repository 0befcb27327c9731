/**
 * Opsets 11 and 12: MONAI's networks of test/fixtures/networks exported by PyTorch 1.13 at those
 * opsets (test/fixtures/old-opsets/make_fixtures.py builds them with the networks' own seeds, so
 * PyTorch's output is test/fixtures/networks/<name>_expected.npy). bhsd must give it, as
 * onnxruntime does; and the ops whose meaning changed at 13 — Softmax and LogSoftmax, which took
 * their input as 2-D at the axis — must equal onnxruntime at 11 on an axis that is not the last.
 */
import test from "ava";
import { join } from "node:path";
import ort from "onnxruntime-node";
import { loadModel, readNpy, setBackend } from "../lib/index.js";
import { encodeModel } from "../lib/model/onnx-proto.js";
import { backendsUnderTest, ROOT } from "./helpers.js";
import { checkedFolder, networkFixture } from "./paths.js";
import { ortRun, randomTensor, relDiff, scaleDiff } from "./ort.js";

const { file: fixture, listed } = checkedFolder(join(ROOT, "test", "fixtures", "old-opsets"));
const network = networkFixture;

const FILES = [...listed].sort();

test("the fixtures: every MONAI network at opsets 11 and 12 (UNETR at 12: Einsum came then)", (t) => {
  t.deepEqual(
    FILES,
    ["attentionunet", "basicunet", "dynunet", "monaiunet", "segresnet"]
      .flatMap((n) => [`${n}_op11.onnx`, `${n}_op12.onnx`])
      .concat("unetr_op12.onnx")
      .sort(),
  );
});

for (const file of FILES) {
  const name = file.replace(/_op\d+\.onnx$/, "");
  test(`onnxruntime-node: ${file} equals PyTorch (fixture check)`, async (t) => {
    const x = await readNpy(network(`${name}_input.npy`)),
      want = await readNpy(network(`${name}_expected.npy`));
    const session = await ort.InferenceSession.create(fixture(file), { intraOpNumThreads: 1 });
    try {
      const o = (await session.run({ input: new ort.Tensor("float32", x.data as Float32Array, x.shape) })).output!;
      t.true(scaleDiff(o.data as Float32Array, want.data) <= 1e-4);
    } finally {
      await session.release();
    }
  });
  for (const { name: backend } of backendsUnderTest())
    test.serial(`${backend}: ${file} equals PyTorch`, async (t) => {
      setBackend(backend);
      const x = await readNpy(network(`${name}_input.npy`)),
        want = await readNpy(network(`${name}_expected.npy`));
      const y = await (await loadModel(fixture(file))).run({ data: x.data as Float32Array, shape: x.shape });
      t.deepEqual(y.shape, want.shape);
      const d = scaleDiff(y.data, want.data);
      t.true(d <= 1e-4, `max |bhsd − PyTorch| is ${d} of max |PyTorch|`);
    });
}

for (const { name: backend } of backendsUnderTest())
  test.serial(`${backend}: Softmax and LogSoftmax before opset 13 take the input as 2-D at the axis, as onnxruntime does`, async (t) => {
    setBackend(backend);
    const x = randomTensor([2, 3, 4, 5], 41);
    for (const op of ["Softmax", "LogSoftmax"])
      for (const [opset, attrs] of [
        [11, {}],
        [11, { axis: 2 }],
        [12, { axis: -3 }],
        [11, { axis: 3 }],
        [13, { axis: 1 }],
      ] as const) {
        const [want] = await ortRun(op, [{ name: "x", tensor: x }], attrs, opset);
        const bytes = encodeModel({
          opset,
          nodes: [{ opType: op, inputs: ["x"], outputs: ["y0"], attrs }],
          inputs: [{ name: "x", shape: x.shape }],
          outputs: [{ name: "y0" }],
        });
        const y = await (await loadModel(bytes)).run(x);
        t.deepEqual(y.shape, x.shape);
        t.true(relDiff(y.data, want!.data as Float32Array) <= 1e-6, `${op} at opset ${opset}, ${JSON.stringify(attrs)}`);
      }
  });

test("Dropout's ratio attribute (opsets before 12) is read and ignored at inference, as onnxruntime does", async (t) => {
  const x = randomTensor([2, 3], 42);
  const [want] = await ortRun("Dropout", [{ name: "x", tensor: x }], { ratio: 0.3 }, 11);
  const bytes = encodeModel({
    opset: 11,
    nodes: [{ opType: "Dropout", inputs: ["x"], outputs: ["y0"], attrs: { ratio: 0.3 } }],
    inputs: [{ name: "x", shape: x.shape }],
    outputs: [{ name: "y0" }],
  });
  t.deepEqual([...(await (await loadModel(bytes)).run(x)).data], [...(want!.data as Float32Array)]);
});

test("opset 10 is refused, naming the opsets bhsd runs", async (t) => {
  const bytes = encodeModel({
    opset: 10,
    nodes: [{ opType: "Relu", inputs: ["x"], outputs: ["y"] }],
    inputs: [{ name: "x", shape: [2] }],
    outputs: [{ name: "y" }],
  });
  await t.throwsAsync(loadModel(bytes), { message: /opset 10 is not supported \(bhsd runs opsets 11 to 25;/ });
});
