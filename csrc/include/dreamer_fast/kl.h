// KL divergence of categoricals with unimix, one row (one of the S variables of a position) at a time.
//
//   q = (1 - u) softmax(x) + u/K,  p = (1 - u) softmax(y) + u/K,  kl = Σ_k q_k (log q_k - log p_k)
//
// Gradient of kl, with σ = softmax(x), τ = softmax(y), a = log q - log p, r = τ / p (1 when u = 0):
//   dkl/dx_j = (1 - u) σ_j (a_j - Σ_k σ_k a_k)
//   dkl/dy_j = (1 - u) τ_j (h_j - Σ_k τ_k h_k) with h = -q / p,  i.e.  (1 - u) (τ_j Σ_k q_k r_k - q_j r_j)
// (the second form never divides by a p that underflowed to 0).
//
// Row functions visit the classes k = first, first + step, ... < K: the CPU passes (0, 1), a CUDA warp (lane, 32).
// `reduce.max` / `reduce.sum` combine the visitors' partial results (CPU: identity; CUDA: warp shuffles), so one
// source does the arithmetic of both. T is the accumulate type, S the storage type (e.g. Half with T = float).
#pragma once

#include <cstdint>
#include <limits>

#include "macros.h"

namespace dreamer_fast {

// A serial "reduction" for callers that visit every class themselves.
template <typename T>
struct SerialReduce {
  DF_INLINE T max(T v) const { return v; }
  DF_INLINE T sum(T v) const { return v; }
};

// One class of one distribution: the softmax probability, the unimix probability and its log.
template <typename T>
struct ClassProb {
  T soft, mixed, log_mixed;
};

template <typename T>
DF_INLINE ClassProb<T> class_prob(T logit, T lse, T u, T u_over_k) {
  const T log_soft = logit - lse;
  const T soft = df_exp(log_soft);
  if (u == T(0)) return {soft, soft, log_soft};  // log-softmax itself: no log(0) when soft underflows
  const T mixed = (T(1) - u) * soft + u_over_k;
  return {soft, mixed, df_log(mixed)};
}

// τ_k / p_k, the factor that turns h = -q/p into a product that cannot divide by zero.
template <typename T>
DF_INLINE T prior_ratio(const ClassProb<T>& p, T u) {
  return u == T(0) ? T(1) : p.soft / p.mixed;
}

// log Σ_k exp(x_k) over the row (two passes: max, then the shifted sum).
template <typename T, typename S, typename R>
DF_INLINE T row_logsumexp(const S* x, int64_t K, int64_t first, int64_t step, const R& reduce) {
  T m = -std::numeric_limits<T>::infinity();
  for (int64_t k = first; k < K; k += step) m = df_max(m, static_cast<T>(x[k]));
  m = reduce.max(m);
  T s = T(0);
  for (int64_t k = first; k < K; k += step) s += df_exp(static_cast<T>(x[k]) - m);
  return m + df_log(reduce.sum(s));
}

// Σ_k q_k (log q_k - log p_k) of one row; every visitor gets the full sum.
template <typename T, typename S, typename R>
DF_INLINE T row_kl(const S* x, const S* y, int64_t K, int64_t first, int64_t step, T u, const R& reduce) {
  const T lse_x = row_logsumexp<T>(x, K, first, step, reduce);
  const T lse_y = row_logsumexp<T>(y, K, first, step, reduce);
  const T u_over_k = u / static_cast<T>(K);
  T acc = T(0);
  for (int64_t k = first; k < K; k += step) {
    const ClassProb<T> q = class_prob(static_cast<T>(x[k]), lse_x, u, u_over_k);
    const ClassProb<T> p = class_prob(static_cast<T>(y[k]), lse_y, u, u_over_k);
    acc += q.mixed * (q.log_mixed - p.log_mixed);
  }
  return reduce.sum(acc);
}

// dx = w_post dkl/dx and dy = w_prior dkl/dy for one row (formulas at the top); softmaxes recomputed from the logits.
template <typename T, typename S, typename R>
DF_INLINE void row_kl_backward(const S* x, const S* y, int64_t K, int64_t first, int64_t step, T u, T w_post,
                               T w_prior, S* dx, S* dy, const R& reduce) {
  const T lse_x = row_logsumexp<T>(x, K, first, step, reduce);
  const T lse_y = row_logsumexp<T>(y, K, first, step, reduce);
  const T u_over_k = u / static_cast<T>(K);
  T sum_sa = T(0), sum_qr = T(0);  // Σ σ_k a_k and Σ q_k r_k
  for (int64_t k = first; k < K; k += step) {
    const ClassProb<T> q = class_prob(static_cast<T>(x[k]), lse_x, u, u_over_k);
    const ClassProb<T> p = class_prob(static_cast<T>(y[k]), lse_y, u, u_over_k);
    sum_sa += q.soft * (q.log_mixed - p.log_mixed);
    sum_qr += q.mixed * prior_ratio(p, u);
  }
  sum_sa = reduce.sum(sum_sa);
  sum_qr = reduce.sum(sum_qr);
  const T wx = w_post * (T(1) - u), wy = w_prior * (T(1) - u);
  for (int64_t k = first; k < K; k += step) {
    const ClassProb<T> q = class_prob(static_cast<T>(x[k]), lse_x, u, u_over_k);
    const ClassProb<T> p = class_prob(static_cast<T>(y[k]), lse_y, u, u_over_k);
    dx[k] = static_cast<S>(wx * q.soft * ((q.log_mixed - p.log_mixed) - sum_sa));
    dy[k] = static_cast<S>(wy * (p.soft * sum_qr - q.mixed * prior_ratio(p, u)));
  }
}

// Free nats, with torch.clamp(x, min=free)'s conventions: NaN stays NaN; the gradient passes where x >= free.
template <typename T>
DF_INLINE T free_nats_clamp(T x, T free) {
  return x < free ? free : x;
}

template <typename T>
DF_INLINE bool free_nats_passes_grad(T x, T free) {
  return x >= free;
}

// Weights of one position's KL gradient: its own grad_kl plus the loss's share. The loss is a mean over the N
// positions; its post term (weight mix) sees the prior as a constant and its prior term (weight 1 - mix) the post.
template <typename T>
DF_INLINE void kl_grad_weights(T grad_kl, T grad_loss, T mix, bool passes, int64_t n, T* w_post, T* w_prior) {
  const T share = passes ? grad_loss / static_cast<T>(n) : T(0);  // select, not multiply: a NaN grad stays out
  *w_post = grad_kl + share * mix;
  *w_prior = grad_kl + share * (T(1) - mix);
}

}  // namespace dreamer_fast
