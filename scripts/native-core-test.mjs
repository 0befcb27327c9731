#!/usr/bin/env node
// `npm run test:native-core`: builds the Node-free C++ core's test (native/test/core_test.cc over
// native/include/bhsd) with g++ twice — optimised (-O2) and with the address and undefined-behaviour
// sanitizers — and runs each build twice: as the processor allows (AVX2 kernels where present) and
// with BHSD_NO_AVX2=1 (the dispatcher's baseline kernels and portable packing). test/native-core.test.ts
// runs the same through this script, one variant per test.
//
//   node scripts/native-core-test.mjs [--variant optimised|sanitized]... [--out DIR]
//
// Exits 0 when every build and run passed; prints one line per run and the failing output.
import { spawnSync } from "node:child_process";
import { mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const VARIANTS = {
  optimised: ["-O2"],
  sanitized: ["-O1", "-g", "-fno-omit-frame-pointer", "-fsanitize=address,undefined", "-fno-sanitize-recover=undefined"],
};

const args = process.argv.slice(2);
const wanted = [];
let out;
for (let i = 0; i < args.length; i++) {
  if (args[i] === "--variant" && args[i + 1]) wanted.push(args[++i]);
  else if (args[i] === "--out" && args[i + 1]) out = args[++i];
  else {
    console.error(
      `native-core-test: unknown argument ${JSON.stringify(args[i])}; expected --variant ${Object.keys(VARIANTS).join("|")} or --out DIR`,
    );
    process.exit(2);
  }
}
for (const w of wanted) {
  if (!(w in VARIANTS)) {
    console.error(`native-core-test: --variant must be one of ${Object.keys(VARIANTS).join(", ")}, got ${JSON.stringify(w)}`);
    process.exit(2);
  }
}
if (spawnSync("g++", ["--version"]).status !== 0) {
  console.error("native-core-test: g++ is not installed (the C++ core test needs a C++17 g++)");
  process.exit(1);
}
// the builds go to --out DIR (kept), else to a temporary folder removed when every build passed
const temporary = !out;
if (out) mkdirSync(out, { recursive: true });
else out = mkdtempSync(join(tmpdir(), "bhsd-core-"));

let failed = 0;
for (const name of wanted.length ? wanted : Object.keys(VARIANTS)) {
  const exe = join(out, `core_test_${name}`);
  const build = spawnSync(
    "g++",
    ["-std=c++17", "-Wall", "-Wextra", "-Werror", "-pthread", ...VARIANTS[name], "-Inative/include", "native/test/core_test.cc", "-o", exe],
    {
      cwd: root,
      encoding: "utf8",
    },
  );
  if (build.status !== 0) {
    failed++;
    console.log(`FAIL ${name}: build\n${build.stderr}`);
    continue;
  }
  // as the processor allows (AVX-512 convolutions where it has them), AVX2 only, and the baseline
  for (const [what, env] of [
    ["as the processor allows", {}],
    ["BHSD_NO_AVX512=1", { BHSD_NO_AVX512: "1" }],
    ["BHSD_NO_AVX2=1", { BHSD_NO_AVX2: "1" }],
  ]) {
    // (a bound for a stuck run: a sanitized one takes minutes on a loaded 2-vCPU machine)
    const run = spawnSync(exe, [], { encoding: "utf8", timeout: 360_000, env: { ...process.env, ...env } });
    const summary = /(\d+) passed, (\d+) failed/.exec(run.stdout);
    const ok = run.status === 0 && summary !== null && summary[2] === "0";
    if (!ok) failed++;
    const why = run.error ? ` (${run.error.message})` : run.signal ? ` (${run.signal})` : ` (exit ${run.status})`;
    console.log(`${ok ? "ok" : "FAIL"} ${name}, ${what}: ${summary ? summary[0] : "no summary line"}${ok ? "" : why}`);
    if (!ok) console.log(run.stdout + run.stderr);
  }
}
console.log(failed ? `native core: ${failed} failed (the builds are in ${out})` : "native core: all passed");
if (temporary && !failed && process.env.BHSD_KEEP_TMP !== "1") {
  try {
    rmSync(out, { recursive: true, force: true, maxRetries: 3 });
  } catch (e) {
    console.log(`native core: could not remove ${out}: ${e.message}`);
  }
}
process.exit(failed ? 1 : 0);
