"""Host-side batching for the embedding engine: token-budgeted plans and packed host batches.

Batches hold only real tokens (no padding, see packed_encoder); the engine packs them on a background
thread (models.background) so packing overlaps the device.
"""
from __future__ import annotations

from dataclasses import dataclass
from itertools import chain
from typing import Sequence

import numpy as np
import torch

from mlabatch.models.varlen import PackedLayout


def _ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """The concatenation of arange(s, s + n) for each (s, n), in one vectorized step."""
    total = int(lengths.sum())
    before = np.cumsum(lengths) - lengths
    return np.repeat(starts - before, lengths) + np.arange(total, dtype=np.int64)


@dataclass(frozen=True)
class Sequences:
    """Token-id sequences as one flat array, so a stream moves them without a Python object per token:
    sequence i is `ids[cu[i]:cu[i + 1]]`."""

    ids: np.ndarray  # int64 [T]
    cu: np.ndarray  # int64 [n + 1], cu[0] == 0

    @classmethod
    def from_lists(cls, ids: Sequence[Sequence[int]]) -> "Sequences":
        lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
        flat = np.fromiter(chain.from_iterable(ids), dtype=np.int64, count=int(lengths.sum()))
        return cls(flat, np.concatenate([[0], np.cumsum(lengths)]))

    @classmethod
    def from_spans(cls, flat: np.ndarray, starts: np.ndarray, lengths: np.ndarray, prefix: Sequence[int] = (),
                   suffix: Sequence[int] = ()) -> "Sequences":
        """Sequence i: `prefix + flat[starts[i]:starts[i] + lengths[i]] + suffix` (spans may overlap)."""
        p, q = len(prefix), len(suffix)
        cu = np.concatenate([[0], np.cumsum(lengths + p + q)])
        ids = np.empty(int(cu[-1]), dtype=np.int64)
        ids[_ranges(cu[:-1] + p, lengths)] = flat[_ranges(starts, lengths)]
        for j, token in enumerate(prefix):
            ids[cu[:-1] + j] = token
        for j, token in enumerate(suffix):
            ids[cu[1:] - q + j] = token
        return cls(ids, cu)

    def __len__(self) -> int:
        return len(self.cu) - 1

    def __getitem__(self, i: int) -> np.ndarray:
        return self.ids[self.cu[i]:self.cu[i + 1]]

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.cu)

    def take(self, rows: Sequence[int] | np.ndarray) -> "Sequences":
        """The sequences `rows`, in that order."""
        rows = np.asarray(rows, dtype=np.int64)
        lengths = self.cu[rows + 1] - self.cu[rows]
        return Sequences(self.ids[_ranges(self.cu[rows], lengths)], np.concatenate([[0], np.cumsum(lengths)]))


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
    def pack(cls, sequences: Sequences, rows: list[int], pin: bool) -> "HostBatch":
        """Pack the sequences `rows` and the rows themselves (page-locked when `pin`, so the upload is asynchronous)."""
        batch = sequences.take(rows)
        host = torch.from_numpy(np.concatenate([batch.ids, np.asarray(rows, dtype=np.int64), batch.cu]))
        return cls(host.pin_memory() if pin else host, len(batch.ids), int(batch.lengths.max()))

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


def plan_batches(lengths: Sequence[int], token_budget: int) -> list[list[int]]:
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
