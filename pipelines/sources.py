"""Reading a keyed text table (documents or prompts) the same way for every pipeline.

Checks the configured columns before any work, hashes each text, turns texts that are not valid UTF-8
and duplicated ids into error rows, and says how many tasks can run at once.

Texts that are not valid UTF-8 are caught here, in Spark, because they cannot reach Python at all:
Arrow refuses them when it hands a batch to a worker, which fails the whole task. Such a text is
replaced by null and its row carries the error; its hash is of the original bytes, so fixing the
source row makes it new again.
"""
from __future__ import annotations

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import StringType

from mlabatch.pipelines.tables import read_table

NULL_TEXT_HASH = "\u0000null"  # hashed in place of a null text, so null and "" differ


class SourceSchemaError(ValueError):
    """The source table lacks a configured column or has the wrong type; the message names the fix."""


def load_texts(spark: SparkSession, table: str, id_column: str, text_column: str,
               setting_keys: tuple[str, str]) -> DataFrame:
    """Rows of `table` as (id, text, content_hash, text_error); `setting_keys` name the column settings in errors.

    `text_error` is set (and `text` null) where the stored text is not valid UTF-8.
    """
    src = read_table(spark, table)
    missing = [c for c in (id_column, text_column) if c not in src.columns]
    id_key, text_key = setting_keys
    if missing:
        raise SourceSchemaError(
            f"{table} has no column {', '.join(missing)} (it has {', '.join(src.columns)}); "
            f"set {id_key} / {text_key} to the right names")
    text_type = src.schema[text_column].dataType
    if not isinstance(text_type, StringType):
        raise SourceSchemaError(
            f"{table}.{text_column} is {text_type.simpleString()}, not string; "
            f"use a string column (cast it in a view) or set {text_key}")
    text = F.col(text_column)
    invalid = ~F.is_valid_utf8(text)  # null for a null text: not an error here
    return src.select(
        F.col(id_column).cast("string").alias("id"),
        F.when(invalid, F.lit(None)).otherwise(text).alias("text"),
        F.sha2(F.coalesce(text, F.lit(NULL_TEXT_HASH)), 256).alias("content_hash"),
        F.when(invalid, F.lit(f"{text_column} is not valid UTF-8")).alias("text_error"),
    )


def one_row_per_id(src: DataFrame) -> DataFrame:
    """(id, text, content_hash, doc_error, copies): duplicated ids become one error row, never a silent
    pick; otherwise `doc_error` is the row's `text_error`. `copies` counts the source rows of the id."""
    grouped = src.groupBy("id").agg(
        F.count("*").alias("copies"),
        F.first("text").alias("text"),
        F.first("text_error").alias("text_error"),
        F.sort_array(F.collect_list("content_hash")).alias("hashes"),
    )
    duplicated = F.col("copies") > 1
    return grouped.select(
        "id",
        F.when(duplicated, F.lit(None).cast("string")).otherwise(F.col("text")).alias("text"),
        F.when(duplicated, F.sha2(F.concat_ws(",", "hashes"), 256)).otherwise(F.col("hashes")[0]).alias("content_hash"),
        F.when(duplicated, F.format_string("id appears %d times in the source; ids must be unique", "copies"))
        .otherwise(F.col("text_error")).alias("doc_error"),
        "copies",
    )


def parallel_slots(spark: SparkSession) -> int:
    """How many tasks can run the model at once: GPUs across executors, or cores without GPUs."""
    gpus_per_executor = int(float(spark.conf.get("spark.executor.resource.gpu.amount", "0")))
    if gpus_per_executor:
        executors = max(spark.sparkContext._jsc.sc().getExecutorMemoryStatus().size() - 1, 1)
        return gpus_per_executor * executors
    return spark.sparkContext.defaultParallelism
