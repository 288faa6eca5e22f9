// The CPU GEMM library choice of cpu_gemm.h, and the op `dreamer_fast::set_cpu_gemm(str mode) -> str`.
#include "cpu_gemm.h"

#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/stack.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include "../cpu/features.h"
#include "../cpu/gemv.h"
#include "../cpu/private_ops.h"

#include <atomic>
#include <string>

namespace dreamer_fast::cpu_gemm {
namespace {

enum class Mode : int { kAuto, kMkl, kOnednn, kAten };
std::atomic<Mode> g_mode{Mode::kAuto};

using cpu::PrivateOp;
using cpu::private_op;

bool onednn_available() { return private_op(PrivateOp::kOnednnLinear) && private_op(PrivateOp::kOnednnPack); }

const char* name(Mode m) {
  switch (m) {
    case Mode::kMkl: return "mkl";
    case Mode::kOnednn: return "onednn";
    case Mode::kAten: return "aten";
    default: return "auto";
  }
}

std::string set_cpu_gemm(const std::string& mode) {
  Mode m;
  if (mode == "auto") {
    m = Mode::kAuto;
  } else if (mode == "mkl") {
    m = Mode::kMkl;
  } else if (mode == "aten") {
    m = Mode::kAten;
  } else if (mode == "onednn") {
    TORCH_CHECK(onednn_available(), "set_cpu_gemm: this build of torch has no oneDNN linear ops of the expected "
                "schema (mkldnn::_linear_pointwise, mkldnn::_reorder_linear_weight); use \"auto\", \"mkl\" or "
                "\"aten\"");
    m = Mode::kOnednn;
  } else {
    TORCH_CHECK(false, "set_cpu_gemm: `mode` must be \"auto\", \"mkl\", \"onednn\" or \"aten\", got \"", mode,
                "\"");
  }
  return name(g_mode.exchange(m));
}

// The library in use, by name ("aten" for a forced "mkl" where MKL's packed ops are missing: ATen's mm runs).
std::string cpu_gemm() {
  switch (selected()) {
    case Library::kOnednn: return "onednn";
    case Library::kMkl: return mkl_available() ? "mkl" : "aten";
    default: return "aten";
  }
}

}  // namespace

Library selected() {
  switch (g_mode.load(std::memory_order_relaxed)) {
    case Mode::kMkl: return Library::kMkl;
    case Mode::kOnednn: return Library::kOnednn;
    case Mode::kAten: return Library::kAten;
    default:
      // MKL where it runs its widest kernels (Intel); elsewhere oneDNN, which uses every ISA the CPU has (AMD EPYC
      // Zen 4, 2 threads: 0.54-0.99x MKL's time at the agent's GEMMs under the AVX2 profile, 0.68-0.84x with AVX-512).
      if (cpu::mkl_full_isa() && mkl_available()) return Library::kMkl;
      if (onednn_available()) return Library::kOnednn;
      return mkl_available() ? Library::kMkl : Library::kAten;
  }
}

// The two oneDNN ops are called boxed: their C++ signatures (string_view vs std::string, List vs ArrayRef) have
// changed between torch versions, their schemas have not.
static at::Tensor call_boxed(const c10::OperatorHandle& op, torch::jit::Stack stack) {
  op.callBoxed(&stack);
  return std::move(stack.at(0)).toTensor();
}

at::Tensor onednn_linear(const at::Tensor& x, const at::Tensor& w, const std::optional<at::Tensor>& b) {
  static const c10::OperatorHandle op = *private_op(PrivateOp::kOnednnLinear);
  return call_boxed(op, {x, w, b ? c10::IValue(*b) : c10::IValue(), c10::IValue("none"),
                         c10::IValue(c10::List<std::optional<c10::Scalar>>()), c10::IValue()});
}

at::Tensor onednn_pack(const at::Tensor& w, int64_t rows) {
  static const c10::OperatorHandle op = *private_op(PrivateOp::kOnednnPack);
  return call_boxed(op, {w, c10::IValue(rows)});
}

namespace {

// oneDNN only for products at least this large (rows, output columns, inner size). A sweep of op / at::mm times on
// an AMD EPYC Zen 5, 2 threads (all four row/column-major combinations): from these sizes on oneDNN was faster
// everywhere (median 0.59x MKL's time); below them it lost in places by 1.1-4x (its fixed cost per call at small
// products, e.g. 16 x 128 -> 256), and by 2-18x with an output of 1-64 columns from a column-major x (the weight
// gradient of a critic's or an actor's last layer). The agent's training GEMMs are all above; its last layers are not.
constexpr int64_t kOnednnMinRows = 64, kOnednnMinCols = 256, kOnednnMinInner = 256;

// A row- or column-major matrix with canonical strides (a size-1 dim may carry any stride in torch, and oneDNN derives
// the layout from the strides); anything else, copied row-major.
at::Tensor plain(const at::Tensor& m) {
  if (m.is_contiguous()) return m.as_strided(m.sizes(), {m.size(1), 1});
  if (m.t().is_contiguous()) return m.as_strided(m.sizes(), {1, m.size(0)});
  return m.contiguous();
}

}  // namespace

at::Tensor linear(const at::Tensor& x, const at::Tensor& w, const std::optional<at::Tensor>& b) {
  const int64_t M = x.size(0), K = x.size(1), N = w.size(0);
  const bool cpu_f32 = x.is_cpu() && x.scalar_type() == at::kFloat;
  if (w.scalar_type() != x.scalar_type()) {
    // bfloat16 weights of a float32 x: the GEMV on the CPU (it reads the copy as it lies); elsewhere (CUDA) the copy
    // is widened at each call, the same function without the CPU's saving (a GPU's B = 1 step is bound by its
    // launches, not its bytes).
    TORCH_CHECK(x.scalar_type() == at::kFloat && w.scalar_type() == at::kBFloat16,
                "cpu_gemm::linear: weights of another dtype than x must be bfloat16 with a float32 x, got ",
                w.scalar_type(), " with ", x.scalar_type());
    if (cpu_f32) {
      return cpu::linear_gemv(x.stride(1) == 1 ? x : x.contiguous(), w.contiguous(),
                              b ? b->contiguous() : at::zeros({N}, x.options()));
    }
    return cpu_gemm::linear(x, w.to(x.scalar_type()), b);
  }
  if (cpu_f32 && M > 0 && N > 0 && K > 0) {
    if (M <= kGemvMaxRows && w.is_contiguous() && x.stride(1) == 1) {
      return cpu::linear_gemv(x, w, b ? b->contiguous() : at::zeros({N}, x.options()));
    }
    if (selected() == Library::kOnednn && M >= kOnednnMinRows && N >= kOnednnMinCols && K >= kOnednnMinInner) {
      return onednn_linear(plain(x), plain(w), b);
    }
  }
  return b ? at::addmm(*b, x, w.t()) : at::mm(x, w.t());
}

bool mkl_available() {
  return private_op(PrivateOp::kMklPack) && private_op(PrivateOp::kMklLinear);
}

at::Tensor mkl_pack(const at::Tensor& w, int64_t rows) {
  using Fn = at::Tensor(const at::Tensor&, int64_t);
  static const auto op = private_op(PrivateOp::kMklPack)->typed<Fn>();
  return op.call(w, rows);
}

at::Tensor mkl_linear(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& w, int64_t rows) {
  using Fn = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                        int64_t);
  static const auto op = private_op(PrivateOp::kMklLinear)->typed<Fn>();
  return op.call(x, packed, w, std::nullopt, rows);
}

}  // namespace dreamer_fast::cpu_gemm

// Process-wide settings, not tensor ops: "set_cpu_gemm" returns the previous mode, "cpu_gemm" the library in use.
TORCH_LIBRARY_FRAGMENT(dreamer_fast, m) {
  m.def("set_cpu_gemm(str mode) -> str", &dreamer_fast::cpu_gemm::set_cpu_gemm);
  m.def("cpu_gemm() -> str", &dreamer_fast::cpu_gemm::cpu_gemm);
}
