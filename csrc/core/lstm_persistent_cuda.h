// Persistent forward: ONE cooperative launch runs every time step, the weights stay in shared
// memory for the whole sequence, a grid-wide barrier separates steps. Same outputs as the step
// loop, so the existing backward trains through it. Two versions:
//   1 (p1): one layer; one (batch row, unit) pair per thread on CUDA cores, h_{t-1} read per
//       k from global memory. Ran on an H200 (run 7): correct, slower than the graphed loop.
//   4 (p4): a whole unidirectional stack in one launch, the layers as a wavefront (S + L - 1
//       grid barriers), products on tensor cores (mma.sync), sm_80 and up: bf16 and fp16, and
//       fp32 as TF32 where the caller allows it (lstm_persistent_mma.h). Not yet run on a GPU.
// Arguments (PersistentStackArgs, shapes documented there) in lstm_persistent.h.
#pragma once

#include <cuda_runtime_api.h>

#include "lstm_persistent.h"

namespace fastlstm {

// p1 for one layer (args.layers == 1, either direction) on `stream`. Returns
// cudaErrorNotSupported when the weights do not fit on chip or the grid cannot be resident at
// once (the caller then runs the step loop), cudaErrorInvalidValue for more than one layer,
// else the launch's error.
template <typename T, typename Acc>
cudaError_t launch_persistent_p1(const PersistentStackArgs<T, Acc>& args, cudaStream_t stream);

// p4: every layer of `args` in one launch. `tensor_cores`: the caller allows tensor-core
// products for T (for float that means TF32 inputs). Same returns as above
// (cudaErrorInvalidValue for a layer count outside 1..kMaxStackLayers; cudaErrorNotSupported
// without tensor cores allowed, for double, or below compute capability 8.0).
template <typename T, typename Acc>
cudaError_t launch_persistent_stack(const PersistentStackArgs<T, Acc>& args, bool tensor_cores,
                                    cudaStream_t stream);

}  // namespace fastlstm
