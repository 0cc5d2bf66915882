"""Find a model from a URI and load it: `models:/name@alias` (MLflow / Unity Catalog), or a directory.

`resolve_model` runs once on the driver (it also fixes the model version that incremental runs key
on); `load_model` runs wherever the model is used.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer

from mlabatch.models.embedder import Embedder, PoolingConfig, pick_device
from mlabatch.models.packed_encoder import PackedEncoder, packed_from_hf_bert, packed_from_mla_encoder

MLFLOW_ARTIFACT = "model_dir"  # name of the weights directory inside a logged mlabatch pyfunc


class ModelNotFoundError(LookupError):
    """The model URI does not resolve; the message says what was tried and how to fix it."""


@dataclass(frozen=True)
class ResolvedModel:
    """A model pinned to a local directory and a version string for incremental bookkeeping."""

    uri: str
    local_dir: Path
    version: str


def _dir_version(model_dir: Path) -> str:
    """A cheap content fingerprint of a model directory: its config plus weight file names and sizes."""
    digest = hashlib.sha256()
    for path in sorted(model_dir.rglob("*")):
        if path.is_file() and path.suffix in (".json", ".safetensors", ".bin"):
            digest.update(path.relative_to(model_dir).as_posix().encode())
            stat = path.stat().st_size
            digest.update(path.read_bytes() if path.suffix == ".json" else str(stat).encode())
    return "dir:" + digest.hexdigest()[:16]


def _check_model_dir(model_dir: Path, uri: str) -> Path:
    if not (model_dir / "config.json").exists():
        raise ModelNotFoundError(
            f"{uri}: {model_dir} has no config.json; point model.uri at a Hugging Face model directory "
            "or run `mlabatch models prepare` and use models:/<name>@<alias>")
    if not (model_dir / "tokenizer.json").exists():
        raise ModelNotFoundError(f"{uri}: {model_dir} has no tokenizer.json (a fast tokenizer is required)")
    return model_dir


def resolve_model(uri: str) -> ResolvedModel:
    """Pin `uri` to a local directory; MLflow URIs are downloaded through the configured registry."""
    if uri.startswith("models:/"):
        return _resolve_mlflow(uri)
    model_dir = Path(uri).expanduser()
    if not model_dir.is_dir():
        raise ModelNotFoundError(
            f"model {uri!r} is not a directory and not a models:/ URI; run `mlabatch models prepare` "
            "or set model.uri to models:/<name>@<alias> or a model directory")
    model_dir = _check_model_dir(model_dir.resolve(), uri)
    return ResolvedModel(uri=uri, local_dir=model_dir, version=_dir_version(model_dir))


def _resolve_mlflow(uri: str) -> ResolvedModel:
    import mlflow
    from mlflow.exceptions import MlflowException

    name, _, ref = uri[len("models:/"):].partition("@")
    client = mlflow.MlflowClient()
    try:
        if ref:
            version = client.get_model_version_by_alias(name, ref).version
        else:
            name, _, version = name.partition("/")
            if not version:
                raise ModelNotFoundError(f"{uri}: name a version or alias, e.g. models:/{name}@champion")
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{version}"))
    except MlflowException as err:
        raise ModelNotFoundError(
            f"{uri} does not resolve in the registry at {mlflow.get_registry_uri()}: {err.message}. "
            "Run `mlabatch models prepare` (locally) or check model.name/model.alias") from None
    return ResolvedModel(uri=uri, local_dir=_check_model_dir(_weights_dir(local, uri), uri),
                         version=f"{name}/{version}")


def _weights_dir(model_root: Path, uri: str) -> Path:
    """The weights artifact inside a downloaded mlabatch pyfunc, as its MLmodel file records it."""
    import yaml

    mlmodel = yaml.safe_load((model_root / "MLmodel").read_text())
    artifacts = mlmodel.get("flavors", {}).get("python_function", {}).get("artifacts") or {}
    if MLFLOW_ARTIFACT not in artifacts:
        raise ModelNotFoundError(f"{uri} is not an mlabatch model (its pyfunc has no {MLFLOW_ARTIFACT!r} artifact)")
    return model_root / artifacts[MLFLOW_ARTIFACT]["path"]


SUPPORTED_ENCODERS = ("bert", "MLA-converted bert")


def _load_encoder(model_dir: Path, device: torch.device) -> PackedEncoder:
    """The packed encoder: ours for MLA-converted models, else built on the Hugging Face BertModel."""
    if (model_dir / "mla_config.json").exists():
        from mlabatch.models.mla_encoder import load_mla_encoder

        return packed_from_mla_encoder(load_mla_encoder(model_dir, device))
    model_type = json.loads((model_dir / "config.json").read_text()).get("model_type")
    if model_type != "bert":
        raise ValueError(f"{model_dir} is a {model_type!r} model; the embedder supports {SUPPORTED_ENCODERS}")
    from transformers import BertModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    model = BertModel.from_pretrained(model_dir, dtype=torch.float32)
    encoder = packed_from_hf_bert(model).to(device).eval()
    return encoder.half() if device.type == "cuda" else encoder


def load_tokenizer(model_dir: Path) -> Tokenizer:
    """The fast tokenizer of a model directory, with any fixed padding from tokenizer.json removed."""
    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    tokenizer.no_padding()  # the embedder pads per batch
    return tokenizer


def load_model(uri: str | Path, device: str | torch.device = "auto", token_budget: int | None = None) -> Embedder:
    """Load an embedder from a URI or a resolved local directory onto `device`."""
    model_dir = Path(uri) if Path(uri).is_dir() else resolve_model(str(uri)).local_dir
    target = pick_device(device)
    return Embedder(_load_encoder(model_dir, target), load_tokenizer(model_dir), PoolingConfig.from_dir(model_dir),
                    target, token_budget=token_budget)


def load_generator(uri: str | Path, device: str | torch.device = "auto", config=None):
    """Load a generation engine for an MLA-converted decoder (bf16 on GPU, float32 on CPU); `config` an EngineConfig."""
    from mlabatch.models.generator import EngineConfig, Generator
    from mlabatch.models.mla_decoder import load_mla_decoder

    model_dir = Path(uri) if Path(uri).is_dir() else resolve_model(str(uri)).local_dir
    target = pick_device(device)
    dtype = torch.bfloat16 if target.type == "cuda" else torch.float32
    return Generator(load_mla_decoder(model_dir, target, dtype), load_tokenizer(model_dir), model_dir,
                     config or EngineConfig())
