/** JSON with NaN and ±Infinity written as "nan", "inf" and "-inf" (shared/spec/metrics.md). */
export function toJson(value: unknown, indent = 2): string {
  return JSON.stringify(
    value,
    (_k, v) => {
      if (typeof v === "number" && !Number.isFinite(v)) return Number.isNaN(v) ? "nan" : v > 0 ? "inf" : "-inf";
      return v;
    },
    indent,
  );
}
