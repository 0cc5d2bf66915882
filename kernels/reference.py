"""Torch reference of MLA decode over a paged KV cache: the oracle for every test, and the portable path.

Vectorized over the batch (pages gathered through the block table, masks from lengths and causality),
so it runs on CPU or GPU without a per-sequence Python loop and without a host synchronization.
"""

from __future__ import annotations

import torch


def mla_decode_reference(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    block_table: torch.Tensor,
    cache_seqlens: torch.Tensor,
    head_dim_v: int,
    softmax_scale: float,
    causal: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (out[b,s_q,h_q,d_v] in q.dtype, lse fp32[b,h_q,s_q]) computed in fp32; empty rows give 0 / +inf."""
    b, s_q, h_q, d_qk = q.shape
    num_blocks, page, h_kv, _ = k_cache.shape
    g = h_q // h_kv
    max_blocks = block_table.shape[1]
    length = max_blocks * page
    # Gather every page the table can name; unused slots may hold garbage ids, so clamp and mask later.
    ids = block_table.long().clamp(0, num_blocks - 1)
    k = k_cache[ids].reshape(b, length, h_kv, d_qk).permute(0, 2, 1, 3).float()  # [b, h_kv, L, d]
    seqlens = cache_seqlens.to(q.device, torch.long)
    pos = torch.arange(length, device=q.device)
    qi = torch.arange(s_q, device=q.device)
    # Query i sees keys [0, lim_i): all of them, or up to s_k - s_q + i under causality.
    lim = seqlens[:, None].expand(b, s_q)
    if causal:
        lim = (seqlens[:, None] - s_q + 1 + qi[None, :]).clamp(min=0)
    visible = pos[None, None, :] < lim[:, :, None]  # [b, s_q, L]
    key_valid = pos[None, :] < seqlens[:, None]  # [b, L]
    k = torch.where(key_valid[:, None, :, None], k, torch.zeros((), device=k.device))
    v = k[..., :head_dim_v]
    # Rows ordered (query i, head j of the group) per kv head, as the kernels order them.
    qf = q.float().reshape(b, s_q, h_kv, g, d_qk).permute(0, 2, 1, 3, 4).reshape(b, h_kv, s_q * g, d_qk)
    scores = torch.matmul(qf, k.transpose(-1, -2)) * softmax_scale  # [b, h_kv, s_q*g, L]
    mask = visible.repeat_interleave(g, dim=1)[:, None]  # [b, 1, s_q*g, L]
    scores = scores.masked_fill(~mask, float("-inf"))
    lse = torch.logsumexp(scores, dim=-1)  # -inf where a row sees nothing
    empty = torch.isneginf(lse)
    probs = torch.exp(scores - torch.where(empty, torch.zeros_like(lse), lse)[..., None])
    out = torch.matmul(probs, v)  # rows with nothing visible: all-zero probs give 0
    lse = torch.where(empty, torch.full_like(lse, float("inf")), lse)
    out = out.reshape(b, h_kv, s_q, g, head_dim_v).permute(0, 2, 1, 3, 4).reshape(b, s_q, h_q, head_dim_v)
    lse = lse.reshape(b, h_kv, s_q, g).permute(0, 1, 3, 2).reshape(b, h_q, s_q)
    return out.to(q.dtype), lse
