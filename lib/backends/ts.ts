/** The pure-TypeScript backend: always there, the reference the others are held to. */
import type { VoxelArray } from "../types.js";
import type { Backend, BackendDetails, VoxelStats } from "./types.js";
import { forChunks } from "./yield.js";
import { tsTensor } from "./ts-tensor.js";
import { tsLabelPairStats, tsNarrowLabels, tsSurfaceMetrics } from "./ts-metrics.js";
import { tsComponentSliceAreas, tsComponentStats, tsConnectedComponents, tsSelectComponents } from "./ts-ccl.js";

export class TsBackend implements Backend {
  readonly name = "ts" as const;

  details(): BackendDetails {
    return { threads: 1, simd: "js" };
  }

  async voxelStats(data: VoxelArray): Promise<VoxelStats> {
    let min = Infinity, max = -Infinity, sum = 0, nonzero = 0, nonfinite = 0;
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
