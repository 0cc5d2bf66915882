"""mlabatch.kernels: MLA decode over a paged latent KV cache, with FlashMLA's original interface.

Usage (k_cache [num_blocks, PAGE_SIZE, h_kv, d_qk]; V = first head_dim_v columns of K):

    from mlabatch.kernels import get_mla_metadata, flash_mla_with_kvcache, info
    meta, splits = get_mla_metadata(cache_seqlens, s_q * h_q // h_kv, h_kv, head_dim_qk=d_qk)  # once per step
    out, lse = flash_mla_with_kvcache(q, k_cache, block_table, cache_seqlens, head_dim_v,
                                      meta, splits, softmax_scale=None, causal=True)
    # q [b, s_q, h_q, d_qk] bf16/fp16 (fp32 on the torch backend); block_table int32 [b, max_blocks];
    # cache_seqlens int32 [b]; out [b, s_q, h_q, head_dim_v] in q.dtype; lse fp32 [b, h_q, s_q].
    # Empty rows give out 0, lse +inf. Dims: d_v in SUPPORTED_D_V, d_qk - d_v in SUPPORTED_D_ROPE;
    # kernel_dims(d_c, d_rope) fits a model's latent row to them (limits.py owns every kernel constant).
    info()  # {"backend": "cuda" | "flashmla" | "torch", "reason": ...}; force with backend= or
            # MLABATCH_MLA_BACKEND in {auto, cuda, flashmla, torch}. Metadata and attention launch
            # no host sync, so a decode step can be captured in a CUDA graph. CUDA is never touched at import.
"""

from .api import flash_mla_with_kvcache, get_mla_metadata
from .backends import info
from .limits import PAGE_SIZE, SUPPORTED_D_ROPE, SUPPORTED_D_V
from .validate import kernel_dims

__all__ = [
    "PAGE_SIZE",
    "SUPPORTED_D_ROPE",
    "SUPPORTED_D_V",
    "flash_mla_with_kvcache",
    "get_mla_metadata",
    "info",
    "kernel_dims",
]
