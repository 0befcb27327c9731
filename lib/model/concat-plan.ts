/**
 * Channel Concats planned in place (batch 1, CPU backends): a Concat on axis 1 whose inputs are
 * each written by an op that fills a buffer from the pool, with channel counts that follow from the
 * weights, gets one buffer; each input's producer writes its slice of it, and the Concat copies
 * nothing (Model.lastRun.concatsInPlace counts them).
 */
import { producersOf, type Graph, type GraphNode } from "./graph.js";

/** Where a value is written when its Concat is done in place: channels c0 … c0 + c of cTotal. */
export interface ConcatSlot {
  concat: string;
  c0: number;
  c: number;
  cTotal: number;
  /**
   * The rank the Concat's axis is the channel axis of: 5 for axis −4 (a 5-D tensor's axis 1; on a
   * 4-D one it is the batch axis), undefined for axis 1 (any rank ≥ 3).
   */
  rank?: number;
}

/** Ops that write their whole result into a buffer from `alloc` (so it may be a slice of another). */
const WRITES_ALLOC = new Set([
  "Conv",
  "ConvTranspose",
  "InstanceNormalization",
  "GroupNormalization",
  "BatchNormalization",
  "Relu",
  "LeakyRelu",
  "Sigmoid",
  "PRelu",
  // a residual block's sum (ResEnc's encoder stages end in Add → LeakyRelu: their Concats copied
  // 37 ms of a 16×256×256 window before); its channels are its inputs' where both agree
  "Add",
  "Mul",
  // (a nearest-neighbour up-sampling before a decoder's Concat: STU-Net's, its 1×1 run first)
  "Resize",
]);
/** Ops whose output has their first input's channels. */
const KEEPS_CHANNELS = new Set([
  "InstanceNormalization",
  "GroupNormalization",
  "BatchNormalization",
  "Relu",
  "LeakyRelu",
  "Sigmoid",
  "PRelu",
  "Resize",
]);

/** Finds the channel Concats that can be done in place: each input's slot, by value name. */
export function planConcats(nodes: GraphNode[], graph: Graph, outputs: readonly string[]): Map<string, ConcatSlot> {
  const slots = new Map<string, ConcatSlot>();
  const producer = producersOf(nodes);
  const dims = (name: string | undefined) => (name ? graph.initializers.get(name)?.dims : undefined);
  const known = new Map<string, number | undefined>(); // each value's channels, found once (Adds share inputs)
  const channels = (name: string, depth = 0): number | undefined => {
    if (known.has(name)) return known.get(name);
    const p = producer.get(name);
    let c: number | undefined;
    if (!p || depth > 64) {
      const d = graph.inputs.find((i) => i.name === name)?.shape[1];
      c = typeof d === "number" ? d : undefined;
    } else {
      const group = (p.attrs.group as number | undefined) ?? 1;
      if (p.opType === "Conv") c = dims(p.inputs[1])?.[0];
      else if (p.opType === "ConvTranspose") c = (dims(p.inputs[1])?.length ?? 0) >= 3 ? dims(p.inputs[1])![1]! * group : undefined;
      else if (KEEPS_CHANNELS.has(p.opType) && p.inputs[0]) c = channels(p.inputs[0], depth + 1);
      else if ((p.opType === "Add" || p.opType === "Mul") && p.inputs.length === 2 && p.inputs[0] && p.inputs[1]) {
        // broadcasting could widen either input's channels: only where both are known and equal
        const a = channels(p.inputs[0], depth + 1),
          b = channels(p.inputs[1], depth + 1);
        c = a !== undefined && a === b ? a : undefined;
      }
    }
    if (depth <= 64) known.set(name, c);
    return c;
  };
  const taken = new Set<string>();
  for (const n of nodes) {
    if (n.opType !== "Concat" || (n.attrs.axis !== 1 && n.attrs.axis !== -4)) continue;
    const ins = n.inputs;
    const ok =
      ins.length > 1 &&
      new Set(ins).size === ins.length &&
      ins.every((i) => i && !taken.has(i) && !outputs.includes(i) && WRITES_ALLOC.has(producer.get(i)?.opType ?? ""));
    const cs = ok ? ins.map((i) => channels(i!)) : [];
    if (!ok || cs.some((c) => typeof c !== "number" || !(c > 0))) continue;
    const cTotal = (cs as number[]).reduce((a, b) => a + b, 0);
    let c0 = 0;
    ins.forEach((i, k) => {
      slots.set(i!, { concat: n.outputs[0]!, c0, c: cs[k]!, cTotal, ...(n.attrs.axis === -4 ? { rank: 5 } : {}) });
      taken.add(i!);
      c0 += cs[k]!;
    });
  }
  return slots;
}
