#!/usr/bin/env node
// npm's prepack hook (`npm pack`, `npm publish`): the package must carry a prebuilt binary for this
// platform, so that installing it needs no compiler. When prebuilds/<platform>-<arch>/bhsd.node is
// missing, or older than a native source it is built from (native/src, native/include, binding.gyp),
// it runs `npm run prebuild` (prebuildify); if there is still no binary it fails the pack, saying
// why — a package without binaries is never packed. Prebuilds for other platforms
// (prebuilds/linux-arm64 from `npm run prebuild:arm64`) ship as they are; one older than the
// sources is reported, since this machine cannot test it in place.
//
// BHSD_PREPACK_SKIP_PREBUILD=1 packs without building (CI jobs that made the prebuilds earlier and
// only want the check); the missing-binary check still applies.
import { spawnSync } from "node:child_process";
import { existsSync, readdirSync, statSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const say = (msg) => console.error(`bhsd prepack: ${msg}`);
const here = `${process.platform}-${process.arch}`;
const binary = (dir) => join(root, "prebuilds", dir, "bhsd.node");

// The newest modification time among the files a prebuild is compiled from.
function newestSource() {
  let newest = statSync(join(root, "binding.gyp")).mtimeMs;
  const walk = (dir) => {
    for (const e of readdirSync(dir, { withFileTypes: true })) {
      const p = join(dir, e.name);
      if (e.isDirectory()) walk(p);
      else newest = Math.max(newest, statSync(p).mtimeMs);
    }
  };
  for (const d of ["native/src", "native/include"]) walk(join(root, d));
  return newest;
}
const sources = newestSource();
const stale = (file) => statSync(file).mtimeMs < sources;

const mine = binary(here);
const why = !existsSync(mine) ? "missing" : stale(mine) ? "older than the native sources" : undefined;
if (why && process.env.BHSD_PREPACK_SKIP_PREBUILD !== "1") {
  say(`prebuilds/${here}/bhsd.node is ${why}: running npm run prebuild`);
  const r = spawnSync(process.execPath, [join(root, "scripts", "prebuild.mjs")], { cwd: root, stdio: "inherit" });
  if (r.status !== 0) {
    say(`npm run prebuild failed (${r.error ? r.error.message : `exit ${r.status}`}); not packing a package without its binary`);
    process.exit(1);
  }
}
if (!existsSync(mine)) {
  say(`no prebuilds/${here}/bhsd.node: not packing a package without its binary (needs a C++ compiler and python3 for node-gyp)`);
  process.exit(1);
}
const dirs = existsSync(join(root, "prebuilds")) ? readdirSync(join(root, "prebuilds")).filter((d) => existsSync(binary(d))) : [];
for (const d of dirs)
  if (d !== here && stale(binary(d)))
    say(`warning: prebuilds/${d}/bhsd.node is older than the native sources (rebuild it: npm run prebuild:${d.split("-")[1]})`);
say(`packing the prebuilds for ${dirs.join(", ")}`);
