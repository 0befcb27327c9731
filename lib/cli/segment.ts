/** `bhsd segment`: a head CT through an ONNX model to a label NIfTI and a report. */
import { writeFile } from "node:fs/promises";
import { dirname, join } from "node:path";
import { InvalidArgumentError, type Command } from "commander";
import { writeNifti } from "../io/nifti.js";
import { parseJsonObject, readSmallFile } from "../io/small-file.js";
import { readCt } from "../io/ct.js";
import type { DicomSeriesMeta } from "../io/dicom.js";
import { checkDicomSegSource, writeDicomSeg } from "../io/dicom-seg.js";
import { toJson } from "../json.js";
import { convPlanText, convPlanToKeep } from "../backends/conv-plan.js";
import { PRECISIONS, type Precision } from "../backends/precision.js";
import { inArray } from "../is.js";
import { loadModel } from "../model/model.js";
import { externalDataFiles } from "../model/external-data.js";
import { loadNnunet, type Fold } from "../model/nnunet/index.js";
import { readNnunetPostprocessing } from "../model/nnunet/postprocessing.js";
import { loadMonai } from "../model/monai/index.js";
import { CONFIG_NAMES } from "../model/monai/bundle.js";
import { segment } from "../model/segment.js";
import { renderReport } from "../render/report.js";
import { fmt, importConvPlanFileOrRefuse, intArg, numberArg, OutputPlan, progress, readLimits, table } from "./util.js";

interface Opts {
  model?: string;
  nnunet?: string[];
  monai?: string;
  network?: string;
  ppPkl?: string;
  folds?: Fold[];
  previousStage?: string;
  heads?: number;
  out?: string;
  outSeg?: string;
  series?: string;
  cleanupMinMl?: number;
  postprocessing?: boolean;
  tta?: boolean;
  report?: string;
  html?: string;
  json?: boolean;
  quiet?: boolean;
  precision?: Precision;
  convPlan?: string;
}

export function segmentCommand(program: Command): void {
  program
    .command("segment")
    .description(
      "segment intracranial hemorrhage on a head CT with an ONNX model; write the labels and report volumes per class and per bleed",
    )
    .argument("<ct>", "head CT in Hounsfield units: .nii or .nii.gz, a DICOM series folder, or a zip of one")
    .option("--model <onnx>", "ONNX model (config from <model>.json, nnU-Net plans.json beside it, or defaults)")
    .option(
      "--nnunet <folder>",
      "instead of --model: an nnU-Net trained-model folder, run directly — v2 (…/DatasetXXX/Trainer__Plans__3d_fullres, __2d, __3d_lowres, __3d_cascade_fullres with its __3d_lowres sibling) or v1 (…/3d_fullres/TaskXXX/nnUNetTrainerV2__nnUNetPlansv2.1); its predictor mirrors by default, add --tta for that. Given twice or more: an ensemble (the mean of the configurations' probabilities, as nnUNetv2_ensemble)",
      (v: string, prev: string[] | undefined) => [...(prev ?? []), v],
    )
    .option(
      "--monai <bundle>",
      "instead of --model: a MONAI bundle folder (configs/inference.json or .yaml, models/model.pt), run directly with its own pipeline (Orientation, Spacing, intensity scaling, sliding windows, Invert); or a checkpoint file with --network",
    )
    .option("--network <json>", 'with --monai <checkpoint>: a JSON file holding the network_def ({"_target_": "UNet", …})')
    .option(
      "--pp-pkl <file>",
      "apply nnU-Net's post-processing file (postprocessing.pkl or .json: an ensemble's from nnUNet_results/…/ensembles/…, or another model's) instead of the model's own",
    )
    .option(
      "--folds <list>",
      "with --nnunet: folds to ensemble, e.g. 0,1 or all (default every fold_K with a checkpoint_final.pth)",
      foldsArg,
    )
    .option(
      "--previous-stage <folder>",
      "with --nnunet …__3d_cascade_fullres: the folder of its first stage (default its __3d_lowres sibling)",
    )
    .option(
      "--heads <n>",
      "with --nnunet: a Primus network's number of attention heads, which its checkpoint does not hold (needed for a trainer other than nnU-Net's nnUNet_Primus_{S,B,M,L}_Trainer)",
      intArg("--heads", 1, 4096),
    )
    .option("--out <labels>", "write the label volume (uint8 NIfTI, the CT's geometry)")
    .option(
      "--out-seg <file>",
      "write the labels as a DICOM SEG over the source series (the CT must be DICOM); nothing is written when no bleed is found",
    )
    .option("--series <uid>", "DICOM: the SeriesInstanceUID to read when the folder holds several")
    .option(
      "--cleanup-min-ml <mL>",
      "remove bleeds smaller than this (mL), instead of the model's own post-processing",
      numberArg("--cleanup-min-ml", 0),
    )
    .option("--no-postprocessing", "skip the model's own post-processing (its config's postprocessing)")
    .option(
      "--tta",
      "test-time mirroring along the axes the model allows (its config's mirrorAxes, all three by default: up to 8 forwards per window)",
    )
    .option("--report <file>", "write the JSON report")
    .option("--html <file>", "write a self-contained HTML report: volumes, each bleed, timings and the overlay pictures")
    .option(
      "--precision <p>",
      "arithmetic of the model's convolutions: fp32, tf32, fp16 or bf16 (CPU: bf16 where the processor has AVX512_BF16, else fp32; default: the backend's)",
      (v: string) => {
        if (!inArray(v, PRECISIONS)) throw new InvalidArgumentError(`expected one of ${PRECISIONS.join(", ")}`);
        return v;
      },
    )
    .option(
      "--conv-plan <file>",
      "keep the native backend's convolution plan in this JSON file: read before the run where it exists (a plan this machine made skips the first window's timing of each layer shape, about 4 s for nnU-Net's ResEnc-M), written back after it",
    )
    .option("--json", "print the JSON report")
    .option("--quiet", "no progress")
    .action(async (file: string, o: Opts) => {
      if ([o.model, o.nnunet, o.monai].filter((x) => x !== undefined).length !== 1)
        throw new Error("segment: give exactly one of --model <onnx>, --nnunet <folder> and --monai <bundle>");
      if (o.network && !o.monai) throw new Error("segment: --network goes with --monai <checkpoint>");
      if (o.folds && !o.nnunet) throw new Error("segment: --folds goes with --nnunet");
      if (o.heads !== undefined && !o.nnunet) throw new Error("segment: --heads goes with --nnunet");
      if (o.previousStage && o.nnunet?.length !== 1)
        throw new Error("segment: --previous-stage goes with one --nnunet (a cascade's second stage)");
      if (o.ppPkl && (o.cleanupMinMl !== undefined || o.postprocessing === false))
        throw new Error("segment: --pp-pkl is a post-processing: not with --cleanup-min-ml or --no-postprocessing");
      // every output is checked (not an input, its folder writable) before the work, and appears only when all is done
      const modelBase = (o.model ?? "").replace(/\.onnx$/i, "");
      // (a folder among them — a DICOM series, an nnU-Net trainer folder, a MONAI bundle — takes no
      // output inside it: its checkpoints, post-processing files, slices are all inputs)
      const inputs = [
        file,
        ...(o.nnunet
          ? [...o.nnunet, ...(o.previousStage ? [o.previousStage] : [])]
          : o.monai
            ? [
                o.monai,
                ...[...CONFIG_NAMES.map((n) => join("configs", n)), join("models", "model.pt")].map((x) => join(o.monai!, x)),
                ...(o.network ? [o.network] : []),
              ]
            : [
                o.model!,
                `${modelBase}.json`,
                join(dirname(o.model!), "plans.json"),
                join(dirname(o.model!), "dataset.json"),
                // (its weights in external data files beside it)
                ...(await externalDataFiles(o.model!).catch(() => [])).map((k) => join(dirname(o.model!), k)),
              ]),
        ...(o.ppPkl ? [o.ppPkl] : []),
      ];
      const outputs = [
        ...(o.out ? [{ flag: "--out", path: o.out }] : []),
        ...(o.outSeg ? [{ flag: "--out-seg", path: o.outSeg }] : []),
        ...(o.report ? [{ flag: "--report", path: o.report }] : []),
        ...(o.html ? [{ flag: "--html", path: o.html }] : []),
        ...(o.convPlan ? [{ flag: "--conv-plan", path: o.convPlan }] : []),
      ];
      const { ct, report } = await OutputPlan.run(inputs, outputs, async (plan) => {
        if (o.convPlan) importConvPlanFileOrRefuse("--conv-plan", o.convPlan);
        const ct = await readCt(file, { ...readLimits(), ...(o.series ? { seriesUid: o.series } : {}) });
        if (o.outSeg && !("dicom" in ct))
          throw new Error(`segment: --out-seg needs a DICOM CT (a series folder or zip); ${file} is a NIfTI file`);
        // (a series whose UIDs a SEG cannot hold fails now, not after the model ran)
        if (o.outSeg)
          try {
            checkDicomSegSource((ct as { dicom: DicomSeriesMeta }).dicom, "series");
          } catch (e) {
            throw new Error(`segment --out-seg: a DICOM SEG cannot reference the series of ${file}: ${(e as Error).message}`, { cause: e });
          }
        const prec = o.precision ? { precision: o.precision } : {};
        const models = [];
        // (an ensemble's members' own post-processing does not apply: not read)
        const ensemble = (o.nnunet?.length ?? 0) > 1 ? { postprocessing: false as const } : {};
        for (const f of o.nnunet ?? [])
          models.push(
            await loadNnunet(f, {
              ...(o.folds ? { folds: o.folds } : {}),
              ...(o.previousStage ? { previousStage: o.previousStage } : {}),
              ...(o.heads !== undefined ? { heads: o.heads } : {}),
              ...prec,
              ...ensemble,
            }),
          );
        if (o.model) models.push(await loadModel(o.model, prec));
        if (o.monai) {
          let network: Record<string, unknown> | undefined;
          if (o.network) {
            // (a MONAI network definition is a few hundred bytes; a bundle's whole config, kilobytes)
            const text = await readSmallFile(o.network, { maxBytes: 4 << 20, what: "a network definition" }).catch((e: Error) => {
              throw new Error(`segment: --network ${o.network}: ${e.message}`, { cause: e });
            });
            try {
              network = parseJsonObject(text.toString("utf8"));
            } catch (e) {
              throw new Error(`segment: --network ${o.network}: not a JSON network definition (${(e as Error).message})`, { cause: e });
            }
          }
          models.push(await loadMonai(o.monai, { ...(network ? { network } : {}), ...prec }));
        }
        // nnU-Net's post-processing file, read against the model's labels (refused before the work)
        const pp = o.ppPkl
          ? ((await readNnunetPostprocessing(o.ppPkl, Object.keys(models[0]!.config.classes).map(Number))) ?? (false as const))
          : undefined;
        const bar = progress(!o.quiet && !o.json);
        const { labels, report } = await segment(ct, models.length === 1 ? models[0]! : models, {
          mirror: !!o.tta,
          ...(pp !== undefined
            ? { cleanup: pp }
            : o.cleanupMinMl !== undefined
              ? { cleanup: { minVolumeMl: o.cleanupMinMl } }
              : o.postprocessing === false
                ? { cleanup: false as const }
                : {}),
          onProgress: (p) => p.step === "window" && bar(p.done, p.total, "windows"),
        });
        if (o.out) await plan.write("--out", (tmp) => writeNifti(tmp, labels));
        if (o.outSeg && labels.data.some((v) => v !== 0))
          await plan.write("--out-seg", (tmp) => writeDicomSeg(tmp, labels, ct as Parameters<typeof writeDicomSeg>[2]));
        else if (o.outSeg) process.stderr.write(`segment: no bleed found, no DICOM SEG written to ${o.outSeg}\n`);
        if (o.report) await plan.write("--report", (tmp) => writeFile(tmp, toJson(report) + "\n"));
        if (o.html) await plan.write("--html", async (tmp) => writeFile(tmp, await renderReport({ ct, labels, report, caseName: file })));
        // the plan merged with what another run wrote there meanwhile; none where the native backend
        // is not loaded or the file became something else (then it is left as it is)
        const keep = o.convPlan ? convPlanToKeep(o.convPlan) : undefined;
        if (keep && keep.entries.length) await plan.write("--conv-plan", (tmp) => writeFile(tmp, convPlanText(keep)));
        return { ct, report };
      });
      if (o.json) return void process.stdout.write(toJson(report) + "\n");
      const lines = [
        `${file}: ${ct.dims.join(" × ")} at ${ct.spacing.map((s) => fmt(s, 2)).join(" × ")} mm, model ${report.model} on ${report.backend}, ${report.windows} window(s)`,
        table(
          ["class", "voxels", "mL"],
          Object.entries(report.perClass).map(([k, c]) => [`${k} ${c.name}`, c.voxels, fmt(c.volumeMl, 2)]),
        ),
        `${report.components.length} bleed(s)` + (report.components.length ? ":" : ""),
      ];
      if (report.components.length) {
        lines.push(
          table(
            ["bleed", "class", "mL", "ABC/2 mL", "slices"],
            report.components.map((c) => [
              c.label,
              report.classes[String(c.class)] ?? String(c.class),
              fmt(c.volumeMl, 2),
              fmt(c.abc2Ml, 2),
              c.slices,
            ]),
          ),
        );
      }
      lines.push(
        `timings (ms): ${Object.entries(report.timings)
          .map(([k, v]) => `${k} ${v.toFixed(0)}`)
          .join(", ")}`,
      );
      process.stdout.write(lines.join("\n") + "\n");
    });
}

/** `--folds 0,1` or `all` (nnU-Net's fold_all). */
function foldsArg(v: string): Fold[] {
  const parts = v.split(",").map((s) => s.trim());
  if (!parts.length || !parts.every((p) => p === "all" || /^\d+$/.test(p)))
    throw new InvalidArgumentError(`--folds must be a comma-separated list of fold numbers or "all", got "${v}"`);
  return parts.map((p) => (p === "all" ? "all" : Number(p)));
}
