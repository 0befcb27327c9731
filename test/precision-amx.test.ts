/**
 * bf16 on AMX tiles (issue 23: "where the CPU offers avx512_bf16 / AMX"): with BHSD_WINOGRAD=0 (read
 * by the addon at its first convolution; ava runs each file in a process of its own) every
 * convolution of a bf16 model runs the direct path, which on a processor with AMX-BF16 computes on
 * the tiles (native/include/bhsd/conv_amx.hpp). Each fixture network's bf16 output against
 * PyTorch's fp32 one (the fixtures) within README's bf16 tolerances; where AMX runs, not the fp32
 * answer (the tiles ran); where it does not, the direct path stays fp32 and "bf16" gives the fp32
 * answer bit for bit. The fixtures are narrow (SegResNet's 16 channels are the only layers wide enough
 * for the tiles), so also nnU-Net's ResEnc-M at its real widths (32…320, six stages, random weights) against
 * onnxruntime's fp32 run of the same bytes in this process. And backendInfo's statement against
 * /proc/cpuinfo's amx_bf16 and amx_tile.
 */
process.env.BHSD_WINOGRAD = "0";
delete process.env.BHSD_CPU_PRECISION;

import test, { type ExecutionContext } from "ava";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import ort from "onnxruntime-node";
import { backendInfo, loadModel, readNpy, setBackend } from "../lib/index.js";
import { RESENC_M_FULLRES, randomWeightsModel } from "../lib/model/nnunet/presets.js";
import { ROOT } from "./paths.js";
import { argmaxAgreement, scaleDiff } from "./ort.js";
import { BF16_ARGMAX, BF16_SCALE, nativeLoads } from "./helpers.js";

const NET = join(ROOT, "test", "fixtures", "networks");
const CASES = ["segresnet"].map((n) => ({
  name: n,
  model: join(NET, `${n}_op17.onnx`),
  input: join(NET, `${n}_input.npy`),
  expected: join(NET, `${n}_expected.npy`),
}));
const hasNative = nativeLoads();
const cpuinfo = (() => {
  try {
    return readFileSync("/proc/cpuinfo", "utf8");
  } catch {
    return undefined;
  }
})();
const forcedOff = ["BHSD_NO_AVX512", "BHSD_NO_AVX2", "BHSD_NO_BF16", "BHSD_NO_AMX"].some((k) => process.env[k]);
const amxRuns = (): boolean => /amx-bf16/.test(backendInfo().details.native?.simd ?? "");

(hasNative ? test.serial : test.skip)("native: backendInfo names AMX exactly where /proc/cpuinfo lists amx_bf16 and amx_tile", (t) => {
  const simd = backendInfo().details.native!.simd;
  if (cpuinfo === undefined || forcedOff || !/\bavx512_bf16\b/.test(cpuinfo)) {
    t.log(`simd: ${simd} (no /proc/cpuinfo, no AVX512_BF16, or switched off by the environment)`);
    t.is(amxRuns(), /amx-bf16/.test(simd));
    if (forcedOff && process.env.BHSD_NO_AMX) t.false(amxRuns());
    return;
  }
  const listed = /\bamx_bf16\b/.test(cpuinfo) && /\bamx_tile\b/.test(cpuinfo);
  // the kernel may still refuse the tile state (arch_prctl): then simd says nothing of AMX
  if (listed && !amxRuns()) t.log("the processor lists AMX but this process was not given the tile state");
  else t.is(amxRuns(), listed, `/proc/cpuinfo ${listed ? "lists" : "does not list"} amx_bf16 and amx_tile; simd: ${simd}`);
});

/**
 * The model's fp32 and bf16 runs of `input` against `want` (an outside fp32 reference, `ref` its
 * name): fp32 within 1e-4 of scale; bf16 within README's tolerances and not the fp32 answer where
 * AMX runs (the same answer on a second run), the fp32 answer bit for bit where it does not.
 */
async function compareBf16(
  t: ExecutionContext,
  bytesOrPath: Uint8Array | string,
  input: { data: Float32Array; shape: number[] },
  want: ArrayLike<number>,
  ref: string,
): Promise<void> {
  const fp32 = await loadModel(bytesOrPath);
  const bf16 = await loadModel(bytesOrPath, { precision: "bf16" });
  try {
    const y32 = await fp32.run(input);
    const y16 = await bf16.run(input);
    const d32 = scaleDiff(y32.data, want),
      d16 = scaleDiff(y16.data, want);
    const agree = argmaxAgreement(y16.data, want, y16.shape[1]!);
    t.log(
      `fp32 ${d32.toExponential(2)}, bf16 ${d16.toExponential(2)} of scale; argmax ${(agree * 100).toFixed(2)} %; ${amxRuns() ? "AMX" : "no AMX"}`,
    );
    t.true(d32 <= 1e-4, `fp32: ${d32}`);
    if (amxRuns()) {
      t.true(d16 <= BF16_SCALE, `bf16: max |bhsd − ${ref}| is ${d16} of max |${ref}|`);
      t.true(d16 > 1e-5, `bf16 gave the fp32 answer (${d16}): the tiles did not run`);
      t.true(agree >= BF16_ARGMAX, `bf16: argmax agrees on ${agree}`);
      const first = y16.data.slice(); // a copy: a run may hand back the buffer of the run before
      t.deepEqual((await bf16.run(input)).data, first, "the same answer every run");
    } else {
      t.deepEqual(y16.data, y32.data, "without AMX the direct path computes a bf16 call in fp32");
    }
  } finally {
    fp32.dispose();
    bf16.dispose();
  }
}

for (const c of CASES) {
  (hasNative ? test.serial : test.skip)(
    `native: ${c.name} in bf16 on the direct path (AMX where it runs) is within ${BF16_SCALE} of PyTorch's fp32 scale, argmax ≥ ${BF16_ARGMAX}`,
    async (t) => {
      setBackend("native");
      const x = await readNpy(c.input),
        want = await readNpy(c.expected);
      await compareBf16(t, c.model, { data: x.data as Float32Array, shape: x.shape }, want.data as Float32Array, "PyTorch");
    },
  );
}

(hasNative ? test.serial : test.skip)(
  `native: nnU-Net ResEnc-M at real widths in bf16 (AMX where it runs) is within ${BF16_SCALE} of onnxruntime's fp32 scale`,
  async (t) => {
    setBackend("native");
    let w = 1;
    const bytes = randomWeightsModel(RESENC_M_FULLRES, () => ((w = (w * 1664525 + 1013904223) >>> 0), w / 2 ** 32));
    let s = 7;
    const shape = [1, 1, 16, 64, 64];
    const x = new Float32Array(16 * 64 * 64).map(() => ((s = (s * 1664525 + 1013904223) >>> 0), (s / 2 ** 32) * 2 - 1));
    const session = await ort.InferenceSession.create(bytes, { intraOpNumThreads: 2 });
    const want = (await session.run({ [session.inputNames[0]!]: new ort.Tensor("float32", x, shape) }))[session.outputNames[0]!]!
      .data as Float32Array;
    await session.release();
    await compareBf16(t, bytes, { data: x, shape }, want, "onnxruntime");
  },
);
