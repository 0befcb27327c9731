/**
 * --html on the command line: bhsd demo, evaluate and segment write a self-contained report whose
 * numbers are those the same command prints with --json, and the output checks apply to it.
 */
import test from "ava";
import { spawn } from "node:child_process";
import { mkdtempSync, readFileSync, existsSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { decode } from "fast-png";
import { ROOT } from "./helpers.js";

// the built command line (npm test compiles it first); BHSD_TEST_CLI runs another build
const CLI = process.env.BHSD_TEST_CLI ?? join(ROOT, "dist", "cli", "main.js");

function bhsd(...args: string[]): Promise<{ status: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [CLI, ...args], { timeout: 110_000, stdio: ["ignore", "pipe", "pipe"] });
    let stdout = "",
      stderr = "";
    child.stdout.setEncoding("utf8").on("data", (d: string) => (stdout += d));
    child.stderr.setEncoding("utf8").on("data", (d: string) => (stderr += d));
    child.on("close", (status) => resolve({ status, stdout, stderr }));
  });
}

const cell = (html: string, attr: string, key: string) =>
  html.match(new RegExp(`<tr ${attr}>.*?<td data-key="${key}"[^>]*>([^<]*)</td>`))?.[1];
const fixed = (x: number | string, d: number) =>
  x === "nan" || (typeof x === "number" && Number.isNaN(x)) ? "nan" : x === "inf" || x === Infinity ? "inf" : (x as number).toFixed(d);

function imagesDecode(t: import("ava").ExecutionContext, html: string, n: number) {
  const srcs = [...html.matchAll(/<img\b[^>]*\bsrc="([^"]*)"/g)].map((m) => m[1]!);
  t.is(srcs.length, n);
  for (const s of srcs) {
    t.true(s.startsWith("data:image/png;base64,"), s.slice(0, 40));
    t.true(decode(Buffer.from(s.slice(s.indexOf(",") + 1), "base64")).width > 100);
  }
  t.notRegex(html, /https?:\/\//);
}

const dir = mkdtempSync(join(tmpdir(), "bhsd-report-cli-"));
const out = join(dir, "case");

test.serial("demo --html, then evaluate --html on the files it wrote: the numbers --json prints", async (t) => {
  t.timeout(240_000); // three runs of the model-free commands and one demo, on a shared machine
  // seed 3000032: the bundled model invents 2.2 mL of IPH there, even after its post-processing
  const demo = await bhsd("demo", "--seed", "3000032", "--json", "--out", out, "--html", join(dir, "demo.html"));
  t.is(demo.status, 0, demo.stderr);
  const o = JSON.parse(demo.stdout);
  const html = readFileSync(join(dir, "demo.html"), "utf8");
  imagesDecode(t, html, 2);
  t.is(o.headline, "meanDice");
  t.regex(html, new RegExp(`<b data-key="meanDice">${fixed(o.meanDice, 3)}</b>`));
  t.regex(html, new RegExp(`<span data-key="meanDiceTruth">${fixed(o.meanDicePresent, 3)}</span>`));
  for (const c of ["1", "2", "3", "4", "5"]) {
    t.is(cell(html, `data-class="${c}"`, "dice"), fixed(o.metrics.perClass[c].dice, 3), `class ${c}`);
  }
  for (const c of o.falsePositiveClasses as number[])
    t.is(cell(html, `data-class="${c}"`, "status"), "false positive: predicted, not in the truth");
  t.true(o.falsePositiveClasses.length > 0, "this seed has an invented class (the point of the headline)");
  t.is([...html.matchAll(/<tr data-bleed=/g)].length, o.report.components.length);

  // evaluate on the demo's files: the same table as evaluate --json
  const gt = join(out, "truth.nii.gz"),
    pred = join(out, "prediction.nii.gz"),
    ct = join(out, "ct.nii.gz");
  const ev = await bhsd("evaluate", "--gt", gt, "--pred", pred, "--ct", ct, "--html", join(dir, "eval.html"));
  t.is(ev.status, 0, ev.stderr);
  const evJson = JSON.parse((await bhsd("evaluate", "--gt", gt, "--pred", pred, "--json")).stdout);
  const eh = readFileSync(join(dir, "eval.html"), "utf8");
  imagesDecode(t, eh, 2);
  const metricRows = eh.slice(eh.indexOf("Against the ground truth"));
  for (const c of ["1", "2", "3", "4", "5"]) {
    t.is(cell(metricRows, `data-class="${c}"`, "dice"), fixed(evJson.perClass[c].dice, 3));
    t.is(cell(metricRows, `data-class="${c}"`, "hd95"), fixed(evJson.perClass[c].hd95, 2));
    t.is(cell(metricRows, `data-class="${c}"`, "volume_pred_ml"), fixed(evJson.perClass[c].volume_pred_ml, 2));
  }
  // one case only; and an output that is an input is refused before any work
  const folders = await bhsd("evaluate", "--gt", out, "--pred", out, "--html", join(dir, "x.html"));
  t.is(folders.status, 1);
  t.regex(folders.stderr, /--html needs one case/);
  t.false(existsSync(join(dir, "x.html")));
  const clobber = await bhsd("evaluate", "--gt", gt, "--pred", pred, "--html", gt);
  t.not(clobber.status, 0);
  t.regex(clobber.stderr, /--html .* is an input/);
});

test.serial("segment --html: the bleeds and volumes of its own JSON report", async (t) => {
  t.timeout(240_000);
  const ct = join(out, "ct.nii.gz");
  if (!existsSync(ct)) return t.fail("the demo test before this one did not write its CT");
  const seg = await bhsd("segment", ct, "--model", join(ROOT, "models", "demo.onnx"), "--json", "--quiet", "--html", join(dir, "seg.html"));
  t.is(seg.status, 0, seg.stderr);
  const r = JSON.parse(seg.stdout);
  const sh = readFileSync(join(dir, "seg.html"), "utf8");
  imagesDecode(t, sh, 1);
  t.false(sh.includes("Against the ground truth"));
  t.is([...sh.matchAll(/<tr data-bleed=/g)].length, r.components.length);
  for (const [k, v] of Object.entries(r.perClass as Record<string, { volumeMl: number }>))
    t.is(cell(sh, `data-class="${k}"`, "volumeMl"), v.volumeMl.toFixed(2));
});
