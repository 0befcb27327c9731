// bench/ccl_cc3d.cc — times cc3d's connected_components3d (seung-lab/connected-components-3d, its
// header-only C++ core) on raw uint8 masks, for bench/components.ts: the same masks bhsd and scipy
// label in the same run. cc3d is not a dependency of bhsd and nothing of it ships: the bench compiles
// this file at bench time against a cc3d.hpp it is given (-include), with the addon's flags (-O3, no
// -march), and skips cc3d, saying why, where none is at hand.
//
//   ccl_cc3d REPS FILE NX NY NZ CONN [FILE NX NY NZ CONN]...
//
// Prints one JSON line: {"FILE:CONN": {"ms": [..], "count": N}, ...}. Each call gets a fresh output
// as cc3d's Python binding does (numpy.zeros: fresh pages, advised MADV_HUGEPAGE on Linux), and the
// allocation is timed with it — as bhsd's public call allocates its labels.
#include <sys/mman.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

static double now_ms() {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

int main(int argc, char** argv) {
  if (argc < 7 || (argc - 2) % 5 != 0) {
    std::fprintf(stderr, "usage: ccl_cc3d REPS FILE NX NY NZ CONN [FILE NX NY NZ CONN]...\n");
    return 2;
  }
  const int reps = std::atoi(argv[1]);
  std::string json = "{";
  for (int a = 2; a + 4 < argc; a += 5) {
    const char* path = argv[a];
    const std::int64_t nx = std::atoll(argv[a + 1]), ny = std::atoll(argv[a + 2]), nz = std::atoll(argv[a + 3]);
    const int conn = std::atoi(argv[a + 4]);
    const std::size_t n = std::size_t(nx * ny * nz);
    std::vector<std::uint8_t> mask(n);
    FILE* f = std::fopen(path, "rb");
    if (!f || std::fread(mask.data(), 1, n, f) != n) {
      std::fprintf(stderr, "ccl_cc3d: cannot read %zu bytes from %s\n", n, path);
      return 1;
    }
    std::fclose(f);
    std::vector<double> ms;
    std::size_t count = 0;
    for (int r = 0; r < reps; ++r) {
      const std::size_t bytes = n * sizeof(std::uint32_t);
      const double t0 = now_ms();
      void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
      if (p == MAP_FAILED) return 1;
#ifdef MADV_HUGEPAGE
      madvise(p, bytes, MADV_HUGEPAGE);
#endif
      auto* out = static_cast<std::uint32_t*>(p);
      // as cc3d.connected_components does: a provisional label bound from the foreground runs
      const std::size_t max_labels = std::min(cc3d::estimate_provisional_label_count(mask.data(), nx, n), n);
      cc3d::connected_components3d<std::uint8_t, std::uint32_t>(mask.data(), nx, ny, nz, max_labels, conn, out, count);
      ms.push_back(now_ms() - t0);
      munmap(p, bytes);
    }
    if (json.size() > 1) json += ",";
    json += "\"" + std::string(path) + ":" + std::to_string(conn) + "\":{\"ms\":[";
    for (std::size_t i = 0; i < ms.size(); ++i) json += (i ? "," : "") + std::to_string(ms[i]);
    json += "],\"count\":" + std::to_string(count) + "}";
  }
  std::printf("%s}\n", json.c_str());
  return 0;
}
