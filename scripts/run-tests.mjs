#!/usr/bin/env node
// `npm test`: compiles the TypeScript (the package-import and CLI tests run the built files), runs
// ava with TAP (through scripts/ava-tap.mjs, which keeps ava's TAP reporter alive when a test times
// out), passes its output through and ends with the line `N passed, N failed[, N skipped]`:
// - a test that fails, times out, or never finished because its file timed out or exited counts as
//   failed (ava's own `# fail` total is the floor, so tests left out of the TAP lines still count);
// - skipped and todo tests count as skipped;
// - a crash outside any test (a file that threw, a worker that died) is at least one failure, and a
//   run that ends without ava's summary is a failure whatever the lines said.
// The exit code is non-zero on any failure, and when nothing passed.
// The tests' temporary files (result stores, model folders, CLI outputs, a core build) go under one
// folder of this run, named as TMPDIR for ava and everything it starts, and removed when the run
// passes; a run with a failure keeps it and says where (a fuzzer's failing case is kept there), as
// does BHSD_KEEP_TMP=1. They had been left in /tmp: about 80 folders and 90 MB a run.
import { spawn, spawnSync } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const bin = (name) => join(root, "node_modules", ".bin", name);

// BHSD_SKIP_TSC=1: dist/ is already built (the device check carries it, without TypeScript).
const tsc =
  process.env.BHSD_SKIP_TSC === "1" ? { status: 0 } : spawnSync(bin("tsc"), ["-p", "tsconfig.json"], { cwd: root, stdio: "inherit" });
if (tsc.status !== 0) {
  console.log("0 passed, 1 failed");
  process.exit(1);
}

const scratch = mkdtempSync(join(tmpdir(), "bhsd-test-"));
const cleanup = (failed) => {
  if (failed || process.env.BHSD_KEEP_TMP === "1") return console.log(`# temporary files kept in ${scratch}`);
  try {
    rmSync(scratch, { recursive: true, force: true, maxRetries: 3 });
  } catch (e) {
    console.log(`# could not remove ${scratch}: ${e.message}`);
  }
};
const ava = spawn(process.execPath, [join(root, "scripts", "ava-tap.mjs"), "--tap", ...process.argv.slice(2)], {
  cwd: root,
  stdio: ["ignore", "pipe", "inherit"],
  env: { ...process.env, TMPDIR: scratch },
});
// Interrupted (Ctrl-C, a CI's timeout, a closed terminal): ava is sent SIGINT, the one signal on
// which it ends its worker processes (on SIGTERM it dies and leaves them running); a second signal
// kills it. The close handler then reports, keeping the folder (the run did not pass).
let interrupted = 0;
for (const sig of ["SIGINT", "SIGTERM", "SIGHUP"]) process.on(sig, () => ava.kill(interrupted++ ? "SIGKILL" : "SIGINT"));
let passed = 0,
  failed = 0,
  skipped = 0,
  todo = 0,
  buffer = "";
/** ava's closing totals (`# pass`, `# fail`, `# skip`), when it got that far. */
const summary = {};
const count = (line) => {
  const total = /^# (pass|fail|skip) (\d+)\s*$/.exec(line);
  if (total) {
    summary[total[1]] = Number(total[2]);
    return;
  }
  const m = /^(not ok|ok)\s+\d+/.exec(line);
  if (!m) return;
  if (/#\s*SKIP\b/i.test(line)) skipped++;
  else if (/#\s*TODO\b/i.test(line)) todo++;
  else if (m[1] === "ok") passed++;
  else failed++;
};
ava.stdout.on("data", (chunk) => {
  process.stdout.write(chunk);
  buffer += chunk;
  const lines = buffer.split("\n");
  buffer = lines.pop();
  lines.forEach(count);
});
ava.on("close", (code, signal) => {
  if (buffer) count(buffer);
  const notes = [];
  if (summary.fail === undefined) {
    notes.push(`ava ended without its summary (exit ${code ?? signal}): counted as a failure`);
    failed = Math.max(failed, 1);
  } else {
    // ava's `# fail` = failed + never finished (a timeout, process.exit) + crashes + todo
    const avaFailed = summary.fail - todo;
    if (avaFailed > failed) notes.push(`${avaFailed - failed} test(s) failed or never finished without a TAP line of their own`);
    failed = Math.max(failed, avaFailed);
  }
  if (code !== 0 && failed === 0) {
    notes.push(`ava exited with ${code ?? signal} outside any test`);
    failed = 1;
  }
  for (const n of notes) console.log(`# ${n}`);
  cleanup(failed > 0 || passed === 0);
  const skips = skipped + todo;
  console.log(`\n${passed} passed, ${failed} failed${skips ? `, ${skips} skipped` : ""}`);
  process.exit(failed > 0 || passed === 0 ? 1 : 0);
});
