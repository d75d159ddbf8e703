// Do AMX tile products and AVX-512 vector math run at once on this core?
// TDPBF16PS on resident tiles (no loads), an AVX-512 FMA/exp-like chain, each alone and interleaved.
#include <immintrin.h>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <sys/syscall.h>
#include <unistd.h>
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,fma,amx-tile,amx-bf16")
struct Cfg { uint8_t palette, start_row, reserved[14]; uint16_t colsb[16]; uint8_t rows[16]; };
static void configure() {
  Cfg c; memset(&c, 0, sizeof c); c.palette = 1;
  for (int t = 0; t < 8; ++t) { c.rows[t] = 16; c.colsb[t] = 64; }
  __asm__ __volatile__("ldtilecfg %0" : : "m"(c));
}
alignas(64) static char wbuf[LOADS_KB * 1024];
// Four tile products (2 x 2 output tiles), with LOADS two weight tiles loaded first.
__attribute__((always_inline)) inline void four_products(long i) {
#if LOADS
  const char* w = wbuf + (i % (LOADS_KB / 2)) * 2048;
  _tile_loadd(5, w, 64); _tile_dpbf16ps(0, 4, 5); _tile_loadd(6, w + 1024, 64); _tile_dpbf16ps(1, 4, 6);
  _tile_dpbf16ps(2, 7, 5); _tile_dpbf16ps(3, 7, 6);
#else
  _tile_dpbf16ps(0, 4, 5); _tile_dpbf16ps(1, 4, 6); _tile_dpbf16ps(2, 7, 5); _tile_dpbf16ps(3, 7, 6);
#endif
}
__attribute__((noinline)) void tiles(long n) {
  for (long i = 0; i < n; ++i) four_products(i);
}
// 8 independent chains of FMAs + a division each 8 steps (like the gate math's mix)
__attribute__((noinline)) __m512 vec(long n, __m512 x) {
  __m512 a[8];
  for (int k = 0; k < 8; ++k) a[k] = _mm512_add_ps(x, _mm512_set1_ps(k * 0.01f));
  const __m512 m = _mm512_set1_ps(0.999f), b = _mm512_set1_ps(0.001f);
  for (long i = 0; i < n; ++i)
    for (int k = 0; k < 8; ++k) a[k] = _mm512_fmadd_ps(a[k], m, b);
  __m512 s = a[0];
  for (int k = 1; k < 8; ++k) s = _mm512_add_ps(s, a[k]);
  return s;
}
__attribute__((noinline)) __m512 both(long n, __m512 x) {
  __m512 a[8];
  for (int k = 0; k < 8; ++k) a[k] = _mm512_add_ps(x, _mm512_set1_ps(k * 0.01f));
  const __m512 m = _mm512_set1_ps(0.999f), b = _mm512_set1_ps(0.001f);
  for (long i = 0; i < n; ++i) {
    four_products(i);
    for (int r = 0; r < 8; ++r)  // 64 FMAs per 4 tile products
      for (int k = 0; k < 8; ++k) a[k] = _mm512_fmadd_ps(a[k], m, b);
  }
  __m512 s = a[0];
  for (int k = 1; k < 8; ++k) s = _mm512_add_ps(s, a[k]);
  return s;
}
template <typename F> double t(F f) {
  double best = 1e9;
  for (int r = 0; r < 5; ++r) {
    auto t0 = std::chrono::steady_clock::now(); f();
    best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  return best;
}
int main() {
  if (syscall(SYS_arch_prctl, 0x1023, 18) != 0) { printf("no AMX\n"); return 1; }
  configure();
  alignas(64) static char buf[1024] = {};
  _tile_loadd(0, buf, 64); _tile_loadd(1, buf, 64); _tile_loadd(2, buf, 64); _tile_loadd(3, buf, 64);
  _tile_loadd(4, buf, 64); _tile_loadd(5, buf, 64); _tile_loadd(6, buf, 64); _tile_loadd(7, buf, 64);
  const long n = 200000;
  volatile float sink = 0;
  const double tt = t([&] { tiles(n); });
  const double tv = t([&] { sink += _mm512_reduce_add_ps(vec(n * 8, _mm512_set1_ps(sink))); });
  const double tb = t([&] { sink += _mm512_reduce_add_ps(both(n, _mm512_set1_ps(sink))); });
  printf("4n tile products alone %.2f ms (%.1f ns each); 64n FMAs alone %.2f ms; interleaved %.2f ms "
         "(sum %.2f, max %.2f)\n", tt * 1e3, tt / (4.0 * n) * 1e9, tv * 1e3, tb * 1e3, (tt + tv) * 1e3,
         std::max(tt, tv) * 1e3);
}
