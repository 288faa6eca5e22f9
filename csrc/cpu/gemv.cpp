// See gemv.h. Four weight rows at a time, 32 weights of each per step, multiplied with x's row into the row's own
// 16-wide float32 accumulator (GCC vector types, compiled for AVX-512 and AVX2 by clones.h), which is then summed as a
// tree. bfloat16 weights are widened to float32 with integer shifts and masks (widen_pairs), which gives the even-
// and odd-indexed weights of a block: x's row is permuted to match once per call (split_pairs). For B > 1 each block
// of weight rows meets every row of x in turn (from L1 after the first), so the weights are read once per call.
#include "gemv.h"

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
DF_FORCE_INLINE void widen_pairs(const uint16_t* w, F32x16& even, F32x16& odd) {
  U32x16 u;
  std::memcpy(&u, w, sizeof u);
  const U32x16 e = u << 16, o = u & 0xffff0000u;
  std::memcpy(&even, &e, sizeof even);
  std::memcpy(&odd, &o, sizeof odd);
}

DF_FORCE_INLINE F32x16 load(const float* x) {
  F32x16 v;
  std::memcpy(&v, x, sizeof v);
  return v;
}

// A block of 32 weights as two float32 vectors, matched with x's row as passed to dot_rows: bfloat16 weights as
// widen_pairs splits them (x through split_pairs), float32 weights as they lie (x as it is).
DF_FORCE_INLINE void load_block(const uint16_t* w, F32x16& first, F32x16& second) {
  widen_pairs(w, first, second);
}
DF_FORCE_INLINE void load_block(const float* w, F32x16& first, F32x16& second) {
  first = load(w);
  second = load(w + kWidth);
}

DF_FORCE_INLINE float to_float(uint16_t w) { return bf16_to_float(w); }
DF_FORCE_INLINE float to_float(float w) { return w; }

// The lanes' sum as a tree (halving the vector): 4 dependent adds instead of 16.
DF_FORCE_INLINE float hsum(F32x16 v) {
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
constexpr int kBlock = 2 * kWidth;  // weights per step of a row: 64 bytes of bfloat16, 128 of float32
constexpr int kPrefetchBytes = 512;

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

// Outputs [n0, n0 + R) of one row of x (xs: that row, through split_pairs for bfloat16 weights).
template <int R, typename W>
DF_FORCE_INLINE void dot_rows(const float* __restrict__ xs, const W* __restrict__ w, int64_t K,
                                           int64_t n0, const float* __restrict__ bias, float* __restrict__ yr) {
  F32x16 acc[R] = {};
  int64_t k = 0;
  for (; k + kBlock <= K; k += kBlock) {
    const F32x16 xe = load(xs + k), xo = load(xs + k + kWidth);
    for (int r = 0; r < R; ++r) {
      const W* wk = w + (n0 + r) * K + k;
      // Four streams at once defeat the hardware prefetcher somewhat: 512 bytes ahead measured 0.47 -> 0.41 ms for
      // the acting step's six bfloat16 GEMVs on one core (a read-only pass over the same bytes: 0.38 ms). A prefetch
      // past the end of the weights is harmless (it never faults).
      __builtin_prefetch(reinterpret_cast<const char*>(wk) + kPrefetchBytes);
      F32x16 w0, w1;
      load_block(wk, w0, w1);
      acc[r] += w0 * xe + w1 * xo;
    }
  }
  for (int r = 0; r < R; ++r) {
    float sum = hsum(acc[r]);
    const W* wr = w + (n0 + r) * K;
    for (int64_t j = k; j < K; ++j) sum += to_float(wr[j]) * xs[j];
    yr[n0 + r] = bias[n0 + r] + sum;
  }
}

// Outputs [n0, n1) of every row of x (xs: x's rows, `ldx` apart, through split_pairs for bfloat16 weights).
template <typename W>
DF_CPU_KERNEL void rows(const float* __restrict__ xs, int64_t ldx, int64_t B, const W* __restrict__ w, int64_t K,
                        const float* __restrict__ bias, float* __restrict__ y, int64_t N, int64_t n0, int64_t n1) {
  // Every row of x against one block of weight rows before the next block: the block is read from memory once and
  // from L1/L2 for the other rows of x.
  int64_t n = n0;
  for (; n + kRows <= n1; n += kRows)
    for (int64_t b = 0; b < B; ++b) dot_rows<kRows>(xs + b * ldx, w, K, n, bias, y + b * N);
  for (; n < n1; ++n)
    for (int64_t b = 0; b < B; ++b) dot_rows<1>(xs + b * ldx, w, K, n, bias, y + b * N);
}

}  // namespace

at::Tensor linear_gemv(const at::Tensor& x, const at::Tensor& w, const at::Tensor& bias) {
  const int64_t B = x.size(0), K = x.size(1), N = w.size(0);
  at::Tensor y = at::empty({B, N}, x.options());
  if (B == 0 || N == 0) return y;
  const float* xp = x.const_data_ptr<float>();
  const float* bp = bias.const_data_ptr<float>();
  float* yp = y.mutable_data_ptr<float>();
  // A task reads at least ~64 KB of weights: below that a thread's start costs more than the rows save.
  const int64_t grain = std::max<int64_t>(kRows, (int64_t{1} << 15) / std::max<int64_t>(K, 1));
  if (w.scalar_type() == at::kFloat) {
    const float* wp = w.const_data_ptr<float>();
    at::parallel_for(0, N, grain, [&](int64_t n0, int64_t n1) {
      DF_CPU_DISPATCH(rows(xp, x.stride(0), B, wp, K, bp, yp, N, n0, n1));
    });
    return y;
  }
  const auto* wp = reinterpret_cast<const uint16_t*>(w.const_data_ptr<at::BFloat16>());
  at::Tensor xs = at::empty({B, K}, x.options());
  float* xsp = xs.mutable_data_ptr<float>();
  for (int64_t b = 0; b < B; ++b) split_pairs(xp + b * x.stride(0), K, xsp + b * K);
  at::parallel_for(0, N, grain,
                   [&](int64_t n0, int64_t n1) { DF_CPU_DISPATCH(rows(xsp, K, B, wp, K, bp, yp, N, n0, n1)); });
  return y;
}

}  // namespace dreamer_fast::cpu

#pragma GCC diagnostic pop
