// The fused CPU layer (core/lstm_cpu_fused.h), forward and backward, fp32 and bf16, against
// a plain double layer built from reference_step.h; with one worker, workers splitting the
// units (meeting at the barrier; one thread running two of them) and workers splitting the
// rows. Outputs start as NaN, so an element no worker writes fails. Exit 77 (skipped)
// where the CPU lacks AVX-512 (or AVX512-BF16 for the bf16 cases). Built a second time with
// FASTLSTM_FUSED_AVX2 (test_cpu_fused_avx2): the fp32 cases on the AVX2 + FMA build.
#include <cstdio>
#include <thread>
#include <vector>

#include "lstm_cpu_fused.h"
#include "reference_step.h"
#include "transpose.h"
#include "weight_gradient_cpu.h"

#ifndef FASTLSTM_CPU_FUSED
int main() {
  std::printf("skipped: not an x86-64 GCC/Clang build\n");
  return 77;
}
#else

namespace {

using fastlstm::Bf16;
using fastlstm::Convert;
using namespace fastlstm::fused;

struct Shape {
  int S, B, H;
  bool reverse;
  int I;  // input size, for the fused input projection
};

struct Layer {  // the double reference's inputs and results
  ref::Vec xproj, w, h0, c0, grad_hs, grad_cs;
  ref::Vec hs, cs, gates, grad_xproj, grad_h0, grad_c0;
};

template <typename T>
double as_double(T x) {
  return static_cast<double>(Convert<T, float>::load(x));
}
template <typename T>
T from_double(double x) {
  return Convert<T, float>::store(static_cast<float>(x));
}
template <typename T>
ref::Vec rounded(const ref::Vec& v) {  // what the kernel sees of v when stored as T
  ref::Vec out(v.size());
  for (size_t k = 0; k < v.size(); ++k) out[k] = as_double(from_double<T>(v[k]));
  return out;
}
template <typename T>
std::vector<T> to(const ref::Vec& v) {
  std::vector<T> out(v.size());
  for (size_t k = 0; k < v.size(); ++k) out[k] = from_double<T>(v[k]);
  return out;
}
template <typename T>
std::vector<double> widen(const std::vector<T>& v) {
  std::vector<double> out(v.size());
  for (size_t k = 0; k < v.size(); ++k) out[k] = as_double(v[k]);
  return out;
}
template <typename T>
std::vector<T> nans(size_t n) {
  return std::vector<T>(n, from_double<T>(std::numeric_limits<double>::quiet_NaN()));
}

// A [rows, K] weight with zero columns up to whole k-steps, as pack_forward takes it.
template <typename T>
std::vector<T> padded_columns(const std::vector<T>& w, int64_t rows, int64_t K) {
  const int64_t width = padded_width<T>(K);
  std::vector<T> out(rows * width, T{});
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t k = 0; k < K; ++k) out[r * width + k] = w[r * K + k];
  return out;
}

template <typename T>
Layer make_layer(const Shape& sh, std::mt19937& rng) {
  const int S = sh.S, B = sh.B, H = sh.H;
  Layer l;
  l.xproj = rounded<T>(ref::random_vec(rng, size_t(S) * B * 4 * H));
  l.w = rounded<T>(ref::random_vec(rng, size_t(4) * H * H, 1.0 / std::sqrt(double(H))));
  l.h0 = rounded<T>(ref::random_vec(rng, size_t(B) * H));
  l.c0 = ref::random_vec(rng, size_t(B) * H);
  l.grad_hs = rounded<T>(ref::random_vec(rng, size_t(S) * B * H));
  l.grad_cs = rounded<T>(ref::random_vec(rng, size_t(S) * B * H));
  return l;
}

// The reference, from the equations: per step rec = h_{t-1} W^T, then reference_step.h.
void reference_layer(const Shape& sh, Layer& l) {
  const int S = sh.S, B = sh.B, H = sh.H;
  auto time = [&](int s) { return sh.reverse ? S - 1 - s : s; };
  l.hs.assign(size_t(S) * B * H, 0);
  l.cs = l.hs;
  l.gates.assign(size_t(S) * B * 4 * H, 0);
  ref::Vec h = l.h0, c = l.c0;
  for (int s = 0; s < S; ++s) {
    const int t = time(s);
    ref::Vec x(l.xproj.begin() + size_t(t) * B * 4 * H, l.xproj.begin() + size_t(t + 1) * B * 4 * H);
    ref::Vec rec(size_t(B) * 4 * H, 0), g(size_t(B) * 4 * H), c_new(size_t(B) * H), h_new(size_t(B) * H);
    for (int b = 0; b < B; ++b)
      for (int n = 0; n < 4 * H; ++n)
        for (int k = 0; k < H; ++k) rec[b * 4 * H + n] += h[b * H + k] * l.w[size_t(n) * H + k];
    ref::step_forward(B, H, x, rec, c, g, c_new, h_new);
    std::copy(g.begin(), g.end(), l.gates.begin() + size_t(t) * B * 4 * H);
    std::copy(c_new.begin(), c_new.end(), l.cs.begin() + size_t(t) * B * H);
    std::copy(h_new.begin(), h_new.end(), l.hs.begin() + size_t(t) * B * H);
    h = h_new, c = c_new;
  }
  l.grad_xproj.assign(size_t(S) * B * 4 * H, 0);
  ref::Vec dh_rec(size_t(B) * H, 0), carry(size_t(B) * H, 0);
  for (int s = S - 1; s >= 0; --s) {
    const int t = time(s);
    ref::Vec dh(size_t(B) * H), dc(size_t(B) * H), grad_pre(size_t(B) * 4 * H), dc_prev(size_t(B) * H);
    for (int k = 0; k < B * H; ++k) {
      dh[k] = l.grad_hs[size_t(t) * B * H + k] + dh_rec[k];
      dc[k] = carry[k] + l.grad_cs[size_t(t) * B * H + k];
    }
    ref::Vec g(l.gates.begin() + size_t(t) * B * 4 * H, l.gates.begin() + size_t(t + 1) * B * 4 * H);
    ref::Vec cp = s == 0 ? l.c0 : ref::Vec(l.cs.begin() + size_t(time(s - 1)) * B * H,
                                           l.cs.begin() + size_t(time(s - 1) + 1) * B * H);
    ref::Vec ct(l.cs.begin() + size_t(t) * B * H, l.cs.begin() + size_t(t + 1) * B * H);
    ref::step_backward(B, H, g, cp, ct, dh, dc, grad_pre, dc_prev);
    std::copy(grad_pre.begin(), grad_pre.end(), l.grad_xproj.begin() + size_t(t) * B * 4 * H);
    std::fill(dh_rec.begin(), dh_rec.end(), 0.0);
    for (int b = 0; b < B; ++b)
      for (int k = 0; k < H; ++k)
        for (int n = 0; n < 4 * H; ++n) dh_rec[b * H + k] += grad_pre[b * 4 * H + n] * l.w[size_t(n) * H + k];
    carry = dc_prev;
  }
  l.grad_h0 = dh_rec;
  l.grad_c0 = carry;
}

// How the workers are laid out: `threads` threads, thread k running parts[first[k]..first[k+1]).
struct Plan {
  const char* name;
  std::vector<Part> parts;
  std::vector<int> first;  // size threads + 1
  bool barrier;
};

std::vector<Plan> plans(const Shape& sh) {
  const int64_t B = sh.B, G = unit_groups(sh.H);
  std::vector<Plan> out{{"one worker", {{0, B, 0, G}}, {0, 1}, false}};
  if (G >= 3) {
    const int64_t a = G / 3, b = 2 * G / 3;
    out.push_back({"3 unit parts, 2 threads", {{0, B, 0, a}, {0, B, a, b}, {0, B, b, G}},
                   {0, 2, 3}, true});
  }
  if (B >= 2) out.push_back({"2 row parts", {{0, B / 2, 0, G}, {B / 2, B, 0, G}}, {0, 1, 2}, false});
  return out;
}

template <typename StepFn>
void run(const Plan& plan, int64_t steps, StepFn step) {
  const int threads = static_cast<int>(plan.first.size()) - 1;
  StepBarrier barrier(static_cast<int>(plan.parts.size()));
  std::vector<std::thread> pool;
  for (int k = 0; k < threads; ++k)
    pool.emplace_back([&, k] {
      run_parts(steps, plan.first[k], plan.first[k + 1], plan.barrier ? &barrier : nullptr,
                [&](int64_t p, int64_t s) { step(plan.parts[p], s); });
    });
  for (auto& t : pool) t.join();
}

template <typename T>
void check(ref::Checks& checks, const char* type, const Shape& sh, double tol, bool amx = false) {
  std::mt19937 rng(1000 + sh.H + sh.B);
  Layer l = make_layer<T>(sh, rng);
  Layer l_no_grad_c = l;  // the same layer with no gradient on the c_t from outside
  std::fill(l_no_grad_c.grad_cs.begin(), l_no_grad_c.grad_cs.end(), 0.0);
  reference_layer(sh, l);
  reference_layer(sh, l_no_grad_c);
  const int64_t S = sh.S, B = sh.B, H = sh.H, ld = padded_width<T>(H);
  const auto w = to<T>(l.w);
  std::vector<T> fwd_w(forward_packed_size<T>(H, H)), bwd_w(backward_packed_size<T>(H));
  pack_forward(padded_columns(w, 4 * H, H).data(), H, padded_width<T>(H), fwd_w.data(), 0,
               unit_groups(H));
  pack_backward(w.data(), H, bwd_w.data(), 0, unit_groups(H), H);
  const auto xproj = to<T>(l.xproj), grad_hs = to<T>(l.grad_hs), grad_cs = to<T>(l.grad_cs);
  const std::vector<float> c0(l.c0.begin(), l.c0.end());
  for (const Plan& plan : plans(sh)) {
    for (bool with_grad_c : {true, false}) {
      std::vector<T> ring(2 * B * ld, T{}), hs = nans<T>(S * B * H);
      for (int64_t b = 0; b < B; ++b)
        for (int64_t k = 0; k < H; ++k) ring[b * ld + k] = from_double<T>(l.h0[b * H + k]);
      auto cs = nans<float>(S * B * H), gates = nans<float>(S * B * 4 * H);
      FusedForwardArgs<T> fa{xproj.data(), nullptr, nullptr, nullptr, 0, fwd_w.data(),
                             c0.data(), ring.data(), hs.data(),
                             cs.data(), gates.data(), S, B, H, sh.reverse, false};
      fa.amx = amx;
      run(plan, S, [&](const Part& p, int64_t s) { forward_step(fa, p, s); });

      std::vector<float> grad_c(B * H, 0.f), grad_h0 = nans<float>(B * H);
      auto grad_xproj = nans<T>(S * B * 4 * H);
      FusedBackwardArgs<T> ba{bwd_w.data(), gates.data(), cs.data(), c0.data(),
                              grad_hs.data(), with_grad_c ? grad_cs.data() : nullptr,
                              grad_c.data(), grad_xproj.data(), grad_h0.data(), S, B, H,
                              sh.reverse};
      ba.amx = amx;
      run(plan, S + 1, [&](const Part& p, int64_t s) { backward_step(ba, p, s); });
      const Layer& want = with_grad_c ? l : l_no_grad_c;
      char what[128];
      std::snprintf(what, sizeof what, "%s S%lld B%lld H%lld%s %s%s", type, (long long)S,
                    (long long)B, (long long)H, sh.reverse ? " rev" : "", plan.name,
                    with_grad_c ? ", grad_c" : "");
      checks.expect_all_below({ref::relative_error(widen(hs), want.hs),
                               ref::relative_error(cs, want.cs),
                               ref::relative_error(gates, want.gates),
                               ref::relative_error(widen(grad_xproj), want.grad_xproj),
                               ref::relative_error(grad_h0, want.grad_h0),
                               ref::relative_error(grad_c, want.grad_c0)},
                              tol, what);
    }
    // Inference: no gates, the cell state [B, H] updated in place (c0 in); hs and c_n as in
    // training.
    std::vector<T> ring(2 * B * ld, T{}), hs = nans<T>(S * B * H);
    for (int64_t b = 0; b < B; ++b)
      for (int64_t k = 0; k < H; ++k) ring[b * ld + k] = from_double<T>(l.h0[b * H + k]);
    std::vector<float> c_n = c0;
    FusedForwardArgs<T> fa{xproj.data(), nullptr,    nullptr,      nullptr,
                           0,             fwd_w.data(), c0.data(), ring.data(),
                           hs.data(),     c_n.data(), nullptr,  S,
                           B,             H,            sh.reverse, true};
    fa.amx = amx;
    run(plan, S, [&](const Part& p, int64_t s) { forward_step(fa, p, s); });
    const int64_t last = sh.reverse ? 0 : S - 1;
    char what[128];
    std::snprintf(what, sizeof what, "%s S%lld B%lld H%lld%s %s, inference", type, (long long)S,
                  (long long)B, (long long)H, sh.reverse ? " rev" : "", plan.name);
    checks.expect_all_below(
        {ref::relative_error(widen(hs), l.hs),
         ref::relative_error(c_n, ref::Vec(l.cs.begin() + last * B * H, l.cs.begin() + (last + 1) * B * H))},
        tol, what);
  }
}

// The input projection fused into the step: xproj = x W_ih^T + bias computed by the kernel
// (training forward with gates, and inference), against the reference fed the exact xproj.
template <typename T>
void check_input_fused(ref::Checks& checks, const char* type, const Shape& sh, double tol,
                       bool amx = false) {
  std::mt19937 rng(2000 + sh.H + sh.I);
  Layer l = make_layer<T>(sh, rng);
  const int64_t S = sh.S, B = sh.B, H = sh.H, I = sh.I, ld = padded_width<T>(H);
  const int64_t ld_x = padded_width<T>(I);
  const ref::Vec x = rounded<T>(ref::random_vec(rng, size_t(S) * B * I));
  const ref::Vec w_ih = rounded<T>(ref::random_vec(rng, size_t(4) * H * I, 1.0 / std::sqrt(double(I))));
  const ref::Vec bias = rounded<float>(ref::random_vec(rng, size_t(4) * H));
  for (int64_t n = 0; n < S * B; ++n)
    for (int64_t j = 0; j < 4 * H; ++j) {
      double v = bias[j];
      for (int64_t k = 0; k < I; ++k) v += x[n * I + k] * w_ih[j * I + k];
      l.xproj[n * 4 * H + j] = v;
    }
  reference_layer(sh, l);
  std::vector<T> x_pad(S * B * ld_x, T{});
  for (int64_t n = 0; n < S * B; ++n)
    for (int64_t k = 0; k < I; ++k) x_pad[n * ld_x + k] = from_double<T>(x[n * I + k]);
  const auto w = to<T>(l.w), w_ih_t = to<T>(w_ih);
  std::vector<T> fwd_w(forward_packed_size<T>(H, H)), fwd_ih(forward_packed_size<T>(H, I));
  pack_forward(padded_columns(w, 4 * H, H).data(), H, padded_width<T>(H), fwd_w.data(), 0,
               unit_groups(H));
  pack_forward(padded_columns(w_ih_t, 4 * H, I).data(), H, padded_width<T>(I), fwd_ih.data(), 0,
               unit_groups(H));
  const std::vector<float> c0(l.c0.begin(), l.c0.end()), bias_f(bias.begin(), bias.end());
  for (const Plan& plan : plans(sh)) {
    for (bool training : {true, false}) {
      std::vector<T> ring(2 * B * ld, T{}), hs = nans<T>(S * B * H);
      for (int64_t b = 0; b < B; ++b)
        for (int64_t k = 0; k < H; ++k) ring[b * ld + k] = from_double<T>(l.h0[b * H + k]);
      auto cs = training ? nans<float>(S * B * H) : c0, gates = nans<float>(S * B * 4 * H);
      FusedForwardArgs<T> fa{nullptr, x_pad.data(), fwd_ih.data(), bias_f.data(), I,
                             fwd_w.data(), c0.data(), ring.data(), hs.data(), cs.data(),
                             training ? gates.data() : nullptr, S, B, H, sh.reverse,
                             !training};
      fa.amx = amx;
      run(plan, S, [&](const Part& p, int64_t s) { forward_step(fa, p, s); });
      char what[128];
      std::snprintf(what, sizeof what, "%s S%lld B%lld H%lld I%lld%s %s, input fused, %s", type,
                    (long long)S, (long long)B, (long long)H, (long long)I,
                    sh.reverse ? " rev" : "", plan.name, training ? "training" : "inference");
      const int64_t last = sh.reverse ? 0 : S - 1;
      const ref::Vec c_n(l.cs.begin() + last * B * H, l.cs.begin() + (last + 1) * B * H);
      if (training) {
        checks.expect_all_below({ref::relative_error(widen(hs), l.hs),
                                 ref::relative_error(cs, l.cs),
                                 ref::relative_error(gates, l.gates)},
                                tol, what);
      } else {
        checks.expect_all_below({ref::relative_error(widen(hs), l.hs),
                                 ref::relative_error(cs, c_n)},
                                tol, what);
      }
    }
  }
}

// transpose_2byte against the element-wise definition: whole 32 x 16 blocks and the rest
// (rows past 32k, columns past 16k), source and destination rows longer than the matrix; the
// destination starts as a marker, so a skipped element or one written outside shows.
void check_transpose(ref::Checks& checks) {
  const int64_t shapes[][4] = {{64, 32, 40, 70}, {37, 21, 21, 37}, {5, 3, 9, 5}, {96, 48, 48, 100},
                               {32, 16, 16, 32}};
  bool ok = true;
  for (const auto& sh : shapes) {
    const int64_t rows = sh[0], cols = sh[1], ld_src = sh[2], ld_dst = sh[3];
    std::vector<uint16_t> src(rows * ld_src), dst(cols * ld_dst, 0xBEEF);
    for (size_t k = 0; k < src.size(); ++k) src[k] = static_cast<uint16_t>(k * 40503u + 7);
    transpose_2byte(src.data(), ld_src, rows, cols, dst.data(), ld_dst);
    for (int64_t c = 0; c < cols; ++c)
      for (int64_t r = 0; r < ld_dst; ++r)
        ok &= dst[c * ld_dst + r] == (r < rows ? src[r * ld_src + c] : 0xBEEF);
  }
  checks.expect(ok, "transpose_2byte: every element, nothing outside", ok ? 0 : 1);
}

#if !defined(FASTLSTM_FUSED_AVX2)
// weight_gradient_cpu.h: dW = g^T z over R rows against a double sum of the same (rounded)
// inputs; z's rows in two pieces (h0, then the rest, as the glue hands h_{t-1}), the packed
// buffers and the sums poisoned (NaN) first, the rows split over two threads in whole tiles.
// Shapes: odd R (bf16's padding row), > 256 k-steps (several blocks of the sums), G not a
// multiple of 6 or 48, K not of 16 or 64 and over 256 (two column blocks).
template <typename T>
void check_weight_gradient(ref::Checks& checks, const char* name, double tol) {
  const int64_t shapes[][3] = {{7, 148, 37}, {1040, 160, 250}, {15, 12, 16}, {600, 1000, 64},
                               {513, 52, 300}};
  std::mt19937 rng(11);
  const float nan = std::numeric_limits<float>::quiet_NaN();
  for (const auto& sh : shapes) {
    const int64_t R = sh[0], G = sh[1], K = sh[2], first_rows = std::min<int64_t>(R, 5);
    const std::vector<T> g = to<T>(ref::random_vec(rng, R * G));
    const std::vector<T> z = to<T>(ref::random_vec(rng, R * K));
    const std::vector<T> head(z.begin(), z.begin() + first_rows * K);  // a piece of its own
    const auto row = [&](int64_t r) {
      return r < first_rows ? head.data() + r * K : z.data() + r * K;
    };
    const int64_t ksteps = gradient_ksteps<T>(R), ld = (K + 15) / 16 * 16;
    std::vector<T> a(gradient_panels_size<T>(R, G), from_double<T>(nan));
    std::vector<T> b(gradient_operand_size<T>(R, K), from_double<T>(nan));
    std::vector<float> out(G * ld, nan);
    const int64_t panels = gradient_panels(G), tiles = (G + kMaxRows - 1) / kMaxRows;
    std::vector<std::thread> workers;
    for (int w = 0; w < 2; ++w) {
      workers.emplace_back([&, w] {
        pack_gradient_panels<T>(g.data(), G, R, G, a.data(), panels * w / 2,
                                panels * (w + 1) / 2);
        pack_gradient_operand<T>(row, R, K, b.data(), ksteps * w / 2, ksteps * (w + 1) / 2);
      });
    }
    for (auto& t : workers) t.join();
    workers.clear();
    for (int w = 0; w < 2; ++w) {
      workers.emplace_back([&, w] {
        const int64_t m0 = tiles * w / 2 * kMaxRows;
        const int64_t m1 = std::min(G, tiles * (w + 1) / 2 * kMaxRows);
        weight_gradient_rows<T>(a.data(), b.data(), ksteps, G, K, out.data(), ld, m0, m1);
      });
    }
    for (auto& t : workers) t.join();
    ref::Vec want(G * K, 0.0);
    std::vector<float> got(G * K);
    for (int64_t m = 0; m < G; ++m)
      for (int64_t c = 0; c < K; ++c) {
        for (int64_t r = 0; r < R; ++r)
          want[m * K + c] += as_double(g[r * G + m]) * as_double(z[r * K + c]);
        got[m * K + c] = out[m * ld + c];
      }
    char what[96];
    std::snprintf(what, sizeof what, "%s weight gradient R%lld G%lld K%lld", name, (long long)R,
                  (long long)G, (long long)K);
    const double err = ref::relative_error(got, want);
    checks.expect(err < tol, what, err);
  }
}
#endif

}  // namespace

int main() {
  if (!cpu_supports<float>()) {
    std::printf("skipped: this CPU has no AVX-512 (AVX2 + FMA for the AVX2 build)\n");
    return 77;
  }
  ref::Checks checks;
#if !defined(FASTLSTM_FUSED_AVX2)
  check_transpose(checks);
  check_weight_gradient<float>(checks, "fp32", 1e-5);
  if (cpu_supports<Bf16>()) check_weight_gradient<Bf16>(checks, "bf16", 1e-5);
#endif
  // H = 37: neither the 16-unit groups nor (bf16) the k pairs divide it; B = 7: a partial
  // 6-row tile; H = 80: 5 groups, so a backward tile of 4 groups and one of 1.
  // I = 5 and 21: odd input sizes (a zero-padded last pair in bf16). On AMX tiles (16 rows,
  // 16 k-steps): B = 21 takes a row block of 16 and one of 5; H = 37, 80 and I = 5, 21 leave
  // k-steps for the register tile; H = 64 and I = 64 none.
  const Shape shapes[] = {{5, 7, 37, false, 5}, {4, 1, 80, true, 21}, {3, 13, 64, false, 64},
                          {1, 2, 16, true, 8}, {3, 21, 48, false, 33}};
  for (const Shape& sh : shapes) {
    check<float>(checks, "fp32", sh, 1e-5);
    check_input_fused<float>(checks, "fp32", sh, 1e-5);
  }
#if defined(FASTLSTM_FUSED_AVX2)
  std::printf("bf16 cases skipped: the AVX2 build is fp32 only\n");
#else
  if (cpu_supports<Bf16>()) {
    for (const Shape& sh : shapes) {
      check<Bf16>(checks, "bf16", sh, 1e-2);
      check_input_fused<Bf16>(checks, "bf16", sh, 1e-2);
      if (amx_usable()) {
        check<Bf16>(checks, "bf16 amx", sh, 1e-2, true);
        check_input_fused<Bf16>(checks, "bf16 amx", sh, 1e-2, true);
      }
    }
    if (!amx_usable()) std::printf("bf16 AMX cases skipped: no AMX tiles here\n");
  } else {
    std::printf("bf16 cases skipped: this CPU has no AVX512-BF16\n");
  }
#endif
  std::printf("%d check(s) failed\n", checks.failed);
  return checks.failed ? 1 : 0;
}
#endif
