// bhsd — a .nii.gz's voxels inflated straight into the array they end in: the compressed bytes
// read from the file descriptor (pread, 1 MiB at a time) or from memory, inflated by zlib in
// 1 MiB pieces that stay in cache, each piece copied into the output, or converted to float32 with
// NIfTI's scl_slope / scl_inter as it comes (no copy of the raw voxels at all). Through Node's
// streams the same work went through libuv's threads 64 KiB at a time, with a fresh Buffer for
// every piece of output and the garbage collections they set off.
// Plain C++17 and zlib, no Node (the addon uses the zlib that Node itself exports; the C++ test
// links the system's). Why not a library: zlib is the library; this is the loop around it.
#pragma once

#include <zlib.h>

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
#endif

namespace bhsd {

// Where inflated bytes go: raw (copied to dst) or scaled (whole voxels of `type` converted to
// float32 at dst, as rescale_to_f32 rounds them).
struct GunzipSink {
  unsigned char* dst = nullptr;  // raw: bytes; scaled: float*
  std::uint64_t bytes = 0;       // inflated bytes wanted after the skipped ones
  bool scaled = false;
  DType type = DType::u8;
  double slope = 1, inter = 0;
};

namespace gunzip_detail {

struct Inflater {
  z_stream zs{};
  bool live = false;
  Inflater() {
    // 16 + MAX_WBITS: a gzip wrapper only (the caller has seen its magic bytes)
    if (inflateInit2(&zs, 16 + MAX_WBITS) != Z_OK) throw std::runtime_error("cannot start zlib's inflate");
    live = true;
  }
  ~Inflater() {
    if (live) inflateEnd(&zs);
  }
  Inflater(const Inflater&) = delete;
  Inflater& operator=(const Inflater&) = delete;
};

}  // namespace gunzip_detail

// Inflates the gzip stream that `read(buf, cap)` delivers (the bytes read, 0 at its end; throws on
// an error) — one member or several concatenated, as gzip allows; bytes after the last member that
// do not start another are ignored, as GNU gzip does — discards its first `skip` bytes and delivers
// up to sink.bytes more; stops as soon as those have been inflated. Returns the bytes delivered:
// fewer than sink.bytes when the stream ends first. Throws std::runtime_error for a damaged stream.
// Memory: two 1 MiB buffers a thread, whatever the stream holds.
template <class Read>
std::uint64_t gunzip_into(Read&& read, std::uint64_t skip, const GunzipSink& sink) {
  constexpr std::size_t kBuf = std::size_t(1) << 20;
  thread_local std::vector<unsigned char> in_buf, out_buf;
  if (in_buf.size() < kBuf) in_buf.resize(kBuf);
  if (out_buf.size() < kBuf) out_buf.resize(kBuf);
  gunzip_detail::Inflater inf;
  z_stream& zs = inf.zs;
  const std::size_t width = sink.scaled ? dtype_size(sink.type) : 1;
  const std::uint64_t want = skip + sink.bytes;
  std::uint64_t produced = 0, delivered = 0;
  std::size_t carry = 0;  // bytes of a partial voxel at the start of out_buf (scaled)
  bool eof = false;
  // At least `need` bytes of input unless the stream ends first: what is left moves to the front
  // and the reads fill the rest (a member's two magic bytes may straddle two reads).
  auto refill = [&](std::size_t need) {
    while (zs.avail_in < need && !eof) {
      const std::size_t keep = zs.avail_in;
      if (keep > 0) std::memmove(in_buf.data(), zs.next_in, keep);
      const std::size_t n = read(in_buf.data() + keep, kBuf - keep);
      if (n == 0) eof = true;
      zs.next_in = in_buf.data();
      zs.avail_in = uInt(keep + n);
    }
  };
  auto deliver = [&](std::size_t got) {  // out_buf[carry, carry + got) just inflated
    std::size_t start = carry;
    if (produced < skip) {  // still inside the skipped bytes (then carry is 0)
      const std::size_t drop = std::size_t(std::min<std::uint64_t>(skip - produced, got));
      start += drop;
      got -= drop;
      produced += drop;
    }
    produced += got;
    if (got == 0) return;
    if (!sink.scaled) {
      std::memcpy(sink.dst + delivered, out_buf.data() + start, got);
      delivered += got;
      return;
    }
    // a partial voxel of the last piece waits at the front (carry bytes, and then start == carry);
    // where the skipped bytes end inside this piece (carry 0), its voxels move to the front, aligned
    if (start != carry) std::memmove(out_buf.data(), out_buf.data() + start, got);
    const std::size_t have = carry + got, whole = have / width * width;
    if (whole > 0) {
      float* o = reinterpret_cast<float*>(sink.dst) + delivered / width;
      visit_dtype(sink.type, out_buf.data(),
                  [&](auto* p) { detail::rescale_range(p, o, 0, whole / width, sink.slope, sink.inter); });
    }
    delivered += whole;
    carry = have - whole;
    std::memmove(out_buf.data(), out_buf.data() + whole, carry);
  };
  while (produced < want) {
    check_cancel();
    refill(1);
    // never more than asked for: the last piece stops at the wanted byte
    const std::size_t room = std::size_t(std::min<std::uint64_t>(kBuf - carry, want - produced));
    zs.next_out = out_buf.data() + carry;
    zs.avail_out = uInt(room);
    const int r = inflate(&zs, Z_NO_FLUSH);
    if (r != Z_OK && r != Z_STREAM_END && r != Z_BUF_ERROR)
      throw std::runtime_error(std::string("broken gzip stream: ") +
                               (zs.msg ? zs.msg : "zlib error " + std::to_string(r)));
    deliver(room - zs.avail_out);
    if (r == Z_STREAM_END) {
      // another member follows only if its magic bytes do
      refill(2);
      if (zs.avail_in >= 2 && zs.next_in[0] == 0x1f && zs.next_in[1] == 0x8b) {
        if (inflateReset(&zs) != Z_OK) throw std::runtime_error("cannot restart zlib's inflate");
        continue;
      }
      break;
    }
    if (r == Z_BUF_ERROR && zs.avail_out == room && eof) break;  // the stream ended inside a member
  }
  return delivered;
}

// The reader of an open file from byte 0 (pread: the caller's file position is left alone).
inline auto fd_reader(int fd) {
  return [fd, pos = std::int64_t(0)](unsigned char* buf, std::size_t cap) mutable -> std::size_t {
#if defined(__unix__) || defined(__APPLE__)
    for (;;) {
      const ssize_t r = ::pread(fd, buf, cap, off_t(pos));
      if (r < 0) {
        if (errno == EINTR) continue;
        throw std::runtime_error(std::string("cannot read the file: ") + std::strerror(errno));
      }
      pos += r;
      return std::size_t(r);
    }
#else
    (void)fd, (void)buf, (void)cap;
    throw std::runtime_error("reading a gzip file natively is not supported on this platform");
#endif
  };
}

// The reader of bytes in memory.
inline auto memory_reader(const unsigned char* p, std::size_t n) {
  return [p, n, pos = std::size_t(0)](unsigned char* buf, std::size_t cap) mutable -> std::size_t {
    const std::size_t k = std::min(cap, n - pos);
    std::memcpy(buf, p + pos, k);
    pos += k;
    return k;
  };
}

}  // namespace bhsd
