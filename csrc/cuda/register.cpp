// Registers dreamer_fast::cuda::<op> as the CUDA kernels of the `dreamer_fast` library (schemas in csrc/ops.cpp).
#include <torch/library.h>

#include "../ops.h"

TORCH_LIBRARY_IMPL(dreamer_fast, CUDA, m) {
  DF_REGISTER_KERNELS(m, dreamer_fast::cuda);
}
