// csrc/include/dreamer_fast/lambda_return.h: one step by hand, and its gradient against central differences.
#include "dreamer_fast/lambda_return.h"

#include "check.h"

using dreamer_fast::lambda_step;
using dreamer_fast::lambda_step_backward;

int main() {
  // R = r + d ((1 - λ) v' + λ R')
  EXPECT_NEAR(lambda_step(1.0, 0.5, 20.0, 92.0, 0.8), 1.0 + 0.5 * (0.2 * 20.0 + 0.8 * 92.0), 1e-12);
  EXPECT_NEAR(lambda_step(1.0, 0.5, 20.0, 92.0, 0.0), 11.0, 1e-12);  // λ = 0: one-step TD target
  EXPECT_NEAR(lambda_step(1.0, 0.5, 20.0, 92.0, 1.0), 47.0, 1e-12);  // λ = 1: Monte Carlo
  EXPECT_NEAR(lambda_step(2.0f, 0.9f, 3.0f, 4.0f, 0.5f), 2.0f + 0.9f * 3.5f, 1e-6);

  const double r = 0.3, d = 0.97, v = -1.2, R = 2.5, lam = 0.7, G = 1.7, h = 1e-6;
  double dr, dd, dv;
  lambda_step_backward(G, d, v, R, lam, &dr, &dd, &dv);
  auto f = [&](double r_, double d_, double v_) { return G * lambda_step(r_, d_, v_, R, lam); };
  EXPECT_NEAR(dr, (f(r + h, d, v) - f(r - h, d, v)) / (2 * h), 1e-7);
  EXPECT_NEAR(dd, (f(r, d + h, v) - f(r, d - h, v)) / (2 * h), 1e-7);
  EXPECT_NEAR(dv, (f(r, d, v + h) - f(r, d, v - h)) / (2 * h), 1e-7);
  return report("test_lambda_return_math");
}
