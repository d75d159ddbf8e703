// See lstm_persistent_cuda.h. Why persistent: the step loop pays two launches per step and
// re-reads W_hh from memory every step; here W_hh is read once per sequence and a step costs
// one grid barrier. Reads of h_{t-1} and c_{t-1} written by other blocks are plain loads:
// grid.sync() is a GPU-scope acquire, after which they see those writes.
#include <cooperative_groups.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <type_traits>

#include "lstm_persistent_cuda.h"
#include "lstm_persistent_mma.h"

namespace fastlstm {
namespace {

constexpr int kThreads = 256;

// p1: the one layer of `stack`.
template <typename T, typename Acc>
__global__ void __launch_bounds__(kThreads)
persistent_forward_kernel(const PersistentStackArgs<T, Acc> stack, int units_per_block) {
  using Cv = Convert<T, Acc>;
  const StackLayer<T, Acc>& a = stack.layer[0];
  namespace cg = cooperative_groups;
  cg::grid_group grid = cg::this_grid();
  extern __shared__ unsigned char smem_raw[];
  // This block's W_hh rows, stored [4][H][U] (unit fastest): the threads of a warp take
  // consecutive units of one batch row, so at each k they read consecutive words (no bank
  // conflicts) and threads of other rows read the same words (broadcast).
  Acc* w = reinterpret_cast<Acc*>(smem_raw);
  const int64_t H = stack.hidden, B = stack.batch;
  const int64_t u0 = int64_t(blockIdx.x) * units_per_block;
  const int U = static_cast<int>(H - u0 < units_per_block ? (H - u0 > 0 ? H - u0 : 0)
                                                          : units_per_block);
  for (int64_t i = threadIdx.x; i < 4 * int64_t(U) * H; i += blockDim.x) {
    // Global reads walk W_hh rows (k fastest, coalesced); the smem writes scatter.
    const int64_t q = i / (int64_t(U) * H), r = i % (int64_t(U) * H), u = r / H, k = r % H;
    w[(q * H + k) * U + u] = Cv::load(a.w_hh[(q * H + u0 + u) * H + k]);
  }
  __syncthreads();
  for (int64_t s = 0; s < stack.steps; ++s) {
    const T* h_prev = s == 0 ? a.h0 : a.hs + time_index(stack, s - 1) * B * H;
    for (int64_t pair = threadIdx.x; pair < B * U; pair += blockDim.x) {
      const int64_t b = pair / U, u = pair % U;
      Acc acc[4] = {};
      const T* h_row = h_prev + b * H;
      for (int64_t k = 0; k < H; ++k) {
        const Acc hk = Cv::load(h_row[k]);
#pragma unroll
        for (int q = 0; q < 4; ++q) acc[q] += hk * w[(q * H + k) * U + u];
      }
      finish_unit(stack, a, s, b, u0 + u, acc);  // + xproj, gate math, writes
    }
    grid.sync();  // h_t and c_t complete in every block before any block reads them
  }
}

// One lane's part of a warp's mma.sync (sm_80 and up): acc[0][j] += A B for the fragments
// a, b (lstm_persistent_mma.h has their layouts). bf16/fp16: m16n8k16, two consecutive
// elements per 32-bit register, the first in the low half; fp32: m16n8k8 on TF32 inputs
// (rounded to nearest by cvt.rna).
template <typename T>
struct TensorCoreMma {
  using Shape = typename std::conditional<std::is_same<T, float>::value, MmaK8, MmaK16>::type;
  static __device__ uint32_t pack(T lo, T hi) {
    if constexpr (std::is_same<T, __nv_bfloat16>::value)
      return uint32_t(__bfloat16_as_ushort(lo)) | (uint32_t(__bfloat16_as_ushort(hi)) << 16);
    else
      return uint32_t(__half_as_ushort(lo)) | (uint32_t(__half_as_ushort(hi)) << 16);
  }
  static __device__ uint32_t tf32(float x) {
    uint32_t r;
    asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(r) : "f"(x));
    return r;
  }
  __device__ void operator()(const T (&a)[1][Shape::a_elems], const T (&b)[1][Shape::b_elems],
                             float (&acc)[1][kMaxNTiles][4], int j) const {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    float* c = acc[0][j];
    if constexpr (std::is_same<T, float>::value) {
      asm("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0, %1, %2, %3}, "
          "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};"
          : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
          : "r"(tf32(a[0][0])), "r"(tf32(a[0][1])), "r"(tf32(a[0][2])), "r"(tf32(a[0][3])),
            "r"(tf32(b[0][0])), "r"(tf32(b[0][1])));
    } else {
      const uint32_t a0 = pack(a[0][0], a[0][1]), a1 = pack(a[0][2], a[0][3]),
                     a2 = pack(a[0][4], a[0][5]), a3 = pack(a[0][6], a[0][7]);
      const uint32_t b0 = pack(b[0][0], b[0][1]), b1 = pack(b[0][2], b[0][3]);
      if constexpr (std::is_same<T, __nv_bfloat16>::value)
        asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, "
            "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};"
            : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
            : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
      else
        asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, "
            "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};"
            : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
            : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
    }
#else
    __trap();  // the launcher never starts p4 below compute capability 8.0
#endif
  }
};

// p4: a stack as a wavefront with phase 1 on tensor cores (lstm_persistent_mma.h); bf16,
// fp16, fp32 as TF32.
template <typename T>
__global__ void __launch_bounds__(kThreads, 1)  // one block per SM: no register cap
mma_stack_kernel(const PersistentStackArgs<T, float> a, const MmaTiling tiling) {
  namespace cg = cooperative_groups;
  cg::grid_group grid = cg::this_grid();
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* w_s = reinterpret_cast<T*>(smem_raw);
  float* partial = reinterpret_cast<float*>(smem_raw + tiling.weight_bytes);
  const int block = blockIdx.x, tid = threadIdx.x;
  mma_load_weights(a, tiling, block, tid, kThreads, w_s);
  CellRegs<float> regs;  // this thread's cells: c across waves, the wave's inputs
  using Shape = typename TensorCoreMma<T>::Shape;
  __syncthreads();
  const int64_t waves = a.steps + a.layers - 1;
  mma_load_cell_inputs(a, tiling, block, 0, tid, kThreads, regs);
  for (int64_t wave = 0; wave < waves; ++wave) {
    mma_partial_sums<Shape, 1>(a, tiling, block, wave, tid / kWarpSize, tid % kWarpSize, w_s,
                               partial, TensorCoreMma<T>{});
    __syncthreads();
    mma_cell_update(a, tiling, block, wave, tid, kThreads, partial, regs);
    // The next wave's inputs (kernel inputs, no other block writes them): their loads
    // overlap the barrier.
    if (wave + 1 < waves) mma_load_cell_inputs(a, tiling, block, wave + 1, tid, kThreads, regs);
    grid.sync();
  }
}

// Cooperative launch of `kernel` with `blocks` x kThreads and `smem` bytes on a device with
// `sms` multiprocessors, if the whole grid can be resident at once; cudaErrorNotSupported if not.
cudaError_t launch_cooperative(const void* kernel, int blocks, size_t smem, int sms,
                               void** params, cudaStream_t stream) {
  int device = 0, max_smem = 0, cooperative = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err == cudaSuccess)
    err = cudaDeviceGetAttribute(&max_smem, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
  if (err == cudaSuccess)
    err = cudaDeviceGetAttribute(&cooperative, cudaDevAttrCooperativeLaunch, device);
  if (err != cudaSuccess) return err;
  if (!cooperative || smem > size_t(max_smem)) return cudaErrorNotSupported;
  err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                             static_cast<int>(smem));
  if (err != cudaSuccess) return err;
  int per_sm = 0;
  err = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kThreads, smem);
  if (err != cudaSuccess) return err;
  if (per_sm * sms < blocks) return cudaErrorNotSupported;
  err = cudaLaunchCooperativeKernel(kernel, blocks, kThreads, params, smem, stream);
  if (err != cudaSuccess) return err;
  return cudaGetLastError();
}

cudaError_t device_attribute(cudaDeviceAttr attr, int* value) {
  int device = 0;
  const cudaError_t err = cudaGetDevice(&device);
  return err != cudaSuccess ? err : cudaDeviceGetAttribute(value, attr, device);
}

}  // namespace

template <typename T, typename Acc>
cudaError_t launch_persistent_p1(const PersistentStackArgs<T, Acc>& args, cudaStream_t stream) {
  if (args.layers != 1) return cudaErrorInvalidValue;
  if (args.hidden <= 0 || args.batch <= 0) return cudaErrorNotSupported;
  int sms = 0;
  const cudaError_t err = device_attribute(cudaDevAttrMultiProcessorCount, &sms);
  if (err != cudaSuccess) return err;
  PersistentStackArgs<T, Acc> a = args;
  // Spread the units over every multiprocessor: one block each.
  int units = static_cast<int>((args.hidden + sms - 1) / sms);
  const int blocks = static_cast<int>((args.hidden + units - 1) / units);
  const size_t smem = size_t(4) * units * args.hidden * sizeof(Acc);
  void* params[] = {&a, &units};
  return launch_cooperative(reinterpret_cast<const void*>(persistent_forward_kernel<T, Acc>),
                            blocks, smem, sms, params, stream);
}

template <typename T, typename Acc>
cudaError_t launch_persistent_stack(const PersistentStackArgs<T, Acc>& args, bool tensor_cores,
                                    cudaStream_t stream) {
  if (args.layers < 1 || args.layers > kMaxStackLayers) return cudaErrorInvalidValue;
  if constexpr (std::is_same<T, double>::value) {
    return cudaErrorNotSupported;  // no tensor-core MMA for fp64 here
  } else {
    if (!tensor_cores || args.hidden <= 0 || args.batch <= 0) return cudaErrorNotSupported;
    int sms = 0, major = 0;
    cudaError_t err = device_attribute(cudaDevAttrMultiProcessorCount, &sms);
    if (err == cudaSuccess) err = device_attribute(cudaDevAttrComputeCapabilityMajor, &major);
    if (err != cudaSuccess) return err;
    if (major < 8) return cudaErrorNotSupported;
    PersistentStackArgs<T, Acc> a = args;
    MmaTiling tiling = mma_tiling_for<typename TensorCoreMma<T>::Shape>(args, sms, kThreads);
    const size_t smem = size_t(tiling.weight_bytes) + size_t(tiling.partial_floats) * 4;
    void* params[] = {&a, &tiling};
    return launch_cooperative(reinterpret_cast<const void*>(mma_stack_kernel<T>),
                              tiling.grid.blocks, smem, sms, params, stream);
  }
}

#define FASTLSTM_INSTANTIATE(T, Acc)                                                        \
  template cudaError_t launch_persistent_p1<T, Acc>(const PersistentStackArgs<T, Acc>&,      \
                                                    cudaStream_t);                           \
  template cudaError_t launch_persistent_stack<T, Acc>(const PersistentStackArgs<T, Acc>&,     \
                                                       bool, cudaStream_t);
FASTLSTM_INSTANTIATE(float, float)
FASTLSTM_INSTANTIATE(double, double)
FASTLSTM_INSTANTIATE(__half, float)
FASTLSTM_INSTANTIATE(__nv_bfloat16, float)
#undef FASTLSTM_INSTANTIATE

}  // namespace fastlstm
