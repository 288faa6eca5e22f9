// The CUDA KL-balance kernels, compiled for the CPU emulator (see csrc/emulation/emulator.h).
#include "../cuda/kl_balance.cuh"
