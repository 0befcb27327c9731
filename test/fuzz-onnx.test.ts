import test from "ava";
import { spawn } from "node:child_process";
import { copyFileSync, existsSync, mkdirSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { loadModel, setBackend } from "../lib/index.js";
import { INPUT_SHAPE, INPUT_SHAPE_2D, MUTATION_KINDS, baseModels, type MutationKind } from "./fuzz-onnx-cases.js";
import { CASES, SEED } from "./fuzz-rng.js";
import { ROOT, backendsUnderTest } from "./helpers.js";
import { encodeModel } from "../lib/model/onnx-proto.js";

// A bounded fuzzer over loadModel + one run: small valid models (encodeModel) and the PyTorch-exported
// plainunet, mutated (bytes flipped, truncated, attribute ints set to 0/negative/huge or dropped,
// float attributes to NaN/Inf, initializer shapes and values changed — Slice steps 0 among them —,
// nodes removed, reversed, self-reading or duplicated). Each case must reject with an Error or run;
// never crash the process, hang or exhaust memory. The cases run in a child process
// (test/fuzz-onnx-child.ts) capped in heap, resident memory and time per case, so that a crash or a
// hang is this test's failure (naming the case, its bytes kept) rather than the end of ava.
// BHSD_FUZZ_CASES sets the count (`npm run fuzz`: many), BHSD_FUZZ_SEED the seed, BHSD_FUZZ_ONNX_KINDS
// the mutation classes (default: all).
const N = CASES(60);
const KINDS = (process.env.BHSD_FUZZ_ONNX_KINDS ? process.env.BHSD_FUZZ_ONNX_KINDS.split(",") : [...MUTATION_KINDS]) as MutationKind[];
for (const k of KINDS)
  if (!MUTATION_KINDS.includes(k)) throw new Error(`BHSD_FUZZ_ONNX_KINDS: ${k} is not one of ${MUTATION_KINDS.join(", ")}`);
const CASE_MS = 20_000; // a case takes milliseconds; this is for a loaded machine
const MEMORY_LIMIT = 256 << 20; // loadModel's budget for the model's own allocations
const RSS_CAP = 1536 << 20; // the child's resident memory beyond what it held when its first case began
const keep = join(tmpdir(), `bhsd-fuzz-onnx-${SEED}`);

interface Outcome {
  i: number;
  desc: string;
  outcome: "ran" | "rejected" | "non-error" | "crashed" | "timeout" | "memory";
  message: string;
}

/** Resident memory of a process in bytes (Linux), or 0 where /proc is not there. */
function rss(pid: number): number {
  try {
    const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, "utf8"));
    return m ? Number(m[1]) * 1024 : 0;
  } catch {
    return 0;
  }
}

interface Limits {
  to: number;
  caseMs: number;
  /** bytes of resident memory the child may gain after its first case began */
  rssCap: number;
  /** BHSD_FUZZ_ONNX_SELFTEST for the child: "crash@i,hang@j,memory@k" (the harness's own test) */
  selftest?: string;
}

/** Runs cases [from, to) in one child; resolves with their outcomes up to the first that killed it. */
function runChild(from: number, { to, caseMs, rssCap, selftest }: Limits): Promise<Outcome[]> {
  return new Promise((resolve) => {
    const child = spawn(
      process.execPath,
      [
        "--max-old-space-size=512",
        "--import",
        "tsx",
        join(ROOT, "test", "fuzz-onnx-child.ts"),
        String(SEED),
        String(from),
        String(to),
        KINDS.join(","),
        keep,
        String(MEMORY_LIMIT),
      ],
      { cwd: ROOT, stdio: ["ignore", "pipe", "pipe"], env: { ...process.env, BHSD_FUZZ_ONNX_SELFTEST: selftest ?? "" } },
    );
    const out: Outcome[] = [];
    let current: { i: number; desc: string; since: number } | null = null;
    let baseRss = -1; // at the first case: node, tsx and the addon (more under a sanitizer)
    let killedFor: Outcome["outcome"] | null = null;
    let buf = "",
      stderr = "";
    child.stderr.on("data", (d) => (stderr = (stderr + d).slice(-4000)));
    child.stdout.on("data", (d) => {
      buf += d;
      const lines = buf.split("\n");
      buf = lines.pop()!;
      for (const line of lines) {
        let o: Record<string, unknown>;
        try {
          o = JSON.parse(line);
        } catch {
          continue;
        }
        if (typeof o.start === "number" && baseRss < 0) baseRss = rss(child.pid!);
        if (typeof o.start === "number")
          current = {
            i: o.start,
            desc: `case ${o.start} (${o.base}, ${o.kind}, ${o.backend}: ${(o.what as string[]).join(", ")})`,
            since: performance.now(),
          };
        else if (typeof o.done === "number" && current) {
          out.push({ i: o.done, desc: current.desc, outcome: o.outcome as Outcome["outcome"], message: String(o.message) });
          current = null;
        }
      }
    });
    const watch = setInterval(() => {
      if (!current || killedFor) return;
      if (performance.now() - current.since > caseMs) killedFor = "timeout";
      else if (rss(child.pid!) - baseRss > rssCap) killedFor = "memory";
      if (killedFor) child.kill("SIGKILL");
    }, 50);
    child.on("close", (code, signal) => {
      clearInterval(watch);
      if (current) {
        const c: { i: number; desc: string } = current;
        const why =
          killedFor === "timeout"
            ? `no answer within ${caseMs} ms`
            : killedFor === "memory"
              ? `resident memory grew past ${rssCap >> 20} MB`
              : `the process died (${signal ?? `exit ${code}`}): ${stderr.trim().split("\n").slice(-6).join(" | ")}`;
        out.push({ i: c.i, desc: c.desc, outcome: killedFor ?? "crashed", message: why });
        if (existsSync(join(keep, "current.onnx"))) copyFileSync(join(keep, "current.onnx"), join(keep, `case-${c.i}.onnx`));
      } else if (out.length + from < to) {
        out.push({
          i: from + out.length,
          desc: `case ${from + out.length}`,
          outcome: "crashed",
          message: `the worker ended before starting it (${signal ?? `exit ${code}`}): ${stderr.trim().slice(-800)}`,
        });
      }
      resolve(out);
    });
  });
}

/** Cases [0, to), a new child after each one that killed its child. */
async function runAll(limits: Limits): Promise<Outcome[]> {
  const outcomes: Outcome[] = [];
  while (outcomes.length < limits.to) {
    const got = await runChild(outcomes.length, limits);
    if (!got.length) break;
    outcomes.push(...got);
  }
  return outcomes;
}

test("the harness reports a crash, a hang and a memory blow-up as that case's failure, and goes on", async (t) => {
  mkdirSync(keep, { recursive: true });
  // 160 MB: the normal cases gain a few MB (also under ASan); the hoard fills it in 2 s at the ~100 MB/s
  // a loaded machine gives, well within the 8 s a case has before it counts as a hang
  const o = await runAll({ to: 5, caseMs: 8000, rssCap: 160 << 20, selftest: "crash@1,hang@2,memory@3" });
  t.deepEqual(
    o.map((x) => [x.i, x.outcome === "rejected" ? "ran" : x.outcome]),
    [
      [0, "ran"],
      [1, "crashed"],
      [2, "timeout"],
      [3, "memory"],
      [4, "ran"],
    ],
  );
  t.regex(o[1]!.message, /SIGABRT|exit 134/);
});

test("the fuzzer's base models are valid: each loads and runs on every backend", async (t) => {
  for (const { name } of backendsUnderTest()) {
    setBackend(name);
    for (const b of baseModels()) {
      const model = await loadModel(encodeModel(b.spec));
      const shape = model.inputs[0]!.shape.length === 4 ? INPUT_SHAPE_2D : INPUT_SHAPE;
      const y = await model.run({ data: new Float32Array(shape.reduce((a, c) => a * c, 1)).fill(0.5), shape: [...shape] });
      t.true(y.data.length > 0 && y.data.every(Number.isFinite), `${name}: ${b.name}`);
    }
  }
});

test(`loadModel + run: ${N} mutated models each reject with an Error or run, never crash, hang or exhaust memory (seed ${SEED})`, async (t) => {
  mkdirSync(keep, { recursive: true });
  const outcomes = await runAll({ to: N, caseMs: CASE_MS, rssCap: RSS_CAP });
  const bad = outcomes.filter((o) => o.outcome !== "ran" && o.outcome !== "rejected");
  const count = (k: string) => outcomes.filter((o) => o.outcome === k).length;
  t.log(`${outcomes.length} cases (${KINDS.join(", ")}): ${count("ran")} ran, ${count("rejected")} rejected, ${bad.length} failed`);
  t.is(outcomes.length, N);
  t.deepEqual(
    bad.map(
      (o) => `${o.desc}: ${o.outcome}: ${o.message}${o.outcome === "non-error" ? "" : ` [bytes: ${join(keep, `case-${o.i}.onnx`)}]`}`,
    ),
    [],
  );
  t.true(count("ran") > 0 && count("rejected") > 0, "the mutations reach both outcomes");
});
