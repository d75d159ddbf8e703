// Persistent forward of one LSTM layer, one direction: ONE cooperative launch runs every
// time step, W_hh stays in shared memory for the whole sequence, a grid-wide barrier
// separates steps. Same outputs as the step loop, so the existing backward trains through it.
// fp32 arithmetic on CUDA cores. Versions:
//   1 (p1): one (batch row, unit) pair per thread, h_{t-1} read per k from global memory.
//   2 (p2): register tiles of 4 rows x 4 gates, k split across threads (lstm_persistent.h).
//   3 (p3, launch_persistent_stack): p2's tiles for a whole stack of layers in one launch,
//       the layers as a wavefront (S + L - 1 grid barriers; StackTiling in lstm_persistent.h).
// Arguments (PersistentForwardArgs, shapes documented there) in lstm_persistent.h.
#pragma once

#include <cuda_runtime_api.h>

#include "lstm_persistent.h"

namespace fastlstm {

// Launches `version` (1 or 2) on `stream`. Returns cudaErrorNotSupported when the weights do
// not fit on chip or the grid cannot be resident at once (the caller then runs the step
// loop), cudaErrorInvalidValue for an unknown version, else the launch's error.
template <typename T, typename Acc>
cudaError_t launch_persistent_forward(const PersistentForwardArgs<T, Acc>& args, int version,
                                      cudaStream_t stream);

// p3: every layer of `args` in one launch. Same returns as above (cudaErrorInvalidValue for
// a layer count outside 1..kMaxStackLayers).
template <typename T, typename Acc>
cudaError_t launch_persistent_stack(const PersistentStackArgs<T, Acc>& args,
                                    cudaStream_t stream);

}  // namespace fastlstm
