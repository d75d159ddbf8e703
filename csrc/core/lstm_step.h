// One LSTM time step over a batch, element by element: the pointwise half of a step
// (the recurrent GEMM h_{t-1} W_hh^T is done before it by a BLAS call).
// Framework-free: raw pointers and sizes. The CPU op loops the *_element functions over
// rows and units; the CUDA kernels (lstm_step_cuda.cu) run one element per thread.
//
// Shapes, all row-major and contiguous. B = batch rows, H = hidden units, `T` the storage
// type (float, double, half, bfloat16), `Acc` the arithmetic type, `Rec` the type the
// recurrent GEMM writes its products in (Acc on CUDA; T on the CPU, whose bf16 GEMMs
// through ATen round their fp32 accumulators to bf16). What stays inside the
// layer (cell states, saved gates, the recurrent GEMM's products) is kept in Acc: rounding
// a saturated gate like 0.998 to bfloat16 loses most of 1 - gate, which backward needs.
// A row of a [B, 4H] gate tensor is [i | f | g | o], each H wide (nn.LSTM's order).
#pragma once

#include <stdint.h>

#include "gate_math.h"

#if defined(__CUDACC__)
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#endif

namespace fastlstm {

// Storage <-> arithmetic conversions. Explicit for the half types: torch's builds define
// __CUDA_NO_HALF_CONVERSIONS__, which removes their implicit casts.
template <typename T, typename Acc>
struct Convert {
  static FASTLSTM_HD Acc load(T x) { return static_cast<Acc>(x); }
  static FASTLSTM_HD T store(Acc x) { return static_cast<T>(x); }
};

// bfloat16 on the host: the top 16 bits of an IEEE float (the layout of torch's BFloat16).
// A plain struct, so this header stays framework-free and the conversions below are
// integer ops the compiler vectorises (it will not vectorise c10::BFloat16's).
struct Bf16 {
  uint16_t bits;
};
template <>
struct Convert<Bf16, float> {
  static FASTLSTM_HD float load(Bf16 x) {
    const uint32_t u = static_cast<uint32_t>(x.bits) << 16;
    float f;
    __builtin_memcpy(&f, &u, sizeof f);
    return f;
  }
  // Round to nearest, ties to even; a NaN stays a (quiet) NaN: rounding its bits could
  // carry into the sign and exponent and make it an infinity or zero.
  static FASTLSTM_HD Bf16 store(float f) {
    uint32_t u;
    __builtin_memcpy(&u, &f, sizeof u);
    const uint32_t rounded = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
    const bool nan = (u & 0x7FFFFFFFu) > 0x7F800000u;
    return Bf16{static_cast<uint16_t>(nan ? 0x7FC0u : rounded)};
  }
};
#if defined(__CUDACC__)
template <>
struct Convert<__half, float> {
  static FASTLSTM_HD float load(__half x) { return __half2float(x); }
  static FASTLSTM_HD __half store(float x) { return __float2half_rn(x); }
};
template <>
struct Convert<__nv_bfloat16, float> {
  static FASTLSTM_HD float load(__nv_bfloat16 x) { return __bfloat162float(x); }
  static FASTLSTM_HD __nv_bfloat16 store(float x) { return __float2bfloat16_rn(x); }
};
#endif

template <typename T, typename Acc, typename Rec = Acc>
struct StepForwardArgs {
  const T* xproj;     // [B, 4H] x_t W_ih^T + b_ih + b_hh
  const Rec* rec;     // [B, 4H] h_{t-1} W_hh^T
  const Acc* c_prev;  // [B, H]  c_{t-1}
  Acc* gates;         // [B, 4H] out: activated gates, saved for backward
  Acc* c;             // [B, H]  out: c_t, saved for backward
  T* h;               // [B, H]  out: h_t
  int64_t batch, hidden;
};

template <typename T, typename Acc, typename Rec = Acc>
struct StepBackwardArgs {
  const Acc* gates;     // [B, 4H] activated gates of step t (from forward)
  const Acc* c_prev;    // [B, H]  c_{t-1}
  const Acc* c;         // [B, H]  c_t
  const T* grad_h;      // [B, H]  dL/dh_t from the layer output at t
  const Rec* grad_h_rec;  // [B, H] dL/dh_t through step t+1 (its gate grads times W_hh)
  const T* grad_c;      // [B, H]  dL/dc_t from outside the recurrence, or nullptr
  Acc* grad_c_carry;    // [B, H]  in: dL/dc_t through step t+1; out: dL/dc_{t-1}
  T* grad_pre;          // [B, 4H] out: dL/d(pre-activations) = dL/dxproj_t = dL/drec_t
  int64_t batch, hidden;
};

// One (batch row, unit) element.
template <typename T, typename Acc, typename Rec>
FASTLSTM_HD void step_forward_element(const StepForwardArgs<T, Acc, Rec>& a, int64_t row,
                                      int64_t unit) {
  using Cv = Convert<T, Acc>;
  using CvRec = Convert<Rec, Acc>;
  const int64_t H = a.hidden;
  const int64_t idx = row * H + unit;
  const int64_t gate0 = row * 4 * H + unit;  // the unit's i gate in its [B, 4H] row
  const auto pre = [&](int k) {
    return Cv::load(a.xproj[gate0 + k * H]) + CvRec::load(a.rec[gate0 + k * H]);
  };
  const Gates<Acc> gate = activate_gates(pre(0), pre(1), pre(2), pre(3));
  Acc c, h;
  cell_forward(gate, a.c_prev[idx], c, h);
  a.gates[gate0] = gate.i;
  a.gates[gate0 + H] = gate.f;
  a.gates[gate0 + 2 * H] = gate.g;
  a.gates[gate0 + 3 * H] = gate.o;
  a.c[idx] = c;
  a.h[idx] = Cv::store(h);
}

// kHasGradC: whether a.grad_c is given. A compile-time flag, so the CPU loop over units
// has no branch in it (a branch there stops vectorisation: 10x slower).
template <bool kHasGradC, typename T, typename Acc, typename Rec>
FASTLSTM_HD void step_backward_element(const StepBackwardArgs<T, Acc, Rec>& a, int64_t row,
                                       int64_t unit) {
  using Cv = Convert<T, Acc>;
  const int64_t H = a.hidden;
  const int64_t idx = row * H + unit;
  const int64_t gate0 = row * 4 * H + unit;
  const Gates<Acc> gate{a.gates[gate0], a.gates[gate0 + H], a.gates[gate0 + 2 * H],
                        a.gates[gate0 + 3 * H]};
  const Acc dh = Cv::load(a.grad_h[idx]) + Convert<Rec, Acc>::load(a.grad_h_rec[idx]);
  Acc dc_in = a.grad_c_carry[idx];
  if (kHasGradC) dc_in += Cv::load(a.grad_c[idx]);
  Acc dc_prev;
  const Gates<Acc> d = cell_backward(gate, a.c_prev[idx], a.c[idx], dh, dc_in, dc_prev);
  a.grad_c_carry[idx] = dc_prev;  // same element read above: safe in place
  a.grad_pre[gate0] = Cv::store(d.i);
  a.grad_pre[gate0 + H] = Cv::store(d.f);
  a.grad_pre[gate0 + 2 * H] = Cv::store(d.g);
  a.grad_pre[gate0 + 3 * H] = Cv::store(d.o);
}

// Outputs never alias inputs (the op allocates them); this tells the compiler so, which it
// needs before it vectorises a loop with this many pointers.
#if defined(__clang__)
#define FASTLSTM_NO_ALIAS_LOOP _Pragma("clang loop vectorize(assume_safety)")
#elif defined(__GNUC__)
#define FASTLSTM_NO_ALIAS_LOOP _Pragma("GCC ivdep")
#else
#define FASTLSTM_NO_ALIAS_LOOP
#endif

// CPU: batch rows [row_begin, row_end). The unit loop is innermost and branch-free, so
// the compiler vectorises it (the binding splits rows across threads). Build with
// -fno-trapping-math: otherwise GCC will not turn exp_'s clamps into selects.
template <typename T, typename Acc, typename Rec>
FASTLSTM_HD void step_forward_rows(const StepForwardArgs<T, Acc, Rec>& a, int64_t row_begin,
                              int64_t row_end) {
  for (int64_t row = row_begin; row < row_end; ++row) {
    FASTLSTM_NO_ALIAS_LOOP
    for (int64_t unit = 0; unit < a.hidden; ++unit) step_forward_element(a, row, unit);
  }
}

template <typename T, typename Acc, typename Rec>
FASTLSTM_HD void step_backward_rows(const StepBackwardArgs<T, Acc, Rec>& a, int64_t row_begin,
                               int64_t row_end) {
  for (int64_t row = row_begin; row < row_end; ++row) {
    if (a.grad_c) {
      FASTLSTM_NO_ALIAS_LOOP
      for (int64_t unit = 0; unit < a.hidden; ++unit) step_backward_element<true>(a, row, unit);
    } else {
      FASTLSTM_NO_ALIAS_LOOP
      for (int64_t unit = 0; unit < a.hidden; ++unit) step_backward_element<false>(a, row, unit);
    }
  }
}

}  // namespace fastlstm
