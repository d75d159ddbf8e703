// The persistent forward's arguments and, for the tiled version (p2), its per-block work
// written as plain functions of (block, thread) so the C++ tests can run them on the CPU
// (tests/cpp/test_persistent_tiling.cpp: every thread of every block in turn, phase by
// phase) and the CUDA kernel (lstm_persistent_cuda.cu) runs the same code on a GPU.
//
// p2, per layer and direction, one cooperative launch:
//   block k owns hidden units [k*U, k*U + U_k) and keeps their W_hh rows in shared memory
//   as w_s[k'][u][q] (the four gates of a unit side by side: one 16-byte load in fp32);
//   per step, phase 1: each work item (one unit u, kRowsPerTile batch rows, one slice of
//   the hidden dimension k) sums h_{t-1}[rows, slice] * W_hh[4 gates of u, slice] into
//   registers and writes the kRowsPerTile x 4 partial sums to shared memory;
//   block barrier; phase 2: each (unit, rows) tile adds its slices' partial sums and the
//   input projection, applies the gate math, writes gates, c_t, h_t; grid barrier.
// Splitting k lets a block use all its threads when it has few (unit, rows) tiles (S1:
// 4 units x 16 row groups = 64 tiles, 4 slices -> 256 items).
#pragma once

#include <stdint.h>

#include "lstm_step.h"

namespace fastlstm {

template <typename T, typename Acc>
struct PersistentForwardArgs {
  const T* xproj;   // [S, B, 4H] x W_ih^T + biases, rows [i | f | g | o]
  const T* h0;      // [B, H]
  const Acc* c0;    // [B, H]
  const T* w_hh;    // [4H, H]
  T* hs;            // [S, B, H]  out: h_t
  Acc* cs;          // [S, B, H]  out: c_t
  Acc* gates;       // [S, B, 4H] out: activated gates
  int64_t steps, batch, hidden;
  bool reverse;     // run t = S-1 .. 0
};

// One unit's forward from its four pre-activations: writes the activated gates to
// gates[0], gates[H], gates[2H], gates[3H] (its columns of a [.., 4H] row), c_t and h_t.
// (step_forward_element in lstm_step.h does the same inline: routing the CPU loop through
// this function made it ~40% slower in a micro-benchmark, so it stays separate.)
template <typename T, typename Acc>
FASTLSTM_HD void unit_forward(Acc a_i, Acc a_f, Acc a_g, Acc a_o, Acc c_prev, int64_t H,
                              Acc* gates, Acc* c_out, T* h_out) {
  const Gates<Acc> gate = activate_gates(a_i, a_f, a_g, a_o);
  Acc c, h;
  cell_forward(gate, c_prev, c, h);
  gates[0] = gate.i;
  gates[H] = gate.f;
  gates[2 * H] = gate.g;
  gates[3 * H] = gate.o;
  *c_out = c;
  *h_out = Convert<T, Acc>::store(h);
}

constexpr int kRowsPerTile = 4;

// How p2 splits the work. Host code picks it (persistent_tiling); every thread reads it.
struct PersistentTiling {
  int units;       // U: hidden units per block (the last block may have fewer)
  int blocks;      // ceil(H / U)
  int row_groups;  // G = ceil(B / kRowsPerTile)
  int k_splits;    // KS: slices of the hidden (reduction) dimension per (unit, rows) tile
  int k_len;       // ceil(H / KS)
  int threads;     // per block
};

// Units spread over `sms` blocks (one per multiprocessor); k split so that a block has about
// `threads` work items, at most 8 slices.
inline PersistentTiling persistent_tiling(int64_t batch, int64_t hidden, int sms, int threads) {
  PersistentTiling t{};
  t.units = static_cast<int>((hidden + sms - 1) / sms);
  t.blocks = static_cast<int>((hidden + t.units - 1) / t.units);
  t.row_groups = static_cast<int>((batch + kRowsPerTile - 1) / kRowsPerTile);
  const int64_t tiles = int64_t(t.units) * t.row_groups;
  const int64_t splits = threads / tiles;
  t.k_splits = static_cast<int>(splits < 1 ? 1 : (splits > 8 ? 8 : splits));
  t.k_len = static_cast<int>((hidden + t.k_splits - 1) / t.k_splits);
  t.threads = threads;
  return t;
}

// Shared memory per block, in elements of Acc: W_hh slice, then the partial sums.
inline int64_t persistent_smem_elements(const PersistentTiling& t, int64_t hidden) {
  return hidden * t.units * 4 +
         int64_t(t.units) * t.row_groups * t.k_splits * kRowsPerTile * 4;
}

FASTLSTM_HD int block_units(const PersistentTiling& t, int64_t hidden, int block) {
  const int64_t left = hidden - int64_t(block) * t.units;
  return static_cast<int>(left < t.units ? left : t.units);
}

// Once per launch: this block's W_hh rows into w_s [H][U_k][4].
template <typename T, typename Acc>
FASTLSTM_HD void tiled_load_weights(const PersistentForwardArgs<T, Acc>& a,
                                    const PersistentTiling& t, int block, int tid, Acc* w_s) {
  const int64_t H = a.hidden, u0 = int64_t(block) * t.units;
  const int U = block_units(t, H, block);
  // Walk W_hh row by row (k fastest: coalesced global reads).
  for (int64_t i = tid; i < 4 * int64_t(U) * H; i += t.threads) {
    const int64_t row = i / H, k = i % H, q = row / U, u = row % U;
    w_s[(k * U + u) * 4 + q] = Convert<T, Acc>::load(a.w_hh[(q * H + u0 + u) * H + k]);
  }
}

// The time index of forward-order step s.
template <typename T, typename Acc>
FASTLSTM_HD int64_t time_index(const PersistentForwardArgs<T, Acc>& a, int64_t s) {
  return a.reverse ? a.steps - 1 - s : s;
}

// Phase 1 of step s: partial gate sums of every work item into `partial`
// [tiles * KS][kRowsPerTile][4].
template <typename T, typename Acc>
FASTLSTM_HD void tiled_partial_sums(const PersistentForwardArgs<T, Acc>& a,
                                    const PersistentTiling& t, int block, int64_t s, int tid,
                                    const Acc* w_s, Acc* partial) {
  using Cv = Convert<T, Acc>;
  const int64_t H = a.hidden, B = a.batch;
  const int U = block_units(t, H, block);
  const T* h_prev = s == 0 ? a.h0 : a.hs + time_index(a, s - 1) * B * H;
  const int64_t items = int64_t(U) * t.row_groups * t.k_splits;
  for (int64_t item = tid; item < items; item += t.threads) {
    // Consecutive threads: k slices, then units, then row groups.
    const int64_t tile = item / t.k_splits, slice = item % t.k_splits;
    const int64_t u = tile % U, row0 = (tile / U) * kRowsPerTile;
    const int64_t k_begin = slice * t.k_len;
    const int64_t k_end = k_begin + t.k_len < H ? k_begin + t.k_len : H;
    Acc acc[kRowsPerTile][4] = {};
    for (int64_t k = k_begin; k < k_end; ++k) {
      const Acc* w4 = w_s + (k * U + u) * 4;
      const Acc w0 = w4[0], w1 = w4[1], w2 = w4[2], w3 = w4[3];
#pragma unroll
      for (int r = 0; r < kRowsPerTile; ++r) {
        const int64_t b = row0 + r;
        const Acc h = b < B ? Cv::load(h_prev[b * H + k]) : Acc(0);
        acc[r][0] += h * w0;
        acc[r][1] += h * w1;
        acc[r][2] += h * w2;
        acc[r][3] += h * w3;
      }
    }
    Acc* out = partial + item * kRowsPerTile * 4;
#pragma unroll
    for (int r = 0; r < kRowsPerTile; ++r)
#pragma unroll
      for (int q = 0; q < 4; ++q) out[r * 4 + q] = acc[r][q];
  }
}

// Phase 2 of step s: every (unit, rows) tile's gates, c_t and h_t.
template <typename T, typename Acc>
FASTLSTM_HD void tiled_cell_update(const PersistentForwardArgs<T, Acc>& a,
                                   const PersistentTiling& t, int block, int64_t s, int tid,
                                   const Acc* partial) {
  using Cv = Convert<T, Acc>;
  const int64_t H = a.hidden, B = a.batch, u0 = int64_t(block) * t.units;
  const int U = block_units(t, H, block);
  const int64_t time = time_index(a, s);
  const Acc* c_prev = s == 0 ? a.c0 : a.cs + time_index(a, s - 1) * B * H;
  const int64_t tiles = int64_t(U) * t.row_groups;
  for (int64_t tile = tid; tile < tiles; tile += t.threads) {
    const int64_t unit = u0 + tile % U, row0 = (tile / U) * kRowsPerTile;
    for (int r = 0; r < kRowsPerTile && row0 + r < B; ++r) {
      const int64_t b = row0 + r;
      const T* x = a.xproj + (time * B + b) * 4 * H + unit;
      Acc pre[4] = {Cv::load(x[0]), Cv::load(x[H]), Cv::load(x[2 * H]), Cv::load(x[3 * H])};
      for (int64_t slice = 0; slice < t.k_splits; ++slice) {
        const Acc* p = partial + ((tile * t.k_splits + slice) * kRowsPerTile + r) * 4;
        for (int q = 0; q < 4; ++q) pre[q] += p[q];
      }
      unit_forward(pre[0], pre[1], pre[2], pre[3], c_prev[b * H + unit], H, a.gates + (time * B + b) * 4 * H + unit,
                   a.cs + (time * B + b) * H + unit, a.hs + (time * B + b) * H + unit);
    }
  }
}

}  // namespace fastlstm
