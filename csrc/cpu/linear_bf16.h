// A float32 linear layer whose weight is stored in bfloat16, on the CPU: the GEMVs of the acting step
// (obs_step_inference) with its weights cast once to bfloat16. At B = 1 a GEMV reads its weight once and does two
// FLOPs per value read, so its time is the weight's bytes over the memory bandwidth: bfloat16 halves it. ATen has no
// mixed float32 × bfloat16 product, and its all-bfloat16 GEMV at B = 1 measured slower than float32 here (oneDNN),
// hence this kernel. Accumulation is in float32, in a fixed order per output (not bit-equal to any GEMM library).
#pragma once

#include <ATen/core/Tensor.h>

namespace dreamer_fast::cpu {

// y = bias + x w^T: x float32 [B, K] (rows may be strided, unit column stride), w bfloat16 [N, K] contiguous, bias
// float32 [N] contiguous -> y float32 [B, N]. Parallel over the output columns N. The caller checks the arguments.
at::Tensor linear_bf16_weight(const at::Tensor& x, const at::Tensor& w, const at::Tensor& bias);

}  // namespace dreamer_fast::cpu
