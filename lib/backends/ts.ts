/** The pure-TypeScript backend: always there, the reference the others are held to. */
import type { VoxelArray } from "../types.js";
import type { Backend, BackendDetails, VoxelStats } from "./types.js";
import { forChunks } from "./yield.js";
import { tsTensor } from "./ts-tensor.js";
import { tsLabelPairStats, tsNarrowLabels, tsSurfaceMetrics } from "./ts-metrics.js";
import { tsComponentSliceAreas, tsComponentStats, tsConnectedComponents, tsSelectComponents } from "./ts-ccl.js";

/** Typed arrays among a call's arguments (also inside arrays, as concat's inputs), with their byte lengths. */
function arraysOf(args: unknown[]): [number, ArrayBufferView, number][] {
  const found: [number, ArrayBufferView, number][] = [];
  args.forEach((a, i) => {
    if (ArrayBuffer.isView(a)) found.push([i, a, a.byteLength]);
    else if (Array.isArray(a)) for (const b of a) if (ArrayBuffer.isView(b)) found.push([i, b, b.byteLength]);
  });
  return found;
}

/**
 * The TypeScript loops yield to the event loop, where a caller could detach (transfer) or shrink an
 * array the call reads or writes: writes to a detached array vanish and reads give undefined. The
 * call then fails, saying so, instead of returning a silently wrong result.
 */
function intact<F extends (...a: never[]) => unknown>(name: string, f: F): F {
  return (async (...args: never[]) => {
    const arrays = arraysOf(args);
    const r = await f(...args);
    for (const [i, a, bytes] of arrays) {
      if (a.byteLength !== bytes)
        throw new Error(`ts: argument ${i + 1} of ${name} was detached or resized during the call; the result is lost`);
    }
    return r;
  }) as unknown as F;
}

export class TsBackend implements Backend {
  readonly name = "ts" as const;

  constructor() {
    const self = this as unknown as Record<string, unknown>;
    for (const key of [...Object.keys(this), "voxelStats", "rescaleToFloat32"]) {
      const f = self[key];
      if (typeof f === "function") self[key] = intact(key, (f as (...a: never[]) => unknown).bind(this));
    }
  }

  details(): BackendDetails {
    return { threads: 1, simd: "js" };
  }

  async voxelStats(data: VoxelArray): Promise<VoxelStats> {
    let min = Infinity,
      max = -Infinity,
      sum = 0,
      nonzero = 0,
      nonfinite = 0;
    await forChunks(data.length, (lo, hi) => {
      for (let i = lo; i < hi; i++) {
        const v = data[i]!;
        if (v !== 0) nonzero++;
        if (v - v !== 0) {
          nonfinite++; // NaN or ±Infinity
          continue;
        }
        if (v < min) min = v;
        if (v > max) max = v;
        sum += v;
      }
    });
    return { min, max, sum, nonzero, nonfinite };
  }

  async rescaleToFloat32(src: VoxelArray, slope: number, inter: number, dst: Float32Array): Promise<void> {
    await forChunks(src.length, (lo, hi) => {
      for (let i = lo; i < hi; i++) dst[i] = src[i]! * slope + inter; // Float32Array store rounds once
    });
  }

  connectedComponents = tsConnectedComponents;
  componentStats = tsComponentStats;
  componentSliceAreas = tsComponentSliceAreas;
  selectComponents = tsSelectComponents;
  narrowLabels = tsNarrowLabels;
  labelPairStats = tsLabelPairStats;
  surfaceMetrics = tsSurfaceMetrics;
  conv3d = tsTensor.conv3d;
  convTranspose3d = tsTensor.convTranspose3d;
  instanceNorm = tsTensor.instanceNorm;
  batchNorm = tsTensor.batchNorm;
  unary = tsTensor.unary;
  binary = tsTensor.binary;
  pool3d = tsTensor.pool3d;
  resize3d = tsTensor.resize3d;
  softmax = tsTensor.softmax;
  argmax = tsTensor.argmax;
  concat = tsTensor.concat;
  convWeightGrad = tsTensor.convWeightGrad;
}
