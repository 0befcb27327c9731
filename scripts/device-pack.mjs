#!/usr/bin/env node
// Makes .devpack/ for bench/device/run.sh: the device machine has no Node.js and no registry, so
// the run carries this Node binary, the dependencies the tests and the benchmark load (the
// closure of ava, tsx and the runtime dependencies, onnxruntime-node with its linux-x64 library
// only), each xz-compressed. The reference fixtures are in the repository (test/fixtures/shared)
// and travel with the working tree.
import { execFileSync } from "node:child_process";
import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const pack = join(root, ".devpack");
mkdirSync(pack, { recursive: true });
const nm = join(root, "node_modules");
// Node's resolution from each package's folder: its own node_modules, then its parents'.
const seen = new Set(); // package folders, relative to node_modules
const top = new Set(); // top-level entries to pack (nested folders travel with their parent)
const resolveFrom = (dir, name) => {
  for (let d = dir; d.startsWith(nm); d = dirname(d)) {
    const c = d.endsWith("/node_modules") ? join(d, name) : join(d, "node_modules", name);
    if (existsSync(join(c, "package.json"))) return c;
    if (d === nm) break;
  }
  return null;
};
const walk = (dir) => {
  const rel = dir.slice(nm.length + 1);
  if (seen.has(rel)) return;
  seen.add(rel);
  const parts = rel.split("/");
  top.add(parts[0].startsWith("@") ? parts.slice(0, 2).join("/") : parts[0]);
  const d = JSON.parse(readFileSync(join(dir, "package.json"), "utf8"));
  for (const k of Object.keys({ ...d.dependencies, ...d.optionalDependencies })) {
    const c = resolveFrom(dir, k);
    if (c) walk(c);
  }
};
for (const n of [
  "ava",
  "tsx",
  "protobufjs",
  "node-gyp-build",
  "fastify",
  "@fastify/multipart",
  "commander",
  "onnxruntime-node",
  "node-addon-api",
])
  walk(join(nm, n));
const list = [...top, ".bin"].sort();
writeFileSync(join(pack, "modules.txt"), list.join("\n") + "\n");
const sh = (cmd) => execFileSync("sh", ["-c", cmd], { cwd: root, stdio: "inherit" });
const excl =
  "--exclude=onnxruntime-node/bin/napi-v6/darwin --exclude=onnxruntime-node/bin/napi-v6/win32 --exclude=onnxruntime-node/bin/napi-v6/linux/arm64";
sh(`tar -C node_modules ${excl} -cf - ${list.join(" ")} | xz -T2 -6 > .devpack/nm.tar.xz`);
if (!existsSync(join(pack, "node.xz"))) sh(`xz -T2 -9 -c ${process.execPath} > .devpack/node.xz`);
sh("ls -la .devpack && du -sh .devpack");
