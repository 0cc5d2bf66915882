"""`generate_udf(model, sampling)`: a Spark column expression that continues a prompt column, one struct per row.

An iterator pandas UDF like `embed_udf`: each Python worker loads the engine once per device and feeds
it whole Arrow batches, which the engine schedules with continuous batching. Bad prompts never fail
the task: null, non-string or blank prompts come back with `error` set and no text.
"""
from __future__ import annotations

from typing import Iterator

import pandas as pd

from mlabatch.models.generator import EngineConfig, Generator, Output
from mlabatch.models.sampling import SamplingParams
from mlabatch.udfs.devices import limit_cpu_threads, task_device
from mlabatch.udfs.inputs import input_error
from mlabatch.udfs.model_cache import get_generator

GENERATE_RESULT_TYPE = ("text string, prompt_tokens int, generated_tokens int, finish_reason string, "
                        "truncated boolean, error string")


def generate_series(prompts: pd.Series, model_ref: str, device: str, sampling: SamplingParams,
                    engine: EngineConfig = EngineConfig()) -> pd.DataFrame:
    """Continue one batch of prompts; rows that cannot be continued get an error instead of text."""
    generator = get_generator(model_ref, device, engine)
    errors = [input_error(v, "prompt") for v in prompts]
    done = _generate_rows(generator, prompts, [i for i, e in enumerate(errors) if e is None], sampling, errors)
    rows = [done.get(i) for i in range(len(prompts))]
    return pd.DataFrame({
        "text": [o.text if o else None for o in rows],
        "prompt_tokens": [o.prompt_tokens if o else 0 for o in rows],
        "generated_tokens": [o.generated_tokens if o else 0 for o in rows],
        "finish_reason": [o.finish_reason if o else None for o in rows],
        "truncated": [o.truncated if o else False for o in rows],
        "error": errors,
    })


def _generate_rows(generator: Generator, prompts: pd.Series, rows: list[int], sampling: SamplingParams,
                   errors: list) -> dict[int, Output]:
    """{row: output}; if the batch fails, retry row by row to isolate the culprit."""
    if not rows:
        return {}
    try:
        outputs = generator.generate([prompts.iat[i] for i in rows], sampling)
    except Exception as err:  # noqa: BLE001 - reported in the row's error, never kills the task
        if len(rows) == 1:
            errors[rows[0]] = f"generation failed: {type(err).__name__}: {err}"
            return {}
        return {k: v for i in rows for k, v in _generate_rows(generator, prompts, [i], sampling, errors).items()}
    return dict(zip(rows, outputs))


def generate_udf(model_uri: str, sampling: SamplingParams = SamplingParams(), engine: EngineConfig = EngineConfig(),
                 device: str = "auto"):
    """A pandas UDF for `df.withColumn("g", generate_udf(uri, SamplingParams(...))("prompt"))`; a struct column.

    Create it once and reuse it. `model_uri` is a converted decoder (models:/ URI or a directory every
    worker can read). Give `sampling` a seed when sampling: a row's text then depends only on its prompt.
    """
    from pyspark.sql.functions import pandas_udf

    @pandas_udf(GENERATE_RESULT_TYPE)
    def generate(batches: Iterator[pd.Series]) -> Iterator[pd.DataFrame]:
        chosen = task_device(device)
        if chosen == "cpu":
            limit_cpu_threads()
        for prompts in batches:
            yield generate_series(prompts, model_uri, chosen, sampling, engine)

    return generate
