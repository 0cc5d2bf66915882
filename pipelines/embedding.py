"""The embedding pipeline: documents -> token windows -> embed UDF -> one target row per (id, chunk).

Runs on the incremental skeleton: a document is embedded again only when its (id, content hash, model
version, chunking) is not yet in the target; the results are MERGEd in increments of
target.ids_per_increment documents, and chunks left over from a shortened or deleted document are
removed once all increments are in.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from mlabatch.models.embedding.pooling import PoolingConfig
from mlabatch.models.registry.resolve import ResolvedModel
from mlabatch.pipelines.incremental import IncrementalPass, RunStats, run_pass
from mlabatch.pipelines.settings import Settings
from mlabatch.pipelines.sources import parallel_slots
from mlabatch.udfs.chunk import CHUNK_SCHEMA, chunk_documents, pool_document_chunks
from mlabatch.udfs.embed import embed_udf

log = logging.getLogger(__name__)

KEYS = ["id", "chunk"]


@dataclass
class EmbedStats(RunStats):
    """An embedding run: ids are documents, each written as one row per chunk."""

    THROUGHPUT = ("docs_per_s", "new")

    chunks_embedded: int = 0
    tokens: int = 0


def embed_documents(spark: SparkSession, settings: Settings, model: ResolvedModel,
                    worker_model_ref: str, embed_column: Callable[[Column], Column] | None = None) -> EmbedStats:
    """Run one incremental embedding pass from settings.source into settings.target.

    `worker_model_ref` is what workers load (a shared directory or a models:/ URI).
    `embed_column` replaces the UDF (tests inject a failing one to check retries).
    """
    cfg = settings.embed
    pooling = PoolingConfig.from_dir(model.local_dir)
    max_tokens = min(cfg.max_tokens, pooling.max_tokens)
    chunking = f"{max_tokens}/{cfg.overlap_tokens}/{cfg.max_chunks_per_doc}/{cfg.long_documents}"

    def stage(new_docs: DataFrame) -> DataFrame:
        chunker = chunk_documents(worker_model_ref, max_tokens, cfg.overlap_tokens, cfg.max_chunks_per_doc)
        partitions = max(cfg.partitions_per_worker * parallel_slots(spark), 1)
        chunks = (new_docs.mapInPandas(chunker, CHUNK_SCHEMA)
                  .repartition(partitions)
                  .sortWithinPartitions("n_tokens"))
        embed = embed_column or embed_udf(worker_model_ref, token_budget=cfg.token_budget, device=cfg.device)
        result = chunks.withColumn("r", embed(F.col("chunk_text"))).select(
            "id", "chunk", "content_hash", F.lit(model.version).alias("model_version"),
            F.lit(chunking).alias("chunking"), "chunk_text",
            F.col("r.token_count").alias("token_count"),
            (F.col("r.truncated") | F.col("doc_truncated")).alias("truncated"),
            F.col("r.embedding").alias("embedding"),
            F.coalesce("doc_error", "r.error").alias("error"),
            F.current_timestamp().alias("embedded_at"),
        )
        if cfg.long_documents == "pool":
            result = result.groupBy("id").applyInPandas(pool_document_chunks(pooling.normalize), schema=result.schema)
        log.info("chunking and embedding in %d partitions (progress bar: Spark stages)", partitions)
        return result

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
