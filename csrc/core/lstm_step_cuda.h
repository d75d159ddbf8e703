// CUDA launchers for one LSTM step's pointwise work (lstm_step.h has the argument
// shapes). Each launches on `stream`, never synchronises, and returns the launch's
// error (cudaGetLastError after the launch) so the caller can check it.
// Instantiated for T = float, double, __half, __nv_bfloat16 (Acc = float, except double).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include "lstm_step.h"

namespace fastlstm {

template <typename T, typename Acc>
cudaError_t launch_step_forward(const StepForwardArgs<T, Acc>& args, cudaStream_t stream);

template <typename T, typename Acc>
cudaError_t launch_step_backward(const StepBackwardArgs<T, Acc>& args, cudaStream_t stream);

// Comma-separated SM architectures this file was compiled for, e.g. "800,900".
const char* cuda_arch_list();

}  // namespace fastlstm
