// segment()'s softmax of window sums by their weights in one native pass (softmaxDivided), against
// onnxruntime's Div → Softmax and, float for float, against dividing into a Float32Array first.
import test from "ava";
import ort from "onnxruntime-node";
import { activeBackend } from "../lib/backends/index.js";
import { encodeModel, setBackend } from "../lib/index.js";
import { allocArray } from "../lib/volume.js";
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
  // the divisors (engine memory, as segment() has them) transferred away while a call too big to
  // run inline (over 16 MB of work) runs: the right answer or an error, never a crash
  const S2 = 1 << 18;
  const x2 = allocArray("float32", C * S2) as Float32Array,
    w2 = allocArray("float32", S2) as Float32Array,
    out2 = new Float32Array(C * S2);
  for (let i = 0; i < x2.length; i++) x2[i] = x[i % x.length]!;
  for (let i = 0; i < S2; i++) w2[i] = w[i % S]!;
  const q2 = new Float32Array(C * S2);
  for (let c = 0; c < C; c++) for (let i = 0; i < S2; i++) q2[c * S2 + i] = x2[c * S2 + i]! / w2[i]!;
  const want2 = new Float32Array(C * S2);
  await be.softmax(q2, 1, C, S2, want2);
  const running = be.softmaxDivided(x2, w2, 1, C, S2, out2);
  let transferred = true;
  try {
    structuredClone(w2.buffer, { transfer: [w2.buffer] });
  } catch {
    transferred = false; // (a buffer the engine keeps from being transferred)
  }
  const settled = await running.then(
    () => "done",
    (e: Error) => e.message,
  );
  t.log(`divisors transferred mid-call: ${transferred}; the call: ${settled}`);
  if (settled === "done") t.deepEqual(out2, want2);
  else t.regex(settled, /detached|resized|lost/);
  // div inside out (in place, as segment() calls it, with the divisors in the same array) is
  // refused, in JavaScript memory (copied at the call) and in engine memory (used in place)
  for (const both of [new Float32Array(C * S + S), allocArray("float32", C * S + S) as Float32Array]) {
    const xy = both.subarray(0, C * S);
    await t.throwsAsync(async () => be.softmaxDivided!(xy, both.subarray(C * S - 1, C * S - 1 + S), 1, C, S, xy), {
      message: /overlaps/,
    });
  }
  // wrong lengths are refused, naming the argument
  await t.throwsAsync(async () => be.softmaxDivided!(x, w.subarray(1), 1, C, S, got), { message: /div/ });
});
