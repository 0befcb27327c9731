import test from "ava";
import { mkdirSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { gunzipSync, gzipSync } from "node:zlib";
import { readNifti } from "../lib/index.js";
import type { Volume } from "../lib/types.js";
import { NIFTI_FIXTURES } from "./helpers.js";
import { CASES, SEED, caseRng, type Rng } from "./fuzz-rng.js";

// A bounded fuzzer over readNifti: valid files written by nibabel (test/fixtures/nifti), mutated —
// bit flips, bytes set to edge values, truncation, garbage appended, header fields (dims, pixdim,
// vox_offset, datatype, bitpix, scl_slope/inter, qform/sform, sizeof_hdr, magic) set to absurd
// values, the result gzipped or not, or the gzip stream itself damaged. Every case must either
// reject with an Error whose message names the input, or give a consistent Volume, within a time
// bound and without allocating past maxBytes. BHSD_FUZZ_CASES sets the count (`npm run fuzz`:
// many), BHSD_FUZZ_SEED the seed; a failure names its case, and its bytes are kept for a rerun.
const N = CASES(200);
const MAX_BYTES = 16 << 20;
const CASE_MS = 5000; // a case takes well under a millisecond; this is for a loaded machine
const keep = join(tmpdir(), `bhsd-fuzz-nifti-${SEED}`);

const seeds = readdirSync(NIFTI_FIXTURES)
  .filter((f) => /\.nii(\.gz)?$/.test(f))
  .sort()
  .map((f) => {
    const raw = readFileSync(join(NIFTI_FIXTURES, f));
    const plain = raw[0] === 0x1f && raw[1] === 0x8b ? gunzipSync(raw) : raw;
    return { name: f, plain, gz: raw !== plain };
  });

/** The header's byte order and version, from sizeof_hdr (348: NIfTI-1, 540: NIfTI-2). */
function layout(b: Buffer): { le: boolean; v2: boolean } | null {
  if (b.length < 4) return null;
  for (const le of [true, false]) {
    const s = le ? b.readInt32LE(0) : b.readInt32BE(0);
    if (s === 348) return { le, v2: false };
    if (s === 540) return { le, v2: true };
  }
  return null;
}

const EDGE_INTS = [0, -1, 1, 2, 3, 7, 8, 255, 256, 32767, -32768, 65535, 2 ** 31 - 1, -(2 ** 31), 1e6];
const EDGE_FLOATS = [0, -0, -1, 1e-45, 1e-30, 1e30, 3.4e38, Infinity, -Infinity, NaN, 0.5, 352.5, 1e300, -1e300];
const DATATYPES = [0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 768, 1024, 1280, 1536, 1792, 2048, 2304, 999, -1, 32767];

/** Sets one header field to an edge value; returns what it did. */
function mutateField(b: Buffer, rng: Rng): string {
  const l = layout(b);
  if (!l) return "no header";
  const { le, v2 } = l;
  const i16 = (o: number, v: number) =>
    o + 2 <= b.length ? (le ? b.writeInt16LE((v << 16) >> 16, o) : b.writeInt16BE((v << 16) >> 16, o)) : 0;
  const i32 = (o: number, v: number) => (o + 4 <= b.length ? (le ? b.writeInt32LE(v | 0, o) : b.writeInt32BE(v | 0, o)) : 0);
  const i64 = (o: number, v: number) => {
    const n = BigInt(Math.trunc(Math.max(-(2 ** 63), Math.min(2 ** 62, v))));
    return o + 8 <= b.length ? (le ? b.writeBigInt64LE(n, o) : b.writeBigInt64BE(n, o)) : 0;
  };
  const f32 = (o: number, v: number) => (o + 4 <= b.length ? (le ? b.writeFloatLE(v, o) : b.writeFloatBE(v, o)) : 0);
  const f64 = (o: number, v: number) => (o + 8 <= b.length ? (le ? b.writeDoubleLE(v, o) : b.writeDoubleBE(v, o)) : 0);
  const flt = () => rng.pick(EDGE_FLOATS);
  const which = rng.pick([
    "dim",
    "dim0",
    "pixdim",
    "vox_offset",
    "datatype",
    "bitpix",
    "scl",
    "qform",
    "sform",
    "sizeof_hdr",
    "magic",
  ] as const);
  const k = rng.int(8);
  switch (which) {
    case "dim": {
      const v = rng.pick([...EDGE_INTS, 1000, 30000, 2 ** 20]);
      v2 ? i64(16 + 8 * k, v) : i16(40 + 2 * k, v);
      return `dim[${k}] = ${v}`;
    }
    case "dim0": {
      const v = rng.pick([-1, 0, 1, 2, 3, 4, 5, 7, 8, 100]);
      v2 ? i64(16, v) : i16(40, v);
      return `dim[0] = ${v}`;
    }
    case "pixdim": {
      const v = flt();
      v2 ? f64(104 + 8 * k, v) : f32(76 + 4 * k, v);
      return `pixdim[${k}] = ${v}`;
    }
    case "vox_offset": {
      const v = rng.pick([...EDGE_FLOATS, 348, 351, 352, 353, 540, 544, 2 ** 40, -352]);
      v2 ? i64(168, Number.isFinite(v) ? v : -1) : f32(108, v);
      return `vox_offset = ${v}`;
    }
    case "datatype": {
      const v = rng.pick(DATATYPES);
      v2 ? i16(12, v) : i16(70, v);
      return `datatype = ${v}`;
    }
    case "bitpix": {
      const v = rng.pick([0, 1, 7, 8, 16, 32, 64, 128, -8, 32767]);
      v2 ? i16(14, v) : i16(72, v);
      return `bitpix = ${v}`;
    }
    case "scl": {
      const v = flt();
      const inter = rng.bool();
      v2 ? f64(inter ? 184 : 176, v) : f32(inter ? 116 : 112, v);
      return `scl_${inter ? "inter" : "slope"} = ${v}`;
    }
    case "qform":
    case "sform": {
      const code = rng.pick([-1, 0, 1, 2, 3, 4, 5, 32767]);
      const s = which === "sform";
      if (rng.bool()) {
        v2 ? i32(s ? 348 : 344, code) : i16(s ? 254 : 252, code);
        return `${which}_code = ${code}`;
      }
      const idx = rng.int(s ? 12 : 6);
      const v = flt();
      v2 ? f64((s ? 400 : 352) + 8 * idx, v) : f32((s ? 280 : 256) + 4 * idx, v);
      return `${which} parameter ${idx} = ${v}`;
    }
    case "sizeof_hdr": {
      const v = rng.pick([0, -1, 347, 349, 540, 348, 2 ** 31 - 1]);
      i32(0, v);
      return `sizeof_hdr = ${v}`;
    }
    case "magic": {
      const m = rng.pick(["ni1\0", "n+1\0", "n+2\0", "ni2\0", "xyz\0", "\0\0\0\0"]);
      const off = v2 ? 4 : 344;
      if (off + 4 <= b.length) b.write(m, off, "latin1");
      return `magic = ${JSON.stringify(m)}`;
    }
  }
}

function mutate(plain: Buffer, gz: boolean, rng: Rng): { bytes: Buffer; what: string[] } {
  let b = Buffer.from(plain);
  const what: string[] = [];
  const steps = 1 + rng.int(3);
  for (let s = 0; s < steps; s++) {
    const kind = rng.pick(["field", "field", "field", "flip", "byte", "truncate", "append"] as const);
    if (kind === "field") what.push(mutateField(b, rng));
    else if (kind === "flip" && b.length) {
      const n = 1 + rng.int(8);
      for (let i = 0; i < n; i++) {
        const at = rng.bool() ? rng.int(Math.min(b.length, 352)) : rng.int(b.length);
        b[at]! ^= 1 << rng.int(8);
      }
      what.push(`${n} bit flips`);
    } else if (kind === "byte" && b.length) {
      const at = rng.int(Math.min(b.length, 544));
      b[at] = rng.pick([0, 0xff, 0x7f, 0x80, 0x01]);
      what.push(`byte ${at} = ${b[at]}`);
    } else if (kind === "truncate") {
      const to = rng.bool() ? rng.int(b.length + 1) : rng.int(Math.min(b.length, 600));
      b = b.subarray(0, to);
      what.push(`truncated to ${to} bytes`);
    } else if (kind === "append") {
      const n = rng.int(4096);
      b = Buffer.concat([b, Buffer.from(Array.from({ length: n }, () => rng.int(256)))]);
      what.push(`${n} bytes appended`);
    }
  }
  const zip = gz ? rng.int(4) !== 0 : rng.int(4) === 0;
  if (!zip) return { bytes: b, what };
  let z = gzipSync(b);
  what.push("gzipped");
  if (rng.int(5) === 0 && z.length > 20) {
    const d = rng.pick(["flip", "truncate"] as const);
    if (d === "flip") {
      const at = 10 + rng.int(z.length - 10);
      z[at]! ^= 1 << rng.int(8);
      what.push(`gzip byte ${at} flipped`);
    } else {
      const to = rng.int(z.length);
      z = z.subarray(0, to);
      what.push(`gzip stream truncated to ${to}`);
    }
  }
  return { bytes: z, what };
}

/** What a Volume must be, whatever file it came from. */
function volumeProblem(v: Volume): string | null {
  if (!Array.isArray(v.dims) || v.dims.length !== 3 || !v.dims.every((d) => Number.isInteger(d) && d > 0))
    return `dims ${JSON.stringify(v.dims)}`;
  const n = v.dims[0] * v.dims[1] * v.dims[2];
  if (!ArrayBuffer.isView(v.data) || (v.data as unknown as { length: number }).length !== n)
    return `data length ${(v.data as unknown as { length: number })?.length} for dims ${v.dims}`;
  if (v.data.byteLength > MAX_BYTES) return `data of ${v.data.byteLength} bytes past maxBytes`;
  if (!Array.isArray(v.spacing) || v.spacing.length !== 3 || !v.spacing.every((s) => typeof s === "number" && Number.isFinite(s) && s > 0))
    return `spacing ${JSON.stringify(v.spacing)}`;
  if (!Array.isArray(v.affine) || v.affine.length !== 16 || !v.affine.every((x) => Number.isFinite(x)))
    return `affine ${JSON.stringify(v.affine)}`;
  return null;
}

test(`readNifti: ${N} mutated files each reject with an Error naming the input or give a consistent Volume, within ${CASE_MS} ms and maxBytes (seed ${SEED})`, async (t) => {
  const failures: string[] = [];
  let rejected = 0,
    read = 0;
  for (let i = 0; i < N; i++) {
    const rng = caseRng(SEED, i);
    const seed = rng.pick(seeds);
    const { bytes, what } = mutate(seed.plain, seed.gz, rng);
    const label = `case ${i} (${seed.name}: ${what.join(", ")})`;
    const before = process.memoryUsage().arrayBuffers;
    const t0 = performance.now();
    let problem: string | null = null;
    try {
      const v = await readNifti(bytes, { name: "fuzz.nii", maxBytes: MAX_BYTES });
      read++;
      problem = volumeProblem(v);
    } catch (e) {
      rejected++;
      if (!(e instanceof Error)) problem = `threw a non-Error ${String(e)}`;
      else if (!e.message.startsWith("fuzz.nii")) problem = `error does not name the input: ${e.name}: ${e.message}`;
    }
    const ms = performance.now() - t0;
    if (ms > CASE_MS) problem = `${problem ? problem + "; " : ""}took ${ms.toFixed(0)} ms`;
    const grew = process.memoryUsage().arrayBuffers - before;
    if (grew > 4 * MAX_BYTES + (64 << 20))
      problem = `${problem ? problem + "; " : ""}array buffers grew by ${(grew / 2 ** 20).toFixed(0)} MB`;
    if (problem) {
      mkdirSync(keep, { recursive: true });
      const file = join(keep, `case-${i}.bin`);
      writeFileSync(file, bytes);
      failures.push(`${label}: ${problem} [bytes: ${file}]`);
    }
  }
  t.log(`${N} cases: ${rejected} rejected, ${read} read`);
  t.deepEqual(failures, []);
  t.true(rejected > 0 && read > 0, "the mutations reach both outcomes");
});
