// forward_units alone against two rows in one loop (their chains side by side): ns a row of
// 16 units, rows independent, everything in L1. Zen 4 experiment (issue 25, ninth part).
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include "lstm_cpu_fused.h"
using namespace fastlstm; using namespace fastlstm::fused;
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,fma,prfchw,prefer-vector-width=512")
// Two rows of one unit group: the body of forward_units (T = Bf16, bias input, gates saved
// in bf16) for rows 0 and 1 in the same loop.
__attribute__((always_inline)) inline void forward_units_x2(const float* const p[2], const float* x, int64_t H,
    const float* const c_prev[2], float* const c_out[2], Bf16* const h_out[2], Bf16* const h_next[2],
    Bf16* const gate_out[2]) {
  float h_wide[2][kLanes], gates_wide[2][4 * kLanes];
  FASTLSTM_NO_ALIAS_LOOP
  for (int64_t u = 0; u < kLanes; ++u) {
#pragma GCC unroll 2
    for (int r = 0; r < 2; ++r) {
      const Gates<float> gate = activate_gates(p[r][u] + x[u], p[r][kLanes + u] + x[H + u],
                                               p[r][2 * kLanes + u] + x[2 * H + u],
                                               p[r][3 * kLanes + u] + x[3 * H + u]);
      float c, h;
      cell_forward(gate, c_prev[r][u], c, h);
      gates_wide[r][u] = gate.i;
      gates_wide[r][kLanes + u] = gate.f;
      gates_wide[r][2 * kLanes + u] = gate.g;
      gates_wide[r][3 * kLanes + u] = gate.o;
      c_out[r][u] = c;
      h_wide[r][u] = h;
    }
  }
  for (int r = 0; r < 2; ++r) {
    for (int q = 0; q < 4; ++q) narrow(gates_wide[r] + q * kLanes, gate_out[r] + q * H, kLanes);
    narrow(h_wide[r], h_out[r], kLanes);
    narrow(h_wide[r], h_next[r], kLanes);
  }
}
int main() {
  const int R = 32, H = 128;
  alignas(64) static float p[R][64], bias[4 * H], cprev[R][H], cout[R][H], cout2[R][H];
  alignas(64) static Bf16 hout[R][H], hnext[R][H], gout[R][4 * H], hout2[R][H], hnext2[R][H], gout2[R][4 * H];
  for (int r = 0; r < R; ++r) for (int k = 0; k < 64; ++k) p[r][k] = ((r * 64 + k) % 17) / 8.f - 1;
  for (int k = 0; k < 4 * H; ++k) bias[k] = (k % 5) / 10.f;
  for (int r = 0; r < R; ++r) for (int k = 0; k < H; ++k) cprev[r][k] = (k % 7) / 7.f;
  const int reps = 20000;
  for (int round = 0; round < 2; ++round) {
    double best = 1e9;
    for (int t = 0; t < 7; ++t) {
      auto t0 = std::chrono::steady_clock::now();
      for (int i = 0; i < reps; ++i)
        for (int r = 0; r < R; ++r) {
          forward_units<Bf16, true, kLanes>(p[r], bias, H, cprev[r], cout[r], hout[r], hnext[r], gout[r], 0);
          asm volatile("" ::: "memory");
        }
      best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    }
    std::printf("one row a call:  %.1f ns a row of 16 units\n", best / (reps * R) * 1e9);
    best = 1e9;
    for (int t = 0; t < 7; ++t) {
      auto t0 = std::chrono::steady_clock::now();
      for (int i = 0; i < reps; ++i)
        for (int r = 0; r < R; r += 2) {
          const float* pp[2] = {p[r], p[r + 1]}; const float* cp[2] = {cprev[r], cprev[r + 1]};
          float* co[2] = {cout2[r], cout2[r + 1]}; Bf16* ho[2] = {hout2[r], hout2[r + 1]};
          Bf16* hn[2] = {hnext2[r], hnext2[r + 1]}; Bf16* go[2] = {gout2[r], gout2[r + 1]};
          forward_units_x2(pp, bias, H, cp, co, ho, hn, go);
          asm volatile("" ::: "memory");
        }
      best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    }
    std::printf("two rows a call: %.1f ns a row of 16 units\n", best / (reps * R) * 1e9);
  }
  int diff = 0;  // the two ways give the same bits
  for (int r = 0; r < R; ++r) for (int k = 0; k < 16; ++k) {
    diff += cout[r][k] != cout2[r][k];
    diff += hout[r][k].bits != hout2[r][k].bits;
    for (int q = 0; q < 4; ++q) diff += gout[r][q * H + k].bits != gout2[r][q * H + k].bits;
  }
  std::printf("differing values: %d\n", diff);
}
