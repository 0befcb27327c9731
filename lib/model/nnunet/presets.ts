/**
 * nnU-Net v2's 3d_fullres networks at their real widths for a CT of BHSD's shape (six stages of
 * 32, 64, 128, 256, 320, 320 features; 1×3×3 kernels in the first, anisotropic stage; strides
 * 1×2×2 until the planes are fine enough, then 2×2×2), as dynamic-network-architectures builds
 * them: PlainConvUNet (two convs a stage) and the ResEnc-M preset (1, 3, 4, 6, 6, 6 residual
 * blocks, one conv per decoder stage). The bench's real networks and the precision tests use them.
 */
import { encodeModel } from "../onnx-proto.js";
import { buildNetwork, type Architecture } from "./network.js";

const FULLRES_BASE = {
  inputChannels: 1,
  numClasses: 6,
  nStages: 6,
  features: [32, 64, 128, 256, 320, 320],
  kernels: [
    [1, 3, 3],
    [3, 3, 3],
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
  dims: 3 as const,
  convBias: true,
  norm: { eps: 1e-5, affine: true, runningStats: false },
  nonlin: { op: "LeakyRelu" as const, alpha: 0.01 },
  nonlinFirst: false,
  dropout: false,
  stemChannels: 32,
};

/** nnU-Net's PlainConvUNet, 3d_fullres widths. */
export const PLAIN_CONV_UNET_FULLRES: Architecture = {
  ...FULLRES_BASE,
  networkClass: "PlainConvUNet",
  perStage: [2, 2, 2, 2, 2, 2],
  perStageDecoder: [2, 2, 2, 2, 2],
};

/** nnU-Net's ResEnc-M preset (BasicBlockD), 3d_fullres widths. */
export const RESENC_M_FULLRES: Architecture = {
  ...FULLRES_BASE,
  networkClass: "ResidualEncoderUNet",
  perStage: [1, 3, 4, 6, 6, 6],
  perStageDecoder: [1, 1, 1, 1, 1],
};

/**
 * nnU-Net's PlainConvUNet as its planner makes the `2d` configuration for BHSD-like CT (512 × 512
 * slices): patch 512 × 512, 8 stages of 32…512 features (min(32·2^k, 512)), 3 × 3 kernels, 2 × 2
 * strides, two convs per stage.
 */
export const PLAIN_CONV_UNET_2D: Architecture = {
  ...FULLRES_BASE,
  dims: 2,
  networkClass: "PlainConvUNet",
  nStages: 8,
  features: [32, 64, 128, 256, 512, 512, 512, 512],
  kernels: Array.from({ length: 8 }, () => [3, 3]),
  strides: [[1, 1], ...Array.from({ length: 7 }, () => [2, 2])],
  perStage: [2, 2, 2, 2, 2, 2, 2, 2],
  perStageDecoder: [2, 2, 2, 2, 2, 2, 2],
};

/**
 * The network of `a` as ONNX bytes (opset 17, input [1, C, d, h, w]; a 2-D one's [1, C, h, w]) with random weights drawn from
 * `random` (uniform in [0, 1)): He-scaled convolution weights, norm weights about 1, biases about
 * 0 — for measuring what a network costs and comparing engines on it, not for predictions.
 */
export function randomWeightsModel(a: Architecture, random: () => number): Uint8Array {
  const g = buildNetwork(a);
  const initializers = g.params.map((p) => {
    const n = p.shape.reduce((x, y) => x * y, 1);
    const fan = p.shape.length > 1 ? p.shape.slice(1).reduce((x, y) => x * y, 1) : 1;
    const s = p.shape.length > 1 ? Math.sqrt(2 / fan) : 0.1;
    const one = p.shape.length === 1 && p.names[0]!.endsWith("weight") ? 1 : 0;
    return { name: p.names[0]!, dims: p.shape, data: new Float32Array(n).map(() => (random() * 2 - 1) * s + one) };
  });
  return encodeModel({
    opset: 17,
    nodes: g.nodes,
    inputs: [{ name: g.input, shape: a.dims === 2 ? [1, a.inputChannels, "h", "w"] : [1, a.inputChannels, "d", "h", "w"] }],
    outputs: [{ name: g.output }],
    initializers: [...initializers, ...g.constants],
  });
}
