"""Generation on Spark workers: `generate_udf(model, sampling)` for a prompt column, and
`generate_prompts_worker` for the pipeline's model stage.

Both run all of a task's prompts through one engine run (`models.rows.generation_frames`): the next
Arrow batches are tokenized on a background thread and their prompts join the decode batch as slots
free up, so the batch stays full until the partition ends; outputs come back in input order, one
frame per input batch. Bad prompts never reach the engine: null, non-string or blank prompts come
back with `error` set and no text.
"""
from __future__ import annotations

from collections import deque
from typing import Callable, Iterator

import pandas as pd

from mlabatch.models.generation.config import EngineConfig, SamplingParams
from mlabatch.models.rows import GENERATE_RESULT_TYPE, generation_frames
from mlabatch.udfs.devices import device_udf, task_setup
from mlabatch.udfs.model_cache import driver_stores, get_engine
from mlabatch.udfs.task_stats import Report, TaskClock

# The model stage of the generation pipeline: input (id, text, content_hash, doc_error), output one row per prompt.
PROMPT_ROWS_SCHEMA = f"id string, content_hash string, prompt string, doc_error string, {GENERATE_RESULT_TYPE}"


def generate_udf(model_uri: str, sampling: SamplingParams = SamplingParams(), engine: EngineConfig = EngineConfig(),
                 device: str = "auto"):
    """A pandas UDF for `df.withColumn("g", generate_udf(uri, SamplingParams(...))("prompt"))`; a struct column.

    Create it once and reuse it. `model_uri` is a converted decoder (models:/ URI or a directory every
    worker can read; workers resolve a models:/ URI in the registry the driver has now). A row's text
    depends only on its prompt, `sampling` and its seed, so a retried task reproduces it.
    """
    stores = driver_stores(model_uri)

    def generate(batches: Iterator[pd.Series], task_device: str) -> Iterator[pd.DataFrame]:
        yield from generation_frames(batches, get_engine("generator", model_uri, stores, task_device, engine), sampling)

    return device_udf(generate, GENERATE_RESULT_TYPE, device)


def generate_prompts_worker(model_ref: str, sampling: SamplingParams, engine: EngineConfig = EngineConfig(),
                            device: str = "auto", report: Report | None = None
                            ) -> Callable[[Iterator[pd.DataFrame]], Iterator[pd.DataFrame]]:
    """A function for `df.mapInPandas(f, PROMPT_ROWS_SCHEMA)`: prompts (id, text, content_hash, doc_error)
    in, the same rows with the GENERATE_RESULT_TYPE columns added out (the text column as `prompt`).

    Each task hands its TaskStats to `report` when its partition is done.
    """
    stores = driver_stores(model_ref)

    def run(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        clock = TaskClock(report)
        generator = get_engine("generator", model_ref, stores, task_setup(device), engine)
        inputs: deque[pd.DataFrame] = deque()  # batches read, not yet answered (outputs come in input order)

        def prompts() -> Iterator[pd.Series]:
            for docs in batches:
                inputs.append(docs)
                yield docs["text"].where(docs["doc_error"].isna(), None)  # rejected rows never reach the engine

        for frame in generation_frames(prompts(), generator, sampling):
            docs = inputs.popleft().reset_index(drop=True)
            clock.add(len(frame), int(frame["prompt_tokens"].sum()), int(frame["generated_tokens"].sum()))
            yield pd.concat([docs[["id", "content_hash"]], docs["text"].rename("prompt"), docs["doc_error"], frame],
                            axis=1)
        clock.finish(generator.stats.seconds)

    return run
