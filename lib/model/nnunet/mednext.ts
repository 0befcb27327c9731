/**
 * MedNeXt as MIC-DKFZ's nnU-Net v1 fork trains it (github.com/MIC-DKFZ/MedNeXt, `nnunet_mednext`:
 * nnUNetTrainerV2_MedNeXt_{S,B,M,L}_kernel{3,5}, their learning-rate variants and users' subclasses
 * of them). The network is MedNextV1's MedNeXt: a 1×1 stem, four levels of MedNeXt blocks each
 * followed by a strided one, a bottleneck, four transposed up-sampling blocks each followed by the
 * level's blocks, a 1×1 transposed head; deep supervision's heads (out_1 … out_4) run in training
 * only. The folder's v1 pipeline is nnUNetTrainerV2's, which the fork keeps line for line.
 *
 * Everything but two things is read from the weights' shapes: the channels, each block's expansion
 * ratio (the fork's exp_r lists give the down-sampling block of level i the ratio of level i + 1) and
 * depthwise kernel (enc_kernel_size and dec_kernel_size may differ), the block counts, global
 * response normalization (MedNextV1 gives it to every block but down_0, which is made without it),
 * the resampling blocks' 1×1 residual convolutions (do_res_up_down), 2-D or 3-D. What the weights
 * cannot show is what every trainer of the fork builds: the input added to each plain block
 * (do_res=True) and GroupNorm with one group a channel (norm_type "group").
 */
import { GraphBuilder } from "../monai/layers.js";
import { mednextGraph, type MedNeXtBlockSpec, type MedNeXtLayout } from "../monai/mednext.js";
import { CheckpointError, TensorRef } from "./checkpoint.js";
import type { NetworkGraph } from "./network.js";

/** The fork's trainers (and users' subclasses that keep the name as prefix): all build MedNextV1's MedNeXt. */
export const MEDNEXT_V1_TRAINER = /^nnUNetTrainerV2_MedNeXt/;

/** MedNeXt's levels in MedNextV1 (fixed: enc_block_0 … 3, bottleneck, dec_block_3 … 0). */
const LEVELS = 4;

export interface MedNeXtV1Architecture {
  networkClass: "MedNeXt";
  dims: 2 | 3;
  inputChannels: number;
  numClasses: number;
  /** n_channels: the first level's width (each level doubles it). */
  filters: number;
  /** Blocks of enc_block_0 … 3, the bottleneck, dec_block_3 … 0 (block_counts). */
  blocks: number[];
  /** The depthwise kernels of the encoder (with the down-sampling blocks) and of the rest. */
  kernels: { encoder: number; decoder: number };
  grn: boolean;
  /** The resampling blocks' 1×1 residual convolutions (do_res_up_down). */
  resampleResidual: boolean;
  /** The layout mednextGraph builds, each block with its path, ratio, kernel and GRN. */
  layout: MedNeXtLayout;
}

const err = (where: string, msg: string) => new CheckpointError(`${where}: ${msg}`);

/** Whether a state_dict is MedNextV1's. */
export function isMedNeXtV1(weights: Map<unknown, unknown>): boolean {
  return weights.has("stem.weight") && weights.has("down_0.conv1.weight") && weights.has("out_0.conv_out.weight");
}

/**
 * MedNextV1's architecture from its weights (see the module comment). `dims`, `inputChannels`,
 * `numClasses` and `patch` are the plans'; a weight that disagrees with them is an error naming both.
 */
export function mednextV1Architecture(
  weights: Map<unknown, unknown>,
  dims: 2 | 3,
  inputChannels: number,
  numClasses: number,
  patch: readonly number[],
  where: string,
): MedNeXtV1Architecture {
  if (!isMedNeXtV1(weights))
    throw err(
      where,
      `the trainer (by its name, or options.trainer) builds MedNeXt (nnunet_mednext's), but the state_dict is not MedNextV1's (it has no stem.weight, down_0.conv1.weight and out_0.conv_out.weight)`,
    );
  const shape = (key: string): number[] | undefined => {
    const t = weights.get(key);
    return t instanceof TensorRef ? t.shape : undefined;
  };
  const rank = dims + 2;
  const need = (key: string): number[] => {
    const s = shape(key);
    if (!s || s.length !== rank)
      throw err(
        where,
        `state_dict["${key}"] must be a tensor of rank ${rank} (a ${dims}-D MedNeXt, as the plans' patch is ${dims}-D), got ${s ? `[${s.join(", ")}]` : "none"}`,
      );
    return s;
  };
  const stem = need("stem.weight");
  const [f0, cin] = stem as [number, number];
  if (cin !== inputChannels) throw err(where, `MedNeXt's stem takes ${cin} channels; the plans have ${inputChannels} modalities`);
  if (f0 * 2 ** LEVELS > 1 << 16)
    throw err(where, `MedNeXt's widest level (${f0} · 2^${LEVELS} = ${f0 * 2 ** LEVELS}) is past 65536 channels`);
  const head = need("out_0.conv_out.weight");
  // (a transposed convolution's weight is [in, out, …])
  if (head[0] !== f0 || head[1] !== numClasses)
    throw err(
      where,
      `MedNeXt's head out_0.conv_out.weight is [${head.join(", ")}]; the stem's ${f0} channels to the plans' ${numClasses} classes (with background) needs [${f0}, ${numClasses}, …]`,
    );
  if (patch.length !== dims || patch.some((p) => p % 2 ** LEVELS !== 0))
    throw err(
      where,
      `the plans' patch [${patch.join(", ")}] is not a multiple of 16 on every axis, which MedNeXt's four halvings need (its training could not have run it)`,
    );
  const grn = [...weights.keys()].some((k) => typeof k === "string" && k.endsWith(".grn_gamma"));
  const resampleResidual = weights.has("down_0.res_conv.weight");
  let total = 0;
  /** A block at `path` of c channels: its ratio and kernel from conv2's and conv1's shapes. */
  const spec = (path: string, c: number, g: boolean): MedNeXtBlockSpec => {
    const w1 = need(`${path}.conv1.weight`),
      w2 = need(`${path}.conv2.weight`);
    const k = w1[2]!;
    if (w1.slice(2).some((x) => x !== k) || k % 2 === 0 || k > 31)
      throw err(where, `${path}.conv1.weight is [${w1.join(", ")}]: MedNeXt's depthwise kernel is one odd size up to 31 on every axis`);
    const e = w2[0]! / c;
    if (!Number.isSafeInteger(e) || e < 1 || e > 64)
      throw err(where, `${path}.conv2.weight is [${w2.join(", ")}]: MedNeXt expands ${c} channels by a whole ratio from 1 to 64`);
    if (++total > 4096) throw err(where, "MedNeXt with more than 4096 blocks");
    return { path, ratio: e, kernel: k, grn: g };
  };
  const run = (prefix: string, c: number): MedNeXtBlockSpec[] => {
    const out: MedNeXtBlockSpec[] = [];
    while (weights.has(`${prefix}.${out.length}.conv1.weight`)) out.push(spec(`${prefix}.${out.length}`, c, grn));
    return out;
  };
  const enc: MedNeXtBlockSpec[][] = [],
    down: MedNeXtBlockSpec[] = [],
    up: MedNeXtBlockSpec[] = [],
    dec: MedNeXtBlockSpec[][] = [];
  for (let i = 0; i < LEVELS; i++) {
    const c = f0 * 2 ** i;
    enc.push(run(`enc_block_${i}`, c));
    // (MedNextV1 makes down_0 without global response norm, the others with it)
    down.push(spec(`down_${i}`, c, grn && i > 0));
  }
  const bottleneck = run("bottleneck", f0 * 2 ** LEVELS);
  for (let i = LEVELS - 1; i >= 0; i--) {
    const c = f0 * 2 ** i;
    up.push(spec(`up_${i}`, 2 * c, grn));
    dec.push(run(`dec_block_${i}`, c));
  }
  if (weights.has(`down_${LEVELS}.conv1.weight`) || weights.has(`enc_block_${LEVELS}.0.conv1.weight`))
    throw err(where, `a MedNeXt of more than ${LEVELS} levels, which MedNextV1 does not make`);
  const layout: MedNeXtLayout = {
    dims,
    inputChannels: cin,
    outputChannels: numClasses,
    filters: f0,
    enc,
    down,
    bottleneck,
    up,
    dec,
    residual: true,
    resampleResidual,
    grnNames: ["grn_gamma", "grn_beta"],
  };
  const encKernels = new Set([...enc.flat(), ...down].map((s) => s.kernel)),
    decKernels = new Set([...bottleneck, ...up, ...dec.flat()].map((s) => s.kernel));
  return {
    networkClass: "MedNeXt",
    dims,
    inputChannels: cin,
    numClasses,
    filters: f0,
    blocks: [...enc.map((s) => s.length), bottleneck.length, ...dec.map((s) => s.length)],
    kernels: { encoder: Math.max(...encKernels), decoder: Math.max(...decKernels) },
    grn,
    resampleResidual,
    layout,
  };
}

/** MedNextV1's graph under its state_dict names; deep supervision's heads and `dummy_tensor` are read past. */
export function buildMedNeXtV1(a: MedNeXtV1Architecture, where: string): NetworkGraph {
  const b = new GraphBuilder(a.dims, where);
  const out = mednextGraph(b, a.layout);
  // (checkpoint_style's dummy tensor; the deep-supervision heads of levels 1 … 4)
  b.unused.push("dummy_tensor");
  for (let j = 1; j <= LEVELS; j++) b.unused.push(`out_${j}.conv_out.weight`, `out_${j}.conv_out.bias`);
  const d = 2 ** LEVELS;
  return { ...b.network(out), divisor: a.dims === 3 ? [d, d, d] : [1, d, d] };
}
