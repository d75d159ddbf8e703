// The CUDA generation op's draw (generate_cuda.h). Not yet run on a GPU.
#include "generate_cuda.h"
#include "sampling.h"

namespace fastlstm {
namespace {

constexpr int kDrawThreads = 64;
constexpr int kGatherThreads = 256;

// One thread a sample: the draw is sequential over the vocabulary (a sort for top-k/top-p),
// as on the CPU, so the two give the same ids for the same logits.
__global__ void draw_kernel(const DrawArgs a) {
  const int64_t row = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (row >= a.samples) return;
  int64_t id;
  if (a.forced) {
    id = a.forced[row * a.steps + a.step];
  } else {
    const SamplingOptions opt{a.options[0], static_cast<int64_t>(a.options[1]), a.options[2]};
    const double u = uniform_draw(static_cast<uint64_t>(a.keys[0]), static_cast<uint64_t>(row),
                                  static_cast<uint64_t>(a.keys[1] + a.step));
    id = draw(a.logits + row * a.vocab, a.vocab, opt, u, a.prob + row * a.vocab,
              a.order + row * a.vocab);
  }
  a.ids[row * a.steps + a.step] = id;
}

// xproj[row] = table[ids[row, step]]: a block a sample, its threads along the 4H row.
__global__ void gather_kernel(const DrawArgs a) {
  const int64_t row = blockIdx.x, width = 4 * a.hidden;
  const float* src = a.table + a.ids[row * a.steps + a.step] * width;
  for (int64_t k = threadIdx.x; k < width; k += blockDim.x) a.xproj[row * width + k] = src[k];
}

}  // namespace

cudaError_t launch_draw(const DrawArgs& args, cudaStream_t stream) {
  const unsigned blocks = static_cast<unsigned>((args.samples + kDrawThreads - 1) / kDrawThreads);
  draw_kernel<<<blocks, kDrawThreads, 0, stream>>>(args);
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return err;
  gather_kernel<<<static_cast<unsigned>(args.samples), kGatherThreads, 0, stream>>>(args);
  return cudaGetLastError();
}

}  // namespace fastlstm
