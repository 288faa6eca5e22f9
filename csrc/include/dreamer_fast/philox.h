// Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC 2011): a counter-based generator.
// The output is a pure function of (counter, key), so every row of a launch draws its own numbers independently, in
// any order, on any device, and CPU and CUDA agree bit for bit. Plain uint32 arithmetic, usable by host and device.
#pragma once

#include <cstdint>

#include "macros.h"

namespace dreamer_fast {

struct Philox4x32 {
  uint32_t v[4];
};

namespace philox_detail {

constexpr uint32_t kMul0 = 0xD2511F53u, kMul1 = 0xCD9E8D57u;   // round multipliers
constexpr uint32_t kWeyl0 = 0x9E3779B9u, kWeyl1 = 0xBB67AE85u;  // key schedule increments

DF_INLINE uint32_t mulhilo(uint32_t a, uint32_t b, uint32_t* hi) {
  const uint64_t p = static_cast<uint64_t>(a) * b;
  *hi = static_cast<uint32_t>(p >> 32);
  return static_cast<uint32_t>(p);
}

}  // namespace philox_detail

// Ten rounds of Philox4x32 on `counter` under the 64-bit key (key0, key1).
DF_INLINE Philox4x32 philox4x32_10(Philox4x32 c, uint32_t key0, uint32_t key1) {
  using namespace philox_detail;
  for (int round = 0; round < 10; ++round) {
    uint32_t hi0, hi1;
    const uint32_t lo0 = mulhilo(kMul0, c.v[0], &hi0);
    const uint32_t lo1 = mulhilo(kMul1, c.v[2], &hi1);
    c = Philox4x32{{hi1 ^ c.v[1] ^ key0, lo1, hi0 ^ c.v[3] ^ key1, lo0}};
    key0 += kWeyl0;
    key1 += kWeyl1;
  }
  return c;
}

// A uniform in [0, 1) from the top 24 bits of x: exact in float32 and float64 alike, so both draw the same numbers.
template <typename T>
DF_INLINE T uniform_from_bits(uint32_t x) {
  return static_cast<T>(x >> 8) * static_cast<T>(1.0 / 16777216.0);
}

// The uniform of stream element `index` under `seed`: counter (lo32(index), hi32(index), 0, 0), key (lo32(seed),
// hi32(seed)), first output word. The sampling ops use the flat row index as `index`.
template <typename T>
DF_INLINE T philox_uniform(uint64_t seed, uint64_t index) {
  const Philox4x32 c{{static_cast<uint32_t>(index), static_cast<uint32_t>(index >> 32), 0u, 0u}};
  return uniform_from_bits<T>(philox4x32_10(c, static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32)).v[0]);
}

}  // namespace dreamer_fast
