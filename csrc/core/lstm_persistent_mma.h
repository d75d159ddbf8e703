// p4: a stack of layers in one cooperative launch, the layers as a wavefront (split_grid in
// lstm_persistent.h), with the products on tensor cores: per wave a block's products
// [B x K] inputs times [K x 4U] weights run as warp-wide mma.sync (phase 1), fp32 sums:
// m16n8k16 for bf16 and fp16 inputs, m16n8k8 with TF32 inputs for fp32 where TF32 is
// allowed. The weights stay in shared memory in the storage type. Phase 2 adds the slices'
// sums and the inputs and runs the gate math (cell_step), with c in registers (CellRegs).
//
// Shapes of one block's product: M = its batch rows (m-tiles of 16), N = its 4U gate columns
// n = 4u + q (n-tiles of 8: two units' four gates), K = the layer's inputs + H (k-steps of
// 16, or 8 for TF32). A warp item is (m-tile, group of up to kMaxNTiles n-tiles, slice of
// the k-steps): it loads each A fragment once for all the group's n-tiles and writes its
// 16 x 8 sums per n-tile to the partial buffer [slice][row][n] in shared memory; phase 2
// adds the slices.
//
// Like lstm_persistent.h, the per-warp work is a plain function, templated on the number of
// lanes it runs at once (kLanes) and on the MMA: the CUDA kernel runs one lane per thread
// with the tensor-core instruction (TensorCoreMma, lstm_persistent_cuda.cu); the host runs
// all 32 lanes of a warp together with HostMma, which reads the fragments back into
// matrices through the PTX ISA's fragment layouts (MmaK16, MmaK8 below) and multiplies
// them. So the C++ tests check the tiling, the indexing and the fragment gathering against
// the oracle on the CPU; whether the layout functions match the hardware only a GPU run
// shows.
#pragma once

#include <limits>
#include <vector>

#include "lstm_persistent.h"

namespace fastlstm {

constexpr int kWarpSize = 32;
constexpr int kMaxNTiles = 8;  // n-tiles per warp item: 32 fp32 accumulators per lane

// Which element of the matrices lane `lane` holds as its e-th fragment element, for the two
// MMA shapes (PTX ISA, "Matrix Fragments for mma.m16n8k16 with floating point type" and
// "... for mma.m16n8k8"): A is 16 x k (row = batch row, col = k), B is k x 8 (row = k, col =
// n), C/D is 16 x 8 fp32 in both. groupID = lane / 4, threadID_in_group = lane % 4.
//   MmaK16: mma.m16n8k16 with .bf16/.f16 inputs (p4 for bf16, fp16);
//   MmaK8:  mma.m16n8k8 with .tf32 inputs (p4 for fp32 where TF32 is allowed).
//
// Vector loads. A sum over k does not care in which order the k come, as long as A's column
// c and B's row c hold the same k. So where the shapes allow (h_rows_in_chunks), a lane
// loads `chunk` consecutive k of one row of A (16 bytes on the GPU: 8 bf16/fp16 or 4 fp32),
// and of one row of the weights, for a pair of k-steps at once, and hands them to the MMA as
// if they were the columns the layout names: in the 2k-wide window of a pair, lane t
// (threadID_in_group) loads k = chunk t .. chunk t + chunk - 1; the first half goes to the
// pair's first MMA, the second half to its second. Element e of a fragment takes index
// a_idx(e) (b_idx(e)) of its half, from row a_half(e) (0: groupID, 1: groupID + 8). For
// MmaK16, A's column c = 2t + x + 8y (x, y in {0, 1}) and B's row c both get index x + 2y;
// for MmaK8, column (row) c = t + 4y both get y. ctest checks the result, not the formulas:
// a k that two lanes both took, or that no lane took, gives a wrong sum.
struct MmaK16 {
  static constexpr int k = 16, a_elems = 8, b_elems = 4, chunk = 8;
  static FASTLSTM_HD int a_row(int lane, int e) { return (lane >> 2) + 8 * ((e >> 1) & 1); }
  static FASTLSTM_HD int a_col(int lane, int e) { return (lane & 3) * 2 + (e & 1) + 8 * (e >> 2); }
  static FASTLSTM_HD int b_row(int lane, int e) { return (lane & 3) * 2 + (e & 1) + 8 * (e >> 1); }
  static FASTLSTM_HD int b_col(int lane, int) { return lane >> 2; }
  static FASTLSTM_HD int a_half(int e) { return (e >> 1) & 1; }
  static FASTLSTM_HD int a_idx(int e) { return (e & 1) + 2 * (e >> 2); }
  static FASTLSTM_HD int b_idx(int e) { return e; }
};
struct MmaK8 {
  static constexpr int k = 8, a_elems = 4, b_elems = 2, chunk = 4;
  static FASTLSTM_HD int a_row(int lane, int e) { return (lane >> 2) + 8 * (e & 1); }
  static FASTLSTM_HD int a_col(int lane, int e) { return (lane & 3) + 4 * (e >> 1); }
  static FASTLSTM_HD int b_row(int lane, int e) { return (lane & 3) + 4 * e; }
  static FASTLSTM_HD int b_col(int lane, int) { return lane >> 2; }
  static FASTLSTM_HD int a_half(int e) { return e & 1; }
  static FASTLSTM_HD int a_idx(int e) { return e >> 1; }
  static FASTLSTM_HD int b_idx(int e) { return e; }
};
FASTLSTM_HD int mma_c_row(int lane, int e) { return (lane >> 2) + 8 * (e >> 1); }
FASTLSTM_HD int mma_c_col(int lane, int e) { return (lane & 3) * 2 + (e & 1); }

struct MmaLayerTiling {
  int n_tiles;      // ceil(4U / 8)
  int k_steps;      // ceil(K / k) for the shape's k (16 or 8); even with vector loads
  int k_splits;     // KS: slices of the k-steps per (m-tile, n-group) item
  int k_len;        // k-steps per slice: ceil(k_steps / KS), even with vector loads
                    // (trailing slices may be empty)
  int w_stride;     // elements per weight row in shared memory: k k_steps, + 16 bytes with
                    // scalar loads (the 8 rows one B fragment reads fall in different banks)
  int w_swizzle;    // vector loads: row n keeps its chunk c at c ^ (w_swizzle (n & 1)) (see
                    // weight_index); 4 where a row is a multiple of 8 chunks (128 bytes on
                    // the GPU), so that the two rows a quarter-warp reads (4 chunks of each)
                    // fall in different halves of the banks; else 0 (rows already alternate)
};

struct MmaTiling {
  GridSplit grid;          // split_grid (lstm_persistent.h)
  int warps;               // per block
  int m_tiles;             // ceil(B / 16): the batch rows in tiles of 16
  int chunk;               // vector loads: elements per load (Shape::chunk); 0: scalar loads
  int64_t weight_bytes;    // the largest block's weights, a multiple of 16: partials start there
  int64_t partial_floats;  // the largest block's partial sums (elements of Acc, fp32 on a GPU)
  MmaLayerTiling layer[kMaxStackLayers];
};

// The grid by split_grid; k split so that a block has about one item per warp.
// mma_k: the MMA shape's k (16 or 8); chunk: its Shape::chunk for vector loads (where
// h_rows_in_chunks allows them), 0 for element loads.
inline MmaTiling mma_tiling(const int64_t* inputs, int layers, int64_t batch, int64_t hidden,
                            int sms, int threads, int element_bytes, int mma_k, int chunk) {
  MmaTiling t{};
  t.grid = split_grid(inputs, layers, hidden, sms);
  t.warps = threads / kWarpSize;
  t.m_tiles = static_cast<int>((batch + 15) / 16);
  t.chunk = chunk;
  const bool vector_loads = chunk > 0;
  const int step_unit = vector_loads ? 2 : 1;  // vector loads take k-steps in pairs
  auto round_up = [](int n, int m) { return (n + m - 1) / m * m; };
  for (int l = 0; l < layers; ++l) {
    MmaLayerTiling& lt = t.layer[l];
    lt.n_tiles = (4 * t.grid.layer[l].units + 7) / 8;
    lt.k_steps = round_up(static_cast<int>((inputs[l] + hidden + mma_k - 1) / mma_k), step_unit);
    const int items = t.m_tiles * ((lt.n_tiles + kMaxNTiles - 1) / kMaxNTiles);
    const int most = lt.k_steps / step_unit < 8 ? lt.k_steps / step_unit : 8;
    const int splits = t.warps / items;
    lt.k_splits = splits < 1 ? 1 : (splits > most ? most : splits);
    lt.k_len = round_up((lt.k_steps + lt.k_splits - 1) / lt.k_splits, step_unit);
    lt.w_stride = mma_k * lt.k_steps + (vector_loads ? 0 : 16 / element_bytes);
    lt.w_swizzle = vector_loads && (2 * lt.k_steps) % 8 == 0 ? 4 : 0;  // 2 chunks per k-step
    const int64_t w = (int64_t(lt.n_tiles) * 8 * lt.w_stride * element_bytes + 15) / 16 * 16;
    const int64_t p = int64_t(lt.k_splits) * t.m_tiles * 16 * lt.n_tiles * 8;
    t.weight_bytes = w > t.weight_bytes ? w : t.weight_bytes;
    t.partial_floats = p > t.partial_floats ? p : t.partial_floats;
  }
  return t;
}

// Where weight row n keeps its chunk c in shared memory, in chunks from the row's start (the
// swizzle; vector loads only).
FASTLSTM_HD int swizzled_chunk(const MmaLayerTiling& lt, int n, int c) {
  return c ^ (lt.w_swizzle * (n & 1));
}

// Where weight row n keeps its column k in shared memory (w_s [n_tiles * 8][w_stride]).
FASTLSTM_HD int64_t weight_index(const MmaTiling& t, const MmaLayerTiling& lt, int64_t n,
                                 int64_t k) {
  if (lt.w_swizzle == 0) return n * lt.w_stride + k;
  const int chunk = swizzled_chunk(lt, static_cast<int>(n), static_cast<int>(k / t.chunk));
  return n * lt.w_stride + int64_t(chunk) * t.chunk + k % t.chunk;
}

// mma_tiling for `a` as the kernel runs it (Shape: its MMA), vector loads where
// h_rows_in_chunks allows.
template <typename Shape, typename T, typename Acc>
MmaTiling mma_tiling_for(const PersistentStackArgs<T, Acc>& a, int sms, int threads) {
  int64_t inputs[kMaxStackLayers];
  layer_inputs(a, inputs);
  return mma_tiling(inputs, a.layers, a.batch, a.hidden, sms, threads, sizeof(T), Shape::k,
                    h_rows_in_chunks(a, Shape::chunk) ? Shape::chunk : 0);
}

// Once per launch: this block's weights into w_s [n_tiles * 8][w_stride] (row n = 4u + q
// holds [W_ih | W_hh] row q*H + u0 + u; zeros past the block's units and past K).
template <typename T, typename Acc>
FASTLSTM_HD void mma_load_weights(const PersistentStackArgs<T, Acc>& a, const MmaTiling& t,
                                  int block, int tid, int threads, T* w_s) {
  const BlockSlice bs = block_slice(t.grid, a.hidden, block);
  const StackLayer<T, Acc>& L = a.layer[bs.layer];
  const MmaLayerTiling& lt = t.layer[bs.layer];
  const int64_t H = a.hidden, in = L.inputs, K = in + H;
  const T zero = Convert<T, Acc>::store(Acc(0));
  for (int64_t i = tid; i < int64_t(lt.n_tiles) * 8 * lt.w_stride; i += threads) {
    const int64_t n = i / lt.w_stride, k = i % lt.w_stride, u = n / 4, q = n % 4;
    T w = zero;
    if (u < bs.units && k < K) {
      const int64_t g = q * H + bs.u0 + u;
      w = k < in ? L.w_ih[g * in + k] : L.w_hh[g * H + k - in];
    }
    w_s[weight_index(t, lt, n, k)] = w;
  }
}

// k-steps of the vector path whose A chunks one item loads at once before their MMAs: the
// loads' latency (L2, the h of other blocks) is paid once per burst (bf16: 8 k-steps, 128 k).
constexpr int kPairsPerBurst = 4;

// One warp item's work, as mma_partial_sums hands it down: lanes lane0 .. lane0 + kLanes - 1
// of its warp, batch rows row0 + [0, 16) (rows at or past row_end are zeros), its n-tiles
// [nt0, nt0 + tiles), k-steps [ks_begin, ks_end).
struct MmaItem {
  int lane0;
  int64_t row0, row_end;
  int nt0, tiles, ks_begin, ks_end;
};

// acc += A B over the item's k-steps, each fragment element loaded on its own (any shape;
// the weight rows are not swizzled).
template <typename Shape, int kLanes, typename T, typename Acc, typename Mma>
FASTLSTM_HD void mma_item_scalar_loads(const WaveInputs<T>& x, int64_t in, int64_t H,
                                       const MmaItem& it, const T* w_s, int w_stride,
                                       const Mma& mma, Acc (&acc)[kLanes][kMaxNTiles][4]) {
  const int64_t K = in + H;
  const T zero = Convert<T, Acc>::store(Acc(0));
#pragma unroll 2
  for (int ks = it.ks_begin; ks < it.ks_end; ++ks) {
    T frag_a[kLanes][Shape::a_elems];
    for (int l = 0; l < kLanes; ++l)
#pragma unroll
      for (int e = 0; e < Shape::a_elems; ++e) {
        const int64_t b = it.row0 + Shape::a_row(it.lane0 + l, e);
        const int64_t k = ks * Shape::k + Shape::a_col(it.lane0 + l, e);
        frag_a[l][e] = b >= it.row_end || k >= K ? zero
                       : k < in                  ? x.below[b * in + k]
                                                 : x.h_prev[b * H + k - in];
      }
#pragma unroll
    for (int j = 0; j < kMaxNTiles; ++j) {
      if (j >= it.tiles) break;
      T frag_b[kLanes][Shape::b_elems];
      for (int l = 0; l < kLanes; ++l)
#pragma unroll
        for (int e = 0; e < Shape::b_elems; ++e) {
          const int64_t n = (it.nt0 + j) * 8 + Shape::b_col(it.lane0 + l, e);
          frag_b[l][e] = w_s[n * w_stride + ks * Shape::k + Shape::b_row(it.lane0 + l, e)];
        }
      mma(frag_a, frag_b, acc, j);
    }
  }
}

// The same sum from chunk loads (Shape's comment): per pair of k-steps a lane loads one chunk
// of each of its two A rows and one chunk of its weight row per n-tile (swizzled rows:
// weight_index). A's chunks come in bursts of kPairsPerBurst pairs, all loads issued before
// the MMAs that wait for them. ks_begin and ks_end are even (mma_tiling).
template <typename Shape, int kLanes, typename T, typename Acc, typename Mma>
FASTLSTM_HD void mma_item_vector_loads(const WaveInputs<T>& x, int64_t in, int64_t H,
                                       const MmaItem& it, const T* w_s,
                                       const MmaLayerTiling& lt, const Mma& mma,
                                       Acc (&acc)[kLanes][kMaxNTiles][4]) {
  constexpr int C = Shape::chunk;
  static_assert(4 * C == 2 * Shape::k, "a pair's 2k columns are 4 lanes' chunks");
  const int64_t K = in + H;
  const T zero = Convert<T, Acc>::store(Acc(0));
  for (int ks0 = it.ks_begin; ks0 < it.ks_end; ks0 += 2 * kPairsPerBurst) {
    T a_chunk[kLanes][kPairsPerBurst][2][C];
#pragma unroll
    for (int p = 0; p < kPairsPerBurst; ++p)
      for (int l = 0; l < kLanes; ++l) {
        const int lane = it.lane0 + l;
        const int64_t k = int64_t(ks0 + 2 * p) * Shape::k + C * (lane & 3);
#pragma unroll
        for (int half = 0; half < 2; ++half) {
          const int64_t b = it.row0 + (lane >> 2) + 8 * half;
          if (ks0 + 2 * p < it.ks_end && b < it.row_end && k < K)
            load_chunk(k < in ? x.below + b * in + k : x.h_prev + b * H + k - in,
                       a_chunk[l][p][half]);
          else
#pragma unroll
            for (int i = 0; i < C; ++i) a_chunk[l][p][half][i] = zero;
        }
      }
#pragma unroll
    for (int p = 0; p < kPairsPerBurst; ++p) {
      const int ks = ks0 + 2 * p;
      if (ks >= it.ks_end) break;
      T frag_a[2][kLanes][Shape::a_elems];  // the pair's two k-steps
      for (int l = 0; l < kLanes; ++l)
#pragma unroll
        for (int e = 0; e < Shape::a_elems; ++e) {
          frag_a[0][l][e] = a_chunk[l][p][Shape::a_half(e)][Shape::a_idx(e)];
          frag_a[1][l][e] = a_chunk[l][p][Shape::a_half(e)][C / 2 + Shape::a_idx(e)];
        }
#pragma unroll
      for (int j = 0; j < kMaxNTiles; ++j) {
        if (j >= it.tiles) break;
        T b_chunk[kLanes][C];
        for (int l = 0; l < kLanes; ++l) {
          const int lane = it.lane0 + l;
          const int n = (it.nt0 + j) * 8 + Shape::b_col(lane, 0);
          // weight_index(t, lt, n, ks k + C (lane & 3)), in 32 bits with C known here.
          const int chunk = swizzled_chunk(lt, n, 2 * ks + (lane & 3));
          load_chunk(w_s + n * lt.w_stride + chunk * C, b_chunk[l]);
        }
#pragma unroll
        for (int step = 0; step < 2; ++step) {
          T frag_b[kLanes][Shape::b_elems];
          for (int l = 0; l < kLanes; ++l)
#pragma unroll
            for (int e = 0; e < Shape::b_elems; ++e)
              frag_b[l][e] = b_chunk[l][step * C / 2 + Shape::b_idx(e)];
          mma(frag_a[step], frag_b, acc, j);
        }
      }
    }
  }
}

// Phase 1 of wave w on tensor cores, for warp `warp` of the block: lanes lane0 ..
// lane0 + kLanes - 1 (the CUDA kernel: one lane; the host: all 32). `mma(a, b, acc, j)`
// adds the 16 x k x 8 product (Shape) of the lanes' fragments a, b to acc[.][j].
template <typename Shape, int kLanes, typename T, typename Acc, typename Mma>
FASTLSTM_HD void mma_partial_sums(const PersistentStackArgs<T, Acc>& a, const MmaTiling& t,
                                  int block, int64_t wave, int warp, int lane0, const T* w_s,
                                  Acc* partial, const Mma& mma) {
  const BlockSlice bs = block_slice(t.grid, a.hidden, block);
  const WaveInputs<T> x = wave_inputs(a, bs.layer, wave);
  if (x.step < 0) return;
  const MmaLayerTiling& lt = t.layer[bs.layer];
  const int64_t H = a.hidden, in = a.layer[bs.layer].inputs;
  const int n_tiles = (4 * bs.units + 7) / 8;  // this block's (its last may be short)
  const int n_groups = (n_tiles + kMaxNTiles - 1) / kMaxNTiles;
  const int items = t.m_tiles * n_groups * lt.k_splits;
  const int64_t n_stride = int64_t(lt.n_tiles) * 8, m_rows = int64_t(t.m_tiles) * 16;
  for (int item = warp; item < items; item += t.warps) {
    const int slice = item % lt.k_splits, rest = item / lt.k_splits;
    const int group = rest % n_groups, m_tile = rest / n_groups;
    MmaItem it;
    it.lane0 = lane0;
    it.row0 = m_tile * 16;
    it.row_end = a.batch;
    it.nt0 = group * kMaxNTiles;
    it.tiles = n_tiles - it.nt0 < kMaxNTiles ? n_tiles - it.nt0 : kMaxNTiles;
    it.ks_begin = slice * lt.k_len;
    it.ks_end = it.ks_begin + lt.k_len < lt.k_steps ? it.ks_begin + lt.k_len : lt.k_steps;
    Acc acc[kLanes][kMaxNTiles][4] = {};
    if (t.chunk != 0)
      mma_item_vector_loads<Shape, kLanes>(x, in, H, it, w_s, lt, mma, acc);
    else
      mma_item_scalar_loads<Shape, kLanes>(x, in, H, it, w_s, lt.w_stride, mma, acc);
    for (int l = 0; l < kLanes; ++l)
#pragma unroll
      for (int j = 0; j < kMaxNTiles; ++j) {
        if (j >= it.tiles) break;
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int64_t row = m_tile * 16 + mma_c_row(lane0 + l, e);
          const int64_t n = (it.nt0 + j) * 8 + mma_c_col(lane0 + l, e);
          partial[(slice * m_rows + row) * n_stride + n] = acc[l][j][e];
        }
      }
  }
}

// Phase 2's cells (batch row, unit) are the same for a thread every wave: cell p = tid +
// i threads of the block's rows x units, unit fastest. The first kCellRegs of them keep c in
// registers between waves (cs gets c_t for the backward, but is not read back), and their
// inputs (xproj or bias) are loaded at the start of the wave, so that those loads wait
// behind phase 1 instead of inside phase 2. Cells past kCellRegs per thread (batch x units
// per block over 8 x 256) go through memory (finish_unit).
constexpr int kCellRegs = 8;

template <typename Acc>
struct CellRegs {
  Acc c[kCellRegs];         // c_t of the thread's cells at the wave that last wrote them
  Acc input[kCellRegs][4];  // this wave's inputs (load_unit_input)
};

// Start of wave w, before phase 1: this thread's register cells' inputs into regs.input.
template <typename T, typename Acc>
FASTLSTM_HD void mma_load_cell_inputs(const PersistentStackArgs<T, Acc>& a, const MmaTiling& t,
                                      int block, int64_t wave, int tid, int threads,
                                      CellRegs<Acc>& regs) {
  const BlockSlice bs = block_slice(t.grid, a.hidden, block);
  const int64_t s = wave_step(a, bs.layer, wave);
  if (s < 0) return;
  const int64_t cells = a.batch * bs.units;
#pragma unroll
  for (int i = 0; i < kCellRegs; ++i) {
    const int64_t p = tid + int64_t(i) * threads;
    if (p >= cells) break;
    load_unit_input(a, a.layer[bs.layer], s, p / bs.units, bs.u0 + p % bs.units,
                    regs.input[i]);
  }
}

// Phase 2 of wave w: each cell adds its slices' sums (and its input), then the gate math.
template <typename T, typename Acc>
FASTLSTM_HD void mma_cell_update(const PersistentStackArgs<T, Acc>& a, const MmaTiling& t,
                                 int block, int64_t wave, int tid, int threads,
                                 const Acc* partial, CellRegs<Acc>& regs) {
  const BlockSlice bs = block_slice(t.grid, a.hidden, block);
  const int64_t s = wave_step(a, bs.layer, wave);
  if (s < 0) return;
  const StackLayer<T, Acc>& L = a.layer[bs.layer];
  const MmaLayerTiling& lt = t.layer[bs.layer];
  const int64_t n_stride = int64_t(lt.n_tiles) * 8, m_rows = int64_t(t.m_tiles) * 16;
  auto slice_sums = [&](int64_t r, int64_t u, Acc (&pre)[4]) {  // r: the batch row
    for (int q = 0; q < 4; ++q) pre[q] = Acc(0);
    for (int slice = 0; slice < lt.k_splits; ++slice) {
      const Acc* sums = partial + (slice * m_rows + r) * n_stride + 4 * u;
      for (int q = 0; q < 4; ++q) pre[q] += sums[q];
    }
  };
  const int64_t cells = a.batch * bs.units;
#pragma unroll
  for (int i = 0; i < kCellRegs; ++i) {
    const int64_t p = tid + int64_t(i) * threads;
    if (p >= cells) break;
    const int64_t u = p % bs.units, r = p / bs.units;
    Acc pre[4];
    slice_sums(r, u, pre);
    for (int q = 0; q < 4; ++q) pre[q] += regs.input[i][q];
    const Acc c_prev = s == 0 ? load_c_prev(a, L, s, r, bs.u0 + u) : regs.c[i];
    regs.c[i] = cell_step(a, L, s, r, bs.u0 + u, pre, c_prev);
  }
  for (int64_t p = tid + int64_t(kCellRegs) * threads; p < cells; p += threads) {
    const int64_t u = p % bs.units, r = p / bs.units;
    Acc pre[4];
    slice_sums(r, u, pre);
    finish_unit(a, L, s, r, bs.u0 + u, pre);
  }
}

// The warp MMA on the host, for all 32 lanes at once: the fragments read back into
// matrices through the Shape's layout functions, D = A B + C, D scattered back.
template <typename Shape, typename T, typename Acc>
struct HostMma {
  void operator()(const T (&a)[kWarpSize][Shape::a_elems], const T (&b)[kWarpSize][Shape::b_elems],
                  Acc (&acc)[kWarpSize][kMaxNTiles][4], int j) const {
    Acc A[16][Shape::k], Bm[Shape::k][8], C[16][8];
    for (int lane = 0; lane < kWarpSize; ++lane) {
      for (int e = 0; e < Shape::a_elems; ++e)
        A[Shape::a_row(lane, e)][Shape::a_col(lane, e)] = Convert<T, Acc>::load(a[lane][e]);
      for (int e = 0; e < Shape::b_elems; ++e)
        Bm[Shape::b_row(lane, e)][Shape::b_col(lane, e)] = Convert<T, Acc>::load(b[lane][e]);
      for (int e = 0; e < 4; ++e) C[mma_c_row(lane, e)][mma_c_col(lane, e)] = acc[lane][j][e];
    }
    for (int lane = 0; lane < kWarpSize; ++lane)
      for (int e = 0; e < 4; ++e) {
        const int r = mma_c_row(lane, e), c = mma_c_col(lane, e);
        Acc d = C[r][c];
        for (int k = 0; k < Shape::k; ++k) d += A[r][k] * Bm[k][c];
        acc[lane][j][e] = d;
      }
  }
};

// p4's schedule on the host, as the grid barriers order it: the blocks in `order`, in
// each block every warp's phase 1 (warp_phase1(block, wave, warp, w_s, partial)), then every
// thread of phase 2. Shared memory and the threads' registers start NaN.
template <typename Shape, typename T, typename Acc, typename WarpPhase1>
void run_mma_stack_on_host(const PersistentStackArgs<T, Acc>& a, const MmaTiling& t,
                           int threads, HostOrder order, WarpPhase1 warp_phase1) {
  const T nan = std::numeric_limits<T>::quiet_NaN();
  const int blocks = t.grid.blocks;
  std::vector<std::vector<T>> weights(blocks, std::vector<T>(t.weight_bytes / sizeof(T), nan));
  std::vector<std::vector<Acc>> partial(
      blocks, std::vector<Acc>(t.partial_floats, std::numeric_limits<Acc>::quiet_NaN()));
  CellRegs<Acc> poisoned;
  for (int i = 0; i < kCellRegs; ++i) {
    poisoned.c[i] = std::numeric_limits<Acc>::quiet_NaN();
    for (int q = 0; q < 4; ++q) poisoned.input[i][q] = poisoned.c[i];
  }
  std::vector<CellRegs<Acc>> regs(size_t(blocks) * threads, poisoned);
  for (int blk = 0; blk < blocks; ++blk)
    for (int tid = 0; tid < threads; ++tid)
      mma_load_weights(a, t, blk, tid, threads, weights[blk].data());
  schedule_on_host(a, t.grid, order, [&](int blk, int64_t wave) {
    CellRegs<Acc>* block_regs = &regs[size_t(blk) * threads];
    for (int tid = 0; tid < threads; ++tid)
      mma_load_cell_inputs(a, t, blk, wave, tid, threads, block_regs[tid]);
    for (int warp = 0; warp < t.warps; ++warp)
      warp_phase1(blk, wave, warp, weights[blk].data(), partial[blk].data());
    for (int tid = 0; tid < threads; ++tid)  // __syncthreads()
      mma_cell_update(a, t, blk, wave, tid, threads, partial[blk].data(), block_regs[tid]);
  });
}

// The same with each warp's 32 lanes at once through HostMma.
template <typename Shape, typename T, typename Acc>
void run_mma_stack_on_host(const PersistentStackArgs<T, Acc>& a, const MmaTiling& t,
                           int threads, HostOrder order = HostOrder::waves) {
  run_mma_stack_on_host<Shape>(
      a, t, threads, order, [&](int blk, int64_t wave, int warp, const T* w_s, Acc* partial) {
        mma_partial_sums<Shape, kWarpSize>(a, t, blk, wave, warp, 0, w_s, partial,
                                           HostMma<Shape, T, Acc>{});
      });
}

}  // namespace fastlstm
