// A matrix of 2-byte elements (bf16) transposed, 32 rows x 16 columns at a time in AVX-512
// registers. Why: oneDNN's bf16 GEMM reads a transposed left operand (the weight gradient's
// g^T as a view) at half its rate; transposing the small operands ourselves first and the
// product after is cheaper (layer_cpu_fused.cpp, weight_gradients).
#pragma once

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__CUDACC__)

#include <immintrin.h>
#include <stdint.h>

namespace fastlstm {
namespace fused {

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw")
// GCC 12's unmasked intrinsics start from _mm512_undefined_*, which it then calls
// maybe-uninitialized; the results are fully defined.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

// r[i][j] -> r[j][i] for 16 vectors of 16 32-bit lanes: 32-bit and 64-bit unpacks within each
// 128-bit lane, then two rounds of 128-bit lane shuffles.
inline void transpose_16x16_32bit(__m512i r[16]) {
  __m512i t[16];
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
  }
  // Now r[4 b + k], 128-bit lane L: rows 4b .. 4b + 3 of column 4 L + k.
  for (int b = 0; b < 4; ++b) {
    r[4 * b] = _mm512_unpacklo_epi64(t[4 * b], t[4 * b + 2]);
    r[4 * b + 1] = _mm512_unpackhi_epi64(t[4 * b], t[4 * b + 2]);
    r[4 * b + 2] = _mm512_unpacklo_epi64(t[4 * b + 1], t[4 * b + 3]);
    r[4 * b + 3] = _mm512_unpackhi_epi64(t[4 * b + 1], t[4 * b + 3]);
  }
  // Column 4 L + k: lane L of r[k], r[4 + k], r[8 + k], r[12 + k].
  for (int k = 0; k < 4; ++k) {
    const __m512i even01 = _mm512_shuffle_i32x4(r[k], r[4 + k], 0x88);  // lanes 0, 2 of each
    const __m512i odd01 = _mm512_shuffle_i32x4(r[k], r[4 + k], 0xDD);   // lanes 1, 3
    const __m512i even23 = _mm512_shuffle_i32x4(r[8 + k], r[12 + k], 0x88);
    const __m512i odd23 = _mm512_shuffle_i32x4(r[8 + k], r[12 + k], 0xDD);
    t[k] = _mm512_shuffle_i32x4(even01, even23, 0x88);       // L = 0
    t[4 + k] = _mm512_shuffle_i32x4(odd01, odd23, 0x88);     // L = 1
    t[8 + k] = _mm512_shuffle_i32x4(even01, even23, 0xDD);   // L = 2
    t[12 + k] = _mm512_shuffle_i32x4(odd01, odd23, 0xDD);    // L = 3
  }
  for (int i = 0; i < 16; ++i) r[i] = t[i];
}

// dst[c ld_dst + r] = src[r ld_src + c] for r < rows, c < cols. Rows 2i and 2i + 1 are
// interleaved into 32-bit pairs first: a 32-bit transpose of the pairs then puts rows
// 0 .. 31 of column c in order into one 64-byte store. The rest (rows past a multiple of 32,
// columns past a multiple of 16) element by element. Columns outermost: dst is written as 16
// sequential streams (16 rows at a time, left to right) that the prefetchers follow; rows
// outermost wrote all `cols` rows of dst at once and, with the operands out of cache (the
// weight gradients' case), ran at half the rate (a [2500, 128] source, one thread: 65 against
// 127 us).
inline void transpose_2byte(const uint16_t* src, int64_t ld_src, int64_t rows, int64_t cols,
                            uint16_t* dst, int64_t ld_dst) {
  const int64_t full_rows = rows / 32 * 32, full_cols = cols / 16 * 16;
  for (int64_t c0 = 0; c0 < full_cols; c0 += 16) {
    for (int64_t r0 = 0; r0 < full_rows; r0 += 32) {
      __m512i v[16];
      for (int i = 0; i < 16; ++i) {
        const uint16_t* p = src + (r0 + 2 * i) * ld_src + c0;
        const __m512i even = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i*)p));
        const __m512i odd = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i*)(p + ld_src)));
        v[i] = _mm512_or_si512(even, _mm512_slli_epi32(odd, 16));
      }
      transpose_16x16_32bit(v);
      for (int j = 0; j < 16; ++j) _mm512_storeu_si512(dst + (c0 + j) * ld_dst + r0, v[j]);
    }
  }
  for (int64_t c = full_cols; c < cols; ++c)
    for (int64_t r = 0; r < full_rows; ++r) dst[c * ld_dst + r] = src[r * ld_src + c];
  for (int64_t r = full_rows; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) dst[c * ld_dst + r] = src[r * ld_src + c];
}

#pragma GCC diagnostic pop
#pragma GCC pop_options

}  // namespace fused
}  // namespace fastlstm

#endif  // x86-64 GCC/Clang
