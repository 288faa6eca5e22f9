// TD(λ) returns, one step of the backward recursion and of its gradient.
//
//   R[t] = r[t] + d[t] * ((1 - λ) v[t+1] + λ R[t+1]),   v[T] := R[T] := bootstrap
//
// Gradient, with G[t] = dL/dR[t] in total (the direct gradient plus what flows back through R[t-1]):
//   G[t] = g[t] + λ d[t-1] G[t-1]
//   dr[t] = G[t];  dd[t] = G[t] ((1 - λ) v[t+1] + λ R[t+1]);  dv[t+1] += G[t] d[t] (1 - λ);  dbootstrap = G[T-1] d[T-1]
#pragma once

#include "macros.h"

namespace dreamer_fast {

template <typename T>
DF_INLINE T lambda_target(T v_next, T ret_next, T lam) {
  return (T(1) - lam) * v_next + lam * ret_next;
}

template <typename T>
DF_INLINE T lambda_step(T reward, T discount, T v_next, T ret_next, T lam) {
  return reward + discount * lambda_target(v_next, ret_next, lam);
}

// Gradients of one step given G (the total gradient of R[t]); returns them through the pointers.
template <typename T>
DF_INLINE void lambda_step_backward(T G, T discount, T v_next, T ret_next, T lam, T* d_reward, T* d_discount,
                                    T* d_v_next) {
  *d_reward = G;
  *d_discount = G * lambda_target(v_next, ret_next, lam);
  *d_v_next = G * discount * (T(1) - lam);
}

}  // namespace dreamer_fast
