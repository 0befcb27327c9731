/**
 * float16 and bfloat16 in models: weights decoded to float32 at load, and values rounded to the
 * type where the model casts to it (or declares an input or output of it). The engine computes in
 * float32 throughout; a float16 model's numbers are those of its float16 tensors, its arithmetic
 * float32's (as onnxruntime's CPU provider runs a float16 node it has no float16 kernel for: cast
 * up, computed in float32, cast back).
 */

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

/** IEEE half-precision bits → the number (subnormals, infinities and NaN included). */
export function halfToFloat(h: number): number {
  const s = h & 0x8000 ? -1 : 1,
    e = (h >> 10) & 0x1f,
    m = h & 0x3ff;
  if (e === 0) return s * m * 2 ** -24;
  if (e === 31) return m ? NaN : s * Infinity;
  return s * (1 + m / 1024) * 2 ** (e - 15);
}

/** bfloat16 bits → the number (the top half of a float32). */
export function bf16ToFloat(b: number): number {
  u32[0] = (b & 0xffff) << 16;
  return f32[0]!;
}

/** `n` little-endian 16-bit values (raw_data) or int32_data's low halves, decoded into `out`. */
export function decode16(
  raw: Uint8Array | undefined,
  ints: readonly number[] | undefined,
  n: number,
  bf16: boolean,
  out: Float32Array,
): void {
  const conv = bf16 ? bf16ToFloat : halfToFloat;
  if (raw && raw.length) for (let i = 0; i < n; i++) out[i] = conv(raw[2 * i]! | (raw[2 * i + 1]! << 8));
  else for (let i = 0; i < n; i++) out[i] = conv(Number(ints![i]) & 0xffff);
}

/** x rounded to the nearest float16 (ties to even; beyond 65520 → ±∞; NaN stays NaN). */
export function roundHalf(x: number): number {
  if (!Number.isFinite(x) || x === 0) return x;
  const a = Math.abs(x);
  if (a >= 65520) return x > 0 ? Infinity : -Infinity;
  // the spacing of float16 numbers at a: 2^(e − 10) for normals (e ≥ −14), 2^−24 below
  const e = Math.max(Math.floor(Math.log2(a)), -14);
  let q = 2 ** (e - 10);
  // (log2 may land one off at powers of two: keep a / q within [1024, 2048) for normals)
  if (e > -14 && a / q >= 2048) q *= 2;
  else if (e > -14 && a / q < 1024) q /= 2;
  const r = a / q;
  let k = Math.floor(r);
  const d = r - k;
  if (d > 0.5 || (d === 0.5 && k % 2 === 1)) k++;
  return Math.sign(x) * k * q;
}

/** x rounded to the nearest bfloat16 (ties to even), through float32 first as a cast from float does. */
export function roundBf16(x: number): number {
  f32[0] = x;
  const b = u32[0]!;
  if ((b & 0x7f800000) === 0x7f800000) return f32[0]!; // ∞, NaN
  u32[0] = ((b + 0x7fff + ((b >> 16) & 1)) >>> 16) << 16;
  return f32[0]!;
}

/** `src` rounded to float16 (or bfloat16) into `out` (may be `src`). */
export function roundTo16(src: Float32Array, out: Float32Array, bf16: boolean): void {
  const r = bf16 ? roundBf16 : roundHalf;
  for (let i = 0; i < src.length; i++) out[i] = r(src[i]!);
}
