// The tiled persistent forward's per-block work (lstm_persistent.h, p2) run on the CPU:
// every block, and in each block every thread, phase by phase, as the GPU's barriers order
// them; against the double reference step chained over the sequence. This checks the
// tiling and indexing (k slices, row groups, partial sums, a short last block, batch not a
// multiple of the row tile, reverse time) without a GPU; the GPU tests check the kernel.
#include <cstdio>
#include <limits>

#include "lstm_persistent.h"
#include "reference_step.h"

namespace {

struct Shape {
  int steps, batch, hidden, sms, threads;
  bool reverse;
};

template <typename T>
void check_shape(ref::Checks& checks, const Shape& sh, double tol) {
  const int S = sh.steps, B = sh.batch, H = sh.hidden;
  std::mt19937 rng(S * 1000 + B * 10 + H);
  const ref::Vec xproj = ref::random_vec(rng, size_t(S) * B * 4 * H),
                 h0 = ref::random_vec(rng, size_t(B) * H), c0 = ref::random_vec(rng, size_t(B) * H),
                 w = ref::random_vec(rng, size_t(4) * H * H, 0.3);
  // Reference: h_{t-1} W_hh^T, then the step, in the direction's time order.
  ref::Vec hs(size_t(S) * B * H), cs(size_t(S) * B * H), gates(size_t(S) * B * 4 * H);
  ref::Vec h = h0, c = c0;
  for (int s = 0; s < S; ++s) {
    const int t = sh.reverse ? S - 1 - s : s;
    ref::Vec rec(size_t(B) * 4 * H, 0.0), x(xproj.begin() + size_t(t) * B * 4 * H,
                                             xproj.begin() + size_t(t + 1) * B * 4 * H);
    for (int b = 0; b < B; ++b)
      for (int j = 0; j < 4 * H; ++j)
        for (int k = 0; k < H; ++k) rec[b * 4 * H + j] += h[b * H + k] * w[size_t(j) * H + k];
    ref::Vec g(size_t(B) * 4 * H), c_new(size_t(B) * H), h_new(size_t(B) * H);
    ref::step_forward(B, H, x, rec, c, g, c_new, h_new);
    std::copy(g.begin(), g.end(), gates.begin() + size_t(t) * B * 4 * H);
    std::copy(c_new.begin(), c_new.end(), cs.begin() + size_t(t) * B * H);
    std::copy(h_new.begin(), h_new.end(), hs.begin() + size_t(t) * B * H);
    h = h_new, c = c_new;
  }

  const std::vector<T> x_t(xproj.begin(), xproj.end()), h0_t(h0.begin(), h0.end()),
      c0_t(c0.begin(), c0.end()), w_t(w.begin(), w.end());
  const T nan = std::numeric_limits<T>::quiet_NaN();  // poison: unwritten elements fail
  std::vector<T> hs_t(hs.size(), nan), cs_t(cs.size(), nan), gates_t(gates.size(), nan);
  const fastlstm::PersistentForwardArgs<T, T> a{x_t.data(),  h0_t.data(), c0_t.data(),
                                                w_t.data(),  hs_t.data(), cs_t.data(),
                                                gates_t.data(), S, B, H, sh.reverse};
  const fastlstm::PersistentTiling tiling =
      fastlstm::persistent_tiling(B, H, sh.sms, sh.threads);
  const int64_t w_elements = int64_t(H) * tiling.units * 4;
  const int64_t smem_elements = fastlstm::persistent_smem_elements(tiling, H);
  std::vector<std::vector<T>> smem(tiling.blocks, std::vector<T>(smem_elements, nan));
  for (int blk = 0; blk < tiling.blocks; ++blk)
    for (int tid = 0; tid < sh.threads; ++tid)
      fastlstm::tiled_load_weights(a, tiling, blk, tid, smem[blk].data());
  for (int64_t s = 0; s < S; ++s) {
    for (int blk = 0; blk < tiling.blocks; ++blk) {
      T* w_s = smem[blk].data();
      for (int tid = 0; tid < sh.threads; ++tid)
        fastlstm::tiled_partial_sums(a, tiling, blk, s, tid, w_s, w_s + w_elements);
      for (int tid = 0; tid < sh.threads; ++tid)  // __syncthreads()
        fastlstm::tiled_cell_update(a, tiling, blk, s, tid, w_s + w_elements);
    }  // grid.sync()
  }
  char what[120];
  std::snprintf(what, sizeof what, "S%d B%d H%d on %d SMs, KS %d%s (%s)", S, B, H, sh.sms,
                tiling.k_splits, sh.reverse ? ", reverse" : "",
                sizeof(T) == 4 ? "float" : "double");
  checks.expect_all_below({ref::relative_error(hs_t, hs), ref::relative_error(cs_t, cs),
                           ref::relative_error(gates_t, gates)},
                          tol, what);
}

}  // namespace

int main() {
  ref::Checks checks;
  const Shape shapes[] = {
      {5, 3, 37, 8, 256, false},    // 5 units per block, last block short (37 = 7*5 + 2)
      {4, 7, 37, 8, 256, true},     // batch not a multiple of 4; reverse
      {3, 1, 19, 132, 256, false},  // more SMs than units: one unit per block; batch 1
      {1, 2, 64, 4, 256, false},    // one step; 16 units per block
      {3, 9, 40, 4, 64, true},      // 64 threads: KS 2
      {3, 40, 40, 4, 64, true},     // tiles (100) > threads (64): items loop, k not split
      {2, 64, 96, 12, 256, false},  // S1-like proportions: 8 units x 16 row groups, KS 2
  };
  for (const Shape& sh : shapes) {
    check_shape<float>(checks, sh, 1e-5);
    check_shape<double>(checks, sh, 1e-12);
  }
  std::printf("%d check(s) failed\n", checks.failed);
  return checks.failed ? 1 : 0;
}
