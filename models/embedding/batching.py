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
    """One packed batch in host memory: output rows, token ids and their layout."""

    rows: torch.Tensor  # int64 [b], rows of the result
    ids: torch.Tensor  # int64 [T]
    layout: PackedLayout

    @classmethod
    def pack(cls, ids: list[list[int]], rows: list[int], pin: bool) -> "HostBatch":
        """Pack token id lists into one flat tensor (page-locked when `pin`, so uploads are asynchronous)."""
        lengths = [len(x) for x in ids]
        flat = np.fromiter(chain.from_iterable(ids), dtype=np.int64, count=sum(lengths))
        batch = cls(torch.tensor(rows), torch.from_numpy(flat), PackedLayout.from_lengths(lengths))
        if pin:
            batch = cls(batch.rows.pin_memory(), batch.ids.pin_memory(), batch.layout.pin_memory())
        return batch

    def to(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, PackedLayout]:
        """(rows, ids, layout) on the device, copied asynchronously from pinned memory."""
        return (self.rows.to(device, non_blocking=True), self.ids.to(device, non_blocking=True),
                self.layout.to(device))


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
