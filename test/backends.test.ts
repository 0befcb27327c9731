import test from "ava";
import { execFileSync, spawnSync } from "node:child_process";
import { createRequire } from "node:module";
import { backendInfo, setBackend, voxelStats } from "../lib/index.js";
import { getBackend } from "../lib/backends/index.js";
import { backendsUnderTest, ROOT } from "./helpers.js";

const TSX = ["--import", "tsx"];
/** Tests of the native addon itself: skipped, saying why, where it is not built. */
const nativeTest = backendInfo().available.native ? test : test.skip;
if (!backendInfo().available.native)
  console.log(`# native-addon tests skipped: the native backend is not available here (${backendInfo().reasons.native ?? "hidden"})`);
/** The check that the addon loads, skipped where the run names its backends and leaves native out. */
const nativeExpected = process.env.BHSD_TEST_BACKENDS && !process.env.BHSD_TEST_BACKENDS.includes("native") ? test.skip : test;

test("backendInfo says what loaded and, for the rest, why not", (t) => {
  const info = backendInfo();
  t.true(info.available.ts);
  t.true(["cuda", "native", "ts"].includes(info.active));
  for (const n of ["cuda", "native", "ts"] as const) {
    t.is(typeof info.available[n], "boolean");
    if (!info.available[n]) t.true((info.reasons[n] ?? "").length > 10, `${n}: ${info.reasons[n]}`);
    else t.true(info.details[n]!.threads >= 1);
  }
  // default order: the best available
  const best = (["cuda", "native", "ts"] as const).find((n) => info.available[n]);
  if (!process.env.BHSD_BACKEND) t.is(info.active, best);
});

nativeExpected("the native backend loads here (it is built by npm ci / npm run build:native)", (t) => {
  const info = backendInfo();
  t.true(info.available.native, info.reasons.native);
  t.regex(info.details.native!.simd, /avx2\+fma|sse2|neon|scalar/);
});

test("setBackend refuses unknown and unavailable backends, saying why", (t) => {
  t.throws(() => setBackend("gpu" as never), { message: /Expected one of cuda, native, ts for name but received string "gpu"/ });
  if (!backendInfo().available.cuda)
    t.throws(() => setBackend("cuda"), { message: /backend "cuda" \(asked for by name\) is not available: / });
});

test("BHSD_BACKEND chooses, and naming one that is unavailable is an error that says why", (t) => {
  const script = `import { backendInfo, voxelStats } from "./lib/index.ts"; await voxelStats(new Uint8Array(3)).then(() => console.log(backendInfo().active), (e) => { console.log("ERR " + e.message); });`;
  const run = (env: Record<string, string>) =>
    execFileSync(process.execPath, [...TSX, "--input-type=module", "-e", script], {
      cwd: ROOT,
      env: { ...process.env, ...env },
      encoding: "utf8",
    }).trim();
  t.is(run({ BHSD_BACKEND: "ts" }), "ts");
  t.regex(
    run({ BHSD_BACKEND: "native", BHSD_DISABLE_NATIVE: "1" }),
    /^ERR backend "native" \(asked for by BHSD_BACKEND\) is not available: disabled by BHSD_DISABLE_NATIVE=1/,
  );
  t.regex(run({ BHSD_BACKEND: "tpu" }), /^ERR Expected one of cuda, native, ts for BHSD_BACKEND but received string "tpu"/);
  t.is(run({ BHSD_BACKEND: "", BHSD_DISABLE_NATIVE: "1", BHSD_DISABLE_CUDA: "1" }), "ts");
});

// Reference: a plain loop in the test, over arrays with negative, zero, NaN and infinite values.
function reference(data: ArrayLike<number>) {
  let min = Infinity,
    max = -Infinity,
    sum = 0,
    nonzero = 0,
    nonfinite = 0;
  for (let i = 0; i < data.length; i++) {
    const v = data[i]!;
    if (v !== 0) nonzero++;
    if (!Number.isFinite(v)) {
      nonfinite++;
      continue;
    }
    min = Math.min(min, v);
    max = Math.max(max, v);
    sum += v;
  }
  return { min, max, sum, nonzero, nonfinite };
}

const arrays = () => {
  const n = 3_000_017;
  const f = new Float32Array(n).map((_, i) => Math.sin(i) * 1000);
  f[5] = NaN;
  f[77] = -Infinity;
  f[n - 1] = 0;
  return [
    new Int16Array(n).map((_, i) => ((i * 7919) % 4001) - 2000),
    new Uint8Array(n).map((_, i) => i % 6),
    new Uint32Array(1000).map((_, i) => 4e9 - i),
    new Int8Array([-128, 0, 127]),
    f,
    new Float64Array([1e300, -1e300, 0.5]),
    new Uint8Array(0),
  ];
};

for (const { name, backend } of backendsUnderTest()) {
  test(`${name}: voxelStats matches a plain loop for every dtype`, async (t) => {
    for (const a of arrays()) {
      const s = await backend().voxelStats(a);
      const r = reference(a);
      t.is(s.min, r.min);
      t.is(s.max, r.max);
      t.is(s.nonzero, r.nonzero);
      t.is(s.nonfinite, r.nonfinite);
      t.true(Math.abs(s.sum - r.sum) <= 1e-9 * Math.max(1, Math.abs(r.sum)), `${s.sum} vs ${r.sum}`);
    }
  });

  test(`${name}: rescaleToFloat32 rounds float64 arithmetic once, like nibabel's scaled read`, async (t) => {
    // multiply, then add, each rounded in float64 as numpy does (0.1 and −1024.3: 10243 × 0.1 −
    // 1024.3 is 0 so, 1.02e-13 if fused into one FMA, which GCC does to C++ unless told not to)
    const src = new Int16Array(100_003).map((_, i) => (i % 65536) - 32768);
    const dst = new Float32Array(src.length);
    for (const [slope, inter] of [
      [0.3, -1024.7],
      [0.1, -1024.3],
    ] as const) {
      await backend().rescaleToFloat32(src, slope, inter, dst);
      for (let i = 0; i < src.length; i++) if (dst[i] !== Math.fround(src[i]! * slope + inter)) return t.fail(`voxel ${i}`);
    }
    t.pass();
  });
}

test("the public voxelStats validates before dispatching", async (t) => {
  await t.throwsAsync(voxelStats([1, 2, 3] as never), {
    message: /Expected a Volume or a typed array for input but received array \[1, 2, 3\]/,
  });
  await t.throwsAsync(voxelStats({ data: new Uint8Array(5), dims: [2, 2, 2], spacing: [1, 1, 1], affine: [] } as never), {
    message: /input.data has 5 voxels but input.dims \[2, 2, 2\] need 8/,
  });
  const s = await voxelStats({
    data: new Int16Array([-3, 0, 9, 2]),
    dims: [2, 2, 1],
    spacing: [1, 1, 1],
    affine: [1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1],
  });
  t.is(s.mean, 2);
});

nativeTest("the addon refuses bad arguments with JS errors, never a crash", async (t) => {
  const { binary } = backendInfo().details.native!;
  const addon = createRequire(import.meta.url)(binary!) as Record<string, (...a: unknown[]) => unknown>;
  t.throws(() => addon.voxelStats!(123), { message: /data must be a typed array/ });
  t.throws(() => addon.voxelStats!(new BigInt64Array(2)), { message: /element type the engine does not take/ });
  t.throws(() => addon.rescaleToF32!(new Int16Array(4), 1, 0, new Float32Array(3)), {
    message: /dst must be a Float32Array as long as src/,
  });
  t.throws(() => addon.rescaleToF32!(new Int16Array(4), "x", 0, new Float32Array(4)), { message: /slope must be a number/ });
  // dimensions whose product wraps around 64 bits to a small array's length: 16 · (2^20 + 1) ·
  // (2^40 − 2^20 + 1) = 2^64 + 16, each factor within the 2^40 a dimension may be. Compared wrapped,
  // a 16-element array would pass and the kernel run far past its end; the product is checked
  // factor by factor instead
  const a = 2 ** 20 + 1,
    b = 2 ** 40 - 2 ** 20 + 1;
  const x16 = new Float32Array(16),
    y16 = new Float32Array(16);
  t.throws(() => addon.unary!(x16, 16, a, b, 0, 0.01, null, y16), { message: /the sizes' product is too large/ });
  t.throws(() => addon.softmax!(x16, 16, a, b, y16), { message: /the sizes' product is too large/ });
  t.throws(
    () =>
      addon.conv3d!(
        x16,
        [16, a, b, 1, 1],
        new Float32Array(27),
        [1, 3, 3, 3],
        null,
        [1, 1, 1],
        [1, 1, 1],
        [0, 0, 0],
        1,
        [1, 1, 1],
        0,
        0,
        y16,
      ),
    { message: /the sizes' product is too large/ },
  );
  t.notThrows(() => getBackend("native"));
});

nativeTest("the addon's thread pool shuts down with a worker thread and with the process", (t) => {
  const script = `
    import { Worker } from "node:worker_threads";
    const code = \`
      const a = require(${JSON.stringify(backendInfo().details.native!.binary)});
      a.voxelStats(new Float32Array(1 << 20).fill(2)).then((s) => require("node:worker_threads").parentPort.postMessage(s.sum));\`;
    for (let i = 0; i < 3; i++) {
      const w = new Worker(code, { eval: true, execArgv: [] });
      const sum = await new Promise((res, rej) => { w.on("message", res); w.on("error", rej); });
      await w.terminate();
      if (sum !== 2 * (1 << 20)) throw new Error("bad sum " + sum);
    }
    console.log("ok");`;
  const r = spawnSync(process.execPath, ["--input-type=module", "-e", script], { cwd: ROOT, encoding: "utf8", timeout: 30_000 });
  t.is(r.status, 0, r.stderr);
  t.is(r.stdout.trim(), "ok");
});

test("importing the package never throws, even with every binary unusable", (t) => {
  const r = spawnSync(
    process.execPath,
    [...TSX, "--input-type=module", "-e", `import * as b from "./lib/index.ts"; console.log(typeof b.readNifti, b.backendInfo().active)`],
    {
      cwd: ROOT,
      env: { ...process.env, BHSD_DISABLE_NATIVE: "1", BHSD_DISABLE_CUDA: "1" },
      encoding: "utf8",
    },
  );
  t.is(r.status, 0, r.stderr);
  t.is(r.stdout.trim(), "function ts");
});

nativeTest("the tensor bindings refuse lengths and shapes that disagree, with JS errors", (t) => {
  const { binary } = backendInfo().details.native!;
  const a = createRequire(import.meta.url)(binary!) as Record<string, (...args: unknown[]) => unknown>;
  const f = (n: number) => new Float32Array(n);
  // conv3d: x claims more elements than it has
  t.throws(() => a.conv3d!(f(10), [1, 1, 4, 4, 4], f(27), [1, 3, 3, 3], null, [1, 1, 1], [1, 1, 1], [1, 1, 1], 1, [4, 4, 4], 0, 0, f(64)), {
    message: /x must be a Float32Array of 64/,
  });
  t.throws(() => a.conv3d!(f(64), [1, 1, 4, 4, 4], f(27), [1, 3, 3, 3], null, [0, 1, 1], [1, 1, 1], [1, 1, 1], 1, [4, 4, 4], 0, 0, f(64)), {
    message: /strides is out of range/,
  });
  t.throws(() => a.conv3d!(f(64), [1, 3, 4, 4, 4], f(27), [1, 3, 3, 3], null, [1, 1, 1], [1, 1, 1], [1, 1, 1], 2, [4, 4, 4], 0, 0, f(64)), {
    message: /not divisible by groups/,
  });
  t.throws(() => a.convWeightGrad!(f(8), [1, 2, 2, 2], f(7), [1, 2, 2, 2], [1, 1, 1], [1, 1, 1], [0, 0, 0], [1, 1, 1], f(1)), {
    message: /B must be a Float32Array of 8/,
  });
  t.throws(() => a.binary!(f(4), f(4), [1, 1, 1, 1, 1, 8], [0, 0, 0, 0, 0, 1], [0, 0, 0, 0, 0, 1], false, f(8)), {
    message: /strides reach past a or b/,
  });
  t.throws(() => a.argmax!(f(12), 1, 3, 4, new Float32Array(4)), { message: /out must be an Int32Array/ });
  t.throws(() => a.concat!([f(4), "x"], [1, 1], 1, 4, f(8)), { message: /must be a typed array/ });
  t.throws(() => a.resize3d!(f(8), 1, [2, 2, 2], [4, 4, 4], new Float64Array(2), true, 0, 0, f(64)), {
    message: /scales must be a Float64Array of 3/,
  });
});

test("setCudaPrecision takes fp32, tf32, fp16 or bf16 and names the argument otherwise", async (t) => {
  const { setCudaPrecision } = await import("../lib/index.js");
  t.throws(() => setCudaPrecision("fp8" as never), { message: /one of fp32, tf32, fp16, bf16 for precision but received string "fp8"/ });
  t.notThrows(() => setCudaPrecision("tf32"));
});

nativeTest(
  "native accumulateWindow (segment's window sum) equals a float64 loop rounded per store, and refuses a window outside the grid",
  async (t) => {
    const be = getBackend("native");
    t.truthy(be.accumulateWindow);
    const C = 3,
      grid: [number, number, number] = [5, 7, 9],
      patch: [number, number, number] = [3, 4, 6],
      at: [number, number, number] = [2, 1, 3];
    const vol = grid[0] * grid[1] * grid[2],
      pv = patch[0] * patch[1] * patch[2];
    let s = 12345;
    const rnd = () => ((s = (s * 1103515245 + 12345) >>> 0) / 2 ** 32) * 2 - 1;
    const acc = Float32Array.from({ length: C * vol }, rnd),
      weight = Float32Array.from({ length: vol }, () => Math.abs(rnd())),
      logits = Float32Array.from({ length: C * pv }, rnd),
      gauss = Float32Array.from({ length: pv }, () => Math.abs(rnd()));
    const wantAcc = acc.slice(),
      wantW = weight.slice(),
      scale = 1 / 3;
    for (let a = 0; a < patch[0]; a++)
      for (let b = 0; b < patch[1]; b++)
        for (let c = 0; c < patch[2]; c++) {
          const dst = ((at[0] + a) * grid[1] + at[1] + b) * grid[2] + at[2] + c,
            src = (a * patch[1] + b) * patch[2] + c;
          wantW[dst] = Math.fround(wantW[dst]! + gauss[src]!);
          for (let k = 0; k < C; k++)
            wantAcc[k * vol + dst] = Math.fround(wantAcc[k * vol + dst]! + logits[k * pv + src]! * gauss[src]! * scale);
        }
    await be.accumulateWindow!(acc, weight, logits, gauss, C, grid, patch, at, scale);
    t.deepEqual(acc, wantAcc);
    t.deepEqual(weight, wantW);
    // a window past the grid's edge, and arrays of the wrong size: refused at the call, nothing written
    const before = acc.slice();
    t.throws(() => be.accumulateWindow!(acc, weight, logits, gauss, C, grid, patch, [3, 1, 3], scale), { message: /inside the grid/ });
    t.throws(() => be.accumulateWindow!(acc.subarray(1), weight, logits, gauss, C, grid, patch, at, scale), { message: /acc must be/ });
    t.throws(() => be.accumulateWindow!(acc, weight, logits.subarray(0, 5), gauss, C, grid, patch, at, scale), {
      message: /logits must be/,
    });
    t.deepEqual(acc, before);
  },
);
