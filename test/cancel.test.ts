// Cancellation reaches into native calls (issue 18: "checked between windows/ops and in native
// loops"): an abort stops a convolution in flight at its next chunk, the run rejects with the
// signal's reason, other runs going on at the same time are not touched, and the model runs
// correctly afterwards (checked against onnxruntime in the same process).
import test from "ava";
import { loadModel, type Tensor } from "../lib/index.js";
import { availableBackends } from "../lib/backends/index.js";
import { encodeModel } from "../lib/model/onnx-proto.js";
import { ortRun, randomTensor, relDiff } from "./ort.js";

/** What a promise rejected with (an abort's reason is a DOMException, which ava's throwsAsync does not take). */
async function rejection(p: Promise<unknown>): Promise<{ name?: string } | undefined> {
  try {
    await p;
    return undefined;
  } catch (e) {
    return e as { name?: string };
  }
}

const hasNative = availableBackends().includes("native");
const C = 64;
const w = randomTensor([C, C, 3, 3, 3], 3);
// one wide convolution over a symbolic input: about 2·64·64·27 FLOP per voxel
const bytes = encodeModel({
  opset: 17,
  nodes: [{ opType: "Conv", name: "wide", inputs: ["x", "w"], outputs: ["y"], attrs: { pads: [1, 1, 1, 1, 1, 1] } }],
  inputs: [{ name: "x", shape: [1, C, "D", "H", "W"] }],
  outputs: [{ name: "y" }],
  initializers: [{ name: "w", dims: w.shape, data: w.data }],
});

(hasNative ? test.serial : test.serial.skip)(
  "native: an abort stops a convolution in flight, within a fraction of it; a run beside it and the next run are exact",
  async (t) => {
    const model = await loadModel(bytes, { backend: "native" });
    const big: Tensor = randomTensor([1, C, 40, 96, 96], 1); // 368,640 voxels: ~80 GFLOP direct, 0.05–2 s here
    // the first run plans the layer (times its paths) and transforms its weights: the run to cut
    // short is the planned one, several times faster with Winograd's F(4×4) tiles, so it is timed
    await model.run(big);
    const t0 = performance.now();
    await model.run(big);
    const full = performance.now() - t0;
    t.log(`the whole convolution: ${full.toFixed(0)} ms`);

    // abort 10% into the convolution; a small run starts beside it without a signal. Timing on a
    // loaded machine can betray one try (a spike while `full` was timed, or during the cut run), so
    // up to three tries are made: a convolution that only stops between nodes fails all three.
    const small: Tensor = randomTensor([1, C, 6, 10, 12], 2);
    let err: { name?: string } | undefined;
    let after = Infinity;
    let beside: Promise<Tensor> | undefined;
    for (let attempt = 0; attempt < 3; attempt++) {
      const ac = new AbortController();
      const started = performance.now();
      const cancelled = model.run(big, { signal: ac.signal });
      beside = model.run(small);
      let abortedAt = 0;
      setTimeout(() => ((abortedAt = performance.now()), ac.abort()), Math.max(5, full * 0.1));
      err = await rejection(cancelled);
      after = performance.now() - abortedAt;
      t.log(
        `try ${attempt + 1}: ${err?.name ?? "not rejected"} ${after.toFixed(0)} ms after the abort (${(performance.now() - started).toFixed(0)} ms after the start)`,
      );
      await beside;
      if (err?.name === "AbortError" && after < full * 0.5) break;
    }
    t.is(err?.name, "AbortError", String(err));
    // between nodes only (before), it ran to the end of the one node: ~90% of `full` after the abort
    t.true(after < full * 0.5, `rejected ${after.toFixed(0)} ms after the abort, the convolution takes ${full.toFixed(0)} ms`);

    const [ref] = await ortRun(
      "Conv",
      [
        { name: "x", tensor: small },
        { name: "w", tensor: w },
      ],
      { pads: [1, 1, 1, 1, 1, 1] },
    );
    const y1 = await beside!;
    t.true(relDiff(y1.data, ref!.data as Float32Array) < 1e-5, "the run beside the cancelled one");
    const y2 = await model.run(small);
    t.true(relDiff(y2.data, ref!.data as Float32Array) < 1e-5, "the next run after the cancelled one");
    // a signal aborted before the run: refused before any work
    t.is((await rejection(model.run(small, { signal: AbortSignal.abort() })))?.name, "AbortError");
  },
);
