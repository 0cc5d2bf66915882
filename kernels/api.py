"""Public FlashMLA-compatible API: get_mla_metadata and flash_mla_with_kvcache."""

from __future__ import annotations

from types import ModuleType

import torch
from torch.utils.weak import WeakIdKeyDictionary

from . import backends, build, scheduler
from .limits import GPU_SCHED_MAX_BATCH
from .reference import mla_decode_reference
from .validate import KERNEL_DTYPES, REFERENCE_DTYPES, check_inputs, check_metadata


def get_mla_metadata(
    cache_seqlens: torch.Tensor, num_q_tokens_per_head_k: int, num_heads_k: int, head_dim_qk: int = 576
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (tile_scheduler_metadata int32[num_sm_parts, METADATA_SIZE], num_splits int32[b+1]) on cache_seqlens' device.

    head_dim_qk (our addition, optional) lets narrow heads (<= TWO_CTA_MAX_D_QK; limits.py has both constants)
    get the faster two-CTAs-per-SM schedule; any metadata is correct for any head dims.
    """
    if cache_seqlens.dtype != torch.int32 or cache_seqlens.dim() != 1 or cache_seqlens.numel() < 1:
        raise ValueError("cache_seqlens must be a non-empty 1-D int32 tensor")
    if num_q_tokens_per_head_k < 1 or num_heads_k < 1:
        raise ValueError("num_q_tokens_per_head_k (= s_q * h_q // h_kv) and num_heads_k must be >= 1")
    device = cache_seqlens.device
    parts = scheduler.num_sm_parts(scheduler.device_num_sms(device), num_q_tokens_per_head_k, num_heads_k, head_dim_qk)
    if device.type == "cuda" and backends.requested(None) != "torch" and cache_seqlens.numel() <= GPU_SCHED_MAX_BATCH:
        ext, _ = build.load_extension()
        if ext is not None:
            return tuple(ext.mla_metadata(cache_seqlens, parts))  # type: ignore[return-value]
    return scheduler.schedule(cache_seqlens, parts)


def flash_mla_with_kvcache(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    block_table: torch.Tensor,
    cache_seqlens: torch.Tensor,
    head_dim_v: int,
    tile_scheduler_metadata: torch.Tensor,
    num_splits: torch.Tensor,
    softmax_scale: float | None = None,
    causal: bool = False,
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode MLA attention over a paged cache; return (out[b,s_q,h_q,head_dim_v] in q.dtype, lse fp32[b,h_q,s_q])."""
    d_qk = q.shape[-1]
    dims = (d_qk, head_dim_v)
    name, _ = backends.choose(backend, q.device, q.dtype, dims)
    check_inputs(q, k_cache, block_table, cache_seqlens, head_dim_v, REFERENCE_DTYPES if name == "torch" else KERNEL_DTYPES)
    check_metadata(tile_scheduler_metadata, num_splits, q.shape[0])
    scale = float(d_qk**-0.5 if softmax_scale is None else softmax_scale)
    if name == "torch":
        return mla_decode_reference(q, k_cache, block_table, cache_seqlens, head_dim_v, scale, causal)
    if name == "cuda":
        ext, _ = build.load_extension()
        out, lse = ext.mla_decode(  # type: ignore[union-attr]
            q, k_cache, block_table, cache_seqlens, head_dim_v, tile_scheduler_metadata, num_splits, scale, causal
        )
        return out, lse
    fm, _ = backends.flash_mla_module()
    s_q, h_q, h_kv = q.shape[1], q.shape[2], k_cache.shape[2]
    meta, splits = _flashmla_metadata(fm, tile_scheduler_metadata, cache_seqlens, s_q * h_q // h_kv, h_kv)  # type: ignore[arg-type]
    return fm.flash_mla_with_kvcache(  # type: ignore[union-attr]
        q, k_cache, block_table, cache_seqlens, head_dim_v, meta, splits, softmax_scale=scale, causal=causal
    )


# FlashMLA's own metadata for each metadata tensor of ours, by call shape: made by the first flashmla call that passes
# it and reused by the calls after (a decode step's layers share one), as FlashMLA's callers reuse theirs. FlashMLA's
# current get_mla_metadata returns an empty object that its first flash_mla_with_kvcache call fills; older versions
# return the tensors. Keys are weak: an entry goes when our metadata tensor does.
_FLASHMLA_METADATA: WeakIdKeyDictionary = WeakIdKeyDictionary()


def _flashmla_metadata(
    fm: ModuleType, ours: torch.Tensor, cache_seqlens: torch.Tensor, num_q_tokens_per_head_k: int, num_heads_k: int
) -> tuple[object, object]:
    """Return FlashMLA's (metadata, num_splits) for a call given our metadata `ours`, made once per tensor and shape."""
    per_shape = _FLASHMLA_METADATA.setdefault(ours, {})
    key = (num_q_tokens_per_head_k, num_heads_k)
    if key not in per_shape:
        per_shape[key] = fm.get_mla_metadata(cache_seqlens, num_q_tokens_per_head_k, num_heads_k)
    return per_shape[key]
