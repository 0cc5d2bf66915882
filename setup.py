"""Build hook: pyproject.toml holds the metadata; the CUDA extension is added here when it can be built.

`pip install --no-build-isolation .` with a CUDA-enabled torch and nvcc compiles `mlabatch.kernels._C`
(sm_90a; see the README, "The MLA decode kernel"). Anywhere else, or with MLABATCH_BUILD_CUDA=0, the package is pure Python
and the kernels are JIT-built on first use on a Hopper GPU, or the torch backend is used.
"""

import importlib.util
import os
from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).resolve().parent


def cuda_extension() -> dict:
    """Return setup() kwargs adding the CUDA extension, or {} when torch/nvcc cannot build it."""
    if os.environ.get("MLABATCH_BUILD_CUDA", "1") == "0":
        return {}
    try:
        import torch
        from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CUDAExtension
    except ImportError:
        return {}
    if torch.version.cuda is None or CUDA_HOME is None:
        return {}
    spec = importlib.util.spec_from_file_location("_mla_build", ROOT / "kernels" / "build.py")
    flags = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(flags)  # the same sources and flags as the JIT path
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "9.0a")
    ext = CUDAExtension(
        "mlabatch.kernels._C",
        [str(p.relative_to(ROOT)) for p in flags.sources()],
        extra_compile_args={"cxx": flags.CXX_FLAGS, "nvcc": flags.NVCC_FLAGS},
    )
    return {"ext_modules": [ext], "cmdclass": {"build_ext": BuildExtension}}


setup(**cuda_extension())
