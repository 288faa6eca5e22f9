// Private ATen ops the CPU paths call (oneDNN's and MKL's GEMM ops, oneDNN's bf16 check). Their presence and schema
// belong to a torch release, not to its stable API, so none is linked or called by its C++ name: each is looked up once
// in the dispatcher with the argument and return types it is called with, and a missing or different one is reported
// (`dreamer_fast::private_aten_ops() -> str`) while its caller takes ATen's public ops instead:
//   oneDNN linear/pack missing  -> the GEMM library is MKL's packed ops, else ATen's addmm/mm (composite/cpu_gemm.h);
//   MKL pack/linear missing     -> oneDNN where it is there, else ATen's addmm/mm;
//   oneDNN's bf16 check missing -> no oneDNN bf16 path (bf16 GEMMs are ATen's, `bf16: auto` picks float32).
// $DREAMER_FAST_PRIVATE_ATEN_OPS=0 turns every one off ("off"): the public paths on any torch (tests, comparisons).
#pragma once

#include <ATen/core/dispatch/Dispatcher.h>

#include <optional>

namespace dreamer_fast::cpu {

enum class PrivateOp : int {
  kOnednnLinear,          // mkldnn::_linear_pointwise(Tensor, Tensor, Tensor?, str, Scalar?[], str?) -> Tensor
  kOnednnPack,            // mkldnn::_reorder_linear_weight(Tensor, int?) -> Tensor
  kMklPack,               // mkl::_mkl_reorder_linear_weight(Tensor, int) -> Tensor
  kMklLinear,             // mkl::_mkl_linear(Tensor, Tensor, Tensor, Tensor?, int) -> Tensor
  kOnednnBf16Supported,   // mkldnn::_is_mkldnn_bf16_supported() -> bool
};

// The op in this torch when it is there with the expected types; nullopt otherwise. Looked up once.
const std::optional<c10::OperatorHandle>& private_op(PrivateOp which);

}  // namespace dreamer_fast::cpu
