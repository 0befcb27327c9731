// Direct vs Winograd on the C++ core (issue 23): F(2×2×2, 3×3×3) for the 3×3×3 layers of a U-Net,
// F(2×2, 3×3) per plane for the 1×3×3 layers of nnU-Net's anisotropic stages, and the F(4×4) tiles
// beside them (F(2×4×4, 3×3×3), F(4×4, 3×3): the default). Built as the addon is built — no -march:
// the kernels are chosen at run time (AVX-512 / AVX2; BHSD_NO_AVX512=1 measures the AVX2 ones):
//
//   g++ -std=c++17 -O3 -pthread -Inative/include bench/winograd_bench.cc -o /tmp/winograd_bench
//   /tmp/winograd_bench [runs=7] [threads=hardware]
//
// Per shape: the two paths interleaved (direct, Winograd, direct, …), each run timed alone, medians
// of `runs`; GFLOP/s counts the direct convolution's FLOPs (2·Cin·Cout·27, or ·9 for the 1×3×3 rows,
// per output voxel) for both, so the Winograd figure is an effective rate. Accuracy: 4096 sampled
// output voxels of each path against a float64 direct sum, as a fraction of the output's scale
// (max |reference| over the sample). Where the plan may also time F(4×4×4, 3×3×3) tiles (deep_applies:
// 3×3×3 layers up to 256×256 channels with 8 output planes or more) a column of its own.
// Prints /proc/loadavg before and after: on a shared machine the figures move with the load.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "bhsd/conv.hpp"

static std::string loadavg() {
  std::ifstream f("/proc/loadavg");
  std::string s;
  std::getline(f, s);
  return s;
}

static double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const std::size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

int main(int argc, char** argv) {
  const int runs = argc > 1 ? std::max(1, std::atoi(argv[1])) : 7;
  const unsigned threads =
      argc > 2 ? unsigned(std::max(1, std::atoi(argv[2]))) : std::max(1u, std::thread::hardware_concurrency());
  bhsd::ThreadPool pool(threads);
  std::printf("simd: %s, threads %u, runs %d\nloadavg before: %s\n", bhsd::simd_level().c_str(), threads, runs,
              loadavg().c_str());
  struct Shape {
    std::int64_t C, D, H, W, kd;
  };  // kd 1: a 1×3×3 kernel (F(2×2, 3×3) per plane), padding (0, 1, 1)
  // the nnU-Net window's extents (16×256×256 patch: 64 channels at 16×128×128, 128 at 16×64×64,
  // 256 at 8×32×32) after the smaller ones
  const Shape shapes[] = {{32, 32, 64, 64, 3},   {64, 16, 64, 64, 3},   {128, 16, 32, 32, 3}, {256, 8, 16, 16, 3},
                          {320, 4, 8, 8, 3},     {64, 16, 128, 128, 3}, {128, 16, 64, 64, 3}, {256, 8, 32, 32, 3},
                          {32, 16, 128, 128, 1}, {64, 16, 64, 64, 1},   {128, 16, 32, 32, 1}, {32, 16, 256, 256, 1},
                          {64, 16, 128, 128, 1}};
  std::printf(
      "| layer | direct GFLOP/s | F(2×2×2) / F(2×2) GFLOP/s | Winograd GFLOP/s | F(4×4×4) GFLOP/s | Winograd / direct "
      "| "
      "max error / scale (direct, Winograd, F(4×4×4)) |\n");
  std::printf("| --- | --- | --- | --- | --- | --- | --- |\n");
  std::uint32_t st = 12345;
  auto rnd = [&] {
    st = st * 1664525u + 1013904223u;
    return float(st >> 8) / float(1 << 24) * 2.0f - 1.0f;
  };
  for (const Shape& s : shapes) {
    const std::int64_t C = s.C, Co = s.C;
    const std::int64_t kd = s.kd, pd = kd / 2;
    const bhsd::ConvGeom g{C, s.D, s.H, s.W, Co, kd, 3, 3, 1, 1, 1, 1, 1, 1, pd, 1, 1, s.D, s.H, s.W};
    const std::int64_t V = s.D * s.H * s.W;
    // U-Net-like magnitudes: normalised activations (variance ≈ 1), Kaiming-uniform weights
    std::vector<float> x(std::size_t(C * V)), w(std::size_t(Co * g.K())), b(static_cast<std::size_t>(Co));
    for (auto& v : x) v = rnd() * 1.73f;
    const float wb = std::sqrt(6.0f / float(g.K()));
    for (auto& v : w) v = rnd() * wb;
    for (auto& v : b) v = rnd() * 0.1f;
    const std::vector<float> wp = bhsd::pack_conv_weights(w.data(), Co, g.K());
    std::vector<float> yd(std::size_t(Co * V)), yw(std::size_t(Co * V));
    // F(2×2×2) / F(2×2) tiles (the f2 column) beside the F(4×4) ones (the Winograd column)
    const bool both = bhsd::wino_detail::tile_m(g) == 4;
    const bool deep = bhsd::wino_detail::deep_applies(g);
    auto time = [&](bool wino, float* y, bool f2 = false, bool f444 = false) {
      bhsd::wino_detail::f4_override() = f2 ? 0 : -1;
      const bhsd::wino_detail::DeepTilesScope scope(f444);
      const auto t0 = std::chrono::steady_clock::now();
      if (wino) {
        if (!bhsd::conv3d_forward_winograd(g, x.data(), wp.data(), b.data(), y, bhsd::Act::none, 0.0f, pool))
          return -1.0;
      } else {
        bhsd::conv3d_forward(g, x.data(), wp.data(), b.data(), y, bhsd::Act::none, 0.0f, pool, false);
      }
      return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    };
    std::vector<float> y2(std::size_t(Co * V)), y4(deep ? std::size_t(Co * V) : 0);
    time(false, yd.data()), time(true, yw.data());  // warm-up: buffers, page faults
    if (both) time(true, y2.data(), true);
    if (deep) time(true, y4.data(), false, true);
    std::vector<double> td, tw, t2, t4;
    for (int r = 0; r < runs; ++r) {
      td.push_back(time(false, yd.data())), tw.push_back(time(true, yw.data()));
      if (both) t2.push_back(time(true, y2.data(), true));
      if (deep) t4.push_back(time(true, y4.data(), false, true));
    }
    bhsd::wino_detail::f4_override() = -1;
    // accuracy on sampled voxels
    double scale = 0, ed = 0, ew = 0, e4 = 0;
    for (int q = 0; q < 4096; ++q) {
      st = st * 1664525u + 1013904223u;
      const std::int64_t i = std::int64_t(st % std::uint32_t(Co * V)), co = i / V, v = i % V;
      const std::int64_t od = v / (s.H * s.W), oh = (v / s.W) % s.H, ow = v % s.W;
      double acc = b[std::size_t(co)];
      for (std::int64_t ci = 0; ci < C; ++ci)
        for (std::int64_t a = 0; a < kd; ++a)
          for (int bb = 0; bb < 3; ++bb)
            for (int e = 0; e < 3; ++e) {
              const std::int64_t id = od - pd + a, ih = oh - 1 + bb, iw = ow - 1 + e;
              if (id < 0 || id >= s.D || ih < 0 || ih >= s.H || iw < 0 || iw >= s.W) continue;
              acc += double(x[std::size_t(((ci * s.D + id) * s.H + ih) * s.W + iw)]) *
                     double(w[std::size_t((co * C + ci) * 9 * kd + a * 9 + bb * 3 + e)]);
            }
      scale = std::max(scale, std::fabs(acc));
      ed = std::max(ed, std::fabs(acc - yd[std::size_t(i)])), ew = std::max(ew, std::fabs(acc - yw[std::size_t(i)]));
      if (deep) e4 = std::max(e4, std::fabs(acc - y4[std::size_t(i)]));
    }
    const double flops = 2.0 * double(C) * double(Co) * 9.0 * double(kd) * double(V);
    const double md = median(td), mw = median(tw), m2 = both ? median(t2) : 0.0, m4 = deep ? median(t4) : 0.0;
    char f2col[32] = "—", f4col[32] = "—", e4col[32] = "";
    if (both) std::snprintf(f2col, sizeof f2col, "%.0f", flops / m2 * 1e-9);
    if (deep) std::snprintf(f4col, sizeof f4col, "%.0f", flops / m4 * 1e-9);
    if (deep) std::snprintf(e4col, sizeof e4col, ", %.1e", e4 / scale);
    std::printf("| %lld→%lld, %s, %lld×%lld×%lld | %.0f | %s | %.0f | %s | %.2f× | %.1e, %.1e%s |\n", (long long)C,
                (long long)Co,
                kd == 3 ? (both ? "3×3×3, F(2×4×4, 3×3×3)" : "3×3×3")
                : both  ? "1×3×3, F(4×4, 3×3)"
                        : "1×3×3",
                (long long)s.D, (long long)s.H, (long long)s.W, flops / md * 1e-9, f2col,
                mw > 0 ? flops / mw * 1e-9 : 0.0, f4col, mw > 0 ? md / mw : 0.0, ed / scale, ew / scale, e4col);
    std::fflush(stdout);
  }
  std::printf("loadavg after: %s\n", loadavg().c_str());
  return 0;
}
