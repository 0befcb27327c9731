/**
 * Quantized models in onnxruntime's QDQ format (quantize_static's default): integer weights and
 * biases behind DequantizeLinear, and QuantizeLinear → DequantizeLinear pairs on the activations.
 * bhsd runs them in float32, as the QDQ format defines them: a constant DequantizeLinear is run
 * once at load (the weights become float), and each activation pair becomes one node that rounds
 * the values to the integer grid and back (round half to even, saturated to the zero point's type)
 * — the numbers onnxruntime's int8 kernels give up to the rounding of their requantisation. No
 * integer arithmetic is used: a quantized model runs at its float twin's speed here.
 */
import { ONNX_DTYPE } from "./onnx-proto.js";
import type { GraphNode, OnnxTensor } from "./graph.js";

/** The graph's constants by name: initializers, and Constant nodes' tensors (where PyTorch's exports put scales). */
function constantsOf(
  nodes: readonly GraphNode[],
  initializers: ReadonlyMap<string, OnnxTensor>,
): (name: string | undefined) => OnnxTensor | undefined {
  const made = new Map<string, OnnxTensor>();
  for (const n of nodes)
    if (n.opType === "Constant" && typeof n.attrs.value === "object" && !Array.isArray(n.attrs.value))
      made.set(n.outputs[0]!, n.attrs.value);
  return (name) => (name ? (initializers.get(name) ?? made.get(name)) : undefined);
}

/**
 * Fuses each QuantizeLinear with the DequantizeLinear nodes that read it (same scale, zero point and
 * axis) into one float node (attributes bhsd_qmin / bhsd_qmax: the integer type's range), in place.
 * Refused, naming the node: a QuantizeLinear whose integers go anywhere else (a graph output,
 * another op), a zero point that is not a constant (its type is the integers' range), an integer
 * type other than int8 or uint8, and a DequantizeLinear of integers the graph does not hold as
 * constants. Scales may be computed (PyTorch's per-channel weight scales are).
 */
export function fuseQuantizePairs(
  nodes: GraphNode[],
  initializers: ReadonlyMap<string, OnnxTensor>,
  outputs: readonly string[],
  label: string,
): void {
  if (!nodes.some((n) => n.opType === "QuantizeLinear" || n.opType === "DequantizeLinear")) return;
  const readers = new Map<string, GraphNode[]>();
  for (const n of nodes)
    for (const i of n.inputs)
      if (i) {
        const list = readers.get(i);
        if (list) list.push(n);
        else readers.set(i, [n]);
      }
  const problems: string[] = [];
  const constant = constantsOf(nodes, initializers);
  const UINT8_ZERO: OnnxTensor = { dims: [], dataType: ONNX_DTYPE.INT64, ints: [0], intType: ONNX_DTYPE.UINT8 };
  // (an absent zero point is uint8 0)
  const zeroPoint = (name: string | undefined) => (name ? constant(name) : UINT8_ZERO);
  const sameValues = (x: OnnxTensor | undefined, y: OnnxTensor | undefined) => {
    if (!x || !y || x.dataType !== y.dataType || x.intType !== y.intType) return false;
    const p = x.f32 ?? x.ints!,
      q = y.f32 ?? y.ints!;
    // (one value, whatever its rank; else the same shape)
    if (p.length !== q.length || (p.length > 1 && x.dims.join() !== y.dims.join())) return false;
    for (let i = 0; i < p.length; i++) if (!Object.is(p[i], q[i])) return false;
    return true;
  };
  // the axis matters unless the scale is known to be one value
  const axisOf = (n: GraphNode) => (constant(n.inputs[1])?.f32?.length === 1 ? 1 : ((n.attrs.axis as number | undefined) ?? 1));
  const dropped = new Set<GraphNode>();
  for (const q of nodes) {
    if (q.opType !== "QuantizeLinear") continue;
    const where = `${label}: node ${q.name} (QuantizeLinear)`;
    const out = q.outputs[0]!;
    const users = readers.get(out) ?? [];
    const scale = constant(q.inputs[1]),
      zp = zeroPoint(q.inputs[2]);
    if (!zp?.ints || (zp.intType !== ONNX_DTYPE.INT8 && zp.intType !== ONNX_DTYPE.UINT8)) {
      problems.push(`${where}: its zero point ${q.inputs[2]} is not an int8 or uint8 constant`);
      continue;
    }
    if (outputs.includes(out) || !users.length || users.some((u) => u.opType !== "DequantizeLinear" || u.inputs[0] !== out)) {
      problems.push(
        `${where}: its integers (${out}) go ${outputs.includes(out) ? "out of the graph" : users.length ? `to ${users.filter((u) => u.opType !== "DequantizeLinear").map((u) => `${u.name} (${u.opType})`)[0] ?? "another input"}` : "nowhere"}; bhsd runs quantized (QDQ) models in float and needs each QuantizeLinear read by DequantizeLinear nodes alone`,
      );
      continue;
    }
    // (the same scale: the same value, or equal constants; a scale computed by the graph, as
    // PyTorch's per-channel weight scales are, is read at run time — folded at load where constant)
    const odd = users.find(
      (u) =>
        (u.inputs[1] !== q.inputs[1] && !sameValues(constant(u.inputs[1]), scale)) ||
        !sameValues(zeroPoint(u.inputs[2]), zp) ||
        axisOf(u) !== axisOf(q),
    );
    if (odd) {
      problems.push(`${where}: DequantizeLinear ${odd.name} reads its integers with another scale, zero point or axis`);
      continue;
    }
    const [qmin, qmax] = zp.intType === ONNX_DTYPE.INT8 ? [-128, 127] : [0, 255];
    const first = users[0]!;
    q.outputs = [first.outputs[0]!];
    q.attrs = { ...q.attrs, bhsd_qmin: qmin, bhsd_qmax: qmax };
    dropped.add(first);
    // (more readers of the same integers: the same floats)
    for (const u of users.slice(1)) {
      u.opType = "Identity";
      u.inputs = [first.outputs[0]!];
      u.attrs = {};
    }
  }
  const quantizeOutputs = new Set(nodes.filter((n) => n.opType === "QuantizeLinear").map((n) => n.outputs[0]));
  for (const d of nodes) {
    // (a QuantizeLinear's reader was fused above, or its QuantizeLinear was refused: said once)
    if (d.opType !== "DequantizeLinear" || dropped.has(d) || quantizeOutputs.has(d.inputs[0])) continue;
    const where = `${label}: node ${d.name} (DequantizeLinear)`;
    const x = constant(d.inputs[0]);
    const type = x?.intType;
    if (!x?.ints || (type !== ONNX_DTYPE.INT8 && type !== ONNX_DTYPE.UINT8 && type !== ONNX_DTYPE.INT32))
      problems.push(
        `${where}: its input ${d.inputs[0]} is not an int8, uint8 or int32 constant (or a QuantizeLinear's integers); bhsd runs quantized (QDQ) models in float`,
      );
    else if (d.inputs[2] && constant(d.inputs[2])?.intType !== type)
      problems.push(`${where}: its zero point ${d.inputs[2]} is not a constant of its integers' type`);
  }
  if (problems.length) throw new Error(`${label}: the engine cannot run this model:\n  ${problems.join("\n  ")}`);
  for (let i = nodes.length - 1; i >= 0; i--) if (dropped.has(nodes[i]!)) nodes.splice(i, 1);
}

/**
 * onnxruntime's quantize_dynamic form — DynamicQuantizeLinear on an activation, ConvInteger /
 * MatMulInteger with integer weights, Cast to float, Mul by the scales — in float: each
 * ConvInteger or MatMulInteger whose weights are integer constants becomes a Sub of the
 * activation's zero point and a float Conv or MatMul with the weights less theirs (a new float
 * initializer), in place; DynamicQuantizeLinear runs as an op giving floats that hold its
 * integers. Refused, naming the node: weights that are not int8/uint8 constants, or a weight zero
 * point that is not a constant of their type.
 */
export function lowerIntegerOps(
  nodes: GraphNode[],
  initializers: Map<string, OnnxTensor>,
  graphNames: readonly string[],
  label: string,
): void {
  if (!nodes.some((n) => n.opType === "ConvInteger" || n.opType === "MatMulInteger")) return;
  const constant = constantsOf(nodes, initializers);
  // (every name the graph has, its inputs and outputs too: a fresh one must not shadow any)
  const taken = new Set([...initializers.keys(), ...graphNames, ...nodes.flatMap((n) => [...n.inputs, ...n.outputs])]);
  const fresh = (base: string) => {
    let name = `${base}:bhsd_float`;
    for (let k = 1; taken.has(name); k++) name = `${base}:bhsd_float_${k}`;
    taken.add(name);
    return name;
  };
  const one = fresh("one");
  initializers.set(one, { dims: [], dataType: ONNX_DTYPE.FLOAT, f32: Float32Array.of(1) });
  // the float weights of each (weights, zero point, axis): a DequantizeLinear with scale 1, folded at
  // load within the model's memoryLimit like any constant, made once however many nodes share them
  const floats = new Map<string, string>();
  const problems: string[] = [];
  const out: GraphNode[] = [];
  for (const n of nodes) {
    if (n.opType !== "ConvInteger" && n.opType !== "MatMulInteger") {
      out.push(n);
      continue;
    }
    const where = `${label}: node ${n.name} (${n.opType})`;
    const [x, wName, xZero, wZero] = n.inputs;
    const w = constant(wName);
    const type = w?.intType;
    if (!w?.ints || (type !== ONNX_DTYPE.INT8 && type !== ONNX_DTYPE.UINT8)) {
      problems.push(
        `${where}: its weights ${wName} are not an int8 or uint8 constant; bhsd runs quantize_dynamic's models in float with constant weights`,
      );
      continue;
    }
    const wz = wZero ? constant(wZero) : undefined;
    if (wZero && (!wz?.ints || wz.intType !== type)) {
      problems.push(`${where}: its weight zero point ${wZero} is not a constant of its weights' type`);
      continue;
    }
    // the activation's zero point is one value (DynamicQuantizeLinear's; a per-row one of a
    // MatMulInteger's A would need another axis than a Sub broadcasts along: refused, as onnxruntime)
    const xz = xZero ? constant(xZero) : undefined;
    if (xz && (xz.f32 ?? xz.ints)!.length !== 1) {
      problems.push(`${where}: its input's zero point ${xZero} has ${(xz.f32 ?? xz.ints)!.length} values; bhsd takes one`);
      continue;
    }
    // the weights' zero point: one, or one per output channel (axis 0 of a Conv's weights, the last
    // axis of a MatMul's B — a 1-D B has one column)
    const conv = n.opType === "ConvInteger";
    const axis = conv ? 0 : w.dims.length - 1;
    const per = conv ? w.dims[0]! : w.dims.length === 1 ? 1 : w.dims[axis]!;
    const zs = wz?.ints?.length ?? 1;
    if (zs !== 1 && (zs !== per || wz!.dims.length !== 1)) {
      problems.push(`${where}: its weight zero point has ${zs} values, not 1 or ${per} (one per output channel)`);
      continue;
    }
    const key = `${wName}\u0000${wZero ?? ""}\u0000${axis}`;
    let wf = floats.get(key);
    if (!wf) {
      wf = fresh(wName!);
      floats.set(key, wf);
      out.push({
        name: `${n.name}:bhsd_weights`,
        opType: "DequantizeLinear",
        inputs: [wName!, one, ...(wZero ? [wZero] : [])],
        outputs: [wf],
        attrs: { axis },
      });
    }
    let xin = x!;
    if (xZero) {
      xin = fresh(`${x}-zero_point`);
      out.push({ name: `${n.name}:bhsd_sub_zero_point`, opType: "Sub", inputs: [x!, xZero], outputs: [xin], attrs: {} });
    }
    out.push({ ...n, opType: conv ? "Conv" : "MatMul", inputs: [xin, wf], attrs: conv ? n.attrs : {} });
  }
  if (problems.length) throw new Error(`${label}: the engine cannot run this model:\n  ${problems.join("\n  ")}`);
  nodes.splice(0, nodes.length, ...out);
}
