"""`load_model(uri, device)`: a model URI or directory -> the engine that serves it (embedder or generator)."""
from __future__ import annotations

from pathlib import Path

import torch

from mlabatch.models.conversion.families import FAMILIES, model_type
from mlabatch.models.embedding.engine import Embedder, load_embedder
from mlabatch.models.generation.config import EngineConfig
from mlabatch.models.generation.engine import Generator, load_generator
from mlabatch.models.mla_config import MLAModelConfig, is_converted
from mlabatch.models.registry.resolve import local_dir


def load_model(uri: str | Path, device: str | torch.device = "auto", token_budget: int | None = None,
               engine: EngineConfig = EngineConfig()) -> Embedder | Generator:
    """Resolve `uri` once and load it: a decoder (converted or not) gets the generation engine, anything
    else the embedder, whose errors name what it runs.

    `token_budget` applies to embedders, `engine` to generators.
    """
    model_dir = local_dir(uri)
    if _is_decoder(model_dir):
        return load_generator(model_dir, device, engine)
    return load_embedder(model_dir, device, token_budget)


def _is_decoder(model_dir: Path) -> bool:
    if is_converted(model_dir):
        return MLAModelConfig.read(model_dir).kind == "decoder"
    family = FAMILIES.get(model_type(model_dir))
    return family is not None and family.kind == "decoder"
