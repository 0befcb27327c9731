/**
 * The arithmetic of convolutions. The cuda backend's precision is `setCudaPrecision`'s (tf32 by
 * default); the CPU backends compute in fp32 unless asked for bf16 (`setCpuPrecision("bf16")` or
 * `BHSD_CPU_PRECISION=bf16`): then the native backend's Winograd convolutions — most of a U-Net's
 * arithmetic — multiply in bf16 and sum in fp32 where the processor has AVX512_BF16
 * (`backendInfo().details.native.precisions` lists "bf16" there; elsewhere they stay fp32), and
 * where it also has AMX tiles the direct convolutions and the upsampling transposed ones too.
 * `loadModel(…, { precision })` sets the precision of one model's runs (any of fp32, tf32, fp16,
 * bf16: the cuda backend takes it as it is, the CPU backends run "bf16" in bf16 and the others in
 * fp32); an AsyncLocalStorage carries it through the run's awaits, so models of different
 * precision can run at once.
 */
import { AsyncLocalStorage } from "node:async_hooks";
import { inArray, invalidParameterError } from "../is.js";

export const CPU_PRECISIONS = ["fp32", "bf16"] as const;
export type CpuPrecision = (typeof CPU_PRECISIONS)[number];
/** A model's precision (loadModel): the cuda backend's names, which the CPU backends map to theirs. */
export const PRECISIONS = ["fp32", "tf32", "fp16", "bf16"] as const;
export type Precision = (typeof PRECISIONS)[number];

/** The precision of the run this async context belongs to, where a model set one (not exported: its type would put @types/node into the package's declarations). */
const precisionScope = new AsyncLocalStorage<Precision>();

/** The running model's precision, where it set one. */
export function scopedPrecision(): Precision | undefined {
  return precisionScope.getStore();
}

let cpuDefault: CpuPrecision | undefined;

function fromEnv(): CpuPrecision {
  const env = process.env.BHSD_CPU_PRECISION;
  if (env === undefined || env === "") return "fp32";
  if (!inArray(env, CPU_PRECISIONS)) throw invalidParameterError("BHSD_CPU_PRECISION", `one of ${CPU_PRECISIONS.join(", ")}`, env);
  return env;
}

/** Throws, naming it, when BHSD_CPU_PRECISION holds what it may not (the native backend checks it as it loads). */
export function checkCpuPrecisionEnv(): void {
  fromEnv();
}

/**
 * The CPU backends' precision outside a model that sets its own: "fp32" (the default) or "bf16"
 * (bf16 products, fp32 sums, in the Winograd convolutions where the processor has AVX512_BF16,
 * and on AMX tiles in the direct and upsampling convolutions too; about 1 % of the output's scale;
 * fp32 elsewhere). Training always computes in fp32.
 */
export function setCpuPrecision(p: CpuPrecision): void {
  if (!inArray(p, CPU_PRECISIONS)) throw invalidParameterError("precision", `one of ${CPU_PRECISIONS.join(", ")}`, p);
  cpuDefault = p;
}

/** The CPU precision asked for here: the running model's, else setCpuPrecision's or the environment's. */
export function cpuPrecision(): CpuPrecision {
  const s = precisionScope.getStore();
  if (s !== undefined) return s === "bf16" ? "bf16" : "fp32";
  return (cpuDefault ??= fromEnv());
}

/** Checks a model's precision option (undefined: none, the backends' defaults). */
export function checkPrecision(p: unknown, name: string): Precision | undefined {
  if (p === undefined) return undefined;
  if (!inArray(p, PRECISIONS)) throw invalidParameterError(name, `one of ${PRECISIONS.join(", ")}`, p);
  return p;
}

/** Runs fn with `p` as the precision of every backend call it makes (p undefined: the defaults). */
export function withPrecision<T>(p: Precision | undefined, fn: () => Promise<T>): Promise<T> {
  return p === undefined ? fn() : precisionScope.run(p, fn);
}
