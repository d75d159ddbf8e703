#include <chrono>
#include <cstdio>
#include <vector>
#include "lstm_cpu_fused.h"
using namespace fastlstm;
using namespace fastlstm::fused;
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,fma,prfchw,prefer-vector-width=512")
__attribute__((noinline)) void run(int reps, int rows, const float* p, const float* bias, int64_t H,
         const float* c_prev, float* c_out, Bf16* h_out, Bf16* h_next, Bf16* gates) {
  for (int rep = 0; rep < reps; ++rep)
    for (int r = 0; r < rows; ++r)
      for (int64_t u0 = 0; u0 < H; u0 += 16)
        forward_units<Bf16, true, 16, float, Bf16>(p + (r % 4) * 64, bias + u0, H, c_prev + r * H + u0, c_out + r * H + u0,
                                     h_out + r * H + u0, h_next + r * H + u0, gates + r * 4 * H + u0, 0);
}
int main() {
  const int64_t H = 128; const int rows = 25;
  std::vector<float> p(4 * 64), bias(4 * H, 0.1f), c_prev(rows * H, 0.2f), c_out(rows * H);
  for (size_t i = 0; i < p.size(); ++i) p[i] = (i % 17) * 0.1f - 0.8f;
  std::vector<Bf16> h_out(rows * H), h_next(rows * H), gates(rows * 4 * H);
  const int reps = 20000;
  run(100, rows, p.data(), bias.data(), H, c_prev.data(), c_out.data(), h_out.data(), h_next.data(), gates.data());
  auto t0 = std::chrono::steady_clock::now();
  run(reps, rows, p.data(), bias.data(), H, c_prev.data(), c_out.data(), h_out.data(), h_next.data(), gates.data());
  double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  double vecs = double(reps) * rows * (H / 16);
  printf("epilogue (L1-hot): %.1f ns per 16-unit vector; a step of 25 rows x 128 units: %.1f us\n", dt / vecs * 1e9, dt / reps * 1e6);
}
