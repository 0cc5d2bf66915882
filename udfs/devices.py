"""Pick the torch device for the current Spark task from the GPUs Spark assigned to it, and build the
iterator pandas UDFs that stream a task's batches through a model on that device."""
from __future__ import annotations

from typing import Callable, Iterator

import pandas as pd


def task_context():
    """The running Spark task's TaskContext, or None outside a task (or where pyspark is not installed:
    the worker functions also run in plain Python, e.g. in benchmarks on a GPU machine without Spark)."""
    try:
        from pyspark import TaskContext
    except ImportError:
        return None
    return TaskContext.get()


def limit_cpu_threads() -> None:
    """Give torch only the cores Spark assigned to this task, so concurrent tasks do not oversubscribe."""
    import torch

    context = task_context()
    if context is not None:
        torch.set_num_threads(max(int(context.cpus()), 1))


def task_device(preference: str = "auto") -> str:
    """'cuda:<i>' for the task's assigned GPU, else 'cuda' if one is visible, else 'cpu'.

    Reads `TaskContext.resources()["gpu"]` (set by spark.task.resource.gpu.amount); imports torch
    lazily and never initializes CUDA unless a GPU will really be used.
    """
    if preference == "cpu":
        return "cpu"
    context = task_context()
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


def task_setup(preference: str = "auto") -> str:
    """The device this task runs its model on (see task_device); on the CPU, torch gets the task's cores only."""
    chosen = task_device(preference)
    if chosen == "cpu":
        limit_cpu_threads()
    return chosen


def device_udf(work: Callable[[Iterator[pd.Series], str], Iterator[pd.DataFrame]], result_type: str,
               device: str = "auto"):
    """An iterator pandas UDF returning `result_type` structs: each task picks its device once (task_setup)
    and streams all its Arrow batches through `work(batches, device)`, one output frame per input batch.
    Spark names the column after `work`."""
    from pyspark.sql.functions import pandas_udf

    def run(batches: Iterator[pd.Series]) -> Iterator[pd.DataFrame]:
        yield from work(batches, task_setup(device))

    run.__name__ = work.__name__  # the column Spark derives reads embed(text), not run(text)
    return pandas_udf(run, result_type)
