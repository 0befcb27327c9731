/** `bhsd serve`: the REST service. */
import type { Command } from "commander";
import { serve } from "../server/server.js";
import { intArg } from "./util.js";

export function serveCommand(program: Command): void {
  program
    .command("serve")
    .description("run the REST service (POST /v1/segment, /v1/evaluate, /v1/components; GET /v1/health, /v1/info, /v1/openapi.json)")
    .option("--host <address>", "address to bind (any but loopback needs a token)", "127.0.0.1")
    .option("--port <n>", "port", intArg("--port", 0, 65535), 8080)
    .option("--token <token>", "bearer token (default BHSD_TOKEN)")
    .option("--model-dir <dir>", "folder of <name>.onnx models (default BHSD_MODEL_DIR or the package's models/)")
    .option("--concurrency <n>", "jobs at once", intArg("--concurrency", 1, 64), 1)
    .option("--queue <n>", "jobs waiting before 503", intArg("--queue", 0, 1000), 4)
    .option("--max-body-mb <n>", "largest request body (MiB)", intArg("--max-body-mb", 1, 4096), 512)
    .option("--job-timeout-s <n>", "time limit of one job (s)", intArg("--job-timeout-s", 1, 86400), 600)
    .action(async (o: { host: string; port: number; token?: string; modelDir?: string; concurrency: number; queue: number; maxBodyMb: number; jobTimeoutS: number }) => {
      const app = await serve({
        host: o.host,
        port: o.port,
        ...(o.token ? { token: o.token } : {}),
        ...(o.modelDir ? { modelDir: o.modelDir } : {}),
        concurrency: o.concurrency,
        queue: o.queue,
        maxBodyBytes: o.maxBodyMb * 2 ** 20,
        jobTimeoutMs: o.jobTimeoutS * 1000,
      });
      const addr = app.server.address();
      process.stderr.write(`bhsd serving on ${typeof addr === "object" && addr ? `${addr.address}:${addr.port}` : addr}\n`);
    });
}
