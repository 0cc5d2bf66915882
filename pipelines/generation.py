"""The generation pipeline: Delta prompts -> new or changed prompts -> generate UDF -> MERGE on id.

Incremental and idempotent: a prompt is generated again only when its (id, prompt hash, model
version, sampling hash) is not yet in the target; results are merged on id, and rows of prompts gone
from the source are deleted in the same MERGE. A retried task regenerates the same rows (greedy, or
sampled with the configured seed) and the MERGE writes each id once.
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from mlabatch.models.generator import EngineConfig
from mlabatch.models.loading import ResolvedModel
from mlabatch.models.sampling import SamplingParams
from mlabatch.pipelines.sources import load_texts, one_row_per_id, parallel_slots
from mlabatch.pipelines.settings import GenerateSettings
from mlabatch.pipelines.tables import merge_into, read_table, table_exists
from mlabatch.udfs.generate import generate_udf

log = logging.getLogger(__name__)

KEYS = ["id"]
DELETE = "_delete"


@dataclass
class GenerationStats:
    """What one generation run did, for the summary and MLflow."""

    rows_read: int = 0
    rows_without_id: int = 0
    duplicate_ids: int = 0
    prompts_new: int = 0
    prompts_skipped: int = 0
    prompts_deleted: int = 0
    errors: int = 0
    truncated: int = 0
    prompt_tokens: int = 0
    generated_tokens: int = 0
    seconds: float = 0.0

    @property
    def new_tokens_per_s(self) -> float:
        return self.generated_tokens / self.seconds if self.seconds else 0.0

    def metrics(self) -> dict[str, float]:
        """Flat numeric metrics for MLflow."""
        return {**{k: float(v) for k, v in asdict(self).items()}, "new_tokens_per_s": self.new_tokens_per_s}


def sampling_params(cfg: GenerateSettings) -> SamplingParams:
    """The engine's sampling settings from the generate section."""
    return SamplingParams(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_k=cfg.top_k,
                          top_p=cfg.top_p, seed=cfg.seed, stop=tuple(cfg.stop), ignore_eos=cfg.ignore_eos)


def engine_config(cfg: GenerateSettings) -> EngineConfig:
    """The engine's sizing and prompt formatting from the generate section."""
    return EngineConfig(max_batch=cfg.max_batch, prefill_token_budget=cfg.prefill_token_budget,
                        num_blocks=cfg.num_blocks, memory_fraction=cfg.memory_fraction,
                        chat_template=cfg.chat_template)


def sampling_hash(cfg: GenerateSettings) -> str:
    """A fingerprint of every setting that changes the generated text (a change regenerates all rows)."""
    keys = ("max_new_tokens", "temperature", "top_k", "top_p", "seed", "stop", "ignore_eos", "chat_template")
    text = json.dumps({k: getattr(cfg, k) for k in keys}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def generate_prompts(spark: SparkSession, cfg: GenerateSettings, model: ResolvedModel, worker_model_ref: str,
                     generate_column=None) -> GenerationStats:
    """Run one incremental generation pass from cfg.source_table into cfg.target_table.

    `generate_column` replaces the UDF (tests inject a failing one to check retries).
    """
    stats = GenerationStats()
    src = load_texts(spark, cfg.source_table, cfg.id_column, cfg.prompt_column,
                     ("generate.id_column", "generate.prompt_column"))
    stats.rows_read = src.count()
    stats.rows_without_id = src.filter(F.col("id").isNull()).count()
    docs = one_row_per_id(src.filter(F.col("id").isNotNull())).cache()
    stats.duplicate_ids = docs.filter(F.col("doc_error").isNotNull()).count()
    settings_hash = sampling_hash(cfg)

    target_exists = table_exists(spark, cfg.target_table)
    new = docs
    if target_exists:
        target = (read_table(spark, cfg.target_table)
                  .select("id", "prompt_hash", "model_version", "sampling_hash").cache())
        done = target.filter((F.col("model_version") == model.version) & (F.col("sampling_hash") == settings_hash))
        new = docs.join(done.select("id", F.col("prompt_hash").alias("content_hash")), ["id", "content_hash"],
                        "left_anti")
    new = new.cache()
    stats.prompts_new = new.count()
    stats.prompts_skipped = docs.count() - stats.prompts_new
    log.info("%d prompts new or changed, %d unchanged (skipped)", stats.prompts_new, stats.prompts_skipped)

    partitions = max(cfg.partitions_per_worker * parallel_slots(spark), 1)
    generate = generate_column or generate_udf(worker_model_ref, sampling_params(cfg), engine_config(cfg), cfg.device)
    result = (new.repartition(partitions).sortWithinPartitions(F.length("text"))
              .withColumn("r", generate(F.col("text"))).select(
        "id", F.col("content_hash").alias("prompt_hash"), F.lit(model.version).alias("model_version"),
        F.lit(settings_hash).alias("sampling_hash"), F.col("text").alias("prompt"),
        F.col("r.text").alias("text"),
        F.coalesce("r.prompt_tokens", F.lit(0)).alias("prompt_tokens"),
        F.coalesce("r.generated_tokens", F.lit(0)).alias("generated_tokens"),
        F.col("r.finish_reason").alias("finish_reason"),
        F.coalesce("r.truncated", F.lit(False)).alias("truncated"),
        F.coalesce("doc_error", "r.error").alias("error"),
        F.current_timestamp().alias("generated_at"),
        F.lit(False).alias(DELETE)))

    log.info("generating in %d partitions (progress bar: Spark stages)", partitions)
    started = time.perf_counter()
    result = result.cache()
    totals = result.agg(F.count("error").alias("errors"), F.sum(F.col("truncated").cast("int")).alias("truncated"),
                        F.sum("prompt_tokens").alias("prompt_tokens"),
                        F.sum("generated_tokens").alias("generated_tokens")).first()
    stats.seconds = time.perf_counter() - started
    stats.errors, stats.truncated = totals["errors"], totals["truncated"] or 0
    stats.prompt_tokens, stats.generated_tokens = totals["prompt_tokens"] or 0, totals["generated_tokens"] or 0

    rows = result
    if target_exists:
        gone = target.join(docs.select("id"), "id", "left_anti").select("id", F.lit(True).alias(DELETE))
        stats.prompts_deleted = gone.count()
        rows = result.unionByName(gone, allowMissingColumns=True)
    if stats.prompts_new or stats.prompts_deleted:
        log.info("merging %d generations and removing %d rows in %s", stats.prompts_new, stats.prompts_deleted,
                 cfg.target_table)
        merge_into(spark, rows, cfg.target_table, KEYS, delete_column=DELETE)
    for cached in (docs, new, result) + ((target,) if target_exists else ()):
        cached.unpersist()
    return stats
