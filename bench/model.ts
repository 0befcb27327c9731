/**
 * Whole models: the plainunet fixture forward, and one window of an nnU-Net 3d_fullres-shaped
 * U-Net, each beside onnxruntime-node (2 threads) on the same file and input in the same run; and
 * (section "segment", minutes) a BHSD-sized case through segment().
 */
import ort from "onnxruntime-node";
import { readFileSync } from "node:fs";

import { backendInfo, loadModel, segment, setBackend, volumeFromArray } from "../dist/index.js";
import { sharedFixture } from "../test/paths.js";
import { fmt, measure, rng, settle } from "./lib.js";
import { buildUNet, NNUNET_FULLRES } from "../dist/train/unet.js";
import { networkBytes, RESENC_M } from "./networks.js";

async function compare(label: string, bytes: Uint8Array, shape: number[], reps: number): Promise<string> {
  const r = rng(7);
  const x = { data: new Float32Array(shape.reduce((a, b) => a * b, 1)).map(() => r() * 2 - 1), shape };
  const session = await ort.InferenceSession.create(bytes, { intraOpNumThreads: 2, interOpNumThreads: 1 });
  const feed = { [session.inputNames[0]!]: new ort.Tensor("float32", x.data, x.shape) };
  const o = await measure(() => session.run(feed), reps);
  await session.release();
  let nat = { ms: NaN, peakMb: NaN },
    peak = NaN;
  if (backendInfo().available.native) {
    setBackend("native");
    const m = await loadModel(bytes);
    await settle(); // (onnxruntime's threads spin on after its runs)
    nat = await measure(() => m.run(x), reps);
    peak = m.lastRun!.peakBytes / 2 ** 20;
  }
  return `| ${label} | ${fmt(nat.ms)} | ${fmt(peak, 0)} | ${fmt(nat.peakMb, 0)} | ${fmt(o.ms)} | ${fmt(o.peakMb, 0)} | ${fmt(o.ms / nat.ms, 2)} |`;
}

/**
 * setCpuPrecision's bf16 (loadModel's precision) beside fp32 on one window of each nnU-Net-shaped
 * network, where the processor has AVX512_BF16; each model measured alone, 11 s apart, so that the
 * other's transformed weights have aged out of the Winograd weight cache (both do not fit it).
 */
async function comparePrecision(): Promise<string[]> {
  if (!backendInfo().available.native) return [];
  setBackend("native");
  if (!backendInfo().details.native?.precisions?.includes("bf16")) return ["(bf16: this processor has no AVX512_BF16)"];
  const r = rng(7);
  const shape = [1, 1, 16, 256, 256];
  const x = { data: new Float32Array(shape.reduce((a, b) => a * b, 1)).map(() => r() * 2 - 1), shape };
  const rows = [
    "one 16×256×256 window in fp32 and in bf16 (native; median of 4 after 2 planning runs)",
    "| network | fp32 ms | bf16 ms | bf16 ÷ fp32 time | bf16 max difference ÷ scale of fp32's output |",
    "| --- | --- | --- | --- | --- |",
  ];
  for (const [name, bytes] of [
    ["nnU-Net PlainConvUNet (train/unet.ts)", buildUNet(NNUNET_FULLRES)],
    ["nnU-Net ResEnc-M (bench/networks.ts)", networkBytes(RESENC_M)],
  ] as const) {
    const ms: Record<string, number> = {};
    const outs: Record<string, Float32Array> = {};
    for (const precision of ["fp32", "bf16"] as const) {
      await new Promise((done) => setTimeout(done, 11_000));
      const m = await loadModel(bytes, { patchSize: [16, 256, 256], precision });
      for (let i = 0; i < 2; i++) await m.run(x);
      ms[precision] = (await measure(() => m.run(x), 4)).ms;
      outs[precision] = (await m.run(x)).data.slice();
      m.dispose();
    }
    let diff = 0,
      scale = 0;
    for (let i = 0; i < outs.fp32!.length; i++) {
      diff = Math.max(diff, Math.abs(outs.fp32![i]! - outs.bf16![i]!));
      scale = Math.max(scale, Math.abs(outs.fp32![i]!));
    }
    rows.push(`| ${name} | ${fmt(ms.fp32!)} | ${fmt(ms.bf16!)} | ${fmt(ms.bf16! / ms.fp32!, 2)} | ${(diff / scale).toExponential(1)} |`);
  }
  return rows;
}

export async function benchModel(): Promise<string[]> {
  return [
    "whole-model forward (median; native backend; onnxruntime-node CPU, 2 threads, same file and input)",
    "| model and input | bhsd ms | live set MB | RSS peak MB | onnxruntime ms | RSS peak MB | × onnxruntime |",
    "| --- | --- | --- | --- | --- | --- | --- |",
    await compare(
      "plainunet fixture, 1×1×16×64×64",
      readFileSync(sharedFixture("onnx-plainunet", "plainunet.onnx")),
      [1, 1, 16, 64, 64],
      9,
    ),
    await compare("nnU-Net 3d_fullres shape (32…320), one 16×256×256 window", buildUNet(NNUNET_FULLRES), [1, 1, 16, 256, 256], 3),
    "",
    ...(await comparePrecision()),
  ];
}

export async function benchSegment(): Promise<string[]> {
  const [nx, ny, nz] = [512, 512, 40];
  const r = rng(9);
  const ct = volumeFromArray(
    new Float32Array(nx * ny * nz).map(() => r() * 200 - 50),
    [nz, ny, nx],
    [5, 0.49, 0.49],
  );
  setBackend(backendInfo().available.native ? "native" : "ts");
  const rows: string[] = [];
  const bf16 = backendInfo().details.native?.precisions?.includes("bf16") ?? false;
  for (const [name, bytes, precision] of [
    ["nnU-Net 3d_fullres-shaped PlainConvUNet (train/unet.ts)", buildUNet(NNUNET_FULLRES), "fp32"],
    ["nnU-Net ResEnc-M (bench/networks.ts)", networkBytes(RESENC_M), "fp32"],
    ...(bf16
      ? ([
          ["nnU-Net 3d_fullres-shaped PlainConvUNet, precision bf16", buildUNet(NNUNET_FULLRES), "bf16"],
          ["nnU-Net ResEnc-M, precision bf16", networkBytes(RESENC_M), "bf16"],
        ] as const)
      : []),
  ] as const) {
    if (precision === "bf16") await new Promise((done) => setTimeout(done, 11_000)); // the fp32 transforms age out of the cache
    const model = await loadModel(bytes, { patchSize: [16, 256, 256], precision });
    const t0 = performance.now();
    const { report } = await segment(ct, model);
    const s = (performance.now() - t0) / 1000;
    model.dispose();
    if (!rows.length)
      rows.push(
        `segment(), ${nx}×${ny}×${nz} CT at 0.49×0.49×5 mm, random weights, patch 16×256×256, step 0.5, no mirroring, ${report.backend}`,
        `| model | total s | windows | ${Object.keys(report.timings).join(" s | ")} s | forward live set MB | segment buffers MB |`,
        `| --- | --- | --- | ${Object.keys(report.timings)
          .map(() => "---")
          .join(" | ")} | --- | --- |`,
      );
    rows.push(
      `| ${name} | ${fmt(s)} | ${report.windows} | ${Object.values(report.timings)
        .map((v) => fmt(v / 1000, 2))
        .join(" | ")} | ${fmt(report.peakForwardBytes / 2 ** 20, 0)} | ${fmt(report.peakSegmentBytes / 2 ** 20, 0)} |`,
    );
  }
  return rows;
}
