// What the service's limits rest on in the library: segment() checks every grid it derives against
// options.maxVoxels before allocating anything, and an AbortSignal stops segment() between windows
// and Model.run between nodes.
import test from "ava";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { loadModel, segment, volumeFromArray, type Model, type Tensor } from "../lib/index.js";
import { defaultConfig } from "../lib/model/config.js";
import { randomTensor } from "./ort.js";
import { pointwiseBytes } from "./server-helpers.js";

const dir = mkdtempSync(join(tmpdir(), "bhsd-cancel-"));

/** Three pointwise nodes, 1 → 4 → 4 → 2 channels. */
async function pointwiseModel(): Promise<Model> {
  const bytes = pointwiseBytes(2);
  const p = join(dir, "pw.onnx");
  writeFileSync(p, bytes);
  return loadModel(p);
}

/** A stand-in model that records its runs (two classes of logits, zeros). */
function fakeModel(config: Partial<ReturnType<typeof defaultConfig>>, onRun: (n: number) => void = () => {}) {
  let runs = 0;
  const m = {
    name: "fake",
    config: { ...defaultConfig(), classes: { "0": "background", "1": "x" }, ...config },
    lastRun: undefined,
    async run(x: Tensor): Promise<Tensor> {
      onRun(++runs);
      return { data: new Float32Array(2 * x.data.length), shape: [1, 2, ...x.shape.slice(2)] };
    },
  };
  return { model: m as unknown as Model, runs: () => runs };
}

test("segment refuses a resampled grid beyond maxVoxels before running the model", async (t) => {
  // 8 × 8 × 2 voxels claiming 300 mm in-plane and 300 mm slices: resampled to 1 mm it is
  // 2400 × 2400 × 600 voxels (the attack, scaled), checked from dims and spacing alone.
  const ct = volumeFromArray(new Int16Array(128), [2, 8, 8], [300, 300, 300]);
  const { model, runs } = fakeModel({ targetSpacing: [1, 1, 1], patchSize: [4, 8, 8] });
  const t0 = performance.now();
  const e = await t.throwsAsync(segment(ct, model, { maxVoxels: 1_000_000 }), { instanceOf: RangeError });
  t.regex(e!.message, /resampled/);
  t.regex(e!.message, /600 × 2400 × 2400 = 3456000000 voxels/);
  t.regex(e!.message, /options\.maxVoxels \(1000000\)/);
  t.is(runs(), 0);
  t.true(performance.now() - t0 < 2000);
});

test("segment refuses a padded grid beyond maxVoxels (a patch larger than the image)", async (t) => {
  const ct = volumeFromArray(new Int16Array(8), [2, 2, 2], [1, 1, 1]);
  const { model, runs } = fakeModel({ patchSize: [64, 64, 64] });
  const e = await t.throwsAsync(segment(ct, model, { maxVoxels: 100_000 }), { instanceOf: RangeError });
  t.regex(e!.message, /padded to a patch would be 64 × 64 × 64 = 262144 voxels/);
  t.is(runs(), 0);
  // within the limit it runs
  await t.notThrowsAsync(segment(ct, model, { maxVoxels: 262_144 }));
  t.true(runs() > 0);
});

test("segment's options.maxVoxels and options.signal are checked", async (t) => {
  const ct = volumeFromArray(new Int16Array(8), [2, 2, 2], [1, 1, 1]);
  const { model } = fakeModel({ patchSize: [2, 2, 2] });
  await t.throwsAsync(segment(ct, model, { maxVoxels: 0 }), { message: /options\.maxVoxels/ });
  await t.throwsAsync(segment(ct, model, { maxVoxels: "big" as never }), { message: /options\.maxVoxels/ });
  await t.throwsAsync(segment(ct, model, { signal: {} as never }), { message: /options\.signal/ });
});

test("an aborted signal stops segment between windows, with the signal's reason", async (t) => {
  // 8 × 32 × 32 with 4 × 8 × 8 patches at step 0.5: many windows; abort during the second.
  const ct = volumeFromArray(new Int16Array(8 * 32 * 32), [8, 32, 32], [1, 1, 1]);
  const ac = new AbortController();
  const reason = new Error("stop now");
  const { model, runs } = fakeModel({ patchSize: [4, 8, 8], stepSize: 0.5 }, (n) => n === 2 && ac.abort(reason));
  const e = await t.throwsAsync(segment(ct, model, { signal: ac.signal }));
  t.is(e, reason);
  t.is(runs(), 2); // no window after the abort
  // already aborted: not a single run
  const { model: m2, runs: r2 } = fakeModel({ patchSize: [4, 8, 8] });
  await t.throwsAsync(segment(ct, m2, { signal: AbortSignal.abort(reason) }), { is: reason });
  t.is(r2(), 0);
});

test("Model.run stops between nodes when its signal aborts", async (t) => {
  const m = await pointwiseModel();
  const x = randomTensor([1, 1, 8, 64, 64], 3);
  const full = await m.run(x);
  t.deepEqual(full.shape, [1, 2, 8, 64, 64]);
  const before = m.lastRun;
  const ac = new AbortController();
  const reason = new Error("cancelled");
  const p = m.run(x, { signal: ac.signal });
  ac.abort(reason); // the first node has started; the next may not
  await t.throwsAsync(p, { is: reason });
  t.is(m.lastRun, before, "the aborted run did not finish");
  await t.throwsAsync(m.run(x, { signal: AbortSignal.abort(reason) }), { is: reason });
  t.deepEqual((await m.run(x, { signal: new AbortController().signal })).data, full.data); // an unaborted signal changes nothing
});
