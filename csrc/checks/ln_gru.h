// Argument checks of the ln_gru kernels, shared by the CPU and CUDA builds (checks/common.h's helpers).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include "common.h"

namespace dreamer_fast {

// Mixed precision: float16/bfloat16 gates (a low-precision GEMM's output) with a float32 state and LayerNorm.
inline bool ln_gru_mixed(const at::Tensor& gates, const at::Tensor& deter) {
  const auto g = gates.scalar_type();
  return (g == at::kHalf || g == at::kBFloat16) && deter.scalar_type() == at::kFloat;
}

// gates [B, 3D], deter [B, D], weight and bias [3D]; one device, contiguous. deter, weight and bias share a dtype;
// gates has that dtype too, or is float16/bfloat16 beside a float32 state (ln_gru_mixed). Returns D.
inline int64_t check_ln_gru_inputs(const char* op, const at::Tensor& gates, const at::Tensor& deter,
                                   const at::Tensor& weight, const at::Tensor& bias, bool allow_half) {
  check_float(op, "gates", gates, allow_half || ln_gru_mixed(gates, deter));
  TORCH_CHECK(gates.dim() == 2, op, ": `gates` must be [B, 3*D], got shape ", gates.sizes());
  TORCH_CHECK(gates.size(1) % 3 == 0, op, ": `gates` must be [B, 3*D] (its last dim a multiple of 3), got shape ",
              gates.sizes());
  TORCH_CHECK(gates.is_contiguous(), op, ": `gates` must be contiguous");
  const int64_t B = gates.size(0), D = gates.size(1) / 3;
  if (ln_gru_mixed(gates, deter)) {
    TORCH_CHECK(deter.device() == gates.device(), op, ": `deter` must be on the device of `gates` (", gates.device(),
                "), got ", deter.device());
    TORCH_CHECK(deter.is_contiguous(), op, ": `deter` must be contiguous");
  } else {
    check_same(op, "deter", deter, gates, "gates");
  }
  check_same(op, "weight", weight, deter, "deter");
  check_same(op, "bias", bias, deter, "deter");
  check_shape(op, "deter", deter, {B, D});
  check_shape(op, "weight", weight, {3 * D});
  check_shape(op, "bias", bias, {3 * D});
  return D;
}

// The saved statistics: [B], float32 for float16/bfloat16 gates, else the dtype of gates.
inline void check_ln_gru_stats(const char* op, const char* name, const at::Tensor& t, const at::Tensor& gates) {
  const auto s = gates.scalar_type();
  const auto want = (s == at::kHalf || s == at::kBFloat16) ? at::kFloat : s;
  TORCH_CHECK(t.scalar_type() == want, op, ": `", name, "` must be ", want, ", got ", t.scalar_type());
  TORCH_CHECK(t.device() == gates.device(), op, ": `", name, "` must be on the device of `gates` (", gates.device(),
              "), got ", t.device());
  TORCH_CHECK(t.is_contiguous(), op, ": `", name, "` must be contiguous");
  check_shape(op, name, t, {gates.size(0)});
}

// ln_gru_backward's inputs: those of ln_gru, plus grad [B, D] and the saved statistics. Returns D.
inline int64_t check_ln_gru_backward_inputs(const char* op, const at::Tensor& grad, const at::Tensor& gates,
                                            const at::Tensor& deter, const at::Tensor& weight, const at::Tensor& bias,
                                            const at::Tensor& mean, const at::Tensor& rstd, bool allow_half) {
  const int64_t D = check_ln_gru_inputs(op, gates, deter, weight, bias, allow_half);
  check_same(op, "grad", grad, deter, "deter");
  check_shape(op, "grad", grad, deter.sizes());
  check_ln_gru_stats(op, "mean", mean, gates);
  check_ln_gru_stats(op, "rstd", rstd, gates);
  return D;
}

}  // namespace dreamer_fast
