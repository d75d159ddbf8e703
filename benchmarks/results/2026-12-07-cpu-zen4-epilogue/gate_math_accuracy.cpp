// Max relative error of gate_math.h's float exp_, sigmoid and tanh_ over every 7th float
// (sigmoid's tail below -87 is clamped: its 'inf' is that tail). Build with -I the header's dir.
#include <cmath>
#include <cstdio>
#include <cstring>
#include <cstdint>
#include <algorithm>
#include "gate_math.h"
int main() {
  double we = 0, ws = 0, wt = 0;
  for (uint32_t b = 0; b < 0x7f800000u; b += 7) {
    float x; std::memcpy(&x, &b, 4);
    for (float xf : {x, -x}) {
      if (std::fabs(xf) < 87) { double e = std::exp((double)xf); we = std::max(we, std::fabs(fastlstm::exp_(xf) - e) / e); }
      double s = 1 / (1 + std::exp(-(double)xf)); ws = std::max(ws, std::fabs(fastlstm::sigmoid(xf) - s) / s);
      double t = std::tanh((double)xf); if (t != 0) wt = std::max(wt, std::fabs(fastlstm::tanh_(xf) - t) / std::fabs(t));
    }
  }
  std::printf("max rel: exp %.3g sigmoid %.3g tanh %.3g; sigmoid(0) %.9g sigmoid(+-inf) %g %g sigmoid(nan) %g exp(0) %.9g\n", we, ws, wt,
              fastlstm::sigmoid(0.f), fastlstm::sigmoid(INFINITY), fastlstm::sigmoid(-INFINITY), fastlstm::sigmoid(NAN), fastlstm::exp_(0.f));
}
