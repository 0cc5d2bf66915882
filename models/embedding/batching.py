"""Host-side batching for the embedding engine: token-budgeted plans, packed host batches, background threads.

Tokenizing and packing run on daemon threads (the Rust tokenizer releases the GIL), so they overlap
with each other and with the device; batches hold only real tokens (no padding, see packed_encoder).
"""
from __future__ import annotations

import queue
import threading
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

import numpy as np
import torch

from mlabatch.models.varlen import PackedLayout

_DONE = object()


def in_background(make_items: Callable[[], Iterable], depth: int) -> Iterator:
    """Iterate `make_items()` produced on a daemon thread, at most `depth` items ahead.

    An exception raised there is re-raised here; if the consumer stops early (or fails), the thread
    stops too instead of waiting forever on a full queue.
    """
    items: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                items.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in make_items():
                if not put(item):
                    return
            put(_DONE)
        except BaseException as err:  # noqa: BLE001 - re-raised in the consuming thread
            put(err)

    threading.Thread(target=produce, daemon=True).start()
    try:
        while (item := items.get()) is not _DONE:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()


@dataclass
class HostBatch:
    """One packed batch in host memory: output rows, token ids and their layout."""

    rows: torch.Tensor  # int64 [b], rows of the result
    ids: torch.Tensor  # int64 [T]
    layout: PackedLayout

    @classmethod
    def pack(cls, ids: list[list[int]], rows: list[int], pin: bool) -> "HostBatch":
        """Pack token id lists into one flat tensor (page-locked when `pin`, so uploads are asynchronous)."""
        batch = cls(torch.tensor(rows), torch.from_numpy(np.fromiter((t for seq in ids for t in seq), dtype=np.int64)),
                    PackedLayout.from_lengths([len(x) for x in ids]))
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
