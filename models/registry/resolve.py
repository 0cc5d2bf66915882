"""Pin a model URI to a local directory and a version: `models:/name@alias` (MLflow / Unity Catalog) or a directory.

The one place URIs are resolved: jobs resolve once (the version keys incremental runs), workers and
`registry.load` resolve what they are handed; the engines themselves take directories. A `models:/` URI
means nothing without the MLflow stores it names a model in, so those travel with it as a value
(`MlflowStores`): Spark's Python workers are other processes, with MLflow's defaults, not the driver's
settings.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

MLFLOW_ARTIFACT = "model_dir"  # name of the weights directory inside a logged mlabatch pyfunc


class ModelNotFoundError(LookupError):
    """The model URI does not resolve; the message says what was tried and how to fix it."""


@dataclass(frozen=True)
class MlflowStores:
    """Where a `models:/` URI is looked up: the registry (names, versions, aliases) and the tracking
    store (the logged models that versions point at)."""

    registry_uri: str
    tracking_uri: str

    @classmethod
    def current(cls) -> MlflowStores:
        """The stores this process is configured with (`mlflow.set_registry_uri`, MLFLOW_REGISTRY_URI, ...).

        Call it on the driver and hand the value to workers. On Databricks it is the workspace's
        ("databricks" tracking, "databricks-uc" registry unless configured otherwise), which is also
        what workers there would find by default, so passing it along is always right.
        """
        import mlflow

        return cls(registry_uri=_absolute(mlflow.get_registry_uri()),
                   tracking_uri=_absolute(mlflow.get_tracking_uri()))


def _absolute(store_uri: str) -> str:
    """`store_uri` with a relative sqlite path made absolute, so that a worker running in another
    directory opens the driver's file instead of creating its own."""
    prefix = "sqlite:///"
    if store_uri.startswith(prefix) and not store_uri[len(prefix):].startswith("/"):
        return prefix + str(Path(store_uri[len(prefix):]).resolve())
    return store_uri


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


def _check_model_dir(model_dir: Path, uri: str, setting: str) -> Path:
    if not (model_dir / "config.json").exists():
        raise ModelNotFoundError(
            f"{uri}: {model_dir} has no config.json; point {setting} at a Hugging Face model directory "
            "or run `mlabatch models prepare` and use models:/<name>@<alias>")
    if not (model_dir / "tokenizer.json").exists():
        raise ModelNotFoundError(f"{uri}: {model_dir} has no tokenizer.json (a fast tokenizer is required)")
    return model_dir


def resolve_model(uri: str, stores: MlflowStores | None = None, setting: str = "model.uri") -> ResolvedModel:
    """Pin `uri` to a local directory; `models:/` URIs are looked up in `stores` (default: this process's).

    `setting` is where the user gave the URI (a settings key, or a UDF's argument); errors name it.
    """
    if uri.startswith("models:/"):
        return _resolve_mlflow(uri, stores or MlflowStores.current(), setting)
    model_dir = Path(uri).expanduser()
    if not model_dir.is_dir():
        raise ModelNotFoundError(
            f"model {uri!r} is not a directory and not a models:/ URI; run `mlabatch models prepare` "
            f"or set {setting} to models:/<name>@<alias> or a model directory")
    model_dir = _check_model_dir(model_dir.resolve(), uri, setting)
    return ResolvedModel(uri=uri, local_dir=model_dir, version=_dir_version(model_dir))


def local_dir(ref: str | Path, stores: MlflowStores | None = None, setting: str = "model.uri") -> Path:
    """A model directory for `ref`: `ref` itself when it is a directory, else the registry model it names
    (looked up in `stores`, as `resolve_model` does)."""
    path = Path(ref)
    return path if path.is_dir() else resolve_model(str(ref), stores, setting).local_dir


def _resolve_mlflow(uri: str, stores: MlflowStores, setting: str) -> ResolvedModel:
    import mlflow
    from mlflow.exceptions import MlflowException

    name, _, ref = uri[len("models:/"):].partition("@")
    client = mlflow.MlflowClient(tracking_uri=stores.tracking_uri, registry_uri=stores.registry_uri)
    try:
        if ref:
            version = client.get_model_version_by_alias(name, ref).version
        else:
            name, _, version = name.partition("/")
            if not version:
                raise ModelNotFoundError(f"{uri} ({setting}): name a version or alias, e.g. models:/{name}@champion")
        local = _download_version(client, name, version, stores)
    except MlflowException as err:
        raise ModelNotFoundError(
            f"{uri} ({setting}) does not resolve in the MLflow registry at {stores.registry_uri}: {err.message}. "
            f"Check the name and alias in {setting}; if the model is registered elsewhere, point MLflow at that "
            "registry (the setting mlflow.registry_uri, or in a notebook mlflow.set_registry_uri(...) before "
            "creating the UDF); to register the bundled MiniLM there, run `mlabatch models prepare`") from None
    return ResolvedModel(uri=uri, local_dir=_check_model_dir(_weights_dir(local, uri), uri, setting),
                         version=f"{name}/{version}")


def _download_version(client, name: str, version: str, stores: MlflowStores) -> Path:
    """The files of a registered model version, fetched through `stores` and nothing else.

    Unity Catalog hands out short-lived storage credentials, which MLflow's `models:/` download asks
    the registry it is given for. For other registries that download looks the version up in the
    process's global registry instead (MLflow 3.17 ignores its `registry_uri` there, and on a Spark
    worker the global one is a fresh ./mlflow.db), so ask `client` where the version's files are and
    download those.
    """
    import mlflow
    from mlflow.utils.uri import is_databricks_unity_catalog_uri

    if is_databricks_unity_catalog_uri(stores.registry_uri):
        artifact_uri = f"models:/{name}/{version}"
    else:
        artifact_uri = client.get_model_version_download_uri(name, version)
    return Path(mlflow.artifacts.download_artifacts(artifact_uri=artifact_uri, tracking_uri=stores.tracking_uri,
                                                    registry_uri=stores.registry_uri))


def _weights_dir(model_root: Path, uri: str) -> Path:
    """The weights artifact inside a downloaded mlabatch pyfunc, as its MLmodel file records it."""
    import yaml

    mlmodel = yaml.safe_load((model_root / "MLmodel").read_text())
    artifacts = mlmodel.get("flavors", {}).get("python_function", {}).get("artifacts") or {}
    if MLFLOW_ARTIFACT not in artifacts:
        raise ModelNotFoundError(f"{uri} is not an mlabatch model (its pyfunc has no {MLFLOW_ARTIFACT!r} artifact)")
    return model_root / artifacts[MLFLOW_ARTIFACT]["path"]
