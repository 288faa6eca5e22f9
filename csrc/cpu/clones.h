// Our CPU hot loops at the vector width the CPU profile allows (cpu/features.h): each is written once as a
// DF_CPU_KERNEL (always inlined) and called through DF_CPU_DISPATCH, which inlines the call into one of three bodies
// compiled for x86-64-v4 (AVX-512), x86-64-v3 (AVX2 + FMA) or the x86-64 baseline, and runs the one the profile in
// force allows. The extension itself is built for the baseline, so it loads on any x86-64 CPU; unlike GCC's
// target_clones (chosen by the loader from the hardware alone), the choice follows $DREAMER_FAST_CPU_PROFILE /
// set_cpu_profile, so the AVX2 and baseline bodies are testable on any CPU. Other compilers or CPUs: the plain body.
#pragma once

#include "dreamer_fast/macros.h"
#include "features.h"

#define DF_CPU_KERNEL DF_FORCE_INLINE

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define DF_CPU_DISPATCH(...)                                                                          \
  do {                                                                                                \
    switch (::dreamer_fast::cpu::features().profile) {                                                \
      case ::dreamer_fast::cpu::Profile::kAmx:                                                        \
      case ::dreamer_fast::cpu::Profile::kAvx512:                                                     \
        [&]() __attribute__((target("arch=x86-64-v4"))) { __VA_ARGS__; }();                           \
        break;                                                                                        \
      case ::dreamer_fast::cpu::Profile::kAvx2:                                                       \
        [&]() __attribute__((target("arch=x86-64-v3"))) { __VA_ARGS__; }();                           \
        break;                                                                                        \
      default:                                                                                        \
        [&]() { __VA_ARGS__; }();                                                                     \
    }                                                                                                 \
  } while (0)
#else
#define DF_CPU_DISPATCH(...) \
  do {                       \
    __VA_ARGS__;             \
  } while (0)
#endif
