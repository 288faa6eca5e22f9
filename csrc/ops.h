// Declarations of every backend's implementation of every op: dreamer_fast::{cpu, cuda, emulated}::<op>.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <tuple>

#define DF_DECLARE_OPS                                                                                          \
  at::Tensor lambda_return(const at::Tensor& reward, const at::Tensor& value, const at::Tensor& discount,       \
                           const at::Tensor& bootstrap, double lam);                                            \
  std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> lambda_return_backward(                            \
      const at::Tensor& grad, const at::Tensor& ret, const at::Tensor& value, const at::Tensor& discount,       \
      const at::Tensor& bootstrap, double lam);                                                                 \
  std::tuple<at::Tensor, at::Tensor> straight_through_categorical(                                              \
      const at::Tensor& logits, const std::optional<at::Tensor>& noise, const at::Tensor& seed, double unimix); \
  at::Tensor straight_through_categorical_backward(const std::optional<at::Tensor>& grad_sample,                \
                                                   const std::optional<at::Tensor>& grad_probs,                 \
                                                   const at::Tensor& probs, double unimix);                     \
  std::tuple<at::Tensor, at::Tensor> kl_balance(const at::Tensor& post_logits, const at::Tensor& prior_logits,  \
                                                double balance, double free, bool free_avg, double unimix);     \
  std::tuple<at::Tensor, at::Tensor> kl_balance_backward(                                                       \
      const at::Tensor& grad_loss, const at::Tensor& grad_kl, const at::Tensor& post_logits,                    \
      const at::Tensor& prior_logits, const at::Tensor& kl, double balance, double free, bool free_avg,         \
      double unimix);                                                                                           \
  std::tuple<at::Tensor, at::Tensor, at::Tensor> ln_gru(const at::Tensor& gates, const at::Tensor& deter,       \
                                                        const at::Tensor& weight, const at::Tensor& bias,       \
                                                        double eps);                                            \
  std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> ln_gru_backward(                                   \
      const at::Tensor& grad, const at::Tensor& gates, const at::Tensor& deter, const at::Tensor& weight,       \
      const at::Tensor& bias, const at::Tensor& mean, const at::Tensor& rstd);

namespace dreamer_fast {
namespace cpu {
DF_DECLARE_OPS
}
namespace cuda {
DF_DECLARE_OPS
}
namespace emulated {
DF_DECLARE_OPS
}
}  // namespace dreamer_fast
