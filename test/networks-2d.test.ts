/**
 * 1-D and 2-D networks (test/fixtures/networks-2d/, made by make.py there from nnU-Net's and
 * MONAI's own code with `Conv2d` / `spatial_dims=2`, and two networks of plain torch.nn layers for
 * the attributes the U-Nets leave at their defaults): bhsd runs them on its 3-D kernels and must
 * give PyTorch's output, and onnxruntime's on a second input shape, on every backend; a node of the
 * wrong rank or with attributes of mixed lengths is refused naming it.
 */
import test from "ava";
import { createHash } from "node:crypto";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import ort from "onnxruntime-node";
import { loadModel, readNpy, setBackend } from "../lib/index.js";
import { encodeModel } from "../lib/model/onnx-proto.js";
import { backendsUnderTest, ROOT } from "./helpers.js";
import { randomTensor, scaleDiff } from "./ort.js";

const DIR = join(ROOT, "test", "fixtures", "networks-2d");
interface Entry {
  file: string;
  input: string;
  expected: string;
  input_shape: number[];
  output_shape: number[];
  dynamic_spatial_axes: boolean;
}
const manifest = JSON.parse(readFileSync(join(DIR, "manifest.json"), "utf8")) as {
  networks: Record<string, Entry>;
  sha256: Record<string, string>;
};
function fixture(file: string): string {
  const path = join(DIR, file);
  const got = createHash("sha256").update(readFileSync(path)).digest("hex");
  if (got !== manifest.sha256[file]) throw new Error(`${path} has sha256 ${got}, manifest.json says ${manifest.sha256[file]}`);
  return path;
}

/** Every network of the fixture folder; a second spatial shape for those exported with dynamic axes (onnxruntime is its reference). */
const NETWORKS: Record<string, number[] | null> = {
  plainconvunet2d: [48, 16], // nnU-Net v2's 2d configuration
  resencunet2d: [16, 40],
  basicunet2d: [48, 32],
  monaiunet2d: [24, 40],
  attentionunet2d: [40, 24],
  segresnet2d: [24, 56], // bilinear Resize over 4-D tensors, GroupNorm from its exporter pattern
  dynunet2d: [40, 40],
  unetr2d: null, // the position embedding fixes the input size
  misc2d: [23, 41], // dilation, groups, ceil_mode, output_padding, nearest and align_corners upsampling
  net1d: [56], // Conv1d, BatchNorm1d, pools, ConvTranspose1d, linear Resize over 3-D tensors
};

test("every 1-D and 2-D network in the manifest is tested here", (t) => {
  t.deepEqual(Object.keys(manifest.networks).sort(), Object.keys(NETWORKS).sort());
  for (const m of Object.values(manifest.networks)) for (const f of [m.file, m.input, m.expected]) t.notThrows(() => fixture(f), f);
});

async function ortOutput(file: string, x: { data: Float32Array; shape: number[] }): Promise<{ data: Float32Array; dims: number[] }> {
  const session = await ort.InferenceSession.create(file, { intraOpNumThreads: 1 });
  try {
    const out = (await session.run({ input: new ort.Tensor("float32", x.data, x.shape) })).output!;
    return { data: out.data as Float32Array, dims: [...out.dims] };
  } finally {
    await session.release();
  }
}

for (const name of Object.keys(NETWORKS)) {
  test(`onnxruntime-node: ${name} equals PyTorch (fixture check)`, async (t) => {
    const m = manifest.networks[name]!;
    const x = await readNpy(fixture(m.input)),
      want = await readNpy(fixture(m.expected));
    const out = await ortOutput(fixture(m.file), { data: x.data as Float32Array, shape: x.shape });
    t.deepEqual(out.dims, m.output_shape);
    t.true(scaleDiff(out.data, want.data) <= 1e-5);
  });
}

for (const { name: backend } of backendsUnderTest()) {
  for (const [name, second] of Object.entries(NETWORKS)) {
    test.serial(
      `${backend}: ${name} equals PyTorch, its shapes are inferred at load${second ? ", and a second shape equals onnxruntime" : ""}`,
      async (t) => {
        setBackend(backend);
        const m = manifest.networks[name]!;
        const x = await readNpy(fixture(m.input)),
          want = await readNpy(fixture(m.expected));
        const model = await loadModel(fixture(m.file), { inputShapes: { input: x.shape } });
        const y = await model.run({ data: x.data as Float32Array, shape: x.shape });
        t.deepEqual(y.shape, m.output_shape);
        const d = scaleDiff(y.data, want.data);
        t.true(d <= 1e-5, `max |bhsd − PyTorch| is ${d} of max |PyTorch|`);
        // every value the run computed has the shape inferred for it at load
        let compared = 0;
        for (const [v, s] of model.lastRun!.shapes)
          if (model.valueShapes!.has(v)) {
            compared++;
            t.deepEqual(model.valueShapes!.get(v), s, `value ${v}`);
          }
        t.true(compared >= 0.95 * model.lastRun!.shapes.size);
        if (name === "plainconvunet2d") t.is(model.lastRun!.concatsInPlace, 3, "the decoder's skip Concats are written in place");
        if (second) {
          const x2 = randomTensor([1, 1, ...second], 2000 + second[0]!);
          const want2 = await ortOutput(fixture(m.file), x2);
          const free = await loadModel(fixture(m.file)); // symbolic spatial axes: one model, both shapes
          for (const [xi, wi] of [
            [x2, want2.data],
            [x, want.data],
          ] as const) {
            const yi = await free.run({ data: xi.data as Float32Array, shape: xi.shape });
            t.deepEqual(yi.shape.slice(2), xi.shape.slice(2));
            const di = scaleDiff(yi.data, wi);
            t.true(di <= 1e-5, `input [${xi.shape}]: max |bhsd − reference| is ${di} of its max`);
          }
          free.dispose();
        }
        model.dispose();
      },
    );
  }
}

test.serial("a 2-D network run on an input of another rank is refused naming the node and the ranks", async (t) => {
  const m = manifest.networks.plainconvunet2d!;
  const model = await loadModel(fixture(m.file));
  const e = await t.throwsAsync(model.run({ data: new Float32Array(2 * 32 * 48), shape: [1, 1, 2, 32, 48] }));
  t.regex(e!.message, /expects \[1, 1, H, W\]/);
  // where the graph says nothing of the rank (symbolic input), the node itself refuses, at load for
  // the shapes given, else at run time
  const w = randomTensor([2, 1, 3, 3], 50);
  const bytes = encodeModel({
    opset: 17,
    nodes: [{ opType: "Conv", name: "c", inputs: ["x", "w"], outputs: ["y"], attrs: { kernel_shape: [3, 3] } }],
    inputs: [{ name: "x", shape: ["a", "b", "c", "d", "e"] }],
    outputs: [{ name: "y" }],
    initializers: [{ name: "w", dims: w.shape, data: w.data }],
  });
  const shaped = await t.throwsAsync(loadModel(bytes, { inputShapes: { x: [1, 1, 2, 8, 8] } }));
  t.regex(shaped!.message, /node c \(Conv\).*input \[1,1,2,8,8\] must be \[N, C, H, W\] \(rank 4\) for this 2-D node/s);
  const free = await loadModel(bytes);
  const run = await t.throwsAsync(free.run({ data: new Float32Array(128), shape: [1, 1, 2, 8, 8] }));
  t.regex(run!.message, /c.*X \[1,1,2,8,8\] must be \[N, C, H, W\] \(rank 4\) for this 2-D node/s);
});

/** A one-Conv model with these attributes and weights. */
function convModel(attrs: Record<string, number[]>, wDims: number[], xShape: number[]): Uint8Array {
  return encodeModel({
    opset: 17,
    nodes: [{ opType: "Conv", name: "c", inputs: ["x", "w"], outputs: ["y"], attrs }],
    inputs: [{ name: "x", shape: xShape }],
    outputs: [{ name: "y" }],
    initializers: [{ name: "w", dims: wDims, data: new Float32Array(wDims.reduce((a, b) => a * b, 1)) }],
  });
}

test("a spatial node whose attributes disagree on its number of axes, or has four, is refused at load naming it", async (t) => {
  const mixed = await t.throwsAsync(loadModel(convModel({ kernel_shape: [3, 3], strides: [1, 1, 1] }, [2, 1, 3, 3], [1, 1, 8, 8])));
  t.regex(mixed!.message, /node c \(Conv\): attribute strides = \[1,1,1\] must have 2 values for a 2-D Conv/);
  const pads = await t.throwsAsync(loadModel(convModel({ kernel_shape: [3], pads: [1, 1, 1, 1] }, [2, 1, 3], [1, 1, 8])));
  t.regex(pads!.message, /attribute pads = \[1,1,1,1\] must have 2 values for a 1-D Conv/);
  const four = await t.throwsAsync(loadModel(convModel({ kernel_shape: [1, 1, 3, 3] }, [2, 1, 1, 1, 3, 3], [1, 1, 2, 2, 8, 8])));
  t.regex(four!.message, /node c \(Conv\): 4 spatial axes/);
  // weights of another rank than the kernel's
  const w = await t.throwsAsync(loadModel(convModel({ kernel_shape: [3, 3] }, [2, 1, 3, 3, 3], [1, 1, 8, 8])));
  t.regex(w!.message, /weight has shape \[2,1,3,3,3\]; this 2-D node takes \[Co, C, kH, kW\]/);
});

test.serial("a 2-D convolution without kernel_shape takes its axes from its weights, and equals onnxruntime", async (t) => {
  setBackend("ts");
  const w = randomTensor([3, 1, 3, 4], 51),
    x = randomTensor([1, 1, 9, 7], 52);
  const bytes = encodeModel({
    opset: 17,
    nodes: [{ opType: "Conv", name: "c", inputs: ["x", "w"], outputs: ["y"], attrs: { pads: [1, 0, 1, 2], strides: [2, 1] } }],
    inputs: [{ name: "x", shape: x.shape }],
    outputs: [{ name: "y" }],
    initializers: [{ name: "w", dims: w.shape, data: w.data }],
  });
  const model = await loadModel(bytes);
  const y = await model.run(x);
  const session = await ort.InferenceSession.create(bytes);
  const want = (await session.run({ x: new ort.Tensor("float32", x.data, x.shape) })).y!;
  await session.release();
  t.deepEqual(y.shape, [...want.dims]);
  t.true(scaleDiff(y.data, want.data as Float32Array) <= 1e-6);
  model.dispose();
});

test.serial(
  "a Concat on axis −4 of 4-D tensors (the batch axis there) is not written in place as channels; equals onnxruntime",
  async (t) => {
    for (const backend of backendsUnderTest().map((b) => b.name)) {
      setBackend(backend);
      const w1 = randomTensor([2, 1, 3, 3], 61),
        w2 = randomTensor([2, 1, 3, 3], 62),
        x = randomTensor([1, 1, 4, 4], 63);
      for (const axis of [-4, 0, 1]) {
        const bytes = encodeModel({
          opset: 17,
          nodes: [
            { opType: "Conv", name: "a", inputs: ["x", "w1"], outputs: ["a"], attrs: { kernel_shape: [3, 3], pads: [1, 1, 1, 1] } },
            { opType: "Conv", name: "b", inputs: ["x", "w2"], outputs: ["b"], attrs: { kernel_shape: [3, 3], pads: [1, 1, 1, 1] } },
            { opType: "Concat", name: "cat", inputs: ["a", "b"], outputs: ["y"], attrs: { axis } },
          ],
          inputs: [{ name: "x", shape: x.shape }],
          outputs: [{ name: "y" }],
          initializers: [
            { name: "w1", dims: w1.shape, data: w1.data },
            { name: "w2", dims: w2.shape, data: w2.data },
          ],
        });
        const model = await loadModel(bytes);
        const y = await model.run(x);
        const session = await ort.InferenceSession.create(bytes);
        const want = (await session.run({ x: new ort.Tensor("float32", x.data, x.shape) })).y!;
        await session.release();
        t.deepEqual(y.shape, [...want.dims], `${backend} axis ${axis}`);
        t.deepEqual(model.valueShapes!.get("y"), [...want.dims], `${backend} axis ${axis}: inferred`);
        t.true(scaleDiff(y.data, want.data as Float32Array) <= 1e-6, `${backend} axis ${axis}`);
        model.dispose();
      }
    }
  },
);
