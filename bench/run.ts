/**
 * `npm run bench [io|components|metrics|conv|layers|model|load|networks|slices|segment|plan|server|semi|resample|monai]` (all but layers, slices, segment, plan, semi, resample and monai by default): the README's performance figures, each beside a competitor
 * measured in the same run on the same input. Medians; the machine is shared and noisy. It measures
 * the package as users run it — the compiled dist/, rebuilt first — not the sources through tsx
 * (which ran the TypeScript convolution 20 % slower).
 */
import { mkdtempSync, rmSync } from "node:fs";
import { cpus, tmpdir } from "node:os";
import { join } from "node:path";
import { backendInfo } from "../dist/index.js";
import { benchComponents } from "./components.js";
import { benchConv } from "./conv.js";
import { benchLayers } from "./layers.js";
import { benchLoad } from "./load.js";
import { benchIo } from "./io.js";
import { benchMetrics } from "./metrics.js";
import { benchModel, benchSegment } from "./model.js";
import { benchNetworks, benchSlices } from "./networks.js";
import { benchPlan } from "./plan.js";
import { benchResample } from "./resample.js";
import { benchMonai } from "./monai.js";
import { benchSemi } from "./semi.js";
import { benchServer } from "./server.js";
import { torchIsaHold } from "./lib.js";

const sections: Record<string, (dir: string) => Promise<string[]>> = {
  io: benchIo,
  components: benchComponents,
  metrics: benchMetrics,
  conv: benchConv,
  layers: benchLayers,
  model: benchModel,
  load: benchLoad,
  networks: benchNetworks,
  slices: benchSlices,
  segment: benchSegment,
  plan: benchPlan,
  server: benchServer,
  semi: benchSemi,
  resample: benchResample,
  monai: (d) => benchMonai(d, backendInfo().details.native?.threads ?? cpus().length),
};
const wanted = process.argv.slice(2).filter((a) => !a.startsWith("-"));
const dir = mkdtempSync(join(tmpdir(), "bhsd-bench-"));
try {
  const info = backendInfo();
  const hold = torchIsaHold();
  console.log(
    `# bhsd bench — ${new Date().toISOString().slice(0, 10)}, ${cpus()[0]?.model ?? "?"} × ${cpus().length}, node ${process.version}, native threads ${info.details.native?.threads ?? "—"} (${info.details.native?.simd ?? "no native"})${hold ? `; PyTorch's oneDNN held to ${hold} as bhsd's kernels are (ONEDNN_MAX_CPU_ISA), onnxruntime not (it has no such switch)` : ""}\n`,
  );
  for (const [name, fn] of Object.entries(sections)) {
    // "layers", "slices", "segment", "plan" and "semi" take minutes, "resample" is one step of
    // segment's: only when asked for by name
    if (wanted.length ? !wanted.includes(name) : ["layers", "slices", "segment", "plan", "semi", "resample", "monai"].includes(name))
      continue;
    console.log((await fn(dir)).join("\n") + "\n");
  }
} finally {
  rmSync(dir, { recursive: true, force: true });
}
