// CUDA kernels for one LSTM step's pointwise work: one thread per (batch row, unit),
// reading that unit's four gates. Consecutive threads take consecutive units, so every
// load and store of a gate column is coalesced across the warp.
#include "lstm_step_cuda.h"

namespace fastlstm {
namespace {

constexpr int kThreads = 256;

// Grid-stride loops so any B*H fits whatever grid we launch.
template <typename T, typename Acc>
__global__ void step_forward_kernel(const StepForwardArgs<T, Acc> args) {
  const int64_t n = args.batch * args.hidden;
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < n;
       idx += int64_t(gridDim.x) * blockDim.x)
    step_forward_element(args, idx / args.hidden, idx % args.hidden);
}

template <typename T, typename Acc>
__global__ void step_backward_kernel(const StepBackwardArgs<T, Acc> args) {
  const int64_t n = args.batch * args.hidden;
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < n;
       idx += int64_t(gridDim.x) * blockDim.x) {
    if (args.grad_c)  // the same for every thread: no divergence
      step_backward_element<true>(args, idx / args.hidden, idx % args.hidden);
    else
      step_backward_element<false>(args, idx / args.hidden, idx % args.hidden);
  }
}

unsigned grid_for(int64_t n) {
  const int64_t blocks = (n + kThreads - 1) / kThreads;
  return static_cast<unsigned>(blocks < 65535 ? (blocks > 0 ? blocks : 1) : 65535);
}

}  // namespace

template <typename T, typename Acc>
cudaError_t launch_step_forward(const StepForwardArgs<T, Acc>& args, cudaStream_t stream) {
  step_forward_kernel<T, Acc><<<grid_for(args.batch * args.hidden), kThreads, 0, stream>>>(args);
  return cudaGetLastError();
}

template <typename T, typename Acc>
cudaError_t launch_step_backward(const StepBackwardArgs<T, Acc>& args, cudaStream_t stream) {
  step_backward_kernel<T, Acc><<<grid_for(args.batch * args.hidden), kThreads, 0, stream>>>(args);
  return cudaGetLastError();
}

#define FASTLSTM_INSTANTIATE(T, Acc)                                                         \
  template cudaError_t launch_step_forward<T, Acc>(const StepForwardArgs<T, Acc>&,         \
                                                   cudaStream_t);                          \
  template cudaError_t launch_step_backward<T, Acc>(const StepBackwardArgs<T, Acc>&, cudaStream_t);
FASTLSTM_INSTANTIATE(float, float)
FASTLSTM_INSTANTIATE(double, double)
FASTLSTM_INSTANTIATE(__half, float)
FASTLSTM_INSTANTIATE(__nv_bfloat16, float)
#undef FASTLSTM_INSTANTIATE

#define FASTLSTM_STR_(...) #__VA_ARGS__
#define FASTLSTM_STR(...) FASTLSTM_STR_(__VA_ARGS__)
const char* cuda_arch_list() {
#ifdef __CUDA_ARCH_LIST__
  return FASTLSTM_STR(__CUDA_ARCH_LIST__);
#else
  return "unknown";
#endif
}

}  // namespace fastlstm
