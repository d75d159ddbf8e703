// A plain double-precision LSTM step, written from the equations without gate_math.h,
// that the C++ tests compare the shared header and the kernels against.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <initializer_list>
#include <limits>
#include <random>
#include <vector>

namespace ref {

using Vec = std::vector<double>;

inline double sigmoid(double x) { return 1.0 / (1.0 + std::exp(-x)); }

// xproj, rec: [B, 4H] rows [i|f|g|o]; c_prev: [B, H]. Outputs gates [B, 4H], c, h [B, H].
inline void step_forward(int B, int H, const Vec& xproj, const Vec& rec, const Vec& c_prev,
                         Vec& gates, Vec& c, Vec& h) {
  for (int b = 0; b < B; ++b)
    for (int j = 0; j < H; ++j) {
      const double* x = &xproj[b * 4 * H];
      const double* r = &rec[b * 4 * H];
      const double i = sigmoid(x[j] + r[j]), f = sigmoid(x[H + j] + r[H + j]);
      const double g = std::tanh(x[2 * H + j] + r[2 * H + j]);
      const double o = sigmoid(x[3 * H + j] + r[3 * H + j]);
      double* gt = &gates[b * 4 * H];
      gt[j] = i, gt[H + j] = f, gt[2 * H + j] = g, gt[3 * H + j] = o;
      c[b * H + j] = f * c_prev[b * H + j] + i * g;
      h[b * H + j] = o * std::tanh(c[b * H + j]);
    }
}

// Gradients on the pre-activations and on c_prev, given dL/dh_t (dh) and dL/dc_t (dc).
inline void step_backward(int B, int H, const Vec& gates, const Vec& c_prev, const Vec& c,
                          const Vec& dh, const Vec& dc, Vec& grad_pre, Vec& grad_c_prev) {
  for (int b = 0; b < B; ++b)
    for (int j = 0; j < H; ++j) {
      const double* gt = &gates[b * 4 * H];
      const double i = gt[j], f = gt[H + j], g = gt[2 * H + j], o = gt[3 * H + j];
      const int k = b * H + j;
      const double tc = std::tanh(c[k]);
      const double dct = dc[k] + dh[k] * o * (1 - tc * tc);
      double* gp = &grad_pre[b * 4 * H];
      gp[j] = dct * g * i * (1 - i);
      gp[H + j] = dct * c_prev[k] * f * (1 - f);
      gp[2 * H + j] = dct * i * (1 - g * g);
      gp[3 * H + j] = dh[k] * tc * o * (1 - o);
      grad_c_prev[k] = dct * f;
    }
}

inline Vec random_vec(std::mt19937& rng, size_t n, double scale = 1.0) {
  std::normal_distribution<double> dist(0.0, scale);
  Vec v(n);
  for (auto& x : v) x = dist(rng);
  return v;
}

// ||a - b|| / ||b||; infinity if a holds a NaN or inf (so an unwritten, poisoned
// element always fails).
template <typename A>
double relative_error(const std::vector<A>& a, const Vec& b) {
  double diff = 0, norm = 0;
  for (size_t k = 0; k < b.size(); ++k) {
    const double x = static_cast<double>(a[k]);
    if (!std::isfinite(x)) return std::numeric_limits<double>::infinity();
    diff += (x - b[k]) * (x - b[k]);
    norm += b[k] * b[k];
  }
  return std::sqrt(diff) / (norm > 0 ? std::sqrt(norm) : 1.0);
}

struct Checks {
  int failed = 0;
  void expect(bool ok, const char* what, double value) {
    std::printf("%s %-44s %.3g\n", ok ? "ok  " : "FAIL", what, value);
    failed += !ok;
  }
  // Passes when the largest of `errors` is under `tol`; prints that largest error.
  void expect_all_below(std::initializer_list<double> errors, double tol, const char* what) {
    const double worst = std::max(errors);
    expect(worst < tol, what, worst);
  }
};

}  // namespace ref
