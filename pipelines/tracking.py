"""MLflow for runs and models: point it at the configured store and log what a run did."""
from __future__ import annotations

from pathlib import Path

import mlflow

from mlabatch.pipelines.settings import MlflowSettings, Settings


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


def run_params(settings: Settings, model_version: str) -> dict[str, str]:
    """The parameters that define an embedding run."""
    return {
        "source": settings.source.table,
        "target": settings.target.table,
        "model_uri": settings.model.uri,
        "model_version": model_version,
        **{f"embed.{k}": str(v) for k, v in settings.embed.model_dump().items()},
    }
