/**
 * The dataset table (shared/spec/metrics.md, "Aggregation over cases"): per class and metric the
 * mean, standard deviation and median over cases, NaN skipped (nnU-Net's nanmean) with the count
 * that entered each figure; Infinity is not skipped (the mean is then inf) and is counted.
 * The foreground mean is the mean of the per-class means; the MBH-Seg case-level Dice its own row.
 */
import { METRIC_KEYS, type CaseMetrics, type ClassMetrics } from "./evaluate.js";

export interface Aggregate {
  mean: number;
  /** Population standard deviation (numpy's default, ddof = 0). */
  sd: number;
  median: number;
  /** Cases that entered the figures (not NaN). */
  n: number;
  /** Of those, how many were infinite. */
  nInf: number;
}

export interface Summary {
  classes: number[];
  cases: number;
  perClass: Record<string, Record<keyof ClassMetrics, Aggregate>>;
  /** The mean of the per-class means, for each metric (over classes whose mean is defined), with the class count. */
  foregroundMean: Record<keyof ClassMetrics, { mean: number; classes: number }>;
  /** MBH-Seg case-level multi-class Dice over the cases. */
  caseDice: Aggregate;
}

export function aggregate(values: readonly number[]): Aggregate {
  const v = values.filter((x) => !Number.isNaN(x));
  const n = v.length;
  const nInf = v.filter((x) => !Number.isFinite(x)).length;
  if (n === 0) return { mean: NaN, sd: NaN, median: NaN, n: 0, nInf: 0 };
  const mean = v.reduce((a, b) => a + b, 0) / n;
  const sd = nInf ? NaN : Math.sqrt(v.reduce((a, b) => a + (b - mean) ** 2, 0) / n);
  const s = [...v].sort((a, b) => a - b);
  const median = n % 2 ? s[(n - 1) / 2]! : (s[n / 2 - 1]! + s[n / 2]!) / 2;
  return { mean, sd, median, n, nInf };
}

export function summarize(cases: readonly CaseMetrics[], classes: readonly number[]): Summary {
  const perClass: Summary["perClass"] = {};
  for (const c of classes) {
    const row = {} as Record<keyof ClassMetrics, Aggregate>;
    for (const k of METRIC_KEYS) row[k] = aggregate(cases.map((m) => m.perClass[String(c)]?.[k] ?? NaN));
    perClass[String(c)] = row;
  }
  const foregroundMean = {} as Summary["foregroundMean"];
  for (const k of METRIC_KEYS) {
    const means = classes.map((c) => perClass[String(c)]![k].mean).filter((x) => !Number.isNaN(x));
    foregroundMean[k] = { mean: means.length ? means.reduce((a, b) => a + b, 0) / means.length : NaN, classes: means.length };
  }
  return { classes: [...classes], cases: cases.length, perClass, foregroundMean, caseDice: aggregate(cases.map((m) => m.caseDice)) };
}
