// CUDA registrations of the fastlstm ops: the shared layer loop (layer.cpp) with the
// CUDA pointwise kernels of core/lstm_step_cuda.cu. Launches go on the current stream;
// every launch's error is checked; nothing synchronises the host.
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/core/GradMode.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cstdlib>

#include "../core/lstm_persistent_cuda.h"
#include "../core/lstm_step_cuda.h"
#include "check.h"
#include "cuda_graphs.h"
#include "generate.h"
#include "layer.h"
#include "stack.h"

namespace fastlstm {
namespace {

// ATen's element types -> the CUDA types the framework-free kernels are built for.
template <typename T> struct CudaType { using type = T; };
template <> struct CudaType<at::Half> { using type = __half; };
template <> struct CudaType<at::BFloat16> { using type = __nv_bfloat16; };

void check_launch(cudaError_t err, const char* what) {
  FASTLSTM_CHECK(err == cudaSuccess, "fastlstm: ", what, " failed: ", cudaGetErrorString(err));
}

void cuda_step_forward(const Tensor& xproj, const Tensor& rec, const Tensor& c_prev,
                       const Tensor& gates, const Tensor& c, const Tensor& h) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, xproj.scalar_type(),
                                  "fastlstm_cuda_step_forward", [&] {
    using T = typename CudaType<scalar_t>::type;
    using Acc = at::opmath_type<scalar_t>;
    const StepForwardArgs<T, Acc> args{ptr<T>(xproj), ptr<Acc>(rec), ptr<Acc>(c_prev),
                                       ptr<Acc>(gates), ptr<Acc>(c), ptr<T>(h),
                                       h.size(0),     h.size(1)};
    check_launch(launch_step_forward(args, at::cuda::getCurrentCUDAStream()), "step forward");
  });
}

void cuda_step_backward(const Tensor& gates, const Tensor& c_prev, const Tensor& c,
                        const Tensor& grad_h, const Tensor& grad_h_rec,
                        const std::optional<Tensor>& grad_c, const Tensor& grad_c_carry,
                        const Tensor& grad_pre) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad_h.scalar_type(),
                                  "fastlstm_cuda_step_backward", [&] {
    using T = typename CudaType<scalar_t>::type;
    using Acc = at::opmath_type<scalar_t>;
    const StepBackwardArgs<T, Acc> args{ptr<Acc>(gates),      ptr<Acc>(c_prev),
                                        ptr<Acc>(c),          ptr<T>(grad_h),
                                        ptr<Acc>(grad_h_rec), grad_c ? ptr<T>(*grad_c) : nullptr,
                                        ptr<Acc>(grad_c_carry), ptr<T>(grad_pre),
                                        grad_h.size(0),     grad_h.size(1)};
    check_launch(launch_step_backward(args, at::cuda::getCurrentCUDAStream()), "step backward");
  });
}

const StepKernels kCudaKernels{cuda_step_forward, cuda_step_backward};

// Below this many steps a graph saves less than its copies in and out cost (about eight
// launches against two per step).
constexpr int64_t kMinGraphSteps = 8;

std::tuple<Tensor, Tensor, Tensor> layer_cuda(const Tensor& xproj, const Tensor& h0,
                                              const Tensor& c0, const Tensor& w_hh, bool reverse) {
  const c10::cuda::CUDAGuard guard(xproj.device());
  const LayerLoop loop = [reverse](const std::vector<Tensor>& in) {
    const auto [hs, cs, gates] = layer_forward(in[0], in[1], in[2], in[3], reverse, kCudaKernels);
    return std::vector<Tensor>{hs, cs, gates};
  };
  const std::vector<Tensor> in{xproj, h0, c0, w_hh};
  const auto out = xproj.dim() == 3 && xproj.size(0) >= kMinGraphSteps
                       ? run_graphed("lstm_layer", reverse, in, loop)
                       : loop(in);
  return {out[0], out[1], out[2]};
}

std::tuple<Tensor, Tensor, Tensor, Tensor> layer_backward_cuda(
    const Tensor& grad_hs, const std::optional<Tensor>& grad_cs, const Tensor& h0,
    const Tensor& c0, const Tensor& w_hh, const Tensor& hs, const Tensor& cs, const Tensor& gates,
    bool reverse) {
  const c10::cuda::CUDAGuard guard(grad_hs.device());
  const Tensor grad_cs_or_none = grad_cs.has_value() ? *grad_cs : Tensor();
  const LayerLoop loop = [reverse](const std::vector<Tensor>& in) {
    const std::optional<Tensor> grad_c =
        in[1].defined() ? std::optional<Tensor>(in[1]) : std::nullopt;
    const auto [gx, gh0, gc0, gw] =
        layer_backward(in[0], grad_c, in[2], in[3], in[4], in[5], in[6], in[7], reverse,
                       kCudaKernels);
    return std::vector<Tensor>{gx, gh0, gc0, gw};
  };
  const std::vector<Tensor> in{grad_hs, grad_cs_or_none, h0, c0, w_hh, hs, cs, gates};
  const auto out = gates.dim() == 3 && gates.size(0) >= kMinGraphSteps
                       ? run_graphed("lstm_layer_backward", reverse, in, loop)
                       : loop(in);
  return {out[0], out[1], out[2], out[3]};
}

// FASTLSTM_PERSISTENT_VERSION: 1 (default, p1) or 4 (p4: the module runs a whole stack
// through lstm_stack_persistent, a single layer as a stack of one); see
// core/lstm_persistent_cuda.h. (2 and 3 were removed after commit 5f6c790.)
int persistent_version() {
  const int version = env_int("FASTLSTM_PERSISTENT_VERSION", 1, 1, 4);
  FASTLSTM_CHECK(version == 1 || version == 4,
                 "fastlstm: FASTLSTM_PERSISTENT_VERSION must be 1 or 4, got ", int64_t(version));
  return version;
}

// Whether p4 may put this dtype on tensor cores: bf16 and fp16 always; fp32 as TF32 only
// where torch allows TF32 in matmuls (torch.backends.cuda.matmul.allow_tf32, the flag the
// step loop's GEMMs follow); fp64 never.
bool tensor_cores_allowed(at::ScalarType dtype) {
  return dtype == at::kBFloat16 || dtype == at::kHalf ||
         (dtype == at::kFloat && at::globalContext().allowTF32CuBLAS());
}

// Where the persistent kernel cannot run: an error under FASTLSTM_PERSISTENT_STRICT=1 (a
// debugging switch: the GPU tests set it, so a test of the kernel cannot pass by silently
// running the step loop), else a warning (once) before the caller runs the step loop.
void persistent_cannot_run(const char* what, int64_t hidden, int64_t batch) {
  const char* strict = std::getenv("FASTLSTM_PERSISTENT_STRICT");
  FASTLSTM_CHECK(strict == nullptr || strict[0] != '1', "fastlstm: the persistent kernel "
                 "cannot run this ", what, " (hidden ", hidden, ", batch ", batch,
                 ") and FASTLSTM_PERSISTENT_STRICT=1 forbids the fallback");
  TORCH_WARN_ONCE("fastlstm: the persistent kernel cannot run this ", what, " on this GPU "
                  "(weight slices over shared memory, the grid over the multiprocessors, or "
                  "p4 without tensor cores: fp64, fp32 without TF32, below sm_80); "
                  "using the step loop");
}

// Launches the persistent kernel that FASTLSTM_PERSISTENT_VERSION names on st's tensors
// (one_layer: the one-layer op, where version 1 means p1; otherwise p4).
// Returns the launch's error: cudaErrorNotSupported where it cannot run.
cudaError_t launch_persistent(const StackTensors& st, bool reverse, bool one_layer) {
  const int version = persistent_version();
  const bool tensor_cores = tensor_cores_allowed(st.xproj.scalar_type());
  cudaError_t err = cudaSuccess;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, st.xproj.scalar_type(),
                                  "fastlstm_persistent", [&] {
    using T = typename CudaType<scalar_t>::type;
    using Acc = at::opmath_type<scalar_t>;
    PersistentStackArgs<T, Acc> args = stack_args<T, Acc>(st);
    args.reverse = reverse;
    const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
    if (one_layer && version == 1) {
      err = launch_persistent_p1(args, stream);
      return;
    }
    err = launch_persistent_stack(args, tensor_cores, stream);
  });
  return err;
}

// One layer as a stack of one (stack.h's checks, outputs and arguments), in either direction.
std::tuple<Tensor, Tensor, Tensor> layer_persistent_cuda(const Tensor& xproj, const Tensor& h0,
                                                         const Tensor& c0, const Tensor& w_hh,
                                                         bool reverse) {
  const c10::cuda::CUDAGuard guard(xproj.device());
  const c10::NoGradGuard no_grad;
  StackTensors st = prepare_stack(xproj, h0.unsqueeze(0), c0.unsqueeze(0), {}, {}, {w_hh});
  const cudaError_t err = launch_persistent(st, reverse, /*one_layer=*/true);
  if (err == cudaErrorNotSupported) {
    persistent_cannot_run("layer", w_hh.size(1), xproj.size(1));
    return layer_forward(xproj, h0, c0, w_hh, reverse, kCudaKernels);
  }
  check_launch(err, "persistent forward");
  return {st.hs[0], st.cs[0], st.gates[0]};
}

std::tuple<Tensor, Tensor, Tensor> stack_persistent_cuda(const Tensor& xproj, const Tensor& h0,
                                                         const Tensor& c0, at::TensorList w_ih,
                                                         at::TensorList bias,
                                                         at::TensorList w_hh) {
  const c10::cuda::CUDAGuard guard(xproj.device());
  const c10::NoGradGuard no_grad;
  StackTensors st = prepare_stack(xproj, h0, c0, w_ih, bias, w_hh);
  const cudaError_t err = launch_persistent(st, /*reverse=*/false, /*one_layer=*/false);
  if (err == cudaErrorNotSupported) {
    persistent_cannot_run("stack", st.w_hh[0].size(1), st.xproj.size(1));
    stack_by_layers(st, kCudaKernels);
  } else {
    check_launch(err, "persistent stack forward");
  }
  return {st.hs, st.cs, st.gates};
}

std::tuple<Tensor, Tensor, Tensor> step_cuda(const Tensor& xproj, const Tensor& h,
                                             const Tensor& c, const Tensor& w_hh) {
  const c10::cuda::CUDAGuard guard(xproj.device());
  return step_forward(xproj, h, c, w_hh, kCudaKernels);
}

}  // namespace

const StepKernels& cuda_step_kernels() { return kCudaKernels; }

TORCH_LIBRARY_IMPL(fastlstm, CUDA, m) {
  m.impl("lstm_layer", &layer_cuda);
  m.impl("lstm_layer_backward", &layer_backward_cuda);
  m.impl("lstm_step", &step_cuda);
  m.impl("lstm_layer_persistent", &layer_persistent_cuda);
  m.impl("lstm_stack_persistent", &stack_persistent_cuda);
  m.impl("generate", &generate_cuda);
}

}  // namespace fastlstm
