// Standalone test of csrc/include/dreamer_fast/{categorical.h, exp.h}: the per-row math of the straight-through
// categorical kernels.
//   g++ -std=c++20 -O2 -Icsrc/include tests/cpp/test_categorical.cpp -o /tmp/c && /tmp/c
#include <cmath>
#include <cstdio>
#include <limits>
#include <vector>

#include "dreamer_fast/categorical.h"

static int failures = 0;

static void expect(bool ok, const char* what) {
  if (!ok) {
    std::printf("FAIL: %s\n", what);
    ++failures;
  }
}

template <typename T>
static double max_relative_exp_error(double lo, int steps) {
  double worst = 0;
  for (int i = 0; i <= steps; ++i) {
    const T z = static_cast<T>(lo * i / steps);
    const long double want = std::exp(static_cast<long double>(z));
    const double got = dreamer_fast::exp_nonpositive(z);
    if (want < 1e-300L || (sizeof(T) == 4 && want < 1e-37L)) continue;  // flushed range, checked separately
    worst = std::fmax(worst, static_cast<double>(std::fabs((got - want) / want)));
  }
  return worst;
}

int main() {
  using namespace dreamer_fast;
  namespace cat = categorical;
  const double inf = std::numeric_limits<double>::infinity(), nan = std::numeric_limits<double>::quiet_NaN();

  // exp_nonpositive: a few ulp over the whole range, exact at 0, zero below the flush point and at -inf, NaN kept.
  expect(max_relative_exp_error<float>(-87.0, 2000000) < 4 * 5.97e-8, "float exp within 4 ulp on [-87, 0]");
  expect(max_relative_exp_error<double>(-708.0, 2000000) < 4 * 1.12e-16, "double exp within 4 ulp on [-708, 0]");
  expect(exp_nonpositive(0.0f) == 1.0f && exp_nonpositive(-0.0) == 1.0, "exp(0) == 1");
  expect(exp_nonpositive(-100.0f) == 0.0f && exp_nonpositive(-800.0) == 0.0, "exp flushes to 0 below its range");
  expect(exp_nonpositive(-static_cast<float>(inf)) == 0.0f && exp_nonpositive(-inf) == 0.0, "exp(-inf) == 0");
  expect(std::isnan(exp_nonpositive(static_cast<float>(nan))) && std::isnan(exp_nonpositive(nan)), "exp(NaN) is NaN");

  // larger: a max
  expect(cat::larger(1.0, 2.0) == 2.0 && cat::larger(2.0, 1.0) == 2.0 && cat::larger(-inf, -3.0) == -3.0, "larger");

  // mix + prob: (1 - u) softmax + u / K, summing to one.
  const std::vector<double> logits = {0.5, -1.0, 2.0, 0.0};
  const int K = 4;
  const double u = 0.2;
  double m = -inf, sum = 0;
  for (double x : logits) m = cat::larger(m, x);
  for (double x : logits) sum += cat::shifted_exp(x, m);
  const cat::Mix<double> mix = cat::mix(sum, u, K);
  double softmax_sum = 0, total = 0;
  for (double x : logits) softmax_sum += std::exp(x);
  std::vector<double> p;
  for (double x : logits) {
    p.push_back(cat::prob(cat::shifted_exp(x, m), mix));
    total += p.back();
    expect(std::fabs(p.back() - ((1 - u) * std::exp(x) / softmax_sum + u / K)) < 1e-15, "prob = (1-u) softmax + u/K");
  }
  expect(std::fabs(total - 1) < 1e-15, "probs sum to 1");
  const cat::Mix<double> uniform = cat::mix(sum, 1.0, K);
  expect(cat::prob(cat::shifted_exp(logits[2], m), uniform) == 0.25, "unimix = 1 gives exactly 1/K");

  // draw: the smallest k with u < cumsum[k], clamped to K - 1.
  const double q[4] = {0.25, 0.25, 0.125, 0.375};  // cumsum 0.25 0.5 0.625 1
  expect(cat::draw(q, 4, 0.0) == 0, "draw(0) is class 0");
  expect(cat::draw(q, 4, 0.2499) == 0, "below the first boundary: class 0");
  expect(cat::draw(q, 4, 0.25) == 1, "on a boundary: the next class");
  expect(cat::draw(q, 4, 0.6) == 2, "between 0.5 and 0.625: class 2");
  expect(cat::draw(q, 4, 0.99999) == 3, "last class");
  expect(cat::draw(q, 4, 1.0) == 3 && cat::draw(q, 4, 7.0) == 3, "at or past the total: clamped to K - 1");
  const double one[1] = {1.0};
  expect(cat::draw(one, 1, 0.9) == 0, "K = 1: class 0");
  const double with_nan[3] = {nan, 0.5, 0.5};
  expect(cat::draw(with_nan, 3, 0.9) == 0, "NaN probs: class 0 (no prefix compares <= u)");
  double c = 0;
  expect(cat::draw_step(c, 0.25, 0.3) == 1 && c == 0.25 && cat::draw_step(c, 0.25, 0.3) == 0 && c == 0.5,
         "draw_step accumulates and counts prefixes <= u");

  // row_uniform is the Philox stream's element `row`.
  expect(cat::row_uniform<double>(9, 5) == philox_uniform<double>(9, 5), "row_uniform = philox_uniform");

  // Gradient: (1 - u) s (g - sum s g), from probs only.
  const double g[4] = {1.0, -2.0, 0.5, 3.0};
  double dot = 0, sg = 0;
  for (int k = 0; k < K; ++k) dot += (p[k] - u / K) * g[k];
  const double shift = cat::grad_shift(dot, u);
  for (int k = 0; k < K; ++k) sg += std::exp(logits[k]) / softmax_sum * g[k];
  expect(std::fabs(shift - sg) < 1e-14, "grad_shift = sum_k softmax_k g_k");
  for (int k = 0; k < K; ++k) {
    const double s = std::exp(logits[k]) / softmax_sum;
    expect(std::fabs(cat::grad_logit(p[k], u / K, g[k], shift) - (1 - u) * s * (g[k] - sg)) < 1e-14,
           "grad_logit = (1 - u) s (g - sum s g)");
  }
  expect(cat::grad_shift(5.0, 1.0) == 0.0, "unimix = 1: no division by zero, zero shift");

  if (failures == 0) std::printf("test_categorical: all passed\n");
  return failures == 0 ? 0 : 1;
}
