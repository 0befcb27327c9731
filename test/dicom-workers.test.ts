/**
 * Compressed series decoded on worker threads: every compressed fixture (RLE, JPEG Lossless,
 * JPEG-LS) read with workers 0 and with workers 2 equals dcm2niix's NIfTI (world space, affine
 * within 1e-4 mm, voxels equal) with progress per slice up to the total; a damaged stream decoded in
 * a worker is the same DicomError, naming the file, as on the calling thread; the bounds are checked
 * before any worker starts; and a process that read through workers (and one whose read failed)
 * exits by itself — no thread or handle is left behind.
 */
import test from "ava";
import { spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import { cpSync, existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Worker } from "node:worker_threads";
import { DicomError, readDicomSeries } from "../lib/io/dicom.js";
import { poolSize } from "../lib/io/dicom-decode-pool.js";
import { readNifti } from "../lib/io/nifti.js";
import { compareWorld, DICOM_FIXTURES } from "./dicom-helpers.js";
import { ROOT } from "./paths.js";

const EXTRA = join(ROOT, "test", "fixtures", "dicom-extra");
const tmp = mkdtempSync(join(tmpdir(), "bhsd-dcmworkers-"));
test.after.always(() => rmSync(tmp, { recursive: true, force: true }));

interface Case {
  case: string;
  folder: string;
  dcm2niix: { outputs: string[] };
  reference_via_dcmdjpls?: { outputs: string[] };
}
const shared = JSON.parse(readFileSync(join(DICOM_FIXTURES, "manifest.json"), "utf8")) as { cases: Case[] };
const extra = JSON.parse(readFileSync(join(EXTRA, "manifest.json"), "utf8")) as { cases: Case[] };
const compressed: { root: string; c: Case }[] = [
  { root: DICOM_FIXTURES, c: shared.cases.find((c) => c.case === "D")! },
  { root: DICOM_FIXTURES, c: shared.cases.find((c) => c.case === "E")! },
  { root: EXTRA, c: extra.cases.find((c) => c.case === "Q_jpeg_ls")! },
];

/** The id the next thread started in this process will get: a probe worker's threadId (ids only grow). */
async function nextThreadId(): Promise<number> {
  const w = new Worker("", { eval: true });
  const id = w.threadId;
  await w.terminate();
  return id + 1;
}

for (const { root, c } of compressed) {
  for (const workers of [0, 2]) {
    test.serial(`${c.folder}, workers ${workers}: equals dcm2niix's NIfTI; progress per slice up to the total`, async (t) => {
      t.timeout(120_000);
      const before = await nextThreadId();
      const progress: [number, number][] = [];
      const vol = await readDicomSeries(join(root, c.folder), { workers, onProgress: (d, n) => progress.push([d, n]) });
      // Threads started by the read (the probe itself takes one id): none with workers 0; with
      // workers 2, two, each of which under tsx (these tests) starts its module-loader thread too.
      const started = (await nextThreadId()) - before - 1;
      if (workers === 0) t.is(started, 0, "no thread with workers 0");
      else t.true(started === workers || started === 2 * workers, `${workers} workers (and their tsx loader threads): ${started} threads`);
      const outputs = c.reference_via_dcmdjpls?.outputs ?? c.dcm2niix.outputs;
      const ref = await readNifti(join(root, outputs.filter((o) => o.endsWith(".nii.gz")).sort((a, b) => a.length - b.length)[0]!));
      const cmp = compareWorld(vol, ref, ref.meta!.scaled ? 1 : ref.meta!.sclSlope || 1, ref.meta!.scaled ? 0 : ref.meta!.sclInter);
      t.true(cmp.sameCount);
      t.true(cmp.nonInteger < 1e-4);
      t.is(cmp.outside, 0);
      t.true(cmp.worldMm <= 1e-4, `affine within 1e-4 mm (${cmp.worldMm})`);
      t.is(cmp.maxDiff, 0, "voxels equal");
      const nz = vol.dims[2];
      t.deepEqual(
        progress,
        Array.from({ length: nz }, (_, k) => [k + 1, nz]),
        "one call per slice, done counting up to the total",
      );
    });
  }
}

/** A copy of a compressed fixture folder with one file's stream damaged by `damage`. */
function damagedCopy(folder: string, name: string, file: string, damage: (b: Buffer, frag: number) => void): { dir: string; path: string } {
  const dir = join(tmp, name);
  cpSync(join(DICOM_FIXTURES, folder), dir, { recursive: true });
  const path = join(dir, file);
  const b = readFileSync(path);
  const px = b.indexOf(Buffer.from([0xe0, 0x7f, 0x10, 0x00, 0x4f, 0x42])); // (7FE0,0010) OB
  if (px < 0) throw new Error("no encapsulated Pixel Data in the fixture");
  const bot = b.readUInt32LE(px + 12 + 4); // basic offset table item length
  damage(b, px + 12 + 8 + bot + 8); // the first fragment's first byte
  writeFileSync(path, b);
  return { dir, path };
}

const damages: [string, string, (b: Buffer, frag: number) => void, RegExp][] = [
  ["D_rle", "rle-segments", (b, frag) => b.writeUInt32LE(3, frag), /has an RLE frame with 3 segments where BitsAllocated 16 needs 2/],
  ["E_jpeg_lossless", "jpeg-eoi", (b, frag) => b.fill(0xff, frag + 400, b.length - 8), /has JPEG pixel data without its EOI marker/],
];
for (const [folder, name, damage, re] of damages) {
  test.serial(`a damaged ${folder} stream decoded in a worker is the calling thread's DicomError, naming the file`, async (t) => {
    t.timeout(120_000);
    const files = readdirSync(join(DICOM_FIXTURES, "cases", folder)).sort();
    const { dir, path } = damagedCopy(join("cases", folder), name, files[11]!, damage);
    const messages: string[] = [];
    for (const workers of [0, 2]) {
      let calls = 0;
      const e = await t.throwsAsync(readDicomSeries(dir, { workers, onProgress: () => calls++ }));
      t.true(e instanceof DicomError, `workers ${workers}: a DicomError, not ${e?.constructor.name}: ${e?.message}`);
      t.true(e!.message.startsWith(`${path}: `), `workers ${workers}: names the file (${e!.message})`);
      t.regex(e!.message, re);
      t.true(calls < files.length, "progress never reaches the total of a failed read");
      messages.push(e!.message);
    }
    t.is(messages[1], messages[0], "the same message on a worker as on the calling thread");
  });
}

test.serial("the bounds are checked before any worker starts", async (t) => {
  const before = await nextThreadId();
  const e = await t.throwsAsync(readDicomSeries(join(DICOM_FIXTURES, "cases", "D_rle"), { workers: 2, maxBytes: 1000 }));
  t.true(e instanceof DicomError);
  t.regex(e!.message, /more than options\.maxBytes = 1000/);
  t.is(await nextThreadId(), before + 1, "no thread started but the probe");
});

test("options.workers is validated: its name, what was expected and what came", async (t) => {
  for (const bad of [-1, 1.5, 65, "2", Number.NaN]) {
    const e = await t.throwsAsync(readDicomSeries(join(DICOM_FIXTURES, "cases", "D_rle"), { workers: bad as number }));
    t.regex(e!.message, /an integer from 0 \(the calling thread\) to 64 for options\.workers but received/);
  }
});

test("pool size: the option, capped by the compressed slices; by default workers only for ≥ 4 × 512² compressed pixels", (t) => {
  t.is(poolSize(2, 20, 88 * 100), 2);
  t.is(poolSize(4, 3, 88 * 100), 3);
  t.is(poolSize(0, 40, 512 * 512), 0);
  t.is(poolSize(3, 0, 512 * 512), 0);
  t.is(poolSize(undefined, 20, 88 * 100), 0, "a small series decodes on the calling thread");
  t.is(poolSize(undefined, 3, 512 * 512), 0);
  const n = poolSize(undefined, 40, 512 * 512);
  t.true(n >= 1 && n <= 4, `min(available parallelism, 4, 40) = ${n}`);
});

/** sha256 of E_jpeg_lossless read on the calling thread (equal to dcm2niix's voxels: the tests above). */
async function shaOnCallingThread(): Promise<string> {
  const v = await readDicomSeries(join(DICOM_FIXTURES, "cases", "E_jpeg_lossless"), { workers: 0 });
  return createHash("sha256")
    .update(new Uint8Array(v.data.buffer, v.data.byteOffset, v.data.byteLength))
    .digest("hex");
}

// A process that read through workers must end by itself: a leaked worker, port or timer keeps it alive.
const CHILD = `
import { createHash } from "node:crypto";
import { readDicomSeries } from ${JSON.stringify(join(ROOT, "lib", "io", "dicom.ts"))};
const v = await readDicomSeries(process.argv[2], { workers: 2 });
let failed = "";
try { await readDicomSeries(process.argv[3], { workers: 2 }); } catch (e) { failed = e.name; }
const sha = createHash("sha256").update(new Uint8Array(v.data.buffer, v.data.byteOffset, v.data.byteLength)).digest("hex");
console.log(JSON.stringify({ dims: v.dims, sha, failed, resources: process.getActiveResourcesInfo() }));
`;
test.serial("a process that decoded on workers, and had a read fail there, exits by itself", async (t) => {
  t.timeout(120_000);
  const files = readdirSync(join(DICOM_FIXTURES, "cases", "D_rle")).sort();
  const { dir } = damagedCopy(join("cases", "D_rle"), "rle-child", files[3]!, damages[0]![2]);
  const script = join(tmp, "child.mts");
  writeFileSync(script, CHILD);
  const t0 = performance.now();
  const r = spawnSync(process.execPath, ["--import", "tsx", script, join(DICOM_FIXTURES, "cases", "E_jpeg_lossless"), dir], {
    encoding: "utf8",
    cwd: ROOT,
    timeout: 60_000,
  });
  t.log(`child ran ${(performance.now() - t0).toFixed(0)} ms`);
  t.is(r.signal, null, "ended by itself, not killed at the timeout");
  t.is(r.status, 0, r.stderr);
  const out = JSON.parse(r.stdout) as { dims: number[]; sha: string; failed: string; resources: string[] };
  t.deepEqual(out.dims, [88, 100, 20]);
  t.is(out.failed, "DicomError");
  t.false(
    out.resources.some((x) => /Worker|MessagePort/i.test(x)),
    `no worker or port left: ${out.resources.join(", ")}`,
  );
  t.is(out.sha, await shaOnCallingThread(), "the voxels of the calling thread's read");
});

// The same from the compiled package (npm test builds dist/ first): the worker is dist/io/dicom-decode-worker.js, without tsx.
const DIST = join(ROOT, "dist", "io", "dicom.js");
(existsSync(DIST) ? test.serial : test.skip)(
  `from compiled dist/, without tsx: decodes on workers and exits by itself${existsSync(DIST) ? "" : " (skipped: dist/ is not built; npm run build:ts)"}`,
  async (t) => {
    t.timeout(120_000);
    const script = join(tmp, "child-dist.mjs");
    writeFileSync(script, CHILD.replace(JSON.stringify(join(ROOT, "lib", "io", "dicom.ts")), JSON.stringify(DIST)));
    const files = readdirSync(join(DICOM_FIXTURES, "cases", "D_rle")).sort();
    const { dir } = damagedCopy(join("cases", "D_rle"), "rle-child-dist", files[5]!, damages[0]![2]);
    const r = spawnSync(process.execPath, [script, join(DICOM_FIXTURES, "cases", "E_jpeg_lossless"), dir], {
      encoding: "utf8",
      cwd: ROOT,
      timeout: 60_000,
    });
    t.is(r.signal, null, "ended by itself, not killed at the timeout");
    t.is(r.status, 0, r.stderr);
    const out = JSON.parse(r.stdout) as { dims: number[]; sha: string; failed: string; resources: string[] };
    t.deepEqual(out.dims, [88, 100, 20]);
    t.is(out.failed, "DicomError");
    t.is(out.sha, await shaOnCallingThread(), "the voxels of the calling thread's read");
  },
);
