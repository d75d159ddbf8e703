#include <cmath>
#include <cstdio>
#include <cstring>
#include <cstdint>
#include <initializer_list>
#include "gate_math.h"
int main() {
  double worst = 0, worst_abs = 0; float at = 0; long above = 0;
  for (uint32_t b = 0; b < 0x7f800000u; b += 7) {  // every 7th positive float
    float x; std::memcpy(&x, &b, 4);
    for (float xf : {x, -x}) {
      const double t = std::tanh((double)xf); const float y = fastlstm::tanh_(xf);
      if (std::fabs(y) > 1) ++above;
      if (t != 0) { const double r = std::fabs(y - t) / std::fabs(t); if (r > worst) { worst = r; at = xf; } }
      worst_abs = std::max(worst_abs, std::fabs(y - t));
    }
  }
  std::printf("max rel %.3g at %g, max abs %.3g, |y|>1: %ld; tanh(inf) %g tanh(-inf) %g tanh(nan) %g tanh(0) %g tanh(-0) %g\n",
              worst, at, worst_abs, above, fastlstm::tanh_(INFINITY), fastlstm::tanh_(-INFINITY), fastlstm::tanh_(NAN),
              fastlstm::tanh_(0.f), fastlstm::tanh_(-0.f));
}
