// cpu_gemm::StepGemm (step_gemm.h).
#include "step_gemm.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <optional>

#include "../cpu/features.h"
#include "cpu_gemm.h"

namespace dreamer_fast::cpu_gemm {
namespace {

// `w.contiguous()` for a transposed float32 view (stride(0) == 1, as `weight.t()` or the transpose of a column slice):
// ATen copies such a view element by element across the long stride; tiles of 32 x 32 keep both sides in cache (the
// 1200 x 1800 GRU weight: ~1.5 ms against ~4 ms, measured on an Intel Xeon, one thread). Anything else:
// `contiguous()`.
at::Tensor contiguous_weight(const at::Tensor& w) {
  if (!w.is_cpu() || w.dim() != 2 || w.is_contiguous() || w.scalar_type() != at::kFloat || w.stride(0) != 1)
    return w.contiguous();
  const int64_t rows = w.size(0), cols = w.size(1), ld = w.stride(1);
  at::Tensor out = at::empty({rows, cols}, w.options());
  const float* src = w.const_data_ptr<float>();
  float* dst = out.mutable_data_ptr<float>();
  constexpr int64_t kTile = 32;
  at::parallel_for(0, (rows + kTile - 1) / kTile, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t r0 = t0 * kTile; r0 < std::min(rows, t1 * kTile); r0 += kTile) {
      const int64_t r1 = std::min(rows, r0 + kTile);
      for (int64_t c0 = 0; c0 < cols; c0 += kTile) {
        const int64_t c1 = std::min(cols, c0 + kTile);
        for (int64_t c = c0; c < c1; ++c)
          for (int64_t r = r0; r < r1; ++r) dst[r * cols + c] = src[c * ld + r];
      }
    }
  });
  return out;
}


}  // namespace

StepGemm::StepGemm(const at::Tensor& weight, int64_t rows, int64_t steps, at::ScalarType gemm_dtype,
                   at::ScalarType out_dtype)
    : rows_(rows), out_dtype_(out_dtype), gemm_dtype_(gemm_dtype) {
  const at::Tensor w = weight.to(gemm_dtype);
  kind_ = packing(w, rows, steps);
  if (kind_ == Kind::kPlain) {
    weight_t_ = w.t();
    return;
  }
  weight_ = contiguous_weight(w);
  packed_ = kind_ == Kind::kMkl ? mkl_pack(weight_, rows) : onednn_pack(weight_, rows);
}

at::Tensor StepGemm::operator()(const at::Tensor& x) const {
  const at::Tensor xg = x.to(gemm_dtype_);
  at::Tensor y;
  if (kind_ != Kind::kPlain && x.size(0) == rows_) {
    y = kind_ == Kind::kMkl ? mkl_linear(xg.contiguous(), packed_, weight_, rows_)
                            : onednn_linear(xg.contiguous(), packed_, std::nullopt);
  } else {
    y = at::mm(xg, weight_t().to(gemm_dtype_));
  }
  return y.to(out_dtype_);
}

// Packing costs about two of the step's GEMMs: worth it from a few steps on.
StepGemm::Kind StepGemm::packing(const at::Tensor& w, int64_t rows, int64_t steps) {
  if (!w.is_cpu() || rows <= 0 || steps < 4 || w.numel() == 0) return Kind::kPlain;
  const at::ScalarType dt = w.scalar_type();
  const Library lib = selected();
  if (lib == Library::kOnednn) {
    // oneDNN's bf16 reorder raises on CPUs without its bf16 ISA (AVX-512 BW/VL/DQ or AVX-NE-CONVERT): ask first.
    const bool ok = dt == at::kFloat || (dt == at::kBFloat16 && cpu::features().onednn_bf16);
    return ok ? Kind::kOnednn : Kind::kPlain;
  }
  const bool mkl = lib == Library::kMkl && dt == at::kFloat && mkl_available();
  return mkl ? Kind::kMkl : Kind::kPlain;
}

}  // namespace dreamer_fast::cpu_gemm
