// The whole-sequence RSSM observe, forward and backward, as one C++ loop over time (the recurrence is written out
// in observe_sequence.h). Device-generic: ATen GEMMs and elementwise ops plus our ln_gru and
// straight_through_categorical kernels, called through the dispatcher, so these functions are the CPU and the CUDA
// kernels of observe_sequence(_forward|_backward) alike (and, on dreamer_fast_emu, run the emulated CUDA kernels).
//
// Why a C++ loop: at DreamerV2's sizes (B = 16) every step is ~10 small ops, and from Python each cost a Python
// call plus, for our ops, a Python autograd formula (~0.1 ms per call); here a step costs the ops themselves.
// Why the backward looks like this: only the input gradients are sequential. Each step's backward stores the
// gradients at the GEMM outputs, and every weight gradient is then ONE GEMM over all T*B rows (as cuDNN's RNNs do)
// instead of T small ones that each read and write the whole weight.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/library.h>

#include <algorithm>
#include <string>
#include <type_traits>
#include <vector>

#include "../checks/observe_sequence.h"
#include "observe_sequence.h"
#include "cpu_gemm.h"
#include "step_gemm.h"

namespace dreamer_fast::observe_sequence {
namespace {

using cpu_gemm::StepGemm;

constexpr const char* kOp = "observe_sequence";

// Our per-step kernels, looked up once per op library.
struct StepOps {
  using Tensor = at::Tensor;
  using Opt = std::optional<at::Tensor>;
  using LnGru = std::tuple<Tensor, Tensor, Tensor>(const Tensor&, const Tensor&, const Tensor&, const Tensor&, double);
  using LnGruBackward = std::tuple<Tensor, Tensor, Tensor, Tensor>(const Tensor&, const Tensor&, const Tensor&,
                                                                   const Tensor&, const Tensor&, const Tensor&,
                                                                   const Tensor&);
  using Sample = std::tuple<Tensor, Tensor>(const Tensor&, const Opt&, const Tensor&, double);
  using SampleBackward = Tensor(const Opt&, const Opt&, const Tensor&, double);
  using Elu = Tensor(const Tensor&);
  c10::TypedOperatorHandle<LnGru> ln_gru;
  c10::TypedOperatorHandle<LnGruBackward> ln_gru_backward;
  c10::TypedOperatorHandle<Sample> sample;
  c10::TypedOperatorHandle<SampleBackward> sample_backward;
  c10::TypedOperatorHandle<Elu> elu;

  explicit StepOps(const std::string& ns)
      : ln_gru(find(ns, "ln_gru").typed<LnGru>()),
        ln_gru_backward(find(ns, "ln_gru_backward").typed<LnGruBackward>()),
        sample(find(ns, "straight_through_categorical").typed<Sample>()),
        sample_backward(find(ns, "straight_through_categorical_backward").typed<SampleBackward>()),
        elu(find(ns, "elu").typed<Elu>()) {}

  static c10::OperatorHandle find(const std::string& ns, const char* name) {
    return c10::Dispatcher::singleton().findSchemaOrThrow((ns + "::" + name).c_str(), "");
  }
};

const StepOps& step_ops(const std::string& ns) {
  static const StepOps real("dreamer_fast"), emulated("dreamer_fast_emu");
  TORCH_CHECK(ns == "dreamer_fast" || ns == "dreamer_fast_emu", kOp, ": unknown op library ", ns);
  return ns == "dreamer_fast" ? real : emulated;
}

// The state is multiplied by keep before the step (keep = 0 where is_first is set: a reset; any other value scales
// it, as in the reference). On the CPU, steps whose keep is all ones skip the two multiplications (reading keep costs
// nothing there); on a GPU reading it would stall the host, so every step multiplies (two tiny kernels).
std::vector<bool> steps_with_reset(const at::Tensor& keep) {
  const int64_t T = keep.size(0);
  if (!keep.is_cpu()) return std::vector<bool>(T, true);
  const at::Tensor any = keep.ne(1).any(1);  // NaN != 1: a NaN keep multiplies too
  std::vector<bool> out(T);
  const bool* p = any.const_data_ptr<bool>();
  for (int64_t t = 0; t < T; ++t) out[t] = p[t];
  return out;
}

// The stats dtype of ln_gru: float32 for half gates.
at::ScalarType stats_dtype(at::ScalarType s) {
  return (s == at::kHalf || s == at::kBFloat16) ? at::kFloat : s;
}

// No autocast inside: the GEMMs' precision is the explicit `gemm_dtype`, and everything else stays in the state's
// dtype (under autocast the op would otherwise see its own addmm's come back in bfloat16).
struct NoAutocast {
  c10::impl::ExcludeDispatchKeyGuard guard{c10::autocast_dispatch_keyset};
};

}  // namespace

Forward forward(const std::string& ns, const Args& a, bool save) {
  const Sizes s = check_observe_sequence_inputs(a);
  const StepOps& ops = step_ops(ns);
  NoAutocast no_autocast;
  const auto T = s.T, B = s.B, D = s.D, H = s.H, F = s.F;
  const at::ScalarType dtype = a.deter0.scalar_type();
  const at::ScalarType gd = a.gemm_dtype.value_or(dtype);
  // The loop's weights, each prepared once for the T GEMMs of the sequence. The GRU's Dense layer reads [x, h]:
  // one GEMM on the concatenation (16 x 1200 values copied per step; two GEMMs would each be less efficient).
  const StepGemm stoch_in(a.w_stoch_in, B, T, gd, dtype), gru(a.w_gru, B, T, gd, dtype),
      deter_out(a.w_deter_out, B, T, gd, dtype), post(a.w_post, B, T, gd, dtype);
  const at::Tensor act_proj = a.act_proj.contiguous(), emb_proj = a.emb_proj.contiguous(), keep = a.keep.contiguous();
  const at::Tensor ln_w = a.ln_w.contiguous(), ln_b = a.ln_b.contiguous(), seeds = a.seeds.contiguous();
  const std::optional<at::Tensor> noise = a.noise ? std::optional<at::Tensor>(a.noise->contiguous()) : std::nullopt;

  const auto opts = a.deter0.options();
  Forward out;
  out.deters = at::empty({T, B, D}, opts);
  out.samples = at::empty({T, B, s.S, s.K}, opts);
  out.logits = at::empty({T, B, s.S, s.K}, opts);
  if (save) {
    out.x = at::empty({T, B, H}, opts);
    out.gates = at::empty({T, B, 3 * D}, opts);
    out.mean = at::empty({T, B}, opts.dtype(stats_dtype(dtype)));
    out.rstd = at::empty({T, B}, opts.dtype(stats_dtype(dtype)));
    out.y = at::empty({T, B, H}, opts);
    out.probs = at::empty({T, B, s.S, s.K}, opts);
  }
  const std::vector<bool> reset = steps_with_reset(keep);
  at::Tensor h = a.deter0.contiguous(), z = a.stoch0.reshape({B, F});
  for (int64_t t = 0; t < T; ++t) {
    if (reset[t]) {
      const at::Tensor k = keep[t].unsqueeze(1);
      h = h * k;
      z = z * k;
    }
    // The GEMM outputs are written straight into their [T, ...] buffers where the backward needs them. The ELUs are
    // our op, not ATen's (at::elu took ~90 us for these 16 x 600 values, measured on an AMD EPYC Zen 4), so their
    // results are copied into the saved buffers (a few us).
    const at::Tensor x = ops.elu.call(stoch_in(z).add_(act_proj[t]));
    if (save) out.x[t].copy_(x);
    at::Tensor gates = save ? out.gates[t] : at::empty({B, 3 * D}, opts);
    at::add_out(gates, gru(at::cat({x, h}, 1)), a.b_gru);
    auto [h_next, mean, rstd] = ops.ln_gru.call(gates, h, ln_w, ln_b, a.eps);
    h = h_next;
    const at::Tensor y = ops.elu.call(deter_out(h).add_(emb_proj[t]));
    if (save) out.y[t].copy_(y);
    at::Tensor logits = out.logits[t];
    at::add_out(logits, post(y).view({B, s.S, s.K}), a.b_post.view({s.S, s.K}));
    std::optional<at::Tensor> noise_t = noise ? std::optional<at::Tensor>((*noise)[t]) : std::nullopt;
    auto [sample, probs] = ops.sample.call(logits, noise_t, seeds[t], a.unimix);
    z = sample.view({B, F});
    // The outputs and saved tensors are preallocated [T, ...] buffers: where an op makes its own result, one small
    // copy per step instead of a stack over T at the end (and T == 0 needs no special case).
    out.deters[t].copy_(h);
    out.samples[t].copy_(sample);
    if (save) {
      out.mean[t].copy_(mean);
      out.rstd[t].copy_(rstd);
      out.probs[t].copy_(probs);
    }
  }
  return out;
}

using Grads = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
                         at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

Grads backward(const std::string& ns, const at::Tensor& grad_deters, const at::Tensor& grad_samples,
               const at::Tensor& grad_logits, const at::Tensor& keep, const at::Tensor& deter0,
               const at::Tensor& stoch0, const at::Tensor& w_stoch_in, const at::Tensor& w_gru,
               const at::Tensor& ln_w, const at::Tensor& ln_b, const at::Tensor& w_deter_out,
               const at::Tensor& w_post, const at::Tensor& deters, const at::Tensor& samples, const at::Tensor& x,
               const at::Tensor& gates, const at::Tensor& mean, const at::Tensor& rstd, const at::Tensor& y,
               const at::Tensor& probs, double unimix) {
  const char* op = "observe_sequence_backward";
  const StepOps& ops = step_ops(ns);
  NoAutocast no_autocast;
  TORCH_CHECK(deters.dim() == 3 && x.dim() == 3 && stoch0.dim() == 3, op,
              ": `deters` and `x` must be [T, B, D] and [T, B, H], `stoch0` [B, S, K]; got shapes ", deters.sizes(),
              ", ", x.sizes(), ", ", stoch0.sizes());
  const int64_t T = deters.size(0), B = deters.size(1), D = deters.size(2), H = x.size(2);
  const int64_t S = stoch0.size(1), K = stoch0.size(2), F = S * K, N = T * B;
  check_shape(op, "grad_deters", grad_deters, {T, B, D});
  check_shape(op, "grad_samples", grad_samples, {T, B, S, K});
  check_shape(op, "grad_logits", grad_logits, {T, B, S, K});
  check_shape(op, "keep", keep, {T, B});
  check_shape(op, "deter0", deter0, {B, D});
  check_shape(op, "samples", samples, {T, B, S, K});
  check_shape(op, "gates", gates, {T, B, 3 * D});
  check_shape(op, "mean", mean, {T, B});
  check_shape(op, "rstd", rstd, {T, B});
  check_shape(op, "y", y, {T, B, H});
  check_shape(op, "probs", probs, {T, B, S, K});
  check_shape(op, "w_stoch_in", w_stoch_in, {H, F});
  check_shape(op, "w_gru", w_gru, {3 * D, H + D});
  check_shape(op, "w_deter_out", w_deter_out, {H, D});
  check_shape(op, "w_post", w_post, {F, H});
  // The backward computes in the state's dtype (as autograd would for the weights' gradients).
  const at::Tensor g_deters = grad_deters.contiguous(), g_samples = grad_samples.reshape({T, B, F}),
                   g_logits = grad_logits.reshape({T, B, F}), keep_c = keep.contiguous();
  const at::Tensor ln_wc = ln_w.contiguous(), ln_bc = ln_b.contiguous();
  const auto opts = deters.options();

  // Gradients at the outputs of the loop's GEMMs, per step; the weight gradients read them after the loop.
  at::Tensor d_logits = at::empty({T, B, F}, opts);   // post_logits' output
  at::Tensor d_y_pre = at::empty({T, B, H}, opts);    // obs_out's output (also d emb_proj)
  at::Tensor d_gates = at::empty({T, B, 3 * D}, opts);  // the GRU Dense layer's output (also d b_gru)
  at::Tensor d_x_pre = at::empty({T, B, H}, opts);    // img_in's output (also d act_proj)
  at::Tensor d_ln_w = at::zeros_like(ln_wc), d_ln_b = at::zeros_like(ln_bc);

  const std::vector<bool> reset = steps_with_reset(keep_c);
  // The input gradients' GEMMs, d rows = d out @ W, i.e. `rows @ (W^T)^T`: the transposed weights, prepared once.
  const auto dtype = deters.scalar_type();
  const StepGemm post_back(w_post.t(), B, T, dtype, dtype), deter_out_back(w_deter_out.t(), B, T, dtype, dtype),
      gru_back(w_gru.t(), B, T, dtype, dtype), stoch_in_back(w_stoch_in.t(), B, T, dtype, dtype);
  at::Tensor dh = at::zeros({B, D}, opts);  // d deter_t from step t + 1
  at::Tensor dz = at::zeros({B, F}, opts);  // d sample_t from step t + 1 (its img_in)
  const at::Tensor deter0_c = deter0.contiguous();
  for (int64_t t = T - 1; t >= 0; --t) {
    // sampler: the sample's gradient (from outside and from step t + 1) to the logits, plus the logits' own
    at::Tensor g_sample = (g_samples[t] + dz).view({B, S, K});
    at::Tensor dl = d_logits[t];
    at::add_out(dl, ops.sample_backward.call(g_sample, std::nullopt, probs[t], unimix).view({B, F}), g_logits[t]);
    // post_logits, then elu(obs_out): the ELU's derivative from its output (y + 1 where y <= 0)
    at::Tensor dyp = d_y_pre[t];
    at::elu_backward_out(dyp, post_back(dl), 1, 1, 1, /*is_result=*/true, y[t]);
    // deter_t: from obs_out, from outside and from step t + 1
    at::Tensor d_deter = deter_out_back(dyp).add_(g_deters[t]).add_(dh);
    const at::Tensor k = keep_c[t].unsqueeze(1);
    const at::Tensor h_prev = t == 0 ? deter0_c : deters[t - 1];
    auto [dg, d_h_prev, dw, db] =
        ops.ln_gru_backward.call(d_deter, gates[t], reset[t] ? h_prev * k : h_prev, ln_wc, ln_bc, mean[t], rstd[t]);
    d_ln_w.add_(dw);
    d_ln_b.add_(db);
    d_gates[t].copy_(dg);
    // the GRU's Dense layer: [x, h_prev] -> gates; one GEMM gives both input gradients
    const at::Tensor d_in = gru_back(dg);
    d_h_prev.add_(d_in.narrow(1, H, D));
    at::Tensor dxp = d_x_pre[t];
    at::elu_backward_out(dxp, d_in.narrow(1, 0, H), 1, 1, 1, /*is_result=*/true, x[t]);
    at::Tensor d_z_prev = stoch_in_back(dxp);
    // the reset: a zeroed state passes no gradient back
    dh = reset[t] ? d_h_prev * k : d_h_prev;
    dz = reset[t] ? d_z_prev * k : d_z_prev;
  }

  // The weight gradients: one GEMM each over all T*B rows. The inputs of img_in and the GRU layer at step t are the
  // (masked) state of step t - 1: the outputs shifted by one step, with the start state in front.
  const at::Tensor keep_col = keep_c.reshape({N, 1});
  const at::Tensor h_in =
      at::cat({deter0_c.unsqueeze(0), deters}).narrow(0, 0, T).reshape({N, D}).mul_(keep_col);
  const at::Tensor z_in =
      at::cat({stoch0.reshape({1, B, F}), samples.reshape({T, B, F})}).narrow(0, 0, T).reshape({N, F}).mul_(keep_col);
  const at::Tensor dl2 = d_logits.view({N, F}), dyp2 = d_y_pre.view({N, H}), dg2 = d_gates.view({N, 3 * D}),
                   dxp2 = d_x_pre.view({N, H});
  // a^T b through cpu_gemm::linear (oneDNN for float32 on CPUs that are not Intel: ~2x MKL on an AMD EPYC Zen 5).
  const auto at_b = [](const at::Tensor& a, const at::Tensor& b) { return cpu_gemm::linear(a.t(), b.t(), {}); };
  at::Tensor d_w_post = at_b(dl2, y.reshape({N, H}));
  at::Tensor d_b_post = dl2.sum(0);
  at::Tensor d_w_deter_out = at_b(dyp2, deters.reshape({N, D}));
  at::Tensor d_w_gru = at::empty({3 * D, H + D}, opts);
  d_w_gru.narrow(1, 0, H).copy_(at_b(dg2, x.reshape({N, H})));
  d_w_gru.narrow(1, H, D).copy_(at_b(dg2, h_in));
  at::Tensor d_b_gru = dg2.sum(0);
  at::Tensor d_w_stoch_in = at_b(dxp2, z_in);
  return {d_x_pre,    dyp2.view({T, B, H}), dh,     dz.view({B, S, K}), d_w_stoch_in,  d_w_gru,
          d_b_gru,    d_ln_w,               d_ln_b, d_w_deter_out,      d_w_post,      d_b_post};
}

namespace {

// ---- the kernels of the three ops, one instance per op library -------------------------------------------------

using T3 = std::tuple<at::Tensor, at::Tensor, at::Tensor>;
using T9 = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
                      at::Tensor>;

constexpr const char* kLibraries[] = {"dreamer_fast", "dreamer_fast_emu"};

// observe_sequence (kSave false: the three outputs, no intermediates kept) and observe_sequence_forward (kSave: the
// outputs and what the backward needs).
template <int kLib, bool kSave>
std::conditional_t<kSave, T9, T3> forward_kernel(
    const at::Tensor& act_proj, const at::Tensor& emb_proj, const at::Tensor& keep, const at::Tensor& deter0,
    const at::Tensor& stoch0, const at::Tensor& w_stoch_in, const at::Tensor& w_gru, const at::Tensor& b_gru,
    const at::Tensor& ln_w, const at::Tensor& ln_b, const at::Tensor& w_deter_out, const at::Tensor& w_post,
    const at::Tensor& b_post, const std::optional<at::Tensor>& noise, const at::Tensor& seeds, double unimix,
    double eps, std::optional<at::ScalarType> gemm_dtype) {
  Forward f = forward(kLibraries[kLib],
                      {act_proj, emb_proj, keep, deter0, stoch0, w_stoch_in, w_gru, b_gru, ln_w, ln_b, w_deter_out,
                       w_post, b_post, noise, seeds, unimix, eps, gemm_dtype},
                      kSave);
  if constexpr (kSave) {
    return {f.deters, f.samples, f.logits, f.x, f.gates, f.mean, f.rstd, f.y, f.probs};
  } else {
    return {f.deters, f.samples, f.logits};
  }
}

template <int kLib>
Grads backward_kernel(const at::Tensor& grad_deters, const at::Tensor& grad_samples, const at::Tensor& grad_logits,
                      const at::Tensor& keep, const at::Tensor& deter0, const at::Tensor& stoch0,
                      const at::Tensor& w_stoch_in, const at::Tensor& w_gru, const at::Tensor& ln_w,
                      const at::Tensor& ln_b, const at::Tensor& w_deter_out, const at::Tensor& w_post,
                      const at::Tensor& deters, const at::Tensor& samples, const at::Tensor& x,
                      const at::Tensor& gates, const at::Tensor& mean, const at::Tensor& rstd, const at::Tensor& y,
                      const at::Tensor& probs, double unimix) {
  return backward(kLibraries[kLib], grad_deters, grad_samples, grad_logits, keep, deter0, stoch0, w_stoch_in, w_gru,
                  ln_w, ln_b, w_deter_out, w_post, deters, samples, x, gates, mean, rstd, y, probs, unimix);
}

template <int kLib>
void register_kernels(torch::Library& m) {
  m.impl("observe_sequence", &forward_kernel<kLib, false>);
  m.impl("observe_sequence_forward", &forward_kernel<kLib, true>);
  m.impl("observe_sequence_backward", &backward_kernel<kLib>);
}

}  // namespace
}  // namespace dreamer_fast::observe_sequence

// Device-generic: one registration per op library serves every device that has kernels for the per-step ops
// (dreamer_fast._backend.has_kernel checks those).
TORCH_LIBRARY_IMPL(dreamer_fast, CompositeExplicitAutograd, m) {
  dreamer_fast::observe_sequence::register_kernels<0>(m);
}
TORCH_LIBRARY_IMPL(dreamer_fast_emu, CompositeExplicitAutograd, m) {
  dreamer_fast::observe_sequence::register_kernels<1>(m);
}
