/**
 * `bhsd info [file]`: version, backends (and why any is missing), threads, SIMD; or a NIfTI file's
 * header and intensities, a DICOM folder's series, an ONNX model's inputs and config, an nnU-Net
 * results folder's network and config.
 */
import type { Command } from "commander";
import { backendInfo } from "../backends/index.js";
import { readCt } from "../io/ct.js";
import { isFolder, listDicomSeries } from "../io/dicom.js";
import { loadModel } from "../model/model.js";
import { loadNnunet } from "../model/nnunet/index.js";
import { loadMonai, monaiInfo } from "../model/monai/index.js";
import { folderKind } from "../model/named.js";
import { voxelStats } from "../ops/stats.js";
import { VERSION } from "../version.js";
import { toJson } from "../json.js";
import { intArg, readLimits } from "./util.js";

export function infoCommand(program: Command): void {
  program
    .command("info")
    .description(
      "print version, backends (and why any is unavailable), threads and SIMD level; with a file, its geometry and intensities, or a model's inputs and the config segment would use",
    )
    .argument(
      "[file]",
      "a NIfTI file (.nii or .nii.gz), a DICOM folder (its series), a zip of a series, an ONNX model (.onnx), an nnU-Net results folder or a MONAI bundle folder to describe",
    )
    .option("--json", "machine-readable output")
    .option("--heads <n>", "an nnU-Net Primus folder's number of attention heads (as bhsd segment --heads)", intArg("--heads", 1, 4096))
    .action(async (file: string | undefined, opts: { json?: boolean; heads?: number }) => {
      if (opts.heads !== undefined && file === undefined) throw new Error("info: --heads goes with an nnU-Net folder");
      if (file !== undefined) return describeFile(file, !!opts.json, opts.heads);
      const info = backendInfo();
      const out = {
        version: VERSION,
        node: process.version,
        platform: `${process.platform}-${process.arch}`,
        backend: info.active,
        available: info.available,
        reasons: info.reasons,
        details: info.details,
      };
      if (opts.json) return void process.stdout.write(toJson(out) + "\n");
      const lines = [`bhsd ${VERSION} (node ${process.version}, ${out.platform})`, `active backend: ${info.active}`];
      for (const name of ["cuda", "native", "ts"] as const) {
        const d = info.details[name];
        lines.push(
          info.available[name]
            ? `  ${name.padEnd(6)} yes  threads ${d?.threads}, ${d?.simd}${d?.binary ? `, ${d.binary}` : ""}`
            : `  ${name.padEnd(6)} no   ${info.reasons[name]}`,
        );
      }
      process.stdout.write(lines.join("\n") + "\n");
    });
}

/** An ONNX model or an nnU-Net results folder: what segment() would run, and with which config. */
async function describeModel(file: string, json: boolean, heads?: number): Promise<void> {
  if (file.toLowerCase().endsWith(".onnx")) {
    const m = await loadModel(file);
    try {
      const out = {
        file,
        model: m.name,
        producer: m.producer,
        opset: m.opset,
        inputs: m.inputs,
        outputs: m.outputs,
        weightBytes: m.weightBytes,
        config: m.config,
      };
      if (json) return void process.stdout.write(toJson(out) + "\n");
      process.stdout.write(
        [
          `${file}: ONNX opset ${m.opset}${m.producer ? ` from ${m.producer}` : ""}, ${(m.weightBytes / 2 ** 20).toFixed(1)} MiB of weights`,
          ...m.inputs.map((i) => `  input ${i.name} [${i.shape.join(", ")}]`),
          `  outputs ${m.outputs.join(", ")}`,
          `  config (${m.config.source}): ${JSON.stringify(m.config)}`,
        ].join("\n") + "\n",
      );
    } finally {
      m.dispose();
    }
    return;
  }
  const nn = await loadNnunet(file, heads !== undefined ? { heads } : {});
  try {
    const a = nn.architecture;
    const out = {
      file,
      model: nn.name,
      nnunetVersion: nn.version,
      configuration: nn.configuration,
      trainer: nn.trainerName,
      folds: nn.folds,
      ensemble: nn.ensemble,
      ...(nn.previousStage ? { previousStage: nn.previousStage.name } : {}),
      network:
        a.networkClass === "Primus"
          ? {
              class: a.networkClass,
              dims: a.dims,
              width: a.embedDim,
              blocks: a.depth,
              heads: a.heads,
              registers: a.registers,
              patch: a.inputSize,
            }
          : a.networkClass === "MedNeXt"
            ? {
                class: a.networkClass,
                dims: a.dims,
                channels: a.filters,
                blocks: a.blocks,
                ratios: [
                  ...a.layout.enc.map((s) => s[0]?.ratio ?? null),
                  a.layout.bottleneck[0]?.ratio ?? null,
                  ...a.layout.dec.map((s) => s[0]?.ratio ?? null),
                ],
                kernels: a.kernels,
                grn: a.grn,
                resampleResidual: a.resampleResidual,
              }
            : a.networkClass === "STUNet"
              ? { class: a.networkClass, dims: a.dims, features: a.features, depth: a.depth, strides: a.strides }
              : a.networkClass === "UMamba"
                ? {
                    class: `UMamba${a.variant}`,
                    dims: a.dims,
                    features: a.features,
                    strides: a.strides,
                    mamba: a.mamba.map(
                      (m) => m && { dModel: m.model, dInner: m.inner, dState: m.state, tokens: m.channelTokens ? "channels" : "voxels" },
                    ),
                  }
                : { class: a.networkClass, dims: a.dims, stages: a.nStages, features: a.features, norm: a.norm, nonlin: a.nonlin },
      config: nn.config,
    };
    if (json) return void process.stdout.write(toJson(out) + "\n");
    process.stdout.write(
      [
        `${file}: nnU-Net v${nn.version} ${nn.configuration}, ${nn.trainerName}, fold${nn.folds.length > 1 ? "s" : ""} ${nn.folds.join(", ")}`,
        a.networkClass === "Primus"
          ? `  Primus${a.embedding.kind === "deeper" ? a.embedding.variant : ""} (3-D transformer${a.embedding.kind === "deeper" ? `, a patch embedding of ${a.embedding.levels.length} residual levels` : ""}): width ${a.embedDim}, ${a.depth} blocks of ${a.heads} heads, ${a.registers} register tokens, patch ${a.inputSize.join(" × ")}`
          : a.networkClass === "MedNeXt"
            ? `  MedNeXt (${a.dims}-D, nnunet_mednext's MedNextV1): ${a.filters} channels, blocks ${a.blocks.join("-")}, kernels ${a.kernels.encoder} (encoder) and ${a.kernels.decoder}${a.grn ? ", global response norm" : ""}`
            : a.networkClass === "STUNet"
              ? `  STU-Net (3-D): 6 stages of ${a.features.join("-")} features, ${a.depth.join("-")} residual blocks, poolings ${a.strides.map((s) => s.join("×")).join(", ")}`
              : a.networkClass === "UMamba"
                ? `  UMamba${a.variant} (${a.dims}-D, U-Mamba): ${a.features.length} stages of ${a.features.join("-")} features, Mamba after stage${a.mamba.filter(Boolean).length > 1 ? "s" : ""} ${a.mamba.flatMap((m, s) => (m ? [`${s}${m.channelTokens ? " (channels as tokens)" : ""}`] : [])).join(", ")}`
                : `  ${a.networkClass} (${a.dims}-D), ${a.nStages} stages of ${a.features.join("-")} features, ${a.norm.runningStats ? "batch-norm statistics" : "instance norm"}`,
        ...(nn.previousStage ? [`  a cascade's second stage: its first is ${nn.previousStage.name}`] : []),
        `  config: ${JSON.stringify(nn.config)}`,
      ].join("\n") + "\n",
    );
  } finally {
    nn.dispose();
  }
}

/** A MONAI bundle: its network, what bhsd makes of its pipeline, and the config segment would use. */
async function describeMonai(file: string, json: boolean): Promise<void> {
  const m = await loadMonai(file);
  try {
    const info = monaiInfo(m)!;
    const b = info.bundle!;
    const out = {
      file,
      model: m.name,
      bundle: { name: b.name ?? null, version: b.version ?? null, config: b.configFile, weights: b.weights },
      network: { class: info.networkClass, args: info.args },
      pipeline: b.pipeline,
      weightBytes: m.weightBytes,
      config: m.config,
    };
    if (json) return void process.stdout.write(toJson(out) + "\n");
    process.stdout.write(
      [
        `${file}: MONAI bundle${b.name ? ` ${b.name}` : ""}${b.version ? ` ${b.version}` : ""} (${b.configFile}, ${b.weights}), ${(m.weightBytes / 2 ** 20).toFixed(1)} MiB of weights`,
        `  ${info.networkClass} ${JSON.stringify(info.args)}`,
        ...b.pipeline.map((p) => `  ${p}`),
        `  config: ${JSON.stringify(m.config)}`,
      ].join("\n") + "\n",
    );
  } finally {
    m.dispose();
  }
}

async function describeFile(file: string, json: boolean, heads?: number) {
  const kind = folderKind(file);
  if (heads !== undefined && kind !== "nnunet") throw new Error(`info: --heads goes with an nnU-Net folder; ${file} is none`);
  if (file.toLowerCase().endsWith(".onnx") || kind === "nnunet") return describeModel(file, json, heads);
  if (kind === "monai") return describeMonai(file, json);
  const series = (await isFolder(file)) ? await listDicomSeries(file) : undefined;
  if (series && series.length !== 1) {
    if (json) return void process.stdout.write(toJson({ file, series }) + "\n");
    const f = (s: (typeof series)[number]) =>
      `  #${s.seriesNumber ?? "?"} "${s.seriesDescription}" ${s.modality} ${s.dims.join(" × ")}, ${s.transferSyntax}, ${s.seriesInstanceUid}${s.problem ? ` — cannot be read: ${s.problem}` : ""}`;
    return void process.stdout.write(
      [`${file}: ${series.length} DICOM series (bhsd segment … --series <uid> reads one)`, ...series.map(f)].join("\n") + "\n",
    );
  }
  const v = await readCt(file, readLimits());
  const s = await voxelStats(v);
  const out = {
    file,
    dims: v.dims,
    spacing: v.spacing,
    affine: v.affine,
    datatype: v.meta?.datatype,
    scaled: v.meta?.scaled,
    affineSource: v.meta?.affineSource,
    min: s.min,
    max: s.max,
    mean: s.mean,
    nonzero: s.nonzero,
    ...("dicom" in v ? { dicom: { ...v.dicom, instances: v.dicom.instances.length, rescale: undefined } } : {}),
  };
  if (json) return void process.stdout.write(toJson(out) + "\n");
  const f = (x: number) => (Number.isInteger(x) ? String(x) : x.toFixed(3));
  process.stdout.write(
    [
      `${file}`,
      `  dims ${v.dims.join(" × ")}, spacing ${v.spacing.map(f).join(" × ")} mm, ${v.meta?.datatype ?? v.data.constructor.name.replace("Array", "").toLowerCase()}${v.meta?.scaled ? ` scaled (slope ${v.meta.sclSlope}, inter ${v.meta.sclInter})` : ""}`,
      `  affine from ${v.meta?.affineSource ?? "the DICOM positions"}: [${[0, 1, 2]
        .map((r) =>
          v.affine
            .slice(4 * r, 4 * r + 4)
            .map(f)
            .join(" "),
        )
        .join("; ")}]`,
      `  intensities min ${f(s.min)}, max ${f(s.max)}, mean ${f(s.mean)}, non-zero ${s.nonzero} of ${s.count}`,
      ...("dicom" in v
        ? [
            `  DICOM series #${v.dicom.seriesNumber ?? "?"} "${v.dicom.seriesDescription}" ${v.dicom.modality}, ${v.dicom.instances.length} slices, ${v.dicom.transferSyntaxUid}, ${v.dicom.seriesInstanceUid}`,
          ]
        : []),
    ].join("\n") + "\n",
  );
}
