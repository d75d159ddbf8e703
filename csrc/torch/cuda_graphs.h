// CUDA-graph replay of the layer loops. The loops are launch-bound: every time step issues a
// cuBLAS GEMM and a pointwise kernel from the host. Captured once per (loop, shapes, dtypes,
// flags, device, stream), a later call costs copies of its inputs in and of its outputs out
// plus one graph launch. Off where it is not safe: while the caller is itself capturing a
// graph (then the loop runs as it is), and when set_cuda_graphs_enabled(false) or
// FASTLSTM_CUDA_GRAPHS=0.
#pragma once

#include <ATen/ATen.h>
#include <functional>
#include <vector>

namespace fastlstm {

// inputs may hold undefined tensors (an absent optional); `loop` gets tensors with the same
// shapes, dtypes and definedness, and must not keep them.
using LayerLoop = std::function<std::vector<at::Tensor>(const std::vector<at::Tensor>& inputs)>;

std::vector<at::Tensor> run_graphed(const char* loop_name, int64_t flags,
                                    const std::vector<at::Tensor>& inputs, const LayerLoop& loop);

// The number of graphs kept (least recently used go first). Each holds its own copies of
// its inputs and outputs plus the loop's temporaries.
constexpr size_t kMaxCachedGraphs = 8;

}  // namespace fastlstm
