/**
 * Malformed DICOM: truncated files, element lengths past the end, missing pixel data, absurd
 * Rows/Columns, inconsistent bit depths, damaged RLE and JPEG streams — each refused with a
 * DicomError that names the file and the problem, quickly and before the volume is allocated;
 * and a bounded, seeded fuzz test over byte mutations and truncations of a real file.
 */
import test from "ava";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { DicomError, readDicomSeries } from "../lib/io/dicom.js";
import { DICOM_FIXTURES } from "./dicom-helpers.js";
import { ROOT } from "./paths.js";

const A = readFileSync(join(DICOM_FIXTURES, "cases", "A_axial", "IM-0001.dcm"));
const RLE = readFileSync(join(DICOM_FIXTURES, "cases", "D_rle", "IM-0001.dcm"));
const JPEG = readFileSync(join(DICOM_FIXTURES, "cases", "E_jpeg_lossless", "IM-0001.dcm"));

/** Offset of an explicit-VR little-endian element header (group, element) in the bytes. */
function findTag(b: Uint8Array, group: number, element: number, vr: string): number {
  for (let i = 132; i + 8 <= b.length; i++) {
    if (
      b[i] === (group & 0xff) &&
      b[i + 1] === group >> 8 &&
      b[i + 2] === (element & 0xff) &&
      b[i + 3] === element >> 8 &&
      b[i + 4] === vr.charCodeAt(0) &&
      b[i + 5] === vr.charCodeAt(1)
    )
      return i;
  }
  throw new Error(`tag ${group.toString(16)},${element.toString(16)} not found`);
}
function withUS(src: Uint8Array, group: number, element: number, value: number): Buffer {
  const b = Buffer.from(src);
  b.writeUInt16LE(value, findTag(b, group, element, "US") + 8);
  return b;
}
const one = (bytes: Uint8Array, name = "bad.dcm") => readDicomSeries([{ name, bytes }]);

async function refused(t: import("ava").ExecutionContext, p: Promise<unknown>, re: RegExp) {
  const t0 = performance.now();
  const e = await t.throwsAsync(p);
  t.true(e instanceof DicomError, `a DicomError, not ${e?.constructor.name}: ${e?.message}`);
  t.regex(e!.message, re);
  t.true(performance.now() - t0 < 5000, "refused within 5 s (a loaded shared machine)");
}

test("truncated files", async (t) => {
  const px = findTag(A, 0x7fe0, 0x0010, "OW");
  await refused(t, one(A.subarray(0, px + 12 + 100)), /bad\.dcm: is truncated/);
  await refused(t, one(A.subarray(0, 300)), /bad\.dcm: is truncated/);
  await refused(t, one(A.subarray(0, 100)), /bad\.dcm: is not a DICOM file/);
});

test("an element length that runs past the end of the file", async (t) => {
  const b = Buffer.from(A);
  const at = findTag(b, 0x0008, 0x103e, "LO"); // SeriesDescription
  b.writeUInt16LE(0xfff0, at + 6);
  await refused(t, one(b), /bad\.dcm: is (truncated|not a readable DICOM file)/);
});

test("missing pixel data", async (t) => {
  const px = findTag(A, 0x7fe0, 0x0010, "OW");
  await refused(t, one(A.subarray(0, px)), /bad\.dcm has no Pixel Data \(7FE0,0010\)/);
});

test("absurd Rows/Columns are refused from the header, before anything is allocated", async (t) => {
  await refused(
    t,
    one(withUS(withUS(A, 0x0028, 0x0010, 65535), 0x0028, 0x0011, 65535)),
    /has 17600 bytes of Pixel Data where Rows 65535 × Columns 65535 × 2 bytes need 8589672450/,
  );
  await refused(t, one(withUS(A, 0x0028, 0x0010, 0)), /has Rows 0 \(1…65535 expected\)/);
});

test("inconsistent bit depths", async (t) => {
  await refused(t, one(withUS(A, 0x0028, 0x0101, 20)), /has BitsStored 20 with BitsAllocated 16/);
  await refused(t, one(withUS(A, 0x0028, 0x0102, 7)), /has HighBit 7 with BitsStored 16/);
  await refused(t, one(withUS(A, 0x0028, 0x0100, 12)), /has BitsAllocated 12 \(8, 16 or 32 expected\)/);
  await refused(t, one(withUS(A, 0x0028, 0x0103, 3)), /has PixelRepresentation 3/);
  await refused(t, one(withUS(A, 0x0028, 0x0002, 3)), /has SamplesPerPixel 3/);
});

test("damaged RLE and JPEG lossless streams", async (t) => {
  const r = Buffer.from(RLE);
  const px = findTag(r, 0x7fe0, 0x0010, "OB");
  // The first fragment after the (empty) basic offset table item: its RLE header's segment count.
  const bot = r.readUInt32LE(px + 12 + 4); // basic offset table item length
  const frag = px + 12 + 8 + bot + 8;
  r.writeUInt32LE(3, frag);
  await refused(t, one(r), /RLE frame with 3 segments where BitsAllocated 16 needs 2/);
  const r2 = Buffer.from(RLE);
  r2.writeUInt32LE(0x7fffffff, frag + 8);
  await refused(t, one(r2), /RLE segment \d with offsets outside the frame/);
  const j = Buffer.from(JPEG);
  const jp = findTag(j, 0x7fe0, 0x0010, "OB");
  for (let i = jp + 12 + 8 + j.readUInt32LE(jp + 16) + 8 + 400; i < j.length - 8; i++) j[i] = 0xff; // up to the sequence delimiter: the stream loses its end (EOI)
  // (JPEG entropy-coded data has no checksum: damage that keeps the markers decodes to other values, in every decoder)
  await refused(t, one(j), /JPEG pixel data without its EOI marker/);
  const j2 = Buffer.from(JPEG);
  const sof = j2.indexOf(Buffer.from([0xff, 0xc3]), jp);
  j2.writeUInt16BE(99, sof + 5); // the frame claims 99 rows where the header says 100
  await refused(t, one(j2), /has a JPEG frame of 88×99 where Columns × Rows are 88×100/);
});

test("damaged JPEG-LS: a truncated stream and a frame header of another size", async (t) => {
  const q = join(ROOT, "test", "fixtures", "dicom-extra", "cases", "Q_jpeg_ls", "IM-0001.dcm");
  const b = Buffer.from(readFileSync(q));
  await one(b, "good.dcm"); // loads the WebAssembly codec once, outside the timed refusals
  const px = findTag(b, 0x7fe0, 0x0010, "OB");
  const start = px + 12 + 8 + b.readUInt32LE(px + 16) + 8;
  const cut = Buffer.from(b);
  cut.fill(0, start + 600, cut.length - 8);
  await refused(t, one(cut), /JPEG pixel data without its EOI marker|JPEG-LS pixel data that does not decode/);
  const sof = Buffer.from(b);
  const at = sof.indexOf(Buffer.from([0xff, 0xf7]), start);
  sof.writeUInt16BE(99, at + 5);
  await refused(t, one(sof), /has a JPEG frame of 88×99 where Columns × Rows are 88×100/);
});

test("fuzz: 400 seeded mutations and truncations of a real file either read or fail with a DicomError, each quickly", async (t) => {
  let seed = 12345;
  const rand = () => (seed = (Math.imul(seed, 1103515245) + 12345) >>> 0) / 2 ** 32;
  const sources = [A, RLE, JPEG];
  let refusedCount = 0,
    read = 0;
  const times: number[] = [];
  for (let it = 0; it < 400; it++) {
    const src = sources[it % 3]!;
    let b: Buffer;
    if (it % 4 === 3) b = Buffer.from(src.subarray(0, Math.floor(rand() * src.length)));
    else {
      b = Buffer.from(src);
      const n = 1 + Math.floor(rand() * 8);
      // Mutations concentrated in the header (the first 1.5 kB), where lengths and tags live.
      for (let k = 0; k < n; k++) b[132 + Math.floor(rand() * Math.min(1500, b.length - 132))] = Math.floor(rand() * 256);
    }
    const t0 = performance.now();
    try {
      const v = await one(b, `fuzz-${it}.dcm`);
      t.true(v.data.length === v.dims[0] * v.dims[1] * v.dims[2]);
      read++;
    } catch (e) {
      if (!(e instanceof DicomError)) t.fail(`iteration ${it}: ${(e as Error)?.constructor?.name}: ${(e as Error)?.message}`);
      else refusedCount++;
    }
    times.push(performance.now() - t0);
  }
  times.sort((a, b) => a - b);
  const worst = times.at(-1)!,
    median = times[times.length >> 1]!;
  t.log(`${read} read, ${refusedCount} refused, median ${median.toFixed(1)} ms, slowest ${worst.toFixed(0)} ms`);
  t.true(refusedCount > 50, "the mutations do break files");
  // (what this guards against is a file that takes minutes: a loaded machine's pauses have made one
  // case take 0.06–3.4 s in CI, so the bound on the slowest is loose and the typical case is held too)
  t.true(worst < 15_000, `every case within 15 s (slowest ${worst.toFixed(0)} ms)`);
  t.true(median < 500, `the median case within 0.5 s (${median.toFixed(1)} ms)`);
});

/** A minimal explicit-VR little-endian element and Part 10 file (for files built in memory). */
function el(group: number, element: number, vr: string, value: string | Uint8Array): Buffer {
  const v =
    typeof value === "string" ? Buffer.from(value.length % 2 ? value + (vr === "UI" ? "\0" : " ") : value, "latin1") : Buffer.from(value);
  const long = ["OB", "OW", "SQ", "UN", "UT"].includes(vr);
  const h = Buffer.alloc(long ? 12 : 8);
  h.writeUInt16LE(group, 0);
  h.writeUInt16LE(element, 2);
  h.write(vr, 4, "latin1");
  if (long) h.writeUInt32LE(v.length, 8);
  else h.writeUInt16LE(v.length, 6);
  return Buffer.concat([h, v]);
}
const us = (n: number) => Buffer.from(Uint16Array.of(n).buffer);
function part10(dataSet: Buffer, ts: string): Buffer {
  const meta = el(2, 0x10, "UI", ts);
  const length = Buffer.alloc(4);
  length.writeUInt32LE(meta.length);
  return Buffer.concat([Buffer.alloc(128), Buffer.from("DICM"), el(2, 0, "UL", length), meta, dataSet]);
}
/** A one-pixel CT slice at z (series 1.2.3). */
function pixel(z: number, extra: Buffer[] = []): Buffer {
  return Buffer.concat([
    el(8, 0x16, "UI", "1.2.840.10008.5.1.4.1.1.2"),
    el(8, 0x18, "UI", `1.2.3.4.${z}`),
    el(8, 0x60, "CS", "CT"),
    el(0x20, 0x0d, "UI", "1.2.3.9"),
    el(0x20, 0x0e, "UI", "1.2.3"),
    el(0x20, 0x32, "DS", `0\\0\\${z}`),
    el(0x20, 0x37, "DS", "1\\0\\0\\0\\1\\0"),
    el(0x28, 0x02, "US", us(1)),
    el(0x28, 0x04, "CS", "MONOCHROME2"),
    el(0x28, 0x10, "US", us(1)),
    el(0x28, 0x11, "US", us(1)),
    el(0x28, 0x30, "DS", "1\\1"),
    el(0x28, 0x100, "US", us(16)),
    el(0x28, 0x101, "US", us(16)),
    el(0x28, 0x102, "US", us(15)),
    el(0x28, 0x103, "US", us(1)),
    ...extra,
    el(0x7fe0, 0x10, "OW", us(z)),
  ]);
}

test("deflated files share one inflate budget, options.maxBytes, over the whole read", async (t) => {
  const { deflateRawSync } = await import("node:zlib");
  // each file: 24 bytes of deflate that inflate to a 400 kB private element beside a one-pixel slice
  const deflated = (z: number) => ({
    name: `d${z}.dcm`,
    bytes: part10(deflateRawSync(pixel(z, [el(0x0009, 0x1000, "OB", new Uint8Array(400_000))]), { level: 9 }), "1.2.840.10008.1.2.1.99"),
  });
  t.true(deflated(0).bytes.length < 2000);
  const maxBytes = 1 << 20;
  // two of them fit in 1 MiB: read (the inflated data sets are parsed, the pixels are the slices')
  const two = await readDicomSeries([deflated(0), deflated(1)], { maxBytes, workers: 0 });
  t.deepEqual([...two.dims], [1, 1, 2]);
  t.deepEqual([...two.data], [0, 1]);
  // three do not: the third is refused for what the first two took, not for its own size
  await refused(
    t,
    readDicomSeries([deflated(0), deflated(1), deflated(2)], { maxBytes, workers: 0 }),
    /d2\.dcm: has a deflated data set that does not inflate within the \d+ bytes left of options\.maxBytes = 1048576 after the deflated files before it/,
  );
});

test("reading thousands of small files lets the event loop turn (a service reading a zip of them answers meanwhile), and their grouping stays linear", async (t) => {
  const n = 20_000;
  const files = Array.from({ length: n }, (_, z) => ({ name: `s${z}.dcm`, bytes: part10(pixel(z), "1.2.840.10008.1.2.1") }));
  // the longest the event loop waited between two turns while the files were read
  let reading = true;
  let last = performance.now();
  let longest = 0;
  const turn = () => {
    const now = performance.now();
    longest = Math.max(longest, now - last);
    last = now;
    if (reading) setImmediate(turn);
  };
  setImmediate(turn);
  const t0 = performance.now();
  const v = await readDicomSeries(files, { workers: 0 });
  reading = false;
  t.deepEqual([...v.dims], [1, 1, n]);
  t.is(v.data[n - 1], n - 1); // (each slice's one pixel is its z)
  t.log(`${n} files in ${(performance.now() - t0).toFixed(0)} ms; the event loop waited at most ${longest.toFixed(0)} ms`);
  // before: seconds without a turn while the files were parsed, and 30 000 of them took 6 s to
  // group (a copy of the list a file); now a turn every 64 files, 150 ms at most here
  t.true(longest < 2000, `the event loop waited ${longest.toFixed(0)} ms`);
});

test("options.signal stops a read between files (an aborted service request stops its DICOM work); a signal that is not an AbortSignal is refused", async (t) => {
  const files = Array.from({ length: 4000 }, (_, z) => ({ name: `s${z}.dcm`, bytes: part10(pixel(z), "1.2.840.10008.1.2.1") }));
  const ctl = new AbortController();
  setImmediate(() => ctl.abort(new Error("the client left")));
  await t.throwsAsync(readDicomSeries(files, { workers: 0, signal: ctl.signal }), { message: "the client left" });
  await t.throwsAsync(readDicomSeries(files, { signal: AbortSignal.abort(new Error("already")) }), { message: "already" });
  await t.throwsAsync(readDicomSeries(files, { signal: {} as never }), { message: /Expected an AbortSignal for options\.signal/ });
});
