// Argument checks of lambda_return and its backward, shared by the CPU and CUDA (and emulated) kernels.
#pragma once

#include "common.h"

namespace dreamer_fast {

inline void check_lambda_return_inputs(const char* op, bool allow_half, const at::Tensor& reward,
                                       const at::Tensor& value, const at::Tensor& discount,
                                       const at::Tensor& bootstrap) {
  check_float(op, "reward", reward, allow_half);
  TORCH_CHECK(reward.dim() == 2, op, ": `reward` must be [T, B], got shape ", reward.sizes());
  TORCH_CHECK(reward.is_contiguous(), op, ": `reward` must be contiguous");
  check_same(op, "value", value, reward, "reward");
  check_same(op, "discount", discount, reward, "reward");
  check_same(op, "bootstrap", bootstrap, reward, "reward");
  check_shape(op, "value", value, reward.sizes());
  check_shape(op, "discount", discount, reward.sizes());
  check_shape(op, "bootstrap", bootstrap, {reward.size(1)});
}

}  // namespace dreamer_fast
