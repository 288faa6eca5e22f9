// λ-return CUDA kernels: one thread per batch column walks the time recursion; neighbouring threads read
// neighbouring columns, so every load and store is coalesced. Compiled by nvcc (csrc/cuda/lambda_return.cu) and by
// the host compiler against the emulator (csrc/emulated/lambda_return.cpp).
#pragma once

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros_like.h>

#include "../checks/lambda_return.h"
#include "dreamer_fast/lambda_return.h"
#include "launch.h"

namespace dreamer_fast::DF_KERNEL_NS {
namespace lambda_return_kernels {

constexpr int kThreads = 256;

template <typename scalar_t>
__global__ void forward(const scalar_t* __restrict__ r, const scalar_t* __restrict__ v,
                        const scalar_t* __restrict__ d, const scalar_t* __restrict__ boot, scalar_t* __restrict__ R,
                        int64_t T, int64_t B, double lam_) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t b = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (b >= B) return;
  const LambdaCoef<acc_t> lam = lambda_coef<acc_t>(lam_);
  acc_t ret_next = static_cast<acc_t>(boot[b]);
  acc_t v_next = ret_next;
  for (int64_t t = T - 1; t >= 0; --t) {
    const int64_t i = t * B + b;
    const acc_t ret = lambda_step<acc_t>(r[i], d[i], v_next, ret_next, lam);
    R[i] = static_cast<scalar_t>(ret);
    ret_next = ret;
    v_next = static_cast<acc_t>(v[i]);
  }
}

template <typename scalar_t>
__global__ void backward(const scalar_t* __restrict__ g, const scalar_t* __restrict__ R,
                         const scalar_t* __restrict__ v, const scalar_t* __restrict__ d,
                         const scalar_t* __restrict__ boot, scalar_t* __restrict__ dr, scalar_t* __restrict__ dv,
                         scalar_t* __restrict__ dd, scalar_t* __restrict__ db, int64_t T, int64_t B, double lam_) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t b = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (b >= B) return;
  const LambdaCoef<acc_t> lam = lambda_coef<acc_t>(lam_);
  acc_t G = 0;
  acc_t d_prev = 0;
  dv[b] = scalar_t(0);
  for (int64_t t = 0; t < T; ++t) {
    const int64_t i = t * B + b;
    const bool last = t == T - 1;
    const acc_t disc = d[i];
    G = t > 0 ? lambda_total_grad<acc_t>(g[i], G, d_prev, lam) : static_cast<acc_t>(g[i]);
    const acc_t v_next = last ? static_cast<acc_t>(boot[b]) : static_cast<acc_t>(v[i + B]);
    const acc_t r_next = last ? static_cast<acc_t>(boot[b]) : static_cast<acc_t>(R[i + B]);
    acc_t gr, gd, gv;
    lambda_step_backward<acc_t>(G, disc, v_next, r_next, lam, &gr, &gd, &gv);
    dr[i] = static_cast<scalar_t>(gr);
    dd[i] = static_cast<scalar_t>(gd);
    if (last)
      db[b] = static_cast<scalar_t>(lambda_bootstrap_grad(G, disc, lam));
    else
      dv[i + B] = static_cast<scalar_t>(gv);
    d_prev = disc;
  }
}

}  // namespace lambda_return_kernels

at::Tensor lambda_return(const at::Tensor& reward, const at::Tensor& value, const at::Tensor& discount,
                         const at::Tensor& bootstrap, double lam) {
  namespace k = lambda_return_kernels;
  check_lambda_return_inputs("lambda_return", /*allow_half=*/true, reward, value, discount, bootstrap);
  const int64_t T = reward.size(0), B = reward.size(1);
  at::Tensor ret = at::empty_like(reward);
  if (T == 0 || B == 0) return ret;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, reward.scalar_type(), "lambda_return_cuda", [&] {
    launch("lambda_return.forward", k::forward<scalar_t>, dim3(ceil_div(B, k::kThreads)), dim3(k::kThreads),
           reward.const_data_ptr<scalar_t>(), value.const_data_ptr<scalar_t>(), discount.const_data_ptr<scalar_t>(),
           bootstrap.const_data_ptr<scalar_t>(), ret.mutable_data_ptr<scalar_t>(), T, B, lam);
  });
  return ret;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> lambda_return_backward(
    const at::Tensor& grad, const at::Tensor& ret, const at::Tensor& value, const at::Tensor& discount,
    const at::Tensor& bootstrap, double lam) {
  namespace k = lambda_return_kernels;
  const char* op = "lambda_return_backward";
  check_lambda_return_inputs(op, /*allow_half=*/true, grad, value, discount, bootstrap);
  check_same(op, "ret", ret, grad, "grad");
  check_shape(op, "ret", ret, grad.sizes());
  const int64_t T = grad.size(0), B = grad.size(1);
  at::Tensor d_reward = at::empty_like(grad), d_value = at::empty_like(grad), d_discount = at::empty_like(grad);
  at::Tensor d_boot = at::zeros_like(bootstrap);
  if (T == 0 || B == 0) return {d_reward, d_value.zero_(), d_discount, d_boot};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "lambda_return_backward_cuda", [&] {
    launch("lambda_return.backward", k::backward<scalar_t>, dim3(ceil_div(B, k::kThreads)), dim3(k::kThreads),
           grad.const_data_ptr<scalar_t>(), ret.const_data_ptr<scalar_t>(), value.const_data_ptr<scalar_t>(),
           discount.const_data_ptr<scalar_t>(), bootstrap.const_data_ptr<scalar_t>(),
           d_reward.mutable_data_ptr<scalar_t>(), d_value.mutable_data_ptr<scalar_t>(),
           d_discount.mutable_data_ptr<scalar_t>(), d_boot.mutable_data_ptr<scalar_t>(), T, B, lam);
  });
  return {d_reward, d_value, d_discount, d_boot};
}

}  // namespace dreamer_fast::DF_KERNEL_NS
