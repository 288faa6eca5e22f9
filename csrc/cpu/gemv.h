// The small-batch float32 linear layers of the acting step (obs_step_inference) on the CPU, with the weight in
// float32 or in bfloat16 (RSSM.inference_dtype). At B = 1 a GEMV reads its weight once and does two FLOPs per value
// read, so its time is the weight's bytes over the bandwidth of the cache or memory that holds it. The GEMM
// libraries' B = 1 paths stay well short of that: oneDNN's six GEMVs of the Atari step take 0.38 ms, a read-only pass
// over the same 22.6 MB 0.125 ms (measured on an AMD EPYC Zen 5, 2 threads; docs/PERFORMANCE.md). ATen has
// no mixed float32 x bfloat16 product either. Accumulation is in float32, in a fixed order per output (not bit-equal
// to any GEMM library).
#pragma once

#include <ATen/core/Tensor.h>

namespace dreamer_fast::cpu {

// y = bias + x w^T: x float32 [B, K] (rows may be strided, unit column stride), w float32 or bfloat16 [N, K]
// contiguous, bias float32 [N] contiguous -> y float32 [B, N]. Parallel over the output columns N. Meant for the B
// of acting (1 to a few rows: each block of 4 weight rows meets every row of x while it is in L1). The caller checks
// the arguments.
at::Tensor linear_gemv(const at::Tensor& x, const at::Tensor& w, const at::Tensor& bias);

}  // namespace dreamer_fast::cpu
