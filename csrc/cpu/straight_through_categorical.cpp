// Straight-through categorical sampling on the CPU: at::parallel_for over rows, in blocks of kBlock rows taken phase
// by phase (max, exp + sum, mix, draw, one-hot). A row alone is one long dependency chain (max -> exp -> sum ->
// divide -> mix -> cumsum); side by side, the block's rows overlap their chains. Loops over K are vectorised; row
// reductions use the CUDA warp's lane order (lanes.h) and the draw the sequential cumsum, so the CPU kernels produce
// exactly the emulated CUDA kernels' probs and samples.
//
// Compiler settings: GCC vectorises the branchless exp (dreamer_fast/math.h) only without -ftrapping-math, so this
// file turns it off (the pragma must precede every include, or the header functions would not inline into ours); the
// row loops are cloned for AVX-512 and AVX2 beside the baseline build, the CPU profile choosing at each call
// (clones.h); and a*b+c is not contracted into an FMA (which those clones could use), so every clone rounds as the
// emulated kernel does.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("no-trapping-math", "fp-contract=off")
#pragma GCC diagnostic ignored "-Wpsabi"  // vector arguments never cross a call here (see lanes.h)
#endif

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros_like.h>

#include <algorithm>
#include <limits>

#include "../ops.h"
#include "../checks/straight_through_categorical.h"
#include "dreamer_fast/straight_through_categorical.h"
#include "clones.h"
#include "lanes.h"


namespace dreamer_fast::cpu {
namespace {

namespace cat = categorical;
using lanes::kLanes;
constexpr int kBlock = 16;      // rows side by side
constexpr int64_t kGrain = 64;  // rows per parallel task
constexpr int kFixedK = 32;     // DreamerV2's class count, compiled with K known

template <typename T>
struct Forward {
  const T* logits;
  const T* noise;  // nullptr: draw stream element offset + row under key `seed`
  T* sample;
  T* probs;
  int64_t K;
  uint64_t seed;
  T unimix;
  uint64_t offset = 0;
};

// The max of a row. Its order does not change its value, so unlike the sums it need not follow the warp's: 32 lanes
// (vectors), folded to 8, then a scalar loop.
template <typename T>
DF_FORCE_INLINE T row_max(const T* __restrict__ x, int64_t K) {
  T m[kLanes];
  std::fill_n(m, kLanes, -std::numeric_limits<T>::infinity());
  for (int64_t k0 = 0; k0 < K; k0 += kLanes) {
    const int n = static_cast<int>(std::min<int64_t>(kLanes, K - k0));
    for (int l = 0; l < n; ++l) m[l] = cat::larger(m[l], x[k0 + l]);
  }
  for (int l = 0; l < 16; ++l) m[l] = cat::larger(m[l], m[l + 16]);
  for (int l = 0; l < 8; ++l) m[l] = cat::larger(m[l], m[l + 8]);
  T result = m[0];
  for (int l = 1; l < 8; ++l) result = cat::larger(result, m[l]);
  return result;
}

// Rows [b0, b0 + nb) of the forward; kK > 0 and kNb > 0 fix K and nb at compile time.
template <int kK, int kNb, typename T>
DF_FORCE_INLINE void forward_block(const Forward<T>& a, int64_t b0, int nb_) {
  const int64_t K = kK > 0 ? kK : a.K;
  const int nb = kNb > 0 ? kNb : nb_;
  const T* __restrict__ x = a.logits + b0 * K;
  T* __restrict__ p = a.probs + b0 * K;
  T* __restrict__ s = a.sample + b0 * K;
  T max[kBlock], total[kBlock], nan[kBlock];
  cat::Cdf u[kBlock], c[kBlock];
  int index[kBlock];

  for (int r = 0; r < nb; ++r) max[r] = row_max(x + r * K, K);
  for (int r = 0; r < nb; ++r) {
    T* __restrict__ pr = p + r * K;
    for (int64_t k = 0; k < K; ++k) pr[k] = cat::shifted_exp(x[r * K + k], max[r]);  // probs holds exp until mixed
    lanes::Vec<T> acc = lanes::splat(T(0));
    for (int64_t k0 = 0; k0 < K; k0 += kLanes) acc += lanes::load(pr, k0, K, T(0));
    total[r] = lanes::reduce<T, kLanes>(acc, lanes::Sum{});
  }
  for (int r = 0; r < nb; ++r) {
    const cat::Mix<T> mix = cat::mix(total[r], a.unimix, K);
    nan[r] = cat::poison(mix);
    for (int64_t k = 0; k < K; ++k) p[r * K + k] = cat::prob(p[r * K + k], mix);
  }
  if (a.noise)
    for (int r = 0; r < nb; ++r) u[r] = a.noise[b0 + r];
  else  // a loop of its own, so that it vectorises across rows
    for (int r = 0; r < nb; ++r) u[r] = cat::row_uniform<T>(a.seed, a.offset + static_cast<uint64_t>(b0 + r));
  for (int r = 0; r < nb; ++r) {
    c[r] = 0;
    index[r] = 0;
  }
  for (int64_t k = 0; k < K - 1; ++k)
    for (int r = 0; r < nb; ++r) index[r] += cat::draw_step(c[r], p[r * K + k], u[r]);
  for (int r = 0; r < nb; ++r)
    for (int64_t k = 0; k < K; ++k) s[r * K + k] = static_cast<T>(k == index[r]) + nan[r];
}

template <int kK, typename T>
DF_FORCE_INLINE void forward_rows_k(const Forward<T>& a, int64_t r0, int64_t r1) {
  int64_t b0 = r0;
  for (; b0 + kBlock <= r1; b0 += kBlock) forward_block<kK, kBlock>(a, b0, kBlock);
  if (b0 < r1) forward_block<kK, 0>(a, b0, static_cast<int>(r1 - b0));
}

template <typename T>
DF_FORCE_INLINE void forward_rows_impl(const Forward<T>& a, int64_t r0, int64_t r1) {
  a.K == kFixedK ? forward_rows_k<kFixedK>(a, r0, r1) : forward_rows_k<0>(a, r0, r1);
}

DF_CPU_KERNEL void forward_rows(const Forward<float>& a, int64_t r0, int64_t r1) { forward_rows_impl(a, r0, r1); }
DF_CPU_KERNEL void forward_rows(const Forward<double>& a, int64_t r0, int64_t r1) { forward_rows_impl(a, r0, r1); }

template <typename T>
struct Backward {
  const T* grad_a;  // grad_sample and/or grad_probs: g = grad_a (+ grad_b)
  const T* grad_b;  // nullptr when only one gradient is given
  const T* probs;
  T* grad_logits;
  int64_t K;
  T unimix;
};

template <int kK, int kNb, bool kTwo, typename T>
DF_FORCE_INLINE void backward_block(const Backward<T>& a, int64_t b0, int nb_) {
  const int64_t K = kK > 0 ? kK : a.K;
  const int nb = kNb > 0 ? kNb : nb_;
  const T* __restrict__ p = a.probs + b0 * K;
  const T* __restrict__ ga = a.grad_a + b0 * K;
  const T* __restrict__ gb = kTwo ? a.grad_b + b0 * K : nullptr;
  T* __restrict__ d = a.grad_logits + b0 * K;
  const T floor = a.unimix / static_cast<T>(K);
  T shift[kBlock];
  for (int r = 0; r < nb; ++r) {
    const int64_t o = r * K;
    lanes::Vec<T> acc = lanes::splat(T(0));
    for (int64_t k0 = 0; k0 < K; k0 += kLanes) {
      // Lanes past K: (floor - floor) * 0 adds an exact zero.
      lanes::Vec<T> g = lanes::load(ga + o, k0, K, T(0));
      if constexpr (kTwo) g += lanes::load(gb + o, k0, K, T(0));
      acc += (lanes::load(p + o, k0, K, floor) - floor) * g;
    }
    shift[r] = cat::grad_shift(lanes::reduce<T, kLanes>(acc, lanes::Sum{}), a.unimix);
  }
  for (int r = 0; r < nb; ++r)
    for (int64_t k = r * K; k < (r + 1) * K; ++k)
      d[k] = cat::grad_logit(p[k], floor, kTwo ? ga[k] + gb[k] : ga[k], shift[r]);
}

template <int kK, bool kTwo, typename T>
DF_FORCE_INLINE void backward_rows_k(const Backward<T>& a, int64_t r0, int64_t r1) {
  int64_t b0 = r0;
  for (; b0 + kBlock <= r1; b0 += kBlock) backward_block<kK, kBlock, kTwo>(a, b0, kBlock);
  if (b0 < r1) backward_block<kK, 0, kTwo>(a, b0, static_cast<int>(r1 - b0));
}

template <typename T>
DF_FORCE_INLINE void backward_rows_impl(const Backward<T>& a, int64_t r0, int64_t r1) {
  const bool fixed = a.K == kFixedK, two = a.grad_b != nullptr;
  if (fixed && two) return backward_rows_k<kFixedK, true>(a, r0, r1);
  if (fixed) return backward_rows_k<kFixedK, false>(a, r0, r1);
  if (two) return backward_rows_k<0, true>(a, r0, r1);
  backward_rows_k<0, false>(a, r0, r1);
}

DF_CPU_KERNEL void backward_rows(const Backward<float>& a, int64_t r0, int64_t r1) { backward_rows_impl(a, r0, r1); }
DF_CPU_KERNEL void backward_rows(const Backward<double>& a, int64_t r0, int64_t r1) { backward_rows_impl(a, r0, r1); }

}  // namespace

std::tuple<at::Tensor, at::Tensor> straight_through_categorical(const at::Tensor& logits,
                                                                const std::optional<at::Tensor>& noise,
                                                                const at::Tensor& seed, double unimix) {
  const uint64_t seed_value = st_checks::forward(logits, noise, seed, unimix, /*allow_half=*/false);
  at::Tensor sample = at::empty_like(logits), probs = at::empty_like(logits);
  const int64_t K = logits.size(-1), N = logits.numel() / K;
  if (N == 0) return {sample, probs};
  AT_DISPATCH_FLOATING_TYPES(logits.scalar_type(), "straight_through_categorical_cpu", [&] {
    const Forward<scalar_t> args{logits.const_data_ptr<scalar_t>(),
                                 noise ? noise->const_data_ptr<scalar_t>() : nullptr,
                                 sample.mutable_data_ptr<scalar_t>(),
                                 probs.mutable_data_ptr<scalar_t>(),
                                 K,
                                 seed_value,
                                 static_cast<scalar_t>(unimix)};
    at::parallel_for(0, N, kGrain, [&](int64_t r0, int64_t r1) { DF_CPU_DISPATCH(forward_rows(args, r0, r1)); });
  });
  return {sample, probs};
}

std::tuple<at::Tensor, at::Tensor> straight_through_categorical_stream(const at::Tensor& logits, at::Tensor& stream,
                                                                       double unimix) {
  st_checks::stream_forward(logits, stream, unimix, /*allow_half=*/false);
  at::Tensor sample = at::empty_like(logits), probs = at::empty_like(logits);
  const int64_t K = logits.size(-1), N = logits.numel() / K;
  int64_t* state = stream.mutable_data_ptr<int64_t>();
  const uint64_t key = static_cast<uint64_t>(state[0]), offset = static_cast<uint64_t>(state[1]);
  if (N > 0) {
    AT_DISPATCH_FLOATING_TYPES(logits.scalar_type(), "straight_through_categorical_stream_cpu", [&] {
      const Forward<scalar_t> args{logits.const_data_ptr<scalar_t>(),
                                   nullptr,
                                   sample.mutable_data_ptr<scalar_t>(),
                                   probs.mutable_data_ptr<scalar_t>(),
                                   K,
                                   key,
                                   static_cast<scalar_t>(unimix),
                                   offset};
      at::parallel_for(0, N, kGrain, [&](int64_t r0, int64_t r1) { DF_CPU_DISPATCH(forward_rows(args, r0, r1)); });
    });
  }
  state[1] = static_cast<int64_t>(offset + static_cast<uint64_t>(N));  // unsigned: the offset wraps, never overflows
  return {sample, probs};
}

at::Tensor straight_through_categorical_backward(const std::optional<at::Tensor>& grad_sample,
                                                 const std::optional<at::Tensor>& grad_probs,
                                                 const at::Tensor& probs, double unimix) {
  st_checks::backward(grad_sample, grad_probs, probs, unimix, /*allow_half=*/false);
  const int64_t K = probs.size(-1), N = probs.numel() / K;
  // No incoming gradient: zero. Constant probs (one class, or unimix = 1): zero, NaN where the probs are NaN (as the
  // reference's softmax backward).
  if (N == 0 || !(grad_sample || grad_probs)) return at::zeros_like(probs);
  if (K == 1 || unimix == 1.0) return probs.mul(0);
  at::Tensor grad_logits = at::empty_like(probs);
  const at::Tensor& ga = grad_sample ? *grad_sample : *grad_probs;
  const bool two = grad_sample && grad_probs;
  AT_DISPATCH_FLOATING_TYPES(probs.scalar_type(), "straight_through_categorical_backward_cpu", [&] {
    const Backward<scalar_t> args{ga.const_data_ptr<scalar_t>(),
                                  two ? grad_probs->const_data_ptr<scalar_t>() : nullptr,
                                  probs.const_data_ptr<scalar_t>(),
                                  grad_logits.mutable_data_ptr<scalar_t>(),
                                  K,
                                  static_cast<scalar_t>(unimix)};
    at::parallel_for(0, N, kGrain, [&](int64_t r0, int64_t r1) { DF_CPU_DISPATCH(backward_rows(args, r0, r1)); });
  });
  return grad_logits;
}

}  // namespace dreamer_fast::cpu
