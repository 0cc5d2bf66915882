"""Notebook use: embed_udf as a column expression, and the same UDF as a SQL function."""
import re
from pathlib import Path

import numpy as np

from mlabatch.jobs.config import load_settings
from mlabatch.models.registry.register import register_model
from mlabatch.pipelines.tracking import configure_mlflow
from mlabatch.udfs import embed_udf, register_embed_function

README = Path(__file__).resolve().parents[2] / "README.md"


def test_embed_udf_as_column_and_sql_function(spark, minilm_dir, embedder):
    df = spark.createDataFrame([("a", "Delta tables of documents"), ("b", None), ("c", "GPU workers")],
                               "id string, text string")
    embed = embed_udf(str(minilm_dir), token_budget=256)
    rows = {r["id"]: r for r in df.withColumn("e", embed("text")).select("id", "e.*").collect()}
    np.testing.assert_allclose(rows["a"]["embedding"], embedder.embed(["Delta tables of documents"])[0], atol=1e-5)
    assert rows["a"]["token_count"] == 6 and rows["a"]["truncated"] is False and rows["a"]["error"] is None
    assert rows["b"]["embedding"] is None and rows["b"]["error"] == "text is null"

    name = register_embed_function(spark, str(minilm_dir))
    df.createOrReplaceTempView("docs")
    sql_rows = {r["id"]: r for r in spark.sql(f"SELECT id, {name}(text).embedding AS v FROM docs").collect()}
    np.testing.assert_allclose(sql_rows["c"]["v"], rows["c"]["embedding"], atol=1e-6)
    assert sql_rows["b"]["v"] is None


def readme_notebook_example() -> str:
    """The Python block of the README's "In a notebook" section, verbatim."""
    section = README.read_text().split("## In a notebook", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def worker_cwd(spark) -> Path:
    """The working directory of Spark's Python workers, where MLflow's default store would appear."""
    from pyspark.sql.functions import udf

    return Path(spark.range(1).select(udf(lambda _: __import__("os").getcwd(), "string")("id")).first()[0])


def test_readme_notebook_example_with_a_registry_model(spark, tmp_path, minilm_dir, embedder):
    """The README's example, run as written against a models:/ URI in a local registry that only the
    driver is configured for: workers must resolve the URI there, and never make their own ./mlflow.db."""
    store = f"sqlite:///{tmp_path}/mlflow.db"
    configure_mlflow(load_settings([], [f"mlflow.tracking_uri={store}", f"mlflow.registry_uri={store}",
                                        f"mlflow.artifact_location={tmp_path}/artifacts"]).mlflow)
    register_model(minilm_dir, "notebook-minilm", "champion")
    texts = {"a": "Delta tables of documents", "b": "GPU workers stream Arrow batches", "c": None}
    spark.createDataFrame(list(texts.items()), "id string, text string").createOrReplaceTempView("pages")
    stray_db = worker_cwd(spark) / "mlflow.db"
    stray_before = stray_db.exists()

    code = (readme_notebook_example()  # Databricks names -> the local registry model and a temp view
            .replace("models:/main.ml.minilm@champion", "models:/notebook-minilm@champion")
            .replace('spark.table("main.docs.pages")', 'spark.table("pages")')
            .replace("FROM main.docs.pages", "FROM pages"))
    scope = {"spark": spark}
    exec(code, scope)

    rows = {r["id"]: r for r in scope["df"].select("id", "e.*").collect()}
    sql_rows = {r["id"]: r["embedding"] for r in scope["vectors"].collect()}
    expected = embedder.embed([texts["a"], texts["b"]])
    for i, doc_id in enumerate("ab"):
        assert rows[doc_id]["error"] is None
        np.testing.assert_allclose(rows[doc_id]["embedding"], expected[i], atol=1e-5)
        np.testing.assert_allclose(sql_rows[doc_id], expected[i], atol=1e-5)
    assert rows["c"]["error"] == "text is null" and sql_rows["c"] is None
    assert stray_db.exists() == stray_before, f"a Python worker created {stray_db}"
