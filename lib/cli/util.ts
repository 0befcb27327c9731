/** Shared bits of the commands: number parsing with clear errors, tables, progress on stderr. */
import { InvalidArgumentError } from "commander";

export function intArg(name: string, min: number, max = Number.MAX_SAFE_INTEGER) {
  return (v: string): number => {
    const n = Number(v);
    if (!Number.isInteger(n) || n < min || n > max) throw new InvalidArgumentError(`${name} must be an integer from ${min}${max < Number.MAX_SAFE_INTEGER ? ` to ${max}` : " up"}, got "${v}"`);
    return n;
  };
}

export function numberArg(name: string, min: number) {
  return (v: string): number => {
    const n = Number(v);
    if (!Number.isFinite(n) || n < min) throw new InvalidArgumentError(`${name} must be a number >= ${min}, got "${v}"`);
    return n;
  };
}

export function listArg(name: string) {
  return (v: string): number[] => {
    const parts = v.split(",").map((s) => Number(s.trim()));
    if (!parts.length || !parts.every((n) => Number.isInteger(n) && n >= 1 && n <= 255)) throw new InvalidArgumentError(`${name} must be a comma-separated list of class numbers, got "${v}"`);
    return parts;
  };
}

/** A plain text table with right-aligned columns after the first. */
export function table(head: string[], rows: (string | number)[][]): string {
  const cells = [head, ...rows.map((r) => r.map(String))];
  const widths = head.map((_, j) => Math.max(...cells.map((r) => (r[j] ?? "").length)));
  return cells.map((r) => r.map((c, j) => (j === 0 ? c.padEnd(widths[j]!) : c.padStart(widths[j]!))).join("  ")).join("\n");
}

export function fmt(x: number, digits = 3): string {
  if (Number.isNaN(x)) return "nan";
  if (!Number.isFinite(x)) return x > 0 ? "inf" : "-inf";
  return Number.isInteger(x) ? String(x) : x.toFixed(digits);
}

/** A progress line on stderr when it is a terminal and not --quiet; nothing otherwise. */
export function progress(enabled: boolean): (done: number, total: number, what: string) => void {
  if (!enabled || !process.stderr.isTTY) return () => {};
  return (done, total, what) => {
    const width = 30, full = Math.round((done / total) * width);
    process.stderr.write(`\r[${"#".repeat(full)}${".".repeat(width - full)}] ${done}/${total} ${what.slice(0, 30).padEnd(30)}`);
    if (done === total) process.stderr.write("\n");
  };
}
