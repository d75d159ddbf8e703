// The persistent forward's arguments (p1 and p4), how p4 splits the grid (split_grid), and the
// parts of a cell update both share, written as plain functions so that the C++ tests and the
// CPU op run them on the CPU and the CUDA kernels (lstm_persistent_cuda.cu) run the same code
// on a GPU. p4's per-warp work is in lstm_persistent_mma.h. (p2, p3, the batch split and the
// dataflow sync were removed after commit 5f6c790; benchmarks/NOTES.md keeps their design.)
#pragma once

#include <stdint.h>
#include <string.h>

#include "lstm_step.h"

namespace fastlstm {

constexpr int kMaxStackLayers = 8;

// A stack of L layers (L = 1 for the one-layer op) in one cooperative launch.
// Layer 0 takes its input projection precomputed (xproj, one GEMM over all steps, as the
// step loop does). A layer above computes its input projection inside the kernel from the
// layer below's h_t: its gate rows are [W_ih | W_hh] (K = inputs + H columns) times the
// concatenated [h_below_t | h_{t-1}], so it can run as soon as h_below_t exists.
template <typename T, typename Acc>
struct StackLayer {
  const T* xproj;   // layer 0: [S, B, 4H] x W_ih^T + biases, rows [i | f | g | o]; above: null
  const T* w_ih;    // above: [4H, inputs]; layer 0: null
  const T* bias;    // above: [4H] b_ih + b_hh, or null (no bias); layer 0: null
  const T* h0;      // [B, H]
  const Acc* c0;    // [B, H]
  const T* w_hh;    // [4H, H]
  T* hs;            // [S, B, H]  out: h_t
  Acc* cs;          // [S, B, H]  out: c_t
  Acc* gates;       // [S, B, 4H] out: activated gates
  int64_t inputs;   // columns of w_ih (the layer below's H); 0 for layer 0
};

template <typename T, typename Acc>
struct PersistentStackArgs {
  StackLayer<T, Acc> layer[kMaxStackLayers];
  int layers;
  int64_t steps, batch, hidden;
  bool reverse;     // every layer runs t = S-1 .. 0 (one layer: a bidirectional backward direction)
};

// How p4 splits the grid: layer l owns blocks [first_block, first_block + unit_blocks); its
// block k owns hidden units [k*U, k*U + U_k) for every batch row and keeps those units' gate
// rows in shared memory for the whole sequence.
// The wavefront: at wave w layer l runs its step w - l, so layer l at step t runs beside
// layer l+1 at step t-1 and a stack costs S + L - 1 grid barriers instead of S x L.
struct LayerBlocks {
  int units;        // U: hidden units per block (the layer's last unit slice may have fewer)
  int unit_blocks;  // ceil(H / U)
  int first_block;  // the layer's first block in the grid
};

struct GridSplit {
  int layers;
  int blocks;       // all layers'
  LayerBlocks layer[kMaxStackLayers];
};

// Units per block for every layer so that the blocks fit `sms` (one block per
// multiprocessor) with the per-block weight columns K x U as even as they can be: the
// smallest budget W with sum_l ceil(H / floor(W / K_l)) <= sms. inputs[l]: layer l's K - H
// (0 for layer 0). One layer: U = ceil(H / sms).
inline GridSplit split_grid(const int64_t* inputs, int layers, int64_t hidden, int sms) {
  GridSplit g{};
  g.layers = layers;
  auto units_for = [&](int l, int64_t budget) {
    const int64_t u = budget / (inputs[l] + hidden);
    return u < 1 ? int64_t(1) : (u > hidden ? hidden : u);
  };
  auto slices_for = [&](int64_t budget) {
    int64_t n = 0;
    for (int l = 0; l < layers; ++l) {
      const int64_t u = units_for(l, budget);
      n += (hidden + u - 1) / u;
    }
    return n;
  };
  int64_t k_max = 0;
  for (int l = 0; l < layers; ++l) k_max = inputs[l] + hidden > k_max ? inputs[l] + hidden : k_max;
  int64_t lo = k_max, hi = k_max * hidden;  // slices_for(hi) = layers
  while (lo < hi) {
    const int64_t mid = lo + (hi - lo) / 2;
    if (slices_for(mid) <= sms) hi = mid; else lo = mid + 1;
  }
  for (int l = 0; l < layers; ++l) {
    LayerBlocks& lb = g.layer[l];
    lb.units = static_cast<int>(units_for(l, lo));
    lb.unit_blocks = static_cast<int>((hidden + lb.units - 1) / lb.units);
    lb.first_block = g.blocks;
    g.blocks += lb.unit_blocks;
  }
  return g;
}

// Which layer block `block` works for and its units.
struct BlockSlice {
  int layer;
  int64_t u0;
  int units;
};

FASTLSTM_HD BlockSlice block_slice(const GridSplit& g, int64_t hidden, int block) {
  int l = 0;
  while (l + 1 < g.layers && block >= g.layer[l + 1].first_block) ++l;
  const int64_t u0 = int64_t(block - g.layer[l].first_block) * g.layer[l].units;
  const int64_t units_left = hidden - u0;
  return {l, u0, static_cast<int>(units_left < g.layer[l].units ? units_left : g.layer[l].units)};
}

// `n` consecutive elements from p into out: on the GPU one 16-byte load (p 16-byte aligned,
// n * sizeof(T) == 16: h_rows_in_chunks checked both); on the host a loop.
template <int n, typename T>
FASTLSTM_HD void load_chunk(const T* p, T (&out)[n]) {
#ifdef __CUDA_ARCH__
  static_assert(n * sizeof(T) == 16, "a chunk is one 16-byte load");
  const uint4 raw = *reinterpret_cast<const uint4*>(p);
  memcpy(out, &raw, 16);
#else
  for (int i = 0; i < n; ++i) out[i] = p[i];
#endif
}

// Whether every row of h (the inputs from the layer below, h0, each layer's hs) can be read
// in chunks of `chunk` elements: every row length a multiple of the chunk (so a chunk never
// straddles the W_ih | W_hh edge or a row's end) and the h buffers 16-byte aligned (a chunk
// is one 16-byte load on the GPU).
template <typename T, typename Acc>
bool h_rows_in_chunks(const PersistentStackArgs<T, Acc>& a, int chunk) {
  auto aligned = [](const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; };
  if (a.hidden % chunk != 0) return false;
  for (int l = 0; l < a.layers; ++l) {
    const StackLayer<T, Acc>& L = a.layer[l];
    if (L.inputs % chunk != 0 || !aligned(L.h0) || !aligned(L.hs)) return false;
  }
  return true;
}

// Each layer's columns of W_ih (0 for layer 0): what split_grid and the tilings take.
template <typename T, typename Acc>
void layer_inputs(const PersistentStackArgs<T, Acc>& a, int64_t (&inputs)[kMaxStackLayers]) {
  for (int l = 0; l < kMaxStackLayers; ++l) inputs[l] = l < a.layers ? a.layer[l].inputs : 0;
}

// The time index of forward-order step s.
template <typename T, typename Acc>
FASTLSTM_HD int64_t time_index(const PersistentStackArgs<T, Acc>& a, int64_t s) {
  return a.reverse ? a.steps - 1 - s : s;
}

// The forward-order step layer l takes at wave w, or -1 when it has none then.
template <typename T, typename Acc>
FASTLSTM_HD int64_t wave_step(const PersistentStackArgs<T, Acc>& a, int layer, int64_t wave) {
  const int64_t s = wave - layer;
  return s >= 0 && s < a.steps ? s : -1;
}

// What layer `layer` works on at wave w: its forward-order step (-1: none at this wave), the
// layer below's h at that step (the first `inputs` of its K input columns; null for layer
// 0) and its own h_{t-1} (the last H). Both were written by earlier waves.
template <typename T>
struct WaveInputs {
  int64_t step;
  const T* below;   // [B, inputs]
  const T* h_prev;  // [B, H]
};

template <typename T, typename Acc>
FASTLSTM_HD WaveInputs<T> wave_inputs(const PersistentStackArgs<T, Acc>& a, int layer,
                                      int64_t wave) {
  const int64_t s = wave_step(a, layer, wave);
  if (s < 0) return {-1, nullptr, nullptr};
  const StackLayer<T, Acc>& L = a.layer[layer];
  const int64_t B = a.batch;
  return {s,
          L.inputs > 0 ? a.layer[layer - 1].hs + time_index(a, s) * B * L.inputs : nullptr,
          s == 0 ? L.h0 : L.hs + time_index(a, s - 1) * B * a.hidden};
}

// What the recurrent sums of batch row b of `unit` at forward-order step s of layer L get
// added before the gate math: xproj (layer 0), the bias (layers above), or nothing.
template <typename T, typename Acc>
FASTLSTM_HD void load_unit_input(const PersistentStackArgs<T, Acc>& a,
                                 const StackLayer<T, Acc>& L, int64_t s, int64_t b,
                                 int64_t unit, Acc (&input)[4]) {
  using Cv = Convert<T, Acc>;
  const int64_t H = a.hidden;
  const T* x = L.xproj != nullptr ? L.xproj + (time_index(a, s) * a.batch + b) * 4 * H + unit
               : L.bias != nullptr ? L.bias + unit
                                   : nullptr;
  for (int q = 0; q < 4; ++q) input[q] = x != nullptr ? Cv::load(x[q * H]) : Acc(0);
}

// c_{t-1} of batch row b of `unit` at forward-order step s of layer L (c0 at s = 0).
template <typename T, typename Acc>
FASTLSTM_HD Acc load_c_prev(const PersistentStackArgs<T, Acc>& a, const StackLayer<T, Acc>& L,
                            int64_t s, int64_t b, int64_t unit) {
  const int64_t H = a.hidden;
  return s == 0 ? L.c0[b * H + unit] : L.cs[(time_index(a, s - 1) * a.batch + b) * H + unit];
}

// Batch row b of `unit` at forward-order step s of layer L, given its gates' pre-activations
// (the sums plus load_unit_input) and c_{t-1}: the gate math; writes gates, c_t and h_t and
// returns c_t.
template <typename T, typename Acc>
FASTLSTM_HD Acc cell_step(const PersistentStackArgs<T, Acc>& a, const StackLayer<T, Acc>& L,
                          int64_t s, int64_t b, int64_t unit, const Acc (&pre)[4], Acc c_prev) {
  const int64_t H = a.hidden, time = time_index(a, s);
  const Gates<Acc> gate = activate_gates(pre[0], pre[1], pre[2], pre[3]);
  Acc c, h;
  cell_forward(gate, c_prev, c, h);
  Acc* gates = L.gates + (time * a.batch + b) * 4 * H + unit;  // this unit's column of each gate
  gates[0] = gate.i;
  gates[H] = gate.f;
  gates[2 * H] = gate.g;
  gates[3 * H] = gate.o;
  L.cs[(time * a.batch + b) * H + unit] = c;
  L.hs[(time * a.batch + b) * H + unit] = Convert<T, Acc>::store(h);
  return c;
}

// Batch row b of `unit` at forward-order step s of layer L, given the sums of its four gate
// rows times the step's inputs (`pre`): adds its input, then the gate math; writes gates,
// c_t and h_t. p1 ends a unit's step here; p4 calls the parts itself (it loads the
// input early and keeps c in registers). (The step loop's step_forward_element in
// lstm_step.h does the same inline: sharing one helper made the CPU loop ~40% slower in a
// micro-benchmark.)
template <typename T, typename Acc>
FASTLSTM_HD void finish_unit(const PersistentStackArgs<T, Acc>& a, const StackLayer<T, Acc>& L,
                             int64_t s, int64_t b, int64_t unit, Acc (&pre)[4]) {
  Acc input[4];
  load_unit_input(a, L, s, b, unit, input);
  for (int q = 0; q < 4; ++q) pre[q] += input[q];
  cell_step(a, L, s, b, unit, pre, load_c_prev(a, L, s, b, unit));
}

// Orders in which the host runs the blocks' waves (schedule_on_host): wave by wave (the grid
// barrier's order), every block in turn, blocks in index order or reversed (so that a read of
// something the same wave writes meets a different value or the NaN poison in one of the two
// orders).
enum class HostOrder { waves, waves_blocks_reversed };

// Runs block_step(block, wave) (every thread of one block through one wave's phases) for
// every block and wave of the stack in `order`.
template <typename T, typename Acc, typename BlockStep>
void schedule_on_host(const PersistentStackArgs<T, Acc>& a, const GridSplit& g, HostOrder order,
                      BlockStep block_step) {
  for (int64_t wave = 0; wave < a.steps + a.layers - 1; ++wave)
    for (int n = 0; n < g.blocks; ++n)  // then grid.sync()
      block_step(order == HostOrder::waves ? n : g.blocks - 1 - n, wave);
}

}  // namespace fastlstm
