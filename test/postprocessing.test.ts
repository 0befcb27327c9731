import test from "ava";
import { join } from "node:path";
import { backendInfo, cleanup, connectedComponents, loadModel, makePhantom, segment, setBackend, volumeFromArray } from "../lib/index.js";
import type { Volume } from "../lib/types.js";
import { backendsUnderTest, ROOT } from "./helpers.js";

// Expectations are built by hand from the geometry: which voxels touch, how many of each class.

/** A 12×6×3 uint8 volume (1 mm voxels: 1 voxel = 0.001 mL) with boxes of given classes. */
function boxes(list: { cls: number; x: [number, number]; y: [number, number]; z: [number, number] }[]): Volume {
  const [nx, ny, nz] = [12, 6, 3];
  const data = new Uint8Array(nx * ny * nz);
  for (const b of list)
    for (let z = b.z[0]; z <= b.z[1]; z++)
      for (let y = b.y[0]; y <= b.y[1]; y++) for (let x = b.x[0]; x <= b.x[1]; x++) data[x + nx * (y + ny * z)] = b.cls;
  return volumeFromArray(data, [3, 6, 12]);
}

const count = (v: Volume, cls: number) => (v.data as Uint8Array).reduce((a, x) => a + (x === cls ? 1 : 0), 0);

for (const { name: backend } of backendsUnderTest()) {
  test.serial(`[${backend}] mergeClasses: a connected bleed of a group takes the class most of its voxels have`, async (t) => {
    setBackend(backend);
    // blob A (x 0–4): 3 columns of SDH (5) beside 2 of EDH (1), touching → all SDH (27 + 18 voxels);
    // an IPH (2) box touching it stays IPH (not in the group); blob B (x 8–9): EDH alone, apart → EDH;
    // blob C (x 11): 3 voxels of SDH over 3 of EDH (a tie) → the group's first class, EDH
    const v = boxes([
      { cls: 5, x: [0, 2], y: [0, 2], z: [0, 2] },
      { cls: 1, x: [3, 4], y: [0, 2], z: [0, 2] },
      { cls: 2, x: [0, 4], y: [3, 3], z: [0, 0] },
      { cls: 1, x: [8, 9], y: [0, 1], z: [0, 1] },
      { cls: 5, x: [11, 11], y: [0, 2], z: [0, 0] },
      { cls: 1, x: [11, 11], y: [0, 2], z: [1, 1] },
    ]);
    const out = await cleanup(v, { mergeClasses: [[1, 5]] });
    t.is(count(out, 5), 45);
    t.is(count(out, 2), 5);
    t.is(count(out, 1), 8 + 6);
    const at = (x: number, y: number, z: number) => out.data[x + 12 * (y + 6 * z)];
    t.is(at(4, 2, 2), 5);
    t.is(at(8, 0, 0), 1);
    t.is(at(11, 0, 0), 1);
    t.is(at(11, 0, 1), 1);
    t.is(out.data.constructor, Uint8Array);
    // the group named the other way round: the tie goes to SDH
    t.is((await cleanup(v, { mergeClasses: [[5, 1]] })).data[11], 5);
    // 6-connectivity: blob C's two rows still touch by faces; a diagonal-only neighbour would not
    const diag = boxes([
      { cls: 5, x: [0, 1], y: [0, 0], z: [0, 0] },
      { cls: 1, x: [2, 2], y: [1, 1], z: [0, 0] },
    ]);
    t.is(count(await cleanup(diag, { mergeClasses: [[1, 5]] }), 5), 3);
    t.is(count(await cleanup(diag, { mergeClasses: [[1, 5]], connectivity: 6 }), 1), 1);
  });

  test.serial(`[${backend}] minVolumeMl per class, after the merge, beside minVoxels`, async (t) => {
    setBackend(backend);
    const v = boxes([
      { cls: 1, x: [0, 1], y: [0, 1], z: [0, 0] }, // EDH 4 voxels = 0.004 mL
      { cls: 5, x: [4, 7], y: [0, 3], z: [0, 1] }, // SDH 32 voxels
      { cls: 2, x: [10, 10], y: [0, 0], z: [0, 2] }, // IPH 3 voxels
      { cls: 4, x: [10, 11], y: [4, 5], z: [2, 2] }, // SAH 4 voxels
    ]);
    const out = await cleanup(v, { minVolumeMl: { "1": 0.005, "5": 0.005 } });
    t.deepEqual(
      [1, 2, 4, 5].map((c) => count(out, c)),
      [0, 3, 4, 32],
    ); // classes not named have no minimum
    const both = await cleanup(v, { minVolumeMl: { "5": 0.04 }, minVoxels: 4 });
    t.deepEqual(
      [1, 2, 4, 5].map((c) => count(both, c)),
      [4, 0, 4, 0],
    );
    // merged first: EDH touching a larger SDH becomes SDH and is measured with it
    const touching = boxes([
      { cls: 1, x: [0, 1], y: [0, 1], z: [0, 0] },
      { cls: 5, x: [2, 5], y: [0, 1], z: [0, 0] },
    ]);
    t.is(count(await cleanup(touching, { mergeClasses: [[1, 5]], minVolumeMl: { "1": 0.005, "5": 0.005 } }), 5), 12);
  });
}

test("cleanup's options are checked before any work, naming the option", async (t) => {
  const v = boxes([{ cls: 1, x: [0, 1], y: [0, 0], z: [0, 0] }]);
  await t.throwsAsync(cleanup(v, { mergeClasses: [[1]] }), { message: /2 to 8 distinct classes.*for options\.mergeClasses\[0\]/ });
  await t.throwsAsync(
    cleanup(v, {
      mergeClasses: [
        [1, 5],
        [5, 2],
      ],
    }),
    { message: /no class in two groups for options\.mergeClasses\[1\]/ },
  );
  await t.throwsAsync(cleanup(v, { mergeClasses: [[0, 1]] }), { message: /options\.mergeClasses\[0\]/ });
  await t.throwsAsync(cleanup(v, { mergeClasses: [[1, 2, 3, 4, 5, 6, 7, 8, 9]] }), { message: /2 to 8 distinct classes/ });
  await t.throwsAsync(cleanup(v, { mergeClasses: "1,5" as never }), { message: /options\.mergeClasses/ });
  await t.throwsAsync(cleanup(v, { minVolumeMl: { EDH: 1 } }), {
    message: /class value .* for options\.minVolumeMl key but received .*EDH/,
  });
  await t.throwsAsync(cleanup(v, { minVolumeMl: { "1": -1 } }), { message: />= 0 for options\.minVolumeMl\["1"\]/ });
  await t.throwsAsync(cleanup(v, { minVolumeMl: { "1": 1 }, perClass: false }), { message: /perClass/ });
  await t.throwsAsync(cleanup(v, { minVolume: 1 } as never), { message: /no other option.* for options\.minVolume / });
});

test.serial(
  "the demo model's own post-processing: segment applies it unless told otherwise, and a bad one is refused at load",
  async (t) => {
    setBackend(backendInfo().available.native ? "native" : "ts");
    const modelPath = join(ROOT, "models", "demo.onnx");
    const model = await loadModel(modelPath);
    t.deepEqual(model.config.postprocessing?.mergeClasses, [[1, 5]]);
    // a phantom whose raw prediction mixes epidural and subdural voxels in one collection (seed 3000008)
    const p = makePhantom(3000008, { dims: [128, 128, 24], spacing: [1.8, 1.8, 5] });
    const raw = (await segment(p.ct, model, { cleanup: false })).labels;
    const own = (await segment(p.ct, model)).labels;
    const extraAxial = (v: Volume) =>
      volumeFromArray(
        Uint8Array.from(v.data as Uint8Array, (x) => (x === 1 || x === 5 ? 1 : 0)),
        [24, 128, 128],
      );
    const mixed = async (v: Volume) => {
      const { labels, count: n } = await connectedComponents(extraAxial(v), { perClass: false });
      const seen = new Map<number, Set<number>>();
      for (let i = 0; i < v.data.length; i++)
        if (labels.data[i]) (seen.get(labels.data[i]!) ?? seen.set(labels.data[i]!, new Set()).get(labels.data[i]!)!).add(v.data[i]!);
      return { blobs: n, mixed: [...seen.values()].filter((s) => s.size > 1).length };
    };
    const before = await mixed(raw);
    const after = await mixed(own);
    t.log(`extra-axial collections: ${before.blobs} (${before.mixed} mixed) without, ${after.blobs} (${after.mixed} mixed) with`);
    t.true(before.mixed > 0, "the raw prediction of this seed mixes EDH and SDH in one collection");
    t.is(after.mixed, 0);
    // every remaining EDH/SDH component holds at least 0.8 mL (50 voxels of 16.2 µL)
    const { labels, count: n } = await connectedComponents(own, { perClass: true });
    const sizes = new Map<number, { cls: number; n: number }>();
    for (let i = 0; i < own.data.length; i++) {
      const l = labels.data[i]!;
      if (l) sizes.set(l, { cls: own.data[i]!, n: (sizes.get(l)?.n ?? 0) + 1 });
    }
    t.true(n > 0);
    for (const s of sizes.values()) t.true(s.cls === 1 || s.cls === 5 ? s.n * 0.0162 >= 0.8 : s.n >= 10, JSON.stringify(s));
    await t.throwsAsync(loadModel(modelPath, { postprocessing: { mergeClasses: [[1, 1]] } }), {
      message: /model config: Expected .* for postprocessing\.mergeClasses\[0\]/,
    });
    const bad = volumeFromArray(new Uint8Array(8), [2, 2, 2]);
    await t.throwsAsync(segment(bad, model, { cleanup: { keepLargest: -1 } }), { message: /options\.cleanup\.keepLargest/ });
  },
);
