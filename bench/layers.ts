/**
 * Every distinct convolution of nnU-Net's PlainConvUNet and ResEnc-M at their real widths, in the
 * 16×256×256 window segment() runs them on (issue 23: "each layer shape of PlainConvUNet/ResEnc-M at
 * real widths"), found by walking the networks' own graphs (bench/networks.ts, the engine's nnU-Net
 * builder) rather than listed by hand: the 1×3×3 and 3×3×3 convolutions of each stage, the strided
 * ones that open them, ResEnc's 1×1×1 projections, the decoders' convolutions after each Concat,
 * the transposed convolutions and the 1×1×1 segmentation head. Each alone, as one ONNX node: bhsd
 * native best case (engine tensors, the output reused, weights packed once as a loaded model's are)
 * beside onnxruntime-node (2 threads, same bytes) and PyTorch's torch.nn.functional.conv3d /
 * conv_transpose3d (eager, 2 threads) in a python3 that has torch, and the forward ones through
 * oneDNN as well (torch.mkldnn_convolution), which PyTorch 1.13 does not choose for small layers. Medians of 5 to 50 runs (about
 * 150 ms of each engine's runs) after a warm-up.
 * `npm run bench layers` (minutes; not in the default set).
 */
import ort from "onnxruntime-node";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { allocTensor, backendInfo, conv3d, convTranspose3d, setBackend } from "../dist/index.js";
import { getBackend } from "../dist/backends/index.js";
import { parseModel, type Attr, type GraphNode } from "../dist/model/graph.js";
import { timeMedian } from "../dist/timing.js";
import { convModelBytes, fmaPeak, fmt, pythonWith, rng, runPython, settle } from "./lib.js";
import { networkBytes, PLAIN, RESENC_M } from "./networks.js";

type Triple = [number, number, number];
interface Layer {
  op: "Conv" | "ConvTranspose";
  ci: number;
  co: number;
  k: Triple;
  stride: Triple;
  pads: number[]; // 6: begins then ends
  input: Triple; // d, h, w
  output: Triple;
  uses: Record<string, number>; // network → how many of its nodes
}

const ints = (a: Attr | undefined, d: number[]): number[] => (Array.isArray(a) ? a.map(Number) : d);

/** Each Conv/ConvTranspose of a network's graph with its input extents for a 1×1×D×H×W input. */
async function layersOf(bytes: Uint8Array, input: Triple): Promise<Omit<Layer, "uses">[]> {
  const g = await parseModel(bytes);
  const shape = new Map<string, number[]>([[g.inputs[0]!.name, [1, 1, ...input]]]);
  const dims = (name: string) => g.initializers.get(name)!.dims.map(Number);
  const out: Omit<Layer, "uses">[] = [];
  for (const n of g.nodes as GraphNode[]) {
    const x = shape.get(n.inputs[0]!);
    if (!x) throw new Error(`${n.name}: no shape for ${n.inputs[0]}`);
    let y: number[];
    if (n.opType === "Conv" || n.opType === "ConvTranspose") {
      const w = dims(n.inputs[1]!);
      const k = w.slice(2) as Triple;
      const stride = ints(n.attrs.strides, [1, 1, 1]) as Triple;
      const pads = ints(n.attrs.pads, [0, 0, 0, 0, 0, 0]);
      const ext = x.slice(2);
      let co: number, o: Triple;
      if (n.opType === "Conv") {
        co = w[0]!;
        o = ext.map((e, i) => Math.floor((e + pads[i]! + pads[i + 3]! - k[i]!) / stride[i]!) + 1) as Triple;
      } else {
        co = w[1]!;
        const op = ints(n.attrs.output_padding, [0, 0, 0]);
        o = ext.map((e, i) => (e - 1) * stride[i]! - pads[i]! - pads[i + 3]! + k[i]! + op[i]!) as Triple;
      }
      out.push({ op: n.opType, ci: x[1]!, co, k, stride, pads, input: ext as Triple, output: o });
      y = [1, co, ...o];
    } else if (n.opType === "Concat") {
      const parts = n.inputs.map((i) => shape.get(i)!);
      y = [1, parts.reduce((s, p) => s + p[1]!, 0), ...x.slice(2)];
    } else if (n.opType === "AveragePool") {
      const k = ints(n.attrs.kernel_shape, []);
      const s = ints(n.attrs.strides, k);
      const p = ints(n.attrs.pads, [0, 0, 0, 0, 0, 0]);
      y = [1, x[1]!, ...x.slice(2).map((e, i) => Math.floor((e + p[i]! + p[i + 3]! - k[i]!) / s[i]!) + 1)];
    } else if (["InstanceNormalization", "LeakyRelu", "Relu", "Add"].includes(n.opType)) y = x;
    else throw new Error(`${n.name}: ${n.opType} is not among these networks' ops`);
    shape.set(n.outputs[0]!, y);
  }
  return out;
}

const key = (l: Omit<Layer, "uses">) => JSON.stringify([l.op, l.ci, l.co, l.k, l.stride, l.pads, l.input]);
const flops = (l: Layer) => 2 * l.ci * l.co * l.k[0] * l.k[1] * l.k[2] * (l.op === "Conv" ? l.output : l.input).reduce((a, b) => a * b, 1);

const TORCH = `
import json, sys, time, torch
import torch.nn.functional as F
torch.set_num_threads(2)
out = []
for l in json.load(open(sys.argv[1])):
    g = torch.Generator().manual_seed(1)
    x = torch.rand(1, l["ci"], *l["input"], generator=g) * 2 - 1
    conv = l["op"] == "Conv"
    wt = (torch.rand(*((l["co"], l["ci"]) if conv else (l["ci"], l["co"])), *l["k"], generator=g) * 2 - 1) * 0.1
    b = torch.rand(l["co"], generator=g)
    p = l["pads"][:3]
    def eager():
        if conv: F.conv3d(x, wt, b, stride=l["stride"], padding=p)
        else: F.conv_transpose3d(x, wt, b, stride=l["stride"], padding=p)
    def onednn():
        torch.mkldnn_convolution(x, wt, b, p, l["stride"], [1, 1, 1], 1)
    def median_ms(run):
        t0 = time.perf_counter(); run(); once = time.perf_counter() - t0
        ts = []
        for _ in range(max(5, min(50, int(0.15 / max(once, 1e-6))))):
            t0 = time.perf_counter(); run(); ts.append(time.perf_counter() - t0)
        ts.sort()
        return ts[len(ts) // 2] * 1000
    with torch.no_grad():
        out.append([median_ms(eager), median_ms(onednn) if conv and torch.backends.mkldnn.is_available() else None])
print(json.dumps(out))`;

/**
 * The median of enough runs to fill about 150 ms (5 to 50; one warm-up first): a layer of a
 * fraction of a millisecond timed 5 times right after the pause before it reads the pool's and the
 * caches' wake-up more than the layer (256→320 1×1×1 at 4×16×16: 0.95 ms in 5 runs, 0.54 in 200).
 */
async function timeLayer(fn: () => Promise<unknown>): Promise<number> {
  const t0 = performance.now();
  await fn();
  const once = performance.now() - t0;
  return timeMedian(fn, Math.max(5, Math.min(50, Math.floor(150 / Math.max(once, 1e-3)))));
}

function random(n: number, seed: number, scale = 1): Float32Array {
  const r = rng(seed);
  return new Float32Array(n).map(() => (r() * 2 - 1) * scale);
}

export async function benchLayers(): Promise<string[]> {
  const window: Triple = [16, 256, 256];
  const byKey = new Map<string, Layer>();
  for (const [name, a] of [
    ["PlainConvUNet", PLAIN],
    ["ResEnc-M", RESENC_M],
  ] as const)
    for (const l of await layersOf(networkBytes(a), window)) {
      const had = byKey.get(key(l)) ?? { ...l, uses: {} };
      had.uses[name] = (had.uses[name] ?? 0) + 1;
      byKey.set(key(l), had);
    }
  const layers = [...byKey.values()];
  const info = backendInfo();
  const peak = await fmaPeak();
  // PyTorch: one process for all layers
  const py = pythonWith("torch");
  let torch: [number, number | null][] = [];
  if (py) {
    const dir = mkdtempSync(join(tmpdir(), "bhsd-layers-"));
    try {
      writeFileSync(join(dir, "layers.json"), JSON.stringify(layers));
      torch = runPython<[number, number | null][]>(py, TORCH, [join(dir, "layers.json")]);
    } catch {
      torch = [];
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  }
  const lines = [
    `every distinct convolution of nnU-Net's PlainConvUNet and ResEnc-M (real widths) in the ${window.join("×")} window, each alone (medians of 5–50 runs, about 150 ms each; bhsd native best case; onnxruntime-node 2 threads; PyTorch ${py ? "F.conv3d / F.conv_transpose3d eager, 2 threads, and the forward ones through oneDNN (torch.mkldnn_convolution: PyTorch 1.13 sends layers of batch · channels · depth · height ≤ 20480 to slow_conv3d; 1.13 has no oneDNN path of its own for transposed ones)" : "— no python3 with torch"}; FMA peak of the native pool's threads measured now: ${fmt(peak, 0)} GFLOP/s)`,
    "| layer | uses (Plain / ResEnc-M) | GFLOP | bhsd ms | GFLOP/s | % of peak | onnxruntime ms | × onnxruntime | PyTorch ms (eager / oneDNN) | × PyTorch (eager / oneDNN) |",
    "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
  ];
  for (const [i, l] of layers.entries()) {
    const conv = l.op === "Conv";
    const x = { data: random(l.ci * l.input[0] * l.input[1] * l.input[2], 100 + i), shape: [1, l.ci, ...l.input] };
    const wShape = conv ? [l.co, l.ci, ...l.k] : [l.ci, l.co, ...l.k];
    const wt = {
      data: random(
        wShape.reduce((a, b) => a * b, 1),
        200 + i,
        0.1,
      ),
      shape: wShape,
    };
    const b = { data: random(l.co, 300 + i), shape: [l.co] };
    const bytes = convModelBytes(l.op, x.shape, wt, b, { pads: l.pads, kernel_shape: l.k, strides: l.stride });
    const session = await ort.InferenceSession.create(bytes, { intraOpNumThreads: 2, interOpNumThreads: 1 });
    const feed = { x: new ort.Tensor("float32", x.data, x.shape) };
    await settle();
    const tOrt = await timeLayer(() => session.run(feed));
    await session.release();
    let tNat = NaN;
    if (info.available.native) {
      setBackend("native");
      const xe = allocTensor(x.shape),
        we = allocTensor(wt.shape),
        out = allocTensor([1, l.co, ...l.output]);
      xe.data.set(x.data);
      we.data.set(wt.data);
      (getBackend("native") as { constants?(a: ReadonlySet<Float32Array>): void }).constants?.(new Set([we.data]));
      const o = { padding: l.pads as [number, number, number, number, number, number], stride: l.stride, out };
      await settle(); // (onnxruntime's threads spin on after its runs)
      tNat = await timeLayer(() => (conv ? conv3d(xe, we, b, o) : convTranspose3d(xe, we, b, o)));
    }
    const gf = flops(l) / 1e9;
    const g = gf / (tNat / 1000);
    const tT = torch[i]?.[0] ?? NaN,
      tD = torch[i]?.[1] ?? NaN;
    const name = `${conv ? "" : "transposed "}${l.ci}→${l.co} ${l.k.join("×")}${l.stride.some((s) => s > 1) ? ` stride ${l.stride.join("×")}` : ""} at ${l.input.join("×")}`;
    lines.push(
      `| ${name} | ${l.uses.PlainConvUNet ?? 0} / ${l.uses["ResEnc-M"] ?? 0} | ${fmt(gf, 2)} | ${fmt(tNat, 2)} | ${fmt(g, 0)} | ${fmt((100 * g) / peak, 0)} | ${fmt(tOrt, 2)} | ${fmt(tOrt / tNat, 2)} | ${fmt(tT, 2)} / ${fmt(tD, 2)} | ${fmt(tT / tNat, 2)} / ${fmt(tD / tNat, 2)} |`,
    );
  }
  return lines;
}
