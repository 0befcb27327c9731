/** `bhsd serve`: the REST service; stops gracefully (accepted requests finish) on SIGINT/SIGTERM. */
import { Option, type Command } from "commander";
import { LOG_LEVELS, serve, type LogLevel } from "../server/server.js";
import { intArg } from "./util.js";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { serveQueue } from "../queue/rest.js";

interface ServeFlags {
  host: string;
  port: number;
  token?: string;
  modelDir?: string;
  modelCacheMb: number;
  concurrency: number;
  queue: number;
  maxBodyMb: number;
  maxVoxels: number;
  maxRequestMb: number;
  maxInflightMb: number;
  maxComponents: number;
  jobTimeoutS: number;
  bodyIdleS: number;
  resultDir?: string;
  resultTtlS: number;
  resultMaxMb: number;
  resultMaxCount: number;
  logLevel: LogLevel;
  redis?: string;
}

export function serveCommand(program: Command): void {
  program
    .command("serve")
    .description("run the REST service (POST /v1/segment, /v1/evaluate, /v1/components; GET /v1/health, /v1/info, /v1/openapi.json)")
    .option("--host <address>", "address to bind (any but loopback needs a token)", "127.0.0.1")
    .option("--port <n>", "port", intArg("--port", 0, 65535), 8080)
    .option("--token <token>", "bearer token (default BHSD_TOKEN)")
    .option(
      "--model-dir <dir>",
      "folder of models: <name>.onnx files, and nnU-Net trainer folders or MONAI bundles as <name>/ (default BHSD_MODEL_DIR or the package's models/)",
    )
    .option(
      "--model-cache-mb <n>",
      "models kept loaded between requests (MiB, each counted by its weights as loaded or its .onnx size where larger), least recently used dropped first",
      intArg("--model-cache-mb", 1, 1 << 20),
      2048,
    )
    .option("--concurrency <n>", "jobs at once", intArg("--concurrency", 1, 64), 1)
    .option("--queue <n>", "jobs waiting before 503", intArg("--queue", 0, 1000), 4)
    .option("--max-body-mb <n>", "largest request body (MiB)", intArg("--max-body-mb", 1, 4096), 512)
    .option("--max-voxels <n>", "largest volume and grid derived from it (voxels)", intArg("--max-voxels", 1), 64 * 2 ** 20)
    .option("--max-request-mb <n>", "decoded voxel data one request may hold (MiB)", intArg("--max-request-mb", 1, 1 << 20), 1024)
    .option(
      "--max-inflight-mb <n>",
      "decoded voxel data all admitted requests may hold (MiB)",
      intArg("--max-inflight-mb", 1, 1 << 20),
      2048,
    )
    .option("--max-components <n>", "most components /v1/components reports (more: 422)", intArg("--max-components", 0), 10_000)
    .option("--job-timeout-s <n>", "time limit of one job (s); its work is stopped then", intArg("--job-timeout-s", 1, 86400), 600)
    .option(
      "--body-idle-s <n>",
      "longest wait for a request body's next bytes (s); then 408 body_timeout",
      intArg("--body-idle-s", 1, 86400),
      30,
    )
    .option("--result-dir <dir>", "folder of label results (default BHSD_RESULT_DIR or <tmp>/bhsd-results)")
    .option(
      "--result-ttl-s <n>",
      "lifetime of a result (s); with --redis, of a finished job and its labels",
      intArg("--result-ttl-s", 1, 30 * 86400),
      900,
    )
    .option("--result-max-mb <n>", "bytes of results kept, oldest dropped first (MiB)", intArg("--result-max-mb", 1, 1 << 20), 1024)
    .option("--result-max-count <n>", "results kept, oldest dropped first", intArg("--result-max-count", 1), 10_000)
    .addOption(new Option("--log-level <level>", "one line per request only at debug and trace").choices(LOG_LEVELS).default("warn"))
    .option(
      "--redis <url>",
      "enqueue on this Redis (BullMQ) for `bhsd worker`s instead of running in-process: POST /v1/jobs/segment, GET /v1/jobs/:id[/labels]; --result-dir is then the folder shared with the workers",
    )
    .action(async (o: ServeFlags) => {
      // issue 20: with --redis the service is a front of the shared queue (lib/queue/rest.ts)
      const app = o.redis
        ? await serveQueue({
            redis: o.redis,
            host: o.host,
            port: o.port,
            ...(o.token ? { token: o.token } : {}),
            ...(o.modelDir ? { modelDir: o.modelDir } : {}),
            sharedDir: o.resultDir ?? process.env.BHSD_RESULT_DIR ?? join(tmpdir(), "bhsd-shared"),
            maxBodyBytes: o.maxBodyMb * 2 ** 20,
            resultTtlMs: o.resultTtlS * 1000,
          })
        : await serve({
            host: o.host,
            port: o.port,
            ...(o.token ? { token: o.token } : {}),
            ...(o.modelDir ? { modelDir: o.modelDir } : {}),
            ...(o.resultDir ? { resultDir: o.resultDir } : {}),
            modelCacheBytes: o.modelCacheMb * 2 ** 20,
            concurrency: o.concurrency,
            queue: o.queue,
            maxBodyBytes: o.maxBodyMb * 2 ** 20,
            maxVoxels: o.maxVoxels,
            maxRequestBytes: o.maxRequestMb * 2 ** 20,
            maxInflightBytes: Math.max(o.maxInflightMb, o.maxRequestMb) * 2 ** 20,
            maxComponents: o.maxComponents,
            jobTimeoutMs: o.jobTimeoutS * 1000,
            bodyIdleMs: o.bodyIdleS * 1000,
            resultTtlMs: o.resultTtlS * 1000,
            resultMaxBytes: o.resultMaxMb * 2 ** 20,
            resultMaxCount: o.resultMaxCount,
            logLevel: o.logLevel,
          });
      const addr = app.server.address();
      process.stderr.write(`bhsd serving on ${typeof addr === "object" && addr ? `${addr.address}:${addr.port}` : addr}\n`);
      let stopping = false;
      const stop = (signal: string) => {
        if (stopping) return;
        stopping = true;
        process.stderr.write(`bhsd: ${signal}, stopping after the accepted requests\n`);
        app.close().then(
          () => process.exit(0),
          (e: Error) => {
            process.stderr.write(`bhsd: ${e.message}\n`);
            process.exit(1);
          },
        );
      };
      process.once("SIGINT", () => stop("SIGINT"));
      process.once("SIGTERM", () => stop("SIGTERM"));
    });
}
