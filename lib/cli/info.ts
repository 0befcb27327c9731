/** `bhsd info [file]`: version, backends (and why any is missing), threads, SIMD; or a NIfTI file's header and intensities. */
import type { Command } from "commander";
import { backendInfo } from "../backends/index.js";
import { readNifti } from "../io/nifti.js";
import { voxelStats } from "../ops/stats.js";
import { VERSION } from "../version.js";
import { toJson } from "../json.js";
import { readLimits } from "./util.js";

export function infoCommand(program: Command): void {
  program
    .command("info")
    .description("print version, backends (and why any is unavailable), threads and SIMD level; with a file, its geometry and intensities")
    .argument("[file]", "a NIfTI file (.nii or .nii.gz) to describe")
    .option("--json", "machine-readable output")
    .action(async (file: string | undefined, opts: { json?: boolean }) => {
      if (file !== undefined) return describeFile(file, !!opts.json);
      const info = backendInfo();
      const out = {
        version: VERSION,
        node: process.version,
        platform: `${process.platform}-${process.arch}`,
        backend: info.active,
        available: info.available,
        reasons: info.reasons,
        details: info.details,
      };
      if (opts.json) return void process.stdout.write(toJson(out) + "\n");
      const lines = [`bhsd ${VERSION} (node ${process.version}, ${out.platform})`, `active backend: ${info.active}`];
      for (const name of ["cuda", "native", "ts"] as const) {
        const d = info.details[name];
        lines.push(
          info.available[name]
            ? `  ${name.padEnd(6)} yes  threads ${d?.threads}, ${d?.simd}${d?.binary ? `, ${d.binary}` : ""}`
            : `  ${name.padEnd(6)} no   ${info.reasons[name]}`,
        );
      }
      process.stdout.write(lines.join("\n") + "\n");
    });
}

async function describeFile(file: string, json: boolean) {
  const v = await readNifti(file, readLimits());
  const s = await voxelStats(v);
  const out = {
    file,
    dims: v.dims,
    spacing: v.spacing,
    affine: v.affine,
    datatype: v.meta?.datatype,
    scaled: v.meta?.scaled,
    affineSource: v.meta?.affineSource,
    min: s.min,
    max: s.max,
    mean: s.mean,
    nonzero: s.nonzero,
  };
  if (json) return void process.stdout.write(toJson(out) + "\n");
  const f = (x: number) => (Number.isInteger(x) ? String(x) : x.toFixed(3));
  process.stdout.write(
    [
      `${file}`,
      `  dims ${v.dims.join(" × ")}, spacing ${v.spacing.map(f).join(" × ")} mm, ${v.meta?.datatype}${v.meta?.scaled ? ` scaled (slope ${v.meta.sclSlope}, inter ${v.meta.sclInter})` : ""}`,
      `  affine from ${v.meta?.affineSource}: [${[0, 1, 2].map((r) => v.affine.slice(4 * r, 4 * r + 4).map(f).join(" ")).join("; ")}]`,
      `  intensities min ${f(s.min)}, max ${f(s.max)}, mean ${f(s.mean)}, non-zero ${s.nonzero} of ${s.count}`,
    ].join("\n") + "\n",
  );
}
