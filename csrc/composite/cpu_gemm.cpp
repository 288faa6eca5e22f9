// The CPU GEMM library choice of cpu_gemm.h, and the op `dreamer_fast::set_cpu_gemm(str mode) -> str`.
#include "cpu_gemm.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/stack.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

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
