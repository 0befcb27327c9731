/**
 * An ONNX model with large float initializers, encoded quickly.
 *
 * encodeModel (protobufjs) copies `bytes` fields one byte at a time here: 125 MB of nnU-Net
 * weights took 7–10 s. So the graph without its initializers is encoded by encodeModel, and the
 * initializers are appended to its GraphProto by hand — each a TensorProto with `dims` (field 1),
 * `data_type` (2), `name` (8) and `raw_data` (9), as onnx.proto numbers them — with one memcpy per
 * tensor. Protobuf allows a message's fields in any order and a repeated field's entries anywhere,
 * so the result decodes exactly as encodeModel's own output would (a test checks).
 */
import { allocArray } from "../../volume.js";
import { encodeModel, ONNX_DTYPE } from "../onnx-proto.js";

type ModelSpec = Parameters<typeof encodeModel>[0];

function varintLength(v: number): number {
  let n = 1;
  while (v >= 128) {
    v = Math.floor(v / 128);
    n++;
  }
  return n;
}

function writeVarint(buf: Uint8Array, pos: number, v: number): number {
  if (!Number.isSafeInteger(v) || v < 0) throw new RangeError(`cannot encode ${v} as a protobuf varint`);
  while (v >= 128) {
    buf[pos++] = (v % 128) | 128;
    v = Math.floor(v / 128);
  }
  buf[pos++] = v;
  return pos;
}

/** Field key: (field number << 3) | wire type. */
const key = (field: number, wire: number) => field * 8 + wire;

/** Reads a varint at `pos`; returns [value, next position]. */
function readVarint(buf: Uint8Array, pos: number): [number, number] {
  let v = 0,
    mul = 1;
  for (;;) {
    if (pos >= buf.length) throw new Error("truncated varint");
    const b = buf[pos++]!;
    v += (b & 127) * mul;
    if (b < 128) return [v, pos];
    mul *= 128;
  }
}

/** encodeModel's output with the float initializers added to the graph (see the module comment). */
export function encodeModelFast(spec: ModelSpec, initializers: { name: string; dims: number[]; data: Float32Array }[]): Uint8Array {
  const small = encodeModel({ ...spec, initializers: [] });
  // the TensorProto of each initializer, as a GraphProto field 5 entry
  const names = initializers.map((t) => new TextEncoder().encode(t.name));
  const bodies = initializers.map((t, i) => {
    let n = 0;
    for (const d of t.dims) n += 1 + varintLength(d);
    n += 1 + varintLength(ONNX_DTYPE.FLOAT);
    n += 1 + varintLength(names[i]!.length) + names[i]!.length;
    n += 1 + varintLength(t.data.byteLength) + t.data.byteLength;
    return n;
  });
  let extra = 0;
  for (const b of bodies) extra += 1 + varintLength(b) + b;
  // split the model's top-level fields: everything but the graph (field 7) is kept as is
  const kept: [number, number][] = [];
  let graph: [number, number] | undefined;
  for (let pos = 0; pos < small.length;) {
    const start = pos;
    const [k, p1] = readVarint(small, pos);
    const wire = k & 7;
    if (wire === 0) pos = readVarint(small, p1)[1];
    else if (wire === 2) {
      const [len, p2] = readVarint(small, p1);
      pos = p2 + len;
      if (k >>> 3 === 7) graph = [p2, pos];
    } else if (wire === 5) pos = p1 + 4;
    else if (wire === 1) pos = p1 + 8;
    else throw new Error(`unexpected wire type ${wire} in an encoded model`);
    if (k >>> 3 !== 7) kept.push([start, pos]);
  }
  if (!graph) throw new Error("the encoded model has no graph");
  const graphLen = graph[1] - graph[0] + extra;
  let total = 1 + varintLength(graphLen) + graphLen;
  for (const [a, b] of kept) total += b - a;
  // engine memory (huge pages): every byte is written below
  const out = allocArray("uint8", total, "encoded model", { overwritten: true }) as Uint8Array;
  let pos = 0;
  for (const [a, b] of kept) {
    out.set(small.subarray(a, b), pos);
    pos += b - a;
  }
  pos = writeVarint(out, pos, key(7, 2));
  pos = writeVarint(out, pos, graphLen);
  out.set(small.subarray(graph[0], graph[1]), pos);
  pos += graph[1] - graph[0];
  initializers.forEach((t, i) => {
    pos = writeVarint(out, pos, key(5, 2));
    pos = writeVarint(out, pos, bodies[i]!);
    for (const d of t.dims) {
      pos = writeVarint(out, pos, key(1, 0));
      pos = writeVarint(out, pos, d);
    }
    pos = writeVarint(out, pos, key(2, 0));
    pos = writeVarint(out, pos, ONNX_DTYPE.FLOAT);
    pos = writeVarint(out, pos, key(8, 2));
    pos = writeVarint(out, pos, names[i]!.length);
    out.set(names[i]!, pos);
    pos += names[i]!.length;
    pos = writeVarint(out, pos, key(9, 2));
    pos = writeVarint(out, pos, t.data.byteLength);
    out.set(new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength), pos);
    pos += t.data.byteLength;
  });
  if (pos !== total) throw new Error(`encodeModelFast wrote ${pos} of ${total} bytes`);
  return out;
}
