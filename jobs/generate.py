"""`mlabatch generate`: one incremental generation run, from settings to a summary."""
from __future__ import annotations

import logging

import mlflow

from mlabatch.models.registry.resolve import resolve_model
from mlabatch.pipelines.generation import GenerationStats, generate_prompts, sampling_hash
from mlabatch.pipelines.settings import Settings
from mlabatch.pipelines.spark import get_spark
from mlabatch.pipelines.tables import TableNotFoundError, on_databricks, table_exists
from mlabatch.pipelines.tracking import configure_mlflow

log = logging.getLogger(__name__)


def run_generate(settings: Settings, generate_column=None) -> tuple[GenerationStats, str]:
    """Check the model and source first, then run the pipeline inside an MLflow run; returns (stats, run id)."""
    cfg = settings.generate
    configure_mlflow(settings.mlflow)
    log.info("resolving model %s", cfg.model_uri)
    model = resolve_model(cfg.model_uri)
    if not (model.local_dir / "mla_config.json").is_file():
        raise ValueError(f"{cfg.model_uri} is not an MLA-converted decoder; convert it first (mlabatch convert)")
    spark = get_spark(settings.spark)
    if not table_exists(spark, cfg.source_table):
        raise TableNotFoundError(f"source table {cfg.source_table} does not exist; create it or point "
                                 "generate.source_table at a table with id and prompt columns")
    worker_ref = cfg.model_uri if on_databricks() else str(model.local_dir)
    with mlflow.start_run(run_name=f"generate {cfg.source_table}") as run:
        mlflow.log_params({"model_version": model.version, "sampling_hash": sampling_hash(cfg),
                           **{f"generate.{k}": str(v) for k, v in cfg.model_dump().items()}})
        stats = generate_prompts(spark, cfg, model, worker_ref, generate_column=generate_column)
        mlflow.log_metrics(stats.metrics())
    return stats, run.info.run_id


def summary(stats: GenerationStats, settings: Settings, run_id: str) -> str:
    """The end-of-run report: counts, speed, and where the output is."""
    cfg = settings.generate
    return "\n".join([
        f"mlabatch generate: finished in {stats.seconds:.1f} s of generation",
        f"  rows read            {stats.rows_read:,} ({stats.rows_without_id} without id, "
        f"{stats.duplicate_ids} duplicated ids)",
        f"  prompts generated    {stats.new:,}   unchanged (skipped) {stats.skipped:,}   "
        f"deleted {stats.deleted:,}   errors {stats.errors:,}   truncated {stats.truncated:,}",
        f"  tokens               {stats.prompt_tokens:,} prompt, {stats.generated_tokens:,} generated "
        f"({stats.throughput:,.1f} new tokens/s)",
        f"  output (Delta)       {cfg.target_table}",
        f"  MLflow run           {run_id} in experiment {settings.mlflow.experiment}",
    ])
