// The op schema (one TORCH_LIBRARY), the CPU implementation, and the Python module stub.
// fastlstm/ops.py adds fake (meta) implementations and autograd on top of these ops.
#include <Python.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "../core/dropout.h"
#include "../core/lstm_persistent_mma.h"
#include "../core/lstm_step.h"
#include "check.h"
#include "generate.h"
#include "layer.h"
#include "layer_cpu_fused.h"
#include "stack.h"
#include "streaming_call.h"
#include "weight_cache.h"

#ifdef FASTLSTM_WITH_CUDA
#include "../core/lstm_step_cuda.h"
#endif

namespace fastlstm {
namespace {

// Below this many elements a step's pointwise work runs on one thread: splitting it
// costs more than it saves. parallel_for splits batch rows; this is its grain in rows.
constexpr int64_t kCpuGrainElements = 2048;
int64_t rows_grain(int64_t hidden) { return std::max<int64_t>(1, kCpuGrainElements / hidden); }

// The row loops, compiled for AVX-512 and AVX2 (+FMA) and for the baseline on x86-64 GCC,
// picked when the library loads: the vectorised gate math runs ~2x faster per step of
// that list (measured at batch 50, hidden 128). GCC < 12 cannot name the x86-64-vN
// levels (and an "arch=haswell" clone would be chosen only on Haswell chips): plain avx2.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 12
#define FASTLSTM_CPU_CLONES \
  __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#elif defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define FASTLSTM_CPU_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define FASTLSTM_CPU_CLONES
#endif

#define FASTLSTM_CPU_ROWS(T, Acc)                                                          \
  FASTLSTM_CPU_CLONES void forward_rows(const StepForwardArgs<T, Acc, T>& a, int64_t b,      \
                                        int64_t e) {                                         \
    step_forward_rows(a, b, e);                                                              \
  }                                                                                          \
  FASTLSTM_CPU_CLONES void backward_rows(const StepBackwardArgs<T, Acc, T>& a, int64_t b,    \
                                         int64_t e) {                                        \
    step_backward_rows(a, b, e);                                                             \
  }
FASTLSTM_CPU_ROWS(float, float)
FASTLSTM_CPU_ROWS(double, double)
FASTLSTM_CPU_ROWS(Bf16, float)
#undef FASTLSTM_CPU_ROWS

#define FASTLSTM_CPU_DROPOUT(T, Acc)                                                        \
  FASTLSTM_CPU_CLONES void dropout_cpu_range(const T* x, T* out, int64_t b, int64_t e,       \
                                             uint64_t seed, uint32_t threshold, Acc scale) { \
    dropout_range(x, out, b, e, seed, threshold, scale);                                    \
  }
FASTLSTM_CPU_DROPOUT(float, float)
FASTLSTM_CPU_DROPOUT(double, double)
FASTLSTM_CPU_DROPOUT(Bf16, float)
#undef FASTLSTM_CPU_DROPOUT

// The storage type's kernel type (torch's BFloat16 -> the header's Bf16, same bits), and the
// arithmetic type: float for bfloat16, else the type itself.
template <typename scalar_t>
struct CpuTypes {
  using T = scalar_t;
  using Acc = scalar_t;
};
template <>
struct CpuTypes<at::BFloat16> {
  using T = Bf16;
  using Acc = float;
};

template <typename T>
const T* cptr(const std::optional<Tensor>& t) {
  return t ? reinterpret_cast<const T*>(t->data_ptr()) : nullptr;
}
// Storage-dtype tensors (xproj, h, rec, grad_h, grad_pre) hold T; cell states and gates
// hold Acc (layer.cpp allocates them so). rec and grad_h_rec: the storage dtype on the CPU.
void cpu_step_forward(const Tensor& xproj, const Tensor& rec, const Tensor& c_prev,
                      const Tensor& gates, const Tensor& c, const Tensor& h) {
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, xproj.scalar_type(), "fastlstm_cpu_step_forward",
                                 [&] {
    using T = typename CpuTypes<scalar_t>::T;
    using Acc = typename CpuTypes<scalar_t>::Acc;
    const StepForwardArgs<T, Acc, T> args{ptr<T>(xproj), ptr<T>(rec), ptr<Acc>(c_prev),
                                          ptr<Acc>(gates), ptr<Acc>(c), ptr<T>(h),
                                          h.size(0), h.size(1)};
    at::parallel_for(0, args.batch, rows_grain(args.hidden),
                     [&](int64_t begin, int64_t end) { forward_rows(args, begin, end); });
  });
}

void cpu_step_backward(const Tensor& gates, const Tensor& c_prev, const Tensor& c,
                       const Tensor& grad_h, const Tensor& grad_h_rec,
                       const std::optional<Tensor>& grad_c, const Tensor& grad_c_carry,
                       const Tensor& grad_pre) {
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, grad_h.scalar_type(),
                                 "fastlstm_cpu_step_backward", [&] {
    using T = typename CpuTypes<scalar_t>::T;
    using Acc = typename CpuTypes<scalar_t>::Acc;
    const StepBackwardArgs<T, Acc, T> args{
        ptr<Acc>(gates),      ptr<Acc>(c_prev),    ptr<Acc>(c),
        ptr<T>(grad_h),       ptr<T>(grad_h_rec),  cptr<T>(grad_c),
        ptr<Acc>(grad_c_carry), ptr<T>(grad_pre),  grad_h.size(0),
        grad_h.size(1)};
    at::parallel_for(0, args.batch, rows_grain(args.hidden),
                     [&](int64_t begin, int64_t end) { backward_rows(args, begin, end); });
  });
}

const StepKernels kCpuKernels{cpu_step_forward, cpu_step_backward};

void check_cpu(const Tensor& t) {
  const auto dtype = t.scalar_type();
  FASTLSTM_CHECK(dtype == at::kFloat || dtype == at::kDouble || dtype == at::kBFloat16,
                 "fastlstm CPU op: float32, float64 or bfloat16 only, got ", dtype);
}

std::tuple<Tensor, Tensor, Tensor> layer_cpu(const Tensor& xproj, const Tensor& h0,
                                             const Tensor& c0, const Tensor& w_hh, bool reverse) {
  check_cpu(xproj);
  if (auto fused = cpu_fused_layer_forward(xproj, h0, c0, w_hh, reverse)) return *fused;
  return layer_forward(xproj, h0, c0, w_hh, reverse, kCpuKernels);
}

// The checks of the ops that take the layer input x [S, B, I] and w_ih [4H, I]; `batch`: the
// states' rows where they are not x's (packed input).
void check_input_layer(const Tensor& x, const Tensor& h0, const Tensor& c0, const Tensor& w_ih,
                       const Tensor& w_hh, const std::optional<Tensor>& bias,
                       int64_t batch = -1) {
  check_cpu(x);
  FASTLSTM_CHECK(x.dim() == 3 && w_ih.dim() == 2 && w_ih.size(1) == x.size(2) &&
                     w_ih.size(0) == w_hh.size(0),
                 "fastlstm: x must be [seq, batch, input] and w_ih [4*hidden, input], got ",
                 x.sizes(), " and ", w_ih.sizes());
  const bool has_bias = bias.has_value() && bias->defined();
  FASTLSTM_CHECK(!has_bias || (bias->dim() == 1 && bias->size(0) == w_ih.size(0)),
                 "fastlstm: bias must be [4*hidden]");
  for (const Tensor* t : {&w_ih, has_bias ? &*bias : &w_ih}) {
    FASTLSTM_CHECK(t->scalar_type() == x.scalar_type(), "fastlstm: dtype mismatch: ",
                   t->scalar_type(), " vs ", x.scalar_type());
    FASTLSTM_CHECK(t->device() == x.device(), "fastlstm: device mismatch: ", t->device(),
                   " vs the input's ", x.device());
  }
  FASTLSTM_CHECK(x.size(0) > 0, "fastlstm: the sequence must have at least one step");
  check_state_inputs(batch < 0 ? x.size(1) : batch, x.scalar_type(), x.device(), h0, c0, w_hh);
}

std::tuple<Tensor, Tensor> layer_inference_cpu(const Tensor& x, const Tensor& h0,
                                               const Tensor& c0, const Tensor& w_ih,
                                               const Tensor& w_hh,
                                               const std::optional<Tensor>& bias, bool reverse) {
  check_input_layer(x, h0, c0, w_ih, w_hh, bias);
  if (auto fused = cpu_fused_layer_inference(x, h0, c0, w_ih, w_hh, bias, reverse)) return *fused;
  auto [hs, cs, gates] = layer_forward(at::linear(x, w_ih, bias), h0, c0, w_hh, reverse,
                                       kCpuKernels);
  return {hs, cs[reverse ? 0 : cs.size(0) - 1].clone()};
}

// A layer's outputs with its final state as outputs of their own (copies of the last time
// step's rows of hs and cs): a loss on them then reaches the backward as [B, H] gradients.
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> with_final_state(
    const std::tuple<Tensor, Tensor, Tensor>& out, bool reverse) {
  const auto& [hs, cs, gates] = out;
  const int64_t last = reverse ? 0 : hs.size(0) - 1;
  return {hs, cs, gates, hs.select(0, last).clone(), cs.select(0, last).clone()};
}

FinalStateGrads final_state_grads(const std::optional<Tensor>& h_n,
                                  const std::optional<Tensor>& c_n) {
  FinalStateGrads out;
  if (h_n.has_value() && h_n->defined()) out.h_n = *h_n;
  if (c_n.has_value() && c_n->defined()) out.c_n = *c_n;
  return out;
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> layer_train_cpu(
    const Tensor& x, const Tensor& h0, const Tensor& c0, const Tensor& w_ih, const Tensor& w_hh,
    const std::optional<Tensor>& bias, bool reverse) {
  check_input_layer(x, h0, c0, w_ih, w_hh, bias);
  if (auto fused = cpu_fused_layer_train(x, h0, c0, w_ih, w_hh, bias, reverse))
    return with_final_state(*fused, reverse);
  auto [hs, cs, gates] = layer_forward(at::linear(x, w_ih, bias), h0, c0, w_hh, reverse,
                                       kCpuKernels);
  // the op's gates: in x's dtype
  return with_final_state({hs, cs, gates.to(x.scalar_type())}, reverse);
}

// The packed layer's inputs: x [N, I] (a PackedSequence's data), batch_sizes [S] (int64 on
// the CPU, each in [1, B], never growing, their sum N; B = batch_sizes[0] = h0's rows).
void check_packed(const Tensor& x, const Tensor& batch_sizes, const Tensor& h0, const Tensor& c0,
                  const Tensor& w_ih, const Tensor& w_hh, const std::optional<Tensor>& bias) {
  FASTLSTM_CHECK(x.dim() == 2, "fastlstm packed layer: x must be [rows, input] (packed data), "
                 "got ", x.sizes());
  check_input_layer(x.unsqueeze(0), h0, c0, w_ih, w_hh, bias, h0.size(0));  // x: N rows
  FASTLSTM_CHECK(batch_sizes.dim() == 1 && batch_sizes.scalar_type() == at::kLong &&
                     batch_sizes.device().is_cpu() && batch_sizes.numel() > 0,
                 "fastlstm packed layer: batch_sizes must be a non-empty 1-D int64 CPU tensor");
  const Tensor sizes = batch_sizes.contiguous();
  const int64_t* n = sizes.data_ptr<int64_t>();
  int64_t total = 0;
  for (int64_t t = 0; t < sizes.numel(); ++t) {
    FASTLSTM_CHECK(n[t] >= 1 && n[t] <= (t == 0 ? n[0] : n[t - 1]),
                   "fastlstm packed layer: batch_sizes must be >= 1 and never grow, got ",
                   n[t], " at step ", t);
    total += n[t];
  }
  FASTLSTM_CHECK(n[0] == h0.size(0) && total == x.size(0),
                 "fastlstm packed layer: batch_sizes must start at the batch (", h0.size(0),
                 ") and sum to x's rows (", x.size(0), "), got ", n[0], " and ", total);
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> layer_packed_cpu(
    const Tensor& x, const Tensor& batch_sizes, const Tensor& h0, const Tensor& c0,
    const Tensor& w_ih, const Tensor& w_hh, const std::optional<Tensor>& bias, bool reverse,
    bool train) {
  check_packed(x, batch_sizes, h0, c0, w_ih, w_hh, bias);
  auto fused = cpu_fused_layer_packed(x, batch_sizes, h0, c0, w_ih, w_hh, bias, reverse, train);
  FASTLSTM_CHECK(fused, "fastlstm packed layer: runs on the fused CPU layer only (float32 or "
                 "bfloat16 on x86-64 with AVX-512, bfloat16 with AVX512-BF16; not with "
                 "FASTLSTM_CPU_FUSED=0), got ", x.scalar_type());
  return *fused;
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> layer_packed_backward_cpu(
    const Tensor& grad_hs, const std::optional<Tensor>& grad_cs, const std::optional<Tensor>& grad_h_n,
    const std::optional<Tensor>& grad_c_n, const Tensor& x, const Tensor& batch_sizes,
    const Tensor& h0, const Tensor& c0, const Tensor& w_ih, const Tensor& w_hh, const Tensor& hs,
    const Tensor& cs, const Tensor& gates, bool reverse) {
  check_packed(x, batch_sizes, h0, c0, w_ih, w_hh, std::nullopt);
  for (const auto* g : {&grad_h_n, &grad_c_n})
    FASTLSTM_CHECK(!g->has_value() || !(*g)->defined() || (*g)->sizes() == h0.sizes(),
                   "fastlstm packed backward: grad_h_n and grad_c_n must be shaped like h0");
  auto fused = cpu_fused_layer_packed_backward(grad_hs, grad_cs, grad_h_n, grad_c_n, x, batch_sizes, h0,
                                               c0, w_ih, w_hh, hs, cs, gates, reverse);
  FASTLSTM_CHECK(fused, "fastlstm packed layer: runs on the fused CPU layer only");
  return *fused;
}

// ids [S, B] int64 in [0, rows), table [rows, 4H] in the layer's dtype.
void check_embedded(const Tensor& ids, const Tensor& table, const Tensor& h0, const Tensor& c0,
                    const Tensor& w_hh) {
  check_cpu(table);
  FASTLSTM_CHECK(ids.dim() == 2 && ids.scalar_type() == at::kLong,
                 "fastlstm: ids must be [seq, batch] int64, got ", ids.sizes(), " ",
                 ids.scalar_type());
  FASTLSTM_CHECK(ids.size(0) > 0, "fastlstm: the sequence must have at least one step");
  FASTLSTM_CHECK(table.dim() == 2 && table.size(1) == w_hh.size(0) && table.size(0) > 0,
                 "fastlstm: table must be [rows, 4*hidden], got ", table.sizes());
  FASTLSTM_CHECK(ids.device() == table.device(), "fastlstm: device mismatch: ", ids.device(),
                 " vs ", table.device());
  if (ids.numel() > 0) {
    const auto [lo, hi] = at::aminmax(ids);
    FASTLSTM_CHECK(lo.item<int64_t>() >= 0 && hi.item<int64_t>() < table.size(0),
                   "fastlstm: ids must lie in [0, ", table.size(0), ")");
  }
  check_state_inputs(ids.size(1), table.scalar_type(), table.device(), h0, c0, w_hh);
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> layer_embedded_cpu(
    const Tensor& ids, const Tensor& table, const Tensor& h0, const Tensor& c0,
    const Tensor& w_hh, bool reverse) {
  check_embedded(ids, table, h0, c0, w_hh);
  if (auto fused = cpu_fused_layer_embedded(ids, table, h0, c0, w_hh, reverse))
    return with_final_state(*fused, reverse);
  const Tensor xproj = table.index_select(0, ids.flatten()).view({ids.size(0), ids.size(1), -1});
  auto [hs, cs, gates] = layer_forward(xproj, h0, c0, w_hh, reverse, kCpuKernels);
  // the op's gates: in the table's dtype
  return with_final_state({hs, cs, gates.to(table.scalar_type())}, reverse);
}

std::tuple<Tensor, Tensor, Tensor, Tensor> layer_embedded_backward_cpu(
    const Tensor& grad_hs, const std::optional<Tensor>& grad_cs,
    const std::optional<Tensor>& grad_h_n, const std::optional<Tensor>& grad_c_n,
    const Tensor& ids, const Tensor& table, const Tensor& h0, const Tensor& c0,
    const Tensor& w_hh, const Tensor& hs, const Tensor& cs, const Tensor& gates, bool reverse) {
  check_embedded(ids, table, h0, c0, w_hh);
  const FinalStateGrads final_grads = final_state_grads(grad_h_n, grad_c_n);
  if (auto fused = cpu_fused_layer_embedded_backward(grad_hs, grad_cs, final_grads, ids,
                                                     table.size(0), h0, c0, w_hh, hs, cs, gates,
                                                     reverse))
    return *fused;
  auto [grad_xproj, grad_h0, grad_c0, grad_w_hh] =
      layer_backward(grad_hs, grad_cs, h0, c0, w_hh, hs, cs, gates.to(cs.scalar_type()), reverse,
                     kCpuKernels, final_grads);
  const auto acc = cell_dtype(table.scalar_type());
  Tensor grad_table = at::zeros(table.sizes(), table.options().dtype(acc));
  grad_table.index_add_(0, ids.flatten(), grad_xproj.flatten(0, 1).to(acc));
  return {grad_table.to(table.scalar_type()), grad_h0, grad_c0, grad_w_hh};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> layer_train_backward_cpu(
    const Tensor& grad_hs, const std::optional<Tensor>& grad_cs,
    const std::optional<Tensor>& grad_h_n, const std::optional<Tensor>& grad_c_n,
    const Tensor& x, const Tensor& h0, const Tensor& c0, const Tensor& w_ih, const Tensor& w_hh,
    const Tensor& hs, const Tensor& cs, const Tensor& gates, bool reverse) {
  check_input_layer(x, h0, c0, w_ih, w_hh, std::nullopt);
  FASTLSTM_CHECK(hs.scalar_type() == x.scalar_type() && hs.dim() == 3 &&
                     hs.size(0) == x.size(0) && hs.size(1) == x.size(1),
                 "fastlstm: hs must be [seq, batch, hidden] in x's dtype");
  const FinalStateGrads final_grads = final_state_grads(grad_h_n, grad_c_n);
  if (auto fused = cpu_fused_layer_train_backward(grad_hs, grad_cs, final_grads, x, h0, c0,
                                                  w_ih, w_hh, hs, cs, gates, reverse))
    return *fused;
  auto [grad_xproj, grad_h0, grad_c0, grad_w_hh] =
      layer_backward(grad_hs, grad_cs, h0, c0, w_hh, hs, cs, gates.to(cs.scalar_type()), reverse,
                     kCpuKernels, final_grads);
  const Tensor g = grad_xproj.flatten(0, 1), x_flat = x.flatten(0, 1);
  return {g.mm(w_ih).view(x.sizes()), grad_h0, grad_c0, g.t().mm(x_flat), grad_w_hh,
          g.sum(0, false, cell_dtype(g.scalar_type())).to(g.scalar_type())};
}

std::tuple<Tensor, Tensor, Tensor, Tensor> layer_backward_cpu(
    const Tensor& grad_hs, const std::optional<Tensor>& grad_cs, const Tensor& h0,
    const Tensor& c0, const Tensor& w_hh, const Tensor& hs, const Tensor& cs, const Tensor& gates,
    bool reverse) {
  check_cpu(hs);
  if (auto fused = cpu_fused_layer_backward(grad_hs, grad_cs, h0, c0, w_hh, hs, cs, gates, reverse))
    return *fused;
  return layer_backward(grad_hs, grad_cs, h0, c0, w_hh, hs, cs, gates, reverse, kCpuKernels);
}

std::tuple<Tensor, Tensor, Tensor> step_cpu(const Tensor& xproj, const Tensor& h, const Tensor& c,
                                            const Tensor& w_hh) {
  check_cpu(xproj);
  return step_forward(xproj, h, c, w_hh, kCpuKernels);
}

// A unidirectional stack's inference (layer_cpu_fused.h): every layer of each step in one
// pass where the fused layer runs `dtype`; elsewhere layer by layer through the layer op.
std::tuple<Tensor, Tensor, Tensor> stack_inference_cpu(const Tensor& x, const Tensor& h0,
                                                       const Tensor& c0, at::TensorList w_ih,
                                                       at::TensorList w_hh, at::TensorList b_ih,
                                                       at::TensorList b_hh,
                                                       at::ScalarType dtype) {
  check_cpu(x);
  const int64_t L = static_cast<int64_t>(w_hh.size());
  FASTLSTM_CHECK(L >= 1 && static_cast<int64_t>(w_ih.size()) == L,
                 "fastlstm stack inference: as many w_ih as w_hh (at least one), got ",
                 int64_t(w_ih.size()), " and ", L);
  FASTLSTM_CHECK((b_ih.empty() && b_hh.empty()) || (static_cast<int64_t>(b_ih.size()) == L &&
                                                    static_cast<int64_t>(b_hh.size()) == L),
                 "fastlstm stack inference: b_ih and b_hh: one per layer each, or both empty");
  FASTLSTM_CHECK(x.dim() == 3 && x.size(0) > 0 && h0.dim() == 3,
                 "fastlstm stack inference: x must be [seq >= 1, batch, input] and h0 "
                 "[layers, batch, hidden], got ", x.sizes(), " and ", h0.sizes());
  const int64_t B = x.size(1), H = w_hh[0].size(1);
  FASTLSTM_CHECK(h0.sizes() == at::IntArrayRef({L, B, H}) && c0.sizes() == h0.sizes(),
                 "fastlstm stack inference: h0 and c0 must be [", L, ", ", B, ", ", H, "], got ",
                 h0.sizes(), " and ", c0.sizes());
  FASTLSTM_CHECK(dtype == at::kFloat || dtype == at::kBFloat16 || dtype == at::kDouble,
                 "fastlstm stack inference: dtype float32, bfloat16 or float64, got ", dtype);
  for (int64_t l = 0; l < L; ++l) {
    FASTLSTM_CHECK(w_ih[l].sizes() == at::IntArrayRef({4 * H, l == 0 ? x.size(2) : H}) &&
                       w_hh[l].sizes() == at::IntArrayRef({4 * H, H}),
                   "fastlstm stack inference: layer ", l, ": w_ih must be [", 4 * H, ", ",
                   l == 0 ? x.size(2) : H, "] and w_hh [", 4 * H, ", ", H, "], got ",
                   w_ih[l].sizes(), " and ", w_hh[l].sizes());
    if (!b_ih.empty())
      FASTLSTM_CHECK(b_ih[l].sizes() == at::IntArrayRef({4 * H}) &&
                         b_hh[l].sizes() == at::IntArrayRef({4 * H}),
                     "fastlstm stack inference: layer ", l, ": biases must be [", 4 * H, "]");
  }
  for (const auto* list : {&w_ih, &w_hh, &b_ih, &b_hh})
    for (const Tensor& t : *list) {
      check_cpu(t);
      FASTLSTM_CHECK(t.device() == x.device(), "fastlstm stack inference: device mismatch");
    }
  for (const Tensor* t : {&h0, &c0}) check_cpu(*t);
  if (auto fused = cpu_fused_stack_inference(x, h0, c0, w_ih, w_hh, b_ih, b_hh, dtype))
    return *fused;
  const c10::NoGradGuard no_grad;
  Tensor layer_in = x.to(dtype);
  std::vector<Tensor> h_n, c_n;
  for (int64_t l = 0; l < L; ++l) {
    const std::optional<Tensor> bias =
        b_ih.empty() ? std::optional<Tensor>() : b_ih[l].to(dtype) + b_hh[l].to(dtype);
    auto [hs, c_last] = layer_inference_cpu(layer_in, h0[l].to(dtype), c0[l].to(dtype),
                                            w_ih[l].to(dtype), w_hh[l].to(dtype), bias, false);
    h_n.push_back(hs[hs.size(0) - 1]);
    c_n.push_back(c_last.to(dtype));
    layer_in = hs;
  }
  return {layer_in, at::stack(h_n), at::stack(c_n)};
}

// x with each element kept (and scaled by 1 / (1 - p)) or zeroed as dropout_bits(seed, its
// index) decides (core/dropout.h); 0 <= p < 1.
Tensor dropout_cpu(const Tensor& x_in, double p, int64_t seed) {
  FASTLSTM_CHECK(p >= 0 && p < 1, "fastlstm dropout: p must be in [0, 1), got ",
                 std::to_string(p));
  const Tensor x = x_in.contiguous();
  Tensor out = kernel_output(x.sizes(), x.options());
  const auto threshold = static_cast<uint32_t>(std::min(p * 4294967296.0, 4294967295.0));
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, x.scalar_type(), "fastlstm_dropout_cpu", [&] {
    using T = typename CpuTypes<scalar_t>::T;
    using Acc = typename CpuTypes<scalar_t>::Acc;
    const Acc scale = static_cast<Acc>(1.0 / (1.0 - p));
    at::parallel_for(0, x.numel(), 1 << 16, [&](int64_t begin, int64_t end) {
#if defined(__x86_64__) && defined(__GNUC__)
      if constexpr (!std::is_same_v<T, double>) {
        static const bool avx512 = cpu_fused_supports(at::kBFloat16);  // F, DQ, BW, VL, BF16
        if (avx512) {
          dropout_range_avx512(ptr<T>(x), ptr<T>(out), begin, end, static_cast<uint64_t>(seed),
                               threshold, scale);
          return;
        }
      }
#endif
      dropout_cpu_range(ptr<T>(x), ptr<T>(out), begin, end, static_cast<uint64_t>(seed),
                        threshold, scale);
    });
  });
  return out;
}

// The stack op on the CPU runs the persistent kernel's (p4's) per-warp code on the host
// (run_mma_stack_on_host, the warp MMA as a 16 x 8 x 8 product, the MMA shape fp32 runs as
// TF32 on a GPU, here in full precision): serial and slow, it is there so that the tests can
// check the kernel's tiling and wave schedule, and the op's glue and autograd, against the
// oracle without a GPU. The grid it emulates: 8 multiprocessors of 256 threads.
constexpr int kHostSms = 8, kHostThreads = 256;

std::tuple<Tensor, Tensor, Tensor> stack_persistent_cpu(const Tensor& xproj, const Tensor& h0,
                                                        const Tensor& c0, at::TensorList w_ih,
                                                        at::TensorList bias,
                                                        at::TensorList w_hh) {
  FASTLSTM_CHECK(xproj.scalar_type() == at::kFloat || xproj.scalar_type() == at::kDouble,
                 "fastlstm CPU stack op: float32 or float64 only, got ", xproj.scalar_type());
  StackTensors st = prepare_stack(xproj, h0, c0, w_ih, bias, w_hh);
  AT_DISPATCH_FLOATING_TYPES(xproj.scalar_type(), "fastlstm_stack_persistent_cpu", [&] {
    const auto args = stack_args<scalar_t, scalar_t>(st);
    run_mma_stack_on_host<MmaK8>(args, mma_tiling_for<MmaK8>(args, kHostSms, kHostThreads),
                                 kHostThreads);
  });
  return {st.hs, st.cs, st.gates};
}

}  // namespace

TORCH_LIBRARY(fastlstm, m) {
  // One layer, one direction, the whole sequence. See layer.h for shapes.
  m.def("lstm_layer(Tensor xproj, Tensor h0, Tensor c0, Tensor w_hh, bool reverse)"
        " -> (Tensor hs, Tensor cs, Tensor gates)");
  m.def("lstm_layer_backward(Tensor grad_hs, Tensor? grad_cs, Tensor h0, Tensor c0, Tensor w_hh,"
        " Tensor hs, Tensor cs, Tensor gates, bool reverse)"
        " -> (Tensor grad_xproj, Tensor grad_h0, Tensor grad_c0, Tensor grad_w_hh)");
  // One layer's forward from its input x [S, B, I] (x W_ih^T + bias inside each step, or as
  // one GEMM first where that is faster), without what backward needs (no gates, no cell state but the last): hs and c_n.
  // CPU only; FastLSTM calls it when no gradient is wanted. bias: b_ih + b_hh, [4H].
  m.def("lstm_layer_inference(Tensor x, Tensor h0, Tensor c0, Tensor w_ih, Tensor w_hh,"
        " Tensor? bias, bool reverse) -> (Tensor hs, Tensor c_n)");
  // lstm_layer's contract from the layer input x [S, B, I] (x W_ih^T + bias inside each step,
  // or as one GEMM first; the gates saved in x's dtype, bf16 for bf16), and its backward, which also returns the gradients of x, W_ih and
  // the bias (the bias's summed as the kernel computes each row). CPU only; FastLSTM calls it
  // when a gradient is wanted. bias: b_ih + b_hh, [4H].
  // h_n, c_n: the final state (copies of hs's and cs's last time step; c_n in float), so a
  // loss on it reaches the backward as grad_h_n, grad_c_n [B, H].
  m.def("lstm_layer_train(Tensor x, Tensor h0, Tensor c0, Tensor w_ih, Tensor w_hh, Tensor? bias,"
        " bool reverse) -> (Tensor hs, Tensor cs, Tensor gates, Tensor h_n, Tensor c_n)");
  m.def("lstm_layer_train_backward(Tensor grad_hs, Tensor? grad_cs, Tensor? grad_h_n,"
        " Tensor? grad_c_n, Tensor x, Tensor h0, Tensor c0, Tensor w_ih, Tensor w_hh, Tensor hs,"
        " Tensor cs, Tensor gates, bool reverse)"
        " -> (Tensor grad_x, Tensor grad_h0, Tensor grad_c0, Tensor grad_w_ih, Tensor grad_w_hh,"
        " Tensor grad_bias)");
  // lstm_layer's contract for a layer whose input is an embedding (gates in the table's
  // dtype): step t's row b takes table[ids[t, b]] as its input projection (ids [S, B] int64; table [rows, 4H] =
  // embedding W_ih^T + bias, rows the vocabulary); the backward adds each row's gradient into
  // its id's table row. CPU only; FastLSTM.forward_ids calls it.
  m.def("lstm_layer_embedded(Tensor ids, Tensor table, Tensor h0, Tensor c0, Tensor w_hh,"
        " bool reverse) -> (Tensor hs, Tensor cs, Tensor gates, Tensor h_n, Tensor c_n)");
  m.def("lstm_layer_embedded_backward(Tensor grad_hs, Tensor? grad_cs, Tensor? grad_h_n,"
        " Tensor? grad_c_n, Tensor ids, Tensor table, Tensor h0, Tensor c0, Tensor w_hh,"
        " Tensor hs, Tensor cs, Tensor gates, bool reverse)"
        " -> (Tensor grad_table, Tensor grad_h0, Tensor grad_c0, Tensor grad_w_hh)");
  // One layer over packed sequences (a PackedSequence's data x [N, I] and its batch_sizes
  // [S]): at step t only the first batch_sizes[t] sequences (layer_cpu_fused.h). Returns hs
  // [N, H], each sequence's own last h_n and c_n [B, H] (c_n in float), and with `train` what
  // the backward needs (cs [N, H] float, gates [N, 4H] in x's dtype; else both empty). The
  // backward takes the gradients of hs, cs, h_n and c_n. CPU (the fused layer) only.
  m.def("lstm_layer_packed(Tensor x, Tensor batch_sizes, Tensor h0, Tensor c0, Tensor w_ih,"
        " Tensor w_hh, Tensor? bias, bool reverse, bool train)"
        " -> (Tensor hs, Tensor h_n, Tensor c_n, Tensor cs, Tensor gates)");
  m.def("lstm_layer_packed_backward(Tensor grad_hs, Tensor? grad_cs, Tensor? grad_h_n,"
        " Tensor? grad_c_n,"
        " Tensor x, Tensor batch_sizes, Tensor h0, Tensor c0, Tensor w_ih, Tensor w_hh,"
        " Tensor hs, Tensor cs, Tensor gates, bool reverse) -> (Tensor grad_x, Tensor grad_h0,"
        " Tensor grad_c0, Tensor grad_w_ih, Tensor grad_w_hh, Tensor grad_bias)");
  // lstm_layer's contract, computed by the persistent CUDA kernel (one launch for all steps;
  // the step loop where it does not fit). CUDA only; opt-in (fastlstm.set_persistent).
  m.def("lstm_layer_persistent(Tensor xproj, Tensor h0, Tensor c0, Tensor w_hh, bool reverse)"
        " -> (Tensor hs, Tensor cs, Tensor gates)");
  // A unidirectional stack of layers in one persistent launch, the layers as a wavefront, on
  // tensor cores (p4); shapes in stack.h. Opt-in (fastlstm.set_persistent with
  // FASTLSTM_PERSISTENT_VERSION=4). The CPU registration runs p4's per-warp code.
  m.def("lstm_stack_persistent(Tensor xproj, Tensor h0, Tensor c0, Tensor[] w_ih, Tensor[] bias,"
        " Tensor[] w_hh) -> (Tensor hs, Tensor cs, Tensor gates)");
  // Dropout whose mask is a function of (seed, element index): no mask stored, backward is
  // the same op on the gradient. CPU only (ops.dropout falls back to torch's elsewhere).
  m.def("dropout(Tensor x, float p, int seed) -> Tensor");
  // A char-rnn (embedding -> LSTM layers -> decoder) continues N samples by `steps` ids in
  // one call: draw from the logits (temperature, top_k, top_p; a counter-based draw keyed by
  // seed, sample and offset + step), feed the id through every layer and the decoder.
  // Returns the ids and the logits and state after the last; shapes in generate.h. CPU,
  // and CUDA (not yet run on a GPU: fastlstm.model.generate runs its per-character loop
  // on CUDA tensors until a recorded GPU run shows the CUDA op correct).
  m.def("generate(Tensor logits, Tensor h, Tensor c, Tensor embed, Tensor[] w_ih, Tensor[] w_hh,"
        " Tensor[] b_ih, Tensor[] b_hh, Tensor head_w, Tensor? head_b, int steps,"
        " float temperature, int? top_k, float top_p, int seed, int offset, Tensor? forced,"
        " bool bf16) -> (Tensor ids, Tensor logits_out, Tensor h_out, Tensor c_out)");
  // Inference of a unidirectional stack (no gradient), every layer of each step in one
  // pass: x [S, B, I], h0, c0 [L, B, H]; b_ih, b_hh one per layer or both empty; any float
  // dtypes, computed in `dtype`; returns out [S, B, H], h_n, c_n [L, B, H] in `dtype`. CPU;
  // FastLSTM's short calls (streaming). Packed weights kept until a weight changes.
  m.def("lstm_stack_inference(Tensor x, Tensor h0, Tensor c0, Tensor[] w_ih, Tensor[] w_hh,"
        " Tensor[] b_ih, Tensor[] b_hh, ScalarType dtype) -> (Tensor out, Tensor h_n,"
        " Tensor c_n)");
  // One fused step (FastLSTMCell, samplers). Its backward is lstm_layer_backward with seq = 1.
  m.def("lstm_step(Tensor xproj, Tensor h, Tensor c, Tensor w_hh)"
        " -> (Tensor h_new, Tensor c_new, Tensor gates)");
}

TORCH_LIBRARY_IMPL(fastlstm, CPU, m) {
  m.impl("lstm_layer", &layer_cpu);
  m.impl("lstm_layer_backward", &layer_backward_cpu);
  m.impl("lstm_layer_inference", &layer_inference_cpu);
  m.impl("lstm_layer_train", &layer_train_cpu);
  m.impl("lstm_layer_embedded", &layer_embedded_cpu);
  m.impl("lstm_layer_embedded_backward", &layer_embedded_backward_cpu);
  m.impl("lstm_layer_train_backward", &layer_train_backward_cpu);
  m.impl("lstm_layer_packed", &layer_packed_cpu);
  m.impl("lstm_layer_packed_backward", &layer_packed_backward_cpu);
  m.impl("dropout", &dropout_cpu);
  m.impl("lstm_step", &step_cpu);
  m.impl("lstm_stack_inference", &stack_inference_cpu);
  m.impl("lstm_stack_persistent", &stack_persistent_cpu);
  m.impl("generate", &generate_cpu);
}

}  // namespace fastlstm

// `import fastlstm._C` loads this library, which registers the ops above. The module
// carries what the build put in, for fastlstm.info and the version check at import.
static PyObject* set_cuda_graphs(PyObject*, PyObject* enabled) {
  const int value = PyObject_IsTrue(enabled);
  if (value < 0) return nullptr;
  fastlstm::set_cuda_graphs_enabled(value != 0);
  Py_RETURN_NONE;
}

static PyObject* cuda_graphs_enabled(PyObject*, PyObject*) {
  return PyBool_FromLong(fastlstm::cuda_graphs_enabled());
}

// Asked when first wanted, not at import: the answer asks the kernel for the tile state.
static PyObject* cpu_amx(PyObject*, PyObject*) {
  return PyBool_FromLong(fastlstm::cpu_fused_amx());
}

static PyMethodDef fastlstm_methods[] = {
    {"set_cuda_graphs", set_cuda_graphs, METH_O,
     "Replay the CUDA layer loops as CUDA graphs (default on; FASTLSTM_CUDA_GRAPHS=0: off)."},
    {"cuda_graphs_enabled", cuda_graphs_enabled, METH_NOARGS, "Whether CUDA graphs are on."},
    {"cpu_amx", cpu_amx, METH_NOARGS,
     "Whether the bf16 products can run on AMX tiles here (the CPU has them and the kernel "
     "lets this process use them); FASTLSTM_CPU_AMX=0 turns them off at each call."},
    {"weight_fingerprint", fastlstm::py_weight_fingerprint, METH_O,
     "weight_fingerprint(tensor) -> int: the weights' generation and a hash of 16 of the "
     "tensor's elements (CPU; elsewhere the generation): what the weight caches compare."},
    {"weights_changed", fastlstm::py_weights_changed, METH_NOARGS,
     "Every cached packing and cast is stale (a post-step hook of every torch optimizer)."},
    {"streaming_call", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(
                           fastlstm::streaming_call)),
     METH_FASTCALL,
     "streaming_call(route, params, input, hx): FastLSTM's short call without gradient "
     "(FastLSTM._streaming_route), or None where it does not take it."},
    {nullptr, nullptr, 0, nullptr}};

static struct PyModuleDef fastlstm_module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1,
                                             fastlstm_methods};

PyMODINIT_FUNC PyInit__C(void) {
  PyObject* m = PyModule_Create(&fastlstm_module);
  if (m == nullptr) return nullptr;
  PyModule_AddStringConstant(m, "built_with_torch", FASTLSTM_TORCH_VERSION);
  // The dtypes the CPU op runs on its fused layer on this CPU (torch's names).
  std::string fused_dtypes;
  if (fastlstm::cpu_fused_supports(at::kFloat)) fused_dtypes += "float32";
  if (fastlstm::cpu_fused_supports(at::kBFloat16)) fused_dtypes += ",bfloat16";
  PyModule_AddStringConstant(m, "cpu_fused_dtypes", fused_dtypes.c_str());
  // ... and generation (generate_cpu.cpp: AVX-512 only, so not every CPU the fused layer runs on).
  std::string generate_dtypes;
  if (fastlstm::generate_cpu_supports(false)) generate_dtypes += "float32";
  if (fastlstm::generate_cpu_supports(true)) generate_dtypes += ",bfloat16";
  PyModule_AddStringConstant(m, "cpu_generate_dtypes", generate_dtypes.c_str());
#ifdef FASTLSTM_WITH_CUDA
  PyModule_AddIntConstant(m, "cuda_compiled", 1);
  PyModule_AddStringConstant(m, "cuda_archs", fastlstm::cuda_arch_list());
#else
  PyModule_AddIntConstant(m, "cuda_compiled", 0);
  PyModule_AddStringConstant(m, "cuda_archs", "");
#endif
  return m;
}
