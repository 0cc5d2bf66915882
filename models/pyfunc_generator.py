"""The MLflow pyfunc of an MLA-converted decoder, logged as models-from-code.

Input: a DataFrame with a `prompt` column; output: a `text` column, continued by the generation
engine (greedy unless params say otherwise: `max_new_tokens`, `temperature`, `top_k`, `top_p`, `seed`).
"""
from __future__ import annotations

import mlflow
import pandas as pd

from mlabatch.models.loading import MLFLOW_ARTIFACT, load_generator
from mlabatch.models.sampling import SamplingParams

PARAMS = ("max_new_tokens", "temperature", "top_k", "top_p", "seed")


class GeneratorModel(mlflow.pyfunc.PythonModel):
    """Loads the converted decoder into a generation engine once; predict continues each prompt."""

    def load_context(self, context) -> None:
        self.generator = load_generator(context.artifacts[MLFLOW_ARTIFACT])

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        given = {k: v for k, v in (params or {}).items() if k in PARAMS and v is not None}
        sampling = SamplingParams(**{"max_new_tokens": 64, **given})
        prompts = model_input["prompt"].fillna("").astype(str).tolist()
        return pd.DataFrame({"text": [o.text for o in self.generator.generate(prompts, sampling)]})


mlflow.models.set_model(GeneratorModel())
