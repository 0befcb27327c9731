import test from "ava";
import { execFile } from "node:child_process";
import { promisify } from "node:util";
import { closeSync, constants, mkdtempSync, openSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { gzipSync } from "node:zlib";
import { readNifti, readNiftiHeader } from "../lib/index.js";
import { NIFTI_FIXTURES } from "./helpers.js";

// Corruptions of a valid little-endian NIfTI-1 file written by nibabel (vox_offset 352).
const execFileAsync = promisify(execFile);
const good = readFileSync(join(NIFTI_FIXTURES, "labels_uint16.nii"));
const tmp = mkdtempSync(join(tmpdir(), "bhsd-bad-"));

function edit(fn: (b: Buffer) => void, bytes: Buffer = good): Buffer {
  const b = Buffer.from(bytes);
  fn(b);
  return b;
}

/** A 400-byte file whose header claims nx·ny·nz uint8 voxels. */
function claims(nx: number, ny: number, nz: number): Buffer {
  return edit(
    (b) => {
      b.writeInt16LE(3, 40);
      b.writeInt16LE(nx, 42);
      b.writeInt16LE(ny, 44);
      b.writeInt16LE(nz, 46);
      b.writeInt16LE(2, 70); // uint8
      b.writeInt16LE(8, 72);
    },
    good.subarray(0, 400),
  );
}

const gz = gzipSync(good);
const cases: [string, Buffer, RegExp][] = [
  ["empty file", Buffer.alloc(0), /empty file/],
  ["truncated header", good.subarray(0, 200), /truncated header: 200 bytes/],
  ["3 bytes", good.subarray(0, 3), /truncated header/],
  ["not NIfTI at all", Buffer.from("hello, this is not a NIfTI file at all, just text ".repeat(10)), /not a NIfTI file: sizeof_hdr/],
  ["bad magic", edit((b) => b.write("xyz\0", 344, "latin1")), /bad magic "xyz\\x00"/],
  ["two-file magic", edit((b) => b.write("ni1\0", 344, "latin1")), /two-file NIfTI-1/],
  ["negative dim", edit((b) => b.writeInt16LE(-5, 44)), /dim\[2\] is negative \(-5\)/],
  ["dim[0] out of range", edit((b) => b.writeInt16LE(9, 40)), /dim\[0\] is 9; it must be 1 to 7/],
  ["zero dim", edit((b) => b.writeInt16LE(0, 46)), /dim\[3\] is 0/],
  ["unknown datatype", edit((b) => b.writeInt16LE(999, 70)), /unknown datatype code 999/],
  // issue 18: accepted before; a reader trusting bitpix would read other voxels
  [
    "bitpix inconsistent with the datatype",
    edit((b) => b.writeInt16LE(8, 72)),
    /bitpix is 8 but datatype 512 \(uint16\) has 16 bits per voxel/,
  ],
  [
    "bitpix inconsistent with the datatype, gzip",
    gzipSync(edit((b) => b.writeInt16LE(32, 72))),
    /bitpix is 32 but datatype 512 \(uint16\) has 16 bits per voxel/,
  ],
  ["int64 datatype", edit((b) => b.writeInt16LE(1024, 70)), /datatype 1024 \(int64\) is not supported/],
  ["rgb datatype", edit((b) => b.writeInt16LE(128, 70)), /datatype 128 \(rgb24\) is not supported/],
  ["vox_offset past the end", edit((b) => b.writeFloatLE(100000, 108)), /vox_offset 100000 is past the end/],
  ["fractional vox_offset", edit((b) => b.writeFloatLE(352.5, 108)), /vox_offset 352.5 is not a valid byte offset/],
  // a gzip stream of zeros claiming its voxels 4 GiB in: minutes of inflating, thrown away, before
  [
    "gzip: vox_offset 4 GiB in",
    gzipSync(Buffer.concat([edit((b) => b.writeFloatLE(2 ** 32, 108)), Buffer.alloc(8 << 20)])),
    /vox_offset 4294967296 puts the voxels over 67108864 bytes of extensions past the header/,
  ],
  ["truncated data", good.subarray(0, good.length - 10), /truncated data: the header needs 880 bytes of voxels from offset 352/],
  ["three volumes", readFileSync(join(NIFTI_FIXTURES, "three_volumes_4d.nii")), /holds 3 volumes/],
  ["30000³ voxels in 400 bytes", claims(30000, 30000, 30000), /exceed the 4294967295-voxel limit/],
  ["1000³ voxels in 400 bytes", claims(1000, 1000, 1000), /(truncated data|exceeds the limit)/],
  ["gzip: 30000³ voxels", gzipSync(claims(30000, 30000, 30000)), /exceed the 4294967295-voxel limit/],
  ["gzip: 1000×1000×1000 in a tiny stream", gzipSync(claims(1000, 1000, 1000)), /cannot inflate to more than/],
  ["gzip: truncated stream", gz.subarray(0, Math.floor(gz.length / 2)), /(broken gzip stream|truncated)/],
  ["gzip: corrupted stream", edit((b) => b.fill(0xff, 20, 60), gz), /broken gzip stream/],
  ["gzip: empty stream", gzipSync(Buffer.alloc(0)), /empty file/],
  [
    "gzip: truncated data",
    gzipSync(good.subarray(0, good.length - 10)),
    /truncated data: the header needs 880 bytes of voxels, the gzip stream holds 870/,
  ],
];

for (const [what, bytes, message] of cases) {
  test(`refuses ${what} quickly, naming the file`, async (t) => {
    const path = join(tmp, what.replace(/[^a-z0-9]+/gi, "_") + ".nii");
    writeFileSync(path, bytes);
    const before = process.memoryUsage().arrayBuffers;
    const t0 = performance.now();
    const e1 = await t.throwsAsync(readNifti(path), { message });
    t.true(e1!.message.startsWith(path + ":"), e1!.message);
    const e2 = await t.throwsAsync(readNifti(bytes, { name: "upload.nii" }), { message });
    t.true(e2!.message.startsWith("upload.nii:"), e2!.message);
    const ms = performance.now() - t0;
    // Bounded time: well under a millisecond each when idle, but every case of this file runs at once
    // and the machine may be loaded, so the limit is generous; reading or inflating what a header
    // claims (1 GB and more) takes tens of seconds, and the allocation check below catches the rest.
    t.true(ms < 3000, `took ${ms.toFixed(0)} ms`);
    t.true(process.memoryUsage().arrayBuffers - before < 64 << 20, "allocated before refusing");
  });
}

test("refuses a missing file and a folder with a clear reason", async (t) => {
  await t.throwsAsync(readNifti(join(tmp, "nope.nii")), { message: /nope.nii: no such file/ });
  await t.throwsAsync(readNifti(tmp), { message: /is a folder/ });
});

test("refuses arguments of the wrong kind, naming them", async (t) => {
  await t.throwsAsync(readNifti(42 as never), {
    message: /Expected a file path, a file URL or a Uint8Array\/Buffer of the file's bytes for pathOrBytes but received number 42/,
  });
  await t.throwsAsync(readNifti(good, { maxBytes: -1 }), { message: /for options.maxBytes but received number -1/ });
  await t.throwsAsync(readNifti(good, { maxBytes: 100 }), { message: /exceeds the limit of 100 bytes/ });
});

test("refuses a FIFO, a character device and a folder at once, for readNifti and readNiftiHeader, .nii.gz names too", async (t) => {
  const dir = mkdtempSync(join(tmpdir(), "bhsd-fifo-"));
  const fifos = [join(dir, "ct.nii"), join(dir, "ct.nii.gz")];
  for (const f of fifos) await execFileAsync("mkfifo", [f]); // not spawnSync: the other tests here time their refusals
  // today's code opened a FIFO and waited for a writer forever: bound each call, and free a stuck one
  const bounded = <T>(p: Promise<T>) =>
    Promise.race([p, new Promise<never>((_, reject) => setTimeout(() => reject(new Error("still waiting after 10 s")), 10_000).unref())]);
  try {
    for (const f of fifos) {
      await t.throwsAsync(bounded(readNifti(f)), { message: `${f}: is a FIFO (named pipe), not a file` });
      await t.throwsAsync(bounded(readNiftiHeader(f)), { message: `${f}: is a FIFO (named pipe), not a file` });
    }
    await t.throwsAsync(bounded(readNifti("/dev/zero")), { message: "/dev/zero: is a character device, not a file" });
    await t.throwsAsync(bounded(readNiftiHeader("/dev/null")), { message: "/dev/null: is a character device, not a file" });
    await t.throwsAsync(bounded(readNiftiHeader(dir)), { message: `${dir}: is a folder, not a file` });
  } finally {
    for (const f of fifos) {
      try {
        closeSync(openSync(f, constants.O_WRONLY | constants.O_NONBLOCK)); // a writer releases a reader stuck in open()
      } catch {
        // best-effort cleanup: already gone is fine
      }
    }
  }
});

test("readNiftiHeader checks its arguments, naming them", async (t) => {
  await t.throwsAsync(readNiftiHeader(42 as never), {
    message: /Expected a file path, a file URL or a Uint8Array\/Buffer of the file's bytes for pathOrBytes but received number 42/,
  });
  await t.throwsAsync(readNiftiHeader("" as never), { message: /for pathOrBytes but received/ });
  await t.throwsAsync(readNiftiHeader(good, { name: 7 } as never), { message: /Expected a string for options.name but received number 7/ });
  await t.throwsAsync(readNiftiHeader(good, "x.nii" as never), { message: /Expected an options object for options/ });
  t.deepEqual((await readNiftiHeader(good, { name: "x.nii" })).datatype, "uint16");
});

// (serial: the process's CPU time and memory are measured, which concurrent tests would add to)
test.serial("a gzip stream is refused from its header, before the rest is inflated", async (t) => {
  // 1000 MiB of zeros in 1000 gzip members (1 MB), behind a header that claims them
  const header = claims(1024, 1024, 1000).subarray(0, 352);
  const mib = gzipSync(Buffer.alloc(1 << 20));
  const bomb = Buffer.concat([gzipSync(header), ...Array.from({ length: 1000 }, () => mib)]);
  const path = join(tmp, "bomb.nii.gz");
  writeFileSync(path, bomb);
  for (const src of [path, bomb]) {
    const before = process.memoryUsage().arrayBuffers;
    const cpu0 = process.cpuUsage();
    await t.throwsAsync(readNifti(src, { maxBytes: 100 << 20 }), {
      message: /voxel data of 1048576000 bytes exceeds the limit of 104857600 bytes/,
    });
    // CPU time, not wall time (robust on a loaded machine): inflating it all costs about 2 s here
    const cpu = process.cpuUsage(cpu0);
    t.true((cpu.user + cpu.system) / 1000 < 400, `${((cpu.user + cpu.system) / 1000).toFixed(0)} ms of CPU`);
    t.true(process.memoryUsage().arrayBuffers - before < 32 << 20, "allocated before refusing");
  }
});
