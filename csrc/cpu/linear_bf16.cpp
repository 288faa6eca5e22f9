// See linear_bf16.h. Four weight rows at a time: each is widened to float32 with integer shifts and masks 32 values
// at a time (widen_pairs) and multiplied with x's row into its own 16-wide float32 accumulator (GCC vector types,
// cloned for AVX-512 and AVX2 by clones.h), which is then summed as a tree. For B > 1 the weight rows are read again
// per row of x (from cache: the rows of a task are a few hundred KB at most; B is 1 when acting).
#include "linear_bf16.h"

#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "bf16_bits.h"
#include "clones.h"

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wpsabi"

namespace dreamer_fast::cpu {
namespace {

constexpr int kWidth = 16;
using F32x16 = float __attribute__((vector_size(kWidth * sizeof(float))));
using U32x16 = uint32_t __attribute__((vector_size(kWidth * sizeof(uint32_t))));

// 32 bfloat16 weights read as 16 uint32 lanes: lane i holds w[2i] in its low and w[2i + 1] in its high half (little
// endian), so a shift and a mask give two float32 vectors of the even and the odd weights, without any shuffle.
[[gnu::always_inline]] inline void widen_pairs(const uint16_t* w, F32x16& even, F32x16& odd) {
  U32x16 u;
  std::memcpy(&u, w, sizeof u);
  const U32x16 e = u << 16, o = u & 0xffff0000u;
  std::memcpy(&even, &e, sizeof even);
  std::memcpy(&odd, &o, sizeof odd);
}

[[gnu::always_inline]] inline F32x16 load(const float* x) {
  F32x16 v;
  std::memcpy(&v, x, sizeof v);
  return v;
}

// The lanes' sum as a tree (halving the vector): 4 dependent adds instead of 16.
[[gnu::always_inline]] inline float hsum(F32x16 v) {
  using F32x8 = float __attribute__((vector_size(8 * sizeof(float))));
  using F32x4 = float __attribute__((vector_size(4 * sizeof(float))));
  F32x8 lo8, hi8;
  std::memcpy(&lo8, &v, sizeof lo8);
  std::memcpy(&hi8, reinterpret_cast<const char*>(&v) + sizeof lo8, sizeof hi8);
  const F32x8 s8 = lo8 + hi8;
  F32x4 lo4, hi4;
  std::memcpy(&lo4, &s8, sizeof lo4);
  std::memcpy(&hi4, reinterpret_cast<const char*>(&s8) + sizeof lo4, sizeof hi4);
  const F32x4 s4 = lo4 + hi4;
  return (s4[0] + s4[2]) + (s4[1] + s4[3]);
}

constexpr int kRows = 4;         // weight rows in flight: independent FMA chains that share each load of x
constexpr int kBlock = 2 * kWidth;  // weights per step of a row: one 64-byte load

// x's row with every block of 32 values split into its 16 even- and 16 odd-indexed values (as widen_pairs gives the
// weights); the tail past the last whole block stays as it is.
void split_pairs(const float* x, int64_t K, float* out) {
  const int64_t whole = K - K % kBlock;
  for (int64_t k0 = 0; k0 < whole; k0 += kBlock)
    for (int i = 0; i < kWidth; ++i) {
      out[k0 + i] = x[k0 + 2 * i];
      out[k0 + kWidth + i] = x[k0 + 2 * i + 1];
    }
  for (int64_t k = whole; k < K; ++k) out[k] = x[k];
}

// Outputs [n0, n0 + R) of one row of x (xs: that row through split_pairs).
template <int R>
[[gnu::always_inline]] inline void dot_rows(const float* __restrict__ xs, const uint16_t* __restrict__ w, int64_t K,
                                           int64_t n0, const float* __restrict__ bias, float* __restrict__ yr) {
  F32x16 acc[R] = {};
  int64_t k = 0;
  for (; k + kBlock <= K; k += kBlock) {
    const F32x16 xe = load(xs + k), xo = load(xs + k + kWidth);
    for (int r = 0; r < R; ++r) {
      const uint16_t* wk = w + (n0 + r) * K + k;
      // Four streams at once defeat the hardware prefetcher somewhat: 512 bytes ahead measured 0.47 -> 0.41 ms for
      // the acting step's six GEMVs on one core (a read-only pass over the same bytes: 0.38 ms). A prefetch past the
      // end of the weights is harmless (it never faults).
      __builtin_prefetch(wk + 256);
      F32x16 we, wo;
      widen_pairs(wk, we, wo);
      acc[r] += we * xe + wo * xo;
    }
  }
  for (int r = 0; r < R; ++r) {
    float sum = hsum(acc[r]);
    const uint16_t* wr = w + (n0 + r) * K;
    for (int64_t j = k; j < K; ++j) sum += bf16_to_float(wr[j]) * xs[j];
    yr[n0 + r] = bias[n0 + r] + sum;
  }
}

// Outputs [n0, n1) of every row of x (xs: x's rows through split_pairs, [B, K]).
DF_CPU_CLONES void rows(const float* __restrict__ xs, int64_t B, const uint16_t* __restrict__ w, int64_t K,
                        const float* __restrict__ bias, float* __restrict__ y, int64_t N, int64_t n0, int64_t n1) {
  for (int64_t b = 0; b < B; ++b) {
    const float* xr = xs + b * K;
    float* yr = y + b * N;
    int64_t n = n0;
    for (; n + kRows <= n1; n += kRows) dot_rows<kRows>(xr, w, K, n, bias, yr);
    for (; n < n1; ++n) dot_rows<1>(xr, w, K, n, bias, yr);
  }
}

}  // namespace

at::Tensor linear_bf16_weight(const at::Tensor& x, const at::Tensor& w, const at::Tensor& bias) {
  const int64_t B = x.size(0), K = x.size(1), N = w.size(0);
  at::Tensor y = at::empty({B, N}, x.options());
  if (B == 0 || N == 0) return y;
  const float* xp = x.const_data_ptr<float>();
  const auto* wp = reinterpret_cast<const uint16_t*>(w.const_data_ptr<at::BFloat16>());
  const float* bp = bias.const_data_ptr<float>();
  float* yp = y.mutable_data_ptr<float>();
  at::Tensor xs = at::empty({B, K}, x.options());
  float* xsp = xs.mutable_data_ptr<float>();
  for (int64_t b = 0; b < B; ++b) split_pairs(xp + b * x.stride(0), K, xsp + b * K);
  // A task reads at least ~64 KB of weights: below that a thread's start costs more than the rows save.
  const int64_t grain = std::max<int64_t>(kRows, (int64_t{1} << 15) / std::max<int64_t>(K, 1));
  at::parallel_for(0, N, grain, [&](int64_t n0, int64_t n1) { rows(xsp, B, wp, K, bp, yp, N, n0, n1); });
  return y;
}

}  // namespace dreamer_fast::cpu

#pragma GCC diagnostic pop
