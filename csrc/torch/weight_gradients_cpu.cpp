// The fused CPU layer's weight gradients (weight_gradients_cpu.h).
#include "weight_gradients_cpu.h"

#include "../core/weight_gradient_cpu.h"

#ifdef FASTLSTM_CPU_FUSED

#include <ATen/Parallel.h>

#include <cstdlib>
#include <cstring>
#include <string>
#include <type_traits>

#include "../core/transpose.h"
#include "check.h"

namespace fastlstm {
namespace {

// src [rows, cols] (2-byte elements, rows `ld` apart) transposed into dst at dst_row, dst_col
// (dst 2-D contiguous): dst[dst_row + c][dst_col + r] = src[r][c]. Blocks of 32 source rows
// to each thread.
void transpose_into(const Tensor& src, int64_t ld, int64_t rows, int64_t cols, Tensor& dst,
                    int64_t dst_row, int64_t dst_col) {
  const auto* from = static_cast<const uint16_t*>(src.data_ptr());
  const int64_t ld_dst = dst.size(1);
  auto* to = static_cast<uint16_t*>(dst.data_ptr()) + dst_row * ld_dst + dst_col;
  at::parallel_for(0, (rows + 31) / 32, 1, [&](int64_t begin, int64_t end) {
    const int64_t r0 = begin * 32, r1 = std::min(rows, end * 32);
    fused::transpose_2byte(from + r0 * ld, ld, r1 - r0, cols, to + r0, ld_dst);
  });
}

// The weight gradients g^T x, [4H, K] each, of the products x W^T that made the
// pre-activations whose gradient is g [N, 4H], one per operand x [N, K]. bf16 on AMX: as one
// GEMM [x_1 | x_2 ..]^T g with the operands transposed first and the product after, by our
// transposes: oneDNN's GEMM reads g^T (a transposed view) at half its rate. Measured on the
// AMX Xeon, interleaved, per product: [2048, 6400] x [6400, 512] 8.2 ms as g^T x, 4.8 ms this
// way; 2 x 256 b64 s100 2.2 -> 1.2 ms; 2 x 128 b50 s50 0.29 -> 0.16 ms (benchmarks/NOTES.md).
// bf16 without AMX (oneDNN's AVX512-BF16 GEMM; measured on a Zen 4, bf16 training step of 2
// layers, this way / g^T x): at hidden <= 256 and >= 1024 rows 0.88-0.98x (hidden 128-256,
// batch 32-64); hidden 256 batch 8 (400 rows) 1.01x; hidden 512 1.03-1.06x: g^T x there.
// fp32: g^T x (the same speed either way on the AMX Xeon; our transpose is of 2-byte
// elements). g: [rows, gates_width].
bool transposed_rule(bool bf16, bool amx, int64_t rows, int64_t gates_width) {
  return bf16 && (amx || (gates_width <= 4 * 256 && rows >= 1024));
}

std::vector<Tensor> gemm_weight_gradients(const Tensor& g, const std::vector<Operand>& operands,
                                          bool transposed) {
  const int64_t N = g.size(0), G = g.size(1);
  std::vector<Tensor> out;
  if (!transposed) {
    for (const Operand& op : operands) out.push_back(at::mm(g.t(), gathered(op, N)));
    return out;
  }
  int64_t width = 0;
  for (const Operand& op : operands) width += op[0].rows.size(1);
  Tensor xt = kernel_output({width, N}, g.options());
  int64_t k0 = 0;
  for (const Operand& op : operands) {
    for (const RowsAt& p : op)
      transpose_into(p.rows, p.rows.stride(0), p.rows.size(0), p.rows.size(1), xt, k0, p.at);
    k0 += op[0].rows.size(1);
  }
  const Tensor wt = at::mm(xt, g);  // [width, 4H]
  k0 = 0;
  for (const Operand& op : operands) {
    const int64_t K = op[0].rows.size(1);
    Tensor w = kernel_output({G, K}, g.options());
    transpose_into(wt.narrow(0, k0, K), G, K, G, w, 0, 0);
    out.push_back(w);
    k0 += K;
  }
  return out;
}

// Our register tile's GEMM (core/weight_gradient_cpu.h): g packed once into panels for every
// operand, each operand packed into its own, the threads on rows of G, the fp32 sums rounded
// to g's dtype at the end. Where: fp32 at hidden >= 128 on CPUs without AMX. Measured on a
// Zen 4, 2 threads: MKL's fp32 GEMM runs these at 123-187 GFLOP/s, the tile at 198-212
// (without the packing); in one process, the fp32 training step of 2 layers (NOTES.md, "issue
// 25, twelfth part"), MKL's time / the tile's: 1.00-1.12 at hidden 128-512 (batch 2-64), 0.91-1.00
// at hidden 32-64 (the packing and three thread launches a product are not repaid). bf16:
// oneDNN's GEMM runs at 290-400 GFLOP/s there and packing pairs of rows costs what the tile
// gains (the step 0.99-1.03x ATen's), so ATen's GEMM stays (FASTLSTM_WEIGHT_GRAD=tile runs
// it). On AMX CPUs: not measured, ATen's.
template <typename T>
std::vector<Tensor> tile_weight_gradients(const Tensor& g, const std::vector<Operand>& operands) {
  const int64_t N = g.size(0), G = g.size(1), ksteps = fused::gradient_ksteps<T>(N);
  const Tensor a = kernel_output({fused::gradient_panels_size<T>(N, G)}, g.options());
  at::parallel_for(0, fused::gradient_panels(G), 1, [&](int64_t begin, int64_t end) {
    fused::pack_gradient_panels<T>(ptr<T>(g), g.stride(0), N, G, ptr<T>(a), begin, end);
  });
  const int64_t tiles = (G + fused::kMaxRows - 1) / fused::kMaxRows;
  std::vector<Tensor> out;
  for (const Operand& op : operands) {
    const int64_t K = op[0].rows.size(1);
    const int64_t ld = (K + fused::kLanes - 1) / fused::kLanes * fused::kLanes;
    const Tensor b = kernel_output({fused::gradient_operand_size<T>(N, K)}, g.options());
    const auto row = [&](int64_t r) {
      const RowsAt* p = &op[0];
      for (const RowsAt& q : op)
        if (r >= q.at && r < q.at + q.rows.size(0)) p = &q;
      return ptr<T>(p->rows) + (r - p->at) * p->rows.stride(0);
    };
    at::parallel_for(0, ksteps, 64, [&](int64_t begin, int64_t end) {
      fused::pack_gradient_operand<T>(row, N, K, ptr<T>(b), begin, end);
    });
    const bool direct = std::is_same_v<T, float> && ld == K;  // the sums are the result
    Tensor w = kernel_output({G, K}, g.options());
    const Tensor sums = direct ? w : kernel_output({G, ld}, g.options().dtype(at::kFloat));
    at::parallel_for(0, tiles, 1, [&](int64_t begin, int64_t end) {
      const int64_t m0 = begin * fused::kMaxRows, m1 = std::min(G, end * fused::kMaxRows);
      fused::weight_gradient_rows<T>(ptr<T>(a), ptr<T>(b), ksteps, G, K, ptr<float>(sums), ld,
                                     m0, m1);
      if constexpr (std::is_same_v<T, Bf16>) {
        for (int64_t m = m0; m < m1; ++m)
          for (int64_t c = 0; c < K; c += fused::kLanes)
            fused::narrow(ptr<float>(sums) + m * ld + c, ptr<T>(w) + m * K + c, K - c);
      } else if (!direct) {
        for (int64_t m = m0; m < m1; ++m)
          std::memcpy(ptr<float>(w) + m * K, ptr<float>(sums) + m * ld, K * sizeof(float));
      }
    });
    out.push_back(w);
  }
  return out;
}

}  // namespace

std::vector<Tensor> cpu_weight_gradients(const Tensor& g, const std::vector<Operand>& operands,
                                         bool amx, bool avx2) {
  const bool bf16 = g.scalar_type() == at::kBFloat16;
  const char* v = std::getenv("FASTLSTM_WEIGHT_GRAD");
  const std::string how = v ? v : "";
  FASTLSTM_CHECK(how.empty() || how == "tile" || how == "gemm" || how == "view" ||
                     how == "transposed",
                 "fastlstm: FASTLSTM_WEIGHT_GRAD must be tile, gemm, view or transposed, not '",
                 how, "'");
  const bool tile_runs = (bf16 ? fused::cpu_supports<Bf16>() : !avx2) && g.stride(1) == 1;
  const bool tile_rule = !bf16 && !fused::amx_usable() && g.size(1) >= 4 * 128;
  if (tile_runs && (how == "tile" || (how.empty() && tile_rule)))
    return bf16 ? tile_weight_gradients<Bf16>(g, operands)
                : tile_weight_gradients<float>(g, operands);
  const bool transposed = how == "transposed" ? bf16
                          : how == "view"     ? false
                                              : transposed_rule(bf16, amx, g.size(0), g.size(1));
  return gemm_weight_gradients(g, operands, transposed);
}

}  // namespace fastlstm

#endif  // FASTLSTM_CPU_FUSED
