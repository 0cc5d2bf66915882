"""The embedding pipeline: Delta source -> new or changed documents -> token windows -> UDF -> MERGE.

Incremental and idempotent: a document is embedded again only when its (id, content hash, model
version, chunking) is not yet in the target; results are merged on (id, chunk), and chunks left over
from a shortened or deleted document are removed in the same MERGE.
"""
from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from mlabatch.models.embedder import PoolingConfig
from mlabatch.models.loading import ResolvedModel
from mlabatch.pipelines.settings import Settings
from mlabatch.pipelines.sources import load_texts, one_row_per_id, parallel_slots
from mlabatch.pipelines.tables import merge_into, read_table, table_exists
from mlabatch.udfs.chunk import CHUNK_SCHEMA, chunk_documents, pool_document_chunks
from mlabatch.udfs.embed import embed_udf

log = logging.getLogger(__name__)

KEYS = ["id", "chunk"]
DELETE = "_delete"

@dataclass
class RunStats:
    """What one run did, for the summary and MLflow."""

    rows_read: int = 0
    rows_without_id: int = 0
    duplicate_ids: int = 0
    docs_new: int = 0
    docs_skipped: int = 0
    docs_deleted: int = 0
    chunks_embedded: int = 0
    chunks_removed: int = 0
    errors: int = 0
    truncated: int = 0
    tokens: int = 0
    seconds: float = 0.0

    @property
    def docs_per_s(self) -> float:
        return self.docs_new / self.seconds if self.seconds else 0.0

    def metrics(self) -> dict[str, float]:
        """Flat numeric metrics for MLflow."""
        return {**{k: float(v) for k, v in asdict(self).items()}, "docs_per_s": self.docs_per_s}


def embed_documents(spark: SparkSession, settings: Settings, model: ResolvedModel,
                    worker_model_ref: str, embed_column=None) -> RunStats:
    """Run one incremental embedding pass from settings.source into settings.target.

    `worker_model_ref` is what workers load (a shared directory or a models:/ URI).
    `embed_column` replaces the UDF (tests inject a failing one to check retries).
    """
    stats = RunStats()
    cfg = settings.embed
    src = load_texts(spark, settings.source.table, settings.source.id_column, settings.source.text_column,
                     ("source.id_column", "source.text_column"))
    log.info("reading %s", settings.source.table)
    stats.rows_read = src.count()
    stats.rows_without_id = src.filter(F.col("id").isNull()).count()
    docs = one_row_per_id(src.filter(F.col("id").isNotNull())).cache()
    stats.duplicate_ids = docs.filter(F.col("doc_error").isNotNull()).count()

    max_tokens = min(cfg.max_tokens, PoolingConfig.from_dir(model.local_dir).max_tokens)
    chunking = f"{max_tokens}/{cfg.overlap_tokens}/{cfg.max_chunks_per_doc}/{cfg.long_documents}"
    target_exists = table_exists(spark, settings.target.table)
    if target_exists:
        target = (read_table(spark, settings.target.table)
                  .select("id", "chunk", "content_hash", "model_version", "chunking").cache())
        done = (target.filter((F.col("model_version") == model.version) & (F.col("chunking") == chunking))
                .select("id", "content_hash").distinct())
        new_docs = docs.join(done, ["id", "content_hash"], "left_anti")
    else:
        new_docs = docs
    new_docs = new_docs.cache()
    stats.docs_new = new_docs.count()
    stats.docs_skipped = docs.count() - stats.docs_new
    log.info("%d documents new or changed, %d unchanged (skipped)", stats.docs_new, stats.docs_skipped)

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
        F.lit(False).alias(DELETE),
    )
    if cfg.long_documents == "pool":
        normalize = PoolingConfig.from_dir(model.local_dir).normalize
        result = result.groupBy("id").applyInPandas(pool_document_chunks(normalize), schema=result.schema)

    log.info("chunking and embedding in %d partitions (progress bar: Spark stages)", partitions)
    started = time.perf_counter()
    result = result.cache()
    totals = result.agg(
        F.count("*").alias("chunks"),
        F.count("error").alias("errors"),
        F.sum(F.col("truncated").cast("int")).alias("truncated"),
        F.sum("token_count").alias("tokens"),
    ).first()
    stats.seconds = time.perf_counter() - started
    stats.chunks_embedded, stats.errors = totals["chunks"], totals["errors"]
    stats.truncated, stats.tokens = totals["truncated"] or 0, totals["tokens"] or 0

    rows = result
    if target_exists:
        stale = _stale_chunks(target, docs, result)
        stats.chunks_removed = stale.count()
        stats.docs_deleted = stale.join(docs, "id", "left_anti").select("id").distinct().count()
        rows = result.unionByName(stale, allowMissingColumns=True)
    if stats.chunks_embedded or stats.chunks_removed:
        log.info("merging %d chunks and removing %d stale ones in %s", stats.chunks_embedded,
                 stats.chunks_removed, settings.target.table)
        merge_into(spark, rows, settings.target.table, KEYS, delete_column=DELETE)
    for cached in (docs, new_docs, result) + ((target,) if target_exists else ()):
        cached.unpersist()
    return stats


def _stale_chunks(target: DataFrame, docs: DataFrame, result: DataFrame) -> DataFrame:
    """Target rows to delete: every chunk of a document gone from the source, and chunks of a
    re-embedded document beyond its new chunk count."""
    gone = target.join(docs.select("id"), "id", "left_anti")
    replaced = (target.join(result.select("id").distinct(), "id", "left_semi")
                .join(result.select("id", "chunk"), ["id", "chunk"], "left_anti"))
    return gone.unionByName(replaced).select("id", "chunk", F.lit(True).alias(DELETE))
