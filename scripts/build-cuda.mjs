#!/usr/bin/env node
// `npm run build:cuda`: builds bhsd_cuda.node with cmake-js where nvcc is installed; exits 0 with a
// message where it is not (the CPU backends do not need it).
import { existsSync } from "node:fs";
import { spawnSync } from "node:child_process";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const which = (cmd) => spawnSync("sh", ["-c", `command -v ${cmd}`], { encoding: "utf8" }).stdout.trim();
const nvcc = which("nvcc") || ["/usr/local/cuda/bin/nvcc"].find((p) => existsSync(p));
if (!nvcc) {
  console.log("bhsd: nvcc not found; skipping the CUDA addon (the native and ts backends do not need it)");
  process.exit(0);
}
const env = { ...process.env, CUDACXX: process.env.CUDACXX ?? nvcc };
// Build against the headers of the running Node (no download): npm's nodedir, else beside node.
if (!env.npm_config_nodedir) {
  const dir = resolve(dirname(process.execPath), "..");
  if (existsSync(join(dir, "include", "node", "node_api.h"))) env.npm_config_nodedir = dir;
}
const cmakeJs = join(root, "node_modules", ".bin", "cmake-js");
const r = spawnSync(cmakeJs, ["build", "--out", "build-cuda", "--config", "Release", ...process.argv.slice(2)], {
  cwd: root,
  stdio: "inherit",
  env,
});
if (r.status !== 0) {
  console.error(`bhsd: the CUDA addon failed to build (cmake-js exited with ${r.status ?? r.error?.message})`);
  process.exit(r.status || 1);
}
const out = join(root, "build-cuda", "Release", "bhsd_cuda.node");
console.log(existsSync(out) ? `bhsd: built ${out}` : "bhsd: cmake-js finished but bhsd_cuda.node is missing");
process.exit(existsSync(out) ? 0 : 1);
