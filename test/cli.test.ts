import test from "ava";
import { spawnSync } from "node:child_process";
import { join } from "node:path";
import { NIFTI_FIXTURES, ROOT } from "./helpers.js";

// The built command line (npm test compiles it first), as a user runs it.
const bhsd = (...args: string[]) => spawnSync(process.execPath, [join(ROOT, "dist", "cli", "main.js"), ...args], { encoding: "utf8", timeout: 30_000 });

test("bhsd info --json reports version and backends", (t) => {
  const r = bhsd("info", "--json");
  t.is(r.status, 0, r.stderr);
  const info = JSON.parse(r.stdout);
  t.regex(info.version, /^\d+\.\d+\.\d+/);
  t.true(info.available.ts);
  t.true(["cuda", "native", "ts"].includes(info.backend));
  if (!info.available.cuda) t.true(info.reasons.cuda.length > 0);
});

test("bhsd info prints a readable summary", (t) => {
  const r = bhsd("info");
  t.is(r.status, 0, r.stderr);
  t.regex(r.stdout, /active backend: (cuda|native|ts)/);
  t.regex(r.stdout, /native +(yes|no)/);
});

test("bhsd info FILE describes a NIfTI file", (t) => {
  const r = bhsd("info", join(NIFTI_FIXTURES, "ct_int16_scl.nii.gz"), "--json");
  t.is(r.status, 0, r.stderr);
  const o = JSON.parse(r.stdout);
  t.deepEqual(o.dims, [17, 13, 5]);
  t.is(o.datatype, "int16");
  t.true(o.scaled);
});

test("bad input: one line on stderr, a non-zero exit, no stack trace", (t) => {
  const r = bhsd("info", join(NIFTI_FIXTURES, "three_volumes_4d.nii"));
  t.is(r.status, 1);
  t.regex(r.stderr, /^bhsd: .*three_volumes_4d.nii: holds 3 volumes/);
  t.is(r.stderr.trim().split("\n").length, 1);
  const v = bhsd("info", join(NIFTI_FIXTURES, "three_volumes_4d.nii"), "--verbose");
  t.regex(v.stderr, /at /); // --verbose shows where
  const u = bhsd("frobnicate");
  t.not(u.status, 0);
  t.regex(u.stderr, /unknown command/);
});

test("every command has --help", (t) => {
  for (const args of [["--help"], ["info", "--help"]]) {
    const r = bhsd(...args);
    t.is(r.status, 0);
    t.regex(r.stdout, /Usage: bhsd/);
  }
});

test("bhsd bench components --json times the engine here", (t) => {
  const r = bhsd("bench", "components", "--json");
  t.is(r.status, 0, r.stderr);
  const o = JSON.parse(r.stdout);
  t.is(o.results.length, 1);
  t.true(o.results[0].ms > 0);
  const bad = bhsd("bench", "gpu");
  t.is(bad.status, 1);
  t.regex(bad.stderr, /unknown benchmark "gpu"/);
});

test("bhsd train --slice-data trains on voxel- and slice-labelled phantoms and reports the semi-supervised terms", async (t) => {
  const { mkdtempSync, existsSync } = await import("node:fs");
  const { tmpdir } = await import("node:os");
  const dir = mkdtempSync(join(tmpdir(), "bhsd-semi-"));
  const p = bhsd("phantom", "--out", join(dir, "set"), "--cases", "2", "--seed", "3", "--dims", "32,32,8", "--spacing", "7.2,7.2,5");
  t.is(p.status, 0, p.stderr);
  const out = join(dir, "m.onnx");
  const r = bhsd("train", "--data", join(dir, "set"), "--slice-data", join(dir, "set"), "--steps", "2", "--batch", "1", "--validation", "0", "--json", "--out", out);
  t.is(r.status, 0, r.stderr);
  const lines = r.stdout.trim().split("\n").map((l) => JSON.parse(l));
  t.is(lines.length, 2);
  t.true(lines.every((l) => Number.isFinite(l.mil) && Number.isFinite(l.consistency)));
  t.true(existsSync(out));
  const bad = bhsd("train", "--data", join(dir, "set"), "--slice-data", join(dir, "nowhere"), "--steps", "1", "--out", out);
  t.not(bad.status, 0);
  t.regex(bad.stderr, /nowhere/);
});
