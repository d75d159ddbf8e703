// Fused CPU generation: a char-rnn continues N samples by n characters in one call. Per
// character: draw an id from the logits (sampling.h), its embedding's input projection (a
// table lookup), every layer's products and gate math (the fused layer's register tiles,
// gate_math.h), the decoder's product. No allocation, no library call in the loop.
//
// Shapes (L layers, H hidden, V vocabulary, N samples, P = padded_width<T>(H)):
//   table     [V, 4H] float   embedding W_ih0^T + b_ih0 + b_hh0, one row per id
//   packed[l] pack_forward of layer l's [4H, K_l] weight over its operand row:
//             l = 0: W_hh0 (K_0 = P); l > 0: [W_ih_l | W_hh_l] (K_l = 2P, zero columns
//             where the halves are padded)
//   bias[l]   [4H] float      b_ih_l + b_hh_l (l > 0; layer 0's is in the table)
//   head      pack_forward(gates = 1) of the decoder [V, P]; head_bias [V] float
//   operand[l] [2, N, K_l] T  ring: slot s % 2 is layer l's operand at step s, [x | h_{t-1}]
//             (layer 0: h_{t-1}); a layer writes its h_t into its own next slot and into the
//             next layer's x half of this slot; zero padding
//   c[l]      [N, H] float    cell states, updated in place
//   logits    [N, V] float    in: the logits of the first draw; out: those after the last id
//   ids       [N, n] int64    out: the ids drawn (or the forced ids, where given)
#pragma once

#include "lstm_cpu_fused.h"
#include "sampling.h"

#ifdef FASTLSTM_CPU_FUSED

namespace fastlstm {
namespace fused {

constexpr int kMaxGenerateLayers = 8;

template <typename T>
struct GenerateArgs {
  int64_t layers, hidden, vocab, samples, steps;
  const float* table;
  const T* packed[kMaxGenerateLayers];
  const float* bias[kMaxGenerateLayers];
  const T* head;
  const float* head_bias;  // or nullptr
  T* operand[kMaxGenerateLayers];
  float* c[kMaxGenerateLayers];
  float* logits;
  int64_t* ids;
  const int64_t* forced;  // [N, n] ids to feed instead of the drawn ones, or nullptr
  SamplingOptions sampling;
  uint64_t seed, offset;  // step s of this call draws with counter (sample, offset + s)
};

template <typename T>
int64_t operand_width(int64_t layer, int64_t hidden) {
  return (layer == 0 ? 1 : 2) * padded_width<T>(hidden);
}

// What one worker does at each step: samples [row_begin, row_end) through unit groups
// [group_begin, group_end) of every layer and decoder groups [head_begin, head_end). Workers
// that split groups meet at a barrier after each layer and after the decoder, and each draws
// every sample (the same draw: the same counter); `writes_ids` is the one that records them.
struct GeneratePart {
  int64_t row_begin, row_end, group_begin, group_end, head_begin, head_end;
  bool writes_ids;
};

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,fma,prfchw,prefer-vector-width=512")

template <typename T>
__attribute__((always_inline)) inline void generate_layer(const GenerateArgs<T>& a,
                                                          const GeneratePart& part, int64_t l,
                                                          int64_t s, const int64_t* ids_now) {
  constexpr bool kBf16 = KStep<T>::kPer == 2;
  constexpr int kPer = KStep<T>::kPer;
  const int64_t H = a.hidden, N = a.samples, P = padded_width<T>(H);
  const int64_t K = operand_width<T>(l, H), ksteps = K / kPer, group_size = ksteps * 4 * kLanes;
  const T* in = a.operand[l] + (s & 1) * N * K;
  T* h_own = a.operand[l] + ((s + 1) & 1) * N * K + (l == 0 ? 0 : P);  // h_t for step s + 1
  T* h_up = l + 1 < a.layers ? a.operand[l + 1] + (s & 1) * N * 2 * P : nullptr;  // x of l + 1
  float pre[kMaxRows * 4 * kLanes];
  for (int64_t g = part.group_begin; g < part.group_end; ++g) {
    const int64_t unit0 = g * kLanes, units = std::min<int64_t>(kLanes, H - unit0);
    const uint32_t* w = as_ksteps(a.packed[l]) + g * group_size;
    for (int64_t row0 = part.row_begin; row0 < part.row_end; row0 += kMaxRows) {
      const int rows = static_cast<int>(std::min<int64_t>(kMaxRows, part.row_end - row0));
      tile_product_n<kBf16>(rows, 4, as_ksteps(in + row0 * K), K / kPer, ksteps, w, 4 * kLanes,
                            kLanes, pre);
      for (int r = 0; r < rows; ++r) {
        const int64_t row = row0 + r;
        const float* rest = l == 0 ? a.table + ids_now[row] * 4 * H + unit0 : a.bias[l] + unit0;
        float* c = a.c[l] + row * H + unit0;
        T* h = h_own + row * K + unit0;
        T* up = h_up ? h_up + row * 2 * P + unit0 : h;
        if (units == kLanes) {
          forward_units<T, false, kLanes>(pre + r * 4 * kLanes, rest, H, c, c, h, up,
                                          static_cast<float*>(nullptr), 0);
        } else {
          forward_units<T, false, 0>(pre + r * 4 * kLanes, rest, H, c, c, h, up,
                                     static_cast<float*>(nullptr), units);
        }
      }
    }
  }
}

// logits[row] = h_top[row] W_head^T + head_bias for the part's rows and decoder groups.
template <typename T>
__attribute__((always_inline)) inline void generate_head(const GenerateArgs<T>& a,
                                                         const GeneratePart& part, int64_t s) {
  constexpr bool kBf16 = KStep<T>::kPer == 2;
  constexpr int kPer = KStep<T>::kPer;
  const int64_t H = a.hidden, N = a.samples, V = a.vocab, P = padded_width<T>(H);
  const int64_t top = a.layers - 1, K = operand_width<T>(top, H), ksteps = P / kPer;
  const T* h = a.operand[top] + ((s + 1) & 1) * N * K + (top == 0 ? 0 : P);
  float out[kMaxRows * 4 * kLanes];
  for (int64_t g0 = part.head_begin; g0 < part.head_end; g0 += 4) {
    const int nv = static_cast<int>(std::min<int64_t>(4, part.head_end - g0));
    for (int64_t row0 = part.row_begin; row0 < part.row_end; row0 += kMaxRows) {
      const int rows = static_cast<int>(std::min<int64_t>(kMaxRows, part.row_end - row0));
      tile_product_n<kBf16>(rows, nv, as_ksteps(h + row0 * K), K / kPer, ksteps,
                            as_ksteps(a.head) + g0 * ksteps * kLanes, kLanes, ksteps * kLanes,
                            out);
      for (int r = 0; r < rows; ++r) {
        float* logits = a.logits + (row0 + r) * V;
        for (int v = 0; v < nv; ++v) {
          const int64_t id0 = (g0 + v) * kLanes, n = std::min<int64_t>(kLanes, V - id0);
          const float* o = out + (r * nv + v) * kLanes;
          for (int64_t u = 0; u < n; ++u)
            logits[id0 + u] = o[u] + (a.head_bias ? a.head_bias[id0 + u] : 0.f);
        }
      }
    }
  }
}

// Step s of the parts [begin, end) one thread runs. `ids_now` [N], `prob` [V], `order` [V]:
// the thread's scratch. `sync(parts)` is called where workers that split the groups meet
// (a no-op where they split the rows).
template <typename T, typename Sync>
void generate_step(const GenerateArgs<T>& a, const GeneratePart* parts, int64_t begin,
                   int64_t end, int64_t s, int64_t* ids_now, float* prob, int32_t* order,
                   Sync&& sync) {
  const int64_t V = a.vocab;
  const int weight = static_cast<int>(end - begin);
  for (int64_t p = begin; p < end; ++p) {
    for (int64_t row = parts[p].row_begin; row < parts[p].row_end; ++row) {
      const int64_t id =
          a.forced ? a.forced[row * a.steps + s]
                   : draw(a.logits + row * V, V, a.sampling,
                          uniform_draw(a.seed, static_cast<uint64_t>(row), a.offset + s), prob,
                          order);
      ids_now[row] = id;
      if (parts[p].writes_ids) a.ids[row * a.steps + s] = id;
    }
  }
  for (int64_t l = 0; l < a.layers; ++l) {
    for (int64_t p = begin; p < end; ++p) generate_layer(a, parts[p], l, s, ids_now);
    sync(weight);
  }
  for (int64_t p = begin; p < end; ++p) generate_head(a, parts[p], s);
  sync(weight);
}

#pragma GCC pop_options

}  // namespace fused
}  // namespace fastlstm

#endif  // FASTLSTM_CPU_FUSED
