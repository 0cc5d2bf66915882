"""Run the cuda backend once on a few shapes; meant to run under `compute-sanitizer --tool memcheck`."""

from __future__ import annotations

import os
import sys
from pathlib import Path

# One cudaMalloc per tensor: with PyTorch's caching allocator a read just past a tensor lands in the same
# segment, and memcheck sees nothing (the kernels once read a missing request's Q that way).
os.environ.setdefault("PYTORCH_NO_CUDA_MEMORY_CACHING", "1")

import torch  # noqa: E402

from mlabatch.kernels import flash_mla_with_kvcache, get_mla_metadata  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: tests/ holds kernel_oracle
from kernel_oracle import make_case  # noqa: E402

SHAPES = [  # lens, s_q, h_q, h_kv, d_qk, d_v, causal
    ([0, 130, 4097, 1], 2, 16, 1, 576, 512, True),
    ([300, 64, 65], 1, 128, 1, 576, 512, False),
    ([1000] * 8, 1, 9, 1, 320, 256, True),
    ([77, 0, 5000], 4, 12, 3, 384, 384, True),
    ([129, 2], 1, 5, 1, 128, 128, False),
    ([700, 0, 64], 2, 64, 1, 384, 384, True),
    ([1000] * 300, 1, 12, 1, 320, 256, True),
    ([1000, 3, 700], 2, 64, 1, 320, 256, True),  # two row tiles, two buffer sets
    ([64, 1, 20], 1, 32, 1, 320, 256, False),  # a table of 3 columns: the prologue's 4th entry is past it
    ([0, 64, 700, 0, 1, 130] * 50, 1, 32, 1, 320, 256, True),  # parts of several requests, two buffer sets
]

if __name__ == "__main__":
    seed = 0
    for lens, s_q, h_q, h_kv, d_qk, d_v, causal in SHAPES:
        case = make_case(lens, s_q, h_q, h_kv, d_qk, torch.bfloat16, "cuda", extra_blocks=2, seed=seed)
        meta, splits = get_mla_metadata(case.cache_seqlens, s_q * h_q // h_kv, h_kv, head_dim_qk=d_qk)
        out, lse = flash_mla_with_kvcache(case.q, case.k_cache, case.block_table, case.cache_seqlens, d_v, meta, splits,
                                          causal=causal, backend="cuda")
        torch.cuda.synchronize()
        assert not torch.isnan(out).any()
        print("ok", lens, s_q, h_q, h_kv, d_qk, d_v, causal, flush=True)
