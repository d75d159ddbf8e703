// The fused layer's weight gradients on its own register tile (AVX-512; bf16 on AVX512-BF16):
// dW [G, K] = sum over all rows r of g[r]^T z[r], g [R, G] the gradient of the pre-activations
// (G = 4H), z [R, K] the left operand of the product that made them (x, or h_{t-1}): one GEMM
// over every step's rows, the reduction over the rows.
//
// Why: on a Zen 4 MKL's fp32 GEMM runs these at 53-80 % of the tile's peak (123-187 GFLOP/s
// on 2 cores), the tile (lstm_cpu_fused.h, tile_product) with its operands packed into L1-
// and L2-friendly panels at 85-91 %; oneDNN's bf16 one at 50-86 % (where each runs:
// csrc/torch/weight_gradients_cpu.cpp).
//
// Operands as k-steps (32 bits: one row for fp32, a pair of consecutive rows for bf16, as
// vdpbf16ps multiplies pairs; ksteps = R, or R / 2 rounded up):
//   a  g packed by pack_gradient_panels: for each 48 columns of g (a "panel": 8 tiles' 6
//      rows), [ksteps][48] k-steps, contiguous (g read in place, at G elements a row, would
//      put a tile's 256 k-steps of g in one L1 set where G is a multiple of 1024);
//   b  z packed by pack_gradient_operand: for each 64 columns (a "panel", the tile's 4
//      vectors), [ksteps][64] k-steps, contiguous (z read in place, at K elements a row, maps
//      the 256 k-steps of a block onto few L2 sets where K is a power of two);
//   out [G][ld_out] fp32, ld_out >= K rounded up to 16.
// Blocked as a GEMM library would: 256 k-steps at a time (the partial sums kept in `out`), 256
// columns of z (256 KiB) reused from L2 for every 6 rows of g, whose k-steps stay in L1 for
// those columns. Each worker takes rows of G, whole tiles of 6: no two write the same output.
#pragma once

#include "lstm_cpu_fused.h"

#if defined(FASTLSTM_CPU_FUSED) && !defined(FASTLSTM_FUSED_AVX2)

namespace fastlstm {
namespace fused {

constexpr int64_t kGradChunkKsteps = 256;  // k-steps summed per pass over the output
constexpr int64_t kGradPanelColumns = 64;  // columns of z in a packed panel: 4 vectors
constexpr int64_t kGradPanelRows = 48;     // columns of g in a packed panel: 8 tiles' rows
constexpr int64_t kGradBlockColumns = 256;  // columns of z reused from L2 for each row tile

template <typename T>
int64_t gradient_ksteps(int64_t rows) {
  return (rows + KStep<T>::kPer - 1) / KStep<T>::kPer;
}
inline int64_t gradient_panels(int64_t G) { return (G + kGradPanelRows - 1) / kGradPanelRows; }
// Elements of g packed (pack_gradient_panels).
template <typename T>
int64_t gradient_panels_size(int64_t rows, int64_t G) {
  return gradient_panels(G) * gradient_ksteps<T>(rows) * kGradPanelRows * KStep<T>::kPer;
}
// Elements of z packed (pack_gradient_operand).
template <typename T>
int64_t gradient_operand_size(int64_t rows, int64_t cols) {
  return (cols + kGradPanelColumns - 1) / kGradPanelColumns * gradient_ksteps<T>(rows) *
         kGradPanelColumns * KStep<T>::kPer;
}

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,fma,prfchw,prefer-vector-width=512")
// GCC 12's masked loads start from _mm512_undefined_*, which it then calls maybe-uninitialized;
// the results are fully defined.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

// z's k-steps [ks_begin, ks_end) into b: for each 64 columns (a panel: the tile's 4
// vectors), [ksteps][64] k-steps, contiguous; the last panel's missing columns and an odd
// count's padding row zero. row(r), r < rows, points at z's row r (`cols` elements).
template <typename T, typename RowFn>
void pack_gradient_operand(RowFn&& row, int64_t rows, int64_t cols, T* b, int64_t ks_begin,
                           int64_t ks_end) {
  const int64_t ksteps = gradient_ksteps<T>(rows);
  const int64_t panels = (cols + kGradPanelColumns - 1) / kGradPanelColumns;
  for (int64_t ks = ks_begin; ks < ks_end; ++ks) {
    const T* first = row(ks * KStep<T>::kPer);
    const T* second = nullptr;
    if constexpr (std::is_same_v<T, Bf16>) second = 2 * ks + 1 < rows ? row(2 * ks + 1) : nullptr;
    for (int64_t panel = 0; panel < panels; ++panel) {
      uint32_t* out = reinterpret_cast<uint32_t*>(b) + (panel * ksteps + ks) * kGradPanelColumns;
      for (int64_t c = 0; c < kGradPanelColumns; c += kLanes) {
        const int64_t c0 = panel * kGradPanelColumns + c;
        const int64_t n = std::clamp<int64_t>(cols - c0, 0, kLanes);
        const __mmask16 m = static_cast<__mmask16>(n == kLanes ? 0xFFFFu : (1u << n) - 1u);
        if constexpr (std::is_same_v<T, float>) {
          _mm512_storeu_si512(out + c, _mm512_maskz_loadu_epi32(m, first + c0));
        } else {
          _mm512_storeu_si512(out + c, pair_rows(first + c0, second ? second + c0 : nullptr, m));
        }
      }
    }
  }
}

// g's panels [panel_begin, panel_end) for a, from g [rows, G] (rows ld_g elements apart).
template <typename T>
void pack_gradient_panels(const T* g, int64_t ld_g, int64_t rows, int64_t G, T* a,
                          int64_t panel_begin, int64_t panel_end) {
  const int64_t ksteps = gradient_ksteps<T>(rows);
  constexpr int64_t kBlock = 32;  // k-steps whose rows of g stay in L1 across the panels
  for (int64_t ks0 = 0; ks0 < ksteps; ks0 += kBlock) {
    const int64_t ks1 = std::min(ksteps, ks0 + kBlock);
    for (int64_t panel = panel_begin; panel < panel_end; ++panel) {
      const int64_t m0 = panel * kGradPanelRows;
      uint32_t* out = reinterpret_cast<uint32_t*>(a) + (panel * ksteps + ks0) * kGradPanelRows;
      for (int64_t ks = ks0; ks < ks1; ++ks, out += kGradPanelRows) {
        for (int64_t j = 0; j < kGradPanelRows; j += kLanes) {
          const int64_t n = std::clamp<int64_t>(G - m0 - j, 0, kLanes);
          const __mmask16 m = static_cast<__mmask16>(n == kLanes ? 0xFFFFu : (1u << n) - 1u);
          if constexpr (std::is_same_v<T, float>) {
            _mm512_storeu_si512(out + j, _mm512_maskz_loadu_epi32(m, g + ks * ld_g + m0 + j));
          } else {  // rows 2 ks and 2 ks + 1 into pairs
            const Bf16* even = g + 2 * ks * ld_g + m0 + j;
            const Bf16* odd = 2 * ks + 1 < rows ? even + ld_g : nullptr;
            _mm512_storeu_si512(out + j, pair_rows(even, odd, m));
          }
        }
      }
    }
  }
}

// out's rows [m_begin, m_end) (see above; m_begin a multiple of kMaxRows) = the sums over all
// k-steps.
template <typename T>
void weight_gradient_rows(const T* a, const T* b, int64_t ksteps, int64_t G, int64_t cols,
                          float* out, int64_t ld_out, int64_t m_begin, int64_t m_end) {
  constexpr bool kBf16 = std::is_same_v<T, Bf16>;
  const uint32_t* ak = as_ksteps(a);
  const uint32_t* bk = as_ksteps(b);
  for (int64_t ks0 = 0; ks0 < ksteps; ks0 += kGradChunkKsteps) {
    const int64_t kc = std::min(kGradChunkKsteps, ksteps - ks0);
    for (int64_t c0 = 0; c0 < cols; c0 += kGradBlockColumns) {
      const int64_t c1 = std::min(cols, c0 + kGradBlockColumns);
      for (int64_t m = m_begin; m < m_end; m += kMaxRows) {
        const int mb = static_cast<int>(std::min<int64_t>(kMaxRows, G - m));
        const uint32_t* at =
            ak + (m / kGradPanelRows * ksteps + ks0) * kGradPanelRows + m % kGradPanelRows;
        for (int64_t c = c0; c < c1; c += 4 * kLanes) {
          const int nv = static_cast<int>(std::min<int64_t>(4, (c1 - c + kLanes - 1) / kLanes));
          const uint32_t* bt = bk + (c / kGradPanelColumns * ksteps + ks0) * kGradPanelColumns;
          float* o = out + m * ld_out + c;
          if (ks0 > 0) {  // add to the sums of the k-steps before
            tile_product_n<kBf16, true>(mb, nv, at, 1, kc, bt, kGradPanelColumns, kLanes, o,
                                        ld_out, kGradPanelRows);
          } else {
            tile_product_n<kBf16, false>(mb, nv, at, 1, kc, bt, kGradPanelColumns, kLanes, o,
                                         ld_out, kGradPanelRows);
          }
        }
      }
    }
  }
}

#pragma GCC diagnostic pop
#pragma GCC pop_options

}  // namespace fused
}  // namespace fastlstm

#endif
