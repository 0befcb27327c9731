import test from "ava";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { gunzipSync } from "node:zlib";
import { cleanup, componentStats, connectedComponents, readNpy, setBackend, volumeFromArray } from "../lib/index.js";
import { getBackend } from "../lib/backends/index.js";
import { asLabelVolume } from "../lib/ops/components.js";
import type { Volume } from "../lib/types.js";
import { backendsUnderTest, ROOT, sharedFixture } from "./helpers.js";

// scipy.ndimage.label's outputs (shared/fixtures/voxel) are the reference.
const expected = JSON.parse(readFileSync(sharedFixture("voxel", "expected.json"), "utf8")).ccl as Record<string, Record<string, unknown>>;

async function maskVolume(name: string): Promise<Volume> {
  const m = await readNpy(sharedFixture("voxel", `ccl_${name}_mask.npy`));
  return volumeFromArray(m.data, m.shape);
}

/** scipy's labels of test/fixtures/ccl (made by make_ccl_fixtures.py there: rows of 130 voxels, int16 classes). */
const wideFixture = (name: string) => readNpy(gunzipSync(readFileSync(join(ROOT, "test", "fixtures", "ccl", `ccl_wide_${name}.npy.gz`))));

function firstMismatch(a: ArrayLike<number>, b: ArrayLike<number>): string | undefined {
  if (a.length !== b.length) return `length ${a.length} vs ${b.length}`;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return `voxel ${i}: ${a[i]} vs ${b[i]}`;
  return undefined;
}

/** Whether two labellings induce the same partition of the voxels (numbering aside). */
function samePartition(a: Int32Array, b: ArrayLike<number>): string | undefined {
  const ab = new Map<number, number>(),
    ba = new Map<number, number>();
  for (let i = 0; i < a.length; i++) {
    const x = a[i]!,
      y = b[i]!;
    if ((x === 0) !== (y === 0)) return `voxel ${i}: ${x} vs ${y}`;
    if (x === 0) continue;
    if ((ab.get(x) ?? y) !== y || (ba.get(y) ?? x) !== x) return `voxel ${i} joins ${x}/${y} differently`;
    ab.set(x, y);
    ba.set(y, x);
  }
  return undefined;
}

const backends = backendsUnderTest();
/** Tests comparing the native backend with others: skipped, saying why, where it is not under test. */
const nativeTest = backends.some((b) => b.name === "native") ? test : test.skip;
if (!backends.some((b) => b.name === "native"))
  console.log("# native comparisons skipped: the native backend is not built here or not in BHSD_TEST_BACKENDS");

for (const { name: backend } of backends) {
  for (const kase of ["blobs", "noise"]) {
    for (const conn of [6, 18, 26] as const) {
      test.serial(`${backend}: ${kase} mask, ${conn}-connectivity equals scipy.ndimage.label exactly`, async (t) => {
        setBackend(backend);
        const vol = await maskVolume(kase);
        const want = await readNpy(sharedFixture("voxel", `ccl_${kase}_labels${conn}.npy`));
        const { labels, count } = await connectedComponents(vol, { connectivity: conn });
        t.is(count, expected[kase]![`components${conn}`]);
        t.is(firstMismatch(labels.data, want.data), undefined);
        const stats = await componentStats(labels);
        t.is(stats.length, count);
        t.is(Math.max(...stats.map((s) => s.voxels)), expected[kase]![`largest${conn}`]);
        t.deepEqual(labels.dims, vol.dims);
      });
    }
  }

  test.serial(`${backend}: multi-class volume, per-class 26-connectivity gives scipy's partition`, async (t) => {
    setBackend(backend);
    const vol = await maskVolume("multiclass");
    const want = await readNpy(sharedFixture("voxel", "ccl_multiclass_labels26.npy"));
    const { labels, count } = await connectedComponents(vol, { connectivity: 26, perClass: true });
    t.is(count, expected.multiclass!.components26);
    t.is(samePartition(labels.data, want.data), undefined);
    const stats = await componentStats(labels, { classes: vol });
    const perClass: Record<string, number> = {};
    for (const s of stats) perClass[s.class] = (perClass[s.class] ?? 0) + 1;
    t.deepEqual(perClass, expected.multiclass!.components26_per_class);
  });

  for (const [what, perClass, conns] of [
    ["perclass", true, [6, 18, 26]],
    ["binary", false, [6, 26]],
  ] as const) {
    test.serial(
      `${backend}: rows of 130 voxels, int16 classes (-5, 1, 2, 700), ${what}: labels equal scipy's at ${conns.join(", ")}-connectivity`,
      async (t) => {
        setBackend(backend);
        const m = await wideFixture("mask");
        t.true(m.data instanceof Int16Array);
        const vol = volumeFromArray(m.data, m.shape);
        for (const conn of conns) {
          const want = await wideFixture(`${what}${conn}`);
          const { labels, count } = await connectedComponents(vol, { connectivity: conn, perClass });
          let max = 0;
          for (const v of want.data as Int32Array) max = Math.max(max, v);
          t.is(count, max, `${conn}-connectivity: count`);
          t.is(firstMismatch(labels.data, want.data), undefined, `${conn}-connectivity: labels`);
        }
      },
    );
  }

  test.serial(`${backend}: edge cases with answers known by construction`, async (t) => {
    setBackend(backend);
    const run = async (data: Uint8Array, shape: number[], connectivity: 6 | 18 | 26 = 26, perClass = true) =>
      connectedComponents(volumeFromArray(data, shape), { connectivity, perClass });
    // empty
    let r = await run(new Uint8Array(4 * 5 * 6), [4, 5, 6]);
    t.is(r.count, 0);
    t.true(r.labels.data.every((v) => v === 0));
    // all foreground: one component, label 1 everywhere
    r = await run(new Uint8Array(3 * 7 * 5).fill(2), [3, 7, 5], 6);
    t.is(r.count, 1);
    t.true(r.labels.data.every((v) => v === 1));
    // 3-D checkerboard: every voxel alone with 6 and 18 (corners/edges…), one with 26? no: with 18, voxels share edges
    const cb = new Uint8Array(4 * 4 * 4).map((_, i) => ((i % 4) + ((i >> 2) % 4) + (i >> 4)) % 2);
    t.is((await run(cb, [4, 4, 4], 6)).count, 32);
    t.is((await run(cb, [4, 4, 4], 18)).count, 1);
    t.is((await run(cb, [4, 4, 4], 26)).count, 1);
    // one-voxel components, numbered in raster order
    const dots = new Uint8Array(5 * 5 * 5);
    for (const i of [124, 0, 62, 12]) dots[i] = 1;
    r = await run(dots, [5, 5, 5], 26);
    t.is(r.count, 4);
    t.deepEqual(
      [0, 12, 62, 124].map((i) => r.labels.data[i]),
      [1, 2, 3, 4],
    );
    // diagonal neighbours: joined by 26 only (corner), or by 18 (edge)
    const corner = new Uint8Array(8);
    corner[0] = corner[7] = 1;
    t.is((await run(corner, [2, 2, 2], 26)).count, 1);
    t.is((await run(corner, [2, 2, 2], 18)).count, 2);
    const edge = new Uint8Array(8);
    edge[0] = edge[6] = 1; // (0,0,0) and (0,1,1)
    t.is((await run(edge, [2, 2, 2], 18)).count, 1);
    t.is((await run(edge, [2, 2, 2], 6)).count, 2);
    // a shell touching every face is one component; its hollow inside is background
    const n = 6,
      shell = new Uint8Array(n ** 3);
    for (let z = 0; z < n; z++)
      for (let y = 0; y < n; y++)
        for (let x = 0; x < n; x++) {
          if ([x, y, z].some((c) => c === 0 || c === n - 1)) shell[(z * n + y) * n + x] = 1;
        }
    t.is((await run(shell, [n, n, n], 6)).count, 1);
    // 1×1×N and N×1×1 volumes
    const line = new Uint8Array(1000).map((_, i) => (i % 10 < 7 ? 1 : 0));
    t.is((await run(line, [1000, 1, 1], 6)).count, 100);
    t.is((await run(line, [1, 1, 1000], 6)).count, 100);
    // per class: touching classes stay apart, or merge without perClass
    const two = new Uint8Array([1, 1, 2, 2, 0, 3]);
    t.is((await run(two, [1, 1, 6], 26, true)).count, 3);
    t.is((await run(two, [1, 1, 6], 26, false)).count, 2);
  });

  test.serial(`${backend}: any integer dtype gives the same labels`, async (t) => {
    setBackend(backend);
    const vol = await maskVolume("multiclass");
    const ref = await connectedComponents(vol);
    for (const A of [Int8Array, Int16Array, Uint16Array, Int32Array, Uint32Array]) {
      const r = await connectedComponents({ ...vol, data: A.from(vol.data as Uint8Array) });
      t.is(firstMismatch(r.labels.data, ref.labels.data), undefined, A.name);
    }
  });
}

nativeTest("randomised: native equals ts on many small random volumes", async (t) => {
  const ts = getBackend("ts"),
    native = getBackend("native");
  let seed = 7;
  const rnd = () => (seed = (seed * 1103515245 + 12345) >>> 0) / 2 ** 32;
  for (let k = 0; k < 300; k++) {
    const dims: [number, number, number] = [1 + Math.floor(rnd() * 20), 1 + Math.floor(rnd() * 12), 1 + Math.floor(rnd() * 12)];
    const n = dims[0] * dims[1] * dims[2];
    const density = rnd(),
      classes = 1 + Math.floor(rnd() * 4);
    const data = new Uint8Array(n).map(() => (rnd() < density ? 1 + Math.floor(rnd() * classes) : 0));
    const conn = ([6, 18, 26] as const)[k % 3]!;
    const perClass = k % 2 === 0;
    const a = new Int32Array(n),
      b = new Int32Array(n);
    const ca = await ts.connectedComponents(data, dims, conn, perClass, a);
    const cb = await native.connectedComponents(data, dims, conn, perClass, b);
    if (ca !== cb || firstMismatch(a, b))
      return t.fail(`case ${k}: dims ${dims} conn ${conn} perClass ${perClass}: ${ca} vs ${cb}, ${firstMismatch(a, b)}`);
  }
  t.pass();
});

for (const { name: backend } of backends) {
  test.serial(`${backend}: componentStats measures boxes and ellipsoids as geometry says`, async (t) => {
    setBackend(backend);
    const [nx, ny, nz] = [80, 60, 16];
    const data = new Uint8Array(nx * ny * nz);
    const set = (x: number, y: number, z: number, v: number) => (data[(z * ny + y) * nx + x] = v);
    // a 10×6×3 box of class 2 at x 2..11, y 3..8, z 1..3
    for (let z = 1; z <= 3; z++) for (let y = 3; y <= 8; y++) for (let x = 2; x <= 11; x++) set(x, y, z, 2);
    // an ellipsoid of class 5, semi-axes 16 and 10 voxels in-plane and 6 slices
    for (let z = 0; z < nz; z++)
      for (let y = 0; y < ny; y++)
        for (let x = 0; x < nx; x++) {
          if (((x - 50) / 16) ** 2 + ((y - 30) / 10) ** 2 + ((z - 8) / 6) ** 2 <= 1) set(x, y, z, 5);
        }
    const spacing: [number, number, number] = [0.5, 0.5, 5];
    const vol: Volume = { data, dims: [nx, ny, nz], spacing, affine: [0.5, 0, 0, -10, 0, 0.5, 0, 20, 0, 0, 5, 100, 0, 0, 0, 1] };
    const { labels, count } = await connectedComponents(vol);
    t.is(count, 2);
    const [box, ell] = await componentStats(labels, { classes: vol });
    t.is(box!.class, 2);
    t.is(box!.voxels, 180);
    t.true(Math.abs(box!.volumeMl - (180 * 0.5 * 0.5 * 5) / 1000) < 1e-12);
    t.deepEqual(box!.bbox, { min: [2, 3, 1], max: [11, 8, 3] });
    t.deepEqual(box!.centroid.voxel, [6.5, 5.5, 2]);
    t.deepEqual(box!.centroid.world, [0.5 * 6.5 - 10, 0.5 * 5.5 + 20, 5 * 2 + 100]);
    t.is(box!.slices, 3);
    // ABC/2 of a box is exactly its volume: A = diagonal, B = 2wh/A, C = depth
    t.true(Math.abs(box!.abc.a - Math.hypot(5, 3)) < 1e-9);
    t.true(Math.abs(box!.abc2Ml - box!.volumeMl) < 1e-9, `${box!.abc2Ml} vs ${box!.volumeMl}`);
    t.is(ell!.class, 5);
    // for an ellipsoid ABC/2 approximates the volume (π/6 ≈ 1/2); counting whole end slices in C
    // makes it overestimate on thick slices, as it does at the bedside
    const ratio = ell!.abc2Ml / ell!.volumeMl;
    t.true(ratio > 0.95 && ratio < 1.25, `${ell!.abc2Ml} vs ${ell!.volumeMl}`);
    t.is(ell!.slices, 13);
    t.is(ell!.abc.slice, 8);
    t.true(Math.abs(ell!.abc.a - 33 * 0.5) < 0.6 && Math.abs(ell!.abc.b - 21 * 0.5) < 0.6, `${ell!.abc.a} ${ell!.abc.b}`);
  });

  test.serial(`${backend}: cleanup removes small components and keeps the largest per class`, async (t) => {
    setBackend(backend);
    const vol = await maskVolume("multiclass");
    const ref = await readNpy(sharedFixture("voxel", "ccl_multiclass_labels26.npy"));
    // sizes of scipy's components, and the class of each
    const size = new Map<number, number>(),
      cls = new Map<number, number>();
    for (let i = 0; i < ref.data.length; i++) {
      const l = ref.data[i]!;
      if (!l) continue;
      size.set(l, (size.get(l) ?? 0) + 1);
      cls.set(l, vol.data[i]!);
    }
    const largest = new Map<number, number>();
    for (const [l, n] of size) largest.set(cls.get(l)!, Math.max(largest.get(cls.get(l)!) ?? 0, n));

    const kept = await cleanup(vol, { keepLargest: 1 });
    t.is(kept.data.constructor, vol.data.constructor);
    const { labels, count } = await connectedComponents(kept);
    t.is(count, 5);
    const st = await componentStats(labels, { classes: kept });
    for (const s of st) t.is(s.voxels, largest.get(s.class));

    const minVoxels = 20;
    const big = await cleanup(vol, { minVoxels });
    const after = await connectedComponents(big);
    t.is(after.count, [...size.values()].filter((n) => n >= minVoxels).length);
    const voxelMl = vol.spacing.reduce((a, b) => a * b) / 1000;
    const byMl = await cleanup(vol, { minVolumeMl: minVoxels * voxelMl });
    t.deepEqual(byMl.data, big.data);
    t.deepEqual(await cleanup(vol, {}), vol); // nothing asked, nothing removed
  });
}

test("bad input is refused with the argument named", async (t) => {
  const v = volumeFromArray(new Float32Array(8), [2, 2, 2]);
  await t.throwsAsync(connectedComponents(v), {
    message: /Expected integer voxels .* for volume.data but received Float32Array of length 8/,
  });
  const u = volumeFromArray(new Uint8Array(8), [2, 2, 2]);
  await t.throwsAsync(connectedComponents(u, { connectivity: 8 as never }), {
    message: /Expected 6, 18 or 26 for options.connectivity but received number 8/,
  });
  await t.throwsAsync(connectedComponents({ ...u, dims: [3, 2, 2] }), {
    message: /volume.data has 8 voxels but volume.dims \[3, 2, 2\] need 12/,
  });
  await t.throwsAsync(connectedComponents(u, { perClass: "yes" as never }), { message: /Expected a boolean for options.perClass/ });
  await t.throwsAsync(cleanup(u, { keepLargest: 1.5 }), { message: /Expected a non-negative integer for options.keepLargest/ });
  await t.throwsAsync(componentStats(u as never), { message: /Expected an Int32Array .* for labels.data/ });
  const l = volumeFromArray(new Int32Array(8), [2, 2, 2]);
  await t.throwsAsync(componentStats(l, { classes: new Uint8Array(7) }), { message: /options.classes has 7 voxels but labels has 8/ });
});

// (serial: the process's CPU time and memory are measured, which concurrent tests would add to)
test.serial("componentStats' cost follows the voxels, not the label values: sparse labels up to 2^31 - 1", async (t) => {
  // issue 18: an 8-voxel volume with label 1e7 took 15 s and 1.7 GB; 5e7 was killed
  for (const { name: backend } of backends) {
    setBackend(backend);
    const big = 2 ** 31 - 1;
    const data = new Int32Array(8);
    data[1] = 10_000_000; // (1, 0, 0)
    data[6] = big; // (0, 1, 1)
    data[7] = 50_000_000; // (1, 1, 1)
    const spacing: [number, number, number] = [0.5, 0.25, 4];
    const labels: Volume<Int32Array> = { data, dims: [2, 2, 2], spacing, affine: [0.5, 0, 0, 10, 0, 0.25, 0, 20, 0, 0, 4, 30, 0, 0, 0, 1] };
    const before = process.memoryUsage().arrayBuffers;
    const cpu0 = process.cpuUsage();
    const stats = await componentStats(labels, { classes: new Uint8Array([0, 3, 0, 0, 0, 0, 5, 4]) });
    const cpu = process.cpuUsage(cpu0);
    t.true((cpu.user + cpu.system) / 1000 < 1000, `${backend}: ${((cpu.user + cpu.system) / 1000).toFixed(0)} ms of CPU`);
    t.true(process.memoryUsage().arrayBuffers - before < 16 << 20, `${backend}: allocated per label value`);
    // one voxel each, in increasing label order, each with its own value as label
    const at = (x: number, y: number, z: number) => [x, y, z] as [number, number, number];
    const want = [
      { label: 10_000_000, class: 3, p: at(1, 0, 0) },
      { label: 50_000_000, class: 4, p: at(1, 1, 1) },
      { label: big, class: 5, p: at(0, 1, 1) },
    ];
    t.is(stats.length, 3, backend);
    for (const [i, w] of want.entries()) {
      const s = stats[i]!;
      t.is(s.label, w.label, backend);
      t.is(s.class, w.class, backend);
      t.is(s.voxels, 1);
      t.is(s.volumeMl, (0.5 * 0.25 * 4) / 1000);
      t.deepEqual(s.bbox, { min: w.p, max: w.p });
      t.deepEqual(s.centroid.voxel, w.p);
      t.deepEqual(s.centroid.world, [10 + 0.5 * w.p[0], 20 + 0.25 * w.p[1], 30 + 4 * w.p[2]]);
      t.is(s.slices, 1);
      t.is(s.abc.a, Math.hypot(0.5, 0.25)); // one voxel: its diagonal
      t.is(s.abc.c, 4);
    }
  }
});

test("componentStats refuses more components than options.maxComponents before measuring them", async (t) => {
  const data = new Int32Array(64);
  for (let i = 0; i < 5; i++) data[i * 9] = i + 1; // 5 one-voxel components, labels 1..5
  const labels = volumeFromArray(data, [4, 4, 4]);
  await t.throwsAsync(componentStats(labels, { maxComponents: 4 }), {
    message: "labels holds 5 components, more than options.maxComponents (4)",
  });
  t.is((await componentStats(labels, { maxComponents: 5 })).length, 5);
  const sparse = volumeFromArray(
    data.map((v) => (v ? v * 1_000_003 : 0)),
    [4, 4, 4],
  );
  await t.throwsAsync(componentStats(sparse, { maxComponents: 4 }), {
    message: "labels holds 5 components, more than options.maxComponents (4)",
  });
  await t.throwsAsync(componentStats(labels, { maxComponents: -1 }), {
    message: /Expected a non-negative integer for options.maxComponents but received number -1/,
  });
  // class values as floats (label files often store them so): whole numbers are labels, 1.5 is not
  const classes = Float32Array.from(data, (v) => (v ? 2 : 0));
  t.deepEqual(
    (await componentStats(labels, { classes })).map((c) => c.class),
    [2, 2, 2, 2, 2],
  );
  classes[9] = 1.5;
  await t.throwsAsync(componentStats(labels, { classes }), { message: /integer label values \(voxel 9 holds 1\.5\) for options\.classes/ });
});

test("sparse labels measure as their dense renumbering does (a monotonic relabelling changes only the label values)", async (t) => {
  const vol = await maskVolume("multiclass");
  const { labels } = await connectedComponents(vol);
  const dense = await componentStats(labels, { classes: vol });
  const map = (v: number) => (v ? 70_000 + v * 9_973 : 0); // above the dense range, order kept
  const sparse = await componentStats({ ...labels, data: labels.data.map(map) }, { classes: vol });
  t.deepEqual(
    sparse.map((s) => s.label),
    dense.map((s) => map(s.label)),
  );
  t.deepEqual(
    sparse.map((s) => ({ ...s, label: 0 })),
    dense.map((s) => ({ ...s, label: 0 })),
  );
});

test("labels with gaps below a sixteenth of the voxel count are measured in place, with the same numbers", async (t) => {
  // 128×128×80 voxels: labels up to 81 920 are measured as they are (no renumbering); 1, 70 000 and
  // 80 000 at three voxels must give three components, not 80 000, and each its own value as label
  const dims: [number, number, number] = [128, 128, 80];
  const data = new Int32Array(dims[0] * dims[1] * dims[2]);
  const at = (x: number, y: number, z: number) => (z * dims[1] + y) * dims[0] + x;
  data[at(3, 4, 5)] = 1;
  data[at(4, 4, 5)] = 1; // two voxels in a row
  data[at(100, 7, 9)] = 70_000;
  data[at(9, 120, 79)] = 80_000;
  const labels = volumeFromArray(data, [80, 128, 128], [5, 0.5, 0.5]);
  for (const { name: backend } of backends) {
    setBackend(backend);
    const stats = await componentStats(labels);
    t.deepEqual(
      stats.map((s) => [s.label, s.voxels, s.bbox.min, s.bbox.max]),
      [
        [1, 2, [3, 4, 5], [4, 4, 5]],
        [70_000, 1, [100, 7, 9], [100, 7, 9]],
        [80_000, 1, [9, 120, 79], [9, 120, 79]],
      ],
      backend,
    );
    // the same through the renumbering path (its labels shifted past the in-place range)
    const shifted = await componentStats({ ...labels, data: data.map((v) => (v ? v + 100_000 : 0)) }, { maxComponents: 3 });
    t.deepEqual(
      shifted.map((s) => ({ ...s, label: s.label - 100_000 })),
      stats,
      backend,
    );
    await t.throwsAsync(componentStats(labels, { maxComponents: 2 }), {
      message: "labels holds 3 components, more than options.maxComponents (2)",
    });
  }
});

test("asLabelVolume accepts integer labels in range and refuses a CT in Hounsfield units, with what came", async (t) => {
  const ct = volumeFromArray(new Int16Array([-1024, 40, 0, 700, 35, 0, 0, 1]), [2, 2, 2]);
  await t.throwsAsync(asLabelVolume(ct, { name: "ct.nii.gz" }), {
    message:
      "ct.nii.gz holds values from -1024 to 700; labels are integers from 0 to 255 (is it a CT in Hounsfield units rather than labels?)",
  });
  const high = volumeFromArray(new Uint16Array([0, 300, 0, 0, 0, 0, 0, 1]), [2, 2, 2]);
  await t.throwsAsync(asLabelVolume(high), {
    message: /volume holds values from 0 to 300; labels are integers from 0 to 255 \(raise the limit/,
  });
  t.is(await asLabelVolume(high, { maxLabel: 300 }), high);
  const floats = volumeFromArray(new Float32Array([0, 2, 0, 5, 0, 0, 0, 1]), [2, 2, 2]);
  const conv = await asLabelVolume(floats);
  t.true(conv.data instanceof Uint8Array);
  t.deepEqual(Array.from(conv.data), [0, 2, 0, 5, 0, 0, 0, 1]);
  await t.throwsAsync(asLabelVolume(volumeFromArray(new Float32Array([0, 2.5, 0, 0, 0, 0, 0, 0]), [2, 2, 2])), {
    message: /volume holds 2.5 at voxel 1; labels are integers/,
  });
  await t.throwsAsync(asLabelVolume(volumeFromArray(new Float32Array([0, NaN, 0, 0, 0, 0, 0, 0]), [2, 2, 2])), {
    message: /volume holds 1 NaN or infinite voxel/,
  });
  await t.throwsAsync(asLabelVolume(high, { maxLabel: -2 }), {
    message: /Expected an integer from 0 to 2147483647 for options.maxLabel but received number -2/,
  });
});

test("one-voxel components measure as the hull of their pixel's corners does (the fast path against a two-voxel neighbour's general one)", async (t) => {
  // a voxel alone, and the same voxel beside a second one on the next slice: the largest slice's
  // diameters of the pair come from the general path over the same single pixel
  for (const spacing of [
    [0.49, 0.49, 5],
    [0.5, 0.25, 4],
    [1.8, 0.7, 2],
  ] as [number, number, number][]) {
    const one = volumeFromArray(Uint8Array.from([0, 0, 0, 0, 1, 0, 0, 0, 0]), [1, 3, 3], [spacing[2], spacing[1], spacing[0]]);
    const two = volumeFromArray(
      Uint8Array.from([0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0]),
      [2, 3, 3],
      [spacing[2], spacing[1], spacing[0]],
    );
    const [s1] = await componentStats((await connectedComponents(one)).labels, { classes: one });
    const [s2] = await componentStats((await connectedComponents(two)).labels, { classes: two });
    t.is(s1!.voxels, 1);
    t.is(s2!.voxels, 2);
    t.true(
      Math.abs(s1!.abc.a - s2!.abc.a) < 1e-12 && Math.abs(s1!.abc.b - s2!.abc.b) < 1e-12,
      `${JSON.stringify(s1!.abc)} ${JSON.stringify(s2!.abc)}`,
    );
  }
});

nativeTest("native: labels made by the engine are written whole, even in a reused block that held other labels", async (t) => {
  // labels in engine memory are not cleared before labelling (every voxel is written): a block
  // that held a dense volume's labels, handed back, must come out as the next volume's labels only
  setBackend("native");
  const dims: [number, number, number] = [64, 64, 16];
  const n = dims[0] * dims[1] * dims[2];
  const { releaseEngineArray } = await import("../lib/backends/index.js");
  for (const conn of [6, 26] as const) {
    const dense = new Uint8Array(n).map((_, i) => (i % 3 === 0 ? 0 : 1));
    const first = await connectedComponents(volumeFromArray(dense, dims, [1, 1, 1]), { connectivity: conn });
    t.true(first.labels.data.some((v) => v > 0));
    releaseEngineArray(first.labels.data); // its block goes back to the engine's cache
    const empty = await connectedComponents(volumeFromArray(new Uint8Array(n), dims, [1, 1, 1]), { connectivity: conn });
    t.is(empty.count, 0);
    t.true(empty.labels.data.every((v) => v === 0));
    releaseEngineArray(empty.labels.data);
    // one voxel: a single label 1 there, 0 everywhere else
    const one = new Uint8Array(n);
    one[n - 5] = 3;
    const single = await connectedComponents(volumeFromArray(one, dims, [1, 1, 1]), { connectivity: conn });
    t.is(single.count, 1);
    t.is(
      single.labels.data.reduce((a, v, i) => a + (i === n - 5 ? (v === 1 ? 0 : 1) : v === 0 ? 0 : 1), 0),
      0,
    );
  }
});
