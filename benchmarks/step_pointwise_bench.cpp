// The CPU op's pointwise step loops (step_forward_rows, step_backward_rows) alone, at batch 64,
// hidden 512: what a gate-math change costs per step. Build and run against a header copy:
//   g++ -O3 -std=c++17 -Icsrc/core benchmarks/step_pointwise_bench.cpp -o /tmp/b && /tmp/b
#include <chrono>
#include <cstdio>
#include <vector>
#include "lstm_step.h"
using namespace fastlstm;
__attribute__((target("arch=x86-64-v4"))) void fwd(const StepForwardArgs<float, float>& a) { step_forward_rows(a, 0, a.batch); }
__attribute__((target("arch=x86-64-v4"))) void bwd(const StepBackwardArgs<float, float>& a) { step_backward_rows(a, 0, a.batch); }
int main() {
  const int B = 64, H = 512;
  std::vector<float> xp(B * 4 * H), rec(B * 4 * H), cp(B * H), g(B * 4 * H), c(B * H), h(B * H), gh(B * H), ghr(B * H), gcc(B * H), gp(B * 4 * H);
  for (size_t i = 0; i < xp.size(); ++i) { xp[i] = ((i * 2654435761u) % 1000) / 250.f - 2; rec[i] = ((i * 40503u) % 1000) / 500.f - 1; }
  for (size_t i = 0; i < cp.size(); ++i) { cp[i] = ((i * 977u) % 1000) / 500.f - 1; gh[i] = ghr[i] = 0.1f; gcc[i] = 0.f; }
  StepForwardArgs<float, float> fa{xp.data(), rec.data(), cp.data(), g.data(), c.data(), h.data(), B, H};
  StepBackwardArgs<float, float> ba{g.data(), cp.data(), c.data(), gh.data(), ghr.data(), nullptr, gcc.data(), gp.data(), B, H};
  for (int rep = 0; rep < 5; ++rep) {
    auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < 2000; ++i) fwd(fa);
    auto t1 = std::chrono::steady_clock::now();
    for (int i = 0; i < 2000; ++i) bwd(ba);
    auto t2 = std::chrono::steady_clock::now();
    std::printf("forward %.2f us/step  backward %.2f us/step\n", std::chrono::duration<double, std::micro>(t1 - t0).count() / 2000, std::chrono::duration<double, std::micro>(t2 - t1).count() / 2000);
  }
  std::printf("check %g\n", h[123] + gp[77]);
}
