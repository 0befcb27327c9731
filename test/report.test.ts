/**
 * The HTML report: self-contained (every image a data: URI that fast-png decodes to the size the
 * tag states, no other reference), its numbers those of the evaluate() result it was made from and
 * of overlaps counted by hand, false-positive classes said to be so, and text escaped.
 */
import test from "ava";
import { decode } from "fast-png";
import { evaluate, toJson } from "../lib/index.js";
import { renderReport, renderReportData } from "../lib/render/report.js";
import type { Volume } from "../lib/types.js";

const NX = 32,
  NY = 24,
  NZ = 4;
const at = (x: number, y: number, z: number) => (z * NY + y) * NX + x;
// 2 × 2 × 5 mm voxels: 20 mm³ = 0.02 mL each
const geo = {
  dims: [NX, NY, NZ] as [number, number, number],
  spacing: [2, 2, 5] as [number, number, number],
  affine: [2, 0, 0, -32, 0, 2, 0, -24, 0, 0, 5, 0, 0, 0, 0, 1],
};

function cases() {
  const ct: Volume = { data: new Int16Array(NX * NY * NZ).fill(30), ...geo };
  const truth = new Uint8Array(NX * NY * NZ),
    pred = new Uint8Array(NX * NY * NZ);
  for (let y = 6; y <= 11; y++) for (let x = 4; x <= 9; x++) truth[at(x, y, 2)] = 2; // IPH 36 voxels
  for (let x = 0; x < 3; x++) truth[at(x, 20, 1)] = 1; // EDH 3 voxels, missed
  for (let y = 6; y <= 11; y++) for (let x = 6; x <= 11; x++) pred[at(x, y, 2)] = 2; // IPH 36 voxels, 24 shared
  for (let y = 2; y <= 4; y++) for (let x = 20; x <= 23; x++) pred[at(x, y, 3)] = 5; // SDH 12 voxels, invented
  return { ct, truth: { data: truth, ...geo } as Volume, pred: { data: pred, ...geo } as Volume };
}

/** Every reference the page makes: src, href, url(), and script src. */
function references(html: string): string[] {
  const out: string[] = [];
  for (const m of html.matchAll(/\b(?:src|href|srcset|poster|data)\s*=\s*"([^"]*)"/gi)) out.push(m[1]!);
  for (const m of html.matchAll(/url\(([^)]*)\)/gi)) out.push(m[1]!);
  for (const m of html.matchAll(/@import/gi)) out.push(m[0]);
  return out;
}

/** The cells of a table row: data-key → text. */
function rowCells(html: string, attr: string): Record<string, string> {
  const row = html.match(new RegExp(`<tr ${attr}>(.*?)</tr>`))?.[1];
  if (!row) throw new Error(`no row ${attr}`);
  return Object.fromEntries([...row.matchAll(/<td data-key="([^"]+)"[^>]*>([^<]*)<\/td>/g)].map((m) => [m[1]!, m[2]!]));
}

const num = (s: string) => (s === "inf" ? Infinity : s === "nan" ? NaN : Number(s));

test("with ground truth: self-contained, the numbers of evaluate(), false positives named", async (t) => {
  const { ct, truth, pred } = cases();
  const metrics = await evaluate(truth, pred);
  const { html, data } = await renderReportData({
    ct,
    labels: pred,
    truth,
    metrics,
    caseName: "synthetic <case> & co",
    notes: { seed: 7 },
  });

  // no reference leaves the file; each image decodes to the size its tag says
  const refs = references(html);
  const imgs = [...html.matchAll(/<img\b[^>]*>/g)].map((m) => m[0]);
  t.is(imgs.length, 2, "truth and prediction");
  t.is(refs.length, imgs.length, `every reference is an image's: ${refs.map((r) => r.slice(0, 40)).join(" | ")}`);
  for (const img of imgs) {
    const src = img.match(/src="data:image\/png;base64,([A-Za-z0-9+/=]+)"/)?.[1];
    t.truthy(src, img.slice(0, 80));
    const d = decode(Buffer.from(src!, "base64"));
    t.is(String(d.width), img.match(/width="(\d+)"/)![1]);
    t.is(String(d.height), img.match(/height="(\d+)"/)![1]);
  }
  t.notRegex(html, /https?:\/\//);
  t.notRegex(html, /<link\b|<script\b[^>]*\bsrc=/);

  // the metrics table: each class's numbers are evaluate()'s at the shown precision
  const metricRows = html.slice(html.indexOf("Against the ground truth"));
  for (const c of metrics.classes) {
    const m = metrics.perClass[String(c)]!;
    const cells = rowCells(metricRows, `data-class="${c}"`);
    const near = (s: string, v: number, d: number) =>
      Number.isFinite(v) ? Math.abs(num(s) - v) <= 0.5 * 10 ** -d + 1e-12 : Object.is(num(s), v) || (Number.isNaN(v) && s === "nan");
    t.true(near(cells.dice!, m.dice, 3), `class ${c} dice ${cells.dice} vs ${m.dice}`);
    t.true(near(cells.hd95!, m.hd95, 2), `class ${c} hd95 ${cells.hd95} vs ${m.hd95}`);
    t.true(near(cells.volume_gt_ml!, m.volume_gt_ml, 2));
    t.true(near(cells.volume_pred_ml!, m.volume_pred_ml, 2));
    t.true(near(cells.volume_error_ml!, m.volume_pred_ml - m.volume_gt_ml, 2));
  }
  // and those are the overlaps counted by hand: IPH 2·24/(36 + 36); EDH missed; SDH invented
  const iph = rowCells(metricRows, 'data-class="2"');
  t.is(iph.dice, (48 / 72).toFixed(3));
  t.is(iph.volume_gt_ml, "0.72");
  t.is(iph.status, "in truth and prediction");
  const sdh = rowCells(metricRows, 'data-class="5"');
  t.is(sdh.status, "false positive: predicted, not in the truth");
  t.is(sdh.dice, "0.000");
  t.is(sdh.volume_pred_ml, "0.24");
  t.is(sdh.volume_error_ml, "0.24");
  t.is(rowCells(metricRows, 'data-class="1"').status, "missed: in the truth, not predicted");
  t.is(rowCells(metricRows, 'data-class="3"').status, "in neither");
  // the headline: IPH, EDH, SDH counted: (2/3 + 0 + 0) / 3
  t.regex(html, new RegExp(`<b data-key="meanDice">${(2 / 3 / 3).toFixed(3)}</b> over EDH, IPH, SDH`));
  t.regex(html, new RegExp(`<span data-key="meanDiceTruth">${(2 / 3 / 2).toFixed(3)}</span> over EDH, IPH`));
  t.regex(html, /<span data-key="falsePositiveClasses">SDH<\/span>/);

  // the predicted bleeds, measured: IPH 6 × 6 voxels (12 × 12 mm) on one 5 mm slice: 0.72 mL, and
  // ABC/2 with A = B = the square's diagonal 12√2 mm, C = 5 mm: 288 · 5 / 2000 = 0.72 mL
  const bleeds = html.slice(html.indexOf("Predicted bleeds"), html.indexOf("Against the ground truth"));
  const b2 = rowCells(bleeds, 'data-bleed="1" data-class="2"');
  t.is(b2.volumeMl, "0.72");
  t.is(b2.abc2Ml, "0.72");
  t.is(b2.zRange, "2–2");
  // centroid x: voxel 8.5 → 2·8.5 − 32 = −15 mm; y: voxel 8.5 → −7 mm; z: 2 → 10 mm
  t.is(b2.world, "-15.0, -7.0, 10.0");

  // per-class predicted volumes
  t.is(rowCells(html, 'data-class="5"').volumeMl, "0.24");

  // the embedded numbers are evaluate()'s, exactly
  const json = JSON.parse(html.match(/<script type="application\/json" id="bhsd-report">(.*?)<\/script>/s)![1]!);
  t.deepEqual(json.metrics, JSON.parse(toJson(metrics)));
  t.deepEqual(json.case.notes, { seed: 7 });
  t.is(data.headline!.meanDice, 2 / 3 / 3);

  // text is escaped
  t.true(html.includes("synthetic &lt;case&gt; &amp; co"));
  t.false(html.includes("<case>"));
});

test("without ground truth: the prediction's picture and bleeds only; bad input refused by name", async (t) => {
  const { ct, pred } = cases();
  const html = await renderReport({ ct, labels: pred, caseName: "p" });
  t.false(html.includes("Against the ground truth"));
  const imgs = [...html.matchAll(/<img\b[^>]*src="data:image\/png;base64,([^"]+)"/g)];
  t.is(imgs.length, 1);
  t.true(decode(Buffer.from(imgs[0]![1]!, "base64")).width > 0);
  t.regex(html, /Predicted bleeds \(2\)/);
  await t.throwsAsync(renderReport({ ct, labels: { ...pred, data: new Uint8Array(3) } }), { message: /input\.labels\.data has 3 voxels/ });
  await t.throwsAsync(renderReport({ ct, labels: pred, metrics: await evaluate(pred, pred) }), { message: /input\.truth/ });
  await t.throwsAsync(renderReport({ ct, labels: pred, caseName: 5 as unknown as string }), { message: /input\.caseName/ });
});

test("a caller's metrics whose class names carry markup are escaped in the report, not run", async (t) => {
  const { ct, truth, pred } = cases();
  const m = await evaluate(truth, pred);
  const evil = '1"><script>alert(1)</script><b x="';
  const metrics = {
    ...m,
    classes: [evil, ...m.classes.slice(1)],
    perClass: { ...m.perClass, [evil]: m.perClass["1"] },
  } as unknown as typeof m;
  const html = await renderReport({ ct, labels: pred, truth, metrics });
  t.false(html.includes("<script>alert(1)"));
  t.true(html.includes('data-class="1&quot;&gt;&lt;script&gt;'));
});
