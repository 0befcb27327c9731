/**
 * MONAI's segmentation networks rebuilt from a bundle's `network_def` (the class and its keyword
 * arguments) as ONNX graphs for the engine, following MONAI 1.4's modules: UNet (with or without
 * residual units), SegResNet (and SegResNetVAE, the same in eval mode), DynUNet (basic or residual blocks; deep-supervision heads are read
 * past, as eval mode does) and BasicUNet; SwinUNETR and UNETR in transformers.ts. Each parameter is listed under every name PyTorch's
 * state_dict gives it: DynUNet registers its blocks twice (`input_block.…` is also
 * `skip_layers.downsample.…`). Arguments are checked as the class's constructor would and anything
 * bhsd does not build is an error naming the argument; the inference graph is what eval mode runs
 * (dropout is the identity).
 */
import {
  GraphBuilder,
  monaiError,
  parseAct,
  parseNorm,
  perAxis,
  samePadding,
  transposedConv,
  unetBlock,
  type ActSpec,
  type NormSpec,
} from "./layers.js";
import {
  divisorOf,
  dropoutOk,
  finish,
  flag,
  intList,
  kwargs,
  MONAI_NETWORKS,
  posInt,
  spatialDims,
  type MonaiNetwork,
  type MonaiNetworkClass,
} from "./args.js";

import { buildSwinUNETR, buildUNETR } from "./transformers.js";
import { buildMedNeXt, mednextVariant } from "./mednext.js";
import { brief } from "../../is.js";

export { MONAI_NETWORKS, type MonaiNetwork, type MonaiNetworkClass } from "./args.js";

/** The class a `_target_` names: "UNet", "monai.networks.nets.UNet", or MONAI's aliases (Unet, DynUnet …). */
export function monaiClassOf(target: unknown, where: string): MonaiNetworkClass {
  if (typeof target !== "string" || !/^[A-Za-z_][A-Za-z0-9_.]*$/.test(target))
    throw monaiError(where, `network_def's _target_ must name a MONAI network class, got ${brief(target)}`);
  const parts = target.split(".");
  const cls = parts[parts.length - 1]!;
  const mod = parts.slice(0, -1).join(".");
  if (
    mod &&
    ![
      "monai.networks.nets",
      "monai.networks.nets.unet",
      "monai.networks.nets.attentionunet",
      "monai.networks.nets.segresnet",
      "monai.networks.nets.segresnet_ds",
      "monai.networks.nets.dynunet",
      "monai.networks.nets.basic_unet",
      "monai.networks.nets.swin_unetr",
      "monai.networks.nets.unetr",
      "monai.networks.nets.mednext",
    ].includes(mod)
  )
    throw monaiError(where, `network_def's _target_ "${target}" is not one of MONAI's networks (monai.networks.nets)`);
  const aliases: Record<string, MonaiNetworkClass> = {
    UNet: "UNet",
    Unet: "UNet",
    unet: "UNet",
    AttentionUnet: "AttentionUnet",
    SegResNet: "SegResNet",
    SegResNetVAE: "SegResNetVAE",
    SegResNetDS: "SegResNetDS",
    DynUNet: "DynUNet",
    DynUnet: "DynUNet",
    Dynunet: "DynUNet",
    BasicUNet: "BasicUNet",
    BasicUnet: "BasicUNet",
    Basicunet: "BasicUNet",
    basicunet: "BasicUNet",
    SwinUNETR: "SwinUNETR",
    UNETR: "UNETR",
    MedNeXt: "MedNeXt",
    MedNext: "MedNeXt",
  };
  // (MedNeXt's variants, MedNeXtS … MedNextLarge: MedNeXt with create_mednext's arguments)
  if (mednextVariant(cls)) return "MedNeXt";
  const c = Object.hasOwn(aliases, cls) ? aliases[cls] : undefined;
  if (!c) throw monaiError(where, `network_def's _target_ "${target}": bhsd builds MONAI's ${MONAI_NETWORKS.join(", ")}`);
  return c;
}

/** UNet's and AttentionUnet's `channels` (two or more) and the `strides` between them (the rest unused, as theirs). */
function levels(k: Record<string, unknown>, dims: number, cls: string, where: string): { channels: number[]; strides: number[][] } {
  const channels = intList(k.channels, where, `${cls}'s channels`);
  if (channels.length < 2) throw monaiError(where, `${cls}'s channels must list at least 2 values`);
  if (!Array.isArray(k.strides) || k.strides.length < channels.length - 1)
    throw monaiError(
      where,
      `${cls}'s strides must list at least ${channels.length - 1} values (len(channels) − 1), got ${brief(k.strides)}`,
    );
  const strides = (k.strides as unknown[]).slice(0, channels.length - 1).map((s, i) => perAxis(s, dims, where, `${cls}'s strides[${i}]`));
  return { channels, strides };
}

/** MONAI's Convolution (conv then ADN: the norm, dropout and activation in `ordering`'s order). */
interface ConvSpec {
  kernel: number[];
  stride: number[];
  pad?: number[];
  act: ActSpec | null;
  norm: NormSpec | null;
  bias: boolean;
  convOnly?: boolean;
  transposed?: boolean;
  ordering?: string;
}

function convolution(b: GraphBuilder, path: string, x: string, cin: number, cout: number, s: ConvSpec): string {
  const dil = Array<number>(b.dims).fill(1);
  const pad = s.pad ?? samePadding(s.kernel, dil, b.where, path);
  let y = b.conv(`${path}.conv`, x, {
    cin,
    cout,
    kernel: s.kernel,
    stride: s.stride,
    pad,
    bias: s.bias,
    transposed: s.transposed ?? false,
    // stride_minus_kernel_padding(1, strides)
    outputPadding: s.stride.map((st) => st - 1),
  });
  if (s.convOnly) return y;
  for (const ch of (s.ordering ?? "NDA").toUpperCase()) {
    if (ch === "N" && s.norm) y = b.norm(s.norm, `${path}.adn.N`, y, cout);
    else if (ch === "A" && s.act) y = b.act(s.act, `${path}.adn.A`, y, cout);
  }
  return y;
}

function ordering(v: unknown, where: string): string {
  if (typeof v !== "string" || !/^[NDAnda]{0,3}$/.test(v) || new Set(v.toUpperCase()).size !== v.length)
    throw monaiError(where, `adn_ordering must be a string of N, D and A (each at most once), got ${brief(v)}`);
  return v;
}

function buildUNet(a: Record<string, unknown>, where: string): MonaiNetwork {
  const k = kwargs(
    a,
    { kernel_size: 3, up_kernel_size: 3, num_res_units: 0, act: "PRELU", norm: "INSTANCE", dropout: 0.0, bias: true, adn_ordering: "NDA" },
    ["spatial_dims", "in_channels", "out_channels", "channels", "strides"],
    "UNet",
    where,
  );
  const dims = spatialDims(k.spatial_dims, where, "UNet");
  const cin0 = posInt(k.in_channels, where, "UNet's in_channels"),
    cout0 = posInt(k.out_channels, where, "UNet's out_channels");
  const { channels, strides } = levels(k, dims, "UNet", where);
  const kernel = perAxis(k.kernel_size, dims, where, "UNet's kernel_size");
  const upKernel = perAxis(k.up_kernel_size, dims, where, "UNet's up_kernel_size");
  if (!Number.isInteger(k.num_res_units) || (k.num_res_units as number) < 0 || (k.num_res_units as number) > 64)
    throw monaiError(where, `UNet's num_res_units must be an integer ≥ 0, got ${brief(k.num_res_units)}`);
  const nres = k.num_res_units as number;
  const act = parseAct(k.act, where, "UNet's act");
  const norm = parseNorm(k.norm, null, where, "UNet's norm");
  dropoutOk(k.dropout, where, "UNet's dropout");
  const bias = flag(k.bias, where, "UNet's bias");
  const ord = ordering(k.adn_ordering, where);
  const b = new GraphBuilder(dims, where);
  const ones = Array<number>(dims).fill(1);
  const common = { act, norm, bias, ordering: ord };

  const residualUnit = (
    path: string,
    x: string,
    cin: number,
    cout: number,
    stride: number[],
    subunits: number,
    lastConvOnly: boolean,
  ): string => {
    let cx = x,
      sch = cin,
      sst = stride;
    const n = Math.max(1, subunits);
    for (let su = 0; su < n; su++) {
      cx = convolution(b, `${path}.conv.unit${su}`, cx, sch, cout, {
        ...common,
        kernel,
        stride: sst,
        convOnly: lastConvOnly && su === n - 1,
      });
      sch = cout;
      sst = ones;
    }
    let res = x;
    const strided = stride.some((s) => s !== 1);
    if (strided || cin !== cout) {
      const rk = strided ? kernel : ones;
      res = b.conv(`${path}.residual`, x, {
        cin,
        cout,
        kernel: rk,
        stride,
        pad: strided ? samePadding(kernel, ones, where, `${path}.residual`) : rk.map(() => 0),
        bias,
      });
    }
    return b.add(cx, res, `${path}.add`);
  };
  const down = (path: string, x: string, cin: number, cout: number, stride: number[]) =>
    nres > 0 ? residualUnit(path, x, cin, cout, stride, nres, false) : convolution(b, path, x, cin, cout, { ...common, kernel, stride });
  const up = (path: string, x: string, cin: number, cout: number, stride: number[], isTop: boolean): string => {
    const convPath = nres > 0 ? `${path}.0` : path;
    const y = convolution(b, convPath, x, cin, cout, {
      ...common,
      kernel: upKernel,
      stride,
      transposed: true,
      convOnly: isTop && nres === 0,
    });
    return nres > 0 ? residualUnit(`${path}.1`, y, cout, cout, ones, 1, isTop) : y;
  };
  const block = (path: string, x: string, inc: number, outc: number, ch: number[], st: number[][], isTop: boolean): string => {
    const c = ch[0]!;
    const d = down(`${path}.0`, x, inc, c, st[0]!);
    let sub: string, upc: number;
    if (ch.length > 2) {
      sub = block(`${path}.1.submodule`, d, c, c, ch.slice(1), st.slice(1), false);
      upc = 2 * c;
    } else {
      sub = down(`${path}.1.submodule`, d, c, ch[1]!, ones);
      upc = c + ch[1]!;
    }
    // SkipConnection: cat([x, submodule(x)], dim=1)
    return up(`${path}.2`, b.concat([d, sub], `${path}.1`), upc, outc, st[0]!, isTop);
  };
  const output = block("model", "input", cin0, cout0, channels, strides, true);
  return finish(b, "UNet", k, dims, cin0, cout0, output, divisorOf(dims, strides));
}

/**
 * AttentionUnet: UNet-like levels of two conv → batch norm → ReLU blocks, each skip gated by an
 * attention block (1×1 convolutions, batch norms, a sigmoid map multiplying the skip) before it is
 * concatenated with the transposed-convolution output and merged (conv → instance norm → PReLU).
 */
function buildAttentionUnet(a: Record<string, unknown>, where: string): MonaiNetwork {
  const k = kwargs(
    a,
    { kernel_size: 3, up_kernel_size: 3, dropout: 0.0 },
    ["spatial_dims", "in_channels", "out_channels", "channels", "strides"],
    "AttentionUnet",
    where,
  );
  const dims = spatialDims(k.spatial_dims, where, "AttentionUnet");
  const cin = posInt(k.in_channels, where, "AttentionUnet's in_channels"),
    cout = posInt(k.out_channels, where, "AttentionUnet's out_channels");
  const { channels, strides } = levels(k, dims, "AttentionUnet", where);
  const kernel = perAxis(k.kernel_size, dims, where, "AttentionUnet's kernel_size");
  const upKernel = perAxis(k.up_kernel_size, dims, where, "AttentionUnet's up_kernel_size");
  dropoutOk(k.dropout, where, "AttentionUnet's dropout");
  const b = new GraphBuilder(dims, where);
  const ones = Array<number>(dims).fill(1),
    zeros = Array<number>(dims).fill(0);
  const bn: NormSpec = { kind: "batch", affine: true, runningStats: true, eps: 1e-5, groups: 0 };
  const relu: ActSpec = { op: "relu" };
  const convBlock = (path: string, x: string, ci: number, co: number, stride: number[]) => {
    const y = convolution(b, `${path}.conv.0`, x, ci, co, { kernel, stride, act: relu, norm: bn, bias: true });
    return convolution(b, `${path}.conv.1`, y, co, co, { kernel, stride: ones, act: relu, norm: bn, bias: true });
  };
  const gate = (path: string, x: string, ci: number, co: number) =>
    b.norm(bn, `${path}.1`, b.conv(`${path}.0.conv`, x, { cin: ci, cout: co, kernel: ones, stride: ones, pad: zeros, bias: true }), co);
  const layer = (path: string, x: string, c: number, ch: number[], st: number[][]): string => {
    const below = ch[1]!;
    let lower: string;
    if (ch.length > 2) {
      const d = convBlock(`${path}.submodule.0`, x, c, below, st[0]!);
      lower = layer(`${path}.submodule.1`, d, below, ch.slice(1), st.slice(1));
    } else lower = convBlock(`${path}.submodule`, x, c, below, st[0]!);
    const up = convolution(b, `${path}.upconv.up`, lower, below, c, {
      kernel: upKernel,
      stride: st[0]!,
      act: relu,
      norm: bn,
      bias: true,
      transposed: true,
    });
    const fint = Math.floor(c / 2);
    const psi0 = b.act(
      relu,
      `${path}.attention.relu`,
      b.add(gate(`${path}.attention.W_g`, up, c, fint), gate(`${path}.attention.W_x`, x, c, fint), `${path}.attention.add`),
      fint,
    );
    const psi = b.act({ op: "sigmoid" }, `${path}.attention.psi.2`, gate(`${path}.attention.psi`, psi0, fint, 1), 1);
    const att = b.node("Mul", [x, psi], `${path}.attention.mul`);
    return convolution(b, `${path}.merge`, b.concat([att, up], `${path}.cat`), 2 * c, c, {
      kernel: Array<number>(dims).fill(3),
      stride: ones,
      act: { op: "prelu", n: 1 },
      norm: { kind: "instance", affine: false, runningStats: false, eps: 1e-5, groups: 0 },
      bias: true,
    });
  };
  const head = convBlock("model.0", "input", cin, channels[0]!, ones);
  const mid = layer("model.1", head, channels[0]!, channels, strides);
  const out = b.conv("model.2.conv", mid, { cin: channels[0]!, cout, kernel: ones, stride: ones, pad: zeros, bias: true });
  return finish(b, "AttentionUnet", k, dims, cin, cout, out, divisorOf(dims, strides));
}

/**
 * SegResNet, or SegResNetVAE (`vae`): the same network in eval mode — its variational
 * auto-encoder branch regularises training only (forward returns the segmentation and no loss
 * outside training), so its tensors are read past by name, as MONAI's constructor makes them.
 */
function buildSegResNet(a: Record<string, unknown>, where: string, vae = false): MonaiNetwork {
  const cls = vae ? "SegResNetVAE" : "SegResNet";
  const k = kwargs(
    a,
    {
      ...(vae ? { vae_estimate_std: false, vae_default_std: 0.3, vae_nz: 256 } : {}),
      spatial_dims: 3,
      init_filters: 8,
      in_channels: 1,
      out_channels: 2,
      dropout_prob: null,
      act: ["RELU", { inplace: true }],
      norm: ["GROUP", { num_groups: 8 }],
      // (SegResNetVAE's constructor has no norm_name or num_groups)
      ...(vae ? {} : { norm_name: "", num_groups: 8 }),
      use_conv_final: true,
      blocks_down: [1, 2, 2, 4],
      blocks_up: [1, 1, 1],
      upsample_mode: "nontrainable",
    },
    vae ? ["input_image_size"] : [],
    cls,
    where,
  );
  if (vae) {
    const size = k.input_image_size;
    if (!Array.isArray(size) || size.length < 1 || !size.every((v) => Number.isInteger(v) && v >= 1))
      throw monaiError(where, `SegResNetVAE's input_image_size must list positive integers, got ${brief(size)}`);
    posInt(k.vae_nz, where, "SegResNetVAE's vae_nz");
  }
  const dims = spatialDims(k.spatial_dims, where, "SegResNet");
  const f = posInt(k.init_filters, where, "SegResNet's init_filters");
  const cin = posInt(k.in_channels, where, "SegResNet's in_channels"),
    cout = posInt(k.out_channels, where, "SegResNet's out_channels");
  if (k.dropout_prob !== null && typeof k.dropout_prob !== "number")
    throw monaiError(where, `SegResNet's dropout_prob must be a number or null, got ${brief(k.dropout_prob)}`);
  const act = parseAct(k.act, where, "SegResNet's act");
  if (!act) throw monaiError(where, "SegResNet's act must name an activation");
  let normArg = k.norm;
  if (!vae && k.norm_name !== "") {
    if (typeof k.norm_name !== "string" || k.norm_name.toLowerCase() !== "group")
      throw monaiError(where, `SegResNet's norm_name must be "" or "group" (MONAI's deprecated option), got ${brief(k.norm_name)}`);
    normArg = ["group", { num_groups: posInt(k.num_groups, where, "SegResNet's num_groups") }];
  }
  const norm = parseNorm(normArg, null, where, "SegResNet's norm");
  if (!norm) throw monaiError(where, "SegResNet's norm must name a norm");
  // (the VAE branch's norms take 16 channels: PyTorch's GroupNorm refuses groups that do not divide them)
  if (vae && norm.kind === "group" && 16 % norm.groups !== 0)
    throw monaiError(where, `SegResNetVAE's group norm: num_groups ${norm.groups} does not divide its VAE branch's 16 channels`);
  const useFinal = flag(k.use_conv_final, where, "SegResNet's use_conv_final");
  const down = intList(k.blocks_down, where, "SegResNet's blocks_down", 0);
  const upBlocks = intList(k.blocks_up, where, "SegResNet's blocks_up", 0);
  if (upBlocks.length !== down.length - 1)
    throw monaiError(
      where,
      `SegResNet's blocks_up must have one entry fewer than blocks_down (${down.length - 1}), got ${brief(upBlocks)}`,
    );
  if (typeof k.upsample_mode !== "string" || k.upsample_mode.toLowerCase() !== "nontrainable")
    throw monaiError(where, `SegResNet's upsample_mode ${brief(k.upsample_mode)}: bhsd builds "nontrainable" (MONAI's default)`);
  const b = new GraphBuilder(dims, where);
  const ones = Array<number>(dims).fill(1),
    twos = Array<number>(dims).fill(2),
    k3 = Array<number>(dims).fill(3);
  const conv = (path: string, x: string, ci: number, co: number, kernel: number[], stride = ones, bias = false) =>
    b.conv(`${path}.conv`, x, { cin: ci, cout: co, kernel, stride, pad: kernel.map((q) => (q - 1) >> 1), bias });
  const resBlock = (path: string, x: string, c: number) => {
    let y = b.act(act, `${path}.act`, b.norm(norm, `${path}.norm1`, x, c), c);
    y = conv(`${path}.conv1`, y, c, c, k3);
    y = b.act(act, `${path}.act`, b.norm(norm, `${path}.norm2`, y, c), c);
    y = conv(`${path}.conv2`, y, c, c, k3);
    return b.add(y, x, `${path}.add`);
  };
  let x = conv("convInit", "input", cin, f, k3);
  const skips: string[] = [];
  down.forEach((n, i) => {
    const c = f * 2 ** i;
    if (i > 0) x = conv(`down_layers.${i}.0`, x, c / 2, c, k3, twos);
    for (let j = 0; j < n; j++) x = resBlock(`down_layers.${i}.${j + 1}`, x, c);
    skips.push(x);
  });
  skips.reverse();
  const nUp = upBlocks.length;
  for (let i = 0; i < nUp; i++) {
    const c = f * 2 ** (nUp - i);
    x = conv(`up_samples.${i}.0`, x, c, c / 2, ones);
    x = b.upsampleLinear(x, twos, `up_samples.${i}.1`);
    x = b.add(x, skips[i + 1]!, `up_samples.${i}.add`);
    for (let j = 0; j < upBlocks[i]!; j++) x = resBlock(`up_layers.${i}.${j}`, x, c / 2);
  }
  let out = f;
  if (useFinal) {
    x = b.act(act, "conv_final.1", b.norm(norm, "conv_final.0", x, f), f);
    x = conv("conv_final.2", x, f, cout, ones, ones, true);
    out = cout;
  } else {
    // (MONAI builds conv_final all the same: its tensors are in the state_dict, unread)
    const affine = norm.affine ? ["conv_final.0.weight", "conv_final.0.bias"] : [];
    const stats = norm.runningStats ? ["conv_final.0.running_mean", "conv_final.0.running_var", "conv_final.0.num_batches_tracked"] : [];
    const slope = act.op === "prelu" ? ["conv_final.1.weight"] : [];
    b.unused.push(
      ...affine,
      ...stats,
      ...slope,
      ...(act.op === "prelu" ? ["act_mod.weight"] : []),
      "conv_final.2.conv.weight",
      "conv_final.2.conv.bias",
    );
  }
  // (the final activation is also registered as `act_mod`: a PReLU's slope is in the state_dict twice)
  for (const p of b.params) if (p.names[0]!.startsWith("conv_final.1.")) p.names.push(`act_mod.${p.names[0]!.slice(13)}`);
  if (vae) {
    // _prepare_vae_modules and vae_conv_final: norms, the shared activation (a PReLU's slope under
    // each place it is used), convolutions and three Linear layers
    const normOf = (p: string) => [
      ...(norm.affine ? [`${p}.weight`, `${p}.bias`] : []),
      ...(norm.runningStats ? [`${p}.running_mean`, `${p}.running_var`, `${p}.num_batches_tracked`] : []),
    ];
    const actOf = (p: string) => (act.op === "prelu" ? [`${p}.weight`] : []);
    b.unused.push(
      ...normOf("vae_down.0"),
      ...actOf("vae_down.1"),
      "vae_down.2.conv.weight",
      "vae_down.2.conv.bias",
      ...normOf("vae_down.3"),
      ...actOf("vae_down.4"),
      ...["vae_fc1", "vae_fc2", "vae_fc3"].flatMap((l) => [`${l}.weight`, `${l}.bias`]),
      "vae_fc_up_sample.0.conv.weight",
      ...normOf("vae_fc_up_sample.2"),
      ...actOf("vae_fc_up_sample.3"),
      ...normOf("vae_conv_final.0"),
      ...actOf("vae_conv_final.1"),
      "vae_conv_final.2.conv.weight",
      "vae_conv_final.2.conv.bias",
    );
  }
  const div = 2 ** (down.length - 1);
  return finish(b, cls, k, dims, cin, out, x, divisorOf(dims, [[div, div, div].slice(0, dims)]));
}

/**
 * segresnet_ds's scales_for_resolution: per level, 2 along the axes downsampled there — the finer
 * axes first, until each is within a factor 2 of the coarsest — then 2 along all.
 */
export function scalesForResolution(resolution: number[], nStages: number): number[][] {
  const mx = Math.max(...resolution);
  const nl = resolution.map((r) => Math.floor(Math.log2(mx / r)));
  const maxNl = Math.max(...nl);
  let scales: number[][] = Array.from({ length: maxNl }, (_, i) => nl.map((n) => (2 ** i >= 2 ** n ? 1 : 2)));
  if (nStages > maxNl) scales = [...scales, ...Array.from({ length: nStages - maxNl }, () => resolution.map(() => 2))];
  else scales = scales.slice(0, nStages);
  return scales;
}

/**
 * SegResNetDS (Auto3DSeg's segresnet): an encoder of pre-activation residual blocks, transposed
 * convolutions up (or linear), the skips added; the full-resolution head gives the logits (the
 * deep-supervision heads above it are read past). With `resolution`, anisotropic kernels and
 * strides (scales_for_resolution). Norms get affine parameters unless told otherwise, as its
 * constructor sets them.
 */
function buildSegResNetDS(a: Record<string, unknown>, where: string): MonaiNetwork {
  const k = kwargs(
    a,
    {
      spatial_dims: 3,
      init_filters: 32,
      in_channels: 1,
      out_channels: 2,
      act: "relu",
      norm: "batch",
      blocks_down: [1, 2, 2, 4],
      blocks_up: null,
      dsdepth: 1,
      preprocess: null,
      upsample_mode: "deconv",
      resolution: null,
    },
    [],
    "SegResNetDS",
    where,
  );
  const dims = spatialDims(k.spatial_dims, where, "SegResNetDS");
  const f0 = posInt(k.init_filters, where, "SegResNetDS's init_filters");
  const cin = posInt(k.in_channels, where, "SegResNetDS's in_channels"),
    cout = posInt(k.out_channels, where, "SegResNetDS's out_channels");
  if (k.preprocess !== null) throw monaiError(where, "SegResNetDS's preprocess is a module bhsd does not build");
  // (the constructor's setdefault: affine norms)
  const rawNorm = typeof k.norm === "string" ? [k.norm, {}] : k.norm;
  const withAffine =
    Array.isArray(rawNorm) && rawNorm.length === 2 && rawNorm[1] && typeof rawNorm[1] === "object"
      ? [rawNorm[0], { affine: true, ...(rawNorm[1] as object) }]
      : rawNorm;
  const norm = parseNorm(withAffine, null, where, "SegResNetDS's norm");
  const act = parseAct(k.act, where, "SegResNetDS's act");
  if (!norm || !act) throw monaiError(where, "SegResNetDS's norm and act must name a norm and an activation");
  const down = intList(k.blocks_down, where, "SegResNetDS's blocks_down", 0);
  const nUp = down.length - 1;
  const upBlocks = k.blocks_up === null ? Array<number>(nUp).fill(1) : intList(k.blocks_up, where, "SegResNetDS's blocks_up", 0);
  if (upBlocks.length !== nUp)
    throw monaiError(where, `SegResNetDS's blocks_up must have ${nUp} entries (one fewer than blocks_down), got ${brief(k.blocks_up)}`);
  if (nUp === 0) throw monaiError(where, "SegResNetDS with one level (no down-sampling) is not one bhsd builds");
  if (!Number.isInteger(k.dsdepth)) throw monaiError(where, `SegResNetDS's dsdepth must be an integer, got ${brief(k.dsdepth)}`);
  const dsdepth = Math.max(k.dsdepth as number, 1);
  const upMode = typeof k.upsample_mode === "string" ? k.upsample_mode.toLowerCase() : "";
  if (upMode !== "deconv")
    throw monaiError(where, `SegResNetDS's upsample_mode ${brief(k.upsample_mode)}: bhsd builds "deconv" (the default)`);
  let scales: number[][] | null = null;
  if (k.resolution !== null) {
    const r = k.resolution;
    if (!Array.isArray(r) || r.length !== dims || !r.every((v) => typeof v === "number" && v > 0 && Number.isFinite(v)))
      throw monaiError(where, `SegResNetDS's resolution must be ${dims} positive spacings, got ${brief(r)}`);
    scales = scalesForResolution(r as number[], down.length);
  }
  const b = new GraphBuilder(dims, where);
  const fill = (v: number) => Array<number>(dims).fill(v);
  // aniso_kernel: 3 along the axes a level scales, 1 along the others
  const level = (i: number) => {
    const sc = scales ? scales[i]! : fill(2);
    const kern = scales ? sc.map((q) => (q > 1 ? 3 : 1)) : fill(3);
    return { kern, pad: kern.map((q) => q >> 1), stride: sc };
  };
  const block = (path: string, x: string, c: number, kern: number[]) => {
    const pad = kern.map((q) => q >> 1);
    let y = b.act(act, `${path}.act1`, b.norm(norm, `${path}.norm1`, x, c), c);
    y = b.conv(`${path}.conv1`, y, { cin: c, cout: c, kernel: kern, stride: fill(1), pad, bias: false });
    y = b.act(act, `${path}.act2`, b.norm(norm, `${path}.norm2`, y, c), c);
    y = b.conv(`${path}.conv2`, y, { cin: c, cout: c, kernel: kern, stride: fill(1), pad, bias: false });
    return b.add(y, x, `${path}.add`);
  };
  const l0 = level(0);
  let x = b.conv("encoder.conv_init", "input", {
    cin,
    cout: f0,
    kernel: scales ? l0.kern : fill(3),
    stride: fill(1),
    pad: scales ? l0.pad : fill(1),
    bias: false,
  });
  const skips: string[] = [];
  let f = f0;
  down.forEach((n, i) => {
    const { kern, pad, stride } = level(i);
    for (let j = 0; j < n; j++) x = block(`encoder.layers.${i}.blocks.${j}`, x, f, kern);
    skips.push(x);
    if (i < down.length - 1) {
      x = b.conv(`encoder.layers.${i}.downsample`, x, { cin: f, cout: 2 * f, kernel: kern, stride, pad, bias: false });
      f *= 2;
    }
  });
  skips.pop();
  skips.reverse();
  let out = "";
  for (let i = 0; i < nUp; i++) {
    f /= 2;
    const { kern, stride } = level(upBlocks.length - i - 1);
    // UpSample "deconv" with a kernel: padding (k − 1) / 2, output padding s − 1 − (k − 1) % 2
    x = b.conv(`up_layers.${i}.upsample.deconv`, x, {
      cin: 2 * f,
      cout: f,
      kernel: kern,
      stride,
      pad: kern.map((q) => (q - 1) >> 1),
      bias: false,
      transposed: true,
      outputPadding: kern.map((q, d) => stride[d]! - 1 - ((q - 1) % 2)),
    });
    x = b.add(x, skips[i]!, `up_layers.${i}.add`);
    for (let j = 0; j < upBlocks[i]!; j++) x = block(`up_layers.${i}.blocks.${j}`, x, f, kern);
    if (nUp - i <= dsdepth) {
      if (i === nUp - 1)
        out = b.conv(`up_layers.${i}.head`, x, { cin: f, cout, kernel: fill(1), stride: fill(1), pad: fill(0), bias: true });
      else b.unused.push(`up_layers.${i}.head.weight`, `up_layers.${i}.head.bias`);
    }
  }
  const divisor = scales ? (scales.slice(0, -1).reduce((m, s) => m.map((v, d) => v * s[d]!), fill(1)) as number[]) : fill(2 ** nUp);
  return finish(b, "SegResNetDS", k, dims, cin, cout, out, divisorOf(dims, [divisor]));
}

function buildDynUNet(a: Record<string, unknown>, where: string): MonaiNetwork {
  const k = kwargs(
    a,
    {
      filters: null,
      dropout: null,
      norm_name: ["INSTANCE", { affine: true }],
      act_name: ["leakyrelu", { inplace: true, negative_slope: 0.01 }],
      deep_supervision: false,
      deep_supr_num: 1,
      res_block: false,
      trans_bias: false,
    },
    ["spatial_dims", "in_channels", "out_channels", "kernel_size", "strides", "upsample_kernel_size"],
    "DynUNet",
    where,
  );
  const dims = spatialDims(k.spatial_dims, where, "DynUNet");
  const cin = posInt(k.in_channels, where, "DynUNet's in_channels"),
    cout = posInt(k.out_channels, where, "DynUNet's out_channels");
  const list = (v: unknown, what: string) => {
    if (!Array.isArray(v) || v.length > 64) throw monaiError(where, `DynUNet's ${what} must be a list, got ${brief(v)}`);
    return v.map((s, i) => perAxis(s, dims, where, `DynUNet's ${what}[${i}]`));
  };
  const kernels = list(k.kernel_size, "kernel_size"),
    strides = list(k.strides, "strides"),
    upK = list(k.upsample_kernel_size, "upsample_kernel_size");
  const n = strides.length;
  if (kernels.length !== n || n < 3)
    throw monaiError(where, `DynUNet's kernel_size and strides must have the same length, at least 3 (got ${kernels.length} and ${n})`);
  if (upK.length !== n - 1)
    throw monaiError(where, `DynUNet's upsample_kernel_size must have ${n - 1} entries (one fewer than strides), got ${upK.length}`);
  let filters: number[];
  if (k.filters === null) filters = Array.from({ length: n }, (_, i) => Math.min(2 ** (5 + i), dims === 3 ? 320 : 512));
  else {
    filters = intList(k.filters, where, "DynUNet's filters");
    if (filters.length < n)
      throw monaiError(where, `DynUNet's filters must list at least ${n} values (one per stride), got ${filters.length}`);
    filters = filters.slice(0, n);
  }
  dropoutOk(k.dropout, where, "DynUNet's dropout");
  const norm = parseNorm(k.norm_name, null, where, "DynUNet's norm_name");
  const act = parseAct(k.act_name, where, "DynUNet's act_name");
  if (!norm || !act) throw monaiError(where, "DynUNet's norm_name and act_name must name a norm and an activation");
  const ds = flag(k.deep_supervision, where, "DynUNet's deep_supervision");
  // (checked only where deep supervision is on, as DynUNet's constructor)
  const dsNum = ds ? posInt(k.deep_supr_num, where, "DynUNet's deep_supr_num") : 0;
  if (ds && dsNum >= n - 1) throw monaiError(where, `DynUNet's deep_supr_num must be less than ${n - 1} (the up-sampling layers)`);
  const res = flag(k.res_block, where, "DynUNet's res_block");
  const transBias = flag(k.trans_bias, where, "DynUNet's trans_bias");
  const b = new GraphBuilder(dims, where);
  const ones = Array<number>(dims).fill(1);
  const block = (path: string, x: string, ci: number, co: number, kk: number[], s: number[], residual: boolean): string =>
    unetBlock(b, norm, act, path, x, ci, co, kk, s, residual);
  const upBlock = (path: string, x: string, skip: string, ci: number, co: number, kk: number[], uk: number[]) => {
    const t = transposedConv(b, `${path}.transp_conv`, x, ci, co, uk, transBias);
    return block(`${path}.conv_block`, b.concat([t, skip], `${path}.cat`), 2 * co, co, kk, ones, false);
  };
  // level i: its down block, the level below (or the bottleneck), then its up block (upsamples.{n−2−i})
  const level = (i: number, x: string): string => {
    const d =
      i === 0
        ? block("input_block", x, cin, filters[0]!, kernels[0]!, strides[0]!, res)
        : block(`downsamples.${i - 1}`, x, filters[i - 1]!, filters[i]!, kernels[i]!, strides[i]!, res);
    const next =
      i === n - 2 ? block("bottleneck", d, filters[n - 2]!, filters[n - 1]!, kernels[n - 1]!, strides[n - 1]!, res) : level(i + 1, d);
    const u = n - 2 - i;
    // (upsamples.j takes the reversed lists' j-th kernel_size and upsample_kernel_size: those of level i)
    return upBlock(`upsamples.${u}`, next, d, filters[i + 1]!, filters[i]!, kernels[i + 1]!, upK[i]!);
  };
  const top = level(0, "input");
  const out = b.conv("output_block.conv.conv", top, {
    cin: filters[0]!,
    cout,
    kernel: ones,
    stride: ones,
    pad: ones.map(() => 0),
    bias: true,
  });
  // deep-supervision heads: in the state_dict, not in eval mode's output
  if (ds)
    for (let h = 0; h < dsNum; h++)
      b.unused.push(`deep_supervision_heads.${h}.conv.conv.weight`, `deep_supervision_heads.${h}.conv.conv.bias`);
  // every block is also registered under skip_layers (DynUNetSkipLayer's downsample, next_layer, upsample, super_head)
  const nl = (j: number) => "skip_layers" + ".next_layer".repeat(j);
  const alias: [string, string][] = [["input_block.", `${nl(0)}.downsample.`]];
  for (let j = 0; j < n - 2; j++) alias.push([`downsamples.${j}.`, `${nl(j + 1)}.downsample.`]);
  alias.push(["bottleneck.", `${nl(n - 1)}.`]);
  for (let i = 0; i < n - 1; i++) alias.push([`upsamples.${n - 2 - i}.`, `${nl(i)}.upsample.`]);
  if (ds) for (let h = 0; h < dsNum; h++) alias.push([`deep_supervision_heads.${h}.`, `${nl(h + 1)}.super_head.`]);
  const aliasOf = (name: string) => alias.filter(([p]) => name.startsWith(p)).map(([p, q]) => q + name.slice(p.length));
  for (const p of b.params) p.names.push(...aliasOf(p.names[0]!));
  b.unused.push(...b.unused.flatMap(aliasOf));
  return finish(b, "DynUNet", k, dims, cin, cout, out, divisorOf(dims, strides));
}

function buildBasicUNet(a: Record<string, unknown>, where: string): MonaiNetwork {
  const k = kwargs(
    a,
    {
      spatial_dims: 3,
      in_channels: 1,
      out_channels: 2,
      features: [32, 32, 64, 128, 256, 32],
      act: ["LeakyReLU", { negative_slope: 0.1, inplace: true }],
      norm: ["instance", { affine: true }],
      bias: true,
      dropout: 0.0,
      upsample: "deconv",
    },
    [],
    "BasicUNet",
    where,
  );
  const dims = spatialDims(k.spatial_dims, where, "BasicUNet");
  const cin = posInt(k.in_channels, where, "BasicUNet's in_channels"),
    cout = posInt(k.out_channels, where, "BasicUNet's out_channels");
  const fea = intList(k.features, where, "BasicUNet's features");
  if (fea.length !== 6) throw monaiError(where, `BasicUNet's features must be six integers, got ${brief(k.features)}`);
  const act = parseAct(k.act, where, "BasicUNet's act");
  const norm = parseNorm(k.norm, null, where, "BasicUNet's norm");
  const bias = flag(k.bias, where, "BasicUNet's bias");
  dropoutOk(k.dropout, where, "BasicUNet's dropout");
  if (k.upsample !== "deconv") throw monaiError(where, `BasicUNet's upsample ${brief(k.upsample)}: bhsd builds "deconv" (MONAI's default)`);
  const b = new GraphBuilder(dims, where);
  const k3 = Array<number>(dims).fill(3),
    ones = Array<number>(dims).fill(1),
    twos = Array<number>(dims).fill(2);
  const spec = { kernel: k3, stride: ones, pad: ones, act, norm, bias };
  const twoConv = (path: string, x: string, ci: number, co: number) =>
    convolution(b, `${path}.conv_1`, convolution(b, `${path}.conv_0`, x, ci, co, spec), co, co, spec);
  const downL = (path: string, x: string, ci: number, co: number) =>
    twoConv(`${path}.convs`, b.maxPool(x, twos, `${path}.max_pooling`), ci, co);
  const upCat = (path: string, x: string, xe: string, ci: number, cat: number, co: number, halves: boolean) => {
    const up = halves ? Math.floor(ci / 2) : ci;
    const x0 = b.conv(`${path}.upsample.deconv`, x, {
      cin: ci,
      cout: up,
      kernel: twos,
      stride: twos,
      pad: ones.map(() => 0),
      bias: true,
      transposed: true,
    });
    return twoConv(`${path}.convs`, b.concat([xe, x0], `${path}.cat`), cat + up, co);
  };
  const x0 = twoConv("conv_0", "input", cin, fea[0]!);
  const x1 = downL("down_1", x0, fea[0]!, fea[1]!);
  const x2 = downL("down_2", x1, fea[1]!, fea[2]!);
  const x3 = downL("down_3", x2, fea[2]!, fea[3]!);
  const x4 = downL("down_4", x3, fea[3]!, fea[4]!);
  const u4 = upCat("upcat_4", x4, x3, fea[4]!, fea[3]!, fea[3]!, true);
  const u3 = upCat("upcat_3", u4, x2, fea[3]!, fea[2]!, fea[2]!, true);
  const u2 = upCat("upcat_2", u3, x1, fea[2]!, fea[1]!, fea[1]!, true);
  const u1 = upCat("upcat_1", u2, x0, fea[1]!, fea[0]!, fea[5]!, false);
  const out = b.conv("final_conv", u1, { cin: fea[5]!, cout, kernel: ones, stride: ones, pad: ones.map(() => 0), bias: true });
  // (sizes that are not multiples of 16 take MONAI's replicate padding after each up-sampling, which bhsd does not build)
  return finish(b, "BasicUNet", k, dims, cin, cout, out, divisorOf(dims, [Array<number>(dims).fill(16)]));
}

/**
 * The network a network_def describes (`{ "_target_": "UNet", "spatial_dims": 3, … }`), its graph
 * and parameter names; `where` names the file or option it came from in errors. `size`: the spatial
 * input size (the network's axes) a transformer's graph is built for (SwinUNETR: any multiple of
 * 32, by default its img_size or 64; UNETR: its img_size only).
 */
export function buildMonaiNetwork(def: Record<string, unknown>, where: string, size?: readonly number[]): MonaiNetwork {
  if (def === null || typeof def !== "object" || Array.isArray(def))
    throw monaiError(where, `network_def must be an object { "_target_": "UNet", … }, got ${brief(def)}`);
  const { _target_: target, ...args } = def;
  for (const [key, v] of Object.entries(args))
    if (typeof v === "string" && /^[$@%]/.test(v))
      throw monaiError(
        where,
        `network_def's ${key} is ${brief(v)}, a reference or expression bhsd does not evaluate (give the value itself)`,
      );
  const cls = monaiClassOf(target, where);
  switch (cls) {
    case "UNet":
      return buildUNet(args, where);
    case "SegResNet":
      return buildSegResNet(args, where);
    case "SegResNetVAE":
      return buildSegResNet(args, where, true);
    case "DynUNet":
      return buildDynUNet(args, where);
    case "BasicUNet":
      return buildBasicUNet(args, where);
    case "SegResNetDS":
      return buildSegResNetDS(args, where);
    case "MedNeXt":
      return buildMedNeXt(args, where, mednextVariant(String(target).split(".").pop()!));
    case "AttentionUnet":
      return buildAttentionUnet(args, where);
    case "SwinUNETR":
      return buildSwinUNETR(args, where, size);
    case "UNETR": {
      const net = buildUNETR(args, where);
      if (size && size.join() !== net.inputSize!.join())
        throw monaiError(
          where,
          `UNETR runs only its img_size [${net.inputSize!.join(", ")}] (its position embeddings are one per 16-voxel patch of it), not [${size.join(", ")}]: give the sliding window that size`,
        );
      return net;
    }
  }
}
