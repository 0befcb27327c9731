import test from "ava";
import { spawnSync } from "node:child_process";
import { mkdirSync, mkdtempSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import {
  evaluateDataset,
  evaluateSlices,
  parseSliceCsv,
  readNpy,
  slicePresence,
  slicesToCsv,
  volumeFromArray,
  writeNifti,
  casesToCsv,
  summaryToCsv,
} from "../lib/index.js";
import { ROOT, sharedFixture } from "./helpers.js";

interface FixtureCase {
  gt: string;
  pred: string;
  spacing_zyx_mm: number[];
  per_class: Record<string, Record<string, number | string>>;
}
const fixtures = JSON.parse(readFileSync(sharedFixture("voxel", "expected.json"), "utf8")).metrics as FixtureCase[];
const num = (v: number | string) => (v === "nan" ? NaN : v === "inf" ? Infinity : (v as number));

/** A BHSD-like layout from the shared metric fixtures: label_192/ground truths + a predictions folder. */
async function layout(): Promise<{ root: string; gtRoot: string; predDir: string }> {
  const root = mkdtempSync(join(tmpdir(), "bhsd-ds-"));
  const gtDir = join(root, "label_192", "ground truths");
  const predDir = join(root, "preds");
  mkdirSync(gtDir, { recursive: true });
  mkdirSync(predDir);
  for (const [k, f] of fixtures.entries()) {
    const g = await readNpy(sharedFixture("voxel", f.gt));
    const p = await readNpy(sharedFixture("voxel", f.pred));
    await writeNifti(join(gtDir, `ID_${k}.nii.gz`), volumeFromArray(g.data, g.shape, f.spacing_zyx_mm));
    await writeNifti(join(predDir, `ID_${k}.nii.gz`), volumeFromArray(p.data, p.shape, f.spacing_zyx_mm));
  }
  const g = await readNpy(sharedFixture("voxel", fixtures[0]!.gt));
  await writeNifti(join(gtDir, "ID_missing.nii.gz"), volumeFromArray(g.data, g.shape, fixtures[0]!.spacing_zyx_mm));
  await writeNifti(join(predDir, "ID_extra.nii"), volumeFromArray(g.data, g.shape, fixtures[0]!.spacing_zyx_mm));
  return { root, gtRoot: join(root, "label_192"), predDir };
}

test.serial(
  "evaluateDataset scores the BHSD layout by file name, lists missing and extra cases, and aggregates as the spec says",
  async (t) => {
    const { gtRoot, predDir } = await layout();
    const seen: string[] = [];
    const r = await evaluateDataset({ gtDir: gtRoot, predDir, onProgress: (d, n, c) => seen.push(`${d}/${n} ${c}`) });
    t.deepEqual(r.missing, ["ID_missing"]);
    t.deepEqual(r.extra, ["ID_extra"]);
    t.deepEqual(seen, ["1/2 ID_0", "2/2 ID_1"]);
    t.is(r.cases.length, 2);
    // per case: the fixture's numbers
    for (const [k, f] of fixtures.entries()) {
      const m = r.cases.find((c) => c.case === `ID_${k}`)!.metrics;
      for (const [c, keys] of Object.entries(f.per_class)) {
        for (const [key, v] of Object.entries(keys)) {
          const a = m.perClass[c]![key as "dice"],
            e = num(v);
          t.true(Object.is(a, e) || Math.abs(a - e) < 1e-4, `ID_${k} class ${c} ${key}: ${a} vs ${e}`);
        }
      }
    }
    // summary: nanmean over cases of the fixture's values; an infinite case makes the mean inf
    for (const c of ["1", "2", "3", "4", "5"]) {
      for (const key of ["dice", "hd95", "nsd"]) {
        const vals = fixtures.map((f) => num(f.per_class[c]![key]!)).filter((x) => !Number.isNaN(x));
        const agg = r.summary.perClass[c]![key as "dice"];
        t.is(agg.n, vals.length, `${c} ${key} n`);
        t.is(agg.nInf, vals.filter((x) => !Number.isFinite(x)).length);
        const mean = vals.length ? vals.reduce((a, b) => a + b, 0) / vals.length : NaN;
        // within 1e-4 as per case: NIfTI-1 stores the spacing as float32
        t.true(Object.is(agg.mean, mean) || Math.abs(agg.mean - mean) < 1e-4, `${c} ${key}: ${agg.mean} vs ${mean}`);
      }
    }
    const classMeans = ["1", "2", "3", "4", "5"].map((c) => r.summary.perClass[c]!.dice.mean).filter((x) => !Number.isNaN(x));
    t.true(Math.abs(r.summary.foregroundMean.dice.mean - classMeans.reduce((a, b) => a + b) / classMeans.length) < 1e-12);
    // CSV: one row per case and class, nan and inf spelled as the spec says
    const csv = casesToCsv(r.cases).trim().split("\n");
    t.is(csv.length, 1 + 2 * 5);
    t.is(csv[0], "case,class,name,tp,fp,fn,dice,iou,precision,recall,volume_gt_ml,volume_pred_ml,hd,hd95,assd,nsd");
    t.true(csv.some((l) => l.includes(",inf,") && l.includes(",nan")));
    t.regex(summaryToCsv(r.summary), /^foreground,mean of class means,mean,/m);
    // missing as empty
    const r2 = await evaluateDataset({ gtDir: gtRoot, predDir, missingAsEmpty: true });
    t.is(r2.cases.length, 3);
    t.is(r2.cases.find((c) => c.case === "ID_missing")!.metrics.perClass["1"]!.recall, 0);
  },
);

test("evaluateDataset refuses folders that are not there, naming them", async (t) => {
  await t.throwsAsync(evaluateDataset({ gtDir: "/nonexistent/gt", predDir: "/tmp" }), {
    message: /gtDir \/nonexistent\/gt is not a folder/,
  });
  await t.throwsAsync(evaluateDataset({ gtDir: 3 as never, predDir: "/tmp" }), { message: /for options.gtDir/ });
});

test("slice-level labels: presence per slice, the RSNA CSV form, sensitivity and specificity", (t) => {
  // 2×2 in-plane, 4 slices: slice 0 empty, 1 has IPH, 2 has IPH and SDH, 3 has SAH
  const data = new Uint8Array(16);
  data[4] = 2;
  data[8] = 2;
  data[11] = 5;
  data[13] = 4;
  const s = slicePresence(volumeFromArray(data, [4, 2, 2]));
  t.deepEqual(s.any, [false, true, true, true]);
  t.deepEqual(s.present[2], [false, true, false, false, true]);
  const csv = slicesToCsv(s);
  t.is(csv.split("\n")[0], "slice,EDH,IPH,IVH,SAH,SDH,any");
  t.is(csv.split("\n")[3], "2,0,1,0,0,1,1");
  t.deepEqual(parseSliceCsv(csv), s);
  // a prediction that misses the SAH slice and calls slice 0 IPH
  const pred = parseSliceCsv("slice,EDH,IPH,IVH,SAH,SDH,any\n0,0,1,0,0,0,1\n1,0,1,0,0,0,1\n2,0,1,0,0,1,1\n3,0,0,0,0,0,0\n");
  const e = evaluateSlices(s, pred);
  t.deepEqual(e.perClass["2"], { tp: 2, fp: 1, fn: 0, tn: 1, sensitivity: 1, specificity: 0.5 });
  t.like(e.perClass["4"], { tp: 0, fn: 1, sensitivity: 0, specificity: 1 });
  t.like(e.any, { tp: 2, fp: 1, fn: 1, tn: 0 });
  t.true(Number.isNaN(e.perClass["1"]!.sensitivity));
  t.throws(() => parseSliceCsv("slice,EDH,any\n0,2,1\n"), { message: /"2" is not 0 or 1/ });
  t.throws(() => parseSliceCsv("slice,EDH,any\n0,1,0\n"), { message: /any = 0 disagrees/ });
  t.throws(() => parseSliceCsv("slice,XYZ\n0,1\n"), { message: /unknown class column "XYZ"/ });
  t.throws(() => parseSliceCsv("slice,EDH\n1,1\n"), { message: /slice 0 is missing/ });
});

const bhsd = (...args: string[]) =>
  spawnSync(process.execPath, [join(ROOT, "dist", "cli", "main.js"), ...args], { encoding: "utf8", timeout: 60_000 });

test.serial("bhsd evaluate: files and folders, --json, --csv, and one-line errors", async (t) => {
  const { root, gtRoot, predDir } = await layout();
  const one = bhsd("evaluate", "--gt", join(gtRoot, "ground truths", "ID_0.nii.gz"), "--pred", join(predDir, "ID_0.nii.gz"), "--json");
  t.is(one.status, 0, one.stderr);
  const m = JSON.parse(one.stdout);
  t.is(m.perClass["2"].hd, "inf");
  t.is(m.perClass["3"].dice, "nan");
  t.true(Math.abs(m.perClass["1"].dice - (fixtures[0]!.per_class["1"]!.dice as number)) < 1e-9);
  const text = bhsd("evaluate", "--gt", join(gtRoot, "ground truths", "ID_0.nii.gz"), "--pred", join(predDir, "ID_0.nii.gz"));
  t.regex(text.stdout, /1 EDH +0\.830/);
  const csv = join(root, "rows.csv");
  const ds = bhsd("evaluate", "--gt", gtRoot, "--pred", predDir, "--csv", csv);
  t.is(ds.status, 0, ds.stderr);
  t.regex(ds.stdout, /2 cases scored/);
  t.regex(ds.stderr, /1 case\(s\) without a prediction \(left out\): ID_missing/);
  t.regex(ds.stderr, /1 prediction\(s\) without ground truth \(ignored\): ID_extra/);
  t.is(readFileSync(csv, "utf8").trim().split("\n").length, 11);
  const dsj = JSON.parse(bhsd("evaluate", "--gt", gtRoot, "--pred", predDir, "--json").stdout);
  t.deepEqual(dsj.missing, ["ID_missing"]);
  const bad = bhsd("evaluate", "--gt", gtRoot, "--pred", join(predDir, "ID_0.nii.gz"));
  t.is(bad.status, 1);
  t.is(bad.stderr.trim(), "bhsd: --gt and --pred must both be files or both be folders");
  const badOpt = bhsd("evaluate", "--gt", gtRoot, "--pred", predDir, "--classes", "1,x");
  t.not(badOpt.status, 0);
  t.regex(badOpt.stderr, /--classes must be a comma-separated list/);
});

test.serial("bhsd components: counts, per-bleed stats, cleanup", async (t) => {
  const dir = mkdtempSync(join(tmpdir(), "bhsd-cc-"));
  const m = await readNpy(sharedFixture("voxel", "ccl_multiclass_mask.npy"));
  const f = join(dir, "labels.nii.gz");
  await writeNifti(f, volumeFromArray(m.data, m.shape, [5, 0.5, 0.5]));
  const expected = JSON.parse(readFileSync(sharedFixture("voxel", "expected.json"), "utf8")).ccl.multiclass;
  const r = bhsd("components", f, "--json");
  t.is(r.status, 0, r.stderr);
  const o = JSON.parse(r.stdout);
  t.is(o.count, expected.components26);
  t.is(o.components.length, expected.components26);
  const k = bhsd("components", f, "--keep-largest", "1", "--cleaned", join(dir, "clean.nii.gz"), "--stats");
  t.is(k.status, 0, k.stderr);
  t.regex(k.stdout, /^5 component\(s\)/);
  const bad = bhsd("components", f, "--connectivity", "8");
  t.not(bad.status, 0);
  t.regex(bad.stderr, /--connectivity <n>' argument '8' is invalid\. Allowed choices are 6, 18, 26/);
});

test("the BHSD layout reader pairs images with ground truths by case name and names what is missing", async (t) => {
  const { layoutFolders, readLabelledCases, readSliceLabelledCases } = await import("../lib/metrics/dataset.js");
  const { writeNifti, volumeFromArray } = await import("../lib/index.js");
  const { writeFileSync } = await import("node:fs");
  const root = mkdtempSync(join(tmpdir(), "bhsd-layout-"));
  const f = layoutFolders(root);
  t.deepEqual(f, { images: join(root, "images"), truths: join(root, "ground truths"), slices: join(root, "slice labels") });
  for (const d of Object.values(f)) mkdirSync(d);
  const vol = (v: number) => volumeFromArray(new Int16Array(2 * 3 * 4).fill(v), [4, 3, 2]);
  // case b's image is .nii and its truth .nii.gz: one case all the same; files sorted by case name
  await writeNifti(join(f.images, "b.nii"), vol(2));
  await writeNifti(join(f.images, "a.nii.gz"), vol(1));
  await writeNifti(join(f.truths, "a.nii.gz"), vol(0));
  await writeNifti(join(f.truths, "b.nii.gz"), vol(3));
  const cases = await readLabelledCases(root);
  t.deepEqual(
    cases.map((c) => [c.name, c.ct.data[0], c.labels.data[0]]),
    [
      ["a", 1, 0],
      ["b", 2, 3],
    ],
  );
  // slice labels: one row per slice (z), classes by name
  writeFileSync(join(f.slices, "a.csv"), "slice,EDH,IPH,IVH,SAH,SDH,any\n0,0,1,0,0,0,1\n1,0,0,0,0,0,0\n2,0,0,0,0,0,0\n3,1,0,0,0,0,1\n");
  writeFileSync(join(f.slices, "b.csv"), "slice,EDH,IPH,IVH,SAH,SDH,any\n0,0,0,0,0,0,0\n");
  await t.throwsAsync(readSliceLabelledCases(root), { message: /b\.csv has 1 slices but b\.nii has 4/ });
  writeFileSync(join(f.slices, "b.csv"), "slice,EDH,IPH,IVH,SAH,SDH,any\n" + [0, 1, 2, 3].map((z) => `${z},0,0,0,0,1,1`).join("\n") + "\n");
  const sl = await readSliceLabelledCases(root);
  t.deepEqual(sl[0]!.slices.present[0], [false, true, false, false, false]);
  t.deepEqual(sl[0]!.slices.present[3], [true, false, false, false, false]);
  t.deepEqual(
    sl[1]!.slices.present.map((r) => r[4]),
    [true, true, true, true],
  );
  // a slice CSV that is a FIFO is refused, not waited on; a missing one is named
  const { execFileSync } = await import("node:child_process");
  const { rmSync } = await import("node:fs");
  rmSync(join(f.slices, "b.csv"));
  execFileSync("mkfifo", [join(f.slices, "b.csv")]);
  await t.throwsAsync(readSliceLabelledCases(root), { message: /b\.csv: not a regular file/ });
  rmSync(join(f.slices, "b.csv"));
  await t.throwsAsync(readSliceLabelledCases(root), { message: /b\.csv: no such file/ });
  // an image without its truth is named, not skipped
  await writeNifti(join(f.images, "c.nii.gz"), vol(4));
  await t.throwsAsync(readLabelledCases(root), { message: /case c has an image .*c\.nii\.gz.* but no ground truth in .*ground truths/ });
});

test("slice label CSVs are read strictly: slice numbers in digits, no background or doubled class column, any row count", (t) => {
  t.throws(() => parseSliceCsv("slice,EDH\n,1\n"), { message: /line 2: slice "" is not a slice index/ });
  t.throws(() => parseSliceCsv("slice,EDH\n0x0,1\n"), { message: /slice "0x0" is not a slice index/ });
  t.throws(() => parseSliceCsv("slice,class0\n0,1\n"), { message: /unknown class column "class0"/ });
  t.throws(() => parseSliceCsv("slice,EDH,class1\n0,1,0\n"), { message: /class 1 has two columns \("EDH" and "class1"\)/ });
  // 200 000 rows: before, Math.max(...rows) overflowed the stack
  const rows = ["slice,EDH"];
  for (let z = 0; z < 200_000; z++) rows.push(`${z},${z % 2}`);
  t.is(parseSliceCsv(rows.join("\n")).present.length, 200_000);
});

test("CSV text fields: a case name a spreadsheet would run as a formula is defused, a carriage return quoted", async (t) => {
  const { csvText } = await import("../lib/metrics/csv.js");
  t.is(csvText("=HYPERLINK(1)"), "'=HYPERLINK(1)");
  t.is(csvText("@SUM(9)"), "'@SUM(9)");
  t.is(csvText("-3+4"), "'-3+4");
  t.is(csvText("ok\rINJ"), '"ok\rINJ"');
  t.is(csvText('a,"b"'), '"a,""b"""');
  // numbers and the metrics' words pass as they are
  for (const v of ["-0.5", "-inf", "nan", "ID_0", "+1e3"]) t.is(csvText(v), v);
  // Python's csv reads the rows back as written (the case name one field, one row a case)
  const m = (await evaluateDataset({ gtDir: (await layout()).gtRoot, predDir: (await layout()).predDir })).cases[0]!.metrics;
  const text = casesToCsv([
    { case: "ok\rINJ,1", metrics: m },
    { case: "=2+5", metrics: m },
  ]);
  const r = spawnSync(
    "python3",
    [
      "-c",
      "import csv,sys; rows=list(csv.reader(sys.stdin, strict=True)); print(len(rows)); print(rows[1][0] == 'ok\\rINJ,1'); print(rows[-1][0])",
    ],
    {
      input: text,
      encoding: "utf8",
    },
  );
  t.is(r.status, 0, r.stderr);
  t.deepEqual(r.stdout.trim().split("\n"), [String(1 + 2 * m.classes.length), "True", "'=2+5"]);
});

test.serial("the command line never prints a file name's control characters; evaluate checks --classes once", async (t) => {
  const { root, gtRoot, predDir } = await layout();
  // a prediction whose file name sets the terminal's title and clears the screen
  const evil = "\u001b]0;owned\u0007\u001b[2J\u001b[31mFAKE\u009b\rok";
  const { copyFileSync } = await import("node:fs");
  copyFileSync(join(predDir, "ID_0.nii.gz"), join(predDir, `${evil}.nii.gz`));
  const r = bhsd("evaluate", "--gt", gtRoot, "--pred", predDir, "--quiet");
  t.is(r.status, 0, r.stderr);
  t.false(
    [..."\u001b\u0007\u009b\r"].some((c) => (r.stderr + r.stdout).includes(c)),
    JSON.stringify(r.stderr),
  );
  t.true(r.stderr.includes("\\u001b]0;owned\\u0007\\u001b[2J\\u001b[31mFAKE\\u009b\\u000dok"), r.stderr);
  // JSON stays JSON, and means the same
  const j = bhsd("evaluate", "--gt", gtRoot, "--pred", predDir, "--json");
  t.true((JSON.parse(j.stdout) as { extra: string[] }).extra.includes(evil));
  const twice = bhsd("evaluate", "--gt", gtRoot, "--pred", predDir, "--classes", "1,1", "--json");
  t.is(twice.status, 1);
  t.regex(twice.stderr, /^bhsd: Expected a non-empty array of distinct integers 1\.\.255 for options\.classes/);
  t.is(twice.stdout, "");
  void root;
});
