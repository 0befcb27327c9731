/**
 * The CUDA backend against the CPU: what only a GPU run can show. Runs where the cuda backend
 * loads (the device check, bench/device/run.sh); elsewhere each test is registered as skipped,
 * with the reason the backend gave.
 * References: PyTorch's logits for the fixture model (outside), and the native backend, itself
 * held to onnxruntime and scipy by the other test files.
 */
import test from "ava";
import { backendInfo, connectedComponents, evaluate, loadModel, readNpy, setBackend, volumeFromArray } from "../lib/index.js";
import { getBackend } from "../lib/backends/index.js";
import type { CudaBackend, CudaPrecision } from "../lib/backends/cuda.js";
import * as ops from "../lib/ops/tensor.js";
import type { Tensor } from "../lib/types.js";
import { sharedFixture } from "./helpers.js";
import { randomTensor, relDiff } from "./ort.js";

let cuda: CudaBackend | undefined;
let why = "";
try {
  cuda = getBackend("cuda") as CudaBackend;
} catch (e) {
  why = (e as Error).message.replace(/^.*not available: /, "");
}
const gpuTest = cuda ? test.serial : test.skip;
const title = (s: string) => (cuda ? `cuda: ${s}` : `cuda: ${s} (skipped: ${why})`);

async function withPrecision<T>(p: CudaPrecision, fn: () => Promise<T>): Promise<T> {
  const before = cuda!.precision;
  cuda!.precision = p;
  try {
    return await fn();
  } finally {
    cuda!.precision = before;
  }
}

async function on<T>(name: "cuda" | "native", fn: () => Promise<T>): Promise<T> {
  setBackend(name);
  try {
    return await fn();
  } finally {
    setBackend("native");
  }
}

// Stated tolerances, relative to the output's largest magnitude, for a 3×3×3 convolution over
// 32 channels (K = 864): TF32 keeps 10 mantissa bits, fp16 10 with a narrower range, bf16 7.
const TOL: Record<CudaPrecision, number> = { fp32: 1e-5, tf32: 5e-3, fp16: 5e-3, bf16: 3e-2 };

for (const p of ["fp32", "tf32", "fp16", "bf16"] as CudaPrecision[]) {
  gpuTest(title(`conv3d in ${p} is within ${TOL[p]} of the native fp32 result`), async (t) => {
    for (const [C, Co, D, H, W, stride, pad, dil, groups, kd, kh, kw] of [
      [1, 32, 12, 40, 40, 1, 1, 1, 1, 3, 3, 3],
      [32, 32, 8, 24, 20, 1, 1, 1, 1, 3, 3, 3],
      [32, 64, 9, 17, 23, 2, 1, 1, 1, 3, 3, 3],
      [16, 24, 6, 10, 14, 1, 2, 2, 2, 3, 3, 3],
      [64, 70, 4, 8, 8, 1, 0, 1, 1, 3, 3, 3],
      [12, 40, 3, 9, 70, 1, 1, 1, 2, 1, 3, 3],
      [48, 6, 5, 7, 33, 1, 0, 1, 1, 1, 1, 1],
      [20, 36, 3, 5, 6, 1, 1, 1, 1, 3, 3, 3],
    ] as number[][]) {
      const x = randomTensor([1, C!, D!, H!, W!], 11);
      const w = randomTensor([Co!, C! / groups!, kd!, kh!, kw!], 12);
      const b = randomTensor([Co!], 13);
      const padding = kd === 1 ? ([0, kh === 1 ? 0 : pad!, kw === 1 ? 0 : pad!] as [number, number, number]) : pad!;
      const opts = { stride: stride!, padding, dilation: dil!, groups: groups!, activation: "leakyRelu" as const, alpha: 0.01 };
      const want = await on("native", () => ops.conv3d(x, w, b, opts));
      const got = await on("cuda", () => withPrecision(p, () => ops.conv3d(x, w, b, opts)));
      t.deepEqual(got.shape, want.shape);
      const d = relDiff(got.data, want.data);
      t.true(d <= TOL[p], `${p} C=${C} Co=${Co} k=${kd}×${kh}×${kw} s=${stride} p=${pad} d=${dil} g=${groups}: ${d}`);
    }
  });
}

for (const p of ["fp32", "tf32", "fp16", "bf16"] as CudaPrecision[]) {
  gpuTest(title(`convTranspose3d in ${p} is within ${TOL[p]} of the native fp32 result (upsampling and general)`), async (t) => {
    for (const [C, Cog, D, H, W, k, s, groups, pad, outPad] of [
      [64, 32, 4, 9, 21, [1, 2, 2], [1, 2, 2], 1, 0, 0],
      [40, 24, 3, 5, 6, [2, 2, 2], [2, 2, 2], 1, 0, 0],
      [16, 10, 3, 4, 37, [2, 2, 2], [2, 2, 2], 2, 0, 0],
      [12, 8, 3, 5, 6, [3, 3, 3], [2, 2, 2], 1, 1, 1],
    ] as [number, number, number, number, number, number[], number[], number, number, number][]) {
      const x = randomTensor([1, C, D, H, W], 21);
      const w = randomTensor([C, Cog, ...k], 22);
      const b = randomTensor([Cog * groups], 23);
      const opts = { stride: s as [number, number, number], groups, padding: pad, outputPadding: outPad };
      const want = await on("native", () => ops.convTranspose3d(x, w, b, opts));
      const got = await on("cuda", () => withPrecision(p, () => ops.convTranspose3d(x, w, b, opts)));
      t.deepEqual(got.shape, want.shape);
      const d = relDiff(got.data, want.data);
      t.true(d <= TOL[p], `${p} C=${C} Cog=${Cog} k=${k} s=${s} g=${groups}: ${d}`);
    }
  });
}

gpuTest(
  title("the fixture model's labels in TF32 agree with PyTorch's on at least 99.9 % of voxels; fp32 logits within 1e-4"),
  async (t) => {
    const model = await loadModel(sharedFixture("onnx-plainunet", "plainunet.onnx"));
    for (const [input, expected] of [
      ["input.npy", "expected.npy"],
      ["input_1.npy", "expected_1.npy"],
    ]) {
      const x = await readNpy(sharedFixture("onnx-plainunet", input));
      const want = await readNpy(sharedFixture("onnx-plainunet", expected));
      const xt: Tensor = { data: x.data as Float32Array, shape: x.shape };
      const wantLabels = await on("native", () => ops.argmax({ data: want.data as Float32Array, shape: want.shape }, { axis: 1 }));
      for (const p of ["fp32", "tf32", "fp16", "bf16"] as CudaPrecision[]) {
        const y = await on("cuda", () => withPrecision(p, () => model.run(xt)));
        const labels = await on("native", () => ops.argmax(y, { axis: 1 }));
        let same = 0;
        for (let i = 0; i < labels.data.length; i++) same += labels.data[i] === wantLabels.data[i] ? 1 : 0;
        const agree = same / labels.data.length;
        const d = relDiff(y.data, want.data as Float32Array);
        t.log(`${input} ${p}: logits max rel diff ${d.toExponential(2)}, labels agree ${(agree * 100).toFixed(3)} %`);
        if (p === "fp32") t.true(d <= 1e-4, `fp32 ${d}`);
        if (p === "tf32") t.true(agree >= 0.999, `tf32 agreement ${agree}`);
        t.true(agree >= 0.99, `${p} agreement ${agree}`);
      }
    }
  },
);

gpuTest(title("a resident forward frees every device buffer but the model's weights"), async (t) => {
  const model = await loadModel(sharedFixture("onnx-plainunet", "plainunet.onnx"));
  const x = await readNpy(sharedFixture("onnx-plainunet", "input.npy"));
  const xt: Tensor = { data: x.data as Float32Array, shape: x.shape };
  await on("cuda", () => model.run(xt)); // weights go up once
  const before = cuda!.memory().live;
  const y1 = await on("cuda", () => model.run(xt));
  const after = cuda!.memory().live;
  t.is(after, before, "live device bytes after a second run");
  const y2 = await on("cuda", () => model.run(xt));
  t.deepEqual(Array.from(y1.data.subarray(0, 64)), Array.from(y2.data.subarray(0, 64)));
});

gpuTest(title("components equal native's on random masks, every connectivity, per class or not"), async (t) => {
  const native = getBackend("native");
  let seed = 1;
  const rnd = () => (seed = (seed * 1103515245 + 12345) >>> 0) / 2 ** 32;
  for (const dims of [
    [1, 1, 1],
    [7, 5, 3],
    [33, 17, 9],
    [64, 64, 16],
    [130, 70, 5],
  ] as [number, number, number][]) {
    for (const density of [0.1, 0.35, 0.6]) {
      const n = dims[0] * dims[1] * dims[2];
      const mask = Uint8Array.from({ length: n }, () => (rnd() < density ? 1 + Math.floor(rnd() * 3) : 0));
      for (const conn of [6, 18, 26] as const)
        for (const perClass of [false, true]) {
          const a = new Int32Array(n),
            b = new Int32Array(n);
          const ca = await cuda!.connectedComponents(mask, dims, conn, perClass, a);
          const cb = await native.connectedComponents(mask, dims, conn, perClass, b);
          t.is(ca, cb, `count ${dims} ${density} ${conn} ${perClass}`);
          let diff = 0;
          for (let i = 0; i < n; i++) diff += a[i] !== b[i] ? 1 : 0;
          t.is(diff, 0, `labels ${dims} ${density} ${conn} ${perClass}`);
        }
    }
  }
});

gpuTest(title("components on the scipy fixtures give scipy's labels"), async (t) => {
  for (const [name, conn] of [
    ["blobs", 6],
    ["blobs", 18],
    ["blobs", 26],
    ["noise", 6],
    ["noise", 26],
  ] as [string, 6 | 18 | 26][]) {
    const mask = await readNpy(sharedFixture("voxel", `ccl_${name}_mask.npy`));
    const want = await readNpy(sharedFixture("voxel", `ccl_${name}_labels${conn}.npy`));
    const [z, y, x] = mask.shape as [number, number, number];
    const vol = volumeFromArray(mask.data as Uint8Array, [z, y, x], [1, 1, 1]);
    const r = await on("cuda", () => connectedComponents(vol, { connectivity: conn }));
    let diff = 0;
    for (let i = 0; i < want.data.length; i++) diff += r.labels.data[i] !== Number(want.data[i]) ? 1 : 0;
    t.is(diff, 0, `${name} ${conn}`);
  }
});

gpuTest(title("evaluate equals native's on the fixture pairs and on random pairs (every number)"), async (t) => {
  const pairs: [Uint8Array, Uint8Array, [number, number, number]][] = [];
  for (const k of [0, 1]) {
    const g = await readNpy(sharedFixture("voxel", `metrics_${k}_gt.npy`));
    const p = await readNpy(sharedFixture("voxel", `metrics_${k}_pred.npy`));
    pairs.push([g.data as Uint8Array, p.data as Uint8Array, g.shape as [number, number, number]]);
  }
  let seed = 7;
  const rnd = () => (seed = (seed * 1103515245 + 12345) >>> 0) / 2 ** 32;
  for (const shape of [
    [6, 40, 50],
    [1, 30, 30],
    [12, 64, 64],
  ] as [number, number, number][]) {
    const n = shape[0] * shape[1] * shape[2];
    const blob = (cx: number) =>
      Uint8Array.from({ length: n }, (_, i) => {
        const x = i % shape[2],
          y = Math.floor(i / shape[2]) % shape[1];
        return Math.hypot(x - cx, y - shape[1] / 2) < shape[1] / 4 + rnd() * 3 ? 1 + Math.floor(rnd() * 2) : 0;
      });
    pairs.push([blob(shape[2] / 2), blob(shape[2] / 2 + 3), shape]);
  }
  for (const [g, p, shape] of pairs) {
    const gt = volumeFromArray(g, shape, [5, 0.488, 0.488]);
    const pred = volumeFromArray(p, shape, [5, 0.488, 0.488]);
    const a = await on("cuda", () => evaluate(gt, pred));
    const b = await on("native", () => evaluate(gt, pred));
    t.deepEqual(
      JSON.parse(JSON.stringify(a, (_k, v) => (typeof v === "number" && !Number.isFinite(v) ? String(v) : v))),
      JSON.parse(JSON.stringify(b, (_k, v) => (typeof v === "number" && !Number.isFinite(v) ? String(v) : v))),
    );
  }
});

gpuTest(title("bad device calls are JS errors, and the backend keeps working after them"), async (t) => {
  const addon = cuda!.addon;
  t.throws(() => addon.softmax(999999, 1, 2, 3, 999998), { message: /not a live device buffer/ });
  const id = addon.alloc(16);
  t.throws(() => addon.softmax(id, 1, 2, 3, id), { message: /holds 4 floats; the shapes need 6/ });
  addon.free(id);
  t.throws(() => addon.alloc(2 ** 50), { message: /out of range|cannot allocate/ });
  const y = await on("cuda", () => ops.softmax({ data: Float32Array.of(1, 2, 3, 4), shape: [1, 2, 2] }, { axis: 1 }));
  t.true(Math.abs(y.data[0]! + y.data[2]! - 1) < 1e-6);
  t.is(backendInfo().available.cuda, true);
});
