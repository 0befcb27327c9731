/**
 * The project's unpickler (lib/model/nnunet/pickle.ts) against CPython's pickle module: one value
 * pickled in protocols 0–5 (test/fixtures/pickle/make.py wrote the files and the value as JSON),
 * and pickles an attacker writes: work bounded by the bytes, nothing forged, nothing called that
 * the caller did not resolve.
 */
import test from "ava";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { CheckpointError, commonGlobal } from "../lib/model/nnunet/checkpoint.js";
import { parsePickle, PickleError, type PickleHooks } from "../lib/model/nnunet/pickle.js";
import { ROOT } from "./helpers.js";

const DIR = join(ROOT, "test", "fixtures", "pickle");

/** The globals CPython writes for this value: dict, set, bytes and bytearray through their constructors. */
const hooks: PickleHooks = {
  global(module, name) {
    const fqn = `${module}.${name}`;
    const common = commonGlobal(fqn, "test", () => {});
    if (common) return common;
    if (fqn === "builtins.bytes") return () => new Uint8Array(); // (b"" in protocols 0–2)
    if (fqn === "builtins.bytearray")
      return (x?: unknown, enc?: unknown) =>
        typeof x === "string" && enc !== undefined ? Uint8Array.from(x, (c) => c.charCodeAt(0)) : x === undefined ? new Uint8Array() : x;
    throw new Error(`unexpected global ${fqn}`);
  },
};

type Tagged =
  | null
  | boolean
  | string
  | Tagged[]
  | { int: string }
  | { float: string }
  | { bytes: string }
  | { set: string[] }
  | { dict: [Tagged, Tagged][] };

/** Where `v` differs from CPython's tagged value (null where it does not). */
function differs(want: Tagged, v: unknown, at = "value"): string | null {
  const bad = () => `${at}: want ${JSON.stringify(want).slice(0, 80)}, got ${String(v).slice(0, 80)}`;
  if (want === null || typeof want === "boolean" || typeof want === "string") return v === want ? null : bad();
  if (Array.isArray(want)) {
    if (!Array.isArray(v) || v.length !== want.length) return bad();
    for (let i = 0; i < want.length; i++) {
      const d = differs(want[i]!, v[i], `${at}[${i}]`);
      if (d) return d;
    }
    return null;
  }
  if ("int" in want)
    return (typeof v === "number" && Number.isSafeInteger(v)) || typeof v === "bigint"
      ? BigInt(v) === BigInt(want.int)
        ? null
        : bad()
      : bad();
  if ("float" in want) return typeof v === "number" && Object.is(v, want.float === "inf" ? Infinity : Number(want.float)) ? null : bad();
  if ("bytes" in want) return v instanceof Uint8Array && Buffer.from(v).toString("hex") === want.bytes ? null : bad();
  if ("set" in want) return Array.isArray(v) && JSON.stringify(v.map((x) => String(x)).sort()) === JSON.stringify(want.set) ? null : bad();
  if (!(v instanceof Map) || v.size !== want.dict.length) return bad();
  const entries = [...v.entries()];
  for (let i = 0; i < entries.length; i++) {
    const d =
      differs(want.dict[i]![0], entries[i]![0], `${at} key ${i}`) ??
      differs(want.dict[i]![1], entries[i]![1], `${at}[${String(entries[i]![0])}]`);
    if (d) return d;
  }
  return null;
}

test("every protocol (0–5) CPython writes reads as the value it pickled", (t) => {
  const { python, value } = JSON.parse(readFileSync(join(DIR, "value.json"), "utf8")) as { python: string; value: Tagged };
  t.regex(python, /^3\./);
  for (let p = 0; p <= 5; p++) {
    const v = parsePickle(readFileSync(join(DIR, `value-p${p}.pkl`)), hooks);
    t.is(differs(value, v), null, `protocol ${p}`);
    // a list pickled twice by reference is one list (the memo)
    const shared = (v as Map<string, unknown[][]>).get("shared")!;
    t.is(shared[0], shared[1], `protocol ${p}`);
  }
});

test("a protocol-0 tuple that holds itself (its MARK popped by POP, as CPython does) reads as itself", (t) => {
  const rec = parsePickle(readFileSync(join(DIR, "recursive-p0.pkl")), hooks) as unknown[][];
  t.true(Array.isArray(rec) && rec.length === 1);
  t.is(rec[0]![0], rec);
});

/** A pickle of protocol 2 from opcode bytes (latin1 strings for readability). */
const pk = (...parts: (string | number[] | Uint8Array)[]) =>
  Buffer.concat([Buffer.from([0x80, 0x02]), ...parts.map((p) => (typeof p === "string" ? Buffer.from(p, "latin1") : Buffer.from(p)))]);
const u32 = (n: number) => {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(n);
  return b;
};

test("hostile pickles: a big dict BUILT onto lists again and again, a memo DAG as a global's name, a forged prototype: refused at once", (t) => {
  // {0: None, …, 99 999: None} in the memo, then 100 000 × (EMPTY_LIST, BINGET 0, BUILD, POP):
  // pickleparser copied the dict onto each list (an hour); one BUILD is refused here
  const dict = Buffer.concat([
    Buffer.from("}q\x00(", "latin1"),
    ...Array.from({ length: 100_000 }, (_, i) => Buffer.concat([Buffer.from("J"), u32(i), Buffer.from("N")])),
  ]);
  const hang = pk(dict, "u0", "]h\x00b0".repeat(100_000), "}.");
  t.true(hang.length > 1_000_000);
  const t0 = performance.now();
  t.throws(() => parsePickle(hang, hooks), {
    instanceOf: PickleError,
    message: /BUILD on a list\/tuple, which takes no state here \(opcode at offset \d+\)/,
  });
  t.true(performance.now() - t0 < 2000);
  // L_i = [L_{i-1}, L_{i-1}] for 40 levels, then STACK_GLOBAL(L_40, "x"): 2^40 to stringify
  let dag = "]q\x00";
  for (let i = 1; i <= 40; i++) dag += `(h${String.fromCharCode(i - 1)}h${String.fromCharCode(i - 1)}lq${String.fromCharCode(i)}`;
  const t1 = performance.now();
  t.throws(() => parsePickle(pk(dag, "X\x01\x00\x00\x00x\x93."), hooks), {
    instanceOf: PickleError,
    message: /a global named by a list\/tuple and a string, not two short strings/,
  });
  t.true(performance.now() - t1 < 2000);
  // a dict key "__proto__" (DICT and SETITEM) is a key, not a prototype; a list of lists as a key is refused (a tuple of scalars is one)
  const proto = parsePickle(pk("(X\t\x00\x00\x00__proto__]d."), hooks) as Map<unknown, unknown>;
  t.true(proto instanceof Map && Object.getPrototypeOf(proto) === Map.prototype);
  t.deepEqual(proto.get("__proto__"), []);
  t.throws(() => parsePickle(pk("}]]aNs."), hooks), { message: /a dict key that is a list\/tuple/ });
  // a BUILD onto a tensor-like object: only objects with __setstate__ take state
  t.throws(() => parsePickle(pk("]}(X\x05\x00\x00\x00shape]J\xf9\xff\xff\xffaub."), hooks), { message: /BUILD on a list\/tuple/ });
  // nothing is called that the caller did not resolve: REDUCE of a list, of a string
  t.throws(() => parsePickle(pk("])R."), hooks), { message: /REDUCE of a list\/tuple, not a global the reader resolved/ });
  t.throws(() => parsePickle(pk("X\x01\x00\x00\x00f)R."), hooks), { message: /REDUCE of a string/ });
  // a call of more than 64 arguments; a memo entry never stored; a pop with nothing to pop; no STOP
  t.throws(() => parsePickle(pk("cbuiltins\nset\n(", "K\x01".repeat(65), "tR."), hooks), { message: /REDUCE with 65 arguments/ });
  t.throws(() => parsePickle(pk("h\x05."), hooks), { message: /memo entry 5, which was never stored/ });
  t.throws(() => parsePickle(pk("0."), hooks), { message: /no MARK to pop to/ });
  t.throws(() => parsePickle(pk("R."), hooks), { message: /a pop from an empty stack/ });
  t.throws(() => parsePickle(pk("N"), hooks), { message: /ends before its STOP/ });
  // keyword arguments (NEWOBJ_EX) no global of ours takes
  t.throws(() => parsePickle(pk("cbuiltins\nset\n)}X\x01\x00\x00\x00kK\x01s\x92."), hooks), {
    message: /NEWOBJ_EX with keyword arguments/,
  });
  t.throws(() => parsePickle(pk("X\xff\xff\xff\x7fab."), hooks), { message: /an argument of 2147483647 bytes past the pickle's end/ });
});

test("a checkpoint's hostile pickle is a CheckpointError naming the file", async (t) => {
  const { unpickle } = await import("../lib/model/nnunet/checkpoint.js");
  t.throws(() => unpickle(pk("]}(X\x06\x00\x00\x00lengthK\x01ub."), "x.pth", "a checkpoint", "malformed data.pkl", () => null), {
    instanceOf: CheckpointError,
    message: /^x\.pth: malformed data\.pkl \(BUILD on a list\/tuple, which takes no state here \(opcode at offset 19\)\)$/,
  });
});
