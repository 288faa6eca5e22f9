// The per-step GEMMs of a recurrence (observe's loop): a weight multiplied by the same number of rows at every step.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

namespace dreamer_fast::cpu_gemm {

// `rows @ W^T` for a weight that every step multiplies with the same number of rows (B).
//
// Why: at B = 16 a step's GEMM is too small for the BLAS to amortise its packing of the weight into its own
// layout, which it redoes at every call (the RNN case). On the CPU the weight is packed once per sequence instead,
// by the library cpu_gemm.h selects: MKL's packed GEMM (float32 only) or oneDNN's (float32 and bfloat16; for
// 16 x 1200 -> 1800 in float32 0.37 ms against MKL's packed 0.74 ms, measured on an AMD EPYC Zen 4). Elsewhere (CUDA,
// float64, half GEMMs under MKL, short sequences) it is a plain at::mm in the GEMM dtype.
class StepGemm {
 public:
  // weight: [out, in], any strides; computes in `gemm_dtype`, returns `out_dtype`.
  StepGemm(const at::Tensor& weight, int64_t rows, int64_t steps, at::ScalarType gemm_dtype, at::ScalarType out_dtype);

  // x [rows, in] -> [rows, out] (another row count runs a plain at::mm).
  at::Tensor operator()(const at::Tensor& x) const;

 private:
  enum class Kind { kPlain, kMkl, kOnednn };

  static Kind packing(const at::Tensor& w, int64_t rows, int64_t steps);
  at::Tensor weight_t() const { return weight_t_.defined() ? weight_t_ : weight_.t(); }

  int64_t rows_;
  at::ScalarType out_dtype_, gemm_dtype_;
  Kind kind_ = Kind::kPlain;
  at::Tensor weight_, packed_, weight_t_;
};

}  // namespace dreamer_fast::cpu_gemm
