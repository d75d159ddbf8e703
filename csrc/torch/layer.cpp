#include "layer.h"

#include <c10/core/GradMode.h>
#include <torch/version.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <mutex>
#include <new>
#include <unordered_map>

#include "check.h"


namespace fastlstm {

at::ScalarType cell_dtype(at::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

void check_layer_inputs(const Tensor& xproj, at::ScalarType dtype, const Tensor& h0,
                        const Tensor& c0, const Tensor& w_hh) {
  FASTLSTM_CHECK(xproj.dim() == 3, "fastlstm: xproj must be [seq, batch, 4*hidden], got ",
              xproj.sizes());
  FASTLSTM_CHECK(xproj.size(0) > 0, "fastlstm: the sequence must have at least one step");
  FASTLSTM_CHECK(w_hh.dim() == 2 && w_hh.size(0) == 4 * w_hh.size(1),
              "fastlstm: w_hh must be [4*hidden, hidden], got ", w_hh.sizes());
  const int64_t H = w_hh.size(1);
  FASTLSTM_CHECK(xproj.size(2) == 4 * H, "fastlstm: xproj's last dim must be 4*hidden = ",
                 4 * H, ", got ", xproj.size(2));
  check_state_inputs(xproj.size(1), dtype, xproj.device(), h0, c0, w_hh);
}

void check_state_inputs(int64_t B, at::ScalarType dtype, const c10::Device& device,
                        const Tensor& h0, const Tensor& c0, const Tensor& w_hh) {
  FASTLSTM_CHECK(w_hh.dim() == 2 && w_hh.size(0) == 4 * w_hh.size(1),
                 "fastlstm: w_hh must be [4*hidden, hidden], got ", w_hh.sizes());
  const int64_t H = w_hh.size(1);
  FASTLSTM_CHECK(h0.dim() == 2 && h0.size(0) == B && h0.size(1) == H,
              "fastlstm: h0 must be [batch, hidden] = [", B, ", ", H, "], got ", h0.sizes());
  FASTLSTM_CHECK(c0.dim() == 2 && c0.size(0) == B && c0.size(1) == H,
              "fastlstm: c0 must be [batch, hidden] = [", B, ", ", H, "], got ", c0.sizes());
  for (const Tensor* t : {&h0, &c0, &w_hh}) {
    FASTLSTM_CHECK(t->scalar_type() == dtype, "fastlstm: dtype mismatch: ", t->scalar_type(),
                   " vs ", dtype);
    FASTLSTM_CHECK(t->device() == device, "fastlstm: device mismatch: ", t->device(),
                   " vs the input's ", device);
  }
}

namespace {

// Large CPU outputs come from buffers kept across calls. Memory fresh from the OS costs a page
// fault and a zeroed page every 4 KiB on first touch: a training step's gates (2 x 384,
// batch 64, 100 steps: 39 MB) took 9.7 ms to allocate and fill, a reused buffer 0.8 ms (AMX
// Xeon), paid again every iteration since the allocator hands blocks that large back to the
// OS. A freed output's buffer waits here for the next output of its size. (Such outputs
// cannot be resized in place, as tensors over memory torch does not own.)
class OutputPool {
 public:
  static constexpr size_t kMinBytes = size_t(1) << 20;   // smaller: the allocator's own
  static constexpr size_t kMaxKeptBytes = size_t(1) << 30;

  void* get(size_t bytes) {
    {
      const std::lock_guard<std::mutex> lock(mutex_);
      const auto it = free_.find(bytes);
      if (it != free_.end()) {
        void* p = it->second;
        free_.erase(it);
        kept_ -= bytes;
        return p;
      }
    }
    void* p = nullptr;
    if (posix_memalign(&p, 64, bytes) != 0) throw std::bad_alloc();
    const std::lock_guard<std::mutex> lock(mutex_);
    size_of_[p] = bytes;
    return p;
  }
  void put(void* p) {
    const std::lock_guard<std::mutex> lock(mutex_);
    const size_t bytes = size_of_.at(p);
    if (kept_ + bytes > kMaxKeptBytes) {
      size_of_.erase(p);
      std::free(p);
      return;
    }
    free_.emplace(bytes, p);
    kept_ += bytes;
  }

 private:
  std::mutex mutex_;
  std::unordered_multimap<size_t, void*> free_;
  std::unordered_map<void*, size_t> size_of_;
  size_t kept_ = 0;
};

OutputPool& output_pool() {
  static OutputPool* pool = new OutputPool();  // never destroyed: outputs may outlive exit
  return *pool;
}

Tensor empty_output(at::IntArrayRef sizes, const at::TensorOptions& opts) {
  const size_t bytes = static_cast<size_t>(c10::multiply_integers(sizes)) *
                       c10::elementSize(c10::typeMetaToScalarType(opts.dtype()));
  if (!opts.device().is_cpu() || bytes < OutputPool::kMinBytes) return at::empty(sizes, opts);
  return at::from_blob(output_pool().get(bytes), sizes, [](void* p) { output_pool().put(p); },
                       opts);
}

}  // namespace

// Outputs every element of which the kernels must write. With FASTLSTM_POISON_OUTPUTS=1
// (the tests set it) they start as NaN, so an element a kernel skips fails the comparison.
Tensor kernel_output(at::IntArrayRef sizes, const at::TensorOptions& opts) {
  static const bool poison = [] {
    const char* v = std::getenv("FASTLSTM_POISON_OUTPUTS");
    return v != nullptr && v[0] == '1';
  }();
  Tensor out = empty_output(sizes, opts);
  return poison ? out.fill_(std::numeric_limits<double>::quiet_NaN()) : out;
}

namespace {

// out = a b with out in the arithmetic dtype: for half types cuBLAS accumulates in fp32
// and we keep the fp32 result (mm's out_dtype, torch >= 2.8) rather than a rounded one.
void mm_acc_out(Tensor& out, const Tensor& a, const Tensor& b) {
  if (out.scalar_type() == a.scalar_type()) {
    at::mm_out(out, a, b);
  } else {
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 8)
    at::mm_out(out, a, b, out.scalar_type());
#else
    out.copy_(at::mm(a, b));
#endif
  }
}

// The dtype of the recurrent GEMM's products (rec, grad_h_rec): the cell dtype on CUDA,
// where cuBLAS writes bf16 x bf16 products in fp32; the storage dtype on the CPU, where
// ATen's mm has no such output (its bf16 GEMM accumulates in fp32, rounds the result).
at::ScalarType rec_dtype(const Tensor& like) {
  return like.is_cuda() ? cell_dtype(like.scalar_type()) : like.scalar_type();
}

// Forward-order step s -> time index t.
inline int64_t time_at(int64_t s, int64_t steps, bool reverse) {
  return reverse ? steps - 1 - s : s;
}

}  // namespace

std::tuple<Tensor, Tensor, Tensor> layer_forward(const Tensor& xproj_in, const Tensor& h0_in,
                                                 const Tensor& c0, const Tensor& w_hh_in,
                                                 bool reverse, const StepKernels& kernels) {
  // Kernels: autograd is the op's registration's business, never the inner GEMMs'.
  const c10::NoGradGuard no_grad;
  check_layer_inputs(xproj_in, xproj_in.scalar_type(), h0_in, c0, w_hh_in);
  const Tensor xproj = xproj_in.contiguous(), h0 = h0_in.contiguous(), w_hh = w_hh_in.contiguous();
  const int64_t S = xproj.size(0), B = xproj.size(1), H = w_hh.size(1);
  const auto opts = xproj.options();
  const auto acc_opts = opts.dtype(cell_dtype(xproj.scalar_type()));
  Tensor hs = kernel_output({S, B, H}, opts);
  Tensor cs = kernel_output({S, B, H}, acc_opts);
  Tensor gates = kernel_output({S, B, 4 * H}, acc_opts);
  Tensor rec = at::empty({B, 4 * H}, opts.dtype(rec_dtype(xproj)));
  const Tensor c0_acc = c0.to(cs.scalar_type()).contiguous();
  const Tensor w_hh_t = w_hh.t();
  for (int64_t s = 0; s < S; ++s) {
    const int64_t t = time_at(s, S, reverse);
    const int64_t t_prev = time_at(s - 1, S, reverse);
    const Tensor h_prev = s == 0 ? h0 : hs[t_prev];
    const Tensor c_prev = s == 0 ? c0_acc : cs[t_prev];
    mm_acc_out(rec, h_prev, w_hh_t);
    kernels.forward(xproj[t], rec, c_prev, gates[t], cs[t], hs[t]);
  }
  return {hs, cs, gates};
}

Tensor carried_gradient(const std::optional<Tensor>& g, int64_t B, int64_t H,
                        const at::TensorOptions& opts, const char* name) {
  if (!g) return at::zeros({B, H}, opts);
  FASTLSTM_CHECK(g->dim() == 2 && g->size(0) == B && g->size(1) == H, "fastlstm: ", name,
                 " must be [", B, ", ", H, "], got ", g->sizes());
  return at::empty({B, H}, opts).copy_(*g);  // a buffer of its own: the loops update it
}

std::tuple<Tensor, Tensor, Tensor, Tensor> layer_backward(
    const Tensor& grad_hs_in, const std::optional<Tensor>& grad_cs_in, const Tensor& h0_in,
    const Tensor& c0, const Tensor& w_hh_in, const Tensor& hs, const Tensor& cs,
    const Tensor& gates, bool reverse, const StepKernels& kernels,
    const FinalStateGrads& final_grads) {
  const c10::NoGradGuard no_grad;
  const at::ScalarType dtype = hs.scalar_type(), acc = cell_dtype(dtype);
  check_layer_inputs(gates, dtype, h0_in, c0, w_hh_in);
  const int64_t S = gates.size(0), B = gates.size(1), H = w_hh_in.size(1);
  FASTLSTM_CHECK(grad_hs_in.sizes() == hs.sizes() && hs.sizes() == cs.sizes() &&
                  hs.size(0) == S && hs.size(1) == B && hs.size(2) == H,
              "fastlstm: grad_hs, hs and cs must be [seq, batch, hidden] = [", S, ", ", B, ", ",
              H, "]");
  FASTLSTM_CHECK(cs.scalar_type() == acc && gates.scalar_type() == acc,
                 "fastlstm: cs and gates must be saved in ", acc);
  const Tensor grad_hs = grad_hs_in.to(dtype).contiguous();
  std::optional<Tensor> grad_cs;
  if (grad_cs_in.has_value() && grad_cs_in->defined()) {
    FASTLSTM_CHECK(grad_cs_in->sizes() == cs.sizes(), "fastlstm: grad_cs must be shaped like cs");
    grad_cs = grad_cs_in->to(dtype).contiguous();
  }
  const Tensor h0 = h0_in.contiguous(), w_hh = w_hh_in.contiguous();
  const Tensor c0_acc = c0.to(cs.scalar_type()).contiguous();

  Tensor grad_xproj = kernel_output({S, B, 4 * H}, hs.options());
  Tensor grad_h_rec = carried_gradient(final_grads.h_n, B, H, hs.options().dtype(rec_dtype(hs)),
                                       "grad_h_n");
  Tensor grad_c_carry = carried_gradient(final_grads.c_n, B, H, cs.options(), "grad_c_n");
  for (int64_t s = S - 1; s >= 0; --s) {
    const int64_t t = time_at(s, S, reverse);
    const Tensor c_prev = s == 0 ? c0_acc : cs[time_at(s - 1, S, reverse)];
    std::optional<Tensor> grad_c_t;
    if (grad_cs) grad_c_t = (*grad_cs)[t];
    kernels.backward(gates[t], c_prev, cs[t], grad_hs[t], grad_h_rec, grad_c_t, grad_c_carry,
                     grad_xproj[t]);
    mm_acc_out(grad_h_rec, grad_xproj[t], w_hh);
  }
  return {grad_xproj, grad_h_rec.to(dtype), grad_c_carry.to(c0.scalar_type()),
          weight_gradient(grad_xproj, h0, hs, reverse)};
}

Operand h_prev_rows(const Tensor& h0, const Tensor& hs, bool reverse) {
  const int64_t S = hs.size(0), B = hs.size(1), H = hs.size(2);
  Operand op{{h0.reshape({B, H}), reverse ? (S - 1) * B : 0}};
  if (S > 1)
    op.push_back({hs.narrow(0, reverse ? 1 : 0, S - 1).reshape({(S - 1) * B, H}), reverse ? 0 : B});
  return op;
}

Tensor gathered(const Operand& op, int64_t N) {
  if (op.size() == 1 && op[0].at == 0 && op[0].rows.size(0) == N) return op[0].rows;
  Tensor x = kernel_output({N, op[0].rows.size(1)}, op[0].rows.options());
  for (const RowsAt& p : op) x.narrow(0, p.at, p.rows.size(0)).copy_(p.rows);
  return x;
}

Tensor weight_gradient(const Tensor& grad_xproj, const Tensor& h0, const Tensor& hs,
                       bool reverse) {
  const int64_t N = hs.size(0) * hs.size(1);
  return at::mm(grad_xproj.reshape({N, grad_xproj.size(2)}).t(),
                gathered(h_prev_rows(h0, hs, reverse), N));
}

namespace {
std::atomic<bool>& cuda_graphs_flag() {
  static std::atomic<bool> flag{[] {
    const char* v = std::getenv("FASTLSTM_CUDA_GRAPHS");
    return v == nullptr || std::strcmp(v, "0") != 0;
  }()};
  return flag;
}
}  // namespace

bool cuda_graphs_enabled() { return cuda_graphs_flag().load(); }
void set_cuda_graphs_enabled(bool enabled) { cuda_graphs_flag().store(enabled); }

std::tuple<Tensor, Tensor, Tensor> step_forward(const Tensor& xproj, const Tensor& h,
                                                const Tensor& c, const Tensor& w_hh,
                                                const StepKernels& kernels) {
  FASTLSTM_CHECK(xproj.dim() == 2, "fastlstm: step xproj must be [batch, 4*hidden], got ",
              xproj.sizes());
  const c10::NoGradGuard no_grad;
  check_layer_inputs(xproj.unsqueeze(0), xproj.scalar_type(), h, c, w_hh);
  const int64_t B = xproj.size(0), H = w_hh.size(1);
  const Tensor x = xproj.contiguous();
  const auto acc_opts = x.options().dtype(cell_dtype(x.scalar_type()));
  Tensor h_new = kernel_output({B, H}, x.options());
  Tensor c_new = kernel_output({B, H}, acc_opts);
  Tensor gates = kernel_output({B, 4 * H}, acc_opts);
  Tensor rec = at::empty({B, 4 * H}, x.options().dtype(rec_dtype(x)));
  mm_acc_out(rec, h.contiguous(), w_hh.t());
  kernels.forward(x, rec, c.to(c_new.scalar_type()).contiguous(), gates, c_new, h_new);
  return {h_new, c_new, gates};
}

}  // namespace fastlstm
