// The convolution plan kept between processes (exportConvPlan / importConvPlan, issue 23): what a
// layer's first call chose by timing comes back in a later process, whose layers of that shape then
// run the same path from their first call — bit for bit the same output; plans from elsewhere are
// skipped with a reason, malformed ones refused whole with a message naming what is wrong.
// BHSD_WINOGRAD is left unset here (the plan only runs where it is): ava gives each file a process.
delete process.env.BHSD_WINOGRAD;

import test from "ava";
import { spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { backendInfo, clearConvPlan, conv3d, exportConvPlan, importConvPlan, setBackend, type ConvPlan } from "../lib/index.js";
import { ROOT } from "./helpers.js";
import { randomTensor } from "./ort.js";

const native = backendInfo().available.native;
const simd = native ? backendInfo().details.native!.simd : "";
const why = !native
  ? `the native backend is not available here (${backendInfo().reasons.native ?? "not built"})`
  : !/avx2/.test(simd)
    ? `the plan chooses between Winograd and direct convolutions, which run on the AVX2/AVX-512 kernels; this processor offers ${simd}`
    : "";
const planTest = why ? test.serial.skip : test.serial;
if (why) console.log(`# convolution plan tests skipped: ${why}`);

// two 3×3×3 layer shapes Winograd serves (at least 8 channels each way), small enough to plan fast
const LAYERS = [
  { x: randomTensor([1, 16, 8, 16, 16], 1), w: randomTensor([16, 16, 3, 3, 3], 2) },
  { x: randomTensor([1, 8, 4, 12, 20], 3), w: randomTensor([24, 8, 3, 3, 3], 4) },
];
async function runLayers(): Promise<Float32Array[]> {
  const out: Float32Array[] = [];
  for (const { x, w } of LAYERS) out.push((await conv3d(x, w, null, { padding: 1 })).data as Float32Array);
  return out;
}
const bits = (a: Float32Array) => Buffer.from(a.buffer, a.byteOffset, a.byteLength);

test.before(() => {
  if (native) setBackend("native");
});

planTest("a plan exported here and imported after a clear gives the same entries and bit-identical outputs", async (t) => {
  clearConvPlan();
  t.is(exportConvPlan().entries.length, 0);
  const first = await runLayers();
  const plan = exportConvPlan();
  t.is(plan.format, "bhsd-conv-plan");
  t.is(plan.version, 1);
  t.is(plan.simd, simd);
  t.is(plan.threads, backendInfo().details.native!.threads);
  t.is(plan.entries.length, 2, JSON.stringify(plan.entries));
  for (const e of plan.entries) t.true(e.length === 16 && e.every((v) => Number.isSafeInteger(v) && v >= 0), JSON.stringify(e));
  // through JSON as a file would keep it
  const kept = JSON.parse(JSON.stringify(plan)) as ConvPlan;
  clearConvPlan();
  t.is(exportConvPlan().entries.length, 0);
  t.deepEqual(importConvPlan(kept), { imported: 2 });
  t.deepEqual(exportConvPlan().entries, plan.entries);
  const again = await runLayers();
  again.forEach((a, i) => t.true(bits(a).equals(bits(first[i]!)), `layer ${i}: not the planned path's output`));
  t.deepEqual(exportConvPlan().entries, plan.entries, "the layers' first calls planned again");
  // shapes planned already keep this process's choice
  t.deepEqual(importConvPlan(kept), { imported: 0 });
});

planTest(
  "an imported choice is the path that runs: direct and Winograd, imported in turn, each give their own bits every time",
  async (t) => {
    clearConvPlan();
    const { x, w } = LAYERS[0]!;
    await conv3d(x, w, null, { padding: 1 });
    const plan = exportConvPlan();
    t.is(plan.entries.length, 1);
    const key = plan.entries[0]!.slice(0, 15);
    const withChoice = async (choice: number) => {
      clearConvPlan();
      t.deepEqual(importConvPlan({ ...plan, entries: [[...key, choice]] }), { imported: 1 });
      const y = (await conv3d(x, w, null, { padding: 1 })).data as Float32Array;
      t.deepEqual(exportConvPlan().entries, [[...key, choice]], `choice ${choice} was planned again`);
      return bits(y);
    };
    const direct = await withChoice(0),
      wino = await withChoice(1);
    t.false(direct.equals(wino), "the direct path and Winograd round differently: the import was not what ran");
    t.true((await withChoice(0)).equals(direct));
    t.true((await withChoice(1)).equals(wino));
    clearConvPlan();
  },
);

planTest("a plan from another processor, instruction set, thread count or version is skipped with the reason", (t) => {
  const plan = exportConvPlan();
  const other: [keyof ConvPlan, unknown][] = [
    ["cpu", "Some Other CPU"],
    ["simd", "sse2"],
    ["threads", plan.threads + 7],
    ["bhsd", "0.0.1"],
  ];
  clearConvPlan();
  for (const [k, v] of other) {
    const r = importConvPlan({ ...plan, [k]: v });
    t.is(r.imported, 0, k);
    t.regex(r.skipped ?? "", /^made for .*; this is /, k);
    t.true((r.skipped ?? "").includes(String(v)), `${k}: ${r.skipped}`);
  }
  t.is(exportConvPlan().entries.length, 0, "a skipped plan left entries");
});

planTest("malformed plans are refused whole, naming what is wrong, and nothing is taken", (t) => {
  clearConvPlan();
  const good = {
    format: "bhsd-conv-plan",
    version: 1,
    bhsd: "x",
    cpu: "x",
    simd: "x",
    threads: 1,
    entries: [] as unknown[],
  };
  const entry = [16, 16, 3, 8, 16, 16, 1, 1, 1, 8, 16, 16, 2, 4, 0, 1];
  const bad: [unknown, RegExp][] = [
    [null, /for plan but received null/],
    ["plan", /for plan but received/],
    [[good], /for plan but received/],
    [{ ...good, format: "fftw" }, /"bhsd-conv-plan" for plan\.format/],
    [{ ...good, version: 2 }, /1 for plan\.version/],
    [{ ...good, cpu: 7 }, /for plan\.cpu/],
    [{ ...good, simd: "x".repeat(1001) }, /for plan\.simd/],
    [{ ...good, threads: -1 }, /for plan\.threads/],
    [{ ...good, threads: 1.5 }, /for plan\.threads/],
    [{ ...good, entries: "[]" }, /for plan\.entries/],
    [{ ...good, entries: new Array(65537).fill(entry) }, /at most 65536 entries for plan\.entries/],
    [{ ...good, entries: [entry.slice(1)] }, /16 integers in \[0, 2\^40\] for plan\.entries\[0\]/],
    // holes, which forEach and every would skip
    // eslint-disable-next-line no-sparse-arrays
    [{ ...good, entries: [entry, , entry] }, /plan\.entries\[1\]/],
    // eslint-disable-next-line no-sparse-arrays
    [{ ...good, entries: [[...entry.slice(0, 8), , ...entry.slice(9)]] }, /plan\.entries\[0\]/],
    [{ ...good, entries: [[...entry.slice(0, 15), 2 ** 41]] }, /plan\.entries\[0\]/],
    [{ ...good, entries: [entry, [...entry.slice(0, 15), -1]] }, /plan\.entries\[1\]/],
    [{ ...good, entries: [[...entry.slice(0, 15), 0.5]] }, /plan\.entries\[0\]/],
    [{ ...good, entries: [[...entry.slice(0, 15), 2 ** 60]] }, /plan\.entries\[0\]/],
    [{ ...good, entries: [["16", ...entry.slice(1)]] }, /plan\.entries\[0\]/],
  ];
  for (const [plan, message] of bad)
    t.throws(() => importConvPlan(plan), { instanceOf: TypeError, message }, JSON.stringify(plan)?.slice(0, 80));
  // values the plan never stores (a choice past F(4×4×4) in fp32 for a bf16 call, 3 or 8 groups a
  // task), from this machine: the native layer refuses them all, the good entry beside them too
  const here = exportConvPlan();
  for (const value of [6, 15, 16, 2 * 16, 3 * 16 + 1, 8 * 16 + 1, 2 ** 40]) {
    t.throws(() => importConvPlan({ ...here, entries: [entry, [...entry.slice(0, 15), value]] }), {
      instanceOf: TypeError,
      message: /choices are plan values for plan\.entries/,
    });
    t.is(exportConvPlan().entries.length, 0, `value ${value}: entries were taken`);
  }
  // and the values it does store are taken, as given
  for (const value of [0, 1, 2, 3, 4, 5, 1 * 16 + 1, 2 * 16 + 4, 2 * 16 + 5]) {
    clearConvPlan();
    t.deepEqual(importConvPlan({ ...here, entries: [[...entry.slice(0, 15), value]] }), { imported: 1 });
    t.deepEqual(exportConvPlan().entries, [[...entry.slice(0, 15), value]]);
  }
  clearConvPlan();
});

planTest("without the native backend there is no plan: an empty export, an import that says why", (t) => {
  const r = spawnSync(
    process.execPath,
    [
      "--import",
      "tsx",
      "-e",
      `Promise.all([import("${ROOT}/lib/index.ts"), import("${ROOT}/lib/backends/conv-plan.ts")]).then(([m, p]) => console.log(JSON.stringify([m.exportConvPlan().entries, m.importConvPlan(m.exportConvPlan()), p.convPlanToKeep("${ROOT}/package.json") ?? null])))`,
    ],
    { cwd: ROOT, encoding: "utf8", env: { ...process.env, BHSD_DISABLE_NATIVE: "1", BHSD_BACKEND: "" }, timeout: 60_000 },
  );
  t.is(r.status, 0, r.stderr);
  const [entries, imported, keep] = JSON.parse(r.stdout.trim().split("\n").pop()!);
  t.deepEqual(entries, []);
  t.is(keep, null, "without the addon there is no plan to write over a file");
  t.is(imported.imported, 0);
  t.regex(imported.skipped, /native backend is not loaded/);
});

planTest(
  "BHSD_CONV_PLAN=FILE: written at exit where the process planned something, imported by the next process when its addon loads; a file that is no plan is left as it was",
  (t) => {
    const dir = mkdtempSync(join(tmpdir(), "bhsd-conv-plan-"));
    const file = join(dir, "plan.json");
    const child = (code: string, env: Record<string, string> = { BHSD_CONV_PLAN: file }) =>
      spawnSync(process.execPath, ["--import", "tsx", "-e", `import("${ROOT}/lib/index.ts").then(async (m) => { ${code} })`], {
        cwd: ROOT,
        encoding: "utf8",
        env: { ...process.env, BHSD_BACKEND: "native", ...env },
        timeout: 90_000,
      });
    const conv = `const x = { data: new Float32Array(16 * 8 * 16 * 16).fill(0.5), shape: [1, 16, 8, 16, 16] };
    const w = { data: new Float32Array(16 * 16 * 27).fill(0.01), shape: [16, 16, 3, 3, 3] };
    await m.conv3d(x, w, null, { padding: 1 });`;
    // nothing planned: nothing written
    let r = child(`console.log(m.exportConvPlan().entries.length);`);
    t.is(r.status, 0, r.stderr);
    t.false(existsSync(file));
    r = child(`${conv} console.log(JSON.stringify(m.exportConvPlan().entries));`);
    t.is(r.status, 0, r.stderr);
    const planned = JSON.parse(r.stdout.trim().split("\n").pop()!);
    t.is(planned.length, 1);
    const kept = JSON.parse(readFileSync(file, "utf8"));
    t.is(kept.format, "bhsd-conv-plan");
    t.deepEqual(kept.entries, planned);
    t.deepEqual(readdirSync(dir), ["plan.json"], "a temporary was left");
    // the next process has it before any convolution, and does not rewrite an unchanged plan
    const mtime = statSync(file).mtimeMs;
    r = child(`console.log(JSON.stringify(m.exportConvPlan().entries)); ${conv}`);
    t.is(r.status, 0, r.stderr);
    t.is(r.stderr, "");
    t.deepEqual(JSON.parse(r.stdout.trim().split("\n").pop()!), planned);
    t.is(statSync(file).mtimeMs, mtime);
    // not a plan: reported, left alone, nothing written at exit
    for (const text of ["not json", JSON.stringify({ ...kept, entries: [[1, 2]] }), "[]"]) {
      writeFileSync(file, text);
      r = child(conv);
      t.is(r.status, 0, r.stderr);
      t.regex(r.stderr, /BHSD_CONV_PLAN=.*plan\.json: not a plan \(.*\); left as it is/);
      t.is(readFileSync(file, "utf8"), text);
    }
    // a FIFO named by mistake: not opened for a blocking read (the process would hang), left as it is
    const fifo = join(dir, "fifo");
    if (spawnSync("mkfifo", [fifo]).status === 0) {
      r = child(conv, { BHSD_CONV_PLAN: fifo });
      t.is(r.status, 0, r.stderr);
      t.regex(r.stderr, /BHSD_CONV_PLAN=.*fifo: not a plan \(is not a file\); left as it is/);
      t.true(statSync(fifo).isFIFO());
    }
    // a process that never exits normally (a service killed by a signal) has kept its plan by then
    rmSync(file, { force: true });
    // (the child waits for the timer's write, up to 40 s, rather than a fixed time a loaded machine could outlast)
    r = child(
      `${conv} const { existsSync } = await import("node:fs");
      for (let i = 0; i < 400 && !existsSync(${JSON.stringify(file)}); i++) await new Promise((done) => setTimeout(done, 100));
      process.kill(process.pid, "SIGKILL");`,
    );
    t.is(r.signal, "SIGKILL", r.stderr);
    t.deepEqual(
      JSON.parse(readFileSync(file, "utf8")).entries.map((e: number[]) => e.slice(0, 15)),
      planned.map((e: number[]) => e.slice(0, 15)),
    );
    // another machine's: reported and replaced by this one's
    writeFileSync(file, JSON.stringify({ ...kept, cpu: "Another CPU", entries: [] }));
    r = child(conv);
    t.is(r.status, 0, r.stderr);
    t.regex(r.stderr, /not used \(made for Another CPU, .*\); it will be replaced/);
    // (timed afresh: the same layer shape, its choice whichever candidate that process's timing picked)
    const replaced = JSON.parse(readFileSync(file, "utf8"));
    t.is(replaced.cpu, kept.cpu);
    t.deepEqual(
      replaced.entries.map((e: number[]) => e.slice(0, 15)),
      planned.map((e: number[]) => e.slice(0, 15)),
    );
  },
);
