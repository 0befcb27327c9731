/** `bhsd components`: label the bleeds of a label volume, measure each, optionally clean up. */
import { Option, type Command } from "commander";
import { readNifti, writeNifti } from "../io/nifti.js";
import { toJson } from "../json.js";
import { BHSD_CLASSES } from "../metrics/evaluate.js";
import { asLabelVolume, cleanup, componentStats, connectedComponents, type CleanupOptions, type Connectivity } from "../ops/components.js";
import { fmt, intArg, numberArg, OutputPlan, readLimits, table } from "./util.js";

interface Opts {
  connectivity: "6" | "18" | "26";
  perClass: boolean;
  out?: string;
  cleaned?: string;
  stats?: boolean;
  json?: boolean;
  minMl?: number;
  minVoxels?: number;
  keepLargest?: number;
  maxLabel: number;
  maxComponents: number;
}

export function componentsCommand(program: Command): void {
  program
    .command("components")
    .description(
      "label connected components (bleeds) of a label volume, with per-bleed volume, extent and ABC/2; optionally remove small ones",
    )
    .argument("<labels>", "label NIfTI: integers from 0 (background) to --max-label (BHSD: 1..5)")
    .addOption(
      new Option("--connectivity <n>", "voxels touching by a face (6), also an edge (18), also a corner (26)")
        .choices(["6", "18", "26"])
        .default("26"),
    )
    .option("--no-per-class", "join touching voxels of different classes")
    .option("--min-ml <mL>", "remove components smaller than this (mL)", numberArg("--min-ml", 0))
    .option("--min-voxels <n>", "remove components with fewer voxels", intArg("--min-voxels", 0))
    .option("--keep-largest <n>", "keep only the n largest components of each class", intArg("--keep-largest", 0))
    .option("--out <file>", "write the component label map (int32 NIfTI)")
    .option("--cleaned <file>", "write the cleaned label volume (with --min-ml, --min-voxels or --keep-largest)")
    .option("--max-label <n>", "the largest label value accepted (a CT in HU is refused)", intArg("--max-label", 0, 2 ** 31 - 1), 255)
    .option("--max-components <n>", "refuse volumes with more components than this", intArg("--max-components", 0), 10_000)
    .option("--stats", "print every component")
    .option("--json", "machine-readable output")
    .action(async (file: string, o: Opts) => {
      if (o.cleaned && o.minMl === undefined && o.minVoxels === undefined && o.keepLargest === undefined) {
        throw new Error("--cleaned needs --min-ml, --min-voxels or --keep-largest");
      }
      const outputs = [...(o.out ? [{ flag: "--out", path: o.out }] : []), ...(o.cleaned ? [{ flag: "--cleaned", path: o.cleaned }] : [])];
      const { count, stats } = await OutputPlan.run([file], outputs, async (plan) => {
        let vol = await asLabelVolume(await readNifti(file, readLimits()), { maxLabel: o.maxLabel, name: file });
        const cleaning: CleanupOptions = { connectivity: Number(o.connectivity) as Connectivity, perClass: o.perClass };
        if (o.minMl !== undefined) cleaning.minVolumeMl = o.minMl;
        if (o.minVoxels !== undefined) cleaning.minVoxels = o.minVoxels;
        if (o.keepLargest !== undefined) cleaning.keepLargest = o.keepLargest;
        if (o.minMl !== undefined || o.minVoxels !== undefined || o.keepLargest !== undefined) {
          vol = await cleanup(vol, cleaning);
          if (o.cleaned) await plan.write("--cleaned", (tmp) => writeNifti(tmp, vol));
        }
        const { labels, count } = await connectedComponents(vol, {
          connectivity: Number(o.connectivity) as Connectivity,
          perClass: o.perClass,
        });
        if (count > o.maxComponents) throw new Error(`${file}: ${count} components, more than --max-components ${o.maxComponents}`);
        if (o.out) await plan.write("--out", (tmp) => writeNifti(tmp, labels));
        const stats = await componentStats(labels, { classes: vol, maxComponents: o.maxComponents });
        return { count, stats };
      });
      if (o.json) return void process.stdout.write(toJson({ file, count, components: stats }) + "\n");
      const perClass = new Map<number, { n: number; ml: number }>();
      for (const s of stats) {
        const e = perClass.get(s.class) ?? { n: 0, ml: 0 };
        e.n++;
        e.ml += s.volumeMl;
        perClass.set(s.class, e);
      }
      const name = (c: number) => BHSD_CLASSES[c] ?? `class${c}`;
      process.stdout.write(`${count} component(s) in ${file} (${o.connectivity}-connectivity${o.perClass ? ", per class" : ""})\n`);
      process.stdout.write(
        table(
          ["class", "components", "mL"],
          [...perClass.entries()].sort((a, b) => a[0] - b[0]).map(([c, e]) => [`${c} ${name(c)}`, e.n, fmt(e.ml, 2)]),
        ) + "\n",
      );
      if (o.stats) {
        process.stdout.write(
          table(
            ["label", "class", "voxels", "mL", "ABC/2 mL", "slices", "centroid (mm)"],
            stats.map((s) => [
              s.label,
              name(s.class),
              s.voxels,
              fmt(s.volumeMl, 3),
              fmt(s.abc2Ml, 3),
              s.slices,
              s.centroid.world.map((v) => v.toFixed(1)).join(", "),
            ]),
          ) + "\n",
        );
      }
    });
}
