import test from "ava";
import { spawnSync } from "node:child_process";
import { cpSync, mkdirSync, mkdtempSync, readdirSync, rmSync, statSync, symlinkSync, writeFileSync } from "node:fs";
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
  const types = spawnSync(process.execPath, [
    "-e",
    `const p=require(${JSON.stringify(join(ROOT, "package.json"))}); const fs=require("fs"); process.exit(fs.existsSync(require("path").join(${JSON.stringify(ROOT)}, p.exports["."].types))?0:1)`,
  ]);
  t.is(types.status, 0);
});

test("the type declarations compile for a TypeScript user without @types/node or the DOM library (skipLibCheck off)", (t) => {
  // The package as installed: its declarations and package.json, and beside it the packages of
  // this checkout's node_modules but @types/* (linked, resolved where they are linked), as a user's
  // npm install leaves them without @types/node.
  const dir = mkdtempSync(join(tmpdir(), "bhsd-types-"));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const modules = join(dir, "node_modules"),
    pkg = join(modules, "bhsd");
  cpSync(join(ROOT, "dist"), join(pkg, "dist"), { recursive: true, filter: (src) => statSync(src).isDirectory() || src.endsWith(".d.ts") });
  cpSync(join(ROOT, "package.json"), join(pkg, "package.json"));
  for (const name of readdirSync(join(ROOT, "node_modules"))) {
    if (name === "@types" || name.startsWith(".") || name === "bhsd") continue;
    if (name.startsWith("@")) {
      mkdirSync(join(modules, name));
      for (const sub of readdirSync(join(ROOT, "node_modules", name)))
        symlinkSync(join(ROOT, "node_modules", name, sub), join(modules, name, sub), "dir");
    } else symlinkSync(join(ROOT, "node_modules", name), join(modules, name), "dir");
  }
  writeFileSync(
    join(dir, "main.ts"),
    `import * as bhsd from "bhsd";
import type { Volume, SegmentOptions, SegmentReport, ServeOptions, Service, TrainOptions, CaseMetrics, Model } from "bhsd";
export const api: typeof bhsd = bhsd;
export async function run(ct: Volume, model: Model, o: SegmentOptions, s: ServeOptions, t: TrainOptions): Promise<[SegmentReport, Service, CaseMetrics, number]> {
  const { labels, report } = await bhsd.segment(ct, model, o);
  const app = await bhsd.createServer(s);
  const trained = await bhsd.train(t);
  return [report, app, await bhsd.evaluate(labels, labels), trained.history.length];
}
`,
  );
  writeFileSync(
    join(dir, "tsconfig.json"),
    JSON.stringify({
      compilerOptions: {
        target: "ES2022",
        module: "NodeNext",
        moduleResolution: "NodeNext",
        lib: ["ES2022"],
        types: [],
        strict: true,
        skipLibCheck: false,
        noEmit: true,
        preserveSymlinks: true,
      },
      files: ["main.ts"],
    }),
  );
  const r = spawnSync(process.execPath, [join(ROOT, "node_modules", "typescript", "bin", "tsc"), "-p", "tsconfig.json"], {
    cwd: dir,
    encoding: "utf8",
  });
  t.is(r.status, 0, r.stdout + r.stderr);
  t.is(r.stdout.trim(), "");
});
