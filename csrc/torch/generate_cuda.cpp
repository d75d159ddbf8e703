// The generate op on CUDA tensors, from pieces already run on a GPU (the step kernel, cuBLAS
// through ATen) plus the draw kernel (core/generate_cuda.cu): per character, draw and
// gather the first layer's input projection, then per layer one step (its GEMM and the
// pointwise kernel) and the next layer's input projection, then the decoder. A call's steps
// are captured as one CUDA graph (cuda_graphs.h) and replayed for later chunks; the seed,
// offset and sampling options are read from device memory, so a replay takes new ones.
// NOT YET RUN ON A GPU: fastlstm.model.generate keeps CUDA models on its per-character loop
// until a recorded run shows this correct (tests/test_gpu.py, benchmarks).
#include <ATen/cuda/CUDAContext.h>
#include <c10/core/GradMode.h>
#include <c10/cuda/CUDAGuard.h>

#include "../core/generate_cuda.h"
#include "check.h"
#include "cuda_graphs.h"
#include "generate.h"

namespace fastlstm {

std::tuple<Tensor, Tensor, Tensor, Tensor> generate_cuda(
    const Tensor& logits, const Tensor& h, const Tensor& c, const Tensor& embed,
    at::TensorList w_ih, at::TensorList w_hh, at::TensorList b_ih, at::TensorList b_hh,
    const Tensor& head_w, const std::optional<Tensor>& head_b, int64_t steps, double temperature,
    std::optional<int64_t> top_k, double top_p, int64_t seed, int64_t offset,
    const std::optional<Tensor>& forced, bool bf16) {
  const c10::cuda::CUDAGuard guard(logits.device());
  const c10::NoGradGuard no_grad;
  FASTLSTM_CHECK(!bf16, "fastlstm generate: bf16=True is CPU only (CUDA runs float32)");
  check_generate_inputs(logits, h, c, embed, w_ih, w_hh, b_ih, b_hh, head_w, head_b, steps,
                        temperature, top_k, top_p, forced);
  const int64_t L = h.size(0), N = h.size(1), H = h.size(2), V = logits.size(1);
  const auto opts = logits.options();
  const auto bias = [&](int64_t l) { return layer_bias(b_ih, b_hh, l, H, opts); };
  // Inputs of the graphed loop, in this order: logits, h, c, keys, options, forced (or
  // undefined), table, head_w, head_b (or undefined), then per layer w_hh, bias and (l > 0) w_ih.
  std::vector<Tensor> in{
      logits.contiguous(), h.contiguous(), c.contiguous(),
      at::tensor({seed, offset}, opts.dtype(at::kLong).device(at::kCPU)).to(logits.device()),
      at::tensor({static_cast<float>(temperature), static_cast<float>(top_k.value_or(0)),
                  static_cast<float>(top_p)},
                 opts.device(at::kCPU))
          .to(logits.device()),
      forced.has_value() && forced->defined() ? forced->contiguous() : Tensor(),
      input_table(embed, w_ih[0], bias(0)),
      head_w.contiguous(),
      head_b.has_value() && head_b->defined() ? head_b->contiguous() : Tensor()};
  for (int64_t l = 0; l < L; ++l) {
    in.push_back(w_hh[l].contiguous());
    in.push_back(bias(l));
    if (l > 0) in.push_back(w_ih[l].contiguous());
  }
  const LayerLoop loop = [L, N, H, V, steps](const std::vector<Tensor>& t) {
    const Tensor& table = t[6];
    const Tensor& head_weight = t[7];
    const Tensor& head_bias = t[8];
    Tensor logits_now = t[0].clone();
    std::vector<Tensor> hs, cs;
    for (int64_t l = 0; l < L; ++l) {
      hs.push_back(t[1][l]);
      cs.push_back(t[2][l]);
    }
    Tensor ids = at::empty({N, steps}, t[0].options().dtype(at::kLong));
    Tensor xproj = at::empty({N, 4 * H}, t[0].options());
    Tensor prob = at::empty({N, V}, t[0].options());
    Tensor order = at::empty({N, V}, t[0].options().dtype(at::kInt));
    const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
    for (int64_t s = 0; s < steps; ++s) {
      const DrawArgs args{logits_now.data_ptr<float>(),
                          table.data_ptr<float>(),
                          t[3].data_ptr<int64_t>(),
                          t[4].data_ptr<float>(),
                          t[5].defined() ? t[5].data_ptr<int64_t>() : nullptr,
                          ids.data_ptr<int64_t>(),
                          xproj.data_ptr<float>(),
                          prob.data_ptr<float>(),
                          order.data_ptr<int32_t>(),
                          N, V, H, steps, s};
      const cudaError_t err = launch_draw(args, stream);
      FASTLSTM_CHECK(err == cudaSuccess, "fastlstm: generate's draw failed: ",
                     cudaGetErrorString(err));
      Tensor x = xproj;
      for (int64_t l = 0, k = 9; l < L; ++l) {
        const Tensor& w_hh_l = t[k];
        const Tensor& bias_l = t[k + 1];
        if (l > 0) x = at::addmm(bias_l, x, t[k + 2].t());
        auto [h_new, c_new, gates] = step_forward(x, hs[l], cs[l], w_hh_l, cuda_step_kernels());
        hs[l] = h_new;
        cs[l] = c_new;
        x = h_new;
        k += l == 0 ? 2 : 3;
      }
      logits_now = head_bias.defined() ? at::addmm(head_bias, x, head_weight.t())
                                       : at::mm(x, head_weight.t());
    }
    return std::vector<Tensor>{ids, logits_now, at::stack(hs), at::stack(cs)};
  };
  const auto out = steps > 0 ? run_graphed("generate", steps, in, loop) : loop(in);
  return {out[0], out[1], out[2], out[3]};
}

}  // namespace fastlstm
