// Portability macros shared by the CPU, CUDA and emulated builds of every kernel.
//
// Function qualifiers, one spelling each: DF_INLINE (host and device, inline) and DF_FORCE_INLINE (host and device,
// always inlined). Every function that a CPU kernel body calls is DF_FORCE_INLINE: those bodies are compiled for
// several -march levels (csrc/cpu/clones.h), and GCC inlines a function compiled for one level into a body of another
// only when it must (otherwise it becomes a call per element). Device-only helpers are plain `__device__`.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define DF_HOST_DEVICE __host__ __device__
#define DF_DEVICE __device__
#define DF_FORCE_INLINE __host__ __device__ __forceinline__
#else
#define DF_HOST_DEVICE
#define DF_DEVICE
#if defined(__GNUC__)
#define DF_FORCE_INLINE inline __attribute__((always_inline))
#else
#define DF_FORCE_INLINE inline
#endif
#endif

#define DF_INLINE DF_HOST_DEVICE inline
