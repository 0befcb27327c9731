/**
 * Loading a large model: what `bhsd segment` pays at every start (the first load in a fresh
 * process) and a service pays for each model it loads (a later load in the same process), beside
 * onnxruntime-node's InferenceSession.create on the same file. UNETR at its real widths (a 354 MB
 * export, made by bench/models/make_unetr.py), inline and with its tensors in external data (as
 * PyTorch's dynamo exporter writes it; converted here by onnx's own writer when onnx imports).
 * Each round is a fresh Node process per engine, the engines in turn; medians of five rounds.
 */
import { spawnSync } from "node:child_process";
import { copyFileSync, existsSync, mkdirSync, readFileSync, statSync, writeFileSync } from "node:fs";
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
} else if (engine === "nnunet") {
  const { loadNnunet } = await import(${JSON.stringify(DIST)});
  for (let i = 0; i < 2; i++) {
    const t0 = performance.now();
    const m = await loadNnunet(path, { folds: [0] });
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
  const child = join(dir, "load-child.mjs");
  writeFileSync(child, CHILD);
  const inline = fileURLToPath(new URL("./models/unetr_real.onnx", import.meta.url));
  if (!existsSync(inline))
    return [
      "model loading: not run — make bench/models/unetr_real.onnx first (PYTHONPATH=<MONAI 1.4.0> /usr/bin/python3 bench/models/make_unetr.py)",
      "",
      ...(await nnunetLoad(dir)),
    ];
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
    "",
    ...(await nnunetLoad(dir)),
  ];
}

/**
 * An nnU-Net results folder at nnU-Net's default 3d_fullres widths (PlainConvUNet, 32…320, six
 * stages: 30 M parameters, a 122 MB checkpoint_final.pth with random weights, written by
 * torch.save), loaded by loadNnunet beside PyTorch's own torch.load of the same checkpoint (what
 * nnU-Net's predictor does first), each in fresh processes.
 */
async function nnunetLoad(dir: string): Promise<string[]> {
  const py = pythonWith("torch");
  if (!py) return ["nnU-Net folder loading: not run (no python3 with torch)"];
  const { architectureFromPlans, buildNetwork } = (await import(
    fileURLToPath(new URL("../dist/model/nnunet/network.js", import.meta.url))
  )) as {
    architectureFromPlans: (conf: unknown, inputs: number, classes: number, where: string) => unknown;
    buildNetwork: (a: unknown) => { params: { names: string[]; shape: number[] }[] };
  };
  const src = fileURLToPath(
    new URL("../test/fixtures/nnunet-folder/Dataset501_PhantomICH/nnUNetTrainer__nnUNetPlans__3d_fullres", import.meta.url),
  );
  const folder = join(dir, "Dataset501_Big", "nnUNetTrainer__nnUNetPlans__3d_fullres");
  mkdirSync(join(folder, "fold_0"), { recursive: true });
  for (const f of ["dataset.json", "dataset_fingerprint.json"]) copyFileSync(join(src, f), join(folder, f));
  const plans = JSON.parse(readFileSync(join(src, "plans.json"), "utf8")) as {
    configurations: Record<string, { patch_size: number[]; architecture: { arch_kwargs: Record<string, unknown> } }>;
  };
  const conf = plans.configurations["3d_fullres"]!;
  Object.assign(conf.architecture.arch_kwargs, {
    n_stages: 6,
    features_per_stage: [32, 64, 128, 256, 320, 320],
    kernel_sizes: [[1, 3, 3], ...Array.from({ length: 5 }, () => [3, 3, 3])],
    strides: [
      [1, 1, 1],
      [1, 2, 2],
      [2, 2, 2],
      [2, 2, 2],
      [1, 2, 2],
      [1, 2, 2],
    ],
    n_conv_per_stage: [2, 2, 2, 2, 2, 2],
    n_conv_per_stage_decoder: [2, 2, 2, 2, 2],
  });
  conf.patch_size = [32, 128, 128];
  writeFileSync(join(folder, "plans.json"), JSON.stringify(plans));
  const shapes = buildNetwork(architectureFromPlans(conf, 1, 6, "bench plans")).params.map((p) => [p.names[0], p.shape]);
  const ckpt = join(folder, "fold_0", "checkpoint_final.pth");
  runPython<null>(
    py,
    [
      "import json, sys, collections, torch",
      "src = torch.load(sys.argv[1], map_location='cpu')",
      "g = torch.Generator().manual_seed(0)",
      "src['network_weights'] = collections.OrderedDict((n, torch.randn(*s, generator=g) * 0.05) for n, s in json.loads(sys.argv[2]))",
      "src.pop('optimizer_state', None)",
      "torch.save(src, sys.argv[3])",
      "print('null')",
    ].join("\n"),
    [join(src, "fold_0", "checkpoint_final.pth"), JSON.stringify(shapes), ckpt],
  );
  const child = join(dir, "load-child.mjs");
  const torchTimes = [
    "import sys, time, torch",
    "t = []",
    "for i in range(2):",
    "    t0 = time.perf_counter(); torch.load(sys.argv[1], map_location='cpu'); t.append((time.perf_counter() - t0) * 1000)",
    "print(t)",
  ].join("\n");
  const bhsd: number[][] = [],
    torch: number[][] = [];
  for (let round = 0; round < 5; round++) {
    const r = spawnSync(process.execPath, [child, "nnunet", folder], { encoding: "utf8" });
    if (r.status !== 0) throw new Error(`load bench (nnunet): ${r.stderr}`);
    bhsd.push(JSON.parse(r.stdout.trim().split("\n").pop()!) as number[]);
    torch.push(runPython<number[]>(py, torchTimes, [ckpt]));
  }
  const mb = statSync(ckpt).size / 1e6;
  const first = (r: number[][]) => median(r.map((t) => t[0]!)),
    next = (r: number[][]) => median(r.map((t) => t[1]!));
  return [
    `nnU-Net folder loading: loadNnunet (plans, checkpoint, network built, weights in) beside PyTorch's torch.load of the same checkpoint alone (${py}), first in a fresh process / next in it (ms, medians of five processes each)`,
    "| folder | bhsd loadNnunet ms | PyTorch torch.load ms | bhsd faster |",
    "| --- | --- | --- | --- |",
    `| PlainConvUNet 3d_fullres (32…320, six stages, 30 M parameters), checkpoint ${fmt(mb, 0)} MB | ${fmt(first(bhsd), 0)} / ${fmt(next(bhsd), 0)} | ${fmt(first(torch), 0)} / ${fmt(next(torch), 0)} | ${fmt(first(torch) / first(bhsd), 2)}× / ${fmt(next(torch) / next(bhsd), 2)}× |`,
  ];
}
