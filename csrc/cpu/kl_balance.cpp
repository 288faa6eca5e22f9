// Balanced KL loss on the CPU: parallel over positions; each position's S rows run the shared row math of
// dreamer_fast/kl_balance.h with unit stride (inner loops over K).
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/util/accumulate.h>

#include <algorithm>
#include <vector>

#include "../checks/kl_balance.h"
#include "../ops.h"

// Vectorising the row math takes two GCC-specific steps, both confined to this file's own functions (they come after
// the library headers): without -ftrapping-math (GCC's default; nothing here uses FP exceptions) the selects in the
// exp/log polynomials vectorise, and the position loops are compiled for AVX-512, AVX2+FMA and the x86-64 baseline,
// the CPU picking one at load time. (Measured on [50, 16, 32, 32]: AVX2+FMA 2x the baseline, AVX-512 another 1.25x.)
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#pragma GCC optimize("no-trapping-math")
#endif
#include "clones.h"
#include "dreamer_fast/kl_balance.h"

namespace dreamer_fast::cpu {
namespace {

// Positions per task: about 32k logits of each input, enough work to amortise a task.
int64_t grain(int64_t S, int64_t K) { return std::max<int64_t>(1, 32768 / std::max<int64_t>(1, S * K)); }

// kl of positions [n0, n1): sums of their S rows.
template <typename scalar_t>
DF_CPU_KERNEL void forward_range(const scalar_t* x, const scalar_t* y, scalar_t* out, int64_t n0, int64_t n1,
                                 int64_t S, int64_t K, at::opmath_type<scalar_t> u) {
  using acc_t = at::opmath_type<scalar_t>;
  std::vector<acc_t> scratch(2 * K);
  const RowCache<acc_t> cache{scratch.data(), scratch.data() + K};
  for (int64_t n = n0; n < n1; ++n) {
    acc_t sum = acc_t(0);
    for (int64_t r = n * S; r < (n + 1) * S; ++r)
      sum += row_kl<acc_t, 1>(x + r * K, y + r * K, K, 0, u, SerialReduce<acc_t>{}, cache);
    out[n] = static_cast<scalar_t>(sum);
  }
}

// Gradients of the rows of positions [n0, n1), position n weighted by w[2n] (post) and w[2n + 1] (prior).
template <typename scalar_t>
DF_CPU_KERNEL void backward_range(const scalar_t* x, const scalar_t* y, const at::opmath_type<scalar_t>* w,
                                  scalar_t* dx, scalar_t* dy, int64_t n0, int64_t n1, int64_t S, int64_t K,
                                  at::opmath_type<scalar_t> u) {
  using acc_t = at::opmath_type<scalar_t>;
  std::vector<acc_t> scratch(2 * K);
  const RowCache<acc_t> cache{scratch.data(), scratch.data() + K};
  for (int64_t n = n0; n < n1; ++n)
    for (int64_t r = n * S; r < (n + 1) * S; ++r)
      row_kl_backward<acc_t, 1>(x + r * K, y + r * K, K, 0, u, w[2 * n], w[2 * n + 1], dx + r * K, dy + r * K,
                                SerialReduce<acc_t>{}, cache);
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> kl_balance(const at::Tensor& post_logits, const at::Tensor& prior_logits,
                                              double balance, double free, bool free_avg, double unimix) {
  check_kl_inputs("kl_balance", post_logits, prior_logits, balance, free, unimix, /*allow_half=*/false);
  const auto lead = post_logits.sizes().slice(0, post_logits.dim() - 2);
  const int64_t S = post_logits.size(-2), K = post_logits.size(-1), N = c10::multiply_integers(lead);
  at::Tensor kl = at::empty(lead, post_logits.options());
  at::Tensor loss = at::empty({}, post_logits.options());
  AT_DISPATCH_FLOATING_TYPES(post_logits.scalar_type(), "kl_balance_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* x = post_logits.const_data_ptr<scalar_t>();
    const scalar_t* y = prior_logits.const_data_ptr<scalar_t>();
    scalar_t* out = kl.mutable_data_ptr<scalar_t>();
    const acc_t u = static_cast<acc_t>(unimix);
    at::parallel_for(0, N, grain(S, K),
                     [&](int64_t n0, int64_t n1) {
                       DF_CPU_DISPATCH(forward_range<scalar_t>(x, y, out, n0, n1, S, K, u));
                     });
    // Both loss terms have the value clamp(kl); they differ only in where their gradients go.
    const acc_t f = static_cast<acc_t>(free);
    acc_t sum = acc_t(0), sum_clamped = acc_t(0);
    for (int64_t n = 0; n < N; ++n) {
      sum += static_cast<acc_t>(out[n]);
      sum_clamped += free_nats_clamp(static_cast<acc_t>(out[n]), f);
    }
    const acc_t value = free_avg ? free_nats_clamp(sum / N, f) : sum_clamped / N;  // N = 0: NaN, like mean()
    *loss.mutable_data_ptr<scalar_t>() = static_cast<scalar_t>(balanced_loss(value, balance));
  });
  return {loss, kl};
}

std::tuple<at::Tensor, at::Tensor> kl_balance_backward(const at::Tensor& grad_loss, const at::Tensor& grad_kl,
                                                       const at::Tensor& post_logits, const at::Tensor& prior_logits,
                                                       const at::Tensor& kl, double balance, double free,
                                                       bool free_avg, double unimix) {
  check_kl_backward_inputs("kl_balance_backward", grad_loss, grad_kl, post_logits, prior_logits, kl, balance, free,
                           unimix, /*allow_half=*/false);
  const int64_t S = post_logits.size(-2), K = post_logits.size(-1), N = kl.numel();
  at::Tensor d_post = at::empty_like(post_logits), d_prior = at::empty_like(prior_logits);
  AT_DISPATCH_FLOATING_TYPES(post_logits.scalar_type(), "kl_balance_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* x = post_logits.const_data_ptr<scalar_t>();
    const scalar_t* y = prior_logits.const_data_ptr<scalar_t>();
    const scalar_t* gk = grad_kl.const_data_ptr<scalar_t>();
    const scalar_t* k = kl.const_data_ptr<scalar_t>();
    scalar_t* dx = d_post.mutable_data_ptr<scalar_t>();
    scalar_t* dy = d_prior.mutable_data_ptr<scalar_t>();
    const acc_t gl = static_cast<acc_t>(*grad_loss.const_data_ptr<scalar_t>());
    const acc_t u = static_cast<acc_t>(unimix), f = static_cast<acc_t>(free), mix = static_cast<acc_t>(1 - balance);
    std::vector<acc_t> w(2 * N);  // w_post, w_prior of each position
    // free_avg: one mask for all positions, from the mean KL summed in the forward's order.
    bool mean_passes = false;
    if (free_avg) {
      acc_t sum = acc_t(0);
      for (int64_t n = 0; n < N; ++n) sum += static_cast<acc_t>(k[n]);
      mean_passes = free_nats_passes_grad(sum / N, f);
    }
    at::parallel_for(0, N, grain(S, K), [&](int64_t n0, int64_t n1) {
      for (int64_t n = n0; n < n1; ++n) {
        const bool passes = free_avg ? mean_passes : free_nats_passes_grad(static_cast<acc_t>(k[n]), f);
        kl_grad_weights(static_cast<acc_t>(gk[n]), gl, mix, passes, N, &w[2 * n], &w[2 * n + 1]);
      }
      DF_CPU_DISPATCH(backward_range<scalar_t>(x, y, w.data(), dx, dy, n0, n1, S, K, u));
    });
  });
  return {d_post, d_prior};
}

}  // namespace dreamer_fast::cpu
