"""Multi-head Latent Attention converted from MHA/GQA: one cached row `[c ; k_rope]` per token for all heads.

Head h (KV group g) scores `q_nope_h . (k_up[g] c) + rope(q_rope_h) . rope(k_rope)` and reads
`v_up[g] c`. The non-absorbed form (prefill, encoders) materializes K and V and runs PyTorch SDPA; the
absorbed form (decode) moves k_up into the query and v_up after the kernel, which reads only latent rows.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mlabatch.models.rope import apply_rope


@dataclass(frozen=True)
class MLAShape:
    """Sizes of one converted attention layer; `has_nope` is False when every key stays RoPE'd exactly."""

    d_model: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    d_c: int
    d_rope: int
    has_nope: bool


class MLAAttention(nn.Module):
    """One converted attention layer; RoPE tables come from the caller (None for learned positions)."""

    def __init__(self, shape: MLAShape) -> None:
        super().__init__()
        s = shape
        self.shape = s
        self.scale = s.head_dim ** -0.5  # the source model's scores are reproduced, so its scale is kept
        self.kv_down = nn.Linear(s.d_model, s.d_c, bias=False)
        self.v_up = nn.Parameter(torch.zeros(s.n_kv_heads, s.head_dim, s.d_c))
        self.o_proj = nn.Linear(s.n_heads * s.head_dim, s.d_model)
        if s.has_nope:
            self.q_nope = nn.Linear(s.d_model, s.n_heads * s.head_dim)
            self.k_up = nn.Parameter(torch.zeros(s.n_kv_heads, s.head_dim, s.d_c))
        if s.d_rope:
            self.q_rope = nn.Linear(s.d_model, s.n_heads * s.d_rope)
            self.k_rope = nn.Linear(s.d_model, s.d_rope)

    def latent(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
        """Cache rows [b, t, d_c + d_rope] for hidden states x [b, t, d_model]."""
        c = self.kv_down(x)
        if not self.shape.d_rope:
            return c
        b, t, _ = x.shape
        hd = self.shape.head_dim
        kr = apply_rope(self.k_rope(x).view(b, t, -1, hd), *rope).reshape(b, t, -1)
        return torch.cat((c, kr), dim=-1)

    def _queries(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
        """Non-absorbed queries [b, t, h, head_dim*has_nope + d_rope]."""
        s = self.shape
        b, t, _ = x.shape
        parts = []
        if s.has_nope:
            parts.append(self.q_nope(x).view(b, t, s.n_heads, s.head_dim))
        if s.d_rope:
            qr = self.q_rope(x).view(b, t, s.n_heads * s.d_rope // s.head_dim, s.head_dim)
            parts.append(apply_rope(qr, *rope).view(b, t, s.n_heads, s.d_rope))
        return torch.cat(parts, dim=-1)

    def forward(self, x: torch.Tensor, rows: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None,
                mask: torch.Tensor | None = None, causal: bool = False) -> torch.Tensor:
        """Non-absorbed attention of x [b, t, d_model] over cache rows [b, s, d_c + d_rope] through SDPA.

        `mask` is bool [b, s] (True = attend), `causal` aligns query i with key i (t == s).
        """
        s = self.shape
        b, t, _ = x.shape
        n = rows.shape[1]
        c, kr = rows[..., : s.d_c], rows[..., s.d_c:]
        group = s.n_heads // s.n_kv_heads
        keys = []
        if s.has_nope:
            keys.append(torch.einsum("bsc,gdc->bgsd", c, self.k_up))
        if s.d_rope:
            keys.append(kr[:, None].expand(b, s.n_kv_heads, n, s.d_rope))
        k = torch.cat(keys, dim=-1).repeat_interleave(group, dim=1)
        v = torch.einsum("bsc,gdc->bgsd", c, self.v_up).repeat_interleave(group, dim=1)
        q = self._queries(x, rope).transpose(1, 2)
        attn_mask = None if mask is None else mask[:, None, None, :]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=causal, scale=self.scale)
        return self.o_proj(out.transpose(1, 2).reshape(b, t, s.n_heads * s.head_dim))

    def absorbed_queries(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
        """Queries against latent rows [b, t, h, d_c + d_rope]: k_up folded into the no-RoPE part."""
        s = self.shape
        b, t, _ = x.shape
        group = s.n_heads // s.n_kv_heads
        if s.has_nope:
            qn = self.q_nope(x).view(b, t, s.n_heads, s.head_dim)
            q_lat = torch.einsum("bthd,hdc->bthc", qn, self.k_up.repeat_interleave(group, dim=0))
        else:
            q_lat = x.new_zeros(b, t, s.n_heads, s.d_c)
        if not s.d_rope:
            return q_lat
        qr = self.q_rope(x).view(b, t, s.n_heads * s.d_rope // s.head_dim, s.head_dim)
        return torch.cat((q_lat, apply_rope(qr, *rope).view(b, t, s.n_heads, s.d_rope)), dim=-1)

    def absorbed_output(self, out_latent: torch.Tensor) -> torch.Tensor:
        """Project attention-weighted latents [b, t, h, >= d_c] through v_up and o_proj to [b, t, d_model]."""
        s = self.shape
        b, t = out_latent.shape[:2]
        v_up = self.v_up.repeat_interleave(s.n_heads // s.n_kv_heads, dim=0)
        o = torch.einsum("bthc,hdc->bthd", out_latent[..., : s.d_c], v_up)
        return self.o_proj(o.reshape(b, t, s.n_heads * s.head_dim))

