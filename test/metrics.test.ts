import test from "ava";
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { evaluate, readNpy, setBackend, toJson, volumeFromArray, writeNpy } from "../lib/index.js";
import type { CaseMetrics } from "../lib/index.js";
import type { Volume } from "../lib/types.js";
import { backendsUnderTest, sharedFixture } from "./helpers.js";

interface FixtureCase {
  gt: string;
  pred: string;
  spacing_zyx_mm: number[];
  nsd_tolerance_mm: number;
  per_class: Record<string, Record<string, number | string>>;
}
const fixtures = JSON.parse(readFileSync(sharedFixture("voxel", "expected.json"), "utf8")).metrics as FixtureCase[];

/** Compares our metrics (through their JSON form) with a reference in that form; counts exactly, the rest within 1e-4. */
function compare(got: CaseMetrics, want: Record<string, Record<string, number | string>>): string[] {
  const g = JSON.parse(toJson(got.perClass)) as Record<string, Record<string, number | string>>;
  const bad: string[] = [];
  for (const [c, keys] of Object.entries(want)) {
    for (const [k, e] of Object.entries(keys)) {
      const a = g[c]?.[k];
      const exact = ["tp", "fp", "fn"].includes(k) || typeof e === "string" || typeof a === "string";
      if (exact ? a !== e : Math.abs((a as number) - (e as number)) > 1e-4) bad.push(`class ${c} ${k}: ${a} vs ${e}`);
    }
    if (Object.keys(keys).length === 13 && Object.keys(g[c] ?? {}).length !== 13) bad.push(`class ${c}: keys ${Object.keys(g[c] ?? {})}`);
  }
  return bad;
}

const vol = (data: Uint8Array, shapeZYX: number[], spacingZYX: number[]) => volumeFromArray(data, shapeZYX, spacingZYX);

for (const { name: backend } of backendsUnderTest()) {
  for (const f of fixtures) {
    test.serial(`${backend}: ${f.gt} — every metric equals the scipy reference`, async (t) => {
      setBackend(backend);
      const g = await readNpy(sharedFixture("voxel", f.gt));
      const p = await readNpy(sharedFixture("voxel", f.pred));
      const r = await evaluate(vol(g.data as Uint8Array, g.shape, f.spacing_zyx_mm), vol(p.data as Uint8Array, p.shape, f.spacing_zyx_mm), {
        nsdToleranceMm: f.nsd_tolerance_mm,
      });
      t.deepEqual(compare(r, f.per_class), []);
      t.deepEqual(r.warnings, []);
    });
  }

  test.serial(`${backend}: cases the fixtures do not show, with answers known by hand`, async (t) => {
    setBackend(backend);
    const sp = [0.5, 0.5, 0.5];
    // both empty: NaN everywhere but counts and volumes
    let r = await evaluate(vol(new Uint8Array(64), [4, 4, 4], sp), vol(new Uint8Array(64), [4, 4, 4], sp));
    t.deepEqual(JSON.parse(toJson(r.perClass["3"])), {
      tp: 0,
      fp: 0,
      fn: 0,
      dice: "nan",
      iou: "nan",
      precision: "nan",
      recall: "nan",
      volume_gt_ml: 0,
      volume_pred_ml: 0,
      hd: "nan",
      hd95: "nan",
      assd: "nan",
      nsd: "nan",
    });
    t.is(r.caseDice, 1); // no bleed in gt and none predicted
    // a mask filling the volume, identical in both
    const full = new Uint8Array(5 * 6 * 7).fill(4);
    r = await evaluate(vol(full, [5, 6, 7], sp), vol(full.slice(), [5, 6, 7], sp));
    t.like(r.perClass["4"], { dice: 1, iou: 1, hd: 0, hd95: 0, assd: 0, nsd: 1, tp: 210 });
    t.is(r.perClass["4"]!.volume_gt_ml, (210 * 0.125) / 1000);
    // single voxels 3 voxels apart along x at 0.5 mm: every distance is 1.5 mm
    const a = new Uint8Array(1000),
      b = new Uint8Array(1000);
    a[(5 * 10 + 5) * 10 + 2] = 1;
    b[(5 * 10 + 5) * 10 + 5] = 1;
    r = await evaluate(vol(a, [10, 10, 10], sp), vol(b, [10, 10, 10], sp));
    t.like(r.perClass["1"], { tp: 0, fp: 1, fn: 1, dice: 0, hd: 1.5, hd95: 1.5, assd: 1.5, nsd: 0 });
    r = await evaluate(vol(a, [10, 10, 10], sp), vol(b, [10, 10, 10], sp), { nsdToleranceMm: 1.5 });
    t.is(r.perClass["1"]!.nsd, 1);
    t.is(r.caseDice, 0);
    // masks on the border of a 6×1×1 volume: every voxel is surface.
    // d(P→G) = [0, 0, 0, 0.5], d(G→P) = [0, 0, 0]; p95 of the first: 0.5 · (0.95·3 − 2) = 0.425
    r = await evaluate(vol(new Uint8Array([2, 2, 2, 0, 0, 0]), [1, 1, 6], sp), vol(new Uint8Array([2, 2, 2, 2, 0, 0]), [1, 1, 6], sp));
    const m = r.perClass["2"]!;
    t.like(m, { tp: 3, fp: 1, fn: 0, hd: 0.5, nsd: 1 });
    t.true(Math.abs(m.hd95 - 0.425) < 1e-12);
    t.true(Math.abs(m.assd - 0.5 / 7) < 1e-12);
    t.true(Math.abs(m.dice - 6 / 7) < 1e-12);
    // anisotropic: one voxel a slice apart is sz away
    const c1 = new Uint8Array(2 * 3 * 3),
      c2 = new Uint8Array(2 * 3 * 3);
    c1[4] = 5;
    c2[9 + 4] = 5;
    r = await evaluate(vol(c1, [2, 3, 3], [5, 0.49, 0.49]), vol(c2, [2, 3, 3], [5, 0.49, 0.49]));
    t.is(r.perClass["5"]!.hd, 5);
  });
}

test("values outside the class set, shapes that differ and bad options are errors; affines that differ are warnings", async (t) => {
  const sp = [1, 1, 1];
  const g = new Uint8Array(27),
    p = new Uint8Array(27);
  p[13] = 7;
  await t.throwsAsync(evaluate(vol(g, [3, 3, 3], sp), vol(p, [3, 3, 3], sp)), {
    message: /pred holds the value 7 at voxel \(1, 1, 1\); labels must be integers 0..5/,
  });
  await t.throwsAsync(evaluate(vol(g, [3, 3, 3], sp), vol(g, [3, 3, 3], sp), { names: "xy" as never }), {
    message: /two names \(strings of 1–4096 characters\) for gt and pred for options\.names/,
  });
  const f = new Float32Array(27);
  f[2] = 1.5;
  await t.throwsAsync(evaluate(volumeFromArray(f, [3, 3, 3]), vol(g, [3, 3, 3], sp)), {
    message: /gt holds the value 1.5 at voxel \(2, 0, 0\)/,
  });
  await t.throwsAsync(evaluate(vol(g, [3, 3, 3], sp), vol(new Uint8Array(24), [2, 3, 4], sp)), {
    message: /gt dims \[3, 3, 3\] and pred dims \[4, 3, 2\] differ/,
  });
  await t.throwsAsync(evaluate(vol(g, [3, 3, 3], sp), vol(g, [3, 3, 3], sp), { classes: [0] }), { message: /for options.classes/ });
  await t.throwsAsync(evaluate(vol(g, [3, 3, 3], sp), vol(g, [3, 3, 3], sp), { nsdToleranceMm: -1 }), {
    message: /for options.nsdToleranceMm/,
  });
  const moved: Volume = { ...vol(g, [3, 3, 3], sp), affine: [1, 0, 0, 0.01, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1] };
  const r = await evaluate(vol(g, [3, 3, 3], sp), moved);
  t.is(r.warnings.length, 1);
  t.regex(r.warnings[0]!, /affines differ by up to 0.01/);
  // float volumes holding integer labels are fine (NIfTI predictions are often float32)
  const r2 = await evaluate(volumeFromArray(new Float32Array(27).fill(3), [3, 3, 3]), vol(new Uint8Array(27).fill(3), [3, 3, 3], sp));
  t.is(r2.perClass["3"]!.dice, 1);
});

// scipy, where it is installed, computes the spec's definitions on random masks: a live outside check.
const SCIPY_METRICS = `
import json, sys, numpy as np
from scipy import ndimage
g = np.load(sys.argv[1]); p = np.load(sys.argv[2]); sp = json.loads(sys.argv[3]); tau = float(sys.argv[4])
st = ndimage.generate_binary_structure(3, 1)
surf = lambda m: m & ~ndimage.binary_erosion(m, st, border_value=0)
out = {}
for c in range(1, 6):
    G, P = g == c, p == c
    r = {"tp": int((G & P).sum()), "fp": int((P & ~G).sum()), "fn": int((G & ~P).sum())}
    if G.any() and P.any():
        sG, sP = surf(G), surf(P)
        dPG = ndimage.distance_transform_edt(~sG, sampling=sp)[sP]
        dGP = ndimage.distance_transform_edt(~sP, sampling=sp)[sG]
        r["hd"] = float(max(dPG.max(), dGP.max()))
        r["hd95"] = float(max(np.percentile(dPG, 95), np.percentile(dGP, 95)))
        r["assd"] = float((dPG.sum() + dGP.sum()) / (len(dPG) + len(dGP)))
        r["nsd"] = float(((dPG <= tau).sum() + (dGP <= tau).sum()) / (len(dPG) + len(dGP)))
    out[str(c)] = r
print(json.dumps(out))`;
const python = (() => {
  for (const py of ["python3", "/usr/bin/python3"]) {
    try {
      execFileSync(py, ["-c", "import scipy, numpy"], { stdio: "ignore" });
      return py;
    } catch {
      // not this interpreter: try the next
    }
  }
  return undefined;
})();
(python ? test.serial : test.skip)("random masks: both backends agree with scipy computing the spec's definitions", async (t) => {
  const dir = mkdtempSync(join(tmpdir(), "bhsd-metrics-"));
  let seed = 3;
  const rnd = () => (seed = (seed * 1103515245 + 12345) >>> 0) / 2 ** 32;
  for (let k = 0; k < 6; k++) {
    const shape = [2 + Math.floor(rnd() * 8), 5 + Math.floor(rnd() * 25), 5 + Math.floor(rnd() * 25)];
    const n = shape[0]! * shape[1]! * shape[2]!;
    const spacing = [
      [5, 0.49, 0.49],
      [1, 1, 1],
      [2.5, 0.45, 0.7],
    ][k % 3]!;
    // blobby masks: random boxes of random classes
    const mk = () => {
      const m = new Uint8Array(n);
      for (let b = 0; b < 6; b++) {
        const c = 1 + Math.floor(rnd() * 5);
        const lo = shape.map((s) => Math.floor(rnd() * s)),
          hi = lo.map((l, i) => Math.min(shape[i]! - 1, l + Math.floor(rnd() * 6)));
        for (let z = lo[0]!; z <= hi[0]!; z++)
          for (let y = lo[1]!; y <= hi[1]!; y++) for (let x = lo[2]!; x <= hi[2]!; x++) m[(z * shape[1]! + y) * shape[2]! + x] = c;
      }
      return m;
    };
    const g = mk(),
      p = mk();
    await writeNpy(join(dir, "g.npy"), g, shape);
    await writeNpy(join(dir, "p.npy"), p, shape);
    const want = JSON.parse(
      execFileSync(python!, ["-c", SCIPY_METRICS, join(dir, "g.npy"), join(dir, "p.npy"), JSON.stringify(spacing), "1"], {
        encoding: "utf8",
      }),
    ) as Record<string, Record<string, number>>;
    for (const { name } of backendsUnderTest()) {
      setBackend(name);
      const r = await evaluate(vol(g, shape, spacing), vol(p, shape, spacing));
      t.deepEqual(compare(r, want), [], `${name} case ${k}`);
    }
  }
});
