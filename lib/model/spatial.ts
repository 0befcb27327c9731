/**
 * 1-D and 2-D models on the engine's 3-D kernels. A 2-D convolution over [N, C, H, W] is the 3-D
 * one over [N, C, 1, H, W] with a kernel [1, kH, kW], stride 1 and no padding on the added axis
 * (likewise pooling and Resize), and a C-order tensor of that shape is the same memory: so a
 * 2-D network (a slice-wise U-Net, nnU-Net's `2d` configuration, MONAI's networks with
 * `spatial_dims=2`) runs on the same kernels, fusions and buffers as a 3-D one.
 *
 * At load, a spatial node's attributes are lifted to three axes (`liftSpatialAttrs`) and the node
 * is marked with the number of spatial axes it was written for (`bhsd_spatial`, an attribute no
 * model can set: attributes are checked against the op's list before this runs). At run time and in
 * shape inference its tensors are viewed with the leading unit axes added, and its results without.
 */
import type { Attr } from "./graph.js";

/** Ops whose attributes name spatial axes. */
export const SPATIAL_OPS: readonly string[] = ["Conv", "ConvTranspose", "MaxPool", "AveragePool"];

/** The marker attribute: how many spatial axes (1 or 2) the node was written for. Absent: 3. */
export const SPATIAL_ATTR = "bhsd_spatial";

/**
 * The number of spatial axes a node's attributes (or, for a convolution with no kernel_shape, its
 * constant weights) are written for; undefined where nothing says (the node then runs as 3-D).
 */
function spatialAxes(a: Record<string, Attr>, weightDims: readonly number[] | undefined): number | undefined {
  const len = (k: string) => (Array.isArray(a[k]) ? (a[k] as unknown[]).length : undefined);
  if (len("kernel_shape") !== undefined) return len("kernel_shape");
  if (weightDims && weightDims.length >= 3) return weightDims.length - 2;
  for (const k of ["strides", "dilations", "output_padding"]) if (len(k) !== undefined) return len(k);
  const p = len("pads");
  return p !== undefined && p % 2 === 0 ? p / 2 : undefined;
}

/**
 * Lifts a 1-D or 2-D spatial node's attributes to three axes in place (leading 1s for kernel,
 * strides and dilations, 0s for pads and output_padding) and marks it; returns the problems found
 * (an attribute whose length disagrees with the others, more than 3 axes), each naming it.
 */
export function liftSpatialAttrs(op: string, a: Record<string, Attr>, weightDims: readonly number[] | undefined, where: string): string[] {
  if (!SPATIAL_OPS.includes(op)) return [];
  const s = spatialAxes(a, weightDims);
  if (s === undefined || s === 3) return [];
  if (s < 1 || s > 3)
    return [`${where}: ${s} spatial axes (kernel_shape ${JSON.stringify(a.kernel_shape)}); bhsd runs 1-D, 2-D and 3-D models`];
  const problems: string[] = [];
  const lead = 3 - s;
  const lift = (k: string, per: number, fill: number) => {
    const v = a[k];
    if (v === undefined) return;
    if (!Array.isArray(v) || v.length !== per * s) {
      problems.push(`${where}: attribute ${k} = ${JSON.stringify(v)} must have ${per * s} values for a ${s}-D ${op}`);
      return;
    }
    const xs = v as number[];
    const out: number[] = [];
    for (let h = 0; h < per; h++) out.push(...Array<number>(lead).fill(fill), ...xs.slice(h * s, (h + 1) * s));
    a[k] = out;
  };
  lift("kernel_shape", 1, 1);
  lift("strides", 1, 1);
  lift("dilations", 1, 1);
  lift("output_padding", 1, 0);
  lift("pads", 2, 0); // ONNX pads: every axis's start, then every axis's end
  if (problems.length === 0) a[SPATIAL_ATTR] = s;
  return problems;
}

/** The spatial axes (1, 2 or 3) a node runs over. */
export const spatialOf = (a: Record<string, Attr>): number => (typeof a[SPATIAL_ATTR] === "number" ? (a[SPATIAL_ATTR] as number) : 3);

/** `shape` [N, C, ...s axes] with unit axes added after C up to five axes (unchanged when s is 3). */
export function liftShape(shape: readonly number[], s: number): number[] {
  if (s === 3) return [...shape];
  return [shape[0]!, shape[1]!, ...Array<number>(3 - s).fill(1), ...shape.slice(2)];
}

/** The inverse of liftShape: a five-axis [N, C, 1…, …] back to [N, C, ...s axes]. */
export function dropShape(shape: readonly number[], s: number): number[] {
  if (s === 3) return [...shape];
  return [shape[0]!, shape[1]!, ...shape.slice(5 - s)];
}

/** A check that `shape` has the rank a node written for `s` spatial axes takes; throws naming it. */
export function checkSpatialRank(shape: readonly number[], s: number, what: string): void {
  if (shape.length !== s + 2) {
    const names = ["[N, C, L]", "[N, C, H, W]", "[N, C, D, H, W]"][s - 1];
    throw new RangeError(`${what} [${shape}] must be ${names} (rank ${s + 2}) for this ${s}-D node`);
  }
}
