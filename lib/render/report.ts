/**
 * renderReport(...) → one self-contained HTML file: the case, the model, per-class volumes, each
 * bleed (class, mL, ABC/2, where, which slices), timings and the overlay pictures inlined as
 * data: URIs; with ground truth, truth and prediction side by side and per-class Dice, HD95 and
 * volume error, classes predicted but not in the truth marked as false positives. It states only
 * numbers it was given or measured here; the same numbers are embedded as JSON
 * (`<script type="application/json" id="bhsd-report">`) for tools.
 */
import { invalidParameterError, optionsObject } from "../is.js";
import { toJson } from "../json.js";
import { BHSD_CLASSES, evaluate, type CaseMetrics } from "../metrics/evaluate.js";
import { diceHeadline, type DiceHeadline } from "../metrics/headline.js";
import type { SegmentReport } from "../model/segment.js";
import { componentStats, connectedComponents, type Component } from "../ops/components.js";
import type { Volume } from "../types.js";
import { VERSION } from "../version.js";
import { assertVolume } from "../volume.js";
import { classColorHex, renderOverlayImage, type OverlayOptions } from "./overlay.js";

export interface ReportInput {
  /** The head CT (HU). */
  ct: Volume;
  /** The predicted labels, on the CT's grid. */
  labels: Volume;
  /** What the case is called (a file name, "phantom seed 101" …). */
  caseName?: string;
  title?: string;
  /** segment()'s report: model, backend, per-class volumes, bleeds, timings. Without it they are measured here from the labels. */
  report?: SegmentReport;
  /** Ground truth on the CT's grid: adds the comparison. */
  truth?: Volume;
  /** evaluate(truth, labels)'s result; computed here when truth is given without it. */
  metrics?: CaseMetrics;
  /** Extra rows for the case table (label → value), e.g. the phantom's seed or the command. */
  notes?: Record<string, string | number>;
  /** Class names (default the report's, else BHSD's). */
  classes?: Record<number, string>;
  /** Passed to renderOverlay (e.g. { subdural: true }). */
  overlay?: OverlayOptions;
}

const esc = (s: unknown) =>
  String(s).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]!);

/** Numbers as the tables show them: NaN "nan", ±Infinity "inf"/"-inf", else `digits` decimals. */
export function reportNumber(x: number, digits: number): string {
  if (Number.isNaN(x)) return "nan";
  if (!Number.isFinite(x)) return x > 0 ? "inf" : "-inf";
  return x.toFixed(digits);
}

const dataUri = (png: Uint8Array) => `data:image/png;base64,${Buffer.from(png.buffer, png.byteOffset, png.byteLength).toString("base64")}`;

function table(head: string[], rows: string[][], attrs: string[] = []): string {
  return (
    `<table><thead><tr>${head.map((h) => `<th>${esc(h)}</th>`).join("")}</tr></thead><tbody>` +
    rows.map((r, i) => `<tr${attrs[i] ? " " + attrs[i] : ""}>${r.join("")}</tr>`).join("") +
    "</tbody></table>"
  );
}

const td = (v: string, key?: string, cls?: string) =>
  `<td${key ? ` data-key="${esc(key)}"` : ""}${cls ? ` class="${esc(cls)}"` : ""}>${esc(v)}</td>`;

/** Class status against the truth: what the table says in words. */
export function classStatus(m: CaseMetrics, c: number): "true positive" | "false positive" | "missed" | "absent" {
  const r = m.perClass[String(c)]!;
  const t = r.tp + r.fn > 0,
    p = r.tp + r.fp > 0;
  return t && p ? "true positive" : p ? "false positive" : t ? "missed" : "absent";
}

const STATUS_TEXT = {
  "true positive": "in truth and prediction",
  "false positive": "false positive: predicted, not in the truth",
  missed: "missed: in the truth, not predicted",
  absent: "in neither",
} as const;

async function measureBleeds(labels: Volume): Promise<Component[]> {
  const lab = labels.data instanceof Uint8Array ? labels.data : Uint8Array.from(labels.data as ArrayLike<number>);
  if (!lab.some((v) => v > 0)) return [];
  const lv: Volume = { data: lab, dims: labels.dims, spacing: labels.spacing, affine: labels.affine };
  const cc = await connectedComponents(lv, { connectivity: 26, perClass: true });
  return componentStats(cc.labels, { classes: lab });
}

function perClassVolumes(
  labels: Volume,
  names: Record<number, string>,
): Record<string, { name: string; voxels: number; volumeMl: number }> {
  const counts = new Map<number, number>();
  const d = labels.data as ArrayLike<number>;
  for (let i = 0; i < d.length; i++) if (d[i]) counts.set(d[i]!, (counts.get(d[i]!) ?? 0) + 1);
  const voxelMl = (labels.spacing[0] * labels.spacing[1] * labels.spacing[2]) / 1000;
  const out: Record<string, { name: string; voxels: number; volumeMl: number }> = {};
  const keys = new Set([...Object.keys(names).map(Number), ...counts.keys()]);
  for (const k of [...keys].sort((a, b) => a - b)) {
    if (!(k > 0)) continue;
    const n = counts.get(k) ?? 0;
    out[String(k)] = { name: names[k] ?? `class ${k}`, voxels: n, volumeMl: n * voxelMl };
  }
  return out;
}

/** The numbers a report shows, as embedded in it. */
export interface ReportData {
  bhsd: string;
  case: { name: string; dims: number[]; spacing: number[]; notes: Record<string, string | number> };
  model: { name: string; backend: string; windows: number; forwards: number } | null;
  perClass: Record<string, { name: string; voxels: number; volumeMl: number }>;
  bleeds: Component[];
  timings: Record<string, number> | null;
  metrics: CaseMetrics | null;
  headline: DiceHeadline | null;
}

/** The HTML report (a string, UTF-8) and the numbers in it. */
export async function renderReportData(input: ReportInput): Promise<{ html: string; data: ReportData }> {
  const o = optionsObject("input", input) as unknown as ReportInput;
  assertVolume("input.ct", o.ct);
  assertVolume("input.labels", o.labels);
  if (o.truth !== undefined) assertVolume("input.truth", o.truth);
  if (o.metrics !== undefined && o.truth === undefined)
    throw invalidParameterError("input.truth", "the ground truth the metrics were computed on (needed for the pictures)", o.truth);
  if (o.caseName !== undefined && typeof o.caseName !== "string") throw invalidParameterError("input.caseName", "a string", o.caseName);
  if (o.title !== undefined && typeof o.title !== "string") throw invalidParameterError("input.title", "a string", o.title);
  if (o.notes !== undefined && (typeof o.notes !== "object" || o.notes === null))
    throw invalidParameterError("input.notes", "an object of label → value", o.notes);
  const r = o.report;
  const names: Record<number, string> =
    o.classes ?? (r ? Object.fromEntries(Object.entries(r.classes).map(([k, v]) => [Number(k), v])) : { ...BHSD_CLASSES });
  const name = (c: number) => names[c] ?? `class ${c}`;
  const perClass = r?.perClass ?? perClassVolumes(o.labels, names);
  const bleeds = r?.components ?? (await measureBleeds(o.labels));
  const metrics = o.truth ? (o.metrics ?? (await evaluate(o.truth, o.labels))) : null;
  const headline = metrics ? diceHeadline(metrics) : null;
  const caseName = o.caseName ?? "case";
  const notes = o.notes ?? {};

  const data: ReportData = {
    bhsd: VERSION,
    case: { name: caseName, dims: [...o.ct.dims], spacing: [...o.ct.spacing], notes },
    model: r ? { name: r.model, backend: r.backend, windows: r.windows, forwards: r.forwards } : null,
    perClass,
    bleeds,
    timings: r?.timings ?? null,
    metrics,
    headline,
  };

  const parts: string[] = [];
  const title = o.title ?? `bhsd report: ${caseName}`;
  parts.push(`<h1>${esc(title)}</h1>`);

  // the case and the model
  const caseRows: [string, string][] = [
    ["case", caseName],
    ["grid", `${o.ct.dims.join(" × ")} voxels at ${o.ct.spacing.map((s) => reportNumber(s, 3)).join(" × ")} mm`],
    ...Object.entries(notes).map(([k, v]) => [k, String(v)] as [string, string]),
  ];
  if (r) caseRows.push(["model", r.model], ["backend", r.backend], ["sliding windows", `${r.windows} (${r.forwards} forward passes)`]);
  else caseRows.push(["model", "not given (labels read from a file)"]);
  parts.push(
    `<h2>Case</h2>` +
      table(
        ["", ""],
        caseRows.map(([k, v]) => [`<th scope="row">${esc(k)}</th>`, td(v)]),
      ),
  );

  // per-class volumes
  const swatch = (c: number) => `<span class="sw" style="background:${classColorHex(c)}"></span>`;
  const pcKeys = Object.keys(perClass).sort((a, b) => Number(a) - Number(b));
  parts.push(
    `<h2>Predicted volume per class</h2>` +
      table(
        ["class", "voxels", "mL"],
        pcKeys.map((k) => [
          `<td>${swatch(Number(k))}${esc(`${k} ${perClass[k]!.name}`)}</td>`,
          td(String(perClass[k]!.voxels), "voxels"),
          td(reportNumber(perClass[k]!.volumeMl, 2), "volumeMl"),
        ]),
        pcKeys.map((k) => `data-class="${esc(k)}"`),
      ),
  );

  // each bleed
  const world = (c: Component) => c.centroid.world.map((v) => reportNumber(v, 1)).join(", ");
  parts.push(
    `<h2>Predicted bleeds (${bleeds.length})</h2>` +
      (bleeds.length
        ? table(
            [
              "#",
              "class",
              "mL",
              "ABC/2 mL",
              "centroid x, y, z (mm, scanner RAS)",
              "centroid voxel i, j, k",
              "slices",
              "z range",
              "largest slice z",
            ],
            bleeds.map((b) => [
              td(String(b.label), "label"),
              `<td>${swatch(b.class)}${esc(name(b.class))}</td>`,
              td(reportNumber(b.volumeMl, 2), "volumeMl"),
              td(reportNumber(b.abc2Ml, 2), "abc2Ml"),
              td(world(b), "world"),
              td(b.centroid.voxel.map((v) => reportNumber(v, 1)).join(", "), "voxel"),
              td(String(b.slices), "slices"),
              td(`${b.zRange[0]}–${b.zRange[1]}`, "zRange"),
              td(String(b.abc.slice), "abcSlice"),
            ]),
            bleeds.map((b) => `data-bleed="${esc(b.label)}" data-class="${esc(b.class)}"`),
          )
        : "<p>No bleed was predicted.</p>"),
  );

  // metrics against the truth
  if (metrics && headline) {
    const rows = metrics.classes.map((c) => {
      const m = metrics.perClass[String(c)]!;
      const st = classStatus(metrics, c);
      return [
        `<td>${swatch(c)}${esc(`${c} ${name(c)}`)}</td>`,
        td(STATUS_TEXT[st], "status", st.replace(" ", "-")),
        td(reportNumber(m.dice, 3), "dice"),
        td(reportNumber(m.hd95, 2), "hd95"),
        td(reportNumber(m.volume_gt_ml, 2), "volume_gt_ml"),
        td(reportNumber(m.volume_pred_ml, 2), "volume_pred_ml"),
        td(reportNumber(m.volume_pred_ml - m.volume_gt_ml, 2), "volume_error_ml"),
      ];
    });
    const cls = (cs: number[]) => (cs.length ? cs.map(name).join(", ") : "none");
    parts.push(
      `<h2>Against the ground truth</h2>` +
        table(
          ["class", "status", "Dice", "HD95 mm", "true mL", "predicted mL", "volume error mL (predicted − true)"],
          rows,
          metrics.classes.map((c) => `data-class="${esc(String(c))}"`),
        ) +
        `<ul class="headline">` +
        `<li>Mean Dice over the classes in the truth or the prediction (the headline; a class in only one of them scores 0): <b data-key="meanDice">${esc(reportNumber(headline.meanDice, 3))}</b> over ${esc(cls(headline.classes))}</li>` +
        `<li>Mean Dice over the classes in the truth only: <span data-key="meanDiceTruth">${esc(reportNumber(headline.meanDiceTruth, 3))}</span> over ${esc(cls(headline.truthClasses))}</li>` +
        `<li>Case-level Dice (MBH-Seg): <span data-key="caseDice">${esc(reportNumber(metrics.caseDice, 3))}</span></li>` +
        `<li>False-positive classes (predicted, not in the truth): <span data-key="falsePositiveClasses">${esc(cls(headline.falsePositiveClasses))}</span>; missed classes: <span data-key="missedClasses">${esc(cls(headline.missedClasses))}</span></li>` +
        `</ul>` +
        (metrics.warnings.length ? `<p class="warn">${metrics.warnings.map(esc).join("<br>")}</p>` : ""),
    );
  }

  // pictures
  const ov = o.overlay ?? {};
  const side =
    ov.convention === "neurological" ? "the patient's right is on the viewer's right" : "the patient's right is on the viewer's left";
  if (o.truth) {
    // the same slices on both sides: every slice holding a true or a predicted label
    const [nx, ny, nz] = o.ct.dims;
    const slices: number[] = [];
    for (let z = 0; z < nz; z++) {
      const a = z * nx * ny,
        e = a + nx * ny;
      let hit = false;
      for (let i = a; i < e && !hit; i++) hit = o.truth.data[i] !== 0 || o.labels.data[i] !== 0;
      if (hit) slices.push(z);
    }
    const common = { columns: 2, ...ov, ...(slices.length ? { slices } : {}), classes: names };
    const truthImg = await renderOverlayImage(o.ct, o.truth, { ...common, title: "ground truth" });
    const predImg = await renderOverlayImage(o.ct, o.labels, { ...common, title: "prediction", ...(r ? { bleeds: r.components } : {}) });
    parts.push(
      `<h2>Truth and prediction</h2><p>The same slices (${slices.length ? slices.length : "none holding blood; the middle one"}) on both sides; ${side}. Below each montage: each bleed at its largest slice.</p>` +
        `<div class="pair"><figure><img alt="ground truth overlay" width="${truthImg.width}" height="${truthImg.height}" src="${dataUri(truthImg.png)}"><figcaption>ground truth</figcaption></figure>` +
        `<figure><img alt="prediction overlay" width="${predImg.width}" height="${predImg.height}" src="${dataUri(predImg.png)}"><figcaption>prediction</figcaption></figure></div>`,
    );
  } else {
    const img = await renderOverlayImage(o.ct, o.labels, {
      ...ov,
      classes: names,
      title: "prediction",
      ...(r ? { bleeds: r.components } : {}),
    });
    parts.push(
      `<h2>Pictures</h2><p>Slices holding predicted blood, then each bleed at its largest slice; ${side}.</p>` +
        `<figure><img alt="prediction overlay" width="${img.width}" height="${img.height}" src="${dataUri(img.png)}"></figure>`,
    );
  }

  if (r) {
    const t = Object.entries(r.timings);
    parts.push(
      `<h2>Timings</h2>` +
        table(
          ["step", "ms"],
          t.map(([k, v]) => [td(k), td(reportNumber(v, 0), k)]),
        ),
    );
  }
  parts.push(`<footer>bhsd ${esc(VERSION)}</footer>`);
  const json = toJson(data).replace(/</g, "\\u003c");
  const html =
    `<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">` +
    `<title>${esc(title)}</title><style>${CSS}</style></head><body>\n${parts.join("\n")}\n` +
    `<script type="application/json" id="bhsd-report">${json}</script>\n</body></html>\n`;
  return { html, data };
}

/** The HTML report as a string (see renderReportData). */
export async function renderReport(input: ReportInput): Promise<string> {
  return (await renderReportData(input)).html;
}

const CSS = `
body{font:14px/1.45 system-ui,sans-serif;margin:1.5em;color:#1a1a1a;background:#fafafa}
h1{font-size:1.4em}h2{font-size:1.15em;margin-top:1.6em}
table{border-collapse:collapse;margin:.4em 0}th,td{border:1px solid #ccc;padding:.25em .6em;text-align:right}
th{background:#eee}th[scope=row],td:first-child{text-align:left}
.sw{display:inline-block;width:.9em;height:.9em;margin-right:.4em;vertical-align:-.1em;border:1px solid #333}
.false-positive{color:#a40000;font-weight:bold}.missed{color:#a40000}
.pair{display:flex;gap:1em;flex-wrap:wrap;align-items:flex-start}figure{margin:0}img{max-width:100%;height:auto;image-rendering:pixelated}
.warn{color:#a40000}footer{margin-top:2em;color:#666}
`;
