"""Shape, dtype and layout checks shared by every backend, with errors that name the supported set, and
`kernel_dims`, which fits a model's latent row (d_c, d_rope) to those sizes."""

from __future__ import annotations

import torch

from .limits import METADATA_SIZE, PAGE_SIZE, SUPPORTED_D_ROPE, SUPPORTED_D_V

SUPPORTED_DIMS = tuple((dv + dr, dv) for dv in SUPPORTED_D_V for dr in SUPPORTED_D_ROPE)
KERNEL_DTYPES = (torch.bfloat16, torch.float16)
REFERENCE_DTYPES = KERNEL_DTYPES + (torch.float32,)


def _braced(values: tuple[int, ...]) -> str:
    """Return values as a set literal in their own order, e.g. "{0, 64}"."""
    return "{" + ", ".join(map(str, values)) + "}"


_DIMS_TEXT = (
    f"d_v in {_braced(SUPPORTED_D_V)} with d_qk = d_v + d_rope, d_rope in {_braced(SUPPORTED_D_ROPE)} "
    f"(e.g. {max(SUPPORTED_D_V) + max(SUPPORTED_D_ROPE)}/{max(SUPPORTED_D_V)})"
)


def kernel_dims(d_c: int, d_rope: int) -> tuple[int, int] | None:
    """The kernel's (head_dim_v, d_rope) for a latent row, or None if the kernel cannot run it.

    V is the first d_c columns when d_c and d_rope are both kernel sizes; otherwise the whole row may be
    presented as V (d_rope 0 to the kernel), the extra output columns being ignored by the up-projection.
    """
    if d_c in SUPPORTED_D_V and d_rope in SUPPORTED_D_ROPE:
        return d_c, d_rope
    if d_c + d_rope in SUPPORTED_D_V:
        return d_c + d_rope, 0
    return None


def check_dims(d_qk: int, d_v: int) -> None:
    """Raise ValueError unless (d_qk, d_v) is one of the supported head-dim pairs."""
    if (d_qk, d_v) not in SUPPORTED_DIMS:
        raise ValueError(f"unsupported head dims d_qk={d_qk}, head_dim_v={d_v}; supported: {_DIMS_TEXT}")


def check_inputs(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    block_table: torch.Tensor,
    cache_seqlens: torch.Tensor,
    head_dim_v: int,
    dtypes: tuple[torch.dtype, ...],
) -> None:
    """Raise ValueError/TypeError on any input the decode kernels do not define."""
    if q.dim() != 4 or k_cache.dim() != 4:
        raise ValueError(
            f"expected q [b, s_q, h_q, d_qk] and k_cache [num_blocks, {PAGE_SIZE}, h_kv, d_qk], "
            f"got q {tuple(q.shape)} and k_cache {tuple(k_cache.shape)}"
        )
    b, s_q, h_q, d_qk = q.shape
    _, page, h_kv, d_k = k_cache.shape
    if page != PAGE_SIZE:
        raise ValueError(f"k_cache page size must be {PAGE_SIZE}, got {page}")
    if d_k != d_qk:
        raise ValueError(f"q and k_cache head dims differ: {d_qk} vs {d_k}")
    check_dims(d_qk, head_dim_v)
    if b < 1 or s_q < 1 or h_kv < 1 or h_q % h_kv != 0:
        raise ValueError(f"need b >= 1, s_q >= 1 and h_q % h_kv == 0; got b={b} s_q={s_q} h_q={h_q} h_kv={h_kv}")
    names = ", ".join(str(d).replace("torch.", "") for d in dtypes)
    if q.dtype not in dtypes or k_cache.dtype != q.dtype:
        raise TypeError(f"unsupported dtypes q={q.dtype} k_cache={k_cache.dtype}; supported (same for both): {names}")
    if block_table.dtype != torch.int32 or cache_seqlens.dtype != torch.int32:
        raise TypeError("block_table and cache_seqlens must be int32")
    if block_table.dim() != 2 or block_table.shape[0] != b or tuple(cache_seqlens.shape) != (b,):
        raise ValueError(
            f"expected block_table [b={b}, max_blocks] and cache_seqlens [b={b}], "
            f"got {tuple(block_table.shape)} and {tuple(cache_seqlens.shape)}"
        )
    devices = {t.device for t in (q, k_cache, block_table, cache_seqlens)}
    if len(devices) != 1:
        raise ValueError(f"all inputs must be on one device, got {sorted(map(str, devices))}")


def check_metadata(tile_scheduler_metadata: torch.Tensor, num_splits: torch.Tensor, batch: int) -> None:
    """Raise ValueError unless the metadata has the shapes get_mla_metadata returns."""
    if tile_scheduler_metadata.dtype != torch.int32 or num_splits.dtype != torch.int32:
        raise TypeError("tile_scheduler_metadata and num_splits must be int32 (from get_mla_metadata)")
    if tile_scheduler_metadata.dim() != 2 or tile_scheduler_metadata.shape[1] != METADATA_SIZE:
        raise ValueError(
            f"tile_scheduler_metadata must be [num_sm_parts, {METADATA_SIZE}], got {tuple(tile_scheduler_metadata.shape)}"
        )
    if tuple(num_splits.shape) != (batch + 1,):
        raise ValueError(f"num_splits must be [b+1={batch + 1}], got {tuple(num_splits.shape)}")
