"""Multi-head Latent Attention converted from MHA/GQA: one cached row `[c ; k_rope]` per token for all heads.

Head h (KV group g) scores `q_nope_h . (k_up[g] c) + rope(q_rope_h) . rope(k_rope)` and reads
`v_up[g] c`. The non-absorbed form (prefill, encoders) materializes K and V and runs PyTorch SDPA; the
absorbed form (decode) moves k_up into the query and v_up after the kernel, which reads only latent rows.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from mlabatch.kernels.elementwise import rope_
from mlabatch.models.rope import RopeTables
from mlabatch.models.varlen import PackedLayout, varlen_attention


class Projections(NamedTuple):
    """One layer's projected inputs, views of one buffer: cache rows `[c ; rope(k_rope)]` [b, t, d_c + d_rope]
    and queries [b, t, h, .]."""

    rows: torch.Tensor
    q_rope: torch.Tensor | None
    q_nope: torch.Tensor | None


class LatentWeights(NamedTuple):
    """Per-query-head maps of cache rows `[c ; k_rope]`: head h's key is `keys[h] @ row` (k_up on c, the
    identity on the RoPE part; the same matrix absorbs queries), its value `values[h] @ c`."""

    keys: torch.Tensor  # [h, dq, d_c + d_rope], dq = head_dim*has_nope + d_rope
    values: torch.Tensor  # [h, head_dim, d_c]
    padded_values: torch.Tensor  # values with zero rows up to dq


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
        self._fused: tuple[torch.Tensor, torch.Tensor] | None = None  # set by fuse()
        self._latent: LatentWeights | None = None  # set by fuse()

    def _inputs(self) -> list[nn.Linear]:
        """The input projections in the order of the fused output: kv_down, k_rope, q_rope, q_nope."""
        s = self.shape
        return [self.kv_down] + ([self.k_rope, self.q_rope] if s.d_rope else []) + ([self.q_nope] if s.has_nope else [])

    def fuse(self) -> None:
        """Serve all input projections from one matmul (their weights become views of one fused tensor) and
        keep the per-head latent weights (key/value expansion, query absorption).

        Call after the module reached its device and dtype (moving it later copies the views apart).
        """
        parts = self._inputs()
        weight = torch.cat([m.weight.detach() for m in parts])
        bias = torch.cat([m.bias.detach() if m.bias is not None else weight.new_zeros(m.out_features) for m in parts])
        start = 0
        for m in parts:
            m.weight = nn.Parameter(weight[start: start + m.out_features], requires_grad=False)
            if m.bias is not None:
                m.bias = nn.Parameter(bias[start: start + m.out_features], requires_grad=False)
            start += m.out_features
        self._fused = (weight, bias)
        self._latent = self.latent_weights()

    def project(self, x: torch.Tensor, rope: RopeTables | None) -> Projections:
        """Every input projection of x [b, t, d_model], keys and queries RoPE'd together in place."""
        s = self.shape
        if self._fused is not None:
            y = F.linear(x, *self._fused)
        else:
            y = torch.cat([m(x) for m in self._inputs()], dim=-1)
        width, q_rope = s.d_c + s.d_rope, s.n_heads * s.d_rope
        if s.d_rope:
            r = y[..., s.d_c: width + q_rope].unflatten(-1, (-1, s.head_dim))
            rope_(r, *rope)
        return Projections(y[..., :width],
                           y[..., width: width + q_rope].unflatten(-1, (s.n_heads, -1)) if s.d_rope else None,
                           y[..., width + q_rope:].unflatten(-1, (s.n_heads, -1)) if s.has_nope else None)

    @staticmethod
    def queries(p: Projections) -> torch.Tensor:
        """Non-absorbed queries [b, t, h, head_dim*has_nope + d_rope]."""
        parts = [q for q in (p.q_nope, p.q_rope) if q is not None]
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)

    def expand(self, rows: torch.Tensor, pad_values: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-query-head keys [..., s, h, dq] and values [..., s, h, head_dim] from cache rows
        [..., s, d_c + d_rope], one matmul each; `pad_values` widens values with zeros to dq (FlashAttention
        wants one head dim)."""
        s = self.shape
        w = self.latent_weights()
        k = F.linear(rows, w.keys.flatten(0, 1)).unflatten(-1, (s.n_heads, -1))
        values = w.padded_values if pad_values else w.values
        v = F.linear(rows[..., : s.d_c], values.flatten(0, 1)).unflatten(-1, (s.n_heads, -1))
        return k, v

    def forward_packed(self, p: Projections, rows: torch.Tensor, layout: PackedLayout) -> torch.Tensor:
        """Causal attention of packed tokens [1, T, .] within their sequences (`layout`); returns [1, T, d_model]."""
        k, v = self.expand(rows[0], pad_values=True)
        out = varlen_attention(self.queries(p)[0], k, v, layout, causal=True, scale=self.scale)
        return self.o_proj(out[..., : self.shape.head_dim].reshape(1, out.shape[0], -1))

    def forward(self, p: Projections, rows: torch.Tensor, mask: torch.Tensor | None = None,
                causal: bool = False) -> torch.Tensor:
        """Non-absorbed attention of projected inputs over cache rows [b, s, d_c + d_rope] through SDPA.

        `mask` is bool [b, s] (True = attend), `causal` aligns query i with key i (t == s).
        """
        b, t = p.rows.shape[:2]
        k, v = self.expand(rows)
        q = self.queries(p).transpose(1, 2)
        attn_mask = None if mask is None else mask[:, None, None, :]
        out = F.scaled_dot_product_attention(q, k.transpose(1, 2), v.transpose(1, 2), attn_mask=attn_mask,
                                             is_causal=causal, scale=self.scale)
        return self.o_proj(out.transpose(1, 2).reshape(b, t, -1))

    def latent_weights(self) -> LatentWeights:
        """Per-query-head maps from cache rows to keys and values (kept by fuse(), else built on each call)."""
        if self._latent is not None:
            return self._latent
        s = self.shape
        group = s.n_heads // s.n_kv_heads
        dq = s.head_dim * s.has_nope + s.d_rope
        keys = self.v_up.new_zeros(s.n_heads, dq, s.d_c + s.d_rope)
        if s.has_nope:
            keys[:, : s.head_dim, : s.d_c] = self.k_up.detach().repeat_interleave(group, dim=0)
        keys[:, dq - s.d_rope:, s.d_c:] = torch.eye(s.d_rope, dtype=keys.dtype, device=keys.device)
        values = self.v_up.detach().repeat_interleave(group, dim=0)
        padded = values if dq == s.head_dim else F.pad(values, (0, 0, 0, dq - s.head_dim))
        return LatentWeights(keys, values, padded)

    def absorbed_queries(self, p: Projections) -> torch.Tensor:
        """Queries against latent rows [b, t, h, d_c + d_rope]: k_up folded into the no-RoPE part.

        The result is a head-major buffer seen as [b, t, h, .] (the kernel takes strided queries), so no
        copy is needed to bring heads back inside the batch.
        """
        b, t = p.rows.shape[:2]
        q = self.queries(p).reshape(b * t, self.shape.n_heads, -1).transpose(0, 1)
        return torch.bmm(q, self.latent_weights().keys).transpose(0, 1).view(b, t, self.shape.n_heads, -1)

    def absorbed_output(self, out_latent: torch.Tensor) -> torch.Tensor:
        """Project attention-weighted latents [b, t, h, >= d_c] through v_up and o_proj to [b, t, d_model]."""
        s = self.shape
        b, t = out_latent.shape[:2]
        o = out_latent.reshape(b * t, s.n_heads, -1)[..., : s.d_c].transpose(0, 1)
        o = torch.bmm(o, self.latent_weights().values.transpose(1, 2))  # [h, b*t, head_dim]
        return self.o_proj(o.transpose(0, 1).reshape(b, t, s.n_heads * s.head_dim))
