#!/usr/bin/env node
// `npm run test:asan`: the Node-API layer and the core under AddressSanitizer and UBSan.
// 1. Builds the addon with -fsanitize=address,undefined into build-asan/bhsd.node (g++ directly, from
//    binding.gyp's sources, defines and include folders; rebuilt only when a source is newer).
// 2. Runs the backend-facing test files with node under LD_PRELOAD of g++'s libasan (node itself is
//    not instrumented, so the sanitizer runtime must come first), ASAN_OPTIONS=detect_leaks=0 (V8
//    keeps memory to exit by design), UBSan halting on the first report, and BHSD_NATIVE_BINARY
//    pointing the native backend at the sanitizer build.
//
//   node scripts/asan-test.mjs [--build-only] [test files...]
//
// A sanitizer report aborts the test process: ava reports that file as failed, and the report
// (stack included) is in the output. Ends with the runner's `N passed, N failed` line.
import { spawn, spawnSync } from "node:child_process";
import { existsSync, mkdirSync, readFileSync, readdirSync, statSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const outDir = join(root, "build-asan");
const binary = join(outDir, "bhsd.node");
const DEFAULT_FILES = [
  "test/tensor.test.ts",
  "test/components.test.ts",
  "test/backends.test.ts",
  "test/metrics.test.ts",
  "test/grad.test.ts",
  "test/memory-safety.test.ts",
  "test/fuzz-onnx.test.ts",
];

const args = process.argv.slice(2);
const buildOnly = args.includes("--build-only");
const files = args.filter((a) => a !== "--build-only");

const die = (msg) => {
  console.error(`test:asan: ${msg}`);
  console.log("0 passed, 1 failed");
  process.exit(1);
};
if (process.platform !== "linux") die(`runs on Linux only (LD_PRELOAD of libasan), not ${process.platform}`);
if (spawnSync("g++", ["--version"]).status !== 0) die("g++ is not installed");

// ---- what binding.gyp builds, with its <!(command) expansions done as gyp does them
const sh = (cmd) => {
  const r = spawnSync("sh", ["-c", cmd], { cwd: root, encoding: "utf8" });
  if (r.status !== 0) die(`binding.gyp's command ${cmd} failed: ${r.stderr}`);
  return r.stdout.trim();
};
const expand = (s) => {
  for (let i; (i = s.indexOf("<!(")) >= 0;) {
    let depth = 0,
      j = i + 2;
    for (; j < s.length; j++)
      if (s[j] === "(") depth++;
      else if (s[j] === ")" && --depth === 0) break;
    s = s.slice(0, i) + sh(s.slice(i + 3, j)) + s.slice(j + 1);
  }
  return s;
};
const target = JSON.parse(readFileSync(join(root, "binding.gyp"), "utf8")).targets[0];
const sources = target.sources.map((s) => join(root, s));
const defines = target.defines.map(expand);
const includes = target.include_dirs.map(expand).map((d) => (d.startsWith("/") ? d : join(root, d)));
// node's own headers: beside the node binary (an install's include/node), else node-gyp's download
const nodeHeaders = [
  join(dirname(dirname(process.execPath)), "include", "node"),
  join(process.env.HOME ?? "", ".cache", "node-gyp", process.versions.node, "include", "node"),
].find((d) => existsSync(join(d, "node_api.h")));
if (!nodeHeaders)
  die(`node's headers (node_api.h) not found beside ${process.execPath} nor in node-gyp's cache; run \`npx node-gyp install\``);

const SAN = ["-fsanitize=address,undefined", "-fno-sanitize-recover=undefined", "-fno-omit-frame-pointer"];
const CXXFLAGS = ["-std=c++17", "-O1", "-g", "-fPIC", "-pthread", "-fexceptions", "-fvisibility=hidden", ...SAN];

// ---- build (each source in parallel, then link), unless build-asan/bhsd.node is newer than every input
const newest = (dir) => {
  let t = 0;
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    t = Math.max(t, e.isDirectory() ? newest(p) : statSync(p).mtimeMs);
  }
  return t;
};
const inputsTime = Math.max(
  newest(join(root, "native", "src")),
  newest(join(root, "native", "include")),
  statSync(join(root, "binding.gyp")).mtimeMs,
  statSync(fileURLToPath(import.meta.url)).mtimeMs,
);
if (!existsSync(binary) || statSync(binary).mtimeMs < inputsTime) {
  mkdirSync(outDir, { recursive: true });
  console.log(`test:asan: building ${binary} (g++ ${SAN.join(" ")}, -O1 -g)`);
  const t0 = Date.now();
  const compile = (src) =>
    new Promise((resolve) => {
      const obj = join(outDir, src.slice(root.length + 1).replaceAll("/", "_") + ".o");
      const args = [
        ...CXXFLAGS,
        ...defines.map((d) => `-D${d}`),
        "-DBUILDING_NODE_EXTENSION",
        `-I${nodeHeaders}`,
        ...includes.map((i) => `-I${i}`),
        "-c",
        src,
        "-o",
        obj,
      ];
      const p = spawn("g++", args, { cwd: root, stdio: ["ignore", "inherit", "inherit"] });
      p.on("close", (code) => resolve(code === 0 ? obj : null));
    });
  const objs = await Promise.all(sources.map(compile));
  if (objs.includes(null)) die("compiling the sanitizer build failed (above)");
  const link = spawnSync("g++", ["-shared", "-pthread", ...SAN, ...objs, "-o", binary], { cwd: root, stdio: "inherit" });
  if (link.status !== 0) die("linking the sanitizer build failed (above)");
  console.log(`test:asan: built in ${((Date.now() - t0) / 1000).toFixed(0)} s`);
} else console.log(`test:asan: ${binary} is up to date`);
if (buildOnly) process.exit(0);

// ---- run the tests with the sanitizer runtime preloaded
const libasan = spawnSync("g++", ["-print-file-name=libasan.so"], { encoding: "utf8" }).stdout.trim();
if (!libasan.startsWith("/") || !existsSync(libasan)) die(`g++ -print-file-name=libasan.so gave ${JSON.stringify(libasan)}, not a file`);
const env = {
  ...process.env,
  LD_PRELOAD: [libasan, process.env.LD_PRELOAD].filter(Boolean).join(":"),
  ASAN_OPTIONS: ["detect_leaks=0", "abort_on_error=1", "print_summary=1", process.env.ASAN_OPTIONS].filter(Boolean).join(":"),
  UBSAN_OPTIONS: ["print_stacktrace=1", "halt_on_error=1", process.env.UBSAN_OPTIONS].filter(Boolean).join(":"),
  BHSD_NATIVE_BINARY: binary,
  BHSD_TEST_BACKENDS: process.env.BHSD_TEST_BACKENDS ?? "native",
  BHSD_SKIP_TSC: "1",
};
// the native backend must really be the sanitizer build
const probe = spawnSync(
  process.execPath,
  [
    "--import",
    "tsx",
    "--input-type=module",
    "-e",
    `import { getBackend } from "./lib/backends/index.ts"; console.log(getBackend("native").details().binary);`,
  ],
  {
    cwd: root,
    env,
    encoding: "utf8",
  },
);
if (probe.status !== 0 || probe.stdout.trim() !== binary)
  die(`the native backend did not load ${binary} under ASan: ${(probe.stdout + probe.stderr).trim()}`);
console.log(`test:asan: native backend = ${binary}, LD_PRELOAD=${libasan}`);

const run = spawnSync(
  process.execPath,
  [join(root, "scripts", "run-tests.mjs"), ...(files.length ? files : DEFAULT_FILES.filter((f) => existsSync(join(root, f))))],
  { cwd: root, env, stdio: "inherit" },
);
process.exit(run.status ?? 1);
