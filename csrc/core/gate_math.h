// The LSTM gate math: the one place it lives. Shared by the C++ CPU op, the CUDA
// kernels and the C++ tests, so every backend computes the same function.
//
// Gate order is nn.LSTM's: i (input), f (forget), g (cell candidate), o (output).
//   i = sigmoid(a_i)   f = sigmoid(a_f)   g = tanh(a_g)   o = sigmoid(a_o)
//   c = f * c_prev + i * g
//   h = o * tanh(c)
// `Acc` is the arithmetic type: float for float/half/bfloat16 storage, double for double.
#pragma once

// Always inlined: the CPU op's row loops are compiled once per ISA (target_clones), and a
// callee left out of line is compiled for the baseline ISA only, unvectorised (seen: the
// bf16 loop 3x slower than the fp32 one until it was forced inline).
#if defined(__CUDACC__)
#define FASTLSTM_HD __host__ __device__ __forceinline__
#elif defined(__GNUC__)
#define FASTLSTM_HD inline __attribute__((always_inline))
#else
#define FASTLSTM_HD inline
#endif

#include <math.h>
#include <stdint.h>

namespace fastlstm {

// float exp without a library call: branch-free, so the CPU loop over a batch auto-
// vectorises (libm's expf does not, and made the CPU op 6x slower than ATen's), and the
// GPU runs the same function. Cody-Waite reduction x = n ln2 + r, |r| <= ln2/2, then a
// degree-6 Taylor polynomial for e^r (truncation ~2e-8 relative) and 2^n from its bits.
// NaN stays NaN (the clamps compare, they do not fmin/fmax); |x| is clamped at 87 so
// 2^n stays a normal float.
FASTLSTM_HD float exp_(float x) {
  x = x > 87.f ? 87.f : x;
  x = x < -87.f ? -87.f : x;
  // Adding 1.5 * 2^23 rounds x log2(e) to an integer n held in the low mantissa bits.
  const float shifter = 12582912.f;
  const float t = x * 1.44269504088896341f + shifter;
  const float n = t - shifter;
  const float r = (x - n * 0.693145751953125f) - n * 1.428606765330187e-06f;
  float p = 1.f / 720;
  p = p * r + 1.f / 120;
  p = p * r + 1.f / 24;
  p = p * r + 1.f / 6;
  p = p * r + 0.5f;
  p = p * r + 1.f;
  p = p * r + 1.f;
  union { float f; int32_t i; } bits_t{t}, scale{};
  scale.i = (bits_t.i - 0x4B400000 + 127) << 23;  // 2^n: n + bias into the exponent field
  return p * scale.f;
}
FASTLSTM_HD double exp_(double x) { return exp(x); }
// tanh through exp, 1 - 2 / (1 + e^{2x}), for |x| >= 0.625 (relative error ~1e-7; exactly
// +-1 in the tails). Nearer 0 that form cancels (absolute error ~1e-7 however small tanh
// is), so there an odd polynomial x + x^3 P(x^2) keeps the relative error ~1e-8 (P fitted
// to tanh's relative error on [0, 0.625]). Both are computed and one selected, without a
// branch, so the CPU loop still vectorises. NaN fails the comparison and stays NaN.
FASTLSTM_HD float tanh_(float x) {
  const float x2 = x * x;
  float p = -0.005867799232151495f;
  p = p * x2 + 0.020795150094935225f;
  p = p * x2 - 0.053791392046962656f;
  p = p * x2 + 0.1333211884963651f;
  p = p * x2 - 0.3333330964628818f;
  const float near_zero = x + x * x2 * p;
  const float far = 1.f - 2.f / (1.f + exp_(2.f * x));
  return fabsf(x) < 0.625f ? near_zero : far;
}
FASTLSTM_HD double tanh_(double x) { return tanh(x); }

// exp(-x) overflows to +inf for very negative x, giving 1/inf = 0: no NaN.
template <typename Acc>
FASTLSTM_HD Acc sigmoid(Acc x) {
  return Acc(1) / (Acc(1) + exp_(-x));
}

template <typename Acc>
struct Gates {
  Acc i, f, g, o;
};

// Pre-activations (x W_ih^T + b + h W_hh^T, one unit) -> activated gates.
template <typename Acc>
FASTLSTM_HD Gates<Acc> activate_gates(Acc a_i, Acc a_f, Acc a_g, Acc a_o) {
  return Gates<Acc>{sigmoid(a_i), sigmoid(a_f), tanh_(a_g), sigmoid(a_o)};
}

// One unit's state update. Writes the new cell state `c` and hidden output `h`.
template <typename Acc>
FASTLSTM_HD void cell_forward(const Gates<Acc>& gate, Acc c_prev, Acc& c, Acc& h) {
  c = gate.f * c_prev + gate.i * gate.g;
  h = gate.o * tanh_(c);
}

// Backward of one unit's step, from the saved activated gates and cell states.
//   dh:    total gradient on h_t (from the output at t and from step t+1)
//   dc_in: gradient on c_t arriving from step t+1 (and from a use of c_t outside)
// Returns gradients on the four pre-activations; writes the gradient on c_{t-1}.
template <typename Acc>
FASTLSTM_HD Gates<Acc> cell_backward(const Gates<Acc>& gate, Acc c_prev, Acc c, Acc dh,
                                     Acc dc_in, Acc& dc_prev) {
  const Acc tanh_c = tanh_(c);
  const Acc dc = dc_in + dh * gate.o * (Acc(1) - tanh_c * tanh_c);
  dc_prev = dc * gate.f;
  Gates<Acc> d;
  d.i = dc * gate.g * gate.i * (Acc(1) - gate.i);
  d.f = dc * c_prev * gate.f * (Acc(1) - gate.f);
  d.g = dc * gate.i * (Acc(1) - gate.g * gate.g);
  d.o = dh * tanh_c * gate.o * (Acc(1) - gate.o);
  return d;
}

}  // namespace fastlstm
