"""The table seam's pieces that need no Spark: Databricks MERGE text and local name rules."""
import pyarrow as pa
import pytest
from deltalake import write_deltalake

from mlabatch.pipelines.tables import merge_sql, table_columns, table_exists, where_problem


def test_databricks_merge_deletes_flagged_rows_and_upserts_the_rest():
    sql = merge_sql("main.s.emb", "src", ["id", "chunk", "embedding"], ["id", "chunk"], "_delete")
    assert sql.startswith("MERGE INTO main.s.emb t USING src s ON t.`id` = s.`id` AND t.`chunk` = s.`chunk` ")
    assert "WHEN MATCHED AND s.`_delete` THEN DELETE" in sql
    assert sql.index("THEN DELETE") < sql.index("WHEN MATCHED THEN UPDATE SET t.`id` = s.`id`")
    assert "WHEN NOT MATCHED AND NOT s.`_delete` THEN INSERT (`id`, `chunk`, `embedding`)" in sql
    assert "`_delete`" not in sql.split("INSERT")[1].split("VALUES")[0]


def test_path_tables_merge_by_path():
    assert merge_sql("/Volumes/c/s/v/emb", "src", ["id"], ["id"], None).startswith(
        "MERGE INTO delta.`/Volumes/c/s/v/emb` t")


def test_catalog_names_need_databricks(monkeypatch):
    monkeypatch.delenv("DATABRICKS_RUNTIME_VERSION", raising=False)
    with pytest.raises(ValueError, match="needs Databricks"):
        table_exists(None, "main.schema.table")


@pytest.mark.parametrize("name, problem", [
    ("data/tables/documents", None), ("/abs/documents", None),
    ("main.schema.table", "needs Databricks"), ("schema.table", "needs Databricks"),
])
def test_locally_tables_are_paths(monkeypatch, name, problem):
    monkeypatch.delenv("DATABRICKS_RUNTIME_VERSION", raising=False)
    assert where_problem(name) is None if problem is None else problem in where_problem(name)


@pytest.mark.parametrize("name, problem", [
    ("main.schema.table", None), ("/Volumes/c/s/v/documents", None), ("dbfs:/mnt/documents", None),
    ("s3://bucket/documents", None), ("data/tables/documents", "relative path"),
])
def test_on_databricks_tables_are_names_or_absolute_paths(monkeypatch, name, problem):
    monkeypatch.setenv("DATABRICKS_RUNTIME_VERSION", "17.3")
    assert where_problem(name) is None if problem is None else problem in where_problem(name)


def test_columns_of_a_local_table_come_from_its_metadata(tmp_path):
    table = pa.table({"id": ["a"], "chunk": pa.array([0], pa.int32()),
                      "embedding": pa.array([[0.5]], pa.list_(pa.float32()))})
    write_deltalake(str(tmp_path / "t"), table)
    assert table_columns(None, str(tmp_path / "t")) == {"id": "string", "chunk": "int", "embedding": "array<float>"}
