/**
 * A linear walk over a pickle's opcodes before `parsePickle` (./pickle.ts) parses it, refusing what
 * would cost time or memory out of proportion to the bytes: integers of more than 64 bytes (LONG4,
 * LONG and INT lines: a BigInt from them is quadratic — half a megabyte of LONG4 is minutes),
 * opcodes no pickle protocol has, arguments past the end, and more than `maxOps` opcodes. It runs
 * nothing and allocates nothing.
 */

/** Opcodes without an argument (protocols 0–5). */
const NO_ARG = new Set(
  [
    "(", // MARK
    ".", // STOP
    "0", // POP
    "1", // POP_MARK
    "2", // DUP
    "N", // NONE
    "a", // APPEND
    "e", // APPENDS
    "b", // BUILD
    "d", // DICT
    "}", // EMPTY_DICT
    "]", // EMPTY_LIST
    ")", // EMPTY_TUPLE
    "l", // LIST
    "R", // REDUCE
    "s", // SETITEM
    "u", // SETITEMS
    "t", // TUPLE
    "Q", // BINPERSID
    "o", // OBJ
  ].map((c) => c.charCodeAt(0)),
);
for (const b of [0x85, 0x86, 0x87, 0x88, 0x89, 0x81, 0x92, 0x8f, 0x90, 0x91, 0x93, 0x94, 0x97, 0x98]) NO_ARG.add(b);

/** Opcodes with a fixed-size argument: the size. */
const FIXED: Record<number, number> = {
  [0x4b]: 1, // BININT1 'K'
  [0x68]: 1, // BINGET 'h'
  [0x71]: 1, // BINPUT 'q'
  [0x82]: 1, // EXT1
  [0x80]: 1, // PROTO
  [0x4d]: 2, // BININT2 'M'
  [0x83]: 2, // EXT2
  [0x4a]: 4, // BININT 'J'
  [0x6a]: 4, // LONG_BINGET 'j'
  [0x72]: 4, // LONG_BINPUT 'r'
  [0x84]: 4, // EXT4
  [0x47]: 8, // BINFLOAT 'G'
  [0x95]: 8, // FRAME
};

/** Opcodes with a length then that many bytes: the length's size. */
const COUNTED: Record<number, number> = {
  [0x8a]: 1, // LONG1
  [0x55]: 1, // SHORT_BINSTRING 'U'
  [0x43]: 1, // SHORT_BINBYTES 'C'
  [0x8c]: 1, // SHORT_BINUNICODE
  [0x54]: 4, // BINSTRING 'T'
  [0x42]: 4, // BINBYTES 'B'
  [0x58]: 4, // BINUNICODE 'X'
  [0x8b]: 4, // LONG4
  [0x8d]: 8, // BINUNICODE8
  [0x8e]: 8, // BINBYTES8
  [0x96]: 8, // BYTEARRAY8
};

/** Opcodes whose argument is a line (two for GLOBAL and INST). */
const LINES: Record<number, number> = {
  [0x49]: 1, // INT 'I'
  [0x4c]: 1, // LONG 'L'
  [0x46]: 1, // FLOAT 'F'
  [0x53]: 1, // STRING 'S'
  [0x56]: 1, // UNICODE 'V'
  [0x67]: 1, // GET 'g'
  [0x70]: 1, // PUT 'p'
  [0x50]: 1, // PERSID 'P'
  [0x63]: 2, // GLOBAL 'c'
  [0x69]: 2, // INST 'i'
};

/** Longest integer a pickle of ours may hold (bytes of LONG1/LONG4, digits of an INT/LONG line). */
const MAX_INT_BYTES = 64;

/** Returns null where the pickle may be parsed, else why not. */
export function scanPickle(bytes: Uint8Array, maxOps = 50_000_000): string | null {
  let i = 0,
    ops = 0;
  const n = bytes.length;
  const u = (at: number, size: number) => {
    let v = 0;
    for (let k = size - 1; k >= 0; k--) v = v * 256 + bytes[at + k]!;
    return v;
  };
  while (i < n) {
    if (++ops > maxOps) return `more than ${maxOps} opcodes`;
    const op = bytes[i++]!;
    if (op === 0x2e) return null; // STOP
    if (NO_ARG.has(op)) continue;
    const fixed = FIXED[op];
    if (fixed !== undefined) {
      i += fixed;
      continue;
    }
    const counted = COUNTED[op];
    if (counted !== undefined) {
      if (i + counted > n) break;
      const len = u(i, counted);
      i += counted;
      if ((op === 0x8a || op === 0x8b) && len > MAX_INT_BYTES)
        return `an integer of ${len} bytes at offset ${i - counted - 1} (more than ${MAX_INT_BYTES})`;
      if (len > n - i) break;
      i += len;
      continue;
    }
    const lines = LINES[op];
    if (lines !== undefined) {
      for (let l = 0; l < lines; l++) {
        const end = bytes.indexOf(0x0a, i);
        if (end < 0) return `an unterminated line argument at offset ${i - 1}`;
        if ((op === 0x49 || op === 0x4c) && end - i > MAX_INT_BYTES + 2)
          return `an integer of ${end - i} digits at offset ${i - 1} (more than ${MAX_INT_BYTES})`;
        i = end + 1;
      }
      continue;
    }
    return `opcode 0x${op.toString(16).padStart(2, "0")} at offset ${i - 1}, which no pickle protocol has`;
  }
  return "it ends before its STOP opcode";
}
