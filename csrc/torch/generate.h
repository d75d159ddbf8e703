// The generate op: a char-rnn (embedding -> LSTM layers -> decoder) continues N samples by
// `steps` ids in one call. CPU: core/generate_cpu.h; CUDA: the step kernel and cuBLAS per
// layer plus the sampling kernel (core/generate_cuda.cu), a CUDA graph per chunk.
//   logits [N, V] float32: the logits the first id is drawn from
//   h, c   [L, N, H] float32: the LSTM state after those logits
//   embed [V, E]; w_ih [4H, E] then [4H, H]; w_hh [4H, H]; b_ih, b_hh [4H] (both lists empty
//   without biases); head_w [V, H]; head_b [V] or none
//   forced [N, steps] int64 or none: ids fed instead of the drawn ones (teacher forcing)
//   bf16: weights and h in bfloat16 for the products (fp32 accumulation and cell state);
//   CPU only
// Returns (ids [N, steps] int64, logits [N, V], h, c), the state after the last id.
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <tuple>

#include "layer.h"

namespace fastlstm {

using at::Tensor;

// Whether generate runs here (x86-64 with AVX-512; with AVX512-BF16 for bf16).
bool generate_cpu_supports(bool bf16);

// The checks both implementations make: shapes, float32 tensors on one device, the
// sampling options and forced ids in range.
void check_generate_inputs(const Tensor& logits, const Tensor& h, const Tensor& c,
                           const Tensor& embed, at::TensorList w_ih, at::TensorList w_hh,
                           at::TensorList b_ih, at::TensorList b_hh, const Tensor& head_w,
                           const std::optional<Tensor>& head_b, int64_t steps, double temperature,
                           std::optional<int64_t> top_k, double top_p,
                           const std::optional<Tensor>& forced);

std::tuple<Tensor, Tensor, Tensor, Tensor> generate_cpu(
    const Tensor& logits, const Tensor& h, const Tensor& c, const Tensor& embed,
    at::TensorList w_ih, at::TensorList w_hh, at::TensorList b_ih, at::TensorList b_hh,
    const Tensor& head_w, const std::optional<Tensor>& head_b, int64_t steps, double temperature,
    std::optional<int64_t> top_k, double top_p, int64_t seed, int64_t offset,
    const std::optional<Tensor>& forced, bool bf16);

// Both implementations' shared pieces: layer l's b_ih + b_hh [4H] (zeros without biases),
// and the first layer's input projection for every id, embed W_ih0^T + bias0 [V, 4H].
Tensor layer_bias(at::TensorList b_ih, at::TensorList b_hh, int64_t layer, int64_t hidden,
                  const at::TensorOptions& opts);
Tensor input_table(const Tensor& embed, const Tensor& w_ih0, const Tensor& bias0);

#ifdef FASTLSTM_WITH_CUDA
// The CUDA step kernels (ops_cuda.cpp), which generate_cuda runs each layer's step on.
const StepKernels& cuda_step_kernels();

std::tuple<Tensor, Tensor, Tensor, Tensor> generate_cuda(
    const Tensor& logits, const Tensor& h, const Tensor& c, const Tensor& embed,
    at::TensorList w_ih, at::TensorList w_hh, at::TensorList b_ih, at::TensorList b_hh,
    const Tensor& head_w, const std::optional<Tensor>& head_b, int64_t steps, double temperature,
    std::optional<int64_t> top_k, double top_p, int64_t seed, int64_t offset,
    const std::optional<Tensor>& forced, bool bf16);
#endif

}  // namespace fastlstm
