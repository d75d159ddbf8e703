// transpose_2byte (csrc/core/transpose.h) on a [2500, 128] bf16 source, one thread: hot, and cold (a
// 64 MiB buffer written between calls, as the weight gradients find their operands); checks the
// result. g++ -O3 -std=c++17 -Icsrc transpose_cold.cpp -o /tmp/transpose_cold && /tmp/transpose_cold
// (profile_and_not_kept.txt: at the session start, rows outermost, and at its end, columns outermost).
#include "core/transpose.h"
#include <chrono>
#include <cstdio>
#include <vector>
#include <cstring>
using namespace fastlstm::fused;
int main(int argc, char** argv) {
  const int64_t rows = 2500, cols = 128;
  std::vector<uint16_t> src(rows * cols), dst(cols * rows + 64);
  for (size_t i = 0; i < src.size(); ++i) src[i] = i * 7;
  std::vector<char> flush(64 << 20);
  for (int cold = 0; cold < 2; ++cold) {
    double best = 1e9, tot = 0;
    for (int it = 0; it < 50; ++it) {
      if (cold) memset(flush.data(), it, flush.size());
      auto t0 = std::chrono::steady_clock::now();
      transpose_2byte(src.data(), cols, rows, cols, dst.data(), rows);
      double us = std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count();
      best = std::min(best, us); tot += us;
    }
    printf("%s: best %.1f us, mean %.1f us (%.1f GB/s best)\n", cold ? "cold" : "hot", best, tot / 50,
           rows * cols * 2 / best / 1e3);
  }
  // check
  for (int64_t r = 0; r < rows; ++r) for (int64_t c = 0; c < cols; ++c)
    if (dst[c * rows + r] != src[r * cols + c]) { printf("bad\n"); return 1; }
}
