"""The MLflow pyfunc of an MLA-converted decoder, logged as models-from-code.

Input: a DataFrame with a `prompt` column; output: a `text` column of greedy continuations through
the paged latent cache (param `max_new_tokens`, default 64). The batch generation engine with
sampling and continuous batching serves decoders in jobs; this pyfunc is for registry checks and
notebooks.
"""
from __future__ import annotations

import mlflow
import pandas as pd

from mlabatch.models.fidelity import greedy_mla
from mlabatch.models.loading import MLFLOW_ARTIFACT, load_tokenizer
from mlabatch.models.mla_decoder import load_mla_decoder


class GeneratorModel(mlflow.pyfunc.PythonModel):
    """Loads the converted decoder once; predict continues each prompt greedily."""

    def load_context(self, context) -> None:
        model_dir = context.artifacts[MLFLOW_ARTIFACT]
        self.decoder = load_mla_decoder(model_dir)
        self.tokenizer = load_tokenizer(model_dir)

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        max_new = int((params or {}).get("max_new_tokens", 64))
        prompts = [self.tokenizer.encode(p).ids for p in model_input["prompt"].fillna("").astype(str)]
        outputs = greedy_mla(self.decoder, prompts, max_new)
        return pd.DataFrame({"text": [self.tokenizer.decode(ids) for ids in outputs]})


mlflow.models.set_model(GeneratorModel())
