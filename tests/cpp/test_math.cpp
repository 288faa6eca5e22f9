// csrc/include/dreamer_fast/math.h: the exp and log polynomials against long double libm over their whole ranges,
// their special values, and bit_cast.
//   g++ -std=c++20 -O2 -Icsrc/include -Itests/cpp tests/cpp/test_math.cpp -o /tmp/m && /tmp/m
#include <cmath>
#include <cstdint>
#include <limits>

#include "check.h"
#include "dreamer_fast/math.h"

using dreamer_fast::bit_cast;
using dreamer_fast::exp_poly;
using dreamer_fast::log_poly;

// Worst relative error of exp_poly over `steps` + 1 points of [lo, hi], skipping results in the flushed range.
template <typename T>
static double max_relative_exp_error(double lo, double hi, int steps) {
  double worst = 0;
  for (int i = 0; i <= steps; ++i) {
    const T z = static_cast<T>(lo + (hi - lo) * i / steps);
    const long double want = std::exp(static_cast<long double>(z));
    if (want < 1e-300L || (sizeof(T) == 4 && want < 1e-37L)) continue;
    worst = std::fmax(worst, static_cast<double>(std::fabs((exp_poly(z) - want) / want)));
  }
  return worst;
}

int main() {
  constexpr double kUlpF = 5.97e-8, kUlpD = 1.12e-16;  // 2^-24, 2^-53 (rounded up)
  const double inf = std::numeric_limits<double>::infinity(), nan = std::numeric_limits<double>::quiet_NaN();
  const float inff = static_cast<float>(inf), nanf = static_cast<float>(nan);

  // exp: within 2 ulp over the whole range of each precision (the sampler uses z <= 0, the row loops both signs)
  EXPECT(max_relative_exp_error<float>(-87.0, 0.0, 2000000) < 2 * kUlpF);
  EXPECT(max_relative_exp_error<float>(0.0, 88.0, 2000000) < 2 * kUlpF);
  EXPECT(max_relative_exp_error<double>(-708.0, 0.0, 2000000) < 2 * kUlpD);
  EXPECT(max_relative_exp_error<double>(0.0, 709.0, 2000000) < 2 * kUlpD);
  double worst = 0;  // a dense float grid across both signs
  for (float x = -87.0f; x <= 88.0f; x += 0.0137f) {
    const double want = std::exp(static_cast<double>(x));
    worst = std::fmax(worst, std::fabs(exp_poly(x) - want) / want);
  }
  EXPECT(worst < 2.4e-7);
  EXPECT(exp_poly(0.0f) == 1.0f && exp_poly(-0.0f) == 1.0f && exp_poly(0.0) == 1.0 && exp_poly(-0.0) == 1.0);
  EXPECT(exp_poly(-100.0f) == 0.0f && exp_poly(-800.0) == 0.0);  // flushed below the range
  EXPECT(exp_poly(-inff) == 0.0f && exp_poly(-inf) == 0.0);
  EXPECT(exp_poly(100.0f) == exp_poly(88.0f) && exp_poly(800.0) == exp_poly(709.0));  // saturates above the range
  EXPECT(exp_poly(inff) == exp_poly(88.0f) && exp_poly(inf) == exp_poly(709.0) && std::isfinite(exp_poly(inff)));
  EXPECT(std::isnan(exp_poly(nanf)) && std::isnan(exp_poly(nan)) && std::isnan(exp_poly(-nanf)));
  // Without the upper clamp (z <= 0 promised): the same values where the promise holds, NaN kept
  for (float z = -90.0f; z <= 0.0f; z += 0.173f) EXPECT(exp_poly<true>(z) == exp_poly(z));
  for (double z = -720.0; z <= 0.0; z += 1.37) EXPECT(exp_poly<true>(z) == exp_poly(z));
  EXPECT(exp_poly<true>(-inff) == 0.0f && std::isnan(exp_poly<true>(nanf)) && std::isnan(exp_poly<true>(nan)));

  // log: 2 ulp relative over the normal floats, absolute float precision near 1, denormals, special values
  double worst_log = 0, worst_log_abs = 0;
  for (float x = 1e-37f; x < 1e37f; x *= 1.0137f) {
    const double want = std::log(static_cast<double>(x));
    worst_log = std::fmax(worst_log, std::fabs(log_poly(x) - want) / std::fmax(std::fabs(want), 1e-30));
  }
  for (float x = 0.5f; x < 2.0f; x += 1e-4f)
    worst_log_abs = std::fmax(worst_log_abs, std::fabs(log_poly(x) - std::log(static_cast<double>(x))));
  EXPECT(worst_log < 2.4e-7);
  EXPECT(worst_log_abs < 1.2e-7);
  EXPECT(log_poly(1.0f) == 0.0f);
  EXPECT_NEAR(log_poly(1e-40f), std::log(static_cast<double>(1e-40f)), 1e-6 * 93);
  EXPECT(std::isnan(log_poly(nanf)) && std::isnan(log_poly(-1.0f)) && log_poly(0.0f) == -inff &&
         log_poly(inff) == inff);

  // vexp/vlog on the host: the polynomials for float, libm for double
  EXPECT(dreamer_fast::vexp(1.5f) == exp_poly(1.5f) && dreamer_fast::vlog(1.5f) == log_poly(1.5f));
  EXPECT(dreamer_fast::vexp(1.5) == std::exp(1.5) && dreamer_fast::vlog(1.5) == std::log(1.5));

  // bit_cast: the IEEE layouts, both ways
  EXPECT(bit_cast<uint32_t>(1.0f) == 0x3f800000u && bit_cast<float>(0xc0000000u) == -2.0f);
  EXPECT(bit_cast<uint64_t>(1.0) == 0x3ff0000000000000ull && bit_cast<double>(0x4000000000000000ull) == 2.0);
  return report("test_math");
}
