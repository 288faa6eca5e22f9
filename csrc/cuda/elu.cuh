// ELU CUDA kernels: grid-stride loops, each thread reading and writing 16 bytes per access (4 floats, 8 bf16/halves,
// 2 doubles) when every pointer is 16-byte aligned, one element per access otherwise (views at odd offsets). Scalar
// accesses were measured at 0.6x eager's fwd+bwd on an H200 (docs/GPU.md). Compiled by nvcc (csrc/cuda/elu.cu) and
// by the host compiler against the emulator (csrc/emulated/elu.cpp). The math is dreamer_fast/elu.h, as on the CPU;
// half types are widened to float.
#pragma once

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>

#include <algorithm>
#include <cstdint>

#include "../elu_checks.h"
#include "dreamer_fast/elu.h"
#include "launch.h"

namespace dreamer_fast::DF_KERNEL_NS {
namespace elu_kernels {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = 4096;  // grid-stride beyond this

// One 16-byte access worth of elements.
template <typename scalar_t>
struct alignas(16) Pack {
  static constexpr int kWidth = 16 / static_cast<int>(sizeof(scalar_t));
  scalar_t v[kWidth];
};

inline bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

// Elements [0, n / W * W) as packs of W, the rest (< W) one per thread.
template <typename scalar_t>
__global__ void forward_packed(const scalar_t* __restrict__ x, scalar_t* __restrict__ y, int64_t n) {
  using acc_t = at::opmath_type<scalar_t>;
  using P = Pack<scalar_t>;
  const int64_t packs = n / P::kWidth;
  const int64_t stride = static_cast<int64_t>(blockDim.x) * gridDim.x;
  const int64_t first = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  for (int64_t i = first; i < packs; i += stride) {
    P p = reinterpret_cast<const P*>(x)[i];
#pragma unroll
    for (int j = 0; j < P::kWidth; ++j) p.v[j] = static_cast<scalar_t>(elu::forward(static_cast<acc_t>(p.v[j])));
    reinterpret_cast<P*>(y)[i] = p;
  }
  for (int64_t i = packs * P::kWidth + first; i < n; i += stride)
    y[i] = static_cast<scalar_t>(elu::forward(static_cast<acc_t>(x[i])));
}

template <typename scalar_t>
__global__ void backward_packed(const scalar_t* __restrict__ g, const scalar_t* __restrict__ y,
                                scalar_t* __restrict__ dx, int64_t n) {
  using acc_t = at::opmath_type<scalar_t>;
  using P = Pack<scalar_t>;
  const int64_t packs = n / P::kWidth;
  const int64_t stride = static_cast<int64_t>(blockDim.x) * gridDim.x;
  const int64_t first = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  for (int64_t i = first; i < packs; i += stride) {
    P pg = reinterpret_cast<const P*>(g)[i];
    const P py = reinterpret_cast<const P*>(y)[i];
#pragma unroll
    for (int j = 0; j < P::kWidth; ++j)
      pg.v[j] = static_cast<scalar_t>(elu::backward(static_cast<acc_t>(pg.v[j]), static_cast<acc_t>(py.v[j])));
    reinterpret_cast<P*>(dx)[i] = pg;
  }
  for (int64_t i = packs * P::kWidth + first; i < n; i += stride)
    dx[i] = static_cast<scalar_t>(elu::backward(static_cast<acc_t>(g[i]), static_cast<acc_t>(y[i])));
}

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
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    scalar_t* yp = y.mutable_data_ptr<scalar_t>();
    if (k::aligned16(xp) && k::aligned16(yp)) {
      const int64_t work = std::max<int64_t>(n / k::Pack<scalar_t>::kWidth, 1);
      launch("elu.forward_packed", k::forward_packed<scalar_t>, k::grid_for(work), dim3(k::kThreads), xp, yp, n);
    } else {
      launch("elu.forward", k::forward<scalar_t>, k::grid_for(n), dim3(k::kThreads), xp, yp, n);
    }
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
    const scalar_t* gp = grad.const_data_ptr<scalar_t>();
    const scalar_t* yp = out.const_data_ptr<scalar_t>();
    scalar_t* dxp = dx.mutable_data_ptr<scalar_t>();
    if (k::aligned16(gp) && k::aligned16(yp) && k::aligned16(dxp)) {
      const int64_t work = std::max<int64_t>(n / k::Pack<scalar_t>::kWidth, 1);
      launch("elu.backward_packed", k::backward_packed<scalar_t>, k::grid_for(work), dim3(k::kThreads), gp, yp, dxp,
             n);
    } else {
      launch("elu.backward", k::backward<scalar_t>, k::grid_for(n), dim3(k::kThreads), gp, yp, dxp, n);
    }
  });
  return dx;
}

}  // namespace dreamer_fast::DF_KERNEL_NS
