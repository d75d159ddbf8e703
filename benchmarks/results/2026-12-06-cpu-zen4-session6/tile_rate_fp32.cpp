// The fp32 register tile's rate alone (one thread), the AVX-512 build against the AVX2 build
// (-DFASTLSTM_FUSED_AVX2: the tile in passes of up to 12 ymm accumulators), weights in L1/L2;
// the outputs read after every call (an asm barrier), so no accumulator is dropped.
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include "lstm_cpu_fused.h"
using namespace fastlstm; using namespace fastlstm::fused;
#if defined(FASTLSTM_FUSED_AVX2)
#pragma GCC target("avx2,fma,prfchw")
static const char* kBuild = "avx2  ";
#else
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,fma,prfchw,prefer-vector-width=512")
static const char* kBuild = "avx512";
#endif
template <int MB, int NV>
void rate(int64_t ksteps, int64_t groups) {
  const int64_t lda = ksteps + 16;
  float* a = (float*)aligned_alloc(64, MB * lda * 4);
  float* b = (float*)aligned_alloc(64, groups * ksteps * NV * 64 + 64);
  for (int64_t i = 0; i < MB * lda; ++i) a[i] = 1.f;
  for (int64_t i = 0; i < groups * ksteps * NV * 16; ++i) b[i] = 1e-6f;
  alignas(64) float out[MB * NV * 16] = {};
  double best = 1e9; const int reps = 2000;
  for (int t = 0; t < 7; ++t) {
    auto t0 = std::chrono::steady_clock::now();
    for (int r = 0; r < reps; ++r)
      for (int64_t g = 0; g < groups; ++g) {
        tile_product<false, true, MB, NV>(as_ksteps(a), lda, ksteps, as_ksteps(b + g * ksteps * NV * 16),
                                          NV * 16, 16, out);
        asm volatile("" :: "r"(out) : "memory");
      }
    best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  const double flop = 2.0 * MB * NV * 16 * ksteps * groups * reps;
  std::printf("%s fp32 MB%d NV%d ksteps %4lld groups %2lld (weights %5lld KiB): %6.1f GFLOP/s  out %g\n", kBuild,
              MB, NV, (long long)ksteps, (long long)groups, (long long)(groups * ksteps * NV * 64 / 1024),
              flop / best / 1e9, out[0]);
}
int main() {
  for (int64_t g : {1, 8}) rate<6, 4>(256, g);
  rate<4, 4>(256, 1); rate<3, 4>(256, 1); rate<2, 4>(256, 1); rate<1, 4>(256, 1);
  rate<6, 1>(256, 1);
}
