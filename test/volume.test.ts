import test from "ava";
import { readNpy, volumeFromArray } from "../lib/index.js";
import { sharedFixture } from "./helpers.js";

test("volumeFromArray takes numpy's (z, y, x) order and drops leading unit axes", async (t) => {
  const a = await readNpy(sharedFixture("onnx-plainunet", "input.npy"));
  const v = volumeFromArray(a.data, a.shape, [5, 0.49, 0.5]);
  t.deepEqual(v.dims, [64, 64, 16]);
  t.deepEqual(v.spacing, [0.5, 0.49, 5]);
  t.deepEqual(v.affine, [0.5, 0, 0, 0, 0, 0.49, 0, 0, 0, 0, 5, 0, 0, 0, 0, 1]);
  t.is(v.data, a.data); // no copy
  t.deepEqual(volumeFromArray(new Uint8Array(6), [2, 3]).dims, [3, 2, 1]);
});

test("volumeFromArray refuses shapes that disagree, naming the argument", (t) => {
  t.throws(() => volumeFromArray(new Uint8Array(10), [2, 2, 2]), { message: /data has 10 elements but shapeZYX \(2, 2, 2\) needs 8/ });
  t.throws(() => volumeFromArray(new Uint8Array(8), [2, 0, 4]), {
    message: /Expected an array of 2 to 5 positive integers for shapeZYX but received array \[2, 0, 4\]/,
  });
  t.throws(() => volumeFromArray(new Uint8Array(8), [2, 2, 2], [1, -1, 1]), { message: /for spacingZYX/ });
  t.throws(() => volumeFromArray([1, 2] as never, [2]), { message: /Expected a typed array for data but received array/ });
  t.throws(() => volumeFromArray(new Uint8Array(8), [2, 1, 2, 2]), { message: /extra leading axes of size 1/ });
});
