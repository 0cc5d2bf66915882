"""Rotary position embedding tables (rotate-half layout), built once per forward pass."""
from __future__ import annotations

from typing import NamedTuple

import torch


def rope_cos_sin(positions: torch.Tensor, inv_freq: torch.Tensor, scaling: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables [..., head_dim] for integer positions [...], as Hugging Face Llama builds them."""
    freqs = positions.to(torch.float32)[..., None] * inv_freq.to(positions.device, torch.float32)
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos() * scaling, emb.sin() * scaling


class RopeTables(NamedTuple):
    """cos and sign-folded sin [..., 1, head_dim] in the activations' dtype, built once per forward pass:
    rotate-half RoPE is then `x * cos + roll(x, head_dim / 2) * sin` (`mlabatch.kernels.elementwise.rope_`)."""

    cos: torch.Tensor
    sin: torch.Tensor


def rope_tables(positions: torch.Tensor, inv_freq: torch.Tensor, scaling: float = 1.0,
                dtype: torch.dtype = torch.float32) -> RopeTables:
    """RopeTables for integer positions [...]: [..., 1, head_dim], broadcast by `rope_` over x's heads."""
    cos, sin = rope_cos_sin(positions, inv_freq, scaling)
    half = sin.shape[-1] // 2
    sin = torch.cat((-sin[..., :half], sin[..., half:]), dim=-1)
    return RopeTables(cos.unsqueeze(-2).to(dtype), sin.unsqueeze(-2).to(dtype))
