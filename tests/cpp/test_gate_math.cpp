// The gate math header and the CPU step loops against the plain double reference.
#include <cstring>

#include "lstm_step.h"
#include "reference_step.h"

namespace {

using fastlstm::StepBackwardArgs;
using fastlstm::StepForwardArgs;

void check_scalar_functions(ref::Checks& checks) {
  double sig = 0, th = 0, ex = 0;
  for (double x = -30; x <= 30; x += 1e-3) {
    const float xf = static_cast<float>(x);
    sig = std::max(sig, std::fabs(fastlstm::sigmoid(xf) - ref::sigmoid(xf)));
    th = std::max(th, std::fabs(fastlstm::tanh_(xf) - std::tanh(static_cast<double>(xf))));
    const double e = std::exp(static_cast<double>(xf));
    ex = std::max(ex, std::fabs(fastlstm::exp_(xf) - e) / e);
  }
  checks.expect(sig < 5e-7, "float sigmoid, max abs error on [-30, 30]", sig);
  checks.expect(th < 5e-7, "float tanh, max abs error on [-30, 30]", th);
  checks.expect(ex < 5e-7, "float exp, max rel error on [-30, 30]", ex);
  // Relative accuracy of tanh down to tiny |x| (small activations): 1 - 2/(1 + e^2x)
  // alone is ~1e-7 off in absolute terms there, a relative error of 1e-4 at x = 1e-3.
  double th_rel = 0;
  for (double x = 1e-30; x <= 30; x *= 1.001) {
    for (const float xf : {static_cast<float>(x), -static_cast<float>(x)}) {
      const double t = std::tanh(static_cast<double>(xf));
      th_rel = std::max(th_rel, std::fabs(fastlstm::tanh_(xf) - t) / std::fabs(t));
    }
  }
  checks.expect(th_rel < 3e-7, "float tanh, max rel error on 1e-30 <= |x| <= 30", th_rel);
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const float inf = std::numeric_limits<float>::infinity();
  checks.expect(std::isnan(fastlstm::sigmoid(nan)) && std::isnan(fastlstm::tanh_(nan)),
                "NaN in gives NaN out", 0);
  checks.expect(fastlstm::sigmoid(inf) == 1.f && fastlstm::sigmoid(-inf) < 1e-30f &&
                    fastlstm::tanh_(inf) == 1.f && fastlstm::tanh_(-inf) == -1.f,
                "saturates at +-inf without NaN", 0);
}

template <typename T>
std::vector<T> cast(const ref::Vec& v) {
  return std::vector<T>(v.begin(), v.end());
}

template <typename T>
std::vector<T> poisoned(size_t n) {
  return std::vector<T>(n, std::numeric_limits<T>::quiet_NaN());
}

template <typename T>
void check_step(ref::Checks& checks, const char* type, double tol) {
  const int B = 3, H = 37;  // H odd: no vector width divides it
  std::mt19937 rng(42);
  const ref::Vec xproj = ref::random_vec(rng, B * 4 * H), rec = ref::random_vec(rng, B * 4 * H),
                 c_prev = ref::random_vec(rng, B * H), dh = ref::random_vec(rng, B * H),
                 dh_rec = ref::random_vec(rng, B * H), dc_out = ref::random_vec(rng, B * H),
                 dc_next = ref::random_vec(rng, B * H);
  // The reference sees the inputs rounded to T, as the kernels do.
  const auto x_t = cast<T>(xproj), r_t = cast<T>(rec), cp_t = cast<T>(c_prev);
  ref::Vec gates(B * 4 * H), c(B * H), h(B * H);
  ref::step_forward(B, H, ref::Vec(x_t.begin(), x_t.end()), ref::Vec(r_t.begin(), r_t.end()),
                    ref::Vec(cp_t.begin(), cp_t.end()), gates, c, h);

  auto g_t = poisoned<T>(B * 4 * H), c_t = poisoned<T>(B * H), h_t = poisoned<T>(B * H);
  const StepForwardArgs<T, T> fwd{x_t.data(), r_t.data(), cp_t.data(), g_t.data(),
                                  c_t.data(), h_t.data(), B,          H};
  fastlstm::step_forward_rows(fwd, 0, B);
  char what[96];
  std::snprintf(what, sizeof what, "%s step forward: h, c, gates", type);
  checks.expect_all_below({ref::relative_error(h_t, h), ref::relative_error(c_t, c),
                           ref::relative_error(g_t, gates)},
                          tol, what);

  // Backward, with and without a gradient on c_t from outside.
  for (bool with_grad_c : {true, false}) {
    ref::Vec dh_total(B * H), dc_total(B * H), grad_pre(B * 4 * H), grad_c_prev(B * H);
    const auto dh_t = cast<T>(dh), dhr_t = cast<T>(dh_rec), dco_t = cast<T>(dc_out);
    for (int k = 0; k < B * H; ++k) {
      dh_total[k] = double(dh_t[k]) + double(dhr_t[k]);
      dc_total[k] = double(T(dc_next[k])) + (with_grad_c ? double(dco_t[k]) : 0.0);
    }
    ref::step_backward(B, H, ref::Vec(g_t.begin(), g_t.end()), ref::Vec(cp_t.begin(), cp_t.end()),
                       ref::Vec(c_t.begin(), c_t.end()), dh_total, dc_total, grad_pre,
                       grad_c_prev);
    auto carry = cast<T>(dc_next);
    auto gp_t = poisoned<T>(B * 4 * H);
    const T* grad_c = with_grad_c ? dco_t.data() : nullptr;
    const StepBackwardArgs<T, T> bwd{g_t.data(),  cp_t.data(),  c_t.data(),   dh_t.data(),
                                     dhr_t.data(), grad_c,       carry.data(), gp_t.data(),
                                     B,            H};
    fastlstm::step_backward_rows(bwd, 0, B);
    std::snprintf(what, sizeof what, "%s step backward%s", type,
                  with_grad_c ? " (with grad_c)" : "");
    checks.expect_all_below(
        {ref::relative_error(gp_t, grad_pre), ref::relative_error(carry, grad_c_prev)}, tol, what);
  }
}

// The reference backward itself against central differences of the reference forward, so
// the two references cannot share a mistake unnoticed.
void check_reference_backward(ref::Checks& checks) {
  const int B = 2, H = 5;
  std::mt19937 rng(7);
  ref::Vec xproj = ref::random_vec(rng, B * 4 * H), rec(B * 4 * H, 0.0),
           c_prev = ref::random_vec(rng, B * H);
  const ref::Vec wh = ref::random_vec(rng, B * H), wc = ref::random_vec(rng, B * H);
  auto loss = [&](const ref::Vec& x, const ref::Vec& cp) {
    ref::Vec g(B * 4 * H), c(B * H), h(B * H);
    ref::step_forward(B, H, x, rec, cp, g, c, h);
    double l = 0;
    for (int k = 0; k < B * H; ++k) l += wh[k] * h[k] + wc[k] * c[k];
    return l;
  };
  ref::Vec g(B * 4 * H), c(B * H), h(B * H), grad_pre(B * 4 * H), grad_cp(B * H);
  ref::step_forward(B, H, xproj, rec, c_prev, g, c, h);
  ref::step_backward(B, H, g, c_prev, c, wh, wc, grad_pre, grad_cp);
  ref::Vec numeric(B * 4 * H), numeric_cp(B * H);
  const double eps = 1e-6;
  for (int k = 0; k < B * 4 * H; ++k) {
    ref::Vec up = xproj, down = xproj;
    up[k] += eps, down[k] -= eps;
    numeric[k] = (loss(up, c_prev) - loss(down, c_prev)) / (2 * eps);
  }
  for (int k = 0; k < B * H; ++k) {
    ref::Vec up = c_prev, down = c_prev;
    up[k] += eps, down[k] -= eps;
    numeric_cp[k] = (loss(xproj, up) - loss(xproj, down)) / (2 * eps);
  }
  const double err = std::max(ref::relative_error(grad_pre, numeric),
                              ref::relative_error(grad_cp, numeric_cp));
  checks.expect(err < 1e-7, "reference backward vs finite differences", err);
}

}  // namespace

int main() {
  ref::Checks checks;
  check_scalar_functions(checks);
  check_reference_backward(checks);
  check_step<float>(checks, "float", 1e-6);
  check_step<double>(checks, "double", 1e-13);
  std::printf("%d check(s) failed\n", checks.failed);
  return checks.failed ? 1 : 0;
}
