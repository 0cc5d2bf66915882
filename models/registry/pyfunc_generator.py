"""The MLflow pyfunc of an MLA-converted decoder, logged as models-from-code.

Input: a DataFrame with a `prompt` column; output: the columns `generate_udf` returns
(models.rows.GENERATE_RESULT_TYPE), with the same rules: a null, non-string or blank prompt gets an
error and no text. MLflow `params` may set any of PARAMS (`stop` is a list of strings); the rest keep
SamplingParams' defaults (greedy).
"""
from __future__ import annotations

import mlflow
import pandas as pd

from mlabatch.models.generation.config import SamplingParams
from mlabatch.models.generation.engine import load_generator
from mlabatch.models.registry.resolve import MLFLOW_ARTIFACT
from mlabatch.models.rows import generation_rows

PARAMS = ("max_new_tokens", "temperature", "top_k", "top_p", "seed", "stop")  # sampling settings taken as MLflow params


class GeneratorModel(mlflow.pyfunc.PythonModel):
    """Loads the converted decoder into a generation engine once (on the GPU when one is visible);
    predict continues the whole `prompt` column as one batch."""

    def load_context(self, context) -> None:
        self.generator = load_generator(context.artifacts[MLFLOW_ARTIFACT])

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        sampling = SamplingParams(**{k: v for k, v in (params or {}).items() if k in PARAMS and v is not None})
        return generation_rows(model_input["prompt"], self.generator, sampling)


mlflow.models.set_model(GeneratorModel())
