// segment()'s softmax of window sums by their weights in one native pass (softmaxDivided), against
// onnxruntime's Div → Softmax and, float for float, against dividing into a Float32Array first.
import test from "ava";
import ort from "onnxruntime-node";
import { activeBackend } from "../lib/backends/index.js";
import { encodeModel, setBackend } from "../lib/index.js";
import { randomTensor } from "./ort.js";

test("native: softmaxDivided is onnxruntime's Div → Softmax, and the same floats as dividing first", async (t) => {
  setBackend("native");
  const be = activeBackend();
  if (!be.softmaxDivided) return t.fail("the native addon has no softmaxDivided");
  const C = 6,
    S = 4099; // a tail of 3 voxels after the groups of 4
  const x = randomTensor([1, C, S], 3).data.map((v) => v * 300); // window sums: logits × weights
  const w = randomTensor([1, 1, S], 4).data.map((v) => 1.5 + v); // weights in (0.5, 2.5)
  const bytes = encodeModel({
    opset: 17,
    nodes: [
      { opType: "Div", inputs: ["x", "w"], outputs: ["q"] },
      { opType: "Softmax", inputs: ["q"], outputs: ["y"], attrs: { axis: 1 } },
    ],
    inputs: [
      { name: "x", shape: [1, C, S] },
      { name: "w", shape: [1, 1, S] },
    ],
    outputs: [{ name: "y" }],
    initializers: [],
  });
  const session = await ort.InferenceSession.create(bytes, { intraOpNumThreads: 1 });
  t.teardown(() => session.release());
  const want = (await session.run({ x: new ort.Tensor("float32", x, [1, C, S]), w: new ort.Tensor("float32", w, [1, 1, S]) })).y!
    .data as Float32Array;
  const got = new Float32Array(C * S);
  await be.softmaxDivided(x, w, 1, C, S, got);
  let worst = 0;
  for (let i = 0; i < got.length; i++) worst = Math.max(worst, Math.abs(got[i]! - want[i]!));
  t.true(worst <= 1e-6, `largest difference from onnxruntime ${worst}`);
  // dividing into a Float32Array, then the softmax: the same floats; in place too
  const q = new Float32Array(C * S);
  for (let c = 0; c < C; c++) for (let i = 0; i < S; i++) q[c * S + i] = x[c * S + i]! / w[i]!;
  const twoStep = new Float32Array(C * S);
  await be.softmax(q, 1, C, S, twoStep);
  t.deepEqual(got, twoStep);
  const inPlace = Float32Array.from(x);
  await be.softmaxDivided(inPlace, w, 1, C, S, inPlace);
  t.deepEqual(inPlace, twoStep);
  // the divisors transferred away while the call runs: the right answer or an error, never a crash
  const w2 = Float32Array.from(w),
    out2 = new Float32Array(C * S);
  const running = be.softmaxDivided(x, w2, 1, C, S, out2);
  structuredClone(w2.buffer, { transfer: [w2.buffer] });
  const settled = await running.then(
    () => "done",
    (e: Error) => e.message,
  );
  if (settled === "done") t.deepEqual(out2, twoStep);
  else t.regex(settled, /detached|resized|lost/);
  // wrong lengths are refused, naming the argument
  await t.throwsAsync(async () => be.softmaxDivided!(x, w.subarray(1), 1, C, S, got), { message: /div/ });
});
