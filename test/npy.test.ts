import test from "ava";
import { chmodSync, lstatSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { formatNpy, parseNpy, readNpy, writeNpy } from "../lib/index.js";
import { NIFTI_FIXTURES, sharedFixture } from "./helpers.js";

test("reads numpy's arrays from the shared fixtures with the stated shapes and dtypes", async (t) => {
  const input = await readNpy(sharedFixture("onnx-plainunet", "input.npy"));
  t.deepEqual(input.shape, [1, 1, 16, 64, 64]);
  t.is(input.dtype, "float32");
  t.is(input.data.length, 16 * 64 * 64);
  const mask = await readNpy(sharedFixture("voxel", "ccl_blobs_mask.npy"));
  t.deepEqual(mask.shape, [48, 160, 160]);
  t.is(mask.dtype, "uint8");
  const labels = await readNpy(sharedFixture("voxel", "ccl_blobs_labels26.npy"));
  t.is(labels.dtype, "int32");
  const expected = JSON.parse(readFileSync(sharedFixture("voxel", "expected.json"), "utf8"));
  let max = 0;
  for (const v of labels.data) if (v > max) max = v;
  t.is(max, expected.ccl.blobs.components26);
});

test("formatNpy writes the same bytes numpy does", (t) => {
  const files = readdirSync(NIFTI_FIXTURES).filter((f) => f.endsWith(".npy"));
  t.true(files.length > 10);
  for (const f of files) {
    const bytes = readFileSync(join(NIFTI_FIXTURES, f));
    const a = parseNpy(bytes, f);
    t.deepEqual(Buffer.from(formatNpy(a.data, a.shape)), bytes, f);
  }
});

test("refuses malformed .npy with a reason", (t) => {
  t.throws(() => parseNpy(new Uint8Array([1, 2, 3])), { message: /not a .npy file/ });
  const good = formatNpy(new Float32Array(6), [2, 3]);
  t.throws(() => parseNpy(good.subarray(0, good.length - 4)), { message: /truncated data/ });
  const fortran = Buffer.from(good);
  fortran.write("True ", fortran.indexOf("False"), "latin1");
  t.throws(() => parseNpy(fortran), { message: /Fortran-order/ });
  const i8 = Buffer.from(good);
  i8.write("<i8", i8.indexOf("<f4"), "latin1");
  t.throws(() => parseNpy(i8), { message: /unsupported dtype '<i8'/ });
});

/** .npy bytes (version 2) with this header text and `data` after it. */
function npyWith(header: string, data = new Uint8Array(0)): Uint8Array {
  const out = new Uint8Array(12 + header.length + data.length);
  out.set([0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59, 2, 0]);
  new DataView(out.buffer).setUint32(8, header.length, true);
  for (let i = 0; i < header.length; i++) out[12 + i] = header.charCodeAt(i);
  out.set(data, 12 + header.length);
  return out;
}

test("hostile .npy headers: too long, another key's text naming a shape, a key twice: refused at once, quoting little", (t) => {
  // 180 kB of "'shape':(" took 3 s (the pattern search is quadratic): over numpy's 10 000-byte limit now
  const t0 = performance.now();
  t.throws(() => parseNpy(npyWith("'shape':(".repeat(20_000))), { message: /a \.npy header of 180000 bytes \(numpy's limit is 10000\)/ });
  t.true(performance.now() - t0 < 1000);
  // numpy refuses a key of its own it does not know; the first 'shape' in the text was read as the array's
  const decoy = "{'x': \"'shape': (1,)\", 'descr': '<u1', 'fortran_order': False, 'shape': (4,), }";
  t.throws(() => parseNpy(npyWith(decoy, new Uint8Array(4))), { message: /malformed \.npy header/ });
  t.throws(() => parseNpy(npyWith("{'descr': '<u1', 'descr': '<u1', 'fortran_order': False, 'shape': (4,), }", new Uint8Array(4))), {
    message: /malformed/,
  });
  const long = t.throws(() => parseNpy(npyWith(`{'descr': '<u1', ${"x".repeat(5000)}}`)));
  t.true(long!.message.length < 400);
  // what numpy writes still reads
  t.deepEqual(
    [...parseNpy(npyWith("{'descr': '<u1', 'fortran_order': False, 'shape': (2, 2), }   \n", Uint8Array.of(1, 2, 3, 4))).data],
    [1, 2, 3, 4],
  );
});

test("writeNpy replaces a link at its path instead of writing through it", async (t) => {
  const dir = mkdtempSync(join(tmpdir(), "bhsd-npy-link-"));
  const victim = join(dir, "in.nii");
  writeFileSync(victim, "precious");
  symlinkSync(victim, join(dir, "o.npy"));
  await writeNpy(join(dir, "o.npy"), Uint8Array.of(1, 2), [2]);
  t.is(readFileSync(victim, "utf8"), "precious");
  t.false(lstatSync(join(dir, "o.npy")).isSymbolicLink());
  t.deepEqual([...(await readNpy(join(dir, "o.npy"))).data], [1, 2]);
  rmSync(dir, { recursive: true, force: true });
});

test("a file replaced keeps its permission bits (writeNpy, writeNifti): a result made readable for others stays so", async (t) => {
  const dir = mkdtempSync(join(tmpdir(), "bhsd-npy-mode-"));
  const { writeNifti } = await import("../lib/index.js");
  const vol = {
    data: new Uint8Array(8),
    dims: [2, 2, 2] as [number, number, number],
    spacing: [1, 1, 1] as [number, number, number],
    affine: [1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1],
  };
  for (const [name, write] of [
    ["o.npy", (p: string) => writeNpy(p, Uint8Array.of(1, 2), [2])],
    ["o.nii.gz", (p: string) => writeNifti(p, vol)],
  ] as const) {
    const p = join(dir, name);
    await write(p);
    for (const mode of [0o640, 0o604]) {
      chmodSync(p, mode);
      await write(p);
      t.is(statSync(p).mode & 0o777, mode, `${name} ${mode.toString(8)}`);
    }
  }
  // a new file takes the umask's mode as any other (not a temporary's 0600)
  await writeNpy(join(dir, "new.npy"), Uint8Array.of(1), [1]);
  t.is(statSync(join(dir, "new.npy")).mode & 0o777, 0o666 & ~process.umask());
  rmSync(dir, { recursive: true, force: true });
});
