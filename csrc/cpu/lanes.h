// The CPU mirror of a CUDA warp's row reductions. A row's values are dealt to 32 lanes (lane l takes k = l, l + 32,
// ...) and each lane accumulates in k order; the warp then combines lanes by an xor-butterfly, which leaves in lane 0
// op(op(.. lanes 0-15 with 16-31 ..)): halving the lane vector until one value is left. Doing the same here, with
// the 32 lanes as one GCC/Clang vector, gives the CPU kernels the CUDA kernels' rounding, bit for bit, in a few whole-
// vector instructions (an array of lanes made GCC spill and scalarise the tree: slower than the exp of the row).
// (Only for sums: GCC lowers ?: on vectors wider than the machine's poorly, and a max does not depend on the order.)
#pragma once

#include <cstdint>
#include <cstring>

// Vector arguments of these always-inlined helpers never cross a call, so GCC's note on their calling convention
// (which varies with the ISA of each target clone) does not apply.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wpsabi"

namespace dreamer_fast::cpu::lanes {

constexpr int kLanes = 32;

template <typename T, int N>
struct VecOf {
  typedef T type __attribute__((vector_size(N * sizeof(T))));
};
template <typename T, int N = kLanes>
using Vec = typename VecOf<T, N>::type;

template <typename T>
DF_FORCE_INLINE Vec<T> splat(T v) {
  return Vec<T>{} + v;
}

// Lanes [k0, k0 + 32) of a row of length K; lanes past K hold `fill` (the identity of the reduction).
template <typename T>
DF_FORCE_INLINE Vec<T> load(const T* row, int64_t k0, int64_t K, T fill) {
  Vec<T> v;
  if (k0 + kLanes <= K) {
    std::memcpy(&v, row + k0, sizeof v);
  } else {
    v = splat(fill);
    std::memcpy(&v, row + k0, (K - k0) * sizeof(T));
  }
  return v;
}

// The butterfly: combine the lower and upper halves until one value is left.
template <typename T, int N, typename Op>
DF_FORCE_INLINE T reduce(Vec<T, N> v, Op op) {
  if constexpr (N == 2) {
    return op(v[0], v[1]);
  } else {
    Vec<T, N / 2> lo, hi;
    std::memcpy(&lo, &v, sizeof lo);
    std::memcpy(&hi, reinterpret_cast<const char*>(&v) + sizeof lo, sizeof hi);
    return reduce<T, N / 2>(op(lo, hi), op);
  }
}

struct Sum {
  template <typename V>
  [[gnu::always_inline]] V operator()(V a, V b) const {
    return a + b;
  }
};

}  // namespace dreamer_fast::cpu::lanes

#pragma GCC diagnostic pop
