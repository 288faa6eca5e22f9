// Argument checks of dreamer_fast::linear (csrc/composite/linear.cpp); the Python wrapper checks first.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <optional>

#include "common.h"

namespace dreamer_fast {

// x [M, K] float (half types too), weight [N, K] of x's dtype and device, bias [N] contiguous or none.
inline void check_linear_inputs(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias) {
  constexpr const char* kOp = "linear";
  TORCH_CHECK(x.defined() && x.dim() == 2, kOp, ": `x` must be [M, K], got ",
              x.defined() ? x.sizes() : at::IntArrayRef{});
  TORCH_CHECK(weight.defined() && weight.dim() == 2, kOp, ": `weight` must be [N, K], got ",
              weight.defined() ? weight.sizes() : at::IntArrayRef{});
  check_float(kOp, "x", x, /*allow_half=*/true);
  TORCH_CHECK(weight.scalar_type() == x.scalar_type(), kOp, ": `weight` must have the dtype of `x` (",
              x.scalar_type(), "), got ", weight.scalar_type());
  TORCH_CHECK(weight.device() == x.device(), kOp, ": `weight` must be on the device of `x` (", x.device(), "), got ",
              weight.device());
  TORCH_CHECK(weight.size(1) == x.size(1), kOp, ": `weight` must be [N, K] with K = x.size(1) = ", x.size(1),
              ", got ", weight.sizes());
  if (bias) {
    check_same(kOp, "bias", *bias, x, "x");
    check_shape(kOp, "bias", *bias, {weight.size(0)});
  }
}

}  // namespace dreamer_fast
