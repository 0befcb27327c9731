/**
 * `bhsd demo`: the whole path on a fresh phantom — a synthetic head CT with known bleeds, segment
 * with the bundled model, cleanup, evaluate against the phantom's truth, and a readable report.
 */
import { existsSync } from "node:fs";
import { writeFile } from "node:fs/promises";
import { join } from "node:path";
import type { Command } from "commander";
import { backendInfo } from "../backends/index.js";
import { PACKAGE_ROOT } from "../paths.js";
import { writeNifti } from "../io/nifti.js";
import { toJson } from "../json.js";
import { BHSD_CLASSES, evaluate } from "../metrics/evaluate.js";
import { diceHeadline } from "../metrics/headline.js";
import { loadModel } from "../model/model.js";
import { segment } from "../model/segment.js";
import { makePhantom } from "../phantom/phantom.js";
import { renderReport } from "../render/report.js";
import { fmt, intArg, OutputPlan, table } from "./util.js";

export const DEMO_MODEL = join(PACKAGE_ROOT, "models", "demo.onnx");

/**
 * How the demo segments: test-time mirroring along the axes the model was trained flipped (the
 * bundled model: left-right) and windows a third of a patch apart instead of half (on unseen
 * phantoms: mean Dice 0.68 → 0.71, about 3.5 s instead of 1 s); the post-processing is the model's
 * own (its config's `postprocessing`, chosen on validation phantoms: README, "Training the demo model").
 */
export const DEMO_SEGMENT = { mirror: true, stepSize: 1 / 3 } as const;

export function demoCommand(program: Command): void {
  program
    .command("demo")
    .description(
      "the whole path on a fresh synthetic head CT: segment with the bundled model, measure each bleed, score against the known truth",
    )
    .option("--seed <s>", "phantom seed (default: a fresh one)", intArg("--seed", 0))
    .option("--model <onnx>", "model to use (default: the bundled models/demo.onnx)")
    .option("--out <dir>", "write ct.nii.gz, truth.nii.gz and prediction.nii.gz there")
    .option("--html <file>", "write a self-contained HTML report: truth and prediction side by side, the metrics, each bleed")
    .option("--json", "machine-readable output")
    .action(async (o: { seed?: number; model?: string; out?: string; json?: boolean; html?: string }) => {
      const t0 = performance.now();
      const seed = o.seed ?? (Date.now() % 1_000_000) + 1_000_000;
      const modelPath = o.model ?? DEMO_MODEL;
      if (!existsSync(modelPath)) throw new Error(`no model at ${modelPath} (npm run train:demo makes the bundled one)`);
      const inputs = [modelPath, modelPath.replace(/\.onnx$/i, "") + ".json"];
      const files = ["ct.nii.gz", "truth.nii.gz", "prediction.nii.gz"];
      if (o.out) await OutputPlan.checkFolderFiles("--out", o.out, files, inputs);
      const { phantom, report, metrics } = await OutputPlan.run(
        inputs,
        [...(o.out ? [{ flag: "--out", path: o.out, folder: true }] : []), ...(o.html ? [{ flag: "--html", path: o.html }] : [])],
        async (plan) => {
          const phantom = makePhantom(seed, { dims: [128, 128, 24], spacing: [1.8, 1.8, 5] });
          const model = await loadModel(modelPath);
          const { labels, report } = await segment(phantom.ct, model, DEMO_SEGMENT);
          const metrics = await evaluate(phantom.labels, labels);
          if (o.out) {
            const dir = plan.temp("--out");
            await writeNifti(join(dir, files[0]!), phantom.ct);
            await writeNifti(join(dir, files[1]!), phantom.labels);
            await writeNifti(join(dir, files[2]!), labels);
          }
          if (o.html)
            await plan.write("--html", async (tmp) =>
              writeFile(
                tmp,
                await renderReport({
                  ct: phantom.ct,
                  labels,
                  report,
                  truth: phantom.labels,
                  metrics,
                  caseName: `phantom seed ${seed}`,
                  notes: { seed },
                }),
              ),
            );
          return { phantom, report, metrics };
        },
      );
      // the headline counts every class in the truth or the prediction (an invented class scores 0)
      const h = diceHeadline(metrics);
      const present = h.truthClasses;
      const seconds = (performance.now() - t0) / 1000;
      const out = {
        seed,
        model: modelPath,
        backend: backendInfo().active,
        headline: "meanDice",
        meanDice: h.meanDice,
        classesCounted: h.classes,
        falsePositiveClasses: h.falsePositiveClasses,
        classesPresent: present,
        meanDicePresent: h.meanDiceTruth,
        caseDice: metrics.caseDice,
        metrics,
        report,
        seconds,
      };
      if (o.json) return void process.stdout.write(toJson(out) + "\n");
      const name = (c: number) => BHSD_CLASSES[c] ?? `class${c}`;
      process.stdout.write(
        [
          `bhsd demo — phantom seed ${seed}: ${phantom.ct.dims.join(" × ")} voxels at ${phantom.ct.spacing.join(" × ")} mm; true bleeds: ${present.map(name).join(", ") || "none"}`,
          `model ${report.model} on ${report.backend}, ${report.windows} window(s), ${seconds.toFixed(1)} s in all`,
          "",
          table(
            ["class", "Dice", "true mL", "predicted mL", "HD95 mm"],
            metrics.classes.map((c) => {
              const m = metrics.perClass[String(c)]!;
              return [`${c} ${name(c)}`, fmt(m.dice), fmt(m.volume_gt_ml, 2), fmt(m.volume_pred_ml, 2), fmt(m.hd95, 1)];
            }),
          ),
          h.classes.length === 0
            ? "no bleed in the truth and none predicted: correct, and no class to average a Dice over (the headline is n/a)"
            : `mean Dice over the classes in the truth or the prediction (the headline; a class predicted but not in the truth scores 0): ${fmt(h.meanDice)}` +
              (h.falsePositiveClasses.length
                ? `; predicted but not in the truth: ${h.falsePositiveClasses.map((c) => `${name(c)} ${fmt(metrics.perClass[String(c)]!.volume_pred_ml, 2)} mL`).join(", ")}`
                : ""),
          `mean Dice over the classes present in the truth only: ${fmt(h.meanDiceTruth)}; case-level Dice (MBH-Seg): ${fmt(metrics.caseDice)}`,
          "",
          `${report.components.length} predicted bleed(s):`,
          table(
            ["bleed", "class", "mL", "ABC/2 mL", "slices"],
            report.components.map((c) => [c.label, name(c.class), fmt(c.volumeMl, 2), fmt(c.abc2Ml, 2), c.slices]),
          ),
          "",
          `timings (ms): ${Object.entries(report.timings)
            .map(([k, v]) => `${k} ${v.toFixed(0)}`)
            .join(", ")}`,
        ].join("\n") + "\n",
      );
    });
}
