// Argument checks of dreamer_fast::obs_step_inference (csrc/composite/obs_step_inference.cpp); the Python wrapper
// (dreamer_fast.ops.obs_step_inference) and RSSM.obs_step check first.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <iterator>
#include <optional>
#include <utility>

#include "common.h"

namespace dreamer_fast::obs_step_inference {

using Tensor = at::Tensor;
using OptTensor = std::optional<at::Tensor>;

struct Sizes {
  int64_t B, D, H, S, K, F, A, E;  // F = S * K; A, E: action and embed sizes
};

// The op's arguments (csrc/ops.cpp's schema, without with_prior); returns the sizes.
inline Sizes check_obs_step_inference_inputs(
    const Tensor& deter, const Tensor& stoch, const Tensor& action, const Tensor& embed, const Tensor& keep,
    const Tensor& w_img_in, const Tensor& b_img_in, const Tensor& w_gru, const Tensor& b_gru, const Tensor& ln_w,
    const Tensor& ln_b, const Tensor& w_img_out, const Tensor& b_img_out, const Tensor& w_prior, const Tensor& b_prior,
    const Tensor& w_obs_out, const Tensor& b_obs_out, const Tensor& w_post, const Tensor& b_post,
    const OptTensor& noise, const Tensor& seed, double unimix, double eps) {
  constexpr const char* kOp = "obs_step_inference";
  const auto check_like = [&](const char* name, const Tensor& t, const Tensor& ref) {
    dreamer_fast::check_like(kOp, name, t, ref, "deter");
  };
  const auto check_shape_of = [&](const char* name, const Tensor& t, at::IntArrayRef expected, const char* what) {
    check_shape(kOp, name, t, expected, what);
  };
  TORCH_CHECK(deter.defined() && deter.dim() == 2, kOp, ": `deter` must be [B, D], got ",
              deter.defined() ? deter.sizes() : at::IntArrayRef{});
  check_float(kOp, "deter", deter, /*allow_half=*/false);
  TORCH_CHECK(stoch.defined() && stoch.dim() == 3, kOp, ": `stoch` must be [B, S, K], got ",
              stoch.defined() ? stoch.sizes() : at::IntArrayRef{});
  TORCH_CHECK(action.defined() && action.dim() == 2, kOp, ": `action` must be [B, A], got ",
              action.defined() ? action.sizes() : at::IntArrayRef{});
  TORCH_CHECK(embed.defined() && embed.dim() == 2, kOp, ": `embed` must be [B, E], got ",
              embed.defined() ? embed.sizes() : at::IntArrayRef{});
  TORCH_CHECK(w_img_in.defined() && w_img_in.dim() == 2, kOp, ": `w_img_in` must be [H, S*K + A], got ",
              w_img_in.defined() ? w_img_in.sizes() : at::IntArrayRef{});
  Sizes s{};
  s.B = deter.size(0);
  s.D = deter.size(1);
  s.S = stoch.size(1);
  s.K = stoch.size(2);
  s.F = s.S * s.K;
  s.A = action.size(1);
  s.E = embed.size(1);
  s.H = w_img_in.size(0);
  const std::pair<const char*, const Tensor*> like_deter[] = {
      {"stoch", &stoch},         {"action", &action},       {"embed", &embed},         {"keep", &keep},
      {"w_img_in", &w_img_in},   {"b_img_in", &b_img_in},   {"w_gru", &w_gru},         {"b_gru", &b_gru},
      {"ln_w", &ln_w},           {"ln_b", &ln_b},           {"w_img_out", &w_img_out}, {"b_img_out", &b_img_out},
      {"w_prior", &w_prior},     {"b_prior", &b_prior},     {"w_obs_out", &w_obs_out}, {"b_obs_out", &b_obs_out},
      {"w_post", &w_post},       {"b_post", &b_post}};
  // Weights in the state's dtype, or all six in bfloat16 with a float32 state (the other tensors: the state's dtype).
  const Tensor* weights[] = {&w_img_in, &w_gru, &w_img_out, &w_prior, &w_obs_out, &w_post};
  const bool bf16_weights = deter.scalar_type() == at::kFloat && w_img_in.scalar_type() == at::kBFloat16;
  for (const auto& [name, t] : like_deter) {
    const bool is_weight = std::find(std::begin(weights), std::end(weights), t) != std::end(weights);
    if (!is_weight || !bf16_weights) {
      check_like(name, *t, deter);
      continue;
    }
    TORCH_CHECK(t->scalar_type() == at::kBFloat16, kOp, ": `", name, "` must be bfloat16 like `w_img_in` (the "
                "weights are all in the state's dtype or all bfloat16), got ", t->scalar_type());
    TORCH_CHECK(t->device() == deter.device(), kOp, ": `", name, "` must be on the device of `deter` (",
                deter.device(), "), got ", t->device());
  }
  check_shape_of("stoch", stoch, {s.B, s.S, s.K}, "[B, S, K]");
  check_shape_of("action", action, {s.B, s.A}, "[B, A]");
  check_shape_of("embed", embed, {s.B, s.E}, "[B, E]");
  check_shape_of("keep", keep, {s.B}, "[B]");
  check_shape_of("w_img_in", w_img_in, {s.H, s.F + s.A}, "[H, S*K + A]");
  check_shape_of("b_img_in", b_img_in, {s.H}, "[H]");
  check_shape_of("w_gru", w_gru, {3 * s.D, s.H + s.D}, "[3*D, H + D]");
  check_shape_of("b_gru", b_gru, {3 * s.D}, "[3*D]");
  check_shape_of("ln_w", ln_w, {3 * s.D}, "[3*D]");
  check_shape_of("ln_b", ln_b, {3 * s.D}, "[3*D]");
  check_shape_of("w_img_out", w_img_out, {s.H, s.D}, "[H, D]");
  check_shape_of("b_img_out", b_img_out, {s.H}, "[H]");
  check_shape_of("w_prior", w_prior, {s.F, s.H}, "[S*K, H]");
  check_shape_of("b_prior", b_prior, {s.F}, "[S*K]");
  check_shape_of("w_obs_out", w_obs_out, {s.H, s.D + s.E}, "[H, D + E]");
  check_shape_of("b_obs_out", b_obs_out, {s.H}, "[H]");
  check_shape_of("w_post", w_post, {s.F, s.H}, "[S*K, H]");
  check_shape_of("b_post", b_post, {s.F}, "[S*K]");
  if (noise) {
    check_like("noise", *noise, deter);
    check_shape_of("noise", *noise, {s.B, s.S}, "[B, S]");
  }
  TORCH_CHECK(seed.defined() && seed.device().is_cpu() && seed.scalar_type() == at::kLong && seed.numel() == 1, kOp,
              ": `seed` must be a one-element int64 CPU tensor (the sampler's Philox seed)");
  TORCH_CHECK(unimix >= 0.0 && unimix < 1.0, kOp, ": `unimix` must be in [0, 1), got ", unimix);
  TORCH_CHECK(eps >= 0.0, kOp, ": `eps` must be >= 0, got ", eps);
  return s;
}

}  // namespace dreamer_fast::obs_step_inference
