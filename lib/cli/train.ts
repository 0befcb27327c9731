/** `bhsd train`: train a U-Net in the engine on a BHSD-layout folder or on phantoms; write ONNX + sidecar. */
import { writeFile } from "node:fs/promises";
import type { Command } from "commander";
import { InvalidArgumentError, Option } from "commander";
import { toJson } from "../json.js";
import { layoutFolders, readLabelledCases, readSliceLabelledCases, type SliceLayoutCase } from "../metrics/dataset.js";
import { checkCleanupOptions, type CleanupOptions } from "../ops/components.js";
import { makePhantom } from "../phantom/phantom.js";
import { train, type LabelledCase, type SliceLabelledCase } from "../train/trainer.js";
import { demoSpec } from "../train/unet.js";
import { inputFiles, intArg, numberArg, OutputPlan, readLimits } from "./util.js";

const patchArg = (v: string): [number, number, number] => {
  const p = v.split(",").map(Number);
  if (p.length !== 3 || !p.every((x) => Number.isInteger(x) && x >= 1 && x <= 1024))
    throw new InvalidArgumentError(`--patch must be three integers z,y,x from 1 to 1024, got "${v}"`);
  return p as [number, number, number];
};

interface Opts {
  data?: string;
  phantoms?: number;
  seed: number;
  out: string;
  steps: number;
  batch: number;
  lr?: number;
  optimizer: "adam" | "sgd";
  validation: number;
  foreground: number;
  batchDice?: boolean;
  schedule: "poly" | "constant";
  features?: number[];
  patch?: [number, number, number];
  sliceData?: string;
  mil: number;
  consistency: number;
  json?: boolean;
  postprocessing?: CleanupOptions;
  quiet?: boolean;
}

function postprocessingArg(v: string): CleanupOptions {
  let parsed: unknown;
  try {
    parsed = JSON.parse(v);
  } catch {
    throw new InvalidArgumentError(`--postprocessing must be JSON (cleanup's options), got ${JSON.stringify(v.slice(0, 200))}`);
  }
  try {
    checkCleanupOptions(parsed, "--postprocessing");
  } catch (e) {
    throw new InvalidArgumentError((e as Error).message);
  }
  return parsed as CleanupOptions;
}

/** Slice labels as training takes them: per slice, classes 1..5 in order (a class the CSV lacks is not known: null). */
function bySliceAndClass(c: SliceLayoutCase): SliceLabelledCase {
  const k = [1, 2, 3, 4, 5].map((cls) => c.slices.classes.indexOf(cls));
  return { name: c.name, ct: c.ct, slices: c.slices.present.map((row) => k.map((i) => (i >= 0 ? row[i]! : null))) };
}

const featuresArg = (v: string): number[] => {
  const f = v.split(",").map((x) => (/^\d+$/.test(x.trim()) ? Number(x) : NaN));
  if (f.length < 2 || !f.every((x) => Number.isInteger(x) && x >= 1 && x <= 1024))
    throw new InvalidArgumentError(`--features must be two or more stage widths, integers from 1 to 1024, e.g. 8,16,32,64; got "${v}"`);
  return f;
};

export function trainCommand(program: Command): void {
  program
    .command("train")
    .description(
      "train a 3-D U-Net in the engine (nnU-Net's loss, patch sampling with bleed oversampling); writes ONNX and its config sidecar",
    )
    .requiredOption("--out <onnx>", "output model (<out>.json is written beside it)")
    .option("--data <dir>", "BHSD layout: images/ and ground truths/ (the last --validation cases are held out)")
    // (all held at once, about 3 MB each: 10 000 took some 36 GB)
    .option(
      "--phantoms <n>",
      "train on n phantoms generated here instead (128×128×24 at 1.8×1.8×5 mm; at most 1000)",
      intArg("--phantoms", 1, 1000),
    )
    .option("--seed <s>", "seed", intArg("--seed", 0), 1)
    .option("--steps <n>", "optimiser steps", intArg("--steps", 1, 1e7), 600)
    .option("--batch <n>", "patches per step", intArg("--batch", 1, 64), 2)
    .option("--lr <lr>", "learning rate (default 2e-3 Adam, 1e-2 SGD)", numberArg("--lr", 0))
    .addOption(new Option("--optimizer <name>", "adam, or sgd (Nesterov, nnU-Net's)").choices(["adam", "sgd"]).default("adam"))
    .option("--validation <n>", "held-out cases for validation Dice", intArg("--validation", 0, 1000), 2)
    .option("--foreground <f>", "fraction of patches centred on a bleed (nnU-Net: 0.33)", numberArg("--foreground", 0), 1 / 3)
    .option("--features <list>", "stage widths of the U-Net, e.g. 8,16,32,64 (the default) or 8,16,32,64,128", featuresArg)
    .option(
      "--patch <z,y,x>",
      "training patch in voxels (default 16,64,64, rounded up to the network's strides; each a multiple of the stride along it)",
      patchArg,
    )
    .option("--batch-dice", "Dice pooled over the batch (nnU-Net's batch_dice) instead of per sample")
    .addOption(
      new Option("--schedule <name>", "learning rate: poly (nnU-Net's, (1 − step/steps)^0.9) or constant")
        .choices(["poly", "constant"])
        .default("poly"),
    )
    .option(
      "--slice-data <dir>",
      'cases with slice-level labels only (images/ and "slice labels"/<case>.csv): adds the multiple-instance loss and mean-teacher consistency',
    )
    .option("--mil <w>", "weight of the multiple-instance loss", numberArg("--mil", 0), 1)
    .option(
      "--consistency <w>",
      "weight of the mean-teacher consistency (ramped up over the first quarter)",
      numberArg("--consistency", 0),
      1,
    )
    .option(
      "--postprocessing <json>",
      "the model's post-processing, kept in its config and applied by segment (cleanup's options), e.g. '{\"mergeClasses\":[[1,5]],\"minVoxels\":10}'",
      postprocessingArg,
    )
    .option("--json", "machine-readable progress")
    .option("--quiet", "no progress")
    .action(async (o: Opts) => {
      if (!o.data && !o.phantoms) throw new Error("give --data DIR or --phantoms N");
      // inputs: every file of --data and --slice-data; outputs: the model and its sidecar, both written only at the end
      const data = o.data ? layoutFolders(o.data) : undefined,
        sliceData = o.sliceData ? layoutFolders(o.sliceData) : undefined;
      const inputs = [
        ...(data ? [...(await inputFiles(data.images)), ...(await inputFiles(data.truths))] : []),
        ...(sliceData ? [...(await inputFiles(sliceData.images)), ...(await inputFiles(sliceData.slices))] : []),
      ];
      const sidecar = o.out.replace(/\.onnx$/i, "") + ".json";
      await OutputPlan.run(
        inputs,
        [
          { flag: "--out", path: o.out },
          { flag: "--out (config)", path: sidecar },
        ],
        async (plan) => {
          let all: LabelledCase[];
          if (o.data) all = await readLabelledCases(o.data, readLimits());
          else {
            const opt = { dims: [128, 128, 24] as [number, number, number], spacing: [1.8, 1.8, 5] as [number, number, number] };
            all = Array.from({ length: o.phantoms! + o.validation }, (_, i) => {
              const p = makePhantom(o.seed * 7919 + i, opt);
              return { ct: p.ct, labels: p.labels };
            });
          }
          const nVal = Math.min(o.validation, Math.max(0, all.length - 1));
          const r = await train({
            train: all.slice(0, all.length - nVal),
            validation: all.slice(all.length - nVal),
            steps: o.steps,
            batch: o.batch,
            optimizer: o.optimizer,
            seed: o.seed,
            foreground: Math.min(1, o.foreground),
            batchDice: o.batchDice ?? false,
            ...(o.features ? { spec: demoSpec(o.features) } : {}),
            ...(o.patch ? { patch: o.patch } : {}),
            schedule: o.schedule,
            ...(o.sliceData
              ? {
                  semi: {
                    cases: (await readSliceLabelledCases(o.sliceData, readLimits())).map(bySliceAndClass),
                    mil: o.mil,
                    consistency: o.consistency,
                  },
                }
              : {}),
            ...(o.lr !== undefined ? { lr: o.lr } : {}),
            onProgress: (p) => {
              if (o.json) process.stdout.write(toJson(p, 0) + "\n");
              else if (!o.quiet && (p.step % 10 === 0 || p.valDice !== undefined)) {
                process.stderr.write(
                  `step ${p.step}/${p.steps}  loss ${p.loss.toFixed(4)}${p.mil !== undefined ? `  MIL ${p.mil.toFixed(4)}  consistency ${p.consistency!.toFixed(5)}` : ""}${p.valDice !== undefined ? `  validation Dice ${p.valDice.toFixed(3)}` : ""}  ${p.elapsedS.toFixed(0)} s\n`,
                );
              }
            },
          });
          await plan.write("--out", (tmp) => writeFile(tmp, r.onnx));
          // (toJson: a validation Dice of NaN is "nan", as metrics.md writes it, not null)
          await plan.write("--out (config)", (tmp) =>
            writeFile(
              tmp,
              toJson(
                {
                  ...r.config,
                  trainedSteps: o.steps,
                  seed: o.seed,
                  foreground: o.foreground,
                  batchDice: o.batchDice ?? false,
                  schedule: o.schedule,
                  features: (o.features ?? [8, 16, 32, 64]).join(","),
                  finalValidationDice: r.history.at(-1)?.valDice ?? null,
                  ...(o.postprocessing ? { postprocessing: o.postprocessing } : {}),
                },
                1,
              ) + "\n",
            ),
          );
        },
      );
      if (!o.json) process.stderr.write(`wrote ${o.out}\n`);
    });
}
