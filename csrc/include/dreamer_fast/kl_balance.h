// KL divergence of categoricals with unimix, one row (one of the S variables of a position) at a time.
//
//   q = (1 - u) σ + u/K,  p = (1 - u) τ + u/K  with σ = softmax(x), τ = softmax(y);  kl = Σ_k q_k log(q_k / p_k)
//
// Gradient of kl, with a = log(q / p) and r = τ / p:
//   dkl/dx_j = (1 - u) σ_j (a_j - Σ_k σ_k a_k)
//   dkl/dy_j = (1 - u) τ_j (h_j - Σ_k τ_k h_k) with h = -q / p,  i.e.  (1 - u) (τ_j Σ_k q_k r_k - q_j r_j)
// (the second form never divides by a p that underflowed to 0). With u = 0 both simplify, with d = x - y:
//   kl = Σ σ d - (lse_x - lse_y),  dkl/dx_j = σ_j (d_j - Σ σ d),  dkl/dy_j = τ_j - σ_j
// so one pass of sums (Σ e^{x-mx}, Σ e^{y-my}, Σ e^{x-mx} d) gives kl, and the gradient one more pass.
//
// Row functions visit the classes k = first, first + kStep, ... < K: the CPU passes (0, 1), a CUDA warp (lane, 32).
// `reduce.max` / `reduce.sum` combine the visitors' partial results (CPU: identity; CUDA: warp shuffles), so one
// source does the arithmetic of both. T is the accumulate type, S the storage type (e.g. Half with T = float).
// The loops are written for the CPU's vectoriser: `omp simd` reductions, the u = 0 test hoisted out of them, exp and
// log from math.h, e^{x-mx}, e^{y-my} kept in a scratch row by a caller that has one (RowCache), and every
// function force-inlined into the caller's (per-ISA) loops.
#pragma once

#include <cstdint>
#include <limits>

#include "macros.h"
#include "math.h"

namespace dreamer_fast {

#if defined(_OPENMP) && !defined(__CUDACC__)
#define DF_PRAGMA(x) _Pragma(#x)
#define DF_SIMD DF_PRAGMA(omp simd)
#define DF_SIMD_REDUCE(op, ...) DF_PRAGMA(omp simd reduction(op : __VA_ARGS__))
#else
#define DF_SIMD
#define DF_SIMD_REDUCE(op, ...)
#endif

// A serial "reduction" for callers that visit every class themselves.
template <typename T>
struct SerialReduce {
  DF_FORCE_INLINE T max(T v) const { return v; }
  DF_FORCE_INLINE T sum(T v) const { return v; }
};

// Where the second pass over a row gets e^{x-mx} and e^{y-my}: recomputed (CUDA lanes: K is unbounded, registers
// are not) or kept from the first pass in K-long scratch rows (CPU: a load is cheaper than an exp).
struct NoCache {
  static constexpr bool kKeeps = false;
  template <typename T>
  DF_FORCE_INLINE void put(int64_t, T, T) const {}
};

template <typename T>
struct RowCache {
  static constexpr bool kKeeps = true;
  T* ex;
  T* ey;
  DF_FORCE_INLINE void put(int64_t k, T vx, T vy) const { ex[k] = vx, ey[k] = vy; }
};

// Per-row sums: maxima, Σ e^{x-mx}, Σ e^{y-my} and (u = 0) Σ e^{x-mx} ((x - mx) - (y - my)). The maxima are kept
// apart from the logs of the sums, so that large logits lose no precision.
template <typename T>
struct RowStats {
  T mx, my, sx, sy, sd;
};

template <bool kUnimix, typename T, int kStep, typename S, typename R, typename C>
DF_FORCE_INLINE RowStats<T> row_stats(const S* x, const S* y, int64_t K, int64_t first, const R& reduce, C cache) {
  T mx = -std::numeric_limits<T>::infinity(), my = mx;
  DF_SIMD_REDUCE(max, mx, my)
  for (int64_t k = first; k < K; k += kStep) {
    const T vx = static_cast<T>(x[k]), vy = static_cast<T>(y[k]);
    mx = vx > mx ? vx : mx;  // a NaN is skipped here but poisons the sums below
    my = vy > my ? vy : my;
  }
  mx = reduce.max(mx);
  my = reduce.max(my);
  T sx = T(0), sy = T(0), sd = T(0);
  DF_SIMD_REDUCE(+, sx, sy, sd)
  for (int64_t k = first; k < K; k += kStep) {
    const T ax = static_cast<T>(x[k]) - mx, ay = static_cast<T>(y[k]) - my;
    const T ex = vexp(ax), ey = vexp(ay);
    cache.put(k, ex, ey);
    sx += ex;
    sy += ey;
    if (!kUnimix) sd += ex * (ax - ay);
  }
  return {mx, my, reduce.sum(sx), reduce.sum(sy), kUnimix ? T(0) : reduce.sum(sd)};
}

// σ_k and τ_k (the softmax probabilities) in the second pass over a row.
template <typename T, typename S, typename C>
DF_FORCE_INLINE void row_softmax_at(const S* x, const S* y, int64_t k, const RowStats<T>& st, T inv_sx, T inv_sy,
                                    C cache, T* sigma, T* tau) {
  if constexpr (C::kKeeps) {
    *sigma = cache.ex[k] * inv_sx;
    *tau = cache.ey[k] * inv_sy;
  } else {
    *sigma = vexp(static_cast<T>(x[k]) - st.mx) * inv_sx;
    *tau = vexp(static_cast<T>(y[k]) - st.my) * inv_sy;
  }
}

// x, or NaN where x is ±inf: a row sum that is infinite makes the reference's softmax backward non-finite in every
// class (inf - inf or inf * 0 somewhere, NaN or ±inf by sign), so the row's gradient here is NaN throughout.
template <typename T>
DF_FORCE_INLINE T nan_unless_finite(T x) {
  return x + x * T(0);
}

// Σ_k q_k log(q_k / p_k) of one row; every visitor gets the full sum.
template <typename T, int kStep, typename S, typename R, typename C = NoCache>
DF_FORCE_INLINE T row_kl(const S* x, const S* y, int64_t K, int64_t first, T u, const R& reduce, C cache = {}) {
  if (u == T(0)) {
    const RowStats<T> st = row_stats<false, T, kStep>(x, y, K, first, reduce, NoCache{});  // one pass: no cache
    return st.sd / st.sx - vlog(st.sx / st.sy);
  }
  const RowStats<T> st = row_stats<true, T, kStep>(x, y, K, first, reduce, cache);
  const T inv_sx = T(1) / st.sx, inv_sy = T(1) / st.sy, u_over_k = u / static_cast<T>(K);
  T acc = T(0);
  DF_SIMD_REDUCE(+, acc)
  for (int64_t k = first; k < K; k += kStep) {
    T sigma, tau;
    row_softmax_at(x, y, k, st, inv_sx, inv_sy, cache, &sigma, &tau);
    const T q = (T(1) - u) * sigma + u_over_k, p = (T(1) - u) * tau + u_over_k;
    acc += q * vlog(q / p);
  }
  return reduce.sum(acc);
}

// dx = w_post dkl/dx and dy = w_prior dkl/dy for one row (formulas at the top); softmaxes recomputed from the logits.
template <typename T, int kStep, typename S, typename R, typename C = NoCache>
DF_FORCE_INLINE void row_kl_backward(const S* x, const S* y, int64_t K, int64_t first, T u, T w_post, T w_prior,
                                     S* dx, S* dy, const R& reduce, C cache = {}) {
  if (u == T(0)) {
    const RowStats<T> st = row_stats<false, T, kStep>(x, y, K, first, reduce, cache);
    const T inv_sx = T(1) / st.sx, inv_sy = T(1) / st.sy, mean_d = nan_unless_finite(st.sd * inv_sx);
    DF_SIMD
    for (int64_t k = first; k < K; k += kStep) {
      T sigma, tau;
      row_softmax_at(x, y, k, st, inv_sx, inv_sy, cache, &sigma, &tau);
      const T d = (static_cast<T>(x[k]) - st.mx) - (static_cast<T>(y[k]) - st.my);
      dx[k] = static_cast<S>(w_post * sigma * (d - mean_d));
      dy[k] = static_cast<S>(w_prior * (tau - sigma));
    }
    return;
  }
  const RowStats<T> st = row_stats<true, T, kStep>(x, y, K, first, reduce, cache);
  const T inv_sx = T(1) / st.sx, inv_sy = T(1) / st.sy, u_over_k = u / static_cast<T>(K);
  T sum_sa = T(0), sum_qr = T(0);  // Σ σ_k a_k and Σ q_k r_k
  DF_SIMD_REDUCE(+, sum_sa, sum_qr)
  for (int64_t k = first; k < K; k += kStep) {
    T sigma, tau;
    row_softmax_at(x, y, k, st, inv_sx, inv_sy, cache, &sigma, &tau);
    const T q = (T(1) - u) * sigma + u_over_k, p = (T(1) - u) * tau + u_over_k;
    sum_sa += sigma * vlog(q / p);
    sum_qr += q * (tau / p);
  }
  sum_sa = nan_unless_finite(reduce.sum(sum_sa));
  sum_qr = reduce.sum(sum_qr);
  const T wx = w_post * (T(1) - u), wy = w_prior * (T(1) - u);
  DF_SIMD
  for (int64_t k = first; k < K; k += kStep) {
    T sigma, tau;
    row_softmax_at(x, y, k, st, inv_sx, inv_sy, cache, &sigma, &tau);
    const T q = (T(1) - u) * sigma + u_over_k, p = (T(1) - u) * tau + u_over_k;
    dx[k] = static_cast<S>(wx * sigma * (vlog(q / p) - sum_sa));
    dy[k] = static_cast<S>(wy * (tau * sum_qr - q * (tau / p)));
  }
}

// Free nats, with torch.clamp(x, min=free)'s conventions: NaN stays NaN; the gradient passes where x >= free.
template <typename T>
DF_FORCE_INLINE T free_nats_clamp(T x, T free) {
  return x < free ? free : x;
}

template <typename T>
DF_FORCE_INLINE bool free_nats_passes_grad(T x, T free) {
  return x >= free;
}

// The loss from its clamped value v: mix v + (1 - mix) v, the reference's sum of its two terms (mix = 1 - balance,
// each weight rounded once from the double), so that an infinite KL with balance 0 or 1 gives its NaN (inf + 0 inf).
template <typename T>
DF_FORCE_INLINE T balanced_loss(T v, double balance) {
  const double mix = 1 - balance;
  return static_cast<T>(mix) * v + static_cast<T>(1 - mix) * v;
}

// Weights of one position's KL gradient: its own grad_kl plus the loss's share. The loss is a mean over the N
// positions; its post term (weight mix) sees the prior as a constant and its prior term (weight 1 - mix) the post.
template <typename T>
DF_FORCE_INLINE void kl_grad_weights(T grad_kl, T grad_loss, T mix, bool passes, int64_t n, T* w_post, T* w_prior) {
  const T share = passes ? grad_loss / static_cast<T>(n) : T(0);  // select, not multiply: a NaN grad stays out
  *w_post = grad_kl + share * mix;
  *w_prior = grad_kl + share * (T(1) - mix);
}

}  // namespace dreamer_fast
