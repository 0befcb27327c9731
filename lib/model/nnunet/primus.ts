/**
 * nnU-Net's Primus (MIC-DKFZ/dynamic-network-architectures `architectures/primus.py`: Wald, Roy,
 * Isensee et al. 2025, "Primus: enforcing attention usage for 3D medical image segmentation"), the
 * transformer nnU-Net's `nnUNet_Primus_{S,B,M,L}_Trainer` train, rebuilt from a checkpoint as
 * PyTorch computes it in eval mode:
 *
 * - a patch embedding: one convolution, kernel = stride = the patch (8³) — or, PrimusV2 and V3
 *   (`nnUNet_PrimusV{2,3}{S,B,M,L}_Trainer`), residual blocks (BasicBlockD: a stem, then levels
 *   that each halve the grid, 2^levels the patch), a 1×1 projection to the width and, V3's, each
 *   level's map projected onto the token grid (kernel = stride = what is left to halve) times a
 *   learnt scale, added; ReLU in V2's blocks (PatchEmbed_deeper's "basic"), LeakyReLU in V3's;
 * - the tokens in C order over the patch grid, register tokens in front, plus `eva.pos_embed`;
 * - EVA blocks (timm's EvaBlock as dynamic-network-architectures' Eva builds it): LayerNorm →
 *   attention (separate q / k / v projections, no k bias; 3-D rotary position embeddings on q and k
 *   of every token but the registers; softmax(q · scale · kᵀ) · v; a LayerNorm inside where
 *   `scale_attn_inner`) → projection → layer scale (`gamma_1`, where `init_values`) → residual;
 *   LayerNorm → SwiGLU (SiLU(fc1_g) · fc1_x → LayerNorm → fc2) → layer scale → residual;
 * - a last LayerNorm, the registers dropped, the tokens back to the patch grid;
 * - the patch decoder: transposed convolutions (kernel = stride = 2 per axis, as PatchDecode's
 *   stages halve the patch), each but the last followed by a channel LayerNorm (eps 1e-6) and GELU.
 *
 * The rotary embedding is timm's RotaryEmbeddingCat as Eva makes it (`in_pixels=False`, the patch
 * grid as both feat_shape and ref_feat_shape, temperature 10000): per axis of the grid and band j
 * of head_dim / 6, the angle t · 10000^(−j / (head_dim / 6)), each sine and cosine used for a pair
 * of channels, applied to the pairs (x₂ᵢ, x₂ᵢ₊₁) as a rotation. It is not in the checkpoint (a
 * non-persistent buffer); it is computed here in float32 as timm does. In the graph the rotation
 * is applied to the q‖k‖v projection split as [1, n, 3, heads, hd] — x · cos + swap(x) · ±sin,
 * tables [n, 3, 1, hd] shared by every head, v's rows cos 1 and sin 0 — so that the attention still
 * fuses (attention.ts), the kernel rotating q and k as it loads them.
 *
 * The graph holds the patch size (the position embeddings and rotary tables are one per patch
 * token): it runs the plans' patch only, which nnU-Net's sliding window feeds it.
 *
 * What the checkpoint cannot tell — the number of heads — comes from the trainer's name for
 * nnU-Net's own trainers (checked against the widths and depth it holds), else from the caller.
 * Everything else is read from the state_dict's shapes: widths, depth, MLP width, registers, layer
 * scale, the inner norms, the deeper embedding's blocks. V2 or V3 — which nonlin its embedding
 * runs — comes from the trainer's name where it says (nnUNet_PrimusV2…, nnUNet_PrimusV3…), else from
 * whether the levels are projected onto the tokens (only V3's are).
 */
import { GraphBuilder, type NormSpec } from "../monai/layers.js";
import { basicBlockD, type BasicBlockD } from "./blocks.js";
import { attend, splitQkv } from "../monai/transformers.js";
import { CheckpointError, TensorRef } from "./checkpoint.js";
import type { NetworkGraph } from "./network.js";

export interface PrimusArchitecture {
  networkClass: "Primus";
  dims: 3;
  inputChannels: number;
  numClasses: number;
  /** The one input size the network runs ([z, y, x] of the plans' patch). */
  inputSize: number[];
  /** The patch embedding's kernel and stride (8³ in every nnU-Net trainer). */
  patchEmbed: number[];
  /** One convolution (Primus), or PrimusV2 / V3's residual blocks. */
  embedding: PrimusEmbedding;
  embedDim: number;
  depth: number;
  heads: number;
  mlpHidden: number;
  /** SwiGLU (fc1_g, fc1_x) as Eva builds it, or a plain GELU MLP (fc1). */
  swiglu: boolean;
  mlpNorm: boolean;
  qkvBias: boolean;
  /** LayerNorm on the attention's output before its projection (`scale_attn_inner`). */
  innerNorm: boolean;
  /** Layer scale (`gamma_1`, `gamma_2`; `init_values` not None). */
  layerScale: boolean;
  registers: number;
  absPosEmbed: boolean;
  /** Channels from the transformer's width down through the decoder's stages to the classes. */
  decoderChannels: number[];
  decoderStrides: number[][];
}

export type PrimusEmbedding =
  | { kind: "conv" }
  | {
      kind: "deeper";
      variant: "V2" | "V3";
      nonlin: "relu" | "leakyrelu";
      stem: BasicBlockD[];
      /** Each level's blocks, the first halving the grid. */
      levels: BasicBlockD[][];
      /** final_proj's kernel (1³, or 3³ padded by 1). */
      finalKernel: number[];
      /** V3's projections of the stem's and each level's map (but the last) onto the token grid. */
      tokenSkips: { cin: number; downBy: number }[];
    };

/** nnU-Net's own Primus trainers (nnunetv2/training/nnUNetTrainer/primus/primus_trainers.py): width, depth, heads. */
const OFFICIAL: Record<string, [number, number, number]> = {
  S: [396, 12, 6],
  B: [792, 12, 12],
  M: [864, 16, 12],
  L: [1056, 24, 16],
};

const err = (where: string, msg: string) => new CheckpointError(`${where}: ${msg}`);

/** Whether a state_dict is Primus's (a patch embedding, EVA blocks, a patch decoder). */
export function isPrimus(weights: Map<unknown, unknown>): boolean {
  return weights.has("eva.blocks.0.norm1.weight") && (weights.has("down_projection.proj.weight") || isDeeperPrimus(weights));
}

/** Whether it is PrimusV2 / V3's (a residual-block patch embedding). */
export function isDeeperPrimus(weights: Map<unknown, unknown>): boolean {
  return weights.has("eva.blocks.0.norm1.weight") && weights.has("down_projection.stem.blocks.0.conv1.conv.weight");
}

/** PrimusV2 / V3's patch embedding from its weights (see the module comment). */
function deeperEmbedding(
  weights: Map<unknown, unknown>,
  trainerName: string,
  need: (key: string, rank: number) => number[],
  where: string,
): { embedDim: number; cin: number; patchEmbed: number[]; embedding: PrimusEmbedding } {
  const dp = "down_projection";
  const block = (path: string, cin: number, stride: number[]): BasicBlockD => {
    const w = need(`${path}.conv1.conv.weight`, 5);
    const kernel = w.slice(2);
    if (kernel.some((k) => k % 2 === 0 || k > 7))
      throw err(where, `${path}.conv1.conv.weight is [${w.join(", ")}]: the embedding's kernels are odd, up to 7`);
    if (w[1] !== cin) throw err(where, `${path}.conv1.conv takes ${w[1]} channels; what comes to it has ${cin}`);
    if (!(w[0]! >= 1 && w[0]! <= 1 << 14)) throw err(where, `${path} makes ${w[0]} channels; 1 to 16384 run`);
    return { path, cin, cout: w[0]!, kernel, stride, bias: weights.has(`${path}.conv1.conv.bias`) };
  };
  const blocks = (prefix: string, cin: number, stride: number[]): BasicBlockD[] => {
    const out = [block(`${prefix}.blocks.0`, cin, stride)];
    while (weights.has(`${prefix}.blocks.${out.length}.conv1.conv.weight`)) {
      if (out.length >= 64) throw err(where, `${prefix} has over 64 blocks`);
      out.push(block(`${prefix}.blocks.${out.length}`, out.at(-1)!.cout, [1, 1, 1]));
    }
    return out;
  };
  const cin = need(`${dp}.stem.blocks.0.conv1.conv.weight`, 5)[1]!;
  const stem = blocks(`${dp}.stem`, cin, [1, 1, 1]);
  const levels: BasicBlockD[][] = [];
  let c = stem.at(-1)!.cout;
  while (weights.has(`${dp}.stages.${levels.length}.blocks.0.conv1.conv.weight`)) {
    if (levels.length >= 4) throw err(where, `the patch embedding has over 4 levels (a patch over 16³)`);
    const s = blocks(`${dp}.stages.${levels.length}`, c, [2, 2, 2]);
    levels.push(s);
    c = s.at(-1)!.cout;
  }
  if (!levels.length) throw err(where, `the patch embedding has no levels (${dp}.stages.0)`);
  const fw = need(`${dp}.final_proj.weight`, 5);
  const finalKernel = fw.slice(2);
  if (fw[1] !== c || !(finalKernel.every((k) => k === 1) || finalKernel.every((k) => k === 3)) || !(fw[0]! >= 1 && fw[0]! <= 16384))
    throw err(
      where,
      `${dp}.final_proj.weight is [${fw.join(", ")}]; the last level's ${c} channels to a width of 1 to 16384 through a 1³ or 3³ convolution needs [width, ${c}, 1, 1, 1] or [width, ${c}, 3, 3, 3]`,
    );
  const L = levels.length;
  const tokenSkips: { cin: number; downBy: number }[] = [];
  while (weights.has(`${dp}.proj_to_tokens.${tokenSkips.length}.weight`)) {
    const k = tokenSkips.length;
    if (k >= L) throw err(where, `${dp}.proj_to_tokens has more than the ${L} projections (the stem's and each level's but the last)`);
    const want = k === 0 ? stem.at(-1)!.cout : levels[k - 1]!.at(-1)!.cout,
      downBy = 2 ** (L - k);
    const pw = need(`${dp}.proj_to_tokens.${k}.weight`, 5);
    if (pw[0] !== fw[0] || pw[1] !== want || pw.slice(2).some((v) => v !== downBy))
      throw err(
        where,
        `${dp}.proj_to_tokens.${k}.weight is [${pw.join(", ")}]; the map it projects needs [${fw[0]}, ${want}, ${downBy}, ${downBy}, ${downBy}]`,
      );
    tokenSkips.push({ cin: want, downBy });
  }
  if (tokenSkips.length && tokenSkips.length !== L)
    throw err(
      where,
      `${dp}.proj_to_tokens holds ${tokenSkips.length} projections; PrimusV3 projects the stem's and each level's but the last (${L})`,
    );
  // V2 or V3 (ReLU or LeakyReLU, which no weight shows): the trainer's name, else V3's token projections,
  // else PatchEmbed_deeper's widths (the stem's b, then b · 2^i); anything else is not guessed
  const named = /PrimusV3/.test(trainerName) ? "V3" : /PrimusV2/.test(trainerName) ? "V2" : null;
  if (named === "V2" && tokenSkips.length)
    throw err(
      where,
      `trainer ${trainerName} names PrimusV2, whose patch embedding has no ${dp}.proj_to_tokens; these weights have them (PrimusV3's)`,
    );
  const b0 = stem.at(-1)!.cout;
  const v2Widths = levels.every((l, i) => l.every((blk) => blk.cout === b0 * 2 ** i));
  const variant = named ?? (tokenSkips.length ? "V3" : v2Widths ? "V2" : null);
  if (!variant)
    throw err(
      where,
      `trainer ${trainerName} built a Primus with a residual patch embedding whose blocks' nonlin (ReLU in PrimusV2's, LeakyReLU in V3's) its weights do not show: neither the trainer's name nor the widths tell`,
    );
  return {
    embedDim: fw[0]!,
    cin,
    patchEmbed: [2 ** L, 2 ** L, 2 ** L],
    embedding: { kind: "deeper", variant, nonlin: variant === "V3" ? "leakyrelu" : "relu", stem, levels, finalKernel, tokenSkips },
  };
}

/**
 * Primus's architecture from its checkpoint: `heads` given, or from the trainer's name; the rest
 * from the weights' shapes. `patch` is the plans' patch size.
 */
export function primusArchitecture(
  weights: Map<unknown, unknown>,
  trainerName: string,
  patch: readonly number[],
  inputChannels: number,
  numClasses: number,
  heads: number | undefined,
  where: string,
): PrimusArchitecture {
  const shape = (key: string): number[] | undefined => {
    const t = weights.get(key);
    return t instanceof TensorRef ? t.shape : undefined;
  };
  const need = (key: string, rank: number): number[] => {
    const s = shape(key);
    if (!s || s.length !== rank)
      throw err(where, `network_weights["${key}"] must be a tensor of rank ${rank} (Primus), got ${s ? `[${s.join(", ")}]` : "none"}`);
    return s;
  };
  let embedDim: number, cin: number, patchEmbed: number[], embedding: PrimusEmbedding;
  if (isDeeperPrimus(weights)) {
    const d = deeperEmbedding(weights, trainerName, need, where);
    ({ embedDim, cin, patchEmbed, embedding } = d);
  } else {
    const pw = need("down_projection.proj.weight", 5);
    [embedDim, cin, ...patchEmbed] = pw as [number, number, ...number[]];
    embedding = { kind: "conv" };
  }
  if (cin !== inputChannels) throw err(where, `the patch embedding takes ${cin} channels; dataset.json names ${inputChannels}`);
  if (patch.length !== 3 || patch.some((p, i) => p % patchEmbed[i]! !== 0))
    throw err(
      where,
      `the plans' patch [${patch.join(", ")}] is not a multiple of Primus's patch embedding [${patchEmbed.join(", ")}] on every axis`,
    );
  if (!(embedDim >= 1 && embedDim <= 16384)) throw err(where, `Primus's width ${embedDim} is not 1 to 16384`);
  let depth = 0;
  while (weights.has(`eva.blocks.${depth}.norm1.weight`) && depth <= 1024) depth++;
  if (depth > 1024) throw err(where, "Primus with over 1024 EVA blocks");
  // the trainer's heads, where nnU-Net's own trainer (or a subclass that keeps its name as prefix) built it
  // (nnUNet_Primus_S_Trainer …, nnUNet_PrimusV2S_Trainer …, nnUNet_PrimusV3S_Trainer …: the same widths, depths and heads)
  const official = /^nnUNet_Primus(?:_|V[23])([SBML])_Trainer/.exec(trainerName)?.[1];
  if (heads === undefined) {
    if (!official)
      throw err(
        where,
        `trainer ${trainerName} builds a Primus whose number of attention heads the checkpoint does not hold; give it (options.heads, bhsd segment --heads)`,
      );
    const [w, d, h] = OFFICIAL[official]!;
    if (w !== embedDim || d !== depth)
      throw err(
        where,
        `${trainerName}'s Primus has width ${w} and ${d} blocks, the checkpoint ${embedDim} and ${depth}; give its number of heads (options.heads, bhsd segment --heads)`,
      );
    heads = h;
  }
  if (embedDim % heads !== 0) throw err(where, `Primus's width ${embedDim} does not split into ${heads} heads`);
  const hd = embedDim / heads;
  // (Eva: rope_dim = head_dim / 1.5 must be a multiple of 4)
  if (hd % 6 !== 0)
    throw err(where, `Primus's head width ${hd} (${embedDim} / ${heads} heads) is not a multiple of 6, as its 3-D rotary embedding needs`);
  const b0 = "eva.blocks.0";
  const swiglu = weights.has(`${b0}.mlp.fc1_g.weight`);
  const mlpHidden = need(swiglu ? `${b0}.mlp.fc1_g.weight` : `${b0}.mlp.fc1.weight`, 2)[0]!;
  const reg = shape("register_tokens");
  const registers = reg ? reg[1]! : 0;
  if (reg && (reg.length !== 3 || registers > 4096 || reg[2] !== embedDim))
    throw err(where, `network_weights["register_tokens"] has shape [${reg.join(", ")}]; Primus's are [1, R ≤ 4096, ${embedDim}]`);
  // the position embeddings are one per token of the patch the network was trained on
  const pos = shape("eva.pos_embed");
  const tokens = patch.reduce((p, q, i) => p * (q / patchEmbed[i]!), 1);
  if (pos && pos[1] !== tokens + registers)
    throw err(
      where,
      `eva.pos_embed holds ${pos[1]} tokens; the plans' patch [${patch.join(", ")}] gives ${tokens} (+ ${registers} registers): the plans are not the ones this network was trained with`,
    );
  // PatchDecode: log2 of the largest patch side stages, each halving the axes that still divide
  const stages = Math.floor(Math.log2(Math.max(...patchEmbed)) + 1e-9);
  if (stages < 1 || stages > 8) throw err(where, `Primus's patch embedding [${patchEmbed.join(", ")}] gives ${stages} decoder stages`);
  const decoderStrides = Array.from({ length: stages }, (_, n) => patchEmbed.map((p) => ((p / 2 ** n) % 2 === 0 ? 2 : 1))).reverse();
  const decoderChannels = [embedDim];
  for (let s = 0; s < stages; s++) {
    const key = s < stages - 1 ? `up_projection.decode.${s}.0.weight` : `up_projection.decode.${s}.weight`;
    const ws = need(key, 5);
    if (ws[0] !== decoderChannels[s])
      throw err(where, `network_weights["${key}"] takes ${ws[0]} channels, not the ${decoderChannels[s]} before it`);
    decoderChannels.push(ws[1]!);
  }
  if (decoderChannels.at(-1) !== numClasses)
    throw err(where, `Primus's decoder ends in ${decoderChannels.at(-1)} channels; dataset.json has ${numClasses} classes`);
  return {
    networkClass: "Primus",
    dims: 3,
    inputChannels,
    numClasses,
    inputSize: [...patch],
    patchEmbed,
    embedding,
    embedDim,
    depth,
    heads,
    mlpHidden,
    swiglu,
    mlpNorm: weights.has(`${b0}.mlp.norm.weight`),
    qkvBias: weights.has(`${b0}.attn.q_proj.bias`),
    innerNorm: weights.has(`${b0}.attn.norm.weight`),
    layerScale: weights.has(`${b0}.gamma_1`),
    registers,
    absPosEmbed: weights.has("eva.pos_embed"),
    decoderChannels,
    decoderStrides,
  };
}

/**
 * timm's rotary tables for the grid `feat` (C order, `ij` indexing) and head width `hd`, laid out as
 * [registers + grid tokens, 3, 1, hd] to multiply the split projection [1, n, 3, heads, hd] (every
 * head alike): cos, and sin with the rotation's sign (−sin on the even channel of a pair, +sin on
 * the odd), for q and k; 1 and 0 for v and on the registers' rows.
 */
/** Most values a rotary table may hold (128 MiB a table). */
const MAX_ROPE_VALUES = 2 ** 25;

export function rotaryTables(feat: readonly number[], registers: number, hd: number): { cos: Float32Array; sin: Float32Array } {
  const f = Math.fround;
  const nb = hd / 6; // bands per axis: rope_dim / 4, rope_dim = hd / 1.5
  // freq_bands(nb, 10000, step 1): 1 / 10000 ** (j / nb), in float32
  const bands = Array.from({ length: nb }, (_, j) => f(1 / f(Math.pow(10000, f(j / nb)))));
  const n = feat.reduce((p, q) => p * q, 1);
  const c3 = 3 * hd;
  // (checked before they are made: the head width comes from the checkpoint's shapes and the
  // caller's heads, the tokens from the plans' patch; 65 536 tokens of width 128 fit)
  if ((registers + n) * c3 > MAX_ROPE_VALUES)
    throw new RangeError(
      `Primus's rotary tables for ${registers + n} tokens of head width ${hd} would hold ${(registers + n) * c3} values each, more than ${MAX_ROPE_VALUES}: no trained Primus has such a patch and head width`,
    );
  const cos = new Float32Array((registers + n) * c3).fill(1);
  const sin = new Float32Array((registers + n) * c3);
  const row = new Float32Array(2 * hd); // one token's (cos, signed sin) per head channel
  for (let t = 0; t < n; t++) {
    // the token's grid coordinates; t / f · r with f = r (ref_feat_shape = feat_shape), in float32
    const coord: number[] = [];
    for (let a = feat.length - 1, r = t; a >= 0; a--) {
      const i = r % feat[a]!;
      r = Math.floor(r / feat[a]!);
      coord[a] = f(f(i / feat[a]!) * feat[a]!);
    }
    for (let a = 0; a < 3; a++)
      for (let j = 0; j < nb; j++) {
        const ang = f(coord[a]! * bands[j]!);
        const c = f(Math.cos(ang)),
          s = f(Math.sin(ang));
        const ch = 2 * (a * nb + j);
        row[ch] = c;
        row[ch + 1] = c;
        row[hd + ch] = -s;
        row[hd + ch + 1] = s;
      }
    const base = (registers + t) * c3;
    // q's and k's rows (v's stay cos 1, sin 0)
    for (let part = 0; part < 2; part++) {
      cos.set(row.subarray(0, hd), base + part * hd);
      sin.set(row.subarray(hd), base + part * hd);
    }
  }
  return { cos, sin };
}

/** Primus as a graph over the input [1, c, …inputSize], its output the logits [1, classes, …inputSize]. */
/** PrimusV2 / V3's patch embedding on the input (PatchEmbed_deeper, PatchEmbedDeeperControlled). */
function deeperGraph(b: GraphBuilder, m: Extract<PrimusEmbedding, { kind: "deeper" }>, C: number): string {
  const dp = "down_projection";
  const inorm: NormSpec = { kind: "instance", eps: 1e-5, affine: true, runningStats: false, groups: 1 };
  const act =
    m.nonlin === "relu"
      ? (x: string, name: string) => b.node("Relu", [x], name)
      : (x: string, name: string) => b.node("LeakyRelu", [x], name, { alpha: 0.01 });
  let x = "input";
  for (const blk of m.stem) x = basicBlockD(b, blk, x, inorm, act);
  const maps = [x];
  for (const level of m.levels) {
    for (const blk of level) x = basicBlockD(b, blk, x, inorm, act);
    maps.push(x);
  }
  const last = m.levels.at(-1)!.at(-1)!.cout;
  const e = b.conv(`${dp}.final_proj`, x, {
    cin: last,
    cout: C,
    kernel: m.finalKernel,
    stride: [1, 1, 1],
    pad: m.finalKernel.map((k) => k >> 1),
    bias: true,
  });
  if (!m.tokenSkips.length) return e;
  // p = Σ scale_k · proj_k(map_k), in the order PyTorch adds them; then final_proj(x) + p
  let p: string | undefined;
  m.tokenSkips.forEach(({ cin, downBy }, k) => {
    const d = [downBy, downBy, downBy];
    const proj = b.conv(`${dp}.proj_to_tokens.${k}`, maps[k]!, { cin, cout: C, kernel: d, stride: d, pad: [0, 0, 0], bias: true });
    const scaled = b.node("Mul", [b.param([`${dp}.scale_proj_to_tokens.${k}`], []), proj], `${dp}.scale_proj_to_tokens.${k}`);
    p = p === undefined ? scaled : b.add(p, scaled, `${dp}.proj_to_tokens.sum`);
  });
  return b.add(e, p!, `${dp}.skips`);
}

export function buildPrimus(a: PrimusArchitecture, where: string): NetworkGraph {
  const b = new GraphBuilder(3, where);
  const C = a.embedDim,
    H = a.heads,
    hd = C / H;
  const feat = a.inputSize.map((s, i) => s / a.patchEmbed[i]!);
  const n = feat.reduce((p, q) => p * q, 1),
    N = n + a.registers;
  const e =
    a.embedding.kind === "conv"
      ? b.conv("down_projection.proj", "input", {
          cin: a.inputChannels,
          cout: C,
          kernel: a.patchEmbed,
          stride: a.patchEmbed,
          pad: [0, 0, 0],
          bias: true,
        })
      : deeperGraph(b, a.embedding, C);
  // "b c w h d -> b (w h d) c"
  let t = b.transpose(b.reshape(e, [1, C, n], "tokens"), [0, 2, 1], "tokens");
  if (a.registers) t = b.node("Concat", [b.param(["register_tokens"], [1, a.registers, C]), t], "registers", { axis: 1 });
  if (a.absPosEmbed) t = b.add(t, b.param(["eva.pos_embed"], [1, N, C]), "eva.pos_embed");
  b.unused.push("mask_token");

  const { cos, sin } = rotaryTables(feat, a.registers, hd);
  const cosT = b.constant("eva.rope.cos", [N, 3, 1, hd], cos),
    sinT = b.constant("eva.rope.sin", [N, 3, 1, hd], sin);
  // each pair of a head's channels swapped: (x₀, x₁, x₂, x₃, …) → (x₁, x₀, x₃, x₂, …)
  const swapIdx = b.constant(
    "eva.rope.swap",
    [hd],
    BigInt64Array.from({ length: hd }, (_, i) => BigInt(i ^ 1)),
  );
  const zerosC = b.constant("eva.k_bias", [C], new Float32Array(C));
  const scale = b.constant("eva.scale", [], Float32Array.of(Math.fround(hd ** -0.5)));

  for (let i = 0; i < a.depth; i++) {
    const p = `eva.blocks.${i}`;
    const h = b.layerNorm(`${p}.norm1`, t, C);
    // q, k, v projections as one: the weights side by side ([C, 3C]; folded once at load), k without bias
    const w = b.node(
      "Concat",
      ["q", "k", "v"].map((x) => b.param([`${p}.attn.${x}_proj.weight`], [C, C], true)),
      `${p}.attn.qkv_weight`,
      { axis: 1 },
    );
    let qkv = b.node("MatMul", [h, w], `${p}.attn.qkv`);
    if (a.qkvBias) {
      const bias = b.node(
        "Concat",
        [b.param([`${p}.attn.q_proj.bias`], [C]), zerosC, b.param([`${p}.attn.v_proj.bias`], [C])],
        `${p}.attn.qkv_bias`,
        {
          axis: 0,
        },
      );
      qkv = b.add(qkv, bias, `${p}.attn.qkv_bias`);
    }
    // the rotary embedding on q and k of the split [1, N, 3, H, hd]: x · cos + swap(x) · ±sin
    const rope = (x: string) =>
      b.add(
        b.node("Mul", [x, cosT], `${p}.attn.rope_cos`),
        b.node("Mul", [b.node("Gather", [x, swapIdx], `${p}.attn.rope_swap`, { axis: -1 }), sinT], `${p}.attn.rope_sin`),
        `${p}.attn.rope`,
      );
    const [q, k, v] = splitQkv(b, qkv, 1, N, H, hd, `${p}.attn`, rope);
    // (timm's EvaAttention without fused SDPA: q · scale first)
    const qs = b.node("Mul", [q, scale], `${p}.attn.q_scale`);
    let o = attend(b, qs, k, v, { batch: 1, heads: H, n: N, hd }, `${p}.attn`, null, []);
    if (a.innerNorm) o = b.layerNorm(`${p}.attn.norm`, o, C);
    o = b.linear(`${p}.attn.proj`, o, C, C, true);
    if (a.layerScale) o = b.node("Mul", [o, b.param([`${p}.gamma_1`], [C])], `${p}.gamma_1`);
    t = b.add(t, o, `${p}.residual1`);

    const h2 = b.layerNorm(`${p}.norm2`, t, C);
    let m: string;
    if (a.swiglu) {
      const g = b.linear(`${p}.mlp.fc1_g`, h2, C, a.mlpHidden, true);
      const x = b.linear(`${p}.mlp.fc1_x`, h2, C, a.mlpHidden, true);
      m = b.node("Mul", [b.node("Mul", [g, b.node("Sigmoid", [g], `${p}.mlp.act`)], `${p}.mlp.act`), x], `${p}.mlp.gate`);
    } else m = b.node("Gelu", [b.linear(`${p}.mlp.fc1`, h2, C, a.mlpHidden, true)], `${p}.mlp.act`);
    if (a.mlpNorm) m = b.layerNorm(`${p}.mlp.norm`, m, a.mlpHidden);
    m = b.linear(`${p}.mlp.fc2`, m, a.mlpHidden, C, true);
    if (a.layerScale) m = b.node("Mul", [m, b.param([`${p}.gamma_2`], [C])], `${p}.gamma_2`);
    t = b.add(t, m, `${p}.residual2`);
  }
  t = b.layerNorm("eva.norm", t, C);
  if (a.registers)
    t = b.node(
      "Slice",
      [t, b.ints("registers.start", [a.registers]), b.ints("registers.end", [N]), b.ints("registers.axis", [1])],
      "registers.drop",
    );
  // "b (w h d) c -> b c w h d"
  let y = b.reshape(b.transpose(t, [0, 2, 1], "grid"), [1, C, ...feat], "grid");

  const stages = a.decoderStrides.length;
  for (let s = 0; s < stages; s++) {
    const last = s === stages - 1;
    const path = last ? `up_projection.decode.${s}` : `up_projection.decode.${s}.0`;
    const ci = a.decoderChannels[s]!,
      co = a.decoderChannels[s + 1]!;
    const k = a.decoderStrides[s]!;
    y = b.conv(path, y, { cin: ci, cout: co, kernel: k, stride: k, pad: [0, 0, 0], bias: true, transposed: true });
    if (!last) {
      // LayerNormNd over the channels (eps 1e-6), then GELU
      const cl = b.transpose(y, [0, 2, 3, 4, 1], `up_projection.decode.${s}.1`);
      const nrm = b.layerNorm(`up_projection.decode.${s}.1`, cl, co, `up_projection.decode.${s}.1`, 1e-6);
      y = b.node("Gelu", [b.transpose(nrm, [0, 4, 1, 2, 3], `up_projection.decode.${s}.1`)], `up_projection.decode.${s}.2`);
    }
  }
  return { ...b.network(b.nodes.at(-1)!.outputs[0]!), divisor: [a.inputSize[0]!, a.inputSize[1]!, a.inputSize[2]!] };
}
