// The whole-sequence RSSM observe (dreamer_fast::observe_sequence): the recurrence and the types of its device-generic
// forward/backward (csrc/composite/observe_sequence.cpp; the autograd formula, csrc/autograd/observe_sequence.cpp,
// calls them through the dispatcher).
//
// The recurrence, for t = 0..T-1, with h = deter [B, D], z = stoch [B, S*K] (h, z = deter0, stoch0 before step 0):
//   h, z      *= keep[t]                                     (is_first: back to the initial state, zeros)
//   x          = elu(act_proj[t] + z W_stoch_in^T)           [B, H]   img_in (action part precomputed, with bias)
//   gates      = b_gru + [x, h] W_gru^T                      [B, 3D]  the GRU's Dense layer
//   h          = ln_gru(gates, h, ln_w, ln_b, eps)           [B, D]   the fused LayerNorm-GRU op
//   y          = elu(emb_proj[t] + h W_deter_out^T)          [B, H]   obs_out (embed part precomputed, with bias)
//   logits     = b_post + y W_post^T                         [B, S*K] post_logits
//   z, probs   = straight_through_categorical(logits, noise[t] or seeds[t], unimix)
// Outputs: deters [T, B, D], samples [T, B, S, K] (straight-through one-hot), logits [T, B, S, K].
//
// Every step calls ATen and our own ops through the dispatcher, so the same code runs on every device that has
// kernels for them: dreamer_fast (CPU, CUDA) and dreamer_fast_emu (the CUDA kernels' source, emulated on the CPU).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/ScalarType.h>

#include <optional>
#include <string>
#include <tuple>

namespace dreamer_fast::observe_sequence {

// The forward's outputs, then what the backward needs of each step, stacked over time.
struct Forward {
  at::Tensor deters, samples, logits;  // the op's outputs
  at::Tensor x;                        // [T, B, H]  elu(img_in): the input of the GRU's Dense layer (with h)
  at::Tensor gates;                    // [T, B, 3D] ln_gru's input
  at::Tensor mean, rstd;               // [T, B]     ln_gru's row statistics (float32 for half gates)
  at::Tensor y;                        // [T, B, H]  elu(obs_out): the input of post_logits
  at::Tensor probs;                    // [T, B, S, K] the posterior's probabilities (the sampler's backward)
};

struct Args {
  const at::Tensor& act_proj;
  const at::Tensor& emb_proj;
  const at::Tensor& keep;
  const at::Tensor& deter0;
  const at::Tensor& stoch0;
  const at::Tensor& w_stoch_in;
  const at::Tensor& w_gru;
  const at::Tensor& b_gru;
  const at::Tensor& ln_w;
  const at::Tensor& ln_b;
  const at::Tensor& w_deter_out;
  const at::Tensor& w_post;
  const at::Tensor& b_post;
  const std::optional<at::Tensor>& noise;
  const at::Tensor& seeds;
  double unimix;
  double eps;
  std::optional<at::ScalarType> gemm_dtype;
};

// `ns` is the op library whose ln_gru / straight_through_categorical kernels run each step ("dreamer_fast" or
// "dreamer_fast_emu"). `save`: also return the intermediates (the autograd forward); otherwise they stay undefined.
Forward forward(const std::string& ns, const Args& a, bool save);

// backward(ns, the outputs' gradients, the inputs and what forward() saved): the gradients of (act_proj, emb_proj,
// deter0, stoch0, w_stoch_in, w_gru, b_gru, ln_w, ln_b, w_deter_out, w_post, b_post); in observe_sequence.cpp, with
// the op's argument order.

}  // namespace dreamer_fast::observe_sequence
