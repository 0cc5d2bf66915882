"""Continuous-batching scheduler over a paged latent cache: who is prefilled, who decodes, who waits.

Prompts wait in arrival order and are admitted while the batch has room, the prefill token budget
allows and the pool has their blocks (plus a small watermark). Running sequences take a new block
every 64 tokens; when none is free the most recently admitted one is preempted: its blocks are freed
and it waits again at the front, to be recomputed from prompt + tokens so far (outputs are unchanged,
sampling noise depends only on (seed, step)). Nothing ever fails for lack of cache.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from mlabatch.models.paged_cache import BLOCK, PagedLatentCache
from mlabatch.models.sampling import SamplingParams


@dataclass(eq=False)
class Sequence:
    """One prompt's progress; `cache_id` is set while it holds cache blocks."""

    index: int
    prompt: list[int]
    params: SamplingParams
    max_len: int  # prompt + generated tokens may not exceed this (the context limit)
    truncated: bool = False
    generated: list[int] = field(default_factory=list)
    cache_id: int | None = None
    finish_reason: str | None = None
    preemptions: int = 0

    @property
    def total(self) -> int:
        """Prompt plus generated tokens."""
        return len(self.prompt) + len(self.generated)

    def prefill_ids(self) -> list[int]:
        """What to prefill: the prompt, plus generated tokens when recomputing after a preemption."""
        return self.prompt + self.generated[:-1] if self.generated else self.prompt


class Scheduler:
    """Waiting queue, running batch and block accounting for one `PagedLatentCache`."""

    def __init__(self, cache: PagedLatentCache, max_batch: int, prefill_token_budget: int) -> None:
        self.cache = cache
        self.max_batch = max_batch
        self.prefill_token_budget = prefill_token_budget
        self.watermark = max(1, cache.num_free // 100)
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.preemptions = 0
        self.grown: list[Sequence] = []

    def add(self, seqs: list[Sequence]) -> None:
        """Queue sequences in order."""
        self.waiting.extend(seqs)

    @property
    def done(self) -> bool:
        """True when nothing waits or runs."""
        return not self.waiting and not self.running

    def admit(self) -> list[Sequence]:
        """Waiting sequences to prefill now, in order; each gets its cache blocks reserved."""
        admitted: list[Sequence] = []
        tokens, free = 0, self.cache.num_free
        while self.waiting and len(self.running) + len(admitted) < self.max_batch:
            seq = self.waiting[0]
            ids = seq.prefill_ids()
            need = -(-len(ids) // BLOCK)
            alone = not self.running and not admitted
            if need > free - (0 if alone else self.watermark):
                break
            if admitted and tokens + len(ids) > self.prefill_token_budget:
                break
            self.waiting.popleft()
            tokens, free = tokens + len(ids), free - need
            admitted.append(seq)
        return admitted

    def can_admit(self, running: int) -> bool:
        """Whether the next waiting sequence would be admitted beside `running` others now."""
        if not self.waiting or running >= self.max_batch:
            return False
        need = -(-len(self.waiting[0].prefill_ids()) // BLOCK)
        return need <= self.cache.num_free - (self.watermark if running else 0)

    def try_reserve(self, rows: list[Sequence]) -> bool:
        """Room for one more token of each of `rows` if the pool has it without preempting; sets `grown`."""
        need = sum(1 for s in rows if self.cache.length(s.cache_id) == BLOCK * len(self.cache.blocks(s.cache_id)))
        if need > self.cache.num_free:
            return False
        self.grown = [s for s in rows if self.cache.grow(s.cache_id, 1)]
        return True

    def start(self, seq: Sequence, cache_id: int) -> None:
        """Mark an admitted, prefilled sequence as running."""
        seq.cache_id = cache_id
        self.running.append(seq)

    def reserve_decode_slots(self) -> bool:
        """Give every running sequence room for its next token, preempting the newest when the pool is empty.

        Returns True when the running batch changed (a preemption); `grown` lists who took a new block.
        """
        changed = False
        self.grown = []
        for seq in list(self.running):
            if seq.cache_id is None:  # preempted earlier in this loop
                continue
            while (self.cache.length(seq.cache_id) % BLOCK == 0
                   and self.cache.length(seq.cache_id) // BLOCK >= len(self.cache.blocks(seq.cache_id))
                   and self.cache.num_free == 0):
                victim = self.running[-1]
                self._preempt(victim)
                changed = True
                if victim is seq:
                    break
            if seq.cache_id is not None and self.cache.grow(seq.cache_id, 1):
                self.grown.append(seq)
        return changed

    def _preempt(self, seq: Sequence) -> None:
        self.running.remove(seq)
        self.cache.free(seq.cache_id)
        seq.cache_id = None
        seq.preemptions += 1
        self.preemptions += 1
        self.waiting.appendleft(seq)

    def finish(self, seq: Sequence, reason: str) -> None:
        """End a sequence (running or just prefilled) and free its blocks."""
        seq.finish_reason = reason
        if seq in self.running:
            self.running.remove(seq)
        if seq.cache_id is not None:
            self.cache.free(seq.cache_id)
            seq.cache_id = None
