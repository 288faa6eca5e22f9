// straight_through_categorical_stream's autograd formula in C++ (the Autograd dispatch key), for every device. The op
// mutates its stream, and torch.library.register_autograd takes functional ops only; the backward is the one of
// straight_through_categorical (it needs only probs and unimix). The stream gets no gradient.
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

const auto& forward_op() {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("dreamer_fast::straight_through_categorical_stream", "")
                             .typed<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, at::Tensor&, double)>();
  return op;
}

const auto& backward_op() {
  static const auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("dreamer_fast::straight_through_categorical_backward", "")
          .typed<at::Tensor(const std::optional<at::Tensor>&, const std::optional<at::Tensor>&, const at::Tensor&,
                            double)>();
  return op;
}

std::optional<at::Tensor> given(const at::Tensor& grad) {
  return grad.defined() ? std::optional<at::Tensor>(grad.contiguous()) : std::nullopt;
}

class StraightThroughCategoricalStream : public torch::autograd::Function<StraightThroughCategoricalStream> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& logits, at::Tensor stream, double unimix) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [sample, probs] = forward_op().call(logits, stream, unimix);
    ctx->save_for_backward({probs});
    ctx->saved_data["unimix"] = unimix;
    ctx->set_materialize_grads(false);  // an unused output's gradient stays undefined instead of zeros
    return {sample, probs};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const at::Tensor probs = ctx->get_saved_variables()[0];
    const double unimix = ctx->saved_data["unimix"].toDouble();
    at::Tensor grad_logits = backward_op().call(given(grads[0]), given(grads[1]), probs, unimix);
    return {grad_logits, at::Tensor(), at::Tensor()};
  }
};

std::tuple<at::Tensor, at::Tensor> straight_through_categorical_stream_autograd(const at::Tensor& logits,
                                                                               at::Tensor& stream, double unimix) {
  auto out = StraightThroughCategoricalStream::apply(logits, stream, unimix);
  return {out[0], out[1]};
}

}  // namespace

TORCH_LIBRARY_IMPL(dreamer_fast, Autograd, m) {
  m.impl("straight_through_categorical_stream", &straight_through_categorical_stream_autograd);
}
