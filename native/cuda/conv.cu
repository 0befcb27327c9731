// bhsd — 3D convolution on the GPU as an implicit GEMM: out[m, co] = Σ_k A[m, k] · B[k, co] with
// m an output voxel, k = (input channel, kernel offset) and A gathered from the input on the fly
// (no im2col buffer). A 128×64 output tile per block of 8 warps, K in steps of 16, the next K
// step's loads held in registers while the current one is multiplied. Tensor cores through WMMA
// for TF32 (m16n16k8), fp16 and bf16 (m16n16k16), accumulating in fp32; an fp32 FMA path
// (8×4 outputs per thread) for exact single precision. Bias and activation in the epilogue,
// which writes whole rows of voxels per channel. The transposed convolution is the same GEMM with
// the gather inverted (an input voxel contributes where (o + p − k·d) is a multiple of s).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <mma.h>

#include <cstdlib>
#include <type_traits>

#include "common.cuh"
#include "gpu.hpp"

namespace bhsd_cuda {

namespace {

// Tiles: BM output voxels × BN output channels per block of 8 warps, K in steps of BK, STAGES
// tiles in flight (cp.async: the loads of tile t+2 run while tile t is multiplied).
constexpr int BM = 128, BK = 32, STAGES = 3, THREADS = 256;
constexpr int LDA = BM + 4;  // floats per k-row of the A tile (voxels contiguous)

struct Params {
  const float* x;
  const float* bp;  // packed weights [groups][Kp][Np], zero-padded
  const float* b;
  float* y;
  const int4* ktab;  // per k: channel offset in x, kernel offsets along z y x (times dilation)
  std::int64_t C, D, H, W, Co, M;
  int Ho, Wo, K, Kp, Np, Cg, Cog, groups;
  int sd, sh, sw, pd, ph, pw;
  int kd, kh, kw, dd, dh, dw;
  int transposed, act;
  float alpha;
  int skip;  // profiling only (BHSD_CONV_SKIP): 1 no A gather, 2 no multiply, 4 no B loads
};

__device__ __forceinline__ float activate(float v, int act, float alpha) {
  if (act == 1) return v > 0.f ? v : 0.f;
  if (act == 2) return v > 0.f ? v : v * alpha;
  return v;
}

__device__ __forceinline__ void cp_async4(float* dst, const float* src, bool valid) {
  const unsigned d = unsigned(__cvta_generic_to_shared(dst));
  const int n = valid ? 4 : 0;  // 0: nothing is read, the destination is zero-filled
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(d), "l"(src), "r"(n));
}
__device__ __forceinline__ void cp_async16(float* dst, const float* src) {
  const unsigned d = unsigned(__cvta_generic_to_shared(dst));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(d), "l"(src));
}
__device__ __forceinline__ void cp_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

__global__ void ktab_kernel(int4* tab, int K, int kvol, int kh, int kw, int dd, int dh, int dw, std::int64_t DHW) {
  const int k = blockIdx.x * blockDim.x + threadIdx.x;
  if (k >= K) return;
  const int c = k / kvol, r = k - c * kvol, kz = r / (kh * kw), r2 = r - kz * kh * kw, ky = r2 / kw, kx = r2 - ky * kw;
  tab[k] = make_int4(int(std::int64_t(c) * DHW), kz * dd, ky * dh, kx * dw);
}

// Weights as B[k][co] per group, padded with zeros to Kp × Np, so that the tile loads are whole
// aligned 16-byte vectors with no bounds checks. conv: w [Co][Cg·kvol]; transposed: w [C][Cog][kvol].
__global__ void pack_weights(const float* w, float* bp, int groups, int K, int Kp, int Np, int Cg, int Cog, int kvol,
                             int transposed) {
  const std::int64_t n = std::int64_t(groups) * Kp * Np;
  for (std::int64_t i = std::int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += std::int64_t(gridDim.x) * blockDim.x) {
    const int co = int(i % Np), k = int((i / Np) % Kp), g = int(i / (std::int64_t(Np) * Kp));
    float v = 0.f;
    if (k < K && co < Cog) {
      if (!transposed)
        v = w[(std::int64_t(g) * Cog + co) * K + k];
      else {
        const int c = k / kvol, r = k - c * kvol;
        v = w[((std::int64_t(g) * Cg + c) * Cog + co) * kvol + r];
      }
    }
    bp[i] = v;
  }
}

template <int BN>
struct Smem {
  static constexpr int LDB = BN + 4;
  static constexpr int A_ST = BK * LDA, B_ST = BK * LDB, STAGE = A_ST + B_ST;
  static constexpr int PIPE_FLOATS = STAGES * STAGE;
  static constexpr int WN = BN / 2;                       // each warp: 32 voxels × WN channels
  static constexpr int HA = 16 * 40, HB = 16 * (WN + 8);  // per-warp half staging (fp16/bf16 modes)
  static constexpr int C_FLOATS = BN * (BM + 4);
  static constexpr int BYTES_F = (PIPE_FLOATS > C_FLOATS ? PIPE_FLOATS : C_FLOATS) * 4;
  static constexpr int BYTES_H = BYTES_F + 8 * (HA + HB) * 2;
};

template <class H>
__device__ __forceinline__ H to_half(float v);
template <>
__device__ __forceinline__ __half to_half<__half>(float v) {
  return __float2half_rn(v);
}
template <>
__device__ __forceinline__ __nv_bfloat16 to_half<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

// MODE 0: fp32 FMA; 1: TF32 tensor cores; 2: fp16; 3: bf16 (A and B rounded per k-step into a
// per-warp staging tile, accumulating in fp32).
template <int BN, int MODE>
__global__ void __launch_bounds__(THREADS, 2) conv_pipe(Params p) {
  using S = Smem<BN>;
  extern __shared__ __align__(128) float sm[];
  const int tid = threadIdx.x;
  const std::int64_t m0 = std::int64_t(blockIdx.x) * BM;
  const int n0 = blockIdx.y * BN;
  const int ng = blockIdx.z, n = ng / p.groups, g = ng - n * p.groups;
  const float* xb = p.x + (std::int64_t(n) * p.C + std::int64_t(g) * p.Cg) * (std::int64_t(p.D) * p.H * p.W);
  const float* bpg = p.bp + std::int64_t(g) * p.Kp * p.Np;

  // This thread's voxel for the A loads (two threads per voxel, alternating k).
  const int ml = tid % BM, kb = tid / BM;
  const std::int64_t m = m0 + ml;
  const bool mvalid = m < p.M;
  int oz = 0, oy = 0, ox = 0;
  if (mvalid) {
    const std::int64_t hw = std::int64_t(p.Ho) * p.Wo;
    oz = int(m / hw);
    const int r = int(m - std::int64_t(oz) * hw);
    oy = r / p.Wo, ox = r - oy * p.Wo;
  }
  const int bz = p.transposed ? oz + p.pd : oz * p.sd - p.pd;
  const int by = p.transposed ? oy + p.ph : oy * p.sh - p.ph;
  const int bx = p.transposed ? ox + p.pw : ox * p.sw - p.pw;

  // Forward convolution: which kernel offsets along each axis land inside the input for this
  // voxel (bit masks, computed once), and the voxel's offset in x; a thread then walks 16
  // consecutive k of each tile incrementally (warp-uniform: all 32 lanes share k), so a tap costs
  // a few integer operations and one cp.async, with no table and no division.
  unsigned mz = 0, my = 0, mx = 0;
  std::int64_t vbase = 0;
  const std::int64_t HWs = std::int64_t(p.H) * p.W, DHW = HWs * p.D;
  if (!p.transposed) {
    for (int a = 0; a < p.kd && a < 32; ++a) mz |= unsigned(unsigned(bz + a * p.dd) < unsigned(p.D)) << a;
    for (int a = 0; a < p.kh && a < 32; ++a) my |= unsigned(unsigned(by + a * p.dh) < unsigned(p.H)) << a;
    for (int a = 0; a < p.kw && a < 32; ++a) mx |= unsigned(unsigned(bx + a * p.dw) < unsigned(p.W)) << a;
    vbase = (std::int64_t(bz) * p.H + by) * p.W + bx;
  }
  const int kvol = p.kd * p.kh * p.kw, khw = p.kh * p.kw;

  auto load_stage = [&](int st, int k0) {
    float* As = sm + st * S::STAGE;
    float* Bs = As + S::A_ST;
    if (p.skip & 1) {
    } else if (!p.transposed) {
      int k = k0 + kb * (BK / 2);
      int c = k / kvol, r = k - c * kvol;
      int az = r / khw, r2 = r - az * khw, ay = r2 / p.kw, ax = r2 - ay * p.kw;
      std::int64_t off =
          std::int64_t(c) * DHW + std::int64_t(az) * p.dd * HWs + std::int64_t(ay) * p.dh * p.W + ax * p.dw;
#pragma unroll 4
      for (int j = 0; j < BK / 2; ++j, ++k) {
        const bool ok = mvalid && k < p.K && ((mz >> az) & (my >> ay) & (mx >> ax) & 1u);
        cp_async4(As + (kb * (BK / 2) + j) * LDA + ml, ok ? xb + vbase + off : p.x, ok);
        ++ax, off += p.dw;
        if (ax == p.kw) {
          ax = 0, off += std::int64_t(p.dh) * p.W - std::int64_t(p.kw) * p.dw, ++ay;
          if (ay == p.kh) {
            ay = 0, off += std::int64_t(p.dd) * HWs - std::int64_t(p.kh) * p.dh * p.W, ++az;
            if (az == p.kd) az = 0, off += DHW - std::int64_t(p.kd) * p.dd * HWs;
          }
        }
      }
    } else {
#pragma unroll 4
      for (int i = 0; i < BK / 2; ++i) {
        const int kl = kb + 2 * i, k = k0 + kl;
        const float* src = p.x;
        bool ok = false;
        if (mvalid && k < p.K) {
          const int4 t = __ldg(&p.ktab[k]);
          const int tz = bz - t.y, ty = by - t.z, tx = bx - t.w;
          ok = tz >= 0 && ty >= 0 && tx >= 0 && tz % p.sd == 0 && ty % p.sh == 0 && tx % p.sw == 0;
          const int iz = tz / p.sd, iy = ty / p.sh, ix = tx / p.sw;
          ok = ok && iz < p.D && iy < p.H && ix < p.W;
          if (ok) src = xb + t.x + (std::int64_t(iz) * p.H + iy) * p.W + ix;
        }
        cp_async4(As + kl * LDA + ml, src, ok);
      }
    }
    constexpr int V = BK * BN / 4;  // float4 vectors of the B tile
#pragma unroll
    for (int i = 0; !(p.skip & 4) && i < (V + THREADS - 1) / THREADS; ++i) {
      const int e = tid + THREADS * i;
      if (V % THREADS != 0 && e >= V) break;
      const int row = e / (BN / 4), c4 = e % (BN / 4);
      cp_async16(Bs + row * S::LDB + c4 * 4, bpg + std::int64_t(k0 + row) * p.Np + n0 + c4 * 4);
    }
  };

  using namespace nvcuda;
  const int warp = tid / 32, lane = tid % 32, wm = warp % 4, wn = warp / 4;  // 4 × 2 warps
  constexpr int JN = S::WN / 16;
  constexpr int WK = MODE == 1 ? 8 : 16;
  using FT = typename std::conditional<MODE == 1, wmma::precision::tf32,
                                       typename std::conditional<MODE == 3, __nv_bfloat16, __half>::type>::type;
  wmma::fragment<wmma::accumulator, 16, 16, WK, float> acc[2][JN];
  constexpr int TN = BN / 16;  // FMA path: 8 voxels × TN channels per thread
  float facc[8][TN];
  const int tm = tid % 16, tn = tid / 16;
  if constexpr (MODE != 0) {
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
      for (int j = 0; j < JN; ++j) wmma::fill_fragment(acc[i][j], 0.f);
  } else {
#pragma unroll
    for (int i = 0; i < 8; ++i)
#pragma unroll
      for (int j = 0; j < TN; ++j) facc[i][j] = 0.f;
  }

  const int KT = p.Kp / BK;
#pragma unroll
  for (int s = 0; s < STAGES - 1; ++s) {
    if (s < KT) load_stage(s, s * BK);
    cp_commit();
  }
  for (int kt = 0; kt < KT; ++kt) {
    cp_wait<STAGES - 2>();
    __syncthreads();
    const int nt = kt + STAGES - 1;
    if (nt < KT) load_stage(nt % STAGES, nt * BK);
    cp_commit();
    const float* As = sm + (kt % STAGES) * S::STAGE;
    const float* Bs = As + S::A_ST;
    if (p.skip & 2) {
    } else if constexpr (MODE == 1) {
#pragma unroll
      for (int kk = 0; kk < BK; kk += 8) {
        wmma::fragment<wmma::matrix_a, 16, 16, 8, wmma::precision::tf32, wmma::col_major> af[2];
        wmma::fragment<wmma::matrix_b, 16, 16, 8, wmma::precision::tf32, wmma::row_major> bf[JN];
#pragma unroll
        for (int i = 0; i < 2; ++i) {
          wmma::load_matrix_sync(af[i], As + kk * LDA + wm * 32 + i * 16, LDA);
#pragma unroll
          for (int t = 0; t < af[i].num_elements; ++t) af[i].x[t] = wmma::__float_to_tf32(af[i].x[t]);
        }
#pragma unroll
        for (int j = 0; j < JN; ++j) {
          wmma::load_matrix_sync(bf[j], Bs + kk * S::LDB + wn * S::WN + j * 16, S::LDB);
#pragma unroll
          for (int t = 0; t < bf[j].num_elements; ++t) bf[j].x[t] = wmma::__float_to_tf32(bf[j].x[t]);
        }
#pragma unroll
        for (int i = 0; i < 2; ++i)
#pragma unroll
          for (int j = 0; j < JN; ++j) wmma::mma_sync(acc[i][j], af[i], bf[j], acc[i][j]);
      }
    } else if constexpr (MODE >= 2) {
      using HT = typename std::conditional<MODE == 3, __nv_bfloat16, __half>::type;
      HT* ha = reinterpret_cast<HT*>(reinterpret_cast<unsigned char*>(sm) + S::BYTES_F) + warp * (S::HA + S::HB);
      HT* hb = ha + S::HA;
#pragma unroll
      for (int kk = 0; kk < BK; kk += 16) {
        // this warp's 32 voxels × 16 k of A and 16 k × WN channels of B, rounded to 16 bits
#pragma unroll
        for (int e = lane; e < 16 * 32; e += 32) {
          const int kr = e / 32, mc = e % 32;
          ha[kr * 40 + mc] = to_half<HT>(As[(kk + kr) * LDA + wm * 32 + mc]);
        }
#pragma unroll
        for (int e = lane; e < 16 * S::WN; e += 32) {
          const int kr = e / S::WN, nc = e % S::WN;
          hb[kr * (S::WN + 8) + nc] = to_half<HT>(Bs[(kk + kr) * S::LDB + wn * S::WN + nc]);
        }
        __syncwarp();
        wmma::fragment<wmma::matrix_a, 16, 16, 16, HT, wmma::col_major> af[2];
        wmma::fragment<wmma::matrix_b, 16, 16, 16, HT, wmma::row_major> bf[JN];
#pragma unroll
        for (int i = 0; i < 2; ++i) wmma::load_matrix_sync(af[i], ha + i * 16, 40);
#pragma unroll
        for (int j = 0; j < JN; ++j) wmma::load_matrix_sync(bf[j], hb + j * 16, S::WN + 8);
#pragma unroll
        for (int i = 0; i < 2; ++i)
#pragma unroll
          for (int j = 0; j < JN; ++j) wmma::mma_sync(acc[i][j], af[i], bf[j], acc[i][j]);
        __syncwarp();
      }
    } else {
#pragma unroll 8
      for (int kk = 0; kk < BK; ++kk) {
        const float4 a0 = *reinterpret_cast<const float4*>(As + kk * LDA + tm * 8);
        const float4 a1 = *reinterpret_cast<const float4*>(As + kk * LDA + tm * 8 + 4);
        const float a[8] = {a0.x, a0.y, a0.z, a0.w, a1.x, a1.y, a1.z, a1.w};
        float bv[TN];
#pragma unroll
        for (int j = 0; j < TN; ++j) bv[j] = Bs[kk * S::LDB + tn * TN + j];
#pragma unroll
        for (int i = 0; i < 8; ++i)
#pragma unroll
          for (int j = 0; j < TN; ++j) facc[i][j] = fmaf(a[i], bv[j], facc[i][j]);
      }
    }
  }
  cp_wait<0>();
  __syncthreads();

  // Epilogue: the tile through shared memory (column-major: voxels contiguous per channel).
  constexpr int LDC = BM + 4;
  float* Cs = sm;
  if constexpr (MODE != 0) {
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
      for (int j = 0; j < JN; ++j)
        wmma::store_matrix_sync(Cs + (wn * S::WN + j * 16) * LDC + wm * 32 + i * 16, acc[i][j], LDC,
                                wmma::mem_col_major);
  } else {
#pragma unroll
    for (int i = 0; i < 8; ++i)
#pragma unroll
      for (int j = 0; j < TN; ++j) Cs[(tn * TN + j) * LDC + tm * 8 + i] = facc[i][j];
  }
  __syncthreads();
  for (int e = tid; e < BM * BN; e += THREADS) {
    const int mlo = e % BM, nl = e / BM;
    const std::int64_t mm = m0 + mlo;
    const int co = n0 + nl;
    if (mm >= p.M || co >= p.Cog) continue;
    const int cout = g * p.Cog + co;
    float v = Cs[nl * LDC + mlo];
    if (p.b) v += __ldg(p.b + cout);
    p.y[(std::int64_t(n) * p.Co + cout) * p.M + mm] = activate(v, p.act, p.alpha);
  }
}

template <int BN, int MODE>
void launch(const Params& p, std::int64_t N) {
  using S = Smem<BN>;
  const int bytes = MODE >= 2 ? S::BYTES_H : S::BYTES_F;
  static bool configured = false;  // one attribute call per instantiation (the limit is per function)
  if (!configured) {
    BHSD_CUDA(cudaFuncSetAttribute(conv_pipe<BN, MODE>, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes));
    configured = true;
  }
  dim3 grid(unsigned((p.M + BM - 1) / BM), unsigned(p.Np / BN), unsigned(N * p.groups));
  conv_pipe<BN, MODE><<<grid, THREADS, bytes, stream()>>>(p);
  BHSD_LAUNCHED("conv3d kernel");
}

template <int BN>
void launch_mode(const Params& p, std::int64_t N, Precision prec) {
  switch (prec) {
    case Precision::fp32:
      launch<BN, 0>(p, N);
      break;
    case Precision::tf32:
      launch<BN, 1>(p, N);
      break;
    case Precision::fp16:
      launch<BN, 2>(p, N);
      break;
    case Precision::bf16:
      launch<BN, 3>(p, N);
      break;
  }
}

// ---- stride-1 convolutions in TF32: halo tiles and mma.sync ------------------------------------
// The gather above loads each input value once per tap (27 times for 3×3×3). For the layers a
// U-Net is made of (stride 1, no dilation, kernels 1×1×1, 1×3×3 or 3×3×3) a block instead loads
// the input tile its 1×4×32 output voxels need, with its halo, once per chunk of 8 channels,
// into shared memory, and forms every tap's operand from there: about 5.6× fewer loads for 3×3×3.
// The operands then sit at unaligned offsets (x + kx), which WMMA cannot load, so the multiply is
// the PTX mma.sync m16n8k8 TF32 instruction with fragments read element by element; channel
// planes are padded to 8 banks apart so that those reads are conflict-free.
template <int KD, int KH, int KW, int MODE>
struct Halo {
  static constexpr int TY = 4, TX = 32, CC = 8, BNH = 32;
  static constexpr int HZ = KD, HY = TY + KH - 1, HX = TX + KW - 1;
  static constexpr int PLANE = HZ * HY * HX;
  // TF32 fragments read channels t and t+4, 16-bit ones channels 2t and 2t+1: planes 8 or 4 banks apart.
  static constexpr int POFF = MODE == 1 ? 8 : 4;
  static constexpr int PL = (PLANE + 31) / 32 * 32 + POFF;
  static constexpr int TAPS = KD * KH * KW;
  static constexpr int LDW = 32 + POFF;
  static constexpr int H_FLOATS = CC * PL, W_FLOATS = TAPS * CC * LDW;
  static constexpr int STAGE = H_FLOATS + W_FLOATS;
  static constexpr int BYTES = 2 * STAGE * 4;
};

struct HaloParams {
  const float* x;
  const float* wp;  // [groups][nblocks][chunks][taps][8][LDW]
  const float* b;
  float* y;
  std::int64_t C, D, H, W, Co, Do, Ho, Wo;
  int Cg, Cog, groups, chunks, nblocks, tilesY, tilesX;
  int pd, ph, pw, act;
  float alpha;
  // Where output (z, y, x) of the grid goes: (z·s + o) per axis in a volume of `full` extents
  // (identity for a convolution; one tap's sub-grid for a transposed convolution split by taps).
  std::int64_t fullD, fullH, fullW;
  int msz, msy, msx, moz, moy, mox;
};

// w is [Co][Cg][taps] (convolution), or, with `ttap` ≥ 0, the transposed [C][Cog][tkvol] read at one tap.
__global__ void pack_halo_weights(const float* w, float* wp, int groups, int nblocks, int chunks, int taps, int Cg,
                                  int Cog, int ldw, int ttap, int tkvol) {
  const std::int64_t n = std::int64_t(groups) * nblocks * chunks * taps * 8 * ldw;
  for (std::int64_t i = std::int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += std::int64_t(gridDim.x) * blockDim.x) {
    std::int64_t r = i;
    const int col = int(r % ldw);
    r /= ldw;
    const int c8 = int(r % 8);
    r /= 8;
    const int tap = int(r % taps);
    r /= taps;
    const int ch = int(r % chunks);
    r /= chunks;
    const int nb = int(r % nblocks);
    const int g = int(r / nblocks);
    const int c = ch * 8 + c8, co = nb * 32 + col;
    float v = 0.f;
    if (col < 32 && c < Cg && co < Cog)
      v = ttap < 0 ? w[((std::int64_t(g) * Cog + co) * Cg + c) * taps + tap]
                   : w[((std::int64_t(g) * Cg + c) * Cog + co) * tkvol + ttap];
    wp[i] = v;
  }
}

__device__ __forceinline__ unsigned to_tf32(float v) {
  unsigned r;
  asm("cvt.rna.tf32.f32 %0, %1;\n" : "=r"(r) : "f"(v));
  return r;
}
// Two floats as one 16-bit pair (lo in the low half, as mma fragments hold consecutive k).
template <int MODE>
__device__ __forceinline__ unsigned pack2(float lo, float hi) {
  if constexpr (MODE == 3) {
    const __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<const unsigned*>(&h);
  } else {
    const __half2 h = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<const unsigned*>(&h);
  }
}

// MODE 1: TF32 m16n8k8; 2: fp16 m16n8k8; 3: bf16 m16n8k8 (all accumulating in fp32).
template <int KD, int KH, int KW, int MODE>
__global__ void __launch_bounds__(256, 2) conv_halo(HaloParams p) {
  using S = Halo<KD, KH, KW, MODE>;
  extern __shared__ __align__(128) float sm[];
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int tx = blockIdx.x % p.tilesX, ty = (blockIdx.x / p.tilesX) % p.tilesY,
            oz = blockIdx.x / (p.tilesX * p.tilesY);
  const int oy0 = ty * S::TY, ox0 = tx * S::TX;
  const int nb = blockIdx.y, ng = blockIdx.z, n = ng / p.groups, g = ng - n * p.groups;
  const std::int64_t HW = p.H * p.W, DHW = HW * p.D;
  const float* xb = p.x + (std::int64_t(n) * p.C + std::int64_t(g) * p.Cg) * DHW;
  const int z0 = oz - p.pd, y0 = oy0 - p.ph, x0 = ox0 - p.pw;
  const float* wsrc = p.wp + (std::int64_t(g) * p.nblocks + nb) * std::int64_t(p.chunks) * S::W_FLOATS;

  auto load = [&](int st, int ch) {
    float* hs = sm + st * S::STAGE;
    float* ws = hs + S::H_FLOATS;
    for (int e = tid; e < S::CC * S::PLANE; e += 256) {
      const int c = e / S::PLANE, r = e - c * S::PLANE;
      const int hz = r / (S::HY * S::HX), r2 = r - hz * (S::HY * S::HX), hy = r2 / S::HX, hx = r2 - hy * S::HX;
      const int cg = ch * S::CC + c, iz = z0 + hz, iy = y0 + hy, ix = x0 + hx;
      const bool ok =
          cg < p.Cg && unsigned(iz) < unsigned(p.D) && unsigned(iy) < unsigned(p.H) && unsigned(ix) < unsigned(p.W);
      cp_async4(hs + c * S::PL + r, ok ? xb + std::int64_t(cg) * DHW + (std::int64_t(iz) * p.H + iy) * p.W + ix : p.x,
                ok);
    }
    const float* src = wsrc + std::int64_t(ch) * S::W_FLOATS;
    for (int v = tid; v < S::W_FLOATS / 4; v += 256) cp_async16(ws + v * 4, src + v * 4);
  };

  const int gq = lane >> 2, tq = lane & 3;  // mma fragment coordinates
  const int wm = warp & 3, wn = warp >> 2;  // this warp: output row oy0 + wm, channels wn·16 … +16
  float acc[2][2][4];
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int j = 0; j < 2; ++j)
#pragma unroll
      for (int q = 0; q < 4; ++q) acc[i][j][q] = 0.f;

  load(0, 0);
  cp_commit();
  for (int ch = 0; ch < p.chunks; ++ch) {
    if (ch + 1 < p.chunks) load((ch + 1) & 1, ch + 1);
    cp_commit();
    cp_wait<1>();
    __syncthreads();
    const float* hs = sm + (ch & 1) * S::STAGE;
    const float* ws = hs + S::H_FLOATS;
#pragma unroll
    for (int kz = 0; kz < KD; ++kz)
#pragma unroll
      for (int ky = 0; ky < KH; ++ky)
#pragma unroll
        for (int kx = 0; kx < KW; ++kx) {
          const int tap = (kz * KH + ky) * KW + kx;
          const float* arow = hs + (kz * S::HY + wm + ky) * S::HX + kx + gq;
          if constexpr (MODE == 1) {
            // A (16×8, row): (gq, tq) (gq+8, tq) (gq, tq+4) (gq+8, tq+4); B (8×8, col): (tq, gq) (tq+4, gq)
            unsigned a[2][4], bfr[2][2];
#pragma unroll
            for (int i = 0; i < 2; ++i) {
              a[i][0] = to_tf32(arow[tq * S::PL + 16 * i]);
              a[i][1] = to_tf32(arow[tq * S::PL + 16 * i + 8]);
              a[i][2] = to_tf32(arow[(tq + 4) * S::PL + 16 * i]);
              a[i][3] = to_tf32(arow[(tq + 4) * S::PL + 16 * i + 8]);
            }
            const float* wrow = ws + (tap * 8 + tq) * S::LDW + wn * 16 + gq;
#pragma unroll
            for (int j = 0; j < 2; ++j) {
              bfr[j][0] = to_tf32(wrow[8 * j]);
              bfr[j][1] = to_tf32(wrow[4 * S::LDW + 8 * j]);
            }
#pragma unroll
            for (int i = 0; i < 2; ++i)
#pragma unroll
              for (int j = 0; j < 2; ++j)
                asm volatile(
                    "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                    "{%0,%1,%2,%3};\n"
                    : "+f"(acc[i][j][0]), "+f"(acc[i][j][1]), "+f"(acc[i][j][2]), "+f"(acc[i][j][3])
                    : "r"(a[i][0]), "r"(a[i][1]), "r"(a[i][2]), "r"(a[i][3]), "r"(bfr[j][0]), "r"(bfr[j][1]));
          } else {
            // A (16×8, row): rows gq and gq+8, k pair (2tq, 2tq+1); B (8×8, col): k pair (2tq, 2tq+1), n gq
            unsigned a[2][2], bfr[2];
#pragma unroll
            for (int i = 0; i < 2; ++i) {
              a[i][0] = pack2<MODE>(arow[2 * tq * S::PL + 16 * i], arow[(2 * tq + 1) * S::PL + 16 * i]);
              a[i][1] = pack2<MODE>(arow[2 * tq * S::PL + 16 * i + 8], arow[(2 * tq + 1) * S::PL + 16 * i + 8]);
            }
            const float* wrow = ws + (tap * 8 + 2 * tq) * S::LDW + wn * 16 + gq;
#pragma unroll
            for (int j = 0; j < 2; ++j) bfr[j] = pack2<MODE>(wrow[8 * j], wrow[S::LDW + 8 * j]);
#pragma unroll
            for (int i = 0; i < 2; ++i)
#pragma unroll
              for (int j = 0; j < 2; ++j) {
                if constexpr (MODE == 2)
                  asm volatile(
                      "mma.sync.aligned.m16n8k8.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5}, {%6}, {%0,%1,%2,%3};\n"
                      : "+f"(acc[i][j][0]), "+f"(acc[i][j][1]), "+f"(acc[i][j][2]), "+f"(acc[i][j][3])
                      : "r"(a[i][0]), "r"(a[i][1]), "r"(bfr[j]));
                else
                  asm volatile(
                      "mma.sync.aligned.m16n8k8.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5}, {%6}, "
                      "{%0,%1,%2,%3};\n"
                      : "+f"(acc[i][j][0]), "+f"(acc[i][j][1]), "+f"(acc[i][j][2]), "+f"(acc[i][j][3])
                      : "r"(a[i][0]), "r"(a[i][1]), "r"(bfr[j]));
              }
          }
        }
    __syncthreads();
  }

  // Epilogue straight from the fragments: c0, c1 at (row gq, cols 2tq, 2tq+1), c2, c3 at row gq+8.
  const int oy = oy0 + wm;
  if (oy >= p.Ho) return;
  const std::int64_t zf = std::int64_t(oz) * p.msz + p.moz, yf = std::int64_t(oy) * p.msy + p.moy;
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int j = 0; j < 2; ++j)
#pragma unroll
      for (int q = 0; q < 4; ++q) {
        const int ox = ox0 + 16 * i + gq + (q >= 2 ? 8 : 0);
        const int co = nb * 32 + wn * 16 + 8 * j + 2 * tq + (q & 1);
        if (ox >= p.Wo || co >= p.Cog) continue;
        const int cout = g * p.Cog + co;
        float v = acc[i][j][q];
        if (p.b) v += __ldg(p.b + cout);
        p.y[((std::int64_t(n) * p.Co + cout) * p.fullD + zf) * p.fullH * p.fullW + yf * p.fullW +
            std::int64_t(ox) * p.msx + p.mox] = activate(v, p.act, p.alpha);
      }
}

// One launch of the halo kernel. `tsplit`: for a transposed convolution whose kernel equals its
// stride, the tap (kz, ky, kx) to compute as a 1×1×1 convolution onto its strided output sub-grid.
struct TapSplit {
  int tap = -1, kvol = 0;
  int s[3] = {1, 1, 1}, o[3] = {0, 0, 0};
};

template <int KD, int KH, int KW, int MODE>
void launch_halo(const float* x, const float* w, const float* b, float* y, const ConvShape& s, int act, float alpha,
                 const TapSplit& ts = TapSplit()) {
  using S = Halo<KD, KH, KW, MODE>;
  const bool split = ts.tap >= 0;
  const std::int64_t Cg = s.C / s.groups, Cog = s.Co / s.groups;
  // the grid the kernel walks: the output, or (split) the input's, one voxel per input voxel
  const std::int64_t Do = split ? s.D : s.Do, Ho = split ? s.H : s.Ho, Wo = split ? s.W : s.Wo;
  HaloParams p{};
  p.x = x, p.b = b, p.y = y;
  p.C = s.C, p.D = s.D, p.H = s.H, p.W = s.W, p.Co = s.Co, p.Do = Do, p.Ho = Ho, p.Wo = Wo;
  p.Cg = int(Cg), p.Cog = int(Cog), p.groups = int(s.groups);
  p.chunks = int((Cg + S::CC - 1) / S::CC), p.nblocks = int((Cog + S::BNH - 1) / S::BNH);
  p.tilesY = int((Ho + S::TY - 1) / S::TY), p.tilesX = int((Wo + S::TX - 1) / S::TX);
  p.pd = split ? 0 : int(s.pd), p.ph = split ? 0 : int(s.ph), p.pw = split ? 0 : int(s.pw);
  p.act = act, p.alpha = alpha;
  p.fullD = s.Do, p.fullH = s.Ho, p.fullW = s.Wo;
  p.msz = ts.s[0], p.msy = ts.s[1], p.msx = ts.s[2], p.moz = ts.o[0], p.moy = ts.o[1], p.mox = ts.o[2];
  const std::int64_t packed = s.groups * std::int64_t(p.nblocks) * p.chunks * S::W_FLOATS;
  Scratch<float> wp{static_cast<std::size_t>(packed)};
  pack_halo_weights<<<blocks_for(packed, 256), 256, 0, stream()>>>(w, wp.p, int(s.groups), p.nblocks, p.chunks, S::TAPS,
                                                                   int(Cg), int(Cog), S::LDW, ts.tap, ts.kvol);
  BHSD_LAUNCHED("conv3d weight packing");
  p.wp = wp.p;
  static bool configured = false;
  if (!configured) {
    BHSD_CUDA(cudaFuncSetAttribute(conv_halo<KD, KH, KW, MODE>, cudaFuncAttributeMaxDynamicSharedMemorySize, S::BYTES));
    configured = true;
  }
  const std::int64_t tiles = Do * p.tilesY * std::int64_t(p.tilesX);
  if (tiles > 0x7fffffff) throw std::runtime_error("cuda: conv3d: too many output tiles for one launch");
  dim3 grid(unsigned(tiles), unsigned(p.nblocks), unsigned(s.N * s.groups));
  conv_halo<KD, KH, KW, MODE><<<grid, 256, S::BYTES, stream()>>>(p);
  BHSD_LAUNCHED("conv3d kernel (halo)");
}

// The halo kernels for kernel shape (kd, kh, kw) in precision `prec`; false when there is none.
template <int MODE>
bool halo_mode(const float* x, const float* w, const float* b, float* y, const ConvShape& s, int act, float alpha,
               const TapSplit& ts) {
  if (ts.tap >= 0) return launch_halo<1, 1, 1, MODE>(x, w, b, y, s, act, alpha, ts), true;
  if (s.kd == 3 && s.kh == 3 && s.kw == 3) return launch_halo<3, 3, 3, MODE>(x, w, b, y, s, act, alpha), true;
  if (s.kd == 1 && s.kh == 3 && s.kw == 3) return launch_halo<1, 3, 3, MODE>(x, w, b, y, s, act, alpha), true;
  if (s.kd == 1 && s.kh == 1 && s.kw == 1) return launch_halo<1, 1, 1, MODE>(x, w, b, y, s, act, alpha), true;
  return false;
}
bool halo_conv(const float* x, const float* w, const float* b, float* y, const ConvShape& s, int act, float alpha,
               Precision prec, const TapSplit& ts = TapSplit()) {
  switch (prec) {
    case Precision::tf32:
      return halo_mode<1>(x, w, b, y, s, act, alpha, ts);
    case Precision::fp16:
      return halo_mode<2>(x, w, b, y, s, act, alpha, ts);
    case Precision::bf16:
      return halo_mode<3>(x, w, b, y, s, act, alpha, ts);
    default:
      return false;
  }
}

}  // namespace

void conv3d(const float* x, const float* w, const float* b, float* y, const ConvShape& s, bool transposed, int act,
            float alpha, Precision prec) {
  const std::int64_t Cg = s.C / s.groups, Cog = s.Co / s.groups, kvol = s.kd * s.kh * s.kw;
  const std::int64_t K = Cg * kvol, M = s.Do * s.Ho * s.Wo;
  if (s.C * s.D * s.H * s.W >= (std::int64_t(1) << 31) || K >= (std::int64_t(1) << 30) ||
      s.Do * s.Ho >= (std::int64_t(1) << 31) || s.kd > 32 || s.kh > 32 || s.kw > 32)
    throw std::runtime_error(
        "cuda: conv3d: one batch item of the input must hold fewer than 2^31 elements, and kernels at most 32 taps per "
        "axis");
  const int BN = Cog <= 32 ? 32 : 64;
  const std::int64_t Kp = (K + BK - 1) / BK * BK, Np = (Cog + BN - 1) / BN * BN;
  if (s.N * s.groups > 65535 || Np / BN > 65535)
    throw std::runtime_error("cuda: conv3d: too many batch items × groups or output channels for one launch");
  if (M == 0 || Cog == 0) return;
  // Stride-1 U-Net layers on tensor cores: the halo-tile kernel (BHSD_CONV_HALO=0 turns it off).
  const char* halo_env = std::getenv("BHSD_CONV_HALO");
  const bool halo_on = prec != Precision::fp32 && !(halo_env && halo_env[0] == '0');
  if (halo_on && !transposed && s.sd == 1 && s.sh == 1 && s.sw == 1 && s.dd == 1 && s.dh == 1 && s.dw == 1 &&
      halo_conv(x, w, b, y, s, act, alpha, prec))
    return;
  // A transposed convolution whose kernel equals its stride (nnU-Net's upsampling): each output
  // voxel takes exactly one tap, so it is kvol 1×1×1 convolutions, each onto its own sub-grid.
  if (halo_on && transposed && s.kd == s.sd && s.kh == s.sh && s.kw == s.sw && s.dd == 1 && s.dh == 1 && s.dw == 1 &&
      s.pd == 0 && s.ph == 0 && s.pw == 0 && s.Do == s.D * s.sd && s.Ho == s.H * s.sh && s.Wo == s.W * s.sw) {
    for (std::int64_t kz = 0; kz < s.kd; ++kz)
      for (std::int64_t ky = 0; ky < s.kh; ++ky)
        for (std::int64_t kx = 0; kx < s.kw; ++kx) {
          TapSplit ts;
          ts.tap = int((kz * s.kh + ky) * s.kw + kx), ts.kvol = int(kvol);
          ts.s[0] = int(s.sd), ts.s[1] = int(s.sh), ts.s[2] = int(s.sw);
          ts.o[0] = int(kz), ts.o[1] = int(ky), ts.o[2] = int(kx);
          ConvShape one = s;
          one.Co = s.Co;  // Cog per group as for the convolution; weights read through the tap
          halo_conv(x, w, b, y, one, act, alpha, prec, ts);
        }
    return;
  }
  Scratch<int4> tab{static_cast<std::size_t>(K)};
  ktab_kernel<<<blocks_for(K, 256), 256, 0, stream()>>>(tab.p, int(K), int(kvol), int(s.kh), int(s.kw), int(s.dd),
                                                        int(s.dh), int(s.dw), s.D * s.H * s.W);
  BHSD_LAUNCHED("conv3d table");
  Scratch<float> bp{static_cast<std::size_t>(s.groups * Kp * Np)};
  pack_weights<<<blocks_for(s.groups * Kp * Np, 256), 256, 0, stream()>>>(
      w, bp.p, int(s.groups), int(K), int(Kp), int(Np), int(Cg), int(Cog), int(kvol), transposed);
  BHSD_LAUNCHED("conv3d weight packing");
  Params p{};
  p.x = x, p.bp = bp.p, p.b = b, p.y = y, p.ktab = tab.p;
  p.C = s.C, p.D = s.D, p.H = s.H, p.W = s.W, p.Co = s.Co, p.M = M;
  p.Ho = int(s.Ho), p.Wo = int(s.Wo), p.K = int(K), p.Kp = int(Kp), p.Np = int(Np), p.Cg = int(Cg), p.Cog = int(Cog);
  p.groups = int(s.groups);
  p.sd = int(s.sd), p.sh = int(s.sh), p.sw = int(s.sw), p.pd = int(s.pd), p.ph = int(s.ph), p.pw = int(s.pw);
  p.kd = int(s.kd), p.kh = int(s.kh), p.kw = int(s.kw), p.dd = int(s.dd), p.dh = int(s.dh), p.dw = int(s.dw);
  p.transposed = transposed, p.act = act, p.alpha = alpha;
#ifdef BHSD_CONV_PROFILING
  // bench-only builds (bench/device/variants.ts): parts of the kernel left out, so the answers are
  // wrong on purpose; a shipped build never reads this variable
  const char* skip = std::getenv("BHSD_CONV_SKIP");
  p.skip = skip ? std::atoi(skip) : 0;
#endif
  if (BN == 32)
    launch_mode<32>(p, s.N, prec);
  else
    launch_mode<64>(p, s.N, prec);
}

namespace {

// One block per (ca, cb, kernel offset): the correlation summed over A's voxels.
__global__ void weight_grad_kernel(const float* A, const float* B, float* out, int Ca, int Cb, int Da, int Ha, int Wa,
                                   int Db, int Hb, int Wb, int kd, int kh, int kw, int sd, int sh, int sw, int pd,
                                   int ph, int pw, int dd, int dh, int dw) {
  const int kvol = kd * kh * kw;
  const int idx = blockIdx.x;
  const int r = idx % kvol, cb = (idx / kvol) % Cb, ca = idx / (kvol * Cb);
  const int kz = r / (kh * kw), ky = (r / kw) % kh, kx = r % kw;
  const std::int64_t Sa = std::int64_t(Da) * Ha * Wa;
  const float* a = A + std::int64_t(ca) * Sa;
  const float* b = B + std::int64_t(cb) * Db * Hb * Wb;
  float sum = 0.f;
  for (std::int64_t o = threadIdx.x; o < Sa; o += blockDim.x) {
    const int oz = int(o / (std::int64_t(Ha) * Wa)), oy = int((o / Wa) % Ha), ox = int(o % Wa);
    const int iz = oz * sd - pd + kz * dd, iy = oy * sh - ph + ky * dh, ix = ox * sw - pw + kx * dw;
    if (unsigned(iz) < unsigned(Db) && unsigned(iy) < unsigned(Hb) && unsigned(ix) < unsigned(Wb))
      sum = fmaf(a[o], b[(std::int64_t(iz) * Hb + iy) * Wb + ix], sum);
  }
  __shared__ float part[256];
  part[threadIdx.x] = sum;
  __syncthreads();
  for (int h = blockDim.x / 2; h > 0; h /= 2) {
    if (int(threadIdx.x) < h) part[threadIdx.x] += part[threadIdx.x + h];
    __syncthreads();
  }
  if (threadIdx.x == 0) out[idx] += part[0];
}

}  // namespace

void conv_weight_grad(const float* A, const std::int64_t a[4], const float* B, const std::int64_t b[4],
                      const std::int64_t k[3], const std::int64_t s[3], const std::int64_t p[3],
                      const std::int64_t d[3], float* out) {
  const std::int64_t blocks = a[0] * b[0] * k[0] * k[1] * k[2];
  if (blocks == 0) return;
  if (blocks > 0x7fffffff) throw std::runtime_error("cuda: convWeightGrad: too many weights for one launch");
  weight_grad_kernel<<<unsigned(blocks), 256, 0, stream()>>>(
      A, B, out, int(a[0]), int(b[0]), int(a[1]), int(a[2]), int(a[3]), int(b[1]), int(b[2]), int(b[3]), int(k[0]),
      int(k[1]), int(k[2]), int(s[0]), int(s[1]), int(s[2]), int(p[0]), int(p[1]), int(p[2]), int(d[0]), int(d[1]),
      int(d[2]));
  BHSD_LAUNCHED("convWeightGrad kernel");
}

}  // namespace bhsd_cuda
