/** `bhsd batch submit|status|results|evaluate`: a dataset on the shared Redis queue, segmented by any number of `bhsd worker`s. */
import { existsSync } from "node:fs";
import { join } from "node:path";
import { writeFile } from "node:fs/promises";
import type { Command } from "commander";
import { toJson } from "../json.js";
import { casesToCsv, summaryToCsv } from "../metrics/csv.js";
import { batchEvaluate, batchStatus, resultsCsv, submitBatch, waitBatch, type BatchStatus } from "../queue/batch.js";
import { DEFAULT_QUEUE } from "../queue/common.js";
import { summaryTable } from "./evaluate.js";
import { intArg, OutputPlan, progress } from "./util.js";

interface Common {
  redis: string;
  queue: string;
  batch?: string;
  json?: boolean;
}

function common(c: Command, batchOpt = true): Command {
  c.requiredOption("--redis <url>", "redis://HOST:PORT").option("--queue <name>", "queue name", DEFAULT_QUEUE);
  if (batchOpt) c.option("--batch <id>", "batch id (default: the latest submitted)");
  return c;
}

const conn = (o: Common) => ({ redis: o.redis, queue: o.queue, ...(o.batch ? { batch: o.batch } : {}) });

function statusLine(s: BatchStatus): string {
  const order = ["completed", "active", "waiting", "delayed", "prioritized", "failed", "unknown"];
  const parts = order.filter((k) => s.counts[k]).map((k) => `${s.counts[k]} ${k}`);
  return `batch ${s.batch.id} (${s.batch.total} cases, model ${s.batch.model}, labels in ${s.batch.out}): ${parts.join(", ") || "nothing"}; ${s.workers} worker(s) connected`;
}

function statusText(s: BatchStatus): string {
  const lines = [statusLine(s)];
  for (const c of s.cases) {
    if (c.state === "active")
      lines.push(`  ${c.case}: active on ${c.worker ?? "?"}${c.progress?.total ? `, window ${c.progress.done}/${c.progress.total}` : ""}`);
    else if (c.state === "failed" || c.state === "delayed" || c.state === "unknown")
      lines.push(`  ${c.case}: ${c.state} after ${c.attempts} attempt(s): ${c.error ?? ""}`);
  }
  return lines.join("\n") + "\n";
}

export function batchCommand(program: Command): void {
  const batch = program.command("batch").description("segment a dataset on a Redis queue shared by any number of `bhsd worker`s");

  common(batch.command("submit"), false)
    .description(
      'one job per case (BHSD layout: images/ and "ground truths"/, or a folder of NIfTI files, DICOM series folders and zips of one; a case already done with the same CT and model is not redone, and identical CTs share one job and its label file, which batch results names)',
    )
    .requiredOption("--data <dir>", "dataset folder (every worker must reach it at this path)")
    .requiredOption("--model <name>", "model name (<name>.onnx, or a <name>/ nnU-Net folder or MONAI bundle, in the workers' --model-dir)")
    .option("--model-dir <dir>", "where this machine finds the model to fingerprint it (default BHSD_MODEL_DIR or the package's models/)")
    .option("--out <dir>", "folder of the label files, reached by every worker (default <data>/predictions)")
    .option("--tta", "test-time mirroring")
    .option(
      "--attempts <n>",
      "tries per new case before it fails (a case queued before keeps its own; a failed one resubmitted gets them again)",
      intArg("--attempts", 1, 100),
      3,
    )
    .option("--backoff-ms <ms>", "wait before the first retry, doubling after", intArg("--backoff-ms", 0), 5000)
    .option("--wait", "follow the batch until every case is done or failed (exit 1 if any failed)")
    .option("--json", "machine-readable output")
    .option("--quiet", "no progress")
    .action(
      async (
        o: Common & {
          data: string;
          model: string;
          modelDir?: string;
          out?: string;
          tta?: boolean;
          attempts: number;
          backoffMs: number;
          wait?: boolean;
          quiet?: boolean;
        },
      ) => {
        const bar = progress(!o.quiet && !o.json);
        const r = await submitBatch({
          ...conn(o),
          data: o.data,
          model: o.model,
          ...(o.modelDir ? { modelDir: o.modelDir } : {}),
          ...(o.out ? { out: o.out } : {}),
          mirror: !!o.tta,
          attempts: o.attempts,
          backoffMs: o.backoffMs,
          onProgress: (d, t) => bar(d, t, "hashed and queued"),
        });
        const { cases: _c, ...info } = r.batch;
        if (!o.json)
          process.stdout.write(
            `batch ${r.batch.id}: ${r.batch.cases.length} cases, ${r.added} queued, ${r.done} already done, ${r.pending} already queued or running, ${r.retried} retried; labels in ${r.batch.out}\n`,
          );
        if (!o.wait) {
          if (o.json)
            process.stdout.write(
              toJson({ ...info, total: r.batch.cases.length, added: r.added, done: r.done, pending: r.pending, retried: r.retried }) + "\n",
            );
          return;
        }
        const bar2 = progress(!o.quiet && !o.json);
        const s = await waitBatch({
          redis: o.redis,
          queue: o.queue,
          batch: r.batch.id,
          onStatus: (s) => bar2((s.counts.completed ?? 0) + (s.counts.failed ?? 0), s.batch.total, "cases finished"),
        });
        process.stdout.write(
          o.json ? toJson({ ...s, added: r.added, done: r.done, pending: r.pending, retried: r.retried }) + "\n" : statusText(s),
        );
        if (s.counts.failed || s.counts.unknown) process.exitCode = 1;
      },
    );

  common(batch.command("status"))
    .description(
      "each case's state (waiting, active with its window, completed, delayed for a retry, failed with its error) and the workers connected",
    )
    .option("--json", "machine-readable output")
    .action(async (o: Common) => {
      const s = await batchStatus(conn(o));
      process.stdout.write(o.json ? toJson(s) + "\n" : statusText(s));
    });

  common(batch.command("results"))
    .description("one row per case: state, label file, worker, backend, time, bleeds, mL per class, error")
    .option("--csv [file]", "CSV (the default output) to this file instead of stdout")
    .option("--json", "machine-readable output")
    .action(async (o: Common & { csv?: string | boolean }) => {
      const s = await batchStatus(conn(o));
      if (o.json) return void process.stdout.write(toJson(s.cases) + "\n");
      if (typeof o.csv === "string") {
        const csv = o.csv;
        // through OutputPlan: never one of the batch's files, folder checked, written whole or not at all
        await OutputPlan.run([], [{ flag: "--csv", path: csv }], async (plan) => {
          // (and nothing already in the batch's images or ground-truth folder)
          const images = join(s.batch.data, "images");
          await plan.refuseInputs([
            existsSync(images) ? images : s.batch.data,
            ...(s.batch.gtDir ? [s.batch.gtDir] : []),
            ...s.cases.flatMap((c) => (c.result?.labels ? [c.result.labels] : [])),
          ]);
          await plan.write("--csv", (tmp) => writeFile(tmp, resultsCsv(s)));
        });
        process.stdout.write(`${s.cases.length} rows written to ${csv}\n`);
      } else process.stdout.write(resultsCsv(s));
    });

  common(batch.command("evaluate"))
    .description("the dataset table (as `bhsd evaluate` on folders) over every worker's labels against the batch's ground truths")
    .option("--csv <file>", "write one row per case and class")
    .option("--summary-csv <file>", "write the summary table")
    .option("--json", "machine-readable output")
    .option("--quiet", "no progress")
    .action(async (o: Common & { csv?: string; summaryCsv?: string; quiet?: boolean }) => {
      const bar = progress(!o.quiet && !o.json);
      // outputs checked (folders, one file named twice) before the work; not one of the batch's files once they are known
      const outputs = [
        ...(o.csv ? [{ flag: "--csv", path: o.csv }] : []),
        ...(o.summaryCsv ? [{ flag: "--summary-csv", path: o.summaryCsv }] : []),
      ];
      const r = await OutputPlan.run([], outputs, async (plan) => {
        const r = await batchEvaluate({ ...conn(o), onProgress: (d, t, n) => bar(d, t, n) });
        if (!r.cases.length)
          throw new Error(`no case of the batch is scored yet (${r.missing.length} not completed, ${r.failed.length} failed)`);
        await plan.refuseInputs([...(r.gtDir ? [r.gtDir] : []), ...r.cases.flatMap((c) => [c.gt, ...(c.pred ? [c.pred] : [])])]);
        if (o.csv) await plan.write("--csv", (tmp) => writeFile(tmp, casesToCsv(r.cases)));
        if (o.summaryCsv) await plan.write("--summary-csv", (tmp) => writeFile(tmp, summaryToCsv(r.summary)));
        return r;
      });
      if (o.json) return void process.stdout.write(toJson(r) + "\n");
      const notes = [
        ...(r.missing.length ? [`${r.missing.length} case(s) not completed, left out: ${r.missing.join(", ")}`] : []),
        ...r.failed.map((f) => `${f.case}: ${f.error}`),
      ];
      process.stdout.write(
        `${r.cases.length} cases scored from ${r.gtDir} against the workers' labels\n` +
          summaryTable(r.summary) +
          "\n" +
          (notes.length ? notes.join("\n") + "\n" : ""),
      );
    });
}
