/** `bhsd evaluate`: a case (two files) or a dataset (two folders), per class metrics and the summary table. */
import type { Command } from "commander";
import { stat, writeFile } from "node:fs/promises";
import { readNifti } from "../io/nifti.js";
import { readCt } from "../io/ct.js";
import { toJson } from "../json.js";
import { casesToCsv, summaryToCsv } from "../metrics/csv.js";
import { evaluateDataset, LAYOUT } from "../metrics/dataset.js";
import { BHSD_CLASSES, evaluate, type CaseMetrics } from "../metrics/evaluate.js";
import type { Summary } from "../metrics/summary.js";
import { renderReport } from "../render/report.js";
import { fmt, inputFiles, listArg, numberArg, OutputPlan, progress, readLimits, table } from "./util.js";

interface Opts {
  gt: string;
  pred: string;
  csv?: string;
  summaryCsv?: string;
  json?: boolean;
  classes?: number[];
  nsdTolerance?: number;
  missingAsEmpty?: boolean;
  quiet?: boolean;
  html?: string;
  ct?: string;
}

const name = (c: number) => BHSD_CLASSES[c] ?? `class${c}`;

function caseTable(m: CaseMetrics): string {
  return table(
    ["class", "dice", "iou", "precision", "recall", "hd95 mm", "assd mm", "nsd", "gt mL", "pred mL"],
    m.classes.map((c) => {
      const r = m.perClass[String(c)]!;
      return [
        `${c} ${name(c)}`,
        fmt(r.dice),
        fmt(r.iou),
        fmt(r.precision),
        fmt(r.recall),
        fmt(r.hd95, 2),
        fmt(r.assd, 2),
        fmt(r.nsd),
        fmt(r.volume_gt_ml, 2),
        fmt(r.volume_pred_ml, 2),
      ];
    }),
  );
}

export function summaryTable(s: Summary): string {
  const cell = (a: { mean: number; sd: number; n: number; nInf: number }, scale = 1, d = 2) =>
    `${fmt(a.mean * scale, d)} ± ${fmt(a.sd * scale, d)} (n ${a.n}${a.nInf ? `, ${a.nInf} inf` : ""})`;
  const rows = s.classes.map((c) => {
    const r = s.perClass[String(c)]!;
    return [
      `${c} ${name(c)}`,
      cell(r.dice, 100, 1),
      cell(r.hd95),
      cell(r.nsd, 100, 1),
      fmt(r.volume_gt_ml.mean, 2),
      fmt(r.volume_pred_ml.mean, 2),
    ];
  });
  rows.push([
    "mean",
    fmt(s.foregroundMean.dice.mean * 100, 1),
    fmt(s.foregroundMean.hd95.mean),
    fmt(s.foregroundMean.nsd.mean * 100, 1),
    "",
    "",
  ]);
  return (
    table(["class", "Dice %", "HD95 mm", "NSD %", "gt mL", "pred mL"], rows) +
    `\ncase-level Dice (MBH-Seg): ${fmt(s.caseDice.mean * 100, 1)} % over ${s.caseDice.n} cases`
  );
}

export function evaluateCommand(program: Command): void {
  program
    .command("evaluate")
    .description(
      "score predicted label volumes against ground truth (Dice, IoU, HD95, ASSD, NSD, volumes): two files, or two folders matched by file name",
    )
    .requiredOption("--gt <path>", "ground-truth NIfTI, or a folder of them (BHSD's label_192 or its 'ground truths')")
    .requiredOption("--pred <path>", "predicted NIfTI, or a folder of them with the same file names")
    .option("--csv <file>", "write one row per case and class")
    .option("--summary-csv <file>", "write the summary table (folders)")
    .option("--classes <list>", "classes to score", listArg("--classes"), [1, 2, 3, 4, 5])
    .option("--nsd-tolerance <mm>", "NSD tolerance in mm", numberArg("--nsd-tolerance", 0), 1)
    .option("--missing-as-empty", "score a missing prediction as empty instead of listing it only")
    .option("--html <file>", "one case: write a self-contained HTML report, truth and prediction side by side")
    .option(
      "--ct <file>",
      "the CT under the labels (NIfTI, DICOM folder or zip), for the --html pictures (without it the labels are drawn on black)",
    )
    .option("--json", "machine-readable output")
    .option("--quiet", "no progress")
    .action(async (o: Opts) => {
      const [gtStat, predStat] = await Promise.all([stat(o.gt).catch(() => null), stat(o.pred).catch(() => null)]);
      if (!gtStat) throw new Error(`--gt ${o.gt}: no such file or folder`);
      if (!predStat) throw new Error(`--pred ${o.pred}: no such file or folder`);
      if (gtStat.isDirectory() !== predStat.isDirectory()) throw new Error("--gt and --pred must both be files or both be folders");
      const evalOpts = { classes: o.classes ?? [1, 2, 3, 4, 5], nsdToleranceMm: o.nsdTolerance ?? 1 };
      const isDir = gtStat.isDirectory();
      if (isDir && o.html) throw new Error("--html needs one case (files for --gt and --pred), not folders");
      if (!isDir && o.summaryCsv) throw new Error("--summary-csv needs folders for --gt and --pred (one case has no summary)");
      const inputs = [...(await inputFiles(o.gt, [LAYOUT.truths])), ...(await inputFiles(o.pred)), ...(o.ct ? [o.ct] : [])];
      const outputs = [
        ...(o.csv ? [{ flag: "--csv", path: o.csv }] : []),
        ...(o.summaryCsv ? [{ flag: "--summary-csv", path: o.summaryCsv }] : []),
        ...(o.html ? [{ flag: "--html", path: o.html }] : []),
      ];
      if (!isDir) {
        const m = await OutputPlan.run(inputs, outputs, async (plan) => {
          const gt = await readNifti(o.gt, readLimits()),
            pred = await readNifti(o.pred, readLimits());
          const m = await evaluate(gt, pred, evalOpts);
          if (o.csv) await plan.write("--csv", (tmp) => writeFile(tmp, casesToCsv([{ case: o.gt, metrics: m }])));
          if (o.html)
            await plan.write("--html", async (tmp) =>
              writeFile(
                tmp,
                await renderReport({
                  ct: o.ct ? await readCt(o.ct, readLimits()) : { ...gt, data: new Int16Array(gt.data.length) },
                  labels: pred,
                  truth: gt,
                  metrics: m,
                  caseName: o.pred,
                }),
              ),
            );
          return m;
        });
        if (o.json) return void process.stdout.write(toJson(m) + "\n");
        for (const w of m.warnings) process.stderr.write(`warning: ${w}\n`);
        process.stdout.write(caseTable(m) + `\ncase-level Dice (MBH-Seg): ${fmt(m.caseDice)}\n`);
        return;
      }
      const r = await OutputPlan.run(inputs, outputs, async (plan) => {
        const r = await evaluateDataset({
          gtDir: o.gt,
          predDir: o.pred,
          ...evalOpts,
          missingAsEmpty: !!o.missingAsEmpty,
          read: readLimits(),
          onProgress: progress(!o.quiet && !o.json),
        });
        // nothing scored is a failure, not an empty table with exit 0
        if (r.cases.length === 0) {
          const why = r.failed.length
            ? `none of the ${r.failed.length} case(s) could be scored (first: ${r.failed[0]!.case}: ${r.failed[0]!.error.split("\n")[0]})`
            : `no case to score: ${r.missing.length} ground truth(s) in ${r.gtDir} and no prediction of the same name in ${r.predDir}${r.extra.length ? ` (${r.extra.length} prediction(s) without ground truth)` : ""}`;
          throw new Error(why);
        }
        if (o.csv) await plan.write("--csv", (tmp) => writeFile(tmp, casesToCsv(r.cases)));
        if (o.summaryCsv) await plan.write("--summary-csv", (tmp) => writeFile(tmp, summaryToCsv(r.summary)));
        return r;
      });
      if (o.json) {
        process.stdout.write(toJson(r) + "\n");
        if (r.failed.length) process.exitCode = 1;
        return;
      }
      for (const c of r.cases) for (const w of c.metrics.warnings) process.stderr.write(`warning: ${c.case}: ${w}\n`);
      if (r.missing.length)
        process.stderr.write(
          `${r.missing.length} case(s) without a prediction${o.missingAsEmpty ? " (scored as empty)" : " (left out)"}: ${r.missing.join(", ")}\n`,
        );
      if (r.extra.length) process.stderr.write(`${r.extra.length} prediction(s) without ground truth (ignored): ${r.extra.join(", ")}\n`);
      for (const f of r.failed) process.stderr.write(`failed: ${f.case}: ${f.error}\n`);
      process.stdout.write(`${r.cases.length} cases scored from ${r.gtDir} against ${r.predDir}\n` + summaryTable(r.summary) + "\n");
      if (r.failed.length) process.exitCode = 1;
    });
}
