#include "generate.h"

#include <ATen/Config.h>
#include <ATen/Parallel.h>
#include <c10/core/GradMode.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "../core/generate_cpu.h"
#include "check.h"
#include "layer.h"
#include "layer_cpu_fused.h"
#include "weight_cache.h"

namespace fastlstm {

// The op's layer limit (GenerateArgs holds a pointer per layer).
constexpr int64_t kMaxGenerateLayers = 8;

void check_generate_inputs(const Tensor& logits, const Tensor& h, const Tensor& c,
                           const Tensor& embed, at::TensorList w_ih, at::TensorList w_hh,
                           at::TensorList b_ih, at::TensorList b_hh, const Tensor& head_w,
                           const std::optional<Tensor>& head_b, int64_t steps, double temperature,
                           std::optional<int64_t> top_k, double top_p,
                           const std::optional<Tensor>& forced) {
  const int64_t L = static_cast<int64_t>(w_hh.size());
  FASTLSTM_CHECK(L >= 1 && L <= kMaxGenerateLayers &&
                     static_cast<int64_t>(w_ih.size()) == L,
                 "fastlstm generate: 1 to ", int64_t(kMaxGenerateLayers),
                 " layers, as many w_ih as w_hh; got ", int64_t(w_ih.size()), " and ", L);
  FASTLSTM_CHECK((b_ih.empty() && b_hh.empty()) ||
                     (static_cast<int64_t>(b_ih.size()) == L && static_cast<int64_t>(b_hh.size()) == L),
                 "fastlstm generate: b_ih and b_hh: one per layer each, or both empty");
  FASTLSTM_CHECK(logits.dim() == 2 && embed.dim() == 2 && head_w.dim() == 2 && h.dim() == 3,
                 "fastlstm generate: logits [N, V], embed [V, E], head_w [V, H], h [L, N, H]");
  const int64_t N = logits.size(0), V = logits.size(1), E = embed.size(1), H = w_hh[0].size(1);
  FASTLSTM_CHECK(N >= 1 && V >= 1 && H >= 1, "fastlstm generate: empty logits or hidden size");
  std::vector<Tensor> all{logits, h, c, embed, head_w};
  for (const auto* list : {&w_ih, &w_hh, &b_ih, &b_hh})
    for (const Tensor& t : *list) all.push_back(t);
  if (head_b.has_value() && head_b->defined()) all.push_back(*head_b);
  for (const Tensor& t : all)
    FASTLSTM_CHECK(t.device() == logits.device() && t.scalar_type() == at::kFloat,
                   "fastlstm generate: float32 tensors on one device only, got ",
                   t.scalar_type(), " on ", t.device(), " with logits on ", logits.device());
  FASTLSTM_CHECK(h.sizes() == at::IntArrayRef({L, N, H}) && c.sizes() == h.sizes(),
                 "fastlstm generate: h and c must be [layers, samples, hidden] = [", L, ", ", N,
                 ", ", H, "], got ", h.sizes(), " and ", c.sizes());
  FASTLSTM_CHECK(embed.size(0) == V && head_w.sizes() == at::IntArrayRef({V, H}),
                 "fastlstm generate: embed must be [", V, ", E] and head_w [", V, ", ", H,
                 "], got ", embed.sizes(), " and ", head_w.sizes());
  for (int64_t l = 0; l < L; ++l) {
    FASTLSTM_CHECK(w_ih[l].sizes() == at::IntArrayRef({4 * H, l == 0 ? E : H}) &&
                       w_hh[l].sizes() == at::IntArrayRef({4 * H, H}),
                   "fastlstm generate: layer ", l, ": w_ih must be [", 4 * H, ", ",
                   l == 0 ? E : H, "] and w_hh [", 4 * H, ", ", H, "], got ", w_ih[l].sizes(),
                   " and ", w_hh[l].sizes());
    if (!b_ih.empty())
      FASTLSTM_CHECK(b_ih[l].sizes() == at::IntArrayRef({4 * H}) && b_hh[l].sizes() == b_ih[l].sizes(),
                     "fastlstm generate: layer ", l, ": biases must be [", 4 * H, "]");
  }
  if (head_b.has_value() && head_b->defined())
    FASTLSTM_CHECK(head_b->sizes() == at::IntArrayRef({V}), "fastlstm generate: head_b must be [",
                   V, "], got ", head_b->sizes());
  FASTLSTM_CHECK(steps >= 0, "fastlstm generate: steps must be >= 0, got ", steps);
  FASTLSTM_CHECK(std::isfinite(temperature) && temperature >= 0,
                 "fastlstm generate: temperature must be finite and >= 0, got ",
                 std::to_string(temperature));
  FASTLSTM_CHECK(!top_k.has_value() || *top_k >= 1, "fastlstm generate: top_k must be >= 1, got ",
                 top_k.value_or(0));
  FASTLSTM_CHECK(top_p > 0 && top_p <= 1, "fastlstm generate: top_p must be in (0, 1], got ",
                 std::to_string(top_p));
  if (forced.has_value() && forced->defined()) {
    FASTLSTM_CHECK(forced->scalar_type() == at::kLong && forced->device() == logits.device() &&
                       forced->sizes() == at::IntArrayRef({N, steps}),
                   "fastlstm generate: forced must be int64 [", N, ", ", steps, "] on ",
                   logits.device());
    if (forced->numel() > 0)
      FASTLSTM_CHECK(forced->min().item<int64_t>() >= 0 && forced->max().item<int64_t>() < V,
                     "fastlstm generate: forced ids must be in [0, ", V, ")");
  }
}

Tensor layer_bias(at::TensorList b_ih, at::TensorList b_hh, int64_t layer, int64_t hidden,
                  const at::TensorOptions& opts) {
  return b_ih.empty() ? at::zeros({4 * hidden}, opts) : (b_ih[layer] + b_hh[layer]).contiguous();
}

Tensor input_table(const Tensor& embed, const Tensor& w_ih0, const Tensor& bias0) {
  return at::addmm(bias0, embed, w_ih0.t()).contiguous();
}

#ifdef FASTLSTM_CPU_FUSED
namespace {

using fused::GenerateArgs;
using fused::GeneratePart;
static_assert(fused::kMaxGenerateLayers == kMaxGenerateLayers, "one layer limit");

// The model's weights in the layouts the step loop reads (generate_cpu.h).
struct PackedModel {
  Tensor table;                   // [V, 4H] float
  std::vector<Tensor> layers;     // packed [W_ih | W_hh] per layer (layer 0: W_hh)
  std::vector<Tensor> bias;       // [4H] float per layer (layer 0's unused: in the table)
  Tensor head, head_bias;         // packed decoder; [V] float or undefined
};

template <typename T>
PackedModel pack_model(const Tensor& embed, at::TensorList w_ih, at::TensorList w_hh,
                       at::TensorList b_ih, at::TensorList b_hh, const Tensor& head_w,
                       const std::optional<Tensor>& head_b, at::ScalarType dtype) {
  const int64_t L = static_cast<int64_t>(w_hh.size()), H = w_hh[0].size(1);
  const int64_t P = fused::padded_width<T>(H);
  PackedModel m;
  m.table = input_table(embed, w_ih[0], layer_bias(b_ih, b_hh, 0, H, embed.options()));
  for (int64_t l = 0; l < L; ++l) {
    Tensor w = w_hh[l].to(dtype);
    if (l > 0) {  // the operand row [x | h], each half padded to P
      w = at::zeros({4 * H, fused::operand_width<T>(l, H)}, embed.options().dtype(dtype));
      w.narrow(1, 0, H).copy_(w_ih[l]);
      w.narrow(1, P, H).copy_(w_hh[l]);
    }
    m.layers.push_back(cpu_fused_pack(w, H, 4));
    m.bias.push_back(layer_bias(b_ih, b_hh, l, H, embed.options()));
  }
  m.head = cpu_fused_pack(head_w.to(dtype), head_w.size(0), 1);
  if (head_b.has_value() && head_b->defined()) m.head_bias = head_b->contiguous();
  return m;
}

// Packed models kept across calls (weight_cache.h): generation calls again every chunk of
// characters with the same weights.
WeightCache<PackedModel>& model_cache() {
  static WeightCache<PackedModel> cache(4);
  return cache;
}

// How the threads share the work: "rows" (each worker its own samples through the whole
// model: they never meet), "units" (each worker a slice of every layer's units and of the
// decoder, for all samples: they meet after each layer and the decoder; OpenMP only, where
// the workers run at once), or one worker. Measured (benchmarks/NOTES.md): units is faster
// than one worker even at 2 x 64, batch 1 (263k vs 213k chars/s), as each core then streams
// half the weights; rows from 8 samples on 2 threads. FASTLSTM_GENERATE_SPLIT=none|rows|units
// overrides (benchmarks).
std::vector<GeneratePart> plan_for(int64_t samples, int64_t hidden, int64_t vocab,
                                   bool* barrier) {
  const int64_t groups = fused::unit_groups(hidden), head_groups = fused::unit_groups(vocab);
  const int64_t threads = at::in_parallel_region() ? 1 : at::get_num_threads();
  const bool units_ok = AT_PARALLEL_OPENMP && groups >= threads;
  std::string split = samples >= 4 * threads             ? "rows"
                      : units_ok                         ? "units"
                      : samples >= threads               ? "rows"
                                                         : "none";
  if (const char* v = std::getenv("FASTLSTM_GENERATE_SPLIT")) split = v;
  if (split == "units" && !units_ok) split = "none";
  std::vector<GeneratePart> parts;
  *barrier = false;
  if (threads > 1 && split == "rows") {
    const int64_t n = std::min(threads, samples);
    for (int64_t k = 0; k < n; ++k)
      parts.push_back({samples * k / n, samples * (k + 1) / n, 0, groups, 0, head_groups, true});
  } else if (threads > 1 && split == "units") {
    for (int64_t k = 0; k < threads; ++k)
      parts.push_back({0, samples, groups * k / threads, groups * (k + 1) / threads,
                       head_groups * k / threads, head_groups * (k + 1) / threads, k == 0});
    *barrier = true;
  } else {
    parts.push_back({0, samples, 0, groups, 0, head_groups, true});
  }
  return parts;
}

template <typename T>
void run(GenerateArgs<T>& a) {
  bool barrier_needed = false;
  const std::vector<GeneratePart> parts =
      plan_for(a.samples, a.hidden, a.vocab, &barrier_needed);
  const int64_t n = static_cast<int64_t>(parts.size());
  fused::StepBarrier barrier(static_cast<int>(n));
  const auto work = [&](int64_t begin, int64_t end) {
    std::vector<int64_t> ids_now(a.samples);
    std::vector<float> prob(a.vocab);
    std::vector<int32_t> order(a.vocab);
    const auto sync = [&](int weight) {
      if (barrier_needed) barrier.arrive_and_wait(weight);
    };
    for (int64_t s = 0; s < a.steps; ++s)
      fused::generate_step(a, parts.data(), begin, end, s, ids_now.data(), prob.data(),
                           order.data(), sync);
  };
  if (n == 1) {
    work(0, 1);
  } else {
    at::parallel_for(0, n, 1, work);
  }
}

template <typename T>
std::tuple<Tensor, Tensor, Tensor, Tensor> generate_typed(
    const Tensor& logits_in, const Tensor& h, const Tensor& c, const Tensor& embed,
    at::TensorList w_ih, at::TensorList w_hh, at::TensorList b_ih, at::TensorList b_hh,
    const Tensor& head_w, const std::optional<Tensor>& head_b, int64_t steps, double temperature,
    std::optional<int64_t> top_k, double top_p, int64_t seed, int64_t offset,
    const std::optional<Tensor>& forced, bool bf16) {
  const int64_t L = h.size(0), N = h.size(1), H = h.size(2), V = logits_in.size(1);
  const at::ScalarType dtype = bf16 ? at::kBFloat16 : at::kFloat;
  std::vector<Tensor> weights{embed, head_w};
  for (const auto* list : {&w_ih, &w_hh, &b_ih, &b_hh})
    for (const Tensor& t : *list) weights.push_back(t);
  if (head_b.has_value() && head_b->defined()) weights.push_back(*head_b);
  const PackedModel m = model_cache().get(weights, bf16 ? 1 : 0, [&] {
    return pack_model<T>(embed, w_ih, w_hh, b_ih, b_hh, head_w, head_b, dtype);
  });

  const int64_t P = fused::padded_width<T>(H);
  std::vector<Tensor> operands, cells;
  GenerateArgs<T> a{};
  a.layers = L;
  a.hidden = H;
  a.vocab = V;
  a.samples = N;
  a.steps = steps;
  a.table = ptr<float>(m.table);
  for (int64_t l = 0; l < L; ++l) {
    Tensor ring = at::zeros({2, N, fused::operand_width<T>(l, H)}, h.options().dtype(dtype));
    ring[0].narrow(1, l == 0 ? 0 : P, H).copy_(h[l]);
    operands.push_back(ring);
    cells.push_back(c[l].contiguous().clone());
    a.packed[l] = ptr<T>(m.layers[l]);
    a.bias[l] = ptr<float>(m.bias[l]);
    a.operand[l] = ptr<T>(ring);
    a.c[l] = ptr<float>(cells.back());
  }
  a.head = ptr<T>(m.head);
  a.head_bias = m.head_bias.defined() ? ptr<float>(m.head_bias) : nullptr;
  Tensor logits = logits_in.contiguous().clone();
  Tensor ids = at::empty({N, steps}, logits.options().dtype(at::kLong));
  Tensor forced_ids = forced.has_value() && forced->defined() ? forced->contiguous() : Tensor();
  a.logits = ptr<float>(logits);
  a.ids = ptr<int64_t>(ids);
  a.forced = forced_ids.defined() ? ptr<int64_t>(forced_ids) : nullptr;
  a.sampling = {static_cast<float>(temperature), top_k.value_or(0), static_cast<float>(top_p)};
  a.seed = static_cast<uint64_t>(seed);
  a.offset = static_cast<uint64_t>(offset);
  run(a);

  std::vector<Tensor> hs;
  for (int64_t l = 0; l < L; ++l)
    hs.push_back(operands[l][steps & 1].narrow(1, l == 0 ? 0 : P, H).to(at::kFloat));
  return {ids, logits, at::stack(hs), at::stack(cells)};
}

}  // namespace

#endif  // FASTLSTM_CPU_FUSED

bool generate_cpu_supports(bool bf16) {
#ifdef FASTLSTM_CPU_FUSED
  return bf16 ? fused::cpu_supports<Bf16>() : fused::cpu_supports<float>();
#else
  (void)bf16;
  return false;  // not x86-64 GCC/Clang
#endif
}

std::tuple<Tensor, Tensor, Tensor, Tensor> generate_cpu(
    const Tensor& logits, const Tensor& h, const Tensor& c, const Tensor& embed,
    at::TensorList w_ih, at::TensorList w_hh, at::TensorList b_ih, at::TensorList b_hh,
    const Tensor& head_w, const std::optional<Tensor>& head_b, int64_t steps, double temperature,
    std::optional<int64_t> top_k, double top_p, int64_t seed, int64_t offset,
    const std::optional<Tensor>& forced, bool bf16) {
  FASTLSTM_CHECK(generate_cpu_supports(bf16), "fastlstm generate: needs an x86-64 CPU with AVX-512",
                 bf16 ? " and AVX512-BF16 (bf16=True)" : "");
  const c10::NoGradGuard no_grad;
  check_generate_inputs(logits, h, c, embed, w_ih, w_hh, b_ih, b_hh, head_w, head_b, steps,
                        temperature, top_k, top_p, forced);
  FASTLSTM_CHECK(logits.device().is_cpu(), "fastlstm generate: CPU tensors here");
#ifdef FASTLSTM_CPU_FUSED
  const auto go = [&](auto tag) {
    using T = decltype(tag);
    return generate_typed<T>(logits, h, c, embed, w_ih, w_hh, b_ih, b_hh, head_w, head_b, steps,
                             temperature, top_k, top_p, seed, offset, forced, bf16);
  };
  return bf16 ? go(Bf16{}) : go(float{});
#else
  return {};  // unreachable: generate_cpu_supports is false
#endif
}

}  // namespace fastlstm
