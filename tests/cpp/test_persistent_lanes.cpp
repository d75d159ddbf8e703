// p4's phase 1 run the way the GPU runs it: the kernel calls mma_partial_sums with ONE lane
// per thread (kLanes = 1), which no other CPU test executes (they run all 32 lanes of a warp
// in one call). Here each lane is a host thread running that same one-lane code, and the 32
// threads of a warp meet at every MMA: the last to arrive multiplies the fragments all of
// them handed in (HostMma, as the 32-lane run does) and each takes its lane's sums back.
// The outputs must equal the 32-lane run's bit for bit (the same sums in the same order).
// A lane whose control flow left its warp's (an MMA the others do not reach) stalls the
// meeting; that fails after a timeout instead of hanging.
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <random>
#include <thread>
#include <vector>

#include "lstm_persistent_mma.h"

namespace {

using fastlstm::kMaxNTiles;
using fastlstm::kWarpSize;

// The meeting point of one warp's 32 lane threads.
template <typename Shape>
struct Warp {
  std::mutex mutex;
  std::condition_variable met;
  int arrived = 0;
  long meetings = 0;
  bool stalled = false;  // a meeting timed out: the lanes' control flow diverged
  float a[kWarpSize][Shape::a_elems], b[kWarpSize][Shape::b_elems];
  float acc[kWarpSize][kMaxNTiles][4];
  int tile[kWarpSize];

  // Every lane calls this once per MMA; the last to arrive runs the product.
  void mma(int lane, int j) {
    std::unique_lock<std::mutex> lock(mutex);
    tile[lane] = j;
    const long meeting = meetings;
    if (++arrived == kWarpSize) {
      for (int l = 0; l < kWarpSize; ++l) stalled |= tile[l] != j;
      fastlstm::HostMma<Shape, float, float>{}(a, b, acc, j);
      arrived = 0;
      ++meetings;
      met.notify_all();
    } else if (!stalled && !met.wait_for(lock, std::chrono::seconds(5),
                                         [&] { return meetings != meeting; })) {
      stalled = true;
    }
  }
};

// The Mma functor of one lane (kLanes = 1), as TensorCoreMma is on the GPU.
template <typename Shape>
struct LaneMma {
  Warp<Shape>* warp;
  int lane;
  void operator()(const float (&a)[1][Shape::a_elems], const float (&b)[1][Shape::b_elems],
                  float (&acc)[1][kMaxNTiles][4], int j) const {
    // Only this lane writes its slots, and the warp's product reads them after every lane
    // has arrived (the mutex orders it).
    std::memcpy(warp->a[lane], a[0], sizeof a[0]);
    std::memcpy(warp->b[lane], b[0], sizeof b[0]);
    std::memcpy(warp->acc[lane][j], acc[0][j], sizeof acc[0][j]);
    warp->mma(lane, j);
    std::memcpy(acc[0][j], warp->acc[lane][j], sizeof acc[0][j]);
  }
};

struct Case {
  int steps, batch, hidden, layers, sms, threads;
  bool vector;
};

std::vector<float> random_floats(std::mt19937& rng, size_t n, float scale) {
  std::uniform_real_distribution<float> u(-scale, scale);
  std::vector<float> v(n);
  for (float& x : v) x = u(rng);
  return v;
}

// Runs the stack twice, 32 lanes per call and lane by lane; true if the outputs are equal
// and no warp stalled.
template <typename Shape>
bool lanes_agree(const Case& c, const char* name) {
  const int S = c.steps, B = c.batch, H = c.hidden, L = c.layers;
  std::mt19937 rng(S * 100 + B * 10 + H);
  const std::vector<float> xproj = random_floats(rng, size_t(S) * B * 4 * H, 1.0f);
  struct Layer { std::vector<float> w_ih, bias, w_hh, h0, c0; };
  std::vector<Layer> layers(L);
  for (Layer& l : layers) {
    l.w_ih = random_floats(rng, size_t(4) * H * H, 0.3f);
    l.bias = random_floats(rng, size_t(4) * H, 1.0f);
    l.w_hh = random_floats(rng, size_t(4) * H * H, 0.3f);
    l.h0 = random_floats(rng, size_t(B) * H, 1.0f);
    l.c0 = random_floats(rng, size_t(B) * H, 1.0f);
  }
  struct Outputs { std::vector<float> hs, cs, gates; };
  auto run = [&](bool lane_by_lane, bool& stalled) {
    std::vector<Outputs> out(L);
    fastlstm::PersistentStackArgs<float, float> a{};
    int64_t inputs[fastlstm::kMaxStackLayers] = {};
    for (int l = 0; l < L; ++l) {
      out[l].hs.assign(size_t(S) * B * H, NAN), out[l].cs.assign(size_t(S) * B * H, NAN);
      out[l].gates.assign(size_t(S) * B * 4 * H, NAN);
      inputs[l] = l == 0 ? 0 : H;
      a.layer[l] = {l == 0 ? xproj.data() : nullptr, l == 0 ? nullptr : layers[l].w_ih.data(),
                    l == 0 ? nullptr : layers[l].bias.data(), layers[l].h0.data(),
                    layers[l].c0.data(), layers[l].w_hh.data(), out[l].hs.data(),
                    out[l].cs.data(), out[l].gates.data(), inputs[l]};
    }
    a.layers = L, a.steps = S, a.batch = B, a.hidden = H;
    const fastlstm::MmaTiling t = fastlstm::mma_tiling(inputs, L, B, H, c.sms, c.threads,
                                                       sizeof(float), Shape::k,
                                                       c.vector ? Shape::chunk : 0);
    stalled = false;
    if (!lane_by_lane) {
      fastlstm::run_mma_stack_on_host<Shape>(a, t, c.threads);
      return out;
    }
    fastlstm::run_mma_stack_on_host<Shape>(
        a, t, c.threads, fastlstm::HostOrder::waves,
        [&](int blk, int64_t wave, int warp_index, const float* w_s, float* partial) {
          Warp<Shape> warp;
          std::vector<std::thread> lanes;
          for (int lane = 0; lane < kWarpSize; ++lane)
            lanes.emplace_back([&, lane] {
              fastlstm::mma_partial_sums<Shape, 1>(a, t, blk, wave, warp_index, lane, w_s,
                                                   partial, LaneMma<Shape>{&warp, lane});
            });
          for (std::thread& lane : lanes) lane.join();
          stalled |= warp.stalled;
        });
    return out;
  };
  bool stalled_32 = false, stalled_1 = false;
  const std::vector<Outputs> want = run(false, stalled_32);
  const std::vector<Outputs> got = run(true, stalled_1);
  bool equal = true;
  for (int l = 0; l < L; ++l)
    equal &= std::memcmp(got[l].hs.data(), want[l].hs.data(), want[l].hs.size() * 4) == 0 &&
             std::memcmp(got[l].cs.data(), want[l].cs.data(), want[l].cs.size() * 4) == 0 &&
             std::memcmp(got[l].gates.data(), want[l].gates.data(),
                         want[l].gates.size() * 4) == 0;
  const bool ok = equal && !stalled_1;
  std::printf("%s p4 %s, %s loads, S%d B%d H%d L%d on %d SMs x %d threads: lane by lane %s\n",
              ok ? "ok  " : "FAIL", name, c.vector ? "vector" : "element", S, B, H, L, c.sms,
              c.threads,
              stalled_1 ? "stalled (lanes diverged)"
              : equal   ? "equals the 32-lane run bit for bit"
                        : "differs from the 32-lane run");
  return ok;
}

}  // namespace

int main() {
  const Case cases[] = {
      {2, 16, 136, 2, 4, 64, true},    // vector loads: bursts, a short last one
      {2, 16, 136, 2, 4, 64, false},
      {3, 40, 20, 1, 1, 256, false},   // several m-tiles (the last short), 2 n-groups
      {2, 33, 44, 2, 3, 128, true},    // k8 vector (44 = 11 chunks of 4); k16: element loads
      {3, 40, 40, 2, 3, 64, true},     // cells past the registers
  };
  int failed = 0;
  for (const Case& c : cases) {
    failed += !lanes_agree<fastlstm::MmaK16>(Case{c.steps, c.batch, c.hidden, c.layers, c.sms,
                                                  c.threads, c.vector && c.hidden % 8 == 0},
                                             "k16");
    failed += !lanes_agree<fastlstm::MmaK8>(c, "k8");
  }
  std::printf("%d check(s) failed\n", failed);
  return failed ? 1 : 0;
}
