// Every op's schema, in one place. The CPU, CUDA and emulated kernels register implementations elsewhere.
//
// `dreamer_fast` is the public library. `dreamer_fast_emu` has the same schemas; its CPU kernels are the CUDA
// kernels' own source run through csrc/emulation/emulator.h, so tests can execute the CUDA code without a GPU.
#include <torch/library.h>

#include "ops.h"

namespace {

void define_schemas(torch::Library& m) {
  m.def("lambda_return(Tensor reward, Tensor value, Tensor discount, Tensor bootstrap, float lam) -> Tensor");
  m.def(
      "lambda_return_backward(Tensor grad, Tensor ret, Tensor value, Tensor discount, Tensor bootstrap, float lam)"
      " -> (Tensor, Tensor, Tensor, Tensor)");
  // `seed` is a one-element int64 CPU tensor, drawn in Python from a torch.Generator: a tensor, not an int, so that
  // torch.compile traces the draw instead of breaking the graph at .item(). Missing gradients stay None (no zeros).
  m.def("straight_through_categorical(Tensor logits, Tensor? noise, Tensor seed, float unimix) -> (Tensor, Tensor)");
  m.def(
      "straight_through_categorical_backward(Tensor? grad_sample, Tensor? grad_probs, Tensor probs, float unimix)"
      " -> Tensor");
  m.def(
      "kl_balance(Tensor post_logits, Tensor prior_logits, float balance, float free, bool free_avg, float unimix)"
      " -> (Tensor, Tensor)");
  m.def(
      "kl_balance_backward(Tensor grad_loss, Tensor grad_kl, Tensor post_logits, Tensor prior_logits, Tensor kl,"
      " float balance, float free, bool free_avg, float unimix) -> (Tensor, Tensor)");
  // ln_gru returns (deter', mean, rstd); the per-row mean and rstd are saved for the backward.
  m.def("ln_gru(Tensor gates, Tensor deter, Tensor weight, Tensor bias, float eps) -> (Tensor, Tensor, Tensor)");
  m.def(
      "ln_gru_backward(Tensor grad, Tensor gates, Tensor deter, Tensor weight, Tensor bias, Tensor mean,"
      " Tensor rstd) -> (Tensor, Tensor, Tensor, Tensor)");
}

}  // namespace

TORCH_LIBRARY(dreamer_fast, m) { define_schemas(m); }
TORCH_LIBRARY(dreamer_fast_emu, m) { define_schemas(m); }

#ifdef DREAMER_FAST_PYTHON_MODULE
// `import dreamer_fast._C` loads this library, whose static initialisers register the ops above; no pybind glue.
#include <Python.h>
extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", "dreamer_fast kernels (registered as torch.ops)",
                                      -1, nullptr};
  return PyModule_Create(&module);
}
#endif
