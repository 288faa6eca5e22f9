// DF_CPU_CLONES: compile a CPU hot loop for AVX-512 and AVX2+FMA beside the x86-64 baseline; the loader picks the
// best one for the running CPU (GCC function multi-versioning). The extension itself is built for the baseline, so
// this is how the CPU kernels use wide vectors while staying portable. Other compilers/CPUs: the plain build.
#pragma once

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define DF_CPU_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define DF_CPU_CLONES
#endif
