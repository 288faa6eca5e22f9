// Portability macros shared by the CPU, CUDA and emulated builds of every kernel.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define DF_HOST_DEVICE __host__ __device__
#define DF_DEVICE __device__
#else
#define DF_HOST_DEVICE
#define DF_DEVICE
#endif

#define DF_INLINE DF_HOST_DEVICE inline

namespace dreamer_fast {

// Overloads so templated kernels call the right precision on host and device.
DF_INLINE float df_exp(float x) { return ::expf(x); }
DF_INLINE double df_exp(double x) { return ::exp(x); }
DF_INLINE float df_log(float x) { return ::logf(x); }
DF_INLINE double df_log(double x) { return ::log(x); }
DF_INLINE float df_max(float a, float b) { return ::fmaxf(a, b); }
DF_INLINE double df_max(double a, double b) { return ::fmax(a, b); }

}  // namespace dreamer_fast
