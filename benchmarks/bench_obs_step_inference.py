"""One RSSM observe step for acting (the obs_step_inference op), B = 1 under torch.no_grad: fused op vs its reference
twin (dreamer_fast.reference.obs_step_inference_ref) vs torch.compile(reference twin).

Sizes: DreamerV2's Atari RSSM (deter 600, hidden 600, 32x32 latents, 18 actions, 1536 embed), float32 state; the
step as an agent acts (posterior only) and with the prior head, with float32 weights and with bfloat16 weight copies
(products in float32). At B = 1 the step's time is the bytes of weights it reads (22.6 MB in float32).
bench_rssm.py's test_policy_step times the same step through RSSM.obs_step.
"""

from __future__ import annotations

import pytest
import torch
from conftest import compiled, warm

from dreamer_fast import RSSM
from dreamer_fast.ops.obs_step_inference import obs_step_inference
from dreamer_fast.reference import obs_step_inference_ref

ACTIONS, EMBED = 18, 1536


def step_inputs(weights: torch.dtype) -> tuple[tuple, torch.Tensor]:
    torch.manual_seed(0)
    m = RSSM(ACTIONS, EMBED)
    layers = {name: (getattr(m, name).weight.detach().to(weights), getattr(m, name).bias.detach())
              for name in RSSM._LINEARS}
    g = torch.Generator().manual_seed(1)
    state = m.initial(1)
    deter = torch.randn(1, state.deter.shape[1], generator=g)
    embed, action = torch.randn(1, EMBED, generator=g), torch.zeros(1, ACTIONS)
    args = (deter, state.stoch, action, embed, torch.ones(1), layers, m.gru_norm.weight.detach(),
            m.gru_norm.bias.detach())
    return args, torch.rand(1, state.stoch.shape[1], generator=g)


IMPLS = {"fused": obs_step_inference, "reference": obs_step_inference_ref, "compiled": None}
CASES = {"posterior-f32w": (False, torch.float32), "posterior-bf16w": (False, torch.bfloat16),
         "prior-f32w": (True, torch.float32)}


@pytest.mark.parametrize("impl", list(IMPLS))
@pytest.mark.parametrize("case", list(CASES))
def test_obs_step_inference(benchmark, impl, case):
    with_prior, weights = CASES[case]
    benchmark.group = f"obs_step_inference B=1 no_grad {case}"
    args, noise = step_inputs(weights)
    fn = IMPLS[impl] or compiled(obs_step_inference_ref)

    def run():
        with torch.no_grad():
            return fn(*args, noise=noise, unimix=0.01, with_prior=with_prior)

    if not benchmark.disabled:
        warm(run, times=10)
    out = benchmark(run)
    assert out[0].shape == args[0].shape and (out[3].numel() > 0) == with_prior
