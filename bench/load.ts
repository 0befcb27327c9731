/**
 * Loading a large model: what `bhsd segment` pays at every start (the first load in a fresh
 * process) and a service pays for each model it loads (a later load in the same process), beside
 * onnxruntime-node's InferenceSession.create on the same file. UNETR at its real widths (a 354 MB
 * export, made by bench/models/make_unetr.py), inline and with its tensors in external data (as
 * PyTorch's dynamo exporter writes it; converted here by onnx's own writer when onnx imports).
 * Each round is a fresh Node process per engine, the engines in turn; medians of five rounds.
 */
import { spawnSync } from "node:child_process";
import { existsSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { fmt, median, pythonWith, runPython } from "./lib.js";

const DIST = fileURLToPath(new URL("../dist/index.js", import.meta.url));
const ORT = fileURLToPath(new URL("../node_modules/onnxruntime-node/dist/index.js", import.meta.url));

const CHILD = `
const [engine, path] = process.argv.slice(2);
const times = [];
if (engine === "bhsd") {
  const { loadModel } = await import(${JSON.stringify(DIST)});
  for (let i = 0; i < 2; i++) {
    const t0 = performance.now();
    const m = await loadModel(path);
    times.push(performance.now() - t0);
    m.dispose();
  }
} else {
  const ort = (await import(${JSON.stringify(ORT)})).default;
  for (let i = 0; i < 2; i++) {
    const t0 = performance.now();
    const s = await ort.InferenceSession.create(path, { intraOpNumThreads: 2, interOpNumThreads: 1 });
    times.push(performance.now() - t0);
    await s.release();
  }
}
console.log(JSON.stringify(times));
`;

export async function benchLoad(dir: string): Promise<string[]> {
  const inline = fileURLToPath(new URL("./models/unetr_real.onnx", import.meta.url));
  if (!existsSync(inline))
    return [
      "model loading: not run — make bench/models/unetr_real.onnx first (PYTHONPATH=<MONAI 1.4.0> /usr/bin/python3 bench/models/make_unetr.py)",
    ];
  const child = join(dir, "load-child.mjs");
  writeFileSync(child, CHILD);
  const models: [string, string][] = [["UNETR (real widths), 354 MB, inline", inline]];
  const py = pythonWith("onnx");
  if (py) {
    const external = join(dir, "unetr_external.onnx");
    runPython<null>(
      py,
      "import onnx, sys, json\nm = onnx.load(sys.argv[1])\nonnx.save_model(m, sys.argv[2], save_as_external_data=True, all_tensors_to_one_file=True, location='unetr_external.onnx.data', size_threshold=1024)\nprint('null')",
      [inline, external],
    );
    models.push(["the same, tensors in unetr_external.onnx.data", external]);
  }
  const rows: string[] = [];
  for (const [what, path] of models) {
    const runs: Record<string, number[][]> = { bhsd: [], ort: [] };
    for (let round = 0; round < 5; round++)
      for (const engine of ["bhsd", "ort"] as const) {
        const r = spawnSync(process.execPath, [child, engine, path], { encoding: "utf8" });
        if (r.status !== 0) throw new Error(`load bench (${engine}): ${r.stderr}`);
        runs[engine]!.push(JSON.parse(r.stdout.trim().split("\n").pop()!) as number[]);
      }
    const first = (e: string) => median(runs[e]!.map((t) => t[0]!)),
      second = (e: string) => median(runs[e]!.map((t) => t[1]!));
    rows.push(
      `| ${what} | ${fmt(first("bhsd"), 0)} / ${fmt(second("bhsd"), 0)} | ${fmt(first("ort"), 0)} / ${fmt(second("ort"), 0)} | ${fmt(first("ort") / first("bhsd"), 2)}× / ${fmt(second("ort") / second("bhsd"), 2)}× |`,
    );
  }
  return [
    "model loading: loadModel beside onnxruntime-node's InferenceSession.create (2 threads), the same file; first load in a fresh process / the next load in it (ms, medians of five processes each)",
    "| model | bhsd ms | onnxruntime ms | bhsd faster |",
    "| --- | --- | --- | --- |",
    ...rows,
  ];
}
