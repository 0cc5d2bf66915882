"""`embed_udf(model)`: a Spark column expression that embeds a text column, one struct per row.

An iterator pandas UDF: each Python worker loads the model once per device (udfs.model_cache) and
streams Arrow batches through it. Bad values never fail the task: they come back with `error` set.
"""
from __future__ import annotations

from typing import Iterator

import pandas as pd

from mlabatch.models.embedder import Embedder
from mlabatch.udfs.devices import limit_cpu_threads, task_device
from mlabatch.udfs.inputs import input_error
from mlabatch.udfs.model_cache import get_embedder

EMBED_RESULT_TYPE = "embedding array<float>, token_count int, truncated boolean, error string"


def embed_series(texts: pd.Series, model_ref: str, device: str, token_budget: int | None = None) -> pd.DataFrame:
    """Embed one batch of values; rows that cannot be embedded get an error instead of a vector."""
    embedder = get_embedder(model_ref, device, token_budget)
    errors = [input_error(v) for v in texts]
    done = _embed_rows(embedder, texts, [i for i, e in enumerate(errors) if e is None], errors)
    return pd.DataFrame({
        "embedding": [done[i][0] if i in done else None for i in range(len(texts))],
        "token_count": [done[i][1] if i in done else 0 for i in range(len(texts))],
        "truncated": [done[i][2] if i in done else False for i in range(len(texts))],
        "error": errors,
    })


def _embed_rows(embedder: Embedder, texts: pd.Series, rows: list[int], errors: list) -> dict[int, tuple]:
    """{row: (vector, tokens, truncated)}; if the batch fails, retry row by row to isolate the culprit."""
    if not rows:
        return {}
    try:
        result = embedder.embed_with_counts([texts.iat[i] for i in rows])
    except Exception as err:  # noqa: BLE001 - reported in the row's error, never kills the task
        if len(rows) == 1:
            errors[rows[0]] = f"embedding failed: {type(err).__name__}: {err}"
            return {}
        return {k: v for i in rows for k, v in _embed_rows(embedder, texts, [i], errors).items()}
    return {i: (result.embeddings[j], result.token_counts[j], result.truncated[j]) for j, i in enumerate(rows)}


def embed_udf(model_uri: str, token_budget: int | None = None, device: str = "auto"):
    """A pandas UDF for `df.withColumn("emb", embed_udf(uri)("text"))`; returns a struct column.

    Create it once and reuse it: each call makes a new UDF. `model_uri` is a models:/ URI or a model
    directory readable by every worker (a local path in local mode, a /Volumes path on Databricks).
    `token_budget` caps real tokens per model call (default: 65536 on GPU, 4096 on CPU).
    """
    from pyspark.sql.functions import pandas_udf

    @pandas_udf(EMBED_RESULT_TYPE)
    def embed(batches: Iterator[pd.Series]) -> Iterator[pd.DataFrame]:
        chosen = task_device(device)
        if chosen == "cpu":
            limit_cpu_threads()
        for texts in batches:
            yield embed_series(texts, model_uri, chosen, token_budget)

    return embed
