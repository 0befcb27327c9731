/**
 * Several CT windows as a network's input channels (config.normalization as a list, one per
 * channel): a 2-D network taking brain, subdural and bone windows, against its labels computed in
 * numpy and PyTorch by test/fixtures/windows/make.py.
 */
import test from "ava";
import { copyFileSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import {
  encodeModel,
  loadModel,
  readNifti,
  readNpy,
  segment,
  setBackend,
  volumeFromArray,
  writeNifti,
  type Normalization,
} from "../lib/index.js";
import { backendsUnderTest, bhsdSync, ROOT } from "./helpers.js";
import { checkedFolder } from "./paths.js";
import { compareLabels as compare } from "./ort.js";

const DIR = join(ROOT, "test", "fixtures", "windows");
const { file } = checkedFolder(DIR);
const { windows } = JSON.parse(readFileSync(file("windows.json"), "utf8")) as { windows: [number, number][] };
const NORMS: Normalization[] = windows.map(([lo, hi]) => ({ type: "window", lower: lo, upper: hi, center: lo, scale: hi - lo }));
const CLASSES = { "0": "background", "1": "EDH", "2": "IPH", "3": "IVH", "4": "SAH", "5": "SDH" };
const config = (normalization: Normalization | Normalization[]) => ({
  classes: CLASSES,
  spatialDims: 2 as const,
  patchSize: [48, 40] as [number, number],
  targetSpacing: null,
  normalization,
});

for (const { name: backend } of backendsUnderTest())
  test.serial(`${backend}: three windows stacked as channels give PyTorch's labels`, async (t) => {
    setBackend(backend);
    const [ct, want, margin] = await Promise.all(["ct", "labels", "margin"].map((f) => readNpy(file(`${f}.npy`))));
    const vol = volumeFromArray(ct!.data as Float32Array, ct!.shape, [5, 0.45, 0.45]);
    const m = await loadModel(file("three_windows.onnx"), config(NORMS));
    try {
      const { labels } = await segment(vol, m, { cleanup: false });
      const { compared, differ } = compare(labels.data, want!.data as Uint8Array, margin!.data as Float32Array);
      t.true(compared > 0.99 * labels.data.length, `${compared} of ${labels.data.length} compared`);
      t.is(differ, 0);
      // the channels in another order give other labels: the fixture tells the order
      (m as { config: object }).config = { ...m.config, normalization: [NORMS[1]!, NORMS[0]!, NORMS[2]!] };
      const { labels: swapped } = await segment(vol, m, { cleanup: false });
      t.true(compare(swapped.data, want!.data as Uint8Array, margin!.data as Float32Array).differ > 0);
    } finally {
      m.dispose();
    }
  });

test("the normalisations must match the model's input channels, named in the error", async (t) => {
  const ct = await readNpy(file("ct.npy"));
  const vol = volumeFromArray(ct.data as Float32Array, ct.shape, [5, 0.45, 0.45]);
  for (const n of [NORMS[0]!, NORMS.slice(0, 2)]) {
    const m = await loadModel(file("three_windows.onnx"), config(n));
    try {
      await t.throwsAsync(segment(vol, m), {
        instanceOf: TypeError,
        message: /a list of 3 normalisations, one per input channel the model takes .* for model\.config\.normalization/,
      });
    } finally {
      m.dispose();
    }
  }
  await t.throwsAsync(loadModel(file("three_windows.onnx"), config(Array(17).fill(NORMS[0]!))), {
    message: /one per input channel: 1 to 16 of them, got 17/,
  });
  await t.throwsAsync(loadModel(file("three_windows.onnx"), config([NORMS[0]!, { type: "window" } as Normalization])), {
    message: /normalization \{"type":"window"\} is not one of/,
  });
});

/** A 1×1×1 convolution of `cin` channels to 6 classes: class k weighs channel c by w[k][c]. */
const pointwise = (w: number[][], b: number[]) =>
  encodeModel({
    opset: 17,
    nodes: [{ opType: "Conv", inputs: ["x", "w", "b"], outputs: ["y"], attrs: { kernel_shape: [1, 1, 1] } }],
    inputs: [{ name: "x", shape: [1, w[0]!.length, "D", "H", "W"] }],
    outputs: [{ name: "y" }],
    initializers: [
      { name: "w", dims: [w.length, w[0]!.length, 1, 1, 1], data: Float32Array.from(w.flat()) },
      { name: "b", dims: [b.length], data: Float32Array.from(b) },
    ],
  });

for (const late of [false, true])
  test.serial(
    `3-D, resampled${late ? " after normalising (v1)" : ""}: each window its own channel, resampled as a one-channel image is`,
    async (t) => {
      setBackend(backendsUnderTest()[0]!.name);
      const ct = await readNpy(file("ct.npy"));
      const vol = volumeFromArray(ct.data as Float32Array, ct.shape, [5, 0.45, 0.45]);
      const w = [
        [-4, 0, 4, -10, -10, -10],
        [-3, 1, 5, -10, -10, -10],
      ];
      // (on a window's [0, 1] the three lines take turns: 0 below, 1 between, 2 above)
      const bias = [2, 0.9, -2, -5, -5, -5];
      const cfg = (normalization: Normalization | Normalization[]) => ({
        classes: CLASSES,
        patchSize: [4, 32, 32] as [number, number, number],
        targetSpacing: [4, 0.9, 0.9] as [number, number, number],
        normalizeAfterResampling: late,
        normalization,
      });
      const run = async (bytes: Uint8Array, n: Normalization | Normalization[]) => {
        const m = await loadModel(bytes, cfg(n));
        try {
          const r = await segment(vol, m, { cleanup: false });
          t.not(r.report.modelGrid.dims.join(), ct.shape.join(), "resampled");
          return r.labels.data;
        } finally {
          m.dispose();
        }
      };
      // (w[c][k]: class k's weight of channel c; the Conv's weight is [k][c])
      const byClass = (cols: number[][]) => bias.map((_, k) => cols.map((col) => col[k]!));
      // channel c of a two-channel model with the other's weights 0 is the one-channel model on window c
      for (const c of [0, 1]) {
        const one = await run(pointwise(byClass([w[c]!]), bias), NORMS[c]!);
        const zeroed = w.map((col, j) => (j === c ? col : col.map(() => 0)));
        const two = await run(pointwise(byClass(zeroed), bias), [NORMS[0]!, NORMS[1]!]);
        t.deepEqual(two, one, `channel ${c}`);
        t.true(new Set(one).size > 2, "labels of several classes");
      }
      // and both channels count: the labels differ from either one's
      const both = await run(pointwise(byClass(w), bias), [NORMS[0]!, NORMS[1]!]);
      t.notDeepEqual(both, await run(pointwise(byClass([w[0]!]), bias), NORMS[0]!));
    },
  );

for (const { name: backend } of backendsUnderTest())
  for (const [edge, layout] of [
    ["replicate", "slice-major"],
    ["zero", "channel-major"],
  ] as const)
    test.serial(
      `${backend}: 2.5-D, each slice's three windows and its neighbours' (${edge} edges, ${layout}) give PyTorch's labels`,
      async (t) => {
        setBackend(backend);
        const [ct, want, margin] = await Promise.all(
          ["ct", `context_${edge}_labels`, `context_${edge}_margin`].map((f) => readNpy(file(`${f}.npy`))),
        );
        const vol = volumeFromArray(ct!.data as Float32Array, ct!.shape, [5, 0.45, 0.45]);
        const m = await loadModel(file("context.onnx"), { ...config(NORMS), contextSlices: 1, contextEdge: edge, contextLayout: layout });
        try {
          const { labels } = await segment(vol, m, { cleanup: false });
          const { compared, differ } = compare(labels.data, want!.data as Uint8Array, margin!.data as Float32Array);
          t.true(compared > 0.99 * labels.data.length, `${compared} of ${labels.data.length} compared`);
          t.is(differ, 0);
          // the other edge or layout gives other labels: the fixture tells them apart
          const other = edge === "zero" ? { contextEdge: "replicate" as const } : { contextLayout: "channel-major" as const };
          (m as { config: object }).config = { ...m.config, ...other };
          const { labels: wrong } = await segment(vol, m, { cleanup: false });
          t.true(compare(wrong.data, want!.data as Uint8Array, margin!.data as Float32Array).differ > 0);
        } finally {
          m.dispose();
        }
      },
    );

test("contextSlices: checked against the model's channels, 2-D only, bounded", async (t) => {
  const ct = await readNpy(file("ct.npy"));
  const vol = volumeFromArray(ct.data as Float32Array, ct.shape, [5, 0.45, 0.45]);
  const m = await loadModel(file("context.onnx"), { ...config(NORMS), contextSlices: 2 });
  try {
    await t.throwsAsync(segment(vol, m), {
      instanceOf: TypeError,
      message: /the 9 input channels the model takes \(3 × 5 = 15\) for model\.config\.contextSlices/,
    });
  } finally {
    m.dispose();
  }
  // a config replaced after load is checked again by segment, before anything is allocated
  const swapped = await loadModel(file("context.onnx"), { ...config(NORMS), contextSlices: 1 });
  try {
    for (const [change, message] of [
      [{ contextSlices: 10_000 }, /contextSlices must be a whole number of slices either side from 0 to 8/],
      [{ normalization: [] }, /one per input channel: 1 to 16 of them, got 0/],
    ] as const) {
      (swapped as { config: object }).config = { ...swapped.config, ...change };
      await t.throwsAsync(segment(vol, swapped), { message });
    }
  } finally {
    swapped.dispose();
  }
  await t.throwsAsync(loadModel(file("context.onnx"), { ...config(NORMS), contextSlices: 1.5 }), {
    message: /contextSlices must be a whole number/,
  });
  await t.throwsAsync(loadModel(file("context.onnx"), { ...config(NORMS), contextSlices: 8 }), {
    message: /makes 51 input channels; at most 32/,
  });
  await t.throwsAsync(loadModel(pointwise([[1], [2], [3], [4], [5], [6]], [0, 0, 0, 0, 0, 0]), { classes: CLASSES, contextSlices: 1 }), {
    message: /contextSlices \(neighbouring slices as channels\) is for a 2-D model/,
  });
  await t.throwsAsync(loadModel(file("context.onnx"), { ...config(NORMS), contextEdge: "wrap" as "zero" }), {
    message: /contextEdge must be/,
  });
});

test.serial("bhsd segment runs a 2.5-D three-window model from its JSON sidecar: PyTorch's labels in the NIfTI it writes", async (t) => {
  const dir = mkdtempSync(join(tmpdir(), "bhsd-windows-cli-"));
  try {
    copyFileSync(file("context.onnx"), join(dir, "context.onnx"));
    writeFileSync(join(dir, "context.json"), JSON.stringify({ ...config(NORMS), contextSlices: 1 }));
    const [ct, want, margin] = await Promise.all(
      ["ct", "context_replicate_labels", "context_replicate_margin"].map((f) => readNpy(file(`${f}.npy`))),
    );
    await writeNifti(join(dir, "ct.nii.gz"), volumeFromArray(ct!.data as Float32Array, ct!.shape, [5, 0.45, 0.45]));
    const r = bhsdSync(
      ["segment", join(dir, "ct.nii.gz"), "--model", join(dir, "context.onnx"), "--out", join(dir, "labels.nii.gz"), "--quiet"],
      120_000,
    );
    t.is(r.status, 0, r.stderr);
    const got = Uint8Array.from((await readNifti(join(dir, "labels.nii.gz"))).data);
    const { compared, differ } = compare(got, want!.data as Uint8Array, margin!.data as Float32Array);
    t.true(compared > 0.99 * got.length);
    t.is(differ, 0);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
