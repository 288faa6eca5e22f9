// csrc/include/dreamer_fast/ln_gru.h: the cell by hand, its gradient and a whole LayerNorm-GRU row against central
// differences (only the header and the standard library).
#include "dreamer_fast/ln_gru.h"

#include <cmath>
#include <vector>

#include "check.h"

using dreamer_fast::FastMath;
using dreamer_fast::tanh_poly;
using dreamer_fast::gru_cell;
using dreamer_fast::gru_cell_backward;
using dreamer_fast::ln_input_grad;
using dreamer_fast::ln_rstd;

namespace {

constexpr int D = 3;
constexpr double kEps = 1e-3;

// L = Σ_i g_i h'_i for one row: x [3D], h [D], w, b [3D].
double row_loss(const std::vector<double>& x, const std::vector<double>& h, const std::vector<double>& w,
                const std::vector<double>& b, const std::vector<double>& g) {
  double mean = 0, ssd = 0;
  for (double v : x) mean += v;
  mean /= 3 * D;
  for (double v : x) ssd += (v - mean) * (v - mean);
  const double rstd = ln_rstd(ssd, 3 * D, kEps);
  std::vector<double> y(3 * D);
  for (int j = 0; j < 3 * D; ++j) y[j] = (x[j] - mean) * rstd * w[j] + b[j];
  double loss = 0;
  for (int i = 0; i < D; ++i) loss += g[i] * gru_cell(y[i], y[D + i], y[2 * D + i], h[i]);
  return loss;
}

}  // namespace

int main() {
  // The cell by hand: r = σ(0.5), c = tanh(r·(-1.2)), u = σ(2 - 1), h' = u c + (1 - u) 0.3.
  {
    const double r = 1 / (1 + std::exp(-0.5)), c = std::tanh(r * -1.2), u = 1 / (1 + std::exp(-1.0));
    EXPECT_NEAR(gru_cell(0.5, -1.2, 2.0, 0.3), u * c + (1 - u) * 0.3, 1e-15);
    EXPECT_NEAR(gru_cell(0.5f, -1.2f, 2.0f, 0.3f), u * c + (1 - u) * 0.3, 1e-6);
    // Saturated gates stay finite: u -> 0 keeps h, u -> 1 takes the candidate.
    EXPECT_NEAR(gru_cell(0.0, 1.0, -1e4, 0.7), 0.7, 1e-15);
    EXPECT_NEAR(gru_cell(1e4, 0.0, 1e4, 0.7), 0.0, 1e-15);
  }
  // The cell's gradient against central differences.
  {
    const double yr = 0.4, yc = -0.8, yu = 0.9, h = -0.35, g = 1.3, e = 1e-6;
    double dr, dc, du, dh;
    gru_cell_backward(g, yr, yc, yu, h, &dr, &dc, &du, &dh);
    auto f = [&](double a, double b_, double c, double d) { return g * gru_cell(a, b_, c, d); };
    EXPECT_NEAR(dr, (f(yr + e, yc, yu, h) - f(yr - e, yc, yu, h)) / (2 * e), 1e-8);
    EXPECT_NEAR(dc, (f(yr, yc + e, yu, h) - f(yr, yc - e, yu, h)) / (2 * e), 1e-8);
    EXPECT_NEAR(du, (f(yr, yc, yu + e, h) - f(yr, yc, yu - e, h)) / (2 * e), 1e-8);
    EXPECT_NEAR(dh, (f(yr, yc, yu, h + e) - f(yr, yc, yu, h - e)) / (2 * e), 1e-8);
  }
  // A whole row: LayerNorm + affine + cell, every input gradient composed from the header's pieces.
  {
    std::vector<double> x = {0.3, -1.1, 2.0, 0.7, -0.4, 1.5, -2.2, 0.05, 0.9};
    std::vector<double> h = {0.2, -0.6, 0.45}, g = {1.0, -0.7, 0.4};
    std::vector<double> w = {1.1, 0.9, 1.3, 0.7, 1.0, 1.2, 0.8, 1.05, 0.95};
    std::vector<double> b = {0.1, -0.2, 0.0, 0.3, -0.1, 0.05, 0.2, -0.3, 0.15};
    double mean = 0, ssd = 0;
    for (double v : x) mean += v;
    mean /= 3 * D;
    for (double v : x) ssd += (v - mean) * (v - mean);
    const double rstd = ln_rstd(ssd, 3 * D, kEps);
    std::vector<double> xhat(3 * D), y(3 * D), dy(3 * D), dh(D);
    for (int j = 0; j < 3 * D; ++j) {
      xhat[j] = (x[j] - mean) * rstd;
      y[j] = xhat[j] * w[j] + b[j];
    }
    for (int i = 0; i < D; ++i)
      gru_cell_backward(g[i], y[i], y[D + i], y[2 * D + i], h[i], &dy[i], &dy[D + i], &dy[2 * D + i], &dh[i]);
    double m1 = 0, m2 = 0;
    for (int j = 0; j < 3 * D; ++j) {
      m1 += dy[j] * w[j];
      m2 += dy[j] * w[j] * xhat[j];
    }
    m1 /= 3 * D;
    m2 /= 3 * D;
    const double e = 1e-6;
    for (int j = 0; j < 3 * D; ++j) {
      auto xp = x, xm = x, wp = w, wm = w, bp = b, bm = b;
      xp[j] += e, xm[j] -= e, wp[j] += e, wm[j] -= e, bp[j] += e, bm[j] -= e;
      const double dx = ln_input_grad(dy[j] * w[j], xhat[j], m1, m2, rstd);
      EXPECT_NEAR(dx, (row_loss(xp, h, w, b, g) - row_loss(xm, h, w, b, g)) / (2 * e), 1e-7);
      EXPECT_NEAR(dy[j] * xhat[j], (row_loss(x, h, wp, b, g) - row_loss(x, h, wm, b, g)) / (2 * e), 1e-7);
      EXPECT_NEAR(dy[j], (row_loss(x, h, w, bp, g) - row_loss(x, h, w, bm, g)) / (2 * e), 1e-7);
    }
    for (int i = 0; i < D; ++i) {
      auto hp = h, hm = h;
      hp[i] += e, hm[i] -= e;
      EXPECT_NEAR(dh[i], (row_loss(x, hp, w, b, g) - row_loss(x, hm, w, b, g)) / (2 * e), 1e-7);
    }
  }
  // The straight-line float tanh (exp_poly is tested in test_math.cpp) and the cell with FastMath.
  {
    double worst_tanh = 0;
    for (float x = -20.0f; x < 20.0f; x += 0.000377f)
      worst_tanh = std::fmax(worst_tanh, std::fabs(tanh_poly(x) - std::tanh(static_cast<double>(x))));
    EXPECT(worst_tanh < 3e-7);
    EXPECT_NEAR(tanh_poly(1e-5f), 1e-5, 1e-12);  // no cancellation near 0
    EXPECT(std::isnan(tanh_poly(NAN)));
    EXPECT(tanh_poly(INFINITY) == 1.0f && tanh_poly(-INFINITY) == -1.0f && tanh_poly(100.0f) == 1.0f);
    auto fast_cell = [](float a, float b, float c, float d) { return gru_cell<float, FastMath>(a, b, c, d); };
    EXPECT_NEAR(fast_cell(0.5f, -1.2f, 2.0f, 0.3f), gru_cell(0.5, -1.2, 2.0, 0.3), 3e-7);
    EXPECT(std::isnan(fast_cell(NAN, 0.1f, 0.2f, 0.3f)));
  }
  return report("test_ln_gru_math");
}
