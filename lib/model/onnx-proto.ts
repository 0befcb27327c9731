/**
 * The part of ONNX's public schema (onnx/onnx.proto, IR version ≤ 10) that bhsd reads and writes,
 * as a protobufjs reflection tree: models, graphs, local functions, nodes, attributes, tensors and
 * value infos.
 * Field numbers are onnx.proto's.
 */
import { createRequire } from "node:module";

const require = createRequire(import.meta.url);
// protobufjs/light: reflection without the .proto parser; CommonJS, loaded through require.
const protobuf = require("protobufjs/light") as typeof import("protobufjs");

const schema = {
  nested: {
    onnx: {
      nested: {
        AttributeProto: {
          fields: {
            name: { type: "string", id: 1 },
            refAttrName: { type: "string", id: 21 },
            docString: { type: "string", id: 13 },
            type: { type: "AttributeType", id: 20 },
            f: { type: "float", id: 2 },
            i: { type: "int64", id: 3 },
            s: { type: "bytes", id: 4 },
            t: { type: "TensorProto", id: 5 },
            g: { type: "GraphProto", id: 6 },
            floats: { rule: "repeated", type: "float", id: 7 },
            ints: { rule: "repeated", type: "int64", id: 8 },
            strings: { rule: "repeated", type: "bytes", id: 9 },
            tensors: { rule: "repeated", type: "TensorProto", id: 10 },
            graphs: { rule: "repeated", type: "GraphProto", id: 11 },
          },
          nested: {
            AttributeType: {
              values: {
                UNDEFINED: 0,
                FLOAT: 1,
                INT: 2,
                STRING: 3,
                TENSOR: 4,
                GRAPH: 5,
                FLOATS: 6,
                INTS: 7,
                STRINGS: 8,
                TENSORS: 9,
                GRAPHS: 10,
                SPARSE_TENSOR: 11,
                SPARSE_TENSORS: 12,
                TYPE_PROTO: 13,
                TYPE_PROTOS: 14,
              },
            },
          },
        },
        ValueInfoProto: {
          fields: { name: { type: "string", id: 1 }, type: { type: "TypeProto", id: 2 }, docString: { type: "string", id: 3 } },
        },
        NodeProto: {
          fields: {
            input: { rule: "repeated", type: "string", id: 1 },
            output: { rule: "repeated", type: "string", id: 2 },
            name: { type: "string", id: 3 },
            opType: { type: "string", id: 4 },
            domain: { type: "string", id: 7 },
            overload: { type: "string", id: 8 },
            attribute: { rule: "repeated", type: "AttributeProto", id: 5 },
            docString: { type: "string", id: 6 },
          },
        },
        FunctionProto: {
          fields: {
            name: { type: "string", id: 1 },
            input: { rule: "repeated", type: "string", id: 4 },
            output: { rule: "repeated", type: "string", id: 5 },
            attribute: { rule: "repeated", type: "string", id: 6 },
            attributeProto: { rule: "repeated", type: "AttributeProto", id: 11 },
            node: { rule: "repeated", type: "NodeProto", id: 7 },
            docString: { type: "string", id: 8 },
            opsetImport: { rule: "repeated", type: "OperatorSetIdProto", id: 9 },
            domain: { type: "string", id: 10 },
            overload: { type: "string", id: 13 },
          },
        },
        StringStringEntryProto: { fields: { key: { type: "string", id: 1 }, value: { type: "string", id: 2 } } },
        OperatorSetIdProto: { fields: { domain: { type: "string", id: 1 }, version: { type: "int64", id: 2 } } },
        ModelProto: {
          fields: {
            irVersion: { type: "int64", id: 1 },
            opsetImport: { rule: "repeated", type: "OperatorSetIdProto", id: 8 },
            producerName: { type: "string", id: 2 },
            producerVersion: { type: "string", id: 3 },
            domain: { type: "string", id: 4 },
            modelVersion: { type: "int64", id: 5 },
            docString: { type: "string", id: 6 },
            graph: { type: "GraphProto", id: 7 },
            metadataProps: { rule: "repeated", type: "StringStringEntryProto", id: 14 },
            functions: { rule: "repeated", type: "FunctionProto", id: 25 },
          },
        },
        GraphProto: {
          fields: {
            node: { rule: "repeated", type: "NodeProto", id: 1 },
            name: { type: "string", id: 2 },
            initializer: { rule: "repeated", type: "TensorProto", id: 5 },
            docString: { type: "string", id: 10 },
            input: { rule: "repeated", type: "ValueInfoProto", id: 11 },
            output: { rule: "repeated", type: "ValueInfoProto", id: 12 },
            valueInfo: { rule: "repeated", type: "ValueInfoProto", id: 13 },
          },
        },
        TensorProto: {
          fields: {
            dims: { rule: "repeated", type: "int64", id: 1 },
            dataType: { type: "int32", id: 2 },
            floatData: { rule: "repeated", type: "float", id: 4, options: { packed: true } },
            int32Data: { rule: "repeated", type: "int32", id: 5, options: { packed: true } },
            stringData: { rule: "repeated", type: "bytes", id: 6 },
            int64Data: { rule: "repeated", type: "int64", id: 7, options: { packed: true } },
            name: { type: "string", id: 8 },
            docString: { type: "string", id: 12 },
            rawData: { type: "bytes", id: 9 },
            externalData: { rule: "repeated", type: "StringStringEntryProto", id: 13 },
            dataLocation: { type: "int32", id: 14 },
            doubleData: { rule: "repeated", type: "double", id: 10, options: { packed: true } },
            uint64Data: { rule: "repeated", type: "uint64", id: 11, options: { packed: true } },
          },
        },
        TensorShapeProto: {
          fields: { dim: { rule: "repeated", type: "Dimension", id: 1 } },
          nested: {
            Dimension: {
              oneofs: { value: { oneof: ["dimValue", "dimParam"] } },
              fields: { dimValue: { type: "int64", id: 1 }, dimParam: { type: "string", id: 2 }, denotation: { type: "string", id: 3 } },
            },
          },
        },
        TypeProto: {
          oneofs: { value: { oneof: ["tensorType"] } },
          fields: { tensorType: { type: "Tensor", id: 1 }, denotation: { type: "string", id: 6 } },
          nested: {
            Tensor: { fields: { elemType: { type: "int32", id: 1 }, shape: { type: "TensorShapeProto", id: 2 } } },
          },
        },
      },
    },
  },
};

const root = protobuf.Root.fromJSON(schema);
export const ModelProto = root.lookupType("onnx.ModelProto");

/** Largest float tensor one model may store (1 G elements: 4 GB). */
export const MAX_TENSOR_ELEMENTS = 2 ** 30;
/** Integer tensors are shape glue (indices, shapes, axes): small. */
export const MAX_INT_ELEMENTS = 1 << 20;

/** TensorProto.DataType codes. */
export const ONNX_DTYPE = {
  FLOAT: 1,
  UINT8: 2,
  INT8: 3,
  UINT16: 4,
  INT16: 5,
  INT32: 6,
  INT64: 7,
  STRING: 8,
  BOOL: 9,
  FLOAT16: 10,
  DOUBLE: 11,
  UINT32: 12,
  UINT64: 13,
  BFLOAT16: 16,
} as const;

export const ATTR = { FLOAT: 1, INT: 2, STRING: 3, TENSOR: 4, GRAPH: 5, FLOATS: 6, INTS: 7, STRINGS: 8 } as const;

export type AttrValue = number | number[] | string | { dims: number[]; data: Float32Array | Int32Array | BigInt64Array; dataType: number };

/** Serialises a model with one graph (used by tests to build one-node graphs, and by training to export). */
export function encodeModel(m: {
  opset: number;
  nodes: { opType: string; inputs: string[]; outputs: string[]; name?: string; attrs?: Record<string, AttrValue> }[];
  inputs: { name: string; shape: (number | string)[]; elemType?: number }[];
  outputs: { name: string; shape?: (number | string)[]; elemType?: number }[];
  initializers?: {
    name: string;
    dims: number[];
    data: Float32Array | BigInt64Array | Int32Array | Int8Array | Uint8Array;
    dataType?: number;
  }[];
  metadata?: Record<string, string>;
  producer?: string;
}): Uint8Array {
  const valueInfo = (v: { name: string; shape?: (number | string)[]; elemType?: number }) => ({
    name: v.name,
    type: {
      tensorType: {
        elemType: v.elemType ?? ONNX_DTYPE.FLOAT,
        ...(v.shape ? { shape: { dim: v.shape.map((d) => (typeof d === "number" ? { dimValue: d } : { dimParam: d })) } } : {}),
      },
    },
  });
  const rawOf = (d: ArrayBufferView) => new Uint8Array(d.buffer, d.byteOffset, d.byteLength);
  const attr = (name: string, v: AttrValue) => {
    if (typeof v === "string") return { name, type: ATTR.STRING, s: new TextEncoder().encode(v) };
    if (typeof v === "number")
      return Number.isInteger(v) && !Object.is(v, -0) ? { name, type: ATTR.INT, i: v } : { name, type: ATTR.FLOAT, f: v };
    if (Array.isArray(v))
      return v.every((x) => Number.isInteger(x)) ? { name, type: ATTR.INTS, ints: v } : { name, type: ATTR.FLOATS, floats: v };
    return { name, type: ATTR.TENSOR, t: { dims: v.dims, dataType: v.dataType, rawData: rawOf(v.data) } };
  };
  const model = {
    irVersion: 8,
    producerName: m.producer ?? "bhsd",
    opsetImport: [{ domain: "", version: m.opset }],
    metadataProps: Object.entries(m.metadata ?? {}).map(([key, value]) => ({ key, value })),
    graph: {
      name: "g",
      node: m.nodes.map((n, k) => ({
        opType: n.opType,
        name: n.name ?? `${n.opType}_${k}`,
        input: n.inputs,
        output: n.outputs,
        attribute: Object.entries(n.attrs ?? {}).map(([a, v]) => attr(a, v)),
      })),
      input: m.inputs.map(valueInfo),
      output: m.outputs.map(valueInfo),
      initializer: (m.initializers ?? []).map((t) => ({
        name: t.name,
        dims: t.dims,
        dataType:
          t.dataType ??
          (t.data instanceof Float32Array
            ? ONNX_DTYPE.FLOAT
            : t.data instanceof Int32Array
              ? ONNX_DTYPE.INT32
              : t.data instanceof Int8Array
                ? ONNX_DTYPE.INT8
                : t.data instanceof Uint8Array
                  ? ONNX_DTYPE.UINT8
                  : ONNX_DTYPE.INT64),
        rawData: rawOf(t.data),
      })),
    },
  };
  const err = ModelProto.verify(model);
  if (err) throw new Error(`invalid ONNX model: ${err}`);
  return ModelProto.encode(ModelProto.fromObject(model)).finish();
}

/** The same model with new data for the named float initializers (e.g. trained weights). */
export function replaceInitializers(bytes: Uint8Array, values: Map<string, Float32Array>, metadata?: Record<string, string>): Uint8Array {
  const m = ModelProto.decode(bytes) as unknown as {
    graph: { initializer: { name: string; rawData?: Uint8Array; floatData?: number[]; dims: unknown[] }[] };
    metadataProps: { key: string; value: string }[];
  };
  for (const t of m.graph.initializer) {
    const v = values.get(t.name);
    if (!v) continue;
    t.rawData = new Uint8Array(v.buffer.slice(v.byteOffset, v.byteOffset + v.byteLength));
    t.floatData = [];
  }
  if (metadata) {
    m.metadataProps = m.metadataProps.filter((p) => !(p.key in metadata));
    for (const [key, value] of Object.entries(metadata)) m.metadataProps.push({ key, value } as never);
  }
  return ModelProto.encode(m as never).finish();
}
