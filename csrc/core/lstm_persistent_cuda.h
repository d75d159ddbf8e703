// Persistent forward of one LSTM layer, one direction (p3/p4: of a unidirectional stack): ONE
// cooperative launch runs every time step, the weights stay in shared memory for the whole
// sequence, a grid-wide barrier separates steps (p2-p4 with args.step_done: per-step counters
// instead, the dataflow sync of lstm_persistent.h). Same outputs as the step loop, so the
// existing backward trains through it. fp32 arithmetic on CUDA cores (p4: tensor cores).
// Versions:
//   1 (p1): one (batch row, unit) pair per thread, h_{t-1} read per k from global memory.
//   2 (p2): register tiles of 4 rows x 4 gates, k split across threads (lstm_persistent.h).
//   3 (p3, launch_persistent_stack): p2's tiles for a whole stack of layers in one launch,
//       the layers as a wavefront (S + L - 1 grid barriers; StackTiling in lstm_persistent.h).
//   4 (p4): p3 with its products on tensor cores (mma.sync), sm_80 and up: bf16 and fp16,
//       and fp32 as TF32 where the caller allows it (lstm_persistent_mma.h); fp64 runs p3.
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

// p3 (p2 for one layer; p4 if `tensor_cores` and T is not double; for float that means TF32
// inputs): every layer of `args` in one launch. batch_parts: the batch split over that many
// blocks per unit slice (split_grid). Same returns as above (cudaErrorInvalidValue for a
// layer count outside 1..kMaxStackLayers; cudaErrorNotSupported for p4 below compute
// capability 8.0).
template <typename T, typename Acc>
cudaError_t launch_persistent_stack(const PersistentStackArgs<T, Acc>& args, bool tensor_cores,
                                    int batch_parts, cudaStream_t stream);

}  // namespace fastlstm
