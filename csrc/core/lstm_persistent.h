// The persistent forward's arguments (every version), how the tiled versions split the grid
// (split_grid), and the per-block work of p2/p3 (p2: one layer; p3: a stack of layers as a
// wavefront) written as plain functions of (block, thread), so that the C++ tests and the
// CPU op run them on the CPU (run_stack_on_host: every thread of every block in turn, phase
// by phase) and the CUDA kernel (lstm_persistent_cuda.cu) runs the same code on a GPU. p4's
// per-warp work is in lstm_persistent_mma.h.
#pragma once

#include <stdint.h>
#include <string.h>

#include <limits>
#include <vector>

#include "lstm_step.h"

namespace fastlstm {

constexpr int kRowsPerTile = 4;
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
  unsigned* step_done;  // [L, S] zeros: dataflow sync (step_waits); null: a grid barrier per wave
};

// How the grid is split, for p3 and p4 alike: layer l owns blocks [first_block, first_block +
// unit_blocks * batch_parts); its block k owns hidden units [u*U, u*U + U_k) for u = k /
// batch_parts, and batch rows [p*R, p*R + R_k) for p = k % batch_parts (R = part_rows), and
// keeps those units' gate rows in shared memory for the whole sequence. Splitting the batch
// too (batch_parts > 1) gives each block more units and fewer rows: the same arithmetic and
// P times the weights per block, but each block reads only its rows of h every wave, P times
// fewer bytes from L2 (benchmarks/NOTES.md has the numbers).
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
  int batch_parts;  // P
  int part_rows;    // R = ceil(B / P) (P is lowered until every part has rows)
  int64_t batch;
  LayerBlocks layer[kMaxStackLayers];
};

// Units per block for every layer so that the blocks fit `sms` (one block per
// multiprocessor) with the per-block weight columns K x U as even as they can be: the
// smallest budget W with P sum_l ceil(H / floor(W / K_l)) <= sms. inputs[l]: layer l's K - H
// (0 for layer 0). One layer, P = 1: U = ceil(H / sms).
inline GridSplit split_grid(const int64_t* inputs, int layers, int64_t batch, int64_t hidden,
                            int sms, int batch_parts) {
  GridSplit g{};
  g.layers = layers;
  g.batch = batch;
  g.part_rows = static_cast<int>((batch + batch_parts - 1) / batch_parts);
  g.batch_parts = static_cast<int>((batch + g.part_rows - 1) / g.part_rows);
  const int slots = sms / g.batch_parts;  // unit slices that fit
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
    if (slices_for(mid) <= slots) hi = mid; else lo = mid + 1;
  }
  for (int l = 0; l < layers; ++l) {
    LayerBlocks& lb = g.layer[l];
    lb.units = static_cast<int>(units_for(l, lo));
    lb.unit_blocks = static_cast<int>((hidden + lb.units - 1) / lb.units);
    lb.first_block = g.blocks;
    g.blocks += lb.unit_blocks * g.batch_parts;
  }
  return g;
}

// Which layer block `block` works for, its units and its batch rows.
struct BlockSlice {
  int layer;
  int64_t u0;
  int units;
  int64_t row0;
  int rows;
};

FASTLSTM_HD BlockSlice block_slice(const GridSplit& g, int64_t hidden, int block) {
  int l = 0;
  while (l + 1 < g.layers && block >= g.layer[l + 1].first_block) ++l;
  const int local = block - g.layer[l].first_block;
  const int64_t u0 = int64_t(local / g.batch_parts) * g.layer[l].units;
  const int64_t row0 = int64_t(local % g.batch_parts) * g.part_rows;
  const int64_t units_left = hidden - u0, rows_left = g.batch - row0;
  return {l, u0, static_cast<int>(units_left < g.layer[l].units ? units_left : g.layer[l].units),
          row0, static_cast<int>(rows_left < g.part_rows ? rows_left : g.part_rows)};
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

// p2/p3's work in a block (stack_tiling picks it on the host; every thread reads it):
//   the block keeps its units' gate rows in shared memory as w_s[k][u][q] (k over the K
//   columns, the four gates of a unit side by side: one 16-byte load in fp32).
//   Per wave, phase 1: each work item (one unit u, kRowsPerTile batch rows, one slice of the
//   K columns) sums inputs x weights into registers and writes kRowsPerTile x 4 partial sums
//   to shared memory; block barrier; phase 2: each (unit, rows) tile adds its slices' partial
//   sums and xproj or the bias, applies the gate math, writes gates, c_t, h_t; grid barrier.
// Splitting K lets a block use all its threads when it has few (unit, rows) tiles (S1 one
// layer: 4 units x 16 row groups = 64 tiles, 4 slices -> 256 items).
struct StackLayerTiling {
  int k_splits;     // KS: slices of the K columns per (unit, rows) tile
  int k_len;        // ceil(K / KS)
};

struct StackTiling {
  GridSplit grid;
  int row_groups;           // G = ceil(R / kRowsPerTile)
  int threads;              // per block
  bool chunks;              // h read in chunks of kStackChunk<T> (h_rows_in_chunks allowed it)
  int64_t weight_elements;  // shared memory (elements of Acc): weights of the largest slice,
  int64_t partial_elements; // then the partial sums of the largest block
  StackLayerTiling layer[kMaxStackLayers];
};

// chunk: kStackChunk<T> where h_rows_in_chunks allows it, else 0 (one element per load).
inline StackTiling stack_tiling(const int64_t* inputs, int layers, int64_t batch, int64_t hidden,
                                int sms, int threads, int batch_parts = 1, int chunk = 0) {
  StackTiling t{};
  t.grid = split_grid(inputs, layers, batch, hidden, sms, batch_parts);
  t.row_groups = (t.grid.part_rows + kRowsPerTile - 1) / kRowsPerTile;
  t.threads = threads;
  t.chunks = chunk > 0;
  for (int l = 0; l < layers; ++l) {
    StackLayerTiling& lt = t.layer[l];
    const int64_t K = inputs[l] + hidden, U = t.grid.layer[l].units;
    const int64_t tiles = U * t.row_groups, splits = threads / tiles;
    lt.k_splits = static_cast<int>(splits < 1 ? 1 : (splits > 8 ? 8 : splits));
    lt.k_len = static_cast<int>((K + lt.k_splits - 1) / lt.k_splits);
    if (chunk > 0) lt.k_len = (lt.k_len + chunk - 1) / chunk * chunk;  // slices start on chunks
    const int64_t w = K * U * 4, p = tiles * lt.k_splits * kRowsPerTile * 4;
    t.weight_elements = w > t.weight_elements ? w : t.weight_elements;
    t.partial_elements = p > t.partial_elements ? p : t.partial_elements;
  }
  return t;
}

// Each layer's columns of W_ih (0 for layer 0): what split_grid and the tilings take.
template <typename T, typename Acc>
void layer_inputs(const PersistentStackArgs<T, Acc>& a, int64_t (&inputs)[kMaxStackLayers]) {
  for (int l = 0; l < kMaxStackLayers; ++l) inputs[l] = l < a.layers ? a.layer[l].inputs : 0;
}

// p3's chunk: the elements of one 16-byte load.
template <typename T>
constexpr int kStackChunk = static_cast<int>(16 / sizeof(T));

// stack_tiling for `a` as the kernel and the CPU op run it: h in chunks where
// h_rows_in_chunks allows.
template <typename T, typename Acc>
StackTiling stack_tiling_for(const PersistentStackArgs<T, Acc>& a, int sms, int threads,
                             int batch_parts) {
  int64_t inputs[kMaxStackLayers];
  layer_inputs(a, inputs);
  const int chunk = h_rows_in_chunks(a, kStackChunk<T>) ? kStackChunk<T> : 0;
  return stack_tiling(inputs, a.layers, a.batch, a.hidden, sms, threads, batch_parts, chunk);
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

// Dataflow sync (p3/p4 with step_done, FASTLSTM_PERSISTENT_DATAFLOW=1) instead of a grid
// barrier per wave. Every output is a buffer per step, never overwritten, so the only order
// the kernel needs is read-after-write: a block of layer l starts step s once every block of
// layer l has finished step s - 1 (h_{t-1}) and every block of layer l - 1 has finished step
// s (its h_t, this layer's input). Each block counts its finished steps in step_done[l][s];
// no block waits for the layers above it, or for blocks whose output it does not read.
// The grid must still be resident at once (a cooperative launch) so that spinning cannot
// starve a block that has not started.
struct StepWait {
  int64_t index;    // into step_done
  unsigned target;  // the count that means "every block of that layer finished that step"
};

FASTLSTM_HD unsigned layer_block_count(const GridSplit& g, int layer) {
  return unsigned(g.layer[layer].unit_blocks) * unsigned(g.batch_parts);
}

// What a block of `layer` waits for before its forward-order step s: up to two counters.
template <typename T, typename Acc>
FASTLSTM_HD int step_waits(const PersistentStackArgs<T, Acc>& a, const GridSplit& g, int layer,
                           int64_t s, StepWait (&waits)[2]) {
  const StepWait own_last{layer * a.steps + s - 1, layer_block_count(g, layer)};
  const StepWait below{(layer - 1) * a.steps + s, layer > 0 ? layer_block_count(g, layer - 1) : 0};
  // Constant indices only (a GPU keeps the array in registers).
  if (s > 0 && layer > 0) return waits[0] = own_last, waits[1] = below, 2;
  if (s > 0) return waits[0] = own_last, 1;
  if (layer > 0) return waits[0] = below, 1;
  return 0;
}

// The counter a block of `layer` adds one to when it has written its step s.
template <typename T, typename Acc>
FASTLSTM_HD int64_t step_done_index(const PersistentStackArgs<T, Acc>& a, int layer, int64_t s) {
  return layer * a.steps + s;
}

// Once per launch: this block's gate rows into w_s [K][U_k][4].
template <typename T, typename Acc>
FASTLSTM_HD void stack_load_weights(const PersistentStackArgs<T, Acc>& a, const StackTiling& t,
                                    int block, int tid, Acc* w_s) {
  const BlockSlice bs = block_slice(t.grid, a.hidden, block);
  const StackLayer<T, Acc>& L = a.layer[bs.layer];
  const int64_t H = a.hidden, in = L.inputs, K = in + H;
  const int U = bs.units;
  // Walk the weight rows (k fastest: coalesced global reads).
  for (int64_t i = tid; i < 4 * int64_t(U) * K; i += t.threads) {
    const int64_t row = i / K, k = i % K, q = row / U, u = row % U, g = q * H + bs.u0 + u;
    const T w = k < in ? L.w_ih[g * in + k] : L.w_hh[g * H + k - in];
    w_s[(k * U + u) * 4 + q] = Convert<T, Acc>::load(w);
  }
}

// acc[r][q] += h[r] * w4[q]: one k of a tile (w4: the unit's four gate weights at k).
template <typename Acc>
FASTLSTM_HD void add_tile_products(const Acc (&h)[kRowsPerTile], const Acc* w4,
                                   Acc (&acc)[kRowsPerTile][4]) {
  const Acc w0 = w4[0], w1 = w4[1], w2 = w4[2], w3 = w4[3];
#pragma unroll
  for (int r = 0; r < kRowsPerTile; ++r) {
    acc[r][0] += h[r] * w0;
    acc[r][1] += h[r] * w1;
    acc[r][2] += h[r] * w2;
    acc[r][3] += h[r] * w3;
  }
}

// acc[r][q] += src[row0 + r][k - first] * w_s[k][u][q] for k in [k_begin, k_end); src rows
// are `width` wide, rows at or past `row_end` count as zeros.
template <typename T, typename Acc>
FASTLSTM_HD void accumulate_tile(const T* src, int64_t width, int64_t first, int64_t k_begin,
                                 int64_t k_end, const Acc* w_s, int U, int64_t u, int64_t row0,
                                 int64_t row_end, Acc (&acc)[kRowsPerTile][4]) {
  for (int64_t k = k_begin; k < k_end; ++k) {
    Acc h[kRowsPerTile];
#pragma unroll
    for (int r = 0; r < kRowsPerTile; ++r) {
      const int64_t b = row0 + r;
      h[r] = b < row_end ? Convert<T, Acc>::load(src[b * width + k - first]) : Acc(0);
    }
    add_tile_products(h, w_s + (k * U + u) * 4, acc);
  }
}

// accumulate_tile with h read a chunk per row at a time (one 16-byte load on the GPU, where
// the per-element loads of p1 left the loop waiting on L2 once per k); k_begin, k_end and
// `first` are multiples of the chunk. The same sums in the same order.
template <typename T, typename Acc>
FASTLSTM_HD void accumulate_tile_chunks(const T* src, int64_t width, int64_t first,
                                        int64_t k_begin, int64_t k_end, const Acc* w_s, int U,
                                        int64_t u, int64_t row0, int64_t row_end,
                                        Acc (&acc)[kRowsPerTile][4]) {
  constexpr int C = kStackChunk<T>;
  const T zero = Convert<T, Acc>::store(Acc(0));
#pragma unroll 2
  for (int64_t k0 = k_begin; k0 < k_end; k0 += C) {
    T h[kRowsPerTile][C];
#pragma unroll
    for (int r = 0; r < kRowsPerTile; ++r) {
      if (row0 + r < row_end)
        load_chunk(src + (row0 + r) * width + k0 - first, h[r]);
      else
        for (int i = 0; i < C; ++i) h[r][i] = zero;
    }
#pragma unroll
    for (int i = 0; i < C; ++i) {
      Acc hk[kRowsPerTile];
#pragma unroll
      for (int r = 0; r < kRowsPerTile; ++r) hk[r] = Convert<T, Acc>::load(h[r][i]);
      add_tile_products(hk, w_s + ((k0 + i) * U + u) * 4, acc);
    }
  }
}

// Phase 1 of wave w: partial gate sums of every work item into `partial`
// [tiles * KS][kRowsPerTile][4]. Reads only what earlier waves wrote.
template <typename T, typename Acc>
FASTLSTM_HD void stack_partial_sums(const PersistentStackArgs<T, Acc>& a, const StackTiling& t,
                                    int block, int64_t wave, int tid, const Acc* w_s,
                                    Acc* partial) {
  const BlockSlice bs = block_slice(t.grid, a.hidden, block);
  const WaveInputs<T> x = wave_inputs(a, bs.layer, wave);
  if (x.step < 0) return;
  const StackLayerTiling& lt = t.layer[bs.layer];
  const int64_t H = a.hidden, in = a.layer[bs.layer].inputs, K = in + H;
  const int64_t row_end = bs.row0 + bs.rows;
  const int U = bs.units;
  const int64_t items = int64_t(U) * t.row_groups * lt.k_splits;
  for (int64_t item = tid; item < items; item += t.threads) {
    // Consecutive threads: k slices, then units, then row groups.
    const int64_t tile = item / lt.k_splits, slice = item % lt.k_splits;
    const int64_t u = tile % U, row0 = bs.row0 + (tile / U) * kRowsPerTile;
    const int64_t k_begin = slice * lt.k_len;
    const int64_t k_end = k_begin + lt.k_len < K ? k_begin + lt.k_len : K;
    Acc acc[kRowsPerTile][4] = {};
    const int64_t below_end = k_end < in ? k_end : in, own_begin = k_begin > in ? k_begin : in;
    if (t.chunks) {
      accumulate_tile_chunks(x.below, in, 0, k_begin, below_end, w_s, U, u, row0, row_end, acc);
      accumulate_tile_chunks(x.h_prev, H, in, own_begin, k_end, w_s, U, u, row0, row_end, acc);
    } else {
      accumulate_tile(x.below, in, 0, k_begin, below_end, w_s, U, u, row0, row_end, acc);
      accumulate_tile(x.h_prev, H, in, own_begin, k_end, w_s, U, u, row0, row_end, acc);
    }
    Acc* out = partial + item * kRowsPerTile * 4;
#pragma unroll
    for (int r = 0; r < kRowsPerTile; ++r)
#pragma unroll
      for (int q = 0; q < 4; ++q) out[r * 4 + q] = acc[r][q];
  }
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
// c_t and h_t. p1 and p3 end a unit's step here; p4 calls the parts itself (it loads the
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

// Phase 2 of wave w: every (unit, rows) tile's gates, c_t and h_t.
template <typename T, typename Acc>
FASTLSTM_HD void stack_cell_update(const PersistentStackArgs<T, Acc>& a, const StackTiling& t,
                                   int block, int64_t wave, int tid, const Acc* partial) {
  const BlockSlice bs = block_slice(t.grid, a.hidden, block);
  const int64_t s = wave_step(a, bs.layer, wave);
  if (s < 0) return;
  const int KS = t.layer[bs.layer].k_splits;
  const int U = bs.units;
  const int64_t tiles = int64_t(U) * t.row_groups;
  for (int64_t tile = tid; tile < tiles; tile += t.threads) {
    const int64_t unit = bs.u0 + tile % U, row0 = bs.row0 + (tile / U) * kRowsPerTile;
    for (int r = 0; r < kRowsPerTile && row0 + r < bs.row0 + bs.rows; ++r) {
      Acc pre[4] = {};
      for (int64_t slice = 0; slice < KS; ++slice) {
        const Acc* p = partial + ((tile * KS + slice) * kRowsPerTile + r) * 4;
        for (int q = 0; q < 4; ++q) pre[q] += p[q];
      }
      finish_unit(a, a.layer[bs.layer], s, row0 + r, unit, pre);
    }
  }
}

// Orders in which the host runs the blocks' steps (schedule_on_host):
//   waves: wave by wave (the grid barrier's order), every block in turn, blocks in index
//     order or reversed (so that a read of something the same wave writes meets a different
//     value or the NaN poison in one of the two orders);
//   dataflow_*: each block's steps as soon as step_waits allows, counting finished steps as
//     the kernel does: low layers first (layer 0 runs all its steps before layer 1 starts:
//     the most skew between layers) or high layers first (a layer runs the moment it may).
//     A wait that is missing lets a block read the poison; a wrong target stalls the run.
enum class HostOrder { waves, waves_blocks_reversed, dataflow_low_first, dataflow_high_first };

// Runs block_step(block, wave) (every thread of one block through one wave's phases) for
// every block and step of the stack in `order`. Returns false if the dataflow orders stall
// (no block can start its next step) or a counter would pass its target.
template <typename T, typename Acc, typename BlockStep>
bool schedule_on_host(const PersistentStackArgs<T, Acc>& a, const GridSplit& g, HostOrder order,
                      BlockStep block_step) {
  const int blocks = g.blocks;
  if (order == HostOrder::waves || order == HostOrder::waves_blocks_reversed) {
    for (int64_t wave = 0; wave < a.steps + a.layers - 1; ++wave)
      for (int n = 0; n < blocks; ++n)  // then grid.sync()
        block_step(order == HostOrder::waves ? n : blocks - 1 - n, wave);
    return true;
  }
  std::vector<unsigned> done(size_t(a.layers) * a.steps, 0);
  std::vector<int64_t> next(blocks, 0);  // each block's next step
  for (int64_t left = int64_t(blocks) * a.steps; left > 0; --left) {
    int runnable = -1;
    for (int n = 0; n < blocks && runnable < 0; ++n) {  // blocks are in layer order
      const int blk = order == HostOrder::dataflow_low_first ? n : blocks - 1 - n;
      const int layer = block_slice(g, a.hidden, blk).layer;
      if (next[blk] == a.steps) continue;
      StepWait waits[2];
      bool ready = true;
      for (int i = 0, k = step_waits(a, g, layer, next[blk], waits); i < k; ++i)
        ready &= done[waits[i].index] == waits[i].target;
      if (ready) runnable = blk;
    }
    if (runnable < 0) return false;
    const int layer = block_slice(g, a.hidden, runnable).layer;
    block_step(runnable, next[runnable] + layer);
    if (++done[step_done_index(a, layer, next[runnable]++)] > layer_block_count(g, layer))
      return false;
  }
  return true;
}

// The kernel's schedule run on the host: in each block every thread in turn, phase by phase,
// as the GPU's barriers order them; the blocks in `order`. Shared memory starts NaN. For the
// C++ tests and the CPU implementation of the stack op (which tests the torch glue).
template <typename T, typename Acc>
bool run_stack_on_host(const PersistentStackArgs<T, Acc>& a, const StackTiling& t,
                       HostOrder order = HostOrder::waves) {
  const int blocks = t.grid.blocks;
  std::vector<std::vector<Acc>> smem(
      blocks, std::vector<Acc>(t.weight_elements + t.partial_elements,
                               std::numeric_limits<Acc>::quiet_NaN()));
  for (int blk = 0; blk < blocks; ++blk)
    for (int tid = 0; tid < t.threads; ++tid) stack_load_weights(a, t, blk, tid, smem[blk].data());
  return schedule_on_host(a, t.grid, order, [&](int blk, int64_t wave) {
    Acc* w_s = smem[blk].data();
    for (int tid = 0; tid < t.threads; ++tid)
      stack_partial_sums(a, t, blk, wave, tid, w_s, w_s + t.weight_elements);
    for (int tid = 0; tid < t.threads; ++tid)  // __syncthreads()
      stack_cell_update(a, t, blk, wave, tid, w_s + t.weight_elements);
  });
}

}  // namespace fastlstm
