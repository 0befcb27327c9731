/** `bhsd view CT [LABELS]`: the web viewer on loopback with that case loaded; prints the URL. */
import type { AddressInfo } from "node:net";
import type { Command } from "commander";
import { createServer } from "../server/server.js";
import { registerViewerCase } from "../server/viewer.js";
import { intArg, readLimits } from "./util.js";

export function viewCommand(program: Command): void {
  program
    .command("view")
    .description(
      "open a case in the web viewer: starts the service on 127.0.0.1 with the CT (and its labels, else the CT is segmented in the page) loaded, and prints the URL",
    )
    .argument("<ct>", "head CT (.nii or .nii.gz)")
    .argument("[labels]", "its labels (.nii or .nii.gz, the CT's grid)")
    .option("--port <n>", "port (default: a free one)", intArg("--port", 0, 65535), 0)
    .option(
      "--model-dir <dir>",
      "folder of <name>.onnx models for segmenting in the page (default BHSD_MODEL_DIR or the package's models/)",
    )
    .action(async (ct: string, labels: string | undefined, o: { port: number; modelDir?: string }) => {
      const app = await createServer({ host: "127.0.0.1", ...(o.modelDir ? { modelDir: o.modelDir } : {}) });
      await registerViewerCase(app, { ct, ...(labels ? { labels } : {}) }, readLimits());
      await app.listen({ host: "127.0.0.1", port: o.port });
      const { port } = app.server.address() as AddressInfo;
      process.stdout.write(`http://127.0.0.1:${port}/\n`);
      for (const sig of ["SIGINT", "SIGTERM"] as const) process.once(sig, () => void app.close().then(() => process.exit(0)));
    });
}
