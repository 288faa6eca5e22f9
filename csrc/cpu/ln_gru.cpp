// LayerNorm-GRU on the CPU: rows in parallel, one pass over a row for each of forward and backward.
//
// The loops over a row are written for the vectoriser (`omp simd`; float uses the straight-line exp/tanh of
// dreamer_fast/math.h and ln_gru.h), and the float versions are compiled for AVX-512, AVX2+FMA and the x86-64
// baseline, the one the CPU profile allows chosen at each call (clones.h): the extension is built without -march.
// The weight/bias gradients are summed over fixed blocks of rows, then over the blocks in order, so the result does
// not depend on the number of threads.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>

#include <algorithm>
#include <type_traits>
#include <vector>

#include "../checks/ln_gru.h"
#include "../ops.h"
#include "bf16_bits.h"

// As in kl_balance.cpp, confined to this file's own functions (after the library headers): without -ftrapping-math
// the selects of the polynomials vectorise (nothing here uses FP exceptions).
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#pragma GCC optimize("no-trapping-math")
#endif
#include "clones.h"
#include "dreamer_fast/ln_gru.h"

namespace dreamer_fast::cpu {
namespace {

constexpr int64_t kRowsPerBlock = 32;     // rows whose weight/bias gradients one task sums
constexpr int64_t kGrainElems = 1 << 15;  // gate values per task: smaller work runs on the calling thread

template <typename T>
struct MathFor {
  using type = StdMath;
};
template <>
struct MathFor<float> {
  using type = FastMath;
};

// The row loops take dreamer_fast/ln_gru.h's argument structs with one type throughout.
template <typename T>
using ForwardArgs = LnGruForward<T, T>;
template <typename T>
using BackwardArgs = LnGruBackward<T, T>;

// A task's sums of the weight and bias gradients (pw += Σ dy x̂, pb += Σ dy, each [3D]) and its scratch row dy [3D].
template <typename T>
struct Partials {
  T* pw;
  T* pb;
  T* dy;
};

// Forward of rows [r0, r1): deter', mean, rstd.
template <typename T>
DF_FORCE_INLINE void forward_rows(const ForwardArgs<T>& a, int64_t r0, int64_t r1) {
  using M = typename MathFor<T>::type;
  const T *x = a.gates, *h = a.deter, *w = a.weight, *b = a.bias;
  T *out = a.out, *mean = a.mean, *rstd = a.rstd;
  const int64_t D = a.D;
  const T eps = a.eps;
  const int64_t N = 3 * D;
  for (int64_t row = r0; row < r1; ++row) {
    const T* xr = x + row * N;
    T sum = 0;
#pragma omp simd reduction(+ : sum)
    for (int64_t j = 0; j < N; ++j) sum += xr[j];
    const T m = sum / static_cast<T>(N);
    T ssd = 0;
#pragma omp simd reduction(+ : ssd)
    for (int64_t j = 0; j < N; ++j) ssd += (xr[j] - m) * (xr[j] - m);
    const T s = ln_rstd(ssd, N, eps);
    mean[row] = m;
    rstd[row] = s;
    const T* hr = h + row * D;
    T* o = out + row * D;
#pragma omp simd
    for (int64_t i = 0; i < D; ++i) {
      const T yr = (xr[i] - m) * s * w[i] + b[i];
      const T yc = (xr[D + i] - m) * s * w[D + i] + b[D + i];
      const T yu = (xr[2 * D + i] - m) * s * w[2 * D + i] + b[2 * D + i];
      o[i] = gru_cell<T, M>(yr, yc, yu, hr[i]);
    }
  }
}

// Backward of rows [r0, r1): d gates, d deter, and the rows' weight/bias gradient sums added to `p`.
template <typename T>
DF_FORCE_INLINE void backward_rows(const BackwardArgs<T>& a, const Partials<T>& p, int64_t r0, int64_t r1) {
  using M = typename MathFor<T>::type;
  const T *g = a.grad, *x = a.gates, *h = a.deter, *w = a.weight, *b = a.bias, *mean = a.mean, *rstd = a.rstd;
  T *dx = a.d_gates, *dh = a.d_deter, *pw = p.pw, *pb = p.pb, *dy = p.dy;
  const int64_t D = a.D;
  const int64_t N = 3 * D;
  for (int64_t row = r0; row < r1; ++row) {
    const T* xr = x + row * N;
    const T m = mean[row], s = rstd[row];
    T m1 = 0, m2 = 0;
#pragma omp simd reduction(+ : m1, m2)
    for (int64_t i = 0; i < D; ++i) {
      const T xr_ = (xr[i] - m) * s, xc_ = (xr[D + i] - m) * s, xu_ = (xr[2 * D + i] - m) * s;
      T dr, dc, du, d_h;
      gru_cell_backward<T, M>(g[row * D + i], xr_ * w[i] + b[i], xc_ * w[D + i] + b[D + i],
                              xu_ * w[2 * D + i] + b[2 * D + i], h[row * D + i], &dr, &dc, &du, &d_h);
      dh[row * D + i] = d_h;
      dy[i] = dr;
      dy[D + i] = dc;
      dy[2 * D + i] = du;
      m1 += dr * w[i] + dc * w[D + i] + du * w[2 * D + i];
      m2 += dr * w[i] * xr_ + dc * w[D + i] * xc_ + du * w[2 * D + i] * xu_;
    }
    m2 /= static_cast<T>(N);
    m1 = ln_grad_mean(m1 / static_cast<T>(N), m2);
    T* dxr = dx + row * N;
#pragma omp simd
    for (int64_t j = 0; j < N; ++j) {
      const T xhat = (xr[j] - m) * s;
      dxr[j] = ln_input_grad(dy[j] * w[j], xhat, m1, m2, s);
      pw[j] += dy[j] * xhat;
      pb[j] += dy[j];
    }
  }
}

DF_CPU_KERNEL void forward_rows_f32(const ForwardArgs<float>& a, int64_t r0, int64_t r1) {
  forward_rows<float>(a, r0, r1);
}

DF_CPU_KERNEL void backward_rows_f32(const BackwardArgs<float>& a, const Partials<float>& p, int64_t r0, int64_t r1) {
  backward_rows<float>(a, p, r0, r1);
}

template <typename T>
void forward_dispatch(const ForwardArgs<T>& a, int64_t r0, int64_t r1) {
  if constexpr (std::is_same_v<T, float>)
    DF_CPU_DISPATCH(forward_rows_f32(a, r0, r1));
  else
    forward_rows<T>(a, r0, r1);
}

template <typename T>
void backward_dispatch(const BackwardArgs<T>& a, const Partials<T>& p, int64_t r0, int64_t r1) {
  if constexpr (std::is_same_v<T, float>)
    DF_CPU_DISPATCH(backward_rows_f32(a, p, r0, r1));
  else
    backward_rows<T>(a, p, r0, r1);
}

// Mixed precision (float16/bfloat16 gates, float32 state): each row of gates is widened into a float32 scratch row
// and goes through the float32 kernel above, so the results are those of the float32 op on the widened gates bit
// for bit; the gates' gradient is rounded to the gates' dtype as it is written (round to nearest even).
// Vectorised (integer shifts and adds, see bf16_bits.h) and compiled for each -march level like the row loops.
DF_CPU_KERNEL void widen_row(const c10::BFloat16* src, float* dst, int64_t n) {
  const uint16_t* bits = reinterpret_cast<const uint16_t*>(src);
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) dst[j] = bf16_to_float(bits[j]);
}

DF_CPU_KERNEL void narrow_row(const float* src, c10::BFloat16* dst, int64_t n) {
  uint16_t* bits = reinterpret_cast<uint16_t*>(dst);
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) bits[j] = float_to_bf16(src[j]);
}

// float16 through c10::Half's conversions (not vectorised; autocast on the CPU defaults to bfloat16).
void widen_row(const c10::Half* src, float* dst, int64_t n) {
  for (int64_t j = 0; j < n; ++j) dst[j] = static_cast<float>(src[j]);
}

void narrow_row(const float* src, c10::Half* dst, int64_t n) {
  for (int64_t j = 0; j < n; ++j) dst[j] = static_cast<c10::Half>(src[j]);
}

template <typename G>
void forward_mixed(const at::Tensor& gates, const at::Tensor& deter, const at::Tensor& weight, const at::Tensor& bias,
                   at::Tensor& out, at::Tensor& mean, at::Tensor& rstd, double eps) {
  const int64_t B = gates.size(0), D = deter.size(1), N = 3 * D;
  const G* x = gates.const_data_ptr<G>();
  const float* h = deter.const_data_ptr<float>();
  const float* w = weight.const_data_ptr<float>();
  const float* b = bias.const_data_ptr<float>();
  float* o = out.mutable_data_ptr<float>();
  float* mu = mean.mutable_data_ptr<float>();
  float* rs = rstd.mutable_data_ptr<float>();
  const int64_t grain = std::max<int64_t>(1, kGrainElems / std::max<int64_t>(1, N));
  at::parallel_for(0, B, grain, [&](int64_t r0, int64_t r1) {
    constexpr int64_t kRows = 8;  // rows widened at a time (a few tens of KB: stays in L1/L2)
    std::vector<float> rows(kRows * N);
    for (int64_t r = r0; r < r1; r += kRows) {
      const int64_t n = std::min(kRows, r1 - r);
      DF_CPU_DISPATCH(widen_row(x + r * N, rows.data(), n * N));
      const ForwardArgs<float> chunk{rows.data(), h + r * D, w, b, o + r * D, mu + r, rs + r, n, D,
                                     static_cast<float>(eps)};
      DF_CPU_DISPATCH(forward_rows_f32(chunk, 0, n));
    }
  });
}

template <typename G>
void backward_mixed(const at::Tensor& grad, const at::Tensor& gates, const at::Tensor& deter, const at::Tensor& weight,
                    const at::Tensor& bias, const at::Tensor& mean, const at::Tensor& rstd, at::Tensor& d_gates,
                    at::Tensor& d_deter, float* partial, int64_t blocks) {
  const int64_t B = gates.size(0), D = deter.size(1), N = 3 * D;
  const float* g = grad.const_data_ptr<float>();
  const G* x = gates.const_data_ptr<G>();
  const float* h = deter.const_data_ptr<float>();
  const float* w = weight.const_data_ptr<float>();
  const float* b = bias.const_data_ptr<float>();
  const float* mu = mean.const_data_ptr<float>();
  const float* rs = rstd.const_data_ptr<float>();
  G* dx = d_gates.mutable_data_ptr<G>();
  float* dh = d_deter.mutable_data_ptr<float>();
  const int64_t grain = std::max<int64_t>(1, kGrainElems / std::max<int64_t>(1, kRowsPerBlock * N));
  at::parallel_for(0, blocks, grain, [&](int64_t k0, int64_t k1) {
    std::vector<float> dy(N), row(N), d_row(N);
    for (int64_t k = k0; k < k1; ++k) {
      float* pw = partial + k * 2 * N;
      for (int64_t r = k * kRowsPerBlock; r < std::min(B, (k + 1) * kRowsPerBlock); ++r) {
        DF_CPU_DISPATCH(widen_row(x + r * N, row.data(), N));
        const BackwardArgs<float> one{g + r * D, row.data(), h + r * D, w, b, mu + r, rs + r, d_row.data(),
                                      dh + r * D, 1, D};
        DF_CPU_DISPATCH(backward_rows_f32(one, Partials<float>{pw, pw + N, dy.data()}, 0, 1));
        DF_CPU_DISPATCH(narrow_row(d_row.data(), dx + r * N, N));
      }
    }
  });
}

// The weight and bias gradients: the blocks' partial sums, added in block order.
template <typename T>
void sum_partials(const T* partial, int64_t blocks, int64_t N, T* dw, T* db) {
  for (int64_t j = 0; j < N; ++j) {
    T sw = 0, sb = 0;
    for (int64_t k = 0; k < blocks; ++k) {
      sw += partial[k * 2 * N + j];
      sb += partial[k * 2 * N + N + j];
    }
    dw[j] = sw;
    db[j] = sb;
  }
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> ln_gru(const at::Tensor& gates, const at::Tensor& deter,
                                                      const at::Tensor& weight, const at::Tensor& bias, double eps) {
  const int64_t D = check_ln_gru_inputs("ln_gru", gates, deter, weight, bias, /*allow_half=*/false);
  const int64_t B = gates.size(0);
  at::Tensor out = at::empty_like(deter);
  at::Tensor mean = at::empty({B}, deter.options());
  at::Tensor rstd = at::empty({B}, deter.options());
  if (B == 0) return {out, mean, rstd};
  if (ln_gru_mixed(gates, deter)) {
    AT_DISPATCH_REDUCED_FLOATING_TYPES(gates.scalar_type(), "ln_gru_cpu_mixed", [&] {
      forward_mixed<scalar_t>(gates, deter, weight, bias, out, mean, rstd, eps);
    });
    return {out, mean, rstd};
  }
  AT_DISPATCH_FLOATING_TYPES(gates.scalar_type(), "ln_gru_cpu", [&] {
    const scalar_t* x = gates.const_data_ptr<scalar_t>();
    const scalar_t* h = deter.const_data_ptr<scalar_t>();
    const scalar_t* w = weight.const_data_ptr<scalar_t>();
    const scalar_t* b = bias.const_data_ptr<scalar_t>();
    scalar_t* o = out.mutable_data_ptr<scalar_t>();
    scalar_t* mu = mean.mutable_data_ptr<scalar_t>();
    scalar_t* rs = rstd.mutable_data_ptr<scalar_t>();
    const int64_t grain = std::max<int64_t>(1, kGrainElems / std::max<int64_t>(1, 3 * D));
    const ForwardArgs<scalar_t> args{x, h, w, b, o, mu, rs, B, D, static_cast<scalar_t>(eps)};
    at::parallel_for(0, B, grain, [&](int64_t r0, int64_t r1) { forward_dispatch<scalar_t>(args, r0, r1); });
  });
  return {out, mean, rstd};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> ln_gru_backward(
    const at::Tensor& grad, const at::Tensor& gates, const at::Tensor& deter, const at::Tensor& weight,
    const at::Tensor& bias, const at::Tensor& mean, const at::Tensor& rstd) {
  const char* op = "ln_gru_backward";
  const int64_t D = check_ln_gru_backward_inputs(op, grad, gates, deter, weight, bias, mean, rstd,
                                                     /*allow_half=*/false);
  const int64_t B = gates.size(0), N = 3 * D;
  at::Tensor d_gates = at::empty_like(gates), d_deter = at::empty_like(deter);
  at::Tensor d_weight = at::empty_like(weight), d_bias = at::empty_like(bias);
  if (ln_gru_mixed(gates, deter)) {
    const int64_t blocks = (B + kRowsPerBlock - 1) / kRowsPerBlock;
    std::vector<float> partial(static_cast<size_t>(blocks) * 2 * N, 0.0f);
    AT_DISPATCH_REDUCED_FLOATING_TYPES(gates.scalar_type(), "ln_gru_backward_cpu_mixed", [&] {
      backward_mixed<scalar_t>(grad, gates, deter, weight, bias, mean, rstd, d_gates, d_deter, partial.data(), blocks);
    });
    sum_partials(partial.data(), blocks, N, d_weight.mutable_data_ptr<float>(), d_bias.mutable_data_ptr<float>());
    return {d_gates, d_deter, d_weight, d_bias};
  }
  AT_DISPATCH_FLOATING_TYPES(gates.scalar_type(), "ln_gru_backward_cpu", [&] {
    const scalar_t* g = grad.const_data_ptr<scalar_t>();
    const scalar_t* x = gates.const_data_ptr<scalar_t>();
    const scalar_t* h = deter.const_data_ptr<scalar_t>();
    const scalar_t* w = weight.const_data_ptr<scalar_t>();
    const scalar_t* b = bias.const_data_ptr<scalar_t>();
    const scalar_t* mu = mean.const_data_ptr<scalar_t>();
    const scalar_t* rs = rstd.const_data_ptr<scalar_t>();
    scalar_t* dx = d_gates.mutable_data_ptr<scalar_t>();
    scalar_t* dh = d_deter.mutable_data_ptr<scalar_t>();
    const int64_t blocks = (B + kRowsPerBlock - 1) / kRowsPerBlock;
    // partial[k] = (Σ dy x̂, Σ dy) over the rows of block k, each [N]
    std::vector<scalar_t> partial(static_cast<size_t>(blocks) * 2 * N, scalar_t(0));
    const BackwardArgs<scalar_t> args{g, x, h, w, b, mu, rs, dx, dh, B, D};
    const int64_t grain = std::max<int64_t>(1, kGrainElems / std::max<int64_t>(1, kRowsPerBlock * N));
    at::parallel_for(0, blocks, grain, [&](int64_t k0, int64_t k1) {
      std::vector<scalar_t> dy(N);
      for (int64_t k = k0; k < k1; ++k) {
        scalar_t* pw = partial.data() + k * 2 * N;
        backward_dispatch<scalar_t>(args, Partials<scalar_t>{pw, pw + N, dy.data()}, k * kRowsPerBlock,
                                    std::min(B, (k + 1) * kRowsPerBlock));
      }
    });
    sum_partials(partial.data(), blocks, N, d_weight.mutable_data_ptr<scalar_t>(), d_bias.mutable_data_ptr<scalar_t>());
  });
  return {d_gates, d_deter, d_weight, d_bias};
}

}  // namespace dreamer_fast::cpu
