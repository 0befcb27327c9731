/** `bhsd evaluate`: a case (two files) or a dataset (two folders), per class metrics and the summary table. */
import type { Command } from "commander";
import { stat, writeFile } from "node:fs/promises";
import { readNifti } from "../io/nifti.js";
import { toJson } from "../json.js";
import { casesToCsv, summaryToCsv } from "../metrics/csv.js";
import { evaluateDataset } from "../metrics/dataset.js";
import { BHSD_CLASSES, evaluate, type CaseMetrics } from "../metrics/evaluate.js";
import type { Summary } from "../metrics/summary.js";
import { fmt, listArg, numberArg, progress, table } from "./util.js";

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
}

const name = (c: number) => BHSD_CLASSES[c] ?? `class${c}`;

function caseTable(m: CaseMetrics): string {
  return table(
    ["class", "dice", "iou", "precision", "recall", "hd95 mm", "assd mm", "nsd", "gt mL", "pred mL"],
    m.classes.map((c) => {
      const r = m.perClass[String(c)]!;
      return [`${c} ${name(c)}`, fmt(r.dice), fmt(r.iou), fmt(r.precision), fmt(r.recall), fmt(r.hd95, 2), fmt(r.assd, 2), fmt(r.nsd), fmt(r.volume_gt_ml, 2), fmt(r.volume_pred_ml, 2)];
    }),
  );
}

function summaryTable(s: Summary): string {
  const cell = (a: { mean: number; sd: number; n: number; nInf: number }, scale = 1, d = 2) =>
    `${fmt(a.mean * scale, d)} ± ${fmt(a.sd * scale, d)} (n ${a.n}${a.nInf ? `, ${a.nInf} inf` : ""})`;
  const rows = s.classes.map((c) => {
    const r = s.perClass[String(c)]!;
    return [`${c} ${name(c)}`, cell(r.dice, 100, 1), cell(r.hd95), cell(r.nsd, 100, 1), fmt(r.volume_gt_ml.mean, 2), fmt(r.volume_pred_ml.mean, 2)];
  });
  rows.push(["mean", fmt(s.foregroundMean.dice.mean * 100, 1), fmt(s.foregroundMean.hd95.mean), fmt(s.foregroundMean.nsd.mean * 100, 1), "", ""]);
  return (
    table(["class", "Dice %", "HD95 mm", "NSD %", "gt mL", "pred mL"], rows) +
    `\ncase-level Dice (MBH-Seg): ${fmt(s.caseDice.mean * 100, 1)} % over ${s.caseDice.n} cases`
  );
}

export function evaluateCommand(program: Command): void {
  program
    .command("evaluate")
    .description("score predicted label volumes against ground truth (Dice, IoU, HD95, ASSD, NSD, volumes): two files, or two folders matched by file name")
    .requiredOption("--gt <path>", "ground-truth NIfTI, or a folder of them (BHSD's label_192 or its 'ground truths')")
    .requiredOption("--pred <path>", "predicted NIfTI, or a folder of them with the same file names")
    .option("--csv <file>", "write one row per case and class")
    .option("--summary-csv <file>", "write the summary table (folders)")
    .option("--classes <list>", "classes to score", listArg("--classes"), [1, 2, 3, 4, 5])
    .option("--nsd-tolerance <mm>", "NSD tolerance in mm", numberArg("--nsd-tolerance", 0), 1)
    .option("--missing-as-empty", "score a missing prediction as empty instead of listing it only")
    .option("--json", "machine-readable output")
    .option("--quiet", "no progress")
    .action(async (o: Opts) => {
      const [gtStat, predStat] = await Promise.all([stat(o.gt).catch(() => null), stat(o.pred).catch(() => null)]);
      if (!gtStat) throw new Error(`--gt ${o.gt}: no such file or folder`);
      if (!predStat) throw new Error(`--pred ${o.pred}: no such file or folder`);
      if (gtStat.isDirectory() !== predStat.isDirectory()) throw new Error("--gt and --pred must both be files or both be folders");
      const evalOpts = { classes: o.classes ?? [1, 2, 3, 4, 5], nsdToleranceMm: o.nsdTolerance ?? 1 };
      if (!gtStat.isDirectory()) {
        const m = await evaluate(await readNifti(o.gt), await readNifti(o.pred), evalOpts);
        if (o.csv) await writeFile(o.csv, casesToCsv([{ case: o.gt, metrics: m }]));
        if (o.json) return void process.stdout.write(toJson(m) + "\n");
        for (const w of m.warnings) process.stderr.write(`warning: ${w}\n`);
        process.stdout.write(caseTable(m) + `\ncase-level Dice (MBH-Seg): ${fmt(m.caseDice)}\n`);
        return;
      }
      const r = await evaluateDataset({ gtDir: o.gt, predDir: o.pred, ...evalOpts, missingAsEmpty: !!o.missingAsEmpty, onProgress: progress(!o.quiet && !o.json) });
      if (o.csv) await writeFile(o.csv, casesToCsv(r.cases));
      if (o.summaryCsv) await writeFile(o.summaryCsv, summaryToCsv(r.summary));
      if (o.json) return void process.stdout.write(toJson(r) + "\n");
      for (const c of r.cases) for (const w of c.metrics.warnings) process.stderr.write(`warning: ${c.case}: ${w}\n`);
      if (r.missing.length) process.stderr.write(`${r.missing.length} case(s) without a prediction${o.missingAsEmpty ? " (scored as empty)" : " (left out)"}: ${r.missing.join(", ")}\n`);
      if (r.extra.length) process.stderr.write(`${r.extra.length} prediction(s) without ground truth (ignored): ${r.extra.join(", ")}\n`);
      for (const f of r.failed) process.stderr.write(`failed: ${f.case}: ${f.error}\n`);
      process.stdout.write(`${r.cases.length} cases scored from ${r.gtDir} against ${r.predDir}\n` + summaryTable(r.summary) + "\n");
      if (r.failed.length) process.exitCode = 1;
    });
}
