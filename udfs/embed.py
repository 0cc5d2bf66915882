"""`embed_udf(model)`: a Spark column expression that embeds a text column, one struct per row.

An iterator pandas UDF: each Python worker loads the model once per device (udfs.model_cache) and
streams Arrow batches through it. Bad values never fail the task: they come back with `error` set.
A `models:/` URI is resolved on the workers against the MLflow stores the driver has when the UDF is
made, so set the registry (`mlflow.set_registry_uri`) before calling `embed_udf`.
"""
from __future__ import annotations

import pandas as pd

from mlabatch.models.registry.resolve import MlflowStores
from mlabatch.models.rows import EMBED_RESULT_TYPE, embedding_rows
from mlabatch.udfs.devices import device_udf
from mlabatch.udfs.model_cache import get_engine


def embed_series(texts: pd.Series, model_ref: str, device: str, token_budget: int | None = None,
                 stores: MlflowStores | None = None) -> pd.DataFrame:
    """Embed one batch of values; rows that cannot be embedded get an error instead of a vector.

    `stores` is where a models:/ `model_ref` is looked up (None: this process's MLflow settings).
    """
    return embedding_rows(texts, get_engine("embedder", model_ref, stores, device, token_budget))


def embed_udf(model_uri: str, token_budget: int | None = None, device: str = "auto"):
    """A pandas UDF for `df.withColumn("emb", embed_udf(uri)("text"))`; returns a struct column.

    Create it once and reuse it: each call makes a new UDF. `model_uri` is a models:/ URI or a model
    directory readable by every worker (a local path in local mode, a /Volumes path on Databricks).
    `token_budget` caps real tokens per model call (default: 65536 on GPU, 4096 on CPU).
    """
    stores = MlflowStores.current()  # the driver's registry, for workers to resolve models:/ URIs in

    def embed(texts: pd.Series, task_device: str) -> pd.DataFrame:
        return embed_series(texts, model_uri, task_device, token_budget, stores)

    return device_udf(embed, EMBED_RESULT_TYPE, device)
