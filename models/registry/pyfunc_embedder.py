"""The MLflow pyfunc of an mlabatch embedder, logged as models-from-code.

MLflow runs this file when it loads the model: it defines the model class and hands an instance to
`mlflow.models.set_model`. Input: a DataFrame with a `text` column; output: an `embedding` column.
"""
from __future__ import annotations

import mlflow
import pandas as pd

from mlabatch.models.embedding.engine import load_embedder
from mlabatch.models.registry.resolve import MLFLOW_ARTIFACT


class EmbedderModel(mlflow.pyfunc.PythonModel):
    """Loads the weights artifact once; predict embeds the `text` column."""

    def load_context(self, context) -> None:
        self.embedder = load_embedder(context.artifacts[MLFLOW_ARTIFACT])

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        texts = model_input["text"].fillna("").astype(str).tolist()
        return pd.DataFrame({"embedding": list(self.embedder.embed(texts))})


mlflow.models.set_model(EmbedderModel())
