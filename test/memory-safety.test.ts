// Whatever a caller does to its arrays while a call runs (transfer them away, shrink a resizable
// buffer, share them), the process survives and the answer is right or an error says what was lost.
// Before the engine pinned its arrays, transferring a conv3d input mid-call segfaulted the process.
import test, { type ExecutionContext } from "ava";
import { spawnSync } from "node:child_process";
import { join } from "node:path";
import { add, conv3d, conv3dInstanceNorm, connectedComponents, setBackend, volumeFromArray } from "../lib/index.js";
import { getBackend } from "../lib/backends/index.js";
import { backendsUnderTest, ROOT } from "./helpers.js";

/** A plain-loop convolution, 3×3×3, padding 1, stride 1 (float64), for a few output voxels. */
function convAt(
  x: Float32Array,
  w: Float32Array,
  C: number,
  D: number,
  H: number,
  W: number,
  co: number,
  z: number,
  y: number,
  xx: number,
): number {
  let s = 0;
  for (let c = 0; c < C; c++)
    for (let a = 0; a < 3; a++)
      for (let b = 0; b < 3; b++)
        for (let e = 0; e < 3; e++) {
          const zi = z + a - 1,
            yi = y + b - 1,
            xi = xx + e - 1;
          if (zi < 0 || yi < 0 || xi < 0 || zi >= D || yi >= H || xi >= W) continue;
          s += x[((c * D + zi) * H + yi) * W + xi]! * w[(((co * C + c) * 3 + a) * 3 + b) * 3 + e]!;
        }
  return s;
}

function churn(): void {
  for (let i = 0; i < 50; i++) new Float32Array(1 << 20).fill(7);
  (globalThis as { gc?: () => void }).gc?.();
}

/**
 * The result of a call whose arrays were transferred away while it ran, or undefined where it
 * failed: only the ts backend may (it reads on after yielding), and it must say the input was
 * lost, never answer wrongly.
 */
async function resultOrLost<T>(t: ExecutionContext, name: string, p: Promise<T>): Promise<T | undefined> {
  const settled = await p.then(
    (y) => ({ y }),
    (e: Error) => ({ e }),
  );
  if (!("e" in settled)) return settled.y;
  t.is(name, "ts");
  t.regex(settled.e.message, /detached or resized during the call/);
  return undefined;
}

for (const { name, backend } of backendsUnderTest()) {
  if (name === "cuda") continue; // host-side pinning is the same code; the device run covers cuda
  const use = () => setBackend(backend().name);

  test.serial(`${name}: an input transferred away mid-call still gives the right convolution`, async (t) => {
    use();
    const [C, D, H, W] = [8, 32, 64, 96]; // a queued call (see below), not one run before conv3d returns
    const xs = Float32Array.from({ length: C * D * H * W }, (_, i) => Math.sin(i * 0.37));
    const ws = Float32Array.from({ length: 8 * C * 27 }, (_, i) => Math.cos(i * 0.11) * 0.1);
    const x = { data: new Float32Array(xs), shape: [1, C, D, H, W] };
    const w = { data: new Float32Array(ws), shape: [8, C, 3, 3, 3] };
    const p = conv3d(x, w, null, { padding: 1 });
    structuredClone(x.data.buffer, { transfer: [x.data.buffer] });
    structuredClone(w.data.buffer, { transfer: [w.data.buffer] });
    churn();
    const y = await resultOrLost(t, name, p);
    if (!y) return;
    for (const [co, z, yy, xx] of [
      [0, 0, 0, 0],
      [3, 5, 11, 7],
      [7, 11, 23, 23],
    ] as const) {
      const want = convAt(xs, ws, C, D, H, W, co, z, yy, xx);
      t.true(Math.abs(y.data[((co * D + z) * H + yy) * W + xx]! - want) < 1e-4, `voxel ${co},${z},${yy},${xx}`);
    }
  });

  test.serial(`${name}: a residual transferred away mid-call still gives the same sum, or says it was lost`, async (t) => {
    use();
    const [C, D, H, W] = [8, 32, 64, 96]; // a queued call, as above
    const x = { data: Float32Array.from({ length: C * D * H * W }, (_, i) => Math.sin(i * 0.37)), shape: [1, C, D, H, W] };
    const w = { data: Float32Array.from({ length: 8 * C * 27 }, (_, i) => Math.cos(i * 0.11) * 0.1), shape: [8, C, 3, 3, 3] };
    const rs = Float32Array.from({ length: 8 * D * H * W }, (_, i) => Math.cos(i * 0.013));
    const ones = { data: new Float32Array(8).fill(1), shape: [8] },
      zeros = { data: new Float32Array(8), shape: [8] };
    const norm = (residual: { data: Float32Array; shape: number[] }) => ({
      scale: ones,
      bias: zeros,
      activation: "leakyRelu" as const,
      alpha: 0.01,
      residual,
    });
    const want = await conv3dInstanceNorm(x, w, null, norm({ data: new Float32Array(rs), shape: [1, 8, D, H, W] }), { padding: 1 });
    const residual = { data: new Float32Array(rs), shape: [1, 8, D, H, W] };
    const p = conv3dInstanceNorm(x, w, null, norm(residual), { padding: 1 });
    structuredClone(residual.data.buffer, { transfer: [residual.data.buffer] });
    churn();
    const y = await resultOrLost(t, name, p);
    if (y) t.deepEqual(y.data, want.data);
  });

  test.serial(`${name}: a convolution's residual transferred away mid-call still gives the same sum, or says it was lost`, async (t) => {
    use();
    const [C, D, H, W] = [8, 32, 64, 96]; // a queued call, as above
    const x = { data: Float32Array.from({ length: C * D * H * W }, (_, i) => Math.sin(i * 0.37)), shape: [1, C, D, H, W] };
    const w = { data: Float32Array.from({ length: 8 * C * 27 }, (_, i) => Math.cos(i * 0.11) * 0.1), shape: [8, C, 3, 3, 3] };
    const rs = Float32Array.from({ length: 8 * D * H * W }, (_, i) => Math.cos(i * 0.013));
    const opts = { padding: 1, activation: "relu" as const };
    // the reference in two steps: the convolution, then add() with the activation
    const want = await add(
      await conv3d(x, w, null, { padding: 1 }),
      { data: new Float32Array(rs), shape: [1, 8, D, H, W] },
      { activation: "relu" },
    );
    const residual = { data: new Float32Array(rs), shape: [1, 8, D, H, W] };
    const p = conv3d(x, w, null, { ...opts, residual });
    structuredClone(residual.data.buffer, { transfer: [residual.data.buffer] });
    churn();
    const y = await resultOrLost(t, name, p);
    if (y) t.deepEqual(y.data, want.data);
  });

  // (the native backend runs calls of under ~1 ms of work on the calling thread before they return —
  // nothing can happen mid-call there — so the calls below are sized to be queued)
  test.serial(`${name}: an output transferred away mid-call is an error that says the result is lost`, async (t) => {
    use();
    const x = { data: new Float32Array(8 * 32 * 64 * 64).fill(1), shape: [1, 8, 32, 64, 64] };
    const w = { data: new Float32Array(16 * 8 * 27).fill(0.01), shape: [16, 8, 3, 3, 3] };
    const out = { data: new Float32Array(16 * 32 * 64 * 64), shape: [1, 16, 32, 64, 64] };
    const p = conv3d(x, w, null, { padding: 1, out });
    structuredClone(out.data.buffer, { transfer: [out.data.buffer] });
    churn();
    await t.throwsAsync(p, { message: /detached|result is lost/ });
  });

  // a binary mask (the native call reads it before returning and keeps nothing of it) and one of two
  // values (whose voxels the native work reads again later, from its copy)
  for (const values of [[1], [1, 2]])
    test.serial(`${name}: connectedComponents survives its mask (values ${values.join(", ")}) being transferred away`, async (t) => {
      use();
      const mask = new Uint8Array(16 * 64 * 64);
      // isolated voxels along x: many components
      for (let i = 0; i < mask.length; i += 3) mask[i] = values[Math.floor(i / 64) % values.length]!;
      const ref = new Uint8Array(mask);
      const vol = volumeFromArray(mask, [16, 64, 64]);
      const p = connectedComponents(vol, { connectivity: 6 });
      structuredClone(mask.buffer, { transfer: [mask.buffer] });
      churn();
      const r = await p.then(
        (v) => v,
        (e: Error) => e,
      );
      if (r instanceof Error) {
        t.is(name, "ts");
        t.regex(r.message, /detached or resized during the call/);
        return;
      }
      // each voxel of a row x ≡ 0 (mod 3) stands alone under 6-connectivity unless rows touch: count
      // the reference with a plain flood over the untouched copy
      let n = 0;
      const seen = new Uint8Array(ref.length);
      const [X, Y, Z] = [64, 64, 16];
      for (let s = 0; s < ref.length; s++) {
        if (!ref[s] || seen[s]) continue;
        n++;
        const stack = [s];
        seen[s] = 1;
        while (stack.length) {
          const v = stack.pop()!;
          const x = v % X,
            y = Math.floor(v / X) % Y,
            z = Math.floor(v / (X * Y));
          for (const [dx, dy, dz] of [
            [1, 0, 0],
            [-1, 0, 0],
            [0, 1, 0],
            [0, -1, 0],
            [0, 0, 1],
            [0, 0, -1],
          ]) {
            const a = x + dx!,
              b = y + dy!,
              c = z + dz!;
            if (a < 0 || b < 0 || c < 0 || a >= X || b >= Y || c >= Z) continue;
            const u = (c * Y + b) * X + a;
            if (ref[u] === ref[v] && !seen[u]) {
              seen[u] = 1;
              stack.push(u);
            }
          }
        }
      }
      t.is(r.count, n);
    });

  test.serial(`${name}: a resizable output shrunk mid-call is an error; a resizable input is read whole`, async (t) => {
    use();
    const n = 4 * 8 * 16 * 16;
    const rab = new ArrayBuffer(n * 4, { maxByteLength: n * 8 });
    const xin = new Float32Array(rab, 0, n).fill(2);
    const w = { data: new Float32Array(4 * 4).fill(0.5), shape: [4, 4, 1, 1, 1] };
    const p1 = conv3d({ data: xin, shape: [1, 4, 8, 16, 16] }, w, null);
    rab.resize(16);
    const y = await p1.then(
      (v) => v,
      (e: Error) => e,
    );
    if (y instanceof Error) t.regex(y.message, /detached or resized during the call/);
    else t.true(y.data.every((v) => v === 4)); // 4 channels × 2 × 0.5
    const m = 4 * 64 * 128 * 128; // 16 MB in and out: a queued call
    const rab2 = new ArrayBuffer(m * 4, { maxByteLength: m * 8 });
    const out = { data: new Float32Array(rab2, 0, m), shape: [1, 4, 64, 128, 128] };
    const p2 = conv3d({ data: new Float32Array(m).fill(1), shape: [1, 4, 64, 128, 128] }, w, null, { out });
    rab2.resize(16);
    await t.throwsAsync(p2, { message: /detached|shrunk|resized|result is lost/ });
  });

  test.serial(`${name}: SharedArrayBuffer-backed arrays are read and written in place`, async (t) => {
    use();
    const n = 2 * 6 * 10 * 10;
    const x = new Float32Array(new SharedArrayBuffer(n * 4));
    for (let i = 0; i < n; i++) x[i] = (i % 7) - 3;
    const w = { data: new Float32Array(new SharedArrayBuffer(3 * 2 * 4)).fill(1), shape: [3, 2, 1, 1, 1] };
    const out = { data: new Float32Array(new SharedArrayBuffer(3 * 6 * 10 * 10 * 4)), shape: [1, 3, 6, 10, 10] };
    await conv3d({ data: x, shape: [1, 2, 6, 10, 10] }, w, null, { out });
    for (let v = 0; v < 600; v += 37) t.is(out.data[v], x[v]! + x[600 + v]!);
  });
}

test.serial("native: the engine allocates zero-filled memory of its own and counts it", async (t) => {
  const native = getBackend("native") as unknown as {
    allocBuffer(n: number): ArrayBuffer;
    memoryStats(): { liveBytes: number; cachedBytes: number };
  };
  const before = native.memoryStats().liveBytes;
  const ab = native.allocBuffer(8 << 20);
  t.is(ab.byteLength, 8 << 20);
  t.true(new Uint8Array(ab).every((v) => v === 0));
  t.true(native.memoryStats().liveBytes >= before + (8 << 20));
});

test("the issue's reproduction no longer kills the process (separate process, native backend)", (t) => {
  const script = `
    import { conv3d, setBackend } from "./lib/index.ts";
    setBackend("native");
    const x = { data: new Float32Array(8*48*96*96).fill(1), shape: [1,8,48,96,96] };
    const w = { data: new Float32Array(16*8*27).fill(0.01), shape: [16,8,3,3,3] };
    const p = conv3d(x, w, null, { padding: 1 });
    structuredClone(x.data.buffer, { transfer: [x.data.buffer] });
    for (let i = 0; i < 50; i++) new Float32Array(1 << 20).fill(7);
    globalThis.gc?.();
    const y = await p;
    console.log("centre", y.data[((5 * 48 + 24) * 96 + 48) * 96 + 48].toFixed(4));
  `;
  const r = spawnSync(process.execPath, ["--expose-gc", "--import", "tsx", "--input-type=module", "-e", script], {
    cwd: ROOT,
    encoding: "utf8",
    timeout: 120_000,
  });
  t.is(r.signal, null, r.stderr);
  t.is(r.status, 0, r.stderr);
  t.regex(r.stdout, /centre 2\.1600/); // 8 channels × 27 taps × 0.01, an interior voxel
  void join;
});
