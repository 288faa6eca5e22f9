// lambda_return's autograd formula in C++ (the Autograd dispatch key), for every device.
//
// Why C++: the op's own work at DreamerV2 sizes is ~10-30 us, and a Python autograd formula
// (torch.library.register_autograd) added ~100 us per forward+backward. Here the dispatcher goes straight from
// the autograd kernel to the device kernel. torch.compile traces through it to the fake kernels (registered in
// dreamer_fast/ops/lambda_return.py).
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

const auto& forward_op() {
  static const auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("dreamer_fast::lambda_return", "")
          .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, double)>();
  return op;
}

const auto& backward_op() {
  using Grads = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>;
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("dreamer_fast::lambda_return_backward", "")
                             .typed<Grads(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                          const at::Tensor&, const at::Tensor&, double)>();
  return op;
}

class LambdaReturn : public torch::autograd::Function<LambdaReturn> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& reward, const at::Tensor& value,
                            const at::Tensor& discount, const at::Tensor& bootstrap, double lam) {
    at::AutoDispatchBelowADInplaceOrView guard;
    at::Tensor ret = forward_op().call(reward, value, discount, bootstrap, lam);
    ctx->save_for_backward({ret, value, discount, bootstrap});
    ctx->saved_data["lam"] = lam;
    return ret;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    auto [d_reward, d_value, d_discount, d_boot] =
        backward_op().call(grads[0].contiguous(), saved[0], saved[1], saved[2], saved[3],
                           ctx->saved_data["lam"].toDouble());
    return {d_reward, d_value, d_discount, d_boot, at::Tensor()};
  }
};

at::Tensor lambda_return_autograd(const at::Tensor& reward, const at::Tensor& value, const at::Tensor& discount,
                                  const at::Tensor& bootstrap, double lam) {
  return LambdaReturn::apply(reward, value, discount, bootstrap, lam);
}

}  // namespace

TORCH_LIBRARY_IMPL(dreamer_fast, Autograd, m) { m.impl("lambda_return", &lambda_return_autograd); }
