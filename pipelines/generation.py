"""The generation pipeline: prompts -> one model stage (one engine run per task) -> one target row per id.

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
from typing import Callable, Iterator

import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from mlabatch.models.generation.config import EngineConfig, SamplingParams
from mlabatch.models.registry.resolve import ResolvedModel
from mlabatch.pipelines.incremental import IncrementalPass, RunStats, run_pass
from mlabatch.pipelines.resources import model_stage_profile
from mlabatch.pipelines.settings import GenerateSettings
from mlabatch.pipelines.sources import parallel_slots
from mlabatch.udfs.generate import PROMPT_ROWS_SCHEMA, generate_prompts_worker
from mlabatch.udfs.task_stats import Report

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
                     worker: Callable[[Iterator[pd.DataFrame]], Iterator[pd.DataFrame]] | None = None
                     ) -> GenerationStats:
    """Run one incremental generation pass from cfg.source_table into cfg.target_table.

    `worker` replaces the model stage's function (tests wrap the real one, `generate_prompts_worker`,
    to fail a task).
    """
    settings_hash = sampling_hash(cfg)
    profile = model_stage_profile(spark)

    def stage(new_prompts: DataFrame, report: Report) -> DataFrame:
        partitions = max(cfg.partitions_per_worker * parallel_slots(spark), 1)
        model_stage = worker or generate_prompts_worker(worker_model_ref, sampling_params(cfg), engine_config(cfg),
                                                        cfg.device, report)
        log.info("generating in %d partitions%s (progress bar: Spark stages)", partitions,
                 ", one GPU per task" if profile else "")
        return (new_prompts.repartition(partitions).sortWithinPartitions(F.length("text"))
                .mapInPandas(model_stage, PROMPT_ROWS_SCHEMA, profile=profile).select(
            "id", F.col("content_hash").alias("prompt_hash"), F.lit(model.version).alias("model_version"),
            F.lit(settings_hash).alias("sampling_hash"), "prompt", "text", "prompt_tokens", "generated_tokens",
            "finish_reason", "truncated", F.coalesce("doc_error", "error").alias("error"),
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
