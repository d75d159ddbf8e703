// What the fused layer's AMX products cost with their tile loads, one thread. The kernel's
// pattern: per k-block one row tile (16 rows of 64 bytes, 1 KiB apart) and, for each of four
// gate vectors, one 1 KiB weight tile then a TDPBF16PS into that vector's accumulator tile.
//   g++ -O2 -std=c++17 -pthread -Icsrc/core <this file> -o /tmp/amx_tile_loads && /tmp/amx_tile_loads
// Cases: weights from a 256 KiB buffer (L2) or a 32 KiB one (L1); the buffers' pages never
// written (all of them the kernel's one zero page: an earlier test, amx_overlap.cpp, measured
// that by mistake) or written; rows 64-byte aligned or 16 bytes off (std::vector's alignment,
// as the kernel harness had); and the products alone on resident tiles.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include "lstm_cpu_fused.h"  // amx_usable, amx_configure: the layer's own
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,fma,amx-tile,amx-bf16")
alignas(64) static char zero_w[256 * 1024 + 64], zero_a[16 * 1024 + 64];   // never written
alignas(64) static char w_mem[256 * 1024 + 64], a_mem[16 * 1024 + 64];     // written below
alignas(64) static float out[16 * 64];
constexpr int KB = 8, GROUPS = 8;
// One step's products of one row block: GROUPS unit groups x KB k-blocks x 4 gates.
__attribute__((noinline)) void products(const char* a, const char* w, int w_groups, bool loads) {
  for (int g = 0; g < GROUPS; ++g) {
    const char* wg = w + (g % w_groups) * 32 * 1024;
    _tile_zero(0); _tile_zero(1); _tile_zero(2); _tile_zero(3);
    for (int kb = 0; kb < KB; kb += 2) {
#define KBLK(A, k)                                                                        \
  {                                                                                       \
    const char* wk = wg + (k) * 4096;                                                     \
    if (loads) { _tile_loadd(A, a + (k) * 64, 1024); _tile_loadd(5, wk, 64); }            \
    _tile_dpbf16ps(0, A, 5);                                                              \
    if (loads) _tile_loadd(6, wk + 1024, 64);                                             \
    _tile_dpbf16ps(1, A, 6);                                                              \
    if (loads) _tile_loadd(5, wk + 2048, 64);                                             \
    _tile_dpbf16ps(2, A, 5);                                                              \
    if (loads) _tile_loadd(6, wk + 3072, 64);                                             \
    _tile_dpbf16ps(3, A, 6);                                                              \
  }
      KBLK(4, kb) KBLK(7, kb + 1)
    }
    _tile_stored(0, out, 256); _tile_stored(1, out + 16, 256);
    _tile_stored(2, out + 32, 256); _tile_stored(3, out + 48, 256);
  }
}
static void run(const char* what, const char* a, const char* w, int w_groups, bool loads) {
  double best = 1e9;
  for (int r = 0; r < 50; ++r) {
    auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < 100; ++i) products(a, w, w_groups, loads);
    best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  printf("%-58s %5.1f ns a product\n", what, best / (100.0 * GROUPS * KB * 4) * 1e9);
}
int main() {
  if (!fastlstm::fused::amx_usable()) { printf("no AMX\n"); return 1; }
  for (size_t i = 0; i < sizeof w_mem; i += 2) { uint16_t v = 0x3c00 + (i % 97); memcpy(w_mem + i, &v, 2); }
  for (size_t i = 0; i < sizeof a_mem; i += 2) { uint16_t v = 0x3c00 + (i % 89); memcpy(a_mem + i, &v, 2); }
  fastlstm::fused::amx_configure(16);
  _tile_loadd(4, a_mem, 64); _tile_loadd(5, w_mem, 64); _tile_loadd(6, w_mem + 1024, 64);
  _tile_loadd(7, a_mem + 1024, 64);
  for (int round = 0; round < 2; ++round) {
    run("resident tiles (no loads)", a_mem, w_mem, 8, false);
    run("zero page: weights 256 KiB, rows 16 KiB (never written)", zero_a, zero_w, 8, true);
    run("weights 32 KiB (L1), aligned", a_mem, w_mem, 1, true);
    run("weights 256 KiB (L2), aligned", a_mem, w_mem, 8, true);
    run("weights 256 KiB (L2), rows and weights 16 bytes off", a_mem + 16, w_mem + 16, 8, true);
    run("weights 32 KiB (L1), rows and weights 16 bytes off", a_mem + 16, w_mem + 16, 1, true);
  }
}
