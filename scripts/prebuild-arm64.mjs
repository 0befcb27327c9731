#!/usr/bin/env node
// `npm run prebuild:arm64`: the linux-arm64 prebuild (AWS Graviton, Ampere), cross-compiled on an
// x86-64 Linux machine with Debian's g++-aarch64-linux-gnu: node-gyp builds binding.gyp with
// --arch=arm64 and CC/CXX set to the cross compilers, in a scratch copy of the sources (so that the
// host's build/ is left as it is), then the binary is stripped into prebuilds/linux-arm64/bhsd.node
// — the name prebuildify gives (`--napi`) and node-gyp-build looks for. The C++ core test
// (native/test/core_test.cc, NEON kernels included) is cross-built too and run under
// qemu-aarch64-static when that is installed.
//
//   node scripts/prebuild-arm64.mjs [--skip-core-test]
//
// Node headers: node-gyp would download them from nodejs.org; the installed Node's own headers are
// used instead (<prefix>/include/node, where <prefix> is the running node's install prefix; the
// Node-API headers do not depend on the architecture). Exits non-zero, saying why, when the
// toolchain or the headers are missing or any step fails.
import { spawnSync } from "node:child_process";
import { cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const TRIPLE = "aarch64-linux-gnu";
const tool = (name) => `${TRIPLE}-${name}`;
const die = (msg) => {
  console.error(`prebuild:arm64: ${msg}`);
  process.exit(1);
};
const run = (what, cmd, args, opts = {}) => {
  const r = spawnSync(cmd, args, { stdio: "inherit", ...opts });
  if (r.status !== 0) die(`${what} failed (${r.error ? r.error.message : `exit ${r.status}`}): ${cmd} ${args.join(" ")}`);
};

if (process.platform !== "linux") die(`cross-compiles on Linux only, not ${process.platform}`);
for (const t of ["g++", "gcc", "strip"])
  if (spawnSync(tool(t), ["--version"]).status !== 0)
    die(`${tool(t)} is not installed (Debian/Ubuntu: apt-get install g++-aarch64-linux-gnu)`);

// The running node's headers: /usr/include/node for /usr/bin/node, <dir>/include/node for a tarball install.
const prefix = dirname(dirname(process.execPath));
const nodedir = process.env.BHSD_NODEDIR ?? prefix;
if (!existsSync(join(nodedir, "include", "node", "node_api.h")))
  die(`no Node headers at ${join(nodedir, "include", "node")} (set BHSD_NODEDIR to a folder holding include/node/node_api.h)`);

const gyp =
  process.env.npm_config_node_gyp ??
  join(dirname(process.execPath), "..", "lib", "node_modules", "npm", "node_modules", "node-gyp", "bin", "node-gyp.js");
if (!existsSync(gyp)) die(`node-gyp not found at ${gyp} (npm ships it; set npm_config_node_gyp)`);
const addonApi = join(root, "node_modules", "node-addon-api");
if (!existsSync(addonApi)) die("node_modules/node-addon-api is missing: run npm ci first");

// A scratch copy of what binding.gyp reads: its sources and include folders, package.json (the
// version it embeds) and node-addon-api (found from there by require).
const work = mkdtempSync(join(tmpdir(), "bhsd-arm64-"));
try {
  cpSync(join(root, "binding.gyp"), join(work, "binding.gyp"));
  cpSync(join(root, "package.json"), join(work, "package.json"));
  for (const d of ["native/src", "native/include"]) cpSync(join(root, d), join(work, d), { recursive: true });
  mkdirSync(join(work, "node_modules"));
  symlinkSync(addonApi, join(work, "node_modules", "node-addon-api"), "dir");

  const env = { ...process.env, CC: tool("gcc"), CXX: tool("g++"), LINK: tool("g++"), AR: tool("ar"), CC_host: "gcc", CXX_host: "g++" };
  const jobs = process.env.BHSD_JOBS ?? "2";
  run("node-gyp", process.execPath, [gyp, "rebuild", "--arch=arm64", `--nodedir=${nodedir}`, "--release", "-j", jobs], { cwd: work, env });
  const built = join(work, "build", "Release", "bhsd.node");
  if (!existsSync(built)) die(`node-gyp produced no ${built}`);
  const dest = join(root, "prebuilds", "linux-arm64");
  mkdirSync(dest, { recursive: true });
  const out = join(dest, "bhsd.node");
  cpSync(built, out);
  run("strip", tool("strip"), ["--strip-unneeded", out]);
  // An ELF for AArch64 (e_machine 183), not the host's.
  const head = readFileSync(out).subarray(0, 20);
  if (head.readUInt32BE(0) !== 0x7f454c46 || head.readUInt16LE(18) !== 183) die(`${out} is not an AArch64 ELF file`);
  console.log(`prebuild:arm64: ${out} (${statSync(out).size} bytes, AArch64 ELF)`);
} finally {
  rmSync(work, { recursive: true, force: true });
}

if (!process.argv.includes("--skip-core-test")) {
  // The Node-free C++ core test, cross-built (-Werror, as on x86) and run under emulation.
  const exe = join(mkdtempSync(join(tmpdir(), "bhsd-arm64-core-")), "core_test");
  run(
    "cross-building the core test",
    tool("g++"),
    ["-std=c++17", "-Wall", "-Wextra", "-Werror", "-pthread", "-O2", "-Inative/include", "native/test/core_test.cc", "-o", exe],
    { cwd: root },
  );
  if (spawnSync("qemu-aarch64-static", ["--version"]).status !== 0) {
    console.log(
      "prebuild:arm64: qemu-aarch64-static is not installed (apt-get install qemu-user-static): the core test was built, not run",
    );
  } else {
    // 80 s alone on a 2-core Zen 5 under qemu; 300 s once ran out on a loaded machine (12-06): 15 minutes
    const r = spawnSync("qemu-aarch64-static", ["-L", `/usr/${TRIPLE}`, exe], { encoding: "utf8", timeout: 900_000 });
    const summary = /(\d+) passed, (\d+) failed/.exec(r.stdout);
    process.stdout.write(r.stdout + r.stderr);
    if (r.status !== 0 || !summary || summary[2] !== "0") {
      rmSync(join(root, "prebuilds", "linux-arm64", "bhsd.node"), { force: true }); // never leave a binary that failed it
      die(
        `the core test failed under qemu-aarch64 (${r.error ? r.error.message : `exit ${r.status}`}); prebuilds/linux-arm64/bhsd.node removed`,
      );
    }
    console.log(`prebuild:arm64: core test under qemu-aarch64: ${summary[0]}`);
  }
  rmSync(dirname(exe), { recursive: true, force: true });
}
