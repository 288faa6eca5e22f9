// Registers dreamer_fast::cuda::<op> as the CUDA kernels of the `dreamer_fast` library (schemas in csrc/ops.cpp).
#include <torch/library.h>

#include "../ops.h"

TORCH_LIBRARY_IMPL(dreamer_fast, CUDA, m) {
  namespace impl = dreamer_fast::cuda;
  m.impl("lambda_return", &impl::lambda_return);
  m.impl("lambda_return_backward", &impl::lambda_return_backward);
  m.impl("kl_balance", &impl::kl_balance);
  m.impl("kl_balance_backward", &impl::kl_balance_backward);
  m.impl("straight_through_categorical", &impl::straight_through_categorical);
  m.impl("straight_through_categorical_backward", &impl::straight_through_categorical_backward);
  m.impl("ln_gru", &impl::ln_gru);
  m.impl("ln_gru_backward", &impl::ln_gru_backward);
}
