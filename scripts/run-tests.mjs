#!/usr/bin/env node
// `npm test`: compiles the TypeScript (the package-import and CLI tests run the built files), runs
// ava with TAP, passes its output through and ends with the line `N passed, N failed[, N skipped]`.
import { spawn, spawnSync } from "node:child_process";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const bin = (name) => join(root, "node_modules", ".bin", name);

// BHSD_SKIP_TSC=1: dist/ is already built (the device check carries it, without TypeScript).
const tsc = process.env.BHSD_SKIP_TSC === "1" ? { status: 0 } : spawnSync(bin("tsc"), ["-p", "tsconfig.json"], { cwd: root, stdio: "inherit" });
if (tsc.status !== 0) {
  console.log("0 passed, 1 failed");
  process.exit(1);
}

const ava = spawn(bin("ava"), ["--tap", ...process.argv.slice(2)], { cwd: root, stdio: ["ignore", "pipe", "inherit"] });
let passed = 0, failed = 0, skipped = 0, todo = 0, buffer = "";
const count = (line) => {
  const m = /^(not ok|ok)\s+\d+/.exec(line);
  if (!m) return;
  if (/#\s*SKIP/i.test(line)) skipped++;
  else if (/#\s*TODO/i.test(line)) todo++;
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
ava.on("close", (code) => {
  if (buffer) count(buffer);
  if (code !== 0 && failed === 0) failed = 1; // ava failed outside a test (a crash, a file that threw)
  const extra = skipped ? `, ${skipped} skipped` : "";
  console.log(`\n${passed} passed, ${failed} failed${extra}`);
  process.exit(failed > 0 || passed === 0 ? 1 : 0);
});
