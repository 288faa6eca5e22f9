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
  // The same draw from a Philox stream that lives on the logits' device: `stream` is int64 [key, offset]; row n takes
  // stream element offset + n under key, and the op advances the offset by the rows it drew, on the device, so that a
  // replayed CUDA graph draws fresh samples at every replay. Its autograd formula is C++ (csrc/autograd/): Python's
  // register_autograd takes functional ops only.
  m.def("straight_through_categorical_stream(Tensor logits, Tensor(a!) stream, float unimix) -> (Tensor, Tensor)");
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
  // ELU with alpha = 1, any shape; the backward reads the output only (dx = grad (out + 1) where out <= 0).
  m.def("elu(Tensor x) -> Tensor");
  m.def("elu_backward(Tensor grad, Tensor out) -> Tensor");
  // y = x weight^T (+ bias): x [M, K], weight [N, K] (row- or column-major views), bias [N]; a composite op
  // (csrc/composite/linear.cpp) whose CPU float32 product runs in the library of cpu_gemm.h. Its backward is this op
  // on transposed views.
  m.def("linear(Tensor x, Tensor weight, Tensor? bias) -> Tensor");
  // The whole-sequence RSSM observe (recurrence in csrc/composite/observe_sequence.h): act_proj/emb_proj [T, B, H]
  // are the time-independent parts of img_in/obs_out (biases included), keep [T, B] is 1 - is_first, stoch0 [B, S, K];
  // `seeds` [T] (int64, CPU) are the sampler's per-step Philox seeds, used where `noise` [T, B, S] is None;
  // `gemm_dtype` (autocast's) is the precision of the GEMMs. Returns deters [T, B, D], samples and logits [T, B, S, K].
  m.def(
      "observe_sequence(Tensor act_proj, Tensor emb_proj, Tensor keep, Tensor deter0, Tensor stoch0,"
      " Tensor w_stoch_in, Tensor w_gru, Tensor b_gru, Tensor ln_w, Tensor ln_b, Tensor w_deter_out, Tensor w_post,"
      " Tensor b_post, Tensor? noise, Tensor seeds, float unimix, float eps, ScalarType? gemm_dtype)"
      " -> (Tensor, Tensor, Tensor)");
  // observe_sequence's forward with what its backward needs: (deters, samples, logits, x, gates, mean, rstd, y,
  // probs), and the backward, which returns the gradients of (act_proj, emb_proj, deter0, stoch0, w_stoch_in,
  // w_gru, b_gru, ln_w, ln_b, w_deter_out, w_post, b_post).
  m.def(
      "observe_sequence_forward(Tensor act_proj, Tensor emb_proj, Tensor keep, Tensor deter0, Tensor stoch0,"
      " Tensor w_stoch_in, Tensor w_gru, Tensor b_gru, Tensor ln_w, Tensor ln_b, Tensor w_deter_out, Tensor w_post,"
      " Tensor b_post, Tensor? noise, Tensor seeds, float unimix, float eps, ScalarType? gemm_dtype)"
      " -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "observe_sequence_backward(Tensor grad_deters, Tensor grad_samples, Tensor grad_logits, Tensor keep,"
      " Tensor deter0, Tensor stoch0, Tensor w_stoch_in, Tensor w_gru, Tensor ln_w, Tensor ln_b, Tensor w_deter_out,"
      " Tensor w_post, Tensor deters, Tensor samples, Tensor x, Tensor gates, Tensor mean, Tensor rstd, Tensor y,"
      " Tensor probs, float unimix) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor,"
      " Tensor, Tensor, Tensor)");
  // One RSSM observe step for acting (no autograd; recurrence in csrc/composite/obs_step_inference.cpp): the state
  // deter [B, D], stoch [B, S, K], action [B, A], embed [B, E], keep [B] (1 - is_first), the RSSM's full layers
  // (weight [out, in], bias [out]), the sampler's noise [B, S] or Philox `seed`. Returns (deter', post sample, post
  // logits, prior probs, prior logits); without `with_prior` the last two are empty [0]. The six weights may be
  // bfloat16 copies when the state is float32.
  m.def(
      "obs_step_inference(Tensor deter, Tensor stoch, Tensor action, Tensor embed, Tensor keep, Tensor w_img_in,"
      " Tensor b_img_in, Tensor w_gru, Tensor b_gru, Tensor ln_w, Tensor ln_b, Tensor w_img_out, Tensor b_img_out,"
      " Tensor w_prior, Tensor b_prior, Tensor w_obs_out, Tensor b_obs_out, Tensor w_post, Tensor b_post,"
      " Tensor? noise, Tensor seed, float unimix, float eps, bool with_prior=True)"
      " -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
}

}  // namespace

TORCH_LIBRARY(dreamer_fast, m) { define_schemas(m); }
TORCH_LIBRARY(dreamer_fast_emu, m) { define_schemas(m); }

#ifdef DREAMER_FAST_PYTHON_MODULE
// The torch this library was compiled against (`torch.__version__`, written by setup.py), in a section of its own:
// dreamer_fast/_backend.py reads it from the file before loading the library, so a library built for another torch is
// refused with one line naming both versions instead of failing on an undefined symbol.
#include <dreamer_fast_torch_version.h>
extern "C" __attribute__((used, section(".dreamer_fast_torch"))) const char dreamer_fast_torch_version[] =
    DREAMER_FAST_TORCH_VERSION;

// `import dreamer_fast._C` loads this library, whose static initialisers register the ops above; no pybind glue.
#include <Python.h>
extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", "dreamer_fast kernels (registered as torch.ops)",
                                      -1, nullptr};
  return PyModule_Create(&module);
}
#endif
