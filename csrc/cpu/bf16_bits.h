// bfloat16 <-> float32 with integer operations only (they vectorise inside the CPU kernels' loops, where converting
// through c10::BFloat16 does not): the CPU kernels that read or write bfloat16 (elu.cpp, gemv.cpp).
#pragma once

#include <cstdint>

#include "dreamer_fast/math.h"

namespace dreamer_fast::cpu {

DF_FORCE_INLINE float bf16_to_float(uint16_t b) {
  return bit_cast<float>(static_cast<uint32_t>(b) << 16);
}

// Round to nearest even; a NaN stays a quiet NaN (rounding its bits could carry into an infinity).
DF_FORCE_INLINE uint16_t float_to_bf16(float f) {
  const uint32_t u = bit_cast<uint32_t>(f);
  const uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
  const bool nan = (u & 0x7fffffffu) > 0x7f800000u;
  return static_cast<uint16_t>(nan ? ((u >> 16) | 0x0040u) : rounded);
}

}  // namespace dreamer_fast::cpu
