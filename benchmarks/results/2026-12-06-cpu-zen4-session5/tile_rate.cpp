// The register tile's rate alone (one thread), bf16 and fp32, weights/rows resident in L1/L2.
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include "lstm_cpu_fused.h"
using namespace fastlstm; using namespace fastlstm::fused;
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,fma,prfchw,prefer-vector-width=512")
template <bool kBf16, int MB, int NV>
void rate(int64_t ksteps, int64_t groups, const char* what) {
  const int64_t lda = ksteps + 16;
  uint32_t* a = (uint32_t*)aligned_alloc(64, MB * lda * 4);
  uint32_t* b = (uint32_t*)aligned_alloc(64, groups * ksteps * NV * 64 + 64);
  for (int64_t i = 0; i < MB * lda; ++i) a[i] = 0x3f803f80u;
  for (int64_t i = 0; i < groups * ksteps * NV * 16; ++i) b[i] = 0x3c003c00u;
  alignas(64) float out[MB * NV * 16] = {};
  double best = 1e9; const int reps = 2000;
  for (int t = 0; t < 7; ++t) {
    auto t0 = std::chrono::steady_clock::now();
    for (int r = 0; r < reps; ++r)
      for (int64_t g = 0; g < groups; ++g)
        tile_product<kBf16, true, MB, NV>(a, lda, ksteps, b + g * ksteps * NV * 16, NV * 16, 16, out);
        asm volatile("" :: "r"(out) : "memory");
    best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  const double flop = 2.0 * MB * NV * 16 * ksteps * (kBf16 ? 2 : 1) * groups * reps;
  std::printf("%s MB%d NV%d ksteps %4lld groups %3lld (weights %6lld KiB): %6.1f GFLOP/s  %.2f ns/tile-kstep  out %g\n", what, MB, NV,
              (long long)ksteps, (long long)groups, (long long)(groups * ksteps * NV * 64 / 1024), flop / best / 1e9,
              best / (reps * groups * ksteps) * 1e9, out[0]);
}
int main() {
  for (int64_t ks : {64, 128, 256}) for (int64_t g : {1, 8, 32}) rate<true, 6, 4>(ks, g, "bf16");
  rate<true, 4, 4>(64, 8, "bf16"); rate<true, 2, 4>(64, 8, "bf16"); rate<true, 1, 4>(64, 8, "bf16");
  for (int64_t ks : {128, 256}) for (int64_t g : {1, 8}) rate<false, 6, 4>(ks, g, "fp32");
}
