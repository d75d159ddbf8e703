// The LSTM gate math: the one place it lives. Shared by the C++ CPU op, the CUDA
// kernels and the C++ tests, so every backend computes the same function.
//
// Gate order is nn.LSTM's: i (input), f (forget), g (cell candidate), o (output).
//   i = sigmoid(a_i)   f = sigmoid(a_f)   g = tanh(a_g)   o = sigmoid(a_o)
//   c = f * c_prev + i * g
//   h = o * tanh(c)
// `Acc` is the arithmetic type: float for float/half/bfloat16 storage, double for double.
#pragma once

#if defined(__CUDACC__)
#define FASTLSTM_HD __host__ __device__ __forceinline__
#else
#define FASTLSTM_HD inline
#endif

#include <math.h>

namespace fastlstm {

// Overloads rather than std:: so the same call compiles in host and device code.
FASTLSTM_HD float exp_(float x) { return expf(x); }
FASTLSTM_HD double exp_(double x) { return exp(x); }
FASTLSTM_HD float tanh_(float x) { return tanhf(x); }
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
