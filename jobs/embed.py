"""`mlabatch embed`: one incremental embedding run, from settings to a summary."""
from __future__ import annotations

import logging

import mlflow

from mlabatch.jobs.summary import head_lines, task_lines
from mlabatch.pipelines.checks import preflight_embed
from mlabatch.pipelines.embedding import EmbedStats, embed_documents
from mlabatch.pipelines.settings import Settings
from mlabatch.pipelines.spark import get_spark
from mlabatch.pipelines.tables import on_databricks
from mlabatch.pipelines.tracking import log_metrics, run_params, start_run

log = logging.getLogger(__name__)


def run_embed(settings: Settings, worker=None, quiet: bool = False) -> tuple[EmbedStats, str]:
    """Run every driver-side check (`preflight_embed`), then the pipeline inside an MLflow run.

    Returns (stats, MLflow run id). `quiet` silences Spark's own logging (the CLI's -q); `worker`
    replaces the model stage's function (tests).
    """
    log.info("checking settings, MLflow, model %s and tables", settings.model.uri)
    model = preflight_embed(settings)
    spark = get_spark(settings.spark, quiet)
    # Local workers share this machine's disk, so they load the directory already downloaded here;
    # on a cluster each worker resolves the URI itself.
    worker_ref = settings.model.uri if on_databricks() else str(model.local_dir)
    with start_run(f"embed {settings.source.table}") as run:
        mlflow.log_params(run_params(settings, model.version))
        stats = embed_documents(spark, settings, model, worker_ref, worker=worker)
        log_metrics(stats)
    return stats, run.info.run_id


def summary(stats: EmbedStats, settings: Settings, run_id: str) -> str:
    """The end-of-run report: counts, speed, and where the output is and how to read it."""
    target = settings.target.table
    query = (f"spark.table('{target}')" if on_databricks() else
             f"python -c \"from deltalake import DeltaTable; print(DeltaTable('{target}').to_pandas().head())\"")
    return "\n".join(head_lines("embed", "embedding", stats, "documents embedded") + [
        f"  chunks embedded      {stats.chunks_embedded:,}   errors {stats.errors:,}   "
        f"truncated {stats.truncated:,}",
        f"  target rows deleted  {stats.rows_removed:,} (of documents gone or changed)",
        f"  throughput           {stats.throughput:,.1f} docs/s ({stats.tokens:,} tokens)",
        *task_lines(stats, "docs"),
        f"  output (Delta)       {target}",
        f"  query it             {query}",
        f"  MLflow run           {run_id} in experiment {settings.mlflow.experiment} "
        f"({settings.mlflow.tracking_uri})",
    ])
