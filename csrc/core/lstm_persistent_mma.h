// p4: the stack kernel of lstm_persistent.h (p3) with phase 1 on tensor cores: per wave a
// block's products [B x K] inputs times [K x 4U] weights run as warp-wide mma.sync, fp32
// sums: m16n8k16 for bf16 and fp16 inputs, m16n8k8 with TF32 inputs for fp32 where TF32 is
// allowed. The weights stay in shared memory in the storage type (bf16: half the bytes of
// p3's fp32 copy). Phase 2 is p3's (finish_unit).
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
struct MmaK16 {
  static constexpr int k = 16, a_elems = 8, b_elems = 4;
  static FASTLSTM_HD int a_row(int lane, int e) { return (lane >> 2) + 8 * ((e >> 1) & 1); }
  static FASTLSTM_HD int a_col(int lane, int e) { return (lane & 3) * 2 + (e & 1) + 8 * (e >> 2); }
  static FASTLSTM_HD int b_row(int lane, int e) { return (lane & 3) * 2 + (e & 1) + 8 * (e >> 1); }
  static FASTLSTM_HD int b_col(int lane, int) { return lane >> 2; }
};
struct MmaK8 {
  static constexpr int k = 8, a_elems = 4, b_elems = 2;
  static FASTLSTM_HD int a_row(int lane, int e) { return (lane >> 2) + 8 * (e & 1); }
  static FASTLSTM_HD int a_col(int lane, int e) { return (lane & 3) + 4 * (e >> 1); }
  static FASTLSTM_HD int b_row(int lane, int e) { return (lane & 3) + 4 * e; }
  static FASTLSTM_HD int b_col(int lane, int) { return lane >> 2; }
};
FASTLSTM_HD int mma_c_row(int lane, int e) { return (lane >> 2) + 8 * (e >> 1); }
FASTLSTM_HD int mma_c_col(int lane, int e) { return (lane & 3) * 2 + (e & 1); }

struct MmaLayerTiling {
  int n_tiles;      // ceil(4U / 8)
  int k_steps;      // ceil(K / k) for the shape's k (16 or 8)
  int k_splits;     // KS: slices of the k-steps per (m-tile, n-group) item
  int k_len;        // k-steps per slice: ceil(k_steps / KS) (trailing slices may be empty)
  int w_stride;     // elements per weight row in shared memory: k k_steps + 16 bytes (the
                    // pad puts the 8 rows one B fragment reads in different banks)
};

struct MmaTiling {
  GridSplit grid;          // as p3's (lstm_persistent.h)
  int warps;               // per block
  int m_tiles;             // ceil(R / 16): a block's rows in tiles of 16
  int64_t weight_bytes;    // the largest block's weights, a multiple of 16: partials start there
  int64_t partial_floats;  // the largest block's partial sums (elements of Acc, fp32 on a GPU)
  MmaLayerTiling layer[kMaxStackLayers];
};

// The grid as p3's (split_grid); k split so that a block has about one item per warp.
// mma_k: the MMA shape's k (16 or 8).
inline MmaTiling mma_tiling(const int64_t* inputs, int layers, int64_t batch, int64_t hidden,
                            int sms, int threads, int element_bytes, int mma_k,
                            int batch_parts = 1) {
  MmaTiling t{};
  t.grid = split_grid(inputs, layers, batch, hidden, sms, batch_parts);
  t.warps = threads / kWarpSize;
  t.m_tiles = (t.grid.part_rows + 15) / 16;
  for (int l = 0; l < layers; ++l) {
    MmaLayerTiling& lt = t.layer[l];
    lt.n_tiles = (4 * t.grid.layer[l].units + 7) / 8;
    lt.k_steps = static_cast<int>((inputs[l] + hidden + mma_k - 1) / mma_k);
    const int items = t.m_tiles * ((lt.n_tiles + kMaxNTiles - 1) / kMaxNTiles);
    const int most = lt.k_steps < 8 ? lt.k_steps : 8;
    const int splits = t.warps / items;
    lt.k_splits = splits < 1 ? 1 : (splits > most ? most : splits);
    lt.k_len = (lt.k_steps + lt.k_splits - 1) / lt.k_splits;
    lt.w_stride = mma_k * lt.k_steps + 16 / element_bytes;
    const int64_t w = (int64_t(lt.n_tiles) * 8 * lt.w_stride * element_bytes + 15) / 16 * 16;
    const int64_t p = int64_t(lt.k_splits) * t.m_tiles * 16 * lt.n_tiles * 8;
    t.weight_bytes = w > t.weight_bytes ? w : t.weight_bytes;
    t.partial_floats = p > t.partial_floats ? p : t.partial_floats;
  }
  return t;
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
    w_s[i] = w;
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
  const int64_t H = a.hidden, in = a.layer[bs.layer].inputs, K = in + H;
  const int64_t row_end = bs.row0 + bs.rows;
  const T zero = Convert<T, Acc>::store(Acc(0));
  const int n_tiles = (4 * bs.units + 7) / 8;  // this block's (its last may be short)
  const int n_groups = (n_tiles + kMaxNTiles - 1) / kMaxNTiles;
  const int items = t.m_tiles * n_groups * lt.k_splits;
  const int64_t n_stride = int64_t(lt.n_tiles) * 8, m_rows = int64_t(t.m_tiles) * 16;
  for (int item = warp; item < items; item += t.warps) {
    const int slice = item % lt.k_splits, rest = item / lt.k_splits;
    const int group = rest % n_groups, m_tile = rest / n_groups;
    const int nt0 = group * kMaxNTiles;
    const int group_tiles = n_tiles - nt0 < kMaxNTiles ? n_tiles - nt0 : kMaxNTiles;
    const int ks_begin = slice * lt.k_len;
    const int ks_end = ks_begin + lt.k_len < lt.k_steps ? ks_begin + lt.k_len : lt.k_steps;
    Acc acc[kLanes][kMaxNTiles][4] = {};
#pragma unroll 2
    for (int ks = ks_begin; ks < ks_end; ++ks) {
      T frag_a[kLanes][Shape::a_elems];
      for (int l = 0; l < kLanes; ++l)
#pragma unroll
        for (int e = 0; e < Shape::a_elems; ++e) {
          const int64_t b = bs.row0 + m_tile * 16 + Shape::a_row(lane0 + l, e);
          const int64_t k = ks * Shape::k + Shape::a_col(lane0 + l, e);
          frag_a[l][e] = b >= row_end || k >= K ? zero
                         : k < in         ? x.below[b * in + k]
                                          : x.h_prev[b * H + k - in];
        }
#pragma unroll
      for (int j = 0; j < kMaxNTiles; ++j) {
        if (j >= group_tiles) break;
        T frag_b[kLanes][Shape::b_elems];
        for (int l = 0; l < kLanes; ++l)
#pragma unroll
          for (int e = 0; e < Shape::b_elems; ++e) {
            const int64_t n = (nt0 + j) * 8 + Shape::b_col(lane0 + l, e);
            frag_b[l][e] = w_s[n * lt.w_stride + ks * Shape::k + Shape::b_row(lane0 + l, e)];
          }
        mma(frag_a, frag_b, acc, j);
      }
    }
    for (int l = 0; l < kLanes; ++l)
#pragma unroll
      for (int j = 0; j < kMaxNTiles; ++j) {
        if (j >= group_tiles) break;
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int64_t row = m_tile * 16 + mma_c_row(lane0 + l, e);
          const int64_t n = (nt0 + j) * 8 + mma_c_col(lane0 + l, e);
          partial[(slice * m_rows + row) * n_stride + n] = acc[l][j][e];
        }
      }
  }
}

// Phase 2 of wave w: each (batch row, unit) adds its slices' sums, then finish_unit.
template <typename T, typename Acc>
FASTLSTM_HD void mma_cell_update(const PersistentStackArgs<T, Acc>& a, const MmaTiling& t,
                                 int block, int64_t wave, int tid, int threads,
                                 const Acc* partial) {
  const BlockSlice bs = block_slice(t.grid, a.hidden, block);
  const int64_t s = wave_step(a, bs.layer, wave);
  if (s < 0) return;
  const MmaLayerTiling& lt = t.layer[bs.layer];
  const int64_t n_stride = int64_t(lt.n_tiles) * 8, m_rows = int64_t(t.m_tiles) * 16;
  for (int64_t p = tid; p < int64_t(bs.rows) * bs.units; p += threads) {
    const int64_t u = p % bs.units, r = p / bs.units;  // r: the row within the block's rows
    Acc pre[4] = {};
    for (int slice = 0; slice < lt.k_splits; ++slice) {
      const Acc* sums = partial + (slice * m_rows + r) * n_stride + 4 * u;
      for (int q = 0; q < 4; ++q) pre[q] += sums[q];
    }
    finish_unit(a, a.layer[bs.layer], s, bs.row0 + r, bs.u0 + u, pre);
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

// p4's schedule on the host, as run_stack_on_host does for p3: per wave every block (in
// reversed order if `blocks_reversed`), in each block every warp (32 lanes at once through
// HostMma), then every thread of phase 2. Shared memory starts NaN.
template <typename Shape, typename T, typename Acc>
void run_mma_stack_on_host(const PersistentStackArgs<T, Acc>& a, const MmaTiling& t,
                           int threads, bool blocks_reversed = false) {
  const T nan = std::numeric_limits<T>::quiet_NaN();
  const int blocks = t.grid.blocks;
  std::vector<std::vector<T>> weights(blocks, std::vector<T>(t.weight_bytes / sizeof(T), nan));
  std::vector<std::vector<Acc>> partial(
      blocks, std::vector<Acc>(t.partial_floats, std::numeric_limits<Acc>::quiet_NaN()));
  for (int blk = 0; blk < blocks; ++blk)
    for (int tid = 0; tid < threads; ++tid)
      mma_load_weights(a, t, blk, tid, threads, weights[blk].data());
  for (int64_t wave = 0; wave < a.steps + a.layers - 1; ++wave) {
    for (int n = 0; n < blocks; ++n) {
      const int blk = blocks_reversed ? blocks - 1 - n : n;
      for (int warp = 0; warp < t.warps; ++warp)
        mma_partial_sums<Shape, kWarpSize>(a, t, blk, wave, warp, 0, weights[blk].data(),
                                           partial[blk].data(), HostMma<Shape, T, Acc>{});
      for (int tid = 0; tid < threads; ++tid)  // __syncthreads()
        mma_cell_update(a, t, blk, wave, tid, threads, partial[blk].data());
    }  // grid.sync()
  }
}

}  // namespace fastlstm
