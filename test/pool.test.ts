import test from "ava";
import ort from "onnxruntime-node";
import { activeBackend } from "../lib/backends/index.js";
import { encodeModel, loadModel, readNpy, setBackend } from "../lib/index.js";
import { Pool } from "../lib/model/pool.js";
import { backendsUnderTest, sharedFixture } from "./helpers.js";
import { randomTensor, relDiff } from "./ort.js";

test("Pool: a free buffer of the same length first, else the shortest up to 4× as long, as a view", (t) => {
  const pool = new Pool();
  const a = pool.take(1000);
  t.is(pool.liveBytes, 4000);
  pool.give(a);
  t.is(pool.liveBytes, 0);
  const v = pool.take(400); // 400 ≥ 1000 / 4: a's first 400 floats
  t.is(v.length, 400);
  t.is(v.buffer, a.buffer);
  t.is(v.byteOffset, a.byteOffset);
  t.is(pool.liveBytes, 4000, "a view counts its whole buffer");
  const w = pool.take(400); // nothing free now: a new buffer
  t.not(w.buffer, a.buffer);
  pool.give(v);
  t.is(pool.liveBytes, 1600);
  t.is(pool.take(1000), a, "the view's buffer is free again, whole");
  pool.give(a);
  t.not(pool.take(200).buffer, a.buffer, "200 < 1000 / 4: not served by a");
  t.not(pool.take(400, false).buffer, a.buffer, "fit: false takes a buffer of its own length");
});

test("Pool: the shortest fitting buffer, within the memory limit, and views coming back from the caller", (t) => {
  const pool = new Pool();
  const big = pool.take(4000),
    mid = pool.take(1500);
  pool.give(big);
  pool.give(mid);
  const v = pool.take(1000);
  t.is(v.buffer, mid.buffer, "1500 fits better than 4000");
  // a view handed back by a later run's caller (Model.recycle → stock) goes back as its buffer
  const next = new Pool();
  next.stock(v);
  t.is(next.take(1500), mid);
  // where holding the longer buffer would pass the limit, a buffer of the request's own length
  const limited = new Pool(8000);
  const x = limited.take(1600);
  limited.give(x);
  const y = limited.take(1000); // x (6400 B) fits the limit
  t.is(y.buffer, x.buffer);
  limited.give(y);
  const z = limited.take(800); // 3200 B live
  t.is(z.buffer, x.buffer);
  const u = limited.take(400); // x is held: a new one
  t.is(limited.liveBytes, 6400 + 1600);
  t.throws(() => limited.take(1), { message: /memoryLimit/ });
  limited.give(z);
  limited.give(u);
  t.is(limited.liveBytes, 0);
});

for (const { name } of backendsUnderTest()) {
  test.serial(
    `${name}: a model's runs reuse their buffers as views and give PyTorch's logits, each output a buffer of its own`,
    async (t) => {
      setBackend(name);
      const model = await loadModel(sharedFixture("onnx-plainunet", "plainunet.onnx"));
      const x = await readNpy(sharedFixture("onnx-plainunet", "input.npy"));
      const want = await readNpy(sharedFixture("onnx-plainunet", "expected.npy"));
      let first: Float32Array | undefined;
      // count the intermediates served as views of longer buffers (5 of the 15 in each run here)
      let views = 0;
      const take = Pool.prototype.take;
      Pool.prototype.take = function (this: Pool, n: number, fit?: boolean) {
        const a = take.call(this, n, fit);
        if (a.buffer.byteLength > a.byteLength) views++;
        return a;
      };
      t.teardown(() => void (Pool.prototype.take = take));
      for (let run = 0; run < 3; run++) {
        const y = await model.run({ data: x.data as Float32Array, shape: x.shape });
        t.true(relDiff(y.data, want.data) <= 1e-4, `run ${run}: ${relDiff(y.data, want.data)}`);
        t.is(y.data.byteOffset, 0);
        t.is(y.data.buffer.byteLength, y.data.byteLength, "the output is not a view of a longer buffer");
        if (first) t.deepEqual(y.data, first, `run ${run} gives run 0's floats`);
        else first = Float32Array.from(y.data);
      }
      if (name === "cuda") t.is(views, 0, "a GPU backend takes buffers of their own length");
      else t.true(views >= 3, `${views} views in 3 runs`);
    },
  );
}

/** Three 1×1×1 convolutions, then `last` (Identity or Reshape) as the output: a run's output that is an intermediate's array. */
function chainModel(last: "Identity" | "Reshape"): Uint8Array {
  const w = (name: string, dims: number[], seed: number) => ({ name, dims, data: randomTensor(dims, seed).data });
  const nodes = [
    { opType: "Conv", inputs: ["x", "w1", "b1"], outputs: ["h"], attrs: { kernel_shape: [1, 1, 1] } },
    { opType: "Conv", inputs: ["h", "w2", "b2"], outputs: ["k"], attrs: { kernel_shape: [1, 1, 1] } },
    { opType: "Conv", inputs: ["k", "w3", "b3"], outputs: ["g"], attrs: { kernel_shape: [1, 1, 1] } },
    last === "Identity"
      ? { opType: "Identity", inputs: ["g"], outputs: ["y"] }
      : { opType: "Reshape", inputs: ["g", "shape"], outputs: ["y"] },
  ];
  const initializers = [
    w("w1", [3, 1, 1, 1, 1], 1),
    w("b1", [3], 2),
    w("w2", [3, 3, 1, 1, 1], 3),
    w("b2", [3], 4),
    w("w3", [2, 3, 1, 1, 1], 5),
    w("b3", [2], 6),
    ...(last === "Reshape" ? [{ name: "shape", dims: [2], data: BigInt64Array.from([2n, -1n]) }] : []),
  ];
  return encodeModel({ opset: 17, nodes, inputs: [{ name: "x", shape: [1, 1, 32, 32, 32] }], outputs: [{ name: "y" }], initializers });
}

for (const { name } of backendsUnderTest()) {
  for (const last of ["Identity", "Reshape"] as const) {
    test.serial(`${name}: a run's output passed on through ${last} is onnxruntime's, in a buffer of its own`, async (t) => {
      setBackend(name);
      const bytes = chainModel(last);
      const model = await loadModel(bytes);
      const session = await ort.InferenceSession.create(bytes, { intraOpNumThreads: 1 });
      t.teardown(() => session.release());
      for (let run = 0; run < 3; run++) {
        const x = randomTensor([1, 1, 32, 32, 32], 10 + run);
        const y = await model.run(x);
        const want = (await session.run({ x: new ort.Tensor("float32", x.data, x.shape) })).y!.data as Float32Array;
        t.true(relDiff(y.data, want) <= 1e-5, `run ${run}: ${relDiff(y.data, want)}`);
        t.is(y.data.buffer.byteLength, y.data.byteLength, `run ${run}: the output is not a view of a longer buffer`);
      }
      model.dispose();
    });
  }
}

test.serial("a backend with device copies (forget): recycled outputs are handed to forget at the next run, not kept", async (t) => {
  setBackend("ts");
  const be = activeBackend() as { forget?: (a: Float32Array[]) => void };
  const forgotten: Float32Array[] = [];
  be.forget = (a) => void forgotten.push(...a);
  t.teardown(() => delete be.forget);
  const model = await loadModel(sharedFixture("onnx-plainunet", "plainunet.onnx"));
  const x = await readNpy(sharedFixture("onnx-plainunet", "input.npy"));
  const outputs: Float32Array[] = [];
  for (let run = 0; run < 5; run++) {
    const y = await model.run({ data: x.data as Float32Array, shape: x.shape });
    outputs.push(y.data);
    model.recycle(y.data); // as segment() does after each window
  }
  for (const o of outputs.slice(0, 4)) t.true(forgotten.includes(o), "each recycled output but the last was forgotten");
  t.true((model as unknown as { spare: Float32Array[] }).spare.length <= 1);
  model.dispose();
});

/**
 * The n-d functions' results from the run's pool (uncleared buffers from the run before): a
 * transformer's q/k/v split (Transpose with axes of 1 merged away, runs of 64 copied whole; Gather),
 * a head merge (Transpose, runs of 64) and a strided Transpose (runs of 1), an Einsum whose transposed
 * operand the pool lends for the call, and a float ConstantOfShape of zeros.
 */
function ndModel(): Uint8Array {
  const nodes = [
    { opType: "Transpose", inputs: ["x"], outputs: ["t1"], attrs: { perm: [2, 0, 3, 1, 4] } }, // [3, 1, 4, 40, 64]
    { opType: "Gather", inputs: ["t1", "one"], outputs: ["g"], attrs: { axis: 0 } }, // [1, 4, 40, 64]
    { opType: "Transpose", inputs: ["g"], outputs: ["t2"], attrs: { perm: [0, 2, 1, 3] } }, // [1, 40, 4, 64]
    { opType: "Transpose", inputs: ["t2"], outputs: ["t3"], attrs: { perm: [3, 1, 2, 0] } }, // [64, 40, 4, 1]
    { opType: "Shape", inputs: ["t3"], outputs: ["s3"] },
    { opType: "ConstantOfShape", inputs: ["s3"], outputs: ["z"] }, // float zeros (no value attribute)
    { opType: "Add", inputs: ["t3", "z"], outputs: ["y"] },
    { opType: "Einsum", inputs: ["g", "g"], outputs: ["att"], attrs: { equation: "bhxd,bhyd->bhxy" } }, // [1, 4, 40, 40]
    { opType: "Sigmoid", inputs: ["z"], outputs: ["half"] }, // 0.5 everywhere where z is zeros
  ];
  return encodeModel({
    opset: 17,
    nodes,
    inputs: [{ name: "x", shape: [1, 40, 3, 4, 64] }],
    outputs: [{ name: "y" }, { name: "att" }, { name: "half" }],
    initializers: [{ name: "one", dims: [], data: BigInt64Array.of(1n) }],
  });
}

for (const { name } of backendsUnderTest()) {
  test.serial(
    `${name}: Transpose, Gather, Einsum and ConstantOfShape results from the run's pool are onnxruntime's, run after run`,
    async (t) => {
      setBackend(name);
      const bytes = ndModel();
      const model = await loadModel(bytes);
      const session = await ort.InferenceSession.create(bytes, { intraOpNumThreads: 1 });
      t.teardown(() => session.release());
      for (let run = 0; run < 3; run++) {
        const x = randomTensor([1, 40, 3, 4, 64], 30 + run);
        const got = await model.runAll({ x });
        const want = await session.run({ x: new ort.Tensor("float32", x.data, x.shape) });
        for (const o of ["y", "att", "half"]) {
          const w = want[o]!.data as Float32Array;
          t.deepEqual(got[o]!.shape, [...want[o]!.dims], `run ${run}: ${o}'s shape`);
          t.true(relDiff(got[o]!.data, w) <= 1e-5, `run ${run}: ${o} differs by ${relDiff(got[o]!.data, w)}`);
        }
        t.true(
          got.half!.data.every((v) => v === 0.5),
          `run ${run}: ConstantOfShape's zeros, not an earlier run's values`,
        );
      }
      model.dispose();
    },
  );
}
