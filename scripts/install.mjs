#!/usr/bin/env node
// npm install hook: use a prebuilt or already built addon when one loads; otherwise compile it with
// node-gyp. Never fails the install: without a binary, bhsd runs on its TypeScript backend.
import { spawnSync } from "node:child_process";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const require = createRequire(import.meta.url);
const say = (msg) => process.stderr.write(`bhsd: ${msg}\n`);

if (process.env.BHSD_SKIP_NATIVE_BUILD === "1") {
  say("BHSD_SKIP_NATIVE_BUILD=1: not building the native addon (the ts backend will be used)");
  process.exit(0);
}

function loads() {
  try {
    const path = require("node-gyp-build").resolve(root);
    require(path).info();
    return path;
  } catch {
    return undefined;
  }
}

const found = process.env.BHSD_FORCE_NATIVE_BUILD === "1" ? undefined : loads();
if (found) {
  say(`native addon ready: ${found}`);
  process.exit(0);
}

// npm hands lifecycle scripts its bundled node-gyp (npm_config_node_gyp) and puts it on PATH.
const gyp = process.env.npm_config_node_gyp;
const cmd = gyp ? [process.execPath, [gyp, "rebuild"]] : ["node-gyp", ["rebuild"]];
say("no prebuilt binary for this platform; compiling the native addon with node-gyp …");
const r = spawnSync(cmd[0], cmd[1], { cwd: root, stdio: ["ignore", "inherit", "inherit"], shell: !gyp });
const built = r.status === 0 ? loads() : undefined;
if (built) say(`native addon built: ${built}`);
else {
  say(
    `could not build the native addon (${r.error ? r.error.message : `node-gyp exited with ${r.status}`}); ` +
      `bhsd will run on its TypeScript backend. Install a C++ compiler, make and python3, then run ${root.split(/[\\/]/).includes("node_modules") ? "`npm rebuild bhsd`" : "`npm run build:native`"}.`,
  );
}
process.exit(0);
