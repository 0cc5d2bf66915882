"""`load_model(uri, device)`: a model URI or directory -> the engine that serves it (embedder or generator)."""
from __future__ import annotations

from pathlib import Path

import torch

from mlabatch.models.embedding.engine import Embedder, load_embedder
from mlabatch.models.generation.config import EngineConfig
from mlabatch.models.generation.engine import Generator, load_generator
from mlabatch.models.mla_config import MLAModelConfig, is_converted
from mlabatch.models.registry.resolve import local_dir


def load_model(uri: str | Path, device: str | torch.device = "auto", token_budget: int | None = None,
               engine: EngineConfig = EngineConfig()) -> Embedder | Generator:
    """Resolve `uri` once and load it: a converted decoder gets the generation engine, anything else the embedder.

    `token_budget` applies to embedders, `engine` to generators.
    """
    model_dir = local_dir(uri)
    if is_converted(model_dir) and MLAModelConfig.read(model_dir).kind == "decoder":
        return load_generator(model_dir, device, engine)
    return load_embedder(model_dir, device, token_budget)
