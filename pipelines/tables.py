"""The table I/O seam: read a Delta table into Spark, MERGE a Spark DataFrame into a Delta table.

On Databricks it is Spark's own Delta (`spark.table`, `MERGE INTO`). Elsewhere Spark has no Delta
jars (none ship on the reachable registries), so tables are local paths read and written with
delta-rs (`deltalake`) and handed to and from Spark as Arrow. Either way the tables are real Delta.
"""
from __future__ import annotations

import os
import re
from pathlib import Path


class TableNotFoundError(LookupError):
    """The table does not exist; the message names it and what to do."""


def on_databricks() -> bool:
    """True inside a Databricks runtime (driver or notebook)."""
    return "DATABRICKS_RUNTIME_VERSION" in os.environ


def _is_path(name: str) -> bool:
    return "/" in name


def where_problem(name: str) -> str | None:
    """Why `name` cannot be a table where this process runs, or None when it can.

    Locally Spark has no Delta metastore, so a catalog name cannot work: tables are paths. On Databricks a
    path must be absolute (a /Volumes path) or a URI (dbfs:/, s3://, ...): a relative one would land in the
    driver's working directory, which no worker shares.
    """
    if on_databricks():
        if _is_path(name) and not (name.startswith("/") or re.match(r"^[a-z][a-z0-9+.-]*:/", name)):
            return "a relative path means nothing on a cluster; give catalog.schema.table or a /Volumes/... path"
        return None
    if not _is_path(name):
        return ("a catalog table name needs Databricks (locally there is no metastore with Delta); "
                "give a path such as data/tables/documents")
    return None


def _local_path(name: str) -> str:
    problem = where_problem(name)
    if problem:
        raise ValueError(f"table {name!r}: {problem}")
    return str(Path(name).expanduser().resolve())


def _databricks_table(spark, name: str):
    return spark.read.format("delta").load(name) if _is_path(name) else spark.table(name)


def table_exists(spark, name: str) -> bool:
    """Whether `name` is an existing Delta table (`spark` is needed on Databricks only)."""
    if on_databricks():
        if _is_path(name):
            from delta.tables import DeltaTable as SparkDeltaTable

            return SparkDeltaTable.isDeltaTable(spark, name)
        return spark.catalog.tableExists(name)
    from deltalake import DeltaTable

    return DeltaTable.is_deltatable(_local_path(name))


def read_table(spark, name: str):
    """The current version of a Delta table as a Spark DataFrame."""
    if not table_exists(spark, name):
        raise TableNotFoundError(f"table {name} does not exist; check source.table/target.table or create it")
    if on_databricks():
        return _databricks_table(spark, name)
    from deltalake import DeltaTable

    arrow = DeltaTable(_local_path(name)).to_pyarrow_table()
    return spark.createDataFrame(arrow)


def table_columns(spark, name: str) -> dict[str, str]:
    """Column name -> Spark type (e.g. "array<float>") of an existing Delta table, from its metadata alone
    (`spark` is needed on Databricks only)."""
    if on_databricks():
        schema = _databricks_table(spark, name).schema  # lazy: no Spark job
    else:
        import pyarrow as pa
        from deltalake import DeltaTable
        from pyspark.sql.pandas.types import from_arrow_schema

        schema = from_arrow_schema(pa.schema(DeltaTable(_local_path(name)).schema().to_arrow()))
    return {field.name: field.dataType.simpleString() for field in schema}


def write_table(spark, df, name: str) -> None:
    """Create or replace a Delta table with `df` (sample data, and the first MERGE into a new target)."""
    if on_databricks():
        writer = df.write.format("delta").mode("overwrite").option("overwriteSchema", "true")
        writer.save(name) if _is_path(name) else writer.saveAsTable(name)
        return
    from deltalake import write_deltalake

    write_deltalake(_local_path(name), df.toArrow(), mode="overwrite", schema_mode="overwrite")


def merge_sql(name: str, source_view: str, columns: list[str], keys: list[str], delete_column: str | None) -> str:
    """Spark SQL MERGE: update or insert on `keys`; source rows with `delete_column` true delete."""
    on = " AND ".join(f"t.`{k}` = s.`{k}`" for k in keys)
    sets = ", ".join(f"t.`{c}` = s.`{c}`" for c in columns)
    cols = ", ".join(f"`{c}`" for c in columns)
    vals = ", ".join(f"s.`{c}`" for c in columns)
    target = f"delta.`{name}`" if _is_path(name) else name
    clauses = []
    if delete_column:
        clauses.append(f"WHEN MATCHED AND s.`{delete_column}` THEN DELETE")
        clauses.append(f"WHEN MATCHED THEN UPDATE SET {sets}")
        clauses.append(f"WHEN NOT MATCHED AND NOT s.`{delete_column}` THEN INSERT ({cols}) VALUES ({vals})")
    else:
        clauses.append(f"WHEN MATCHED THEN UPDATE SET {sets}")
        clauses.append(f"WHEN NOT MATCHED THEN INSERT ({cols}) VALUES ({vals})")
    return f"MERGE INTO {target} t USING {source_view} s ON {on} " + " ".join(clauses)


def merge_into(spark, df, name: str, keys: list[str], delete_column: str | None = None) -> None:
    """Upsert `df` into table `name` on `keys`; rows whose `delete_column` is true delete their match.

    Creates the table from the non-deleting rows when it does not exist yet. A retried or repeated
    merge of the same rows leaves the table unchanged: keys are unique in the target.
    """
    columns = [c for c in df.columns if c != delete_column]
    if not table_exists(spark, name):
        rows = df.filter(f"NOT `{delete_column}`") if delete_column else df
        write_table(spark, rows.select(*columns), name)
        return
    if on_databricks():
        view = "_mlabatch_merge_source"
        df.createOrReplaceTempView(view)
        spark.sql(merge_sql(name, view, columns, keys, delete_column))
        return
    from deltalake import DeltaTable

    source = df.toArrow()
    predicate = " AND ".join(f"t.{k} = s.{k}" for k in keys)
    merger = DeltaTable(_local_path(name)).merge(source, predicate, source_alias="s", target_alias="t")
    if delete_column:
        merger = (merger.when_matched_delete(f"s.{delete_column}")
                  .when_matched_update_all(except_cols=[delete_column])
                  .when_not_matched_insert_all(f"NOT s.{delete_column}", except_cols=[delete_column]))
    else:
        merger = merger.when_matched_update_all().when_not_matched_insert_all()
    merger.execute()
