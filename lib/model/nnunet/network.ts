/**
 * nnU-Net's networks rebuilt from plans.json, as an ONNX graph for the engine.
 *
 * Follows MIC-DKFZ/dynamic-network-architectures (PlainConvUNet, ResidualEncoderUNet with
 * BasicBlockD, UNetDecoder) as nnU-Net v2's get_network_from_plans builds them for inference
 * (deep supervision off: only the last segmentation head, at full resolution, gives the logits).
 * Besides the graph, the builder lists every parameter PyTorch's state_dict holds, under all the
 * names PyTorch gives it: `…convs.N.conv.weight` is also `…convs.N.all_modules.0.weight`, and the
 * decoder keeps a reference to the encoder, so every `encoder.…` tensor is also `decoder.encoder.…`.
 */
import type { AttrValue } from "../onnx-proto.js";
import type { StateDictNetwork } from "../state-dict.js";
import { brief } from "../../is.js";

/**
 * PlainConvUNet and ResidualEncoderUNet: nnU-Net v2's; Generic_UNet: nnU-Net v1's (nnUNetTrainerV2's
 * arguments), the same network as PlainConvUNet under other state_dict names, with no bias on its
 * transposed convolutions and segmentation heads.
 */
export type NetworkClass = "PlainConvUNet" | "ResidualEncoderUNet" | "Generic_UNet";

export interface Architecture {
  networkClass: NetworkClass;
  /** 3: Conv3d (3d_fullres, 3d_lowres); 2: Conv2d (nnU-Net's 2d configuration), run a slice at a time. */
  dims: 2 | 3;
  inputChannels: number;
  numClasses: number;
  nStages: number;
  features: number[];
  kernels: number[][];
  strides: number[][];
  /**
   * PlainConvUNet and Generic_UNet: convs per encoder stage; ResidualEncoderUNet: residual blocks per
   * stage. (Generic_UNet's bottleneck and decoder stages are two StackedConvLayers: max(1, n − 1)
   * convs, then one.)
   */
  perStage: number[];
  perStageDecoder: number[];
  convBias: boolean;
  /**
   * The norm after each conv: instance norm, or — where it keeps running statistics (batch norm,
   * as nnUNetTrainerBN builds it, or instance norm with track_running_stats) — those statistics'
   * per-channel affine map, which eval mode applies.
   */
  norm: { eps: number; affine: boolean; runningStats: boolean };
  nonlin: { op: "LeakyRelu"; alpha: number } | { op: "Relu" } | null;
  nonlinFirst: boolean;
  /** A dropout module sits after each conv (the identity at inference, but it shifts `all_modules` indices). */
  dropout: boolean;
  stemChannels: number;
}

/** A parameter: its shape and every state_dict key PyTorch stores it under (the first names the initializer). */
export interface Param {
  names: string[];
  shape: number[];
  /** A 2-D weight the graph reads transposed, [shape[1], shape[0]] (a Linear's, for MatMul): transposed once, at load. */
  transposed?: boolean;
}

export interface GraphNodeSpec {
  opType: string;
  inputs: string[];
  outputs: string[];
  name?: string;
  attrs?: Record<string, AttrValue>;
}

/**
 * A rebuilt nnU-Net network: its constants are what the checkpoint does not hold (instance norm
 * without affine: scale 1, bias 0), its `unused` names a norm's num_batches_tracked.
 */
export interface NetworkGraph extends StateDictNetwork {
  /** Product of the strides per axis ([z, y, x]; z is 1 for a 2-D network): a patch's sizes must be multiples of these. */
  divisor: [number, number, number];
}

const err = (where: string, msg: string) => new Error(`${where}: ${msg}`);

// Upper bounds of the plans' numbers, checked before anything is built from them (a norm without
// affine parameters makes its ones from `features` alone, and each conv of a stage is a node):
// far past any trained nnU-Net (features 32…320, 2–4 convs or 1–8 blocks a stage, kernels ≤ 7).
const MAX_FEATURES = 16384,
  MAX_PER_STAGE = 64,
  MAX_KERNEL = 31,
  MAX_STRIDE = 64;

function intList(v: unknown, n: number, what: string, where: string, max: number): number[] {
  if (typeof v === "number" && Number.isInteger(v) && v > 0 && v <= max) return Array(n).fill(v);
  if (Array.isArray(v) && v.length === n && v.every((x) => Number.isInteger(x) && x > 0 && x <= max)) return v as number[];
  throw err(where, `${what} must be an integer from 1 to ${max} or ${n} of them, got ${brief(v)}`);
}

function perAxis(v: unknown, n: number, dims: number, what: string, where: string, max: number): number[][] {
  if (typeof v === "number" || (Array.isArray(v) && v.length === dims && v.every((x) => typeof x === "number"))) v = Array(n).fill(v);
  if (!Array.isArray(v) || v.length !== n) throw err(where, `${what} must list ${n} stages, got ${brief(v)}`);
  return v.map((s, i) => intList(s, dims, `${what}[${i}]`, where, max));
}

const shortClass = (s: unknown) => (typeof s === "string" ? s.split(".").pop()! : "");

/**
 * The architecture from a plans configuration (`architecture.network_class_name` +
 * `arch_kwargs`, or the pre-2.4 keys `UNet_class_name`, `conv_kernel_sizes` … that nnU-Net still
 * converts), with input channels and classes from dataset.json. Anything this engine does not
 * build (another network class, a 2-D configuration, batch norm, another nonlinearity …) is an
 * error naming the key.
 */
export function architectureFromPlans(
  conf: Record<string, unknown>,
  inputChannels: number,
  numClasses: number,
  where = "plans.json",
): Architecture {
  let arch = conf.architecture as { network_class_name?: unknown; arch_kwargs?: Record<string, unknown> } | undefined;
  if (!arch && typeof conf.UNet_class_name === "string") {
    // nnU-Net ≤ 2.3 plans (ConfigurationManager's backwards-compatibility conversion)
    const cls = conf.UNet_class_name;
    const nEnc = conf.n_conv_per_stage_encoder as number[];
    if (!Array.isArray(nEnc)) throw err(where, "old-format plans without n_conv_per_stage_encoder");
    const base = conf.UNet_base_num_features as number,
      max = conf.unet_max_num_features as number;
    arch = {
      network_class_name: cls,
      arch_kwargs: {
        n_stages: nEnc.length,
        features_per_stage: nEnc.map((_, i) => Math.min(base * 2 ** i, max)),
        conv_op: (conf.patch_size as unknown[])?.length === 2 ? "torch.nn.modules.conv.Conv2d" : "torch.nn.modules.conv.Conv3d",
        kernel_sizes: conf.conv_kernel_sizes,
        strides: conf.pool_op_kernel_sizes,
        [cls === "PlainConvUNet" ? "n_conv_per_stage" : "n_blocks_per_stage"]: nEnc,
        n_conv_per_stage_decoder: conf.n_conv_per_stage_decoder,
        conv_bias: true,
        norm_op: `torch.nn.modules.instancenorm.InstanceNorm${(conf.patch_size as unknown[])?.length === 2 ? 2 : 3}d`,
        norm_op_kwargs: { eps: 1e-5, affine: true },
        dropout_op: null,
        nonlin: "torch.nn.LeakyReLU",
        nonlin_kwargs: { inplace: true },
      },
    };
  }
  if (!arch || typeof arch !== "object") throw err(where, "the configuration has no architecture");
  const cls = shortClass(arch.network_class_name);
  if (cls !== "PlainConvUNet" && cls !== "ResidualEncoderUNet")
    throw err(where, `network_class_name ${brief(arch.network_class_name)} is not built here (PlainConvUNet, ResidualEncoderUNet)`);
  const k = arch.arch_kwargs ?? {};
  const convOp = shortClass(k.conv_op);
  if (convOp !== "Conv3d" && convOp !== "Conv2d")
    throw err(where, `arch_kwargs.conv_op ${brief(k.conv_op)}: only Conv2d and Conv3d networks are built`);
  const dims = convOp === "Conv2d" ? 2 : 3;
  const n = k.n_stages;
  if (!Number.isInteger(n) || (n as number) < 1 || (n as number) > 12)
    throw err(where, `arch_kwargs.n_stages must be an integer in 1…12, got ${brief(n)}`);
  const nStages = n as number;
  const features = intList(k.features_per_stage, nStages, "arch_kwargs.features_per_stage", where, MAX_FEATURES);
  const kernels = perAxis(k.kernel_sizes, nStages, dims, "arch_kwargs.kernel_sizes", where, MAX_KERNEL);
  const strides = perAxis(k.strides, nStages, dims, "arch_kwargs.strides", where, MAX_STRIDE);
  const perKey = cls === "PlainConvUNet" ? "n_conv_per_stage" : "n_blocks_per_stage";
  const perStage = intList(k[perKey], nStages, `arch_kwargs.${perKey}`, where, MAX_PER_STAGE);
  const perStageDecoder =
    nStages > 1 ? intList(k.n_conv_per_stage_decoder, nStages - 1, "arch_kwargs.n_conv_per_stage_decoder", where, MAX_PER_STAGE) : [];
  const normName = shortClass(k.norm_op);
  const batchNorm = normName === `BatchNorm${dims}d`;
  if (normName !== `InstanceNorm${dims}d` && !batchNorm)
    throw err(where, `arch_kwargs.norm_op ${brief(k.norm_op)}: only InstanceNorm${dims}d and BatchNorm${dims}d are built with ${convOp}`);
  const nk = (k.norm_op_kwargs ?? {}) as Record<string, unknown>;
  for (const key of ["affine", "track_running_stats"])
    if (nk[key] !== undefined && typeof nk[key] !== "boolean")
      throw err(where, `arch_kwargs.norm_op_kwargs.${key} must be true or false, got ${brief(nk[key])}`);
  // PyTorch's defaults: batch norm affine and tracking, instance norm neither. Batch norm without
  // running statistics normalises by the batch's own in eval mode too: one window at a time, as
  // nnU-Net predicts, that is instance norm.
  const runningStats = batchNorm ? nk.track_running_stats !== false : nk.track_running_stats === true;
  const affine = (nk.affine ?? batchNorm) as boolean;
  const eps = nk.eps ?? 1e-5;
  if (typeof eps !== "number" || !(eps > 0) || !Number.isFinite(eps))
    throw err(where, `arch_kwargs.norm_op_kwargs.eps must be a positive number, got ${brief(eps)}`);
  const dropout = shortClass(k.dropout_op);
  if (k.dropout_op != null && !/^Dropout[123]?d?$/.test(dropout))
    throw err(where, `arch_kwargs.dropout_op ${brief(k.dropout_op)} is not a dropout`);
  let nonlin: Architecture["nonlin"];
  const nonlinName = shortClass(k.nonlin);
  const nlk = (k.nonlin_kwargs ?? {}) as Record<string, unknown>;
  if (k.nonlin == null) nonlin = null;
  else if (nonlinName === "LeakyReLU") {
    const alpha = nlk.negative_slope ?? 0.01;
    if (typeof alpha !== "number" || !Number.isFinite(alpha))
      throw err(where, `arch_kwargs.nonlin_kwargs.negative_slope must be a number, got ${brief(alpha)}`);
    nonlin = { op: "LeakyRelu", alpha };
  } else if (nonlinName === "ReLU") nonlin = { op: "Relu" };
  else throw err(where, `arch_kwargs.nonlin ${brief(k.nonlin)}: only LeakyReLU and ReLU are built`);
  if (cls === "ResidualEncoderUNet") {
    if (k.block != null && shortClass(k.block) !== "BasicBlockD")
      throw err(where, `arch_kwargs.block ${brief(k.block)}: only BasicBlockD is built`);
    if (k.bottleneck_channels != null) throw err(where, "arch_kwargs.bottleneck_channels is for BottleneckD, which is not built");
    for (const key of ["stochastic_depth_p", "squeeze_excitation"]) if (k[key]) throw err(where, `arch_kwargs.${key} is not supported`);
  }
  if (k.nonlin_first && cls !== "PlainConvUNet") throw err(where, "arch_kwargs.nonlin_first is a PlainConvUNet argument");
  const stem = k.stem_channels == null ? features[0]! : (k.stem_channels as number);
  if (!Number.isInteger(stem) || stem < 1 || stem > MAX_FEATURES)
    throw err(where, `arch_kwargs.stem_channels must be an integer from 1 to ${MAX_FEATURES}, got ${brief(k.stem_channels)}`);
  if (!Number.isInteger(inputChannels) || inputChannels < 1)
    throw err(where, `input channels must be a positive integer, got ${inputChannels}`);
  if (!Number.isInteger(numClasses) || numClasses < 1)
    throw err(where, `the number of classes must be a positive integer, got ${numClasses}`);
  return {
    networkClass: cls,
    dims,
    inputChannels,
    numClasses,
    nStages,
    features,
    kernels,
    strides,
    perStage,
    perStageDecoder,
    convBias: k.conv_bias === true,
    norm: { eps, affine, runningStats },
    nonlin,
    nonlinFirst: k.nonlin_first === true,
    dropout: k.dropout_op != null,
    stemChannels: stem,
  };
}

/** Builds the inference graph and the parameter list of an architecture. */
export function buildNetwork(a: Architecture): NetworkGraph {
  const params: Param[] = [];
  const constants: NetworkGraph["constants"] = [];
  const unused: string[] = [];
  const nodes: GraphNodeSpec[] = [];
  let v = 0;
  const fresh = (hint: string) => `${hint}:${v++}`;
  const param = (names: string[], shape: number[]) => {
    params.push({ names, shape });
    return names[0]!;
  };
  const ones = Array<number>(a.dims).fill(1);
  const pads = (k: number[]) => {
    const p = k.map((x) => (x - 1) >> 1);
    return [...p, ...p];
  };
  const act = (x: string, prefix: string): string => {
    if (!a.nonlin) return x;
    const y = fresh(`${prefix}.nonlin`);
    nodes.push({
      opType: a.nonlin.op,
      inputs: [x],
      outputs: [y],
      name: `${prefix}.nonlin`,
      attrs: a.nonlin.op === "LeakyRelu" ? { alpha: a.nonlin.alpha } : {},
    });
    return y;
  };
  // nnU-Net v1's ConvDropoutNormNonlin keeps its norm (instance or batch) as `instnorm`, and has no all_modules
  const v1 = a.networkClass === "Generic_UNet";
  const normNames = (prefix: string, normIndex: number, s: string) =>
    v1 ? [`${prefix}.instnorm.${s}`] : [`${prefix}.norm.${s}`, `${prefix}.all_modules.${normIndex}.${s}`];
  const norm = (x: string, prefix: string, c: number, normIndex: number): string => {
    let scale: string, bias: string;
    if (a.norm.affine) {
      scale = param(normNames(prefix, normIndex, "weight"), [c]);
      bias = param(normNames(prefix, normIndex, "bias"), [c]);
    } else {
      scale = `${prefix}.norm.ones`;
      bias = `${prefix}.norm.zeros`;
      constants.push({ name: scale, dims: [c], data: new Float32Array(c).fill(1) }, { name: bias, dims: [c], data: new Float32Array(c) });
    }
    const y = fresh(`${prefix}.norm`);
    if (a.norm.runningStats) {
      const stat = (s: string) => param(normNames(prefix, normIndex, s), [c]);
      const mean = stat("running_mean"),
        variance = stat("running_var");
      unused.push(...normNames(prefix, normIndex, "num_batches_tracked"));
      nodes.push({
        opType: "BatchNormalization",
        inputs: [x, scale, bias, mean, variance],
        outputs: [y],
        name: `${prefix}.norm`,
        attrs: { epsilon: a.norm.eps },
      });
      return y;
    }
    nodes.push({
      opType: "InstanceNormalization",
      inputs: [x, scale, bias],
      outputs: [y],
      name: `${prefix}.norm`,
      attrs: { epsilon: a.norm.eps },
    });
    return y;
  };
  /** dynamic_network_architectures' ConvDropoutNormReLU (dropout is the identity at inference). */
  const convBlock = (
    prefix: string,
    x: string,
    cin: number,
    cout: number,
    k: number[],
    stride: number[],
    o: { bias: boolean; nonlin: boolean; dropout: boolean; nonlinFirst?: boolean },
  ): string => {
    const w = param(v1 ? [`${prefix}.conv.weight`] : [`${prefix}.conv.weight`, `${prefix}.all_modules.0.weight`], [cout, cin, ...k]);
    const inputs = [x, w];
    if (o.bias) inputs.push(param(v1 ? [`${prefix}.conv.bias`] : [`${prefix}.conv.bias`, `${prefix}.all_modules.0.bias`], [cout]));
    let y = fresh(`${prefix}.conv`);
    nodes.push({
      opType: "Conv",
      inputs,
      outputs: [y],
      name: `${prefix}.conv`,
      attrs: { kernel_shape: k, strides: stride, pads: pads(k), dilations: ones, group: 1 },
    });
    const withNonlin = o.nonlin && a.nonlin !== null;
    // all_modules: conv, [dropout], norm, nonlin — nonlin_first swaps the last two
    const normIndex = 1 + (o.dropout ? 1 : 0) + (withNonlin && o.nonlinFirst ? 1 : 0);
    if (withNonlin && o.nonlinFirst) return norm(act(y, prefix), prefix, cout, normIndex);
    y = norm(y, prefix, cout, normIndex);
    return withNonlin ? act(y, prefix) : y;
  };
  return finish();

  /**
   * Generic_UNet's name of a conv: a plain stage's `blocks.c`; a two-part stage (the bottleneck,
   * each decoder stage) holds max(1, n − 1) convs in `.0` and its last in `.1`.
   */
  function genericPrefix(module: string, s: number, c: number, n: number, twoPart: boolean): string {
    if (!twoPart) return `${module}.${s}.blocks.${c}`;
    return c < n - 1 ? `${module}.${s}.0.blocks.${c}` : `${module}.${s}.1.blocks.0`;
  }

  function finish(): NetworkGraph {
    const hasDropout = a.dropout;
    const input = "input";
    let x = input;
    const skips: string[] = [];
    let cin = a.inputChannels;
    if (a.networkClass === "PlainConvUNet" || v1) {
      for (let s = 0; s < a.nStages; s++) {
        for (let c = 0; c < a.perStage[s]!; c++) {
          x = convBlock(
            v1 ? genericPrefix("conv_blocks_context", s, c, a.perStage[s]!, s === a.nStages - 1) : `encoder.stages.${s}.0.convs.${c}`,
            x,
            c === 0 ? cin : a.features[s]!,
            a.features[s]!,
            a.kernels[s]!,
            c === 0 ? a.strides[s]! : ones,
            {
              bias: a.convBias,
              nonlin: true,
              dropout: hasDropout,
              nonlinFirst: a.nonlinFirst,
            },
          );
        }
        cin = a.features[s]!;
        skips.push(x);
      }
    } else {
      x = convBlock("encoder.stem.convs.0", x, cin, a.stemChannels, a.kernels[0]!, ones, {
        bias: a.convBias,
        nonlin: true,
        dropout: hasDropout,
      });
      cin = a.stemChannels;
      for (let s = 0; s < a.nStages; s++) {
        for (let b = 0; b < a.perStage[s]!; b++) {
          const p = `encoder.stages.${s}.blocks.${b}`;
          const bin = b === 0 ? cin : a.features[s]!,
            bout = a.features[s]!;
          const stride = b === 0 ? a.strides[s]! : ones;
          const y1 = convBlock(`${p}.conv1`, x, bin, bout, a.kernels[s]!, stride, { bias: a.convBias, nonlin: true, dropout: hasDropout });
          const y2 = convBlock(`${p}.conv2`, y1, bout, bout, a.kernels[s]!, ones, { bias: a.convBias, nonlin: false, dropout: false });
          let r = x;
          const strided = stride.some((q) => q !== 1);
          if (strided) {
            const pooled = fresh(`${p}.skip.pool`);
            nodes.push({
              opType: "AveragePool",
              inputs: [r],
              outputs: [pooled],
              name: `${p}.skip.0`,
              attrs: { kernel_shape: stride, strides: stride, pads: [...ones, ...ones].fill(0), ceil_mode: 0, count_include_pad: 1 },
            });
            r = pooled;
          }
          if (bin !== bout)
            r = convBlock(`${p}.skip.${strided ? 1 : 0}`, r, bin, bout, ones, ones, {
              bias: false,
              nonlin: false,
              dropout: false,
            });
          const sum = fresh(`${p}.add`);
          nodes.push({ opType: "Add", inputs: [y2, r], outputs: [sum], name: `${p}.add` });
          x = act(sum, p);
        }
        cin = a.features[s]!;
        skips.push(x);
      }
    }
    // decoder: lowest resolution first
    let lres = skips[skips.length - 1]!;
    const nDec = a.nStages - 1;
    for (let s = 0; s < nDec; s++) {
      const below = a.features[a.nStages - 1 - s]!,
        skipC = a.features[a.nStages - 2 - s]!;
      const st = a.strides[a.nStages - 1 - s]!;
      const w = param([v1 ? `tu.${s}.weight` : `decoder.transpconvs.${s}.weight`], [below, skipC, ...st]);
      const inputs = [lres, w];
      if (a.convBias && !v1) inputs.push(param([`decoder.transpconvs.${s}.bias`], [skipC]));
      const up = fresh(`decoder.transpconvs.${s}`);
      nodes.push({
        opType: "ConvTranspose",
        inputs,
        outputs: [up],
        name: `decoder.transpconvs.${s}`,
        attrs: { kernel_shape: st, strides: st, pads: [...ones, ...ones].fill(0), dilations: ones, group: 1 },
      });
      const cat = fresh(`decoder.cat.${s}`);
      nodes.push({
        opType: "Concat",
        inputs: [up, skips[a.nStages - 2 - s]!],
        outputs: [cat],
        name: `decoder.cat.${s}`,
        attrs: { axis: 1 },
      });
      x = cat;
      for (let c = 0; c < a.perStageDecoder[s]!; c++) {
        const prefix = v1 ? genericPrefix("conv_blocks_localization", s, c, a.perStageDecoder[s]!, true) : `decoder.stages.${s}.convs.${c}`;
        // (Generic_UNet gives decoder stage s the kernel of the stage below its skip, conv_kernel_sizes[-(s + 1)])
        const kernel = a.kernels[a.nStages - (v1 ? 1 : 2) - s]!;
        x = convBlock(prefix, x, c === 0 ? 2 * skipC : skipC, skipC, kernel, ones, {
          bias: a.convBias,
          nonlin: true,
          dropout: hasDropout,
          nonlinFirst: a.networkClass === "PlainConvUNet" && a.nonlinFirst,
        });
      }
      lres = x;
    }
    // every decoder stage has a head (deep supervision's); only the last one gives the logits
    const output = "logits";
    for (let s = 0; s < nDec; s++) {
      const skipC = a.features[a.nStages - 2 - s]!;
      if (v1) {
        // (Generic_UNet's heads have no bias; the deep-supervision ones are not read)
        if (s < nDec - 1) {
          unused.push(`seg_outputs.${s}.weight`);
          continue;
        }
      }
      const w = param([v1 ? `seg_outputs.${s}.weight` : `decoder.seg_layers.${s}.weight`], [a.numClasses, skipC, ...ones]);
      const inputs = [lres, w];
      if (!v1) inputs.push(param([`decoder.seg_layers.${s}.bias`], [a.numClasses]));
      if (s === nDec - 1)
        nodes.push({
          opType: "Conv",
          inputs,
          outputs: [output],
          name: `decoder.seg_layers.${s}`,
          attrs: { kernel_shape: ones, strides: ones, pads: [...ones, ...ones].fill(0), dilations: ones, group: 1 },
        });
    }
    if (nDec === 0) throw new Error("a network of one stage has no decoder and no segmentation head");
    // the decoder holds the encoder: every encoder tensor is in the state_dict twice
    for (const p of params)
      if (p.names[0]!.startsWith("encoder.")) p.names.push(...p.names.filter((n) => n.startsWith("encoder.")).map((n) => `decoder.${n}`));
    unused.push(...unused.filter((n) => n.startsWith("encoder.")).map((n) => `decoder.${n}`));
    // (z, y, x): a 2-D network's strides are y and x
    const divisor = [0, 1, 2].map((ax) => a.strides.reduce((m, s) => m * (s[ax - 3 + a.dims] ?? 1), 1)) as [number, number, number];
    return { params, constants, unused, nodes, input, output, divisor };
  }
}
