"""DreamerV2's recurrent state-space model (RSSM) as a drop-in module, with a fused and a reference backend.

Sequences are time-major ``[T, B, ...]``. The state is an :class:`RSSMState`: ``deter [..., D]``, and the categorical
``stoch [..., S, K]`` (a straight-through one-hot sample) with its ``logits [..., S, K]``.

Both backends compute the same function with the same parameters (``state_dict`` keys are shared):

- ``reference`` (``rssm/reference.py``): every step in plain PyTorch, one module call per layer (the executable
  specification);
- ``fused`` (``rssm/fused.py``): the time-independent GEMMs of a sequence batched over all ``T·B`` rows (the
  action part of ``img_in``, the embed part of ``obs_out``, the whole prior head after the loop); ``observe``'s
  recurrence, forward and backward, in one C++ op (``dreamer_fast.ops.observe_sequence``); imagination loops in
  Python over the fused :func:`dreamer_fast.ln_gru` op with GEMMs through ATen, each weight's gradient computed once
  for the whole sequence (``sequence_linear.SequenceLinear``) instead of once per step; ``obs_step`` without
  gradients (acting, B = 1 under ``torch.no_grad``) as one C++ op (``dreamer_fast.ops.obs_step_inference``), and with
  gradients or under autocast as a few plain GEMMs around the fused ``ln_gru`` op.

Both step through the one Python form of the RSSM step, :mod:`dreamer_fast.reference.rssm_step`, with their own
layers and ops. Differences in floating-point summation order aside (GEMMs split by columns, weight gradients summed
in one GEMM), the two backends give the same states, samples and gradients for the same parameters and noise.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from dreamer_fast import _backend
from dreamer_fast.ops import obs_step_inference as _obs_step_inference
from dreamer_fast.reference.philox import PhiloxStream
from dreamer_fast.rssm import checks
from dreamer_fast.rssm.backend import Backend, Layers, empty_sequence
from dreamer_fast.rssm.fused import Fused
from dreamer_fast.rssm.reference import Reference
from dreamer_fast.rssm.state import RSSMState

_GRU_EPS = 1e-3  # Keras' LayerNorm default, DreamerV2's


# ---- the module ---------------------------------------------------------------------------------------------------


class RSSM(nn.Module):
    """DreamerV2's RSSM (LayerNorm-GRU, categorical latents), drop-in: time-major, backend-selectable.

    Layers (names are the ``state_dict`` keys, shared by both backends; Xavier-uniform weights, zero biases):

    - ``img_in``: Linear(S·K + action_dim → hidden) + ELU on ``cat([stoch.flatten(-2), action])``;
    - ``gru``: Linear(hidden + deter → 3·deter) on ``cat([x, deter])`` (that order), then ``gru_norm`` =
      LayerNorm(3·deter, eps=1e-3) and the GRU update (:func:`dreamer_fast.ln_gru`);
    - prior: ``img_out`` Linear(deter → hidden) + ELU, ``prior_logits`` Linear(hidden → S·K);
    - posterior: ``obs_out`` Linear(deter + embed_dim → hidden) + ELU on ``cat([deter, embed])``,
      ``post_logits`` Linear(hidden → S·K).

    Args:
        action_dim, embed_dim: sizes of an action and an observation embedding.
        deter, hidden, stoch, classes: D, the hidden width, S and K (defaults: DreamerV2's Atari sizes).
        unimix: uniform mixture weight of both categoricals (0 is DreamerV2; DreamerV3 uses 0.01).
        backend: "auto" | "fused" | "reference" (default: $DREAMER_FAST_BACKEND or "auto"); may be changed later
            through the ``backend`` attribute. "auto" runs fused where the extension has a kernel for the device.
            The choice is resolved for the parameters' device when the module is built, moved (``.to()``,
            ``.cuda()``, ``.double()``...) or assigned a ``backend``: $DREAMER_FAST_BACKEND is read then.

    Randomness: every sample is ``smallest k with noise < cumsum(probs)[k]`` for a uniform ``noise``
    (:func:`dreamer_fast.straight_through_categorical`); pass it to compare backends sample for sample, or leave it
    ``None``: each step's sample then comes from the op's Philox stream under a seed drawn from torch's default CPU
    generator, the same on CPU and CUDA and in both backends, so ``torch.manual_seed`` reproduces a run. Setting
    the attribute ``stream`` to a :class:`dreamer_fast.PhiloxStream` on the parameters' device draws the noise of every
    call without ``noise`` from it instead, up front (``[T, B, S]``, ``[H, N, S]``, ...: the elements the per-step
    sampler would take from it), so the backends still agree sample for sample; its key and offset stay on the
    device and advance there (no host read, as a captured CUDA graph needs).

    Under ``torch.autocast`` the GEMMs run in the low precision while the states, the LayerNorm-GRU and the
    distributions stay in the parameters' dtype (DreamerV2's mixed precision).
    """

    def __init__(
        self,
        action_dim: int,
        embed_dim: int,
        deter: int = 600,
        hidden: int = 600,
        stoch: int = 32,
        classes: int = 32,
        unimix: float = 0.0,
        backend: str | None = None,
    ) -> None:
        super().__init__()
        checks.check_config(dict(action_dim=action_dim, embed_dim=embed_dim, deter=deter, hidden=hidden, stoch=stoch,
                                 classes=classes), unimix)
        self.action_dim, self.embed_dim = action_dim, embed_dim
        self.deter_size, self.hidden_size, self.stoch_size, self.classes = deter, hidden, stoch, classes
        if backend is not None:
            _backend.resolve(backend)  # validates
        self._backend, self._unimix, self._inference_dtype = backend, float(unimix), None
        flat = stoch * classes
        self.img_in = nn.Linear(flat + action_dim, hidden)
        self.gru = nn.Linear(hidden + deter, 3 * deter)
        self.gru_norm = nn.LayerNorm(3 * deter, eps=_GRU_EPS)
        self.img_out = nn.Linear(deter, hidden)
        self.prior_logits = nn.Linear(hidden, flat)
        self.obs_out = nn.Linear(deter + embed_dim, hidden)
        self.post_logits = nn.Linear(hidden, flat)
        self.reset_parameters()
        self._impl: Backend = self._build(backend)
        self.stream: PhiloxStream | None = None

    @property
    def backend(self) -> str | None:
        return self._backend

    @backend.setter
    def backend(self, value: str | None) -> None:
        if value is not None:
            _backend.resolve(value)  # validates
        self._impl = self._build(value)  # first: raises (fused where it cannot run) before anything changes
        self._backend = value

    @property
    def unimix(self) -> float:
        """Uniform mixture weight of both categoricals, in [0, 1)."""
        return self._unimix

    @unimix.setter
    def unimix(self, value: float) -> None:
        checks.check_unimix(value)
        self._unimix = float(value)
        self._impl = self._build(self._backend)

    @property
    def inference_dtype(self) -> torch.dtype | None:
        """The weights' dtype in :meth:`obs_step` without gradients on the fused backend (acting in an environment).

        ``None`` (default): the parameters themselves. ``torch.bfloat16`` (float32 parameters): the step reads
        bfloat16 copies of its six weight matrices, made at the first such step and remade whenever a weight has
        changed since (its version counter: an optimizer step, ``load_state_dict``, ``.to()``). At B = 1 the step's
        time is the bytes of weights it reads, so this halves it (docs/PERFORMANCE.md). The products still
        accumulate in float32 and biases and LayerNorm stay float32, but the weights are rounded to bfloat16
        (relative error ≤ 2⁻⁹), so the results are those of the RSSM with rounded weights, not bit-equal to the
        float32 step. Steps with gradients, under autocast, on the reference backend or with non-float32
        parameters use the parameters as they are.
        """
        return self._inference_dtype

    @inference_dtype.setter
    def inference_dtype(self, value: torch.dtype | None) -> None:
        if value not in (None, torch.bfloat16):
            raise ValueError(f"RSSM: `inference_dtype` must be None or torch.bfloat16, got {value!r}")
        self._inference_dtype = value
        self._impl = self._build(self._backend)

    def reset_parameters(self) -> None:
        """Keras' defaults, as DreamerV2: Xavier-uniform weights, zero biases, LayerNorm (1, 0)."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        self.gru_norm.reset_parameters()

    @property
    def feat_size(self) -> int:
        """Size of :meth:`get_feat`'s output: D + S·K."""
        return self.deter_size + self.stoch_size * self.classes

    def extra_repr(self) -> str:
        return (f"action_dim={self.action_dim}, embed_dim={self.embed_dim}, deter={self.deter_size}, "
                f"stoch={self.stoch_size}, classes={self.classes}, unimix={self.unimix}, backend={self.backend!r}")

    # ---- public API ----------------------------------------------------------------------------------------------

    def initial(self, batch_size: int) -> RSSMState:
        """The initial state (zeros): ``deter [B, D]``, ``stoch`` and ``logits [B, S, K]``."""
        w = self.gru_norm.weight
        S, K = self.stoch_size, self.classes
        return RSSMState(
            w.new_zeros(batch_size, self.deter_size), w.new_zeros(batch_size, S, K), w.new_zeros(batch_size, S, K)
        )

    def get_feat(self, state: RSSMState) -> torch.Tensor:
        """``cat([deter, stoch.flatten(-2)], -1)``: ``[..., D + S·K]``."""
        return torch.cat([state.deter, state.stoch.flatten(-2)], -1)

    def observe(
        self,
        embed: torch.Tensor,
        action: torch.Tensor,
        is_first: torch.Tensor,
        state: RSSMState | None = None,
        noise: torch.Tensor | None = None,
    ) -> tuple[RSSMState, RSSMState]:
        """Filter a sequence: posterior and prior states at every step.

        Args:
            embed: ``[T, B, embed_dim]`` observation embeddings.
            action: ``[T, B, action_dim]``; ``action[t]`` is the action taken *before* observation t.
            is_first: ``[T, B]`` (bool or 0/1); where set, the state and ``action[t]`` are reset to zero before step t.
            state: the state before step 0 (``[B]`` fields); default :meth:`initial`.
            noise: ``[T, B, S]`` uniform noise of the posterior samples (``noise[t, b, s]`` draws ``post.stoch[t, b,
                s]``); default: the Philox stream (see the class). The prior's sample is never drawn.

        Returns:
            ``(post, prior)``, states with leading dims ``[T, B]``. ``post.deter == prior.deter``; ``prior.stoch`` holds
            the prior's probabilities (its mean) instead of a sample.
        """
        T, B = checks.check_sequence(self, "observe", embed, action, is_first)
        state = checks.check_state(self, "observe", "state", state, B)
        noise = self._noise(checks.check_noise(self, "observe", noise, (T, B)), (T, B))
        keep = (is_first == 0).to(self._dtype())
        return self._backend_impl().observe(embed, action, keep, state, noise)

    def obs_step(
        self,
        prev_state: RSSMState,
        prev_action: torch.Tensor,
        embed: torch.Tensor,
        is_first: torch.Tensor,
        noise: torch.Tensor | None = None,
        *,
        prior: bool = True,
    ) -> tuple[RSSMState, RSSMState | None]:
        """One step of :meth:`observe` (e.g. the policy's filter while acting).

        Args:
            prev_state: ``[B]`` state; prev_action: ``[B, action_dim]``; embed: ``[B, embed_dim]``; is_first: ``[B]``.
            noise: ``[B, S]``, the posterior sample's noise.
            prior: False skips the prior head (``img_out`` and ``prior_logits``, 17% of the step's weights at the
                default sizes) and returns None for it: acting needs the posterior only.

        Returns:
            ``(post, prior)`` with ``[B]`` fields (``prior.stoch``: the prior's probabilities, as in observe).
            Without gradients on the fused backend the weights may be bfloat16 copies: :attr:`inference_dtype`.
        """
        B = checks.check_step(self, "obs_step", prev_action, embed, is_first)
        prev_state = checks.check_state(self, "obs_step", "prev_state", prev_state, B)
        noise = self._noise(checks.check_noise(self, "obs_step", noise, (B,)), (B,))
        keep = (is_first == 0).to(self._dtype())
        return self._backend_impl().obs_step(prev_state, prev_action, embed, keep, noise, bool(prior))

    def img_step(
        self, prev_state: RSSMState, prev_action: torch.Tensor, noise: torch.Tensor | None = None
    ) -> RSSMState:
        """One step of the prior (no observation): ``[B]`` state and ``[B, action_dim]`` action -> ``[B]`` state.

        ``noise``: ``[B, S]``, the prior sample's noise.
        """
        B = checks.check_action(self, "img_step", "prev_action", prev_action)
        prev_state = checks.check_state(self, "img_step", "prev_state", prev_state, B)
        noise = self._noise(checks.check_noise(self, "img_step", noise, (B,)), (B,))
        return self._backend_impl().img_step(prev_state, prev_action, noise)

    def imagine_with_action(
        self, action: torch.Tensor, start: RSSMState, noise: torch.Tensor | None = None
    ) -> RSSMState:
        """Roll the prior forward under given actions (open loop).

        Args:
            action: ``[H, B, action_dim]``; ``action[t]`` leads from step t - 1 (``start`` for t = 0) to step t.
            start: ``[B]`` state. noise: ``[H, B, S]``.

        Returns:
            the ``H`` successor states, ``[H, B]`` (``start`` not included; as DreamerV2's ``RSSM.imagine``).
        """
        H, B = checks.check_actions(self, "imagine_with_action", action)
        start = checks.check_state(self, "imagine_with_action", "start", start, B)
        noise = self._noise(checks.check_noise(self, "imagine_with_action", noise, (H, B)), (H, B))
        if not H:
            return empty_sequence(start)
        return self._backend_impl().imagine_with_action(action, start, noise)

    def imagine(
        self,
        policy: Callable[[torch.Tensor], torch.Tensor],
        start: RSSMState,
        horizon: int,
        noise: torch.Tensor | None = None,
        return_actions: bool = False,
    ) -> RSSMState | tuple[RSSMState, torch.Tensor]:
        """Imagine ``horizon`` steps ahead under a policy (DreamerV2's ``WorldModel.imagine``).

        Args:
            policy: ``feat [N, D + S·K] -> action [N, action_dim]``, differentiable (e.g. a straight-through
                sample). It sees ``get_feat(state).detach()``, as in DreamerV2; gradients reach the model through
                the actions it returns (dynamics backpropagation).
            start: the start states, any leading dims (flattened to ``N``; e.g. every posterior state ``[T, B]``).
            horizon: H >= 0 steps.
            noise: ``[H, N, S]`` noise of the prior samples.
            return_actions: also return the actions ``[H, N, action_dim]``, ``actions[t]`` taken in state t.

        Returns:
            states ``[H + 1, N]``: ``start`` then the H imagined states (λ-returns use all H + 1).
        """
        checks.check_imagine(policy, horizon)
        start = checks.check_state(self, "imagine", "start", start, None).flatten()
        N = start.deter.shape[0]
        noise = self._noise(checks.check_noise(self, "imagine", noise, (horizon, N)), (horizon, N))

        def act(state: RSSMState) -> torch.Tensor:
            action = policy(self.get_feat(state).detach())
            checks.check_policy_action(self, action, N)
            return action

        states, actions = self._backend_impl().imagine(act, start, horizon, noise)
        out = RSSMState.stack(states)
        if not return_actions:
            return out
        acts = torch.stack(actions) if actions else start.deter.new_zeros(0, N, self.action_dim)
        return out, acts

    def kl_loss(
        self, post: RSSMState, prior: RSSMState, balance: float = 0.8, free: float = 0.0, free_avg: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """DreamerV2's balanced KL loss between posterior and prior (with this model's ``unimix``).

        ``loss = mix * F(KL(post || sg(prior))) + (1 - mix) * F(KL(sg(post) || prior))``, ``mix = 1 - balance``,
        ``F`` the free-nats clamp (of the mean KL if ``free_avg``, else per position). Returns ``(loss [], kl [...])``
        with ``kl = KL(post || prior)`` summed over the S variables. The logits must be on the parameters' device;
        the numbers are checked as :func:`dreamer_fast.kl_balance` checks them.
        """
        post_logits, prior_logits, balance, free, free_avg = checks.check_kl(self, post, prior, balance, free,
                                                                              free_avg)
        return self._backend_impl().kl(post_logits, prior_logits, balance, free, free_avg)

    _LINEARS = _obs_step_inference.LAYERS

    def _noise(self, noise: torch.Tensor | None, lead: tuple[int, ...]) -> torch.Tensor | None:
        """``noise``, or with none given and a :attr:`stream` set, ``[*lead, S]`` uniforms drawn from the stream."""
        if noise is not None or self.stream is None:
            return noise
        return self.stream.uniform((*lead, self.stoch_size), self._dtype())

    # ---- the backend ---------------------------------------------------------------------------------------------

    def _build(self, backend: str | None) -> Backend:
        """The backend object for ``backend`` (None: $DREAMER_FAST_BACKEND or "auto") on the parameters' device.

        It holds the layer modules (not their tensors, which ``.to()`` or ``load_state_dict(assign=True)`` may
        replace) as a plain attribute: it adds nothing to ``state_dict`` or ``named_modules``."""
        device = self._modules["gru_norm"]._parameters["weight"].device
        layers = Layers(*(self._modules[name] for name in Layers._fields))
        if _backend.use_fused("ln_gru", device, backend):
            return Fused(layers, self._unimix, device, self._inference_dtype)
        return Reference(layers, self._unimix, device)

    def _apply(self, fn, recurse=True):
        """Moves and casts (``.to()``, ``.cuda()``, ``.double()``...), then the backend for the new device."""
        out = super()._apply(fn, recurse)
        self._impl = self._build(self._backend)
        return out

    def _backend_impl(self) -> Backend:
        """The backend, rebuilt if the parameters have changed device without a move (``load_state_dict(assign=True)``
        of tensors on another device)."""
        impl = self._impl
        if impl.device != self._modules["gru_norm"]._parameters["weight"].device:
            impl = self._impl = self._build(self._backend)
        return impl

    def _dtype(self) -> torch.dtype:
        return self._modules["gru_norm"]._parameters["weight"].dtype


__all__ = ["RSSM", "RSSMState"]
