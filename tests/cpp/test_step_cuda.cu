// The CUDA step kernels against the CPU step loops of the same header, for every storage
// type, with poisoned outputs. Exits 77 (ctest: skipped) when there is no GPU.
#include <cuda_runtime.h>

#include <cstdlib>
#include <cstring>

#include "lstm_step_cuda.h"
#include "reference_step.h"

namespace {

#define CHECK_CUDA(call)                                                                 \
  do {                                                                                   \
    const cudaError_t err_ = (call);                                                     \
    if (err_ != cudaSuccess) {                                                           \
      std::fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #call,                 \
                   cudaGetErrorString(err_));                                            \
      std::exit(1);                                                                      \
    }                                                                                    \
  } while (0)

template <typename T>
T from_double(double x) { return static_cast<T>(x); }
template <> __half from_double<__half>(double x) { return __float2half_rn(float(x)); }
template <> __nv_bfloat16 from_double<__nv_bfloat16>(double x) {
  return __float2bfloat16_rn(float(x));
}
template <typename T>
double to_double(T x) { return static_cast<double>(x); }
template <> double to_double<__half>(__half x) { return __half2float(x); }
template <> double to_double<__nv_bfloat16>(__nv_bfloat16 x) { return __bfloat162float(x); }

// A device buffer holding `host`, or poisoned with all-ones bytes (NaN in every float type).
template <typename T>
T* upload(const std::vector<T>& host) {
  T* dev = nullptr;
  CHECK_CUDA(cudaMalloc(&dev, host.size() * sizeof(T)));
  CHECK_CUDA(cudaMemcpy(dev, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice));
  return dev;
}
template <typename T>
T* poisoned(size_t n) {
  T* dev = nullptr;
  CHECK_CUDA(cudaMalloc(&dev, n * sizeof(T)));
  CHECK_CUDA(cudaMemset(dev, 0xFF, n * sizeof(T)));
  return dev;
}
template <typename T>
ref::Vec download(const T* dev, size_t n) {
  std::vector<T> host(n);
  CHECK_CUDA(cudaMemcpy(host.data(), dev, n * sizeof(T), cudaMemcpyDeviceToHost));
  ref::Vec out(n);
  for (size_t k = 0; k < n; ++k) out[k] = to_double(host[k]);
  return out;
}
template <typename T>
std::vector<T> rounded(const ref::Vec& v) {
  std::vector<T> out(v.size());
  for (size_t k = 0; k < v.size(); ++k) out[k] = from_double<T>(v[k]);
  return out;
}
ref::Vec as_double(const ref::Vec& v) { return v; }
template <typename T>
ref::Vec as_double(const std::vector<T>& v) {
  ref::Vec out(v.size());
  for (size_t k = 0; k < v.size(); ++k) out[k] = to_double(v[k]);
  return out;
}

// One forward and one backward step on the GPU vs the double reference fed the same
// T-rounded inputs. B*H spans several blocks and is not a multiple of the block size.
template <typename T, typename Acc>
void check_type(ref::Checks& checks, const char* type, double tol) {
  const int B = 7, H = 291;
  const size_t n = size_t(B) * H, n4 = 4 * n;
  std::mt19937 rng(11);
  // rec, gates, dh_rec (the layer's inner values) are kept in Acc; the rest in T.
  const auto x = rounded<T>(ref::random_vec(rng, n4));
  const auto r = rounded<Acc>(ref::random_vec(rng, n4));
  const auto cp = rounded<Acc>(ref::random_vec(rng, n));
  const auto dh = rounded<T>(ref::random_vec(rng, n));
  const auto dhr = rounded<Acc>(ref::random_vec(rng, n));
  const auto dco = rounded<T>(ref::random_vec(rng, n));
  const auto carry0 = rounded<Acc>(ref::random_vec(rng, n));

  ref::Vec gates(n4), c(n), h(n);
  ref::step_forward(B, H, as_double(x), as_double(r), as_double(cp), gates, c, h);

  T *dx = upload(x), *dh_out = poisoned<T>(n);
  Acc *dr = upload(r), *dg = poisoned<Acc>(n4), *dcp = upload(cp), *dc = poisoned<Acc>(n);
  const fastlstm::StepForwardArgs<T, Acc> fwd{dx, dr, dcp, dg, dc, dh_out, B, H};
  CHECK_CUDA(fastlstm::launch_step_forward(fwd, nullptr));
  CHECK_CUDA(cudaDeviceSynchronize());
  const ref::Vec g_gpu = download(dg, n4), c_gpu = download(dc, n), h_gpu = download(dh_out, n);
  char what[96];
  std::snprintf(what, sizeof what, "%s forward (h, c, gates)", type);
  checks.expect_all_below({ref::relative_error(h_gpu, h), ref::relative_error(c_gpu, c),
                           ref::relative_error(g_gpu, gates)},
                          tol, what);

  for (bool with_grad_c : {true, false}) {
    // Reference backward from the GPU's own saved gates and cell states.
    ref::Vec dh_total(n), dc_total(n), grad_pre(n4), grad_cp(n);
    for (size_t k = 0; k < n; ++k) {
      dh_total[k] = to_double(dh[k]) + to_double(dhr[k]);
      dc_total[k] = to_double(carry0[k]) + (with_grad_c ? to_double(dco[k]) : 0.0);
    }
    ref::step_backward(B, H, g_gpu, as_double(cp), c_gpu, dh_total, dc_total, grad_pre, grad_cp);
    T *ddh = upload(dh), *ddco = upload(dco), *dgp = poisoned<T>(n4);
    Acc *ddhr = upload(dhr), *dcarry = upload(carry0);
    const fastlstm::StepBackwardArgs<T, Acc> bwd{dg, dcp, dc, ddh, ddhr,
                                                 with_grad_c ? ddco : nullptr, dcarry, dgp, B, H};
    CHECK_CUDA(fastlstm::launch_step_backward(bwd, nullptr));
    CHECK_CUDA(cudaDeviceSynchronize());
    std::snprintf(what, sizeof what, "%s backward%s", type, with_grad_c ? " (with grad_c)" : "");
    checks.expect_all_below({ref::relative_error(download(dgp, n4), grad_pre),
                             ref::relative_error(download(dcarry, n), grad_cp)},
                            tol, what);
    for (void* p : {(void*)ddh, (void*)ddhr, (void*)ddco, (void*)dgp, (void*)dcarry})
      CHECK_CUDA(cudaFree(p));
  }
  for (void* p : {(void*)dx, (void*)dr, (void*)dg, (void*)dh_out, (void*)dcp, (void*)dc})
    CHECK_CUDA(cudaFree(p));
}

}  // namespace

int main() {
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    std::printf("skipped: no CUDA device\n");
    return 77;
  }
  std::printf("CUDA kernels compiled for sm %s\n", fastlstm::cuda_arch_list());
  ref::Checks checks;
  check_type<float, float>(checks, "float", 1e-6);
  check_type<double, double>(checks, "double", 1e-13);
  check_type<__half, float>(checks, "half", 1e-2);
  check_type<__nv_bfloat16, float>(checks, "bfloat16", 1e-2);
  std::printf("%d check(s) failed\n", checks.failed);
  return checks.failed ? 1 : 0;
}
