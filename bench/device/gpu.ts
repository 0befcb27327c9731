/**
 * The GPU benchmark (bench/device/run.sh runs it on a device machine, beside reference.py in the
 * same run on the same card):
 *   tsx bench/device/gpu.ts inputs DIR   writes the masks and the network spec reference.py reads
 *   tsx bench/device/gpu.ts bench DIR    times bhsd's cuda backend, reads DIR/reference.json and
 *                                        prints one markdown table per section
 * Times are medians, device-side (inputs already on the GPU, synchronised at the end) unless a row
 * says "through the API" (host arrays in and out, as a caller of the public functions sees it).
 */
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { connectedComponents, evaluate, loadModel, segment, setBackend, volumeFromArray, writeNpy } from "../../lib/index.js";
import { getBackend } from "../../lib/backends/index.js";
import type { CudaBackend, CudaPrecision } from "../../lib/backends/cuda.js";
import * as ops from "../../lib/ops/tensor.js";
import { buildUNet, NNUNET_FULLRES } from "../../lib/train/unet.js";
import type { Tensor } from "../../lib/types.js";
import { blobMask, noiseMask } from "../components.js";

const [mode, dir = "/tmp/bhsd-device"] = process.argv.slice(2);
mkdirSync(dir, { recursive: true });

const CONVS: [number, number, [number, number, number]][] = [
  [1, 32, [24, 256, 256]],
  [32, 32, [32, 64, 64]],
  [64, 64, [16, 64, 64]],
  [128, 128, [16, 32, 32]],
  [256, 256, [8, 16, 16]],
  [32, 32, [32, 256, 256]],
];
const UNET_INPUT = [1, 1, 32, 512, 512];
const MASKS = [
  { name: "blobs", shape: [40, 512, 512], make: () => blobMask(512, 512, 40, 60, 11) },
  { name: "noise", shape: [256, 256, 256], make: () => noiseMask(256 ** 3, 0.35, 12) },
];

function rand(n: number, seed: number): Float32Array {
  let s = seed >>> 0 || 1;
  const a = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    s = (s * 1664525 + 1013904223) >>> 0;
    a[i] = s / 2 ** 31 - 1;
  }
  return a;
}
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

if (mode === "inputs") {
  for (const m of MASKS) await writeNpy(join(dir, `${m.name}.npy`), m.make(), m.shape);
  writeFileSync(
    join(dir, "spec.json"),
    JSON.stringify({ convs: CONVS, unet: NNUNET_FULLRES, unetInput: UNET_INPUT, masks: MASKS.map((m) => m.name) }),
  );
  console.log(`inputs written to ${dir}`);
} else if (mode === "bench") {
  const cuda = getBackend("cuda") as CudaBackend;
  setBackend("cuda");
  const ref = JSON.parse(readFileSync(join(dir, "reference.json"), "utf8")) as {
    device: string;
    conv: Record<string, Record<string, number>>;
    unet: Record<string, number>;
    label: Record<string, number>;
    edt: Record<string, number>;
  };
  const out: string[] = [];
  const say = (s: string) => {
    out.push(s);
    console.log(s);
  };
  say(
    `GPU: ${cuda.details().simd.split(",")[0]}; PyTorch/CuPy on the same card (${ref.device}) in the same run; ${new Date().toISOString().slice(0, 10)}`,
  );

  /** Device-side median of `reps` calls of fn, with `constants` uploaded once and nothing downloaded. */
  async function deviceTime(constants: Float32Array[], fn: () => Promise<unknown>, reps: number, warm = 2): Promise<number> {
    return cuda.residentRun(
      async () => {
        for (let i = 0; i < warm; i++) await fn();
        await cuda.addon.sync();
        const ts: number[] = [];
        for (let i = 0; i < reps; i++) {
          const t0 = performance.now();
          await fn();
          await cuda.addon.sync();
          ts.push(performance.now() - t0);
        }
        return median(ts);
      },
      { constants: new Set(constants), outputs: () => [] },
    );
  }

  // ---- convolution layers ----
  say("\n3×3×3 convolution, pad 1, bias: bhsd (cuda) vs torch.nn.functional.conv3d, ms (TFLOP/s)");
  say("| layer | bhsd fp32 | torch fp32 | bhsd tf32 | torch tf32 | bhsd fp16 | torch fp16 | bhsd bf16 | torch bf16 |");
  say("| --- | --- | --- | --- | --- | --- | --- | --- | --- |");
  for (const [C, Co, [D, H, W]] of CONVS) {
    const x: Tensor = { data: rand(C * D * H * W, 1), shape: [1, C, D, H, W] };
    const w: Tensor = { data: rand(Co * C * 27, 2).map((v) => v * 0.1), shape: [Co, C, 3, 3, 3] };
    const b: Tensor = { data: rand(Co, 3), shape: [Co] };
    const y: Tensor = { data: new Float32Array(Co * D * H * W), shape: [1, Co, D, H, W] };
    const flops = 2 * Co * C * 27 * D * H * W;
    const key = `${C}-${Co}-${D}x${H}x${W}`;
    const cells: string[] = [];
    for (const p of ["fp32", "tf32", "fp16", "bf16"] as CudaPrecision[]) {
      cuda.precision = p;
      const ms = await deviceTime([x.data, w.data, b.data], () => ops.conv3d(x, w, b, { padding: 1, out: y }), 20, 3);
      const tms = ref.conv[key]?.[p];
      cells.push(
        `${ms.toFixed(3)} (${(flops / ms / 1e9).toFixed(1)})`,
        tms ? `${tms.toFixed(3)} (${(flops / tms / 1e9).toFixed(1)})` : "–",
      );
    }
    say(`| ${C}→${Co} at ${D}×${H}×${W} | ${cells.join(" | ")} |`);
  }

  // ---- the nnU-Net-shaped forward ----
  const model = await loadModel(buildUNet(NNUNET_FULLRES));
  const n = UNET_INPUT.reduce((a, b) => a * b, 1);
  const input: Tensor = { data: rand(n, 5), shape: UNET_INPUT };
  say(`\nnnU-Net 3d_fullres-shaped U-Net (32-64-128-256-320-320, random weights) forward on ${UNET_INPUT.slice(2).join("×")}, ms`);
  say("| precision | bhsd device-side | bhsd through model.run (host in/out) | device peak GB | PyTorch | bhsd ÷ PyTorch |");
  say("| --- | --- | --- | --- | --- | --- |");
  for (const p of ["tf32", "fp16", "bf16", "fp32"] as CudaPrecision[]) {
    cuda.precision = p;
    cuda.addon.resetPeak();
    const ms = await deviceTime([input.data], () => model.run(input), 5, 1);
    const peak = cuda.memory().peak / 2 ** 30;
    let api = NaN;
    if (p === "tf32") {
      const ts: number[] = [];
      for (let i = 0; i < 3; i++) {
        const t0 = performance.now();
        await model.run(input);
        ts.push(performance.now() - t0);
      }
      api = median(ts);
    }
    const t = ref.unet[p];
    say(
      `| ${p} | ${ms.toFixed(1)} | ${Number.isNaN(api) ? "–" : api.toFixed(1)} | ${peak.toFixed(2)} | ${t ? t.toFixed(1) : "–"} | ${t ? (ms / t).toFixed(2) : "–"} |`,
    );
  }
  cuda.precision = "tf32";

  // ---- segment() on a BHSD-sized case ----
  {
    const [nx, ny, nz] = [512, 512, 40];
    const ct = volumeFromArray(
      rand(nx * ny * nz, 9).map((v) => v * 100 + 40),
      [nz, ny, nx],
      [5, 0.49, 0.49],
    );
    const m = await loadModel(buildUNet(NNUNET_FULLRES), { patchSize: [16, 256, 256] });
    say(`\nsegment(), ${nx}×${ny}×${nz} CT at 0.49×0.49×5 mm, the same model (patch 16×256×256, step 0.5, no mirroring), tf32, s`);
    const runs: { s: number; report: Awaited<ReturnType<typeof segment>>["report"] }[] = [];
    for (let i = 0; i < 2; i++) {
      const t0 = performance.now();
      const { report } = await segment(ct, m);
      runs.push({ s: (performance.now() - t0) / 1000, report });
    }
    const { s, report } = runs[1]!;
    say(`| total s | windows | ${Object.keys(report.timings).join(" s | ")} s |`);
    say(
      `| --- | --- | ${Object.keys(report.timings)
        .map(() => "---")
        .join(" | ")} |`,
    );
    say(
      `| ${s.toFixed(2)} | ${report.windows} | ${Object.values(report.timings)
        .map((v) => (v / 1000).toFixed(2))
        .join(" | ")} |`,
    );
  }

  // ---- components ----
  const { readNpy } = await import("../../lib/index.js");
  say("\nconnected components: bhsd (cuda) vs cupyx.scipy.ndimage.label, ms (device-side; through the API includes the copies)");
  say("| input | conn | bhsd device | bhsd through the API | bhsd native (CPU, same machine) | cupy | bhsd ÷ cupy |");
  say("| --- | --- | --- | --- | --- | --- | --- |");
  for (const m of MASKS) {
    const a = await readNpy(join(dir, `${m.name}.npy`));
    const vol = volumeFromArray(a.data as Uint8Array, a.shape as [number, number, number], [1, 1, 1]);
    for (const conn of [26, 6] as const) {
      const dev: number[] = [],
        api: number[] = [],
        cpu: number[] = [];
      for (let i = 0; i < 6; i++) {
        setBackend("cuda");
        let t0 = performance.now();
        await connectedComponents(vol, { connectivity: conn });
        api.push(performance.now() - t0);
        dev.push(cuda.addon.lastDeviceMs());
        setBackend("native");
        t0 = performance.now();
        if (i < 3) await connectedComponents(vol, { connectivity: conn });
        cpu.push(performance.now() - t0);
      }
      setBackend("cuda");
      const c = ref.label[`${m.name}:${conn}`];
      say(
        `| ${m.name} ${m.shape.join("×")} | ${conn} | ${median(dev.slice(1)).toFixed(2)} | ${median(api.slice(1)).toFixed(1)} | ${median(cpu.slice(0, 3)).toFixed(1)} | ${c ? c.toFixed(2) : "–"} | ${c ? (median(dev.slice(1)) / c).toFixed(2) : "–"} |`,
      );
    }
  }

  // ---- metrics ----
  say("\nevaluate() on a 40×512×512 pair (blobs vs the same blobs shifted; spacing 5×0.488×0.488 mm), ms");
  say(
    "| bhsd cuda through the API | of which distances on the device | bhsd native | cupy distance_transform_edt, one 40×512×512 transform |",
  );
  say("| --- | --- | --- | --- |");
  {
    const a = await readNpy(join(dir, "blobs.npy"));
    const g = a.data as Uint8Array;
    const p = new Uint8Array(g.length);
    for (let i = 3; i < g.length; i++) p[i] = g[i - 3]!;
    const gt = volumeFromArray(g, [40, 512, 512], [5, 0.488, 0.488]),
      pred = volumeFromArray(p, [40, 512, 512], [5, 0.488, 0.488]);
    const tc: number[] = [],
      td: number[] = [],
      tn: number[] = [];
    for (let i = 0; i < 4; i++) {
      setBackend("cuda");
      let t0 = performance.now();
      await evaluate(gt, pred);
      tc.push(performance.now() - t0);
      td.push(cuda.addon.lastDeviceMs());
      setBackend("native");
      t0 = performance.now();
      if (i < 2) await evaluate(gt, pred);
      tn.push(performance.now() - t0);
    }
    say(
      `| ${median(tc.slice(1)).toFixed(1)} | ${median(td.slice(1)).toFixed(1)} | ${median(tn.slice(0, 2)).toFixed(1)} | ${ref.edt.blobs?.toFixed(2) ?? "–"} |`,
    );
  }
  writeFileSync(join(dir, "bench.md"), out.join("\n") + "\n");
} else {
  console.error("usage: tsx bench/device/gpu.ts inputs|bench DIR");
  process.exit(2);
}
