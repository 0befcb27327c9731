// A small test of the Node-free core, built and run by scripts/native-core-test.mjs
// (g++ -std=c++17 -O2 -pthread). Exits non-zero on the first failed check.
#include <array>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <numeric>
#include <set>
#include <stdexcept>
#include <thread>
#include <vector>

#include "bhsd/attention.hpp"
#include "bhsd/ccl.hpp"
#include "bhsd/conv.hpp"
#include "bhsd/cpu_features.hpp"
#include "bhsd/file_read.hpp"
#include "bhsd/gemm.hpp"
#include "bhsd/host_device.hpp"
#include "bhsd/tensor_ops.hpp"
#include "bhsd/metrics.hpp"
#include "bhsd/ssm.hpp"
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

// The tests' uniform floats in [−1, 1): a linear congruential generator from a seed.
struct Uniform {
  std::uint32_t st;
  float operator()() {
    st = st * 1664525u + 1013904223u;
    return float(st >> 8) / float(1 << 24) * 2.0f - 1.0f;
  }
};

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

// Cancellation: a loop under a set flag does not start; a flag set mid-loop skips the chunks not yet
// started and throws Cancelled on the caller; the pool runs the next loop (without a flag) in full.
static void test_pool_cancel(bhsd::ThreadPool& pool) {
  bhsd::CancelFlag flag;
  std::atomic<int> ran{0};
  {
    bhsd::CancelScope scope(&flag);
    flag.set = 1;
    bool threw = false;
    try {
      pool.parallel_for(
          1000, [&](std::size_t, std::size_t) { ran++; }, 1, 4);
    } catch (const bhsd::Cancelled&) {
      threw = true;
    }
    CHECK(threw && ran == 0);
    flag.set = 0;
    threw = false;
    try {
      pool.parallel_for(
          1000,
          [&](std::size_t lo, std::size_t) {
            if (lo == 0) flag.set = 1;  // the first chunk cancels the loop
            ran++;
            std::this_thread::sleep_for(std::chrono::milliseconds(2));
          },
          1, 64);
    } catch (const bhsd::Cancelled&) {
      threw = true;
    }
    CHECK(threw);
    CHECK(ran < 64 * int(pool.size()));  // chunks after the flag were skipped
  }
  std::atomic<std::size_t> total{0};
  pool.parallel_for(1000, [&](std::size_t lo, std::size_t hi) { total += hi - lo; });
  CHECK(total == 1000);  // out of the scope: no flag, every index
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

// Loops after the workers have slept (each call made after an idle spell): every index still
// covered; where the pool steers (ThreadPool::steer_sleepers), every worker asleep as the loop
// began was confined for its wake-up; and a worker runs its chunks with its own mask back — a worker
// left confined would stay off the caller's processor for good — while the caller's own mask is
// never touched.
static void test_pool_after_sleep(bhsd::ThreadPool& pool, bool stopped = false) {
  const std::thread::id caller = std::this_thread::get_id();
  const int workers = stopped ? 0 : int(pool.size()) - 1;  // (after shutdown none)
#ifdef BHSD_POOL_STEER
  cpu_set_t allowed;
  CPU_ZERO(&allowed);
  const bool known = sched_getaffinity(0, sizeof allowed, &allowed) == 0;
#endif
  for (int rep = 0; rep < 6; ++rep) {
    // until every worker sleeps (past its spin; up to 2 s where a loaded machine runs it late)
    const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(2);
    while (pool.steering_stats().asleep < workers && std::chrono::steady_clock::now() < until)
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    const bhsd::ThreadPool::SteeringStats before = pool.steering_stats();
    std::atomic<long long> sum{0};
    std::atomic<int> confined{0};
    pool.parallel_for(
        64,
        [&](std::size_t lo, std::size_t hi) {
#ifdef BHSD_POOL_STEER
          cpu_set_t mine;
          CPU_ZERO(&mine);
          if (known && std::this_thread::get_id() != caller &&
              (pthread_getaffinity_np(pthread_self(), sizeof mine, &mine) != 0 || !CPU_EQUAL(&mine, &allowed)))
            ++confined;
#endif
          for (std::size_t i = lo; i < hi; ++i) sum += (long long)i;
          std::this_thread::sleep_for(std::chrono::microseconds(200));  // long enough for every worker to wake
        },
        1, 4);
    const bhsd::ThreadPool::SteeringStats after = pool.steering_stats();
    CHECK(sum == 64 * 63 / 2);
    CHECK(confined == 0);
    // (a worker still confined from an earlier loop, woken for it too late to take part, is left so;
    // one not yet asleep after the 2 s may or may not be by the time the loop starts)
    if (before.on && before.asleep == workers)
      CHECK(after.steers == before.steers + std::uint64_t(before.asleep - before.steered));
    if (before.on && before.asleep < workers)
      CHECK(after.steers <= before.steers + std::uint64_t(workers - before.steered));
    if (!before.on) CHECK(after.steers == before.steers);
  }
#ifdef BHSD_POOL_STEER
  cpu_set_t mine;
  CPU_ZERO(&mine);
  CHECK(!known || (pthread_getaffinity_np(pthread_self(), sizeof mine, &mine) == 0 && CPU_EQUAL(&mine, &allowed)));
#endif
  (void)caller;
}

// slot_local: per pool slot, not per OS thread — the caller's slot's object is the same whichever
// thread calls (libuv's threads take turns), each slot's object stays from loop to loop, another
// tag is another object, and outside a pooled loop's chunks (or in a loop run serially) there is none.
static void test_pool_slot_local(bhsd::ThreadPool& pool) {
  struct TagA {};
  struct TagB {};
  CHECK((bhsd::ThreadPool::slot_local<int, TagA>() == nullptr));
  std::mutex mu;
  std::set<int*> seen;
  const void* caller_obj[2] = {nullptr, nullptr};
  bool distinct_tags = true, all_set = true;
  for (int who = 0; who < 2; ++who) {
    std::thread caller([&] {
      const auto me = std::this_thread::get_id();
      // (the workers may take every chunk of a loop before the caller takes one: on until it has,
      // a few hundred loops at most)
      for (int loop = 0; loop < 20 || (pool.size() > 1 && !caller_obj[who] && loop < 2000); ++loop)
        pool.parallel_for(
            64,
            [&](std::size_t, std::size_t) {
              int* a = bhsd::ThreadPool::slot_local<int, TagA>();
              int* b = bhsd::ThreadPool::slot_local<int, TagB>();
              std::lock_guard<std::mutex> lk(mu);
              if (pool.size() == 1) {  // serial: no slot
                all_set = all_set && a == nullptr && b == nullptr;
                return;
              }
              all_set = all_set && a && b;
              distinct_tags = distinct_tags && a != b;
              if (a) seen.insert(a);
              if (std::this_thread::get_id() == me) caller_obj[who] = a;
            },
            1, 4);
    });
    caller.join();
  }
  CHECK(all_set);
  CHECK(distinct_tags);
  CHECK(seen.size() <= pool.size());
  if (pool.size() > 1) {
    CHECK(caller_obj[0] != nullptr);
    CHECK(caller_obj[0] == caller_obj[1]);  // two OS threads, one caller slot
  }
  CHECK((bhsd::ThreadPool::slot_local<int, TagA>() == nullptr));
}

// A loop made under PoolNoWaitScope while another thread's loop holds the pool runs serially on its
// own thread instead of waiting for it (the Node layer's small calls, run on the JavaScript thread,
// must not wait behind another call's long loop). A watchdog releases the holder after 10 s, so a
// broken scope fails the check instead of hanging the test.
static void test_pool_no_wait(bhsd::ThreadPool& pool) {
  if (pool.size() < 2) return;
  std::atomic<int> started{0}, release{0}, done{0}, timed_out{0};
  std::thread holder([&] {
    pool.parallel_for(
        2,
        [&](std::size_t, std::size_t) {
          started = 1;
          while (!release.load()) std::this_thread::yield();
        },
        1, 1);
  });
  std::thread watchdog([&] {
    for (int i = 0; i < 1000 && !done.load(); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
    if (!done.load()) timed_out = 1;
    release = 1;
  });
  while (!started.load()) std::this_thread::yield();
  std::atomic<std::size_t> total{0};
  std::atomic<int> elsewhere{0};
  const std::thread::id self = std::this_thread::get_id();
  {
    bhsd::PoolNoWaitScope no_wait;
    pool.parallel_for(1000, [&](std::size_t lo, std::size_t hi) {
      total += hi - lo;
      if (std::this_thread::get_id() != self) elsewhere = 1;
    });
  }
  done = 1;
  CHECK(total == 1000);
  CHECK(elsewhere == 0);  // serially, on this thread
  CHECK(timed_out == 0);  // before the holder let go
  release = 1;
  holder.join();
  watchdog.join();
  // and with the pool free, a no-wait loop uses it as any other
  std::atomic<std::size_t> again{0};
  {
    bhsd::PoolNoWaitScope no_wait;
    pool.parallel_for(1000, [&](std::size_t lo, std::size_t hi) { again += hi - lo; });
  }
  CHECK(again == 1000);
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

// Reference: breadth-first flood fill from each unlabelled voxel in raster order.
template <class T>
static std::vector<std::int32_t> flood_fill(const std::vector<T>& d, int nx, int ny, int nz, int conn, bool per_class,
                                            int* count) {
  std::vector<std::int32_t> lab(d.size(), 0);
  std::vector<std::size_t> queue;
  int c = 0;
  for (std::size_t s = 0; s < d.size(); ++s) {
    if (!d[s] || lab[s]) continue;
    lab[s] = ++c;
    queue.assign(1, s);
    for (std::size_t q = 0; q < queue.size(); ++q) {
      const std::size_t i = queue[q];
      const int x = int(i % nx), y = int(i / nx % ny), z = int(i / (std::size_t(nx) * ny));
      for (int dz = -1; dz <= 1; ++dz)
        for (int dy = -1; dy <= 1; ++dy)
          for (int dx = -1; dx <= 1; ++dx) {
            const int nzero = (dx != 0) + (dy != 0) + (dz != 0);
            if (nzero == 0 || (conn == 6 && nzero > 1) || (conn == 18 && nzero > 2)) continue;
            const int X = x + dx, Y = y + dy, Z = z + dz;
            if (X < 0 || Y < 0 || Z < 0 || X >= nx || Y >= ny || Z >= nz) continue;
            const std::size_t j = (std::size_t(Z) * ny + Y) * nx + X;
            if (!d[j] || lab[j] || (per_class && d[j] != d[i])) continue;
            lab[j] = c;
            queue.push_back(j);
          }
    }
  }
  *count = c;
  return lab;
}

static void test_ccl_against_flood_fill(bhsd::ThreadPool& pool) {
  std::uint64_t seed = 12345;
  auto rnd = [&] {
    seed = seed * 6364136223846793005ULL + 1442695040888963407ULL;
    return unsigned(seed >> 33);
  };
  // rows of 64 voxels and more run the 16-byte (SSE2) mask path and cross 64-bit mask words; rows
  // longer than kStreamRow are painted in place rather than built and streamed
  const int shapes[][3] = {{1, 1, 1},
                           {1, 1, 40},
                           {40, 1, 1},
                           {7, 5, 3},
                           {16, 9, 11},
                           {33, 17, 5},
                           {3, 30, 9},
                           {64, 3, 3},
                           {65, 4, 3},
                           {130, 5, 4},
                           {128, 2, 2},
                           {200, 3, 5},
                           {int(bhsd::ccl_detail::kStreamRow) + 33, 2, 2}};
  int mismatches = 0, cases = 0;
  for (auto& sh : shapes)
    for (int density : {0, 20, 35, 45, 70, 100})
      for (int classes : {1, 3})
        for (int conn : {6, 18, 26})
          for (bool per_class : {false, true}) {
            const int nx = sh[0], ny = sh[1], nz = sh[2];
            std::vector<std::uint8_t> d(std::size_t(nx) * ny * nz);
            for (auto& v : d) v = (int(rnd() % 100) < density) ? std::uint8_t(1 + rnd() % classes) : 0;
            int want_count = 0;
            auto want = flood_fill(d, nx, ny, nz, conn, per_class, &want_count);
            // not cleared: every voxel must be written; every other case 4 bytes off a 16-byte
            // boundary (the streamed rows' unaligned heads and tails), the guard entries untouched
            const std::size_t skew = std::size_t(cases % 2);
            std::vector<std::int32_t> buf(d.size() + 2, -7);
            auto count = bhsd::connected_components(d.data(), nx, ny, nz, conn, per_class, buf.data() + skew, pool);
            const std::vector<std::int32_t> got(buf.begin() + std::ptrdiff_t(skew),
                                                buf.begin() + std::ptrdiff_t(skew + d.size()));
            ++cases;
            if (count != want_count || got != want || buf[skew + d.size()] != -7 || (skew && buf[0] != -7))
              ++mismatches;
          }
  CHECK(cases > 100);
  CHECK(mismatches == 0);
}

// Other voxel types (the byte mask path for int8 with negative classes, the per-voxel path for wider
// types), classes at the ends of each type's range, and volumes with more runs than one slab.
template <class T>
static int ccl_typed_mismatches(bhsd::ThreadPool& pool, const std::vector<T>& classes) {
  std::uint64_t seed = 777 + sizeof(T);
  auto rnd = [&] {
    seed = seed * 6364136223846793005ULL + 1442695040888963407ULL;
    return unsigned(seed >> 33);
  };
  const int shapes[][3] = {{70, 6, 5}, {129, 7, 3}, {64, 64, 2}, {33, 17, 5}};
  int mismatches = 0;
  for (auto& sh : shapes)
    for (int density : {10, 35, 60})
      for (std::size_t ncls : {std::size_t(1), classes.size()})
        for (int conn : {6, 18, 26})
          for (bool per_class : {false, true}) {
            const int nx = sh[0], ny = sh[1], nz = sh[2];
            std::vector<T> d(std::size_t(nx) * ny * nz);
            for (auto& v : d) v = (int(rnd() % 100) < density) ? classes[rnd() % ncls] : T(0);
            int want_count = 0;
            auto want = flood_fill(d, nx, ny, nz, conn, per_class, &want_count);
            std::vector<std::int32_t> got(d.size(), 12345);  // not cleared: every voxel must be written
            auto count = bhsd::connected_components(d.data(), nx, ny, nz, conn, per_class, got.data(), pool);
            if (count != want_count || got != want) ++mismatches;
          }
  return mismatches;
}

static void test_ccl_types(bhsd::ThreadPool& pool) {
  CHECK(ccl_typed_mismatches<std::uint8_t>(pool, {255, 1, 128}) == 0);
  CHECK(ccl_typed_mismatches<std::int8_t>(pool, {-128, 127, -1}) == 0);
  CHECK(ccl_typed_mismatches<std::int16_t>(pool, {-32768, 32767, 5}) == 0);
  CHECK(ccl_typed_mismatches<std::uint16_t>(pool, {65535, 1, 300}) == 0);
  CHECK(ccl_typed_mismatches<std::int32_t>(pool, {-7, 2147483647, 70000}) == 0);
  // one class only, its value the lowest of the type: per class it is the foreground labelling
  CHECK(ccl_typed_mismatches<std::int8_t>(pool, {-128}) == 0);
}

static void test_component_stats(bhsd::ThreadPool& pool) {
  // two components: a 2x2x1 square at z=0 and a 1x1x3 column at x=3,y=3
  const int nx = 4, ny = 4, nz = 3;
  std::vector<std::uint8_t> d(nx * ny * nz, 0);
  d[0] = d[1] = d[4] = d[5] = 2;
  for (int z = 0; z < 3; ++z) d[z * 16 + 15] = 5;
  std::vector<std::int32_t> lab(d.size(), 0);
  CHECK(bhsd::connected_components(d.data(), nx, ny, nz, 26, true, lab.data(), pool) == 2);
  std::vector<double> st(2 * bhsd::STATS);
  bhsd::component_stats(lab.data(), nx, ny, nz, 2, d.data(), st.data(), pool);
  CHECK(st[0] == 4 && st[1] == 0 && st[4] == 1 && st[5] == 1 && st[6] == 0 && st[7] == 2 && st[10] == 2);
  const double* b = st.data() + bhsd::STATS;
  CHECK(b[0] == 3 && b[3] == 0 && b[6] == 2 && b[9] == 3 && b[10] == 5);
  std::int32_t zmin[2] = {0, 0};
  std::int64_t off[3] = {0, 1, 4};
  std::uint32_t areas[4] = {0, 0, 0, 0};
  bhsd::component_slice_areas(lab.data(), nx, ny, nz, 2, zmin, off, areas, pool);
  CHECK(areas[0] == 4 && areas[1] == 1 && areas[2] == 1 && areas[3] == 1);
  std::vector<std::uint8_t> keep = {0, 0, 1}, out(d.size());
  bhsd::select_components(d.data(), lab.data(), std::int64_t(d.size()), keep.data(), 2, out.data(), pool);
  CHECK(out[0] == 0 && out[15] == 5 && out[47] == 5);
}

// Reference: the distance to every feature voxel, the smallest kept.
static void test_edt_against_brute_force(bhsd::ThreadPool& pool) {
  std::uint64_t seed = 99;
  auto rnd = [&] {
    seed = seed * 6364136223846793005ULL + 1442695040888963407ULL;
    return unsigned(seed >> 33);
  };
  int bad = 0, cases = 0;
  const int shapes[][3] = {{1, 1, 1}, {9, 1, 1}, {1, 7, 1}, {1, 1, 8}, {6, 5, 4}, {13, 11, 7}, {20, 3, 9}};
  for (auto& sh : shapes)
    for (int density : {0, 1, 5, 30, 100}) {
      const int w = sh[0], h = sh[1], d = sh[2];
      const double sx = 0.49, sy = 0.7, sz = 5.0;
      std::vector<std::uint8_t> f(std::size_t(w) * h * d);
      for (auto& v : f) v = int(rnd() % 100) < density;
      std::vector<double> got(f.size());
      bhsd::edt_squared(f.data(), w, h, d, sx, sy, sz, got.data(), pool);
      ++cases;
      for (int z = 0; z < d; ++z)
        for (int y = 0; y < h; ++y)
          for (int x = 0; x < w; ++x) {
            double best = INFINITY;
            for (int k = 0; k < d; ++k)
              for (int j = 0; j < h; ++j)
                for (int i = 0; i < w; ++i)
                  if (f[(std::size_t(k) * h + j) * w + i]) {
                    const double dx = (x - i) * sx, dy = (y - j) * sy, dz = (z - k) * sz;
                    best = std::min(best, dx * dx + dy * dy + dz * dz);
                  }
            const double g = got[(std::size_t(z) * h + y) * w + x];
            if (!(g == best || std::fabs(g - best) <= 1e-9 * best)) ++bad;
          }
    }
  CHECK(cases == 35);
  CHECK(bad == 0);
}

// The blocked weight gradient against the one-dot-product-per-weight reference: strides, padding,
// dilation, rows that are not a multiple of 16 voxels, more than 16 channels of A.
static void test_weight_grad_blocked(bhsd::ThreadPool& pool) {
  struct Case {
    std::int64_t Ca, Cb, Ad, Ah, Aw, Bd, Bh, Bw, kd, kh, kw, s[3], p[3], d[3];
  };
  const Case cases[] = {
      {8, 4, 4, 9, 21, 4, 9, 21, 3, 3, 3, {1, 1, 1}, {1, 1, 1}, {1, 1, 1}},
      {20, 3, 3, 5, 7, 6, 10, 14, 3, 3, 3, {2, 2, 2}, {1, 1, 1}, {1, 1, 1}},
      {5, 7, 2, 6, 33, 2, 6, 33, 1, 3, 3, {1, 1, 1}, {0, 2, 2}, {1, 2, 2}},
      {33, 2, 2, 4, 4, 4, 8, 8, 2, 2, 2, {2, 2, 2}, {0, 0, 0}, {1, 1, 1}},
      {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, {1, 1, 1}, {0, 0, 0}, {1, 1, 1}},
  };
  std::uint32_t st = 12345;
  auto rnd = [&] {
    st = st * 1664525u + 1013904223u;
    return float(st >> 8) / float(1 << 24) - 0.5f;
  };
  for (const Case& c : cases) {
    std::vector<float> A(std::size_t(c.Ca * c.Ad * c.Ah * c.Aw)), B(std::size_t(c.Cb * c.Bd * c.Bh * c.Bw));
    for (auto& v : A) v = rnd();
    for (auto& v : B) v = rnd();
    const std::size_t n = std::size_t(c.Ca * c.Cb * c.kd * c.kh * c.kw);
    std::vector<float> ref(n, 0.5f), got(n, 0.5f);  // both add into what is there
    bhsd::correlate_weight_grad_reference(A.data(), c.Ca, c.Ad, c.Ah, c.Aw, B.data(), c.Cb, c.Bd, c.Bh, c.Bw, c.kd,
                                          c.kh, c.kw, c.s, c.p, c.d, ref.data(), pool);
    bhsd::correlate_weight_grad(A.data(), c.Ca, c.Ad, c.Ah, c.Aw, B.data(), c.Cb, c.Bd, c.Bh, c.Bw, c.kd, c.kh, c.kw,
                                c.s, c.p, c.d, got.data(), pool);
    double worst = 0;
    for (std::size_t i = 0; i < n; ++i) worst = std::max(worst, double(std::fabs(ref[i] - got[i])));
    CHECK(worst < 1e-4);
  }
}

// The indirect convolution (padded slabs, offsets instead of packed panels) against a plain loop,
// with one slab for all planes and with slabs of one output plane (halos re-padded per slab); the
// full dispatcher on the same cases (cases with more than 48 outputs take packed panels), and the
// AVX2 panel packing against the portable one, segment by segment (edges, dilation, W < 16).
// A test case's geometry (input C × D × H × W, Co outputs, kernel k, strides s, padding p on both
// sides, dilation d) with its output extents.
template <class Case>
static bhsd::ConvGeom geom_of(const Case& c) {
  bhsd::ConvGeom g{c.C,    c.D,    c.H,    c.W,    c.Co,   c.k[0], c.k[1], c.k[2], c.s[0], c.s[1],
                   c.s[2], c.d[0], c.d[1], c.d[2], c.p[0], c.p[1], c.p[2], 0,      0,      0};
  g.Do = bhsd::conv_out(c.D, c.k[0], c.s[0], c.d[0], c.p[0], c.p[0]);
  g.Ho = bhsd::conv_out(c.H, c.k[1], c.s[1], c.d[1], c.p[1], c.p[1]);
  g.Wo = bhsd::conv_out(c.W, c.k[2], c.s[2], c.d[2], c.p[2], c.p[2]);
  return g;
}

// A convolution's operands at U-Net-like magnitudes: activations of order 1, Kaiming-scaled weights
// (of g's K), biases about 0.1 — drawn from rnd in that order.
struct ConvOperands {
  std::vector<float> x, w, bias;
};
template <class Rnd>
static ConvOperands conv_operands(const bhsd::ConvGeom& g, Rnd& rnd) {
  const float wscale = std::sqrt(6.0f / float(g.K()));
  ConvOperands o{std::vector<float>(std::size_t(g.C * g.D * g.H * g.W)), std::vector<float>(std::size_t(g.Co * g.K())),
                 std::vector<float>(std::size_t(g.Co))};
  for (auto& v : o.x) v = rnd();
  for (auto& v : o.w) v = rnd() * wscale;
  for (auto& v : o.bias) v = rnd() * 0.1f;
  return o;
}

// The convolution's sum at output voxel (co, od, oh, ow) in double, without bias (x [C, D, H, W],
// w [Co, C, kd, kh, kw]), each sample and weight taken through `as` (a double of the float, or of it
// rounded as a path under test rounds it).
template <class As>
static double conv_sum(const bhsd::ConvGeom& g, const float* x, const float* w, std::int64_t co, std::int64_t od,
                       std::int64_t oh, std::int64_t ow, As as) {
  double acc = 0;
  for (std::int64_t ci = 0; ci < g.C; ++ci)
    for (std::int64_t a = 0; a < g.kd; ++a)
      for (std::int64_t b = 0; b < g.kh; ++b)
        for (std::int64_t e = 0; e < g.kw; ++e) {
          const std::int64_t id = od * g.sd - g.pd + a * g.dd, ih = oh * g.sh - g.ph + b * g.dh,
                             iw = ow * g.sw - g.pw + e * g.dw;
          if (id < 0 || id >= g.D || ih < 0 || ih >= g.H || iw < 0 || iw >= g.W) continue;
          acc += as(x[std::size_t(((ci * g.D + id) * g.H + ih) * g.W + iw)]) *
                 as(w[std::size_t(((co * g.C + ci) * g.kd + a) * g.kh * g.kw + b * g.kw + e)]);
        }
  return acc;
}
static double as_double(float v) { return double(v); }

static void test_conv_indirect(bhsd::ThreadPool& pool) {
  // output-channel blocks: contiguous, 1–6 rows each, ⌈Co / 6⌉ of them, no block under 3 rows
  // after a full one (the remainder shares the last full block)
  for (std::int64_t Co = 1; Co <= 100; ++Co) {
    const bhsd::CoBlocks cbk(Co);
    bool ok = cbk.count() == (Co + 5) / 6;
    std::int64_t next = 0;
    for (std::int64_t b = 0; b < cbk.count(); ++b) {
      ok = ok && cbk.row0(b) == next && cbk.rows(b) >= 1 && cbk.rows(b) <= bhsd::MR && (Co < 6 || cbk.rows(b) >= 3);
      next += cbk.rows(b);
    }
    CHECK(ok && next == Co);
  }
#ifdef BHSD_X86
  if (!bhsd::cpu_features().avx2 || !bhsd::cpu_features().fma) return;
  struct Case {
    std::int64_t C, D, H, W, Co, k[3], s[3], p[3], d[3];
  };
  const Case cases[] = {
      {3, 5, 9, 21, 7, {3, 3, 3}, {1, 1, 1}, {1, 1, 1}, {1, 1, 1}},
      {2, 6, 8, 17, 6, {3, 3, 3}, {1, 1, 1}, {2, 2, 2}, {2, 2, 2}},
      {4, 7, 10, 33, 13, {3, 1, 3}, {2, 2, 1}, {1, 0, 1}, {1, 1, 1}},
      {1, 4, 6, 16, 8, {1, 3, 3}, {1, 1, 1}, {0, 1, 1}, {1, 1, 1}},
      {5, 3, 4, 5, 2, {2, 2, 2}, {1, 1, 1}, {0, 0, 0}, {1, 1, 1}},
      // strides along W (rows stored as phases): a U-Net's (1, 2, 2) and (2, 2, 2) downsampling,
      // an even kernel, and stride 3 with dilation 2 and a row past one 16-wide segment
      {3, 5, 10, 37, 11, {3, 3, 3}, {1, 2, 2}, {1, 1, 1}, {1, 1, 1}},
      {2, 6, 9, 40, 16, {3, 3, 3}, {2, 2, 2}, {1, 1, 1}, {1, 1, 1}},
      {3, 4, 6, 19, 15, {2, 2, 2}, {2, 2, 2}, {0, 0, 0}, {1, 1, 1}},
      {2, 4, 5, 110, 5, {1, 3, 5}, {1, 1, 3}, {0, 1, 2}, {1, 1, 2}},
      // packed panels (more than 8 blocks of 6 outputs): interior and edge segments, dilation
      // along W, a row shorter than a segment, strides along W (gathered)
      {3, 5, 9, 40, 50, {3, 3, 3}, {1, 1, 1}, {1, 1, 1}, {1, 1, 1}},
      {2, 4, 7, 37, 49, {3, 3, 5}, {1, 1, 1}, {2, 0, 3}, {2, 1, 2}},
      {4, 3, 5, 9, 53, {3, 3, 3}, {1, 1, 1}, {1, 1, 1}, {1, 1, 1}},
      {2, 4, 5, 45, 55, {1, 3, 5}, {1, 1, 3}, {0, 1, 2}, {1, 1, 2}},
      {3, 6, 9, 70, 50, {3, 3, 3}, {2, 2, 2}, {1, 1, 1}, {1, 1, 1}},  // stride 2: even/odd row windows
      // more stride-2 row windows: (1, 2, 2) with a row of several segments, 1×3×3 whose second
      // segment holds one output, an even kernel, no padding with an odd width (the right edge)
      {2, 3, 12, 100, 60, {3, 3, 3}, {1, 2, 2}, {1, 1, 1}, {1, 1, 1}},
      {3, 2, 8, 33, 55, {1, 3, 3}, {1, 2, 2}, {0, 1, 1}, {1, 1, 1}},
      {2, 4, 10, 64, 52, {2, 2, 2}, {2, 2, 2}, {0, 0, 0}, {1, 1, 1}},
      {2, 3, 7, 37, 49, {3, 3, 3}, {1, 2, 2}, {0, 0, 0}, {1, 1, 1}},
      // rows shorter than a tile (flat segments across rows and planes): Wo 6 strided, 4 (five
      // pieces per segment), 7 dilated, 3 (six pieces), 2 and 1 (the deepest stages' rows: eight
      // and sixteen pieces), 2 strided along W (gathers)
      {3, 5, 8, 12, 50, {3, 3, 3}, {2, 2, 2}, {1, 1, 1}, {1, 1, 1}},
      {2, 4, 6, 8, 50, {3, 3, 3}, {1, 2, 2}, {1, 1, 1}, {1, 1, 1}},
      {2, 5, 6, 7, 49, {3, 3, 3}, {1, 1, 1}, {2, 2, 2}, {2, 2, 2}},
      {2, 3, 4, 3, 50, {3, 3, 3}, {1, 1, 1}, {1, 1, 1}, {1, 1, 1}},
      {3, 4, 2, 2, 50, {3, 3, 3}, {1, 1, 1}, {1, 1, 1}, {1, 1, 1}},
      {2, 5, 3, 1, 51, {3, 3, 3}, {1, 1, 1}, {1, 1, 1}, {1, 1, 1}},
      {2, 3, 5, 4, 50, {3, 3, 3}, {1, 2, 2}, {1, 1, 1}, {1, 1, 1}},
      // a kernel 35 wide at stride 2 along W: its even/odd row windows would need 10 vectors of
      // masks where the packer holds 8 (gathered instead)
      {2, 2, 3, 90, 50, {1, 1, 35}, {1, 1, 2}, {0, 0, 17}, {1, 1, 1}},
      // 1×1×1 with more than 48 outputs (pointwise_wide_avx512 on AVX-512): a partial last tile, an
      // odd pair of tail blocks, a volume of one partial tile, more tiles than a run of 16, and
      // 513 input channels (past its limit: the packed path)
      {7, 3, 5, 11, 50, {1, 1, 1}, {1, 1, 1}, {0, 0, 0}, {1, 1, 1}},
      {20, 2, 4, 9, 61, {1, 1, 1}, {1, 1, 1}, {0, 0, 0}, {1, 1, 1}},
      {5, 1, 1, 7, 55, {1, 1, 1}, {1, 1, 1}, {0, 0, 0}, {1, 1, 1}},
      {3, 4, 16, 17, 49, {1, 1, 1}, {1, 1, 1}, {0, 0, 0}, {1, 1, 1}},
      {513, 1, 2, 19, 50, {1, 1, 1}, {1, 1, 1}, {0, 0, 0}, {1, 1, 1}},
      // a pair of tiles whose second is partial (its samples staged): 17 and 50 voxels
      {4, 1, 1, 17, 50, {1, 1, 1}, {1, 1, 1}, {0, 0, 0}, {1, 1, 1}},
      {9, 1, 5, 10, 52, {1, 1, 1}, {1, 1, 1}, {0, 0, 0}, {1, 1, 1}},
  };
  std::uint32_t st = 777;
  auto rnd = [&] {
    st = st * 1664525u + 1013904223u;
    return float(st >> 8) / float(1 << 24) - 0.5f;
  };
  for (const Case& c : cases) {
    const bhsd::ConvGeom g = geom_of(c);
    std::vector<float> x(std::size_t(c.C * c.D * c.H * c.W)), w(std::size_t(c.Co * g.K())), bias(std::size_t(c.Co));
    for (auto& v : x) v = rnd();
    for (auto& v : w) v = rnd();
    for (auto& v : bias) v = rnd();
    const std::size_t no = std::size_t(c.Co * g.Do * g.Ho * g.Wo);
    std::vector<float> ref(no);
    for (std::int64_t co = 0; co < c.Co; ++co)
      for (std::int64_t od = 0; od < g.Do; ++od)
        for (std::int64_t oh = 0; oh < g.Ho; ++oh)
          for (std::int64_t ow = 0; ow < g.Wo; ++ow) {
            const double acc = bias[std::size_t(co)] + conv_sum(g, x.data(), w.data(), co, od, oh, ow, as_double);
            const float v = float(acc);
            ref[std::size_t(((co * g.Do + od) * g.Ho + oh) * g.Wo + ow)] = v > 0 ? v : 0.1f * v;
          }
    const std::vector<float> wp = bhsd::pack_conv_weights(w.data(), c.Co, g.K());
    auto worst_of = [&](const std::vector<float>& got) {
      double worst = 0;
      for (std::size_t i = 0; i < no; ++i) worst = std::max(worst, double(std::fabs(ref[i] - got[i])));
      return worst;
    };
    if (c.Co <= 48) {
      for (std::int64_t slab : {std::int64_t(16) << 20, std::int64_t(4)}) {
        std::vector<float> got(no, 9.0f);
        CHECK(bhsd::conv3d_forward_indirect(g, x.data(), wp.data(), bias.data(), got.data(), bhsd::Act::leaky, 0.1f,
                                            pool, slab));
        CHECK(worst_of(got) < 1e-4);
      }
    } else {
      CHECK(!bhsd::conv3d_forward_indirect(g, x.data(), wp.data(), bias.data(), nullptr, bhsd::Act::leaky, 0.1f, pool));
    }
    std::vector<float> got(no, 9.0f);
    bhsd::conv3d_forward(g, x.data(), wp.data(), bias.data(), got.data(), bhsd::Act::leaky, 0.1f, pool);
    CHECK(worst_of(got) < 1e-4);
    // panels, bit for bit: every row segment, all channels and the second half alone
    const std::size_t pn = std::size_t(g.K() * bhsd::NR);
    std::vector<float> pa(pn + 16), pb(pn + 16);
    float* a = pa.data() + (16 - (reinterpret_cast<std::uintptr_t>(pa.data()) / 4) % 16) % 16;  // aligned
    float* b = pb.data() + (16 - (reinterpret_cast<std::uintptr_t>(pb.data()) / 4) % 16) % 16;
    bool same = true;
    for (std::int64_t c0 : {std::int64_t(0), c.C / 2})
      for (std::int64_t od = 0; od < g.Do; ++od)
        for (std::int64_t oh = 0; oh < g.Ho; ++oh)
          for (std::int64_t ow0 = 0; ow0 < g.Wo; ow0 += bhsd::NR) {
            const std::int64_t n = std::min<std::int64_t>(bhsd::NR, g.Wo - ow0);
            std::fill(a, a + pn, 7.0f), std::fill(b, b + pn, 8.0f);
            bhsd::conv_detail::pack_panel_generic(g, x.data(), c0, c.C, od, oh, ow0, n, a);
            bhsd::conv_detail::pack_panel_avx2(g, x.data(), c0, c.C, od, oh, ow0, n, b);
            same = same && std::memcmp(a, b, std::size_t((c.C - c0) * g.kd * g.kh * g.kw) * 16 * sizeof(float)) == 0;
          }
    CHECK(same);
  }
#else
  (void)pool;
#endif
}

// The blocked dispatcher on every platform (the cases above run on x86 with AVX2 only): the kernel
// pick_kernel chooses — NEON on AArch64, AVX2/AVX-512 or the baseline on x86 — against a plain loop
// in double, through packed panels and staged partial tiles (Co not a multiple of 6, rows shorter and
// longer than a tile, padding, strides, dilation, several blocks of input channels); and on AArch64
// the NEON micro-kernel against the portable one tile by tile (K = 0 … 40, accumulating into c).
static void test_conv_dispatch_any_platform(bhsd::ThreadPool& pool) {
  struct Case {
    std::int64_t C, D, H, W, Co, k[3], s[3], p[3], d[3];
  };
  const Case cases[] = {
      {3, 4, 7, 21, 7, {3, 3, 3}, {1, 1, 1}, {1, 1, 1}, {1, 1, 1}},
      {2, 5, 6, 9, 13, {3, 3, 3}, {2, 2, 2}, {1, 1, 1}, {1, 1, 1}},
      {4, 3, 5, 37, 50, {1, 3, 5}, {1, 1, 3}, {0, 1, 2}, {1, 1, 2}},
      {70, 2, 4, 18, 9, {3, 3, 3}, {1, 1, 1}, {1, 1, 1}, {1, 1, 1}},  // 70·27 rows of K: several channel blocks
      {5, 3, 4, 5, 1, {2, 2, 2}, {1, 1, 1}, {0, 0, 0}, {2, 1, 1}},
      {6, 3, 5, 16, 32, {1, 1, 1}, {1, 1, 1}, {0, 0, 0}, {1, 1, 1}},
      // two tiles per AVX-512 call: rows of 2 segments (16 + 4 voxels, stride 2) and 32 channels
      // (the tail blocks 4 + 4 paired); rows of 16 + 16 + 1 voxels, 21 rows (a task of an odd
      // number of segments), 20 channels (6 + 6, 4 + 4)
      {8, 3, 5, 40, 32, {3, 3, 3}, {1, 2, 2}, {1, 1, 1}, {1, 1, 1}},
      {5, 3, 7, 33, 20, {3, 3, 3}, {1, 1, 1}, {1, 1, 1}, {1, 1, 1}},
  };
  std::uint32_t st = 4242;
  auto rnd = [&] {
    st = st * 1664525u + 1013904223u;
    return float(st >> 8) / float(1 << 24) - 0.5f;
  };
  for (const Case& c : cases) {
    const bhsd::ConvGeom g = geom_of(c);
    std::vector<float> x(std::size_t(c.C * c.D * c.H * c.W)), w(std::size_t(c.Co * g.K())), bias(std::size_t(c.Co));
    for (auto& v : x) v = rnd();
    for (auto& v : w) v = rnd();
    for (auto& v : bias) v = rnd();
    const std::size_t no = std::size_t(c.Co * g.Do * g.Ho * g.Wo);
    double worst = 0;
    std::vector<float> got(no, 9.0f);
    const std::vector<float> wp = bhsd::pack_conv_weights(w.data(), c.Co, g.K());
    bhsd::conv3d_forward(g, x.data(), wp.data(), bias.data(), got.data(), bhsd::Act::relu, 0.0f, pool);
    for (std::int64_t co = 0; co < c.Co; ++co)
      for (std::int64_t od = 0; od < g.Do; ++od)
        for (std::int64_t oh = 0; oh < g.Ho; ++oh)
          for (std::int64_t ow = 0; ow < g.Wo; ++ow) {
            const double acc = bias[std::size_t(co)] + conv_sum(g, x.data(), w.data(), co, od, oh, ow, as_double);
            const double ref = acc > 0 ? acc : 0;
            worst = std::max(worst, std::fabs(ref - got[std::size_t(((co * g.Do + od) * g.Ho + oh) * g.Wo + ow)]));
          }
    CHECK(worst < 1e-4);
  }
#ifdef BHSD_NEON
  CHECK(bhsd::conv_detail::pick_kernel() == bhsd::conv_detail::kernel_neon);
  double worst = 0;
  for (std::int64_t K = 0; K <= 40; ++K) {
    std::vector<float> a(std::size_t(K * bhsd::MR)), b(std::size_t(K * bhsd::NR)), c0(bhsd::MR * bhsd::NR);
    for (auto& v : a) v = rnd();
    for (auto& v : b) v = rnd();
    for (auto& v : c0) v = rnd();
    std::vector<float> c1 = c0;
    bhsd::conv_detail::kernel_generic(a.data(), b.data(), K, c0.data());
    bhsd::conv_detail::kernel_neon(a.data(), b.data(), K, c1.data());
    for (std::size_t i = 0; i < c0.size(); ++i) worst = std::max(worst, double(std::fabs(c0[i] - c1[i])));
  }
  CHECK(worst < 1e-5);
#endif
}

// The direct convolution on AMX tiles (a bf16 call where the processor has AMX-BF16), its panel path
// and its implicit one (conv_amx.hpp): against a sum
// in double of the input and weights rounded to bf16 as the tiles take them (the products are exact
// and the sums fp32: within 1e-5 of the output's scale), and against the exact fp32 answer within the
// stated 2e-2 of scale (and not equal to it: the tiles ran). Every packer the path uses (row windows
// at stride 1 and 2, per-tap gathers at stride 3, flat segments of rows shorter than 16), several
// blocks of the reduction (K past 512), output channels past a multiple of 16 (17, 40) and exactly
// 16, rows of 1–3 segments (tasks of odd counts) and of 10 (a task per 8), 1×1×1, split output channels (a volume of
// fewer tasks than threads), each activation, bias or none. An fp32 call never takes this path.
static double amx_worst = 0;
static void test_conv_amx(bhsd::ThreadPool& pool) {
  if (!bhsd::amx_available()) return;
  struct Case {
    std::int64_t C, D, H, W, Co, k[3], s[3], p[3], d[3];
    int act;
    bool bias;
  };
  const Case cases[] = {
      {16, 4, 6, 40, 32, {3, 3, 3}, {1, 1, 1}, {1, 1, 1}, {1, 1, 1}, 2, true},   // row windows, 3 segments a row
      {24, 3, 5, 37, 17, {3, 3, 3}, {1, 2, 2}, {1, 1, 1}, {1, 1, 1}, 1, true},   // stride-2 windows, Co 16 + 1
      {40, 3, 4, 50, 40, {3, 3, 3}, {1, 1, 3}, {1, 1, 1}, {1, 1, 1}, 0, false},  // stride 3: gathers; 2 blocks
      {32, 5, 6, 7, 16, {3, 3, 3}, {1, 1, 1}, {1, 1, 1}, {1, 1, 1}, 2, true},    // flat segments (Wo 7)
      {48, 4, 3, 2, 40, {3, 3, 3}, {1, 1, 1}, {1, 1, 1}, {1, 1, 1}, 1, false},   // flat, 3 blocks, split outputs
      {20, 4, 9, 33, 24, {1, 3, 3}, {1, 1, 1}, {0, 1, 1}, {1, 1, 1}, 2, true},   // 1×3×3
      {64, 3, 5, 21, 48, {1, 1, 1}, {1, 1, 1}, {0, 0, 0}, {1, 1, 1}, 0, true},   // 1×1×1
      {8, 4, 7, 30, 20, {3, 3, 3}, {1, 1, 1}, {2, 2, 2}, {2, 2, 2}, 2, true},    // dilated windows
      {320, 2, 2, 2, 32, {3, 3, 3}, {1, 1, 1}, {1, 1, 1}, {1, 1, 1}, 2, true},   // the deepest stage: 17 blocks
      {16, 6, 8, 16, 32, {2, 2, 2}, {2, 2, 2}, {0, 0, 0}, {1, 1, 1}, 2, false},  // an even kernel, stride 2
      {16, 3, 4, 150, 16, {3, 3, 3}, {1, 1, 1}, {1, 1, 1}, {1, 1, 1}, 1, true},  // 10 segments a row: 8 + 2
      {2, 2, 3, 90, 16, {1, 1, 35}, {1, 1, 2}, {0, 0, 17}, {1, 1, 1}, 0, true},  // 35 wide, stride 2: gathers
      // the implicit path (input converted once, taps read in place): partial chunks of 32
      // channels (40, 16, 20), several (96), strides 2 along D, H and W, 1×3×3 and 1×1×1, output
      // channels as one block, an odd count of blocks (48) and a partial one (17, 40); rows of one
      // partial segment (Wo 8, 12: pairs across rows, one inside the volume and one outside at a
      // border), of three (37), of 16 (whole, no activation: sums stored straight to the output
      // from the bias); more padding than the kernel reaches (rows reading nothing inside)
      {40, 5, 6, 37, 17, {3, 3, 3}, {1, 1, 1}, {1, 1, 1}, {1, 1, 1}, 2, true},
      {96, 4, 5, 32, 48, {3, 3, 3}, {1, 1, 1}, {1, 1, 1}, {1, 1, 1}, 0, true},
      {32, 6, 9, 33, 32, {3, 3, 3}, {2, 2, 2}, {1, 1, 1}, {1, 1, 1}, 0, true},
      {20, 3, 8, 24, 40, {3, 3, 3}, {1, 2, 2}, {1, 1, 1}, {1, 1, 1}, 1, false},
      {64, 2, 7, 12, 16, {1, 3, 3}, {1, 1, 1}, {0, 1, 1}, {1, 1, 1}, 0, false},
      {16, 3, 5, 8, 32, {3, 3, 3}, {1, 1, 1}, {1, 1, 1}, {1, 1, 1}, 2, true},
      {33, 2, 3, 64, 32, {1, 1, 1}, {1, 1, 1}, {0, 0, 0}, {1, 1, 1}, 0, true},
      {32, 3, 4, 20, 16, {1, 1, 3}, {1, 1, 1}, {2, 2, 1}, {1, 1, 1}, 0, true},
  };
  Uniform rnd{31337u};
  auto b16 = [](float v) {
    const std::uint32_t u = std::uint32_t(bhsd::wino_detail::bf16_of(v)) << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return double(f);
  };
  for (const Case& c : cases) {
    const bhsd::ConvGeom g = geom_of(c);
    ConvOperands ops = conv_operands(g, rnd);
    std::vector<float>&x = ops.x, &w = ops.w, &bias = ops.bias;
    const bhsd::Act act = bhsd::Act(c.act);
    const float alpha = 0.01f;
    const float* bp = c.bias ? bias.data() : nullptr;
    const std::size_t no = std::size_t(c.Co * g.Do * g.Ho * g.Wo);
    std::vector<double> exact(no), rounded(no);
    double scale = 0;
    auto activ = [&](double v) {
      return act == bhsd::Act::relu ? (v > 0 ? v : 0) : act == bhsd::Act::leaky ? (v > 0 ? v : v * alpha) : v;
    };
    for (std::int64_t co = 0; co < c.Co; ++co)
      for (std::int64_t od = 0; od < g.Do; ++od)
        for (std::int64_t oh = 0; oh < g.Ho; ++oh)
          for (std::int64_t ow = 0; ow < g.Wo; ++ow) {
            const double b0 = bp ? bp[co] : 0.0;
            const double e = b0 + conv_sum(g, x.data(), w.data(), co, od, oh, ow, as_double),
                         r = b0 + conv_sum(g, x.data(), w.data(), co, od, oh, ow, b16);
            const std::size_t i = std::size_t(((co * g.Do + od) * g.Ho + oh) * g.Wo + ow);
            exact[i] = activ(e), rounded[i] = activ(r);
            scale = std::max(scale, std::fabs(exact[i]));
          }
    auto rel = [&](const std::vector<double>& ref, const std::vector<float>& got) {
      double worst = 0;
      for (std::size_t i = 0; i < no; ++i) worst = std::max(worst, std::fabs(ref[i] - double(got[i])));
      return std::isfinite(worst) ? worst / std::max(scale, 1e-30) : 1e30;
    };
    const std::vector<float> wp = bhsd::pack_conv_weights(w.data(), c.Co, g.K());
    std::vector<float> got(no, 9.0f), fp32(no, 7.0f);
    const bool implicit = c.d[0] == 1 && c.d[1] == 1 && c.d[2] == 1 && c.s[2] <= 2 && c.C >= 16 && g.Wo >= 8;
    CHECK(bhsd::amx_detail::implicit_applies(g) == implicit);
    {
      bhsd::PrecisionScope ps(bhsd::Precision::bf16);
      CHECK(bhsd::amx_detail::applies(g));
      CHECK(bhsd::conv3d_forward_amx(g, x.data(), wp.data(), bp, got.data(), act, alpha, pool));
    }
    bhsd::conv3d_forward(g, x.data(), wp.data(), bp, fp32.data(), act, alpha, pool, false);
    const double er = rel(rounded, got), ee = rel(exact, got);
    amx_worst = std::max(amx_worst, ee);
    CHECK(er < 1e-5);
    CHECK(ee < 2e-2 && ee > 1e-6);
    CHECK(rel(exact, fp32) < 1e-5);
    if (implicit) {
      // the ring of converted planes made as small as it goes (one plane's kernel depth a pass):
      // the same sums, every plane converted once and read from its slot
      std::vector<float> small(no, 5.0f);
      const std::size_t keep = bhsd::amx_detail::ring_bytes();
      bhsd::amx_detail::ring_bytes() = 1;
      {
        bhsd::PrecisionScope ps(bhsd::Precision::bf16);
        CHECK(
            bhsd::amx_detail::conv3d_forward_amx_implicit(g, x.data(), wp.data(), bp, small.data(), act, alpha, pool));
      }
      bhsd::amx_detail::ring_bytes() = keep;
      CHECK(rel(rounded, small) < 1e-5);
    }
  }
  // fp32 calls, too few or too many output channels, too short a reduction: not this path
  const bhsd::ConvGeom g{16, 4, 4, 4, 16, 3, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1, 4, 4, 4};
  CHECK(!bhsd::amx_detail::applies(g));
  bhsd::PrecisionScope ps(bhsd::Precision::bf16);
  const bhsd::ConvGeom few{16, 4, 4, 4, 15, 3, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1, 4, 4, 4};
  const bhsd::ConvGeom shortk{31, 4, 4, 4, 16, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 4, 4, 4};
  const bhsd::ConvGeom wide{16, 4, 4, 4, 2049, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 4, 4, 4};
  CHECK(bhsd::amx_detail::applies(g) && !bhsd::amx_detail::applies(few) && !bhsd::amx_detail::applies(shortk) &&
        !bhsd::amx_detail::applies(wide));
}

// The loops shared with the CUDA kernels (host_device.hpp), run here as the kernels run them: the
// distance transform's envelope on the GPU's interleaved scratch (v, z and the samples `lines`
// apart, the output `stride` apart) against brute force, and pool_voxel against a plain loop
// (NaN propagating through max; averages over the samples inside or the clipped padded window).
static void test_host_device_sweeps() {
  std::uint64_t seed = 5;
  auto rnd = [&] {
    seed = seed * 6364136223846793005ULL + 1442695040888963407ULL;
    return unsigned(seed >> 33);
  };
  int bad = 0;
  const int shapes[][3] = {{1, 1, 1}, {7, 1, 1}, {1, 6, 5}, {6, 5, 4}, {11, 9, 7}};
  for (auto& sh : shapes)
    for (int density : {0, 3, 40}) {
      const std::int64_t w = sh[0], h = sh[1], d = sh[2];
      const double sx = 0.49, sy = 0.7, sz = 5.0;
      std::vector<std::uint8_t> f(std::size_t(w * h * d));
      for (auto& v : f) v = int(rnd() % 100) < density;
      std::vector<double> out(f.size());
      for (std::int64_t r = 0; r < h * d; ++r) bhsd::hd::edt_row(f.data() + r * w, out.data() + r * w, w, sx);
      auto pass = [&](std::int64_t n, std::int64_t stride, std::int64_t groups, std::int64_t glen, std::int64_t gstride,
                      double s) {
        const std::int64_t lines = groups * glen;
        std::vector<double> fs(std::size_t(n * lines)), zs(std::size_t((n + 1) * lines));
        std::vector<std::int64_t> vs(std::size_t(n * lines));
        for (std::int64_t l = 0; l < lines; ++l) {  // one GPU thread each
          double* base = out.data() + (l / glen) * gstride + (l % glen);
          bool any = false;
          for (std::int64_t i = 0; i < n; ++i)
            fs[std::size_t(i * lines + l)] = base[i * stride], any |= base[i * stride] != INFINITY;
          if (any)
            bhsd::hd::edt_envelope(fs.data() + l, lines, base, stride, n, s, vs.data() + l, zs.data() + l, lines);
        }
      };
      if (h > 1) pass(h, w, d, w, w * h, sy);
      if (d > 1) pass(d, w * h, 1, w * h, 0, sz);
      for (std::int64_t z = 0; z < d; ++z)
        for (std::int64_t y = 0; y < h; ++y)
          for (std::int64_t x = 0; x < w; ++x) {
            double best = INFINITY;
            for (std::int64_t k = 0; k < d; ++k)
              for (std::int64_t j = 0; j < h; ++j)
                for (std::int64_t i = 0; i < w; ++i)
                  if (f[std::size_t((k * h + j) * w + i)]) {
                    const double dx = double(x - i) * sx, dy = double(y - j) * sy, dz = double(z - k) * sz;
                    best = std::min(best, dx * dx + dy * dy + dz * dz);
                  }
            const double g = out[std::size_t((z * h + y) * w + x)];
            if (!(g == best || std::fabs(g - best) <= 1e-9 * best)) ++bad;
          }
    }
  CHECK(bad == 0);

  int pbad = 0, nan_seen = 0;
  for (int c = 0; c < 24; ++c) {
    bhsd::hd::PoolGeom g{{3 + c % 4, 4 + c % 5, 5 + c % 6},
                         {1 + c % 3, 2, 1 + c % 2},
                         {1 + c % 2, 1, 2},
                         {1, 1 + (c / 4) % 2, 1},
                         {c % 2, 1, 0}};
    std::vector<float> x(std::size_t(g.in[0] * g.in[1] * g.in[2]));
    for (auto& v : x) v = float(int(rnd() % 2001) - 1000) / 100.0f;
    const std::int64_t o[3] = {1 + c % 2, 1 + c % 3, 2};
    if (c % 5 == 0) {  // a NaN at the window's last tap inside the input
      std::int64_t at = -1;
      for (std::int64_t a = 0; a < g.k[0]; ++a)
        for (std::int64_t b = 0; b < g.k[1]; ++b)
          for (std::int64_t e = 0; e < g.k[2]; ++e) {
            const std::int64_t i[3] = {o[0] * g.s[0] - g.p[0] + a * g.d[0], o[1] * g.s[1] - g.p[1] + b * g.d[1],
                                       o[2] * g.s[2] - g.p[2] + e * g.d[2]};
            if (i[0] >= 0 && i[1] >= 0 && i[2] >= 0 && i[0] < g.in[0] && i[1] < g.in[1] && i[2] < g.in[2])
              at = (i[0] * g.in[1] + i[1]) * g.in[2] + i[2];
          }
      if (at >= 0) x[std::size_t(at)] = NAN;
    }
    for (int mode = 0; mode < 3; ++mode) {  // max, mean inside, mean over the padded window
      const float got = bhsd::hd::pool_voxel(x.data(), g, o[0], o[1], o[2], mode == 0, mode == 2);
      double m = -INFINITY, sum = 0;
      std::int64_t inside = 0, window = 1;
      bool nan = false;
      for (int ax = 0; ax < 3; ++ax) {  // window positions within [−p, in + p)
        std::int64_t cnt = 0;
        for (std::int64_t t = 0; t < g.k[ax]; ++t) cnt += o[ax] * g.s[ax] - g.p[ax] + t * g.d[ax] < g.in[ax] + g.p[ax];
        window *= cnt;
      }
      for (std::int64_t a = 0; a < g.k[0]; ++a)
        for (std::int64_t b = 0; b < g.k[1]; ++b)
          for (std::int64_t e = 0; e < g.k[2]; ++e) {
            const std::int64_t i[3] = {o[0] * g.s[0] - g.p[0] + a * g.d[0], o[1] * g.s[1] - g.p[1] + b * g.d[1],
                                       o[2] * g.s[2] - g.p[2] + e * g.d[2]};
            if (i[0] < 0 || i[1] < 0 || i[2] < 0 || i[0] >= g.in[0] || i[1] >= g.in[1] || i[2] >= g.in[2]) continue;
            const double v = x[std::size_t((i[0] * g.in[1] + i[1]) * g.in[2] + i[2])];
            nan |= v != v, m = std::max(m, v), sum += v, ++inside;
          }
      const double want = mode == 0                           ? (nan ? NAN : m)
                          : (mode == 1 ? inside : window) > 0 ? sum / double(mode == 1 ? inside : window)
                                                              : 0.0;
      if (want != want)
        nan_seen += got != got;
      else if (!(std::fabs(double(got) - want) <= 1e-6 * std::max(1.0, std::fabs(want))))
        ++pbad;
      if ((want != want) != (got != got)) ++pbad;
    }
  }
  CHECK(pbad == 0);
  CHECK(nan_seen > 0);
}

// A convolution (any strides, paddings, kernel) + bias + activation in double at every output, and
// a path's worst error relative to the output's scale (max |reference|): the Winograd tests' yardstick.
struct ConvReference {
  std::vector<double> ref;
  double scale = 0;
  ConvReference(const bhsd::ConvGeom& g, const ConvOperands& ops, const float* bias, bhsd::Act act, float alpha)
      : ref(std::size_t(g.Co * g.Do * g.Ho * g.Wo)) {
    for (std::int64_t co = 0; co < g.Co; ++co)
      for (std::int64_t od = 0; od < g.Do; ++od)
        for (std::int64_t oh = 0; oh < g.Ho; ++oh)
          for (std::int64_t ow = 0; ow < g.Wo; ++ow) {
            double acc = (bias ? bias[co] : 0.0) + conv_sum(g, ops.x.data(), ops.w.data(), co, od, oh, ow, as_double);
            if (act == bhsd::Act::relu) acc = acc > 0 ? acc : 0;
            if (act == bhsd::Act::leaky) acc = acc > 0 ? acc : acc * alpha;
            ref[std::size_t(((co * g.Do + od) * g.Ho + oh) * g.Wo + ow)] = acc;
            scale = std::max(scale, std::fabs(acc));
          }
  }
  double rel(const std::vector<float>& got) const {
    double worst = 0;
    for (std::size_t i = 0; i < ref.size(); ++i) worst = std::max(worst, std::fabs(ref[i] - double(got[i])));
    return std::isfinite(worst) ? worst / std::max(scale, 1e-30) : 1e30;
  }
};

// Winograd F(2×2×2, 3×3×3) and, for 1×3×3 kernels, F(2×2, 3×3) against a plain loop in double and
// against the direct path: odd and even extents 1–9 along every axis (tiles past the output's end
// dropped), rows of 16 tiles that read the input in place (W = 96) and rows whose groups of 16
// tiles span several tile rows, paddings 0–2,
// bias or none, each activation, channel counts around the micro-kernel's blocks of 6 and 12. The
// error is measured relative to the output's scale (max |reference|); the brief asks ≤ 1e-4, F(2,3)
// gives about 1e-6. Then conv3d_forward's plan: the first call of a shape decides, later calls follow.
static double winograd_worst = 0, winograd_f4_worst = 0, winograd_bf16_worst = 0, winograd_tiles_worst = -1,
              winograd_f444_worst = -1;
static void test_conv_winograd(bhsd::ThreadPool& pool) {
  struct Case {
    std::int64_t C, Co, D, H, W, p[3];
    int act;
    bool bias;
    std::int64_t kd = 3;
  };
  std::vector<Case> cases;
  for (std::int64_t i = 0; i < 9; ++i)  // every extent 1…9 on every axis, in 9 shapes
    cases.push_back(
        {16 + (i % 3), 16 + 7 * (i % 4), 1 + i, 1 + (i * 4) % 9, 1 + (i * 7) % 9, {1, 1, 1}, int(i % 3), i % 4 != 3});
  cases.push_back({20, 30, 3, 4, 96, {1, 1, 1}, 2, true});  // whole rows of 16 tiles, read in place
  cases.push_back({16, 17, 4, 5, 66, {1, 1, 1}, 1, true});  // 33 tiles a row: groups across rows
  cases.push_back({33, 45, 5, 6, 7, {0, 1, 2}, 0, true});   // paddings 0, 1, 2; 45 = 6·6 + 5 + 4 outputs
  cases.push_back({24, 64, 2, 9, 40, {2, 0, 1}, 2, false});
  // 1×3×3 kernels (F(2×2, 3×3) per plane): nnU-Net's anisotropic stages, padded along D or not
  cases.push_back({16, 20, 5, 7, 9, {0, 1, 1}, 0, true, 1});
  cases.push_back({17, 16, 1, 3, 5, {0, 1, 1}, 1, false, 1});
  cases.push_back({24, 32, 3, 6, 66, {1, 1, 1}, 2, true, 1});
  cases.push_back({20, 18, 2, 4, 96, {0, 1, 1}, 0, false, 1});
  // and the F(4×4, 3×3) tiles AVX-512 gives them: a row of exactly 16 tiles (stored whole) over a
  // last tile row cut short, 33 tiles a row (groups across rows, a last tile of 2 columns), rows
  // shorter than one load of 16, padded planes of zeros, no padding at all
  cases.push_back({24, 32, 3, 9, 64, {0, 1, 1}, 2, true, 1});
  cases.push_back({16, 20, 2, 8, 130, {0, 1, 1}, 1, false, 1});
  cases.push_back({17, 16, 2, 13, 15, {1, 1, 1}, 0, true, 1});
  cases.push_back({20, 18, 1, 6, 200, {0, 0, 0}, 2, true, 1});
  // F(2×4×4, 3×3×3) (3×3×3 where AVX-512 runs): a row of exactly 16 tiles over an odd depth (the
  // last tile's second plane dropped), 33 tiles a row, rows shorter than a load, no padding, and
  // channels past 256×256 (F(2×2×2) there)
  cases.push_back({24, 32, 5, 9, 64, {1, 1, 1}, 2, true});
  cases.push_back({16, 20, 4, 5, 130, {1, 1, 1}, 1, false});
  cases.push_back({17, 16, 3, 13, 15, {1, 1, 1}, 0, true});
  cases.push_back({20, 18, 6, 8, 70, {0, 0, 0}, 2, true});
  cases.push_back({300, 240, 2, 3, 5, {1, 1, 1}, 1, true});
  // deep enough for F(4×4×4, 3×3×3) tiles (the plan's kWinoDeep): a depth of 9 (the last tile's
  // three planes past the end dropped) with whole rows of 16 tiles, and rows of 5 tiles, no bias
  cases.push_back({16, 24, 9, 7, 64, {1, 1, 1}, 2, true});
  cases.push_back({12, 8, 10, 12, 20, {1, 1, 1}, 0, false});
  // 8 channels (MONAI SegResNet's first stage), both kernels, and 8 → 12 (two short output blocks)
  cases.push_back({8, 8, 6, 10, 70, {1, 1, 1}, 2, true});
  cases.push_back({8, 12, 3, 9, 33, {1, 1, 1}, 1, false});
  cases.push_back({9, 8, 2, 8, 64, {0, 1, 1}, 0, true, 1});
  Uniform rnd{9001u};
  for (const Case& c : cases) {
    bhsd::ConvGeom g{c.C, c.D, c.H, c.W, c.Co, c.kd, 3, 3, 1, 1, 1, 1, 1, 1, c.p[0], c.p[1], c.p[2], 0, 0, 0};
    g.Do = bhsd::conv_out(c.D, c.kd, 1, 1, c.p[0], c.p[0]);
    g.Ho = bhsd::conv_out(c.H, 3, 1, 1, c.p[1], c.p[1]);
    g.Wo = bhsd::conv_out(c.W, 3, 1, 1, c.p[2], c.p[2]);
    if (g.Do < 1 || g.Ho < 1 || g.Wo < 1) continue;
    ConvOperands ops = conv_operands(g, rnd);
    std::vector<float>&x = ops.x, &w = ops.w, &bias = ops.bias;
    const bhsd::Act act = bhsd::Act(c.act);
    const float alpha = 0.01f;
    const float* bp = c.bias ? bias.data() : nullptr;
    const std::size_t no = std::size_t(c.Co * g.Do * g.Ho * g.Wo);
    const ConvReference cr(g, ops, bp, act, alpha);
    const std::vector<double>& ref = cr.ref;
    const double scale = cr.scale;
    auto rel = [&](const std::vector<float>& got) { return cr.rel(got); };
    const std::vector<float> wp = bhsd::pack_conv_weights(w.data(), c.Co, g.K());
    std::vector<float> wino(no, 9.0f), direct(no, 7.0f), planned(no, 5.0f), again(no, 3.0f);
    const bool ran = bhsd::conv3d_forward_winograd(g, x.data(), wp.data(), bp, wino.data(), act, alpha, pool);
    CHECK(ran == bhsd::winograd_applies(g));
    bhsd::conv3d_forward(g, x.data(), wp.data(), bp, direct.data(), act, alpha, pool, false);
    CHECK(rel(direct) < 1e-5);
    if (ran) {
      // the other tiles (F(2×…) where F(4×4) tiles are the default, and the reverse where AVX-512
      // runs but the environment keeps F(2×…)): the same answer
      const int m0 = bhsd::wino_detail::tile_m(g);
      bhsd::wino_detail::f4_override() = m0 == 4 ? 0 : 1;
      std::vector<float> other(no, 4.0f);
      CHECK(bhsd::conv3d_forward_winograd(g, x.data(), wp.data(), bp, other.data(), act, alpha, pool));
      const double eo = rel(other);
      (bhsd::wino_detail::tile_m(g) == 4 ? winograd_f4_worst : winograd_worst) =
          std::max(bhsd::wino_detail::tile_m(g) == 4 ? winograd_f4_worst : winograd_worst, eo);
      CHECK(eo < 1e-5);
      bhsd::wino_detail::f4_override() = -1;
      if (c.kd == 3 && m0 == 4) {
        // F(4×4×4) tiles (the plan's kWinoDeep, timed where deep_applies), on every 3×3×3 case
        const bhsd::wino_detail::DeepTilesScope deep(true);
        CHECK(bhsd::wino_detail::points(g) == 216 && bhsd::wino_detail::tile_dz(g) == 4);
        std::vector<float> d4(no, 4.0f);
        CHECK(bhsd::conv3d_forward_winograd(g, x.data(), wp.data(), bp, d4.data(), act, alpha, pool));
        const double ed = rel(d4);
        winograd_f444_worst = std::max(winograd_f444_worst, ed);
        CHECK(ed < 5e-5);
      }
    }
    if (ran && bhsd::wino_detail::bf16_available()) {
      // bf16 products (setCpuPrecision("bf16")): F(2×…) tiles even where F(4×4) ones are asked
      // for (their transforms amplify bf16's rounding to ~9 % of scale), within the stated 2e-2 of
      // the output's scale, and not the fp32 answer (the bf16 kernel ran); a training call holding
      // the precise tiles (preciseConvolutions) keeps fp32 even in a bf16 scope
      bhsd::wino_detail::f4_override() = 1;
      std::vector<float> half(no, 6.0f), held(no, 2.0f);
      {
        bhsd::PrecisionScope ps(bhsd::Precision::bf16);
        CHECK(bhsd::wino_detail::tile_m(g) == 2 && bhsd::wino_detail::use_bf16());
        CHECK(bhsd::conv3d_forward_winograd(g, x.data(), wp.data(), bp, half.data(), act, alpha, pool));
        ++bhsd::wino_detail::precise_tiles();
        CHECK(!bhsd::wino_detail::use_bf16());
        CHECK(bhsd::conv3d_forward_winograd(g, x.data(), wp.data(), bp, held.data(), act, alpha, pool));
        --bhsd::wino_detail::precise_tiles();
      }
      if (bhsd::wino_detail::use_tiles(g, true)) {
        // the products on AMX tiles: the same bf16 products as vdpbf16ps's, summed in another order
        std::vector<float> dp(no, 1.0f);
        bhsd::wino_detail::tiles_off() = true;
        {
          bhsd::PrecisionScope ps(bhsd::Precision::bf16);
          CHECK(!bhsd::wino_detail::use_tiles(g, true));
          CHECK(bhsd::conv3d_forward_winograd(g, x.data(), wp.data(), bp, dp.data(), act, alpha, pool));
        }
        bhsd::wino_detail::tiles_off() = false;
        double dd = 0;
        for (std::size_t i = 0; i < no; ++i) dd = std::max(dd, double(std::fabs(dp[i] - half[i])));
        winograd_tiles_worst = std::max(winograd_tiles_worst, dd / std::max(scale, 1e-30));
        CHECK(dd / std::max(scale, 1e-30) < 1e-5);
      }
      const double eb = rel(half);
      winograd_bf16_worst = std::max(winograd_bf16_worst, eb);
      CHECK(eb < 2e-2);
      CHECK(eb > 1e-5);
      CHECK(rel(held) < 1e-5);
      bhsd::wino_detail::f4_override() = -1;
    }
    if (ran) {
      const double e = rel(wino);
      (bhsd::wino_detail::tile_m(g) == 4 ? winograd_f4_worst : winograd_worst) =
          std::max(bhsd::wino_detail::tile_m(g) == 4 ? winograd_f4_worst : winograd_worst, e);
      CHECK(e < 1e-5);
      double dd = 0;  // and the direct path's answer, to the same tolerance
      for (std::size_t i = 0; i < no; ++i) dd = std::max(dd, double(std::fabs(wino[i] - direct[i])));
      CHECK(dd / std::max(scale, 1e-30) < 1e-5);
      // the weights negated in place (same address, as training changes them): the cached
      // transform must not be used; without an activation the answer is 2·bias − the reference
      if (act == bhsd::Act::none) {
        std::vector<float> wn(w.size()), neg(no, 1.0f);
        for (std::size_t i = 0; i < w.size(); ++i) wn[i] = -w[i];
        std::vector<float> wp2 = wp;
        CHECK(
            bhsd::conv3d_forward_winograd(g, x.data(), wp2.data(), bp, neg.data(), act, alpha, pool));  // cached at wp2
        bhsd::pack_conv_weights_into(wn.data(), c.Co, g.K(), wp2.data());
        CHECK(bhsd::conv3d_forward_winograd(g, x.data(), wp2.data(), bp, neg.data(), act, alpha, pool));
        double en = 0;
        for (std::size_t i = 0; i < no; ++i) {
          const double b0 = bp ? bp[std::size_t(i / std::size_t(g.Do * g.Ho * g.Wo))] : 0.0;
          en = std::max(en, std::fabs(2 * b0 - ref[i] - double(neg[i])));
        }
        CHECK(en / std::max(scale, 1e-30) < 1e-5);
        bhsd::pack_conv_weights_into(w.data(), c.Co, g.K(), wp2.data());  // and back: found again, same answer
        CHECK(bhsd::conv3d_forward_winograd(g, x.data(), wp2.data(), bp, neg.data(), act, alpha, pool));
        CHECK(std::memcmp(neg.data(), wino.data(), no * sizeof(float)) == 0);
      }
    }
    // the plan: the first call decides (when it applies), the second follows, both correct
    bhsd::conv3d_forward(g, x.data(), wp.data(), bp, planned.data(), act, alpha, pool);
    const int decided = bhsd::winograd_planned(g, pool);
    const double tol = decided == 4 ? 5e-5 : 1e-5;  // F(4×4×4)'s rounding (winograd_f444_worst)
    CHECK(rel(planned) < tol);
    const char* env = std::getenv("BHSD_WINOGRAD");
    const bool forced = env && (std::string(env) == "0" || std::string(env) == "1");
    CHECK(ran && !forced
              ? decided == 0 || decided == 1 || decided == 3 || (decided == 4 && bhsd::wino_detail::deep_applies(g))
              : decided == -1);  // forced or not served: no plan kept
    bhsd::conv3d_forward(g, x.data(), wp.data(), bp, again.data(), act, alpha, pool);
    CHECK(rel(again) < tol);
    if (ran && !forced && bhsd::wino_detail::bf16_available()) {
      // a bf16 call's plan (a key of its own): direct, Winograd in bf16 or Winograd in fp32, each
      // call's answer as the choice's precision gives it
      bhsd::PrecisionScope ps(bhsd::Precision::bf16);
      for (int call = 0; call < 2; ++call) {
        std::vector<float> b16(no, 8.0f);
        bhsd::conv3d_forward(g, x.data(), wp.data(), bp, b16.data(), act, alpha, pool);
        const int chose = bhsd::winograd_planned(g, pool);
        // (5: F(4×4×4) tiles in fp32, where an fp32 call's plan would time them)
        CHECK((chose >= 0 && chose <= 2) || (chose == 5 && bhsd::wino_detail::deep_applies_fp32(g)));
        // (the direct path of a bf16 call runs on AMX tiles where the processor has them)
        CHECK(rel(b16) < (chose == 1 || (chose == 0 && bhsd::amx_available()) ? 2e-2 : chose == 5 ? 5e-5 : 1e-5));
      }
    }
  }
  // not served: a stride, a dilation, a 3×3×1 kernel, too few channels
  const bhsd::ConvGeom no1{16, 4, 4, 4, 16, 3, 3, 3, 2, 2, 1, 1, 1, 1, 1, 1, 1, 2, 2, 4};
  const bhsd::ConvGeom no2{16, 6, 6, 6, 16, 3, 3, 3, 1, 1, 1, 2, 2, 2, 2, 2, 2, 6, 6, 6};
  const bhsd::ConvGeom no3{16, 4, 4, 4, 16, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 4, 4, 4};
  const bhsd::ConvGeom no4{7, 4, 4, 4, 16, 3, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1, 4, 4, 4};
  const bhsd::ConvGeom no5{16, 4, 4, 4, 7, 3, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1, 4, 4, 4};
  CHECK(!bhsd::winograd_applies(no1) && !bhsd::winograd_applies(no2) && !bhsd::winograd_applies(no3) &&
        !bhsd::winograd_applies(no4) && !bhsd::winograd_applies(no5));
}

// Winograd on the phases of a 1×2×2 or 2×2×2 stride (is_s2: tiles of 2×2×2 outputs, 100 or 125
// points) against a
// plain loop in double and against the direct path: odd and even extents (the last tile's second
// row, column or plane dropped), paddings 0–2 on each axis, whole rows of 16 tiles read at aligned
// addresses and not, groups across tile rows, rows shorter than a load, channel counts around the
// micro-kernel's blocks, bias or none, each activation; a bf16 call (vdpbf16ps) within 2e-2; a
// training call's precise tiles keep the direct path; then the plan for such a layer. The
// AVX-512 transforms where they run, else (BHSD_NO_AVX512) the AVX2 ones.
static double winograd_s2_worst = -1, winograd_s2_deep_worst = -1;
static void test_conv_winograd_s2(bhsd::ThreadPool& pool) {
  struct Case {
    std::int64_t C, Co, D, H, W, p[3];
    int act;
    bool bias;
    std::int64_t sd = 1;
  };
  const std::vector<Case> cases = {
      // 2×2×2: nnU-Net's stages 3 and 4 (8 and 4 output planes), odd depths, paddings 0–2 along D
      {16, 24, 16, 64, 128, {1, 1, 1}, 2, true, 2},
      {16, 20, 9, 18, 64, {1, 1, 1}, 1, true},  // 1×2×2, 9 planes: F(4, 3) along D's last tile cut short
      {20, 12, 9, 9, 13, {1, 1, 1}, 1, false, 2},
      {12, 17, 8, 6, 66, {0, 1, 1}, 0, true, 2},
      {24, 8, 7, 10, 5, {2, 1, 0}, 2, true, 2},
      {64, 20, 3, 4, 64, {1, 2, 2}, 1, true, 2},
      {16, 24, 5, 64, 128, {1, 1, 1}, 2, true},  // 32 tiles a row: two whole groups, rows aligned
      {16, 24, 4, 8, 64, {1, 1, 1}, 1, false},   // 16 tiles a row
      {17, 13, 3, 9, 13, {1, 1, 1}, 0, true},    // 4×5×7 outputs: partial groups across rows
      {20, 30, 2, 7, 66, {1, 1, 1}, 2, true},    // 17 tiles a row: a group across two rows
      {12, 8, 6, 10, 5, {0, 1, 1}, 1, true},     // rows shorter than a load, no padding along D
      {24, 12, 3, 11, 70, {2, 0, 2}, 0, false},  // paddings 2, 0, 2
      {33, 45, 1, 6, 9, {1, 2, 0}, 2, true},     // a single plane; 45 outputs (6·7 + 3)
      {8, 8, 9, 16, 130, {1, 1, 1}, 2, true},    // 8 channels, 33 tiles a row
      {64, 20, 2, 4, 64, {1, 1, 1}, 1, true},    // a short last block of outputs
  };
  Uniform rnd{4242u};
  for (const Case& c : cases) {
    bhsd::ConvGeom g{c.C, c.D, c.H, c.W, c.Co, 3, 3, 3, c.sd, 2, 2, 1, 1, 1, c.p[0], c.p[1], c.p[2], 0, 0, 0};
    g.Do = bhsd::conv_out(c.D, 3, c.sd, 1, c.p[0], c.p[0]);
    g.Ho = bhsd::conv_out(c.H, 3, 2, 1, c.p[1], c.p[1]);
    g.Wo = bhsd::conv_out(c.W, 3, 2, 1, c.p[2], c.p[2]);
    CHECK(g.Do >= 1 && g.Ho >= 1 && g.Wo >= 1);
    const ConvOperands ops = conv_operands(g, rnd);
    const bhsd::Act act = bhsd::Act(c.act);
    const float alpha = 0.01f;
    const float* bp = c.bias ? ops.bias.data() : nullptr;
    const std::size_t no = std::size_t(c.Co * g.Do * g.Ho * g.Wo), nx = ops.x.size();
    const ConvReference cr(g, ops, bp, act, alpha);
    auto rel = [&](const std::vector<float>& got) { return cr.rel(got); };
    // the input in a 64-byte-aligned block (the aligned row reads where rows allow them)
    auto xb = bhsd::Block::allocate((nx + 16) * sizeof(float));
    float* x = static_cast<float*>(xb->data());
    std::copy(ops.x.begin(), ops.x.end(), x);
    const std::vector<float> wp = bhsd::pack_conv_weights(ops.w.data(), c.Co, g.K());
    std::vector<float> wino(no, 9.0f), direct(no, 7.0f), planned(no, 5.0f), again(no, 3.0f);
#ifdef BHSD_X86
    const std::int64_t aligned0 = bhsd::wino_detail::aligned_row_groups().load();
#endif
    const bool ran = bhsd::conv3d_forward_winograd(g, x, wp.data(), bp, wino.data(), act, alpha, pool);
#ifdef BHSD_X86
    // whole rows of 16 tiles from a line's last column (padding 1, W a multiple of 16): the aligned reads
    // (AVX-512's transforms; AVX2's read quads, and no row of them lies across a line)
    if (ran && c.p[2] == 1 && c.W % 64 == 0 && bhsd::conv_detail::use_avx512())
      CHECK(bhsd::wino_detail::aligned_row_groups().load() > aligned0);
    const bhsd::CpuFeatures f = bhsd::cpu_features();
    CHECK(ran == (f.avx2 && f.fma && !std::getenv("BHSD_NO_AVX2")) && ran == bhsd::winograd_applies(g));
#else
    CHECK(!ran && !bhsd::winograd_applies(g));
#endif
    bhsd::conv3d_forward(g, x, wp.data(), bp, direct.data(), act, alpha, pool, false);
    CHECK(rel(direct) < 1e-5);
    if (ran) {
      CHECK(bhsd::wino_detail::points(g) == (c.sd == 2 ? 125 : 100) && bhsd::wino_detail::tile_m(g) == 2 &&
            bhsd::wino_detail::tile_dz(g) == 2);
      const double e = rel(wino);
      winograd_s2_worst = std::max(winograd_s2_worst, e);
      CHECK(e < 1e-5);
      // its own rounding, not the direct path's (else the training check below could not tell them apart)
      CHECK(std::memcmp(wino.data(), direct.data(), no * sizeof(float)) != 0);
      if (c.sd == 1) {
        // F(4, 3) along D (the plan's kWinoDeep where deep_applies): 150 points, 4×2×2 outputs a tile
        const char* f444 = std::getenv("BHSD_WINOGRAD_F444");  // "0": the plan never times them
        const bool f444_off = f444 && std::string(f444) == "0";
        CHECK(bhsd::wino_detail::deep_applies(g) == (!f444_off && g.Do >= 8 && g.C * g.Co <= 256 * 256));
        const bhsd::wino_detail::DeepTilesScope deep(true);
        CHECK(bhsd::wino_detail::points(g) == 150 && bhsd::wino_detail::tile_dz(g) == 4 &&
              bhsd::wino_detail::tile_m(g) == 2);
        std::vector<float> d4(no, 4.0f);
        CHECK(bhsd::conv3d_forward_winograd(g, x, wp.data(), bp, d4.data(), act, alpha, pool));
        const double ed = rel(d4);
        winograd_s2_deep_worst = std::max(winograd_s2_deep_worst, ed);
        CHECK(ed < 5e-5);
      } else {
        CHECK(!bhsd::wino_detail::deep_applies(g));
        const bhsd::wino_detail::DeepTilesScope deep(true);  // 2×2×2: no such tiles
        CHECK(bhsd::wino_detail::points(g) == 125);
      }
      // the input one float on (no row on a line): the same answer bit for bit
      std::copy(ops.x.begin(), ops.x.end(), x + 1);
      std::vector<float> off(no, 4.0f);
      CHECK(bhsd::conv3d_forward_winograd(g, x + 1, wp.data(), bp, off.data(), act, alpha, pool));
      CHECK(std::memcmp(off.data(), wino.data(), no * sizeof(float)) == 0);
      std::copy(ops.x.begin(), ops.x.end(), x);
      ++bhsd::wino_detail::precise_tiles();  // training: the direct path, as before this path
      std::vector<float> held(no, 2.0f);
      bhsd::conv3d_forward(g, x, wp.data(), bp, held.data(), act, alpha, pool);
      CHECK(std::memcmp(held.data(), direct.data(), no * sizeof(float)) == 0);
      --bhsd::wino_detail::precise_tiles();
      if (bhsd::wino_detail::bf16_available()) {
        std::vector<float> half(no, 6.0f);
        {
          bhsd::PrecisionScope ps(bhsd::Precision::bf16);
          CHECK(bhsd::wino_detail::use_bf16() && !bhsd::wino_detail::use_tiles(g, true));
          CHECK(bhsd::conv3d_forward_winograd(g, x, wp.data(), bp, half.data(), act, alpha, pool));
        }
        const double eb = rel(half);
        winograd_bf16_worst = std::max(winograd_bf16_worst, eb);
        CHECK(eb < 2e-2 && eb > 1e-5);
      }
    }
    // the plan: the first call decides, the second follows, both correct
    bhsd::conv3d_forward(g, x, wp.data(), bp, planned.data(), act, alpha, pool);
    const int decided = bhsd::winograd_planned(g, pool);
    CHECK(rel(planned) < 1e-5);
    const char* env = std::getenv("BHSD_WINOGRAD");
    const bool forced = env && (std::string(env) == "0" || std::string(env) == "1");
    CHECK(ran && !forced ? decided == 0 || decided == 1 || (decided == 4 && bhsd::wino_detail::deep_applies(g))
                         : decided == -1);
    bhsd::conv3d_forward(g, x, wp.data(), bp, again.data(), act, alpha, pool);
    CHECK(rel(again) < 1e-5);
  }
  // strides the path does not serve: 2×1×1, 1×2×1, 1×1×2, and 1×2×2 with a 1×3×3 kernel or a dilation
  const bhsd::ConvGeom n1{16, 4, 8, 8, 16, 3, 3, 3, 2, 1, 1, 1, 1, 1, 1, 1, 1, 2, 8, 8};
  const bhsd::ConvGeom n2{16, 4, 8, 8, 16, 3, 3, 3, 1, 2, 1, 1, 1, 1, 1, 1, 1, 4, 4, 8};
  const bhsd::ConvGeom n3{16, 4, 8, 8, 16, 3, 3, 3, 1, 1, 2, 1, 1, 1, 1, 1, 1, 4, 8, 4};
  const bhsd::ConvGeom n4{16, 4, 8, 8, 16, 1, 3, 3, 1, 2, 2, 1, 1, 1, 0, 1, 1, 4, 4, 4};
  const bhsd::ConvGeom n5{16, 4, 8, 8, 16, 3, 3, 3, 1, 2, 2, 1, 2, 2, 1, 2, 2, 4, 4, 4};
  CHECK(!bhsd::winograd_applies(n1) && !bhsd::winograd_applies(n2) && !bhsd::winograd_applies(n3) &&
        !bhsd::winograd_applies(n4) && !bhsd::winograd_applies(n5));
}

// segment()'s window sum: every element of the window in double, rounded once per store (the
// TypeScript loop's arithmetic), nothing outside the window touched.
static void test_accumulate_window(bhsd::ThreadPool& pool) {
  const std::int64_t C = 2, grid[3] = {4, 6, 37}, patch[3] = {3, 5, 20}, at[3] = {1, 0, 17};
  const std::int64_t vol = grid[0] * grid[1] * grid[2], pv = patch[0] * patch[1] * patch[2];
  Uniform rnd{4242u};
  std::vector<float> acc(static_cast<std::size_t>(C * vol)), weight(static_cast<std::size_t>(vol)),
      logits(static_cast<std::size_t>(C * pv)), gauss(static_cast<std::size_t>(pv));
  for (auto& v : acc) v = rnd();
  for (auto& v : weight) v = std::fabs(rnd());
  for (auto& v : logits) v = rnd();
  for (auto& v : gauss) v = std::fabs(rnd());
  std::vector<float> wa = acc, ww = weight;
  const double scale = 1.0 / 3.0;
  for (std::int64_t a = 0; a < patch[0]; ++a)
    for (std::int64_t b = 0; b < patch[1]; ++b)
      for (std::int64_t c = 0; c < patch[2]; ++c) {
        const std::int64_t dst = ((at[0] + a) * grid[1] + at[1] + b) * grid[2] + at[2] + c,
                           src = (a * patch[1] + b) * patch[2] + c;
        ww[std::size_t(dst)] = float(double(ww[std::size_t(dst)]) + double(gauss[std::size_t(src)]));
        for (std::int64_t k = 0; k < C; ++k) {
          const volatile double prod =
              double(logits[std::size_t(k * pv + src)]) * double(gauss[std::size_t(src)]) * scale;
          wa[std::size_t(k * vol + dst)] = float(double(wa[std::size_t(k * vol + dst)]) + prod);
        }
      }
  bhsd::accumulate_window(acc.data(), weight.data(), logits.data(), gauss.data(), C, grid, patch, at, scale, pool);
  CHECK(std::memcmp(acc.data(), wa.data(), acc.size() * sizeof(float)) == 0);
  CHECK(std::memcmp(weight.data(), ww.data(), weight.size() * sizeof(float)) == 0);
}

// The transformed-weight cache when a model's layers need more than it holds: three layers whose
// transforms fit two at a time, run in turn as a model's windows run. Least-recently-used eviction
// missed on every call (each layer evicted the one needed next); entries in use are kept, the third
// layer is transformed per call, and every answer is the direct path's. Once entries are idle
// (busy = 0 here instead of seconds) a newcomer may evict them.
static void test_weight_cache(bhsd::ThreadPool& pool) {
  if (!bhsd::winograd_applies(bhsd::ConvGeom{16, 4, 6, 8, 16, 3, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1, 4, 6, 8})) return;
  const bhsd::ConvGeom g{16, 4, 6, 8, 16, 3, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1, 4, 6, 8};
  auto& wc = bhsd::wino_detail::WeightCache::instance();
  const std::size_t one =
      std::size_t(bhsd::wino_detail::points(g)) * std::size_t(bhsd::packed_conv_size(g.Co, g.C)) * sizeof(float);
  Uniform rnd{77u};
  std::vector<float> x(std::size_t(g.C * g.D * g.H * g.W));
  for (auto& v : x) v = rnd();
  std::vector<std::vector<float>> wp(3), ref(3);
  const std::size_t no = std::size_t(g.Co * g.Do * g.Ho * g.Wo);
  for (int l = 0; l < 3; ++l) {
    std::vector<float> w(std::size_t(g.Co * g.K()));
    for (auto& v : w) v = rnd() * 0.2f;
    wp[std::size_t(l)] = bhsd::pack_conv_weights(w.data(), g.Co, g.K());
    ref[std::size_t(l)].assign(no, 0.0f);
    bhsd::conv3d_forward(g, x.data(), wp[std::size_t(l)].data(), nullptr, ref[std::size_t(l)].data(), bhsd::Act::none,
                         0, pool, false);
  }
  const std::size_t cap0 = wc.cap;
  const auto busy0 = wc.busy;
  wc.clear();
  wc.cap = one * 5 / 2;  // two of these
  auto round = [&](std::size_t& hits) {
    const std::size_t h0 = wc.hits;
    bool same = true;
    for (int l = 0; l < 3; ++l) {
      std::vector<float> y(no, 5.0f);
      CHECK(bhsd::conv3d_forward_winograd(g, x.data(), wp[std::size_t(l)].data(), nullptr, y.data(), bhsd::Act::none, 0,
                                          pool));
      for (std::size_t i = 0; i < no; ++i) same = same && std::fabs(y[i] - ref[std::size_t(l)][i]) < 1e-4f;
    }
    CHECK(same);
    CHECK(wc.bytes() <= wc.cap && wc.entries() <= 2);
    hits = wc.hits - h0;
  };
  std::size_t hits = 9;
  wc.busy = std::chrono::steady_clock::duration::zero();  // every entry idle: plain least recently used
  round(hits);
  CHECK(hits == 0);
  round(hits);
  CHECK(hits == 0);  // three in turn through two places: each evicts the one needed next
  wc.busy = busy0;   // entries in use stay: two hits a round, the third layer transformed per call
  round(hits);
  CHECK(hits == 2);
  round(hits);
  CHECK(hits == 2);
  wc.cap = cap0, wc.busy = busy0;
  // Weights in a block whose maker stored their hash (packConvWeights) are found by that hash, not
  // hashed again: layer 0's weights in a block stamped with layer 1's hash give layer 1's answer
  // (the contract: such a block is never written after), a fresh block with no hash layer 0's.
  wc.clear();
  const std::size_t nw = wp[0].size(), bytes = nw * sizeof(float);
  auto stamped = bhsd::Block::allocate(bytes, false);
  std::memcpy(stamped->data(), wp[0].data(), bytes);
  stamped->set_content_hash(bhsd::wino_detail::weights_hash(wp[1].data(), nw), bytes);
  auto plain = bhsd::Block::allocate(bytes, false);
  std::memcpy(plain->data(), wp[0].data(), bytes);
  auto near = [&](const std::vector<float>& y, const std::vector<float>& want) {
    bool same = true;
    for (std::size_t i = 0; i < no; ++i) same = same && std::fabs(y[i] - want[i]) < 1e-4f;
    return same;
  };
  std::vector<float> y(no);
  CHECK(bhsd::conv3d_forward_winograd(g, x.data(), wp[1].data(), nullptr, y.data(), bhsd::Act::none, 0, pool));
  CHECK(near(y, ref[1]));
  CHECK(bhsd::conv3d_forward_winograd(g, x.data(), static_cast<const float*>(stamped->data()), nullptr, y.data(),
                                      bhsd::Act::none, 0, pool));
  CHECK(near(y, ref[1]));  // the cache's entry for layer 1, by the stored hash
  CHECK(bhsd::conv3d_forward_winograd(g, x.data(), static_cast<const float*>(plain->data()), nullptr, y.data(),
                                      bhsd::Act::none, 0, pool));
  CHECK(near(y, ref[0]));  // hashed: layer 0
  CHECK(stamped->content_hash(stamped->data(), bytes) && !stamped->content_hash(stamped->data(), bytes - 4) &&
        !plain->content_hash(plain->data(), bytes));
  // forget(hash) (a disposed model's weights, as the addon's detach calls it): the entries of those
  // weights go, others stay; an unknown hash forgets nothing; the weights run again as before
  CHECK(wc.entries() == 2);
  const std::size_t held = wc.bytes();
  CHECK(wc.forget(*stamped->content_hash(stamped->data(), bytes)) == held / 2);
  CHECK(wc.entries() == 1 && wc.bytes() == held / 2);
  CHECK(wc.forget(*stamped->content_hash(stamped->data(), bytes)) == 0 && wc.entries() == 1);
  const std::size_t h0 = wc.hits;
  CHECK(bhsd::conv3d_forward_winograd(g, x.data(), static_cast<const float*>(plain->data()), nullptr, y.data(),
                                      bhsd::Act::none, 0, pool));
  CHECK(near(y, ref[0]) && wc.hits == h0 + 1);  // layer 0's entry stayed
  CHECK(bhsd::conv3d_forward_winograd(g, x.data(), wp[1].data(), nullptr, y.data(), bhsd::Act::none, 0, pool));
  CHECK(near(y, ref[1]) && wc.hits == h0 + 1 && wc.entries() == 2);  // layer 1's made again
  // a block with a stored hash, freed by its last holder, forgets its weights' entries itself (the
  // hook memory.hpp calls): the stamped block carries layer 1's hash; the plain one none
  plain.reset();
  CHECK(wc.entries() == 2);
  stamped.reset();
  CHECK(wc.entries() == 1 && wc.bytes() == held / 2);
  wc.clear();
}

// A 3×3×3 convolution (padding 1, stride 1) at 512 output voxels spread over channels, planes and
// rows (salt picks them) in double against y: the worst difference as a fraction of the sample's
// scale (max |reference|), the reference through LeakyReLU(alpha) (alpha 1: none).
static double sampled_error(const bhsd::ConvGeom& g, const ConvOperands& ops, const std::vector<float>& y,
                            std::size_t salt, double alpha, double* scale_out = nullptr) {
  const std::size_t no = std::size_t(g.Co * g.Do * g.Ho * g.Wo);
  double worst = 0, scale = 0;
  for (int k = 0; k < 512; ++k) {
    const std::size_t o = (std::size_t(k) * 104729 + salt) % no;
    const std::int64_t ow = std::int64_t(o) % g.Wo, oh = std::int64_t(o) / g.Wo % g.Ho,
                       od = std::int64_t(o) / (g.Wo * g.Ho) % g.Do, co = std::int64_t(o) / (g.Wo * g.Ho * g.Do);
    double acc = ops.bias[std::size_t(co)];
    for (std::int64_t ci = 0; ci < g.C; ++ci)
      for (std::int64_t a = 0; a < 3; ++a)
        for (std::int64_t b = 0; b < 3; ++b)
          for (std::int64_t e = 0; e < 3; ++e) {
            const std::int64_t id = od - 1 + a, ih = oh - 1 + b, iw = ow - 1 + e;
            if (id < 0 || id >= g.D || ih < 0 || ih >= g.H || iw < 0 || iw >= g.W) continue;
            acc += double(ops.x[std::size_t(((ci * g.D + id) * g.H + ih) * g.W + iw)]) *
                   double(ops.w[std::size_t(((co * g.C + ci) * 3 + a) * 9 + b * 3 + e)]);
          }
    if (acc < 0) acc *= alpha;
    worst = std::max(worst, std::fabs(acc - double(y[o])));
    scale = std::max(scale, std::fabs(acc));
  }
  if (scale_out) *scale_out = scale;
  return scale > 0 ? worst / scale : 1e30;
}

// The AVX2 transforms of the F(4×4)-row tiles (input_transform_avx2, output_transform_avx2: what a
// processor without AVX-512 runs) against the AVX-512 ones, bit for bit, group by group — the
// F(4×4, 3×3), F(2×4×4, 3×3×3), F(4×4×4, 3×3×3) tiles and the strided layers' 100, 125 and 150
// points —, on rows of 64 and 128 voxels (whole groups whose first or last quad leaves the row),
// rows of 70 and 13 (groups across tile rows, partial groups, rows shorter than a load), paddings
// 0–2, every plane's edges, bias or none and each activation. Runs where AVX-512 does (both sets
// callable); the core test's BHSD_NO_AVX512 run checks the AVX2 path against float64 end to end.
static void test_winograd_avx2_transforms() {
#ifdef BHSD_X86
  if (!bhsd::conv_detail::use_avx512()) return;
  using namespace bhsd::wino_detail;
  Uniform rnd{4711u};
  struct Case {
    std::int64_t C, Co, D, H, W, kd, sd, sh, p[3];
    bool deep;
    int act;
  };
  const std::vector<Case> cases = {
      {9, 7, 5, 9, 128, 3, 1, 1, {1, 1, 1}, false, 2},  {9, 7, 9, 6, 64, 3, 1, 1, {1, 1, 1}, true, 1},
      {5, 12, 4, 7, 70, 3, 1, 1, {1, 2, 0}, false, 0},  {6, 5, 10, 5, 13, 3, 1, 1, {2, 1, 1}, true, 2},
      {7, 9, 3, 10, 128, 1, 1, 1, {0, 1, 1}, false, 2}, {8, 6, 2, 9, 70, 1, 1, 1, {0, 0, 2}, false, 1},
      {9, 8, 6, 12, 128, 3, 1, 2, {1, 1, 1}, false, 2}, {9, 8, 9, 10, 66, 3, 1, 2, {1, 1, 1}, true, 1},
      {6, 11, 7, 9, 13, 3, 2, 2, {1, 1, 1}, false, 0},  {8, 8, 8, 20, 64, 3, 2, 2, {0, 2, 1}, false, 2},
  };
  for (const Case& c : cases) {
    bhsd::ConvGeom g{c.C, c.D, c.H, c.W, c.Co, c.kd, 3, 3, c.sd, c.sh, c.sh, 1, 1, 1, c.p[0], c.p[1], c.p[2], 0, 0, 0};
    g.Do = bhsd::conv_out(c.D, c.kd, c.sd, 1, c.p[0], c.p[0]);
    g.Ho = bhsd::conv_out(c.H, 3, c.sh, 1, c.p[1], c.p[1]);
    g.Wo = bhsd::conv_out(c.W, 3, c.sh, 1, c.p[2], c.p[2]);
    const DeepTilesScope deep(c.deep);
    const TileFreeze freeze(g);
    const int P = points(g);
    CHECK(P == (is_s2(g) ? (c.sd == 2 ? 125 : c.deep ? 150 : 100) : c.kd == 1 ? 36 : c.deep ? 216 : 144));
    const std::int64_t dz = tile_dz(g), m = tile_m(g), TD = (g.Do + dz - 1) / dz, TH = (g.Ho + m - 1) / m,
                       TW = (g.Wo + m - 1) / m, T = TD * TH * TW, ngroups = (T + TL - 1) / TL;
    std::vector<float> x(std::size_t(c.C * c.D * c.H * c.W)), bias(std::size_t(c.Co));
    for (float& v : x) v = rnd();
    for (float& v : bias) v = rnd();
    const std::size_t vsz = std::size_t(P * point_stride(c.C)), msz = std::size_t(P * point_stride(c.Co)),
                      no = std::size_t(c.Co * g.Do * g.Ho * g.Wo);
    // (aligned blocks: both sets store V's and M's rows with aligned stores)
    auto vb = bhsd::Block::allocate(2 * vsz * sizeof(float)), mb = bhsd::Block::allocate(msz * sizeof(float));
    float *v512 = static_cast<float*>(vb->data()), *v2 = v512 + vsz, *M = static_cast<float*>(mb->data());
    for (std::size_t i = 0; i < msz; ++i) M[i] = rnd();
    std::vector<float> o512(no, 3.0f), o2(no, 3.0f);
    const bhsd::Act act = bhsd::Act(c.act);
    for (std::int64_t q = 0; q < ngroups; ++q) {
      const Group gr = group_of(g, dz, m, TH, TW, T, q);
      std::fill(v512, v512 + 2 * vsz, 0.0f);
      if (P == 144)
        input_transform_3d_f4<4>(g, x.data(), gr, v512), input_transform_avx2<4, false>(g, x.data(), gr, v2);
      if (P == 216)
        input_transform_3d_f4<6>(g, x.data(), gr, v512), input_transform_avx2<6, false>(g, x.data(), gr, v2);
      if (P == 36) input_transform_f4(g, x.data(), gr, v512), input_transform_avx2<1, false>(g, x.data(), gr, v2);
      if (P == 100) input_transform_3d_s2<4>(g, x.data(), gr, v512), input_transform_avx2<4, true>(g, x.data(), gr, v2);
      if (P == 125) input_transform_3d_s2<5>(g, x.data(), gr, v512), input_transform_avx2<5, true>(g, x.data(), gr, v2);
      if (P == 150) input_transform_3d_s2<6>(g, x.data(), gr, v512), input_transform_avx2<6, true>(g, x.data(), gr, v2);
      CHECK(std::memcmp(v512, v2, vsz * sizeof(float)) == 0);
      // streamed stores (st_v: V too large for the caches) leave the same V, in either set
      for (const bool avx2 : {false, true}) {
        std::fill(v2, v2 + vsz, 0.0f);
        if (P == 144)
          avx2 ? input_transform_avx2<4, false>(g, x.data(), gr, v2, true)
               : input_transform_3d_f4<4>(g, x.data(), gr, v2, true);
        if (P == 216)
          avx2 ? input_transform_avx2<6, false>(g, x.data(), gr, v2, true)
               : input_transform_3d_f4<6>(g, x.data(), gr, v2, true);
        if (P == 36)
          avx2 ? input_transform_avx2<1, false>(g, x.data(), gr, v2, true)
               : input_transform_f4(g, x.data(), gr, v2, true);
        if (P == 100)
          avx2 ? input_transform_avx2<4, true>(g, x.data(), gr, v2, true)
               : input_transform_3d_s2<4>(g, x.data(), gr, v2, true);
        if (P == 125)
          avx2 ? input_transform_avx2<5, true>(g, x.data(), gr, v2, true)
               : input_transform_3d_s2<5>(g, x.data(), gr, v2, true);
        if (P == 150)
          avx2 ? input_transform_avx2<6, true>(g, x.data(), gr, v2, true)
               : input_transform_3d_s2<6>(g, x.data(), gr, v2, true);
        _mm_sfence();
        CHECK(std::memcmp(v512, v2, vsz * sizeof(float)) == 0);
      }
      const float* bp = c.act == 1 ? nullptr : bias.data();
      if (P == 144)
        output_transform_3d_f4<4>(g, gr, M, bp, o512.data(), act, 0.01f),
            output_transform_avx2<4, false>(g, gr, M, bp, o2.data(), act, 0.01f);
      if (P == 216)
        output_transform_3d_f4<6>(g, gr, M, bp, o512.data(), act, 0.01f),
            output_transform_avx2<6, false>(g, gr, M, bp, o2.data(), act, 0.01f);
      if (P == 36)
        output_transform_f4(g, gr, M, bp, o512.data(), act, 0.01f),
            output_transform_avx2<1, false>(g, gr, M, bp, o2.data(), act, 0.01f);
      if (P == 100)
        output_transform_3d_s2<4>(g, gr, M, bp, o512.data(), act, 0.01f),
            output_transform_avx2<4, true>(g, gr, M, bp, o2.data(), act, 0.01f);
      if (P == 125)
        output_transform_3d_s2<5>(g, gr, M, bp, o512.data(), act, 0.01f),
            output_transform_avx2<5, true>(g, gr, M, bp, o2.data(), act, 0.01f);
      if (P == 150)
        output_transform_3d_s2<6>(g, gr, M, bp, o512.data(), act, 0.01f),
            output_transform_avx2<6, true>(g, gr, M, bp, o2.data(), act, 0.01f);
    }
    CHECK(std::memcmp(o512.data(), o2.data(), no * sizeof(float)) == 0);
    CHECK(std::count(o2.begin(), o2.end(), 3.0f) == 0);  // every output voxel written
  }
#endif
}

// Streamed stores — V's (stream_v_bytes; 0: every V) and the output's (stream_out_bytes; 0: every
// aligned whole row, and the direct path's whole tiles) — give each layer's output bit for bit as stores through the
// caches do: a task's groups and the split path's (one group: the threads share its points, reading V another thread
// wrote), for every tiling — F(2×2×2) (64 points), 1×3×3 F(2×2) (16) and F(4×4) (36), F(2×4×4) (144), F(4×4×4) (216),
// stride 2×2×2 (125) and 1×2×2 (100) —, rows of 64 and 128 (whole rows of 16 tiles, streamed) and of 40 (not), with
// AVX-512 and (the BHSD_NO_AVX512 run) AVX2.
static void test_winograd_streamed_v(bhsd::ThreadPool& pool) {
#ifdef BHSD_X86
  using namespace bhsd::wino_detail;
  Uniform rnd{2027u};
  struct Case {
    std::int64_t C, Co, D, H, W, kd, sd, sh;
    int f4;
    bool deep;
  };
  const std::vector<Case> cases = {
      {8, 9, 6, 20, 40, 3, 1, 1, 0, false},  {8, 9, 3, 20, 64, 1, 1, 1, 0, false},
      {8, 9, 3, 20, 64, 1, 1, 1, 1, false},  {8, 9, 6, 10, 64, 3, 1, 1, 1, false},
      {8, 9, 6, 20, 40, 3, 1, 1, 1, false},  {8, 9, 9, 10, 64, 3, 1, 1, 1, true},
      {8, 9, 6, 10, 128, 3, 2, 2, 1, false}, {8, 9, 6, 10, 128, 3, 1, 2, 1, false},
      {8, 9, 6, 20, 40, 3, 2, 2, 1, false},  {16, 12, 2, 6, 6, 3, 1, 1, 1, false},
  };
  const std::size_t saved_v = stream_v_bytes(), saved_out = bhsd::stream_out_bytes(), saved_ahead = ahead_bytes();
  for (const Case& c : cases) {
    const std::int64_t pd = c.kd == 3 ? 1 : 0;
    bhsd::ConvGeom g{c.C, c.D, c.H, c.W, c.Co, c.kd, 3, 3, c.sd, c.sh, c.sh, 1, 1, 1, pd, 1, 1, 0, 0, 0};
    g.Do = bhsd::conv_out(c.D, c.kd, c.sd, 1, pd, pd);
    g.Ho = bhsd::conv_out(c.H, 3, c.sh, 1, 1, 1);
    g.Wo = bhsd::conv_out(c.W, 3, c.sh, 1, 1, 1);
    f4_override() = c.f4;
    const DeepTilesScope deep(c.deep);
    std::vector<float> x(std::size_t(c.C * c.D * c.H * c.W)), w(std::size_t(c.Co * g.K())), bias(std::size_t(c.Co));
    for (float& v : x) v = rnd();
    for (float& v : w) v = rnd();
    for (float& v : bias) v = rnd();
    const std::vector<float> wp = bhsd::pack_conv_weights(w.data(), c.Co, g.K());
    const std::size_t no = std::size_t(c.Co * g.Do * g.Ho * g.Wo);
    // (engine blocks: page-aligned, so that rows of 64 and 128 outputs start on cache lines)
    auto cb = bhsd::Block::allocate(no * sizeof(float)), sb = bhsd::Block::allocate(no * sizeof(float));
    float *cached = static_cast<float*>(cb->data()), *streamed = static_cast<float*>(sb->data());
    std::fill(cached, cached + no, 7.0f), std::fill(streamed, streamed + no, 7.0f);
    stream_v_bytes() = ~std::size_t(0), bhsd::stream_out_bytes() = ~std::size_t(0);
    ahead_bytes() = ~std::size_t(0);  // (the references ask for nothing ahead)
    const bool ran =
        bhsd::conv3d_forward_winograd(g, x.data(), wp.data(), bias.data(), cached, bhsd::Act::leaky, 0.01f, pool);
    CHECK(ran == bhsd::winograd_applies(g));
    if (!ran) continue;  // (BHSD_NO_AVX2: no Winograd)
    stream_v_bytes() = 0, bhsd::stream_out_bytes() = 0;
    CHECK(bhsd::conv3d_forward_winograd(g, x.data(), wp.data(), bias.data(), streamed, bhsd::Act::leaky, 0.01f, pool));
    CHECK(std::memcmp(cached, streamed, no * sizeof(float)) == 0);
    CHECK(std::count(streamed, streamed + no, 7.0f) == 0);
    // the point products asking for the next point's V and M (PackedAhead) as they run: the same
    // products, bit for bit
    stream_v_bytes() = saved_v, bhsd::stream_out_bytes() = saved_out;
    std::fill(streamed, streamed + no, 7.0f);
    ahead_bytes() = 0;
    CHECK(bhsd::conv3d_forward_winograd(g, x.data(), wp.data(), bias.data(), streamed, bhsd::Act::leaky, 0.01f, pool));
    CHECK(std::memcmp(cached, streamed, no * sizeof(float)) == 0);
  }
  // the direct path's whole tiles (one block of input channels: each stored once), rows of 64
  // (streamed) and 40 (their tails not), 1–3 input channels, with and without bias and activation
  for (const std::int64_t C : {1, 3}) {
    for (const std::int64_t W : {64, 40}) {
      bhsd::ConvGeom g{C, 5, 9, W, 13, 3, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0};
      g.Do = 5, g.Ho = 9, g.Wo = W;
      std::vector<float> x(std::size_t(C * 5 * 9 * W)), w(std::size_t(13 * g.K())), bias(13);
      for (float& v : x) v = rnd();
      for (float& v : w) v = rnd();
      for (float& v : bias) v = rnd();
      const std::vector<float> wp = bhsd::pack_conv_weights(w.data(), 13, g.K());
      const std::size_t no = std::size_t(13 * 5 * 9 * W);
      auto cb = bhsd::Block::allocate(no * sizeof(float)), sb = bhsd::Block::allocate(no * sizeof(float));
      float *cached = static_cast<float*>(cb->data()), *streamed = static_cast<float*>(sb->data());
      std::fill(cached, cached + no, 7.0f), std::fill(streamed, streamed + no, 7.0f);
      const float* bp = C == 1 ? bias.data() : nullptr;
      const bhsd::Act act = C == 1 ? bhsd::Act::leaky : bhsd::Act::none;
      bhsd::stream_out_bytes() = ~std::size_t(0);
      bhsd::conv3d_forward(g, x.data(), wp.data(), bp, cached, act, 0.01f, pool, false);
      bhsd::stream_out_bytes() = 0;
      bhsd::conv3d_forward(g, x.data(), wp.data(), bp, streamed, act, 0.01f, pool, false);
      CHECK(std::memcmp(cached, streamed, no * sizeof(float)) == 0);
      CHECK(std::count(streamed, streamed + no, 7.0f) == 0);
    }
  }
  stream_v_bytes() = saved_v, bhsd::stream_out_bytes() = saved_out, ahead_bytes() = saved_ahead;
  f4_override() = -1;
#else
  (void)pool;
#endif
}

// A layer big enough for the plan to time its candidates on a slab (over 8 GFLOP direct), where
// F(4×4×4) tiles are one of them (deep_applies): the slab is whole tiles of 4 planes, the plan's
// output is the layer's from then on, sampled voxels match a plain loop in double, and only the
// choice's transformed weights stay cached. (The plan's per-candidate estimates once had one slot
// too few for kWinoDeep: the addon crashed in ResEnc-M's first window; ASan's build of this test
// reports that overflow here and in test_winograd's deep cases.)
// The F(4×4) input transforms' aligned row reads (f4_bt_row_aligned: six loads on cache lines where a
// row's first sample lies one before a line) give bit for bit what the five unaligned loads give —
// the same samples through the same arithmetic — for F(2×4×4), F(4×4×4) and the 1×3×3 F(4×4)
// tiles, on rows of 64 and 128 voxels (one and two groups of 16 tiles; the first group's first load
// lies wholly before the row, the last group's last after it), every plane's edges, an input that
// does not start on a line (the unaligned reads then) too; and match a loop in double.
static void test_winograd_aligned_rows(bhsd::ThreadPool& pool) {
#ifdef BHSD_X86
  const char* f4 = std::getenv("BHSD_WINOGRAD_F4");                                // "0" keeps F(2×2×2) tiles
  if (!bhsd::conv_detail::use_avx512() || (f4 && std::string(f4) == "0")) return;  // AVX-512's reads
  using namespace bhsd::wino_detail;
  Uniform rnd{77u};
  for (const std::int64_t W : {64, 128})
    for (const int kind : {0, 1, 2}) {  // F(2×4×4), F(4×4×4), 1×3×3
      const std::int64_t kd = kind == 2 ? 1 : 3, pd = kind == 2 ? 0 : 1, D = 8, H = 12;
      const bhsd::ConvGeom g{16, D, H, W, 24, kd, 3, 3, 1, 1, 1, 1, 1, 1, pd, 1, 1, D, H, W};
      const ConvOperands ops = conv_operands(g, rnd);
      const std::size_t nx = ops.x.size(), no = std::size_t(g.Co * g.Do * g.Ho * g.Wo);
      auto xb = bhsd::Block::allocate((nx + 16) * sizeof(float));
      float* x = static_cast<float*>(xb->data());
      std::copy(ops.x.begin(), ops.x.end(), x);
      float* x1 = x + 1;  // the same input one float on (copied there in its turn): no row starts on a line
      const std::vector<float> wp = bhsd::pack_conv_weights(ops.w.data(), g.Co, g.K());
      const DeepTilesScope deep(kind == 1);
      CHECK(tile_code(g) == (kind == 1 ? 8 : 4));
      std::vector<float> y[3];
      const std::int64_t hits0 = aligned_row_groups().load();
      for (int r = 0; r < 3; ++r) {
        aligned_rows_override() = r == 1 ? 0 : 1;
        std::copy(ops.x.begin(), ops.x.end(), r == 2 ? x1 : x);
        y[r].assign(no, 7.0f);
        CHECK(bhsd::conv3d_forward_winograd(g, r == 2 ? x1 : x, wp.data(), ops.bias.data(), y[r].data(),
                                            bhsd::Act::leaky, 0.01f, pool));
      }
      aligned_rows_override() = -1;
      // the aligned reads ran (run 0 only: run 1 has them off, run 2's input is off the line): every
      // group of the layer, each channel's rows from its first group on
      const std::int64_t TW = W / 4, groups = (kind == 1 ? D / 4 : kind == 0 ? D / 2 : D) * (H / 4) * TW / 16;
      CHECK(aligned_row_groups().load() - hits0 == groups);
      CHECK(std::memcmp(y[0].data(), y[1].data(), no * sizeof(float)) == 0);
      CHECK(std::memcmp(y[0].data(), y[2].data(), no * sizeof(float)) == 0);
      if (kind != 2) CHECK(sampled_error(g, ops, y[0], std::size_t(W + kind), 0.01) < 5e-5);
    }
#else
  (void)pool;
#endif
}

// The plan as numbers (plan_export / plan_import, exportConvPlan in Node): a round trip, a key this
// process planned keeps its choice, and numbers that are no plan refused whole (nothing taken).
static void test_plan_export_import() {
  using bhsd::kPlanEntryValues;
  const std::vector<std::int64_t> before = bhsd::plan_export();
  CHECK(before.size() % kPlanEntryValues == 0);
  bhsd::plan_clear();
  CHECK(bhsd::plan_export().empty());
  std::vector<std::int64_t> e = {16, 16, 3, 8, 16, 16, 1, 1, 1, 8, 16, 16, 2, 4, 0, 1};
  CHECK(e.size() == kPlanEntryValues);
  std::vector<std::int64_t> two = e;
  two.insert(two.end(), e.begin(), e.end());
  two[kPlanEntryValues] = 17;                          // another key (C = 17)
  two.back() = 2 * 16 + bhsd::wino_detail::kWinoDeep;  // F(4×4×4), two groups a task
  CHECK(bhsd::plan_import(two.data(), two.size()) == 2);
  CHECK(bhsd::plan_export() == two);  // (the map's order: C = 16 before 17)
  std::vector<std::int64_t> other = e;
  other.back() = 0;
  CHECK(bhsd::plan_import(other.data(), other.size()) == 0);  // planned already: kept
  CHECK(bhsd::plan_export() == two);
  // refused whole: a partial entry, a negative key value, values the plan never stores
  CHECK(bhsd::plan_import(e.data(), e.size() - 1) == -1);
  for (const std::int64_t v :
       {std::int64_t(-1), std::int64_t(6), std::int64_t(15), std::int64_t(3 * 16), std::int64_t(16),
        std::int64_t(2 * 16), std::int64_t(8 * 16 + 1), std::int64_t(1) << 40}) {
    std::vector<std::int64_t> bad = e;
    bad[1] = 99;  // a key not planned yet, so that only the refusal keeps it out
    bad.back() = v;
    std::vector<std::int64_t> both = bad;
    both.insert(both.begin(), e.begin(), e.end());
    both[1] = 98;  // a good entry first: refused with the bad one
    CHECK(bhsd::plan_import(both.data(), both.size()) == -1);
  }
  std::vector<std::int64_t> neg = e;
  neg[3] = -8;
  CHECK(bhsd::plan_import(neg.data(), neg.size()) == -1);
  CHECK(bhsd::plan_export() == two);
  CHECK(bhsd::plan_import(nullptr, 0) == 0);
  bhsd::plan_clear();
  CHECK(bhsd::plan_import(before.data(), before.size()) == std::int64_t(before.size() / kPlanEntryValues));
  CHECK(bhsd::plan_export() == before);
}

static void test_winograd_deep_plan(bhsd::ThreadPool& pool) {
  const bhsd::ConvGeom g{64, 16, 32, 72, 64, 3, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1, 16, 32, 72};
  if (!bhsd::winograd_applies(g) || !bhsd::wino_detail::deep_applies(g)) return;
  // which layers the plan times F(4×4×4) tiles for: up to 256×256 channels (ResEnc-M's stage 3 and
  // decoder 256→128), 8 output planes or more; not 512→256 (113 MB of transformed weights)
  auto shape = [](std::int64_t C, std::int64_t Co, std::int64_t D, std::int64_t H) {
    return bhsd::ConvGeom{C, D, H, H, Co, 3, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1, D, H, H};
  };
  CHECK(bhsd::wino_detail::deep_applies(shape(256, 256, 8, 32)));
  CHECK(bhsd::wino_detail::deep_applies(shape(256, 128, 16, 64)));
  CHECK(!bhsd::wino_detail::deep_applies(shape(512, 256, 8, 32)));
  CHECK(!bhsd::wino_detail::deep_applies(shape(256, 256, 4, 32)));
  const char* env = std::getenv("BHSD_WINOGRAD");
  if (env && (std::string(env) == "0" || std::string(env) == "1")) return;
  CHECK(2.0 * 64 * 64 * 27 * 16 * 32 * 72 > 8e9);  // the slab branch
  Uniform rnd{777u};
  ConvOperands ops = conv_operands(g, rnd);
  const std::vector<float> wp = bhsd::pack_conv_weights(ops.w.data(), g.Co, g.K());
  const std::size_t no = std::size_t(g.Co * g.Do * g.Ho * g.Wo);
  auto& wc = bhsd::wino_detail::WeightCache::instance();
  wc.clear();
  std::vector<float> planned(no, 7.0f), again(no, 9.0f);
  bhsd::conv3d_forward(g, ops.x.data(), wp.data(), ops.bias.data(), planned.data(), bhsd::Act::leaky, 0.01f, pool);
  const int chose = bhsd::winograd_planned(g, pool);
  CHECK(chose == 0 || chose == 1 || chose == 3 || chose == 4);
  CHECK(wc.entries() <= 1 && (chose != 0 || wc.entries() == 0));
  bhsd::conv3d_forward(g, ops.x.data(), wp.data(), ops.bias.data(), again.data(), bhsd::Act::leaky, 0.01f, pool);
  CHECK(std::memcmp(again.data(), planned.data(), no * sizeof(float)) == 0);
  CHECK(sampled_error(g, ops, planned, 31, 0.01) < 5e-5);
  // a bf16 call's candidate of F(4×4×4) tiles in fp32 (kWinoFp32Deep): the fp32 call's F(4×4×4)
  // answer bit for bit, and timed by a bf16 call's plan (its own key) where they apply
  if (bhsd::wino_detail::bf16_available()) {
    using namespace bhsd::wino_detail;
    std::vector<float> f32(no, 1.0f), mixed(no, 2.0f), b16(no, 3.0f);
    CHECK(
        winograd_as(kWinoDeep, g, ops.x.data(), wp.data(), ops.bias.data(), f32.data(), bhsd::Act::leaky, 0.01f, pool));
    bhsd::PrecisionScope ps(bhsd::Precision::bf16);
    CHECK(deep_applies_fp32(g) && !deep_applies(g));  // (a bf16 call's own tiles are F(2×…))
    CHECK(winograd_as(kWinoFp32Deep, g, ops.x.data(), wp.data(), ops.bias.data(), mixed.data(), bhsd::Act::leaky, 0.01f,
                      pool));
    CHECK(std::memcmp(mixed.data(), f32.data(), no * sizeof(float)) == 0);
    bhsd::conv3d_forward(g, ops.x.data(), wp.data(), ops.bias.data(), b16.data(), bhsd::Act::leaky, 0.01f, pool);
    const int b16_chose = bhsd::winograd_planned(g, pool);
    CHECK(b16_chose == 0 || b16_chose == 1 || b16_chose == 2 || b16_chose == 5);
    CHECK(sampled_error(g, ops, b16, 31, 0.01) < (b16_chose == 1 ? 2e-2 : 5e-5));
  }
  wc.clear();
}

// Layers wider than 256×256 channels: F(2×4×4) tiles from 4096 output voxels on (F(2×2×2) below),
// checked at 512 sampled voxels against a plain loop in double; and the plan keeps only its
// choice's transformed weights (the losing candidate's dropped from the cache).
static void test_winograd_wide(bhsd::ThreadPool& pool) {
  bhsd::ConvGeom g{260, 4, 32, 32, 256, 3, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1, 4, 32, 32};
  if (!bhsd::winograd_applies(g)) return;
  const bhsd::ConvGeom small{300, 2, 3, 5, 240, 3, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 3, 5};
  CHECK(bhsd::wino_detail::tile_m(small) == 2);
#ifdef BHSD_X86
  const char* f4 = std::getenv("BHSD_WINOGRAD_F4");                               // "0" keeps F(2×2×2) tiles
  CHECK(bhsd::wino_detail::tile_m(g) == (f4 && std::string(f4) == "0" ? 2 : 4));  // (AVX-512's transforms or AVX2's)
#endif
  Uniform rnd{4242u};
  ConvOperands ops = conv_operands(g, rnd);
  const std::vector<float> wp = bhsd::pack_conv_weights(ops.w.data(), g.Co, g.K());
  const std::size_t no = std::size_t(g.Co * g.Do * g.Ho * g.Wo);
  std::vector<float> y(no, 7.0f), planned(no, 7.0f);
  CHECK(bhsd::conv3d_forward_winograd(g, ops.x.data(), wp.data(), ops.bias.data(), y.data(), bhsd::Act::none, 0, pool));
  double scale = 0;  // 260 channels summed: ~1e-5 (F(2×2×2): ~1e-6)
  CHECK(sampled_error(g, ops, y, 17, 1.0, &scale) < 5e-5);
  // the plan's other counts of groups a task: the same arithmetic per tile, the same output
  for (const int n : {1, 2}) {
    const bhsd::wino_detail::GroupsScope groups(n);
    std::vector<float> yn(no, 3.0f);
    CHECK(bhsd::conv3d_forward_winograd(g, ops.x.data(), wp.data(), ops.bias.data(), yn.data(), bhsd::Act::none, 0,
                                        pool));
    CHECK(std::memcmp(yn.data(), y.data(), no * sizeof(float)) == 0);
  }
  // the plan (unless the environment forces a path): whichever it keeps, one entry for these weights
  const char* env = std::getenv("BHSD_WINOGRAD");
  if (env && (std::string(env) == "0" || std::string(env) == "1")) return;
  auto& wc = bhsd::wino_detail::WeightCache::instance();
  wc.clear();
  const std::int64_t from0 = bhsd::wino_detail::groups_timed_from();
  bhsd::wino_detail::groups_timed_from() = 4;  // this layer's 8 groups: its plan times 1 and 2 a task
  bhsd::conv3d_forward(g, ops.x.data(), wp.data(), ops.bias.data(), planned.data(), bhsd::Act::none, 0, pool);
  bhsd::wino_detail::groups_timed_from() = from0;
  std::vector<float> again(no, 9.0f);  // the plan's output is what the layer gives from then on
  bhsd::conv3d_forward(g, ops.x.data(), wp.data(), ops.bias.data(), again.data(), bhsd::Act::none, 0, pool);
  CHECK(std::memcmp(again.data(), planned.data(), no * sizeof(float)) == 0);
  const int chose = bhsd::winograd_planned(g, pool);
  CHECK(chose == 0 || chose == 1 || chose == 3);
  const int groups = bhsd::winograd_planned_groups(g, pool);  // timed where U passes 12 MB: 38 MB here
  CHECK(groups == 0 || ((groups == 1 || groups == 2) && chose != 0));
  CHECK(wc.entries() <= 1 && (chose != 0 || wc.entries() == 0));
  double d = 0;
  for (std::size_t i = 0; i < no; ++i) d = std::max(d, double(std::fabs(planned[i] - y[i])));
  CHECK(d / scale < 5e-5);
  wc.clear();
}

// Convolutions from two threads at once (as from two libuv workers): one borrows the kept slab,
// the other gets its own; each gives what it gives alone.
static void test_conv_concurrent() {
#ifdef BHSD_X86
  if (!bhsd::cpu_features().avx2 || !bhsd::cpu_features().fma) return;
  const bhsd::ConvGeom g{4, 6, 20, 33, 10, 3, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1, 6, 20, 33};
  std::uint32_t st = 5150;
  auto rnd = [&] {
    st = st * 1664525u + 1013904223u;
    return float(st >> 8) / float(1 << 24) - 0.5f;
  };
  std::vector<float> xa(std::size_t(4 * 6 * 20 * 33)), xb(xa.size()), w(std::size_t(10 * g.K()));
  for (auto& v : xa) v = rnd();
  for (auto& v : xb) v = rnd();
  for (auto& v : w) v = rnd();
  const std::vector<float> wp = bhsd::pack_conv_weights(w.data(), 10, g.K());
  const std::size_t no = std::size_t(10 * 6 * 20 * 33);
  std::vector<float> ra(no), rb(no);
  bhsd::ThreadPool p0(2);
  CHECK(bhsd::conv3d_forward_indirect(g, xa.data(), wp.data(), nullptr, ra.data(), bhsd::Act::none, 0.0f, p0));
  CHECK(bhsd::conv3d_forward_indirect(g, xb.data(), wp.data(), nullptr, rb.data(), bhsd::Act::none, 0.0f, p0));
  std::atomic<bool> same{true};
  auto run = [&](const std::vector<float>& x, const std::vector<float>& ref) {
    bhsd::ThreadPool pool(2);
    std::vector<float> got(no);
    for (int i = 0; i < 20; ++i) {
      bool ok = bhsd::conv3d_forward_indirect(g, x.data(), wp.data(), nullptr, got.data(), bhsd::Act::none, 0.0f, pool);
      if (!ok || std::memcmp(got.data(), ref.data(), no * sizeof(float)) != 0) same = false;
    }
  };
  std::thread ta([&] { run(xa, ra); }), tb([&] { run(xb, rb); });
  ta.join(), tb.join();
  CHECK(same.load());
#endif
}

// The 1 × 1 × 1 convolution read in place: volumes that end in a partial tile, more channels than
// one K block (krows = 512), output channels that leave a block part-filled.
static void test_conv_pointwise(bhsd::ThreadPool& pool) {
#ifdef BHSD_X86
  if (!bhsd::cpu_features().avx2 || !bhsd::cpu_features().fma) return;
  struct Case {
    std::int64_t C, D, H, W, Co;
  };
  const Case cases[] = {{8, 4, 16, 16, 6}, {3, 3, 5, 7, 13}, {600, 1, 3, 11, 7}, {16, 2, 9, 9, 32}};
  std::uint32_t st = 99;
  auto rnd = [&] {
    st = st * 1664525u + 1013904223u;
    return float(st >> 8) / float(1 << 24) - 0.5f;
  };
  for (const Case& c : cases) {
    const bhsd::ConvGeom g{c.C, c.D, c.H, c.W, c.Co, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, c.D, c.H, c.W};
    const std::int64_t V = c.D * c.H * c.W;
    std::vector<float> x(std::size_t(c.C * V)), w(std::size_t(c.Co * c.C)), bias(std::size_t(c.Co));
    for (auto& v : x) v = rnd();
    for (auto& v : w) v = rnd();
    for (auto& v : bias) v = rnd();
    const std::vector<float> wp = bhsd::pack_conv_weights(w.data(), c.Co, c.C);
    std::vector<float> got(std::size_t(c.Co * V), 9.0f);
    CHECK(bhsd::conv3d_forward_pointwise(g, x.data(), wp.data(), bias.data(), got.data(), bhsd::Act::relu, 0.0f, pool));
    double worst = 0;
    for (std::int64_t co = 0; co < c.Co; ++co)
      for (std::int64_t v = 0; v < V; ++v) {
        double acc = bias[std::size_t(co)];
        for (std::int64_t ci = 0; ci < c.C; ++ci)
          acc += double(w[std::size_t(co * c.C + ci)]) * x[std::size_t(ci * V + v)];
        worst = std::max(worst, std::fabs(std::max(acc, 0.0) - got[std::size_t(co * V + v)]));
      }
    CHECK(worst < 1e-4);
  }
  // not a pointwise layer, or one wide enough for packed panels: left alone
  const bhsd::ConvGeom g3{2, 3, 3, 3, 2, 1, 1, 3, 1, 1, 1, 1, 1, 1, 0, 0, 1, 3, 3, 3};
  CHECK(!bhsd::conv3d_forward_pointwise(g3, nullptr, nullptr, nullptr, nullptr, bhsd::Act::none, 0.0f, pool));
  const bhsd::ConvGeom wide{8, 2, 2, 2, 49, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 2, 2, 2};
  CHECK(!bhsd::conv3d_forward_pointwise(wide, nullptr, nullptr, nullptr, nullptr, bhsd::Act::none, 0.0f, pool));
  // ... which pointwise_wide_avx512 takes on AVX-512 (conv3d_forward's cases above check its sums),
  // and no other geometry
  CHECK(!bhsd::pointwise_wide_avx512(g3, nullptr, nullptr, nullptr, nullptr, bhsd::Act::none, 0.0f, pool));
  const bhsd::ConvGeom narrow{8, 2, 2, 2, 48, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 2, 2, 2};
  CHECK(!bhsd::pointwise_wide_avx512(narrow, nullptr, nullptr, nullptr, nullptr, bhsd::Act::none, 0.0f, pool));
  const bhsd::ConvGeom deep{513, 2, 2, 2, 49, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 2, 2, 2};  // K past 512
  CHECK(!bhsd::pointwise_wide_avx512(deep, nullptr, nullptr, nullptr, nullptr, bhsd::Act::none, 0.0f, pool));
  if (bhsd::conv_detail::use_avx512()) {
    const std::int64_t V = 8, n = 49 * V;
    std::vector<float> x(std::size_t(8 * V), 1.0f), w(std::size_t(49 * 8), 0.5f), got(std::size_t(n), 9.0f);
    const std::vector<float> wp = bhsd::pack_conv_weights(w.data(), 49, 8);
    CHECK(bhsd::pointwise_wide_avx512(wide, x.data(), wp.data(), nullptr, got.data(), bhsd::Act::none, 0.0f, pool));
    CHECK(std::all_of(got.begin(), got.end(), [](float v) { return v == 4.0f; }));
    // 17 and 50 voxels (a pair of tiles whose second is partial): nothing written past the output
    for (const std::int64_t W : {17, 50}) {
      const bhsd::ConvGeom gw{8, 1, 1, W, 49, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 1, 1, W};
      std::vector<float> xw(std::size_t(8 * W), 1.0f), out(std::size_t(49 * W + 64), 9.0f);
      CHECK(bhsd::pointwise_wide_avx512(gw, xw.data(), wp.data(), nullptr, out.data(), bhsd::Act::none, 0.0f, pool));
      CHECK(std::all_of(out.begin(), out.begin() + 49 * W, [](float v) { return v == 4.0f; }));
      CHECK(std::all_of(out.begin() + 49 * W, out.end(), [](float v) { return v == 9.0f; }));
    }
  }
#else
  (void)pool;
#endif
}

// Transposed convolutions whose kernel equals the stride (a U-Net's upsampling: the fused GEMM and
// spread) against a plain scatter loop: strides (2, 2, 2), (1, 2, 2), (1, 1, 3) and (2, 1, 1),
// volumes that end in a partial tile, a 64-row GEMM (packed blocks with a 4 + 4 tail), more input
// channels than one K block.
// The depthwise transposed convolution (MedNeXt's up-sampling) against the transposed convolution's
// definition, a scatter of every input voxel through its channel's kernel, in double: strides 2 and
// (1, 2, 2), kernels 3, 5, 2 and 1, padding k // 2 and none, output padding, sizes off whole vectors.
static void test_conv_transpose_depthwise(bhsd::ThreadPool& pool) {
  struct Case {
    std::int64_t C, D, H, W, k[3], s[3], p[3], extra[3];
  };
  const Case cases[] = {
      {5, 3, 4, 7, {3, 3, 3}, {2, 2, 2}, {1, 1, 1}, {0, 0, 0}},  // MedNeXt: 2n − 1
      {3, 4, 5, 9, {5, 5, 5}, {2, 2, 2}, {2, 2, 2}, {1, 1, 1}},  // output padding: 2n
      {2, 3, 6, 5, {3, 3, 3}, {1, 2, 2}, {1, 1, 1}, {0, 1, 0}},
      {4, 2, 3, 11, {2, 2, 2}, {2, 2, 2}, {0, 0, 0}, {0, 0, 0}},
      {3, 3, 3, 4, {1, 1, 1}, {2, 2, 2}, {0, 0, 0}, {0, 0, 0}},
      {2, 4, 4, 6, {3, 1, 5}, {1, 1, 1}, {1, 0, 2}, {0, 0, 0}},
  };
  double worst = 0;
  for (const Case& c : cases) {
    const std::int64_t Do = (c.D - 1) * c.s[0] - 2 * c.p[0] + c.k[0] + c.extra[0],
                       Ho = (c.H - 1) * c.s[1] - 2 * c.p[1] + c.k[1] + c.extra[1],
                       Wo = (c.W - 1) * c.s[2] - 2 * c.p[2] + c.k[2] + c.extra[2];
    const std::int64_t ksp = c.k[0] * c.k[1] * c.k[2];
    std::vector<float> x(std::size_t(c.C * c.D * c.H * c.W)), w(std::size_t(c.C * ksp)), bias(std::size_t(c.C));
    for (std::size_t i = 0; i < x.size(); ++i) x[i] = float(std::sin(double(i) * 0.61));
    for (std::size_t i = 0; i < w.size(); ++i) w[i] = float(std::cos(double(i) * 0.37));
    for (std::size_t i = 0; i < bias.size(); ++i) bias[i] = float(i) * 0.25f - 0.5f;
    std::vector<double> want(std::size_t(c.C * Do * Ho * Wo));
    for (std::int64_t ch = 0; ch < c.C; ++ch) {
      for (std::int64_t v = 0; v < Do * Ho * Wo; ++v) want[std::size_t(ch * Do * Ho * Wo + v)] = bias[std::size_t(ch)];
      for (std::int64_t id = 0; id < c.D; ++id)
        for (std::int64_t ih = 0; ih < c.H; ++ih)
          for (std::int64_t iw = 0; iw < c.W; ++iw)
            for (std::int64_t a = 0; a < c.k[0]; ++a)
              for (std::int64_t b = 0; b < c.k[1]; ++b)
                for (std::int64_t e = 0; e < c.k[2]; ++e) {
                  const std::int64_t od = id * c.s[0] - c.p[0] + a, oh = ih * c.s[1] - c.p[1] + b,
                                     ow = iw * c.s[2] - c.p[2] + e;
                  if (od < 0 || od >= Do || oh < 0 || oh >= Ho || ow < 0 || ow >= Wo) continue;
                  want[std::size_t(((ch * Do + od) * Ho + oh) * Wo + ow)] +=
                      double(w[std::size_t(ch * ksp + (a * c.k[1] + b) * c.k[2] + e)]) *
                      x[std::size_t(((ch * c.D + id) * c.H + ih) * c.W + iw)];
                }
    }
    std::vector<float> y(want.size(), std::numeric_limits<float>::quiet_NaN());
    bhsd::conv_transpose3d_depthwise(c.C, c.D, c.H, c.W, c.k[0], c.k[1], c.k[2], c.s[0], c.s[1], c.s[2], c.p[0], c.p[1],
                                     c.p[2], Do, Ho, Wo, x.data(), w.data(), bias.data(), y.data(), pool);
    for (std::size_t i = 0; i < y.size(); ++i) worst = std::max(worst, std::fabs(double(y[i]) - want[i]));
  }
  std::printf("conv transpose depthwise: worst error %.3g against the scatter in double\n", worst);
  CHECK(worst < 1e-5);
}

// A strided 1×1×1 transposed convolution (MedNeXt's residual beside its up-sampling) against the
// definition in double: strides 2, (1, 2, 3), output padding; the places between take the bias.
static void test_conv_transpose_pointwise(bhsd::ThreadPool& pool) {
  struct Case {
    std::int64_t C, D, H, W, Co, s[3], extra[3];
  };
  const Case cases[] = {{6, 3, 4, 9, 5, {2, 2, 2}, {0, 0, 0}},
                        {3, 2, 5, 7, 8, {1, 2, 3}, {0, 1, 2}},
                        {17, 2, 3, 20, 2, {2, 2, 2}, {1, 1, 1}}};
  double worst = 0;
  for (const Case& c : cases) {
    const std::int64_t Do = (c.D - 1) * c.s[0] + 1 + c.extra[0], Ho = (c.H - 1) * c.s[1] + 1 + c.extra[1],
                       Wo = (c.W - 1) * c.s[2] + 1 + c.extra[2];
    std::vector<float> x(std::size_t(c.C * c.D * c.H * c.W)), w(std::size_t(c.C * c.Co)), bias(std::size_t(c.Co));
    for (std::size_t i = 0; i < x.size(); ++i) x[i] = float(std::sin(double(i) * 0.43));
    for (std::size_t i = 0; i < w.size(); ++i) w[i] = float(std::cos(double(i) * 0.29));
    for (std::size_t i = 0; i < bias.size(); ++i) bias[i] = float(i) * 0.5f - 1.0f;
    std::vector<double> want(std::size_t(c.Co * Do * Ho * Wo));
    for (std::int64_t o = 0; o < c.Co; ++o)
      for (std::int64_t v = 0; v < Do * Ho * Wo; ++v) want[std::size_t(o * Do * Ho * Wo + v)] = bias[std::size_t(o)];
    for (std::int64_t i = 0; i < c.C; ++i)
      for (std::int64_t o = 0; o < c.Co; ++o)
        for (std::int64_t id = 0; id < c.D; ++id)
          for (std::int64_t ih = 0; ih < c.H; ++ih)
            for (std::int64_t iw = 0; iw < c.W; ++iw)
              want[std::size_t(((o * Do + id * c.s[0]) * Ho + ih * c.s[1]) * Wo + iw * c.s[2])] +=
                  double(w[std::size_t(i * c.Co + o)]) * x[std::size_t(((i * c.D + id) * c.H + ih) * c.W + iw)];
    std::vector<float> y(want.size(), std::numeric_limits<float>::quiet_NaN());
    bhsd::conv_transpose3d_forward(c.C, c.D, c.H, c.W, c.Co, 1, 1, 1, c.s[0], c.s[1], c.s[2], 1, 1, 1, 0, 0, 0, Do, Ho,
                                   Wo, x.data(), w.data(), bias.data(), y.data(), pool);
    for (std::size_t i = 0; i < y.size(); ++i) worst = std::max(worst, std::fabs(double(y[i]) - want[i]));
  }
  std::printf("conv transpose 1x1x1 strided: worst error %.3g against the definition in double\n", worst);
  CHECK(worst < 1e-5);
}

static void test_conv_transpose_upsample(bhsd::ThreadPool& pool) {
  struct Case {
    std::int64_t C, D, H, W, Co, s[3];
  };
  const Case cases[] = {{5, 3, 4, 21, 7, {2, 2, 2}},
                        {3, 2, 5, 9, 16, {1, 2, 2}},
                        {4, 2, 3, 7, 3, {1, 1, 3}},
                        {6, 3, 2, 5, 4, {2, 1, 1}},
                        {600, 1, 2, 11, 2, {1, 2, 2}},
                        // wide enough for AMX tiles in a bf16 call (32 channels or more, 16 rows or
                        // more): a volume ending in a partial segment (222 voxels), a partial chunk of
                        // 32 channels (40), two blocks of the reduction (600), an odd count of row
                        // blocks with a partial one (17 × 2 = 34 rows)
                        {64, 2, 3, 37, 32, {1, 2, 2}},
                        {40, 3, 2, 9, 8, {2, 2, 2}},
                        {600, 1, 3, 20, 4, {1, 2, 2}},
                        {96, 2, 4, 16, 17, {1, 1, 2}}};
  std::uint32_t st = 31337;
  auto rnd = [&] {
    st = st * 1664525u + 1013904223u;
    return float(st >> 8) / float(1 << 24) - 0.5f;
  };
  auto b16 = [](float v) {
    const std::uint32_t u = std::uint32_t(bhsd::wino_detail::bf16_of(v)) << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
  };
  for (const Case& c : cases)
    for (int bf = 0; bf < (bhsd::amx_available() ? 2 : 1); ++bf) {
      const std::int64_t kd = c.s[0], kh = c.s[1], kw = c.s[2], ksp = kd * kh * kw;
      const std::int64_t Do = c.D * kd, Ho = c.H * kh, Wo = c.W * kw;
      std::vector<float> x(std::size_t(c.C * c.D * c.H * c.W)), w(std::size_t(c.C * c.Co * ksp)),
          bias(std::size_t(c.Co));
      for (auto& v : x) v = rnd();
      for (auto& v : w) v = rnd();
      for (auto& v : bias) v = rnd();
      // a bf16 call on tiles rounds the samples and weights to bf16 (products exact, sums fp32): its
      // reference is the float64 sum of the rounded operands
      const std::int64_t Cp = c.Co * ksp;
      const bool tiles = bf && c.C >= 32 && Cp >= 16;
      std::vector<float> xr(x), wr(w);
      if (tiles) {
        for (auto& v : xr) v = b16(v);
        for (auto& v : wr) v = b16(v);
      }
      const std::size_t no = std::size_t(c.Co * Do * Ho * Wo);
      std::vector<double> ref(no);
      for (std::int64_t o = 0; o < c.Co; ++o)
        for (std::size_t i = 0; i < std::size_t(Do * Ho * Wo); ++i)
          ref[std::size_t(o * Do * Ho * Wo) + i] = bias[std::size_t(o)];
      for (std::int64_t ci = 0; ci < c.C; ++ci)
        for (std::int64_t d = 0; d < c.D; ++d)
          for (std::int64_t h = 0; h < c.H; ++h)
            for (std::int64_t wv = 0; wv < c.W; ++wv)
              for (std::int64_t o = 0; o < c.Co; ++o)
                for (std::int64_t a = 0; a < kd; ++a)
                  for (std::int64_t b = 0; b < kh; ++b)
                    for (std::int64_t e = 0; e < kw; ++e)
                      ref[std::size_t(((o * Do + d * kd + a) * Ho + h * kh + b) * Wo + wv * kw + e)] +=
                          double(xr[std::size_t(((ci * c.D + d) * c.H + h) * c.W + wv)]) *
                          wr[std::size_t(((ci * c.Co + o) * kd + a) * kh * kw + b * kw + e)];
      std::vector<float> got(no, 9.0f);
      {
        bhsd::PrecisionScope ps(bf ? bhsd::Precision::bf16 : bhsd::Precision::fp32);
        bhsd::conv_transpose3d_forward(c.C, c.D, c.H, c.W, c.Co, kd, kh, kw, kd, kh, kw, 1, 1, 1, 0, 0, 0, Do, Ho, Wo,
                                       x.data(), w.data(), bias.data(), got.data(), pool);
      }
      double worst = 0;
      for (std::size_t i = 0; i < no; ++i) worst = std::max(worst, std::fabs(ref[i] - got[i]));
      CHECK(worst < 1e-4);
      if (tiles) {  // and not the fp32 answer: the tiles ran
        std::vector<float> f32(no, 7.0f);
        bhsd::conv_transpose3d_forward(c.C, c.D, c.H, c.W, c.Co, kd, kh, kw, kd, kh, kw, 1, 1, 1, 0, 0, 0, Do, Ho, Wo,
                                       x.data(), w.data(), bias.data(), f32.data(), pool);
        double diff = 0;
        for (std::size_t i = 0; i < no; ++i) diff = std::max(diff, double(std::fabs(f32[i] - got[i])));
        CHECK(diff > 1e-4);
      }
    }
  // The packed [Co·taps, C] matrix is kept in the weight cache by content: a second call finds it
  // (same output, bit for bit), and weights changed in place are a miss — one weight of input
  // channel 1, output channel 2, tap (1, 0, 1) raised by 1 moves exactly that tap's outputs of
  // channel 2, by channel 1's samples.
  {
    const std::int64_t C = 5, D = 3, H = 4, W = 21, Co = 7, k = 2, ksp = 8, Do = D * k, Ho = H * k, Wo = W * k;
    std::vector<float> x(std::size_t(C * D * H * W)), w(std::size_t(C * Co * ksp)), bias(static_cast<std::size_t>(Co));
    for (auto& v : x) v = rnd();
    for (auto& v : w) v = rnd();
    for (auto& v : bias) v = rnd();
    const std::size_t no = std::size_t(Co * Do * Ho * Wo);
    std::vector<float> a(no), b(no, 5.0f), c(no, 6.0f);
    auto run = [&](std::vector<float>& out) {
      bhsd::conv_transpose3d_forward(C, D, H, W, Co, k, k, k, k, k, k, 1, 1, 1, 0, 0, 0, Do, Ho, Wo, x.data(), w.data(),
                                     bias.data(), out.data(), pool);
    };
    auto& cache = bhsd::wino_detail::WeightCache::instance();
    cache.clear();  // (this test runs once per pool size: the same weights' entries from the last run)
    run(a);
    const std::size_t hits = cache.hits;
    run(b);
    CHECK(cache.hits == hits + 1);
    CHECK(a == b);
    w[std::size_t((1 * Co + 2) * ksp + 5)] += 1.0f;  // tap 5 = (a, b, e) = (1, 0, 1)
    const std::size_t misses = cache.misses;
    run(c);
    CHECK(cache.misses == misses + 1);
    double worst = 0;
    std::size_t moved = 0;
    for (std::int64_t o = 0; o < Co; ++o)
      for (std::int64_t od = 0; od < Do; ++od)
        for (std::int64_t oh = 0; oh < Ho; ++oh)
          for (std::int64_t ow = 0; ow < Wo; ++ow) {
            const std::size_t i = std::size_t(((o * Do + od) * Ho + oh) * Wo + ow);
            const bool tap = o == 2 && od % 2 == 1 && oh % 2 == 0 && ow % 2 == 1;
            const double want =
                tap ? double(a[i]) + x[std::size_t(((1 * D + od / 2) * H + oh / 2) * W + ow / 2)] : double(a[i]);
            worst = std::max(worst, std::fabs(double(c[i]) - want));
            moved += c[i] != a[i];
          }
    CHECK(worst < 1e-5);
    CHECK(moved == std::size_t(D * H * W));
  }
}

// Instance norm forward and backward against double-precision loops: several 1024-voxel blocks
// (a ragged last one), a mean far from zero, the LeakyReLU gate.
static void test_instance_norm(bhsd::ThreadPool& pool) {
  const std::int64_t N = 2, C = 3, S = 5000;
  std::uint32_t st = 4242;
  auto rnd = [&] {
    st = st * 1664525u + 1013904223u;
    return double(st >> 8) / double(1 << 24) - 0.5;
  };
  std::vector<float> x(std::size_t(N * C * S)), dy(x.size()), y(x.size()), dx(x.size());
  for (std::size_t i = 0; i < x.size(); ++i)
    x[i] = float(100.0 * double(i / S + 1) + 2.0 * rnd() + 0.3 * std::sin(double(i) * 0.01)), dy[i] = float(rnd());
  const float gamma[3] = {0.5f, 1.5f, -2.0f}, beta[3] = {0.1f, -0.2f, 0.3f};
  const double eps = 1e-5;
  const float alpha = 0.01f;
  bhsd::instance_norm(x.data(), y.data(), N, C, S, gamma, beta, eps, bhsd::Act::leaky, alpha, pool);
  float dgamma[3], dbeta[3];
  bhsd::instance_norm_backward(x.data(), y.data(), dy.data(), N, C, S, gamma, eps, alpha, dx.data(), dgamma, dbeta,
                               pool);
  // (n, c)'s mean and 1 / σ in double
  auto stats = [&](std::int64_t nc) {
    const float* p = x.data() + nc * S;
    double m = 0, v = 0;
    for (std::int64_t i = 0; i < S; ++i) m += p[i];
    m /= double(S);
    for (std::int64_t i = 0; i < S; ++i) v += (p[i] - m) * (p[i] - m);
    return std::array<double, 2>{m, 1.0 / std::sqrt(v / double(S) + eps)};
  };
  double wy = 0, wdx = 0, wdg = 0, wdb = 0, dg_ref[3] = {0, 0, 0}, db_ref[3] = {0, 0, 0};
  for (std::int64_t nc = 0; nc < N * C; ++nc) {
    const float* p = x.data() + nc * S;
    const std::int64_t c = nc % C;
    const auto [m, inv] = stats(nc);
    double sg = 0, sgx = 0;
    std::vector<double> g(static_cast<std::size_t>(S)), xh(static_cast<std::size_t>(S));
    for (std::int64_t i = 0; i < S; ++i) {
      xh[std::size_t(i)] = (p[i] - m) * inv;
      const double pre = xh[std::size_t(i)] * gamma[c] + beta[c], out = pre > 0 ? pre : pre * alpha;
      wy = std::max(wy, std::fabs(out - double(y[std::size_t(nc * S + i)])));
      g[std::size_t(i)] = pre > 0 ? dy[std::size_t(nc * S + i)] : dy[std::size_t(nc * S + i)] * alpha;
      sg += g[std::size_t(i)], sgx += g[std::size_t(i)] * xh[std::size_t(i)];
    }
    dg_ref[c] += sgx, db_ref[c] += sg;
    for (std::int64_t i = 0; i < S; ++i) {
      const double ref = gamma[c] * inv * (g[std::size_t(i)] - sg / double(S) - xh[std::size_t(i)] * sgx / double(S));
      wdx = std::max(wdx, std::fabs(ref - double(dx[std::size_t(nc * S + i)])) / (std::fabs(gamma[c]) * inv));
    }
  }
  for (int c = 0; c < 3; ++c)
    wdg = std::max(wdg, std::fabs(dg_ref[c] - dgamma[c])), wdb = std::max(wdb, std::fabs(db_ref[c] - dbeta[c]));
  CHECK(wy < 1e-4);
  CHECK(wdx < 1e-4);
  CHECK(wdg < 1e-3 && wdb < 1e-3);
  // in place (y = x, as after a fused convolution), for each activation: the out-of-place result
  for (bhsd::Act act : {bhsd::Act::none, bhsd::Act::relu, bhsd::Act::leaky}) {
    std::vector<float> ref(x.size()), z = x;
    bhsd::instance_norm(x.data(), ref.data(), N, C, S, gamma, beta, eps, act, alpha, pool);
    bhsd::instance_norm(z.data(), z.data(), N, C, S, gamma, beta, eps, act, alpha, pool);
    double worst = 0;
    for (std::size_t i = 0; i < z.size(); ++i) worst = std::max(worst, double(std::fabs(z[i] - ref[i])));
    CHECK(worst < 1e-5);
  }
  // a residual added in the norm's pass (in place, as after a fused convolution): the norm without
  // an activation, then binary's add with the activation, bit for bit; and within 1e-4 of double
  std::vector<float> r(x.size());
  for (auto& v : r) v = float(rnd());
  const std::int64_t shape[6] = {1, 1, 1, 1, 1, std::int64_t(x.size())}, one[6] = {0, 0, 0, 0, 0, 1};
  for (bhsd::Act act : {bhsd::Act::none, bhsd::Act::relu, bhsd::Act::leaky}) {
    // (in place, as after a fused convolution: the out-of-place loop is compiled per ISA and may
    // contract the affine into an FMA where the in-place one, on the baseline kernels, does not)
    std::vector<float> two = x, z = x;
    bhsd::instance_norm(two.data(), two.data(), N, C, S, gamma, beta, eps, bhsd::Act::none, 0.0f, pool);
    bhsd::binary(two.data(), r.data(), two.data(), shape, one, one, false, pool, act, alpha);
    bhsd::instance_norm(z.data(), z.data(), N, C, S, gamma, beta, eps, act, alpha, pool, r.data());
    CHECK(z == two);
    double worst = 0;
    for (std::int64_t nc = 0; nc < N * C; ++nc) {
      const float* p = x.data() + nc * S;
      const std::int64_t c = nc % C;
      const auto [m, inv] = stats(nc);
      for (std::int64_t i = 0; i < S; ++i) {
        const double pre = (p[i] - m) * inv * gamma[c] + beta[c] + r[std::size_t(nc * S + i)];
        const double want = act == bhsd::Act::none ? pre : pre > 0 ? pre : act == bhsd::Act::relu ? 0.0 : pre * alpha;
        worst = std::max(worst, std::fabs(want - double(z[std::size_t(nc * S + i)])));
      }
    }
    CHECK(worst < 1e-4);
  }
}

// Softmax over channels as segment() runs it (6 classes, a plane of voxels): the AVX2 path (four
// voxels, a vector exponential) against the per-voxel path with std::exp, which it replaced — the
// same floats but for a rare last-bit difference; exp4 itself within 2 ulp of std::exp over
// [−700, 0]; NaN, ±infinity and channels far below the largest as the per-voxel path gives them.
static void test_softmax_vector(bhsd::ThreadPool& pool) {
#ifdef BHSD_X86
  if (bhsd::ops_avx2()) {
    double worst_ulp = 0;
    for (int k = 0; k <= 200000; ++k) {
      const double v = -700.0 * k / 200000.0 - (k % 7) * 1e-9;
      const double got = bhsd::softmax_detail::exp1(std::max(v, -700.0)), want = std::exp(std::max(v, -700.0));
      worst_ulp = std::max(worst_ulp, std::fabs(got - want) / (std::nextafter(want, 1e308) - want));
    }
    std::printf("softmax: exp4 within %.2f ulp of std::exp on [-700, 0]\n", worst_ulp);
    CHECK(worst_ulp <= 2);
  }
#endif
  const std::int64_t C = 6, S = 4099;  // a tail of 3 voxels
  std::vector<float> x(std::size_t(2 * C * S));
  std::uint32_t r = 7;
  auto rnd = [&] { return float((r = r * 1664525u + 1013904223u) >> 8) / float(1 << 24); };
  for (auto& v : x) v = (rnd() - 0.5f) * 40.0f;
  const float inf = std::numeric_limits<float>::infinity(), nan = std::numeric_limits<float>::quiet_NaN();
  x[std::size_t(1 * S + 10)] = nan;                                        // voxel 10: a NaN in channel 1
  x[std::size_t(2 * S + 21)] = inf;                                        // voxel 21: +inf in channel 2
  for (std::int64_t c = 0; c < C; ++c) x[std::size_t(c * S + 33)] = -inf;  // voxel 33: all −inf
  x[std::size_t(3 * S + 45)] = -inf;                                       // voxel 45: one −inf
  x[std::size_t(4 * S + 57)] = -1000.0f;                                   // voxel 57: a channel 1000 below the others
  std::vector<float> y(x.size()), want(x.size()), inplace(x);
  bhsd::softmax_channels(x.data(), y.data(), 2, C, S, pool);
  bhsd::softmax_channels(inplace.data(), inplace.data(), 2, C, S, pool);
  for (std::int64_t n = 0; n < 2; ++n)
    for (std::int64_t i = 0; i < S; ++i)
      bhsd::softmax_detail::voxel(x.data() + n * C * S + i, want.data() + n * C * S + i, C, S);
  std::size_t differ = 0, special = 0, nan_mismatch = 0, inplace_mismatch = 0;
  double worst = 0;
  for (std::size_t i = 0; i < x.size(); ++i) {
    if (std::isnan(want[i]) || std::isnan(y[i])) {
      special += std::isnan(want[i]) && std::isnan(y[i]);
      nan_mismatch += !(std::isnan(want[i]) && std::isnan(y[i]));
    } else if (y[i] != want[i])
      ++differ, worst = std::max(worst, double(std::fabs(y[i] - want[i])));
    inplace_mismatch += std::memcmp(&y[i], &inplace[i], sizeof(float)) != 0;
  }
  CHECK(nan_mismatch == 0 && inplace_mismatch == 0);
  std::printf("softmax: %zu of %zu values differ from std::exp's (at most %.3g), %zu NaN alike\n", differ, x.size(),
              worst, special);
  CHECK(special > 0);
  CHECK(differ <= 4 && worst <= 1e-7);
  CHECK(y[std::size_t(4 * S + 57)] == 0.0f && y[std::size_t(3 * S + 45)] == 0.0f);

  // with a divisor per voxel (segment()'s window sums and weights): the softmax of the quotients
  // rounded to float, as dividing into a float array and then taking the softmax gives it
  std::vector<float> w(std::size_t(2 * S));
  for (auto& v : w) v = 0.5f + rnd() * 1.5f;
  w[7] = 0.0f;                                                     // voxel 7: x / 0 (±inf, or NaN)
  w[std::size_t(S + 8)] = std::numeric_limits<float>::infinity();  // voxel S + 8: x / inf = 0
  std::vector<float> q(x.size()), qwant(x.size()), qy(x.size()), qin(x);
  for (std::int64_t n = 0; n < 2; ++n)
    for (std::int64_t c = 0; c < C; ++c)
      for (std::int64_t i = 0; i < S; ++i) {
        const std::size_t k = std::size_t((n * C + c) * S + i);
        q[k] = float(double(x[k]) / double(w[std::size_t(n * S + i)]));
      }
  bhsd::softmax_channels(q.data(), qwant.data(), 2, C, S, pool);  // divided first, then the softmax
  bhsd::softmax_channels(x.data(), qy.data(), 2, C, S, pool, w.data());
  bhsd::softmax_channels(qin.data(), qin.data(), 2, C, S, pool, w.data());
  std::size_t qdiffer = 0;
  for (std::size_t i = 0; i < x.size(); ++i) {
    const bool same = (std::isnan(qwant[i]) && std::isnan(qy[i])) || qwant[i] == qy[i];
    qdiffer += !same;
    qdiffer += std::memcmp(&qy[i], &qin[i], sizeof(float)) != 0;
  }
  std::printf("softmax of quotients: %zu of %zu differ from dividing first\n", qdiffer, x.size());
  CHECK(qdiffer == 0);
  CHECK(std::isnan(qy[7]) || std::isinf(qy[7]) || qy[7] == 0.0f || qy[7] == 1.0f);

  // over contiguous rows (spatial 1: attention's keys, row4 where AVX2 runs), rows of 128 and of
  // 131 (a tail of 3), with a NaN, +inf, an all −inf row and a value 1000 below the rest among them
  for (const std::int64_t R : {std::int64_t(128), std::int64_t(131)}) {
    const std::int64_t rows = 67;
    std::vector<float> a(std::size_t(rows * R));
    for (auto& v : a) v = (rnd() - 0.5f) * 30.0f;
    a[std::size_t(3 * R + 5)] = nan;
    a[std::size_t(4 * R + R - 1)] = inf;  // in the tail where R = 131
    for (std::int64_t c = 0; c < R; ++c) a[std::size_t(5 * R + c)] = -inf;
    a[std::size_t(6 * R + 2)] = -1000.0f;
    a[std::size_t(7 * R + R - 2)] = nan;
    std::vector<float> b(a.size()), bw(a.size()), bin(a);
    bhsd::softmax_channels(a.data(), b.data(), rows, R, 1, pool);
    bhsd::softmax_channels(bin.data(), bin.data(), rows, R, 1, pool);
    for (std::int64_t n = 0; n < rows; ++n) bhsd::softmax_detail::voxel(a.data() + n * R, bw.data() + n * R, R, 1);
    std::size_t rdiffer = 0, rnan = 0, rnan_mismatch = 0, rin = 0;
    double rworst = 0;
    for (std::size_t i = 0; i < a.size(); ++i) {
      if (std::isnan(bw[i]) || std::isnan(b[i])) {
        rnan += std::isnan(bw[i]) && std::isnan(b[i]);
        rnan_mismatch += !(std::isnan(bw[i]) && std::isnan(b[i]));
      } else if (b[i] != bw[i])
        ++rdiffer, rworst = std::max(rworst, double(std::fabs(b[i] - bw[i])));
      rin += std::memcmp(&b[i], &bin[i], sizeof(float)) != 0;
    }
    std::printf("softmax over rows of %lld: %zu of %zu values differ from std::exp's (at most %.3g), %zu NaN alike\n",
                static_cast<long long>(R), rdiffer, a.size(), rworst, rnan);
    CHECK(rnan_mismatch == 0 && rin == 0 && rnan > 0);
    CHECK(rdiffer <= 4 && rworst <= 1e-7);
    CHECK(b[std::size_t(6 * R + 2)] == 0.0f);
    double rowsum = 0;
    for (std::int64_t c = 0; c < R; ++c) rowsum += b[std::size_t(10 * R + c)];
    CHECK(std::fabs(rowsum - 1.0) < 1e-5);
  }
}

// The transformer paths of tensor_ops: GELU (erf and tanh forms), softmax over contiguous rows
// (attention: C keys, spatial 1) and over channels, and a group norm over [rows, features, 1] (a
// layer norm), each against the formula in double precision.
static void test_transformer_ops(bhsd::ThreadPool& pool) {
  std::vector<float> x(37 * 96);
  for (std::size_t i = 0; i < x.size(); ++i) x[i] = float(std::sin(double(i) * 0.37) * 4.0 + 0.1);
  std::vector<float> y(x.size());
  double worst = 0;
  bhsd::unary(x.data(), y.data(), 1, 37, 96, bhsd::Unary::gelu, float(std::sqrt(2.0)), nullptr, 0, pool);
  for (std::size_t i = 0; i < x.size(); ++i)
    worst = std::max(worst, std::abs(y[i] - 0.5 * x[i] * (1 + std::erf(double(x[i]) / std::sqrt(2.0)))));
  CHECK(worst < 4e-6);
#ifdef BHSD_X86
  if (bhsd::ops_avx2()) {
    // verf against std::erf in double, in ulps of the float nearest erf, over every 1024th float of
    // (−5, 5) (both branches, their edges and the clamp), on each vector width the machine has
    std::vector<float> ex;
    const auto add = [&](float v) { ex.push_back(v), ex.push_back(-v); };
    for (std::uint32_t b = 0; b < 0x40a00000u; b += 1024) {  // (0x40a00000: 5.0f)
      float v;
      std::memcpy(&v, &b, sizeof v);
      add(v);
    }
    for (float v = 0.999f; v < 1.001f; v = std::nextafter(v, 2.0f)) add(v);
    for (float v = 3.915f; v < 3.925f; v = std::nextafter(v, 4.0f)) add(v);
    ex.resize((ex.size() + 15) / 16 * 16, 0.5f);
    std::vector<float> ey(ex.size());
    for (int wide = 0; wide < 2; ++wide) {
      if (wide && !bhsd::ops_avx512()) continue;
      (wide ? bhsd::gelu_detail::erf_avx512 : bhsd::gelu_detail::erf_avx2)(ex.data(), ey.data(),
                                                                           std::int64_t(ex.size()));
      double ulps = 0;
      float at = 0;
      for (std::size_t i = 0; i < ex.size(); ++i) {
        const double want = std::erf(double(ex[i]));
        const float wf = float(want);
        const double ulp = std::max(double(std::nextafter(std::fabs(wf), 2.0f)) - std::fabs(wf), 1e-45);
        const double d = std::fabs(double(ey[i]) - want) / ulp;
        if (d > ulps) ulps = d, at = ex[i];
      }
      std::printf("gelu: erf (%s) within %.2f ulp of std::erf over %zu floats (worst at %.7g)\n",
                  wide ? "avx512" : "avx2", ulps, ex.size(), double(at));
      CHECK(ulps <= 2.5);
    }
    const float inf = std::numeric_limits<float>::infinity();
    std::vector<float> g = {std::numeric_limits<float>::quiet_NaN(),
                            inf,
                            -inf,
                            0.0f,
                            -0.0f,
                            0.7071067f,
                            -0.7071068f,
                            5.656854f,
                            -5.656855f,
                            1e-30f,
                            -1e30f,
                            3.0f,
                            -3.0f};
    for (int k = 0; k < 2000; ++k) g.push_back(float(std::sin(k * 0.731) * 9.0));
    g.push_back(0.25f), g.push_back(-2.5f), g.push_back(7.0f);  // (the count is 2016: no tail; one more makes 3)
    g.resize(g.size() + 3, -1.25f);
    std::vector<float> gy(g.size());
    const float alpha = float(std::sqrt(2.0));
    for (int wide = 0; wide < 2; ++wide) {
      if (wide && !bhsd::ops_avx512()) continue;
      (wide ? bhsd::gelu_detail::row_avx512 : bhsd::gelu_detail::row_avx2)(g.data(), gy.data(), std::int64_t(g.size()),
                                                                           alpha);
      std::size_t gdiffer = 0, gbad = 0;
      double gworst = 0;
      for (std::size_t i = 0; i < g.size(); ++i) {
        const float want = 0.5f * g[i] * (1.0f + std::erf(g[i] / alpha));
        if (std::isnan(want) || std::isnan(gy[i])) {
          gbad += !(std::isnan(want) && std::isnan(gy[i]));
          continue;
        }
        if (want != gy[i])
          ++gdiffer, gworst = std::max(gworst, double(std::fabs(want - gy[i])) / std::max(1.0f, std::fabs(want)));
      }
      std::printf("gelu (%s): %zu of %zu values differ from std::erf's (at most %.3g relative)\n",
                  wide ? "avx512" : "avx2", gdiffer, g.size(), gworst);
      CHECK(gbad == 0 && gworst <= 2.5e-7);
      CHECK(gy[1] == inf && std::isnan(gy[2]) && gy[3] == 0.0f && gy[7] == g[7] &&
            gy[8] == 0.0f);  // (−inf · 0, as the scalar loop gives)
    }
    // the sigmoid's row against the scalar formula in double, value by value (the same floats but
    // where exp4's last-ulp differences cross a float's rounding boundary), and at its extremes
    std::vector<float> sg = g;
    for (float v : {-700.0f, -701.0f, -89.0f, -88.7f, -20.0f, 20.0f, 88.7f, 1e-7f, -1e-7f}) sg.push_back(v);
    sg.push_back(-3e38f);  // (a tail of 2 after the vectors)
    std::vector<float> sy(sg.size());
    bhsd::unary(sg.data(), sy.data(), 1, 1, std::int64_t(sg.size()), bhsd::Unary::sigmoid, 0, nullptr, 0, pool);
    std::size_t sdiffer = 0, sbad = 0;
    for (std::size_t i = 0; i < sg.size(); ++i) {
      const float want = float(1.0 / (1.0 + std::exp(-double(sg[i]))));
      if (std::isnan(want) || std::isnan(sy[i])) {
        sbad += !(std::isnan(want) && std::isnan(sy[i]));
        continue;
      }
      if (want != sy[i]) sbad += std::fabs(want - sy[i]) > 1.2e-7f * std::fabs(want), ++sdiffer;
    }
    std::printf("sigmoid: %zu of %zu values differ from std::exp's by an ulp, %zu by more\n", sdiffer, sg.size(), sbad);
    CHECK(sbad == 0 && sdiffer <= 2);
    CHECK(std::isnan(sy[0]) && sy[1] == 1.0f && sy[2] == 0.0f && sy[3] == 0.5f && sy[4] == 0.5f && sy.back() == 0.0f);
    // the AVX-512 row (eight lanes of exp4's steps) against the AVX2 one, bit for bit, over a sweep
    // of the float range (every 40009th bit pattern: NaNs, infinities, subnormals, both signs)
    if (bhsd::ops_avx512()) {
      std::vector<float> sw(sg);
      for (std::uint64_t b = 0; b < 0xFFFFFFFFull; b += 40009) {
        const std::uint32_t u = std::uint32_t(b);
        float f;
        std::memcpy(&f, &u, sizeof f);
        sw.push_back(f);
      }
      std::vector<float> a(sw.size()), w(sw.size());
      bhsd::sigmoid_detail::row_avx2(sw.data(), a.data(), std::int64_t(sw.size()));
      bhsd::sigmoid_detail::row_avx512(sw.data(), w.data(), std::int64_t(sw.size()));
      std::size_t differ = 0;
      for (std::size_t i = 0; i < sw.size(); ++i) differ += std::memcmp(&a[i], &w[i], sizeof(float)) != 0;
      std::printf("sigmoid (avx512 against avx2): %zu of %zu values differ in a bit\n", differ, sw.size());
      CHECK(differ == 0);
    }
  }
#endif
  worst = 0;
  bhsd::unary(x.data(), y.data(), 1, 37, 96, bhsd::Unary::gelu_tanh, 0, nullptr, 0, pool);
  const double k = std::sqrt(2 / 3.141592653589793);
  for (std::size_t i = 0; i < x.size(); ++i) {
    const double v = x[i];
    worst = std::max(worst, std::abs(y[i] - 0.5 * v * (1 + std::tanh(k * (v + 0.044715 * v * v * v)))));
  }
  CHECK(worst < 4e-6);
  for (const auto& [N, C, S] : {std::array<std::int64_t, 3>{37, 96, 1}, std::array<std::int64_t, 3>{2, 6, 296}}) {
    bhsd::softmax_channels(x.data(), y.data(), N, C, S, pool);
    worst = 0;
    for (std::int64_t n = 0; n < N; ++n)
      for (std::int64_t i = 0; i < S; ++i) {
        double m = -1e300, sum = 0;
        for (std::int64_t c = 0; c < C; ++c) m = std::max(m, double(x[(n * C + c) * S + i]));
        for (std::int64_t c = 0; c < C; ++c) sum += std::exp(x[(n * C + c) * S + i] - m);
        for (std::int64_t c = 0; c < C; ++c)
          worst = std::max(worst, std::abs(y[(n * C + c) * S + i] - std::exp(x[(n * C + c) * S + i] - m) / sum));
      }
    CHECK(worst < 1e-6);
  }
  std::vector<float> scale(96), bias(96);
  for (int c = 0; c < 96; ++c) scale[c] = 0.5f + 0.01f * float(c), bias[c] = 0.1f * float(c % 7) - 0.3f;
  for (const auto act : {bhsd::Act::none, bhsd::Act::leaky}) {
    bhsd::group_norm(x.data(), y.data(), 37, 96, 1, 1, scale.data(), bias.data(), 1e-5, act, 0.01f, pool);
    worst = 0;
    for (int r = 0; r < 37; ++r) {
      double m = 0, v = 0;
      for (int c = 0; c < 96; ++c) m += x[r * 96 + c];
      m /= 96;
      for (int c = 0; c < 96; ++c) v += (x[r * 96 + c] - m) * (x[r * 96 + c] - m);
      v /= 96;
      for (int c = 0; c < 96; ++c) {
        double want = (x[r * 96 + c] - m) / std::sqrt(v + 1e-5) * scale[c] + bias[c];
        if (act == bhsd::Act::leaky && want < 0) want *= 0.01;
        worst = std::max(worst, std::abs(y[r * 96 + c] - want));
      }
    }
    CHECK(worst < 1e-5);
  }
}

// gemm against a double-precision sum, on sizes that leave partial panels everywhere (rows, columns
// and K blocks), batched with B per item and shared; out-of-tile memory is left untouched.
static void test_gemm(bhsd::ThreadPool& pool) {
  int bad = 0, cases = 0;
  for (const auto& [T, M, K, N] :
       {std::array<std::int64_t, 4>{1, 13, 37, 45}, std::array<std::int64_t, 4>{2, 97, 200, 33},
        std::array<std::int64_t, 4>{3, 8, 16, 32}, std::array<std::int64_t, 4>{1, 130, 400, 270},
        std::array<std::int64_t, 4>{2, 1, 1, 1}, std::array<std::int64_t, 4>{1, 300, 396, 77}}) {
    // (the last: rows in four tiles of 96 sharing one packing of B, K in three even blocks of 132)
    for (const bool bb : {false, true}) {
      std::vector<float> a(std::size_t(T * M * K)), b(std::size_t((bb ? T : 1) * K * N)),
          c(std::size_t(T * M * N + 8), 7.0f);
      for (std::size_t i = 0; i < a.size(); ++i) a[i] = float(std::sin(double(i) * 0.61));
      for (std::size_t i = 0; i < b.size(); ++i) b[i] = float(std::cos(double(i) * 0.37));
      // with a bias (one value per column) where B is batched, without where it is shared
      std::vector<float> bias(static_cast<std::size_t>(N));
      for (std::size_t j = 0; j < bias.size(); ++j) bias[j] = float(j % 5) - 1.5f;
      bhsd::gemm(a.data(), b.data(), c.data(), T, M, K, N, bb, pool, bb ? bias.data() : nullptr);
      ++cases;
      for (std::int64_t t = 0; t < T; ++t)
        for (std::int64_t i = 0; i < M; ++i)
          for (std::int64_t j = 0; j < N; ++j) {
            double want = bb ? bias[std::size_t(j)] : 0.0;
            for (std::int64_t k = 0; k < K; ++k)
              want += double(a[(t * M + i) * K + k]) * b[((bb ? t : 0) * K + k) * N + j];
            if (std::abs(c[(t * M + i) * N + j] - want) > 1e-5 * (1 + std::sqrt(double(K)))) ++bad;
          }
      for (std::size_t i = std::size_t(T * M * N); i < c.size(); ++i) bad += c[i] != 7.0f;
    }
  }
  CHECK(cases == 12);
  CHECK(bad == 0);
}

// transpose_last2() against the definition: shapes on and off the 32 × 32 tiles, a guard after out.
static void test_transpose_last2(bhsd::ThreadPool& pool) {
  for (const auto& sh : {std::array<std::int64_t, 3>{1, 1, 1}, {2, 33, 65}, {3, 64, 31}, {1, 257, 300}}) {
    const auto [o, r, c] = sh;
    std::vector<float> x(o * r * c), y(o * r * c + 1, 7.0f);
    for (std::size_t i = 0; i < x.size(); ++i) x[i] = float(i) * 0.5f - 3.0f;
    bhsd::transpose_last2(x.data(), y.data(), o, r, c, pool);
    bool same = y.back() == 7.0f;
    for (std::int64_t b = 0; b < o; ++b)
      for (std::int64_t i = 0; i < r; ++i)
        for (std::int64_t j = 0; j < c; ++j) same = same && y[(b * c + j) * r + i] == x[(b * r + i) * c + j];
    CHECK(same);
  }
}

// selective_scan() and mamba_conv() against a double reference written from their definitions
// (mamba_ssm's selective_scan_ref and Mamba's conv1d path): channels on and off whole vectors,
// states of 16 and 5, deltas past softplus's threshold of 20 and far below 0; one guard value after
// out unchanged.
static void test_ssm(bhsd::ThreadPool& pool) {
  struct Case {
    std::int64_t B, L, Di, N, R, K;
  };
  double worst = 0, worst_conv = 0;
  for (const Case cs : {Case{2, 50, 37, 16, 3, 4}, Case{1, 200, 64, 16, 4, 4}, Case{1, 33, 5, 5, 1, 3}}) {
    const auto [B, L, Di, N, R, K] = cs;
    std::uint64_t seed = 0x9E3779B97F4A7C15ull ^ std::uint64_t(Di * 131 + L);
    auto rnd = [&seed](double lo, double hi) {
      seed = seed * 6364136223846793005ull + 1442695040888963407ull;
      return lo + (hi - lo) * double(seed >> 11) / double(1ull << 53);
    };
    std::vector<float> u(B * L * Di), delta(B * L * Di), a_log(Di * N), xdbl(B * L * (R + 2 * N)), d(Di),
        xz(B * L * 2 * Di), w(Di * K), bias(Di);
    for (auto& v : u) v = float(rnd(-2, 2));
    for (std::size_t i = 0; i < delta.size(); ++i)
      delta[i] = float(i % 97 == 0 ? rnd(20, 30) : i % 89 == 0 ? rnd(-60, -20) : rnd(-4, 3));
    for (auto& v : a_log) v = float(rnd(-1, 3));
    for (auto& v : xdbl) v = float(rnd(-1.5, 1.5));
    for (auto& v : d) v = float(rnd(0, 2));
    for (auto& v : xz) v = float(rnd(-6, 6));
    for (auto& v : w) v = float(rnd(-1, 1));
    for (auto& v : bias) v = float(rnd(-0.5, 0.5));
    std::vector<float> out(B * L * Di + 1, 7.0f), conv(B * L * Di + 1, 7.0f);
    bhsd::selective_scan(u.data(), delta.data(), a_log.data(), xdbl.data(), d.data(), xz.data(), out.data(), B, L, Di,
                         N, R, pool);
    bhsd::mamba_conv(xz.data(), w.data(), bias.data(), conv.data(), B, L, Di, K, pool);
    CHECK(out.back() == 7.0f && conv.back() == 7.0f);
    auto silu = [](double v) { return v / (1 + std::exp(-v)); };
    double scale = 0, err = 0, cscale = 0, cerr = 0;
    for (std::int64_t b = 0; b < B; ++b)
      for (std::int64_t c = 0; c < Di; ++c) {
        std::vector<double> h(N, 0.0);
        for (std::int64_t l = 0; l < L; ++l) {
          const std::int64_t t = b * L + l;
          const double dv = delta[t * Di + c], dt = dv > 20 ? dv : std::log1p(std::exp(dv)), uv = u[t * Di + c];
          double y = 0;
          for (std::int64_t k = 0; k < N; ++k) {
            const double A = -double(float(std::exp(double(a_log[c * N + k]))));
            h[k] = std::exp(dt * A) * h[k] + dt * uv * xdbl[t * (R + 2 * N) + R + k];
            y += h[k] * xdbl[t * (R + 2 * N) + R + N + k];
          }
          const double want = (y + uv * d[c]) * silu(xz[t * 2 * Di + Di + c]);
          scale = std::max(scale, std::fabs(want));
          err = std::max(err, std::fabs(want - out[t * Di + c]));
          double s = bias[c];
          for (std::int64_t k = 0; k < K; ++k)
            if (l - (K - 1) + k >= 0) s += double(w[c * K + k]) * xz[(t - (K - 1) + k) * 2 * Di + c];
          cscale = std::max(cscale, std::fabs(silu(s)));
          cerr = std::max(cerr, std::fabs(silu(s) - conv[t * Di + c]));
        }
      }
    worst = std::max(worst, err / scale);
    worst_conv = std::max(worst_conv, cerr / cscale);
  }
  std::printf("selective scan (%s): worst error %.3g of scale; causal conv: %.3g\n", bhsd::ssm_detail::kernel_name(),
              worst, worst_conv);
  CHECK(worst < 2e-6);
  CHECK(worst_conv < 1e-6);
}

// attention() against a double reference of the unfused steps (q·kᵀ, scale, the additive terms,
// softmax, · v): shapes with n and hd on and off whole vectors, heads split into row blocks (one
// item), the scale on q or on the products, two additive terms (one shared by every query row);
// a row with a NaN, and one all −∞, come out NaN; nothing outside out is written. Each case runs
// twice: as the default takes it (these small cases: all keys one tile), and in tiles of 256 keys
// with the online softmax (tile_bytes 0), where one row's first 300 keys are masked out (−∞: its
// first tile adds nothing) and the running maximum rises from tile to tile.
static void test_attention(bhsd::ThreadPool& pool) {
  int bad = 0, nan_ok = 0, cases = 0;
  double worst = 0;
  struct Case {
    std::int64_t batch, n, heads, hd;
    bool scale_q;
    int extras;
    bool rope = false;  // a rotary table (timm's EVA: pairs of channels, Primus's head width 66)
  };
  for (const Case& c : {Case{3, 343, 3, 16, true, 2}, Case{1, 37, 12, 64, false, 0}, Case{2, 20, 2, 5, false, 1},
                        Case{5, 16, 1, 33, true, 2}, Case{1, 1, 1, 1, false, 0}, Case{1, 130, 2, 48, true, 1},
                        Case{2, 50, 3, 66, true, 1, true}, Case{1, 37, 2, 12, false, 0, true},
                        Case{1, 700, 2, 66, true, 1, true}, Case{2, 600, 1, 40, false, 2}})
    for (const bool tiled : {false, true}) {
      const std::int64_t B = c.batch, n = c.n, H = c.heads, hd = c.hd;
      std::vector<float> qkv(std::size_t(B * n * 3 * H * hd)), out(std::size_t(B * n * H * hd + 8), 7.0f);
      for (std::size_t i = 0; i < qkv.size(); ++i) qkv[i] = float(std::sin(double(i) * 0.713) * 2.0);
      const float scale = float(1.0 / std::sqrt(double(hd)));
      // extra 0: per head, shared across the batch ([H, n, n]); extra 1: per batch item, one row ([B, 1, n])
      std::vector<float> e0(std::size_t(H * n * n)), e1(std::size_t(B * n));
      for (std::size_t i = 0; i < e0.size(); ++i) e0[i] = float(std::cos(double(i) * 0.3) + double(i % n) * 0.004);
      if (n > 300)
        for (std::int64_t j = 0; j < 300; ++j) e0[std::size_t(3 * n + j)] = -std::numeric_limits<float>::infinity();
      for (std::size_t i = 0; i < e1.size(); ++i) e1[i] = (i % 7 == 3) ? -100.0f : 0.0f;
      std::vector<std::int64_t> o0(std::size_t(B * H)), o1(std::size_t(B * H));
      for (std::int64_t b = 0; b < B; ++b)
        for (std::int64_t h = 0; h < H; ++h) o0[std::size_t(b * H + h)] = h * n * n, o1[std::size_t(b * H + h)] = b * n;
      const bhsd::AttentionExtra ex[2] = {{e0.data(), o0.data(), n}, {e1.data(), o1.data(), 0}};
      // token j's cos (hd values) then signed sin: an angle per pair of channels
      std::vector<float> rope(std::size_t(n * 2 * hd));
      for (std::int64_t j = 0; j < n; ++j)
        for (std::int64_t t = 0; t < hd; ++t) {
          const double ang =
              double(j % 9) * std::pow(10000.0, -double(t / 2) / double(hd / 2 + 1)) + 0.1 * double(j / 9);
          rope[std::size_t(j * 2 * hd + t)] = float(std::cos(ang));
          rope[std::size_t(j * 2 * hd + hd + t)] = float(t % 2 ? std::sin(ang) : -std::sin(ang));
        }
      bhsd::AttentionShape sh{B, n, H, hd, scale, c.scale_q};
      if (c.rope) sh.rope = rope.data();
      if (tiled) sh.tile_bytes = 0;
      bhsd::attention(qkv.data(), out.data(), sh, ex, c.extras, pool);
      ++cases;
      const std::int64_t row = 3 * H * hd;
      std::vector<double> s(static_cast<std::size_t>(n));
      // q or k of token j, rotated where the case has a table
      auto rotated = [&](const float* x, std::int64_t j, std::int64_t t) {
        if (!c.rope) return double(x[t]);
        const float* r = rope.data() + j * 2 * hd;
        return double(x[t]) * r[t] + double(x[t ^ 1]) * r[hd + t];
      };
      for (std::int64_t b = 0; b < B; ++b)
        for (std::int64_t h = 0; h < H; ++h)
          for (std::int64_t i = 0; i < n; ++i) {
            const float* q = qkv.data() + (b * n + i) * row + h * hd;
            double m = -1e300;
            for (std::int64_t j = 0; j < n; ++j) {
              const float* k = qkv.data() + (b * n + j) * row + H * hd + h * hd;
              double d = 0;
              for (std::int64_t t = 0; t < hd; ++t)
                d += rotated(q, i, t) * (c.scale_q ? scale : 1.0) * rotated(k, j, t);
              if (!c.scale_q) d *= scale;
              if (c.extras > 0) d += e0[std::size_t(h * n * n + i * n + j)];
              if (c.extras > 1) d += e1[std::size_t(b * n + j)];
              s[std::size_t(j)] = d;
              m = std::max(m, d);
            }
            double sum = 0;
            for (auto& v : s) sum += (v = std::exp(v - m));
            for (std::int64_t t = 0; t < hd; ++t) {
              double want = 0;
              for (std::int64_t j = 0; j < n; ++j)
                want += s[std::size_t(j)] / sum * qkv[std::size_t((b * n + j) * row + 2 * H * hd + h * hd + t)];
              const double got = out[std::size_t(((b * n + i) * H + h) * hd + t)], err = std::abs(got - want);
              worst = std::max(worst, err);
              if (!(err <= 2e-5 * (1 + std::abs(want)))) ++bad;
            }
          }
      for (std::size_t i = std::size_t(B * n * H * hd); i < out.size(); ++i) bad += out[i] != 7.0f;
      // a NaN in one query's scores, and a row all −∞, give NaN rows there only
      if (c.extras > 0 && n > 2) {
        e0[std::size_t(1 * n + 2)] = std::numeric_limits<float>::quiet_NaN();
        for (std::int64_t j = 0; j < n; ++j) e0[std::size_t(2 * n + j)] = -std::numeric_limits<float>::infinity();
        bhsd::attention(qkv.data(), out.data(), sh, ex, c.extras, pool);
        bool ok = true;
        for (std::int64_t i = 0; i < n; ++i)
          for (std::int64_t t = 0; t < hd; ++t) {
            const float v = out[std::size_t(((0 * n + i) * H + 0) * hd + t)];
            ok = ok && ((i == 1 || i == 2) ? std::isnan(v) : std::isfinite(v));
          }
        nan_ok += ok;
      }
    }
  std::printf("attention (%s kernel): worst error %.3g against double\n", bhsd::attention_kernel_name(), worst);
  CHECK(cases == 20);
  CHECK(nan_ok == 14);
  CHECK(bad == 0);
}

// read_scaled: a temporary file of int16 voxels after a 352-byte header, read and scaled in chunks
// across the pool (several 1 MB chunks and a partial one) against the same arithmetic here (the
// multiply and the add each rounded in double, as numpy does); a read past the end throws.
// pool3d against pool_voxel (the shared per-voxel rule the CUDA kernel also runs), bit for bit:
// its windows inside the input take a loop without bounds checks, the border pool_voxel. Paddings,
// strides, dilations, count_include_pad, max with NaN, extents where no window is inside, the AVX2
// two-column average. And
// binary's contiguous rows (the AVX2 path) against the plain sum and activation, in place too.
static void test_pool_and_binary(bhsd::ThreadPool& pool) {
  Uniform rnd{4242u};
  struct Case {
    std::int64_t D, H, W, k[3], s[3], d[3], p[3];
  };
  const Case cases[] = {{4, 9, 37, {1, 2, 2}, {1, 2, 2}, {1, 1, 1}, {0, 0, 0}},
                        {5, 8, 21, {3, 3, 3}, {2, 2, 2}, {1, 1, 1}, {1, 1, 1}},
                        {6, 7, 19, {2, 3, 2}, {1, 2, 1}, {2, 1, 2}, {0, 1, 1}},
                        {3, 4, 3, {3, 3, 5}, {1, 1, 1}, {1, 1, 1}, {1, 1, 2}},
                        // the AVX2 two-column average (k = s = 2 along W) past a padded W border
                        {5, 6, 23, {2, 2, 2}, {2, 2, 2}, {1, 1, 1}, {1, 0, 1}}};
  for (const Case& c : cases)
    for (int mode = 0; mode < 3; ++mode) {  // max, average, average counting the padding
      const bool mx = mode == 0, cip = mode == 2;
      std::int64_t o[3];
      const std::int64_t in[3] = {c.D, c.H, c.W};
      for (int a = 0; a < 3; ++a) o[a] = (in[a] + 2 * c.p[a] - c.d[a] * (c.k[a] - 1) - 1) / c.s[a] + 1;
      const std::int64_t NC = 2;
      std::vector<float> x(std::size_t(NC * c.D * c.H * c.W)), y(std::size_t(NC * o[0] * o[1] * o[2]), 7.0f);
      for (auto& v : x) v = rnd();
      x[3] = std::nanf("");
      bhsd::pool3d(x.data(), y.data(), NC, c.D, c.H, c.W, o[0], o[1], o[2], c.k, c.s, c.d, c.p, mx, cip, pool);
      const bhsd::hd::PoolGeom g{{c.D, c.H, c.W},
                                 {c.k[0], c.k[1], c.k[2]},
                                 {c.s[0], c.s[1], c.s[2]},
                                 {c.d[0], c.d[1], c.d[2]},
                                 {c.p[0], c.p[1], c.p[2]}};
      std::int64_t bad = 0;
      for (std::int64_t nc = 0; nc < NC; ++nc)
        for (std::int64_t od = 0; od < o[0]; ++od)
          for (std::int64_t oh = 0; oh < o[1]; ++oh)
            for (std::int64_t ow = 0; ow < o[2]; ++ow) {
              const float want = bhsd::hd::pool_voxel(x.data() + nc * c.D * c.H * c.W, g, od, oh, ow, mx, cip);
              const float got = y[std::size_t(((nc * o[0] + od) * o[1] + oh) * o[2] + ow)];
              if (std::memcmp(&want, &got, sizeof(float)) != 0) ++bad;
            }
      CHECK(bad == 0);
    }
  for (int act = 0; act < 3; ++act)
    for (bool mul : {false, true}) {
      const std::int64_t n = 3 * 37;
      std::vector<float> a(n), b(n), y(n), want(n);
      for (auto& v : a) v = rnd();
      for (auto& v : b) v = rnd();
      a[5] = std::nanf(""), a[36] = std::nanf(""), a[40] = 0.0f, b[40] = -0.0f;
      for (std::int64_t i = 0; i < n; ++i) {
        const float v = mul ? a[std::size_t(i)] * b[std::size_t(i)] : a[std::size_t(i)] + b[std::size_t(i)];
        want[std::size_t(i)] = act == 0 ? v : v > 0 ? v : act == 1 ? 0.0f : v * 0.01f;
      }
      const std::int64_t shape[6] = {1, 1, 1, 1, 3, 37}, str[6] = {0, 0, 0, 0, 37, 1};
      bhsd::binary(a.data(), b.data(), y.data(), shape, str, str, mul, pool, bhsd::Act(act), 0.01f);
      CHECK(std::memcmp(y.data(), want.data(), n * sizeof(float)) == 0);
      bhsd::binary(a.data(), b.data(), a.data(), shape, str, str, mul, pool, bhsd::Act(act), 0.01f);  // in place
      CHECK(std::memcmp(a.data(), want.data(), n * sizeof(float)) == 0);
    }
  // broadcasting shapes whose axes merge in part (size-1 axes, runs of broadcast axes, a broadcast
  // inner axis), large enough to be split by elements inside rows; against the index arithmetic
  const std::int64_t shapes[][6] = {{1, 1, 3, 5, 7, 4099},  {2, 3, 1, 4, 5, 6},   {1, 7, 3, 1, 1, 2311},
                                    {1, 1, 1, 1, 1, 40000}, {3, 1, 2, 9, 17, 33}, {1, 1, 1, 1, 1, 1}};
  for (const auto& sh : shapes)
    for (int pattern = 0; pattern < 5; ++pattern) {
      // which axes each operand broadcasts along (a bit per axis; 0x20 the inner one: a stride-0
      // row, as a per-channel scale or bias is)
      const unsigned bmask = pattern == 0   ? 0u
                             : pattern == 1 ? 0x21u
                             : pattern == 2 ? 0x0cu
                             : pattern == 3 ? 0x1eu
                                            : 0u;
      const unsigned amask = pattern == 3 ? 0x01u : pattern == 4 ? 0x22u : 0u;
      std::int64_t la = 1, lb = 1, stra[6], strb[6], n = 1;
      for (int i = 5; i >= 0; --i) {
        const bool ba = (amask >> i) & 1u, bb = (bmask >> i) & 1u;
        stra[i] = ba || sh[i] == 1 ? 0 : la;
        strb[i] = bb || sh[i] == 1 ? 0 : lb;
        la *= ba ? 1 : sh[i];
        lb *= bb ? 1 : sh[i];
        n *= sh[i];
      }
      std::vector<float> a(static_cast<std::size_t>(la)), b(static_cast<std::size_t>(lb)),
          y(static_cast<std::size_t>(n), 7.0f), want(static_cast<std::size_t>(n));
      for (auto& v : a) v = rnd();
      for (auto& v : b) v = rnd();
      std::int64_t bad = 0;
      for (int act = 0; act < 3; ++act)
        for (bool mul : {false, true}) {
          for (std::int64_t o = 0; o < n; ++o) {
            std::int64_t rem = o, oa = 0, ob = 0;
            for (int i = 5; i >= 0; --i) {
              const std::int64_t k = rem % sh[i];
              rem /= sh[i];
              oa += k * stra[i], ob += k * strb[i];
            }
            const float v = mul ? a[std::size_t(oa)] * b[std::size_t(ob)] : a[std::size_t(oa)] + b[std::size_t(ob)];
            want[std::size_t(o)] = act == 0 ? v : v > 0 ? v : act == 1 ? 0.0f : v * 0.01f;
          }
          bhsd::binary(a.data(), b.data(), y.data(), sh, stra, strb, mul, pool, bhsd::Act(act), 0.01f);
          if (std::memcmp(y.data(), want.data(), std::size_t(n) * sizeof(float)) != 0) ++bad;
          if (amask == 0) {  // a of the output's shape: in place, as a residual block's sum is taken
            std::vector<float> in_place(a);
            bhsd::binary(in_place.data(), b.data(), in_place.data(), sh, stra, strb, mul, pool, bhsd::Act(act), 0.01f);
            if (std::memcmp(in_place.data(), want.data(), std::size_t(n) * sizeof(float)) != 0) ++bad;
          }
        }
      CHECK(bad == 0);
    }
}

static void test_read_scaled(bhsd::ThreadPool& pool) {
  if (!bhsd::read_scaled_supported()) return;
  char path[] = "/tmp/bhsd-read-scaled-XXXXXX";
  const int fd = mkstemp(path);
  CHECK(fd >= 0);
  if (fd < 0) return;
  const std::int64_t n = 3 * (std::int64_t(1) << 19) + 7, offset = 352;
  std::vector<std::int16_t> raw(static_cast<std::size_t>(n));
  for (std::int64_t i = 0; i < n; ++i) raw[std::size_t(i)] = std::int16_t((i * 7919) % 65536 - 32768);
  std::vector<unsigned char> head(offset, 0xee);
  bool wrote = ::write(fd, head.data(), head.size()) == ssize_t(head.size()) &&
               ::write(fd, raw.data(), raw.size() * 2) == ssize_t(raw.size() * 2);
  CHECK(wrote);
  std::vector<float> out(static_cast<std::size_t>(n), -1.0f);
  const double slope = 0.1, inter = -1024.3;
  bhsd::read_scaled(fd, offset, bhsd::DType::i16, n, slope, inter, out.data(), pool);
  volatile double vs = slope, vi = inter;  // no contraction in the reference either
  int bad = 0;
  for (std::int64_t i = 0; i < n; ++i) {
    const volatile double prod = double(raw[std::size_t(i)]) * vs;
    if (out[std::size_t(i)] != float(prod + vi)) ++bad;
  }
  CHECK(bad == 0);
  bool threw = false;
  try {
    std::vector<float> more(static_cast<std::size_t>(n + 10));
    bhsd::read_scaled(fd, offset, bhsd::DType::i16, n + 10, slope, inter, more.data(), pool);
  } catch (const std::runtime_error& e) {
    threw = std::string(e.what()).find("truncated data") != std::string::npos;
  }
  CHECK(threw);
  ::close(fd);
  ::unlink(path);
}

// A freed engine block is taken again, whole, by a request of up to a third less (its tail unused),
// never by a smaller one: memory touched once is reused where sizes change, and a small request
// cannot take a big block a later request needs. Run first, on an empty cache.
static void test_block_cache_reuse() {
  const std::size_t MB = std::size_t(1) << 20;
  CHECK(bhsd::Block::cached_bytes() == 0);
  void* p0 = nullptr;
  {
    auto a = bhsd::Block::allocate(46 * MB);
    p0 = a->data();
    std::memset(p0, 0x5a, 46 * MB);
  }
  CHECK(bhsd::Block::cached_bytes() == 46 * MB);
  {
    auto b = bhsd::Block::allocate(36 * MB);  // the 46 MB one, zeroed as far as asked
    CHECK(b->data() == p0 && b->capacity() == 46 * MB && b->size() == 36 * MB);
    CHECK(bhsd::Block::cached_bytes() == 0);
    const auto* u = static_cast<const unsigned char*>(b->data());
    bool zero = true;
    for (std::size_t i = 0; i < 36 * MB; i += 4093) zero = zero && u[i] == 0;
    CHECK(zero && u[36 * MB - 1] == 0);
    auto c = bhsd::Block::allocate(20 * MB);  // nothing cached: a fresh mapping
    CHECK(c->data() != p0 && c->capacity() == 20 * MB);
  }
  CHECK(bhsd::Block::cached_bytes() == 66 * MB);  // each back at its mapped size
  {
    auto d = bhsd::Block::allocate(10 * MB);  // 20 MB is more than 1.5×: not taken
    CHECK(d->capacity() == 10 * MB && bhsd::Block::cached_bytes() == 66 * MB);
    auto e = bhsd::Block::allocate(40 * MB);  // the smallest of up to 1.5×: the 46 MB one
    CHECK(e->data() == p0 && e->size() == 40 * MB && bhsd::Block::cached_bytes() == 20 * MB);
    auto f = bhsd::Block::allocate(20 * MB);  // an exact fit
    CHECK(f->capacity() == 20 * MB && bhsd::Block::cached_bytes() == 0);
  }
  CHECK(bhsd::Block::cached_bytes() == 76 * MB);
  {
    auto g = bhsd::Block::allocate(40 * MB, true, false);  // larger: false — a fresh one of its size
    CHECK(g->capacity() == 40 * MB && bhsd::Block::cached_bytes() == 76 * MB);
  }
  bhsd::Block::set_cache_limit(0);  // (unmaps them)
  CHECK(bhsd::Block::cached_bytes() == 0);
  bhsd::Block::set_cache_limit(std::size_t(512) << 20);
}

int main() {
  std::printf("simd level: %s, gemm kernel: %s\n", bhsd::simd_level().c_str(), bhsd::gemm_kernel_name());
  test_block_cache_reuse();
  test_conv_concurrent();
  test_host_device_sweeps();
  for (unsigned threads : {1u, 2u, 5u}) {
    bhsd::ThreadPool pool(threads);
    test_pool_covers_every_index(pool);
    test_pool_exception_and_nesting(pool);
    test_pool_many_loops(pool);
    test_pool_after_sleep(pool);
    test_pool_no_wait(pool);
    test_pool_slot_local(pool);
    test_pool_cancel(pool);
    test_stats_and_rescale(pool);
    test_read_scaled(pool);
    test_pool_and_binary(pool);
    test_ccl_against_flood_fill(pool);
    test_ccl_types(pool);
    test_component_stats(pool);
    test_edt_against_brute_force(pool);
    test_weight_grad_blocked(pool);
    test_conv_indirect(pool);
    test_conv_dispatch_any_platform(pool);
    test_conv_pointwise(pool);
    test_conv_winograd(pool);
    test_conv_winograd_s2(pool);
    test_conv_amx(pool);
    test_weight_cache(pool);
    test_winograd_wide(pool);
    test_winograd_deep_plan(pool);
    test_plan_export_import();
    test_winograd_aligned_rows(pool);
    test_winograd_avx2_transforms();
    test_winograd_streamed_v(pool);
    test_accumulate_window(pool);
    test_conv_transpose_upsample(pool);
    test_conv_transpose_depthwise(pool);
    test_conv_transpose_pointwise(pool);
    test_instance_norm(pool);
    test_transformer_ops(pool);
    test_softmax_vector(pool);
    test_gemm(pool);
    test_attention(pool);
    test_ssm(pool);
    test_transpose_last2(pool);
    pool.shutdown();
    test_pool_covers_every_index(pool);  // after shutdown loops still run, on the caller
    test_pool_after_sleep(pool, true);   // (no worker left to steer)
  }
  std::printf(
      "winograd: worst error %.3g of the output's scale (F(4×4, 3×3): %.3g; F(4×4×4, 3×3×3): %.3g%s; bf16: %.3g)\n",
      winograd_worst, winograd_f4_worst, winograd_f444_worst, winograd_f444_worst < 0 ? " (not run)" : "",
      winograd_bf16_worst);
  std::printf(
      "winograd on strides 1×2×2 and 2×2×2 (100 and 125 points): worst error %.3g of the output's scale%s; with "
      "F(4, 3) along D (150 points): %.3g\n",
      winograd_s2_worst, winograd_s2_worst < 0 ? " (not run)" : "", winograd_s2_deep_worst);
  std::printf("winograd bf16 on AMX tiles against vdpbf16ps: worst difference %.3g of the output's scale%s\n",
              winograd_tiles_worst, winograd_tiles_worst < 0 ? " (not run)" : "");
  std::printf("amx (bf16 direct convolution): %s, worst error %.3g of the output's scale\n",
              bhsd::amx_available() ? "ran" : "off (not on this processor, or BHSD_NO_AMX / BHSD_NO_BF16 set)",
              amx_worst);
  std::printf("%d passed, %d failed\n", checks - failures, failures);
  return failures ? 1 : 0;
}
