// sampling.h: Philox4x32-10 against the published known-answer vectors (Salmon et al.'s
// Random123 kat_vectors), the sort, and the draw's filtering rules at their edges.
#include <cstdio>

#include "reference_step.h"
#include "sampling.h"

namespace {

void check_philox(ref::Checks& checks) {
  struct Case {
    uint32_t in[6], out[4];
  };
  const Case cases[] = {
      {{0, 0, 0, 0, 0, 0}, {0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8}},
      {{~0u, ~0u, ~0u, ~0u, ~0u, ~0u}, {0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd}},
      {{0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344, 0xa4093822, 0x299f31d0},
       {0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1}}};
  int wrong = 0;
  for (const Case& c : cases) {
    const auto r = fastlstm::philox4x32_10(c.in[0], c.in[1], c.in[2], c.in[3], c.in[4], c.in[5]);
    for (int k = 0; k < 4; ++k) wrong += r.v[k] != c.out[k];
  }
  checks.expect(wrong == 0, "philox4x32-10 known answers, words wrong", wrong);
  double lo = 1, hi = 0, mean = 0;
  const int n = 100000;
  for (int k = 0; k < n; ++k) {
    const double u = fastlstm::uniform_draw(99, k % 7, k);
    lo = std::min(lo, u);
    hi = std::max(hi, u);
    mean += u / n;
  }
  checks.expect(lo >= 0 && hi < 1 && std::fabs(mean - 0.5) < 0.005, "uniform_draw mean in [0,1)",
                mean);
}

void check_draw(ref::Checks& checks) {
  const float logits[6] = {1.f, 3.f, 3.f, -2.f, 0.5f, 3.f};
  float prob[6];
  int32_t order[6];
  fastlstm::sort_by_logit(logits, 6, order);
  const int32_t sorted[6] = {1, 2, 5, 0, 4, 3};  // ties by id
  int misplaced = 0;
  for (int k = 0; k < 6; ++k) misplaced += order[k] != sorted[k];
  checks.expect(misplaced == 0, "sort_by_logit, ids misplaced", misplaced);
  using fastlstm::SamplingOptions;
  checks.expect(fastlstm::draw(logits, 6, SamplingOptions{0.f, 0, 1.f}, 0.7, prob, order) == 1,
                "temperature 0: the first largest", 0);
  // top_k 1 keeps the three tied at 3; u sweeps over them only.
  int outside = 0, seen[6] = {};
  for (int k = 0; k < 300; ++k) {
    const int64_t id = fastlstm::draw(logits, 6, SamplingOptions{1.f, 1, 1.f}, k / 300.0, prob, order);
    outside += id != 1 && id != 2 && id != 5;
    seen[id]++;
  }
  checks.expect(outside == 0 && seen[1] && seen[2] && seen[5], "top_k 1 keeps the ties only",
                outside);
  // A tiny top_p keeps the likeliest (id 1, first of the ties) alone.
  outside = 0;
  for (int k = 0; k < 100; ++k)
    outside += fastlstm::draw(logits, 6, SamplingOptions{1.f, 0, 1e-3f}, k / 100.0, prob, order) != 1;
  checks.expect(outside == 0, "top_p 1e-3 keeps the first likeliest", outside);
  // u at the top of [0, 1) still lands on an id that is kept.
  const int64_t last = fastlstm::draw(logits, 6, SamplingOptions{1.f, 2, 1.f}, 0.9999999999, prob, order);
  checks.expect(last == 1 || last == 2 || last == 5, "u near 1 stays among the kept", last);
}

}  // namespace

int main() {
  ref::Checks checks;
  check_philox(checks);
  check_draw(checks);
  std::printf("%s\n", checks.failed ? "FAILED" : "all passed");
  return checks.failed ? 1 : 0;
}
