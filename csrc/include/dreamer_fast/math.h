// The scalar math every kernel shares (CPU, CUDA and emulated builds): bit casts, libm by precision, and exp and log
// as straight-line polynomials.
//
// Why polynomials: libm's expf/logf are calls, which stop GCC's vectoriser (glibc's scalar expf costs more than all
// the rest of a K = 32 softmax), and the CPU and emulated-CUDA kernels that evaluate the very same operations agree
// bit for bit. Their selects vectorise only without -ftrapping-math (GCC's default makes a select on a float compare
// a branch): a translation unit that wants vector code says `#pragma GCC optimize("no-trapping-math")` before
// including this. nvcc contracts a*b+c into FMAs, so a GPU may differ from the CPU in the last bit.
//
// Which exp where: exp_poly (float and double) wherever CPU, emulated and GPU must agree (the sampler's softmax);
// vexp/vlog in the CPU kernels' row loops (the polynomial for float, libm for double and on the GPU); df_exp/df_log
// (libm or CUDA's) elsewhere.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <utility>

#include "macros.h"

namespace dreamer_fast {

// libm on the host, CUDA's functions on the device, overloaded so templated kernels call the right precision.
DF_INLINE float df_exp(float x) { return ::expf(x); }
DF_INLINE double df_exp(double x) { return ::exp(x); }
DF_INLINE float df_log(float x) { return ::logf(x); }
DF_INLINE double df_log(double x) { return ::log(x); }
DF_INLINE float df_max(float a, float b) { return ::fmaxf(a, b); }
DF_INLINE double df_max(double a, double b) { return ::fmax(a, b); }
DF_INLINE float df_tanh(float x) { return ::tanhf(x); }
DF_INLINE double df_tanh(double x) { return ::tanh(x); }
DF_INLINE float df_rsqrt(float x) { return 1.0f / ::sqrtf(x); }
DF_INLINE double df_rsqrt(double x) { return 1.0 / ::sqrt(x); }

// The object representation of `from` as a `To` of the same size (C++20's std::bit_cast, for host and device code).
template <typename To, typename From>
DF_FORCE_INLINE To bit_cast(const From& from) {
  static_assert(sizeof(To) == sizeof(From), "bit_cast: the two types must have the same size");
  To to;
  memcpy(&to, &from, sizeof to);
  return to;
}

namespace exp_detail {

// What exp needs of float or double: the integer of the same size, mantissa bits and exponent bias of the IEEE
// layout, the Taylor degree whose truncation is below half an ulp on |r| <= ln2 / 2, and the range of z in which
// 2^n stays a normal number.
template <typename T>
struct Layout {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>, "exp_poly: float or double");
  static constexpr bool kFloat = std::is_same_v<T, float>;
  using Int = std::conditional_t<kFloat, int32_t, int64_t>;
  using UInt = std::make_unsigned_t<Int>;
  static constexpr int kMantissa = std::numeric_limits<T>::digits - 1;    // 23, 52
  static constexpr int kBias = std::numeric_limits<T>::max_exponent - 1;  // 127, 1023
  static constexpr int kDegree = kFloat ? 7 : 13;
  static constexpr T kMin = kFloat ? T(-87) : T(-708), kMax = kFloat ? T(88) : T(709);
};

// 1 / n!, a compile-time scalar (device code may read constexpr scalars, not arrays).
DF_HOST_DEVICE constexpr double inv_factorial(int n) {
  double f = 1;
  for (int i = 2; i <= n; ++i) f *= i;
  return 1 / f;
}
template <int N>
inline constexpr double kInvFactorial = inv_factorial(N);

// Σ_{i=0..N-1} r^i / (kFirst + i)!, in Horner form, unrolled at compile time: p starts at the last coefficient and
// the fold runs the N - 1 steps p = p r + 1 / (kFirst + j)! for j = kFirst + N - 2 down to kFirst.
template <int kFirst, typename T, int... I>
DF_FORCE_INLINE T inv_factorial_series(T r, std::integer_sequence<int, I...>) {
  constexpr int kLast = kFirst + static_cast<int>(sizeof...(I));
  T p = static_cast<T>(kInvFactorial<kLast>);
  ((p = p * r + static_cast<T>(kInvFactorial<kLast - 1 - I>)), ...);
  return p;
}

template <int kFirst, int kTerms, typename T>
DF_FORCE_INLINE T inv_factorial_series(T r) {
  return inv_factorial_series<kFirst>(r, std::make_integer_sequence<int, kTerms - 1>{});
}

// Range reduction for Layout<T>::kMin <= z <= kMax: z = n ln2 + r with n = round(z / ln2) and |r| <= ln2 / 2 (ln2
// split in two parts, the first exact in n ln2); returns r and 2^n, built in the exponent bits. Rounding to the
// nearest integer adds and subtracts 1.5 * 2^(mantissa bits), which leaves n in the low bits of the sum. A NaN z gives
// a NaN r.
template <typename T>
struct Ln2Split {
  T r, pow2n;
};

template <typename T>
DF_FORCE_INLINE Ln2Split<T> split_ln2(T z) {
  using L = Layout<T>;
  constexpr bool kFloat = L::kFloat;
  const T log2e = kFloat ? T(1.44269504088896341f) : T(1.4426950408889634074);
  const T ln2_hi = kFloat ? T(0.693359375f) : T(6.93147180369123816490e-01);
  const T ln2_lo = kFloat ? T(-2.12194440e-4f) : T(1.90821492927058770002e-10);
  const T shift = kFloat ? T(12582912.0f) : T(6755399441055744.0);  // 1.5 * 2^23, 1.5 * 2^52
  const T t = z * log2e + shift;
  const T n = t - shift;
  const T r = (z - n * ln2_hi) - n * ln2_lo;
  // n + bias, shifted into the exponent field (unsigned: a NaN z leaves garbage here, never undefined behaviour)
  const auto biased = static_cast<typename L::UInt>(bit_cast<typename L::Int>(t) - bit_cast<typename L::Int>(shift) +
                                                    L::kBias);
  return {r, bit_cast<T>(static_cast<typename L::Int>(biased << L::kMantissa))};
}

}  // namespace exp_detail

// e^z for float or double: the range reduction above, e^r by its Taylor polynomial of degree 7 (float) or 13
// (double), whose truncation is below half an ulp, times 2^n. Branch-free (two selects and a product). Accuracy:
// within 2 ulp (tests/cpp/test_math.cpp). Results below ~1e-38 (float) or ~1e-307 (double) are flushed to 0 (z below
// -87 or -708; -inf gives 0); z above 88 or 709 (+inf included) saturates at e^88 or e^709, which is finite; NaN
// gives NaN. kNonPositive: the caller guarantees z <= 0 or NaN (a softmax's logit - max), so the upper clamp, one
// select per element, is left out.
template <bool kNonPositive = false, typename T>
DF_FORCE_INLINE T exp_poly(T z) {
  using L = exp_detail::Layout<T>;
  const T below = z < L::kMin ? L::kMin : z;
  const T zc = kNonPositive ? below : (below > L::kMax ? L::kMax : below);
  const exp_detail::Ln2Split<T> s = exp_detail::split_ln2(zc);
  const T p = exp_detail::inv_factorial_series<0, L::kDegree + 1>(s.r);
  return p * s.pow2n * static_cast<T>(z >= L::kMin);  // a product, not a branch; NaN stays NaN
}

// log x for float x >= 0 (denormals included): Cephes' single-precision approximation, < 2 ulp. log 0 = -inf,
// log inf = inf; NaN and x < 0 give NaN.
DF_FORCE_INLINE float log_poly(float x) {
  const bool tiny = x < 1.17549435e-38f;        // denormal or 0: scale into the normal range first
  const float xs = tiny ? x * 8388608.0f : x;  // * 2^23
  const int32_t bits = bit_cast<int32_t>(xs);
  float e = static_cast<float>((bits >> 23) - 127) - (tiny ? 23.0f : 0.0f);
  float m = bit_cast<float>((bits & 0x007fffff) | 0x3f800000);  // mantissa in [1, 2)
  const bool big = m > 1.41421356f;                             // keep m in [sqrt(1/2), sqrt(2))
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
  const float inf = bit_cast<float>(0x7f800000);
  const float special = x == 0.0f ? -inf : (x == inf ? inf : (x + inf) - inf);  // x < 0 or NaN: inf - inf = NaN
  return x > 0.0f && x < inf ? r : special;
}

// The exp and log of the CPU kernels' row loops: the polynomials for float on the host, libm (or CUDA's) otherwise.
#ifdef __CUDA_ARCH__
constexpr bool kFloatPolynomials = false;
#else
constexpr bool kFloatPolynomials = true;
#endif

template <typename T>
DF_FORCE_INLINE T vexp(T x) {
  if constexpr (kFloatPolynomials && std::is_same_v<T, float>) return exp_poly(x); else return df_exp(x);
}

template <typename T>
DF_FORCE_INLINE T vlog(T x) {
  if constexpr (kFloatPolynomials && std::is_same_v<T, float>) return log_poly(x); else return df_log(x);
}

}  // namespace dreamer_fast
