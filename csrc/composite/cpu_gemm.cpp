// The CPU GEMM library choice of cpu_gemm.h, and the op `dreamer_fast::set_cpu_gemm(str mode) -> str`.
#include "cpu_gemm.h"

#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/stack.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include "../cpu/gemv.h"

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif

#include <atomic>
#include <cstring>
#include <string>

namespace dreamer_fast::cpu_gemm {
namespace {

enum class Mode : int { kAuto, kMkl, kOnednn };
std::atomic<Mode> g_mode{Mode::kAuto};

std::optional<c10::OperatorHandle> find(const char* name) {
  return c10::Dispatcher::singleton().findSchema({name, ""});
}

bool is_intel() {
#if defined(__x86_64__) || defined(__i386__)
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (!__get_cpuid(0, &a, &b, &c, &d)) return false;
  char vendor[13];
  std::memcpy(vendor, &b, 4);
  std::memcpy(vendor + 4, &d, 4);
  std::memcpy(vendor + 8, &c, 4);
  vendor[12] = '\0';
  return std::strcmp(vendor, "GenuineIntel") == 0;
#else
  return false;
#endif
}

bool onednn_available() {
  static const bool ok =
      find("mkldnn::_linear_pointwise").has_value() && find("mkldnn::_reorder_linear_weight").has_value();
  return ok;
}

const char* name(Mode m) {
  switch (m) {
    case Mode::kMkl: return "mkl";
    case Mode::kOnednn: return "onednn";
    default: return "auto";
  }
}

std::string set_cpu_gemm(const std::string& mode) {
  Mode m;
  if (mode == "auto") {
    m = Mode::kAuto;
  } else if (mode == "mkl") {
    m = Mode::kMkl;
  } else if (mode == "onednn") {
    TORCH_CHECK(onednn_available(), "set_cpu_gemm: this build of torch has no oneDNN linear ops (mkldnn::_linear_"
                "pointwise); use \"auto\" or \"mkl\"");
    m = Mode::kOnednn;
  } else {
    TORCH_CHECK(false, "set_cpu_gemm: `mode` must be \"auto\", \"mkl\" or \"onednn\", got \"", mode, "\"");
  }
  return name(g_mode.exchange(m));
}

// The library in use, by name ("mkl" also where MKL's packed ops are missing: then a plain at::mm runs).
std::string cpu_gemm() { return selected() == Library::kOnednn ? "onednn" : "mkl"; }

}  // namespace

Library selected() {
  static const bool intel = is_intel();
  switch (g_mode.load(std::memory_order_relaxed)) {
    case Mode::kMkl: return Library::kMkl;
    case Mode::kOnednn: return Library::kOnednn;
    default: return !intel && onednn_available() ? Library::kOnednn : Library::kMkl;
  }
}

// The two oneDNN ops are called boxed: their C++ signatures (string_view vs std::string, List vs ArrayRef) have
// changed between torch versions, their schemas have not.
static at::Tensor call_boxed(const c10::OperatorHandle& op, torch::jit::Stack stack) {
  op.callBoxed(&stack);
  return std::move(stack.at(0)).toTensor();
}

at::Tensor onednn_linear(const at::Tensor& x, const at::Tensor& w, const std::optional<at::Tensor>& b) {
  static const c10::OperatorHandle op = *find("mkldnn::_linear_pointwise");
  return call_boxed(op, {x, w, b ? c10::IValue(*b) : c10::IValue(), c10::IValue("none"),
                         c10::IValue(c10::List<std::optional<c10::Scalar>>()), c10::IValue()});
}

at::Tensor onednn_pack(const at::Tensor& w, int64_t rows) {
  static const c10::OperatorHandle op = *find("mkldnn::_reorder_linear_weight");
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
  if (x.is_cpu() && x.scalar_type() == at::kFloat && M > 0 && N > 0 && K > 0) {
    if (M <= kGemvMaxRows && w.is_contiguous() && x.stride(1) == 1) {
      return cpu::linear_gemv(x, w, b ? *b : at::zeros({N}, x.options()));
    }
    if (selected() == Library::kOnednn && M >= kOnednnMinRows && N >= kOnednnMinCols && K >= kOnednnMinInner) {
      return onednn_linear(plain(x), plain(w), b);
    }
  }
  return b ? at::addmm(*b, x, w.t()) : at::mm(x, w.t());
}

bool mkl_available() {
  static const bool ok = find("mkl::_mkl_reorder_linear_weight").has_value() && find("mkl::_mkl_linear").has_value();
  return ok;
}

at::Tensor mkl_pack(const at::Tensor& w, int64_t rows) {
  using Fn = at::Tensor(const at::Tensor&, int64_t);
  static const auto op = find("mkl::_mkl_reorder_linear_weight")->typed<Fn>();
  return op.call(w, rows);
}

at::Tensor mkl_linear(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& w, int64_t rows) {
  using Fn = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                        int64_t);
  static const auto op = find("mkl::_mkl_linear")->typed<Fn>();
  return op.call(x, packed, w, std::nullopt, rows);
}

}  // namespace dreamer_fast::cpu_gemm

// Process-wide settings, not tensor ops: "set_cpu_gemm" returns the previous mode, "cpu_gemm" the library in use.
TORCH_LIBRARY_FRAGMENT(dreamer_fast, m) {
  m.def("set_cpu_gemm(str mode) -> str", &dreamer_fast::cpu_gemm::set_cpu_gemm);
  m.def("cpu_gemm() -> str", &dreamer_fast::cpu_gemm::cpu_gemm);
}
