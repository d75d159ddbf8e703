// forward_units (fp32: xproj input, fp32 gates saved) alone, data in L1: ns a row of 16 units.
// Built as is (AVX-512) and with -DFASTLSTM_FUSED_AVX2.
#include <chrono>
#include <cstdio>
#include <vector>
#include "lstm_cpu_fused.h"
using namespace fastlstm; using namespace fastlstm::fused;
#if defined(FASTLSTM_FUSED_AVX2)
#pragma GCC target("avx2,fma,prfchw")
#else
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,fma,prfchw,prefer-vector-width=512")
#endif
__attribute__((noinline)) void rows(int n, const float* p, const float* x, int64_t H, const float* c_prev, float* c_out, float* h, float* hn, float* g) {
  for (int r = 0; r < n; ++r)
    forward_units<float, true, kLanes>(p + (r % 6) * 64, x + (r % 6) * 4 * H, H, c_prev + (r % 6) * H, c_out + (r % 6) * H, h + (r % 6) * H, hn + (r % 6) * H, g + (r % 6) * 4 * H, 0);
}
int main() {
  const int64_t H = 128;
  std::vector<float> p(6 * 64), x(6 * 4 * H), cp(6 * H), co(6 * H), h(6 * H), hn(6 * H), g(6 * 4 * H);
  for (size_t i = 0; i < p.size(); ++i) p[i] = ((i * 37) % 100) / 25.f - 2.f;
  for (size_t i = 0; i < x.size(); ++i) x[i] = ((i * 53) % 100) / 50.f - 1.f;
  for (size_t i = 0; i < cp.size(); ++i) cp[i] = ((i * 17) % 100) / 50.f - 1.f;
  double best = 1e9;
  for (int rep = 0; rep < 20; ++rep) {
    const int n = 200000;
    auto t0 = std::chrono::steady_clock::now();
    rows(n, p.data(), x.data(), H, cp.data(), co.data(), h.data(), hn.data(), g.data());
    best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / n);
  }
  std::printf("%s forward_units fp32: %.1f ns a row of 16 units (h %g)\n",
#if defined(FASTLSTM_FUSED_AVX2)
              "avx2",
#else
              "avx512",
#endif
              best * 1e9, h[5]);
}
