// Registers dreamer_fast::cpu::<op> as the CPU kernels of the `dreamer_fast` library (schemas in csrc/ops.cpp).
#include <torch/library.h>

#include "../ops.h"

TORCH_LIBRARY_IMPL(dreamer_fast, CPU, m) {
  DF_REGISTER_KERNELS(m, dreamer_fast::cpu);
}
