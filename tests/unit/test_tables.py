"""The table seam's pieces that need no Spark: Databricks MERGE text and local name rules."""
import pytest

from mlabatch.pipelines.tables import merge_sql, table_exists


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
