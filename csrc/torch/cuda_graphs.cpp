#include "cuda_graphs.h"

#include <ATen/cuda/CUDAEvent.h>
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <list>
#include <memory>
#include <mutex>
#include <string>
#include <utility>

#include "layer.h"

namespace fastlstm {
namespace {

struct CachedGraph {
  std::vector<at::Tensor> inputs;   // the graph reads these: each call copies into them
  std::vector<at::Tensor> outputs;  // the graph writes these, in its private memory pool
  at::cuda::CUDAGraph graph;
  std::mutex in_use;                // copy in, replay, copy out: one caller at a time
};

std::mutex cache_mutex;
std::list<std::pair<std::string, std::shared_ptr<CachedGraph>>> cache;  // most recent first

std::string key_of(const char* loop_name, int64_t flags, const std::vector<at::Tensor>& inputs,
                   const c10::cuda::CUDAStream& stream) {
  std::string key = std::string(loop_name) + "|" + std::to_string(flags) + "|" +
                    std::to_string(stream.device_index()) + "|" + std::to_string(stream.id());
  for (const auto& t : inputs) {
    key += "|";
    if (!t.defined()) {
      key += "none";
      continue;
    }
    key += c10::toString(t.scalar_type());
    for (int64_t s : t.sizes()) key += "," + std::to_string(s);
  }
  return key;
}

std::shared_ptr<CachedGraph> capture(const std::vector<at::Tensor>& inputs, const LayerLoop& loop,
                                     const c10::cuda::CUDAStream& caller) {
  auto entry = std::make_shared<CachedGraph>();
  for (const auto& t : inputs)
    entry->inputs.push_back(t.defined() ? t.contiguous().clone() : at::Tensor());
  // Capture needs a stream of its own; it starts after the caller's work so far.
  const c10::cuda::CUDAStream side = c10::cuda::getStreamFromPool(false, caller.device_index());
  at::cuda::CUDAEvent ready;
  ready.record(caller);
  ready.block(side);
  {
    const c10::cuda::CUDAStreamGuard on_side(side);
    // One plain run first: it checks the inputs (so no check can fail mid-capture) and sets
    // up cuBLAS's handle and workspace for this stream outside the capture.
    loop(entry->inputs);
    // Thread-local: autograd runs the backward on its own thread, and another thread's CUDA
    // calls must not break this capture.
    entry->graph.capture_begin({0, 0}, cudaStreamCaptureModeThreadLocal);
    entry->outputs = loop(entry->inputs);
    entry->graph.capture_end();
  }
  at::cuda::CUDAEvent done;
  done.record(side);
  done.block(caller);
  return entry;
}

std::vector<at::Tensor> replay(CachedGraph& entry) {
  entry.graph.replay();
  std::vector<at::Tensor> outputs;
  for (const auto& t : entry.outputs) outputs.push_back(t.clone());  // the next replay reuses them
  return outputs;
}

}  // namespace

std::vector<at::Tensor> run_graphed(const char* loop_name, int64_t flags,
                                    const std::vector<at::Tensor>& inputs, const LayerLoop& loop) {
  const c10::cuda::CUDAStream stream = c10::cuda::getCurrentCUDAStream();
  cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
  C10_CUDA_CHECK(cudaStreamIsCapturing(stream.stream(), &status));
  if (!cuda_graphs_enabled() || status != cudaStreamCaptureStatusNone) return loop(inputs);

  const std::string key = key_of(loop_name, flags, inputs, stream);
  std::shared_ptr<CachedGraph> entry;
  {
    const std::lock_guard<std::mutex> lock(cache_mutex);
    for (auto it = cache.begin(); it != cache.end(); ++it)
      if (it->first == key) {
        entry = it->second;
        cache.splice(cache.begin(), cache, it);  // now the most recent
        break;
      }
  }
  if (entry) {
    const std::lock_guard<std::mutex> lock(entry->in_use);
    for (size_t k = 0; k < inputs.size(); ++k)
      if (inputs[k].defined()) entry->inputs[k].copy_(inputs[k]);
    return replay(*entry);
  }
  entry = capture(inputs, loop, stream);
  {
    const std::lock_guard<std::mutex> lock(cache_mutex);
    cache.emplace_front(key, entry);
    if (cache.size() > kMaxCachedGraphs) {
      // Its memory pool goes back to the allocator: let every replay of it finish first.
      // A host sync, but only when a ninth shape arrives.
      C10_CUDA_CHECK(cudaDeviceSynchronize());
      cache.pop_back();
    }
  }
  const std::lock_guard<std::mutex> lock(entry->in_use);
  return replay(*entry);
}

}  // namespace fastlstm
