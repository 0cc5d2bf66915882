"""What one Spark task did with the model: the numbers a worker reports back to the driver after its partition."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

Report = Callable[["TaskStats"], None]  # where a worker hands its TaskStats (the pipeline's accumulator)


@dataclass(frozen=True)
class TaskStats:
    """One task's work: wall time against the engine's own time, items and tokens in and out."""

    stage: int
    partition: int
    attempt: int
    seconds: float  # wall time of the task's model work, from its first input batch to its last output
    engine_seconds: float  # time the engine worked: device time of embedding batches, or the generation loop
    items: int  # documents or prompts
    tokens_in: int  # tokens embedded, or prompt tokens
    tokens_out: int  # new tokens generated (0 for embeddings)

    @property
    def engine_share(self) -> float:
        """Engine time over task time: 1.0 means the model never waited on Spark, Arrow or the tokenizer."""
        return self.engine_seconds / self.seconds if self.seconds else 0.0


class TaskClock:
    """Counts a task's items and tokens and times it, then reports a TaskStats to `report` (if any)."""

    def __init__(self, report: Report | None) -> None:
        self.report, self.started = report, time.perf_counter()
        self.items = self.tokens_in = self.tokens_out = 0

    def add(self, items: int, tokens_in: int, tokens_out: int = 0) -> None:
        """Count work done."""
        self.items += items
        self.tokens_in += tokens_in
        self.tokens_out += tokens_out

    def finish(self, engine_seconds: float) -> None:
        """Report this task's TaskStats (stage, partition and attempt from Spark's TaskContext, if any)."""
        if self.report is None:
            return
        from mlabatch.udfs.devices import task_context

        context = task_context()
        where = (context.stageId(), context.partitionId(), context.attemptNumber()) if context else (0, 0, 0)
        self.report(TaskStats(*where, time.perf_counter() - self.started, engine_seconds, self.items,
                              self.tokens_in, self.tokens_out))
