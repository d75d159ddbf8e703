#include "stack.h"

#include <c10/core/GradMode.h>

#include <cstdlib>

#include "check.h"

namespace fastlstm {

StackTensors prepare_stack(const Tensor& xproj, const Tensor& h0, const Tensor& c0,
                           at::TensorList w_ih, at::TensorList bias, at::TensorList w_hh) {
  const int64_t L = static_cast<int64_t>(w_hh.size());
  FASTLSTM_CHECK(L >= 1 && L <= kMaxStackLayers, "fastlstm: the persistent stack takes 1 to ",
                 int64_t(kMaxStackLayers), " layers, got ", L);
  FASTLSTM_CHECK(int64_t(w_ih.size()) == L - 1, "fastlstm: the stack needs w_ih for each of the ",
                 L - 1, " layers above layer 0, got ", int64_t(w_ih.size()));
  FASTLSTM_CHECK(bias.empty() || int64_t(bias.size()) == L - 1,
                 "fastlstm: bias must be empty or one per layer above layer 0 (", L - 1,
                 "), got ", int64_t(bias.size()));
  for (const Tensor* t : {&h0, &c0})
    FASTLSTM_CHECK(t->dim() == 3 && t->size(0) == L,
                   "fastlstm: h0 and c0 must be [layers = ", L, ", batch, hidden], got ",
                   t->sizes());
  const auto dtype = xproj.scalar_type();
  for (int64_t l = 0; l < L; ++l) check_layer_inputs(xproj, dtype, h0[l], c0[l], w_hh[l]);
  const int64_t S = xproj.size(0), B = xproj.size(1), H = w_hh[0].size(1);
  for (int64_t l = 0; l < L; ++l)
    FASTLSTM_CHECK(w_hh[l].size(1) == H, "fastlstm: every layer of the stack needs hidden ", H,
                   ", layer ", l, " has ", w_hh[l].size(1));
  for (const Tensor& w : w_ih)
    FASTLSTM_CHECK(w.dim() == 2 && w.size(0) == 4 * H && w.size(1) == H,
                   "fastlstm: w_ih of a layer above layer 0 must be [4*hidden, hidden] = [",
                   4 * H, ", ", H, "], got ", w.sizes());
  for (const Tensor& b : bias)
    FASTLSTM_CHECK(b.dim() == 1 && b.size(0) == 4 * H, "fastlstm: bias must be [4*hidden] = [",
                   4 * H, "], got ", b.sizes());
  for (at::TensorList list : {w_ih, bias})
    for (const Tensor& t : list) {
      FASTLSTM_CHECK(t.scalar_type() == dtype, "fastlstm: dtype mismatch: ", t.scalar_type(),
                     " vs ", dtype);
      FASTLSTM_CHECK(t.device() == xproj.device(), "fastlstm: device mismatch: ", t.device(),
                     " vs xproj's ", xproj.device());
    }
  StackTensors st;
  st.xproj = xproj.contiguous(), st.h0 = h0.contiguous(), st.c0 = c0.contiguous();
  st.c0_cell = c0.to(cell_dtype(dtype)).contiguous();
  for (const Tensor& w : w_ih) st.w_ih.push_back(w.contiguous());
  for (const Tensor& b : bias) st.bias.push_back(b.contiguous());
  for (const Tensor& w : w_hh) st.w_hh.push_back(w.contiguous());
  const auto opts = xproj.options(), cell = opts.dtype(cell_dtype(dtype));
  st.hs = kernel_output({L, S, B, H}, opts);
  st.cs = kernel_output({L, S, B, H}, cell);
  st.gates = kernel_output({L, S, B, 4 * H}, cell);
  return st;
}

int env_int(const char* name, int fallback, int lo, int hi) {
  const char* v = std::getenv(name);
  const int value = v == nullptr || v[0] == '\0' ? fallback : std::atoi(v);
  FASTLSTM_CHECK(value >= lo && value <= hi, "fastlstm: ", name, " must be ", int64_t(lo),
                 " to ", int64_t(hi), ", got '", v, "'");
  return value;
}

void stack_by_layers(StackTensors& st, const StepKernels& kernels) {
  const c10::NoGradGuard no_grad;
  const int64_t L = static_cast<int64_t>(st.w_hh.size());
  const int64_t S = st.xproj.size(0), B = st.xproj.size(1), H = st.w_hh[0].size(1);
  for (int64_t l = 0; l < L; ++l) {
    Tensor xproj = st.xproj;
    if (l > 0) {
      const Tensor below = st.hs[l - 1].view({S * B, H});
      xproj = (st.bias.empty() ? at::mm(below, st.w_ih[l - 1].t())
                               : at::addmm(st.bias[l - 1], below, st.w_ih[l - 1].t()))
                  .view({S, B, 4 * H});
    }
    const auto [hs, cs, gates] =
        layer_forward(xproj, st.h0[l], st.c0[l], st.w_hh[l], false, kernels);
    st.hs[l].copy_(hs), st.cs[l].copy_(cs), st.gates[l].copy_(gates);
  }
}

}  // namespace fastlstm
