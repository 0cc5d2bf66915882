"""`mlabatch demo`: sample documents, the bundled model, one embedding run, and what came out.

The only command that makes up data: it writes the sample documents table when source.table is missing.
Every other command stops when its source is missing, so that a mistyped table name can never look like
a source whose documents were all deleted.
"""
from __future__ import annotations

import logging

from mlabatch.jobs.embed import run_embed, summary
from mlabatch.jobs.models import alias_exists, prepare
from mlabatch.jobs.sample_data import sample_documents
from mlabatch.pipelines.checks import check_tables_here, connect_mlflow
from mlabatch.pipelines.settings import Settings
from mlabatch.pipelines.spark import get_spark
from mlabatch.pipelines.tables import table_exists, write_table

log = logging.getLogger(__name__)


def run_demo(settings: Settings, quiet: bool = False) -> str:
    """The whole local story in one command; returns the summary text."""
    connect_mlflow(settings.mlflow)
    registered = f"models:/{settings.model.name}@{settings.model.alias}"
    if settings.model.uri == registered and not alias_exists(settings.model.name, settings.model.alias):
        log.info("registering the bundled all-MiniLM-L6-v2 as %s", registered)
        prepare(settings)
    check_tables_here({"source.table": settings.source.table})
    spark = get_spark(settings.spark, quiet)
    if not table_exists(spark, settings.source.table):
        log.info("building the sample documents table at %s", settings.source.table)
        write_table(spark, spark.createDataFrame(sample_documents()), settings.source.table)
    stats, run_id = run_embed(settings, quiet=quiet)
    return summary(stats, settings, run_id)
