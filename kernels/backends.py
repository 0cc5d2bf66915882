"""Backend choice (cuda, flashmla, torch) for each call, and `info()` saying which one is active and why."""

from __future__ import annotations

import importlib
import os
from types import ModuleType

import torch

from . import build
from .validate import KERNEL_DTYPES

ENV_VAR = "MLABATCH_MLA_BACKEND"
CHOICES = ("auto", "cuda", "flashmla", "torch")
_flashmla: dict[str, tuple[ModuleType | None, str]] = {}


def requested(backend: str | None) -> str:
    """Return the backend asked for by the argument, else the environment variable, else 'auto'."""
    name = (backend or os.environ.get(ENV_VAR) or "auto").lower()
    if name not in CHOICES:
        raise ValueError(f"unknown MLA backend {name!r} (argument or ${ENV_VAR}); choose one of {CHOICES}")
    return name


def flash_mla_module() -> tuple[ModuleType | None, str]:
    """Return (the real flash_mla package or None, reason)."""
    if "m" not in _flashmla:
        try:
            _flashmla["m"] = (importlib.import_module("flash_mla"), "flash_mla package importable")
        except Exception as exc:  # any import failure just means the backend is unavailable
            _flashmla["m"] = (None, f"flash_mla not importable ({type(exc).__name__})")
    return _flashmla["m"]


def _cuda_usable(device: torch.device, dtype: torch.dtype) -> tuple[bool, str]:
    """Say whether our CUDA extension can run a call on this device and dtype."""
    if device.type != "cuda":
        return False, f"inputs are on {device.type}, the cuda backend needs a GPU"
    if dtype not in KERNEL_DTYPES:
        return False, f"dtype {dtype} not in the kernel's bf16/fp16"
    ext, why = build.load_extension()
    return ext is not None, why


def _flashmla_usable(device: torch.device, dtype: torch.dtype, dims: tuple[int, int]) -> tuple[bool, str]:
    """Say whether the real FlashMLA can run a call (it only does 576/512 bf16/fp16 on a GPU)."""
    mod, why = flash_mla_module()
    if mod is None:
        return False, why
    if device.type != "cuda" or dtype not in KERNEL_DTYPES or dims != (576, 512):
        return False, "flash_mla handles only 576/512 bf16/fp16 on a GPU"
    return True, why


def choose(backend: str | None, device: torch.device, dtype: torch.dtype, dims: tuple[int, int]) -> tuple[str, str]:
    """Return (backend name, reason) for one call; raise RuntimeError if a forced backend cannot run."""
    name = requested(backend)
    if name == "torch":
        return "torch", "forced"
    if name == "cuda":
        ok, why = _cuda_usable(device, dtype)
        if not ok:
            raise RuntimeError(f"MLA backend 'cuda' forced but unusable: {why}")
        return "cuda", why
    if name == "flashmla":
        ok, why = _flashmla_usable(device, dtype, dims)
        if not ok:
            raise RuntimeError(f"MLA backend 'flashmla' forced but unusable: {why}")
        return "flashmla", why
    ok, why_cuda = _cuda_usable(device, dtype)
    if ok:
        return "cuda", why_cuda
    ok, why_fm = _flashmla_usable(device, dtype, dims)
    if ok:
        return "flashmla", why_fm
    return "torch", f"fallback: {why_cuda}; {why_fm}"


def info() -> dict[str, str]:
    """Return the backend a bf16 576/512 call on the current default device would use, and why."""
    device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    try:
        name, why = choose(None, device, torch.bfloat16, (576, 512))
    except RuntimeError as exc:
        name, why = "unavailable", str(exc)
    ext, ext_why = build.load_extension() if device.type == "cuda" else (None, "no visible GPU")
    return {
        "backend": name,
        "reason": why,
        "requested": requested(None),
        "device": str(device),
        "extension": ext_why if ext is not None else f"not loaded: {ext_why}",
        "flash_mla": flash_mla_module()[1],
    }
