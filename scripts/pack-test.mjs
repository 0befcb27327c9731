#!/usr/bin/env node
// The package as users get it: `npm pack`, install the tarball into an empty folder, and prove
// that (1) the prebuilt binary is the one loaded and nothing was compiled, (2) the library and the
// command line work from there, (3) with the binary removed the TypeScript backend takes over and
// says why and how to compile one, (4) that command compiles the addon from the tarball. `npm pack`
// builds the prebuild first where it is missing (the prepack script); the tarball must hold it, and
// hold what node-gyp needs to build from source, and nothing that is only for the CUDA build or the
// tests. Ends with "N passed, N failed".
import { execFileSync, spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, dirname } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const prebuilt = join(root, "prebuilds", `${process.platform}-${process.arch}`, "bhsd.node");
let passed = 0,
  failed = 0;
const check = (what, ok, detail = "") => {
  if (ok) passed++;
  else failed++;
  console.log(`${ok ? "ok" : "not ok"} - ${what}${ok || !detail ? "" : `\n  ${detail}`}`);
};
// stdout as JSON, or {} where it is not JSON (the checks then report what came instead)
const parsed = (text) => {
  try {
    return JSON.parse(text);
  } catch {
    return {};
  }
};
const work = mkdtempSync(join(tmpdir(), "bhsd-pack-"));
try {
  const tgz = execFileSync("npm", ["pack", "--silent", "--pack-destination", work], { cwd: root, encoding: "utf8" })
    .trim()
    .split("\n")
    .pop();
  check(`npm pack left a prebuilt binary at ${prebuilt}`, existsSync(prebuilt));
  // What the tarball holds (tar's listing, not npm's own report of it).
  const listed = new Set(
    execFileSync("tar", ["tzf", join(work, tgz)], { encoding: "utf8" })
      .split("\n")
      .filter(Boolean)
      .map((f) => f.replace(/^package\//, "")),
  );
  const here = `prebuilds/${process.platform}-${process.arch}/bhsd.node`;
  check(
    `the tarball holds ${here}`,
    listed.has(here),
    [...listed].filter((f) => f.startsWith("prebuilds/")).join(", ") || "no prebuilds/ at all",
  );
  for (const p of ["prebuilds/linux-arm64/bhsd.node"])
    if (existsSync(join(root, p))) check(`the tarball holds ${p}, built here`, listed.has(p));
  const needed = [
    "binding.gyp",
    "scripts/install.mjs",
    "native/src/addon.cc",
    "native/src/ops_napi.cc",
    "native/include/bhsd/conv.hpp",
    "native/include/bhsd/conv_neon.hpp",
    "dist/index.js",
    "models/demo.onnx",
  ];
  check(
    "the tarball holds what node-gyp and the library need",
    needed.every((f) => listed.has(f)),
    needed.filter((f) => !listed.has(f)).join(", "),
  );
  const extra = [...listed].filter((f) => /^(CMakeLists\.txt|native\/cuda\/|native\/test\/|scripts\/build-cuda|test\/|lib\/)/.test(f));
  check("the tarball holds nothing only the CUDA build or the tests use", extra.length === 0, extra.slice(0, 10).join(", "));
  const app = join(work, "app");
  execFileSync("mkdir", ["-p", app]);
  writeFileSync(join(app, "package.json"), JSON.stringify({ name: "bhsd-user", version: "1.0.0", type: "module", private: true }));
  const install = spawnSync("npm", ["install", "--no-audit", "--no-fund", "--foreground-scripts", join(work, tgz)], {
    cwd: app,
    encoding: "utf8",
  });
  const log = install.stdout + install.stderr;
  check("the tarball installs", install.status === 0, log.slice(-2000));
  check("nothing was compiled", !/compiling the native addon|gyp info spawn|CXX\(target\)/.test(log), log.slice(-2000));
  const bin = join(app, "node_modules", ".bin", "bhsd");
  const info = spawnSync(bin, ["info", "--json"], { cwd: app, encoding: "utf8" });
  const j = parsed(info.stdout);
  check("bhsd info runs", info.status === 0, info.stderr);
  check(
    "the prebuilt binary is the one loaded",
    j.backend === "native" && /node_modules\/bhsd\/prebuilds\//.test(j.details?.native?.binary ?? ""),
    JSON.stringify(j.details),
  );
  writeFileSync(
    join(app, "job.mjs"),
    `import { volumeFromArray, writeNifti, connectedComponents, evaluate, backendInfo } from "bhsd";
const d = new Uint8Array(8 * 16 * 16); d[5] = 1; d[300] = 2; d[301] = 2;
const v = volumeFromArray(d, [8, 16, 16], [5, 0.5, 0.5]);
await writeNifti("labels.nii.gz", v);
const { count } = await connectedComponents(v);
const m = await evaluate(v, v);
console.log(JSON.stringify({ count, dice: m.perClass["2"].dice, backend: backendInfo().active }));`,
  );
  const job = spawnSync(process.execPath, ["job.mjs"], { cwd: app, encoding: "utf8" });
  check("the library works from an installed package", job.status === 0 && parsed(job.stdout).count === 2, job.stderr);
  const comp = spawnSync(bin, ["components", "labels.nii.gz", "--json"], { cwd: app, encoding: "utf8" });
  check("bhsd components runs from there", comp.status === 0 && parsed(comp.stdout).count === 2, comp.stderr);
  const demo = spawnSync(bin, ["demo", "--seed", "11", "--json"], { cwd: app, encoding: "utf8", timeout: 120_000 });
  const dj = parsed(demo.stdout);
  check(
    "bhsd demo runs from there with the bundled model, on the prebuilt binary",
    demo.status === 0 && dj.backend === "native" && /node_modules\/bhsd\/models\/demo\.onnx$/.test(dj.model ?? ""),
    demo.stderr.slice(-1000),
  );
  rmSync(join(app, "node_modules", "bhsd", "prebuilds"), { recursive: true, force: true });
  const ts = spawnSync(bin, ["info", "--json"], { cwd: app, encoding: "utf8" });
  const k = parsed(ts.stdout);
  check(
    "without the binary the ts backend takes over and says why",
    ts.status === 0 && k.backend === "ts" && /no binary/.test(k.reasons?.native ?? ""),
    ts.stdout + ts.stderr,
  );
  check(
    "…and names the command that compiles one in an installed package (`npm rebuild bhsd`)",
    /`npm rebuild bhsd`/.test(k.reasons?.native ?? ""),
    k.reasons?.native,
  );
  const job2 = spawnSync(process.execPath, ["job.mjs"], { cwd: app, encoding: "utf8" });
  check("…and the library still works", job2.status === 0 && parsed(job2.stdout).backend === "ts", job2.stderr);
  // Where no prebuild matches (another platform), the addon compiles from the tarball's sources: the
  // command the reason names runs the install script again, which now finds no binary and compiles
  // one. This proves the tarball holds all that node-gyp needs, not just the names on its list.
  const rebuild = spawnSync("npm", ["rebuild", "bhsd", "--foreground-scripts"], {
    cwd: app,
    encoding: "utf8",
    timeout: 600_000,
    maxBuffer: 64 << 20,
  });
  const built = join(app, "node_modules", "bhsd", "build", "Release", "bhsd.node");
  check(
    "`npm rebuild bhsd` compiles the addon from the tarball's sources",
    rebuild.status === 0 && existsSync(built),
    (rebuild.stdout + rebuild.stderr).slice(-2000),
  );
  const nat = spawnSync(bin, ["info", "--json"], { cwd: app, encoding: "utf8" });
  const b = parsed(nat.stdout);
  check(
    "…and the compiled binary is the one loaded",
    b.backend === "native" && /node_modules\/bhsd\/build\/Release\/bhsd\.node$/.test(b.details?.native?.binary ?? ""),
    nat.stdout + nat.stderr,
  );
  const job3 = spawnSync(process.execPath, ["job.mjs"], { cwd: app, encoding: "utf8" });
  check("…and the library works on it", job3.status === 0 && parsed(job3.stdout).backend === "native", job3.stderr);
} finally {
  rmSync(work, { recursive: true, force: true });
}
console.log(`${passed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
