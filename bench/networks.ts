/**
 * Real networks at their real widths (issue 17): nnU-Net v2's PlainConvUNet and ResEnc-M
 * (features 32…320, six stages, an anisotropic CT plan), built with the engine's own nnU-Net
 * builder (lib/model/nnunet/network.ts, the graph loadNnunet runs) with random weights, and run by
 * bhsd native beside onnxruntime-node (2 threads) on the same ONNX bytes and input in the same run.
 * Time (median) and peak memory; also where bhsd's time goes (per op type). MONAI's SegResNet at
 * its default widths (bench/models/segresnet_default.onnx, 4.8 MB, made by make_segresnet.py there).
 * UNETR at its real widths (hidden size 768, 12 layers: about 90 M parameters, 370 MB) is not
 * kept; its small fixture is a test. PyTorch's time beside them where a python3 has torch (and onnx;
 * MONAI's networks need MONAI 1.4.0 on PYTHONPATH, MedNeXt 1.5.0 in MONAI15): bench/torch_networks.py, eager as PyTorch
 * runs it and with every forward convolution through oneDNN, its output checked against bhsd's.
 */
import ort from "onnxruntime-node";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { backendInfo, loadModel, loadMonai, loadNnunet, setBackend, type Model } from "../dist/index.js";
import type { Architecture } from "../dist/model/nnunet/network.js";
import { PLAIN_CONV_UNET_2D, PLAIN_CONV_UNET_FULLRES, RESENC_M_FULLRES, randomWeightsModel } from "../dist/model/nnunet/presets.js";
import { timeMedian } from "../dist/timing.js";
import { fmt, measure, median, pythonWith, rng, runPython, settle } from "./lib.js";

/** nnU-Net's 3d_fullres PlainConvUNet and ResEnc-M at their real widths (lib/model/nnunet/presets.ts). */
export const PLAIN: Architecture = PLAIN_CONV_UNET_FULLRES;
export const RESENC_M: Architecture = RESENC_M_FULLRES;
/** nnU-Net's 2d configuration's PlainConvUNet for 512 × 512 slices. */
export const PLAIN_2D: Architecture = PLAIN_CONV_UNET_2D;

/** A network's ONNX bytes with random weights (the same for a given seed). */
export function networkBytes(a: Architecture, seed = 1): Uint8Array {
  return randomWeightsModel(a, rng(seed));
}

/** The network for bench/torch_networks.py: ONNX bytes (nnU-Net's networks) or a MONAI module's name. */
type TorchNet =
  { onnx: Uint8Array } | { monai: "segresnet" | "unetr" | "swinunetr" | "mednext" } | { primus: true | "v2" } | { umamba: "bot" };

// (looked up once, when first needed: bench plan's fresh processes import this module too)
let pythons: { torch: string | undefined; monai: string | undefined; primus: string | undefined; umamba: string | undefined } | undefined;
const pythonsFor = () =>
  (pythons ??= {
    torch: pythonWith("torch", "onnx", "numpy"),
    monai: pythonWith("torch", "numpy", "monai"),
    primus: pythonWith("torch", "numpy", "timm", "einops", "dynamic_network_architectures"),
    umamba: pythonWith("torch", "numpy", "einops"),
  });
const TORCH_SCRIPT = fileURLToPath(new URL("./torch_networks.py", import.meta.url));

/**
 * PyTorch's median forward time (eager, and with oneDNN forced) and the largest difference of its
 * output from `ref` (bhsd's), as a fraction of the output's largest magnitude; undefined where no
 * python3 has what the network needs.
 */
function torchTimes(net: TorchNet, x: Float32Array, dims: number[], reps: number, ref: Float32Array | undefined) {
  const py =
    "onnx" in net ? pythonsFor().torch : "primus" in net ? pythonsFor().primus : "umamba" in net ? pythonsFor().umamba : pythonsFor().monai;
  if (!py) return undefined;
  const dir = mkdtempSync(join(tmpdir(), "bhsd-torch-"));
  try {
    const input = join(dir, "x.f32"),
      out = join(dir, "y.f32");
    writeFileSync(input, x);
    let netArg: string;
    if ("onnx" in net) {
      netArg = join(dir, "net.onnx");
      writeFileSync(netArg, net.onnx);
    } else netArg = "primus" in net ? (net.primus === "v2" ? "primus-v2" : "primus") : "umamba" in net ? `umamba-${net.umamba}` : net.monai;
    const args = (extra: string[]) => [TORCH_SCRIPT, netArg, input, ...dims.map(String), String(reps), out, ...extra];
    const run = (extra: string[]) =>
      runPython<{ ms: number }>(
        py,
        `import runpy, sys; sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name="__main__")`,
        args(extra),
      ).ms;
    // the largest difference of this run's output from bhsd's, of the output's scale
    const diffOf = () => {
      const y = new Float32Array(new Uint8Array(readFileSync(out)).buffer); // (a copy: aligned, its own buffer)
      if (!ref || ref.length !== y.length) return NaN;
      let d = 0,
        s = 0;
      for (let i = 0; i < y.length; i++) {
        d = Math.max(d, Math.abs(y[i]! - ref[i]!));
        s = Math.max(s, Math.abs(ref[i]!));
      }
      return d / s;
    };
    try {
      const eager = run([]);
      const d1 = diffOf();
      const onednn = run(["--onednn"]);
      return { eager, onednn, diff: Math.max(d1, diffOf()) };
    } catch (e) {
      // (a torch without oneDNN, another MONAI, a process killed for memory: the column says —)
      process.stderr.write(`bench networks: PyTorch not timed: ${(e as Error).message}\n`);
      return undefined;
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

async function compare(
  label: string,
  /** The ONNX model onnxruntime runs; null where there is none (U-Mamba: torch.onnx cannot export its scan). */
  bytes: Uint8Array | null,
  shape: number[],
  reps: number,
  torchNet?: TorchNet,
  /** bhsd's own model of the network (loadMonai's or loadNnunet's, from the state_dict) instead of the ONNX bytes'. */
  own?: () => Promise<Pick<Model, "run" | "lastRun" | "dispose">>,
): Promise<string[]> {
  // (BENCH_MATCH=regex: only the rows whose label matches)
  if (process.env.BENCH_MATCH && !new RegExp(process.env.BENCH_MATCH).test(label)) return [];
  const r = rng(7);
  const x = { data: new Float32Array(shape.reduce((a, b) => a * b, 1)).map(() => r() * 2 - 1), shape };
  const session = bytes && (await ort.InferenceSession.create(bytes, { intraOpNumThreads: 2, interOpNumThreads: 1 }));
  const feed = session ? { [session.inputNames[0]!]: new ort.Tensor("float32", x.data, x.shape) } : {};
  const native = backendInfo().available.native;
  if (native) setBackend("native");
  const m = native ? await (own ? own() : loadModel(bytes!)) : undefined;
  // three rounds, each engine's medians in turn: on this shared machine either one's time drifts by
  // 20–30 % over a minute (onnxruntime's SegResNet at 16×64×64: 22–32 ms), so one block each
  // would compare two different minutes
  const oMs: number[] = [],
    nMs: number[] = [];
  let torch: ReturnType<typeof torchTimes>;
  for (let round = 0; round < 3; round++) {
    await settle(); // (each engine's threads idle before the other's block: onnxruntime's spin on)
    if (session) oMs.push(await timeMedian(() => session.run(feed), reps));
    await settle();
    if (m) nMs.push(await timeMedian(() => m.run(x), reps));
    // PyTorch (its own process) once, between the rounds; its output checked against bhsd's
    if (round === 1 && torchNet)
      torch = torchTimes(
        torchNet,
        x.data,
        shape.length === 4 ? [1, ...shape.slice(2)] : shape.slice(2), // (a 2-D network's slice: depth 1)
        shape[2] === 16 ? 5 : 2,
        m ? (await m.run(x)).data : undefined,
      );
  }
  await settle();
  const o = session ? { ms: median(oMs), peakMb: (await measure(() => session.run(feed), 1)).peakMb } : { ms: NaN, peakMb: NaN };
  await session?.release();
  let nat = { ms: NaN, peakMb: NaN },
    live = NaN,
    ops = "";
  if (m) {
    nat = { ms: median(nMs), peakMb: (await measure(() => m.run(x), 1)).peakMb };
    live = m.lastRun!.peakBytes / 2 ** 20;
    const by = Object.entries(m.lastRun!.opMs).sort((p, q) => q[1] - p[1]);
    const total = by.reduce((s, [, v]) => s + v, 0);
    ops = by
      .slice(0, 4)
      .map(([k, v]) => `${k} ${fmt((100 * v) / total, 0)} %`)
      .join(", ");
    m.dispose();
  }
  return [
    `| ${label} | ${fmt(nat.ms)} | ${fmt(live, 0)} | ${fmt(nat.peakMb, 0)} | ${fmt(o.ms)} | ${fmt(o.peakMb, 0)} | ${fmt(o.ms / nat.ms, 2)} | ${torch ? `${fmt(torch.eager)} / ${fmt(torch.onednn)}` : "—"} | ${torch ? `${fmt(torch.eager / nat.ms, 2)} / ${fmt(torch.onednn / nat.ms, 2)}` : "—"} | ${torch && Number.isFinite(torch.diff) ? torch.diff.toExponential(1) : "—"} | ${ops} |`,
  ];
}

export async function benchNetworks(): Promise<string[]> {
  const rows: string[] = [];
  for (const [name, a] of [
    ["PlainConvUNet", PLAIN],
    ["ResEnc-M", RESENC_M],
  ] as const) {
    const bytes = networkBytes(a);
    for (const shape of [
      [1, 1, 16, 64, 64],
      [1, 1, 32, 128, 128],
    ])
      rows.push(
        ...(await compare(`${name} (32…320), ${shape.slice(2).join("×")}`, bytes, shape, shape[2] === 16 ? 9 : 3, { onnx: bytes })),
      );
  }
  const seg = readFileSync(new URL("./models/segresnet_default.onnx", import.meta.url));
  for (const shape of [
    [1, 1, 16, 64, 64],
    [1, 1, 32, 128, 128],
  ])
    rows.push(
      ...(await compare(`MONAI SegResNet (default, 8…64), ${shape.slice(2).join("×")}`, seg, shape, shape[2] === 16 ? 9 : 3, {
        monai: "segresnet",
      })),
    );
  // UNETR at its real widths (121 M parameters, a 354 MB export): made by bench/models/make_unetr.py
  // (PyTorch and MONAI 1.4.0 needed), never committed; its positional embedding fixes the input shape
  const unetr = new URL("./models/unetr_real.onnx", import.meta.url);
  if (existsSync(unetr))
    rows.push(
      ...(await compare("MONAI UNETR (real: hidden 768, 12 layers, feature 16), 32×128×128", readFileSync(unetr), [1, 1, 32, 128, 128], 3, {
        monai: "unetr",
      })),
    );
  else
    rows.push(
      "| MONAI UNETR (real widths), 32×128×128 | not run: make bench/models/unetr_real.onnx first (PYTHONPATH=<MONAI 1.4.0> /usr/bin/python3 bench/models/make_unetr.py) | | | | | | | | | |",
    );
  // SwinUNETR at the BTCV bundle's widths (62 M parameters): made by bench/models/make_swinunetr.py,
  // never committed; bhsd runs it from the state_dict (loadMonai), onnxruntime from the export
  const swin = new URL("./models/swinunetr_btcv.json", import.meta.url);
  if (existsSync(swin)) {
    const { network_def: network, size } = JSON.parse(readFileSync(swin, "utf8")) as {
      network_def: Record<string, unknown>;
      size: number[];
    };
    const pt = fileURLToPath(new URL("./models/swinunetr_btcv.pt", import.meta.url));
    rows.push(
      ...(await compare(
        `MONAI SwinUNETR (BTCV: feature 48, loadMonai from the state_dict), ${size.join("×")}`,
        readFileSync(new URL("./models/swinunetr_btcv.onnx", import.meta.url)),
        [1, 1, ...size],
        3,
        { monai: "swinunetr" },
        () => loadMonai(pt, { network, config: { patchSize: size as [number, number, number] } }),
      )),
    );
    // the same network as users of ONNX have it: torch.onnx's export (ScatterND masks, LayerNorm in
    // eight steps, shape glue), run by both engines
    rows.push(
      ...(await compare(
        `MONAI SwinUNETR (BTCV), its torch.onnx export run by both, ${size.join("×")}`,
        readFileSync(new URL("./models/swinunetr_btcv.onnx", import.meta.url)),
        [1, 1, ...size],
        3,
      )),
    );
  } else
    rows.push(
      "| MONAI SwinUNETR (BTCV widths), 64×64×64 | not run: make bench/models/swinunetr_btcv.* first (PYTHONPATH=<MONAI 1.4.0>:<einops> /usr/bin/python3 bench/models/make_swinunetr.py) | | | | | | | | | |",
    );
  // MONAI 1.5's MedNeXt-S (create_mednext "S", kernel 3: 5.6 M parameters): made by
  // bench/models/make_mednext.py, never committed; bhsd runs it from the state_dict (loadMonai),
  // onnxruntime from the export; then both run the export
  const mednext = new URL("./models/mednext_s.json", import.meta.url);
  if (existsSync(mednext)) {
    const { network_def: network, size } = JSON.parse(readFileSync(mednext, "utf8")) as {
      network_def: Record<string, unknown>;
      size: number[];
    };
    const pt = fileURLToPath(new URL("./models/mednext_s.pt", import.meta.url));
    const onnx = readFileSync(new URL("./models/mednext_s.onnx", import.meta.url));
    rows.push(
      ...(await compare(
        `MONAI MedNeXt-S (kernel 3, loadMonai from the state_dict), ${size.join("×")}`,
        onnx,
        [1, 1, ...size],
        3,
        { monai: "mednext" },
        () => loadMonai(pt, { network, config: { patchSize: size as [number, number, number] } }),
      )),
      ...(await compare(`MONAI MedNeXt-S, its torch.onnx export run by both, ${size.join("×")}`, onnx, [1, 1, ...size], 3)),
    );
  } else
    rows.push(
      "| MONAI MedNeXt-S, 32×128×128 | not run: make bench/models/mednext_s.* first (PYTHONPATH=<MONAI 1.5.0> /usr/bin/python3 bench/models/make_mednext.py) | | | | | | | | | |",
    );
  // STU-Net-B (STUNetTrainer_base under nnUNet-2.2: 58 M parameters): made by
  // bench/models/make_stunet.py, never committed; bhsd runs its nnU-Net folder (loadNnunet, from the
  // checkpoint), onnxruntime its torch.onnx export; then both run the export
  const stunet = new URL("./models/stunet_b.json", import.meta.url);
  if (existsSync(stunet)) {
    const { folder, size } = JSON.parse(readFileSync(stunet, "utf8")) as { folder: string; size: number[] };
    const onnx = readFileSync(new URL("./models/stunet_b.onnx", import.meta.url));
    rows.push(
      ...(await compare(
        `STU-Net-B (STUNetTrainer_base; loadNnunet from the checkpoint), ${size.join("×")}`,
        onnx,
        [1, 1, ...size],
        3,
        { onnx },
        () => loadNnunet(fileURLToPath(new URL(`./models/${folder}`, import.meta.url))),
      )),
      ...(await compare(`STU-Net-B, its torch.onnx export run by both, ${size.join("×")}`, onnx, [1, 1, ...size], 3)),
    );
  } else
    rows.push(
      "| STU-Net-B, 32×128×128 | not run: make bench/models/stunet_b.* first (/usr/bin/python3 bench/models/make_stunet.py <STU-Net checkout>) | | | | | | | | | |",
    );
  // U-Mamba (UMambaBot and UMambaEnc as their nnU-Net v2 trainers build them: 42 M parameters): made by
  // bench/models/make_umamba.py, never committed; bhsd runs its nnU-Net folders (loadNnunet, from the
  // checkpoint). No onnxruntime column: torch.onnx cannot export mamba_ssm's scan. PyTorch runs the
  // Bot (mamba_ssm's CPU path, selective_scan_ref); not the Enc, whose reference scan would hold
  // [64, 524288, 16] floats twice (4 GB) and step through 524288 tokens in Python
  const umamba = new URL("./models/umamba.json", import.meta.url);
  if (existsSync(umamba)) {
    const { folders, size } = JSON.parse(readFileSync(umamba, "utf8")) as { folders: Record<"bot" | "enc", string>; size: number[] };
    const own = (v: "bot" | "enc") => () => loadNnunet(fileURLToPath(new URL(`./models/${folders[v]}`, import.meta.url)));
    rows.push(
      ...(await compare(
        `U-Mamba Bot (nnUNetTrainerUMambaBot; loadNnunet from the checkpoint), ${size.join("×")}`,
        null,
        [1, 1, ...size],
        3,
        { umamba: "bot" },
        own("bot"),
      )),
      ...(await compare(
        `U-Mamba Enc (nnUNetTrainerUMambaEnc; loadNnunet from the checkpoint), ${size.join("×")}`,
        null,
        [1, 1, ...size],
        3,
        undefined,
        own("enc"),
      )),
    );
  } else
    rows.push(
      "| U-Mamba Bot and Enc, 32×128×128 | not run: make bench/models/umamba* first (PYTHONPATH=<einops> /usr/bin/python3 bench/models/make_umamba.py <U-Mamba> <mamba> <dynamic-network-architectures>) | | | | | | | | | |",
    );
  // nnU-Net's Primus-S (nnUNet_Primus_S_Trainer: width 396, 12 EVA blocks, 24 M parameters): made by
  // bench/models/make_primus.py, never committed; bhsd runs its nnU-Net folder (loadNnunet, from the
  // checkpoint), onnxruntime its torch.onnx export; then both run the export
  const primus = new URL("./models/primus_s.json", import.meta.url);
  if (existsSync(primus)) {
    const { folder, size } = JSON.parse(readFileSync(primus, "utf8")) as { folder: string; size: number[] };
    const onnx = readFileSync(new URL("./models/primus_s.onnx", import.meta.url));
    rows.push(
      ...(await compare(
        `nnU-Net Primus-S (width 396, 12 blocks; loadNnunet from the checkpoint), ${size.join("×")}`,
        onnx,
        [1, 1, ...size],
        3,
        { primus: true },
        () => loadNnunet(fileURLToPath(new URL(`./models/${folder}`, import.meta.url))),
      )),
      ...(await compare(`nnU-Net Primus-S, its torch.onnx export run by both, ${size.join("×")}`, onnx, [1, 1, ...size], 3)),
    );
  } else
    rows.push(
      "| nnU-Net Primus-S, 32×128×128 | not run: make bench/models/primus_s.* first (PYTHONPATH=<dynamic-network-architectures>:<timm, einops> /usr/bin/python3 bench/models/make_primus.py) | | | | | | | | | |",
    );
  // the same network on a BHSD-sized patch (32×256×256: 4096 tokens, attention two thirds of the
  // forward): `make_primus.py 32 256 256 --name primus_s_4k`; bhsd's checkpoint beside onnxruntime's export
  const primus4k = new URL("./models/primus_s_4k.json", import.meta.url);
  if (existsSync(primus4k)) {
    const { folder, size } = JSON.parse(readFileSync(primus4k, "utf8")) as { folder: string; size: number[] };
    const onnx = readFileSync(new URL("./models/primus_s_4k.onnx", import.meta.url));
    rows.push(
      ...(await compare(
        `nnU-Net Primus-S, 4096 tokens (loadNnunet from the checkpoint), ${size.join("×")}`,
        onnx,
        [1, 1, ...size],
        1,
        undefined,
        () => loadNnunet(fileURLToPath(new URL(`./models/${folder}`, import.meta.url))),
      )),
    );
  } else
    rows.push(
      "| nnU-Net Primus-S, 32×256×256 (4096 tokens) | not run: make bench/models/primus_s_4k.* first (… make_primus.py 32 256 256 --name primus_s_4k) | | | | | | | | | |",
    );
  // nnU-Net's PrimusV2-S (nnUNet_PrimusV2S_Trainer: Primus-S after a patch embedding of residual blocks, 32 to 128
  // channels at full to 1/4 resolution): made by `bench/models/make_primus.py --v2`, never committed
  const primusV2 = new URL("./models/primus_v2s.json", import.meta.url);
  if (existsSync(primusV2)) {
    const { folder, size } = JSON.parse(readFileSync(primusV2, "utf8")) as { folder: string; size: number[] };
    const onnx = readFileSync(new URL("./models/primus_v2s.onnx", import.meta.url));
    rows.push(
      ...(await compare(
        `nnU-Net PrimusV2-S (its residual-block patch embedding; loadNnunet from the checkpoint), ${size.join("×")}`,
        onnx,
        [1, 1, ...size],
        3,
        { primus: "v2" },
        () => loadNnunet(fileURLToPath(new URL(`./models/${folder}`, import.meta.url))),
      )),
      ...(await compare(`nnU-Net PrimusV2-S, its torch.onnx export run by both, ${size.join("×")}`, onnx, [1, 1, ...size], 3)),
    );
  } else
    rows.push(
      "| nnU-Net PrimusV2-S, 32×128×128 | not run: make bench/models/primus_v2s.* first (PYTHONPATH=<dynamic-network-architectures>:<timm, einops> /usr/bin/python3 bench/models/make_primus.py --v2) | | | | | | | | | |",
    );
  return [...header(), ...rows];
}

/** The table's header lines (what was run, how, and the columns). */
function header(): string[] {
  return [
    "real networks at real widths, random weights (median of three rounds, each the median of 9 runs at 16×64×64 or 3 at the larger inputs, the engines in turn; native backend; onnxruntime-node CPU, 2 threads, same bytes and input)",
    `PyTorch: ${(pythonsFor().torch ?? pythonsFor().monai) ? `bench/torch_networks.py in ${pythonsFor().torch ?? pythonsFor().monai}, fp32, 2 threads, one process between the rounds, median of 5 runs (2 at the larger inputs); eager as PyTorch runs it / every forward convolution through oneDNN; the larger of its two outputs' largest differences from bhsd's, of the output's scale (MONAI's networks: ${pythonsFor().monai ? "MONAI from PYTHONPATH" : "no MONAI importable: set PYTHONPATH to MONAI 1.4.0"})` : "no python3 with torch, onnx and numpy: no PyTorch column"}`,
    "| network, input | bhsd ms | live set MB | RSS peak MB | onnxruntime ms | RSS peak MB | × onnxruntime | PyTorch ms (eager / oneDNN) | × PyTorch | PyTorch's output, max difference | bhsd's time by op (top 4) |",
    "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
  ];
}

/**
 * `npm run bench slices`: nnU-Net's 2d configuration as its planner makes it for 512 × 512 CT slices
 * (PlainConvUNet, 8 stages of 32…512 features), one slice a forward, as segment() runs a 2-D model.
 */
export async function benchSlices(): Promise<string[]> {
  const bytes = networkBytes(PLAIN_2D);
  return [
    ...header(),
    ...(await compare("nnU-Net 2d PlainConvUNet (32…512, 8 stages), a 512×512 slice", bytes, [1, 1, 512, 512], 3, { onnx: bytes })),
  ];
}
