// bhsd — a scaled voxel read straight from a file descriptor: chunks of the file read with pread on
// the pool's threads and converted to float32 as they arrive (NIfTI's scl_slope / scl_inter), so an
// uncompressed CT needs neither a copy of its raw voxels nor a second pass over them.
// Plain C++17 and POSIX, no Node. pread, not mmap: a file truncated while it is read is an error
// here, where a mapping would be a SIGBUS.
#pragma once

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "dtype.hpp"
#include "thread_pool.hpp"
#include "voxel_ops.hpp"

#if defined(__unix__) || defined(__APPLE__)
#include <unistd.h>
#define BHSD_HAVE_PREAD 1
#endif

namespace bhsd {

// Whether read_scaled works on this platform.
inline bool read_scaled_supported() {
#ifdef BHSD_HAVE_PREAD
  return true;
#else
  return false;
#endif
}

// n voxels of type t (in the host's byte order) at byte `offset` of the open file `fd` into out,
// each as float(double(v) · slope + inter) (rescale_to_f32's rounding). Throws std::runtime_error
// when the file ends early or cannot be read; out is then partly written.
inline void read_scaled(int fd, std::int64_t offset, DType t, std::int64_t n, double slope, double inter, float* out,
                        ThreadPool& pool) {
#ifdef BHSD_HAVE_PREAD
  const std::int64_t width = std::int64_t(dtype_size(t));
  constexpr std::int64_t kChunk = std::int64_t(1) << 20;  // bytes a task reads
  const std::int64_t per = std::max<std::int64_t>(1, kChunk / width), chunks = (n + per - 1) / per;
  pool.parallel_for(
      std::size_t(chunks),
      [&](std::size_t c0, std::size_t c1) {
        thread_local std::vector<unsigned char> buf;
        if (buf.size() < std::size_t(per * width) + 16) buf.resize(std::size_t(per * width) + 16);
        // aligned for the element type
        unsigned char* b = buf.data() + ((16 - reinterpret_cast<std::uintptr_t>(buf.data()) % 16) % 16);
        for (std::size_t c = c0; c < c1; ++c) {
          const std::int64_t v0 = std::int64_t(c) * per, cnt = std::min(per, n - v0);
          std::int64_t got = 0, want = cnt * width;
          while (got < want) {
            const ssize_t r = ::pread(fd, b + got, std::size_t(want - got), off_t(offset + v0 * width + got));
            if (r < 0) {
              if (errno == EINTR) continue;
              throw std::runtime_error(std::string("cannot read the voxels: ") + std::strerror(errno));
            }
            if (r == 0)
              throw std::runtime_error("truncated data: the file ended at byte " +
                                       std::to_string(offset + v0 * width + got) + " while reading its voxels");
            got += r;
          }
          visit_dtype(t, b, [&](auto* p) { detail::rescale_range(p, out + v0, 0, std::size_t(cnt), slope, inter); });
        }
      },
      1, 4);
#else
  (void)fd, (void)offset, (void)t, (void)n, (void)slope, (void)inter, (void)out, (void)pool;
  throw std::runtime_error("read_scaled is not supported on this platform");
#endif
}

}  // namespace bhsd
