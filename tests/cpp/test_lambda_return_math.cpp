// csrc/include/dreamer_fast/lambda_return.h: one step by hand, its gradient against central differences, and the
// reference's NaN where a product is inf * 0.
#include <cmath>
#include <limits>

#include "dreamer_fast/lambda_return.h"

#include "check.h"

using dreamer_fast::lambda_bootstrap_grad;
using dreamer_fast::lambda_coef;
using dreamer_fast::lambda_step;
using dreamer_fast::lambda_step_backward;

int main() {
  // R = r + d ((1 - λ) v' + λ R')
  EXPECT_NEAR(lambda_step(1.0, 0.5, 20.0, 92.0, lambda_coef<double>(0.8)), 1.0 + 0.5 * (0.2 * 20.0 + 0.8 * 92.0),
              1e-12);
  EXPECT_NEAR(lambda_step(1.0, 0.5, 20.0, 92.0, lambda_coef<double>(0.0)), 11.0, 1e-12);  // λ = 0: one-step TD target
  EXPECT_NEAR(lambda_step(1.0, 0.5, 20.0, 92.0, lambda_coef<double>(1.0)), 47.0, 1e-12);  // λ = 1: Monte Carlo
  EXPECT_NEAR(lambda_step(2.0f, 0.9f, 3.0f, 4.0f, lambda_coef<float>(0.5)), 2.0f + 0.9f * 3.5f, 1e-6);
  // d = inf, v' = 0: inf * 0 in the reference's d v' (1 - λ)
  const double inf = std::numeric_limits<double>::infinity();
  EXPECT(std::isnan(lambda_step(1.0, inf, 0.0, 2.0, lambda_coef<double>(0.5))));
  // λ = 0, d = inf: the bootstrap's gradient through R[T] is G (d λ) = G (inf * 0)
  EXPECT(std::isnan(lambda_bootstrap_grad(1.0, inf, lambda_coef<double>(0.0))));

  const double r = 0.3, d = 0.97, v = -1.2, R = 2.5, lam = 0.7, G = 1.7, h = 1e-6;
  double dr, dd, dv;
  lambda_step_backward(G, d, v, R, lambda_coef<double>(lam), &dr, &dd, &dv);
  auto f = [&](double r_, double d_, double v_) { return G * lambda_step(r_, d_, v_, R, lambda_coef<double>(lam)); };
  EXPECT_NEAR(dr, (f(r + h, d, v) - f(r - h, d, v)) / (2 * h), 1e-7);
  EXPECT_NEAR(dd, (f(r, d + h, v) - f(r, d - h, v)) / (2 * h), 1e-7);
  EXPECT_NEAR(dv, (f(r, d, v + h) - f(r, d, v - h)) / (2 * h), 1e-7);
  EXPECT_NEAR(lambda_bootstrap_grad(G, d, lambda_coef<double>(lam)), G * d, 1e-12);
  return report("test_lambda_return_math");
}
