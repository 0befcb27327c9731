import test from "ava";
import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { formatNpy, parseNpy, readNpy } from "../lib/index.js";
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
