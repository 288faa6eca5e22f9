"""The RSSM's backend objects: built once per resolution (construction, moves, ``backend``/``unimix`` assignment),
never stale after the parameters are replaced, invisible to ``state_dict``; the fused one calls the kernels without
a second validation; the package's modules import one another without a cycle."""

from __future__ import annotations

import ast
import copy
import pathlib
import subprocess
import sys

import pytest
import torch
from test_rssm import A, KEYS, model, sequence

import dreamer_fast
from dreamer_fast import _backend, _checks
from dreamer_fast.rssm.fused import Fused
from dreamer_fast.rssm.reference import Reference

RSSM_DIR = pathlib.Path(dreamer_fast.__file__).parent / "rssm"


def every_method(m):
    """Every public method's outputs (and observe's gradients), on fixed inputs and noise."""
    embed, action, is_first, noise = sequence(4, 2)
    post, prior = m.observe(embed, action, is_first, noise=noise)
    loss, kl = m.kl_loss(post, prior)
    grads = torch.autograd.grad(loss + post.deter.square().sum(), [embed, *m.parameters()])
    state = post.at(-1)
    with torch.no_grad():
        acting = m.obs_step(state, action[0], embed[0].detach(), is_first[1], noise=noise[0])
    step = m.img_step(state, action[0], noise=noise[0])
    rolled = m.imagine_with_action(action, state, noise=noise)
    policy_w = torch.ones(m.feat_size, A, dtype=post.deter.dtype)
    imagined = m.imagine(lambda feat: torch.tanh(feat @ policy_w), post, 2, noise=noise[:2].repeat(1, 4, 1))
    return [*post, *prior, loss, kl, *grads, *acting[0], *acting[1], *step, *rolled, *imagined]


def assert_equal(got, want):
    assert len(got) == len(want)
    for i, (a, b) in enumerate(zip(got, want)):
        assert torch.equal(a, b), f"output {i} differs"


@pytest.mark.parametrize("backend", ["fused", "reference"])
def test_replaced_parameters_are_read_not_stale(backend):
    """load_state_dict(assign=True) swaps the Parameter objects: the backend reads the new ones."""
    m, other = model(backend=backend, seed=0), model(backend=backend, seed=5)
    impl = m._impl
    every_method(m)  # the backend has run on the old parameters
    m.load_state_dict({k: v.clone() for k, v in other.state_dict().items()}, assign=True)
    assert m._impl is impl  # same device: nothing to rebuild
    assert_equal(every_method(m), every_method(other))


def test_backend_is_rebuilt_when_the_module_moves(monkeypatch):
    monkeypatch.setattr(_backend, "_warned", set())  # "auto"'s fallback warns once per op and device
    m = model(backend="auto")
    assert isinstance(m._impl, Fused) and m._impl.device.type == "cpu"
    with pytest.warns(RuntimeWarning, match="reference implementation on meta"):
        m.to("meta")  # no kernels on meta: "auto" resolves to the reference
    assert isinstance(m._impl, Reference) and m._impl.device.type == "meta"
    m.to_empty(device="cpu")
    assert isinstance(m._impl, Fused) and m._impl.device.type == "cpu"
    impl = m._impl
    m.float()
    assert m._impl is not impl and m._impl.layers.img_in is m.img_in
    # Parameters moved without _apply (assigned from another device) are caught at the next call.
    m.load_state_dict({k: torch.empty_like(v, device="meta") for k, v in m.state_dict().items()}, assign=True)
    assert m._backend_impl().device.type == "meta"
    assert isinstance(m._impl, Reference)


def test_moved_module_equals_one_built_there():
    m, want = model(dtype=torch.float32, backend="fused"), model(dtype=torch.float64, backend="fused")
    m.double()
    m.load_state_dict(want.state_dict())  # in place
    assert m._impl.layers.gru_norm.weight.dtype == torch.float64
    assert_equal(every_method(m), every_method(want))


def test_backend_unimix_and_inference_dtype_assignment_rebuild():
    m = model(backend="fused")
    impl = m._impl
    m.backend = "reference"
    assert isinstance(m._impl, Reference) and m._impl is not impl
    m.backend = "fused"
    assert isinstance(m._impl, Fused)
    m.unimix = 0.01
    assert m._impl.unimix == 0.01
    for backend in ("fused", "reference"):
        m.backend = backend
        assert_equal(every_method(m), every_method(model(unimix=0.01, backend=backend)))
    with pytest.raises(ValueError, match="`unimix` must be a number in"):
        m.unimix = 1.0
    assert m.unimix == 0.01 and m._impl.unimix == 0.01  # the failed assignment changed nothing
    m.backend = "fused"
    m.inference_dtype = torch.bfloat16
    assert m._impl.inference_dtype == torch.bfloat16


def test_backend_is_not_a_submodule_or_state():
    m = model()
    names = [name for name, _ in m.named_modules()]
    assert names == ["", "img_in", "gru", "gru_norm", "img_out", "prior_logits", "obs_out", "post_logits"]
    changes = (lambda: None, lambda: setattr(m, "backend", "reference"), m.float, lambda: setattr(m, "unimix", 0.1))
    for change in changes:
        change()
        assert list(m.state_dict()) == KEYS
        assert [name for name, _ in m.named_modules()] == names
    twin = copy.deepcopy(m)  # the copy's backend holds the copy's layers
    assert twin._impl.layers.img_in is twin.img_in and twin._impl.layers.img_in is not m.img_in


def test_fused_methods_validate_once(monkeypatch):
    """The fused backend calls the kernels directly: no op wrapper checks its arguments or picks a backend again.
    kl_loss's one validation is the RSSM's (kl_balance's checks under its name: one call per logits tensor)."""
    m = model(backend="fused")
    counts = {"use_fused": 0, "tensor": 0}

    def counting(name, real):
        def wrapper(*args, **kwargs):
            counts[name] += 1
            return real(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(_backend, "use_fused", counting("use_fused", _backend.use_fused))
    monkeypatch.setattr(_checks, "tensor", counting("tensor", _checks.tensor))
    every_method(m)
    assert counts == {"use_fused": 0, "tensor": 2}
    with pytest.raises(ValueError, match=r"RSSM.kl_loss: `free` must be in"):
        m.kl_loss(*m.observe(*sequence(2, 1)[:3]), free=-1.0)
    with pytest.raises(TypeError, match=r"RSSM.kl_loss: `prior` must be an RSSMState"):
        m.kl_loss(m.initial(1), None)


def rssm_imports(path: pathlib.Path) -> set[str]:
    """The dreamer_fast.rssm modules that ``path`` imports, anywhere in it (TYPE_CHECKING blocks included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        found |= {name.split(".")[2] for name in names if name.startswith("dreamer_fast.rssm.")}
    return found & {p.stem for p in RSSM_DIR.glob("*.py")}


def test_rssm_modules_import_no_cycle():
    graph = {p.stem: rssm_imports(p) - {p.stem} for p in RSSM_DIR.glob("*.py") if p.stem != "__init__"}
    for name in ("fused", "reference", "backend", "checks", "state", "sequence_linear"):
        assert "module" not in graph[name], f"rssm/{name}.py imports rssm/module.py"
    done: set[str] = set()

    def visit(name, path):
        assert name not in path, f"import cycle: {' -> '.join([*path, name])}"
        if name not in done:
            for dep in graph[name]:
                visit(dep, [*path, name])
            done.add(name)

    for name in graph:
        visit(name, [])


@pytest.mark.parametrize("name", sorted(p.stem for p in RSSM_DIR.glob("*.py") if p.stem != "__init__"))
def test_each_rssm_module_imports_first(name):
    """Each module imported on its own in a fresh interpreter."""
    result = subprocess.run([sys.executable, "-c", f"import dreamer_fast.rssm.{name}"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
