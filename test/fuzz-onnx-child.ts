/**
 * The ONNX fuzzer's worker (run by test/fuzz-onnx.test.ts, one process for many cases): for each case,
 * one line `{"start":i}`, the case's bytes written to KEEP/current.onnx, loadModel with a memory limit
 * and one run on a tiny input, then one line `{"done":i,"outcome":...}`. A crash, a hang or a memory
 * blow-up leaves a start without its done, which the parent reports as that case's failure.
 *
 *   node --import tsx test/fuzz-onnx-child.ts SEED FROM TO KINDS KEEP MEMORY_LIMIT
 */
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { loadModel, setBackend } from "../lib/index.js";
import { INPUT_SHAPE, INPUT_SHAPE_2D, makeCase, type MutationKind } from "./fuzz-onnx-cases.js";

const [seed, from, to, kinds, keep, memoryLimit] = process.argv.slice(2);
const say = (o: object) => process.stdout.write(JSON.stringify(o) + "\n");
const input = { data: Float32Array.from({ length: INPUT_SHAPE.reduce((a, b) => a * b, 1) }, (_, k) => Math.sin(k)), shape: INPUT_SHAPE };

// the harness's own test: "crash@i,hang@j,memory@k" makes those cases abort, hang or fill memory
const selftest = new Map(
  (process.env.BHSD_FUZZ_ONNX_SELFTEST ?? "")
    .split(",")
    .filter(Boolean)
    .map((s) => [Number(s.split("@")[1]), s.split("@")[0]]),
);
const hoard: Buffer[] = [];

for (let i = Number(from); i < Number(to); i++) {
  const c = makeCase(Number(seed), i, kinds!.split(",") as MutationKind[]);
  writeFileSync(join(keep!, "current.onnx"), c.bytes);
  say({ start: i, base: c.base, kind: c.kind, backend: c.backend, what: c.what });
  const act = selftest.get(i);
  if (act === "crash") process.abort();
  if (act === "hang") for (;;);
  if (act === "memory") {
    // 1 GB held, then a spin: past the self-test's cap, and bounded should the parent look late
    // on a loaded machine (without a bound, the OOM killer could end it first: "crashed")
    while (hoard.length < 64) hoard.push(Buffer.alloc(16 << 20, 1));
    for (;;);
  }
  let outcome: string, message: string;
  try {
    setBackend(c.backend);
    const model = await loadModel(c.bytes, { memoryLimit: Number(memoryLimit) });
    // (a model declaring four input axes, the 2-D base, runs on one slice of the input)
    const shape = model.inputs[0]?.shape.length === 4 ? INPUT_SHAPE_2D : INPUT_SHAPE;
    const y = await model.run({
      data: input.data.slice(
        0,
        shape.reduce((a, b) => a * b, 1),
      ),
      shape: [...shape],
    });
    outcome = "ran";
    message = `output ${y.shape}`;
  } catch (e) {
    outcome = e instanceof Error ? "rejected" : "non-error";
    message = e instanceof Error ? `${e.name}: ${e.message}`.slice(0, 300) : String(e);
  }
  say({ done: i, outcome, message });
}
