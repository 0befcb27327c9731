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

#include <type_traits>

#include "common.cuh"
#include "gpu.hpp"

namespace bhsd_cuda {

namespace {

constexpr int BM = 128, BN = 64, BK = 16, THREADS = 256;

struct Params {
  const float* x;
  const float* w;
  const float* b;
  float* y;
  const int4* ktab;  // per k: channel offset in x, kernel offsets along z y x (times dilation)
  std::int64_t C, D, H, W, Co, M;
  int Ho, Wo, K, kvol, Cg, Cog, groups;
  int sd, sh, sw, pd, ph, pw;
  int transposed, act;
  float alpha;
};

template <class T> __device__ __forceinline__ T from_float(float v);
template <> __device__ __forceinline__ float from_float<float>(float v) { return v; }
template <> __device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

__device__ __forceinline__ float activate(float v, int act, float alpha) {
  if (act == 1) return v > 0.f ? v : 0.f;
  if (act == 2) return v > 0.f ? v : v * alpha;
  return v;
}

__global__ void ktab_kernel(int4* tab, int K, int kvol, int kh, int kw, int dd, int dh, int dw, std::int64_t DHW) {
  const int k = blockIdx.x * blockDim.x + threadIdx.x;
  if (k >= K) return;
  const int c = k / kvol, r = k - c * kvol, kz = r / (kh * kw), r2 = r - kz * kh * kw, ky = r2 / kw, kx = r2 - ky * kw;
  tab[k] = make_int4(int(std::int64_t(c) * DHW), kz * dd, ky * dh, kx * dw);
}

// Shared layout: As[BK][BM + PA] (k-major: voxels contiguous), Bs[BK][BN + PB]; the epilogue
// reuses the same bytes as Cs[BN][BM + 4] (column-major tile, voxels contiguous).
template <class T> struct Pad { static constexpr int v = 4; };
template <> struct Pad<__half> { static constexpr int v = 8; };
template <> struct Pad<__nv_bfloat16> { static constexpr int v = 8; };

template <class T, int MODE>  // MODE 0: fp32 FMA, 1: tf32 WMMA, 2: fp16/bf16 WMMA
__global__ void __launch_bounds__(THREADS) conv_igemm(Params p) {
  constexpr int PA = Pad<T>::v, LDA = BM + PA, LDB = BN + PA, LDC = BM + 4;
  constexpr int AB_BYTES = (BK * LDA + BK * LDB) * int(sizeof(T));
  constexpr int C_BYTES = BN * LDC * 4;
  constexpr int SMEM = AB_BYTES > C_BYTES ? AB_BYTES : C_BYTES;
  __shared__ __align__(128) unsigned char smem[SMEM];
  T* As = reinterpret_cast<T*>(smem);
  T* Bs = As + BK * LDA;

  const int tid = threadIdx.x;
  const std::int64_t m0 = std::int64_t(blockIdx.x) * BM;
  const int n0 = blockIdx.y * BN;
  const int ng = blockIdx.z;  // n * groups + g
  const int n = ng / p.groups, g = ng - n * p.groups;
  const float* xb = p.x + (std::int64_t(n) * p.C + std::int64_t(g) * p.Cg) * (std::int64_t(p.D) * p.H * p.W);

  // This thread's voxel for the A loads (two threads share each voxel, alternating k).
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

  float areg[BK / 2], breg[(BK * BN) / THREADS];
  auto load = [&](int k0) {
#pragma unroll
    for (int i = 0; i < BK / 2; ++i) {
      const int k = k0 + kb + 2 * i;
      float v = 0.f;
      if (mvalid && k < p.K) {
        const int4 t = __ldg(&p.ktab[k]);
        int iz, iy, ix;
        bool ok;
        if (!p.transposed) {
          iz = bz + t.y, iy = by + t.z, ix = bx + t.w;
          ok = unsigned(iz) < unsigned(p.D) && unsigned(iy) < unsigned(p.H) && unsigned(ix) < unsigned(p.W);
        } else {
          const int tz = bz - t.y, ty = by - t.z, tx = bx - t.w;
          ok = tz >= 0 && ty >= 0 && tx >= 0 && tz % p.sd == 0 && ty % p.sh == 0 && tx % p.sw == 0;
          iz = tz / p.sd, iy = ty / p.sh, ix = tx / p.sw;
          ok = ok && iz < p.D && iy < p.H && ix < p.W;
        }
        if (ok) v = __ldg(xb + t.x + (std::int64_t(iz) * p.H + iy) * p.W + ix);
      }
      areg[i] = v;
    }
#pragma unroll
    for (int i = 0; i < (BK * BN) / THREADS; ++i) {
      const int e = tid + THREADS * i, kl = e % BK, nl = e / BK;
      const int k = k0 + kl, co = n0 + nl;
      float v = 0.f;
      if (k < p.K && co < p.Cog) {
        std::int64_t wi;
        if (!p.transposed) wi = (std::int64_t(g) * p.Cog + co) * p.K + k;
        else {
          const int c = k / p.kvol, r = k - c * p.kvol;
          wi = ((std::int64_t(g) * p.Cg + c) * p.Cog + co) * p.kvol + r;
        }
        v = __ldg(p.w + wi);
      }
      breg[i] = v;
    }
  };
  auto store = [&]() {
#pragma unroll
    for (int i = 0; i < BK / 2; ++i) As[(kb + 2 * i) * LDA + ml] = from_float<T>(areg[i]);
#pragma unroll
    for (int i = 0; i < (BK * BN) / THREADS; ++i) {
      const int e = tid + THREADS * i, kl = e % BK, nl = e / BK;
      Bs[kl * LDB + nl] = from_float<T>(breg[i]);
    }
  };

  // Accumulators.
  const int warp = tid / 32, wm = warp % 4, wn = warp / 4;  // 4 × 2 warps, 32 × 32 each
  using namespace nvcuda;
  constexpr int WK = MODE == 1 ? 8 : 16;
  using AT = typename std::conditional<MODE == 1, wmma::precision::tf32, T>::type;
  wmma::fragment<wmma::accumulator, 16, 16, WK, float> acc[2][2];
  float facc[8][4];
  const int tm = tid % 16, tn = tid / 16;  // FMA path: voxels tm·8…, channels tn·4…
  if constexpr (MODE != 0) {
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
      for (int j = 0; j < 2; ++j) wmma::fill_fragment(acc[i][j], 0.f);
  } else {
#pragma unroll
    for (int i = 0; i < 8; ++i)
#pragma unroll
      for (int j = 0; j < 4; ++j) facc[i][j] = 0.f;
  }

  load(0);
  store();
  __syncthreads();
  for (int k0 = 0; k0 < p.K; k0 += BK) {
    const bool next = k0 + BK < p.K;
    if (next) load(k0 + BK);
    if constexpr (MODE != 0) {
#pragma unroll
      for (int kk = 0; kk < BK; kk += WK) {
        wmma::fragment<wmma::matrix_a, 16, 16, WK, AT, wmma::col_major> af[2];
        wmma::fragment<wmma::matrix_b, 16, 16, WK, AT, wmma::row_major> bf[2];
#pragma unroll
        for (int i = 0; i < 2; ++i) {
          wmma::load_matrix_sync(af[i], As + kk * LDA + wm * 32 + i * 16, LDA);
          if constexpr (MODE == 1)
#pragma unroll
            for (int t = 0; t < af[i].num_elements; ++t) af[i].x[t] = wmma::__float_to_tf32(af[i].x[t]);
        }
#pragma unroll
        for (int j = 0; j < 2; ++j) {
          wmma::load_matrix_sync(bf[j], Bs + kk * LDB + wn * 32 + j * 16, LDB);
          if constexpr (MODE == 1)
#pragma unroll
            for (int t = 0; t < bf[j].num_elements; ++t) bf[j].x[t] = wmma::__float_to_tf32(bf[j].x[t]);
        }
#pragma unroll
        for (int i = 0; i < 2; ++i)
#pragma unroll
          for (int j = 0; j < 2; ++j) wmma::mma_sync(acc[i][j], af[i], bf[j], acc[i][j]);
      }
    } else {
#pragma unroll
      for (int kk = 0; kk < BK; ++kk) {
        float a[8], bv[4];
        const float4 a0 = *reinterpret_cast<const float4*>(As + kk * LDA + tm * 8);
        const float4 a1 = *reinterpret_cast<const float4*>(As + kk * LDA + tm * 8 + 4);
        const float4 b0 = *reinterpret_cast<const float4*>(Bs + kk * LDB + tn * 4);
        a[0] = a0.x, a[1] = a0.y, a[2] = a0.z, a[3] = a0.w, a[4] = a1.x, a[5] = a1.y, a[6] = a1.z, a[7] = a1.w;
        bv[0] = b0.x, bv[1] = b0.y, bv[2] = b0.z, bv[3] = b0.w;
#pragma unroll
        for (int i = 0; i < 8; ++i)
#pragma unroll
          for (int j = 0; j < 4; ++j) facc[i][j] = fmaf(a[i], bv[j], facc[i][j]);
      }
    }
    __syncthreads();
    if (next) {
      store();
      __syncthreads();
    }
  }

  // Epilogue: the tile through shared memory (column-major: voxels contiguous per channel).
  float* Cs = reinterpret_cast<float*>(smem);
  if constexpr (MODE != 0) {
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
      for (int j = 0; j < 2; ++j)
        wmma::store_matrix_sync(Cs + (wn * 32 + j * 16) * LDC + wm * 32 + i * 16, acc[i][j], LDC, wmma::mem_col_major);
  } else {
#pragma unroll
    for (int i = 0; i < 8; ++i)
#pragma unroll
      for (int j = 0; j < 4; ++j) Cs[(tn * 4 + j) * LDC + tm * 8 + i] = facc[i][j];
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

template <class T, int MODE>
void launch(const Params& p, std::int64_t N) {
  dim3 grid(unsigned((p.M + BM - 1) / BM), unsigned((p.Cog + BN - 1) / BN), unsigned(N * p.groups));
  conv_igemm<T, MODE><<<grid, THREADS, 0, stream()>>>(p);
  BHSD_LAUNCHED("conv3d kernel");
}

}  // namespace

void conv3d(const float* x, const float* w, const float* b, float* y, const ConvShape& s, bool transposed, int act,
            float alpha, Precision prec) {
  const std::int64_t Cg = s.C / s.groups, Cog = s.Co / s.groups, kvol = s.kd * s.kh * s.kw;
  const std::int64_t K = Cg * kvol, M = s.Do * s.Ho * s.Wo;
  if (s.C * s.D * s.H * s.W >= (std::int64_t(1) << 31) || K >= (std::int64_t(1) << 31) || s.Do * s.Ho >= (std::int64_t(1) << 31))
    throw std::runtime_error("cuda: conv3d: one batch item of the input must hold fewer than 2^31 elements");
  if (s.N * s.groups > 65535 || (Cog + BN - 1) / BN > 65535)
    throw std::runtime_error("cuda: conv3d: too many batch items × groups or output channels for one launch");
  if (M == 0 || Cog == 0) return;
  Scratch<int4> tab{static_cast<std::size_t>(K)};
  ktab_kernel<<<blocks_for(K, 256), 256, 0, stream()>>>(tab.p, int(K), int(kvol), int(s.kh), int(s.kw), int(s.dd),
                                                         int(s.dh), int(s.dw), s.D * s.H * s.W);
  BHSD_LAUNCHED("conv3d table");
  Params p{};
  p.x = x, p.w = w, p.b = b, p.y = y, p.ktab = tab.p;
  p.C = s.C, p.D = s.D, p.H = s.H, p.W = s.W, p.Co = s.Co, p.M = M;
  p.Ho = int(s.Ho), p.Wo = int(s.Wo), p.K = int(K), p.kvol = int(kvol), p.Cg = int(Cg), p.Cog = int(Cog);
  p.groups = int(s.groups);
  p.sd = int(s.sd), p.sh = int(s.sh), p.sw = int(s.sw), p.pd = int(s.pd), p.ph = int(s.ph), p.pw = int(s.pw);
  p.transposed = transposed, p.act = act, p.alpha = alpha;
  switch (prec) {
    case Precision::fp32: launch<float, 0>(p, s.N); break;
    case Precision::tf32: launch<float, 1>(p, s.N); break;
    case Precision::fp16: launch<__half, 2>(p, s.N); break;
    case Precision::bf16: launch<__nv_bfloat16, 2>(p, s.N); break;
  }
}

namespace {

// One block per (ca, cb, kernel offset): the correlation summed over A's voxels.
__global__ void weight_grad_kernel(const float* A, const float* B, float* out, int Ca, int Cb, int Da, int Ha, int Wa,
                                   int Db, int Hb, int Wb, int kd, int kh, int kw, int sd, int sh, int sw, int pd, int ph,
                                   int pw, int dd, int dh, int dw) {
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
                      const std::int64_t k[3], const std::int64_t s[3], const std::int64_t p[3], const std::int64_t d[3],
                      float* out) {
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
