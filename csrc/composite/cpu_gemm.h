// Which library runs the fused backend's float32 GEMMs on the CPU: observe's per-step GEMMs at B = 16, and the
// products of dreamer_fast::linear and of the acting step from 64 x 256 x 256 (linear() below; at most 6 rows they
// are our GEMV kernel, cpu/gemv.h): MKL or oneDNN, both inside torch, or ATen's public addmm/mm.
//
// The rule ("auto"), from the CPU's features (cpu/features.h), not from a timing, so a run's numbers do not depend on
// a race: MKL where it runs its widest kernels (Intel CPUs: AVX-512, AMX), oneDNN elsewhere (on other vendors MKL
// takes its AVX2 code while oneDNN uses every ISA the CPU has). Measured on an AMD EPYC Zen 4, 2 threads: oneDNN took
// 0.68-0.84x MKL's time at the agent's GEMMs with AVX-512 and 0.54-0.99x under the AVX2 profile; 16 x 1200 -> 1800
// with the weight packed once per sequence (observe) is where it gains most.
// The oneDNN and MKL ops are private ATen ops: each is looked up once with its schema (cpu/private_ops.h), and a
// missing or different one turns its library off (ATen's addmm/mm run instead).
// `set_cpu_gemm("auto" | "mkl" | "onednn" | "aten")` overrides the rule (tests and A/B runs; process-wide).
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>

namespace dreamer_fast::cpu_gemm {

enum class Library { kMkl, kOnednn, kAten };

// Up to this many rows a float32 layer on the CPU is our GEMV kernel (cpu/gemv.h), whatever set_cpu_gemm says: the
// acting step's B is 1 (or a few environments). Measured on an AMD EPYC Zen 5: the whole Atari step took 0.21 ms
// against oneDNN's 0.46 at B = 1, and the two were equal at B = 8. Above it, the GEMM library.
constexpr int64_t kGemvMaxRows = 6;

// The library "auto" or the override resolves to on the running CPU; kOnednn only where torch has the oneDNN ops.
Library selected();

// oneDNN's `x @ W^T (+ b)` (torch's mkldnn::_linear_pointwise): x [M, K] contiguous float32 or bfloat16, W [N, K]
// dense or packed by `onednn_pack`, b [N] or none.
at::Tensor onednn_linear(const at::Tensor& x, const at::Tensor& w, const std::optional<at::Tensor>& b);

// W [N, K] reordered into oneDNN's layout for `rows`-row inputs (mkldnn::_reorder_linear_weight); an opaque tensor
// that only onednn_linear reads.
at::Tensor onednn_pack(const at::Tensor& w, int64_t rows);

// y = x w^T (+ b), the one router of the CPU's float32 products: at most 6 rows in our GEMV (cpu/gemv.h), training-
// size products in the library selected(), everything else ATen's addmm/mm. Used by dreamer_fast::linear
// (composite/linear.cpp, which says why and checks the arguments; this does not) and by the acting step
// (composite/obs_step_inference.cpp), whose w may also be a bfloat16 copy with a float32 x (the GEMV reads it on the
// CPU; elsewhere it is widened). x [M, K] and w [N, K] row- or column-major (other strides are copied), b [N] or none.
at::Tensor linear(const at::Tensor& x, const at::Tensor& w, const std::optional<at::Tensor>& b);

// Whether torch was built with MKL's packed GEMM ops (mkl::_mkl_reorder_linear_weight, mkl::_mkl_linear).
bool mkl_available();
at::Tensor mkl_pack(const at::Tensor& w, int64_t rows);
at::Tensor mkl_linear(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& w, int64_t rows);

}  // namespace dreamer_fast::cpu_gemm
