"""Register models in MLflow (local sqlite store or Unity Catalog) as mlabatch pyfuncs."""
from __future__ import annotations

from pathlib import Path

from mlabatch.models.mla_config import MLAModelConfig, is_converted
from mlabatch.models.registry.resolve import MLFLOW_ARTIFACT, ResolvedModel, resolve_model


def _pyfunc_for(model_dir: Path):
    """(models-from-code file, input example, signature) for an embedder or an MLA decoder.

    The output examples carry every column the pyfunc returns, with the dtypes of EMBED_RESULT_TYPE /
    GENERATE_RESULT_TYPE, so the signature tells MLflow's tools (spark_udf, serving) what comes back.
    """
    import numpy as np
    import pandas as pd
    from mlflow.models import infer_signature
    from mlflow.types.schema import ParamSchema, ParamSpec

    if is_converted(model_dir) and MLAModelConfig.read(model_dir).kind == "decoder":
        from mlabatch.models.generation.config import SamplingParams
        from mlabatch.models.registry import pyfunc_generator

        example = pd.DataFrame({"prompt": ["Once upon a time"]})
        output = pd.DataFrame({"text": [" there was"], "prompt_tokens": np.array([4], dtype=np.int32),
                               "generated_tokens": np.array([2], dtype=np.int32), "finish_reason": ["length"],
                               "truncated": [False], "error": ["prompt is null"]})
        defaults = SamplingParams().model_dump(include=set(pyfunc_generator.PARAMS) - {"stop"})
        # infer_signature would type an empty `stop` list as datetime: declare it as a list of strings
        params = ParamSchema([*infer_signature(params=defaults).params.params,
                              ParamSpec("stop", "string", [], shape=(-1,))])
        signature = infer_signature(example, output)
        signature.params = params
        return pyfunc_generator.__file__, example, signature
    from mlabatch.models.registry import pyfunc_embedder

    example = pd.DataFrame({"text": ["an example document"]})
    output = pd.DataFrame({"embedding": [np.zeros(4, dtype=np.float32)],
                           "token_count": np.array([5], dtype=np.int32), "truncated": [False],
                           "error": ["text is null"]})
    return pyfunc_embedder.__file__, example, infer_signature(example, output)


def register_model(model_dir: Path, name: str, alias: str) -> ResolvedModel:
    """Log `model_dir` as an mlabatch pyfunc, register it as `name`, point `alias` at the new version.

    Logs into the active MLflow run if there is one (so a conversion's report sits beside its model),
    else into a run of its own.
    """
    import contextlib

    import mlflow

    code, example, signature = _pyfunc_for(Path(model_dir))
    run = contextlib.nullcontext() if mlflow.active_run() else mlflow.start_run(run_name=f"register {name}")
    with run:
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=code,
            artifacts={MLFLOW_ARTIFACT: str(model_dir)},
            signature=signature,
            input_example=example,
            registered_model_name=name,
        )
    version = info.registered_model_version
    mlflow.MlflowClient().set_registered_model_alias(name, alias, version)
    return resolve_model(f"models:/{name}@{alias}")
