// LayerNorm-GRU on the CPU: rows in parallel, one pass over a row for each of forward and backward.
// The weight/bias gradients are summed over fixed blocks of rows, then over the blocks in order, so the result does
// not depend on the number of threads.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>

#include <algorithm>
#include <vector>

#include "../ln_gru_check.h"
#include "../ops.h"
#include "dreamer_fast/gru.h"

namespace dreamer_fast::cpu {
namespace {

constexpr int64_t kRowsPerBlock = 32;  // rows whose weight/bias gradients one task sums

at::ScalarType stats_type(const at::Tensor& gates) { return gates.scalar_type(); }  // float or double on the CPU

// mean and rstd of one row of n values.
template <typename acc_t, typename scalar_t>
void row_stats(const scalar_t* x, int64_t n, acc_t eps, acc_t* mean, acc_t* rstd) {
  acc_t sum = 0;
  for (int64_t j = 0; j < n; ++j) sum += static_cast<acc_t>(x[j]);
  const acc_t m = sum / static_cast<acc_t>(n);
  acc_t ssd = 0;
  for (int64_t j = 0; j < n; ++j) {
    const acc_t d = static_cast<acc_t>(x[j]) - m;
    ssd += d * d;
  }
  *mean = m;
  *rstd = ln_rstd(ssd, n, eps);
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> ln_gru(const at::Tensor& gates, const at::Tensor& deter,
                                                      const at::Tensor& weight, const at::Tensor& bias, double eps) {
  const int64_t D = check_ln_gru_inputs("ln_gru", gates, deter, weight, bias, /*allow_half=*/false);
  const int64_t B = gates.size(0);
  at::Tensor out = at::empty_like(deter);
  at::Tensor mean = at::empty({B}, gates.options().dtype(stats_type(gates)));
  at::Tensor rstd = at::empty({B}, gates.options().dtype(stats_type(gates)));
  if (B == 0) return {out, mean, rstd};
  AT_DISPATCH_FLOATING_TYPES(gates.scalar_type(), "ln_gru_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* x = gates.const_data_ptr<scalar_t>();
    const scalar_t* h = deter.const_data_ptr<scalar_t>();
    const scalar_t* w = weight.const_data_ptr<scalar_t>();
    const scalar_t* b = bias.const_data_ptr<scalar_t>();
    scalar_t* o = out.mutable_data_ptr<scalar_t>();
    acc_t* mu = mean.mutable_data_ptr<acc_t>();
    acc_t* rs = rstd.mutable_data_ptr<acc_t>();
    const acc_t e = static_cast<acc_t>(eps);
    at::parallel_for(0, B, 1, [&](int64_t r0, int64_t r1) {
      for (int64_t row = r0; row < r1; ++row) {
        const scalar_t* xr = x + row * 3 * D;
        acc_t m, s;
        row_stats(xr, 3 * D, e, &m, &s);
        mu[row] = m;
        rs[row] = s;
        auto y = [&](int64_t j) { return (static_cast<acc_t>(xr[j]) - m) * s * w[j] + b[j]; };
        for (int64_t i = 0; i < D; ++i)
          o[row * D + i] = static_cast<scalar_t>(gru_cell<acc_t>(y(i), y(D + i), y(2 * D + i), h[row * D + i]));
      }
    });
  });
  return {out, mean, rstd};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> ln_gru_backward(
    const at::Tensor& grad, const at::Tensor& gates, const at::Tensor& deter, const at::Tensor& weight,
    const at::Tensor& bias, const at::Tensor& mean, const at::Tensor& rstd) {
  const char* op = "ln_gru_backward";
  const int64_t D = check_ln_gru_inputs(op, gates, deter, weight, bias, /*allow_half=*/false);
  check_same(op, "grad", grad, deter, "deter");
  check_shape(op, "grad", grad, deter.sizes());
  check_ln_gru_stats(op, "mean", mean, gates);
  check_ln_gru_stats(op, "rstd", rstd, gates);
  const int64_t B = gates.size(0), N = 3 * D;
  at::Tensor d_gates = at::empty_like(gates), d_deter = at::empty_like(deter);
  at::Tensor d_weight = at::empty_like(weight), d_bias = at::empty_like(bias);
  AT_DISPATCH_FLOATING_TYPES(gates.scalar_type(), "ln_gru_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* g = grad.const_data_ptr<scalar_t>();
    const scalar_t* x = gates.const_data_ptr<scalar_t>();
    const scalar_t* h = deter.const_data_ptr<scalar_t>();
    const scalar_t* w = weight.const_data_ptr<scalar_t>();
    const scalar_t* b = bias.const_data_ptr<scalar_t>();
    const acc_t* mu = mean.const_data_ptr<acc_t>();
    const acc_t* rs = rstd.const_data_ptr<acc_t>();
    scalar_t* dx = d_gates.mutable_data_ptr<scalar_t>();
    scalar_t* dh = d_deter.mutable_data_ptr<scalar_t>();
    const int64_t blocks = (B + kRowsPerBlock - 1) / kRowsPerBlock;
    // partial[k] = (Σ dy x̂, Σ dy) over the rows of block k, each [N]
    std::vector<acc_t> partial(static_cast<size_t>(blocks) * 2 * N, acc_t(0));
    at::parallel_for(0, blocks, 1, [&](int64_t k0, int64_t k1) {
      std::vector<acc_t> dy(N), xhat(N);
      for (int64_t k = k0; k < k1; ++k) {
        acc_t* pw = partial.data() + k * 2 * N;
        acc_t* pb = pw + N;
        for (int64_t row = k * kRowsPerBlock; row < std::min(B, (k + 1) * kRowsPerBlock); ++row) {
          const scalar_t* xr = x + row * N;
          const acc_t m = mu[row], s = rs[row];
          for (int64_t j = 0; j < N; ++j) xhat[j] = (static_cast<acc_t>(xr[j]) - m) * s;
          for (int64_t i = 0; i < D; ++i) {
            const int64_t r = i, c = D + i, u = 2 * D + i;
            acc_t d_h;
            gru_cell_backward<acc_t>(g[row * D + i], xhat[r] * w[r] + b[r], xhat[c] * w[c] + b[c],
                                     xhat[u] * w[u] + b[u], h[row * D + i], &dy[r], &dy[c], &dy[u], &d_h);
            dh[row * D + i] = static_cast<scalar_t>(d_h);
          }
          acc_t m1 = 0, m2 = 0;
          for (int64_t j = 0; j < N; ++j) {
            const acc_t d_xhat = dy[j] * static_cast<acc_t>(w[j]);
            m1 += d_xhat;
            m2 += d_xhat * xhat[j];
            pw[j] += dy[j] * xhat[j];
            pb[j] += dy[j];
          }
          m1 /= static_cast<acc_t>(N);
          m2 /= static_cast<acc_t>(N);
          for (int64_t j = 0; j < N; ++j)
            dx[row * N + j] = static_cast<scalar_t>(ln_input_grad<acc_t>(dy[j] * w[j], xhat[j], m1, m2, s));
        }
      }
    });
    scalar_t* dw = d_weight.mutable_data_ptr<scalar_t>();
    scalar_t* db = d_bias.mutable_data_ptr<scalar_t>();
    for (int64_t j = 0; j < N; ++j) {
      acc_t sw = 0, sb = 0;
      for (int64_t k = 0; k < blocks; ++k) {
        sw += partial[k * 2 * N + j];
        sb += partial[k * 2 * N + N + j];
      }
      dw[j] = static_cast<scalar_t>(sw);
      db[j] = static_cast<scalar_t>(sb);
    }
  });
  return {d_gates, d_deter, d_weight, d_bias};
}

}  // namespace dreamer_fast::cpu
