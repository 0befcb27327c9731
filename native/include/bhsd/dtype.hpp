// bhsd — the voxel element types the engine takes, and dispatch over them.
#pragma once

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>

namespace bhsd {

// Errors the core reports to its caller (the Node layer turns them into JS Errors).
struct Error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

enum class DType { u8, i8, i16, u16, i32, u32, f32, f64 };

inline std::size_t dtype_size(DType t) {
  switch (t) {
    case DType::u8:
    case DType::i8:
      return 1;
    case DType::i16:
    case DType::u16:
      return 2;
    case DType::i32:
    case DType::u32:
    case DType::f32:
      return 4;
    case DType::f64:
      return 8;
  }
  return 0;
}

inline const char* dtype_name(DType t) {
  switch (t) {
    case DType::u8:
      return "uint8";
    case DType::i8:
      return "int8";
    case DType::i16:
      return "int16";
    case DType::u16:
      return "uint16";
    case DType::i32:
      return "int32";
    case DType::u32:
      return "uint32";
    case DType::f32:
      return "float32";
    case DType::f64:
      return "float64";
  }
  return "?";
}

inline bool dtype_is_integer(DType t) { return t != DType::f32 && t != DType::f64; }

// Calls fn(T*) with the pointer cast to the element type of `t`.
template <class Fn>
decltype(auto) visit_dtype(DType t, const void* p, Fn&& fn) {
  switch (t) {
    case DType::u8:
      return fn(static_cast<const std::uint8_t*>(p));
    case DType::i8:
      return fn(static_cast<const std::int8_t*>(p));
    case DType::i16:
      return fn(static_cast<const std::int16_t*>(p));
    case DType::u16:
      return fn(static_cast<const std::uint16_t*>(p));
    case DType::i32:
      return fn(static_cast<const std::int32_t*>(p));
    case DType::u32:
      return fn(static_cast<const std::uint32_t*>(p));
    case DType::f32:
      return fn(static_cast<const float*>(p));
    case DType::f64:
      return fn(static_cast<const double*>(p));
  }
  throw Error("unknown dtype");
}

}  // namespace bhsd
