"""One engine per Python worker process, kind, model, device and options: loaded on first use, reused by
every later task. Model URIs are resolved here, once per process, against the MLflow stores the driver
captured when the UDF was made (`stores`); the engines' loaders take directories."""
from __future__ import annotations

import functools
import threading
from pathlib import Path
from typing import Literal

from mlabatch.models.embedding.engine import Embedder, load_embedder
from mlabatch.models.generation.config import EngineConfig
from mlabatch.models.generation.engine import Generator, load_generator
from mlabatch.models.registry.resolve import MlflowStores, local_dir

_LOADERS = {"embedder": load_embedder, "generator": load_generator}
_ENGINES: dict[tuple, Embedder | Generator] = {}
_LOCK = threading.Lock()
UDF_SETTING = "the model URI given to the UDF"  # where a worker's model URI came from, for errors


def driver_stores(model_ref: str) -> MlflowStores | None:
    """Call on the driver: the MLflow stores a models:/ URI is to be resolved in by the workers (the
    driver's, whatever the workers' own defaults are); None for a directory, which needs no registry."""
    return MlflowStores.current() if model_ref.startswith("models:/") else None


@functools.lru_cache(maxsize=8)
def local_model_dir(model_ref: str, stores: MlflowStores | None) -> Path:
    """A model directory for `model_ref`, downloading an MLflow model from `stores` once per process.

    `stores` None means this process's own MLflow settings, which on a worker are not the driver's.
    """
    return local_dir(model_ref, stores, UDF_SETTING)


def get_engine(kind: Literal["embedder", "generator"], model_ref: str, stores: MlflowStores | None, device: str,
               options: int | EngineConfig | None) -> Embedder | Generator:
    """The cached engine for (kind, model, stores, device, options), loading it if this process has none yet.

    `options` is what the loader takes beyond the device: the embedder's token budget, or the
    generator's EngineConfig (its KV pool is allocated once, at load).
    """
    key = (kind, model_ref, stores, device, options)
    with _LOCK:
        if key not in _ENGINES:
            _ENGINES[key] = _LOADERS[kind](local_model_dir(model_ref, stores), device, options)
        return _ENGINES[key]
