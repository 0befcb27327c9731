/**
 * The CUDA backend's loader. The CUDA addon (bhsd_cuda.node, built by cmake-js from
 * CMakeLists.txt) is a second binary, loaded only when asked for, with cudart linked statically so
 * that the CPU path never needs CUDA libraries.
 */
import { existsSync } from "node:fs";
import { createRequire } from "node:module";
import { join } from "node:path";
import { PACKAGE_ROOT } from "./paths.js";
import type { Backend } from "./types.js";

/** What the CUDA addon reports about the machine (native/cuda/addon_cuda.cc). */
export interface CudaProbe {
  ok: boolean;
  deviceCount: number;
  devices: { name: string; computeCapability: string; memoryBytes: number }[];
  error?: string;
  driverVersion?: number;
  runtimeVersion?: number;
}

export interface CudaAddon {
  probe(): CudaProbe;
  /** Operations this build implements on the GPU; empty in the scaffold build. */
  ops: string[];
}

const require = createRequire(import.meta.url);

export function cudaAddonPaths(): string[] {
  return [
    join(PACKAGE_ROOT, "build-cuda", "Release", "bhsd_cuda.node"),
    join(PACKAGE_ROOT, "prebuilds", `${process.platform}-${process.arch}`, "bhsd_cuda.node"),
  ];
}

/** Loads the CUDA addon and returns a backend, or throws an Error saying why there is none. */
export function loadCudaBackend(): { backend: Backend; probe: CudaProbe; path: string } {
  if (process.env.BHSD_DISABLE_CUDA === "1") throw new Error("disabled by BHSD_DISABLE_CUDA=1");
  const path = cudaAddonPaths().find((p) => existsSync(p));
  if (!path) throw new Error("no CUDA binary (bhsd_cuda.node); `npm run build:cuda` makes one where nvcc is installed");
  let addon: CudaAddon;
  try {
    addon = require(path) as CudaAddon;
  } catch (e) {
    throw new Error(`${path} did not load: ${(e as Error).message.split("\n")[0]}`);
  }
  const probe = addon.probe();
  if (!probe.ok) throw new Error(`no usable GPU: ${probe.error ?? "unknown CUDA error"}`);
  if (probe.deviceCount < 1) throw new Error("no CUDA device found");
  // The scaffold addon proves the build and the driver; it has no kernels yet, and a backend that
  // cannot do the work is not offered.
  throw new Error(
    `bhsd_cuda.node found ${probe.deviceCount} GPU(s) (${probe.devices.map((d) => d.name).join(", ")}) but this build implements no operations yet`,
  );
}
