import test from "ava";
import { spawnSync } from "node:child_process";
import { mkdirSync, mkdtempSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { NIFTI_FIXTURES, ROOT } from "./helpers.js";

test('`import { readNifti, backendInfo } from "bhsd"` works from a plain script in another folder', (t) => {
  const dir = mkdtempSync(join(tmpdir(), "bhsd-user-"));
  mkdirSync(join(dir, "node_modules"));
  symlinkSync(ROOT, join(dir, "node_modules", "bhsd"), "dir"); // as `npm link` does
  writeFileSync(
    join(dir, "main.mjs"),
    `import { readNifti, backendInfo, volumeFromArray } from "bhsd";
const v = await readNifti(${JSON.stringify(join(NIFTI_FIXTURES, "labels_uint8.nii.gz"))});
console.log(JSON.stringify({ dims: v.dims, active: backendInfo().active, vfa: typeof volumeFromArray }));`,
  );
  const r = spawnSync(process.execPath, ["main.mjs"], { cwd: dir, encoding: "utf8" });
  t.is(r.status, 0, r.stderr);
  const o = JSON.parse(r.stdout);
  t.deepEqual(o.dims, [20, 16, 6]);
  t.is(o.vfa, "function");
  // and the type declarations are where package.json's exports say
  const types = spawnSync(process.execPath, ["-e", `const p=require(${JSON.stringify(join(ROOT, "package.json"))}); const fs=require("fs"); process.exit(fs.existsSync(require("path").join(${JSON.stringify(ROOT)}, p.exports["."].types))?0:1)`]);
  t.is(types.status, 0);
});
