"""Kernel test helpers: FlashMLA-style poisoned paged inputs, a plain per-sequence oracle, cos_diff.

Importable as `kernel_oracle` from the tests (pytest puts tests/, the folder of conftest.py, on sys.path).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mlabatch.kernels import PAGE_SIZE
from mlabatch.kernels.limits import FIXED_OVERHEAD, METADATA_SIZE

BAD_BLOCK_ID = 2147480000  # unused block-table slots: any read through them is out of range


@dataclass
class Case:
    """One decode call's inputs: q, paged k_cache, block_table, cache_seqlens."""

    q: torch.Tensor
    k_cache: torch.Tensor
    block_table: torch.Tensor
    cache_seqlens: torch.Tensor


def make_case(
    lens: list[int] | torch.Tensor,
    s_q: int,
    h_q: int,
    h_kv: int,
    d_qk: int,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    extra_blocks: int = 1,
    poison: bool = True,
    seed: int = 0,
) -> Case:
    """Build inputs with randomly permuted pages; KV past each length is NaN, unused table slots out of range."""
    lens_t = torch.as_tensor(lens, dtype=torch.int32)
    b = lens_t.numel()
    nb = (lens_t + PAGE_SIZE - 1) // PAGE_SIZE
    max_blocks = max(int(nb.max()), 1) + extra_blocks
    total = int(nb.sum()) + extra_blocks
    gen = torch.Generator(device).manual_seed(seed)
    k = (torch.randn(total, PAGE_SIZE, h_kv, d_qk, generator=gen, device=device) / 10).clamp(-1, 1)
    q = (torch.randn(b, s_q, h_q, d_qk, generator=gen, device=device) / 10).clamp(-1, 1)
    perm = torch.randperm(total, generator=torch.Generator().manual_seed(seed)).to(torch.int32)
    table = torch.full((b, max_blocks), BAD_BLOCK_ID if poison else 0, dtype=torch.int32)
    offsets = torch.cumsum(nb, 0) - nb
    for i in range(b):  # test setup only: the kernels never loop over the batch in Python
        table[i, : nb[i]] = perm[offsets[i] : offsets[i] + nb[i]]
        if poison:
            tail = int(lens_t[i])
            if tail % PAGE_SIZE:
                k[int(table[i, tail // PAGE_SIZE]), tail % PAGE_SIZE :] = float("nan")
    if poison:
        unused = perm[int(nb.sum()) :].long()
        k[unused.to(device)] = float("nan")
    return Case(q.to(dtype), k.to(dtype), table.to(device), lens_t.to(device))


def plain_attention(case: Case, head_dim_v: int, scale: float, causal: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Oracle: per-sequence, per-query float64 softmax attention over the pages the table names."""
    q, k_cache = case.q.cpu().double(), case.k_cache.cpu().double()
    table, lens = case.block_table.cpu(), case.cache_seqlens.cpu()
    b, s_q, h_q, _ = q.shape
    h_kv = k_cache.shape[2]
    head_of = torch.arange(h_q) // (h_q // h_kv)
    out = torch.zeros(b, s_q, h_q, head_dim_v, dtype=torch.float64)
    lse = torch.full((b, h_q, s_q), float("inf"), dtype=torch.float64)
    for i in range(b):
        n = int(lens[i])
        pages = [k_cache[int(table[i, j])] for j in range((n + PAGE_SIZE - 1) // PAGE_SIZE)]
        if not pages:
            continue
        kv = torch.cat(pages)[:n][:, head_of]  # [n, h_q, d]: each query head's kv head
        for t in range(s_q):
            visible = n - s_q + t + 1 if causal else n
            if visible <= 0:
                continue
            s = torch.einsum("hd,nhd->hn", q[i, t], kv[:visible]) * scale
            lse[i, :, t] = torch.logsumexp(s, 1)
            out[i, t] = torch.einsum("hn,nhd->hd", torch.softmax(s, 1), kv[:visible, :, :head_dim_v])
    return out, lse


def cos_diff(x: torch.Tensor, y: torch.Tensor) -> float:
    """FlashMLA's pass metric 1 - 2<x,y>/(|x|^2+|y|^2), in float64 over finite entries."""
    x, y = x.double().cpu(), y.double().cpu()
    keep = torch.isfinite(x) & torch.isfinite(y)
    x, y = x[keep], y[keep]
    denom = (x * x + y * y).sum()
    if denom == 0:
        return 0.0
    return float(1 - 2 * (x * y).sum() / denom)


def same_nonfinite(x: torch.Tensor, y: torch.Tensor) -> bool:
    """Return True when x and y have +inf, -inf and NaN at exactly the same positions."""
    x, y = x.cpu(), y.cpu()
    return bool(
        torch.equal(torch.isnan(x), torch.isnan(y))
        and torch.equal(torch.isposinf(x), torch.isposinf(y))
        and torch.equal(torch.isneginf(x), torch.isneginf(y))
    )


def packed_schedule(lens: list[int], parts: int) -> tuple[torch.Tensor, torch.Tensor]:
    """FlashMLA's packing as csrc/mla_metadata.cu computes it on the GPU, written plainly: (metadata, num_splits).

    Each part gets ceil(total cost / parts) + FIXED_OVERHEAD and takes requests in order while the rest of the
    next one fits; otherwise it takes what fits of it (a split), paying the overhead again in the next part.
    """
    pages = [(n + PAGE_SIZE - 1) // PAGE_SIZE for n in lens]
    payload = -(-sum(n + FIXED_OVERHEAD for n in pages) // parts) + FIXED_OVERHEAD
    req = blk = split = pieces = 0
    meta, splits = [], [0] * (len(lens) + 1)
    for p in range(parts):
        row = [req, blk, 0, 0, split] + [0] * (METADATA_SIZE - 5)
        remain = float("inf") if p == parts - 1 else payload
        while req < len(lens):
            left = pages[req] - blk
            if remain >= left + FIXED_OVERHEAD:
                remain -= left + FIXED_OVERHEAD
                pieces += split + 1
                splits[req + 1] = pieces
                req, blk, split = req + 1, 0, 0
            else:
                if remain > FIXED_OVERHEAD:
                    blk, split = blk + int(remain - FIXED_OVERHEAD), split + 1
                break
        row[2], row[3] = (req, blk) if blk > 0 else (req - 1, pages[req - 1] if req > 0 else 0)
        meta.append(row)
    return torch.tensor(meta, dtype=torch.int32), torch.tensor(splits, dtype=torch.int32)
