"""One prompt's progress through the engine: its tokens, settings, cache blocks and how it ended."""
from __future__ import annotations

from dataclasses import dataclass, field

from mlabatch.models.generation.config import SamplingParams


@dataclass(eq=False)
class Sequence:
    """A prompt being continued; `blocks` are its KV cache pages while it holds any (see BlockManager)."""

    index: int  # position in the generate() call's input, so outputs come back in order
    prompt: list[int]
    params: SamplingParams
    max_len: int  # prompt + generated tokens may not exceed this (the context limit)
    truncated: bool = False  # the prompt's beginning was cut to fit the context
    generated: list[int] = field(default_factory=list)
    blocks: list[int] = field(default_factory=list)
    cached: int = 0  # tokens with a cache slot reserved
    finish_reason: str | None = None
    preemptions: int = 0

    @property
    def total(self) -> int:
        """Prompt plus generated tokens."""
        return len(self.prompt) + len(self.generated)

    def prefill_ids(self) -> list[int]:
        """What to prefill: the prompt, plus generated tokens when recomputing after a preemption.

        The last generated token is not prefilled: it is the next decode step's input.
        """
        return self.prompt + self.generated[:-1] if self.generated else self.prompt
