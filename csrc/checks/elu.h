// Argument checks of elu(_backward), shared by the CPU, CUDA and emulated kernels. Unlike the other ops, ELU takes
// bfloat16/float16 on the CPU too: under bf16 autocast the conv and Linear outputs it follows are bfloat16.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include "common.h"

namespace dreamer_fast::elu_checks {

inline void check_input(const char* op, const char* name, const at::Tensor& t) {
  const auto s = t.scalar_type();
  TORCH_CHECK(s == at::kFloat || s == at::kDouble || s == at::kHalf || s == at::kBFloat16, op, ": `", name,
              "` must be float32, float64, float16 or bfloat16, got ", s);
  TORCH_CHECK(t.is_contiguous(), op, ": `", name, "` must be contiguous");
}

inline void forward(const at::Tensor& x) { check_input("elu", "x", x); }

inline void backward(const at::Tensor& grad, const at::Tensor& out) {
  check_input("elu_backward", "out", out);
  check_same("elu_backward", "grad", grad, out, "out");
  check_shape("elu_backward", "grad", grad, out.sizes());
}

}  // namespace dreamer_fast::elu_checks
