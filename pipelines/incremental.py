"""The incremental skeleton every pipeline shares: Delta source -> new or changed rows -> worker stage -> MERGE.

One pass reads the keyed source (one row per id) and drops the ids whose text hash and fingerprint
(model version, settings) are already in the target. Before it writes anything it counts the target's
ids that are gone from the source: more than the allowed share stops the run (DeletionGuardError), as a
wrong source table would otherwise empty the target. Then it works through the new and changed ids in
increments, each one run through the pipeline's worker stage and MERGEd on the pipeline's keys as a
commit of its own. Once every increment is in, one last MERGE deletes the stale rows: those of ids gone
from the source and those a changed id no longer has.

A run killed at any point and run again redoes at most the increment it was in: the ids it committed
are up to date and skipped, and stale rows are judged from what the target holds, not from what the
killed run did. A rerun with nothing new writes nothing; a retried task rewrites the same keys.
"""
from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, ClassVar

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from mlabatch.pipelines.errors import CannotRunError
from mlabatch.pipelines.resources import TaskReports
from mlabatch.pipelines.sources import load_texts, one_row_per_id
from mlabatch.pipelines.tables import merge_into, read_table, table_exists
from mlabatch.udfs.task_stats import Report, TaskStats

log = logging.getLogger(__name__)

DELETE = "_delete"  # MERGE source column: true deletes the matching target row


class DeletionGuardError(CannotRunError):
    """A run would delete the rows of more of the target's ids than allowed; it stopped before writing."""


@dataclass
class RunStats:
    """What one run did, for the summary and MLflow; each pipeline adds the totals of its own columns."""

    THROUGHPUT: ClassVar[tuple[str, str]]  # (metric name, the counter it divides by `seconds`)

    rows_read: int = 0
    rows_without_id: int = 0
    duplicate_ids: int = 0
    new: int = 0  # ids new or changed since the last run: processed now
    skipped: int = 0  # ids unchanged since the last run
    deleted: int = 0  # ids gone from the source: their rows are deleted
    rows_removed: int = 0  # target rows deleted: those of deleted ids and those a changed id no longer has
    errors: int = 0
    truncated: int = 0
    increments: int = 0  # commits of new rows
    seconds: float = 0.0  # wall time of the worker stage, summed over the increments
    tasks: list[TaskStats] = field(default_factory=list)  # what each task of the model stage reported

    @property
    def throughput(self) -> float:
        """The THROUGHPUT counter per second of the worker stage."""
        return getattr(self, self.THROUGHPUT[1]) / self.seconds if self.seconds else 0.0

    @property
    def engine_share(self) -> float:
        """Engine time over task time, over all model tasks: how busy the model kept the GPU (or CPU)."""
        task_seconds = sum(t.seconds for t in self.tasks)
        return sum(t.engine_seconds for t in self.tasks) / task_seconds if task_seconds else 0.0

    def metrics(self) -> dict[str, float]:
        """Flat numeric metrics for MLflow: every counter, the throughput, the model tasks and their engine share."""
        counters = {k: float(v) for k, v in asdict(self).items() if k != "tasks"}
        return {**counters, self.THROUGHPUT[0]: self.throughput, "model_tasks": float(len(self.tasks)),
                "engine_share": self.engine_share}


@dataclass(frozen=True)
class IncrementalPass:
    """What a pipeline puts into the skeleton: where rows come from and go, its worker stage, and how it
    writes (the WriteSettings of its target section)."""

    source_table: str
    id_column: str
    text_column: str
    column_settings: tuple[str, str]  # the settings naming id_column and text_column, for error messages
    target_table: str
    keys: list[str]  # MERGE keys, "id" first: an id owns every target row carrying it
    hash_column: str  # target column holding the hash of the source text a row was made from
    fingerprint: dict[str, str]  # target column -> value a row must hold to be up to date (model version, settings)
    stage: Callable[[DataFrame, Report], DataFrame]  # (id, text, content_hash, doc_error) rows -> target rows;
    # its model tasks hand their TaskStats to the Report
    totals: dict[str, Column]  # stats field -> aggregate over the target rows (errors and truncated are counted here)
    ids_per_increment: int  # ids run through the stage and MERGEd per commit
    max_delete_fraction: float  # share of the target's ids whose rows a run may delete
    write_section: str  # the settings section holding the two above ("target", "generate"), for messages


def run_pass(spark: SparkSession, spec: IncrementalPass, stats: RunStats) -> RunStats:
    """Run one incremental pass of `spec`, filling and returning `stats`."""
    log.info("reading %s", spec.source_table)
    src = load_texts(spark, spec.source_table, spec.id_column, spec.text_column, spec.column_settings)
    stats.rows_read = src.count()
    stats.rows_without_id = src.filter(F.col("id").isNull()).count()
    docs = one_row_per_id(src.filter(F.col("id").isNotNull())).cache()
    stats.duplicate_ids = docs.filter(F.col("copies") > 1).count()

    target_existed = table_exists(spark, spec.target_table)
    new = docs
    if target_existed:
        target = read_table(spark, spec.target_table).select("id", spec.hash_column, *spec.fingerprint).cache()
        _guard_deletions(target, docs, spec, stats)
        new = docs.join(_up_to_date(target, spec), ["id", "content_hash"], "left_anti")
    new = new.cache()
    stats.new = new.count()
    stats.skipped = docs.count() - stats.new
    if target_existed:
        target.unpersist()
    log.info("%d ids new or changed, %d unchanged (skipped)", stats.new, stats.skipped)

    if stats.new:
        reports = TaskReports(spark)
        _run_increments(spark, new, spec, stats, reports.report)
        stats.tasks = reports.tasks()
    if target_existed:
        _delete_stale_rows(spark, docs, spec, stats)
    docs.unpersist()
    new.unpersist()
    return stats


def _up_to_date(target: DataFrame, spec: IncrementalPass) -> DataFrame:
    """(id, content_hash) of target rows made from that text with the current fingerprint."""
    done = target
    for column, value in spec.fingerprint.items():
        done = done.filter(F.col(column) == value)
    return done.select("id", F.col(spec.hash_column).alias("content_hash")).distinct()


def _guard_deletions(target: DataFrame, docs: DataFrame, spec: IncrementalPass, stats: RunStats) -> None:
    """Count the target's ids that are gone from the source (stats.deleted), and stop the run before it
    writes anything when they are more than `max_delete_fraction` of the target's ids.

    Checked before the first increment, not before the final deletions: a source that lost most of the
    target's ids is most likely the wrong table, and its rows do not belong in the target either."""
    ids = target.select("id").distinct()
    target_ids = ids.count()
    stats.deleted = ids.join(docs.select("id"), "id", "left_anti").count()
    if stats.deleted > spec.max_delete_fraction * target_ids:
        key = f"{spec.write_section}.max_delete_fraction"
        raise DeletionGuardError(
            f"{stats.deleted:,} of the {target_ids:,} ids in {spec.target_table} ({stats.deleted / target_ids:.1%}) "
            f"are not in the source {spec.source_table}, and this run would delete their rows: more than "
            f"{key}={spec.max_delete_fraction} allows. Nothing was written. Check that the source table is "
            f"the right one; if these deletions are intended, run again with --set {key}=1.0")


def _run_increments(spark: SparkSession, new: DataFrame, spec: IncrementalPass, stats: RunStats,
                    report: Report) -> None:
    """Run the worker stage on the new ids and MERGE its rows, one increment at a time, each a commit.

    Ids are split by a hash of the id into ceil(new / ids_per_increment) slices: no sort or shuffle of
    the documents, and about ids_per_increment ids in each."""
    count = -(-stats.new // spec.ids_per_increment)
    slices = new.withColumn("_increment", F.pmod(F.xxhash64("id"), F.lit(count)))
    sizes = sorted(slices.groupBy("_increment").count().collect())
    stats.increments = len(sizes)
    for number, (increment, size) in enumerate(sizes, 1):
        started = time.perf_counter()
        result = spec.stage(slices.filter(F.col("_increment") == increment).drop("_increment"), report).cache()
        totals = result.agg(F.count("error").alias("errors"), F.sum(F.col("truncated").cast("int")).alias("truncated"),
                            *(column.alias(name) for name, column in spec.totals.items())).first()
        stats.seconds += time.perf_counter() - started
        for name, value in totals.asDict().items():
            setattr(stats, name, getattr(stats, name) + (value or 0))
        merge_into(spark, result, spec.target_table, spec.keys)
        result.unpersist()
        log.info("increment %d/%d: %d ids, merged", number, len(sizes), size)


def _delete_stale_rows(spark: SparkSession, docs: DataFrame, spec: IncrementalPass, stats: RunStats) -> None:
    """Delete, in one MERGE after every increment is in, the target rows that no current document makes:
    rows of ids gone from the source, and rows whose text hash or fingerprint is not their document's
    current one (the chunks a changed document no longer has).

    Judged from what the target holds now, not from this run's results, so a run resumed after a kill
    also removes the rows that the killed run's increments left behind."""
    current = read_table(spark, spec.target_table)
    up_to_date = F.col(spec.hash_column).eqNullSafe(F.col("_source_hash"))
    for column, value in spec.fingerprint.items():
        up_to_date = up_to_date & F.col(column).eqNullSafe(F.lit(value))
    stale = (current.join(docs.select("id", F.col("content_hash").alias("_source_hash")), "id", "left")
             .filter(~up_to_date)
             .select(*current.columns, F.lit(True).alias(DELETE))).cache()
    stats.rows_removed = stale.count()
    if stats.rows_removed:
        log.info("removing %d stale rows (%d ids gone from the source) from %s", stats.rows_removed,
                 stats.deleted, spec.target_table)
        merge_into(spark, stale, spec.target_table, spec.keys, delete_column=DELETE)
    stale.unpersist()
