// exp and tanh for float written so that a compiler vectorises loops that call them (no calls, no branches: both
// sides of every choice are computed and blended). The CPU kernels use them in their float paths; glibc's expf and
// tanhf are scalar calls, ~10x slower per element than a vectorised polynomial.
//
// Accuracy: exp within 2 ulp (Cody-Waite reduction, Cephes' degree-5 polynomial; subnormal results included);
// tanh within 3e-7 absolute (an odd polynomial for |x| < 0.625, 1 - 2/(e^{2|x|} + 1) beyond). NaN in, NaN out.
#pragma once

#include <cstdint>
#include <cstring>

#include "macros.h"

namespace dreamer_fast {

// Every choice below is an integer mask blend of values computed unconditionally: under the default
// -ftrapping-math GCC will neither if-convert a float comparison nor hoist a float operation out of a conditional
// arm, and either leaves the loop scalar.
inline uint32_t float_bits(float x) {
  uint32_t u;
  std::memcpy(&u, &x, sizeof(u));
  return u;
}

inline float bits_float(uint32_t u) {
  float x;
  std::memcpy(&x, &u, sizeof(x));
  return x;
}

// c ? a : b, without a branch.
inline float blend(bool c, float a, float b) {
  const uint32_t m = 0u - static_cast<uint32_t>(c);
  return bits_float((m & float_bits(a)) | (~m & float_bits(b)));
}

inline float fast_exp(float x) {
  constexpr float kHi = 88.7228394f, kLo = -103.972084f;  // log(FLT_MAX); below the smallest subnormal
  const uint32_t u = float_bits(x), a = u & 0x7fffffffu;
  const bool negative = (u >> 31) != 0;
  const bool is_nan = a > 0x7f800000u;
  const bool above = !negative && a > float_bits(kHi);  // NaN included: restored at the end
  const bool below = negative && a > float_bits(-kLo);
  const float xc = blend(above, kHi, blend(below, kLo, x));
  // n = round(x / ln 2) by the 1.5·2^23 trick (|n| <= 150): no float->int conversion, no floor.
  constexpr float kMagic = 12582912.0f;
  const float t = xc * 1.44269504088896341f + kMagic;
  const float fx = t - kMagic;
  const int32_t n = static_cast<int32_t>(float_bits(t) - float_bits(kMagic));
  float r = xc - fx * 0.693359375f;  // Cody-Waite: ln 2 in two parts
  r = r - fx * -2.12194440e-4f;
  const float z = r * r;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float y = p * z + r + 1.0f;
  // 2^n as two normal factors 2^(n/2) 2^(n - n/2), so n = 128 and the subnormal range need no special case.
  const int32_t n1 = n >> 1, n2 = n - n1;
  const float out = y * bits_float(static_cast<uint32_t>(n1 + 127) << 23) * bits_float(static_cast<uint32_t>(n2 + 127) << 23);
  return blend(is_nan, x, blend(above, __builtin_inff(), blend(below, 0.0f, out)));
}

inline float fast_tanh(float x) {
  const uint32_t u = float_bits(x), sign = u & 0x80000000u, abs_bits = u & 0x7fffffffu;
  const float a = bits_float(abs_bits);
  // |x| < 0.625: Cephes' odd polynomial, exact where 1 - 2/(e^{2x} + 1) would cancel.
  const float z = x * x;
  float p = -5.70498872745e-3f;
  p = p * z + 2.06390887954e-2f;
  p = p * z - 5.37397155531e-2f;
  p = p * z + 1.33314422036e-1f;
  p = p * z - 3.33332819422e-1f;
  const float small = p * z * x + x;
  const float big = bits_float(float_bits(1.0f - 2.0f / (fast_exp(2.0f * a) + 1.0f)) | sign);  // NaN stays NaN
  return blend(abs_bits < float_bits(0.625f), small, big);
}

DF_INLINE float df_tanh(float x) { return ::tanhf(x); }
DF_INLINE double df_tanh(double x) { return ::tanh(x); }

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
  static inline float exp(float x) { return fast_exp(x); }
  static inline float tanh(float x) { return fast_tanh(x); }
};

}  // namespace dreamer_fast
