"""A paged latent KV cache: per layer `[num_blocks, 64, 1, width]`, blocks handed to sequences as they grow."""
from __future__ import annotations

import torch

BLOCK = 64  # tokens per page, the decode kernel's page size


class CacheFullError(RuntimeError):
    """No free block is left; free finished sequences or make a larger cache."""


class PagedLatentCache:
    """Latent rows of many sequences; `kv[layer]` is the kernel's k_cache for that layer."""

    def __init__(self, num_layers: int, width: int, num_blocks: int, dtype: torch.dtype = torch.float32,
                 device: str | torch.device = "cpu") -> None:
        self.kv = torch.zeros(num_layers, num_blocks, BLOCK, 1, width, dtype=dtype, device=device)
        self._free = list(range(num_blocks - 1, -1, -1))
        self._blocks: dict[int, list[int]] = {}
        self._lengths: dict[int, int] = {}
        self._next = 0

    def add(self) -> int:
        """Start an empty sequence; returns its id."""
        seq, self._next = self._next, self._next + 1
        self._blocks[seq], self._lengths[seq] = [], 0
        return seq

    def free(self, seq: int) -> None:
        """Forget a sequence and return its blocks."""
        self._free.extend(reversed(self._blocks.pop(seq)))
        del self._lengths[seq]

    def length(self, seq: int) -> int:
        """Tokens cached for `seq`."""
        return self._lengths[seq]

    def append(self, seq: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Reserve n more positions of `seq`; returns their (block ids, offsets) as long tensors [n]."""
        start = self._lengths[seq]
        self.grow(seq, n)
        pos = torch.arange(start, start + n)
        table = torch.tensor(self._blocks[seq], dtype=torch.long)
        return table[pos // BLOCK].to(self.kv.device), (pos % BLOCK).to(self.kv.device)

    def grow(self, seq: int, n: int) -> list[int]:
        """Reserve n more positions of `seq` without building tensors; returns the blocks newly taken."""
        blocks = self._blocks[seq]
        need = -(-(self._lengths[seq] + n) // BLOCK) - len(blocks)
        if need > len(self._free):
            raise CacheFullError(f"cache full: {need} more blocks of {BLOCK} tokens needed, {len(self._free)} free")
        new = [self._free.pop() for _ in range(need)]
        blocks.extend(new)
        self._lengths[seq] += n
        return new

    def blocks(self, seq: int) -> list[int]:
        """Block ids of `seq` in position order."""
        return self._blocks[seq]

    @property
    def num_blocks(self) -> int:
        """Blocks in the pool."""
        return self.kv.shape[1]

    @property
    def num_free(self) -> int:
        """Blocks not held by any sequence."""
        return len(self._free)

    def write(self, layer: int, slots: tuple[torch.Tensor, torch.Tensor], rows: torch.Tensor) -> None:
        """Store rows [n, width] of one layer at slots from `append`."""
        self.kv[layer, slots[0], slots[1], 0] = rows.to(self.kv.dtype)

    def block_table(self, seqs: list[int]) -> torch.Tensor:
        """int32 [b, max_blocks] block ids of `seqs` (unused entries 0)."""
        width = max(len(self._blocks[s]) for s in seqs)
        table = torch.zeros(len(seqs), max(width, 1), dtype=torch.int32)
        for row, s in enumerate(seqs):
            table[row, : len(self._blocks[s])] = torch.tensor(self._blocks[s], dtype=torch.int32)
        return table.to(self.kv.device)

    def seqlens(self, seqs: list[int]) -> torch.Tensor:
        """int32 [b] cached lengths of `seqs`."""
        return torch.tensor([self._lengths[s] for s in seqs], dtype=torch.int32, device=self.kv.device)
