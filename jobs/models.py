"""`mlabatch models prepare`: register the bundled all-MiniLM-L6-v2 in MLflow under an alias."""
from __future__ import annotations

import mlflow

from mlabatch.models.registry.bundled import bundled_minilm_dir
from mlabatch.models.registry.register import register_model
from mlabatch.models.registry.resolve import ResolvedModel
from mlabatch.pipelines.checks import connect_mlflow
from mlabatch.pipelines.settings import Settings


def alias_exists(name: str, alias: str) -> bool:
    """Whether models:/name@alias resolves in the configured registry."""
    try:
        mlflow.MlflowClient().get_model_version_by_alias(name, alias)
        return True
    except mlflow.exceptions.MlflowException:
        return False


def prepare(settings: Settings) -> ResolvedModel:
    """Log the bundled MiniLM as a pyfunc, register it as model.name and set model.alias."""
    connect_mlflow(settings.mlflow)
    return register_model(bundled_minilm_dir(), settings.model.name, settings.model.alias)
