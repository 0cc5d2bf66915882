"""All block arithmetic of the paged KV cache: which pages a sequence holds and where its tokens go.

The cache is split into pages of BLOCK tokens (the decode kernel's page size). A sequence takes pages as
it grows and gives them all back when it finishes or is preempted; token t of a sequence sits at row
t % BLOCK of its page t // BLOCK.
"""
from __future__ import annotations

import numpy as np

from mlabatch.kernels import PAGE_SIZE
from mlabatch.models.generation.sequence import Sequence

BLOCK = PAGE_SIZE  # tokens per page


class CacheFullError(RuntimeError):
    """No free page is left; the scheduler preempts before this can happen."""


def blocks_for(tokens: int) -> int:
    """Pages needed to hold `tokens` tokens."""
    return -(-tokens // BLOCK)


class BlockManager:
    """The free list of a pool of `num_blocks` pages, and each sequence's pages."""

    def __init__(self, num_blocks: int) -> None:
        self.num_blocks = num_blocks
        self._free = list(range(num_blocks - 1, -1, -1))

    @property
    def num_free(self) -> int:
        """Pages no sequence holds."""
        return len(self._free)

    def take(self) -> int:
        """One page for the caller alone (e.g. the scratch page padded graph rows write to)."""
        return self._free.pop()

    def needs_block(self, seq: Sequence) -> bool:
        """Whether `seq`'s next token starts a new page."""
        return seq.cached == BLOCK * len(seq.blocks)

    def reserve(self, seq: Sequence, n: int) -> bool:
        """Reserve slots for `n` more tokens of `seq`; returns whether it took a new page."""
        need = blocks_for(seq.cached + n) - len(seq.blocks)
        if need > len(self._free):
            raise CacheFullError(f"cache full: {need} more pages of {BLOCK} tokens needed, {len(self._free)} free")
        seq.blocks.extend(self._free.pop() for _ in range(need))
        seq.cached += n
        return need > 0

    def free(self, seq: Sequence) -> None:
        """Return all of `seq`'s pages to the pool."""
        self._free.extend(reversed(seq.blocks))
        seq.blocks, seq.cached = [], 0

    @staticmethod
    def slots(seq: Sequence, start: int, n: int) -> tuple[np.ndarray, np.ndarray]:
        """(page ids, rows in the page) int64 [n] of tokens start .. start + n - 1 of `seq`."""
        positions = np.arange(start, start + n)
        return np.asarray(seq.blocks, dtype=np.int64)[positions // BLOCK], positions % BLOCK
