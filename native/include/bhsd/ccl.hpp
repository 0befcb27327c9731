// bhsd — 3D connected-component labelling (6, 18, 26 connectivity), component statistics.
//
// Run-based two-pass labelling: each row (fixed y, z) is cut into runs of foreground (of one value
// when labelling per class); a run is joined (union-find, the smaller index always the root) with
// the runs of the already-seen neighbour rows whose x-range touches it. Background is skipped a
// machine word at a time. Rows are split into slabs labelled in parallel, the seams between slabs
// are joined afterwards, and a final pass over the runs in raster order numbers the components
// 1..count by their first voxel — the numbering of scipy.ndimage.label.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "dtype.hpp"
#include "thread_pool.hpp"

namespace bhsd {

namespace ccl_detail {

// The neighbour rows of row (y, z) seen before it, and how far (0 or 1 voxel) in x a run may be
// from another and still touch it there.
struct NeighbourRow {
  int dy, dz, ext;
};

inline int neighbour_rows(int connectivity, NeighbourRow* out) {
  switch (connectivity) {
    case 6:
      out[0] = {-1, 0, 0}, out[1] = {0, -1, 0};
      return 2;
    case 18:
      out[0] = {-1, 0, 1}, out[1] = {-1, -1, 0}, out[2] = {0, -1, 1}, out[3] = {1, -1, 0};
      return 4;
    default:  // 26
      out[0] = {-1, 0, 1}, out[1] = {-1, -1, 1}, out[2] = {0, -1, 1}, out[3] = {1, -1, 1};
      return 4;
  }
}

inline std::uint32_t find_root(std::uint32_t* parent, std::uint32_t i) {
  while (parent[i] != i) {
    parent[i] = parent[parent[i]];  // path halving
    i = parent[i];
  }
  return i;
}

inline void unite(std::uint32_t* parent, std::uint32_t a, std::uint32_t b) {
  a = find_root(parent, a);
  b = find_root(parent, b);
  if (a == b) return;
  if (a < b) parent[b] = a;
  else parent[a] = b;
}

// Index of the first non-zero element of p[x..n), or n.
template <class T>
inline std::int64_t skip_zeros(const T* p, std::int64_t x, std::int64_t n) {
  if constexpr (sizeof(T) <= 4 && std::is_integral<T>::value) {
    constexpr std::int64_t per_word = 8 / sizeof(T);
    while (x < n && (reinterpret_cast<std::uintptr_t>(p + x) & 7)) {
      if (p[x] != 0) return x;
      ++x;
    }
    while (x + per_word <= n) {
      std::uint64_t w;
      std::memcpy(&w, p + x, 8);
      if (w != 0) break;
      x += per_word;
    }
  }
  while (x < n && p[x] == 0) ++x;
  return x;
}

template <class T>
struct Slab {
  std::vector<std::int32_t> x0, x1;
  std::vector<T> value;
  std::vector<std::uint32_t> parent;
  std::vector<std::uint32_t> row_start;  // local run index of each row's first run, + end
};

}  // namespace ccl_detail

// Labels the foreground of `data` (nx·ny·nz, x fastest) into `out`, which must be zero-filled.
// per_class: voxels join only voxels of the same value; else every non-zero voxel is foreground.
// Returns the number of components.
template <class T>
std::int64_t connected_components(const T* data, std::int64_t nx, std::int64_t ny, std::int64_t nz,
                                  int connectivity, bool per_class, std::int32_t* out,
                                  ThreadPool& pool) {
  using namespace ccl_detail;
  if (connectivity != 6 && connectivity != 18 && connectivity != 26)
    throw Error("connectivity must be 6, 18 or 26");
  const std::int64_t rows = ny * nz;
  if (rows == 0 || nx == 0) return 0;
  NeighbourRow nb[4];
  const int nnb = neighbour_rows(connectivity, nb);

  // Slabs of whole rows; enough of them to balance the threads.
  const std::int64_t nslabs = std::max<std::int64_t>(
      1, std::min<std::int64_t>(rows, std::int64_t(pool.size()) * 4));
  std::vector<std::int64_t> slab_row(nslabs + 1);
  for (std::int64_t s = 0; s <= nslabs; ++s) slab_row[s] = rows * s / nslabs;
  std::vector<Slab<T>> slabs(nslabs);

  // Joins the runs of row r (indices [a0, a1)) with those of an earlier row ([b0, b1)).
  auto join = [per_class](std::uint32_t* parent, const std::int32_t* x0, const std::int32_t* x1,
                          const T* val, std::uint32_t a0, std::uint32_t a1, std::uint32_t b0,
                          std::uint32_t b1, int ext) {
    std::uint32_t j = b0;
    for (std::uint32_t i = a0; i < a1; ++i) {
      while (j < b1 && x1[j] + ext < x0[i]) ++j;
      std::uint32_t ri = find_root(parent, i);  // i's root, kept current across its unions
      for (std::uint32_t k = j; k < b1 && x0[k] <= x1[i] + ext; ++k) {
        if (per_class && val[k] != val[i]) continue;
        const std::uint32_t rk = find_root(parent, k);
        if (rk == ri) continue;
        if (rk < ri) parent[ri] = rk, ri = rk;
        else parent[rk] = ri;
      }
    }
  };

  // Pass 1: runs and unions inside each slab.
  pool.parallel_for(std::size_t(nslabs), [&](std::size_t lo, std::size_t hi) {
    for (std::size_t s = lo; s < hi; ++s) {
      Slab<T>& sl = slabs[s];
      const std::int64_t r0 = slab_row[s], r1 = slab_row[s + 1];
      sl.row_start.resize(std::size_t(r1 - r0 + 1));
      for (std::int64_t r = r0; r < r1; ++r) {
        const std::int64_t y = r % ny, z = r / ny;
        const T* p = data + r * nx;
        const std::uint32_t first = static_cast<std::uint32_t>(sl.x0.size());
        sl.row_start[r - r0] = first;
        for (std::int64_t x = skip_zeros(p, 0, nx); x < nx; x = skip_zeros(p, x, nx)) {
          const T v = p[x];
          const std::int64_t start = x;
          if (per_class)
            while (x < nx && p[x] == v) ++x;
          else
            while (x < nx && p[x] != 0) ++x;
          if (sl.x0.size() >= std::numeric_limits<std::uint32_t>::max() / 2)
            throw Error("too many runs for one labelling");
          const std::uint32_t idx = static_cast<std::uint32_t>(sl.x0.size());
          sl.x0.push_back(std::int32_t(start));
          sl.x1.push_back(std::int32_t(x - 1));
          if (per_class) sl.value.push_back(v);
          sl.parent.push_back(idx);
        }
        const std::uint32_t last = static_cast<std::uint32_t>(sl.x0.size());
        if (first == last) continue;
        for (int k = 0; k < nnb; ++k) {
          const std::int64_t yy = y + nb[k].dy, zz = z + nb[k].dz;
          if (yy < 0 || yy >= ny || zz < 0) continue;
          const std::int64_t rr = zz * ny + yy;
          if (rr < r0) continue;  // in an earlier slab: joined at the seam
          join(sl.parent.data(), sl.x0.data(), sl.x1.data(), sl.value.data(), first, last,
               sl.row_start[rr - r0], sl.row_start[rr - r0 + 1], nb[k].ext);
        }
      }
      sl.row_start[r1 - r0] = static_cast<std::uint32_t>(sl.x0.size());
    }
  }, 1, 1);

  // Gather the slabs into global arrays (run indices stay in raster order).
  std::vector<std::uint64_t> offset(nslabs + 1, 0);
  for (std::int64_t s = 0; s < nslabs; ++s) offset[s + 1] = offset[s] + slabs[s].x0.size();
  const std::uint64_t total = offset[nslabs];
  if (total >= std::numeric_limits<std::uint32_t>::max()) throw Error("too many runs for one labelling");
  if (total == 0) return 0;
  std::vector<std::int32_t> X0(total), X1(total);
  std::vector<T> V(per_class ? total : 0);
  std::vector<std::uint32_t> parent(total);
  std::vector<std::uint32_t> row_start(std::size_t(rows) + 1);
  pool.parallel_for(std::size_t(nslabs), [&](std::size_t lo, std::size_t hi) {
    for (std::size_t s = lo; s < hi; ++s) {
      Slab<T>& sl = slabs[s];
      const std::uint32_t off = static_cast<std::uint32_t>(offset[s]);
      std::copy(sl.x0.begin(), sl.x0.end(), X0.begin() + off);
      std::copy(sl.x1.begin(), sl.x1.end(), X1.begin() + off);
      if (per_class) std::copy(sl.value.begin(), sl.value.end(), V.begin() + off);
      for (std::size_t i = 0; i < sl.parent.size(); ++i) parent[off + i] = sl.parent[i] + off;
      for (std::int64_t r = slab_row[s]; r < slab_row[s + 1]; ++r)
        row_start[r] = sl.row_start[r - slab_row[s]] + off;
      std::vector<std::int32_t>().swap(sl.x0);  // free as we go
      std::vector<std::int32_t>().swap(sl.x1);
      std::vector<T>().swap(sl.value);
      std::vector<std::uint32_t>().swap(sl.parent);
      std::vector<std::uint32_t>().swap(sl.row_start);
    }
  }, 1, 1);
  row_start[rows] = static_cast<std::uint32_t>(total);

  // Seams: the first rows of each slab against rows of earlier slabs.
  for (std::int64_t s = 1; s < nslabs; ++s) {
    const std::int64_t r0 = slab_row[s];
    const std::int64_t rend = std::min(slab_row[s + 1], r0 + ny + 1);
    for (std::int64_t r = r0; r < rend; ++r) {
      const std::int64_t y = r % ny, z = r / ny;
      for (int k = 0; k < nnb; ++k) {
        const std::int64_t yy = y + nb[k].dy, zz = z + nb[k].dz;
        if (yy < 0 || yy >= ny || zz < 0) continue;
        const std::int64_t rr = zz * ny + yy;
        if (rr >= r0) continue;
        join(parent.data(), X0.data(), X1.data(), V.data(), row_start[r], row_start[r + 1],
             row_start[rr], row_start[rr + 1], nb[k].ext);
      }
    }
  }

  // Number the components in raster order of their first run (each root is its set's smallest index).
  std::vector<std::int32_t> label(total);
  std::int64_t count = 0;
  for (std::uint64_t i = 0; i < total; ++i) {
    const std::uint32_t root = find_root(parent.data(), std::uint32_t(i));
    if (root == i) {
      if (count == std::numeric_limits<std::int32_t>::max()) throw Error("more than 2^31-1 components");
      label[i] = std::int32_t(++count);
    } else {
      label[i] = label[root];
    }
  }

  // Paint.
  pool.parallel_for(std::size_t(rows), [&](std::size_t lo, std::size_t hi) {
    for (std::size_t r = lo; r < hi; ++r) {
      std::int32_t* o = out + r * nx;
      for (std::uint32_t i = row_start[r]; i < row_start[r + 1]; ++i)
        std::fill(o + X0[i], o + X1[i] + 1, label[i]);
    }
  }, 16);
  return count;
}

// Per component c (1..count), packed at out[(c-1)*STATS + k]:
//   0 voxels, 1..3 min x y z, 4..6 max x y z, 7..9 sum of x y z, 10 class (the value of
//   `classes` at the component's first voxel in raster order; 0 without `classes`).
constexpr int STATS = 11;

template <class C>
void component_stats(const std::int32_t* labels, std::int64_t nx, std::int64_t ny, std::int64_t nz,
                     std::int64_t count, const C* classes, double* out, ThreadPool& pool) {
  std::int64_t nslabs = std::max<std::int64_t>(1, std::min<std::int64_t>(nz, pool.size()));
  // Per-slab accumulators cost count·88 bytes each: with very many components use one.
  if (double(count) * STATS * 8 * double(nslabs) > 256.0 * (1 << 20)) nslabs = 1;
  // One accumulator per slab: a slab sees each component's voxels in raster order, and slabs are
  // in z order, so the first slab that saw a component holds its first voxel.
  std::vector<std::vector<double>> acc(nslabs);
  pool.parallel_for(std::size_t(nslabs), [&](std::size_t lo, std::size_t hi) {
    for (std::size_t s = lo; s < hi; ++s) {
      std::vector<double>& a = acc[s];
      a.assign(std::size_t(count) * STATS, 0.0);
      const std::int64_t z0 = nz * std::int64_t(s) / nslabs, z1 = nz * std::int64_t(s + 1) / nslabs;
      for (std::int64_t z = z0; z < z1; ++z)
        for (std::int64_t y = 0; y < ny; ++y) {
          const std::int64_t row = (z * ny + y) * nx;
          const std::int32_t* l = labels + row;
          for (std::int64_t x = ccl_detail::skip_zeros(l, 0, nx); x < nx;
               x = ccl_detail::skip_zeros(l, x + 1, nx)) {
            const std::int32_t c = l[x];
            if (c < 1 || c > count) throw Error("a label is outside 1..count");
            double* s_ = a.data() + std::size_t(c - 1) * STATS;
            if (s_[0] == 0) {
              s_[1] = double(x), s_[2] = double(y), s_[3] = double(z);
              s_[4] = double(x), s_[5] = double(y), s_[6] = double(z);
              s_[10] = classes ? double(classes[row + x]) : 0.0;
            } else {
              s_[1] = std::min(s_[1], double(x)), s_[2] = std::min(s_[2], double(y));
              s_[4] = std::max(s_[4], double(x)), s_[5] = std::max(s_[5], double(y));
              s_[6] = double(z);
            }
            s_[0] += 1, s_[7] += double(x), s_[8] += double(y), s_[9] += double(z);
          }
        }
    }
  }, 1, 1);
  // Merge in slab order.
  std::fill(out, out + count * STATS, 0.0);
  for (std::int64_t s = 0; s < nslabs; ++s) {
    const double* a = acc[s].data();
    for (std::int64_t c = 0; c < count; ++c) {
      const double* p = a + c * STATS;
      double* o = out + c * STATS;
      if (p[0] == 0) continue;
      if (o[0] == 0) {
        std::copy(p, p + STATS, o);
        continue;
      }
      for (int k = 1; k <= 3; ++k) o[k] = std::min(o[k], p[k]);
      for (int k = 4; k <= 6; ++k) o[k] = std::max(o[k], p[k]);
      o[0] += p[0], o[7] += p[7], o[8] += p[8], o[9] += p[9];
    }
    std::vector<double>().swap(acc[s]);
  }
}

// Voxels per slice of each component: out[offsets[c-1] + z - zmin[c-1]] for z in its z-range.
inline void component_slice_areas(const std::int32_t* labels, std::int64_t nx, std::int64_t ny,
                                  std::int64_t nz, std::int64_t count, const std::int32_t* zmin,
                                  const std::int64_t* offsets, std::uint32_t* out, ThreadPool& pool) {
  const std::int64_t plane = nx * ny;
  pool.parallel_for(std::size_t(nz), [&](std::size_t lo, std::size_t hi) {
    for (std::size_t z = lo; z < hi; ++z) {  // each z owns distinct entries: no races
      const std::int32_t* l = labels + std::int64_t(z) * plane;
      for (std::int64_t i = ccl_detail::skip_zeros(l, 0, plane); i < plane;
           i = ccl_detail::skip_zeros(l, i + 1, plane)) {
        const std::int32_t c = l[i];
        if (c < 1 || c > count) throw Error("a label is outside 1..count");
        const std::int64_t k = offsets[c - 1] + std::int64_t(z) - zmin[c - 1];
        if (k < offsets[c - 1] || k >= offsets[c]) throw Error("a component lies outside its z-range");
        ++out[k];
      }
    }
  });
}

// out[i] = keep[labels[i]] ? src[i] : 0, where keep has count+1 entries (keep[0] is ignored).
template <class T>
void select_components(const T* src, const std::int32_t* labels, std::int64_t n,
                       const std::uint8_t* keep, std::int64_t count, T* out, ThreadPool& pool) {
  pool.parallel_for(std::size_t(n), [&](std::size_t lo, std::size_t hi) {
    for (std::size_t i = lo; i < hi; ++i) {
      const std::int32_t c = labels[i];
      out[i] = (c > 0 && c <= count && keep[c]) ? src[i] : T(0);
    }
  }, 1 << 16);
}

}  // namespace bhsd
