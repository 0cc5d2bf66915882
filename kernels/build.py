"""Find the compiled CUDA extension: the one built with the wheel, else a just-in-time build in a cache dir.

Nothing here runs at import time; `load_extension()` is called on the first CUDA-backend use.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from types import ModuleType

import torch

CSRC = Path(__file__).resolve().parent / "csrc"
NVCC_FLAGS = [
    "-O3",
    "-gencode=arch=compute_90a,code=sm_90a",
    "--use_fast_math",
    "--expt-relaxed-constexpr",
    "-lineinfo",
    "-U__CUDA_NO_HALF_OPERATORS__",
    "-U__CUDA_NO_HALF_CONVERSIONS__",
    "-U__CUDA_NO_BFLOAT16_CONVERSIONS__",
]
CXX_FLAGS = ["-O3"]

_state: dict[str, object] = {}


def sources() -> list[Path]:
    """Return the extension's C++/CUDA source files in a stable order."""
    return sorted(p for p in CSRC.iterdir() if p.suffix in (".cpp", ".cu"))


def cache_dir() -> Path:
    """Return the JIT build dir, keyed by torch, CUDA, arch and a hash of the sources."""
    digest = hashlib.sha256()
    for p in sorted(CSRC.iterdir()):
        digest.update(p.name.encode() + p.read_bytes())
    digest.update(" ".join(NVCC_FLAGS).encode())
    key = f"{torch.__version__}-cuda{torch.version.cuda}-sm90a-{digest.hexdigest()[:16]}".replace("+", "_")
    root = os.environ.get("MLABATCH_KERNELS_CACHE", str(Path.home() / ".cache" / "mlabatch" / "kernels"))
    return Path(root) / key


JIT_NAME = "mlabatch_kernels_jit"


def _load_cached() -> ModuleType | None:
    """Import a module an earlier JIT build left in cache_dir(), without ninja or nvcc (e.g. from a volume)."""
    import importlib.util

    built = cache_dir() / f"{JIT_NAME}.so"
    if not built.exists():
        return None
    spec = importlib.util.spec_from_file_location(JIT_NAME, built)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _jit() -> ModuleType:
    """Compile the extension with torch.utils.cpp_extension.load into cache_dir() and import it."""
    from torch.utils.cpp_extension import load

    build_dir = cache_dir()
    build_dir.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "9.0a")
    return load(
        name=JIT_NAME,
        sources=[str(p) for p in sources()],
        extra_cflags=CXX_FLAGS,
        extra_cuda_cflags=NVCC_FLAGS,
        build_directory=str(build_dir),
        verbose=os.environ.get("MLABATCH_JIT_VERBOSE") == "1",
    )


def load_extension() -> tuple[ModuleType | None, str]:
    """Return (module or None, reason); tries the prebuilt module, then a JIT build on a Hopper GPU."""
    if "result" in _state:
        return _state["result"]  # type: ignore[return-value]
    result: tuple[ModuleType | None, str]
    try:
        from mlabatch.kernels import _C  # built by setup.py with a CUDA-enabled torch

        result = (_C, "prebuilt extension mlabatch.kernels._C")
    except ImportError:
        result = _try_jit()
    _state["result"] = result
    return result


def _try_jit() -> tuple[ModuleType | None, str]:
    """JIT-build when a Hopper GPU and a CUDA toolchain are present, else say why not."""
    if torch.version.cuda is None or not torch.cuda.is_available():
        return None, "no CUDA-enabled torch or no visible GPU"
    if torch.cuda.get_device_capability() != (9, 0):
        return None, f"GPU is sm_{''.join(map(str, torch.cuda.get_device_capability()))}, kernel needs sm_90 (Hopper)"
    try:
        cached = _load_cached()
        if cached is not None:
            return cached, f"extension built earlier, loaded from {cache_dir()}"
    except (ImportError, OSError) as exc:  # a corrupt or foreign build: rebuild below
        cached_error = f"cached build unusable ({exc}); "
    else:
        cached_error = ""
    if os.environ.get("MLABATCH_JIT", "1") == "0":
        return None, cached_error + "no prebuilt extension and MLABATCH_JIT=0"
    try:
        return _jit(), f"JIT-built extension in {cache_dir()}"
    except Exception as exc:  # a failed build must fall back to torch, with the reason kept for info()
        return None, f"JIT build failed: {type(exc).__name__}: {str(exc)[-400:]}"
