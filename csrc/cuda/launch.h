// One launch call for both builds of a kernel: nvcc launches on the current stream, the host build emulates.
#pragma once

#ifdef __CUDACC__
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#else
#include "../emulation/emulator.h"
#endif

namespace dreamer_fast {

#ifdef __CUDACC__
template <typename... KArgs, typename... Args>
void launch(const char*, void (*kernel)(KArgs...), dim3 grid, dim3 block, Args&&... args) {
  if (grid.x * grid.y * grid.z == 0) return;
  kernel<<<grid, block, 0, c10::cuda::getCurrentCUDAStream()>>>(std::forward<Args>(args)...);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}
#else
using df_emu::launch;
#endif

inline unsigned ceil_div(int64_t a, int64_t b) { return static_cast<unsigned>((a + b - 1) / b); }

}  // namespace dreamer_fast

// Kernels written in csrc/cuda/*.cuh live in dreamer_fast::DF_KERNEL_NS: `cuda` under nvcc, `emulated` otherwise,
// so both builds of one kernel can be linked into the same library.
#ifdef __CUDACC__
#define DF_KERNEL_NS cuda
#else
#define DF_KERNEL_NS emulated
#endif
