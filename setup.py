"""Builds dreamer_fast._C against the torch that is installed (2.12 to 2.15): the CPU kernels always, the CUDA kernels
when torch is a CUDA build and nvcc is found. The torch version is recorded in the library (csrc/ops.cpp), and
dreamer_fast/_backend.py refuses a library built for another torch with a one-line message before loading it.

Environment:
  DREAMER_FAST_CUDA=0|1   force the CUDA kernels off / on (1 without a CUDA torch or nvcc is an error);
                          unset: on when torch has CUDA and nvcc exists, whether or not a GPU is present.
  CUDA_HOME               the CUDA toolkit (default /usr/local/cuda when it has bin/nvcc).
  TORCH_CUDA_ARCH_LIST    GPU architectures; default below when unset (no GPU is queried at build time).
  MAX_JOBS                parallel compile jobs (ninja).
"""

import glob
import os
import sys
from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).parent.resolve()
GENERATED = ROOT / "build" / "generated"  # headers written here at build time (csrc/ops.cpp includes one)
DEFAULT_ARCH_LIST = "7.5;8.0;9.0+PTX"  # T4, A100 (sm_80 cubins also run on 8.6/8.9), H100, PTX for newer GPUs


def _note(msg: str) -> None:
    print(f"[dreamer_fast setup] {msg}", file=sys.stderr)


def _cuda_home() -> str | None:
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if not home and Path("/usr/local/cuda/bin/nvcc").exists():
        home = "/usr/local/cuda"
    if home:
        # torch.utils.cpp_extension reads CUDA_HOME when it is imported; set it first.
        os.environ["CUDA_HOME"] = home
    return home


def _want_cuda(cuda_home: str | None) -> bool:
    import torch

    mode = os.environ.get("DREAMER_FAST_CUDA", "").strip()
    if mode not in ("", "0", "1"):
        raise SystemExit(f"DREAMER_FAST_CUDA must be 0, 1 or unset, got {mode!r}")
    has_nvcc = bool(cuda_home) and Path(cuda_home, "bin", "nvcc").exists()
    torch_cuda = torch.version.cuda is not None
    if mode == "0":
        _note("CUDA kernels disabled by DREAMER_FAST_CUDA=0")
        return False
    if mode == "1" and not torch_cuda:
        raise SystemExit(f"DREAMER_FAST_CUDA=1 but torch {torch.__version__} is a CPU-only build")
    if mode == "1" and not has_nvcc:
        raise SystemExit(f"DREAMER_FAST_CUDA=1 but nvcc was not found (CUDA_HOME={cuda_home!r}); set CUDA_HOME")
    if not torch_cuda:
        _note(f"torch {torch.__version__} is a CPU-only build: skipping the CUDA kernels (their emulated twins are built)")
        return False
    if not has_nvcc:
        _note(f"nvcc not found (CUDA_HOME={cuda_home!r}): skipping the CUDA kernels (their emulated twins are built)")
        return False
    return True


def _record_torch_version() -> None:
    """build/generated/dreamer_fast_torch_version.h: the torch this build compiles against, kept in the library."""
    import torch

    GENERATED.mkdir(parents=True, exist_ok=True)
    header = GENERATED / "dreamer_fast_torch_version.h"
    text = f'#pragma once\n#define DREAMER_FAST_TORCH_VERSION "{torch.__version__}"\n'
    if not header.exists() or header.read_text() != text:  # rewritten only on a change: ninja rebuilds what reads it
        header.write_text(text)
    _note(f"compiling against torch {torch.__version__} (CUDA {torch.version.cuda})")


def _extensions():
    from torch.utils.cpp_extension import CppExtension, CUDAExtension

    _record_torch_version()
    cuda_home = os.environ.get("CUDA_HOME")
    with_cuda = _want_cuda(cuda_home)
    csrc = ROOT / "csrc"
    sources = [csrc / "ops.cpp", *sorted(csrc.glob("cpu/*.cpp")), *sorted(csrc.glob("emulated/*.cpp"))]
    sources += sorted(csrc.glob("composite/*.cpp")) + sorted(csrc.glob("autograd/*.cpp"))
    cxx = ["-O3", "-fopenmp", "-DDREAMER_FAST_PYTHON_MODULE"]
    kwargs = dict(
        name="dreamer_fast._C",
        include_dirs=[str(csrc / "include"), str(csrc), str(GENERATED)],
        extra_link_args=["-fopenmp"],
    )
    if not with_cuda:
        srcs = [str(s.relative_to(ROOT)) for s in sources]
        return [CppExtension(sources=srcs, extra_compile_args={"cxx": cxx}, **kwargs)]
    if not os.environ.get("TORCH_CUDA_ARCH_LIST"):
        os.environ["TORCH_CUDA_ARCH_LIST"] = DEFAULT_ARCH_LIST
        _note(f"TORCH_CUDA_ARCH_LIST unset: building for {DEFAULT_ARCH_LIST} (set it to target your GPU only)")
    _note(f"building CPU + CUDA kernels (CUDA_HOME={cuda_home}, arch {os.environ['TORCH_CUDA_ARCH_LIST']})")
    sources += [*sorted(csrc.glob("cuda/*.cpp")), *sorted(csrc.glob("cuda/*.cu"))]
    srcs = [str(s.relative_to(ROOT)) for s in sources]
    nvcc = ["-O3", "-lineinfo", "-DDREAMER_FAST_WITH_CUDA"]
    return [
        CUDAExtension(
            sources=srcs, extra_compile_args={"cxx": cxx + ["-DDREAMER_FAST_WITH_CUDA"], "nvcc": nvcc}, **kwargs
        )
    ]


def main() -> None:
    _cuda_home()  # before torch.utils.cpp_extension is imported
    from torch.utils.cpp_extension import BuildExtension

    setup(
        ext_modules=_extensions(),
        cmdclass={"build_ext": BuildExtension.with_options(no_python_abi_suffix=False)},
    )


if __name__ == "__main__":
    main()
