/**
 * MONAI's MedNeXt (monai.networks.nets.MedNeXt, MONAI 1.5; Roy et al., MICCAI 2023: a ConvNeXt-style
 * U-Net) rebuilt from a bundle's `network_def`, with its aliases MedNeXtS/B/M/L (create_mednext's
 * four variants). Each block: a depthwise convolution (kernel_size, padding k // 2), GroupNorm with
 * one group a channel, a 1×1 expansion, GELU (erf), optionally global response normalization, a 1×1
 * compression, optionally the input added. Down-sampling blocks make the depthwise convolution
 * stride 2 (and add a strided 1×1 of the input); up-sampling ones make it a transposed one, pad one
 * voxel at the start of each axis (F.pad(x, (1, 0, …))), and add the skip. The output is a 1×1
 * transposed convolution. Deep supervision's heads run in training only: their weights are read
 * past. norm_type "layer" (an nn.LayerNorm over [C, k, k, k], which only runs where a feature map
 * is k voxels wide) is refused.
 */
import { finish, flag, intList, kwargs, posInt, spatialDims, divisorOf, type MonaiNetwork } from "./args.js";
import { GraphBuilder, monaiError } from "./layers.js";
import { brief } from "../../is.js";

/** create_mednext's variants: the aliases' arguments (their kernel_size 3 unless given). */
const VARIANTS: Record<"S" | "B" | "M" | "L", Record<string, unknown>> = {
  S: {
    encoder_expansion_ratio: 2,
    decoder_expansion_ratio: 2,
    bottleneck_expansion_ratio: 2,
    blocks_down: [2, 2, 2, 2],
    blocks_bottleneck: 2,
    blocks_up: [2, 2, 2, 2],
  },
  B: {
    encoder_expansion_ratio: [2, 3, 4, 4],
    decoder_expansion_ratio: [4, 4, 3, 2],
    bottleneck_expansion_ratio: 4,
    blocks_down: [2, 2, 2, 2],
    blocks_bottleneck: 2,
    blocks_up: [2, 2, 2, 2],
  },
  M: {
    encoder_expansion_ratio: [2, 3, 4, 4],
    decoder_expansion_ratio: [4, 4, 3, 2],
    bottleneck_expansion_ratio: 4,
    blocks_down: [3, 4, 4, 4],
    blocks_bottleneck: 4,
    blocks_up: [4, 4, 4, 3],
  },
  L: {
    encoder_expansion_ratio: [3, 4, 8, 8],
    decoder_expansion_ratio: [8, 8, 4, 3],
    bottleneck_expansion_ratio: 8,
    blocks_down: [3, 4, 8, 8],
    blocks_bottleneck: 8,
    blocks_up: [8, 8, 4, 3],
  },
};

/** The variant an alias names (MedNeXtS, MedNextSmall …), or undefined for MedNeXt itself. */
export function mednextVariant(cls: string): "S" | "B" | "M" | "L" | undefined {
  const m = /^MedNe[xX]t(S|B|M|L|Small|Base|Medium|Large)$/.exec(cls);
  return m ? (m[1]![0] as "S" | "B" | "M" | "L") : undefined;
}

/** One MedNeXt block: its state_dict path, expansion ratio, depthwise kernel and whether it has GRN. */
export interface MedNeXtBlockSpec {
  path: string;
  ratio: number;
  kernel: number;
  grn: boolean;
}

/**
 * A MedNeXt network with each block spelt out: MONAI's and MedNextV1's (the nnU-Net v1 fork's)
 * differ in names, in which ratio a resampling block takes and in which blocks have GRN.
 * `up` and `dec` run from the deepest level up.
 */
export interface MedNeXtLayout {
  dims: 2 | 3;
  inputChannels: number;
  outputChannels: number;
  /** Channels of the first level (each level doubles them). */
  filters: number;
  enc: MedNeXtBlockSpec[][];
  down: MedNeXtBlockSpec[];
  bottleneck: MedNeXtBlockSpec[];
  up: MedNeXtBlockSpec[];
  dec: MedNeXtBlockSpec[][];
  /** The input added to a plain block's output (`do_res`, `use_residual_connection`). */
  residual: boolean;
  /** A strided (transposed) 1×1 of the input added to a resampling block's (`do_res_up_down`). */
  resampleResidual: boolean;
  /** GRN's γ and β parameter names in a block. */
  grnNames: [string, string];
}

/** The graph of a MedNeXt layout (stem, levels, bottleneck, decoder, `out_0.conv_out`); returns its output. */
export function mednextGraph(b: GraphBuilder, l: MedNeXtLayout): string {
  const dims = l.dims;
  const L = l.down.length;
  const fill = (v: number) => Array<number>(dims).fill(v);
  const spatialAxes = Array.from({ length: dims }, (_, i) => i + 2);
  const [gammaName, betaName] = l.grnNames;
  /** F.pad(x, (1, 0) on every spatial axis): one voxel of zeros at the start of each. */
  const padStart = (x: string, name: string) =>
    b.node("Pad", [x, b.ints(`${name}.pads`, [0, 0, ...fill(1), 0, 0, ...fill(0)])], name, { mode: "constant" });
  /** Global response normalization over eC channels: γ·(x·N(x)) + β + x, N = ‖x‖ / (mean_c ‖x‖ + 1e-6). */
  const globalResponseNorm = (path: string, x: string, c: number) => {
    const shape = [1, c, ...fill(1)];
    const gx = b.node(
      "Sqrt",
      [
        b.node("ReduceSum", [b.node("Mul", [x, x], `${path}.grn_square`), b.ints(`${path}.grn_axes`, spatialAxes)], `${path}.grn_sum`, {
          keepdims: 1,
        }),
      ],
      `${path}.grn_norm`,
    );
    const mean = b.node("ReduceMean", [gx, b.ints(`${path}.grn_channels`, [1])], `${path}.grn_mean`, { keepdims: 1 });
    const nx = b.node(
      "Div",
      [gx, b.node("Add", [mean, b.constant(`${path}.grn_eps`, [], Float32Array.of(1e-6))], `${path}.grn_den`)],
      `${path}.grn_nx`,
    );
    const scaled = b.node("Mul", [b.param([`${path}.${gammaName}`], shape), b.node("Mul", [x, nx], `${path}.grn_xn`)], `${path}.grn_gamma`);
    return b.add(b.add(scaled, b.param([`${path}.${betaName}`], shape), `${path}.grn_beta`), x, `${path}.grn_residual`);
  };
  /**
   * MedNeXtBlock: c → co channels; `resample` makes conv1 strided ("down") or transposed ("up");
   * `res` adds the input (plain blocks, c = co).
   */
  const block = (s: MedNeXtBlockSpec, x: string, c: number, co: number, opts: { resample?: "down" | "up"; res: boolean }) => {
    const { path, ratio: e, kernel: kern } = s;
    let y = b.conv(`${path}.conv1`, x, {
      cin: c,
      cout: c,
      kernel: fill(kern),
      stride: fill(opts.resample ? 2 : 1),
      pad: fill(kern >> 1),
      bias: true,
      groups: c,
      ...(opts.resample === "up" ? { transposed: true } : {}),
    });
    y = b.norm({ kind: "group", groups: c, eps: 1e-5, affine: true, runningStats: false }, `${path}.norm`, y, c);
    y = b.conv(`${path}.conv2`, y, { cin: c, cout: e * c, kernel: fill(1), stride: fill(1), pad: fill(0), bias: true });
    y = b.node("Gelu", [y], `${path}.act`);
    if (s.grn) y = globalResponseNorm(path, y, e * c);
    y = b.conv(`${path}.conv3`, y, { cin: e * c, cout: co, kernel: fill(1), stride: fill(1), pad: fill(0), bias: true });
    if (opts.res) y = b.add(x, y, `${path}.residual`);
    if (opts.resample === "up") y = padStart(y, `${path}.pad`);
    if (opts.resample && l.resampleResidual) {
      let r = b.conv(`${path}.res_conv`, x, {
        cin: c,
        cout: co,
        kernel: fill(1),
        stride: fill(2),
        pad: fill(0),
        bias: true,
        ...(opts.resample === "up" ? { transposed: true } : {}),
      });
      if (opts.resample === "up") r = padStart(r, `${path}.res_pad`);
      y = b.add(y, r, `${path}.res_add`);
    }
    return y;
  };

  const f0 = l.filters;
  let x = b.conv("stem", "input", { cin: l.inputChannels, cout: f0, kernel: fill(1), stride: fill(1), pad: fill(0), bias: true });
  const skips: string[] = [];
  for (let i = 0; i < L; i++) {
    const c = f0 * 2 ** i;
    for (const s of l.enc[i]!) x = block(s, x, c, c, { res: l.residual });
    skips.push(x);
    x = block(l.down[i]!, x, c, 2 * c, { resample: "down", res: false });
  }
  const cb = f0 * 2 ** L;
  for (const s of l.bottleneck) x = block(s, x, cb, cb, { res: l.residual });
  for (let i = 0; i < L; i++) {
    const c = f0 * 2 ** (L - i);
    const up = l.up[i]!;
    x = block(up, x, c, c / 2, { resample: "up", res: false });
    x = b.add(x, skips[L - 1 - i]!, `${up.path}.skip`);
    for (const s of l.dec[i]!) x = block(s, x, c / 2, c / 2, { res: l.residual });
  }
  return b.conv("out_0.conv_out", x, {
    cin: f0,
    cout: l.outputChannels,
    kernel: fill(1),
    stride: fill(1),
    pad: fill(0),
    bias: true,
    transposed: true,
  });
}

export function buildMedNeXt(a: Record<string, unknown>, where: string, variant?: "S" | "B" | "M" | "L"): MonaiNetwork {
  let k: Record<string, unknown>;
  if (variant) {
    // create_mednext(variant, spatial_dims, in_channels, out_channels, kernel_size, deep_supervision)
    const given = kwargs(
      a,
      { spatial_dims: 3, in_channels: 1, out_channels: 2, kernel_size: 3, deep_supervision: false },
      [],
      `MedNeXt${variant}`,
      where,
    );
    k = {
      ...given,
      ...VARIANTS[variant],
      init_filters: 32,
      use_residual_connection: true,
      norm_type: "group",
      global_resp_norm: false,
    };
  } else
    k = kwargs(
      a,
      {
        spatial_dims: 3,
        init_filters: 32,
        in_channels: 1,
        out_channels: 2,
        encoder_expansion_ratio: 2,
        decoder_expansion_ratio: 2,
        bottleneck_expansion_ratio: 2,
        kernel_size: 7,
        deep_supervision: false,
        use_residual_connection: false,
        blocks_down: [2, 2, 2, 2],
        blocks_bottleneck: 2,
        blocks_up: [2, 2, 2, 2],
        norm_type: "group",
        global_resp_norm: false,
      },
      [],
      "MedNeXt",
      where,
    );
  const dims = spatialDims(k.spatial_dims, where, "MedNeXt");
  const f0 = posInt(k.init_filters, where, "MedNeXt's init_filters");
  const cin = posInt(k.in_channels, where, "MedNeXt's in_channels"),
    cout = posInt(k.out_channels, where, "MedNeXt's out_channels");
  const kern = posInt(k.kernel_size, where, "MedNeXt's kernel_size", 31);
  if (kern % 2 === 0)
    throw monaiError(where, `MedNeXt's kernel_size must be odd (its padding k // 2 keeps the size only then), got ${kern}`);
  const down = intList(k.blocks_down, where, "MedNeXt's blocks_down", 0);
  const up = intList(k.blocks_up, where, "MedNeXt's blocks_up", 0);
  const L = down.length;
  if (up.length !== L)
    throw monaiError(
      where,
      `MedNeXt's blocks_up must have as many entries as blocks_down (${L}: the decoder's widths mirror the encoder's), got ${brief(k.blocks_up)}`,
    );
  if (L > 8) throw monaiError(where, `MedNeXt with ${L} levels: at most 8`);
  // (0: an empty Sequential, as MONAI allows)
  const nBottleneck = k.blocks_bottleneck === 0 ? 0 : posInt(k.blocks_bottleneck, where, "MedNeXt's blocks_bottleneck", 4096);
  const ratios = (v: unknown, what: string) => {
    const r = typeof v === "number" ? Array<number>(L).fill(v) : v;
    const list = intList(r, where, `MedNeXt's ${what}`);
    // (MONAI reads the first L: a longer list is accepted as there)
    if (list.length < L) throw monaiError(where, `MedNeXt's ${what} must be one integer or ${L} (one a level), got ${brief(v)}`);
    return list.slice(0, L);
  };
  const enc = ratios(k.encoder_expansion_ratio, "encoder_expansion_ratio"),
    dec = ratios(k.decoder_expansion_ratio, "decoder_expansion_ratio");
  const bottleneck = posInt(k.bottleneck_expansion_ratio, where, "MedNeXt's bottleneck_expansion_ratio");
  const residual = flag(k.use_residual_connection, where, "MedNeXt's use_residual_connection");
  const grn = flag(k.global_resp_norm, where, "MedNeXt's global_resp_norm");
  const deep = flag(k.deep_supervision, where, "MedNeXt's deep_supervision");
  if (k.norm_type !== "group")
    throw monaiError(
      where,
      `MedNeXt's norm_type ${brief(k.norm_type)}: bhsd builds "group" (the default; "layer" normalizes over [C, k, k, k] and runs only where a feature map is k voxels wide)`,
    );
  if (f0 * 2 ** L > 1 << 16)
    throw monaiError(where, `MedNeXt's widest level (init_filters · 2^${L} = ${f0 * 2 ** L}) is past 65536 channels`);
  // (MedNeXt-L has 64 blocks: a network_def asking for thousands is refused before any is built)
  const blocks = [...down, ...up].reduce((p, q) => p + q, 0) + nBottleneck;
  if (blocks > 4096) throw monaiError(where, `MedNeXt with ${blocks} blocks: at most 4096`);

  // MONAI's names; each level's down-sampling block expands as its stage, each up-sampling block as
  // the stage after it, and the down-sampling blocks are made without global_resp_norm (MedNeXt does
  // not pass it)
  const spec = (path: string, ratio: number, g: boolean): MedNeXtBlockSpec => ({ path, ratio, kernel: kern, grn: g });
  const layout: MedNeXtLayout = {
    dims,
    inputChannels: cin,
    outputChannels: cout,
    filters: f0,
    enc: down.map((n, i) => Array.from({ length: n }, (_, j) => spec(`enc_stages.${i}.${j}`, enc[i]!, grn))),
    down: down.map((_, i) => spec(`down_blocks.${i}`, enc[i]!, false)),
    bottleneck: Array.from({ length: nBottleneck }, (_, j) => spec(`bottleneck.${j}`, bottleneck, grn)),
    up: up.map((_, i) => spec(`up_blocks.${i}`, dec[i]!, grn)),
    dec: up.map((n, i) => Array.from({ length: n }, (_, j) => spec(`dec_stages.${i}.${j}`, dec[i]!, grn))),
    residual,
    resampleResidual: residual,
    grnNames: ["global_resp_gamma", "global_resp_beta"],
  };
  const b = new GraphBuilder(dims, where);
  const out = mednextGraph(b, layout);
  // deep supervision's heads (training only)
  if (deep) for (let j = 0; j < L; j++) b.unused.push(`out_blocks.${j}.conv_out.weight`, `out_blocks.${j}.conv_out.bias`);
  const fill = (v: number) => Array<number>(dims).fill(v);
  return finish(b, "MedNeXt", k, dims, cin, cout, out, divisorOf(dims, [fill(2 ** L)]));
}
