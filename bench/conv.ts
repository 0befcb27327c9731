/**
 * conv3d (3×3×3, pad 1; stride 1, and 2 where a U-Net stage opens) on the layer shapes of a 3-D U-Net, in GFLOP/s, beside onnxruntime-node
 * (CPU provider, 2 intra-op threads) running the same weights on the same input in the same run,
 * and beside this machine's FMA peak measured here.
 */
import ort from "onnxruntime-node";
import { spawnSync } from "node:child_process";
import { allocTensor, backendInfo, conv3d, setBackend } from "../dist/index.js";
import { getBackend } from "../dist/backends/index.js";
import { convModelBytes, fmaPeak, fmt, measure, pythonWith, rng, runPython, settle } from "./lib.js";

type Layer = [number, number, number, number, number] | [number, number, number, number, number, [number, number, number]];
/** cin, cout, input d×h×w and, for the layers that open an encoder stage, the stride (z, y, x). */
const LAYERS: Layer[] = [
  [1, 32, 24, 256, 256],
  [32, 32, 32, 64, 64],
  [64, 64, 16, 64, 64],
  [128, 128, 16, 32, 32],
  [256, 256, 8, 16, 16],
  // the nnU-Net 3d_fullres window's extents (16×256×256 patch): stages 2–4
  [64, 64, 16, 128, 128],
  [128, 128, 16, 64, 64],
  [256, 256, 8, 32, 32],
  // the strided convolutions that open stages 1–5 of PlainConvUNet and ResEnc-M in that window
  [32, 64, 16, 256, 256, [1, 2, 2]],
  [64, 128, 16, 128, 128, [1, 2, 2]],
  [128, 256, 16, 64, 64, [2, 2, 2]],
  [256, 320, 8, 32, 32, [2, 2, 2]],
  [320, 320, 4, 16, 16, [1, 2, 2]],
];

/**
 * PyTorch's time for the same layer (torch.nn.functional.conv3d, fp32, 2 threads: oneDNN where
 * the build has it), median of 5 after 2 warm-ups, in a python3 that has torch; NaN without one.
 */
const torchPy = pythonWith("torch");
function torchMs([ci, co, d, h, w]: number[], [sz, sy, sx]: number[]): number {
  if (!torchPy) return NaN;
  const code = `
import json, sys, time, torch
torch.set_num_threads(2)
ci, co, d, h, w, sz, sy, sx = map(int, sys.argv[1:9])
g = torch.Generator().manual_seed(1)
x = torch.rand(1, ci, d, h, w, generator=g) * 2 - 1
wt = (torch.rand(co, ci, 3, 3, 3, generator=g) * 2 - 1) * 0.1
b = torch.rand(co, generator=g)
ts = []
with torch.no_grad():
    for k in range(7):
        t0 = time.perf_counter(); torch.nn.functional.conv3d(x, wt, b, stride=(sz, sy, sx), padding=1); ts.append(time.perf_counter() - t0)
ts = sorted(ts[2:])
print(json.dumps({"ms": ts[2] * 1000, "mkldnn": torch.backends.mkldnn.is_available()}))`;
  try {
    return runPython<{ ms: number }>(torchPy, code, [ci, co, d, h, w, sz, sy, sx].map(String)).ms;
  } catch {
    return NaN;
  }
}

function random(n: number, seed: number, scale = 1): Float32Array {
  const r = rng(seed);
  return new Float32Array(n).map(() => (r() * 2 - 1) * scale);
}

/**
 * The TypeScript backend's GFLOP/s on one layer (same shapes, random data), in a child process
 * running the compiled package without the tsx loader: under tsx the same compiled loop ran 20 %
 * slower (3.0 vs 3.7 GFLOP/s on 32→32), which users never see.
 */
function tsBackendGflops([ci, co, d, h, w]: number[], gflop: number): number {
  const script = `
    import { conv3d, setBackend } from ${JSON.stringify(new URL("../dist/index.js", import.meta.url).href)};
    setBackend("ts");
    const r = (n, s) => Float32Array.from({ length: n }, (_, i) => Math.sin(i * 12.9898 + s) * s % 1);
    const x = { data: r(${ci * d * h * w}, 1.5), shape: [1, ${ci}, ${d}, ${h}, ${w}] };
    const wt = { data: r(${co * ci * 27}, 0.1), shape: [${co}, ${ci}, 3, 3, 3] };
    const b = { data: r(${co}, 0.5), shape: [${co}] };
    const out = { data: new Float32Array(${co * d * h * w}), shape: [1, ${co}, ${d}, ${h}, ${w}] };
    await conv3d(x, wt, b, { padding: 1, out });
    const ts = [];
    for (let k = 0; k < 3; k++) { const t0 = performance.now(); await conv3d(x, wt, b, { padding: 1, out }); ts.push(performance.now() - t0); }
    console.log(ts.sort((p, q) => p - q)[1]);`;
  const run = spawnSync(process.execPath, ["--input-type=module", "-e", script], { encoding: "utf8" });
  const ms = Number(run.stdout.trim());
  return run.status === 0 && ms > 0 ? gflop / (ms / 1000) : NaN;
}

export async function benchConv(): Promise<string[]> {
  const info = backendInfo();
  const peak = await fmaPeak();
  const lines = [
    `conv3d 3×3×3 pad 1, batch 1, output buffer reused, weights packed once (median of 5; onnxruntime-node 2 threads; FMA peak of the native pool's ${info.details.native?.threads ?? "?"} threads measured now: ${fmt(peak, 0)} GFLOP/s)`,
    "best case: input, weights and the reused output in engine memory (allocTensor); as users call it: the caller's own arrays (copied in), a fresh output each call",
    `PyTorch: torch.nn.functional.conv3d in ${torchPy ?? "(no python3 with torch: no PyTorch column)"}, fp32, 2 threads${process.env.ONEDNN_MAX_CPU_ISA ? `, oneDNN held to ONEDNN_MAX_CPU_ISA=${process.env.ONEDNN_MAX_CPU_ISA}` : ""}`,
    "| layer | bhsd native ms | GFLOP/s | % of peak | as users call it, ms | peak MB | onnxruntime ms | GFLOP/s | × onnxruntime | PyTorch ms | × PyTorch | bhsd ts GFLOP/s |",
    "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
  ];
  for (const [i, [ci, co, d, h, w, st]] of LAYERS.entries()) {
    const stride = st ?? [1, 1, 1];
    const [od, oh, ow] = [d, h, w].map((n, k) => Math.floor((n + 2 - 3) / stride[k]!) + 1) as [number, number, number];
    const x = { data: random(ci * d * h * w, 100 + i), shape: [1, ci, d, h, w] };
    const wt = { data: random(co * ci * 27, 200 + i, 0.1), shape: [co, ci, 3, 3, 3] };
    const b = { data: random(co, 300 + i), shape: [co] };
    const gflop = (2 * co * ci * 27 * od * oh * ow) / 1e9;
    const bytes = convModelBytes("Conv", x.shape, wt, b, { pads: [1, 1, 1, 1, 1, 1], kernel_shape: [3, 3, 3], strides: stride });
    const session = await ort.InferenceSession.create(bytes, { intraOpNumThreads: 2, interOpNumThreads: 1 });
    const feed = { x: new ort.Tensor("float32", x.data, x.shape) };
    await settle();
    const tOrt = await measure(() => session.run(feed), 5);
    await session.release();
    let nat = { ms: NaN, peakMb: NaN },
      user = { ms: NaN, peakMb: NaN };
    if (info.available.native) {
      setBackend("native");
      // Best case, like onnxruntime's arena and session: the output reused (options.out), input
      // and weights in engine memory (no copy at the call), the weights packed once as a loaded
      // model's are (a bare conv3d call packs them each time).
      const xe = allocTensor(x.shape),
        we = allocTensor(wt.shape),
        out = allocTensor([1, co, od, oh, ow]);
      xe.data.set(x.data);
      we.data.set(wt.data);
      (getBackend("native") as { constants?(a: ReadonlySet<Float32Array>): void }).constants?.(new Set([we.data]));
      await settle(); // (onnxruntime's threads spin on after its runs)
      nat = await measure(() => conv3d(xe, we, b, { padding: 1, stride, out }), 5);
      // as a user calls it: plain arrays of their own, a fresh result each time
      user = await measure(() => conv3d(x, wt, b, { padding: 1, stride }), 5);
    }
    const tsG = i <= 1 ? tsBackendGflops([ci, co, d, h, w], gflop) : NaN;
    const tTorch = torchMs([ci, co, d, h, w], stride);
    const g = gflop / (nat.ms / 1000),
      go = gflop / (tOrt.ms / 1000);
    lines.push(
      `| ${ci}→${co} at ${d}×${h}×${w}${st ? `, stride ${st.join("×")}` : ""} | ${fmt(nat.ms)} | ${fmt(g, 0)} | ${fmt((100 * g) / peak, 0)} | ${fmt(user.ms)} | ${fmt(nat.peakMb, 0)} | ${fmt(tOrt.ms)} | ${fmt(go, 0)} | ${fmt(g / go, 2)} | ${fmt(tTorch)} | ${fmt(tTorch / nat.ms, 2)} | ${fmt(tsG, 2)} |`,
    );
  }
  return lines;
}
