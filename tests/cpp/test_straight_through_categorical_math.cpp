// Standalone test of csrc/include/dreamer_fast/straight_through_categorical.h: the per-row math of the straight-through
// categorical kernels.
//   g++ -std=c++20 -O2 -Icsrc/include tests/cpp/test_straight_through_categorical_math.cpp -o /tmp/c && /tmp/c
#include <cmath>
#include <cstdio>
#include <limits>
#include <vector>

#include "dreamer_fast/straight_through_categorical.h"

static int failures = 0;

static void expect(bool ok, const char* what) {
  if (!ok) {
    std::printf("FAIL: %s\n", what);
    ++failures;
  }
}

int main() {
  using namespace dreamer_fast;
  namespace cat = categorical;
  const double inf = std::numeric_limits<double>::infinity(), nan = std::numeric_limits<double>::quiet_NaN();

  // shifted_exp: math.h's exp (tested in test_math.cpp) of logit - max
  expect(cat::shifted_exp(2.0, 2.0) == 1.0 && cat::shifted_exp(1.0f, 3.0f) == exp_poly(-2.0f), "shifted_exp");

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

  if (failures == 0) std::printf("test_straight_through_categorical_math: all passed\n");
  return failures == 0 ? 0 : 1;
}
