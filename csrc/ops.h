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
  std::tuple<at::Tensor, at::Tensor> straight_through_categorical_stream(const at::Tensor& logits,             \
                                                                       at::Tensor& stream, double unimix);      \
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
      const at::Tensor& bias, const at::Tensor& mean, const at::Tensor& rstd);                                  \
  at::Tensor elu(const at::Tensor& x);                                                                          \
  at::Tensor elu_backward(const at::Tensor& grad, const at::Tensor& out);

// Registers every op of backend namespace `ns` (dreamer_fast::cpu, ::cuda or ::emulated) on the library `m`:
// the one list of kernels, so no backend can miss an op.
#define DF_REGISTER_KERNELS(m, ns)                                                             \
  do {                                                                                           \
    m.impl("lambda_return", &ns::lambda_return);                                               \
    m.impl("lambda_return_backward", &ns::lambda_return_backward);                             \
    m.impl("kl_balance", &ns::kl_balance);                                                     \
    m.impl("kl_balance_backward", &ns::kl_balance_backward);                                   \
    m.impl("straight_through_categorical", &ns::straight_through_categorical);                 \
    m.impl("straight_through_categorical_stream", &ns::straight_through_categorical_stream);   \
    m.impl("straight_through_categorical_backward", &ns::straight_through_categorical_backward); \
    m.impl("ln_gru", &ns::ln_gru);                                                             \
    m.impl("ln_gru_backward", &ns::ln_gru_backward);                                           \
    m.impl("elu", &ns::elu);                                                                   \
    m.impl("elu_backward", &ns::elu_backward);                                                 \
  } while (0)

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
