"""Host-side batching for the embedding engine: token-budgeted plans and packed host batches.

Batches hold only real tokens (no padding, see packed_encoder); the engine packs them on a background
thread (models.background) so packing overlaps the device.
"""
from __future__ import annotations

from dataclasses import dataclass
from itertools import chain

import numpy as np
import torch

from mlabatch.models.varlen import PackedLayout


@dataclass
class HostBatch:
    """One packed batch in host memory, as one int64 buffer: token ids, then output rows, then cumulative lengths.

    One buffer means one page-locked copy and one upload per batch (pinning many small tensors per
    batch costs more than the batch's compute); the per-token layout is built on the device.
    """

    buffer: torch.Tensor  # int64 [T + b + b + 1]
    tokens: int  # T
    max_len: int

    @classmethod
    def pack(cls, ids: list[list[int]], rows: list[int], pin: bool) -> "HostBatch":
        """Pack token id lists and their result rows (page-locked when `pin`, so the upload is asynchronous)."""
        lengths = [len(x) for x in ids]
        tokens, b = sum(lengths), len(ids)
        buffer = np.empty(tokens + 2 * b + 1, dtype=np.int64)
        buffer[:tokens] = np.fromiter(chain.from_iterable(ids), dtype=np.int64, count=tokens)
        buffer[tokens:tokens + b] = rows
        buffer[tokens + b] = 0
        np.cumsum(lengths, out=buffer[tokens + b + 1:])
        host = torch.from_numpy(buffer)
        return cls(host.pin_memory() if pin else host, tokens, max(lengths))

    def to(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, PackedLayout]:
        """(rows, ids, layout) on the device: one asynchronous upload, the layout computed there."""
        data = self.buffer.to(device, non_blocking=True)
        t = self.tokens
        b = (data.numel() - t - 1) // 2
        ids, rows, cu = data[:t], data[t:t + b], data[t + b:]
        lengths = cu.diff()
        seq_index = torch.repeat_interleave(torch.arange(b, device=device), lengths, output_size=t)
        positions = torch.arange(t, device=device) - torch.repeat_interleave(cu[:-1], lengths, output_size=t)
        return rows, ids, PackedLayout(cu.int(), seq_index, positions, self.max_len)


def plan_batches(lengths: list[int], token_budget: int) -> list[list[int]]:
    """Row indices grouped by ascending length so each group holds at most `token_budget` tokens.

    Texts with no tokens at all (possible with tokenizers that add no special tokens) are left out:
    their embedding stays zero.
    """
    batches: list[list[int]] = []
    current: list[int] = []
    used = 0
    for i in sorted((i for i, n in enumerate(lengths) if n), key=lengths.__getitem__):
        if current and used + lengths[i] > token_budget:
            batches.append(current)
            current, used = [], 0
        current.append(i)
        used += lengths[i]
    if current:
        batches.append(current)
    return batches
