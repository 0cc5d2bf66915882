"""Continuous-batching scheduler over a paged KV cache: who is prefilled, who decodes, who waits.

Prompts wait in arrival order and are admitted while the batch has room, the prefill token budget
allows and the pool has their pages (plus a small watermark). Running sequences take a new page
every BLOCK tokens; when none is free the most recently admitted one is preempted: its pages are freed
and it waits again at the front, to be recomputed from prompt + tokens so far (outputs are unchanged,
sampling noise depends only on (seed, step)). Nothing ever fails for lack of cache.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from mlabatch.models.generation.block_manager import BlockManager, blocks_for
from mlabatch.models.generation.sequence import Sequence


@dataclass(frozen=True)
class DecodePlan:
    """One decode step: its rows in batch order, and the rows that took a new page for it."""

    rows: list[Sequence]
    grown: list[Sequence]


class Scheduler:
    """Waiting queue and running batch over one BlockManager."""

    def __init__(self, blocks: BlockManager, max_batch: int, prefill_token_budget: int) -> None:
        self.blocks = blocks
        self.max_batch = max_batch
        self.prefill_token_budget = prefill_token_budget
        self.watermark = max(1, blocks.num_free // 100)
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.preemptions = 0

    def add(self, seqs: list[Sequence]) -> None:
        """Queue sequences in order."""
        self.waiting.extend(seqs)

    @property
    def done(self) -> bool:
        """True when nothing waits or runs."""
        return not self.waiting and not self.running

    def admit(self) -> list[Sequence]:
        """Waiting sequences to prefill now, in order; each gets its pages and joins the running batch."""
        admitted: list[Sequence] = []
        tokens = 0
        while self.waiting and len(self.running) + len(admitted) < self.max_batch:
            n = len(self.waiting[0].prefill_ids())
            alone = not self.running and not admitted
            if blocks_for(n) > self.blocks.num_free - (0 if alone else self.watermark):
                break
            if admitted and tokens + n > self.prefill_token_budget:
                break
            seq = self.waiting.popleft()
            self.blocks.reserve(seq, n)
            tokens += n
            admitted.append(seq)
        self.running.extend(admitted)
        return admitted

    def can_admit(self, running: int) -> bool:
        """Whether the next waiting sequence would be admitted beside `running` others now."""
        if not self.waiting or running >= self.max_batch:
            return False
        need = blocks_for(len(self.waiting[0].prefill_ids()))
        return need <= self.blocks.num_free - (self.watermark if running else 0)

    def try_plan(self, rows: list[Sequence]) -> DecodePlan | None:
        """A step of `rows` with a slot for one more token each, or None if that needs a preemption."""
        if sum(self.blocks.needs_block(s) for s in rows) > self.blocks.num_free:
            return None
        return DecodePlan(rows, [s for s in rows if self.blocks.reserve(s, 1)])

    def plan(self) -> DecodePlan:
        """A step of every running sequence, preempting the newest while the pool has no page for the rest."""
        grown = []
        for seq in list(self.running):
            if not seq.blocks:  # preempted earlier in this loop
                continue
            while self.blocks.needs_block(seq) and self.blocks.num_free == 0:
                victim = self.running[-1]
                self._preempt(victim)
                if victim is seq:
                    break
            if seq.blocks and self.blocks.reserve(seq, 1):
                grown.append(seq)
        return DecodePlan(list(self.running), grown)

    def _preempt(self, seq: Sequence) -> None:
        self.running.remove(seq)
        self.blocks.free(seq)
        seq.preemptions += 1
        self.preemptions += 1
        self.waiting.appendleft(seq)

    def finish(self, seq: Sequence, reason: str) -> None:
        """End a sequence (running or just prefilled) and free its pages."""
        seq.finish_reason = reason
        if seq in self.running:
            self.running.remove(seq)
        self.blocks.free(seq)
