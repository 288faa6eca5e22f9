"""The conv encoder and decoder over one Atari batch (B=16 x T=50 = 800 frames of 64x64, depth 48), forward+backward,
float32: our modules (the encoder's last conv and the decoder's first transposed conv as GEMMs, `dreamer_fast.agent.nets`)
against the same parameters through the plain `nn.Conv2d` / `nn.ConvTranspose2d` layers (oneDNN), in one run.

Run:  pytest benchmarks/bench_nets.py --benchmark-only --benchmark-columns=min,median,mean,rounds
"""

from __future__ import annotations

import pytest
import torch

from dreamer_fast.agent.nets import ConvDecoder, ConvEncoder

FRAMES, FEAT = 800, 600 + 32 * 32


@pytest.mark.parametrize("impl", ["ours", "plain"])
def test_conv_encoder(benchmark, impl):
    benchmark.group = f"conv encoder fwd+bwd, {FRAMES} frames 1x64x64, depth 48 (f32)"
    torch.manual_seed(0)
    enc = ConvEncoder(1, 48)
    image = torch.rand(FRAMES, 1, 64, 64) - 0.5
    forward = enc if impl == "ours" else enc.forward_plain
    params = list(enc.parameters())

    def run():
        return torch.autograd.grad(forward(image).square().mean(), params)

    run()
    benchmark.pedantic(run, rounds=3, iterations=1)


@pytest.mark.parametrize("impl", ["ours", "plain"])
def test_conv_decoder(benchmark, impl):
    benchmark.group = f"conv decoder fwd+bwd, {FRAMES} x {FEAT} features -> 1x64x64, depth 48 (f32)"
    torch.manual_seed(0)
    dec = ConvDecoder(FEAT, 1, 48)
    feat = torch.randn(FRAMES, FEAT, requires_grad=True)
    forward = dec if impl == "ours" else dec.forward_plain
    params = [feat, *dec.parameters()]

    def run():
        return torch.autograd.grad(forward(feat).square().mean(), params)

    run()
    benchmark.pedantic(run, rounds=3, iterations=1)
