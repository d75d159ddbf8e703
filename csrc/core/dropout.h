// Dropout with a counter-based mask: element i is kept iff bits(seed, i) >= p 2^32. The mask
// needs no storage (backward recomputes it from the seed) and no sequential generator: any
// split over threads draws the same mask, and the CPU loop vectorises. torch's CPU dropout
// draws from one mt19937 stream in one thread (31 ms for 64 x 100 x 384 floats on the 2-core
// machine, a quarter of a char-rnn training step; this loop: under 2 ms).
#pragma once

#include <stdint.h>

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

}  // namespace fastlstm
