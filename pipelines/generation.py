"""The generation pipeline: prompts -> generate UDF -> one target row per id.

Runs on the incremental skeleton: a prompt is generated again only when its (id, prompt hash, model
version, sampling hash) is not yet in the target; the results are MERGEd in increments of
generate.ids_per_increment prompts, and rows of prompts gone from the source are deleted once all
increments are in. A retried task regenerates the same rows (greedy, or sampled with the configured
seed) and the MERGE writes each id once.
"""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from typing import Callable

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from mlabatch.models.generation.config import EngineConfig, SamplingParams
from mlabatch.models.registry.resolve import ResolvedModel
from mlabatch.pipelines.incremental import IncrementalPass, RunStats, run_pass
from mlabatch.pipelines.settings import GenerateSettings
from mlabatch.pipelines.sources import parallel_slots
from mlabatch.udfs.generate import generate_udf

log = logging.getLogger(__name__)

KEYS = ["id"]


@dataclass
class GenerationStats(RunStats):
    """A generation run: ids are prompts, each written as one row."""

    THROUGHPUT = ("new_tokens_per_s", "generated_tokens")

    prompt_tokens: int = 0
    generated_tokens: int = 0


def sampling_params(cfg: GenerateSettings) -> SamplingParams:
    """The engine's sampling settings: the SamplingParams fields of the generate section."""
    return SamplingParams(**cfg.model_dump(include=set(SamplingParams.model_fields)))


def engine_config(cfg: GenerateSettings) -> EngineConfig:
    """The engine's sizing and prompt formatting: the EngineConfig fields of the generate section."""
    return EngineConfig(**cfg.model_dump(include=set(EngineConfig.model_fields)))


def sampling_hash(cfg: GenerateSettings) -> str:
    """A fingerprint of every setting that changes the generated text (a change regenerates all rows):
    the sampling parameters and whether prompts go through the chat template."""
    text = json.dumps({**sampling_params(cfg).model_dump(), "chat_template": cfg.chat_template}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def generate_prompts(spark: SparkSession, cfg: GenerateSettings, model: ResolvedModel, worker_model_ref: str,
                     generate_column: Callable[[Column], Column] | None = None) -> GenerationStats:
    """Run one incremental generation pass from cfg.source_table into cfg.target_table.

    `generate_column` replaces the UDF (tests inject a failing one to check retries).
    """
    settings_hash = sampling_hash(cfg)

    def stage(new_prompts: DataFrame) -> DataFrame:
        partitions = max(cfg.partitions_per_worker * parallel_slots(spark), 1)
        generate = generate_column or generate_udf(worker_model_ref, sampling_params(cfg), engine_config(cfg),
                                                   cfg.device)
        log.info("generating in %d partitions (progress bar: Spark stages)", partitions)
        return (new_prompts.repartition(partitions).sortWithinPartitions(F.length("text"))
                .withColumn("r", generate(F.col("text"))).select(
            "id", F.col("content_hash").alias("prompt_hash"), F.lit(model.version).alias("model_version"),
            F.lit(settings_hash).alias("sampling_hash"), F.col("text").alias("prompt"),
            F.col("r.text").alias("text"),
            F.coalesce("r.prompt_tokens", F.lit(0)).alias("prompt_tokens"),
            F.coalesce("r.generated_tokens", F.lit(0)).alias("generated_tokens"),
            F.col("r.finish_reason").alias("finish_reason"),
            F.coalesce("r.truncated", F.lit(False)).alias("truncated"),
            F.coalesce("doc_error", "r.error").alias("error"),
            F.current_timestamp().alias("generated_at")))

    spec = IncrementalPass(
        source_table=cfg.source_table, id_column=cfg.id_column, text_column=cfg.prompt_column,
        column_settings=("generate.id_column", "generate.prompt_column"),
        target_table=cfg.target_table, keys=KEYS, hash_column="prompt_hash",
        fingerprint={"model_version": model.version, "sampling_hash": settings_hash}, stage=stage,
        totals={"prompt_tokens": F.sum("prompt_tokens"), "generated_tokens": F.sum("generated_tokens")},
        ids_per_increment=cfg.ids_per_increment, max_delete_fraction=cfg.max_delete_fraction,
        write_section="generate",
    )
    return run_pass(spark, spec, GenerationStats())
