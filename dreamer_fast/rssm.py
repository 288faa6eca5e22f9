"""DreamerV2's recurrent state-space model (RSSM) as a drop-in module, with a fused and a reference backend.

Sequences are time-major ``[T, B, ...]``. The state is an :class:`RSSMState`: ``deter [..., D]``, and the categorical
``stoch [..., S, K]`` (a straight-through one-hot sample) with its ``logits [..., S, K]``.

Both backends compute the same function with the same parameters (``state_dict`` keys are shared):

- ``reference``: every step written out in plain PyTorch, one module call per layer (the executable specification);
- ``fused``: the time-independent GEMMs of a sequence batched over all ``T·B`` rows (the action part of ``img_in``,
  the embed part of ``obs_out``, the whole prior head after the loop); ``observe``'s recurrence, forward and backward,
  in one C++ op (``dreamer_fast.ops.observe_sequence``); imagination loops in Python over the fused
  :func:`dreamer_fast.ln_gru` op with GEMMs through ATen, each weight's gradient computed once for the whole
  sequence (``_sequence_linear.SequenceLinear``) instead of once per step; ``obs_step`` without gradients (acting,
  B = 1 under ``torch.no_grad``) as one C++ op (``dreamer_fast.ops.obs_step_inference``), and with gradients or
  under autocast as a few plain GEMMs around the fused ``ln_gru`` op.

Differences in floating-point summation order aside (GEMMs split by columns, weight gradients summed in one GEMM),
the two backends give the same states, samples and gradients for the same parameters and noise.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from dreamer_fast import _backend
from dreamer_fast._sequence_linear import SequenceLinear
from dreamer_fast.ops import obs_step_inference as _obs_step_inference
from dreamer_fast.ops.elu import elu
from dreamer_fast.ops.kl_balance import kl_balance
from dreamer_fast.ops.linear import linear
from dreamer_fast.ops.ln_gru import is_mixed as _ln_gru_is_mixed
from dreamer_fast.ops.observe_sequence import observe_sequence
from dreamer_fast.ops.straight_through_categorical import straight_through_categorical
from dreamer_fast.reference.kl_balance import kl_balance_ref
from dreamer_fast.reference.straight_through_categorical import straight_through_categorical_ref
from dreamer_fast.reference.ln_gru import ln_gru_ref

_GRU_EPS = 1e-3  # Keras' LayerNorm default, DreamerV2's


class RSSMState(NamedTuple):
    """The RSSM state; every field has the same leading (batch or time-and-batch) dims ``...``.

    Fields:
        deter: ``[..., D]`` deterministic (GRU) state.
        stoch: ``[..., S, K]`` stochastic state: a one-hot sample with the straight-through gradient of its
            probabilities (for the prior that :meth:`RSSM.observe` returns: the probabilities themselves).
        logits: ``[..., S, K]`` logits of the categorical distribution of ``stoch``.
    """

    deter: torch.Tensor
    stoch: torch.Tensor
    logits: torch.Tensor

    @property
    def batch_shape(self) -> torch.Size:
        """The leading dims ``...`` (e.g. ``[T, B]`` or ``[B]``)."""
        return self.deter.shape[:-1]

    def map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> RSSMState:
        """``RSSMState(fn(deter), fn(stoch), fn(logits))``."""
        return RSSMState(fn(self.deter), fn(self.stoch), fn(self.logits))

    def detach(self) -> RSSMState:
        return self.map(torch.Tensor.detach)

    def to(self, *args, **kwargs) -> RSSMState:
        return self.map(lambda x: x.to(*args, **kwargs))

    def at(self, index) -> RSSMState:
        """Index the leading dims, e.g. ``post.at(t)`` (time step t, ``[B]``), ``post.at((slice(None), b))``."""
        return self.map(lambda x: x[index])

    def flatten(self) -> RSSMState:
        """Merge all leading dims into one: ``[T, B, ...] -> [T*B, ...]``."""
        n = self.deter.shape[:-1].numel()
        return RSSMState(
            self.deter.reshape(n, self.deter.shape[-1]),
            self.stoch.reshape(n, *self.stoch.shape[-2:]),
            self.logits.reshape(n, *self.logits.shape[-2:]),
        )

    @staticmethod
    def stack(states: Sequence[RSSMState], dim: int = 0) -> RSSMState:
        """Stack states along a new leading dim ``dim`` (0 <= dim <= len(batch_shape))."""
        return RSSMState(*(torch.stack(fields, dim) for fields in zip(*states)))

    @staticmethod
    def cat(states: Sequence[RSSMState], dim: int = 0) -> RSSMState:
        """Concatenate states along the existing leading dim ``dim`` (0 <= dim < len(batch_shape))."""
        return RSSMState(*(torch.cat(fields, dim) for fields in zip(*states)))


def _probs(logits: torch.Tensor, unimix: float) -> torch.Tensor:
    """The categorical's probabilities (the prior's mean in observe): ``(1 - unimix) softmax(logits) + unimix / K``."""
    probs = logits.softmax(-1)
    if unimix > 0:
        probs = (1 - unimix) * probs + unimix / logits.shape[-1]
    return probs


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

    Randomness: every sample is ``smallest k with noise < cumsum(probs)[k]`` for a uniform ``noise``
    (:func:`dreamer_fast.straight_through_categorical`); pass it to compare backends sample for sample, or leave it
    ``None``: each step's sample then comes from the op's Philox stream under a seed drawn from torch's default CPU
    generator, the same on CPU and CUDA and in both backends, so ``torch.manual_seed`` reproduces a run.

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
        sizes = dict(action_dim=action_dim, embed_dim=embed_dim, deter=deter, hidden=hidden, stoch=stoch,
                     classes=classes)
        for name, value in sizes.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"RSSM: `{name}` must be a positive int, got {value!r}")
        if isinstance(unimix, bool) or not isinstance(unimix, (int, float)) or not 0 <= unimix < 1:
            raise ValueError(f"RSSM: `unimix` must be a number in [0, 1), got {unimix!r}")
        self.action_dim, self.embed_dim = action_dim, embed_dim
        self.deter_size, self.hidden_size, self.stoch_size, self.classes = deter, hidden, stoch, classes
        self.unimix = float(unimix)
        self.backend = backend
        flat = stoch * classes
        self.img_in = nn.Linear(flat + action_dim, hidden)
        self.gru = nn.Linear(hidden + deter, 3 * deter)
        self.gru_norm = nn.LayerNorm(3 * deter, eps=_GRU_EPS)
        self.img_out = nn.Linear(deter, hidden)
        self.prior_logits = nn.Linear(hidden, flat)
        self.obs_out = nn.Linear(deter + embed_dim, hidden)
        self.post_logits = nn.Linear(hidden, flat)
        self.reset_parameters()
        self._inference_dtype: torch.dtype | None = None
        self._inference_cache: tuple[tuple, dict[str, torch.Tensor]] | None = None

    @property
    def backend(self) -> str | None:
        return self._backend

    @backend.setter
    def backend(self, value: str | None) -> None:
        if value is not None:
            _backend.resolve(value)  # validates
        self._backend = value

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
        self._inference_cache = None

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
        dtype = self._dtype()
        T, B = self._check_sequence("observe", embed, action, is_first)
        state = self._check_state("observe", "state", state, B)
        noise = self._noise("observe", noise, (T, B), dtype)
        keep = (is_first == 0).to(dtype)
        if self._fused(embed.device):
            return self._observe_fused(embed, action, keep, state, noise)
        return self._observe_reference(embed, action, keep, state, noise)

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
        dtype = self._dtype()
        B = self._check_step("obs_step", prev_action, embed, is_first)
        prev_state = self._check_state("obs_step", "prev_state", prev_state, B)
        noise = self._noise("obs_step", noise, (B,), dtype)
        keep = (is_first == 0).to(dtype)
        if self._fused(embed.device):
            return self._obs_step_fused(prev_state, prev_action, embed, keep, noise, bool(prior))
        post, prior_state = self._obs_step_reference(prev_state, prev_action, embed, keep, noise)
        return post, (prior_state if prior else None)

    def img_step(
        self, prev_state: RSSMState, prev_action: torch.Tensor, noise: torch.Tensor | None = None
    ) -> RSSMState:
        """One step of the prior (no observation): ``[B]`` state and ``[B, action_dim]`` action -> ``[B]`` state.

        ``noise``: ``[B, S]``, the prior sample's noise.
        """
        dtype = self._dtype()
        B = self._check_action("img_step", "prev_action", prev_action)
        prev_state = self._check_state("img_step", "prev_state", prev_state, B)
        noise = self._noise("img_step", noise, (B,), dtype)
        if self._fused(prev_action.device):
            return _FusedImagination(self).step(prev_state, noise, action=prev_action)
        return self._img_step_reference(prev_state, prev_action, noise)

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
        dtype = self._dtype()
        if not isinstance(action, torch.Tensor) or action.dim() != 3:
            raise ValueError(f"RSSM.imagine_with_action: `action` must be a [H, B, action_dim] tensor, got "
                             f"{_describe(action)}")
        H, B = action.shape[:2]
        self._check_action("imagine_with_action", "action", action[0] if H else action.new_empty(B, action.shape[2]))
        start = self._check_state("imagine_with_action", "start", start, B)
        noise = self._noise("imagine_with_action", noise, (H, B), dtype)
        if not H:
            return self._empty_sequence(B, action)
        states, state = [], start
        if self._fused(action.device):
            # The action part of img_in does not depend on the state: one GEMM for all steps.
            flat = self.stoch_size * self.classes
            act_proj = F.linear(action, self.img_in.weight[:, flat:], self.img_in.bias)
            loop = _FusedImagination(self)
            for t in range(H):
                state = loop.step(state, _at(noise, t), act_proj=act_proj[t])
                states.append(state)
        else:
            for t in range(H):
                state = self._img_step_reference(state, action[t], _at(noise, t))
                states.append(state)
        return RSSMState.stack(states)

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
        if isinstance(horizon, bool) or not isinstance(horizon, int) or horizon < 0:
            raise ValueError(f"RSSM.imagine: `horizon` must be an int >= 0, got {horizon!r}")
        if not callable(policy):
            raise TypeError(f"RSSM.imagine: `policy` must be callable (feat -> action), got {type(policy).__name__}")
        dtype = self._dtype()
        start = self._check_state("imagine", "start", start, None).flatten()
        N = start.deter.shape[0]
        noise = self._noise("imagine", noise, (horizon, N), dtype)
        loop = _FusedImagination(self) if self._fused(start.deter.device) else None
        states, actions, state = [start], [], start
        for t in range(horizon):
            action = policy(self.get_feat(state).detach())
            if not isinstance(action, torch.Tensor) or tuple(action.shape) != (N, self.action_dim):
                raise ValueError(f"RSSM.imagine: `policy` must return a [N, action_dim] = {[N, self.action_dim]} "
                                 f"tensor, got {_describe(action)}")
            self._check_input("imagine", "policy(feat)", action, (N, self.action_dim), "[N, action_dim]")
            self._check_float("imagine", "policy(feat)", action)
            if loop is not None:
                state = loop.step(state, _at(noise, t), action=action)
            else:
                state = self._img_step_reference(state, action, _at(noise, t))
            states.append(state)
            actions.append(action)
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
        with ``kl = KL(post || prior)`` summed over the S variables.
        """
        if self._fused(post.logits.device):
            return kl_balance(post.logits, prior.logits, balance, free, free_avg, self.unimix, backend="fused")
        return kl_balance_ref(post.logits, prior.logits, balance, free, free_avg, self.unimix)

    # ---- reference backend: the specification, one step at a time -------------------------------------------------

    def _observe_reference(self, embed, action, keep, state, noise):
        posts, priors = [], []
        for t in range(embed.shape[0]):
            post, prior = self._obs_step_reference(state, action[t], embed[t], keep[t], _at(noise, t))
            posts.append(post)
            priors.append(prior)
            state = post
        if not posts:
            empty = self._empty_sequence(embed.shape[1], embed)
            return empty, empty
        return RSSMState.stack(posts), RSSMState.stack(priors)

    def _obs_step_reference(self, prev_state, prev_action, embed, keep, noise):
        # is_first: the previous state and action become the initial state (zeros) and a zero action.
        prev_state = RSSMState(
            prev_state.deter * keep[:, None], prev_state.stoch * keep[:, None, None],
            prev_state.logits * keep[:, None, None],
        )
        prev_action = prev_action * keep[:, None]
        deter, prior_logits = self._img_core_reference(prev_state, prev_action)
        x = F.elu(self.obs_out(torch.cat([deter, embed], -1)))
        logits = self._logits(self.post_logits(x))
        stoch, _ = self._sample(logits, noise, fused=False)
        return RSSMState(deter, stoch, logits), RSSMState(deter, _probs(prior_logits, self.unimix), prior_logits)

    def _img_core_reference(self, prev_state, prev_action):
        """deter' and the prior logits of one img_step."""
        x = F.elu(self.img_in(torch.cat([prev_state.stoch.flatten(-2), prev_action], -1)))
        gates = self.gru(torch.cat([x, prev_state.deter], -1))
        deter = ln_gru_ref(gates.to(prev_state.deter.dtype), prev_state.deter, self.gru_norm.weight,
                           self.gru_norm.bias, _GRU_EPS)
        return deter, self._logits(self.prior_logits(F.elu(self.img_out(deter))))

    def _img_step_reference(self, prev_state, prev_action, noise):
        deter, logits = self._img_core_reference(prev_state, prev_action)
        stoch, _ = self._sample(logits, noise, fused=False)
        return RSSMState(deter, stoch, logits)

    # ---- fused backend -----------------------------------------------------------------------------------------------

    def _observe_fused(self, embed, action, keep, state, noise):
        D, S, K = self.deter_size, self.stoch_size, self.classes
        flat = S * K
        dtype = self._dtype()
        # Time-independent GEMMs over all T·B rows at once: the action part of img_in (with the reset applied to
        # the action) and the embed part of obs_out.
        w_stoch_in, w_act_in = _split_columns(self.img_in.weight, flat)
        w_deter_out, w_emb_out = _split_columns(self.obs_out.weight, D)
        act_proj = F.linear(action * keep[..., None], w_act_in, self.img_in.bias)
        emb_proj = linear(embed, w_emb_out, self.obs_out.bias)  # [T·B, E] -> H: the fused linear op's GEMM library
        # The recurrence, forward and backward, is one C++ op; under autocast its GEMMs run in autocast's dtype.
        device_type = embed.device.type
        gemm_dtype = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else None
        deters, samples, logits = observe_sequence(
            act_proj.to(dtype), emb_proj.to(dtype), keep, state.deter, state.stoch, w_stoch_in,
            self.gru.weight, self.gru.bias, self.gru_norm.weight, self.gru_norm.bias, w_deter_out,
            self.post_logits.weight, self.post_logits.bias, noise=noise, unimix=self.unimix, eps=_GRU_EPS,
            gemm_dtype=gemm_dtype, backend="fused",
        )
        post = RSSMState(deters, samples, logits)
        # The prior head feeds nothing back into the recurrence: one pass over all T·B rows after the loop. The fused
        # ELU (here and in _FusedImagination) saves its output, as F.elu(inplace=True) does, and in bfloat16 it is
        # ~11x faster than ATen's on an AMD EPYC Zen 4 (docs/PERFORMANCE.md, "CPU paths").
        prior_logits = self._logits(self.prior_logits(elu(self.img_out(deters), backend="fused")))
        return post, RSSMState(deters, _probs(prior_logits, self.unimix), prior_logits)

    def _obs_step_fused(self, prev_state, prev_action, embed, keep, noise, prior=True):
        p = self._params()
        device_type = embed.device.type
        if (not torch.is_grad_enabled() and not torch.is_autocast_enabled(device_type)
                and _backend.has_kernel("obs_step_inference", device_type)):
            # The acting path (B = 1 under torch.no_grad, every environment step): the whole step is one C++ op, as
            # ~20 ATen calls from Python cost about as much as its GEMVs (docs/PERFORMANCE.md). The op has no
            # autograd, and under autocast the step below casts the GEMMs as autocast does.
            if self._inference_dtype is not None and self._dtype() == torch.float32:
                p = self._inference_layers(p)
            deter, stoch, logits, prior_probs, prior_logits = _obs_step_inference.call(
                prev_state.deter, prev_state.stoch, prev_action, embed, keep, p, p["gru_norm"][0], p["gru_norm"][1],
                noise, self.unimix, _GRU_EPS, None, prior,
            )
            post = RSSMState(deter, stoch, logits)
            return post, (RSSMState(deter, prior_probs, prior_logits) if prior else None)
        # Training through a single step (or autocast): functional calls on the parameters, no module calls, the
        # fused ops without their wrappers' checks.
        k = keep[:, None]
        x = F.elu(F.linear(torch.cat([prev_state.stoch.flatten(-2), prev_action], -1) * k, *p["img_in"]))
        deter = prev_state.deter * k
        deter = self._ln_gru(F.linear(torch.cat([x, deter], -1), *p["gru"]), deter)
        x = F.elu(F.linear(torch.cat([deter, embed], -1), *p["obs_out"]))
        logits = self._logits(F.linear(x, *p["post_logits"]))
        stoch, _ = self._sample(logits, noise, fused=True)
        if not prior:
            return RSSMState(deter, stoch, logits), None
        prior_logits = self._logits(F.linear(F.elu(F.linear(deter, *p["img_out"])), *p["prior_logits"]))
        return RSSMState(deter, stoch, logits), RSSMState(deter, _probs(prior_logits, self.unimix), prior_logits)

    def _params(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """(weight, bias) of every layer, read without nn.Module's attribute lookup."""
        return {name: (m._parameters["weight"], m._parameters["bias"]) for name, m in self._modules.items()}

    _LINEARS = _obs_step_inference.LAYERS

    def _inference_layers(self, p: dict[str, tuple[torch.Tensor, torch.Tensor]]):
        """``p`` with the weights replaced by their :attr:`inference_dtype` copies (remade when a weight changed)."""
        key = tuple((id(p[n][0]), p[n][0].data_ptr(), p[n][0]._version) for n in self._LINEARS)
        if self._inference_cache is None or self._inference_cache[0] != key:
            with torch.no_grad():
                copies = {n: p[n][0].to(self._inference_dtype).contiguous() for n in self._LINEARS}
            self._inference_cache = (key, copies)
        copies = self._inference_cache[1]
        return {**p, **{n: (copies[n], p[n][1]) for n in self._LINEARS}}

    def _ln_gru(self, gates, deter):
        """The fused op, without the public wrapper's checks (the shapes are ours). Low-precision gates under autocast
        go in as they are (the op's mixed-precision form widens them as it reads them: no cast pass)."""
        if not _ln_gru_is_mixed(gates, deter):
            gates = gates.to(deter.dtype)
        return torch.ops.dreamer_fast.ln_gru.default(
            gates, deter.contiguous(), self.gru_norm.weight, self.gru_norm.bias, _GRU_EPS
        )[0]

    # ---- helpers ---------------------------------------------------------------------------------------------------

    def _sample(self, logits: torch.Tensor, noise: torch.Tensor, fused: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """The straight-through sample and probabilities of ``[..., S, K]`` logits with ``noise [..., S]`` (None: the
        op's Philox stream, seeded from torch's default generator)."""
        if fused:
            return straight_through_categorical(logits, self.unimix, noise=noise, backend="fused")
        return straight_through_categorical_ref(logits, self.unimix, noise=noise)

    def _dtype(self) -> torch.dtype:
        return self._modules["gru_norm"]._parameters["weight"].dtype

    def _fused(self, device: torch.device) -> bool:
        return _backend.use_fused("ln_gru", device, self._backend)

    def _logits(self, flat_logits: torch.Tensor) -> torch.Tensor:
        """[..., S·K] -> [..., S, K] in the parameters' dtype (distributions stay in float32 under autocast)."""
        return flat_logits.to(self._dtype()).unflatten(-1, (self.stoch_size, self.classes))

    def _empty_sequence(self, B: int, like: torch.Tensor) -> RSSMState:
        S, K, dtype = self.stoch_size, self.classes, self._dtype()
        return RSSMState(
            like.new_zeros(0, B, self.deter_size, dtype=dtype), like.new_zeros(0, B, S, K, dtype=dtype),
            like.new_zeros(0, B, S, K, dtype=dtype),
        )

    def _check_input(self, op: str, name: str, t: object, expected: Sequence[int], what: str) -> torch.Tensor:
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"RSSM.{op}: `{name}` must be a torch.Tensor, got {type(t).__name__}")
        w = self.gru_norm.weight
        if t.device != w.device:
            raise ValueError(f"RSSM.{op}: `{name}` is on {t.device} but the RSSM's parameters are on {w.device}")
        if tuple(t.shape) != tuple(expected):
            raise ValueError(f"RSSM.{op}: `{name}` must have shape {what} = {list(expected)}, got {list(t.shape)}")
        return t

    def _check_float(self, op: str, name: str, t: torch.Tensor) -> None:
        dtype = self._dtype()
        if t.dtype == dtype or (t.is_floating_point() and torch.is_autocast_enabled(t.device.type)):
            return
        raise TypeError(f"RSSM.{op}: `{name}` has dtype {t.dtype} but the RSSM's parameters are {dtype}; they must "
                        f"match (or run under torch.autocast)")

    def _check_flags(self, op: str, t: torch.Tensor) -> None:
        if t.is_complex():
            raise TypeError(f"RSSM.{op}: `is_first` must be bool or 0/1 numbers, got {t.dtype}")

    def _check_sequence(self, op, embed, action, is_first) -> tuple[int, int]:
        if not isinstance(embed, torch.Tensor):
            raise TypeError(f"RSSM.{op}: `embed` must be a torch.Tensor, got {type(embed).__name__}")
        if embed.dim() != 3 or embed.shape[-1] != self.embed_dim:
            raise ValueError(f"RSSM.{op}: `embed` must be [T, B, embed_dim] with embed_dim = {self.embed_dim}, "
                             f"got {_describe(embed)}")
        T, B = embed.shape[:2]
        self._check_input(op, "embed", embed, (T, B, self.embed_dim), "[T, B, embed_dim]")
        self._check_float(op, "embed", embed)
        self._check_input(op, "action", action, (T, B, self.action_dim), "[T, B, action_dim]")
        self._check_float(op, "action", action)
        self._check_input(op, "is_first", is_first, (T, B), "[T, B]")
        self._check_flags(op, is_first)
        return T, B

    def _check_action(self, op: str, name: str, action: object) -> int:
        if not isinstance(action, torch.Tensor) or action.dim() != 2:
            raise ValueError(f"RSSM.{op}: `{name}` must be [B, action_dim], got {_describe(action)}")
        self._check_input(op, name, action, (action.shape[0], self.action_dim), "[B, action_dim]")
        self._check_float(op, name, action)
        return action.shape[0]

    def _check_step(self, op, prev_action, embed, is_first) -> int:
        B = self._check_action(op, "prev_action", prev_action)
        self._check_input(op, "embed", embed, (B, self.embed_dim), "[B, embed_dim]")
        self._check_float(op, "embed", embed)
        self._check_input(op, "is_first", is_first, (B,), "[B]")
        self._check_flags(op, is_first)
        return B

    def _check_state(self, op: str, name: str, state: RSSMState | None, B: int | None) -> RSSMState:
        """A state with ``[B]`` fields (any leading dims when B is None); None -> the initial state."""
        if state is None:
            if B is None:
                raise ValueError(f"RSSM.{op}: `{name}` is required")
            return self.initial(B)
        if not isinstance(state, tuple) or len(state) != 3:
            raise TypeError(f"RSSM.{op}: `{name}` must be an RSSMState(deter, stoch, logits), got "
                            f"{type(state).__name__}")
        state = RSSMState(*state)
        lead = tuple(state.deter.shape[:-1]) if B is None else (B,)
        D, S, K = self.deter_size, self.stoch_size, self.classes
        for field, t, tail, what in (("deter", state.deter, (D,), "D"), ("stoch", state.stoch, (S, K), "S, K"),
                                     ("logits", state.logits, (S, K), "S, K")):
            self._check_input(op, f"{name}.{field}", t, lead + tail, f"[{'B' if B is not None else '...'}, {what}]")
            if t.dtype != self._dtype():
                raise TypeError(f"RSSM.{op}: `{name}.{field}` has dtype {t.dtype} but the RSSM's parameters are "
                                f"{self._dtype()}")
        return state

    def _noise(
        self, op: str, noise: torch.Tensor | None, lead: tuple[int, ...], dtype: torch.dtype
    ) -> torch.Tensor | None:
        shape = (*lead, self.stoch_size)
        if noise is None:
            return None
        what = "[" + ", ".join(("T", "B") if len(lead) == 2 else ("B",)) + ", S]"
        if op in ("imagine", "imagine_with_action"):
            what = "[H, B, S]"
        self._check_input(op, "noise", noise, shape, what)
        if not noise.is_floating_point():
            raise TypeError(f"RSSM.{op}: `noise` must be floating point (uniform in [0, 1)), got {noise.dtype}")
        return noise.to(dtype)


class _SplitColumns(torch.autograd.Function):
    """``(w[:, :at], w[:, at:])`` whose backward writes the weight's gradient once (``cat`` of the two parts).

    Autograd's own slicing would give each part's gradient a zero-filled full-size tensor and add the two: five
    full passes over the weight instead of one (measurable at the RSSM's 600 x 2136 ``obs_out`` in observe).
    """

    @staticmethod
    def forward(ctx, weight, at):
        ctx.at, ctx.width = at, weight.shape[1]
        return weight[:, :at], weight[:, at:]

    @staticmethod
    def backward(ctx, d_left, d_right):
        if d_left is None and d_right is None:
            return None, None
        if d_left is None or d_right is None:
            like = d_right if d_left is None else d_left
            shape = (like.shape[0], ctx.at) if d_left is None else (like.shape[0], ctx.width - ctx.at)
            zeros = like.new_zeros(shape)
            d_left, d_right = (zeros, d_right) if d_left is None else (d_left, zeros)
        return torch.cat([d_left, d_right], 1), None


def _split_columns(weight: torch.Tensor, at: int) -> tuple[torch.Tensor, torch.Tensor]:
    if not (weight.requires_grad and torch.is_grad_enabled()) or torch.compiler.is_compiling():
        return weight[:, :at], weight[:, at:]
    return _SplitColumns.apply(weight, at)


class _FusedImagination:
    """img_step of the fused backend for a whole rollout: its GEMMs are SequenceLinears, so each weight's gradient
    is one GEMM over all the steps taken with this object."""

    def __init__(self, rssm: RSSM) -> None:
        flat = rssm.stoch_size * rssm.classes
        self.rssm = rssm
        self.stoch_in = SequenceLinear(rssm.img_in.weight[:, :flat])
        self.action_in = SequenceLinear(rssm.img_in.weight[:, flat:])
        self.gru = SequenceLinear(rssm.gru.weight)
        self.out = SequenceLinear(rssm.img_out.weight)
        self.logits = SequenceLinear(rssm.prior_logits.weight)

    def step(self, state: RSSMState, noise: torch.Tensor, action: torch.Tensor | None = None,
             act_proj: torch.Tensor | None = None) -> RSSMState:
        """One prior step from ``action`` or from its img_in projection ``act_proj`` (bias included)."""
        m = self.rssm
        if act_proj is None:
            act_proj = self.action_in(m.img_in.bias, action)
        x = elu(self.stoch_in(act_proj, state.stoch.flatten(-2)), backend="fused")
        # Under autocast x is in the GEMMs' dtype: concatenate there (autocast's cat would widen x to float32 and the
        # GRU layer narrow the result again).
        deter = m._ln_gru(self.gru(m.gru.bias, torch.cat([x, state.deter.to(x.dtype)], -1)), state.deter)
        logits = m._logits(self.logits(m.prior_logits.bias, elu(self.out(m.img_out.bias, deter), backend="fused")))
        stoch, _ = m._sample(logits, noise, fused=True)
        return RSSMState(deter, stoch, logits)


def _at(noise: torch.Tensor | None, t: int) -> torch.Tensor | None:
    return None if noise is None else noise[t]


def _describe(x: object) -> str:
    if isinstance(x, torch.Tensor):
        return f"shape {list(x.shape)}"
    return type(x).__name__


__all__ = ["RSSM", "RSSMState"]
