"""`mlabatch generate`: one incremental generation run, from settings to a summary."""
from __future__ import annotations

import logging

import mlflow

from mlabatch.jobs.summary import head_lines, task_lines
from mlabatch.pipelines.checks import preflight_generate
from mlabatch.pipelines.generation import GenerationStats, generate_prompts, sampling_hash
from mlabatch.pipelines.settings import Settings
from mlabatch.pipelines.spark import get_spark
from mlabatch.pipelines.tables import on_databricks
from mlabatch.pipelines.tracking import log_metrics, start_run

log = logging.getLogger(__name__)


def run_generate(settings: Settings, worker=None, quiet: bool = False) -> tuple[GenerationStats, str]:
    """Run every driver-side check (`preflight_generate`), then the pipeline inside an MLflow run.

    Returns (stats, MLflow run id). `quiet` silences Spark's own logging (the CLI's -q); `worker`
    replaces the model stage's function (tests).
    """
    cfg = settings.generate
    log.info("checking settings, MLflow, model %s and tables", cfg.model_uri)
    model = preflight_generate(settings)
    spark = get_spark(settings.spark, quiet)
    worker_ref = cfg.model_uri if on_databricks() else str(model.local_dir)
    with start_run(f"generate {cfg.source_table}") as run:
        mlflow.log_params({"model_version": model.version, "sampling_hash": sampling_hash(cfg),
                           **{f"generate.{k}": str(v) for k, v in cfg.model_dump().items()}})
        stats = generate_prompts(spark, cfg, model, worker_ref, worker=worker)
        log_metrics(stats)
    return stats, run.info.run_id


def summary(stats: GenerationStats, settings: Settings, run_id: str) -> str:
    """The end-of-run report: counts, speed, and where the output is."""
    cfg = settings.generate
    return "\n".join(head_lines("generate", "generation", stats, "prompts generated") + [
        f"  errors               {stats.errors:,}   prompts cut to fit the context {stats.truncated:,}",
        f"  target rows deleted  {stats.rows_removed:,}",
        f"  tokens               {stats.prompt_tokens:,} prompt, {stats.generated_tokens:,} generated "
        f"({stats.throughput:,.1f} new tokens/s)",
        *task_lines(stats, "prompts"),
        f"  output (Delta)       {cfg.target_table}",
        f"  MLflow run           {run_id} in experiment {settings.mlflow.experiment}",
    ])
