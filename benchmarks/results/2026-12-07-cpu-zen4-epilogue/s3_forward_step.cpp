// One worker's share of S3's bf16 training forward (25 rows, hidden 128, x W_ih^T in the
// step, gates saved in bf16, as the op runs it on 2 threads), 2000 steps on one thread:
// us a step. "nogates": gates not saved; "nogates cstate": the cell state updated in place
// (no fresh c_t rows a step). Profile it with perf record -e cpu-clock (issue 25, 2026-12-07).
//   g++ -O3 -g -std=c++17 -fno-trapping-math -Icsrc/core s3_forward_step.cpp -o /tmp/s3 && /tmp/s3
#include <chrono>
#include <cstdio>
#include <vector>
#include "lstm_cpu_fused.h"
using namespace fastlstm; using namespace fastlstm::fused;
int main(int argc, char** argv) {
  using T = Bf16;
  const int64_t B = 25, H = 128, S = 2000;
  std::vector<T> w(4 * H * H), fw(forward_packed_size<T>(H, H));
  for (size_t k = 0; k < w.size(); ++k) w[k] = Convert<T, float>::store(((k * 7919) % 200) / 2000.f - 0.05f);
  pack_forward(w.data(), H, H, fw.data(), 0, unit_groups(H));
  const int64_t ld = padded_width<T>(H);
  std::vector<T> x(S * B * ld, Convert<T, float>::store(0.1f)), ring(2 * B * ld, T{}), hs(S * B * H), gates(S * B * 4 * H);
  std::vector<float> c0(B * H, 0.f), cs(S * B * H), bias(4 * H, 0.01f);
  FusedForwardArgs<T> fa{nullptr, x.data(), fw.data(), bias.data(), H, fw.data(), c0.data(), ring.data(), hs.data(),
                         cs.data(), argc > 1 ? nullptr : gates.data(), S, B, H, false, false};
  fa.gates_in_t = true; if (argc > 2) fa.c_state = true;
  Part p{0, B, 0, unit_groups(H)};
  for (int rep = 0; rep < 5; ++rep) {
    auto t0 = std::chrono::steady_clock::now();
    for (int64_t s = 0; s < S; ++s) forward_step(fa, p, s);
    double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::printf("%.2f us/step, %.0f GFLOP/s\n", dt / S * 1e6, 4.0 * B * H * 4 * H / (dt / S) / 1e9);
  }
}
