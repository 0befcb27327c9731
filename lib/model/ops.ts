/**
 * The executor's ops: one graph node run on its input values (runNode), the ONNX ops beyond a
 * U-Net's blocks on N-d arrays (runNd, over nd.ts), and float MatMuls on the engine's GEMM. The
 * executor (model.ts) decides where results go (its buffer pool) and what runs when.
 */
import { activeBackend } from "../backends/index.js";
import * as ops from "../ops/tensor.js";
import type { Tensor } from "../types.js";
import { allocArray } from "../volume.js";
import { ATTENTION_OP } from "./attention.js";
import { BOOLEAN_OPS } from "./cast-like.js";
import { CAST_16, CAST_FLOAT, CHANNEL_NORM_OP, type Attr, type GraphNode, type OnnxTensor } from "./graph.js";
import { roundTo16 } from "./half.js";
import { MAMBA_CONV_OP, runMambaConv, runSelectiveScan, SELECTIVE_SCAN_OP } from "./mamba.js";
import { convOutputShape, reshapeShape, squeezeShape } from "./infer.js";
import * as nd from "./nd.js";
import { ONNX_DTYPE } from "./onnx-proto.js";
import { checkSpatialRank, dropShape, liftShape, spatialOf } from "./spatial.js";

/** A value in a run: a float tensor, or integers (shapes, indices, masks) with their shape. */
export type Value = { f: Tensor } | { ints: number[]; shape: number[] };

const prod = (xs: readonly number[]) => xs.reduce((a, b) => a * b, 1);

export function constValue(t: OnnxTensor): Value {
  return t.f32 ? { f: { data: t.f32, shape: t.dims } } : { ints: t.ints!, shape: t.dims };
}

const F = (v: Value | undefined, what: string): Tensor => {
  if (!v || !("f" in v)) throw new Error(`${what} must be a float tensor`);
  return v.f;
};
const I = (v: Value | undefined, what: string): number[] => {
  if (!v) throw new Error(`${what} is missing`);
  if ("ints" in v) return v.ints;
  if (v.f.data.length <= 64) return Array.from(v.f.data);
  throw new Error(`${what} must be a small integer tensor`);
};
const triple = (a: Attr | undefined, d: number): [number, number, number] =>
  Array.isArray(a) ? (a as [number, number, number]) : [d, d, d];
const pads6 = (a: Attr | undefined, autoPad: Attr | undefined): [number, number, number, number, number, number] =>
  autoPad === "VALID" || !Array.isArray(a) ? [0, 0, 0, 0, 0, 0] : (a as [number, number, number, number, number, number]);

function reshapeView(t: Tensor, shape: number[]): Value {
  if (prod(shape) !== t.data.length) throw new Error(`cannot reshape [${t.shape}] to [${shape}]`);
  return { f: { data: t.data, shape } };
}

const sameShape = (a: number[], b: number[]) => a.length === b.length && a.every((d, i) => d === b[i]);

/**
 * A 1-D or 2-D spatial node's operand viewed on the 3-D kernels (spatial.ts): unit axes added
 * after C, the same memory. `what` names it where it has another rank than the node's.
 */
const up = (t: Tensor, sp: number, what: string): Tensor => {
  if (sp === 3) return t;
  checkSpatialRank(t.shape, sp, what);
  return { data: t.data, shape: liftShape(t.shape, sp) };
};
/** A 3-D kernel's result seen as the node's own rank again. */
const down = (t: Tensor, sp: number): Tensor => (sp === 3 ? t : { data: t.data, shape: dropShape(t.shape, sp) });

/** Runs one node. Float results are taken from `alloc` (the executor passes its pool). */
export async function runNode(
  n: GraphNode,
  a: (Value | undefined)[],
  alloc: (shape: number[]) => Tensor,
  budget: nd.Budget = nd.NO_BUDGET,
  opset = 17,
): Promise<Value[]> {
  const at = n.attrs;
  const act = n.fusedAct ? { activation: n.fusedAct.act, alpha: n.fusedAct.alpha } : {};
  switch (n.opType) {
    case "Conv": {
      // (a 1-D or 2-D node runs on the 3-D kernels: operands viewed with unit axes added)
      const sp = spatialOf(at);
      if (n.fusedNorm) {
        const fn = n.fusedNorm;
        const x = up(F(a[0], "X"), sp, "X"),
          w = up(F(a[1], "W"), sp, "W");
        // a fused residual Add (graph.ts fuseConvNormResidual): its other operand, where it has the
        // output's shape (else the Add as it was, broadcasting, after the norm)
        const res = fn.residual ? F(a[5], "the residual Add's other operand") : undefined;
        const y0 = convOutputShape(x.shape, w.shape, at);
        const inPass = res && sameShape(res.shape, dropShape(y0, sp));
        const actOpts = fn.act ? { activation: fn.act, alpha: fn.alpha } : {};
        // a fused GroupNormalization (graph.ts fuseConvNorm) as the node itself runs it: an exporter's
        // pattern holds for the rank it was exported at (γ, β per group are conv3dInstanceNorm's to take)
        if (fn.rank !== undefined && sp + 2 !== fn.rank)
          throw new RangeError(
            `input [${dropShape(y0, sp)}] is not of rank ${fn.rank}, which this GroupNorm's γ [C, 1, …] broadcasts over`,
          );
        const norm = {
          scale: F(a[3], "scale"),
          bias: F(a[4], "B"),
          eps: fn.eps,
          ...(fn.groups !== undefined ? { groups: fn.groups } : {}),
          ...(res && !inPass ? {} : actOpts),
          ...(inPass ? { residual: up(res, sp, "the residual") } : {}),
        };
        const y = await ops.conv3dInstanceNorm(x, w, a[2] ? F(a[2], "B") : null, norm, {
          stride: triple(at.strides, 1),
          dilation: triple(at.dilations, 1),
          padding: pads6(at.pads, at.auto_pad),
          groups: (at.group as number) ?? 1,
          ...(res && !inPass ? {} : { alloc }),
        });
        if (!res || inPass) return [{ f: down(y, sp) }];
        return [{ f: await ops.add(down(y, sp), res, { alloc, ...actOpts }) }];
      }
      if (n.fusedAdd) {
        // a fused residual Add (graph.ts fuseConvResidual): in the convolution's call where the other
        // operand has the output's shape, else the Add as it was (broadcasting) after it
        const fa = n.fusedAdd;
        const x = up(F(a[0], "X"), sp, "X"),
          w = up(F(a[1], "W"), sp, "W"),
          other = a[3];
        const res =
          other && "f" in other && sameShape(other.f.shape, dropShape(convOutputShape(x.shape, w.shape, at), sp)) ? other.f : undefined;
        const y = await ops.conv3d(x, w, a[2] ? F(a[2], "B") : null, {
          stride: triple(at.strides, 1),
          dilation: triple(at.dilations, 1),
          padding: pads6(at.pads, at.auto_pad),
          groups: (at.group as number) ?? 1,
          ...(res ? { alloc, residual: up(res, sp, "the residual"), ...(fa.act ? { activation: fa.act, alpha: fa.alpha } : {}) } : {}),
        });
        if (res) return [{ f: down(y, sp) }];
        // the Add as it was (broadcasting, integers, more than 6 axes), after the convolution
        const add: GraphNode = {
          name: n.name,
          opType: "Add",
          inputs: ["", ""],
          outputs: [fa.output],
          attrs: {},
          ...(fa.act ? { fusedAct: { act: fa.act, alpha: fa.alpha, output: fa.output } } : {}),
        };
        return runNode(add, [{ f: down(y, sp) }, other], alloc, budget, opset);
      }
      return [
        {
          f: down(
            await ops.conv3d(up(F(a[0], "X"), sp, "X"), up(F(a[1], "W"), sp, "W"), a[2] ? F(a[2], "B") : null, {
              stride: triple(at.strides, 1),
              dilation: triple(at.dilations, 1),
              padding: pads6(at.pads, at.auto_pad),
              groups: (at.group as number) ?? 1,
              alloc,
              ...act,
            }),
            sp,
          ),
        },
      ];
    }
    case "ConvTranspose": {
      const sp = spatialOf(at);
      return [
        {
          f: down(
            await ops.convTranspose3d(up(F(a[0], "X"), sp, "X"), up(F(a[1], "W"), sp, "W"), a[2] ? F(a[2], "B") : null, {
              stride: triple(at.strides, 1),
              dilation: triple(at.dilations, 1),
              padding: pads6(at.pads, at.auto_pad),
              outputPadding: triple(at.output_padding, 0),
              groups: (at.group as number) ?? 1,
              alloc,
            }),
            sp,
          ),
        },
      ];
    }
    case "InstanceNormalization":
      return [
        {
          f: await ops.instanceNorm(F(a[0], "input"), F(a[1], "scale"), F(a[2], "B"), {
            eps: (at.epsilon as number) ?? 1e-5,
            alloc,
            ...act,
          }),
        },
      ];
    case "GroupNormalization": {
      const x = F(a[0], "X");
      // a fused exporter pattern (graph.ts fuseGroupNorm) holds for inputs of the rank it was exported at
      if (at.bhsd_rank !== undefined && x.shape.length !== at.bhsd_rank)
        throw new RangeError(
          `input [${x.shape}] is not of rank ${at.bhsd_rank as number}, which this GroupNorm's γ [C, 1, …] broadcasts over`,
        );
      return [
        {
          f: await ops.groupNorm(x, F(a[1], "scale"), F(a[2], "bias"), {
            groups: at.num_groups as number,
            eps: (at.epsilon as number | undefined) ?? 1e-5,
            alloc,
            ...act,
          }),
        },
      ];
    }
    case "BatchNormalization":
      return [
        {
          f: await ops.batchNorm(F(a[0], "X"), F(a[1], "scale"), F(a[2], "B"), F(a[3], "mean"), F(a[4], "var"), {
            eps: (at.epsilon as number) ?? 1e-5,
            alloc,
          }),
        },
      ];
    case "Relu":
      return [{ f: await ops.relu(F(a[0], "X"), { alloc }) }];
    case "LeakyRelu":
      return [{ f: await ops.leakyRelu(F(a[0], "X"), { alpha: (at.alpha as number) ?? 0.01, alloc }) }];
    case "Sigmoid":
      return [{ f: await ops.sigmoid(F(a[0], "X"), { alloc }) }];
    case "LayerNormalization": {
      // one group over the trailing axes of each row: the engine's group norm on [rows, inner, 1],
      // scale and bias per element of the row (or one value); not when Mean/InvStdDev are wanted
      const float = (v: Value | undefined) => (v && "f" in v ? v.f : undefined);
      const x = float(a[0]),
        sc = float(a[1]),
        bi = float(a[2]);
      if (x && (sc || !a[1]) && (bi || !a[2]) && n.outputs.filter(Boolean).length <= 1) {
        const axis = nd.normAxis((at.axis as number | undefined) ?? -1, x.shape.length, "LayerNormalization axis");
        const inner = prod(x.shape.slice(axis));
        const rows = x.data.length / inner;
        const full = (t: Tensor) =>
          t.data.length === inner ? t : t.data.length === 1 ? { data: new Float32Array(inner).fill(t.data[0]!), shape: [inner] } : null;
        // (no scale: fuseLayerNorm's norm without an affine map)
        const s = sc ? full(sc) : { data: new Float32Array(inner).fill(1), shape: [inner] },
          b = bi ? full(bi) : null;
        if (s && (b || !bi) && Number.isSafeInteger(rows)) {
          const out = alloc([...x.shape]);
          await ops.groupNorm({ data: x.data, shape: [rows, inner, 1] }, s, b, {
            groups: 1,
            eps: (at.epsilon as number | undefined) ?? 1e-5,
            out: { data: out.data, shape: [rows, inner, 1] },
          });
          return [{ f: out }];
        }
      }
      return runNd(n, a, budget, opset);
    }
    case "Gelu": {
      // ONNX Gelu (opset 20) or the fused exported pattern (its divisor in bhsd_div)
      if (!a[0] || !("f" in a[0])) return runNd(n, a, budget, opset);
      const tanh = at.approximate === "tanh";
      const divisor = tanh ? undefined : ((at.bhsd_div as number | undefined) ?? Math.SQRT2);
      return [{ f: await ops.gelu(a[0].f, { approximate: tanh ? "tanh" : "none", ...(divisor !== undefined ? { divisor } : {}), alloc }) }];
    }
    case "PRelu": {
      const x = F(a[0], "X"),
        s = F(a[1], "slope");
      // one slope, or one per channel placed on axis 1 ([C, 1, 1] as PyTorch exports it): the
      // per-channel kernel; any other slope broadcasts as ONNX says ([3] on [1, 3, 3] is along the last axis)
      if (preluPerChannel(x.shape, s)) return [{ f: await ops.prelu(x, { data: s.data, shape: [s.data.length] }, { alloc }) }];
      if (!nd.broadcastsTo(s.shape, x.shape)) throw new RangeError(`PRelu: slope [${s.shape}] does not broadcast to X [${x.shape}]`);
      return [
        fromNd(nd.mapN([toNd(a[0], "X"), toNd(a[1], "slope")], false, (v, sl) => (v < 0 ? Math.fround(v * sl) : v), budget, "PRelu")),
      ];
    }
    case "Add":
    case "Mul": {
      // an Add's fused activation (a residual block's Add → LeakyRelu) is applied as each sum is stored
      // (an empty tensor, a Range of no values, is broadcast in JavaScript: the kernels take sizes ≥ 1)
      if (
        a[0] &&
        a[1] &&
        "f" in a[0] &&
        "f" in a[1] &&
        Math.max(a[0].f.shape.length, a[1].f.shape.length) <= 6 &&
        a[0].f.data.length > 0 &&
        a[1].f.data.length > 0
      ) {
        return [{ f: await (n.opType === "Add" ? ops.add : ops.mul)(a[0].f, a[1].f, { alloc, ...act }) }];
      }
      const [r] = runNd(n, a, budget, opset);
      if (!n.fusedAct) return [r!];
      // the fused activation on the N-d result: the same elementwise functions as Relu/LeakyRelu nodes
      const fa = n.fusedAct;
      const f = fa.act === "relu" ? UNARY.Relu! : UNARY.LeakyRelu!;
      const v = toNd(r, "sum");
      return [fromNd(nd.mapN([v], v.int && fa.act === "relu", (t) => f(t, { alpha: fa.alpha }), budget, `${n.opType} activation`))];
    }
    case "Concat": {
      const axis = (at.axis as number) ?? 0;
      // (an empty input adds nothing: timm's EVA concatenates its 0 prefix tokens, q[:, :, :0], to the rest)
      const parts = a.filter((v) => !(v && "f" in v && v.f.data.length === 0));
      if (parts.length && parts.every((v) => v && "f" in v))
        return [
          {
            f: await ops.concat(
              parts.map((v) => (v as { f: Tensor }).f),
              axis,
              { alloc },
            ),
          },
        ];
      return [
        fromNd(
          nd.concat(
            a.map((v, k) => toNd(v, `input ${k}`)),
            axis,
            budget,
            "Concat",
          ),
        ),
      ];
    }
    case "MaxPool":
    case "AveragePool": {
      const o = {
        kernel: triple(at.kernel_shape, 1),
        stride: triple(at.strides, 1),
        dilation: triple(at.dilations, 1),
        padding: pads6(at.pads, at.auto_pad),
        ceilMode: at.ceil_mode === 1,
        countIncludePad: at.count_include_pad === 1,
        alloc,
      };
      const sp = spatialOf(at);
      return [{ f: down(await (n.opType === "MaxPool" ? ops.maxPool3d : ops.avgPool3d)(up(F(a[0], "X"), sp, "X"), o), sp) }];
    }
    case "Resize": {
      // over one, two or three spatial axes (the fewer on the 3-D op with unit axes added)
      const x0 = F(a[0], "X"),
        r = x0.shape.length;
      if (r < 3 || r > 5) throw new RangeError(`input [${x0.shape}] must be [N, C, ...1 to 3 spatial axes] for Resize`);
      const sp = r - 2,
        x = up(x0, sp, "X");
      const mode = ((at.mode as string) ?? "nearest") as "nearest" | "linear";
      const common = {
        mode,
        coordinateTransformationMode: ((at.coordinate_transformation_mode as string) ?? "half_pixel") as "half_pixel",
        nearestMode: ((at.nearest_mode as string) ?? "round_prefer_floor") as "floor",
        alloc,
      };
      const sizes = a[3] ? I(a[3], "sizes") : [];
      if (sizes.length) {
        if (sizes.length !== r) throw new Error(`Resize needs ${r} sizes for its input [${x0.shape}], got [${sizes}]`);
        if (sizes[0] !== x.shape[0] || sizes[1] !== x.shape[1]) throw new Error("Resize may change only the spatial axes");
        const s3 = liftShape(sizes, sp).slice(2) as [number, number, number];
        return [{ f: down(await ops.resize(x, { ...common, sizes: s3 }), sp) }];
      }
      const scales = a[2] ? ("f" in a[2] ? Array.from(a[2].f.data) : a[2].ints) : [];
      if (scales.length !== r || scales[0] !== 1 || scales[1] !== 1)
        throw new Error(`Resize needs ${r} scales (1 for N and C) or ${r} sizes for its input [${x0.shape}]`);
      const c3 = liftShape(scales, sp).slice(2) as [number, number, number];
      return [{ f: down(await ops.resize(x, { ...common, scales: c3 }), sp) }];
    }
    case "Softmax": {
      const x = F(a[0], "input");
      if (opset < 13) {
        // before opset 13 the input is taken as 2-D at `axis` (default 1): one softmax over all
        // the axes from it on. (PyTorch's exports put the axis last, where the two agree.)
        const ax = nd.normAxis((at.axis as number | undefined) ?? 1, x.shape.length, "Softmax axis");
        const flat = { data: x.data, shape: [prod(x.shape.slice(0, ax)), prod(x.shape.slice(ax))] };
        const y = await ops.softmax(flat, { axis: 1, alloc });
        return [reshapeView(y, [...x.shape])];
      }
      return [{ f: await ops.softmax(x, { axis: (at.axis as number) ?? -1, alloc }) }];
    }
    case "ArgMax": {
      const r = await ops.argmax(F(a[0], "data"), { axis: (at.axis as number) ?? 0, keepdims: (at.keepdims as number | undefined) !== 0 });
      const t = alloc(r.shape);
      t.data.set(r.data);
      return [{ f: t }];
    }
    case "Identity":
    case "Dropout":
      return [a[0]!];
    case "Constant": {
      const v = at.value as OnnxTensor | undefined;
      if (v) return [constValue(v)];
      if (at.value_float !== undefined) return [{ f: { data: Float32Array.of(at.value_float as number), shape: [] } }];
      if (at.value_floats !== undefined)
        return [{ f: { data: Float32Array.from(at.value_floats as number[]), shape: [(at.value_floats as number[]).length] } }];
      if (at.value_int !== undefined) return [{ ints: [at.value_int as number], shape: [] }];
      if (at.value_ints !== undefined) return [{ ints: at.value_ints as number[], shape: [(at.value_ints as number[]).length] }];
      throw new Error("Constant without a value");
    }
    case "Shape": {
      const s = shapeOf(a[0]!);
      const r = s.slice((at.start as number) ?? 0, (at.end as number) ?? s.length);
      return [{ ints: r, shape: [r.length] }];
    }
    case "Gather": {
      const r = nd.gather(toNd(a[0], "data"), toNd(a[1], "indices"), (at.axis as number | undefined) ?? 0, budget, "Gather");
      return [fromNd(r)];
    }
    case "Unsqueeze":
    case "Squeeze": {
      const axes = a[1] ? I(a[1], "axes") : ((at.axes as number[]) ?? []);
      const v = a[0]!;
      const ns = squeezeShape(shapeOf(v), axes, n.opType === "Unsqueeze");
      return ["f" in v ? reshapeView(v.f, ns) : { ints: v.ints, shape: ns }];
    }
    case "CastLike":
    case "Cast": {
      const v = a[0]!;
      let to = at.to as number;
      if (n.opType === "CastLike") {
        // (a CastLike whose target's type the model declares was made a Cast at load)
        if (!a[1] || !("f" in a[1]))
          throw new Error(
            `CastLike ${n.name}: its target ${n.inputs[1]} is an integer tensor whose width the model does not declare (value_info); bhsd casts to declared integer types only`,
          );
        to = ONNX_DTYPE.FLOAT;
      }
      if (CAST_FLOAT.has(to as 1))
        return [
          "f" in v
            ? v
            : { f: { data: allocFloats(v.ints.length, budget, "Cast").map((_, i) => v.ints[i]!) as Float32Array, shape: v.shape } },
        ];
      if (CAST_16.has(to)) {
        // float16 / bfloat16: the values rounded to the type, kept as float32 (half.ts)
        const src = "f" in v ? v.f.data : Float32Array.from(v.ints);
        const out = alloc("f" in v ? [...v.f.shape] : [...v.shape]);
        roundTo16(src, out.data, to === ONNX_DTYPE.BFLOAT16);
        return [{ f: out }];
      }
      // integer types: truncation toward zero, then wrapped into the type's range as C casts do
      const wrap = intWrap(to);
      const src = "f" in v ? v.f.data : v.ints;
      if (src.length > 1 << 24)
        throw new RangeError(`Cast to an integer type of ${src.length} values: integer tensors are shape glue here`);
      budget.check(src.length * 8, "Cast");
      nd.heapRoom(src.length, "Cast");
      const ints = Array.from(src, (x) => {
        // bool: any non-zero, NaN and ±Inf included (as C's and onnxruntime's); + 0: no -0 among integers
        if (to === 9) return x !== 0 ? 1 : 0;
        if (!Number.isFinite(x)) throw new RangeError(`Cast of ${x} to an integer type`);
        return wrap(Math.trunc(x) + 0);
      });
      return [{ ints, shape: shapeOf(v) }];
    }
    case "Slice": {
      const x = toNd(a[0], "data");
      const starts = I(a[1], "starts"),
        ends = I(a[2], "ends");
      const axes = a[3] ? I(a[3], "axes") : undefined,
        steps = a[4] ? I(a[4], "steps") : undefined;
      return [fromNd(nd.slice(x, starts, ends, axes, steps, budget, "Slice"))];
    }
    case "Reshape": {
      const x = a[0]!;
      const shape = reshapeShape(shapeOf(x), I(a[1], "shape"), !!at.allowzero);
      return ["f" in x ? reshapeView(x.f, shape) : { ints: x.ints, shape }];
    }
    case "Flatten": {
      const x = F(a[0], "input");
      const ax = (at.axis as number) ?? 1;
      return [reshapeView(x, [prod(x.shape.slice(0, ax)), prod(x.shape.slice(ax))])];
    }
    case ATTENTION_OP:
      return runAttention(n, a, alloc);
    case CHANNEL_NORM_OP:
      return [await channelNorm(n, a, budget, alloc)];
    case "Transpose": {
      // the last two axes swapped, on a float tensor of some size: the backend's tiled kernel
      const x = a[0];
      const p = at.perm as number[] | undefined;
      const be = activeBackend();
      if (x && "f" in x && p && be.transposeLast2) {
        const s = x.f.shape,
          r = s.length;
        const swap = r >= 2 && p.length === r && p.every((v, i) => v === (i < r - 2 ? i : i === r - 2 ? r - 1 : r - 2));
        if (swap && x.f.data.length >= 1 << 16) {
          const out = alloc([...s.slice(0, r - 2), s[r - 1]!, s[r - 2]!]);
          await be.transposeLast2(x.f.data, x.f.data.length / (s[r - 2]! * s[r - 1]!), s[r - 2]!, s[r - 1]!, out.data);
          return [{ f: out }];
        }
      }
      return runNd(n, a, budget, opset);
    }
    case MAMBA_CONV_OP:
      return [{ f: await runMambaConv(F(a[0], "xz"), F(a[1], "weight"), a[2] ? F(a[2], "bias") : undefined, alloc) }];
    case SELECTIVE_SCAN_OP: {
      const [u, delta, aLog, xDbl, d, xz] = ["u", "delta", "A_log", "x_dbl", "D", "xz"].map((w, i) => F(a[i], w));
      return [{ f: await runSelectiveScan(u!, delta!, aLog!, xDbl!, d!, xz!, alloc) }];
    }
    case "MatMul": {
      // (a third input: the bias of a MatMul → Add that fuseMatMulBias joined)
      const bias = a[2] ? F(a[2], "bias") : undefined;
      const r = await matmulOnEngine(a[0], a[1], budget, alloc, bias?.data);
      if (r) return [r];
      const [y] = runNd({ ...n, inputs: n.inputs.slice(0, 2) }, a.slice(0, 2), budget, opset);
      return bias ? [fromNd(nd.mapN([toNd(y, "product"), toNd(a[2], "bias")], false, (p, q) => p + q, budget, "MatMul"))] : [y!];
    }
    case "Einsum": {
      // a batched matrix product (attention) goes to the engine's GEMM, all heads in one call
      if (a.length === 2 && a[0] && a[1] && "f" in a[0] && "f" in a[1]) {
        const mm = nd.einsumAsMatmul(String(at.equation), toNd(a[0], "A"), toNd(a[1], "B"), budget, "Einsum");
        const r = mm && (await matmulOnEngine(fromNd(mm[0]), fromNd(mm[1]), budget, alloc));
        if (r) return [r];
      }
      return runNd(n, a, budget, opset);
    }
    default:
      return runNd(n, a, budget, opset);
  }
}

/**
 * A LayerNorm over the channels (graph.ts's CHANNEL_NORM_OP) of x [N, C, …]: each position's C
 * values less their mean, over the root of their mean square plus ε (in double, rounded once),
 * then γ and β — per channel, or (a constant that does not vary along the channels alone) broadcast
 * as the Mul and Add it replaced. Three passes over x, channel-major, instead of the eight steps'
 * strided reductions and full-size intermediates (Primus's decoder at 16×64×64: 0.3 s in nd's).
 */
async function channelNorm(n: GraphNode, a: (Value | undefined)[], budget: nd.Budget, alloc: (shape: number[]) => Tensor): Promise<Value> {
  const x = F(a[0], "X");
  const r = x.shape.length;
  if (r < 2) throw new RangeError(`X of rank ${r}: a norm over axis 1 needs at least 2 axes`);
  const N = x.shape[0]!,
    C = x.shape[1]!,
    S = prod(x.shape.slice(2));
  const eps = (n.attrs.epsilon as number | undefined) ?? 1e-5;
  /** γ or β as one value per channel, where it is one (else null: broadcast below). */
  const perChannel = (v: Value | undefined, what: string): Float32Array | null | undefined => {
    if (!v) return undefined;
    const t = F(v, what);
    if (n.attrs.channel_affine) {
      // (a LayerNormalization's one value is every channel's)
      if (t.data.length === C) return t.data;
      if (t.data.length === 1) return new Float32Array(C).fill(t.data[0]!);
      throw new RangeError(`${what} has ${t.data.length} values for ${C} channels`);
    }
    const k = t.shape.length;
    if (k > r || t.data.length !== C) return null;
    return t.shape.every((d, i) => d === 1 || (r - k + i === 1 && d === C)) ? t.data : null;
  };
  const g = perChannel(a[1], "scale"),
    b = perChannel(a[2], "bias");
  // (a γ or β that broadcasts otherwise: normalised here, then the Mul and the Add as the graph had them)
  const affine = g !== null && b !== null;
  const out = alloc([...x.shape]);
  const be = activeBackend();
  if (affine && be.channelNorm && N * C * S > 0) {
    await be.channelNorm(x.data, N, C, S, g ?? null, b ?? null, eps, out.data);
    return { f: out };
  }
  const src = x.data,
    dst = out.data;
  const mean = new Float64Array(S),
    sd = new Float64Array(S);
  for (let i = 0; i < N; i++) {
    const base = i * C * S;
    mean.fill(0);
    sd.fill(0);
    for (let c = 0; c < C; c++) for (let p = 0, o = base + c * S; p < S; p++) mean[p] += src[o + p]!;
    for (let p = 0; p < S; p++) mean[p] /= C;
    for (let c = 0; c < C; c++)
      for (let p = 0, o = base + c * S; p < S; p++) {
        const d = src[o + p]! - mean[p]!;
        sd[p] += d * d;
      }
    for (let p = 0; p < S; p++) sd[p] = Math.sqrt(sd[p]! / C + eps);
    for (let c = 0; c < C; c++) {
      const gc = affine && g ? g[c]! : 1,
        bc = affine && b ? b[c]! : 0;
      for (let p = 0, o = base + c * S; p < S; p++) dst[o + p] = Math.fround((src[o + p]! - mean[p]!) / sd[p]!) * gc + bc;
    }
  }
  if (affine) return { f: out };
  let y: nd.Nd = { data: dst, shape: [...x.shape], int: false };
  if (a[1]) y = nd.mapN([y, toNd(a[1], "scale")], false, (p, q) => p * q, budget, "ChannelNorm");
  if (a[2]) y = nd.mapN([y, toNd(a[2], "bias")], false, (p, q) => p + q, budget, "ChannelNorm");
  return fromNd(y);
}

/**
 * A fused self-attention (attention.ts) on the backend's kernel. (A model runs the nodes it
 * replaced instead where the backend has none: see Model's plans.)
 */
async function runAttention(n: GraphNode, a: (Value | undefined)[], alloc: (shape: number[]) => Tensor): Promise<Value[]> {
  const fa = n.attention!;
  const [B, N, H, hd] = fa.shape;
  const qkv = F(a[0], "qkv");
  if (qkv.data.length !== B * N * 3 * H * hd) throw new Error(`cannot reshape [${qkv.shape}] to [${[B, N, 3, H, hd]}]`);
  const be = activeBackend();
  if (!be.attention) throw new Error(`the ${be.name} backend has no fused attention kernel`);
  const out = alloc([...fa.outShape]);
  const extras = fa.extras.map((e): [Float32Array, Float64Array, number] => [
    F(a[n.inputs.indexOf(e.name)], e.name).data,
    e.offsets,
    e.rowStride,
  ]);
  if (fa.rope && !be.attentionRope) throw new Error(`the ${be.name} backend's attention kernel takes no rotary embedding`);
  await be.attention(qkv.data, [B, N, H, hd], fa.scale, fa.scaleQ, extras, out.data, fa.rope);
  return [{ f: out }];
}

/**
 * A float MatMul [..., M, K] × [K, N] (a transformer's Linear layers, most of its time) on the
 * engine, with no copy, into the run's pool: the backend's GEMM where it has one (native), else a
 * 1×1×1 convolution whose weights are A ([rows, K]: one output channel per row) and whose input is
 * B (K channels of N voxels), which writes out[r][n] = Σₖ A[r][k]·B[k][n], AB in row-major order.
 * A batched B [..., K, N] (attention's heads) is one call: a batched GEMM, or a grouped convolution
 * with a group per item; batches that broadcast are repeated to every item first. Integers and
 * small products stay on nd.matmul.
 */
async function matmulOnEngine(
  av: Value | undefined,
  bv: Value | undefined,
  budget: nd.Budget,
  alloc: (shape: number[]) => Tensor,
  /** One value per column of the product, added to it (checked here). */
  bias?: Float32Array,
): Promise<Value | undefined> {
  if (!av || !bv || !("f" in av) || !("f" in bv)) return undefined;
  const A = av.f,
    B = bv.f;
  const ra = A.shape.length,
    rb = B.shape.length;
  if (ra < 2 || rb < 2) return undefined;
  const [K, N] = B.shape.slice(-2) as [number, number];
  const M = A.shape[ra - 2]!;
  if (A.shape[ra - 1] !== K) return undefined;
  const batch = nd.broadcastShapes([A.shape.slice(0, -2), B.shape.slice(0, -2)], "MatMul");
  const batches = prod(batch);
  // B of one matrix ([K, N], or [1, 1, K, N] under A's batches) takes every row of A at once
  const oneB = prod(B.shape.slice(0, -2)) === 1;
  const rows = oneB ? batches * M : M;
  if (bias && bias.length !== N) throw new RangeError(`a bias of ${bias.length} values for a product of ${N} columns`);
  const be = activeBackend();
  // a few rows of a large product (SwinUNETR's last patch merging at a 64³ window: 8 tokens × 3072
  // × 768, 0.1 s in nd.matmul) go to a backend GEMM all the same
  if ((K < 16 || N < 16 || rows < 16) && !(be.gemm && rows * K * N >= 1 << 18)) return undefined;
  budget.check(batches * M * N * 4, "MatMul output");
  // Batches that broadcast (attention's keys shared by the heads, [1, 8, L, d] × [1, 1, d, L]; a 2-D
  // A before a batched B): the operand of fewer items is repeated to every item first, a copy of
  // K·(M or N) values an item beside the product's M·K·N multiply-adds, so that one batched GEMM
  // takes them (before: nd.matmul's loop in JavaScript, refused past 2^30 multiply-adds)
  const whole = (x: Tensor): Float32Array =>
    prod(x.shape.slice(0, -2)) === batches
      ? x.data
      : (nd.mapN([{ data: x.data, shape: x.shape, int: false }], false, (v) => v, budget, "MatMul", [...batch, ...x.shape.slice(-2)])
          .data as Float32Array);
  const a = oneB ? A.data : whole(A),
    b = oneB ? B.data : whole(B);
  // from the run's pool (engine memory on huge pages, reused across runs): a fresh array's first
  // touch of its pages cost more than the GEMM of a small projection
  const yt = alloc([...batch, M, N]);
  const y = yt.data;
  /** The bias added after the product, where the GEMM did not add it. */
  const addBias = () => {
    if (!bias) return;
    for (let o = 0; o < y.length; o += N) for (let j = 0; j < N; j++) y[o + j]! += bias[j]!;
  };
  if (be.gemm) {
    // the backend's own GEMM (native: AVX-512 8×32 / AVX2 6×16 micro-kernels, Goto blocking)
    if (bias && be.gemmBias) await be.gemm(a, b, oneB ? 1 : batches, rows, K, N, !oneB, y, bias);
    else {
      await be.gemm(a, b, oneB ? 1 : batches, rows, K, N, !oneB, y);
      addBias();
    }
    return { f: yt };
  }
  // B's N columns seen as rows of 128 or 64 voxels: the convolution gives each thread tasks of a
  // few rows (one row of N voxels was one task with an N-wide panel: 58–89 → 79–114 GFLOP/s)
  const w = [128, 64].find((d) => N % d === 0 && N > d) ?? N;
  // a batched B: one grouped convolution, a group per batch item (B's items are its groups' input
  // channels, A's its groups' weights, each in place), instead of a call per item
  const groups = oneB ? 1 : batches;
  await ops.conv3d({ data: b, shape: [1, groups * K, 1, N / w, w] }, { data: a, shape: [groups * rows, K, 1, 1, 1] }, null, {
    groups,
    out: { data: y, shape: [1, groups * rows, 1, N / w, w] },
  });
  addBias();
  return { f: yt };
}

/**
 * Whether a PRelu's slope is one value or one per channel on axis 1 (the backend's kernel); any
 * other slope broadcasts in JavaScript (the model's runner then keeps host copies current).
 */
export function preluPerChannel(xShape: readonly number[], s: Tensor): boolean {
  const k = s.shape.length,
    r = xShape.length;
  const C = r > 1 ? xShape[1]! : 1;
  return s.data.length === 1 || (k <= r && s.data.length === C && s.shape.every((d, i) => d === 1 || (r - k + i === 1 && d === C)));
}

/** The executor's view of a value as an N-d array (float32 data, or integer numbers). */
function toNd(v: Value | undefined, what: string): nd.Nd {
  if (!v) throw new Error(`${what} is missing`);
  return "f" in v ? { data: v.f.data, shape: v.f.shape, int: false } : { data: v.ints, shape: v.shape, int: true };
}
function fromNd(x: nd.Nd): Value {
  return x.int ? { ints: x.data as number[], shape: x.shape } : { f: { data: x.data as Float32Array, shape: x.shape } };
}
function allocFloats(n: number, budget: nd.Budget, what: string): Float32Array {
  budget.check(n * 4, what);
  return allocArray("float32", n, what) as Float32Array;
}
/** C's conversion of an integer into each ONNX integer type. */
function intWrap(to: number): (x: number) => number {
  switch (to) {
    case 2:
      return (x) => x & 0xff;
    case 3:
      return (x) => (x << 24) >> 24;
    case 4:
      return (x) => x & 0xffff;
    case 5:
      return (x) => (x << 16) >> 16;
    case 6:
      return (x) => x | 0;
    case 12:
      return (x) => x >>> 0;
    case 9:
      return (x) => (x !== 0 ? 1 : 0);
    default:
      return (x) => x; // int64/uint64: exact below 2^53
  }
}

const UNARY: Record<string, (x: number, at: Record<string, Attr>) => number> = {
  Sqrt: (x) => Math.sqrt(x),
  Exp: (x) => Math.exp(x),
  Log: (x) => Math.log(x),
  Tanh: (x) => Math.tanh(x),
  Erf: (x) => nd.erf(x),
  Neg: (x) => -x,
  Abs: (x) => Math.abs(x),
  Reciprocal: (x) => 1 / x,
  Floor: (x) => Math.floor(x),
  Ceil: (x) => Math.ceil(x),
  Round: (x) => {
    const f = Math.floor(x),
      d = x - f;
    return d > 0.5 ? f + 1 : d < 0.5 ? f : f % 2 === 0 ? f : f + 1;
  },
  Sign: (x) => Math.sign(x),
  Softplus: (x) => (x > 20 ? x : Math.log1p(Math.exp(x))),
  Elu: (x, at) => (x >= 0 ? x : ((at.alpha as number | undefined) ?? 1) * Math.expm1(x)),
  Selu: (x, at) =>
    ((at.gamma as number | undefined) ?? 1.0507009873554805) *
    (x > 0 ? x : ((at.alpha as number | undefined) ?? 1.6732632423543772) * Math.expm1(x)),
  HardSigmoid: (x, at) =>
    Math.max(0, Math.min(1, ((at.alpha as number | undefined) ?? 0.2) * x + ((at.beta as number | undefined) ?? 0.5))),
  Gelu: (x, at) =>
    at.approximate === "tanh"
      ? 0.5 * x * (1 + Math.tanh(Math.sqrt(2 / Math.PI) * (x + 0.044715 * x * x * x)))
      : 0.5 * x * (1 + nd.erf(x / ((at.bhsd_div as number | undefined) ?? Math.SQRT2))),
  Not: (x) => (x ? 0 : 1),
  // (what classifiers, SE blocks and positional encodings add; each in double, stored as float32)
  Sin: (x) => Math.sin(x),
  Cos: (x) => Math.cos(x),
  Tan: (x) => Math.tan(x),
  Asin: (x) => Math.asin(x),
  Acos: (x) => Math.acos(x),
  Atan: (x) => Math.atan(x),
  Sinh: (x) => Math.sinh(x),
  Cosh: (x) => Math.cosh(x),
  HardSwish: (x) => x * Math.max(0, Math.min(1, x / 6 + 0.5)),
  Mish: (x) => x * Math.tanh(x > 20 ? x : Math.log1p(Math.exp(x))),
  Softsign: (x) => x / (1 + Math.abs(x)),
  Celu: (x, at) => {
    const al = (at.alpha as number | undefined) ?? 1;
    return Math.max(0, x) + Math.min(0, al * Math.expm1(x / al));
  },
  ThresholdedRelu: (x, at) => (x > ((at.alpha as number | undefined) ?? 1) ? x : 0),
  IsNaN: (x) => (Number.isNaN(x) ? 1 : 0),
  IsInf: (x, at) =>
    (x === Infinity && (at.detect_positive as number | undefined) !== 0) ||
    (x === -Infinity && (at.detect_negative as number | undefined) !== 0)
      ? 1
      : 0,
  Relu: (x) => (x > 0 ? x : 0),
  Sigmoid: (x) => 1 / (1 + Math.exp(-x)),
  LeakyRelu: (x, at) => (x >= 0 ? x : ((at.alpha as number | undefined) ?? 0.01) * x),
};
const BINARY: Record<string, (x: number, y: number, int: boolean) => number> = {
  Add: (x, y) => x + y,
  Sub: (x, y) => x - y,
  Mul: (x, y) => x * y,
  Div: (x, y, int) => (int ? (y === 0 ? 0 : Math.trunc(x / y)) : x / y),
  Pow: (x, y) => Math.pow(x, y),
  // fmod = 0 (the default, integers): the remainder takes the divisor's sign, as Python's %
  Mod: (x, y) => (y === 0 ? NaN : x - Math.floor(x / y) * y),
  Max: (x, y) => (Number.isNaN(x) || Number.isNaN(y) ? NaN : Math.max(x, y)),
  Min: (x, y) => (Number.isNaN(x) || Number.isNaN(y) ? NaN : Math.min(x, y)),
  Sum: (x, y) => x + y,
  Equal: (x, y) => (x === y ? 1 : 0),
  Less: (x, y) => (x < y ? 1 : 0),
  Greater: (x, y) => (x > y ? 1 : 0),
  LessOrEqual: (x, y) => (x <= y ? 1 : 0),
  GreaterOrEqual: (x, y) => (x >= y ? 1 : 0),
  And: (x, y) => (x && y ? 1 : 0),
  Or: (x, y) => (x || y ? 1 : 0),
  Xor: (x, y) => (!x !== !y ? 1 : 0),
};

/**
 * A quantizer's rounding to an integer, halves to even: 1.5·2^52 added and taken away (exact for
 * |r| < 2^51; past that r is far outside any integer type's range and saturates either way).
 */
const toGridInt = (r: number) => r + 6755399441055744 - 6755399441055744;

/**
 * QuantizeLinear then DequantizeLinear of one value (quant.ts): t / scale rounded to the grid,
 * plus the zero point, saturated to [lo, hi], and back, in float32. NaN (a NaN input, or 0 / 0
 * with a zero scale) saturates to the low end, as onnxruntime's conversion of it to an integer does.
 */
function fakeQuantize(t: number, sc: number, z: number, lo: number, hi: number): number {
  const r = Math.fround(t / sc);
  const q = r !== r ? lo : toGridInt(r) + z;
  return Math.fround(((q < lo ? lo : q > hi ? hi : q) - z) * sc);
}

/** The ops of real exports beyond a U-Net's blocks, on N-d arrays (see nd.ts). */
function runNd(n: GraphNode, a: (Value | undefined)[], budget: nd.Budget, opset: number): Value[] {
  const at = n.attrs,
    op = n.opType,
    what = op;
  const x = () => toNd(a[0], "input");
  if (op in UNARY) {
    const f = UNARY[op]!,
      v = x();
    return [
      fromNd(nd.mapN([v], BOOLEAN_OPS.has(op) || (v.int && ["Neg", "Abs", "Sign", "Relu"].includes(op)), (t) => f(t, at), budget, what)),
    ];
  }
  if (op in BINARY) {
    const ins = a.filter((v): v is Value => v !== undefined).map((v, k) => toNd(v, `input ${k}`));
    if (ins.length === 0) throw new Error("needs at least one input");
    const f = op === "Mod" && at.fmod ? (p: number, q: number) => p % q : BINARY[op]!; // fmod = 1: C's fmod (the dividend's sign)
    const int = ins.every((v) => v.int);
    let r = ins[0]!;
    for (let k = 1; k < ins.length; k++) r = nd.mapN([r, ins[k]!], BOOLEAN_OPS.has(op) || int, (p, q) => f(p, q, int), budget, what);
    if (ins.length === 1) r = nd.mapN([r], int, (p) => p, budget, what);
    return [fromNd(r)];
  }
  switch (op) {
    case "Mean": {
      const ins = a.filter((v): v is Value => v !== undefined).map((v, k) => toNd(v, `input ${k}`));
      let r = ins[0]!;
      for (let k = 1; k < ins.length; k++) r = nd.mapN([r, ins[k]!], false, (p, q) => p + q, budget, what);
      return [fromNd(nd.mapN([r], false, (p) => p / ins.length, budget, what))];
    }
    case "DynamicQuantizeLinear": {
      // onnxruntime's: the range widened to hold 0, scale = range / 255, the zero point rounded
      // (halves to even) from 0 − min / scale, the values rounded to uint8 — as floats (quant.ts)
      const v = x();
      if (v.int) throw new Error("input must be float");
      const src = v.data as Float32Array;
      let mn = 0,
        mx = 0;
      for (let i = 0; i < src.length; i++) {
        const t = src[i]!;
        if (t < mn) mn = t;
        else if (t > mx) mx = t;
      }
      const sc = mx === mn ? 1 : Math.fround(Math.fround(mx - mn) / 255);
      // (a NaN start — −∞ in the input, or a range whose scale rounds to 0 — gives 255, as
      // onnxruntime's std::min(255, NaN) does)
      const z0 = Math.fround(0 - Math.fround(mn / sc)),
        zc = z0 < 255 ? z0 : 255;
      const zp = toGridInt(zc > 0 ? zc : 0);
      const out = allocFloats(src.length, budget, what);
      for (let i = 0; i < src.length; i++) {
        const r = Math.fround(src[i]! / sc);
        const q = r !== r ? 0 : toGridInt(r) + zp;
        out[i] = q < 0 ? 0 : q > 255 ? 255 : q;
      }
      return [
        { f: { data: out, shape: [...v.shape] } },
        { f: { data: Float32Array.of(sc), shape: [] } },
        { f: { data: Float32Array.of(zp), shape: [] } },
      ];
    }
    case "DequantizeLinear":
    case "QuantizeLinear": {
      // quant.ts: a DequantizeLinear of integer constants (run once at load), or a QuantizeLinear
      // fused with its DequantizeLinear: the floats rounded to the integer grid and back, in float32
      const v = x();
      const perAxis = (k: number, what: string): nd.Nd | undefined => {
        if (!a[k]) return undefined;
        const p = toNd(a[k], what);
        if (p.data.length === 1) return { ...p, shape: [] };
        const axis = nd.normAxis((at.axis as number | undefined) ?? 1, v.shape.length, `${op} axis`);
        if (p.shape.length !== 1 || p.data.length !== v.shape[axis])
          throw new RangeError(`${what} [${p.shape}] must be one value or one per index of axis ${axis} (${v.shape[axis]})`);
        return { ...p, shape: v.shape.map((d, i) => (i === axis ? d : 1)) };
      };
      const scale = perAxis(1, "y_scale")!;
      const zp = perAxis(2, "zero_point") ?? { data: [0], shape: [], int: true };
      if (op === "DequantizeLinear") return [fromNd(nd.mapN([v, scale, zp], false, (q, sc, z) => Math.fround((q - z) * sc), budget, what))];
      const lo = at.bhsd_qmin as number | undefined,
        hi = at.bhsd_qmax as number | undefined;
      if (lo === undefined || hi === undefined) throw new Error("a QuantizeLinear not read by its DequantizeLinear alone");
      if (!v.int && scale.data.length === 1 && zp.data.length === 1) {
        // one scale (an activation's): one tight pass, ten times the generic broadcast loop's speed
        const src = v.data as Float32Array,
          out = allocFloats(src.length, budget, what),
          sc = scale.data[0]!,
          z = zp.data[0]!;
        for (let i = 0; i < src.length; i++) out[i] = fakeQuantize(src[i]!, sc, z, lo, hi);
        return [{ f: { data: out, shape: [...v.shape] } }];
      }
      return [fromNd(nd.mapN([v, scale, zp], false, (t, sc, z) => fakeQuantize(t, sc, z, lo, hi), budget, what))];
    }
    case "ScatterND":
      return [
        fromNd(
          nd.scatterND(
            toNd(a[0], "data"),
            toNd(a[1], "indices"),
            toNd(a[2], "updates"),
            (at.reduction as string | undefined) ?? "none",
            budget,
            what,
          ),
        ),
      ];
    case "Where": {
      const c = toNd(a[0], "condition"),
        p = toNd(a[1], "X"),
        q = toNd(a[2], "Y");
      return [fromNd(nd.mapN([c, p, q], p.int && q.int, (k, u, v) => (k ? u : v), budget, what))];
    }
    case "Clip": {
      const v = x();
      const lo = a[1] ? toNd(a[1], "min").data[0]! : ((at.min as number | undefined) ?? -Infinity);
      const hi = a[2] ? toNd(a[2], "max").data[0]! : ((at.max as number | undefined) ?? Infinity);
      return [fromNd(nd.mapN([v], v.int, (t) => (Number.isNaN(t) ? t : Math.min(hi, Math.max(lo, t))), budget, what))];
    }
    case "Transpose":
      return [fromNd(nd.transpose(x(), at.perm as number[] | undefined, budget, what))];
    case "GlobalAveragePool":
    case "GlobalMaxPool": {
      // a classifier's head, a squeeze-and-excitation block: each channel's mean or max over the
      // spatial axes, kept as 1s
      const v = x();
      if (v.shape.length < 3) throw new RangeError(`input [${v.shape}] must be [N, C, ...spatial axes]`);
      const axes = v.shape.slice(2).map((_, i) => i + 2);
      return [fromNd(nd.reduce(v, axes, true, op === "GlobalMaxPool" ? "max" : "mean", budget, what))];
    }
    case "ReduceMean":
    case "ReduceSum":
    case "ReduceMax":
    case "ReduceMin":
    case "ReduceProd":
    case "ReduceL1":
    case "ReduceL2":
    case "ReduceSumSquare":
    case "ReduceLogSum":
    case "ReduceLogSumExp": {
      const kind = op.slice(6).toLowerCase() as nd.ReduceKind;
      // axes: an attribute before opset 18 (ReduceSum: 13), an input after
      const axesIn = a[1] ? I(a[1], "axes") : undefined;
      const axes = axesIn ?? (at.axes as number[] | undefined) ?? [];
      const v = x();
      if (axes.length === 0 && at.noop_with_empty_axes) return [fromNd(v)];
      return [fromNd(nd.reduce(v, axes, (at.keepdims as number | undefined) !== 0, kind, budget, what))];
    }
    case "Softmax":
    case "LogSoftmax": {
      const v = x();
      if (opset < 13) {
        // the input as 2-D at `axis` (default 1), as Softmax above
        const ax = nd.normAxis((at.axis as number | undefined) ?? 1, v.shape.length, `${op} axis`);
        const r = nd.softmaxAxis(
          { ...v, shape: [prod(v.shape.slice(0, ax)), prod(v.shape.slice(ax))] },
          1,
          op === "LogSoftmax",
          budget,
          what,
        );
        return [fromNd({ ...r, shape: [...v.shape] })];
      }
      return [fromNd(nd.softmaxAxis(v, (at.axis as number | undefined) ?? -1, op === "LogSoftmax", budget, what))];
    }
    case "LayerNormalization": {
      const v = x();
      const axis = nd.normAxis((at.axis as number | undefined) ?? -1, v.shape.length, "LayerNormalization axis");
      const inner = prod(v.shape.slice(axis));
      // (a Scale or B that broadcasts to the normalised axes, [1, 4] over [3, 4], is expanded to them)
      const normalised = v.shape.slice(axis);
      const param = (k: number, nm: string): nd.Nd | null => {
        if (!a[k]) return null;
        const t = toNd(a[k], nm);
        if (t.data.length === inner || t.data.length === 1) return t;
        if (!nd.broadcastsTo(t.shape, normalised))
          throw new RangeError(`${nm} [${t.shape}] does not broadcast to the normalised axes [${normalised}]`);
        return nd.mapN([t], false, (p) => p, budget, what, normalised);
      };
      const sc = param(1, "Scale"),
        bi = param(2, "B");
      return [fromNd(nd.normalizeTrailing(v, inner, (at.epsilon as number | undefined) ?? 1e-5, sc, bi, budget, what))];
    }
    case "MatMul":
      return [fromNd(nd.matmul(toNd(a[0], "A"), toNd(a[1], "B"), budget, what))];
    case "Gemm": {
      let A = toNd(a[0], "A"),
        B = toNd(a[1], "B");
      if (A.shape.length !== 2 || B.shape.length !== 2) throw new RangeError("Gemm takes 2-D A and B");
      if (at.transA) A = nd.transpose(A, [1, 0], budget, what);
      if (at.transB) B = nd.transpose(B, [1, 0], budget, what);
      const alpha = (at.alpha as number | undefined) ?? 1,
        beta = (at.beta as number | undefined) ?? 1;
      let y = nd.matmul(A, B, budget, what);
      if (alpha !== 1) y = nd.mapN([y], false, (t) => alpha * t, budget, what);
      if (a[2]) y = nd.mapN([y, toNd(a[2], "C")], false, (p, q) => p + beta * q, budget, what);
      return [fromNd(y)];
    }
    case "Einsum":
      if (a.length !== 2) throw new RangeError(`Einsum with ${a.length} operands (bhsd runs two)`);
      return [fromNd(nd.einsum(String(at.equation), toNd(a[0], "A"), toNd(a[1], "B"), budget, what))];
    case "Pad": {
      const v = x();
      const mode = (at.mode as string | undefined) ?? "constant";
      let pads = a[1] ? I(a[1], "pads") : ((at.pads as number[] | undefined) ?? []);
      const value = a[2] ? (toNd(a[2], "constant_value").data[0] ?? 0) : ((at.value as number | undefined) ?? 0);
      if (a[3]) {
        // opset 18: pads for the listed axes only
        const axes = I(a[3], "axes").map((ax) => nd.normAxis(ax, v.shape.length, "Pad axis"));
        const full = new Array<number>(2 * v.shape.length).fill(0);
        axes.forEach((ax, k) => ((full[ax] = pads[k]!), (full[ax + v.shape.length] = pads[k + axes.length]!)));
        pads = full;
      }
      if (pads.some((p) => !Number.isInteger(p) || Math.abs(p) > 1 << 20))
        throw new RangeError(`pads [${pads}] must be integers of sane size`);
      return [fromNd(nd.pad(v, pads, mode, value, budget, what))];
    }
    case "ConstantOfShape": {
      const shape = I(a[0], "input");
      if (shape.some((d) => !Number.isSafeInteger(d) || d < 0)) throw new RangeError(`shape [${shape}] must hold non-negative integers`);
      const t = at.value as OnnxTensor | undefined;
      const int = t !== undefined && !t.f32;
      const fill = t ? (t.f32 ? t.f32[0]! : t.ints![0]!) : 0;
      const r = nd.alloc(shape, int, budget, what);
      r.data.fill(fill); // (a float result is a pool buffer, not cleared: zeros are written too)
      return [fromNd(r)];
    }
    case "Expand": {
      const v = x();
      return [fromNd(nd.mapN([v], v.int, (p) => p, budget, what, I(a[1], "shape")))];
    }
    case "Tile": {
      const v = x(),
        reps = I(a[1], "repeats");
      if (reps.length !== v.shape.length || reps.some((r) => !Number.isInteger(r) || r < 0))
        throw new RangeError(`repeats [${reps}] must be ${v.shape.length} non-negative integers`);
      const shape = v.shape.map((d, i) => d * reps[i]!);
      const out = nd.alloc(shape, v.int, budget, what);
      const st = nd.stridesOf(v.shape),
        idx = new Array<number>(shape.length).fill(0);
      for (let i = 0; i < out.data.length; i++) {
        let off = 0;
        for (let d = 0; d < shape.length; d++) off += (idx[d]! % v.shape[d]!) * st[d]!;
        out.data[i] = v.data[off]!;
        for (let d = shape.length - 1; d >= 0; d--) {
          idx[d]!++;
          if (idx[d]! < shape[d]!) break;
          idx[d] = 0;
        }
      }
      return [fromNd(out)];
    }
    case "Range": {
      const s0 = toNd(a[0], "start"),
        lim = toNd(a[1], "limit"),
        dl = toNd(a[2], "delta");
      const st = s0.data[0]!,
        li = lim.data[0]!,
        de = dl.data[0]!;
      if (!(de !== 0) || !Number.isFinite(st) || !Number.isFinite(li) || !Number.isFinite(de))
        throw new RangeError(`Range(${st}, ${li}, ${de}) needs a non-zero delta and finite bounds`);
      const count = Math.max(Math.ceil((li - st) / de), 0);
      const r = nd.alloc([count], s0.int, budget, what);
      for (let i = 0; i < count; i++) r.data[i] = st + i * de;
      return [fromNd(r)];
    }
    case "Split": {
      const v = x();
      const axis = nd.normAxis((at.axis as number | undefined) ?? 0, v.shape.length, "Split axis");
      const d = v.shape[axis]!,
        outs = n.outputs.length;
      let parts = a[1] ? I(a[1], "split") : (at.split as number[] | undefined);
      if (!parts) {
        const k = (at.num_outputs as number | undefined) ?? outs;
        const each = Math.ceil(d / k);
        parts = Array.from({ length: k }, (_, i) => Math.max(0, Math.min(each, d - i * each)));
      }
      if (parts.length !== outs || parts.reduce((p, q) => p + q, 0) !== d || parts.some((p) => p < 0))
        throw new RangeError(`split [${parts}] does not divide axis ${axis} of [${v.shape}] into ${outs} outputs`);
      let start = 0;
      return parts.map((p) => {
        const r = nd.slice(v, [start], [start + p], [axis], [1], budget, what);
        start += p;
        return fromNd(r);
      });
    }
    case "Size":
      return [{ ints: [prod(shapeOf(a[0]!))], shape: [] }];
    default:
      throw new Error(`op ${n.opType} is not supported`);
  }
}

export function shapeOf(v: Value): number[] {
  return "f" in v ? v.f.shape : v.shape;
}
