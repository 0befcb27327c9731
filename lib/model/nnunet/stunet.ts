/**
 * STU-Net (Huang et al., 2023; github.com/uni-medical/STU-Net: the scalable U-Net pre-trained on
 * TotalSegmentator and fine-tuned on other tasks) as its nnU-Net trainers build it, v1
 * (`STUNetTrainer_{small,base,large,huge}[_ft|_ep2k|_ep4k]` under nnUNet-1.7.1) and v2
 * (`STUNetTrainer…` under nnUNet-2.2). The network: six stages of residual blocks (conv → instance
 * norm → LeakyReLU → conv → instance norm, plus the input — through a strided 1×1 convolution in a
 * stage's first block — then LeakyReLU), the first block of each stage strided by the plans' pooling;
 * a decoder whose stage starts with nearest-neighbour up-sampling and a 1×1 convolution, the skip
 * concatenated after; a 1×1 head per decoder stage, the last of which is the output (the others are
 * deep supervision's, read past).
 *
 * The widths, depths, kernels and classes come from the weights' shapes; the strides, which the
 * weights cannot show, from the plans as the trainers take them: the first five of the stage's
 * pool_op_kernel_sizes (v2: after its leading [1, 1, 1]), padded with [1, 1, 1] to five.
 *
 * The up-sampling's 1×1 convolution runs before the nearest-neighbour copy, not after: each output
 * voxel is the same dot product of the same input voxel's channels, so the values are PyTorch's
 * bit for bit at a stride's product fewer multiply-adds.
 */
import { GraphBuilder } from "../monai/layers.js";
import { CheckpointError, TensorRef } from "./checkpoint.js";
import type { NetworkGraph } from "./network.js";
import { brief } from "../../is.js";

/** STU-Net's trainers (and users' subclasses that keep the name as prefix). */
export const STUNET_TRAINER = /^STUNetTrainer/;

/** STU-Net's stages: the trainers fix five poolings. */
const POOLS = 5;

export interface StunetBlock {
  path: string;
  cin: number;
  cout: number;
  kernel: number[];
  stride: number[];
  /** The strided 1×1 convolution of the input (conv3: use_1x1conv). */
  projection: boolean;
}

export interface STUNetArchitecture {
  networkClass: "STUNet";
  dims: 3;
  inputChannels: number;
  numClasses: number;
  /** Channels of each of the six stages. */
  features: number[];
  /** Residual blocks in each encoder stage (the decoder's mirror them). */
  depth: number[];
  /** The five poolings, as the trainers take them from the plans. */
  strides: number[][];
  encoder: StunetBlock[][];
  decoder: StunetBlock[][];
}

const err = (where: string, msg: string) => new CheckpointError(`${where}: ${msg}`);

/** Whether a state_dict is STU-Net's. */
export function isSTUNet(weights: Map<unknown, unknown>): boolean {
  return weights.has("conv_blocks_context.0.0.conv1.weight") && weights.has("upsample_layers.0.conv.weight");
}

/**
 * The strides STU-Net's trainers take from the plans: `pools` are the stage's poolings (v1's
 * pool_op_kernel_sizes; v2's without its leading [1, 1, 1]), the first five, padded with ones.
 */
export function stunetStrides(pools: unknown, where: string, what = "pool_op_kernel_sizes", offset = 0): number[][] {
  if (!Array.isArray(pools) || pools.length > 16) throw err(where, `the plans' ${what} must be a list of poolings, got ${brief(pools)}`);
  const out = pools.slice(0, POOLS).map((p, i) => {
    if (!Array.isArray(p) || p.length !== 3 || !p.every((x) => Number.isSafeInteger(x) && (x as number) >= 1 && (x as number) <= 8))
      throw err(where, `the plans' ${what}[${i + offset}] must be three integers from 1 to 8 (STU-Net is 3-D), got ${brief(p)}`);
    return p as number[];
  });
  while (out.length < POOLS) out.push([1, 1, 1]);
  return out;
}

/**
 * STU-Net's architecture from its weights and the plans' strides and patch (see the module
 * comment); a weight that disagrees with the plans is an error naming both.
 */
export function stunetArchitecture(
  weights: Map<unknown, unknown>,
  strides: number[][],
  inputChannels: number,
  numClasses: number,
  patch: readonly number[],
  where: string,
): STUNetArchitecture {
  if (!isSTUNet(weights))
    throw err(
      where,
      "the trainer (by its name, or options.trainer) builds STU-Net, but the state_dict is not STUNet's (it has no conv_blocks_context.0.0.conv1.weight and upsample_layers.0.conv.weight)",
    );
  const shape = (key: string): number[] | undefined => {
    const t = weights.get(key);
    return t instanceof TensorRef ? t.shape : undefined;
  };
  const need = (key: string): number[] => {
    const s = shape(key);
    if (!s || s.length !== 5)
      throw err(where, `state_dict["${key}"] must be a tensor of rank 5 (STU-Net is 3-D), got ${s ? `[${s.join(", ")}]` : "none"}`);
    return s;
  };
  if (weights.has(`conv_blocks_context.${POOLS + 1}.0.conv1.weight`) || !weights.has(`conv_blocks_context.${POOLS}.0.conv1.weight`))
    throw err(where, `STU-Net has ${POOLS + 1} encoder stages (its trainers fix ${POOLS} poolings); these weights have another number`);
  if (patch.length !== 3) throw err(where, `the plans' patch [${patch.join(", ")}] is not 3-D, and STU-Net is`);
  let total = 0;
  const block = (path: string, cin: number, stride: number[]): StunetBlock => {
    const w1 = need(`${path}.conv1.weight`);
    const cout = w1[0]!;
    const kernel = w1.slice(2);
    if (kernel.some((k) => k % 2 === 0 || k > 15))
      throw err(where, `${path}.conv1.weight is [${w1.join(", ")}]: STU-Net's kernels are odd (padded by k // 2), up to 15`);
    if (!(cout >= 1 && cout <= 1 << 14)) throw err(where, `${path}.conv1.weight makes ${cout} channels; STU-Net's are 1 to 16384`);
    if (++total > 4096) throw err(where, "STU-Net with more than 4096 residual blocks");
    return { path, cin, cout, kernel, stride, projection: weights.has(`${path}.conv3.weight`) };
  };
  /** A stage: its blocks while their weights are there, the first strided and taking cin channels. */
  const stage = (prefix: string, cin: number, stride: number[]): StunetBlock[] => {
    const first = block(`${prefix}.0`, cin, stride);
    const out = [first];
    while (weights.has(`${prefix}.${out.length}.conv1.weight`)) {
      const b = block(`${prefix}.${out.length}`, first.cout, [1, 1, 1]);
      if (b.cout !== first.cout)
        throw err(where, `${b.path}.conv1.weight makes ${b.cout} channels; its stage's first block ${first.cout} (a stage is one width)`);
      out.push(b);
    }
    return out;
  };
  const encoder: StunetBlock[][] = [];
  let c = inputChannels;
  for (let d = 0; d <= POOLS; d++) {
    const s = stage(`conv_blocks_context.${d}`, c, d === 0 ? [1, 1, 1] : strides[d - 1]!);
    encoder.push(s);
    c = s[0]!.cout;
  }
  const features = encoder.map((s) => s[0]!.cout);
  const first = need("conv_blocks_context.0.0.conv1.weight");
  if (first[1] !== inputChannels)
    throw err(where, `STU-Net's first convolution takes ${first[1]} channels; the plans have ${inputChannels}`);
  const decoder: StunetBlock[][] = [];
  for (let u = 0; u < POOLS; u++) {
    const cf = features[POOLS - 1 - u]!;
    const up = need(`upsample_layers.${u}.conv.weight`);
    if (up[0] !== cf || up[1] !== features[POOLS - u] || up.slice(2).some((k) => k !== 1))
      throw err(where, `upsample_layers.${u}.conv.weight is [${up.join(", ")}]; STU-Net's needs [${cf}, ${features[POOLS - u]}, 1, 1, 1]`);
    const s = stage(`conv_blocks_localization.${u}`, 2 * cf, [1, 1, 1]);
    if (s[0]!.cout !== cf)
      throw err(where, `conv_blocks_localization.${u}.0.conv1.weight makes ${s[0]!.cout} channels; the decoder stage it opens has ${cf}`);
    decoder.push(s);
  }
  const head = need(`seg_outputs.${POOLS - 1}.weight`);
  if (head[0] !== numClasses || head[1] !== features[0])
    throw err(
      where,
      `seg_outputs.${POOLS - 1}.weight is [${head.join(", ")}]; the first stage's ${features[0]} channels to the plans' ${numClasses} classes needs [${numClasses}, ${features[0]}, 1, 1, 1]`,
    );
  // every stride-changing or width-changing block has its 1×1 projection (use_1x1conv)
  for (const b of [...encoder.flat(), ...decoder.flat()])
    if (!b.projection && (b.cin !== b.cout || b.stride.some((s) => s !== 1)))
      throw err(where, `${b.path} changes ${b.cin} → ${b.cout} channels or strides, but has no conv3 (its 1×1 projection)`);
  const divisor = [0, 1, 2].map((ax) => strides.reduce((m, s) => m * s[ax]!, 1));
  if (patch.some((p, i) => p % divisor[i]! !== 0))
    throw err(
      where,
      `the plans' patch [${patch.join(", ")}] is not a multiple of STU-Net's strides' product [${divisor.join(", ")}] on every axis (its training could not have run it)`,
    );
  return {
    networkClass: "STUNet",
    dims: 3,
    inputChannels,
    numClasses,
    features,
    depth: encoder.map((s) => s.length),
    strides,
    encoder,
    decoder,
  };
}

/** STU-Net's graph under its state_dict names (deep supervision's heads read past). */
export function buildSTUNet(a: STUNetArchitecture, where: string): NetworkGraph {
  const b = new GraphBuilder(3, where);
  const ones = [1, 1, 1];
  const norm = (path: string, x: string, c: number) =>
    b.norm({ kind: "instance", eps: 1e-5, affine: true, runningStats: false, groups: 1 }, path, x, c);
  const lrelu = (x: string, name: string) => b.node("LeakyRelu", [x], name, { alpha: 0.01 });
  const resBlock = (blk: StunetBlock, x: string) => {
    const { path, cin, cout, kernel, stride } = blk;
    const pad = kernel.map((k) => k >> 1);
    let y = b.conv(`${path}.conv1`, x, { cin, cout, kernel, stride, pad, bias: true });
    y = lrelu(norm(`${path}.norm1`, y, cout), `${path}.act1`);
    y = norm(`${path}.norm2`, b.conv(`${path}.conv2`, y, { cin: cout, cout, kernel, stride: ones, pad, bias: true }), cout);
    const r = blk.projection ? b.conv(`${path}.conv3`, x, { cin, cout, kernel: ones, stride, pad: [0, 0, 0], bias: true }) : x;
    return lrelu(b.add(y, r, `${path}.residual`), `${path}.act2`);
  };
  let x = "input";
  const skips: string[] = [];
  a.encoder.forEach((s, d) => {
    for (const blk of s) x = resBlock(blk, x);
    if (d < a.encoder.length - 1) skips.push(x);
  });
  a.decoder.forEach((s, u) => {
    const f = a.features;
    const n = f.length - 1;
    // Upsample_Layer_nearest: interpolate(scale_factor=pool, "nearest"), then a 1×1 convolution — here
    // the convolution first (see the module comment)
    const path = `upsample_layers.${u}`;
    const y = b.conv(`${path}.conv`, x, { cin: f[n - u]!, cout: f[n - 1 - u]!, kernel: ones, stride: ones, pad: [0, 0, 0], bias: true });
    const st = a.strides[n - 1 - u]!;
    const upsampled = st.every((v) => v === 1)
      ? y
      : b.node("Resize", [y, "", b.constant(`${path}.scales`, [5], new Float32Array([1, 1, ...st]))], `${path}.nearest`, {
          mode: "nearest",
          coordinate_transformation_mode: "asymmetric",
          nearest_mode: "floor",
        });
    x = b.concat([upsampled, skips[n - 1 - u]!], `${path}.concat`);
    for (const blk of s) x = resBlock(blk, x);
  });
  const out = b.conv(`seg_outputs.${POOLS - 1}`, x, {
    cin: a.features[0]!,
    cout: a.numClasses,
    kernel: ones,
    stride: ones,
    pad: [0, 0, 0],
    bias: true,
  });
  for (let u = 0; u < POOLS - 1; u++) b.unused.push(`seg_outputs.${u}.weight`, `seg_outputs.${u}.bias`);
  const divisor = [0, 1, 2].map((ax) => a.strides.reduce((m, s) => m * s[ax]!, 1)) as [number, number, number];
  return { ...b.network(out), divisor };
}
