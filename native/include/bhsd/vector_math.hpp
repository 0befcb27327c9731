// Portable vector arithmetic the transformer kernels share (attention's softmax, GELU's erf): the
// compiler's vector types of W float lanes (AVX-512 16, AVX2 8, the default target 4), instantiated
// inside functions compiled for each target, and Cephes' expf polynomial on them. No function takes
// or returns a vector by value (that would change the call ABI between targets): helpers are inlined
// and work through references.
#pragma once

#include <cstdint>

namespace bhsd::vector_math {

template <int W>
struct Vec {
  typedef float f __attribute__((vector_size(4 * W)));
  typedef float fu __attribute__((vector_size(4 * W), aligned(4)));
  typedef std::int32_t i __attribute__((vector_size(4 * W)));
};

// r = e^r · 2^n, for |r| ≤ ln 2 / 2 and n a whole number of the exponent's range (Cephes' expf
// polynomial; a vector cast reinterprets the bits).
template <int W>
__attribute__((always_inline)) inline void exp_reduced(typename Vec<W>::f& r, const typename Vec<W>::f& n) {
  using vf = typename Vec<W>::f;
  using vi = typename Vec<W>::i;
  vf p = vf{} + 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * (r * r) + r + 1.0f;
  r = p * (vf)((__builtin_convertvector(n, vi) + 127) << 23);
}

// x = e^x for x ≤ 0 (and NaN): Cephes' expf; 0 below −87.3 (and for −∞). Attention's softmax (x less
// its row's maximum) and Mamba's scan (Δ · A, SiLU's and softplus's e^−|x|) take it.
template <int W>
__attribute__((always_inline)) inline void exp_nonpositive(typename Vec<W>::f& x) {
  using vf = typename Vec<W>::f;
  using vi = typename Vec<W>::i;
  const vf zero = vf{}, lo = zero - 87.3f;
  const vi nan = x != x;
  const vi tiny = x < lo;
  const vf xs = nan ? zero : (tiny ? lo : x);
  const vf n = (xs * 1.44269504088896341f + 12582912.0f) - 12582912.0f;  // round to nearest
  vf e = xs - n * 0.693359375f;
  e = e - n * -2.12194440e-4f;
  exp_reduced<W>(e, n);
  x = nan ? x : (tiny ? zero : e);
}

}  // namespace bhsd::vector_math
