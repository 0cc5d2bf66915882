"""One model per Python worker process and device: loaded on first use, reused by every later task."""
from __future__ import annotations

import functools
import threading
from pathlib import Path

from tokenizers import Tokenizer

from mlabatch.models.embedder import Embedder
from mlabatch.models.generator import EngineConfig, Generator
from mlabatch.models.loading import load_generator, load_model, load_tokenizer, resolve_model

_MODELS: dict[tuple[str, str, int | None], Embedder] = {}
_GENERATORS: dict[tuple[str, str, EngineConfig], Generator] = {}
_LOCK = threading.Lock()


@functools.lru_cache(maxsize=8)
def local_model_dir(model_ref: str) -> Path:
    """A model directory for `model_ref`, downloading an MLflow model once per process."""
    path = Path(model_ref)
    return path if path.is_dir() else resolve_model(model_ref).local_dir


def get_embedder(model_ref: str, device: str, token_budget: int | None = None) -> Embedder:
    """The cached embedder for (model, device, token budget), loading it if this process has none yet."""
    key = (model_ref, device, token_budget)
    with _LOCK:
        if key not in _MODELS:
            _MODELS[key] = load_model(local_model_dir(model_ref), device, token_budget)
        return _MODELS[key]


def get_generator(model_ref: str, device: str, config: EngineConfig) -> Generator:
    """The cached generation engine for (model, device, engine config); its KV pool is allocated once."""
    key = (model_ref, device, config)
    with _LOCK:
        if key not in _GENERATORS:
            _GENERATORS[key] = load_generator(local_model_dir(model_ref), device, config)
        return _GENERATORS[key]


@functools.lru_cache(maxsize=8)
def get_tokenizer(model_ref: str) -> Tokenizer:
    """The model's tokenizer alone (no weights), for chunking."""
    return load_tokenizer(local_model_dir(model_ref))
