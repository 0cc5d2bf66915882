"""MLflow for runs and models: point it at the configured store, start runs, and log what a run did."""
from __future__ import annotations

import logging
import os
import socket
from pathlib import Path

import mlflow
from mlflow.tracking import MlflowClient

from mlabatch.pipelines.incremental import RunStats
from mlabatch.pipelines.settings import MlflowSettings, Settings

log = logging.getLogger(__name__)

HOST_TAG = "mlabatch.host"  # the machine whose process runs the MLflow run
PID_TAG = "mlabatch.pid"  # that process
ABANDONED_TAG = "mlabatch.abandoned"  # why a run left RUNNING was marked FAILED by a later one


def configure_mlflow(settings: MlflowSettings) -> None:
    """Set tracking and registry URIs and select (creating if needed) the experiment."""
    if settings.tracking_uri.startswith("sqlite:///"):
        Path(settings.tracking_uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(settings.tracking_uri)
    mlflow.set_registry_uri(settings.registry_uri or settings.tracking_uri)
    if mlflow.get_experiment_by_name(settings.experiment) is None:
        location = Path(settings.artifact_location).resolve().as_uri() if settings.artifact_location else None
        mlflow.create_experiment(settings.experiment, artifact_location=location)
    mlflow.set_experiment(settings.experiment)


def start_run(run_name: str) -> mlflow.ActiveRun:
    """Start an MLflow run in the current experiment, tagged with this machine and process, after
    marking FAILED the runs of the same name that killed processes left RUNNING.

    `with start_run(...)` ends the run FINISHED, or FAILED on an exception, as `mlflow.start_run` does;
    a process killed with SIGKILL (or by the OOM killer) cannot end its run, and the next run of the
    same job closes it through these tags."""
    fail_abandoned_runs(run_name)
    return mlflow.start_run(run_name=run_name, tags={HOST_TAG: socket.gethostname(), PID_TAG: str(os.getpid())})


def fail_abandoned_runs(run_name: str) -> list[str]:
    """Mark FAILED, with a tag saying why, the RUNNING runs named `run_name` in the current experiment
    whose process on this machine is gone; returns their run ids.

    Runs started on another machine are left as they are: from here it cannot be told whether their
    process still runs."""
    client = MlflowClient()
    host = socket.gethostname()
    abandoned = []
    for run in mlflow.search_runs(filter_string="attributes.status = 'RUNNING'", output_format="list"):
        tags = run.data.tags
        if run.info.run_name != run_name or tags.get(HOST_TAG) != host or PID_TAG not in tags:
            continue
        pid = int(tags[PID_TAG])
        if _process_exists(pid):
            continue
        client.set_tag(run.info.run_id, ABANDONED_TAG,
                       f"process {pid} on {host} ended without ending this run (killed); "
                       "marked FAILED by the next run of the same job")
        client.set_terminated(run.info.run_id, status="FAILED")
        log.warning("marked MLflow run %s FAILED: its process %d on %s was killed", run.info.run_id, pid, host)
        abandoned.append(run.info.run_id)
    return abandoned


def _process_exists(pid: int) -> bool:
    """Whether a process with this id exists on this machine (signal 0 only checks)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by another user
        return True
    return True


def run_params(settings: Settings, model_version: str) -> dict[str, str]:
    """The parameters that define an embedding run."""
    return {
        "source": settings.source.table,
        "target": settings.target.table,
        "model_uri": settings.model.uri,
        "model_version": model_version,
        **{f"embed.{k}": str(v) for k, v in settings.embed.model_dump().items()},
    }


def log_metrics(stats: RunStats) -> None:
    """Log a run's metrics, and per model task (step = task number) its engine share, rate and tokens."""
    mlflow.log_metrics(stats.metrics())
    for step, task in enumerate(stats.tasks):
        mlflow.log_metrics({"task_engine_share": task.engine_share, "task_seconds": task.seconds,
                            "task_items_per_s": task.items / task.seconds if task.seconds else 0.0,
                            "task_tokens_in": float(task.tokens_in), "task_tokens_out": float(task.tokens_out)},
                           step=step)
