// cpu/private_ops.h: the lookups, and the op `private_aten_ops() -> str`.
#include "private_ops.h"

#include <c10/util/Exception.h>
#include <torch/library.h>

#include <array>
#include <cstdlib>
#include <sstream>
#include <string>

namespace dreamer_fast::cpu {
namespace {

struct Expected {
  const char* name;   // "namespace::op" (the default overload)
  const char* types;  // argument types, "->", return types: "Tensor,int?->Tensor"
};

constexpr std::array<Expected, 5> kExpected = {{
    {"mkldnn::_linear_pointwise", "Tensor,Tensor,Tensor?,str,Scalar?[],str?->Tensor"},
    {"mkldnn::_reorder_linear_weight", "Tensor,int?->Tensor"},
    {"mkl::_mkl_reorder_linear_weight", "Tensor,int->Tensor"},
    {"mkl::_mkl_linear", "Tensor,Tensor,Tensor,Tensor?,int->Tensor"},
    {"mkldnn::_is_mkldnn_bf16_supported", "->bool"},
}};

// The types of `op`'s schema in the form of Expected::types.
std::string types_of(const c10::OperatorHandle& op) {
  std::string sig;
  for (const auto& a : op.schema().arguments()) sig += (sig.empty() ? "" : ",") + a.type()->str();
  sig += "->";
  std::string ret;
  for (const auto& r : op.schema().returns()) ret += (ret.empty() ? "" : ",") + r.type()->str();
  return sig + ret;
}

struct Lookup {
  std::optional<c10::OperatorHandle> op;  // set when found with the expected types
  std::string status;                     // "found", "missing", "schema <types found>" or "off"
};

// $DREAMER_FAST_PRIVATE_ATEN_OPS=0: none is used, as on a torch that has none of them (the public paths, on any torch).
bool allowed() {
  const char* env = std::getenv("DREAMER_FAST_PRIVATE_ATEN_OPS");
  if (env == nullptr || std::string(env).empty() || std::string(env) == "1") return true;
  TORCH_CHECK(std::string(env) == "0", "$DREAMER_FAST_PRIVATE_ATEN_OPS must be 0 or 1, got \"", env, "\"");
  return false;
}

const std::array<Lookup, kExpected.size()>& lookups() {
  static const auto table = [] {
    std::array<Lookup, kExpected.size()> t;
    const bool use = allowed();
    for (size_t i = 0; i < kExpected.size(); ++i) {
      const auto op = c10::Dispatcher::singleton().findSchema({kExpected[i].name, ""});
      if (!use) {
        t[i].status = "off";
      } else if (!op) {
        t[i].status = "missing";
      } else if (const std::string found = types_of(*op); found != kExpected[i].types) {
        t[i].status = "schema " + found;
      } else {
        t[i] = {op, "found"};
      }
    }
    return t;
  }();
  return table;
}

// "name=status" lines for dreamer_fast.private_aten_ops().
std::string describe() {
  std::ostringstream s;
  for (size_t i = 0; i < kExpected.size(); ++i) s << (i ? "\n" : "") << kExpected[i].name << "=" << lookups()[i].status;
  return s.str();
}

}  // namespace

const std::optional<c10::OperatorHandle>& private_op(PrivateOp which) {
  return lookups()[static_cast<size_t>(which)].op;
}

}  // namespace dreamer_fast::cpu

TORCH_LIBRARY_FRAGMENT(dreamer_fast, m) { m.def("private_aten_ops() -> str", &dreamer_fast::cpu::describe); }
