"""The incremental skeleton every pipeline shares: Delta source -> new or changed rows -> worker stage -> MERGE.

One pass reads the keyed source (one row per id), drops ids whose text hash and fingerprint (model
version, settings) are already in the target, runs the pipeline's worker stage on the rest, and MERGEs
the result on the pipeline's keys, deleting in the same MERGE the target rows of ids gone from the
source and rows an id no longer produces. A rerun with nothing new writes nothing; a retried task
rewrites the same keys.
"""
from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from typing import Callable, ClassVar

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from mlabatch.pipelines.sources import load_texts, one_row_per_id
from mlabatch.pipelines.tables import merge_into, read_table, table_exists

log = logging.getLogger(__name__)

DELETE = "_delete"  # MERGE source column: true deletes the matching target row


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
    seconds: float = 0.0  # wall time of the worker stage

    @property
    def throughput(self) -> float:
        """The THROUGHPUT counter per second of the worker stage."""
        return getattr(self, self.THROUGHPUT[1]) / self.seconds if self.seconds else 0.0

    def metrics(self) -> dict[str, float]:
        """Flat numeric metrics for MLflow: every counter and the throughput."""
        return {**{k: float(v) for k, v in asdict(self).items()}, self.THROUGHPUT[0]: self.throughput}


@dataclass(frozen=True)
class IncrementalPass:
    """What a pipeline puts into the skeleton: where rows come from and go, and its worker stage."""

    source_table: str
    id_column: str
    text_column: str
    column_settings: tuple[str, str]  # the settings naming id_column and text_column, for error messages
    target_table: str
    keys: list[str]  # MERGE keys, "id" first: an id owns every target row carrying it
    hash_column: str  # target column holding the hash of the source text a row was made from
    fingerprint: dict[str, str]  # target column -> value a row must hold to be up to date (model version, settings)
    stage: Callable[[DataFrame], DataFrame]  # (id, text, content_hash, doc_error) rows -> target rows
    totals: dict[str, Column]  # stats field -> aggregate over the target rows (errors and truncated are counted here)


def run_pass(spark: SparkSession, spec: IncrementalPass, stats: RunStats) -> RunStats:
    """Run one incremental pass of `spec`, filling and returning `stats`."""
    log.info("reading %s", spec.source_table)
    src = load_texts(spark, spec.source_table, spec.id_column, spec.text_column, spec.column_settings)
    stats.rows_read = src.count()
    stats.rows_without_id = src.filter(F.col("id").isNull()).count()
    docs = one_row_per_id(src.filter(F.col("id").isNotNull())).cache()
    stats.duplicate_ids = docs.filter(F.col("doc_error").isNotNull()).count()

    target = None
    new = docs
    if table_exists(spark, spec.target_table):
        target = read_table(spark, spec.target_table).select(*spec.keys, spec.hash_column, *spec.fingerprint).cache()
        new = docs.join(_up_to_date(target, spec), ["id", "content_hash"], "left_anti")
    new = new.cache()
    stats.new = new.count()
    stats.skipped = docs.count() - stats.new
    log.info("%d ids new or changed, %d unchanged (skipped)", stats.new, stats.skipped)

    result = spec.stage(new).withColumn(DELETE, F.lit(False))
    started = time.perf_counter()
    result = result.cache()
    totals = result.agg(F.count("error").alias("errors"), F.sum(F.col("truncated").cast("int")).alias("truncated"),
                        *(column.alias(name) for name, column in spec.totals.items())).first()
    stats.seconds = time.perf_counter() - started
    for name, value in totals.asDict().items():
        setattr(stats, name, value or 0)

    rows = result
    if target is not None:
        gone = target.join(docs.select("id"), "id", "left_anti")
        stats.deleted = gone.select("id").distinct().count()
        stale = _stale_rows(gone, target, result, spec.keys)
        stats.rows_removed = stale.count()
        rows = result.unionByName(stale, allowMissingColumns=True)
    if stats.new or stats.rows_removed:
        log.info("merging the rows of %d ids and removing %d stale rows in %s", stats.new, stats.rows_removed,
                 spec.target_table)
        merge_into(spark, rows, spec.target_table, spec.keys, delete_column=DELETE)
    for cached in (docs, new, result) + ((target,) if target is not None else ()):
        cached.unpersist()
    return stats


def _up_to_date(target: DataFrame, spec: IncrementalPass) -> DataFrame:
    """(id, content_hash) of target rows made from that text with the current fingerprint."""
    done = target
    for column, value in spec.fingerprint.items():
        done = done.filter(F.col(column) == value)
    return done.select("id", F.col(spec.hash_column).alias("content_hash")).distinct()


def _stale_rows(gone: DataFrame, target: DataFrame, result: DataFrame, keys: list[str]) -> DataFrame:
    """Target rows to delete: those of ids gone from the source, and those of reprocessed ids that the
    new result no longer has (a shortened document's extra chunks)."""
    outgrown = (target.join(result.select("id").distinct(), "id", "left_semi")
                .join(result.select(*keys), keys, "left_anti"))
    return gone.unionByName(outgrown).select(*keys, F.lit(True).alias(DELETE))
