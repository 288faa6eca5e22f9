// ELU with alpha = 1 (DreamerV2's activation), shared by the CPU, CUDA and emulated kernels:
//   forward  y = x for x > 0, e^x - 1 otherwise;
//   backward from the output (as ATen's elu_backward with is_result): dx = dy (y + 1) for y <= 0 (y + 1 = e^x), dy
//   otherwise. So the backward needs neither the input nor an exp, and the input's buffer can be freed or reused.
// Float math is branch-free (selects, no libm call) so that CPU loops vectorise; double uses libm's expm1.
#pragma once

#include "macros.h"
#include "math.h"

namespace dreamer_fast::elu {

// e^x - 1 for x <= 0 in float32, exp_poly's range reduction (math.h) and one polynomial: x = n ln2 + r
// with |r| <= ln2 / 2, e^x - 1 = 2^n (e^r - 1) + (2^n - 1), and e^r - 1 by its Taylor polynomial r + r^2/2! + ... +
// r^8/8! (truncation < 2e-9 relative). The polynomial has no 1 to cancel against, so results near 0 keep their
// relative precision (n = 0 there); below, both terms have magnitude <= 1 and the sum >= 0.29. Below -87, 2^n is
// clamped at ~2^-126 and the result is -1 (as for -inf); NaN gives NaN.
DF_FORCE_INLINE float expm1_nonpositive(float x) {
  const exp_detail::Ln2Split<float> s = exp_detail::split_ln2(x < -87.0f ? -87.0f : x);
  const float em1 = s.r * exp_detail::inv_factorial_series<1, 8>(s.r);  // e^r - 1 = r (1 + r/2! + ... + r^7/8!)
  return s.pow2n * em1 + (s.pow2n - 1.0f);
}

DF_INLINE double expm1_nonpositive(double x) { return ::expm1(x); }

// NaN stays NaN (it fails `x <= 0`); the exp's argument is kept <= 0 (it is discarded where x > 0).
template <typename acc_t>
DF_INLINE acc_t forward(acc_t x) {
  const acc_t neg = expm1_nonpositive(x <= acc_t(0) ? x : acc_t(0));
  return x <= acc_t(0) ? neg : x;
}

// A NaN output (a NaN input) gives a NaN gradient: torch's elu_backward gives NaN or the incoming gradient there,
// depending on whether the element falls in its vectorised loop or its scalar tail.
template <typename acc_t>
DF_INLINE acc_t backward(acc_t grad, acc_t out) {
  const acc_t slope = out <= acc_t(0) ? out + acc_t(1) : (out > acc_t(0) ? acc_t(1) : out);
  return grad * slope;
}

}  // namespace dreamer_fast::elu
