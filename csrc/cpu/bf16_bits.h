// bfloat16 <-> float32 with integer operations only (they vectorise inside the CPU kernels' loops, where converting
// through c10::BFloat16 does not): the CPU kernels that read or write bfloat16 (elu.cpp, gemv.cpp).
#pragma once

#include <cstdint>
#include <cstring>

// Always inlined: the kernels that use them are compiled for several -march levels (clones.h), and GCC does not
// inline a plain inline function into a body of another level (it became a call through the PLT per element).
#if defined(__GNUC__)
#define DF_BF16_INLINE inline __attribute__((always_inline))
#else
#define DF_BF16_INLINE inline
#endif

namespace dreamer_fast::cpu {

DF_BF16_INLINE float bf16_to_float(uint16_t b) {
  const uint32_t u = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

// Round to nearest even; a NaN stays a quiet NaN (rounding its bits could carry into an infinity).
DF_BF16_INLINE uint16_t float_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  const uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
  const bool nan = (u & 0x7fffffffu) > 0x7f800000u;
  return static_cast<uint16_t>(nan ? ((u >> 16) | 0x0040u) : rounded);
}

}  // namespace dreamer_fast::cpu
