// dreamer_fast::linear(Tensor x, Tensor weight, Tensor? bias) -> Tensor: y = x weight^T (+ bias), the GEMM of every
// Linear layer of the agent (MLPs, heads, the decoder's first layers, imagination's RSSM layers).
//
// Why an op: on the CPU, torch's float32 addmm/mm run MKL, and MKL on a CPU whose vendor is not Intel takes its AVX2
// paths: measured on an AMD EPYC Zen 5 (full-width AVX-512, 2 threads), ~210 GFLOP/s at every training shape of the
// Atari agent against ~480 for oneDNN's matmul (docs/PERFORMANCE.md). So on the CPU a float32
// product large enough runs where cpu_gemm.h says (oneDNN on CPUs that are not Intel, MKL on Intel), and one of at
// most 6 rows (acting) is our GEMV kernel (cpu/gemv.h); cpu_gemm::linear does the routing. Everything else (float64,
// the half types, CUDA, small or empty products) is ATen's addmm, the same function.
//
// x [M, K] and weight [N, K] may be row- or column-major views: the backward passes transposed views (dx = linear(dy,
// weight^T), dweight = linear(dy^T, x^T)), which oneDNN reads as they lie (measured faster than copying them first).
// Other strides are copied to a contiguous layout first: oneDNN's inner product took 1500x longer with a row-major
// weight whose rows were padded (stride 1042 for 1024 columns, a column slice) than with its contiguous copy.
// bias [N] contiguous. Returns y [M, N] contiguous.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "../checks/linear.h"
#include "cpu_gemm.h"

namespace dreamer_fast::linear_op {
namespace {

using Tensor = at::Tensor;
using OptTensor = std::optional<at::Tensor>;

Tensor kernel(const Tensor& x, const Tensor& weight, const OptTensor& bias) {
  check_linear_inputs(x, weight, bias);
  return cpu_gemm::linear(x, weight, bias);
}

}  // namespace
}  // namespace dreamer_fast::linear_op

// Device-generic (the CPU's float32 products routed by cpu_gemm::linear, everything else ATen's addmm): one
// registration per op library serves every device, the emulated library included (no CUDA kernel of its own).
TORCH_LIBRARY_IMPL(dreamer_fast, CompositeExplicitAutograd, m) { m.impl("linear", &dreamer_fast::linear_op::kernel); }
TORCH_LIBRARY_IMPL(dreamer_fast_emu, CompositeExplicitAutograd, m) {
  m.impl("linear", &dreamer_fast::linear_op::kernel);
}
