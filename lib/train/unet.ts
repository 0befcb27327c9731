/**
 * An nnU-Net-style PlainConvUNet as an ONNX graph with random weights, for timing: per stage two
 * (Conv → InstanceNorm → LeakyReLU) blocks, the first strided; ConvTranspose up-sampling, skip
 * Concat, a 1×1×1 head. Kernel and stride per stage as nnU-Net plans them for thick-slice CT.
 */
import { encodeModel } from "../model/onnx-proto.js";
import { prng as rng } from "../random.js";

export interface UNetSpec {
  features: number[];
  kernels: [number, number, number][];
  strides: [number, number, number][];
  inChannels: number;
  classes: number;
}

/** nnU-Net 3d_fullres for 0.49×0.49×5 mm CT: 32-64-128-256-320-320, 1×3×3 kernels until z is reached. */
export const NNUNET_FULLRES: UNetSpec = {
  features: [32, 64, 128, 256, 320, 320],
  kernels: [
    [1, 3, 3],
    [1, 3, 3],
    [3, 3, 3],
    [3, 3, 3],
    [3, 3, 3],
    [3, 3, 3],
  ],
  strides: [
    [1, 1, 1],
    [1, 2, 2],
    [1, 2, 2],
    [2, 2, 2],
    [2, 2, 2],
    [1, 2, 2],
  ],
  inChannels: 1,
  classes: 6,
};

/** A small U-Net for the demo: 4 stages (8, 16, 32, 64), 1×3×3 first stage, like the plainunet fixture. */
export const DEMO_UNET: UNetSpec = {
  features: [8, 16, 32, 64],
  kernels: [
    [1, 3, 3],
    [3, 3, 3],
    [3, 3, 3],
    [3, 3, 3],
  ],
  strides: [
    [1, 1, 1],
    [1, 2, 2],
    [2, 2, 2],
    [2, 2, 2],
  ],
  inChannels: 1,
  classes: 6,
};

/**
 * The demo's layout with other widths: a 1×3×3 first stage at full resolution, then 3×3×3 stages,
 * the second halving the plane only and each further one all three axes (thick slices first).
 */
export function demoSpec(features: number[]): UNetSpec {
  if (features.length < 2 || features.some((f) => !Number.isInteger(f) || f < 1 || f > 1024))
    throw new TypeError(`Expected 2 or more stage widths, integers 1–1024, for features but received ${JSON.stringify(features)}`);
  return {
    features,
    kernels: features.map((_, i) => (i === 0 ? [1, 3, 3] : [3, 3, 3])),
    strides: features.map((_, i) => (i === 0 ? [1, 1, 1] : i === 1 ? [1, 2, 2] : [2, 2, 2])),
    inChannels: 1,
    classes: 6,
  };
}

export function buildUNet(spec: UNetSpec, seed = 1): Uint8Array {
  const r = rng(seed);
  const nodes: Parameters<typeof encodeModel>[0]["nodes"] = [];
  const inits: { name: string; dims: number[]; data: Float32Array }[] = [];
  let id = 0;
  const param = (dims: number[], fanIn: number) => {
    const name = `p${id++}`;
    const s = Math.sqrt(2 / fanIn);
    inits.push({ name, dims, data: new Float32Array(dims.reduce((a, b) => a * b, 1)).map(() => (r() * 2 - 1) * s) });
    return name;
  };
  const ones = (n: number, v: number) => {
    const name = `p${id++}`;
    inits.push({ name, dims: [n], data: new Float32Array(n).fill(v) });
    return name;
  };
  const block = (x: string, cin: number, cout: number, k: [number, number, number], s: [number, number, number]) => {
    const w = param([cout, cin, ...k], cin * k[0] * k[1] * k[2]),
      b = ones(cout, 0);
    const c = `t${id++}`,
      n = `t${id++}`,
      a = `t${id++}`;
    nodes.push({
      opType: "Conv",
      inputs: [x, w, b],
      outputs: [c],
      attrs: { kernel_shape: k, strides: s, pads: [...k.map((q) => (q - 1) / 2), ...k.map((q) => (q - 1) / 2)] },
    });
    nodes.push({ opType: "InstanceNormalization", inputs: [c, ones(cout, 1), ones(cout, 0)], outputs: [n], attrs: { epsilon: 1e-5 } });
    nodes.push({ opType: "LeakyRelu", inputs: [n], outputs: [a], attrs: { alpha: 0.01 } });
    return a;
  };
  let x = "image",
    cin = spec.inChannels;
  const skips: string[] = [];
  spec.features.forEach((f, i) => {
    x = block(x, cin, f, spec.kernels[i]!, spec.strides[i]!);
    x = block(x, f, f, spec.kernels[i]!, [1, 1, 1]);
    cin = f;
    skips.push(x);
  });
  for (let i = spec.features.length - 2; i >= 0; i--) {
    const f = spec.features[i]!,
      st = spec.strides[i + 1]!;
    const up = `t${id++}`,
      cat = `t${id++}`;
    nodes.push({
      opType: "ConvTranspose",
      inputs: [x, param([cin, f, ...st], cin), ones(f, 0)],
      outputs: [up],
      attrs: { kernel_shape: st, strides: st },
    });
    nodes.push({ opType: "Concat", inputs: [up, skips[i]!], outputs: [cat], attrs: { axis: 1 } });
    x = block(cat, 2 * f, f, spec.kernels[i]!, [1, 1, 1]);
    x = block(x, f, f, spec.kernels[i]!, [1, 1, 1]);
    cin = f;
  }
  nodes.push({
    opType: "Conv",
    inputs: [x, param([spec.classes, cin, 1, 1, 1], cin), ones(spec.classes, 0)],
    outputs: ["logits"],
    attrs: { kernel_shape: [1, 1, 1] },
  });
  return encodeModel({
    opset: 17,
    nodes,
    inputs: [{ name: "image", shape: [1, spec.inChannels, "D", "H", "W"] }],
    outputs: [{ name: "logits" }],
    initializers: inits,
  });
}
