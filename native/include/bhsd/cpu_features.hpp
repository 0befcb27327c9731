// bhsd — what the processor offers, asked at run time so that one binary runs on any x86-64.
#pragma once

#include <cstdlib>
#include <string>

namespace bhsd {

struct CpuFeatures {
  bool avx2 = false;
  bool fma = false;
  bool avx512f = false;
  bool avx512bw = false;
  bool avx512bf16 =
      false;  // vdpbf16ps: pairs of bf16 products summed into fp32 (Zen 4/5, Cooper Lake, Sapphire Rapids)
};

inline CpuFeatures cpu_features() {
  CpuFeatures f;
#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
  __builtin_cpu_init();
  f.avx2 = __builtin_cpu_supports("avx2");
  f.fma = __builtin_cpu_supports("fma");
  f.avx512f = __builtin_cpu_supports("avx512f");
  f.avx512bw = __builtin_cpu_supports("avx512bw");
  f.avx512bf16 = __builtin_cpu_supports("avx512bf16");
#endif
  return f;
}

// Which of the kernels built per target of the compiler's vector types (vector_math.hpp) run here:
// "avx512" (16 lanes), "avx2" (8) or "generic" (4) — attention's and Mamba's scan take it;
// BHSD_NO_AVX512 / BHSD_NO_AVX2 step down as for the convolutions.
inline const char* vector_kernel_name() {
#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
  const CpuFeatures f = cpu_features();
  if (f.avx512f && f.avx2 && f.fma && !std::getenv("BHSD_NO_AVX512") && !std::getenv("BHSD_NO_AVX2")) return "avx512";
  if (f.avx2 && f.fma && !std::getenv("BHSD_NO_AVX2")) return "avx2";
#endif
  return "generic";
}

// The widest instruction set the kernels of this build will use on this processor.
inline std::string simd_level() {
#if defined(__x86_64__) || defined(__i386__)
  const CpuFeatures f = cpu_features();
  if (f.avx2 && f.fma && !std::getenv("BHSD_NO_AVX2")) {
    // the convolutions' and the GEMM's micro-kernels; the other loops stay AVX2
    if (f.avx512f && !std::getenv("BHSD_NO_AVX512")) return "avx512f (conv, gemm) + avx2+fma";
    return "avx2+fma";
  }
  return "sse2";
#elif defined(__aarch64__)
  return "neon";
#else
  return "scalar";
#endif
}

}  // namespace bhsd

// Marks a function to be compiled twice, for AVX2+FMA and for the baseline, with the loader
// choosing at run time (GCC/Clang function multi-versioning on x86-64 ELF).
#if defined(__x86_64__) && defined(__ELF__) && (defined(__GNUC__) || defined(__clang__)) && \
    !defined(BHSD_NO_MULTIVERSION)
#define BHSD_MULTIVERSION __attribute__((target_clones("arch=x86-64-v3", "default")))
// integer loops that gain from AVX-512's 64-bit multiplies (vpmullq) as well
#define BHSD_MULTIVERSION_V4 __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
// loops that must round as the baseline does: AVX2 without FMA (where FMA is enabled GCC contracts a
// product and a sum into one rounding)
#define BHSD_MULTIVERSION_NO_FMA __attribute__((target_clones("avx2", "default")))
#else
#define BHSD_MULTIVERSION
#define BHSD_MULTIVERSION_V4
#define BHSD_MULTIVERSION_NO_FMA
#endif
