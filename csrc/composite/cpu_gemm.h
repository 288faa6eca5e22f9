// Which library runs the fused backend's float32 GEMMs on the CPU: observe's per-step GEMMs at B = 16, the acting
// step's above 6 rows (below, it is our GEMV kernel, cpu/gemv.h), and dreamer_fast::linear's products from
// 64 x 256 x 256 (linear() below): MKL or oneDNN, both inside torch.
//
// Why a choice: neither is the faster on every CPU. On the AMD EPYC (Zen 4) CI machine oneDNN's matmul is ~2x MKL's
// at observe's shapes (measured, 2 threads: 16 x 1200 -> 1800 with the weight packed once 0.37 ms against MKL's packed
// 0.74 ms; 1 x 1200 -> 1800 0.09 ms against addmm's 0.15 ms), while at 800 rows the two were equal there. On an AMD EPYC
// Zen 5 (full-width AVX-512) oneDNN is ~2.2x MKL at 800 to 12800 rows as well (~480 against ~210 GFLOP/s: MKL takes
// its AVX2 paths on CPUs that are not Intel; docs/PERFORMANCE.md). On an Intel Xeon with AMX
// MKL's packed GEMM is what was measured and kept. "auto" is therefore oneDNN on CPUs whose vendor is
// not Intel, MKL on Intel: a fixed rule, not a timing, so a run's numbers do not depend on a race.
// `set_cpu_gemm("mkl" | "onednn" | "auto")` overrides it (for tests and A/B runs; process-wide).
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>

namespace dreamer_fast::cpu_gemm {

enum class Library { kMkl, kOnednn };

// Up to this many rows a float32 layer on the CPU is our GEMV kernel (cpu/gemv.h), whatever set_cpu_gemm says: the
// acting step's B is 1 (or a few environments). Measured on an AMD EPYC Zen 5, the whole Atari step took 0.21 ms
// against oneDNN's 0.46 at B = 1, 0.60 against 0.69 ms at B = 5, and the two were equal at B = 8
// (docs/PERFORMANCE.md). Above it, the GEMM library.
constexpr int64_t kGemvMaxRows = 6;

// The library "auto" or the override resolves to on this CPU; kOnednn only where torch has the oneDNN ops.
Library selected();

// oneDNN's `x @ W^T (+ b)` (torch's mkldnn::_linear_pointwise): x [M, K] contiguous float32 or bfloat16, W [N, K]
// dense or packed by `onednn_pack`, b [N] or none.
at::Tensor onednn_linear(const at::Tensor& x, const at::Tensor& w, const std::optional<at::Tensor>& b);

// W [N, K] reordered into oneDNN's layout for `rows`-row inputs (mkldnn::_reorder_linear_weight); an opaque tensor
// that only onednn_linear reads.
at::Tensor onednn_pack(const at::Tensor& w, int64_t rows);

// y = x w^T (+ b) for float32 training-size products in the library selected(), at most 6 rows in our GEMV
// (cpu/gemv.h), everything else ATen's addmm/mm: the routing of dreamer_fast::linear (composite/linear.cpp, which says
// why and checks the arguments; this does not). x [M, K] and w [N, K] row- or column-major (other strides are
// copied), b [N] contiguous or none.
at::Tensor linear(const at::Tensor& x, const at::Tensor& w, const std::optional<at::Tensor>& b);

// Whether torch was built with MKL's packed GEMM ops (mkl::_mkl_reorder_linear_weight, mkl::_mkl_linear).
bool mkl_available();
at::Tensor mkl_pack(const at::Tensor& w, int64_t rows);
at::Tensor mkl_linear(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& w, int64_t rows);

}  // namespace dreamer_fast::cpu_gemm
