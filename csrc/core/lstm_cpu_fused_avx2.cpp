// The fused layer's fp32 kernels built for AVX2 + FMA: lstm_cpu_fused.h compiled a second
// time, into fused::isa_avx2, behind the entry points it declares in fused::avx2. What a CPU
// without AVX-512 runs; on one with it, FASTLSTM_CPU_ISA=avx2 picks these (tests, and the
// AVX2 imitation in benchmarks/NOTES.md).
#define FASTLSTM_FUSED_AVX2 1
#include "lstm_cpu_fused.h"

#ifdef FASTLSTM_CPU_FUSED
namespace fastlstm {
namespace fused {
namespace avx2 {

bool supported() { return isa_avx2::cpu_supports<float>(); }

void pack_forward(const float* w, int64_t hidden, int64_t K, float* out, int64_t group_begin,
                  int64_t group_end, int gates) {
  isa_avx2::pack_forward(w, hidden, K, out, group_begin, group_end, gates);
}

void pack_backward(const float* w, int64_t hidden, float* out, int64_t group_begin,
                   int64_t group_end, int64_t columns) {
  isa_avx2::pack_backward(w, hidden, out, group_begin, group_end, columns);
}

void forward_step(const FusedForwardArgs<float>& a, const Part& p, int64_t s) {
  isa_avx2::forward_step(a, p, s);
}

void backward_step(const FusedBackwardArgs<float>& a, const Part& p, int64_t s) {
  isa_avx2::backward_step(a, p, s);
}

}  // namespace avx2
}  // namespace fused
}  // namespace fastlstm
#endif
