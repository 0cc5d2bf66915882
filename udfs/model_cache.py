"""One engine per Python worker process, kind, model, device and options: loaded on first use, reused by
every later task. Model URIs are resolved here, once per process; the engines' loaders take directories."""
from __future__ import annotations

import functools
import threading
from pathlib import Path
from typing import Literal

from tokenizers import Tokenizer

from mlabatch.models.embedding.engine import Embedder, load_embedder
from mlabatch.models.generation.config import EngineConfig
from mlabatch.models.generation.engine import Generator, load_generator
from mlabatch.models.registry.resolve import resolve_model
from mlabatch.models.tokenizer import load_tokenizer

_LOADERS = {"embedder": load_embedder, "generator": load_generator}
_ENGINES: dict[tuple, Embedder | Generator] = {}
_LOCK = threading.Lock()


@functools.lru_cache(maxsize=8)
def local_model_dir(model_ref: str) -> Path:
    """A model directory for `model_ref`, downloading an MLflow model once per process."""
    path = Path(model_ref)
    return path if path.is_dir() else resolve_model(model_ref).local_dir


def get_engine(kind: Literal["embedder", "generator"], model_ref: str, device: str,
               options: int | EngineConfig | None) -> Embedder | Generator:
    """The cached engine for (kind, model, device, options), loading it if this process has none yet.

    `options` is what the loader takes beyond the device: the embedder's token budget, or the
    generator's EngineConfig (its KV pool is allocated once, at load).
    """
    key = (kind, model_ref, device, options)
    with _LOCK:
        if key not in _ENGINES:
            _ENGINES[key] = _LOADERS[kind](local_model_dir(model_ref), device, options)
        return _ENGINES[key]


@functools.lru_cache(maxsize=8)
def get_tokenizer(model_ref: str) -> Tokenizer:
    """The model's tokenizer alone (no weights), for chunking."""
    return load_tokenizer(local_model_dir(model_ref))
