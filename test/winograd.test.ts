// Winograd F(2×2×2, 3×3×3) on the native backend (issue 23) against onnxruntime-node in the same
// process, for the 3×3×3 stride-1 layers of nnU-Net's PlainConvUNet (features 32, 64, 128, 256, 320,
// 320 on a 16×64×64 patch, pooling (1,2,2) then (2,2,2)): the encoder's second conv of each stage and
// the decoder's first (2C → C). BHSD_WINOGRAD=1 forces Winograd in this process (ava runs each test
// file in a child process of its own; the addon reads the switch at its first convolution), so every
// layer here takes the Winograd path whatever the plan would have chosen; a second test shows, in
// child processes, that the switch changes the arithmetic (=0 and =1 differ) and that this process's
// results are Winograd's. 3×3×3 layers run as F(2×4×4, 3×3×3) (F(2×2×2, 3×3×3) for wider layers
// on small volumes) and 1×3×3 layers (nnU-Net's anisotropic stages, padding (0, 1, 1)) as F(4×4, 3×3)
// per plane — on AVX-512's transforms or, where it does not run (BHSD_NO_AVX512), AVX2's. The strided
// 3×3×3 layers that open each stage (stride 1×2×2 or 2×2×2) run as Winograd on the phases of the
// strided axes (F(2, 2) on the odd samples, the even ones as they are: 100 or 125 points per 2×2×2
// outputs).
process.env.BHSD_WINOGRAD = "1";

import test from "ava";
import { createHash } from "node:crypto";
import { spawnSync } from "node:child_process";
import { backendInfo, conv3d, setBackend } from "../lib/index.js";
import type { Tensor } from "../lib/types.js";
import { ROOT } from "./helpers.js";
import { ortRun, randomTensor, scaleDiff } from "./ort.js";

const TOL = 1e-4; // of the output's scale (max |reference|); F(2,3) measures about 1e-6, F(4×4) tiles about 1e-5
const native = backendInfo().available.native;
const simd = native ? backendInfo().details.native!.simd : "";
const why = !native
  ? `the native backend is not available here (${backendInfo().reasons.native ?? "not built"})`
  : !/avx2/.test(simd)
    ? `Winograd runs on the AVX2/AVX-512 kernels and this processor offers ${simd}`
    : "";
const winoTest = why ? test.skip : test;
if (why) console.log(`# Winograd tests skipped: ${why}`);

/** U-Net-like magnitudes: activations in [−1, 1), Kaiming-uniform weights, small biases. */
function layer(C: number, Co: number, kd: number, ext: [number, number, number], seed: number): { x: Tensor; w: Tensor; b: Tensor } {
  const x = randomTensor([1, C, ...ext], seed),
    w = randomTensor([Co, C, kd, 3, 3], seed + 1),
    b = randomTensor([Co], seed + 2);
  const bound = Math.sqrt(6 / (C * kd * 9));
  for (let i = 0; i < w.data.length; i++) w.data[i] = w.data[i]! * bound;
  for (let i = 0; i < b.data.length; i++) b.data[i] = b.data[i]! * 0.1;
  return { x, w, b };
}

const layers: {
  C: number;
  Co: number;
  ext: [number, number, number];
  act?: "leakyRelu";
  kd?: 1;
  stride?: [number, number, number];
  pads?: number[];
}[] = [
  { C: 32, Co: 32, ext: [16, 64, 64] },
  { C: 64, Co: 32, ext: [16, 64, 64], act: "leakyRelu" }, // decoder: skip ‖ upsampled
  { C: 64, Co: 64, ext: [16, 32, 32] },
  { C: 128, Co: 128, ext: [8, 16, 16], act: "leakyRelu" },
  { C: 256, Co: 256, ext: [4, 8, 8] },
  { C: 320, Co: 320, ext: [2, 4, 4], act: "leakyRelu" },
  { C: 640, Co: 320, ext: [2, 4, 4] },
  { C: 320, Co: 320, ext: [2, 2, 2] }, // the bottleneck
  { C: 17, Co: 23, ext: [5, 7, 9], act: "leakyRelu" }, // odd extents and channel counts
  { C: 24, Co: 40, ext: [5, 18, 130], act: "leakyRelu" }, // rows of 33 F(2×4×4) tiles, an odd depth
  { C: 8, Co: 8, ext: [16, 32, 32], act: "leakyRelu" }, // 8 channels: MONAI SegResNet's first stage
  { C: 32, Co: 32, ext: [8, 64, 64], kd: 1 }, // 1×3×3
  { C: 64, Co: 32, ext: [8, 32, 32], kd: 1, act: "leakyRelu" },
  { C: 19, Co: 21, ext: [3, 9, 11], kd: 1 },
  { C: 24, Co: 40, ext: [3, 18, 130], kd: 1, act: "leakyRelu" }, // rows of 33 F(4×4) tiles: groups across rows
  // the strided layers that open the stages (input extents of a 16×128×128 patch), odd extents,
  // rows of 17 tiles (groups across rows), other paddings
  { C: 32, Co: 64, ext: [16, 128, 128], stride: [1, 2, 2], act: "leakyRelu" },
  { C: 64, Co: 128, ext: [16, 64, 64], stride: [1, 2, 2] },
  { C: 128, Co: 256, ext: [16, 32, 32], stride: [2, 2, 2], act: "leakyRelu" },
  { C: 256, Co: 320, ext: [8, 16, 16], stride: [2, 2, 2] },
  { C: 320, Co: 320, ext: [4, 8, 8], stride: [1, 2, 2], act: "leakyRelu" },
  { C: 17, Co: 23, ext: [5, 9, 13], stride: [1, 2, 2] },
  { C: 20, Co: 12, ext: [7, 11, 66], stride: [2, 2, 2], act: "leakyRelu" },
  { C: 24, Co: 40, ext: [6, 10, 20], stride: [1, 2, 2], pads: [0, 2, 1, 2, 1, 0] },
];

for (const [i, l] of layers.entries()) {
  winoTest.serial(
    `Winograd conv3d ${l.C}→${l.Co} ${l.kd ?? 3}×3×3${l.stride ? ` stride ${l.stride.join("×")}` : ""} at ${l.ext.join("×")}${l.act ? " + LeakyReLU" : ""} equals onnxruntime within ${TOL} of scale`,
    async (t) => {
      const kd = l.kd ?? 3,
        pads = l.pads ?? (kd === 3 ? [1, 1, 1, 1, 1, 1] : [0, 1, 1, 0, 1, 1]),
        strides = l.stride ?? [1, 1, 1];
      const { x, w, b } = layer(l.C, l.Co, kd, l.ext, 100 + 10 * i);
      const [conv] = await ortRun(
        "Conv",
        [
          { name: "x", tensor: x },
          { name: "w", init: { dims: w.shape, data: w.data } },
          { name: "b", init: { dims: b.shape, data: b.data } },
        ],
        { pads, strides },
      );
      const ref = l.act
        ? (
            await ortRun("LeakyRelu", [{ name: "x", tensor: { data: conv!.data as Float32Array, shape: conv!.shape } }], { alpha: 0.01 })
          )[0]!
        : conv!;
      setBackend("native");
      const got = await conv3d(x, w, b, {
        padding: pads as [number, number, number, number, number, number],
        stride: strides as [number, number, number],
        ...(l.act ? { activation: l.act, alpha: 0.01 } : {}),
      });
      t.deepEqual(got.shape, ref.shape);
      const d = scaleDiff(got.data, ref.data as Float32Array);
      t.log(`max |difference| / scale: ${d.toExponential(2)}`);
      t.true(d <= TOL, `max difference ${d} of scale`);
    },
  );
}

winoTest.serial(
  "BHSD_WINOGRAD switches the arithmetic: =0 and =1 differ in their rounding, and this process's conv3d is Winograd's",
  async (t) => {
    const script = `
    import { createHash } from "node:crypto";
    import { conv3d, setBackend } from "./lib/index.ts";
    import { randomTensor } from "./test/ort.ts";
    setBackend("native");
    const y = await conv3d(randomTensor([1, 32, 6, 10, 40], 7), randomTensor([24, 32, 3, 3, 3], 8), null, { padding: 1 });
    const s = await conv3d(randomTensor([1, 32, 6, 10, 40], 7), randomTensor([24, 32, 3, 3, 3], 8), null, { padding: 1, stride: [2, 2, 2] });
    console.log(createHash("sha256").update(y.data).digest("hex"), createHash("sha256").update(s.data).digest("hex"));`;
    const run = (v: string) => {
      const r = spawnSync(process.execPath, ["--import", "tsx", "--input-type=module", "-e", script], {
        cwd: ROOT,
        env: { ...process.env, BHSD_WINOGRAD: v },
        encoding: "utf8",
        timeout: 120_000,
      });
      t.is(r.status, 0, r.stderr);
      return r.stdout.trim().split(" ");
    };
    const [off, offStrided] = run("0"),
      [on, onStrided] = run("1");
    setBackend("native");
    const here = await conv3d(randomTensor([1, 32, 6, 10, 40], 7), randomTensor([24, 32, 3, 3, 3], 8), null, { padding: 1 });
    t.regex(on!, /^[0-9a-f]{64}$/);
    t.not(on, off, "the direct path and Winograd round differently; equal hashes mean the switch did nothing");
    t.is(createHash("sha256").update(here.data).digest("hex"), on);
    // a strided layer: Winograd on its phases (AVX-512's transforms or AVX2's)
    t.regex(onStrided!, /^[0-9a-f]{64}$/);
    t.not(onStrided, offStrided, "a strided layer's Winograd path did not run");
  },
);

winoTest.serial("training's precise convolutions use F(2×…) tiles while held and F(4×4) ones again once released", async (t) => {
  const { getBackend } = await import("../lib/backends/index.js");
  const be = getBackend("native");
  setBackend("native");
  const x = randomTensor([1, 32, 6, 10, 40], 7),
    w = randomTensor([24, 32, 3, 3, 3], 8);
  const hash = async () =>
    createHash("sha256")
      .update((await conv3d(x, w, null, { padding: 1 })).data)
      .digest("hex");
  const before = await hash();
  be.preciseConvolutions!(true);
  let held: string;
  try {
    held = await hash();
  } finally {
    be.preciseConvolutions!(false);
  }
  t.is(await hash(), before, "released: the default tiles again");
  // the F(2×…) tiles' answer: a child process where BHSD_WINOGRAD_F4=0 keeps them
  const script = `
    import { createHash } from "node:crypto";
    import { conv3d, setBackend } from "./lib/index.ts";
    import { randomTensor } from "./test/ort.ts";
    setBackend("native");
    const y = await conv3d(randomTensor([1, 32, 6, 10, 40], 7), randomTensor([24, 32, 3, 3, 3], 8), null, { padding: 1 });
    console.log(createHash("sha256").update(y.data).digest("hex"));`;
  const r = spawnSync(process.execPath, ["--import", "tsx", "--input-type=module", "-e", script], {
    cwd: ROOT,
    env: { ...process.env, BHSD_WINOGRAD: "1", BHSD_WINOGRAD_F4: "0" },
    encoding: "utf8",
    timeout: 120_000,
  });
  t.is(r.status, 0, r.stderr);
  t.is(held, r.stdout.trim());
  t.not(held, before, "the default is F(2×4×4), which rounds differently");
});

winoTest.serial(
  "a disposed model's transformed weights leave the Winograd weight cache; a model of the same weights gets them again, bit for bit",
  async (t) => {
    const { engineMemory } = await import("../lib/backends/index.js");
    const { encodeModel } = await import("../lib/model/onnx-proto.js");
    const { loadModel } = await import("../lib/index.js");
    const { x, w, b } = layer(32, 32, 3, [8, 16, 16], 41);
    const bytes = encodeModel({
      opset: 17,
      nodes: [{ opType: "Conv", inputs: ["x", "w", "b"], outputs: ["y"], attrs: { kernel_shape: [3, 3, 3], pads: [1, 1, 1, 1, 1, 1] } }],
      inputs: [{ name: "x", shape: x.shape }],
      outputs: [{ name: "y" }],
      initializers: [
        { name: "w", dims: w.shape, data: w.data },
        { name: "b", dims: b.shape, data: b.data },
      ],
    });
    const digest = (y: Tensor) => createHash("sha256").update(y.data).digest("hex");
    const a = await loadModel(bytes, { backend: "native" }),
      c = await loadModel(bytes, { backend: "native" });
    const before = engineMemory().weightCacheBytes;
    const ya = digest(await a.run(x));
    const held = engineMemory().weightCacheBytes - before;
    // F(2×2×2) tiles at the least: 64 points of 32 × 32 weights
    t.true(held >= 64 * 32 * 32 * 4, `the run left ${held} bytes of transformed weights in the cache`);
    t.is(digest(await c.run(x)), ya);
    t.is(engineMemory().weightCacheBytes - before, held, "the second model of these weights found them");
    a.dispose();
    t.is(engineMemory().weightCacheBytes, before, "the first model's dispose took them out");
    // its packed weights' block is freed when their detached ArrayBuffer is finalised, from the
    // event loop, and tells the cache again then (nothing left to forget): let that happen before
    // the other model makes its entry, which a late notice would take out again (one transform more
    // for it, no wrong answer — but this test would count bytes at a moment it does not choose)
    for (let i = 0; i < 5; i++) await new Promise((r) => setImmediate(r));
    t.is(engineMemory().weightCacheBytes, before);
    t.is(digest(await c.run(x)), ya, "the other model transformed them again: the same output");
    t.is(engineMemory().weightCacheBytes - before, held);
    c.dispose();
    t.is(engineMemory().weightCacheBytes, before);
  },
);

winoTest.serial(
  "weights let go while a call of them runs: the cache entry that call makes leaves when the call lets go of them",
  async (t) => {
    const { engineMemory, getBackend } = await import("../lib/backends/index.js");
    setBackend("native");
    // NativeBackend's hold on a model's constant weights (packed once), as loadModel uses it
    const be = getBackend("native") as unknown as {
      constants(a: ReadonlySet<Float32Array>): void;
      release(a: Float32Array[]): void;
    };
    const { x, w } = layer(256, 256, 3, [4, 8, 8], 61); // 38 MB of transformed weights: the call runs on the pool
    const before = engineMemory().weightCacheBytes;
    be.constants(new Set([w.data]));
    const pending = conv3d(x, w, null, { padding: 1 });
    be.release([w.data]); // the packed weights detached while the call, pinning them, transforms them
    await pending;
    for (let i = 0; i < 5; i++) await new Promise((r) => setImmediate(r)); // finalizers run from the event loop
    t.is(engineMemory().weightCacheBytes, before, "the entry the call made went with the packed weights' block");
  },
);

winoTest.serial("a disposed model's transposed convolution leaves its cached weights too", async (t) => {
  const { engineMemory } = await import("../lib/backends/index.js");
  const { encodeModel } = await import("../lib/model/onnx-proto.js");
  const { loadModel } = await import("../lib/index.js");
  const x = randomTensor([1, 64, 4, 8, 8], 71),
    w = randomTensor([64, 32, 2, 2, 2], 72); // ConvTranspose weights [C, Co, kd, kh, kw]: an upsampling
  const bytes = encodeModel({
    opset: 17,
    nodes: [{ opType: "ConvTranspose", inputs: ["x", "w"], outputs: ["y"], attrs: { kernel_shape: [2, 2, 2], strides: [2, 2, 2] } }],
    inputs: [{ name: "x", shape: x.shape }],
    outputs: [{ name: "y" }],
    initializers: [{ name: "w", dims: w.shape, data: w.data }],
  });
  const m = await loadModel(bytes, { backend: "native" });
  const before = engineMemory().weightCacheBytes;
  const [want] = await ortRun(
    "ConvTranspose",
    [
      { name: "x", tensor: x },
      { name: "w", tensor: w },
    ],
    { kernel_shape: [2, 2, 2], strides: [2, 2, 2] },
  );
  const y = await m.run(x);
  t.true(scaleDiff(y.data, want!.data as Float32Array) <= 1e-5, "the upsampling is onnxruntime's");
  const held = engineMemory().weightCacheBytes - before;
  t.true(held >= 64 * 32 * 8 * 4, `the run cached ${held} bytes of packed upsampling weights`);
  m.dispose();
  t.is(engineMemory().weightCacheBytes, before, "gone with the model");
  // the addon's call itself, given what it must not take or has nothing to do with
  const { getBackend } = await import("../lib/backends/index.js");
  const addon = (getBackend("native") as unknown as { addon: { forgetWeights(w: unknown): number } }).addon;
  t.throws(() => addon.forgetWeights(3), { message: /typed array/ });
  t.throws(() => addon.forgetWeights(new Int32Array(8)), { message: /Float32Array/ });
  t.is(addon.forgetWeights(new Float32Array(0)), 0);
  const gone = new Float32Array(64);
  structuredClone(gone.buffer, { transfer: [gone.buffer] });
  t.is(addon.forgetWeights(gone), 0, "a detached array: nothing to forget");
  t.is(addon.forgetWeights(new Float32Array(new SharedArrayBuffer(256))), 0);
});
