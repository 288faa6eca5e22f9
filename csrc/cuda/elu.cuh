// ELU CUDA kernels: grid-stride loops over the elements, one thread per element per pass (coalesced). Compiled by nvcc
// (csrc/cuda/elu.cu) and by the host compiler against the emulator (csrc/emulated/elu.cpp). The math is
// dreamer_fast/elu.h, as on the CPU; half types are widened to float.
#pragma once

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>

#include <algorithm>

#include "../elu_checks.h"
#include "dreamer_fast/elu.h"
#include "launch.h"

namespace dreamer_fast::DF_KERNEL_NS {
namespace elu_kernels {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = 4096;  // grid-stride beyond this

template <typename scalar_t>
__global__ void forward(const scalar_t* __restrict__ x, scalar_t* __restrict__ y, int64_t n) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t stride = static_cast<int64_t>(blockDim.x) * gridDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride)
    y[i] = static_cast<scalar_t>(elu::forward(static_cast<acc_t>(x[i])));
}

template <typename scalar_t>
__global__ void backward(const scalar_t* __restrict__ g, const scalar_t* __restrict__ y, scalar_t* __restrict__ dx,
                         int64_t n) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t stride = static_cast<int64_t>(blockDim.x) * gridDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride)
    dx[i] = static_cast<scalar_t>(elu::backward(static_cast<acc_t>(g[i]), static_cast<acc_t>(y[i])));
}

inline dim3 grid_for(int64_t n) {
  return dim3(static_cast<unsigned>(std::min<int64_t>(ceil_div(n, kThreads), kMaxBlocks)));
}

}  // namespace elu_kernels

at::Tensor elu(const at::Tensor& x) {
  namespace k = elu_kernels;
  elu_checks::forward(x);
  at::Tensor y = at::empty_like(x);
  const int64_t n = x.numel();
  if (n == 0) return y;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "elu_cuda", [&] {
    launch("elu.forward", k::forward<scalar_t>, k::grid_for(n), dim3(k::kThreads), x.const_data_ptr<scalar_t>(),
           y.mutable_data_ptr<scalar_t>(), n);
  });
  return y;
}

at::Tensor elu_backward(const at::Tensor& grad, const at::Tensor& out) {
  namespace k = elu_kernels;
  elu_checks::backward(grad, out);
  at::Tensor dx = at::empty_like(out);
  const int64_t n = out.numel();
  if (n == 0) return dx;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), "elu_backward_cuda", [&] {
    launch("elu.backward", k::backward<scalar_t>, k::grid_for(n), dim3(k::kThreads), grad.const_data_ptr<scalar_t>(),
           out.const_data_ptr<scalar_t>(), dx.mutable_data_ptr<scalar_t>(), n);
  });
  return dx;
}

}  // namespace dreamer_fast::DF_KERNEL_NS
