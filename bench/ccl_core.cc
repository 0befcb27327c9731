// bench/ccl_core.cc — bhsd's C++ labelling core (native/include/bhsd/ccl.hpp) beside cc3d's
// connected_components3d in one process, on a raw uint8 mask, in wall and CPU time: the figures
// behind README's "on one thread, in CPU time" (the public call's bench is bench/components.ts).
// Not built by anything; by hand, with the addon's flags and cc3d.hpp from a checkout or mirror:
//
//   git --git-dir=/work/.mirror/seung-lab+connected-components-3d/repo show HEAD:cc3d/cc3d.hpp > /tmp/cc3d.hpp
//   g++ -std=c++17 -O3 -pthread -Inative/include -include /tmp/cc3d.hpp bench/ccl_core.cc -o /tmp/ccl_core
//   /tmp/ccl_core MASK.u8 NX NY NZ CONN [THREADS=1] [REPS=5]
//
// Each rep: bhsd into fresh huge-page-advised memory, bhsd into a reused zeroed array, cc3d into
// fresh huge-page-advised memory (as numpy gives cc3d's Python binding); medians. bhsd labels per
// class, as connectedComponents does by default. CPU time is the process's (all threads).
// The masks: blobMask / noiseMask of bench/components.ts (same seeds), written raw (Buffer.from(mask)).
#include <sys/mman.h>
#include <time.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "bhsd/ccl.hpp"

static double wall_ms() {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now().time_since_epoch()).count();
}
static double cpu_ms() {
  timespec t;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
  return t.tv_sec * 1e3 + t.tv_nsec * 1e-6;
}
static std::size_t huge_round(std::size_t n) {
  return (n + (std::size_t(2) << 20) - 1) / (std::size_t(2) << 20) * (std::size_t(2) << 20);
}
static void* fresh(std::size_t n) {
  void* p = mmap(nullptr, huge_round(n), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) std::exit(1);
  madvise(p, huge_round(n), MADV_HUGEPAGE);
  return p;
}
static double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0.0 : v[v.size() / 2];
}

int main(int argc, char** argv) {
  if (argc < 6) {
    std::fprintf(stderr, "usage: ccl_core MASK.u8 NX NY NZ CONN [THREADS=1] [REPS=5]\n");
    return 2;
  }
  const long nx = std::atol(argv[2]), ny = std::atol(argv[3]), nz = std::atol(argv[4]);
  const int conn = std::atoi(argv[5]), threads = argc > 6 ? std::atoi(argv[6]) : 1,
            reps = argc > 7 ? std::atoi(argv[7]) : 5;
  const std::size_t n = std::size_t(nx) * ny * nz;
  std::vector<std::uint8_t> d(n);
  FILE* f = std::fopen(argv[1], "rb");
  if (!f || std::fread(d.data(), 1, n, f) != n) return 1;
  std::fclose(f);
  bhsd::ThreadPool pool{unsigned(threads)};
  std::vector<double> bw, bc, rw, cw, cc;
  long count = 0;
  std::size_t ccount = 0;
  auto* reused = static_cast<std::int32_t*>(fresh(n * 4));
  for (int r = 0; r < reps; ++r) {
    auto* out = static_cast<std::int32_t*>(fresh(n * 4));
    double c0 = cpu_ms(), t0 = wall_ms();
    count = long(bhsd::connected_components(d.data(), nx, ny, nz, conn, true, out, pool));
    bw.push_back(wall_ms() - t0), bc.push_back(cpu_ms() - c0);
    munmap(out, huge_round(n * 4));
    std::memset(reused, 0, n * 4);
    t0 = wall_ms();
    bhsd::connected_components(d.data(), nx, ny, nz, conn, true, reused, pool);
    rw.push_back(wall_ms() - t0);
    auto* o2 = static_cast<std::uint32_t*>(fresh(n * 4));
    c0 = cpu_ms(), t0 = wall_ms();
    const std::size_t max_labels = std::min(cc3d::estimate_provisional_label_count(d.data(), nx, n), n);
    cc3d::connected_components3d<std::uint8_t, std::uint32_t>(d.data(), nx, ny, nz, max_labels, conn, o2, ccount);
    cw.push_back(wall_ms() - t0), cc.push_back(cpu_ms() - c0);
    munmap(o2, huge_round(n * 4));
  }
  std::printf(
      "%s %d-conn, %d thread(s): bhsd %.1f ms (CPU %.1f), into reused labels %.1f ms, %ld components | "
      "cc3d %.1f ms (CPU %.1f), %zu components\n",
      argv[1], conn, threads, median(bw), median(bc), median(rw), count, median(cw), median(cc), ccount);
  return count == long(ccount) ? 0 : 1;
}
