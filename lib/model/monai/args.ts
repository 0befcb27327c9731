/**
 * What MONAI's network builders share: the rebuilt network's shape, keyword arguments checked as a
 * constructor would, and the graph's last step (its output named `logits`).
 */
import { monaiError, type GraphBuilder } from "./layers.js";
import type { StateDictNetwork } from "../state-dict.js";
import { brief } from "../../is.js";

export type MonaiNetworkClass =
  "UNet" | "AttentionUnet" | "SegResNet" | "SegResNetVAE" | "SegResNetDS" | "DynUNet" | "BasicUNet" | "SwinUNETR" | "UNETR" | "MedNeXt";
export const MONAI_NETWORKS: readonly MonaiNetworkClass[] = [
  "UNet",
  "AttentionUnet",
  "SegResNet",
  "SegResNetVAE",
  "SegResNetDS",
  "DynUNet",
  "BasicUNet",
  "SwinUNETR",
  "UNETR",
  "MedNeXt",
];

/** A rebuilt MONAI network (its `unused` names: num_batches_tracked, deep-supervision heads). */
export interface MonaiNetwork extends StateDictNetwork {
  networkClass: MonaiNetworkClass;
  /** The network_def's keyword arguments (without `_target_`). */
  args: Record<string, unknown>;
  dims: 2 | 3;
  inputChannels: number;
  outputChannels: number;
  /** What the spatial sizes [z, y, x] must be multiples of (z is 1 for a 2-D network). */
  divisor: [number, number, number];
  /**
   * The one spatial input size the graph runs (the network's axes; a transformer's: SwinUNETR's
   * windows and masks, UNETR's position embeddings), where it has one.
   */
  inputSize?: number[];
}

/** Keyword arguments with their defaults; any other is an error (as the constructor's TypeError). */
export function kwargs(
  args: Record<string, unknown>,
  defaults: Record<string, unknown>,
  required: string[],
  cls: string,
  where: string,
): Record<string, unknown> {
  const out: Record<string, unknown> = { ...defaults };
  for (const [k0, v] of Object.entries(args)) {
    // (MONAI ≤ 0.9 called spatial_dims `dimensions`; the argument still appears in old bundles)
    const k = k0 === "dimensions" ? "spatial_dims" : k0;
    if (!Object.hasOwn(defaults, k) && !required.includes(k))
      throw monaiError(where, `${cls} has no argument "${k0}" (bhsd knows ${[...required, ...Object.keys(defaults)].join(", ")})`);
    out[k] = v;
  }
  for (const k of required) if (out[k] === undefined) throw monaiError(where, `${cls} needs the argument "${k}"`);
  return out;
}

export const posInt = (v: unknown, where: string, what: string, max = 1 << 16): number => {
  if (!Number.isInteger(v) || (v as number) < 1 || (v as number) > max)
    throw monaiError(where, `${what} must be a positive integer up to ${max}, got ${brief(v)}`);
  return v as number;
};
export const intList = (v: unknown, where: string, what: string, min = 1): number[] => {
  if (!Array.isArray(v) || !v.length || v.length > 64 || !v.every((x) => Number.isInteger(x) && x >= min && x <= 1 << 16))
    throw monaiError(where, `${what} must be a list of 1 to 64 integers from ${min} to 65536, got ${brief(v)}`);
  return v as number[];
};
export const flag = (v: unknown, where: string, what: string): boolean => {
  if (typeof v !== "boolean") throw monaiError(where, `${what} must be true or false, got ${brief(v)}`);
  return v;
};
export const spatialDims = (v: unknown, where: string, cls: string): 2 | 3 => {
  if (v !== 2 && v !== 3)
    throw monaiError(where, `${cls}'s spatial_dims must be 2 or 3 (bhsd segments CT slices or volumes), got ${brief(v)}`);
  return v;
};
export const dropoutOk = (v: unknown, where: string, what: string) => {
  // eval mode: any dropout is the identity; only its form is checked
  if (
    v === null ||
    v === undefined ||
    typeof v === "number" ||
    typeof v === "string" ||
    (Array.isArray(v) &&
      v.length === 2 &&
      typeof v[0] === "string" &&
      v[0].length <= 64 &&
      typeof v[1] === "object" &&
      !Array.isArray(v[1]))
  )
    return;
  throw monaiError(where, `${what} must be a probability, a name or [name, {arguments}], got ${brief(v)}`);
};
export const divisorOf = (dims: number, strides: number[][]): [number, number, number] => {
  const d = [1, 1, 1];
  for (const s of strides) s.forEach((x, i) => (d[3 - dims + i]! *= x));
  return d as [number, number, number];
};

export function finish(
  b: GraphBuilder,
  cls: MonaiNetworkClass,
  args: Record<string, unknown>,
  dims: 2 | 3,
  cin: number,
  cout: number,
  out: string,
  divisor: [number, number, number],
): MonaiNetwork {
  return { ...b.network(out), networkClass: cls, args, dims, inputChannels: cin, outputChannels: cout, divisor };
}
