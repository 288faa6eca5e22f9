// DreamerV2's LayerNorm-GRU cell after its one Dense layer: the per-element math of the ln_gru op.
//
// A row holds the Dense output x = gates[b, 0:3D]. LayerNorm over the whole row, then an affine map:
//   mean = Σ x / 3D,  var = Σ (x - mean)² / 3D,  rstd = 1 / sqrt(var + eps),  x̂ = (x - mean) rstd,  y = x̂ w + β
// The row splits into (reset, cand, update) = (y[0:D], y[D:2D], y[2D:3D]); for each i < D:
//   r = σ(y_r),  c = tanh(r y_c),  u = σ(y_u - 1),  h' = u c + (1 - u) h
//
// Gradient, given g = dL/dh':
//   dh = g (1 - u),  dy_u = g (c - h) u (1 - u),  da = g u (1 - c²)  (a = r y_c),
//   dy_c = da r,     dy_r = da y_c r (1 - r)
// then through the affine map and the normalisation (m1 = mean_j dx̂_j, m2 = mean_j dx̂_j x̂_j over the row):
//   dx̂ = dy w,  dw = Σ_b dy x̂,  dβ = Σ_b dy,  dx = rstd (dx̂ - m1 - x̂ m2)
#pragma once

#include "macros.h"
#include "math.h"

namespace dreamer_fast {

// tanh for float as straight-line code (see math.h): Cephes' odd polynomial for |x| < 0.625, where
// 1 - 2/(e^{2|x|} + 1) would cancel, that formula beyond. Within 3e-7 absolute; NaN stays NaN, ±inf gives ±1.
DF_FORCE_INLINE float tanh_poly(float x) {
  const float a = x < 0.0f ? -x : x;
  const float z = x * x;
  float p = -5.70498872745e-3f;
  p = p * z + 2.06390887954e-2f;
  p = p * z - 5.37397155531e-2f;
  p = p * z + 1.33314422036e-1f;
  p = p * z - 3.33332819422e-1f;
  const float small = p * z * x + x;
  const float big = 1.0f - 2.0f / (exp_poly(2.0f * a) + 1.0f);  // NaN in, NaN out
  return a < 0.625f ? small : (x < 0.0f ? -big : big);
}

// The arguments of the ln_gru kernels (CPU row loops and CUDA kernels): gates [rows, 3D] of type G, the state deter
// [rows, D], the LayerNorm's weight and bias [3D] and deter' or its gradient [rows, D] of type T, the row statistics
// mean and rstd [rows] of type A (float32 for half types). Row-major and contiguous.
template <typename G, typename T, typename A = T>
struct LnGruForward {
  const G* gates;
  const T *deter, *weight, *bias;
  T* out;  // deter'
  A *mean, *rstd;
  int64_t rows, D;
  A eps;
};

// grad = dL/d deter'; outputs d_gates and d_deter. The weight and bias gradients are summed over rows by the caller.
template <typename G, typename T, typename A = T>
struct LnGruBackward {
  const T* grad;
  const G* gates;
  const T *deter, *weight, *bias;
  const A *mean, *rstd;
  G* d_gates;
  T* d_deter;
  int64_t rows, D;
};

// The exp/tanh policies of the cell: StdMath is libm (host) or CUDA's (device); FastMath the float polynomials of
// the CPU kernels' vectorised loops.
struct StdMath {
  template <typename T>
  DF_INLINE static T exp(T x) {
    return df_exp(x);
  }
  template <typename T>
  DF_INLINE static T tanh(T x) {
    return df_tanh(x);
  }
};

struct FastMath {
  DF_FORCE_INLINE static float exp(float x) { return exp_poly(x); }
  DF_FORCE_INLINE static float tanh(float x) { return tanh_poly(x); }
};

// M: the exp/tanh policy: StdMath everywhere, FastMath in the CPU kernels' float loops.
template <typename T, typename M = StdMath>
DF_INLINE T df_sigmoid(T x) {
  return T(1) / (T(1) + M::exp(-x));
}

// 1 / sqrt(var + eps) from the row's sum of squared deviations (biased variance, as torch's LayerNorm).
template <typename T>
DF_INLINE T ln_rstd(T sum_sq_dev, int64_t n, T eps) {
  return df_rsqrt(sum_sq_dev / static_cast<T>(n) + eps);
}

// One unit i of the cell from its three normalised-and-affine gate values; returns h'.
template <typename T, typename M = StdMath>
DF_INLINE T gru_cell(T y_reset, T y_cand, T y_update, T h) {
  const T r = df_sigmoid<T, M>(y_reset);
  const T c = M::tanh(r * y_cand);
  const T u = df_sigmoid<T, M>(y_update - T(1));
  return u * c + (T(1) - u) * h;
}

// Gradients of gru_cell with respect to its four inputs, given g = dL/dh'.
template <typename T, typename M = StdMath>
DF_INLINE void gru_cell_backward(T g, T y_reset, T y_cand, T y_update, T h, T* d_reset, T* d_cand, T* d_update,
                                 T* d_h) {
  const T r = df_sigmoid<T, M>(y_reset);
  const T c = M::tanh(r * y_cand);
  const T u = df_sigmoid<T, M>(y_update - T(1));
  const T da = g * u * (T(1) - c * c);
  *d_h = g * (T(1) - u);
  *d_update = g * (c - h) * u * (T(1) - u);
  *d_cand = da * r;
  *d_reset = da * y_cand * r * (T(1) - r);
}

// mean(dx̂) of a row, NaN when mean(dx̂) or mean(dx̂ x̂) is not finite: torch's LayerNorm backward then gives a
// non-finite gradient everywhere in the row (NaN or ±inf, depending on signs), and the row's gradient here is NaN, so a
// non-finite input gradient is never finite or of the wrong sign. One multiply-add a row.
template <typename T>
DF_INLINE T ln_grad_mean(T mean_d_xhat, T mean_d_xhat_xhat) {
  return mean_d_xhat + (mean_d_xhat + mean_d_xhat_xhat) * T(0);
}

// The LayerNorm input gradient of one element: rstd (dx̂ - mean(dx̂) - x̂ mean(dx̂ x̂)).
template <typename T>
DF_INLINE T ln_input_grad(T d_xhat, T xhat, T mean_d_xhat, T mean_d_xhat_xhat, T rstd) {
  return rstd * (d_xhat - mean_d_xhat - xhat * mean_d_xhat_xhat);
}

}  // namespace dreamer_fast
