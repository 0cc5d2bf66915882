"""What each stage asks the cluster for, and what the model stage's tasks report back.

CPU stages (read, dedupe, anti-join, MERGE) should run on every core of a GPU node, the model stage one
task per GPU. On a cluster that schedules GPUs with a fractional `spark.task.resource.gpu.amount`
(1 / cores per GPU: resources/jobs.yml), ordinary tasks share a GPU and run on all cores, and the
model stage carries a stage-level resource profile asking for one whole GPU and that GPU's cores
(Spark >= 3.4 on standalone clusters, as Databricks job clusters are; NVIDIA's spark-rapids-ml does the
same). Local mode and clusters that give every task a whole GPU get no profile: there the stage runs
as it always did.
"""
from __future__ import annotations

from typing import Iterable, Mapping

from pyspark.accumulators import AccumulatorParam
from pyspark.resource import ResourceProfile, ResourceProfileBuilder, TaskResourceRequests
from pyspark.sql import SparkSession

from mlabatch.udfs.task_stats import Report, TaskStats


def model_task_cpus(conf: Mapping[str, str]) -> int | None:
    """The cores a model task asks for with its one GPU: the executor's cores per GPU, where ordinary tasks
    get a fraction of a GPU on a cluster manager that can schedule stages differently; else None."""
    executor_gpus = float(conf.get("spark.executor.resource.gpu.amount", "0"))
    task_gpus = float(conf.get("spark.task.resource.gpu.amount", "0"))
    if conf.get("spark.master", "local").startswith("local") or executor_gpus < 1 or not 0 < task_gpus < 1:
        return None
    cores = conf.get("spark.executor.cores")
    if cores:
        return max(int(cores) // int(executor_gpus), 1)
    return max(round(1 / task_gpus) * int(conf.get("spark.task.cpus", "1")), 1)


def model_stage_profile(spark: SparkSession) -> ResourceProfile | None:
    """The model stage's resource profile (one GPU and its cores per task, see model_task_cpus), or None."""
    cpus = model_task_cpus(dict(spark.sparkContext.getConf().getAll()))
    if cpus is None:
        return None
    return ResourceProfileBuilder().require(TaskResourceRequests().cpus(cpus).resource("gpu", 1.0)).build


class _Appending(AccumulatorParam):
    """Accumulates lists by concatenation."""

    def zero(self, value: list) -> list:
        return []

    def addInPlace(self, a: list, b: list) -> list:
        a.extend(b)
        return a


class TaskReports:
    """Collects the TaskStats the model stage's tasks report, through a Spark accumulator."""

    def __init__(self, spark: SparkSession) -> None:
        self._accumulator = spark.sparkContext.accumulator([], _Appending())

    @property
    def report(self) -> Report:
        """What a worker calls with its TaskStats (picklable: it carries only the accumulator)."""
        accumulator = self._accumulator
        return lambda stats: accumulator.add([stats])

    def tasks(self) -> list[TaskStats]:
        """One TaskStats per task of every model stage so far: the last attempt of a retried task only."""
        return _last_attempts(self._accumulator.value)


def _last_attempts(reports: Iterable[TaskStats]) -> list[TaskStats]:
    last: dict[tuple[int, int], TaskStats] = {}
    for s in reports:
        key = (s.stage, s.partition)
        if key not in last or s.attempt >= last[key].attempt:
            last[key] = s
    return list(last.values())
