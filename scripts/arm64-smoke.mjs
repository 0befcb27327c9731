// The linux-arm64 prebuild's checks, run by scripts/test-arm64.mjs inside an arm64 Node under
// qemu-aarch64 (`node --import tsx scripts/arm64-smoke.mjs`, BHSD_NATIVE_BINARY set to the prebuild).
// One process, no child processes: without binfmt_misc an emulated Node cannot start another (so
// ava, which forks a process per test file, cannot run here). The reference is onnxruntime-node's
// own linux-arm64 build in the same process (one-node graphs, as test/tensor.test.ts) and scipy's
// labellings (shared fixtures, as test/components.test.ts) — never the addon's own output.
// Ends with "N passed, N failed"; exits non-zero on any failure.
import { readFileSync } from "node:fs";
import { join } from "node:path";
import ort from "onnxruntime-node";
import {
  backendInfo,
  connectedComponents,
  conv3d,
  convTranspose3d,
  loadModel,
  maxPool3d,
  avgPool3d,
  readNpy,
  setBackend,
  volumeFromArray,
} from "../lib/index.ts";
import { ortRun, randomTensor, relDiff } from "../test/ort.ts";
import { ROOT, sharedFixture } from "../test/paths.ts";

let passed = 0,
  failed = 0;
const check = (what, ok, detail = "") => {
  if (ok) passed++;
  else failed++;
  console.log(`${ok ? "ok" : "not ok"} - ${what}${ok || !detail ? "" : `\n  ${detail}`}`);
};
const TOL = 1e-4;
const step = async (what, fn) => {
  try {
    await fn();
  } catch (e) {
    check(what, false, e instanceof Error ? e.stack : String(e));
  }
};

await step("the arm64 prebuild loads", async () => {
  const info = backendInfo();
  check(`process.arch is arm64 (${process.arch})`, process.arch === "arm64");
  check("the native backend is available", info.available.native, info.reasons.native);
  const d = info.details.native;
  check(`the addon loaded is ${process.env.BHSD_NATIVE_BINARY}`, d?.binary === process.env.BHSD_NATIVE_BINARY, JSON.stringify(d));
  check(`its kernels are NEON (simd: ${d?.simd})`, d?.simd === "neon");
  setBackend("native");
});

// conv3d through each path the dispatcher has on AArch64 (packed panels + the NEON kernel, staged
// partial tiles): Co not a multiple of 6, > 48 outputs, strides, dilation, groups, 1×1×1, long K.
const convCases = [
  { x: [1, 3, 5, 7, 19], w: [7, 3, 3, 3, 3], pads: [1, 1, 1, 1, 1, 1], bias: true },
  { x: [2, 4, 6, 9, 33], w: [13, 4, 3, 3, 3], strides: [2, 2, 2], pads: [1, 1, 1, 1, 1, 1], bias: true },
  { x: [1, 2, 6, 8, 17], w: [6, 2, 3, 3, 3], dilations: [2, 2, 2], pads: [2, 2, 2, 2, 2, 2] },
  { x: [1, 4, 3, 12, 12], w: [8, 4, 1, 3, 3], pads: [0, 1, 1, 0, 1, 1], bias: true },
  { x: [1, 6, 4, 7, 9], w: [4, 3, 3, 3, 3], group: 2, pads: [1, 0, 1, 1, 2, 0], bias: true },
  { x: [1, 3, 4, 5, 37], w: [50, 3, 3, 3, 3], pads: [1, 1, 1, 1, 1, 1], bias: true },
  { x: [1, 40, 3, 3, 3], w: [5, 40, 3, 3, 3] },
  { x: [1, 32, 4, 6, 20], w: [32, 32, 3, 3, 3], pads: [1, 1, 1, 1, 1, 1], bias: true },
  { x: [1, 8, 5, 6, 7], w: [6, 8, 1, 1, 1], bias: true },
];
for (const [i, c] of convCases.entries()) {
  await step(`conv3d case ${i}`, async () => {
    const x = randomTensor(c.x, 10 + i),
      w = randomTensor(c.w, 20 + i),
      b = randomTensor([c.w[0]], 30 + i);
    const attrs = { kernel_shape: c.w.slice(2) };
    if (c.strides) attrs.strides = c.strides;
    if (c.pads) attrs.pads = c.pads;
    if (c.dilations) attrs.dilations = c.dilations;
    if (c.group) attrs.group = c.group;
    const [ref] = await ortRun(
      "Conv",
      [
        { name: "x", tensor: x },
        { name: "w", init: { dims: w.shape, data: w.data } },
        ...(c.bias ? [{ name: "b", init: { dims: b.shape, data: b.data } }] : []),
      ],
      attrs,
    );
    const got = await conv3d(x, w, c.bias ? b : null, {
      ...(c.strides ? { stride: c.strides } : {}),
      ...(c.pads ? { padding: c.pads } : {}),
      ...(c.dilations ? { dilation: c.dilations } : {}),
      groups: c.group ?? 1,
    });
    const d = relDiff(got.data, ref.data);
    check(
      `conv3d case ${i} (x ${c.x}, w ${c.w}) equals onnxruntime: max relative difference ${d.toExponential(2)}`,
      JSON.stringify(got.shape) === JSON.stringify(ref.shape) && d <= TOL,
    );
  });
}

const convTCases = [
  { x: [1, 8, 3, 4, 5], w: [8, 4, 2, 2, 2], strides: [2, 2, 2] },
  { x: [1, 4, 3, 3, 4], w: [4, 5, 3, 3, 3], strides: [2, 2, 2], pads: [1, 1, 1, 1, 1, 1], outPad: [1, 1, 1] },
  { x: [1, 16, 4, 8, 21], w: [16, 8, 1, 2, 2], strides: [1, 2, 2] },
];
for (const [i, c] of convTCases.entries()) {
  await step(`convTranspose3d case ${i}`, async () => {
    const x = randomTensor(c.x, 40 + i),
      w = randomTensor(c.w, 50 + i),
      b = randomTensor([c.w[1]], 60 + i);
    const attrs = { kernel_shape: c.w.slice(2), strides: c.strides };
    if (c.pads) attrs.pads = c.pads;
    if (c.outPad) attrs.output_padding = c.outPad;
    const [ref] = await ortRun(
      "ConvTranspose",
      [
        { name: "x", tensor: x },
        { name: "w", init: { dims: w.shape, data: w.data } },
        { name: "b", init: { dims: b.shape, data: b.data } },
      ],
      attrs,
    );
    const got = await convTranspose3d(x, w, b, {
      stride: c.strides,
      ...(c.pads ? { padding: c.pads } : {}),
      ...(c.outPad ? { outputPadding: c.outPad } : {}),
    });
    const d = relDiff(got.data, ref.data);
    check(
      `convTranspose3d case ${i} (x ${c.x}, w ${c.w}) equals onnxruntime: max relative difference ${d.toExponential(2)}`,
      JSON.stringify(got.shape) === JSON.stringify(ref.shape) && d <= TOL,
    );
  });
}

await step("pooling", async () => {
  const x = randomTensor([2, 3, 7, 9, 10], 80);
  const attrs = { kernel_shape: [3, 3, 3], strides: [2, 2, 2], pads: [1, 1, 1, 1, 1, 1] };
  const opts = { kernel: [3, 3, 3], stride: [2, 2, 2], padding: [1, 1, 1, 1, 1, 1] };
  const [mx] = await ortRun("MaxPool", [{ name: "x", tensor: x }], attrs);
  check("maxPool3d equals onnxruntime", relDiff((await maxPool3d(x, opts)).data, mx.data) <= TOL);
  const [av] = await ortRun("AveragePool", [{ name: "x", tensor: x }], { ...attrs, count_include_pad: 0 });
  check("avgPool3d equals onnxruntime", relDiff((await avgPool3d(x, { ...opts, countIncludePad: false })).data, av.data) <= TOL);
});

await step("connected components", async () => {
  const expected = JSON.parse(readFileSync(sharedFixture("voxel", "expected.json"), "utf8")).ccl;
  for (const conn of [6, 26]) {
    const m = await readNpy(sharedFixture("voxel", "ccl_blobs_mask.npy"));
    const want = await readNpy(sharedFixture("voxel", `ccl_blobs_labels${conn}.npy`));
    const { labels, count } = await connectedComponents(volumeFromArray(m.data, m.shape), { connectivity: conn });
    let same = labels.data.length === want.data.length;
    for (let i = 0; same && i < want.data.length; i++) same = labels.data[i] === want.data[i];
    check(
      `connectedComponents (${conn}-connectivity) equals scipy.ndimage.label exactly (${count} components)`,
      same && count === expected.blobs[`components${conn}`],
    );
  }
});

await step("the bundled demo model", async () => {
  const path = join(ROOT, "models", "demo.onnx");
  const model = await loadModel(path, { backend: "native" });
  const shape = [1, 1, 8, 32, 32];
  const x = randomTensor(shape, 7);
  const got = await model.run(x);
  const session = await ort.InferenceSession.create(readFileSync(path), { intraOpNumThreads: 1 });
  const out = await session.run({ [session.inputNames[0]]: new ort.Tensor("float32", x.data, shape) });
  const ref = out[session.outputNames[0]];
  const d = relDiff(got.data, ref.data);
  check(
    `models/demo.onnx on the arm64 addon equals onnxruntime: max relative difference ${d.toExponential(2)}`,
    JSON.stringify(got.shape) === JSON.stringify([...ref.dims]) && d <= TOL,
  );
  await session.release();
});

console.log(`${passed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
