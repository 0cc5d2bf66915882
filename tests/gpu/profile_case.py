"""Two cuda-backend calls of one benchmark case (default b=128 s_q=1 h_q=16 s_k=4096 576/512), for ncu."""

from __future__ import annotations

import sys

import torch

from mlabatch.kernels import flash_mla_with_kvcache, get_mla_metadata

if __name__ == "__main__":
    b, s_q, h_q, s_k, d_qk, d_v = (int(x) for x in (sys.argv[1:] or [128, 1, 16, 4096, 576, 512]))
    nb = s_k // 64
    k_cache = torch.randn(b * nb, 64, 1, d_qk, device="cuda", dtype=torch.bfloat16) / 10
    q = torch.randn(b, s_q, h_q, d_qk, device="cuda", dtype=torch.bfloat16) / 10
    table = torch.randperm(b * nb, device="cuda").to(torch.int32).view(b, nb)
    lens = torch.full((b,), s_k, dtype=torch.int32, device="cuda")
    meta, splits = get_mla_metadata(lens, s_q * h_q, 1, head_dim_qk=d_qk)
    for _ in range(2):
        flash_mla_with_kvcache(q, k_cache, table, lens, d_v, meta, splits, causal=True, backend="cuda")
    torch.cuda.synchronize()
