// Drawing the next character: a counter-based random number and the draw from logits with
// temperature, top-k and top-p (nucleus) filtering. Portable C++; used by the fused CPU
// generation (generate_cpu.h) and its tests.
#pragma once

#include <stdint.h>

#include <algorithm>
#include <cmath>

namespace fastlstm {

// Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC 2011):
// ten rounds of multiply-and-xor over a 128-bit counter under a 64-bit key. Each
// (key, counter) gives an independent draw, so a character's draw depends only on the
// seed, the sample and the step: not on how the steps are split into calls or threads.
struct Philox4x32 {
  uint32_t v[4];
};

inline Philox4x32 philox4x32_10(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3,
                                uint32_t k0, uint32_t k1) {
  constexpr uint32_t kMul0 = 0xD2511F53u, kMul1 = 0xCD9E8D57u;
  constexpr uint32_t kWeyl0 = 0x9E3779B9u, kWeyl1 = 0xBB67AE85u;
  for (int round = 0; round < 10; ++round) {
    const uint64_t p0 = uint64_t(kMul0) * c0, p1 = uint64_t(kMul1) * c2;
    const uint32_t n0 = uint32_t(p1 >> 32) ^ c1 ^ k0, n2 = uint32_t(p0 >> 32) ^ c3 ^ k1;
    c1 = uint32_t(p1);
    c3 = uint32_t(p0);
    c0 = n0;
    c2 = n2;
    k0 += kWeyl0;
    k1 += kWeyl1;
  }
  return {{c0, c1, c2, c3}};
}

// A uniform double in [0, 1) for (seed, sample, step): 53 bits of one Philox block.
inline double uniform_draw(uint64_t seed, uint64_t sample, uint64_t step) {
  const Philox4x32 r = philox4x32_10(uint32_t(step), uint32_t(step >> 32), uint32_t(sample),
                                     uint32_t(sample >> 32), uint32_t(seed), uint32_t(seed >> 32));
  const uint64_t bits = (uint64_t(r.v[0]) << 21) ^ (uint64_t(r.v[1]) >> 11);
  return double(bits & ((uint64_t(1) << 53) - 1)) * 0x1.0p-53;
}

struct SamplingOptions {
  float temperature;  // 0: argmax
  int64_t top_k;      // keep the top_k largest logits (ties with the k-th kept); <= 0: all
  float top_p;        // then keep the fewest likeliest whose probability reaches top_p; 1: all
};

// The id drawn from logits [V] with uniform u in [0, 1):
//   temperature 0: the first index of the largest logit;
//   else softmax(logits / temperature) restricted to the top_k largest logits (those equal
//   to the k-th kept too, as torch's masked_fill(logits < kth) does), then to the nucleus:
//   in order of falling probability (ties by index), each id whose predecessors' mass is
//   still under top_p of the total; renormalised, and inverted at u.
// prob, order: scratch of V elements each.
inline int64_t draw(const float* logits, int64_t V, const SamplingOptions& opt, double u,
                    float* prob, int32_t* order) {
  int64_t best = 0;
  for (int64_t v = 1; v < V; ++v)
    if (logits[v] > logits[best]) best = v;
  if (opt.temperature == 0.f) return best;
  float kth = -INFINITY;
  if (opt.top_k > 0 && opt.top_k < V) {
    std::copy(logits, logits + V, prob);
    std::nth_element(prob, prob + (opt.top_k - 1), prob + V, std::greater<float>());
    kth = prob[opt.top_k - 1];
  }
  const float inv_t = 1.f / opt.temperature, top = logits[best] * inv_t;
  double total = 0;
  for (int64_t v = 0; v < V; ++v) {
    const float p = logits[v] >= kth ? std::exp(logits[v] * inv_t - top) : 0.f;
    prob[v] = p;
    total += p;
  }
  if (opt.top_p < 1.f) {
    int64_t kept = 0;
    for (int64_t v = 0; v < V; ++v)
      if (prob[v] > 0.f) order[kept++] = static_cast<int32_t>(v);
    std::sort(order, order + kept, [&](int32_t a, int32_t b) {
      return prob[a] > prob[b] || (prob[a] == prob[b] && a < b);
    });
    const double limit = double(opt.top_p) * total;
    double before = 0;
    int64_t n = 0;
    while (n < kept && (n == 0 || before < limit)) before += prob[order[n++]];
    for (int64_t j = n; j < kept; ++j) prob[order[j]] = 0.f;
    total = before;
  }
  const double target = u * total;
  double cumulative = 0;
  int64_t last = best;
  for (int64_t v = 0; v < V; ++v) {
    if (prob[v] <= 0.f) continue;
    cumulative += prob[v];
    last = v;
    if (target < cumulative) return v;
  }
  return last;  // rounding left target at the total: the last id kept
}

}  // namespace fastlstm
