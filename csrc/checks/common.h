// Argument checks shared by every backend. Python checks first with friendlier messages; these are the backstop
// for C++ callers and name the op, the argument, what was expected and what was received.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <string>

namespace dreamer_fast {

inline void check_float(const char* op, const char* name, const at::Tensor& t, bool allow_half) {
  const auto s = t.scalar_type();
  const bool ok = s == at::kFloat || s == at::kDouble || (allow_half && (s == at::kHalf || s == at::kBFloat16));
  TORCH_CHECK(ok, op, ": `", name, "` must be float32 or float64", allow_half ? " (or float16/bfloat16 on CUDA)" : "",
              ", got ", s);
}

// Defined, with the dtype and device of `ref` (any layout).
inline void check_like(const char* op, const char* name, const at::Tensor& t, const at::Tensor& ref,
                       const char* ref_name) {
  TORCH_CHECK(t.defined(), op, ": `", name, "` is undefined");
  TORCH_CHECK(t.scalar_type() == ref.scalar_type(), op, ": `", name, "` must have the dtype of `", ref_name, "` (",
              ref.scalar_type(), "), got ", t.scalar_type());
  TORCH_CHECK(t.device() == ref.device(), op, ": `", name, "` must be on the device of `", ref_name, "` (",
              ref.device(), "), got ", t.device());
}

// check_like, and contiguous.
inline void check_same(const char* op, const char* name, const at::Tensor& t, const at::Tensor& ref,
                       const char* ref_name) {
  check_like(op, name, t, ref, ref_name);
  TORCH_CHECK(t.is_contiguous(), op, ": `", name, "` must be contiguous");
}

// `what` names the expected shape in the op's symbols ("[B, S, K]"); the message then gives both.
inline void check_shape(const char* op, const char* name, const at::Tensor& t, at::IntArrayRef expected,
                        const char* what = nullptr) {
  TORCH_CHECK(t.sizes() == expected, op, ": `", name, "` must have shape ", what ? what : "", what ? " = " : "",
              expected, ", got ", t.sizes());
}

}  // namespace dreamer_fast
