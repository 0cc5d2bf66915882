"""The Spark session: the cluster's own on Databricks, a local-mode one everywhere else."""
from __future__ import annotations

import os
import sys
from importlib import resources

from pyspark.sql import SparkSession

from mlabatch.pipelines.settings import SparkSettings
from mlabatch.pipelines.tables import on_databricks


def get_spark(settings: SparkSettings, quiet: bool = False) -> SparkSession:
    """Return the active session on Databricks; otherwise start local Spark with Arrow tuned for UDFs.

    `quiet` (the CLI's -q) starts local Spark with errors-only logging and no progress bars: its warnings
    at start-up come before `setLogLevel` can act, so the JVM gets a logging configuration of its own.
    """
    if on_databricks():
        spark = SparkSession.builder.getOrCreate()
    else:
        # Workers must run this interpreter (with mlabatch installed), not whatever `python3` is on PATH.
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
        builder = SparkSession.builder
        if quiet:
            log_conf = resources.files("mlabatch.conf") / "log4j2-quiet.properties"
            builder = builder.config("spark.driver.extraJavaOptions", f"-Dlog4j2.configurationFile={log_conf}")
        spark = (
            builder.master(settings.master or "local[2,4]")
            .appName("mlabatch")
            .config("spark.driver.memory", "4g")
            .config("spark.sql.shuffle.partitions", "8")
            .config("spark.ui.showConsoleProgress", str(not quiet).lower())
            .config("spark.sql.execution.arrow.pyspark.enabled", "true")
            .config("spark.python.worker.reuse", "true")  # keeps each worker's loaded model between tasks
            .getOrCreate()
        )
        spark.sparkContext.setLogLevel("ERROR")
    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", str(settings.max_records_per_batch))
    return spark
