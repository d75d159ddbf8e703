// Persistent forward of one LSTM layer, one direction: ONE cooperative launch runs every
// time step. Each block owns a slice of hidden units and keeps its units' rows of W_hh (all
// four gates) in shared memory for the whole sequence; a grid-wide barrier separates steps.
// First pass (issue 7): fp32 arithmetic on CUDA cores, layers one after another (no
// wavefront yet). Same outputs as the step loop, so the existing backward trains through it.
#pragma once

#include <cuda_runtime_api.h>

#include "lstm_step.h"

namespace fastlstm {

template <typename T, typename Acc>
struct PersistentForwardArgs {
  const T* xproj;   // [S, B, 4H] x W_ih^T + biases, rows [i | f | g | o]
  const T* h0;      // [B, H]
  const Acc* c0;    // [B, H]
  const T* w_hh;    // [4H, H]
  T* hs;            // [S, B, H]  out: h_t
  Acc* cs;          // [S, B, H]  out: c_t
  Acc* gates;       // [S, B, 4H] out: activated gates
  int64_t steps, batch, hidden;
  bool reverse;     // run t = S-1 .. 0
};

// Launches on `stream`. Returns cudaErrorNotSupported when the weights do not fit on chip or
// the grid cannot be resident at once (the caller then runs the step loop), else the launch's
// error.
template <typename T, typename Acc>
cudaError_t launch_persistent_forward(const PersistentForwardArgs<T, Acc>& args,
                                      cudaStream_t stream);

}  // namespace fastlstm
