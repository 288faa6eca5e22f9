// exp and log for float as straight-line polynomials the compiler can vectorise (libm's expf/logf are calls, which
// stop the vectoriser). Cephes' single-precision approximations, < 2 ulp. CPU loops use them through vexp/vlog;
// CUDA code keeps its own expf/logf, and double keeps libm.
//
// The selects vectorise only without -ftrapping-math (GCC's default makes a select on a float compare a branch):
// translation units that want vector code say `#pragma GCC optimize("no-trapping-math")` before including this.
#pragma once

#include <cstdint>
#include <type_traits>

#include "macros.h"

// Always inlined on the host: the CPU kernels are compiled for several -march levels (csrc/cpu/clones.h), and GCC
// inlines a function compiled for one level into a body for another only when told it must.
#if defined(__GNUC__) && !defined(__CUDA_ARCH__)
#define DF_FORCE_INLINE DF_INLINE __attribute__((always_inline))
#else
#define DF_FORCE_INLINE DF_INLINE
#endif

namespace dreamer_fast {

DF_FORCE_INLINE float bits_to_float(int32_t i) {
  float f;
  __builtin_memcpy(&f, &i, sizeof f);
  return f;
}

DF_FORCE_INLINE int32_t float_to_bits(float f) {
  int32_t i;
  __builtin_memcpy(&i, &f, sizeof i);
  return i;
}

// e^x. Below -87.3 it returns 0 (e^x < 2^-126 is flushed, not a denormal); NaN stays NaN.
DF_FORCE_INLINE float exp_poly(float x) {
  const float lo = -87.33654f, hi = 88.3762626f;
  float c = x < lo ? lo : x;
  c = c > hi ? hi : c;
  float t = c * 1.44269504088896341f;
  t = t == t ? t : 0.0f;            // a NaN x must not reach the int conversion below
  const float round = 12582912.0f;  // 1.5 * 2^23: adding and subtracting it rounds to an integer
  const float n = (t + round) - round;
  const float r = (c - n * 0.693359375f) + n * 2.12194440e-4f;  // c - n ln 2 in two parts, the first exact
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const float e = p * bits_to_float((static_cast<int32_t>(n) + 127) << 23);  // p * 2^n
  return x < lo ? 0.0f : e;
}

// log x for x >= 0 (denormals included): log 0 = -inf, log inf = inf; NaN and x < 0 give NaN.
DF_FORCE_INLINE float log_poly(float x) {
  const bool tiny = x < 1.17549435e-38f;        // denormal or 0: scale into the normal range first
  const float xs = tiny ? x * 8388608.0f : x;  // * 2^23
  const int32_t bits = float_to_bits(xs);
  float e = static_cast<float>((bits >> 23) - 127) - (tiny ? 23.0f : 0.0f);
  float m = bits_to_float((bits & 0x007fffff) | 0x3f800000);  // mantissa in [1, 2)
  const bool big = m > 1.41421356f;                           // keep m in [sqrt(1/2), sqrt(2))
  m = big ? 0.5f * m : m;
  e = big ? e + 1.0f : e;
  const float f = m - 1.0f, z = f * f;
  float p = 7.0376836292e-2f;
  p = p * f - 1.1514610310e-1f;
  p = p * f + 1.1676998740e-1f;
  p = p * f - 1.2420140846e-1f;
  p = p * f + 1.4249322787e-1f;
  p = p * f - 1.6668057665e-1f;
  p = p * f + 2.0000714765e-1f;
  p = p * f - 2.4999993993e-1f;
  p = p * f + 3.3333331174e-1f;
  const float r = (f + (p * f * z - 2.12194440e-4f * e - 0.5f * z)) + 0.693359375f * e;
  const float inf = bits_to_float(0x7f800000);
  const float special = x == 0.0f ? -inf : (x == inf ? inf : (x + inf) - inf);  // x < 0 or NaN: inf - inf = NaN
  return x > 0.0f && x < inf ? r : special;
}

// The exp and log of CPU row loops: the polynomials for float on the host, libm (or CUDA's) otherwise.
template <typename T>
DF_FORCE_INLINE T vexp(T x) {
#ifndef __CUDA_ARCH__
  if constexpr (std::is_same_v<T, float>) return exp_poly(x);
#endif
  return df_exp(x);
}

template <typename T>
DF_FORCE_INLINE T vlog(T x) {
#ifndef __CUDA_ARCH__
  if constexpr (std::is_same_v<T, float>) return log_poly(x);
#endif
  return df_log(x);
}

}  // namespace dreamer_fast
