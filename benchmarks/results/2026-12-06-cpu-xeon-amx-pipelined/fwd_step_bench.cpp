// One layer's fused forward step (inference, input in the step, bf16 on AMX), 2 threads splitting the units
// or (5th argument "rows") the batch rows, as layer_cpu_fused.cpp's plan_for does at batch >= 8:
//   g++ -O3 -std=c++17 -fno-trapping-math -pthread -Icsrc/core fwd_step_bench.cpp -o /tmp/b && /tmp/b 64 256 256 20 rows
// (args: batch hidden input reps [units|rows]).
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>
#include <vector>
#include "lstm_cpu_fused.h"
using namespace fastlstm; using namespace fastlstm::fused;
int main(int argc, char** argv) {
  const int64_t B = atoi(argv[1]), H = atoi(argv[2]), I = atoi(argv[3]), S = 100;
  const int threads = 2; const int reps = atoi(argv[4]);
  if (!amx_usable()) { puts("no amx"); return 1; }
  using T = Bf16;
  std::vector<T> w(4 * H * H), wi(4 * H * I), fw(forward_packed_size<T>(H, H)), fi(forward_packed_size<T>(H, I));
  for (size_t k = 0; k < w.size(); ++k) w[k] = Convert<T, float>::store(((k * 7919) % 200) / 2000.f - 0.05f);
  for (size_t k = 0; k < wi.size(); ++k) wi[k] = Convert<T, float>::store(((k * 7907) % 200) / 2000.f - 0.05f);
  pack_forward(w.data(), H, H, fw.data(), 0, unit_groups(H));
  pack_forward(wi.data(), H, I, fi.data(), 0, unit_groups(H));
  const int64_t ld = padded_width<T>(H), ldx = padded_width<T>(I);
  std::vector<T> x(S * B * ldx, Convert<T, float>::store(0.1f)), ring(2 * B * ld, T{}), hs(S * B * H);
  std::vector<float> bias(4 * H, 0.01f), c0(B * H, 0.f), cstate(B * H, 0.f);
  FusedForwardArgs<T> fa{nullptr, x.data(), fi.data(), bias.data(), I, fw.data(), c0.data(), ring.data(), hs.data(),
                         cstate.data(), nullptr, S, B, H, false, true};
  fa.amx = true; fa.amx_min_rows = 2;
  const int64_t G = unit_groups(H);
  std::vector<Part> parts;
  const bool rows = argc > 5 && std::string(argv[5]) == "rows";
  for (int k = 0; k < threads; ++k)
    parts.push_back(rows ? Part{B * k / threads, B * (k + 1) / threads, 0, G}
                         : Part{0, B, G * k / threads, G * (k + 1) / threads});
  double best = 1e9;
  for (int rep = 0; rep < reps; ++rep) {
    StepBarrier barrier(threads);  // (rows: the workers never meet; run_parts given none)
    const auto t0 = std::chrono::steady_clock::now();
    std::vector<std::thread> pool;
    for (int k = 0; k < threads; ++k)
      pool.emplace_back([&, k] { run_parts(S, k, k + 1, rows ? nullptr : &barrier, [&](int64_t p, int64_t s) { forward_step(fa, parts[p], s); }); });
    for (auto& t : pool) t.join();
    best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  const double flop = 2.0 * B * (H + I) * 4 * H * S;
  printf("%s B%lld H%lld I%lld: %.1f us/step, %.0f GFLOP/s\n", rows ? "rows" : "units", (long long)B, (long long)H, (long long)I, best / S * 1e6, flop / best / 1e9);
}
