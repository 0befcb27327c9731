/**
 * CastLike (opset 15): a Cast to the element type of its second input. PyTorch's dynamo
 * exporter writes it (torchlib's norms and defaults, left in place by `optimize=False` and inside
 * `torch.onnx.dynamo_export`'s functions). The engine keeps floats as float32 and integers as
 * integers without their width, so a CastLike is made a Cast at load wherever the target's type
 * is known: declared by the graph (inputs, outputs, value_info), an initializer's or a Constant's
 * type, or what an op makes (Cast's `to`, Shape and Size int64, comparisons bool, and the type of
 * the input for ops that keep it). Where it is not, the run casts to float when the target is a
 * float, and refuses a target that is an integer of unknown width.
 */
import { ONNX_DTYPE } from "./onnx-proto.js";

type Node = Record<string, unknown> & {
  opType?: string;
  domain?: string;
  input?: string[];
  output?: string[];
  attribute?: Record<string, unknown>[];
};

/** Element-wise float ops (and the softmaxes): a result of their input's shape and type. */
export const SAME_SHAPE_FLOAT_OPS: readonly string[] = [
  "Sigmoid",
  "Sqrt",
  "Exp",
  "Log",
  "Tanh",
  "Erf",
  "Reciprocal",
  "Floor",
  "Ceil",
  "Round",
  "Sign",
  "Softplus",
  "Elu",
  "Selu",
  "HardSigmoid",
  "Gelu",
  "Sin",
  "Cos",
  "Tan",
  "Asin",
  "Acos",
  "Atan",
  "Sinh",
  "Cosh",
  "HardSwish",
  "Mish",
  "Softsign",
  "Celu",
  "ThresholdedRelu",
  "Clip",
  "Softmax",
  "LogSoftmax",
];

/** Ops whose output has the type of their first input. */
const KEEPS = new Set([
  "Identity",
  "Relu",
  "LeakyRelu",
  "Neg",
  "Abs",
  "Add",
  "Sub",
  "Mul",
  "Div",
  "Pow",
  "Mod",
  "Max",
  "Min",
  "Reshape",
  "Flatten",
  "Squeeze",
  "Unsqueeze",
  "Transpose",
  "Concat",
  "Slice",
  "Gather",
  "Expand",
  "Tile",
  "Range",
  "Pad",
  "ReduceSum",
  "ReduceMax",
  "ReduceMin",
  "ReduceProd",
  "ReduceMean",
  "ReduceL1",
  "ReduceL2",
  "ReduceSumSquare",
  "ReduceLogSum",
  "ReduceLogSumExp",
  "Split",
  "GlobalAveragePool",
  "GlobalMaxPool",
  "PRelu",
  "Conv",
  "ConvTranspose",
  "InstanceNormalization",
  "BatchNormalization",
  "LayerNormalization",
  "GroupNormalization",
  "MaxPool",
  "AveragePool",
  "Resize",
  "MatMul",
  "Gemm",
  "Einsum",
  "Dropout",
  "Sum",
  "Mean",
  ...SAME_SHAPE_FLOAT_OPS,
]);
/** Comparisons and logic of two inputs (numpy broadcasting): bool results. */
export const BOOLEAN_BINARY_OPS: readonly string[] = ["Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual", "And", "Or", "Xor"];
/** Ops whose result is bool (0/1 integers in the engine), whatever their inputs. */
export const BOOLEAN_OPS: ReadonlySet<string> = new Set([...BOOLEAN_BINARY_OPS, "Not", "IsNaN", "IsInf"]);

/** Element types the graph declares or its ops determine, by value name. */
function knownTypes(g: Record<string, unknown>, nodes: Node[]): Map<string, number> {
  const types = new Map<string, number>();
  for (const k of ["input", "output", "valueInfo"])
    for (const v of (g[k] as Record<string, unknown>[] | undefined) ?? []) {
      const t = Number((v.type as { tensorType?: { elemType?: number } } | undefined)?.tensorType?.elemType ?? 0);
      if (t) types.set(String(v.name), t);
    }
  for (const t of (g.initializer as Record<string, unknown>[] | undefined) ?? []) types.set(String(t.name), Number(t.dataType ?? 0));
  // a few passes: each carries types one op further along chains the graph lists out of order
  for (let pass = 0; pass < 4; pass++) {
    let grew = false;
    for (const n of nodes) {
      if (n.domain && n.domain !== "ai.onnx") continue;
      const out = n.output?.[0];
      if (!out || types.has(out)) continue;
      const attr = (name: string) => n.attribute?.find((a) => a.name === name);
      let t: number | undefined;
      const op = String(n.opType);
      if (op === "Cast") t = Number(attr("to")?.i ?? 0) || undefined;
      else if (op === "Shape" || op === "Size" || op === "ArgMax") t = ONNX_DTYPE.INT64;
      else if (BOOLEAN_OPS.has(op)) t = ONNX_DTYPE.BOOL;
      else if (op === "Constant") {
        const a = n.attribute?.[0];
        const name = String(a?.name ?? "");
        t =
          name === "value"
            ? Number((a?.t as { dataType?: number } | undefined)?.dataType ?? 0) || undefined
            : name.startsWith("value_float")
              ? ONNX_DTYPE.FLOAT
              : name.startsWith("value_int")
                ? ONNX_DTYPE.INT64
                : undefined;
      } else if (op === "ConstantOfShape")
        t = Number((attr("value")?.t as { dataType?: number } | undefined)?.dataType ?? ONNX_DTYPE.FLOAT);
      else if (op === "Where") t = types.get(n.input?.[1] ?? "");
      else if (op === "CastLike") t = types.get(n.input?.[1] ?? "");
      else if (op === "DequantizeLinear") t = types.get(n.input?.[1] ?? "") ?? ONNX_DTYPE.FLOAT;
      else if (KEEPS.has(op)) t = types.get(n.input?.[0] ?? "");
      if (t) {
        types.set(out, t);
        if (op === "Split") for (const o of n.output ?? []) types.set(o, t);
        grew = true;
      }
    }
    if (!grew) break;
  }
  return types;
}

/**
 * Rewrites each CastLike whose target type is known into a Cast (in the decoded graph `g`).
 * Returns the names of those left: in a model that holds 16-bit floats anywhere, a target of
 * unknown type could be one, whose rounding a cast to float32 would skip (the caller refuses them).
 */
export function resolveCastLike(g: Record<string, unknown>): { unresolved: string[]; halfFloats: boolean } {
  const nodes = (g.node as Node[] | undefined) ?? [];
  if (!nodes.some((n) => n.opType === "CastLike")) return { unresolved: [], halfFloats: false };
  const types = knownTypes(g, nodes);
  // (declared, initializers' and Casts' types: knownTypes takes them all in)
  const halfFloats = [...types.values()].some((t) => t === ONNX_DTYPE.FLOAT16 || t === ONNX_DTYPE.BFLOAT16);
  const unresolved: string[] = [];
  for (const n of nodes) {
    if (n.opType !== "CastLike" || (n.domain && n.domain !== "ai.onnx")) continue;
    const to = types.get(n.input?.[1] ?? "");
    if (!to) {
      unresolved.push(String(n.name || n.output?.[0] || "CastLike"));
      continue;
    }
    n.opType = "Cast";
    n.input = [n.input![0]!];
    n.attribute = [...(n.attribute ?? []).filter((a) => a.name !== "to"), { name: "to", type: 2, i: to }];
  }
  return { unresolved, halfFloats };
}
