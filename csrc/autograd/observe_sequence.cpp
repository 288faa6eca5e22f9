// observe_sequence's autograd formula in C++ (the Autograd dispatch key), for every device.
//
// The forward calls observe_sequence_forward and the backward observe_sequence_backward through the dispatcher
// (below autograd), so the device kernels (csrc/composite/observe_sequence.cpp) run the loops over time, and
// torch.compile traces the two as single ops to their fake kernels (dreamer_fast/ops/observe_sequence.py).
// Per step the graph holds only what the backward reads: the GEMMs' inputs that are not outputs already (x, y),
// ln_gru's gates and row statistics and the sampler's probabilities; the outputs deters and samples are reused as
// the inputs of the next step's GEMMs.
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <string>

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;
using at::Tensor;
using OptTensor = std::optional<at::Tensor>;
using OptDtype = std::optional<at::ScalarType>;

using ForwardFn = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor,
                                                      Tensor>(
    const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&,
    const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&, const OptTensor&,
    const Tensor&, double, double, OptDtype);
using BackwardFn = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor,
                                                       Tensor, Tensor, Tensor, Tensor>(
    const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&,
    const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&,
    const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&, double);

// The ops of one library ("dreamer_fast" or "dreamer_fast_emu"), looked up once.
struct Ops {
  c10::TypedOperatorHandle<ForwardFn> forward;
  c10::TypedOperatorHandle<BackwardFn> backward;
  explicit Ops(const std::string& ns)
      : forward(c10::Dispatcher::singleton()
                    .findSchemaOrThrow((ns + "::observe_sequence_forward").c_str(), "")
                    .typed<ForwardFn>()),
        backward(c10::Dispatcher::singleton()
                     .findSchemaOrThrow((ns + "::observe_sequence_backward").c_str(), "")
                     .typed<BackwardFn>()) {}
};

template <int kLib>
const Ops& ops() {
  static const Ops instance(kLib == 0 ? "dreamer_fast" : "dreamer_fast_emu");
  return instance;
}

template <int kLib>
class ObserveSequence : public torch::autograd::Function<ObserveSequence<kLib>> {
 public:
  static variable_list forward(AutogradContext* ctx, const Tensor& act_proj, const Tensor& emb_proj,
                               const Tensor& keep, const Tensor& deter0, const Tensor& stoch0,
                               const Tensor& w_stoch_in, const Tensor& w_gru, const Tensor& b_gru, const Tensor& ln_w,
                               const Tensor& ln_b, const Tensor& w_deter_out, const Tensor& w_post,
                               const Tensor& b_post, const OptTensor& noise, const Tensor& seeds, double unimix,
                               double eps, OptDtype gemm_dtype) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [deters, samples, logits, x, gates, mean, rstd, y, probs] =
        ops<kLib>().forward.call(act_proj, emb_proj, keep, deter0, stoch0, w_stoch_in, w_gru, b_gru, ln_w, ln_b,
                                 w_deter_out, w_post, b_post, noise, seeds, unimix, eps, gemm_dtype);
    ctx->save_for_backward({keep, deter0, stoch0, w_stoch_in, w_gru, ln_w, ln_b, w_deter_out, w_post, deters,
                            samples, x, gates, mean, rstd, y, probs});
    ctx->saved_data["unimix"] = unimix;
    return {deters, samples, logits};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto s = ctx->get_saved_variables();
    // Unused outputs' gradients arrive as zeros (materialised by autograd): the backward is one code path.
    auto [d_act, d_emb, d_deter0, d_stoch0, d_w_si, d_w_gru, d_b_gru, d_ln_w, d_ln_b, d_w_do, d_w_post, d_b_post] =
        ops<kLib>().backward.call(grads[0].contiguous(), grads[1].contiguous(), grads[2].contiguous(), s[0], s[1],
                                  s[2], s[3], s[4], s[5], s[6], s[7], s[8], s[9], s[10], s[11], s[12], s[13], s[14],
                                  s[15], s[16], ctx->saved_data["unimix"].toDouble());
    // One entry per forward argument: (act_proj, emb_proj, keep, deter0, stoch0, w_stoch_in, w_gru, b_gru, ln_w,
    // ln_b, w_deter_out, w_post, b_post, noise, seeds, unimix, eps, gemm_dtype).
    return {d_act,  d_emb,  Tensor(), d_deter0, d_stoch0, d_w_si,   d_w_gru,  d_b_gru,  d_ln_w,
            d_ln_b, d_w_do, d_w_post, d_b_post, Tensor(), Tensor(), Tensor(), Tensor(), Tensor()};
  }
};

template <int kLib>
std::tuple<Tensor, Tensor, Tensor> observe_sequence_autograd(
    const Tensor& act_proj, const Tensor& emb_proj, const Tensor& keep, const Tensor& deter0, const Tensor& stoch0,
    const Tensor& w_stoch_in, const Tensor& w_gru, const Tensor& b_gru, const Tensor& ln_w, const Tensor& ln_b,
    const Tensor& w_deter_out, const Tensor& w_post, const Tensor& b_post, const OptTensor& noise,
    const Tensor& seeds, double unimix, double eps, OptDtype gemm_dtype) {
  auto out = ObserveSequence<kLib>::apply(act_proj, emb_proj, keep, deter0, stoch0, w_stoch_in, w_gru, b_gru, ln_w,
                                          ln_b, w_deter_out, w_post, b_post, noise, seeds, unimix, eps, gemm_dtype);
  return {out[0], out[1], out[2]};
}

}  // namespace

TORCH_LIBRARY_IMPL(dreamer_fast, Autograd, m) { m.impl("observe_sequence", &observe_sequence_autograd<0>); }
TORCH_LIBRARY_IMPL(dreamer_fast_emu, Autograd, m) { m.impl("observe_sequence", &observe_sequence_autograd<1>); }
