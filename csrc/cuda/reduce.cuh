// Warp and block reductions shared by the CUDA kernels (and their emulated builds). Each has a fixed order, so
// results are deterministic and the emulator reproduces them exactly.
#pragma once

#include "dreamer_fast/math.h"
#include "launch.h"

namespace dreamer_fast::DF_KERNEL_NS {

constexpr int kWarpSize = 32;

// xor butterfly of `op` over the warp's 32 values: every lane ends with the result.
template <typename T, typename Op>
__device__ T warp_reduce(T v, Op op) {
  for (int o = kWarpSize / 2; o > 0; o /= 2) v = op(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

template <typename T>
__device__ T warp_sum(T v) {
  return warp_reduce(v, [](T a, T b) { return a + b; });
}

template <typename T>
__device__ T warp_max(T v) {
  return warp_reduce(v, [](T a, T b) { return df_max(a, b); });
}

// Sum of one value per thread over the block (blockDim.x a multiple of 32), warps added in order; every thread
// gets it. `partial`: shared memory with one slot per warp.
template <typename T>
__device__ T block_sum(T v, T* partial) {
  v = warp_sum(v);
  const int warps = blockDim.x / kWarpSize;
  if (threadIdx.x % kWarpSize == 0) partial[threadIdx.x / kWarpSize] = v;
  __syncthreads();
  T total = T(0);
  for (int w = 0; w < warps; ++w) total += partial[w];
  __syncthreads();  // before anyone writes `partial` again
  return total;
}

}  // namespace dreamer_fast::DF_KERNEL_NS
