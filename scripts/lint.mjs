#!/usr/bin/env node
// `npm run lint`: the conventions CI enforces — ESLint (eslint.config.js: JS recommended +
// typescript-eslint strict), Prettier's check (.prettierrc.json) and clang-format's (.clang-format)
// over the C++/CUDA sources. `npm run format` rewrites the tree to them.
//   node scripts/lint.mjs [--fix]
import { spawnSync } from "node:child_process";
import { readdirSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const fix = process.argv.includes("--fix");
const bin = (name) => join(root, "node_modules", ".bin", name);
const run = (cmd, args) => spawnSync(cmd, args, { cwd: root, stdio: "inherit" }).status ?? 1;

/** The C++ and CUDA sources under native/ (and the benches' drivers). */
function cppFiles(dir) {
  const out = [];
  for (const e of readdirSync(join(root, dir), { withFileTypes: true })) {
    const p = join(dir, e.name);
    if (e.isDirectory()) out.push(...cppFiles(p));
    else if (/\.(hpp|h|cc|cpp|cu|cuh)$/.test(e.name)) out.push(p);
  }
  return out;
}

let failed = 0;
failed += run(bin("eslint"), [".", ...(fix ? ["--fix"] : [])]) ? 1 : 0;
failed += run(bin("prettier"), [fix ? "--write" : "--check", "--log-level", "warn", "."]) ? 1 : 0;
if (spawnSync("clang-format", ["--version"]).status === 0) {
  const files = [
    ...cppFiles("native"),
    ...readdirSync(join(root, "bench"))
      .filter((f) => /\.(cc|cpp)$/.test(f))
      .map((f) => join("bench", f)),
  ];
  failed += run("clang-format", fix ? ["-i", ...files] : ["--dry-run", "-Werror", ...files]) ? 1 : 0;
} else {
  // .ci/run installs it; a machine without it (no root, no apt) still gets the ESLint and Prettier gates
  console.log("lint: clang-format is not installed (Debian: apt-get install clang-format); the C++ sources were NOT checked");
}
console.log(failed ? `lint: ${failed} check(s) failed` : "lint: ESLint, Prettier and clang-format clean");
process.exit(failed ? 1 : 0);
