// The CPU op's fused layer (core/lstm_cpu_fused.h) for float32 tensors on a CPU with AVX-512
// or AVX2 + FMA, and bfloat16 on one with AVX512-BF16: the same contracts as layer_forward and
// layer_backward (layer.h). Each returns std::nullopt where it does not apply (float64, a CPU
// without those instructions, FASTLSTM_CPU_FUSED=0); the op then runs the per-step GEMM loop.
#pragma once

#include <ATen/ATen.h>
#include <optional>
#include <tuple>

#include "layer.h"

namespace fastlstm {

using at::Tensor;

// Whether the fused layer runs tensors of this dtype here.
bool cpu_fused_supports(at::ScalarType dtype);
// ... and is not turned off (FASTLSTM_CPU_FUSED=0, read at each call).
bool cpu_fused_enabled(at::ScalarType dtype);

// Whether its bf16 products can run on AMX tiles here.
bool cpu_fused_amx();

// W [gates * outputs, K] (float32 or bfloat16, where cpu_fused_supports) in the layout of the
// fused products (core pack_forward), K padded with zeros to whole k-steps.
Tensor cpu_fused_pack(const Tensor& w, int64_t outputs, int gates);

std::optional<std::tuple<Tensor, Tensor, Tensor>> cpu_fused_layer_forward(
    const Tensor& xproj, const Tensor& h0, const Tensor& c0, const Tensor& w_hh, bool reverse);

// Inference from the layer input: x [S, B, I], w_ih [4H, I], bias [4H] (b_ih + b_hh) or none;
// x W_ih^T + bias is computed inside each step from packed W_ih, or as one GEMM first
// (projection_first, layer_cpu_fused.cpp). Returns (hs [S, B, H], c_n [B, H] in the
// cell dtype); no gates or cell states saved. Inputs checked by the caller (the op).
std::optional<std::tuple<Tensor, Tensor>> cpu_fused_layer_inference(
    const Tensor& x, const Tensor& h0, const Tensor& c0, const Tensor& w_ih, const Tensor& w_hh,
    const std::optional<Tensor>& bias, bool reverse);

// Inference of a unidirectional stack of L layers, every layer of each step in one pass:
// x [S, B, I], h0, c0 [L, B, H]; w_ih[l] [4H, I or H], w_hh[l] [4H, H], b_ih, b_hh: [4H]
// per layer or both empty; any float dtypes, computed in `dtype` (float32 or bfloat16) with
// the cell state in float. Returns (out [S, B, H], h_n, c_n [L, B, H]), all in `dtype`.
// The packed weights are kept across calls until a weight changes. Inputs checked by the
// caller (the op).
std::optional<std::tuple<Tensor, Tensor, Tensor>> cpu_fused_stack_inference(
    const Tensor& x, const Tensor& h0, const Tensor& c0, at::TensorList w_ih,
    at::TensorList w_hh, at::TensorList b_ih, at::TensorList b_hh, at::ScalarType dtype);

// Training from the layer input: x [S, B, I], w_ih [4H, I], bias [4H] (b_ih + b_hh) or none;
// x W_ih^T + bias inside each step (bf16 on AMX tiles) or as one GEMM first. Returns what
// cpu_fused_layer_forward does, but the gates in x's dtype (bf16: half the bytes). Inputs
// checked by the caller (the op).
std::optional<std::tuple<Tensor, Tensor, Tensor>> cpu_fused_layer_train(
    const Tensor& x, const Tensor& h0, const Tensor& c0, const Tensor& w_ih, const Tensor& w_hh,
    const std::optional<Tensor>& bias, bool reverse);

// Its backward: (grad_x, grad_h0, grad_c0, grad_w_ih, grad_w_hh, grad_bias), the bias's
// gradient summed by the backward kernel as it computes each row.
std::optional<std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>>
cpu_fused_layer_train_backward(const Tensor& grad_hs, const std::optional<Tensor>& grad_cs,
                               const FinalStateGrads& final_grads, const Tensor& x,
                               const Tensor& h0, const Tensor& c0, const Tensor& w_ih,
                               const Tensor& w_hh, const Tensor& hs, const Tensor& cs,
                               const Tensor& gates, bool reverse);

// A first layer whose input is an embedding: ids [S, B] (int64, each in [0, rows)), table
// [rows, 4H] = embedding W_ih^T + bias; step t's row b adds table row ids[t, b] as its input
// projection. Returns what cpu_fused_layer_train does (gates in the table's dtype). Inputs
// checked by the caller.
std::optional<std::tuple<Tensor, Tensor, Tensor>> cpu_fused_layer_embedded(
    const Tensor& ids, const Tensor& table, const Tensor& h0, const Tensor& c0,
    const Tensor& w_hh, bool reverse);

// Its backward: (grad_table [rows, 4H], grad_h0, grad_c0, grad_w_hh), each row's gradient
// added into its id's table row by the backward kernel.
std::optional<std::tuple<Tensor, Tensor, Tensor, Tensor>> cpu_fused_layer_embedded_backward(
    const Tensor& grad_hs, const std::optional<Tensor>& grad_cs,
    const FinalStateGrads& final_grads, const Tensor& ids, int64_t rows, const Tensor& h0,
    const Tensor& c0, const Tensor& w_hh, const Tensor& hs, const Tensor& cs,
    const Tensor& gates, bool reverse);

std::optional<std::tuple<Tensor, Tensor, Tensor, Tensor>> cpu_fused_layer_backward(
    const Tensor& grad_hs, const std::optional<Tensor>& grad_cs, const Tensor& h0,
    const Tensor& c0, const Tensor& w_hh, const Tensor& hs, const Tensor& cs, const Tensor& gates,
    bool reverse);

// A layer over packed sequences (a PackedSequence's data): x [N, I] with step t's rows
// [sum(batch_sizes[:t]), + batch_sizes[t]), batch_sizes [S] int64 non-increasing, its first
// the batch B; h0, c0 [B, H]; at step t only the first batch_sizes[t] sequences are computed
// (forward: a sequence that ended keeps its state; reverse: a sequence starts at its own
// last element from h0, c0). Returns (hs [N, H], h_n [B, H] each sequence's own last
// state, c_n [B, H] float, cs [N, H] float, gates [N, 4H] in x's dtype); cs and gates empty
// without `train`. Inputs checked by the caller (the op).
std::optional<std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor>> cpu_fused_layer_packed(
    const Tensor& x, const Tensor& batch_sizes, const Tensor& h0, const Tensor& c0,
    const Tensor& w_ih, const Tensor& w_hh, const std::optional<Tensor>& bias, bool reverse,
    bool train);

// Its backward: (grad_x, grad_h0, grad_c0, grad_w_ih, grad_w_hh, grad_bias); grad_cs [N, H],
// grad_h_n and grad_c_n ([B, H]), each or none, on the forward's cs, h_n and c_n.
std::optional<std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>>
cpu_fused_layer_packed_backward(const Tensor& grad_hs, const std::optional<Tensor>& grad_cs,
                                const std::optional<Tensor>& grad_h_n,
                                const std::optional<Tensor>& grad_c_n, const Tensor& x,
                                const Tensor& batch_sizes, const Tensor& h0, const Tensor& c0,
                                const Tensor& w_ih, const Tensor& w_hh, const Tensor& hs,
                                const Tensor& cs, const Tensor& gates, bool reverse);

}  // namespace fastlstm
