"""Find the compiled CUDA extension: the one built with the wheel, else a just-in-time build in a cache dir.

Nothing here runs at import time; `load_extension()` is called on the first CUDA-backend use. Both builds
compile with the flags below, which carry limits.py's values to the C++/CUDA sources as -D defines.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from pathlib import Path
from types import ModuleType

import torch


def _import_path(name: str, path: Path) -> ModuleType:
    """Import the module in file `path` under `name`, outside any package."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


if __package__:
    from . import limits
else:  # setup.py runs this file by path, outside the package: load limits.py beside it the same way
    limits = _import_path("_mla_limits", Path(__file__).with_name("limits.py"))

CSRC = Path(__file__).resolve().parent / "csrc"
# limits.py's values as the -D defines csrc/mla_limits.h requires: one owner for Python and CUDA.
DEFINES = [
    f"-DMLA_PAGE_SIZE={limits.PAGE_SIZE}",
    f"-DMLA_D_ROPE={limits.D_ROPE}",
    f"-DMLA_METADATA_SIZE={limits.METADATA_SIZE}",
    f"-DMLA_FIXED_OVERHEAD={limits.FIXED_OVERHEAD}",
    f"-DMLA_Q_TILE_ROWS={limits.Q_TILE_ROWS}",
    f"-DMLA_TWO_CTA_MAX_ROWS={limits.TWO_CTA_MAX_ROWS}",
    f"-DMLA_TWO_CTA_MAX_D_QK={limits.TWO_CTA_MAX_D_QK}",
    f"-DMLA_GPU_SCHED_MAX_BATCH={limits.GPU_SCHED_MAX_BATCH}",
]
# The d_v list goes to the C++ compiler only (mla_api.cpp dispatches on it): nvcc would split it at the commas.
HOST_DEFINES = [f"-DMLA_SUPPORTED_D_V={','.join(map(str, limits.SUPPORTED_D_V))}"]
NVCC_FLAGS = [
    "-O3",
    "-gencode=arch=compute_90a,code=sm_90a",
    "--use_fast_math",
    "--expt-relaxed-constexpr",
    "-lineinfo",
    "-U__CUDA_NO_HALF_OPERATORS__",
    "-U__CUDA_NO_HALF_CONVERSIONS__",
    "-U__CUDA_NO_BFLOAT16_CONVERSIONS__",
    *DEFINES,
]
CXX_FLAGS = ["-O3", *DEFINES, *HOST_DEFINES]

_state: dict[str, object] = {}


def sources() -> list[Path]:
    """Return the extension's C++/CUDA source files in a stable order."""
    return sorted(p for p in CSRC.iterdir() if p.suffix in (".cpp", ".cu"))


def cache_dir() -> Path:
    """Return the JIT build dir, keyed by torch, CUDA, arch and a hash of the sources and flags (limits included)."""
    digest = hashlib.sha256()
    for p in sorted(CSRC.iterdir()):
        digest.update(p.name.encode() + p.read_bytes())
    digest.update(" ".join(NVCC_FLAGS + CXX_FLAGS).encode())
    key = f"{torch.__version__}-cuda{torch.version.cuda}-sm90a-{digest.hexdigest()[:16]}".replace("+", "_")
    root = os.environ.get("MLABATCH_KERNELS_CACHE", str(Path.home() / ".cache" / "mlabatch" / "kernels"))
    return Path(root) / key


JIT_NAME = "mlabatch_kernels_jit"


def _load_cached() -> ModuleType | None:
    """Import a module an earlier JIT build left in cache_dir(), without ninja or nvcc (e.g. from a volume)."""
    built = cache_dir() / f"{JIT_NAME}.so"
    return _import_path(JIT_NAME, built) if built.exists() else None


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
