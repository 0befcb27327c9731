import test from "ava";
import { spawnSync } from "node:child_process";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ROOT } from "./helpers.js";

// The Node-free C++ core (native/include/bhsd) driven by a small C++ test, with and without sanitizers.
const gxx = spawnSync("g++", ["--version"]).status === 0;
const out = mkdtempSync(join(tmpdir(), "bhsd-core-"));

for (const [what, flags] of [
  ["optimised", ["-O2"]],
  ["address and undefined-behaviour sanitizers", ["-O1", "-g", "-fsanitize=address,undefined", "-fno-sanitize-recover=undefined"]],
] as const) {
  (gxx ? test : test.skip)(`C++ core test passes (${what})`, (t) => {
    const exe = join(out, `core_test_${flags.length}`);
    const build = spawnSync("g++", ["-std=c++17", "-Wall", "-Wextra", "-Werror", "-pthread", ...flags, "-Inative/include", "native/test/core_test.cc", "-o", exe], {
      cwd: ROOT,
      encoding: "utf8",
    });
    t.is(build.status, 0, build.stderr);
    const run = spawnSync(exe, [], { encoding: "utf8", timeout: 60_000 });
    t.is(run.status, 0, run.stdout + run.stderr);
    t.regex(run.stdout, /\d+ passed, 0 failed/);
    // the baseline kernels and packing (as on a processor without AVX2) through the same checks
    const base = spawnSync(exe, [], { encoding: "utf8", timeout: 60_000, env: { ...process.env, BHSD_NO_AVX2: "1" } });
    t.is(base.status, 0, base.stdout + base.stderr);
    t.regex(base.stdout, /\d+ passed, 0 failed/);
  });
}
