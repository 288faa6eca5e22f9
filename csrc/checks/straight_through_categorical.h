// Argument checks of straight_through_categorical(_backward), shared by the CPU, CUDA and emulated kernels.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cstdint>
#include <optional>

#include "common.h"

namespace dreamer_fast::st_checks {

inline void check_probs_like(const char* op, const char* name, const at::Tensor& t, bool allow_half) {
  check_float(op, name, t, allow_half);
  TORCH_CHECK(t.dim() >= 1, op, ": `", name, "` must be [..., K] (at least 1 dim), got shape ", t.sizes());
  TORCH_CHECK(t.size(-1) >= 1, op, ": `", name, "` must have K >= 1 classes in its last dim, got shape ", t.sizes());
  TORCH_CHECK(t.size(-1) <= INT32_MAX, op, ": `", name, "` has too many classes (", t.size(-1), " > 2^31 - 1)");
  TORCH_CHECK(t.is_contiguous(), op, ": `", name, "` must be contiguous");
}

inline void check_unimix(const char* op, double unimix) {
  TORCH_CHECK(unimix >= 0.0 && unimix <= 1.0, op, ": `unimix` must be in [0, 1], got ", unimix);
}

// Returns the seed's value (its int64 bits, the Philox key).
inline uint64_t forward(const at::Tensor& logits, const std::optional<at::Tensor>& noise, const at::Tensor& seed,
                        double unimix, bool allow_half) {
  const char* op = "straight_through_categorical";
  check_probs_like(op, "logits", logits, allow_half);
  if (noise) {
    check_same(op, "noise", *noise, logits, "logits");
    check_shape(op, "noise", *noise, logits.sizes().slice(0, logits.dim() - 1));
  }
  TORCH_CHECK(seed.device().is_cpu() && seed.scalar_type() == at::kLong && seed.numel() == 1, op,
              ": `seed` must be a one-element int64 tensor on the CPU, got ", seed.scalar_type(), " of shape ",
              seed.sizes(), " on ", seed.device());
  check_unimix(op, unimix);
  return static_cast<uint64_t>(seed.item<int64_t>());
}

// The stream variant: `stream` is int64 [key, offset], contiguous, on the device of `logits`.
inline void stream_forward(const at::Tensor& logits, const at::Tensor& stream, double unimix, bool allow_half) {
  const char* op = "straight_through_categorical_stream";
  check_probs_like(op, "logits", logits, allow_half);
  TORCH_CHECK(stream.scalar_type() == at::kLong && stream.dim() == 1 && stream.size(0) == 2 && stream.is_contiguous(),
              op, ": `stream` must be a contiguous int64 tensor [key, offset] of shape [2], got ", stream.scalar_type(),
              " of shape ", stream.sizes());
  TORCH_CHECK(stream.device() == logits.device(), op, ": `stream` must be on the device of `logits` (",
              logits.device(), "), got ", stream.device());
  check_unimix(op, unimix);
}

inline void backward(const std::optional<at::Tensor>& grad_sample, const std::optional<at::Tensor>& grad_probs,
                     const at::Tensor& probs, double unimix, bool allow_half) {
  const char* op = "straight_through_categorical_backward";
  check_probs_like(op, "probs", probs, allow_half);
  for (const auto& [name, grad] : {std::pair{"grad_sample", &grad_sample}, std::pair{"grad_probs", &grad_probs}}) {
    if (!*grad) continue;
    check_same(op, name, **grad, probs, "probs");
    check_shape(op, name, **grad, probs.sizes());
  }
  check_unimix(op, unimix);
}

}  // namespace dreamer_fast::st_checks
