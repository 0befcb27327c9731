import test, { type ExecutionContext } from "ava";
import { spawn, spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import {
  chmodSync,
  copyFileSync,
  existsSync,
  linkSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  readlinkSync,
  statSync,
  symlinkSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { pathToFileURL } from "node:url";
import { gzipSync } from "node:zlib";
import { NIFTI_FIXTURES, ROOT } from "./helpers.js";

// The built command line (npm test compiles it first), as a user runs it. BHSD_TEST_CLI runs
// another build (e.g. an older commit's, to see a test fail without its fix).
const CLI = process.env.BHSD_TEST_CLI ?? join(ROOT, "dist", "cli", "main.js");
// Asynchronous (the test worker stays responsive) and at most two at a time (a shared machine).
interface Run {
  status: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  /** Wall time of the command itself (not its wait for a slot). */
  ms: number;
}
let running = 0;
const waiting: (() => void)[] = [];
async function run(args: string[], timeout = 60_000): Promise<Run> {
  if (running >= 2) await new Promise<void>((r) => waiting.push(r));
  running++;
  try {
    const t0 = performance.now();
    return await new Promise<Run>((resolve) => {
      const child = spawn(process.execPath, [CLI, ...args], { timeout, stdio: ["ignore", "pipe", "pipe"] });
      let stdout = "",
        stderr = "";
      child.stdout.setEncoding("utf8").on("data", (d: string) => (stdout += d));
      child.stderr.setEncoding("utf8").on("data", (d: string) => (stderr += d));
      child.on("close", (status, signal) => resolve({ status, signal, stdout, stderr, ms: performance.now() - t0 }));
    });
  } finally {
    running--;
    waiting.shift()?.();
  }
}
const bhsd = (...args: string[]) => run(args);

test("bhsd info --json reports version and backends", async (t) => {
  const r = await bhsd("info", "--json");
  t.is(r.status, 0, r.stderr);
  const info = JSON.parse(r.stdout);
  t.regex(info.version, /^\d+\.\d+\.\d+/);
  t.true(info.available.ts);
  t.true(["cuda", "native", "ts"].includes(info.backend));
  if (!info.available.cuda) t.true(info.reasons.cuda.length > 0);
});

test("bhsd info prints a readable summary", async (t) => {
  const r = await bhsd("info");
  t.is(r.status, 0, r.stderr);
  t.regex(r.stdout, /active backend: (cuda|native|ts)/);
  t.regex(r.stdout, /native +(yes|no)/);
});

test("bhsd info FILE describes a NIfTI file", async (t) => {
  const r = await bhsd("info", join(NIFTI_FIXTURES, "ct_int16_scl.nii.gz"), "--json");
  t.is(r.status, 0, r.stderr);
  const o = JSON.parse(r.stdout);
  t.deepEqual(o.dims, [17, 13, 5]);
  t.is(o.datatype, "int16");
  t.true(o.scaled);
});

test("bhsd info MODEL describes an ONNX model or an nnU-Net folder and the config segment would use", async (t) => {
  const onnx = await bhsd("info", join(ROOT, "test", "fixtures", "qdq", "qdq.onnx"), "--json");
  t.is(onnx.status, 0, onnx.stderr);
  const o = JSON.parse(onnx.stdout);
  t.is(o.opset, 13);
  t.deepEqual(o.inputs, [{ name: "x", shape: [1, 1, "D", "H", "W"] }]);
  t.deepEqual(o.config.resampling, { type: "linear" });
  const nn = await bhsd(
    "info",
    join(ROOT, "test", "fixtures", "nnunet-folder", "Dataset501_PhantomICH", "nnUNetTrainer__nnUNetPlans__3d_fullres"),
    "--json",
  );
  t.is(nn.status, 0, nn.stderr);
  const n = JSON.parse(nn.stdout);
  t.is(n.configuration, "3d_fullres");
  t.deepEqual(n.folds, [0, 1]);
  t.is(n.network.class, "PlainConvUNet");
  t.is(n.config.resampling.data.order, 3, "nnU-Net's plans: cubic image resampling");
  t.true(n.config.cropToNonzero);
  const text = await bhsd(
    "info",
    join(ROOT, "test", "fixtures", "nnunet-folder", "Dataset501_PhantomICH", "nnUNetTrainer__nnUNetPlans__3d_fullres"),
  );
  t.regex(text.stdout, /nnU-Net v2 3d_fullres, nnUNetTrainer, folds 0, 1\n {2}PlainConvUNet \(3-D\), 5 stages/);
});

test("bad input: one line on stderr, a non-zero exit, no stack trace", async (t) => {
  const r = await bhsd("info", join(NIFTI_FIXTURES, "three_volumes_4d.nii"));
  t.is(r.status, 1);
  t.regex(r.stderr, /^bhsd: .*three_volumes_4d.nii: holds 3 volumes/);
  t.is(r.stderr.trim().split("\n").length, 1);
  const v = await bhsd("info", join(NIFTI_FIXTURES, "three_volumes_4d.nii"), "--verbose");
  t.regex(v.stderr, /at /); // --verbose shows where
  const u = await bhsd("frobnicate");
  t.not(u.status, 0);
  t.regex(u.stderr, /unknown command/);
});

test("every command has --help", async (t) => {
  /** The commands listed in the "Commands:" section of commander's own help. */
  const listed = (help: string) =>
    [...(help.split(/^Commands:$/m)[1] ?? "").matchAll(/^ {2}([a-z][a-z-]*)\b/gm)].map((m) => m[1]!).filter((c) => c !== "help");
  const top = await bhsd("--help");
  t.is(top.status, 0);
  t.regex(top.stdout, /^Usage: bhsd /m);
  const commands = listed(top.stdout);
  for (const c of ["info", "evaluate", "components", "segment", "serve", "bench", "phantom", "train", "view", "demo", "worker", "batch"])
    t.true(commands.includes(c), `${c} among ${commands.join(", ")}`);
  // each command's help, then its subcommands' (bhsd batch has some), however deep
  const queue = commands.map((c) => [c]);
  let checked = 0;
  while (queue.length) {
    const path = queue.shift()!;
    const r = await bhsd(...path, "--help");
    const name = path.join(" ");
    t.is(r.status, 0, `${name} --help: ${r.stderr}`);
    t.regex(r.stdout, new RegExp(`^Usage: bhsd ${name}( |$)`, "m"), name);
    t.regex(r.stdout, /-h, --help/, name);
    for (const sub of listed(r.stdout)) queue.push([...path, sub]);
    checked++;
  }
  t.true(checked > commands.length, "bhsd batch's subcommands were reached");
});

test("bhsd bench components --json times the engine here", async (t) => {
  const r = await bhsd("bench", "components", "--json");
  t.is(r.status, 0, r.stderr);
  const o = JSON.parse(r.stdout);
  t.is(o.results.length, 1);
  // the rate printed is the voxel count over the time measured (512 × 512 × 40 voxels)
  const { ms, rate } = o.results[0] as { ms: number; rate: string };
  t.true(Number.isFinite(ms) && ms > 0);
  t.is(rate, `${((512 * 512 * 40) / 1e3 / ms).toFixed(0)} MVx/s`);
  const bad = await bhsd("bench", "gpu");
  t.is(bad.status, 1);
  t.regex(bad.stderr, /value 'gpu' is invalid for argument 'what'\. Allowed choices are all, conv, components, metrics/);
});

test("bhsd train --slice-data trains on voxel- and slice-labelled phantoms and reports the semi-supervised terms", async (t) => {
  const { mkdtempSync, existsSync } = await import("node:fs");
  const { tmpdir } = await import("node:os");
  const dir = mkdtempSync(join(tmpdir(), "bhsd-semi-"));
  const p = await bhsd("phantom", "--out", join(dir, "set"), "--cases", "2", "--seed", "3", "--dims", "32,32,8", "--spacing", "7.2,7.2,5");
  t.is(p.status, 0, p.stderr);
  const out = join(dir, "m.onnx");
  const r = await bhsd(
    "train",
    "--data",
    join(dir, "set"),
    "--slice-data",
    join(dir, "set"),
    "--steps",
    "2",
    "--batch",
    "1",
    "--validation",
    "0",
    "--json",
    "--out",
    out,
  );
  t.is(r.status, 0, r.stderr);
  const lines = r.stdout
    .trim()
    .split("\n")
    .map((l) => JSON.parse(l));
  t.is(lines.length, 2);
  t.true(lines.every((l) => Number.isFinite(l.mil) && Number.isFinite(l.consistency)));
  t.true(existsSync(out));
  const bad = await bhsd("train", "--data", join(dir, "set"), "--slice-data", join(dir, "nowhere"), "--steps", "1", "--out", out);
  t.not(bad.status, 0);
  t.regex(bad.stderr, /nowhere/);
});

// ---------------------------------------------------------------------------------------------
// Outputs never replace inputs, are checked before any work, and appear all at once or not at all.

const CT = join(NIFTI_FIXTURES, "ct_int16_scl.nii.gz");
const LAB = join(NIFTI_FIXTURES, "labels_uint8.nii.gz");
const MODEL = join(ROOT, "models", "demo.onnx");

function freshDir(tag: string): string {
  return mkdtempSync(join(tmpdir(), `bhsd-cli-${tag}-`));
}

/** Every file under a folder (symlinks as their target text) with its bytes, to compare before and after. */
function snapshot(dir: string): Map<string, string> {
  const out = new Map<string, string>();
  const walk = (d: string) => {
    for (const e of readdirSync(d, { withFileTypes: true })) {
      const p = join(d, e.name);
      if (e.isSymbolicLink()) out.set(p, `-> ${readlinkSync(p)}`);
      else if (e.isDirectory()) {
        out.set(p, "<dir>");
        walk(p);
      } else if (!e.isFile())
        out.set(p, "<not a regular file>"); // never read a FIFO
      else out.set(p, createHash("sha256").update(readFileSync(p)).digest("hex"));
    }
  };
  walk(dir);
  return out;
}

/** A refusal: exit 1, one line "bhsd: …" on stderr matching `message`. */
function refused(t: ExecutionContext, r: Run, message: RegExp, what: string) {
  t.is(r.status, 1, `${what}: exit ${r.status} (signal ${r.signal}); stderr ${r.stderr}`);
  t.regex(r.stderr, /^bhsd: /, what);
  t.is(r.stderr.trim().split("\n").length, 1, `${what}: ${r.stderr}`);
  t.regex(r.stderr, message, what);
  t.notRegex(r.stderr, /\.bhsd-[0-9a-f]+|\.tmp\b/, `${what}: a temporary's name in ${r.stderr}`);
}

test("an output that is an input is refused (same name, symlink or hard link) and the input stays byte-identical", async (t) => {
  const dir = freshDir("same");
  const ct = join(dir, "ct.nii.gz"),
    lab = join(dir, "lab.nii.gz"),
    link = join(dir, "link.nii.gz"),
    hard = join(dir, "hard.nii.gz");
  copyFileSync(CT, ct);
  copyFileSync(LAB, lab);
  symlinkSync("lab.nii.gz", link);
  linkSync(lab, hard);
  const gt = join(dir, "gt"),
    pred = join(dir, "pred");
  mkdirSync(gt);
  mkdirSync(pred);
  copyFileSync(LAB, join(gt, "case1.nii.gz"));
  copyFileSync(LAB, join(pred, "case1.nii.gz"));
  const before = snapshot(dir);
  const attempts: string[][] = [
    ["segment", ct, "--model", MODEL, "--out", ct],
    ["segment", ct, "--model", MODEL, "--report", ct, "--quiet"],
    ["components", lab, "--out", lab],
    ["components", lab, "--out", link],
    ["components", lab, "--out", hard],
    ["components", link, "--min-voxels", "2", "--cleaned", lab],
    ["evaluate", "--gt", lab, "--pred", hard, "--csv", lab],
    ["evaluate", "--gt", gt, "--pred", pred, "--csv", join(pred, "case1.nii.gz")],
    ["evaluate", "--gt", gt, "--pred", pred, "--summary-csv", join(gt, "case1.nii.gz")],
  ];
  for (const args of attempts) {
    const r = await bhsd(...args);
    refused(t, r, /is an input of this command .*refusing to overwrite it/, args.join(" "));
    t.deepEqual(snapshot(dir), before, `${args.join(" ")} changed the folder`);
  }
});

test("two outputs naming the same file, an output that is a folder, and a missing output folder are refused before any work", async (t) => {
  const dir = freshDir("outs");
  const lab = join(dir, "lab.nii.gz"),
    ct = join(dir, "ct.nii.gz");
  copyFileSync(LAB, lab);
  copyFileSync(CT, ct);
  const before = snapshot(dir);
  const cases: [string[], RegExp][] = [
    [
      ["components", lab, "--out", join(dir, "x.nii.gz"), "--min-voxels", "2", "--cleaned", join(dir, "x.nii.gz")],
      /--cleaned .*x\.nii\.gz and --out .*x\.nii\.gz name the same file/,
    ],
    [
      ["segment", ct, "--model", MODEL, "--out", join(dir, "r.nii.gz"), "--report", join(dir, ".", "r.nii.gz")],
      /--report .* and --out .* name the same file/,
    ],
    [["components", lab, "--out", dir], /--out .*: is a folder, expected a file name/],
    // issue 18: this left l.nii.gz behind (the report failed after the labels were written)
    [
      ["segment", ct, "--model", MODEL, "--out", join(dir, "l.nii.gz"), "--report", join(dir, "nodir", "r.json"), "--quiet"],
      /--report .*nodir.*r\.json: the folder .*nodir does not exist/,
    ],
    [["evaluate", "--gt", lab, "--pred", lab, "--csv", join(dir, "no", "such", "rows.csv")], /--csv .*: the folder .* does not exist/],
    [["phantom", "--out", lab, "--cases", "1", "--dims", "16,16,8"], /--out .*lab\.nii\.gz: is a file, expected a folder/],
  ];
  for (const [args, message] of cases) {
    const r = await bhsd(...args);
    refused(t, r, message, args.join(" "));
    t.deepEqual(snapshot(dir), before, `${args.join(" ")} left something behind`);
    t.true(r.ms < 20_000, `${args.join(" ")} took ${r.ms.toFixed(0)} ms`);
  }
});

test("a command that fails after writing one output leaves no output and no temporary behind", async (t) => {
  const dir = freshDir("partial");
  const lab = join(dir, "lab.nii.gz");
  copyFileSync(LAB, lab);
  const before = snapshot(dir);
  // --cleaned is written before the components are counted; the count then fails
  const r = await bhsd(
    "components",
    lab,
    "--min-voxels",
    "1",
    "--cleaned",
    join(dir, "c.nii.gz"),
    "--out",
    join(dir, "o.nii.gz"),
    "--max-components",
    "3",
  );
  refused(t, r, /lab\.nii\.gz: \d+ components, more than --max-components 3/, "components --max-components 3");
  t.deepEqual(snapshot(dir), before);
  // and the same command that succeeds writes both, with nothing else beside them
  const ok = await bhsd(
    "components",
    lab,
    "--min-voxels",
    "1",
    "--cleaned",
    join(dir, "c.nii.gz"),
    "--out",
    join(dir, "o.nii.gz"),
    "--json",
  );
  t.is(ok.status, 0, ok.stderr);
  t.deepEqual([...snapshot(dir).keys()].map((p) => p.slice(dir.length + 1)).sort(), ["c.nii.gz", "lab.nii.gz", "o.nii.gz"]);
});

test("OutputPlan: errors name the output, never its temporary; success renames every output into place", async (t) => {
  const { OutputPlan } = await import("../lib/cli/util.js");
  const dir = freshDir("plan");
  const final = join(dir, "labels.nii.gz");
  const e = await t.throwsAsync(
    OutputPlan.run([], [{ flag: "--out", path: final }], (plan) =>
      plan.write("--out", async (tmp) => {
        writeFileSync(tmp, "half");
        throw new Error(`ENOSPC: no space left on device, write '${tmp}.0a1b2c3d4e5f.tmp' (from ${tmp})`);
      }),
    ),
  );
  t.is(e!.message, `ENOSPC: no space left on device, write '${final}' (from ${final})`);
  t.deepEqual(readdirSync(dir), []);
  await OutputPlan.run(
    [],
    [
      { flag: "--a", path: join(dir, "a.txt") },
      { flag: "--b", path: join(dir, "sub", "b"), folder: true },
    ],
    async (plan) => {
      await plan.write("--a", (tmp) => Promise.resolve(writeFileSync(tmp, "A")));
      writeFileSync(join(plan.temp("--b"), "inner.txt"), "B");
      t.deepEqual(
        readdirSync(dir).filter((f) => !f.startsWith(".bhsd-")),
        [],
        "outputs appeared before the end",
      );
    },
  );
  t.deepEqual(readdirSync(dir).sort(), ["a.txt", "sub"]);
  t.is(readFileSync(join(dir, "a.txt"), "utf8"), "A");
  t.is(readFileSync(join(dir, "sub", "b", "inner.txt"), "utf8"), "B");
});

test("a FIFO or a character device given as input (a CT, labels, a model) is refused at once (info, segment, components)", async (t) => {
  const dir = freshDir("fifo");
  const fifo = join(dir, "ct.nii.gz");
  const mk = spawnSync("mkfifo", [fifo]);
  t.is(mk.status, 0, "mkfifo");
  const before = snapshot(dir);
  for (const args of [
    ["info", fifo],
    ["segment", fifo, "--model", MODEL, "--quiet"],
    ["segment", CT, "--model", fifo, "--quiet"],
    ["components", fifo],
    ["info", "/dev/zero"],
  ]) {
    const r = await run(args, 30_000); // today's code waits for a writer forever: killed here
    refused(t, r, /is (a FIFO \(named pipe\)|a character device), not a file/, args.join(" "));
  }
  t.deepEqual(snapshot(dir), before);
});

test("evaluate exits non-zero with a one-line reason when it scores nothing", async (t) => {
  const dir = freshDir("none");
  const gt = join(dir, "gt"),
    empty = join(dir, "empty"),
    other = join(dir, "other");
  for (const d of [gt, empty, other]) mkdirSync(d);
  copyFileSync(LAB, join(gt, "case1.nii.gz"));
  copyFileSync(LAB, join(other, "case2.nii.gz"));
  const csv = join(dir, "rows.csv");
  refused(
    t,
    await bhsd("evaluate", "--gt", gt, "--pred", empty, "--csv", csv),
    /no case to score: 1 ground truth\(s\) in .*gt and no prediction of the same name in .*empty/,
    "empty predictions",
  );
  refused(
    t,
    await bhsd("evaluate", "--gt", gt, "--pred", other, "--json"),
    /no case to score: .*\(1 prediction\(s\) without ground truth\)/,
    "no matching names",
  );
  refused(t, await bhsd("evaluate", "--gt", empty, "--pred", gt), /holds no .nii or .nii.gz files/, "empty ground truths");
  t.false(existsSync(csv), "a CSV of nothing was written");
  const ok = await bhsd("evaluate", "--gt", gt, "--pred", gt, "--json");
  t.is(ok.status, 0, ok.stderr);
  t.is(JSON.parse(ok.stdout).cases.length, 1);
});

test("components refuses a CT in Hounsfield units as labels, and labels above --max-label", async (t) => {
  const { writeNifti, readNifti } = await import("../lib/index.js");
  const dir = freshDir("labels");
  refused(
    t,
    await bhsd("components", CT, "--json"),
    /ct_int16_scl\.nii\.gz holds values from -\d+ to \d+; labels are integers from 0 to 255 \(is it a CT in Hounsfield units rather than labels\?\)/,
    "CT as labels",
  );
  const lab = await readNifti(LAB);
  const big = Uint16Array.from(lab.data as Uint8Array, (v) => (v === 5 ? 300 : v));
  const p = join(dir, "big.nii.gz");
  await writeNifti(p, { ...lab, data: big, meta: undefined });
  refused(t, await bhsd("components", p), /holds values from 0 to 300; labels are integers from 0 to 255/, "label 300");
  const ok = await bhsd("components", p, "--max-label", "300", "--json");
  t.is(ok.status, 0, ok.stderr);
  const o = JSON.parse(ok.stdout);
  t.true(o.components.some((c: { class: number }) => c.class === 300));
  t.false(o.components.some((c: { class: number }) => c.class === 5));
});

test("the command line refuses a NIfTI whose header claims more than --max-input-mb (default 1024) before inflating it", async (t) => {
  const dir = freshDir("bomb");
  // 1100 MiB of zeros as 1100 gzip members of 1 MiB each (1.2 MB on disk), behind a header that says so
  const header = readFileSync(join(NIFTI_FIXTURES, "labels_uint16.nii")).subarray(0, 352);
  header.writeInt16LE(3, 40);
  header.writeInt16LE(1024, 42);
  header.writeInt16LE(1024, 44);
  header.writeInt16LE(1100, 46);
  header.writeInt16LE(2, 70); // uint8
  header.writeInt16LE(8, 72);
  const mib = gzipSync(Buffer.alloc(1 << 20));
  const bomb = join(dir, "bomb.nii.gz");
  writeFileSync(bomb, Buffer.concat([gzipSync(header), ...Array.from({ length: 1100 }, () => mib)]));
  const r = await bhsd("components", bomb);
  refused(
    t,
    r,
    /bomb\.nii\.gz: voxel data of 1153433600 bytes exceeds the limit of 1073741824 bytes \(--max-input-mb 1024\)/,
    "default limit",
  );
  t.true(r.ms < 15_000, `took ${r.ms.toFixed(0)} ms`);
  // the limit is the user's to set: a 2 MiB volume is read by default and refused under 1 MiB
  header.writeInt16LE(128, 42);
  header.writeInt16LE(128, 44);
  header.writeInt16LE(128, 46);
  const small = join(dir, "small.nii.gz");
  writeFileSync(small, Buffer.concat([gzipSync(header), mib, mib]));
  t.is((await bhsd("components", small)).status, 0);
  refused(
    t,
    await bhsd("--max-input-mb", "1", "components", small),
    /small\.nii\.gz: voxel data of 2097152 bytes exceeds the limit of 1048576 bytes \(--max-input-mb 1\)/,
    "--max-input-mb 1",
  );
});

test("a command stopped by a signal midway leaves neither its output nor a temporary", async (t) => {
  const dir = freshDir("signal");
  const out = join(dir, "set");
  // many phantoms: seconds of work, written into a hidden folder first
  const child = spawn(process.execPath, [CLI, "phantom", "--out", out, "--cases", "500", "--dims", "96,96,16", "--quiet"], {
    stdio: ["ignore", "ignore", "pipe"],
  });
  // stop it once its temporary exists (the work has begun)
  const t0 = performance.now();
  while (!readdirSync(dir).some((f) => f.startsWith(".bhsd-")) && performance.now() - t0 < 30_000 && child.exitCode === null)
    await new Promise((r) => setTimeout(r, 50));
  t.true(
    readdirSync(dir).some((f) => f.startsWith(".bhsd-")),
    "the command never began writing",
  );
  child.kill("SIGTERM");
  const [, signal] = await new Promise<[number | null, NodeJS.Signals | null]>((r) => child.on("close", (c, s) => r([c, s])));
  t.is(signal, "SIGTERM");
  t.deepEqual(readdirSync(dir), []);
});

test("a signal while a NIfTI output is being written leaves neither the output, the plan's temporary nor the writer's own", async (t) => {
  const dir = freshDir("signal-writer");
  const out = join(dir, "big.nii.gz");
  // a child that plans the output, writes a 32 MB volume into its temporary (writeNifti gzips into
  // `<temp>.<hex>.tmp` on libuv's threads, then renames) and stops itself once that file exists
  const script = `
    const { OutputPlan } = await import(${JSON.stringify(pathToFileURL(join(dirname(CLI), "util.js")).href)});
    const { writeNifti } = await import(${JSON.stringify(pathToFileURL(join(dirname(CLI), "..", "io", "nifti.js")).href)});
    const { readdirSync } = await import("node:fs");
    const data = new Float32Array(256 * 256 * 128);
    for (let i = 0; i < data.length; i++) data[i] = Math.random();
    const timer = setInterval(() => {
      if (readdirSync(${JSON.stringify(dir)}).some((f) => f.endsWith(".tmp"))) process.kill(process.pid, "SIGTERM");
    }, 2);
    await OutputPlan.run([], [{ flag: "--out", path: ${JSON.stringify(out)} }], (plan) =>
      writeNifti(plan.temp("--out"), { data, dims: [256, 256, 128], spacing: [1, 1, 1], affine: [1,0,0,0, 0,1,0,0, 0,0,1,0, 0,0,0,1] }),
    );
    clearInterval(timer);
  `;
  const child = spawn(process.execPath, ["--input-type=module", "-e", script], { stdio: ["ignore", "ignore", "pipe"] });
  let stderr = "";
  child.stderr.on("data", (d) => (stderr += d));
  const [code, signal] = await new Promise<[number | null, NodeJS.Signals | null]>((r) => child.on("close", (c, s) => r([c, s])));
  t.is(signal, "SIGTERM", `the write finished before the signal (exit ${code}): ${stderr}`);
  t.deepEqual(readdirSync(dir), []);
});

test("OutputPlan.refuseInputs: an output found to be an input once the work has named its inputs is refused, nothing written", async (t) => {
  const { OutputPlan } = await import("../lib/cli/util.js");
  const dir = freshDir("late");
  const gt = join(dir, "gt.nii.gz");
  copyFileSync(LAB, gt);
  linkSync(gt, join(dir, "same.csv"));
  const before = snapshot(dir);
  await t.throwsAsync(
    OutputPlan.run([], [{ flag: "--csv", path: join(dir, "same.csv") }], async (plan) => {
      await plan.refuseInputs([gt]);
      await plan.write("--csv", (tmp) => Promise.resolve(writeFileSync(tmp, "rows")));
    }),
    { message: `--csv ${join(dir, "same.csv")} is an input of this command (${gt}); refusing to overwrite it` },
  );
  t.deepEqual(snapshot(dir), before);
});

test("segment --conv-plan keeps the convolution plan in a file: written after the run, read by the next, which labels alike; a file that is no plan is refused and left as it was", async (t) => {
  const dir = freshDir("plan");
  const plan = join(dir, "plan.json");
  const first = await bhsd("segment", CT, "--model", MODEL, "--out", join(dir, "a.nii.gz"), "--conv-plan", plan, "--quiet");
  t.is(first.status, 0, first.stderr);
  const kept = JSON.parse(readFileSync(plan, "utf8"));
  t.is(kept.format, "bhsd-conv-plan");
  t.true(
    Array.isArray(kept.entries) && kept.entries.every((e: unknown) => Array.isArray(e) && e.length === 16),
    readFileSync(plan, "utf8"),
  );
  const second = await bhsd("segment", CT, "--model", MODEL, "--out", join(dir, "b.nii.gz"), "--conv-plan", plan, "--quiet");
  t.is(second.status, 0, second.stderr);
  t.is(second.stderr, "", "this machine's plan was not taken");
  t.deepEqual(JSON.parse(readFileSync(plan, "utf8")).entries, kept.entries);
  t.true(readFileSync(join(dir, "a.nii.gz")).equals(readFileSync(join(dir, "b.nii.gz"))));
  // another machine's plan: a note, the run, the file replaced by this machine's
  writeFileSync(plan, JSON.stringify({ ...kept, cpu: "Another CPU" }));
  const third = await bhsd("segment", CT, "--model", MODEL, "--conv-plan", plan, "--quiet");
  t.is(third.status, 0, third.stderr);
  t.regex(third.stderr, /--conv-plan .*plan\.json: not used \(made for Another CPU, .*\); it will be replaced/);
  t.is(JSON.parse(readFileSync(plan, "utf8")).cpu, kept.cpu);
  // not a plan (a label volume named by mistake, a hand-broken plan): refused before any work, untouched
  const lab = join(dir, "lab.nii.gz");
  copyFileSync(LAB, lab);
  writeFileSync(join(dir, "broken.json"), JSON.stringify({ ...kept, entries: [[1, 2, 3]] }));
  const before = snapshot(dir);
  for (const [file, message] of [
    [lab, /--conv-plan .*lab\.nii\.gz: not a plan from an earlier run \(.*\); refusing to overwrite it/],
    [
      join(dir, "broken.json"),
      /--conv-plan .*broken\.json: not a plan from an earlier run \(Expected an array of 16 integers in \[0, 2\^40\] for plan\.entries\[0\].*\); refusing to overwrite it/,
    ],
    [dir, /--conv-plan .*: is a folder, expected a file name/],
    [CT, /--conv-plan .* is an input of this command .*refusing to overwrite it/],
  ] as const) {
    const r = await bhsd("segment", CT, "--model", MODEL, "--out", join(dir, "c.nii.gz"), "--conv-plan", file, "--quiet");
    refused(t, r, message, file);
  }
  t.deepEqual(snapshot(dir), before);
});

test("an output replacing a file inside an input folder (a DICOM series, an nnU-Net folder) or an ONNX model's external weights is refused before any work; a new file there is not", async (t) => {
  const dir = freshDir("infolder");
  const series = join(dir, "series"),
    nn = join(dir, "nn");
  mkdirSync(series);
  mkdirSync(join(nn, "fold_0"), { recursive: true });
  writeFileSync(join(series, "IM0001.dcm"), "slice");
  writeFileSync(join(nn, "fold_0", "checkpoint_final.pth"), "weights");
  const ext = join(dir, "ext");
  mkdirSync(ext);
  for (const f of ["resencunet.onnx", "resencunet.onnx.data"])
    copyFileSync(join(ROOT, "test", "fixtures", "external-data", "one-file", f), join(ext, f));
  symlinkSync("series", join(dir, "via-link"));
  const ct = join(dir, "ct.nii.gz");
  copyFileSync(CT, ct);
  const before = snapshot(dir);
  const attempts: [string[], RegExp][] = [
    [
      ["segment", series, "--model", MODEL, "--report", join(series, "IM0001.dcm"), "--quiet"],
      /--report .*IM0001\.dcm is inside .*series, an input folder/,
    ],
    [["segment", series, "--model", MODEL, "--out", join(dir, "via-link", "IM0001.dcm"), "--quiet"], /is inside .*series, an input folder/],
    [
      ["segment", ct, "--nnunet", nn, "--out", join(nn, "fold_0", "checkpoint_final.pth"), "--quiet"],
      /--out .*checkpoint_final\.pth is inside .*nn, an input folder/,
    ],
    [
      ["segment", ct, "--model", join(ext, "resencunet.onnx"), "--report", join(ext, "resencunet.onnx.data"), "--quiet"],
      /--report .*resencunet\.onnx\.data is an input of this command/,
    ],
  ];
  for (const [args, message] of attempts) {
    const r = await bhsd(...args);
    refused(t, r, message, args.join(" "));
    t.deepEqual(snapshot(dir), before, `${args.join(" ")} changed the folder`);
  }
  // a new file in the series folder is not refused (the run then fails on the series itself)
  const fresh = await bhsd("segment", series, "--model", MODEL, "--out", join(series, "seg.nii.gz"), "--quiet");
  t.is(fresh.status, 1);
  t.notRegex(fresh.stderr, /an input folder/);
  t.deepEqual(snapshot(dir), before);
});

test("an output the command replaces keeps its permission bits (a result made group-readable stays so)", async (t) => {
  const dir = freshDir("mode");
  const out = join(dir, "cc.nii.gz");
  const first = await bhsd("components", LAB, "--out", out);
  t.is(first.status, 0, first.stderr);
  for (const mode of [0o640, 0o604]) {
    chmodSync(out, mode);
    const again = await bhsd("components", LAB, "--out", out);
    t.is(again.status, 0, again.stderr);
    t.is(statSync(out).mode & 0o777, mode, mode.toString(8));
  }
});
