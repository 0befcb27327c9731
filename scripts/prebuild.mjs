#!/usr/bin/env node
// `npm run prebuild`: the prebuilt binaries that ship in the package — the CPU addon through
// prebuildify (Node-API, stripped) into prebuilds/<platform>-<arch>/, and the CUDA addon beside it
// when `npm run build:cuda` made one.
import { copyFileSync, existsSync, readdirSync } from "node:fs";
import { spawnSync } from "node:child_process";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const r = spawnSync(join(root, "node_modules", ".bin", "prebuildify"), ["--napi", "--strip"], { cwd: root, stdio: "inherit" });
if (r.status !== 0) process.exit(r.status ?? 1);
const dir = join(root, "prebuilds", `${process.platform}-${process.arch}`);
const cuda = join(root, "build-cuda", "Release", "bhsd_cuda.node");
if (existsSync(cuda)) {
  copyFileSync(cuda, join(dir, "bhsd_cuda.node"));
  console.log(`bhsd: copied ${cuda}`);
} else console.log("bhsd: no CUDA addon built (npm run build:cuda); the package ships the CPU addon only");
console.log(`bhsd: ${dir}: ${readdirSync(dir).join(", ")}`);
