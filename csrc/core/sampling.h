// Drawing the next character: a counter-based random number and the draw from logits with
// temperature, top-k and top-p (nucleus) filtering. Host and device code (FASTLSTM_HD), no
// library calls: the fused CPU generation (generate_cpu.h) and the CUDA sampling kernel
// (generate_cuda.cu) draw with the same function.
#pragma once

#include <stdint.h>

#include "gate_math.h"

namespace fastlstm {

// Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC 2011):
// ten rounds of multiply-and-xor over a 128-bit counter under a 64-bit key. Each
// (key, counter) gives an independent draw, so a character's draw depends only on the
// seed, the sample and the step: not on how the steps are split into calls or threads.
struct Philox4x32 {
  uint32_t v[4];
};

FASTLSTM_HD Philox4x32 philox4x32_10(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3,
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
FASTLSTM_HD double uniform_draw(uint64_t seed, uint64_t sample, uint64_t step) {
  const Philox4x32 r = philox4x32_10(uint32_t(step), uint32_t(step >> 32), uint32_t(sample),
                                     uint32_t(sample >> 32), uint32_t(seed), uint32_t(seed >> 32));
  const uint64_t bits = (uint64_t(r.v[0]) << 21) ^ (uint64_t(r.v[1]) >> 11);
  return double(bits & ((uint64_t(1) << 53) - 1)) * (1.0 / 9007199254740992.0);  // 2^-53
}

struct SamplingOptions {
  float temperature;  // 0: argmax
  int64_t top_k;      // keep the top_k largest logits (ties with the k-th kept); <= 0: all
  float top_p;        // then keep the fewest likeliest whose probability reaches top_p; 1: all
};

// Whether id a comes before id b in order of falling logit (ties: the lower id first).
FASTLSTM_HD bool ranks_before(const float* logits, int32_t a, int32_t b) {
  return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
}

// Moves order[root] down a heap of n ids whose root ranks last.
FASTLSTM_HD void sift_down(const float* logits, int32_t* order, int64_t root, int64_t n) {
  while (true) {
    int64_t child = 2 * root + 1;
    if (child >= n) return;
    if (child + 1 < n && ranks_before(logits, order[child], order[child + 1])) ++child;
    if (!ranks_before(logits, order[root], order[child])) return;
    const int32_t t = order[root];
    order[root] = order[child];
    order[child] = t;
    root = child;
  }
}

// order[0..V) = the ids by falling logit (ranks_before): a heap sort, O(V log V), in place,
// no recursion or allocation (it runs in one GPU thread as well).
FASTLSTM_HD void sort_by_logit(const float* logits, int64_t V, int32_t* order) {
  for (int64_t v = 0; v < V; ++v) order[v] = static_cast<int32_t>(v);
  for (int64_t k = V / 2 - 1; k >= 0; --k) sift_down(logits, order, k, V);
  for (int64_t n = V - 1; n > 0; --n) {  // the last-ranked root to the end, each in turn
    const int32_t t = order[0];
    order[0] = order[n];
    order[n] = t;
    sift_down(logits, order, 0, n);
  }
}

// The id drawn from logits [V] with uniform u in [0, 1):
//   temperature 0: the first index of the largest logit;
//   else softmax(logits / temperature) restricted to the top_k largest logits (those equal
//   to the k-th kept too, as torch's masked_fill(logits < kth) does), then to the nucleus:
//   in order of falling probability (ties by index), each id whose predecessors' mass is
//   still under top_p of the total; renormalised, and inverted at u (in id order).
// prob, order: scratch of V elements each.
FASTLSTM_HD int64_t draw(const float* logits, int64_t V, const SamplingOptions& opt, double u,
                         float* prob, int32_t* order) {
  int64_t best = 0;
  for (int64_t v = 1; v < V; ++v)
    if (logits[v] > logits[best]) best = v;
  if (opt.temperature == 0.f) return best;
  const float inv_t = 1.f / opt.temperature, top = logits[best] * inv_t;
  double total = 0;
  for (int64_t v = 0; v < V; ++v) {
    prob[v] = exp_(logits[v] * inv_t - top);
    total += prob[v];
  }
  const bool top_k = opt.top_k > 0 && opt.top_k < V;
  if (top_k || opt.top_p < 1.f) {
    // Probability falls with the logit: one order serves top-k and the nucleus.
    sort_by_logit(logits, V, order);
    int64_t kept = V;
    if (top_k) {
      const float kth = logits[order[opt.top_k - 1]];
      kept = opt.top_k;
      while (kept < V && logits[order[kept]] >= kth) ++kept;
    }
    double mass = 0;
    for (int64_t j = 0; j < kept; ++j) mass += prob[order[j]];
    if (opt.top_p < 1.f) {
      const double limit = double(opt.top_p) * mass;
      double before = 0;
      int64_t n = 0;
      while (n < kept && (n == 0 || before < limit)) before += prob[order[n++]];
      kept = n;
      mass = before;
    }
    for (int64_t j = kept; j < V; ++j) prob[order[j]] = 0.f;
    total = mass;
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
