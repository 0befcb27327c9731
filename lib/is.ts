/**
 * Argument checks, in the manner of sharp's lib/is.js: every public function validates its
 * arguments here before any allocation or native call, and a failure names the argument, what was
 * expected and what came.
 */
import type { DTypeName, VoxelArray } from "./types.js";

/** Describes a value for an error message: its type and, briefly, its value. */
function describe(value: unknown): string {
  if (value === null) return "null";
  if (value === undefined) return "undefined";
  if (ArrayBuffer.isView(value)) {
    const ctor = (value as object).constructor?.name ?? "TypedArray";
    return `${ctor} of length ${(value as unknown as { length?: number }).length ?? (value as ArrayBufferView).byteLength}`;
  }
  if (Array.isArray(value)) {
    const shown = value.slice(0, 8).map((v) => (typeof v === "string" ? JSON.stringify(v) : brief(v, 2)));
    return `array [${shown.join(", ")}${value.length > 8 ? ", …" : ""}]`;
  }
  switch (typeof value) {
    case "string":
      return `string ${JSON.stringify(value.length > 60 ? value.slice(0, 60) + "…" : value)}`;
    case "number":
    case "bigint":
    case "boolean":
      return `${typeof value} ${String(value)}`;
    case "function":
      return "function";
    default:
      return `${(value as object).constructor?.name ?? "object"}`;
  }
}

/**
 * A value as JSON for an error message (as JSON.stringify writes it), bounded: at most `depth` levels of arrays and objects (deeper
 * ones "…"), the first 8 items of each, 200 characters in all; a cycle shows as "<cycle>". For values
 * read from files (plans.json, pickles), where JSON.stringify can overflow the stack on deep nesting
 * or throw on a cycle, and a huge value would fill the message.
 */
export function brief(value: unknown, depth = 4): string {
  const seen = new Set<object>();
  const go = (v: unknown, d: number): string => {
    if (v === undefined) return d < depth ? "null" : "undefined"; // (JSON.stringify's null inside an array)
    if (typeof v === "bigint") return `${v}`;
    if (typeof v === "number") return String(v);
    if (typeof v === "string") return JSON.stringify(v.length > 60 ? `${v.slice(0, 60)}…` : v);
    if (v === null || typeof v !== "object") return String(v);
    if (seen.has(v)) return "<cycle>";
    if (d <= 0) return Array.isArray(v) ? "[…]" : "{…}";
    seen.add(v);
    try {
      if (ArrayBuffer.isView(v)) return `${(v as object).constructor?.name ?? "TypedArray"}(${(v as ArrayBufferView).byteLength} bytes)`;
      const entries: [string | null, unknown][] = Array.isArray(v)
        ? v.slice(0, 8).map((x) => [null, x])
        : v instanceof Map
          ? [...v.entries()].slice(0, 8).map(([k, x]) => [typeof k === "string" ? k : String(k), x])
          : Object.keys(v)
              .slice(0, 8)
              .map((k) => [k, (v as Record<string, unknown>)[k]]);
      const size = Array.isArray(v) ? v.length : v instanceof Map ? v.size : Object.keys(v).length;
      const body = entries.map(([k, x]) => (k === null ? go(x, d - 1) : `${JSON.stringify(k)}:${go(x, d - 1)}`));
      if (size > 8) body.push("…");
      return Array.isArray(v) ? `[${body.join(",")}]` : `{${body.join(",")}}`;
    } finally {
      seen.delete(v);
    }
  };
  const s = go(value, depth);
  return s.length > 200 ? `${s.slice(0, 199)}…` : s;
}

/** The error every check throws: `Expected <expected> for <name> but received <actual>`. */
export function invalidParameterError(name: string, expected: string, actual: unknown): TypeError {
  return new TypeError(`Expected ${expected} for ${name} but received ${describe(actual)}`);
}

export const plainObject = (v: unknown): v is Record<string, unknown> => Object.prototype.toString.call(v) === "[object Object]";
export const number = (v: unknown): v is number => typeof v === "number" && Number.isFinite(v);
export const inArray = <T>(v: unknown, list: readonly T[]): v is T => list.includes(v as T);

const ARRAY_DTYPES = new Map<unknown, DTypeName>([
  [Uint8Array, "uint8"],
  [Int8Array, "int8"],
  [Int16Array, "int16"],
  [Uint16Array, "uint16"],
  [Int32Array, "int32"],
  [Uint32Array, "uint32"],
  [Float32Array, "float32"],
  [Float64Array, "float64"],
]);

/** The dtype of a voxel array, or undefined when it is not one (a Buffer counts as uint8). */
export function dtypeOf(v: unknown): DTypeName | undefined {
  if (!ArrayBuffer.isView(v) || v instanceof DataView) return undefined;
  if (v instanceof Uint8Array) return "uint8";
  return ARRAY_DTYPES.get((v as object).constructor);
}

export const voxelArray = (v: unknown): v is VoxelArray => dtypeOf(v) !== undefined;

export const INTEGER_DTYPES: readonly DTypeName[] = ["uint8", "int8", "int16", "uint16", "int32", "uint32"];

/** Checks that `v` is a finite number, optionally in [min, max]. */
export function assertNumber(name: string, v: unknown, min = -Infinity, max = Infinity): asserts v is number {
  if (!number(v) || v < min || v > max) {
    const range =
      min === -Infinity && max === Infinity
        ? "a finite number"
        : max === Infinity
          ? `a number >= ${min}`
          : min === -Infinity
            ? `a number <= ${max}`
            : `a number between ${min} and ${max}`;
    throw invalidParameterError(name, range, v);
  }
}

/** Checks for a plain options object or undefined; returns {} for undefined. */
export function optionsObject(name: string, v: unknown): Record<string, unknown> {
  if (v === undefined || v === null) return {};
  if (!plainObject(v)) throw invalidParameterError(name, "an options object", v);
  return v;
}
