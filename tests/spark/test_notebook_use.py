"""Notebook use: embed_udf as a column expression, and the same UDF as a SQL function."""
import numpy as np

from mlabatch.udfs import embed_udf, register_embed_function


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
