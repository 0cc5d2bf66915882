"""Register models in MLflow (local sqlite store or Unity Catalog) as mlabatch pyfuncs."""
from __future__ import annotations

from pathlib import Path

from mlabatch.models.mla_config import MLAModelConfig, is_converted
from mlabatch.models.registry.resolve import MLFLOW_ARTIFACT, ResolvedModel, resolve_model


def _pyfunc_for(model_dir: Path):
    """(models-from-code file, input example, output example, params) for an embedder or an MLA decoder."""
    import numpy as np
    import pandas as pd

    if is_converted(model_dir) and MLAModelConfig.read(model_dir).kind == "decoder":
        from mlabatch.models.generation.config import SamplingParams
        from mlabatch.models.registry import pyfunc_generator

        params = SamplingParams().model_dump(include=set(pyfunc_generator.PARAMS))
        return (pyfunc_generator.__file__, pd.DataFrame({"prompt": ["Once upon a time"]}),
                pd.DataFrame({"text": [" there was"]}), params)
    from mlabatch.models.registry import pyfunc_embedder

    return (pyfunc_embedder.__file__, pd.DataFrame({"text": ["an example document"]}),
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
