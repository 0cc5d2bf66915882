"""Pick the torch device for the current Spark task from the GPUs Spark assigned to it."""
from __future__ import annotations


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
        raise RuntimeError("embed.device is 'cuda' but this worker has no usable GPU; set embed.device=auto")
    return "cpu"
