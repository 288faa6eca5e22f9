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

#include "../checks/elu.h"
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

// One element: the forward of x = a, or the backward of grad = a and out = b.
template <bool kBackward, typename scalar_t>
DF_INLINE scalar_t apply(scalar_t a, scalar_t b) {
  using acc_t = at::opmath_type<scalar_t>;
  if constexpr (kBackward) {
    return static_cast<scalar_t>(elu::backward(static_cast<acc_t>(a), static_cast<acc_t>(b)));
  } else {
    return static_cast<scalar_t>(elu::forward(static_cast<acc_t>(a)));
  }
}

// The kernels' body: out[i] = apply(a[i], b[i]) (the forward does not read b). kPacked: elements [0, n / W * W) as
// packs of W through 16-byte accesses (all pointers must be 16-byte aligned), then the rest (< W) one per thread;
// else all one per thread.
template <bool kBackward, bool kPacked, typename scalar_t>
DF_DEVICE inline void map(const scalar_t* __restrict__ a, const scalar_t* __restrict__ b, scalar_t* __restrict__ out,
                          int64_t n) {
  using P = Pack<scalar_t>;
  const int64_t stride = static_cast<int64_t>(blockDim.x) * gridDim.x;
  const int64_t first = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  int64_t tail = 0;
  if constexpr (kPacked) {
    const int64_t packs = n / P::kWidth;
    for (int64_t i = first; i < packs; i += stride) {
      P pa = reinterpret_cast<const P*>(a)[i];
      const P pb = kBackward ? reinterpret_cast<const P*>(b)[i] : pa;
#pragma unroll
      for (int j = 0; j < P::kWidth; ++j) pa.v[j] = apply<kBackward>(pa.v[j], pb.v[j]);
      reinterpret_cast<P*>(out)[i] = pa;
    }
    tail = packs * P::kWidth;
  }
  for (int64_t i = tail + first; i < n; i += stride) out[i] = apply<kBackward>(a[i], kBackward ? b[i] : a[i]);
}

// One kernel per direction and access width (each launched under its own name, which the emulator's coverage
// check follows).
template <typename scalar_t>
__global__ void forward(const scalar_t* __restrict__ x, scalar_t* __restrict__ y, int64_t n) {
  map<false, false>(x, x, y, n);
}
template <typename scalar_t>
__global__ void forward_packed(const scalar_t* __restrict__ x, scalar_t* __restrict__ y, int64_t n) {
  map<false, true>(x, x, y, n);
}
template <typename scalar_t>
__global__ void backward(const scalar_t* __restrict__ g, const scalar_t* __restrict__ y, scalar_t* __restrict__ dx,
                         int64_t n) {
  map<true, false>(g, y, dx, n);
}
template <typename scalar_t>
__global__ void backward_packed(const scalar_t* __restrict__ g, const scalar_t* __restrict__ y,
                                scalar_t* __restrict__ dx, int64_t n) {
  map<true, true>(g, y, dx, n);
}

inline dim3 grid_for(int64_t n) {
  return dim3(static_cast<unsigned>(std::min<int64_t>(ceil_div(n, kThreads), kMaxBlocks)));
}

inline dim3 grid_for_packs(int64_t n, int width) { return grid_for(std::max<int64_t>(n / width, 1)); }

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
    if (k::aligned16(xp) && k::aligned16(yp)) {  // views at odd offsets are not
      launch("elu.forward_packed", k::forward_packed<scalar_t>, k::grid_for_packs(n, k::Pack<scalar_t>::kWidth),
             dim3(k::kThreads), xp, yp, n);
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
      launch("elu.backward_packed", k::backward_packed<scalar_t>, k::grid_for_packs(n, k::Pack<scalar_t>::kWidth),
             dim3(k::kThreads), gp, yp, dxp, n);
    } else {
      launch("elu.backward", k::backward<scalar_t>, k::grid_for(n), dim3(k::kThreads), gp, yp, dxp, n);
    }
  });
  return dx;
}

}  // namespace dreamer_fast::DF_KERNEL_NS
