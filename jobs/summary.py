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
