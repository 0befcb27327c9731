/**
 * U-Mamba (Ma, Li and Wang, 2024; github.com/bowang-lab/U-Mamba): nnU-Net v2 trainers
 * (`nnUNetTrainerUMambaBot`, `nnUNetTrainerUMambaEnc`, `…NoAMP` and users' subclasses) whose
 * network is a residual U-Net with Mamba layers — UMambaBot one at the bottleneck, UMambaEnc one
 * after each encoder stage (in 2-D every other stage) — 2-D or 3-D.
 *
 * The network, as U-Mamba's nets/UMamba{Bot,Enc}_{2d,3d}.py build it: a stem and stages of residual
 * blocks (the first of each a BasicResBlock — conv → instance norm → LeakyReLU → conv → instance
 * norm, plus the input through a 1×1 convolution, strided with the stage, then LeakyReLU — the rest
 * dynamic-network-architectures' BasicBlockD with the input added as it is); a Mamba layer replaces
 * a stage's output (LayerNorm over each token's channels, then mamba_ssm's Mamba: no residual);
 * the decoder up-samples by nearest-neighbour copy and a 1×1 convolution — here the convolution
 * first, the same values (see stunet.ts) — concatenates the skip (not in the 2-D decoder's last
 * stage) and runs a stage of blocks; the last of the 1×1 heads gives the logits.
 *
 * A Mamba layer takes the voxels as tokens (raster order, each a vector of the stage's channels),
 * or, in UMambaEnc where a stage's map has no more voxels than channels, the channels as tokens
 * (each a vector of the map's voxels): U-Mamba's do_channel_token, fixed by the plans' patch — so
 * such a network runs the patch alone.
 *
 * Widths, kernels, depths, Mamba's sizes and which stages have Mamba come from the weights; the
 * strides, which no weight shows, from the plans (pool_op_kernel_sizes, or architecture.arch_kwargs.strides).
 */
import { MAMBA_CONV_OP, MAMBA_LIMITS, SELECTIVE_SCAN_OP } from "../mamba.js";
import { GraphBuilder, type NormSpec } from "../monai/layers.js";
import { basicBlockD } from "./blocks.js";
import { CheckpointError, TensorRef } from "./checkpoint.js";
import type { NetworkGraph } from "./network.js";
import { brief } from "../../is.js";

export interface UMambaBlock {
  path: string;
  cin: number;
  cout: number;
  kernel: number[];
  stride: number[];
  /** BasicResBlock (conv1 … conv3) rather than BasicBlockD (conv1.conv …, the input added as it is). */
  res: boolean;
  bias: boolean;
}

export interface MambaSpec {
  path: string;
  /** Mamba's d_model, d_inner, d_state, dt_rank and d_conv. */
  model: number;
  inner: number;
  state: number;
  rank: number;
  kernel: number;
  /** Channels as tokens (UMambaEnc's do_channel_token) rather than voxels. */
  channelTokens: boolean;
  inBias: boolean;
  outBias: boolean;
}

export interface UMambaArchitecture {
  networkClass: "UMamba";
  /** UMambaBot (one Mamba, at the bottleneck) or UMambaEnc (after encoder stages). */
  variant: "Bot" | "Enc";
  dims: 2 | 3;
  inputChannels: number;
  numClasses: number;
  /** Channels of each encoder stage. */
  features: number[];
  strides: number[][];
  /** The plans' patch, which a network with channels as tokens alone runs. */
  patch: number[];
  stem: UMambaBlock[];
  encoder: UMambaBlock[][];
  /** Per encoder stage, its Mamba layer or null. */
  mamba: (MambaSpec | null)[];
  decoder: { blocks: UMambaBlock[]; skip: boolean }[];
}

const err = (where: string, msg: string) => new CheckpointError(`${where}: ${msg}`);
const prod = (xs: readonly number[]) => xs.reduce((a, b) => a * b, 1);

/** Whether a state_dict is U-Mamba's (UMambaBot's bottleneck Mamba, or UMambaEnc's first). */
export function isUMamba(weights: Map<unknown, unknown>): boolean {
  return (
    weights.has("encoder.stem.0.conv1.weight") &&
    [...weights.keys()].some((k) => typeof k === "string" && /^(mamba_layer|encoder\.mamba_layers\.\d+)\.mamba\.A_log$/.test(k))
  );
}

/** U-Mamba's architecture from its weights and the plans' strides and patch (see the module comment). */
export function umambaArchitecture(
  weights: Map<unknown, unknown>,
  strides: unknown,
  stridesWhat: string,
  inputChannels: number,
  numClasses: number,
  patch: readonly number[],
  where: string,
): UMambaArchitecture {
  const shape = (key: string): number[] | undefined => {
    const t = weights.get(key);
    return t instanceof TensorRef ? t.shape : undefined;
  };
  const first = shape("encoder.stem.0.conv1.weight");
  if (!first || (first.length !== 4 && first.length !== 5))
    throw err(
      where,
      `state_dict["encoder.stem.0.conv1.weight"] must be a 2-D or 3-D convolution's weight, got ${first ? `[${first.join(", ")}]` : "none"}`,
    );
  const dims = (first.length - 2) as 2 | 3;
  if (patch.length !== dims)
    throw err(where, `the plans' patch [${patch.join(", ")}] is not ${dims}-D, and the network's convolutions are`);
  const need = (key: string, rank = dims + 2): number[] => {
    const s = shape(key);
    if (!s || s.length !== rank)
      throw err(where, `state_dict["${key}"] must be a tensor of rank ${rank}, got ${s ? `[${s.join(", ")}]` : "none"}`);
    return s;
  };
  let stages = 0;
  while (weights.has(`encoder.stages.${stages}.0.conv1.weight`)) if (++stages > 12) throw err(where, "U-Mamba with more than 12 stages");
  if (stages < 2) throw err(where, "U-Mamba's weights have fewer than two encoder stages (encoder.stages.N.0.conv1.weight)");
  if (!Array.isArray(strides) || strides.length !== stages)
    throw err(where, `the plans' ${stridesWhat} must list ${stages} strides (one per encoder stage in the weights), got ${brief(strides)}`);
  const st = strides.map((s, i) => {
    if (!Array.isArray(s) || s.length !== dims || !s.every((x) => Number.isSafeInteger(x) && (x as number) >= 1 && (x as number) <= 8))
      throw err(where, `the plans' ${stridesWhat}[${i}] must be ${dims} integers from 1 to 8, got ${brief(s)}`);
    return s as number[];
  });
  let total = 0;
  const block = (path: string, cin: number, stride: number[], res: boolean): UMambaBlock => {
    const w = need(res ? `${path}.conv1.weight` : `${path}.conv1.conv.weight`);
    const [cout] = w as [number];
    const kernel = w.slice(2);
    if (kernel.some((k) => k % 2 === 0 || k > 15))
      throw err(where, `${path}'s conv1 weight is [${w.join(", ")}]: U-Mamba's kernels are odd (padded by k // 2), up to 15`);
    if (!(cout >= 1 && cout <= 1 << 14)) throw err(where, `${path} makes ${cout} channels; U-Mamba's are 1 to 16384`);
    if (w[1] !== cin) throw err(where, `${path}'s conv1 takes ${w[1]} channels; what comes to it has ${cin}`);
    if (!res && cin !== cout) throw err(where, `${path} (a BasicBlockD adding its input as it is) changes ${cin} → ${cout} channels`);
    if (res && !weights.has(`${path}.conv3.weight`)) throw err(where, `${path} (a BasicResBlock) has no conv3 (its 1×1 projection)`);
    if (++total > 4096) throw err(where, "U-Mamba with more than 4096 residual blocks");
    return { path, cin, cout, kernel, stride, res, bias: weights.has(res ? `${path}.conv1.bias` : `${path}.conv1.conv.bias`) };
  };
  const ones = Array<number>(dims).fill(1);
  /** A stage: a BasicResBlock, then BasicBlockDs while their weights are there. */
  const stage = (prefix: string, cin: number, stride: number[]): UMambaBlock[] => {
    const out = [block(`${prefix}.0`, cin, stride, true)];
    while (weights.has(`${prefix}.${out.length}.conv1.conv.weight`)) out.push(block(`${prefix}.${out.length}`, out[0]!.cout, ones, false));
    return out;
  };
  const stem = stage("encoder.stem", inputChannels, ones);
  const encoder: UMambaBlock[][] = [];
  let c = stem[0]!.cout;
  for (let s = 0; s < stages; s++) {
    encoder.push(stage(`encoder.stages.${s}`, c, st[s]!));
    c = encoder[s]![0]!.cout;
  }
  const features = encoder.map((s) => s[0]!.cout);
  // the feature maps U-Mamba's encoder computes from the patch (floor division, as it does)
  const maps: number[][] = [];
  let fm = [...patch];
  for (const s of st) maps.push((fm = fm.map((p, i) => Math.floor(p / s[i]!))));
  const divisor = ones.map((_, ax) => prod(st.map((s) => s[ax]!)));
  if (patch.some((p, i) => p % divisor[i]! !== 0))
    throw err(
      where,
      `the plans' patch [${patch.join(", ")}] is not a multiple of the strides' product [${divisor.join(", ")}] on every axis (U-Mamba's training could not have run it)`,
    );

  const bot = weights.has("mamba_layer.mamba.A_log");
  const mambaAt = (path: string, s: number): MambaSpec => {
    const inProj = need(`${path}.mamba.in_proj.weight`, 2),
      aLog = need(`${path}.mamba.A_log`, 2),
      conv = need(`${path}.mamba.conv1d.weight`, 3),
      dtProj = need(`${path}.mamba.dt_proj.weight`, 2);
    const [inner, state] = aLog as [number, number];
    const model = inProj[1]!,
      rank = dtProj[1]!,
      kernel = conv[2]!;
    if (
      !(inner >= 1 && inner <= MAMBA_LIMITS.channels) ||
      !(state >= 1 && state <= MAMBA_LIMITS.state) ||
      !(kernel >= 1 && kernel <= MAMBA_LIMITS.kernel) ||
      !(rank >= 1 && rank <= MAMBA_LIMITS.channels) ||
      inner * state > MAMBA_LIMITS.stateValues
    )
      throw err(
        where,
        `${path}.mamba: d_inner ${inner}, d_state ${state}, d_conv ${kernel}, dt_rank ${rank}; bhsd runs up to ${MAMBA_LIMITS.channels}, ${MAMBA_LIMITS.state}, ${MAMBA_LIMITS.kernel} and ${MAMBA_LIMITS.channels} (and ${MAMBA_LIMITS.stateValues} states, d_inner · d_state)`,
      );
    const expect: [string, number[]][] = [
      ["in_proj.weight", [2 * inner, model]],
      ["conv1d.weight", [inner, 1, kernel]],
      ["x_proj.weight", [rank + 2 * state, inner]],
      ["dt_proj.weight", [inner, rank]],
    ];
    for (const [k, want] of expect) {
      const got = need(`${path}.mamba.${k}`, want.length);
      if (got.join() !== want.join())
        throw err(
          where,
          `state_dict["${path}.mamba.${k}"] is [${got.join(", ")}]; with A_log [${inner}, ${state}] and d_model ${model} Mamba's is [${want.join(", ")}]`,
        );
    }
    // U-Mamba's rule (UMambaEnc only): channels as tokens where the stage's map has no more voxels than channels
    const voxels = prod(maps[s]!);
    const channelTokens = !bot && voxels <= features[s]!;
    const want = channelTokens ? voxels : features[s]!;
    if (model !== want)
      throw err(
        where,
        `${path}.mamba's d_model is ${model}; stage ${s} (${features[s]} channels on a ${maps[s]!.join("×")} map of the plans' patch) takes ${channelTokens ? `its ${voxels} voxels a token (channels as tokens)` : `${want} channels a token`}`,
      );
    return {
      path,
      model,
      inner,
      state,
      rank,
      kernel,
      channelTokens,
      inBias: weights.has(`${path}.mamba.in_proj.bias`),
      outBias: weights.has(`${path}.mamba.out_proj.bias`),
    };
  };
  const mamba = encoder.map((_, s) =>
    bot
      ? s === stages - 1
        ? mambaAt("mamba_layer", s)
        : null
      : weights.has(`encoder.mamba_layers.${s}.mamba.A_log`)
        ? mambaAt(`encoder.mamba_layers.${s}`, s)
        : null,
  );
  if (!mamba.some(Boolean)) throw err(where, "U-Mamba's weights hold no Mamba layer");

  const decoder: { blocks: UMambaBlock[]; skip: boolean }[] = [];
  for (let u = 0; u < stages - 1; u++) {
    const below = features[stages - 1 - u]!,
      cf = features[stages - 2 - u]!;
    const up = need(`decoder.upsample_layers.${u}.conv.weight`);
    if (up[0] !== cf || up[1] !== below || up.slice(2).some((k) => k !== 1))
      throw err(
        where,
        `decoder.upsample_layers.${u}.conv.weight is [${up.join(", ")}]; U-Mamba's needs [${cf}, ${below}, ${ones.join(", ")}]`,
      );
    // (U-Mamba's 2-D decoder concatenates no skip in its last stage: the weights show which)
    const takes = need(`decoder.stages.${u}.0.conv1.weight`)[1]!;
    const skip = takes === 2 * cf;
    if (!skip && (takes !== cf || dims !== 2 || u !== stages - 2))
      throw err(
        where,
        `decoder.stages.${u}.0.conv1 takes ${takes} channels; U-Mamba's takes ${2 * cf} (the up-sampled ${cf} and the skip's)`,
      );
    const blocks = stage(`decoder.stages.${u}`, takes, ones);
    if (blocks[0]!.cout !== cf) throw err(where, `decoder.stages.${u} makes ${blocks[0]!.cout} channels; its level has ${cf}`);
    decoder.push({ blocks, skip });
  }
  const head = need(`decoder.seg_layers.${stages - 2}.weight`);
  if (head[0] !== numClasses || head[1] !== features[0])
    throw err(
      where,
      `decoder.seg_layers.${stages - 2}.weight is [${head.join(", ")}]; ${features[0]} channels to the plans' ${numClasses} classes needs [${numClasses}, ${features[0]}, ${ones.join(", ")}]`,
    );
  return {
    networkClass: "UMamba",
    variant: bot ? "Bot" : "Enc",
    dims,
    inputChannels,
    numClasses,
    features,
    strides: st,
    patch: [...patch],
    stem,
    encoder,
    mamba,
    decoder,
  };
}

/** U-Mamba's graph under its state_dict names (the decoder's copy of the encoder and deep supervision's heads read past). */
export function buildUMamba(a: UMambaArchitecture, where: string): NetworkGraph {
  const b = new GraphBuilder(a.dims, where);
  const ones = Array<number>(a.dims).fill(1);
  const zeros = Array<number>(a.dims).fill(0);
  const inorm: NormSpec = { kind: "instance", eps: 1e-5, affine: true, runningStats: false, groups: 1 };
  const lrelu = (x: string, name: string) => b.node("LeakyRelu", [x], name, { alpha: 0.01 });
  const resBlock = (blk: UMambaBlock, x: string): string => {
    const { path, cin, cout, kernel, stride, bias } = blk;
    const pad = kernel.map((k) => k >> 1);
    if (blk.res) {
      // BasicResBlock: its convolutions are nn.ConvNd's defaults, with bias
      let y = b.conv(`${path}.conv1`, x, { cin, cout, kernel, stride, pad, bias });
      y = lrelu(b.norm(inorm, `${path}.norm1`, y, cout), `${path}.act1`);
      y = b.norm(inorm, `${path}.norm2`, b.conv(`${path}.conv2`, y, { cin: cout, cout, kernel, stride: ones, pad, bias }), cout);
      const r = b.conv(`${path}.conv3`, x, { cin, cout, kernel: ones, stride, pad: zeros, bias: true });
      return lrelu(b.add(y, r, `${path}.residual`), `${path}.act2`);
    }
    // BasicBlockD (stride 1, one width: the input added as it is)
    return basicBlockD(b, { path, cin, cout, kernel, stride: ones, bias }, x, inorm, lrelu);
  };
  const mambaLayer = (m: MambaSpec, x: string): string => {
    const p = `${m.path}.mamba`;
    // tokens [N, L, d_model]: the voxels in raster order, each its channels — or the channels, each its voxels
    const flat = b.reshape(x, [0, m.channelTokens ? 0 : m.model, -1], `${m.path}.flatten`);
    const tokens = m.channelTokens ? flat : b.transpose(flat, [0, 2, 1], `${m.path}.tokens`);
    const normed = b.layerNorm(`${m.path}.norm`, tokens, m.model, `${m.path}.norm`);
    const xz = b.linear(`${p}.in_proj`, normed, m.model, 2 * m.inner, m.inBias);
    const conv = b.param([`${p}.conv1d.weight`], [m.inner, 1, m.kernel]);
    const u = b.node(MAMBA_CONV_OP, [xz, conv, b.param([`${p}.conv1d.bias`], [m.inner])], `${p}.conv1d`);
    const xDbl = b.linear(`${p}.x_proj`, u, m.inner, m.rank + 2 * m.state, false);
    const dtIn = b.node(
      "Slice",
      [xDbl, b.ints(`${p}.dt.starts`, [0]), b.ints(`${p}.dt.ends`, [m.rank]), b.ints(`${p}.dt.axes`, [2])],
      `${p}.dt`,
    );
    // (dt_proj's bias is the scan's delta_bias: added before the softplus, as here)
    const delta = b.linear(`${p}.dt_proj`, dtIn, m.rank, m.inner, true);
    const y = b.node(
      SELECTIVE_SCAN_OP,
      [u, delta, b.param([`${p}.A_log`], [m.inner, m.state]), xDbl, b.param([`${p}.D`], [m.inner]), xz],
      `${p}.selective_scan`,
    );
    const out = b.linear(`${p}.out_proj`, y, m.inner, m.model, m.outBias);
    const back = m.channelTokens ? out : b.transpose(out, [0, 2, 1], `${m.path}.untokens`);
    return b.node("Reshape", [back, b.node("Shape", [x], `${m.path}.shape`)], `${m.path}.unflatten`);
  };
  let x = "input";
  for (const blk of a.stem) x = resBlock(blk, x);
  const skips: string[] = [];
  a.encoder.forEach((s, d) => {
    for (const blk of s) x = resBlock(blk, x);
    const m = a.mamba[d];
    if (m) x = mambaLayer(m, x);
    skips.push(x);
  });
  const n = a.features.length - 1;
  a.decoder.forEach(({ blocks, skip }, u) => {
    // UpsampleLayer: interpolate(scale_factor=stride, "nearest"), then a 1×1 convolution — here the convolution first
    const path = `decoder.upsample_layers.${u}`;
    const y = b.conv(`${path}.conv`, x, {
      cin: a.features[n - u]!,
      cout: a.features[n - 1 - u]!,
      kernel: ones,
      stride: ones,
      pad: zeros,
      bias: true,
    });
    const st = a.strides[n - u]!;
    const upsampled = st.every((v) => v === 1)
      ? y
      : b.node("Resize", [y, "", b.constant(`${path}.scales`, [a.dims + 2], new Float32Array([1, 1, ...st]))], `${path}.nearest`, {
          mode: "nearest",
          coordinate_transformation_mode: "asymmetric",
          nearest_mode: "floor",
        });
    x = skip ? b.concat([upsampled, skips[n - 1 - u]!], `${path}.concat`) : upsampled;
    for (const blk of blocks) x = resBlock(blk, x);
  });
  const last = a.decoder.length - 1;
  const out = b.conv(`decoder.seg_layers.${last}`, x, {
    cin: a.features[0]!,
    cout: a.numClasses,
    kernel: ones,
    stride: ones,
    pad: zeros,
    bias: true,
  });
  for (let u = 0; u < last; u++) b.unused.push(`decoder.seg_layers.${u}.weight`, `decoder.seg_layers.${u}.bias`);
  // the decoder holds the encoder: every encoder tensor is in the state_dict twice
  for (const p of b.params) if (p.names[0]!.startsWith("encoder.")) p.names.push(...p.names.map((nm) => `decoder.${nm}`));
  const divisor = [0, 1, 2].map((ax) => a.strides.reduce((m, s) => m * (s[ax - 3 + a.dims] ?? 1), 1)) as [number, number, number];
  return { ...b.network(out), divisor };
}
