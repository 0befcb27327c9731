/** `bhsd worker`: takes segmentation and evaluation jobs from a Redis queue (BullMQ) until SIGTERM/SIGINT. */
import type { Command } from "commander";
import { startWorker } from "../queue/worker.js";
import { DEFAULT_QUEUE } from "../queue/common.js";
import { intArg, readLimits } from "./util.js";

interface Opts {
  redis: string;
  modelDir?: string;
  concurrency: number;
  queue: string;
  lockMs: number;
  stalledIntervalMs: number;
  maxStalled: number;
}

export function workerCommand(program: Command): void {
  program
    .command("worker")
    .description(
      "take segmentation and evaluation jobs from a Redis queue (any number of workers on any machines; labels go to the paths the jobs name); SIGTERM finishes the jobs in hand, then exits",
    )
    .requiredOption("--redis <url>", "redis://HOST:PORT")
    .option(
      "--model-dir <dir>",
      "folder of models: <name>.onnx files, and nnU-Net trainer folders or MONAI bundles as <name>/ (default BHSD_MODEL_DIR or the package's models/)",
    )
    .option("--concurrency <n>", "jobs at once in this process", intArg("--concurrency", 1, 64), 1)
    .option("--queue <name>", "queue name", DEFAULT_QUEUE)
    .option(
      "--lock-ms <ms>",
      "a job's lock without renewal: after it a killed worker's job runs elsewhere",
      intArg("--lock-ms", 1000),
      60_000,
    )
    .option("--stalled-interval-ms <ms>", "how often to look for stalled jobs", intArg("--stalled-interval-ms", 100), 30_000)
    .option("--max-stalled <n>", "times a job may stall before it fails", intArg("--max-stalled", 0, 100), 2)
    .action(async (o: Opts) => {
      const w = await startWorker({
        redis: o.redis,
        queue: o.queue,
        ...(o.modelDir ? { modelDir: o.modelDir } : {}),
        concurrency: o.concurrency,
        lockMs: o.lockMs,
        stalledIntervalMs: o.stalledIntervalMs,
        maxStalled: o.maxStalled,
        maxInputBytes: readLimits().maxBytes, // the global --max-input-mb
        log: (l) => process.stdout.write(l + "\n"),
      });
      await new Promise<void>((res) => {
        let stopping = false;
        const stop = (sig: string) => {
          if (stopping) return;
          stopping = true;
          process.stdout.write(`${sig}: finishing the jobs in hand\n`);
          w.close().then(
            () => {
              process.stdout.write(`worker ${w.name} stopped\n`);
              res();
            },
            (e: Error) => {
              process.stderr.write(`bhsd worker: ${e.message}\n`);
              process.exitCode = 1;
              res();
            },
          );
        };
        process.once("SIGTERM", () => stop("SIGTERM"));
        process.once("SIGINT", () => stop("SIGINT"));
      });
    });
}
