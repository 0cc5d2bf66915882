"""The MLflow pyfunc of an MLA-converted decoder, logged as models-from-code.

Input: a DataFrame with a `prompt` column; output: a `text` column, continued by the generation
engine. MLflow `params` may set any of PARAMS; the rest keep SamplingParams' defaults (greedy).
"""
from __future__ import annotations

import mlflow
import pandas as pd

from mlabatch.models.generation.config import SamplingParams
from mlabatch.models.generation.engine import load_generator
from mlabatch.models.registry.resolve import MLFLOW_ARTIFACT

PARAMS = ("max_new_tokens", "temperature", "top_k", "top_p", "seed")  # sampling settings taken as MLflow params


class GeneratorModel(mlflow.pyfunc.PythonModel):
    """Loads the converted decoder into a generation engine once; predict continues each prompt."""

    def load_context(self, context) -> None:
        self.generator = load_generator(context.artifacts[MLFLOW_ARTIFACT])

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        sampling = SamplingParams(**{k: v for k, v in (params or {}).items() if k in PARAMS and v is not None})
        prompts = model_input["prompt"].fillna("").astype(str).tolist()
        return pd.DataFrame({"text": [o.text for o in self.generator.generate(prompts, sampling)]})


mlflow.models.set_model(GeneratorModel())
