/**
 * A pickle reader (protocols 0–5) that runs nothing and does work in proportion to its bytes.
 *
 * Written here rather than taken from npm: pickleparser (the JavaScript unpickler there) copies a
 * BUILD's state onto any object with `Object.assign` (a few bytes can copy a 100 000-entry dict
 * onto a new list again and again — an hour of CPU from a 1 MB file — or make a list's prototype
 * a checkpoint's tensor, forging one past its checks), turns dict keys into property names (a
 * memo DAG as a key is 2^depth work to stringify) and hands any stack values to the name resolver
 * as a module and name. Here:
 *
 * - a global is named by two strings of at most 256 characters, and resolved by the caller, whose
 *   values are the only things REDUCE, NEWOBJ, OBJ and INST call;
 * - BUILD calls `__setstate__` of an object that has one (the caller's own classes), does nothing
 *   with an empty state, and refuses any other;
 * - dicts are Maps whose keys are None, bools, numbers, strings, bytes or tuples of those (what a
 *   checkpoint's dicts hold), set with `Map.set`: nothing becomes a property;
 * - APPEND(S), SETITEM(S) and ADDITEMS refuse a target that is not a list, dict or set; a call's
 *   arguments are at most 64;
 * - every value comes from one opcode or from the items since a MARK, so the work is linear in the
 *   opcodes, which `scanPickle` bounds before this runs.
 *
 * Values: None → null, bool, int → number (a bigint past 2^53), float → number, str → string,
 * bytes/bytearray → Uint8Array (a view of the pickle), tuple and list → array, dict → Map, set and
 * frozenset → array.
 */

export class PickleError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "PickleError";
  }
}

export interface PickleHooks {
  /** The value of the global `module.name`; throws to refuse it. */
  global(module: string, name: string): unknown;
  /** The object a persistent id stands for; absent: refused. */
  persistent?(pid: unknown): unknown;
}

const MAX_NAME = 256;
const PY2_MODULES: Record<string, string> = { __builtin__: "builtins", copy_reg: "copyreg" };
const MAX_ARGS = 64;
const MAX_TUPLE_KEY = 16;

// (ISO-8859-1 itself: TextDecoder's "latin1" is windows-1252, which maps 0x80–0x9f elsewhere)
const latin1 = (b: Uint8Array) => Buffer.from(b.buffer, b.byteOffset, b.byteLength).toString("latin1");
const utf8 = new TextDecoder("utf-8");

function keyOk(k: unknown, depth = 0): boolean {
  if (k === null || typeof k === "string" || typeof k === "number" || typeof k === "bigint" || typeof k === "boolean") return true;
  if (k instanceof Uint8Array) return true;
  return depth === 0 && Array.isArray(k) && k.length <= MAX_TUPLE_KEY && k.every((x) => keyOk(x, 1));
}

const kind = (v: unknown): string =>
  v === null || v === undefined
    ? "None"
    : Array.isArray(v)
      ? "a list/tuple"
      : v instanceof Map
        ? "a dict"
        : v instanceof Uint8Array
          ? "bytes"
          : typeof v === "object" || typeof v === "function"
            ? `an object (${(v as object).constructor?.name ?? "?"})`
            : `a ${typeof v}`;

/** A little-endian two's-complement integer (LONG1/LONG4). */
function signedLE(b: Uint8Array): number | bigint {
  if (b.length === 0) return 0;
  let v = 0n;
  for (let i = b.length - 1; i >= 0; i--) v = (v << 8n) | BigInt(b[i]!);
  if (b[b.length - 1]! & 0x80) v -= 1n << BigInt(8 * b.length);
  return v >= BigInt(Number.MIN_SAFE_INTEGER) && v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : v;
}

function decimal(line: string, what: string): number | bigint {
  const s = line.endsWith("L") ? line.slice(0, -1) : line;
  if (!/^[-+]?\d{1,80}$/.test(s)) throw new PickleError(`${what} ${JSON.stringify(line.slice(0, 40))} is not an integer`);
  const v = BigInt(s);
  return v >= BigInt(Number.MIN_SAFE_INTEGER) && v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : v;
}

/** Parses a pickle; errors are PickleErrors naming the opcode's offset (or the hooks' own errors). */
export function parsePickle(bytes: Uint8Array, hooks: PickleHooks): unknown {
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const n = bytes.length;
  let i = 0;
  let at = 0;
  const fail = (why: string): never => {
    throw new PickleError(`${why} (opcode at offset ${at})`);
  };
  const take = (len: number): Uint8Array => {
    if (!Number.isSafeInteger(len) || len < 0 || len > n - i) fail(`an argument of ${len} bytes past the pickle's end`);
    const b = bytes.subarray(i, i + len);
    i += len;
    return b;
  };
  const u8 = () => take(1)[0]!;
  const u16 = () => (take(2), dv.getUint16(i - 2, true));
  const u32 = () => (take(4), dv.getUint32(i - 4, true));
  const i32 = () => (take(4), dv.getInt32(i - 4, true));
  const u64 = () => {
    take(8);
    const v = dv.getUint32(i - 8, true) + 2 ** 32 * dv.getUint32(i - 4, true);
    return Number.isSafeInteger(v) ? v : fail("a length past 2^53");
  };
  const line = (): string => {
    const end = bytes.indexOf(0x0a, i);
    if (end < 0) fail("an unterminated line");
    const s = latin1(bytes.subarray(i, end));
    i = end + 1;
    return s;
  };

  let stack: unknown[] = [];
  const metastack: unknown[][] = [];
  const memo = new Map<number, unknown>();
  // what the hooks gave as globals: the only things a pickle may call
  const callables = new WeakSet<object>();

  const pop = (): unknown => (stack.length ? stack.pop() : fail("a pop from an empty stack"));
  const top = (): unknown => (stack.length ? stack[stack.length - 1] : fail("an empty stack"));
  const popMark = (): unknown[] => {
    const items = stack;
    stack = metastack.pop() ?? fail("no MARK to pop to");
    return items;
  };
  let proto = 0;
  const global = (module: unknown, name: unknown): unknown => {
    if (typeof module !== "string" || typeof name !== "string" || module.length > MAX_NAME || name.length > MAX_NAME)
      fail(`a global named by ${kind(module)} and ${kind(name)}, not two short strings`);
    // (Python 2's module names, which protocols 0–2 write and Python's own reader maps)
    const m =
      proto < 3 ? (Object.hasOwn(PY2_MODULES, module as string) ? PY2_MODULES[module as string]! : (module as string)) : (module as string);
    const v = hooks.global(m, name as string);
    if (typeof v === "function") callables.add(v);
    return v;
  };
  const call = (fn: unknown, args: unknown, how: string): unknown => {
    if (typeof fn !== "function" || !callables.has(fn)) fail(`${how} of ${kind(fn)}, not a global the reader resolved`);
    if (!Array.isArray(args)) fail(`${how} with arguments that are ${kind(args)}, not a tuple`);
    if ((args as unknown[]).length > MAX_ARGS) fail(`${how} with ${(args as unknown[]).length} arguments`);
    return (fn as (...a: unknown[]) => unknown)(...(args as unknown[]));
  };
  const setItems = (d: unknown, items: unknown[]) => {
    if (!(d instanceof Map)) fail(`SETITEM(S) on ${kind(d)}, not a dict`);
    if (items.length % 2) fail("SETITEMS with an odd number of items");
    for (let k = 0; k < items.length; k += 2) {
      if (!keyOk(items[k])) fail(`a dict key that is ${kind(items[k])}`);
      (d as Map<unknown, unknown>).set(items[k], items[k + 1]);
    }
  };
  const extend = (l: unknown, items: unknown[], what: string) => {
    if (!Array.isArray(l)) fail(`${what} on ${kind(l)}, not a list`);
    for (const x of items) (l as unknown[]).push(x);
  };

  while (i < n) {
    at = i;
    const op = bytes[i++]!;
    switch (op) {
      case 0x80: // PROTO
        if ((proto = u8()) > 5) fail("a pickle protocol above 5");
        break;
      case 0x95: // FRAME
        take(8);
        break;
      case 0x2e: // STOP
        if (stack.length !== 1 || metastack.length) fail("STOP with the stack not holding one value");
        return stack[0];
      case 0x28: // MARK
        metastack.push(stack);
        stack = [];
        break;
      case 0x31: // POP_MARK
        popMark();
        break;
      case 0x30: // POP (of the MARK when nothing is above it, as CPython: protocol 0's recursive tuples)
        if (stack.length) stack.pop();
        else popMark();
        break;
      case 0x32: // DUP
        stack.push(top());
        break;

      case 0x70: // PUT
        memo.set(Number(decimal(line(), "a memo index")), top());
        break;
      case 0x71: // BINPUT
        memo.set(u8(), top());
        break;
      case 0x72: // LONG_BINPUT
        memo.set(u32(), top());
        break;
      case 0x94: // MEMOIZE
        memo.set(memo.size, top());
        break;
      case 0x67: // GET
      case 0x68: // BINGET
      case 0x6a: {
        // LONG_BINGET
        const k = op === 0x67 ? Number(decimal(line(), "a memo index")) : op === 0x68 ? u8() : u32();
        if (!memo.has(k)) fail(`memo entry ${k}, which was never stored`);
        stack.push(memo.get(k));
        break;
      }

      case 0x4e: // NONE
        stack.push(null);
        break;
      case 0x88: // NEWTRUE
        stack.push(true);
        break;
      case 0x89: // NEWFALSE
        stack.push(false);
        break;
      case 0x49: {
        // INT
        const s = line();
        stack.push(s === "01" ? true : s === "00" ? false : decimal(s, "INT"));
        break;
      }
      case 0x4c: // LONG
        stack.push(decimal(line(), "LONG"));
        break;
      case 0x46: {
        // FLOAT
        // (Python's repr: digits, inf, -inf, nan)
        const s = line();
        const inf = /^([-+]?)inf(inity)?$/i.exec(s);
        const v = inf ? (inf[1] === "-" ? -Infinity : Infinity) : /^[-+]?nan$/i.test(s) ? NaN : Number(s);
        if (s.trim() === "" || (Number.isNaN(v) && !/nan$/i.test(s))) fail(`FLOAT ${JSON.stringify(s.slice(0, 40))}`);
        stack.push(v);
        break;
      }
      case 0x4a: // BININT
        stack.push(i32());
        break;
      case 0x4b: // BININT1
        stack.push(u8());
        break;
      case 0x4d: // BININT2
        stack.push(u16());
        break;
      case 0x8a: // LONG1
        stack.push(signedLE(take(u8())));
        break;
      case 0x8b: // LONG4
        stack.push(signedLE(take(u32())));
        break;
      case 0x47: // BINFLOAT (big-endian)
        take(8);
        stack.push(dv.getFloat64(i - 8, false));
        break;

      case 0x53: {
        // STRING
        const s = line();
        if (s.length < 2 || s[0] !== s[s.length - 1] || (s[0] !== "'" && s[0] !== '"')) fail("STRING without its quotes");
        stack.push(s.slice(1, -1));
        break;
      }
      case 0x56: // UNICODE (raw-unicode-escape: latin-1 bytes, \uXXXX and \UXXXXXXXX for the rest)
        stack.push(
          line().replace(/\\u([0-9a-fA-F]{4})|\\U([0-9a-fA-F]{8})/g, (_, a?: string, b?: string) => {
            const c = parseInt(a ?? b!, 16);
            return c <= 0x10ffff ? String.fromCodePoint(c) : fail(`a code point 0x${c.toString(16)}`);
          }),
        );
        break;
      case 0x54: // BINSTRING
        stack.push(latin1(take(i32())));
        break;
      case 0x55: // SHORT_BINSTRING
        stack.push(latin1(take(u8())));
        break;
      case 0x58: // BINUNICODE
        stack.push(utf8.decode(take(u32())));
        break;
      case 0x8c: // SHORT_BINUNICODE
        stack.push(utf8.decode(take(u8())));
        break;
      case 0x8d: // BINUNICODE8
        stack.push(utf8.decode(take(u64())));
        break;
      case 0x42: // BINBYTES
        stack.push(take(u32()));
        break;
      case 0x43: // SHORT_BINBYTES
        stack.push(take(u8()));
        break;
      case 0x8e: // BINBYTES8
      case 0x96: // BYTEARRAY8
        stack.push(take(u64()));
        break;

      case 0x29: // EMPTY_TUPLE
      case 0x5d: // EMPTY_LIST
      case 0x8f: // EMPTY_SET
        stack.push([]);
        break;
      case 0x74: // TUPLE
      case 0x6c: // LIST
      case 0x91: {
        // FROZENSET
        // (popped first: `stack.push(popMark())` would push onto the stack popMark replaces)
        const items = popMark();
        stack.push(items);
        break;
      }
      case 0x85: // TUPLE1
        stack.push([pop()]);
        break;
      case 0x86: {
        // TUPLE2
        const b = pop();
        stack.push([pop(), b]);
        break;
      }
      case 0x87: {
        // TUPLE3
        const c = pop(),
          b = pop();
        stack.push([pop(), b, c]);
        break;
      }
      case 0x61: {
        // APPEND
        const x = pop();
        extend(top(), [x], "APPEND");
        break;
      }
      case 0x65: // APPENDS
      case 0x90: {
        // ADDITEMS
        const items = popMark();
        extend(top(), items, op === 0x65 ? "APPENDS" : "ADDITEMS");
        break;
      }
      case 0x7d: // EMPTY_DICT
        stack.push(new Map());
        break;
      case 0x64: {
        // DICT
        const items = popMark();
        const d = new Map();
        setItems(d, items);
        stack.push(d);
        break;
      }
      case 0x73: {
        // SETITEM
        const v = pop(),
          k = pop();
        setItems(top(), [k, v]);
        break;
      }
      case 0x75: {
        // SETITEMS
        const items = popMark();
        setItems(top(), items);
        break;
      }

      case 0x63: {
        // GLOBAL
        const module = line();
        stack.push(global(module, line()));
        break;
      }
      case 0x93: {
        // STACK_GLOBAL
        const name = pop();
        stack.push(global(pop(), name));
        break;
      }
      case 0x69: {
        // INST
        const module = line();
        const cls = global(module, line());
        const args = popMark();
        stack.push(call(cls, args, "INST"));
        break;
      }
      case 0x6f: {
        // OBJ
        const args = popMark();
        const cls = args.shift();
        stack.push(call(cls, args, "OBJ"));
        break;
      }
      case 0x81: {
        // NEWOBJ
        const args = pop();
        stack.push(call(pop(), args, "NEWOBJ"));
        break;
      }
      case 0x92: {
        // NEWOBJ_EX (no global of ours takes keyword arguments: any are refused)
        const kwargs = pop();
        if (!(kwargs instanceof Map) || kwargs.size) fail("NEWOBJ_EX with keyword arguments");
        const args = pop();
        stack.push(call(pop(), args, "NEWOBJ_EX"));
        break;
      }
      case 0x52: {
        // REDUCE
        const args = pop();
        stack.push(call(pop(), args, "REDUCE"));
        break;
      }
      case 0x62: {
        // BUILD
        const state = pop();
        const obj = top() as { __setstate__?: unknown } | null;
        // (None, {}, or Python's (state, slotstate) pair of those)
        const empty =
          state === null ||
          (state instanceof Map && state.size === 0) ||
          (Array.isArray(state) && state.length <= 2 && state.every((s) => s === null || (s instanceof Map && s.size === 0)));
        if (obj !== null && typeof obj === "object" && typeof obj.__setstate__ === "function")
          (obj.__setstate__ as (s: unknown) => void)(state);
        else if (!empty) fail(`BUILD on ${kind(obj)}, which takes no state here`);
        break;
      }
      case 0x50: // PERSID
      case 0x51: {
        // BINPERSID
        const pid = op === 0x50 ? line() : pop();
        if (!hooks.persistent) fail("a persistent id");
        stack.push(hooks.persistent!(pid));
        break;
      }
      case 0x82: // EXT1
      case 0x83: // EXT2
      case 0x84: // EXT4
        fail(`extension code ${op === 0x82 ? u8() : op === 0x83 ? u16() : u32()}`);
        break;
      case 0x97: // NEXT_BUFFER
      case 0x98: // READONLY_BUFFER
        fail("an out-of-band buffer");
        break;
      default:
        fail(`opcode 0x${op.toString(16).padStart(2, "0")}, which no pickle protocol has`);
    }
  }
  return fail("the pickle ends before its STOP");
}
