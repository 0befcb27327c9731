// bhsd — segmentation metrics (shared/spec/metrics.md): label checks, confusion counts and boxes,
// surfaces, an exact anisotropic Euclidean distance transform and the surface-distance reductions.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstring>
#include <cstdint>
#include <limits>
#include <mutex>
#include <string>
#include <vector>

#include "dtype.hpp"
#include "host_device.hpp"
#include "memory.hpp"
#include "thread_pool.hpp"

namespace bhsd {

// Copies label values into uint8, refusing any value that is not an integer in 0..max_label.
// On a bad value throws Error naming the value and the voxel (x, y, z).
template <class T>
void narrow_labels(const T* src, std::int64_t nx, std::int64_t ny, std::int64_t nz, int max_label, std::uint8_t* out,
                   const char* what, ThreadPool& pool) {
  const std::int64_t n = nx * ny * nz;
  std::mutex m;
  std::int64_t bad = -1;
  pool.parallel_for(
      std::size_t(n),
      [&](std::size_t lo, std::size_t hi) {
        for (std::size_t i = lo; i < hi; ++i) {
          const double v = double(src[i]);
          if (!(v >= 0 && v <= max_label && v == std::floor(v))) {
            std::lock_guard<std::mutex> lk(m);
            if (bad < 0 || std::int64_t(i) < bad) bad = std::int64_t(i);
            return;
          }
          out[i] = std::uint8_t(v);
        }
      },
      1 << 16);
  if (bad >= 0) {
    const std::int64_t x = bad % nx, y = bad / nx % ny, z = bad / (nx * ny);
    char buf[64];
    std::snprintf(buf, sizeof buf, "%.17g", double(src[bad]));
    throw Error(std::string(what) + " holds the value " + buf + " at voxel (" + std::to_string(x) + ", " +
                std::to_string(y) + ", " + std::to_string(z) + "); labels must be integers 0.." +
                std::to_string(max_label));
  }
}

// Confusion counts and per-label bounding boxes of two uint8 label volumes with values 0..L.
// counts[(g * (L+1)) + p] = voxels with gt g and pred p. boxes: for volume v (0 gt, 1 pred) and
// label l, at ((v * (L+1)) + l) * 6: min x y z, max x y z (min > max when absent).
struct PairStats {
  std::vector<double> counts;
  std::vector<std::int64_t> boxes;
};

inline PairStats label_pair_stats(const std::uint8_t* gt, const std::uint8_t* pred, std::int64_t nx, std::int64_t ny,
                                  std::int64_t nz, int L, ThreadPool& pool) {
  const int K = L + 1;
  PairStats out;
  out.counts.assign(std::size_t(K * K), 0.0);
  out.boxes.assign(std::size_t(2 * K * 6), 0);
  for (int v = 0; v < 2; ++v)
    for (int l = 0; l < K; ++l) {
      std::int64_t* b = &out.boxes[std::size_t((v * K + l) * 6)];
      b[0] = nx, b[1] = ny, b[2] = nz, b[3] = -1, b[4] = -1, b[5] = -1;
    }
  std::mutex m;
  pool.parallel_for(
      std::size_t(nz),
      [&](std::size_t z0, std::size_t z1) {
        std::vector<std::uint64_t> cnt(std::size_t(K * K), 0);
        std::vector<std::int64_t> box(out.boxes);
        for (std::int64_t z = std::int64_t(z0); z < std::int64_t(z1); ++z)
          for (std::int64_t y = 0; y < ny; ++y) {
            const std::int64_t row = (z * ny + y) * nx;
            const std::uint8_t* g = gt + row;
            const std::uint8_t* p = pred + row;
            std::int64_t x = 0;
            while (x < nx) {
              // background in both, eight voxels at a time
              if (x + 8 <= nx) {
                std::uint64_t wg, wp;
                std::memcpy(&wg, g + x, 8);
                std::memcpy(&wp, p + x, 8);
                if ((wg | wp) == 0) {
                  cnt[0] += 8;
                  x += 8;
                  continue;
                }
              }
              const int a = g[x], b = p[x];
              if (a > L || b > L) throw Error("a label exceeds maxLabel");
              ++cnt[std::size_t(a * K + b)];
              if (a | b) {
                for (int v = 0; v < 2; ++v) {
                  const int l = v ? b : a;
                  if (!l) continue;
                  std::int64_t* bb = &box[std::size_t((v * K + l) * 6)];
                  bb[0] = std::min(bb[0], x), bb[3] = std::max(bb[3], x);
                  bb[1] = std::min(bb[1], y), bb[4] = std::max(bb[4], y);
                  bb[2] = std::min(bb[2], z), bb[5] = std::max(bb[5], z);
                }
              }
              ++x;
            }
          }
        std::lock_guard<std::mutex> lk(m);
        for (std::size_t i = 0; i < cnt.size(); ++i) out.counts[i] += double(cnt[i]);
        for (std::size_t i = 0; i < box.size(); i += 6) {
          for (int k = 0; k < 3; ++k) out.boxes[i + k] = std::min(out.boxes[i + k], box[i + k]);
          for (int k = 3; k < 6; ++k) out.boxes[i + k] = std::max(out.boxes[i + k], box[i + k]);
        }
      },
      1);
  return out;
}

namespace edt_detail {

constexpr double INF = std::numeric_limits<double>::infinity();

// The lower envelope of one line of n contiguous samples (host_device.hpp, shared with CUDA):
// d[q] = min_p (f[p] + ((q − p)·s)²). v, z, are scratch of n and n+1.
inline void envelope(const double* f, double* d, std::int64_t n, double s, std::int64_t* v, double* z) {
  hd::edt_envelope(f, 1, d, 1, n, s, v, z, 1);
}

}  // namespace edt_detail

// Squared Euclidean distance (mm²) from each voxel centre of a w·h·d grid to the nearest voxel with
// feat != 0, spacing (sx, sy, sz); +inf when there is no feature. Exact, separable, linear time.
// `query`, when given, marks the only voxels whose distance the caller will read: the last pass
// then skips the lines that hold none of them (their values are left unfinished).
inline void edt_squared(const std::uint8_t* feat, std::int64_t w, std::int64_t h, std::int64_t d, double sx, double sy,
                        double sz, double* out, ThreadPool& pool, const std::uint8_t* query = nullptr) {
  using edt_detail::INF;
  // x: distance to the nearest feature in the row, two sweeps (host_device.hpp, shared with CUDA)
  pool.parallel_for(
      std::size_t(h * d),
      [&](std::size_t lo, std::size_t hi) {
        for (std::size_t r = lo; r < hi; ++r) hd::edt_row(feat + std::int64_t(r) * w, out + std::int64_t(r) * w, w, sx);
      },
      64);
  // y, then z: the lower envelope along each column. Lines that are neighbours in memory are
  // processed 8 at a time, so that each gather and scatter touches whole cache lines.
  // Line (g, m) of a pass starts at g·group_stride + m, its samples `stride` apart.
  // wanted[m] (for the last pass along z): whether line m holds a query voxel.
  std::vector<std::uint8_t> wanted;
  if (query && d > 1) {
    wanted.assign(static_cast<std::size_t>(w * h), 0);
    for (std::int64_t z = 0; z < d; ++z)
      for (std::int64_t i = 0; i < w * h; ++i) wanted[i] |= query[z * w * h + i];
  }
  auto pass = [&](std::int64_t n, std::int64_t stride, std::int64_t groups, std::int64_t group_len,
                  std::int64_t group_stride, double s, const std::uint8_t* want) {
    constexpr std::int64_t B = 8;
    const std::int64_t tiles_per_group = (group_len + B - 1) / B;
    pool.parallel_for(
        std::size_t(groups * tiles_per_group),
        [&](std::size_t lo, std::size_t hi) {
          std::vector<double> f(static_cast<std::size_t>(n * B)), g(static_cast<std::size_t>(n)),
              zb(static_cast<std::size_t>(n) + 1);
          std::vector<std::int64_t> v(static_cast<std::size_t>(n));
          for (std::size_t t = lo; t < hi; ++t) {
            const std::int64_t grp = std::int64_t(t) / tiles_per_group;
            const std::int64_t m0 = (std::int64_t(t) % tiles_per_group) * B;
            const std::int64_t nb = std::min(B, group_len - m0);
            if (want && std::all_of(want + m0, want + m0 + nb, [](std::uint8_t q) { return q == 0; })) continue;
            double* base = out + grp * group_stride + m0;
            bool any[B] = {};
            for (std::int64_t i = 0; i < n; ++i) {
              const double* row = base + i * stride;
              for (std::int64_t b = 0; b < nb; ++b) {
                f[b * n + i] = row[b];
                any[b] |= row[b] != INF;
              }
            }
            for (std::int64_t b = 0; b < nb; ++b) {
              if (!any[b]) continue;  // no feature on this line yet: stays +inf
              edt_detail::envelope(f.data() + b * n, g.data(), n, s, v.data(), zb.data());
              std::copy(g.begin(), g.end(), f.begin() + b * n);
            }
            for (std::int64_t i = 0; i < n; ++i) {
              double* row = base + i * stride;
              for (std::int64_t b = 0; b < nb; ++b) row[b] = f[b * n + i];
            }
          }
        },
        4);
  };
  if (h > 1) pass(h, w, d, w, w * h, sy, nullptr);
  if (d > 1) pass(d, w * h, 1, w * h, 0, sz, wanted.empty() ? nullptr : wanted.data());
}

// The surface-distance reductions of one class (shared/spec/metrics.md).
struct SurfaceMetrics {
  double n_pred = 0, n_gt = 0;    // surface voxels |∂P|, |∂G|
  double sum_pg = 0, sum_gp = 0;  // Σ d(P→G), Σ d(G→P)
  double max_pg = 0, max_gp = 0;
  double p95_pg = 0, p95_gp = 0;        // numpy's linear-interpolated 95th percentile
  double within_pg = 0, within_gp = 0;  // distances ≤ tau
};

namespace edt_detail {
inline double percentile(std::vector<double>& a, double q) {
  const double rank = q * double(a.size() - 1);
  const std::size_t lo = std::size_t(std::floor(rank)), hi = std::size_t(std::ceil(rank));
  std::nth_element(a.begin(), a.begin() + lo, a.end());
  const double vlo = a[lo];
  double vhi = vlo;
  if (hi != lo) vhi = *std::min_element(a.begin() + lo + 1, a.end());
  return vlo + (vhi - vlo) * (rank - double(lo));
}
}  // namespace edt_detail

// Surfaces of gt == c and pred == c inside box (inclusive min/max x y z covering both masks; both
// must be non-empty), the two distance transforms, and the reductions.
inline SurfaceMetrics surface_metrics(const std::uint8_t* gt, const std::uint8_t* pred, std::int64_t nx,
                                      std::int64_t ny, std::int64_t /*nz*/, double sx, double sy, double sz, int c,
                                      const std::int64_t* box, double tau, ThreadPool& pool) {
  const std::int64_t x0 = box[0], y0 = box[1], z0 = box[2];
  const std::int64_t w = box[3] - x0 + 1, h = box[4] - y0 + 1, d = box[5] - z0 + 1;
  const std::int64_t n = w * h * d;
  // Masks of the box; outside the box neither mask has voxels, so the box border is background.
  // (engine memory, not std::vectors: EngineArray)
  EngineArray<std::uint8_t> mg(static_cast<std::size_t>(n), false), mp(static_cast<std::size_t>(n), false);
  pool.parallel_for(
      std::size_t(h * d),
      [&](std::size_t lo, std::size_t hi) {
        for (std::size_t r = lo; r < hi; ++r) {
          const std::int64_t y = std::int64_t(r) % h, z = std::int64_t(r) / h;
          const std::int64_t src = ((z + z0) * ny + (y + y0)) * nx + x0;
          for (std::int64_t x = 0; x < w; ++x) {
            mg[r * w + x] = gt[src + x] == c;
            mp[r * w + x] = pred[src + x] == c;
          }
        }
      },
      64);
  // Surface: in the mask with a face-neighbour outside it (or outside the box).
  auto surface = [&](const EngineArray<std::uint8_t>& m, EngineArray<std::uint8_t>& s) {
    s = EngineArray<std::uint8_t>(std::size_t(n), true);
    pool.parallel_for(
        std::size_t(h * d),
        [&](std::size_t lo, std::size_t hi) {
          for (std::size_t r = lo; r < hi; ++r) {
            const std::int64_t y = std::int64_t(r) % h, z = std::int64_t(r) / h;
            for (std::int64_t x = 0; x < w; ++x) {
              const std::int64_t i = std::int64_t(r) * w + x;
              if (!m[i]) continue;
              const bool inner = x > 0 && x < w - 1 && y > 0 && y < h - 1 && z > 0 && z < d - 1 && m[i - 1] &&
                                 m[i + 1] && m[i - w] && m[i + w] && m[i - w * h] && m[i + w * h];
              s[i] = !inner;
            }
          }
        },
        64);
  };
  EngineArray<std::uint8_t> sg, sp;
  surface(mg, sg);
  surface(mp, sp);
  mg.reset();
  mp.reset();
  EngineArray<double> dist(static_cast<std::size_t>(n), false);  // (edt_squared writes it all)
  SurfaceMetrics out;
  auto distances = [&](const EngineArray<std::uint8_t>& to, const EngineArray<std::uint8_t>& from, double& count,
                       double& sum, double& mx, double& p95, double& within) {
    edt_squared(to.data(), w, h, d, sx, sy, sz, dist.data(), pool, from.data());
    std::vector<double> v;
    for (std::int64_t i = 0; i < n; ++i)
      if (from[i]) v.push_back(std::sqrt(dist[i]));
    count = double(v.size());
    for (double x : v) {
      sum += x;
      mx = std::max(mx, x);
      within += x <= tau;
    }
    p95 = v.empty() ? 0 : edt_detail::percentile(v, 0.95);
  };
  distances(sg, sp, out.n_pred, out.sum_pg, out.max_pg, out.p95_pg, out.within_pg);
  distances(sp, sg, out.n_gt, out.sum_gp, out.max_gp, out.p95_gp, out.within_gp);
  return out;
}

}  // namespace bhsd
