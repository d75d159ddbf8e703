// The persistent stack op (lstm_stack_persistent, p4): its checks, its outputs and its
// framework-free arguments, shared by the CPU registration (the kernel's per-block code run
// on the host, run_mma_stack_on_host) and the CUDA one (the cooperative kernel).
//
// Tensors (T = storage dtype, Acc = its cell dtype), L layers, one direction, forward time:
//   xproj [S, B, 4H]   T   layer 0's x W_ih^T + b_ih + b_hh
//   h0, c0 [L, B, H]   T
//   w_ih  L-1 x [4H, H] T  the layers above layer 0 (their input is the layer below's h)
//   bias  L-1 x [4H]   T   their b_ih + b_hh, or an empty list (no bias)
//   w_hh  L x [4H, H]  T
// Returns hs [L, S, B, H] T, cs [L, S, B, H] Acc, gates [L, S, B, 4H] Acc: layer l's slices
// are what lstm_layer returns for that layer, so lstm_layer_backward trains through them.
#pragma once

#include <ATen/ATen.h>
#include <vector>

#include "../core/lstm_persistent.h"
#include "layer.h"

namespace fastlstm {

struct StackTensors {
  Tensor xproj, h0, c0, c0_cell;  // contiguous; c0_cell: c0 in Acc
  std::vector<Tensor> w_ih, bias, w_hh;
  Tensor hs, cs, gates;           // the outputs (kernel_output: poisoned under the tests)
};

// Checks the inputs (clear errors for every shape, dtype, device or count mismatch) and
// allocates the outputs.
StackTensors prepare_stack(const Tensor& xproj, const Tensor& h0, const Tensor& c0,
                           at::TensorList w_ih, at::TensorList bias, at::TensorList w_hh);

// The environment variable `name` as an integer in [lo, hi] (`fallback` when unset or empty);
// an error naming the variable otherwise.
int env_int(const char* name, int fallback, int lo, int hi);

// The layers one after another through lstm_layer's step loop (`kernels`), the input
// projections of the layers above as GEMMs: what the CUDA op falls back to. Fills st's outputs.
void stack_by_layers(StackTensors& st, const StepKernels& kernels);

// The kernel's arguments: T is the element type it is built for (CUDA's __half and
// __nv_bfloat16 for the half types), Acc the cell dtype's.
template <typename T, typename Acc>
PersistentStackArgs<T, Acc> stack_args(const StackTensors& st) {
  auto p = [](const Tensor& t) { return reinterpret_cast<T*>(t.data_ptr()); };
  auto pa = [](const Tensor& t) { return reinterpret_cast<Acc*>(t.data_ptr()); };
  PersistentStackArgs<T, Acc> a{};
  a.layers = static_cast<int>(st.w_hh.size());
  a.steps = st.xproj.size(0), a.batch = st.xproj.size(1), a.hidden = st.w_hh[0].size(1);
  a.reverse = false;  // the one-layer op sets it for a backward direction
  for (int l = 0; l < a.layers; ++l) {
    StackLayer<T, Acc>& L = a.layer[l];
    L.xproj = l == 0 ? p(st.xproj) : nullptr;
    L.w_ih = l == 0 ? nullptr : p(st.w_ih[l - 1]);
    L.bias = l == 0 || st.bias.empty() ? nullptr : p(st.bias[l - 1]);
    L.h0 = p(st.h0[l]), L.c0 = pa(st.c0_cell[l]), L.w_hh = p(st.w_hh[l]);
    L.hs = p(st.hs[l]), L.cs = pa(st.cs[l]), L.gates = pa(st.gates[l]);
    L.inputs = l == 0 ? 0 : a.hidden;
  }
  return a;
}

}  // namespace fastlstm
