"""Running beside whatever supported torch a project has: the library records the torch it was compiled against and a
library built for another torch is refused with one line before it is loaded; the private ATen ops are looked up
with their schema, and without them (``$DREAMER_FAST_PRIVATE_ATEN_OPS=0``, as on a torch that lacks them) ATen's
public ops run and the fused RSSM still matches the reference."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_cpu_gemm import run_python

import dreamer_fast as df
from dreamer_fast._backend import TORCH_SECTION, built_torch_version, elf_section

pytestmark = pytest.mark.skipif(not df.extension_loaded(), reason="needs the compiled extension")
PACKAGE = Path(df.__file__).parent
PRIVATE_OPS = {
    "mkldnn::_linear_pointwise",
    "mkldnn::_reorder_linear_weight",
    "mkl::_mkl_reorder_linear_weight",
    "mkl::_mkl_linear",
    "mkldnn::_is_mkldnn_bf16_supported",
}


def library_path() -> Path:
    return Path(importlib.util.find_spec("dreamer_fast._C").origin)


def test_the_library_records_the_torch_it_was_compiled_against():
    assert built_torch_version(library_path()) == torch.__version__


def test_files_without_the_record_read_as_none(tmp_path):
    (tmp_path / "text").write_text("not a library")
    assert built_torch_version(tmp_path / "text") is None
    assert built_torch_version(torch._C.__file__) is None  # an ELF library without the section


def package_copy(tmp_path: Path) -> Path:
    """A copy of the installed package (Python files and the library) under tmp_path, for patching its library."""
    shutil.copytree(PACKAGE, tmp_path / "dreamer_fast", ignore=shutil.ignore_patterns("__pycache__"))
    return tmp_path / "dreamer_fast" / library_path().name


def import_copy(root: Path, code: str = "") -> subprocess.CompletedProcess:
    """`code` after importing the copy under `root` (run from there: the current directory comes first on the path)."""
    code = f"import torch, dreamer_fast as df\nassert df.__file__.startswith({str(root)!r})\n{code}"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root,
                          env={**os.environ, "PYTHONPATH": str(root)})


def test_a_library_built_for_another_torch_is_refused_with_one_line(tmp_path):
    lib = package_copy(tmp_path)
    offset, size = elf_section(lib, TORCH_SECTION)
    fake = b"2.11.0+fake"
    with open(lib, "r+b") as f:  # the record as a build against torch 2.11.0+fake would have written it
        f.seek(offset)
        f.write(fake.ljust(size, b"\0"))
    assert built_torch_version(lib) == "2.11.0+fake"
    got = import_copy(
        tmp_path,
        "print(df.extension_loaded())\n"
        "try:\n    df.lambda_return(*[torch.zeros(2, 1)] * 3, torch.zeros(1), backend='fused')\n"
        "except RuntimeError as e:\n    print(e)",
    )
    assert got.returncode == 0, got.stderr
    lines = [line for line in got.stderr.splitlines() if "RuntimeWarning" in line]
    want = (
        f"dreamer_fast._C was built against torch 2.11.0+fake but torch {torch.__version__} is installed; "
        "rebuild it against this torch: pip install --no-build-isolation"
    )
    assert len(lines) == 1 and want in lines[0], got.stderr
    assert "undefined symbol" not in got.stderr and "Traceback" not in got.stderr
    out = got.stdout.splitlines()
    assert out[0] == "False" and want in out[1]  # not loaded; the fused backend names the same reason


def test_a_library_that_does_not_link_gives_the_same_one_line(tmp_path):
    """A library without the record (built before it existed) whose symbols this torch lacks."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        pytest.skip("needs a C compiler")
    lib = package_copy(tmp_path)
    src = tmp_path / "missing.c"
    src.write_text("extern void symbol_of_another_torch(void);\nvoid PyInit__C(void) { symbol_of_another_torch(); }\n")
    subprocess.run([compiler, "-shared", "-fPIC", "-o", str(lib), str(src)], check=True)
    assert built_torch_version(lib) is None
    got = import_copy(tmp_path, "print(df.extension_loaded())")
    assert got.returncode == 0 and got.stdout.strip() == "False", got.stderr
    lines = [line for line in got.stderr.splitlines() if "RuntimeWarning" in line]
    assert len(lines) == 1 and "undefined symbol: symbol_of_another_torch" in lines[0], got.stderr
    assert f"does not load under torch {torch.__version__}" in lines[0]
    assert "rebuild it against this torch: pip install --no-build-isolation" in lines[0]


def test_private_aten_ops_are_reported():
    ops = df.private_aten_ops()
    assert set(ops) == PRIVATE_OPS
    assert all(status == "found" or status == "missing" or status.startswith("schema ") for status in ops.values())
    if ops["mkl::_mkl_linear"] == "found" and ops["mkldnn::_linear_pointwise"] == "found":
        assert df.cpu_gemm() in ("mkl", "onednn")


def test_without_private_ops_the_public_ops_run_and_match_the_reference():
    code = """
import torch, dreamer_fast as df
from conftest import tol
from test_rssm import assert_states_close, model, run_observe, sequence
print(sorted(set(df.private_aten_ops().values())), df.cpu_gemm(), df.cpu_features()["onednn_bf16"])
try:
    df.set_cpu_gemm("onednn")
except RuntimeError as e:
    print("onednn refused" if "no oneDNN linear ops" in str(e) else e)
df.set_cpu_gemm("mkl")
print(df.cpu_gemm())
m = model(torch.float32)
data = sequence(20, 4, torch.float32)
(post_r, prior_r, grads_r), (post_f, prior_f, grads_f) = (run_observe(m, b, *data) for b in ("reference", "fused"))
assert_states_close(post_f, post_r, **tol(torch.float32))
assert_states_close(prior_f, prior_r, **tol(torch.float32))
for a, b in zip(grads_f, grads_r):
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
x, w = torch.randn(80, 300), torch.randn(320, 300)
torch.testing.assert_close(df.linear(x, w, backend="fused"), df.linear_ref(x, w), rtol=1e-4, atol=1e-4)
print("match")
"""
    path = os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])
    got = run_python(code, DREAMER_FAST_PRIVATE_ATEN_OPS="0", PYTHONPATH=path)
    assert got.returncode == 0, got.stderr
    assert got.stdout.splitlines() == ["['off'] aten False", "onednn refused", "aten", "match"], got.stdout
    bad = run_python("import dreamer_fast", DREAMER_FAST_PRIVATE_ATEN_OPS="no")
    assert bad.returncode != 0 and "$DREAMER_FAST_PRIVATE_ATEN_OPS must be 0 or 1" in bad.stderr
