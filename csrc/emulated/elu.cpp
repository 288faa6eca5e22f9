// The CUDA ELU kernels, compiled for the CPU emulator (see csrc/emulation/emulator.h). No FMA contraction (even
// under -march=native), so the results equal the CPU kernels' bit for bit.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("fp-contract=off")
#endif
#include "../cuda/elu.cuh"
