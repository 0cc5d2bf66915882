"""Split-KV tile scheduler: which SM part decodes which PAGE_SIZE-token blocks of which sequence.

Every sequence costs ceil(len/PAGE_SIZE) blocks plus a fixed overhead; the costs are laid on one line and cut
into `num_sm_parts` equal spans, so a long sequence can be split across consecutive parts (its pieces
are merged by the combine step). Pure tensor ops on the device of `cache_seqlens`: no host sync, so
the same schedule can be computed inside a captured CUDA graph. This serves the torch backend and batches
beyond GPU_SCHED_MAX_BATCH. The cuda backend schedules with `csrc/mla_metadata.cu` instead: FlashMLA's
sequential packing, which splits a sequence only where it does not fit (a batch of equal lengths splits
nothing, so no partials are written or combined), and which tensor ops cannot express. Any valid
schedule is correct for every kernel.
"""

from __future__ import annotations

import torch

from .limits import FIXED_OVERHEAD, METADATA_SIZE, PAGE_SIZE, Q_TILE_ROWS, TWO_CTA_MAX_D_QK, TWO_CTA_MAX_ROWS

DEFAULT_NUM_SMS = 132  # H100 SXM; used when cache_seqlens is not on a GPU


def num_sm_parts(num_sms: int, num_q_tokens_per_head_k: int, num_heads_k: int, head_dim_qk: int = 576) -> int:
    """Return how many parts the sequences are split into so that parts x heads x row tiles ~ resident CTAs."""
    row_tiles = -(-num_q_tokens_per_head_k // Q_TILE_ROWS)
    ctas_per_sm = 2 if num_q_tokens_per_head_k <= TWO_CTA_MAX_ROWS and head_dim_qk <= TWO_CTA_MAX_D_QK else 1
    return max(ctas_per_sm * num_sms // num_heads_k // row_tiles, 1)


def device_num_sms(device: torch.device) -> int:
    """Return the multiprocessor count of a CUDA device, or the H100 default elsewhere."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return DEFAULT_NUM_SMS


def schedule(cache_seqlens: torch.Tensor, parts: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (metadata int32[parts, METADATA_SIZE], num_splits int32[b+1]) for the given sequence lengths."""
    dev = cache_seqlens.device
    lens = cache_seqlens.to(torch.long)
    nb = (lens + PAGE_SIZE - 1) // PAGE_SIZE
    cost = nb + FIXED_OVERHEAD
    start = torch.cumsum(cost, 0) - cost
    total = cost.sum()
    width = torch.clamp((total + parts - 1) // parts, min=1)
    # Anchor of a sequence on the cost line: its blocks, or one unit for an empty sequence.
    blk0 = start + FIXED_OVERHEAD
    a_lo = torch.where(nb > 0, blk0, start)
    a_hi = torch.where(nb > 0, blk0 + nb, start + 1)
    p = torch.arange(parts, device=dev)
    lo = p * width
    hi = lo + width
    begin_req = torch.searchsorted(a_hi, lo, right=True)
    end_req = torch.searchsorted(a_lo, hi, right=False) - 1
    b = lens.numel()
    bi = begin_req.clamp(max=max(b - 1, 0))
    ei = end_req.clamp(min=0)
    begin_blk = torch.minimum((lo - blk0[bi]).clamp(min=0), nb[bi])
    end_blk = torch.minimum((hi - blk0[ei]).clamp(min=0), nb[ei])
    empty = begin_req > end_req
    begin_split = torch.where(empty, 0, p - a_lo[bi] // width)
    begin_blk = torch.where(empty, 0, begin_blk)
    end_blk = torch.where(empty, 0, end_blk)
    first_part = a_lo // width
    n_splits = (a_hi - 1) // width - first_part + 1
    num_splits = torch.zeros(b + 1, dtype=torch.long, device=dev)
    num_splits[1:] = torch.cumsum(n_splits, 0)
    fields = [begin_req, begin_blk, end_req, end_blk, begin_split]
    meta = torch.stack(fields + [torch.zeros_like(p)] * (METADATA_SIZE - len(fields)), dim=1)
    return meta.to(torch.int32), num_splits.to(torch.int32)
