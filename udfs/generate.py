"""`generate_udf(model, sampling)`: a Spark column expression that continues a prompt column, one struct per row.

An iterator pandas UDF like `embed_udf`: each Python worker loads the engine once per device and feeds
it whole Arrow batches, which the engine schedules with continuous batching. Bad prompts never fail
the task: null, non-string or blank prompts come back with `error` set and no text.
"""
from __future__ import annotations

import pandas as pd

from mlabatch.models.generation.config import EngineConfig, SamplingParams
from mlabatch.models.registry.resolve import MlflowStores
from mlabatch.models.rows import GENERATE_RESULT_TYPE, generation_rows
from mlabatch.udfs.devices import device_udf
from mlabatch.udfs.model_cache import get_engine


def generate_series(prompts: pd.Series, model_ref: str, device: str, sampling: SamplingParams,
                    engine: EngineConfig = EngineConfig(), stores: MlflowStores | None = None) -> pd.DataFrame:
    """Continue one batch of prompts; rows that cannot be continued get an error instead of text.

    `stores` is where a models:/ `model_ref` is looked up (None: this process's MLflow settings).
    """
    return generation_rows(prompts, get_engine("generator", model_ref, stores, device, engine), sampling)


def generate_udf(model_uri: str, sampling: SamplingParams = SamplingParams(), engine: EngineConfig = EngineConfig(),
                 device: str = "auto"):
    """A pandas UDF for `df.withColumn("g", generate_udf(uri, SamplingParams(...))("prompt"))`; a struct column.

    Create it once and reuse it. `model_uri` is a converted decoder (models:/ URI or a directory every
    worker can read; workers resolve a models:/ URI in the registry the driver has now). A row's text
    depends only on its prompt, `sampling` and its seed, so a retried task reproduces it.
    """
    stores = MlflowStores.current()  # the driver's registry, for workers to resolve models:/ URIs in

    def generate(prompts: pd.Series, task_device: str) -> pd.DataFrame:
        return generate_series(prompts, model_uri, task_device, sampling, engine, stores)

    return device_udf(generate, GENERATE_RESULT_TYPE, device)
