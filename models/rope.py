"""Rotary position embedding (rotate-half layout) and RoRoPE, the exact rotation that packs keys' RoPE energy.

RoRoPE (TransMLA): at each frequency, RoPE turns every KV head's 2-d pair by the same angle, so any
orthogonal mix of the heads' pairs at that frequency commutes with RoPE. Mixing by the principal axes
of the keys puts most positional energy in the first mixed "heads", which stay RoPE'd; the rest lose RoPE
and join the low-rank latent.
"""
from __future__ import annotations

import torch

from mlabatch.models.linalg import eigh_descending


def rope_cos_sin(positions: torch.Tensor, inv_freq: torch.Tensor, scaling: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables [..., head_dim] for integer positions [...], as Hugging Face Llama builds them."""
    freqs = positions.to(torch.float32)[..., None] * inv_freq.to(positions.device, torch.float32)
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos() * scaling, emb.sin() * scaling


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x [b, t, heads, head_dim] by the tables [b, t, head_dim]."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos.unsqueeze(-2).to(x.dtype) + rotated * sin.unsqueeze(-2).to(x.dtype)


def rorope_rotation(w_k: torch.Tensor, second_moment: torch.Tensor, n_kv: int, head_dim: int) -> torch.Tensor:
    """Orthogonal R [n_kv*head_dim]^2 (float64) mixing KV heads per frequency, components by falling energy.

    Row j*head_dim + a of R @ k is mixed component j at dim a; `second_moment` is E[x x^T] of the
    attention input (the identity for weight-only methods).
    """
    w = w_k.double()
    cov = w @ second_moment.double() @ w.T  # key covariance [n_kv*hd, n_kv*hd]
    half = head_dim // 2
    rot = torch.zeros(n_kv * head_dim, n_kv * head_dim, dtype=torch.float64)
    heads = torch.arange(n_kv) * head_dim
    for i in range(half):
        c = cov[(heads + i)[:, None], (heads + i)[None, :]] + cov[(heads + i + half)[:, None], (heads + i + half)[None, :]]
        _, u = eigh_descending(c)  # columns = components, energy falling
        for a in (i, i + half):
            rot[(heads + a)[:, None], (heads + a)[None, :]] = u.T
    return rot
