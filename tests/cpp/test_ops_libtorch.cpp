// The kernels as a C++ user of libtorch sees them: ops found through the dispatcher, CPU kernel vs emulated CUDA
// kernel vs a naive loop, and the argument checks' messages.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <string>

#include "check.h"

namespace {

at::Tensor call_lambda_return(const char* ns, const at::Tensor& r, const at::Tensor& v, const at::Tensor& d,
                              const at::Tensor& b, double lam) {
  static const auto schema = std::string("::lambda_return");
  auto op = c10::Dispatcher::singleton()
                .findSchemaOrThrow((std::string(ns) + schema).c_str(), "")
                .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, double)>();
  return op.call(r, v, d, b, lam);
}

at::Tensor naive(const at::Tensor& r, const at::Tensor& v, const at::Tensor& d, const at::Tensor& b, double lam) {
  const int64_t T = r.size(0), B = r.size(1);
  at::Tensor out = at::empty_like(r);
  auto R = out.accessor<double, 2>();
  auto rr = r.accessor<double, 2>(), vv = v.accessor<double, 2>(), dd = d.accessor<double, 2>();
  auto bb = b.accessor<double, 1>();
  for (int64_t j = 0; j < B; ++j) {
    double next_ret = bb[j], next_v = bb[j];
    for (int64_t t = T - 1; t >= 0; --t) {
      R[t][j] = rr[t][j] + dd[t][j] * ((1 - lam) * next_v + lam * next_ret);
      next_ret = R[t][j];
      next_v = vv[t][j];
    }
  }
  return out;
}

}  // namespace

int main() {
  at::manual_seed(0);
  const auto opts = at::TensorOptions().dtype(at::kDouble);
  at::Tensor r = at::randn({11, 37}, opts), v = at::randn({11, 37}, opts), d = at::rand({11, 37}, opts);
  at::Tensor b = at::randn({37}, opts);
  const at::Tensor want = naive(r, v, d, b, 0.9);
  for (const char* ns : {"dreamer_fast", "dreamer_fast_emu"}) {
    const at::Tensor got = call_lambda_return(ns, r, v, d, b, 0.9);
    EXPECT(at::allclose(got, want, 1e-12, 1e-12));
  }
  std::string msg;
  try {
    call_lambda_return("dreamer_fast", r, v, d, b.slice(0, 1), 0.9);
  } catch (const c10::Error& e) {
    msg = e.what();
  }
  EXPECT(msg.find("`bootstrap` must have shape") != std::string::npos);
  return report("test_ops_libtorch");
}
