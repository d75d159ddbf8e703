// Large bf16 products on AMX tiles: the training step's GEMMs outside the recurrence, where
// oneDNN reaches only 0.6-0.7 TFLOP/s at their shapes on the AMX Xeon (a weight gradient
// [1536, 6400] x [6400, 384]: the reduction over all S x B rows is long, the output small).
//
// C[M, N] (fp32) = A[M, K] B[K, N], both operands first packed into 1 KiB tiles (zero
// padded, so the kernel never sees a partial tile), then 2 x 2 output tiles at a time:
// per k-block two A tiles and two B tiles loaded for four TDPBF16PS, each load used twice.
// The k-blocks run in chunks whose B tiles (two n-blocks) stay in L1 while the m-blocks
// go by; the A chunk stays in L2. C is accumulated in memory from chunk to chunk.
//
// Packed layouts (kb = k-block of 32, p = k-pair, e = element of the pair):
//   A: a[(mb KB + kb) 512 + m 32 + 2p + e] = A[16 mb + m][32 kb + 2p + e]
//   B: b[(nb KB + kb) 512 + p 32 + 2n + e] = B[32 kb + 2p + e][16 nb + n]
// (an A tile row is 16 k-pairs of one output row; a B tile row one k-pair of 16 columns:
// what TDPBF16PS reads). m-blocks and n-blocks are padded to even counts (pairs).
//
// The packers read their source row by row through `row(k)` (a pointer to row k, or
// nullptr for a zero row), so a source made of pieces (h_{t-1}: h0, then hs shifted by a
// step) is packed without first being copied into one tensor.
#pragma once

#include "lstm_cpu_fused.h"

#ifdef FASTLSTM_CPU_FUSED

namespace fastlstm {
namespace amx_gemm {

constexpr int kRows = 16;        // rows of a tile; fp32 columns of an output tile
constexpr int kK = 32;           // bf16 k of a tile (16 pairs: 64 bytes a row)
constexpr int kTile = kRows * kK;  // bf16 elements of a tile
constexpr int64_t kChunk = 16;   // k-blocks per chunk: two n-blocks' B tiles, 32 KiB, in L1

inline int64_t k_blocks(int64_t k) { return (k + kK - 1) / kK; }
// 16-row (or 16-column) blocks, padded to an even count.
inline int64_t pair_blocks(int64_t n) { return 2 * ((n + 2 * kRows - 1) / (2 * kRows)); }
inline int64_t packed_size(int64_t mn, int64_t k) { return pair_blocks(mn) * k_blocks(k) * kTile; }

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,fma,amx-tile,amx-bf16")

// 16 bf16 of row k (columns [n0, n0 + 16), those < n valid) of a k-major source, as the low
// halves (even) or high halves (odd) of 16 dwords; zero for a missing row.
template <typename RowFn>
__attribute__((always_inline)) inline __m512i pair_half(const RowFn& row, int64_t k, int64_t K,
                                                        int64_t n0, __mmask16 valid) {
  const Bf16* r = k < K ? row(k) : nullptr;
  if (r == nullptr) return _mm512_setzero_si512();
  return _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(valid, r + n0));
}

// One k-block of a k-major source [K, N] (rows row(k)), columns [16 nb, 16 nb + 16), as 16
// dwords per k-pair: v[p] lane n = (src[32 kb + 2p][16 nb + n], src[32 kb + 2p + 1][...]).
template <typename RowFn>
__attribute__((always_inline)) inline void load_pairs(const RowFn& row, int64_t K, int64_t N,
                                                      int64_t kb, int64_t nb, __m512i v[16]) {
  const int64_t n0 = nb * kRows;
  const int64_t cols = std::min<int64_t>(kRows, std::max<int64_t>(0, N - n0));
  const __mmask16 valid = static_cast<__mmask16>((1u << cols) - 1u);
  for (int p = 0; p < 16; ++p) {
    const int64_t k = kb * kK + 2 * p;
    v[p] = _mm512_or_si512(pair_half(row, k, K, n0, valid),
                           _mm512_slli_epi32(pair_half(row, k + 1, K, n0, valid), 16));
  }
}

// B [K, N] given by rows (k-major) into the B layout; k-blocks [kb_begin, kb_end) of every
// n-block (threads take disjoint k-blocks: each reads whole rows of the source).
template <typename RowFn>
void pack_b(const RowFn& row, int64_t K, int64_t N, Bf16* out, int64_t kb_begin,
            int64_t kb_end) {
  const int64_t KB = k_blocks(K), NB = pair_blocks(N);
  __m512i v[16];
  for (int64_t kb = kb_begin; kb < kb_end; ++kb) {
    for (int64_t nb = 0; nb < NB; ++nb) {
      load_pairs(row, K, N, kb, nb, v);
      Bf16* tile = out + (nb * KB + kb) * kTile;
      for (int p = 0; p < 16; ++p) _mm512_storeu_si512(tile + p * 2 * kRows, v[p]);
    }
  }
}

// 16 x 16 dwords transposed in registers (v[i] lane j <-> v[j] lane i).
__attribute__((always_inline)) inline void transpose_16x16(__m512i v[16]) {
  __m512i t[16];
  for (int i = 0; i < 16; i += 2) {  // 2 x 2 blocks of dwords
    t[i] = _mm512_unpacklo_epi32(v[i], v[i + 1]);
    t[i + 1] = _mm512_unpackhi_epi32(v[i], v[i + 1]);
  }
  for (int i = 0; i < 16; i += 4) {  // 4 x 4
    for (int j = 0; j < 2; ++j) {
      v[i + j] = _mm512_unpacklo_epi64(t[i + j], t[i + j + 2]);
      v[i + j + 2] = _mm512_unpackhi_epi64(t[i + j], t[i + j + 2]);
    }
  }
  for (int i = 0; i < 16; i += 8) {  // 8 x 8: 128-bit lanes
    for (int j = 0; j < 4; ++j) {
      t[i + j] = _mm512_shuffle_i32x4(v[i + j], v[i + j + 4], 0x88);
      t[i + j + 4] = _mm512_shuffle_i32x4(v[i + j], v[i + j + 4], 0xDD);
    }
  }
  for (int j = 0; j < 8; ++j) {  // 16 x 16: 256-bit halves
    v[j] = _mm512_shuffle_i32x4(t[j], t[j + 8], 0x88);
    v[j + 8] = _mm512_shuffle_i32x4(t[j], t[j + 8], 0xDD);
  }
}

// A given k-major (its transpose [K, M] by rows: a weight gradient's activations) into the
// A layout: the B tile of the same block, transposed. k-blocks [kb_begin, kb_end).
template <typename RowFn>
void pack_a_transposed(const RowFn& row, int64_t K, int64_t M, Bf16* out, int64_t kb_begin,
                       int64_t kb_end) {
  const int64_t KB = k_blocks(K), MB = pair_blocks(M);
  // After transpose_16x16, row m of the tile sits in v[kOrder[m]].
  static constexpr int kOrder[16] = {0, 2, 1, 3, 4, 6, 5, 7, 8, 10, 9, 11, 12, 14, 13, 15};
  __m512i v[16];
  for (int64_t kb = kb_begin; kb < kb_end; ++kb) {
    for (int64_t mb = 0; mb < MB; ++mb) {
      load_pairs(row, K, M, kb, mb, v);
      transpose_16x16(v);
      Bf16* tile = out + (mb * KB + kb) * kTile;
      for (int m = 0; m < 16; ++m) _mm512_storeu_si512(tile + m * kK, v[kOrder[m]]);
    }
  }
}

// A [M, K] given by rows (m-major: the rows of grad_pre) into the A layout; m-blocks
// [mb_begin, mb_end).
template <typename RowFn>
void pack_a(const RowFn& row, int64_t M, int64_t K, Bf16* out, int64_t mb_begin,
            int64_t mb_end) {
  const int64_t KB = k_blocks(K);
  for (int64_t mb = mb_begin; mb < mb_end; ++mb) {
    for (int m = 0; m < kRows; ++m) {
      const int64_t i = mb * kRows + m;
      const Bf16* r = i < M ? row(i) : nullptr;
      for (int64_t kb = 0; kb < KB; ++kb) {
        const int64_t cols = r ? std::min<int64_t>(kK, K - kb * kK) : 0;
        const __mmask32 valid = static_cast<__mmask32>(cols >= 32 ? ~0u : (1u << cols) - 1u);
        _mm512_storeu_si512(out + (mb * KB + kb) * kTile + m * kK,
                            _mm512_maskz_loadu_epi16(valid, r ? r + kb * kK : nullptr));
      }
    }
  }
}

inline void configure_tiles() {
  fused::AmxTileConfig c;
  memset(&c, 0, sizeof c);
  c.palette = 1;
  for (int t = 0; t < 8; ++t) {
    c.rows[t] = kRows;
    c.colsb[t] = 64;
  }
  __asm__ __volatile__("ldtilecfg %0" : : "m"(c));  // see fused::amx_configure
}

// c[32 x 32] (row stride ldc floats) (+)= A tiles a0, a1 (m-blocks) x B tiles b0, b1
// (n-blocks), over kbs consecutive k-blocks.
__attribute__((always_inline)) inline void block_2x2(const Bf16* a0, const Bf16* a1,
                                                     const Bf16* b0, const Bf16* b1,
                                                     int64_t kbs, float* c, int64_t ldc,
                                                     bool accumulate) {
  const int64_t cs = ldc * 4;
  float* c10 = c + kRows * ldc;
  if (accumulate) {
    _tile_loadd(0, c, cs);
    _tile_loadd(1, c + kRows, cs);
    _tile_loadd(2, c10, cs);
    _tile_loadd(3, c10 + kRows, cs);
  } else {
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
  }
  for (int64_t kb = 0; kb < kbs; ++kb) {
    const int64_t o = kb * kTile;
    _tile_loadd(4, a0 + o, 64);
    _tile_loadd(6, b0 + o, 64);
    _tile_dpbf16ps(0, 4, 6);
    _tile_loadd(7, b1 + o, 64);
    _tile_dpbf16ps(1, 4, 7);
    _tile_loadd(5, a1 + o, 64);
    _tile_dpbf16ps(2, 5, 6);
    _tile_dpbf16ps(3, 5, 7);
  }
  _tile_stored(0, c, cs);
  _tile_stored(1, c + kRows, cs);
  _tile_stored(2, c10, cs);
  _tile_stored(3, c10 + kRows, cs);
}

// C [pair_blocks(M) 16, ldc] fp32 = A B from packed a and b (K: the common k, M and N: the
// packed sizes), for the n-block pairs [np_begin, np_end) (threads take disjoint pairs).
// Tiles configured here: call on a thread that may use AMX (fused::amx_usable()).
inline void gemm(const Bf16* a, const Bf16* b, int64_t M, int64_t N, int64_t K, float* c,
                 int64_t ldc, int64_t np_begin, int64_t np_end) {
  (void)N;
  const int64_t KB = k_blocks(K), MB = pair_blocks(M);
  configure_tiles();
  for (int64_t k0 = 0; k0 < KB; k0 += kChunk) {
    const int64_t kbs = std::min(kChunk, KB - k0);
    for (int64_t np = np_begin; np < np_end; ++np) {
      const Bf16* b0 = b + (2 * np * KB + k0) * kTile;
      const Bf16* b1 = b0 + KB * kTile;
      for (int64_t mp = 0; mp < MB / 2; ++mp) {
        const Bf16* a0 = a + (2 * mp * KB + k0) * kTile;
        block_2x2(a0, a0 + KB * kTile, b0, b1, kbs, c + 2 * mp * kRows * ldc + 2 * np * kRows,
                  ldc, k0 > 0);
      }
    }
  }
  _tile_release();
}

#pragma GCC pop_options

}  // namespace amx_gemm
}  // namespace fastlstm

#endif  // FASTLSTM_CPU_FUSED
