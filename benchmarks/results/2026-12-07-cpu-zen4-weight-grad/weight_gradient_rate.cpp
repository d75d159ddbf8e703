// The weight-gradient GEMM on our register tile (csrc/core/weight_gradient_cpu.h) alone:
// dW [G, K] = g^T z over R rows, the packing timed apart; "c" also checks against a float64
// sum (every 7th row of dW).
//   g++ -O3 -std=c++17 -fno-trapping-math -pthread -Icsrc/core \
//       benchmarks/results/2026-12-07-cpu-zen4-weight-grad/weight_gradient_rate.cpp -o /tmp/wg
//   /tmp/wg bf16|fp32 R G K [THREADS] [c]      (FLUSH=1: 96 MiB written before each rep)
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cmath>
#include <vector>
#include <string>
#include <thread>
#include "weight_gradient_cpu.h"

using namespace fastlstm; using namespace fastlstm::fused;
template <typename T> float tofloat(T v);
template <> float tofloat(float v){return v;}
template <> float tofloat(Bf16 v){uint32_t u=uint32_t(v.bits)<<16; float f; memcpy(&f,&u,4); return f;}
template <typename T> T fromfloat(float f);
template <> float fromfloat(float f){return f;}
template <> Bf16 fromfloat(float f){return Convert<Bf16,float>::store(f);}
template <typename T>
void run(int64_t R, int64_t G, int64_t K, int threads, int reps, bool check) {
  constexpr int kPer = KStep<T>::kPer;
  std::vector<T> g(R*G), z(R*K);
  srand(1);
  for (auto& v: g) v = fromfloat<T>(rand()/(float)RAND_MAX-0.5f);
  for (auto& v: z) v = fromfloat<T>(rand()/(float)RAND_MAX-0.5f);
  const int64_t ks = gradient_ksteps<T>(R), ld_out=(K+15)/16*16;
  T* ap = (T*)aligned_alloc(64, ((gradient_panels_size<T>(R,G)*sizeof(T))+63)/64*64);
  T* bp = (T*)aligned_alloc(64, ((gradient_operand_size<T>(R,K)*sizeof(T))+63)/64*64);
  float* out = (float*)aligned_alloc(64, ((G*ld_out*4)+63)/64*64);
  double prep=1e9;
  static std::vector<char> junk(96<<20);
  auto once = [&]() {
    std::vector<std::thread> th;
    if (getenv("FLUSH")) for (size_t i=0;i<junk.size();i+=64) junk[i]++;
    auto tp=std::chrono::steady_clock::now();
    for (int t=0;t<threads;++t) th.emplace_back([&,t]{
      int64_t k0 = ks*t/threads, k1 = ks*(t+1)/threads;
      int64_t P = gradient_panels(G); 
      pack_gradient_operand<T>([&](int64_t r){return z.data()+r*K;}, R, K, bp, k0, k1);
      pack_gradient_panels<T>(g.data(), G, R, G, ap, P*t/threads, P*(t+1)/threads);
    });
    for (auto& x: th) x.join();
    th.clear();
    auto t0=std::chrono::steady_clock::now();
    prep = std::min(prep, std::chrono::duration<double>(t0-tp).count());
    const T* a = ap; const T* b = bp;
    for (int t=0;t<threads;++t) th.emplace_back([&,t]{
      int64_t tiles=(G+5)/6;
      weight_gradient_rows<T>(a, b, ks, G, K, out, ld_out, tiles*t/threads*6, std::min(G, tiles*(t+1)/threads*6));
    });
    for (auto& x: th) x.join();
    return std::chrono::duration<double>(std::chrono::steady_clock::now()-t0).count();
  };
  double best=1e9; for (int i=0;i<reps;++i) best=std::min(best, once());
  printf("%s R %ld G %ld K %ld threads %d: %.3f ms, %.0f GFLOP/s; pack+transpose %.3f ms\n", kPer==2?"bf16":"fp32", R,G,K,threads,best*1e3, 2.0*R*G*K/best/1e9, prep*1e3);
  if (check) {
    double num=0, den=0;
    for (int64_t m=0;m<G;m+=7) for (int64_t c=0;c<K;++c) { double s=0; for (int64_t r=0;r<R;++r) s+=double(tofloat(g[r*G+m]))*tofloat(z[r*K+c]); num+=(out[m*ld_out+c]-s)*(out[m*ld_out+c]-s); den+=s*s; }
    printf("  rel err %.3g\n", std::sqrt(num/den));
  }
}
int main(int argc, char** argv) {
  int64_t R=atoll(argv[2]),G=atoll(argv[3]),K=atoll(argv[4]); int th=argc>5?atoi(argv[5]):2; bool check=argc>6;
  if (std::string(argv[1])=="bf16") run<Bf16>(R,G,K,th,5,check); else run<float>(R,G,K,th,5,check);
}
