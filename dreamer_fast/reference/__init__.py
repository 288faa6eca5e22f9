"""Plain-PyTorch references of every fused op: the executable specification, same signatures as dreamer_fast.ops."""

from dreamer_fast.reference.elu import elu_ref
from dreamer_fast.reference.kl_balance import kl_balance_ref
from dreamer_fast.reference.lambda_return import lambda_return_ref
from dreamer_fast.reference.linear import linear_ref
from dreamer_fast.reference.ln_gru import ln_gru_ref
from dreamer_fast.reference.obs_step_inference import obs_step_inference_ref
from dreamer_fast.reference.observe_sequence import observe_sequence_ref
from dreamer_fast.reference.straight_through_categorical import straight_through_categorical_ref

__all__ = ["elu_ref", "kl_balance_ref", "lambda_return_ref", "linear_ref", "ln_gru_ref", "obs_step_inference_ref",
           "observe_sequence_ref", "straight_through_categorical_ref"]
