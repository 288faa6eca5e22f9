// The CUDA λ-return kernels, compiled for the CPU emulator (see csrc/emulation/emulator.h).
#include "../cuda/lambda_return.cuh"
