/**
 * setCpuPrecision / loadModel's `precision` (issue 23): the native backend's bf16 Winograd products
 * against PyTorch's fp32 outputs (the fixtures), the statement in backendInfo against what the
 * processor says it has (/proc/cpuinfo), and two models of different precision running at once.
 * BHSD_WINOGRAD=1 (ava runs each test file in a child process of its own; the addon reads the
 * switch at its first convolution): every layer Winograd serves runs it, so the bf16 products run
 * whatever the measured plan would choose for these small networks (where fp32 F(4×4) tiles or the
 * direct path often win: the plan's bf16 choices are core_test's).
 */
process.env.BHSD_WINOGRAD = "1";
delete process.env.BHSD_CPU_PRECISION; // the defaults below are fp32's

import test from "ava";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { backendInfo, loadModel, readNpy, setBackend, setCpuPrecision } from "../lib/index.js";
import { ROOT, sharedFixture } from "./paths.js";
import { argmaxAgreement, scaleDiff } from "./ort.js";
import { BF16_ARGMAX, BF16_SCALE, nativeLoads } from "./helpers.js";

const NET = join(ROOT, "test", "fixtures", "networks");
/** PyTorch fp32 references: the shared U-Net and three nnU-Net / MONAI networks (their READMEs say how they were made). */
const CASES = [
  {
    name: "plainunet (shared fixture)",
    model: sharedFixture("onnx-plainunet", "plainunet.onnx"),
    input: sharedFixture("onnx-plainunet", "input.npy"),
    expected: sharedFixture("onnx-plainunet", "expected.npy"),
  },
  {
    name: "nnU-Net PlainConvUNet",
    model: join(NET, "plainconvunet_op17.onnx"),
    input: join(NET, "plainconvunet_input.npy"),
    expected: join(NET, "plainconvunet_expected.npy"),
  },
  {
    name: "nnU-Net ResEnc",
    model: join(NET, "resencunet_op17.onnx"),
    input: join(NET, "resencunet_input.npy"),
    expected: join(NET, "resencunet_expected.npy"),
  },
  {
    name: "MONAI SegResNet",
    model: join(NET, "segresnet_op17.onnx"),
    input: join(NET, "segresnet_input.npy"),
    expected: join(NET, "segresnet_expected.npy"),
  },
];

const hasNative = nativeLoads();
const cpuHasBf16 = (() => {
  try {
    return /\bavx512_bf16\b/.test(readFileSync("/proc/cpuinfo", "utf8")) && /\bavx512bw\b/.test(readFileSync("/proc/cpuinfo", "utf8"));
  } catch {
    return undefined; // not Linux: nothing to compare with
  }
})();
const forcedOff = ["BHSD_NO_AVX512", "BHSD_NO_AVX2", "BHSD_NO_BF16"].some((k) => process.env[k]);
const bf16Runs = (): boolean => backendInfo().details.native?.precisions?.includes("bf16") ?? false;

test("setCpuPrecision and loadModel's precision refuse what they do not know, naming the argument", async (t) => {
  t.throws(() => setCpuPrecision("fp16" as "fp32"), { message: /Expected one of fp32, bf16 for precision but received string/ });
  t.throws(() => setCpuPrecision(undefined as unknown as "fp32"), { message: /for precision but received undefined/ });
  await t.throwsAsync(loadModel(CASES[0]!.model, { precision: "int8" as "fp32" }), {
    message: /Expected one of fp32, tf32, fp16, bf16 for config.precision but received string/,
  });
});

(hasNative ? test.serial : test.skip)("native: backendInfo says bf16 runs exactly where the processor has AVX512_BF16", (t) => {
  setBackend("native");
  const d = backendInfo().details.native!;
  t.true(d.precisions!.includes("fp32"));
  t.is(d.precision, "fp32");
  if (cpuHasBf16 === undefined || forcedOff) {
    t.log(cpuHasBf16 === undefined ? "no /proc/cpuinfo to compare with" : "AVX-512 or bf16 switched off by the environment");
    t.is(d.precisions!.includes("bf16"), bf16Runs());
    return;
  }
  t.is(d.precisions!.includes("bf16"), cpuHasBf16, `/proc/cpuinfo ${cpuHasBf16 ? "lists" : "does not list"} avx512_bf16`);
  setCpuPrecision("bf16");
  try {
    t.is(backendInfo().details.native!.precision, "bf16");
  } finally {
    setCpuPrecision("fp32");
  }
});

for (const c of CASES) {
  (hasNative ? test.serial : test.skip)(
    `native: ${c.name} in bf16 is within ${BF16_SCALE} of PyTorch's fp32 scale, argmax ≥ ${BF16_ARGMAX}`,
    async (t) => {
      setBackend("native");
      const x = await readNpy(c.input),
        want = await readNpy(c.expected);
      const input = { data: x.data as Float32Array, shape: x.shape };
      const fp32 = await loadModel(c.model);
      const bf16 = await loadModel(c.model, { precision: "bf16" });
      try {
        const y32 = await fp32.run(input);
        const y16 = await bf16.run(input);
        const C = y16.shape[1]!;
        const d32 = scaleDiff(y32.data, want.data),
          d16 = scaleDiff(y16.data, want.data);
        const agree = argmaxAgreement(y16.data, want.data as Float32Array, C);
        t.log(
          `fp32 ${d32.toExponential(2)}, bf16 ${d16.toExponential(2)} of scale; argmax agrees on ${(agree * 100).toFixed(2)} % of voxels`,
        );
        t.true(d32 <= 1e-4, `fp32: ${d32}`);
        if (bf16Runs()) {
          t.true(d16 <= BF16_SCALE, `bf16: max |bhsd − PyTorch| is ${d16} of max |PyTorch|`);
          t.true(d16 > 1e-5, `bf16 gave the fp32 answer (${d16}): the bf16 kernels did not run`);
          t.true(agree >= BF16_ARGMAX, `bf16: argmax agrees on ${agree}`);
        } else {
          // no AVX512_BF16 here: "bf16" runs in fp32, the same answer bit for bit
          t.deepEqual(y16.data, y32.data);
        }
      } finally {
        fp32.dispose();
        bf16.dispose();
      }
    },
  );
}

(hasNative ? test.serial : test.skip)(
  "native: a bf16 model and an fp32 model running at once each get their own arithmetic; setCpuPrecision sets the default",
  async (t) => {
    setBackend("native");
    const c = CASES[1]!;
    const x = await readNpy(c.input);
    const input = { data: x.data as Float32Array, shape: x.shape };
    const plain = await loadModel(c.model);
    const fp32 = await loadModel(c.model, { precision: "fp32" });
    const bf16 = await loadModel(c.model, { precision: "bf16" });
    try {
      for (const m of [plain, fp32, bf16]) await m.run(input); // plans made
      const ref32 = (await fp32.run(input)).data.slice(),
        ref16 = (await bf16.run(input)).data.slice();
      for (let round = 0; round < 3; round++) {
        const [a, b] = await Promise.all([fp32.run(input), bf16.run(input)]);
        t.deepEqual(a.data, ref32, `round ${round}: the fp32 model`);
        t.deepEqual(b.data, ref16, `round ${round}: the bf16 model`);
      }
      setCpuPrecision("bf16");
      try {
        t.deepEqual((await plain.run(input)).data, ref16, "a model without a precision follows setCpuPrecision");
        t.deepEqual((await fp32.run(input)).data, ref32, "a model's own precision wins over setCpuPrecision");
      } finally {
        setCpuPrecision("fp32");
      }
      t.deepEqual((await plain.run(input)).data, ref32);
      if (bf16Runs()) t.notDeepEqual(ref16, ref32);
    } finally {
      for (const m of [plain, fp32, bf16]) m.dispose();
    }
  },
);
