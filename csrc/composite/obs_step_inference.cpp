// One RSSM observe step without autograd (dreamer_fast::obs_step_inference): the policy's filter while acting in the
// environment, B = 1 under torch.no_grad at every environment step.
//
// Why an op of its own: at B = 1 the step is ~10 GEMVs that each read their weight once (22.6 MB of float32 at
// DreamerV2's Atari sizes, which is the floor of its time) plus ~15 tiny ops. From Python every one of those costs a
// Python call and an op dispatch, and the fused sampler's wrapper a few more: ~0.3 ms a step on top of the GEMVs.
// Here the step is one dispatch, and ATen calls from C++. Device-generic like observe_sequence: ATen plus our
// ln_gru and straight_through_categorical kernels through the dispatcher, so it is the CPU and the CUDA kernel (and,
// in dreamer_fast_emu, runs the emulated CUDA kernels).
//
// The step (as dreamer_fast/_rssm_reference.py's obs_step; h = deter [B, D], z = stoch [B, S*K], k = keep[:, None]):
//   x            = elu(b_img_in + [z k, action k] W_img_in^T)
//   h'           = ln_gru(b_gru + [x, h k] W_gru^T, h k, ln_w, ln_b, eps)
//   post_logits  = b_post + elu(b_obs_out + [h', embed] W_obs_out^T) W_post^T
//   sample       = straight_through_categorical(post_logits, noise or seed, unimix)
//   prior_logits = b_prior + elu(b_img_out + h' W_img_out^T) W_prior^T;  prior_probs = its (unimixed) softmax
// The prior is computed only with `with_prior` (acting needs the posterior alone: 17% of the weights are the prior's).
//
// Weights: in the state's dtype, or bfloat16 copies with a float32 state (RSSM.inference_dtype): at B = 1 the step's
// time is the bytes of weights it reads. Biases and the LayerNorm stay in the state's dtype; the products accumulate
// in float32 (cpu_gemm::linear: on the CPU our GEMV, cpu/gemv.h; elsewhere a float32 GEMM of the widened copy).
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/library.h>

#include <string>

#include "../checks/obs_step_inference.h"
#include "cpu_gemm.h"

namespace dreamer_fast::obs_step_inference {
namespace {

// Our per-step kernels of one op library ("dreamer_fast" or "dreamer_fast_emu"), looked up once.
struct StepOps {
  using LnGru = std::tuple<Tensor, Tensor, Tensor>(const Tensor&, const Tensor&, const Tensor&, const Tensor&, double);
  using Sample = std::tuple<Tensor, Tensor>(const Tensor&, const OptTensor&, const Tensor&, double);
  c10::TypedOperatorHandle<LnGru> ln_gru;
  c10::TypedOperatorHandle<Sample> sample;

  explicit StepOps(const std::string& ns)
      : ln_gru(find(ns, "ln_gru").typed<LnGru>()), sample(find(ns, "straight_through_categorical").typed<Sample>()) {}

  static c10::OperatorHandle find(const std::string& ns, const char* name) {
    return c10::Dispatcher::singleton().findSchemaOrThrow((ns + "::" + name).c_str(), "");
  }
};

// The previous state and action are multiplied by keep (0 where is_first is set; any other value scales them, as in
// the reference). On the CPU a step whose keep is all ones skips the three multiplications (reading keep is free
// there); on a GPU reading it would stall the host.
bool needs_reset(const Tensor& keep) {
  return !keep.is_cpu() || keep.ne(1).any().item<bool>();  // NaN != 1: a NaN keep multiplies too
}

// b + x W^T (cpu_gemm::linear: W in x's dtype, or bfloat16 with a float32 x), then ELU in place.
Tensor linear_elu(const Tensor& x, const Tensor& w, const Tensor& b) {
  Tensor y = cpu_gemm::linear(x, w, b);
  return at::elu_(y);
}

using Out = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor>;

template <int kLib>
Out kernel(const Tensor& deter, const Tensor& stoch, const Tensor& action, const Tensor& embed, const Tensor& keep,
           const Tensor& w_img_in, const Tensor& b_img_in, const Tensor& w_gru, const Tensor& b_gru,
           const Tensor& ln_w, const Tensor& ln_b, const Tensor& w_img_out, const Tensor& b_img_out,
           const Tensor& w_prior, const Tensor& b_prior, const Tensor& w_obs_out, const Tensor& b_obs_out,
           const Tensor& w_post, const Tensor& b_post, const OptTensor& noise, const Tensor& seed, double unimix,
           double eps, bool with_prior) {
  static const StepOps ops(kLib == 0 ? "dreamer_fast" : "dreamer_fast_emu");
  const Sizes s = check_obs_step_inference_inputs(deter, stoch, action, embed, keep, w_img_in, b_img_in, w_gru,
                                                   b_gru, ln_w, ln_b, w_img_out, b_img_out, w_prior, b_prior,
                                                   w_obs_out, b_obs_out, w_post, b_post, noise, seed, unimix, eps);
  // Inference only: this op has no autograd formula, and its GEMMs run in the parameters' dtype (RSSM.obs_step takes
  // the Python path under autocast), so neither key may see the calls below.
  c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
  at::AutoDispatchBelowADInplaceOrView no_autograd;

  Tensor h = deter.contiguous(), z = stoch.reshape({s.B, s.F}), a = action;
  if (needs_reset(keep)) {
    const Tensor k = keep.unsqueeze(1);
    h = h * k;
    z = z * k;
    a = a * k;
  }
  // Concatenations as the layers read them: at B = 1 a copy of a few KB, cheaper than a second GEMV call.
  const Tensor x = linear_elu(at::cat({z, a}, 1), w_img_in, b_img_in);
  const Tensor gates = cpu_gemm::linear(at::cat({x, h}, 1), w_gru, b_gru);
  const Tensor h_next = std::get<0>(ops.ln_gru.call(gates, h, ln_w.contiguous(), ln_b.contiguous(), eps));

  const Tensor y = linear_elu(at::cat({h_next, embed}, 1), w_obs_out, b_obs_out);
  const Tensor post_logits = cpu_gemm::linear(y, w_post, b_post).view({s.B, s.S, s.K});
  const OptTensor noise_c = noise ? OptTensor(noise->contiguous()) : std::nullopt;
  const Tensor sample = std::get<0>(ops.sample.call(post_logits, noise_c, seed, unimix));

  if (!with_prior) {
    return {h_next, sample, post_logits, deter.new_empty({0}), deter.new_empty({0})};
  }
  const Tensor prior_logits =
      cpu_gemm::linear(linear_elu(h_next, w_img_out, b_img_out), w_prior, b_prior).view({s.B, s.S, s.K});
  Tensor prior_probs = at::softmax(prior_logits, -1);
  if (unimix > 0) prior_probs.mul_(1 - unimix).add_(unimix / static_cast<double>(s.K));
  return {h_next, sample, post_logits, prior_probs, prior_logits};
}

}  // namespace
}  // namespace dreamer_fast::obs_step_inference

// Device-generic: one registration per op library serves every device that has kernels for ln_gru and the sampler
// (dreamer_fast._backend.has_kernel checks those).
TORCH_LIBRARY_IMPL(dreamer_fast, CompositeExplicitAutograd, m) {
  m.impl("obs_step_inference", &dreamer_fast::obs_step_inference::kernel<0>);
}
TORCH_LIBRARY_IMPL(dreamer_fast_emu, CompositeExplicitAutograd, m) {
  m.impl("obs_step_inference", &dreamer_fast::obs_step_inference::kernel<1>);
}
