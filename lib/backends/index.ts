/**
 * The backend registry: which backends loaded, why the others did not, and which one is active.
 * Loading happens on first use, never at import, and a failure is recorded, never thrown.
 * Default order: cuda, then native, then ts. `BHSD_BACKEND` or `setBackend()` choose explicitly.
 */
import { AsyncLocalStorage } from "node:async_hooks";
import { inArray, invalidParameterError } from "../is.js";
import type { BackendName } from "../types.js";
import { CUDA_PRECISIONS, loadCudaBackend, type CudaBackend, type CudaPrecision } from "./cuda.js";
import { loadNativeAddon, NativeBackend } from "./native.js";
import { TsBackend } from "./ts.js";
import type { Backend, BackendDetails } from "./types.js";

export type { Backend, BackendDetails, VoxelStats } from "./types.js";
export { setCpuPrecision, CPU_PRECISIONS, PRECISIONS, type CpuPrecision, type Precision } from "./precision.js";

export const BACKEND_NAMES: readonly BackendName[] = ["cuda", "native", "ts"];

export interface BackendInfo {
  active: BackendName;
  available: Record<BackendName, boolean>;
  /** For each backend that is not available, why. */
  reasons: Partial<Record<BackendName, string>>;
  /** For each available backend, its threads, instruction set and binary. */
  details: Partial<Record<BackendName, BackendDetails>>;
}

const loaded = new Map<BackendName, Backend>();
const reasons = new Map<BackendName, string>();
const tried = new Set<BackendName>();
let chosen: BackendName | undefined;

function tryLoad(name: BackendName): Backend | undefined {
  if (!tried.has(name)) {
    tried.add(name);
    try {
      if (name === "ts") loaded.set(name, new TsBackend());
      else if (name === "native") {
        const { addon, path } = loadNativeAddon();
        const native = new NativeBackend(addon, path);
        loaded.set(name, native);
        for (const hook of nativeLoadHooks) hook(native);
      } else {
        const cuda = loadCudaBackend(() => tryLoad("native") ?? tryLoad("ts")!).backend;
        if (precision) cuda.precision = precision;
        loaded.set(name, cuda);
      }
    } catch (e) {
      reasons.set(name, (e as Error).message);
    }
  }
  return loaded.get(name);
}

const nativeLoadHooks: ((native: NativeBackend) => void)[] = [];
/**
 * @internal Runs `hook` with the native backend when its addon loads (at once where it has): the
 * convolution plan file of BHSD_CONV_PLAN (conv-plan.ts). A hook must not throw.
 */
export function onNativeLoad(hook: (native: NativeBackend) => void): void {
  nativeLoadHooks.push(hook);
  const native = loaded.get("native");
  if (native) hook(native as NativeBackend);
}

function unavailableError(name: BackendName, via: string): Error {
  return new Error(`backend "${name}" (${via}) is not available: ${reasons.get(name) ?? "unknown reason"}`);
}

/** A backend bound to one asynchronous flow (a model bound to a backend runs inside one). */
const scoped = new AsyncLocalStorage<Backend>();

/** Runs `fn` with `backend` as the active backend for every operation it awaits, whatever the global choice. */
export function withBackend<T>(backend: Backend, fn: () => Promise<T>): Promise<T> {
  return scoped.run(backend, fn);
}

/** Frees, on every loaded backend, what it derived from these arrays (packed weights, device copies). */
export function releaseDerived(arrays: Float32Array[]): void {
  for (const b of loaded.values()) b.release?.(arrays);
}

/** The backend operations run on: the one bound to this flow (withBackend), else the global one. */
export function activeBackend(): Backend {
  const bound = scoped.getStore();
  if (bound) return bound;
  if (chosen === undefined) {
    const env = process.env.BHSD_BACKEND;
    if (env !== undefined && env !== "") {
      if (!inArray(env, BACKEND_NAMES)) throw invalidParameterError("BHSD_BACKEND", `one of ${BACKEND_NAMES.join(", ")}`, env);
      if (!tryLoad(env)) throw unavailableError(env, "asked for by BHSD_BACKEND");
      chosen = env;
    } else {
      chosen = BACKEND_NAMES.find((n) => tryLoad(n) !== undefined) ?? "ts";
    }
  }
  return tryLoad(chosen)!;
}

/** A specific backend, for tests and benchmarks that compare them; throws when it is not available. */
export function getBackend(name: BackendName): Backend {
  if (!inArray(name, BACKEND_NAMES)) throw invalidParameterError("name", `one of ${BACKEND_NAMES.join(", ")}`, name);
  const b = tryLoad(name);
  if (!b) throw unavailableError(name, "asked for by name");
  return b;
}

/** Makes `name` the active backend; throws, saying why, when it is not available. */
export function setBackend(name: BackendName): void {
  getBackend(name);
  chosen = name;
}

/** What loaded, what did not and why, and which backend is active. */
export function backendInfo(): BackendInfo {
  const active = activeBackend().name;
  const available = {} as Record<BackendName, boolean>;
  const why: Partial<Record<BackendName, string>> = {};
  const details: Partial<Record<BackendName, BackendDetails>> = {};
  for (const n of BACKEND_NAMES) {
    const b = tryLoad(n);
    available[n] = b !== undefined;
    if (b) details[n] = b.details();
    else why[n] = reasons.get(n) ?? "unknown reason";
  }
  return { active, available, reasons: why, details };
}

let precision: CudaPrecision | undefined;

/**
 * The arithmetic of convolutions on the cuda backend: "tf32" (the default, as PyTorch's
 * convolutions), "fp32", "fp16" or "bf16" (tensor cores, fp32 accumulation). Also settable by
 * BHSD_CUDA_PRECISION. The CPU backends compute in fp32 unless setCpuPrecision("bf16") asks otherwise.
 */
export function setCudaPrecision(p: CudaPrecision): void {
  if (!inArray(p, CUDA_PRECISIONS)) throw invalidParameterError("precision", `one of ${CUDA_PRECISIONS.join(", ")}`, p);
  precision = p;
  const cuda = loaded.get("cuda") as CudaBackend | undefined;
  if (cuda) cuda.precision = p;
}

/** Arrays smaller than this come from the JavaScript heap: a copy of them costs nothing. */
const ENGINE_MIN_BYTES = 1 << 16;

/**
 * A zero-filled ArrayBuffer of `bytes` over the native engine's own memory (huge pages, reused
 * after release, held by every native call that uses it, so that no caller can free it under a
 * running call), or undefined where the native addon is not loaded or the array is small.
 * `zero: false`: a reused block is not cleared first — only for a caller that overwrites every
 * byte before the buffer is seen outside it (a file read into it whole, a conversion into it).
 */
export function engineBuffer(bytes: number, zero = true): ArrayBuffer | undefined {
  if (bytes < ENGINE_MIN_BYTES) return undefined;
  const native = tryLoad("native") as NativeBackend | undefined;
  return native?.allocBuffer(bytes, zero);
}

/** The native backend where its addon loads (for the functions only it has), else undefined. */
export function nativeBackend(): NativeBackend | undefined {
  return tryLoad("native") as NativeBackend | undefined;
}

/** Returns engine memory to the engine now (detaching its buffer); a no-op without the native addon or for small arrays. */
export function releaseEngineArray(a: ArrayBufferView): void {
  if (a.byteLength < ENGINE_MIN_BYTES) return;
  (tryLoad("native") as NativeBackend | undefined)?.detach(a.buffer as ArrayBuffer);
}

/**
 * Bytes of engine memory in use and kept for reuse, and of transformed convolution weights the
 * Winograd weight cache holds (part of liveBytes); zero without the native addon.
 */
export function engineMemory(): { liveBytes: number; cachedBytes: number; weightCacheBytes: number } {
  const native = tryLoad("native") as NativeBackend | undefined;
  return native?.memoryStats() ?? { liveBytes: 0, cachedBytes: 0, weightCacheBytes: 0 };
}

/** The backends that loaded, in the default order. */
export function availableBackends(): BackendName[] {
  return BACKEND_NAMES.filter((n) => tryLoad(n) !== undefined);
}
