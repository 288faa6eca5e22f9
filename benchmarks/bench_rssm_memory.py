"""RSSM observe memory at DreamerV2's Atari sizes (deter 600, hidden 600, 32x32 latents, 18 actions, 1536 embed),
T=50 B=16, float32, forward + backward of ``kl_loss + get_feat(post).mean() + prior.stoch.mean()`` (heads that
save nothing themselves, so only the RSSM's and the KL's tensors count): fused vs reference.

What is counted (activations: the model's parameters and the inputs embed/action/noise are excluded; distinct
storages, so a tensor saved by two nodes counts once):

- ``saved``: what the autograd graph of the loss holds for backward at the end of the forward, through
  ``save_for_backward`` / the built-in nodes' saved variables -- the "bytes saved for backward";
- ``ctx``: tensors a custom autograd function keeps as attributes of its ctx instead (e.g. SequenceLinear's recorded
  step inputs): the graph holds them all the same, but ``saved_tensors_hooks`` do not see them;
- ``per step``: (saved + ctx) / T, sequence-level tensors (the prior head over all T·B rows, the KL) included;
- ``hooks``: the cross-check through ``torch.autograd.graph.saved_tensors_hooks``: every tensor packed during the
  forward, also those of nodes that die before backward (outputs dropped, e.g. an unused probs);
- ``kept after bwd``: what the graph still holds after ``backward`` (retain_graph=False) while the outputs live;
- ``peak``: the highest heap in use during forward + backward above the level before it (glibc ``mallinfo2``,
  read after every ATen op through a TorchDispatchMode: op granularity; the gradients and outputs included).

Run:  OMP_NUM_THREADS=1 python benchmarks/bench_rssm_memory.py          (the table, and the fused backend's
      saved tensors grouped by shape)
      pytest benchmarks/bench_rssm_memory.py --benchmark-disable -s       (smoke; numbers in extra_info / printed)
"""

from __future__ import annotations

import ctypes
import gc
import sys
from collections import Counter
from collections.abc import Iterable

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from bench_rssm import observe_batch  # the same inputs as the timing benchmark

from dreamer_fast import RSSM

ACTIONS, EMBED, T, B = 18, 1536, 50, 16


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]


try:
    _mallinfo2 = ctypes.CDLL("libc.so.6").mallinfo2
    _mallinfo2.restype = _MallInfo2
except (OSError, AttributeError):  # not glibc >= 2.33: no peak column
    _mallinfo2 = None


def heap_in_use() -> int:
    """Bytes malloc has handed out and not taken back (small blocks + mmapped large blocks), all arenas."""
    info = _mallinfo2()
    return info.uordblks + info.hblkhd


class PeakHeap(TorchDispatchMode):
    """The highest ``heap_in_use`` seen after any ATen op inside the ``with`` block."""

    def __init__(self) -> None:
        super().__init__()
        self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.peak = max(self.peak, heap_in_use())
        return out


def _storage(t: torch.Tensor) -> tuple[int, int]:
    s = t.untyped_storage()
    return s.data_ptr(), s.nbytes()


def _tensors(x: object, depth: int = 0) -> Iterable[torch.Tensor]:
    """Tensors in x: a tensor, a list/tuple/dict of them, or (one level down) an object's attributes."""
    if isinstance(x, torch.Tensor):
        yield x
    elif isinstance(x, (list, tuple)):
        for y in x:
            yield from _tensors(y, depth)
    elif isinstance(x, dict):
        for y in x.values():
            yield from _tensors(y, depth)
    elif depth == 0 and hasattr(x, "__dict__") and not isinstance(x, (type, torch.nn.Module)):
        for y in vars(x).values():
            yield from _tensors(y, depth + 1)


def graph_tensors(root) -> dict[tuple[int, int], tuple[str, tuple[int, ...]]]:
    """Storages the autograd graph under ``root`` holds, -> (what holds it, shape): saved variables of built-in
    nodes (``_saved_*``), of custom functions (``saved_tensors``) and tensors kept as ctx attributes (``ctx:``)."""
    found, seen, stack = {}, set(), [root]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        stack.extend(fn for fn, _ in node.next_functions)
        kind = type(node).__name__
        held: list[tuple[str, torch.Tensor]] = []
        for name in dir(node):
            if name.startswith("_saved_") or name == "saved_tensors":
                try:
                    held += [(kind, t) for t in _tensors(getattr(node, name), 1)]
                except RuntimeError:  # freed by an earlier backward
                    pass
        if hasattr(node, "__dict__"):  # a custom autograd.Function's ctx
            held += [("ctx:" + kind, t) for t in _tensors(vars(node))]
        for what, t in held:
            found.setdefault(_storage(t), (what, tuple(t.shape)))
    return found


def measure(backend: str, T: int = T, B: int = B) -> dict:
    """The numbers of the module docstring (bytes), for one forward + backward."""
    torch.manual_seed(0)
    m = RSSM(ACTIONS, EMBED, backend=backend)
    embed, action, is_first, noise = observe_batch(T, B)
    leaves = {_storage(t) for t in (embed, action, noise, *m.parameters())}
    hooked: dict[tuple[int, int], tuple[int, ...]] = {}

    def pack(t):
        if _storage(t) not in leaves:
            hooked.setdefault(_storage(t), tuple(t.shape))
        return t

    # A short warm-up first, so that one-time allocations (kernel set-up, caches, thread pools) miss the peak.
    post, prior = m.observe(embed[:2], action[:2], is_first[:2], noise=noise[:2])
    torch.autograd.grad(m.kl_loss(post, prior)[0] + m.get_feat(post).mean(), [embed, *m.parameters()])
    del post, prior
    gc.collect()
    base = heap_in_use() if _mallinfo2 else 0
    with PeakHeap() as peak:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            post, prior = m.observe(embed, action, is_first, noise=noise)
            loss, _ = m.kl_loss(post, prior)
            # a head on the features that saves nothing itself (mean), so that only the RSSM's tensors count
            loss = loss + m.get_feat(post).mean() + prior.stoch.mean()
        held = {k: v for k, v in graph_tensors(loss.grad_fn).items() if k not in leaves}
        grads = torch.autograd.grad(loss, [embed, *m.parameters()])
    kept = {k for k in graph_tensors(loss.grad_fn) if k not in leaves}
    outputs = {_storage(t) for t in (*post, *prior, loss)}
    saved = {k: v for k, v in held.items() if not v[0].startswith("ctx:")}
    ctx = {k: v for k, v in held.items() if v[0].startswith("ctx:")}
    assert len(grads) == 1 + len(list(m.parameters()))
    size = lambda keys: sum(n for _, n in keys)  # noqa: E731
    by_holder: Counter = Counter()
    for (_, n), (what, shape) in held.items():
        by_holder[(what.removeprefix("GeneratedBackwardFor_dreamer_fast_"), shape)] += n
    return dict(
        backend=backend, T=T, B=B,
        saved_bytes=size(saved), ctx_bytes=size(ctx), per_step_bytes=size(held) / T, hooks_bytes=size(hooked),
        kept_after_backward_bytes=size(kept - outputs),
        peak_bytes=(peak.peak - base) if _mallinfo2 else None,
        by_holder=by_holder,
    )


def _mb(n: float | None) -> str:
    return "—" if n is None else f"{n / 2**20:.1f} MiB"


def table(rows: list[dict]) -> str:
    lines = ["| backend | saved | ctx attributes | per step | hooks | kept after bwd | peak fwd+bwd |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['backend']} | {_mb(r['saved_bytes'])} | {_mb(r['ctx_bytes'])} | "
                     f"{r['per_step_bytes'] / 2**10:.0f} KiB | {_mb(r['hooks_bytes'])} | "
                     f"{_mb(r['kept_after_backward_bytes'])} | {_mb(r['peak_bytes'])} |")
    return "\n".join(lines)


@pytest.mark.parametrize("backend", ["fused", "reference"])
def test_observe_memory(benchmark, backend):
    benchmark.group = f"rssm observe memory T={T} B={B} (f32)"
    result = benchmark.pedantic(measure, args=(backend,), rounds=1, iterations=1)
    benchmark.extra_info.update({k: v for k, v in result.items() if k != "by_holder"})
    print("\n" + table([result]))
    assert result["saved_bytes"] > 0 and result["per_step_bytes"] > 0
    if result["peak_bytes"] is not None:
        assert result["peak_bytes"] >= result["saved_bytes"], "the peak cannot be below what the graph holds"


def main() -> None:
    rows = [measure(backend) for backend in ("fused", "reference")]
    print(f"RSSM observe fwd+bwd, Atari sizes, T={T} B={B}, float32 (torch {torch.__version__})\n")
    print(table(rows))
    for r in rows:
        print(f"\n{r['backend']}: what holds what (node, shape, count of distinct storages, MiB), largest first")
        for (what, shape), n in r["by_holder"].most_common(14):
            print(f"  {what:44s} {str(list(shape)):18s} {n / 2**20:6.2f}")


if __name__ == "__main__":
    sys.exit(main())
