// bhsd — the weight gradient of a (transposed) convolution as a correlation of two tensors: the
// reference dot products and the blocked AVX2 GEMM. Part of conv.hpp.
#pragma once

#include "conv_pack.hpp"

namespace bhsd {

// The weight gradient of a convolution, as a correlation of two tensors of one batch item:
//   out[ca, cb, a, b, c] += Σ_o A[ca, o] · B[cb, o·s − p + (a, b, c)·d]
// over the voxels o of A's grid (Ad × Ah × Aw), B's grid being Bd × Bh × Bw. For conv3d, A = dy and
// B = x (out = dw [Co, C, k…]); for a transposed convolution, A = x and B = dy (out = dw [C, Co, k…]).
//
// One dot product per weight (memory-bound): the form the blocked version is tested against, and
// the path for processors without AVX2.
inline void correlate_weight_grad_reference(const float* A, std::int64_t Ca, std::int64_t Ad, std::int64_t Ah,
                                            std::int64_t Aw, const float* B, std::int64_t Cb, std::int64_t Bd,
                                            std::int64_t Bh, std::int64_t Bw, std::int64_t kd, std::int64_t kh,
                                            std::int64_t kw, const std::int64_t* s, const std::int64_t* p,
                                            const std::int64_t* d, float* out, ThreadPool& pool) {
  const std::int64_t va = Ad * Ah * Aw, vb = Bd * Bh * Bw, ksp = kd * kh * kw;
  pool.parallel_for(std::size_t(Ca * Cb), [&](std::size_t lo, std::size_t hi) {
    for (std::size_t q = lo; q < hi; ++q) {
      const std::int64_t ca = std::int64_t(q) / Cb, cb = std::int64_t(q) % Cb;
      const float* pa = A + ca * va;
      const float* pb = B + cb * vb;
      float* o = out + (ca * Cb + cb) * ksp;
      for (std::int64_t a = 0; a < kd; ++a)
        for (std::int64_t b = 0; b < kh; ++b)
          for (std::int64_t c = 0; c < kw; ++c) {
            double acc = 0;
            // the range of ow whose B column is inside: 0 ≤ ow·s − p + c·d < Bw
            const std::int64_t off = c * d[2] - p[2];
            std::int64_t w0 = off >= 0 ? 0 : (-off + s[2] - 1) / s[2];
            std::int64_t w1 = Bw - 1 - off < 0 ? 0 : std::min(Aw, (Bw - 1 - off) / s[2] + 1);
            for (std::int64_t z = 0; z < Ad; ++z) {
              const std::int64_t zb = z * s[0] - p[0] + a * d[0];
              if (zb < 0 || zb >= Bd) continue;
              for (std::int64_t y = 0; y < Ah; ++y) {
                const std::int64_t yb = y * s[1] - p[1] + b * d[1];
                if (yb < 0 || yb >= Bh) continue;
                const float* ra = pa + (z * Ah + y) * Aw;
                const float* rb = pb + (zb * Bh + yb) * Bw + off;
                float part[8] = {0, 0, 0, 0, 0, 0, 0, 0};
                std::int64_t w = w0;
                if (s[2] == 1)
                  for (; w + 8 <= w1; w += 8)
                    for (int j = 0; j < 8; ++j) part[j] += ra[w + j] * rb[w + j];
                for (; w < w1; ++w) part[0] += ra[w] * rb[w * s[2]];
                for (int j = 0; j < 8; ++j) acc += part[j];
              }
            }
            o[(a * kh + b) * kw + c] += float(acc);
          }
    }
  });
}

// The same correlation as a GEMM, out^T[K = cb·taps, Ca] = Σ_o colB[K, o] · A^T[o, Ca], blocked like
// conv3d_forward: the voxels of A are cut into chunks of rows (one chunk list per thread); for a
// chunk, A^T is packed once ([Ca / 16][voxel][16]) and the samples of B each weight touches are
// packed in blocks of 6 weights ([block][voxel][6]); the 6×16 AVX2 micro-kernel then contracts over
// the chunk's voxels. Each thread sums its chunks' tiles in double; the threads' sums are added last.
inline void correlate_weight_grad(const float* A, std::int64_t Ca, std::int64_t Ad, std::int64_t Ah, std::int64_t Aw,
                                  const float* B, std::int64_t Cb, std::int64_t Bd, std::int64_t Bh, std::int64_t Bw,
                                  std::int64_t kd, std::int64_t kh, std::int64_t kw, const std::int64_t* s,
                                  const std::int64_t* p, const std::int64_t* d, float* out, ThreadPool& pool) {
#ifdef BHSD_X86
  using namespace conv_detail;
  static const bool fast = pick_kernel() == kernel_avx2;
#else
  const bool fast = false;
#endif
  if (!fast)
    return correlate_weight_grad_reference(A, Ca, Ad, Ah, Aw, B, Cb, Bd, Bh, Bw, kd, kh, kw, s, p, d, out, pool);
#ifdef BHSD_X86
  const std::int64_t ksp = kd * kh * kw, K = Cb * ksp, Kb = (K + MR - 1) / MR, Ca16 = (Ca + NR - 1) / NR * NR;
  const std::int64_t va = Ad * Ah * Aw, vb = Bd * Bh * Bw, planeB = Bh * Bw;
  const std::int64_t segs_per_row = (Aw + NR - 1) / NR, rows = Ad * Ah;
  // about 256 voxels per chunk: the packed A^T (256 × Ca16) and a 6-weight panel stay in L1/L2
  const std::int64_t rows_per_chunk = std::max<std::int64_t>(1, 16 / segs_per_row);
  const std::int64_t chunks = (rows + rows_per_chunk - 1) / rows_per_chunk;
  const unsigned parts = std::max<unsigned>(1, std::min<unsigned>(pool.size(), unsigned(chunks)));
  std::vector<std::vector<double>> sums(parts);
  pool.parallel_for(
      parts,
      [&](std::size_t p0, std::size_t p1) {
        thread_local Scratch at_mem, panel_mem, tile_mem;
        for (std::size_t part = p0; part < p1; ++part) {
          std::vector<double>& sum = sums[part];
          sum.assign(std::size_t(Kb * MR * Ca16), 0.0);
          const std::int64_t c0 = std::int64_t(part) * chunks / parts, c1 = std::int64_t(part + 1) * chunks / parts;
          const std::int64_t maxL = rows_per_chunk * segs_per_row * NR;
          float* at = at_mem.get(std::size_t(maxL * Ca16));
          float* panel = panel_mem.get(std::size_t(maxL * MR));
          float* tile = tile_mem.get(MR * NR);
          for (std::int64_t ch = c0; ch < c1; ++ch) {
            const std::int64_t r0 = ch * rows_per_chunk, r1 = std::min(rows, r0 + rows_per_chunk);
            // voxels of the chunk in segments of NR (a row's tail padded with zeros of A)
            const std::int64_t L = (r1 - r0) * segs_per_row * NR;
            // at[block][j][q] = A[block·16 + q] at voxel j (zeros past Ca and past the row's end)
            for (std::int64_t r = r0; r < r1; ++r) {
              const std::int64_t z = r / Ah, y = r % Ah;
              for (std::int64_t j = 0; j < segs_per_row * NR; ++j) {
                const std::int64_t jj = (r - r0) * segs_per_row * NR + j;
                const float* src = A + (z * Ah + y) * Aw + j;
                for (std::int64_t c = 0; c < Ca16; ++c)
                  at[((c / NR) * L + jj) * NR + c % NR] = (j < Aw && c < Ca) ? src[c * va] : 0.0f;
              }
            }
            for (std::int64_t kb = 0; kb < Kb; ++kb) {
              // panel[j][r] = B sample of weight k = kb·6 + r at voxel j (0 outside B, past K, or past Aw)
              for (std::int64_t r = 0; r < MR; ++r) {
                const std::int64_t k = kb * MR + r;
                if (k >= K) {
                  for (std::int64_t j = 0; j < L; ++j) panel[j * MR + r] = 0.0f;
                  continue;
                }
                const std::int64_t cb = k / ksp, tap = k % ksp;
                const std::int64_t a = tap / (kh * kw), b = (tap / kw) % kh, c = tap % kw;
                const float* pb = B + cb * vb;
                for (std::int64_t rr = r0; rr < r1; ++rr) {
                  const std::int64_t z = rr / Ah, y = rr % Ah;
                  const std::int64_t zb = z * s[0] - p[0] + a * d[0], yb = y * s[1] - p[1] + b * d[1];
                  float* dst = panel + (rr - r0) * segs_per_row * NR * MR + r;
                  const std::int64_t n = segs_per_row * NR;
                  if (zb < 0 || zb >= Bd || yb < 0 || yb >= Bh) {
                    for (std::int64_t j = 0; j < n; ++j) dst[j * MR] = 0.0f;
                    continue;
                  }
                  const float* row = pb + zb * planeB + yb * Bw;
                  // the voxels j whose sample xb = j·s + off lies inside B's row (and j inside A's)
                  const std::int64_t off = c * d[2] - p[2];
                  const std::int64_t jlo = off >= 0 ? 0 : std::min(n, (-off + s[2] - 1) / s[2]);
                  const std::int64_t jhi =
                      std::max(jlo, std::min(Aw, Bw - 1 - off < 0 ? 0 : (Bw - 1 - off) / s[2] + 1));
                  for (std::int64_t j = 0; j < jlo; ++j) dst[j * MR] = 0.0f;
                  if (s[2] == 1)
                    for (std::int64_t j = jlo; j < jhi; ++j) dst[j * MR] = row[j + off];
                  else
                    for (std::int64_t j = jlo; j < jhi; ++j) dst[j * MR] = row[j * s[2] + off];
                  for (std::int64_t j = jhi; j < n; ++j) dst[j * MR] = 0.0f;
                }
              }
              for (std::int64_t cab = 0; cab < Ca16; cab += NR) {
                // tile[r][q] = Σ_j panel[j][r] · at[cab / 16][j][q]
                std::memset(tile, 0, MR * NR * sizeof(float));
                kernel_avx2(panel, at + (cab / NR) * L * NR, L, tile);
                double* sd = sum.data() + (kb * MR) * Ca16 + cab;
                for (std::int64_t r = 0; r < MR; ++r)
                  for (std::int64_t q = 0; q < NR; ++q) sd[r * Ca16 + q] += tile[r * NR + q];
              }
            }
          }
        }
      },
      1, 1);
  // out[ca, k] += Σ_parts sum[k][ca]
  pool.parallel_for(std::size_t(Ca), [&](std::size_t lo, std::size_t hi) {
    for (std::size_t ca = lo; ca < hi; ++ca)
      for (std::int64_t k = 0; k < K; ++k) {
        double v = 0;
        for (const auto& sum : sums) v += sum[std::size_t(k * Ca16) + ca];
        out[std::int64_t(ca) * K + k] += float(v);
      }
  });
#endif
}

}  // namespace bhsd
