#!/usr/bin/env node
// The one Node-API binary under the other supported Node majors: installs node@22 and node@24 from
// the npm registry (the `node` package's platform builds) into a cache folder and runs the tests
// that drive the addon most (backends, caller-held buffers, models — their files read into engine
// memory, which is detached once parsed — and NIfTI reads: .nii.gz inflates
// through the zlib each Node exports to addons) under each. Node 20 runs the
// whole suite (`npm test`). Exits non-zero when any run fails.
//
//   node scripts/test-node-versions.mjs [22 24 …]
import { spawnSync } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const majors = process.argv.slice(2).length ? process.argv.slice(2) : ["22", "24"];
const files = [
  "test/backends.test.ts",
  "test/external-data.test.ts",
  "test/memory-safety.test.ts",
  "test/model-validation.test.ts",
  "test/networks.test.ts",
  "test/nifti.test.ts",
];
/** Removes a folder of this run; a failure to is said, not thrown (the other majors still run). */
function remove(dir) {
  try {
    rmSync(dir, { recursive: true, force: true, maxRetries: 3 });
  } catch (e) {
    console.log(`(could not remove ${dir}: ${e.message})`);
  }
}
let failed = 0;
for (const major of majors) {
  if (!/^\d+$/.test(major)) {
    console.error(`test-node-versions: ${JSON.stringify(major)} is not a Node major version`);
    process.exit(2);
  }
  const dir = join(process.env.BHSD_NODE_CACHE ?? join(tmpdir(), "bhsd-node-versions"), major);
  const bin = join(dir, "node_modules", `node-${process.platform}-${process.arch}`, "bin", "node");
  if (!existsSync(bin)) {
    mkdirSync(dir, { recursive: true });
    const npm = spawnSync(
      "npm",
      [
        "install",
        "--no-audit",
        "--no-fund",
        "--no-save",
        "--prefix",
        dir,
        `node@${major}`,
        `node-${process.platform}-${process.arch}@${major}`,
      ],
      { stdio: "inherit" },
    );
    if (npm.status !== 0 || !existsSync(bin)) {
      console.log(`FAIL node ${major}: could not install it from the registry`);
      failed++;
      continue;
    }
  }
  const version = spawnSync(bin, ["--version"], { encoding: "utf8" }).stdout.trim();
  // the tests' temporary files in a folder of this run, removed when it passes (as npm test does)
  const scratch = mkdtempSync(join(tmpdir(), `bhsd-test-node${major}-`));
  const env = { ...process.env, PATH: `${dirname(bin)}:${process.env.PATH}`, TMPDIR: scratch };
  const r = spawnSync(bin, [join(root, "node_modules", "ava", "entrypoints", "cli.mjs"), ...files], {
    cwd: root,
    env,
    encoding: "utf8",
    timeout: 900_000,
  });
  const summary = /(\d+) tests? passed/.exec(r.stdout + r.stderr);
  const ok = r.status === 0;
  if (!ok) failed++;
  console.log(`${ok ? "ok" : "FAIL"} node ${version}: ${summary ? summary[0] : "no summary"}`);
  if (!ok || process.env.BHSD_KEEP_TMP === "1") console.log(`${ok ? "" : r.stdout + r.stderr}\n(temporary files kept in ${scratch})`);
  else remove(scratch);
}
process.exit(failed ? 1 : 0);
