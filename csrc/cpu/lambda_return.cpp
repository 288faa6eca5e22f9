// λ-return on the CPU: parallel over the batch, the time recursion vectorised across a contiguous batch chunk.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros_like.h>

#include <algorithm>
#include <vector>

#include "../checks/lambda_return.h"
#include "../ops.h"
#include "dreamer_fast/lambda_return.h"

namespace dreamer_fast::cpu {
namespace {

// Batch columns per task: at least 512 (a task's G buffer stays in L1), and at least 64k elements of work, because
// below that a parallel region costs more than it saves (15x800 takes ~10 us on one core) and, when other processes
// hold the cores, OpenMP's waiting threads turn 10 us into milliseconds (measured on an Intel Xeon, 2 cores).
int64_t grain(int64_t T) { return std::max<int64_t>(512, (65536 + T - 1) / std::max<int64_t>(T, 1)); }

}  // namespace

at::Tensor lambda_return(const at::Tensor& reward, const at::Tensor& value, const at::Tensor& discount,
                         const at::Tensor& bootstrap, double lam) {
  check_lambda_return_inputs("lambda_return", /*allow_half=*/false, reward, value, discount, bootstrap);
  const int64_t T = reward.size(0), B = reward.size(1);
  at::Tensor ret = at::empty_like(reward);
  if (T == 0 || B == 0) return ret;
  AT_DISPATCH_FLOATING_TYPES(reward.scalar_type(), "lambda_return_cpu", [&] {
    const scalar_t* r = reward.const_data_ptr<scalar_t>();
    const scalar_t* v = value.const_data_ptr<scalar_t>();
    const scalar_t* d = discount.const_data_ptr<scalar_t>();
    const scalar_t* boot = bootstrap.const_data_ptr<scalar_t>();
    scalar_t* R = ret.mutable_data_ptr<scalar_t>();
    const LambdaCoef<scalar_t> l = lambda_coef<scalar_t>(lam);
    at::parallel_for(0, B, grain(T), [&](int64_t b0, int64_t b1) {
      const int64_t last = (T - 1) * B;
      for (int64_t b = b0; b < b1; ++b) R[last + b] = lambda_step(r[last + b], d[last + b], boot[b], boot[b], l);
      for (int64_t t = T - 2; t >= 0; --t) {
        const int64_t o = t * B, n = o + B;
        for (int64_t b = b0; b < b1; ++b) R[o + b] = lambda_step(r[o + b], d[o + b], v[n + b], R[n + b], l);
      }
    });
  });
  return ret;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> lambda_return_backward(
    const at::Tensor& grad, const at::Tensor& ret, const at::Tensor& value, const at::Tensor& discount,
    const at::Tensor& bootstrap, double lam) {
  const char* op = "lambda_return_backward";
  check_lambda_return_inputs(op, /*allow_half=*/false, grad, value, discount, bootstrap);
  check_same(op, "ret", ret, grad, "grad");
  check_shape(op, "ret", ret, grad.sizes());
  const int64_t T = grad.size(0), B = grad.size(1);
  at::Tensor d_reward = at::empty_like(grad), d_value = at::empty_like(grad), d_discount = at::empty_like(grad);
  at::Tensor d_boot = at::zeros_like(bootstrap);
  if (T == 0 || B == 0) return {d_reward, d_value.zero_(), d_discount, d_boot};
  AT_DISPATCH_FLOATING_TYPES(grad.scalar_type(), "lambda_return_backward_cpu", [&] {
    const scalar_t* g = grad.const_data_ptr<scalar_t>();
    const scalar_t* R = ret.const_data_ptr<scalar_t>();
    const scalar_t* v = value.const_data_ptr<scalar_t>();
    const scalar_t* d = discount.const_data_ptr<scalar_t>();
    const scalar_t* boot = bootstrap.const_data_ptr<scalar_t>();
    scalar_t* dr = d_reward.mutable_data_ptr<scalar_t>();
    scalar_t* dv = d_value.mutable_data_ptr<scalar_t>();
    scalar_t* dd = d_discount.mutable_data_ptr<scalar_t>();
    scalar_t* db = d_boot.mutable_data_ptr<scalar_t>();
    const LambdaCoef<scalar_t> l = lambda_coef<scalar_t>(lam);
    at::parallel_for(0, B, grain(T), [&](int64_t b0, int64_t b1) {
      std::vector<scalar_t> G(b1 - b0, scalar_t(0));
      for (int64_t b = b0; b < b1; ++b) dv[b] = scalar_t(0);  // value[0] feeds no return
      for (int64_t t = 0; t < T; ++t) {
        const int64_t o = t * B, n = o + B;
        const bool last = t == T - 1;
        for (int64_t b = b0; b < b1; ++b) {
          scalar_t& Gb = G[b - b0];
          Gb = t > 0 ? lambda_total_grad(g[o + b], Gb, d[o - B + b], l) : g[o + b];
          const scalar_t v_next = last ? boot[b] : v[n + b];
          const scalar_t r_next = last ? boot[b] : R[n + b];
          scalar_t dvn;
          lambda_step_backward(Gb, d[o + b], v_next, r_next, l, &dr[o + b], &dd[o + b], &dvn);
          if (last)
            db[b] = lambda_bootstrap_grad(Gb, d[o + b], l);
          else
            dv[n + b] = dvn;
        }
      }
    });
  });
  return {d_reward, d_value, d_discount, d_boot};
}

}  // namespace dreamer_fast::cpu
