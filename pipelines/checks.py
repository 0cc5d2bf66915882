"""The checks a job runs on the driver before Spark starts any work: each error names the setting and the fix.

`preflight_embed` and `preflight_generate` check, in order: that the tables can be tables where this runs
(a path locally; a name or an absolute path on Databricks), that MLflow is reachable, that the model
resolves and is the kind the job runs, that the source exists, and that an existing target has the columns
the job writes. Settings that cannot work here raise SettingsError (the CLI exits 2); a job that cannot
run as set up raises CannotRunError or the model's ModelNotFoundError (exit 1). Nothing here writes,
and locally nothing waits for Spark: deltalake reads the tables' metadata.
"""
from __future__ import annotations

import json
import socket
from urllib.parse import urlsplit

from mlflow.exceptions import MlflowException
from pyspark.sql import SparkSession

from mlabatch.models.embedding.encoders import unsupported_encoder
from mlabatch.models.generation.decoders import unconverted_problem
from mlabatch.models.mla_config import MLAModelConfig, is_converted
from mlabatch.models.mla_encoder import ENCODER_TYPES
from mlabatch.models.registry.resolve import ResolvedModel, resolve_model
from mlabatch.pipelines.errors import CannotRunError, SettingsError
from mlabatch.pipelines.settings import MlflowSettings, Settings
from mlabatch.pipelines.spark import get_spark
from mlabatch.pipelines.tables import on_databricks, table_columns, table_exists, where_problem
from mlabatch.pipelines.tracking import configure_mlflow

# The columns each pipeline writes (pipelines/embedding.py, generation.py), as Spark types; an existing
# target must have exactly these. tests/spark/test_preflight.py checks them against real runs.
EMBED_COLUMNS = {
    "id": "string", "chunk": "int", "content_hash": "string", "model_version": "string", "chunking": "string",
    "chunk_text": "string", "token_count": "int", "truncated": "boolean", "embedding": "array<float>",
    "error": "string", "embedded_at": "timestamp",
}
GENERATE_COLUMNS = {
    "id": "string", "prompt_hash": "string", "model_version": "string", "sampling_hash": "string",
    "prompt": "string", "text": "string", "prompt_tokens": "int", "generated_tokens": "int",
    "finish_reason": "string", "truncated": "boolean", "error": "string", "generated_at": "timestamp",
}
PROBE_TIMEOUT_S = 5.0  # MLflow's own client retries an unreachable server for minutes


def preflight_embed(settings: Settings) -> ResolvedModel:
    """Every driver-side check of `mlabatch embed`; returns the resolved model and leaves MLflow configured."""
    check_tables_here({"source.table": settings.source.table, "target.table": settings.target.table})
    connect_mlflow(settings.mlflow)
    model = resolve_model(settings.model.uri, setting="model.uri")
    check_encoder(model, "model.uri")
    spark = _table_session(settings)
    check_source(spark, "source.table", settings.source.table, "or build sample documents there: `mlabatch demo`")
    check_target(spark, "target.table", settings.target.table, EMBED_COLUMNS)
    return model


def preflight_generate(settings: Settings) -> ResolvedModel:
    """Every driver-side check of `mlabatch generate`; returns the resolved model and leaves MLflow configured."""
    cfg = settings.generate
    check_tables_here({"generate.source_table": cfg.source_table, "generate.target_table": cfg.target_table})
    connect_mlflow(settings.mlflow)
    model = resolve_model(cfg.model_uri, setting="generate.model_uri")
    check_decoder(model, "generate.model_uri")
    spark = _table_session(settings)
    check_source(spark, "generate.source_table", cfg.source_table,
                 f"with the columns generate.id_column={cfg.id_column} and generate.prompt_column={cfg.prompt_column}")
    check_target(spark, "generate.target_table", cfg.target_table, GENERATE_COLUMNS)
    return model


def _table_session(settings: Settings) -> SparkSession | None:
    """What the table seam needs to look at tables: the cluster's session on Databricks (it is always
    up there); none locally, where deltalake reads Delta metadata without a JVM."""
    return get_spark(settings.spark) if on_databricks() else None


def check_tables_here(tables: dict[str, str]) -> None:
    """SettingsError unless every table (settings key -> name) can be a table where this process runs."""
    for key, name in tables.items():
        problem = where_problem(name)
        if problem:
            raise SettingsError(f"{key}={name}: {problem}")


def connect_mlflow(settings: MlflowSettings) -> None:
    """Point MLflow at the configured stores, or raise CannotRunError naming the store that cannot be used.

    A server URI is probed first with a short timeout, as MLflow's client retries for minutes."""
    uris = {"mlflow.tracking_uri": settings.tracking_uri, "mlflow.registry_uri": settings.registry_uri}
    for key, uri in uris.items():
        if uri and uri.startswith(("http://", "https://")):
            _probe(key, uri)
    try:
        configure_mlflow(settings)
    except (MlflowException, OSError) as err:
        reason = str(getattr(err, "message", err)).split(". ")[0]
        raise CannotRunError(
            f"MLflow at mlflow.tracking_uri={settings.tracking_uri} cannot be used: {reason}. "
            f"{_mlflow_fix(settings.tracking_uri)}") from None


def _probe(key: str, uri: str) -> None:
    parts = urlsplit(uri)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        socket.create_connection((parts.hostname, port), timeout=PROBE_TIMEOUT_S).close()
    except OSError as err:
        raise CannotRunError(f"MLflow at {key}={uri} is unreachable ({err}). {_mlflow_fix(uri)}") from None


def _mlflow_fix(uri: str) -> str:
    if uri.startswith("databricks"):
        return ("Outside Databricks, set up Databricks authentication (DATABRICKS_HOST and DATABRICKS_TOKEN, or "
                "a ~/.databrickscfg profile), or leave out --conf dev/prod to log to the local "
                "sqlite:///data/mlflow.db")
    local = "--set mlflow.tracking_uri=sqlite:///data/mlflow.db --set mlflow.registry_uri=sqlite:///data/mlflow.db"
    if uri.startswith(("http://", "https://")):
        return f"Start that server or correct the URI, or log locally: {local}"
    return f"Correct the URI, or log to a local store in a directory you can write: {local}"


def check_encoder(model: ResolvedModel, key: str) -> None:
    """CannotRunError unless the embedder runs `model`: a BERT-family encoder, plain or MLA-converted."""
    if is_converted(model.local_dir):
        mla = MLAModelConfig.read(model.local_dir)
        if mla.kind == "decoder":
            raise CannotRunError(
                f"{key}={model.uri} is an MLA-converted decoder ({mla.architecture}), which generates text; "
                f"`mlabatch embed` needs an encoder. Generate with it: "
                f"mlabatch generate --set generate.model_uri={model.uri}")
        return
    model_type = _model_type(model)
    if model_type not in ENCODER_TYPES:
        raise CannotRunError(f"{key}={model.uri}: {unsupported_encoder(model.local_dir, model_type)}. "
                             f"Set {key} to such a model")


def check_decoder(model: ResolvedModel, key: str) -> None:
    """CannotRunError unless the generator runs `model`: a converted decoder, or a supported one it converts
    exactly in memory."""
    if is_converted(model.local_dir):
        mla = MLAModelConfig.read(model.local_dir)
        if mla.kind != "decoder":
            raise CannotRunError(
                f"{key}={model.uri} is an MLA-converted encoder ({mla.architecture}), which embeds text; "
                f"`mlabatch generate` needs a decoder converted with `mlabatch convert`, e.g. "
                "mlabatch convert --set convert.source=smollm2 --set convert.output_dir=data/models/smollm2-mla")
        return
    problem = unconverted_problem(model.local_dir)
    if problem is not None:
        raise CannotRunError(f"{key}={model.uri}: {problem}")


def _model_type(model: ResolvedModel) -> str | None:
    return json.loads((model.local_dir / "config.json").read_text()).get("model_type")


def check_source(spark: SparkSession | None, key: str, name: str, hint: str) -> None:
    """CannotRunError when the source table does not exist: a typo must not look like an empty source."""
    if not table_exists(spark, name):
        raise CannotRunError(f"{key}={name} does not exist; nothing was read or written. "
                             f"Point {key} at an existing Delta table, {hint}")


def check_target(spark: SparkSession | None, key: str, name: str, columns: dict[str, str]) -> None:
    """CannotRunError when the target exists with other columns or types than the job writes."""
    if not table_exists(spark, name):
        return
    found = table_columns(spark, name)
    if found == columns:
        return
    missing = [c for c in columns if c not in found]
    extra = [c for c in found if c not in columns]
    retyped = [f"{c} is {found[c]}, not {t}" for c, t in columns.items() if c in found and found[c] != t]
    problems = "; ".join(filter(None, [missing and f"no column {', '.join(missing)}",
                                       extra and f"other columns {', '.join(extra)}", *retyped]))
    raise CannotRunError(
        f"{key}={name} exists but is not a table this job writes ({problems}); nothing was written. "
        f"Pick a new {key}, or drop that table if it may go")
