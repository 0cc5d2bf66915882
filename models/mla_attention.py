"""Multi-head Latent Attention converted from MHA/GQA: one cached row `[c ; k_rope]` per token for all heads.

Head h (KV group g) scores `q_nope_h . (k_up[g] c) + rope(q_rope_h) . rope(k_rope)` and reads
`v_up[g] c`. The non-absorbed form (prefill, encoders) materializes K and V (one matmul each) and runs
FlashAttention varlen or SDPA; the absorbed form (decode) moves k_up into the query and v_up after the
kernel, which reads only latent rows.
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
    """One layer's projected inputs, views of the fused projection output: cache rows `[c ; rope(k_rope)]`
    [b, t, d_c + d_rope] and queries `[q_nope_h ; rope(q_rope_h)]` [b, t, h, head_dim*has_nope + d_rope]."""

    rows: torch.Tensor
    queries: torch.Tensor


class LatentWeights(NamedTuple):
    """Per-query-head maps of cache rows `[c ; k_rope]`: head h's key is `keys[h] @ row` (k_up on c, the
    identity on the RoPE part; the same matrix absorbs queries), its value `values[h] @ c`."""

    keys: torch.Tensor  # [h, dq, d_c + d_rope], dq = head_dim*has_nope + d_rope
    values: torch.Tensor  # [h, head_dim, d_c]
    padded_values: torch.Tensor  # values with zero rows up to dq


@dataclass(frozen=True)
class MLAShape:
    """Sizes of one converted attention layer; `has_nope` is False when every key stays RoPE'd exactly.

    `qk_norm_eps` is set for sources that RMS-normalize each query and key head before RoPE (Qwen3). With
    every key kept (has_nope False) the norm runs on the RoPE'd part, per head. With compressed keys it runs
    first: `pre` projects x to the source's keys, values and queries `[k | v | q]`, the norms turn them into
    `u = [k^ | v | q^]`, and the latent, the RoPE'd key and the queries are linear maps of u (`in_features`).
    """

    d_model: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    d_c: int
    d_rope: int
    has_nope: bool
    qk_norm_eps: float | None = None

    @property
    def normed_inputs(self) -> bool:
        """Whether the projections read the normalized source keys, values and queries instead of x."""
        return self.qk_norm_eps is not None and self.has_nope

    @property
    def in_features(self) -> int:
        """Width of what the projections read: x, or `[k^ | v | q^]` (`normed_inputs`)."""
        if self.normed_inputs:
            return (2 * self.n_kv_heads + self.n_heads) * self.head_dim
        return self.d_model

    @property
    def rope_unit(self) -> int:
        """Width of one RoPE rotation (rotate-half) block: a head, or all of d_rope when it is narrower."""
        return min(self.d_rope, self.head_dim)


class MLAAttention(nn.Module):
    """One converted attention layer; RoPE tables come from the caller (None for learned positions)."""

    def __init__(self, shape: MLAShape) -> None:
        super().__init__()
        s = shape
        self.shape = s
        self.scale = s.head_dim ** -0.5  # the source model's scores are reproduced, so its scale is kept
        d_in = s.in_features
        self.kv_down = nn.Linear(d_in, s.d_c, bias=False)
        self.v_up = nn.Parameter(torch.zeros(s.n_kv_heads, s.head_dim, s.d_c))
        self.o_proj = nn.Linear(s.n_heads * s.head_dim, s.d_model)
        if s.has_nope:
            self.q_nope = nn.Linear(d_in, s.n_heads * s.head_dim)
            self.k_up = nn.Parameter(torch.zeros(s.n_kv_heads, s.head_dim, s.d_c))
        if s.d_rope:
            self.q_rope = nn.Linear(d_in, s.n_heads * s.d_rope)
            self.k_rope = nn.Linear(d_in, s.d_rope)
        if s.normed_inputs:
            self.pre = nn.Linear(s.d_model, d_in)
        if s.qk_norm_eps is not None:
            self.q_norm = nn.RMSNorm(s.head_dim, eps=s.qk_norm_eps)
            self.k_norm = nn.RMSNorm(s.head_dim, eps=s.qk_norm_eps)
        self._fused: tuple[torch.Tensor, torch.Tensor] | None = None  # set by fuse()
        self._latent: LatentWeights | None = None  # set by fuse()

    def fuse(self) -> None:
        """Replace the input projections by one matmul and keep the per-head latent weights.

        The fused output is laid out `[c | k_rope | q_nope_0 q_rope_0 | q_nope_1 q_rope_1 | ...]`: cache rows
        and per-head queries are then views of it, and k_rope with every q_rope sit one stride apart, so
        RoPE rotates them all in place at once. The separate projection modules are dropped (their weights
        live on in the fused tensor). Call once, after the module reached its device and dtype.
        """
        s = self.shape
        heads = []
        for name, width in (("q_nope", s.head_dim * s.has_nope), ("q_rope", s.d_rope)):
            if width:
                m = getattr(self, name)
                bias = m.bias.detach() if m.bias is not None else m.weight.new_zeros(m.out_features)
                heads.append((m.weight.detach().unflatten(0, (s.n_heads, width)), bias.unflatten(0, (s.n_heads, width))))
        q_weight = torch.cat([w for w, _ in heads], dim=1).flatten(0, 1)
        q_bias = torch.cat([b for _, b in heads], dim=1).flatten()
        keys = [self.kv_down] + ([self.k_rope] if s.d_rope else [])
        weight = torch.cat([m.weight.detach() for m in keys] + [q_weight])
        bias = torch.cat([m.bias.detach() if m.bias is not None else weight.new_zeros(m.out_features) for m in keys]
                         + [q_bias])
        for name in ("kv_down", "k_rope", "q_rope", "q_nope"):
            if hasattr(self, name):
                delattr(self, name)
        self._fused = (weight, bias)
        self._latent = self.latent_weights()

    def project(self, x: torch.Tensor, rope: RopeTables | None) -> Projections:
        """Every input projection of x [..., d_model] from one matmul, keys and queries RoPE'd in place."""
        if self._fused is None:
            raise RuntimeError("MLAAttention.fuse() must run before the layer is used (the loaders call it)")
        s = self.shape
        if s.normed_inputs:
            u = self.pre(x).unflatten(-1, (-1, s.head_dim))  # [..., kv heads | kv heads | heads, head_dim]
            self._qk_norm(u[..., : s.n_kv_heads, :], u[..., 2 * s.n_kv_heads:, :])
            x = u.flatten(-2)
        y = F.linear(x, *self._fused)
        width, dq = s.d_c + s.d_rope, s.head_dim * s.has_nope + s.d_rope
        if s.d_rope:  # starting dq before the queries, k_rope takes the place of a head's RoPE part
            r = y[..., width - dq:].unflatten(-1, (s.n_heads + 1, dq))[..., dq - s.d_rope:]
            if s.qk_norm_eps is not None and not s.normed_inputs:
                heads = r.unflatten(-1, (-1, s.head_dim))
                self._qk_norm(heads[..., :1, :, :], heads[..., 1:, :, :])
            rope_(r.unflatten(-1, (-1, s.rope_unit)), *rope)
        return Projections(y[..., :width], y[..., width:].unflatten(-1, (s.n_heads, dq)))

    def _qk_norm(self, keys: torch.Tensor, queries: torch.Tensor) -> None:
        """RMS-normalize key heads and query heads [..., head_dim] in place, in float32 as the source does; a
        query's zero chunks (other KV groups, when every key is kept) stay zero."""
        for part, norm in ((keys, self.k_norm), (queries, self.q_norm)):
            x = part.float()
            x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + norm.eps)
            part.copy_(norm.weight * x.to(part.dtype))

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
        out = varlen_attention(p.queries[0], k, v, layout, causal=True, scale=self.scale)
        return self.o_proj(out[..., : self.shape.head_dim].reshape(1, out.shape[0], -1))

    def forward(self, p: Projections, rows: torch.Tensor, mask: torch.Tensor | None = None,
                causal: bool = False) -> torch.Tensor:
        """Non-absorbed attention of projected inputs over cache rows [b, s, d_c + d_rope] through SDPA.

        `mask` is bool [b, s] (True = attend), `causal` aligns query i with key i (t == s).
        """
        b, t = p.rows.shape[:2]
        k, v = self.expand(rows)
        q = p.queries.transpose(1, 2)
        attn_mask = None if mask is None else mask[:, None, None, :]
        out = F.scaled_dot_product_attention(q, k.transpose(1, 2), v.transpose(1, 2), attn_mask=attn_mask,
                                             is_causal=causal, scale=self.scale)
        return self.o_proj(out.transpose(1, 2).reshape(b, t, -1))

    def latent_weights(self) -> LatentWeights:
        """Per-query-head maps from cache rows to keys and values (built once by fuse())."""
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
        q = p.queries.reshape(b * t, self.shape.n_heads, -1).transpose(0, 1)  # a strided view, no copy
        return torch.bmm(q, self.latent_weights().keys).transpose(0, 1).view(b, t, self.shape.n_heads, -1)

    def absorbed_output(self, out_latent: torch.Tensor) -> torch.Tensor:
        """Project attention-weighted latents [b, t, h, >= d_c] through v_up and o_proj to [b, t, d_model]."""
        s = self.shape
        b, t = out_latent.shape[:2]
        o = out_latent.reshape(b * t, s.n_heads, -1)[..., : s.d_c].transpose(0, 1)
        o = torch.bmm(o, self.latent_weights().values.transpose(1, 2))  # [h, b*t, head_dim]
        return self.o_proj(o.transpose(0, 1).reshape(b, t, s.n_heads * s.head_dim))
