// A small test of the Node-free core, built and run by scripts/native-core-test.mjs
// (g++ -std=c++17 -O2 -pthread). Exits non-zero on the first failed check.
#include <atomic>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <numeric>
#include <stdexcept>
#include <vector>

#include "bhsd/cpu_features.hpp"
#include "bhsd/thread_pool.hpp"
#include "bhsd/voxel_ops.hpp"

static int checks = 0, failures = 0;
#define CHECK(cond)                                                        \
  do {                                                                     \
    ++checks;                                                              \
    if (!(cond)) {                                                         \
      ++failures;                                                          \
      std::fprintf(stderr, "FAIL %s:%d: %s\n", __FILE__, __LINE__, #cond); \
    }                                                                      \
  } while (0)

static void test_pool_covers_every_index(bhsd::ThreadPool& pool) {
  for (std::size_t n : {1u, 2u, 7u, 1000u, 100003u}) {
    std::vector<std::atomic<int>> hits(n);
    for (auto& h : hits) h = 0;
    pool.parallel_for(n, [&](std::size_t lo, std::size_t hi) {
      for (std::size_t i = lo; i < hi; ++i) hits[i]++;
    });
    bool once = true;
    for (auto& h : hits) once = once && h == 1;
    CHECK(once);
  }
}

static void test_pool_exception_and_nesting(bhsd::ThreadPool& pool) {
  bool threw = false;
  try {
    pool.parallel_for(1000, [&](std::size_t lo, std::size_t) {
      if (lo == 0) throw std::runtime_error("boom");
    });
  } catch (const std::runtime_error& e) {
    threw = std::string(e.what()) == "boom";
  }
  CHECK(threw);
  // the pool still works after an exception, and a nested loop runs serially without deadlock
  std::atomic<long> total{0};
  pool.parallel_for(64, [&](std::size_t lo, std::size_t hi) {
    for (std::size_t i = lo; i < hi; ++i)
      pool.parallel_for(10, [&](std::size_t a, std::size_t b) { total += long(b - a); });
  });
  CHECK(total == 640);
}

static void test_pool_many_loops(bhsd::ThreadPool& pool) {
  long long acc = 0;
  for (int rep = 0; rep < 2000; ++rep) {
    std::atomic<long long> s{0};
    pool.parallel_for(97, [&](std::size_t lo, std::size_t hi) {
      long long t = 0;
      for (std::size_t i = lo; i < hi; ++i) t += (long long)i;
      s += t;
    });
    acc += s;
  }
  CHECK(acc == 2000LL * (96 * 97 / 2));
}

static void test_stats_and_rescale(bhsd::ThreadPool& pool) {
  std::vector<std::int16_t> v(300001);
  for (std::size_t i = 0; i < v.size(); ++i) v[i] = std::int16_t(int(i % 4001) - 2000);
  bhsd::VoxelStats s = bhsd::voxel_stats(v.data(), v.size(), pool);
  double sum = 0;
  std::uint64_t nz = 0;
  for (auto x : v) sum += x, nz += x != 0;
  CHECK(s.min == -2000 && s.max == 2000 && s.sum == sum && s.nonzero == nz && s.nonfinite == 0);

  std::vector<float> f = {1.5f, NAN, -INFINITY, 0.f, -3.f};
  s = bhsd::voxel_stats(f.data(), f.size(), pool);
  CHECK(s.min == -3 && s.max == 1.5 && s.sum == -1.5 && s.nonzero == 4 && s.nonfinite == 2);

  std::vector<float> out(v.size());
  bhsd::rescale_to_f32(v.data(), v.size(), 0.5, -1024.0, out.data(), pool);
  bool ok = true;
  for (std::size_t i = 0; i < v.size(); ++i) ok = ok && out[i] == float(v[i] * 0.5 - 1024.0);
  CHECK(ok);
}

int main() {
  std::printf("simd level: %s\n", bhsd::simd_level().c_str());
  for (unsigned threads : {1u, 2u, 5u}) {
    bhsd::ThreadPool pool(threads);
    test_pool_covers_every_index(pool);
    test_pool_exception_and_nesting(pool);
    test_pool_many_loops(pool);
    test_stats_and_rescale(pool);
    pool.shutdown();
    test_pool_covers_every_index(pool);  // after shutdown loops still run, on the caller
  }
  std::printf("%d passed, %d failed\n", checks - failures, failures);
  return failures ? 1 : 0;
}
