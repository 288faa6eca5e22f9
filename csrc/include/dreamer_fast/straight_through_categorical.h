// Per-row math of the straight-through categorical sample, shared by the CPU and CUDA kernels.
//
//   probs = (1 - u) softmax(logits) + u / K                      (u = unimix)
//   index = the smallest k with noise < cumsum(probs)[k], at most K - 1
//         = the number of k < K - 1 with cumsum(probs)[k] <= noise  (cumsum is nondecreasing; this form is branchless)
//   cumsum in float64 for every dtype (of the probs as returned): a float32 running sum drifts with K (up to ~3e-5
//   at K = 3000 with equal probs) and would move draws across class boundaries; in float64 the draw agrees with a
//   float64 computation up to the float32 rounding of the probs themselves.
//   sample = onehot(index) + 0 * scale, scale = (1 - u) / sum(exp): a row with a NaN or +inf logit (or all -inf) has
//   a NaN sum and NaN probs, and its sample is NaN too, as the reference's onehot + (probs - probs.detach()).
//   dlogits = (1 - u) s (g - sum_k s g),  s = softmax(logits), g = grad_sample + grad_probs
//           = q (g - sum_k q g / (1 - u)),  q = (1 - u) s = probs - u / K   (so only probs is saved; u = 1: zero)
//
// Summation order is part of the contract: a row's sums run over 32 lanes (lane l takes k = l, l + 32, ...; a CUDA
// warp), reduced by the butterfly a warp's xor-shuffles perform, and the cumsum is sequential in k. The CPU kernels
// follow the same order (csrc/cpu/lanes.h), so CPU and emulated CUDA kernels produce identical probs and samples; on a
// GPU, nvcc's FMA contraction may still move a float32 sample across a class boundary in the last bit.
#pragma once

#include <cstdint>

#include "macros.h"
#include "math.h"
#include "philox.h"

namespace dreamer_fast::categorical {

constexpr int kLanes = 32;  // a CUDA warp

// max(a, b) as one compare and select (a vector max on the CPU). It may drop a NaN, but NaN logits still give NaN
// probs, as in torch.softmax: exp(NaN - max) is NaN, so the row's sum and every prob are NaN.
template <typename T>
DF_INLINE T larger(T a, T b) {
  return a < b ? b : a;
}

template <typename T>
DF_INLINE T sum(T a, T b) {
  return a + b;
}

// probs = e * scale + floor with e = exp(logit - max): the softmax normalisation and the uniform mix in one step.
template <typename T>
struct Mix {
  T scale, floor;
};

template <typename T>
DF_INLINE Mix<T> mix(T sum_exp, T unimix, int64_t K) {
  return Mix<T>{(T(1) - unimix) / sum_exp, unimix / static_cast<T>(K)};
}

template <typename T>
DF_INLINE T shifted_exp(T logit, T max_logit) {
  return exp_poly</*kNonPositive=*/true>(logit - max_logit);
}

template <typename T>
DF_INLINE T prob(T e, Mix<T> m) {
  return e * m.scale + m.floor;
}

// The draw's accumulator: float64 for every dtype (see the top of this file).
using Cdf = double;

// One step of the draw: add p[k] to the running cumsum c and count it if it is <= u (for k < K - 1 only).
template <typename T>
DF_INLINE int draw_step(Cdf& c, T p, Cdf u) {
  c += static_cast<Cdf>(p);
  return c <= u;
}

// The class drawn by uniform `u` from probs p[0..K): sequential float64 cumsum, counting the prefixes <= u. (The
// kernels interleave rows or lanes, but take exactly these steps in this order.)
template <typename T>
DF_INLINE int draw(const T* p, int64_t K, T u) {
  Cdf c = 0;
  int index = 0;
  for (int64_t k = 0; k < K - 1; ++k) index += draw_step(c, p[k], static_cast<Cdf>(u));
  return index;
}

// Zero for a row with finite probs, NaN for a row whose probs are NaN: added to the one-hot, it carries the NaN into
// the sample at the cost of one add per element.
template <typename T>
DF_INLINE T poison(Mix<T> m) {
  return m.scale * T(0);
}

// The uniform of row `row` when no noise is given (csrc/include/dreamer_fast/philox.h).
template <typename T>
DF_INLINE T row_uniform(uint64_t seed, uint64_t row) {
  return philox_uniform<T>(seed, row);
}

// sum_k s g from dot = sum_k q g, q = (1 - u) s; with u = 1 the probs are constant and the gradient is zero.
template <typename T>
DF_INLINE T grad_shift(T dot, T unimix) {
  return unimix < T(1) ? dot / (T(1) - unimix) : T(0);
}

template <typename T>
DF_INLINE T grad_logit(T p, T floor, T g, T shift) {
  return (p - floor) * (g - shift);
}

}  // namespace dreamer_fast::categorical
