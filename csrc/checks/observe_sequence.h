// Argument checks of dreamer_fast::observe_sequence(_forward) (csrc/composite/observe_sequence.cpp); the Python
// wrapper checks first, with the same names.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <utility>

#include "../composite/observe_sequence.h"
#include "common.h"

namespace dreamer_fast::observe_sequence {

struct Sizes {
  int64_t T, B, D, H, S, K, F;  // F = S * K
};

// The forward's arguments (csrc/ops.cpp's schema); returns the sizes.
inline Sizes check_observe_sequence_inputs(const Args& a) {
  constexpr const char* kOp = "observe_sequence";
  const auto check_like = [&](const char* name, const at::Tensor& t, const at::Tensor& ref) {
    dreamer_fast::check_like(kOp, name, t, ref, "deter0");
  };
  const auto check_shape_of = [&](const char* name, const at::Tensor& t, at::IntArrayRef expected, const char* what) {
    check_shape(kOp, name, t, expected, what);
  };
  TORCH_CHECK(a.deter0.defined(), kOp, ": `deter0` is undefined");
  check_float(kOp, "deter0", a.deter0, /*allow_half=*/a.deter0.is_cuda());
  TORCH_CHECK(a.deter0.dim() == 2, kOp, ": `deter0` must be [B, D], got shape ", a.deter0.sizes());
  TORCH_CHECK(a.stoch0.defined() && a.stoch0.dim() == 3, kOp, ": `stoch0` must be [B, S, K], got ",
              a.stoch0.defined() ? a.stoch0.sizes() : at::IntArrayRef{});
  TORCH_CHECK(a.act_proj.defined() && a.act_proj.dim() == 3, kOp, ": `act_proj` must be [T, B, H], got shape ",
              a.act_proj.defined() ? a.act_proj.sizes() : at::IntArrayRef{});
  Sizes s{};
  s.B = a.deter0.size(0);
  s.D = a.deter0.size(1);
  s.S = a.stoch0.size(1);
  s.K = a.stoch0.size(2);
  s.F = s.S * s.K;
  s.T = a.act_proj.size(0);
  s.H = a.act_proj.size(2);
  const std::pair<const char*, const at::Tensor*> like_deter0[] = {
      {"act_proj", &a.act_proj}, {"emb_proj", &a.emb_proj},       {"keep", &a.keep},         {"stoch0", &a.stoch0},
      {"w_stoch_in", &a.w_stoch_in}, {"w_gru", &a.w_gru},         {"b_gru", &a.b_gru},       {"ln_w", &a.ln_w},
      {"ln_b", &a.ln_b},         {"w_deter_out", &a.w_deter_out}, {"w_post", &a.w_post},     {"b_post", &a.b_post}};
  for (const auto& [name, t] : like_deter0) check_like(name, *t, a.deter0);
  check_shape_of("act_proj", a.act_proj, {s.T, s.B, s.H}, "[T, B, H]");
  check_shape_of("emb_proj", a.emb_proj, {s.T, s.B, s.H}, "[T, B, H]");
  check_shape_of("keep", a.keep, {s.T, s.B}, "[T, B]");
  check_shape_of("w_stoch_in", a.w_stoch_in, {s.H, s.F}, "[H, S*K]");
  check_shape_of("w_gru", a.w_gru, {3 * s.D, s.H + s.D}, "[3*D, H+D]");
  check_shape_of("b_gru", a.b_gru, {3 * s.D}, "[3*D]");
  check_shape_of("ln_w", a.ln_w, {3 * s.D}, "[3*D]");
  check_shape_of("ln_b", a.ln_b, {3 * s.D}, "[3*D]");
  check_shape_of("w_deter_out", a.w_deter_out, {s.H, s.D}, "[H, D]");
  check_shape_of("w_post", a.w_post, {s.F, s.H}, "[S*K, H]");
  check_shape_of("b_post", a.b_post, {s.F}, "[S*K]");
  if (a.noise) {
    check_like("noise", *a.noise, a.deter0);
    check_shape_of("noise", *a.noise, {s.T, s.B, s.S}, "[T, B, S]");
  }
  TORCH_CHECK(a.seeds.defined() && a.seeds.device().is_cpu() && a.seeds.scalar_type() == at::kLong, kOp,
              ": `seeds` must be an int64 CPU tensor (one Philox seed per step), got ",
              a.seeds.defined() ? c10::toString(a.seeds.scalar_type()) : "undefined", " on ",
              a.seeds.defined() ? a.seeds.device() : at::Device(at::kCPU));
  check_shape_of("seeds", a.seeds, {s.T}, "[T]");
  TORCH_CHECK(a.unimix >= 0.0 && a.unimix <= 1.0, kOp, ": `unimix` must be in [0, 1], got ", a.unimix);
  TORCH_CHECK(a.eps >= 0.0, kOp, ": `eps` must be >= 0, got ", a.eps);
  TORCH_CHECK(!a.gemm_dtype || at::isFloatingType(*a.gemm_dtype), kOp,
              ": `gemm_dtype` must be a floating-point dtype or None, got ", *a.gemm_dtype);
  return s;
}

}  // namespace dreamer_fast::observe_sequence
