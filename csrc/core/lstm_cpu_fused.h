// The fused CPU layer: each time step's recurrent product and its gate math in one pass,
// the products kept in registers (fp32 accumulators), the weights packed once per call,
// no allocation and no library call inside the time loop. x86-64 with AVX-512 (AVX512-BF16
// for bfloat16), or AVX2 + FMA for fp32 (this file built again by lstm_cpu_fused_avx2.cpp);
// elsewhere the op runs its per-step GEMM loop (layer.cpp).
//
// Why: a step's product is small (batch 64 x hidden 256: [64, 256] x [256, 1024]), and a
// BLAS call per step re-reads and re-blocks W_hh, dispatches, forks threads and rounds its
// bf16 result. Here each worker owns a slice of rows or units for the whole sequence, its
// share of the packed weights stays in its core's cache, and the gate math runs on the
// product while it is still in L1.
//
// Framework-free: raw pointers, the caller supplies the threads (every worker calls the
// step functions for its Part, in step order; see run_parts). Shapes as in layer.h:
// H = hidden, B = batch, S = steps; rows of [.., 4H] tensors are [i | f | g | o].
#pragma once

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__CUDACC__)
#define FASTLSTM_CPU_FUSED 1

#include <immintrin.h>
#include <stdint.h>
#include <string.h>
#include <cpuid.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <thread>
#include <type_traits>

#include "lstm_step.h"

namespace fastlstm {
namespace fused {

// The products are sums over "k-steps" of 32 bits: one float for fp32, a pair of
// consecutive k for bf16 (vdpbf16ps multiplies a pair and adds both into an fp32 lane).
// One 16-lane vector of packed weights holds one k-step for 16 output columns.
template <typename T>
struct KStep;
template <>
struct KStep<float> {
  static constexpr int kPer = 1;
};
template <>
struct KStep<Bf16> {
  static constexpr int kPer = 2;
};

constexpr int kLanes = 16;   // fp32 lanes of a zmm register: the units of one group
constexpr int kMaxRows = 6;  // batch rows per register tile: 6 x 4 accumulators, 4 weight
                             // vectors and a broadcast fit the 32 zmm registers
constexpr int kGroupsPerBackwardTile = 4;

inline int64_t unit_groups(int64_t hidden) { return (hidden + kLanes - 1) / kLanes; }
// k-steps of a forward product over k = H (h_{t-1} W_hh^T) or k = the input size (x_t W_ih^T),
// padded to whole pairs for bf16, and of the backward one (over 4H, always whole pairs).
template <typename T>
int64_t forward_ksteps(int64_t k) {
  return (k + KStep<T>::kPer - 1) / KStep<T>::kPer;
}
template <typename T>
int64_t backward_ksteps(int64_t hidden) {
  return 4 * hidden / KStep<T>::kPer;
}
// Row stride of a forward product's left operand (the h ring, or x): k padded to whole
// k-steps (the padding zero).
template <typename T>
int64_t padded_width(int64_t k) {
  return forward_ksteps<T>(k) * KStep<T>::kPer;
}

// Elements of each packed layout (forward: a [gates H, k] weight).
template <typename T>
int64_t forward_packed_size(int64_t hidden, int64_t k, int gates = 4) {
  return unit_groups(hidden) * forward_ksteps<T>(k) * gates * kLanes * KStep<T>::kPer;
}
template <typename T>
int64_t backward_packed_size(int64_t hidden, int64_t columns) {
  return unit_groups(columns) * backward_ksteps<T>(hidden) * kLanes * KStep<T>::kPer;
}
template <typename T>
int64_t backward_packed_size(int64_t hidden) {
  return backward_packed_size<T>(hidden, hidden);
}

// What a worker computes at every step: batch rows [row_begin, row_end) x unit groups
// [group_begin, group_end). Workers that split the units meet at a StepBarrier after each
// step (each needs all of the previous step); workers that split the rows never meet.
struct Part {
  int64_t row_begin, row_end, group_begin, group_end;
};

// A spinning barrier for the workers of one layer call. `weight`: how many workers the
// calling thread runs (a thread given several runs them one after another, then arrives
// once for all of them), so it never waits for a worker it is itself to run.
class StepBarrier {
 public:
  explicit StepBarrier(int workers) : workers_(workers) {}
  void arrive_and_wait(int weight) {
    const int generation = generation_.load(std::memory_order_acquire);
    if (arrived_.fetch_add(weight, std::memory_order_acq_rel) + weight == workers_) {
      arrived_.store(0, std::memory_order_relaxed);
      generation_.store(generation + 1, std::memory_order_release);
      return;
    }
    // A step is tens of microseconds: spin, and yield only if another process has the core.
    for (int spins = 0; generation_.load(std::memory_order_acquire) == generation; ++spins) {
      if (spins < (1 << 16)) {
        _mm_pause();
      } else {
        std::this_thread::yield();
      }
    }
  }

 private:
  const int workers_;
  std::atomic<int> arrived_{0};
  std::atomic<int> generation_{0};
};

// Runs `step(part, s)` for s in [0, steps) and parts [part_begin, part_end), in step order.
template <typename StepFn>
void run_parts(int64_t steps, int64_t part_begin, int64_t part_end, StepBarrier* barrier,
               StepFn&& step) {
  for (int64_t s = 0; s < steps; ++s) {
    for (int64_t p = part_begin; p < part_end; ++p) step(p, s);
    if (barrier) barrier->arrive_and_wait(static_cast<int>(part_end - part_begin));
  }
}

template <typename T>
inline const uint32_t* as_ksteps(const T* p) {
  return reinterpret_cast<const uint32_t*>(p);
}

inline int64_t time_index(int64_t s, int64_t steps, bool reverse) {
  return reverse ? steps - 1 - s : s;
}

// The k-th of the items [begin, end) a worker visits at step s: in order at even steps,
// backwards at odd ones. A step reads its share of the weights item by item; where that share
// is a little larger than the core's cache, a walk in the same order every step misses on
// every line (the least recently used line is always the next one wanted), while a walk back
// starts on the lines the last step read last, still in cache.
inline int64_t snake_order(int64_t k, int64_t begin, int64_t end, int64_t s) {
  return s & 1 ? end - 1 - k : begin + k;
}

template <typename T>
struct FusedForwardArgs {
  const T* xproj;      // [S, B, 4H] x_t W_ih^T + biases; or nullptr: the step computes it from
  const T* x;          //   [S, B, padded_width(I)] the layer input (zero padding),
  const T* packed_ih;  //   [forward_packed_size(H, I)] W_ih from pack_forward,
  const float* bias;   //   [4H] b_ih + b_hh (zeros without bias),
  int64_t inputs;      //   I
  const T* packed;     // [forward_packed_size(H, H)] W_hh from pack_forward
  const float* c0;     // [B, H]
  T* h_ring;           // [2, B, padded_width(H)] h_{t-1} (slot s % 2), zero-padded rows; slot 0
                       // holds h0 at the start
  T* hs;               // [S, B, ld_hs] out: h_t (ld_hs 0: H)
  float* cs;           // [S, B, H] out: c_t; with c_state [B, H]: c0 in, then c_t in place
  void* gates;         // [S, B, 4H] out: activated gates (float, or T with gates_in_t), or
                       // nullptr (inference: not saved)
  int64_t steps, batch, hidden;
  bool reverse;
  bool c_state;        // cs is the cell state [B, H], updated in place (inference: no c_t kept)
  int64_t ld_hs = 0;   // row stride of hs: a stack's lower layer writes the rows its upper
                       // layer reads as x (padded_width(H), the padding zero)
  bool amx = false;    // bf16: the products on AMX tiles (only where amx_usable())
  int amx_min_rows = 1;  // with amx: row blocks of fewer rows on the register tile instead
  bool gates_in_t = false;  // gates stored in T (bf16: half the bytes written and read back)
  const int64_t* ids = nullptr;  // [S, B] or nullptr: xproj is a table [rows, 4H] whose row
                                 // ids[t B + b] row b of step t adds (an embedding folded in)
  const int64_t* offsets = nullptr;  // [S + 1] or nullptr: packed rows (see StepRows)
  int64_t walk_offset = 0;  // added to the step for snake_order: a caller making one-step
                            // calls again and again alternates the walk between calls
};

// Where step t's rows are. Dense: B rows at t B of every [S, B, ..] tensor. Packed (a
// PackedSequence's data, `offsets` [S + 1]): step t has rows [offsets[t], offsets[t + 1]) of
// every [N, ..] tensor, row b of the step being batch row b; the counts never grow with t
// (sequences sorted by length, longest first), so a step's rows are the first of the batch,
// and a sequence that has ended (forward) or not yet begun (reverse) simply is not computed.
struct StepRows {
  const int64_t* offsets;
  int64_t batch;
  int64_t count(int64_t t) const { return offsets ? offsets[t + 1] - offsets[t] : batch; }
  int64_t first(int64_t t) const { return offsets ? offsets[t] : t * batch; }
};

// Which loop is outermost in a step: unit groups (each group's weights read once for all the
// worker's row blocks, from L2 or L1 after the first) or, on AMX, row blocks (the tiles
// configured once per row block: ldtilecfg costs ~70 ns and the groups-outermost walk issues
// one at every change of rows: 16 a step at S3's 16 + 9 rows before pairs). Row blocks
// outermost only where they differ in rows (a partial last block) and the weights a step
// reads, `weight_bytes`, stay in L2 between the row blocks' walks (at most 1 MiB, half this
// Xeon's L2: issue 25's eighth part in benchmarks/NOTES.md).
inline bool rows_outermost(int64_t rows, int64_t full_block_rows, int64_t weight_bytes) {
  return rows % full_block_rows != 0 && weight_bytes <= (int64_t{1} << 20);
}

// n rows in the fewest blocks of at most `most`, their sizes as even as can be: block b is rows
// [begin(b), begin(b + 1)). On the register tile a block of one row loads 4 weight vectors for
// 4 products, half the tile's rate or less: S3's 25 rows a worker go as 5 blocks of 5, not 4
// of 6 and 1.
struct EvenRows {
  int64_t n, count;
  EvenRows(int64_t n, int64_t most) : n(n), count(n > 0 ? (n + most - 1) / most : 0) {}
  int64_t begin(int64_t b) const { return n * b / count; }
};

// A step's blocks: a worker's row blocks (up to `full_rows` each) times its `columns` (unit
// groups, or tiles of them), in the order rows_outermost picks (amx: only the AMX path
// reconfigures tiles). The columns are walked back and forth (snake_order, counting the walks
// over the steps), so each walk starts on the weights the one before ended on, still in cache.
// On the register tile the rows go as EvenRows; AMX blocks are full but the last (their tile
// configurations).
struct BlockWalk {
  struct Block {
    int64_t row0, rows, column;  // rows [row0, row0 + rows) of column `column` (0-based)
  };
  int64_t row_begin, row_end, full_rows;
  EvenRows blocks;
  int64_t row_blocks, columns;
  bool by_rows, even;  // even: the blocks as `blocks` spreads them; else full but the last
  BlockWalk(int64_t row_begin, int64_t row_end, int64_t full_rows, int64_t columns, bool amx,
            int64_t weight_bytes)
      : row_begin(row_begin), row_end(row_end), full_rows(full_rows),
        blocks(row_end - row_begin, full_rows), row_blocks(blocks.count), columns(columns),
        by_rows(amx && row_blocks > 0 &&
                rows_outermost(row_end - row_begin, full_rows, weight_bytes)),
        even(!amx) {}
  int64_t outer() const { return by_rows ? row_blocks : columns; }
  int64_t inner() const { return by_rows ? columns : row_blocks; }
  // The block at (outer, inner) of the walk at step `step`.
  Block at(int64_t outer, int64_t inner, int64_t step) const {
    const int64_t rb = by_rows ? outer : inner, k = by_rows ? inner : outer;
    const int64_t row0 = row_begin + (even ? blocks.begin(rb) : rb * full_rows);
    const int64_t next = even ? row_begin + blocks.begin(rb + 1) : std::min(row0 + full_rows, row_end);
    return {row0, next - row0,
            snake_order(k, 0, columns, by_rows ? step * row_blocks + rb : step)};
  }
};

template <typename T>
struct FusedBackwardArgs {
  const T* packed;      // [backward_packed_size] W_hh from pack_backward
  const void* gates;    // [S, B, 4H] activated gates (forward): float, or T with gates_in_t
  const float* cs;      // [S, B, H] c_t (forward)
  const float* c0;      // [B, H]
  const T* grad_hs;     // [S, B, H] dL/dh_t from the layer output
  const T* grad_cs;     // [S, B, H] dL/dc_t from outside, or nullptr
  float* grad_c;        // [B, H] zero in; the carried dL/dc; out: dL/dc0
  T* grad_xproj;        // [S, B, 4H] out: dL/d(pre-activations); also the next step's operand
  float* grad_h0;       // [B, H] out: dL/dh0
  int64_t steps, batch, hidden;
  bool reverse;
  bool amx = false;     // bf16: the products on AMX tiles (only where amx_usable())
  int amx_min_rows = 1;  // as the forward's
  bool gates_in_t = false;
  float* grad_bias = nullptr;  // [4H] or nullptr: += the worker's rows' dL/d(pre-activations)
                               // (each worker its own: workers that split rows share units);
  const int64_t* bias_ids = nullptr;  // with [S, B] ids, grad_bias is [rows, 4H] and row b of
                                      // step t adds into its row ids[t B + b] (a table's gradient)
  const int64_t* offsets = nullptr;   // [S + 1] or nullptr: packed rows (StepRows); grad_c may
                                      // hold dL/dc_n in; grad_h0's row b is written at the step
                                      // before the one that computes its sequence's first step
  const float* grad_h_n = nullptr;    // [B, H] or nullptr (dense only): dL/dh_n, the final
                                      // state's own gradient, added at the last time step
  // The input gradient inside the steps (register tile only; nullptr: the caller's GEMM):
  // grad_x [S, B, I] (or packed rows) out = dL/d(pre-activations) W_ih, a step's rows written
  // by the step processed after it; packed_ih: W_ih from pack_backward with columns = I.
  const T* packed_ih = nullptr;
  T* grad_x = nullptr;
  int64_t inputs = 0;
};

// The fp32 kernels built for AVX2 + FMA (lstm_cpu_fused_avx2.cpp; link it to call these):
// the same layouts and steps, each 16-unit group on two 8-lane halves, for CPUs without
// AVX-512 (most laptops). supported(): this CPU has AVX2 and FMA.
namespace avx2 {
bool supported();
void pack_forward(const float* w, int64_t hidden, int64_t K, float* out, int64_t group_begin,
                  int64_t group_end, int gates = 4);
void pack_backward(const float* w, int64_t hidden, float* out, int64_t group_begin,
                   int64_t group_end, int64_t columns);
void forward_step(const FusedForwardArgs<float>& a, const Part& p, int64_t s);
void backward_step(const FusedBackwardArgs<float>& a, const Part& p, int64_t s);
}  // namespace avx2

// Everything from here to the end is compiled for one instruction set, in a namespace of its
// own (inline: callers name fused::forward_step): AVX-512 with BF16 by default, or AVX2 + FMA
// where the including file defines FASTLSTM_FUSED_AVX2 (fp32 only; lstm_cpu_fused_avx2.cpp).
// The intrinsics need the target on every function they are inlined into, templates included.
// The AVX-512 fp32 entry points hold no bf16 instruction (no intrinsic asks for one and the
// compiler makes none from float code), so they run on any AVX-512 CPU.
#pragma GCC push_options
#if defined(FASTLSTM_FUSED_AVX2)
#pragma GCC target("avx2,fma,prfchw")
inline namespace isa_avx2 {
#else
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,fma,prfchw,prefer-vector-width=512")
inline namespace isa_avx512 {
#endif

// Runs step(chain, ks) over the k-steps, kChains consecutive ones at a time (each chain into
// accumulators of its own), the rest on chain 0.
template <int kChains, typename Step>
__attribute__((always_inline)) inline void over_ksteps(int64_t ksteps, Step&& step) {
  int64_t ks = 0;
  for (; ks + kChains <= ksteps; ks += kChains) {
#pragma GCC unroll 2
    for (int chain = 0; chain < kChains; ++chain) step(chain, ks + chain);
  }
  for (; ks < ksteps; ++ks) step(0, ks);
}

// out + at(r, c) = the sum of the chains' accumulators for row r, vector c (V: __m256 or
// __m512, added as GCC vectors, stored unaligned).
template <int kChains, int R, int C, typename V, typename At>
__attribute__((always_inline)) inline void store_sums(const V (&acc)[kChains][R][C], float* out,
                                                      At&& at) {
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
    for (int c = 0; c < C; ++c) {
      V sum = acc[0][r][c];
      if constexpr (kChains == 2) sum += acc[1][r][c];
      memcpy(out + at(r, c), &sum, sizeof(V));
    }
}

#if defined(FASTLSTM_FUSED_AVX2)
// AVX2 + FMA, fp32: 16 ymm registers of 8 lanes, so each 16-lane weight vector is two
// registers (its halves: "columns" here) and a tile of 6 rows x 4 vectors would need 48
// accumulators. tile_product below runs the tile as passes over the k-steps, each pass R rows
// x C columns: R C accumulators, C weight registers and a broadcast within the 16 (the rows
// and weights that later passes read again come from L1). kChains as the AVX-512 tile's: with
// under 8 accumulators (two FMA pipes of ~4 cycles' latency) even and odd k-steps go to
// separate ones. Columns c: vector c / 2, half c % 2 (out's vectors are contiguous).
template <bool kAccumulate, int R, int C>
__attribute__((always_inline)) inline void tile_pass(const uint32_t* a, int64_t lda,
                                                     int64_t ksteps, const uint32_t* b,
                                                     int64_t ks_stride, int64_t v_stride,
                                                     float* out, int64_t ld_out,
                                                     int64_t a_ks_stride) {
  constexpr int kChains = R * C < 8 ? 2 : 1;
  const auto column = [&](int c) { return (c / 2) * v_stride + (c % 2) * 8; };
  __m256 acc[kChains][R][C];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
    for (int c = 0; c < C; ++c) {
      acc[0][r][c] = kAccumulate ? _mm256_loadu_ps(out + r * ld_out + c * 8) : _mm256_setzero_ps();
      if (kChains == 2) acc[kChains - 1][r][c] = _mm256_setzero_ps();
    }
  const auto step = [&](int chain, int64_t ks) __attribute__((always_inline)) {
    __m256 w[C];
#pragma GCC unroll 8
    for (int c = 0; c < C; ++c)
      w[c] = _mm256_loadu_ps(reinterpret_cast<const float*>(b + ks * ks_stride + column(c)));
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const __m256 x =
          _mm256_broadcast_ss(reinterpret_cast<const float*>(a + r * lda + ks * a_ks_stride));
#pragma GCC unroll 8
      for (int c = 0; c < C; ++c) acc[chain][r][c] = _mm256_fmadd_ps(x, w[c], acc[chain][r][c]);
    }
  };
  over_ksteps<kChains>(ksteps, step);
  store_sums(acc, out, [&](int r, int c) { return r * ld_out + c * 8; });
}

// The tile (as the AVX-512 one's, below) in passes: one row, all 2 NV columns at once (each
// weight used once: the loads fold into the FMAs); two rows, two vectors a pass (8
// accumulators, 4 weights); 3 to 6 rows, one vector a pass (up to 12 accumulators, 2 weights).
template <bool kBf16, bool kAccumulate, int MB, int NV>
__attribute__((always_inline)) inline void tile_product(const uint32_t* a, int64_t lda,
                                                        int64_t ksteps, const uint32_t* b,
                                                        int64_t ks_stride, int64_t v_stride,
                                                        float* out,
                                                        int64_t ld_out = NV * kLanes,
                                                        int64_t a_ks_stride = 1) {
  static_assert(!kBf16, "the AVX2 build is fp32 only");
  if constexpr (MB == 1) {
    tile_pass<kAccumulate, 1, 2 * NV>(a, lda, ksteps, b, ks_stride, v_stride, out, ld_out,
                                      a_ks_stride);
  } else if constexpr (MB == 2) {
    tile_pass<kAccumulate, 2, NV == 1 ? 2 : 4>(a, lda, ksteps, b, ks_stride, v_stride, out,
                                               ld_out, a_ks_stride);
    if constexpr (NV > 2) {
      tile_pass<kAccumulate, 2, NV == 3 ? 2 : 4>(a, lda, ksteps, b + 2 * v_stride, ks_stride,
                                                 v_stride, out + 2 * kLanes, ld_out, a_ks_stride);
    }
  } else {
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) {
      tile_pass<kAccumulate, MB, 2>(a, lda, ksteps, b + v * v_stride, ks_stride, v_stride,
                                    out + v * kLanes, ld_out, a_ks_stride);
    }
  }
}
#else
// out[r ld_out + 16 v + (0..16)] (+)= sum over k-steps ks of a[r lda + ks a_ks_stride]
// (broadcast) times the weight vector b[ks ks_stride + v v_stride], for MB rows and NV vectors;
// a and b are 32-bit k-steps; kAccumulate adds to what out holds. Unrolled over rows and
// vectors: MB x NV independent accumulator chains hide the FMA latency.
template <bool kBf16, bool kAccumulate, int MB, int NV>
__attribute__((always_inline)) inline void tile_product(const uint32_t* a, int64_t lda,
                                                        int64_t ksteps, const uint32_t* b,
                                                        int64_t ks_stride, int64_t v_stride,
                                                        float* out,
                                                        int64_t ld_out = NV * kLanes,
                                                        int64_t a_ks_stride = 1) {
  // Under 3 rows the MB x NV chains are too few for the FMA latency: even and odd k-steps
  // then go to separate accumulators (kChains 2), summed at the end.
  constexpr int kChains = MB * NV < 12 ? 2 : 1;
  __m512 acc[kChains][MB][NV];
#pragma GCC unroll 8
  for (int r = 0; r < MB; ++r)
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) {
      acc[0][r][v] =
          kAccumulate ? _mm512_loadu_ps(out + r * ld_out + v * kLanes) : _mm512_setzero_ps();
      if (kChains == 2) acc[kChains - 1][r][v] = _mm512_setzero_ps();
    }
  const auto step = [&](int chain, int64_t ks) __attribute__((always_inline)) {
    __m512 w[NV];
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v)
      w[v] = _mm512_loadu_ps(reinterpret_cast<const float*>(b + ks * ks_stride + v * v_stride));
#pragma GCC unroll 8
    for (int r = 0; r < MB; ++r) {
      const __m512i x = _mm512_set1_epi32(static_cast<int>(a[r * lda + ks * a_ks_stride]));
#pragma GCC unroll 8
      for (int v = 0; v < NV; ++v) {
        __m512& c = acc[chain][r][v];
        if constexpr (kBf16) {
          c = _mm512_dpbf16_ps(c, reinterpret_cast<__m512bh>(x), reinterpret_cast<__m512bh>(w[v]));
        } else {
          c = _mm512_fmadd_ps(_mm512_castsi512_ps(x), w[v], c);
        }
      }
    }
  };
  over_ksteps<kChains>(ksteps, step);
  store_sums(acc, out, [&](int r, int v) { return r * ld_out + v * kLanes; });
}
#endif

// tile_product with MB and NV chosen at run time (1 <= mb <= kMaxRows, 1 <= nv <= 4); out's
// rows ld_out floats apart (0: 16 nv, contiguous).
template <bool kBf16, bool kAccumulate = false>
__attribute__((always_inline)) inline void tile_product_n(int mb, int nv, const uint32_t* a,
                                                          int64_t lda, int64_t ksteps,
                                                          const uint32_t* b, int64_t ks_stride,
                                                          int64_t v_stride, float* out,
                                                          int64_t ld_out = 0,
                                                          int64_t a_ks_stride = 1) {
#define FASTLSTM_TILE(MB, NV)                                                                  \
  case MB * 8 + NV:                                                                            \
    return tile_product<kBf16, kAccumulate, MB, NV>(a, lda, ksteps, b, ks_stride, v_stride, out, \
                                                    ld_out ? ld_out : NV * kLanes, a_ks_stride);
#define FASTLSTM_TILE_ROWS(MB) \
  FASTLSTM_TILE(MB, 1) FASTLSTM_TILE(MB, 2) FASTLSTM_TILE(MB, 3) FASTLSTM_TILE(MB, 4)
  switch (mb * 8 + nv) {
    FASTLSTM_TILE_ROWS(1) FASTLSTM_TILE_ROWS(2) FASTLSTM_TILE_ROWS(3)
    FASTLSTM_TILE_ROWS(4) FASTLSTM_TILE_ROWS(5) FASTLSTM_TILE_ROWS(6)
    default: return;
  }
#undef FASTLSTM_TILE_ROWS
#undef FASTLSTM_TILE
}

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,fma,amx-tile,amx-bf16")

// AMX (bf16 only): TDPBF16PS multiplies a tile of up to 16 rows x 16 k-steps (pairs) by one
// of 16 k-steps x 16 output lanes and adds into 16 rows x 16 fp32 lanes: up to 8192 products
// per instruction against vdpbf16ps's 32. Measured on the AMX Xeon, one core, [M, 1024] x
// [1024, 2048]: 110 / 202 / 339 G products/s at 4 / 8 / 16 rows against 44-47 for the
// register tile. Our packed bf16 weights are already what the instruction reads as its
// second operand: one k-step of 16 lanes (pairs) a 64-byte row, the next k-step a fixed
// stride further. Tiles 0-3: the four outputs; 4 and 7: the rows of the left operand; 5 and 6:
// weights.
constexpr int kAmxRows = 16;     // rows of a tile
constexpr int kAmxKsteps = 16;   // k-steps (bf16 pairs) of a tile: 64 bytes a row

struct AmxTileConfig {
  uint8_t palette, start_row, reserved[14];
  uint16_t colsb[16];
  uint8_t rows[16];
};

// Tiles for `rows` rows (1 to 16) on the calling thread. Loaded at the start of every call
// that uses them: other code on the thread (oneDNN) configures its own between our calls.
// low_rows (1 to 16): amx_product_pair's second row block, tiles 2, 3 and 7, has that many.
inline void amx_configure(int rows, int low_rows = 0) {
  AmxTileConfig c;
  memset(&c, 0, sizeof c);
  c.palette = 1;
  for (int t = 0; t < 8; ++t) {
    const bool low = low_rows > 0 && (t == 2 || t == 3 || t == 7);
    c.rows[t] = static_cast<uint8_t>(t == 5 || t == 6 ? kAmxKsteps : low ? low_rows : rows);
    c.colsb[t] = 64;
  }
  // Not _tile_loadconfig: GCC 12 does not see that it reads the struct, and drops the stores.
  __asm__ __volatile__("ldtilecfg %0" : : "m"(c));
}

// What the tiles are configured for within one step call: amx_configure (~70 ns) only at a
// change.
struct TileRows {
  int current = 0;  // rows * 32 + low rows
  void configure(int rows, int low_rows = 0) {
    if (rows * 32 + low_rows == current) return;
    amx_configure(rows, low_rows);
    current = rows * 32 + low_rows;
  }
};

// out[r][v][0..16) (+)= sum over the first (ksteps / 16) * 16 k-steps of a[r lda + ks] times
// b[ks ks_stride + v v_stride] (32-bit k-steps, as tile_product), for the configured rows
// and nv <= 4 vectors; out's rows 64 nv bytes apart. Returns the k-steps done (the caller
// does the rest with tile_product_n, accumulating). between() runs after each block of 16
// k-steps is issued: vector work placed there runs while the tiles multiply.
struct NothingBetween {
  void operator()() const {}
};
template <bool kAccumulate, typename Between = NothingBetween>
inline int64_t amx_product(int nv, const uint32_t* a, int64_t lda, int64_t ksteps,
                           const uint32_t* b, int64_t ks_stride, int64_t v_stride, float* out,
                           Between&& between = {}) {
  const int64_t done = ksteps / kAmxKsteps * kAmxKsteps;
  if (done == 0) return 0;
  const int64_t out_stride = nv * kLanes * 4, a_stride = lda * 4, b_stride = ks_stride * 4;
  // Tile numbers are immediates: one branch per output vector.
#define FASTLSTM_AMX_EACH(op) \
  { op(0) }                   \
  if (nv > 1) { op(1) }       \
  if (nv > 2) { op(2) }       \
  if (nv > 3) { op(3) }
#define FASTLSTM_AMX_INIT(v)                                     \
  if (kAccumulate) {                                             \
    _tile_loadd(v, out + (v) * kLanes, out_stride);              \
  } else {                                                       \
    _tile_zero(v);                                               \
  }
  FASTLSTM_AMX_EACH(FASTLSTM_AMX_INIT)
  // Tile registers are not renamed: a load into a tile waits until the product reading it is
  // done. So the weights alternate between tiles 5 and 6, and the rows between 4 and 7 from
  // one block of k-steps to the next: each load overlaps the product before it.
#define FASTLSTM_AMX_KBLOCK(A, ks)                               \
  {                                                              \
    _tile_loadd(A, a + (ks), a_stride);                          \
    const uint32_t* w = b + (ks) * ks_stride;                    \
    _tile_loadd(5, w, b_stride);                                 \
    _tile_dpbf16ps(0, A, 5);                                     \
    if (nv > 1) {                                                \
      _tile_loadd(6, w + v_stride, b_stride);                    \
      _tile_dpbf16ps(1, A, 6);                                   \
    }                                                            \
    if (nv > 2) {                                                \
      _tile_loadd(5, w + 2 * v_stride, b_stride);                \
      _tile_dpbf16ps(2, A, 5);                                   \
    }                                                            \
    if (nv > 3) {                                                \
      _tile_loadd(6, w + 3 * v_stride, b_stride);                \
      _tile_dpbf16ps(3, A, 6);                                   \
    }                                                            \
    between();                                                   \
  }
  int64_t ks = 0;
  for (; ks + 2 * kAmxKsteps <= done; ks += 2 * kAmxKsteps) {
    FASTLSTM_AMX_KBLOCK(4, ks)
    FASTLSTM_AMX_KBLOCK(7, ks + kAmxKsteps)
  }
  if (ks < done) FASTLSTM_AMX_KBLOCK(4, ks)
#define FASTLSTM_AMX_STORE(v) _tile_stored(v, out + (v) * kLanes, out_stride);
  FASTLSTM_AMX_EACH(FASTLSTM_AMX_STORE)
#undef FASTLSTM_AMX_STORE
#undef FASTLSTM_AMX_KBLOCK
#undef FASTLSTM_AMX_INIT
#undef FASTLSTM_AMX_EACH
  return done;
}

// Two row blocks at once (rows a .. a + (16 + n) lda): out[r][v][0..16) for r < 16 + n and
// the four vectors v = the sum of two products as amx_product's (a1 x b1, if a1 is not null,
// plus a2 x b2; whole blocks of 16 k-steps only); out's rows 4 x 64 bytes apart. Two vectors
// at a time, both row blocks: each weight tile feeds two products, half the weight loads of
// two amx_product calls (the weights stream from L2 at every step; the rows stay in L1).
// Tiles configured by amx_configure(16, n), n <= 16 the second block's rows. between() as
// amx_product's, after each block of k-steps.
template <typename Between>
inline void amx_product_pair(const uint32_t* a1, int64_t lda1, int64_t ksteps1, const uint32_t* b1,
                             const uint32_t* a2, int64_t lda2, int64_t ksteps2, const uint32_t* b2,
                             int64_t ks_stride, int64_t v_stride, float* out, Between&& between) {
  const int64_t out_stride = 4 * kLanes * 4, b_stride = ks_stride * 4;
  float* const out_low = out + kAmxRows * 4 * kLanes;  // rows 16-31
  for (int v = 0; v < 4; v += 2) {
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
    const auto run = [&](const uint32_t* a, int64_t lda, int64_t ksteps, const uint32_t* b) {
      const int64_t a_stride = lda * 4;
      const uint32_t* a_low = a + kAmxRows * lda;
      for (int64_t ks = 0; ks < ksteps; ks += kAmxKsteps) {
        const uint32_t* w = b + ks * ks_stride + v * v_stride;
        _tile_loadd(4, a + ks, a_stride);
        _tile_loadd(7, a_low + ks, a_stride);
        _tile_loadd(5, w, b_stride);
        _tile_dpbf16ps(0, 4, 5);
        _tile_dpbf16ps(2, 7, 5);
        _tile_loadd(6, w + v_stride, b_stride);
        _tile_dpbf16ps(1, 4, 6);
        _tile_dpbf16ps(3, 7, 6);
        between();
      }
    };
    if (a1 != nullptr) run(a1, lda1, ksteps1, b1);
    run(a2, lda2, ksteps2, b2);
    _tile_stored(0, out + v * kLanes, out_stride);
    _tile_stored(1, out + (v + 1) * kLanes, out_stride);
    _tile_stored(2, out_low + v * kLanes, out_stride);
    _tile_stored(3, out_low + (v + 1) * kLanes, out_stride);
  }
}

#pragma GCC pop_options

// The product of `rows` rows (up to 16 with kAmx, else up to kMaxRows): AMX for whole blocks
// of 16 k-steps where kAmx and `amx` (tiles configured for `rows`; the caller's choice for
// this block, amx_min_rows), then the register tile, 6 rows at a time, for the rest; the
// arguments of tile_product_n.
template <bool kBf16, bool kAmx, bool kAccumulate, typename Between = NothingBetween>
__attribute__((always_inline)) inline void row_block_product(bool amx, int rows, int nv,
                                                             const uint32_t* a,
                                                             int64_t lda, int64_t ksteps,
                                                             const uint32_t* b, int64_t ks_stride,
                                                             int64_t v_stride, float* out,
                                                             Between&& between = {}) {
  int64_t done = 0;
  if constexpr (kAmx) {
    if (amx) {
      done = amx_product<kAccumulate>(nv, a, lda, ksteps, b, ks_stride, v_stride, out, between);
      if (done == ksteps) return;
    }
  }
  for (int r0 = 0; r0 < rows; r0 += kMaxRows) {
    const int mb = std::min(kMaxRows, rows - r0);
    float* o = out + r0 * nv * kLanes;
    if (kAccumulate || done > 0) {
      tile_product_n<kBf16, true>(mb, nv, a + r0 * lda + done, lda, ksteps - done,
                                  b + done * ks_stride, ks_stride, v_stride, o);
    } else {
      tile_product_n<kBf16, false>(mb, nv, a + r0 * lda, lda, ksteps, b, ks_stride, v_stride, o);
    }
  }
}

// W [4H, K] (W_hh, K = H, or W_ih, K = the input size) for the forward product a W^T: per
// unit group g, per k-step, the four gates' vectors one after another, lane u = unit
// 16 g + u, element e = k of the pair:
//   out[g][ks][gate][u][e] = W[gate H + 16 g + u][ks kPer + e], zero past H.
// K must be whole k-steps (a bf16 W of odd K: pad a zero column first). Unit groups
// [group_begin, group_end) only (threads pack disjoint groups). One vector of 16 k-steps,
// gathered down the group's 16 rows, per store. gates = 1 packs a plain [H, K] matrix
// (a decoder: out[g][ks][u][e]).
#if defined(FASTLSTM_FUSED_AVX2)
inline void pack_forward(const float* w, int64_t hidden, int64_t K, float* out,
                         int64_t group_begin, int64_t group_end, int gates = 4) {
  const int64_t H = hidden;
  for (int64_t g = group_begin; g < group_end; ++g) {
    const int64_t units = std::min<int64_t>(kLanes, H - g * kLanes);
    for (int gate = 0; gate < gates; ++gate)
      for (int64_t u = 0; u < kLanes; ++u) {
        float* dst = out + (g * K * gates + gate) * kLanes + u;
        const float* row = u < units ? w + (gate * H + g * kLanes + u) * K : nullptr;
        for (int64_t ks = 0; ks < K; ++ks) dst[ks * gates * kLanes] = row ? row[ks] : 0.f;
      }
  }
}
#else
template <typename T>
void pack_forward(const T* w, int64_t hidden, int64_t K, T* out, int64_t group_begin,
                  int64_t group_end, int gates = 4) {
  const int64_t H = hidden, ks_n = K / KStep<T>::kPer;
  const uint32_t* w32 = as_ksteps(w);
  uint32_t* o32 = reinterpret_cast<uint32_t*>(out);
  const __m512i rows = _mm512_mullo_epi32(
      _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
      _mm512_set1_epi32(static_cast<int>(ks_n)));
  for (int64_t g = group_begin; g < group_end; ++g) {
    const __mmask16 valid = static_cast<__mmask16>(
        (1u << std::min<int64_t>(kLanes, H - g * kLanes)) - 1u);
    for (int gate = 0; gate < gates; ++gate) {
      const uint32_t* base = w32 + (gate * H + g * kLanes) * ks_n;
      uint32_t* dst = o32 + (g * ks_n * gates + gate) * kLanes;
      for (int64_t ks = 0; ks < ks_n; ++ks)
        _mm512_storeu_si512(dst + ks * gates * kLanes,
                            _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), valid, rows,
                                                        base + ks, 4));
    }
  }
}
#endif

// W [4H, C] (W_hh, C = H; or W_ih, C = the input size) for the backward products
// grad_pre_{t+1} W (k over the 4H gate rows): out[g][ks][u][e] = W[ks kPer + e][16 g + u],
// zero past C. 16 columns of one row (fp32), or of two rows interleaved (bf16: the pair's
// halves), per store.
#if defined(FASTLSTM_FUSED_AVX2)
inline void pack_backward(const float* w, int64_t hidden, float* out, int64_t group_begin,
                          int64_t group_end, int64_t columns) {
  const int64_t C = columns, ks_n = 4 * hidden;
  for (int64_t g = group_begin; g < group_end; ++g) {
    const int64_t units = std::min<int64_t>(kLanes, C - g * kLanes);
    for (int64_t ks = 0; ks < ks_n; ++ks) {
      float* dst = out + (g * ks_n + ks) * kLanes;
      std::copy_n(w + ks * C + g * kLanes, units, dst);
      std::fill(dst + units, dst + kLanes, 0.f);
    }
  }
}
#else
// bf16: 16 columns (those in `valid`, the rest zero) of two rows as 16 k-steps, lane c the pair
// (even[c], odd[c]); odd null: the pairs' second halves zero (an odd row count's padding).
inline __m512i pair_rows(const Bf16* even, const Bf16* odd, __mmask16 valid) {
  const __m512i lo = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(valid, even));
  if (odd == nullptr) return lo;
  const __m512i hi = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(valid, odd));
  return _mm512_or_si512(lo, _mm512_slli_epi32(hi, 16));
}

template <typename T>
void pack_backward(const T* w, int64_t hidden, T* out, int64_t group_begin, int64_t group_end,
                   int64_t columns) {
  const int64_t C = columns, ks_n = backward_ksteps<T>(hidden);
  uint32_t* o32 = reinterpret_cast<uint32_t*>(out);
  for (int64_t g = group_begin; g < group_end; ++g) {
    const __mmask16 valid = static_cast<__mmask16>(
        (1u << std::min<int64_t>(kLanes, C - g * kLanes)) - 1u);
    uint32_t* dst = o32 + g * ks_n * kLanes;
    for (int64_t ks = 0; ks < ks_n; ++ks, dst += kLanes) {
      if constexpr (KStep<T>::kPer == 1) {
        _mm512_storeu_si512(dst, _mm512_maskz_loadu_epi32(valid, w + ks * C + g * kLanes));
      } else {
        const T* even = w + 2 * ks * C + g * kLanes;
        _mm512_storeu_si512(dst, pair_rows(even, even + C, valid));
      }
    }
  }
}
#endif

#if !defined(FASTLSTM_FUSED_AVX2)
// n <= 16 bf16 values to float (exact) and back (round to nearest even, as
// Convert<Bf16>::store; vcvtneps2bf16 keeps a NaN a NaN too, and flushes denormals to zero).
// AVX512-BF16: call the second only from bf16 code.
inline void widen(const Bf16* in, float* out, int64_t n) {
  const __mmask16 m = static_cast<__mmask16>(n >= kLanes ? 0xFFFFu : (1u << n) - 1u);
  const __m512i v = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, in));
  _mm512_mask_storeu_ps(out, m, _mm512_castsi512_ps(_mm512_slli_epi32(v, 16)));
}
inline void narrow(const float* in, Bf16* out, int64_t n) {
  const __mmask16 m = static_cast<__mmask16>(n >= kLanes ? 0xFFFFu : (1u << n) - 1u);
  const __m256bh v = _mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(m, in));
  _mm256_mask_storeu_epi16(out, m, reinterpret_cast<__m256i>(v));
}
#endif

// One row of one unit group after the product: the rest of the pre-activation added (X: the
// row's xproj, storage type; or the bias, float), the gate math, the outputs. p: the products
// [gate][lane]; x, gate_out: at the group's first unit (gate k at + k H). kUnits = kLanes for
// a whole group: a fixed trip count, compiled to whole vectors with no remainder or alias
// checks; 0 for the last, partial group (`units`).
template <typename T, bool kSaveGates, int kUnits, typename X, typename G>
__attribute__((always_inline)) inline void forward_units(const float* p, const X* x, int64_t H,
                                                         const float* c_prev, float* c_out,
                                                         T* h_out, T* h_next, G* gate_out,
                                                         int64_t units) {
  const int64_t n = kUnits ? kUnits : units;
  // The gate math in a loop of 32-bit types only: GCC vectorises a loop at the width of its
  // narrowest type, so a bf16 load or store in it (16 lanes in 256 bits) would run the float
  // math on 8-lane halves (seen: the whole epilogue in ymm registers). bf16 operands are
  // widened before it, bf16 outputs narrowed after it.
  constexpr bool kWideX = !std::is_same_v<X, float>, kNarrowH = !std::is_same_v<T, float>,
                 kNarrowG = kSaveGates && !std::is_same_v<G, float>;
  float x_wide[kWideX ? 4 * kLanes : 1], h_wide[kNarrowH ? kLanes : 1],
      gates_wide[kNarrowG ? 4 * kLanes : 1];
  if constexpr (kWideX) {
    for (int q = 0; q < 4; ++q) widen(x + q * H, x_wide + q * kLanes, n);
  }
  const auto rest = [&](int q, int64_t u) {
    if constexpr (kWideX) return x_wide[q * kLanes + u];
    else return x[q * H + u];
  };
  FASTLSTM_NO_ALIAS_LOOP
  for (int64_t u = 0; u < n; ++u) {
    const Gates<float> gate = activate_gates(
        p[u] + rest(0, u), p[kLanes + u] + rest(1, u), p[2 * kLanes + u] + rest(2, u),
        p[3 * kLanes + u] + rest(3, u));
    float c, h;
    cell_forward(gate, c_prev[u], c, h);
    if constexpr (kNarrowG) {
      gates_wide[u] = gate.i;
      gates_wide[kLanes + u] = gate.f;
      gates_wide[2 * kLanes + u] = gate.g;
      gates_wide[3 * kLanes + u] = gate.o;
    } else if constexpr (kSaveGates) {
      gate_out[u] = gate.i;
      gate_out[H + u] = gate.f;
      gate_out[2 * H + u] = gate.g;
      gate_out[3 * H + u] = gate.o;
    }
    c_out[u] = c;
    if constexpr (kNarrowH) {
      h_wide[u] = h;
    } else {
      h_out[u] = h;
      h_next[u] = h;
    }
  }
  if constexpr (kNarrowG) {
    for (int q = 0; q < 4; ++q) narrow(gates_wide + q * kLanes, gate_out + q * H, n);
  }
  if constexpr (kNarrowH) {
    narrow(h_wide, h_out, n);
    narrow(h_wide, h_next, n);
  }
}

// The cache lines that begin in [p, p + bytes) into L2, for reading (kWrite 0) or writing (1).
// Called for consecutive pieces of a row (a unit group, a backward tile), it fetches each line
// once, by the piece it begins in: a bf16 group is half a line, and a prefetch per group and
// array stalled on the full fill buffers (~25 % of the backward's own time, before).
template <int kWrite>
inline void prefetch_lines(const void* p, int64_t bytes) {
  const uintptr_t begin = reinterpret_cast<uintptr_t>(p), end = begin + bytes;
  for (uintptr_t line = (begin + 63) & ~uintptr_t{63}; line < end; line += 64)
    __builtin_prefetch(reinterpret_cast<const void*>(line), kWrite, 2);
}

// Step s (in recurrence order) of the rows and units of `part`; kAmx: the products on AMX
// tiles, 16 rows at a time; G: the saved gates' type.
template <typename T, bool kSaveGates, bool kInputFused, bool kAmx, typename G = float>
__attribute__((always_inline)) inline void forward_step_impl(const FusedForwardArgs<T>& a,
                                                             const Part& part, int64_t s) {
  G* const gates = static_cast<G*>(a.gates);
  constexpr int kRowBlock = kAmx ? kAmxRows : kMaxRows;
  constexpr bool kBf16 = KStep<T>::kPer == 2;
  constexpr int kPer = KStep<T>::kPer;
  const int64_t B = a.batch, H = a.hidden, ld = padded_width<T>(H);
  const int64_t ksteps = forward_ksteps<T>(H), group_size = ksteps * 4 * kLanes;
  const int64_t ld_x = padded_width<T>(a.inputs), ksteps_x = forward_ksteps<T>(a.inputs);
  const int64_t ld_hs = a.ld_hs ? a.ld_hs : H;
  const int64_t t = time_index(s, a.steps, a.reverse);
  const StepRows layout{a.offsets, B};
  const int64_t first = layout.first(t), row_end = std::min(part.row_end, layout.count(t));
  // h_{t-1} from the ring (both slots hold h0 at the start: a sequence joining a reverse
  // pass late finds it there); c_{t-1} from the step before, or c0 where the row was not in
  // it (the first step, or a sequence joining late).
  const T* h_prev = a.h_ring + (s & 1) * B * ld;
  T* h_next = a.h_ring + ((s + 1) & 1) * B * ld;
  const int64_t t_prev = s == 0 ? -1 : time_index(s - 1, a.steps, a.reverse);
  const auto c_prev_row = [&](int64_t row) -> const float* {
    if (a.c_state) return a.cs + row * H;
    return t_prev >= 0 && row < layout.count(t_prev) ? a.cs + (layout.first(t_prev) + row) * H
                                                  : a.c0 + row * H;
  };
  const auto c_out_row = [&](int64_t row) {
    return a.cs + (a.c_state ? row : first + row) * H;
  };
  // A block: one unit group x one row block. With AMX, the epilogue of one block runs a row
  // or two at a time between the k-blocks of the next block's product: the vector units do
  // the gate math while the tiles multiply. pre: the products [row][gate][lane], two buffers
  // (the block being multiplied, the block whose epilogue is running).
  struct Block {
    int64_t unit0, units, row0;
    int rows;
  };
  // With AMX, 17 to 32 rows go as one pair of row blocks where the k-steps are whole tile
  // blocks (amx_product_pair: half the weight loads).
  constexpr int kMaxBlockRows = kAmx ? 2 * kAmxRows : kRowBlock;
  const bool pairs = kAmx && a.amx && ksteps % kAmxKsteps == 0 &&
                     (!kInputFused || ksteps_x % kAmxKsteps == 0);
  alignas(64) float pre[2][kMaxBlockRows * 4 * kLanes];  // 64-byte rows: tile stores
  int buf = 0;              // pre[buf]: the block being multiplied
  Block pending{0, 0, 0, 0};  // the block before it, its epilogue from row pending_row on
  int pending_row = 0;
  const auto epilogue_row = [&](const Block& blk, const float* p, int r) __attribute__((always_inline)) {
    const int64_t row = blk.row0 + r, unit0 = blk.unit0, ti = (first + row) * ld_hs + unit0;
    G* gate_out = kSaveGates ? gates + (first + row) * 4 * H + unit0 : nullptr;
    const auto rest = [&] {  // of the pre-activation: the bias, or xproj (bias included)
      if constexpr (kInputFused) {
        return a.bias + unit0;
      } else {
        const int64_t x_row = a.ids ? a.ids[first + row] : first + row;
        return a.xproj + x_row * 4 * H + unit0;
      }
    }();
    const float* c_prev = c_prev_row(row) + unit0;
    float* c_out = c_out_row(row) + unit0;
    if (blk.units == kLanes) {
      forward_units<T, kSaveGates, kLanes>(p + r * 4 * kLanes, rest, H, c_prev, c_out,
                                           a.hs + ti, h_next + row * ld + unit0, gate_out, 0);
    } else {
      forward_units<T, kSaveGates, 0>(p + r * 4 * kLanes, rest, H, c_prev, c_out, a.hs + ti,
                                      h_next + row * ld + unit0, gate_out, blk.units);
    }
  };
  const auto run_pending = [&](int n) {
    for (; n > 0 && pending_row < pending.rows; --n, ++pending_row)
      epilogue_row(pending, pre[buf ^ 1], pending_row);
  };
  TileRows tile_rows;
  // The row blocks: 32 rows where pairs (a pair takes 17 to 32 rows, its second block's tiles
  // configured for the rows it has: S3's 25 rows a worker as 16 + 9, each weight tile read once
  // for both), else kRowBlock; every block full but the last.
  const int64_t groups = part.group_end - part.group_begin;
  const BlockWalk walk(part.row_begin, row_end, pairs ? 2 * kAmxRows : kRowBlock, groups, kAmx,
                       (ksteps + (kInputFused ? ksteps_x : 0)) * 4 * kLanes * 4 * groups);
  for (int64_t outer = 0; outer < walk.outer(); ++outer)
    for (int64_t inner = 0; inner < walk.inner(); ++inner) {
      const BlockWalk::Block blk = walk.at(outer, inner, s + a.walk_offset);
      const int64_t row0 = blk.row0, rows = blk.rows, g = part.group_begin + blk.column;
      const bool pair = rows > kAmxRows;
      const bool amx = kAmx && (pair || rows >= a.amx_min_rows);
      if (amx) {
        const int n = static_cast<int>(rows);
        pair ? tile_rows.configure(kAmxRows, n - kAmxRows) : tile_rows.configure(n);
      }
      const int64_t unit0 = g * kLanes, units = std::min<int64_t>(kLanes, H - unit0);
      const uint32_t* w = as_ksteps(a.packed) + g * group_size;
      const uint32_t* w_ih =
          kInputFused ? as_ksteps(a.packed_ih) + g * ksteps_x * 4 * kLanes : nullptr;
      // The epilogue's reads and writes would miss the cache (rows 2 KB and more apart, a
      // new region every step: the hardware prefetcher does not follow; the outputs are
      // fresh memory, each store first fetching its line): fetch the lines this tile will
      // use at the next step, a whole step ahead (a worker's share of a step fits in L2).
      if (s + 1 < a.steps) {
        const int64_t t_next = time_index(s + 1, a.steps, a.reverse);
        const int64_t next_rows = std::min<int64_t>(rows, layout.count(t_next) - row0);
        for (int64_t r = 0; r < next_rows; ++r) {
          const int64_t row = layout.first(t_next) + row0 + r;
          for (int q = 0; q < 4; ++q) {
            if (!kInputFused && !a.ids)
              prefetch_lines<0>(a.xproj + row * 4 * H + q * H + unit0, units * sizeof(T));
            if (kSaveGates)
              prefetch_lines<1>(gates + row * 4 * H + q * H + unit0, units * sizeof(G));
          }
          prefetch_lines<1>(a.hs + row * ld_hs + unit0, units * sizeof(T));
          if (!a.c_state) prefetch_lines<1>(a.cs + row * H + unit0, units * sizeof(float));
        }
      }
      // The pending epilogue's rows spread over this product's k-blocks.
      const int64_t kblocks = !amx ? 0
                              : ((kInputFused ? ksteps_x / kAmxKsteps : 0) + ksteps / kAmxKsteps) *
                                    (pair ? 2 : 1);
      const int per_kblock =
          kblocks ? static_cast<int>((pending.rows - pending_row + kblocks - 1) / kblocks) : 0;
      const auto between = [&] { run_pending(per_kblock); };
      const uint32_t* x_rows = kInputFused ? as_ksteps(a.x + (first + row0) * ld_x) : nullptr;
      const uint32_t* h_rows = as_ksteps(h_prev + row0 * ld);
      if constexpr (kAmx) {
        if (pair) {
          amx_product_pair(x_rows, ld_x / kPer, ksteps_x, w_ih, h_rows, ld / kPer, ksteps, w,
                           4 * kLanes, kLanes, pre[buf], between);
        }
      }
      if (!pair) {
        if (kInputFused) {  // x_t W_ih^T first, then h_{t-1} W_hh^T added to it
          row_block_product<kBf16, kAmx, false>(amx, rows, 4, x_rows, ld_x / kPer, ksteps_x, w_ih,
                                                4 * kLanes, kLanes, pre[buf], between);
        }
        row_block_product<kBf16, kAmx, kInputFused>(amx, rows, 4, h_rows, ld / kPer, ksteps, w,
                                                    4 * kLanes, kLanes, pre[buf], between);
      }
      run_pending(kMaxBlockRows);  // what the k-blocks left
      pending = Block{unit0, units, row0, static_cast<int>(rows)};
      pending_row = 0;
      buf ^= 1;
      if (!amx) run_pending(kMaxBlockRows);  // nothing to run beside: at once, as it is hot
    }
  run_pending(kMaxBlockRows);
}

// grad_x's rows of the step processed before this one (forward order: the next), `first` its
// first row: their dL/d(pre-activations) `grad_later` [rows, 4H] times W_ih, on the register
// tile. The worker's rows, times its share of W_ih's column groups: where the workers split
// the units, each takes the input's groups in the same proportion.
template <typename T>
__attribute__((always_inline)) inline void input_gradient_rows(const FusedBackwardArgs<T>& a,
                                                               const Part& part,
                                                               const T* grad_later,
                                                               int64_t first, int64_t rows_n) {
  constexpr bool kBf16 = KStep<T>::kPer == 2;
  const int64_t H = a.hidden, I = a.inputs, ksteps = backward_ksteps<T>(H);
  const int64_t groups_h = unit_groups(H), groups_i = unit_groups(I);
  const int64_t ig_begin = groups_i * part.group_begin / groups_h,
                ig_end = groups_i * part.group_end / groups_h;
  const int64_t row_end = std::min(part.row_end, rows_n), ld_g = 4 * H / KStep<T>::kPer;
  alignas(64) float out[kMaxRows * kGroupsPerBackwardTile * kLanes];  // [row][group][lane]
  for (int64_t g0 = ig_begin; g0 < ig_end; g0 += kGroupsPerBackwardTile) {
    const int groups = static_cast<int>(std::min<int64_t>(kGroupsPerBackwardTile, ig_end - g0));
    const uint32_t* w = as_ksteps(a.packed_ih) + g0 * ksteps * kLanes;
    const EvenRows blocks(row_end - part.row_begin, kMaxRows);
    for (int64_t b = 0; b < blocks.count; ++b) {
      const int64_t row0 = part.row_begin + blocks.begin(b);
      const int rows = static_cast<int>(blocks.begin(b + 1) - blocks.begin(b));
      row_block_product<kBf16, false, false>(false, rows, groups,
                                             as_ksteps(grad_later + row0 * 4 * H), ld_g, ksteps,
                                             w, kLanes, ksteps * kLanes, out);
      for (int r = 0; r < rows; ++r)
        for (int gi = 0; gi < groups; ++gi) {
          const int64_t col0 = (g0 + gi) * kLanes, units = std::min<int64_t>(kLanes, I - col0);
          const float* o = out + (r * groups + gi) * kLanes;
          T* dst = a.grad_x + (first + row0 + r) * I + col0;
          if constexpr (kBf16) {
            narrow(o, dst, units);
          } else {
            std::copy_n(o, units, dst);
          }
        }
    }
  }
}

// Backward step s = 0 .. S in processing order (the last time step first); s = S only
// computes grad_h0 = grad_pre_first W_hh (and, with grad_x, the first step's input gradient).
template <typename T, bool kHasGradC, bool kAmx, bool kBiasGrad, typename G>
__attribute__((always_inline)) inline void backward_step_impl(const FusedBackwardArgs<T>& a,
                                                              const Part& part, int64_t s) {
  const G* const gates = static_cast<const G*>(a.gates);
  constexpr int kRowBlock = kAmx ? kAmxRows : kMaxRows;
  constexpr bool kBf16 = KStep<T>::kPer == 2, kWideG = !std::is_same_v<G, float>;
  const int64_t S = a.steps, B = a.batch, H = a.hidden, ksteps = backward_ksteps<T>(H);
  const StepRows layout{a.offsets, B};
  const int64_t fs = S - 1 - s;  // forward-order index of this step
  const int64_t t = s < S ? time_index(fs, S, a.reverse) : -1;
  // The step processed before this one (forward order: the next): its rows' dL/d(pre) times
  // W_hh is dL/dh_{t-1} of those rows; rows it has that this step has not began there
  // (packed, reverse: that product is their dL/dh0); rows this step has that it has not
  // ended here (packed, forward: no recurrent gradient).
  const int64_t t_later = s == 0 ? -1 : time_index(fs + 1, S, a.reverse);
  const int64_t product_rows = t_later < 0 ? 0 : layout.count(t_later);
  const int64_t step_rows = t < 0 ? 0 : layout.count(t), first = t < 0 ? 0 : layout.first(t);
  const int64_t row_end = std::min(part.row_end, std::max(product_rows, step_rows));
  const T* grad_later = t_later < 0 ? nullptr : a.grad_xproj + layout.first(t_later) * 4 * H;
  const int64_t t_prev = fs <= 0 ? -1 : time_index(fs - 1, S, a.reverse);  // forward order
  const auto c_prev_row = [&](int64_t row) -> const float* {
    return t_prev >= 0 && row < layout.count(t_prev) ? a.cs + (layout.first(t_prev) + row) * H
                                                  : a.c0 + row * H;
  };
  // With AMX, 17 to 32 rows go as one pair of row blocks where every tile of groups is whole
  // and the k-steps are whole tile blocks (amx_product_pair, as the forward's pairs).
  const bool pairs = kAmx && ksteps % kAmxKsteps == 0 &&
                     (part.group_end - part.group_begin) % kGroupsPerBackwardTile == 0;
  constexpr int kMaxBlockRows = kAmx ? 2 * kAmxRows : kRowBlock;
  alignas(64) float dh_rec[kMaxBlockRows * kGroupsPerBackwardTile * kLanes];  // [row][group][lane]
  TileRows tile_rows;
  const int64_t tiles = (part.group_end - part.group_begin + kGroupsPerBackwardTile - 1) /
                        kGroupsPerBackwardTile;
  // The blocks as the forward's, over the tiles of groups.
  const BlockWalk walk(part.row_begin, row_end, pairs ? 2 * kAmxRows : kRowBlock, tiles, kAmx,
                       ksteps * kLanes * 4 * (part.group_end - part.group_begin));
  for (int64_t outer = 0; outer < walk.outer(); ++outer)
    for (int64_t inner = 0; inner < walk.inner(); ++inner) {
      const BlockWalk::Block blk = walk.at(outer, inner, s);
      const int64_t row0 = blk.row0;
      const int rows = static_cast<int>(blk.rows);
      const int prows = static_cast<int>(std::clamp<int64_t>(product_rows - row0, 0, rows));
      const bool pair = prows > kAmxRows;  // (only where pairs: else rows <= 16)
      const bool amx = kAmx && (pair || prows >= a.amx_min_rows);
      if (amx) pair ? tile_rows.configure(kAmxRows, prows - kAmxRows) : tile_rows.configure(prows);
      const int64_t g0 = part.group_begin + blk.column * kGroupsPerBackwardTile;
      const int groups =
          static_cast<int>(std::min<int64_t>(kGroupsPerBackwardTile, part.group_end - g0));
      const uint32_t* w = as_ksteps(a.packed) + g0 * ksteps * kLanes;
      // As in the forward: the lines the epilogue reads at the next step, a step ahead, each
      // line once.
      if (s + 1 < S) {
        const int64_t t_next = time_index(fs - 1, S, a.reverse);
        const int64_t next_rows = std::min<int64_t>(rows, layout.count(t_next) - row0);
        const int64_t unit0 = g0 * kLanes, units = std::min<int64_t>(groups * kLanes, H - unit0);
        for (int64_t r = 0; r < next_rows; ++r) {
          const int64_t row = layout.first(t_next) + row0 + r;
          for (int q = 0; q < 4; ++q) {
            prefetch_lines<0>(gates + row * 4 * H + q * H + unit0, units * sizeof(G));
            prefetch_lines<1>(a.grad_xproj + row * 4 * H + q * H + unit0, units * sizeof(T));
          }
          prefetch_lines<0>(a.cs + row * H + unit0, units * sizeof(float));
          prefetch_lines<0>(a.grad_hs + row * H + unit0, units * sizeof(T));
          if (kHasGradC) prefetch_lines<0>(a.grad_cs + row * H + unit0, units * sizeof(T));
        }
      }
      if (prows > 0) {
        const uint32_t* g_rows = as_ksteps(grad_later + row0 * 4 * H);
        const int64_t ld_g = 4 * H / KStep<T>::kPer;
        if constexpr (kAmx) {
          if (pair) {
            amx_product_pair(nullptr, 0, 0, nullptr, g_rows, ld_g, ksteps, w, kLanes,
                             ksteps * kLanes, dh_rec, NothingBetween{});
          }
        }
        if (!pair) {
          row_block_product<kBf16, kAmx, false>(amx, prows, groups, g_rows, ld_g, ksteps, w,
                                                kLanes, ksteps * kLanes, dh_rec);
        }
      }
      std::fill(dh_rec + prows * groups * kLanes, dh_rec + rows * groups * kLanes, 0.f);
      if (s == 0 && a.grad_h_n != nullptr) {  // no later step: dL/dh_n is the recurrent part
        for (int r = 0; r < rows; ++r)
          for (int gi = 0; gi < groups; ++gi) {
            const int64_t unit0 = (g0 + gi) * kLanes, units = std::min<int64_t>(kLanes, H - unit0);
            std::copy_n(a.grad_h_n + (row0 + r) * H + unit0, units,
                        dh_rec + (r * groups + gi) * kLanes);
          }
      }
      for (int r = 0; r < rows; ++r) {
        const int64_t row = row0 + r;
        for (int gi = 0; gi < groups; ++gi) {
          const int64_t unit0 = (g0 + gi) * kLanes, units = std::min<int64_t>(kLanes, H - unit0);
          const float* d_rec = dh_rec + (r * groups + gi) * kLanes;
          const int64_t idx = row * H + unit0;
          if (row >= step_rows) {  // the row's first step was the one processed before
            for (int64_t u = 0; u < units; ++u) a.grad_h0[idx + u] = d_rec[u];
            continue;
          }
          const int64_t ti = (first + row) * H + unit0, gate0 = (first + row) * 4 * H + unit0;
          const float* c_prev = c_prev_row(row) + unit0;
          const G* gate_in = gates + gate0;
          T* grad_pre = a.grad_xproj + gate0;
          float* grad_bias =
              kBiasGrad ? a.grad_bias + (a.bias_ids ? a.bias_ids[first + row] * 4 * H : 0) + unit0
                        : nullptr;
          // As forward_units: the gate math in a loop of float types only (bf16 operands
          // widened before it, its bf16 outputs narrowed after it).
          float gates_wide[kWideG ? 4 * kLanes : 1], grad_h_wide[kBf16 ? kLanes : 1],
              grad_c_wide[kBf16 && kHasGradC ? kLanes : 1], pre_wide[kBf16 ? 4 * kLanes : 1];
          if constexpr (kWideG) {
            for (int q = 0; q < 4; ++q) widen(gate_in + q * H, gates_wide + q * kLanes, units);
          }
          if constexpr (kBf16) {
            widen(a.grad_hs + ti, grad_h_wide, units);
            if constexpr (kHasGradC) widen(a.grad_cs + ti, grad_c_wide, units);
          }
          const auto gate_at = [&](int q, int64_t u) -> float {
            if constexpr (kWideG) return gates_wide[q * kLanes + u];
            else return gate_in[q * H + u];
          };
          const auto grad_h_at = [&](int64_t u) -> float {
            if constexpr (kBf16) return grad_h_wide[u];
            else return a.grad_hs[ti + u];
          };
          const auto grad_c_at = [&](int64_t u) -> float {
            if constexpr (kBf16) return grad_c_wide[u];
            else return a.grad_cs[ti + u];
          };
          float* const pre_out = kBf16 ? pre_wide : reinterpret_cast<float*>(grad_pre);
          const int64_t ld_pre = kBf16 ? kLanes : H;
          FASTLSTM_NO_ALIAS_LOOP
          for (int64_t u = 0; u < units; ++u) {
            const Gates<float> gate{gate_at(0, u), gate_at(1, u), gate_at(2, u), gate_at(3, u)};
            float dc_in = a.grad_c[idx + u];
            if (kHasGradC) dc_in += grad_c_at(u);
            float dc_prev;
            const Gates<float> d = cell_backward(gate, c_prev[u], a.cs[ti + u],
                                                 grad_h_at(u) + d_rec[u], dc_in, dc_prev);
            a.grad_c[idx + u] = dc_prev;
            pre_out[u] = d.i;
            pre_out[ld_pre + u] = d.f;
            pre_out[2 * ld_pre + u] = d.g;
            pre_out[3 * ld_pre + u] = d.o;
            if (kBiasGrad) {
              grad_bias[u] += d.i;
              grad_bias[H + u] += d.f;
              grad_bias[2 * H + u] += d.g;
              grad_bias[3 * H + u] += d.o;
            }
          }
          if constexpr (kBf16) {
            for (int q = 0; q < 4; ++q) narrow(pre_wide + q * kLanes, grad_pre + q * H, units);
          }
        }
      }
    }
  if (a.grad_x != nullptr && product_rows > 0)
    input_gradient_rows(a, part, grad_later, layout.first(t_later), product_rows);
}

// The entry points: call them only where cpu_supports<T>(). The gate math is inlined into them, so it is vectorised for AVX-512 too.
template <typename T, bool kAmx, bool kInputFused>
inline void forward_step_gates(const FusedForwardArgs<T>& a, const Part& p, int64_t s) {
  if (!a.gates) return forward_step_impl<T, false, kInputFused, kAmx>(a, p, s);
  if constexpr (!std::is_same_v<T, float>) {
    if (a.gates_in_t) return forward_step_impl<T, true, kInputFused, kAmx, T>(a, p, s);
  }
  forward_step_impl<T, true, kInputFused, kAmx>(a, p, s);
}
template <typename T, bool kAmx>
inline void forward_step_dispatch(const FusedForwardArgs<T>& a, const Part& p, int64_t s) {
  a.xproj ? forward_step_gates<T, kAmx, false>(a, p, s) : forward_step_gates<T, kAmx, true>(a, p, s);
}
inline void forward_step(const FusedForwardArgs<float>& a, const Part& p, int64_t s) {
  forward_step_dispatch<float, false>(a, p, s);
}
#if !defined(FASTLSTM_FUSED_AVX2)
// bf16: on AMX tiles where the caller set `amx` (only where amx_usable()).
inline void forward_step(const FusedForwardArgs<Bf16>& a, const Part& p, int64_t s) {
  a.amx ? forward_step_dispatch<Bf16, true>(a, p, s) : forward_step_dispatch<Bf16, false>(a, p, s);
}
#endif
template <typename T, bool kAmx, typename G>
inline void backward_step_gates(const FusedBackwardArgs<T>& a, const Part& p, int64_t s) {
  if (a.grad_bias) {
    a.grad_cs ? backward_step_impl<T, true, kAmx, true, G>(a, p, s)
              : backward_step_impl<T, false, kAmx, true, G>(a, p, s);
  } else {
    a.grad_cs ? backward_step_impl<T, true, kAmx, false, G>(a, p, s)
              : backward_step_impl<T, false, kAmx, false, G>(a, p, s);
  }
}
template <typename T, bool kAmx>
inline void backward_step_dispatch(const FusedBackwardArgs<T>& a, const Part& p, int64_t s) {
  if constexpr (!std::is_same_v<T, float>) {
    if (a.gates_in_t) return backward_step_gates<T, kAmx, T>(a, p, s);
  }
  backward_step_gates<T, kAmx, float>(a, p, s);
}
inline void backward_step(const FusedBackwardArgs<float>& a, const Part& p, int64_t s) {
  backward_step_dispatch<float, false>(a, p, s);
}
#if !defined(FASTLSTM_FUSED_AVX2)
inline void backward_step(const FusedBackwardArgs<Bf16>& a, const Part& p, int64_t s) {
  a.amx ? backward_step_dispatch<Bf16, true>(a, p, s) : backward_step_dispatch<Bf16, false>(a, p, s);
}
#endif

#pragma GCC pop_options

// Whether this CPU runs this build of the fused layer for T.
template <typename T>
bool cpu_supports();
#if defined(FASTLSTM_FUSED_AVX2)
template <>
inline bool cpu_supports<float>() {
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}
template <>
inline bool cpu_supports<Bf16>() {
  return false;
}
#else
template <>
inline bool cpu_supports<float>() {
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
}
template <>
inline bool cpu_supports<Bf16>() {
  return cpu_supports<float>() && __builtin_cpu_supports("avx512bf16");
}
#endif

// Whether the bf16 products can run on AMX tiles here: AMX-TILE and AMX-BF16 (CPUID leaf 7,
// EDX bits 24 and 22) and the kernel's leave to use the tile state, asked for once
// (ARCH_REQ_XCOMP_PERM for XTILEDATA; oneDNN asks the same).
inline bool amx_usable() {
  static const bool usable = [] {
    unsigned eax, ebx, ecx, edx;
    if (!cpu_supports<Bf16>() || !__get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx)) return false;
    if (!((edx >> 24) & 1u) || !((edx >> 22) & 1u)) return false;
    constexpr long kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
    return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
  }();
  return usable;
}

}  // inline namespace isa_avx512 / isa_avx2
}  // namespace fused
}  // namespace fastlstm

#endif  // x86-64 GCC/Clang
