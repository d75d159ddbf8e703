// The fused CPU layer's time loops alone (core/lstm_cpu_fused.h), without torch: forward and
// backward of one layer, per step, and the rate of the step's products, for a work split
// over threads (rows or units); bf16 also on AMX tiles where the CPU has them ("bf16-amx");
// and the inference step (x W_ih^T inside it, nothing saved: "infer"). What NOTES.md's CPU
// section compares with torch's GEMMs.
//   g++ -O3 -std=c++17 -fno-trapping-math -pthread -Icsrc/core \
//       benchmarks/cpu_fused_bench.cpp -o /tmp/cpu_fused_bench && /tmp/cpu_fused_bench
//   /tmp/cpu_fused_bench infer B H I [REPS]    # bf16 inference on AMX at one shape only
//   /tmp/cpu_fused_bench train B H S [REPS]    # bf16 training steps at one shape (AMX where
//                                              # the CPU has it, else the register tile)
//   /tmp/cpu_fused_bench fp32 B H S [REPS]     # fp32 training steps at one shape
// Built with -DFASTLSTM_FUSED_AVX2: the AVX2 + FMA build of the kernels (fp32 only).
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

#include "lstm_cpu_fused.h"

using namespace fastlstm;
using namespace fastlstm::fused;

// Buffers 64-byte aligned, as torch's CPU allocator gives them: an AMX tile load whose rows
// straddle cache lines costs ~3x (19 against 5.9 ns a product, weights in L1:
// results/2026-12-06-cpu-xeon-amx-session4/amx_tile_loads.txt), and std::vector's memory is
// only 16-byte aligned.
template <typename T>
struct Aligned64 {
  using value_type = T;
  Aligned64() = default;
  template <typename U>
  Aligned64(const Aligned64<U>&) {}
  T* allocate(size_t n) {
    return static_cast<T*>(std::aligned_alloc(64, (n * sizeof(T) + 63) / 64 * 64));
  }
  void deallocate(T* p, size_t) { std::free(p); }
  bool operator==(const Aligned64&) const { return true; }
  bool operator!=(const Aligned64&) const { return false; }
};
template <typename T>
using Buffer = std::vector<T, Aligned64<T>>;

template <typename StepFn>
double run(int threads, bool split_units, int64_t B, int64_t H, int64_t steps, StepFn step) {
  const int64_t G = unit_groups(H);
  std::vector<Part> parts;
  for (int k = 0; k < threads; ++k)
    parts.push_back(split_units ? Part{0, B, G * k / threads, G * (k + 1) / threads}
                                : Part{B * k / threads, B * (k + 1) / threads, 0, G});
  StepBarrier barrier(threads);
  const auto t0 = std::chrono::steady_clock::now();
  std::vector<std::thread> pool;
  for (int k = 0; k < threads; ++k)
    pool.emplace_back([&, k] {
      run_parts(steps, k, k + 1, split_units && threads > 1 ? &barrier : nullptr,
                [&](int64_t p, int64_t s) { step(parts[p], s); });
    });
  for (auto& t : pool) t.join();
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

template <typename T>
void bench(const char* type, int64_t B, int64_t H, int64_t S, bool amx = false, int reps = 5) {
  Buffer<T> w(4 * H * H), fw(forward_packed_size<T>(H, H)), bw(backward_packed_size<T>(H));
  for (size_t k = 0; k < w.size(); ++k) w[k] = Convert<T, float>::store(((k * 7919) % 200) / 2000.f - 0.05f);
  pack_forward(w.data(), H, H, fw.data(), 0, unit_groups(H));
  pack_backward(w.data(), H, bw.data(), 0, unit_groups(H), H);
  const int64_t ld = padded_width<T>(H);
  Buffer<T> xproj(S * B * 4 * H, Convert<T, float>::store(0.1f)), ring(2 * B * ld, T{}),
      hs(S * B * H), grad_hs(S * B * H, Convert<T, float>::store(0.01f)), grad_x(S * B * 4 * H);
  Buffer<float> c0(B * H, 0.f), cs(S * B * H), gates(S * B * 4 * H), grad_c(B * H), gh0(B * H);
  FusedForwardArgs<T> fa{xproj.data(), nullptr, nullptr, nullptr, 0, fw.data(), c0.data(), ring.data(), hs.data(),
                         cs.data(), gates.data(), S, B, H, false, false};
  FusedBackwardArgs<T> ba{bw.data(), gates.data(), cs.data(), c0.data(), grad_hs.data(),
                          nullptr, grad_c.data(), grad_x.data(), gh0.data(), S, B, H, false};
  fa.amx = ba.amx = amx;
  const double flop = 2.0 * B * H * 4 * H * S;
  for (int threads : {1, 2})
    for (bool units : {false, true}) {
      if (threads == 1 && units) continue;
      double best_f = 1e9, best_b = 1e9;
      for (int rep = 0; rep < reps; ++rep) {
        best_f = std::min(best_f, run(threads, units, B, H, S, [&](const Part& p, int64_t s) { forward_step(fa, p, s); }));
        best_b = std::min(best_b, run(threads, units, B, H, S + 1, [&](const Part& p, int64_t s) { backward_step(ba, p, s); }));
      }
      std::printf("%s B%-3lld H%-4lld %d thread(s) %-5s  fwd %7.1f us/step (%5.0f GFLOP/s)  bwd %7.1f us/step (%5.0f GFLOP/s)\n",
                  type, (long long)B, (long long)H, threads, units ? "units" : "rows",
                  best_f / S * 1e6, flop / best_f / 1e9, best_b / S * 1e6, flop / best_b / 1e9);
    }
}

#if !defined(FASTLSTM_FUSED_AVX2)
// One layer's bf16 inference on AMX (as lstm_layer_inference runs it where the weights stay
// in L2): x W_ih^T and h W_hh^T in the step, the cell state updated in place, no gates.
void bench_inference(int64_t B, int64_t H, int64_t I, int64_t S, int reps) {
  using T = Bf16;
  Buffer<T> w(4 * H * H), wi(4 * H * I), fw(forward_packed_size<T>(H, H)),
      fi(forward_packed_size<T>(H, I));
  for (size_t k = 0; k < w.size(); ++k) w[k] = Convert<T, float>::store(((k * 7919) % 200) / 2000.f - 0.05f);
  for (size_t k = 0; k < wi.size(); ++k) wi[k] = Convert<T, float>::store(((k * 7907) % 200) / 2000.f - 0.05f);
  pack_forward(w.data(), H, H, fw.data(), 0, unit_groups(H));
  pack_forward(wi.data(), H, I, fi.data(), 0, unit_groups(H));
  const int64_t ld = padded_width<T>(H), ldx = padded_width<T>(I);
  Buffer<T> x(S * B * ldx, Convert<T, float>::store(0.1f)), ring(2 * B * ld, T{}), hs(S * B * H);
  Buffer<float> bias(4 * H, 0.01f), c0(B * H, 0.f), c(B * H, 0.f);
  FusedForwardArgs<T> fa{nullptr, x.data(), fi.data(), bias.data(), I, fw.data(), c0.data(),
                         ring.data(), hs.data(), c.data(), nullptr, S, B, H, false, true};
  fa.amx = true;
  fa.amx_min_rows = 2;
  const double flop = 2.0 * B * (H + I) * 4 * H * S;
  for (bool units : {false, true}) {
    double best = 1e9;
    for (int rep = 0; rep < reps; ++rep)
      best = std::min(best, run(2, units, B, H, S, [&](const Part& p, int64_t s) { forward_step(fa, p, s); }));
    std::printf("infer B%-3lld H%-4lld I%-4lld 2 threads %-5s  %7.1f us/step (%5.0f GFLOP/s)\n",
                (long long)B, (long long)H, (long long)I, units ? "units" : "rows", best / S * 1e6,
                flop / best / 1e9);
  }
}

#endif

int main(int argc, char** argv) {
  if (!cpu_supports<float>()) return std::puts("this build's instructions are not here"), 1;
  if (argc >= 5 && std::string(argv[1]) == "fp32") {
    bench<float>("fp32", std::atoll(argv[2]), std::atoll(argv[3]), std::atoll(argv[4]), false,
                 argc > 5 ? std::atoi(argv[5]) : 20);
    return 0;
  }
#if !defined(FASTLSTM_FUSED_AVX2)
  if (argc >= 5 && std::string(argv[1]) == "infer") {
    if (!amx_usable()) return std::puts("no AMX here"), 1;
    bench_inference(std::atoll(argv[2]), std::atoll(argv[3]), std::atoll(argv[4]), 100,
                    argc > 5 ? std::atoi(argv[5]) : 20);
    return 0;
  }
  if (argc >= 5 && std::string(argv[1]) == "train") {
    if (!cpu_supports<Bf16>()) return std::puts("no AVX512-BF16 here"), 1;
    const bool amx = amx_usable();
    bench<Bf16>(amx ? "bf16-amx" : "bf16", std::atoll(argv[2]), std::atoll(argv[3]),
                std::atoll(argv[4]), amx, argc > 5 ? std::atoi(argv[5]) : 20);
    return 0;
  }
#endif
  const int64_t shapes[][3] = {{64, 256, 100}, {64, 384, 100}, {64, 512, 50}, {50, 128, 50},
                               {8, 256, 50}, {1, 512, 50}, {1, 128, 50}};
  for (auto& s : shapes) {
    bench<float>("fp32", s[0], s[1], s[2]);
#if !defined(FASTLSTM_FUSED_AVX2)
    if (cpu_supports<Bf16>()) bench<Bf16>("bf16", s[0], s[1], s[2]);
    if (amx_usable()) bench<Bf16>("bf16-amx", s[0], s[1], s[2], true);
#endif
  }
#if !defined(FASTLSTM_FUSED_AVX2)
  if (amx_usable()) bench_inference(64, 256, 64, 100, 5);  // the char-rnn shape's first layer
#endif
}
