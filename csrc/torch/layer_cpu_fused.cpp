#include "layer_cpu_fused.h"

#include <ATen/Config.h>
#include <ATen/Parallel.h>
#include <c10/core/GradMode.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <type_traits>
#include <vector>

#include <unistd.h>

#include "../core/lstm_cpu_fused.h"
#include "check.h"
#include "layer.h"
#include "weight_cache.h"
#include "weight_gradients_cpu.h"

namespace fastlstm {

#ifdef FASTLSTM_CPU_FUSED
namespace {

using fused::Part;

// FASTLSTM_CPU_FUSED=0: the per-step GEMM loop instead (to compare the two; read at each
// call, so a benchmark can switch it between calls).
bool enabled_by_env() {
  const char* v = std::getenv("FASTLSTM_CPU_FUSED");
  return v == nullptr || std::strcmp(v, "0") != 0;
}

// Which build of the kernels runs fp32 (core/lstm_cpu_fused.h): AVX-512 where the CPU has
// it, else AVX2 + FMA (lstm_cpu_fused_avx2.cpp). FASTLSTM_CPU_ISA=avx2 takes the AVX2 build on
// an AVX-512 CPU too, and then bf16 has no fused layer (an AVX2-only CPU, imitated: tests and
// benchmarks/NOTES.md); unset or avx512: the default. Read at each call.
bool isa_forced_avx2() {
  const char* v = std::getenv("FASTLSTM_CPU_ISA");
  if (v == nullptr || *v == '\0' || std::strcmp(v, "avx512") == 0) return false;
  FASTLSTM_CHECK(std::strcmp(v, "avx2") == 0, "fastlstm: FASTLSTM_CPU_ISA must be avx2, avx512 "
                 "or unset, not '", v, "'");
  return true;
}

bool fp32_on_avx2() {
  return (isa_forced_avx2() || !fused::cpu_supports<float>()) && fused::avx2::supported();
}

// The kernels of one call, of the build that runs T here.
template <typename T>
struct Kernels {
  void (*pack_forward)(const T*, int64_t, int64_t, T*, int64_t, int64_t, int);
  void (*pack_backward)(const T*, int64_t, T*, int64_t, int64_t, int64_t);
  void (*forward_step)(const fused::FusedForwardArgs<T>&, const Part&, int64_t);
  void (*backward_step)(const fused::FusedBackwardArgs<T>&, const Part&, int64_t);
};

template <typename T>
Kernels<T> kernels() {
  if constexpr (std::is_same_v<T, float>) {
    if (fp32_on_avx2()) {
      return {&fused::avx2::pack_forward, &fused::avx2::pack_backward,
              &fused::avx2::forward_step, &fused::avx2::backward_step};
    }
  }
  return {&fused::pack_forward<T>, &fused::pack_backward<T>, &fused::forward_step,
          &fused::backward_step};
}

// How the threads share a layer: each worker a Part for the whole sequence.
struct Plan {
  std::vector<Part> parts;
  bool barrier;  // the workers split the units and meet after every step
};

// One worker for a small step. Else rows where there are enough of them (at least 4 a
// worker): those workers never wait for each other. Otherwise units, where each worker gets at least 2 groups of 16, and only
// under OpenMP, whose parallel_for runs its threads at once (a worker spinning at the
// barrier must not hold the thread another worker is queued on). Otherwise one worker.
// Below this many flops a step (its recurrent product) a second thread costs more at the
// barrier than it saves (batch 1, hidden 128: 2.2 us a step on one thread, 2.7 on two).
constexpr int64_t kMinSplitFlops = 500000;

// Packed input (shrinking steps) splits the units where it can: split rows, the workers
// with the short sequences would idle while the others finish the long ones.
Plan plan_for(int64_t batch, int64_t hidden, bool packed = false) {
  const int64_t threads = at::in_parallel_region() || 8 * batch * hidden * hidden < kMinSplitFlops
                              ? 1
                              : at::get_num_threads();
  const int64_t groups = fused::unit_groups(hidden);
  const bool units_fit = threads > 1 && AT_PARALLEL_OPENMP && groups >= 2 * threads;
  Plan plan{{}, false};
  if (threads > 1 && batch >= 4 * threads && !(packed && units_fit)) {
    for (int64_t k = 0; k < threads; ++k)
      plan.parts.push_back({batch * k / threads, batch * (k + 1) / threads, 0, groups});
  } else if (units_fit) {
    for (int64_t k = 0; k < threads; ++k)
      plan.parts.push_back({0, batch, groups * k / threads, groups * (k + 1) / threads});
    plan.barrier = true;
  } else {
    plan.parts.push_back({0, batch, 0, groups});
  }
  return plan;
}

template <typename StepFn>
void run_plan(const Plan& plan, int64_t steps, StepFn step) {
  const int64_t n = static_cast<int64_t>(plan.parts.size());
  fused::StepBarrier barrier(static_cast<int>(n));
  const auto work = [&](int64_t begin, int64_t end) {
    fused::run_parts(steps, begin, end, plan.barrier ? &barrier : nullptr,
                     [&](int64_t p, int64_t s) { step(plan.parts[p], s); });
  };
  if (n == 1) {
    work(0, 1);
  } else {
    at::parallel_for(0, n, 1, work);
  }
}

// t [.., K] with zero columns up to `width` (whole k-steps for the products), contiguous.
Tensor padded_columns(const Tensor& t, int64_t width) {
  if (t.size(-1) == width) return t.contiguous();
  auto sizes = t.sizes().vec();
  sizes.back() = width;
  Tensor out = at::zeros(sizes, t.options());
  out.narrow(-1, 0, t.size(-1)).copy_(t);
  return out;
}

// W [gates H, K] packed for the forward product (pack_forward), the threads packing disjoint
// groups.
template <typename T>
Tensor packed_forward(const Tensor& w, int64_t hidden, int gates = 4) {
  const int64_t K = fused::padded_width<T>(w.size(1));
  const Tensor w_padded = padded_columns(w, K);
  Tensor packed = at::empty({fused::forward_packed_size<T>(hidden, K, gates)}, w.options());
  const auto pack = kernels<T>().pack_forward;
  at::parallel_for(0, fused::unit_groups(hidden), 1, [&](int64_t begin, int64_t end) {
    pack(ptr<T>(w_padded), hidden, K, ptr<T>(packed), begin, end, gates);
  });
  return packed;
}

// Packed weights kept across inference calls (weight_cache.h): a model run again with
// unchanged weights (evaluation, sampling, any inference loop) packs them once.
WeightCache<Tensor>& inference_packs() {
  static WeightCache<Tensor> cache(16);  // 8 layers' W_ih and W_hh
  return cache;
}

// Below this many steps the per-step GEMM loop is faster: packing W_hh reads and writes it
// once more, which a few steps do not repay (one step at 2 x 512, batch 1: the fused layer
// took 1.8-2x the loop's time; benchmarks/NOTES.md).
constexpr int64_t kMinSteps = 4;

// bf16 products on AMX tiles where the CPU has them (fused::amx_usable);
// FASTLSTM_CPU_AMX=0 keeps the AVX-512 register tile (read at each call: benchmarks).
// With AMX: a row block of one row runs on the register tile instead (a 1-row tile product
// streams as many weight bytes through tile loads as 16 rows do). Measured on the AMX Xeon,
// bf16, interleaved: one streaming step (2 layers, batch 1) 0.79x the AMX time at hidden
// 256, 0.98x at 512; the layer's inference at batch 1, 50 steps 0.73-0.80x (hidden
// 128-512); training level; at 2 rows AMX is already level or faster (1.01-1.08x), at 3+
// faster (1.1-2.1x). FASTLSTM_AMX_MIN_ROWS=n overrides (benchmarks).
int amx_min_rows() {
  if (const char* v = std::getenv("FASTLSTM_AMX_MIN_ROWS")) return std::max(1, std::atoi(v));
  return 2;
}

template <typename T>
bool use_amx() {
  if constexpr (std::is_same_v<T, Bf16>) {
    const char* v = std::getenv("FASTLSTM_CPU_AMX");
    return fused::amx_usable() && !(v != nullptr && std::strcmp(v, "0") == 0);
  }
  return false;
}

// One core's L2 (1 MiB where the system does not say).
int64_t l2_cache_bytes() {
  static const int64_t bytes = [] {
    const long v = sysconf(_SC_LEVEL2_CACHE_SIZE);
    return v > 0 ? static_cast<int64_t>(v) : int64_t(1) << 20;
  }();
  return bytes;
}

// Inference: x W_ih^T + bias for all steps as one GEMM before the recurrence (ATen's: oneDNN,
// on AMX tiles for bf16 where the CPU has them), or inside each step from packed W_ih. Inside
// the step pays where the layer's weights stay in each core's L2 from step to step and the
// rows are few (or, for bf16 on AMX tiles, any rows); otherwise each step re-reads W_ih from
// L3 (2 x 512 fp32, batch 1, 100 steps: 28.9 ms inside, 9.8 ms first) or the GEMM's better
// blocking wins. Measured on an Intel Xeon with AMX-BF16 (2 MiB L2 a core;
// benchmarks/NOTES.md, "Streaming"): first at >= 48 rows (steps x batch; not for bf16 on
// AMX) or weights of >= half an L2 a thread. On a CPU without AMX the register tile runs at
// its peak from L3 as from L2, and the step wins at batch >= 2 up to 8 MiB of weights (W_ih
// and W_hh) a layer; the AVX2 build, whose one-vector passes re-read the weights, up to 2
// MiB. Measured on a Zen 4 (1 MiB L2 a core) and there imitating an AVX2-only CPU, 2 layers,
// 50 steps, time in the step / GEMM first: 0.76-0.98 at hidden 128-512, batch 2-64, both
// dtypes; hidden 1024 (16-32 MiB) 0.90-1.12; batch 1 0.83-1.93; AVX2 0.77-0.92 at hidden
// <= 256, 1.16 at hidden 512 batch 4, 2.3 at hidden 1024 batch 8 (NOTES.md, "issue 25,
// eleventh part"). FASTLSTM_INFER_PROJECTION=step|gemm overrides.
bool projection_first(int64_t rows, int64_t weight_bytes, int64_t batch, int64_t hidden,
                      bool amx, bool avx2) {
  if (const char* v = std::getenv("FASTLSTM_INFER_PROJECTION")) {
    if (std::strcmp(v, "gemm") == 0) return true;
    if (std::strcmp(v, "step") == 0) return false;
  }
  const int64_t register_tile_max = (avx2 ? 2 : 8) << 20;
  if (!fused::amx_usable() && batch >= 2 && weight_bytes <= register_tile_max) return false;
  const int64_t l2_bytes = l2_cache_bytes();
  const int64_t threads = plan_for(batch, hidden).parts.size();
  return (rows >= 48 && !amx) || 2 * weight_bytes >= l2_bytes * threads;
}

bool applies(const Tensor& t, int64_t steps) {
  return steps >= kMinSteps && t.device().is_cpu() && cpu_fused_enabled(t.scalar_type());
}

// What the forward adds to h_{t-1} W_hh^T: xproj, or x W_ih^T + bias computed in the step.
struct StepInput {
  Tensor xproj;        // [S, B, 4H], or with ids a table [rows, 4H]; or undefined
  Tensor x, w_ih;      // [S, B, padded_width(I)] (zero padding), [4H, I]
  Tensor bias;         // [4H] float
  Tensor ids;          // [S, B] int64 (contiguous) or undefined: row b of step t adds xproj's
                       // row ids[t, b]
};

// For a layer given its input x [S, B, I] (or packed, [N, I]): x W_ih^T + bias computed inside each step (in_step:
// x's rows padded to whole k-steps, a bf16 row of odd length getting a zero pair partner; the
// bias in float), or as one GEMM first, into a kept buffer (fresh memory would cost a page
// fault per 4 KiB: layer.cpp).
StepInput input_projection(const Tensor& x, const Tensor& w_ih, const std::optional<Tensor>& bias,
                           int64_t H, bool in_step) {
  const int64_t I = x.size(-1);
  const bool has_bias = bias.has_value() && bias->defined();
  if (in_step) {
    const Tensor x_rows = padded_columns(
        x, x.scalar_type() == at::kBFloat16 ? fused::padded_width<Bf16>(I) : I);
    const Tensor bias_acc = has_bias ? bias->to(at::kFloat).contiguous()
                                     : at::zeros({4 * H}, x.options().dtype(at::kFloat));
    return StepInput{Tensor(), x_rows, w_ih.contiguous(), bias_acc};
  }
  auto sizes = x.sizes().vec();  // [S, B, I], or packed [N, I]
  sizes.back() = 4 * H;
  Tensor xproj = kernel_output(sizes, x.options());
  Tensor flat = xproj.view({-1, 4 * H});
  const Tensor x_flat = x.reshape({-1, I});
  if (has_bias) {
    at::addmm_out(flat, *bias, x_flat, w_ih.t());
  } else {
    at::mm_out(flat, x_flat, w_ih.t());
  }
  return StepInput{xproj, {}, {}, {}};
}

// Packed input: offsets [S + 1] of each step's rows (fused::StepRows), from batch_sizes [S].
std::vector<int64_t> packed_offsets(const Tensor& batch_sizes) {
  const Tensor sizes = batch_sizes.contiguous();
  const int64_t* n = sizes.data_ptr<int64_t>();
  std::vector<int64_t> offsets(sizes.numel() + 1, 0);
  for (int64_t t = 0; t < sizes.numel(); ++t) offsets[t + 1] = offsets[t] + n[t];
  return offsets;
}

// Forward into hs ([S, B, H], or packed [N, H] with offsets), cs (c_t, like hs; or with
// c_state the cell state [B, H], c0 in and c_n out) and gates (float, or hs's dtype;
// undefined: not saved).
template <typename T>
void run_forward(const StepInput& in, const Tensor& h0, const Tensor& c0, const Tensor& w_hh,
                 bool reverse, const Tensor& hs, const Tensor& cs, const Tensor& gates,
                 bool c_state, const std::vector<int64_t>* offsets) {
  const int64_t S = offsets ? int64_t(offsets->size()) - 1 : hs.size(0), B = h0.size(0);
  const int64_t H = w_hh.size(1);
  const Tensor c0_acc = c0.to(at::kFloat).contiguous();
  if (c_state) cs.copy_(c0);
  // Inference keeps its packed weights for the next call (inference_packs); training's change
  // every step.
  const auto pack = [&](const Tensor& w) {
    const auto fresh = [&] { return packed_forward<T>(w, H); };
    return c_state ? inference_packs().get({w}, 0, fresh) : fresh();
  };
  const Tensor packed = pack(w_hh);
  const Tensor packed_ih = in.xproj.defined() ? Tensor() : pack(in.w_ih);
  Tensor ring = at::zeros({2, B, fused::padded_width<T>(H)}, h0.options());
  ring.narrow(2, 0, H).copy_(h0.unsqueeze(0).expand({2, B, H}));
  const auto maybe = [](const Tensor& t) { return t.defined() ? ptr<T>(t) : nullptr; };
  fused::FusedForwardArgs<T> args{
      maybe(in.xproj), maybe(in.x), maybe(packed_ih),
      in.bias.defined() ? ptr<float>(in.bias) : nullptr,
      in.w_ih.defined() ? in.w_ih.size(1) : 0,
      ptr<T>(packed), ptr<float>(c0_acc), ptr<T>(ring), ptr<T>(hs), ptr<float>(cs),
      gates.defined() ? gates.data_ptr() : nullptr, S, B, H, reverse, c_state};
  args.amx = use_amx<T>();
  args.amx_min_rows = amx_min_rows();
  args.gates_in_t = gates.defined() && gates.scalar_type() != at::kFloat;
  args.ids = in.ids.defined() ? in.ids.data_ptr<int64_t>() : nullptr;
  args.offsets = offsets ? offsets->data() : nullptr;
  const auto step = kernels<T>().forward_step;
  run_plan(plan_for(B, H, offsets != nullptr), S,
           [&](const Part& p, int64_t s) { step(args, p, s); });
}

void run_forward(const StepInput& in, const Tensor& h0, const Tensor& c0, const Tensor& w_hh,
                 bool reverse, const Tensor& hs, const Tensor& cs, const Tensor& gates,
                 bool c_state, const std::vector<int64_t>* offsets = nullptr) {
  // Storage float32 or bfloat16 (applies() checked); torch's BFloat16 has Bf16's bits.
  if (hs.scalar_type() == at::kFloat) {
    run_forward<float>(in, h0, c0, w_hh, reverse, hs, cs, gates, c_state, offsets);
  } else {
    run_forward<Bf16>(in, h0, c0, w_hh, reverse, hs, cs, gates, c_state, offsets);
  }
}

// Backward into grad_xproj, grad_c (dL/dc0), grad_h0, and with grad_bias (a [4H] float
// tensor) the sum of grad_xproj's rows, taken from the kernel's fp32 values (each worker sums
// its own rows, then the workers' sums are added); with ids ([S, B] int64) grad_bias is
// [rows, 4H] and each row of grad_xproj is added into its id's row.
// Packed (offsets): gates, cs, grad_hs and grad_xproj [N, ..]; grad_c holds dL/dc_n in.
// The input gradient computed inside the backward's steps: grad_x (out, x's rows and dtype,
// contiguous) = dL/d(pre-activations) W_ih (contiguous [4H, I]).
struct InputGradient {
  Tensor w_ih, grad_x;
};

template <typename T>
void run_backward(const Tensor& w_hh, const Tensor& gates, const Tensor& cs, const Tensor& c0,
                  const Tensor& grad_hs, const std::optional<Tensor>& grad_cs,
                  const Tensor& grad_c, const Tensor& grad_xproj, const Tensor& grad_h0,
                  bool reverse, Tensor* grad_bias = nullptr, const Tensor* ids = nullptr,
                  const std::vector<int64_t>* offsets = nullptr,
                  const Tensor* grad_h_n = nullptr, const InputGradient* dx = nullptr) {
  const int64_t S = offsets ? int64_t(offsets->size()) - 1 : gates.size(0), B = c0.size(0);
  const int64_t H = w_hh.size(1);
  const Kernels<T> k = kernels<T>();
  const auto pack = [&](const Tensor& w) {  // [4H, C] contiguous
    const int64_t C = w.size(1);
    Tensor packed = at::empty({fused::backward_packed_size<T>(H, C)}, w.options());
    at::parallel_for(0, fused::unit_groups(C), 1, [&](int64_t begin, int64_t end) {
      k.pack_backward(ptr<T>(w), H, ptr<T>(packed), begin, end, C);
    });
    return packed;
  };
  const Tensor packed = pack(w_hh);
  const Tensor packed_ih = dx ? pack(dx->w_ih) : Tensor();
  fused::FusedBackwardArgs<T> args{
      ptr<T>(packed),   gates.data_ptr(), ptr<float>(cs),
      ptr<float>(c0),   ptr<T>(grad_hs),    grad_cs ? ptr<T>(*grad_cs) : nullptr,
      ptr<float>(grad_c), ptr<T>(grad_xproj), ptr<float>(grad_h0),
      S,                B,                  H,
      reverse};
  args.amx = use_amx<T>();
  args.amx_min_rows = amx_min_rows();
  args.gates_in_t = gates.scalar_type() != at::kFloat;
  args.offsets = offsets ? offsets->data() : nullptr;
  args.grad_h_n = grad_h_n ? ptr<float>(*grad_h_n) : nullptr;
  if (dx) {
    args.packed_ih = ptr<T>(packed_ih);
    args.grad_x = ptr<T>(dx->grad_x);
    args.inputs = dx->w_ih.size(1);
  }
  const Plan plan = plan_for(B, H, offsets != nullptr);
  const int64_t n = static_cast<int64_t>(plan.parts.size());
  Tensor bias_parts;
  std::vector<fused::FusedBackwardArgs<T>> part_args(n, args);
  if (grad_bias != nullptr) {
    const int64_t size = grad_bias->numel();  // 4H, or rows x 4H
    bias_parts = at::zeros({n, size}, grad_bias->options());
    for (int64_t k = 0; k < n; ++k) {
      part_args[k].grad_bias = ptr<float>(bias_parts) + k * size;
      part_args[k].bias_ids = ids != nullptr ? ids->data_ptr<int64_t>() : nullptr;
    }
  }
  run_plan(plan, S + 1, [&](const Part& p, int64_t s) {
    k.backward_step(part_args[&p - plan.parts.data()], p, s);
  });
  if (grad_bias != nullptr) {
    Tensor flat = grad_bias->view({-1});
    at::sum_out(flat, bias_parts, 0);
  }
}

// A stack's packed weights kept across calls, as inference_packs: per layer W_ih and W_hh
// (pack_forward) in the compute type, and b_ih + b_hh in float.
struct StackPacks {
  std::vector<Tensor> w_ih, w_hh, bias;
};

WeightCache<StackPacks>& stack_packs() {
  static WeightCache<StackPacks> cache(8);
  return cache;
}

// Every layer of a unidirectional stack, step by step: at step s layer 0, then layer 1, ...,
// each the fused step with x W_ih^T inside (forward_step). A short call (one step of a
// streaming model) then costs one pass over the packed weights, no per-layer op or
// allocation. Layer l < L - 1 writes its h_t into rows padded to P that layer l + 1 reads
// as its x; the top layer writes the output.
template <typename T>
std::tuple<Tensor, Tensor, Tensor> run_stack(const Tensor& x, const Tensor& h0, const Tensor& c0,
                                             at::TensorList w_ih, at::TensorList w_hh,
                                             at::TensorList b_ih, at::TensorList b_hh,
                                             at::ScalarType dtype) {
  const int64_t S = x.size(0), B = x.size(1), I = x.size(2), L = h0.size(0), H = h0.size(2);
  const int64_t P = fused::padded_width<T>(H);
  std::vector<Tensor> weights;
  for (const auto* list : {&w_ih, &w_hh, &b_ih, &b_hh})
    for (const Tensor& t : *list) weights.push_back(t);
  const StackPacks packs = stack_packs().get(weights, static_cast<int64_t>(dtype), [&] {
    StackPacks k;
    for (int64_t l = 0; l < L; ++l) {
      k.w_ih.push_back(packed_forward<T>(w_ih[l].to(dtype).contiguous(), H));
      k.w_hh.push_back(packed_forward<T>(w_hh[l].to(dtype).contiguous(), H));
      k.bias.push_back(b_ih.empty() ? at::zeros({4 * H}, x.options().dtype(at::kFloat))
                                    : (b_ih[l].to(at::kFloat) + b_hh[l].to(at::kFloat)).contiguous());
    }
    return k;
  });
  using Cv = Convert<T, float>;
  const auto opts = x.options().dtype(dtype);
  const Tensor x_in = x.to(dtype).contiguous(), h0_in = h0.to(dtype).contiguous();
  const Tensor c0_acc = c0.to(at::kFloat).contiguous();
  // One workspace: x's rows padded to whole k-steps (where I is not), the h rings [L, 2, B, P],
  // the lower layers' outputs [L - 1, S, B, P] (the next layer's x), then the cell states
  // [L, B, H] in float (at a 4-byte boundary: P and PI are even for bf16). Padding is
  // zero: the products read it.
  const int64_t PI = fused::padded_width<T>(I), x_size = PI == I ? 0 : S * B * PI;
  const int64_t ring_size = 2 * B * P, lower_size = S * B * P;
  const int64_t t_size = x_size + L * ring_size + (L - 1) * lower_size;
  Tensor work = at::empty({t_size * int64_t(sizeof(T)) + L * B * H * int64_t(sizeof(float))},
                          x.options().dtype(at::kByte));
  T* const ws = ptr<T>(work);
  float* const c_states = reinterpret_cast<float*>(ws + t_size);
  std::copy_n(ptr<float>(c0_acc), L * B * H, c_states);
  if (x_size > 0 || P != H) std::fill(ws, ws + t_size, Cv::store(0.f));
  const T* x_rows = ptr<T>(x_in);
  if (x_size > 0) {
    for (int64_t r = 0; r < S * B; ++r) std::copy_n(x_rows + r * I, I, ws + r * PI);
    x_rows = ws;
  }
  const auto ring = [&](int64_t l) { return ws + x_size + l * ring_size; };
  const auto lower = [&](int64_t l) { return ws + x_size + L * ring_size + l * lower_size; };
  for (int64_t l = 0; l < L; ++l)
    for (int64_t b = 0; b < B; ++b)
      for (int64_t slot = 0; slot < 2; ++slot)
        std::copy_n(ptr<T>(h0_in) + (l * B + b) * H, H, ring(l) + (slot * B + b) * P);
  Tensor out = kernel_output({S, B, H}, opts);
  // Streaming calls are mostly one step: alternate the unit groups' walk between calls too
  // (core/lstm_cpu_fused.h, snake_order).
  static std::atomic<int64_t> calls{0};
  const int64_t walk_offset = calls.fetch_add(1, std::memory_order_relaxed) & 1;
  std::vector<fused::FusedForwardArgs<T>> args;
  const bool amx = use_amx<T>();
  for (int64_t l = 0; l < L; ++l) {
    const bool top = l == L - 1;
    fused::FusedForwardArgs<T> a{
        nullptr, l == 0 ? x_rows : lower(l - 1), ptr<T>(packs.w_ih[l]),
        ptr<float>(packs.bias[l]), l == 0 ? I : H, ptr<T>(packs.w_hh[l]),
        ptr<float>(c0_acc) + l * B * H, ring(l), top ? ptr<T>(out) : lower(l),
        c_states + l * B * H, nullptr, S, B, H, false, true};
    a.ld_hs = top ? 0 : P;
    a.amx = amx;
    a.amx_min_rows = amx_min_rows();
    a.walk_offset = walk_offset;
    args.push_back(a);
  }
  const auto step = kernels<T>().forward_step;
  run_plan(plan_for(B, H), S * L, [&](const Part& p, int64_t k) {
    step(args[k % L], p, k / L);
  });
  Tensor h_n = at::empty({L, B, H}, opts), c_n = at::empty({L, B, H}, opts);
  for (int64_t l = 0; l < L; ++l)
    for (int64_t b = 0; b < B; ++b) {
      const T* h = ring(l) + ((S & 1) * B + b) * P;
      const float* c = c_states + (l * B + b) * H;
      T* h_out = ptr<T>(h_n) + (l * B + b) * H;
      T* c_out = ptr<T>(c_n) + (l * B + b) * H;
      for (int64_t u = 0; u < H; ++u) {
        h_out[u] = h[u];
        c_out[u] = Cv::store(c[u]);
      }
    }
  return {out, h_n, c_n};
}

}  // namespace

std::optional<std::tuple<Tensor, Tensor, Tensor>> cpu_fused_stack_inference(
    const Tensor& x, const Tensor& h0, const Tensor& c0, at::TensorList w_ih,
    at::TensorList w_hh, at::TensorList b_ih, at::TensorList b_hh, at::ScalarType dtype) {
  if (!x.device().is_cpu() || !cpu_fused_enabled(dtype)) return std::nullopt;
  const c10::NoGradGuard no_grad;
  return dtype == at::kFloat ? run_stack<float>(x, h0, c0, w_ih, w_hh, b_ih, b_hh, dtype)
                             : run_stack<Bf16>(x, h0, c0, w_ih, w_hh, b_ih, b_hh, dtype);
}

bool cpu_fused_amx() { return fused::amx_usable(); }

bool cpu_fused_supports(at::ScalarType dtype) {
  if (dtype == at::kFloat) return fused::cpu_supports<float>() || fused::avx2::supported();
  if (dtype == at::kBFloat16) return fused::cpu_supports<Bf16>();
  return false;
}

bool cpu_fused_enabled(at::ScalarType dtype) {
  return enabled_by_env() && cpu_fused_supports(dtype) &&
         !(dtype == at::kBFloat16 && isa_forced_avx2());
}

Tensor cpu_fused_pack(const Tensor& w, int64_t outputs, int gates) {
  FASTLSTM_CHECK(cpu_fused_supports(w.scalar_type()), "fastlstm: the fused layer does not run ",
                 w.scalar_type(), " on this CPU");
  return w.scalar_type() == at::kFloat ? packed_forward<float>(w, outputs, gates)
                                       : packed_forward<Bf16>(w, outputs, gates);
}

std::optional<std::tuple<Tensor, Tensor, Tensor>> cpu_fused_layer_forward(
    const Tensor& xproj_in, const Tensor& h0_in, const Tensor& c0, const Tensor& w_hh_in,
    bool reverse) {
  if (!applies(xproj_in, xproj_in.size(0))) return std::nullopt;
  const c10::NoGradGuard no_grad;
  check_layer_inputs(xproj_in, xproj_in.scalar_type(), h0_in, c0, w_hh_in);
  const Tensor xproj = xproj_in.contiguous(), h0 = h0_in.contiguous(), w_hh = w_hh_in.contiguous();
  const int64_t S = xproj.size(0), B = xproj.size(1), H = w_hh.size(1);
  const auto acc = xproj.options().dtype(at::kFloat);
  Tensor hs = kernel_output({S, B, H}, xproj.options());
  Tensor cs = kernel_output({S, B, H}, acc);
  Tensor gates = kernel_output({S, B, 4 * H}, acc);
  run_forward(StepInput{xproj, {}, {}, {}}, h0, c0, w_hh, reverse, hs, cs, gates, false);
  return std::make_tuple(hs, cs, gates);
}

std::optional<std::tuple<Tensor, Tensor>> cpu_fused_layer_inference(
    const Tensor& x, const Tensor& h0_in, const Tensor& c0, const Tensor& w_ih,
    const Tensor& w_hh_in, const std::optional<Tensor>& bias, bool reverse) {
  if (!applies(x, x.size(0))) return std::nullopt;
  const c10::NoGradGuard no_grad;
  const int64_t S = x.size(0), B = x.size(1), H = w_hh_in.size(1);
  const Tensor h0 = h0_in.contiguous(), w_hh = w_hh_in.contiguous();
  Tensor hs = kernel_output({S, B, H}, x.options());
  Tensor c_state = kernel_output({B, H}, x.options().dtype(at::kFloat));
  const bool bf16 = x.scalar_type() == at::kBFloat16, amx = bf16 && use_amx<Bf16>();
  const bool first = projection_first(S * B, (w_ih.numel() + w_hh.numel()) * x.element_size(), B,
                                      H, amx, !bf16 && fp32_on_avx2());
  run_forward(input_projection(x, w_ih, bias, H, !first), h0, c0, w_hh, reverse, hs, c_state,
              Tensor(), true);
  return std::make_tuple(hs, c_state);
}

namespace {

// The recurrence's backward (cpu_fused_layer_backward's checks and kernel): grad_xproj
// [S, B, 4H] in hs's dtype, grad_h0 [B, H] float, grad_c0 [B, H] float; with grad_bias
// ([4H] float) also the sum of grad_xproj's rows.
std::tuple<Tensor, Tensor, Tensor> recurrence_backward(
    const Tensor& grad_hs_in, const std::optional<Tensor>& grad_cs_in, const Tensor& h0_in,
    const Tensor& c0, const Tensor& w_hh_in, const Tensor& hs, const Tensor& cs_in,
    const Tensor& gates_in, bool reverse, Tensor* grad_bias, const Tensor* ids = nullptr,
    const FinalStateGrads& final_grads = {}, const InputGradient* dx = nullptr) {
  const at::ScalarType dtype = hs.scalar_type();
  check_layer_inputs(gates_in, dtype, h0_in, c0, w_hh_in);
  const int64_t S = gates_in.size(0), B = gates_in.size(1), H = w_hh_in.size(1);
  FASTLSTM_CHECK(grad_hs_in.sizes() == hs.sizes() && hs.sizes() == cs_in.sizes() &&
                     hs.size(0) == S && hs.size(1) == B && hs.size(2) == H,
                 "fastlstm: grad_hs, hs and cs must be [seq, batch, hidden] = [", S, ", ", B,
                 ", ", H, "]");
  FASTLSTM_CHECK(cs_in.scalar_type() == at::kFloat && (gates_in.scalar_type() == at::kFloat ||
                                                        gates_in.scalar_type() == dtype),
                 "fastlstm: cs must be saved in float32, gates in float32 or ", dtype);
  const Tensor grad_hs = grad_hs_in.to(dtype).contiguous();
  std::optional<Tensor> grad_cs;
  if (grad_cs_in.has_value() && grad_cs_in->defined()) {
    FASTLSTM_CHECK(grad_cs_in->sizes() == cs_in.sizes(), "fastlstm: grad_cs must be shaped like cs");
    grad_cs = grad_cs_in->to(dtype).contiguous();
  }
  const Tensor w_hh = w_hh_in.contiguous();
  const Tensor cs = cs_in.contiguous(), gates = gates_in.contiguous();
  const Tensor c0_acc = c0.to(at::kFloat).contiguous();
  const auto acc = hs.options().dtype(at::kFloat);
  Tensor grad_xproj = kernel_output({S, B, 4 * H}, hs.options());
  Tensor grad_c = carried_gradient(final_grads.c_n, B, H, acc, "grad_c_n");  // the carried dL/dc
  const Tensor grad_h_n =
      final_grads.h_n ? carried_gradient(final_grads.h_n, B, H, acc, "grad_h_n") : Tensor();
  const Tensor* h_n = grad_h_n.defined() ? &grad_h_n : nullptr;
  Tensor grad_h0 = kernel_output({B, H}, acc);
  if (dtype == at::kFloat) {
    run_backward<float>(w_hh, gates, cs, c0_acc, grad_hs, grad_cs, grad_c, grad_xproj, grad_h0,
                        reverse, grad_bias, ids, nullptr, h_n, dx);
  } else {
    run_backward<Bf16>(w_hh, gates, cs, c0_acc, grad_hs, grad_cs, grad_c, grad_xproj, grad_h0,
                       reverse, grad_bias, ids, nullptr, h_n, dx);
  }
  return {grad_xproj, grad_h0, grad_c};
}

// Training: the input projection inside each step or as one GEMM first (oneDNN's).
// FASTLSTM_TRAIN_PROJECTION=step|gemm overrides.
// - On AMX tiles: in the step where both weights fit in the threads' L2s (1.5x: level there)
//   and the batch has the rows to repay reading W_ih at every step (at most 96 KiB of
//   weights a row). Measured on the AMX Xeon (2 MiB L2 a core), bf16 training step (forward
//   + backward), 2 layers, input = hidden, two runs, time in the step / GEMM first: up to 74
//   KiB of weights a row (hidden 128-512, batch 8-256) 0.75-0.97x; 102-147 KiB (hidden
//   256-640, batch 8-64) 0.99-1.07x; 256-1024 KiB (batch 2-16) 0.90-1.00x at hidden 256,
//   1.04-1.25x at 384-512; hidden 768 (9.4 MiB) 1.10-1.13x.
// - On the register tile (AVX512-BF16 without AMX), where the tile runs at its peak from L2
//   or L3 alike: in the step at up to 256 KiB of weights a row. Measured on a Zen 4 (1 MiB L2
//   a core), same step: 10-128 KiB a row (hidden 128-512, batch 8-64) 0.80-1.00x; 512 KiB
//   (hidden 512, batch 8) 1.00x; 4 MiB (batch 1) 1.08x (benchmarks/NOTES.md).
// - fp32 on a CPU without AMX (the AVX-512 register tile, or the AVX2 build): the same
//   bound. Measured on the Zen 4, fp32 training step: 20-256 KiB a row (hidden 64-256, batch
//   4-64, the char-rnn shape, S3) 0.90-0.97x; 256 KiB at batch 2 1.01x; 512 KiB-2 MiB a row
//   (hidden 128-512, batch 1-4) 1.00-1.05x; imitating an AVX2-only CPU, 20-256 KiB a row
//   0.86-1.02x (NOTES.md, "issue 25, eleventh part"). fp32 on AMX CPUs: not measured, the
//   GEMM.
bool train_projection_in_step(bool bf16, bool amx, int64_t inputs, int64_t hidden,
                              int64_t batch) {
  if (const char* v = std::getenv("FASTLSTM_TRAIN_PROJECTION")) {
    if (std::strcmp(v, "step") == 0) return true;
    if (std::strcmp(v, "gemm") == 0) return false;
  }
  if (!bf16 && fused::amx_usable()) return false;
  const int64_t weight_bytes = (inputs + hidden) * 4 * hidden * (bf16 ? 2 : 4);
  if (!amx) return weight_bytes <= 256 * 1024 * batch;
  const int64_t l2_bytes = l2_cache_bytes();
  const int64_t threads = plan_for(batch, hidden).parts.size();
  return 2 * weight_bytes <= 3 * l2_bytes * threads && weight_bytes <= 96 * 1024 * batch;
}

// The training backward's input gradient inside its steps, into grad_x, where the forward
// computed x W_ih^T in its steps on the register tile (on AMX tiles: the GEMM after).
std::optional<InputGradient> input_gradient_in_steps(const Tensor& x, const Tensor& w_ih,
                                                     const Tensor& grad_x, int64_t hidden,
                                                     int64_t batch) {
  const bool bf16 = x.scalar_type() == at::kBFloat16, amx = bf16 && use_amx<Bf16>();
  if (amx || !train_projection_in_step(bf16, amx, x.size(-1), hidden, batch)) return std::nullopt;
  return InputGradient{w_ih.contiguous(), grad_x};
}

}  // namespace

std::optional<std::tuple<Tensor, Tensor, Tensor, Tensor>> cpu_fused_layer_backward(
    const Tensor& grad_hs, const std::optional<Tensor>& grad_cs, const Tensor& h0_in,
    const Tensor& c0, const Tensor& w_hh, const Tensor& hs_in, const Tensor& cs,
    const Tensor& gates, bool reverse) {
  if (!applies(hs_in, hs_in.size(0))) return std::nullopt;
  const c10::NoGradGuard no_grad;
  const Tensor h0 = h0_in.contiguous(), hs = hs_in.contiguous();
  auto [grad_xproj, grad_h0, grad_c] =
      recurrence_backward(grad_hs, grad_cs, h0, c0, w_hh, hs, cs, gates, reverse, nullptr);
  const Tensor g = grad_xproj.view({-1, grad_xproj.size(2)});
  return std::make_tuple(grad_xproj, grad_h0.to(hs.scalar_type()), grad_c.to(c0.scalar_type()),
                         cpu_weight_gradients(g, {h_prev_rows(h0, hs, reverse)}, use_amx<Bf16>(),
                                              fp32_on_avx2())[0]);
}

std::optional<std::tuple<Tensor, Tensor, Tensor>> cpu_fused_layer_train(
    const Tensor& x, const Tensor& h0_in, const Tensor& c0, const Tensor& w_ih,
    const Tensor& w_hh_in, const std::optional<Tensor>& bias, bool reverse) {
  if (!applies(x, x.size(0))) return std::nullopt;
  const c10::NoGradGuard no_grad;
  const int64_t S = x.size(0), B = x.size(1), I = x.size(2), H = w_hh_in.size(1);
  const Tensor h0 = h0_in.contiguous(), w_hh = w_hh_in.contiguous();
  const auto acc = x.options().dtype(at::kFloat);
  Tensor hs = kernel_output({S, B, H}, x.options());
  Tensor cs = kernel_output({S, B, H}, acc);
  Tensor gates = kernel_output({S, B, 4 * H}, x.options());  // bf16 for bf16: half the bytes
  const bool bf16 = x.scalar_type() == at::kBFloat16, amx = bf16 && use_amx<Bf16>();
  run_forward(input_projection(x, w_ih, bias, H, train_projection_in_step(bf16, amx, I, H, B)),
              h0, c0, w_hh, reverse, hs, cs, gates, false);
  return std::make_tuple(hs, cs, gates);
}

std::optional<std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>>
cpu_fused_layer_train_backward(const Tensor& grad_hs, const std::optional<Tensor>& grad_cs,
                               const FinalStateGrads& final_grads, const Tensor& x_in,
                               const Tensor& h0_in, const Tensor& c0, const Tensor& w_ih,
                               const Tensor& w_hh, const Tensor& hs_in, const Tensor& cs,
                               const Tensor& gates, bool reverse) {
  if (!applies(hs_in, hs_in.size(0))) return std::nullopt;
  const c10::NoGradGuard no_grad;
  const Tensor h0 = h0_in.contiguous(), hs = hs_in.contiguous(), x = x_in.contiguous();
  const int64_t S = x.size(0), B = x.size(1), I = x.size(2), H = w_hh.size(1);
  Tensor grad_bias = at::empty({4 * H}, hs.options().dtype(at::kFloat));
  Tensor grad_x = kernel_output({S, B, I}, x.options());
  const std::optional<InputGradient> dx = input_gradient_in_steps(x, w_ih, grad_x, H, B);
  auto [grad_xproj, grad_h0, grad_c] =
      recurrence_backward(grad_hs, grad_cs, h0, c0, w_hh, hs, cs, gates, reverse, &grad_bias,
                          nullptr, final_grads, dx ? &*dx : nullptr);
  const Tensor g = grad_xproj.view({S * B, 4 * H});
  if (!dx) {
    Tensor grad_x_flat = grad_x.view({S * B, I});
    at::mm_out(grad_x_flat, g, w_ih);
  }
  auto grad_w = cpu_weight_gradients(g, {{{x.view({S * B, I}), 0}}, h_prev_rows(h0, hs, reverse)},
                                     use_amx<Bf16>(), fp32_on_avx2());
  return std::make_tuple(grad_x, grad_h0.to(hs.scalar_type()), grad_c.to(c0.scalar_type()),
                         grad_w[0], grad_w[1], grad_bias.to(hs.scalar_type()));
}

std::optional<std::tuple<Tensor, Tensor, Tensor>> cpu_fused_layer_embedded(
    const Tensor& ids_in, const Tensor& table_in, const Tensor& h0_in, const Tensor& c0,
    const Tensor& w_hh_in, bool reverse) {
  if (!applies(table_in, ids_in.size(0))) return std::nullopt;
  const c10::NoGradGuard no_grad;
  const int64_t S = ids_in.size(0), B = ids_in.size(1), H = w_hh_in.size(1);
  const Tensor h0 = h0_in.contiguous(), w_hh = w_hh_in.contiguous();
  const auto acc = table_in.options().dtype(at::kFloat);
  Tensor hs = kernel_output({S, B, H}, table_in.options());
  Tensor cs = kernel_output({S, B, H}, acc);
  Tensor gates = kernel_output({S, B, 4 * H}, table_in.options());
  StepInput in{table_in.contiguous(), {}, {}, {}, ids_in.contiguous()};
  run_forward(in, h0, c0, w_hh, reverse, hs, cs, gates, false);
  return std::make_tuple(hs, cs, gates);
}

std::optional<std::tuple<Tensor, Tensor, Tensor, Tensor>> cpu_fused_layer_embedded_backward(
    const Tensor& grad_hs, const std::optional<Tensor>& grad_cs,
    const FinalStateGrads& final_grads, const Tensor& ids_in, int64_t rows, const Tensor& h0_in,
    const Tensor& c0, const Tensor& w_hh, const Tensor& hs_in, const Tensor& cs,
    const Tensor& gates, bool reverse) {
  if (!applies(hs_in, hs_in.size(0))) return std::nullopt;
  const c10::NoGradGuard no_grad;
  const Tensor h0 = h0_in.contiguous(), hs = hs_in.contiguous(), ids = ids_in.contiguous();
  const int64_t H = w_hh.size(1);
  Tensor grad_table = at::empty({rows, 4 * H}, hs.options().dtype(at::kFloat));
  auto [grad_xproj, grad_h0, grad_c] = recurrence_backward(
      grad_hs, grad_cs, h0, c0, w_hh, hs, cs, gates, reverse, &grad_table, &ids, final_grads);
  const Tensor g = grad_xproj.view({-1, 4 * H});
  return std::make_tuple(grad_table.to(hs.scalar_type()), grad_h0.to(hs.scalar_type()),
                         grad_c.to(c0.scalar_type()),
                         cpu_weight_gradients(g, {h_prev_rows(h0, hs, reverse)}, use_amx<Bf16>(),
                                              fp32_on_avx2())[0]);
}

namespace {

// Each sequence's last row in packed hs / cs: forward, its last step's; reverse, step 0's.
Tensor last_rows(const std::vector<int64_t>& offsets, int64_t batch, bool reverse) {
  Tensor rows = at::empty({batch}, at::TensorOptions().dtype(at::kLong));
  int64_t* r = rows.data_ptr<int64_t>();
  const int64_t S = int64_t(offsets.size()) - 1;
  for (int64_t t = reverse ? 0 : S - 1, b = 0; b < batch; ++b) {
    if (!reverse)
      while (offsets[t + 1] - offsets[t] <= b) --t;  // the last step that has row b
    r[b] = offsets[t] + b;
  }
  return rows;
}

// h_{t-1} of every packed row (h0's row where the sequence starts there), so that W_hh's
// gradient is one GEMM over all rows.
template <typename T>
Tensor packed_h_prev(const Tensor& hs, const Tensor& h0, const std::vector<int64_t>& offsets,
                     bool reverse) {
  const int64_t S = int64_t(offsets.size()) - 1, H = hs.size(1);
  Tensor out = kernel_output(hs.sizes(), hs.options());
  const T *src = ptr<T>(hs), *init = ptr<T>(h0);
  T* dst = ptr<T>(out);
  at::parallel_for(0, S, 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t rows = offsets[t + 1] - offsets[t], tp = reverse ? t + 1 : t - 1;
      const int64_t from_hs = tp < 0 || tp >= S ? 0 : std::min(rows, offsets[tp + 1] - offsets[tp]);
      T* d = dst + offsets[t] * H;
      if (from_hs > 0) std::memcpy(d, src + offsets[tp] * H, from_hs * H * sizeof(T));
      std::memcpy(d + from_hs * H, init + from_hs * H, (rows - from_hs) * H * sizeof(T));
    }
  });
  return out;
}

}  // namespace

std::optional<std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor>> cpu_fused_layer_packed(
    const Tensor& x_in, const Tensor& batch_sizes, const Tensor& h0_in, const Tensor& c0,
    const Tensor& w_ih, const Tensor& w_hh_in, const std::optional<Tensor>& bias, bool reverse,
    bool train) {
  if (!enabled_by_env() || !x_in.device().is_cpu() || !cpu_fused_supports(x_in.scalar_type()))
    return std::nullopt;
  const c10::NoGradGuard no_grad;
  const std::vector<int64_t> offsets = packed_offsets(batch_sizes);
  const Tensor x = x_in.contiguous(), h0 = h0_in.contiguous(), w_hh = w_hh_in.contiguous();
  const int64_t N = x.size(0), I = x.size(1), B = h0.size(0), H = w_hh.size(1);
  const auto acc = x.options().dtype(at::kFloat);
  const bool bf16 = x.scalar_type() == at::kBFloat16, amx = bf16 && use_amx<Bf16>();
  const Tensor last = last_rows(offsets, B, reverse);
  Tensor hs = kernel_output({N, H}, x.options());
  if (train) {
    Tensor cs = kernel_output({N, H}, acc);
    Tensor gates = kernel_output({N, 4 * H}, x.options());  // bf16 for bf16, as the train op
    run_forward(input_projection(x, w_ih, bias, H, train_projection_in_step(bf16, amx, I, H, B)),
                h0, c0, w_hh, reverse, hs, cs, gates, false, &offsets);
    return std::make_tuple(hs, hs.index_select(0, last), cs.index_select(0, last), cs, gates);
  }
  Tensor c_state = kernel_output({B, H}, acc);
  const bool first = projection_first(N, (w_ih.numel() + w_hh.numel()) * x.element_size(), B, H,
                                      amx, !bf16 && fp32_on_avx2());
  run_forward(input_projection(x, w_ih, bias, H, !first), h0, c0, w_hh, reverse, hs, c_state,
              Tensor(), true, &offsets);
  return std::make_tuple(hs, hs.index_select(0, last), c_state, at::empty({0}, acc),
                         at::empty({0}, x.options()));
}

std::optional<std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>>
cpu_fused_layer_packed_backward(const Tensor& grad_hs, const std::optional<Tensor>& grad_cs_in,
                                const std::optional<Tensor>& grad_h_n,
                                const std::optional<Tensor>& grad_c_n, const Tensor& x_in,
                                const Tensor& batch_sizes, const Tensor& h0_in, const Tensor& c0,
                                const Tensor& w_ih, const Tensor& w_hh_in, const Tensor& hs_in,
                                const Tensor& cs_in, const Tensor& gates_in, bool reverse) {
  if (!enabled_by_env() || !x_in.device().is_cpu() || !cpu_fused_supports(x_in.scalar_type()))
    return std::nullopt;
  const c10::NoGradGuard no_grad;
  const std::vector<int64_t> offsets = packed_offsets(batch_sizes);
  const Tensor x = x_in.contiguous(), h0 = h0_in.contiguous(), w_hh = w_hh_in.contiguous();
  const Tensor hs = hs_in.contiguous(), cs = cs_in.contiguous(), gates = gates_in.contiguous();
  const int64_t N = x.size(0), B = h0.size(0), H = w_hh.size(1);
  const at::ScalarType dtype = x.scalar_type();
  const auto acc = x.options().dtype(at::kFloat);
  FASTLSTM_CHECK(hs.sizes() == at::IntArrayRef({N, H}) && cs.sizes() == hs.sizes() &&
                     gates.sizes() == at::IntArrayRef({N, 4 * H}) && grad_hs.sizes() == hs.sizes(),
                 "fastlstm packed backward: grad_hs, hs and cs must be [", N, ", ", H,
                 "] and gates [", N, ", ", 4 * H, "] (what the forward returned with train)");
  FASTLSTM_CHECK(hs.scalar_type() == dtype && cs.scalar_type() == at::kFloat &&
                     gates.scalar_type() == dtype,
                 "fastlstm packed backward: hs and gates in x's dtype, cs in float32");
  std::optional<Tensor> grad_cs;
  if (grad_cs_in.has_value() && grad_cs_in->defined()) {
    FASTLSTM_CHECK(grad_cs_in->sizes() == cs.sizes(), "fastlstm: grad_cs must be shaped like cs");
    grad_cs = grad_cs_in->to(dtype).contiguous();
  }
  Tensor g = grad_hs.to(dtype).contiguous();
  if (grad_h_n.has_value() && grad_h_n->defined())  // h_n: each sequence's last row of hs
    g = g.index_add(0, last_rows(offsets, B, reverse), grad_h_n->to(dtype));
  Tensor grad_c = at::zeros({B, H}, acc);  // the carried dL/dc, dL/dc_n in
  if (grad_c_n.has_value() && grad_c_n->defined()) grad_c.copy_(*grad_c_n);
  const Tensor c0_acc = c0.to(at::kFloat).contiguous();
  Tensor grad_xproj = kernel_output({N, 4 * H}, x.options());
  Tensor grad_h0 = kernel_output({B, H}, acc);
  Tensor grad_bias = at::empty({4 * H}, acc);
  Tensor grad_x = kernel_output(x.sizes(), x.options());
  const std::optional<InputGradient> dx = input_gradient_in_steps(x, w_ih, grad_x, H, B);
  const InputGradient* dx_in_steps = dx ? &*dx : nullptr;
  Tensor h_prev;
  if (dtype == at::kFloat) {
    run_backward<float>(w_hh, gates, cs, c0_acc, g, grad_cs, grad_c, grad_xproj, grad_h0,
                        reverse, &grad_bias, nullptr, &offsets, nullptr, dx_in_steps);
    h_prev = packed_h_prev<float>(hs, h0, offsets, reverse);
  } else {
    run_backward<Bf16>(w_hh, gates, cs, c0_acc, g, grad_cs, grad_c, grad_xproj, grad_h0,
                       reverse, &grad_bias, nullptr, &offsets, nullptr, dx_in_steps);
    h_prev = packed_h_prev<Bf16>(hs, h0, offsets, reverse);
  }
  if (dx_in_steps == nullptr) at::mm_out(grad_x, grad_xproj, w_ih);
  auto grad_w = cpu_weight_gradients(grad_xproj, {{{x, 0}}, {{h_prev, 0}}}, use_amx<Bf16>(),
                                     fp32_on_avx2());
  return std::make_tuple(grad_x, grad_h0.to(dtype), grad_c.to(c0.scalar_type()), grad_w[0],
                         grad_w[1], grad_bias.to(dtype));
}

#else  // not x86-64 GCC/Clang: the per-step GEMM loop everywhere

bool cpu_fused_supports(at::ScalarType) { return false; }
bool cpu_fused_enabled(at::ScalarType) { return false; }
bool cpu_fused_amx() { return false; }
Tensor cpu_fused_pack(const Tensor&, int64_t, int) {
  FASTLSTM_CHECK(false, "fastlstm: the fused layer needs x86-64 with AVX-512");
  return {};
}
std::optional<std::tuple<Tensor, Tensor, Tensor>> cpu_fused_layer_forward(
    const Tensor&, const Tensor&, const Tensor&, const Tensor&, bool) {
  return std::nullopt;
}
std::optional<std::tuple<Tensor, Tensor>> cpu_fused_layer_inference(
    const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&,
    const std::optional<Tensor>&, bool) {
  return std::nullopt;
}
std::optional<std::tuple<Tensor, Tensor, Tensor, Tensor>> cpu_fused_layer_backward(
    const Tensor&, const std::optional<Tensor>&, const Tensor&, const Tensor&, const Tensor&,
    const Tensor&, const Tensor&, const Tensor&, bool) {
  return std::nullopt;
}
std::optional<std::tuple<Tensor, Tensor, Tensor>> cpu_fused_stack_inference(
    const Tensor&, const Tensor&, const Tensor&, at::TensorList, at::TensorList, at::TensorList,
    at::TensorList, at::ScalarType) {
  return std::nullopt;
}
std::optional<std::tuple<Tensor, Tensor, Tensor>> cpu_fused_layer_train(
    const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&,
    const std::optional<Tensor>&, bool) {
  return std::nullopt;
}
std::optional<std::tuple<Tensor, Tensor, Tensor>> cpu_fused_layer_embedded(
    const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&, bool) {
  return std::nullopt;
}
std::optional<std::tuple<Tensor, Tensor, Tensor, Tensor>> cpu_fused_layer_embedded_backward(
    const Tensor&, const std::optional<Tensor>&, const FinalStateGrads&, const Tensor&, int64_t,
    const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&,
    bool) {
  return std::nullopt;
}
std::optional<std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>>
cpu_fused_layer_train_backward(const Tensor&, const std::optional<Tensor>&,
                               const FinalStateGrads&, const Tensor&, const Tensor&,
                               const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                               const Tensor&, const Tensor&, bool) {
  return std::nullopt;
}

std::optional<std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor>> cpu_fused_layer_packed(
    const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&,
    const std::optional<Tensor>&, bool, bool) {
  return std::nullopt;
}
std::optional<std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>>
cpu_fused_layer_packed_backward(const Tensor&, const std::optional<Tensor>&,
                                const std::optional<Tensor>&,
                                const std::optional<Tensor>&, const Tensor&, const Tensor&,
                                const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                                const Tensor&, const Tensor&, const Tensor&, bool) {
  return std::nullopt;
}

#endif

}  // namespace fastlstm
