/** `bhsd phantom`: synthetic head CTs with known hemorrhages, in BHSD's layout. */
import type { Command } from "commander";
import { InvalidArgumentError } from "commander";
import { toJson } from "../json.js";
import { writePhantoms } from "../phantom/write.js";
import { intArg, OutputPlan, progress } from "./util.js";

const list3 =
  (name: string, int: boolean) =>
  (v: string): [number, number, number] => {
    const p = v.split(",").map(Number);
    if (p.length !== 3 || !p.every((x) => (int ? Number.isInteger(x) && x >= 8 && x <= 1024 : x > 0 && x < 50))) {
      throw new InvalidArgumentError(
        `${name} must be three ${int ? "integers from 8 to 1024" : "positive numbers (mm)"} x,y,z, got "${v}"`,
      );
    }
    return p as [number, number, number];
  };

export function phantomCommand(program: Command): void {
  program
    .command("phantom")
    .description(
      "write synthetic head CTs with known hemorrhages in BHSD's layout (images/, ground truths/, slice labels/; dicom/ with --dicom)",
    )
    .requiredOption("--out <dir>", "output folder")
    .option("--cases <n>", "number of cases", intArg("--cases", 1, 10000), 4)
    .option("--seed <s>", "seed (same seed, same phantoms)", intArg("--seed", 0), 1)
    .option("--dims <x,y,z>", "voxels", list3("--dims", true), [256, 256, 32])
    .option("--spacing <x,y,z>", "voxel size (mm)", list3("--spacing", false), [0.9, 0.9, 5])
    .option(
      "--dicom",
      "also write each CT as a DICOM CT series folder, dicom/<case>/ (one file per slice; for `bhsd segment <folder> --out-seg`)",
    )
    .option("--json", "machine-readable output")
    .option("--quiet", "no progress")
    .action(
      async (o: {
        out: string;
        cases: number;
        seed: number;
        dims: [number, number, number];
        spacing: [number, number, number];
        dicom?: boolean;
        json?: boolean;
        quiet?: boolean;
      }) => {
        // written into a hidden folder beside --out and moved into place when every case is done
        const r = await OutputPlan.run([], [{ flag: "--out", path: o.out, folder: true }], (plan) =>
          writePhantoms({
            out: plan.temp("--out"),
            cases: o.cases,
            seed: o.seed,
            dims: o.dims,
            spacing: o.spacing,
            dicom: o.dicom === true,
            onCase: progress(!o.quiet && !o.json),
          }),
        );
        if (o.json) return void process.stdout.write(toJson({ out: o.out, ...r }) + "\n");
        for (const c of r.cases)
          process.stdout.write(
            `${c.name}: ${c.classes.length ? c.classes.map((k) => ["", "EDH", "IPH", "IVH", "SAH", "SDH"][k]).join(", ") : "no bleed"}\n`,
          );
      },
    );
}
