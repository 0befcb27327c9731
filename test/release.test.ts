// release(): a Volume's, a Tensor's or a typed array's memory handed back at once (a data set's
// loop), on every backend; what it refuses, and a native call running on a released array.
import test from "ava";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { conv3d, readCt, readNifti, release, setBackend, writeNifti } from "../lib/index.js";
import { engineMemory } from "../lib/backends/index.js";
import { releaseDropped } from "../lib/volume.js";
import type { Volume } from "../lib/types.js";
import { backendsUnderTest } from "./helpers.js";

const dir = mkdtempSync(join(tmpdir(), "bhsd-release-"));

for (const { name } of backendsUnderTest()) {
  test.serial(`${name}: release() empties a volume read from a file and gives engine memory back`, async (t) => {
    setBackend(name);
    const file = join(dir, `ct-${name}.nii`);
    const raw = Int16Array.from({ length: 64 * 64 * 20 }, (_, i) => (i % 2000) - 1000);
    await writeNifti(
      file,
      { data: raw, dims: [64, 64, 20], spacing: [1, 1, 2], affine: [1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 2, 0, 0, 0, 0, 1] },
      {
        datatype: "int16",
        sclSlope: 1,
        sclInter: -1024,
      },
    );
    const v = await readNifti(file);
    t.is(v.data.length, raw.length);
    t.is(v.data[5], raw[5]); // (written as real values, stored with scl_inter −1024: a float32 volume read back)
    const before = engineMemory();
    release(v);
    t.is(v.data.length, 0, "the array is empty afterwards");
    await new Promise((r) => setImmediate(r)); // (Node-API runs the block's finalizer from the event loop)
    const after = engineMemory();
    if (name === "native") {
      // 64·64·20 float32 values (320 KB) went back to the engine's cache
      t.true(before.liveBytes - after.liveBytes >= raw.length * 4, `live ${before.liveBytes} → ${after.liveBytes}`);
      t.true(after.cachedBytes > before.cachedBytes, `cached ${before.cachedBytes} → ${after.cachedBytes}`);
    }
    t.notThrows(() => release(v), "an array released already is left as it is");
    // a Tensor and a bare typed array
    const tensor = { data: new Float32Array(1 << 16).fill(1), shape: [1 << 16] };
    release(tensor);
    t.is(tensor.data.length, 0);
    const bare = new Uint8Array(100);
    release(bare);
    t.is(bare.length, 0);
  });

  test.serial(`${name}: release() refuses a view beside others, a SharedArrayBuffer and what is not an array`, (t) => {
    setBackend(name);
    const whole = new Float32Array(1 << 16).fill(3);
    t.throws(() => release(whole.subarray(1)), {
      message: /Expected an array spanning its whole buffer .* for x but received string "a view of 262140 of its buffer's 262144 bytes"/,
    });
    t.is(whole.length, 1 << 16, "the whole array is untouched");
    t.is(whole[1], 3);
    t.throws(() => release(new Float32Array(new SharedArrayBuffer(1024))), { message: /SharedArrayBuffer/ });
    t.throws(() => release(42 as never), { message: /Expected a Volume, a Tensor or a typed array for x/ });
    t.throws(() => release({ data: [1, 2, 3] } as never), { message: /a Volume, a Tensor or a typed array/ });
  });

  test.serial(`${name}: a convolution running on an input released meanwhile gives the result it gives otherwise`, async (t) => {
    setBackend(name);
    const [C, D, H, W] = [8, 32, 64, 96]; // a queued call on the native backend (over ~1 ms of work)
    const make = () => ({ data: Float32Array.from({ length: C * D * H * W }, (_, i) => Math.sin(i * 0.37)), shape: [1, C, D, H, W] });
    const w = { data: Float32Array.from({ length: 8 * C * 27 }, (_, i) => Math.cos(i * 0.11) * 0.1), shape: [8, C, 3, 3, 3] };
    const want = await conv3d(make(), w, null, { padding: 1 });
    const x = make();
    const p = conv3d(x, w, null, { padding: 1 });
    release(x);
    t.is(x.data.length, 0);
    const y = await p.then(
      (r) => r,
      (e: Error) => e,
    );
    // the engine works on its own copy of a caller's array (or holds engine memory): the same result;
    // the ts backend, which yields, says the input went away instead of computing on nothing
    if (y instanceof Error) t.regex(y.message, /detached|lost|resized/);
    else t.deepEqual(y.data, want.data);
  });
}

test.serial("releaseDropped (the package's own loops): empties what release() takes, leaves a view and undefined as they are", (t) => {
  const whole = new Float32Array(1 << 16).fill(3);
  const view = {
    data: whole.subarray(1),
    dims: [(1 << 16) - 1, 1, 1] as [number, number, number],
    spacing: [1, 1, 1] as [number, number, number],
    affine: [] as number[],
  };
  const own = {
    data: new Float32Array(1 << 10).fill(2),
    dims: [1 << 10, 1, 1] as [number, number, number],
    spacing: [1, 1, 1] as [number, number, number],
    affine: [] as number[],
  };
  t.notThrows(() => releaseDropped(view, undefined, own));
  t.is(own.data.length, 0, "a volume over its own buffer is released");
  t.is(whole.length, 1 << 16, "a view beside others is left to the collector");
  t.is(whole[1], 3);
});

test.serial("a volume read from a file is disposable: `using` releases it as its block ends, a copy of it is not", async (t) => {
  const file = join(dir, "ct-using.nii");
  const raw = Int16Array.from({ length: 64 * 64 * 20 }, (_, i) => (i % 2000) - 1000);
  await writeNifti(file, { data: raw, dims: [64, 64, 20], spacing: [1, 1, 2], affine: [1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 2, 0, 0, 0, 0, 1] });
  let seen: Volume | undefined;
  let copy: Volume | undefined;
  {
    using ct = await readNifti(file);
    seen = ct;
    copy = { ...ct };
    t.is(ct.data.length, raw.length);
    t.is(ct.data[7], raw[7]);
    t.is(Object.getOwnPropertyDescriptor(ct, Symbol.dispose)?.enumerable, false, "a method of its own, not enumerable");
  }
  t.is(seen.data.length, 0, "released as the block ended");
  t.is(copy.data.length, 0, "the copy shared the array");
  t.false(Symbol.dispose in copy, "a spread copy is not disposable");
  t.notThrows(() => (seen as Volume & Disposable)[Symbol.dispose](), "disposing twice does nothing");
  // the array it was read with is the one released, even where the caller swapped another in
  const v = await readNifti(file);
  const mine = new Float32Array(raw.length).fill(1);
  const original = v.data;
  v.data = mine;
  v[Symbol.dispose]();
  t.is(original.length, 0);
  t.is(mine.length, raw.length, "an array the caller put in is left alone");
  // a DICOM series (readCt of the shared case A's folder) is disposable too
  const here = dirname(fileURLToPath(import.meta.url));
  let dcm: Volume | undefined;
  {
    using d = await readCt(join(here, "fixtures/dicom/cases/A_axial"));
    dcm = d;
    t.true(d.data.length > 0);
  }
  t.is(dcm.data.length, 0);
});
