"""The MLflow pyfunc of an mlabatch embedder, logged as models-from-code.

MLflow runs this file when it loads the model: it defines the model class and hands an instance to
`mlflow.models.set_model`. Input: a DataFrame with a `text` column; output: the columns `embed_udf`
returns (models.rows.EMBED_RESULT_TYPE), with the same rules: a null, non-string or blank text gets an
error and no vector.
"""
from __future__ import annotations

import mlflow
import pandas as pd

from mlabatch.models.embedding.engine import load_embedder
from mlabatch.models.registry.resolve import MLFLOW_ARTIFACT
from mlabatch.models.rows import embedding_rows


class EmbedderModel(mlflow.pyfunc.PythonModel):
    """Loads the weights artifact once (on the GPU when one is visible); predict embeds the `text` column."""

    def load_context(self, context) -> None:
        self.embedder = load_embedder(context.artifacts[MLFLOW_ARTIFACT])

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        return embedding_rows(model_input["text"], self.embedder)


mlflow.models.set_model(EmbedderModel())
