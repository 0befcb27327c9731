/**
 * Where a convolution's time goes on the GPU, without hardware counters: the same layer timed
 * with parts of the implicit-GEMM kernel left out (BHSD_CONV_SKIP: 1 no input gather, 2 no
 * multiply, 4 no weight loads; sums of them; BHSD_CONV_HALO=0 keeps TF32 layers off the halo
 * kernel), and the halo kernel itself, device-side medians. `tsx bench/device/variants.ts`, on a
 * profiling build of the CUDA addon (`npm run build:cuda -- --CDBHSD_CONV_PROFILING=ON`): shipped
 * builds ignore BHSD_CONV_SKIP, which makes convolutions wrong on purpose.
 */
import { getBackend, setBackend } from "../../lib/backends/index.js";
import type { CudaBackend, CudaPrecision } from "../../lib/backends/cuda.js";
import * as ops from "../../lib/ops/tensor.js";
import type { Tensor } from "../../lib/types.js";

const cuda = getBackend("cuda") as CudaBackend;
setBackend("cuda");
const rand = (n: number) => Float32Array.from({ length: n }, (_, i) => Math.sin(i * 12.9898) * 0.5);
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
for (const [C, Co, D, H, W] of [
  [32, 32, 32, 256, 256],
  [64, 64, 32, 128, 128],
  [128, 128, 16, 64, 64],
  [320, 320, 8, 32, 32],
]) {
  const x: Tensor = { data: rand(C! * D! * H! * W!), shape: [1, C!, D!, H!, W!] };
  const w: Tensor = { data: rand(Co! * C! * 27), shape: [Co!, C!, 3, 3, 3] };
  const y: Tensor = { data: new Float32Array(Co! * D! * H! * W!), shape: [1, Co!, D!, H!, W!] };
  const flops = 2 * Co! * C! * 27 * D! * H! * W!;
  for (const p of ["tf32", "fp32", "fp16"] as CudaPrecision[]) {
    cuda.precision = p;
    const row: string[] = [];
    for (const skip of p === "tf32" ? ["halo", 0, 1, 2, 3] : [0]) {
      if (skip === "halo") delete process.env.BHSD_CONV_HALO;
      else process.env.BHSD_CONV_HALO = "0";
      process.env.BHSD_CONV_SKIP = String(skip === "halo" ? 0 : skip);
      const ms = await cuda.residentRun(
        async () => {
          for (let i = 0; i < 2; i++) await ops.conv3d(x, w, null, { padding: 1, out: y });
          await cuda.addon.sync();
          const ts: number[] = [];
          for (let i = 0; i < 7; i++) {
            const t0 = performance.now();
            await ops.conv3d(x, w, null, { padding: 1, out: y });
            await cuda.addon.sync();
            ts.push(performance.now() - t0);
          }
          return median(ts);
        },
        { constants: new Set([x.data, w.data]), outputs: () => [] },
      );
      row.push(`${skip === "halo" ? "halo" : `gemm skip${skip}`} ${ms.toFixed(2)} (${(flops / ms / 1e9).toFixed(0)} TFLOP/s)`);
    }
    delete process.env.BHSD_CONV_SKIP;
    delete process.env.BHSD_CONV_HALO;
    console.log(`${C}→${Co} ${D}×${H}×${W} ${p} (${(flops / 1e9).toFixed(0)} GFLOP): ${row.join(" | ")} ms`);
  }
}
