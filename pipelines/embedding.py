"""The embedding pipeline: documents -> one model stage (token windows, embedded) -> one target row per (id, chunk).

Runs on the incremental skeleton: a document is embedded again only when its (id, content hash, model
version, chunking) is not yet in the target; the results are MERGEd in increments of
target.ids_per_increment documents, and chunks left over from a shortened or deleted document are
removed once all increments are in.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Iterator

import pyarrow as pa
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from mlabatch.models.embedding.pooling import PoolingConfig
from mlabatch.models.registry.resolve import ResolvedModel
from mlabatch.pipelines.incremental import IncrementalPass, RunStats, run_pass
from mlabatch.pipelines.resources import model_stage_profile
from mlabatch.pipelines.settings import Settings
from mlabatch.pipelines.sources import parallel_slots
from mlabatch.udfs.embed import DOCUMENT_ROWS_SCHEMA, Windowing, embed_documents_worker
from mlabatch.udfs.task_stats import Report

log = logging.getLogger(__name__)

KEYS = ["id", "chunk"]


@dataclass
class EmbedStats(RunStats):
    """An embedding run: ids are documents, each written as one row per chunk."""

    THROUGHPUT = ("docs_per_s", "new")

    chunks_embedded: int = 0
    tokens: int = 0


def embed_documents(spark: SparkSession, settings: Settings, model: ResolvedModel, worker_model_ref: str,
                    worker: Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]] | None = None) -> EmbedStats:
    """Run one incremental embedding pass from settings.source into settings.target.

    `worker_model_ref` is what workers load (a shared directory or a models:/ URI). `worker` replaces
    the model stage's function (tests wrap the real one, `embed_documents_worker`, to fail a task).
    """
    cfg = settings.embed
    pooling = PoolingConfig.from_dir(model.local_dir)
    windowing = Windowing(min(cfg.max_tokens, pooling.max_tokens), cfg.overlap_tokens, cfg.max_chunks_per_doc,
                          pool=cfg.long_documents == "pool")
    chunking = f"{windowing.max_tokens}/{cfg.overlap_tokens}/{cfg.max_chunks_per_doc}/{cfg.long_documents}"
    profile = model_stage_profile(spark)

    def stage(new_docs: DataFrame, report: Report) -> DataFrame:
        partitions = max(cfg.partitions_per_worker * parallel_slots(spark), 1)
        model_stage = worker or embed_documents_worker(worker_model_ref, windowing, cfg.token_budget, cfg.device,
                                                       report)
        log.info("chunking and embedding in %d partitions%s (progress bar: Spark stages)", partitions,
                 ", one GPU per task" if profile else "")
        return (new_docs.repartition(partitions)
                .mapInArrow(model_stage, DOCUMENT_ROWS_SCHEMA, profile=profile)
                .select("id", "chunk", "content_hash", F.lit(model.version).alias("model_version"),
                        F.lit(chunking).alias("chunking"), "chunk_text", "token_count", "truncated", "embedding",
                        "error", F.current_timestamp().alias("embedded_at")))

    spec = IncrementalPass(
        source_table=settings.source.table, id_column=settings.source.id_column,
        text_column=settings.source.text_column, column_settings=("source.id_column", "source.text_column"),
        target_table=settings.target.table, keys=KEYS, hash_column="content_hash",
        fingerprint={"model_version": model.version, "chunking": chunking}, stage=stage,
        totals={"chunks_embedded": F.count("*"), "tokens": F.sum("token_count")},
        ids_per_increment=settings.target.ids_per_increment,
        max_delete_fraction=settings.target.max_delete_fraction, write_section="target",
    )
    return run_pass(spark, spec, EmbedStats())
