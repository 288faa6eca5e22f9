// Unit tests of csrc/include/dreamer_fast/kl_balance.h: values against a naive formula, gradients against finite differences.
//   g++ -std=c++20 -O2 -Icsrc/include tests/cpp/test_kl_balance_math.cpp -o /tmp/k && /tmp/k
#include <cmath>
#include <cstdio>
#include <vector>

#include "dreamer_fast/kl_balance.h"

using dreamer_fast::SerialReduce;

static int failures = 0;
static const double kNaN = std::nan("");

static void expect_near(const char* what, double got, double want, double tol) {
  if (!(std::fabs(got - want) <= tol * (1.0 + std::fabs(want)))) {
    std::printf("FAIL %s: got %.17g, want %.17g\n", what, got, want);
    ++failures;
  }
}

// The definition, written out: mixed probabilities from plain softmaxes, then Σ q log(q / p).
static double naive_kl(const std::vector<double>& x, const std::vector<double>& y, double u) {
  const size_t K = x.size();
  double zx = 0, zy = 0;
  for (size_t k = 0; k < K; ++k) zx += std::exp(x[k]), zy += std::exp(y[k]);
  double kl = 0;
  for (size_t k = 0; k < K; ++k) {
    const double q = (1 - u) * std::exp(x[k]) / zx + u / K, p = (1 - u) * std::exp(y[k]) / zy + u / K;
    kl += q * std::log(q / p);
  }
  return kl;
}

static double kl(const std::vector<double>& x, const std::vector<double>& y, double u) {
  return dreamer_fast::row_kl<double, 1>(x.data(), y.data(), x.size(), 0, u, SerialReduce<double>{});
}

static void test_values() {
  const std::vector<double> x = {0.3, -1.2, 2.0, 0.0}, y = {1.0, 0.5, -0.7, 0.2};
  for (double u : {0.0, 0.01, 0.5, 1.0}) {
    char what[64];
    std::snprintf(what, sizeof what, "row_kl u=%g", u);
    expect_near(what, kl(x, y, u), naive_kl(x, y, u), 1e-13);
  }
  // Two classes, hand computed: q = (1/2, 1/2), p = (e/(1+e), 1/(1+e)) -> kl = log(1+e) - 1/2 - log 2.
  const double e = std::exp(1.0);
  expect_near("hand two-class", kl({0, 0}, {1, 0}, 0), std::log(1 + e) - 0.5 - std::log(2.0), 1e-15);
  expect_near("identical rows", kl(x, x, 0), 0, 1e-15);
  expect_near("K = 1", kl({3.0}, {-5.0}, 0), 0, 0);
  expect_near("u = 1 is uniform vs uniform", kl(x, y, 1.0), 0, 1e-15);
  // Huge logits: log-softmax keeps it finite where naive exp would overflow.
  expect_near("shift invariance", kl({1000.3, 998.8, 1002.0, 1000.0}, y, 0), naive_kl(x, y, 0), 1e-12);
  // Float storage with double accumulation agrees with double storage.
  const std::vector<float> xf(x.begin(), x.end()), yf(y.begin(), y.end());
  const double kf = dreamer_fast::row_kl<double, 1>(xf.data(), yf.data(), 4, 0, 0.0, SerialReduce<double>{});
  expect_near("float storage", kf, naive_kl({0.3f, -1.2f, 2.0f, 0.0f}, {1.0f, 0.5f, -0.7f, 0.2f}, 0), 1e-13);
}

// The float row math (exp and log polynomials of math.h, tested in test_math.cpp) against the double one, with and
// without the scratch cache.
static void test_float_row_math() {
  const std::vector<float> x = {0.3f, -1.2f, 2.0f, 0.0f, -30.0f}, y = {1.0f, 0.5f, -0.7f, 0.2f, 4.0f};
  std::vector<float> ex(5), ey(5);
  const dreamer_fast::RowCache<float> cache{ex.data(), ey.data()};
  for (float u : {0.0f, 0.05f}) {
    const double want = naive_kl({x.begin(), x.end()}, {y.begin(), y.end()}, u);
    expect_near("row_kl<float>", dreamer_fast::row_kl<float, 1>(x.data(), y.data(), 5, 0, u, SerialReduce<float>{}),
                want, 1e-6);
    expect_near("row_kl<float> cached",
                dreamer_fast::row_kl<float, 1>(x.data(), y.data(), 5, 0, u, SerialReduce<float>{}, cache), want, 1e-6);
  }
}

// Float rows long enough for the vector loops (and their remainders) against the same math in double (libm).
static void test_float_rows_against_double() {
  const int K = 37;
  std::vector<float> x(K), y(K), dx(K), dy(K), ex(K), ey(K);
  std::vector<double> xd(K), yd(K), dxd(K), dyd(K);
  for (int k = 0; k < K; ++k) {
    x[k] = 3.0f * std::sin(1.7f * k), y[k] = 4.0f * std::cos(0.9f * k + 0.3f);
    xd[k] = x[k], yd[k] = y[k];
  }
  const dreamer_fast::RowCache<float> cache{ex.data(), ey.data()};
  for (float u : {0.0f, 0.05f}) {
    const double want = dreamer_fast::row_kl<double, 1>(xd.data(), yd.data(), K, 0, u, SerialReduce<double>{});
    expect_near("row_kl<float> K=37", dreamer_fast::row_kl<float, 1>(x.data(), y.data(), K, 0, u, SerialReduce<float>{}),
                want, 1e-6);
    dreamer_fast::row_kl_backward<float, 1>(x.data(), y.data(), K, 0, u, 0.7f, -1.3f, dx.data(), dy.data(),
                                            SerialReduce<float>{}, cache);
    dreamer_fast::row_kl_backward<double, 1>(xd.data(), yd.data(), K, 0, u, 0.7, -1.3, dxd.data(), dyd.data(),
                                             SerialReduce<double>{});
    for (int k = 0; k < K; ++k) {
      expect_near("row_kl_backward<float> d post", dx[k], dxd[k], 1e-6);
      expect_near("row_kl_backward<float> d prior", dy[k], dyd[k], 1e-6);
    }
  }
}

static void test_gradients() {
  const std::vector<double> x0 = {0.3, -1.2, 2.0, 0.0, 0.9}, y0 = {1.0, 0.5, -0.7, 0.2, -2.5};
  const size_t K = x0.size();
  const double h = 1e-6, w_post = 0.7, w_prior = -1.3;
  for (double u : {0.0, 0.1}) {
    std::vector<double> dx(K), dy(K);
    dreamer_fast::row_kl_backward<double, 1>(x0.data(), y0.data(), K, 0, u, w_post, w_prior, dx.data(), dy.data(),
                                          SerialReduce<double>{});
    for (size_t j = 0; j < K; ++j) {
      auto xp = x0, xm = x0, yp = y0, ym = y0;
      xp[j] += h, xm[j] -= h, yp[j] += h, ym[j] -= h;
      char what[64];
      std::snprintf(what, sizeof what, "d post[%zu] u=%g", j, u);
      expect_near(what, dx[j], w_post * (kl(xp, y0, u) - kl(xm, y0, u)) / (2 * h), 1e-7);
      std::snprintf(what, sizeof what, "d prior[%zu] u=%g", j, u);
      expect_near(what, dy[j], w_prior * (kl(x0, yp, u) - kl(x0, ym, u)) / (2 * h), 1e-7);
    }
  }
  // The CPU's scratch cache (exps kept from the first pass) gives the same gradients.
  for (double u : {0.0, 0.1}) {
    std::vector<double> dx(K), dy(K), cx(K), cy(K), ex(K), ey(K);
    dreamer_fast::row_kl_backward<double, 1>(x0.data(), y0.data(), K, 0, u, w_post, w_prior, dx.data(), dy.data(),
                                             SerialReduce<double>{});
    const dreamer_fast::RowCache<double> cache{ex.data(), ey.data()};
    dreamer_fast::row_kl_backward<double, 1>(x0.data(), y0.data(), K, 0, u, w_post, w_prior, cx.data(), cy.data(),
                                             SerialReduce<double>{}, cache);
    for (size_t j = 0; j < K; ++j) {
      expect_near("cached d post", cx[j], dx[j], 1e-15);
      expect_near("cached d prior", cy[j], dy[j], 1e-15);
    }
  }
  // A prior class whose probability underflows to 0 (u = 0): the gradient stays finite (= w (τ - σ)).
  const std::vector<double> x = {0.0, 0.0}, y = {0.0, -1000.0};
  std::vector<double> dx(2), dy(2);
  dreamer_fast::row_kl_backward<double, 1>(x.data(), y.data(), 2, 0, 0.0, 1.0, 1.0, dx.data(), dy.data(),
                                        SerialReduce<double>{});
  expect_near("underflowed prior d prior[0]", dy[0], 0.5, 1e-15);
  expect_near("underflowed prior d prior[1]", dy[1], -0.5, 1e-15);
}

static void test_free_nats() {
  using dreamer_fast::free_nats_clamp, dreamer_fast::free_nats_passes_grad;
  expect_near("clamp below", free_nats_clamp(0.5, 1.0), 1.0, 0);
  expect_near("clamp above", free_nats_clamp(1.5, 1.0), 1.5, 0);
  if (!std::isnan(free_nats_clamp(kNaN, 1.0))) std::printf("FAIL clamp(NaN) is not NaN\n"), ++failures;
  if (!free_nats_passes_grad(1.0, 1.0) || free_nats_passes_grad(0.9, 1.0) || free_nats_passes_grad(kNaN, 0.0))
    std::printf("FAIL free_nats_passes_grad: want x >= free (torch.clamp's mask)\n"), ++failures;
  double wp, wq;
  dreamer_fast::kl_grad_weights(0.25, 2.0, 0.2, true, 4, &wp, &wq);
  expect_near("w_post", wp, 0.25 + 2.0 * 0.2 / 4, 1e-15);
  expect_near("w_prior", wq, 0.25 + 2.0 * 0.8 / 4, 1e-15);
  dreamer_fast::kl_grad_weights(0.25, kNaN, 0.2, false, 4, &wp, &wq);
  expect_near("w_post clamped", wp, 0.25, 0);
  expect_near("w_prior clamped", wq, 0.25, 0);
}

int main() {
  test_values();
  test_gradients();
  test_float_row_math();
  test_float_rows_against_double();
  test_free_nats();
  if (failures) std::printf("%d failure(s)\n", failures);
  else std::printf("all kl_balance.h tests passed\n");
  return failures != 0;
}
