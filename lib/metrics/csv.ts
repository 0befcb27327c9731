/** CSV forms of the metrics: NaN as "nan", ±Infinity as "inf"/"-inf" (shared/spec/metrics.md). */
import { BHSD_CLASSES, METRIC_KEYS, type CaseMetrics } from "./evaluate.js";
import type { Summary } from "./summary.js";

export function csvNumber(x: number): string {
  if (Number.isNaN(x)) return "nan";
  if (!Number.isFinite(x)) return x > 0 ? "inf" : "-inf";
  return String(x);
}

/**
 * A text field: quoted when it holds a quote, comma or line break (a lone carriage return too: it
 * ends a row for Python's csv and for spreadsheets), and a text that a spreadsheet would take for
 * a formula (starting with = + - @, a tab or a carriage return: a case named "=HYPERLINK(…)" from
 * a file name) gets a leading ' (OWASP's rule). Numbers, inf and nan pass as they are.
 */
export function csvText(s: string): string {
  if (/^[=+\-@\t\r]/.test(s) && !/^[-+]?(inf|nan)$/.test(s) && !Number.isFinite(Number(s))) s = `'${s}`;
  return /[",\r\n]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s;
}

/** One row per case and class: case,class,name,tp,fp,fn,dice,…,nsd. */
export function casesToCsv(rows: readonly { case: string; metrics: CaseMetrics }[]): string {
  const out = [["case", "class", "name", ...METRIC_KEYS].join(",")];
  for (const r of rows) {
    for (const c of r.metrics.classes) {
      const m = r.metrics.perClass[String(c)]!;
      out.push([csvText(r.case), String(c), BHSD_CLASSES[c] ?? `class${c}`, ...METRIC_KEYS.map((k) => csvNumber(m[k]))].join(","));
    }
  }
  return out.join("\n") + "\n";
}

/** The summary table: one row per class and statistic, then the foreground mean and case-level Dice. */
export function summaryToCsv(s: Summary): string {
  const out = [["class", "name", "statistic", ...METRIC_KEYS].join(",")];
  for (const c of s.classes) {
    const row = s.perClass[String(c)]!;
    for (const stat of ["mean", "sd", "median", "n", "nInf"] as const) {
      out.push([String(c), BHSD_CLASSES[c] ?? `class${c}`, stat, ...METRIC_KEYS.map((k) => csvNumber(row[k][stat]))].join(","));
    }
  }
  out.push(["foreground", "mean of class means", "mean", ...METRIC_KEYS.map((k) => csvNumber(s.foregroundMean[k].mean))].join(","));
  out.push(["case", "MBH-Seg case Dice", "mean", csvNumber(s.caseDice.mean), ...METRIC_KEYS.slice(1).map(() => "")].join(","));
  return out.join("\n") + "\n";
}
