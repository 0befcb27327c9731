/**
 * ONNX external tensor data: weights kept in files beside the model (`model.onnx.data`), as
 * `torch.onnx.export(..., dynamo=True)` writes them by default since PyTorch 2.6 (its
 * `external_data=True`) and as `onnx.save(..., save_as_external_data=True)` does.
 *
 * A model file names the data files, so a hostile model is kept to what its own folder holds:
 * a location must be relative, with no `..` step, and must resolve (symbolic links followed)
 * inside the model's folder to a regular file (opened without blocking, so a FIFO is refused, not
 * waited on); each tensor's byte range must lie inside its file, have exactly its shape's size
 * and not overlap another's; all of them together at most {@link maxExternalBytes}. Everything
 * is checked before a byte is read, and the files are then read one at a time (and checked to be
 * the files that were sized). The checksum key (an optional SHA-1 of the whole file) is
 * not checked: exporters do not write it.
 */
import { constants } from "node:fs";
import { open, readFile, realpath, stat, type FileHandle } from "node:fs/promises";
import { totalmem } from "node:os";
import { dirname, isAbsolute, join, sep, win32 } from "node:path";
import { releaseEngineArray } from "../backends/index.js";
import { allocArray } from "../volume.js";
import { MAX_INT_ELEMENTS, MAX_TENSOR_ELEMENTS, ModelProto, ONNX_DTYPE } from "./onnx-proto.js";

/** Bytes per value of the ONNX data types the engine reads (others are refused by the tensor reader). */
const WIDTH: Record<number, number> = {
  [ONNX_DTYPE.FLOAT]: 4,
  [ONNX_DTYPE.DOUBLE]: 8,
  [ONNX_DTYPE.FLOAT16]: 2,
  [ONNX_DTYPE.BFLOAT16]: 2,
  [ONNX_DTYPE.INT64]: 8,
  [ONNX_DTYPE.INT32]: 4,
  [ONNX_DTYPE.INT8]: 1,
  [ONNX_DTYPE.UINT8]: 1,
  [ONNX_DTYPE.BOOL]: 1,
};

/** TensorProto.DataLocation.EXTERNAL */
const EXTERNAL = 1;

/** The most external bytes one model may read: half the RAM, at most 8 GiB (a segmentation network's weights are well under 1 GB). */
export function maxExternalBytes(): number {
  return Math.min(8 * 2 ** 30, Math.floor(totalmem() / 2));
}

/** Where a model's external data comes from: the folder of the model's file, or files handed over by name. */
export interface ExternalSource {
  /** the model file's folder (a model loaded from a path) */
  dir?: string;
  /** config.externalData: location → the file's bytes (a model handed over as bytes) */
  files?: Record<string, Uint8Array>;
}

/** A decoded TensorProto as protobufjs's toObject gives it (longs as numbers). */
type TensorObject = Record<string, unknown>;

interface Pending {
  t: TensorObject;
  name: string;
  key: string;
  offset: number;
  length: number;
}

/** Float tensors read from a file straight into the array the weights will be (see destination). */
const ADOPTED = new WeakMap<Uint8Array, Float32Array>();

/**
 * Where a tensor's external bytes are read to: for a float tensor, the bytes of a float32 array
 * of engine memory (huge pages, no copy after: the tensor reader adopts it), else a byte array.
 */
function destination(p: Pending): Uint8Array {
  if (Number(p.t.dataType) !== ONNX_DTYPE.FLOAT) return new Uint8Array(p.length);
  const f32 = allocArray("float32", p.length / 4, `tensor ${p.name}`, { overwritten: true }) as Float32Array;
  const bytes = new Uint8Array(f32.buffer, f32.byteOffset, f32.byteLength);
  ADOPTED.set(bytes, f32);
  return bytes;
}

/**
 * A decoded float tensor whose data is `data` itself, for the tensor reader to keep without a copy
 * (weights a loader already holds in arrays of their own: nnU-Net's checkpoint tensors).
 */
export function adoptedTensor(name: string, dims: number[], data: Float32Array): TensorObject {
  const bytes = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  ADOPTED.set(bytes, data);
  return { name, dims, dataType: ONNX_DTYPE.FLOAT, rawData: bytes };
}

/**
 * The float32 array a tensor's data already is — external data read into it, or weights handed
 * over by adoptedTensor — for the tensor reader to keep (once), or undefined: copy the bytes.
 */
export function adoptedFloats(raw: Uint8Array): Float32Array | undefined {
  const f32 = ADOPTED.get(raw);
  ADOPTED.delete(raw);
  return f32;
}

/**
 * Whether a decoded tensor keeps its data outside the model: its data_location says EXTERNAL (as
 * onnx's `uses_external_data` and onnxruntime read it; external_data entries without it are
 * ignored).
 */
export function isExternal(t: TensorObject): boolean {
  return Number(t.dataLocation ?? 0) === EXTERNAL;
}

/**
 * A location as a key: its steps joined by "/" ("./a//b" and "a/b" are one file), or an error
 * for an absolute path, a `..` step, a NUL or an empty name.
 */
export function locationKey(location: string): string | Error {
  if (location.length === 0 || location.length > 4096 || location.includes("\0"))
    return new Error(`"${location.slice(0, 200)}" is not a file name`);
  if (isAbsolute(location) || win32.isAbsolute(location) || /^[A-Za-z]:/.test(location))
    return new Error(`"${location}" is an absolute path; bhsd reads external data only from the model's own folder`);
  const steps = location.split(/[\\/]+/).filter((s) => s !== "" && s !== ".");
  if (steps.includes("..")) return new Error(`"${location}" climbs out of the model's folder (..)`);
  if (steps.length === 0) return new Error(`"${location}" names no file`);
  return steps.join("/");
}

/** A decimal string (or number) that is a safe non-negative integer, or undefined. */
function count(v: string | undefined): number | undefined {
  if (v === undefined) return undefined;
  if (!/^\d{1,16}$/.test(v.trim())) return NaN;
  const n = Number(v.trim());
  return Number.isSafeInteger(n) ? n : NaN;
}

/**
 * Reads the external data of `tensors` (initializers and tensor attributes of a decoded model)
 * into their `rawData`, after checking every reference; `label` names the model in errors.
 */
export async function loadExternalData(
  tensors: TensorObject[],
  source: ExternalSource,
  label: string,
  quantized: ReadonlySet<string> = new Set(),
): Promise<void> {
  const pending: Pending[] = [];
  for (const t of tensors) {
    if (!isExternal(t)) continue;
    const name = String(t.name ?? "");
    const where = `${label}: tensor ${name}`;
    const entries = new Map<string, string>();
    for (const e of (t.externalData as { key?: string; value?: string }[] | undefined) ?? [])
      entries.set(String(e.key ?? ""), String(e.value ?? ""));
    const location = entries.get("location");
    if (location === undefined) throw new Error(`${where} is marked external but names no file (no "location" in its external_data)`);
    const raw = t.rawData as Uint8Array | undefined;
    if (raw !== undefined && raw.length > 0) throw new Error(`${where} has both raw_data and external data (location "${location}")`);
    const key = locationKey(location);
    if (key instanceof Error) throw new Error(`${where}: external data location ${key.message}`);
    const dims = ((t.dims as unknown[]) ?? []).map(Number);
    const n = dims.reduce((a, b) => a * b, 1);
    if (!dims.every((d) => Number.isSafeInteger(d) && d >= 0) || !Number.isSafeInteger(n))
      throw new Error(`${where} has dims [${dims}], not a valid size`);
    const width = WIDTH[Number(t.dataType ?? 0)];
    if (width === undefined)
      throw new Error(
        `${where} has ONNX data type ${Number(t.dataType ?? 0)}, which bhsd does not take (float, double, float16, bfloat16, int64, int32, int8, uint8, bool)`,
      );
    const float = [ONNX_DTYPE.FLOAT, ONNX_DTYPE.DOUBLE, ONNX_DTYPE.FLOAT16, ONNX_DTYPE.BFLOAT16].includes(Number(t.dataType) as 1);
    // (a quantized model's integer weights, read by DequantizeLinear alone, are no shape glue)
    const wide = quantized.has(name) && [ONNX_DTYPE.INT8, ONNX_DTYPE.UINT8, ONNX_DTYPE.INT32].includes(Number(t.dataType) as 2);
    const bound = float || wide ? MAX_TENSOR_ELEMENTS : MAX_INT_ELEMENTS;
    if (n > bound)
      throw new Error(
        `${where} has dims [${dims}]: ${n} values, more than bhsd takes for a ${float ? "float" : "integer"} tensor (${bound})`,
      );
    const offset = count(entries.get("offset")) ?? 0,
      given = count(entries.get("length"));
    if (Number.isNaN(offset)) throw new Error(`${where}: external data offset "${entries.get("offset")}" is not a byte count`);
    if (Number.isNaN(given)) throw new Error(`${where}: external data length "${entries.get("length")}" is not a byte count`);
    const length = n * width;
    if (given !== undefined && given !== length)
      throw new Error(`${where}: external data length ${given} bytes, but dims [${dims}] of ${width}-byte values take ${length}`);
    pending.push({ t, name, key, offset, length });
  }
  if (pending.length === 0) return;
  // (what the weights will hold: 16-bit floats become float32, twice their bytes)
  const held = (p: Pending) =>
    Number(p.t.dataType) === ONNX_DTYPE.FLOAT16 || Number(p.t.dataType) === ONNX_DTYPE.BFLOAT16 ? 2 * p.length : p.length;
  const total = pending.reduce((a, p) => a + held(p), 0),
    cap = maxExternalBytes();
  if (total > cap)
    throw new Error(
      `${label}: its external data comes to ${total} bytes as the engine holds it, more than bhsd reads for one model (${cap}: half the RAM, at most 8 GiB)`,
    );

  const byFile = new Map<string, Pending[]>();
  for (const p of pending) (byFile.get(p.key) ?? byFile.set(p.key, []).get(p.key)!).push(p);
  // every file found and every range checked before any tensor is read; then the files are read
  // one at a time (a file per tensor may be thousands of files: one is open at once)
  const files: { key: string; file: ExternalFile }[] = [];
  for (const [key, list] of byFile) {
    const file = await findSource(key, source, label, list[0]!.name);
    files.push({ key, file });
    list.sort((a, b) => a.offset - b.offset);
    let end = 0,
      prev: Pending | undefined;
    for (const p of list) {
      if (p.offset + p.length > file.size)
        throw new Error(
          `${label}: tensor ${p.name}: bytes ${p.offset}–${p.offset + p.length} of external file "${key}", which has ${file.size}`,
        );
      if (prev && p.length > 0 && p.offset < end)
        throw new Error(`${label}: tensors ${prev.name} and ${p.name} overlap in external file "${key}" (at byte ${p.offset})`);
      if (p.length > 0) {
        end = p.offset + p.length;
        prev = p;
      }
    }
  }
  // (a read that fails leaves what it read in rawData: the caller's releaseUnadopted gives it back)
  for (const { key, file } of files) await file.readAll(byFile.get(key)!);
}

/** Gives back the engine arrays external data was read into for tensors that were not made (a load that failed). */
export function releaseUnadopted(tensors: Iterable<TensorObject>): void {
  for (const t of tensors) {
    const f = adoptedFloats(t.rawData as Uint8Array);
    if (f) {
      releaseEngineArray(f);
      t.rawData = undefined;
    }
  }
}

/** One external file, found and sized; `readAll` reads the tensors' ranges into their rawData. */
interface ExternalFile {
  size: number;
  readAll(list: Pending[]): Promise<void>;
}

/** One external file: handed over, or found in the model's folder (not opened until it is read). */
async function findSource(key: string, source: ExternalSource, label: string, first: string): Promise<ExternalFile> {
  const where = `${label}: tensor ${first}: external file "${key}"`;
  if (source.files) {
    const bytes = Object.entries(source.files).find(([k]) => locationKey(k) === key)?.[1];
    if (!bytes)
      throw new Error(
        `${where} is not among config.externalData (${
          Object.keys(source.files)
            .map((k) => JSON.stringify(k))
            .join(", ") || "none given"
        })`,
      );
    return {
      size: bytes.length,
      readAll: async (list) => {
        for (const p of list) p.t.rawData = bytes.subarray(p.offset, p.offset + p.length);
      },
    };
  }
  if (source.dir === undefined)
    throw new Error(
      `${where}: the model was handed over as bytes, so bhsd cannot know its folder; load it from its path, or pass the file in config.externalData ({ "${key}": bytes })`,
    );
  const path = join(source.dir, ...key.split("/"));
  let real: string, dir: string;
  try {
    [dir, real] = await Promise.all([realpath(source.dir), realpath(path)]);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    throw new Error(`${where}: ${code === "ENOENT" ? `no such file beside the model (${path})` : (e as Error).message}`, { cause: e });
  }
  if (!real.startsWith(dir.endsWith(sep) ? dir : dir + sep))
    throw new Error(`${where} leads out of the model's folder (to ${real}); bhsd reads external data only from the model's own folder`);
  const st = await stat(real);
  if (!st.isFile()) throw new Error(`${where} (${real}) is not a regular file`);
  return {
    size: st.size,
    readAll: async (list) => {
      let fh: FileHandle;
      try {
        // O_NONBLOCK: should the name now be a FIFO, opening returns at once (and fstat refuses it);
        // O_NOFOLLOW: nor is a link put in its place followed
        fh = await open(real, constants.O_RDONLY | constants.O_NONBLOCK | constants.O_NOFOLLOW);
      } catch (e) {
        throw new Error(`${where}: ${(e as Error).message}`, { cause: e });
      }
      try {
        const now = await fh.stat();
        if (!now.isFile() || now.size !== st.size || now.ino !== st.ino || now.dev !== st.dev)
          throw new Error(`${where} (${real}) changed while the model was loading`);
        // the file opened is still in the model's folder: a folder on the way swapped for a link
        // between the check above and the open would otherwise pass (Linux names an open file)
        const opened = process.platform === "linux" ? await realpath(`/proc/self/fd/${fh.fd}`).catch(() => undefined) : undefined;
        if (opened !== undefined && !opened.startsWith(dir.endsWith(sep) ? dir : dir + sep) && !(await within(opened, dir)))
          throw new Error(`${where} led out of the model's folder while the model was loading (to ${opened})`);
        for (const p of list) {
          const out = destination(p);
          p.t.rawData = out; // (before the read: a failed read gives it back with the rest)
          let done = 0;
          while (done < p.length) {
            const { bytesRead } = await fh.read(out, done, p.length - done, p.offset + done);
            if (bytesRead === 0)
              throw new Error(`${label}: tensor ${p.name}: external file "${key}" ended early (it changed while being read)`);
            done += bytesRead;
          }
        }
      } finally {
        await fh.close();
      }
    },
  };
}

/**
 * Whether a folder above `path` is `dir` itself (the same device and inode): the kernel's name of an
 * open file may differ from the user's spelling of its folder in case alone (vfat, a casefolded ext4).
 */
async function within(path: string, dir: string): Promise<boolean> {
  const target = await stat(dir).catch(() => undefined);
  if (!target) return false;
  for (let p = dirname(path), depth = 0; depth < 256; p = dirname(p), depth++) {
    const st = await stat(p).catch(() => undefined);
    if (st && st.dev === target.dev && st.ino === target.ino) return true;
    if (dirname(p) === p) return false;
  }
  return false;
}

/** Whether `word` (ASCII) occurs in the file, read 1 MB at a time into one reused buffer. */
export async function mentions(path: string, word: string): Promise<boolean> {
  const fh = await open(path, constants.O_RDONLY | constants.O_NONBLOCK);
  try {
    if (!(await fh.stat()).isFile()) return false;
    const tail = word.length - 1;
    const buf = Buffer.allocUnsafe((1 << 20) + tail);
    let keep = 0,
      pos = 0;
    for (;;) {
      const { bytesRead } = await fh.read(buf, keep, buf.length - keep, pos);
      if (bytesRead === 0) return false;
      pos += bytesRead;
      const n = keep + bytesRead;
      if (buf.subarray(0, n).indexOf(word, 0, "latin1") >= 0) return true;
      // the last bytes go to the front: a word straddling two reads is found in the next
      keep = Math.min(tail, n);
      buf.copy(buf, 0, n - keep, n);
    }
  } finally {
    await fh.close();
  }
}

/**
 * The external data files a model file names, as keys relative to its folder (sorted, each
 * once): what a hash of the whole model must take in besides the .onnx file (the queue's job ids).
 * A file that names none is scanned in small reads and not decoded or held (the word "location"
 * does not occur in it): a 370 MB inline model costs a pass over the file, not 370 MB of memory.
 */
export async function externalDataFiles(modelPath: string): Promise<string[]> {
  if (!(await mentions(modelPath, "location"))) return [];
  const bytes = await readFile(modelPath);
  let m: Record<string, unknown>;
  try {
    m = ModelProto.toObject(ModelProto.decode(bytes), { longs: Number, arrays: true }) as Record<string, unknown>;
  } catch {
    return []; // not a model: loading it says why
  }
  const keys = new Set<string>();
  const visit = (t: TensorObject) => {
    if (!isExternal(t)) return;
    for (const e of (t.externalData as { key?: string; value?: string }[] | undefined) ?? [])
      if (e.key === "location") {
        const k = locationKey(String(e.value ?? ""));
        if (typeof k === "string") keys.add(k);
      }
  };
  const g = (m.graph as Record<string, unknown> | undefined) ?? {};
  for (const t of (g.initializer as TensorObject[] | undefined) ?? []) visit(t);
  const nodes = [
    ...((g.node as Record<string, unknown>[] | undefined) ?? []),
    ...((m.functions as { node?: Record<string, unknown>[] }[] | undefined) ?? []).flatMap((f) => f.node ?? []),
  ];
  for (const n of nodes) for (const a of (n.attribute as Record<string, unknown>[] | undefined) ?? []) if (a.t) visit(a.t as TensorObject);
  return [...keys].sort();
}
