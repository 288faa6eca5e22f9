// TD(λ) returns, one step of the backward recursion and of its gradient.
//
//   R[t] = (r[t] + d[t] v[t+1] (1 - λ)) + (d[t] λ) R[t+1],   v[T] := R[T] := bootstrap
//
// The products are grouped as in the reference (dreamer_fast/reference/lambda_return.py) and the gradient takes
// autograd's products of that graph, so that non-finite inputs give the reference's results: e.g. d = inf with
// v[t+1] = 0 is NaN there (inf * 0), where d ((1 - λ) v + λ R) would be inf.
//
// Gradient, with G[t] = dL/dR[t] in total (the direct gradient plus what flows back through R[t-1]):
//   G[t] = g[t] + G[t-1] (d[t-1] λ)
//   dr[t] = G[t];  dd[t] = (G[t] (1 - λ)) v[t+1] + (G[t] R[t+1]) λ;  dv[t+1] = (G[t] (1 - λ)) d[t]
//   dbootstrap = (G[T-1] (1 - λ)) d[T-1] + G[T-1] (d[T-1] λ)          (bootstrap is both v[T] and R[T])
#pragma once

#include "macros.h"

namespace dreamer_fast {

// λ and 1 - λ, each rounded once from the double λ (as torch rounds the reference's Python scalars).
template <typename T>
struct LambdaCoef {
  T lam, one_minus_lam;
};

template <typename T>
DF_INLINE LambdaCoef<T> lambda_coef(double lam) {
  return LambdaCoef<T>{static_cast<T>(lam), static_cast<T>(1.0 - lam)};
}

template <typename T>
DF_INLINE T lambda_step(T reward, T discount, T v_next, T ret_next, LambdaCoef<T> c) {
  return (reward + discount * v_next * c.one_minus_lam) + discount * c.lam * ret_next;
}

// G[t] from g[t] and G[t-1] (G_prev = 0 and d_prev = 0 at t = 0).
template <typename T>
DF_INLINE T lambda_total_grad(T g, T G_prev, T d_prev, LambdaCoef<T> c) {
  return g + G_prev * (d_prev * c.lam);
}

// Gradients of one step given G (the total gradient of R[t]); returns them through the pointers.
template <typename T>
DF_INLINE void lambda_step_backward(T G, T discount, T v_next, T ret_next, LambdaCoef<T> c, T* d_reward,
                                    T* d_discount, T* d_v_next) {
  const T G_input = G * c.one_minus_lam;
  *d_reward = G;
  *d_discount = G_input * v_next + G * ret_next * c.lam;
  *d_v_next = G_input * discount;
}

// The bootstrap's gradient: through v[T] and through R[T].
template <typename T>
DF_INLINE T lambda_bootstrap_grad(T G, T discount, LambdaCoef<T> c) {
  return G * c.one_minus_lam * discount + G * (discount * c.lam);
}

}  // namespace dreamer_fast
