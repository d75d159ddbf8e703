// The fused CPU layer's weight gradients: for g [N, G], the gradient of pre-activations made
// by products x W^T, and each operand x [N, K] (its rows in pieces: layer.h's Operand), the
// gradient of W, g^T x [G, K] in g's dtype (float32 or bfloat16), one GEMM over all steps.
#pragma once

#include <ATen/ATen.h>
#include <vector>

#include "layer.h"

namespace fastlstm {

// amx: the layer's bf16 products run on AMX tiles; avx2: its fp32 kernels are the AVX2 build.
// fp32 at hidden >= 128 on our register tile (core/weight_gradient_cpu.h) on CPUs without
// AMX, in the AVX-512 build; else ATen's GEMM (oneDNN, MKL), for bf16 on operands our
// transposes wrote or on g^T as a view. FASTLSTM_WEIGHT_GRAD=tile|gemm|view|transposed
// overrides (read at each call: benchmarks and tests; tile only where the AVX-512 build runs
// g's dtype; gemm: ATen's, by its rule).
std::vector<at::Tensor> cpu_weight_gradients(const at::Tensor& g,
                                             const std::vector<Operand>& operands, bool amx,
                                             bool avx2);

}  // namespace fastlstm
