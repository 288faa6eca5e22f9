// LayerNorm-GRU, CUDA kernels. A block owns one row (grid-stride over the rows): its threads stride over the 3D
// gate values for the row statistics (block reductions in a fixed order, no atomics) and over the D units for the
// cell (dreamer_fast/ln_gru.h). Compiled by nvcc (csrc/cuda/ln_gru.cu) and by the host compiler against the emulator
// (csrc/emulated/ln_gru.cpp). float16/bfloat16 are read and written as such and computed in float32. The gates (and
// their gradient) have their own type `gate_t`: the state's, or float16/bfloat16 beside a float32 state (mixed
// precision, ln_gru_mixed).
//
// Forward:  `forward` -> deter', mean, rstd.
// Backward: `backward` (a block per row) -> d gates, d deter, and dy (the gradient after the affine map, float32 or
//           float64 scratch); `param_grad_partial` sums dy·x̂ and dy over fixed chunks of rows per column;
//           `param_grad_reduce` sums the chunks in order -> d weight, d bias. Deterministic.
#pragma once

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>

#include <algorithm>

#include "../checks/ln_gru.h"
#include "dreamer_fast/ln_gru.h"
#include "launch.h"
#include "reduce.cuh"

namespace dreamer_fast::DF_KERNEL_NS {
namespace ln_gru_kernels {

constexpr int kWarp = kWarpSize;
constexpr int kMaxWarps = 8;
constexpr int kMaxThreads = kWarp * kMaxWarps;
constexpr int64_t kRowsPerChunk = 32;  // rows summed by one thread of param_grad_partial (more past 65535 chunks)
#ifdef __CUDACC__
constexpr int64_t kMaxBlocks = 1 << 16;  // grid-stride beyond this
#else
constexpr int64_t kMaxBlocks = 3;  // the emulator's tests use small shapes: make them take the grid-stride loop too
#endif

template <typename gate_t, typename scalar_t>
using ForwardParams = LnGruForward<gate_t, scalar_t, at::opmath_type<scalar_t>>;
template <typename gate_t, typename scalar_t>
using BackwardParams = LnGruBackward<gate_t, scalar_t, at::opmath_type<scalar_t>>;

template <typename gate_t, typename scalar_t>
__global__ void forward(const ForwardParams<gate_t, scalar_t> p) {
  using acc_t = at::opmath_type<scalar_t>;
  __shared__ acc_t partial[kMaxWarps];
  const gate_t* __restrict__ x = p.gates;
  const scalar_t *__restrict__ h = p.deter, *__restrict__ w = p.weight, *__restrict__ b = p.bias;
  scalar_t* __restrict__ out = p.out;
  acc_t *__restrict__ mean = p.mean, *__restrict__ rstd = p.rstd;
  const int64_t B = p.rows, D = p.D, N = 3 * D;
  for (int64_t row = blockIdx.x; row < B; row += gridDim.x) {
    const gate_t* xr = x + row * N;
    acc_t sum = 0;
    for (int64_t j = threadIdx.x; j < N; j += blockDim.x) sum += static_cast<acc_t>(xr[j]);
    const acc_t m = block_sum(sum, partial) / static_cast<acc_t>(N);
    acc_t ssd = 0;
    for (int64_t j = threadIdx.x; j < N; j += blockDim.x) {
      const acc_t d = static_cast<acc_t>(xr[j]) - m;
      ssd += d * d;
    }
    const acc_t s = ln_rstd(block_sum(ssd, partial), N, p.eps);
    if (threadIdx.x == 0) {
      mean[row] = m;
      rstd[row] = s;
    }
    for (int64_t i = threadIdx.x; i < D; i += blockDim.x) {
      acc_t y[3];
      for (int k = 0; k < 3; ++k) {
        const int64_t j = k * D + i;
        y[k] = (static_cast<acc_t>(xr[j]) - m) * s * static_cast<acc_t>(w[j]) + static_cast<acc_t>(b[j]);
      }
      out[row * D + i] = static_cast<scalar_t>(gru_cell<acc_t>(y[0], y[1], y[2], static_cast<acc_t>(h[row * D + i])));
    }
  }
}

// dy [rows, 3D]: the gate values' gradients before the normalisation, for param_grad_partial.
template <typename gate_t, typename scalar_t>
__global__ void backward(const BackwardParams<gate_t, scalar_t> p, at::opmath_type<scalar_t>* __restrict__ dy) {
  using acc_t = at::opmath_type<scalar_t>;
  __shared__ acc_t partial[kMaxWarps];
  const gate_t* __restrict__ x = p.gates;
  const scalar_t *__restrict__ g = p.grad, *__restrict__ h = p.deter, *__restrict__ w = p.weight,
                 *__restrict__ b = p.bias;
  const acc_t *__restrict__ mean = p.mean, *__restrict__ rstd = p.rstd;
  gate_t* __restrict__ dx = p.d_gates;
  scalar_t* __restrict__ dh = p.d_deter;
  const int64_t B = p.rows, D = p.D, N = 3 * D;
  for (int64_t row = blockIdx.x; row < B; row += gridDim.x) {
    const gate_t* xr = x + row * N;
    acc_t* dyr = dy + row * N;
    const acc_t m = mean[row], s = rstd[row];
    acc_t m1 = 0, m2 = 0;
    // Each thread writes dy of its units i and reads back only those: no barrier needed between the passes.
    for (int64_t i = threadIdx.x; i < D; i += blockDim.x) {
      acc_t xhat[3], y[3], d[3], d_h;
      for (int k = 0; k < 3; ++k) {
        const int64_t j = k * D + i;
        xhat[k] = (static_cast<acc_t>(xr[j]) - m) * s;
        y[k] = xhat[k] * static_cast<acc_t>(w[j]) + static_cast<acc_t>(b[j]);
      }
      gru_cell_backward<acc_t>(static_cast<acc_t>(g[row * D + i]), y[0], y[1], y[2],
                               static_cast<acc_t>(h[row * D + i]), &d[0], &d[1], &d[2], &d_h);
      dh[row * D + i] = static_cast<scalar_t>(d_h);
      for (int k = 0; k < 3; ++k) {
        const int64_t j = k * D + i;
        const acc_t d_xhat = d[k] * static_cast<acc_t>(w[j]);
        m1 += d_xhat;
        m2 += d_xhat * xhat[k];
        dyr[j] = d[k];
      }
    }
    m1 = block_sum(m1, partial) / static_cast<acc_t>(N);
    m2 = block_sum(m2, partial) / static_cast<acc_t>(N);
    m1 = ln_grad_mean(m1, m2);
    for (int64_t i = threadIdx.x; i < D; i += blockDim.x) {
      for (int k = 0; k < 3; ++k) {
        const int64_t j = k * D + i;
        const acc_t xhat = (static_cast<acc_t>(xr[j]) - m) * s;
        const acc_t d_xhat = dyr[j] * static_cast<acc_t>(w[j]);
        dx[row * N + j] = static_cast<gate_t>(ln_input_grad<acc_t>(d_xhat, xhat, m1, m2, s));
      }
    }
  }
}

// part[k][0][j] = Σ dy x̂, part[k][1][j] = Σ dy over the rows of chunk k = blockIdx.y; thread per column j.
template <typename gate_t, typename scalar_t>
__global__ void param_grad_partial(const gate_t* __restrict__ x, const at::opmath_type<scalar_t>* __restrict__ mean,
                                   const at::opmath_type<scalar_t>* __restrict__ rstd,
                                   const at::opmath_type<scalar_t>* __restrict__ dy,
                                   at::opmath_type<scalar_t>* __restrict__ part, int64_t B, int64_t N,
                                   int64_t rows_per_chunk) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t j = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (j >= N) return;
  const int64_t k = blockIdx.y, r1 = std::min(B, (k + 1) * rows_per_chunk);
  acc_t sw = 0, sb = 0;
  for (int64_t row = k * rows_per_chunk; row < r1; ++row) {
    const acc_t d = dy[row * N + j];
    sw += d * (static_cast<acc_t>(x[row * N + j]) - mean[row]) * rstd[row];
    sb += d;
  }
  part[k * 2 * N + j] = sw;
  part[k * 2 * N + N + j] = sb;
}

template <typename scalar_t>
__global__ void param_grad_reduce(const at::opmath_type<scalar_t>* __restrict__ part, scalar_t* __restrict__ dw,
                                  scalar_t* __restrict__ db, int64_t chunks, int64_t N) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t j = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (j >= N) return;
  acc_t sw = 0, sb = 0;
  for (int64_t k = 0; k < chunks; ++k) {
    sw += part[k * 2 * N + j];
    sb += part[k * 2 * N + N + j];
  }
  dw[j] = static_cast<scalar_t>(sw);
  db[j] = static_cast<scalar_t>(sb);
}

// Threads per row block: enough warps to cover D units, at most kMaxThreads.
inline int row_threads(int64_t D) {
  return static_cast<int>(std::min<int64_t>(kMaxThreads, std::max<int64_t>(kWarp, (D + kWarp - 1) / kWarp * kWarp)));
}

inline at::ScalarType stats_type(const at::Tensor& gates) {  // float32 for float16/bfloat16 or mixed gates
  const auto s = gates.scalar_type();
  return (s == at::kHalf || s == at::kBFloat16) ? at::kFloat : s;
}

}  // namespace ln_gru_kernels

std::tuple<at::Tensor, at::Tensor, at::Tensor> ln_gru(const at::Tensor& gates, const at::Tensor& deter,
                                                      const at::Tensor& weight, const at::Tensor& bias, double eps) {
  namespace k = ln_gru_kernels;
  const int64_t D = check_ln_gru_inputs("ln_gru", gates, deter, weight, bias, /*allow_half=*/true);
  const int64_t B = gates.size(0);
  at::Tensor out = at::empty_like(deter);
  at::Tensor mean = at::empty({B}, gates.options().dtype(k::stats_type(gates)));
  at::Tensor rstd = at::empty({B}, gates.options().dtype(k::stats_type(gates)));
  if (B == 0) return {out, mean, rstd};
  const auto run = [&](auto gate_tag, auto state_tag) {
    using gate_t = decltype(gate_tag);
    using scalar_t = decltype(state_tag);
    using acc_t = at::opmath_type<scalar_t>;
    const k::ForwardParams<gate_t, scalar_t> params{
        gates.const_data_ptr<gate_t>(), deter.const_data_ptr<scalar_t>(), weight.const_data_ptr<scalar_t>(),
        bias.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(), mean.mutable_data_ptr<acc_t>(),
        rstd.mutable_data_ptr<acc_t>(), B, D, static_cast<acc_t>(eps)};
    launch("ln_gru.forward", k::forward<gate_t, scalar_t>, dim3(static_cast<unsigned>(std::min(B, k::kMaxBlocks))),
           dim3(k::row_threads(D)), params);
  };
  if (ln_gru_mixed(gates, deter)) {
    AT_DISPATCH_REDUCED_FLOATING_TYPES(gates.scalar_type(), "ln_gru_cuda_mixed", [&] { run(scalar_t(), float()); });
  } else {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, gates.scalar_type(), "ln_gru_cuda",
                                    [&] { run(scalar_t(), scalar_t()); });
  }
  return {out, mean, rstd};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> ln_gru_backward(
    const at::Tensor& grad, const at::Tensor& gates, const at::Tensor& deter, const at::Tensor& weight,
    const at::Tensor& bias, const at::Tensor& mean, const at::Tensor& rstd) {
  namespace k = ln_gru_kernels;
  const char* op = "ln_gru_backward";
  const int64_t D = check_ln_gru_backward_inputs(op, grad, gates, deter, weight, bias, mean, rstd,
                                                     /*allow_half=*/true);
  const int64_t B = gates.size(0), N = 3 * D;
  at::Tensor d_gates = at::empty_like(gates), d_deter = at::empty_like(deter);
  at::Tensor d_weight = at::empty_like(weight), d_bias = at::empty_like(bias);
  if (N == 0) return {d_gates, d_deter, d_weight, d_bias};
  const int64_t rows_per_chunk = std::max<int64_t>(k::kRowsPerChunk, (B + 65534) / 65535);  // grid.y <= 65535
  const int64_t chunks = std::max<int64_t>(1, (B + rows_per_chunk - 1) / rows_per_chunk);
  const auto acc_options = gates.options().dtype(k::stats_type(gates));
  at::Tensor dy = at::empty({B, N}, acc_options);
  at::Tensor part = at::empty({chunks, 2, N}, acc_options);
  const auto run = [&](auto gate_tag, auto state_tag) {
    using gate_t = decltype(gate_tag);
    using scalar_t = decltype(state_tag);
    using acc_t = at::opmath_type<scalar_t>;
    const gate_t* x = gates.const_data_ptr<gate_t>();
    const k::BackwardParams<gate_t, scalar_t> params{
        grad.const_data_ptr<scalar_t>(), x, deter.const_data_ptr<scalar_t>(), weight.const_data_ptr<scalar_t>(),
        bias.const_data_ptr<scalar_t>(), mean.const_data_ptr<acc_t>(), rstd.const_data_ptr<acc_t>(),
        d_gates.mutable_data_ptr<gate_t>(), d_deter.mutable_data_ptr<scalar_t>(), B, D};
    if (B > 0)
      launch("ln_gru.backward", k::backward<gate_t, scalar_t>,
             dim3(static_cast<unsigned>(std::min(B, k::kMaxBlocks))), dim3(k::row_threads(D)), params,
             dy.mutable_data_ptr<acc_t>());
    const int threads = static_cast<int>(std::min<int64_t>(k::kMaxThreads, (N + k::kWarp - 1) / k::kWarp * k::kWarp));
    // With B == 0 every chunk sums no rows, so the weight and bias gradients come out zero.
    launch("ln_gru.param_grad_partial", k::param_grad_partial<gate_t, scalar_t>,
           dim3(ceil_div(N, threads), static_cast<unsigned>(chunks)), dim3(threads), x, mean.const_data_ptr<acc_t>(),
           rstd.const_data_ptr<acc_t>(), dy.const_data_ptr<acc_t>(), part.mutable_data_ptr<acc_t>(), B, N,
           rows_per_chunk);
    launch("ln_gru.param_grad_reduce", k::param_grad_reduce<scalar_t>, dim3(ceil_div(N, threads)), dim3(threads),
           part.const_data_ptr<acc_t>(), d_weight.mutable_data_ptr<scalar_t>(), d_bias.mutable_data_ptr<scalar_t>(),
           chunks, N);
  };
  if (ln_gru_mixed(gates, deter)) {
    AT_DISPATCH_REDUCED_FLOATING_TYPES(gates.scalar_type(), "ln_gru_backward_cuda_mixed",
                                       [&] { run(scalar_t(), float()); });
  } else {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, gates.scalar_type(), "ln_gru_backward_cuda",
                                    [&] { run(scalar_t(), scalar_t()); });
  }
  return {d_gates, d_deter, d_weight, d_bias};
}

}  // namespace dreamer_fast::DF_KERNEL_NS
