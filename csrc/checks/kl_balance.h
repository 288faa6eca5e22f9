// Argument checks of kl_balance and kl_balance_backward, shared by the CPU, CUDA and emulated kernels.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cmath>

#include "common.h"

namespace dreamer_fast {

inline void check_kl_inputs(const char* op, const at::Tensor& post, const at::Tensor& prior, double balance,
                            double free, double unimix, bool allow_half) {
  check_float(op, "post_logits", post, allow_half);
  TORCH_CHECK(post.dim() >= 2, op, ": `post_logits` must be [..., S, K] (at least 2 dims), got shape ", post.sizes());
  TORCH_CHECK(post.size(-1) >= 1, op, ": `post_logits` must have at least one class (K >= 1), got shape ",
              post.sizes());
  TORCH_CHECK(post.is_contiguous(), op, ": `post_logits` must be contiguous");
  check_same(op, "prior_logits", prior, post, "post_logits");
  check_shape(op, "prior_logits", prior, post.sizes());
  TORCH_CHECK(balance >= 0 && balance <= 1, op, ": `balance` must be in [0, 1], got ", balance);
  TORCH_CHECK(free >= 0 && std::isfinite(free), op, ": `free` must be finite and >= 0, got ", free);
  TORCH_CHECK(unimix >= 0 && unimix <= 1, op, ": `unimix` must be in [0, 1], got ", unimix);
}

inline void check_kl_backward_inputs(const char* op, const at::Tensor& grad_loss, const at::Tensor& grad_kl,
                                     const at::Tensor& post, const at::Tensor& prior, const at::Tensor& kl,
                                     double balance, double free, double unimix, bool allow_half) {
  check_kl_inputs(op, post, prior, balance, free, unimix, allow_half);
  const auto lead = post.sizes().slice(0, post.dim() - 2);
  check_same(op, "grad_loss", grad_loss, post, "post_logits");
  check_shape(op, "grad_loss", grad_loss, {});
  check_same(op, "grad_kl", grad_kl, post, "post_logits");
  check_shape(op, "grad_kl", grad_kl, lead);
  check_same(op, "kl", kl, post, "post_logits");
  check_shape(op, "kl", kl, lead);
}

}  // namespace dreamer_fast
