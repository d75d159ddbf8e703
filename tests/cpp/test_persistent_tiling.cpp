// p4's per-block work (lstm_persistent_mma.h: a stack as a wavefront, phase 1 as warp MMAs)
// run on the CPU by run_mma_stack_on_host: per wave every block, in each block every warp,
// then every thread, phase by phase, as the GPU's barriers order them, blocks in both
// orders; against the double reference step chained over the sequence and up the layers.
// This checks the tiling and indexing (k slices over [W_ih | W_hh], MMA tiles, partial
// sums, short last blocks, batch not a multiple of the tile, reverse time, the wave
// schedule) without a GPU; the GPU tests check the kernel (and the MMA fragment layout).
#include <algorithm>
#include <cstdio>
#include <limits>

#include "lstm_persistent.h"
#include "lstm_persistent_mma.h"
#include "reference_step.h"

namespace {

struct Shape {
  int steps, batch, hidden, layers, sms, threads;
  bool reverse, bias;
};

struct Layer {  // one layer's inputs and its reference outputs
  ref::Vec w_ih, bias, w_hh, h0, c0, hs, cs, gates;
};

// xproj: layer 0's input projection; returns every layer with its reference outputs.
std::vector<Layer> reference_stack(const Shape& sh, std::mt19937& rng, const ref::Vec& xproj) {
  const int S = sh.steps, B = sh.batch, H = sh.hidden;
  std::vector<Layer> layers(sh.layers);
  for (int l = 0; l < sh.layers; ++l) {
    Layer& L = layers[l];
    if (l > 0) L.w_ih = ref::random_vec(rng, size_t(4) * H * H, 0.3);
    if (l > 0 && sh.bias) L.bias = ref::random_vec(rng, size_t(4) * H);
    L.w_hh = ref::random_vec(rng, size_t(4) * H * H, 0.3);
    L.h0 = ref::random_vec(rng, size_t(B) * H), L.c0 = ref::random_vec(rng, size_t(B) * H);
    L.hs.resize(size_t(S) * B * H), L.cs.resize(size_t(S) * B * H);
    L.gates.resize(size_t(S) * B * 4 * H);
    ref::Vec h = L.h0, c = L.c0;
    for (int s = 0; s < S; ++s) {
      const int t = sh.reverse ? S - 1 - s : s;
      ref::Vec x(size_t(B) * 4 * H, 0.0), rec(size_t(B) * 4 * H, 0.0);
      for (int b = 0; b < B; ++b)
        for (int j = 0; j < 4 * H; ++j) {
          double& xj = x[b * 4 * H + j];
          if (l == 0) {
            xj = xproj[(size_t(t) * B + b) * 4 * H + j];
          } else {
            xj = L.bias.empty() ? 0.0 : L.bias[j];
            const double* below = &layers[l - 1].hs[(size_t(t) * B + b) * H];
            for (int k = 0; k < H; ++k) xj += below[k] * L.w_ih[size_t(j) * H + k];
          }
          for (int k = 0; k < H; ++k)
            rec[b * 4 * H + j] += h[b * H + k] * L.w_hh[size_t(j) * H + k];
        }
      ref::Vec g(size_t(B) * 4 * H), c_new(size_t(B) * H), h_new(size_t(B) * H);
      ref::step_forward(B, H, x, rec, c, g, c_new, h_new);
      std::copy(g.begin(), g.end(), L.gates.begin() + size_t(t) * B * 4 * H);
      std::copy(c_new.begin(), c_new.end(), L.cs.begin() + size_t(t) * B * H);
      std::copy(h_new.begin(), h_new.end(), L.hs.begin() + size_t(t) * B * H);
      h = h_new, c = c_new;
    }
  }
  return layers;
}

template <typename T>
std::vector<T> as(const ref::Vec& v, size_t n = 0) {
  if (v.empty()) return std::vector<T>(n, std::numeric_limits<T>::quiet_NaN());  // poison
  return std::vector<T>(v.begin(), v.end());
}

enum class Kernel { mma_k16, mma_k8 };  // p4 with either MMA shape

// The loads of h: element by element, or chunks where h_rows_in_chunks allows them.
enum class Loads { scalar, vector_where_allowed };

// Returns whether the run used vector loads.
template <typename T>
bool check_shape(ref::Checks& checks, const Shape& sh, Kernel kernel, double tol,
                 Loads loads = Loads::scalar) {
  bool vector = false;
  const int S = sh.steps, B = sh.batch, H = sh.hidden;
  std::mt19937 rng(S * 1000 + B * 10 + H + 7 * sh.layers);
  const ref::Vec xproj = ref::random_vec(rng, size_t(S) * B * 4 * H);
  const std::vector<Layer> want = reference_stack(sh, rng, xproj);

  using fastlstm::HostOrder;
  for (HostOrder order : {HostOrder::waves, HostOrder::waves_blocks_reversed}) {
    struct Buffers { std::vector<T> w_ih, bias, w_hh, h0, c0, hs, cs, gates; };
    std::vector<Buffers> buf(sh.layers);
    const std::vector<T> x_t = as<T>(xproj);
    fastlstm::PersistentStackArgs<T, T> a{};
    int64_t inputs[fastlstm::kMaxStackLayers] = {};
    for (int l = 0; l < sh.layers; ++l) {
      const Layer& L = want[l];
      Buffers& b = buf[l];
      b.w_ih = as<T>(L.w_ih), b.bias = as<T>(L.bias), b.w_hh = as<T>(L.w_hh);
      b.h0 = as<T>(L.h0), b.c0 = as<T>(L.c0);
      b.hs = as<T>({}, L.hs.size()), b.cs = as<T>({}, L.cs.size());
      b.gates = as<T>({}, L.gates.size());
      inputs[l] = l == 0 ? 0 : H;
      a.layer[l] = {l == 0 ? x_t.data() : nullptr,
                    l == 0 ? nullptr : b.w_ih.data(),
                    b.bias.empty() ? nullptr : b.bias.data(),
                    b.h0.data(), b.c0.data(), b.w_hh.data(), b.hs.data(), b.cs.data(),
                    b.gates.data(), inputs[l]};
    }
    a.layers = sh.layers, a.steps = S, a.batch = B, a.hidden = H, a.reverse = sh.reverse;
    const int k = kernel == Kernel::mma_k16 ? 16 : 8;
    const int chunk = k == 16 ? fastlstm::MmaK16::chunk : fastlstm::MmaK8::chunk;
    vector = loads == Loads::vector_where_allowed && fastlstm::h_rows_in_chunks(a, chunk);
    const fastlstm::MmaTiling tiling = fastlstm::mma_tiling(
        inputs, sh.layers, B, H, sh.sms, sh.threads, sizeof(T), k, vector ? chunk : 0);
    if (k == 16)
      fastlstm::run_mma_stack_on_host<fastlstm::MmaK16>(a, tiling, sh.threads, order);
    else
      fastlstm::run_mma_stack_on_host<fastlstm::MmaK8>(a, tiling, sh.threads, order);
    const int blocks = tiling.grid.blocks, k_splits = tiling.layer[0].k_splits;

    double worst = 0;
    for (int l = 0; l < sh.layers; ++l)
      worst = std::max({worst, ref::relative_error(buf[l].hs, want[l].hs),
                        ref::relative_error(buf[l].cs, want[l].cs),
                        ref::relative_error(buf[l].gates, want[l].gates)});
    char what[200];
    std::snprintf(what, sizeof what,
                  "%s S%d B%d H%d L%d on %d SMs (%d blocks), KS %d%s%s%s (%s)",
                  kernel == Kernel::mma_k16 ? (vector ? "p4 k16 vector" : "p4 k16")
                                            : (vector ? "p4 k8 vector" : "p4 k8"),
                  S, B, H, sh.layers, sh.sms, blocks, k_splits,
                  sh.reverse ? ", reverse" : "",
                  sh.layers > 1 && !sh.bias ? ", no bias" : "",
                  order == HostOrder::waves ? "" : ", blocks reversed",
                  sizeof(T) == 4 ? "float" : "double");
    checks.expect(worst < tol && blocks <= sh.sms, what, worst);
  }
  return vector;
}

// The fragment layouts against the PTX ISA's figures: a few lanes' elements written out, and
// each matrix covered exactly once. MmaK16: mma.m16n8k16 (.bf16/.f16); MmaK8: mma.m16n8k8
// (.tf32); the C/D layout (16 x 8 fp32) is the same for both.
template <typename Shape>
bool covers_each_element_once() {
  int a_seen[16][16] = {}, b_seen[16][8] = {}, c_seen[16][8] = {};
  for (int lane = 0; lane < fastlstm::kWarpSize; ++lane) {
    for (int e = 0; e < Shape::a_elems; ++e) ++a_seen[Shape::a_row(lane, e)][Shape::a_col(lane, e)];
    for (int e = 0; e < Shape::b_elems; ++e) ++b_seen[Shape::b_row(lane, e)][Shape::b_col(lane, e)];
    for (int e = 0; e < 4; ++e)
      ++c_seen[fastlstm::mma_c_row(lane, e)][fastlstm::mma_c_col(lane, e)];
  }
  bool ok = true;
  for (int r = 0; r < 16; ++r)
    for (int c = 0; c < Shape::k; ++c) ok &= a_seen[r][c] == 1;
  for (int r = 0; r < Shape::k; ++r)
    for (int c = 0; c < 8; ++c) ok &= b_seen[r][c] == 1;
  for (int r = 0; r < 16; ++r)
    for (int c = 0; c < 8; ++c) ok &= c_seen[r][c] == 1;
  return ok;
}

void check_fragment_layout(ref::Checks& checks) {
  using fastlstm::MmaK16;
  using fastlstm::MmaK8;
  bool ok16 = covers_each_element_once<MmaK16>(), ok8 = covers_each_element_once<MmaK8>();
  // m16n8k16, lane 0 (group 0, thread 0) and lane 5 (group 1, thread 1): A (row, k) a0..a7.
  const int a0[8][2] = {{0, 0}, {0, 1}, {8, 0}, {8, 1}, {0, 8}, {0, 9}, {8, 8}, {8, 9}};
  const int a5[8][2] = {{1, 2}, {1, 3}, {9, 2}, {9, 3}, {1, 10}, {1, 11}, {9, 10}, {9, 11}};
  for (int e = 0; e < 8; ++e) {
    ok16 &= MmaK16::a_row(0, e) == a0[e][0] && MmaK16::a_col(0, e) == a0[e][1];
    ok16 &= MmaK16::a_row(5, e) == a5[e][0] && MmaK16::a_col(5, e) == a5[e][1];
  }
  // Lane 31 (group 7, thread 3): m16n8k16 B (k, n) b0..b3; C (row, col) c0..c3.
  const int b31[4][2] = {{6, 7}, {7, 7}, {14, 7}, {15, 7}};
  const int c31[4][2] = {{7, 6}, {7, 7}, {15, 6}, {15, 7}};
  for (int e = 0; e < 4; ++e) {
    ok16 &= MmaK16::b_row(31, e) == b31[e][0] && MmaK16::b_col(31, e) == b31[e][1];
    ok16 &= fastlstm::mma_c_row(31, e) == c31[e][0] && fastlstm::mma_c_col(31, e) == c31[e][1];
  }
  // m16n8k8 (.tf32), lane 6 (group 1, thread 2): A (row, k) a0..a3, B (k, n) b0, b1.
  const int t6a[4][2] = {{1, 2}, {9, 2}, {1, 6}, {9, 6}};
  const int t6b[2][2] = {{2, 1}, {6, 1}};
  for (int e = 0; e < 4; ++e)
    ok8 &= MmaK8::a_row(6, e) == t6a[e][0] && MmaK8::a_col(6, e) == t6a[e][1];
  for (int e = 0; e < 2; ++e)
    ok8 &= MmaK8::b_row(6, e) == t6b[e][0] && MmaK8::b_col(6, e) == t6b[e][1];
  checks.expect(ok16, "mma.m16n8k16 (.bf16/.f16) fragment layout", ok16 ? 0 : 1);
  checks.expect(ok8, "mma.m16n8k8 (.tf32) fragment layout", ok8 ? 0 : 1);
}

// Shared-memory bank conflicts of p4's weight reads, at the GPU's element sizes (2 bytes for
// k16, 4 for k8) for every layer of S1 and S2 (132 SMs), every n-tile
// and k-step: the most distinct 4-byte words (element loads; 32 banks) or 16-byte chunks
// (vector loads; 8 lanes per phase, 8 groups of 4 banks) that share a bank or bank group in
// one load instruction. 1 means no conflicts. Correctness does not depend on it (the runs
// above check that); speed does.
int worst_bank_conflict(int mma_k, bool vector) {
  const int element_bytes = mma_k == 16 ? 2 : 4, chunk = mma_k / 2;
  int worst = 0;
  for (int shape = 0; shape < 2; ++shape) {
      const int layers = shape == 0 ? 2 : 3, batch = shape == 0 ? 64 : 100;
      const int64_t inputs[fastlstm::kMaxStackLayers] = {0, 512, 512};
      const fastlstm::MmaTiling t = fastlstm::mma_tiling(
          inputs, layers, batch, 512, 132, 256, element_bytes, mma_k, vector ? chunk : 0);
      for (int l = 0; l < layers; ++l) {
        const fastlstm::MmaLayerTiling& lt = t.layer[l];
        for (int nt = 0; nt < lt.n_tiles; ++nt)
          for (int ks = 0; ks < lt.k_steps; ks += vector ? 2 : 1) {
            const int loads = vector ? 1 : (mma_k == 16 ? 4 : 2);
            for (int e = 0; e < loads; ++e)
              for (int phase = 0; phase < (vector ? 4 : 1); ++phase) {
                std::vector<std::vector<int64_t>> bank(vector ? 8 : 32);
                for (int lane = phase * 8; lane < (vector ? phase * 8 + 8 : 32); ++lane) {
                  const int64_t n = nt * 8 + lane / 4;
                  const int64_t k = vector ? int64_t(ks) * mma_k + chunk * (lane % 4)
                                    : int64_t(ks) * mma_k +
                                          (mma_k == 16 ? fastlstm::MmaK16::b_row(lane, e)
                                                       : fastlstm::MmaK8::b_row(lane, e));
                  const int64_t byte = fastlstm::weight_index(t, lt, n, k) * element_bytes;
                  const int64_t unit = vector ? byte / 16 : byte / 4;  // chunk or word
                  std::vector<int64_t>& b = bank[unit % (vector ? 8 : 32)];
                  if (std::find(b.begin(), b.end(), unit) == b.end()) b.push_back(unit);
                }
                for (const auto& b : bank) worst = std::max(worst, int(b.size()));
              }
          }
      }
    }
  return worst;
}

}  // namespace

int main() {
  ref::Checks checks;
  check_fragment_layout(checks);
  const Shape shapes[] = {
      // One layer.
      {5, 3, 37, 1, 8, 256, false, true},    // 5 units per block, last block short (37 = 7*5 + 2)
      {4, 7, 37, 1, 8, 256, true, true},     // batch 7; reverse
      {3, 1, 19, 1, 132, 256, false, true},  // more SMs than units: one unit per block; batch 1
      {1, 2, 64, 1, 4, 256, false, true},    // one step; 16 units per block
      {3, 9, 40, 1, 4, 64, true, true},      // 64 threads (2 warps)
      {3, 40, 40, 1, 4, 64, true, true},     // 3 m-tiles x 5 n-tiles on 2 warps
      {2, 64, 96, 1, 12, 256, false, true},  // S1-like proportions: 8 units, 4 m-tiles
      // Stacks: the wavefront, [W_ih | W_hh] slices, layers sharing the SMs.
      {5, 3, 37, 2, 12, 256, false, true},   // two layers; slices straddle the W_ih | W_hh edge
      {6, 7, 21, 3, 16, 64, false, true},    // three layers, 64 threads
      {4, 5, 19, 3, 8, 256, false, false},   // no bias in the layers above
      {1, 2, 16, 3, 8, 256, false, true},    // one step: waves with idle layers only
      {3, 1, 24, 4, 4, 256, true, true},     // one block per layer (L = SMs), batch 1, reverse
      {2, 64, 96, 2, 26, 256, false, true},  // S1-like: layer 1 gets about twice the blocks
      // Several m-tiles (batch 40: 3, the last short), n-groups (U 20: 10
      // n-tiles in 2 groups), K not a multiple of 16.
      {3, 40, 20, 1, 1, 256, false, true},
      {2, 33, 44, 2, 3, 128, false, true},
      // Vector loads: 2 warps, K 136 and 272 (9 and 17 k-steps of 16, rounded up to
      // pairs): several bursts of k-steps, the last one short.
      {2, 16, 136, 2, 4, 64, false, true},
      // Phase 2: more cells (rows x units) per thread than stay in registers (layer 0:
      // 40 x 40 on one block of 64 threads, 25 each; p4 keeps 8 in registers).
      {3, 40, 40, 2, 3, 64, true, true},
  };
  for (Kernel kernel : {Kernel::mma_k16, Kernel::mma_k8})
    for (const Shape& sh : shapes) {
      check_shape<float>(checks, sh, kernel, 1e-5);
      check_shape<double>(checks, sh, kernel, 1e-12);
    }
  // Again with vector loads where the shape allows them (H and the inputs a multiple of
  // the chunk: 8 elements for k16, 4 for k8); the others run the element loads once more.
  int vector_runs[2] = {};
  for (Kernel kernel : {Kernel::mma_k16, Kernel::mma_k8})
    for (const Shape& sh : shapes) {
      const Loads loads = Loads::vector_where_allowed;
      const bool v = check_shape<float>(checks, sh, kernel, 1e-5, loads);
      check_shape<double>(checks, sh, kernel, 1e-12, loads);
      vector_runs[int(kernel == Kernel::mma_k8)] += v;
    }
  for (int mma_k : {16, 8})
    for (bool vector : {false, true}) {
      const int worst = worst_bank_conflict(mma_k, vector);
      char what[120];
      std::snprintf(what, sizeof what, "p4 k%d %s weight loads at S1, S2: no bank conflicts",
                    mma_k, vector ? "vector" : "element");
      checks.expect(worst == 1, what, worst);
    }
  checks.expect(vector_runs[0] == 9 && vector_runs[1] == 11,
                "vector loads ran where the shape allows (k16 9, k8 11 shapes)",
                vector_runs[0] * 100 + vector_runs[1]);
  std::printf("%d check(s) failed\n", checks.failed);
  return checks.failed ? 1 : 0;
}
