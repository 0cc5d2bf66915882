"""Pin a model URI to a local directory and a version: `models:/name@alias` (MLflow / Unity Catalog) or a directory.

The one place URIs are resolved: jobs resolve once (the version keys incremental runs), workers and
`registry.load` resolve what they are handed; the engines themselves take directories.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

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


def local_dir(ref: str | Path) -> Path:
    """A model directory for `ref`: `ref` itself when it is a directory, else the registry model it names."""
    path = Path(ref)
    return path if path.is_dir() else resolve_model(str(ref)).local_dir


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
