// FASTLSTM_CHECK(cond, pieces...): TORCH_CHECK with its message joined here, without
// iostreams. Seen on the GPU machine (GCC 13.3, torch 2.11 headers, 2026-11-26): an
// integer streamed into c10::str inside this library crashed the process (SIGSEGV in
// ostream::_M_insert<long>, from a locale facet lookup), so a failed check killed Python
// instead of raising. TORCH_CHECK with one std::string uses no stream.
#pragma once

#include <ATen/ATen.h>
#include <string>

namespace fastlstm {
namespace detail {

inline std::string piece(const char* s) { return s; }
inline std::string piece(const std::string& s) { return s; }
inline std::string piece(int64_t v) { return std::to_string(v); }
inline std::string piece(at::ScalarType t) { return c10::toString(t); }
inline std::string piece(const c10::Device& d) { return d.str(); }
inline std::string piece(at::IntArrayRef sizes) {
  std::string s = "[";
  for (size_t k = 0; k < sizes.size(); ++k) s += (k ? ", " : "") + std::to_string(sizes[k]);
  return s + "]";
}

template <typename... Args>
std::string join(const Args&... args) {
  std::string s;
  ((s += piece(args)), ...);
  return s;
}

}  // namespace detail
}  // namespace fastlstm

#define FASTLSTM_CHECK(cond, ...) TORCH_CHECK(cond, ::fastlstm::detail::join(__VA_ARGS__))
