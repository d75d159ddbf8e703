// The device-agnostic layer loop: per time step one BLAS GEMM through ATen (so it runs on
// whatever device the tensors are on) plus the device's fused pointwise kernel, which the
// caller supplies as a StepKernels. CPU and CUDA registrations share this loop.
//
// Tensors (T = storage dtype, Acc = float for float/half/bfloat16 and double for double):
//   xproj [S, B, 4H] T    x W_ih^T + b_ih + b_hh for every step, rows [i | f | g | o]
//   h0, c0 [B, H]   T
//   w_hh  [4H, H]   T
// Forward returns, all for every step t in input order (also when reverse):
//   hs    [S, B, H]  T    h_t (the layer output)
//   cs    [S, B, H]  Acc  c_t (saved for backward; cs[last step] is c_n)
//   gates [S, B, 4H] Acc  activated i, f, g, o (saved for backward)
// `reverse` runs the recurrence from t = S-1 down to 0 (a bidirectional layer's
// backward direction); the final state is then at t = 0.
#pragma once

#include <ATen/ATen.h>
#include <optional>
#include <tuple>
#include <vector>

namespace fastlstm {

using at::Tensor;

struct StepKernels {
  // One step's pointwise forward: gates, c and h from xproj_t + rec and c_prev.
  void (*forward)(const Tensor& xproj, const Tensor& rec, const Tensor& c_prev, const Tensor& gates,
                  const Tensor& c, const Tensor& h);
  // One step's pointwise backward (see StepBackwardArgs in core/lstm_step.h).
  void (*backward)(const Tensor& gates, const Tensor& c_prev, const Tensor& c, const Tensor& grad_h,
                   const Tensor& grad_h_rec, const std::optional<Tensor>& grad_c,
                   const Tensor& grad_c_carry, const Tensor& grad_pre);
};

// The checks every layer op makes of its inputs: shapes (xproj, or gates, is [S, B, 4H]),
// devices, and h0, c0, w_hh in the storage dtype `dtype`.
void check_layer_inputs(const Tensor& xproj, at::ScalarType dtype, const Tensor& h0,
                        const Tensor& c0, const Tensor& w_hh);
// The same checks of h0, c0 and w_hh for a batch of B rows on `device`.
void check_state_inputs(int64_t B, at::ScalarType dtype, const c10::Device& device,
                        const Tensor& h0, const Tensor& c0, const Tensor& w_hh);
// An output tensor the kernels must fill: NaN-filled under FASTLSTM_POISON_OUTPUTS=1.
Tensor kernel_output(at::IntArrayRef sizes, const at::TensorOptions& opts);
// A tensor's data as the kernels' element type (torch's BFloat16 has Bf16's bits).
template <typename T>
T* ptr(const Tensor& t) {
  return reinterpret_cast<T*>(t.data_ptr());
}
// The cell state's dtype for a storage dtype: float, or double for double.
at::ScalarType cell_dtype(at::ScalarType storage);

std::tuple<Tensor, Tensor, Tensor> layer_forward(const Tensor& xproj, const Tensor& h0,
                                                 const Tensor& c0, const Tensor& w_hh, bool reverse,
                                                 const StepKernels& kernels);

// The gradients of a layer's final state h_n, c_n ([B, H] each, either absent): a backward
// starts its carried gradients (the recurrent dL/dh, dL/dc) from them at the last time step,
// so a loss on h_n or c_n costs no [S, B, H] gradient that is zero but at one step.
struct FinalStateGrads {
  std::optional<Tensor> h_n, c_n;
};
// A carried gradient's start, [B, H] with `opts`: the final state's gradient `g` if given
// (checked to be [B, H]), else zeros.
Tensor carried_gradient(const std::optional<Tensor>& g, int64_t B, int64_t H,
                        const at::TensorOptions& opts, const char* name);

// Returns (grad_xproj [S,B,4H], grad_h0 [B,H], grad_c0 [B,H], grad_w_hh [4H,H]).
// grad_cs may be absent (no use of any c_t outside the layer).
std::tuple<Tensor, Tensor, Tensor, Tensor> layer_backward(
    const Tensor& grad_hs, const std::optional<Tensor>& grad_cs, const Tensor& h0,
    const Tensor& c0, const Tensor& w_hh, const Tensor& hs, const Tensor& cs, const Tensor& gates,
    bool reverse, const StepKernels& kernels, const FinalStateGrads& final_grads = {});

// Rows of an operand of a layer's products: `rows` [n, K] (rows contiguous) are its rows
// [at, at + n).
struct RowsAt {
  Tensor rows;
  int64_t at;
};
using Operand = std::vector<RowsAt>;
// h_{t-1} for every row of a dense [S, B, H] layer in time order: h0 and hs shifted a step.
Operand h_prev_rows(const Tensor& h0, const Tensor& hs, bool reverse);
// The operand as one [N, K] tensor: its only piece where that is all of it, else its pieces
// copied into a kept buffer (at::cat's fresh one cost 0.6 ms of page faults at 2 x 384,
// batch 64, 100 steps).
Tensor gathered(const Operand& op, int64_t N);

// grad_w_hh [4H, H] = sum over t of grad_xproj_t^T h_{t-1}, as one GEMM over all steps.
Tensor weight_gradient(const Tensor& grad_xproj, const Tensor& h0, const Tensor& hs, bool reverse);

// Whether the CUDA registrations replay their layer loops as CUDA graphs (cuda_graphs.h).
// On by default; FASTLSTM_CUDA_GRAPHS=0 in the environment turns the default off.
bool cuda_graphs_enabled();
void set_cuda_graphs_enabled(bool enabled);

// One step: xproj [B,4H], h [B,H], c [B,H] -> (h_new T, c_new Acc, gates Acc).
std::tuple<Tensor, Tensor, Tensor> step_forward(const Tensor& xproj, const Tensor& h,
                                                const Tensor& c, const Tensor& w_hh,
                                                const StepKernels& kernels);

}  // namespace fastlstm
