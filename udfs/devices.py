"""Pick the torch device for the current Spark task from the GPUs Spark assigned to it, and build the
iterator pandas UDFs that run a model on that device."""
from __future__ import annotations

from typing import Callable, Iterator

import pandas as pd


def limit_cpu_threads() -> None:
    """Give torch only the cores Spark assigned to this task, so concurrent tasks do not oversubscribe."""
    from pyspark import TaskContext

    import torch

    context = TaskContext.get()
    if context is not None:
        torch.set_num_threads(max(int(context.cpus()), 1))


def task_device(preference: str = "auto") -> str:
    """'cuda:<i>' for the task's assigned GPU, else 'cuda' if one is visible, else 'cpu'.

    Reads `TaskContext.resources()["gpu"]` (set by spark.task.resource.gpu.amount); imports torch
    lazily and never initializes CUDA unless a GPU will really be used.
    """
    if preference == "cpu":
        return "cpu"
    from pyspark import TaskContext

    context = TaskContext.get()
    gpus = context.resources().get("gpu") if context is not None else None
    if gpus is not None and gpus.addresses:
        return f"cuda:{gpus.addresses[0]}"
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if preference == "cuda":
        raise RuntimeError("device 'cuda' was asked for but this worker has no usable GPU; set embed.device=auto "
                           "or generate.device=auto (device='auto' for a UDF)")
    return "cpu"


def device_udf(work: Callable[[pd.Series, str], pd.DataFrame], result_type: str, device: str = "auto"):
    """An iterator pandas UDF returning `result_type` structs: each task picks its device once (see
    task_device) and maps every Arrow batch with `work(batch, device)`. Spark names it after `work`."""
    from pyspark.sql.functions import pandas_udf

    def run(batches: Iterator[pd.Series]) -> Iterator[pd.DataFrame]:
        chosen = task_device(device)
        if chosen == "cpu":
            limit_cpu_threads()
        for batch in batches:
            yield work(batch, chosen)

    run.__name__ = work.__name__  # the column Spark derives reads embed(text), not run(text)
    return pandas_udf(run, result_type)
