/** Summary statistics of a volume's voxels, on the active backend. */
import { activeBackend, type VoxelStats } from "../backends/index.js";
import { invalidParameterError, voxelArray } from "../is.js";
import type { Volume, VoxelArray } from "../types.js";
import { assertVolume } from "../volume.js";

export interface VolumeStats extends VoxelStats {
  /** Mean of the finite voxels (NaN when there is none). */
  mean: number;
  count: number;
}

/** min, max, mean, sum, non-zero and non-finite counts of a volume or a voxel array. */
export async function voxelStats(input: Volume | VoxelArray): Promise<VolumeStats> {
  let data: VoxelArray;
  if (voxelArray(input)) data = input;
  else if (typeof input === "object" && input !== null && "data" in input) {
    assertVolume("input", input);
    data = input.data;
  } else throw invalidParameterError("input", "a Volume or a typed array", input);
  const s = await activeBackend().voxelStats(data);
  const finite = data.length - s.nonfinite;
  return { ...s, count: data.length, mean: finite > 0 ? s.sum / finite : NaN };
}
