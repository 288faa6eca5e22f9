// Balanced KL loss, CUDA kernels. A warp owns one (position, variable) row: its lanes stride over the K classes and
// combine with warp shuffles (dreamer_fast/kl_balance.h's row math with WarpReduce). Every reduction has a fixed
// order, so results are deterministic (no atomics). Compiled by nvcc (csrc/cuda/kl_balance.cu) and by the host compiler
// against the emulator (csrc/emulated/kl_balance.cpp).
//
// Forward:  `forward` (a block per position, its warps take the S rows, shared memory sums them) -> kl[n];
//           `loss` (one block) -> the free-nats loss from kl.
// Backward: `weights` (one block: mean KL for the free-nats mask, then w_post/w_prior per position);
//           `backward` (a warp per row, grid-stride) -> d post_logits, d prior_logits.
#pragma once

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/util/accumulate.h>

#include <algorithm>

#include "../checks/kl_balance.h"
#include "dreamer_fast/kl_balance.h"
#include "launch.h"
#include "reduce.cuh"

namespace dreamer_fast::DF_KERNEL_NS {
namespace kl_balance_kernels {

constexpr int kWarp = kWarpSize;
constexpr int kMaxWarps = 8;  // warps per block
constexpr int kThreads = kWarp * kMaxWarps;
#ifdef __CUDACC__
constexpr int64_t kMaxBlocks = 1 << 16;  // grid-stride beyond this
#else
constexpr int64_t kMaxBlocks = 2;  // the emulator's tests use small shapes: make them take the grid-stride loops too
#endif

// Reductions across the lanes of a warp. The xor butterfly adds the same pairs in every lane (a + b == b + a), so
// all lanes end with identical bits.
template <typename T>
struct WarpReduce {
  __device__ T max(T v) const { return warp_max(v); }
  __device__ T sum(T v) const { return warp_sum(v); }
};

template <typename scalar_t>
__global__ void forward(const scalar_t* __restrict__ x, const scalar_t* __restrict__ y, scalar_t* __restrict__ kl,
                        int64_t N, int64_t S, int64_t K, double unimix) {
  using acc_t = at::opmath_type<scalar_t>;
  __shared__ acc_t partial[kMaxWarps];
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp, warps = blockDim.x / kWarp;
  const acc_t u = static_cast<acc_t>(unimix);
  for (int64_t n = blockIdx.x; n < N; n += gridDim.x) {
    acc_t sum = acc_t(0);  // this warp's rows; identical in all its lanes
    for (int64_t s = warp; s < S; s += warps) {
      const int64_t o = (n * S + s) * K;
      sum += row_kl<acc_t, kWarp>(x + o, y + o, K, lane, u, WarpReduce<acc_t>{});
    }
    if (lane == 0) partial[warp] = sum;
    __syncthreads();
    if (threadIdx.x == 0) {
      acc_t total = acc_t(0);
      for (int w = 0; w < warps; ++w) total += partial[w];
      kl[n] = static_cast<scalar_t>(total);
    }
    __syncthreads();
  }
}

// Both loss terms have the value clamp(kl); they differ only in where their gradients go. N = 0 gives NaN (0/0).
template <typename scalar_t>
__global__ void loss(const scalar_t* __restrict__ kl, scalar_t* __restrict__ out, int64_t N, double free,
                     bool free_avg, double balance) {
  using acc_t = at::opmath_type<scalar_t>;
  __shared__ acc_t partial[kMaxWarps];
  const acc_t f = static_cast<acc_t>(free);
  acc_t sum = acc_t(0), sum_clamped = acc_t(0);
  for (int64_t n = threadIdx.x; n < N; n += blockDim.x) {
    const acc_t v = static_cast<acc_t>(kl[n]);
    sum += v;
    sum_clamped += free_nats_clamp(v, f);
  }
  sum = block_sum(sum, partial);
  sum_clamped = block_sum(sum_clamped, partial);
  if (threadIdx.x == 0)
    *out = static_cast<scalar_t>(balanced_loss(
        free_avg ? free_nats_clamp(sum / static_cast<acc_t>(N), f) : sum_clamped / static_cast<acc_t>(N), balance));
}

// w[2n] = w_post[n], w[2n + 1] = w_prior[n]. The mean KL is summed exactly as `loss` summed it, so the free-nats
// mask agrees with the forward's clamp. grad_loss is read on the device (no host sync).
template <typename scalar_t>
__global__ void weights(const scalar_t* __restrict__ grad_loss, const scalar_t* __restrict__ grad_kl,
                        const scalar_t* __restrict__ kl, at::opmath_type<scalar_t>* __restrict__ w, int64_t N,
                        double balance, double free, bool free_avg) {
  using acc_t = at::opmath_type<scalar_t>;
  __shared__ acc_t partial[kMaxWarps];
  const acc_t f = static_cast<acc_t>(free), mix = static_cast<acc_t>(1 - balance);
  bool mean_passes = false;
  if (free_avg) {  // uniform across the block
    acc_t sum = acc_t(0);
    for (int64_t n = threadIdx.x; n < N; n += blockDim.x) sum += static_cast<acc_t>(kl[n]);
    mean_passes = free_nats_passes_grad(block_sum(sum, partial) / static_cast<acc_t>(N), f);
  }
  const acc_t gl = static_cast<acc_t>(*grad_loss);
  for (int64_t n = threadIdx.x; n < N; n += blockDim.x) {
    const bool passes = free_avg ? mean_passes : free_nats_passes_grad(static_cast<acc_t>(kl[n]), f);
    kl_grad_weights(static_cast<acc_t>(grad_kl[n]), gl, mix, passes, N, &w[2 * n], &w[2 * n + 1]);
  }
}

template <typename scalar_t>
__global__ void backward(const scalar_t* __restrict__ x, const scalar_t* __restrict__ y,
                         const at::opmath_type<scalar_t>* __restrict__ w, scalar_t* __restrict__ dx,
                         scalar_t* __restrict__ dy, int64_t rows, int64_t S, int64_t K, double unimix) {
  using acc_t = at::opmath_type<scalar_t>;
  const int lane = threadIdx.x % kWarp, warps = blockDim.x / kWarp;
  const acc_t u = static_cast<acc_t>(unimix);
  // The whole warp takes the same rows, so its shuffles never see exited lanes.
  for (int64_t r = static_cast<int64_t>(blockIdx.x) * warps + threadIdx.x / kWarp; r < rows;
       r += static_cast<int64_t>(gridDim.x) * warps) {
    const int64_t n = r / S, o = r * K;
    row_kl_backward<acc_t, kWarp>(x + o, y + o, K, lane, u, w[2 * n], w[2 * n + 1], dx + o, dy + o,
                           WarpReduce<acc_t>{});
  }
}

}  // namespace kl_balance_kernels

std::tuple<at::Tensor, at::Tensor> kl_balance(const at::Tensor& post_logits, const at::Tensor& prior_logits,
                                              double balance, double free, bool free_avg, double unimix) {
  namespace k = kl_balance_kernels;
  check_kl_inputs("kl_balance", post_logits, prior_logits, balance, free, unimix, /*allow_half=*/true);
  const auto lead = post_logits.sizes().slice(0, post_logits.dim() - 2);
  const int64_t S = post_logits.size(-2), K = post_logits.size(-1), N = c10::multiply_integers(lead);
  at::Tensor kl = at::empty(lead, post_logits.options());
  at::Tensor loss = at::empty({}, post_logits.options());
  const int warps = static_cast<int>(std::clamp<int64_t>(S, 1, k::kMaxWarps));  // no idle warps when S is small
  const dim3 grid(static_cast<unsigned>(std::min(N, k::kMaxBlocks)));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, post_logits.scalar_type(), "kl_balance_cuda", [&] {
    launch("kl_balance.forward", k::forward<scalar_t>, grid, dim3(warps * k::kWarp),
           post_logits.const_data_ptr<scalar_t>(), prior_logits.const_data_ptr<scalar_t>(),
           kl.mutable_data_ptr<scalar_t>(), N, S, K, unimix);
    launch("kl_balance.loss", k::loss<scalar_t>, dim3(1), dim3(k::kThreads), kl.const_data_ptr<scalar_t>(),
           loss.mutable_data_ptr<scalar_t>(), N, free, free_avg, balance);
  });
  return {loss, kl};
}

std::tuple<at::Tensor, at::Tensor> kl_balance_backward(const at::Tensor& grad_loss, const at::Tensor& grad_kl,
                                                       const at::Tensor& post_logits, const at::Tensor& prior_logits,
                                                       const at::Tensor& kl, double balance, double free,
                                                       bool free_avg, double unimix) {
  namespace k = kl_balance_kernels;
  check_kl_backward_inputs("kl_balance_backward", grad_loss, grad_kl, post_logits, prior_logits, kl, balance, free,
                           unimix, /*allow_half=*/true);
  const int64_t S = post_logits.size(-2), K = post_logits.size(-1), N = kl.numel(), rows = N * S;
  at::Tensor d_post = at::empty_like(post_logits), d_prior = at::empty_like(prior_logits);
  if (rows == 0) return {d_post, d_prior};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, post_logits.scalar_type(), "kl_balance_backward_cuda",
                                  [&] {
    using acc_t = at::opmath_type<scalar_t>;
    at::Tensor w = at::empty({N, 2}, post_logits.options().dtype(c10::CppTypeToScalarType<acc_t>::value));
    launch("kl_balance.weights", k::weights<scalar_t>, dim3(1), dim3(k::kThreads),
           grad_loss.const_data_ptr<scalar_t>(), grad_kl.const_data_ptr<scalar_t>(), kl.const_data_ptr<scalar_t>(),
           w.mutable_data_ptr<acc_t>(), N, balance, free, free_avg);
    launch("kl_balance.backward", k::backward<scalar_t>,
           dim3(static_cast<unsigned>(std::min<int64_t>(ceil_div(rows, k::kMaxWarps), k::kMaxBlocks))),
           dim3(k::kThreads), post_logits.const_data_ptr<scalar_t>(), prior_logits.const_data_ptr<scalar_t>(),
           w.const_data_ptr<acc_t>(), d_post.mutable_data_ptr<scalar_t>(), d_prior.mutable_data_ptr<scalar_t>(),
           rows, S, K, unimix);
  });
  return {d_post, d_prior};
}

}  // namespace dreamer_fast::DF_KERNEL_NS
