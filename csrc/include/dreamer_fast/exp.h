// exp(z) for z <= 0 in plain arithmetic: no libm call, no branch, so the compiler vectorises CPU loops over it
// (glibc's scalar expf costs more than all the rest of a K=32 softmax), and the CPU and emulated-CUDA kernels evaluate
// the very same operations, so they agree bit for bit. (GCC vectorises it only without -ftrapping-math: see
// csrc/cpu/straight_through_categorical.cpp. nvcc contracts a*b+c into FMAs, so the GPU may differ in the last bit.) Accuracy: a few ulp in float32 and float64; results below ~1e-38 (float32) or ~1e-307
// (float64) are flushed to 0, NaN gives NaN, -inf gives 0.
//
// Method: z = n ln2 + r with n = round(z / ln2) and |r| <= ln2 / 2 (ln2 split in two parts, so n ln2 is exact
// enough), exp(r) by its Taylor polynomial in Horner form (degree 7 for float32, 13 for float64: truncation error
// below half an ulp), times 2^n built in the exponent bits. Rounding to the nearest integer adds and subtracts
// 1.5 * 2^(mantissa bits), which leaves n in the low bits of the sum.
#pragma once

#include <cstdint>
#include <cstring>

#include "macros.h"

namespace dreamer_fast {

namespace exp_detail {

DF_INLINE int32_t bits(float x) {
#ifdef __CUDA_ARCH__
  return __float_as_int(x);
#else
  int32_t i;
  std::memcpy(&i, &x, sizeof i);
  return i;
#endif
}
DF_INLINE float from_bits(int32_t i) {
#ifdef __CUDA_ARCH__
  return __int_as_float(i);
#else
  float x;
  std::memcpy(&x, &i, sizeof x);
  return x;
#endif
}
DF_INLINE int64_t bits(double x) {
#ifdef __CUDA_ARCH__
  return __double_as_longlong(x);
#else
  int64_t i;
  std::memcpy(&i, &x, sizeof i);
  return i;
#endif
}
DF_INLINE double from_bits(int64_t i) {
#ifdef __CUDA_ARCH__
  return __longlong_as_double(i);
#else
  double x;
  std::memcpy(&x, &i, sizeof x);
  return x;
#endif
}

// The range reduction of the float32 functions (exp_nonpositive here, expm1_nonpositive in elu.h): for z >= -87,
// z = n ln2 + r with |r| <= ln2 / 2; returns r and 2^n (a normal float, built in the exponent bits).
struct Ln2Split {
  float r, pow2n;
};

DF_INLINE Ln2Split split_ln2(float z) {
  constexpr float kLog2e = 1.44269504088896341f, kLn2Hi = 0.693359375f, kLn2Lo = -2.12194440e-4f;
  constexpr float kShift = 12582912.0f;  // 1.5 * 2^23
  const float t = z * kLog2e + kShift;
  const float n = t - kShift;
  const float r = (z - n * kLn2Hi) - n * kLn2Lo;
  return {r, from_bits(static_cast<int32_t>((bits(t) - bits(kShift) + 127) << 23))};
}

}  // namespace exp_detail

DF_INLINE float exp_nonpositive(float z) {
  constexpr float kMin = -87.0f;  // 2^n stays a normal float down to here
  const float zc = z < kMin ? kMin : z;
  const exp_detail::Ln2Split s = exp_detail::split_ln2(zc);
  const float r = s.r;
  float p = 1.0f / 5040;
  p = p * r + 1.0f / 720;
  p = p * r + 1.0f / 120;
  p = p * r + 1.0f / 24;
  p = p * r + 1.0f / 6;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  return p * s.pow2n * static_cast<float>(z >= kMin);  // a product, not a branch: vectorises; NaN stays NaN
}

DF_INLINE double exp_nonpositive(double z) {
  using namespace exp_detail;
  constexpr double kMin = -708.0;
  constexpr double kLog2e = 1.4426950408889634074, kLn2Hi = 6.93147180369123816490e-01,
                   kLn2Lo = 1.90821492927058770002e-10;
  constexpr double kShift = 6755399441055744.0;  // 1.5 * 2^52
  const double zc = z < kMin ? kMin : z;
  const double t = zc * kLog2e + kShift;
  const double n = t - kShift;
  const double r = (zc - n * kLn2Hi) - n * kLn2Lo;
  double p = 1.0 / 6227020800.0;  // 1/13!
  p = p * r + 1.0 / 479001600.0;
  p = p * r + 1.0 / 39916800.0;
  p = p * r + 1.0 / 3628800.0;
  p = p * r + 1.0 / 362880.0;
  p = p * r + 1.0 / 40320.0;
  p = p * r + 1.0 / 5040.0;
  p = p * r + 1.0 / 720.0;
  p = p * r + 1.0 / 120.0;
  p = p * r + 1.0 / 24.0;
  p = p * r + 1.0 / 6.0;
  p = p * r + 0.5;
  p = p * r + 1.0;
  p = p * r + 1.0;
  const double scale = from_bits(static_cast<int64_t>((bits(t) - bits(kShift) + 1023) << 52));
  return p * scale * static_cast<double>(z >= kMin);
}

}  // namespace dreamer_fast
