// Dropout with a counter-based mask: element i is kept iff bits(seed, i) >= p 2^32. The mask
// needs no storage (backward recomputes it from the seed) and no sequential generator: any
// split over threads draws the same mask, and the CPU loop vectorises. torch's CPU dropout
// draws from one mt19937 stream in one thread (31 ms for 64 x 100 x 384 floats on the 2-core
// machine, a quarter of a char-rnn training step; this loop: under 2 ms).
#pragma once

#include <stdint.h>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__CUDACC__)
#include <immintrin.h>
#endif

#include "lstm_step.h"

namespace fastlstm {

// 32 uniform bits for element i: splitmix64's finalizer (a bijection with full avalanche)
// of the seed plus i times the golden-ratio increment.
FASTLSTM_HD uint32_t dropout_bits(uint64_t seed, uint64_t i) {
  uint64_t z = seed + (i + 1) * 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return static_cast<uint32_t>((z ^ (z >> 31)) >> 32);
}

// out[i] = x[i] * scale where kept, 0 where dropped, for i in [begin, end); `threshold` =
// p 2^32 (p < 1), scale = 1 / (1 - p). Branch-free, so the loop vectorises.
template <typename T, typename Acc>
FASTLSTM_HD void dropout_range(const T* x, T* out, int64_t begin, int64_t end, uint64_t seed,
                               uint32_t threshold, Acc scale) {
  using Cv = Convert<T, Acc>;
  for (int64_t i = begin; i < end; ++i) {
    const bool keep = dropout_bits(seed, static_cast<uint64_t>(i)) >= threshold;
    out[i] = Cv::store(keep ? Cv::load(x[i]) * scale : Acc(0));
  }
}

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__CUDACC__)
// dropout_range with AVX-512 (F, DQ, BW, VL; BF16 for bfloat16): 16 elements a step, the
// bits of 8 at a time in 64-bit lanes (the compiler leaves the bf16 loop scalar: 1.1 G
// elements/s a thread, this ~4x that). The same bits, the same mask, the same values.
// Call only where __builtin_cpu_supports says the CPU has them.
#pragma GCC push_options
#pragma GCC target("avx512f,avx512dq,avx512bw,avx512vl,avx512bf16")
// dropout_bits' mixing for 8 values of z = seed + (i + 1) golden.
inline __m256i dropout_bits8(__m512i z) {
  z = _mm512_mullo_epi64(_mm512_xor_si512(z, _mm512_srli_epi64(z, 30)),
                         _mm512_set1_epi64(static_cast<int64_t>(0xBF58476D1CE4E5B9ull)));
  z = _mm512_mullo_epi64(_mm512_xor_si512(z, _mm512_srli_epi64(z, 27)),
                         _mm512_set1_epi64(static_cast<int64_t>(0x94D049BB133111EBull)));
  return _mm512_cvtepi64_epi32(_mm512_srli_epi64(_mm512_xor_si512(z, _mm512_srli_epi64(z, 31)), 32));
}

template <typename T>
void dropout_range_avx512(const T* x, T* out, int64_t begin, int64_t end, uint64_t seed,
                     uint32_t threshold, float scale) {
  static_assert(sizeof(T) == 4 || sizeof(T) == 2, "float or Bf16");
  const uint64_t golden = 0x9E3779B97F4A7C15ull;
  // z = seed + (i + 1) golden for the 16 elements at i, i + 1, ...; each step adds 16 golden.
  __m512i z_lo = _mm512_add_epi64(
      _mm512_set1_epi64(static_cast<int64_t>(seed + (static_cast<uint64_t>(begin) + 1) * golden)),
      _mm512_mullo_epi64(_mm512_setr_epi64(0, 1, 2, 3, 4, 5, 6, 7),
                         _mm512_set1_epi64(static_cast<int64_t>(golden))));
  __m512i z_hi = _mm512_add_epi64(z_lo, _mm512_set1_epi64(static_cast<int64_t>(8 * golden)));
  const __m512i step = _mm512_set1_epi64(static_cast<int64_t>(16 * golden));
  const __m512i thr = _mm512_set1_epi32(static_cast<int32_t>(threshold));
  const __m512 s = _mm512_set1_ps(scale);
  int64_t i = begin;
  for (; i + 16 <= end; i += 16) {
    const __m512i b =
        _mm512_inserti64x4(_mm512_castsi256_si512(dropout_bits8(z_lo)), dropout_bits8(z_hi), 1);
    const __mmask16 keep = _mm512_cmp_epu32_mask(b, thr, _MM_CMPINT_NLT);
    z_lo = _mm512_add_epi64(z_lo, step);
    z_hi = _mm512_add_epi64(z_hi, step);
    if constexpr (sizeof(T) == 4) {
      _mm512_storeu_ps(out + i, _mm512_maskz_mul_ps(keep, _mm512_loadu_ps(x + i), s));
    } else {
      const __m512 v = _mm512_castsi512_ps(_mm512_slli_epi32(
          _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + i))), 16));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + i),
                          reinterpret_cast<__m256i>(_mm512_cvtneps_pbh(_mm512_maskz_mul_ps(keep, v, s))));
    }
  }
  dropout_range(x, out, i, end, seed, threshold, scale);
}
#pragma GCC pop_options
#endif

}  // namespace fastlstm
