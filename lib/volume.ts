/** Building and checking `Volume`s. */
import { engineBuffer, nativeBackend } from "./backends/index.js";
import { dtypeOf, invalidParameterError, number, plainObject } from "./is.js";
import type { Disposal, DTypeName, Volume, VoxelArray } from "./types.js";

/** The largest number of elements one typed array may hold here. */
export const MAX_ELEMENTS = 2 ** 32 - 1;

export const BYTES_PER_ELEMENT: Record<DTypeName, number> = {
  uint8: 1,
  int8: 1,
  int16: 2,
  uint16: 2,
  int32: 4,
  uint32: 4,
  float32: 4,
  float64: 8,
};

type ArrayCtor = { new (n: number): VoxelArray; new (b: ArrayBufferLike, o: number, n: number): VoxelArray };
export const ARRAY_CTOR: Record<DTypeName, ArrayCtor> = {
  uint8: Uint8Array,
  int8: Int8Array,
  int16: Int16Array,
  uint16: Uint16Array,
  int32: Int32Array,
  uint32: Uint32Array,
  float32: Float32Array,
  float64: Float64Array,
};

/**
 * A zero-filled array of `n` elements, after checking that `n` is allocatable. Large arrays live in
 * the native engine's memory where the addon is loaded (huge pages, pooled; see engineBuffer), so
 * that native calls use them without a copy; elsewhere on the JavaScript heap. `overwritten`: the
 * caller writes every element before the array is seen outside it (a file read into it whole, a
 * conversion into it), so a reused engine block is not cleared first (a 42 MB memset).
 */
export function allocArray(dtype: DTypeName, n: number, what = "result", options?: { overwritten?: boolean }): VoxelArray {
  if (!Number.isSafeInteger(n) || n < 0) throw new RangeError(`${what}: element count ${n} is not a valid size`);
  if (n > MAX_ELEMENTS)
    throw new RangeError(`${what}: ${n} elements of ${dtype} exceed the ${MAX_ELEMENTS}-element limit of one typed array`);
  try {
    const engine = engineBuffer(n * BYTES_PER_ELEMENT[dtype], !options?.overwritten);
    if (engine) return new ARRAY_CTOR[dtype](engine, 0, n);
    return new ARRAY_CTOR[dtype](n);
  } catch (e) {
    throw new RangeError(`${what}: cannot allocate ${n} × ${BYTES_PER_ELEMENT[dtype]} bytes (${(e as Error).message})`, { cause: e });
  }
}

/** Row-major 4x4 diagonal affine for a spacing, with no offset. */
export function diagonalAffine(spacing: readonly [number, number, number]): number[] {
  return [spacing[0], 0, 0, 0, 0, spacing[1], 0, 0, 0, 0, spacing[2], 0, 0, 0, 0, 1];
}

function isDims(v: unknown): v is [number, number, number] {
  return Array.isArray(v) && v.length === 3 && v.every((d) => Number.isSafeInteger(d) && d >= 1);
}

/**
 * Checks that `v` is a well-formed Volume: a voxel array whose length is nx·ny·nz, positive
 * spacing, a 16-number affine. Throws an error naming `name` and the fault.
 */
export function assertVolume(name: string, v: unknown): asserts v is Volume {
  if (!plainObject(v) && !(typeof v === "object" && v !== null))
    throw invalidParameterError(name, "a Volume { data, dims, spacing, affine }", v);
  const vol = v as Partial<Volume>;
  if (dtypeOf(vol.data) === undefined) {
    throw invalidParameterError(
      `${name}.data`,
      "a typed array (Uint8Array, Int8Array, Int16Array, Uint16Array, Int32Array, Uint32Array, Float32Array or Float64Array)",
      vol.data,
    );
  }
  if (!isDims(vol.dims)) throw invalidParameterError(`${name}.dims`, "[nx, ny, nz] of positive integers", vol.dims);
  const [nx, ny, nz] = vol.dims;
  const n = nx * ny * nz;
  if (vol.data!.length !== n) {
    throw new RangeError(`${name}.data has ${vol.data!.length} voxels but ${name}.dims [${nx}, ${ny}, ${nz}] need ${n}`);
  }
  if (!Array.isArray(vol.spacing) || vol.spacing.length !== 3 || !vol.spacing.every((s) => number(s) && s > 0)) {
    throw invalidParameterError(`${name}.spacing`, "[sx, sy, sz] of positive numbers (mm)", vol.spacing);
  }
  // a voxel's volume is what every mL comes from: spacings like 1e-200 or 1e300 mm gave 0 or Infinity
  const voxel = vol.spacing[0]! * vol.spacing[1]! * vol.spacing[2]!;
  if (!(voxel >= 2 ** -1022 && voxel < Infinity)) {
    throw invalidParameterError(
      `${name}.spacing`,
      `spacings whose product (a voxel's volume, here ${voxel} mm³) is a normal finite number`,
      vol.spacing,
    );
  }
  if (!Array.isArray(vol.affine) || vol.affine.length !== 16 || !vol.affine.every((a) => number(a))) {
    throw invalidParameterError(`${name}.affine`, "16 finite numbers (4x4 row-major)", vol.affine);
  }
}

/**
 * Builds a Volume from a C-order array of shape (z, y, x) — numpy's order — with spacing given in
 * the same (z, y, x) order (default 1 mm). Leading axes of size 1 are allowed ((1, 1, z, y, x)); a
 * 2-D shape (y, x) makes a one-slice volume. The data is used as it is, not copied.
 */
export function volumeFromArray<T extends VoxelArray>(
  data: T,
  shapeZYX: readonly number[],
  spacingZYX: readonly number[] = [1, 1, 1],
): Volume<T> {
  if (dtypeOf(data) === undefined) throw invalidParameterError("data", "a typed array", data);
  if (!Array.isArray(shapeZYX) || shapeZYX.length < 2 || !shapeZYX.every((d) => Number.isSafeInteger(d) && d >= 1)) {
    throw invalidParameterError("shapeZYX", "an array of 2 to 5 positive integers", shapeZYX);
  }
  let shape = [...shapeZYX];
  while (shape.length > 3 && shape[0] === 1) shape = shape.slice(1);
  if (shape.length > 3) throw invalidParameterError("shapeZYX", "a shape (z, y, x), with any extra leading axes of size 1", shapeZYX);
  if (shape.length === 2) shape = [1, ...shape];
  const [nz, ny, nx] = shape as [number, number, number];
  if (data.length !== nx * ny * nz) {
    throw new RangeError(`data has ${data.length} elements but shapeZYX (${shapeZYX.join(", ")}) needs ${nx * ny * nz}`);
  }
  if (!Array.isArray(spacingZYX) || spacingZYX.length !== 3 || !spacingZYX.every((s) => number(s) && s > 0)) {
    throw invalidParameterError("spacingZYX", "[sz, sy, sx] of positive numbers (mm)", spacingZYX);
  }
  const spacing: [number, number, number] = [spacingZYX[2]!, spacingZYX[1]!, spacingZYX[0]!];
  return { data, dims: [nx, ny, nz], spacing, affine: diagonalAffine(spacing) };
}

/**
 * Hands the memory of a Volume's, a Tensor's or a typed array's buffer back now, where a loop over a
 * data set would otherwise leave each dropped CT to V8's next collection (reading 512×512×40 CTs
 * back to back, V8 collected every other read: 14.6 ms a read, 2.9 with each released). The buffer
 * is detached: the array, and any other view of that buffer, is empty afterwards (length 0), on
 * every backend; engine memory goes back to the engine by the event loop's next turn, where Node-API
 * runs the finalizer (a native call still running on it keeps it until it ends). An array that does not span its whole buffer (a view beside others) or
 * lies in a SharedArrayBuffer is refused; an array already released is left as it is.
 */
export function release(x: Volume | { data: ArrayBufferView } | ArrayBufferView): void {
  const a = ArrayBuffer.isView(x) ? x : x && typeof x === "object" && "data" in x ? (x as { data: unknown }).data : undefined;
  if (!ArrayBuffer.isView(a)) throw invalidParameterError("x", "a Volume, a Tensor or a typed array", x);
  const buf = a.buffer;
  if (typeof SharedArrayBuffer !== "undefined" && buf instanceof SharedArrayBuffer)
    throw invalidParameterError("x", "an array over an ArrayBuffer (a SharedArrayBuffer cannot be released)", "a SharedArrayBuffer");
  if (buf.byteLength === 0) return; // released already (or empty)
  if (a.byteOffset !== 0 || a.byteLength !== buf.byteLength)
    throw invalidParameterError(
      "x",
      "an array spanning its whole buffer (releasing a view would empty the arrays beside it)",
      `a view of ${a.byteLength} of its buffer's ${buf.byteLength} bytes`,
    );
  const native = nativeBackend();
  if (native) native.detach(buf as ArrayBuffer);
  else structuredClone(buf, { transfer: [buf as ArrayBuffer] });
}

/**
 * release() for volumes a loop of the package's own read and dropped (a data set's evaluation, a
 * queue worker's jobs): each one's memory goes back at once rather than at V8's next collection.
 * A volume release() refuses (a view beside others) is left to the collector.
 */
export function releaseDropped(...xs: (Volume | { data: ArrayBufferView } | undefined)[]): void {
  for (const x of xs)
    if (x)
      try {
        release(x);
      } catch {
        // a view or a SharedArrayBuffer: the collector frees it, as before
      }
}

/**
 * `v`, made disposable: its `[Symbol.dispose]()` release()s the array it holds now, so that
 * `using ct = await readNifti(path)` hands a CT's memory back as the block ends, as numpy's
 * reference counting does for nibabel (TypeScript ≥ 5.2 or a bundler lowers `using` on Node 20;
 * Node 24 has it natively). Calling it twice, or after release(), does nothing; an array release()
 * refuses is left to the collector. Not enumerable: a spread or structured copy of the volume (which
 * shares or copies the array) is not disposable.
 */
export function disposable<V extends Volume>(v: V): V & Disposal {
  const data = v.data;
  Object.defineProperty(v, Symbol.dispose, {
    value: () => releaseDropped({ data }),
    enumerable: false,
    configurable: true,
    writable: true,
  });
  return v as V & Disposal;
}
