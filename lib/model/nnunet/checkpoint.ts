/**
 * PyTorch's zip checkpoints (`torch.save`, PyTorch ≥ 1.6), read without Python.
 *
 * The file is a zip archive (entries stored, not compressed, by PyTorch's writer) holding
 * `<root>/data.pkl` — a pickle of the saved object — and one record `<root>/data/<key>` per tensor
 * storage (raw little-endian bytes). The pickle refers to a storage by a persistent id
 * `('storage', torch.FloatStorage, '<key>', '<location>', numel)` and rebuilds tensors with
 * `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks)`.
 *
 * Safety: the pickle is parsed by `parsePickle` (./pickle.ts), which executes nothing; every global the pickle
 * names goes through `resolveGlobal` below. Globals PyTorch and nnU-Net write are understood, other
 * globals of the torch / numpy / nnU-Net namespaces become inert placeholders (an optimiser, a
 * grad scaler: skipped, an error only where the caller needs that value), and any other global
 * (`posix.system`, `builtins.eval`, …) refuses the file. Storages are not read while parsing:
 * tensors are `TensorRef`s, and only those the caller asks for are read, each checked against the
 * zip entry's declared size before a byte is allocated. The zip's declared sizes are checked too:
 * yauzl refuses an entry whose data is longer than declared, and a declared size above the limits
 * (or above what deflate can produce from the compressed bytes) is refused before reading.
 */
import type { FileHandle } from "node:fs/promises";
import { openRegularFile } from "../../io/small-file.js";
import { createRequire } from "node:module";
import { crc32 } from "node:zlib";
import { releaseEngineArray } from "../../backends/index.js";
import { allocArray } from "../../volume.js";
import { Readable } from "node:stream";
import type * as Yauzl from "yauzl";
import { scanPickle } from "./pickle-scan.js";
import { parsePickle } from "./pickle.js";
import { brief } from "../../is.js";

const require = createRequire(import.meta.url);
// CommonJS; loaded through require as the project does for protobufjs.
const yauzl = require("yauzl") as typeof Yauzl;

export type StorageDType = "float32" | "float64" | "float16" | "bfloat16" | "int64" | "int32" | "int16" | "int8" | "uint8" | "bool";

const STORAGE_TYPES: Record<string, { dtype: StorageDType; bytes: number }> = {
  FloatStorage: { dtype: "float32", bytes: 4 },
  DoubleStorage: { dtype: "float64", bytes: 8 },
  HalfStorage: { dtype: "float16", bytes: 2 },
  BFloat16Storage: { dtype: "bfloat16", bytes: 2 },
  LongStorage: { dtype: "int64", bytes: 8 },
  IntStorage: { dtype: "int32", bytes: 4 },
  ShortStorage: { dtype: "int16", bytes: 2 },
  CharStorage: { dtype: "int8", bytes: 1 },
  ByteStorage: { dtype: "uint8", bytes: 1 },
  BoolStorage: { dtype: "bool", bytes: 1 },
};

/** A storage type named in the pickle (`torch.FloatStorage`). */
class StorageType {
  constructor(
    readonly name: string,
    readonly dtype: StorageDType,
    readonly bytes: number,
  ) {}
}

/** A storage the pickle refers to; its bytes stay in the zip until asked for. */
export class StorageRef {
  constructor(
    readonly key: string,
    readonly dtype: StorageDType,
    readonly itemBytes: number,
    readonly numel: number,
    readonly location: string,
  ) {}
}

/** A tensor of the pickle: a view of a storage (not read). */
export class TensorRef {
  constructor(
    readonly storage: StorageRef,
    readonly offset: number,
    readonly shape: number[],
    readonly stride: number[],
  ) {
    Object.freeze(this);
  }
  get numel(): number {
    return this.shape.reduce((a, b) => a * b, 1);
  }
  get dtype(): StorageDType {
    return this.storage.dtype;
  }
}

/** A value of a global the reader does not interpret (an optimiser's class, a torch.device …). */
export class Opaque {
  state: unknown;
  constructor(
    readonly global: string,
    readonly args: unknown[],
  ) {}
  __setstate__(state: unknown) {
    this.state = state;
  }
}

/** A Python dict / OrderedDict (a Map; an OrderedDict's BUILD state, e.g. `_metadata`, is kept aside). */
export class PyDict extends Map<unknown, unknown> {
  state: unknown;
  __setstate__(state: unknown) {
    this.state = state;
  }
}

/** torch.device(type[, index]). */
export class TorchDevice {
  constructor(
    readonly type: string,
    readonly index: number | null,
  ) {}
  toString() {
    return this.index === null ? this.type : `${this.type}:${this.index}`;
  }
}

/** A numpy dtype as pickled (`numpy.dtype('f8', False, True)` then BUILD with its state tuple). */
export class NumpyDType {
  state: unknown;
  constructor(readonly str: string) {}
  __setstate__(state: unknown) {
    this.state = state;
  }
}

export class CheckpointError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "CheckpointError";
  }
}

export interface CheckpointLimits {
  /** Largest checkpoint file accepted (bytes). Default 4 GiB. */
  maxBytes?: number;
  /** Largest `data.pkl` accepted (bytes, uncompressed). Default 256 MiB. */
  maxPickleBytes?: number;
  /** Most zip entries accepted. Default 1,000,000. */
  maxEntries?: number;
}

const DEFAULTS: Required<CheckpointLimits> = { maxBytes: 4 * 2 ** 30, maxPickleBytes: 256 * 2 ** 20, maxEntries: 1_000_000 };

/** Modules whose globals become inert placeholders when the reader does not know them. */
const INERT_NAMESPACES = ["torch.", "numpy.", "collections.", "nnunetv2.", "dynamic_network_architectures.", "batchgenerators."];

const label = (module: string, name: string) => `${module}.${name}`;

/**
 * The work a parse's globals may do in all (items copied, characters encoded), charged as they run:
 * a few bytes of pickle can call a global on a 10^7-item list (a BUILD sets its length) again and
 * again. Proportional to the pickle's size.
 */
export function pickleBudget(bytes: number, where: string): (n: number) => void {
  let left = 8 * bytes + 1_000_000;
  return (n: number) => {
    left -= n;
    if (left < 0) throw new CheckpointError(`${where}: the pickle's objects are far larger than its ${bytes} bytes could hold`);
  };
}

/**
 * The globals every pickle bhsd reads may name, each charged to the parse's budget: dict /
 * OrderedDict (a PyDict; a list's length can be set by a BUILD to 2^31 without a byte behind it, so
 * bounded before it is walked), set / frozenset (an array), numpy.dtype (of a short type string
 * only: String() of a memo DAG is 2^depth), _codecs.encode (protocol 2's bytes). Undefined for any
 * other.
 */
export function commonGlobal(fqn: string, where: string, charge: (n: number) => void): ((...args: unknown[]) => unknown) | undefined {
  const items = (v: unknown, what: string): unknown[] => {
    if (!Array.isArray(v)) return [];
    if (v.length > MAX_ITEMS) throw new CheckpointError(`${where}: a ${what} of ${v.length} items`);
    charge(v.length);
    return v;
  };
  switch (fqn) {
    case "collections.OrderedDict":
    case "builtins.dict":
      return (kvs?: unknown) => {
        const d = new PyDict();
        for (const kv of items(kvs, "dict")) if (Array.isArray(kv) && kv.length === 2) d.set(kv[0], kv[1]);
        return d;
      };
    case "builtins.set":
    case "builtins.frozenset":
      return (xs?: unknown) => [...items(xs, "set")];
    case "numpy.dtype":
      return (str: unknown) => {
        if (typeof str !== "string" || str.length > 16) throw new CheckpointError(`${where}: numpy.dtype of ${typeName(str)}`);
        return new NumpyDType(str);
      };
    case "_codecs.encode":
      return (s: unknown, encoding?: unknown) => {
        if (typeof s !== "string") throw new CheckpointError(`${where}: _codecs.encode got ${typeName(s)}`);
        charge(s.length);
        if (encoding === "latin1" || encoding === "latin-1" || encoding === "iso-8859-1")
          return Uint8Array.from(s, (c) => c.charCodeAt(0) & 0xff);
        return new TextEncoder().encode(s);
      };
  }
  return undefined;
}

function resolveGlobal(module: string, name: string, where: string, charge: (n: number) => void): (...args: unknown[]) => unknown {
  const fqn = label(module, name);
  const common = commonGlobal(fqn, where, charge);
  if (common) return common;
  switch (fqn) {
    case "torch._utils._rebuild_tensor_v2":
    case "torch._utils._rebuild_tensor":
      return (storage: unknown, offset: unknown, size: unknown, stride: unknown) => {
        if (!(storage instanceof StorageRef)) throw new CheckpointError(`${where}: ${fqn} got ${typeName(storage)} instead of a storage`);
        if (
          !isIntArray(size) ||
          !isIntArray(stride) ||
          size.length !== stride.length ||
          !Number.isSafeInteger(offset) ||
          (offset as number) < 0
        )
          throw new CheckpointError(`${where}: ${fqn} got a malformed size/stride/offset (${brief([size, stride, offset])})`);
        // (frozen, as the shape and strides: a later BUILD cannot change what was checked)
        return new TensorRef(storage, offset as number, Object.freeze([...size]) as number[], Object.freeze([...stride]) as number[]);
      };
    case "torch._utils._rebuild_parameter":
    case "torch._utils._rebuild_parameter_with_state":
      return (data: unknown) => data;
    case "torch.device":
      return (type: unknown, index?: unknown) => {
        // (a short name first: a long string given again and again would cost its length each time)
        if (typeof type !== "string" || type.length > 32) throw new CheckpointError(`${where}: torch.device got ${brief(type)}`);
        const [t, i] = type.split(":");
        return new TorchDevice(t!, typeof index === "number" ? index : i !== undefined ? Number(i) : null);
      };
    case "torch.Size":
      return (dims: unknown) => dims;
    case "numpy.core.multiarray.scalar":
    case "numpy._core.multiarray.scalar":
      return (dtype: unknown, bytes: unknown) => numpyScalar(dtype, bytes) ?? new Opaque(fqn, [dtype, bytes]);
  }
  if (module === "torch" && STORAGE_TYPES[name]) {
    const st = STORAGE_TYPES[name]!;
    const type = Object.freeze(new StorageType(name, st.dtype, st.bytes));
    return Object.freeze(Object.assign(() => type, { storageType: type }));
  }
  if (
    INERT_NAMESPACES.some((p) => fqn.startsWith(p)) ||
    fqn === "copyreg._reconstructor" ||
    fqn === "builtins.object" ||
    fqn === "builtins.slice" ||
    fqn === "builtins.complex"
  ) {
    return function (...args: unknown[]) {
      return new Opaque(fqn, args);
    };
  }
  throw new CheckpointError(
    `${where}: the pickle names the Python global "${fqn}", which a PyTorch or nnU-Net checkpoint never holds; the file is refused (nothing in it was run)`,
  );
}

export function numpyScalar(dtype: unknown, bytes: unknown): number | undefined {
  if (!(dtype instanceof NumpyDType) || !(bytes instanceof Uint8Array)) return undefined;
  // (the dtype's state names its byte order: big-endian values are not read as little-endian ones)
  if (Array.isArray(dtype.state) && dtype.state[1] === ">" && !/1$/.test(dtype.str)) return undefined;
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const want = (n: number) => bytes.byteLength === n;
  switch (dtype.str) {
    case "f8":
      return want(8) ? dv.getFloat64(0, true) : undefined;
    case "f4":
      return want(4) ? dv.getFloat32(0, true) : undefined;
    case "i8":
      return want(8) ? Number(dv.getBigInt64(0, true)) : undefined;
    case "i4":
      return want(4) ? dv.getInt32(0, true) : undefined;
    case "b1":
      return want(1) ? bytes[0]! : undefined;
  }
  return undefined;
}

const isIntArray = (v: unknown): v is number[] => Array.isArray(v) && v.length <= 64 && v.every((x) => Number.isSafeInteger(x) && x >= 0);

/** Most items a pickled dict or set may hold (a state_dict has thousands; its bytes bound it too). */
const MAX_ITEMS = 10_000_000;

export function typeName(v: unknown): string {
  if (v === null || v === undefined) return "None";
  if (v instanceof Opaque) return `an object of ${v.global}`;
  if (v instanceof TensorRef) return `a tensor`;
  if (v instanceof Map) return "a dict";
  if (Array.isArray(v)) return "a list/tuple";
  if (v instanceof Uint8Array) return "bytes";
  return `a ${typeof v}`;
}

/**
 * A pickle parsed by `parsePickle`, which runs nothing: every global goes through `resolveGlobal`
 * (which refuses what it does not know), persistent ids through `persistent` (refused without it),
 * extension codes are refused; dicts come back as Maps, sets as arrays. A parse error is a
 * CheckpointError: `where`, `unreadable` and the parser's message (`what` the bytes are names them
 * in the refusals).
 */
export function unpickle(
  bytes: Uint8Array,
  where: string,
  what: string,
  unreadable: string,
  resolveGlobal: (module: string, name: string) => unknown,
  persistent?: (pid: unknown) => unknown,
): unknown {
  // (a linear walk first: what would cost the parser time or memory out of proportion is refused)
  const bad = scanPickle(bytes);
  if (bad) throw new CheckpointError(`${where}: ${unreadable} (${bad})`);
  try {
    return parsePickle(bytes, {
      global: resolveGlobal,
      persistent:
        persistent ??
        ((): never => {
          throw new CheckpointError(`${where}: the pickle uses a persistent id, which ${what} never holds`);
        }),
    });
  } catch (e) {
    if (e instanceof CheckpointError) throw e;
    // (a PickleError, or a global of ours given arguments of the wrong kinds)
    throw new CheckpointError(`${where}: ${unreadable} (${(e as Error).message})`);
  }
}

/** An open checkpoint: its pickled object (dicts as PyDict) and a reader for its tensors. */
export interface Checkpoint {
  path: string;
  /** The unpickled object; tensors are TensorRefs. */
  root: unknown;
  /** Reads a float tensor (float32 storage, contiguous) into a new Float32Array. */
  readFloat32(t: TensorRef, name: string): Promise<Float32Array>;
  close(): void;
}

/**
 * The zip read through the handle this reader opened (a regular file, opened without blocking):
 * yauzl opening the path itself would wait forever on a FIFO, and could open another file than
 * the one checked. The handle stays ours: yauzl's close leaves it open.
 */
function openZip(fh: FileHandle, size: number): Promise<Yauzl.ZipFile> {
  // (positioned reads on the handle: a stream of the FileHandle itself would close it when done)
  const readAt = async (buf: Buffer, off: number, len: number, pos: number) => {
    for (let n = 0; n < len;) {
      const { bytesRead } = await fh.read(buf, off + n, len - n, pos + n);
      if (bytesRead === 0) throw new Error("unexpected end of file");
      n += bytesRead;
    }
  };
  class HandleReader extends yauzl.RandomAccessReader {
    override _readStreamForRange(start: number, end: number) {
      let pos = start;
      return new Readable({
        read(this: Readable) {
          const len = Math.min(1 << 20, end - pos);
          if (len <= 0) return void this.push(null);
          const b = Buffer.allocUnsafe(len);
          readAt(b, 0, len, pos).then(
            () => ((pos += len), this.push(b)),
            (e: Error) => this.destroy(e),
          );
        },
      });
    }
    override read(buf: Buffer, off: number, len: number, pos: number, cb: (err: Error | null) => void) {
      readAt(buf, off, len, pos).then(
        () => cb(null),
        (e: Error) => cb(e),
      );
    }
  }
  return new Promise((resolve, reject) =>
    yauzl.fromRandomAccessReader(
      new HandleReader(),
      size,
      { lazyEntries: true, autoClose: false, validateEntrySizes: true, strictFileNames: false },
      (err, zf) => (err ? reject(err) : resolve(zf!)),
    ),
  );
}

function listEntries(zf: Yauzl.ZipFile, max: number, where: string): Promise<Map<string, Yauzl.Entry>> {
  return new Promise((resolve, reject) => {
    const out = new Map<string, Yauzl.Entry>();
    zf.on("entry", (e: Yauzl.Entry) => {
      if (out.size >= max) {
        zf.removeAllListeners();
        reject(new CheckpointError(`${where}: more than ${max} zip entries`));
        return;
      }
      out.set(e.fileName, e);
      zf.readEntry();
    });
    zf.once("end", () => resolve(out));
    zf.once("error", (e: Error) => reject(e));
    zf.readEntry();
  });
}

/** Reads one entry whole, refusing one that declares more than `max` bytes or could not hold what it declares. */
function readEntry(zf: Yauzl.ZipFile, e: Yauzl.Entry, max: number, where: string): Promise<Uint8Array> {
  if (e.isEncrypted()) return Promise.reject(new CheckpointError(`${where}: zip entry ${e.fileName} is encrypted`));
  if (e.compressionMethod !== 0 && e.compressionMethod !== 8)
    return Promise.reject(
      new CheckpointError(
        `${where}: zip entry ${e.fileName} uses compression method ${e.compressionMethod} (only stored and deflate are read)`,
      ),
    );
  if (e.uncompressedSize > max)
    return Promise.reject(
      new CheckpointError(`${where}: zip entry ${e.fileName} declares ${e.uncompressedSize} bytes, more than the ${max} allowed`),
    );
  if (e.compressionMethod === 0 && e.compressedSize !== e.uncompressedSize)
    return Promise.reject(
      new CheckpointError(
        `${where}: zip entry ${e.fileName} is stored but declares ${e.compressedSize} bytes compressed and ${e.uncompressedSize} uncompressed`,
      ),
    );
  // deflate expands at most ~1032:1; a larger declared ratio is a lie (a zip bomb's header)
  if (e.compressionMethod === 8 && e.uncompressedSize > e.compressedSize * 1032 + 1024)
    return Promise.reject(
      new CheckpointError(
        `${where}: zip entry ${e.fileName} declares ${e.uncompressedSize} bytes from ${e.compressedSize} compressed, beyond what deflate can produce (a zip bomb?)`,
      ),
    );
  return new Promise((resolve, reject) => {
    zf.openReadStream(e, (err, stream) => {
      if (err) return reject(err);
      const out = new Uint8Array(e.uncompressedSize);
      let n = 0;
      (stream as Readable).on("data", (chunk: Buffer) => {
        if (n + chunk.length > out.length) {
          (stream as Readable).destroy(
            new CheckpointError(`${where}: zip entry ${e.fileName} holds more than the ${out.length} bytes it declares`),
          );
          return;
        }
        out.set(chunk, n);
        n += chunk.length;
      });
      (stream as Readable).once("error", reject);
      (stream as Readable).once("end", () =>
        n === out.length
          ? resolve(out)
          : reject(new CheckpointError(`${where}: zip entry ${e.fileName} ends after ${n} of ${out.length} bytes`)),
      );
    });
  });
}

/** Reads bytes [start, end) of a stored entry into `out`: one positioned read at the data's offset, which yauzl checks lies in the file. */
async function readRange(
  zf: Yauzl.ZipFile,
  fh: FileHandle,
  e: Yauzl.Entry,
  start: number,
  end: number,
  out: Uint8Array,
  where: string,
): Promise<void> {
  if (end === start) return;
  const dataStart = await new Promise<number>((resolve, reject) =>
    (
      zf as unknown as {
        readLocalFileHeader(e: Yauzl.Entry, o: { minimal: boolean }, cb: (err: Error | null, h: { fileDataStart: number }) => void): void;
      }
    ).readLocalFileHeader(e, { minimal: true }, (err, h) =>
      err ? reject(new CheckpointError(`${where}: cannot read ${e.fileName} (${err.message})`)) : resolve(h.fileDataStart),
    ),
  );
  let n = 0;
  while (n < out.length) {
    const { bytesRead } = await fh.read(out, n, out.length - n, dataStart + start + n);
    if (bytesRead === 0) throw new CheckpointError(`${where}: ${e.fileName} ends after ${n} of ${out.length} bytes (truncated file?)`);
    n += bytesRead;
  }
}

/**
 * Opens a PyTorch zip checkpoint and unpickles its object (no storage is read). Errors name the
 * file and what was wrong: not a zip (truncated, or PyTorch's legacy format), over a limit, a
 * malformed pickle, a global outside what a checkpoint holds.
 */
export async function openCheckpoint(path: string, limits: CheckpointLimits = {}): Promise<Checkpoint> {
  const lim = { ...DEFAULTS, ...limits };
  const where = path;
  let fh: FileHandle, size: number;
  try {
    const f = await openRegularFile(path);
    [fh, size] = [f.fh, f.st.size];
  } catch (e) {
    throw new CheckpointError(`${where}: cannot read the checkpoint (${(e as Error).message})`);
  }
  let zf: Yauzl.ZipFile;
  try {
    if (size > lim.maxBytes)
      throw new CheckpointError(`${where}: the checkpoint is ${size} bytes, more than the ${lim.maxBytes} allowed (maxCheckpointBytes)`);
    zf = await openZip(fh, size).catch((e: Error) => {
      throw new CheckpointError(
        `${where}: not a readable PyTorch zip checkpoint — truncated, damaged, or saved in PyTorch's legacy (pre-1.6, non-zip) format (${e.message})`,
      );
    });
  } catch (e) {
    await fh.close().catch(() => {});
    throw e;
  }
  try {
    let entries: Map<string, Yauzl.Entry>;
    try {
      entries = await listEntries(zf, lim.maxEntries, where);
    } catch (e) {
      if (e instanceof CheckpointError) throw e;
      throw new CheckpointError(`${where}: damaged zip directory (${(e as Error).message})`);
    }
    const pkls = [...entries.keys()].filter((k) => /^[^/]+\/data\.pkl$/.test(k));
    if (pkls.length !== 1)
      throw new CheckpointError(`${where}: expected one <root>/data.pkl in the archive, found ${pkls.length ? pkls.join(", ") : "none"}`);
    const root = pkls[0]!.slice(0, -"/data.pkl".length);
    const byteorder = entries.get(`${root}/byteorder`);
    if (byteorder) {
      const bo = new TextDecoder().decode(await readEntry(zf, byteorder, 16, where)).trim();
      if (bo !== "little") throw new CheckpointError(`${where}: byteorder "${bo}" (only little-endian checkpoints are read)`);
    }
    const pklEntry = entries.get(pkls[0]!)!;
    const pklBytes = await readEntry(zf, pklEntry, lim.maxPickleBytes, where);
    if (crc32(pklBytes) !== pklEntry.crc32)
      throw new CheckpointError(`${where}: ${pklEntry.fileName} fails its CRC-32 check (a damaged file)`);
    const storages = new Map<string, StorageRef>();
    const persistent = (pid: unknown) => {
      if (!Array.isArray(pid) || pid[0] !== "storage" || pid.length < 5)
        throw new CheckpointError(`${where}: persistent id ${brief(typeof pid === "string" ? pid : typeName(pid))} is not a torch storage`);
      const [, type, key, location, numel] = pid as [string, unknown, unknown, unknown, unknown];
      const st = (type as { storageType?: StorageType })?.storageType;
      if (!(st instanceof StorageType) || !Object.isFrozen(st))
        throw new CheckpointError(`${where}: storage ${brief(key)} has type ${typeName(type)}, not a torch storage type`);
      if (typeof key !== "string" || key.length > 64 || !/^[A-Za-z0-9_]+$/.test(key))
        throw new CheckpointError(`${where}: storage key ${brief(key)} is malformed`);
      if (!Number.isSafeInteger(numel) || (numel as number) < 0)
        throw new CheckpointError(`${where}: storage ${key} has element count ${brief(numel)}`);
      // (a device name as PyTorch writes it: "cpu", "cuda:0")
      if (typeof location !== "string" || location.length > 64)
        throw new CheckpointError(`${where}: storage ${key} has location ${brief(location)}, not a device name`);
      const had = storages.get(key);
      if (had) {
        if (had.dtype !== st.dtype || had.numel !== numel)
          throw new CheckpointError(`${where}: storage ${key} is described twice, differently`);
        return had;
      }
      const s = Object.freeze(new StorageRef(key, st.dtype, st.bytes, numel as number, location));
      storages.set(key, s);
      return s;
    };
    const charge = pickleBudget(pklBytes.length, where);
    const obj = unpickle(
      pklBytes,
      where,
      "a checkpoint",
      "malformed data.pkl",
      (module, name) => resolveGlobal(module, name, where, charge),
      persistent,
    );
    // What all the tensors read may hold together: twice the archive's storage records. Each read is
    // checked against its own storage, but any number of tensors may view one storage (tied
    // weights, written once), and each read is a copy: without this, a 2 MB file naming one storage
    // under a few hundred parameters had read 600 MB.
    let stored = 0;
    for (const [k, e] of entries) if (k.startsWith(`${root}/data/`)) stored += e.uncompressedSize;
    // ...and records that are each their own bytes: entries of the central directory that point
    // into one another's data (787 names for one 3.5 MB record had made 462 MB of weights) are
    // refused — a record's local header (30 bytes and more) and data lie before the next one's.
    const records = [...entries]
      .filter(([k]) => k.startsWith(`${root}/data/`))
      .map(([, e]) => e)
      .sort((a, b) => a.relativeOffsetOfLocalHeader - b.relativeOffsetOfLocalHeader);
    for (let i = 1; i < records.length; i++) {
      const a = records[i - 1]!,
        b = records[i]!;
      if (b.relativeOffsetOfLocalHeader < a.relativeOffsetOfLocalHeader + 30 + a.compressedSize)
        throw new CheckpointError(`${where}: zip entries ${a.fileName} and ${b.fileName} overlap (one record's bytes named twice)`);
    }
    let readBudget = 2 * stored;
    return {
      path,
      root: obj,
      async readFloat32(t: TensorRef, name: string): Promise<Float32Array> {
        const s = t.storage;
        if (s.dtype !== "float32") throw new CheckpointError(`${where}: tensor ${name} is ${s.dtype}; only float32 weights are read`);
        const n = t.numel;
        // contiguous (C-order) strides; a dimension of size 1 may have any stride
        let expect = 1;
        for (let i = t.shape.length - 1; i >= 0; i--) {
          if (t.shape[i] !== 1 && t.stride[i] !== expect)
            throw new CheckpointError(`${where}: tensor ${name} has strides [${t.stride}] for shape [${t.shape}], not a contiguous layout`);
          expect *= t.shape[i]!;
        }
        if (t.offset + n > s.numel)
          throw new CheckpointError(
            `${where}: tensor ${name} reads elements ${t.offset}…${t.offset + n} of storage ${s.key}, which has ${s.numel}`,
          );
        const e = entries.get(`${root}/data/${s.key}`);
        if (!e) throw new CheckpointError(`${where}: storage record ${root}/data/${s.key} (tensor ${name}) is missing from the archive`);
        const want = s.numel * s.itemBytes;
        if (e.uncompressedSize !== want)
          throw new CheckpointError(
            `${where}: storage record ${root}/data/${s.key} (tensor ${name}) has ${e.uncompressedSize} bytes; the pickle says ${s.numel} × ${s.itemBytes} = ${want}`,
          );
        // PyTorch stores storages uncompressed: the bytes read are bounded by the file's size
        if (e.compressionMethod !== 0 || e.isEncrypted())
          throw new CheckpointError(
            `${where}: storage record ${root}/data/${s.key} is compressed or encrypted; PyTorch writes storages stored as is`,
          );
        if (n * 4 > readBudget)
          throw new CheckpointError(
            `${where}: reading tensor ${name} (${n * 4} bytes) would take what this checkpoint's tensors read past twice its ${stored} bytes of storages (tensors viewing the same storage again and again)`,
          );
        readBudget -= n * 4;
        // engine memory (huge pages; a fresh Float32Array's 4 KB pages touch at about 0.3 GB/s here):
        // the read writes every byte
        const out = allocArray("float32", n, `tensor ${name}`, { overwritten: true }) as Float32Array;
        const bytes = new Uint8Array(out.buffer, out.byteOffset, out.byteLength);
        try {
          await readRange(zf, fh, e, t.offset * 4, (t.offset + n) * 4, bytes, where);
          // a tensor that is its whole storage (every state_dict entry PyTorch writes) is checked against the entry's CRC-32
          if (n * 4 === want && crc32(bytes) !== e.crc32)
            throw new CheckpointError(`${where}: storage record ${e.fileName} (tensor ${name}) fails its CRC-32 check (a damaged file)`);
        } catch (err) {
          releaseEngineArray(out);
          throw err;
        }
        return out;
      },
      close() {
        zf.close();
        void fh.close().catch(() => {});
      },
    };
  } catch (e) {
    zf.close();
    void fh.close().catch(() => {});
    throw e;
  }
}
