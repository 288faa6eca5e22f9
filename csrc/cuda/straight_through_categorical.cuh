// Straight-through categorical CUDA kernels: one warp per row, kWarps rows per block. Lanes stride over K
// (lane l takes k = l, l + 32, ...: coalesced), max and sum are xor-shuffle butterflies. Compiled by nvcc
// (csrc/cuda/straight_through_categorical.cu) and by the host compiler against the emulator
// (csrc/emulated/straight_through_categorical.cpp).
//
// The draw needs the inclusive cumsum of probs. A shuffle scan would add in another order than the CPU kernel's
// sequential cumsum and could move a sample across a class boundary in the last bit, so instead each chunk of 32
// probs goes to shared memory and lane l sums p[0..l] sequentially (32 dependent adds per chunk, off the memory
// path): the same additions in the same order as the CPU, so CPU and emulated CUDA kernels draw identical samples.
#pragma once

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/add.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/narrow.h>
#include <ATen/ops/zeros_like.h>

#include <cmath>
#include <cstdint>
#include <limits>

#include "../checks/straight_through_categorical.h"
#include "dreamer_fast/straight_through_categorical.h"
#include "launch.h"
#include "reduce.cuh"

namespace dreamer_fast::DF_KERNEL_NS {
namespace straight_through_categorical_kernels {

namespace cat = categorical;
constexpr int kLanes = cat::kLanes;
constexpr int kWarps = 8;  // rows per block
constexpr unsigned kAll = 0xffffffffu;

// The row max through reduce.cuh's butterfly with cat::larger (one compare and select, as the CPU kernels' max); the
// row sums through its warp_sum. Every lane ends with the result of lane 0, which equals cat::reduce_lanes on the CPU.
template <typename T>
__device__ T warp_larger(T v) {
  return warp_reduce(v, [](T a, T b) { return cat::larger(a, b); });
}

template <typename scalar_t>
__global__ void forward(const scalar_t* __restrict__ logits, const scalar_t* __restrict__ noise, uint64_t seed,
                        const int64_t* __restrict__ stream, double unimix, int64_t N, int64_t K,
                        scalar_t* __restrict__ sample, scalar_t* __restrict__ probs) {
  using acc_t = at::opmath_type<scalar_t>;
  __shared__ cat::Cdf chunk[kWarps][kLanes];  // one chunk of a row's probs per warp, for the sequential cumsum
  const int warp = threadIdx.x / kLanes, lane = threadIdx.x % kLanes;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kWarps + warp;
  if (row >= N) return;  // whole warps leave together
  const scalar_t* x = logits + row * K;

  acc_t m = -std::numeric_limits<acc_t>::infinity();
  for (int64_t k = lane; k < K; k += kLanes) m = cat::larger(m, static_cast<acc_t>(x[k]));
  m = warp_larger(m);
  acc_t sum = 0;
  for (int64_t k = lane; k < K; k += kLanes) sum += cat::shifted_exp(static_cast<acc_t>(x[k]), m);
  const cat::Mix<acc_t> mix = cat::mix(warp_sum(sum), static_cast<acc_t>(unimix), K);
  // With a stream, key and offset are read on the device (the launch's arguments stay the same at every replay).
  const uint64_t key = stream ? static_cast<uint64_t>(stream[0]) : seed;
  const uint64_t element = (stream ? static_cast<uint64_t>(stream[1]) : 0) + static_cast<uint64_t>(row);
  const cat::Cdf u = noise ? static_cast<cat::Cdf>(noise[row])
                           : static_cast<cat::Cdf>(cat::row_uniform<acc_t>(key, element));

  cat::Cdf carry = 0;  // cumsum up to the previous chunk
  int count = 0;       // this lane's share of the number of prefixes <= u
  for (int64_t k0 = 0; k0 < K; k0 += kLanes) {
    const int64_t k = k0 + lane;
    scalar_t p = 0;  // the prob as returned: the draw sums exactly the probs the caller sees
    if (k < K) {
      p = static_cast<scalar_t>(cat::prob(cat::shifted_exp(static_cast<acc_t>(x[k]), m), mix));
      probs[row * K + k] = p;
    }
    chunk[warp][lane] = static_cast<cat::Cdf>(p);
    __syncwarp();
    cat::Cdf c = carry;
    for (int i = 0; i <= lane; ++i) c += chunk[warp][i];
    count += (k < K - 1 && c <= u);
    carry = __shfl_sync(kAll, c, kLanes - 1);
    __syncwarp();  // everyone has read the chunk before the next one overwrites it
  }
  const int index = warp_sum(count);
  const acc_t nan = cat::poison(mix);
  for (int64_t k = lane; k < K; k += kLanes)
    sample[row * K + k] = static_cast<scalar_t>(static_cast<acc_t>(k == index) + nan);
}

// g = grad_a (+ grad_b when kTwo): the gradients of sample and probs, whichever were given.
template <typename scalar_t, bool kTwo>
__global__ void backward(const scalar_t* __restrict__ grad_a, const scalar_t* __restrict__ grad_b,
                         const scalar_t* __restrict__ probs, double unimix_, int64_t N, int64_t K,
                         scalar_t* __restrict__ grad_logits) {
  using acc_t = at::opmath_type<scalar_t>;
  const int warp = threadIdx.x / kLanes, lane = threadIdx.x % kLanes;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kWarps + warp;
  if (row >= N) return;
  const int64_t o = row * K;
  const acc_t unimix = static_cast<acc_t>(unimix_);
  const acc_t floor = unimix / static_cast<acc_t>(K);
  auto g = [&](int64_t k) {
    const acc_t a = static_cast<acc_t>(grad_a[o + k]);
    return kTwo ? a + static_cast<acc_t>(grad_b[o + k]) : a;
  };
  acc_t dot = 0;
  for (int64_t k = lane; k < K; k += kLanes) dot += (static_cast<acc_t>(probs[o + k]) - floor) * g(k);
  const acc_t shift = cat::grad_shift(warp_sum(dot), unimix);
  for (int64_t k = lane; k < K; k += kLanes)
    grad_logits[o + k] = static_cast<scalar_t>(cat::grad_logit(static_cast<acc_t>(probs[o + k]), floor, g(k), shift));
}

inline unsigned blocks_for(const char* op, int64_t rows) {
  TORCH_CHECK(rows / kWarps < (int64_t{1} << 31) - 1, op, ": too many rows for one launch (", rows, ")");
  return ceil_div(rows, kWarps);
}

}  // namespace straight_through_categorical_kernels

std::tuple<at::Tensor, at::Tensor> straight_through_categorical(const at::Tensor& logits,
                                                                const std::optional<at::Tensor>& noise,
                                                                const at::Tensor& seed, double unimix) {
  namespace k = straight_through_categorical_kernels;
  const uint64_t seed_value = st_checks::forward(logits, noise, seed, unimix, /*allow_half=*/true);
  at::Tensor sample = at::empty_like(logits), probs = at::empty_like(logits);
  const int64_t K = logits.size(-1), N = logits.numel() / K;
  if (N == 0) return {sample, probs};
  const unsigned blocks = k::blocks_for("straight_through_categorical", N);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "straight_through_categorical_cuda",
                                  [&] {
                                    launch("straight_through_categorical.forward", k::forward<scalar_t>, dim3(blocks),
                                           dim3(k::kWarps * k::kLanes), logits.const_data_ptr<scalar_t>(),
                                           noise ? noise->const_data_ptr<scalar_t>() : nullptr, seed_value,
                                           static_cast<const int64_t*>(nullptr), unimix, N, K,
                                           sample.mutable_data_ptr<scalar_t>(),
                                           probs.mutable_data_ptr<scalar_t>());
                                  });
  return {sample, probs};
}

std::tuple<at::Tensor, at::Tensor> straight_through_categorical_stream(const at::Tensor& logits, at::Tensor& stream,
                                                                       double unimix) {
  namespace k = straight_through_categorical_kernels;
  st_checks::stream_forward(logits, stream, unimix, /*allow_half=*/true);
  at::Tensor sample = at::empty_like(logits), probs = at::empty_like(logits);
  const int64_t K = logits.size(-1), N = logits.numel() / K;
  if (N > 0) {
    const unsigned blocks = k::blocks_for("straight_through_categorical_stream", N);
    AT_DISPATCH_FLOATING_TYPES_AND2(
        at::kHalf, at::kBFloat16, logits.scalar_type(), "straight_through_categorical_stream_cuda", [&] {
          launch("straight_through_categorical.forward", k::forward<scalar_t>, dim3(blocks),
                 dim3(k::kWarps * k::kLanes), logits.const_data_ptr<scalar_t>(), static_cast<const scalar_t*>(nullptr),
                 uint64_t{0}, stream.const_data_ptr<int64_t>(), unimix, N, K, sample.mutable_data_ptr<scalar_t>(),
                 probs.mutable_data_ptr<scalar_t>());
        });
  }
  // Advanced after the launch, in stream order: every block has read the offset before it moves.
  stream.narrow(0, 1, 1).add_(N);
  return {sample, probs};
}

at::Tensor straight_through_categorical_backward(const std::optional<at::Tensor>& grad_sample,
                                                 const std::optional<at::Tensor>& grad_probs,
                                                 const at::Tensor& probs, double unimix) {
  namespace k = straight_through_categorical_kernels;
  st_checks::backward(grad_sample, grad_probs, probs, unimix, /*allow_half=*/true);
  const int64_t K = probs.size(-1), N = probs.numel() / K;
  // No incoming gradient: zero. Constant probs (one class, or unimix = 1): zero, NaN where the probs are NaN (as the
  // reference's softmax backward).
  if (N == 0 || !(grad_sample || grad_probs)) return at::zeros_like(probs);
  if (K == 1 || unimix == 1.0) return probs.mul(0);
  at::Tensor grad_logits = at::empty_like(probs);
  const at::Tensor& ga = grad_sample ? *grad_sample : *grad_probs;
  const bool two = grad_sample && grad_probs;
  const unsigned blocks = k::blocks_for("straight_through_categorical_backward", N);
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, probs.scalar_type(), "straight_through_categorical_backward_cuda", [&] {
        const scalar_t* gb = two ? grad_probs->const_data_ptr<scalar_t>() : nullptr;
        auto kernel = two ? k::backward<scalar_t, true> : k::backward<scalar_t, false>;
        launch("straight_through_categorical.backward", kernel, dim3(blocks), dim3(k::kWarps * k::kLanes),
               ga.const_data_ptr<scalar_t>(), gb, probs.const_data_ptr<scalar_t>(), unimix, N, K,
               grad_logits.mutable_data_ptr<scalar_t>());
      });
  return grad_logits;
}

}  // namespace dreamer_fast::DF_KERNEL_NS
