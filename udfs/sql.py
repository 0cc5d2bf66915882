"""Register the embedding UDF as a SQL function: `SELECT mla_embed(text).embedding FROM docs`."""
from __future__ import annotations

from mlabatch.udfs.embed import embed_udf


def register_embed_function(spark, model_uri: str, name: str = "mla_embed", token_budget: int | None = None) -> str:
    """Register `name(text)` in this Spark session, returning the struct of `embed_udf`; returns name."""
    spark.udf.register(name, embed_udf(model_uri, token_budget=token_budget))
    return name
