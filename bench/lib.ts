/** Helpers of the benchmarks: medians, peak memory, and the Python (scipy) references. */
import { spawnSync } from "node:child_process";
import { readFileSync, writeFileSync } from "node:fs";

import { createRequire } from "node:module";
import { backendInfo } from "../dist/index.js";
import { encodeModel } from "../dist/model/onnx-proto.js";
import { median, timeMedian } from "../dist/timing.js";

export { median };

function rssKb(field: "VmRSS" | "VmHWM"): number {
  try {
    const m = new RegExp(`${field}:\\s+(\\d+)`).exec(readFileSync("/proc/self/status", "utf8"));
    return m ? Number(m[1]) : NaN;
  } catch {
    return NaN;
  }
}

/** Resets the kernel's peak-RSS mark (Linux), so that VmHWM then measures one operation. */
function resetPeak(): boolean {
  try {
    writeFileSync("/proc/self/clear_refs", "5");
    return true;
  } catch {
    return false;
  }
}

export interface Timing {
  /** Median wall time in ms. */
  ms: number;
  /** Peak resident memory during one run above the resident memory before it (MB), NaN where unknown. */
  peakMb: number;
}

/** Times `fn` `reps` times after one warm-up; measures the peak memory of one more run. */
export async function measure(fn: () => Promise<unknown>, reps = 5): Promise<Timing> {
  const ms = await timeMedian(fn, reps);
  // Let the garbage of earlier runs go first: freed ArrayBuffers are unmapped after the GC, not in it.
  const gc = (globalThis as { gc?: () => void }).gc;
  for (let i = 0; i < 3; i++) {
    gc?.();
    await new Promise((r) => setTimeout(r, 50));
  }
  const before = rssKb("VmRSS");
  const ok = resetPeak();
  await fn();
  const peak = ok ? (rssKb("VmHWM") - before) / 1024 : NaN;
  return { ms, peakMb: Math.max(0, peak) };
}

/**
 * A pause before timing one engine right after another in the same process: onnxruntime's
 * intra-op threads spin for some 20–40 ms after a run (its default), and a block of bhsd's small
 * calls timed inside that window shared the 2 cores with them (320→320 at 4×16×16: 5–8 ms a call
 * there, 3.3–4.2 after it). bhsd's workers watch for 80 µs at most, but the pause is the same
 * both ways.
 */
export async function settle(ms = 100): Promise<void> {
  await new Promise((r) => setTimeout(r, ms));
}

/** The python3 that has the given modules, or undefined (the bench then says so). */
export function pythonWith(...modules: string[]): string | undefined {
  for (const py of ["python3", "/usr/bin/python3"]) {
    const r = spawnSync(py, ["-c", `import ${modules.join(", ")}`], { stdio: "ignore" });
    if (r.status === 0) return py;
  }
  return undefined;
}

/**
 * The instruction set PyTorch's oneDNN is held to where bhsd's kernels are held below what the CPU
 * has (BHSD_NO_AVX512 → AVX2, BHSD_NO_AVX2 → SSE4.1): the comparison a machine without them would
 * give (Zen 3 for AVX2), both sides on the same instructions. Undefined where bhsd uses everything
 * the CPU offers or the caller set ONEDNN_MAX_CPU_ISA itself. onnxruntime has no such switch: it
 * uses what the CPU has, so its column stays the stronger machine's.
 */
export function torchIsaHold(): string | undefined {
  if (process.env.ONEDNN_MAX_CPU_ISA || process.env.DNNL_MAX_CPU_ISA) return undefined;
  if (process.env.BHSD_NO_AVX2) return "SSE41";
  if (process.env.BHSD_NO_AVX512) return "AVX2";
  return undefined;
}

/** Runs a Python snippet that prints one JSON line; returns it parsed. */
export function runPython<T>(py: string, code: string, args: string[] = []): T {
  const env = { ...process.env };
  const hold = torchIsaHold();
  if (hold) {
    env.ONEDNN_MAX_CPU_ISA = hold;
    env.ATEN_CPU_CAPABILITY = hold === "AVX2" ? "avx2" : "default";
    // and the BLAS under its Linear/MatMul where that is MKL or a dynamic-arch OpenBLAS (a
    // reference BLAS has no AVX-512 to hold)
    env.MKL_ENABLE_INSTRUCTIONS = hold === "AVX2" ? "AVX2" : "SSE4_2";
    env.OPENBLAS_CORETYPE = hold === "AVX2" ? "Haswell" : "Nehalem";
  }
  // (30 minutes at most: a stuck python fails its column, not the whole bench)
  const r = spawnSync(py, ["-c", code, ...args], { encoding: "utf8", env, maxBuffer: 1 << 26, timeout: 30 * 60_000 });
  if (r.status !== 0) throw new Error(`python failed: ${r.stderr.trim().split("\n").slice(-3).join(" | ")}`);
  return JSON.parse(r.stdout.trim().split("\n").pop()!) as T;
}

/** A deterministic pseudo-random generator (xorshift32). */
export function rng(seed: number): () => number {
  let s = seed >>> 0 || 1;
  return () => {
    s ^= s << 13;
    s >>>= 0;
    s ^= s >>> 17;
    s ^= s << 5;
    s >>>= 0;
    return s / 2 ** 32;
  };
}

export const fmt = (x: number, d = 1) => (Number.isFinite(x) ? x.toFixed(d) : "—");

/** One convolution (Conv or ConvTranspose, weights w and bias b) as an ONNX model: onnxruntime's side of a layer's comparison. */
export function convModelBytes(
  op: "Conv" | "ConvTranspose",
  xShape: number[],
  w: { data: Float32Array; shape: number[] },
  b: { data: Float32Array; shape: number[] },
  attrs: { pads: number[]; kernel_shape: number[]; strides: number[] },
): Uint8Array {
  return encodeModel({
    opset: 17,
    nodes: [{ opType: op, inputs: ["x", "w", "b"], outputs: ["y"], attrs }],
    inputs: [{ name: "x", shape: xShape }],
    outputs: [{ name: "y" }],
    initializers: [
      { name: "w", dims: w.shape, data: w.data },
      { name: "b", dims: b.shape, data: b.data },
    ],
  });
}

/** The FMA peak of the native pool's threads, the best of 5 probes now (GFLOP/s); NaN without the addon. */
export async function fmaPeak(): Promise<number> {
  const info = backendInfo();
  if (!info.available.native) return NaN;
  const addon = createRequire(import.meta.url)(info.details.native!.binary!) as { fmaPeak(): Promise<number> };
  const runs: number[] = [];
  for (let i = 0; i < 5; i++) runs.push(await addon.fmaPeak());
  return Math.max(...runs);
}
