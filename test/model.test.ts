import test, { type ExecutionContext } from "ava";
import { existsSync, mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { encodeModel, loadModel, readNpy, resampleVolume, segment, setBackend, volumeFromArray, windowStarts } from "../lib/index.js";
import type { Tensor, Volume } from "../lib/types.js";
import { backendsUnderTest, ROOT, sharedFixture } from "./helpers.js";
import { compareLabels, pointwiseOnnx, randomTensor, relDiff } from "./ort.js";

const backends = backendsUnderTest();

for (const { name } of backends) {
  for (const [input, expected] of [
    ["input.npy", "expected.npy"],
    ["input_1.npy", "expected_1.npy"],
  ]) {
    test.serial(`${name}: the PyTorch-exported plain U-Net gives PyTorch's logits on ${input}`, async (t) => {
      setBackend(name);
      const model = await loadModel(sharedFixture("onnx-plainunet", "plainunet.onnx"));
      const x = await readNpy(sharedFixture("onnx-plainunet", input));
      const want = await readNpy(sharedFixture("onnx-plainunet", expected));
      const y = await model.run({ data: x.data as Float32Array, shape: x.shape });
      t.deepEqual(y.shape, want.shape);
      const d = relDiff(y.data, want.data);
      t.true(d <= 1e-4, `max relative difference ${d}`);
      t.true(model.lastRun!.peakBytes > 0);
      // the three skip connections' Concats were written in place by their inputs' producers (CPU)
      t.is(model.lastRun!.concatsInPlace, name === "cuda" ? 0 : 3);
      // the pool keeps the live set well under the sum of all intermediates
      t.true(model.lastRun!.peakBytes < 12 * y.data.byteLength, `peak ${model.lastRun!.peakBytes}`);
      // per-node timings: every node that ran (LeakyReLUs fused into their Conv or norm), summing to the per-op ones
      const { nodeMs, opMs } = model.lastRun!;
      t.is(nodeMs.filter((n) => n.op.startsWith("Conv")).length, 18, "15 Conv and 3 ConvTranspose");
      const byOp = (op: string) => nodeMs.filter((n) => n.op === op).reduce((a, n) => a + n.ms, 0);
      for (const op of Object.keys(opMs)) t.true(Math.abs(byOp(op) - opMs[op]!) < 1e-6, op);
    });
  }
}

/** A model made only of 1×1×1 convolutions: its output at a voxel depends on that voxel alone. */
function pointwiseModel(seed: number): Uint8Array {
  const w1 = randomTensor([4, 1, 1, 1, 1], seed),
    b1 = randomTensor([4], seed + 1),
    w2 = randomTensor([6, 4, 1, 1, 1], seed + 2),
    b2 = randomTensor([6], seed + 3);
  return encodeModel({
    opset: 17,
    nodes: [
      { opType: "Conv", inputs: ["x", "w1", "b1"], outputs: ["h"], attrs: { kernel_shape: [1, 1, 1] } },
      { opType: "LeakyRelu", inputs: ["h"], outputs: ["a"], attrs: { alpha: 0.1 } },
      { opType: "Conv", inputs: ["a", "w2", "b2"], outputs: ["y"], attrs: { kernel_shape: [1, 1, 1] } },
    ],
    inputs: [{ name: "x", shape: [1, 1, "D", "H", "W"] }],
    outputs: [{ name: "y" }],
    initializers: [
      { name: "w1", dims: w1.shape, data: w1.data },
      { name: "b1", dims: [4], data: b1.data },
      { name: "w2", dims: w2.shape, data: w2.data },
      { name: "b2", dims: [6], data: b2.data },
    ],
  });
}

function ctVolume(shapeZYX: [number, number, number], seed: number, spacingZYX: number[] = [5, 0.5, 0.5]): Volume {
  const r = randomTensor(shapeZYX, seed);
  return volumeFromArray(
    Float32Array.from(r.data, (v) => v * 100 + 40),
    shapeZYX,
    spacingZYX,
  );
}

for (const { name } of backends) {
  test.serial(`${name}: sliding windows equal one whole-volume forward for a translation-equivariant model`, async (t) => {
    setBackend(name);
    const model = await loadModel(pointwiseModel(5), { patchSize: [4, 16, 16] });
    for (const shape of [
      [3, 10, 12],
      [9, 23, 30],
    ] as [number, number, number][]) {
      // smaller than one patch; and not divisible by the step
      const ct = ctVolume(shape, 7);
      const { labels, report } = await segment(ct, model);
      const norm = Float32Array.from(ct.data, (v) => (Math.min(Math.max(v, -40), 120) - 40) / 80);
      const whole = await model.run({ data: norm, shape: [1, 1, ...shape] });
      const vol = shape[0] * shape[1] * shape[2];
      let mismatches = 0;
      for (let i = 0; i < vol; i++) {
        let best = 0;
        for (let c = 1; c < 6; c++) if (whole.data[c * vol + i]! > whole.data[best * vol + i]!) best = c;
        if (labels.data[i] !== best) mismatches++;
      }
      t.is(mismatches, 0, `shape ${shape}: ${report.windows} windows`);
      t.deepEqual(labels.dims, ct.dims);
    }
  });
}

test.serial("segment: mirroring, progress, cleanup and the report", async (t) => {
  const model = await loadModel(pointwiseModel(9), { patchSize: [4, 16, 16] });
  const ct = ctVolume([6, 20, 20], 3);
  const seen: string[] = [];
  const t0 = performance.now();
  const { labels, report } = await segment(ct, model, {
    mirror: true,
    onProgress: (p) => seen.push(`${p.step} ${p.done}/${p.total}`),
    cleanup: { minVoxels: 3 },
  });
  const wall = performance.now() - t0;
  t.is(report.forwards, report.windows * 8);
  t.true(seen.includes(`window ${report.windows}/${report.windows}`));
  t.deepEqual(Object.keys(report.perClass), ["1", "2", "3", "4", "5"]);
  const total = Object.values(report.perClass).reduce((a, c) => a + c.voxels, 0);
  t.is(total, labels.data.filter((v) => v > 0).length);
  t.true(report.components.every((c) => c.voxels >= 3));
  // the steps' times are milliseconds of this call: each there, the forwards' time above zero, and
  // together no more than the call took (a step counted twice or in seconds would break one)
  for (const k of ["normalize", "inference", "softmax"]) t.true(Number.isFinite(report.timings[k]) && report.timings[k]! >= 0, k);
  t.true(report.timings.inference! > 0);
  const sum = Object.values(report.timings).reduce((a, b) => a + b, 0);
  t.true(sum <= wall + 1, `steps ${sum} ms, call ${wall} ms`);
  // a model trained flipped left-right only: `mirror: true` flips x alone; a pointwise model commutes
  // with any flip, so the mirrored labels equal the plain ones (a wrong flip back would move them)
  const lr = await loadModel(pointwiseModel(9), { patchSize: [4, 16, 16], mirrorAxes: [2] });
  const plain = await segment(ct, lr);
  const mirrored = await segment(ct, lr, { mirror: true });
  t.is(mirrored.report.forwards, mirrored.report.windows * 2);
  t.deepEqual(mirrored.labels.data, plain.labels.data);
});

test.serial("segment resamples to the model's spacing and back to the CT's grid as scipy.ndimage.zoom does", async (t) => {
  // test/fixtures/resample/make_fixture.py: the CT, a pointwise model's weights, and the labels
  // scipy gives (zoom order 1, half-pixel grid, edges repeated, there and back: the logits back, as
  // nnU-Net v2 resamples them; 120 of the 3840 voxels' labels differ where probabilities are)
  const dir = join(ROOT, "test", "fixtures", "resample");
  const npy = (name: string) => readNpy(join(dir, `${name}.npy`));
  const [ct, w1, b1, w2, b2, want, margin] = await Promise.all(["ct", "w1", "b1", "w2", "b2", "labels", "margin"].map(npy));
  const bytes = pointwiseOnnx(w1!, b1!, w2!, b2!);
  const model = await loadModel(bytes, { patchSize: [4, 16, 16], targetSpacing: [2.5, 1, 1] });
  const vol = volumeFromArray(ct!.data as Float32Array, ct!.shape as [number, number, number], [5, 0.5, 0.5]);
  const { labels, report } = await segment(vol, model);
  t.deepEqual(report.modelGrid.dims, [16, 12, 10]);
  t.deepEqual(labels.dims, vol.dims);
  // every voxel whose two best classes scipy separates by more than float32 noise is the same class
  const { compared, differ } = compareLabels(labels.data, want!.data as Uint8Array, margin!.data as Float32Array);
  t.true(compared > 0.99 * labels.data.length, `${compared} of ${labels.data.length} voxels compared`);
  t.is(differ, 0, `${differ} of ${compared} voxels differ from scipy's labels`);
  t.true(new Set(labels.data).size >= 4, "four classes in the fixture");
});

test.serial(
  "an ensemble of two models at other spacings: each member's logits resampled back, softmaxed, averaged, as scipy does",
  async (t) => {
    // make_fixture.py's second part: the pointwise model above at 2.5 × 1 × 1 mm and a second one at
    // 5 × 0.8 × 0.8 mm (a grid of 8 × 15 × 12: 12.5 columns round to 12 as nnU-Net's round does)
    const dir = join(ROOT, "test", "fixtures", "resample");
    const npy = (name: string) => readNpy(join(dir, `${name}.npy`));
    const [ct, w1, b1, w2, b2, w3, b3, want, margin] = await Promise.all(
      ["ct", "w1", "b1", "w2", "b2", "w3", "b3", "ensemble_labels", "ensemble_margin"].map(npy),
    );
    const m1 = await loadModel(pointwiseOnnx(w1!, b1!, w2!, b2!), { patchSize: [4, 16, 16], targetSpacing: [2.5, 1, 1] });
    const m2 = await loadModel(pointwiseOnnx(w3!, b3!), { patchSize: [4, 8, 8], targetSpacing: [5, 0.8, 0.8] });
    const vol = volumeFromArray(ct!.data as Float32Array, ct!.shape as [number, number, number], [5, 0.5, 0.5]);
    const { labels, report } = await segment(vol, [m1, m2]);
    t.deepEqual(
      report.ensemble!.map((e) => e.modelGrid.dims),
      [
        [16, 12, 10],
        [8, 15, 12],
      ],
    );
    const { compared, differ } = compareLabels(labels.data, want!.data as Uint8Array, margin!.data as Float32Array);
    t.true(compared > 0.99 * labels.data.length, `${compared} of ${labels.data.length} voxels compared`);
    t.is(differ, 0, `${differ} of ${compared} voxels differ from scipy's ensemble`);
    t.true(new Set(labels.data).size >= 3);
  },
);

test("a label volume resampled to another spacing and back keeps its labels away from edges", async (t) => {
  // blocks of 8 voxels: at 2 mm they are 4 voxels, and nearest sampling is exact inside them
  const [nz, ny, nx] = [16, 32, 32];
  const data = new Uint8Array(nx * ny * nz);
  for (let z = 0; z < nz; z++)
    for (let y = 0; y < ny; y++) for (let x = 0; x < nx; x++) data[(z * ny + y) * nx + x] = ((z >> 3) + (y >> 3) + (x >> 3)) % 6;
  const v = volumeFromArray(data, [nz, ny, nx], [1, 1, 1]);
  const down = await resampleVolume(v, [2, 2, 2], { mode: "nearest" });
  t.deepEqual(down.dims, [16, 16, 8]);
  const back = await resampleVolume(down, [1, 1, 1], { mode: "nearest" });
  t.deepEqual(back.dims, v.dims);
  t.is(back.data.constructor, Uint8Array);
  let bad = 0;
  for (let i = 0; i < data.length; i++) if (back.data[i] !== data[i]) bad++;
  t.is(bad, 0);
  // the physical extent is kept: corner of voxel 0 stays put
  t.deepEqual(down.affine.slice(0, 4), [2, 0, 0, 0.5]);
});

test("loadModel refuses what the engine cannot run, naming the node, op and attribute", async (t) => {
  const w = randomTensor([2, 1, 3, 3, 3], 1);
  const base = (nodes: Parameters<typeof encodeModel>[0]["nodes"], opset = 17) =>
    encodeModel({
      opset,
      nodes,
      inputs: [{ name: "x", shape: [1, 1, 4, 4, 4] }],
      outputs: [{ name: "y" }],
      initializers: [{ name: "w", dims: w.shape, data: w.data }],
    });
  await t.throwsAsync(
    loadModel(
      base([
        { opType: "Conv", inputs: ["x", "w"], outputs: ["h"], name: "enc0" },
        { opType: "Col2Im", inputs: ["h"], outputs: ["y"], name: "act0" },
      ]),
    ),
    {
      message: /node act0 \(Col2Im\): op Col2Im is not supported/,
    },
  );
  await t.throwsAsync(
    loadModel(base([{ opType: "Conv", inputs: ["x", "w"], outputs: ["y"], name: "c", attrs: { auto_pad: "SAME_UPPER" } }])),
    { message: /node c \(Conv\): attribute auto_pad = SAME_UPPER is not supported/ },
  );
  await t.throwsAsync(loadModel(base([{ opType: "Softmax", inputs: ["x"], outputs: ["y"], name: "s", attrs: { foo: 1 } }])), {
    message: /node s \(Softmax\): attribute foo is not supported/,
  });
  await t.throwsAsync(loadModel(base([{ opType: "Relu", inputs: ["x"], outputs: ["y"] }], 10)), { message: /opset 10 is not supported/ });
  await t.throwsAsync(loadModel(new Uint8Array([1, 2, 3, 4, 5])), { message: /not an ONNX model/ });
  await t.throwsAsync(loadModel("/nonexistent/model.onnx"), { message: /no such file/ });
  await t.throwsAsync(loadModel(42 as never), { message: /Expected a file path or the model's bytes/ });
});

test("model config: sidecar JSON, nnU-Net plans.json, defaults, and bad configs", async (t) => {
  const dir = mkdtempSync(join(tmpdir(), "bhsd-model-"));
  const bytes = pointwiseModel(1);
  writeFileSync(join(dir, "m.onnx"), bytes);
  t.is((await loadModel(join(dir, "m.onnx"))).config.source, "default");
  writeFileSync(
    join(dir, "plans.json"),
    JSON.stringify({
      transpose_forward: [0, 2, 1],
      foreground_intensity_properties_per_channel: { "0": { mean: 45.2, std: 22.1, percentile_00_5: -10, percentile_99_5: 95 } },
      configurations: { "3d_fullres": { patch_size: [28, 256, 224], spacing: [5, 0.49, 0.7], normalization_schemes: ["CTNormalization"] } },
    }),
  );
  writeFileSync(join(dir, "dataset.json"), JSON.stringify({ labels: { background: 0, EDH: 1, IPH: 2, IVH: 3, SAH: 4, SDH: 5 } }));
  const nn = await loadModel(join(dir, "m.onnx"));
  t.is(nn.config.source, "nnunet");
  t.deepEqual(nn.config.patchSize, [28, 256, 224]);
  t.deepEqual(nn.config.normalization, { type: "ct", lower: -10, upper: 95, mean: 45.2, std: 22.1 });
  t.deepEqual(nn.config.transposeForward, [0, 2, 1]);
  // nnU-Net stores the spacing in the network's (transposed) order: network axis 1 is x here
  t.deepEqual(nn.config.targetSpacing, [5, 0.7, 0.49]);
  t.is(nn.config.classes["3"], "IVH");
  writeFileSync(join(dir, "m.json"), JSON.stringify({ patchSize: [8, 32, 32], normalization: { type: "zscore" } }));
  const sc = await loadModel(join(dir, "m.onnx"));
  t.is(sc.config.source, "sidecar");
  t.deepEqual(sc.config.patchSize, [8, 32, 32]);
  // loader options alone (backend, memoryLimit) keep the sidecar's config (they once replaced it with defaults)
  const bound = await loadModel(join(dir, "m.onnx"), { backend: "ts", memoryLimit: 2 ** 30 });
  t.is(bound.config.source, "sidecar");
  t.deepEqual(bound.config.patchSize, [8, 32, 32]);
  writeFileSync(join(dir, "m.json"), JSON.stringify({ normalization: { type: "magic" } }));
  await t.throwsAsync(loadModel(join(dir, "m.onnx")), { message: /normalization .* is not one of window, ct, zscore/ });
  await t.throwsAsync(loadModel(bytes, { patchSize: [0, 1, 1] as never }), { message: /patchSize must be three positive numbers/ });
  await t.throwsAsync(loadModel(bytes, { mirrorAxes: [2, 3] }), {
    message: /mirrorAxes must list distinct axes among 0, 1, 2, got \[2,3\]/,
  });
  t.deepEqual((await loadModel(bytes)).config.mirrorAxes, [0, 1, 2]);
});

test("sliding-window starts follow nnU-Net", (t) => {
  t.deepEqual(windowStarts(10, 16, 0.5), [0]);
  t.deepEqual(windowStarts(16, 16, 0.5), [0]);
  t.deepEqual(windowStarts(40, 16, 0.5), [0, 8, 16, 24]);
  t.deepEqual(windowStarts(23, 16, 0.5), [0, 7]);
  // numpy rounds halves to even, as nnU-Net's compute_steps_for_sliding_window does: 32.5 → 32
  t.deepEqual(windowStarts(193, 128, 0.5), [0, 32, 65]);
  t.deepEqual(windowStarts(251, 128, 0.5), [0, 62, 123]);
});

test.serial("bhsd segment: labels file, JSON report, one-line errors", async (t) => {
  const { spawnSync } = await import("node:child_process");
  const { ROOT } = await import("./helpers.js");
  const { writeNifti, readNifti } = await import("../lib/index.js");
  const dir = mkdtempSync(join(tmpdir(), "bhsd-seg-"));
  writeFileSync(join(dir, "m.onnx"), pointwiseModel(3));
  writeFileSync(join(dir, "m.json"), JSON.stringify({ patchSize: [4, 16, 16] }));
  await writeNifti(join(dir, "ct.nii.gz"), ctVolume([5, 20, 18], 2));
  const run = (...a: string[]) =>
    spawnSync(process.execPath, [join(ROOT, "dist", "cli", "main.js"), ...a], { encoding: "utf8", timeout: 60_000 });
  const r = run("segment", join(dir, "ct.nii.gz"), "--model", join(dir, "m.onnx"), "--out", join(dir, "seg.nii.gz"), "--json");
  t.is(r.status, 0, r.stderr);
  const report = JSON.parse(r.stdout);
  t.is(report.model, "m");
  t.is(report.windows, 2 * 2 * 2); // nnU-Net starts: z [0, 1], y [0, 4], x [0, 2]
  const seg = await readNifti(join(dir, "seg.nii.gz"));
  t.deepEqual(seg.dims, [18, 20, 5]);
  t.is(seg.meta?.datatype, "uint8");
  const bad = run("segment", join(dir, "ct.nii.gz"), "--model", join(dir, "missing.onnx"));
  t.is(bad.status, 1);
  t.regex(bad.stderr, /^bhsd: .*missing.onnx: no such file\n$/);
  // the model's own post-processing is applied and reported; --no-postprocessing and --cleanup-min-ml replace it
  const pp = { mergeClasses: [[1, 2]], minVoxels: 3 };
  writeFileSync(join(dir, "m.json"), JSON.stringify({ patchSize: [4, 16, 16], postprocessing: pp }));
  const seg2 = (...extra: string[]) => run("segment", join(dir, "ct.nii.gz"), "--model", join(dir, "m.onnx"), "--json", ...extra);
  t.deepEqual(JSON.parse(seg2().stdout).postprocessing, pp);
  t.is(JSON.parse(seg2("--no-postprocessing").stdout).postprocessing, null);
  t.deepEqual(JSON.parse(seg2("--cleanup-min-ml", "0.05").stdout).postprocessing, { minVolumeMl: 0.05 });
  writeFileSync(join(dir, "m.json"), JSON.stringify({ postprocessing: { mergeClasses: [[1, 2]], minVoxel: 3 } }));
  const badPp = seg2();
  t.is(badPp.status, 1);
  t.regex(badPp.stderr, /model config: Expected .* for postprocessing\.minVoxel /);
  const badTrain = run("train", "--phantoms", "1", "--out", join(dir, "t.onnx"), "--postprocessing", "{bad");
  t.not(badTrain.status, 0);
  t.regex(badTrain.stderr, /--postprocessing must be JSON/);
  t.false(existsSync(join(dir, "t.onnx")));
});

/** x → Conv+LeakyReLU → a; a → Conv → b; Concat(a, b) → Conv → y, and Concat(x, b) (x is not written by a node). */
function skipModel(): Uint8Array {
  const w1 = randomTensor([3, 2, 3, 3, 3], 201),
    w2 = randomTensor([5, 3, 3, 3, 3], 202),
    w3 = randomTensor([4, 8, 1, 1, 1], 203),
    b2 = randomTensor([5], 204);
  return encodeModel({
    opset: 17,
    nodes: [
      { opType: "Conv", inputs: ["x", "w1"], outputs: ["h"], attrs: { kernel_shape: [3, 3, 3], pads: [1, 1, 1, 1, 1, 1] } },
      { opType: "LeakyRelu", inputs: ["h"], outputs: ["a"], attrs: { alpha: 0.1 } },
      { opType: "Conv", inputs: ["a", "w2", "b2"], outputs: ["b"], attrs: { kernel_shape: [3, 3, 3], pads: [1, 1, 1, 1, 1, 1] } },
      { opType: "Concat", inputs: ["a", "b"], outputs: ["ab"], attrs: { axis: 1 } },
      { opType: "Conv", inputs: ["ab", "w3"], outputs: ["y"], attrs: { kernel_shape: [1, 1, 1] } },
      { opType: "Concat", inputs: ["x", "b"], outputs: ["xb"], attrs: { axis: 1 } },
    ],
    inputs: [{ name: "x", shape: ["N", 2, 4, 5, 6] }],
    outputs: [{ name: "y" }, { name: "xb" }],
    initializers: [
      { name: "w1", dims: w1.shape, data: w1.data },
      { name: "w2", dims: w2.shape, data: w2.data },
      { name: "w3", dims: w3.shape, data: w3.data },
      { name: "b2", dims: [5], data: b2.data },
    ],
  });
}

test.serial(
  "a Concat planned in place gives onnxruntime's result; batch 2 (not planned) copies, and so does a Concat of a graph input",
  async (t) => {
    const ort = await import("onnxruntime-node");
    const bytes = skipModel();
    const session = await ort.InferenceSession.create(bytes, { intraOpNumThreads: 1 });
    for (const { name } of backends) {
      setBackend(name);
      const model = await loadModel(bytes);
      for (const N of [1, 2, 1]) {
        const x = randomTensor([N, 2, 4, 5, 6], 300 + N);
        const want = await session.run({ x: new ort.Tensor("float32", x.data, x.shape) });
        const got = await model.runAll({ x });
        for (const o of ["y", "xb"]) {
          t.deepEqual(got[o]!.shape, [...want[o]!.dims], `${name} N=${N} ${o} shape`);
          const d = relDiff(got[o]!.data, want[o]!.data as Float32Array);
          t.true(d <= 1e-4, `${name} N=${N} ${o}: max relative difference ${d}`);
        }
        t.is(model.lastRun!.concatsInPlace, N === 1 && name !== "cuda" ? 1 : 0, `${name} N=${N}`);
      }
    }
    await session.release();
  },
);

/**
 * Runs a model (input "x") on onnxruntime and on each backend: each named output within 1e-4 of
 * onnxruntime's, then `check` with the backend's model after its run.
 */
async function againstOrt(
  t: ExecutionContext,
  bytes: Uint8Array,
  x: Tensor,
  outputs: string[],
  check: (backend: string, model: Awaited<ReturnType<typeof loadModel>>) => void,
): Promise<void> {
  const ort = await import("onnxruntime-node");
  const session = await ort.InferenceSession.create(bytes, { intraOpNumThreads: 1 });
  const want = await session.run({ x: new ort.Tensor("float32", x.data, x.shape) });
  await session.release();
  for (const { name } of backends) {
    setBackend(name);
    const model = await loadModel(bytes);
    const got = await model.runAll({ x });
    for (const o of outputs) {
      const d = relDiff(got[o]!.data, want[o]!.data as Float32Array);
      t.true(d <= 1e-4, `${name} ${o}: max relative difference ${d}`);
    }
    check(name, model);
  }
}

test.serial(
  "a residual block's Add (→ LeakyRelu) is fused into the Conv → InstanceNorm it sums where its other operand exists by then, and equals onnxruntime's",
  async (t) => {
    const w = (k: number, seed: number, co = 4, ci = 4) => randomTensor([co, ci, k, k, k], seed);
    const w1 = w(3, 501, 4, 2),
      w2 = w(3, 502),
      ws = w(1, 503, 4, 2),
      w3 = w(3, 504),
      w4 = w(3, 505),
      w5 = w(3, 506),
      w6 = w(1, 507);
    const s = randomTensor([4], 508),
      b = randomTensor([4], 509),
      bvec = randomTensor([1, 4, 1, 1, 1], 510);
    const conv = (x: string, wt: string, y: string, k = 3) => ({
      opType: "Conv",
      inputs: [x, wt],
      outputs: [y],
      attrs: { kernel_shape: [k, k, k], pads: k === 3 ? [1, 1, 1, 1, 1, 1] : [0, 0, 0, 0, 0, 0] },
    });
    const norm = (x: string, y: string) => ({
      opType: "InstanceNormalization",
      inputs: [x, "s", "b"],
      outputs: [y],
      attrs: { epsilon: 1e-5 },
    });
    const leaky = (x: string, y: string) => ({ opType: "LeakyRelu", inputs: [x], outputs: [y], attrs: { alpha: 0.01 } });
    const bytes = encodeModel({
      opset: 17,
      nodes: [
        // a block with a projected skip computed after its second convolution (as ResEnc exports
        // it): the Add goes into the skip's Conv → InstanceNorm, the main path its residual
        conv("x", "w1", "c1"),
        norm("c1", "n1"),
        leaky("n1", "h1"),
        conv("h1", "w2", "c2"),
        norm("c2", "n2"),
        conv("x", "ws", "cs", 1),
        norm("cs", "ns"),
        { opType: "Add", inputs: ["n2", "ns"], outputs: ["a1"] },
        leaky("a1", "y"),
        // an identity skip, no activation: fused, and its result a graph output
        conv("y", "w3", "c3"),
        norm("c3", "n3"),
        { opType: "Add", inputs: ["y", "n3"], outputs: ["z"] },
        // a broadcast operand [1, 4, 1, 1, 1]: fused, summed by a broadcasting add after the norm
        conv("z", "w4", "c4"),
        norm("c4", "n4"),
        { opType: "Add", inputs: ["n4", "bvec"], outputs: ["a4"] },
        leaky("a4", "q"),
        // the other operand made after the Conv by a plain Conv: not fused into the norm's pass — the
        // plain Conv takes the Add instead (fuseConvResidual: its other operand, n5, exists by then)
        conv("q", "w5", "c5"),
        norm("c5", "n5"),
        conv("q", "w6", "m", 1),
        { opType: "Add", inputs: ["n5", "m"], outputs: ["r"] },
      ],
      inputs: [{ name: "x", shape: [1, 2, 4, 5, 6] }],
      outputs: [{ name: "y" }, { name: "z" }, { name: "q" }, { name: "r" }],
      initializers: [
        ...Object.entries({ w1, w2, ws, w3, w4, w5, w6, bvec }).map(([name, v]) => ({ name, dims: v.shape, data: v.data })),
        { name: "s", dims: [4], data: s.data },
        { name: "b", dims: [4], data: b.data },
      ],
    });
    await againstOrt(t, bytes, randomTensor([1, 2, 4, 5, 6], 511), ["y", "z", "q", "r"], (name, model) =>
      t.deepEqual(
        model.lastRun!.nodeMs.map((n) => n.op),
        [
          "Conv+InstanceNormalization+leakyRelu",
          "Conv+InstanceNormalization",
          "Conv+InstanceNormalization+Add+leakyRelu",
          "Conv+InstanceNormalization+Add",
          "Conv+InstanceNormalization+Add+leakyRelu",
          "Conv+InstanceNormalization",
          "Conv+Add",
        ],
        name,
      ),
    );
  },
);

test.serial(
  "a residual Add (→ Relu) is fused into a plain Conv before it (SegResNet's conv2 → Add) where its other operand exists by then and the Conv alone feeds it, and equals onnxruntime's",
  async (t) => {
    const w1 = randomTensor([4, 2, 3, 3, 3], 521),
      w2 = randomTensor([4, 4, 3, 3, 3], 522),
      w3 = randomTensor([4, 4, 1, 1, 1], 523),
      bias = randomTensor([4], 524),
      chan = randomTensor([1, 4, 1, 1, 1], 525);
    const conv = (x: string, wt: string, y: string, k = 3, b?: string) => ({
      opType: "Conv",
      inputs: b ? [x, wt, b] : [x, wt],
      outputs: [y],
      attrs: { kernel_shape: [k, k, k], pads: k === 3 ? [1, 1, 1, 1, 1, 1] : [0, 0, 0, 0, 0, 0] },
    });
    const bytes = encodeModel({
      opset: 17,
      nodes: [
        conv("x", "w1", "a"),
        // fused, with the Add's Relu, and the Conv's bias: (a + bias + conv) → relu
        conv("a", "w2", "c1", 3, "bias"),
        { opType: "Add", inputs: ["c1", "a"], outputs: ["s1"] },
        { opType: "Relu", inputs: ["s1"], outputs: ["r1"] },
        // the other operand first: fused too
        conv("r1", "w2", "c2"),
        { opType: "Add", inputs: ["r1", "c2"], outputs: ["s2"] },
        // c3 has a second reader (the output q): not fused
        conv("s2", "w3", "c3", 1),
        { opType: "Add", inputs: ["c3", "s2"], outputs: ["s3"] },
        // a broadcasting operand [1, 4, 1, 1, 1]: fused, the sum by add() after the convolution
        conv("s3", "w2", "c4"),
        { opType: "Add", inputs: ["c4", "chan"], outputs: ["s4"] },
        // of two convolutions, the first cannot take the Add (the other's result is made after it); the second does
        conv("s4", "w3", "c5", 1),
        conv("s4", "w2", "c6"),
        { opType: "Add", inputs: ["c5", "c6"], outputs: ["y"] },
      ],
      inputs: [{ name: "x", shape: [1, 2, 4, 5, 6] }],
      outputs: [{ name: "y" }, { name: "c3" }, { name: "s4" }],
      initializers: [...Object.entries({ w1, w2, w3, bias, chan }).map(([name, v]) => ({ name, dims: v.shape, data: v.data }))],
    });
    await againstOrt(t, bytes, randomTensor([1, 2, 4, 5, 6], 526), ["y", "c3", "s4"], (name, model) =>
      t.deepEqual(
        model.lastRun!.nodeMs.map((n) => n.op),
        ["Conv", "Conv+Add+relu", "Conv+Add", "Conv", "Add", "Conv+Add", "Conv", "Conv+Add"],
        name,
      ),
    );
  },
);

test.serial("ONNX GroupNormalization (opset 18: γ, β per group) after a Conv is fused into it and equals onnxruntime's", async (t) => {
  const w1 = randomTensor([6, 2, 3, 3, 3], 531),
    gs = randomTensor([3], 532),
    gb = randomTensor([3], 533);
  const bytes = encodeModel({
    opset: 18,
    nodes: [
      { opType: "Conv", inputs: ["x", "w1"], outputs: ["c"], attrs: { kernel_shape: [3, 3, 3], pads: [1, 1, 1, 1, 1, 1] } },
      { opType: "GroupNormalization", inputs: ["c", "gs", "gb"], outputs: ["g"], attrs: { num_groups: 3, epsilon: 1e-5 } },
      { opType: "Relu", inputs: ["g"], outputs: ["y"] },
    ],
    inputs: [{ name: "x", shape: [1, 2, 4, 5, 6] }],
    outputs: [{ name: "y" }],
    initializers: [
      { name: "w1", dims: w1.shape, data: w1.data },
      { name: "gs", dims: [3], data: gs.data },
      { name: "gb", dims: [3], data: gb.data },
    ],
  });
  await againstOrt(t, bytes, randomTensor([1, 2, 4, 5, 6], 534), ["y"], (name, model) =>
    t.deepEqual(
      model.lastRun!.nodeMs.map((n) => n.op),
      ["Conv+GroupNormalization+relu"],
      name,
    ),
  );
});

test.serial(
  "Conv → InstanceNorm is fused only where the norm alone reads the convolution: a second reader of the raw output keeps it",
  async (t) => {
    const w1 = randomTensor([4, 2, 3, 3, 3], 401),
      w2 = randomTensor([4, 4, 1, 1, 1], 402),
      w3 = randomTensor([4, 4, 3, 3, 3], 405);
    const s = randomTensor([4], 403),
      b = randomTensor([4], 404);
    const bytes = encodeModel({
      opset: 17,
      nodes: [
        // c is read by the norm and by a 1×1×1 convolution: not fused (normalising c in place would change what the second one reads)
        { opType: "Conv", inputs: ["x", "w1"], outputs: ["c"], attrs: { kernel_shape: [3, 3, 3], pads: [1, 1, 1, 1, 1, 1] } },
        { opType: "InstanceNormalization", inputs: ["c", "s", "b"], outputs: ["n"], attrs: { epsilon: 1e-5 } },
        { opType: "Conv", inputs: ["c", "w2"], outputs: ["m"], attrs: { kernel_shape: [1, 1, 1] } },
        { opType: "Add", inputs: ["n", "m"], outputs: ["y"] },
        // d is read by its norm alone (no activation after it): fused, and its result is a graph output
        { opType: "Conv", inputs: ["y", "w3"], outputs: ["d"], attrs: { kernel_shape: [3, 3, 3], pads: [1, 1, 1, 1, 1, 1] } },
        { opType: "InstanceNormalization", inputs: ["d", "s", "b"], outputs: ["z"], attrs: { epsilon: 1e-5 } },
      ],
      inputs: [{ name: "x", shape: [1, 2, 4, 5, 6] }],
      outputs: [{ name: "y" }, { name: "z" }],
      initializers: [
        { name: "w1", dims: w1.shape, data: w1.data },
        { name: "w2", dims: w2.shape, data: w2.data },
        { name: "w3", dims: w3.shape, data: w3.data },
        { name: "s", dims: [4], data: s.data },
        { name: "b", dims: [4], data: b.data },
      ],
    });
    await againstOrt(t, bytes, randomTensor([1, 2, 4, 5, 6], 406), ["y", "z"], (name, model) =>
      t.deepEqual(
        model.lastRun!.nodeMs.map((n) => n.op),
        // (the 1×1×1 convolution takes the Add: its other operand, n, exists by then)
        ["Conv", "InstanceNormalization", "Conv+Add", "Conv+InstanceNormalization"],
        name,
      ),
    );
  },
);
