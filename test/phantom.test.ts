import test from "ava";
import { spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { connectedComponents, componentStats, makePhantom, parseSliceCsv, readNifti, slicePresence } from "../lib/index.js";
import { ROOT } from "./helpers.js";
import { VISIBLE_BLOOD_MAX_HU } from "../lib/phantom/phantom.js";

const small = { dims: [96, 112, 16] as [number, number, number], spacing: [1.8, 1.8, 5] as [number, number, number] };

test("phantoms are deterministic per seed and differ between seeds", (t) => {
  const a = makePhantom(7, small),
    b = makePhantom(7, small),
    c = makePhantom(8, small);
  t.deepEqual(a.ct.data, b.ct.data);
  t.deepEqual(a.labels.data, b.labels.data);
  // another seed is another head: its own noise in every voxel of the head, its own bleeds
  let differ = 0;
  for (let i = 0; i < a.ct.data.length; i++) if (a.ct.data[i] !== c.ct.data[i]) differ++;
  t.true(differ > 0.4 * a.ct.data.length, `${differ} of ${a.ct.data.length} voxels differ`); // 53 % (the air around the head is noiseless)
});

test("anatomy and blood have the intensities of head CT", (t) => {
  const seen = new Set<number>();
  let none = 0;
  for (let s = 0; s < 12; s++) {
    const p = makePhantom(s, small);
    const sums = new Map<number, { n: number; sum: number }>();
    let air = 0,
      bone = 0,
      brain = 0;
    for (let i = 0; i < p.ct.data.length; i++) {
      const v = p.ct.data[i]!,
        l = p.labels.data[i]!;
      if (v <= -990) air++;
      if (v >= 700) bone++;
      if (v >= 15 && v <= 50 && l === 0) brain++;
      if (l) {
        const e = sums.get(l) ?? { n: 0, sum: 0 };
        e.n++;
        e.sum += v;
        sums.set(l, e);
      }
    }
    t.true(
      air > 0.1 * p.ct.data.length && bone > 1000 && brain > 0.1 * p.ct.data.length,
      `seed ${s}: air ${air}, bone ${bone}, brain ${brain}`,
    );
    // blood is hyperdense: 50–90 HU where it is not next to bone (EDH/SDH lie against the skull)
    for (const [c, e] of sums) {
      seen.add(c);
      const mean = e.sum / e.n;
      t.true(c === 1 || c === 5 ? mean > 50 : mean > 40 && mean < 100, `seed ${s} class ${c}: mean ${mean.toFixed(0)} HU`);
    }
    if (!p.classes.length) none++;
    t.deepEqual(p.classes, [...sums.keys()].sort());
  }
  t.deepEqual([...seen].sort(), [1, 2, 3, 4, 5]);
  t.true(none < 12);
});

test("extra-axial bleeds (EDH, SDH) lie against the skull", (t) => {
  let checked = 0;
  for (let s = 0; s < 20 && checked < 3; s++) {
    const p = makePhantom(s, small);
    if (!p.classes.includes(1) && !p.classes.includes(5)) continue;
    const nx = p.ct.dims[0];
    let touching = 0,
      total = 0;
    for (let i = 0; i < p.labels.data.length; i++) {
      const l = p.labels.data[i]!;
      if (l !== 1 && l !== 5) continue;
      total++;
      const x = i % nx;
      const near = [-2, -1, 1, 2].some((d) => {
        const j = i + d,
          k = i + d * nx;
        return (x + d >= 0 && x + d < nx && p.ct.data[j]! > 300) || (k >= 0 && k < p.ct.data.length && p.ct.data[k]! > 300);
      });
      if (near) touching++;
    }
    t.true(touching / total > 0.2, `seed ${s}: ${touching} of ${total} extra-axial voxels are within 2 voxels of bone`);
    checked++;
  }
  t.true(checked > 0);
});

test("blood the truth calls blood looks like blood: partial volume by area, a point spread in mm", (t) => {
  // Noiseless, at the demo's 1.8 mm: most voxels of every class read as acute blood (45–110 HU in
  // the BHSD window). A blur defined in voxels (1.8 mm → ≈ 3.6 mm wide) mixed bone into half of
  // every subdural and hid a third of the sulcal blood; a labelled voxel is one blood fills most of.
  const inRange = new Map<number, [number, number]>();
  let bright = 0;
  for (let s = 0; s < 6; s++) {
    const p = makePhantom(100 + s, { dims: [128, 128, 24], spacing: [1.8, 1.8, 5], noiseHu: 0 });
    for (let i = 0; i < p.labels.data.length; i++) {
      const l = p.labels.data[i]!;
      if (!l) continue;
      const e = inRange.get(l) ?? [0, 0];
      const v = p.ct.data[i]!;
      if (v >= 45 && v <= 110) e[0]++;
      if (v > VISIBLE_BLOOD_MAX_HU) bright++;
      e[1]++;
      inRange.set(l, e);
    }
  }
  t.deepEqual([...inRange.keys()].sort(), [1, 2, 3, 4, 5]);
  for (const [c, [a, n]] of inRange) t.true(a / n >= 0.65, `class ${c}: ${a} of ${n} labelled voxels read 45–110 HU`);
  // what shows white in the BHSD window (bone mixed in) is skull to an annotator: never labelled
  t.is(bright, 0, `labelled voxels brighter than ${VISIBLE_BLOOD_MAX_HU} HU`);
  // the point spread does not scale with the voxel: at 0.9 mm the same anatomy's blood is as visible
  const fine = makePhantom(7, { dims: [200, 240, 24], spacing: [0.9, 0.9, 5], noiseHu: 0 });
  let a = 0,
    n = 0;
  for (let i = 0; i < fine.labels.data.length; i++)
    if (fine.labels.data[i]) {
      n++;
      if (fine.ct.data[i]! >= 45 && fine.ct.data[i]! <= 110) a++;
    }
  t.true(n > 0 && a / n >= 0.65, `0.9 mm: ${a} of ${n}`);
});

test("bhsd phantom writes BHSD's layout with matching slice labels", async (t) => {
  const out = mkdtempSync(join(tmpdir(), "bhsd-ph-"));
  const r = spawnSync(
    process.execPath,
    [
      join(ROOT, "dist", "cli", "main.js"),
      "phantom",
      "--out",
      out,
      "--cases",
      "2",
      "--seed",
      "3",
      "--dims",
      "64,80,12",
      "--spacing",
      "2,2,5",
      "--json",
    ],
    { encoding: "utf8", timeout: 60_000 },
  );
  t.is(r.status, 0, r.stderr);
  const o = JSON.parse(r.stdout);
  t.is(o.cases.length, 2);
  for (const c of o.cases) {
    const ct = await readNifti(join(out, "images", `${c.name}.nii.gz`));
    const gt = await readNifti(join(out, "ground truths", `${c.name}.nii.gz`));
    t.is(ct.meta?.datatype, "int16");
    t.is(gt.meta?.datatype, "uint8");
    t.deepEqual(ct.dims, [64, 80, 12]);
    t.deepEqual(gt.affine, ct.affine);
    const csv = parseSliceCsv(readFileSync(join(out, "slice labels", `${c.name}.csv`), "utf8"));
    t.deepEqual(csv, slicePresence(gt));
    const { labels } = await connectedComponents(gt);
    const comps = await componentStats(labels, { classes: gt });
    t.deepEqual([...new Set(comps.map((k) => k.class))].sort(), c.classes);
  }
  t.true(existsSync(join(out, "cases.json")));
  const bad = spawnSync(process.execPath, [join(ROOT, "dist", "cli", "main.js"), "phantom", "--out", out, "--dims", "4,4"], {
    encoding: "utf8",
  });
  t.not(bad.status, 0);
  t.regex(bad.stderr, /--dims must be three integers/);
});
