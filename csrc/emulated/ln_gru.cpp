// The CUDA LayerNorm-GRU kernels, compiled for the CPU emulator (see csrc/emulation/emulator.h).
#include "../cuda/ln_gru.cuh"
