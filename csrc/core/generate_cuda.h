// The CUDA generation op's own kernel: each sample's next id drawn from its logits
// (sampling.h's draw, one thread per sample), recorded, and its input projection row
// gathered from the per-id table. The layers and the decoder run on the step kernel and
// cuBLAS (csrc/torch/generate_cuda.cpp). Launches on `stream`, never synchronises, and
// returns the launch's error.
//
// Shapes (N samples, V vocabulary, H hidden, n steps of the call):
//   logits [N, V] float; table [V, 4H] float (embedding W_ih0^T + biases)
//   keys [2] int64 on the device: the seed and the call's offset (read at run time, so a
//   CUDA graph replays with new ones); options [3] float: temperature, top_k (0: none), top_p
//   forced [N, n] int64 or nullptr; ids [N, n] int64 out (column `step`)
//   xproj [N, 4H] float out: the table rows of the ids drawn
//   prob [N, V] float, order [N, V] int32: scratch
#pragma once

#include <cuda_runtime_api.h>
#include <stdint.h>

namespace fastlstm {

struct DrawArgs {
  const float* logits;
  const float* table;
  const int64_t* keys;
  const float* options;
  const int64_t* forced;
  int64_t* ids;
  float* xproj;
  float* prob;
  int32_t* order;
  int64_t samples, vocab, hidden, steps, step;
};

cudaError_t launch_draw(const DrawArgs& args, cudaStream_t stream);

}  // namespace fastlstm
