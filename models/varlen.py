"""Packed batches of variable-length sequences and attention within each sequence.

A batch is one [T, ...] tensor of real tokens plus cumulative lengths: no padding enters token-wise
work. Attention runs FlashAttention's varlen kernel through torch on CUDA (bf16/fp16, head dim <= 256)
and masked SDPA over a padded view elsewhere (the CPU, float32, wider heads, values narrower than keys).
"""
from __future__ import annotations

import inspect
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

try:  # torch >= 2.10 ships FlashAttention's variable-length kernel
    from torch.nn.attention.varlen import varlen_attn
except ImportError:  # pragma: no cover - older torch: the padded path below is used
    varlen_attn = None

FLASH_MAX_HEAD_DIM = 256
# torch 2.10 takes `is_causal` and no `scale`; later versions take `window_size` and `scale`.
_VARLEN_ARGS = set(inspect.signature(varlen_attn).parameters) if varlen_attn is not None else set()


@dataclass
class PackedLayout:
    """Where each packed token sits: its sequence, its position, and cumulative lengths."""

    cu_seqlens: torch.Tensor  # int32 [b + 1]
    seq_index: torch.Tensor  # int64 [T]
    positions: torch.Tensor  # int64 [T]
    max_len: int

    @property
    def num_seqs(self) -> int:
        return self.cu_seqlens.numel() - 1

    @classmethod
    def from_lengths(cls, lengths: list[int]) -> "PackedLayout":
        """The layout in host memory for sequences of these (non-zero) lengths."""
        lens = torch.tensor(lengths, dtype=torch.int64)
        seq_index = torch.repeat_interleave(torch.arange(len(lengths)), lens)
        starts = torch.cumsum(lens, 0) - lens
        positions = torch.arange(int(lens.sum())) - torch.repeat_interleave(starts, lens)
        cu = torch.zeros(len(lengths) + 1, dtype=torch.int32)
        cu[1:] = torch.cumsum(lens, 0)
        return cls(cu, seq_index, positions, max(lengths))

    def pin_memory(self) -> "PackedLayout":
        return PackedLayout(self.cu_seqlens.pin_memory(), self.seq_index.pin_memory(),
                            self.positions.pin_memory(), self.max_len)

    def to(self, device: torch.device) -> "PackedLayout":
        """The same layout on `device` (asynchronous from pinned memory)."""
        return PackedLayout(*(t.to(device, non_blocking=True) for t in
                              (self.cu_seqlens, self.seq_index, self.positions)), self.max_len)


def _flash(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: PackedLayout, causal: bool,
           scale: float | None) -> torch.Tensor:
    """FlashAttention varlen (queries, keys and values of one head dim)."""
    kwargs = {}
    if causal:
        kwargs.update({"window_size": (-1, 0)} if "window_size" in _VARLEN_ARGS else {"is_causal": True})
    if scale is not None:
        if "scale" in _VARLEN_ARGS:
            kwargs["scale"] = scale
        else:
            q = q * (scale * math.sqrt(q.shape[-1]))
    out = varlen_attn(q, k, v, layout.cu_seqlens, layout.cu_seqlens, layout.max_len, layout.max_len, **kwargs)
    return out


def varlen_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: PackedLayout,
                     causal: bool = False, scale: float | None = None) -> torch.Tensor:
    """Attention within each sequence; q, k [T, heads, d], v [T, heads, dv] -> [T, heads, dv].

    `causal` lets token i see tokens <= i of its sequence; `scale` defaults to 1/sqrt(d).
    """
    if (varlen_attn is not None and q.is_cuda and q.dtype in (torch.float16, torch.bfloat16)
            and q.shape[-1] <= FLASH_MAX_HEAD_DIM and v.shape[-1] == q.shape[-1]):
        return _flash(q, k, v, layout, causal, scale)
    b, length = layout.num_seqs, layout.max_len
    flat = layout.seq_index * length + layout.positions

    def padded(x: torch.Tensor) -> torch.Tensor:
        out = x.new_zeros(b * length, *x.shape[1:])
        out.index_copy_(0, flat, x)
        return out.view(b, length, *x.shape[1:]).transpose(1, 2)

    valid = torch.zeros(b * length, dtype=torch.bool, device=q.device)
    valid[flat] = True
    mask = valid.view(b, 1, 1, length)
    if causal:
        mask = mask & torch.ones(length, length, dtype=torch.bool, device=q.device).tril()
    out = F.scaled_dot_product_attention(padded(q), padded(k), padded(v), attn_mask=mask, scale=scale)
    return out.transpose(1, 2).reshape(b * length, *v.shape[1:]).index_select(0, flat)
