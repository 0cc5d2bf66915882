"""The lines every incremental job's end-of-run summary starts with: what ran, and what the run read."""
from __future__ import annotations

from mlabatch.pipelines.incremental import RunStats


def head_lines(job: str, work: str, stats: RunStats, processed: str) -> list[str]:
    """`job` ("embed"), `work` ("embedding"), and `processed` naming what was processed ("documents embedded")."""
    return [
        (f"mlabatch {job}: finished in {stats.seconds:.1f} s of {work}" if stats.new else
         f"mlabatch {job}: nothing new or changed to {job}"),
        f"  rows read            {stats.rows_read:,} ({stats.rows_without_id} without id, "
        f"{stats.duplicate_ids} duplicated ids)",
        f"  {processed:<20} {stats.new:,}   unchanged (skipped) {stats.skipped:,}   "
        f"gone from the source {stats.deleted:,}",
    ]


def task_lines(stats: RunStats, items: str) -> list[str]:
    """How busy the model stage kept its device: engine time over task time, and each task's rate."""
    if not stats.tasks:
        return []
    shares = [t.engine_share for t in stats.tasks]
    rates = [t.items / t.seconds for t in stats.tasks if t.seconds]
    tokens_out = sum(t.tokens_out for t in stats.tasks)
    return [
        f"  model tasks          {len(stats.tasks)}: engine busy {stats.engine_share:.0%} of task time "
        f"(tasks {min(shares):.0%} to {max(shares):.0%}), {min(rates, default=0):,.1f} to "
        f"{max(rates, default=0):,.1f} {items}/s per task",
        f"  tokens per task      {sum(t.tokens_in for t in stats.tasks) // len(stats.tasks):,} in"
        + (f", {tokens_out // len(stats.tasks):,} out" if tokens_out else ""),
    ]
