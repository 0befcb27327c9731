/**
 * `bhsd bench [what]`: a quick measure of the engine here, on the active backend (no competitors;
 * `npm run bench` in a checkout puts every figure beside scipy and onnxruntime).
 */
import { Argument, type Command } from "commander";
import { backendInfo } from "../backends/index.js";
import { toJson } from "../json.js";
import { evaluate } from "../metrics/evaluate.js";
import { connectedComponents } from "../ops/components.js";
import { conv3d } from "../ops/tensor.js";
import { volumeFromArray } from "../volume.js";
import { paintEllipsoid } from "../phantom/ellipsoid.js";
import { prng } from "../random.js";
import { timeMedian as timeIt } from "../timing.js";
import { table } from "./util.js";

function blobs(nx: number, ny: number, nz: number, classes: number, seed: number): Uint8Array {
  const r = prng(seed);
  const m = new Uint8Array(nx * ny * nz);
  for (let b = 0; b < 30; b++) {
    const c = 1 + (b % classes),
      center = [r() * nx, r() * ny, r() * nz] as const;
    paintEllipsoid(m, [nx, ny, nz], center, [4 + r() * 30, 4 + r() * 30, 1 + r() * 3], c);
  }
  return m;
}

export function benchCommand(program: Command): void {
  program
    .command("bench")
    .description(
      "time the engine here on the active backend: conv3d, components, metrics (npm run bench in a checkout compares with scipy and onnxruntime)",
    )
    .addArgument(new Argument("[what]", "which benchmark").choices(["all", "conv", "components", "metrics"]).default("all"))
    .option("--json", "machine-readable output")
    .action(async (what: string, o: { json?: boolean }) => {
      const rows: { what: string; ms: number; rate: string }[] = [];
      if (what === "all" || what === "conv") {
        const [c, d, h, w] = [32, 16, 64, 64];
        const x = { data: new Float32Array(c * d * h * w).fill(0.5), shape: [1, c, d, h, w] };
        const k = { data: new Float32Array(c * c * 27).fill(0.01), shape: [c, c, 3, 3, 3] };
        const out = { data: new Float32Array(c * d * h * w), shape: [1, c, d, h, w] };
        const ms = await timeIt(() => conv3d(x, k, null, { padding: 1, out }), 3);
        rows.push({
          what: `conv3d 32→32 3×3×3 at ${d}×${h}×${w}`,
          ms,
          rate: `${((2 * c * c * 27 * d * h * w) / 1e6 / ms).toFixed(1)} GFLOP/s`,
        });
      }
      const [nx, ny, nz] = [512, 512, 40];
      if (what === "all" || what === "components") {
        const v = volumeFromArray(blobs(nx, ny, nz, 1, 3), [nz, ny, nx]);
        const ms = await timeIt(() => connectedComponents(v), 5);
        rows.push({
          what: `connectedComponents 26-conn, ${nx}×${ny}×${nz} blobs`,
          ms,
          rate: `${((nx * ny * nz) / 1e3 / ms).toFixed(0)} MVx/s`,
        });
      }
      if (what === "all" || what === "metrics") {
        const g = volumeFromArray(blobs(nx, ny, nz, 5, 4), [nz, ny, nx], [5, 0.49, 0.49]);
        const p = volumeFromArray(blobs(nx, ny, nz, 5, 5), [nz, ny, nx], [5, 0.49, 0.49]);
        const ms = await timeIt(() => evaluate(g, p), 3);
        rows.push({ what: `evaluate, 5 classes, ${nx}×${ny}×${nz}`, ms, rate: "" });
      }
      const info = backendInfo();
      if (o.json)
        return void process.stdout.write(toJson({ backend: info.active, details: info.details[info.active], results: rows }) + "\n");
      process.stdout.write(
        `backend ${info.active} (${info.details[info.active]?.threads} threads, ${info.details[info.active]?.simd}); medians\n`,
      );
      process.stdout.write(
        table(
          ["benchmark", "ms", "rate"],
          rows.map((r) => [r.what, r.ms.toFixed(1), r.rate]),
        ) + "\n",
      );
    });
}
